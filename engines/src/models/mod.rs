//! Model files on disk: verified downloads into `<models_root>/<model id>/` (PROTOCOL.md
//! §3.6, §8 "Models").
//!
//! [`ModelStore::ensure`] makes the files an offer's `modelSource.files` names present and
//! verified, and returns their paths in the order given. For each file:
//!
//! 1. **Names first, before any request or write.** The model id becomes one safe directory
//!    name ([`model_dir_name`]); every `filename` must be a plain file name
//!    ([`check_file_name`]: no separators, no `..`, not absolute, not empty); every URL
//!    must be `https` (plain `http` only to loopback hosts, for tests: [`check_url`]); a
//!    `sha256` must be 64 hex digits (compared case-insensitively).
//! 2. **Cached files are reused without a request and without rehashing.** After a file is
//!    verified a small sidecar `<file>.sha256` is written next to it: the hash in
//!    `sha256sum` format plus the file's size and modification time. A later job whose
//!    expected hash, size and mtime all match the sidecar uses the file as is (hashing a
//!    multi-GB file every job would cost more than the job). A file without a valid
//!    sidecar is hashed once; a match writes the sidecar, a mismatch removes the file and
//!    downloads it again. Without an expected `sha256` an existing file is trusted: files
//!    only ever appear under their final name by an atomic rename after a complete
//!    download. Legacy layout (§8): a file missing from the model's directory is looked for
//!    at `<models_root>/<file>` (the old flat layout) and used when its hash matches, or,
//!    without a hash, when its size equals `approxBytes` exactly; it is never removed.
//! 3. **Free-disk preflight.** Before any request the `approxBytes` of the files still
//!    missing (less what their `.part` files already hold) plus [`DISK_HEADROOM_PERCENT`]
//!    must fit in the free space of the models root; once the server announced the real
//!    size (`Content-Length` / `Content-Range`) that is checked again. A failed preflight
//!    is **not retryable**: this worker's disk is what it is, and another worker may have
//!    the room (the same convention as an engine that is not compiled in). Disk-full while
//!    writing is an I/O error (retryable; the `.part` is removed to give the space back).
//! 4. **One download per file at a time.** A lock file `<file>.lock` (an OS file lock, so
//!    it also excludes other processes) plus an in-process guard; a job waits for another
//!    download of the same file at most [`FetchOptions::lock_wait`].
//! 5. **Download** (module `download`): into `<file>.part`, hashing while streaming and
//!    checking the body against `Content-Length`; a leftover `.part` is resumed with a
//!    `Range` request when the server answers `206` (the existing bytes are hashed first,
//!    so the hash always covers the whole file), and restarted when it answers `200`. Then
//!    fsync, atomic rename to the final name, fsync of the directory, sidecar. A file
//!    whose hash is wrong is never kept: its `.part` is removed (and a resumed download
//!    whose hash is wrong is restarted once from scratch before giving up). Redirects are
//!    followed by hand (at most [`MAX_REDIRECTS`]), each hop checked against the same
//!    https rule. Connect and read timeouts ([`DEFAULT_CONNECT_TIMEOUT`],
//!    [`DEFAULT_READ_TIMEOUT`]) bound every wait: a stalled server fails the job, it never
//!    hangs it.
//! 6. **Progress**: a progress bar on stderr when it is a terminal, else info lines every
//!    [`PROGRESS_LOG_PERCENT_STEP`] % or [`PROGRESS_LOG_INTERVAL`] ([`ProgressMode`]). The
//!    start, progress and outcome lines go to the job's log ([`crate::job_log`]): logged, and
//!    shipped to the studio with the job's id by the worker (on a terminal the progress
//!    lines are only shipped, the bar shows them).
//!
//! # Modules
//!
//! `names` (step 1: ids, file names, URLs, the hash's format), `verify` (step 2: verified
//! copies and the `.sha256` record), `disk` (step 3: the free-space preflight), `lock`
//! (step 4), `download` (step 5) and `progress` (step 6); this module holds the options
//! and [`ModelStore`], which runs the steps in that order.
//!
//! # Errors and `retryable`
//!
//! | failure | kind | retryable |
//! |---|---|---|
//! | bad model id / file name / URL / `sha256` text, `http` to a non-loopback host | `InvalidInput` | no |
//! | HTTP 4xx (except 408 and 429) | `Failed` | no |
//! | HTTP 5xx, 408, 429, other unexpected status | `Failed` | yes |
//! | DNS / connect / TLS / timeout / reset, body shorter than announced | `Failed` | yes |
//! | SHA-256 mismatch | `Failed` | no |
//! | free-disk preflight | `Failed` | no |
//! | local I/O (create dir, write, rename, disk full while writing) | `Io` | yes |
//! | another download of the same file still running after `lock_wait` | `Failed` | yes |

mod disk;
mod download;
mod lock;
mod names;
mod progress;
mod record;
mod verify;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use studio_core::wire::{ModelEngine, ModelFile, TaskKind};

use crate::error::EngineError;
use crate::job_log;

use lock::DownloadLock;
use names::Plan;
use verify::cached;

pub use disk::{available_space, needed_with_headroom};
pub(crate) use download::resolve;
pub use download::USER_AGENT;
pub use names::{
    check_file_name, check_redirect, check_url, check_url_for, is_local_host, is_loopback_host,
    is_windows_reserved_name, model_dir_name, redact,
};
pub use progress::{
    ProgressMode, PROGRESS_BAR_INTERVAL, PROGRESS_LOG_INTERVAL, PROGRESS_LOG_PERCENT_STEP,
};
pub use record::RECORD_FILE;

/// Model bytes received from the network by this process (every download, resumed ones
/// included), for the worker's metrics.
static DOWNLOADED_BYTES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many model bytes this process has received from the network so far.
pub fn downloaded_bytes_total() -> u64 {
    DOWNLOADED_BYTES.load(std::sync::atomic::Ordering::Relaxed)
}

fn count_downloaded(n: usize) {
    DOWNLOADED_BYTES.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
}

/// How long establishing a connection (DNS, TCP, TLS handshake) may take.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one read may wait for data (response headers or the next piece of the body):
/// a server that stops sending for this long fails the download (retryable).
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a job waits for another download of the same file to finish.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(30 * 60);
/// How often a waiting job checks whether the other download finished.
pub const LOCK_POLL: Duration = Duration::from_millis(100);
/// Free space must exceed the bytes still to download by this many percent.
pub const DISK_HEADROOM_PERCENT: u64 = 10;
/// Redirects followed per file (each hop must pass the https rule).
pub const MAX_REDIRECTS: u32 = 5;
/// The longest directory name a model id becomes (before the hash suffix of an id that
/// had to be changed).
pub const MAX_MODEL_DIR_LEN: usize = 96;
/// The longest name a file system gives one path component (bytes): what every sibling
/// the store writes next to a model file must fit in.
pub const MAX_PATH_COMPONENT_LEN: usize = 255;
/// Suffix of the file a download streams into.
pub const PART_SUFFIX: &str = ".part";
/// Suffix of the verification sidecar.
pub const SIDECAR_SUFFIX: &str = ".sha256";
/// Suffix of the per-file lock file.
pub const LOCK_SUFFIX: &str = ".lock";
/// Suffix of the sidecar while it is written (then renamed to [`SIDECAR_SUFFIX`]).
pub const SIDECAR_TMP_SUFFIX: &str = ".sha256.tmp";
/// Suffix of the record of the server's validator (strong `ETag` or `Last-Modified`) for
/// a `.part`: a resume sends it as `If-Range`, so a file that changed on the server is
/// downloaded whole instead of spliced onto the old bytes.
pub const PART_VALIDATOR_SUFFIX: &str = ".part.etag";
/// Every suffix the store appends to a model file's name for a file of its own.
pub const STORE_SUFFIXES: [&str; 5] = [
    PART_SUFFIX,
    SIDECAR_SUFFIX,
    SIDECAR_TMP_SUFFIX,
    LOCK_SUFFIX,
    PART_VALIDATOR_SUFFIX,
];
/// The longest file name accepted (bytes): [`MAX_PATH_COMPONENT_LEN`] less the longest of
/// the [`STORE_SUFFIXES`] (`.sha256.tmp`), so every sibling of a model file is a valid name.
pub const MAX_FILE_NAME_LEN: usize = MAX_PATH_COMPONENT_LEN - longest(&STORE_SUFFIXES);
/// The hard ceiling of one model file (bytes), whatever the server announces: 512 GiB.
pub const MAX_MODEL_FILE_BYTES: u64 = 512 << 30;
/// Without a `Content-Length`, a body may pass the file's `approxBytes` by this many
/// percent (or [`APPROX_BYTES_MIN_MARGIN`], whichever is more) before it is cut off.
pub const APPROX_BYTES_MARGIN_PERCENT: u64 = 10;
/// The least margin over `approxBytes` (bytes) allowed without a `Content-Length`.
pub const APPROX_BYTES_MIN_MARGIN: u64 = 1 << 20;
/// The slowest download kept going: at least this many bytes per
/// [`DEFAULT_MIN_SPEED_WINDOW`] (64 KiB/s over a minute), or it fails (retryable), so a
/// server that trickles a byte now and then cannot hold the job slot.
pub const DEFAULT_MIN_SPEED_BYTES: u64 = (64 << 10) * 60;
/// The window the minimum speed is measured over.
pub const DEFAULT_MIN_SPEED_WINDOW: Duration = Duration::from_secs(60);

const fn longest(suffixes: &[&str]) -> usize {
    let mut i = 0;
    let mut max = 0;
    while i < suffixes.len() {
        if suffixes[i].len() > max {
            max = suffixes[i].len();
        }
        i += 1;
    }
    max
}

/// How downloads behave. [`FetchOptions::default`] holds the named defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchOptions {
    /// [`DEFAULT_CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// [`DEFAULT_READ_TIMEOUT`].
    pub read_timeout: Duration,
    /// [`DEFAULT_LOCK_WAIT`].
    pub lock_wait: Duration,
    /// [`DISK_HEADROOM_PERCENT`].
    pub disk_headroom_percent: u64,
    /// [`MAX_REDIRECTS`].
    pub max_redirects: u32,
    /// How progress is shown ([`ProgressMode::Auto`]).
    pub progress: ProgressMode,
    /// [`MAX_MODEL_FILE_BYTES`].
    pub max_file_bytes: u64,
    /// [`DEFAULT_MIN_SPEED_BYTES`]: fewer bytes than this in any [`Self::min_speed_window`]
    /// fail the download (retryable); 0 turns the check off.
    pub min_speed_bytes: u64,
    /// [`DEFAULT_MIN_SPEED_WINDOW`].
    pub min_speed_window: Duration,
}

impl Default for FetchOptions {
    fn default() -> FetchOptions {
        FetchOptions {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            read_timeout: DEFAULT_READ_TIMEOUT,
            lock_wait: DEFAULT_LOCK_WAIT,
            disk_headroom_percent: DISK_HEADROOM_PERCENT,
            max_redirects: MAX_REDIRECTS,
            progress: ProgressMode::Auto,
            max_file_bytes: MAX_MODEL_FILE_BYTES,
            min_speed_bytes: DEFAULT_MIN_SPEED_BYTES,
            min_speed_window: DEFAULT_MIN_SPEED_WINDOW,
        }
    }
}

/// Where verified model files live, and how missing ones are fetched. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ModelStore {
    root: Arc<PathBuf>,
    options: Arc<FetchOptions>,
}

impl ModelStore {
    /// A store rooted at `root` (the config's `models_root`).
    pub fn new(root: impl Into<PathBuf>) -> ModelStore {
        ModelStore {
            root: Arc::new(root.into()),
            options: Arc::new(FetchOptions::default()),
        }
    }

    /// The same store with other download options.
    pub fn with_options(mut self, options: FetchOptions) -> ModelStore {
        self.options = Arc::new(options);
        self
    }

    /// The models root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The download options.
    pub fn options(&self) -> &FetchOptions {
        &self.options
    }

    /// The directory the files of `model_id` live in: `<root>/<model_dir_name(model_id)>`.
    pub fn model_dir(&self, model_id: &str) -> Result<PathBuf, EngineError> {
        Ok(self.root.join(model_dir_name(model_id)?))
    }

    /// Makes every file in `files` present and verified under `<root>/<model id>/` and
    /// returns their paths, in the order given (see the module docs).
    pub fn ensure(&self, model_id: &str, files: &[ModelFile]) -> Result<Vec<PathBuf>, EngineError> {
        let dir = self.model_dir(model_id)?;
        // Everything is checked before the first request or write.
        let plans = files.iter().map(Plan::new).collect::<Result<Vec<_>, _>>()?;
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        for plan in &plans {
            if !seen.insert(&plan.file.filename) {
                return Err(EngineError::invalid_input(format!(
                    "modelSource.files names `{}` twice",
                    plan.file.filename
                )));
            }
        }
        self.preflight(&dir, &plans)?;
        plans
            .iter()
            .map(|plan| self.ensure_one(model_id, &dir, plan))
            .collect()
    }

    /// Records in the model's directory that `model_id` is a model of `engine` for `kind`
    /// (after a job ran on it), for [`ModelStore::cached_models`].
    pub fn record(
        &self,
        model_id: &str,
        engine: &ModelEngine,
        kind: TaskKind,
    ) -> Result<(), EngineError> {
        let dir = self.model_dir(model_id)?;
        fs::create_dir_all(&dir).map_err(|e| {
            EngineError::io(format!(
                "cannot create model directory {}: {e}",
                dir.display()
            ))
        })?;
        record::write(&dir, model_id, engine, kind)
    }

    /// The `(kind, model id)` of every model recorded ([`ModelStore::record`]) for
    /// `engine` under the root, sorted.
    pub fn cached_models(&self, engine: &ModelEngine) -> Vec<(TaskKind, String)> {
        record::cached(&self.root, engine)
    }

    /// The free-disk check before any request: the `approxBytes` of the files not yet
    /// under their final name, less what their `.part` files hold, plus the headroom.
    fn preflight(&self, dir: &Path, plans: &[Plan<'_>]) -> Result<(), EngineError> {
        let mut need: u64 = 0;
        for plan in plans {
            let dest = dir.join(&plan.file.filename);
            if dest.is_file() {
                continue;
            }
            let Some(approx) = plan.file.approx_bytes else {
                continue;
            };
            let have = fs::metadata(with_suffix(&dest, PART_SUFFIX))
                .map(|m| m.len())
                .unwrap_or(0);
            need = need.saturating_add(approx.saturating_sub(have));
        }
        if need == 0 {
            return Ok(());
        }
        disk::preflight(&self.root, need, self.options.disk_headroom_percent)
    }

    fn ensure_one(
        &self,
        model_id: &str,
        dir: &Path,
        plan: &Plan<'_>,
    ) -> Result<PathBuf, EngineError> {
        let name = &plan.file.filename;
        let dest = dir.join(name);
        if cached(&dest, plan, true)? {
            tracing::debug!("{name} of {model_id}: verified copy in {}", dir.display());
            return Ok(dest);
        }
        if let Some(legacy) = self.legacy(plan)? {
            job_log::info(&format!(
                "{name} of {model_id}: using the legacy copy {}",
                legacy.display()
            ));
            return Ok(legacy);
        }
        fs::create_dir_all(dir).map_err(|e| {
            EngineError::io(format!(
                "cannot create model directory {}: {e}",
                dir.display()
            ))
        })?;
        let _lock = DownloadLock::acquire(&dest, self.options.lock_wait)?;
        // Another job or process may have finished it while this one waited.
        if cached(&dest, plan, true)? {
            return Ok(dest);
        }
        download::fetch(model_id, plan, &self.root, &dest, &self.options)?;
        Ok(dest)
    }

    /// The §8 legacy flat layout: `<root>/<file>`, used when its hash matches or, without
    /// a hash, when its size equals `approxBytes`. Never removed, whatever it holds.
    fn legacy(&self, plan: &Plan<'_>) -> Result<Option<PathBuf>, EngineError> {
        let path = self.root.join(&plan.file.filename);
        let Ok(meta) = fs::metadata(&path) else {
            return Ok(None);
        };
        if !meta.is_file() {
            return Ok(None);
        }
        if plan.sha.is_some() {
            return Ok(cached(&path, plan, false)?.then_some(path));
        }
        Ok((plan.file.approx_bytes == Some(meta.len())).then_some(path))
    }
}

/// `path` with `suffix` appended to its file name.
pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_defaults_are_the_named_constants() {
        let o = FetchOptions::default();
        assert_eq!(o.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(o.read_timeout, DEFAULT_READ_TIMEOUT);
        assert_eq!(o.lock_wait, DEFAULT_LOCK_WAIT);
        assert_eq!(o.disk_headroom_percent, 10);
        assert_eq!(o.max_redirects, MAX_REDIRECTS);
        assert_eq!(o.progress, ProgressMode::Auto);
        assert_eq!(o.max_file_bytes, MAX_MODEL_FILE_BYTES);
        assert_eq!(o.min_speed_bytes, DEFAULT_MIN_SPEED_BYTES);
        assert_eq!(o.min_speed_window, DEFAULT_MIN_SPEED_WINDOW);
        // 64 KiB/s.
        assert_eq!(
            DEFAULT_MIN_SPEED_BYTES / DEFAULT_MIN_SPEED_WINDOW.as_secs(),
            64 << 10
        );
        assert_eq!(DEFAULT_CONNECT_TIMEOUT, Duration::from_secs(15));
        assert_eq!(DEFAULT_READ_TIMEOUT, Duration::from_secs(30));
    }
}
