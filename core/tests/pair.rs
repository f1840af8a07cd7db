//! A worker machine and the studio machine wired together in memory and stepped to the
//! next deadline (`studio_core::testing::Pair`): no sockets, no threads, no sleeping.
//! Faults (drops, half-open links, outages, upload errors, studio restarts) are switches on
//! the pair, so each scenario reads as a story.

use std::time::Duration;

use studio_core::studio::{JobResult, JobState};
use studio_core::testing::{task, EngineMode, Pair};
use studio_core::wire::{self, TaskKind};
use studio_core::worker::{Credentials, ExitCode, Input, SessionState, WorkerConfig};

const MIN: Duration = Duration::from_secs(60);

#[test]
fn all_five_kinds_complete_exactly_once_with_the_full_prompt() {
    let mut p = Pair::registered();
    p.start();
    assert!(p.run_until(MIN, Pair::connected));
    let long = "a fox ".repeat(80);
    let jobs: Vec<String> = TaskKind::ALL
        .iter()
        .map(|k| p.submit(task(*k, &long)))
        .collect();
    assert!(
        p.run_until(MIN, |p| p.all_done(&jobs)),
        "{:?}",
        jobs.iter().map(|j| p.state(j)).collect::<Vec<_>>()
    );
    for (kind, job) in TaskKind::ALL.iter().zip(&jobs) {
        let rec = p.studio.job(job).unwrap();
        assert_eq!(rec.completions, 1);
        assert_eq!(rec.attempts, 1);
        let JobState::Done { result, worker_id } = &rec.state else {
            unreachable!()
        };
        assert_eq!(worker_id, "w-1");
        match (kind.is_binary(), result) {
            (true, JobResult::Binary { prompt, .. }) => assert_eq!(prompt, &long),
            (false, JobResult::Json { prompt, .. }) => {
                assert_eq!(prompt.as_deref(), Some(long.as_str()))
            }
            other => panic!("{kind}: {other:?}"),
        }
    }
    let types = p.sent_types();
    assert_eq!(types.iter().filter(|t| *t == "accept").count(), 5);
    assert_eq!(types.iter().filter(|t| *t == "completeJson").count(), 2);
    assert!(!types.iter().any(|t| t == "readyForMore"));
    // The studio's next offer overtakes each upload's HTTP answer in this pair (it is
    // queued first); the worker parks it instead of rejecting it busy.
    assert!(!types.iter().any(|t| t == "reject"), "{types:?}");
    assert_eq!(types[0], "hello");
}

#[test]
fn registration_with_operator_approval_then_a_job() {
    let mut p = Pair::new(WorkerConfig::for_tests("http://studio.test"));
    p.start();
    assert!(p.run_until(MIN, |p| !p.studio.pending_requests().is_empty()));
    assert_eq!(p.worker.status().session, SessionState::WaitingForApproval);
    let rr = p.studio.pending_requests()[0].request_id.clone();
    p.run_for(Duration::from_secs(45));
    assert!(!p.connected(), "no session before approval");
    p.studio.approve(&rr).unwrap();
    assert!(
        p.run_until(MIN, Pair::connected),
        "connects after the next poll"
    );
    let creds = p.persisted.clone().unwrap();
    assert!(creds.worker_id.is_some() && creds.auth_token.is_some());
    assert!(creds.registration_secret.is_none());
    let job = p.submit(task(TaskKind::Llm, "hi"));
    assert!(p.run_until(MIN, |p| p.all_done(std::slice::from_ref(&job))));
}

#[test]
fn busy_rejects_requeue_without_spending_an_attempt() {
    let mut cfg = WorkerConfig::for_tests("x");
    cfg.credentials = Some(Credentials {
        worker_id: "w-1".into(),
        auth_token: "tok-1".into(),
    });
    cfg.auto_update_enabled = true;
    cfg.timings.update_interval = Duration::from_secs(10);
    let mut p = Pair::new(cfg);
    p.update_available = Some("9.9.9".into());
    p.start();
    assert!(p.run_until(MIN, Pair::connected));
    // At the first check the update is found and the installer holds the job slot (the
    // pair never answers ApplyUpdate on its own).
    assert!(p.run_until(MIN, |p| p.worker.status().updating.is_some()));
    let job = p.submit(task(TaskKind::Image, "x"));
    p.run_for(Duration::from_secs(12));
    let rejects = p.sent_types().iter().filter(|t| *t == "reject").count();
    assert!(rejects >= 1, "{:?}", p.sent_types());
    assert!(rejects <= 4, "no re-offer spin: {rejects} rejects in 12 s");
    let rec = p.studio.job(&job).unwrap();
    assert_eq!(rec.attempts, 0, "busy rejects spend no attempt");
    // The install fails (and the feed stops offering that version, so the next check does
    // not take the slot again); the slot frees and the job runs.
    p.update_available = None;
    p.to_worker.push_back(Input::UpdateApplied {
        result: Err("disk full".into()),
    });
    p.settle();
    assert!(p.run_until(MIN, |p| p.all_done(std::slice::from_ref(&job))));
    assert_eq!(p.studio.job(&job).unwrap().attempts, 1);
}

#[test]
fn paused_workers_get_no_offers_until_resumed() {
    let mut p = Pair::registered();
    p.start();
    assert!(p.run_until(MIN, Pair::connected));
    p.to_worker.push_back(Input::Pause);
    p.settle();
    let job = p.submit(task(TaskKind::Video, "dragon"));
    p.run_for(Duration::from_secs(30));
    assert!(
        matches!(p.state(&job), JobState::Queued),
        "{:?}",
        p.state(&job)
    );
    p.to_worker.push_back(Input::Resume);
    p.settle();
    assert!(p.run_until(MIN, |p| p.all_done(std::slice::from_ref(&job))));
}

#[test]
fn a_racing_offer_to_a_paused_worker_is_rejected_paused_and_requeued() {
    let mut p = Pair::registered();
    p.start();
    assert!(p.run_until(MIN, Pair::connected));
    // Pause lands on the worker while the studio still believes it is enabled: the
    // worker's pause heartbeat and the studio's offer cross on the wire.
    p.half_open = true; // hold the heartbeat back
    p.to_worker.push_back(Input::Pause);
    p.settle();
    p.half_open = false;
    let job = p.submit(task(TaskKind::Image, "x"));
    let rec = p.studio.job(&job).unwrap();
    assert!(matches!(
        rec.state,
        JobState::Queued | JobState::Offered { .. }
    ));
    p.run_for(Duration::from_secs(2));
    let types = p.sent_types();
    assert!(types.iter().any(|t| t == "reject"), "{types:?}");
    assert_eq!(p.studio.job(&job).unwrap().attempts, 0);
    p.to_worker.push_back(Input::Resume);
    p.settle();
    assert!(p.run_until(MIN, |p| p.all_done(std::slice::from_ref(&job))));
}

#[test]
fn reconnect_with_backoff_after_a_drop_keeps_the_running_job() {
    let mut p = Pair::registered();
    p.engine_latency = Duration::from_secs(5);
    p.start();
    assert!(p.run_until(MIN, Pair::connected));
    let job = p.submit(task(TaskKind::Llm, "long think"));
    assert!(p.run_until(MIN, |p| p.engine.is_some()));
    p.drop_link();
    assert!(matches!(
        p.worker.status().session,
        SessionState::Reconnecting { attempt: 1 }
    ));
    let dropped_at = p.now;
    assert!(p.run_until(MIN, Pair::connected));
    let gap = p.now.saturating_since(dropped_at);
    assert!(
        gap >= Duration::from_millis(500) && gap <= Duration::from_secs(1),
        "{gap:?}"
    );
    assert!(p.run_until(MIN, |p| p.all_done(std::slice::from_ref(&job))));
    let rec = p.studio.job(&job).unwrap();
    assert_eq!((rec.completions, rec.attempts), (1, 1));
}

#[test]
fn half_open_link_is_detected_and_the_result_still_lands_once() {
    let mut p = Pair::registered();
    p.engine_latency = Duration::from_secs(8);
    p.start();
    assert!(p.run_until(MIN, Pair::connected));
    let job = p.submit(task(TaskKind::Llm, "q"));
    assert!(p.run_until(MIN, |p| p.engine.is_some()));
    p.half_open = true;
    let t0 = p.now;
    // The worker notices within the read-idle timeout and reconnects once the link heals.
    assert!(p.run_until(MIN, |p| !matches!(
        p.worker.status().session,
        SessionState::Connected
    )));
    let noticed = p.now.saturating_since(t0);
    assert!(noticed <= Duration::from_secs(21), "{noticed:?}");
    p.link = None;
    p.half_open = false;
    assert!(
        p.run_until(MIN, |p| p.all_done(std::slice::from_ref(&job))),
        "{:?}",
        p.state(&job)
    );
    assert_eq!(p.studio.job(&job).unwrap().completions, 1);
    // The studio swept the dead session; the worker holds one live session.
    assert!(p.run_until(MIN, |p| p
        .studio
        .workers()
        .iter()
        .filter(|w| w.connected)
        .count()
        == 1));
}

#[test]
fn auth_failure_exits_without_a_reconnect_storm() {
    let mut cfg = WorkerConfig::for_tests("x");
    cfg.credentials = Some(Credentials {
        worker_id: "w-1".into(),
        auth_token: "wrong".into(),
    });
    let mut p = Pair::new(cfg);
    p.studio.add_worker("w-1", "right");
    p.start();
    p.run_for(Duration::from_secs(120));
    let (code, reason) = p.exit.clone().unwrap();
    assert_eq!(code, ExitCode::AuthFailed);
    assert!(reason.contains("register --reset"));
    assert_eq!(p.connects, 1);
}

#[test]
fn worker_deleted_error_frame_on_a_live_session_is_terminal() {
    let mut p = Pair::registered();
    p.start();
    assert!(p.run_until(MIN, Pair::connected));
    p.studio.remove_worker("w-1");
    p.drain_studio();
    p.settle();
    let (code, _) = p.exit.clone().expect("worker_deleted is terminal");
    assert_eq!(code, ExitCode::Fatal);
    assert_eq!(p.connects, 1);
}

#[test]
fn studio_restart_the_fleet_reconnects_and_jobs_continue() {
    let mut p = Pair::registered();
    p.start();
    assert!(p.run_until(MIN, Pair::connected));
    let before = p.submit(task(TaskKind::Image, "before"));
    assert!(p.run_until(MIN, |p| p.all_done(std::slice::from_ref(&before))));
    // The studio goes away for 20 s.
    p.studio_up = false;
    p.drop_link();
    p.run_for(Duration::from_secs(20));
    assert!(!p.connected());
    let attempts = p.worker.status().reconnect_attempt;
    assert!(attempts >= 3, "kept retrying with backoff: {attempts}");
    p.studio_up = true;
    let after = p.submit(task(TaskKind::AudioTts, "after"));
    assert!(p.run_until(MIN, |p| p.all_done(std::slice::from_ref(&after))));
    assert_eq!(
        p.worker.status().reconnect_attempt,
        0,
        "reset after a welcomed session"
    );
}

#[test]
fn upload_retry_after_a_500_completes_once() {
    let mut p = Pair::registered();
    p.start();
    assert!(p.run_until(MIN, Pair::connected));
    p.fail_uploads = 2;
    let job = p.submit(task(TaskKind::Image, "x"));
    assert!(p.run_until(MIN, |p| p.all_done(std::slice::from_ref(&job))));
    assert_eq!(p.fail_uploads, 0);
    assert_eq!(p.studio.job(&job).unwrap().completions, 1);
    assert!(!p.sent_types().iter().any(|t| t == "fail"));
}

#[test]
fn upload_giving_up_fails_retryable_and_the_studio_requeues() {
    let mut p = Pair::registered();
    p.start();
    assert!(p.run_until(MIN, Pair::connected));
    p.fail_uploads = 3;
    let job = p.submit(task(TaskKind::Image, "x"));
    assert!(p.run_until(MIN, |p| p.all_done(std::slice::from_ref(&job))));
    let rec = p.studio.job(&job).unwrap();
    assert_eq!(rec.completions, 1);
    assert_eq!(rec.attempts, 2, "the failed upload spent one attempt");
}

#[test]
fn engine_failures_follow_the_typed_retryable_flag() {
    let mut p = Pair::registered();
    p.engine_mode = EngineMode::Fail { retryable: false };
    p.start();
    assert!(p.run_until(MIN, Pair::connected));
    let job = p.submit(task(TaskKind::Llm, "x"));
    assert!(p.run_until(MIN, |p| matches!(p.state(&job), JobState::Failed { .. })));
    assert_eq!(p.studio.job(&job).unwrap().attempts, 1);

    let mut p = Pair::registered();
    p.engine_mode = EngineMode::Fail { retryable: true };
    p.start();
    assert!(p.run_until(MIN, Pair::connected));
    let job = p.submit(task(TaskKind::Llm, "x"));
    assert!(p.run_until(Duration::from_secs(600), |p| matches!(
        p.state(&job),
        JobState::Failed { .. }
    )));
    assert_eq!(
        p.studio.job(&job).unwrap().attempts,
        3,
        "retried until max_attempts"
    );
}

#[test]
fn logs_capped_while_away_ship_with_the_marker_after_reconnect() {
    let mut cfg = WorkerConfig::for_tests("x");
    cfg.credentials = Some(Credentials {
        worker_id: "w-1".into(),
        auth_token: "tok-1".into(),
    });
    cfg.limits.log_queue_cap = 50;
    let mut p = Pair::new(cfg);
    p.studio_up = false;
    p.start();
    for i in 0..200 {
        p.to_worker.push_back(Input::Log(wire::LogEntry {
            ts: "2026-05-25T12:00:00.000Z".into(),
            level: "info".into(),
            category: "engine".into(),
            message: format!("line {i}"),
            job_id: None,
        }));
    }
    p.settle();
    assert_eq!(p.worker.status().log_queue_len, 50);
    p.studio_up = true;
    assert!(p.run_until(MIN, Pair::connected));
    p.run_for(Duration::from_secs(2));
    let logs = p.studio.worker_logs("w-1");
    assert!(
        logs.iter().any(|l| l.category == "logs"
            && l.message
                .starts_with("ship queue full (50 entries); dropped ")),
        "{logs:?}"
    );
    assert!(logs.iter().any(|l| l.message == "line 199"));
    assert!(!logs.iter().any(|l| l.message == "line 0"));
}

#[test]
fn logs_lost_on_a_half_open_link_are_restored_and_shipped() {
    let mut p = Pair::registered();
    p.start();
    assert!(p.run_until(MIN, Pair::connected));
    p.run_for(Duration::from_secs(6));
    p.half_open = true;
    p.to_worker.push_back(Input::Log(wire::LogEntry {
        ts: "2026-05-25T12:00:00.000Z".into(),
        level: "warn".into(),
        category: "engine".into(),
        message: "written into the void".into(),
        job_id: None,
    }));
    p.settle();
    assert!(p.run_until(MIN, |p| !p.connected()));
    p.link = None;
    p.half_open = false;
    assert!(p.run_until(MIN, Pair::connected));
    p.run_for(Duration::from_secs(2));
    let n = p
        .studio
        .worker_logs("w-1")
        .iter()
        .filter(|l| l.message == "written into the void")
        .count();
    assert_eq!(n, 1);
}

#[test]
fn shutdown_mid_job_delivers_the_result_then_closes_1000() {
    let mut p = Pair::registered();
    p.engine_latency = Duration::from_secs(3);
    p.start();
    assert!(p.run_until(MIN, Pair::connected));
    let job = p.submit(task(TaskKind::AudioStt, "https://x/a.wav"));
    assert!(p.run_until(MIN, |p| p.engine.is_some()));
    p.to_worker.push_back(Input::Shutdown);
    p.settle();
    assert!(p.run_until(MIN, |p| p.exit.is_some()));
    assert_eq!(p.exit.as_ref().unwrap().0, ExitCode::Clean);
    assert!(matches!(p.state(&job), JobState::Done { .. }));
}

/// A connected pair whose one job finished on the engine and whose `completeJson` was lost
/// with the link (the link works again): the result is kept, unacknowledged.
fn a_completion_lost_with_the_link() -> (Pair, String) {
    let mut p = Pair::registered();
    p.start();
    assert!(p.run_until(MIN, Pair::connected));
    let job = p.submit(task(TaskKind::Llm, "remember me"));
    assert!(p.run_until(MIN, |p| p.engine.is_some()));
    p.half_open = true;
    assert!(p.run_until(MIN, |p| p.outbox.contains_key(&job)));
    assert_eq!(
        p.sent_types().last().map(String::as_str),
        Some("completeJson")
    );
    p.half_open = false;
    (p, job)
}

/// `kill -9` after the engine finished and the `completeJson` left, before the studio's
/// `completeAck` (the frame was lost with the link): the restarted worker re-sends the
/// kept result after its first welcome; the job completes once, on one engine run.
#[test]
fn a_crash_before_the_complete_ack_loses_nothing() {
    let (mut p, job) = a_completion_lost_with_the_link();
    p.crash_and_restart();
    assert!(p.run_until(MIN, |p| p.all_done(std::slice::from_ref(&job))));
    let rec = p.studio.job(&job).unwrap();
    assert_eq!((rec.completions, rec.attempts), (1, 1));
    assert_eq!(p.dispatches, 1, "the result was re-sent, not regenerated");
    assert!(
        p.run_until(MIN, |p| p.outbox.is_empty()),
        "forgotten on the ack"
    );
}

/// Regression: `kill -9` after the `completeJson` left and was lost, and the worker stays
/// down past the studio's session timeout: the studio requeues the job (its claim
/// expired) and offers it again at the restarted worker's `welcome`, before it reads the
/// kept result re-sent then (a result for a job only offered reads as a stale re-send).
/// The worker answers that offer with its kept result: the job completes once, on one
/// engine run.
#[test]
fn a_job_requeued_while_its_worker_was_down_completes_with_the_kept_result() {
    let (mut p, job) = a_completion_lost_with_the_link();
    p.studio_up = false;
    p.crash_and_restart();
    assert!(p.run_until(2 * MIN, |p| p.state(&job) == JobState::Queued));
    p.studio_up = true;
    assert!(p.run_until(MIN, |p| p.all_done(std::slice::from_ref(&job))));
    assert_eq!(p.studio.job(&job).unwrap().completions, 1);
    assert_eq!(
        p.dispatches, 1,
        "answered with the kept result, not regenerated"
    );
    assert!(
        p.run_until(MIN, |p| p.outbox.is_empty()),
        "forgotten on the ack"
    );
}

/// `kill -9` while a binary result waits to be uploaded again: the restarted worker
/// uploads the kept bytes; the job completes once, on one engine run.
#[test]
fn a_crash_during_an_upload_loses_nothing() {
    let mut p = Pair::registered();
    p.start();
    assert!(p.run_until(MIN, Pair::connected));
    p.fail_uploads = 1;
    let job = p.submit(task(TaskKind::Image, "a kept fox"));
    assert!(p.run_until(MIN, |p| p.fail_uploads == 0));
    assert!(p.outbox.contains_key(&job));
    p.crash_and_restart();
    assert!(p.run_until(MIN, |p| p.all_done(std::slice::from_ref(&job))));
    let rec = p.studio.job(&job).unwrap();
    assert_eq!((rec.completions, rec.attempts), (1, 1));
    assert_eq!(p.dispatches, 1, "uploaded again, not regenerated");
    assert!(p.outbox.is_empty());
}
