//! The runtime-agnostic half of a shell: everything the core asks for except the socket.
//!
//! Both shells drive the core the same way; only the WebSocket IO and the way they sleep
//! differ. So everything else lives here, written once:
//!
//! * [`CommandRouter::perform`] carries out one `Command`:
//!   * `Http` -> a background thread ([`HttpRunner`]); the answer arrives via the sink;
//!   * `Dispatch` / `CancelJob` / `DiscardResult` -> the [`EnginePool`];
//!   * `KeepResult` / `ForgetResult` -> the durable outbox beside the config file
//!     ([`crate::outbox`], written in order off the loop; an upload entry with the bytes
//!     the pool holds);
//!   * `MintSecret` -> the OS CSPRNG, answered at once with `Input::Minted`;
//!   * `Persist` -> applied to the [`Config`] and saved atomically; a failed save is logged
//!     and answered with an error `Input::Log` (shipped to the studio), the worker keeps
//!     running;
//!   * `Report` -> a `tracing` event (target `studio_core`) at the notice's level with
//!     `category` and `job_id` fields;
//!   * `CheckUpdate` / `ApplyUpdate` -> the self-updater ([`crate::update`]) on a background
//!     thread; the answer (`Input::UpdateChecked` / `Input::UpdateApplied`) arrives via the
//!     sink;
//!   * `Connect` / `Send` / `Close` -> returned as [`Effect::Socket`] for the shell;
//!   * `Exit` and `Wait` -> returned as [`Effect::Exit`] / [`Effect::Wait`].
//! * [`CommandRouter::feed`] is the whole driving contract of the core in one call: hand
//!   it an input, it calls `Worker::handle`, drains `Worker::poll` to the final `Wait`,
//!   performs every command, feeds immediate answers back (and drains again), passes
//!   socket commands to the shell's callback and returns the deadline to sleep until. It
//!   holds the drain's `Dispatch`es back: the shell starts them with
//!   [`CommandRouter::start_held_jobs`] once it has written the drain's socket commands,
//!   so the job's `accept` (sent in the same drain, before the `Dispatch`) is on the wire
//!   before the engine takes a CPU. The drain's `Report`s wait too, and are logged right
//!   after those jobs start: formatting a log line never delays an `accept` or a result,
//!   and a short job runs while its lines are written.
//!   With a [`Recorder`] set (`--record`), each input it hands the core, at the exact
//!   `Now` it used, and the commands of that input's drain become one trace step.
//!
//! The clock it reads the time from is [`crate::clock::Clock`].

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use studio_core::wire::{JobOfferClaim, LogEntry};
use studio_core::worker::{
    Command, ExitCode, HttpRequest, HttpResult, Input, LogLevel, Notice, RunId, UsageError, Worker,
};
use studio_core::Mono;
use studio_engines::Engine;

use crate::clock::Clock;
use crate::config::Config;
use crate::error::ShellError;
use crate::outbox::{Outbox, OutboxWriter, OUTBOX_LOG_CATEGORY};
use crate::pool::{EnginePool, EventSink, HttpRunner, PoolEvent};
use crate::record::Recorder;

/// What the shell must do after [`CommandRouter::perform`].
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// A socket command (`Connect`, `Send`, `Close`): the shell's own IO.
    Socket(Command),
    /// An immediate answer to feed back to the core (after the current drain).
    Input(Input),
    /// Terminate the process with this code once the drain is done.
    Exit { code: ExitCode, reason: String },
    /// The drain's final command: sleep until this deadline (`None`: until IO).
    Wait(Option<Mono>),
    /// Done; nothing for the shell to do.
    None,
}

/// The result of [`CommandRouter::feed`].
#[derive(Clone, Debug, PartialEq)]
pub struct Drained {
    /// The deadline of the final `Wait`: sleep until then (or IO / a sink event), then feed
    /// `Input::Tick`.
    pub until: Option<Mono>,
    /// Set when the core asked to exit: finish the socket commands, then exit with it.
    pub exit: Option<(ExitCode, String)>,
}

/// Performs the core's non-socket commands (see the module docs).
pub struct CommandRouter {
    config: Config,
    config_path: PathBuf,
    pool: EnginePool,
    http: HttpRunner,
    outbox: OutboxWriter,
    updater: crate::update::Background,
    sink: EventSink,
    clock: Clock,
    recorder: Option<Recorder>,
    /// `Dispatch`es of the last [`CommandRouter::feed`], not started yet.
    held_jobs: Vec<(RunId, Arc<JobOfferClaim>)>,
    /// `Report`s of the last [`CommandRouter::feed`], not logged yet.
    held_reports: Vec<Notice>,
}

impl CommandRouter {
    /// A router saving `config` to `config_path` on `Persist`, running jobs on `engine`
    /// and HTTP on `agent`, delivering background completions to `sink`.
    pub fn new(
        config: Config,
        config_path: PathBuf,
        engine: Arc<dyn Engine>,
        agent: ureq::Agent,
        sink: EventSink,
        clock: Clock,
    ) -> CommandRouter {
        let outbox = OutboxWriter::new(Outbox::beside(&config_path), Arc::clone(&sink));
        CommandRouter {
            updater: crate::update::Background::new(crate::update::Updater::from_config(&config)),
            config,
            config_path,
            pool: EnginePool::new(engine, Arc::clone(&sink)),
            http: HttpRunner::new(agent, Arc::clone(&sink)),
            outbox,
            sink,
            clock,
            recorder: None,
            held_jobs: Vec::new(),
            held_reports: Vec::new(),
        }
    }

    /// Records every input [`CommandRouter::feed`] hands the core from now on (`None`:
    /// stop; the previous recorder is flushed and closed).
    pub fn set_recorder(&mut self, recorder: Option<Recorder>) {
        self.recorder = recorder;
    }

    /// The recorder, if recording.
    pub fn recorder(&self) -> Option<&Recorder> {
        self.recorder.as_ref()
    }

    /// The config as last persisted.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Where `Persist` saves the config.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Changes a setting of the config and saves it (atomically), for an operator's change
    /// to a running worker. The config is the one `Persist` saves too, so neither write
    /// undoes the other. On a failed save nothing changes.
    pub fn update_config(&mut self, change: impl FnOnce(&mut Config)) -> Result<(), ShellError> {
        let mut config = self.config.clone();
        change(&mut config);
        config.save(&self.config_path)?;
        self.config = config;
        Ok(())
    }

    /// The engine pool.
    pub fn pool(&self) -> &EnginePool {
        &self.pool
    }

    /// The clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Reads the durable outbox back at start: the bytes of binary results go to the pool,
    /// and the inputs to feed before `Input::Start` come back: one error `Input::Log` per
    /// entry that was skipped (half-written or damaged; removed), then `Input::Restore`
    /// when anything was kept.
    pub fn restore_outbox(&self) -> Vec<Input> {
        let report = Outbox::beside(&self.config_path).load();
        let mut inputs = Vec::new();
        for why in report.skipped {
            let message = format!("outbox entry skipped: {why}");
            tracing::warn!(category = OUTBOX_LOG_CATEGORY, "{message}");
            inputs.push(Input::Log(LogEntry {
                ts: self.clock.wall().to_rfc3339(),
                level: "warn".into(),
                category: OUTBOX_LOG_CATEGORY.into(),
                message,
                job_id: None,
            }));
        }
        let mut results = Vec::new();
        for loaded in report.entries {
            if let Some(bytes) = loaded.bytes {
                self.pool.restore(&loaded.result.job_id, bytes);
            }
            results.push(loaded.result);
        }
        if !results.is_empty() {
            tracing::info!(
                category = OUTBOX_LOG_CATEGORY,
                "{} kept result(s) found in the outbox",
                results.len()
            );
            inputs.push(Input::Restore { results });
        }
        inputs
    }

    /// Carries out one command.
    pub fn perform(&mut self, cmd: Command) -> Effect {
        match cmd {
            Command::Connect { .. } | Command::Send { .. } | Command::Close { .. } => {
                Effect::Socket(cmd)
            }
            Command::Wait { until } => Effect::Wait(until),
            Command::Http { id, request } => {
                let body = match &*request {
                    HttpRequest::Upload { job_id, .. } => match self.pool.result_bytes(job_id) {
                        Some(bytes) => Some(bytes),
                        None => {
                            tracing::warn!(%job_id, "upload requested but no result is held");
                            return Effect::Input(Input::Http {
                                id,
                                result: HttpResult::Transport(format!(
                                    "the result of job {job_id} is no longer held; \
                                     nothing was uploaded"
                                )),
                            });
                        }
                    },
                    _ => None,
                };
                // An upload leaves once the outbox holds its result (written in order, off
                // the loop): a crash mid-upload finds it there.
                let after = body.is_some().then(|| self.outbox.flushed());
                self.http.spawn_after(id, *request, body, after);
                Effect::None
            }
            Command::MintSecret { need_install_id } => self.mint(need_install_id),
            Command::Persist(state) => {
                for secret in [&state.auth_token, &state.registration_secret]
                    .into_iter()
                    .flatten()
                {
                    crate::telemetry::remember_secret(secret.expose());
                }
                self.config.apply_persist(&state);
                match self.config.save(&self.config_path) {
                    Ok(()) => Effect::None,
                    Err(e) => {
                        let message = format!("could not save the registration: {e}");
                        tracing::error!(category = "config", "{message}");
                        Effect::Input(Input::Log(LogEntry {
                            ts: self.clock.wall().to_rfc3339(),
                            level: "error".into(),
                            category: "config".into(),
                            message,
                            job_id: None,
                        }))
                    }
                }
            }
            Command::Dispatch { run, claim } => {
                self.pool.dispatch(&claim, run);
                Effect::None
            }
            Command::CancelJob { job_id } => {
                self.pool.cancel(&job_id);
                Effect::None
            }
            Command::DiscardResult { job_id } => {
                self.pool.discard(&job_id);
                Effect::None
            }
            Command::KeepResult(result) => {
                let bytes = match &result.body {
                    studio_core::worker::KeptBody::Upload { .. } => {
                        self.pool.result_bytes(&result.job_id)
                    }
                    studio_core::worker::KeptBody::Frame { .. } => None,
                };
                self.outbox.keep(result, bytes);
                Effect::None
            }
            Command::ForgetResult { job_id } => {
                self.outbox.forget(job_id);
                Effect::None
            }
            Command::CheckUpdate => {
                let sink = Arc::clone(&self.sink);
                self.updater
                    .check(move |result| sink(PoolEvent::UpdateChecked { result }));
                Effect::None
            }
            Command::ApplyUpdate { version } => {
                let sink = Arc::clone(&self.sink);
                self.updater.install(version, move |result| {
                    sink(PoolEvent::UpdateApplied { result })
                });
                Effect::None
            }
            Command::Report(notice) => {
                report(&notice);
                Effect::None
            }
            Command::Exit { code, reason } => {
                // The drain's lines before the last one.
                self.report_held();
                if code.is_error() {
                    tracing::error!(code = code.code(), "exiting: {reason}");
                } else {
                    tracing::info!(code = code.code(), "exiting: {reason}");
                }
                Effect::Exit { code, reason }
            }
        }
    }

    fn mint(&self, need_install_id: bool) -> Effect {
        let install_id = if need_install_id {
            match crate::entropy::install_id() {
                Ok(id) => Some(id),
                Err(e) => return entropy_failure(e),
            }
        } else {
            None
        };
        match crate::entropy::registration_secret() {
            Ok(secret) => Effect::Input(Input::Minted {
                install_id,
                secret: secret.into(),
            }),
            Err(e) => entropy_failure(e),
        }
    }

    /// Starts the jobs the last [`CommandRouter::feed`] held back, in order, then logs the
    /// notices it held. A shell calls it right after writing that feed's socket commands.
    pub fn start_held_jobs(&mut self) {
        for (run, claim) in std::mem::take(&mut self.held_jobs) {
            self.pool.dispatch(&claim, run);
        }
        self.report_held();
    }

    /// Logs the notices held back so far, in order.
    fn report_held(&mut self) {
        for notice in self.held_reports.drain(..) {
            report(&notice);
        }
    }

    /// Feeds `input` to `worker` and drives it to rest: handle, drain to `Wait`, perform
    /// every command (socket commands go to `socket`, in order), feed immediate answers back
    /// and drain again. Returns the final deadline and any exit request. A `Dispatch` and a
    /// `Report` are held back for [`CommandRouter::start_held_jobs`] (see the module docs).
    ///
    /// A `UsageError` (e.g. a job result racing a cancellation) leaves the core unchanged;
    /// it is logged and the drain goes on.
    pub fn feed(
        &mut self,
        worker: &mut Worker,
        input: Input,
        socket: &mut dyn FnMut(Command),
    ) -> Drained {
        let mut pending = VecDeque::from([input]);
        let mut drained = Drained {
            until: None,
            exit: None,
        };
        while let Some(input) = pending.pop_front() {
            let now = self.clock.now();
            // Recording: this input and every command of its drain (one trace step).
            let mut record = self
                .recorder
                .as_ref()
                .filter(|r| r.is_active())
                .map(|_| (input.clone(), Vec::new()));
            if let Err(e) = worker.handle(now, input) {
                match e {
                    UsageError::UnknownJob(_) => tracing::debug!("input ignored by the core: {e}"),
                    _ => tracing::warn!("input refused by the core: {e}"),
                }
            }
            loop {
                let cmd = worker.poll();
                if let Some((_, cmds)) = &mut record {
                    cmds.push(cmd.clone());
                }
                match cmd {
                    Command::Dispatch { run, claim } => {
                        self.held_jobs.push((run, claim));
                        continue;
                    }
                    Command::Report(notice) => {
                        self.held_reports.push(notice);
                        continue;
                    }
                    _ => {}
                }
                match self.perform(cmd) {
                    Effect::Socket(cmd) => socket(cmd),
                    Effect::Input(answer) => pending.push_back(answer),
                    Effect::Exit { code, reason } => {
                        drained.exit.get_or_insert((code, reason));
                    }
                    Effect::Wait(until) => {
                        drained.until = until;
                        break;
                    }
                    Effect::None => {}
                }
            }
            if let (Some((input, cmds)), Some(recorder)) = (record, &mut self.recorder) {
                recorder.step(now, &input, &cmds);
            }
        }
        // One write per wake-up at most: a worker killed without warning leaves whole lines.
        if let Some(recorder) = &mut self.recorder {
            recorder.flush();
        }
        drained
    }
}

impl std::fmt::Debug for CommandRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandRouter")
            .field("config_path", &self.config_path)
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

fn entropy_failure(e: crate::error::ShellError) -> Effect {
    let reason = format!("cannot register: {e}");
    tracing::error!("{reason}");
    Effect::Exit {
        code: ExitCode::Fatal,
        reason,
    }
}

/// Logs a core notice as a `tracing` event at its level.
pub fn report(n: &Notice) {
    use tracing::Level;
    macro_rules! emit {
        ($level:expr) => {
            tracing::event!(
                target: "studio_core",
                $level,
                category = n.category.as_str(),
                job_id = n.job_id.as_deref(),
                "{}",
                n.message
            )
        };
    }
    match n.level {
        LogLevel::Error => emit!(Level::ERROR),
        LogLevel::Warn => emit!(Level::WARN),
        LogLevel::Info => emit!(Level::INFO),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;
    use std::thread;
    use std::time::Duration;

    use serde_json::json;
    use studio_core::worker::{
        ConnId, Credentials, HttpId, JobOutcome, LogCategory, PersistedState, RunId, WorkerConfig,
    };
    use studio_engines::Router;

    use crate::clock::wait_duration;
    use crate::pool::tests::{channel_sink, claim};
    use crate::pool::PoolEvent;

    fn router(dir: &tempfile::TempDir) -> (CommandRouter, mpsc::Receiver<PoolEvent>) {
        let (sink, rx) = channel_sink();
        let r = CommandRouter::new(
            Config::default(),
            dir.path().join("config.toml"),
            Arc::new(Router::new_default()),
            crate::http::agent(),
            sink,
            Clock::new(),
        );
        (r, rx)
    }

    fn recv(rx: &mpsc::Receiver<PoolEvent>) -> PoolEvent {
        rx.recv_timeout(Duration::from_secs(20)).expect("no event")
    }

    #[test]
    fn router_and_pool_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<CommandRouter>();
        send_sync::<EnginePool>();
        send_sync::<HttpRunner>();
        send_sync::<Clock>();
    }

    #[test]
    fn socket_wait_and_exit_pass_through() {
        let dir = tempfile::tempdir().unwrap();
        let (mut r, _rx) = router(&dir);
        for cmd in [
            Command::Connect {
                conn: ConnId(1),
                url: "ws://x".into(),
                auth_token: "t".into(),
            },
            Command::Send {
                conn: ConnId(1),
                text: "{}".into(),
            },
            Command::Close {
                conn: ConnId(1),
                code: 1000,
                reason: "bye".into(),
            },
        ] {
            assert_eq!(r.perform(cmd.clone()), Effect::Socket(cmd));
        }
        assert_eq!(
            r.perform(Command::Wait {
                until: Some(Mono(5))
            }),
            Effect::Wait(Some(Mono(5)))
        );
        assert_eq!(
            r.perform(Command::Exit {
                code: ExitCode::AuthFailed,
                reason: "re-register".into()
            }),
            Effect::Exit {
                code: ExitCode::AuthFailed,
                reason: "re-register".into()
            }
        );
        for level in [LogLevel::Error, LogLevel::Warn, LogLevel::Info] {
            let notice = Notice {
                level,
                category: LogCategory::Ws,
                message: "m".into(),
                job_id: Some("j".into()),
            };
            assert_eq!(r.perform(Command::Report(notice)), Effect::None);
        }
    }

    #[test]
    fn mint_answers_with_fresh_values() {
        let dir = tempfile::tempdir().unwrap();
        let (mut r, _rx) = router(&dir);
        match r.perform(Command::MintSecret {
            need_install_id: true,
        }) {
            Effect::Input(Input::Minted {
                install_id: Some(id),
                secret,
            }) => {
                assert_eq!(id.len(), 36);
                assert_eq!(secret.expose().len(), 64);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            r.perform(Command::MintSecret {
                need_install_id: false
            }),
            Effect::Input(Input::Minted {
                install_id: None,
                ..
            })
        ));
    }

    #[test]
    fn updates_run_in_the_background_and_answer_through_the_sink() {
        // A one-shot feed on loopback: one release, not newer than this build.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut head = String::new();
            let mut reader = BufReader::new(s.try_clone().unwrap());
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                head.push_str(&line);
            }
            let body = r#"[{"tag_name":"v0.0.1","assets":[]}]"#;
            write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            head
        });
        let dir = tempfile::tempdir().unwrap();
        let (sink, rx) = channel_sink();
        let config = Config {
            auto_update_feed: Some(format!("http://127.0.0.1:{port}/releases")),
            ..Config::default()
        };
        let mut r = CommandRouter::new(
            config,
            dir.path().join("config.toml"),
            Arc::new(Router::new_default()),
            crate::http::agent(),
            sink,
            Clock::new(),
        );
        assert_eq!(r.perform(Command::CheckUpdate), Effect::None);
        let event = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(event, PoolEvent::UpdateChecked { result: Ok(None) });
        let head = server.join().unwrap().to_ascii_lowercase();
        assert!(head.starts_with("get /releases "), "{head}");
        assert!(
            head.contains(&format!(
                "user-agent: studio-worker/{}",
                env!("CARGO_PKG_VERSION")
            )),
            "{head}"
        );
        assert!(
            head.contains("accept: application/vnd.github+json"),
            "{head}"
        );
        // Nothing was found, so there is nothing to install.
        assert_eq!(
            r.perform(Command::ApplyUpdate {
                version: "9.9.9".into()
            }),
            Effect::None
        );
        match rx.recv_timeout(Duration::from_secs(30)).unwrap() {
            PoolEvent::UpdateApplied { result: Err(e) } => {
                assert!(e.contains("9.9.9 is no longer known"), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn persist_saves_and_a_failed_save_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (mut r, _rx) = router(&dir);
        let state = PersistedState {
            install_id: Some("iid".into()),
            registration_request_id: Some("rr-1".into()),
            registration_secret: Some("s".repeat(64).into()),
            worker_id: None,
            auth_token: None,
        };
        assert_eq!(r.perform(Command::Persist(state.clone())), Effect::None);
        let saved = Config::load(r.config_path()).unwrap();
        assert_eq!(saved.registration_request_id.as_deref(), Some("rr-1"));
        assert_eq!(saved.install_id.as_deref(), Some("iid"));
        assert_eq!(r.config().registration_request_id.as_deref(), Some("rr-1"));

        // Make the path unwritable: a directory where the file should be.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir(&blocked).unwrap();
        r.config_path = blocked;
        match r.perform(Command::Persist(state)) {
            Effect::Input(Input::Log(entry)) => {
                assert_eq!(entry.level, "error");
                assert_eq!(entry.category, "config");
                assert!(
                    entry.message.contains("could not save"),
                    "{}",
                    entry.message
                );
                assert!(!entry.message.contains(&"s".repeat(64)));
                assert!(entry.ts.ends_with('Z'));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn jobs_run_in_the_pool_and_uploads_need_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (mut r, rx) = router(&dir);
        let mut c = claim("j-1", json!({"kind": "audio_tts", "text": "hello"}));
        c.model = "synthetic-tts".into();
        assert_eq!(
            r.perform(Command::Dispatch {
                run: RunId(1),
                claim: Arc::new(c)
            }),
            Effect::None
        );
        match recv(&rx).into_input() {
            Input::JobFinished {
                job_id,
                run,
                outcome: JobOutcome::Binary { ext, .. },
            } => {
                assert_eq!((job_id.as_str(), run), ("j-1", RunId(1)));
                assert_eq!(ext, "wav");
            }
            other => panic!("{other:?}"),
        }
        assert!(r.pool().result_bytes("j-1").is_some());
        assert_eq!(
            r.perform(Command::DiscardResult {
                job_id: "j-1".into()
            }),
            Effect::None
        );
        // Upload of a result that is gone: answered at once, nothing sent.
        let upload = Command::Http {
            id: HttpId(3),
            request: Box::new(HttpRequest::Upload {
                url: "http://127.0.0.1:9/x".into(),
                auth_token: "t".into(),
                job_id: "j-1".into(),
                prompt: "hello".into(),
                ext: "wav".into(),
            }),
        };
        assert!(matches!(
            r.perform(upload),
            Effect::Input(Input::Http {
                id: HttpId(3),
                result: HttpResult::Transport(_)
            })
        ));
        // A cancel drops the held bytes; the result names its run for the core to judge.
        let mut c = claim("j-2", json!({"kind": "image", "prompt": "p"}));
        c.model = "synthetic-image".into();
        r.perform(Command::Dispatch {
            run: RunId(2),
            claim: Arc::new(c),
        });
        let finished = recv(&rx).into_input();
        assert!(matches!(finished, Input::JobFinished { run: RunId(2), .. }));
        assert_eq!(r.pool().held_results(), 1);
        r.perform(Command::CancelJob {
            job_id: "j-2".into(),
        });
        assert_eq!(r.pool().held_results(), 0);
    }

    /// A studio stand-in that answers `count` HTTP requests with `200 body`.
    fn studio(count: usize, body: &'static str) -> (String, mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for _ in 0..count {
                let Ok((stream, _)) = listener.accept() else {
                    return;
                };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let mut len = 0;
                loop {
                    let mut h = String::new();
                    reader.read_line(&mut h).unwrap();
                    if h.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            len = v.trim().parse().unwrap();
                        }
                    }
                }
                let mut b = vec![0; len];
                reader.read_exact(&mut b).unwrap();
                let mut stream = stream;
                write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
                tx.send(line.trim_end().to_string()).unwrap();
            }
        });
        (base, rx)
    }

    #[test]
    fn feed_drives_registration_end_to_end() {
        let dir = tempfile::tempdir().unwrap();
        let (base, seen) = studio(1, r#"{"requestId":"rr-42","status":"pending"}"#);
        let (sink, rx) = channel_sink();
        let config = Config {
            api_base_url: base.clone(),
            ..Config::default()
        };
        config.save(&dir.path().join("config.toml")).unwrap();
        let mut r = CommandRouter::new(
            config.clone(),
            dir.path().join("config.toml"),
            Arc::new(Router::new_default()),
            crate::http::agent(),
            sink,
            Clock::new(),
        );
        let host = crate::host::probe();
        let models = Router::new_default().capabilities();
        let mut worker = Worker::new(config.to_worker_config(host, models, 7));
        let mut socket_cmds = Vec::new();
        let drained = r.feed(&mut worker, Input::Start, &mut |c| socket_cmds.push(c));
        assert!(socket_cmds.is_empty(), "{socket_cmds:?}");
        assert_eq!(drained.exit, None);
        // The minted secret and install id were persisted before the request left.
        let saved = Config::load(r.config_path()).unwrap();
        assert_eq!(saved.install_id.as_ref().map(String::len), Some(36));
        assert_eq!(
            saved.registration_secret.as_ref().map(String::len),
            Some(64)
        );
        assert_eq!(
            seen.recv_timeout(Duration::from_secs(20)).unwrap(),
            "POST /graphics/api/workers/register-request HTTP/1.1"
        );
        // The response comes back through the sink and is fed in.
        let input = recv(&rx).into_input();
        assert!(matches!(
            &input,
            Input::Http {
                result: HttpResult::Response { status: 200, .. },
                ..
            }
        ));
        let drained = r.feed(&mut worker, input, &mut |c| socket_cmds.push(c));
        assert!(drained.until.is_some(), "the poll timer is armed");
        let saved = Config::load(r.config_path()).unwrap();
        assert_eq!(saved.registration_request_id.as_deref(), Some("rr-42"));
        assert!(!format!("{saved}").contains(saved.registration_secret.as_deref().unwrap()));
    }

    /// A worker with credentials (`w-1`), for the loopback studio's address.
    fn registered_worker() -> Worker {
        let mut cfg = WorkerConfig::for_tests("http://127.0.0.1:9790");
        cfg.credentials = Some(Credentials {
            worker_id: "w-1".into(),
            auth_token: "tok".into(),
        });
        Worker::new(cfg)
    }

    #[test]
    fn an_offers_accept_reaches_the_shell_before_its_job_starts() {
        let dir = tempfile::tempdir().unwrap();
        let (mut r, rx) = router(&dir);
        let mut worker = registered_worker();
        let mut socket_cmds = Vec::new();
        let mut feed = |r: &mut CommandRouter, worker: &mut Worker, input| {
            socket_cmds.clear();
            r.feed(worker, input, &mut |c| socket_cmds.push(c));
            std::mem::take(&mut socket_cmds)
        };
        let conn = ConnId(1);
        feed(&mut r, &mut worker, Input::Start);
        feed(&mut r, &mut worker, Input::Connected { conn });
        let welcome = r#"{"type":"welcome","workerId":"w-1","serverTime":"now"}"#;
        feed(
            &mut r,
            &mut worker,
            Input::Frame {
                conn,
                text: welcome.into(),
            },
        );
        let offer = json!({"type": "offer", "claim": claim("j-a", json!({"kind": "image", "prompt": "p"}))});
        let sent = feed(
            &mut r,
            &mut worker,
            Input::Frame {
                conn,
                text: offer.to_string(),
            },
        );
        assert!(
            sent.iter().any(
                |c| matches!(c, Command::Send { text, .. } if text.contains(r#""type":"accept""#))
            ),
            "{sent:?}"
        );
        // The job waits for the shell to have written the accept, and so does the offer's
        // log line.
        assert_eq!(r.held_jobs.len(), 1);
        assert!(
            r.held_reports
                .iter()
                .any(|n| n.message.starts_with("offer j-a ")),
            "{:?}",
            r.held_reports
        );
        assert!(matches!(rx.try_recv(), Err(mpsc::TryRecvError::Empty)));
        r.start_held_jobs();
        assert!(r.held_jobs.is_empty());
        assert!(r.held_reports.is_empty());
        assert!(matches!(
            recv(&rx).into_input(),
            Input::JobFinished { run: RunId(_), .. }
        ));
    }

    #[test]
    fn feed_passes_socket_commands_to_the_shell() {
        let dir = tempfile::tempdir().unwrap();
        let (mut r, _rx) = router(&dir);
        let mut worker = registered_worker();
        let mut socket_cmds = Vec::new();
        let drained = r.feed(&mut worker, Input::Start, &mut |c| socket_cmds.push(c));
        assert!(
            matches!(socket_cmds.as_slice(), [Command::Connect { .. }]),
            "{socket_cmds:?}"
        );
        assert!(drained.until.is_some(), "connect timeout armed");
        let wait = wait_duration(drained.until, r.clock().mono()).unwrap();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(15));
        // Shutdown before the connection is up: the core exits cleanly.
        socket_cmds.clear();
        let drained = r.feed(&mut worker, Input::Shutdown, &mut |c| socket_cmds.push(c));
        assert_eq!(drained.exit.map(|(code, _)| code), Some(ExitCode::Clean));
        assert!(
            socket_cmds
                .iter()
                .all(|c| matches!(c, Command::Close { .. })),
            "{socket_cmds:?}"
        );
    }
}
