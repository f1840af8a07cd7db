//! The LLM engine (`llama`, feature `llm`): runs `llm` tasks whose `modelSource.engine` is
//! `llama-cpp` on a llama-architecture GGUF, in process: with its own CPU forward pass
//! ([`cpu`], the default on the CPU) or candle's quantized llama (see [`Backend`]).
//!
//! # What it does with a job
//!
//! 1. The model file is the source's file with role `model`, else its first `.gguf` file;
//!    [`ModelStore::ensure`] makes it present and verified.
//! 2. The file is loaded (or found in the cache of loaded models, keyed by path and checked
//!    against the file's size and modification time). Its `general.architecture` must be
//!    `llama`; other architectures and unreadable files fail, not retryable.
//! 3. The prompt is the GGUF's chat template (`tokenizer.chat_template`, Jinja; ChatML when
//!    absent, see [`template`]) rendered with the task's `messages` (with `system` prepended
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
//! `jsonSchema` and `reasoning` are not acted upon (no grammar-constrained decoding yet).
//!
//! # Backends
//!
//! [`Backend::Native`] (the default when models run on the CPU) runs a model with
//! [`cpu`] when [`cpu::check`] accepts it (llama layout; every tensor F32, F16, Q4_0,
//! Q4_1 or Q8_0; no mixture of experts), keeping the weights as stored and multiplying them
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
//! The reference studio matches offers to workers by task kind only (`taskKinds`); the model
//! list is advisory and routing is by `modelSource.engine`. The engine therefore advertises,
//! for `llm`, the id [`GENERIC_MODEL_ID`] (`llama-cpp`, "any llama GGUF") plus the name of
//! every directory under the models root that held a `.gguf` file when the engine was built,
//! plus the model id of every job it has run since. It runs any job whose source is
//! `llama-cpp`, whatever its model id.
//!
//! # Device and threads
//!
//! The native path runs on the CPU, on one process-wide pool of one thread per core
//! (`STUDIO_LLM_THREADS` overrides it; see [`cpu`]). candle models load on
//! [`crate::device::compute_device`] (CUDA in a `cuda` build with a usable GPU, else the
//! CPU); candle's CPU kernels run on its own thread pool, one thread per physical core by
//! default (`RAYON_NUM_THREADS` overrides it).

pub mod cpu;
pub mod sampling;
pub mod template;
pub mod tokenizer;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::quantized_llama::{ModelWeights, MAX_SEQ_LEN};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use studio_core::wire::{LlmTask, ModelEngine, ModelFile, ModelSource, Task, TaskKind};

use crate::engine::{Engine, EngineOutput, JobRequest};
use crate::error::EngineError;
use crate::model_cache::{FileIdentity, ModelCache, UNLIMITED_MODELS};
use crate::models::ModelStore;

use sampling::{Sampler, SamplingParams};
use template::{ChatTemplate, TemplateInput};
use tokenizer::GgufTokenizer;

/// The model id advertised for "any llama-architecture GGUF".
pub const GENERIC_MODEL_ID: &str = "llama-cpp";

/// The longest context candle's quantized llama supports (its rope tables' length).
pub const MAX_CONTEXT: usize = MAX_SEQ_LEN;

/// Prompt tokens are fed in chunks of this many (bounds the attention scratch memory).
const PREFILL_CHUNK: usize = 512;

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

/// What a loaded model is charged against the budget, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryCharge {
    /// The GGUF file's size.
    pub file_bytes: u64,
    /// The f32 token-embedding table candle builds at load.
    pub embedding_bytes: u64,
    /// What converting the [`SLOW_TYPES`] weights to Q8_0 adds (charged only when the
    /// engine does it, see [`LlmEngine::with_requantize`]).
    pub requantize_extra_bytes: u64,
}

impl MemoryCharge {
    /// The total charge on the native path: the file's size (it holds the tensors as
    /// stored, the embeddings included, and no f32 copy of them).
    pub fn total_native(&self) -> u64 {
        self.file_bytes
    }

    /// The total charge on candle with the weights as stored.
    pub fn total(&self) -> u64 {
        self.file_bytes + self.embedding_bytes
    }

    /// The total charge when the slow types are converted to Q8_0.
    pub fn total_requantized(&self) -> u64 {
        self.total() + self.requantize_extra_bytes
    }
}

/// Weight types candle 0.11 multiplies with portable scalar code only (it has AVX2 / NEON
/// kernels for Q4_0, Q8_0 and the K-quants). Converting them to Q8_0 at load costs 1.7x
/// their bytes (Q4_1: 20 -> 34 bytes per 32 weights) and no meaningful precision (a 4-bit
/// grid re-expressed on an 8-bit one), and buys the SIMD kernels.
pub const SLOW_TYPES: [GgmlDType; 3] = [GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q5_1];

fn requantize_by_default() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn requantizable(dtype: GgmlDType, dims: &[usize]) -> bool {
    SLOW_TYPES.contains(&dtype) && dims.len() == 2 && dims[1].is_multiple_of(32)
}

/// An in-memory GGUF equal to `ct` (read from `file`) with the [`SLOW_TYPES`] matrices
/// converted to Q8_0, ready for `ModelWeights::from_gguf`.
fn requantized(
    ct: &gguf_file::Content,
    file: &mut File,
) -> candle_core::Result<(gguf_file::Content, Cursor<Vec<u8>>)> {
    rewrite_gguf(ct, file, |t| {
        if requantizable(t.dtype(), t.shape().dims()) {
            QTensor::quantize(&t.dequantize(&Device::Cpu)?, GgmlDType::Q8_0)
        } else {
            Ok(t)
        }
    })
}

/// An in-memory GGUF with `ct`'s metadata and every tensor of `ct` (read from `file`, in
/// name order) passed through `convert`, read back and ready for
/// `ModelWeights::from_gguf`. The engine converts slow quant types with it; tests build
/// reference models (e.g. every tensor as f32).
pub fn rewrite_gguf(
    ct: &gguf_file::Content,
    file: &mut (impl std::io::Read + std::io::Seek),
    mut convert: impl FnMut(QTensor) -> candle_core::Result<QTensor>,
) -> candle_core::Result<(gguf_file::Content, Cursor<Vec<u8>>)> {
    let mut names: Vec<&String> = ct.tensor_infos.keys().collect();
    names.sort();
    let mut tensors: Vec<(&str, QTensor)> = Vec::with_capacity(names.len());
    for name in names {
        let t = ct.tensor_infos[name].read(file, ct.tensor_data_offset, &Device::Cpu)?;
        tensors.push((name.as_str(), convert(t)?));
    }
    // The writer aligns to 32 bytes whatever the source said.
    let metadata: Vec<(&str, &gguf_file::Value)> = ct
        .metadata
        .iter()
        .filter(|(k, _)| k.as_str() != "general.alignment")
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
    let mut buf = Cursor::new(Vec::new());
    gguf_file::write(&mut buf, &metadata, &refs)?;
    drop(tensors);
    buf.set_position(0);
    let content = gguf_file::Content::read(&mut buf)?;
    Ok((content, buf))
}

/// Facts about a GGUF read from its header (no weights loaded).
#[derive(Clone, Debug, PartialEq)]
pub struct GgufInfo {
    /// `general.architecture`.
    pub architecture: String,
    /// `general.name`, if any.
    pub name: Option<String>,
    /// `<arch>.context_length`, if any.
    pub context_length: Option<usize>,
    /// The memory the model is charged when loaded.
    pub charge: MemoryCharge,
    /// Whether the native forward pass can run it ([`cpu::check`]: a llama model whose
    /// tensors are all F32 / F16 / Q4_0 / Q4_1 / Q8_0).
    pub native: bool,
}

/// What one generation produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    /// The text (cut before a stop string).
    pub text: String,
    /// `"stop"` or `"length"`.
    pub finish_reason: &'static str,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated (including the one that completed a stop string or ended the turn).
    pub completion_tokens: usize,
    /// Seconds spent on the prompt (prefill).
    pub prefill_secs: f64,
    /// Seconds spent generating after the first token.
    pub decode_secs: f64,
    /// The forward pass that ran.
    pub backend: Backend,
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

/// Reads the GGUF header of `path`.
fn read_header(path: &Path) -> Result<(File, gguf_file::Content), EngineError> {
    let mut file = File::open(path)
        .map_err(|e| EngineError::io(format!("cannot open model file {}: {e}", path.display())))?;
    let content = gguf_file::Content::read(&mut file).map_err(|e| {
        not_retryable(format!(
            "model file {} is not a readable GGUF file: {e}",
            path.display()
        ))
    })?;
    Ok((file, content))
}

fn header_info(path: &Path, ct: &gguf_file::Content) -> Result<GgufInfo, EngineError> {
    let md = &ct.metadata;
    let architecture = md
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .ok_or_else(|| {
            not_retryable(format!(
                "model file {} has no general.architecture metadata",
                path.display()
            ))
        })?;
    let name = md
        .get("general.name")
        .and_then(|v| v.to_string().ok())
        .cloned();
    let context_length = md
        .get(&format!("{architecture}.context_length"))
        .and_then(|v| v.to_u64().ok().or_else(|| v.to_u32().ok().map(u64::from)))
        .map(|v| v as usize);
    let file_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let embedding_bytes = ct
        .tensor_infos
        .get("token_embd.weight")
        .map(|t| t.shape.elem_count() as u64 * 4)
        .unwrap_or(0);
    let requantize_extra_bytes = ct
        .tensor_infos
        .values()
        .filter(|t| requantizable(t.ggml_dtype, t.shape.dims()))
        .map(|t| {
            let blocks = (t.shape.elem_count() / 32) as u64;
            let q8 = GgmlDType::Q8_0.type_size() as u64;
            let now = (t.ggml_dtype.type_size() * 32 / t.ggml_dtype.block_size()) as u64;
            blocks * q8.saturating_sub(now)
        })
        .sum();
    Ok(GgufInfo {
        architecture,
        name,
        context_length,
        charge: MemoryCharge {
            file_bytes,
            embedding_bytes,
            requantize_extra_bytes,
        },
        native: cpu::check(ct).is_ok(),
    })
}

/// Reads the header facts of the GGUF at `path` (architecture, context, memory charge).
pub fn inspect(path: &Path) -> Result<GgufInfo, EngineError> {
    let (_, ct) = read_header(path)?;
    header_info(path, &ct)
}

/// The seed of a task: the first 8 bytes (big-endian) of SHA-256 of its canonical JSON.
pub fn task_seed(task: &LlmTask) -> u64 {
    let canonical = serde_json::to_string(task).unwrap_or_default();
    let d = Sha256::digest(canonical.as_bytes());
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
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

/// Renders `task`'s prompt with `template` and `tokenizer`'s bos/eos texts and the
/// `chatTemplateKwargs` (defaults from `source`, then the task's).
pub fn render_prompt(
    template: &ChatTemplate,
    tokenizer: &GgufTokenizer,
    task: &LlmTask,
    source_kwargs: Option<&Value>,
) -> Result<String, EngineError> {
    let kwargs: Vec<&Value> = [source_kwargs, task.chat_template_kwargs.as_ref()]
        .into_iter()
        .flatten()
        .collect();
    template
        .render(&TemplateInput {
            messages: &task.messages,
            system: task.system.as_deref(),
            bos_token: tokenizer.bos_text(),
            eos_token: tokenizer.eos_text(),
            kwargs: &kwargs,
        })
        .map_err(EngineError::invalid_input)
}

/// The tokenizer and chat template of the GGUF at `path` (no weights loaded): what a
/// caller needs to count a prompt's tokens the way the engine does.
pub fn load_tokenizer(path: &Path) -> Result<(GgufTokenizer, ChatTemplate), EngineError> {
    let (_, ct) = read_header(path)?;
    tokenizer_and_template(path, &ct)
}

fn tokenizer_and_template(
    path: &Path,
    ct: &gguf_file::Content,
) -> Result<(GgufTokenizer, ChatTemplate), EngineError> {
    let tokenizer = GgufTokenizer::from_gguf(ct)
        .map_err(|e| not_retryable(format!("model file {}: {e}", path.display())))?;
    let template = ChatTemplate::new(
        ct.metadata
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .map(String::as_str),
    );
    Ok((tokenizer, template))
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

    /// The backend that runs a model with header `info`.
    pub fn backend_for(&self, info: &GgufInfo) -> Backend {
        if self.backend == Backend::Native && info.native {
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
                return Err(not_retryable(format!(
                    "model file {} is a `{}` GGUF; the llama engine runs llama-architecture \
                     GGUFs only",
                    key.display(),
                    info.architecture
                )));
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

/// The effective context: the model's, capped by `cliDefaults.contextSize` when given.
fn context_for(model: &LoadedModel, source: &ModelSource) -> usize {
    match source.cli_defaults.context_size {
        Some(n) if n > 0 => model.context_length.min(n as usize),
        _ => model.context_length,
    }
}

fn logits_of(t: &Tensor) -> Result<Vec<f32>, EngineError> {
    t.squeeze(0)
        .and_then(|t| t.to_dtype(DType::F32))
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(candle_err("reading logits"))
}

fn generate(
    model: &mut LoadedModel,
    task: &LlmTask,
    source: &ModelSource,
    params: SamplingParams,
) -> Result<Completion, EngineError> {
    let prompt = render_prompt(
        &model.template,
        &model.tokenizer,
        task,
        source.cli_defaults.chat_template_kwargs.as_ref(),
    )?;
    let prompt_ids = model
        .tokenizer
        .encode_prompt(&prompt)
        .map_err(not_retryable)?;
    if prompt_ids.is_empty() {
        return Err(EngineError::invalid_input("the rendered prompt is empty"));
    }
    let n_ctx = context_for(model, source);
    if prompt_ids.len() >= n_ctx {
        return Err(EngineError::invalid_input(format!(
            "the prompt is {} tokens long; the context holds {n_ctx} (prompt plus at least one \
             new token)",
            prompt_ids.len()
        )));
    }
    let stops: Vec<&[u8]> = task
        .stop
        .iter()
        .flatten()
        .map(|s| s.as_bytes())
        .filter(|s| !s.is_empty())
        .collect();
    let longest_stop = stops.iter().map(|s| s.len()).max().unwrap_or(0);
    let max_new = (task.max_tokens() as usize).min(n_ctx - prompt_ids.len());

    let mut runner = match &mut model.weights {
        Weights::Candle { weights, device } => Runner::Candle { weights, device },
        Weights::Native(m) => {
            // The cache holds the prompt and every token fed back (the last one sampled
            // is not).
            let ctx = prompt_ids.len() + max_new.saturating_sub(1);
            Runner::Native {
                session: m.session(ctx.max(1)),
                model: m,
            }
        }
    };
    let backend = runner.backend();
    let mut sampler = Sampler::new(params);
    let started = Instant::now();
    let mut pos = 0usize;
    let mut logits = Vec::new();
    for chunk in prompt_ids.chunks(PREFILL_CHUNK) {
        logits = runner.forward(chunk, pos, "prompt evaluation")?;
        pos += chunk.len();
    }
    let prefill_secs = started.elapsed().as_secs_f64();

    let decode_started = Instant::now();
    let mut bytes: Vec<u8> = Vec::new();
    let mut generated = 0usize;
    let mut finish_reason = "length";
    let mut cut: Option<usize> = None;
    while generated < max_new {
        let next = sampler.sample(&logits);
        generated += 1;
        if model.tokenizer.is_end_of_generation(next) {
            finish_reason = "stop";
            break;
        }
        let before = bytes.len();
        bytes.extend_from_slice(model.tokenizer.piece(next));
        if longest_stop > 0 {
            // Only a window ending in the new bytes can hold a stop string that was not
            // there before.
            let from = before.saturating_sub(longest_stop - 1);
            if let Some(at) = find_first_stop(&bytes[from..], &stops) {
                cut = Some(from + at);
                finish_reason = "stop";
                break;
            }
        }
        if generated == max_new {
            break;
        }
        logits = runner.forward(&[next], pos, "token evaluation")?;
        pos += 1;
    }
    if let Some(cut) = cut {
        bytes.truncate(cut);
    }
    Ok(Completion {
        text: String::from_utf8_lossy(&bytes).into_owned(),
        finish_reason,
        prompt_tokens: prompt_ids.len(),
        completion_tokens: generated,
        prefill_secs,
        decode_secs: decode_started.elapsed().as_secs_f64(),
        backend,
    })
}

/// One job's forward passes on either backend.
enum Runner<'a> {
    Candle {
        weights: &'a mut ModelWeights,
        device: &'a Device,
    },
    Native {
        model: &'a cpu::Model,
        session: cpu::Session,
    },
}

impl Runner<'_> {
    fn backend(&self) -> Backend {
        match self {
            Runner::Candle { .. } => Backend::Candle,
            Runner::Native { .. } => Backend::Native,
        }
    }

    /// Feeds `tokens` at `pos..`; the logits after the last one.
    fn forward(&mut self, tokens: &[u32], pos: usize, what: &str) -> Result<Vec<f32>, EngineError> {
        match self {
            Runner::Candle { weights, device } => {
                let input = Tensor::new(tokens, device)
                    .and_then(|t| t.unsqueeze(0))
                    .map_err(candle_err(what))?;
                let out = weights.forward(&input, pos).map_err(candle_err(what))?;
                logits_of(&out)
            }
            Runner::Native { model, session } => model
                .forward(session, tokens, pos)
                .map_err(|e| not_retryable(format!("{what}: {e}"))),
        }
    }
}

/// The earliest position in `hay` where one of `stops` starts.
fn find_first_stop(hay: &[u8], stops: &[&[u8]]) -> Option<usize> {
    stops
        .iter()
        .filter_map(|s| hay.windows(s.len()).position(|w| w == *s))
        .min()
}

/// The `chat.completion` JSON of `completion`.
pub fn completion_json(model: &str, task: &LlmTask, completion: &Completion) -> Value {
    let mut h = Sha256::new();
    h.update(model.as_bytes());
    h.update([0]);
    h.update(serde_json::to_string(task).unwrap_or_default().as_bytes());
    let id = studio_core::wire::hex(&h.finalize()[..8]);
    json!({
        "id": format!("chatcmpl-{id}"),
        "object": "chat.completion",
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": completion.text},
            "finish_reason": completion.finish_reason,
        }],
        "usage": {
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens,
        },
    })
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
    fn stop_search_finds_the_earliest() {
        let stops: Vec<&[u8]> = vec![b"END", b"\n\n"];
        assert_eq!(find_first_stop(b"abc\n\nEND", &stops), Some(3));
        assert_eq!(find_first_stop(b"abcEND\n\n", &stops), Some(3));
        assert_eq!(find_first_stop(b"abc", &stops), None);
    }

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

    #[test]
    fn seed_depends_on_the_whole_task() {
        let task = LlmTask {
            messages: vec![studio_core::wire::ChatMessage {
                role: "user".into(),
                content: "hi".into(),
            }],
            ..Default::default()
        };
        let mut other = task.clone();
        other.temperature = Some(0.9);
        assert_eq!(task_seed(&task), task_seed(&task.clone()));
        assert_ne!(task_seed(&task), task_seed(&other));
    }
}
