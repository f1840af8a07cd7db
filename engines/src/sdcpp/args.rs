//! The `sd-cli` command line of a job: the model files by role, the task and the model
//! source's `cliDefaults` mapped to flags (the table is in the module docs of
//! [`crate::sdcpp`]). Pure: paths in, argv out, so the whole mapping is unit tested and
//! every flag it can emit is listed in [`FLAGS`] (checked against a real `sd-cli --help`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use studio_core::wire::{CliDefaults, ImageTask, ModelFile, VideoTask};

use crate::error::EngineError;

/// Every flag [`command_line`] can emit, in the order it emits them. The test that runs a
/// real `sd-cli --help` asserts each one is listed there.
pub const FLAGS: [&str; 25] = [
    "--mode",
    "--model",
    "--diffusion-model",
    "--vae",
    "--llm",
    "--llm_vision",
    "--lora-model-dir",
    "--prompt",
    "--negative-prompt",
    "--init-img",
    "--mask",
    "--ref-image",
    "--strength",
    "--cfg-scale",
    "--sampling-method",
    "--steps",
    "--width",
    "--height",
    "--flow-shift",
    "--qwen-image-zero-cond-t",
    "--offload-to-cpu",
    "--seed",
    "--video-frames",
    "--fps",
    "--output",
];

/// The longest prompt (and negative prompt) passed, in bytes. A process argument is limited
/// to 128 KiB on Linux; longer prompts fail `InvalidInput` before anything runs.
pub const MAX_PROMPT_BYTES: usize = 32 * 1024;
/// The widest / tallest image or video frame asked of `sd-cli`, in pixels.
pub const MAX_SIDE: u32 = 4096;
/// The most sampling steps asked of `sd-cli`.
pub const MAX_STEPS: u32 = 1000;
/// Frames per second of a video task that gives none.
pub const DEFAULT_VIDEO_FPS: u32 = 16;
/// The highest frame rate accepted for a video task.
pub const MAX_VIDEO_FPS: u32 = 60;
/// The fewest frames asked for a video (sd.cpp makes `4k + 1` frames; 5 is the smallest
/// count above one, and one frame would be written as a still image).
pub const MIN_VIDEO_FRAMES: u32 = 5;
/// The most frames asked for a video.
pub const MAX_VIDEO_FRAMES: u32 = 241;

/// One file role of a model source and the flag it becomes (PROTOCOL.md §3.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// `model`: a full checkpoint, `--model`.
    Model,
    /// `diffusion-model`: a standalone diffusion model, `--diffusion-model`.
    DiffusionModel,
    /// `vae`: `--vae`.
    Vae,
    /// `text-encoder`: an LLM text encoder, `--llm`.
    TextEncoder,
    /// `text-encoder-vision`: its vision tower, `--llm_vision`.
    TextEncoderVision,
    /// `lora`: `--lora-model-dir` (the directory the LoRA files were fetched into).
    Lora,
}

impl Role {
    /// Every role, in the order their flags are written.
    pub const ALL: [Role; 6] = [
        Role::Model,
        Role::DiffusionModel,
        Role::Vae,
        Role::TextEncoder,
        Role::TextEncoderVision,
        Role::Lora,
    ];

    /// The role of a `modelSource.files[].role` value.
    pub fn parse(role: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.wire() == role)
    }

    /// The wire value.
    pub fn wire(self) -> &'static str {
        match self {
            Role::Model => "model",
            Role::DiffusionModel => "diffusion-model",
            Role::Vae => "vae",
            Role::TextEncoder => "text-encoder",
            Role::TextEncoderVision => "text-encoder-vision",
            Role::Lora => "lora",
        }
    }

    /// The `sd-cli` flag.
    pub fn flag(self) -> &'static str {
        match self {
            Role::Model => "--model",
            Role::DiffusionModel => "--diffusion-model",
            Role::Vae => "--vae",
            Role::TextEncoder => "--llm",
            Role::TextEncoderVision => "--llm_vision",
            Role::Lora => "--lora-model-dir",
        }
    }
}

/// Checks the roles of `files` before anything is fetched: every role known, each one at
/// most once (except `lora`), and a `model` or a `diffusion-model` among them. Returns each
/// file's role, in order.
pub fn file_roles(files: &[ModelFile]) -> Result<Vec<Role>, EngineError> {
    let mut roles = Vec::with_capacity(files.len());
    for file in files {
        let role = Role::parse(&file.role).ok_or_else(|| {
            EngineError::invalid_input(format!(
                "modelSource.files: role `{}` of `{}` is not one the sd-cpp engine knows \
                 (model, diffusion-model, vae, text-encoder, text-encoder-vision, lora)",
                file.role, file.filename
            ))
        })?;
        if role != Role::Lora && roles.contains(&role) {
            return Err(EngineError::invalid_input(format!(
                "modelSource.files names more than one `{}` file",
                role.wire()
            )));
        }
        roles.push(role);
    }
    if !roles.contains(&Role::Model) && !roles.contains(&Role::DiffusionModel) {
        return Err(EngineError::invalid_input(
            "modelSource.files has no `model` or `diffusion-model` file for sd-cli",
        ));
    }
    Ok(roles)
}

/// The input images of a job, fetched into files whose extension matches their content
/// (sd-cli picks its decoder by extension).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InputImages {
    /// `initImageUrl`, for `--init-img`.
    pub init: Option<PathBuf>,
    /// `maskUrl`, for `--mask`.
    pub mask: Option<PathBuf>,
    /// `refImageUrl`, for `--ref-image`.
    pub reference: Option<PathBuf>,
}

/// What one job asks of `sd-cli`, with the task's values resolved against `cliDefaults`.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    /// The positive prompt.
    pub prompt: String,
    /// The negative prompt, when given.
    pub negative_prompt: Option<String>,
    /// `--strength` (image-to-image), when given.
    pub strength: Option<f32>,
    /// `--cfg-scale`.
    pub cfg_scale: f32,
    /// `--sampling-method`, when given.
    pub sampling_method: Option<String>,
    /// `--steps`.
    pub steps: u32,
    /// Output width.
    pub width: u32,
    /// Output height.
    pub height: u32,
    /// `--flow-shift`, when given.
    pub flow_shift: Option<f32>,
    /// `--qwen-image-zero-cond-t`.
    pub zero_cond_t: bool,
    /// `--offload-to-cpu`.
    pub offload_to_cpu: bool,
    /// `--seed` (at most `i64::MAX`, what sd-cli reads).
    pub seed: Option<i64>,
    /// Video mode: the frame count and rate.
    pub video: Option<VideoFrames>,
}

/// A video's frame count (already a count sd.cpp makes: `4k + 1`) and rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VideoFrames {
    /// `--video-frames`.
    pub frames: u32,
    /// `--fps`.
    pub fps: u32,
}

impl VideoFrames {
    /// `seconds` at `fps` (default [`DEFAULT_VIDEO_FPS`]), rounded, bounded by
    /// [`MIN_VIDEO_FRAMES`] and [`MAX_VIDEO_FRAMES`], then down to the `4k + 1` count sd.cpp
    /// makes (it would round it so itself).
    pub fn for_clip(seconds: f32, fps: Option<u32>) -> Result<VideoFrames, EngineError> {
        let fps = fps.unwrap_or(DEFAULT_VIDEO_FPS);
        if fps == 0 || fps > MAX_VIDEO_FPS {
            return Err(EngineError::invalid_input(format!(
                "video fps {fps} is outside 1..={MAX_VIDEO_FPS}"
            )));
        }
        if !(seconds.is_finite() && seconds > 0.0) {
            return Err(EngineError::invalid_input(format!(
                "video seconds {seconds} must be a positive number"
            )));
        }
        let wanted = (f64::from(seconds) * f64::from(fps)).round();
        let bounded = wanted.clamp(f64::from(MIN_VIDEO_FRAMES), f64::from(MAX_VIDEO_FRAMES)) as u32;
        Ok(VideoFrames {
            frames: (bounded - 1) / 4 * 4 + 1,
            fps,
        })
    }
}

fn check_prompt(what: &str, text: &str) -> Result<(), EngineError> {
    if text.len() > MAX_PROMPT_BYTES {
        return Err(EngineError::invalid_input(format!(
            "{what} is {} bytes; at most {MAX_PROMPT_BYTES} bytes are passed to sd-cli",
            text.len()
        )));
    }
    if text.contains('\0') {
        return Err(EngineError::invalid_input(format!(
            "{what} contains a NUL character"
        )));
    }
    Ok(())
}

fn check_size(width: u32, height: u32, steps: u32) -> Result<(), EngineError> {
    for (what, side) in [("width", width), ("height", height)] {
        if side == 0 || side > MAX_SIDE {
            return Err(EngineError::invalid_input(format!(
                "{what} {side} is outside 1..={MAX_SIDE}"
            )));
        }
    }
    if steps == 0 || steps > MAX_STEPS {
        return Err(EngineError::invalid_input(format!(
            "steps {steps} is outside 1..={MAX_STEPS}"
        )));
    }
    Ok(())
}

/// sd-cli reads the seed as a signed 64-bit number: a larger `u64` keeps its low 63 bits,
/// so the same seed always gives the same image.
fn seed_for_cli(seed: u64) -> i64 {
    (seed & (i64::MAX as u64)) as i64
}

impl Generation {
    /// An `image` task over `defaults`: a value the task gives wins, an absent one takes
    /// the model source's default (`width`, `height`, `steps`, `cfgScale`,
    /// `samplingMethod`).
    pub fn image(task: &ImageTask, defaults: &CliDefaults) -> Result<Generation, EngineError> {
        check_prompt("prompt", &task.prompt)?;
        if let Some(negative) = &task.negative_prompt {
            check_prompt("negativePrompt", negative)?;
        }
        if let Some(denoise) = task.denoise {
            if !(0.0..=1.0).contains(&denoise) {
                return Err(EngineError::invalid_input(format!(
                    "denoise {denoise} is outside 0..=1"
                )));
            }
        }
        if task.mask_url.is_some() && task.init_image_url.is_none() {
            return Err(EngineError::invalid_input(
                "maskUrl needs an initImageUrl (the image the mask paints over)",
            ));
        }
        let generation = Generation {
            prompt: task.prompt.clone(),
            negative_prompt: task.negative_prompt.clone(),
            strength: task.denoise,
            cfg_scale: task.cfg_scale.unwrap_or(defaults.cfg_scale),
            sampling_method: task
                .sampling_method
                .clone()
                .or_else(|| defaults.sampling_method.clone()),
            steps: task.steps.unwrap_or(defaults.steps),
            width: task.width.unwrap_or(defaults.width),
            height: task.height.unwrap_or(defaults.height),
            flow_shift: defaults.flow_shift,
            zero_cond_t: defaults.zero_cond_t == Some(true),
            offload_to_cpu: defaults.offload_to_cpu == Some(true),
            seed: task.seed.map(seed_for_cli),
            video: None,
        };
        check_size(generation.width, generation.height, generation.steps)?;
        Ok(generation)
    }

    /// A `video` task over `defaults` (sd-cli's `vid_gen` mode): steps, guidance and
    /// sampler from the model source, the size from the task when given.
    pub fn video(task: &VideoTask, defaults: &CliDefaults) -> Result<Generation, EngineError> {
        check_prompt("prompt", &task.prompt)?;
        if let Some(negative) = &task.negative_prompt {
            check_prompt("negativePrompt", negative)?;
        }
        let generation = Generation {
            prompt: task.prompt.clone(),
            negative_prompt: task.negative_prompt.clone(),
            strength: None,
            cfg_scale: defaults.cfg_scale,
            sampling_method: defaults.sampling_method.clone(),
            steps: defaults.steps,
            width: task.width.unwrap_or(defaults.width),
            height: task.height.unwrap_or(defaults.height),
            flow_shift: defaults.flow_shift,
            zero_cond_t: defaults.zero_cond_t == Some(true),
            offload_to_cpu: defaults.offload_to_cpu == Some(true),
            seed: None,
            video: Some(VideoFrames::for_clip(task.seconds(), task.fps)?),
        };
        check_size(generation.width, generation.height, generation.steps)?;
        Ok(generation)
    }
}

/// The arguments of one `sd-cli` run (without the program): the model files (`files[i]`
/// has role `roles[i]`), the generation, the input images and the output path.
pub fn command_line(
    files: &[(Role, PathBuf)],
    generation: &Generation,
    inputs: &InputImages,
    output: &Path,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |flag: &str, value: Option<OsString>| {
        args.push(flag.into());
        if let Some(value) = value {
            args.push(value);
        }
    };
    if generation.video.is_some() {
        push("--mode", Some("vid_gen".into()));
    }
    for role in Role::ALL {
        if role == Role::Lora {
            // Every LoRA file of the source lands in the model's directory; sd-cli loads
            // the ones the prompt names (`<lora:name:weight>`).
            if let Some((_, path)) = files.iter().find(|(r, _)| *r == Role::Lora) {
                let dir = path.parent().unwrap_or(Path::new("."));
                push(role.flag(), Some(dir.as_os_str().to_owned()));
            }
        } else if let Some((_, path)) = files.iter().find(|(r, _)| *r == role) {
            push(role.flag(), Some(path.as_os_str().to_owned()));
        }
    }
    push("--prompt", Some(generation.prompt.clone().into()));
    if let Some(negative) = &generation.negative_prompt {
        push("--negative-prompt", Some(negative.into()));
    }
    for (flag, path) in [
        ("--init-img", &inputs.init),
        ("--mask", &inputs.mask),
        ("--ref-image", &inputs.reference),
    ] {
        if let Some(path) = path {
            push(flag, Some(path.as_os_str().to_owned()));
        }
    }
    if let Some(strength) = generation.strength {
        push("--strength", Some(strength.to_string().into()));
    }
    push("--cfg-scale", Some(generation.cfg_scale.to_string().into()));
    if let Some(method) = &generation.sampling_method {
        push("--sampling-method", Some(method.into()));
    }
    push("--steps", Some(generation.steps.to_string().into()));
    push("--width", Some(generation.width.to_string().into()));
    push("--height", Some(generation.height.to_string().into()));
    if let Some(shift) = generation.flow_shift {
        push("--flow-shift", Some(shift.to_string().into()));
    }
    if generation.zero_cond_t {
        push("--qwen-image-zero-cond-t", None);
    }
    if generation.offload_to_cpu {
        push("--offload-to-cpu", None);
    }
    if let Some(seed) = generation.seed {
        push("--seed", Some(seed.to_string().into()));
    }
    if let Some(video) = generation.video {
        push("--video-frames", Some(video.frames.to_string().into()));
        push("--fps", Some(video.fps.to_string().into()));
    }
    push("--output", Some(output.as_os_str().to_owned()));
    args
}
