//! Typed engine errors.
//!
//! The worker turns an [`EngineError`] into a `fail` frame: the message becomes `error` and
//! [`EngineError::retryable`] becomes `retryable`. Retryability is decided by the error's
//! kind, never by sniffing its message (PROTOCOL.md §8: message sniffing broke once callers
//! wrapped errors with context).

use std::fmt;

use studio_core::wire::{ModelEngine, TaskKind};

/// What went wrong, as far as the studio's retry decision is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EngineErrorKind {
    /// The engine does not serve this task kind at all. Not retryable.
    UnsupportedKind,
    /// The engine serves the kind but not the requested model. Not retryable.
    UnsupportedModel,
    /// Routing failed: the job's `modelSource.engine` is not compiled into this worker (or
    /// is unknown to this version). Not retryable here; another worker may have it.
    EngineNotAvailable,
    /// An engine was handed a job whose `modelSource.engine` it does not serve (a routing
    /// bug; guards against answering real jobs with placeholder output). Not retryable.
    SourceMismatch,
    /// The task's parameters cannot be served as given (bad values, not a missing feature).
    /// Not retryable: the same input fails the same way.
    InvalidInput,
    /// Local I/O trouble (disk, subprocess pipes, downloads). Retryable.
    Io,
    /// The engine ran and failed; the engine says whether a retry can help.
    Failed {
        /// Whether the studio may hand the job out again.
        retryable: bool,
    },
}

impl EngineErrorKind {
    /// Whether a job failing with this kind may be retried.
    pub fn retryable(self) -> bool {
        match self {
            EngineErrorKind::UnsupportedKind
            | EngineErrorKind::UnsupportedModel
            | EngineErrorKind::EngineNotAvailable
            | EngineErrorKind::SourceMismatch
            | EngineErrorKind::InvalidInput => false,
            EngineErrorKind::Io => true,
            EngineErrorKind::Failed { retryable } => retryable,
        }
    }
}

/// An engine or routing error: a kind (drives `retryable`) and a human-readable message
/// (sent as the `fail` frame's `error`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineError {
    /// The kind of failure.
    pub kind: EngineErrorKind,
    /// The message reported to the studio.
    pub message: String,
}

impl EngineError {
    /// An error of the given kind.
    pub fn new(kind: EngineErrorKind, message: impl Into<String>) -> EngineError {
        EngineError {
            kind,
            message: message.into(),
        }
    }

    /// `"<engine> engine cannot serve <kind> tasks"` (PROTOCOL.md §9.1).
    pub fn unsupported_kind(engine: &str, kind: TaskKind) -> EngineError {
        EngineError::new(
            EngineErrorKind::UnsupportedKind,
            format!("{engine} engine cannot serve {kind} tasks"),
        )
    }

    /// ``"<engine> engine does not serve model `<model>` for <kind> tasks"``.
    pub fn unsupported_model(engine: &str, kind: TaskKind, model: &str) -> EngineError {
        EngineError::new(
            EngineErrorKind::UnsupportedModel,
            format!("{engine} engine does not serve model `{model}` for {kind} tasks"),
        )
    }

    /// The router's error for a `modelSource.engine` no compiled-in engine serves. The
    /// message names the engine and how to get a worker that has it.
    pub fn engine_not_available(engine: &ModelEngine) -> EngineError {
        let fix = match engine {
            ModelEngine::SdCpp => {
                "install studio-worker or studio-worker-async (both carry the sd-cpp engine by \
                 default) or a build with feature `sd-cpp`"
            }
            ModelEngine::LlamaCpp => {
                "install studio-worker-async (it carries the candle LLM engine) or a build with \
                 feature `llm`"
            }
            ModelEngine::Onnx => {
                "install studio-worker-async (it carries the Piper text-to-speech engine) or a \
                 build with feature `tts`"
            }
            ModelEngine::Parakeet => {
                "parakeet is a local-only streaming engine and never serves studio jobs"
            }
            ModelEngine::Synthetic => "install a build with the synthetic engine",
            ModelEngine::Other(name) if name == "whisper" => {
                "install studio-worker-async (it carries the candle Whisper engine) or a build with \
                 feature `whisper`"
            }
            ModelEngine::Other(name) if name == "candle-sd" => {
                "install studio-worker-async (it carries the candle Stable Diffusion engine) or a \
                 build with feature `image-candle`"
            }
            ModelEngine::Other(_) => {
                "this worker version does not know that engine; update studio-worker"
            }
        };
        EngineError::new(
            EngineErrorKind::EngineNotAvailable,
            format!("modelSource.engine `{engine}` is not compiled into this worker; {fix}"),
        )
    }

    /// An engine was handed a job for another `modelSource.engine`.
    pub fn source_mismatch(engine: &str, source: &ModelEngine) -> EngineError {
        EngineError::new(
            EngineErrorKind::SourceMismatch,
            format!("{engine} engine cannot serve jobs whose modelSource.engine is `{source}`"),
        )
    }

    /// Bad task parameters (not retryable).
    pub fn invalid_input(message: impl Into<String>) -> EngineError {
        EngineError::new(EngineErrorKind::InvalidInput, message)
    }

    /// Local I/O failure (retryable).
    pub fn io(message: impl Into<String>) -> EngineError {
        EngineError::new(EngineErrorKind::Io, message)
    }

    /// The engine failed; `retryable` as given.
    pub fn failed(message: impl Into<String>, retryable: bool) -> EngineError {
        EngineError::new(EngineErrorKind::Failed { retryable }, message)
    }

    /// Whether the studio may retry the job (the `fail` frame's `retryable`).
    pub fn retryable(&self) -> bool {
        self.kind.retryable()
    }

    /// The same error with `context: ` put before the message; the kind (and so the
    /// retry decision) is kept.
    pub fn context(self, context: impl fmt::Display) -> EngineError {
        EngineError {
            kind: self.kind,
            message: format!("{context}: {}", self.message),
        }
    }
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for EngineError {}

impl From<std::io::Error> for EngineError {
    fn from(e: std::io::Error) -> EngineError {
        EngineError::io(e.to_string())
    }
}
