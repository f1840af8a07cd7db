//! `decode_frame`: the fuzzer's bytes as one text frame (and as an HTTP body), fed to every
//! decoder the core has.
//!
//! Checks, for the studio -> worker decoder ([`wire::decode_studio_frame`]) and the worker
//! -> studio decoder ([`wire::decode_worker_frame`]):
//! * no panic, whatever the bytes;
//! * the size limit: with a limit one byte short of the text the result is `TooLarge`; with
//!   a limit equal to its length the result is the same as with the default limit;
//! * round trip: a frame that decodes re-encodes ([`wire::encode`]) to text that decodes
//!   to an equal frame, and encoding that frame again gives the same text (encoding is a
//!   fixed point after one decode). Exact text equality with the input only holds for
//!   canonical frames (core/tests/vectors.rs pins it for the spec vectors), so it is not
//!   asserted here.
//!
//! The same round trip for the HTTP bodies the worker and the studio parse
//! ([`wire::RegisterStatus`], [`wire::RegisterRequestResponse`],
//! [`wire::AutoRegisterRequest`]); and no panic (plus idempotence) for
//! [`studio_core::secret::redact_json`], which every `Debug` of frame text goes through,
//! and for the URL helpers that take config text.
//!
//! Regression (`corpus/decode_frame/regression-f32-overflow-offer.json`): a number beyond
//! the f32 range in an f32 field (`"vramGbEstimate":1e39`) used to decode to infinity,
//! which re-encoded as `null` and no longer decoded; the core now clamps it to
//! `±f32::MAX`, so such frames round-trip like any other.

use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::Serialize;
use studio_core::secret::redact_json;
use studio_core::wire::{self, DecodeError, StudioFrame, WorkerFrame};

/// Runs every check on `data`.
pub fn check(data: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(data);
    let text: &str = &text;

    let studio = wire::decode_studio_frame(text);
    check_limit(
        text,
        &studio,
        wire::decode_studio_frame_limited,
        "studio frame",
    )?;
    if let Ok(frame) = &studio {
        round_trip(frame, wire::decode_studio_frame, "studio frame")?;
        touch_studio_frame(frame);
    }

    let worker_default = |t: &str| wire::decode_worker_frame(t, wire::MAX_FRAME_BYTES);
    let worker = worker_default(text);
    check_limit(text, &worker, wire::decode_worker_frame, "worker frame")?;
    if let Ok(frame) = &worker {
        round_trip(frame, worker_default, "worker frame")?;
        let _: &str = WorkerFrame::type_name(frame);
    }

    body_round_trip::<wire::RegisterStatus>(text, "register status body")?;
    body_round_trip::<wire::RegisterRequestResponse>(text, "register-request response")?;
    body_round_trip::<wire::AutoRegisterRequest>(text, "register-request body")?;

    let redacted = redact_json(text);
    let twice = redact_json(&redacted);
    if twice != redacted {
        return Err(format!(
            "redact_json is not idempotent:\n  once:  {redacted:?}\n  twice: {twice:?}"
        ));
    }

    let _ = wire::http_url(text, "/workers/register-request");
    let _ = wire::ws_url(text, "w-1");
    let _ = wire::content_type_for_ext(text);
    Ok(())
}

fn check_limit<T: PartialEq + Debug>(
    text: &str,
    unlimited: &Result<T, DecodeError>,
    decode_limited: impl Fn(&str, usize) -> Result<T, DecodeError>,
    what: &str,
) -> Result<(), String> {
    let len = text.len();
    if len > wire::MAX_FRAME_BYTES {
        return Ok(());
    }
    let at_limit = decode_limited(text, len);
    if &at_limit != unlimited {
        return Err(format!(
            "{what}: decoding with limit = its length ({len}) differs from the default limit:\n  \
             at limit: {at_limit:?}\n  default:  {unlimited:?}"
        ));
    }
    if len > 0 {
        let short = decode_limited(text, len - 1);
        if !matches!(short, Err(DecodeError::TooLarge { .. })) {
            return Err(format!(
                "{what}: a {len}-byte frame with limit {} was not TooLarge: {short:?}",
                len - 1
            ));
        }
    }
    Ok(())
}

fn round_trip<T: Serialize + PartialEq + Debug>(
    value: &T,
    decode: impl Fn(&str) -> Result<T, DecodeError>,
    what: &str,
) -> Result<(), String> {
    let encoded = wire::encode(value);
    let again = decode(&encoded).map_err(|e| {
        format!("{what}: a decoded frame re-encodes to text that does not decode: {e}\n  encoded: {encoded}")
    })?;
    if &again != value {
        return Err(format!(
            "{what}: decode(encode(frame)) != frame\n  encoded: {encoded}\n  first:   {value:?}\n  again:   {again:?}"
        ));
    }
    let encoded_again = wire::encode(&again);
    if encoded_again != encoded {
        return Err(format!(
            "{what}: encoding is not a fixed point\n  once:  {encoded}\n  twice: {encoded_again}"
        ));
    }
    Ok(())
}

fn body_round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(
    text: &str,
    what: &str,
) -> Result<(), String> {
    let Ok(value) = serde_json::from_str::<T>(text) else {
        return Ok(());
    };
    round_trip(
        &value,
        |t| serde_json::from_str::<T>(t).map_err(|e| DecodeError::Invalid(e.to_string())),
        what,
    )
}

/// Calls the accessors the worker uses on a decoded offer (defaults, prompt, preview).
fn touch_studio_frame(frame: &StudioFrame) {
    let _ = frame.type_name();
    if let StudioFrame::Offer { claim } = frame {
        let task = &claim.task;
        let _ = (task.kind(), task.kind().is_binary(), task.kind().as_str());
        let _ = wire::prompt_preview(task.prompt());
        match task {
            wire::Task::Image(t) => {
                let _ = (t.width(), t.height(), t.steps(), t.ext());
            }
            wire::Task::Llm(t) => {
                let _ = (t.max_tokens(), t.temperature());
            }
            wire::Task::AudioStt(_) => {}
            wire::Task::AudioTts(t) => {
                let _ = (t.voice(), t.ext());
            }
            wire::Task::Video(t) => {
                let _ = (t.seconds(), t.width(), t.height(), t.ext());
            }
        }
        let _ = claim.model_source.engine.as_str();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_like_frames_pass() {
        for f in [
            r#"{"type":"heartbeatAck"}"#,
            r#"{"type":"welcome","workerId":"w","serverTime":"t"}"#,
            r#"{"type":"accept","jobId":"j"}"#,
            r#"{"type":"logBatch","entries":[]}"#,
            r#"{"status":"approved","workerId":"w","authToken":"t"}"#,
            "not json",
            "",
        ] {
            check(f.as_bytes()).unwrap();
        }
    }

    #[test]
    fn the_committed_seeds_pass() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus/decode_frame");
        let mut decoded = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            check(&data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let text = String::from_utf8_lossy(&data);
            decoded += usize::from(
                wire::decode_studio_frame(&text).is_ok()
                    || wire::decode_worker_frame(&text, wire::MAX_FRAME_BYTES).is_ok(),
            );
        }
        assert!(decoded >= 50, "only {decoded} seeds decode");
    }

    #[test]
    fn the_round_trip_check_can_fail() {
        // A decoder that loses a field: the round trip notices.
        let frame = StudioFrame::CompleteAck { job_id: "a".into() };
        let lossy = |_: &str| Ok(StudioFrame::CompleteAck { job_id: "b".into() });
        assert!(round_trip(&frame, lossy, "t").is_err());
        let rejecting = |_: &str| Err(DecodeError::Invalid("x".into()));
        assert!(round_trip(&frame, rejecting, "t").is_err());
    }

    /// Regression: an f32 beyond range (either sign) clamps to `±f32::MAX` on decode, so
    /// the frame round-trips; the committed seed is that offer.
    #[test]
    fn regression_an_f32_overflow_clamps_and_round_trips() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/corpus/decode_frame/regression-f32-overflow-offer.json"
        );
        let seed = std::fs::read_to_string(path).unwrap();
        assert!(seed.contains("\"vramGbEstimate\":1e39"), "{seed}");
        for (text, want) in [
            (seed.clone(), f32::MAX),
            (seed.replace("1e39", "-1e39"), -f32::MAX),
            (seed.replace("1e39", "1e308"), f32::MAX),
        ] {
            let Ok(StudioFrame::Offer { claim }) = wire::decode_studio_frame(&text) else {
                panic!("the offer decodes: {text}")
            };
            assert_eq!(claim.vram_gb_estimate, want, "{text}");
            let frame = StudioFrame::Offer { claim };
            round_trip(&frame, wire::decode_studio_frame, "t").unwrap();
            check(text.as_bytes()).unwrap();
        }
    }

    #[test]
    fn the_limit_check_can_fail() {
        let text = r#"{"type":"heartbeatAck"}"#;
        let ok = wire::decode_studio_frame(text);
        let ignores_limit = |t: &str, _l: usize| wire::decode_studio_frame(t);
        assert!(check_limit(text, &ok, ignores_limit, "t").is_err());
        assert!(check_limit(text, &ok, wire::decode_studio_frame_limited, "t").is_ok());
    }
}
