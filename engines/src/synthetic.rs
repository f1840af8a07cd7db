//! The synthetic engine (PROTOCOL.md §9.3): deterministic placeholder outputs keyed by
//! SHA-256 of the prompt, for tests, demos and protocol checks without model weights.
//!
//! Pure and fast: no I/O, no clock, no randomness; the same job always gives the same bytes.
//! Floating-point work uses only IEEE-exact operations (`+ - * /`, `floor`, `round`) and a
//! polynomial sine of its own, so the bytes do not depend on the platform's `libm` either.

use std::collections::BTreeMap;

use image::codecs::png::PngEncoder;
use image::codecs::webp::WebPEncoder;
use image::{ExtendedColorType, ImageEncoder};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use studio_core::wire::{
    AudioSttTask, AudioTtsTask, ImageTask, LlmTask, ModelEngine, Task, TaskKind, VideoTask,
};

use crate::engine::{Engine, EngineOutput, JobRequest};
use crate::error::EngineError;

/// Side of the (square) synthetic image, whatever size was requested.
pub const IMAGE_SIZE: u32 = 512;
/// Number of concentric square rings in the synthetic image.
pub const IMAGE_BANDS: u32 = 6;
/// Sample rate of the synthetic speech, Hz.
pub const TTS_SAMPLE_RATE: u32 = 22_050;
/// Number of samples of the synthetic speech (exactly one second).
pub const TTS_SAMPLES: u32 = 22_050;
/// Peak amplitude of the synthetic speech as a fraction of full scale.
pub const TTS_AMPLITUDE: f64 = 0.4;
/// Frames per second of the synthetic video when the task names none.
pub const VIDEO_DEFAULT_FPS: u32 = 8;
/// The highest frame rate a synthetic video gets; a higher `fps` is lowered to it. (A GIF
/// counts frame delays in hundredths of a second, and viewers slow down delays under
/// 2/100 s.)
pub const VIDEO_MAX_FPS: u32 = 30;
/// The most frames a synthetic video holds; `seconds` x `fps` beyond it is cut to it.
pub const VIDEO_MAX_FRAMES: u32 = 120;

/// The model ids advertised for `kind`: `synthetic` and `synthetic-<kind>`.
pub fn advertised_models(kind: TaskKind) -> [&'static str; 2] {
    let specific = match kind {
        TaskKind::Image => "synthetic-image",
        TaskKind::Llm => "synthetic-llm",
        TaskKind::AudioStt => "synthetic-stt",
        TaskKind::AudioTts => "synthetic-tts",
        TaskKind::Video => "synthetic-video",
    };
    ["synthetic", specific]
}

/// The deterministic engine. Serves `modelSource.engine == "synthetic"` only, and only the
/// models it advertises (never the wildcard `"*"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntheticEngine {
    kinds: Vec<TaskKind>,
    /// Extra time each job takes (default none). A test and demo aid: it makes a job stay
    /// "in flight" long enough to observe busy rejects, shutdown grace and reconnects.
    delay: std::time::Duration,
}

impl SyntheticEngine {
    /// A synthetic engine serving every task kind.
    pub fn new() -> SyntheticEngine {
        SyntheticEngine {
            kinds: TaskKind::ALL.to_vec(),
            delay: std::time::Duration::ZERO,
        }
    }

    /// The same engine, taking `delay` longer per job (outputs unchanged).
    pub fn with_delay(mut self, delay: std::time::Duration) -> SyntheticEngine {
        self.delay = delay;
        self
    }

    /// A synthetic engine serving only `kinds` (e.g. an image-only test worker).
    pub fn with_kinds(kinds: &[TaskKind]) -> SyntheticEngine {
        SyntheticEngine {
            kinds: TaskKind::ALL
                .into_iter()
                .filter(|k| kinds.contains(k))
                .collect(),
            delay: std::time::Duration::ZERO,
        }
    }
}

impl Default for SyntheticEngine {
    fn default() -> SyntheticEngine {
        SyntheticEngine::new()
    }
}

impl Engine for SyntheticEngine {
    fn name(&self) -> &'static str {
        "synthetic"
    }

    fn serves(&self) -> Vec<ModelEngine> {
        vec![ModelEngine::Synthetic]
    }

    fn capabilities(&self) -> BTreeMap<TaskKind, Vec<String>> {
        self.kinds
            .iter()
            .map(|&kind| {
                let models = advertised_models(kind).map(String::from).to_vec();
                (kind, models)
            })
            .collect()
    }

    fn dispatch(&self, job: &JobRequest) -> Result<EngineOutput, EngineError> {
        self.ensure_source(job)?;
        self.ensure_supports(job.kind(), &job.model)?;
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        render(&job.task)
    }
}

/// The synthetic output for `task`, without any routing or model checks. Only a video
/// task can be refused (`InvalidInput`: `seconds` not above zero, `fps` zero).
pub fn render(task: &Task) -> Result<EngineOutput, EngineError> {
    Ok(match task {
        Task::Image(t) => render_image_task(t),
        Task::Llm(t) => EngineOutput::Json(llm_result(t)),
        Task::AudioStt(t) => EngineOutput::Json(stt_result(t)),
        Task::AudioTts(t) => tts_output(t),
        Task::Video(t) => video_output(t)?,
    })
}

// ------------------------------------------------------------------------------------------
// Hashing helpers
// ------------------------------------------------------------------------------------------

fn digest(data: &str) -> [u8; 32] {
    Sha256::digest(data.as_bytes()).into()
}

/// The first 16 lower-case hex digits of SHA-256(`data`).
fn short_hex(data: &str) -> String {
    studio_core::wire::hex(&digest(data)[..8])
}

// ------------------------------------------------------------------------------------------
// Deterministic trigonometry
// ------------------------------------------------------------------------------------------

const PI: f64 = std::f64::consts::PI;
const TAU: f64 = std::f64::consts::TAU;
const FRAC_PI_2: f64 = std::f64::consts::FRAC_PI_2;

/// sin(x) from IEEE-exact operations only (range reduction + odd Taylor polynomial to x^11;
/// absolute error below 1e-7), so results are identical on every platform.
fn det_sin(x: f64) -> f64 {
    let mut r = x - TAU * (x / TAU).round(); // [-pi, pi]
    if r > FRAC_PI_2 {
        r = PI - r;
    } else if r < -FRAC_PI_2 {
        r = -PI - r;
    }
    let r2 = r * r;
    r * (1.0
        - r2 / 6.0 * (1.0 - r2 / 20.0 * (1.0 - r2 / 42.0 * (1.0 - r2 / 72.0 * (1.0 - r2 / 110.0)))))
}

fn det_cos(x: f64) -> f64 {
    det_sin(x + FRAC_PI_2)
}

// ------------------------------------------------------------------------------------------
// Image and video
// ------------------------------------------------------------------------------------------

/// Renders the synthetic picture for `prompt` as packed RGB8, [`IMAGE_SIZE`] square.
///
/// Palette: four colours from digest bytes 0..12 (3 bytes each) of SHA-256(`prompt`).
/// Pattern: concentric square rings around the centre (Chebyshev distance) cut into
/// [`IMAGE_BANDS`] bands, the distance perturbed by a separable sin(x)·cos(y) ripple whose
/// frequencies and phases come from digest bytes 12..16; band `b` gets colour `b mod 4`.
pub fn render_rgb(prompt: &str) -> Vec<u8> {
    let d = digest(prompt);
    let palette = palette(&d);
    let mut rgb = Vec::with_capacity((IMAGE_SIZE * IMAGE_SIZE * 3) as usize);
    for index in render_indices(&d, 0.0) {
        rgb.extend_from_slice(&palette[usize::from(index)]);
    }
    rgb
}

/// The four colours of the pattern: digest bytes 0..12, three bytes each.
fn palette(d: &[u8; 32]) -> [[u8; 3]; 4] {
    std::array::from_fn(|i| [d[3 * i], d[3 * i + 1], d[3 * i + 2]])
}

/// The palette index (band mod 4) of every pixel of the pattern for digest `d`, row by
/// row, with both ripple phases advanced by `shift` radians (0: the still image).
fn render_indices(d: &[u8; 32], shift: f64) -> Vec<u8> {
    let size = IMAGE_SIZE as usize;
    let amplitude = 8.0;
    let fx = TAU * f64::from(3 + d[12] % 5) / f64::from(IMAGE_SIZE);
    let fy = TAU * f64::from(3 + d[13] % 5) / f64::from(IMAGE_SIZE);
    let px = TAU * f64::from(d[14]) / 256.0 + shift;
    let py = TAU * f64::from(d[15]) / 256.0 + shift;
    let ripple_x: Vec<f64> = (0..size)
        .map(|x| amplitude * det_sin(fx * x as f64 + px))
        .collect();
    let ripple_y: Vec<f64> = (0..size).map(|y| det_cos(fy * y as f64 + py)).collect();

    // Distances in half pixels from the centre of the image: |2x + 1 - size|.
    let half = |i: usize| (2 * i as i64 + 1 - size as i64).unsigned_abs() as f64 / 2.0;
    let band_width = f64::from(IMAGE_SIZE) / 2.0 / f64::from(IMAGE_BANDS);
    let max_band = f64::from(IMAGE_BANDS - 1);

    let mut indices = Vec::with_capacity(size * size);
    for (y, ry) in ripple_y.iter().enumerate() {
        let dy = half(y);
        for (x, rx) in ripple_x.iter().enumerate() {
            let chebyshev = half(x).max(dy);
            let r = chebyshev + rx * ry;
            let band = (r / band_width).floor().clamp(0.0, max_band) as u8;
            indices.push(band % 4);
        }
    }
    indices
}

fn encode_png(rgb: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PngEncoder::new(&mut out)
        .write_image(rgb, IMAGE_SIZE, IMAGE_SIZE, ExtendedColorType::Rgb8)
        .expect("encoding a well-formed RGB8 buffer into memory cannot fail");
    out
}

fn encode_webp(rgb: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    WebPEncoder::new_lossless(&mut out)
        .write_image(rgb, IMAGE_SIZE, IMAGE_SIZE, ExtendedColorType::Rgb8)
        .expect("encoding a well-formed RGB8 buffer into memory cannot fail");
    out
}

/// The synthetic image for `prompt` as lossless WebP.
pub fn render_webp(prompt: &str) -> Vec<u8> {
    encode_webp(&render_rgb(prompt))
}

/// The synthetic image for `prompt` as PNG.
pub fn render_png(prompt: &str) -> Vec<u8> {
    encode_png(&render_rgb(prompt))
}

fn render_image_task(t: &ImageTask) -> EngineOutput {
    // Always 512x512 whatever was requested; WebP for `webp`, otherwise PNG bytes with the
    // requested extension echoed back (PROTOCOL.md §9.3).
    let ext = t.ext();
    let bytes = if ext == "webp" {
        render_webp(&t.prompt)
    } else {
        render_png(&t.prompt)
    };
    EngineOutput::Binary {
        bytes,
        ext: ext.to_string(),
    }
}

/// How many frames a video task gets, and at what rate: `fps` (default
/// [`VIDEO_DEFAULT_FPS`], at most [`VIDEO_MAX_FPS`]) and `seconds` x `fps` rounded, at least
/// one and at most [`VIDEO_MAX_FRAMES`]. `seconds` not above zero or `fps` zero is
/// `InvalidInput`.
pub fn video_frames(t: &VideoTask) -> Result<(u32, u32), EngineError> {
    let fps = t.fps.unwrap_or(VIDEO_DEFAULT_FPS);
    if fps == 0 {
        return Err(EngineError::invalid_input("video fps must be at least 1"));
    }
    let seconds = t.seconds();
    // The wire reads only finite numbers.
    if seconds <= 0.0 {
        return Err(EngineError::invalid_input(format!(
            "video seconds must be above zero, got {seconds}"
        )));
    }
    let fps = fps.min(VIDEO_MAX_FPS);
    let frames = (f64::from(seconds) * f64::from(fps)).round();
    let frames = frames.clamp(1.0, f64::from(VIDEO_MAX_FRAMES)) as u32;
    Ok((frames, fps))
}

/// The synthetic video for `prompt`: an endlessly looping animated GIF of `frames` frames,
/// [`IMAGE_SIZE`] square, shown `100 / fps` hundredths of a second each (rounded; GIF's
/// unit). Frame `i` is the image pattern with its ripple's phases advanced by
/// `2π·i / frames` (frame 0 is the still image, and the loop is seamless); every frame is
/// indexed over the image's four colours, so no quantizer touches them.
pub fn render_gif(prompt: &str, frames: u32, fps: u32) -> Vec<u8> {
    let d = digest(prompt);
    let palette: Vec<u8> = palette(&d).concat();
    let side = IMAGE_SIZE as u16;
    let delay = ((100 + fps.max(1) / 2) / fps.max(1)).max(1) as u16;
    let mut out = Vec::new();
    {
        let mut encoder = gif::Encoder::new(&mut out, side, side, &palette)
            .expect("writing a GIF header into memory cannot fail");
        encoder
            .set_repeat(gif::Repeat::Infinite)
            .expect("writing into memory cannot fail");
        for i in 0..frames {
            let shift = TAU * f64::from(i) / f64::from(frames);
            let frame = gif::Frame {
                width: side,
                height: side,
                delay,
                dispose: gif::DisposalMethod::Keep,
                buffer: std::borrow::Cow::Owned(render_indices(&d, shift)),
                ..gif::Frame::default()
            };
            encoder
                .write_frame(&frame)
                .expect("encoding an indexed frame into memory cannot fail");
        }
    }
    out
}

fn video_output(t: &VideoTask) -> Result<EngineOutput, EngineError> {
    // An animated GIF whatever `ext` was asked for (default mp4): the bytes are reported
    // as what they are (PROTOCOL.md §9.3).
    let (frames, fps) = video_frames(t)?;
    Ok(EngineOutput::Binary {
        bytes: render_gif(&t.prompt, frames, fps),
        ext: "gif".to_string(),
    })
}

// ------------------------------------------------------------------------------------------
// LLM and speech-to-text
// ------------------------------------------------------------------------------------------

/// The synthetic LLM's prompt: the messages as `role: content` lines joined by `\n`.
pub fn llm_prompt(t: &LlmTask) -> String {
    t.messages
        .iter()
        .map(|m| format!("{}: {}", m.role, m.content))
        .collect::<Vec<_>>()
        .join("\n")
}

fn llm_result(t: &LlmTask) -> Value {
    let prompt = llm_prompt(t);
    let words = prompt.split_whitespace().count();
    json!({
        "object": "chat.completion",
        "model": "synthetic-llm",
        "choices": [{
            "index": 0,
            "message": {
                "role": "assistant",
                "content": format!("[synthetic] reply to prompt #{}", short_hex(&prompt)),
            },
            "finish_reason": "stop",
        }],
        "usage": {
            "prompt_tokens": words,
            "completion_tokens": 8,
            "total_tokens": words + 8,
        },
    })
}

fn stt_result(t: &AudioSttTask) -> Value {
    json!({
        "text": format!("[synthetic] transcript of {}", short_hex(&t.input_url)),
        "language": t.language.as_deref().unwrap_or("en"),
        "duration": 1.0,
    })
}

// ------------------------------------------------------------------------------------------
// Text-to-speech
// ------------------------------------------------------------------------------------------

/// The tone frequency for `text`: `220 + digest[0] * 660 / 255` Hz (220..=880 Hz).
pub fn tts_frequency(text: &str) -> f64 {
    220.0 + f64::from(digest(text)[0]) * 660.0 / 255.0
}

/// The synthetic speech for `text`: a RIFF/WAVE file, PCM 16-bit mono at
/// [`TTS_SAMPLE_RATE`], [`TTS_SAMPLES`] samples of a sine at [`tts_frequency`] with peak
/// [`TTS_AMPLITUDE`] of full scale.
pub fn render_wav(text: &str) -> Vec<u8> {
    let freq = tts_frequency(text);
    let peak = TTS_AMPLITUDE * f64::from(i16::MAX);
    let step = TAU * freq / f64::from(TTS_SAMPLE_RATE);

    let data_len = TTS_SAMPLES * 2;
    let mut wav = Vec::with_capacity(44 + data_len as usize);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data_len).to_le_bytes());
    wav.extend_from_slice(b"WAVE");
    wav.extend_from_slice(b"fmt ");
    wav.extend_from_slice(&16u32.to_le_bytes()); // fmt chunk size
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&TTS_SAMPLE_RATE.to_le_bytes());
    wav.extend_from_slice(&(TTS_SAMPLE_RATE * 2).to_le_bytes()); // byte rate
    wav.extend_from_slice(&2u16.to_le_bytes()); // block align
    wav.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data_len.to_le_bytes());
    for n in 0..TTS_SAMPLES {
        let sample = (peak * det_sin(step * f64::from(n))).round() as i16;
        wav.extend_from_slice(&sample.to_le_bytes());
    }
    wav
}

fn tts_output(t: &AudioTtsTask) -> EngineOutput {
    EngineOutput::Binary {
        bytes: render_wav(&t.text),
        ext: "wav".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn det_sin_matches_std_closely() {
        let mut x = -50.0;
        while x < 50.0 {
            assert!((det_sin(x) - x.sin()).abs() < 1e-6, "sin({x})");
            assert!((det_cos(x) - x.cos()).abs() < 1e-6, "cos({x})");
            x += 0.0137;
        }
    }

    #[test]
    fn short_hex_is_sha256_prefix() {
        assert_eq!(short_hex("abc"), "ba7816bf8f01cfea");
    }

    #[test]
    fn rgb_buffer_uses_only_palette_colours() {
        let rgb = render_rgb("palette check");
        assert_eq!(rgb.len(), (IMAGE_SIZE * IMAGE_SIZE * 3) as usize);
        let d = digest("palette check");
        let palette: Vec<&[u8]> = (0..4).map(|i| &d[3 * i..3 * i + 3]).collect();
        let mut seen = [false; 4];
        for px in rgb.chunks_exact(3) {
            let i = palette
                .iter()
                .position(|c| *c == px)
                .expect("palette colour");
            seen[i] = true;
        }
        assert_eq!(seen, [true; 4], "all four colours are used");
    }

    #[test]
    fn centre_and_corner_bands() {
        let rgb = render_rgb("bands");
        let d = digest("bands");
        let at = |x: usize, y: usize| {
            let i = (y * IMAGE_SIZE as usize + x) * 3;
            [rgb[i], rgb[i + 1], rgb[i + 2]]
        };
        // Centre: band 0 (ripple amplitude is far smaller than a band); corner: band 5.
        assert_eq!(at(256, 256), [d[0], d[1], d[2]]);
        assert_eq!(at(0, 0), [d[3], d[4], d[5]]);
    }
}
