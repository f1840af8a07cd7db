//! Scenario tests of the worker machine alone: time is passed in, nothing sleeps.

use std::time::Duration;

use rstest::rstest;
use serde_json::json;
use studio_core::wire::{self, StudioFrame, WorkerFrame};
use studio_core::worker::*;
use studio_core::{Mono, WallMs};

mod support;
use support::*;

// ------------------------------------------------------------------------------------------
// Registration
// ------------------------------------------------------------------------------------------

#[test]
fn registration_request_poll_approve_persist_connect() {
    let mut h = Driver::new(WorkerConfig::for_tests("https://studio.example/"));
    let c = h.step(Input::Start);
    assert!(c.contains(&Command::MintSecret {
        need_install_id: true
    }));
    let secret = "5e".repeat(32);
    let c = h.step(Input::Minted {
        install_id: Some("11111111-2222-4333-8444-555555555555".into()),
        secret: secret.clone().into(),
    });
    // install id + secret persisted before the request goes out
    let persist = c.iter().find_map(|c| match c {
        Command::Persist(p) => Some(p.clone()),
        _ => None,
    });
    assert_eq!(
        persist
            .unwrap()
            .registration_secret
            .as_ref()
            .map(|s| s.expose()),
        Some(secret.as_str())
    );
    let Some((_, HttpRequest::RegisterRequest { url, body })) = h.http.clone() else {
        panic!("no register request: {c:?}")
    };
    assert_eq!(
        url,
        "https://studio.example/graphics/api/workers/register-request"
    );
    assert_eq!(
        body.registration_secret_hash,
        wire::sha256_hex(secret.as_bytes())
    );
    assert_ne!(
        body.registration_secret_hash, secret,
        "the raw secret never leaves"
    );
    assert!(body.user_agent.starts_with("studio-worker/"));

    let c = h.http_reply(200, r#"{"requestId":"rr-7","status":"pending"}"#);
    assert!(c.iter().any(
        |c| matches!(c, Command::Persist(p) if p.registration_request_id.as_deref() == Some("rr-7"))
    ));
    assert_eq!(h.deadline(), Some(30.0), "first poll 30 s later");
    let c = h.at(30.0);
    let Some((_, HttpRequest::PollRegistration { url, bearer })) = h.http.clone() else {
        panic!("{c:?}")
    };
    assert_eq!(
        url,
        "https://studio.example/graphics/api/workers/register-requests/rr-7"
    );
    assert_eq!(bearer, secret.as_str(), "the raw secret is the poll bearer");
    h.http_reply(200, r#"{"status":"pending"}"#);
    assert_eq!(h.deadline(), Some(60.0));
    h.at(60.0);
    let c = h.http_reply(
        200,
        r#"{"status":"approved","workerId":"w-42","authToken":"tok-42"}"#,
    );
    let p = c
        .iter()
        .find_map(|c| match c {
            Command::Persist(p) => Some(p.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(p.worker_id.as_deref(), Some("w-42"));
    assert_eq!(p.auth_token.as_ref().map(|t| t.expose()), Some("tok-42"));
    assert_eq!(p.registration_secret, None, "secret cleared on approval");
    assert_eq!(p.registration_request_id, None);
    assert_eq!(
        p.install_id.as_deref(),
        Some("11111111-2222-4333-8444-555555555555")
    );
    let connect = c.iter().find_map(|c| match c {
        Command::Connect {
            url, auth_token, ..
        } => Some((url.clone(), auth_token.clone())),
        _ => None,
    });
    assert_eq!(
        connect,
        Some((
            "wss://studio.example/graphics/api/workers/w-42/connect".into(),
            "tok-42".into()
        ))
    );
}

#[test]
fn registration_404_starts_over_with_a_fresh_secret_others_keep_waiting() {
    let mut cfg = WorkerConfig::for_tests("http://s");
    cfg.registration = RegistrationState {
        install_id: Some("i-1".into()),
        request_id: Some("rr-1".into()),
        secret: Some("old".into()),
    };
    let mut h = Driver::new(cfg);
    h.step(Input::Start);
    assert!(
        matches!(h.http, Some((_, HttpRequest::PollRegistration { .. }))),
        "polls at once"
    );
    for status in [401, 500, 429] {
        let c = h.http_reply(status, "nope");
        assert!(!c
            .iter()
            .any(|c| matches!(c, Command::MintSecret { .. } | Command::Persist(_))));
        let next = h.deadline().unwrap();
        h.at(next);
    }
    let c = h.http_reply(404, "unknown request");
    assert!(c.contains(&Command::MintSecret {
        need_install_id: false
    }));
    assert!(c.iter().any(|c| matches!(c, Command::Persist(p) if p.registration_secret.is_none() && p.registration_request_id.is_none() && p.install_id.as_deref() == Some("i-1"))));
    h.step(Input::Minted {
        install_id: None,
        secret: "new".into(),
    });
    let Some((_, HttpRequest::RegisterRequest { body, .. })) = h.http.clone() else {
        panic!()
    };
    assert_eq!(body.install_id, "i-1", "install id is stable");
    assert_eq!(body.registration_secret_hash, wire::sha256_hex(b"new"));
}

#[test]
fn registration_rejected_exits_with_guidance_and_clears_the_request() {
    let mut cfg = WorkerConfig::for_tests("http://s");
    cfg.registration = RegistrationState {
        install_id: Some("i".into()),
        request_id: Some("rr".into()),
        secret: Some("s".into()),
    };
    let mut h = Driver::new(cfg);
    h.step(Input::Start);
    let c = h.http_reply(
        200,
        r#"{"status":"rejected","reason":"unknown contributor"}"#,
    );
    let (code, reason) = exit_of(&c).unwrap();
    assert_eq!(code, ExitCode::Rejected);
    assert_ne!(code.code(), 0);
    assert!(reason.contains("unknown contributor") && reason.contains("register --reset"));
    assert!(c
        .iter()
        .any(|c| matches!(c, Command::Persist(p) if p.registration_secret.is_none())));
}

#[test]
fn register_request_failure_retries_after_the_poll_interval() {
    let mut h = Driver::new(WorkerConfig::for_tests("http://s"));
    h.step(Input::Start);
    h.step(Input::Minted {
        install_id: Some("i".into()),
        secret: "s".into(),
    });
    let (first, _) = h.http.clone().unwrap();
    h.step(Input::Http {
        id: first,
        result: HttpResult::Transport("dns".into()),
    });
    assert_eq!(h.deadline(), Some(30.0));
    h.at(30.0);
    let (second, req) = h.http.clone().unwrap();
    assert_ne!(first, second);
    assert!(matches!(req, HttpRequest::RegisterRequest { .. }));
}

#[test]
fn shutdown_before_approval_exits_clean() {
    let mut h = Driver::new(WorkerConfig::for_tests("http://s"));
    h.step(Input::Start);
    let c = h.step(Input::Shutdown);
    assert_eq!(exit_of(&c).unwrap().0, ExitCode::Clean);
    assert_eq!(ExitCode::Clean.code(), 0);
}

// ------------------------------------------------------------------------------------------
// Session
// ------------------------------------------------------------------------------------------

#[test]
fn hello_first_then_heartbeat_every_5s_after_welcome_with_live_capabilities() {
    let mut h = Driver::new(registered());
    let c = h.step(Input::Start);
    let Some(Command::Connect {
        url, auth_token, ..
    }) = c.first()
    else {
        panic!()
    };
    assert_eq!(url, "ws://127.0.0.1:9/graphics/api/workers/w-1/connect");
    assert_eq!(auth_token, "tok-1");
    assert_eq!(h.deadline(), Some(15.0), "connect timeout");
    let conn = h.conn.unwrap();
    let c = h.step(Input::Connected { conn });
    assert_eq!(types(&c), vec!["hello"]);
    let WorkerFrame::Hello {
        auth_token,
        capabilities,
    } = &frames(&c)[0]
    else {
        panic!()
    };
    assert_eq!(auth_token, "tok-1");
    assert_eq!(
        capabilities.supported_models.len(),
        6,
        "flat, sorted, de-duplicated"
    );
    assert_eq!(capabilities.task_kinds.len(), 5);
    // Nothing before welcome, even when timers would be due.
    assert!(types(&h.at(4.0)).is_empty());
    let c = h.frame(&welcome());
    assert_eq!(
        types(&c),
        vec!["heartbeat"],
        "first heartbeat immediately after welcome"
    );
    h.frame(&StudioFrame::HeartbeatAck);
    h.step(Input::SetThreshold { gb: 7.5 });
    let c = h.at(9.0);
    let hb: Vec<WorkerFrame> = frames(&c)
        .into_iter()
        .filter(|f| f.type_name() == "heartbeat")
        .collect();
    assert_eq!(
        hb.len(),
        1,
        "one heartbeat at t=5 s (the t=10 s one is not due)"
    );
    let WorkerFrame::Heartbeat {
        capabilities,
        current_job_id,
    } = &hb[0]
    else {
        panic!()
    };
    assert_eq!(capabilities.vram_threshold_gb, 7.5, "live threshold");
    assert_eq!(*current_job_id, None);
}

#[test]
fn frames_before_welcome_are_dropped_not_answered() {
    let mut h = Driver::new(registered());
    h.step(Input::Start);
    let conn = h.conn.unwrap();
    h.step(Input::Connected { conn });
    let c = h.frame(&offer("j", json!({"kind":"image","prompt":"x"})));
    assert!(types(&c).is_empty());
    assert!(!c.iter().any(|c| matches!(c, Command::Dispatch { .. })));
    assert!(c
        .iter()
        .any(|c| matches!(c, Command::Report(n) if n.message.contains("before welcome"))));
}

#[test]
fn half_open_read_idle_20s_reconnects() {
    let mut h = Driver::live(registered());
    let conn = h.conn.unwrap();
    // Heartbeats keep going out but nothing comes back.
    for s in [5.0, 10.0, 15.0] {
        assert!(types(&h.at(s)).contains(&"heartbeat"));
    }
    let c = h.at(20.0);
    assert!(c
        .iter()
        .any(|c| matches!(c, Command::Close { conn: cc, code: 1000, .. } if *cc == conn)));
    assert!(matches!(
        h.worker.status().session,
        SessionState::Reconnecting { attempt: 1 }
    ));
    let d = h.deadline().unwrap();
    assert!(
        (20.5..=21.0).contains(&d),
        "first reconnect in [0.5, 1] s: {d}"
    );
    let c = h.at(d);
    assert!(c
        .iter()
        .any(|c| matches!(c, Command::Connect { conn: n, .. } if *n != conn)));
}

#[test]
fn connect_timeout_15s_then_backoff() {
    let mut h = Driver::new(registered());
    h.step(Input::Start);
    let c = h.at(15.0);
    assert!(c.iter().any(|c| matches!(c, Command::Close { .. })));
    assert!(matches!(
        h.worker.status().session,
        SessionState::Reconnecting { attempt: 1 }
    ));
}

#[test]
fn backoff_doubles_to_30s_with_jitter_and_resets_after_a_welcomed_session() {
    let mut h = Driver::new(registered());
    h.step(Input::Start);
    let mut delays = Vec::new();
    for _ in 0..8 {
        let conn = h.conn.unwrap();
        let before = h.micros as f64 / 1e6;
        h.step(Input::ConnectFailed {
            conn,
            error: ConnectError::Transport("refused".into()),
        });
        let d = h.deadline().unwrap();
        delays.push(d - before);
        h.at(d);
    }
    let nominal = [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0];
    for (d, n) in delays.iter().zip(nominal) {
        assert!(*d >= n / 2.0 - 1e-6 && *d <= n + 1e-6, "{delays:?}");
    }
    assert_eq!(h.worker.status().reconnect_attempt, 8);
    let conn = h.conn.unwrap();
    h.step(Input::Connected { conn });
    h.frame(&welcome());
    assert_eq!(h.worker.status().reconnect_attempt, 0);
    h.step(Input::Disconnected {
        conn,
        code: Some(1006),
        reason: "abnormal".into(),
    });
    assert!(matches!(
        h.worker.status().session,
        SessionState::Reconnecting { attempt: 1 }
    ));
}

/// The reconnect schedule of a fleet spreads: workers with different jitter seeds (the
/// shell draws one per process) wait different times after the same failures.
#[test]
fn workers_with_different_seeds_reconnect_on_different_schedules() {
    fn schedule(seed: u64) -> Vec<Option<f64>> {
        let mut cfg = registered();
        cfg.seed = seed;
        let mut h = Driver::new(cfg);
        h.step(Input::Start);
        (0..6)
            .map(|_| {
                let conn = h.conn.unwrap();
                h.step(Input::ConnectFailed {
                    conn,
                    error: ConnectError::Transport("refused".into()),
                });
                let d = h.deadline();
                h.to_deadline();
                d
            })
            .collect()
    }
    assert_eq!(schedule(7), schedule(7), "a seed fixes the schedule");
    let firsts: std::collections::BTreeSet<_> = (0..20)
        .map(|seed| schedule(seed)[0].map(f64::to_bits))
        .collect();
    assert!(
        firsts.len() >= 18,
        "20 seeds gave only {} distinct first delays",
        firsts.len()
    );
    assert_ne!(schedule(1), schedule(2));
}

#[test]
fn reconnect_cap_ends_in_fatal_exit() {
    let mut cfg = registered();
    cfg.reconnect_attempts = 3;
    let mut h = Driver::new(cfg);
    h.step(Input::Start);
    let mut last = vec![];
    for _ in 0..4 {
        let conn = h.conn.unwrap();
        last = h.step(Input::ConnectFailed {
            conn,
            error: ConnectError::Status {
                status: 503,
                body: "down".into(),
            },
        });
        if let Some(d) = h.deadline() {
            h.at(d);
        }
    }
    let (code, reason) = exit_of(&last).unwrap();
    assert_eq!(code, ExitCode::Fatal);
    assert!(
        reason.contains("gave up after 3 reconnect attempts"),
        "{reason}"
    );
}

#[rstest]
#[case::upgrade_401(None, Some(ConnectError::Unauthorized { body: "bad token".into() }))]
#[case::close_4001(Some(4001), None)]
fn auth_failures_exit_without_reconnect(
    #[case] close: Option<u16>,
    #[case] err: Option<ConnectError>,
) {
    let mut h = Driver::new(registered());
    h.step(Input::Start);
    let conn = h.conn.unwrap();
    let c = if let Some(error) = err {
        h.step(Input::ConnectFailed { conn, error })
    } else {
        h.step(Input::Connected { conn });
        h.step(Input::Disconnected {
            conn,
            code: close,
            reason: "invalid token".into(),
        })
    };
    let (code, reason) = exit_of(&c).unwrap();
    assert_eq!(code, ExitCode::AuthFailed);
    assert_eq!(code.code(), 4);
    assert!(reason.contains("register --reset"), "{reason}");
    assert_eq!(h.deadline(), None, "no reconnect");
}

#[rstest]
#[case(wire::WorkerErrorCode::AuthFailed, ExitCode::AuthFailed, "auth failed")]
#[case(
    wire::WorkerErrorCode::ProtocolViolation,
    ExitCode::Fatal,
    "protocol violation"
)]
#[case(
    wire::WorkerErrorCode::DuplicateWorker,
    ExitCode::Fatal,
    "protocol violation"
)]
#[case(
    wire::WorkerErrorCode::WorkerDeleted,
    ExitCode::Fatal,
    "protocol violation"
)]
#[case(
    wire::WorkerErrorCode::InternalError,
    ExitCode::Fatal,
    "protocol violation"
)]
fn error_frames_are_terminal(
    #[case] code: wire::WorkerErrorCode,
    #[case] exit: ExitCode,
    #[case] close_reason: &str,
) {
    let mut h = Driver::live(registered());
    let c = h.frame(&StudioFrame::Error {
        code,
        message: "m".into(),
    });
    assert!(c
        .iter()
        .any(|c| matches!(c, Command::Close { code: 1000, reason, .. } if reason == close_reason)));
    assert_eq!(exit_of(&c).unwrap().0, exit);
}

#[rstest]
#[case(1000)]
#[case(4002)]
#[case(4003)]
#[case(4004)]
fn other_close_codes_reconnect(#[case] code: u16) {
    let mut h = Driver::live(registered());
    let conn = h.conn.unwrap();
    let c = h.step(Input::Disconnected {
        conn,
        code: Some(code),
        reason: "x".into(),
    });
    assert!(exit_of(&c).is_none());
    assert!(matches!(
        h.worker.status().session,
        SessionState::Reconnecting { .. }
    ));
}

// ------------------------------------------------------------------------------------------
// Jobs
// ------------------------------------------------------------------------------------------

#[test]
fn json_job_sends_the_full_prompt_and_heartbeat_carries_the_job() {
    let mut h = Driver::live(registered());
    let long = "word ".repeat(100);
    let c = h.frame(&offer(
        "j-1",
        json!({"kind":"llm","messages":[{"role":"user","content": long}]}),
    ));
    assert_eq!(types(&c), vec!["accept"]);
    let c = h.at(5.0);
    let hb = frames(&c)
        .into_iter()
        .find_map(|f| match f {
            WorkerFrame::Heartbeat { current_job_id, .. } => Some(current_job_id),
            _ => None,
        })
        .unwrap();
    assert_eq!(hb.as_deref(), Some("j-1"));
    let c = h.step(Input::JobFinished {
        job_id: "j-1".into(),
        run: h.run.unwrap(),
        outcome: JobOutcome::Json {
            result: json!({"object":"chat.completion"}),
        },
    });
    let WorkerFrame::CompleteJson { prompt, .. } = &frames(&c)[0] else {
        panic!()
    };
    assert_eq!(
        prompt.as_deref(),
        Some(long.as_str()),
        "full prompt, never the preview"
    );
    assert_eq!(
        h.worker.status().recent_jobs[0]
            .prompt_preview
            .chars()
            .count(),
        201
    );
    assert_eq!(h.worker.status().current_job_id, None);
}

#[test]
fn upload_is_retried_twice_on_5xx_then_fails_retryable() {
    let mut h = Driver::live(registered());
    h.frame(&offer("j-2", json!({"kind":"image","prompt":"p"})));
    h.step(Input::JobFinished {
        job_id: "j-2".into(),
        run: h.run.unwrap(),
        outcome: JobOutcome::Binary {
            ext: "webp".into(),
            bytes_len: 100,
        },
    });
    let Some((
        _,
        HttpRequest::Upload {
            url,
            prompt,
            ext,
            job_id,
            auth_token,
        },
    )) = h.http.clone()
    else {
        panic!()
    };
    assert_eq!(
        url,
        "http://127.0.0.1:9/graphics/api/workers/w-1/jobs/j-2/complete"
    );
    assert_eq!(
        (
            prompt.as_str(),
            ext.as_str(),
            job_id.as_str(),
            auth_token.expose()
        ),
        ("p", "webp", "j-2", "tok-1")
    );
    let (first, _) = h.http.clone().unwrap();
    h.http_reply(500, "oops");
    // Keep the session alive while waiting.
    h.frame(&StudioFrame::HeartbeatAck);
    let c = h.at(1.0);
    let (second, _) = h.http.clone().unwrap();
    assert_ne!(first, second, "retry after 1 s: {c:?}");
    h.http_reply(502, "");
    let c = h.at(2.0);
    assert!(
        !c.iter().any(|c| matches!(c, Command::Http { .. })),
        "second retry waits 2 s"
    );
    let c = h.at(3.0);
    assert!(c.iter().any(|c| matches!(c, Command::Http { .. })));
    let c = h.http_reply(503, "still");
    let f = frames(&c);
    assert!(
        matches!(&f[0], WorkerFrame::Fail { retryable: true, error, .. } if error.contains("503"))
    );
    assert!(c.contains(&Command::DiscardResult {
        job_id: "j-2".into()
    }));
    let stats = h.worker.status().stats;
    assert_eq!(stats.upload_retries, 2);
    let image = &stats.jobs[&wire::TaskKind::Image];
    assert_eq!((image.completed, image.failed), (0, 1));
}

/// A transport error (no answer at all) is retried like a 5xx, not failed at once.
#[test]
fn upload_is_retried_after_a_transport_error() {
    let mut h = Driver::live(registered());
    h.frame(&offer("j-4", json!({"kind":"image","prompt":"p"})));
    h.step(Input::JobFinished {
        job_id: "j-4".into(),
        run: h.run.unwrap(),
        outcome: JobOutcome::Binary {
            ext: "webp".into(),
            bytes_len: 100,
        },
    });
    let (first, _) = h.http.clone().unwrap();
    let c = h.step(Input::Http {
        id: first,
        result: HttpResult::Transport("connection reset".into()),
    });
    assert!(
        frames(&c).is_empty(),
        "no fail after a transport error: {c:?}"
    );
    assert!(!c.iter().any(|c| matches!(c, Command::DiscardResult { .. })));
    assert_eq!(h.deadline(), Some(1.0), "the retry waits 1 s");
    h.frame(&StudioFrame::HeartbeatAck);
    let c = h.at(1.0);
    let (second, request) = h.http.clone().unwrap();
    assert_ne!(first, second, "retried: {c:?}");
    assert!(matches!(request, HttpRequest::Upload { job_id, .. } if job_id == "j-4"));
    let c = h.http_reply(200, r#"{"ok":true}"#);
    assert!(frames(&c).is_empty(), "{c:?}");
    assert!(c.contains(&Command::DiscardResult {
        job_id: "j-4".into()
    }));
    let stats = h.worker.status().stats;
    assert_eq!(stats.completed, 1);
    assert_eq!(stats.upload_retries, 1);
    // Dispatched at 0 s, delivered at 1 s: counted once, in the 1 s bucket.
    let image = &stats.jobs[&wire::TaskKind::Image];
    assert_eq!((image.completed, image.failed), (1, 0));
    assert_eq!(image.duration_sum_us, 1_000_000);
    let i = JOB_DURATION_BUCKETS_MS
        .iter()
        .position(|b| *b == 1_000)
        .unwrap();
    let mut want = [0; JOB_DURATION_BUCKETS_MS.len()];
    want[i] = 1;
    assert_eq!(image.duration_buckets, want);
}

/// The machine, not the shell, tells which run a result belongs to: the run in flight is
/// taken, a run it cancelled is dropped, anything else is a usage error that changes
/// nothing.
#[test]
fn job_results_name_their_run() {
    let mut h = Driver::live(registered());
    h.frame(&offer("j-1", json!({"kind":"llm","messages":[]})));
    let run = h.run.unwrap();
    let json = || JobOutcome::Json { result: json!(1) };
    let before = h.worker.status();
    for (job_id, run) in [("j-1", RunId(run.0 + 1)), ("j-1", RunId(0)), ("j-0", run)] {
        let input = Input::JobFinished {
            job_id: job_id.into(),
            run,
            outcome: json(),
        };
        assert!(
            matches!(h.try_step(input), Err(UsageError::UnknownJob(j)) if j == job_id),
            "{job_id} {run}"
        );
        assert_eq!(h.worker.status(), before);
    }
    assert_eq!(types(&h.finish(json())), vec!["completeJson"]);
    let again = h.finished(json());
    assert!(matches!(h.try_step(again), Err(UsageError::UnknownJob(_))));

    // A run cancelled at the end of the shutdown grace: its late result is not refused.
    h.frame(&offer("j-2", json!({"kind":"llm","messages":[]})));
    h.step(Input::Shutdown);
    let cancelled = h.finished(json());
    let mut c = Vec::new();
    while h.worker.phase() != Phase::Exited {
        assert!(h.micros <= 31_000_000, "the grace ends at 30 s");
        c.extend(h.to_deadline());
    }
    assert!(c.contains(&Command::CancelJob {
        job_id: "j-2".into()
    }));
    assert_eq!(h.try_step(cancelled), Ok(vec![]));
}

/// The VRAM warning (PROTOCOL.md §9.4) is the core's decision: above known memory only,
/// logged at connect.
#[test]
fn a_threshold_above_the_detected_memory_is_warned_about_at_connect() {
    assert_eq!(vram_threshold_warning(8.0, 8.0), None);
    assert_eq!(vram_threshold_warning(12.0, 0.0), None, "memory unknown");
    let warning = vram_threshold_warning(30.0, 24.0).unwrap();
    assert_eq!(
        warning,
        "vram_threshold_gb 30 exceeds the detected VRAM 24 GB; \
         the studio may offer jobs this GPU cannot hold"
    );
    let mut cfg = registered();
    cfg.vram_threshold_gb = 30.0;
    let mut h = Driver::new(cfg);
    h.step(Input::Start);
    let conn = h.conn.unwrap();
    let c = h.step(Input::Connected { conn });
    assert!(c.iter().any(|c| matches!(
        c,
        Command::Report(n) if n.level == LogLevel::Warn && n.message == warning
    )));
    let c = Driver::live(registered()).step(Input::Connected { conn });
    assert!(!c
        .iter()
        .any(|c| matches!(c, Command::Report(n) if n.level == LogLevel::Warn)));
}

#[test]
fn upload_4xx_is_not_retried() {
    let mut h = Driver::live(registered());
    h.frame(&offer("j-3", json!({"kind":"image","prompt":"p"})));
    h.step(Input::JobFinished {
        job_id: "j-3".into(),
        run: h.run.unwrap(),
        outcome: JobOutcome::Binary {
            ext: "png".into(),
            bytes_len: 1,
        },
    });
    let c = h.http_reply(409, "job not claimed by this worker");
    assert!(
        matches!(&frames(&c)[0], WorkerFrame::Fail { retryable: true, error, .. } if error == "complete failed: 409 — job not claimed by this worker")
    );
}

#[rstest]
#[case::paused(true, false, None, "paused")]
#[case::only_when_idle_unknown(false, true, None, "paused")]
#[case::only_when_idle_active(false, true, Some(wire::UserPresence::Active), "paused")]
fn offers_rejected_by_policy(
    #[case] paused: bool,
    #[case] only_when_idle: bool,
    #[case] presence: Option<wire::UserPresence>,
    #[case] code: &str,
) {
    let mut cfg = registered();
    cfg.only_when_idle = only_when_idle;
    let mut h = Driver::live(cfg);
    if paused {
        h.step(Input::Pause);
    }
    h.step(Input::SetPresence(presence));
    let c = h.frame(&offer("j", json!({"kind":"image","prompt":"p"})));
    let f = frames(&c);
    let WorkerFrame::Reject {
        code: Some(got),
        reason,
        ..
    } = &f[0]
    else {
        panic!("{f:?}")
    };
    assert_eq!(wire::encode(got).trim_matches('"'), code);
    let want = if paused {
        REASON_PAUSED
    } else {
        REASON_NOT_IDLE
    };
    assert_eq!(reason, want);
}

#[test]
fn only_when_idle_accepts_once_idle() {
    let mut cfg = registered();
    cfg.only_when_idle = true;
    let mut h = Driver::live(cfg);
    h.step(Input::SetPresence(Some(wire::UserPresence::Idle)));
    let c = h.frame(&offer("j", json!({"kind":"image","prompt":"p"})));
    assert_eq!(types(&c), vec!["accept"]);
}

#[test]
fn a_result_lost_with_the_session_is_redelivered_before_the_first_heartbeat() {
    let mut h = Driver::live(registered());
    let conn = h.conn.unwrap();
    h.frame(&offer("j-5", json!({"kind":"llm","messages":[]})));
    h.step(Input::JobFinished {
        job_id: "j-5".into(),
        run: h.run.unwrap(),
        outcome: JobOutcome::Json { result: json!(1) },
    });
    // No completeAck: the socket dies.
    h.step(Input::Disconnected {
        conn,
        code: None,
        reason: "reset".into(),
    });
    let d = h.deadline().unwrap();
    h.at(d);
    let conn = h.conn.unwrap();
    h.step(Input::Connected { conn });
    let c = h.frame(&welcome());
    assert_eq!(types(&c), vec!["completeJson", "heartbeat"]);
    h.frame(&StudioFrame::CompleteAck {
        job_id: "j-5".into(),
    });
    // Acked: not sent again on the next session.
    h.step(Input::Disconnected {
        conn,
        code: None,
        reason: "reset".into(),
    });
    let d = h.deadline().unwrap();
    h.at(d);
    let conn = h.conn.unwrap();
    h.step(Input::Connected { conn });
    assert_eq!(types(&h.frame(&welcome())), vec!["heartbeat"]);
}

fn dispatches(cmds: &[Command]) -> usize {
    cmds.iter()
        .filter(|c| matches!(c, Command::Dispatch { .. }))
        .count()
}

#[test]
fn a_reoffer_of_a_job_with_an_unacked_result_drops_the_stale_result_and_runs_it() {
    // The studio settled our failure, requeued the job and offers it to us again before
    // its failAck reached us: the held copy is stale and must never be re-sent as the
    // outcome of the new offer.
    let mut h = Driver::live(registered());
    let conn = h.conn.unwrap();
    h.frame(&offer("j-7", json!({"kind":"llm","messages":[]})));
    h.step(Input::JobFinished {
        job_id: "j-7".into(),
        run: h.run.unwrap(),
        outcome: JobOutcome::Failed {
            error: "oom".into(),
            retryable: true,
        },
    });
    let c = h.frame(&offer("j-7", json!({"kind":"llm","messages":[]})));
    assert_eq!(types(&c), vec!["accept"]);
    assert_eq!(dispatches(&c), 1);
    // The session drops before any ack: nothing is pending for j-7 (the new run is still
    // going), so the next welcome re-sends no stale failure.
    h.step(Input::Disconnected {
        conn,
        code: None,
        reason: "reset".into(),
    });
    let d = h.deadline().unwrap();
    h.at(d);
    let conn = h.conn.unwrap();
    h.step(Input::Connected { conn });
    assert_eq!(types(&h.frame(&welcome())), vec!["heartbeat"]);
    // The new run's result is what goes out.
    let c = h.step(Input::JobFinished {
        job_id: "j-7".into(),
        run: h.run.unwrap(),
        outcome: JobOutcome::Json { result: json!(2) },
    });
    assert_eq!(types(&c), vec!["completeJson"]);
}

#[test]
fn a_reoffer_of_the_job_already_running_is_accepted_without_a_second_run() {
    let mut h = Driver::live(registered());
    h.frame(&offer("j-8", json!({"kind":"llm","messages":[]})));
    let c = h.frame(&offer("j-8", json!({"kind":"llm","messages":[]})));
    assert_eq!(types(&c), vec!["accept"], "no busy reject");
    assert_eq!(dispatches(&c), 0, "no second run");
    // A different job is still rejected busy.
    let c = h.frame(&offer("j-9", json!({"kind":"llm","messages":[]})));
    assert_eq!(types(&c), vec!["reject"]);
    let c = h.step(Input::JobFinished {
        job_id: "j-8".into(),
        run: h.run.unwrap(),
        outcome: JobOutcome::Json { result: json!(1) },
    });
    assert_eq!(types(&c), vec!["completeJson"]);
}

#[test]
fn a_job_finished_while_disconnected_is_delivered_on_the_next_session() {
    let mut h = Driver::live(registered());
    let conn = h.conn.unwrap();
    h.frame(&offer("j-6", json!({"kind":"llm","messages":[]})));
    h.step(Input::Disconnected {
        conn,
        code: None,
        reason: "reset".into(),
    });
    let c = h.step(Input::JobFinished {
        job_id: "j-6".into(),
        run: h.run.unwrap(),
        outcome: JobOutcome::Failed {
            error: "oom".into(),
            retryable: true,
        },
    });
    assert!(types(&c).is_empty());
    let d = h.deadline().unwrap();
    h.at(d);
    let conn = h.conn.unwrap();
    h.step(Input::Connected { conn });
    assert_eq!(types(&h.frame(&welcome())), vec!["fail", "heartbeat"]);
}

// ------------------------------------------------------------------------------------------
// Logs
// ------------------------------------------------------------------------------------------

#[test]
fn logs_flush_every_second_only_when_non_empty() {
    let mut h = Driver::live(registered());
    h.frame(&StudioFrame::HeartbeatAck);
    let c = h.at(1.0);
    assert_eq!(types(&c), vec!["logBatch"], "welcome notices ship");
    let c = h.at(2.0);
    assert!(types(&c).is_empty(), "an empty queue sends nothing");
}

#[test]
fn unconfirmed_log_batches_are_restored_on_disconnect() {
    let mut h = Driver::live(registered());
    let conn = h.conn.unwrap();
    let c = h.at(1.0);
    let WorkerFrame::LogBatch { entries } = &frames(&c)[0] else {
        panic!()
    };
    let first = entries.clone();
    // No heartbeatAck after the batch: the session dies (half-open).
    h.step(Input::Disconnected {
        conn,
        code: None,
        reason: "reset".into(),
    });
    let d = h.deadline().unwrap();
    h.at(d);
    let conn = h.conn.unwrap();
    h.step(Input::Connected { conn });
    h.frame(&welcome());
    let t = h.micros as f64 / 1e6;
    let c = h.at(t + 1.0);
    let WorkerFrame::LogBatch { entries } = &frames(&c)[0] else {
        panic!("{c:?}")
    };
    assert_eq!(
        &entries[..first.len()],
        &first[..],
        "restored batch first, in order"
    );
}

#[test]
fn confirmed_log_batches_are_not_resent() {
    let mut h = Driver::live(registered());
    let conn = h.conn.unwrap();
    h.frame(&StudioFrame::HeartbeatAck); // acks the welcome heartbeat (no batch before it)
    h.at(1.0); // batch
    h.at(5.0); // heartbeat after the batch
    h.frame(&StudioFrame::HeartbeatAck); // confirms the batch
    h.step(Input::Disconnected {
        conn,
        code: None,
        reason: "reset".into(),
    });
    assert_eq!(
        h.worker.status().log_queue_len,
        1,
        "only the disconnect notice waits; the confirmed batch is gone"
    );
}

#[test]
fn log_queue_is_capped_with_a_drop_marker() {
    let mut cfg = registered();
    cfg.limits.log_queue_cap = 5000;
    let mut h = Driver::new(cfg);
    h.step(Input::Start); // not connected: logs pile up
    for i in 0..6000 {
        h.step(Input::Log(wire::LogEntry {
            ts: "2026-01-01T00:00:00.000Z".into(),
            level: "info".into(),
            category: "engine".into(),
            message: format!("l{i}"),
            job_id: None,
        }));
    }
    let st = h.worker.status();
    assert_eq!(st.log_queue_len, 5000);
    assert!(st.log_dropped_total >= 1000);
    let conn = h.conn.unwrap();
    h.step(Input::Connected { conn });
    h.frame(&welcome());
    let c = h.at(1.0);
    let WorkerFrame::LogBatch { entries } = &frames(&c)[0] else {
        panic!()
    };
    assert!(entries[0]
        .message
        .starts_with("ship queue full (5000 entries); dropped "));
    // The batch is cut at its byte limit; the rest follows, one batch per flush, and
    // nothing more is lost on the way.
    let mut shipped = entries.len();
    for t in 2..20 {
        let c = h.at(f64::from(t));
        for f in frames(&c) {
            if let WorkerFrame::LogBatch { entries } = f {
                shipped += entries.len();
            }
        }
    }
    assert_eq!(shipped, 5001);
}

// ------------------------------------------------------------------------------------------
// Shutdown, pause, update
// ------------------------------------------------------------------------------------------

#[test]
fn shutdown_waits_for_the_job_then_closes_1000() {
    let mut h = Driver::live(registered());
    h.frame(&offer("j-7", json!({"kind":"llm","messages":[]})));
    let c = h.step(Input::Shutdown);
    assert!(exit_of(&c).is_none());
    let c = h.frame(&offer("j-8", json!({"kind":"llm","messages":[]})));
    assert!(matches!(
        &frames(&c)[0],
        WorkerFrame::Reject {
            code: Some(wire::RejectCode::Busy),
            ..
        }
    ));
    let c = h.step(Input::JobFinished {
        job_id: "j-7".into(),
        run: h.run.unwrap(),
        outcome: JobOutcome::Json { result: json!({}) },
    });
    let t = types(&c);
    assert_eq!(t.first(), Some(&"completeJson"));
    let close = c.iter().position(
        |c| matches!(c, Command::Close { code: 1000, reason, .. } if reason == "session ended"),
    );
    let exit = c.iter().position(|c| {
        matches!(
            c,
            Command::Exit {
                code: ExitCode::Clean,
                ..
            }
        )
    });
    assert!(close.is_some() && close < exit, "{c:?}");
}

#[test]
fn shutdown_grace_bounds_a_hung_job() {
    let mut h = Driver::live(registered());
    h.frame(&offer("j-9", json!({"kind":"llm","messages":[]})));
    h.step(Input::Shutdown);
    for t in [4.0, 8.0, 12.0, 16.0, 20.0, 24.0, 28.0] {
        h.at(t);
        h.frame(&StudioFrame::HeartbeatAck);
    }
    let c = h.at(30.0);
    assert!(c.contains(&Command::CancelJob {
        job_id: "j-9".into()
    }));
    assert!(
        frames(&c).iter().any(
            |f| matches!(f, WorkerFrame::Fail { retryable: true, job_id, .. } if job_id == "j-9")
        ),
        "{c:?}"
    );
    assert_eq!(exit_of(&c).unwrap().0, ExitCode::Clean);
}

/// A job whose engine finished but whose upload is still in flight when the shutdown
/// grace ends: nothing runs, so no `CancelJob` (its held bytes are discarded instead), and
/// a second report of the finished run is refused rather than taken for a cancelled run's
/// late result.
#[test]
fn shutdown_grace_does_not_cancel_a_finished_job_still_uploading() {
    let mut h = Driver::live(registered());
    h.frame(&offer("j-4", json!({"kind":"image","prompt":"p"})));
    let run = h.run.unwrap();
    let finished = Input::JobFinished {
        job_id: "j-4".into(),
        run,
        outcome: JobOutcome::Binary {
            ext: "webp".into(),
            bytes_len: 100,
        },
    };
    h.step(finished.clone());
    assert!(h.http.is_some(), "the upload is in flight");
    h.step(Input::Shutdown);
    for t in [4.0, 8.0, 12.0, 16.0, 20.0, 24.0, 28.0] {
        h.at(t);
        h.frame(&StudioFrame::HeartbeatAck);
    }
    let c = h.at(30.0);
    assert!(
        !c.iter().any(|c| matches!(c, Command::CancelJob { .. })),
        "{c:?}"
    );
    assert!(
        c.contains(&Command::DiscardResult {
            job_id: "j-4".into()
        }),
        "{c:?}"
    );
    assert_eq!(exit_of(&c).unwrap().0, ExitCode::Clean);
    assert!(matches!(
        h.try_step(finished),
        Err(UsageError::UnknownJob(_))
    ));
}

#[test]
fn pause_and_resume_are_advertised_at_once_and_logged() {
    let mut h = Driver::live(registered());
    let c = h.step(Input::Pause);
    let WorkerFrame::Heartbeat { capabilities, .. } = &frames(&c)[0] else {
        panic!()
    };
    assert!(!capabilities.auto_enabled);
    let c = h.step(Input::Resume);
    let WorkerFrame::Heartbeat { capabilities, .. } = &frames(&c)[0] else {
        panic!()
    };
    assert!(capabilities.auto_enabled);
    let logs = h.worker.status().recent_logs;
    assert!(logs
        .iter()
        .any(|l| l.message.contains("paused by operator")));
    assert!(logs
        .iter()
        .any(|l| l.message.contains("resumed by operator")));
}

#[test]
fn disable_and_enable_reject_offers_paused_and_are_advertised_at_once() {
    let mut h = Driver::live(registered());
    let c = h.step(Input::Disable);
    let WorkerFrame::Heartbeat { capabilities, .. } = &frames(&c)[0] else {
        panic!("{c:?}")
    };
    assert!(!capabilities.auto_enabled);
    assert_eq!(h.worker.phase(), Phase::Paused);
    let c = h.frame(&offer("j-1", json!({"kind":"llm","messages":[]})));
    assert!(
        matches!(&frames(&c)[0], WorkerFrame::Reject { code: Some(wire::RejectCode::Paused), reason, .. }
            if reason == REASON_DISABLED),
        "{c:?}"
    );
    assert!(!c.iter().any(|c| matches!(c, Command::Dispatch { .. })));
    // Paused as well: the advertised value does not change, so no extra heartbeat; the
    // pause takes precedence in the reject reason.
    let c = h.step(Input::Pause);
    assert!(frames(&c).is_empty(), "{c:?}");
    let c = h.frame(&offer("j-2", json!({"kind":"llm","messages":[]})));
    assert!(
        matches!(&frames(&c)[0], WorkerFrame::Reject { reason, .. } if reason == REASON_PAUSED)
    );
    // Enabled but still paused: nothing changes on the wire.
    let c = h.step(Input::Enable);
    assert!(frames(&c).is_empty(), "{c:?}");
    let c = h.step(Input::Resume);
    let WorkerFrame::Heartbeat { capabilities, .. } = &frames(&c)[0] else {
        panic!("{c:?}")
    };
    assert!(capabilities.auto_enabled);
    let c = h.frame(&offer("j-3", json!({"kind":"llm","messages":[]})));
    assert!(c.iter().any(|c| matches!(c, Command::Dispatch { .. })));
    // Repeating a request changes nothing.
    let c = h.step(Input::Enable);
    assert!(c.iter().all(|c| matches!(c, Command::Wait { .. })), "{c:?}");
    let logs = h.worker.status().recent_logs;
    for needle in ["disabled by operator", "enabled by operator"] {
        assert!(logs.iter().any(|l| l.message.contains(needle)), "{needle}");
    }
}

#[test]
fn a_worker_started_disabled_rejects_until_enabled() {
    let mut cfg = registered();
    cfg.auto_enabled = false;
    let mut h = Driver::new(cfg);
    h.step(Input::Start);
    let conn = h.conn.unwrap();
    h.step(Input::Connected { conn });
    let c = h.frame(&welcome());
    let WorkerFrame::Heartbeat { capabilities, .. } = frames(&c).pop().unwrap() else {
        panic!("{c:?}")
    };
    assert!(!capabilities.auto_enabled, "the first heartbeat says so");
    assert!(!h.worker.status().enabled);
    let c = h.frame(&offer("j-1", json!({"kind":"llm","messages":[]})));
    assert!(matches!(
        &frames(&c)[0],
        WorkerFrame::Reject {
            code: Some(wire::RejectCode::Paused),
            ..
        }
    ));
    let c = h.step(Input::Enable);
    let WorkerFrame::Heartbeat { capabilities, .. } = &frames(&c)[0] else {
        panic!("{c:?}")
    };
    assert!(capabilities.auto_enabled);
    let c = h.frame(&offer("j-2", json!({"kind":"llm","messages":[]})));
    assert!(c.iter().any(|c| matches!(c, Command::Dispatch { .. })));
    assert!(h
        .worker
        .status()
        .recent_logs
        .iter()
        .any(|l| l.message.contains("auto_enabled = false")));
}

/// What `status()` tells an operator: who the worker is, the job in the slot, whether it is
/// stopping, and how often it reconnected.
#[test]
fn the_status_snapshot_names_the_job_the_worker_and_the_stop() {
    let mut h = Driver::live(registered());
    let st = h.worker.status();
    assert_eq!(st.worker_id.as_deref(), Some("w-1"));
    assert_eq!(st.registration_request_id, None);
    assert!(st.enabled && !st.paused && !st.stopping);
    assert_eq!(st.current_job, None);
    h.at(2.0);
    h.frame(&offer(
        "j-1",
        json!({"kind":"llm","messages":[{"role":"user","content":"hi"}]}),
    ));
    let job = h.worker.status().current_job.expect("a current job");
    assert_eq!(
        (job.job_id.as_str(), job.status),
        ("j-1", JobStatus::Running)
    );
    assert_eq!(job.kind, wire::TaskKind::Llm);
    assert_eq!(job.prompt_preview, "hi");
    assert_eq!(job.started, Mono::from_secs(2));
    h.step(Input::Shutdown);
    assert!(h.worker.status().stopping, "draining for the running job");
    h.disconnect();
    assert!(
        h.worker.status().stopping,
        "still stopping while it reconnects"
    );
}

#[test]
fn reconnects_are_counted() {
    let mut h = Driver::live(registered());
    assert_eq!(h.worker.status().stats.reconnects, 0);
    h.disconnect();
    assert_eq!(h.worker.status().stats.reconnects, 1);
    let c = h.to_deadline();
    let conn = c
        .iter()
        .find_map(|c| match c {
            Command::Connect { conn, .. } => Some(*conn),
            _ => None,
        })
        .expect("a reconnect");
    h.step(Input::ConnectFailed {
        conn,
        error: ConnectError::Transport("refused".into()),
    });
    assert_eq!(h.worker.status().stats.reconnects, 2);
}

/// Log entries are numbered from 1; `logs_after(n)` gives the kept ones after `n`, and the
/// ring keeps only the newest `Limits::recent_logs`.
#[test]
fn logs_are_numbered_and_read_after_a_sequence_number() {
    let mut cfg = registered();
    cfg.limits.recent_logs = 3;
    let mut h = Driver::new(cfg);
    assert_eq!(h.worker.logs_after(0).count(), 0);
    for i in 1..=5 {
        h.step(Input::Log(wire::LogEntry {
            ts: "2026-01-01T00:00:00.000Z".into(),
            level: "info".into(),
            category: "engine".into(),
            message: format!("line {i}"),
            job_id: None,
        }));
    }
    let all: Vec<(u64, String)> = h
        .worker
        .logs_after(0)
        .map(|(n, e)| (n, e.message.clone()))
        .collect();
    assert_eq!(
        all,
        [
            (3, "line 3".to_string()),
            (4, "line 4".to_string()),
            (5, "line 5".to_string())
        ]
    );
    assert_eq!(h.worker.status().log_seq, 5);
    let after: Vec<u64> = h.worker.logs_after(4).map(|(n, _)| n).collect();
    assert_eq!(after, [5]);
    assert_eq!(h.worker.logs_after(5).count(), 0);
    assert_eq!(h.worker.logs_after(u64::MAX).count(), 0);
}

#[test]
fn job_durations_fall_in_their_buckets_by_kind() {
    let mut stats = JobStats::default();
    stats.observe(JobStatus::Completed, Duration::from_millis(100));
    stats.observe(JobStatus::Completed, Duration::from_micros(100_001));
    stats.observe(JobStatus::Failed, Duration::from_secs(3600));
    stats.observe(JobStatus::Running, Duration::from_secs(1));
    assert_eq!((stats.completed, stats.failed, stats.count()), (2, 1, 3));
    assert_eq!(
        stats.duration_buckets[0], 1,
        "100 ms is in the 100 ms bucket"
    );
    assert_eq!(stats.duration_buckets[1], 1, "just over goes to the next");
    assert_eq!(
        stats.duration_buckets.iter().sum::<u64>(),
        2,
        "an hour is past the last bound"
    );
    assert_eq!(stats.duration_sum_us, 100_000 + 100_001 + 3_600_000_000);

    let mut h = Driver::live(registered());
    h.frame(&offer("j-1", json!({"kind":"llm","messages":[]})));
    h.at(0.3);
    h.finish(JobOutcome::Json { result: json!({}) });
    h.frame(&offer("j-2", json!({"kind":"llm","messages":[]})));
    h.finish(JobOutcome::Failed {
        error: "boom".into(),
        retryable: false,
    });
    let llm = &h.worker.status().stats.jobs[&wire::TaskKind::Llm];
    assert_eq!((llm.completed, llm.failed), (1, 1));
    assert_eq!(llm.duration_buckets[2], 1, "300 ms");
    assert_eq!(llm.duration_buckets[0], 1, "0 ms");
    let recent = h.worker.status().recent_jobs;
    assert_eq!(recent[0].status, JobStatus::Failed);
    assert_eq!(recent[1].finished, Some(Mono::from_millis(300)));
}

#[test]
fn time_going_backwards_is_a_usage_error_and_changes_nothing() {
    let mut h = Driver::live(registered());
    h.at(3.0);
    let before = h.worker.status();
    let err = h
        .worker
        .handle(Now::new(Mono(1), WallMs(0)), Input::Tick)
        .unwrap_err();
    assert!(matches!(err, UsageError::TimeWentBackwards { .. }));
    assert_eq!(h.worker.status(), before);
}

#[rstest]
#[case::upload_ok(200, "accept")]
#[case::upload_retry(500, "reject")]
#[case::upload_refused(409, "accept")]
fn an_offer_overtaking_our_upload_is_decided_when_the_upload_finishes(
    #[case] status: u16,
    #[case] decision: &str,
) {
    let mut h = Driver::live(registered());
    h.frame(&offer("j-1", json!({"kind":"image","prompt":"p"})));
    h.step(Input::JobFinished {
        job_id: "j-1".into(),
        run: h.run.unwrap(),
        outcome: JobOutcome::Binary {
            ext: "webp".into(),
            bytes_len: 3,
        },
    });
    // The studio's next offer arrives before our upload's response.
    let c = h.frame(&offer("j-2", json!({"kind":"llm","messages":[]})));
    assert!(types(&c).is_empty(), "parked, not rejected: {c:?}");
    let c = h.http_reply(status, "");
    let t = types(&c);
    assert!(t.contains(&decision), "{status}: {t:?}");
    if decision == "accept" {
        assert!(c
            .iter()
            .any(|c| matches!(c, Command::Dispatch { claim, .. } if claim.job_id == "j-2")));
    }
}

#[test]
fn a_parked_offer_dies_with_its_session() {
    let mut h = Driver::live(registered());
    h.frame(&offer("j-1", json!({"kind":"image","prompt":"p"})));
    h.step(Input::JobFinished {
        job_id: "j-1".into(),
        run: h.run.unwrap(),
        outcome: JobOutcome::Binary {
            ext: "webp".into(),
            bytes_len: 3,
        },
    });
    h.frame(&offer("j-2", json!({"kind":"llm","messages":[]})));
    h.disconnect();
    let c = h.http_reply(200, "");
    assert!(types(&c).is_empty());
    assert!(!c.iter().any(|c| matches!(c, Command::Dispatch { .. })));
}

#[test]
fn an_idle_session_wakes_for_its_heartbeat_only() {
    let mut h = Driver::live(registered());
    h.frame(&StudioFrame::HeartbeatAck);
    // The welcome notices ship one flush interval later...
    assert_eq!(h.deadline(), Some(1.0));
    assert_eq!(types(&h.at(1.0)), vec!["logBatch"]);
    // ...and with nothing queued the next deadline is the heartbeat, not another flush.
    assert_eq!(h.deadline(), Some(5.0));
    h.at(5.0);
    h.frame(&StudioFrame::HeartbeatAck);
    assert_eq!(h.deadline(), Some(10.0));
    // A new log line arms the flush again, one interval out.
    h.step(Input::Log(log_entry("engine warmed up")));
    assert_eq!(h.deadline(), Some(6.0));
}

/// The drain's closing `Wait` is returned again by every further `poll` until the next
/// `handle`, which supersedes it (a driver may poll once too often; it must not get a
/// different deadline or lose one). The harness's drain stops at the first `Wait`.
#[test]
fn the_closing_wait_repeats_until_the_next_handle() {
    let mut h = Driver::live(registered());
    h.step(Input::Tick);
    let Command::Wait { until } = h.worker.poll() else {
        panic!("after the drain, poll keeps returning Wait");
    };
    assert!(until.is_some(), "a live session has a heartbeat deadline");
    for _ in 0..3 {
        assert_eq!(h.worker.poll(), Command::Wait { until });
    }
    // At the deadline its timer runs, and a later deadline closes the new drain.
    h.micros = until.unwrap().0;
    h.step(Input::Tick);
    let Command::Wait { until: next } = h.worker.poll() else {
        panic!("after the drain, poll keeps returning Wait");
    };
    assert!(next > until, "{next:?} after {until:?}");
    assert_eq!(h.worker.poll(), Command::Wait { until: next });
}
