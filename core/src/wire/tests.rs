//! Unit tests of the codec.

use std::collections::BTreeMap;

use super::frames::{decode, decode_studio_frame_fast, decode_worker_frame_fast};
use super::*;

#[test]
fn sha256_hex_known_answer() {
    assert_eq!(
        sha256_hex(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn close_codes_match_the_studio_mapping() {
    assert_eq!(WorkerErrorCode::AuthFailed.close_code(), 4001);
    assert_eq!(WorkerErrorCode::ProtocolViolation.close_code(), 4002);
    assert_eq!(WorkerErrorCode::DuplicateWorker.close_code(), 4003);
    assert_eq!(WorkerErrorCode::WorkerDeleted.close_code(), 4004);
    assert_eq!(WorkerErrorCode::InternalError.close_code(), 1000);
}

#[test]
fn ws_url_derivation() {
    assert_eq!(
        ws_url("http://localhost:9790", "w-3").unwrap(),
        "ws://localhost:9790/graphics/api/workers/w-3/connect"
    );
    assert_eq!(
        ws_url("https://api.example/graphics/api/", "w-2").unwrap(),
        "wss://api.example/graphics/api/workers/w-2/connect"
    );
    assert!(ws_url("ftp://x", "w").is_err());
    assert!(ws_url("nourl", "w").is_err());
}

#[test]
fn http_url_normalisation() {
    assert_eq!(
        http_url(
            "https://x/custom/graphics/api?a=1#f",
            "/workers/register-request"
        )
        .unwrap(),
        "https://x/custom/graphics/api/workers/register-request"
    );
    assert_eq!(
        http_url("https://studio.minis.gg/", "/workers/w/jobs/j/complete").unwrap(),
        "https://studio.minis.gg/graphics/api/workers/w/jobs/j/complete"
    );
    assert!(http_url("nourl", "/x").is_none());
}

#[test]
fn task_defaults() {
    let t: Task = serde_json::from_str(r#"{"kind":"image","prompt":"a"}"#).unwrap();
    let Task::Image(i) = t else { panic!() };
    assert_eq!(
        (i.width(), i.height(), i.steps(), i.ext()),
        (512, 512, 20, "webp")
    );
    let t: Task = serde_json::from_str(r#"{"kind":"llm","messages":[]}"#).unwrap();
    let Task::Llm(l) = &t else { panic!() };
    assert_eq!((l.max_tokens(), l.temperature()), (512, 0.7));
    assert_eq!(t.prompt(), "");
    let t: Task = serde_json::from_str(r#"{"kind":"audio_tts","text":"x"}"#).unwrap();
    let Task::AudioTts(a) = t else { panic!() };
    assert_eq!((a.voice(), a.ext()), ("default", "wav"));
    let t: Task = serde_json::from_str(r#"{"kind":"video","prompt":"p"}"#).unwrap();
    let Task::Video(v) = t else { panic!() };
    assert_eq!(
        (v.seconds(), v.width(), v.height(), v.ext()),
        (2.0, 512, 512, "mp4")
    );
}

#[test]
fn prompt_for_each_kind() {
    let llm: Task = serde_json::from_str(
        r#"{"kind":"llm","messages":[{"role":"user","content":"a"},{"role":"user","content":"last"}]}"#,
    )
    .unwrap();
    assert_eq!(llm.prompt(), "last");
    let stt: Task =
        serde_json::from_str(r#"{"kind":"audio_stt","inputUrl":"https://x/a.wav"}"#).unwrap();
    assert_eq!(stt.prompt(), "https://x/a.wav");
}

#[test]
fn preview_is_200_chars_plus_ellipsis() {
    let long = "é".repeat(300);
    let p = prompt_preview(&long);
    assert_eq!(p.chars().count(), PROMPT_PREVIEW_CHARS + 1);
    assert!(p.ends_with('…'));
    assert_eq!(prompt_preview("short"), "short");
    assert_eq!(prompt_preview(&"a".repeat(200)), "a".repeat(200));
}

#[test]
fn oversize_frames_are_rejected_before_parsing() {
    let big = format!(
        r#"{{"type":"heartbeatAck","pad":"{}"}}"#,
        "x".repeat(MAX_FRAME_BYTES)
    );
    assert!(matches!(
        decode_studio_frame(&big),
        Err(DecodeError::TooLarge { .. })
    ));
    let ok = format!(r#"{{"type":"heartbeatAck","pad":"{}"}}"#, "x".repeat(100));
    assert_eq!(decode_studio_frame(&ok).unwrap(), StudioFrame::HeartbeatAck);
}

#[test]
fn heartbeat_ack_fast_paths_match_the_codec() {
    assert_eq!(encode(&StudioFrame::HeartbeatAck), HEARTBEAT_ACK_TEXT);
    assert_eq!(
        decode::<StudioFrame>(HEARTBEAT_ACK_TEXT, MAX_FRAME_BYTES).unwrap(),
        StudioFrame::HeartbeatAck
    );
    assert_eq!(
        decode_studio_frame(HEARTBEAT_ACK_TEXT).unwrap(),
        StudioFrame::HeartbeatAck
    );
    assert!(matches!(
        decode_studio_frame_limited(HEARTBEAT_ACK_TEXT, 5),
        Err(DecodeError::TooLarge { .. })
    ));
}

/// A studio frame's text with its `type` first, as the studio writes it (a JSON object's
/// keys come out sorted otherwise).
fn tag_first(frame: &serde_json::Value) -> String {
    let mut rest = frame.clone();
    let tag = rest["type"].as_str().unwrap().to_string();
    rest.as_object_mut().unwrap().remove("type");
    let rest = serde_json::to_string(&rest).unwrap();
    match rest.as_str() {
        "{}" => format!(r#"{{"type":"{tag}"}}"#),
        _ => format!(r#"{{"type":"{tag}",{}"#, &rest[1..]),
    }
}

#[test]
fn studio_frame_fast_paths_decode_as_the_enum_does() {
    let vectors = include_str!("../../../docs/protocol-vectors.jsonl");
    let mut fast = 0;
    for line in vectors.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["dir"] != "studio_to_worker" {
            continue;
        }
        let text = tag_first(&v["frame"]);
        let name = v["name"].as_str().unwrap();
        let by_enum = decode::<StudioFrame>(&text, MAX_FRAME_BYTES).ok();
        let by_fast = decode_studio_frame_fast(&text);
        if by_fast.is_some() {
            fast += 1;
            assert_eq!(by_fast, by_enum, "{name}");
        }
        // Invalid or not: the codec's answer is the enum's.
        assert_eq!(decode_studio_frame(&text).ok(), by_enum, "{name}: {text}");
    }
    assert!(fast >= 15, "only {fast} vectors took the fast path");
    // The acks, and anything odd, which falls back to the enum (errors included).
    for (text, expected) in [
        (
            r#"{"type":"completeAck","jobId":"j-1","extra":1}"#,
            Some(StudioFrame::CompleteAck {
                job_id: "j-1".into(),
            }),
        ),
        (
            r#"{"type":"failAck","jobId":"j-\u00e9"}"#,
            Some(StudioFrame::FailAck {
                job_id: "j-\u{e9}".into(),
            }),
        ),
        (
            r#"{"type":"completeAck","type":"failAck","jobId":"j"}"#,
            None,
        ),
        (r#"{"type":"failAck","jobId":7}"#, None),
        (r#"{"type":"offer","claim":{}}"#, None),
        (r#"{"type":"offer","claim":{"jobId":"j"},"claim":{}}"#, None),
    ] {
        assert_eq!(decode_studio_frame_fast(text), expected, "{text}");
        assert_eq!(
            decode_studio_frame(text).ok(),
            decode::<StudioFrame>(text, MAX_FRAME_BYTES).ok(),
            "{text}"
        );
    }
    // The size limit holds on the fast path too.
    let ack = r#"{"type":"completeAck","jobId":"j-1"}"#;
    assert!(matches!(
        decode_studio_frame_limited(ack, ack.len() - 1),
        Err(DecodeError::TooLarge { .. })
    ));
}

#[test]
fn unknown_engine_is_kept_not_rejected() {
    let s: ModelSource = serde_json::from_str(
        r#"{"engine":"future-engine","files":[],"cliDefaults":{"cfgScale":1.0,"steps":1,"width":1,"height":1}}"#,
    )
    .unwrap();
    assert_eq!(s.engine, ModelEngine::Other("future-engine".into()));
    assert!(encode(&s).contains(r#""engine":"future-engine""#));
}

#[test]
fn worker_frame_fast_paths_decode_as_the_enum_does() {
    let caps = WorkerCapabilities {
        machine_name: "m".into(),
        username: "u".into(),
        agent_version: "0".into(),
        engine: "multi".into(),
        vram_total_gb: 24.0,
        vram_threshold_gb: -0.0,
        auto_enabled: true,
        auto_start: false,
        auto_update: Some(true),
        start_minimised: None,
        only_when_idle: Some(false),
        supported_models: vec!["a".into()],
        task_kinds: vec![TaskKind::Image],
        supported_models_per_kind: BTreeMap::from([(TaskKind::Image, vec!["a".into()])]),
        user_presence: Some(UserPresence::Idle),
    };
    let frames = [
        WorkerFrame::Hello {
            auth_token: Secret::new("tok\"en"),
            capabilities: caps.clone(),
        },
        WorkerFrame::Heartbeat {
            capabilities: caps,
            current_job_id: Some("j-1".into()),
        },
        WorkerFrame::LogBatch {
            entries: vec![LogEntry {
                ts: "2024-01-01T00:00:00.000Z".into(),
                level: "info".into(),
                category: "ws".into(),
                message: "m\u{e9}\n".into(),
                job_id: None,
            }],
        },
        WorkerFrame::LogBatch { entries: vec![] },
    ];
    for f in frames {
        let text = encode(&f);
        let fast = decode_worker_frame_fast(&text).expect("takes the fast path");
        assert_eq!(fast, f);
        assert_eq!(decode::<WorkerFrame>(&text, MAX_FRAME_BYTES).unwrap(), f);
    }
    // Anything odd falls back to the enum, errors included.
    for text in [
        r#"{"type":"logBatch","type":"hello","entries":[]}"#,
        r#"{"type":"hello","capabilities":{}}"#,
        r#"{"type":"logBatch","entries":7}"#,
    ] {
        assert_eq!(decode_worker_frame_fast(text), None);
        assert_eq!(
            decode_worker_frame(text, MAX_FRAME_BYTES),
            decode::<WorkerFrame>(text, MAX_FRAME_BYTES)
        );
    }
}

#[test]
fn derive_model_lists_sorts_and_dedups() {
    let mut caps = WorkerCapabilities {
        machine_name: "m".into(),
        username: "u".into(),
        agent_version: "0".into(),
        engine: "multi".into(),
        vram_total_gb: 0.0,
        vram_threshold_gb: 0.0,
        auto_enabled: true,
        auto_start: false,
        auto_update: None,
        start_minimised: None,
        only_when_idle: None,
        supported_models: vec![],
        task_kinds: vec![],
        supported_models_per_kind: BTreeMap::from([
            (TaskKind::Video, vec!["b".into(), "a".into()]),
            (TaskKind::Image, vec!["a".into()]),
            (TaskKind::Llm, vec![]),
        ]),
        user_presence: None,
    };
    caps.derive_model_lists();
    assert_eq!(caps.supported_models, vec!["a", "b"]);
    assert_eq!(caps.task_kinds, vec![TaskKind::Image, TaskKind::Video]);
}

#[test]
fn engine_wildcards_name_their_engine() {
    assert_eq!(ModelEngine::SdCpp.wildcard(), "sd-cpp:*");
    assert_eq!(ModelEngine::LlamaCpp.wildcard(), "llama-cpp:*");
    assert_eq!(ModelEngine::of_wildcard("sd-cpp:*"), Some("sd-cpp"));
    assert_eq!(
        ModelEngine::of_wildcard(&ModelEngine::Other("comfy".into()).wildcard()),
        Some("comfy")
    );
    for exact in ["*", ":*", "sd-cpp", "z-image-turbo", "sd-cpp:q4"] {
        assert_eq!(ModelEngine::of_wildcard(exact), None, "{exact}");
    }
}

#[test]
fn a_log_batch_encodes_the_same_from_shared_entries() {
    let entry = |message: &str, job_id: Option<&str>| LogEntry {
        ts: "2026-12-06T06:40:00.123Z".into(),
        level: "warn".into(),
        category: "job".into(),
        message: message.into(),
        job_id: job_id.map(str::to_string),
    };
    for entries in [
        vec![],
        vec![entry("plain", None)],
        vec![
            entry(
                "quote \" backslash \\ newline \n tab \t \u{1} \u{e9}",
                Some("j-1"),
            ),
            entry("", Some("")),
        ],
    ] {
        let shared: Vec<_> = entries.iter().cloned().map(std::sync::Arc::new).collect();
        assert_eq!(
            encode(&LogBatchRef { entries: &shared }),
            encode(&WorkerFrame::LogBatch { entries })
        );
    }
}
