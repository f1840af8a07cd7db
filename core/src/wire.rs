//! The wire codec: every frame of PROTOCOL.md §2 in both directions, the nested types of §3
//! and the HTTP bodies of §4, as serde types.
//!
//! Rules the types follow (PROTOCOL.md §2 "General rules"):
//! * camelCase keys on the wire, the frame discriminator is `type`;
//! * optional fields are omitted when absent (never `null`), explicit `null` is accepted;
//! * unknown extra fields are ignored, unknown `type` values and unknown enum values are
//!   rejected;
//! * task parameters whose default the protocol names are stored as `Option` so a frame
//!   re-serialises exactly as it came in; the accessors (`ImageTask::width()`, ...) apply
//!   the protocol's defaults.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

pub use crate::secret::Secret;

/// Largest text frame the core accepts from a peer, in bytes. Larger frames are a protocol
/// error (the session is dropped and re-established), never a panic or an unbounded buffer.
/// Shells pass the same number to their WebSocket library as its message size limit.
pub const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// The WebSocket subprotocol both sides must agree on (PROTOCOL.md §5).
pub const SUBPROTOCOL: &str = "studio-worker-v1";

/// WebSocket close codes used by the contract (PROTOCOL.md §3.8).
pub mod close_code {
    /// Normal closure; also the code paired with `internal_error`.
    pub const NORMAL: u16 = 1000;
    /// Authentication failed: terminal for the worker even without an error frame.
    pub const AUTH_FAILED: u16 = 4001;
    /// Protocol violation.
    pub const PROTOCOL_VIOLATION: u16 = 4002;
    /// Another session connected for the same worker id.
    pub const DUPLICATE_WORKER: u16 = 4003;
    /// The worker was deleted in the studio.
    pub const WORKER_DELETED: u16 = 4004;
}

// ------------------------------------------------------------------------------------------
// Enumerations
// ------------------------------------------------------------------------------------------

/// Task kinds (PROTOCOL.md §3.4). The declaration order is the wire order of
/// `supportedModelsPerKind` (image, llm, audio_stt, audio_tts, video).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    Image,
    Llm,
    AudioStt,
    AudioTts,
    Video,
}

impl TaskKind {
    /// Every kind, in wire order.
    pub const ALL: [TaskKind; 5] = [
        TaskKind::Image,
        TaskKind::Llm,
        TaskKind::AudioStt,
        TaskKind::AudioTts,
        TaskKind::Video,
    ];

    /// The snake_case wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Image => "image",
            TaskKind::Llm => "llm",
            TaskKind::AudioStt => "audio_stt",
            TaskKind::AudioTts => "audio_tts",
            TaskKind::Video => "video",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<TaskKind> {
        TaskKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether results of this kind are uploaded by HTTP multipart (binary) rather than
    /// sent as `completeJson` over the socket (PROTOCOL.md §3.5).
    pub fn is_binary(self) -> bool {
        matches!(self, TaskKind::Image | TaskKind::AudioTts | TaskKind::Video)
    }
}

impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// User presence as sampled by the OS input-idle probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserPresence {
    Idle,
    Active,
}

/// Structured reject codes (PROTOCOL.md §3.9).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectCode {
    Busy,
    Paused,
}

/// Error codes of the studio's `error` frame and their paired close codes (PROTOCOL.md §3.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerErrorCode {
    AuthFailed,
    ProtocolViolation,
    DuplicateWorker,
    WorkerDeleted,
    InternalError,
}

impl WorkerErrorCode {
    /// Every code, in declaration order (for tests and fuzzers that pick one).
    pub const ALL: [WorkerErrorCode; 5] = [
        WorkerErrorCode::AuthFailed,
        WorkerErrorCode::ProtocolViolation,
        WorkerErrorCode::DuplicateWorker,
        WorkerErrorCode::WorkerDeleted,
        WorkerErrorCode::InternalError,
    ];

    /// The close code the studio pairs with this error (its `closeCodeForError`).
    pub fn close_code(self) -> u16 {
        match self {
            WorkerErrorCode::AuthFailed => close_code::AUTH_FAILED,
            WorkerErrorCode::ProtocolViolation => close_code::PROTOCOL_VIOLATION,
            WorkerErrorCode::DuplicateWorker => close_code::DUPLICATE_WORKER,
            WorkerErrorCode::WorkerDeleted => close_code::WORKER_DELETED,
            WorkerErrorCode::InternalError => close_code::NORMAL,
        }
    }

    /// The snake_case wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerErrorCode::AuthFailed => "auth_failed",
            WorkerErrorCode::ProtocolViolation => "protocol_violation",
            WorkerErrorCode::DuplicateWorker => "duplicate_worker",
            WorkerErrorCode::WorkerDeleted => "worker_deleted",
            WorkerErrorCode::InternalError => "internal_error",
        }
    }
}

/// `modelSource.engine` (kebab-case). Values this build does not know are kept as
/// [`ModelEngine::Other`] so an offer naming a newer engine still parses and is failed by the
/// router with a clear message, instead of tearing the session down.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ModelEngine {
    SdCpp,
    LlamaCpp,
    Onnx,
    Parakeet,
    Synthetic,
    Other(String),
}

impl ModelEngine {
    /// The kebab-case wire name.
    pub fn as_str(&self) -> &str {
        match self {
            ModelEngine::SdCpp => "sd-cpp",
            ModelEngine::LlamaCpp => "llama-cpp",
            ModelEngine::Onnx => "onnx",
            ModelEngine::Parakeet => "parakeet",
            ModelEngine::Synthetic => "synthetic",
            ModelEngine::Other(s) => s,
        }
    }

    /// Parses a wire name; unknown names become [`ModelEngine::Other`].
    pub fn parse(s: &str) -> ModelEngine {
        match s {
            "sd-cpp" => ModelEngine::SdCpp,
            "llama-cpp" => ModelEngine::LlamaCpp,
            "onnx" => ModelEngine::Onnx,
            "parakeet" => ModelEngine::Parakeet,
            "synthetic" => ModelEngine::Synthetic,
            other => ModelEngine::Other(other.to_string()),
        }
    }
}

impl fmt::Display for ModelEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ModelEngine {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ModelEngine {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(ModelEngine::parse(&s))
    }
}

// ------------------------------------------------------------------------------------------
// Capabilities (PROTOCOL.md §3.1)
// ------------------------------------------------------------------------------------------

/// The capability snapshot sent in `hello`, `heartbeat` and the register request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerCapabilities {
    pub machine_name: String,
    pub username: String,
    pub agent_version: String,
    pub engine: String,
    #[serde(deserialize_with = "finite_f32::de")]
    pub vram_total_gb: f32,
    #[serde(deserialize_with = "finite_f32::de")]
    pub vram_threshold_gb: f32,
    pub auto_enabled: bool,
    pub auto_start: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_update: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_minimised: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub only_when_idle: Option<bool>,
    pub supported_models: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub task_kinds: Vec<TaskKind>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub supported_models_per_kind: BTreeMap<TaskKind, Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_presence: Option<UserPresence>,
}

impl WorkerCapabilities {
    /// Fills `supportedModels` (flat, sorted, de-duplicated) and `taskKinds` (kinds with at
    /// least one model) from `supportedModelsPerKind`.
    pub fn derive_model_lists(&mut self) {
        let mut flat: Vec<String> = self
            .supported_models_per_kind
            .values()
            .flatten()
            .cloned()
            .collect();
        flat.sort();
        flat.dedup();
        self.supported_models = flat;
        self.task_kinds = self
            .supported_models_per_kind
            .iter()
            .filter(|(_, models)| !models.is_empty())
            .map(|(k, _)| *k)
            .collect();
    }

    /// Whether this worker advertises `kind`. Old workers without `taskKinds` advertise
    /// nothing per kind; the studio then treats every kind as served (legacy behaviour).
    pub fn serves_kind(&self, kind: TaskKind) -> bool {
        self.task_kinds.is_empty() || self.task_kinds.contains(&kind)
    }
}

// ------------------------------------------------------------------------------------------
// Tasks (PROTOCOL.md §3.3)
// ------------------------------------------------------------------------------------------

/// One chat message of an `llm` task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// Parameters of an `image` task.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageTask {
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_image_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ref_image_url: Option<String>,
    #[serde(
        default,
        deserialize_with = "finite_f32::de_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub denoise: Option<f32>,
    #[serde(
        default,
        deserialize_with = "finite_f32::de_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub cfg_scale: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling_method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ext: Option<String>,
}

impl ImageTask {
    /// Requested width (default 512).
    pub fn width(&self) -> u32 {
        self.width.unwrap_or(512)
    }
    /// Requested height (default 512).
    pub fn height(&self) -> u32 {
        self.height.unwrap_or(512)
    }
    /// Sampling steps (default 20).
    pub fn steps(&self) -> u32 {
        self.steps.unwrap_or(20)
    }
    /// Output extension (default `webp`).
    pub fn ext(&self) -> &str {
        self.ext.as_deref().unwrap_or("webp")
    }
}

/// Parameters of an `llm` task.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LlmTask {
    pub messages: Vec<ChatMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(
        default,
        deserialize_with = "finite_f32::de_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub temperature: Option<f32>,
    #[serde(
        default,
        deserialize_with = "finite_f32::de_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub top_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_schema: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template_kwargs: Option<Value>,
}

impl LlmTask {
    /// Token budget (default 512).
    pub fn max_tokens(&self) -> u32 {
        self.max_tokens.unwrap_or(512)
    }
    /// Sampling temperature (default 0.7).
    pub fn temperature(&self) -> f32 {
        self.temperature.unwrap_or(0.7)
    }
}

/// Parameters of an `audio_stt` task.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AudioSttTask {
    pub input_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub translate: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vad: Option<bool>,
    /// `"segment"` or `"word"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamps: Option<String>,
}

/// Parameters of an `audio_tts` task.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AudioTtsTask {
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice: Option<String>,
    #[serde(
        default,
        deserialize_with = "finite_f32::de_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub speed: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ext: Option<String>,
}

impl AudioTtsTask {
    /// Voice (default `default`).
    pub fn voice(&self) -> &str {
        self.voice.as_deref().unwrap_or("default")
    }
    /// Output extension (default `wav`).
    pub fn ext(&self) -> &str {
        self.ext.as_deref().unwrap_or("wav")
    }
}

/// Parameters of a `video` task.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VideoTask {
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_image_url: Option<String>,
    #[serde(
        default,
        deserialize_with = "finite_f32::de_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub seconds: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fps: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ext: Option<String>,
}

impl VideoTask {
    /// Clip length in seconds (default 2.0).
    pub fn seconds(&self) -> f32 {
        self.seconds.unwrap_or(2.0)
    }
    /// Requested width (default 512).
    pub fn width(&self) -> u32 {
        self.width.unwrap_or(512)
    }
    /// Requested height (default 512).
    pub fn height(&self) -> u32 {
        self.height.unwrap_or(512)
    }
    /// Requested extension (default `mp4`).
    pub fn ext(&self) -> &str {
        self.ext.as_deref().unwrap_or("mp4")
    }
}

/// A task, internally tagged by `kind`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Task {
    Image(ImageTask),
    Llm(LlmTask),
    AudioStt(AudioSttTask),
    AudioTts(AudioTtsTask),
    Video(VideoTask),
}

impl Task {
    /// The task's kind.
    pub fn kind(&self) -> TaskKind {
        match self {
            Task::Image(_) => TaskKind::Image,
            Task::Llm(_) => TaskKind::Llm,
            Task::AudioStt(_) => TaskKind::AudioStt,
            Task::AudioTts(_) => TaskKind::AudioTts,
            Task::Video(_) => TaskKind::Video,
        }
    }

    /// The full prompt reported back with the result (`prompt_for`, PROTOCOL.md §3.3):
    /// image and video -> `prompt`; llm -> content of the last message (empty if none);
    /// audio_stt -> `inputUrl`; audio_tts -> `text`. Never truncated.
    pub fn prompt(&self) -> &str {
        match self {
            Task::Image(t) => &t.prompt,
            Task::Llm(t) => t.messages.last().map(|m| m.content.as_str()).unwrap_or(""),
            Task::AudioStt(t) => &t.input_url,
            Task::AudioTts(t) => &t.text,
            Task::Video(t) => &t.prompt,
        }
    }
}

/// Length of the display-only prompt preview, in characters.
pub const PROMPT_PREVIEW_CHARS: usize = 200;

/// The display-only prompt preview: the first [`PROMPT_PREVIEW_CHARS`] characters, with `…`
/// appended when something was cut. Never sent to the studio.
pub fn prompt_preview(prompt: &str) -> String {
    let mut chars = prompt.char_indices();
    match chars.nth(PROMPT_PREVIEW_CHARS) {
        None => prompt.to_string(),
        Some((cut, _)) => format!("{}…", &prompt[..cut]),
    }
}

// ------------------------------------------------------------------------------------------
// Model source (PROTOCOL.md §3.6) and the claim (§3.2)
// ------------------------------------------------------------------------------------------

/// One file a model needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelFile {
    /// kebab-case role: `diffusion-model`, `text-encoder`, `text-encoder-vision`, `vae`,
    /// `lora`, `model`.
    pub role: String,
    pub url: String,
    pub filename: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approx_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// Engine defaults carried by a model source.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CliDefaults {
    #[serde(deserialize_with = "finite_f32::de")]
    pub cfg_scale: f32,
    pub steps: u32,
    pub width: u32,
    pub height: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling_method: Option<String>,
    #[serde(
        default,
        deserialize_with = "finite_f32::de_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub flow_shift: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zero_cond_t: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload_to_cpu: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template_kwargs: Option<Value>,
}

impl Default for CliDefaults {
    fn default() -> Self {
        CliDefaults {
            cfg_scale: 1.0,
            steps: 8,
            width: 1024,
            height: 1024,
            sampling_method: None,
            flow_shift: None,
            zero_cond_t: None,
            offload_to_cpu: None,
            context_size: None,
            chat_template_kwargs: None,
        }
    }
}

/// Where a job's model comes from and which engine must run it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelSource {
    pub engine: ModelEngine,
    pub files: Vec<ModelFile>,
    pub cli_defaults: CliDefaults,
}

impl ModelSource {
    /// A synthetic model source with no files.
    pub fn synthetic() -> ModelSource {
        ModelSource {
            engine: ModelEngine::Synthetic,
            files: Vec::new(),
            cli_defaults: CliDefaults::default(),
        }
    }
}

/// The `claim` of an `offer`. `task` and `modelSource` are required: an offer without them
/// fails to parse (pinned by the vectors).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobOfferClaim {
    pub job_id: String,
    pub game_id: String,
    pub asset_name: String,
    pub model: String,
    #[serde(deserialize_with = "finite_f32::de")]
    pub vram_gb_estimate: f32,
    pub task: Task,
    pub model_source: ModelSource,
}

// ------------------------------------------------------------------------------------------
// Log entries (PROTOCOL.md §3.7)
// ------------------------------------------------------------------------------------------

/// One shipped log line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogEntry {
    /// RFC 3339 UTC with milliseconds and `Z`.
    pub ts: String,
    /// `info`, `warn` or `error` in practice.
    pub level: String,
    /// `ws`, `auto-update`, `logs`, `engine`, ...
    pub category: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
}

// ------------------------------------------------------------------------------------------
// Frames (PROTOCOL.md §2)
// ------------------------------------------------------------------------------------------

/// Worker -> studio frames.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum WorkerFrame {
    Hello {
        auth_token: Secret,
        capabilities: WorkerCapabilities,
    },
    Heartbeat {
        capabilities: WorkerCapabilities,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        current_job_id: Option<String>,
    },
    Accept {
        job_id: String,
    },
    Reject {
        job_id: String,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<RejectCode>,
    },
    CompleteJson {
        job_id: String,
        result: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prompt: Option<String>,
    },
    Fail {
        job_id: String,
        error: String,
        retryable: bool,
    },
    LogBatch {
        entries: Vec<LogEntry>,
    },
    ReadyForMore,
}

impl WorkerFrame {
    /// The frame's `type` value.
    pub fn type_name(&self) -> &'static str {
        match self {
            WorkerFrame::Hello { .. } => "hello",
            WorkerFrame::Heartbeat { .. } => "heartbeat",
            WorkerFrame::Accept { .. } => "accept",
            WorkerFrame::Reject { .. } => "reject",
            WorkerFrame::CompleteJson { .. } => "completeJson",
            WorkerFrame::Fail { .. } => "fail",
            WorkerFrame::LogBatch { .. } => "logBatch",
            WorkerFrame::ReadyForMore => "readyForMore",
        }
    }
}

/// Studio -> worker frames.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum StudioFrame {
    Welcome {
        worker_id: String,
        server_time: String,
    },
    Offer {
        claim: Box<JobOfferClaim>,
    },
    HeartbeatAck,
    CompleteAck {
        job_id: String,
    },
    FailAck {
        job_id: String,
    },
    Error {
        code: WorkerErrorCode,
        message: String,
    },
}

impl StudioFrame {
    /// The frame's `type` value.
    pub fn type_name(&self) -> &'static str {
        match self {
            StudioFrame::Welcome { .. } => "welcome",
            StudioFrame::Offer { .. } => "offer",
            StudioFrame::HeartbeatAck => "heartbeatAck",
            StudioFrame::CompleteAck { .. } => "completeAck",
            StudioFrame::FailAck { .. } => "failAck",
            StudioFrame::Error { .. } => "error",
        }
    }
}

/// Why a frame could not be decoded. The message names the cause but never echoes the
/// frame (it may carry a token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The frame is larger than the limit.
    TooLarge { len: usize, limit: usize },
    /// Not valid JSON, unknown `type`, a missing required field or an unknown enum value.
    Invalid(String),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::TooLarge { len, limit } => {
                write!(f, "frame of {len} bytes exceeds the {limit}-byte limit")
            }
            DecodeError::Invalid(why) => write!(f, "malformed frame: {why}"),
        }
    }
}

impl std::error::Error for DecodeError {}

fn decode<T: for<'de> Deserialize<'de>>(text: &str, limit: usize) -> Result<T, DecodeError> {
    if text.len() > limit {
        return Err(DecodeError::TooLarge {
            len: text.len(),
            limit,
        });
    }
    serde_json::from_str(text).map_err(|e| {
        // serde_json's messages name fields and positions, not values, except for
        // "unknown variant `x`" where x is a type/enum name: safe to show.
        DecodeError::Invalid(e.to_string())
    })
}

/// Decodes a studio -> worker text frame with the default size limit.
pub fn decode_studio_frame(text: &str) -> Result<StudioFrame, DecodeError> {
    decode_studio_frame_limited(text, MAX_FRAME_BYTES)
}

/// Decodes a studio -> worker text frame with the given size limit.
pub fn decode_studio_frame_limited(text: &str, limit: usize) -> Result<StudioFrame, DecodeError> {
    // Performance only: every heartbeat is answered by this exact text, the most common
    // studio frame by far; it decodes as the enum does, without serde's `Content` buffer.
    if text == HEARTBEAT_ACK_TEXT && text.len() <= limit {
        return Ok(StudioFrame::HeartbeatAck);
    }
    decode(text, limit)
}

/// How [`encode`] writes [`StudioFrame::HeartbeatAck`] (a test pins the two together).
pub(crate) const HEARTBEAT_ACK_TEXT: &str = r#"{"type":"heartbeatAck"}"#;

/// JSON numbers for `f32` fields: a value beyond `f32`'s range would narrow to infinity,
/// which then encodes as `null` and no longer decodes (found by the `decode_frame` fuzz
/// target). Such values are clamped to the largest finite `f32` of the same sign, so every
/// decoded frame re-encodes to one that decodes to the same value.
mod finite_f32 {
    use serde::{Deserialize, Deserializer};

    fn narrow(v: f64) -> f32 {
        v.clamp(-f64::from(f32::MAX), f64::from(f32::MAX)) as f32
    }

    pub(super) fn de<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
        f64::deserialize(d).map(narrow)
    }

    pub(super) fn de_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f32>, D::Error> {
        Option::<f64>::deserialize(d).map(|v| v.map(narrow))
    }
}

/// Decodes a worker -> studio text frame with the given size limit.
pub fn decode_worker_frame(text: &str, limit: usize) -> Result<WorkerFrame, DecodeError> {
    if text.len() <= limit {
        if let Some(frame) = decode_worker_frame_fast(text) {
            debug_assert_eq!(
                serde_json::from_str::<WorkerFrame>(text).ok().as_ref(),
                Some(&frame),
                "the fast path decodes as the enum does"
            );
            return Ok(frame);
        }
    }
    decode(text, limit)
}

/// The fast path of [`decode_worker_frame`] for the frames a worker sends most and the
/// costliest to buffer (`heartbeat`, `logBatch`, `hello`); `None` for any other frame and
/// for any error.
fn decode_worker_frame_fast(text: &str) -> Option<WorkerFrame> {
    if text.starts_with(HEARTBEAT_PREFIX) {
        let f = serde_json::from_str::<HeartbeatFrame>(text).ok()?;
        Some(WorkerFrame::Heartbeat {
            capabilities: f.capabilities,
            current_job_id: f.current_job_id,
        })
    } else if text.starts_with(LOG_BATCH_PREFIX) {
        let f = serde_json::from_str::<LogBatchFrame>(text).ok()?;
        Some(WorkerFrame::LogBatch { entries: f.entries })
    } else if text.starts_with(HELLO_PREFIX) {
        let f = serde_json::from_str::<HelloFrame>(text).ok()?;
        Some(WorkerFrame::Hello {
            auth_token: f.auth_token,
            capabilities: f.capabilities,
        })
    } else {
        None
    }
}

/// How every heartbeat this crate encodes begins (the tag first, compact).
const HEARTBEAT_PREFIX: &str = r#"{"type":"heartbeat","#;
/// How every log batch this crate encodes begins.
const LOG_BATCH_PREFIX: &str = r#"{"type":"logBatch","#;
/// How every hello this crate encodes begins.
const HELLO_PREFIX: &str = r#"{"type":"hello","#;

/// Performance only: `heartbeat` is most of the studio's inbound frames, and decoding an
/// internally tagged enum buffers the whole frame into serde's `Content` first (about half
/// of the studio's time per heartbeat). A frame that starts with [`HEARTBEAT_PREFIX`] is
/// decoded straight into this struct: same fields, same defaults, unknown fields ignored,
/// a second `type` key a duplicate-field error, as in the enum. Any error falls back to the
/// enum decode, so results and error messages are the enum's. [`LogBatchFrame`] and
/// [`HelloFrame`] do the same for their variants.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HeartbeatFrame {
    #[serde(rename = "type")]
    _tag: serde::de::IgnoredAny,
    capabilities: WorkerCapabilities,
    #[serde(default)]
    current_job_id: Option<String>,
}

/// `logBatch` decoded directly (see [`HeartbeatFrame`]).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogBatchFrame {
    #[serde(rename = "type")]
    _tag: serde::de::IgnoredAny,
    entries: Vec<LogEntry>,
}

/// `hello` decoded directly (see [`HeartbeatFrame`]).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HelloFrame {
    #[serde(rename = "type")]
    _tag: serde::de::IgnoredAny,
    auth_token: Secret,
    capabilities: WorkerCapabilities,
}

/// Encodes any wire value as compact JSON text. Serialising these types cannot fail (all
/// map keys are strings), so this returns a `String` directly.
pub fn encode<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("wire types always serialise")
}

// ------------------------------------------------------------------------------------------
// HTTP bodies (PROTOCOL.md §4)
// ------------------------------------------------------------------------------------------

/// Body of `POST /workers/register-request`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AutoRegisterRequest {
    pub install_id: String,
    /// SHA-256 hex of the raw registration secret (the secret itself never leaves the box).
    pub registration_secret_hash: String,
    pub capabilities: WorkerCapabilities,
    pub user_agent: String,
}

/// Response of `POST /workers/register-request`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterRequestResponse {
    pub request_id: String,
    pub status: String,
}

/// Response of `GET /workers/register-requests/:id`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "status",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum RegisterStatus {
    Pending,
    Approved {
        worker_id: String,
        auth_token: Secret,
    },
    Rejected {
        #[serde(default)]
        reason: String,
    },
}

/// The Content-Type of a result file by extension (case-insensitive), as the multipart
/// upload labels it (PROTOCOL.md §4.1): png, webp, gif, jpg/jpeg, wav, mp3, mp4; anything
/// else is `application/octet-stream`.
pub fn content_type_for_ext(ext: &str) -> &'static str {
    match ext.to_ascii_lowercase().as_str() {
        "png" => "image/png",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "jpg" | "jpeg" => "image/jpeg",
        "wav" => "audio/wav",
        "mp3" => "audio/mpeg",
        "mp4" => "video/mp4",
        _ => "application/octet-stream",
    }
}

/// Lower-case hex SHA-256 of `data`: the registration secret hash and the studio's stored
/// token hash.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex(&Sha256::digest(data))
}

/// Lower-case hex of `bytes` (digests, ids): the one hex encoder of the project.
pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

/// The HTTP route prefix every studio route sits under.
pub const API_PREFIX: &str = "/graphics/api";

/// Normalises `api_base_url` for HTTP (PROTOCOL.md §4): drop query and fragment, strip a
/// trailing `/graphics/api`, trim trailing `/`. Returns `None` for a URL without scheme.
pub fn http_base(api_base_url: &str) -> Option<String> {
    let url = api_base_url.trim();
    let scheme_end = url.find("://")?;
    let cut = url.find(['?', '#']).unwrap_or(url.len());
    let mut base = url[..cut].trim_end_matches('/').to_string();
    if base.len() < scheme_end + 3 {
        return None;
    }
    if let Some(stripped) = base.strip_suffix(API_PREFIX) {
        base = stripped.trim_end_matches('/').to_string();
    }
    Some(base)
}

/// Builds the full HTTP URL of a studio route (`route` starts with `/`).
pub fn http_url(api_base_url: &str, route: &str) -> Option<String> {
    Some(format!(
        "{}{}{}",
        http_base(api_base_url)?,
        API_PREFIX,
        route
    ))
}

/// Derives the WebSocket connect URL (PROTOCOL.md §5): `http`->`ws`, `https`->`wss`,
/// `ws`/`wss` kept, anything else is an error; path gets `/graphics/api` unless it already
/// ends with it, then `/workers/<id>/connect`. The base URL's query is not stripped
/// (reference behaviour); it is kept after the path.
pub fn ws_url(api_base_url: &str, worker_id: &str) -> Result<String, String> {
    let url = api_base_url.trim();
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("api_base_url `{url}` has no scheme"))?;
    let ws_scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        other => {
            return Err(format!(
                "api_base_url scheme `{other}` is not http(s) or ws(s)"
            ))
        }
    };
    let (before_query, query) = match rest.find(['?', '#']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let mut path = before_query.trim_end_matches('/').to_string();
    if !path.ends_with(API_PREFIX) {
        path.push_str(API_PREFIX);
    }
    Ok(format!(
        "{ws_scheme}://{path}/workers/{worker_id}/connect{}",
        query.split('#').next().unwrap_or("")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_hex_known_answer() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn close_codes_match_the_studio_mapping() {
        assert_eq!(WorkerErrorCode::AuthFailed.close_code(), 4001);
        assert_eq!(WorkerErrorCode::ProtocolViolation.close_code(), 4002);
        assert_eq!(WorkerErrorCode::DuplicateWorker.close_code(), 4003);
        assert_eq!(WorkerErrorCode::WorkerDeleted.close_code(), 4004);
        assert_eq!(WorkerErrorCode::InternalError.close_code(), 1000);
    }

    #[test]
    fn ws_url_derivation() {
        assert_eq!(
            ws_url("http://localhost:9790", "w-3").unwrap(),
            "ws://localhost:9790/graphics/api/workers/w-3/connect"
        );
        assert_eq!(
            ws_url("https://api.example/graphics/api/", "w-2").unwrap(),
            "wss://api.example/graphics/api/workers/w-2/connect"
        );
        assert!(ws_url("ftp://x", "w").is_err());
        assert!(ws_url("nourl", "w").is_err());
    }

    #[test]
    fn http_url_normalisation() {
        assert_eq!(
            http_url(
                "https://x/custom/graphics/api?a=1#f",
                "/workers/register-request"
            )
            .unwrap(),
            "https://x/custom/graphics/api/workers/register-request"
        );
        assert_eq!(
            http_url("https://studio.minis.gg/", "/workers/w/jobs/j/complete").unwrap(),
            "https://studio.minis.gg/graphics/api/workers/w/jobs/j/complete"
        );
        assert!(http_url("nourl", "/x").is_none());
    }

    #[test]
    fn task_defaults() {
        let t: Task = serde_json::from_str(r#"{"kind":"image","prompt":"a"}"#).unwrap();
        let Task::Image(i) = t else { panic!() };
        assert_eq!(
            (i.width(), i.height(), i.steps(), i.ext()),
            (512, 512, 20, "webp")
        );
        let t: Task = serde_json::from_str(r#"{"kind":"llm","messages":[]}"#).unwrap();
        let Task::Llm(l) = &t else { panic!() };
        assert_eq!((l.max_tokens(), l.temperature()), (512, 0.7));
        assert_eq!(t.prompt(), "");
        let t: Task = serde_json::from_str(r#"{"kind":"audio_tts","text":"x"}"#).unwrap();
        let Task::AudioTts(a) = t else { panic!() };
        assert_eq!((a.voice(), a.ext()), ("default", "wav"));
        let t: Task = serde_json::from_str(r#"{"kind":"video","prompt":"p"}"#).unwrap();
        let Task::Video(v) = t else { panic!() };
        assert_eq!(
            (v.seconds(), v.width(), v.height(), v.ext()),
            (2.0, 512, 512, "mp4")
        );
    }

    #[test]
    fn prompt_for_each_kind() {
        let llm: Task = serde_json::from_str(
            r#"{"kind":"llm","messages":[{"role":"user","content":"a"},{"role":"user","content":"last"}]}"#,
        )
        .unwrap();
        assert_eq!(llm.prompt(), "last");
        let stt: Task =
            serde_json::from_str(r#"{"kind":"audio_stt","inputUrl":"https://x/a.wav"}"#).unwrap();
        assert_eq!(stt.prompt(), "https://x/a.wav");
    }

    #[test]
    fn preview_is_200_chars_plus_ellipsis() {
        let long = "é".repeat(300);
        let p = prompt_preview(&long);
        assert_eq!(p.chars().count(), PROMPT_PREVIEW_CHARS + 1);
        assert!(p.ends_with('…'));
        assert_eq!(prompt_preview("short"), "short");
        assert_eq!(prompt_preview(&"a".repeat(200)), "a".repeat(200));
    }

    #[test]
    fn oversize_frames_are_rejected_before_parsing() {
        let big = format!(
            r#"{{"type":"heartbeatAck","pad":"{}"}}"#,
            "x".repeat(MAX_FRAME_BYTES)
        );
        assert!(matches!(
            decode_studio_frame(&big),
            Err(DecodeError::TooLarge { .. })
        ));
        let ok = format!(r#"{{"type":"heartbeatAck","pad":"{}"}}"#, "x".repeat(100));
        assert_eq!(decode_studio_frame(&ok).unwrap(), StudioFrame::HeartbeatAck);
    }

    #[test]
    fn heartbeat_ack_fast_paths_match_the_codec() {
        assert_eq!(encode(&StudioFrame::HeartbeatAck), HEARTBEAT_ACK_TEXT);
        assert_eq!(
            decode::<StudioFrame>(HEARTBEAT_ACK_TEXT, MAX_FRAME_BYTES).unwrap(),
            StudioFrame::HeartbeatAck
        );
        assert_eq!(
            decode_studio_frame(HEARTBEAT_ACK_TEXT).unwrap(),
            StudioFrame::HeartbeatAck
        );
        assert!(matches!(
            decode_studio_frame_limited(HEARTBEAT_ACK_TEXT, 5),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn unknown_engine_is_kept_not_rejected() {
        let s: ModelSource = serde_json::from_str(
            r#"{"engine":"future-engine","files":[],"cliDefaults":{"cfgScale":1.0,"steps":1,"width":1,"height":1}}"#,
        )
        .unwrap();
        assert_eq!(s.engine, ModelEngine::Other("future-engine".into()));
        assert!(encode(&s).contains(r#""engine":"future-engine""#));
    }

    #[test]
    fn worker_frame_fast_paths_decode_as_the_enum_does() {
        let caps = WorkerCapabilities {
            machine_name: "m".into(),
            username: "u".into(),
            agent_version: "0".into(),
            engine: "multi".into(),
            vram_total_gb: 24.0,
            vram_threshold_gb: -0.0,
            auto_enabled: true,
            auto_start: false,
            auto_update: Some(true),
            start_minimised: None,
            only_when_idle: Some(false),
            supported_models: vec!["a".into()],
            task_kinds: vec![TaskKind::Image],
            supported_models_per_kind: BTreeMap::from([(TaskKind::Image, vec!["a".into()])]),
            user_presence: Some(UserPresence::Idle),
        };
        let frames = [
            WorkerFrame::Hello {
                auth_token: Secret::new("tok\"en"),
                capabilities: caps.clone(),
            },
            WorkerFrame::Heartbeat {
                capabilities: caps,
                current_job_id: Some("j-1".into()),
            },
            WorkerFrame::LogBatch {
                entries: vec![LogEntry {
                    ts: "2024-01-01T00:00:00.000Z".into(),
                    level: "info".into(),
                    category: "ws".into(),
                    message: "m\u{e9}\n".into(),
                    job_id: None,
                }],
            },
            WorkerFrame::LogBatch { entries: vec![] },
        ];
        for f in frames {
            let text = encode(&f);
            let fast = decode_worker_frame_fast(&text).expect("takes the fast path");
            assert_eq!(fast, f);
            assert_eq!(decode::<WorkerFrame>(&text, MAX_FRAME_BYTES).unwrap(), f);
        }
        // Anything odd falls back to the enum, errors included.
        for text in [
            r#"{"type":"logBatch","type":"hello","entries":[]}"#,
            r#"{"type":"hello","capabilities":{}}"#,
            r#"{"type":"logBatch","entries":7}"#,
        ] {
            assert_eq!(decode_worker_frame_fast(text), None);
            assert_eq!(
                decode_worker_frame(text, MAX_FRAME_BYTES),
                decode::<WorkerFrame>(text, MAX_FRAME_BYTES)
            );
        }
    }

    #[test]
    fn derive_model_lists_sorts_and_dedups() {
        let mut caps = WorkerCapabilities {
            machine_name: "m".into(),
            username: "u".into(),
            agent_version: "0".into(),
            engine: "multi".into(),
            vram_total_gb: 0.0,
            vram_threshold_gb: 0.0,
            auto_enabled: true,
            auto_start: false,
            auto_update: None,
            start_minimised: None,
            only_when_idle: None,
            supported_models: vec![],
            task_kinds: vec![],
            supported_models_per_kind: BTreeMap::from([
                (TaskKind::Video, vec!["b".into(), "a".into()]),
                (TaskKind::Image, vec!["a".into()]),
                (TaskKind::Llm, vec![]),
            ]),
            user_presence: None,
        };
        caps.derive_model_lists();
        assert_eq!(caps.supported_models, vec!["a", "b"]);
        assert_eq!(caps.task_kinds, vec![TaskKind::Image, TaskKind::Video]);
    }
}
