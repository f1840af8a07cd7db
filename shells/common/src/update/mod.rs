//! Self-update: the IO behind the core's `CheckUpdate` and `ApplyUpdate` (the core decides
//! when; see `studio_core::worker` `update`), `studio-worker check-update` and the
//! re-exec into the new binary.
//!
//! * **Feed** ([`feed`]): `auto_update_feed` (default [`DEFAULT_FEED`], this project's GitHub
//!   releases), fetched with `User-Agent: studio-worker/<version>` and
//!   `Accept: application/vnd.github+json`; https only, plain http only to loopback hosts
//!   (the tests' feed); redirects followed by hand under the same rule; at most
//!   [`MAX_FEED_BYTES`]. The newest release above the running version by semver that has
//!   an archive for this build (`<bin>-<target>.tar.xz|.tar.gz|.zip`, `<target>` the triple
//!   this binary was built for, [`BUILD_TARGET`]) wins.
//! * **Install** ([`Updater::install`]): the archive (at most [`MAX_ARCHIVE_BYTES`]) is
//!   streamed into a temporary folder beside the executable while its SHA-256 is computed;
//!   the release's `<archive>.sha256` must exist, parse and match ([`feed::parse_checksum`]);
//!   the archive is unpacked in-process ([`archive`]: no escaping paths, no links, bounded
//!   members); the new `<bin>` must answer `--version` with the release's version within
//!   [`VERSION_TIMEOUT`]; then it replaces the running executable atomically
//!   ([`replace_executable`]: written beside it, fsynced, renamed over it, the old one kept
//!   as `<exe>.previous`). Any failure leaves the running binary untouched and says why.
//! * **Restart** ([`reexec`]): after the core exits with `ExitCode::Restart` and `run` has
//!   released `daemon.lock` and the control API, the process executes the new binary with
//!   the same arguments and environment (`exec` on Unix; spawn and exit elsewhere).

pub mod archive;
pub mod feed;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use semver::Version;
use sha2::{Digest, Sha256};
use studio_engines::models::{check_url_for, is_loopback_host, redact};

use crate::config::Config;
use feed::{FeedAsset, Release};

/// The feed a worker reads unless `auto_update_feed` names another: this project's GitHub
/// releases (the repository of the workspace's `Cargo.toml`).
pub const DEFAULT_FEED: &str = "https://api.github.com/repos/minis-gg/studio-worker/releases";
/// The target triple this binary was built for (captured by the build script).
pub const BUILD_TARGET: &str = env!("STUDIO_BUILD_TARGET");
/// The running version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The largest feed read.
pub const MAX_FEED_BYTES: u64 = 8 * 1024 * 1024;
/// The largest archive downloaded.
pub const MAX_ARCHIVE_BYTES: u64 = 512 * 1024 * 1024;
/// The largest `.sha256` file read.
pub const MAX_CHECKSUM_BYTES: u64 = 4 * 1024;
/// Redirects followed per request.
pub const MAX_REDIRECTS: usize = 5;
/// Connect timeout of every update request.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Per-read timeout of every update request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the new binary may take to answer `--version`.
pub const VERSION_TIMEOUT: Duration = Duration::from_secs(30);
/// The suffix of the kept previous executable.
pub const PREVIOUS_SUFFIX: &str = ".previous";

/// What a check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Checked {
    UpToDate { current: Version },
    Available { current: Version, release: Release },
}

/// Reads the feed and installs releases for one executable.
#[derive(Clone, Debug)]
pub struct Updater {
    pub feed: String,
    pub prerelease: bool,
    pub current: Version,
    /// The running binary's file name without `.exe` (`studio-worker`).
    pub bin: String,
    pub target: String,
}

impl Updater {
    /// The updater of this process: the config's feed and pre-release choice, this build's
    /// version and target, the running executable's name.
    pub fn from_config(config: &Config) -> Updater {
        let bin = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| crate::error::PROGRAM.to_string());
        Updater {
            feed: config
                .auto_update_feed
                .clone()
                .unwrap_or_else(|| DEFAULT_FEED.to_string()),
            prerelease: config.auto_update_prerelease,
            current: Version::parse(VERSION).expect("the crate version is semver"),
            bin,
            target: BUILD_TARGET.to_string(),
        }
    }

    /// Reads the feed and picks the release to install, if any.
    pub fn check(&self) -> Result<Checked, String> {
        let text = get_text(&self.feed, "the update feed", MAX_FEED_BYTES)?;
        let choice = feed::choose(
            &text,
            &self.current,
            &self.bin,
            &self.target,
            self.prerelease,
        )?;
        for tag in &choice.skipped_tags {
            tracing::warn!(
                category = "auto-update",
                "release tag `{tag}` is not a version; skipped"
            );
        }
        for tag in &choice.without_asset {
            tracing::info!(
                category = "auto-update",
                "release {tag} has no archive for {}-{}; skipped",
                self.bin,
                self.target
            );
        }
        let current = self.current.clone();
        Ok(match choice.release {
            None => Checked::UpToDate { current },
            Some(release) => Checked::Available { current, release },
        })
    }

    /// Downloads, verifies and installs `release` over `exe` (see the module docs). On
    /// `Err` the running binary is untouched.
    pub fn install(&self, release: &Release, exe: &Path) -> Result<(), String> {
        let dir = exe
            .parent()
            .ok_or_else(|| format!("{} has no folder", exe.display()))?;
        let work = tempfile::Builder::new()
            .prefix(&format!(".{}-update-", self.bin))
            .tempdir_in(dir)
            .map_err(|e| format!("cannot create a work folder in {}: {e}", dir.display()))?;
        let sum_asset = release.checksum.as_ref().ok_or_else(|| {
            format!(
                "release {} has no {}.sha256: refusing an unverified update",
                release.tag, release.archive.name
            )
        })?;
        let sum_text = get_text(
            &sum_asset.browser_download_url,
            &sum_asset.name,
            MAX_CHECKSUM_BYTES,
        )?;
        let want = feed::parse_checksum(&sum_text, &release.archive.name)?;
        let format = archive::Format::of(&release.archive.name)
            .ok_or_else(|| format!("{} is not a known archive type", release.archive.name))?;
        let archive_path = work.path().join(&release.archive.name);
        let have = download(&release.archive, &archive_path)?;
        if have != want {
            return Err(format!(
                "checksum mismatch for {}: the release states {want}, the download is {have}",
                release.archive.name
            ));
        }
        let unpacked = work.path().join("unpacked");
        fs::create_dir(&unpacked)
            .map_err(|e| format!("cannot create {}: {e}", unpacked.display()))?;
        archive::unpack(
            &archive_path,
            format,
            &unpacked,
            &archive::ArchiveLimits::default(),
        )
        .map_err(|e| format!("{}: {e}", release.archive.name))?;
        let exe_name = exe
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.bin.clone());
        let new = archive::find_executable(&unpacked, &exe_name)?;
        check_version(&new, &release.version)?;
        replace_executable(exe, &new)?;
        tracing::info!(
            category = "auto-update",
            "installed {} over {} (the previous binary is kept as {}{PREVIOUS_SUFFIX})",
            release.version,
            exe.display(),
            exe.display()
        );
        Ok(())
    }
}

/// The updater the command router drives: checks and installs on background threads,
/// remembering the release the last check found for the install that follows it.
#[derive(Clone, Debug)]
pub struct Background {
    updater: Updater,
    found: Arc<Mutex<Option<Release>>>,
}

impl Background {
    pub fn new(updater: Updater) -> Background {
        Background {
            updater,
            found: Arc::default(),
        }
    }

    /// Runs a check; `done` gets the core's answer (`Ok(Some(version))` when newer).
    pub fn check(&self, done: impl FnOnce(Result<Option<String>, String>) + Send + 'static) {
        let this = self.clone();
        std::thread::Builder::new()
            .name("update-check".into())
            .spawn(move || {
                let answer = match this.updater.check() {
                    Ok(Checked::UpToDate { .. }) => Ok(None),
                    Ok(Checked::Available { release, .. }) => {
                        let v = release.version.to_string();
                        *this.found.lock().unwrap_or_else(|p| p.into_inner()) = Some(release);
                        Ok(Some(v))
                    }
                    Err(e) => Err(e),
                };
                done(answer);
            })
            .expect("spawn the update-check thread");
    }

    /// Installs `version` (the release the last check found) over the running executable;
    /// `done` gets the outcome.
    pub fn install(&self, version: String, done: impl FnOnce(Result<(), String>) + Send + 'static) {
        let this = self.clone();
        std::thread::Builder::new()
            .name("update-install".into())
            .spawn(move || {
                let release = this
                    .found
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
                    .filter(|r| r.version.to_string() == version);
                let result = match release {
                    None => Err(format!("release {version} is no longer known; check again")),
                    Some(release) => std::env::current_exe()
                        .map_err(|e| format!("cannot find the running executable: {e}"))
                        .and_then(|exe| this.updater.install(&release, &exe)),
                };
                if let Err(e) = &result {
                    tracing::error!(category = "auto-update", "update to {version} refused: {e}");
                }
                done(result);
            })
            .expect("spawn the update-install thread");
    }
}

fn agent(loopback: bool) -> ureq::Agent {
    let mut config = ureq::Agent::config_builder()
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_recv_response(Some(READ_TIMEOUT))
        .timeout_per_read(Some(READ_TIMEOUT))
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(format!("studio-worker/{VERSION}"));
    if loopback {
        config = config.proxy(None);
    }
    config.build().into()
}

/// GET `url` (redirects followed by hand, each hop under the URL rule): the 200 response.
fn get(url: &str, what: &str) -> Result<ureq::http::Response<ureq::Body>, String> {
    let mut url = url.to_string();
    for _ in 0..=MAX_REDIRECTS {
        let uri = check_url_for(what, &url).map_err(|e| e.message)?;
        let loopback = is_loopback_host(uri.host().unwrap_or(""));
        let response = agent(loopback)
            .get(uri)
            .header("Accept", "application/vnd.github+json")
            .call()
            .map_err(|e| format!("cannot fetch {what} from {}: {e}", redact(&url)))?;
        let status = response.status().as_u16();
        match status {
            200 => return Ok(response),
            301 | 302 | 303 | 307 | 308 => {
                let location = response
                    .headers()
                    .get("location")
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| format!("{what}: a redirect without a Location"))?;
                url = resolve(&url, location);
            }
            _ => return Err(format!("{what} at {} answered HTTP {status}", redact(&url))),
        }
    }
    Err(format!("{what}: more than {MAX_REDIRECTS} redirects"))
}

/// A redirect's `Location` against the URL it came from.
fn resolve(base: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_string();
    }
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    format!("{}/{}", &base[..host_end], location.trim_start_matches('/'))
}

/// The body of `url` as text, at most `max` bytes.
fn get_text(url: &str, what: &str, max: u64) -> Result<String, String> {
    let response = get(url, what)?;
    let mut body = Vec::new();
    response
        .into_body()
        .into_reader()
        .take(max + 1)
        .read_to_end(&mut body)
        .map_err(|e| format!("cannot read {what}: {e}"))?;
    if body.len() as u64 > max {
        return Err(format!("{what} is larger than {max} bytes"));
    }
    String::from_utf8(body).map_err(|_| format!("{what} is not UTF-8 text"))
}

/// Streams `asset` into `to` (at most [`MAX_ARCHIVE_BYTES`]); returns its SHA-256 (hex).
fn download(asset: &FeedAsset, to: &Path) -> Result<String, String> {
    let response = get(&asset.browser_download_url, &asset.name)?;
    let mut reader = response
        .into_body()
        .into_reader()
        .take(MAX_ARCHIVE_BYTES + 1);
    let mut out = File::create(to).map_err(|e| format!("cannot create {}: {e}", to.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| format!("cannot download {}: {e}", asset.name))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > MAX_ARCHIVE_BYTES {
            return Err(format!(
                "{} is larger than {MAX_ARCHIVE_BYTES} bytes",
                asset.name
            ));
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| format!("cannot write {}: {e}", to.display()))?;
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `exe --version`: its output must contain `version` (within [`VERSION_TIMEOUT`]).
pub fn check_version(exe: &Path, version: &Version) -> Result<(), String> {
    let mut child = Command::new(exe)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("the new binary does not run: {e}"))?;
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() < VERSION_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "the new binary did not answer --version within {} s",
                    VERSION_TIMEOUT.as_secs()
                ));
            }
            Err(e) => return Err(format!("the new binary's --version failed: {e}")),
        }
    }
    let mut out = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut out);
    }
    let want = version.to_string();
    if out.contains(&want) {
        Ok(())
    } else {
        Err(format!(
            "the new binary's --version says `{}`, not {want}",
            crate::http::single_line(out.trim())
        ))
    }
}

/// Replaces `exe` with `new` atomically: the new file is copied beside `exe`, fsynced and
/// renamed over it; the old one is kept as `<exe>.previous` (replacing an older one).
pub fn replace_executable(exe: &Path, new: &Path) -> Result<(), String> {
    let name = exe
        .file_name()
        .ok_or_else(|| format!("{} has no file name", exe.display()))?
        .to_string_lossy()
        .into_owned();
    let dir = exe
        .parent()
        .ok_or_else(|| format!("{} has no folder", exe.display()))?;
    let staged = dir.join(format!(".{name}.new"));
    let previous = dir.join(format!("{name}{PREVIOUS_SUFFIX}"));
    let fail = |what: &str, p: &Path, e: io::Error| format!("cannot {what} {}: {e}", p.display());
    fs::copy(new, &staged).map_err(|e| fail("write", &staged, e))?;
    let staged_file = File::open(&staged).map_err(|e| fail("open", &staged, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&staged, fs::Permissions::from_mode(0o755))
            .map_err(|e| fail("make executable", &staged, e))?;
    }
    staged_file
        .sync_all()
        .map_err(|e| fail("fsync", &staged, e))?;
    drop(staged_file);
    // The previous binary: a second name for the running file (copied where links are not
    // supported), then the atomic rename of the new one over the running one.
    let _ = fs::remove_file(&previous);
    if fs::hard_link(exe, &previous).is_err() {
        fs::copy(exe, &previous).map_err(|e| fail("keep", &previous, e))?;
    }
    #[cfg(windows)]
    {
        // A running executable cannot be overwritten on Windows, but it can be renamed.
        let _ = fs::remove_file(&previous);
        fs::rename(exe, &previous).map_err(|e| fail("move aside", exe, e))?;
    }
    if let Err(e) = fs::rename(&staged, exe) {
        let _ = fs::remove_file(&staged);
        return Err(fail("replace", exe, e));
    }
    #[cfg(unix)]
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::debug!("cannot fsync {}: {e}", dir.display());
    }
    Ok(())
}

/// Executes `exe` in place of this process with the same arguments and environment (Unix:
/// `exec`; returns only on failure). Elsewhere: starts it and exits this process.
pub fn reexec(exe: &Path) -> io::Error {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let mut cmd = Command::new(exe);
    cmd.args(&args);
    // The lines logged so far go out before this process is replaced.
    crate::logging::flush();
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        if let Some(arg0) = std::env::args_os().next() {
            cmd.arg0(arg0);
        }
        cmd.exec()
    }
    #[cfg(not(unix))]
    {
        match cmd.spawn() {
            Ok(_) => std::process::exit(0),
            Err(e) => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_target_is_a_triple() {
        assert!(BUILD_TARGET.split('-').count() >= 3, "{BUILD_TARGET}");
        #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
        assert!(BUILD_TARGET.starts_with("x86_64-") && BUILD_TARGET.contains("linux"));
    }

    #[test]
    fn the_default_feed_is_this_projects_releases() {
        let repo = "https://github.com/minis-gg/studio-worker";
        let path = repo.trim_start_matches("https://github.com/");
        assert_eq!(
            DEFAULT_FEED,
            format!("https://api.github.com/repos/{path}/releases")
        );
        let manifest = include_str!("../../../../Cargo.toml");
        assert!(manifest.contains(&format!("repository = \"{repo}\"")));
    }

    #[test]
    fn redirects_resolve() {
        assert_eq!(
            resolve("https://a.test/x/y", "https://b.test/z"),
            "https://b.test/z"
        );
        assert_eq!(
            resolve("http://127.0.0.1:9/x/y", "/z"),
            "http://127.0.0.1:9/z"
        );
    }

    #[test]
    fn plain_http_is_refused_except_to_loopback() {
        let e = get_text("http://example.com/releases", "the update feed", 10).unwrap_err();
        assert!(e.contains("plain http"), "{e}");
        let e = get_text("ftp://example.com/releases", "the update feed", 10).unwrap_err();
        assert!(e.contains("not an https URL"), "{e}");
    }

    #[cfg(unix)]
    fn script(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[cfg(unix)]
    #[test]
    fn the_version_check_runs_the_new_binary() {
        let dir = tempfile::tempdir().unwrap();
        let good = script(dir.path(), "good", "echo studio-worker 0.2.0");
        check_version(&good, &Version::new(0, 2, 0)).unwrap();
        let e = check_version(&good, &Version::new(0, 3, 0)).unwrap_err();
        assert!(e.contains("not 0.3.0"), "{e}");
        let e = check_version(&dir.path().join("absent"), &Version::new(0, 2, 0)).unwrap_err();
        assert!(e.contains("does not run"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn replace_keeps_the_previous_binary() {
        let dir = tempfile::tempdir().unwrap();
        let exe = script(dir.path(), "studio-worker", "echo old");
        let new = script(dir.path(), "unpacked", "echo new");
        replace_executable(&exe, &new).unwrap();
        assert!(fs::read_to_string(&exe).unwrap().contains("echo new"));
        let previous = dir.path().join("studio-worker.previous");
        assert!(fs::read_to_string(&previous).unwrap().contains("echo old"));
        assert!(!dir.path().join(".studio-worker.new").exists());
        // A second update replaces the kept one.
        let newer = script(dir.path(), "unpacked2", "echo newer");
        replace_executable(&exe, &newer).unwrap();
        assert!(fs::read_to_string(&previous).unwrap().contains("echo new"));
    }
}
