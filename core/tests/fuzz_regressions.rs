//! Regressions found by the cargo-fuzz targets in `fuzz/` (each input is also committed
//! under `fuzz/corpus/`).

use serde_json::json;
use studio_core::trace::{self, TraceHeader, TraceWriter};
use studio_core::wire::{self, StudioFrame};
use studio_core::worker::*;

mod support;
use support::*;

#[test]
fn an_f32_beyond_range_is_clamped_and_round_trips() {
    // `decode_frame`: 1e39 used to narrow to infinity, encode as null and fail to decode.
    let text = r#"{"type":"offer","claim":{"jobId":"j","gameId":"g","assetName":"a","model":"m","vramGbEstimate":1e39,"task":{"kind":"llm","messages":[],"temperature":-1e40},"modelSource":{"engine":"synthetic","files":[],"cliDefaults":{"cfgScale":1e39,"steps":1,"width":8,"height":8}}}}"#;
    let frame = wire::decode_studio_frame(text).expect("decodes");
    let StudioFrame::Offer { claim } = &frame else {
        panic!("not an offer: {frame:?}")
    };
    assert_eq!(claim.vram_gb_estimate, f32::MAX);
    assert_eq!(claim.model_source.cli_defaults.cfg_scale, f32::MAX);
    let again = wire::decode_studio_frame(&wire::encode(&frame)).expect("re-encoded decodes");
    assert_eq!(again, frame);
    let wire::Task::Llm(llm) = &claim.task else {
        panic!("not an llm task")
    };
    assert_eq!(llm.temperature, Some(-f32::MAX));
}

#[test]
fn a_refused_non_finite_threshold_is_recorded_and_parses_back() {
    // `worker_machine`: a refused SetThreshold(NaN) was written as `"gb":null`, which made
    // the whole trace unparseable.
    let cfg = registered();
    let mut worker = Worker::new(cfg.clone());
    let now = Now::new(
        studio_core::Mono::ZERO,
        studio_core::WallMs(1_779_710_400_000),
    );
    let mut writer = TraceWriter::new();
    let mut text = writer.header_line(&TraceHeader::new("test", &cfg, now));
    text.push('\n');
    for (input, refused) in [
        (Input::Start, false),
        (Input::SetThreshold { gb: f32::NAN }, true),
        (
            Input::SetThreshold {
                gb: f32::NEG_INFINITY,
            },
            true,
        ),
        (Input::SetThreshold { gb: 6.5 }, false),
    ] {
        let (cmds, err) = trace::step(&mut worker, now, input.clone());
        assert_eq!(err.is_some(), refused, "{input:?}");
        text.push_str(&writer.record(now, &input, &cmds));
        text.push('\n');
    }
    let parsed = trace::parse(&text).expect("the trace parses");
    assert_eq!(parsed.steps.len(), 4);
    assert!(matches!(parsed.steps[1].input, Input::SetThreshold { gb } if gb.is_nan()));
    assert!(matches!(parsed.steps[2].input, Input::SetThreshold { gb } if gb == f32::NEG_INFINITY));
    assert!(trace::replay(&text).expect("replays").is_ok());
}

#[test]
fn a_peer_body_is_redacted_before_it_is_clipped_into_messages() {
    // `worker_machine`: an upload answered 500 with a body carrying a token echoed the
    // token into notices (and into the `fail` error the studio receives).
    let mut h = Driver::live(registered());
    h.frame(&offer("j-1", json!({"kind":"image","prompt":"p"})));
    h.step(Input::JobFinished {
        job_id: "j-1".into(),
        run: h.run.unwrap(),
        outcome: JobOutcome::Binary {
            bytes_len: 3,
            ext: "png".into(),
        },
    });
    let body = format!(
        r#"{{"error":"boom","authToken":"t2-secret-{}"}}"#,
        "x".repeat(400)
    );
    let mut seen = String::new();
    for _ in 0..4 {
        let c = h.http_reply(500, &body);
        seen.push_str(&format!("{c:?}"));
        if let Some(d) = h.deadline() {
            seen.push_str(&format!("{:?}", h.at(d)));
        }
    }
    assert!(seen.contains("***"), "the body was reported: {seen}");
    assert!(!seen.contains("t2-secret"), "a token leaked: {seen}");
}
