//! The `multi` engine: routes each job strictly by its `modelSource.engine`.

use std::collections::BTreeMap;

use studio_core::wire::{ModelEngine, TaskKind};

use crate::engine::{Engine, EngineOutput, JobRequest};
use crate::error::EngineError;
use crate::models::ModelStore;
use crate::settings::EngineSettings;
use crate::synthetic::SyntheticEngine;

/// Every compiled-in engine behind one [`Engine`] (routing id `multi`).
///
/// Routing (PROTOCOL.md §3.6, §9.1) is by `job.source.engine` only: the job goes to the
/// first engine whose [`Engine::serves`] lists that value. When none does the job fails with
/// [`EngineNotAvailable`](crate::EngineErrorKind::EngineNotAvailable) (not retryable). There
/// is no fallback to another engine, in particular never to the synthetic one: a synthetic
/// worker once "completed" real jobs with placeholder bytes.
pub struct Router {
    engines: Vec<Box<dyn Engine>>,
}

impl Router {
    /// A router over `engines`, in priority order (real engines first, synthetic last).
    pub fn new(engines: Vec<Box<dyn Engine>>) -> Router {
        Router { engines }
    }

    /// Every engine compiled into this build, with [`EngineSettings::default`] (models
    /// under `$TMPDIR/studio-worker-models`). The worker itself uses
    /// [`Router::with_settings`] with its config's values.
    pub fn new_default() -> Router {
        Router::with_settings(&EngineSettings::default())
    }

    /// Every engine compiled into this build, sharing one [`ModelStore`] rooted at
    /// `settings.models_root`. Real engines are registered here behind their cargo
    /// features, before the synthetic engine, which is always present and last.
    // Built by pushes so feature-gated engines slot in before the synthetic one.
    #[allow(clippy::vec_init_then_push)]
    pub fn with_settings(settings: &EngineSettings) -> Router {
        let store = ModelStore::new(settings.models_root.clone());
        let mut engines: Vec<Box<dyn Engine>> = Vec::new();
        // Real engines go here, each behind its feature, in routing priority order, each
        // given a clone of `store` (verified downloads) and what it needs of `settings`.
        #[cfg(feature = "llm")]
        engines.push(Box::new(crate::llm::LlmEngine::new(
            store.clone(),
            settings.model_memory_budget_bytes,
        )));
        #[cfg(feature = "whisper")]
        engines.push(Box::new(crate::whisper::WhisperEngine::new(
            store.clone(),
            settings,
        )));
        #[cfg(feature = "image-candle")]
        engines.push(Box::new(crate::diffusion::CandleImageEngine::new(
            store.clone(),
            settings,
        )));
        #[cfg(feature = "tts")]
        engines.push(Box::new(crate::piper::PiperEngine::new(
            store.clone(),
            settings,
        )));
        #[cfg(feature = "sd-cpp")]
        engines.push(Box::new(crate::sdcpp::SdCppEngine::new(store.clone())));
        // The operator's Gradio app (no model files: the app has its own).
        engines.push(Box::new(crate::gradio::GradioEngine::new(
            settings.gradio.clone(),
        )));
        let _ = &store;
        engines.push(Box::new(SyntheticEngine::new()));
        Router::new(engines)
    }

    /// Appends an engine (lowest priority so far).
    pub fn with_engine(mut self, engine: Box<dyn Engine>) -> Router {
        self.engines.push(engine);
        self
    }

    /// The engines, in routing order.
    pub fn engines(&self) -> &[Box<dyn Engine>] {
        &self.engines
    }

    /// The routing ids of the engines, in routing order.
    pub fn engine_names(&self) -> Vec<&'static str> {
        self.engines.iter().map(|e| e.name()).collect()
    }

    /// The engine that serves `source_engine`, or the `EngineNotAvailable` error.
    pub fn route(&self, source_engine: &ModelEngine) -> Result<&dyn Engine, EngineError> {
        self.engines
            .iter()
            .find(|e| e.serves().contains(source_engine))
            .map(|e| e.as_ref())
            .ok_or_else(|| EngineError::engine_not_available(source_engine))
    }

    /// For callers without a model source (local API): the first engine advertising exactly
    /// `(kind, model)`. No kind-only or wildcard match.
    pub fn find_by_model(&self, kind: TaskKind, model: &str) -> Option<&dyn Engine> {
        self.engines
            .iter()
            .find(|e| e.supports(kind, model))
            .map(|e| e.as_ref())
    }
}

impl Default for Router {
    fn default() -> Router {
        Router::new_default()
    }
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("engines", &self.engine_names())
            .finish()
    }
}

impl Engine for Router {
    fn name(&self) -> &'static str {
        "multi"
    }

    fn serves(&self) -> Vec<ModelEngine> {
        let mut all: Vec<ModelEngine> = Vec::new();
        for engine in &self.engines {
            for served in engine.serves() {
                if !all.contains(&served) {
                    all.push(served);
                }
            }
        }
        all
    }

    fn capabilities(&self) -> BTreeMap<TaskKind, Vec<String>> {
        let mut union: BTreeMap<TaskKind, Vec<String>> = BTreeMap::new();
        for engine in &self.engines {
            for (kind, models) in engine.capabilities() {
                union.entry(kind).or_default().extend(models);
            }
        }
        union.retain(|_, models| {
            models.sort();
            models.dedup();
            !models.is_empty()
        });
        union
    }

    fn dispatch(&self, job: &JobRequest) -> Result<EngineOutput, EngineError> {
        self.route(&job.source.engine)?.dispatch(job)
    }
}
