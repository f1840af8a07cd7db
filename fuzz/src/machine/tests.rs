//! The harness's own tests: sessions that pass and reach deep states, the committed seeds,
//! the regressions, and proof that each check can fail.

use std::collections::BTreeSet;

use studio_core::trace;
use studio_core::wire::{self, StudioFrame};
use studio_core::worker::{Command, ConnId, HttpId, HttpResult, Input, RunId, UsageError};
use studio_core::Mono;

use super::checks::Redaction;
use super::ops::offer_text;
use super::*;
use crate::reader::{put_varint, Reader};

fn session() -> Vec<u8> {
    // registered, small caps; connect, welcome, offer, finish, ack, shutdown.
    let mut v = vec![0, 0, 1];
    v.extend([Op::Connected as u8, 0, Op::Welcome as u8, 0]);
    v.extend([Op::Offer as u8, 0, 0, 1, 0]);
    v.extend([Op::JobFinished as u8, 0, 0]);
    v.extend([Op::CompleteAck as u8, 0, 0]);
    v.push(Op::Advance as u8);
    put_varint(&mut v, 6_000_000);
    v.extend([
        Op::ToDeadline as u8,
        Op::Shutdown as u8,
        Op::ToDeadline as u8,
    ]);
    v
}

#[test]
fn a_plain_session_passes_and_is_not_vacuous() {
    let data = session();
    check(&data).unwrap();
    // Recorded and replayed too.
    let mut rec = data.clone();
    rec[0] |= 0x80;
    check(&rec).unwrap();
    // The session really dispatched a job.
    let mut h = Harness::new(config(0, 0, 1), false);
    h.feed(Input::Start).unwrap();
    let mut r = Reader::new(&data[3..]);
    while !r.is_empty() {
        let op = Op::from_byte(r.u8());
        if let Some(i) = h.input(op, &mut r) {
            h.feed(i).unwrap();
        }
    }
    assert_eq!(h.last_dispatched.as_deref(), Some("job-o1"));
    assert!(h.exited);
}

#[test]
fn every_byte_string_is_an_input() {
    for data in [&[][..], &[0xff; 64], &[0x80, 0xff, 0, 27, 200, 1, 2, 3]] {
        check(data).unwrap();
    }
}

#[test]
fn the_drain_checks_can_fail() {
    let mut h = Harness::new(config(0, 0, 1), false);
    h.driver.micros = 5;
    let now = h.driver.now();
    // A deadline in the past.
    let past = [Command::Wait {
        until: Some(Mono(5)),
    }];
    assert!(h.check_drain(now, &past, false).is_err());
    // Two dispatches.
    let claim: wire::JobOfferClaim = match wire::decode_studio_frame(&offer_text("j", 0, 0)) {
        Ok(StudioFrame::Offer { claim }) => *claim,
        other => panic!("{other:?}"),
    };
    h.running = Some("other".into());
    let two = [
        Command::Dispatch {
            run: RunId(1),
            claim: std::sync::Arc::new(claim),
        },
        Command::Wait { until: None },
    ];
    assert!(h
        .check_drain(now, &two, false)
        .unwrap_err()
        .contains("two jobs"));
    // A second connection while one is open.
    h.running = None;
    h.open.insert(1);
    let connect = [
        Command::Connect {
            conn: ConnId(2),
            url: "ws://x".into(),
            auth_token: "t".into(),
        },
        Command::Wait { until: None },
    ];
    assert!(h.check_drain(now, &connect, false).is_err());
    // A frame on a connection that was never connected.
    let send = [
        Command::Send {
            conn: ConnId(9),
            text: "{}".into(),
        },
        Command::Wait { until: None },
    ];
    assert!(h.check_drain(now, &send, false).is_err());
}

/// Feeds a committed seed (after its three header bytes) to `h`.
fn feed_seed(h: &mut Harness, data: &[u8]) {
    let mut r = Reader::new(data);
    while !r.is_empty() {
        let op = Op::from_byte(r.u8());
        if let Some(i) = h.input(op, &mut r) {
            h.feed(i).unwrap();
        }
    }
}

fn seed(name: &str) -> Vec<u8> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus/worker_machine");
    std::fs::read(format!("{dir}/{name}")).unwrap()
}

/// Regression: a refused non-finite threshold is recorded as a string that parses
/// back to the same value, and the session replays (the committed seed is one NaN).
#[test]
fn regression_a_non_finite_threshold_is_recorded_and_replays() {
    let data = seed("regression-nan-threshold-recorded.bin");
    assert_eq!(data[0] & 0x80, 0x80, "the seed records and replays");
    check(&data).unwrap();
    for (gb, text) in [
        (f32::NAN, "\"NaN\""),
        (f32::INFINITY, "\"inf\""),
        (f32::NEG_INFINITY, "\"-inf\""),
    ] {
        let mut h = Harness::new(config(0, 0, 1), true);
        h.feed(Input::Start).unwrap();
        h.feed(Input::SetThreshold { gb }).unwrap();
        assert!(h.replay_safe);
        let recorded = &h.recording.as_ref().unwrap().1;
        assert!(recorded.contains(&format!("\"gb\":{text}")), "{recorded}");
        let parsed = trace::parse(recorded).unwrap_or_else(|e| panic!("{e}\n{recorded}"));
        assert!(
            format!("{parsed:?}").contains(&format!("{gb:?}")),
            "{parsed:?}"
        );
        h.check_replay().unwrap();
    }
}

/// Regression: an upload answered 500 with a body holding `"authToken":"..."` no
/// longer leaks the token into the machine's commands, and the recorded session (the
/// committed seed) replays from its redacted trace.
#[test]
fn regression_an_error_body_is_redacted_before_it_is_echoed() {
    let data = seed("regression-upload-error-body-echoed.bin");
    assert_eq!(data[0] & 0x80, 0x80, "the seed records and replays");
    let mut h = Harness::new(config(data[0], data[1], data[2]), true);
    h.feed(Input::Start).unwrap();
    feed_seed(&mut h, &data[3..]);
    assert!(h.replay_safe);
    let recorded = &h.recording.as_ref().unwrap().1;
    assert!(
        recorded.contains("authToken"),
        "the seed's body has a token: {recorded}"
    );
    h.check_replay().unwrap();
    check(&data).unwrap();

    let mut h = Harness::new(config(0, 0, 1), true);
    h.feed(Input::Start).unwrap();
    feed_seed(&mut h, &[3, 0, 5, 0, 6, 0, 0, 0, 0, 17, 0, 1, 0, 1]);
    let body = r#"{"status":"approved","workerId":"w-2","authToken":"SECRETTOKEN"}"#;
    // Padded so that the clip (after `UPGRADE_BODY_CLIP` characters) falls inside the
    // token: clipping first would cut its closing quote and hide it from redaction.
    let cut_inside = studio_core::worker::UPGRADE_BODY_CLIP - body.find("SECRET").unwrap() - 6;
    for result in [
        HttpResult::Response {
            status: 500,
            body: body.into(),
        },
        HttpResult::Response {
            status: 503,
            body: format!("{}{body}", " ".repeat(cut_inside)),
        },
    ] {
        let failed = Input::Http {
            id: HttpId(1),
            result,
        };
        assert_eq!(h.redaction(&failed), Redaction::ByDesign);
        let (cmds, _) = trace::step(&mut h.driver.worker.clone(), h.driver.now(), failed);
        assert!(
            !cmds.iter().any(|c| format!("{c:?}").contains("SECRET")),
            "{cmds:?}"
        );
    }
}

/// Every committed seed passes, and the seeds made from recorded traces are not
/// vacuous: the "every kind" recording dispatches a job of every kind (six in all).
#[test]
fn the_committed_seeds_pass_and_reach_deep_states() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus/worker_machine");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        check(&data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        n += 1;
    }
    assert!(n >= 10, "{n} seeds");
    let data = std::fs::read(format!(
        "{dir}/trace-sync-every_kind_completes_with_real_output.bin"
    ))
    .unwrap();
    let mut h = Harness::new(config(data[0], data[1], data[2]), false);
    h.feed(Input::Start).unwrap();
    let mut r = Reader::new(&data[3..]);
    let mut dispatched = BTreeSet::new();
    while !r.is_empty() {
        let op = Op::from_byte(r.u8());
        if let Some(i) = h.input(op, &mut r) {
            h.feed(i).unwrap();
            dispatched.extend(h.last_dispatched.clone());
        }
    }
    assert!(dispatched.len() >= 5, "{dispatched:?}");
}

#[test]
fn a_refused_input_may_repeat_a_past_deadline_but_nothing_else() {
    let mut h = Harness::new(config(0, 0, 1), false);
    h.feed(Input::Start).unwrap();
    // The connect timeout (15 s) has passed; a refused input runs no timer.
    h.driver.micros = 20_000_000;
    h.feed(Input::SetThreshold { gb: -1.0 }).unwrap();
    let stale = h.last_wait.clone().unwrap();
    let now = h.driver.now();
    assert!(h
        .check_drain(now, std::slice::from_ref(&stale), true)
        .is_ok());
    assert!(h
        .check_drain(now, std::slice::from_ref(&stale), false)
        .is_err());
    let changed = [Command::CheckUpdate, stale];
    assert!(h.check_drain(now, &changed, true).is_err());
}

#[test]
fn the_usage_error_checks_can_fail() {
    let h = Harness::new(config(0, 0, 1), false);
    let bad = Input::SetThreshold { gb: f32::NAN };
    assert!(h.check_result(&bad, &Ok(())).is_err());
    let good = Input::SetThreshold { gb: 1.0 };
    assert!(h
        .check_result(&good, &Err(UsageError::InvalidThreshold(1.0)))
        .is_err());
    assert!(h
        .check_result(
            &Input::Tick,
            &Err(UsageError::TimeWentBackwards {
                last: Mono(2),
                now: Mono(1)
            })
        )
        .is_err());
}
