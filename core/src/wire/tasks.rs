//! The job an offer carries: the task of each kind with the protocol's defaults, the
//! model source and the claim.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::finite_f32;
use super::TaskKind;

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

    /// The model id a worker advertises for "any model of this engine" (`llama-cpp:*`,
    /// `sd-cpp:*`; PROTOCOL.md §3.1): the wire name followed by [`WILDCARD_SUFFIX`].
    pub fn wildcard(&self) -> String {
        format!("{}{WILDCARD_SUFFIX}", self.as_str())
    }

    /// The engine an advertised model id is the wildcard of (`sd-cpp:*` -> `sd-cpp`), or
    /// `None` for an exact id (the bare `*` included: it names no engine).
    pub fn of_wildcard(model: &str) -> Option<&str> {
        model
            .strip_suffix(WILDCARD_SUFFIX)
            .filter(|engine| !engine.is_empty())
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

/// What follows an engine's wire name in its wildcard model id ([`ModelEngine::wildcard`]).
pub const WILDCARD_SUFFIX: &str = ":*";

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
