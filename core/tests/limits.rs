//! Every named limit of the worker machine: its default and its effect.

use std::time::Duration;

use serde_json::json;
use studio_core::wire::{StudioFrame, MAX_FRAME_BYTES, PROMPT_PREVIEW_CHARS};
use studio_core::worker::*;
use studio_core::Mono;

mod support;
use support::{llm_task, log_entry, offer, registered as cfg, studio_reads_all, Driver};

#[test]
fn defaults_are_the_documented_values() {
    let l = Limits::default();
    assert_eq!(l.log_queue_cap, 5000);
    assert_eq!(l.recent_jobs, 50);
    assert_eq!(l.recent_logs, 1000);
    assert_eq!(l.max_frame_bytes, MAX_FRAME_BYTES);
    assert_eq!(MAX_FRAME_BYTES, 4 * 1024 * 1024);
    let t = Timings::default();
    assert_eq!(t.heartbeat, Duration::from_secs(5));
    assert_eq!(t.log_flush, Duration::from_secs(1));
    assert_eq!(t.read_idle, Duration::from_secs(20));
    assert_eq!(t.connect_timeout, Duration::from_secs(15));
    assert_eq!(t.registration_poll, Duration::from_secs(30));
    assert_eq!(
        (t.backoff_base, t.backoff_cap),
        (Duration::from_secs(1), Duration::from_secs(30))
    );
    assert_eq!(
        t.upload_retries,
        vec![Duration::from_secs(1), Duration::from_secs(2)]
    );
    assert_eq!(t.shutdown_grace, Duration::from_secs(30));
    assert_eq!(t.update_interval, Duration::from_secs(1800));
    assert_eq!(PROMPT_PREVIEW_CHARS, 200);
    assert_eq!(MAX_RESULT_RESENDS, 3);
    assert_eq!(UPGRADE_BODY_CLIP, 300);
    assert_eq!(MAX_OUTSTANDING_HEARTBEATS, 16);
    assert_eq!(MAX_UNCONFIRMED_LOG_BATCHES, 64);
    assert_eq!(MIN_INTERVAL, Duration::from_millis(1));
}

#[test]
fn recent_jobs_ring_keeps_the_newest_50() {
    let mut h = Driver::live(cfg());
    for i in 0..60 {
        let job = format!("j-{i}");
        h.frame(&offer(&job, llm_task()));
        h.step(Input::JobFinished {
            job_id: job,
            run: h.run.unwrap(),
            outcome: JobOutcome::Json { result: json!({}) },
        });
    }
    let ring = h.worker.status().recent_jobs;
    assert_eq!(ring.len(), 50);
    assert_eq!(ring[0].job_id, "j-59", "newest first");
    assert_eq!(ring[49].job_id, "j-10");
    assert!(ring.iter().all(|j| j.status == JobStatus::Completed));
}

#[test]
fn recent_logs_ring_is_bounded() {
    let mut c = cfg();
    c.limits.recent_logs = 10;
    let mut h = Driver::live(c);
    for i in 0..30 {
        h.step(Input::Log(log_entry(&format!("m{i}"))));
    }
    let logs = h.worker.status().recent_logs;
    assert_eq!(logs.len(), 10);
    assert_eq!(logs.last().unwrap().message, "m29");
}

#[test]
fn a_frame_over_the_size_limit_drops_the_session() {
    let mut c = cfg();
    c.limits.max_frame_bytes = 1024;
    let mut h = Driver::live(c);
    let big = format!(r#"{{"type":"heartbeatAck","pad":"{}"}}"#, "x".repeat(2000));
    let cmds = h.frame_text(&big);
    assert!(cmds
        .iter()
        .any(|c| matches!(c, Command::Close { reason, .. } if reason == "protocol violation")));
    assert!(matches!(
        h.worker.status().session,
        SessionState::Reconnecting { .. }
    ));
    let notes: Vec<_> = h
        .worker
        .status()
        .recent_logs
        .into_iter()
        .map(|l| l.message)
        .collect();
    assert!(
        notes
            .iter()
            .any(|m| m.contains("exceeds the 1024-byte limit")),
        "{notes:?}"
    );
}

/// Result frames sent by a session, counted.
fn result_sends(cmds: &[Command]) -> usize {
    cmds.iter()
        .filter(|c| matches!(c, Command::Send { text, .. } if text.contains("completeJson")))
        .count()
}

/// A live session on which job j-1 finished: its result frame sent once.
fn live_with_a_sent_result() -> (Driver, usize) {
    let mut h = Driver::live(cfg());
    h.frame(&offer("j-1", llm_task()));
    let sends = result_sends(&h.finish(JobOutcome::Json { result: json!({}) }));
    assert_eq!(sends, 1);
    (h, sends)
}

/// A studio that reads the result and stays alive but never acknowledges it: the worker
/// stops re-sending after MAX_RESULT_RESENDS such sessions.
#[test]
fn a_result_read_but_never_acknowledged_is_sent_on_at_most_3_sessions() {
    let (mut h, mut sends) = live_with_a_sent_result();
    for _ in 0..5 {
        studio_reads_all(&mut h);
        h.disconnect();
        sends += result_sends(&h.reconnect());
    }
    assert_eq!(sends as u32, MAX_RESULT_RESENDS);
    let notes = h.worker.status().recent_logs;
    assert!(
        notes.iter().any(|l| l.message.contains(
            "giving up on the studio's acknowledgement of job j-1 after 3 sessions read it"
        )),
        "{notes:?}"
    );
}

/// A session that dies before the studio is seen to read the result (a flaky network, not
/// a studio ignoring it) does not count toward the limit, however many there are.
#[test]
fn a_result_whose_sessions_die_before_the_studio_reads_it_is_never_given_up() {
    let (mut h, mut sends) = live_with_a_sent_result();
    // A frame read after the result proves nothing by itself: this ack answers the
    // welcome's heartbeat, sent before the result.
    h.frame(&StudioFrame::HeartbeatAck);
    let sessions = MAX_RESULT_RESENDS + 3;
    for _ in 1..sessions {
        h.disconnect();
        sends += result_sends(&h.reconnect());
    }
    assert_eq!(sends as u32, sessions, "sent on every session");
    // Once a session carries it, the studio's ack settles it.
    let cmds = h.frame(&StudioFrame::CompleteAck {
        job_id: "j-1".into(),
    });
    assert!(cmds
        .iter()
        .any(|c| matches!(c, Command::ForgetResult { job_id } if job_id == "j-1")));
    h.disconnect();
    assert_eq!(
        result_sends(&h.reconnect()),
        0,
        "acknowledged: not sent again"
    );
}

#[test]
fn the_upgrade_failure_body_is_clipped_to_300_chars() {
    let mut h = Driver::new(cfg());
    h.step(Input::Start);
    let conn = h.conn.unwrap();
    h.step(Input::ConnectFailed {
        conn,
        error: ConnectError::Status {
            status: 503,
            body: "b".repeat(1000),
        },
    });
    let log = h.worker.status().recent_logs.pop().unwrap().message;
    assert!(log.contains(&format!("{}…", "b".repeat(300))), "{log}");
    assert!(!log.contains(&"b".repeat(301)));
}

#[test]
fn unconfirmed_log_batches_and_outstanding_heartbeats_stay_bounded() {
    let mut c = cfg();
    c.timings.read_idle = Duration::from_secs(100_000);
    let mut h = Driver::live(c);
    // A studio that never acks: bookkeeping must not grow without bound.
    for i in 0..500 {
        h.step(Input::Log(log_entry(&format!("m{i}"))));
        h.advance(1.0);
    }
    // Disconnect: at most MAX_UNCONFIRMED_LOG_BATCHES batches come back.
    h.disconnect();
    let queued = h.worker.status().log_queue_len;
    assert!(queued <= MAX_UNCONFIRMED_LOG_BATCHES * 2 + 2, "{queued}");
    assert!(queued >= MAX_UNCONFIRMED_LOG_BATCHES / 2, "{queued}");
}

#[test]
fn zero_intervals_are_raised_so_no_timer_storms() {
    let mut c = cfg();
    c.timings.heartbeat = Duration::ZERO;
    c.timings.log_flush = Duration::ZERO;
    let mut h = Driver::live(c);
    let cmds = h.advance(1.0);
    let heartbeats = cmds
        .iter()
        .filter(|c| matches!(c, Command::Send { text, .. } if text.contains("heartbeat")))
        .count();
    assert!(
        heartbeats <= 2,
        "one per expired deadline per input, not a storm: {heartbeats}"
    );
    assert!(h.worker.deadline().unwrap() > Mono(h.micros));
}

#[test]
fn the_welcome_heartbeat_bookkeeping_survives_a_studio_that_acks_everything() {
    let mut h = Driver::live(cfg());
    for _ in 0..100 {
        h.frame(&StudioFrame::HeartbeatAck);
    }
    h.advance(5.0);
    assert_eq!(h.worker.status().session, SessionState::Connected);
}

#[test]
fn debug_output_never_shows_a_token_or_secret() {
    let mut h = Driver::new(cfg());
    let mut seen = String::new();
    for c in h.step(Input::Start) {
        seen.push_str(&format!("{c:?}"));
    }
    let conn = h.conn.unwrap();
    for c in h.step(Input::Connected { conn }) {
        seen.push_str(&format!("{c:?}"));
    }
    assert!(seen.contains("hello"), "{seen}");
    assert!(!seen.contains("tok-1"), "{seen}");
    let minted = Input::Minted {
        install_id: None,
        secret: "raw-secret".into(),
    };
    assert!(!format!("{minted:?}").contains("raw-secret"));
    let approved = HttpResult::Response {
        status: 200,
        body: r#"{"status":"approved","workerId":"w","authToken":"tok-9"}"#.into(),
    };
    assert!(!format!("{approved:?}").contains("tok-9"));
    assert!(!format!("{:?}", h.worker.config()).contains("tok-1"));
}
