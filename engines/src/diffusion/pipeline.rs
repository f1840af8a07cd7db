//! A loaded Stable Diffusion pipeline: CLIP tokenizer and text encoder, UNet, VAE decoder
//! and noise schedule, and the text-to-image loop over them.

use std::path::{Path, PathBuf};

use candle_core::safetensors::SliceSafetensors;
use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::clip::text_model::ClipTextTransformer;
use candle_transformers::models::stable_diffusion::clip as sd_clip;
use candle_transformers::models::stable_diffusion::unet_2d::UNet2DConditionModel;
use candle_transformers::models::stable_diffusion::vae::AutoEncoderKL;
use serde_json::Value;
use tokenizers::Tokenizer;

use super::config::{self, SchedulerConfig, TextActivation, TextConfig, UNetConfig, VaeConfig};
use super::sampler::{NoiseRng, Sampler, Sampling};
use crate::error::EngineError;

/// The CLIP start-of-text token.
pub const BOS_TOKEN: &str = "<|startoftext|>";
/// The CLIP end-of-text token (also the padding token of SD 1.x tokenizers).
pub const EOS_TOKEN: &str = "<|endoftext|>";
/// The padding token of the SD 2.x (OpenCLIP) tokenizer.
pub const SD2_PAD_TOKEN: &str = "!";

/// The files of one model, on local disk.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ModelPaths {
    /// UNet weights (safetensors, diffusers names).
    pub unet: PathBuf,
    /// CLIP text model weights (safetensors, transformers names: `text_model.…`).
    pub text_encoder: PathBuf,
    /// VAE weights (safetensors, diffusers names; encoder and decoder).
    pub vae: PathBuf,
    /// The CLIP tokenizer (Hugging Face `tokenizer.json`).
    pub tokenizer: PathBuf,
    /// `unet/config.json`, or the SD 1.5 UNet.
    pub unet_config: Option<PathBuf>,
    /// `vae/config.json`, or the SD 1.5 VAE.
    pub vae_config: Option<PathBuf>,
    /// `text_encoder/config.json`, or the SD 1.5 text encoder.
    pub text_encoder_config: Option<PathBuf>,
    /// `scheduler/scheduler_config.json`, or the SD 1.5 schedule.
    pub scheduler_config: Option<PathBuf>,
}

impl ModelPaths {
    /// Every file, weights first.
    pub fn all(&self) -> Vec<&Path> {
        let mut all: Vec<&Path> = vec![&self.unet, &self.text_encoder, &self.vae, &self.tokenizer];
        all.extend(
            [
                &self.unet_config,
                &self.vae_config,
                &self.text_encoder_config,
                &self.scheduler_config,
            ]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path),
        );
        all
    }
}

/// What one generation is asked to do (already validated against the task).
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateParams {
    /// The prompt.
    pub prompt: String,
    /// The unconditional prompt of classifier-free guidance (empty when none).
    pub negative_prompt: String,
    /// Image width in pixels.
    pub width: usize,
    /// Image height in pixels.
    pub height: usize,
    /// Denoising steps (UNet evaluations).
    pub steps: usize,
    /// Guidance scale; guidance is applied when it is above 1.
    pub cfg_scale: f64,
    /// The sampler.
    pub sampler: Sampler,
    /// The noise seed.
    pub seed: u64,
}

impl GenerateParams {
    /// Whether classifier-free guidance is applied (`cfgScale > 1`, as in diffusers; at 1
    /// and below only the prompt's prediction is used and the negative prompt is unused).
    pub fn guided(&self) -> bool {
        self.cfg_scale > 1.0
    }
}

/// A generated image: packed RGB8, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height * 3` bytes.
    pub rgb: Vec<u8>,
}

enum TextModel {
    /// Any quick-gelu CLIP text model (SD 1.x).
    Clip(ClipTextTransformer),
    /// The SD 2.x encoder (gelu), which candle offers as a fixed preset.
    Sd2(sd_clip::ClipTextTransformer),
}

/// A loaded pipeline. Immutable once loaded: jobs share it through an `Arc`.
pub struct Pipeline {
    tokenizer: Tokenizer,
    bos: u32,
    eos: u32,
    pad: u32,
    text_config: TextConfig,
    text: TextModel,
    unet_config: UNetConfig,
    unet: UNet2DConditionModel,
    vae_config: VaeConfig,
    vae: AutoEncoderKL,
    scheduler: SchedulerConfig,
    device: Device,
    weight_bytes: u64,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("text", &self.text_config)
            .field("unet_blocks", &self.unet_config.candle.blocks.len())
            .field("vae_blocks", &self.vae_config.candle.block_out_channels)
            .field("weight_bytes", &self.weight_bytes)
            .finish()
    }
}

fn model_error(path: &Path, what: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::failed(format!("{what} {}: {e}", path.display()), false)
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, EngineError> {
    std::fs::read(path)
        .map_err(|e| EngineError::io(format!("cannot read {what} {}: {e}", path.display())))
}

fn read_json(path: Option<&PathBuf>, what: &str) -> Result<Option<Value>, EngineError> {
    let Some(path) = path else {
        return Ok(None);
    };
    let bytes = read_file(path, what)?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| model_error(path, &format!("{what} is not valid JSON:"), e))
}

/// Reads a safetensors file into memory (no mmap: the crate has no `unsafe`) and returns
/// a builder converting its tensors to f32 as the modules take them (so the peak is the
/// file plus the f32 weights), and the size of those f32 weights.
fn read_weights(
    path: &Path,
    what: &str,
    device: &Device,
) -> Result<(VarBuilder<'static>, u64), EngineError> {
    let bytes = read_file(path, what)?;
    let not_readable = |e: candle_core::Error| {
        model_error(
            path,
            &format!("{what} is not a readable safetensors file:"),
            e,
        )
    };
    let f32_bytes: u64 = {
        let header = SliceSafetensors::new(&bytes).map_err(not_readable)?;
        let tensors = header.tensors();
        if tensors.is_empty() {
            return Err(model_error(path, what, "holds no tensors"));
        }
        tensors
            .iter()
            .map(|(_, view)| view.shape().iter().product::<usize>() as u64 * 4)
            .sum()
    };
    let vb =
        VarBuilder::from_buffered_safetensors(bytes, DType::F32, device).map_err(not_readable)?;
    Ok((vb, f32_bytes))
}

fn build_error(path: &Path, what: &str, e: candle_core::Error) -> EngineError {
    model_error(
        path,
        &format!("{what} does not match its config (diffusers/transformers names expected):"),
        e,
    )
}

impl Pipeline {
    /// Loads every file of `paths` on `device` (f32). Unreadable files are I/O errors
    /// (retryable); malformed files, configs this pipeline cannot build and weights that
    /// do not match their configs fail, not retryable.
    pub fn load(paths: &ModelPaths, device: &Device) -> Result<Pipeline, EngineError> {
        let unet_config =
            config::unet(read_json(paths.unet_config.as_ref(), "UNet config")?.as_ref())?;
        let vae_config = config::vae(read_json(paths.vae_config.as_ref(), "VAE config")?.as_ref())?;
        let text_config = config::text(
            read_json(paths.text_encoder_config.as_ref(), "text encoder config")?.as_ref(),
        )?;
        let scheduler = config::scheduler(
            read_json(paths.scheduler_config.as_ref(), "scheduler config")?.as_ref(),
        )?;
        if unet_config.candle.cross_attention_dim != text_config.hidden_size {
            return Err(EngineError::failed(
                format!(
                    "the UNet's cross_attention_dim ({}) differs from the text encoder's \
                     hidden_size ({}): the files are not from one model",
                    unet_config.candle.cross_attention_dim, text_config.hidden_size
                ),
                false,
            ));
        }
        if unet_config.in_channels != vae_config.candle.latent_channels {
            return Err(EngineError::failed(
                format!(
                    "the UNet's in_channels ({}) differs from the VAE's latent_channels ({}): \
                     the files are not from one model",
                    unet_config.in_channels, vae_config.candle.latent_channels
                ),
                false,
            ));
        }

        let tokenizer = Tokenizer::from_file(&paths.tokenizer).map_err(|e| {
            model_error(
                &paths.tokenizer,
                "tokenizer is not a readable tokenizer.json:",
                e,
            )
        })?;
        let special = |token: &str| {
            tokenizer.token_to_id(token).ok_or_else(|| {
                model_error(
                    &paths.tokenizer,
                    "tokenizer",
                    format!("has no `{token}` token (a CLIP tokenizer is needed)"),
                )
            })
        };
        let bos = special(BOS_TOKEN)?;
        let eos = special(EOS_TOKEN)?;
        let pad = match tokenizer.get_padding() {
            Some(p) => p.pad_id,
            None if text_config.activation == TextActivation::Gelu => {
                tokenizer.token_to_id(SD2_PAD_TOKEN).unwrap_or(eos)
            }
            None => eos,
        };
        for (name, id) in [("start", bos), ("end", eos), ("padding", pad)] {
            if id as usize >= text_config.vocab_size {
                return Err(model_error(
                    &paths.tokenizer,
                    "tokenizer",
                    format!(
                        "{name} token id {id} is outside the text encoder's vocabulary ({})",
                        text_config.vocab_size
                    ),
                ));
            }
        }

        let mut weight_bytes = 0;
        let (vb, bytes) = read_weights(&paths.text_encoder, "text encoder", device)?;
        weight_bytes += bytes;
        let text = match text_config.activation {
            TextActivation::QuickGelu => {
                ClipTextTransformer::new(vb.pp("text_model"), &text_config.clip())
                    .map(TextModel::Clip)
            }
            TextActivation::Gelu => {
                sd_clip::ClipTextTransformer::new(vb, &sd_clip::Config::v2_1()).map(TextModel::Sd2)
            }
        }
        .map_err(|e| build_error(&paths.text_encoder, "text encoder", e))?;

        let (vb, bytes) = read_weights(&paths.unet, "UNet", device)?;
        weight_bytes += bytes;
        let unet = UNet2DConditionModel::new(
            vb,
            unet_config.in_channels,
            unet_config.out_channels,
            false,
            unet_config.candle.clone(),
        )
        .map_err(|e| build_error(&paths.unet, "UNet", e))?;

        let (vb, bytes) = read_weights(&paths.vae, "VAE", device)?;
        weight_bytes += bytes;
        let vae = AutoEncoderKL::new(
            vb,
            vae_config.in_channels,
            vae_config.out_channels,
            vae_config.candle.clone(),
        )
        .map_err(|e| build_error(&paths.vae, "VAE", e))?;

        Ok(Pipeline {
            tokenizer,
            bos,
            eos,
            pad,
            text_config,
            text,
            unet_config,
            unet,
            vae_config,
            vae,
            scheduler,
            device: device.clone(),
            weight_bytes,
        })
    }

    /// The weights' size in memory (f32), what the engine charges against its budget.
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// Image pixels per latent pixel (8 for Stable Diffusion).
    pub fn downscale(&self) -> usize {
        self.vae_config.downscale()
    }

    /// The largest attention working set of one UNet evaluation for `params`, in bytes
    /// (see [`attention_bytes`]).
    pub fn attention_bytes(&self, params: &GenerateParams) -> u64 {
        attention_bytes(&self.unet_config, self.downscale(), params)
    }

    /// The noise schedule.
    pub fn scheduler(&self) -> &SchedulerConfig {
        &self.scheduler
    }

    /// The token ids for `text`: start token, at most `max_position_embeddings - 2` prompt
    /// tokens (the rest is cut, with a warning), end token, then padding to the encoder's
    /// full context.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| EngineError::invalid_input(format!("cannot tokenize the prompt: {e}")))?;
        let len = self.text_config.max_position_embeddings;
        let mut body = encoding.get_ids().to_vec();
        if body.len() > len - 2 {
            tracing::warn!(
                "prompt is {} tokens long; the text encoder reads the first {}",
                body.len(),
                len - 2
            );
            body.truncate(len - 2);
        }
        let mut ids = Vec::with_capacity(len);
        ids.push(self.bos);
        ids.extend(body);
        ids.push(self.eos);
        ids.resize(len, self.pad);
        if let Some(bad) = ids
            .iter()
            .find(|&&id| id as usize >= self.text_config.vocab_size)
        {
            return Err(EngineError::failed(
                format!(
                    "the tokenizer produced id {bad}, outside the text encoder's vocabulary ({}): \
                     tokenizer.json does not belong to this text encoder",
                    self.text_config.vocab_size
                ),
                false,
            ));
        }
        Ok(ids)
    }

    /// The text encoder's last hidden states for `texts`: `(texts.len(), positions, hidden)`.
    fn encode_text(&self, texts: &[&str]) -> Result<Tensor, EngineError> {
        let mut rows = Vec::with_capacity(texts.len());
        for text in texts {
            rows.push(self.tokenize(text)?);
        }
        let len = self.text_config.max_position_embeddings;
        let flat: Vec<u32> = rows.concat();
        let run = || -> candle_core::Result<Tensor> {
            let ids = Tensor::from_vec(flat, (texts.len(), len), &self.device)?;
            match &self.text {
                TextModel::Clip(m) => m.forward_with_mask(&ids, usize::MAX),
                TextModel::Sd2(m) => m.forward(&ids),
            }
        };
        run().map_err(|e| compute_error("text encoder", e))
    }

    /// Runs text-to-image. `on_step(i)` is called after each denoising step.
    pub fn generate(
        &self,
        params: &GenerateParams,
        mut on_step: impl FnMut(usize),
    ) -> Result<RgbImage, EngineError> {
        let f = self.downscale();
        for (name, value) in [("width", params.width), ("height", params.height)] {
            if value == 0 || !value.is_multiple_of(f) {
                return Err(EngineError::invalid_input(format!(
                    "{name} {value} must be a positive multiple of {f} for this model"
                )));
            }
        }
        let sampling = Sampling::new(&self.scheduler, params.sampler, params.steps)?;
        let guided = params.guided();
        let embeddings = if guided {
            self.encode_text(&[&params.negative_prompt, &params.prompt])?
        } else {
            self.encode_text(&[&params.prompt])?
        };

        let mut rng = NoiseRng::new(params.seed);
        let shape = [
            1,
            self.unet_config.in_channels,
            params.height / f,
            params.width / f,
        ];
        let run =
            |rng: &mut NoiseRng, on_step: &mut dyn FnMut(usize)| -> candle_core::Result<Tensor> {
                let mut x = sampling.initial(rng.tensor(&shape, &self.device)?)?;
                for (i, &t) in sampling.timesteps().iter().enumerate() {
                    let input = sampling.model_input(i, &x)?;
                    let out = if guided {
                        let batch = Tensor::cat(&[&input, &input], 0)?;
                        let both = self.unet.forward(&batch, t as f64, &embeddings)?;
                        let uncond = both.i(0..1)?;
                        let cond = both.i(1..2)?;
                        (&uncond + ((cond - &uncond)? * params.cfg_scale)?)?
                    } else {
                        self.unet.forward(&input, t as f64, &embeddings)?
                    };
                    x = sampling.step(i, &out, &x, rng)?;
                    on_step(i);
                }
                let latents = x.affine(
                    1.0 / self.vae_config.scaling_factor,
                    self.vae_config.shift_factor,
                )?;
                let image = self.vae.decode(&latents)?;
                // [-1, 1] -> [0, 255], CHW -> HWC.
                let image = ((image * 0.5)? + 0.5)?.clamp(0f32, 1f32)?;
                let image = (image * 255.0)?.round()?.to_dtype(DType::U8)?;
                image.i(0)?.permute((1, 2, 0))?.flatten_all()
            };
        let pixels = run(&mut rng, &mut on_step).map_err(|e| compute_error("diffusion", e))?;
        let rgb: Vec<u8> = pixels
            .to_vec1()
            .map_err(|e| compute_error("diffusion", e))?;
        Ok(RgbImage {
            width: params.width as u32,
            height: params.height as u32,
            rgb,
        })
    }
}

/// The largest attention working set of one UNet evaluation for `params` on a model with
/// this UNet and VAE downscale factor, in bytes: the f32 scores and their softmax (2
/// copies) of `batch × heads × tokens²` over the attention layers (at the UNet's finest
/// attention level, usually the first), or the VAE's single-head mid-block attention.
/// candle 0.11's sliced attention cannot be used (it fails on its own output shape), so
/// this grows with the fourth power of the side and is what limits the image size on a CPU
/// box.
pub fn attention_bytes(unet: &UNetConfig, downscale: usize, params: &GenerateParams) -> u64 {
    let f = downscale.max(1) as u64;
    let (h, w) = (params.height as u64 / f, params.width as u64 / f);
    let batch: u64 = if params.guided() { 2 } else { 1 };
    let blocks = &unet.candle.blocks;
    let mut worst = h * w * h * w; // VAE mid-block attention: one head, batch 1.
    for (i, block) in blocks.iter().enumerate() {
        // The mid block attends at the deepest level with the last block's heads.
        if block.use_cross_attn.is_none() && i + 1 != blocks.len() {
            continue;
        }
        let scale = 1u64 << i;
        let tokens = h.div_ceil(scale) * w.div_ceil(scale);
        worst = worst.max(batch * block.attention_head_dim as u64 * tokens * tokens);
    }
    worst.saturating_mul(4 * 2)
}

/// A failure inside a forward pass: with validated configs and weights this is a resource
/// problem (memory) or a bug, so a retry elsewhere may help.
fn compute_error(stage: &str, e: candle_core::Error) -> EngineError {
    EngineError::failed(format!("{stage} failed: {e}"), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd15_attention_memory() {
        let unet = config::unet(None).unwrap();
        let params = |side: usize, cfg: f64| GenerateParams {
            prompt: String::new(),
            negative_prompt: String::new(),
            width: side,
            height: side,
            steps: 1,
            cfg_scale: cfg,
            sampler: Sampler::Euler,
            seed: 0,
        };
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        // 4096 tokens, 8 heads, batch 2: 2 GiB; 1 GiB unguided; 9216 tokens at 768: ~10 GiB.
        assert_eq!(
            attention_bytes(&unet, 8, &params(512, 7.5)),
            2 * 8 * 4096 * 4096 * 8
        );
        assert!((gib(attention_bytes(&unet, 8, &params(512, 1.0))) - 1.0).abs() < 1e-9);
        let at768 = gib(attention_bytes(&unet, 8, &params(768, 7.5)));
        assert!((10.0..10.2).contains(&at768), "{at768}");
    }
}
