//! The window's only way to the daemon: one thread that calls the local control API, so
//! the UI thread never waits on the network.
//!
//! The UI thread sends a [`Call`]; the thread carries it out and answers with [`Event`]s,
//! then wakes the UI (`request_repaint`). Between calls it polls `/daemon/status` and the
//! new lines of `/daemon/logs` every [`POLL_INTERVAL`]. Every request gives up after
//! [`CALL_TIMEOUT`], so a daemon that stops answering shows as disconnected within
//! `POLL_INTERVAL + CALL_TIMEOUT` (under 2 s) while the window keeps drawing. The daemon
//! is found through `local-api.json` beside the config, read again after every failure (a
//! restarted daemon may listen on another port).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use studio_shell::api::client::{Client, ClientError};
use studio_shell::lock::{DaemonLock, Lock};
use studio_shell::Config;

use crate::model::{DaemonStatus, LogPage, SettingsReply};

/// How often the status and the logs are read.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// How long one API request may take before the daemon counts as not answering.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(1200);
/// How long a disconnected daemon may take to show as such (the window's promise).
pub const DISCONNECT_WITHIN: Duration = Duration::from_secs(2);
const _: () = assert!(POLL_INTERVAL.as_millis() + CALL_TIMEOUT.as_millis() < 2000);

/// What the window asks of the daemon.
#[derive(Clone, Debug, PartialEq)]
pub enum Call {
    Pause,
    Resume,
    Enable,
    Disable,
    /// Stop the worker (`POST /daemon/shutdown`).
    Shutdown,
    /// Read the settings (`None`) or change some (`PATCH /daemon/settings`; with no daemon
    /// answering, config.toml is edited directly, through the config module's writer).
    Settings(Option<Map<String, Value>>),
    /// `POST /daemon/check-update`.
    CheckUpdate,
    /// Start `run` for this config, detached.
    StartDaemon,
    /// Forget the registration: stop the worker, clear it from config.toml, start it
    /// again (it asks the studio for approval as a new worker).
    ResetRegistration,
}

impl Call {
    /// A short name for messages.
    pub fn label(&self) -> &'static str {
        match self {
            Call::Pause => "pause",
            Call::Resume => "resume",
            Call::Enable => "enable",
            Call::Disable => "disable",
            Call::Shutdown => "stop the worker",
            Call::Settings(_) => "settings",
            Call::CheckUpdate => "check for updates",
            Call::StartDaemon => "start the worker",
            Call::ResetRegistration => "reset registration",
        }
    }
}

/// What the thread reports.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A fresh `/daemon/status`.
    Status(Box<DaemonStatus>),
    /// No daemon answers (why).
    Disconnected(String),
    /// New log lines.
    Logs(LogPage),
    /// The settings (read, or after a change: what was applied, what needs a restart).
    Settings(SettingsReply),
    /// A call's outcome: a message for the person (`Err`: it failed).
    Done {
        call: &'static str,
        result: Result<String, String>,
    },
}

/// The worker program the window starts (`program --config <config> run`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Worker {
    pub program: PathBuf,
    /// Start it when it does not answer the window's first poll.
    pub start_if_down: bool,
}

impl Worker {
    /// This program (the window is the `ui` subcommand of the worker binary), started when
    /// down.
    pub fn this_program() -> Worker {
        Worker {
            program: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("studio-worker")),
            start_if_down: true,
        }
    }
}

/// Wakes the UI thread after an event (egui's `request_repaint`).
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// The UI thread's end: send calls, take events.
#[derive(Debug)]
pub struct Backend {
    calls: Sender<Call>,
    events: Receiver<Event>,
}

/// The far end of [`Backend::pair`], for tests: the calls the window made, and a way to
/// feed it events.
#[derive(Debug)]
pub struct FakeDaemon {
    pub calls: Receiver<Call>,
    pub events: Sender<Event>,
}

impl Backend {
    /// Starts the API thread for the daemon of `config_path`, which `worker` starts when
    /// asked (and, with [`Worker::start_if_down`], when it does not answer the first poll).
    pub fn start(config_path: PathBuf, worker: Worker, waker: Waker) -> Backend {
        let (calls, call_rx) = mpsc::channel();
        let (event_tx, events) = mpsc::channel();
        std::thread::Builder::new()
            .name("ui-api".into())
            .spawn(move || {
                Poller {
                    config_path,
                    client: None,
                    log_after: 0,
                    start_daemon: worker.start_if_down,
                    program: worker.program,
                    events: event_tx,
                    waker,
                }
                .run(call_rx)
            })
            .expect("start the window's API thread");
        Backend { calls, events }
    }

    /// A backend wired to a [`FakeDaemon`] instead of a thread (widget tests).
    pub fn pair() -> (Backend, FakeDaemon) {
        let (calls, call_rx) = mpsc::channel();
        let (event_tx, events) = mpsc::channel();
        (
            Backend { calls, events },
            FakeDaemon {
                calls: call_rx,
                events: event_tx,
            },
        )
    }

    /// Asks for `call` (never blocks).
    pub fn send(&self, call: Call) {
        let _ = self.calls.send(call);
    }

    /// The next event, if one is waiting (never blocks).
    pub fn try_recv(&self) -> Option<Event> {
        self.events.try_recv().ok()
    }

    /// The next event, waiting up to `timeout` (tests and the tray loop).
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Event> {
        self.events.recv_timeout(timeout).ok()
    }
}

/// A waker that can be pointed at the current window (each opening of the window has its
/// own egui context).
#[derive(Clone, Default)]
pub struct WakeSlot(Arc<Mutex<Option<Waker>>>);

impl WakeSlot {
    /// Points the slot at `waker`.
    pub fn set(&self, waker: Waker) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(waker);
    }

    /// The waker to give [`Backend::start`].
    pub fn waker(&self) -> Waker {
        let slot = self.0.clone();
        Arc::new(move || {
            if let Some(w) = slot.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                w();
            }
        })
    }
}

struct Poller {
    config_path: PathBuf,
    client: Option<Client>,
    log_after: u64,
    start_daemon: bool,
    program: PathBuf,
    events: Sender<Event>,
    waker: Waker,
}

impl Poller {
    fn run(mut self, calls: Receiver<Call>) {
        let mut next_poll = Instant::now();
        loop {
            match calls.recv_timeout(next_poll.saturating_duration_since(Instant::now())) {
                Ok(call) => self.perform(call),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if Instant::now() >= next_poll {
                self.poll();
                next_poll = Instant::now() + POLL_INTERVAL;
            }
        }
    }

    fn emit(&self, event: Event) {
        let _ = self.events.send(event);
        (self.waker)();
    }

    fn client(&mut self) -> Option<&Client> {
        if self.client.is_none() {
            self.client = Client::for_config_with_timeout(&self.config_path, CALL_TIMEOUT);
        }
        self.client.as_ref()
    }

    /// `GET path`, forgetting the client when the daemon does not answer.
    fn get(&mut self, path: &str) -> Result<Value, ClientError> {
        let result = match self.client() {
            Some(c) => c.get(path),
            None => Err(ClientError::NotRunning),
        };
        if result == Err(ClientError::NotRunning) {
            self.client = None;
        }
        result
    }

    fn poll(&mut self) {
        match self.get("/daemon/status") {
            Ok(body) => match crate::model::read(body) {
                Ok(status) => {
                    self.emit(Event::Status(Box::new(status)));
                    self.poll_logs();
                }
                Err(e) => self.emit(Event::Disconnected(format!(
                    "the worker's status is unreadable ({e}); is it another version?"
                ))),
            },
            Err(e) => {
                self.emit(Event::Disconnected(describe(&e)));
                if std::mem::take(&mut self.start_daemon) {
                    self.perform(Call::StartDaemon);
                }
            }
        }
    }

    fn poll_logs(&mut self) {
        let Ok(body) = self.get(&format!("/daemon/logs?after={}", self.log_after)) else {
            return;
        };
        let page: LogPage = crate::model::read(body).unwrap_or_default();
        if page.next < self.log_after {
            // Another daemon (numbered from the start again): read it from its start.
            self.log_after = 0;
            return self.poll_logs();
        }
        self.log_after = page.next;
        if !page.entries.is_empty() {
            self.emit(Event::Logs(page));
        }
    }

    fn perform(&mut self, call: Call) {
        let label = call.label();
        let result = match call {
            Call::Pause => self.post("/daemon/pause").map(|_| "paused".into()),
            Call::Resume => self.post("/daemon/resume").map(|_| "resumed".into()),
            Call::Enable => self.post("/daemon/enable").map(|_| "enabled".into()),
            Call::Disable => self.post("/daemon/disable").map(|_| "disabled".into()),
            Call::Shutdown => self
                .post("/daemon/shutdown")
                .map(|_| "the worker is stopping".into()),
            Call::CheckUpdate => {
                self.check_update();
                return;
            }
            Call::Settings(None) => {
                // A read: the form fills in; nothing to tell.
                match self.settings(None) {
                    Ok(reply) => self.emit(Event::Settings(reply)),
                    Err(e) => self.emit(Event::Done {
                        call: label,
                        result: Err(e),
                    }),
                }
                return;
            }
            Call::Settings(edits) => match self.settings(edits) {
                Ok(reply) => {
                    let message = saved_message(&reply);
                    self.emit(Event::Settings(reply));
                    Ok(message)
                }
                Err(e) => Err(e),
            },
            Call::StartDaemon => start_daemon(&self.program, &self.config_path),
            Call::ResetRegistration => self.reset_registration(),
        };
        self.emit(Event::Done {
            call: label,
            result,
        });
        // Show the effect at once.
        self.poll();
    }

    /// `POST /daemon/check-update` on a thread of its own (the worker answers once the feed
    /// has, up to 90 s; the status keeps flowing meanwhile); a worker that has no such route
    /// is a build without self-update.
    fn check_update(&mut self) {
        let (events, waker) = (self.events.clone(), self.waker.clone());
        let config_path = self.config_path.clone();
        std::thread::spawn(move || {
            let result = match Client::for_config_with_timeout(&config_path, CHECK_UPDATE_TIMEOUT) {
                None => Err(describe(&ClientError::NotRunning)),
                Some(client) => match client.post("/daemon/check-update") {
                    Ok(v) => Ok(v
                        .get("text")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .unwrap_or_else(|| "update check done".into())),
                    Err(ClientError::NotRunning) if client.get("/daemon/status").is_ok() => {
                        Err(UPDATE_CHECK_UNAVAILABLE.into())
                    }
                    Err(e) => Err(describe(&e)),
                },
            };
            let _ = events.send(Event::Done {
                call: Call::CheckUpdate.label(),
                result,
            });
            waker();
        });
    }

    fn post(&mut self, path: &str) -> Result<Value, String> {
        let result = match self.client() {
            Some(c) => c.post(path),
            None => Err(ClientError::NotRunning),
        };
        result.map_err(|e| {
            if e == ClientError::NotRunning {
                self.client = None;
            }
            describe(&e)
        })
    }

    /// Reads or edits the settings: through the daemon when one answers, else in
    /// config.toml itself.
    fn settings(&mut self, edits: Option<Map<String, Value>>) -> Result<SettingsReply, String> {
        let edits_or_empty = edits.clone().unwrap_or_default();
        let answer = self.client().map(|c| match &edits {
            Some(edits) => c.patch("/daemon/settings", &Value::Object(edits.clone())),
            None => c.get("/daemon/settings"),
        });
        match answer {
            Some(Ok(body)) => crate::model::read(body).map_err(|e| e.to_string()),
            Some(Err(ClientError::Failed { message, .. })) => Err(message),
            Some(Err(ClientError::NotRunning)) | None => {
                self.client = None;
                edit_file(&self.config_path, &edits_or_empty)
            }
        }
    }

    /// Stops the worker, forgets the registration, starts the worker again. The API going
    /// quiet is not the end of the process (it still drains and writes its state), so the
    /// config is edited only once the daemon lock is ours: the old worker is gone, and no
    /// other can start until the edit is saved. The lock is let go just before the new
    /// worker starts, or it would find the config taken and leave.
    fn reset_registration(&mut self) -> Result<String, String> {
        let was_running = self.get("/daemon/status").is_ok();
        if was_running {
            self.post("/daemon/shutdown")?;
        }
        let deadline = Instant::now() + RESET_STOP_TIMEOUT;
        let lock = loop {
            match DaemonLock::acquire(&self.config_path).map_err(|e| e.to_string())? {
                Lock::Acquired(lock) => break lock,
                Lock::HeldBy { pid, .. } if Instant::now() > deadline => {
                    let who = pid.map_or_else(|| "a worker".into(), |p| format!("worker {p}"));
                    return Err(format!(
                        "{who} still runs for this config and did not stop; try again"
                    ));
                }
                Lock::HeldBy { .. } => std::thread::sleep(RESET_LOCK_RETRY),
            }
        };
        self.client = None;
        let mut config = Config::load(&self.config_path).map_err(|e| e.to_string())?;
        config.clear_registration();
        config.save(&self.config_path).map_err(|e| e.to_string())?;
        lock.release();
        if was_running {
            start_daemon(&self.program, &self.config_path)?;
        }
        Ok("registration forgotten; the worker asks the studio for approval again".into())
    }
}

/// How often a reset looks whether the stopping worker has let go of the config.
pub const RESET_LOCK_RETRY: Duration = Duration::from_millis(100);

/// How long "Check for updates" waits for the worker (which waits up to 90 s for the feed).
pub const CHECK_UPDATE_TIMEOUT: Duration = Duration::from_secs(100);

/// What "Check for updates" says to a worker built without self-update.
pub const UPDATE_CHECK_UNAVAILABLE: &str = "not available in this build of the worker";

/// How long a reset waits for the worker to stop (it finishes a job in flight first).
pub const RESET_STOP_TIMEOUT: Duration = Duration::from_secs(45);

fn describe(e: &ClientError) -> String {
    match e {
        ClientError::NotRunning => "no worker answers for this config".into(),
        ClientError::Failed { status, message } => {
            format!("the worker answered {status}: {message}")
        }
    }
}

/// What a save says.
pub fn saved_message(reply: &SettingsReply) -> String {
    match (reply.applied.is_empty(), reply.restart_required.is_empty()) {
        (true, true) => "saved".into(),
        (false, true) => format!("saved and applied: {}", reply.applied.join(", ")),
        (_, false) => format!(
            "saved; restart required for: {}",
            reply.restart_required.join(", ")
        ),
    }
}

/// The settings edited in config.toml itself (no daemon runs: nothing to apply live, so
/// every change waits for the next start).
pub fn edit_file(config_path: &Path, edits: &Map<String, Value>) -> Result<SettingsReply, String> {
    let before = Config::load(config_path).map_err(|e| e.to_string())?;
    let after = before.with_settings(edits)?;
    if after != before {
        after.save(config_path).map_err(|e| e.to_string())?;
    }
    Ok(SettingsReply {
        settings: after.settings(),
        live: Vec::new(),
        applied: Vec::new(),
        restart_required: Vec::new(),
    })
}

/// Starts `program run` for `config_path`, detached from the window: its own process group, no
/// terminal, so closing the window (or its terminal) never stops the worker.
pub fn start_daemon(program: &Path, config_path: &Path) -> Result<String, String> {
    let mut command = Command::new(program);
    command
        .arg("--config")
        .arg(config_path)
        .arg("run")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    detach(&mut command);
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start the worker: {e}"))?;
    let pid = child.id();
    // Reaped when it ends (it usually outlives the window).
    std::thread::spawn(move || child.wait());
    Ok(format!(
        "no worker was running for this config; started one (pid {pid})"
    ))
}

#[cfg(unix)]
fn detach(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    command.process_group(0);
}

#[cfg(windows)]
fn detach(command: &mut Command) {
    use std::os::windows::process::CommandExt;
    const DETACHED_PROCESS: u32 = 0x0000_0008;
    const CREATE_NEW_PROCESS_GROUP: u32 = 0x0000_0200;
    command.creation_flags(DETACHED_PROCESS | CREATE_NEW_PROCESS_GROUP);
}

#[cfg(not(any(unix, windows)))]
fn detach(_command: &mut Command) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_no_worker_the_settings_are_edited_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let config = Config {
            auth_token: Some("kept-secret".into()),
            ..Config::default()
        };
        config.save(&path).unwrap();
        let edits = |v: Value| v.as_object().unwrap().clone();
        let reply = edit_file(&path, &edits(serde_json::json!({"vram_threshold_gb": 3}))).unwrap();
        assert_eq!(reply.settings["vram_threshold_gb"], 3.0);
        let saved = Config::load(&path).unwrap();
        assert_eq!(saved.vram_threshold_gb, 3.0);
        assert_eq!(saved.auth_token.as_deref(), Some("kept-secret"));
        let e = edit_file(&path, &edits(serde_json::json!({"vram_threshold_gb": -3}))).unwrap_err();
        assert!(e.contains("vram_threshold_gb"), "{e}");
        assert_eq!(Config::load(&path).unwrap().vram_threshold_gb, 3.0);
    }

    #[test]
    fn a_silent_worker_shows_within_the_promised_time() {
        assert!(POLL_INTERVAL + CALL_TIMEOUT < DISCONNECT_WITHIN);
    }

    #[test]
    fn a_save_says_what_was_applied_and_what_waits() {
        let reply = |applied: &[&str], restart: &[&str]| SettingsReply {
            applied: applied.iter().map(|s| s.to_string()).collect(),
            restart_required: restart.iter().map(|s| s.to_string()).collect(),
            ..SettingsReply::default()
        };
        assert_eq!(saved_message(&reply(&[], &[])), "saved");
        assert_eq!(
            saved_message(&reply(&["vram_threshold_gb"], &[])),
            "saved and applied: vram_threshold_gb"
        );
        assert_eq!(
            saved_message(&reply(&["auto_enabled"], &["models_root"])),
            "saved; restart required for: models_root"
        );
    }
}
