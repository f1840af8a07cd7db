//! Record, parse, replay, explain and bless, on a session driven here.

use super::*;
use crate::worker::{ConnId, HttpId, HttpResult};

fn now(ms: u64) -> Now {
    Now::new(Mono::from_millis(ms), WallMs(1_700_000_000_000 + ms))
}

#[test]
fn redact_masks_keys_and_text_and_is_idempotent() {
    let mut v = serde_json::json!({
        "auth_token": "tok", "secret": "s", "bearer": "", "registrationSecretHash": "h",
        "text": "{\"type\":\"hello\",\"authToken\":\"tok\"}",
        "body": {"registrationSecretHash": "h2", "installId": "i"},
        "nested": [{"authToken": "t2", "secret": null}],
    });
    redact(&mut v);
    let once = v.clone();
    redact(&mut v);
    assert_eq!(v, once);
    let s = v.to_string();
    for leak in ["\"tok\"", "\\\"tok", "\"s\"", "\"h\"", "h2", "t2"] {
        assert!(!s.contains(leak), "{leak} leaked in {s}");
    }
    assert_eq!(v["bearer"], "");
    assert_eq!(v["nested"][0]["secret"], Value::Null);
    assert_eq!(v["body"]["installId"], "i");
}

#[test]
fn canonical_json_sorts_keys() {
    let v: Value = serde_json::from_str(r#"{"b":1,"a":{"d":[1,"x"],"c":null}}"#).unwrap();
    assert_eq!(canonical_json(&v), r#"{"a":{"c":null,"d":[1,"x"]},"b":1}"#);
}

const SECRET: &str = "5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e";
const TOKEN: &str = "tok-very-secret-42";

/// Drives a worker through registration, approval, connect and one JSON job,
/// recording every step; returns the trace text.
fn recorded_session() -> String {
    let cfg = WorkerConfig::for_tests("https://studio.example/");
    let mut worker = Worker::new(cfg.clone());
    let mut writer = TraceWriter::new();
    let mut text = writer.header_line(&TraceHeader::new("test", &cfg, now(0)));
    text.push('\n');
    let mut last_http = None;
    let mut last_conn = None;
    let mut feed = |worker: &mut Worker, t: u64, input: Input| {
        let (cmds, _) = step(worker, now(t), input.clone());
        for c in &cmds {
            match c {
                Command::Http { id, .. } => last_http = Some(*id),
                Command::Connect { conn, .. } => last_conn = Some(*conn),
                Command::Dispatch { run, .. } => assert_eq!(*run, RunId(1)),
                _ => {}
            }
        }
        text.push_str(&writer.record(now(t), &input, &cmds));
        text.push('\n');
        (last_http, last_conn)
    };
    feed(&mut worker, 0, Input::Start);
    let (http, _) = feed(
        &mut worker,
        1,
        Input::Minted {
            install_id: Some("11111111-2222-4333-8444-555555555555".into()),
            secret: SECRET.into(),
        },
    );
    let reply = |id: Option<HttpId>, body: &str| Input::Http {
        id: id.expect("an http request"),
        result: HttpResult::Response {
            status: 200,
            body: body.into(),
        },
    };
    feed(
        &mut worker,
        2,
        reply(http, r#"{"requestId":"rr-7","status":"pending"}"#),
    );
    let (http, _) = feed(&mut worker, 30_002, Input::Tick);
    let approved = format!(r#"{{"status":"approved","workerId":"w-42","authToken":"{TOKEN}"}}"#);
    let (_, conn) = feed(&mut worker, 30_003, reply(http, &approved));
    let conn: ConnId = conn.expect("a connect");
    feed(&mut worker, 30_010, Input::Connected { conn });
    let frame = |text: &str| Input::Frame {
        conn,
        text: text.into(),
    };
    feed(
        &mut worker,
        30_020,
        frame(r#"{"type":"welcome","workerId":"w-42","serverTime":"2026-05-25T12:00:00Z"}"#),
    );
    let offer = serde_json::json!({"type":"offer","claim":{"jobId":"j-1","gameId":"g",
        "assetName":"g/a","model":"synthetic","vramGbEstimate":1.0,
        "task":{"kind":"llm","messages":[{"role":"user","content":"hi"}]},
        "modelSource":{"engine":"synthetic","files":[],
        "cliDefaults":{"cfgScale":1.0,"steps":8,"width":1024,"height":1024}}}});
    feed(&mut worker, 30_030, frame(&offer.to_string()));
    feed(&mut worker, 31_000, Input::Tick);
    feed(
        &mut worker,
        32_000,
        Input::JobFinished {
            job_id: "j-1".into(),
            run: RunId(1),
            outcome: crate::worker::JobOutcome::Json {
                result: serde_json::json!({"object":"chat.completion"}),
            },
        },
    );
    feed(
        &mut worker,
        32_100,
        frame(r#"{"type":"completeAck","jobId":"j-1"}"#),
    );
    feed(&mut worker, 35_020, Input::Tick);
    feed(&mut worker, 36_000, Input::Shutdown);
    text
}

#[test]
fn a_recorded_registration_and_job_replays_without_divergence_or_secrets() {
    let text = recorded_session();
    for leak in [SECRET, TOKEN, &crate::wire::sha256_hex(SECRET.as_bytes())] {
        assert!(!text.contains(leak), "{leak} appears in the trace:\n{text}");
    }
    let report = replay(&text).unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.steps, 13);
    assert_eq!(report.to_string(), "replayed 13 steps: OK");
    // The session did what it should: the transcript shows the whole story.
    let t = explain(&text).unwrap();
    for want in [
        "MintSecret",
        "Http #1 RegisterRequest",
        "Http #2 PollRegistration",
        "Connect",
        "Send conn#1 hello",
        "Frame conn#1 offer",
        "Send conn#1 accept",
        "Dispatch j-1",
        "Send conn#1 completeJson",
        "every step reproduces",
    ] {
        assert!(t.contains(want), "{want} missing from\n{t}");
    }
    assert_eq!(
        bless(&text).unwrap(),
        text,
        "bless of a good trace is a no-op"
    );
}

#[test]
fn a_result_recorded_before_run_ids_replays_as_the_run_in_flight() {
    let text = recorded_session();
    assert!(
        text.contains(r#"{"JobFinished":{"job_id":"j-1","run":1,"#),
        "{text}"
    );
    let old = text.replace(
        r#"{"JobFinished":{"job_id":"j-1","run":1,"#,
        r#"{"JobFinished":{"job_id":"j-1","#,
    );
    assert_ne!(old, text);
    let report = replay(&old).unwrap();
    assert!(report.is_ok(), "{report}");
    // Naming a run explicitly is taken as recorded: a run never dispatched diverges.
    let wrong = text.replace(r#""run":1,"#, r#""run":5,"#);
    assert!(!replay(&wrong).unwrap().is_ok());
}

#[test]
fn a_changed_input_is_a_divergence_and_bless_repairs_it() {
    let text = recorded_session();
    let tampered = text.replacen("\"Tick\"", "\"Pause\"", 1);
    let report = replay(&tampered).unwrap();
    let d = report.first_divergence.clone().expect("diverges");
    assert_eq!(d.step, 4);
    assert_eq!(d.line, 5);
    assert_ne!(d.expected_hash, d.actual_hash);
    let shown = report.to_string();
    assert!(
        shown.contains("step 4") && shown.contains(&d.expected_hash),
        "{shown}"
    );
    assert!(explain(&tampered).unwrap().contains("!!#4"));
    let blessed = bless(&tampered).unwrap();
    assert!(replay(&blessed).unwrap().is_ok());
}

#[test]
fn malformed_traces_name_the_line() {
    let text = recorded_session();
    assert_eq!(parse("").unwrap_err().line, 0);
    let mut lines: Vec<&str> = text.lines().collect();
    lines[3] = "{\"kind\":\"step\"";
    let e = replay(&lines.join("\n")).unwrap_err();
    assert_eq!(e.line, 4);
    assert!(
        e.to_string().starts_with("bad trace: line 4: not JSON"),
        "{e}"
    );
    let skipped: Vec<&str> = text
        .lines()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(_, l)| l)
        .collect();
    let e = replay(&skipped.join("\n")).unwrap_err();
    assert!(e.message.contains("step 3 where step 2"), "{e}");
    let e = replay(&text.replacen("\"version\":1", "\"version\":9", 1)).unwrap_err();
    assert_eq!(e.line, 1);
    let e = replay(&text.lines().skip(1).collect::<Vec<_>>().join("\n")).unwrap_err();
    assert!(e.message.contains("before the header"), "{e}");
}
