//! Input audio: fetching `inputUrl`, decoding WAV, mixing to mono and resampling to the
//! 16 kHz Whisper works at.
//!
//! * [`fetch_input`]: `https://` anywhere, plain `http://` only to a loopback host (tests and
//!   local tools), at most [`MAX_INPUT_BYTES`] (checked against `Content-Length` first, then
//!   while reading), redirects followed only over https.
//! * [`decode_wav`]: RIFF/WAVE through `hound`: integer PCM of 8, 16, 24 or 32 bits and
//!   32-bit float, any channel count (`WAVE_FORMAT_EXTENSIBLE` included), mixed to mono.
//! * [`resample`]: a polyphase windowed-sinc (Kaiser) resampler with an anti-alias cutoff
//!   below the lower of the two Nyquist frequencies.

use std::io::Cursor;

use crate::error::EngineError;

/// The largest input file fetched (bytes): about 2 h of 16-bit 16 kHz mono, or 25 min of
/// 16-bit 44.1 kHz stereo. Larger inputs fail `InvalidInput` before they are read.
pub const MAX_INPUT_BYTES: u64 = 256 * 1024 * 1024;

/// The longest input transcribed (seconds of audio, whatever the encoding).
pub const MAX_AUDIO_SECONDS: f64 = 3.0 * 3600.0;

/// Timeout of the whole input download.
pub use crate::input_url::FETCH_TIMEOUT;

/// The sample rate Whisper's front end expects (Hz).
pub const WHISPER_SAMPLE_RATE: u32 = 16_000;

/// Decoded audio: mono samples in `[-1, 1]` at `sample_rate`.
#[derive(Clone, Debug, PartialEq)]
pub struct Audio {
    /// Mono samples.
    pub samples: Vec<f32>,
    /// Samples per second.
    pub sample_rate: u32,
    /// Channels of the source before the mono mix-down.
    pub channels: u16,
}

impl Audio {
    /// Length in seconds.
    pub fn duration(&self) -> f64 {
        if self.sample_rate == 0 {
            0.0
        } else {
            self.samples.len() as f64 / f64::from(self.sample_rate)
        }
    }
}

// ------------------------------------------------------------------------------------------
// Fetching
// ------------------------------------------------------------------------------------------

/// Checks that `url` may be fetched: `https` anywhere, `http` only to loopback. Returns
/// whether it is https ([`crate::input_url::check`]).
pub fn check_input_url(url: &str) -> Result<bool, EngineError> {
    crate::input_url::check("inputUrl", url)
}

/// Downloads `url` into memory, at most `max_bytes` ([`crate::input_url::fetch`]).
///
/// Errors: a bad URL, a 4xx status or an oversized body are `InvalidInput` (not retryable:
/// the same offer fails the same way); transport trouble and 5xx are `Io` (retryable).
pub fn fetch_input(url: &str, max_bytes: u64) -> Result<Vec<u8>, EngineError> {
    crate::input_url::fetch("inputUrl", url, max_bytes)
}

// ------------------------------------------------------------------------------------------
// Decoding
// ------------------------------------------------------------------------------------------

/// Decodes a WAV file to mono `f32` samples in `[-1, 1]` at the file's sample rate.
///
/// Errors (all `InvalidInput`): empty input, not RIFF/WAVE, an unsupported sample format,
/// no samples, longer than [`MAX_AUDIO_SECONDS`], or a truncated data chunk.
pub fn decode_wav(bytes: &[u8]) -> Result<Audio, EngineError> {
    if bytes.is_empty() {
        return Err(EngineError::invalid_input("input audio is empty (0 bytes)"));
    }
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(EngineError::invalid_input(
            "input audio is not a WAV file (no RIFF/WAVE header); supported: WAV with \
             8/16/24/32-bit integer or 32-bit float samples",
        ));
    }
    let reader = hound::WavReader::new(Cursor::new(bytes))
        .map_err(|e| EngineError::invalid_input(format!("input WAV is not readable: {e}")))?;
    let spec = reader.spec();
    if spec.channels == 0 || spec.sample_rate == 0 {
        return Err(EngineError::invalid_input(
            "input WAV declares no channels or a zero sample rate",
        ));
    }
    let channels = usize::from(spec.channels);
    let frames = reader.duration() as usize;
    if frames as f64 / f64::from(spec.sample_rate) > MAX_AUDIO_SECONDS {
        return Err(EngineError::invalid_input(format!(
            "input audio is too long: {:.0} s, at most {MAX_AUDIO_SECONDS:.0} s are accepted",
            frames as f64 / f64::from(spec.sample_rate)
        )));
    }
    let interleaved: Vec<f32> = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Float, 32) => collect(reader.into_samples::<f32>())?,
        (hound::SampleFormat::Int, bits @ 1..=32) => {
            let scale = 1.0 / (1u64 << (bits - 1)) as f64;
            let ints: Vec<i32> = collect(reader.into_samples::<i32>())?;
            ints.into_iter()
                .map(|s| (s as f64 * scale) as f32)
                .collect()
        }
        (format, bits) => {
            return Err(EngineError::invalid_input(format!(
                "input WAV has an unsupported sample format ({format:?}, {bits} bits)"
            )))
        }
    };
    if interleaved.is_empty() {
        return Err(EngineError::invalid_input("input WAV has no samples"));
    }
    Ok(Audio {
        samples: mix_to_mono(&interleaved, channels),
        sample_rate: spec.sample_rate,
        channels: spec.channels,
    })
}

fn collect<T, I: Iterator<Item = hound::Result<T>>>(samples: I) -> Result<Vec<T>, EngineError> {
    samples
        .collect::<Result<Vec<T>, _>>()
        .map_err(|e| EngineError::invalid_input(format!("input WAV is truncated or corrupt: {e}")))
}

/// Averages interleaved `channels`-channel samples into one channel (an incomplete last
/// frame is dropped).
pub fn mix_to_mono(interleaved: &[f32], channels: usize) -> Vec<f32> {
    if channels <= 1 {
        return interleaved.to_vec();
    }
    let inv = 1.0 / channels as f32;
    interleaved
        .chunks_exact(channels)
        .map(|frame| frame.iter().sum::<f32>() * inv)
        .collect()
}

// ------------------------------------------------------------------------------------------
// Resampling
// ------------------------------------------------------------------------------------------

/// Zero crossings of the sinc on each side of the kernel centre (at the cutoff
/// frequency): the kernel's half-width is this many periods of the cutoff.
pub const RESAMPLE_ZERO_CROSSINGS: usize = 16;
/// Cutoff as a fraction of the lower Nyquist frequency (the transition band lies below
/// Nyquist, so almost nothing above it folds back).
pub const RESAMPLE_ROLLOFF: f64 = 0.92;
/// Kaiser window shape (about 80 dB stop-band attenuation).
pub const RESAMPLE_KAISER_BETA: f64 = 8.0;

/// Resamples mono `input` from `from_hz` to `to_hz` with a polyphase windowed-sinc filter.
///
/// The rates are reduced by their greatest common divisor to `L/M`; output sample `n` lies
/// at input position `n*M/L`, whose fractional part is one of `L` phases. Each phase has
/// its own precomputed set of `2*W` Kaiser-windowed sinc taps (normalised to unit DC gain),
/// with the cutoff at [`RESAMPLE_ROLLOFF`] of the lower Nyquist frequency and `W` chosen so
/// the kernel spans [`RESAMPLE_ZERO_CROSSINGS`] cutoff periods on each side. Samples beyond
/// either end count as silence. The output has `ceil(len*L/M)` samples.
pub fn resample(input: &[f32], from_hz: u32, to_hz: u32) -> Vec<f32> {
    if from_hz == to_hz || input.is_empty() || from_hz == 0 || to_hz == 0 {
        return input.to_vec();
    }
    let g = gcd(from_hz as u64, to_hz as u64);
    let up = to_hz as u64 / g; // L
    let down = from_hz as u64 / g; // M
                                   // Cutoff relative to the input Nyquist frequency.
    let cutoff = RESAMPLE_ROLLOFF * (to_hz as f64 / from_hz as f64).min(1.0);
    let half = (RESAMPLE_ZERO_CROSSINGS as f64 / cutoff).ceil() as usize;
    let taps = 2 * half;
    let phases = up as usize;
    // table[p * taps + j] is the weight of input sample i0 - (half - 1) + j for phase p.
    let mut table = vec![0f32; phases * taps];
    let i0_beta = bessel_i0(RESAMPLE_KAISER_BETA);
    for p in 0..phases {
        let frac = p as f64 / up as f64;
        let row = &mut table[p * taps..(p + 1) * taps];
        let mut sum = 0f64;
        let mut weights = vec![0f64; taps];
        for (j, w) in weights.iter_mut().enumerate() {
            // Distance from the output position to this input sample, in input samples.
            let d = frac + (half as f64 - 1.0) - j as f64;
            let x = d / half as f64;
            let window = if x.abs() >= 1.0 {
                0.0
            } else {
                bessel_i0(RESAMPLE_KAISER_BETA * (1.0 - x * x).sqrt()) / i0_beta
            };
            *w = cutoff * sinc(cutoff * d) * window;
            sum += *w;
        }
        for (dst, w) in row.iter_mut().zip(&weights) {
            *dst = (w / sum) as f32;
        }
    }
    let len = input.len() as u64;
    let out_len = (len * up).div_ceil(down) as usize;
    let mut out = Vec::with_capacity(out_len);
    for n in 0..out_len as u64 {
        let pos = n * down;
        let i0 = (pos / up) as i64;
        let phase = (pos % up) as usize;
        let row = &table[phase * taps..(phase + 1) * taps];
        let start = i0 - (half as i64 - 1);
        let mut acc = 0f32;
        if start >= 0 && start as usize + taps <= input.len() {
            let window = &input[start as usize..start as usize + taps];
            for (x, w) in window.iter().zip(row) {
                acc += x * w;
            }
        } else {
            for (j, w) in row.iter().enumerate() {
                let i = start + j as i64;
                if i >= 0 && (i as usize) < input.len() {
                    acc += input[i as usize] * w;
                }
            }
        }
        out.push(acc);
    }
    out
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

fn sinc(x: f64) -> f64 {
    if x.abs() < 1e-12 {
        1.0
    } else {
        let px = std::f64::consts::PI * x;
        px.sin() / px
    }
}

/// The zeroth-order modified Bessel function of the first kind (power series).
fn bessel_i0(x: f64) -> f64 {
    let mut sum = 1.0;
    let mut term = 1.0;
    let q = x * x / 4.0;
    for k in 1..64 {
        term *= q / (k as f64 * k as f64);
        sum += term;
        if term < sum * 1e-17 {
            break;
        }
    }
    sum
}

/// Decodes `bytes` as WAV and returns mono 16 kHz samples plus the input's duration in
/// seconds.
pub fn load_for_whisper(bytes: &[u8]) -> Result<(Vec<f32>, f64), EngineError> {
    let audio = decode_wav(bytes)?;
    let duration = audio.duration();
    let samples = resample(&audio.samples, audio.sample_rate, WHISPER_SAMPLE_RATE);
    Ok((samples, duration))
}
