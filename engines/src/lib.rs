//! studio-engines: the inference engines of studio-worker (PROTOCOL.md §9).
//!
//! # The engine contract
//!
//! An [`Engine`] is a blocking, thread-safe (`Send + Sync`), object-safe backend:
//!
//! * [`Engine::name`] is its static routing id (`synthetic`, `multi`, ...);
//! * [`Engine::serves`] lists the `modelSource.engine` values ([`ModelEngine`]) it runs;
//! * [`Engine::capabilities`] maps each [`TaskKind`] it serves to the model ids it
//!   advertises (the worker's `supportedModelsPerKind`): exact ids, and an engine that can
//!   run any model its `modelSource.engine` names advertises that engine's wildcard
//!   (`llama-cpp:*`, `sd-cpp:*`, PROTOCOL.md §3.1); the bare wildcard `"*"` is never
//!   advertised, nor a wildcard for the synthetic engine;
//! * [`Engine::dispatch`] runs one [`JobRequest`] and returns an [`EngineOutput`]: JSON for
//!   `llm` and `audio_stt` (sent as `completeJson`), bytes plus an extension for `image`,
//!   `audio_tts` and `video` (uploaded by multipart), or a typed [`EngineError`] whose
//!   [`EngineError::retryable`] becomes the `fail` frame's `retryable`.
//!
//! # The routing rule
//!
//! The worker holds one [`Router`] (routing id `multi`) wrapping every compiled-in engine,
//! real ones first and the [`SyntheticEngine`] last. A job is routed **only** by its
//! `modelSource.engine`: it goes to the first engine whose [`Engine::serves`] lists that
//! value. If none does (the engine is not compiled into this build, or the value is unknown
//! to this version) the job fails with [`EngineErrorKind::EngineNotAvailable`], not
//! retryable, with a message naming the engine and the fix. There is no fallback, least of
//! all to the synthetic engine: it would "complete" real jobs with placeholder bytes.
//!
//! # Cancelling
//!
//! Whoever runs a job may give up on it: [`cancel`] gives the dispatching thread a
//! [`cancel::CancelToken`]; an engine that runs a child process (the sd-cpp engine) kills
//! it when the token is cancelled.
//!
//! # The synthetic engine
//!
//! [`SyntheticEngine`] produces deterministic outputs keyed by SHA-256 of the prompt
//! (PROTOCOL.md §9.3): a 512×512 ring pattern (WebP or PNG), a fixed-shape chat completion,
//! a fixed-shape transcript, a one-second sine WAV and an animated GIF "video" of the
//! requested `seconds` x `fps` frames (capped). It is pure (no I/O) and fast.
//!
//! [`ModelEngine`]: studio_core::wire::ModelEngine
//! [`TaskKind`]: studio_core::wire::TaskKind

pub mod cancel;
#[cfg(feature = "candle")]
pub mod device;
#[cfg(feature = "image-candle")]
pub mod diffusion;
mod engine;
mod error;
pub mod gradio;
pub mod input_url;
pub mod job_log;
#[cfg(feature = "llm")]
pub mod llm;
pub mod model_cache;
pub mod models;
#[cfg(feature = "tts")]
pub mod piper;
mod router;
#[cfg(feature = "sd-cpp")]
pub mod sdcpp;
mod settings;
pub mod synthetic;
mod thread_scope;
#[cfg(any(feature = "llm", feature = "whisper"))]
pub mod threads;
#[cfg(feature = "whisper")]
pub mod whisper;

#[cfg(feature = "image-candle")]
pub use diffusion::CandleImageEngine;
pub use engine::{Engine, EngineOutput, JobRequest};
pub use error::{EngineError, EngineErrorKind};
pub use gradio::{GradioEngine, GradioSettings};
#[cfg(feature = "llm")]
pub use llm::LlmEngine;
pub use models::ModelStore;
#[cfg(feature = "tts")]
pub use piper::PiperEngine;
pub use router::Router;
#[cfg(feature = "sd-cpp")]
pub use sdcpp::SdCppEngine;
pub use settings::{
    EngineSettings, DEFAULT_MODEL_MEMORY_BUDGET_BYTES, DEFAULT_MODEL_MEMORY_BUDGET_PERCENT,
};
pub use synthetic::SyntheticEngine;
#[cfg(feature = "whisper")]
pub use whisper::WhisperEngine;
