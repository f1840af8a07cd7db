//! The studio machine's vocabulary: configuration and its limits, inputs, commands,
//! events, and the views of jobs, workers and registration requests it hands out.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use serde_json::Value;

use crate::time::{Mono, TimeWentBackwards};
use crate::wire::{self, ModelSource, RejectCode, Task, WorkerCapabilities};

/// Identifies one accepted socket; assigned by the driver, unique per socket. A type of its
/// own, apart from the worker's `worker::ConnId`: each side numbers its sockets itself.
/// `Debug` and `Display` show the bare number, as the id was written before it had a type
/// (the simulation's recorded report hashes cover that text).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// The driver called the machine wrongly; nothing changed. The studio machine's only
/// misuse is a time earlier than the previous call's (see [`crate::time::Now::after`]).
pub type UsageError = TimeWentBackwards;

/// An HTTP call made with a time earlier than the machine's last: a 500 (the driver's
/// fault), and nothing changed.
impl From<UsageError> for HttpError {
    fn from(e: UsageError) -> HttpError {
        HttpError::new(500, e.to_string())
    }
}

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

/// Configuration of a [`Studio`](super::Studio). Every limit has a named default.
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
        }
    }
}

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
    pub(super) fn bad_request(m: impl Into<String>) -> HttpError {
        HttpError::new(400, m)
    }
    pub(super) fn unauthorized(m: impl Into<String>) -> HttpError {
        HttpError::new(401, m)
    }
    pub(super) fn not_found(m: impl Into<String>) -> HttpError {
        HttpError::new(404, m)
    }
    pub(super) fn conflict(m: impl Into<String>) -> HttpError {
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

/// What the machine asks the driver to do, drained by [`Studio::poll`](super::Studio::poll).
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

/// One `POST /workers/:workerId/jobs/:jobId/complete` as [`Studio::complete_upload`](super::Studio::complete_upload)
/// takes it: the worker, the bearer of the request, the job, and the multipart's `prompt`,
/// `ext` and byte count (the bytes themselves stay with the driver).
#[derive(Clone, Copy)]
pub struct Upload<'a> {
    pub worker_id: &'a str,
    pub bearer: &'a str,
    pub job_id: &'a str,
    pub prompt: &'a str,
    pub ext: &'a str,
    pub bytes_len: u64,
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
    pub(super) seq: u64,
    pub(super) offered_to: BTreeSet<String>,
    pub(super) last_worker: Option<String>,
    pub(super) offer_deadline: Option<Mono>,
    pub(super) finish_seq: Option<u64>,
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
