//! Hostile input and crashes, as the worker machine decides them: undecodable offers, an
//! offer overtaking our upload, the byte limits of what the worker sends, the job
//! deadline, and the durable outbox (what is kept, when it is forgotten, what a restart
//! does with it). Time is passed in; nothing sleeps.

use std::time::Duration;

use serde_json::json;
use studio_core::wire::{self, RejectCode, StudioFrame, WorkerFrame, MAX_FRAME_BYTES};
use studio_core::worker::*;
use studio_core::WallMs;

mod support;
use support::{
    frames, llm_task, log_entry, offer, registered, studio_reads_all, types, welcome, Driver, WALL0,
};

fn image_task() -> serde_json::Value {
    json!({"kind":"image","prompt":"a fox"})
}

/// An offer frame whose claim is whole but for `task`.
fn offer_text(job: &str, task: serde_json::Value) -> String {
    json!({"type":"offer","claim":{"jobId":job,"gameId":"g","assetName":"g/a","model":"synthetic",
        "vramGbEstimate":1.0,"task":task,"modelSource":{"engine":"synthetic","files":[],
        "cliDefaults":{"cfgScale":1.0,"steps":8,"width":1024,"height":1024}}}})
    .to_string()
}

fn binary_done(h: &Driver) -> Input {
    h.finished(JobOutcome::Binary {
        ext: "webp".into(),
        bytes_len: 3,
    })
}

fn kept(cmds: &[Command]) -> Vec<&KeptResult> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::KeepResult(r) => Some(&**r),
            _ => None,
        })
        .collect()
}

fn forgotten(cmds: &[Command]) -> Vec<&str> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::ForgetResult { job_id } => Some(job_id.as_str()),
            _ => None,
        })
        .collect()
}

fn messages(cmds: &[Command]) -> Vec<String> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Report(n) => Some(n.message.clone()),
            _ => None,
        })
        .collect()
}

// ------------------------------------------------------------------------------------------
// Undecodable offers
// ------------------------------------------------------------------------------------------

/// An offer the worker cannot decode but whose job id it can read is answered (accepted,
/// then failed not retryable, naming the decode error) and the session lives: dropping it
/// would have the studio offer the job again a second after the reconnect, forever.
#[rstest::rstest]
#[case::negative_width(image_task_with("width", json!(-1)))]
#[case::negative_seed(image_task_with("seed", json!(-1)))]
#[case::unknown_kind(json!({"kind":"sculpt","prompt":"x"}))]
#[case::missing_prompt(json!({"kind":"image"}))]
fn an_undecodable_offer_is_answered_and_the_session_kept(#[case] task: serde_json::Value) {
    let mut h = Driver::live(registered());
    let c = h.frame_text(&offer_text("poison-1", task));
    let f = frames(&c);
    assert_eq!(types(&c), ["accept", "fail"], "{c:?}");
    assert!(matches!(&f[0], WorkerFrame::Accept { job_id } if job_id == "poison-1"));
    match &f[1] {
        WorkerFrame::Fail {
            job_id,
            error,
            retryable,
        } => {
            assert_eq!(job_id, "poison-1");
            assert!(
                !retryable,
                "every worker would fail to read it the same way"
            );
            assert!(error.contains("could not decode the offer"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!c
        .iter()
        .any(|c| matches!(c, Command::Close { .. } | Command::Dispatch { .. })));
    assert_eq!(h.worker.phase(), Phase::LiveIdle, "session and slot kept");
    // Counted as failed, under no kind (the metrics' jobs by kind add up without it).
    let stats = h.worker.status().stats;
    assert_eq!((stats.failed, stats.undecodable_offers), (1, 1));
    assert!(stats.jobs.is_empty(), "{:?}", stats.jobs);
    // The fail is held like any result until its ack...
    assert_eq!(kept(&c).len(), 1);
    let c = h.frame(&StudioFrame::FailAck {
        job_id: "poison-1".into(),
    });
    assert_eq!(forgotten(&c), ["poison-1"]);
    // ...and the next offer is taken as usual.
    let c = h.frame(&offer("j-2", llm_task()));
    assert!(c.iter().any(|c| matches!(c, Command::Dispatch { .. })));
}

fn image_task_with(key: &str, value: serde_json::Value) -> serde_json::Value {
    let mut t = image_task();
    t[key] = value;
    t
}

/// Without a readable job id there is nothing to answer: a protocol error as before.
#[rstest::rstest]
#[case::not_json("{\"type\":\"offer\",")]
#[case::no_claim(r#"{"type":"offer"}"#)]
#[case::numeric_job_id(r#"{"type":"offer","claim":{"jobId":7}}"#)]
#[case::empty_job_id(r#"{"type":"offer","claim":{"jobId":""}}"#)]
#[case::not_an_offer(r#"{"type":"completeAck","claim":{"jobId":"j"}}"#)]
fn an_undecodable_frame_without_a_job_id_drops_the_session(#[case] text: &str) {
    let mut h = Driver::live(registered());
    let c = h.frame_text(text);
    assert!(
        c.iter().any(|c| matches!(c, Command::Close { .. })),
        "{c:?}"
    );
    assert!(types(&c).is_empty());
    assert_eq!(h.worker.phase(), Phase::Backoff);
}

#[test]
fn an_undecodable_offer_is_rejected_like_any_other_when_the_slot_is_taken() {
    let mut h = Driver::live(registered());
    h.frame(&offer("j-1", llm_task()));
    let c = h.frame_text(&offer_text("poison", image_task_with("width", json!(-1))));
    assert!(matches!(
        &frames(&c)[..],
        [WorkerFrame::Reject { code: Some(RejectCode::Busy), job_id, .. }] if job_id == "poison"
    ));
}

// ------------------------------------------------------------------------------------------
// An offer during our own upload
// ------------------------------------------------------------------------------------------

/// The studio holds our upload: the offer that overtook it is rejected `busy` after the
/// parked-offer limit (1 s), not left unanswered for the whole upload.
#[test]
fn an_offer_during_a_held_upload_is_rejected_busy_after_one_second() {
    let mut h = Driver::live(registered());
    assert_eq!(Timings::default().parked_offer, Duration::from_secs(1));
    h.at(10.0);
    h.frame(&offer("j-1", image_task()));
    h.step(binary_done(&h));
    let c = h.frame(&offer("j-2", llm_task()));
    assert!(types(&c).is_empty(), "parked first: {c:?}");
    assert_eq!(h.deadline(), Some(11.0), "decided within 1 s");
    let c = h.at(11.0);
    let answers: Vec<WorkerFrame> = frames(&c)
        .into_iter()
        .filter(|f| f.type_name() != "logBatch")
        .collect();
    assert!(
        matches!(
            &answers[..],
            [WorkerFrame::Reject { code: Some(RejectCode::Busy), job_id, .. }] if job_id == "j-2"
        ),
        "{c:?}"
    );
    // The upload still finishes and frees the slot; nothing is decided twice.
    let c = h.http_reply(200, "");
    assert!(types(&c).is_empty(), "{c:?}");
    assert_eq!(h.worker.phase(), Phase::LiveIdle);
}

#[test]
fn an_offer_whose_upload_finishes_within_the_limit_is_accepted() {
    let mut c = registered();
    c.timings.parked_offer = Duration::from_secs(3);
    let mut h = Driver::live(c);
    h.frame(&offer("j-1", image_task()));
    h.step(binary_done(&h));
    h.frame(&offer("j-2", llm_task()));
    h.advance(2.5);
    let c = h.http_reply(200, "");
    assert_eq!(types(&c), ["accept"]);
    // The parked-offer timer is gone with the offer.
    h.frame(&StudioFrame::HeartbeatAck);
    assert!(h.worker.deadline().unwrap() > studio_core::Mono::from_secs(3));
    let c = h.at(3.0);
    assert!(types(&c).is_empty(), "{c:?}");
}

// ------------------------------------------------------------------------------------------
// Byte limits of what the worker sends
// ------------------------------------------------------------------------------------------

#[test]
fn the_send_limits_have_their_documented_defaults() {
    let l = Limits::default();
    assert_eq!(l.max_send_frame_bytes, MAX_FRAME_BYTES);
    assert_eq!(l.log_batch_max_bytes, 256 * 1024);
    assert_eq!(l.log_message_max_bytes, 4096);
    assert_eq!(LOG_FIELD_MAX_BYTES, 256);
    assert_eq!(FAIL_ERROR_MAX_BYTES, 4096);
    assert_eq!(STUDIO_TEXT_CLIP, 200);
    assert_eq!(MIN_LOG_BATCH_BYTES, 64 * 1024);
    // A configured batch limit below the floor is raised to it.
    let mut c = registered();
    c.limits.log_batch_max_bytes = 10;
    assert_eq!(
        Worker::new(c).config().limits.log_batch_max_bytes,
        MIN_LOG_BATCH_BYTES
    );
}

/// 5 000 queued lines of 1 KiB would be one 5 MiB frame: they go out in batches under the
/// byte limit, one per flush, none lost.
#[test]
fn a_long_log_queue_goes_out_in_batches_under_the_byte_limit() {
    let mut h = Driver::live(registered());
    h.frame(&StudioFrame::HeartbeatAck);
    for i in 0..5000 {
        h.step(Input::Log(log_entry(&format!(
            "{i:05} {}",
            "x".repeat(1024)
        ))));
    }
    let limit = Limits::default().log_batch_max_bytes;
    let mut shipped = Vec::new();
    for _ in 0..100 {
        let c = h.advance(1.0);
        h.frame(&StudioFrame::HeartbeatAck);
        for cmd in &c {
            if let Command::Send { text, .. } = cmd {
                assert!(text.len() <= limit, "a frame of {} bytes", text.len());
                if let Ok(WorkerFrame::LogBatch { entries }) =
                    wire::decode_worker_frame(text, usize::MAX)
                {
                    shipped.extend(entries.into_iter().map(|e| e.message));
                }
            }
        }
        if h.worker.log_queue_len() == 0 {
            break;
        }
    }
    let ours: Vec<&String> = shipped.iter().filter(|m| m.ends_with('x')).collect();
    assert_eq!(ours.len(), 5000, "every line shipped once");
    assert!(ours[0].starts_with("00000") && ours[4999].starts_with("04999"));
}

#[test]
fn every_log_entry_is_clipped() {
    let mut h = Driver::live(registered());
    let mut e = log_entry(&"é".repeat(10_000));
    e.category = "c".repeat(1000);
    e.job_id = Some("j".repeat(1000));
    h.step(Input::Log(e));
    let logs = h.worker.status().recent_logs;
    let got = logs.last().unwrap();
    assert!(got.message.len() <= 4096 && got.message.ends_with('…'));
    assert!(got.category.len() <= LOG_FIELD_MAX_BYTES);
    assert!(got.job_id.as_ref().unwrap().len() <= LOG_FIELD_MAX_BYTES);
}

/// Studio text quoted in a log line is clipped: a 100 KB `serverTime` or error message
/// does not become a 100 KB log line.
#[test]
fn studio_strings_quoted_in_log_lines_are_clipped() {
    let mut h = Driver::new(registered());
    h.step(Input::Start);
    let conn = h.conn.unwrap();
    h.step(Input::Connected { conn });
    let huge = "t".repeat(100_000);
    let c = h.frame(&StudioFrame::Welcome {
        worker_id: "w-1".into(),
        server_time: huge.clone(),
    });
    let line = messages(&c)
        .into_iter()
        .find(|m| m.contains("server_time"))
        .unwrap();
    assert!(line.len() < 1000, "{} bytes", line.len());
    let c = h.frame(&StudioFrame::Welcome {
        worker_id: "w-1".into(),
        server_time: huge.clone(),
    });
    assert!(messages(&c).iter().all(|m| m.len() < 1000));
    let c = h.frame_text(
        &offer_text("j", json!({"kind":"image","prompt":"p","width":-1}))
            .replace("\"model\":\"synthetic\"", &format!("\"model\":\"{huge}\"")),
    );
    assert!(messages(&c).iter().all(|m| m.len() < 1000), "{c:?}");
    // A decodable offer's fields quoted in its `offer ...` line.
    let c = h.frame_text(
        &offer_text("j2", image_task())
            .replace("\"model\":\"synthetic\"", &format!("\"model\":\"{huge}\"")),
    );
    let line = messages(&c)
        .into_iter()
        .find(|m| m.starts_with("offer j2"))
        .expect("the offer line");
    assert!(line.len() < 1000, "{} bytes", line.len());
    let c = h.frame(&StudioFrame::Error {
        code: wire::WorkerErrorCode::InternalError,
        message: huge,
    });
    assert!(messages(&c).iter().all(|m| m.len() < 1000));
}

/// A `completeJson` the studio would refuse for its size becomes a `fail` (not
/// retryable) that says why, instead of a frame that ends the session.
#[test]
fn a_complete_json_over_the_frame_limit_becomes_a_clear_fail() {
    let mut c = registered();
    c.limits.max_send_frame_bytes = 10_000;
    let mut h = Driver::live(c);
    h.frame(&offer("j-big", llm_task()));
    let c = h.finish(JobOutcome::Json {
        result: json!({"text": "y".repeat(20_000)}),
    });
    let f = frames(&c);
    assert_eq!(f.len(), 1, "{c:?}");
    match &f[0] {
        WorkerFrame::Fail {
            job_id,
            error,
            retryable,
        } => {
            assert_eq!(job_id, "j-big");
            assert!(!retryable);
            assert!(error.contains("over the 10000-byte frame limit"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    // Under the limit it goes out as usual.
    h.frame(&offer("j-small", llm_task()));
    let c = h.finish(JobOutcome::Json {
        result: json!({"text": "y"}),
    });
    assert_eq!(types(&c), ["completeJson"]);
}

#[test]
fn an_engine_error_is_clipped_in_its_fail() {
    let mut h = Driver::live(registered());
    h.frame(&offer("j", llm_task()));
    let c = h.finish(JobOutcome::Failed {
        error: "e".repeat(100_000),
        retryable: true,
    });
    match &frames(&c)[0] {
        WorkerFrame::Fail { error, .. } => assert!(error.len() <= FAIL_ERROR_MAX_BYTES),
        other => panic!("{other:?}"),
    }
}

// ------------------------------------------------------------------------------------------
// The job deadline
// ------------------------------------------------------------------------------------------

#[test]
fn the_job_deadlines_have_their_documented_defaults() {
    let d = Timings::default().job_deadlines;
    for kind in wire::TaskKind::ALL {
        let want = if kind == wire::TaskKind::Video {
            3600
        } else {
            1800
        };
        assert_eq!(d.for_kind(kind), Duration::from_secs(want), "{kind}");
    }
}

/// A hung engine no longer holds the one-job slot forever: past its kind's deadline the
/// job is failed `retryable: true`, the engine abandoned (`CancelJob`), a watchdog line
/// logged; the slot takes the next offer, and the hung run's late result is dropped.
#[test]
fn a_job_past_its_deadline_is_failed_retryable_and_its_engine_abandoned() {
    let mut cfg = registered();
    cfg.timings.job_deadlines.llm = Duration::from_secs(30);
    cfg.timings.job_deadlines.image = Duration::from_secs(90);
    let mut h = Driver::live(cfg);
    h.frame(&offer("hung", llm_task()));
    let hung_run = h.run.unwrap();
    for t in [5.0, 10.0, 15.0, 20.0, 25.0] {
        h.at(t);
        h.frame(&StudioFrame::HeartbeatAck);
    }
    let c = h.at(29.9);
    assert!(types(&c).iter().all(|t| *t != "fail"));
    let c = h.at(30.0);
    assert!(c.contains(&Command::CancelJob {
        job_id: "hung".into()
    }));
    let fails: Vec<WorkerFrame> = frames(&c)
        .into_iter()
        .filter(|f| f.type_name() == "fail")
        .collect();
    assert!(
        matches!(&fails[..], [WorkerFrame::Fail { job_id, retryable: true, error }]
            if job_id == "hung" && error.contains("30s deadline")),
        "{c:?}"
    );
    assert!(messages(&c)
        .iter()
        .any(|m| m.starts_with("watchdog: job hung")));
    assert_eq!(h.worker.phase(), Phase::LiveIdle);
    // The next offer is taken (an image: its own, longer deadline).
    h.frame(&offer("next", image_task()));
    assert_eq!(h.job.as_deref(), Some("next"));
    assert_eq!(h.deadline().map(|d| d >= 120.0), Some(false));
    // The hung engine wakes up: its result is dropped, the new job is untouched.
    let c = h.step(Input::JobFinished {
        job_id: "hung".into(),
        run: hung_run,
        outcome: JobOutcome::Json { result: json!({}) },
    });
    assert!(types(&c).is_empty(), "{c:?}");
    assert_eq!(h.worker.status().current_job_id.as_deref(), Some("next"));
    // A job that finishes in time clears its deadline.
    let c = h.finish(binary_done_outcome());
    assert!(!c.contains(&Command::CancelJob {
        job_id: "next".into()
    }));
}

fn binary_done_outcome() -> JobOutcome {
    JobOutcome::Binary {
        ext: "webp".into(),
        bytes_len: 3,
    }
}

// ------------------------------------------------------------------------------------------
// The durable outbox
// ------------------------------------------------------------------------------------------

#[test]
fn the_outbox_limits_have_their_documented_defaults() {
    let l = Limits::default();
    assert_eq!(l.outbox_max_entries, 32);
    assert_eq!(l.outbox_max_bytes, 256 * 1024 * 1024);
    assert_eq!(l.outbox_max_age, Duration::from_secs(3600));
}

/// A result is kept before it is sent and forgotten when the studio acknowledges it.
#[test]
fn a_json_result_is_kept_until_its_ack() {
    let mut h = Driver::live(registered());
    h.frame(&offer("j-1", llm_task()));
    let c = h.finish(JobOutcome::Json {
        result: json!({"a": 1}),
    });
    let keep = c
        .iter()
        .position(|c| matches!(c, Command::KeepResult(_)))
        .unwrap();
    let send = c
        .iter()
        .position(|c| matches!(c, Command::Send { .. }))
        .unwrap();
    assert!(keep < send, "kept before it leaves");
    let k = kept(&c)[0];
    assert_eq!((k.job_id.as_str(), k.worker_id.as_str()), ("j-1", "w-1"));
    assert!(
        matches!(&k.body, KeptBody::Frame { text } if text.starts_with(r#"{"type":"completeJson""#))
    );
    // An ack of another job forgets nothing.
    let c = h.frame(&StudioFrame::CompleteAck {
        job_id: "other".into(),
    });
    assert!(forgotten(&c).is_empty());
    let c = h.frame(&StudioFrame::CompleteAck {
        job_id: "j-1".into(),
    });
    assert_eq!(forgotten(&c), ["j-1"]);
}

/// A binary result is kept (with its claim, to upload again) before its upload; a 2xx
/// forgets it, a final failure replaces it by its `fail`.
#[test]
fn a_binary_result_is_kept_until_its_upload_is_answered() {
    let mut h = Driver::live(registered());
    h.frame(&offer("j-1", image_task()));
    let c = h.step(binary_done(&h));
    let k = kept(&c);
    assert!(
        matches!(&k[0].body, KeptBody::Upload { claim, ext, bytes_len: 3 } if claim.job_id == "j-1" && ext == "webp")
    );
    let c = h.http_reply(200, "");
    assert_eq!(forgotten(&c), ["j-1"]);

    h.frame(&offer("j-2", image_task()));
    h.step(binary_done(&h));
    let c = h.http_reply(409, "not yours");
    assert!(forgotten(&c).is_empty(), "replaced, not forgotten: {c:?}");
    assert!(
        matches!(&kept(&c)[0].body, KeptBody::Frame { text } if text.contains(r#""type":"fail""#))
    );
}

#[test]
fn results_past_the_resend_limit_or_superseded_are_forgotten() {
    let mut h = Driver::live(registered());
    h.frame(&offer("j-1", llm_task()));
    h.finish(JobOutcome::Json { result: json!({}) });
    // Sent once, then re-sent on the next sessions up to the limit in all, each read by a
    // studio that never acknowledges it.
    let mut all = Vec::new();
    for _ in 1..MAX_RESULT_RESENDS {
        all.extend(studio_reads_all(&mut h));
        h.disconnect();
        all.extend(h.reconnect());
    }
    assert!(forgotten(&all).is_empty());
    studio_reads_all(&mut h);
    h.disconnect();
    let c = h.reconnect();
    assert_eq!(forgotten(&c), ["j-1"], "given up on: forgotten");

    // A kept `fail` is superseded by a re-offer of its job (a kept completion answers it:
    // `a_re_offer_of_a_job_whose_completion_is_kept_is_answered_with_it`).
    h.frame(&offer("j-2", llm_task()));
    h.finish(JobOutcome::Failed {
        error: "engine failure".into(),
        retryable: true,
    });
    let c = h.frame(&offer("j-2", llm_task()));
    assert_eq!(forgotten(&c), ["j-2"], "superseded by a re-offer");
}

/// Bounded in count and bytes: past a bound the oldest entry is forgotten with a log
/// line; a result larger than the byte bound is held in memory only.
#[test]
fn the_outbox_is_bounded() {
    let mut cfg = registered();
    cfg.limits.outbox_max_entries = 2;
    cfg.limits.outbox_max_bytes = 1000;
    let mut h = Driver::live(cfg);
    let mut all = Vec::new();
    for job in ["a", "b", "c"] {
        h.frame(&offer(job, llm_task()));
        all.extend(h.finish(JobOutcome::Json { result: json!({}) }));
    }
    assert_eq!(forgotten(&all), ["a"]);
    assert!(messages(&all).iter().any(|m| m.contains("outbox full")));
    h.frame(&offer("big", image_task()));
    let c = h.step(h.finished(JobOutcome::Binary {
        ext: "webp".into(),
        bytes_len: 5000,
    }));
    assert!(kept(&c).is_empty());
    assert!(messages(&c)
        .iter()
        .any(|m| m.contains("held in memory only")));
    assert!(
        c.iter().any(|c| matches!(c, Command::Http { .. })),
        "still uploaded"
    );
}

fn kept_frame(job: &str, kept_at: u64) -> KeptResult {
    let text = wire::encode(&WorkerFrame::CompleteJson {
        job_id: job.into(),
        result: json!({"restored": true}),
        prompt: Some("x".into()),
    });
    KeptResult {
        job_id: job.into(),
        worker_id: "w-1".into(),
        kept_at: WallMs(kept_at),
        body: KeptBody::Frame { text },
    }
}

fn kept_upload(job: &str) -> KeptResult {
    let claim = match offer(job, image_task()) {
        StudioFrame::Offer { claim } => claim,
        _ => unreachable!(),
    };
    KeptResult {
        job_id: job.into(),
        worker_id: "w-1".into(),
        kept_at: WallMs(WALL0),
        body: KeptBody::Upload {
            claim,
            ext: "png".into(),
            bytes_len: 3,
        },
    }
}

/// After a restart, a kept result frame goes out right after the next welcome, before
/// the first heartbeat, and is forgotten on its ack.
#[test]
fn a_restored_result_frame_is_resent_after_the_welcome() {
    let mut h = Driver::new(registered());
    let c = h.step(Input::Restore {
        results: vec![kept_frame("j-old", WALL0)],
    });
    assert!(messages(&c).iter().any(|m| m.contains("outbox restored")));
    h.step(Input::Start);
    let conn = h.conn.unwrap();
    h.step(Input::Connected { conn });
    let c = h.frame(&welcome());
    assert_eq!(types(&c)[..2], ["completeJson", "heartbeat"]);
    let c = h.frame(&StudioFrame::CompleteAck {
        job_id: "j-old".into(),
    });
    assert_eq!(forgotten(&c), ["j-old"]);
}

/// A machine restarted with `kept` in its outbox, connected and welcomed (the kept frame
/// re-sent on that welcome).
fn restored_and_welcomed(kept: KeptResult) -> Driver {
    let mut h = Driver::new(registered());
    h.step(Input::Restore {
        results: vec![kept],
    });
    h.step(Input::Start);
    let conn = h.conn.unwrap();
    h.step(Input::Connected { conn });
    let c = h.frame(&welcome());
    assert!(frames(&c).iter().any(|f| matches!(
        f,
        WorkerFrame::CompleteJson { .. } | WorkerFrame::Fail { .. }
    )));
    h
}

fn dispatched(cmds: &[Command]) -> bool {
    cmds.iter().any(|c| matches!(c, Command::Dispatch { .. }))
}

/// Regression: the studio requeued a job while its worker was down (its claim expired, or
/// it never saw the `accept`) and offers it again at `welcome`, before it reads the kept
/// result re-sent then; it takes a result frame for a job it offered and has not seen
/// accepted as a stale re-send. The worker dropped its kept completion on that offer and
/// ran the job again: the finished result never reached the studio. It answers the offer
/// with the kept completion instead, and only the acknowledgement of that answer (the
/// second one: the stale copy's comes first) settles it.
#[test]
fn a_re_offer_of_a_job_whose_completion_is_kept_is_answered_with_it() {
    let mut h = restored_and_welcomed(kept_frame("j-old", WALL0));
    let c = h.frame(&offer("j-old", llm_task()));
    assert_eq!(types(&c), ["accept", "completeJson"]);
    assert!(!dispatched(&c), "not run again: {c:?}");
    assert!(forgotten(&c).is_empty());
    let ack = StudioFrame::CompleteAck {
        job_id: "j-old".into(),
    };
    assert!(forgotten(&h.frame(&ack)).is_empty(), "the stale copy's ack");
    assert_eq!(forgotten(&h.frame(&ack)), ["j-old"]);
}

/// The same answer on a session that ends before either acknowledgement: those never
/// come, so the next session's one acknowledgement settles the result.
#[test]
fn a_completion_answering_a_re_offer_is_settled_by_the_next_sessions_ack() {
    let mut h = restored_and_welcomed(kept_frame("j-old", WALL0));
    h.frame(&offer("j-old", llm_task()));
    h.disconnect();
    let c = h.reconnect();
    assert_eq!(types(&c)[0], "completeJson");
    let c = h.frame(&StudioFrame::CompleteAck {
        job_id: "j-old".into(),
    });
    assert_eq!(forgotten(&c), ["j-old"]);
}

/// A kept `fail` is dropped on a re-offer of its job and the offer run afresh: the studio
/// may have settled that failure already (its acknowledgement lost), and the re-offer is
/// the new attempt a failure asks for.
#[test]
fn a_re_offer_of_a_job_whose_fail_is_kept_supersedes_it() {
    let text = wire::encode(&WorkerFrame::Fail {
        job_id: "j-old".into(),
        error: "engine failure".into(),
        retryable: true,
    });
    let mut h = restored_and_welcomed(KeptResult {
        job_id: "j-old".into(),
        worker_id: "w-1".into(),
        kept_at: WallMs(WALL0),
        body: KeptBody::Frame { text },
    });
    let c = h.frame(&offer("j-old", llm_task()));
    assert_eq!(forgotten(&c), ["j-old"]);
    assert_eq!(types(&c), ["accept"]);
    assert!(dispatched(&c), "run again: {c:?}");
}

/// A kept binary result is uploaded again at start, through the slot (the heartbeat names
/// it, offers meanwhile are decided as during any upload), never run on the engine again.
#[test]
fn a_restored_binary_result_is_uploaded_again_without_running_the_engine() {
    let mut h = Driver::new(registered());
    h.step(Input::Restore {
        results: vec![kept_upload("j-img")],
    });
    let c = h.step(Input::Start);
    assert!(c.iter().any(|c| matches!(c, Command::Connect { .. })));
    assert!(
        matches!(&h.http, Some((_, HttpRequest::Upload { job_id, prompt, ext, .. }))
            if job_id == "j-img" && prompt == "a fox" && ext == "png"),
        "{c:?}"
    );
    assert!(!c.iter().any(|c| matches!(c, Command::Dispatch { .. })));
    let conn = h.conn.unwrap();
    h.step(Input::Connected { conn });
    let c = h.frame(&welcome());
    match &frames(&c)[0] {
        WorkerFrame::Heartbeat { current_job_id, .. } => {
            assert_eq!(current_job_id.as_deref(), Some("j-img"));
        }
        other => panic!("{other:?}"),
    }
    // The studio re-offers the job it still thinks we run: accepted, not re-run.
    let c = h.frame(&offer("j-img", image_task()));
    assert_eq!(types(&c), ["accept"]);
    assert!(!c.iter().any(|c| matches!(c, Command::Dispatch { .. })));
    let c = h.http_reply(200, "");
    assert!(c.contains(&Command::DiscardResult {
        job_id: "j-img".into()
    }));
    assert_eq!(forgotten(&c), ["j-img"]);
    assert_eq!(h.worker.phase(), Phase::LiveIdle);
}

/// What a restart drops, each with a log line: results past the age limit, results of
/// another worker id, older copies, and the oldest past the bounds.
#[test]
fn a_restore_drops_old_foreign_and_excess_results() {
    let mut cfg = registered();
    cfg.limits.outbox_max_entries = 2;
    let mut h = Driver::new(cfg);
    let hour = 3_600_000;
    let mut foreign = kept_frame("foreign", WALL0);
    foreign.worker_id = "w-other".into();
    let c = h.step(Input::Restore {
        results: vec![
            kept_frame("stale", WALL0 - hour - 1),
            foreign,
            kept_frame("dup", WALL0 - 10),
            kept_frame("dup", WALL0 - 5),
            kept_frame("oldest-fit", WALL0 - 20),
            kept_frame("fresh", WALL0),
        ],
    });
    let mut dropped = forgotten(&c);
    dropped.sort_unstable();
    assert_eq!(dropped, ["dup", "foreign", "oldest-fit", "stale"]);
    let m = messages(&c);
    assert!(m
        .iter()
        .any(|m| m.contains("stale dropped: kept 3600 s ago")));
    assert!(m
        .iter()
        .any(|m| m.contains("foreign dropped: kept for worker w-other")));
    assert!(m
        .iter()
        .any(|m| m.contains("oldest-fit dropped: past the outbox's bounds")));
    h.step(Input::Start);
    let conn = h.conn.unwrap();
    h.step(Input::Connected { conn });
    let c = h.frame(&welcome());
    let resent: Vec<String> = frames(&c)
        .into_iter()
        .filter_map(|f| match f {
            WorkerFrame::CompleteJson { job_id, .. } => Some(job_id),
            _ => None,
        })
        .collect();
    assert_eq!(resent, ["dup", "fresh"]);
}

#[test]
fn restore_is_refused_after_start() {
    let mut h = Driver::live(registered());
    let before = h.worker.status();
    let err = h
        .try_step(Input::Restore {
            results: vec![kept_frame("late", WALL0)],
        })
        .unwrap_err();
    assert_eq!(err, UsageError::RestoreAfterStart);
    assert_eq!(h.worker.status(), before);
}

/// An unregistered worker has nobody to deliver kept results to: they are dropped.
#[test]
fn a_restore_without_credentials_drops_everything() {
    let mut h = Driver::new(WorkerConfig::for_tests("http://127.0.0.1:9"));
    let c = h.step(Input::Restore {
        results: vec![kept_frame("j", WALL0), kept_upload("k")],
    });
    assert_eq!(forgotten(&c).len(), 2);
    let c = h.step(Input::Start);
    assert!(!c.iter().any(|c| matches!(c, Command::Http { request, .. }
        if matches!(**request, HttpRequest::Upload { .. }))));
}
