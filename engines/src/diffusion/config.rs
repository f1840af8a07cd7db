//! The diffusers-style JSON configs of a Stable Diffusion model, read into candle's
//! configuration types, with the Stable Diffusion 1.5 values as defaults.
//!
//! Every reader takes the parsed JSON of one file (or `None` when the model source has no
//! such file) and checks what candle's modules cannot express, so that an unsupported
//! model fails with a message naming the key instead of a shape error deep in a forward
//! pass. All errors are [`EngineError::failed`] with `retryable: false`: the same files
//! fail the same way on every worker.

use candle_transformers::models::clip::text_model::{Activation, ClipTextConfig};
use candle_transformers::models::stable_diffusion::unet_2d::{
    BlockConfig, UNet2DConditionModelConfig,
};
use candle_transformers::models::stable_diffusion::vae::AutoEncoderKLConfig;
use serde_json::{Map, Value};

use crate::error::EngineError;

/// The longest text-encoder context the pipeline accepts (CLIP uses 77).
pub const MAX_TEXT_POSITIONS: usize = 1024;

fn bad(file: &str, message: impl std::fmt::Display) -> EngineError {
    EngineError::failed(format!("{file}: {message}"), false)
}

/// A JSON object with typed, defaulted accessors whose errors name the file and key.
struct Obj<'a> {
    file: &'static str,
    map: Option<&'a Map<String, Value>>,
}

impl<'a> Obj<'a> {
    fn new(file: &'static str, value: Option<&'a Value>) -> Result<Obj<'a>, EngineError> {
        match value {
            None => Ok(Obj { file, map: None }),
            Some(Value::Object(map)) => Ok(Obj {
                file,
                map: Some(map),
            }),
            Some(_) => Err(bad(file, "not a JSON object")),
        }
    }

    /// The value of `key`, `None` when absent or `null`.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.and_then(|m| m.get(key)).filter(|v| !v.is_null())
    }

    fn usize(&self, key: &str, default: usize) -> Result<usize, EngineError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => as_usize(v).ok_or_else(|| {
                bad(
                    self.file,
                    format!("`{key}` must be a non-negative integer, not {v}"),
                )
            }),
        }
    }

    fn f64(&self, key: &str, default: f64) -> Result<f64, EngineError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite())
                .ok_or_else(|| bad(self.file, format!("`{key}` must be a number, not {v}"))),
        }
    }

    fn bool(&self, key: &str, default: bool) -> Result<bool, EngineError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| bad(self.file, format!("`{key}` must be a boolean, not {v}"))),
        }
    }

    fn str(&self, key: &str) -> Result<Option<&'a str>, EngineError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| bad(self.file, format!("`{key}` must be a string, not {v}"))),
        }
    }

    fn usize_list(&self, key: &str) -> Result<Option<Vec<usize>>, EngineError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    as_usize(v).ok_or_else(|| {
                        bad(
                            self.file,
                            format!("`{key}` must list non-negative integers, not {v}"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(v) => Err(bad(self.file, format!("`{key}` must be a list, not {v}"))),
        }
    }

    fn str_list(&self, key: &str) -> Result<Option<Vec<&'a str>>, EngineError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str().ok_or_else(|| {
                        bad(self.file, format!("`{key}` must list strings, not {v}"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(v) => Err(bad(self.file, format!("`{key}` must be a list, not {v}"))),
        }
    }

    /// An integer, or a list of `n` integers (diffusers allows both for per-block values).
    fn per_block(&self, key: &str, n: usize, default: usize) -> Result<Vec<usize>, EngineError> {
        match self.get(key) {
            None => Ok(vec![default; n]),
            Some(Value::Array(_)) => {
                let list = self.usize_list(key)?.unwrap_or_default();
                if list.len() != n {
                    return Err(bad(
                        self.file,
                        format!("`{key}` lists {} values for {n} blocks", list.len()),
                    ));
                }
                Ok(list)
            }
            Some(_) => Ok(vec![self.usize(key, default)?; n]),
        }
    }

    /// Fails when `key` is present and not null: a feature candle's modules lack.
    fn refuse(&self, key: &str, what: &str) -> Result<(), EngineError> {
        match self.get(key) {
            None => Ok(()),
            Some(Value::Bool(false)) => Ok(()),
            Some(v) => Err(bad(
                self.file,
                format!("`{key}: {v}` ({what}) is not supported by the candle pipeline"),
            )),
        }
    }
}

fn as_usize(v: &Value) -> Option<usize> {
    if let Some(u) = v.as_u64() {
        return usize::try_from(u).ok();
    }
    // diffusers writes some integers as floats (`"freq_shift": 0.0`).
    v.as_f64()
        .filter(|x| x.is_finite() && *x >= 0.0 && x.fract() == 0.0 && *x < 1e15)
        .map(|x| x as usize)
}

fn positive(file: &str, key: &str, value: usize) -> Result<usize, EngineError> {
    if value == 0 {
        Err(bad(file, format!("`{key}` must be at least 1")))
    } else {
        Ok(value)
    }
}

fn divisible(
    file: &str,
    what: &str,
    value: usize,
    by: usize,
    by_what: &str,
) -> Result<(), EngineError> {
    if by == 0 || !value.is_multiple_of(by) {
        Err(bad(
            file,
            format!("{what} ({value}) must be a multiple of {by_what} ({by})"),
        ))
    } else {
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------
// UNet
// ------------------------------------------------------------------------------------------

/// The UNet of a model: candle's config plus the latent channel counts.
#[derive(Clone, Debug)]
pub struct UNetConfig {
    /// Latent channels the UNet reads.
    pub in_channels: usize,
    /// Channels it predicts (equal to `in_channels` for text-to-image models).
    pub out_channels: usize,
    /// Native sample size in latent pixels (`sample_size`), for information.
    pub sample_size: Option<usize>,
    /// candle's configuration.
    pub candle: UNet2DConditionModelConfig,
}

const UNET_FILE: &str = "unet_config.json";

/// Reads a diffusers `UNet2DConditionModel` config (`unet/config.json`); `None` gives the
/// Stable Diffusion 1.5 UNet.
///
/// Keys read: `block_out_channels`, `down_block_types`, `up_block_types`,
/// `layers_per_block`, `cross_attention_dim`, `attention_head_dim` (or
/// `num_attention_heads`, which diffusers prefers when set; both are head *counts* despite
/// the name), `transformer_layers_per_block`, `in_channels`, `out_channels`,
/// `norm_num_groups`, `norm_eps`, `downsample_padding`, `mid_block_scale_factor`,
/// `flip_sin_to_cos`, `freq_shift`, `center_input_sample`, `use_linear_projection`,
/// `sample_size`. Refused: class / addition / time-conditioning embeddings (SDXL, LCM
/// distillations), `encoder_hid_dim`, `only_cross_attention`, `dual_cross_attention`,
/// activations other than `silu` and block types other than the standard four.
pub fn unet(value: Option<&Value>) -> Result<UNetConfig, EngineError> {
    let o = Obj::new(UNET_FILE, value)?;
    let f = UNET_FILE;
    for (key, what) in [
        ("class_embed_type", "class embeddings"),
        ("num_class_embeds", "class embeddings"),
        ("addition_embed_type", "added conditioning, as in SDXL"),
        ("time_cond_proj_dim", "guidance-conditioned timesteps"),
        ("encoder_hid_dim", "an encoder projection"),
        ("only_cross_attention", "cross-attention only blocks"),
        ("dual_cross_attention", "dual cross-attention"),
        ("timestep_post_act", "a timestep post-activation"),
    ] {
        o.refuse(key, what)?;
    }
    if let Some(act) = o.str("act_fn")? {
        if act != "silu" {
            return Err(bad(
                f,
                format!("`act_fn: {act}` is not supported (only silu)"),
            ));
        }
    }
    if let Some(kind) = o.str("mid_block_type")? {
        if kind != "UNetMidBlock2DCrossAttn" {
            return Err(bad(
                f,
                format!("`mid_block_type: {kind}` is not supported (only UNetMidBlock2DCrossAttn)"),
            ));
        }
    }
    let channels = o
        .usize_list("block_out_channels")?
        .unwrap_or_else(|| vec![320, 640, 1280, 1280]);
    let n = channels.len();
    if n == 0 {
        return Err(bad(f, "`block_out_channels` is empty"));
    }
    let down_types: Vec<String> = match o.str_list("down_block_types")? {
        Some(list) => list.into_iter().map(str::to_string).collect(),
        // No block types (and the SD 1.5 default): cross-attention everywhere but in the
        // deepest block, as in every Stable Diffusion 1.x / 2.x UNet.
        None => {
            let mut v = vec!["CrossAttnDownBlock2D".to_string(); n - 1];
            v.push("DownBlock2D".to_string());
            v
        }
    };
    if down_types.len() != n {
        return Err(bad(
            f,
            format!(
                "`down_block_types` lists {} blocks but `block_out_channels` {n}",
                down_types.len()
            ),
        ));
    }
    let cross: Vec<bool> = down_types
        .iter()
        .map(|t| match t.as_str() {
            "CrossAttnDownBlock2D" => Ok(true),
            "DownBlock2D" => Ok(false),
            other => Err(bad(
                f,
                format!("down block type `{other}` is not supported (CrossAttnDownBlock2D, DownBlock2D)"),
            )),
        })
        .collect::<Result<_, _>>()?;
    if let Some(up) = o.str_list("up_block_types")? {
        // candle mirrors the down blocks; anything else cannot be loaded faithfully.
        let expected: Vec<&str> = cross
            .iter()
            .rev()
            .map(|&c| if c { "CrossAttnUpBlock2D" } else { "UpBlock2D" })
            .collect();
        if up != expected {
            return Err(bad(
                f,
                format!("`up_block_types` {up:?} must mirror the down blocks: {expected:?}"),
            ));
        }
    }
    let heads = if o.get("num_attention_heads").is_some() {
        o.per_block("num_attention_heads", n, 8)?
    } else {
        o.per_block("attention_head_dim", n, 8)?
    };
    let transformer_layers = o.per_block("transformer_layers_per_block", n, 1)?;
    let norm_num_groups = positive(f, "norm_num_groups", o.usize("norm_num_groups", 32)?)?;
    let mut blocks = Vec::with_capacity(n);
    for i in 0..n {
        let out_channels = positive(f, "block_out_channels", channels[i])?;
        divisible(
            f,
            "every block's channel count",
            out_channels,
            norm_num_groups,
            "norm_num_groups",
        )?;
        let head_count = positive(f, "attention_head_dim", heads[i])?;
        if cross[i] || i == n - 1 {
            divisible(
                f,
                "every attention block's channel count",
                out_channels,
                head_count,
                "its head count",
            )?;
        }
        blocks.push(BlockConfig {
            out_channels,
            use_cross_attn: cross[i].then(|| transformer_layers[i].max(1)),
            attention_head_dim: head_count,
        });
    }
    let in_channels = positive(f, "in_channels", o.usize("in_channels", 4)?)?;
    let out_channels = positive(f, "out_channels", o.usize("out_channels", 4)?)?;
    if in_channels != out_channels {
        return Err(bad(
            f,
            format!(
                "`in_channels` {in_channels} != `out_channels` {out_channels}: inpainting and \
                 image-conditioned UNets are not supported"
            ),
        ));
    }
    let candle = UNet2DConditionModelConfig {
        center_input_sample: o.bool("center_input_sample", false)?,
        flip_sin_to_cos: o.bool("flip_sin_to_cos", true)?,
        freq_shift: o.f64("freq_shift", 0.0)?,
        blocks,
        layers_per_block: positive(f, "layers_per_block", o.usize("layers_per_block", 2)?)?,
        downsample_padding: o.usize("downsample_padding", 1)?,
        mid_block_scale_factor: o.f64("mid_block_scale_factor", 1.0)?,
        norm_num_groups,
        norm_eps: o.f64("norm_eps", 1e-5)?,
        cross_attention_dim: positive(
            f,
            "cross_attention_dim",
            o.usize("cross_attention_dim", 768)?,
        )?,
        sliced_attention_size: None,
        use_linear_projection: o.bool("use_linear_projection", false)?,
    };
    Ok(UNetConfig {
        in_channels,
        out_channels,
        sample_size: o.get("sample_size").and_then(as_usize),
        candle,
    })
}

// ------------------------------------------------------------------------------------------
// VAE
// ------------------------------------------------------------------------------------------

/// The autoencoder of a model.
#[derive(Clone, Debug)]
pub struct VaeConfig {
    /// Image channels in and out (3).
    pub in_channels: usize,
    /// Image channels out (3).
    pub out_channels: usize,
    /// Latents are divided by this before decoding (`scaling_factor`, 0.18215 for SD 1.x).
    pub scaling_factor: f64,
    /// Added after the division (`shift_factor`, absent for SD 1.x / 2.x).
    pub shift_factor: f64,
    /// candle's configuration.
    pub candle: AutoEncoderKLConfig,
}

impl VaeConfig {
    /// Image pixels per latent pixel along each axis: `2^(blocks - 1)` (8 for SD).
    pub fn downscale(&self) -> usize {
        1usize << (self.candle.block_out_channels.len() - 1)
    }
}

const VAE_FILE: &str = "vae_config.json";

/// Reads a diffusers `AutoencoderKL` config (`vae/config.json`); `None` gives the Stable
/// Diffusion 1.5 VAE. Keys read: `block_out_channels`, `layers_per_block`,
/// `latent_channels`, `norm_num_groups`, `in_channels`, `out_channels`, `scaling_factor`,
/// `shift_factor`, `use_quant_conv`, `use_post_quant_conv`, and the block type lists (for
/// their length and kind only).
pub fn vae(value: Option<&Value>) -> Result<VaeConfig, EngineError> {
    let o = Obj::new(VAE_FILE, value)?;
    let f = VAE_FILE;
    if let Some(act) = o.str("act_fn")? {
        if act != "silu" {
            return Err(bad(
                f,
                format!("`act_fn: {act}` is not supported (only silu)"),
            ));
        }
    }
    let channels = o
        .usize_list("block_out_channels")?
        .unwrap_or_else(|| vec![128, 256, 512, 512]);
    if channels.is_empty() || channels.len() > 8 {
        return Err(bad(f, "`block_out_channels` must list 1 to 8 blocks"));
    }
    for (key, block) in [
        ("down_block_types", "DownEncoderBlock2D"),
        ("up_block_types", "UpDecoderBlock2D"),
    ] {
        if let Some(list) = o.str_list(key)? {
            if list.len() != channels.len() || list.iter().any(|t| *t != block) {
                return Err(bad(
                    f,
                    format!(
                        "`{key}` must list {} `{block}` blocks, one per `block_out_channels`",
                        channels.len()
                    ),
                ));
            }
        }
    }
    let norm_num_groups = positive(f, "norm_num_groups", o.usize("norm_num_groups", 32)?)?;
    for &c in &channels {
        positive(f, "block_out_channels", c)?;
        divisible(
            f,
            "every block's channel count",
            c,
            norm_num_groups,
            "norm_num_groups",
        )?;
    }
    let scaling_factor = o.f64("scaling_factor", 0.18215)?;
    if scaling_factor == 0.0 {
        return Err(bad(f, "`scaling_factor` must not be 0"));
    }
    let in_channels = positive(f, "in_channels", o.usize("in_channels", 3)?)?;
    let out_channels = o.usize("out_channels", 3)?;
    if out_channels != 3 {
        return Err(bad(
            f,
            format!("`out_channels` is {out_channels}; only RGB (3) decoders are supported"),
        ));
    }
    Ok(VaeConfig {
        in_channels,
        out_channels,
        scaling_factor,
        shift_factor: o.f64("shift_factor", 0.0)?,
        candle: AutoEncoderKLConfig {
            block_out_channels: channels,
            layers_per_block: positive(f, "layers_per_block", o.usize("layers_per_block", 2)?)?,
            latent_channels: positive(f, "latent_channels", o.usize("latent_channels", 4)?)?,
            norm_num_groups,
            use_quant_conv: o.bool("use_quant_conv", true)?,
            use_post_quant_conv: o.bool("use_post_quant_conv", true)?,
        },
    })
}

// ------------------------------------------------------------------------------------------
// Text encoder
// ------------------------------------------------------------------------------------------

/// The CLIP text encoder's activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextActivation {
    /// `quick_gelu` (OpenAI CLIP, Stable Diffusion 1.x): any size.
    QuickGelu,
    /// `gelu` (OpenCLIP ViT-H, Stable Diffusion 2.x): only the exact SD 2.x encoder,
    /// which candle provides as a preset.
    Gelu,
}

/// The text encoder of a model (a transformers `CLIPTextModel`).
#[derive(Clone, Debug, PartialEq)]
pub struct TextConfig {
    /// `vocab_size`.
    pub vocab_size: usize,
    /// `hidden_size`: the width of the embeddings the UNet cross-attends to.
    pub hidden_size: usize,
    /// `intermediate_size`.
    pub intermediate_size: usize,
    /// `num_hidden_layers`.
    pub num_hidden_layers: usize,
    /// `num_attention_heads`.
    pub num_attention_heads: usize,
    /// `max_position_embeddings`: prompts are cut and padded to this many tokens.
    pub max_position_embeddings: usize,
    /// `projection_dim` (not used by the pipeline).
    pub projection_dim: usize,
    /// `hidden_act`.
    pub activation: TextActivation,
}

impl TextConfig {
    /// The Stable Diffusion 2.x text encoder (OpenCLIP ViT-H/14 with its last layer
    /// dropped), the one `gelu` encoder candle can build.
    pub fn sd2() -> TextConfig {
        TextConfig {
            vocab_size: 49408,
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 23,
            num_attention_heads: 16,
            max_position_embeddings: 77,
            projection_dim: 512,
            activation: TextActivation::Gelu,
        }
    }

    /// candle's generic CLIP text configuration (quick-gelu encoders).
    pub fn clip(&self) -> ClipTextConfig {
        ClipTextConfig {
            vocab_size: self.vocab_size,
            embed_dim: self.hidden_size,
            activation: Activation::QuickGelu,
            intermediate_size: self.intermediate_size,
            max_position_embeddings: self.max_position_embeddings,
            pad_with: None,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            projection_dim: self.projection_dim,
        }
    }
}

const TEXT_FILE: &str = "text_encoder_config.json";

/// Reads a transformers `CLIPTextConfig` (`text_encoder/config.json`); `None` gives the
/// Stable Diffusion 1.5 encoder (OpenAI CLIP ViT-L/14). Keys read: `vocab_size`,
/// `hidden_size`, `intermediate_size`, `num_hidden_layers`, `num_attention_heads`,
/// `max_position_embeddings`, `projection_dim`, `hidden_act` (`quick_gelu`, or `gelu` for
/// exactly the SD 2.x encoder). A full CLIP config with a `text_config` section is read
/// from that section.
pub fn text(value: Option<&Value>) -> Result<TextConfig, EngineError> {
    let value = match value {
        Some(v) if v.get("text_config").is_some_and(Value::is_object) => v.get("text_config"),
        other => other,
    };
    let o = Obj::new(TEXT_FILE, value)?;
    let f = TEXT_FILE;
    let activation = match o.str("hidden_act")?.unwrap_or("quick_gelu") {
        "quick_gelu" => TextActivation::QuickGelu,
        "gelu" => TextActivation::Gelu,
        other => {
            return Err(bad(
                f,
                format!("`hidden_act: {other}` is not supported (quick_gelu, gelu)"),
            ))
        }
    };
    let config = TextConfig {
        vocab_size: positive(f, "vocab_size", o.usize("vocab_size", 49408)?)?,
        hidden_size: positive(f, "hidden_size", o.usize("hidden_size", 768)?)?,
        intermediate_size: positive(f, "intermediate_size", o.usize("intermediate_size", 3072)?)?,
        num_hidden_layers: positive(f, "num_hidden_layers", o.usize("num_hidden_layers", 12)?)?,
        num_attention_heads: positive(
            f,
            "num_attention_heads",
            o.usize("num_attention_heads", 12)?,
        )?,
        max_position_embeddings: o.usize("max_position_embeddings", 77)?,
        projection_dim: o.usize("projection_dim", 768)?,
        activation,
    };
    if !(3..=MAX_TEXT_POSITIONS).contains(&config.max_position_embeddings) {
        return Err(bad(
            f,
            format!("`max_position_embeddings` must be 3 to {MAX_TEXT_POSITIONS}"),
        ));
    }
    divisible(
        f,
        "`hidden_size`",
        config.hidden_size,
        config.num_attention_heads,
        "`num_attention_heads`",
    )?;
    if activation == TextActivation::Gelu {
        let sd2 = TextConfig {
            projection_dim: config.projection_dim,
            ..TextConfig::sd2()
        };
        if config != sd2 {
            return Err(bad(
                f,
                "a `gelu` text encoder must be exactly the Stable Diffusion 2.x one (hidden \
                 1024, 23 layers, 16 heads, intermediate 4096, vocab 49408, 77 positions); \
                 other encoders must use `quick_gelu`",
            ));
        }
    }
    Ok(config)
}

// ------------------------------------------------------------------------------------------
// Scheduler
// ------------------------------------------------------------------------------------------

/// How betas grow over the training timesteps (`beta_schedule`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BetaSchedule {
    /// `linear`.
    Linear,
    /// `scaled_linear` (Stable Diffusion).
    ScaledLinear,
    /// `squaredcos_cap_v2`.
    SquaredCosCapV2,
}

/// What the UNet predicts (`prediction_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prediction {
    /// The noise (`epsilon`; SD 1.x, SD 2.x base).
    Epsilon,
    /// The velocity (`v_prediction`; SD 2.x 768).
    V,
    /// The clean sample (`sample`).
    Sample,
}

/// Where the inference timesteps sit among the training ones (`timestep_spacing`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spacing {
    /// `leading` (SD 1.x / 2.x default): `i * T/N + steps_offset`.
    Leading,
    /// `trailing`: ends exactly at `T - 1` (turbo / distilled models).
    Trailing,
    /// `linspace`: `N` evenly spaced values from 0 to `T - 1`.
    Linspace,
}

/// The noise schedule of a model (diffusers `scheduler/scheduler_config.json`).
#[derive(Clone, Debug, PartialEq)]
pub struct SchedulerConfig {
    /// `beta_start`.
    pub beta_start: f64,
    /// `beta_end`.
    pub beta_end: f64,
    /// `beta_schedule`.
    pub beta_schedule: BetaSchedule,
    /// `num_train_timesteps`.
    pub train_timesteps: usize,
    /// `prediction_type`.
    pub prediction: Prediction,
    /// `timestep_spacing`.
    pub spacing: Spacing,
    /// `steps_offset`.
    pub steps_offset: usize,
}

impl Default for SchedulerConfig {
    /// Stable Diffusion 1.5's schedule.
    fn default() -> SchedulerConfig {
        SchedulerConfig {
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            train_timesteps: 1000,
            prediction: Prediction::Epsilon,
            spacing: Spacing::Leading,
            steps_offset: 1,
        }
    }
}

const SCHEDULER_FILE: &str = "scheduler_config.json";

/// Reads a diffusers scheduler config (any of the DDIM / PNDM / Euler configs: only the
/// noise schedule is used, the sampler is the job's `samplingMethod`); `None` gives the
/// Stable Diffusion 1.5 schedule. Keys read: `beta_start`, `beta_end`, `beta_schedule`,
/// `num_train_timesteps`, `prediction_type`, `timestep_spacing`, `steps_offset`.
pub fn scheduler(value: Option<&Value>) -> Result<SchedulerConfig, EngineError> {
    let o = Obj::new(SCHEDULER_FILE, value)?;
    let f = SCHEDULER_FILE;
    let d = SchedulerConfig::default();
    let beta_schedule = match o.str("beta_schedule")? {
        None | Some("scaled_linear") => BetaSchedule::ScaledLinear,
        Some("linear") => BetaSchedule::Linear,
        Some("squaredcos_cap_v2") => BetaSchedule::SquaredCosCapV2,
        Some(other) => return Err(bad(f, format!("`beta_schedule: {other}` is not supported"))),
    };
    let prediction = match o.str("prediction_type")? {
        None | Some("epsilon") => Prediction::Epsilon,
        Some("v_prediction") => Prediction::V,
        Some("sample") => Prediction::Sample,
        Some(other) => {
            return Err(bad(
                f,
                format!("`prediction_type: {other}` is not supported"),
            ))
        }
    };
    let spacing = match o.str("timestep_spacing")? {
        None | Some("leading") => Spacing::Leading,
        Some("trailing") => Spacing::Trailing,
        Some("linspace") => Spacing::Linspace,
        Some(other) => {
            return Err(bad(
                f,
                format!("`timestep_spacing: {other}` is not supported"),
            ))
        }
    };
    let config = SchedulerConfig {
        beta_start: o.f64("beta_start", d.beta_start)?,
        beta_end: o.f64("beta_end", d.beta_end)?,
        beta_schedule,
        train_timesteps: o.usize("num_train_timesteps", d.train_timesteps)?,
        prediction,
        spacing,
        steps_offset: o.usize("steps_offset", d.steps_offset)?,
    };
    if !(2..=100_000).contains(&config.train_timesteps) {
        return Err(bad(f, "`num_train_timesteps` must be 2 to 100000"));
    }
    if !(config.beta_start > 0.0 && config.beta_start <= config.beta_end && config.beta_end < 1.0) {
        return Err(bad(f, "betas must satisfy 0 < beta_start <= beta_end < 1"));
    }
    if config.steps_offset >= config.train_timesteps {
        return Err(bad(f, "`steps_offset` must be below `num_train_timesteps`"));
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_are_sd15() {
        let u = unet(None).unwrap();
        assert_eq!(u.candle.blocks.len(), 4);
        assert_eq!(u.candle.blocks[0].out_channels, 320);
        assert_eq!(u.candle.blocks[3].use_cross_attn, None);
        assert_eq!(u.candle.cross_attention_dim, 768);
        let v = vae(None).unwrap();
        assert_eq!(v.downscale(), 8);
        assert_eq!(v.scaling_factor, 0.18215);
        let t = text(None).unwrap();
        assert_eq!((t.hidden_size, t.num_hidden_layers), (768, 12));
        assert_eq!(scheduler(None).unwrap(), SchedulerConfig::default());
    }

    #[test]
    fn sd21_unet_and_scheduler() {
        let u = unet(Some(&json!({
            "attention_head_dim": [5, 10, 20, 20],
            "block_out_channels": [320, 640, 1280, 1280],
            "cross_attention_dim": 1024,
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                 "CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                               "CrossAttnUpBlock2D"],
            "use_linear_projection": true,
            "num_class_embeds": null,
            "dual_cross_attention": false,
            "freq_shift": 0
        })))
        .unwrap();
        let heads: Vec<usize> = u
            .candle
            .blocks
            .iter()
            .map(|b| b.attention_head_dim)
            .collect();
        assert_eq!(heads, [5, 10, 20, 20]);
        assert!(u.candle.use_linear_projection);
        let s = scheduler(Some(&json!({
            "prediction_type": "v_prediction", "timestep_spacing": "trailing",
            "beta_schedule": "scaled_linear", "_class_name": "DDIMScheduler"
        })))
        .unwrap();
        assert_eq!(
            (s.prediction, s.spacing),
            (Prediction::V, Spacing::Trailing)
        );
    }

    #[test]
    fn unsupported_models_are_named() {
        let e = unet(Some(&json!({"addition_embed_type": "text_time"}))).unwrap_err();
        assert!(!e.retryable());
        assert!(e.message.contains("addition_embed_type"), "{e}");
        let e = unet(Some(&json!({"in_channels": 9}))).unwrap_err();
        assert!(e.message.contains("inpainting"), "{e}");
        let e = unet(Some(
            &json!({"block_out_channels": [32, 48], "norm_num_groups": 32}),
        ))
        .unwrap_err();
        assert!(e.message.contains("norm_num_groups"), "{e}");
        let e = text(Some(&json!({"hidden_act": "gelu"}))).unwrap_err();
        assert!(e.message.contains("Stable Diffusion 2.x"), "{e}");
        assert_eq!(
            text(Some(&json!({"hidden_act": "gelu", "hidden_size": 1024,
                "intermediate_size": 4096, "num_hidden_layers": 23,
                "num_attention_heads": 16, "projection_dim": 1024})))
            .unwrap()
            .activation,
            TextActivation::Gelu
        );
        let e = vae(Some(&json!({"block_out_channels": "x"}))).unwrap_err();
        assert!(e.message.contains("vae_config.json"), "{e}");
        let e = scheduler(Some(&json!({"beta_schedule": "cosine"}))).unwrap_err();
        assert!(e.message.contains("beta_schedule"), "{e}");
    }
}
