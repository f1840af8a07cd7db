//! Whisper's front end: the Slaney-style mel filterbank and the log-mel spectrogram.
//!
//! The filterbank is computed here (no binary filter file is shipped): `n_mels` triangular
//! filters whose corners are equally spaced on the Slaney mel scale (linear below 1 kHz,
//! logarithmic above) between 0 Hz and Nyquist, each scaled by `2 / (f_high - f_low)` so
//! it has unit area in Hz ("slaney" normalisation). This is the filterbank OpenAI computed
//! for Whisper (`librosa.filters.mel(sr=16000, n_fft=400, n_mels=80)`).
//!
//! The spectrogram ([`LogMel`]) is Whisper's reference front end: a centred STFT (the
//! signal reflect-padded by `n_fft / 2` on both sides, one frame every 160 samples, the
//! last frame dropped), a periodic Hann window of 400 samples, the power `|X|^2` of the 201
//! one-sided bins (not doubled), the mel projection, `log10` clamped at 1e-10, the dynamic
//! range limited to 8 decades below the maximum, and `(x + 4) / 4`. The DFT is one matrix
//! product per chunk of frames (a 400 x 402 windowed cos/sin basis), so candle's optimised
//! GEMM does the work. (candle-transformers' own `log_mel_spectrogram_` follows whisper.cpp:
//! no centring and doubled power for bins 1..199, a constant offset in the features that
//! measurably changed tiny.en's transcripts, so it is not used.)

use std::f64::consts::PI;

use candle_core::{DType, Device, Tensor};

/// FFT size of Whisper's STFT (25 ms at 16 kHz).
pub const N_FFT: usize = 400;
/// Hop between frames (10 ms at 16 kHz).
pub const HOP_LENGTH: usize = 160;
/// Frequency bins of an `N_FFT` real FFT.
pub const N_FREQS: usize = N_FFT / 2 + 1;

const F_SP: f64 = 200.0 / 3.0; // Hz per mel in the linear part
const MIN_LOG_HZ: f64 = 1000.0;
const MIN_LOG_MEL: f64 = MIN_LOG_HZ / F_SP; // 15
fn log_step() -> f64 {
    6.4f64.ln() / 27.0
}

/// Hz to mel on the Slaney scale (linear below 1 kHz, logarithmic above).
pub fn hz_to_mel(hz: f64) -> f64 {
    if hz < MIN_LOG_HZ {
        hz / F_SP
    } else {
        MIN_LOG_MEL + (hz / MIN_LOG_HZ).ln() / log_step()
    }
}

/// Mel (Slaney scale) to Hz; the inverse of [`hz_to_mel`].
pub fn mel_to_hz(mel: f64) -> f64 {
    if mel < MIN_LOG_MEL {
        mel * F_SP
    } else {
        MIN_LOG_HZ * ((mel - MIN_LOG_MEL) * log_step()).exp()
    }
}

/// The mel filterbank as a row-major `n_mels x (n_fft/2 + 1)` matrix: row `m` holds the
/// weights of filter `m` over the FFT bins (bin `k` is at `k * sample_rate / n_fft` Hz).
pub fn mel_filters(sample_rate: u32, n_fft: usize, n_mels: usize) -> Vec<f32> {
    let n_freqs = n_fft / 2 + 1;
    let nyquist = f64::from(sample_rate) / 2.0;
    let fft_freqs: Vec<f64> = (0..n_freqs)
        .map(|k| k as f64 * f64::from(sample_rate) / n_fft as f64)
        .collect();
    let mel_max = hz_to_mel(nyquist);
    // n_mels + 2 corner frequencies, equally spaced in mel.
    let corners: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(mel_max * i as f64 / (n_mels + 1) as f64))
        .collect();
    let mut filters = vec![0f32; n_mels * n_freqs];
    for m in 0..n_mels {
        let (lo, centre, hi) = (corners[m], corners[m + 1], corners[m + 2]);
        let norm = 2.0 / (hi - lo);
        for (k, &f) in fft_freqs.iter().enumerate() {
            let rising = (f - lo) / (centre - lo);
            let falling = (hi - f) / (hi - centre);
            let w = rising.min(falling).max(0.0);
            filters[m * n_freqs + k] = (w * norm) as f32;
        }
    }
    filters
}

/// Frames transformed per matrix product (bounds the temporary frame matrix to ~1.6 MB).
const FRAMES_PER_CHUNK: usize = 1000;

/// Whisper's log-mel front end for one filterbank size (see the module docs).
#[derive(Clone, Debug)]
pub struct LogMel {
    /// `N_FFT x 2*N_FREQS`: Hann-windowed cosines, then negated windowed sines.
    basis: Tensor,
    /// `N_FREQS x n_mels`.
    filters_t: Tensor,
    n_mels: usize,
    device: Device,
}

impl LogMel {
    /// The front end for `n_mels` bins at 16 kHz.
    pub fn new(n_mels: usize, device: &Device) -> candle_core::Result<LogMel> {
        let mut basis = vec![0f32; N_FFT * 2 * N_FREQS];
        for n in 0..N_FFT {
            let hann = 0.5 - 0.5 * (2.0 * PI * n as f64 / N_FFT as f64).cos();
            for k in 0..N_FREQS {
                // Exact phase: (k * n) mod N_FFT keeps the angle small.
                let angle = 2.0 * PI * ((k * n) % N_FFT) as f64 / N_FFT as f64;
                basis[n * 2 * N_FREQS + k] = (hann * angle.cos()) as f32;
                basis[n * 2 * N_FREQS + N_FREQS + k] = (-hann * angle.sin()) as f32;
            }
        }
        let basis = Tensor::from_vec(basis, (N_FFT, 2 * N_FREQS), device)?;
        let filters = mel_filters(16_000, N_FFT, n_mels);
        let filters_t = Tensor::from_vec(filters, (n_mels, N_FREQS), device)?
            .t()?
            .contiguous()?;
        Ok(LogMel {
            basis,
            filters_t,
            n_mels,
            device: device.clone(),
        })
    }

    /// Mel bins.
    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    /// The log-mel spectrogram of 16 kHz mono `samples`: a `(n_mels, samples.len() / 160)`
    /// tensor, normalised as Whisper's (the maximum is taken over everything given, so the
    /// caller passes the whole input, padded as it wants).
    pub fn compute(&self, samples: &[f32]) -> candle_core::Result<Tensor> {
        let n_frames = samples.len() / HOP_LENGTH;
        if n_frames == 0 {
            return Tensor::zeros((self.n_mels, 0), DType::F32, &self.device);
        }
        let padded = reflect_pad(samples, N_FFT / 2);
        let mut chunks = Vec::new();
        let mut start = 0;
        while start < n_frames {
            let count = FRAMES_PER_CHUNK.min(n_frames - start);
            let mut frames = Vec::with_capacity(count * N_FFT);
            for f in start..start + count {
                frames.extend_from_slice(&padded[f * HOP_LENGTH..f * HOP_LENGTH + N_FFT]);
            }
            let frames = Tensor::from_vec(frames, (count, N_FFT), &self.device)?;
            let spectrum = frames.matmul(&self.basis)?;
            let re = spectrum.narrow(1, 0, N_FREQS)?;
            let im = spectrum.narrow(1, N_FREQS, N_FREQS)?;
            let power = (re.sqr()? + im.sqr()?)?;
            chunks.push(power.matmul(&self.filters_t)?);
            start += count;
        }
        let mel = Tensor::cat(&chunks, 0)?; // (frames, n_mels)
        let log = (mel.clamp(1e-10f32, f32::MAX)?.log()? / std::f64::consts::LN_10)?;
        let max = log.max_all()?.to_scalar::<f32>()?;
        let log = log.clamp(max - 8.0, f32::MAX)?;
        ((log + 4.0)? / 4.0)?.t()?.contiguous()
    }
}

/// `x` with `pad` samples mirrored on each side (without repeating the edge sample, like
/// numpy's and torch's `reflect`); zeros where `x` is too short to mirror.
pub fn reflect_pad(x: &[f32], pad: usize) -> Vec<f32> {
    let n = x.len();
    let mut out = Vec::with_capacity(n + 2 * pad);
    for i in (1..=pad).rev() {
        out.push(if i < n { x[i] } else { 0.0 });
    }
    out.extend_from_slice(x);
    for i in 1..=pad {
        out.push(if n > i { x[n - 1 - i] } else { 0.0 });
    }
    out
}
