//! The candle Stable Diffusion image engine (`candle_image`, feature `image-candle`):
//! text-to-image `image` tasks on the CPU from diffusers-layout safetensors checkpoints.
//!
//! # Routing: `modelSource.engine == "candle-sd"` (an extension)
//!
//! The engine serves [`SOURCE_ENGINE`] (`candle-sd`, read by the wire codec as
//! [`ModelEngine::Other`]), not `sd-cpp`. A studio `sd-cpp` offer is written for sd-cli:
//! its files are single-file or GGUF checkpoints (often not Stable Diffusion at all, e.g.
//! Z-Image or Flux), its `text-encoder` role is an LLM for `--llm`, and its `cliDefaults`
//! are tuned for sd-cli's samplers. Claiming `sd-cpp` would route every such job here only
//! to fail it, and would shadow a real sd-cpp engine registered after this one. A studio
//! that wants candle to run a diffusers checkpoint says so with `candle-sd`; a worker
//! without this feature fails such a job `EngineNotAvailable` (not retryable), as for any
//! engine it lacks. The same choice was made for Whisper (`whisper`).
//!
//! # Model files (`modelSource.files`)
//!
//! | role | file | what |
//! |---|---|---|
//! | `diffusion-model` | `*.safetensors` | UNet weights (diffusers `unet/diffusion_pytorch_model.safetensors`) |
//! | `text-encoder` | `*.safetensors` | CLIP text model weights (transformers names, `text_model.…`) |
//! | `vae` | `*.safetensors` | AutoencoderKL weights (diffusers `vae/…`; encoder and decoder) |
//! | `model` | `…tokenizer.json` | the CLIP tokenizer, Hugging Face `tokenizers` format (**required**) |
//! | `model` | `…unet_config.json` | diffusers `unet/config.json` (default: SD 1.5) |
//! | `model` | `…vae_config.json` | diffusers `vae/config.json` (default: SD 1.5) |
//! | `model` | `…text_encoder_config.json` | transformers `text_encoder/config.json` (default: SD 1.5) |
//! | `model` | `…scheduler_config.json` | diffusers `scheduler/scheduler_config.json` (default: SD 1.5) |
//!
//! All files of a model land in one directory (`<models_root>/<model id>/`), so the
//! diffusers `config.json` files get distinct names: a `model` file is recognised by the
//! end of its name (`sd15-unet_config.json` is a UNet config). Other `model` files (say
//! `tokenizer_config.json`) are fetched and ignored; `model` weights (a single-file
//! checkpoint), `lora` and `text-encoder-vision` files are refused, as are weights in any
//! format other than safetensors (GGUF, `.ckpt`): this build runs split diffusers
//! safetensors only. Errors about files are not retryable. Which configs are accepted is
//! documented in [`config`]: Stable Diffusion 1.x and 2.x (epsilon or v-prediction)
//! text-to-image UNets; SDXL (added conditioning, two text encoders), inpainting UNets and
//! LCM-style guidance embeddings are refused with a message naming the key.
//!
//! Diffusers repositories ship the CLIP tokenizer as `vocab.json` + `merges.txt`; the
//! `tokenizer.json` of `openai/clip-vit-large-patch14` is the same tokenizer in the format
//! read here, and serves SD 2.x as well (same vocabulary; the `!` padding SD 2.x expects is
//! applied by this engine). The tokenizer must hold `<|startoftext|>` and `<|endoftext|>`.
//! Prompts are encoded without the tokenizer's own post-processing, framed by those two
//! tokens, cut to the text encoder's `max_position_embeddings` (77) and padded with the
//! tokenizer's padding token when its `padding` is set, else `!` for the SD 2.x encoder
//! and `<|endoftext|>` otherwise.
//!
//! # Task fields (PROTOCOL.md §3.3)
//!
//! * `prompt`; `negativePrompt` is the unconditional prompt of classifier-free guidance
//!   (the empty prompt when absent).
//! * `width` / `height`, `steps`, `cfgScale`, `samplingMethod`: the task's value, else the
//!   source's `cliDefaults` (whose width, height and steps count when non-zero), else
//!   512 / 512 / 20 and `euler_a`. Width and height must be multiples of 8 (and of the
//!   VAE's downscale factor), at most [`MAX_SIDE`], and small enough that the UNet's
//!   attention working set ([`Pipeline::attention_bytes`]: candle's attention is not
//!   sliced, so it grows with the fourth power of the side) fits the settings'
//!   `model_memory_budget_bytes` (SD 1.5 with guidance: 512×512 needs about 2 GiB,
//!   768×768 about 10 GiB); steps 1 to [`MAX_STEPS`]; `cfgScale` a finite number from 0
//!   to [`MAX_CFG_SCALE`]. Guidance runs when `cfgScale > 1` (the UNet sees the negative
//!   and the positive prompt in one batch of two); at 1 or below only the prompt is used,
//!   as in diffusers.
//! * `samplingMethod`: `euler_a` (default, as sd-cli), `euler`, `ddim` (η = 0) or
//!   `ddim_trailing`; others fail `InvalidInput` naming these ([`sampler`]).
//! * `seed`: the noise seed. Without one the seed is the first 8 bytes of SHA-256 of the
//!   task's JSON, so the same request always gives the same image. All noise comes from a
//!   seeded generator of this crate (candle's CPU device cannot be seeded), so a given
//!   request and model give identical bytes on every run of a worker build on a platform.
//! * `ext`: `webp` gives lossless WebP, `png` PNG. Other extensions (`jpg`, …) give PNG
//!   bytes reported with ext `png`: this build has no other encoder, and unlike the
//!   synthetic engine (which echoes the requested ext, PROTOCOL.md §9.3) a real engine
//!   reports what the bytes are, so nothing downstream has to sniff them (§8).
//! * `initImageUrl`, `maskUrl`, `refImageUrl` (img2img, inpainting, edits) are refused
//!   (`InvalidInput`); `denoise` is ignored (it only applies to img2img).
//!
//! # Loaded models
//!
//! The last pipeline stays loaded for the next job (in the engines' [`ModelCache`]), keyed
//! by the paths, sizes and modification times of its files, unless its f32 weights exceed
//! the settings' `model_memory_budget_bytes` (then it is released after its job). Weights are read into
//! memory and converted to f32 on the CPU.
//!
//! # Status
//!
//! CPU only (f32); the `cuda` feature does not reach this engine yet. The pipeline is
//! tested end to end on tiny random weights (`engines/tests/diffusion.rs`): every stage
//! runs, but no real checkpoint is in the tests (none small enough exists in the package
//! registries), so image quality with real SD 1.x / 2.x weights is unverified here.
//!
//! # Advertised models
//!
//! `image` advertises [`GENERIC_MODEL_ID`] plus every model id this engine has run; a
//! studio offers a job to a worker advertising its model id (or its engine's wildcard,
//! PROTOCOL.md §3.1), and jobs are routed by `modelSource.engine`. Any model id is run.
//!
//! [`ModelEngine::Other`]: studio_core::wire::ModelEngine::Other

pub mod config;
pub mod pipeline;
pub mod sampler;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use candle_core::Device;
use image::codecs::png::PngEncoder;
use image::codecs::webp::WebPEncoder;
use image::{ExtendedColorType, ImageEncoder};
use sha2::{Digest, Sha256};
use studio_core::wire::{CliDefaults, ImageTask, ModelEngine, ModelFile, Task, TaskKind};

use crate::engine::{Engine, EngineOutput, JobRequest};
use crate::error::EngineError;
use crate::model_cache::{FileIdentity, ModelCache};
use crate::models::ModelStore;
use crate::settings::EngineSettings;

pub use pipeline::{GenerateParams, ModelPaths, Pipeline, RgbImage};
pub use sampler::{Sampler, DEFAULT_SAMPLER, SAMPLER_NAMES};

/// The `modelSource.engine` value this engine serves.
pub const SOURCE_ENGINE: &str = "candle-sd";
/// The engine's routing id (PROTOCOL.md §9.2).
pub const NAME: &str = "candle_image";
/// The model id advertised for "any diffusers Stable Diffusion checkpoint".
pub const GENERIC_MODEL_ID: &str = "candle-sd";

/// The largest width or height accepted.
pub const MAX_SIDE: u32 = 2048;
/// The most denoising steps accepted.
pub const MAX_STEPS: u32 = 500;
/// The largest `cfgScale` accepted.
pub const MAX_CFG_SCALE: f32 = 100.0;
/// Width and height when neither the task nor `cliDefaults` sets them (PROTOCOL.md §3.3).
pub const DEFAULT_SIDE: u32 = 512;
/// Steps when neither the task nor `cliDefaults` sets them (PROTOCOL.md §3.3).
pub const DEFAULT_STEPS: u32 = 20;

/// Suffixes of the `model` files the engine reads (see the module docs).
pub const TOKENIZER_SUFFIX: &str = "tokenizer.json";
/// The UNet config's name suffix.
pub const UNET_CONFIG_SUFFIX: &str = "unet_config.json";
/// The VAE config's name suffix.
pub const VAE_CONFIG_SUFFIX: &str = "vae_config.json";
/// The text encoder config's name suffix.
pub const TEXT_ENCODER_CONFIG_SUFFIX: &str = "text_encoder_config.json";
/// The scheduler config's name suffix.
pub const SCHEDULER_CONFIG_SUFFIX: &str = "scheduler_config.json";

/// Which of a source's files plays which part (indices into `modelSource.files`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileLayout {
    /// `diffusion-model`.
    pub unet: usize,
    /// `text-encoder`.
    pub text_encoder: usize,
    /// `vae`.
    pub vae: usize,
    /// `model` … `tokenizer.json`.
    pub tokenizer: usize,
    /// `model` … `unet_config.json`.
    pub unet_config: Option<usize>,
    /// `model` … `vae_config.json`.
    pub vae_config: Option<usize>,
    /// `model` … `text_encoder_config.json`.
    pub text_encoder_config: Option<usize>,
    /// `model` … `scheduler_config.json`.
    pub scheduler_config: Option<usize>,
}

fn lower_ends_with(name: &str, suffix: &str) -> bool {
    name.to_ascii_lowercase().ends_with(suffix)
}

fn is_weights_name(name: &str) -> bool {
    [
        ".safetensors",
        ".gguf",
        ".ckpt",
        ".bin",
        ".pt",
        ".pth",
        ".sft",
    ]
    .iter()
    .any(|ext| lower_ends_with(name, ext))
}

impl FileLayout {
    /// Sorts `files` into their parts; refuses what this engine cannot run (not retryable).
    pub fn of(files: &[ModelFile]) -> Result<FileLayout, EngineError> {
        let refuse = |m: String| Err(EngineError::invalid_input(m));
        let mut weights: [Option<usize>; 3] = [None; 3];
        let mut configs: [Option<usize>; 5] = [None; 5];
        const WEIGHT_ROLES: [&str; 3] = ["diffusion-model", "text-encoder", "vae"];
        // No suffix is a suffix of another, so a name matches at most one of these.
        const CONFIGS: [&str; 5] = [
            TOKENIZER_SUFFIX,
            TEXT_ENCODER_CONFIG_SUFFIX,
            UNET_CONFIG_SUFFIX,
            VAE_CONFIG_SUFFIX,
            SCHEDULER_CONFIG_SUFFIX,
        ];
        for (i, file) in files.iter().enumerate() {
            let name = file.filename.as_str();
            if let Some(slot) = WEIGHT_ROLES.iter().position(|r| *r == file.role) {
                if !lower_ends_with(name, ".safetensors") {
                    return refuse(format!(
                        "`{name}` ({}): the candle image engine runs diffusers-layout \
                         safetensors only (split UNet, CLIP text encoder and VAE); this \
                         build cannot run other weight formats",
                        file.role
                    ));
                }
                if weights[slot].replace(i).is_some() {
                    return refuse(format!(
                        "modelSource.files has more than one `{}` file",
                        file.role
                    ));
                }
                continue;
            }
            match file.role.as_str() {
                "model" => {
                    if let Some(slot) = CONFIGS.iter().position(|s| lower_ends_with(name, s)) {
                        if configs[slot].replace(i).is_some() {
                            return refuse(format!(
                                "modelSource.files has more than one `…{}` file",
                                CONFIGS[slot]
                            ));
                        }
                    } else if is_weights_name(name) {
                        return refuse(format!(
                            "`{name}` (model): single-file checkpoints are not supported by \
                             the candle image engine; give the UNet, text encoder and VAE as \
                             `diffusion-model`, `text-encoder` and `vae` safetensors files"
                        ));
                    } else {
                        tracing::debug!("{NAME}: ignoring model file `{name}`");
                    }
                }
                "lora" => {
                    return refuse(format!(
                        "`{name}`: LoRA files are not supported by the candle image engine"
                    ))
                }
                other => {
                    return refuse(format!(
                        "`{name}`: file role `{other}` is not supported by the candle image \
                         engine (diffusion-model, text-encoder, vae, model)"
                    ))
                }
            }
        }
        let need = |slot: usize| {
            weights[slot].ok_or_else(|| {
                EngineError::invalid_input(format!(
                    "modelSource.files has no `{}` file (a diffusers safetensors {})",
                    WEIGHT_ROLES[slot],
                    ["UNet", "CLIP text encoder", "VAE"][slot]
                ))
            })
        };
        Ok(FileLayout {
            unet: need(0)?,
            text_encoder: need(1)?,
            vae: need(2)?,
            tokenizer: configs[0].ok_or_else(|| {
                EngineError::invalid_input(
                    "modelSource.files has no CLIP tokenizer: a `model` file named \
                     `…tokenizer.json` (Hugging Face tokenizers format)",
                )
            })?,
            text_encoder_config: configs[1],
            unet_config: configs[2],
            vae_config: configs[3],
            scheduler_config: configs[4],
        })
    }

    /// The local paths of the parts, given the paths of all the source's files (in order).
    pub fn paths(&self, paths: &[PathBuf]) -> Result<ModelPaths, EngineError> {
        let get = |i: usize| {
            paths.get(i).cloned().ok_or_else(|| {
                EngineError::io("the model store returned fewer files than the source names")
            })
        };
        let opt = |i: Option<usize>| i.map(get).transpose();
        Ok(ModelPaths {
            unet: get(self.unet)?,
            text_encoder: get(self.text_encoder)?,
            vae: get(self.vae)?,
            tokenizer: get(self.tokenizer)?,
            unet_config: opt(self.unet_config)?,
            vae_config: opt(self.vae_config)?,
            text_encoder_config: opt(self.text_encoder_config)?,
            scheduler_config: opt(self.scheduler_config)?,
        })
    }
}

/// The output format of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// Lossless WebP (`webp`).
    WebP,
    /// PNG (`png`, and every other requested ext).
    Png,
}

impl OutputFormat {
    /// The format for a requested ext (see the module docs).
    pub fn for_ext(ext: &str) -> OutputFormat {
        if ext.eq_ignore_ascii_case("webp") {
            OutputFormat::WebP
        } else {
            OutputFormat::Png
        }
    }

    /// The ext the bytes are reported with.
    pub fn ext(self) -> &'static str {
        match self {
            OutputFormat::WebP => "webp",
            OutputFormat::Png => "png",
        }
    }

    /// Encodes an image.
    pub fn encode(self, image: &RgbImage) -> Result<Vec<u8>, EngineError> {
        let mut out = Vec::new();
        let result = match self {
            OutputFormat::WebP => WebPEncoder::new_lossless(&mut out).write_image(
                &image.rgb,
                image.width,
                image.height,
                ExtendedColorType::Rgb8,
            ),
            OutputFormat::Png => PngEncoder::new(&mut out).write_image(
                &image.rgb,
                image.width,
                image.height,
                ExtendedColorType::Rgb8,
            ),
        };
        result.map_err(|e| EngineError::failed(format!("cannot encode the image: {e}"), false))?;
        Ok(out)
    }
}

/// The resolved parameters of an image task (task values, then `cliDefaults`, then the
/// protocol's defaults), validated. Fails `InvalidInput` (not retryable).
pub fn resolve_params(
    task: &ImageTask,
    defaults: &CliDefaults,
) -> Result<(GenerateParams, OutputFormat), EngineError> {
    for (name, value) in [
        ("initImageUrl", &task.init_image_url),
        ("maskUrl", &task.mask_url),
        ("refImageUrl", &task.ref_image_url),
    ] {
        if value.is_some() {
            return Err(EngineError::invalid_input(format!(
                "{name} is not supported by the candle image engine (text-to-image only)"
            )));
        }
    }
    let non_zero = |v: u32| (v != 0).then_some(v);
    let width = task
        .width
        .or(non_zero(defaults.width))
        .unwrap_or(DEFAULT_SIDE);
    let height = task
        .height
        .or(non_zero(defaults.height))
        .unwrap_or(DEFAULT_SIDE);
    for (name, value) in [("width", width), ("height", height)] {
        if value == 0 || !value.is_multiple_of(8) || value > MAX_SIDE {
            return Err(EngineError::invalid_input(format!(
                "{name} {value} must be a multiple of 8 from 8 to {MAX_SIDE}"
            )));
        }
    }
    let steps = task
        .steps
        .or(non_zero(defaults.steps))
        .unwrap_or(DEFAULT_STEPS);
    if !(1..=MAX_STEPS).contains(&steps) {
        return Err(EngineError::invalid_input(format!(
            "steps {steps} must be 1 to {MAX_STEPS}"
        )));
    }
    let cfg = task.cfg_scale.unwrap_or(defaults.cfg_scale);
    if !cfg.is_finite() || !(0.0..=MAX_CFG_SCALE).contains(&cfg) {
        return Err(EngineError::invalid_input(format!(
            "cfgScale {cfg} must be a number from 0 to {MAX_CFG_SCALE}"
        )));
    }
    let sampler = match task
        .sampling_method
        .as_deref()
        .or(defaults.sampling_method.as_deref())
    {
        Some(name) => Sampler::parse(name)?,
        None => DEFAULT_SAMPLER,
    };
    let seed = task.seed.unwrap_or_else(|| {
        let json = serde_json::to_string(task).unwrap_or_default();
        let d = Sha256::digest(json.as_bytes());
        u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
    });
    Ok((
        GenerateParams {
            prompt: task.prompt.clone(),
            negative_prompt: task.negative_prompt.clone().unwrap_or_default(),
            width: width as usize,
            height: height as usize,
            steps: steps as usize,
            cfg_scale: f64::from(cfg),
            sampler,
            seed,
        },
        OutputFormat::for_ext(task.ext()),
    ))
}

/// What the engine did for its last job (diagnostics and tests).
#[derive(Clone, Debug, PartialEq)]
pub struct RunReport {
    /// The job's model id.
    pub model: String,
    /// The parameters the image was generated with.
    pub params: GenerateParams,
    /// Denoising steps run (each one UNet evaluation of batch 2 when guided, 1 otherwise).
    pub steps_run: usize,
    /// Whether the pipeline was loaded for this job (false: reused).
    pub loaded: bool,
    /// Time spent loading (zero when reused).
    pub load_time: Duration,
    /// Time spent generating (text encoding, denoising, decoding).
    pub generate_time: Duration,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Pipelines the engine keeps loaded at once: the last one used.
pub const KEPT_MODELS: usize = 1;

/// The candle Stable Diffusion engine. Cheap to share; the loaded pipeline is immutable and
/// shared by the jobs that use it.
pub struct CandleImageEngine {
    store: ModelStore,
    device: Device,
    /// The last pipeline used, kept while its weights fit the budget.
    cache: ModelCache<Arc<Pipeline>>,
    advertised: Mutex<BTreeSet<String>>,
    last_run: Mutex<Option<RunReport>>,
}

impl std::fmt::Debug for CandleImageEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CandleImageEngine")
            .field("models_root", &self.store.root())
            .field("memory_budget_bytes", &self.cache.budget())
            .field("loads", &self.loads())
            .finish()
    }
}

impl CandleImageEngine {
    /// An engine whose models live in `store`, keeping the last pipeline loaded while its
    /// weights fit `settings.model_memory_budget_bytes`. Runs on
    /// [`compute_device`](crate::device::compute_device) (CUDA in a `cuda` build with a GPU,
    /// else the CPU).
    pub fn new(store: ModelStore, settings: &EngineSettings) -> CandleImageEngine {
        CandleImageEngine {
            store,
            device: crate::device::compute_device(),
            cache: ModelCache::new(settings.model_memory_budget_bytes, KEPT_MODELS),
            advertised: Mutex::new(BTreeSet::from([GENERIC_MODEL_ID.to_string()])),
            last_run: Mutex::new(None),
        }
    }

    /// How many times a pipeline was loaded (a reused pipeline does not count).
    pub fn loads(&self) -> u64 {
        self.cache.loads()
    }

    /// What the last successful job did.
    pub fn last_run(&self) -> Option<RunReport> {
        lock(&self.last_run).clone()
    }

    /// The pipeline for `paths`: the loaded one when its files are unchanged, else a fresh
    /// load (which replaces it). Returns whether it was loaded now.
    fn pipeline(&self, paths: &ModelPaths) -> Result<(Arc<Pipeline>, bool), EngineError> {
        let identity = FileIdentity::of(paths.all())?;
        let fetched = self.cache.get_or_load(identity, |_| {
            let pipeline = Pipeline::load(paths, &self.device)?;
            let charge = pipeline.weight_bytes();
            Ok((Arc::new(pipeline), charge))
        })?;
        if !fetched.kept {
            tracing::info!(
                "{NAME}: {} MiB of weights exceed the model memory budget ({} MiB); released \
                 after this job",
                fetched.model.weight_bytes() >> 20,
                self.cache.budget() >> 20
            );
        }
        Ok((fetched.model, fetched.loaded))
    }

    /// Runs an image task on model files already on disk (what [`Engine::dispatch`] does
    /// after fetching them): returns the encoded image and its ext.
    pub fn run(
        &self,
        model: &str,
        paths: &ModelPaths,
        task: &ImageTask,
        defaults: &CliDefaults,
    ) -> Result<EngineOutput, EngineError> {
        let (params, format) = resolve_params(task, defaults)?;
        let start = Instant::now();
        let (pipeline, loaded) = self.pipeline(paths)?;
        let load_time = if loaded {
            start.elapsed()
        } else {
            Duration::ZERO
        };
        tracing::info!(
            "{NAME}: {model}: {}x{}, {} {} steps, cfg {}, seed {}{}",
            params.width,
            params.height,
            params.steps,
            params.sampler.name(),
            params.cfg_scale,
            params.seed,
            if loaded {
                format!(" (loaded in {:.1} s)", load_time.as_secs_f64())
            } else {
                String::new()
            }
        );
        let attention = pipeline.attention_bytes(&params);
        if attention > self.cache.budget() {
            return Err(EngineError::invalid_input(format!(
                "{}x{} needs about {} MiB for attention on this model, more than the model \
                 memory budget ({} MiB); ask for a smaller image",
                params.width,
                params.height,
                attention >> 20,
                self.cache.budget() >> 20
            )));
        }
        let started = Instant::now();
        let mut steps_run = 0;
        let image = pipeline.generate(&params, |i| {
            steps_run = i + 1;
            tracing::debug!("{NAME}: step {}/{}", i + 1, params.steps);
        })?;
        let generate_time = started.elapsed();
        let bytes = format.encode(&image)?;
        tracing::info!(
            "{NAME}: {model}: done in {:.1} s ({} bytes of {})",
            generate_time.as_secs_f64(),
            bytes.len(),
            format.ext()
        );
        *lock(&self.last_run) = Some(RunReport {
            model: model.to_string(),
            params,
            steps_run,
            loaded,
            load_time,
            generate_time,
        });
        lock(&self.advertised).insert(model.to_string());
        Ok(EngineOutput::Binary {
            bytes,
            ext: format.ext().to_string(),
        })
    }
}

impl Engine for CandleImageEngine {
    fn name(&self) -> &'static str {
        NAME
    }

    fn serves(&self) -> Vec<ModelEngine> {
        vec![ModelEngine::Other(SOURCE_ENGINE.into())]
    }

    fn capabilities(&self) -> BTreeMap<TaskKind, Vec<String>> {
        let models = lock(&self.advertised).iter().cloned().collect();
        BTreeMap::from([(TaskKind::Image, models)])
    }

    fn dispatch(&self, job: &JobRequest) -> Result<EngineOutput, EngineError> {
        if !self.serves().contains(&job.source.engine) {
            return Err(EngineError::source_mismatch(NAME, &job.source.engine));
        }
        let Task::Image(task) = &job.task else {
            return Err(EngineError::unsupported_kind(NAME, job.kind()));
        };
        // Everything that can be checked without the files is checked before fetching them.
        resolve_params(task, &job.source.cli_defaults)?;
        let layout = FileLayout::of(&job.source.files)?;
        let paths = self.store.ensure(&job.model, &job.source.files)?;
        let paths = layout.paths(&paths)?;
        self.run(&job.model, &paths, task, &job.source.cli_defaults)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(role: &str, name: &str) -> ModelFile {
        ModelFile {
            role: role.into(),
            url: format!("https://example.com/{name}"),
            filename: name.into(),
            approx_bytes: None,
            sha256: None,
        }
    }

    fn full() -> Vec<ModelFile> {
        vec![
            file("model", "tokenizer.json"),
            file("diffusion-model", "unet.safetensors"),
            file("text-encoder", "text_encoder.safetensors"),
            file("vae", "vae.safetensors"),
            file("model", "sd-unet_config.json"),
            file("model", "vae_config.json"),
            file("model", "text_encoder_config.json"),
            file("model", "scheduler_config.json"),
            file("model", "tokenizer_config.json"),
        ]
    }

    #[test]
    fn layout_sorts_files() {
        let l = FileLayout::of(&full()).unwrap();
        assert_eq!((l.tokenizer, l.unet, l.text_encoder, l.vae), (0, 1, 2, 3));
        assert_eq!(l.unet_config, Some(4));
        assert_eq!(l.vae_config, Some(5));
        assert_eq!(l.text_encoder_config, Some(6));
        assert_eq!(l.scheduler_config, Some(7));
        let minimal = FileLayout::of(&full()[..4]).unwrap();
        assert_eq!(minimal.unet_config, None);
    }

    #[test]
    fn layout_refusals() {
        let check = |files: Vec<ModelFile>, needle: &str| {
            let e = FileLayout::of(&files).unwrap_err();
            assert!(!e.retryable(), "{e}");
            assert!(e.message.contains(needle), "{needle}: {e}");
        };
        check(full()[1..].to_vec(), "tokenizer");
        check(
            full().into_iter().filter(|f| f.role != "vae").collect(),
            "`vae`",
        );
        let mut gguf = full();
        gguf[1] = file("diffusion-model", "z_image_turbo-Q4_K.gguf");
        check(gguf, "safetensors only");
        let mut single = full();
        single.push(file("model", "v1-5-pruned.safetensors"));
        check(single, "single-file");
        let mut lora = full();
        lora.push(file("lora", "x.safetensors"));
        check(lora, "LoRA");
        let mut two = full();
        two.push(file("vae", "vae2.safetensors"));
        check(two, "more than one `vae`");
    }

    #[test]
    fn params_fall_back_to_cli_defaults() {
        let task = ImageTask {
            prompt: "a cat".into(),
            ..ImageTask::default()
        };
        let defaults = CliDefaults {
            cfg_scale: 4.5,
            steps: 6,
            width: 256,
            height: 128,
            sampling_method: Some("ddim".into()),
            ..CliDefaults::default()
        };
        let (p, f) = resolve_params(&task, &defaults).unwrap();
        assert_eq!((p.width, p.height, p.steps), (256, 128, 6));
        assert_eq!(p.cfg_scale, 4.5);
        assert_eq!(p.sampler, Sampler::Ddim);
        assert_eq!(f, OutputFormat::WebP);
        // Same task, same derived seed; a different prompt, another seed.
        assert_eq!(resolve_params(&task, &defaults).unwrap().0.seed, p.seed);
        let other = ImageTask {
            prompt: "a dog".into(),
            ..task.clone()
        };
        assert_ne!(resolve_params(&other, &defaults).unwrap().0.seed, p.seed);
        // Zero defaults fall through to the protocol's.
        let zero = CliDefaults {
            steps: 0,
            width: 0,
            height: 0,
            ..CliDefaults::default()
        };
        let (p, _) = resolve_params(&task, &zero).unwrap();
        assert_eq!((p.width, p.height, p.steps), (512, 512, 20));
        assert_eq!(p.sampler, DEFAULT_SAMPLER);
        // Task values win.
        let t = ImageTask {
            width: Some(64),
            steps: Some(2),
            cfg_scale: Some(1.0),
            seed: Some(9),
            ext: Some("jpg".into()),
            sampling_method: Some("euler".into()),
            ..task
        };
        let (p, f) = resolve_params(&t, &defaults).unwrap();
        assert_eq!((p.width, p.height, p.steps, p.seed), (64, 128, 2, 9));
        assert!(!p.guided());
        assert_eq!(p.sampler, Sampler::Euler);
        assert_eq!((f, f.ext()), (OutputFormat::Png, "png"));
    }

    #[test]
    fn bad_params_are_not_retryable() {
        let d = CliDefaults::default();
        for task in [
            ImageTask {
                width: Some(100),
                ..ImageTask::default()
            },
            ImageTask {
                height: Some(4096),
                ..ImageTask::default()
            },
            ImageTask {
                steps: Some(0),
                ..ImageTask::default()
            },
            ImageTask {
                cfg_scale: Some(f32::NAN),
                ..ImageTask::default()
            },
            ImageTask {
                sampling_method: Some("dpm++2m".into()),
                ..ImageTask::default()
            },
            ImageTask {
                init_image_url: Some("https://x/y.png".into()),
                ..ImageTask::default()
            },
        ] {
            let e = resolve_params(&task, &d).unwrap_err();
            assert!(!e.retryable(), "{e}");
        }
    }
}
