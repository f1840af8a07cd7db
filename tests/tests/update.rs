//! Self-update end to end, on both binaries: a copy of the worker binary (the update
//! replaces its executable) against the loopback studio and a loopback release feed
//! serving real archives built here. The new "binary" is a small script named like the
//! worker that answers `--version` with the release's version and, run otherwise, records
//! its arguments and environment: the worker must install it and execute it with the same
//! arguments. Every bad release is refused with a clear log line and leaves the running
//! binary untouched; a job in flight is never interrupted.
#![cfg(unix)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use studio_core::wire::TaskKind;
use studio_e2e::control::LocalApi;
use studio_e2e::files::FileServer;
use studio_e2e::{for_each_shell, wait_until, Bin, Setup, Studio, Worker, WAIT};
use studio_shell::update::testing::{gz, sha256_hex as sha256, tar_of, xz};
use studio_shell::update::BUILD_TARGET;

/// The version every test release carries (above any version this workspace will have).
const NEW: &str = "9.0.0";
/// The feed's file name on the loopback server.
const FEED: &str = "releases";

/// How a test release is broken (or not).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Release {
    Good,
    BadChecksum,
    NoChecksum,
    WrongVersion,
    EscapingPath,
}

/// A worker binary copied into a temp dir of its own (the update replaces the copy).
struct Copied {
    _dir: tempfile::TempDir,
    bin: Bin,
}

fn copy_of(bin: &Bin) -> Copied {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(bin.shell.binary);
    fs::copy(&bin.path, &path).unwrap();
    Copied {
        _dir: dir,
        bin: Bin {
            shell: bin.shell,
            path,
        },
    }
}

/// The script standing in for the new binary: `--version` answers `version`; any other
/// call records its arguments (one per line) and environment into `record_dir`.
fn script(version: &str, record_dir: &Path) -> Vec<u8> {
    let rec = record_dir.display();
    format!(
        "#!/bin/sh\n\
         if [ \"$1\" = \"--version\" ]; then echo \"studio-worker {version}\"; exit 0; fi\n\
         for a in \"$@\"; do printf '%s\\n' \"$a\"; done > '{rec}/argv.tmp'\n\
         env > '{rec}/env.txt'\n\
         mv '{rec}/argv.tmp' '{rec}/argv.txt'\n\
         exit 0\n"
    )
    .into_bytes()
}

/// Writes the release's files and the feed into `dir` (served by `server`).
fn publish(dir: &Path, server: &FileServer, bin: &str, kind: Release, record_dir: &Path) {
    let version = if kind == Release::WrongVersion {
        "0.0.9"
    } else {
        NEW
    };
    let exe = script(version, record_dir);
    let folder = format!("{bin}-{BUILD_TARGET}");
    let (name, bytes) = match kind {
        // cargo-dist's layout: the binary in one top-level folder, xz.
        Release::Good => (
            format!("{folder}.tar.xz"),
            xz(&tar_of(&[(&format!("{folder}/{bin}"), &exe)])),
        ),
        Release::EscapingPath => (
            format!("{folder}.tar.gz"),
            gz(&tar_of(&[("../escaped", b"x"), (bin, &exe)])),
        ),
        _ => (format!("{folder}.tar.gz"), gz(&tar_of(&[(bin, &exe)]))),
    };
    fs::write(dir.join(&name), &bytes).unwrap();
    let mut assets = vec![json!({"name": name, "browser_download_url": server.url(&name)})];
    let sum = match kind {
        Release::BadChecksum => Some(sha256(b"something else")),
        Release::NoChecksum => None,
        _ => Some(sha256(&bytes)),
    };
    if let Some(sum) = sum {
        let sum_name = format!("{name}.sha256");
        fs::write(dir.join(&sum_name), format!("{sum}  {name}\n")).unwrap();
        assets.push(json!({"name": sum_name, "browser_download_url": server.url(&sum_name)}));
    }
    let feed = json!([
        {"tag_name": "nightly", "prerelease": false, "draft": false, "assets": []},
        {"tag_name": format!("v{NEW}"), "prerelease": false, "draft": false, "assets": assets},
    ]);
    write_feed(dir, &feed);
}

/// Replaces the feed atomically (the server may read it at any time).
fn write_feed(dir: &Path, feed: &Value) {
    let tmp = dir.join("feed.tmp");
    fs::write(&tmp, feed.to_string()).unwrap();
    fs::rename(&tmp, dir.join(FEED)).unwrap();
}

struct Rig {
    studio: Studio,
    server: FileServer,
    feed_dir: tempfile::TempDir,
    record_dir: tempfile::TempDir,
    copy: Copied,
    original: String,
}

fn rig(bin: &Bin) -> Rig {
    let studio = Studio::with_worker("w-1", "secret-token");
    let feed_dir = tempfile::tempdir().unwrap();
    write_feed(feed_dir.path(), &json!([]));
    let server = FileServer::serve_dir(feed_dir.path()).unwrap();
    let record_dir = tempfile::tempdir().unwrap();
    let copy = copy_of(bin);
    let original = sha256(&fs::read(&copy.bin.path).unwrap());
    Rig {
        studio,
        server,
        feed_dir,
        record_dir,
        copy,
        original,
    }
}

impl Rig {
    fn setup(&self) -> Setup {
        Setup::provisioned("w-1", "secret-token")
            .with_auto_update(&self.server.url(FEED))
            .with_env("STUDIO_E2E_MARK", "kept-across-exec")
    }

    fn publish(&self, kind: Release) {
        publish(
            self.feed_dir.path(),
            &self.server,
            self.copy.bin.shell.binary,
            kind,
            self.record_dir.path(),
        );
    }

    fn exe(&self) -> &Path {
        &self.copy.bin.path
    }

    fn previous(&self) -> PathBuf {
        let mut p = self.exe().as_os_str().to_owned();
        p.push(".previous");
        PathBuf::from(p)
    }

    fn argv(&self) -> Option<Vec<String>> {
        let text = fs::read_to_string(self.record_dir.path().join("argv.txt")).ok()?;
        Some(text.lines().map(str::to_string).collect())
    }
}

/// The worker installs the release, releases its lock and port, and executes the new
/// binary with the same arguments and environment; the old one is kept as `.previous`,
/// and a worker started again on the same config starts cleanly.
fn installs_and_reexecs_with_the_same_arguments(bin: &Bin) {
    let rig = rig(bin);
    rig.publish(Release::Good);
    let mut worker = Worker::start(&rig.copy.bin, &rig.studio, &rig.setup());
    let code = worker.expect_exit_code();
    assert_eq!(code, 0, "the new binary ran and exited 0");
    let argv = rig.argv().expect("the new binary was executed");
    let config = worker.config_path().display().to_string();
    assert_eq!(
        argv.first().map(String::as_str),
        Some("--config"),
        "{argv:?}"
    );
    assert_eq!(argv.get(1), Some(&config), "{argv:?}");
    assert_eq!(argv.last().map(String::as_str), Some("run"), "{argv:?}");
    let env = fs::read_to_string(rig.record_dir.path().join("env.txt")).unwrap();
    assert!(env.contains("STUDIO_E2E_MARK=kept-across-exec"), "{env}");
    assert!(env.contains("RUST_LOG=info"), "{env}");
    // The executable is the new one, the old one is kept, both executable.
    let now = fs::read(rig.exe()).unwrap();
    assert!(String::from_utf8_lossy(&now).contains(&format!("studio-worker {NEW}")));
    assert_eq!(sha256(&fs::read(rig.previous()).unwrap()), rig.original);
    assert_ne!(
        fs::metadata(rig.exe()).unwrap().permissions().mode() & 0o111,
        0
    );
    let log = worker.stderr();
    for line in [
        format!("update available: {} -> {NEW}", env!("CARGO_PKG_VERSION")),
        format!("installing {NEW}"),
        format!("installed {NEW}; restarting"),
        "release tag `nightly` is not a version; skipped".to_string(),
    ] {
        assert!(log.contains(&line), "missing `{line}` in:\n{log}");
    }
    // The API was closed before the exec; the lock file may remain, and is no lock.
    let dir = worker.config_path().parent().unwrap().to_path_buf();
    assert!(!dir.join("local-api.json").exists(), "the API was released");
    write_feed(rig.feed_dir.path(), &json!([]));
    let mut again = worker.start_again(bin);
    rig.studio.wait_connections("w-1", 2);
    LocalApi::of(&again);
    assert!(again.is_running(), "{}", again.stderr());
}

/// Each bad release is refused with its reason in the log; the binary is untouched and
/// the worker keeps working.
fn refuse(bin: &Bin, kind: Release, reason: &str) {
    let rig = rig(bin);
    rig.publish(kind);
    let mut worker = Worker::start(&rig.copy.bin, &rig.studio, &rig.setup());
    rig.studio.wait_connected("w-1");
    let failed = format!("installing {NEW} failed: ");
    assert!(
        worker.wait_for_stderr(&failed, WAIT),
        "no refusal in:\n{}",
        worker.stderr()
    );
    let log = worker.stderr();
    assert!(log.contains(reason), "missing `{reason}` in:\n{log}");
    assert!(log.contains(&format!("staying on {}", env!("CARGO_PKG_VERSION"))));
    assert_eq!(
        sha256(&fs::read(rig.exe()).unwrap()),
        rig.original,
        "untouched"
    );
    assert!(!rig.previous().exists());
    assert!(rig.argv().is_none(), "nothing was executed");
    assert!(worker.is_running(), "{log}");
    // Still a worker: it takes a job.
    let job = rig
        .studio
        .submit_kind(TaskKind::Llm, "after a refused update");
    rig.studio.expect_done(&job);
    let api = LocalApi::of(&worker);
    let status = api.get("/daemon/status");
    assert_eq!(status["lastUpdateCheck"]["result"], "available", "{status}");
    assert_eq!(status["lastUpdateCheck"]["latest"], NEW, "{status}");
    if kind == Release::EscapingPath {
        assert!(!rig.exe().parent().unwrap().join("escaped").exists());
        assert!(!rig
            .exe()
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("escaped")
            .exists());
    }
}

fn refuses_a_bad_checksum(bin: &Bin) {
    refuse(bin, Release::BadChecksum, "checksum mismatch for ");
}

fn refuses_a_missing_checksum(bin: &Bin) {
    refuse(
        bin,
        Release::NoChecksum,
        ".sha256: refusing an unverified update",
    );
}

fn refuses_the_wrong_version(bin: &Bin) {
    refuse(
        bin,
        Release::WrongVersion,
        "--version says `studio-worker 0.0.9`, not 9.0.0",
    );
}

fn refuses_an_escaping_path(bin: &Bin) {
    refuse(
        bin,
        Release::EscapingPath,
        "`../escaped` would escape the unpack folder",
    );
}

/// An update found while a job runs (asked for through `POST /daemon/check-update`) waits
/// for the job: the job completes, then the worker installs and re-executes.
fn a_job_in_flight_is_never_interrupted(bin: &Bin) {
    let rig = rig(bin);
    let setup = rig
        .setup()
        .with_synthetic_delay(std::time::Duration::from_secs(5));
    let mut worker = Worker::start(&rig.copy.bin, &rig.studio, &setup);
    rig.studio.wait_connected("w-1");
    let api = LocalApi::of(&worker);
    // The first check (right after the welcome) found nothing.
    wait_until("the first check", WAIT, || {
        api.get("/daemon/status")["lastUpdateCheck"]["result"] == "up_to_date"
    });
    let job = rig.studio.submit_kind(TaskKind::Llm, "a long job");
    rig.studio.wait_job_state(&job, "running");
    rig.publish(Release::Good);
    let answer = api.call("POST", "/daemon/check-update", true, "", "");
    assert_eq!(answer.status, 200, "{}", answer.body);
    let check = answer.json();
    assert_eq!(check["result"], "available", "{check}");
    assert_eq!(
        check["text"],
        format!("update available: {} -> {NEW}", env!("CARGO_PKG_VERSION"))
    );
    rig.studio.expect_done(&job);
    assert_eq!(worker.expect_exit_code(), 0);
    assert!(rig.argv().is_some(), "re-executed after the job");
    let log = worker.stderr();
    assert!(
        log.contains("(installs when the current job is done)"),
        "{log}"
    );
    let done = log.find(&format!("installing {NEW}")).expect("installed");
    let found = log.find("installs when the current job is done").unwrap();
    assert!(found < done, "found during the job, installed after it");
}

for_each_shell!(
    installs_and_reexecs_with_the_same_arguments,
    refuses_a_bad_checksum,
    refuses_a_missing_checksum,
    refuses_the_wrong_version,
    refuses_an_escaping_path,
    a_job_in_flight_is_never_interrupted,
);

/// `install-service` / `uninstall-service` round trip against a temporary
/// `XDG_CONFIG_HOME`, with no `systemctl` on the `PATH`: the unit is written (pointing at
/// this binary and config), the commands to run are printed, both exit 0; uninstalling
/// twice is fine.
#[cfg(target_os = "linux")]
fn installs_and_uninstalls_its_service(bin: &Bin) {
    use std::process::Command;
    let home = tempfile::tempdir().unwrap();
    let xdg = home.path().join("xdg");
    let empty_path = home.path().join("no-tools");
    fs::create_dir_all(&empty_path).unwrap();
    let config = home.path().join("config.toml");
    studio_e2e::write_config(&config, "http://127.0.0.1:9/", &Setup::default()).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(&bin.path)
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("XDG_CONFIG_HOME", &xdg)
            .env("PATH", &empty_path)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stdout}{stderr}");
        stdout
    };
    let unit = xdg
        .join("systemd/user")
        .join(format!("{}.service", bin.shell.binary));
    let dry = run(&["install-service", "--dry-run"]);
    assert!(
        dry.starts_with(&format!("would write {}", unit.display())),
        "{dry}"
    );
    assert!(!unit.exists(), "a dry run writes nothing");
    let report = run(&["install-service"]);
    let text = fs::read_to_string(&unit).expect("the unit is written");
    let exec = format!(
        "ExecStart={} --config {} run\n",
        bin.path.display(),
        config.display()
    );
    assert!(text.contains(&exec), "{text}");
    assert!(text.contains("WantedBy=default.target"), "{text}");
    assert!(report.contains("did not answer"), "{report}");
    assert!(
        report.contains(&format!(
            "  systemctl --user enable --now {}.service\n",
            bin.shell.binary
        )),
        "{report}"
    );
    let report = run(&["uninstall-service"]);
    assert!(
        report.contains(&format!("removed {}", unit.display())),
        "{report}"
    );
    assert!(!unit.exists());
    let report = run(&["uninstall-service"]);
    assert!(report.starts_with("nothing to uninstall"), "{report}");
}

#[cfg(target_os = "linux")]
mod services {
    use super::installs_and_uninstalls_its_service;
    studio_e2e::for_each_shell!(installs_and_uninstalls_its_service);
}
