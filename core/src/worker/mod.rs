//! The worker session machine: every protocol decision of the worker, with no IO.
//!
//! # Driving contract
//!
//! [`Worker`] has one mutating entry point, [`Worker::handle`], and one output stream,
//! [`Worker::poll`]. After **every** `handle` the driver drains `poll` until it returns
//! [`Command::Wait`], carries out each command, and then sleeps until the `Wait` deadline
//! (or until an IO event arrives, whichever is first). When the deadline passes it calls
//! `handle(now, Input::Tick)`. A spurious `Tick` is harmless; a `Wait { until: None }`
//! means "nothing is scheduled: sleep until IO".
//!
//! Time is passed in as [`Now`]: a monotonic [`Mono`] (microseconds) and, beside it, the
//! wall clock [`WallMs`] used only for log timestamps. The core never reads a clock.
//!
//! ```
//! use studio_core::worker::{Command, Input, Now, Worker, WorkerConfig, Credentials};
//! use studio_core::{Mono, WallMs};
//!
//! let mut cfg = WorkerConfig::for_tests("http://127.0.0.1:9790");
//! cfg.credentials = Some(Credentials { worker_id: "w-1".into(), auth_token: "tok".into() });
//! let mut worker = Worker::new(cfg);
//! let now = Now { mono: Mono::ZERO, wall: WallMs(1_700_000_000_000) };
//! worker.handle(now, Input::Start).unwrap();
//! let mut commands = Vec::new();
//! loop {
//!     let cmd = worker.poll();
//!     if let Command::Wait { until } = cmd {
//!         // sleep until `until` (or IO), then handle(Input::Tick) / the IO input
//!         assert!(until.is_some()); // the connect timeout is armed
//!         break;
//!     }
//!     commands.push(cmd);
//! }
//! assert!(matches!(commands[0], Command::Connect { .. }));
//! ```
//!
//! # Errors
//!
//! * The peer misbehaved (malformed frame, binary frame, unexpected close): the machine
//!   reacts on the wire (close, reconnect) and reports a [`Notice`]; it never panics.
//! * The driver misused the API (time going backwards, a job result for a job that was
//!   never dispatched): `handle` returns [`UsageError`] and nothing changes.
//! * An internal invariant broke: a panic, which no input sequence can reach (the fuzzer
//!   and the quickcheck properties drive arbitrary inputs to prove it).

mod backoff;
mod logs;
mod types;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;

pub use backoff::Backoff;
pub use logs::LogQueue;
pub use types::*;

use crate::secret::Secret;
use crate::time::{Mono, WallMs};
use crate::wire::{
    self, close_code, AutoRegisterRequest, JobOfferClaim, LogEntry, RegisterRequestResponse,
    RegisterStatus, RejectCode, StudioFrame, UserPresence, WorkerCapabilities, WorkerErrorCode,
    WorkerFrame,
};

/// Reject reason sent while the operator paused the worker.
pub const REASON_PAUSED: &str = "worker paused by operator";
/// Reject reason sent while `only_when_idle` is on and the person is using the computer.
pub const REASON_NOT_IDLE: &str = "only when idle: the person is using this computer";
/// Reject reason sent while the one-job slot is taken.
pub const REASON_BUSY: &str = "worker already has an in-flight job";
/// Reject reason sent while the worker is shutting down (code `busy`: the studio requeues
/// without spending an attempt).
pub const REASON_SHUTTING_DOWN: &str = "worker is shutting down";

/// What holds the one-job slot.
#[derive(Clone, Debug, PartialEq)]
enum Slot {
    Free,
    /// A studio job: accepted, dispatched, maybe finished and awaiting delivery.
    Job(Box<ActiveJob>),
    /// The updater is installing a new version.
    Updating {
        version: String,
    },
}

#[derive(Clone, Debug, PartialEq)]
struct ActiveJob {
    claim: JobOfferClaim,
    stage: JobStage,
    started: Mono,
}

#[derive(Clone, Debug, PartialEq)]
enum JobStage {
    /// The engine is working on it.
    Running,
    /// Binary result: upload `attempt` (0-based) is in flight as HTTP request `req`.
    Uploading {
        ext: String,
        attempt: u32,
        req: HttpId,
    },
    /// Binary result: waiting for the retry timer before upload `attempt`.
    UploadBackoff { ext: String, attempt: u32 },
}

/// The WebSocket link.
#[derive(Clone, Debug, PartialEq)]
enum Link {
    /// No connection and none wanted (registration, or terminal).
    Down,
    /// Waiting for the reconnect timer.
    Backoff,
    /// `Connect` issued, waiting for `Connected` (connect timeout armed).
    Connecting { conn: ConnId },
    /// Upgraded, `hello` sent, waiting for `welcome`.
    AwaitWelcome { conn: ConnId },
    /// Welcomed: pumps running.
    Live { conn: ConnId },
}

impl Link {
    fn conn(&self) -> Option<ConnId> {
        match self {
            Link::Connecting { conn } | Link::AwaitWelcome { conn } | Link::Live { conn } => {
                Some(*conn)
            }
            Link::Down | Link::Backoff => None,
        }
    }
}

/// Registration progress (PROTOCOL.md §4.1, §1.2 steps 1-2).
#[derive(Clone, Debug, PartialEq)]
enum Registration {
    /// Credentials exist; nothing to do.
    Done,
    /// Waiting for the shell to mint an install id / secret.
    Minting,
    /// `POST register-request` in flight (or waiting to be retried at the poll timer).
    Requesting { req: Option<HttpId> },
    /// Request accepted; polling its status.
    Polling { req: Option<HttpId> },
}

/// Why the machine is stopping.
#[derive(Clone, Debug, PartialEq)]
enum Stop {
    Running,
    /// Graceful shutdown asked; waiting for the in-flight job (bounded by the grace timer).
    Draining,
    /// Terminal: `Exit` has been emitted.
    Exited,
}

/// Timers, one slot each; the machine's deadline is the minimum (quinn-style table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Heartbeat,
    LogFlush,
    ReadIdle,
    ConnectTimeout,
    Reconnect,
    Registration,
    UpdateCheck,
    UploadRetry,
    ShutdownGrace,
}

const TIMER_COUNT: usize = 9;

#[derive(Clone, Debug, Default, PartialEq)]
struct Timers([Option<Mono>; TIMER_COUNT]);

impl Timers {
    fn set(&mut self, t: Timer, at: Mono) {
        self.0[t as usize] = Some(at);
    }
    fn clear(&mut self, t: Timer) {
        self.0[t as usize] = None;
    }
    fn get(&self, t: Timer) -> Option<Mono> {
        self.0[t as usize]
    }
    fn next(&self) -> Option<Mono> {
        self.0.iter().flatten().min().copied()
    }
    /// The earliest expired timer, cleared.
    fn pop_expired(&mut self, now: Mono) -> Option<Timer> {
        let all = [
            Timer::Heartbeat,
            Timer::LogFlush,
            Timer::ReadIdle,
            Timer::ConnectTimeout,
            Timer::Reconnect,
            Timer::Registration,
            Timer::UpdateCheck,
            Timer::UploadRetry,
            Timer::ShutdownGrace,
        ];
        let t = all
            .into_iter()
            .filter(|t| self.get(*t).is_some_and(|at| at <= now))
            .min_by_key(|t| (self.get(*t), *t))?;
        self.clear(t);
        Some(t)
    }
}

/// A result frame sent but not yet acknowledged by the studio (`completeAck`/`failAck`).
#[derive(Clone, Debug, PartialEq)]
struct Unacked {
    job_id: String,
    frame: String,
    /// How many sessions it has been sent on.
    sends: u32,
}

/// Most sessions a result frame is re-sent on before the worker gives up waiting for its
/// acknowledgement (a studio that never acks must not make us resend forever).
pub const MAX_RESULT_RESENDS: u32 = 3;

/// The worker session machine. See the module docs for the driving contract.
#[derive(Clone, Debug)]
pub struct Worker {
    cfg: WorkerConfig,
    out: VecDeque<Command>,
    now: Now,
    started: bool,
    stop: Stop,
    link: Link,
    next_conn: u64,
    next_http: u64,
    backoff: Backoff,
    /// Consecutive failed connection attempts since the last welcomed session.
    attempt: u32,
    registration: Registration,
    slot: Slot,
    paused: bool,
    presence: Option<UserPresence>,
    timers: Timers,
    logs: LogQueue,
    /// Heartbeats sent on the live session and not yet acked, each with the number of log
    /// batches sent before it (acks arrive in order).
    hb_outstanding: VecDeque<usize>,
    /// Log batches sent on the live session and not yet confirmed by a later heartbeatAck.
    logs_unconfirmed: VecDeque<Vec<LogEntry>>,
    /// Result frames awaiting the studio's ack.
    unacked: Vec<Unacked>,
    /// Result frames waiting for a live session (finished while disconnected).
    undelivered: VecDeque<Unacked>,
    /// An offer that arrived while our upload was in flight (at most one).
    parked_offer: Option<JobOfferClaim>,
    pending_update: Option<String>,
    update_check_in_flight: bool,
    last_heartbeat_ack: Option<Mono>,
    session_state: SessionState,
    recent_jobs: VecDeque<JobSummary>,
    recent_logs: VecDeque<LogEntry>,
    stats: Stats,
    /// The last heartbeat encoded (performance only; see [`HeartbeatCache`]).
    hb_cache: Option<HeartbeatCache>,
    /// The deadline of the `Wait` that ended the current drain, kept for repeated polls
    /// until the next `handle` (`None`: the drain has not ended).
    held_wait: Option<Option<Mono>>,
}

/// The last heartbeat frame the machine encoded, with the machine state it depends on.
/// Performance only: most heartbeats repeat the previous one, so while that state is
/// unchanged the text is reused rather than rebuilt and re-serialised. The capabilities
/// come from the configuration (fixed once the machine is built: `cfg` is private and
/// never handed out mutably) plus three inputs the machine changes: pause, user presence
/// and the VRAM threshold. Those and the current job are the key, compared each time, so
/// no code path needs to invalidate the cache. A debug assertion in `send_heartbeat`
/// re-encodes every heartbeat and compares, so a capability that starts depending on
/// other state fails every core test until it joins the key.
#[derive(Clone, Debug, PartialEq)]
struct HeartbeatCache {
    key: HeartbeatKey,
    text: String,
}

/// What a cached heartbeat was encoded from, besides the fixed configuration.
#[derive(Clone, Debug, PartialEq)]
struct HeartbeatKey {
    paused: bool,
    presence: Option<UserPresence>,
    /// By bits: the encoding tells -0.0 from 0.0.
    vram_threshold_bits: u32,
    current_job_id: Option<String>,
}

impl Worker {
    /// A new machine. Nothing happens until `handle(now, Input::Start)`.
    pub fn new(mut cfg: WorkerConfig) -> Worker {
        cfg.timings.sanitize();
        let backoff = Backoff::new(cfg.timings.backoff_base, cfg.timings.backoff_cap, cfg.seed);
        let logs = LogQueue::new(cfg.limits.log_queue_cap);
        Worker {
            cfg,
            out: VecDeque::new(),
            now: Now::default(),
            started: false,
            stop: Stop::Running,
            link: Link::Down,
            next_conn: 1,
            next_http: 1,
            backoff,
            attempt: 0,
            registration: Registration::Done,
            slot: Slot::Free,
            paused: false,
            presence: None,
            timers: Timers::default(),
            logs,
            hb_outstanding: VecDeque::new(),
            logs_unconfirmed: VecDeque::new(),
            unacked: Vec::new(),
            undelivered: VecDeque::new(),
            parked_offer: None,
            pending_update: None,
            update_check_in_flight: false,
            last_heartbeat_ack: None,
            session_state: SessionState::Stopped,
            recent_jobs: VecDeque::new(),
            recent_logs: VecDeque::new(),
            stats: Stats::default(),
            hb_cache: None,
            held_wait: None,
        }
    }

    /// The configuration the machine runs with.
    pub fn config(&self) -> &WorkerConfig {
        &self.cfg
    }

    /// Feeds one input. On `Err` nothing changed. Drain [`Worker::poll`] afterwards.
    pub fn handle(&mut self, now: Now, input: Input) -> Result<(), UsageError> {
        if now.mono < self.now.mono {
            return Err(UsageError::TimeWentBackwards {
                last: self.now.mono,
                now: now.mono,
            });
        }
        self.validate(&input)?;
        // Wall time may step backwards (NTP); keep it monotone for log ordering.
        let wall = WallMs(now.wall.0.max(self.now.wall.0));
        self.now = Now {
            mono: now.mono,
            wall,
        };
        // The Wait that ended the previous drain is superseded.
        self.held_wait = None;
        if self.stop == Stop::Exited {
            return Ok(());
        }
        self.stats.inputs += 1;
        self.on_input(input);
        self.run_timers();
        Ok(())
    }

    /// The next command. The last command of every drain is [`Command::Wait`]; after it,
    /// `poll` keeps returning the same `Wait` until the next `handle`.
    pub fn poll(&mut self) -> Command {
        if let Some(c) = self.out.pop_front() {
            return c;
        }
        let until = *self.held_wait.get_or_insert_with(|| {
            if self.stop == Stop::Exited {
                None
            } else {
                self.timers.next()
            }
        });
        Command::Wait { until }
    }

    /// The earliest deadline, if any (the same value the final `Wait` carries).
    pub fn deadline(&self) -> Option<Mono> {
        if self.stop == Stop::Exited {
            None
        } else {
            self.timers.next()
        }
    }

    /// `status().log_queue_len` without building the snapshot (the simulation checks it
    /// after every step).
    pub fn log_queue_len(&self) -> usize {
        self.logs.len()
    }

    /// A read-only snapshot for `status`, the UI and tests.
    pub fn status(&self) -> StatusSnapshot {
        StatusSnapshot {
            session: self.session_state.clone(),
            paused: self.paused,
            vram_threshold_gb: self.cfg.vram_threshold_gb,
            current_job_id: self.current_job_id().map(str::to_string),
            updating: match &self.slot {
                Slot::Updating { version } => Some(version.clone()),
                _ => None,
            },
            log_queue_len: self.logs.len(),
            log_dropped_total: self.logs.dropped_total(),
            recent_jobs: self.recent_jobs.iter().cloned().collect(),
            recent_logs: self.recent_logs.iter().cloned().collect(),
            last_heartbeat_ack: self.last_heartbeat_ack,
            reconnect_attempt: self.attempt,
            stats: self.stats.clone(),
            exited: self.stop == Stop::Exited,
        }
    }

    /// The capability snapshot the next heartbeat will carry.
    pub fn capabilities(&self) -> WorkerCapabilities {
        let host = &self.cfg.host;
        let mut caps = WorkerCapabilities {
            machine_name: host.machine_name.clone(),
            username: host.username.clone(),
            agent_version: host.agent_version.clone(),
            engine: host.engine.clone(),
            vram_total_gb: host.vram_total_gb,
            vram_threshold_gb: self.cfg.vram_threshold_gb,
            auto_enabled: !self.paused,
            auto_start: host.auto_start,
            auto_update: Some(self.cfg.auto_update_enabled),
            start_minimised: Some(self.cfg.start_minimised),
            only_when_idle: Some(self.cfg.only_when_idle),
            supported_models: Vec::new(),
            task_kinds: Vec::new(),
            supported_models_per_kind: self.cfg.models.clone(),
            user_presence: self.presence,
        };
        caps.derive_model_lists();
        caps
    }

    // --------------------------------------------------------------------------------
    // Input handling
    // --------------------------------------------------------------------------------

    fn validate(&self, input: &Input) -> Result<(), UsageError> {
        match input {
            Input::JobFinished { job_id, .. } => match &self.slot {
                Slot::Job(j) if &j.claim.job_id == job_id && j.stage == JobStage::Running => Ok(()),
                _ => Err(UsageError::UnknownJob(job_id.clone())),
            },
            Input::SetThreshold { gb } if !(gb.is_finite() && *gb >= 0.0) => {
                Err(UsageError::InvalidThreshold(*gb))
            }
            Input::Minted { secret, .. } if secret.is_empty() => Err(UsageError::EmptySecret),
            _ => Ok(()),
        }
    }

    fn on_input(&mut self, input: Input) {
        match input {
            Input::Start => self.start(),
            Input::Tick => {}
            Input::Connected { conn } => self.on_connected(conn),
            Input::ConnectFailed { conn, error } => self.on_connect_failed(conn, error),
            Input::Frame { conn, text } => self.on_frame(conn, &text),
            Input::BinaryFrame { conn, len } => {
                if self.link.conn() == Some(conn) && !matches!(self.link, Link::Connecting { .. }) {
                    self.drop_session(
                        "protocol violation",
                        &format!("protocol error: binary frame of {len} bytes from the studio"),
                    );
                }
            }
            Input::Disconnected { conn, code, reason } => self.on_disconnected(conn, code, reason),
            Input::Http { id, result } => self.on_http(id, result),
            Input::Minted { install_id, secret } => self.on_minted(install_id, secret),
            Input::JobFinished { job_id, outcome } => self.on_job_finished(job_id, outcome),
            Input::Log(entry) => self.push_log_entry(entry),
            Input::Pause => self.set_paused(true),
            Input::Resume => self.set_paused(false),
            Input::SetThreshold { gb } => {
                self.cfg.vram_threshold_gb = gb;
                self.log("info", "ws", format!("vram threshold set to {gb} GB"), None);
            }
            Input::SetPresence(p) => self.presence = p,
            Input::Shutdown => self.on_shutdown(),
            Input::UpdateChecked { result } => self.on_update_checked(result),
            Input::UpdateApplied { result } => self.on_update_applied(result),
        }
    }

    fn start(&mut self) {
        if self.started {
            return;
        }
        self.started = true;
        if self.cfg.auto_update_enabled {
            let at = self.now.mono + self.cfg.timings.update_interval;
            self.timers.set(Timer::UpdateCheck, at);
        }
        if self.cfg.credentials.is_some() {
            self.registration = Registration::Done;
            self.connect();
        } else {
            self.session_state = SessionState::WaitingForApproval;
            self.log(
                "info",
                "ws",
                "waiting for operator approval before opening the session".into(),
                None,
            );
            self.begin_registration();
        }
    }

    // --------------------------------------------------------------------------------
    // Registration
    // --------------------------------------------------------------------------------

    fn begin_registration(&mut self) {
        let reg = &self.cfg.registration;
        if reg.request_id.is_some() && reg.secret.is_some() {
            self.registration = Registration::Polling { req: None };
            self.poll_registration();
        } else if reg.install_id.is_some() && reg.secret.is_some() {
            self.registration = Registration::Requesting { req: None };
            self.send_register_request();
        } else {
            self.registration = Registration::Minting;
            self.emit(Command::MintSecret {
                need_install_id: reg.install_id.is_none(),
            });
        }
    }

    fn on_minted(&mut self, install_id: Option<String>, secret: Secret) {
        if self.registration != Registration::Minting {
            return;
        }
        if self.cfg.registration.install_id.is_none() {
            let Some(id) = install_id.filter(|s| !s.is_empty()) else {
                // Asked for an install id and got none: ask again.
                self.emit(Command::MintSecret {
                    need_install_id: true,
                });
                return;
            };
            self.cfg.registration.install_id = Some(id);
        }
        self.cfg.registration.secret = Some(secret);
        self.cfg.registration.request_id = None;
        self.persist();
        self.registration = Registration::Requesting { req: None };
        self.send_register_request();
    }

    fn send_register_request(&mut self) {
        let (Some(install_id), Some(secret)) = (
            self.cfg.registration.install_id.clone(),
            self.cfg.registration.secret.clone(),
        ) else {
            return;
        };
        let Some(url) = wire::http_url(&self.cfg.api_base_url, "/workers/register-request") else {
            self.exit(
                ExitCode::Fatal,
                format!(
                    "api_base_url `{}` is not a valid URL; fix it in the config file",
                    self.cfg.api_base_url
                ),
            );
            return;
        };
        let body = AutoRegisterRequest {
            install_id,
            registration_secret_hash: wire::sha256_hex(secret.expose().as_bytes()),
            capabilities: self.capabilities(),
            user_agent: format!("studio-worker/{}", self.cfg.host.agent_version),
        };
        let id = self.http_id();
        self.registration = Registration::Requesting { req: Some(id) };
        self.emit(Command::Http {
            id,
            request: Box::new(HttpRequest::RegisterRequest { url, body }),
        });
    }

    fn poll_registration(&mut self) {
        let (Some(rr), Some(secret)) = (
            self.cfg.registration.request_id.clone(),
            self.cfg.registration.secret.clone(),
        ) else {
            return;
        };
        let Some(url) = wire::http_url(
            &self.cfg.api_base_url,
            &format!("/workers/register-requests/{rr}"),
        ) else {
            return;
        };
        let id = self.http_id();
        self.registration = Registration::Polling { req: Some(id) };
        self.emit(Command::Http {
            id,
            request: Box::new(HttpRequest::PollRegistration {
                url,
                bearer: secret,
            }),
        });
    }

    fn schedule_registration_retry(&mut self) {
        let at = self.now.mono + self.cfg.timings.registration_poll;
        self.timers.set(Timer::Registration, at);
    }

    fn on_registration_timer(&mut self) {
        match self.registration {
            Registration::Requesting { req: None } => self.send_register_request(),
            Registration::Polling { req: None } => self.poll_registration(),
            _ => {}
        }
    }

    fn on_register_response(&mut self, result: HttpResult) {
        match result {
            HttpResult::Response { status, body } if (200..300).contains(&status) => {
                match serde_json::from_str::<RegisterRequestResponse>(&body) {
                    Ok(resp) => {
                        self.log(
                            "info",
                            "ws",
                            format!(
                                "registration requested ({}); waiting for operator approval",
                                resp.request_id
                            ),
                            None,
                        );
                        self.cfg.registration.request_id = Some(resp.request_id);
                        self.persist();
                        self.registration = Registration::Polling { req: None };
                        self.schedule_registration_retry();
                    }
                    Err(e) => {
                        self.registration = Registration::Requesting { req: None };
                        self.log(
                            "warn",
                            "ws",
                            format!(
                                "register-request answered with an unreadable body ({e}); retrying"
                            ),
                            None,
                        );
                        self.schedule_registration_retry();
                    }
                }
            }
            other => {
                self.registration = Registration::Requesting { req: None };
                self.log(
                    "warn",
                    "ws",
                    format!("register-request failed: {}; retrying", other.describe()),
                    None,
                );
                self.schedule_registration_retry();
            }
        }
    }

    fn on_poll_response(&mut self, result: HttpResult) {
        self.registration = Registration::Polling { req: None };
        match result {
            HttpResult::Response { status: 404, .. } => {
                self.log(
                    "warn",
                    "ws",
                    "registration request is unknown to the studio (stale); requesting again with a fresh secret".into(),
                    None,
                );
                self.cfg.registration.request_id = None;
                self.cfg.registration.secret = None;
                self.persist();
                self.registration = Registration::Minting;
                self.emit(Command::MintSecret {
                    need_install_id: false,
                });
            }
            HttpResult::Response { status, body } if (200..300).contains(&status) => {
                match serde_json::from_str::<RegisterStatus>(&body) {
                    Ok(RegisterStatus::Pending) => self.schedule_registration_retry(),
                    Ok(RegisterStatus::Approved {
                        worker_id,
                        auth_token,
                    }) => {
                        self.log(
                            "info",
                            "ws",
                            format!("registration approved as {worker_id}"),
                            None,
                        );
                        self.cfg.credentials = Some(Credentials {
                            worker_id,
                            auth_token,
                        });
                        self.cfg.registration.request_id = None;
                        self.cfg.registration.secret = None;
                        self.registration = Registration::Done;
                        self.timers.clear(Timer::Registration);
                        self.persist();
                        self.connect();
                    }
                    Ok(RegisterStatus::Rejected { reason }) => {
                        self.cfg.registration.request_id = None;
                        self.cfg.registration.secret = None;
                        self.registration = Registration::Done;
                        self.timers.clear(Timer::Registration);
                        self.persist();
                        let why = if reason.is_empty() {
                            "no reason given".to_string()
                        } else {
                            reason
                        };
                        self.exit(
                            ExitCode::Rejected,
                            format!(
                                "the studio operator rejected this worker's registration ({why}); \
                                 ask the operator, then run `studio-worker register --reset` and \
                                 `studio-worker run` to request approval again"
                            ),
                        );
                    }
                    Err(e) => {
                        self.log(
                            "warn",
                            "ws",
                            format!("registration poll answered with an unreadable body ({e})"),
                            None,
                        );
                        self.schedule_registration_retry();
                    }
                }
            }
            other => {
                self.log(
                    "warn",
                    "ws",
                    format!(
                        "registration poll failed: {}; still waiting",
                        other.describe()
                    ),
                    None,
                );
                self.schedule_registration_retry();
            }
        }
    }

    // --------------------------------------------------------------------------------
    // Connection lifecycle
    // --------------------------------------------------------------------------------

    fn connect(&mut self) {
        let Some(creds) = self.cfg.credentials.clone() else {
            return;
        };
        let url = match wire::ws_url(&self.cfg.api_base_url, &creds.worker_id) {
            Ok(u) => u,
            Err(e) => {
                self.exit(
                    ExitCode::Fatal,
                    format!("{e}; fix api_base_url in the config file"),
                );
                return;
            }
        };
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.link = Link::Connecting { conn };
        self.session_state = SessionState::Connecting;
        let at = self.now.mono + self.cfg.timings.connect_timeout;
        self.timers.set(Timer::ConnectTimeout, at);
        self.emit(Command::Connect {
            conn,
            url,
            auth_token: creds.auth_token,
        });
    }

    fn on_connected(&mut self, conn: ConnId) {
        if self.link.conn() == Some(conn) && !matches!(self.link, Link::Connecting { .. }) {
            // A repeated `Connected` for the current connection: nothing new.
            return;
        }
        if self.link != (Link::Connecting { conn }) {
            // A connection we no longer want finished late: close it.
            if conn.0 < self.next_conn {
                self.emit(Command::Close {
                    conn,
                    code: close_code::NORMAL,
                    reason: "session ended".into(),
                });
            }
            return;
        }
        self.timers.clear(Timer::ConnectTimeout);
        let Some(creds) = self.cfg.credentials.clone() else {
            return;
        };
        self.link = Link::AwaitWelcome { conn };
        let caps = self.capabilities();
        if self.cfg.host.vram_total_gb > 0.0
            && self.cfg.vram_threshold_gb > self.cfg.host.vram_total_gb
        {
            self.log(
                "warn",
                "ws",
                format!(
                    "vram_threshold_gb {} exceeds the detected VRAM {} GB; the studio may offer jobs this GPU cannot hold",
                    self.cfg.vram_threshold_gb, self.cfg.host.vram_total_gb
                ),
                None,
            );
        }
        self.log(
            "info",
            "ws",
            format!(
                "capabilities: engine={} kinds=[{}] models={} vram={}GB threshold={}GB",
                caps.engine,
                caps.task_kinds
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                caps.supported_models.len(),
                caps.vram_total_gb,
                caps.vram_threshold_gb
            ),
            None,
        );
        self.send_frame(&WorkerFrame::Hello {
            auth_token: creds.auth_token,
            capabilities: caps,
        });
        let at = self.now.mono + self.cfg.timings.read_idle;
        self.timers.set(Timer::ReadIdle, at);
    }

    fn on_connect_failed(&mut self, conn: ConnId, error: ConnectError) {
        if self.link != (Link::Connecting { conn }) {
            return;
        }
        self.timers.clear(Timer::ConnectTimeout);
        self.link = Link::Down;
        match error {
            ConnectError::Unauthorized { body } => {
                self.exit(
                    ExitCode::AuthFailed,
                    format!(
                        "the studio refused this worker's token (HTTP 401 on websocket upgrade: {}); \
                         re-register with `studio-worker register --reset` and approve it again",
                        clip_body(&body, UPGRADE_BODY_CLIP)
                    ),
                );
            }
            ConnectError::Status { status, body } => self.schedule_reconnect(&format!(
                "HTTP {status} on websocket upgrade: {}",
                clip_body(&body, UPGRADE_BODY_CLIP)
            )),
            ConnectError::Transport(e) => self.schedule_reconnect(&format!("connect failed: {e}")),
        }
    }

    fn on_disconnected(&mut self, conn: ConnId, code: Option<u16>, reason: String) {
        if self.link.conn() != Some(conn) {
            return;
        }
        if code == Some(close_code::AUTH_FAILED) {
            self.teardown();
            self.exit(
                ExitCode::AuthFailed,
                format!(
                    "the studio closed the session with 4001 (auth failed: {reason}); \
                     re-register with `studio-worker register --reset` and approve it again"
                ),
            );
            return;
        }
        let what = match code {
            Some(c) => format!("studio closed the connection ({c} {reason})"),
            None => format!("connection lost ({reason})"),
        };
        self.teardown();
        self.after_session_end(&what);
    }

    /// Tears the session down on our side (peer misbehaved or a timer fired) and
    /// schedules a reconnect.
    fn drop_session(&mut self, close_reason: &str, why: &str) {
        self.close_current(close_reason);
        self.after_session_end(why);
    }

    /// Closes the current connection (if any) with code 1000 and forgets it.
    fn close_current(&mut self, reason: &str) {
        if let Some(conn) = self.link.conn() {
            self.emit(Command::Close {
                conn,
                code: close_code::NORMAL,
                reason: reason.into(),
            });
        }
        self.teardown();
    }

    /// Forgets the session: timers off, unconfirmed logs back to the queue, unacked results
    /// queued for the next session.
    fn teardown(&mut self) {
        let was_welcomed = matches!(self.link, Link::Live { .. });
        self.link = Link::Down;
        for t in [
            Timer::Heartbeat,
            Timer::LogFlush,
            Timer::ReadIdle,
            Timer::ConnectTimeout,
        ] {
            self.timers.clear(t);
        }
        self.hb_outstanding.clear();
        // A parked offer dies with its session; the studio requeues it on disconnect.
        self.parked_offer = None;
        let batches: Vec<Vec<LogEntry>> = self.logs_unconfirmed.drain(..).collect();
        for batch in batches.into_iter().rev() {
            self.logs.restore_front(batch);
        }
        for u in self.unacked.drain(..) {
            self.undelivered.push_back(u);
        }
        if was_welcomed {
            self.attempt = 0;
        }
    }

    /// While draining for shutdown the reconnect still happens, so a running job's
    /// result can ship within the grace window.
    fn after_session_end(&mut self, why: &str) {
        self.schedule_reconnect(why);
    }

    fn schedule_reconnect(&mut self, why: &str) {
        self.link = Link::Backoff;
        self.attempt = self.attempt.saturating_add(1);
        let max = self.cfg.reconnect_attempts;
        if max > 0 && self.attempt > max {
            self.link = Link::Down;
            self.exit(
                ExitCode::Fatal,
                format!("gave up after {max} reconnect attempts (last: {why})"),
            );
            return;
        }
        let delay = self.backoff.delay(self.attempt);
        self.session_state = SessionState::Reconnecting {
            attempt: self.attempt,
        };
        self.log(
            "warn",
            "ws",
            format!(
                "{why}; reconnect attempt {} in {}ms",
                self.attempt,
                delay.as_millis()
            ),
            None,
        );
        self.timers.set(Timer::Reconnect, self.now.mono + delay);
    }

    // --------------------------------------------------------------------------------
    // Frames
    // --------------------------------------------------------------------------------

    fn on_frame(&mut self, conn: ConnId, text: &str) {
        if self.link.conn() != Some(conn) {
            return;
        }
        if matches!(self.link, Link::Connecting { .. }) {
            // A frame before `Connected` is a driver ordering slip: dropped.
            self.emit(Command::Report(Notice {
                level: "warn".into(),
                category: "ws".into(),
                message: format!("frame on {conn} before it was connected; dropped"),
                job_id: None,
            }));
            return;
        }
        self.stats.frames_in += 1;
        let frame = match wire::decode_studio_frame_limited(text, self.cfg.limits.max_frame_bytes) {
            Ok(f) => f,
            Err(e) => {
                self.drop_session("protocol violation", &format!("protocol error: {e}"));
                return;
            }
        };
        let at = self.now.mono + self.cfg.timings.read_idle;
        self.timers.set(Timer::ReadIdle, at);
        match self.link {
            Link::AwaitWelcome { .. } => self.on_frame_before_welcome(frame),
            Link::Live { .. } => self.on_frame_live(frame),
            _ => {}
        }
    }

    fn on_frame_before_welcome(&mut self, frame: StudioFrame) {
        match frame {
            StudioFrame::Welcome {
                worker_id,
                server_time,
            } => {
                let Some(conn) = self.link.conn() else { return };
                self.link = Link::Live { conn };
                self.session_state = SessionState::Connected;
                self.attempt = 0;
                self.stats.sessions += 1;
                self.log(
                    "info",
                    "ws",
                    format!("server welcomed {worker_id} server_time={server_time}"),
                    None,
                );
                // Results the last session may have lost go first, so the studio never sees
                // an idle heartbeat while it still waits for one of our results. Then the
                // heartbeat right away, then every interval; queued logs one flush interval
                // later (the flush timer runs only while entries wait: an idle worker wakes
                // for its heartbeat alone).
                self.redeliver();
                self.send_heartbeat();
                self.arm_log_flush();
                if self.stop == Stop::Draining {
                    self.maybe_finish_shutdown();
                }
            }
            StudioFrame::Error { code, message } => self.on_error_frame(code, message),
            other => {
                self.log(
                    "warn",
                    "ws",
                    format!(
                        "unexpected {} frame before welcome; dropped",
                        other.type_name()
                    ),
                    offer_job_id(&other),
                );
            }
        }
    }

    fn on_frame_live(&mut self, frame: StudioFrame) {
        match frame {
            StudioFrame::Welcome { server_time, .. } => {
                self.log(
                    "info",
                    "ws",
                    format!("second welcome ignored server_time={server_time}"),
                    None,
                );
            }
            StudioFrame::HeartbeatAck => {
                self.last_heartbeat_ack = Some(self.now.mono);
                if let Some(batches_before) = self.hb_outstanding.pop_front() {
                    for _ in 0..batches_before.min(self.logs_unconfirmed.len()) {
                        self.logs_unconfirmed.pop_front();
                    }
                    for n in self.hb_outstanding.iter_mut() {
                        *n = n.saturating_sub(batches_before);
                    }
                }
            }
            StudioFrame::CompleteAck { job_id } => {
                self.unacked.retain(|u| u.job_id != job_id);
                self.log(
                    "info",
                    "ws",
                    format!("studio confirmed completion of job {job_id}"),
                    Some(job_id),
                );
            }
            StudioFrame::FailAck { job_id } => {
                self.unacked.retain(|u| u.job_id != job_id);
                self.log(
                    "info",
                    "ws",
                    format!("studio confirmed failure of job {job_id}"),
                    Some(job_id),
                );
            }
            StudioFrame::Error { code, message } => self.on_error_frame(code, message),
            StudioFrame::Offer { claim } => self.on_offer(*claim),
        }
    }

    fn on_error_frame(&mut self, code: WorkerErrorCode, message: String) {
        let (exit, reason) = match code {
            WorkerErrorCode::AuthFailed => (ExitCode::AuthFailed, "auth failed"),
            _ => (ExitCode::Fatal, "protocol violation"),
        };
        self.close_current(reason);
        let text = match code {
            WorkerErrorCode::AuthFailed => format!(
                "the studio rejected this worker's credentials (auth_failed: {message}); \
                 re-register with `studio-worker register --reset` and approve it again"
            ),
            WorkerErrorCode::DuplicateWorker => format!(
                "another worker connected with this worker id (duplicate_worker: {message}); \
                 stop the other instance or register this one separately"
            ),
            WorkerErrorCode::WorkerDeleted => format!(
                "the studio deleted this worker (worker_deleted: {message}); \
                 re-register with `studio-worker register --reset`"
            ),
            other => format!(
                "studio ended the session with {}: {message}",
                other.as_str()
            ),
        };
        self.exit(exit, text);
    }

    fn on_offer(&mut self, claim: JobOfferClaim) {
        let job_id = claim.job_id.clone();
        self.log(
            "info",
            "ws",
            format!(
                "offer {} kind={} model={} game={} asset={} vram_estimate={}GB",
                job_id,
                claim.task.kind(),
                claim.model,
                claim.game_id,
                claim.asset_name,
                claim.vram_gb_estimate
            ),
            Some(job_id.clone()),
        );
        if matches!(&self.slot, Slot::Job(j) if j.claim.job_id == job_id) {
            // The studio lost track of the job we are running (it requeued it after a
            // disconnect) and offers it to us again: we hold it, so we take it back instead
            // of rejecting it busy and running it twice. Our result settles it.
            self.log(
                "info",
                "ws",
                format!("offer {job_id} is the job already running here; accepted, not re-run"),
                Some(job_id.clone()),
            );
            self.stats.accepted += 1;
            self.send_frame(&WorkerFrame::Accept { job_id });
            return;
        }
        if self.has_job_with_id(&job_id) {
            // A re-offer means the studio settled our earlier result for this job (it
            // requeued it): the held copy is stale. Sending it again would read as the
            // outcome of this new offer, so it is dropped and the offer decided afresh.
            self.unacked.retain(|u| u.job_id != job_id);
            self.undelivered.retain(|u| u.job_id != job_id);
            self.log(
                "info",
                "ws",
                format!(
                    "offer {job_id} supersedes our unacknowledged result for it; result dropped"
                ),
                Some(job_id.clone()),
            );
        }
        let uploading =
            matches!(&self.slot, Slot::Job(j) if matches!(j.stage, JobStage::Uploading { .. }));
        if uploading && self.parked_offer.is_none() {
            // The studio answers our upload's HTTP 200 by offering the next job over the
            // socket, and that offer can overtake the 200. Decide it the moment the upload
            // finishes instead of rejecting it `busy` (which would idle us until the next
            // heartbeat).
            self.log(
                "info",
                "ws",
                format!("offer {job_id} arrived while an upload is in flight; deciding when it finishes"),
                Some(job_id),
            );
            self.parked_offer = Some(claim);
            return;
        }
        self.decide_offer(claim);
    }

    /// Decides a parked offer, if any: accepted when the slot is free, else rejected.
    fn decide_parked(&mut self) {
        if let Some(claim) = self.parked_offer.take() {
            self.decide_offer(claim);
        }
    }

    fn decide_offer(&mut self, claim: JobOfferClaim) {
        let job_id = claim.job_id.clone();
        let reject = if self.stop != Stop::Running {
            Some((REASON_SHUTTING_DOWN, RejectCode::Busy))
        } else if self.paused {
            Some((REASON_PAUSED, RejectCode::Paused))
        } else if self.cfg.only_when_idle && self.presence != Some(UserPresence::Idle) {
            Some((REASON_NOT_IDLE, RejectCode::Paused))
        } else if self.slot != Slot::Free {
            Some((REASON_BUSY, RejectCode::Busy))
        } else {
            None
        };
        if let Some((reason, code)) = reject {
            self.stats.rejected += 1;
            self.send_frame(&WorkerFrame::Reject {
                job_id,
                reason: reason.into(),
                code: Some(code),
            });
            return;
        }
        self.send_frame(&WorkerFrame::Accept {
            job_id: job_id.clone(),
        });
        self.stats.accepted += 1;
        self.slot = Slot::Job(Box::new(ActiveJob {
            claim: claim.clone(),
            stage: JobStage::Running,
            started: self.now.mono,
        }));
        self.record_job(&claim, JobStatus::Running);
        self.emit(Command::Dispatch {
            claim: Box::new(claim),
        });
    }

    fn has_job_with_id(&self, job_id: &str) -> bool {
        self.unacked.iter().any(|u| u.job_id == job_id)
            || self.undelivered.iter().any(|u| u.job_id == job_id)
    }

    // --------------------------------------------------------------------------------
    // Jobs
    // --------------------------------------------------------------------------------

    fn on_job_finished(&mut self, job_id: String, outcome: JobOutcome) {
        let Slot::Job(job) = &self.slot else { return };
        let prompt = job.claim.task.prompt().to_string();
        let elapsed = self.now.mono.saturating_since(job.started);
        match outcome {
            JobOutcome::Json { result } => {
                self.log(
                    "info",
                    "engine",
                    format!(
                        "job {job_id} finished in {}ms; json result sent",
                        elapsed.as_millis()
                    ),
                    Some(job_id.clone()),
                );
                let frame = WorkerFrame::CompleteJson {
                    job_id: job_id.clone(),
                    result,
                    prompt: Some(prompt),
                };
                self.finish_job(job_id, frame, JobStatus::Completed);
            }
            JobOutcome::Binary { ext, bytes_len } => {
                self.log(
                    "info",
                    "engine",
                    format!(
                        "job {job_id} finished in {}ms; uploading {bytes_len} bytes .{ext}",
                        elapsed.as_millis()
                    ),
                    Some(job_id.clone()),
                );
                self.start_upload(ext, 0);
            }
            JobOutcome::Failed { error, retryable } => {
                self.log(
                    "error",
                    "engine",
                    format!("dispatch failed: {error}"),
                    Some(job_id.clone()),
                );
                let frame = WorkerFrame::Fail {
                    job_id: job_id.clone(),
                    error,
                    retryable,
                };
                self.finish_job(job_id, frame, JobStatus::Failed);
            }
        }
    }

    fn start_upload(&mut self, ext: String, attempt: u32) {
        let (Slot::Job(job), Some(creds)) = (&mut self.slot, self.cfg.credentials.as_ref()) else {
            return;
        };
        let job_id = job.claim.job_id.clone();
        let Some(url) = wire::http_url(
            &self.cfg.api_base_url,
            &format!("/workers/{}/jobs/{}/complete", creds.worker_id, job_id),
        ) else {
            return;
        };
        let id = HttpId(self.next_http);
        self.next_http += 1;
        job.stage = JobStage::Uploading {
            ext: ext.clone(),
            attempt,
            req: id,
        };
        let request = HttpRequest::Upload {
            url,
            auth_token: creds.auth_token.clone(),
            job_id,
            prompt: job.claim.task.prompt().to_string(),
            ext,
        };
        self.emit(Command::Http {
            id,
            request: Box::new(request),
        });
    }

    fn on_upload_response(&mut self, result: HttpResult) {
        self.handle_upload_response(result);
        // The upload left the in-flight stage: an offer that waited for it is decided now.
        self.decide_parked();
    }

    fn handle_upload_response(&mut self, result: HttpResult) {
        let Slot::Job(job) = &self.slot else { return };
        let JobStage::Uploading { ext, attempt, .. } = job.stage.clone() else {
            return;
        };
        let job_id = job.claim.job_id.clone();
        let transient = match &result {
            HttpResult::Response { status, .. } if (200..300).contains(status) => {
                self.log(
                    "info",
                    "ws",
                    format!("result of job {job_id} uploaded"),
                    Some(job_id.clone()),
                );
                self.emit(Command::DiscardResult {
                    job_id: job_id.clone(),
                });
                self.slot = Slot::Free;
                self.stats.completed += 1;
                self.update_recent(&job_id, JobStatus::Completed);
                self.after_slot_freed();
                return;
            }
            HttpResult::Response { status, .. } => *status >= 500,
            HttpResult::Transport(_) => true,
        };
        let retries = &self.cfg.timings.upload_retries;
        if transient && (attempt as usize) < retries.len() {
            let pause = retries[attempt as usize];
            self.log(
                "warn",
                "ws",
                format!(
                    "upload of job {job_id} failed ({}); retry {} in {}ms",
                    result.describe(),
                    attempt + 1,
                    pause.as_millis()
                ),
                Some(job_id.clone()),
            );
            if let Slot::Job(job) = &mut self.slot {
                job.stage = JobStage::UploadBackoff {
                    ext,
                    attempt: attempt + 1,
                };
            }
            self.timers.set(Timer::UploadRetry, self.now.mono + pause);
            return;
        }
        self.emit(Command::DiscardResult {
            job_id: job_id.clone(),
        });
        let frame = WorkerFrame::Fail {
            job_id: job_id.clone(),
            error: format!("complete failed: {}", result.describe()),
            retryable: true,
        };
        self.log(
            "error",
            "ws",
            format!("upload of job {job_id} failed: {}", result.describe()),
            Some(job_id.clone()),
        );
        self.finish_job(job_id, frame, JobStatus::Failed);
    }

    /// Frees the slot after a job's final frame is ready; sends it now if a session is
    /// live, otherwise keeps it for the next session.
    fn finish_job(&mut self, job_id: String, frame: WorkerFrame, status: JobStatus) {
        match status {
            JobStatus::Completed => self.stats.completed += 1,
            JobStatus::Failed => self.stats.failed += 1,
            _ => {}
        }
        self.update_recent(&job_id, status);
        let text = wire::encode(&frame);
        self.slot = Slot::Free;
        self.timers.clear(Timer::UploadRetry);
        let u = Unacked {
            job_id,
            frame: text,
            sends: 0,
        };
        if matches!(self.link, Link::Live { .. }) {
            self.send_unacked(u);
        } else {
            self.undelivered.push_back(u);
        }
        self.after_slot_freed();
    }

    fn send_unacked(&mut self, mut u: Unacked) {
        let Link::Live { conn } = self.link else {
            self.undelivered.push_back(u);
            return;
        };
        u.sends += 1;
        self.emit(Command::Send {
            conn,
            text: u.frame.clone(),
        });
        self.stats.frames_out += 1;
        self.unacked.push(u);
    }

    /// After a welcome: re-send results the previous session may have lost.
    fn redeliver(&mut self) {
        let pending: Vec<Unacked> = self.undelivered.drain(..).collect();
        for u in pending {
            if u.sends >= MAX_RESULT_RESENDS {
                self.log(
                    "warn",
                    "ws",
                    format!(
                        "giving up on the studio's acknowledgement of job {} after {} sends",
                        u.job_id, u.sends
                    ),
                    Some(u.job_id.clone()),
                );
                continue;
            }
            self.send_unacked(u);
        }
    }

    fn after_slot_freed(&mut self) {
        if self.stop == Stop::Draining {
            self.maybe_finish_shutdown();
            return;
        }
        self.maybe_apply_update();
    }

    fn record_job(&mut self, claim: &JobOfferClaim, status: JobStatus) {
        if self.cfg.limits.recent_jobs == 0 {
            return;
        }
        if self.recent_jobs.len() >= self.cfg.limits.recent_jobs {
            self.recent_jobs.pop_back();
        }
        self.recent_jobs.push_front(JobSummary {
            job_id: claim.job_id.clone(),
            kind: claim.task.kind(),
            model: claim.model.clone(),
            prompt_preview: wire::prompt_preview(claim.task.prompt()),
            status,
            started: self.now.mono,
            finished: None,
        });
    }

    fn update_recent(&mut self, job_id: &str, status: JobStatus) {
        let now = self.now.mono;
        if let Some(j) = self.recent_jobs.iter_mut().find(|j| j.job_id == job_id) {
            j.status = status;
            j.finished = Some(now);
        }
    }

    fn current_job_id(&self) -> Option<&str> {
        match &self.slot {
            Slot::Job(j) => Some(&j.claim.job_id),
            _ => None,
        }
    }

    // --------------------------------------------------------------------------------
    // HTTP results
    // --------------------------------------------------------------------------------

    fn on_http(&mut self, id: HttpId, result: HttpResult) {
        match &self.registration {
            Registration::Requesting { req: Some(r) } if *r == id => {
                return self.on_register_response(result)
            }
            Registration::Polling { req: Some(r) } if *r == id => {
                return self.on_poll_response(result)
            }
            _ => {}
        }
        if let Slot::Job(job) = &self.slot {
            if matches!(job.stage, JobStage::Uploading { req, .. } if req == id) {
                self.on_upload_response(result);
            }
        }
        // Otherwise: a response to a request the machine no longer waits for; ignored.
    }

    // --------------------------------------------------------------------------------
    // Operator requests
    // --------------------------------------------------------------------------------

    fn set_paused(&mut self, paused: bool) {
        if self.paused == paused {
            return;
        }
        self.paused = paused;
        let msg = if paused {
            "paused by operator; new offers are rejected"
        } else {
            "resumed by operator; accepting offers"
        };
        self.log("info", "ws", msg.into(), None);
        // Advertise the change now rather than at the next heartbeat.
        if matches!(self.link, Link::Live { .. }) {
            self.send_heartbeat();
        }
    }

    fn on_shutdown(&mut self) {
        if self.stop != Stop::Running {
            return;
        }
        self.stop = Stop::Draining;
        self.log("info", "ws", "shutdown requested".into(), None);
        self.decide_parked();
        if matches!(self.slot, Slot::Job(_)) {
            let at = self.now.mono + self.cfg.timings.shutdown_grace;
            self.timers.set(Timer::ShutdownGrace, at);
            self.log(
                "info",
                "ws",
                format!(
                    "waiting up to {}s for the in-flight job to finish",
                    self.cfg.timings.shutdown_grace.as_secs()
                ),
                self.current_job_id().map(str::to_string),
            );
        }
        self.maybe_finish_shutdown();
    }

    fn maybe_finish_shutdown(&mut self) {
        if matches!(self.slot, Slot::Job(_)) {
            return;
        }
        // Everything deliverable goes out before the close: results and queued logs.
        if matches!(self.link, Link::Live { .. }) {
            self.flush_logs();
        }
        self.close_current("session ended");
        self.timers.clear(Timer::ShutdownGrace);
        self.exit(ExitCode::Clean, "stopped".into());
    }

    fn on_shutdown_grace_expired(&mut self) {
        let Slot::Job(job) = &self.slot else {
            return self.maybe_finish_shutdown();
        };
        let job_id = job.claim.job_id.clone();
        self.log(
            "warn",
            "ws",
            format!(
                "job {job_id} did not finish within the {}s shutdown grace; reporting it retryable",
                self.cfg.timings.shutdown_grace.as_secs()
            ),
            Some(job_id.clone()),
        );
        self.emit(Command::CancelJob {
            job_id: job_id.clone(),
        });
        let frame = WorkerFrame::Fail {
            job_id: job_id.clone(),
            error: "worker shut down before the job finished".into(),
            retryable: true,
        };
        self.finish_job(job_id, frame, JobStatus::Failed);
    }

    // --------------------------------------------------------------------------------
    // Auto-update
    // --------------------------------------------------------------------------------

    fn on_update_timer(&mut self) {
        let at = self.now.mono + self.cfg.timings.update_interval;
        self.timers.set(Timer::UpdateCheck, at);
        if self.update_check_in_flight
            || self.pending_update.is_some()
            || self.stop != Stop::Running
        {
            return;
        }
        if self.slot != Slot::Free {
            // Checked again at the next interval; never during a job.
            return;
        }
        self.update_check_in_flight = true;
        self.emit(Command::CheckUpdate);
    }

    fn on_update_checked(&mut self, result: Result<Option<String>, String>) {
        if !self.update_check_in_flight {
            return;
        }
        self.update_check_in_flight = false;
        match result {
            Ok(None) => self.log(
                "info",
                "auto-update",
                format!("up to date at {}", self.cfg.host.agent_version),
                None,
            ),
            Ok(Some(v)) => {
                self.log(
                    "info",
                    "auto-update",
                    format!("update available: {} -> {v}", self.cfg.host.agent_version),
                    None,
                );
                self.pending_update = Some(v);
                self.maybe_apply_update();
            }
            Err(e) => self.log(
                "warn",
                "auto-update",
                format!("update check failed: {e}"),
                None,
            ),
        }
    }

    fn maybe_apply_update(&mut self) {
        if self.slot != Slot::Free || self.stop != Stop::Running {
            return;
        }
        let Some(version) = self.pending_update.take() else {
            return;
        };
        self.slot = Slot::Updating {
            version: version.clone(),
        };
        self.log(
            "info",
            "auto-update",
            format!("installing {version}; offers are rejected busy meanwhile"),
            None,
        );
        self.emit(Command::ApplyUpdate { version });
    }

    fn on_update_applied(&mut self, result: Result<(), String>) {
        let Slot::Updating { version } = self.slot.clone() else {
            return;
        };
        match result {
            Ok(()) => {
                self.log(
                    "info",
                    "auto-update",
                    format!("installed {version}; restarting"),
                    None,
                );
                if matches!(self.link, Link::Live { .. }) {
                    self.flush_logs();
                }
                self.close_current("session ended");
                self.slot = Slot::Free;
                self.exit(ExitCode::Restart, format!("restarting into {version}"));
            }
            Err(e) => {
                self.slot = Slot::Free;
                self.log(
                    "error",
                    "auto-update",
                    format!(
                        "installing {version} failed: {e}; staying on {}",
                        self.cfg.host.agent_version
                    ),
                    None,
                );
            }
        }
    }

    // --------------------------------------------------------------------------------
    // Timers
    // --------------------------------------------------------------------------------

    fn run_timers(&mut self) {
        // Each expired timer runs once; a handler may re-arm its own timer for a later
        // instant, never for `now` or earlier, so this loop ends.
        let mut guard = 0;
        while let Some(t) = self.timers.pop_expired(self.now.mono) {
            guard += 1;
            assert!(guard <= 64, "timer storm: {t:?} re-armed at or before now");
            if self.stop == Stop::Exited {
                return;
            }
            self.on_timer(t);
        }
    }

    fn on_timer(&mut self, t: Timer) {
        match t {
            Timer::Heartbeat => {
                if matches!(self.link, Link::Live { .. }) {
                    self.send_heartbeat();
                }
            }
            Timer::LogFlush => {
                if matches!(self.link, Link::Live { .. }) {
                    // Entries logged from here on re-arm the timer (`arm_log_flush`).
                    self.flush_logs();
                }
            }
            Timer::ReadIdle => {
                let secs = self.cfg.timings.read_idle.as_secs();
                self.drop_session(
                    "session ended",
                    &format!("no frames from server for {secs}s; treating connection as dead"),
                );
            }
            Timer::ConnectTimeout => {
                if let Link::Connecting { conn } = self.link {
                    self.emit(Command::Close {
                        conn,
                        code: close_code::NORMAL,
                        reason: "connect timeout".into(),
                    });
                    self.link = Link::Down;
                    let secs = self.cfg.timings.connect_timeout.as_secs();
                    self.schedule_reconnect(&format!("connect timed out after {secs}s"));
                }
            }
            Timer::Reconnect => {
                if self.link == Link::Backoff {
                    self.connect();
                }
            }
            Timer::Registration => self.on_registration_timer(),
            Timer::UpdateCheck => self.on_update_timer(),
            Timer::UploadRetry => {
                if let Slot::Job(job) = &self.slot {
                    if let JobStage::UploadBackoff { ext, attempt } = job.stage.clone() {
                        self.start_upload(ext, attempt);
                    }
                }
            }
            Timer::ShutdownGrace => self.on_shutdown_grace_expired(),
        }
    }

    // --------------------------------------------------------------------------------
    // Pumps
    // --------------------------------------------------------------------------------

    fn send_heartbeat(&mut self) {
        let fresh = self.hb_cache.as_ref().is_some_and(|c| {
            c.key.paused == self.paused
                && c.key.presence == self.presence
                && c.key.vram_threshold_bits == self.cfg.vram_threshold_gb.to_bits()
                && c.key.current_job_id.as_deref() == self.current_job_id()
        });
        if !fresh {
            let current_job_id = self.current_job_id().map(str::to_string);
            let text = wire::encode(&WorkerFrame::Heartbeat {
                capabilities: self.capabilities(),
                current_job_id: current_job_id.clone(),
            });
            self.hb_cache = Some(HeartbeatCache {
                key: HeartbeatKey {
                    paused: self.paused,
                    presence: self.presence,
                    vram_threshold_bits: self.cfg.vram_threshold_gb.to_bits(),
                    current_job_id,
                },
                text,
            });
        }
        let text = self
            .hb_cache
            .as_ref()
            .map(|c| c.text.clone())
            .unwrap_or_default();
        debug_assert_eq!(
            text,
            wire::encode(&WorkerFrame::Heartbeat {
                capabilities: self.capabilities(),
                current_job_id: self.current_job_id().map(str::to_string),
            }),
            "the cached heartbeat is the one encoding now would give"
        );
        self.send_text(text);
        if self.hb_outstanding.len() >= MAX_OUTSTANDING_HEARTBEATS {
            // The studio stopped acking; the read-idle timer will end this session. Keep
            // the bookkeeping bounded meanwhile.
            self.hb_outstanding.pop_front();
        }
        self.hb_outstanding.push_back(self.logs_unconfirmed.len());
        let at = self.now.mono + self.cfg.timings.heartbeat;
        self.timers.set(Timer::Heartbeat, at);
    }

    fn flush_logs(&mut self) {
        let batch = self.logs.drain_batch(self.now.wall);
        if batch.is_empty() {
            return;
        }
        let frame = WorkerFrame::LogBatch {
            entries: batch.clone(),
        };
        self.send_frame(&frame);
        if self.logs_unconfirmed.len() >= MAX_UNCONFIRMED_LOG_BATCHES {
            // Bounded: the oldest unconfirmed batch is assumed delivered.
            self.logs_unconfirmed.pop_front();
            for n in self.hb_outstanding.iter_mut() {
                *n = n.saturating_sub(1);
            }
        }
        self.logs_unconfirmed.push_back(batch);
    }

    fn send_frame(&mut self, frame: &WorkerFrame) {
        if self.link.conn().is_none() {
            return;
        }
        self.send_text(wire::encode(frame));
    }

    /// Sends an encoded frame on the live connection, if any.
    fn send_text(&mut self, text: String) {
        let Some(conn) = self.link.conn() else { return };
        self.stats.frames_out += 1;
        self.emit(Command::Send { conn, text });
    }

    // --------------------------------------------------------------------------------
    // Logs, notices, persistence, exit
    // --------------------------------------------------------------------------------

    fn log(&mut self, level: &str, category: &str, message: String, job_id: Option<String>) {
        let entry = LogEntry {
            ts: self.now.wall.to_rfc3339(),
            level: level.into(),
            category: category.into(),
            message,
            job_id,
        };
        self.emit(Command::Report(Notice {
            level: level.into(),
            category: category.into(),
            message: entry.message.clone(),
            job_id: entry.job_id.clone(),
        }));
        self.push_log_entry(entry);
    }

    fn push_log_entry(&mut self, entry: LogEntry) {
        if self.cfg.limits.recent_logs > 0 {
            if self.recent_logs.len() >= self.cfg.limits.recent_logs {
                self.recent_logs.pop_front();
            }
            self.recent_logs.push_back(entry.clone());
        }
        self.logs.push(entry);
        self.arm_log_flush();
    }

    /// Schedules the next log flush one interval from now, if entries wait, the session is
    /// live and no flush is scheduled yet. Batches still go out at most once per interval.
    fn arm_log_flush(&mut self) {
        if matches!(self.link, Link::Live { .. })
            && !self.logs.is_empty()
            && self.timers.get(Timer::LogFlush).is_none()
        {
            let at = self.now.mono + self.cfg.timings.log_flush;
            self.timers.set(Timer::LogFlush, at);
        }
    }

    fn persist(&mut self) {
        self.emit(Command::Persist(PersistedState {
            install_id: self.cfg.registration.install_id.clone(),
            registration_request_id: self.cfg.registration.request_id.clone(),
            registration_secret: self.cfg.registration.secret.clone(),
            worker_id: self.cfg.credentials.as_ref().map(|c| c.worker_id.clone()),
            auth_token: self.cfg.credentials.as_ref().map(|c| c.auth_token.clone()),
        }));
    }

    fn exit(&mut self, code: ExitCode, reason: String) {
        if self.stop == Stop::Exited {
            return;
        }
        self.session_state = match code {
            ExitCode::Clean | ExitCode::Restart => SessionState::Stopped,
            ExitCode::AuthFailed => SessionState::AuthFailed {
                reason: reason.clone(),
            },
            ExitCode::Fatal | ExitCode::Rejected => SessionState::Fatal {
                reason: reason.clone(),
            },
        };
        let level = if code.is_error() { "error" } else { "info" };
        self.emit(Command::Report(Notice {
            level: level.into(),
            category: "ws".into(),
            message: reason.clone(),
            job_id: None,
        }));
        if let Slot::Job(job) = &self.slot {
            // A job still running when the process must end (auth failure, fatal error):
            // tell the shell to stop it; the studio requeues it when the session times out.
            let job_id = job.claim.job_id.clone();
            self.emit(Command::CancelJob { job_id });
            self.slot = Slot::Free;
        }
        self.timers = Timers::default();
        self.link = Link::Down;
        self.stop = Stop::Exited;
        self.emit(Command::Exit { code, reason });
    }

    fn emit(&mut self, c: Command) {
        self.out.push_back(c);
    }

    fn http_id(&mut self) -> HttpId {
        let id = HttpId(self.next_http);
        self.next_http += 1;
        id
    }
}

/// Heartbeats remembered while waiting for their acks (bounded; read-idle ends a session
/// long before this fills at the default timings).
pub const MAX_OUTSTANDING_HEARTBEATS: usize = 16;
/// Log batches remembered until a later heartbeatAck confirms them.
pub const MAX_UNCONFIRMED_LOG_BATCHES: usize = 64;
/// The upgrade-failure body is clipped to this many characters in messages.
pub const UPGRADE_BODY_CLIP: usize = 300;

/// A peer's body for a message: secrets redacted first (clipping could cut a token's
/// closing quote and hide it from the redaction), then clipped to `n` characters.
fn clip_body(body: &str, n: usize) -> String {
    clip(&crate::secret::redact_json(body), n)
}

fn clip(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn offer_job_id(frame: &StudioFrame) -> Option<String> {
    match frame {
        StudioFrame::Offer { claim } => Some(claim.job_id.clone()),
        _ => None,
    }
}

impl HttpResult {
    /// A short description for logs: `500 — body` or the transport error.
    pub fn describe(&self) -> String {
        match self {
            HttpResult::Response { status, body } => {
                if body.is_empty() {
                    format!("{status}")
                } else {
                    format!("{status} — {}", clip_body(body, UPGRADE_BODY_CLIP))
                }
            }
            HttpResult::Transport(e) => format!("transport error: {e}"),
        }
    }
}
