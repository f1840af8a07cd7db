//! The vocabulary of the worker machine: configuration, inputs, commands, snapshots.
//! Every type is serde-serialisable so a session can be recorded and replayed exactly.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::secret::{redact_json, Secret};
pub use crate::time::Now;
use crate::time::{Mono, TimeWentBackwards, WallMs};
use crate::wire::{AutoRegisterRequest, JobOfferClaim, LogEntry, TaskKind, UserPresence};

/// Identifies one WebSocket connection attempt. Inputs naming an older connection are
/// ignored, so a late event from a dead socket can never disturb the current session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

/// Identifies one run of a job: every [`Command::Dispatch`] starts a new run and the
/// engine's [`Input::JobFinished`] names it, so the machine tells a result of an earlier run
/// (one it cancelled) from the result it waits for, and no shell has to. Runs are numbered
/// from 1 in dispatch order, so a run id follows from the dispatches before it; the trace
/// format leaves it out of the command hashes for that reason (and `RunId(0)`, never
/// issued, is what a trace recorded before run ids existed reads as).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct RunId(pub u64);

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "run#{}", self.0)
    }
}

/// Identifies one HTTP request; its response comes back as [`Input::Http`] with the same id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HttpId(pub u64);

/// Credentials the studio issued on approval.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub worker_id: String,
    pub auth_token: Secret,
}

/// Registration state carried over from the config file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationState {
    pub install_id: Option<String>,
    pub request_id: Option<String>,
    pub secret: Option<Secret>,
}

/// Facts about the host and the engine roster, probed once by the shell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostFacts {
    pub machine_name: String,
    pub username: String,
    pub agent_version: String,
    /// `multi` in production (the router).
    pub engine: String,
    pub vram_total_gb: f32,
    pub auto_start: bool,
}

/// Timings (PROTOCOL.md §6). Each has a name, a default and a test.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Heartbeat interval; the first heartbeat goes right after `welcome`. Default 5 s.
    pub heartbeat: Duration,
    /// Log flush interval. Default 1 s.
    pub log_flush: Duration,
    /// No frame for this long -> the connection is dead. Default 20 s.
    pub read_idle: Duration,
    /// TCP + TLS + upgrade must finish within this. Default 15 s.
    pub connect_timeout: Duration,
    /// Registration request / poll interval. Default 30 s.
    pub registration_poll: Duration,
    /// Reconnect backoff base (first delay). Default 1 s.
    pub backoff_base: Duration,
    /// Reconnect backoff cap. Default 30 s.
    pub backoff_cap: Duration,
    /// Pauses before each upload retry (5xx/transport only). Default [1 s, 2 s].
    pub upload_retries: Vec<Duration>,
    /// How long a graceful shutdown waits for the in-flight job. Default 30 s.
    pub shutdown_grace: Duration,
    /// Auto-update check interval. Default 1800 s.
    pub update_interval: Duration,
    /// How long an offer that arrived during our own upload waits for it: accepted if the
    /// upload finished by then, else rejected `busy` (PROTOCOL.md §10). Default 1 s.
    #[serde(default = "default_parked_offer")]
    pub parked_offer: Duration,
    /// How long a job may run on its engine, per kind, before the watchdog fails it
    /// `retryable: true` and abandons the engine thread. Defaults in [`JobDeadlines`].
    #[serde(default)]
    pub job_deadlines: JobDeadlines,
}

fn default_parked_offer() -> Duration {
    Duration::from_secs(1)
}

/// The per-kind job deadlines (config `[job_deadline_secs]`). A model download is part of
/// a job's run, so the defaults leave room for one: 30 min for every kind, 60 min for
/// video.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobDeadlines {
    pub image: Duration,
    pub llm: Duration,
    pub audio_stt: Duration,
    pub audio_tts: Duration,
    pub video: Duration,
}

impl Default for JobDeadlines {
    fn default() -> Self {
        JobDeadlines {
            image: Duration::from_secs(30 * 60),
            llm: Duration::from_secs(30 * 60),
            audio_stt: Duration::from_secs(30 * 60),
            audio_tts: Duration::from_secs(30 * 60),
            video: Duration::from_secs(60 * 60),
        }
    }
}

impl JobDeadlines {
    /// The deadline of a job of `kind`.
    pub fn for_kind(&self, kind: TaskKind) -> Duration {
        match kind {
            TaskKind::Image => self.image,
            TaskKind::Llm => self.llm,
            TaskKind::AudioStt => self.audio_stt,
            TaskKind::AudioTts => self.audio_tts,
            TaskKind::Video => self.video,
        }
    }

    /// The deadline of `kind`, mutably (the config sets them one by one).
    pub fn for_kind_mut(&mut self, kind: TaskKind) -> &mut Duration {
        match kind {
            TaskKind::Image => &mut self.image,
            TaskKind::Llm => &mut self.llm,
            TaskKind::AudioStt => &mut self.audio_stt,
            TaskKind::AudioTts => &mut self.audio_tts,
            TaskKind::Video => &mut self.video,
        }
    }
}

/// The shortest timer interval the machine accepts; shorter (or zero) intervals are raised
/// to it so no timer can re-arm at the instant it fired (no timer storms).
pub const MIN_INTERVAL: Duration = Duration::from_millis(1);

impl Timings {
    /// Raises every interval to at least [`MIN_INTERVAL`].
    pub fn sanitize(&mut self) {
        for d in [
            &mut self.heartbeat,
            &mut self.log_flush,
            &mut self.read_idle,
            &mut self.connect_timeout,
            &mut self.registration_poll,
            &mut self.backoff_base,
            &mut self.backoff_cap,
            &mut self.shutdown_grace,
            &mut self.update_interval,
            &mut self.parked_offer,
        ] {
            *d = (*d).max(MIN_INTERVAL);
        }
        for kind in TaskKind::ALL {
            let d = self.job_deadlines.for_kind_mut(kind);
            *d = (*d).max(MIN_INTERVAL);
        }
        for d in &mut self.upload_retries {
            *d = (*d).max(MIN_INTERVAL);
        }
    }
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            heartbeat: Duration::from_secs(5),
            log_flush: Duration::from_secs(1),
            read_idle: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(15),
            registration_poll: Duration::from_secs(30),
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(30),
            upload_retries: vec![Duration::from_secs(1), Duration::from_secs(2)],
            shutdown_grace: Duration::from_secs(30),
            update_interval: Duration::from_secs(1800),
            parked_offer: default_parked_offer(),
            job_deadlines: JobDeadlines::default(),
        }
    }
}

/// Size limits. Each has a name, a default and a test.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Log ship queue capacity; oldest entries are dropped past it with a marker. 5000.
    pub log_queue_cap: usize,
    /// Recent-jobs ring for status/UI. 50.
    pub recent_jobs: usize,
    /// Recent-logs ring for status/UI. 1000.
    pub recent_logs: usize,
    /// Largest accepted studio frame. [`crate::wire::MAX_FRAME_BYTES`].
    pub max_frame_bytes: usize,
    /// Largest frame the worker sends (the studio's own frame limit): a `completeJson`
    /// over it becomes a `fail`, any other frame over it is not sent.
    /// [`crate::wire::MAX_FRAME_BYTES`].
    #[serde(default = "default_max_frame_bytes")]
    pub max_send_frame_bytes: usize,
    /// Largest `logBatch` frame; a longer queue goes out in several batches, one per flush.
    /// 256 KiB (raised to at least [`MIN_LOG_BATCH_BYTES`]).
    #[serde(default = "default_log_batch_max_bytes")]
    pub log_batch_max_bytes: usize,
    /// A log entry's `message` is clipped to this many bytes (at a character boundary,
    /// ending in `…`); its other fields to [`LOG_FIELD_MAX_BYTES`]. 4096 (the studio keeps no
    /// more).
    #[serde(default = "default_log_message_max_bytes")]
    pub log_message_max_bytes: usize,
    /// The durable outbox holds at most this many results; past it the oldest is
    /// forgotten (from disk only) with a log line. 32.
    #[serde(default = "default_outbox_max_entries")]
    pub outbox_max_entries: usize,
    /// ... and at most this many bytes (frame text plus binary results): a result larger
    /// than this alone is kept in memory only. 256 MiB.
    #[serde(default = "default_outbox_max_bytes")]
    pub outbox_max_bytes: u64,
    /// Results older than this (wall clock, kept to restored) are dropped at start with a
    /// log line: the studio has long given such a job to another worker. 1 h.
    #[serde(default = "default_outbox_max_age")]
    pub outbox_max_age: Duration,
}

/// The smallest `log_batch_max_bytes` the machine accepts (every clipped entry fits).
pub const MIN_LOG_BATCH_BYTES: usize = 64 * 1024;
/// Log entry fields other than `message` (`ts`, `level`, `category`, `jobId`) are clipped
/// to this many bytes.
pub const LOG_FIELD_MAX_BYTES: usize = 256;
/// A `fail` frame's `error` is clipped to this many bytes.
pub const FAIL_ERROR_MAX_BYTES: usize = 4096;
/// Studio-supplied text quoted in a log line (`serverTime`, an error frame's message, an
/// offer's model, game and asset, a close reason, a decode error) is clipped to this many
/// characters.
pub const STUDIO_TEXT_CLIP: usize = 200;

fn default_max_frame_bytes() -> usize {
    crate::wire::MAX_FRAME_BYTES
}
fn default_log_batch_max_bytes() -> usize {
    256 * 1024
}
fn default_log_message_max_bytes() -> usize {
    4096
}
fn default_outbox_max_entries() -> usize {
    32
}
fn default_outbox_max_bytes() -> u64 {
    256 * 1024 * 1024
}
fn default_outbox_max_age() -> Duration {
    Duration::from_secs(3600)
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            log_queue_cap: 5000,
            recent_jobs: 50,
            recent_logs: 1000,
            max_frame_bytes: crate::wire::MAX_FRAME_BYTES,
            max_send_frame_bytes: default_max_frame_bytes(),
            log_batch_max_bytes: default_log_batch_max_bytes(),
            log_message_max_bytes: default_log_message_max_bytes(),
            outbox_max_entries: default_outbox_max_entries(),
            outbox_max_bytes: default_outbox_max_bytes(),
            outbox_max_age: default_outbox_max_age(),
        }
    }
}

impl Limits {
    /// Raises `log_batch_max_bytes` to [`MIN_LOG_BATCH_BYTES`] and the message clip to at
    /// least a few bytes, so every clipped entry fits a batch.
    pub fn sanitize(&mut self) {
        self.log_batch_max_bytes = self.log_batch_max_bytes.max(MIN_LOG_BATCH_BYTES);
        self.log_message_max_bytes = self
            .log_message_max_bytes
            .clamp(16, MIN_LOG_BATCH_BYTES / 8);
    }
}

/// A result the worker holds until the studio acknowledges it, as the durable outbox keeps
/// it ([`Command::KeepResult`]; handed back at start with [`Input::Restore`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeptResult {
    pub job_id: String,
    /// The worker the result belongs to: a result kept under another worker id (the
    /// worker was registered again since) is dropped at restore.
    pub worker_id: String,
    /// The wall clock when it was kept (the age limit, `Limits::outbox_max_age`).
    pub kept_at: WallMs,
    pub body: KeptBody,
}

/// What a kept result is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum KeptBody {
    /// A `completeJson` or `fail` frame, as sent: re-sent after the next `welcome`.
    Frame { text: String },
    /// A binary result: the shell keeps its bytes beside the entry; re-uploaded at start.
    Upload {
        claim: Box<JobOfferClaim>,
        ext: String,
        bytes_len: u64,
    },
}

impl KeptResult {
    /// The bytes it takes in the outbox (frame text, or the binary result).
    pub fn size(&self) -> u64 {
        match &self.body {
            KeptBody::Frame { text } => text.len() as u64,
            KeptBody::Upload { bytes_len, .. } => *bytes_len,
        }
    }
}

/// Everything the machine needs to know, from the config file and the host probe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerConfig {
    pub api_base_url: String,
    pub credentials: Option<Credentials>,
    pub registration: RegistrationState,
    pub vram_threshold_gb: f32,
    /// Whether the operator lets the worker take jobs (config `auto_enabled`; changed at
    /// run time by [`Input::Enable`] / [`Input::Disable`]). While `false` offers are
    /// rejected `paused` and heartbeats say `autoEnabled: false`. Default `true` (also for
    /// traces recorded before the setting existed).
    #[serde(default = "enabled_by_default")]
    pub auto_enabled: bool,
    pub auto_update_enabled: bool,
    pub start_minimised: bool,
    pub only_when_idle: bool,
    /// Reconnect attempts before giving up; 0 = unlimited (the default).
    pub reconnect_attempts: u32,
    /// Seed of the reconnect jitter. The shell draws it from the OS RNG at start (and
    /// records it); tests and the simulation fix it.
    pub seed: u64,
    pub host: HostFacts,
    /// Advertised models per task kind (the engine roster).
    pub models: BTreeMap<TaskKind, Vec<String>>,
    pub timings: Timings,
    pub limits: Limits,
}

impl WorkerConfig {
    /// A config with defaults, the synthetic roster and no credentials, for tests and docs.
    pub fn for_tests(api_base_url: &str) -> WorkerConfig {
        let models = TaskKind::ALL
            .into_iter()
            .map(|k| {
                let suffix = match k {
                    TaskKind::Image => "image",
                    TaskKind::Llm => "llm",
                    TaskKind::AudioStt => "stt",
                    TaskKind::AudioTts => "tts",
                    TaskKind::Video => "video",
                };
                (
                    k,
                    vec!["synthetic".to_string(), format!("synthetic-{suffix}")],
                )
            })
            .collect();
        WorkerConfig {
            api_base_url: api_base_url.to_string(),
            credentials: None,
            registration: RegistrationState::default(),
            vram_threshold_gb: 12.0,
            auto_enabled: true,
            auto_update_enabled: false,
            start_minimised: true,
            only_when_idle: false,
            reconnect_attempts: 0,
            seed: 1,
            host: HostFacts {
                machine_name: "test-host".into(),
                username: "tester".into(),
                agent_version: "0.1.0".into(),
                engine: "multi".into(),
                vram_total_gb: 24.0,
                auto_start: false,
            },
            models,
            timings: Timings::default(),
            limits: Limits::default(),
        }
    }
}

fn enabled_by_default() -> bool {
    true
}

/// Why a connection attempt failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConnectError {
    /// HTTP 401 on the upgrade: terminal (auth failure).
    Unauthorized { body: String },
    /// Another non-101 status on the upgrade: reconnect with backoff.
    Status { status: u16, body: String },
    /// DNS, TCP, TLS or handshake error: reconnect with backoff.
    Transport(String),
}

/// The outcome of an HTTP request the machine asked for. `Debug` masks tokens in the body
/// (an approved registration status carries one).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HttpResult {
    /// The server answered (any status).
    Response { status: u16, body: String },
    /// No answer: DNS, connect, TLS, timeout, reset.
    Transport(String),
}

/// How a dispatched job ended, as the engine thread reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum JobOutcome {
    /// A JSON result (llm, audio_stt): sent as `completeJson`.
    Json { result: Value },
    /// A binary result (image, audio_tts, video) the shell keeps until the machine asks
    /// it to upload or discard it.
    Binary { ext: String, bytes_len: u64 },
    /// The engine failed; `retryable` comes from its typed error.
    Failed { error: String, retryable: bool },
}

/// Everything that can happen to the machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Input {
    /// Begin: register or connect.
    Start,
    /// A timer may have expired (harmless when none did).
    Tick,
    /// The WebSocket upgrade of `conn` succeeded.
    Connected { conn: ConnId },
    /// The connection attempt `conn` failed.
    ConnectFailed { conn: ConnId, error: ConnectError },
    /// A text frame arrived on `conn` (raw, decoded inside the core).
    Frame { conn: ConnId, text: String },
    /// A binary frame arrived on `conn` (a protocol error).
    BinaryFrame { conn: ConnId, len: usize },
    /// `conn` ended: the peer's close code when it sent a close frame, otherwise `None`
    /// (EOF, reset, write error).
    Disconnected {
        conn: ConnId,
        code: Option<u16>,
        reason: String,
    },
    /// The response to HTTP request `id`.
    Http { id: HttpId, result: HttpResult },
    /// Fresh CSPRNG values asked for by [`Command::MintSecret`].
    Minted {
        install_id: Option<String>,
        secret: Secret,
    },
    /// The engine finished run `run` of `job_id` (a run the machine cancelled since is
    /// dropped here, not by the shell).
    JobFinished {
        job_id: String,
        #[serde(default)]
        run: RunId,
        outcome: JobOutcome,
    },
    /// A log line from the shell or an engine, to ship.
    Log(LogEntry),
    /// Operator: stop accepting offers (runtime only).
    Pause,
    /// Operator: accept offers again.
    Resume,
    /// Operator: let the worker take jobs (`auto_enabled = true`; the shell persists it).
    Enable,
    /// Operator: stop taking jobs until enabled again (`auto_enabled = false`; the shell
    /// persists it, so unlike a pause it survives a restart).
    Disable,
    /// Operator: change the advertised VRAM threshold (advertised by the next heartbeat).
    /// A non-finite value is refused by `handle`, but still recorded: it is written as the
    /// string `"NaN"`, `"inf"` or `"-inf"` so the trace parses back (JSON has no such
    /// numbers).
    SetThreshold {
        #[serde(with = "lossless_f32")]
        gb: f32,
    },
    /// The OS presence probe changed (`None` = unknown).
    SetPresence(Option<UserPresence>),
    /// SIGINT / SIGTERM / quit: finish gracefully.
    Shutdown,
    /// Operator: check the update feed now (the local API's `POST /daemon/check-update`),
    /// whatever the interval; ignored while installing, stopping or before `Start`, and
    /// while a check is already out (its answer serves both).
    CheckUpdateNow,
    /// Answer to [`Command::CheckUpdate`]: `Ok(Some(version))` when newer exists.
    UpdateChecked {
        result: Result<Option<String>, String>,
    },
    /// Answer to [`Command::ApplyUpdate`].
    UpdateApplied { result: Result<(), String> },
    /// The durable outbox as the shell found it at start (entries it could not read are
    /// skipped there). Fed before `Start` only; the machine decides what to re-send,
    /// re-upload or forget.
    Restore { results: Vec<KeptResult> },
}

/// An HTTP request for the shell to make.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum HttpRequest {
    /// `POST` JSON `body` to `url` (no auth).
    RegisterRequest {
        url: String,
        body: AutoRegisterRequest,
    },
    /// `GET url` with `Authorization: Bearer <bearer>` (the raw registration secret).
    PollRegistration { url: String, bearer: Secret },
    /// `POST url` multipart (`prompt`, `ext`, `image` = the job's bytes as
    /// `<job_id>.<ext>`) with `Authorization: Bearer <auth_token>`.
    Upload {
        url: String,
        auth_token: Secret,
        job_id: String,
        prompt: String,
        ext: String,
    },
}

/// Process exit codes (documented in the README). 1 is left to generic errors and 2 to
/// command-line usage errors (clap's convention).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitCode {
    /// Stopped on request.
    Clean,
    /// The studio refused the credentials: re-register.
    AuthFailed,
    /// A fatal studio error, a bad config, or the reconnect cap was reached.
    Fatal,
    /// The operator rejected the registration request.
    Rejected,
    /// An update was installed: the shell re-executes the new binary.
    Restart,
}

impl ExitCode {
    /// The numeric process exit code.
    pub fn code(self) -> i32 {
        match self {
            ExitCode::Clean => 0,
            ExitCode::Fatal => 3,
            ExitCode::AuthFailed => 4,
            ExitCode::Rejected => 5,
            ExitCode::Restart => 0,
        }
    }

    /// Whether this exit reports a failure.
    pub fn is_error(self) -> bool {
        matches!(
            self,
            ExitCode::AuthFailed | ExitCode::Fatal | ExitCode::Rejected
        )
    }
}

/// The level of a log line the machine writes (shipped to the studio as a log entry's
/// `level` and reported to the shell in a [`Notice`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Info,
    Warn,
    Error,
}

impl LogLevel {
    /// The text of a log entry's `level`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// What a log line the machine writes is about (a log entry's `category`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogCategory {
    /// The session: registration, connection, frames, offers, delivery, shutdown.
    Ws,
    /// A job's run on the engine.
    Engine,
    /// The auto-updater.
    AutoUpdate,
    /// The log shipping itself (the queue-full marker).
    Logs,
}

impl LogCategory {
    /// The text of a log entry's `category`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogCategory::Ws => "ws",
            LogCategory::Engine => "engine",
            LogCategory::AutoUpdate => "auto-update",
            LogCategory::Logs => "logs",
        }
    }
}

/// A structured notice for the shell's log, metrics and UI. `Debug` shows the level and
/// category by their text, as a log line has them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    pub level: LogLevel,
    pub category: LogCategory,
    pub message: String,
    pub job_id: Option<String>,
}

impl fmt::Debug for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notice")
            .field("level", &self.level.as_str())
            .field("category", &self.category.as_str())
            .field("message", &self.message)
            .field("job_id", &self.job_id)
            .finish()
    }
}

/// What the shell must write to the config file (all registration fields, absent = clear).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedState {
    pub install_id: Option<String>,
    pub registration_request_id: Option<String>,
    pub registration_secret: Option<Secret>,
    pub worker_id: Option<String>,
    pub auth_token: Option<Secret>,
}

/// Everything the machine asks of its shell. `Debug` never shows a secret: token fields
/// are [`Secret`]s and frame text is passed through [`redact_json`].
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Open a WebSocket to `url` with `Authorization: Bearer <auth_token>` and the
    /// `studio-worker-v1` subprotocol; answer with `Connected` / `ConnectFailed`.
    Connect {
        conn: ConnId,
        url: String,
        auth_token: Secret,
    },
    /// Send a text frame on `conn` (drop it silently if `conn` is gone).
    Send { conn: ConnId, text: String },
    /// Close `conn` with a close frame (bounded by the close timeout), then forget it.
    /// No `Disconnected` is expected afterwards.
    Close {
        conn: ConnId,
        code: u16,
        reason: String,
    },
    /// Make an HTTP request; answer with [`Input::Http`]. (Boxed: the request is the largest
    /// payload, and every command is moved a few times on its way out.)
    Http {
        id: HttpId,
        request: Box<HttpRequest>,
    },
    /// Draw a fresh registration secret (and install id when asked) from the OS CSPRNG;
    /// answer with [`Input::Minted`].
    MintSecret { need_install_id: bool },
    /// Write the registration fields to the config file (atomically, 0600).
    Persist(PersistedState),
    /// Run the job on an engine thread as run `run`; answer with [`Input::JobFinished`]
    /// naming the run. (`run` is not serialised: it follows from the dispatches before it,
    /// and traces recorded before it existed keep their command hashes.)
    Dispatch {
        #[serde(skip)]
        run: RunId,
        /// Shared with the machine, which keeps the claim of the job it runs.
        claim: Arc<JobOfferClaim>,
    },
    /// Stop working on a job if possible (shutdown grace expired, or the process exits).
    /// The machine has already reported the job; a later result of the cancelled run may be
    /// fed as usual: the machine tells it by its run and drops it.
    CancelJob { job_id: String },
    /// The binary result of `job_id` is no longer needed in memory (uploaded, or given
    /// up).
    DiscardResult { job_id: String },
    /// Write `result` to the durable outbox, atomically, replacing any entry of its job
    /// (for an `Upload`, with the binary result the shell holds for the job).
    KeepResult(Box<KeptResult>),
    /// Remove the outbox entry of `job_id`, if any (acknowledged, superseded or dropped).
    ForgetResult { job_id: String },
    /// Query the update feed; answer with [`Input::UpdateChecked`].
    CheckUpdate,
    /// Download and install `version`; answer with [`Input::UpdateApplied`].
    ApplyUpdate { version: String },
    /// A notice for logs / metrics / UI.
    Report(Notice),
    /// Terminate the process with this code after the commands before it are done.
    Exit { code: ExitCode, reason: String },
    /// The last command of every drain: sleep until `until` (or IO). `None`: no timer.
    Wait { until: Option<Mono> },
}

/// The UI-visible session state (PROTOCOL.md §5.1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SessionState {
    WaitingForApproval,
    Connecting,
    Connected,
    Reconnecting { attempt: u32 },
    AuthFailed { reason: String },
    Fatal { reason: String },
    Stopped,
}

/// Where a recent job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Running,
    Completed,
    Failed,
}

/// The outcome of one update check, as the core recorded it (`StatusSnapshot`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpdateCheck {
    /// Checks finished so far (this one included): a reader waiting for a check it asked
    /// for compares it with the number it saw before asking.
    pub seq: u64,
    /// When the answer arrived (wall clock).
    pub at: WallMs,
    /// The running version.
    pub current: String,
    pub outcome: UpdateOutcome,
}

/// What one update check found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateOutcome {
    /// No newer release.
    UpToDate,
    /// A newer release (its version).
    Available(String),
    /// The feed could not be read or understood (why).
    Failed(String),
}

/// One entry of the recent-jobs ring.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobSummary {
    pub job_id: String,
    pub kind: TaskKind,
    pub model: String,
    /// Display only: never sent to the studio.
    pub prompt_preview: String,
    pub status: JobStatus,
    pub started: Mono,
    pub finished: Option<Mono>,
}

/// Counters, since the machine was built.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub inputs: u64,
    pub frames_in: u64,
    pub frames_out: u64,
    /// Welcomed sessions.
    pub sessions: u64,
    /// Reconnects scheduled (after a lost session or a failed attempt).
    pub reconnects: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub completed: u64,
    /// Jobs failed, undecodable offers included.
    pub failed: u64,
    /// Offers taken and failed at once because they could not be decoded (counted in
    /// `failed`; no kind, so not in `jobs`).
    #[serde(default)]
    pub undecodable_offers: u64,
    /// Upload attempts after the first (5xx and transport errors).
    pub upload_retries: u64,
    /// Finished jobs per kind: outcomes and durations (the shell's metrics read them).
    pub jobs: BTreeMap<TaskKind, JobStats>,
}

/// Upper bounds, in milliseconds, of the buckets of [`JobStats::duration_buckets`]: a job's
/// time from dispatch to its final outcome (delivered or failed). Longer jobs count only
/// in [`JobStats::count`].
pub const JOB_DURATION_BUCKETS_MS: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 120_000, 300_000, 600_000,
];

/// Outcomes and durations of the finished jobs of one kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStats {
    pub completed: u64,
    pub failed: u64,
    /// Jobs whose duration fell in each bucket of [`JOB_DURATION_BUCKETS_MS`] (the first
    /// bound at or above it; not cumulative).
    pub duration_buckets: [u64; JOB_DURATION_BUCKETS_MS.len()],
    /// The sum of all durations, in microseconds.
    pub duration_sum_us: u64,
}

impl JobStats {
    /// Jobs finished, either way.
    pub fn count(&self) -> u64 {
        self.completed + self.failed
    }

    /// Counts one finished job that took `duration`.
    pub fn observe(&mut self, status: JobStatus, duration: Duration) {
        match status {
            JobStatus::Completed => self.completed += 1,
            JobStatus::Failed => self.failed += 1,
            JobStatus::Running => return,
        }
        let us = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        self.duration_sum_us = self.duration_sum_us.saturating_add(us);
        let ms = us / 1_000 + u64::from(us % 1_000 != 0);
        if let Some(i) = JOB_DURATION_BUCKETS_MS.iter().position(|b| ms <= *b) {
            self.duration_buckets[i] += 1;
        }
    }
}

/// A read-only view of the machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusSnapshot {
    pub session: SessionState,
    /// A graceful shutdown is under way (the session may still be up to deliver a job).
    pub stopping: bool,
    /// The worker id, once approved.
    pub worker_id: Option<String>,
    /// The registration request the operator has to approve, while one is pending.
    pub registration_request_id: Option<String>,
    pub paused: bool,
    /// `auto_enabled`: the operator lets the worker take jobs.
    pub enabled: bool,
    pub vram_threshold_gb: f32,
    pub current_job_id: Option<String>,
    /// The job in the slot (running or being delivered), as the recent-jobs ring has it.
    pub current_job: Option<JobSummary>,
    pub updating: Option<String>,
    /// The last answer of the update feed, if any check has finished.
    pub last_update_check: Option<UpdateCheck>,
    pub log_queue_len: usize,
    pub log_dropped_total: u64,
    pub recent_jobs: Vec<JobSummary>,
    pub recent_logs: Vec<LogEntry>,
    /// The sequence number of the last entry of `recent_logs` (entries are numbered from 1
    /// in the order they were logged; see [`crate::worker::Worker::logs_after`]).
    pub log_seq: u64,
    pub last_heartbeat_ack: Option<Mono>,
    pub reconnect_attempt: u32,
    pub stats: Stats,
    pub exited: bool,
}

/// The driver called the machine wrongly. Nothing changed.
#[derive(Clone, Debug, PartialEq)]
pub enum UsageError {
    /// `now` is earlier than the previous call's.
    TimeWentBackwards { last: Mono, now: Mono },
    /// A job result for a run that is not in flight (never dispatched, or already
    /// reported) nor cancelled, or for the run in flight under another job id.
    UnknownJob(String),
    /// A negative or non-finite threshold.
    InvalidThreshold(f32),
    /// `Minted` with an empty secret.
    EmptySecret,
    /// `Restore` after `Start`.
    RestoreAfterStart,
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UsageError::TimeWentBackwards { last, now } => fmt::Display::fmt(
                &TimeWentBackwards {
                    last: *last,
                    now: *now,
                },
                f,
            ),
            UsageError::UnknownJob(id) => write!(f, "job {id} is not running"),
            UsageError::InvalidThreshold(gb) => {
                write!(f, "vram threshold must be a number >= 0, got {gb}")
            }
            UsageError::EmptySecret => write!(f, "minted secret is empty"),
            UsageError::RestoreAfterStart => {
                write!(f, "the outbox is restored before Start, not after")
            }
        }
    }
}

impl std::error::Error for UsageError {}

impl From<TimeWentBackwards> for UsageError {
    fn from(e: TimeWentBackwards) -> UsageError {
        UsageError::TimeWentBackwards {
            last: e.last,
            now: e.now,
        }
    }
}

impl fmt::Debug for HttpResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpResult::Response { status, body } => f
                .debug_struct("Response")
                .field("status", status)
                .field("body", &redact_json(body))
                .finish(),
            HttpResult::Transport(e) => f.debug_tuple("Transport").field(e).finish(),
        }
    }
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Connect {
                conn,
                url,
                auth_token,
            } => f
                .debug_struct("Connect")
                .field("conn", conn)
                .field("url", url)
                .field("auth_token", auth_token)
                .finish(),
            Command::Send { conn, text } => f
                .debug_struct("Send")
                .field("conn", conn)
                .field("text", &redact_json(text))
                .finish(),
            Command::Close { conn, code, reason } => f
                .debug_struct("Close")
                .field("conn", conn)
                .field("code", code)
                .field("reason", reason)
                .finish(),
            Command::Http { id, request } => f
                .debug_struct("Http")
                .field("id", id)
                .field("request", request)
                .finish(),
            Command::MintSecret { need_install_id } => f
                .debug_struct("MintSecret")
                .field("need_install_id", need_install_id)
                .finish(),
            Command::Persist(p) => f.debug_tuple("Persist").field(p).finish(),
            Command::Dispatch { run, claim } => f
                .debug_struct("Dispatch")
                .field("run", run)
                .field("claim", claim)
                .finish(),
            Command::CancelJob { job_id } => {
                f.debug_struct("CancelJob").field("job_id", job_id).finish()
            }
            Command::DiscardResult { job_id } => f
                .debug_struct("DiscardResult")
                .field("job_id", job_id)
                .finish(),
            Command::KeepResult(r) => f.debug_tuple("KeepResult").field(r).finish(),
            Command::ForgetResult { job_id } => f
                .debug_struct("ForgetResult")
                .field("job_id", job_id)
                .finish(),
            Command::CheckUpdate => f.write_str("CheckUpdate"),
            Command::ApplyUpdate { version } => f
                .debug_struct("ApplyUpdate")
                .field("version", version)
                .finish(),
            Command::Report(n) => f.debug_tuple("Report").field(n).finish(),
            Command::Exit { code, reason } => f
                .debug_struct("Exit")
                .field("code", code)
                .field("reason", reason)
                .finish(),
            Command::Wait { until } => f.debug_struct("Wait").field("until", until).finish(),
        }
    }
}

/// `f32` <-> JSON for recorded inputs: finite values as numbers, the others as strings.
mod lossless_f32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &f32, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f32(*v)
        } else if v.is_nan() {
            s.serialize_str("NaN")
        } else if *v > 0.0 {
            s.serialize_str("inf")
        } else {
            s.serialize_str("-inf")
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Number(f32),
        Text(String),
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
        match Repr::deserialize(d)? {
            Repr::Number(v) => Ok(v),
            Repr::Text(t) => match t.as_str() {
                "NaN" => Ok(f32::NAN),
                "inf" => Ok(f32::INFINITY),
                "-inf" => Ok(f32::NEG_INFINITY),
                other => Err(serde::de::Error::custom(format!(
                    "`{other}` is not a number, NaN, inf or -inf"
                ))),
            },
        }
    }
}
