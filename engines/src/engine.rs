//! The [`Engine`] trait and the values it takes and returns.

use std::collections::BTreeMap;

use serde_json::Value;
use studio_core::wire::{ModelEngine, ModelSource, Task, TaskKind};

use crate::error::EngineError;

/// Everything an engine needs to run one job: the offer's `jobId`, `model`, `task` and
/// `modelSource` (PROTOCOL.md §3.2).
#[derive(Clone, Debug, PartialEq)]
pub struct JobRequest {
    /// The studio's job id (for logs; engines must not depend on it for their output).
    pub job_id: String,
    /// The model id the studio asked for.
    pub model: String,
    /// The task and its parameters.
    pub task: Task,
    /// Where the model comes from and which engine must run it.
    pub source: ModelSource,
}

impl JobRequest {
    /// A job request from its parts.
    pub fn new(
        job_id: impl Into<String>,
        model: impl Into<String>,
        task: Task,
        source: ModelSource,
    ) -> JobRequest {
        JobRequest {
            job_id: job_id.into(),
            model: model.into(),
            task,
            source,
        }
    }

    /// The task's kind.
    pub fn kind(&self) -> TaskKind {
        self.task.kind()
    }
}

/// What an engine produced. `llm` and `audio_stt` give [`EngineOutput::Json`] (sent as
/// `completeJson.result`); `image`, `audio_tts` and `video` give [`EngineOutput::Binary`]
/// (uploaded by HTTP multipart), PROTOCOL.md §3.5.
#[derive(Clone, Debug, PartialEq)]
pub enum EngineOutput {
    /// A JSON result.
    Json(Value),
    /// File bytes and the extension (no dot) they are reported with.
    Binary {
        /// The file's bytes.
        bytes: Vec<u8>,
        /// The extension, without the dot (`webp`, `png`, `wav`, ...).
        ext: String,
    },
}

impl EngineOutput {
    /// Whether this is a binary (multipart) result.
    pub fn is_binary(&self) -> bool {
        matches!(self, EngineOutput::Binary { .. })
    }

    /// The JSON value of a JSON result.
    pub fn as_json(&self) -> Option<&Value> {
        match self {
            EngineOutput::Json(v) => Some(v),
            EngineOutput::Binary { .. } => None,
        }
    }

    /// The bytes and extension of a binary result.
    pub fn as_binary(&self) -> Option<(&[u8], &str)> {
        match self {
            EngineOutput::Json(_) => None,
            EngineOutput::Binary { bytes, ext } => Some((bytes, ext)),
        }
    }
}

/// An inference backend.
///
/// Engines are shared between the session task and the blocking thread a job runs on, so
/// they are `Send + Sync`; the trait is object safe so the [`Router`](crate::Router) can
/// hold `Box<dyn Engine>`. `dispatch` is blocking: callers run it off the async runtime.
pub trait Engine: Send + Sync {
    /// Static routing id (`synthetic`, `sdcpp`, `llama`, `multi`, ...; PROTOCOL.md §9.1).
    fn name(&self) -> &'static str;

    /// The `modelSource.engine` values this engine serves. The router sends a job to the
    /// first engine whose list contains the job's `source.engine`.
    fn serves(&self) -> Vec<ModelEngine>;

    /// Advertised model ids per task kind (becomes `supportedModelsPerKind`). Kinds the
    /// engine does not serve are absent. May hold the engine's own wildcard
    /// (`<modelSource.engine>:*`); never the bare wildcard `"*"`.
    fn capabilities(&self) -> BTreeMap<TaskKind, Vec<String>>;

    /// Runs one job to completion (blocking).
    fn dispatch(&self, job: &JobRequest) -> Result<EngineOutput, EngineError>;

    /// `Ok` when this engine serves the job's `modelSource.engine`; otherwise the typed
    /// [`SourceMismatch`](crate::EngineErrorKind::SourceMismatch) error. Engines check it
    /// first in [`Engine::dispatch`]: a job routed to the wrong engine is a bug, and must
    /// never be answered with another engine's output.
    fn ensure_source(&self, job: &JobRequest) -> Result<(), EngineError> {
        if self.serves().contains(&job.source.engine) {
            Ok(())
        } else {
            Err(EngineError::source_mismatch(
                self.name(),
                &job.source.engine,
            ))
        }
    }

    /// Whether `model` is advertised for `kind` (exact match, no wildcard).
    fn supports(&self, kind: TaskKind, model: &str) -> bool {
        self.capabilities()
            .get(&kind)
            .is_some_and(|models| models.iter().any(|m| m == model))
    }

    /// The kinds with at least one advertised model, in wire order.
    fn kinds(&self) -> Vec<TaskKind> {
        self.capabilities()
            .into_iter()
            .filter(|(_, models)| !models.is_empty())
            .map(|(kind, _)| kind)
            .collect()
    }

    /// Every advertised model id, sorted and de-duplicated (`supportedModels`).
    fn flat_models(&self) -> Vec<String> {
        let mut flat: Vec<String> = self.capabilities().into_values().flatten().collect();
        flat.sort();
        flat.dedup();
        flat
    }

    /// `Ok` when this engine advertises `(kind, model)`; otherwise the typed
    /// [`UnsupportedKind`](crate::EngineErrorKind::UnsupportedKind) or
    /// [`UnsupportedModel`](crate::EngineErrorKind::UnsupportedModel) error.
    fn ensure_supports(&self, kind: TaskKind, model: &str) -> Result<(), EngineError> {
        let caps = self.capabilities();
        match caps.get(&kind) {
            Some(models) if !models.is_empty() => {
                if models.iter().any(|m| m == model) {
                    Ok(())
                } else {
                    Err(EngineError::unsupported_model(self.name(), kind, model))
                }
            }
            _ => Err(EngineError::unsupported_kind(self.name(), kind)),
        }
    }
}
