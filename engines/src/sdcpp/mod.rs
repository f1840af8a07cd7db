//! The sd-cpp engine (feature `sd-cpp`): `image` and `video` jobs whose `modelSource.engine`
//! is `sd-cpp`, run by stable-diffusion.cpp's `sd-cli` as a child process (GGUF diffusion
//! models, LLM text encoders, VAEs; whatever backend that binary was built with).
//!
//! # The binary
//!
//! [`SD_CLI_ENV`] (`STUDIO_WORKER_SD_CLI`), else `<models_root>/bin/sd-cli`, else the first
//! `sd-cli` on the `PATH`; a set [`SD_CLI_ENV`] that names no executable is an error, not a
//! reason to look elsewhere. It is looked for once when the engine is built, and its
//! `sd-cli --version` line (`stable-diffusion.cpp version <v>, commit <c>`) is logged. When
//! none is found the engine advertises nothing and looks again at each job; a job that
//! still finds none fails `EngineNotAvailable` (not retryable), naming the three places.
//!
//! # Advertised models
//!
//! With a binary: for `image` and `video`, the wildcard `sd-cpp:*` (any sd-cpp model: the
//! files come with the offer) plus the exact id of every model a job ran on, now or before
//! (recorded in its directory, [`ModelStore::record`]). Never the bare `*`.
//!
//! # Model files, by role (PROTOCOL.md §3.6)
//!
//! Fetched and verified by the [`ModelStore`] into `<models_root>/<model id>/` before
//! anything runs. Each role at most once, except `lora`; a `model` or a `diffusion-model`
//! is required; an unknown role fails `InvalidInput`.
//!
//! | role | flag |
//! |---|---|
//! | `model` | `--model <file>` |
//! | `diffusion-model` | `--diffusion-model <file>` |
//! | `vae` | `--vae <file>` |
//! | `text-encoder` | `--llm <file>` |
//! | `text-encoder-vision` | `--llm_vision <file>` |
//! | `lora` | `--lora-model-dir <the model's directory>` (the prompt names LoRAs as `<lora:name:weight>`) |
//!
//! # Task and `cliDefaults`
//!
//! A value the task gives wins over the model source's `cliDefaults`; an absent one takes
//! the default.
//!
//! | source | flag |
//! |---|---|
//! | `prompt`, `negativePrompt` | `--prompt`, `--negative-prompt` (each at most [`args::MAX_PROMPT_BYTES`]) |
//! | `initImageUrl`, `maskUrl`, `refImageUrl` | `--init-img`, `--mask`, `--ref-image`: fetched like model files (https, plain http only to loopback, at most [`MAX_INPUT_IMAGE_BYTES`]) into the job's temporary directory, named by their content's format (sd-cli picks its decoder by extension); a mask needs an init image |
//! | `denoise` | `--strength` (0..=1) |
//! | `cfgScale` | `--cfg-scale` |
//! | `samplingMethod` | `--sampling-method` |
//! | `steps` | `--steps` (1..=[`args::MAX_STEPS`]) |
//! | `width`, `height` | `--width`, `--height` (1..=[`args::MAX_SIDE`]) |
//! | `seed` | `--seed` (its low 63 bits: sd-cli reads a signed 64-bit number); none: sd-cli's own default (42) |
//! | `cliDefaults.flowShift` | `--flow-shift` |
//! | `cliDefaults.zeroCondT: true` | `--qwen-image-zero-cond-t` |
//! | `cliDefaults.offloadToCpu: true` | `--offload-to-cpu` |
//! | `cliDefaults.contextSize`, `chatTemplateKwargs` | not used (LLM keys) |
//! | `ext` (image) | sd-cli writes PNG; the result is re-encoded to `png`, `webp` (lossless) or `jpg`/`jpeg`; any other ext fails `InvalidInput` before anything runs |
//!
//! `video` tasks run sd-cli's `vid_gen` mode (Wan-style video models): `--mode vid_gen`,
//! `--video-frames` = `seconds` x `fps` (`fps` default [`args::DEFAULT_VIDEO_FPS`]) bounded
//! to [`args::MIN_VIDEO_FRAMES`]..=[`args::MAX_VIDEO_FRAMES`] and rounded down to the
//! `4k + 1` frames sd.cpp makes, `--fps`, `--init-img` from `initImageUrl` (image to video),
//! the size from the task, steps, guidance and sampler from `cliDefaults`. sd-cli writes
//! WebM, animated WebP or AVI: `webm`, `webp` and `avi` are delivered as asked, anything
//! else (`mp4`, the default, included) as `webm`, and the result's ext says which.
//!
//! # Running
//!
//! The child runs in its own process group, killed (SIGKILL to the group) when the job's
//! deadline ([`DEFAULT_TIMEOUT`]) passes, when the job is cancelled (the worker's engine
//! pool cancels it on `CancelJob`: shutdown grace over, process exiting), and whenever the
//! engine returns before the child was reaped; on Linux the kernel also kills it when the
//! worker dies (`PR_SET_PDEATHSIG`). Its progress bar becomes job log lines (one each
//! [`PROGRESS_NOTICE_PERCENT`] %), its warnings and errors too.
//!
//! | failure | kind | retryable |
//! |---|---|---|
//! | bad task values, unknown role or ext, mask without init image | `InvalidInput` | no |
//! | no sd-cli found | `EngineNotAvailable` | no |
//! | sd-cli cannot be started | `Io` | yes |
//! | non-zero exit (the message ends with sd-cli's last stderr line) | `Failed` | yes |
//! | exit 0 without an output file, or an unreadable one | `Failed` | yes |
//! | deadline passed, job cancelled (child killed) | `Failed` | yes |
//!
//! [`SD_CLI_ENV`]: binary::SD_CLI_ENV

pub mod args;
pub mod binary;
pub mod child;
pub mod output;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use studio_core::wire::{ModelEngine, Task, TaskKind};

use crate::cancel::{self, CancelToken};
use crate::engine::{Engine, EngineOutput, JobRequest};
use crate::error::{EngineError, EngineErrorKind};
use crate::input_url;
use crate::job_log;
use crate::models::ModelStore;

use args::{Generation, InputImages, Role};
use child::{RunError, Stream};
use output::{ImageEncoding, VideoContainer};

pub use binary::SD_CLI_ENV;

/// The engine's routing id (PROTOCOL.md §9.1).
pub const NAME: &str = "sdcpp";

/// What this engine advertises for `image` and `video`: any `sd-cpp` model.
pub const MODEL_WILDCARD: &str = "sd-cpp:*";

/// How long one `sd-cli` run may take before it is killed and the job fails (retryable).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// How long `sd-cli --version` may take when the engine is built.
pub const VERSION_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest input image (`initImageUrl`, `maskUrl`, `refImageUrl`) fetched, in bytes.
pub const MAX_INPUT_IMAGE_BYTES: u64 = 64 * 1024 * 1024;

/// A progress job log line is written each time a phase (model loading, sampling,
/// decoding) gets this many percent further, and at its end.
pub const PROGRESS_NOTICE_PERCENT: u32 = 10;

/// The sd-cpp engine. Cheap to share; each job runs its own `sd-cli`.
pub struct SdCppEngine {
    store: ModelStore,
    /// The binary found when the engine was built.
    binary: Option<PathBuf>,
    timeout: Duration,
    advertised: Mutex<BTreeMap<TaskKind, BTreeSet<String>>>,
}

impl std::fmt::Debug for SdCppEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SdCppEngine")
            .field("binary", &self.binary)
            .field("models_root", &self.store.root())
            .field("timeout", &self.timeout)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SdCppEngine {
    /// The engine of a worker: `sd-cli` looked for as the module docs say (and its version
    /// logged), models in `store`.
    pub fn new(store: ModelStore) -> SdCppEngine {
        let binary = match binary::locate_from_env(store.root()) {
            Ok((path, origin)) => {
                match version(&path) {
                    Ok(v) => {
                        tracing::info!("sd-cpp engine: {} (from {origin}): {v}", path.display())
                    }
                    Err(e) => tracing::warn!(
                        "sd-cpp engine: {} (from {origin}) did not report a version: {e}",
                        path.display()
                    ),
                }
                Some(path)
            }
            Err(why) => {
                tracing::info!("sd-cpp engine: {why}; sd-cpp jobs fail until one is installed");
                None
            }
        };
        SdCppEngine::with_binary(store, binary)
    }

    /// An engine running `binary` (`None`: none found yet, looked for again at each job).
    pub fn with_binary(store: ModelStore, binary: Option<PathBuf>) -> SdCppEngine {
        let mut advertised: BTreeMap<TaskKind, BTreeSet<String>> = BTreeMap::new();
        if binary.is_some() {
            for kind in [TaskKind::Image, TaskKind::Video] {
                advertised
                    .entry(kind)
                    .or_default()
                    .insert(MODEL_WILDCARD.to_string());
            }
            for (kind, model) in store.cached_models(&ModelEngine::SdCpp) {
                advertised.entry(kind).or_default().insert(model);
            }
        }
        SdCppEngine {
            store,
            binary,
            timeout: DEFAULT_TIMEOUT,
            advertised: Mutex::new(advertised),
        }
    }

    /// The same engine with another deadline per `sd-cli` run.
    pub fn with_timeout(mut self, timeout: Duration) -> SdCppEngine {
        self.timeout = timeout;
        self
    }

    /// The binary found when the engine was built.
    pub fn binary(&self) -> Option<&Path> {
        self.binary.as_deref()
    }

    fn binary_for_job(&self) -> Result<PathBuf, EngineError> {
        if let Some(path) = &self.binary {
            return Ok(path.clone());
        }
        binary::locate_from_env(self.store.root())
            .map(|(path, _)| path)
            .map_err(|why| {
                EngineError::new(
                    EngineErrorKind::EngineNotAvailable,
                    format!("the sd-cpp engine cannot run: {why}"),
                )
            })
    }

    /// Runs one job (after the routing checks of [`Engine::dispatch`]).
    fn run(&self, job: &JobRequest) -> Result<EngineOutput, EngineError> {
        // A worker without sd-cli says so first, whatever else is wrong with the job.
        let program = self.binary_for_job()?;
        let defaults = &job.source.cli_defaults;
        // Everything that can be checked without the files is checked before fetching them.
        let (generation, result) = match &job.task {
            Task::Image(task) => (
                Generation::image(task, defaults)?,
                Output::Image(ImageEncoding::require(task.ext())?),
            ),
            Task::Video(task) => {
                let container = VideoContainer::for_ext(task.ext());
                if container.ext() != task.ext().to_ascii_lowercase() {
                    job_log::info(&format!(
                        "sd-cli cannot write `{}`; the video is delivered as {}",
                        task.ext(),
                        container.ext()
                    ));
                }
                (Generation::video(task, defaults)?, Output::Video(container))
            }
            _ => return Err(EngineError::unsupported_kind(NAME, job.kind())),
        };
        let roles = args::file_roles(&job.source.files)?;
        let paths = self.store.ensure(&job.model, &job.source.files)?;
        let files: Vec<(Role, PathBuf)> = roles.into_iter().zip(paths).collect();

        let work = tempfile::Builder::new()
            .prefix("studio-worker-sdcpp-")
            .tempdir()
            .map_err(|e| EngineError::io(format!("cannot create a temporary directory: {e}")))?;
        let inputs = fetch_inputs(&job.task, work.path())?;
        let out_path = work.path().join(format!("out.{}", result.written_ext()));
        let argv = args::command_line(&files, &generation, &inputs, &out_path);

        job_log::info(&format!(
            "sd-cli: {} {}x{}, {} steps{}",
            job.kind(),
            generation.width,
            generation.height,
            generation.steps,
            generation
                .video
                .map(|v| format!(", {} frames at {} fps", v.frames, v.fps))
                .unwrap_or_default()
        ));
        let mut command = Command::new(&program);
        command.args(&argv).current_dir(work.path());
        let mut progress = Progress::default();
        let exited = child::run(
            command,
            self.timeout,
            &cancel::current(),
            &mut |stream, line| progress.line(stream, line),
        )
        .map_err(|e| run_error(e, &program, self.timeout))?;
        if !exited.status.success() {
            return Err(EngineError::failed(
                format!(
                    "sd-cli exited with {}: {}",
                    exited.status,
                    exited.last_line().unwrap_or("(no output)")
                ),
                true,
            ));
        }
        let written = match std::fs::read(&out_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(EngineError::failed(
                    format!(
                        "sd-cli exited successfully but wrote no {}: {}",
                        out_path.file_name().unwrap_or_default().to_string_lossy(),
                        exited.last_line().unwrap_or("(no output)")
                    ),
                    true,
                ))
            }
            Err(e) => return Err(EngineError::io(format!("reading sd-cli's output: {e}"))),
        };
        let output = result.deliver(written)?;
        self.remember(&job.model, job.kind());
        Ok(output)
    }

    /// Records and advertises a model a job ran on.
    fn remember(&self, model: &str, kind: TaskKind) {
        if let Err(e) = self.store.record(model, &ModelEngine::SdCpp, kind) {
            tracing::warn!("sd-cpp engine: {e}");
        }
        lock(&self.advertised)
            .entry(kind)
            .or_default()
            .insert(model.to_string());
    }
}

/// What the job delivers.
#[derive(Clone, Copy, Debug)]
enum Output {
    Image(ImageEncoding),
    Video(VideoContainer),
}

impl Output {
    /// The extension of the file sd-cli is told to write.
    fn written_ext(self) -> &'static str {
        match self {
            Output::Image(_) => output::IMAGE_OUTPUT_EXT,
            Output::Video(container) => container.ext(),
        }
    }

    fn deliver(self, written: Vec<u8>) -> Result<EngineOutput, EngineError> {
        match self {
            Output::Image(encoding) => Ok(EngineOutput::Binary {
                bytes: output::reencode(&written, encoding)?,
                ext: match encoding {
                    ImageEncoding::Png => "png",
                    ImageEncoding::WebP => "webp",
                    ImageEncoding::Jpeg => "jpg",
                }
                .to_string(),
            }),
            Output::Video(container) if container.matches(&written) => Ok(EngineOutput::Binary {
                bytes: written,
                ext: container.ext().to_string(),
            }),
            Output::Video(container) => Err(EngineError::failed(
                format!("sd-cli wrote something that is not {}", container.ext()),
                true,
            )),
        }
    }
}

/// Fetches the task's input images into `dir`, named by their content.
fn fetch_inputs(task: &Task, dir: &Path) -> Result<InputImages, EngineError> {
    let (init, mask, reference) = match task {
        Task::Image(t) => (&t.init_image_url, &t.mask_url, &t.ref_image_url),
        Task::Video(t) => (&t.init_image_url, &None, &None),
        _ => (&None, &None, &None),
    };
    let fetch =
        |what: &str, stem: &str, url: &Option<String>| -> Result<Option<PathBuf>, EngineError> {
            let Some(url) = url else {
                return Ok(None);
            };
            let bytes = input_url::fetch(what, url, MAX_INPUT_IMAGE_BYTES)?;
            let ext = output::input_image_ext(&bytes).ok_or_else(|| {
                EngineError::invalid_input(format!(
                    "{what} `{}` is not an image sd-cli reads (PNG, JPEG, WebP, BMP, GIF, TGA)",
                    crate::models::redact(url)
                ))
            })?;
            let path = dir.join(format!("{stem}.{ext}"));
            std::fs::write(&path, bytes)
                .map_err(|e| EngineError::io(format!("cannot write {}: {e}", path.display())))?;
            Ok(Some(path))
        };
    Ok(InputImages {
        init: fetch("initImageUrl", "init", init)?,
        mask: fetch("maskUrl", "mask", mask)?,
        reference: fetch("refImageUrl", "ref", reference)?,
    })
}

fn run_error(e: RunError, program: &Path, timeout: Duration) -> EngineError {
    match e {
        RunError::Spawn(e) => {
            EngineError::io(format!("cannot start sd-cli at {}: {e}", program.display()))
        }
        RunError::Wait(e) => EngineError::io(format!("waiting for sd-cli failed: {e}")),
        RunError::TimedOut { last_line } => EngineError::failed(
            format!(
                "sd-cli did not finish within {}s and was killed (last line: {})",
                timeout.as_secs(),
                last_line.as_deref().unwrap_or("none")
            ),
            true,
        ),
        RunError::Cancelled => {
            EngineError::failed("the job was cancelled; sd-cli was killed", true)
        }
    }
}

/// `sd-cli --version`'s first line.
pub fn version(program: &Path) -> Result<String, String> {
    let mut command = Command::new(program);
    command.arg("--version");
    let mut first = None;
    let exited = child::run(
        command,
        VERSION_TIMEOUT,
        &CancelToken::new(),
        &mut |stream, line| {
            if stream == Stream::Stdout && first.is_none() {
                first = Some(line.to_string());
            }
        },
    )
    .map_err(|e| format!("{e:?}"))?;
    match first {
        Some(line) if exited.status.success() => Ok(line),
        _ => Err(format!(
            "`--version` exited with {}: {}",
            exited.status,
            exited.last_line().unwrap_or("(no output)")
        )),
    }
}

/// A progress bar line of sd-cli (`  |=====>    | 3/20 - 1.23s/it`): step, total and the
/// speed text.
pub fn parse_progress(line: &str) -> Option<(u32, u32, &str)> {
    if line.matches('|').count() < 2 {
        return None;
    }
    let rest = line.rsplit('|').next()?.trim();
    let (counts, speed) = rest.split_once(" - ").unwrap_or((rest, ""));
    let (step, total) = counts.trim().split_once('/')?;
    let (step, total) = (step.parse().ok()?, total.parse().ok()?);
    (total > 0 && step <= total).then_some((step, total, speed.trim()))
}

/// Turns sd-cli's output into job log lines: the progress bar every
/// [`PROGRESS_NOTICE_PERCENT`] % of a phase, warnings and errors as warnings; the rest is
/// only traced.
#[derive(Debug, Default)]
struct Progress {
    total: u32,
    last_step: u32,
    next_percent: u32,
}

impl Progress {
    fn line(&mut self, stream: Stream, line: &str) {
        if let Some((step, total, speed)) = parse_progress(line) {
            if total != self.total || step < self.last_step {
                self.total = total;
                self.next_percent = 0;
            }
            self.last_step = step;
            let percent = step * 100 / total;
            if percent >= self.next_percent || step == total {
                job_log::info(&format!("sd-cli: {step}/{total} ({percent}%) {speed}"));
                self.next_percent =
                    (percent / PROGRESS_NOTICE_PERCENT + 1) * PROGRESS_NOTICE_PERCENT;
            }
            return;
        }
        let trimmed = line.trim();
        if stream == Stream::Stderr || trimmed.starts_with("[WARN") || trimmed.starts_with("[ERROR")
        {
            job_log::warn(&format!("sd-cli: {trimmed}"));
        } else {
            tracing::debug!(target: "studio_engines", "sd-cli: {trimmed}");
        }
    }
}

impl Engine for SdCppEngine {
    fn name(&self) -> &'static str {
        NAME
    }

    fn serves(&self) -> Vec<ModelEngine> {
        vec![ModelEngine::SdCpp]
    }

    fn capabilities(&self) -> BTreeMap<TaskKind, Vec<String>> {
        lock(&self.advertised)
            .iter()
            .map(|(kind, models)| (*kind, models.iter().cloned().collect()))
            .collect()
    }

    fn dispatch(&self, job: &JobRequest) -> Result<EngineOutput, EngineError> {
        if job.source.engine != ModelEngine::SdCpp {
            return Err(EngineError::source_mismatch(NAME, &job.source.engine));
        }
        self.run(job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_parse() {
        assert_eq!(
            parse_progress("  |=====>      | 3/20 - 1.23s/it"),
            Some((3, 20, "1.23s/it"))
        );
        assert_eq!(
            parse_progress(
                "|==================================================| 1130/1130 - 512.00MB/s"
            ),
            Some((1130, 1130, "512.00MB/s"))
        );
        assert_eq!(parse_progress("[INFO ] a.cpp:12 - 3/20 things"), None);
        assert_eq!(parse_progress("| a | b/c"), None);
        assert_eq!(parse_progress("| x | 5/0 - 1s/it"), None);
        assert_eq!(parse_progress("| x | 6/5 - 1s/it"), None);
    }

    #[test]
    fn progress_notices_come_every_ten_percent_of_each_phase() {
        use crate::job_log::{self, JobLogLevel};
        use std::sync::{Arc, Mutex};
        let got = Arc::new(Mutex::new(Vec::<(JobLogLevel, String)>::new()));
        let sink: job_log::JobLogSink = {
            let got = got.clone();
            Arc::new(move |l, m| got.lock().unwrap().push((l, m.to_string())))
        };
        job_log::with_sink(sink, || {
            let mut p = Progress::default();
            for step in 1..=20 {
                p.line(Stream::Stdout, &format!("  |==> | {step}/20 - 1.00s/it"));
            }
            for step in 1..=4 {
                p.line(Stream::Stdout, &format!("  |==> | {step}/4 - 2.00it/s"));
            }
            p.line(Stream::Stdout, "[INFO ] model.cpp:1 - loading");
            p.line(Stream::Stdout, "[WARN ] model.cpp:2 - unknown tensor");
            p.line(Stream::Stderr, "[ERROR] main.cpp:3 - out of memory");
        });
        let got = got.lock().unwrap();
        let texts: Vec<&str> = got.iter().map(|(_, m)| m.as_str()).collect();
        let sampling: Vec<&str> = texts
            .iter()
            .copied()
            .filter(|t| t.contains("/20"))
            .collect();
        assert_eq!(sampling.len(), 11, "{texts:#?}");
        assert_eq!(sampling[0], "sd-cli: 1/20 (5%) 1.00s/it");
        assert!(sampling[1].starts_with("sd-cli: 2/20 (10%)"), "{texts:#?}");
        assert_eq!(sampling[10], "sd-cli: 20/20 (100%) 1.00s/it");
        let phase2: Vec<&str> = texts
            .iter()
            .copied()
            .filter(|t| t.contains("/4 "))
            .collect();
        assert_eq!(phase2.len(), 4, "a new phase starts over: {texts:#?}");
        assert!(!texts.iter().any(|t| t.contains("loading")));
        let warns: Vec<&str> = got
            .iter()
            .filter(|(l, _)| *l == JobLogLevel::Warn)
            .map(|(_, m)| m.as_str())
            .collect();
        assert_eq!(
            warns,
            [
                "sd-cli: [WARN ] model.cpp:2 - unknown tensor",
                "sd-cli: [ERROR] main.cpp:3 - out of memory"
            ]
        );
    }
}
