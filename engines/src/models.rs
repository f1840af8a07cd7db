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
mod progress;

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use studio_core::wire::ModelFile;

use crate::error::EngineError;
use crate::job_log;

pub use disk::{available_space, needed_with_headroom};
pub use progress::{
    ProgressMode, PROGRESS_BAR_INTERVAL, PROGRESS_LOG_INTERVAL, PROGRESS_LOG_PERCENT_STEP,
};

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
/// The longest file name accepted.
pub const MAX_FILE_NAME_LEN: usize = 255;
/// Suffix of the file a download streams into.
pub const PART_SUFFIX: &str = ".part";
/// Suffix of the verification sidecar.
pub const SIDECAR_SUFFIX: &str = ".sha256";
/// Suffix of the per-file lock file.
pub const LOCK_SUFFIX: &str = ".lock";
/// Suffix of the sidecar while it is written (then renamed to [`SIDECAR_SUFFIX`]).
pub const SIDECAR_TMP_SUFFIX: &str = ".sha256.tmp";

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

// ------------------------------------------------------------------------------------------
// Names and URLs
// ------------------------------------------------------------------------------------------

/// The directory name of a model id: the id itself when it is made of ASCII letters,
/// digits, `.`, `_` and `-` only, does not start with `.` and is at most
/// [`MAX_MODEL_DIR_LEN`] long; otherwise every other character becomes `_` (a leading `.`
/// too), the result is cut to that length and `-` plus the first 12 hex digits of the id's
/// SHA-256 is appended, so two ids never share a directory (`org/model` →
/// `org_model-<hash>`). An empty id is refused.
pub fn model_dir_name(model_id: &str) -> Result<String, EngineError> {
    if model_id.is_empty() {
        return Err(EngineError::invalid_input("the model id is empty"));
    }
    let safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if model_id.len() <= MAX_MODEL_DIR_LEN
        && model_id.chars().all(safe)
        && !model_id.starts_with('.')
    {
        return Ok(model_id.to_string());
    }
    let mut name: String = model_id
        .chars()
        .map(|c| if safe(c) { c } else { '_' })
        .take(MAX_MODEL_DIR_LEN)
        .collect();
    if name.starts_with('.') {
        name.replace_range(0..1, "_");
    }
    let digest = hex(&Sha256::digest(model_id.as_bytes()));
    Ok(format!("{name}-{}", &digest[..12]))
}

/// Checks that `name` is a plain file name: not empty, not `.` or `..`, no `/` or `\`, no
/// drive prefix (`:`), no NUL or other control characters, at most [`MAX_FILE_NAME_LEN`]
/// bytes, and not ending in one of the store's own suffixes.
pub fn check_file_name(name: &str) -> Result<(), EngineError> {
    let bad = |why: &str| {
        Err(EngineError::invalid_input(format!(
            "modelSource file name `{}` is not a plain file name: {why}",
            name.escape_debug()
        )))
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name == "." || name == ".." {
        return bad("it names a directory");
    }
    if name.contains(['/', '\\']) {
        return bad("it contains a path separator");
    }
    if name.contains(':') {
        return bad("it contains `:` (a drive or stream prefix)");
    }
    if name.chars().any(char::is_control) {
        return bad("it contains a control character");
    }
    if name.len() > MAX_FILE_NAME_LEN {
        return bad("it is too long");
    }
    if [PART_SUFFIX, SIDECAR_SUFFIX, SIDECAR_TMP_SUFFIX, LOCK_SUFFIX]
        .iter()
        .any(|s| name.ends_with(s))
    {
        return bad("it ends in a suffix the model store uses for its own files");
    }
    let path = Path::new(name);
    if path.is_absolute() || path.components().count() != 1 {
        return bad("it is not a single path component");
    }
    Ok(())
}

/// Checks a model URL: `https`, or plain `http` to a loopback host (`127.0.0.0/8`, `::1`,
/// `localhost`) for tests. Returns the parsed URL.
pub fn check_url(url: &str) -> Result<ureq::http::Uri, EngineError> {
    let uri: ureq::http::Uri = url.parse().map_err(|e| {
        EngineError::invalid_input(format!("model URL `{}` is not a URL: {e}", redact(url)))
    })?;
    let host = uri.host().unwrap_or("");
    if host.is_empty() {
        return Err(EngineError::invalid_input(format!(
            "model URL `{}` has no host",
            redact(url)
        )));
    }
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if is_loopback_host(host) => Ok(uri),
        Some("http") => Err(EngineError::invalid_input(format!(
            "model URL `{}` uses plain http: model files are fetched over https only \
             (plain http is allowed to loopback hosts only)",
            redact(url)
        ))),
        _ => Err(EngineError::invalid_input(format!(
            "model URL `{}` is not an https URL",
            redact(url)
        ))),
    }
}

/// `localhost`, `127.0.0.0/8` or `::1` (with or without brackets).
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
        || host.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback())
}

/// A URL without its query and fragment (signed download URLs carry credentials there),
/// for messages and logs.
pub fn redact(url: &str) -> &str {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    &url[..end]
}

/// One file to make present: the wire entry, its lowercase expected hash and its URL.
pub(crate) struct Plan<'a> {
    pub(crate) file: &'a ModelFile,
    pub(crate) sha: Option<String>,
    pub(crate) url: ureq::http::Uri,
}

impl<'a> Plan<'a> {
    fn new(file: &'a ModelFile) -> Result<Plan<'a>, EngineError> {
        check_file_name(&file.filename)?;
        let url = check_url(&file.url)?;
        let sha = match &file.sha256 {
            None => None,
            Some(s) => {
                let s = s.trim();
                if s.len() != 64 || !s.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(EngineError::invalid_input(format!(
                        "sha256 of `{}` is not 64 hex digits",
                        file.filename
                    )));
                }
                Some(s.to_ascii_lowercase())
            }
        };
        Ok(Plan { file, sha, url })
    }
}

// ------------------------------------------------------------------------------------------
// Cache and sidecar
// ------------------------------------------------------------------------------------------

pub(crate) use studio_core::wire::hex;

/// `path` with `suffix` appended to its file name.
pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Whether `path` is a usable verified copy for `plan` (see the module docs). A copy whose
/// hash is wrong is removed when `remove_bad` (the store's own directory), else left.
fn cached(path: &Path, plan: &Plan<'_>, remove_bad: bool) -> Result<bool, EngineError> {
    let meta = match fs::metadata(path) {
        Ok(m) if m.is_file() => m,
        Ok(_) => {
            return Err(EngineError::io(format!(
                "{} exists but is not a file",
                path.display()
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => {
            return Err(EngineError::io(format!(
                "cannot stat {}: {e}",
                path.display()
            )))
        }
    };
    let Some(expected) = &plan.sha else {
        return Ok(true);
    };
    if Sidecar::read(path).is_some_and(|s| s.vouches_for(expected, &meta)) {
        return Ok(true);
    }
    let name = &plan.file.filename;
    job_log::info(&format!(
        "verifying {} (no valid {SIDECAR_SUFFIX} record)",
        path.display()
    ));
    let actual = hash_file(path)
        .map_err(|e| EngineError::io(format!("cannot read {}: {e}", path.display())))?;
    if &actual == expected {
        Sidecar::write(path, &actual);
        return Ok(true);
    }
    job_log::warn(&format!(
        "{} has SHA-256 {actual}, not the expected {expected}{}",
        path.display(),
        if remove_bad {
            "; removed, it is downloaded again"
        } else {
            "; not used"
        }
    ));
    if remove_bad {
        let _ = fs::remove_file(with_suffix(path, SIDECAR_SUFFIX));
        fs::remove_file(path)
            .map_err(|e| EngineError::io(format!("cannot remove the bad copy of {name}: {e}")))?;
    }
    Ok(false)
}

/// SHA-256 of a whole file, lowercase hex.
pub(crate) fn hash_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    hash_reader(&mut file, &mut hasher)?;
    Ok(hex(&hasher.finalize()))
}

/// Feeds everything `reader` holds to `hasher`; the byte count.
pub(crate) fn hash_reader(reader: &mut impl Read, hasher: &mut Sha256) -> io::Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => {
                hasher.update(&buf[..n]);
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The `<file>.sha256` record: `<hex>  <name>` (the `sha256sum` format), then
/// `size <bytes>` and `mtime_ns <nanoseconds since the epoch>` of the file it vouches for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Sidecar {
    sha: String,
    size: u64,
    mtime_ns: Option<u128>,
}

fn mtime_ns(meta: &fs::Metadata) -> Option<u128> {
    meta.modified()
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_nanos())
}

impl Sidecar {
    fn read(path: &Path) -> Option<Sidecar> {
        let text = fs::read_to_string(with_suffix(path, SIDECAR_SUFFIX)).ok()?;
        let mut lines = text.lines();
        let sha = lines
            .next()?
            .split_whitespace()
            .next()?
            .to_ascii_lowercase();
        let mut size = None;
        let mut mtime = None;
        for line in lines {
            match line.split_once(' ') {
                Some(("size", v)) => size = v.trim().parse().ok(),
                Some(("mtime_ns", v)) => mtime = v.trim().parse().ok(),
                _ => {}
            }
        }
        Some(Sidecar {
            sha,
            size: size?,
            mtime_ns: mtime,
        })
    }

    fn vouches_for(&self, expected: &str, meta: &fs::Metadata) -> bool {
        self.sha == expected
            && self.size == meta.len()
            && match (self.mtime_ns, mtime_ns(meta)) {
                (Some(a), Some(b)) => a == b,
                // A platform without mtimes: size and hash record only.
                (None, None) => true,
                _ => false,
            }
    }

    /// Records `sha` for the file at `path` as it is now. Best effort: a failure only
    /// means the next job hashes the file again.
    fn write(path: &Path, sha: &str) {
        let result = (|| -> io::Result<()> {
            let meta = fs::metadata(path)?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut text = format!("{sha}  {name}\nsize {}\n", meta.len());
            if let Some(m) = mtime_ns(&meta) {
                text.push_str(&format!("mtime_ns {m}\n"));
            }
            let side = with_suffix(path, SIDECAR_SUFFIX);
            let tmp = with_suffix(path, SIDECAR_TMP_SUFFIX);
            {
                let mut f = File::create(&tmp)?;
                f.write_all(text.as_bytes())?;
                f.sync_all()?;
            }
            fs::rename(&tmp, &side)
        })();
        if let Err(e) = result {
            tracing::warn!(
                "cannot write the {SIDECAR_SUFFIX} record of {}: {e} (it is hashed again next time)",
                path.display()
            );
        }
    }
}

// ------------------------------------------------------------------------------------------
// One download per file
// ------------------------------------------------------------------------------------------

/// Files being downloaded by this process (the in-process half of the lock).
static IN_PROGRESS: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

/// Held while a file is downloaded: the path in [`IN_PROGRESS`] and an exclusive OS lock
/// on `<file>.lock` (so other processes sharing the models root wait too). Both are
/// released on drop; the lock file itself stays (removing it would race).
pub(crate) struct DownloadLock {
    key: PathBuf,
    _file: Option<File>,
}

impl DownloadLock {
    pub(crate) fn acquire(dest: &Path, wait: Duration) -> Result<DownloadLock, EngineError> {
        let deadline = Instant::now() + wait;
        let busy = || {
            EngineError::failed(
                format!(
                    "another download of {} is still running after {}s",
                    dest.display(),
                    wait.as_secs()
                ),
                true,
            )
        };
        let mut announced = false;
        loop {
            let mut held = IN_PROGRESS.lock().unwrap_or_else(|e| e.into_inner());
            if held.insert(dest.to_path_buf()) {
                break;
            }
            drop(held);
            if !announced {
                job_log::info(&format!(
                    "waiting for another download of {}",
                    dest.display()
                ));
                announced = true;
            }
            if Instant::now() >= deadline {
                return Err(busy());
            }
            std::thread::sleep(LOCK_POLL);
        }
        let mut lock = DownloadLock {
            key: dest.to_path_buf(),
            _file: None,
        };
        lock._file = os_lock(dest, deadline, &mut announced).map_err(|e| match e {
            Some(e) => e,
            None => busy(),
        })?;
        Ok(lock)
    }
}

impl Drop for DownloadLock {
    fn drop(&mut self) {
        let mut held = IN_PROGRESS.lock().unwrap_or_else(|e| e.into_inner());
        held.remove(&self.key);
    }
}

/// The OS lock on `<dest>.lock`; `Err(None)` when the deadline passed.
#[cfg(any(unix, windows))]
fn os_lock(
    dest: &Path,
    deadline: Instant,
    announced: &mut bool,
) -> Result<Option<File>, Option<EngineError>> {
    let path = with_suffix(dest, LOCK_SUFFIX);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| {
            Some(EngineError::io(format!(
                "cannot open the lock file {}: {e}",
                path.display()
            )))
        })?;
    loop {
        match fs4::FileExt::try_lock(&file) {
            Ok(()) => return Ok(Some(file)),
            Err(fs4::TryLockError::WouldBlock) => {}
            Err(fs4::TryLockError::Error(e)) => {
                // A file system without locks: the in-process guard still holds.
                tracing::debug!("no OS lock on {}: {e}", path.display());
                return Ok(Some(file));
            }
        }
        if !*announced {
            job_log::info(&format!(
                "waiting for another process downloading {}",
                dest.display()
            ));
            *announced = true;
        }
        if Instant::now() >= deadline {
            return Err(None);
        }
        std::thread::sleep(LOCK_POLL);
    }
}

/// No OS file locks on this platform: the in-process guard alone.
#[cfg(not(any(unix, windows)))]
fn os_lock(
    _dest: &Path,
    _deadline: Instant,
    _announced: &mut bool,
) -> Result<Option<File>, Option<EngineError>> {
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ids_are_their_own_directory() {
        for id in ["smollm2-135m", "whisper_tiny.en", "Model-1.2"] {
            assert_eq!(model_dir_name(id).unwrap(), id);
        }
    }

    #[test]
    fn other_ids_are_sanitised_and_distinct() {
        let a = model_dir_name("org/model").unwrap();
        let b = model_dir_name("org_model").unwrap();
        let c = model_dir_name("org\\model").unwrap();
        assert!(a.starts_with("org_model-"), "{a}");
        assert_eq!(b, "org_model");
        assert_ne!(a, c);
        for id in ["..", ".", "../../etc", "/abs", "a b", "ü", ".hidden"] {
            let d = model_dir_name(id).unwrap();
            check_file_name(&d).unwrap_or_else(|e| panic!("{id} -> {d}: {e}"));
            assert!(!d.starts_with('.'), "{id} -> {d}");
            assert!(d
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)));
        }
        let long = "x".repeat(500);
        assert!(model_dir_name(&long).unwrap().len() <= MAX_MODEL_DIR_LEN + 13);
        assert!(model_dir_name("").is_err());
    }

    #[test]
    fn file_names_must_be_plain() {
        for ok in ["model.gguf", "tokenizer.json", "a..b", "..x"] {
            check_file_name(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "/abs",
            "a\\b",
            "C:x",
            "x\0",
            "m.part",
            "m.sha256",
            "m.lock",
            "m.sha256.tmp",
        ] {
            let e = check_file_name(bad).unwrap_err();
            assert!(!e.retryable(), "{bad}");
        }
        assert!(check_file_name(&"n".repeat(MAX_FILE_NAME_LEN + 1)).is_err());
    }

    #[test]
    fn urls_need_https_except_to_loopback() {
        for ok in [
            "https://example.com/m.gguf",
            "http://127.0.0.1:8080/m",
            "http://127.1.2.3/m",
            "http://localhost/m",
            "http://[::1]:9/m",
        ] {
            check_url(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "http://example.com/m",
            "http://10.0.0.1/m",
            "http://128.0.0.1/m",
            "ftp://example.com/m",
            "file:///etc/passwd",
            "not a url",
            "/relative",
        ] {
            let e = check_url(bad).unwrap_err();
            assert!(!e.retryable(), "{bad}");
        }
        assert!(check_url("http://example.com/m")
            .unwrap_err()
            .message
            .contains("https"));
    }

    #[test]
    fn redaction_drops_query_and_fragment() {
        assert_eq!(redact("https://h/p?sig=secret"), "https://h/p");
        assert_eq!(redact("https://h/p#x"), "https://h/p");
        assert_eq!(redact("https://h/p"), "https://h/p");
    }

    #[test]
    fn sidecar_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        fs::write(&path, b"abc").unwrap();
        let sha = hash_file(&path).unwrap();
        assert_eq!(
            sha,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        Sidecar::write(&path, &sha);
        let side = Sidecar::read(&path).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert!(side.vouches_for(&sha, &meta));
        assert!(!side.vouches_for(&"0".repeat(64), &meta));
        let text = fs::read_to_string(with_suffix(&path, SIDECAR_SUFFIX)).unwrap();
        assert!(text.starts_with(&format!("{sha}  f.bin\n")), "{text}");
        // A changed size is noticed without hashing.
        fs::write(&path, b"abcd").unwrap();
        assert!(!side.vouches_for(&sha, &fs::metadata(&path).unwrap()));
    }

    #[test]
    fn the_lock_excludes_a_second_holder_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("m.bin");
        let first = DownloadLock::acquire(&dest, Duration::from_millis(10)).unwrap();
        let e = match DownloadLock::acquire(&dest, Duration::from_millis(250)) {
            Err(e) => e,
            Ok(_) => panic!("a second lock was granted"),
        };
        assert!(
            e.retryable() && e.message.contains("another download"),
            "{e}"
        );
        drop(first);
        DownloadLock::acquire(&dest, Duration::from_millis(10)).unwrap();
    }

    #[test]
    fn option_defaults_are_the_named_constants() {
        let o = FetchOptions::default();
        assert_eq!(o.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(o.read_timeout, DEFAULT_READ_TIMEOUT);
        assert_eq!(o.lock_wait, DEFAULT_LOCK_WAIT);
        assert_eq!(o.disk_headroom_percent, 10);
        assert_eq!(o.max_redirects, MAX_REDIRECTS);
        assert_eq!(o.progress, ProgressMode::Auto);
        assert_eq!(DEFAULT_CONNECT_TIMEOUT, Duration::from_secs(15));
        assert_eq!(DEFAULT_READ_TIMEOUT, Duration::from_secs(30));
    }
}
