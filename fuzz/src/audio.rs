//! `wav`: the fuzzer's bytes as an uploaded WAV file, through the decoder and the
//! resampler the Whisper engine runs on every `audio_stt` input.
//!
//! Checks:
//! * no panic and no abort, whatever the header claims (a failed allocation aborts the
//!   process, which libFuzzer reports as a crash; `-rss_limit_mb` catches a huge one that
//!   succeeds);
//! * a refusal is `InvalidInput` and not retryable (the same file fails the same way on
//!   every worker);
//! * decoded audio is within the named limits ([`check_audio`]): sample rate, channels, at
//!   least one sample, at most `MAX_AUDIO_SECONDS`;
//! * the resampler, given the decoded audio, either refuses it (`InvalidInput`) or returns
//!   exactly `ceil(len * 16000 / rate)` samples ([`check_resampled`]);
//! * the resampler on its own, with rates taken from the input's first bytes and a short
//!   signal, refuses or returns the length the same formula gives.
//!
//! Seeds (`corpus/wav/`): well-formed files of every sample format, the 108-byte file whose
//! header claims 4 294 967 291 Hz (it aborted the worker before the rate limits), and a few
//! truncated or inconsistent headers.

use studio_engines::whisper::audio::{self, Audio};
use studio_engines::{EngineError, EngineErrorKind};

use crate::reader::Reader;

/// The rates the resampler is asked for when fuzzed on its own.
pub const TARGET_RATES: [u32; 4] = [8_000, 16_000, 44_100, 48_000];

/// Runs every check on `data`.
pub fn check(data: &[u8]) -> Result<(), String> {
    match audio::decode_wav(data) {
        Err(e) => refusal(&e, "decode_wav")?,
        Ok(a) => {
            check_audio(&a)?;
            match audio::resample(&a.samples, a.sample_rate, audio::WHISPER_SAMPLE_RATE) {
                Err(e) => refusal(&e, "resample")?,
                Ok(out) => check_resampled(
                    a.samples.len(),
                    a.sample_rate,
                    audio::WHISPER_SAMPLE_RATE,
                    out.len(),
                )?,
            }
        }
    }
    // The resampler alone: any source rate, a target the engines use, a short signal.
    let mut r = Reader::new(data);
    let from = r.u32();
    let to = TARGET_RATES[usize::from(r.u8()) % TARGET_RATES.len()];
    let n = usize::from(r.u8() % 65);
    let input: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
    match audio::resample(&input, from, to) {
        Err(e) => refusal(&e, "resample")?,
        Ok(out) => check_resampled(n, from, to, out.len())?,
    }
    Ok(())
}

/// A refusal must be `InvalidInput`, not retryable.
pub fn refusal(e: &EngineError, what: &str) -> Result<(), String> {
    if e.kind != EngineErrorKind::InvalidInput || e.retryable() {
        return Err(format!(
            "{what} refused with {:?} (retryable: {}), not a final InvalidInput: {}",
            e.kind,
            e.retryable(),
            e.message
        ));
    }
    Ok(())
}

/// Decoded audio is within the named limits.
pub fn check_audio(a: &Audio) -> Result<(), String> {
    if !(audio::MIN_SAMPLE_RATE..=audio::MAX_SAMPLE_RATE).contains(&a.sample_rate) {
        return Err(format!("decoded a sample rate of {} Hz", a.sample_rate));
    }
    if a.channels == 0 || a.channels > audio::MAX_CHANNELS {
        return Err(format!("decoded {} channels", a.channels));
    }
    if a.samples.is_empty() {
        return Err("decoded no samples without an error".into());
    }
    if a.duration() > audio::MAX_AUDIO_SECONDS {
        return Err(format!("decoded {} s of audio", a.duration()));
    }
    Ok(())
}

/// The resampler's output length: `ceil(len * to / from)`.
pub fn check_resampled(len: usize, from: u32, to: u32, out: usize) -> Result<(), String> {
    let expected = if from == to || len == 0 {
        len as u128
    } else {
        (len as u128 * u128::from(to)).div_ceil(u128::from(from))
    };
    if out as u128 != expected {
        return Err(format!(
            "resampling {len} samples {from} Hz -> {to} Hz gave {out}, expected {expected}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checks_can_fail() {
        let ok = Audio {
            samples: vec![0.0; 10],
            sample_rate: 16_000,
            channels: 1,
        };
        assert!(check_audio(&ok).is_ok());
        for bad in [
            Audio {
                sample_rate: 4_294_967_291,
                ..ok.clone()
            },
            Audio {
                channels: 0,
                ..ok.clone()
            },
            Audio {
                samples: Vec::new(),
                ..ok.clone()
            },
        ] {
            assert!(check_audio(&bad).is_err(), "{bad:?}");
        }
        assert!(check_resampled(440, 44_100, 16_000, 160).is_ok());
        assert!(check_resampled(440, 44_100, 16_000, 159).is_err());
        assert!(check_resampled(441, 44_100, 16_000, 160).is_ok());
        assert!(check_resampled(441, 44_100, 16_000, 161).is_err());
        assert!(refusal(&EngineError::io("x"), "t").is_err());
        assert!(refusal(&EngineError::invalid_input("x"), "t").is_ok());
    }
}
