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
//! product of the overlapping frames (read in place, 160 samples apart) with a 400 x 402
//! windowed cos/sin basis, so an optimised GEMM does the work, on the CPU pool's threads. (candle-transformers' own `log_mel_spectrogram_` follows whisper.cpp:
//! no centring and doubled power for bins 1..199, a constant offset in the features that
//! measurably changed tiny.en's transcripts, so it is not used.)

use std::f64::consts::PI;

use super::kernels::{gemm_rows, SyncPtr, View};
use crate::threads::ThreadPool;

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

/// A log-mel spectrogram: `n_mels` rows of `frames` values (channel-major).
#[derive(Clone, Debug, PartialEq)]
pub struct Spectrogram {
    pub n_mels: usize,
    pub frames: usize,
    /// Row `m` is `data[m * frames..(m + 1) * frames]`.
    pub data: Vec<f32>,
}

impl Spectrogram {
    /// `[n_mels, frames]`.
    pub fn dims(&self) -> [usize; 2] {
        [self.n_mels, self.frames]
    }

    /// Row `m` (one mel bin over time).
    pub fn row(&self, m: usize) -> &[f32] {
        &self.data[m * self.frames..(m + 1) * self.frames]
    }
}

/// Whisper's log-mel front end for one filterbank size (see the module docs).
#[derive(Clone, Debug)]
pub struct LogMel {
    /// `N_FFT x 2*N_FREQS`: Hann-windowed cosines, then negated windowed sines.
    basis: Vec<f32>,
    /// `n_mels x N_FREQS`.
    filters: Vec<f32>,
    n_mels: usize,
}

impl LogMel {
    /// The front end for `n_mels` bins at 16 kHz.
    pub fn new(n_mels: usize) -> LogMel {
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
        LogMel {
            basis,
            filters: mel_filters(16_000, N_FFT, n_mels),
            n_mels,
        }
    }

    /// Mel bins.
    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    /// The log-mel spectrogram of 16 kHz mono `samples`: `samples.len() / 160` frames,
    /// normalised as Whisper's (the maximum is taken over everything given, so the caller
    /// passes the whole input, padded as it wants).
    pub fn compute(&self, samples: &[f32]) -> Spectrogram {
        self.compute_with_silence(samples, 0)
    }

    /// [`LogMel::compute`] of `samples` followed by `silence` zero samples, without
    /// transforming the frames that lie wholly in the silence (their power is exactly zero).
    pub fn compute_with_silence(&self, samples: &[f32], silence: usize) -> Spectrogram {
        let total = samples.len() + silence;
        let n_frames = total / HOP_LENGTH;
        let n_mels = self.n_mels;
        if n_frames == 0 {
            return Spectrogram {
                n_mels,
                frames: 0,
                data: Vec::new(),
            };
        }
        // Frame f reads samples f * HOP - N_FFT / 2 .. f * HOP + N_FFT / 2 (mirrored at the
        // ends); past the audio and its mirror image it reads zeros only.
        let live = if silence > N_FFT / 2 {
            n_frames.min((samples.len() + N_FFT / 2).div_ceil(HOP_LENGTH) + 1)
        } else {
            n_frames
        };
        let needed = ((live - 1) * HOP_LENGTH + N_FFT).saturating_sub(N_FFT / 2);
        let mut head: Vec<f32> = Vec::with_capacity(needed.min(total) + N_FFT);
        head.extend_from_slice(&samples[..samples.len().min(needed.min(total))]);
        head.resize(needed.min(total), 0.0);
        let padded = if head.len() == total {
            reflect_pad(&head, N_FFT / 2)
        } else {
            // The tail is zeros, so is its mirror image.
            let mut p = reflect_pad(&head, N_FFT / 2);
            p.truncate(head.len() + N_FFT / 2);
            p.resize(live * HOP_LENGTH + N_FFT, 0.0);
            p
        };
        let pool = ThreadPool::global();
        let width = 2 * N_FREQS;
        let mut spectrum = vec![0f32; live * width];
        let mut mel = vec![0f32; live * n_mels];
        let filters = &self.filters;
        let mel_out = SyncPtr(mel.as_mut_ptr());
        // SAFETY: row f of the frame view is padded[f * HOP..f * HOP + N_FFT] (in bounds:
        // `padded` holds (live - 1) * HOP + N_FFT samples at least); the basis is N_FFT x
        // width; the epilogue writes the mel rows of its own frames.
        unsafe {
            gemm_rows(
                pool,
                live,
                width,
                N_FFT,
                View::rows(&padded, HOP_LENGTH),
                View::rows(&self.basis, width),
                spectrum.as_mut_ptr(),
                &|first, rows| {
                    let mut power = [0f32; N_FREQS];
                    for (i, row) in rows.chunks_exact(width).enumerate() {
                        let (re, im) = row.split_at(N_FREQS);
                        for ((p, r), m) in power.iter_mut().zip(re).zip(im) {
                            *p = r * r + m * m;
                        }
                        let out = std::slice::from_raw_parts_mut(
                            mel_out.get().add((first + i) * n_mels),
                            n_mels,
                        );
                        for (o, f) in out.iter_mut().zip(filters.chunks_exact(N_FREQS)) {
                            let e: f32 = f.iter().zip(&power).map(|(a, b)| a * b).sum();
                            *o = e.max(1e-10).log10();
                        }
                    }
                },
            )
        };
        drop(spectrum);
        let floor = 1e-10f32.log10();
        let max = mel
            .iter()
            .copied()
            .chain((live < n_frames).then_some(floor))
            .fold(f32::NEG_INFINITY, f32::max);
        let scale = |v: f32| (v.max(max - 8.0) + 4.0) / 4.0;
        let silent = scale(floor);
        let mut data = vec![silent; n_mels * n_frames];
        for (f, row) in mel.chunks_exact(n_mels).enumerate() {
            for (m, &v) in row.iter().enumerate() {
                data[m * n_frames + f] = scale(v);
            }
        }
        Spectrogram {
            n_mels,
            frames: n_frames,
            data,
        }
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
