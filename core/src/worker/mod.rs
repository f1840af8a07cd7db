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
//! wall clock [`WallMs`](crate::WallMs) used only for log timestamps. The core never reads a clock. The
//! studio machine (`crate::studio`) is driven the same way.
//!
//! Every id the machine hands out comes back on the input that answers it: a connection
//! ([`ConnId`]), an HTTP request ([`HttpId`]), a job's run ([`RunId`], on `Dispatch` and
//! `JobFinished`). Answers naming an older one are ignored (a late connection is closed, a
//! cancelled run's result dropped), so no shell keeps such bookkeeping.
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
//! * The driver misused the API (time going backwards, a job result for a run that is not
//!   in flight): `handle` returns [`UsageError`] and nothing changes.
//! * An internal invariant broke: a panic, which no input sequence can reach (the fuzzer
//!   and the quickcheck properties drive arbitrary inputs to prove it).
//!
//! # Layout
//!
//! The state lives in a few parts, each read by the decisions it governs, and
//! [`Worker::phase`] names the combination. One module per concern: `timers` (the table and
//! what each timer does), `registration`, `link` (connect, hello, welcome, the frames of a
//! session, reconnect), `pumps` (heartbeats, log batches, the machine's own log lines),
//! `jobs` (the one-job slot: offers, dispatch, engine results), `delivery` (uploads with
//! retries, results kept until acknowledged), `update`, `shutdown` (graceful stop and exit);
//! `types` holds the vocabulary, `backoff` and `logs` the jitter and the ship queue.

mod backoff;
mod delivery;
mod jobs;
mod link;
mod logs;
mod outbox;
mod phase;
mod pumps;
mod registration;
mod shutdown;
mod state;
mod timers;
mod types;
mod update;

use std::collections::VecDeque;
use std::sync::Arc;

pub use backoff::Backoff;
pub use delivery::MAX_RESULT_RESENDS;
pub use jobs::{
    REASON_BUSY, REASON_DISABLED, REASON_NOT_IDLE, REASON_PAUSED, REASON_SHUTTING_DOWN,
};
pub use link::vram_threshold_warning;
pub use logs::LogQueue;
pub use phase::Phase;
pub use pumps::{MAX_OUTSTANDING_HEARTBEATS, MAX_UNCONFIRMED_LOG_BATCHES};
pub use types::*;

use crate::time::Mono;
use crate::wire::{close_reason, JobOfferClaim, LogEntry, UserPresence, WorkerCapabilities};

use delivery::Unacked;
use jobs::Offered;
use outbox::Kept;
use pumps::HeartbeatCache;
use registration::Registration;
use state::{JobStage, Link, Slot, Stop};
use timers::Timers;

/// The worker session machine. See the module docs for the driving contract.
///
/// Laid out in declaration order (`repr(C)`), the fields every input reads first
/// (performance only): what a heartbeat, its ack and the drain after them touch lies in a
/// few adjacent cache lines instead of scattered over the whole struct. In a large
/// simulation each worker's state is cold by the time its next input comes, so each line
/// touched is a cache miss.
#[derive(Clone, Debug)]
#[repr(C)]
pub struct Worker {
    // Read by every input, heartbeat and ack.
    now: Now,
    timers: Timers,
    link: Link,
    slot: Slot,
    out: VecDeque<Command>,
    /// Heartbeats sent on the live session and not yet acked, each with the number of log
    /// batches sent before it (acks arrive in order).
    hb_outstanding: VecDeque<usize>,
    /// Log batches sent on the live session and not yet confirmed by a later heartbeatAck.
    logs_unconfirmed: VecDeque<Vec<Arc<LogEntry>>>,
    /// Heartbeats sent on the live session, and how many of them the studio acknowledged
    /// (never more than were sent): what tells a result frame the studio read from one
    /// that may have been lost (see [`MAX_RESULT_RESENDS`]).
    heartbeats_sent: u64,
    heartbeats_acked: u64,
    last_heartbeat_ack: Option<Mono>,
    /// The last heartbeat encoded (performance only; see [`HeartbeatCache`]).
    hb_cache: Option<HeartbeatCache>,
    stats: Stats,
    logs: LogQueue,
    stop: Stop,
    started: bool,
    paused: bool,
    /// `auto_enabled` (config, then `Enable` / `Disable`).
    enabled: bool,
    presence: Option<UserPresence>,
    // The rest.
    cfg: WorkerConfig,
    next_conn: u64,
    next_http: u64,
    /// The run the next dispatch starts.
    next_run: u64,
    /// The runs the machine cancelled (at shutdown or by the job deadline), newest last,
    /// at most [`CANCELLED_RUNS_KEPT`]: a late result of one is dropped, not an error.
    cancelled: VecDeque<RunId>,
    backoff: Backoff,
    /// Consecutive failed connection attempts since the last welcomed session.
    attempt: u32,
    registration: Registration,
    /// Result frames awaiting the studio's ack.
    unacked: Vec<Unacked>,
    /// Result frames waiting for a live session (finished while disconnected).
    undelivered: VecDeque<Unacked>,
    /// An offer that arrived while our upload was in flight (at most one).
    parked_offer: Option<Offered>,
    /// What the durable outbox holds (job ids and sizes), as the machine asked for it.
    kept: Kept,
    /// Binary results restored from the outbox, uploaded again one at a time.
    restored_uploads: VecDeque<(Box<JobOfferClaim>, String)>,
    pending_update: Option<String>,
    update_check_in_flight: bool,
    /// The last update check's answer (see [`UpdateCheck`]).
    last_update_check: Option<UpdateCheck>,
    session_state: SessionState,
    recent_jobs: VecDeque<JobSummary>,
    recent_logs: VecDeque<Arc<LogEntry>>,
    /// How many log entries were ever pushed: the sequence number of the newest one.
    log_seq: u64,
}

impl Worker {
    /// A new machine. Nothing happens until `handle(now, Input::Start)`.
    pub fn new(mut cfg: WorkerConfig) -> Worker {
        cfg.timings.sanitize();
        cfg.limits.sanitize();
        let backoff = Backoff::new(cfg.timings.backoff_base, cfg.timings.backoff_cap, cfg.seed);
        let logs = LogQueue::new(cfg.limits.log_queue_cap);
        let enabled = cfg.auto_enabled;
        Worker {
            cfg,
            out: VecDeque::new(),
            now: Now::default(),
            started: false,
            stop: Stop::Running,
            link: Link::Down,
            next_conn: 1,
            next_http: 1,
            next_run: 1,
            cancelled: VecDeque::new(),
            backoff,
            attempt: 0,
            registration: Registration::Done,
            slot: Slot::Free,
            paused: false,
            enabled,
            presence: None,
            timers: Timers::default(),
            logs,
            hb_outstanding: VecDeque::new(),
            heartbeats_sent: 0,
            heartbeats_acked: 0,
            logs_unconfirmed: VecDeque::new(),
            unacked: Vec::new(),
            undelivered: VecDeque::new(),
            parked_offer: None,
            kept: Kept::default(),
            restored_uploads: VecDeque::new(),
            pending_update: None,
            update_check_in_flight: false,
            last_update_check: None,
            last_heartbeat_ack: None,
            session_state: SessionState::Stopped,
            recent_jobs: VecDeque::new(),
            recent_logs: VecDeque::new(),
            log_seq: 0,
            stats: Stats::default(),
            hb_cache: None,
        }
    }

    /// The configuration the machine runs with.
    pub fn config(&self) -> &WorkerConfig {
        &self.cfg
    }

    /// Feeds one input. On `Err` nothing changed. Drain [`Worker::poll`] afterwards.
    pub fn handle(&mut self, now: Now, input: Input) -> Result<(), UsageError> {
        let now = now.after(self.now)?;
        self.validate(&input)?;
        self.now = now;
        if self.stop == Stop::Exited {
            return Ok(());
        }
        self.stats.inputs += 1;
        self.on_input(input);
        self.run_timers();
        Ok(())
    }

    /// The next command. The last command of every drain is [`Command::Wait`]; after it,
    /// `poll` keeps returning the same `Wait` until the next `handle` (the deadline changes
    /// only in `handle`).
    pub fn poll(&mut self) -> Command {
        match self.out.pop_front() {
            Some(c) => c,
            None => Command::Wait {
                until: self.deadline(),
            },
        }
    }

    /// The earliest deadline, if any (the same value the final `Wait` carries).
    pub fn deadline(&self) -> Option<Mono> {
        if self.stop == Stop::Exited {
            None
        } else {
            self.timers.next()
        }
    }

    /// The run of the job in the slot, if any (dispatched; maybe finished and being
    /// delivered).
    pub fn current_run(&self) -> Option<RunId> {
        match &self.slot {
            Slot::Job(j) => j.run,
            _ => None,
        }
    }

    /// How many results the durable outbox holds, as the machine asked the shell to keep
    /// them (the simulation checks it).
    pub fn kept_results(&self) -> usize {
        self.kept.len()
    }

    /// `status().log_queue_len` without building the snapshot (the simulation checks it
    /// after every step).
    pub fn log_queue_len(&self) -> usize {
        self.logs.len()
    }

    /// A read-only snapshot for `status`, the UI and tests.
    pub fn status(&self) -> StatusSnapshot {
        let current_job_id = self.current_job_id().map(str::to_string);
        StatusSnapshot {
            session: self.session_state.clone(),
            stopping: self.stop != Stop::Running,
            worker_id: self.cfg.credentials.as_ref().map(|c| c.worker_id.clone()),
            registration_request_id: self.cfg.registration.request_id.clone(),
            paused: self.paused,
            enabled: self.enabled,
            vram_threshold_gb: self.cfg.vram_threshold_gb,
            current_job: current_job_id
                .as_deref()
                .and_then(|id| self.recent_jobs.iter().find(|j| j.job_id == id))
                .cloned(),
            current_job_id,
            updating: match &self.slot {
                Slot::Updating { version } => Some(version.clone()),
                _ => None,
            },
            last_update_check: self.last_update_check.clone(),
            log_queue_len: self.logs.len(),
            log_dropped_total: self.logs.dropped_total(),
            recent_jobs: self.recent_jobs.iter().cloned().collect(),
            recent_logs: self
                .recent_logs
                .iter()
                .map(|e| LogEntry::clone(e))
                .collect(),
            log_seq: self.log_seq,
            last_heartbeat_ack: self.last_heartbeat_ack,
            reconnect_attempt: self.attempt,
            stats: self.stats.clone(),
            exited: self.stop == Stop::Exited,
        }
    }

    /// The kept log entries (the last [`Limits::recent_logs`]) numbered after `after`,
    /// oldest first, each with its sequence number (numbered from 1 in the order they were
    /// logged, so a reader passes the last number it saw to get only newer ones). Entries
    /// that fell out of the ring are skipped.
    pub fn logs_after(&self, after: u64) -> impl Iterator<Item = (u64, &LogEntry)> + '_ {
        let first = self.log_seq + 1 - self.recent_logs.len() as u64;
        let skip = after.saturating_add(1).saturating_sub(first);
        let skip = usize::try_from(skip).unwrap_or(usize::MAX);
        self.recent_logs
            .iter()
            .enumerate()
            .skip(skip)
            .map(move |(i, e)| (first + i as u64, &**e))
    }

    /// The sequence number of the newest log entry (0 before the first).
    pub fn log_seq(&self) -> u64 {
        self.log_seq
    }

    /// Whether the worker advertises `autoEnabled`: enabled and not paused.
    pub fn auto_enabled(&self) -> bool {
        self.enabled && !self.paused
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
            auto_enabled: self.auto_enabled(),
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
            Input::JobFinished { job_id, run, .. } => match &self.slot {
                Slot::Job(j) if j.run == Some(*run) => {
                    if &j.claim.job_id == job_id && j.stage == JobStage::Running {
                        Ok(())
                    } else {
                        Err(UsageError::UnknownJob(job_id.clone()))
                    }
                }
                // A run the machine cancelled: its result is dropped (`on_job_finished`).
                _ if self.cancelled.contains(run) => Ok(()),
                _ => Err(UsageError::UnknownJob(job_id.clone())),
            },
            Input::Restore { .. } => self.validate_restore(),
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
                        close_reason::PROTOCOL_VIOLATION,
                        &format!("protocol error: binary frame of {len} bytes from the studio"),
                    );
                }
            }
            Input::Disconnected { conn, code, reason } => self.on_disconnected(conn, code, reason),
            Input::Http { id, result } => self.on_http(id, result),
            Input::Minted { install_id, secret } => self.on_minted(install_id, secret),
            Input::JobFinished {
                job_id,
                run,
                outcome,
            } => self.on_job_finished(job_id, run, outcome),
            Input::Log(entry) => self.push_log_entry(entry),
            Input::Pause => self.set_paused(true),
            Input::Resume => self.set_paused(false),
            Input::Enable => self.set_enabled(true),
            Input::Disable => self.set_enabled(false),
            Input::SetThreshold { gb } => {
                self.cfg.vram_threshold_gb = gb;
                self.log(
                    LogLevel::Info,
                    LogCategory::Ws,
                    format!("vram threshold set to {gb} GB"),
                    None,
                );
            }
            Input::SetPresence(p) => self.presence = p,
            Input::Shutdown => self.on_shutdown(),
            Input::CheckUpdateNow => self.on_check_update_now(),
            Input::UpdateChecked { result } => self.on_update_checked(result),
            Input::UpdateApplied { result } => self.on_update_applied(result),
            Input::Restore { results } => self.on_restore(results),
        }
    }

    fn start(&mut self) {
        if self.started {
            return;
        }
        self.started = true;
        if !self.enabled {
            self.log(
                LogLevel::Info,
                LogCategory::Ws,
                "disabled (auto_enabled = false): offers are rejected until the worker is enabled"
                    .into(),
                None,
            );
        }
        if self.cfg.credentials.is_some() {
            self.registration = Registration::Done;
            self.connect();
            self.upload_next_restored();
        } else {
            self.session_state = SessionState::WaitingForApproval;
            self.log(
                LogLevel::Info,
                LogCategory::Ws,
                "waiting for operator approval before opening the session".into(),
                None,
            );
            self.begin_registration();
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
        let advertised = self.auto_enabled();
        self.paused = paused;
        let msg = if paused {
            "paused by operator; new offers are rejected"
        } else if self.enabled {
            "resumed by operator; accepting offers"
        } else {
            "resumed by operator; still disabled (auto_enabled = false), offers are rejected"
        };
        self.log(LogLevel::Info, LogCategory::Ws, msg.into(), None);
        self.advertise_if_changed(advertised);
    }

    fn set_enabled(&mut self, enabled: bool) {
        if self.enabled == enabled {
            return;
        }
        let advertised = self.auto_enabled();
        self.enabled = enabled;
        let msg = if !enabled {
            "disabled by operator (auto_enabled = false); new offers are rejected"
        } else if self.paused {
            "enabled by operator (auto_enabled = true); still paused, offers are rejected"
        } else {
            "enabled by operator (auto_enabled = true); accepting offers"
        };
        self.log(LogLevel::Info, LogCategory::Ws, msg.into(), None);
        self.advertise_if_changed(advertised);
    }

    /// After an operator request: when `autoEnabled` changed from `before`, a live session
    /// hears of it now rather than at the next heartbeat.
    fn advertise_if_changed(&mut self, before: bool) {
        if self.auto_enabled() != before && matches!(self.link, Link::Live { .. }) {
            self.send_heartbeat();
        }
    }

    pub(super) fn emit(&mut self, c: Command) {
        self.out.push_back(c);
    }

    pub(super) fn http_id(&mut self) -> HttpId {
        let id = HttpId(self.next_http);
        self.next_http += 1;
        id
    }
}

/// The upgrade-failure body is clipped to this many characters in messages.
pub const UPGRADE_BODY_CLIP: usize = 300;

/// How many cancelled runs the machine remembers, so a late result of one is dropped
/// quietly (older ones are usage errors, which change nothing either).
pub const CANCELLED_RUNS_KEPT: usize = 16;

/// A peer's body for a message: secrets redacted first (clipping could cut a token's
/// closing quote and hide it from the redaction), then clipped to `n` characters.
pub(super) fn clip_body(body: &str, n: usize) -> String {
    clip(&crate::secret::redact_json(body), n).into_owned()
}

/// `s` clipped to `n` characters, ending in `…` when cut.
pub(super) fn clip(s: &str, n: usize) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]).into(),
        None => s.into(),
    }
}

/// `s` clipped to at most `max` bytes at a character boundary, ending in `…` when cut
/// (the ellipsis counts; below 4 bytes nothing but the cut text fits).
pub fn clip_bytes(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    const MORE: &str = "…";
    let room = max.saturating_sub(MORE.len());
    let mut end = room;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    if max >= MORE.len() {
        format!("{}{MORE}", &s[..end])
    } else {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s[..end].to_string()
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
