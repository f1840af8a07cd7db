//! The LLM engine (`llama`, feature `llm`): runs `llm` tasks whose `modelSource.engine` is
//! `llama-cpp` on a llama, qwen2, qwen3 or gemma3 GGUF, in process: with its own CPU
//! forward pass ([`cpu`], the default on the CPU, and the only one for the families other
//! than llama) or candle's quantized llama (see [`Backend`]).
//!
//! # What it does with a job
//!
//! 1. The model file is the source's file with role `model`, else its first `.gguf` file;
//!    [`ModelStore::ensure`] makes it present and verified.
//! 2. The file is loaded (or found in the cache of loaded models, keyed by path and checked
//!    against the file's size and modification time). Its `general.architecture` must be
//!    `llama`, `qwen2`, `qwen3` or `gemma3` (the last three on the native path only); other
//!    architectures and unreadable files fail, not retryable.
//! 3. The prompt is the GGUF's chat template (`tokenizer.chat_template`, Jinja; Gemma's turn
//!    format or ChatML when absent, see [`template`]) rendered with the task's `messages` (with `system` prepended
//!    as a system message), `add_generation_prompt = true`, the bos/eos token texts and the
//!    `chatTemplateKwargs` of the source's `cliDefaults` overridden by the task's. It is
//!    tokenized with the GGUF's own vocabulary ([`tokenizer`]).
//! 4. Generation: `maxTokens` (default 512) new tokens at most; `temperature` 0 is greedy,
//!    otherwise temperature + `topP` sampling ([`sampling`]) seeded with the first 8 bytes of
//!    SHA-256 of the canonical task JSON, so the same request gives the same text. It stops
//!    at an end-of-generation token (`finish_reason: "stop"`), at the first `stop` string
//!    (the text is cut before it; `"stop"`), or when `maxTokens` or the context is used up
//!    (`"length"`).
//! 5. The context is the smallest of the GGUF's `llama.context_length`, the source's
//!    `cliDefaults.contextSize` and candle's rope table ([`MAX_CONTEXT`], applied to both
//!    backends so they accept the same jobs); a prompt that does not leave room for one new
//!    token fails (invalid input, not retryable).
//!
//! The result is an OpenAI `chat.completion` object: `id` (`chatcmpl-` + 16 hex digits of
//! SHA-256 of the model id and the task, so it is deterministic too), `object`, `model` (the
//! job's model id), `choices[0]` (`index`, `message {role: "assistant", content}`,
//! `finish_reason`) and `usage` (`prompt_tokens`, `completion_tokens`, `total_tokens`, the
//! real token counts). There is no `created` field: the output depends on the request only.
//!
//! `jsonSchema` constrains the output to JSON valid against the schema ([`grammar`]:
//! llguidance masks the tokens that cannot continue such a value; generation stops when the
//! value is complete); a schema that cannot be compiled fails, not retryable. `reasoning`
//! is not acted upon.
//!
//! # Backends
//!
//! [`Backend::Native`] (the default when models run on the CPU) runs a model with
//! [`cpu`] when [`cpu::check`] accepts it (llama, qwen2, qwen3 or gemma3 layout; every
//! matrix F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K or Q6_K; no mixture of experts), keeping the weights as stored and multiplying them
//! with SIMD kernels on a persistent thread pool. Other models, and every model under
//! [`Backend::Candle`] (the default on a GPU), run on candle's quantized llama on
//! [`crate::device::compute_device`]. [`LlmEngine::with_backend`] overrides the choice;
//! [`Completion::backend`] tells which one ran.
//!
//! # Loaded models and the memory budget
//!
//! A loaded model stays loaded for the next job (in the engines' [`ModelCache`], keyed by
//! the file's path, size and modification time). On the native path it is charged its file
//! size (the tensors as stored, embeddings included: only looked-up rows are dequantized).
//! On candle it is charged its file size plus its dequantized token-embedding table (candle
//! keeps the embeddings as f32), plus what the Q8_0 conversion of [`SLOW_TYPES`] weights
//! adds when the engine does it (see [`LlmEngine::with_requantize`]: candle has no SIMD
//! kernel for Q4_1 / Q5_0 / Q5_1, so on AVX2 machines those weights are converted to Q8_0
//! at load by default). Loading a model evicts the least recently used others until the
//! total fits the budget, and a model whose charge alone exceeds the budget fails (not
//! retryable: the same worker cannot run it). The KV cache is per job and released after
//! it (native: f32, sized for the prompt plus `maxTokens`, its pages touched as it fills).
//!
//! # Advertised models
//!
//! A studio offers a job only to a worker that advertises the job's model id or the wildcard
//! of its engine (PROTOCOL.md §3.1); routing is by `modelSource.engine`. The engine
//! therefore advertises, for `llm`, the wildcard [`GENERIC_MODEL_ID`] (`llama-cpp:*`, any
//! llama-cpp model) plus the name of every directory under the models root that held a
//! `.gguf` file when the engine was built, plus the model id of every job it has run since.
//! It runs any job whose source is `llama-cpp`, whatever its model id.
//!
//! # Device and threads
//!
//! The native path runs on the CPU, on one process-wide pool of one thread per core
//! (`STUDIO_LLM_THREADS` overrides it; see [`cpu`]). candle models load on
//! [`crate::device::compute_device`] (CUDA in a `cuda` build with a usable GPU, else the
//! CPU); candle's CPU kernels run on its own thread pool, one thread per physical core by
//! default (`RAYON_NUM_THREADS` overrides it).

pub mod cpu;
mod generate;
mod gguf;
mod grammar;
pub mod sampling;
mod spm;
pub mod template;
pub mod tokenizer;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::Device;
use candle_transformers::models::quantized_llama::{ModelWeights, MAX_SEQ_LEN};
use studio_core::wire::{LlmTask, ModelEngine, ModelFile, ModelSource, Task, TaskKind};

use crate::engine::{Engine, EngineOutput, JobRequest};
use crate::error::EngineError;
use crate::model_cache::{FileIdentity, ModelCache, UNLIMITED_MODELS};
use crate::models::ModelStore;

use sampling::SamplingParams;
use template::ChatTemplate;
use tokenizer::GgufTokenizer;

use generate::generate;
use gguf::{header_info, read_header, requantize_by_default, requantized, tokenizer_and_template};

pub use generate::{completion_json, render_prompt, task_seed, Completion};
pub use gguf::{inspect, load_tokenizer, rewrite_gguf, GgufInfo, MemoryCharge, SLOW_TYPES};

/// The model id advertised for "any llama-cpp model": the wildcard `llama-cpp:*` a studio
/// matches against any job whose `modelSource.engine` is `llama-cpp` (PROTOCOL.md §3.1).
pub const GENERIC_MODEL_ID: &str = "llama-cpp:*";

/// The longest context candle's quantized llama supports (its rope tables' length).
pub const MAX_CONTEXT: usize = MAX_SEQ_LEN;

/// The engine's routing id (PROTOCOL.md §9.1).
const NAME: &str = "llama";

/// The llama engine. Cheap to share; one job runs at a time per loaded model.
pub struct LlmEngine {
    store: ModelStore,
    cache: ModelCache<Arc<Mutex<LoadedModel>>>,
    advertised: Mutex<BTreeSet<String>>,
    requantize: bool,
    backend: Backend,
}

/// Which forward pass runs a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// The engine's own CPU forward pass ([`cpu`]) when the model's tensor types and
    /// layout are supported ([`GgufInfo::native`]), candle otherwise.
    Native,
    /// candle-transformers' quantized llama, on [`crate::device::compute_device`].
    Candle,
}

impl Backend {
    /// `"native"` or `"candle"`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Native => "native",
            Backend::Candle => "candle",
        }
    }
}

impl std::fmt::Debug for LlmEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmEngine")
            .field("models_root", &self.store.root())
            .field("budget", &self.budget())
            .field("loads", &self.loads())
            .finish()
    }
}

enum Weights {
    Candle {
        weights: ModelWeights,
        device: Device,
    },
    Native(cpu::Model),
}

struct LoadedModel {
    weights: Weights,
    tokenizer: GgufTokenizer,
    template: ChatTemplate,
    context_length: usize,
    /// The vocabulary compiled for `jsonSchema`, built on the first job that has one.
    grammars: Option<Arc<grammar::Grammars>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn not_retryable(message: impl Into<String>) -> EngineError {
    EngineError::failed(message, false)
}

fn candle_err(context: &str) -> impl Fn(candle_core::Error) -> EngineError + '_ {
    move |e| not_retryable(format!("{context}: {e}"))
}

/// The file of `source` that holds the model: role `model`, else the first `.gguf`.
pub fn model_file(source: &ModelSource) -> Option<usize> {
    source
        .files
        .iter()
        .position(|f| f.role == "model")
        .or_else(|| {
            source
                .files
                .iter()
                .position(|f| f.filename.to_ascii_lowercase().ends_with(".gguf"))
        })
}

impl LlmEngine {
    /// An engine fetching models through `store` and keeping loaded models within
    /// `memory_budget_bytes`.
    pub fn new(store: ModelStore, memory_budget_bytes: u64) -> LlmEngine {
        let mut advertised = BTreeSet::new();
        advertised.insert(GENERIC_MODEL_ID.to_string());
        advertised.extend(cached_gguf_models(store.root()));
        LlmEngine {
            store,
            cache: ModelCache::new(memory_budget_bytes, UNLIMITED_MODELS),
            advertised: Mutex::new(advertised),
            requantize: requantize_by_default() && crate::device::compute_device().is_cpu(),
            backend: if crate::device::compute_device().is_cpu() {
                Backend::Native
            } else {
                Backend::Candle
            },
        }
    }

    /// The same engine running models with `backend` ([`Backend::Native`] still falls back
    /// to candle for models it does not support). The default is [`Backend::Native`] when
    /// models run on the CPU and [`Backend::Candle`] on a GPU.
    pub fn with_backend(mut self, backend: Backend) -> LlmEngine {
        self.backend = backend;
        self
    }

    /// The backend asked for ([`Completion::backend`] tells which one ran).
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The backend that runs a model with header `info`: architectures other than llama
    /// run natively whatever the engine's backend (candle's quantized llama cannot run
    /// them).
    pub fn backend_for(&self, info: &GgufInfo) -> Backend {
        if info.native && (self.backend == Backend::Native || info.architecture != "llama") {
            Backend::Native
        } else {
            Backend::Candle
        }
    }

    /// The same engine, converting (`true`) or not (`false`) weights of the types candle
    /// has no SIMD kernel for ([`SLOW_TYPES`]) to Q8_0 at load, for models that candle runs
    /// (the native path always keeps the stored types). The default is on when the models
    /// run on a CPU with AVX2 + FMA (candle's Q8_0 kernels need them) and off elsewhere
    /// (other CPUs, CUDA).
    pub fn with_requantize(mut self, on: bool) -> LlmEngine {
        self.requantize = on;
        self
    }

    /// Whether slow weight types are converted to Q8_0 at load (for models candle runs).
    pub fn requantizes(&self) -> bool {
        self.requantize
    }

    /// What a model with header `info` is charged against the budget by this engine.
    pub fn charge(&self, info: &GgufInfo) -> u64 {
        if self.backend_for(info) == Backend::Native {
            info.charge.total_native()
        } else if self.requantize {
            info.charge.total_requantized()
        } else {
            info.charge.total()
        }
    }

    /// The memory budget for loaded models, bytes.
    pub fn budget(&self) -> u64 {
        self.cache.budget()
    }

    /// How many times a model has been loaded from disk (cache misses) so far.
    pub fn loads(&self) -> u64 {
        self.cache.loads()
    }

    /// The files of the models loaded now, least recently used first.
    pub fn loaded(&self) -> Vec<PathBuf> {
        let loaded = self.cache.loaded();
        loaded
            .iter()
            .filter_map(|id| id.path())
            .map(Path::to_path_buf)
            .collect()
    }

    /// Drops every loaded model.
    pub fn unload_all(&self) {
        self.cache.clear();
    }

    /// Runs `job` on the GGUF at `path` (the model file already resolved, e.g. by
    /// [`ModelStore::ensure`]). [`Engine::dispatch`] is this after resolving the file.
    pub fn run_file(&self, job: &JobRequest, path: &Path) -> Result<EngineOutput, EngineError> {
        let Task::Llm(task) = &job.task else {
            return Err(EngineError::unsupported_kind(NAME, job.kind()));
        };
        let completion = self.complete(task, &job.source, path)?;
        lock(&self.advertised).insert(job.model.clone());
        Ok(EngineOutput::Json(completion_json(
            &job.model,
            task,
            &completion,
        )))
    }

    /// Generates the completion of `task` with the GGUF at `path` (the engine's core, with
    /// timings; [`run_file`](Self::run_file) wraps it into the `chat.completion` JSON).
    pub fn complete(
        &self,
        task: &LlmTask,
        source: &ModelSource,
        path: &Path,
    ) -> Result<Completion, EngineError> {
        let params = SamplingParams::new(task.temperature(), task.top_p, task_seed(task))
            .map_err(EngineError::invalid_input)?;
        let model = self.model(path)?;
        let mut model = lock(&model);
        let result = generate(&mut model, task, source, params);
        if let Weights::Candle { weights, .. } = &mut model.weights {
            weights.clear_kv_cache();
        }
        result
    }

    /// The loaded model for `path`, loading it (and evicting others) when needed.
    fn model(&self, path: &Path) -> Result<Arc<Mutex<LoadedModel>>, EngineError> {
        let key = std::fs::canonicalize(path)
            .map_err(|e| EngineError::io(format!("model file {}: {e}", path.display())))?;
        let identity = FileIdentity::of([key.as_path()])?;
        let fetched = self.cache.get_or_load(identity, |room| {
            let (mut file, ct) = read_header(&key)?;
            let info = header_info(&key, &ct)?;
            if info.architecture != "llama" {
                if cpu::Arch::from_name(&info.architecture).is_none() {
                    return Err(not_retryable(format!(
                        "model file {} is a `{}` GGUF; the llama engine runs llama, qwen2, \
                         qwen3 and gemma3 GGUFs",
                        key.display(),
                        info.architecture
                    )));
                }
                if let Err(why) = cpu::check(&ct) {
                    return Err(not_retryable(format!(
                        "model file {}: the native forward pass cannot run this `{}` GGUF \
                         ({why}), and candle runs llama GGUFs only",
                        key.display(),
                        info.architecture
                    )));
                }
            }
            let charge = self.charge(&info);
            room.reserve(charge, &format!("model file {}", key.display()))?;
            let (tokenizer, template) = tokenizer_and_template(&key, &ct)?;
            let context_length = info.context_length.unwrap_or(MAX_CONTEXT).min(MAX_CONTEXT);
            let load_err = |e: candle_core::Error| {
                not_retryable(format!("cannot load model file {}: {e}", key.display()))
            };
            let weights = if self.backend_for(&info) == Backend::Native {
                Weights::Native(cpu::Model::load(&ct, &mut file).map_err(|e| {
                    not_retryable(format!("cannot load model file {}: {e}", key.display()))
                })?)
            } else {
                let device = crate::device::compute_device();
                let weights = if self.requantize {
                    let (ct, mut buf) = requantized(&ct, &mut file).map_err(load_err)?;
                    ModelWeights::from_gguf(ct, &mut buf, &device)
                } else {
                    ModelWeights::from_gguf(ct, &mut file, &device)
                }
                .map_err(load_err)?;
                Weights::Candle { weights, device }
            };
            let model = LoadedModel {
                weights,
                tokenizer,
                template,
                context_length,
                grammars: None,
            };
            Ok((Arc::new(Mutex::new(model)), charge))
        })?;
        Ok(fetched.model)
    }
}

/// Names of the directories directly under `root` that hold a `.gguf` file.
fn cached_gguf_models(root: &Path) -> Vec<String> {
    let Ok(dirs) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for dir in dirs.flatten() {
        let Ok(files) = std::fs::read_dir(dir.path()) else {
            continue;
        };
        let has_gguf = files.flatten().any(|f| {
            f.file_name()
                .to_str()
                .is_some_and(|n| n.to_ascii_lowercase().ends_with(".gguf"))
        });
        if has_gguf {
            if let Some(name) = dir.file_name().to_str() {
                out.push(name.to_string());
            }
        }
    }
    out
}

impl Engine for LlmEngine {
    fn name(&self) -> &'static str {
        NAME
    }

    fn serves(&self) -> Vec<ModelEngine> {
        vec![ModelEngine::LlamaCpp]
    }

    fn capabilities(&self) -> BTreeMap<TaskKind, Vec<String>> {
        let models: Vec<String> = lock(&self.advertised).iter().cloned().collect();
        BTreeMap::from([(TaskKind::Llm, models)])
    }

    fn dispatch(&self, job: &JobRequest) -> Result<EngineOutput, EngineError> {
        if job.source.engine != ModelEngine::LlamaCpp {
            return Err(EngineError::source_mismatch(NAME, &job.source.engine));
        }
        if job.kind() != TaskKind::Llm {
            return Err(EngineError::unsupported_kind(NAME, job.kind()));
        }
        let index = model_file(&job.source).ok_or_else(|| {
            EngineError::invalid_input(
                "the llama-cpp model source names no model file (no file with role `model` \
                 and no .gguf file)",
            )
        })?;
        let files: Vec<ModelFile> = job.source.files.clone();
        let paths = self.store.ensure(&job.model, &files)?;
        let path = paths.get(index).ok_or_else(|| {
            EngineError::io("the model store returned fewer files than the source names")
        })?;
        self.run_file(job, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_file_prefers_role_model() {
        let file = |role: &str, name: &str| ModelFile {
            role: role.into(),
            url: format!("https://example.invalid/{name}"),
            filename: name.into(),
            approx_bytes: None,
            sha256: None,
        };
        let mut source = ModelSource {
            engine: ModelEngine::LlamaCpp,
            files: vec![file("lora", "a.gguf"), file("model", "b.gguf")],
            cli_defaults: Default::default(),
        };
        assert_eq!(model_file(&source), Some(1));
        source.files[1].role = "vae".into();
        assert_eq!(model_file(&source), Some(0));
        source.files = vec![file("vae", "x.bin")];
        assert_eq!(model_file(&source), None);
    }
}
