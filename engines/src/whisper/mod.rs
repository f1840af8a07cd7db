//! The Whisper speech-to-text engine (feature `whisper`): `audio_stt` tasks on the CPU
//! (the engine's own forward pass, [`native`]) or the CUDA device of a `cuda` build
//! (candle, see [`crate::device`] and [`Backend`]), from standard safetensors Whisper
//! checkpoints or CTranslate2 (`faster-whisper`) model directories.
//!
//! # Routing: `modelSource.engine == "whisper"` (an extension)
//!
//! PROTOCOL.md §3.6 has no `modelSource.engine` value for Whisper (the reference worker's
//! whisper-rs backend was not routable from offers, §9.2). This engine serves
//! `"whisper"`, which the wire codec reads as [`ModelEngine::Other`]`("whisper")`: a studio
//! that wants real transcription names it in the job's model source; a worker without this
//! feature fails such a job `EngineNotAvailable` (not retryable), as for any engine it lacks.
//!
//! # Models and capabilities
//!
//! The model comes from the job's `modelSource.files`, fetched and verified by
//! [`ModelStore::ensure`] into `<models_root>/<model id>/`. The directory must hold
//! `config.json`, `tokenizer.json` and either `model.safetensors` (Hugging Face layout) or
//! `model.bin` (CTranslate2 layout; `vocabulary.txt` may sit beside it and is not needed).
//! The last model used stays loaded for the next job (in the engines' [`ModelCache`],
//! keyed by the weights file's path, size and modification time), so a run of jobs loads
//! it once; a model larger than the settings' `model_memory_budget_bytes` (the bytes its
//! weights hold: half where the file stores half on the native path, f32 on candle's) is
//! released after each job.
//!
//! The advertised ids ([`ADVERTISED_MODELS`]: `whisper` and the standard checkpoint names)
//! are what a studio matches a job's model id against (PROTOCOL.md §3.1); the worker
//! routes by `modelSource.engine`, so the engine does not refuse a job whose `model` is not
//! in the list: any Whisper checkpoint a model source names is run.
//!
//! # Task fields (PROTOCOL.md §3.3)
//!
//! * `inputUrl`: fetched over https (plain http only to loopback), at most
//!   [`audio::MAX_INPUT_BYTES`]; WAV (PCM 8/16/24/32-bit or float, any channel count),
//!   mixed to mono and resampled to 16 kHz.
//! * `language`: a Whisper language code; detected from the first window when absent on
//!   multilingual models. English-only (`.en`) models accept only `en` (another language
//!   fails `InvalidInput`) and always report `en`.
//! * `translate`: the `<|translate|>` task on multilingual models; ignored with a warning
//!   on English-only models (their output is English already).
//! * `prompt`: encoded and fed as previous context (`<|startofprev|>`), biasing spelling
//!   and style.
//! * `timestamps`: `"segment"` (and absent) give segment timestamps; `"word"` is not
//!   supported and gives segment timestamps with a warning; anything else is `InvalidInput`.
//! * `vad`: no separate voice-activity detector; silent windows are skipped by Whisper's
//!   no-speech probability (a warning says so when `vad` is true).
//!
//! # Result (sent as `completeJson.result`)
//!
//! ```json
//! {"text": "the quick brown fox ...", "language": "en", "duration": 3.42,
//!  "segments": [{"id": 0, "start": 0.0, "end": 3.2, "text": "the quick brown fox ..."}]}
//! ```
//!
//! plus `"warnings": [...]` when an option was not honoured as asked. `duration` is the
//! input's length in seconds.
//!
//! [`ModelEngine::Other`]: studio_core::wire::ModelEngine::Other
//! [`ModelStore::ensure`]: crate::ModelStore::ensure

pub mod audio;
pub mod ct2;
pub mod decoder;
pub mod kernels;
pub mod mel;
pub mod model;
pub mod native;
pub mod tokenizer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use studio_core::wire::{AudioSttTask, ModelEngine, Task, TaskKind};

use crate::engine::{Engine, EngineOutput, JobRequest};
use crate::error::EngineError;
use crate::model_cache::{FileIdentity, FileStamp, ModelCache};
use crate::models::ModelStore;
use crate::settings::EngineSettings;

pub use model::{Backend, Segment, TranscribeOptions, Transcript, WeightsFormat, WhisperModel};

/// The `modelSource.engine` value this engine serves.
pub const SOURCE_ENGINE: &str = "whisper";

/// Model ids advertised for `audio_stt` (see the module docs).
pub const ADVERTISED_MODELS: [&str; 10] = [
    "whisper",
    "whisper-tiny",
    "whisper-tiny.en",
    "whisper-base",
    "whisper-base.en",
    "whisper-small",
    "whisper-small.en",
    "whisper-medium",
    "whisper-medium.en",
    "whisper-large-v3",
];

/// Models the engine keeps loaded at once: the last one used.
pub const KEPT_MODELS: usize = 1;

/// The Whisper engine. Cheap to share; jobs run one at a time per loaded model.
pub struct WhisperEngine {
    store: ModelStore,
    /// The last model used, kept while its weights (as held in memory) fit the budget.
    cache: ModelCache<Arc<Mutex<WhisperModel>>>,
}

impl std::fmt::Debug for WhisperEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhisperEngine")
            .field("models_root", &self.store.root())
            .finish()
    }
}

impl WhisperEngine {
    /// An engine whose models live in `store`, keeping the last model loaded while it
    /// fits `settings.model_memory_budget_bytes`.
    pub fn new(store: ModelStore, settings: &EngineSettings) -> WhisperEngine {
        WhisperEngine {
            store,
            cache: ModelCache::new(settings.model_memory_budget_bytes, KEPT_MODELS),
        }
    }

    /// The weights file of the model in `dir` with its stamp (a missing file has an empty
    /// stamp: loading it fails with the loader's own message).
    fn identity(dir: &Path) -> FileIdentity {
        let weights = match model::detect_format(dir) {
            Some(WeightsFormat::Safetensors) => dir.join("model.safetensors"),
            _ => dir.join("model.bin"),
        };
        let stamp = FileStamp::of(&weights).unwrap_or_default();
        FileIdentity::new(vec![(weights, stamp)])
    }

    /// The model in `dir`, loaded once and kept for the next call with the same directory
    /// (the previous model is released when another directory is asked for).
    pub fn model(&self, dir: &Path) -> Result<Arc<Mutex<WhisperModel>>, EngineError> {
        let fetched = self.cache.get_or_load(Self::identity(dir), |_| {
            let model = WhisperModel::load(dir)?;
            let charge = model.memory_bytes();
            Ok((Arc::new(Mutex::new(model)), charge))
        })?;
        Ok(fetched.model)
    }

    /// Whether a model is loaded now, and from where.
    pub fn loaded_dir(&self) -> Option<PathBuf> {
        let loaded = self.cache.loaded();
        let weights = loaded.last()?.path()?;
        weights.parent().map(Path::to_path_buf)
    }

    /// Runs an `audio_stt` task with the model in `dir` (fetch, decode, transcribe) and
    /// returns the result JSON. [`Engine::dispatch`] is this after the model download.
    pub fn transcribe_task(&self, dir: &Path, task: &AudioSttTask) -> Result<Value, EngineError> {
        let mut warnings = check_options(task)?;
        let bytes = audio::fetch_input(&task.input_url, audio::MAX_INPUT_BYTES)?;
        let (samples, duration) = audio::load_for_whisper(&bytes)?;
        drop(bytes);
        let model = self.model(dir)?;
        let mut model = model.lock().unwrap_or_else(|p| p.into_inner());
        let options = TranscribeOptions {
            language: task.language.clone(),
            translate: task.translate.unwrap_or(false),
            prompt: task.prompt.clone(),
        };
        let transcript = model.transcribe(&samples, &options)?;
        warnings.extend(transcript.warnings.iter().cloned());
        Ok(result_json(&transcript, duration, &warnings))
    }
}

/// Validates the options that need no model; returns warnings for those not honoured.
fn check_options(task: &AudioSttTask) -> Result<Vec<String>, EngineError> {
    let mut warnings = Vec::new();
    match task.timestamps.as_deref() {
        None | Some("segment") => {}
        Some("word") => warnings.push(
            "word timestamps are not supported by this engine; segment timestamps returned"
                .to_string(),
        ),
        Some(other) => {
            return Err(EngineError::invalid_input(format!(
                "timestamps `{other}` is not one of `segment`, `word`"
            )))
        }
    }
    if task.vad == Some(true) {
        warnings.push(
            "vad: no separate voice-activity detector; silent windows are skipped by the \
             model's no-speech probability"
                .to_string(),
        );
    }
    Ok(warnings)
}

/// The Whisper-shaped result JSON.
pub fn result_json(transcript: &Transcript, duration: f64, warnings: &[String]) -> Value {
    let segments: Vec<Value> = transcript
        .segments
        .iter()
        .map(|s| json!({"id": s.id, "start": s.start, "end": s.end, "text": s.text}))
        .collect();
    let mut out = json!({
        "text": transcript.text,
        "language": transcript.language,
        "duration": (duration * 1000.0).round() / 1000.0,
        "segments": segments,
    });
    if !warnings.is_empty() {
        out["warnings"] = json!(warnings);
    }
    out
}

impl Engine for WhisperEngine {
    fn name(&self) -> &'static str {
        "whisper"
    }

    fn serves(&self) -> Vec<ModelEngine> {
        vec![ModelEngine::Other(SOURCE_ENGINE.into())]
    }

    fn capabilities(&self) -> BTreeMap<TaskKind, Vec<String>> {
        BTreeMap::from([(
            TaskKind::AudioStt,
            ADVERTISED_MODELS.iter().map(|m| m.to_string()).collect(),
        )])
    }

    fn dispatch(&self, job: &JobRequest) -> Result<EngineOutput, EngineError> {
        self.ensure_source(job)?;
        let Task::AudioStt(task) = &job.task else {
            return Err(EngineError::unsupported_kind(self.name(), job.kind()));
        };
        if job.source.files.is_empty() {
            return Err(EngineError::invalid_input(
                "modelSource.files is empty: a whisper job names its model files \
                 (config.json, tokenizer.json and model.safetensors or model.bin)",
            ));
        }
        let paths = self.store.ensure(&job.model, &job.source.files)?;
        let dir = paths
            .first()
            .and_then(|p| p.parent())
            .ok_or_else(|| EngineError::io("the model store returned no file paths"))?
            .to_path_buf();
        self.transcribe_task(&dir, task).map(EngineOutput::Json)
    }
}
