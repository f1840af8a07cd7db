//! The end-to-end harness of `studio-worker`: the **real worker binary** as a subprocess
//! against the **real loopback studio** (`studio-local`, in-process on `127.0.0.1:0`).
//!
//! Shared by the scenario tests (`tests/e2e.rs`) and meant for reuse by later suites (the
//! async shell, benchmarks).
//!
//! | Piece | What it does |
//! |---|---|
//! | [`Shell`], [`SHELLS`], [`Bin`] | the worker binaries the scenarios run over, and where to find them |
//! | [`run_on`], [`for_each_shell!`] | run a `fn(&Bin)` scenario on one shell; one `#[test]` per (shell, scenario) |
//! | [`Studio`] | a `studio-local` server with its own output dir, plus waiting helpers |
//! | [`Setup`], [`write_config`] | the worker's minimal `config.toml` and environment |
//! | [`Worker`] | the worker process: output captured to files, [`Worker::wait_exit`], [`Worker::sigterm`], [`Worker::kill`] and [`Worker::restart`] (a new process on the same config directory: what a crash and a service manager's restart do), killed on drop (output printed when the test failed, or always with `STUDIO_E2E_SHOW_OUTPUT=1`) |
//! | [`wait_until`], [`is_rfc3339_utc_millis`], magic checks | small assertions |
//! | [`files::FileServer`], [`files::model_source`], [`files::sha256_file`] | a loopback static file server (Range, request counts) for `modelSource.files[].url`, and model-source builders |
//! | [`gradio::app`] | a real Gradio app (`tests/gradio/app.py`) for the Gradio engine's tests |
//! | [`control::LocalApi`], [`control::cli`], [`control::SentrySink`] | a running worker's local control API, its CLI on the same config, and a loopback Sentry endpoint that keeps the envelopes |
//!
//! # Finding the binaries
//!
//! `cargo test --workspace` builds every package's binaries before it runs any test, so the
//! worker sits next to the test executable: `…/target/<profile>/deps/<test>` →
//! `…/target/<profile>/<binary>`. An environment variable overrides the path per shell
//! ([`Shell::env_override`], `STUDIO_WORKER_BIN` for the sync shell). `cargo test -p
//! studio-e2e` alone does **not** build the worker: run `cargo build -p studio-worker`
//! first (or test the whole workspace), or the suite runs a stale binary or fails to find
//! one.
//!
//! A missing binary of a [`Shell::required`] shell is a failure; a missing optional one
//! (none today: both shells are required) skips the scenario with a printed note.
//!
//! Nothing here asserts speed: every wait is bounded by a generous timeout ([`WAIT`]) and
//! only exists so a broken worker fails instead of hanging.

use std::fs::{self, File};
use std::io;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use studio_core::wire::{TaskKind, WorkerErrorCode};
use studio_local::{Fault, Handle, JobDetail, JobSubmission, LocalConfig, LocalStudio, ResultView};

pub mod control;
pub mod files;
pub mod gradio;
pub use files::FileServer;

/// The bound of every "wait until" of the suite: generous, so a slow machine passes.
pub const WAIT: Duration = Duration::from_secs(45);
/// How often waits re-check their condition.
pub const POLL: Duration = Duration::from_millis(25);
/// The VRAM threshold every test worker advertises.
pub const VRAM_THRESHOLD_GB: f32 = 8.0;

// ------------------------------------------------------------------------------------------
// Binaries
// ------------------------------------------------------------------------------------------

/// One worker binary the scenarios run against. Every shell has the same CLI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shell {
    /// A short name for notes and test modules (`sync`, `async`).
    pub name: &'static str,
    /// The binary's name in `target/<profile>/` (without the platform's exe suffix).
    pub binary: &'static str,
    /// An environment variable that, when set, is the binary's path instead.
    pub env_override: &'static str,
    /// A missing binary fails the test (`true`) or skips it with a note (`false`).
    pub required: bool,
}

/// The sync shell (mio + tungstenite), package `studio-worker` in `shells/sync`.
pub const SYNC: Shell = Shell {
    name: "sync",
    binary: "studio-worker",
    env_override: "STUDIO_WORKER_BIN",
    required: true,
};

/// The async shell (same CLI), package `studio-worker-async` in `shells/async`: required,
/// like the sync one (a missing binary fails the suite).
pub const ASYNC: Shell = Shell {
    name: "async",
    binary: "studio-worker-async",
    env_override: "STUDIO_WORKER_ASYNC_BIN",
    required: true,
};

/// Every shell, in the order [`for_each_shell!`] generates tests for.
pub const SHELLS: [Shell; 2] = [SYNC, ASYNC];

/// A located worker binary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bin {
    pub shell: Shell,
    pub path: PathBuf,
}

impl Bin {
    /// The shell's binary: `$<env_override>` when set, else next to the test executable.
    /// `Err` names where it looked.
    pub fn locate(shell: Shell) -> Result<Bin, String> {
        let path = match std::env::var_os(shell.env_override) {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => beside_test_executable(shell.binary)
                .map_err(|e| format!("cannot locate the target directory: {e}"))?,
        };
        if path.is_file() {
            Ok(Bin { shell, path })
        } else {
            Err(format!(
                "{} not found at {} (build it with `cargo build -p <its package>` or run \
                 `cargo test --workspace`; ${} overrides the path)",
                shell.binary,
                path.display(),
                shell.env_override
            ))
        }
    }
}

/// `…/target/<profile>/<name>` for a test executable at `…/target/<profile>/deps/<test>`.
pub fn beside_test_executable(name: &str) -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| io::Error::other("the test executable has no directory"))?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir
            .parent()
            .ok_or_else(|| io::Error::other("deps/ has no parent"))?;
    }
    Ok(dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX)))
}

/// Runs `scenario` against `shell`'s binary. A missing binary fails a required shell and
/// skips an optional one with a note.
pub fn run_on(shell: Shell, scenario: fn(&Bin)) {
    match Bin::locate(shell) {
        Ok(bin) => scenario(&bin),
        Err(why) if !shell.required => {
            println!("note: skipping on the {} shell: {why}", shell.name);
        }
        Err(why) => panic!("the {} shell is required: {why}", shell.name),
    }
}

/// One `#[test]` per (shell, scenario): `sync_shell::<scenario>` and
/// `async_shell::<scenario>`, each calling [`run_on`] with the scenario, a `fn(&Bin)` in
/// the invoking module. Listing a new shell here (and in [`SHELLS`]) is all it takes to
/// run every scenario on it.
#[macro_export]
macro_rules! for_each_shell {
    ($($scenario:ident),+ $(,)?) => {
        mod sync_shell {
            $( #[test] fn $scenario() { $crate::run_on($crate::SYNC, super::$scenario) } )+
        }
        mod async_shell {
            $( #[test] fn $scenario() { $crate::run_on($crate::ASYNC, super::$scenario) } )+
        }
    };
}

// ------------------------------------------------------------------------------------------
// Waiting
// ------------------------------------------------------------------------------------------

/// Polls `check` until it returns `Some`, or panics naming `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() >= end {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(POLL);
    }
}

/// Polls `check` until it holds, or panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    wait_for(what, timeout, || check().then_some(()))
}

// ------------------------------------------------------------------------------------------
// The studio
// ------------------------------------------------------------------------------------------

/// A running `studio-local` on an ephemeral loopback port, storing uploads in its own temp
/// dir. Derefs to its [`Handle`]; stopped on drop.
pub struct Studio {
    handle: Handle,
    out: tempfile::TempDir,
}

impl Studio {
    /// A studio with no workers (registration needs operator approval).
    pub fn start() -> Studio {
        Studio::start_with(|_| {})
    }

    /// A studio with `tweak` applied to its config.
    pub fn start_with(tweak: impl FnOnce(&mut LocalConfig)) -> Studio {
        let out = tempfile::Builder::new()
            .prefix("studio-e2e-out-")
            .tempdir()
            .expect("a temp dir for the studio");
        let mut cfg = LocalConfig {
            out_dir: out.path().to_path_buf(),
            ..LocalConfig::default()
        };
        tweak(&mut cfg);
        let handle = LocalStudio::bind(cfg)
            .and_then(LocalStudio::spawn)
            .expect("studio-local starts");
        Studio { handle, out }
    }

    /// A studio that already knows `worker_id` with `auth_token`.
    pub fn with_worker(worker_id: &str, auth_token: &str) -> Studio {
        let studio = Studio::start();
        studio
            .add_worker(worker_id, auth_token)
            .expect("provision the worker");
        studio
    }

    /// The handle (also reachable through `Deref`).
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Where uploaded results are stored.
    pub fn out_dir(&self) -> &Path {
        self.out.path()
    }

    /// Queues a job; its id.
    pub fn submit_job(&self, job: JobSubmission) -> String {
        self.handle
            .submit(job)
            .unwrap_or_else(|e| panic!("submit failed: {} {}", e.status, e.message))
    }

    /// Queues a job of `kind` around `prompt`; its id.
    pub fn submit_kind(&self, kind: TaskKind, prompt: &str) -> String {
        self.submit_job(JobSubmission::new(kind, prompt))
    }

    /// Waits for the job to finish and requires it `done`.
    pub fn expect_done(&self, job_id: &str) -> JobDetail {
        let job = self.handle.wait_for_job(job_id, WAIT);
        match job {
            Some(j) if j.summary.state == "done" => j,
            other => panic!("job {job_id} did not complete: {other:#?}"),
        }
    }

    /// The file job `job_id` delivered (waits for it to be done): its extension, bytes and
    /// reported prompt. Checks that the upload was stored as `<job id>.<ext>` in
    /// [`Studio::out_dir`] with the announced size.
    pub fn stored_file(&self, job_id: &str) -> (String, Vec<u8>, String) {
        let detail = self.expect_done(job_id);
        let Some(ResultView::File {
            ext,
            bytes,
            prompt,
            path,
            ..
        }) = detail.result
        else {
            panic!("job {job_id} has no stored file: {detail:#?}");
        };
        let path = path.expect("the upload was stored");
        assert_eq!(path.parent(), Some(self.out_dir()));
        assert_eq!(
            path.file_name().unwrap().to_string_lossy(),
            format!("{job_id}.{ext}")
        );
        let data = fs::read(&path).expect("read the stored result");
        assert_eq!(data.len() as u64, bytes);
        (ext, data, prompt)
    }

    /// Waits until the job is in `state` (`queued`, `offered`, `running`, `done`, `failed`).
    pub fn wait_job_state(&self, job_id: &str, state: &str) -> JobDetail {
        wait_for(&format!("job {job_id} to be {state}"), WAIT, || {
            self.handle.job(job_id).filter(|j| j.summary.state == state)
        })
    }

    /// Waits until `worker_id` has a welcomed session.
    pub fn wait_connected(&self, worker_id: &str) {
        assert!(
            self.handle.wait_for_worker(worker_id, WAIT),
            "worker {worker_id} did not connect within {WAIT:?}: {:#?}",
            self.handle.workers()
        );
    }

    /// Waits until `worker_id` has made at least `n` WebSocket connections and has a
    /// welcomed session.
    pub fn wait_connections(&self, worker_id: &str, n: u64) {
        wait_until(
            &format!("worker {worker_id} to be connected on connection #{n}"),
            WAIT,
            || {
                self.handle.connection_stats(worker_id).connections >= n
                    && self
                        .handle
                        .workers()
                        .iter()
                        .any(|w| w.id == worker_id && w.connected)
            },
        );
    }

    /// Waits until `worker_id` is connected and holds no job.
    pub fn wait_idle(&self, worker_id: &str) {
        wait_until(&format!("worker {worker_id} to be idle"), WAIT, || {
            self.handle
                .workers()
                .iter()
                .any(|w| w.id == worker_id && w.connected && w.idle && w.current_job.is_none())
        });
    }

    /// Sends the worker an `error` frame with `code` (then the paired close).
    pub fn send_error(&self, worker_id: &str, code: WorkerErrorCode, message: &str) {
        self.inject_fault(Fault::Error {
            worker_id: worker_id.into(),
            code,
            message: message.into(),
        });
    }

    /// Applies a fault, requiring that it worked.
    pub fn inject_fault(&self, fault: Fault) -> usize {
        let shown = format!("{fault:?}");
        self.handle
            .inject(fault)
            .unwrap_or_else(|e| panic!("fault {shown} refused: {} {}", e.status, e.message))
    }
}

impl Deref for Studio {
    type Target = Handle;
    fn deref(&self) -> &Handle {
        &self.handle
    }
}

// ------------------------------------------------------------------------------------------
// The worker's config
// ------------------------------------------------------------------------------------------

/// How a worker process is set up: its config file (only the keys a synthetic worker
/// needs) and the test hooks in its environment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Setup {
    /// `worker_id` + `auth_token`; `None`: the worker registers first.
    pub credentials: Option<(String, String)>,
    /// `STUDIO_WORKER_SYNTHETIC_DELAY_MS`: how much longer each synthetic job takes.
    pub synthetic_delay: Option<Duration>,
    /// More environment variables.
    pub env: Vec<(String, String)>,
    /// `--record PATH`: record the session there (see also [`RECORD_DIR_ENV`]).
    pub record: Option<PathBuf>,
    /// `models_root` in `config.toml`; `None`: [`Worker::start`] uses `models/` in the
    /// worker's own temp dir (never the user's `~/models`).
    pub models_root: Option<PathBuf>,
    /// More `config.toml` lines (`key = <TOML value>`), written after the others.
    pub config_lines: Vec<String>,
    /// `auto_update_feed`: auto-update on, reading this feed; `None`: auto-update off.
    pub auto_update_feed: Option<String>,
}

/// When set, every worker a scenario starts without [`Setup::recording`] records its
/// session into `$STUDIO_E2E_RECORD_DIR/<shell>/<scenario>.jsonl` (the second worker of a
/// scenario into `<scenario>-2.jsonl`, ...): how the trace corpus under `tests/traces` is
/// made (`STUDIO_E2E_RECORD_DIR=$PWD/tests/traces cargo test -p studio-e2e --test e2e`).
pub const RECORD_DIR_ENV: &str = "STUDIO_E2E_RECORD_DIR";

/// Where a worker of the running scenario records under `$STUDIO_E2E_RECORD_DIR`, if set.
/// The scenario is the name of the test thread (`sync_shell::<scenario>`).
fn corpus_path(shell: &str) -> Option<PathBuf> {
    use std::collections::BTreeSet;
    use std::sync::Mutex;
    static TAKEN: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());
    let dir = std::env::var_os(RECORD_DIR_ENV).filter(|d| !d.is_empty())?;
    let thread = std::thread::current();
    let scenario = thread
        .name()
        .and_then(|n| n.rsplit("::").next())
        .unwrap_or("unnamed")
        .to_string();
    let dir = PathBuf::from(dir).join(shell);
    fs::create_dir_all(&dir).expect("create the trace corpus dir");
    let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    let mut n = 1;
    loop {
        let name = if n == 1 {
            format!("{scenario}.jsonl")
        } else {
            format!("{scenario}-{n}.jsonl")
        };
        let path = dir.join(name);
        if taken.insert(path.clone()) {
            return Some(path);
        }
        n += 1;
    }
}

impl Setup {
    /// A worker the studio already knows.
    pub fn provisioned(worker_id: &str, auth_token: &str) -> Setup {
        Setup {
            credentials: Some((worker_id.into(), auth_token.into())),
            ..Setup::default()
        }
    }

    /// A first run: no credentials, the worker asks for registration.
    pub fn unregistered() -> Setup {
        Setup::default()
    }

    /// Each synthetic job takes `delay` longer (holds a job in flight).
    pub fn with_synthetic_delay(mut self, delay: Duration) -> Setup {
        self.synthetic_delay = Some(delay);
        self
    }

    /// Run with `--record path`.
    pub fn recording(mut self, path: impl Into<PathBuf>) -> Setup {
        self.record = Some(path.into());
        self
    }

    /// One more environment variable for the process.
    pub fn with_env(mut self, key: &str, value: &str) -> Setup {
        self.env.push((key.into(), value.into()));
        self
    }

    /// One more `config.toml` key: `value` is TOML text (`"a string"`, `90`, `["a"]`).
    pub fn with_config(mut self, key: &str, value: &str) -> Setup {
        self.config_lines.push(format!("{key} = {value}"));
        self
    }

    /// Turn auto-update on, reading the release feed at `url` (a loopback test feed).
    pub fn with_auto_update(mut self, url: &str) -> Setup {
        self.auto_update_feed = Some(url.into());
        self
    }

    /// Keep model files in `dir` (shared by several workers, or inspected by the test).
    pub fn with_models_root(mut self, dir: impl Into<PathBuf>) -> Setup {
        self.models_root = Some(dir.into());
        self
    }
}

/// `s` as a TOML basic string (quoted, escaped).
pub fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Writes the minimal config: `api_base_url`, `vram_threshold_gb`,
/// `auto_update_enabled = false` (or `true` with the feed of [`Setup::with_auto_update`]),
/// and `worker_id` + `auth_token` and `models_root` when set, then [`Setup::config_lines`].
pub fn write_config(path: &Path, api_base_url: &str, setup: &Setup) -> io::Result<()> {
    let mut text = format!(
        "api_base_url = {}\nvram_threshold_gb = {VRAM_THRESHOLD_GB:?}\n",
        toml_string(api_base_url)
    );
    match &setup.auto_update_feed {
        None => text.push_str("auto_update_enabled = false\n"),
        Some(feed) => text.push_str(&format!(
            "auto_update_enabled = true\nauto_update_feed = {}\n",
            toml_string(feed)
        )),
    }
    if let Some(root) = &setup.models_root {
        text.push_str(&format!(
            "models_root = {}\n",
            toml_string(&root.to_string_lossy())
        ));
    }
    if let Some((id, token)) = &setup.credentials {
        text.push_str(&format!(
            "worker_id = {}\nauth_token = {}\n",
            toml_string(id),
            toml_string(token)
        ));
    }
    for line in &setup.config_lines {
        text.push_str(line);
        text.push('\n');
    }
    fs::write(path, text)
}

// ------------------------------------------------------------------------------------------
// The worker process
// ------------------------------------------------------------------------------------------

/// A running `studio-worker --config <dir>/config.toml run` (RUST_LOG=info), or the
/// `studio-worker demo` of [`Worker::demo`], stdout and stderr captured to files in its own
/// temp dir. Killed on drop if still running; when the
/// test is failing, its output is printed then.
pub struct Worker {
    child: Child,
    status: Option<ExitStatus>,
    dir: tempfile::TempDir,
    models_root: PathBuf,
    config_path: PathBuf,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    label: String,
    /// How to start the same worker again ([`Worker::restart`]); `None` for the demo.
    relaunch: Option<Relaunch>,
    /// How many processes ran in this directory before the current one.
    restarts: u32,
}

/// What [`Worker::restart`] needs to start the same worker again.
#[derive(Clone, Debug)]
struct Relaunch {
    bin: Bin,
    setup: Setup,
}

impl Worker {
    /// Starts `bin` against `studio` as `setup` says.
    pub fn start(bin: &Bin, studio: &Studio, setup: &Setup) -> Worker {
        Worker::start_at(bin, &studio.base_url(), setup)
    }

    /// Starts `bin` against the studio at `api_base_url`.
    pub fn start_at(bin: &Bin, api_base_url: &str, setup: &Setup) -> Worker {
        let dir = worker_dir();
        let config_path = dir.path().join("config.toml");
        let mut setup = setup.clone();
        let models_root = setup
            .models_root
            .get_or_insert_with(|| dir.path().join("models"))
            .clone();
        write_config(&config_path, api_base_url, &setup).expect("write config.toml");
        let cmd = run_command(bin, &config_path, &setup);
        let mut worker = Worker::spawn(bin, cmd, dir, models_root, config_path);
        worker.relaunch = Some(Relaunch {
            bin: bin.clone(),
            setup,
        });
        worker
    }

    /// Kills the process (SIGKILL, if it still runs) and starts the same worker again on
    /// the same config directory (config, durable outbox, models), its output captured to
    /// new files (`stderr-2.log`, ...): a crash and a restart. A session recorded with
    /// `--record` goes to `<path>-<n>` for the new process (into the corpus, under the
    /// scenario's next free name).
    pub fn restart(&mut self) {
        self.kill();
        let relaunch = self
            .relaunch
            .clone()
            .expect("a worker started with Worker::start can be restarted");
        self.restarts += 1;
        let n = self.restarts + 1;
        let mut setup = relaunch.setup.clone();
        setup.record = setup.record.map(|p| {
            let mut name = p.into_os_string();
            name.push(format!("-{n}"));
            PathBuf::from(name)
        });
        let mut cmd = run_command(&relaunch.bin, &self.config_path, &setup);
        self.stdout_path = self.dir.path().join(format!("stdout-{n}.log"));
        self.stderr_path = self.dir.path().join(format!("stderr-{n}.log"));
        let child = cmd
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(File::create(&self.stdout_path).expect("create stdout.log"))
            .stderr(File::create(&self.stderr_path).expect("create stderr.log"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", relaunch.bin.path.display()));
        self.label = format!(
            "{} (pid {}, {} shell, start #{n})",
            relaunch.bin.shell.binary,
            child.id(),
            relaunch.bin.shell.name
        );
        self.child = child;
        self.status = None;
    }

    /// The durable outbox's entries now (`<config dir>/outbox/*.json`).
    pub fn outbox_entries(&self) -> usize {
        fs::read_dir(self.dir.path().join("outbox"))
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                    .count()
            })
            .unwrap_or(0)
    }

    /// A second `bin --config <this worker's config> run`, with its output in a temp dir of
    /// its own (the one-daemon-per-config scenario).
    pub fn start_again(&self, bin: &Bin) -> Worker {
        let dir = worker_dir();
        let mut cmd = Command::new(&bin.path);
        cmd.arg("--config")
            .arg(&self.config_path)
            .arg("run")
            .env("RUST_LOG", "info")
            .env_remove(studio_shell_delay_env())
            .env(LOCAL_API_PORT_ENV, "0")
            .env_remove("SENTRY_DSN");
        Worker::spawn(
            bin,
            cmd,
            dir,
            self.models_root.clone(),
            self.config_path.clone(),
        )
    }

    /// `bin demo`, the README's command, in a fresh temp dir of its own (the demo brings its
    /// own loopback studio and config; its results land in `<dir>/demo-out`).
    pub fn demo(bin: &Bin) -> Worker {
        let dir = worker_dir();
        let models_root = dir.path().join("models");
        let config_path = dir.path().join("config.toml");
        let mut cmd = Command::new(&bin.path);
        cmd.arg("demo")
            .env_remove("RUST_LOG")
            .env_remove(studio_shell_delay_env());
        Worker::spawn(bin, cmd, dir, models_root, config_path)
    }

    /// Starts `cmd` in `dir` with its output captured there.
    fn spawn(
        bin: &Bin,
        mut cmd: Command,
        dir: tempfile::TempDir,
        models_root: PathBuf,
        config_path: PathBuf,
    ) -> Worker {
        let stdout_path = dir.path().join("stdout.log");
        let stderr_path = dir.path().join("stderr.log");
        let child = cmd
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_path).expect("create stdout.log"))
            .stderr(File::create(&stderr_path).expect("create stderr.log"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.path.display()));
        let name = bin
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| bin.shell.binary.to_string());
        let label = format!("{name} (pid {}, {} shell)", child.id(), bin.shell.name);
        Worker {
            child,
            status: None,
            dir,
            models_root,
            config_path,
            stdout_path,
            stderr_path,
            label,
            relaunch: None,
            restarts: 0,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The worker's own temp dir.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its `models_root` (where it keeps downloaded model files).
    pub fn models_root(&self) -> &Path {
        &self.models_root
    }

    /// Its `config.toml`.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The config file as it is now.
    pub fn config_text(&self) -> String {
        fs::read_to_string(&self.config_path).unwrap_or_default()
    }

    /// The config file parsed as a TOML table (an independent parser, not the worker's).
    pub fn config_table(&self) -> toml::Table {
        let text = self.config_text();
        text.parse::<toml::Table>()
            .unwrap_or_else(|e| panic!("config.toml is not TOML ({e}):\n{text}"))
    }

    /// Everything the process wrote to stdout so far.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.stdout_path).unwrap_or_default()).into_owned()
    }

    /// Everything the process wrote to stderr so far (its log lines).
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.stderr_path).unwrap_or_default()).into_owned()
    }

    /// The last non-empty line of stderr.
    pub fn last_stderr_line(&self) -> String {
        self.stderr()
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default()
            .to_string()
    }

    /// Waits until stderr contains `needle`; `false` after `timeout`.
    pub fn wait_for_stderr(&self, needle: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if self.stderr().contains(needle) {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(POLL);
        }
    }

    /// The exit status if the process has ended (never blocks).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Waits up to `timeout` for the process to end; its status, or `None` if it still
    /// runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits up to [`WAIT`] for the process to exit on its own and returns its exit code;
    /// panics if it is still running or was ended by a signal.
    pub fn expect_exit_code(&mut self) -> i32 {
        match self.wait_exit(WAIT) {
            Some(status) => status
                .code()
                .unwrap_or_else(|| panic!("{} was ended by a signal: {status:?}", self.label)),
            None => panic!("{} did not exit within {WAIT:?}", self.label),
        }
    }

    /// Sends SIGTERM (through `kill(1)`, no libc binding needed).
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill(1)");
        assert!(
            status.success(),
            "kill -TERM {} failed: {status:?}",
            self.pid()
        );
    }

    /// Kills the process (SIGKILL) and reaps it. Harmless once it has ended.
    pub fn kill(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }

    /// Prints what the process wrote, with its paths (done on drop when the test fails).
    pub fn dump(&self) {
        eprintln!(
            "===== {} ({}) =====\n----- config.toml: {} -----\n{}\n----- stdout: {} -----\n{}\n----- stderr: {} -----\n{}\n===== end of {} =====",
            self.label,
            match self.status {
                Some(s) => format!("{s}"),
                None => "running".into(),
            },
            self.config_path.display(),
            redact_config(&self.config_text()),
            self.stdout_path.display(),
            self.stdout(),
            self.stderr_path.display(),
            self.stderr(),
            self.label,
        );
    }
}

/// The config text with secret values masked (for printing).
fn redact_config(text: &str) -> String {
    text.lines()
        .map(|l| {
            let key = l.split('=').next().unwrap_or("").trim();
            if key == "auth_token" || key == "registration_secret" {
                format!("{key} = <redacted>")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Set (to anything) to print every worker's output when it is dropped, not only when
/// the test fails.
pub const SHOW_OUTPUT_ENV: &str = "STUDIO_E2E_SHOW_OUTPUT";

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() || std::env::var_os(SHOW_OUTPUT_ENV).is_some() {
            self.dump();
        }
    }
}

/// `bin --config <config_path> [--record ...] run` with the scenario's environment.
fn run_command(bin: &Bin, config_path: &Path, setup: &Setup) -> Command {
    let mut cmd = Command::new(&bin.path);
    cmd.arg("--config").arg(config_path);
    if let Some(record) = setup.record.clone().or_else(|| corpus_path(bin.shell.name)) {
        cmd.arg("--record").arg(record);
    }
    cmd.arg("run")
        .env("RUST_LOG", "info")
        .env_remove(studio_shell_delay_env())
        // Workers of parallel tests must not fight over the default API port, and a
        // developer's Sentry must not hear from the tests.
        .env(LOCAL_API_PORT_ENV, "0")
        .env_remove("SENTRY_DSN")
        .env_remove("SENTRY_ENVIRONMENT");
    if let Some(delay) = setup.synthetic_delay {
        cmd.env(studio_shell_delay_env(), delay.as_millis().to_string());
    }
    for (k, v) in &setup.env {
        cmd.env(k, v);
    }
    cmd
}

/// The environment variable that sets the local control API's port (`0`: ephemeral).
pub const LOCAL_API_PORT_ENV: &str = "STUDIO_WORKER_LOCAL_API_PORT";

/// The environment variable of the synthetic-delay test hook (read by the worker through
/// `studio_shell::engine::engine_router`).
pub fn studio_shell_delay_env() -> &'static str {
    "STUDIO_WORKER_SYNTHETIC_DELAY_MS"
}

/// A fresh temp dir for one worker process.
fn worker_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("studio-e2e-worker-")
        .tempdir()
        .expect("a temp dir for the worker")
}

// ------------------------------------------------------------------------------------------
// Small checks
// ------------------------------------------------------------------------------------------

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`: RFC 3339, UTC, milliseconds (a log entry's `ts`).
pub fn is_rfc3339_utc_millis(ts: &str) -> bool {
    let b = ts.as_bytes();
    if b.len() != 24 {
        return false;
    }
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    let num = |r: std::ops::Range<usize>| ts[r].parse::<u32>().unwrap_or(u32::MAX);
    digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..23)
        && b[23] == b'Z'
        && (1..=12).contains(&num(5..7))
        && (1..=31).contains(&num(8..10))
        && num(11..13) < 24
        && num(14..16) < 60
        && num(17..19) < 61
}

/// A RIFF/WEBP file.
pub fn is_webp(bytes: &[u8]) -> bool {
    bytes.len() > 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP"
}

/// A PNG file.
pub fn is_png(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\x89PNG\r\n\x1a\n")
}

/// A RIFF/WAVE file with a `fmt ` chunk.
pub fn is_wav(bytes: &[u8]) -> bool {
    bytes.len() > 44
        && &bytes[..4] == b"RIFF"
        && &bytes[8..12] == b"WAVE"
        && &bytes[12..16] == b"fmt "
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert!(is_rfc3339_utc_millis("2026-05-25T12:00:00.000Z"));
        assert!(!is_rfc3339_utc_millis("2026-05-25T12:00:00Z"));
        assert!(!is_rfc3339_utc_millis("2026-05-25 12:00:00.000Z"));
        assert!(!is_rfc3339_utc_millis("2026-13-25T12:00:00.000Z"));
        assert!(!is_rfc3339_utc_millis("2026-05-25T12:00:00.000+00:00"));
    }

    #[test]
    fn config_text_is_minimal_and_escaped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        write_config(
            &path,
            "http://127.0.0.1:1/",
            &Setup::provisioned("w-1", "to\"k"),
        )
        .unwrap();
        let table: toml::Table = fs::read_to_string(&path).unwrap().parse().unwrap();
        let keys: Vec<&str> = table.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "api_base_url",
                "auth_token",
                "auto_update_enabled",
                "vram_threshold_gb",
                "worker_id"
            ]
        );
        assert_eq!(table["auth_token"].as_str(), Some("to\"k"));
        assert_eq!(table["vram_threshold_gb"].as_float(), Some(8.0));
        assert_eq!(table["auto_update_enabled"].as_bool(), Some(false));
    }

    #[test]
    fn the_models_root_is_written_when_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let setup = Setup::provisioned("w-1", "t").with_models_root("/tmp/m \"x\"");
        write_config(&path, "http://127.0.0.1:1/", &setup).unwrap();
        let table: toml::Table = fs::read_to_string(&path).unwrap().parse().unwrap();
        assert_eq!(table["models_root"].as_str(), Some("/tmp/m \"x\""));
    }

    #[test]
    fn the_binary_is_looked_for_beside_the_test_executable() {
        let p = beside_test_executable("studio-worker").unwrap();
        assert_eq!(
            p.file_name().unwrap().to_string_lossy(),
            format!("studio-worker{}", std::env::consts::EXE_SUFFIX)
        );
        assert_ne!(p.parent().unwrap().file_name().unwrap(), "deps");
    }

    #[test]
    fn magic_numbers() {
        assert!(is_png(b"\x89PNG\r\n\x1a\n...."));
        assert!(is_webp(b"RIFF\0\0\0\0WEBPVP8L"));
        assert!(!is_webp(b"RIFF\0\0\0\0WAVEfmt "));
        let mut wav = b"RIFF\0\0\0\0WAVEfmt ".to_vec();
        wav.resize(64, 0);
        assert!(is_wav(&wav));
    }
}
