//! The reference studio machine: the studio side of the worker <-> studio contract
//! (`PROTOCOL.md`), sans-IO.
//!
//! It is the peer of the loopback studio server, of in-memory worker+studio pair tests and
//! of the fleet simulation. It owns worker registration (§4.1), the WebSocket sessions
//! (§2, §5), job offering and bookkeeping (§3.1 "Studio selection", §3.9), the multipart
//! completion route (§4.1) and the periodic sweep (§1.1, §6). It reads no clock, socket,
//! file, environment, thread or random source, and uses no hashed collections: the same
//! calls with the same `Mono` values give the same commands, always.
//!
//! # Driving contract
//!
//! * The driver assigns a [`ConnId`] per accepted socket. Before accepting a WebSocket
//!   upgrade it calls [`Studio::authorize_upgrade`] (401 refuses the upgrade), then feeds
//!   [`StudioInput::Connected`], every text frame as [`StudioInput::Frame`], the end of the
//!   socket as [`StudioInput::Disconnected`], and [`StudioInput::Tick`] whenever the last
//!   `Wait { until }` is reached (a spurious or early `Tick` is harmless).
//! * HTTP handlers call [`Studio::register_request`], [`Studio::register_status`],
//!   [`Studio::complete_upload`], [`Studio::submit`], [`Studio::approve`], ... directly and
//!   map the `Result` to a status code and JSON body.
//! * After **every** call that takes `&mut self` the driver drains [`Studio::poll`] until it
//!   returns a [`StudioCommand::Wait`]: `Send` a text frame, `Close` a socket with a code,
//!   log an `Event`, then sleep until `until` (`None`: nothing scheduled, sleep until IO).
//! * Binary WebSocket frames are not part of the contract; a driver may feed them as a
//!   `Frame` with any non-JSON text (they then count as a protocol violation) or drop them.
//!
//! ```
//! use studio_core::studio::{Studio, StudioCommand, StudioConfig, StudioInput};
//! use studio_core::Mono;
//!
//! let mut studio = Studio::new(StudioConfig::default());
//! studio.add_worker("w-1", "token-1");
//! assert!(studio.authorize_upgrade("w-1", "token-1").is_ok());
//! studio.handle(Mono::from_secs(1), StudioInput::Connected { conn: 7, worker_id: "w-1".into() });
//! let hello = r#"{"type":"hello","authToken":"token-1","capabilities":{"machineName":"m",
//!   "username":"u","agentVersion":"0","engine":"synthetic","vramTotalGb":8.0,
//!   "vramThresholdGb":8.0,"autoEnabled":true,"autoStart":false,"supportedModels":[]}}"#;
//! studio.handle(Mono::from_secs(1), StudioInput::Frame { conn: 7, text: hello.into() });
//! let mut sent = Vec::new();
//! while let Some(cmd) = studio.poll() {
//!     match cmd {
//!         StudioCommand::Send { conn, text } => sent.push((conn, text)),
//!         StudioCommand::Close { .. } | StudioCommand::Event(_) => {}
//!         StudioCommand::Wait { until } => {
//!             // the next sweep, 10 s after the connection appeared
//!             assert_eq!(until, Some(Mono::from_secs(11)));
//!             break;
//!         }
//!     }
//! }
//! assert!(sent[0].1.starts_with(r#"{"type":"welcome","workerId":"w-1""#));
//! ```
//!
//! # Decisions where the protocol is silent
//!
//! | Topic | Decision |
//! |---|---|
//! | What an *attempt* is | `JobRecord::attempts` counts started runs: it grows on `accept` (or on a `completeJson`/`fail` that arrives for a still-offered job) and on a non-transient `reject`. A job is requeued while `attempts < max_attempts` (a `max_attempts` of 0 counts as 1). |
//! | `reject` code `busy`/`paused` (or, for legacy workers, a reason mentioning paused / only when idle / in-flight / busy) | Transient: requeued, no attempt spent, and the rejecting worker gets no offer until its next heartbeat (no spin). |
//! | Any other `reject` | Spends an attempt (a worker refusing a job for a reason of its own is a signal the job may be unservable; this bounds ping-pong). Same hold-until-heartbeat for the worker. |
//! | `fail` | Answered with `failAck`. `retryable` and attempts left: requeued; else `Failed`. |
//! | Offer not answered within `offer_timeout` | Requeued, no attempt spent; the worker is held until its next heartbeat. |
//! | Session ends (disconnect, close, sweep) with a job only *offered* | Requeued at once, no attempt (the offer died with the socket; a worker drops offers before `welcome`). |
//! | Session ends with a *running* job | The claim survives until `session_timeout` after the worker's last frame, so a quick reconnect keeps the job. When that passes (checked by the sweep) the job is requeued if attempts remain (the accept already spent one: a job that keeps killing its workers ends `Failed`), else `Failed`. |
//! | Liveness | Any decoded frame counts, not only heartbeats. A sweep (every `sweep_interval`) closes a session whose last frame is `>= session_timeout` old with close 1000 `session timed out` and no `error` frame. A connection that never sends `hello` is swept the same way. |
//! | Heartbeat says idle (no `currentJobId`) while the studio holds a running job for it | The first such heartbeat starts a grace (`idle_claim_grace`, 60 s: an upload may still be in flight); a heartbeat naming the job cancels it; an idle heartbeat after the grace releases the job like a lost claim. |
//! | Heartbeat names a job the studio does not attribute to this worker | If that job is still queued and this worker was its last holder, the claim is re-attached (`JobReclaimed`, no attempt). Otherwise the worker is marked busy with it and gets no offers until a heartbeat says idle or it reports that job. |
//! | `accept` / `completeJson` / `fail` / `reject` for a job never offered to this worker, or unknown | `protocol_violation` + close 4002. |
//! | The same for a job offered to this worker earlier but no longer held (timed out, re-assigned, finished) | *Stale*: ignored with a `StaleFrame` event, no ack, the session lives (an offer-timeout race must not kill a session). A stale `accept` marks the worker busy with that job. |
//! | Completion for a job that was requeued and is still queued, from its last holder | Accepted as a *late* completion (saves a regeneration); never for a job that is offered/running elsewhere, done or failed. A job completes at most once, ever. |
//! | HTTP `/complete` | 401 bad worker or token; 409 for an unknown job, a job not held by this worker, or one already finished (including a repeated upload); 200 otherwise. The kind is not checked (any job may be delivered by upload). |
//! | A second `hello` on a welcomed session, a `reject` of an accepted job | `protocol_violation`. |
//! | `readyForMore` | Ignored with an event (offers are always studio-driven; the slot bookkeeping makes a second nudge harmless anyway). |
//! | Offer order | FIFO by submission (a requeued job keeps its place). A freed worker takes the oldest queued job it can serve; a newly queued job goes to the earliest-connected idle worker that can serve it. After every call no idle worker can serve any queued job. |
//! | Registration dedup | A repeat `register-request` with the same `installId` while its request is pending returns the same `requestId` and replaces the secret hash and capabilities (the worker may have re-minted its secret after a failed POST). Once decided, the same `installId` opens a fresh request; approving it re-uses the worker id bound to that install. |
//! | Register POST response | Always `status: "pending"` (the only value the contract shows); an auto-approved request reports `approved` on its first poll. |
//! | Register poll | 404 unknown (or its worker was deleted since), 401 wrong bearer, `approved` mints a fresh token each poll and rotates the stored hash (old token stops working for new upgrades; a live session is not cut). |
//! | Register input checks | 400 for an empty or over-long `installId` or a secret hash that is not 64 hex chars. Rate limiting by source IP is the driver's job (the core sees no addresses). |
//! | Approve / reject | 404 unknown; idempotent on the same decision; 409 on the opposite one. |
//! | Upgrade authorisation | 401 for an unknown worker, one without a token yet, or a wrong bearer. |
//! | `remove_worker` | Every socket of the worker gets `error worker_deleted` + close 4004; its job is requeued with the attempt refunded (an operator action is not the job's fault). |
//! | Tokens | `sha256_hex` of a domain tag, the seed and a counter: deterministic; the driver seeds from a real random source. Only the SHA-256 of a token is stored. |
//! | `serverTime` | RFC 3339 of `wall_origin + now` (the worker only logs it). |
//! | Timers | Offer timeouts are exact deadlines; session and claim expiry are checked by the sweep, like the reference's 10 s alarm. The sweep is armed only while a connection or an orphaned claim exists, so an empty studio waits with `None`. Timers fire on `Tick` only. |
//! | Limits | Every limit is a field of [`StudioConfig`] with a named default: frame size, unfinished jobs, finished jobs kept, registration requests kept, per-worker log ring, stored log message length. Over a limit: 413/429/400 on HTTP, violation on the socket, oldest-first eviction for rings. |
//!
//! | Forgotten jobs | Beyond `max_finished_jobs` the oldest finished records are dropped; a frame that later names one is about an unknown job (violation), an upload gets 409. |
//!
//! Complexity: every frame, heartbeat, HTTP call and timer costs `O(log n)` in workers,
//! connections and jobs. The offer step uses two indexes: the queue by (kind, VRAM
//! estimate) and the idle workers by (kind, VRAM threshold), so "the oldest queued job this
//! worker can serve" and "the earliest idle worker that can serve this job" each cost one
//! range lookup per distinct estimate/threshold value, never a scan of unservable entries.
//! Only [`Studio::check_invariants`] (for tests and the simulation) is linear, plus a
//! brute-force idle x queued cross-check that does not trust the indexes.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::secret::Secret;
use crate::time::{Mono, WallMs};
use crate::wire::{
    self, sha256_hex, AutoRegisterRequest, JobOfferClaim, LogEntry, ModelSource,
    RegisterRequestResponse, RegisterStatus, RejectCode, StudioFrame, Task, TaskKind, UserPresence,
    WorkerCapabilities, WorkerErrorCode, WorkerFrame,
};

/// Identifies one accepted socket; assigned by the driver, unique per socket.
pub type ConnId = u64;

// ------------------------------------------------------------------------------------------
// Limits and defaults
// ------------------------------------------------------------------------------------------

/// Heartbeat silence after which a session is closed and its claim released (§6).
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(30);
/// Period of the sweep (the reference's Durable Object alarm, §6).
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// Started runs a job gets before it ends `Failed`.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// How long an offer may stay unanswered before the job is requeued.
pub const DEFAULT_OFFER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a worker may keep reporting idle while the studio holds a running job for it.
pub const DEFAULT_IDLE_CLAIM_GRACE: Duration = Duration::from_secs(60);
/// Unfinished (queued, offered or running) jobs accepted before `submit` answers 429.
pub const DEFAULT_MAX_QUEUED_JOBS: usize = 100_000;
/// Finished (done or failed) job records kept; the oldest are forgotten beyond this.
pub const DEFAULT_MAX_FINISHED_JOBS: usize = 100_000;
/// Registration requests kept; beyond this the oldest decided one is forgotten, and when
/// all are pending a new request gets 429.
pub const DEFAULT_MAX_REGISTRATION_REQUESTS: usize = 10_000;
/// Log entries kept per worker (a ring, oldest dropped first).
pub const DEFAULT_LOG_RING_CAPACITY: usize = 1_000;
/// Bytes of one log message kept (cut at a character boundary).
pub const DEFAULT_MAX_LOG_MESSAGE_BYTES: usize = 4_096;
/// Longest accepted `installId`, in bytes.
pub const MAX_INSTALL_ID_BYTES: usize = 256;
/// Shortest sweep interval honoured (a zero interval would busy-loop the driver).
pub const MIN_SWEEP_INTERVAL: Duration = Duration::from_millis(1);

/// Domain tag mixed into minted tokens.
const TOKEN_DOMAIN: &str = "studio-core/token/v1";

/// Configuration of a [`Studio`]. Every limit has a named default.
#[derive(Clone, Debug, PartialEq)]
pub struct StudioConfig {
    /// Silence after which a session is closed and a disconnected worker's claim released.
    pub session_timeout: Duration,
    /// Sweep period.
    pub sweep_interval: Duration,
    /// Started runs per job (0 counts as 1).
    pub max_attempts: u32,
    /// Unanswered-offer timeout.
    pub offer_timeout: Duration,
    /// Grace for a worker that reports idle while holding a running job.
    pub idle_claim_grace: Duration,
    /// Approve every registration request at once.
    pub auto_approve: bool,
    /// Largest worker frame accepted; larger ones are a protocol violation. Also the
    /// largest offer `submit` accepts (the worker applies the same default limit).
    pub max_frame_bytes: usize,
    /// Unfinished jobs accepted before `submit` answers 429.
    pub max_queued_jobs: usize,
    /// Finished job records kept.
    pub max_finished_jobs: usize,
    /// Registration requests kept.
    pub max_registration_requests: usize,
    /// Log entries kept per worker.
    pub log_ring_capacity: usize,
    /// Bytes of a log message kept.
    pub max_log_message_bytes: usize,
    /// Seed of the token generator.
    pub token_seed: u64,
    /// Wall-clock time at `Mono::ZERO`, used only for `welcome.serverTime`.
    pub wall_origin: WallMs,
}

impl Default for StudioConfig {
    fn default() -> Self {
        StudioConfig {
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            sweep_interval: DEFAULT_SWEEP_INTERVAL,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            offer_timeout: DEFAULT_OFFER_TIMEOUT,
            idle_claim_grace: DEFAULT_IDLE_CLAIM_GRACE,
            auto_approve: false,
            max_frame_bytes: wire::MAX_FRAME_BYTES,
            max_queued_jobs: DEFAULT_MAX_QUEUED_JOBS,
            max_finished_jobs: DEFAULT_MAX_FINISHED_JOBS,
            max_registration_requests: DEFAULT_MAX_REGISTRATION_REQUESTS,
            log_ring_capacity: DEFAULT_LOG_RING_CAPACITY,
            max_log_message_bytes: DEFAULT_MAX_LOG_MESSAGE_BYTES,
            token_seed: 0,
            wall_origin: WallMs(0),
        }
    }
}

// ------------------------------------------------------------------------------------------
// Public types
// ------------------------------------------------------------------------------------------

/// An HTTP-level refusal: the status code and a message for the JSON error body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpError {
    pub status: u16,
    pub message: String,
}

impl HttpError {
    /// Builds an error.
    pub fn new(status: u16, message: impl Into<String>) -> HttpError {
        HttpError {
            status,
            message: message.into(),
        }
    }
    fn bad_request(m: impl Into<String>) -> HttpError {
        HttpError::new(400, m)
    }
    fn unauthorized(m: impl Into<String>) -> HttpError {
        HttpError::new(401, m)
    }
    fn not_found(m: impl Into<String>) -> HttpError {
        HttpError::new(404, m)
    }
    fn conflict(m: impl Into<String>) -> HttpError {
        HttpError::new(409, m)
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {}: {}", self.status, self.message)
    }
}

impl std::error::Error for HttpError {}

/// What the driver feeds the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StudioInput {
    /// A socket was upgraded for `worker_id` (after a successful `authorize_upgrade`).
    Connected { conn: ConnId, worker_id: String },
    /// A text frame arrived.
    Frame { conn: ConnId, text: String },
    /// The socket ended (for any reason, including after a `Close` command).
    Disconnected { conn: ConnId },
    /// The `Wait` deadline was reached (or any time; early ticks are harmless).
    Tick,
}

/// What the machine asks the driver to do, drained by [`Studio::poll`].
#[derive(Clone, Debug, PartialEq)]
pub enum StudioCommand {
    /// Write one text frame (an encoded `StudioFrame`).
    Send { conn: ConnId, text: String },
    /// Close the socket with this code and reason. The machine has already forgotten it.
    Close {
        conn: ConnId,
        code: u16,
        reason: String,
    },
    /// A structured notice for logs, metrics and tests.
    Event(StudioEvent),
    /// Last command of every drain: call `handle(Tick)` at `until` (`None`: no timer).
    Wait { until: Option<Mono> },
}

/// Why a job went back to the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequeueReason {
    /// The offer was not answered in time.
    OfferTimedOut,
    /// The session ended before the offer was answered.
    OfferLost,
    /// `reject` with `busy`/`paused` (no attempt spent).
    TransientReject,
    /// Any other `reject` (an attempt spent).
    Rejected,
    /// `fail` with `retryable: true`.
    RetryableFailure,
    /// The worker stayed away longer than the session timeout while running the job.
    ClaimExpired,
    /// The worker kept reporting idle past the grace while the studio held the job for it.
    WorkerReportedIdle,
    /// The operator removed the worker.
    WorkerRemoved,
}

impl RequeueReason {
    /// A short stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            RequeueReason::OfferTimedOut => "offer timed out",
            RequeueReason::OfferLost => "session ended before accept",
            RequeueReason::TransientReject => "transient reject",
            RequeueReason::Rejected => "rejected",
            RequeueReason::RetryableFailure => "retryable failure",
            RequeueReason::ClaimExpired => "claim expired",
            RequeueReason::WorkerReportedIdle => "worker reported idle",
            RequeueReason::WorkerRemoved => "worker removed",
        }
    }
}

impl fmt::Display for RequeueReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Structured notices.
#[derive(Clone, Debug, PartialEq)]
pub enum StudioEvent {
    /// A socket was handed over, awaiting `hello`.
    ConnOpened { conn: ConnId, worker_id: String },
    /// `hello` verified, `welcome` sent.
    Welcomed { conn: ConnId, worker_id: String },
    /// `hello` carried a wrong token (or the worker is unknown): closed 4001.
    AuthFailed { conn: ConnId, worker_id: String },
    /// The peer broke the contract: closed 4002.
    ProtocolViolation {
        conn: ConnId,
        worker_id: String,
        message: String,
    },
    /// Two connections of one worker: `old_conn` (opened first) was closed 4003 and
    /// `new_conn` (opened later) keeps the session, whichever hello arrived last.
    DuplicateSession {
        worker_id: String,
        old_conn: ConnId,
        new_conn: ConnId,
    },
    /// A silent connection was closed by the sweep.
    SessionExpired { conn: ConnId, worker_id: String },
    /// The driver reported the socket gone.
    ConnLost { conn: ConnId, worker_id: String },
    /// The operator removed a worker.
    WorkerRemoved { worker_id: String },
    /// A job entered the queue.
    JobSubmitted { job_id: String },
    /// An offer was sent.
    JobOffered { job_id: String, worker_id: String },
    /// An offer was accepted (`attempt` is the new attempt count).
    JobAccepted {
        job_id: String,
        worker_id: String,
        attempt: u32,
    },
    /// An offer was rejected.
    JobRejected {
        job_id: String,
        worker_id: String,
        code: Option<RejectCode>,
        reason: String,
        transient: bool,
    },
    /// A job went back to the queue.
    JobRequeued {
        job_id: String,
        reason: RequeueReason,
        attempts: u32,
    },
    /// A worker reported running a requeued job it held last; the claim was re-attached.
    JobReclaimed { job_id: String, worker_id: String },
    /// A job completed (`late`: it had been requeued and its last holder delivered).
    JobCompleted {
        job_id: String,
        worker_id: String,
        late: bool,
    },
    /// A job ended failed.
    JobFailed { job_id: String, error: String },
    /// A frame or upload about a job this worker held once but not any more; ignored.
    StaleFrame {
        worker_id: String,
        job_id: String,
        frame: &'static str,
        state: &'static str,
    },
    /// A `logBatch` was stored.
    LogsReceived {
        worker_id: String,
        received: usize,
        dropped: usize,
    },
    /// A `readyForMore` was ignored.
    ReadyForMore { worker_id: String },
    /// A sweep did something.
    Swept {
        expired_sessions: usize,
        released_claims: usize,
    },
    /// A registration request was received.
    RegistrationRequested {
        request_id: String,
        install_id: String,
        deduplicated: bool,
    },
    /// A registration request was approved.
    RegistrationApproved {
        request_id: String,
        worker_id: String,
    },
    /// A registration request was rejected.
    RegistrationRejected { request_id: String, reason: String },
    /// A fresh token was minted for a worker (the previous one stops working).
    TokenIssued { worker_id: String },
    /// An input that refers to nothing (a frame for a closed socket, a reused id).
    Ignored { conn: Option<ConnId>, what: String },
}

/// A job to run, as the studio's dashboard would submit it.
#[derive(Clone, Debug, PartialEq)]
pub struct JobSpec {
    pub model: String,
    pub vram_gb_estimate: f32,
    pub task: Task,
    pub model_source: ModelSource,
    pub game_id: String,
    pub asset_name: String,
}

impl JobSpec {
    /// A job for the synthetic engine (model `synthetic`, no VRAM, placeholder game/asset).
    pub fn synthetic(task: Task) -> JobSpec {
        JobSpec {
            model: "synthetic".into(),
            vram_gb_estimate: 0.0,
            task,
            model_source: ModelSource::synthetic(),
            game_id: "game".into(),
            asset_name: "game/asset".into(),
        }
    }
}

/// A delivered result.
#[derive(Clone, Debug, PartialEq)]
pub enum JobResult {
    /// Via `completeJson`.
    Json {
        result: Value,
        prompt: Option<String>,
    },
    /// Via the multipart upload (the bytes themselves stay with the driver).
    Binary {
        ext: String,
        prompt: String,
        bytes_len: u64,
    },
}

/// Where a job stands.
#[derive(Clone, Debug, PartialEq)]
pub enum JobState {
    Queued,
    Offered {
        worker_id: String,
    },
    Running {
        worker_id: String,
    },
    Done {
        worker_id: String,
        result: JobResult,
    },
    Failed {
        error: String,
    },
}

impl JobState {
    /// The worker holding the job's slot (offered or running).
    pub fn holder(&self) -> Option<&str> {
        match self {
            JobState::Offered { worker_id } | JobState::Running { worker_id } => Some(worker_id),
            _ => None,
        }
    }

    /// Done or failed.
    pub fn is_finished(&self) -> bool {
        matches!(self, JobState::Done { .. } | JobState::Failed { .. })
    }

    /// A short stable name.
    pub fn name(&self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Offered { .. } => "offered",
            JobState::Running { .. } => "running",
            JobState::Done { .. } => "done",
            JobState::Failed { .. } => "failed",
        }
    }
}

/// The studio's record of one job.
#[derive(Clone, Debug, PartialEq)]
pub struct JobRecord {
    pub id: String,
    pub spec: JobSpec,
    pub state: JobState,
    /// Started runs (see the module docs).
    pub attempts: u32,
    /// Accepted completions; never more than 1.
    pub completions: u32,
    pub submitted_at: Mono,
    pub updated_at: Mono,
    /// The last error reported by a `fail` (or the reason a run was lost).
    pub last_error: Option<String>,
    seq: u64,
    offered_to: BTreeSet<String>,
    last_worker: Option<String>,
    offer_deadline: Option<Mono>,
    finish_seq: Option<u64>,
}

impl JobRecord {
    /// Every worker this job has been offered to.
    pub fn offered_to(&self) -> impl Iterator<Item = &str> {
        self.offered_to.iter().map(String::as_str)
    }
    /// The worker it was offered to most recently.
    pub fn last_worker(&self) -> Option<&str> {
        self.last_worker.as_deref()
    }
    /// When the current offer times out.
    pub fn offer_deadline(&self) -> Option<Mono> {
        self.offer_deadline
    }
}

/// A registration request awaiting the operator.
#[derive(Clone, Debug, PartialEq)]
pub struct PendingRequest {
    pub request_id: String,
    pub install_id: String,
    pub user_agent: String,
    pub capabilities: WorkerCapabilities,
    /// First seen (a dedup'd repeat does not move it).
    pub requested_at: Mono,
}

/// A snapshot of one worker.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerView {
    pub id: String,
    /// Has a welcomed session.
    pub connected: bool,
    pub conn: Option<ConnId>,
    pub connected_since: Option<Mono>,
    pub capabilities: Option<WorkerCapabilities>,
    /// The job whose slot it holds (offered or running).
    pub current_job: Option<String>,
    /// Time of its last frame.
    pub last_heartbeat: Option<Mono>,
    /// A token has been issued (it can connect).
    pub has_token: bool,
    /// Would get the next job it can serve.
    pub idle: bool,
}

/// Job counts by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StudioStats {
    pub queued: usize,
    pub offered: usize,
    pub running: usize,
    pub done: usize,
    pub failed: usize,
    pub connections: usize,
    pub connected_workers: usize,
}

// ------------------------------------------------------------------------------------------
// Internal records
// ------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    AwaitingHello,
    Welcomed,
}

#[derive(Clone, Debug)]
struct ConnRec {
    /// Shared, not owned: every frame on the connection takes a copy of it to pass along
    /// while the record itself may change, and cloning an `Arc` allocates nothing.
    worker_id: Arc<str>,
    phase: Phase,
    last_frame: Mono,
    /// Connect order (the studio's own counter): of two connections of one worker, the one
    /// opened later wins, whichever hello arrives last.
    opened: u64,
    /// The last heartbeat handled on this connection (performance only).
    last_heartbeat: Option<HeartbeatMemo>,
}

/// A heartbeat's text with what it decoded to. Performance only: a worker repeats the same
/// heartbeat while nothing in it changes, and a byte-identical text decodes to the same
/// frame, so it is not decoded again. Its capabilities are the worker record's as long as
/// the record's `caps_gen` is still `caps_gen` (nothing assigned them since).
#[derive(Clone, Debug)]
struct HeartbeatMemo {
    text: String,
    current_job_id: Option<String>,
    caps_gen: u64,
}

#[derive(Clone, Debug, Default)]
struct WorkerRec {
    token_hash: Option<String>,
    session: Option<ConnId>,
    connect_seq: u64,
    connected_at: Option<Mono>,
    capabilities: Option<WorkerCapabilities>,
    /// Which assignment of `capabilities` they come from (the studio's `caps_gen` then).
    caps_gen: u64,
    last_seen: Option<Mono>,
    /// Seq of the job whose slot it holds.
    slot: Option<u64>,
    /// No offers until the next heartbeat (after a reject or an offer timeout).
    hold: bool,
    /// The worker reported (or accepted) a job the studio does not attribute to it.
    busy_hint: Option<String>,
    /// First idle heartbeat while holding a running job.
    idle_since: Option<Mono>,
    /// Key in `orphans` while disconnected with a running job.
    orphan_since: Option<Mono>,
    in_idle: bool,
    /// The fits it was indexed under while idle.
    idle_fits: Vec<Fit>,
    logs: VecDeque<LogEntry>,
}

#[derive(Clone, Debug, PartialEq)]
enum RegState {
    Pending,
    Approved { worker_id: String },
    Rejected { reason: String },
}

#[derive(Clone, Debug)]
struct RegRequest {
    install_id: String,
    secret_hash: String,
    capabilities: WorkerCapabilities,
    user_agent: String,
    requested_at: Mono,
    state: RegState,
}

/// A queued job's index key: its kind and the bit pattern of its (finite, non-negative)
/// VRAM estimate, which orders like the number.
type Fit = (TaskKind, u32);

fn vram_bits(v: f32) -> u32 {
    // -0.0 and 0.0 compare equal; give them one key.
    if v == 0.0 {
        0
    } else {
        v.to_bits()
    }
}

fn job_fit(spec: &JobSpec) -> Fit {
    (spec.task.kind(), vram_bits(spec.vram_gb_estimate))
}

/// The index keys of a worker: one per kind it serves, with its threshold. A threshold that
/// is negative or NaN serves nothing.
fn worker_fits(caps: &WorkerCapabilities) -> Vec<Fit> {
    let t = caps.vram_threshold_gb;
    if t.is_nan() || t < 0.0 {
        return Vec::new();
    }
    TaskKind::ALL
        .into_iter()
        .filter(|k| caps.serves_kind(*k))
        .map(|k| (k, vram_bits(t)))
        .collect()
}

/// The FIFO queue, indexed by fit so that "the oldest job this worker can serve" costs a
/// few range lookups instead of a scan.
#[derive(Clone, Debug, Default)]
struct JobQueue {
    fifo: BTreeSet<u64>,
    by_fit: BTreeMap<Fit, BTreeSet<u64>>,
}

impl JobQueue {
    fn insert(&mut self, seq: u64, fit: Fit) {
        if self.fifo.insert(seq) {
            self.by_fit.entry(fit).or_default().insert(seq);
        }
    }

    fn remove(&mut self, seq: u64, fit: Fit) {
        if self.fifo.remove(&seq) {
            if let Some(b) = self.by_fit.get_mut(&fit) {
                b.remove(&seq);
                if b.is_empty() {
                    self.by_fit.remove(&fit);
                }
            }
        }
    }

    fn contains(&self, seq: u64) -> bool {
        self.fifo.contains(&seq)
    }

    /// The oldest queued job whose kind is served and whose estimate is within the
    /// threshold (`compatible`), over the worker's fits.
    fn first_fit(&self, fits: &[Fit]) -> Option<u64> {
        fits.iter()
            .flat_map(|&(kind, t)| {
                self.by_fit
                    .range((kind, 0)..=(kind, t))
                    .filter_map(|(_, b)| b.first().copied())
            })
            .min()
    }
}

/// Idle-eligible workers by connect order, indexed by fit.
#[derive(Clone, Debug, Default)]
struct IdlePool {
    set: BTreeSet<(u64, String)>,
    by_fit: BTreeMap<Fit, BTreeSet<(u64, String)>>,
}

impl IdlePool {
    fn insert(&mut self, key: (u64, String), fits: &[Fit]) {
        for f in fits {
            self.by_fit.entry(*f).or_default().insert(key.clone());
        }
        self.set.insert(key);
    }

    fn remove(&mut self, key: &(u64, String), fits: &[Fit]) {
        for f in fits {
            if let Some(b) = self.by_fit.get_mut(f) {
                b.remove(key);
                if b.is_empty() {
                    self.by_fit.remove(f);
                }
            }
        }
        self.set.remove(key);
    }

    /// The earliest-connected idle worker that serves `kind` with a threshold at or above
    /// the estimate.
    fn first_fit(&self, (kind, v): Fit) -> Option<&(u64, String)> {
        self.by_fit
            .range((kind, v)..=(kind, u32::MAX))
            .filter_map(|(_, b)| b.first())
            .min()
    }
}

/// How a completion-like message relates to the sender.
enum Claim {
    /// Accepted by (running on) the sender.
    Held,
    /// Offered to the sender, no accept seen yet. A result frame for it is a re-sent result
    /// of an earlier attempt (the worker accepts before it runs), not this offer's outcome.
    Offered,
    /// Queued again and the sender was the last holder.
    Late,
    /// The sender held it once; not any more.
    Stale,
    /// Never offered to the sender.
    Foreign,
}

// ------------------------------------------------------------------------------------------
// The machine
// ------------------------------------------------------------------------------------------

/// The reference studio machine. See the module docs for the driving contract.
#[derive(Clone, Debug)]
pub struct Studio {
    cfg: StudioConfig,
    now: Mono,
    out: VecDeque<StudioCommand>,
    wait_pending: bool,
    next_sweep: Option<Mono>,

    // registration
    requests: BTreeMap<String, RegRequest>,
    request_order: BTreeMap<u64, String>,
    pending_by_install: BTreeMap<String, String>,
    install_workers: BTreeMap<String, String>,
    next_request: u64,
    next_worker: u64,
    token_counter: u64,

    // sessions
    workers: BTreeMap<String, WorkerRec>,
    conns: BTreeMap<ConnId, ConnRec>,
    session_index: BTreeSet<(Mono, ConnId)>,
    orphans: BTreeSet<(Mono, String)>,
    idle: IdlePool,
    next_connect_seq: u64,
    next_conn_seq: u64,
    /// Counts assignments of worker capabilities (see [`HeartbeatMemo`]).
    caps_gen: u64,

    // jobs
    jobs: BTreeMap<u64, JobRecord>,
    job_index: BTreeMap<String, u64>,
    queue: JobQueue,
    offer_deadlines: BTreeSet<(Mono, u64)>,
    finished: BTreeMap<u64, u64>,
    next_job: u64,
    next_finish: u64,
    dirty_workers: BTreeSet<(u64, String)>,
    dirty_jobs: BTreeSet<u64>,
}

fn ct_eq(a: &str, b: &str) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.bytes()
        .zip(b.bytes())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn eligible(w: &WorkerRec) -> bool {
    w.session.is_some()
        && w.slot.is_none()
        && !w.hold
        && w.busy_hint.is_none()
        && w.capabilities.as_ref().is_some_and(|c| {
            c.auto_enabled
                && (c.only_when_idle != Some(true) || c.user_presence == Some(UserPresence::Idle))
        })
}

fn compatible(caps: &WorkerCapabilities, spec: &JobSpec) -> bool {
    caps.serves_kind(spec.task.kind()) && caps.vram_threshold_gb >= spec.vram_gb_estimate
}

/// Legacy workers reject without a code; classify their fixed reasons (§2.1, §3.9).
fn transient_reason(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    ["paused", "only when idle", "in-flight job", "busy"]
        .iter()
        .any(|k| r.contains(k))
}

fn truncate_at_boundary(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while cut > 0 && !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

impl Studio {
    /// A studio with `config`; tokens are minted from `config.token_seed`.
    pub fn new(config: StudioConfig) -> Studio {
        let mut cfg = config;
        if cfg.sweep_interval < MIN_SWEEP_INTERVAL {
            cfg.sweep_interval = MIN_SWEEP_INTERVAL;
        }
        Studio {
            cfg,
            now: Mono::ZERO,
            out: VecDeque::new(),
            wait_pending: false,
            next_sweep: None,
            requests: BTreeMap::new(),
            request_order: BTreeMap::new(),
            pending_by_install: BTreeMap::new(),
            install_workers: BTreeMap::new(),
            next_request: 0,
            next_worker: 0,
            token_counter: 0,
            workers: BTreeMap::new(),
            conns: BTreeMap::new(),
            session_index: BTreeSet::new(),
            orphans: BTreeSet::new(),
            idle: IdlePool::default(),
            next_connect_seq: 0,
            next_conn_seq: 0,
            caps_gen: 0,
            jobs: BTreeMap::new(),
            job_index: BTreeMap::new(),
            queue: JobQueue::default(),
            offer_deadlines: BTreeSet::new(),
            finished: BTreeMap::new(),
            next_job: 0,
            next_finish: 0,
            dirty_workers: BTreeSet::new(),
            dirty_jobs: BTreeSet::new(),
        }
    }

    /// A studio whose token generator starts from `seed` (overrides `config.token_seed`).
    pub fn new_with_seed(config: StudioConfig, seed: u64) -> Studio {
        let mut s = Studio::new(config);
        s.cfg.token_seed = seed;
        s
    }

    /// Re-seeds the token generator (the counter keeps running).
    pub fn set_token_seed(&mut self, seed: u64) {
        self.cfg.token_seed = seed;
    }

    /// The configuration in use.
    pub fn config(&self) -> &StudioConfig {
        &self.cfg
    }

    /// The latest time seen.
    pub fn now(&self) -> Mono {
        self.now
    }

    // --------------------------------------------------------------------------------------
    // Driving
    // --------------------------------------------------------------------------------------

    /// Feeds one input.
    pub fn handle(&mut self, now: Mono, input: StudioInput) {
        self.advance(now);
        match input {
            StudioInput::Connected { conn, worker_id } => self.on_connected(conn, worker_id),
            StudioInput::Frame { conn, text } => self.on_frame(conn, &text),
            StudioInput::Disconnected { conn } => self.on_disconnected(conn),
            StudioInput::Tick => self.on_tick(),
        }
        self.finish();
    }

    /// The next command; after the queue empties, one `Wait`, then `None` until the next
    /// call that changes state.
    pub fn poll(&mut self) -> Option<StudioCommand> {
        if let Some(cmd) = self.out.pop_front() {
            return Some(cmd);
        }
        if self.wait_pending {
            self.wait_pending = false;
            return Some(StudioCommand::Wait {
                until: self.next_deadline(),
            });
        }
        None
    }

    /// The earliest timer (next sweep or offer timeout), never before the latest `now`.
    pub fn next_deadline(&self) -> Option<Mono> {
        let offer = self.offer_deadlines.first().map(|(d, _)| *d);
        let at = match (self.next_sweep, offer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        at.map(|d| d.max(self.now))
    }

    fn advance(&mut self, now: Mono) {
        if now > self.now {
            self.now = now;
        }
    }

    fn finish(&mut self) {
        self.dispatch();
        if !self.conns.is_empty() || !self.orphans.is_empty() {
            if self.next_sweep.is_none() {
                self.next_sweep = Some(self.now + self.cfg.sweep_interval);
            }
        } else {
            self.next_sweep = None;
        }
        self.wait_pending = true;
    }

    fn send(&mut self, conn: ConnId, frame: &StudioFrame) {
        let text = match frame {
            // One per heartbeat; the codec's own text for it, without the serialiser.
            StudioFrame::HeartbeatAck => wire::HEARTBEAT_ACK_TEXT.to_string(),
            _ => wire::encode(frame),
        };
        self.out.push_back(StudioCommand::Send { conn, text });
    }

    fn event(&mut self, e: StudioEvent) {
        self.out.push_back(StudioCommand::Event(e));
    }

    fn max_attempts(&self) -> u32 {
        self.cfg.max_attempts.max(1)
    }

    // --------------------------------------------------------------------------------------
    // Registration (§4.1)
    // --------------------------------------------------------------------------------------

    /// `POST /workers/register-request`.
    pub fn register_request(
        &mut self,
        now: Mono,
        req: AutoRegisterRequest,
    ) -> Result<RegisterRequestResponse, HttpError> {
        self.advance(now);
        let result = self.register_request_inner(req);
        self.finish();
        result
    }

    fn register_request_inner(
        &mut self,
        req: AutoRegisterRequest,
    ) -> Result<RegisterRequestResponse, HttpError> {
        if req.install_id.is_empty() || req.install_id.len() > MAX_INSTALL_ID_BYTES {
            return Err(HttpError::bad_request(format!(
                "installId must be 1..={MAX_INSTALL_ID_BYTES} bytes"
            )));
        }
        if !is_hex64(&req.registration_secret_hash) {
            return Err(HttpError::bad_request(
                "registrationSecretHash must be 64 hex characters",
            ));
        }
        let hash = req.registration_secret_hash.to_ascii_lowercase();
        let pending = |id: String| RegisterRequestResponse {
            request_id: id,
            status: "pending".into(),
        };
        if let Some(id) = self.pending_by_install.get(&req.install_id).cloned() {
            if let Some(r) = self.requests.get_mut(&id) {
                r.secret_hash = hash;
                r.capabilities = req.capabilities;
                r.user_agent = req.user_agent;
                self.event(StudioEvent::RegistrationRequested {
                    request_id: id.clone(),
                    install_id: req.install_id,
                    deduplicated: true,
                });
                return Ok(pending(id));
            }
        }
        if self.requests.len() >= self.cfg.max_registration_requests && !self.evict_one_request() {
            return Err(HttpError::new(
                429,
                "too many pending registration requests",
            ));
        }
        self.next_request += 1;
        let seq = self.next_request;
        let id = format!("rr-{seq}");
        self.requests.insert(
            id.clone(),
            RegRequest {
                install_id: req.install_id.clone(),
                secret_hash: hash,
                capabilities: req.capabilities,
                user_agent: req.user_agent,
                requested_at: self.now,
                state: RegState::Pending,
            },
        );
        self.request_order.insert(seq, id.clone());
        self.pending_by_install
            .insert(req.install_id.clone(), id.clone());
        self.event(StudioEvent::RegistrationRequested {
            request_id: id.clone(),
            install_id: req.install_id,
            deduplicated: false,
        });
        if self.cfg.auto_approve {
            // Cannot fail: the request was just inserted as pending.
            let _ = self.approve_inner(&id);
        }
        Ok(pending(id))
    }

    /// Forgets the oldest decided request; false when every request is pending.
    fn evict_one_request(&mut self) -> bool {
        let victim = self.request_order.iter().find_map(|(seq, id)| {
            let r = self.requests.get(id)?;
            (r.state != RegState::Pending).then(|| (*seq, id.clone()))
        });
        match victim {
            Some((seq, id)) => {
                self.request_order.remove(&seq);
                self.requests.remove(&id);
                true
            }
            None => false,
        }
    }

    /// `GET /workers/register-requests/:id` with `Authorization: Bearer <raw secret>`.
    pub fn register_status(
        &mut self,
        now: Mono,
        request_id: &str,
        bearer: &str,
    ) -> Result<RegisterStatus, HttpError> {
        self.advance(now);
        let result = self.register_status_inner(request_id, bearer);
        self.finish();
        result
    }

    fn register_status_inner(
        &mut self,
        request_id: &str,
        bearer: &str,
    ) -> Result<RegisterStatus, HttpError> {
        let req = self
            .requests
            .get(request_id)
            .ok_or_else(|| HttpError::not_found("unknown registration request"))?;
        if !ct_eq(&req.secret_hash, &sha256_hex(bearer.as_bytes())) {
            return Err(HttpError::unauthorized(
                "registration secret does not match",
            ));
        }
        match req.state.clone() {
            RegState::Pending => Ok(RegisterStatus::Pending),
            RegState::Rejected { reason } => Ok(RegisterStatus::Rejected { reason }),
            RegState::Approved { worker_id } => {
                if !self.workers.contains_key(&worker_id) {
                    return Err(HttpError::not_found("the approved worker was deleted"));
                }
                let token = self.mint_token();
                if let Some(w) = self.workers.get_mut(&worker_id) {
                    w.token_hash = Some(sha256_hex(token.as_bytes()));
                }
                self.event(StudioEvent::TokenIssued {
                    worker_id: worker_id.clone(),
                });
                Ok(RegisterStatus::Approved {
                    worker_id,
                    auth_token: Secret::new(token),
                })
            }
        }
    }

    fn mint_token(&mut self) -> String {
        self.token_counter += 1;
        sha256_hex(
            format!(
                "{TOKEN_DOMAIN}|{}|{}",
                self.cfg.token_seed, self.token_counter
            )
            .as_bytes(),
        )
    }

    /// Operator approval. 404 unknown, 409 already rejected, idempotent when approved.
    pub fn approve(&mut self, request_id: &str) -> Result<(), HttpError> {
        let result = self.approve_inner(request_id);
        self.finish();
        result
    }

    fn approve_inner(&mut self, request_id: &str) -> Result<(), HttpError> {
        let req = self
            .requests
            .get(request_id)
            .ok_or_else(|| HttpError::not_found("unknown registration request"))?;
        match &req.state {
            RegState::Approved { .. } => return Ok(()),
            RegState::Rejected { .. } => {
                return Err(HttpError::conflict("request was already rejected"))
            }
            RegState::Pending => {}
        }
        let install_id = req.install_id.clone();
        let caps = req.capabilities.clone();
        let worker_id = match self.install_workers.get(&install_id) {
            Some(w) if self.workers.contains_key(w) => w.clone(),
            _ => {
                let id = loop {
                    self.next_worker += 1;
                    let id = format!("w-{}", self.next_worker);
                    if !self.workers.contains_key(&id) {
                        break id;
                    }
                };
                self.caps_gen += 1;
                self.workers.insert(
                    id.clone(),
                    WorkerRec {
                        capabilities: Some(caps),
                        caps_gen: self.caps_gen,
                        ..WorkerRec::default()
                    },
                );
                id
            }
        };
        if let Some(r) = self.requests.get_mut(request_id) {
            r.state = RegState::Approved {
                worker_id: worker_id.clone(),
            };
        }
        self.pending_by_install.remove(&install_id);
        self.install_workers.insert(install_id, worker_id.clone());
        self.event(StudioEvent::RegistrationApproved {
            request_id: request_id.to_string(),
            worker_id,
        });
        Ok(())
    }

    /// Operator rejection. 404 unknown, 409 already approved, idempotent when rejected.
    pub fn reject(&mut self, request_id: &str, reason: &str) -> Result<(), HttpError> {
        let result = self.reject_inner(request_id, reason);
        self.finish();
        result
    }

    fn reject_inner(&mut self, request_id: &str, reason: &str) -> Result<(), HttpError> {
        let req = self
            .requests
            .get_mut(request_id)
            .ok_or_else(|| HttpError::not_found("unknown registration request"))?;
        match &req.state {
            RegState::Rejected { .. } => return Ok(()),
            RegState::Approved { .. } => {
                return Err(HttpError::conflict("request was already approved"))
            }
            RegState::Pending => {}
        }
        req.state = RegState::Rejected {
            reason: reason.to_string(),
        };
        let install = req.install_id.clone();
        self.pending_by_install.remove(&install);
        self.event(StudioEvent::RegistrationRejected {
            request_id: request_id.to_string(),
            reason: reason.to_string(),
        });
        Ok(())
    }

    /// Requests awaiting the operator, oldest first.
    pub fn pending_requests(&self) -> Vec<PendingRequest> {
        self.request_order
            .values()
            .filter_map(|id| {
                let r = self.requests.get(id)?;
                (r.state == RegState::Pending).then(|| PendingRequest {
                    request_id: id.clone(),
                    install_id: r.install_id.clone(),
                    user_agent: r.user_agent.clone(),
                    capabilities: r.capabilities.clone(),
                    requested_at: r.requested_at,
                })
            })
            .collect()
    }

    // --------------------------------------------------------------------------------------
    // Worker administration
    // --------------------------------------------------------------------------------------

    /// Pre-provisions `worker_id` with `auth_token` (only its SHA-256 is kept). An existing
    /// worker is re-keyed; a live session is not cut.
    pub fn add_worker(&mut self, worker_id: &str, auth_token: &str) {
        let hash = sha256_hex(auth_token.as_bytes());
        self.workers
            .entry(worker_id.to_string())
            .or_default()
            .token_hash = Some(hash);
        self.finish();
    }

    /// Deletes a worker: its sockets get `error worker_deleted` + close 4004 and its job is
    /// requeued (attempt refunded). Unknown ids are ignored.
    pub fn remove_worker(&mut self, worker_id: &str) {
        if !self.workers.contains_key(worker_id) {
            return;
        }
        let conns: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| *c.worker_id == *worker_id)
            .map(|(id, _)| *id)
            .collect();
        for conn in conns {
            self.close_with_error(conn, WorkerErrorCode::WorkerDeleted, "worker deleted");
        }
        if let Some(seq) = self.workers.get(worker_id).and_then(|w| w.slot) {
            match self.jobs.get(&seq).map(|j| j.state.name()) {
                Some("running") => self.release_run(seq, RequeueReason::WorkerRemoved, true),
                Some("offered") => self.release_offer(seq, RequeueReason::WorkerRemoved, false),
                _ => {}
            }
        }
        self.idle_remove(worker_id);
        self.orphan_remove(worker_id);
        self.workers.remove(worker_id);
        self.install_workers.retain(|_, w| w != worker_id);
        self.event(StudioEvent::WorkerRemoved {
            worker_id: worker_id.to_string(),
        });
        self.finish();
    }

    /// Checks the bearer of a WebSocket upgrade (§5): 401 for an unknown worker, one without
    /// a token, or a wrong token.
    pub fn authorize_upgrade(&self, worker_id: &str, bearer: &str) -> Result<(), HttpError> {
        self.check_token(worker_id, bearer)
    }

    fn check_token(&self, worker_id: &str, token: &str) -> Result<(), HttpError> {
        let ok = self
            .workers
            .get(worker_id)
            .and_then(|w| w.token_hash.as_deref())
            .is_some_and(|h| ct_eq(h, &sha256_hex(token.as_bytes())));
        if ok {
            Ok(())
        } else {
            Err(HttpError::unauthorized("invalid worker credentials"))
        }
    }

    /// Snapshots of every worker, by id.
    pub fn workers(&self) -> Vec<WorkerView> {
        self.workers
            .iter()
            .map(|(id, w)| self.view(id, w))
            .collect()
    }

    /// Snapshot of one worker.
    pub fn worker(&self, worker_id: &str) -> Option<WorkerView> {
        self.workers.get(worker_id).map(|w| self.view(worker_id, w))
    }

    /// Snapshot of one worker without its capabilities (`capabilities` is always `None`):
    /// the cheap form for checks that look at its session and slot on every step.
    pub fn worker_status(&self, worker_id: &str) -> Option<WorkerView> {
        self.workers
            .get(worker_id)
            .map(|w| self.view_with(worker_id, w, false))
    }

    fn view(&self, id: &str, w: &WorkerRec) -> WorkerView {
        self.view_with(id, w, true)
    }

    fn view_with(&self, id: &str, w: &WorkerRec, capabilities: bool) -> WorkerView {
        WorkerView {
            id: id.to_string(),
            connected: w.session.is_some(),
            conn: w.session,
            connected_since: w.connected_at,
            capabilities: if capabilities {
                w.capabilities.clone()
            } else {
                None
            },
            current_job: w.slot.and_then(|s| self.jobs.get(&s)).map(|j| j.id.clone()),
            last_heartbeat: w.last_seen,
            has_token: w.token_hash.is_some(),
            idle: w.in_idle,
        }
    }

    /// The stored log ring of a worker, oldest first.
    pub fn worker_logs(&self, worker_id: &str) -> Vec<LogEntry> {
        self.workers
            .get(worker_id)
            .map(|w| w.logs.iter().cloned().collect())
            .unwrap_or_default()
    }

    // --------------------------------------------------------------------------------------
    // Jobs
    // --------------------------------------------------------------------------------------

    /// Queues a job and offers it if a worker can take it. 400 for an empty model or a
    /// negative/non-finite VRAM estimate, 413 when the offer would exceed the frame limit,
    /// 429 when `max_queued_jobs` unfinished jobs exist.
    pub fn submit(&mut self, now: Mono, job: JobSpec) -> Result<String, HttpError> {
        self.advance(now);
        let result = self.submit_inner(job);
        self.finish();
        result
    }

    fn submit_inner(&mut self, spec: JobSpec) -> Result<String, HttpError> {
        if spec.model.is_empty() {
            return Err(HttpError::bad_request("model is required"));
        }
        if !spec.vram_gb_estimate.is_finite() || spec.vram_gb_estimate < 0.0 {
            return Err(HttpError::bad_request(
                "vramGbEstimate must be a finite number >= 0",
            ));
        }
        let unfinished = self.jobs.len().saturating_sub(self.finished.len());
        if unfinished >= self.cfg.max_queued_jobs {
            return Err(HttpError::new(429, "job queue is full"));
        }
        let seq = self.next_job + 1;
        let id = format!("job-{seq}");
        let offer_len = wire::encode(&StudioFrame::Offer {
            claim: Box::new(claim_for(&id, &spec)),
        })
        .len();
        if offer_len > self.cfg.max_frame_bytes {
            return Err(HttpError::new(
                413,
                format!(
                    "the offer would be {offer_len} bytes, over the {}-byte frame limit",
                    self.cfg.max_frame_bytes
                ),
            ));
        }
        self.next_job = seq;
        self.jobs.insert(
            seq,
            JobRecord {
                id: id.clone(),
                spec,
                state: JobState::Queued,
                attempts: 0,
                completions: 0,
                submitted_at: self.now,
                updated_at: self.now,
                last_error: None,
                seq,
                offered_to: BTreeSet::new(),
                last_worker: None,
                offer_deadline: None,
                finish_seq: None,
            },
        );
        self.job_index.insert(id.clone(), seq);
        let fit = self.jobs.get(&seq).map(|j| job_fit(&j.spec));
        if let Some(fit) = fit {
            self.queue.insert(seq, fit);
        }
        self.dirty_jobs.insert(seq);
        self.event(StudioEvent::JobSubmitted { job_id: id.clone() });
        Ok(id)
    }

    /// A job by id.
    pub fn job(&self, id: &str) -> Option<&JobRecord> {
        self.job_index.get(id).and_then(|s| self.jobs.get(s))
    }

    /// Every known job, in submission order.
    pub fn jobs(&self) -> impl Iterator<Item = &JobRecord> {
        self.jobs.values()
    }

    /// Counts by state.
    pub fn stats(&self) -> StudioStats {
        let mut s = StudioStats {
            connections: self.conns.len(),
            connected_workers: self
                .workers
                .values()
                .filter(|w| w.session.is_some())
                .count(),
            ..StudioStats::default()
        };
        for j in self.jobs.values() {
            match j.state {
                JobState::Queued => s.queued += 1,
                JobState::Offered { .. } => s.offered += 1,
                JobState::Running { .. } => s.running += 1,
                JobState::Done { .. } => s.done += 1,
                JobState::Failed { .. } => s.failed += 1,
            }
        }
        s
    }

    /// `POST /workers/:workerId/jobs/:jobId/complete` (multipart; the driver keeps the
    /// bytes). 401 bad worker/token; 409 when the job is unknown, not held by this worker,
    /// or already finished; otherwise the job is done and the freed worker is offered the
    /// next job.
    #[allow(clippy::too_many_arguments)]
    pub fn complete_upload(
        &mut self,
        now: Mono,
        worker_id: &str,
        bearer: &str,
        job_id: &str,
        prompt: &str,
        ext: &str,
        bytes_len: u64,
    ) -> Result<(), HttpError> {
        self.advance(now);
        let result = self.complete_upload_inner(worker_id, bearer, job_id, prompt, ext, bytes_len);
        self.finish();
        result
    }

    fn complete_upload_inner(
        &mut self,
        worker_id: &str,
        bearer: &str,
        job_id: &str,
        prompt: &str,
        ext: &str,
        bytes_len: u64,
    ) -> Result<(), HttpError> {
        self.check_token(worker_id, bearer)?;
        let Some(&seq) = self.job_index.get(job_id) else {
            return Err(HttpError::conflict("unknown job"));
        };
        let result = JobResult::Binary {
            ext: ext.to_string(),
            prompt: prompt.to_string(),
            bytes_len,
        };
        match self.classify(seq, worker_id) {
            // An upload carries the finished bytes: taken even if the job was re-offered to
            // the same worker meanwhile.
            Claim::Held | Claim::Offered => {
                self.complete(seq, worker_id, result, false);
                Ok(())
            }
            Claim::Late => {
                self.complete(seq, worker_id, result, true);
                Ok(())
            }
            Claim::Stale => {
                self.stale(worker_id, seq, "upload");
                Err(HttpError::conflict("job is not claimed by this worker"))
            }
            Claim::Foreign => Err(HttpError::conflict("job is not claimed by this worker")),
        }
    }

    // --------------------------------------------------------------------------------------
    // Sessions
    // --------------------------------------------------------------------------------------

    fn on_connected(&mut self, conn: ConnId, worker_id: String) {
        if self.conns.contains_key(&conn) {
            self.event(StudioEvent::Ignored {
                conn: Some(conn),
                what: "Connected for a connection id already in use".into(),
            });
            return;
        }
        let now = self.now;
        self.next_conn_seq += 1;
        self.conns.insert(
            conn,
            ConnRec {
                worker_id: Arc::from(worker_id.as_str()),
                phase: Phase::AwaitingHello,
                last_frame: now,
                opened: self.next_conn_seq,
                last_heartbeat: None,
            },
        );
        self.session_index.insert((now, conn));
        self.event(StudioEvent::ConnOpened { conn, worker_id });
    }

    fn on_disconnected(&mut self, conn: ConnId) {
        let Some(worker_id) = self.conns.get(&conn).map(|c| c.worker_id.clone()) else {
            return; // already closed by us, or never known
        };
        self.event(StudioEvent::ConnLost {
            conn,
            worker_id: worker_id.to_string(),
        });
        self.drop_conn(conn);
    }

    /// Forgets a connection; detaches the worker's session if it was this one.
    fn drop_conn(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        self.session_index.remove(&(c.last_frame, conn));
        let is_session = self
            .workers
            .get(&*c.worker_id)
            .is_some_and(|w| w.session == Some(conn));
        if is_session {
            self.detach(&c.worker_id);
        }
    }

    fn detach(&mut self, worker_id: &str) {
        self.idle_remove(worker_id);
        let Some(w) = self.workers.get_mut(worker_id) else {
            return;
        };
        w.session = None;
        w.connected_at = None;
        let slot = w.slot;
        let last_seen = w.last_seen.unwrap_or(self.now);
        if let Some(seq) = slot {
            match self.jobs.get(&seq).map(|j| j.state.name()) {
                Some("offered") => self.release_offer(seq, RequeueReason::OfferLost, false),
                Some("running") => {
                    if let Some(w) = self.workers.get_mut(worker_id) {
                        w.orphan_since = Some(last_seen);
                    }
                    self.orphans.insert((last_seen, worker_id.to_string()));
                }
                _ => {}
            }
        }
    }

    fn close_with_error(&mut self, conn: ConnId, code: WorkerErrorCode, message: &str) {
        self.send(
            conn,
            &StudioFrame::Error {
                code,
                message: message.to_string(),
            },
        );
        let reason = match code {
            WorkerErrorCode::AuthFailed => "auth failed",
            WorkerErrorCode::ProtocolViolation => "protocol violation",
            WorkerErrorCode::DuplicateWorker => "duplicate worker",
            WorkerErrorCode::WorkerDeleted => "worker deleted",
            WorkerErrorCode::InternalError => "internal error",
        };
        self.out.push_back(StudioCommand::Close {
            conn,
            code: code.close_code(),
            reason: reason.into(),
        });
        self.drop_conn(conn);
    }

    fn violation(&mut self, conn: ConnId, worker_id: &str, message: &str) {
        self.event(StudioEvent::ProtocolViolation {
            conn,
            worker_id: worker_id.to_string(),
            message: message.to_string(),
        });
        self.close_with_error(conn, WorkerErrorCode::ProtocolViolation, message);
    }

    fn on_frame(&mut self, conn: ConnId, text: &str) {
        let Some(c) = self.conns.get(&conn) else {
            self.event(StudioEvent::Ignored {
                conn: Some(conn),
                what: "frame for an unknown or closed connection".into(),
            });
            return;
        };
        let worker_id = c.worker_id.clone();
        let phase = c.phase;
        if let Some(current) = self.repeated_heartbeat(c, text) {
            // Exactly the previous heartbeat on this connection, whose capabilities are
            // still the record's: what decoding would give, without decoding.
            // (`on_heartbeat` records `last_seen`.)
            self.touch(conn);
            self.on_heartbeat(conn, &worker_id, None, current);
            return;
        }
        let frame = match wire::decode_worker_frame(text, self.cfg.max_frame_bytes) {
            Ok(f) => f,
            Err(e) => {
                self.violation(conn, &worker_id, &e.to_string());
                return;
            }
        };
        self.touch(conn);
        if phase == Phase::AwaitingHello {
            match frame {
                WorkerFrame::Hello {
                    auth_token,
                    capabilities,
                } => self.on_hello(conn, &worker_id, auth_token.expose(), capabilities),
                _ => self.violation(conn, &worker_id, "session not authenticated"),
            }
            return;
        }
        if let Some(w) = self.workers.get_mut(&*worker_id) {
            w.last_seen = Some(self.now);
        }
        match frame {
            WorkerFrame::Hello { .. } => self.violation(conn, &worker_id, "duplicate hello"),
            WorkerFrame::Heartbeat {
                capabilities,
                current_job_id,
            } => {
                let memo_current = current_job_id.clone();
                self.on_heartbeat(conn, &worker_id, Some(capabilities), current_job_id);
                self.remember_heartbeat(conn, &worker_id, text, memo_current);
            }
            WorkerFrame::Accept { job_id } => self.on_accept(conn, &worker_id, &job_id),
            WorkerFrame::Reject {
                job_id,
                reason,
                code,
            } => self.on_reject(conn, &worker_id, &job_id, reason, code),
            WorkerFrame::CompleteJson {
                job_id,
                result,
                prompt,
            } => self.on_complete_json(conn, &worker_id, &job_id, result, prompt),
            WorkerFrame::Fail {
                job_id,
                error,
                retryable,
            } => self.on_fail(conn, &worker_id, &job_id, error, retryable),
            WorkerFrame::LogBatch { entries } => self.on_logs(&worker_id, entries),
            WorkerFrame::ReadyForMore => self.event(StudioEvent::ReadyForMore {
                worker_id: worker_id.to_string(),
            }),
        }
    }

    /// The current job id of a heartbeat `text` that repeats the last one handled on `c`
    /// while the worker record still holds the capabilities it carried (see
    /// [`HeartbeatMemo`]); `None` when it must be decoded.
    fn repeated_heartbeat(&self, c: &ConnRec, text: &str) -> Option<Option<String>> {
        let m = c.last_heartbeat.as_ref()?;
        if c.phase != Phase::Welcomed || text.len() > self.cfg.max_frame_bytes || m.text != text {
            return None;
        }
        let w = self.workers.get(&*c.worker_id)?;
        if w.caps_gen != m.caps_gen {
            return None;
        }
        debug_assert_eq!(
            wire::decode_worker_frame(text, self.cfg.max_frame_bytes).ok(),
            w.capabilities
                .clone()
                .map(|capabilities| WorkerFrame::Heartbeat {
                    capabilities,
                    current_job_id: m.current_job_id.clone(),
                }),
            "a repeated heartbeat decodes to the remembered one"
        );
        Some(m.current_job_id.clone())
    }

    /// Remembers a heartbeat just handled on `conn` (see [`HeartbeatMemo`]).
    fn remember_heartbeat(
        &mut self,
        conn: ConnId,
        worker_id: &str,
        text: &str,
        current_job_id: Option<String>,
    ) {
        let Some(caps_gen) = self
            .workers
            .get(worker_id)
            .filter(|w| w.capabilities.is_some())
            .map(|w| w.caps_gen)
        else {
            return;
        };
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        match &mut c.last_heartbeat {
            Some(m) => {
                m.text.clear();
                m.text.push_str(text);
                m.current_job_id = current_job_id;
                m.caps_gen = caps_gen;
            }
            None => {
                c.last_heartbeat = Some(HeartbeatMemo {
                    text: text.to_string(),
                    current_job_id,
                    caps_gen,
                })
            }
        }
    }

    fn touch(&mut self, conn: ConnId) {
        let now = self.now;
        if let Some(c) = self.conns.get_mut(&conn) {
            self.session_index.remove(&(c.last_frame, conn));
            c.last_frame = now;
            self.session_index.insert((now, conn));
        }
    }

    fn on_hello(
        &mut self,
        conn: ConnId,
        worker_id: &str,
        token: &str,
        capabilities: WorkerCapabilities,
    ) {
        if self.check_token(worker_id, token).is_err() {
            self.event(StudioEvent::AuthFailed {
                conn,
                worker_id: worker_id.to_string(),
            });
            self.close_with_error(conn, WorkerErrorCode::AuthFailed, "invalid auth token");
            return;
        }
        if let Some(old) = self.workers.get(worker_id).and_then(|w| w.session) {
            let opened = |c: ConnId| self.conns.get(&c).map_or(0, |r| r.opened);
            if old != conn && opened(old) > opened(conn) {
                // A late hello on a connection opened before the live session (a stalled
                // link delivering it only now): the newer connection wins, the stale one is
                // closed and the live session is left alone.
                self.event(StudioEvent::DuplicateSession {
                    worker_id: worker_id.to_string(),
                    old_conn: conn,
                    new_conn: old,
                });
                self.close_with_error(
                    conn,
                    WorkerErrorCode::DuplicateWorker,
                    "a newer session is connected for this worker",
                );
                return;
            }
            if old != conn {
                self.event(StudioEvent::DuplicateSession {
                    worker_id: worker_id.to_string(),
                    old_conn: old,
                    new_conn: conn,
                });
                self.close_with_error(
                    old,
                    WorkerErrorCode::DuplicateWorker,
                    "another session connected for this worker",
                );
            }
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.phase = Phase::Welcomed;
        }
        self.idle_remove(worker_id);
        self.orphan_remove(worker_id);
        self.next_connect_seq += 1;
        self.caps_gen += 1;
        let now = self.now;
        if let Some(w) = self.workers.get_mut(worker_id) {
            w.session = Some(conn);
            w.connect_seq = self.next_connect_seq;
            w.connected_at = Some(now);
            w.capabilities = Some(capabilities);
            w.caps_gen = self.caps_gen;
            w.last_seen = Some(now);
            w.hold = false;
            w.busy_hint = None;
            w.idle_since = None;
        }
        let server_time = WallMs(
            self.cfg
                .wall_origin
                .0
                .saturating_add(now.as_micros() / 1000),
        )
        .to_rfc3339();
        self.send(
            conn,
            &StudioFrame::Welcome {
                worker_id: worker_id.to_string(),
                server_time,
            },
        );
        self.event(StudioEvent::Welcomed {
            conn,
            worker_id: worker_id.to_string(),
        });
        self.refresh(worker_id, true);
    }

    /// `capabilities` is `None` when the heartbeat carried exactly the record's.
    fn on_heartbeat(
        &mut self,
        conn: ConnId,
        worker_id: &str,
        capabilities: Option<WorkerCapabilities>,
        current: Option<String>,
    ) {
        self.send(conn, &StudioFrame::HeartbeatAck);
        let now = self.now;
        let grace = self.cfg.idle_claim_grace;
        let Some(w) = self.workers.get_mut(worker_id) else {
            return;
        };
        // Equal capabilities are kept as they are (same value, same generation).
        let caps_changed = match capabilities {
            Some(caps) if w.capabilities.as_ref() != Some(&caps) => {
                self.caps_gen += 1;
                w.capabilities = Some(caps);
                w.caps_gen = self.caps_gen;
                true
            }
            _ => false,
        };
        w.hold = false;
        w.last_seen = Some(now);
        let slot = w.slot;
        let held = slot.and_then(|s| self.jobs.get(&s).map(|j| (s, j)));
        let mut release = None;
        // The job the worker reports while the studio has none running on it.
        let mut reported = None;
        match held {
            Some((seq, job)) if matches!(job.state, JobState::Running { .. }) => {
                if current.as_deref() == Some(job.id.as_str()) {
                    w.idle_since = None;
                    w.busy_hint = None;
                } else {
                    w.busy_hint = current.clone();
                    match w.idle_since {
                        None => w.idle_since = Some(now),
                        Some(t) if now.saturating_since(t) >= grace => release = Some(seq),
                        Some(_) => {}
                    }
                }
            }
            Some((_, job)) => {
                // Offered, not accepted yet.
                w.busy_hint = current.filter(|c| *c != job.id);
            }
            None => {
                w.busy_hint = None;
                reported = current;
            }
        }
        // Whether the worker is still idle under unchanged capabilities. In the common case
        // (nothing below touches the worker) it is decided on the record in hand; otherwise
        // after the release or reclaim, on the record as they leave it.
        let untouched = release.is_none() && reported.is_none();
        let decided = untouched.then(|| !caps_changed && w.in_idle && eligible(w));
        if let Some(cur) = reported {
            let reclaim = self.job_index.get(&cur).copied().filter(|s| {
                self.jobs.get(s).is_some_and(|j| {
                    j.state == JobState::Queued && j.last_worker.as_deref() == Some(worker_id)
                })
            });
            match reclaim {
                Some(seq) => self.reclaim(seq, worker_id),
                None => {
                    if let Some(w) = self.workers.get_mut(worker_id) {
                        w.busy_hint = Some(cur);
                    }
                }
            }
        }
        if let Some(seq) = release {
            self.release_run(seq, RequeueReason::WorkerReportedIdle, false);
        }
        let still_idle = decided.unwrap_or_else(|| {
            !caps_changed
                && self
                    .workers
                    .get(worker_id)
                    .is_some_and(|w| w.in_idle && eligible(w))
        });
        if still_idle {
            // Still idle under unchanged capabilities: the machine's invariants (an idle
            // worker is indexed under the fits of its capabilities) make `refresh` a no-op.
            debug_assert!(self.idle_indexed(worker_id));
            return;
        }
        self.refresh(worker_id, caps_changed);
    }

    /// Whether an idle worker is indexed under the fits of its current capabilities.
    fn idle_indexed(&self, worker_id: &str) -> bool {
        let Some(w) = self.workers.get(worker_id) else {
            return false;
        };
        let key = (w.connect_seq, worker_id.to_string());
        let fits = w.capabilities.as_ref().map(worker_fits).unwrap_or_default();
        fits == w.idle_fits
            && self.idle.set.contains(&key)
            && fits
                .iter()
                .all(|f| self.idle.by_fit.get(f).is_some_and(|b| b.contains(&key)))
    }

    fn reclaim(&mut self, seq: u64, worker_id: &str) {
        let now = self.now;
        let Some(job) = self.jobs.get_mut(&seq) else {
            return;
        };
        self.queue.remove(seq, job_fit(&job.spec));
        job.state = JobState::Running {
            worker_id: worker_id.to_string(),
        };
        job.updated_at = now;
        let job_id = job.id.clone();
        if let Some(w) = self.workers.get_mut(worker_id) {
            w.slot = Some(seq);
            w.busy_hint = None;
            w.idle_since = None;
        }
        self.event(StudioEvent::JobReclaimed {
            job_id,
            worker_id: worker_id.to_string(),
        });
    }

    fn classify(&self, seq: u64, worker_id: &str) -> Claim {
        let Some(job) = self.jobs.get(&seq) else {
            return Claim::Foreign;
        };
        match &job.state {
            JobState::Running { worker_id: w } if w == worker_id => Claim::Held,
            JobState::Offered { worker_id: w } if w == worker_id => Claim::Offered,
            JobState::Queued if job.last_worker.as_deref() == Some(worker_id) => Claim::Late,
            _ if job.offered_to.contains(worker_id) => Claim::Stale,
            _ => Claim::Foreign,
        }
    }

    fn stale(&mut self, worker_id: &str, seq: u64, frame: &'static str) {
        let Some(job) = self.jobs.get(&seq) else {
            return;
        };
        let (job_id, state) = (job.id.clone(), job.state.name());
        self.clear_busy_hint(worker_id, &job_id);
        self.event(StudioEvent::StaleFrame {
            worker_id: worker_id.to_string(),
            job_id,
            frame,
            state,
        });
    }

    fn clear_busy_hint(&mut self, worker_id: &str, job_id: &str) {
        if let Some(w) = self.workers.get_mut(worker_id) {
            if w.busy_hint.as_deref() == Some(job_id) {
                w.busy_hint = None;
            }
        }
        self.refresh(worker_id, false);
    }

    fn on_accept(&mut self, conn: ConnId, worker_id: &str, job_id: &str) {
        let Some(&seq) = self.job_index.get(job_id) else {
            self.violation(conn, worker_id, "accept for unknown jobId");
            return;
        };
        let state = self.jobs.get(&seq).map(|j| j.state.clone());
        match state {
            Some(JobState::Offered { worker_id: w }) if w == worker_id => {
                let now = self.now;
                if let Some(job) = self.jobs.get_mut(&seq) {
                    if let Some(d) = job.offer_deadline.take() {
                        self.offer_deadlines.remove(&(d, seq));
                    }
                    job.attempts = job.attempts.saturating_add(1);
                    job.state = JobState::Running {
                        worker_id: worker_id.to_string(),
                    };
                    job.updated_at = now;
                    let attempt = job.attempts;
                    self.event(StudioEvent::JobAccepted {
                        job_id: job_id.to_string(),
                        worker_id: worker_id.to_string(),
                        attempt,
                    });
                }
            }
            Some(JobState::Running { worker_id: w }) if w == worker_id => {
                self.stale(worker_id, seq, "accept");
            }
            _ => {
                if self
                    .jobs
                    .get(&seq)
                    .is_some_and(|j| j.offered_to.contains(worker_id))
                {
                    // The worker will run it: keep offers away until it reports idle.
                    if let Some(w) = self.workers.get_mut(worker_id) {
                        if w.slot.is_none() {
                            w.busy_hint = Some(job_id.to_string());
                        }
                    }
                    self.refresh(worker_id, false);
                    self.event_stale(worker_id, seq, "accept");
                } else {
                    self.violation(
                        conn,
                        worker_id,
                        "accept for a job not offered to this worker",
                    );
                }
            }
        }
    }

    /// Like `stale` but without clearing the busy hint.
    fn event_stale(&mut self, worker_id: &str, seq: u64, frame: &'static str) {
        if let Some(job) = self.jobs.get(&seq) {
            let e = StudioEvent::StaleFrame {
                worker_id: worker_id.to_string(),
                job_id: job.id.clone(),
                frame,
                state: job.state.name(),
            };
            self.event(e);
        }
    }

    fn on_reject(
        &mut self,
        conn: ConnId,
        worker_id: &str,
        job_id: &str,
        reason: String,
        code: Option<RejectCode>,
    ) {
        let Some(&seq) = self.job_index.get(job_id) else {
            self.violation(conn, worker_id, "reject for unknown jobId");
            return;
        };
        let state = self.jobs.get(&seq).map(|j| j.state.clone());
        match state {
            Some(JobState::Offered { worker_id: w }) if w == worker_id => {
                let transient = code.is_some() || transient_reason(&reason);
                self.event(StudioEvent::JobRejected {
                    job_id: job_id.to_string(),
                    worker_id: worker_id.to_string(),
                    code,
                    reason: reason.clone(),
                    transient,
                });
                if transient {
                    self.release_offer(seq, RequeueReason::TransientReject, true);
                } else {
                    if let Some(job) = self.jobs.get_mut(&seq) {
                        job.attempts = job.attempts.saturating_add(1);
                        job.last_error = Some(format!("rejected by {worker_id}: {reason}"));
                    }
                    self.release_offer(seq, RequeueReason::Rejected, true);
                }
            }
            Some(JobState::Running { worker_id: w }) if w == worker_id => {
                self.violation(conn, worker_id, "reject for an accepted job");
            }
            _ => {
                if self
                    .jobs
                    .get(&seq)
                    .is_some_and(|j| j.offered_to.contains(worker_id))
                {
                    self.event_stale(worker_id, seq, "reject");
                } else {
                    self.violation(
                        conn,
                        worker_id,
                        "reject for a job not offered to this worker",
                    );
                }
            }
        }
    }

    fn on_complete_json(
        &mut self,
        conn: ConnId,
        worker_id: &str,
        job_id: &str,
        result: Value,
        prompt: Option<String>,
    ) {
        let Some(&seq) = self.job_index.get(job_id) else {
            self.violation(conn, worker_id, "completeJson for unknown jobId");
            return;
        };
        let result = JobResult::Json { result, prompt };
        match self.classify(seq, worker_id) {
            Claim::Held | Claim::Late => {
                let late = matches!(self.classify(seq, worker_id), Claim::Late);
                self.complete(seq, worker_id, result, late);
                self.send(
                    conn,
                    &StudioFrame::CompleteAck {
                        job_id: job_id.to_string(),
                    },
                );
            }
            Claim::Offered | Claim::Stale => {
                // Already settled (or re-offered): acknowledged so the worker stops
                // re-sending it; the job's state is not touched.
                self.stale(worker_id, seq, "completeJson");
                self.send(
                    conn,
                    &StudioFrame::CompleteAck {
                        job_id: job_id.to_string(),
                    },
                );
            }
            Claim::Foreign => self.violation(
                conn,
                worker_id,
                "completeJson for a job not offered to this worker",
            ),
        }
    }

    fn on_fail(
        &mut self,
        conn: ConnId,
        worker_id: &str,
        job_id: &str,
        error: String,
        retryable: bool,
    ) {
        let Some(&seq) = self.job_index.get(job_id) else {
            self.violation(conn, worker_id, "fail for unknown jobId");
            return;
        };
        match self.classify(seq, worker_id) {
            Claim::Held => {
                self.send(
                    conn,
                    &StudioFrame::FailAck {
                        job_id: job_id.to_string(),
                    },
                );
                let now = self.now;
                if let Some(job) = self.jobs.get_mut(&seq) {
                    job.last_error = Some(error.clone());
                    job.updated_at = now;
                }
                self.free_slot(worker_id, job_id);
                if retryable {
                    self.requeue_or_fail(seq, RequeueReason::RetryableFailure);
                } else {
                    self.fail_job(seq, error);
                }
            }
            Claim::Offered | Claim::Late | Claim::Stale => {
                // A re-sent failure of an earlier attempt: acknowledged so the worker stops
                // re-sending it; the job's state is not touched.
                self.stale(worker_id, seq, "fail");
                self.send(
                    conn,
                    &StudioFrame::FailAck {
                        job_id: job_id.to_string(),
                    },
                );
            }
            Claim::Foreign => {
                self.violation(conn, worker_id, "fail for a job not offered to this worker")
            }
        }
    }

    fn on_logs(&mut self, worker_id: &str, entries: Vec<LogEntry>) {
        let cap = self.cfg.log_ring_capacity;
        let max_msg = self.cfg.max_log_message_bytes;
        let Some(w) = self.workers.get_mut(worker_id) else {
            return;
        };
        let received = entries.len();
        let mut dropped = 0;
        for mut e in entries {
            truncate_at_boundary(&mut e.message, max_msg);
            w.logs.push_back(e);
            while w.logs.len() > cap {
                w.logs.pop_front();
                dropped += 1;
            }
        }
        self.event(StudioEvent::LogsReceived {
            worker_id: worker_id.to_string(),
            received,
            dropped,
        });
    }

    // --------------------------------------------------------------------------------------
    // Timers
    // --------------------------------------------------------------------------------------

    fn on_tick(&mut self) {
        let now = self.now;
        while let Some(&(deadline, seq)) = self.offer_deadlines.first() {
            if deadline > now {
                break;
            }
            self.offer_deadlines.pop_first();
            if let Some(j) = self.jobs.get_mut(&seq) {
                j.offer_deadline = None;
            }
            self.release_offer(seq, RequeueReason::OfferTimedOut, true);
        }
        if self.next_sweep.is_some_and(|s| s <= now) {
            self.next_sweep = None;
            self.sweep();
        }
    }

    fn sweep(&mut self) {
        let now = self.now;
        let timeout = self.cfg.session_timeout;
        let mut expired = 0;
        let mut released = 0;
        while let Some(&(last, conn)) = self.session_index.first() {
            if now.saturating_since(last) < timeout {
                break;
            }
            let worker_id = self
                .conns
                .get(&conn)
                .map(|c| c.worker_id.clone())
                .unwrap_or_default();
            self.event(StudioEvent::SessionExpired {
                conn,
                worker_id: worker_id.to_string(),
            });
            self.out.push_back(StudioCommand::Close {
                conn,
                code: wire::close_code::NORMAL,
                reason: "session timed out".into(),
            });
            // Guarantees progress even if the index and the map ever disagreed.
            self.session_index.remove(&(last, conn));
            self.drop_conn(conn);
            expired += 1;
        }
        while let Some((since, worker_id)) = self.orphans.first().cloned() {
            if now.saturating_since(since) < timeout {
                break;
            }
            self.orphans.remove(&(since, worker_id.clone()));
            let slot = self.workers.get_mut(&worker_id).and_then(|w| {
                w.orphan_since = None;
                w.slot
            });
            if let Some(seq) = slot {
                self.release_run(seq, RequeueReason::ClaimExpired, false);
                released += 1;
            }
        }
        if expired + released > 0 {
            self.event(StudioEvent::Swept {
                expired_sessions: expired,
                released_claims: released,
            });
        }
    }

    // --------------------------------------------------------------------------------------
    // Job transitions
    // --------------------------------------------------------------------------------------

    /// Offered job back to the queue (no attempt spent unless the caller counted one).
    /// `hold`: the worker waits for its next heartbeat before it gets another offer.
    fn release_offer(&mut self, seq: u64, reason: RequeueReason, hold: bool) {
        let Some(job) = self.jobs.get_mut(&seq) else {
            return;
        };
        let JobState::Offered { worker_id } = job.state.clone() else {
            return;
        };
        if let Some(d) = job.offer_deadline.take() {
            self.offer_deadlines.remove(&(d, seq));
        }
        if let Some(w) = self.workers.get_mut(&worker_id) {
            if w.slot == Some(seq) {
                w.slot = None;
            }
            if hold {
                w.hold = true;
            }
        }
        self.refresh(&worker_id, false);
        self.requeue_or_fail(seq, reason);
    }

    /// Running job taken away from its worker (lost claim, idle report, removal). The
    /// accept already spent an attempt unless `refund`.
    fn release_run(&mut self, seq: u64, reason: RequeueReason, refund: bool) {
        let Some(job) = self.jobs.get_mut(&seq) else {
            return;
        };
        let JobState::Running { worker_id } = job.state.clone() else {
            return;
        };
        if refund {
            job.attempts = job.attempts.saturating_sub(1);
        } else {
            job.last_error = Some(format!("{reason} on {worker_id}"));
        }
        if let Some(w) = self.workers.get_mut(&worker_id) {
            if w.slot == Some(seq) {
                w.slot = None;
            }
            w.idle_since = None;
        }
        self.orphan_remove(&worker_id);
        self.refresh(&worker_id, false);
        self.requeue_or_fail(seq, reason);
    }

    /// Back to the queue while attempts remain, else failed.
    fn requeue_or_fail(&mut self, seq: u64, reason: RequeueReason) {
        let max = self.max_attempts();
        let now = self.now;
        let Some(job) = self.jobs.get_mut(&seq) else {
            return;
        };
        if job.state.is_finished() {
            return;
        }
        if job.attempts >= max {
            let error = format!(
                "gave up after {} attempts: {}",
                job.attempts,
                job.last_error.as_deref().unwrap_or(reason.as_str())
            );
            self.fail_job(seq, error);
            return;
        }
        job.state = JobState::Queued;
        job.updated_at = now;
        let (job_id, attempts) = (job.id.clone(), job.attempts);
        self.queue.insert(seq, job_fit(&job.spec));
        self.dirty_jobs.insert(seq);
        self.event(StudioEvent::JobRequeued {
            job_id,
            reason,
            attempts,
        });
    }

    fn fail_job(&mut self, seq: u64, error: String) {
        let now = self.now;
        let Some(job) = self.jobs.get_mut(&seq) else {
            return;
        };
        if job.state.is_finished() {
            return;
        }
        if let Some(d) = job.offer_deadline.take() {
            self.offer_deadlines.remove(&(d, seq));
        }
        self.queue.remove(seq, job_fit(&job.spec));
        job.state = JobState::Failed {
            error: error.clone(),
        };
        job.updated_at = now;
        let job_id = job.id.clone();
        self.mark_finished(seq);
        self.event(StudioEvent::JobFailed { job_id, error });
        self.evict_finished();
    }

    fn complete(&mut self, seq: u64, worker_id: &str, result: JobResult, late: bool) {
        let now = self.now;
        let Some(job) = self.jobs.get_mut(&seq) else {
            return;
        };
        if job.completions > 0 || job.state.is_finished() {
            return; // at most once, ever
        }
        if let Some(d) = job.offer_deadline.take() {
            self.offer_deadlines.remove(&(d, seq));
            job.attempts = job.attempts.saturating_add(1);
        }
        let held_here = job.state.holder() == Some(worker_id);
        self.queue.remove(seq, job_fit(&job.spec));
        job.state = JobState::Done {
            worker_id: worker_id.to_string(),
            result,
        };
        job.completions += 1;
        job.updated_at = now;
        let job_id = job.id.clone();
        self.mark_finished(seq);
        if held_here {
            self.free_slot(worker_id, &job_id);
        } else {
            self.clear_busy_hint(worker_id, &job_id);
        }
        self.event(StudioEvent::JobCompleted {
            job_id,
            worker_id: worker_id.to_string(),
            late,
        });
        self.evict_finished();
    }

    fn free_slot(&mut self, worker_id: &str, job_id: &str) {
        self.orphan_remove(worker_id);
        if let Some(w) = self.workers.get_mut(worker_id) {
            w.slot = None;
            w.idle_since = None;
            if w.busy_hint.as_deref() == Some(job_id) {
                w.busy_hint = None;
            }
        }
        self.refresh(worker_id, false);
    }

    fn mark_finished(&mut self, seq: u64) {
        self.next_finish += 1;
        let f = self.next_finish;
        if let Some(job) = self.jobs.get_mut(&seq) {
            job.finish_seq = Some(f);
        }
        self.finished.insert(f, seq);
    }

    fn evict_finished(&mut self) {
        while self.finished.len() > self.cfg.max_finished_jobs {
            let Some((_, seq)) = self.finished.pop_first() else {
                break;
            };
            if let Some(job) = self.jobs.remove(&seq) {
                self.job_index.remove(&job.id);
            }
        }
    }

    // --------------------------------------------------------------------------------------
    // Offering
    // --------------------------------------------------------------------------------------

    fn idle_remove(&mut self, worker_id: &str) {
        if let Some(w) = self.workers.get_mut(worker_id) {
            if w.in_idle {
                w.in_idle = false;
                let fits = std::mem::take(&mut w.idle_fits);
                self.idle
                    .remove(&(w.connect_seq, worker_id.to_string()), &fits);
            }
        }
    }

    fn orphan_remove(&mut self, worker_id: &str) {
        if let Some(w) = self.workers.get_mut(worker_id) {
            if let Some(t) = w.orphan_since.take() {
                self.orphans.remove(&(t, worker_id.to_string()));
            }
        }
    }

    /// Recomputes whether the worker is idle-eligible (and re-indexes it under its current
    /// capabilities); a worker that becomes eligible, or whose capabilities changed
    /// (`force`), is looked at by the next dispatch.
    fn refresh(&mut self, worker_id: &str, force: bool) {
        let Some(w) = self.workers.get(worker_id) else {
            return;
        };
        let key = (w.connect_seq, worker_id.to_string());
        let was_idle = w.in_idle;
        // Still idle (every heartbeat of an idle worker): when it stays indexed under the
        // same fits, removing and re-inserting would leave the index as it is.
        if was_idle && eligible(w) && self.idle_indexed(worker_id) {
            if force {
                self.dirty_workers.insert(key);
            }
            return;
        }
        let Some(w) = self.workers.get_mut(worker_id) else {
            return;
        };
        if was_idle {
            let old = std::mem::take(&mut w.idle_fits);
            self.idle.remove(&key, &old);
            w.in_idle = false;
        }
        if eligible(w) {
            let fits = w.capabilities.as_ref().map(worker_fits).unwrap_or_default();
            self.idle.insert(key.clone(), &fits);
            w.idle_fits = fits;
            w.in_idle = true;
            if !was_idle || force {
                self.dirty_workers.insert(key);
            }
        }
    }

    /// Offers work to the workers and jobs that changed since the last dispatch. A freed
    /// worker takes the oldest queued job it can serve; a newly queued job goes to the
    /// earliest-connected idle worker that can serve it. Workers go first so that a freed
    /// worker never skips an older job for a newer one.
    fn dispatch(&mut self) {
        let workers = std::mem::take(&mut self.dirty_workers);
        for key in workers {
            let Some(w) = self.workers.get(&key.1) else {
                continue;
            };
            if !w.in_idle || w.connect_seq != key.0 {
                continue;
            }
            if let Some(seq) = self.queue.first_fit(&w.idle_fits) {
                self.offer(seq, &key.1);
            }
        }
        let jobs = std::mem::take(&mut self.dirty_jobs);
        for seq in jobs {
            if !self.queue.contains(seq) {
                continue;
            }
            let Some(job) = self.jobs.get(&seq) else {
                continue;
            };
            if let Some((_, id)) = self.idle.first_fit(job_fit(&job.spec)).cloned() {
                self.offer(seq, &id);
            }
        }
    }

    fn offer(&mut self, seq: u64, worker_id: &str) {
        let now = self.now;
        let deadline = now + self.cfg.offer_timeout;
        let Some(conn) = self.workers.get(worker_id).and_then(|w| w.session) else {
            return;
        };
        let Some(job) = self.jobs.get_mut(&seq) else {
            return;
        };
        if job.state != JobState::Queued {
            return;
        }
        self.queue.remove(seq, job_fit(&job.spec));
        job.state = JobState::Offered {
            worker_id: worker_id.to_string(),
        };
        job.offered_to.insert(worker_id.to_string());
        job.last_worker = Some(worker_id.to_string());
        job.offer_deadline = Some(deadline);
        job.updated_at = now;
        self.offer_deadlines.insert((deadline, seq));
        let frame = StudioFrame::Offer {
            claim: Box::new(claim_for(&job.id, &job.spec)),
        };
        let job_id = job.id.clone();
        if let Some(w) = self.workers.get_mut(worker_id) {
            w.slot = Some(seq);
        }
        self.refresh(worker_id, false);
        self.send(conn, &frame);
        self.event(StudioEvent::JobOffered {
            job_id,
            worker_id: worker_id.to_string(),
        });
    }

    // --------------------------------------------------------------------------------------
    // Invariants
    // --------------------------------------------------------------------------------------

    /// Checks the machine's internal consistency, for tests and the simulation: every
    /// index agrees with the records, each job is held by at most one worker and that
    /// worker's slot points back at it, `completions <= 1` (and `== 1` exactly when done),
    /// offered jobs have a deadline, disconnected running claims are watched, and no idle
    /// worker could serve a queued job. Cost is linear in the state plus
    /// (idle workers x queued jobs).
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut queued = 0;
        let mut offered = 0;
        let mut finished = 0;
        for (seq, job) in &self.jobs {
            let id = &job.id;
            if job.seq != *seq || self.job_index.get(id) != Some(seq) {
                return Err(format!("job {id}: index out of sync"));
            }
            if job.completions > 1 {
                return Err(format!("job {id}: completed {} times", job.completions));
            }
            let done = matches!(job.state, JobState::Done { .. });
            if done != (job.completions == 1) {
                return Err(format!(
                    "job {id}: state {} with {} completions",
                    job.state.name(),
                    job.completions
                ));
            }
            if (job.state == JobState::Queued) != self.queue.contains(*seq) {
                return Err(format!("job {id}: queue membership disagrees with state"));
            }
            if job.state == JobState::Queued {
                queued += 1;
                let in_bucket = self
                    .queue
                    .by_fit
                    .get(&job_fit(&job.spec))
                    .is_some_and(|b| b.contains(seq));
                if !in_bucket {
                    return Err(format!("job {id}: queued but not in its fit bucket"));
                }
            }
            match (&job.state, job.offer_deadline) {
                (JobState::Offered { .. }, Some(d))
                    if self.offer_deadlines.contains(&(d, *seq)) =>
                {
                    offered += 1;
                }
                (JobState::Offered { .. }, _) => {
                    return Err(format!("job {id}: offered without a deadline"))
                }
                (_, Some(_)) => {
                    return Err(format!("job {id}: deadline while {}", job.state.name()))
                }
                _ => {}
            }
            if let Some(holder) = job.state.holder() {
                let slot = self.workers.get(holder).and_then(|w| w.slot);
                if slot != Some(*seq) {
                    return Err(format!(
                        "job {id}: {} on {holder} but that worker's slot is {slot:?}",
                        job.state.name()
                    ));
                }
                if !job.offered_to.contains(holder) {
                    return Err(format!("job {id}: held by {holder} without an offer"));
                }
            }
            if job.state.is_finished() {
                finished += 1;
                match job.finish_seq {
                    Some(f) if self.finished.get(&f) == Some(seq) => {}
                    _ => return Err(format!("job {id}: finished but not indexed")),
                }
            }
        }
        let bucketed: usize = self.queue.by_fit.values().map(BTreeSet::len).sum();
        if queued != self.queue.fifo.len()
            || queued != bucketed
            || offered != self.offer_deadlines.len()
        {
            return Err("queue or offer-deadline index has stray entries".into());
        }
        if finished != self.finished.len() || self.job_index.len() != self.jobs.len() {
            return Err("finished or id index has stray entries".into());
        }
        if finished > self.cfg.max_finished_jobs {
            return Err(format!("{finished} finished jobs kept, over the limit"));
        }

        let mut slots = BTreeSet::new();
        let mut idle = 0;
        let mut idle_fits = 0;
        let mut orphans = 0;
        for (id, w) in &self.workers {
            if let Some(seq) = w.slot {
                if !slots.insert(seq) {
                    return Err(format!("job seq {seq} held by two workers"));
                }
                let ok = self
                    .jobs
                    .get(&seq)
                    .is_some_and(|j| j.state.holder() == Some(id.as_str()));
                if !ok {
                    return Err(format!("worker {id}: slot {seq} not held by it"));
                }
            }
            if let Some(c) = w.session {
                match self.conns.get(&c) {
                    Some(rec) if *rec.worker_id == **id && rec.phase == Phase::Welcomed => {}
                    _ => return Err(format!("worker {id}: session {c} is not its welcomed conn")),
                }
            }
            if w.in_idle != eligible(w)
                || w.in_idle != self.idle.set.contains(&(w.connect_seq, id.clone()))
            {
                return Err(format!("worker {id}: idle index disagrees"));
            }
            if w.in_idle {
                idle += 1;
                let fits = w.capabilities.as_ref().map(worker_fits).unwrap_or_default();
                if fits != w.idle_fits {
                    return Err(format!("worker {id}: indexed under stale capabilities"));
                }
                let key = (w.connect_seq, id.clone());
                for f in &w.idle_fits {
                    if !self.idle.by_fit.get(f).is_some_and(|b| b.contains(&key)) {
                        return Err(format!("worker {id}: missing from its fit bucket"));
                    }
                }
                idle_fits += w.idle_fits.len();
            } else if !w.idle_fits.is_empty() {
                return Err(format!("worker {id}: fits kept while not idle"));
            }
            let running = w
                .slot
                .and_then(|s| self.jobs.get(&s))
                .is_some_and(|j| matches!(j.state, JobState::Running { .. }));
            let should_orphan = w.session.is_none() && running;
            match w.orphan_since {
                Some(t) if should_orphan && self.orphans.contains(&(t, id.clone())) => orphans += 1,
                None if !should_orphan => {}
                _ => return Err(format!("worker {id}: orphan index disagrees")),
            }
            if w.session.is_none() && w.slot.is_some() && !running {
                return Err(format!("worker {id}: disconnected with an open offer"));
            }
            if w.logs.len() > self.cfg.log_ring_capacity {
                return Err(format!("worker {id}: log ring over capacity"));
            }
        }
        let bucketed: usize = self.idle.by_fit.values().map(BTreeSet::len).sum();
        if idle != self.idle.set.len() || idle_fits != bucketed || orphans != self.orphans.len() {
            return Err("idle or orphan index has stray entries".into());
        }
        if self.session_index.len() != self.conns.len() {
            return Err("session index has stray entries".into());
        }
        for (c, rec) in &self.conns {
            if !self.session_index.contains(&(rec.last_frame, *c)) {
                return Err(format!("conn {c}: not in the session index"));
            }
            if rec.phase == Phase::Welcomed
                && self.workers.get(&*rec.worker_id).and_then(|w| w.session) != Some(*c)
            {
                return Err(format!("conn {c}: welcomed but not its worker's session"));
            }
        }
        if (!self.conns.is_empty() || !self.orphans.is_empty()) && self.next_sweep.is_none() {
            return Err("sessions to watch but no sweep armed".into());
        }
        for (_, wid) in &self.idle.set {
            let Some(caps) = self.workers.get(wid).and_then(|w| w.capabilities.as_ref()) else {
                continue;
            };
            for seq in &self.queue.fifo {
                if self
                    .jobs
                    .get(seq)
                    .is_some_and(|j| compatible(caps, &j.spec))
                {
                    return Err(format!(
                        "idle worker {wid} could serve queued job seq {seq}"
                    ));
                }
            }
        }
        Ok(())
    }
}

fn claim_for(job_id: &str, spec: &JobSpec) -> JobOfferClaim {
    JobOfferClaim {
        job_id: job_id.to_string(),
        game_id: spec.game_id.clone(),
        asset_name: spec.asset_name.clone(),
        model: spec.model.clone(),
        vram_gb_estimate: spec.vram_gb_estimate,
        task: spec.task.clone(),
        model_source: spec.model_source.clone(),
    }
}
