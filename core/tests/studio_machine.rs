//! Tests of the reference studio machine (`studio_core::studio`). Time is passed in; nothing
//! sleeps. Every drain is followed by `check_invariants`.

use std::collections::BTreeMap;
use std::time::Duration;

use quickcheck::{QuickCheck, TestResult};
use rstest::rstest;
use serde_json::json;
use studio_core::studio::{
    ConnId, HttpError, JobResult, JobSpec, JobState, RequeueReason, Studio, StudioCommand,
    StudioConfig, StudioEvent, StudioInput, Upload, UsageError,
};
use studio_core::wire::{
    self, close_code, sha256_hex, AutoRegisterRequest, ChatMessage, ImageTask, LlmTask, LogEntry,
    ModelEngine, RegisterStatus, RejectCode, StudioFrame, Task, TaskKind, UserPresence,
    WorkerCapabilities, WorkerErrorCode, WorkerFrame,
};
use studio_core::{Mono, Now, WallMs};

// ------------------------------------------------------------------------------------------
// Harness
// ------------------------------------------------------------------------------------------

struct Harness {
    s: Studio,
    t: Mono,
    /// Wall clock at `Mono::ZERO`, in milliseconds (the Unix epoch unless a test sets it).
    wall0: u64,
}

/// The time `t` with the wall clock reading `wall0` at `Mono::ZERO`.
fn now_at(wall0: u64, t: Mono) -> Now {
    Now::new(t, WallMs(wall0 + t.as_micros() / 1000))
}

type Cmds = Vec<StudioCommand>;

impl Harness {
    fn new() -> Harness {
        Harness::with(StudioConfig::default())
    }

    fn with(cfg: StudioConfig) -> Harness {
        Harness {
            s: Studio::new(cfg),
            t: Mono::ZERO,
            wall0: 0,
        }
    }

    fn at(&mut self, secs: u64) {
        self.t = Mono::from_secs(secs);
    }

    /// The time of the next call: the wall clock reads `wall0` at `Mono::ZERO`.
    fn now(&self) -> Now {
        now_at(self.wall0, self.t)
    }

    fn drain(&mut self) -> Cmds {
        let mut v = Vec::new();
        loop {
            let c = self.s.poll();
            let last = matches!(c, StudioCommand::Wait { .. });
            v.push(c);
            if last {
                break;
            }
        }
        let last = v.last().cloned();
        assert_eq!(Some(self.s.poll()), last, "after the Wait, poll repeats it");
        if let Err(e) = self.s.check_invariants() {
            panic!("invariant broken: {e}\nlast commands: {v:?}");
        }
        v
    }

    fn input(&mut self, input: StudioInput) -> Cmds {
        self.s.handle(self.now(), input).expect("time goes forward");
        self.drain()
    }

    fn tick(&mut self) -> Cmds {
        self.input(StudioInput::Tick)
    }

    fn connect(&mut self, conn: u64, worker: &str) -> Cmds {
        self.input(StudioInput::Connected {
            conn: ConnId(conn),
            worker_id: worker.into(),
        })
    }

    fn text(&mut self, conn: u64, text: &str) -> Cmds {
        self.input(StudioInput::Frame {
            conn: ConnId(conn),
            text: text.into(),
        })
    }

    fn frame(&mut self, conn: u64, f: &WorkerFrame) -> Cmds {
        let text = wire::encode(f);
        self.text(conn, &text)
    }

    fn disconnect(&mut self, conn: u64) -> Cmds {
        self.input(StudioInput::Disconnected { conn: ConnId(conn) })
    }

    /// Provisions `worker` with token `tok-<worker>`, connects `conn` and says hello.
    fn online(&mut self, conn: u64, worker: &str, caps: WorkerCapabilities) -> Cmds {
        self.s.add_worker(worker, &token(worker));
        self.drain();
        self.hello(conn, worker, caps)
    }

    fn hello(&mut self, conn: u64, worker: &str, caps: WorkerCapabilities) -> Cmds {
        self.connect(conn, worker);
        self.frame(
            conn,
            &WorkerFrame::Hello {
                auth_token: token(worker).into(),
                capabilities: caps,
            },
        )
    }

    fn heartbeat(&mut self, conn: u64, caps: WorkerCapabilities, job: Option<&str>) -> Cmds {
        self.frame(
            conn,
            &WorkerFrame::Heartbeat {
                capabilities: caps,
                current_job_id: job.map(str::to_string),
            },
        )
    }

    fn accept(&mut self, conn: u64, job: &str) -> Cmds {
        self.frame(conn, &WorkerFrame::Accept { job_id: job.into() })
    }

    fn complete_json(&mut self, conn: u64, job: &str) -> Cmds {
        self.frame(
            conn,
            &WorkerFrame::CompleteJson {
                job_id: job.into(),
                result: json!({"text": "ok"}),
                prompt: Some("p".into()),
            },
        )
    }

    fn fail(&mut self, conn: u64, job: &str, retryable: bool) -> Cmds {
        self.frame(
            conn,
            &WorkerFrame::Fail {
                job_id: job.into(),
                error: "boom".into(),
                retryable,
            },
        )
    }

    fn reject(&mut self, conn: u64, job: &str, reason: &str, code: Option<RejectCode>) -> Cmds {
        self.frame(
            conn,
            &WorkerFrame::Reject {
                job_id: job.into(),
                reason: reason.into(),
                code,
            },
        )
    }

    fn submit(&mut self, spec: JobSpec) -> (String, Cmds) {
        let id = self.s.submit(self.now(), spec).expect("submit");
        (id, self.drain())
    }

    fn state(&self, job: &str) -> JobState {
        self.s.job(job).expect("job exists").state.clone()
    }

    fn attempts(&self, job: &str) -> u32 {
        self.s.job(job).expect("job exists").attempts
    }
}

/// An upload of `bytes_len` bytes of `job_id` by `worker_id` with `bearer`.
fn up<'a>(
    worker_id: &'a str,
    bearer: &'a str,
    job_id: &'a str,
    prompt: &'a str,
    ext: &'a str,
    bytes_len: u64,
) -> Upload<'a> {
    Upload {
        worker_id,
        bearer,
        job_id,
        prompt,
        ext,
        bytes_len,
    }
}

fn token(worker: &str) -> String {
    format!("tok-{worker}")
}

fn caps() -> WorkerCapabilities {
    let mut c = WorkerCapabilities {
        machine_name: "rig".into(),
        username: "u".into(),
        agent_version: "0.4.15".into(),
        engine: "synthetic".into(),
        vram_total_gb: 16.0,
        vram_threshold_gb: 16.0,
        auto_enabled: true,
        auto_start: true,
        auto_update: Some(true),
        start_minimised: Some(true),
        only_when_idle: Some(false),
        supported_models: vec![],
        task_kinds: vec![],
        supported_models_per_kind: BTreeMap::new(),
        user_presence: None,
    };
    for k in TaskKind::ALL {
        c.supported_models_per_kind
            .insert(k, vec!["synthetic".into()]);
    }
    c.derive_model_lists();
    c
}

fn caps_kinds(kinds: &[TaskKind]) -> WorkerCapabilities {
    let mut c = caps();
    c.supported_models_per_kind.clear();
    for k in kinds {
        c.supported_models_per_kind
            .insert(*k, vec!["synthetic".into()]);
    }
    c.derive_model_lists();
    c
}

fn caps_vram(threshold: f32) -> WorkerCapabilities {
    WorkerCapabilities {
        vram_threshold_gb: threshold,
        ..caps()
    }
}

fn caps_disabled() -> WorkerCapabilities {
    WorkerCapabilities {
        auto_enabled: false,
        ..caps()
    }
}

fn image_job(vram: f32) -> JobSpec {
    JobSpec {
        vram_gb_estimate: vram,
        ..JobSpec::synthetic(Task::Image(ImageTask {
            prompt: "an aurora fox".into(),
            ..ImageTask::default()
        }))
    }
}

fn llm_job() -> JobSpec {
    JobSpec::synthetic(Task::Llm(LlmTask {
        messages: vec![ChatMessage {
            role: "user".into(),
            content: "hi".into(),
        }],
        ..LlmTask::default()
    }))
}

/// Frames sent to `conn`, decoded.
fn sent(cmds: &Cmds, conn: u64) -> Vec<StudioFrame> {
    cmds.iter()
        .filter_map(|c| match c {
            StudioCommand::Send { conn: to, text } if *to == ConnId(conn) => {
                Some(wire::decode_studio_frame(text).expect("studio frames decode"))
            }
            _ => None,
        })
        .collect()
}

fn offers(cmds: &Cmds, conn: u64) -> Vec<String> {
    sent(cmds, conn)
        .into_iter()
        .filter_map(|f| match f {
            StudioFrame::Offer { claim } => Some(claim.job_id),
            _ => None,
        })
        .collect()
}

fn all_offers(cmds: &Cmds) -> Vec<(u64, String)> {
    cmds.iter()
        .filter_map(|c| match c {
            StudioCommand::Send { conn, text } => match wire::decode_studio_frame(text) {
                Ok(StudioFrame::Offer { claim }) => Some((conn.0, claim.job_id)),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn closes(cmds: &Cmds) -> Vec<(u64, u16)> {
    cmds.iter()
        .filter_map(|c| match c {
            StudioCommand::Close { conn, code, .. } => Some((conn.0, *code)),
            _ => None,
        })
        .collect()
}

fn events(cmds: &Cmds) -> Vec<StudioEvent> {
    cmds.iter()
        .filter_map(|c| match c {
            StudioCommand::Event(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

fn wait(cmds: &Cmds) -> Option<Mono> {
    match cmds.last() {
        Some(StudioCommand::Wait { until }) => *until,
        other => panic!("no wait: {other:?}"),
    }
}

fn error_frame(cmds: &Cmds, conn: u64) -> Option<(WorkerErrorCode, String)> {
    sent(cmds, conn).into_iter().find_map(|f| match f {
        StudioFrame::Error { code, message } => Some((code, message)),
        _ => None,
    })
}

fn running_on(w: &str) -> JobState {
    JobState::Running {
        worker_id: w.into(),
    }
}

fn offered_to(w: &str) -> JobState {
    JobState::Offered {
        worker_id: w.into(),
    }
}

// ------------------------------------------------------------------------------------------
// Hello / welcome / auth
// ------------------------------------------------------------------------------------------

#[test]
fn hello_with_the_right_token_is_welcomed() {
    let mut h = Harness::new();
    h.at(5);
    let out = h.online(1, "w-1", caps());
    let frames = sent(&out, 1);
    assert_eq!(
        frames,
        vec![StudioFrame::Welcome {
            worker_id: "w-1".into(),
            server_time: "1970-01-01T00:00:05.000Z".into()
        }]
    );
    assert!(closes(&out).is_empty());
    let view = h.s.worker("w-1").unwrap();
    assert!(view.connected && view.idle && view.has_token);
    assert_eq!(view.last_heartbeat, Some(Mono::from_secs(5)));
}

#[test]
fn server_time_is_the_wall_clock_passed_in() {
    let mut h = Harness::new();
    h.wall0 = 1_779_710_400_000;
    h.at(2);
    let out = h.online(1, "w-1", caps());
    assert!(matches!(&sent(&out, 1)[0],
        StudioFrame::Welcome { server_time, .. } if server_time == "2026-05-25T12:00:02.000Z"));
}

#[test]
fn hello_with_a_bad_token_gets_auth_failed_and_4001() {
    let mut h = Harness::new();
    h.s.add_worker("w-1", "right");
    h.connect(1, "w-1");
    let out = h.frame(
        1,
        &WorkerFrame::Hello {
            auth_token: "wrong".into(),
            capabilities: caps(),
        },
    );
    assert_eq!(error_frame(&out, 1).unwrap().0, WorkerErrorCode::AuthFailed);
    assert_eq!(closes(&out), vec![(1, close_code::AUTH_FAILED)]);
    assert!(!h.s.worker("w-1").unwrap().connected);
    // The socket is forgotten: the driver's later Disconnected is a no-op.
    let out = h.disconnect(1);
    assert!(events(&out).is_empty());
}

#[test]
fn hello_for_an_unknown_worker_gets_auth_failed() {
    let mut h = Harness::new();
    h.connect(1, "ghost");
    let out = h.frame(
        1,
        &WorkerFrame::Hello {
            auth_token: "x".into(),
            capabilities: caps(),
        },
    );
    assert_eq!(closes(&out), vec![(1, 4001)]);
}

#[test]
fn heartbeat_before_hello_is_a_protocol_violation() {
    let mut h = Harness::new();
    h.s.add_worker("w-1", "tok-w-1");
    h.connect(1, "w-1");
    let out = h.heartbeat(1, caps(), None);
    assert_eq!(
        error_frame(&out, 1),
        Some((
            WorkerErrorCode::ProtocolViolation,
            "session not authenticated".into()
        ))
    );
    assert_eq!(closes(&out), vec![(1, close_code::PROTOCOL_VIOLATION)]);
}

#[rstest]
#[case::not_json("not json")]
#[case::unknown_type(r#"{"type":"ping"}"#)]
#[case::missing_field(r#"{"type":"accept"}"#)]
fn undecodable_frames_are_protocol_violations(#[case] text: &str) {
    let mut h = Harness::new();
    h.online(1, "w-1", caps());
    let out = h.text(1, text);
    assert_eq!(
        error_frame(&out, 1).unwrap().0,
        WorkerErrorCode::ProtocolViolation
    );
    assert_eq!(closes(&out), vec![(1, 4002)]);
    assert!(!h.s.worker("w-1").unwrap().connected);
}

#[test]
fn oversized_frames_are_protocol_violations() {
    let mut h = Harness::with(StudioConfig {
        max_frame_bytes: 1_000,
        ..StudioConfig::default()
    });
    h.online(1, "w-1", caps());
    let big = format!(r#"{{"type":"readyForMore","pad":"{}"}}"#, "x".repeat(1_000));
    let out = h.text(1, &big);
    assert_eq!(closes(&out), vec![(1, 4002)]);
}

#[test]
fn a_second_hello_is_a_protocol_violation() {
    let mut h = Harness::new();
    h.online(1, "w-1", caps());
    let out = h.frame(
        1,
        &WorkerFrame::Hello {
            auth_token: token("w-1").into(),
            capabilities: caps(),
        },
    );
    assert_eq!(closes(&out), vec![(1, 4002)]);
}

#[test]
fn duplicate_worker_replaces_the_old_session() {
    let mut h = Harness::new();
    h.online(1, "w-1", caps());
    let (job, out) = h.submit(llm_job());
    assert_eq!(offers(&out, 1), vec![job.clone()]);
    let out = h.hello(2, "w-1", caps());
    assert_eq!(
        error_frame(&out, 1).unwrap().0,
        WorkerErrorCode::DuplicateWorker
    );
    assert_eq!(closes(&out), vec![(1, close_code::DUPLICATE_WORKER)]);
    assert!(matches!(sent(&out, 2)[0], StudioFrame::Welcome { .. }));
    // The offer died with the old socket and goes to the new session, no attempt spent.
    assert_eq!(offers(&out, 2), vec![job.clone()]);
    assert_eq!(h.attempts(&job), 0);
    assert_eq!(h.s.worker("w-1").unwrap().conn, Some(ConnId(2)));
    assert!(events(&out).contains(&StudioEvent::DuplicateSession {
        worker_id: "w-1".into(),
        old_conn: ConnId(1),
        new_conn: ConnId(2)
    }));
}

#[test]
fn a_late_hello_on_an_older_connection_does_not_displace_the_live_session() {
    // Connection 1 opens first and stalls; the worker gives up on it, opens 2 and is
    // welcomed there. Then 1's hello finally arrives: the newer connection keeps the
    // session and the stale one is closed.
    let mut h = Harness::new();
    h.s.add_worker("w-1", &token("w-1"));
    h.drain();
    h.connect(1, "w-1");
    let out = h.hello(2, "w-1", caps());
    assert!(matches!(sent(&out, 2)[0], StudioFrame::Welcome { .. }));
    let out = h.frame(
        1,
        &WorkerFrame::Hello {
            auth_token: token("w-1").into(),
            capabilities: caps(),
        },
    );
    assert_eq!(
        error_frame(&out, 1).unwrap().0,
        WorkerErrorCode::DuplicateWorker
    );
    assert_eq!(closes(&out), vec![(1, close_code::DUPLICATE_WORKER)]);
    assert!(sent(&out, 2).is_empty(), "the live session is left alone");
    assert_eq!(h.s.worker("w-1").unwrap().conn, Some(ConnId(2)));
    assert!(events(&out).contains(&StudioEvent::DuplicateSession {
        worker_id: "w-1".into(),
        old_conn: ConnId(1),
        new_conn: ConnId(2)
    }));
    // The live session still works.
    let (job, out) = h.submit(llm_job());
    assert_eq!(offers(&out, 2), vec![job]);
}

#[test]
fn a_resent_result_for_a_job_reoffered_to_the_same_worker_is_acked_not_taken() {
    // The worker failed the job (retryable); the studio requeued it and offers it to the
    // same worker again. The worker's re-sent copy of the old failure arrives before its
    // answer to the new offer: it must not count as this offer's outcome.
    let mut h = Harness::new();
    h.online(1, "w", caps());
    let (j, _) = h.submit(llm_job());
    h.accept(1, &j);
    let out = h.fail(1, &j, true);
    assert_eq!(sent(&out, 1)[0], StudioFrame::FailAck { job_id: j.clone() });
    assert_eq!(offers(&out, 1), vec![j.clone()], "requeued and re-offered");
    assert_eq!(h.attempts(&j), 1);
    let out = h.fail(1, &j, true);
    assert_eq!(
        sent(&out, 1),
        vec![StudioFrame::FailAck { job_id: j.clone() }]
    );
    assert!(closes(&out).is_empty());
    assert_eq!(h.attempts(&j), 1, "no attempt spent on a stale copy");
    assert!(matches!(h.state(&j), JobState::Offered { .. }));
    // Same for a stale completeJson: acked, the offer stands.
    let out = h.complete_json(1, &j);
    assert_eq!(
        sent(&out, 1),
        vec![StudioFrame::CompleteAck { job_id: j.clone() }]
    );
    assert!(matches!(h.state(&j), JobState::Offered { .. }));
    // The worker accepts the new offer and completes it: done once.
    h.accept(1, &j);
    h.complete_json(1, &j);
    assert_eq!(h.s.job(&j).unwrap().completions, 1);
    assert!(matches!(h.state(&j), JobState::Done { .. }));
}

#[test]
fn frames_for_unknown_connections_are_ignored() {
    let mut h = Harness::new();
    let out = h.heartbeat(99, caps(), None);
    assert!(matches!(
        events(&out)[..],
        [StudioEvent::Ignored {
            conn: Some(ConnId(99)),
            ..
        }]
    ));
    assert!(closes(&out).is_empty());
}

#[test]
fn heartbeats_are_acked_and_capabilities_stored() {
    let mut h = Harness::new();
    h.online(1, "w-1", caps());
    h.at(5);
    let out = h.heartbeat(1, caps_vram(3.0), None);
    assert_eq!(sent(&out, 1), vec![StudioFrame::HeartbeatAck]);
    let v = h.s.worker("w-1").unwrap();
    assert_eq!(v.capabilities.unwrap().vram_threshold_gb, 3.0);
    assert_eq!(v.last_heartbeat, Some(Mono::from_secs(5)));
}

// ------------------------------------------------------------------------------------------
// Offer selection
// ------------------------------------------------------------------------------------------

#[test]
fn offers_go_to_a_worker_that_serves_the_kind_vram_and_is_enabled() {
    let mut h = Harness::new();
    h.online(1, "llm-only", caps_kinds(&[TaskKind::Llm]));
    h.online(2, "small", caps_vram(4.0));
    h.online(3, "paused", caps_disabled());
    h.online(4, "big", caps_vram(16.0));
    let (j1, out) = h.submit(image_job(8.0));
    assert_eq!(all_offers(&out), vec![(4, j1.clone())]);
    // The only fitting worker is busy: the next job waits.
    let (j2, out) = h.submit(image_job(8.0));
    assert!(all_offers(&out).is_empty());
    assert_eq!(h.state(&j2), JobState::Queued);
    // The paused one resumes: it gets the waiting job right after the heartbeat.
    let out = h.heartbeat(3, caps(), None);
    assert_eq!(all_offers(&out), vec![(3, j2)]);
    // An llm job goes to the earliest-connected idle llm-capable worker.
    let (j3, out) = h.submit(llm_job());
    assert_eq!(all_offers(&out), vec![(1, j3)]);
}

/// Capabilities advertising `models` for `kind` only (the per-kind lists of a current
/// worker).
fn caps_models(kind: TaskKind, models: &[&str]) -> WorkerCapabilities {
    let mut c = caps();
    c.supported_models_per_kind = BTreeMap::from([(
        kind,
        models.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
    )]);
    c.derive_model_lists();
    c
}

/// A job for `model`, run by `engine` (`modelSource.engine`).
fn model_job(task: Task, model: &str, engine: ModelEngine) -> JobSpec {
    let mut spec = JobSpec::synthetic(task);
    spec.model = model.into();
    spec.model_source.engine = engine;
    spec
}

fn image_task() -> Task {
    image_job(0.0).task
}

#[test]
fn a_job_goes_to_a_worker_advertising_its_model_or_its_engines_wildcard() {
    let mut h = Harness::new();
    h.online(1, "exact", caps_models(TaskKind::Image, &["z-image-turbo"]));
    h.online(2, "llama-any", caps_models(TaskKind::Llm, &["llama-cpp:*"]));
    h.online(
        3,
        "sd-any",
        caps_models(TaskKind::Image, &["sd-cpp:*", "flux-schnell"]),
    );
    h.online(4, "bare-star", caps_models(TaskKind::Image, &["*", ":*"]));

    // The exact id wins the earliest-connected match, whatever the engine.
    let (j1, out) = h.submit(model_job(image_task(), "z-image-turbo", ModelEngine::SdCpp));
    assert_eq!(all_offers(&out), vec![(1, j1)]);
    // Any sd-cpp model fits the sd-cpp wildcard.
    let (j2, out) = h.submit(model_job(image_task(), "qwen-image", ModelEngine::SdCpp));
    assert_eq!(all_offers(&out), vec![(3, j2)]);
    // A model nobody advertises, of an engine nobody has a wildcard for, waits: neither the
    // wildcard of another engine, nor the bare `*`, nor a kind-only match takes it.
    let (j3, out) = h.submit(model_job(image_task(), "lama-inpaint", ModelEngine::Onnx));
    assert!(all_offers(&out).is_empty(), "{out:?}");
    assert_eq!(h.state(&j3), JobState::Queued);
    // The llama wildcard is for llm jobs only.
    let (j4, out) = h.submit(model_job(llm_job().task, "qwen3-4b", ModelEngine::LlamaCpp));
    assert_eq!(all_offers(&out), vec![(2, j4)]);
    // A worker that starts advertising the onnx wildcard takes the waiting job.
    let out = h.heartbeat(4, caps_models(TaskKind::Image, &["onnx:*"]), None);
    assert_eq!(all_offers(&out), vec![(4, j3)]);
}

#[test]
fn a_freed_worker_takes_the_oldest_job_it_advertises_a_match_for() {
    let mut h = Harness::new();
    let (other, _) = h.submit(model_job(
        image_task(),
        "sdxl",
        ModelEngine::Other("comfy".into()),
    ));
    let (mine, _) = h.submit(model_job(image_task(), "flux-dev", ModelEngine::SdCpp));
    let (exact, _) = h.submit(model_job(image_task(), "sdxl", ModelEngine::SdCpp));
    let out = h.online(1, "w", caps_models(TaskKind::Image, &["sd-cpp:*"]));
    assert_eq!(
        offers(&out, 1),
        vec![mine.clone()],
        "the older comfy job is skipped"
    );
    h.accept(1, &mine);
    let out = h.complete_json(1, &mine);
    assert_eq!(offers(&out, 1), vec![exact]);
    assert_eq!(h.state(&other), JobState::Queued);
    // A worker that advertises the model id itself takes it, whatever its engine.
    let out = h.online(2, "v", caps_models(TaskKind::Image, &["sdxl"]));
    assert_eq!(offers(&out, 2), vec![other]);
}

#[test]
fn an_older_worker_without_per_kind_lists_is_matched_on_its_flat_list() {
    let mut h = Harness::new();
    let mut legacy = caps();
    legacy.supported_models_per_kind.clear();
    legacy.task_kinds.clear();
    legacy.supported_models = vec!["sd-cpp:*".into()];
    h.online(1, "old", legacy.clone());
    let (j, out) = h.submit(model_job(llm_job().task, "any", ModelEngine::SdCpp));
    assert_eq!(
        all_offers(&out),
        vec![(1, j)],
        "every kind, by the flat list"
    );
    legacy.supported_models.clear();
    h.online(2, "older", legacy);
    let (j2, out) = h.submit(llm_job());
    assert!(
        all_offers(&out).is_empty(),
        "advertising nothing fits nothing"
    );
    assert_eq!(h.state(&j2), JobState::Queued);
}

#[test]
fn earliest_connected_idle_worker_wins() {
    let mut h = Harness::new();
    h.online(7, "b", caps());
    h.online(3, "a", caps());
    let (j, out) = h.submit(llm_job());
    assert_eq!(all_offers(&out), vec![(7, j)]);
}

#[test]
fn only_when_idle_needs_an_idle_presence() {
    let mut h = Harness::new();
    let mut c = caps();
    c.only_when_idle = Some(true);
    h.online(1, "w", c.clone());
    let (j, out) = h.submit(llm_job());
    assert!(
        all_offers(&out).is_empty(),
        "presence unknown counts as active"
    );
    c.user_presence = Some(UserPresence::Active);
    assert!(all_offers(&h.heartbeat(1, c.clone(), None)).is_empty());
    c.user_presence = Some(UserPresence::Idle);
    assert_eq!(all_offers(&h.heartbeat(1, c, None)), vec![(1, j)]);
}

#[test]
fn jobs_are_offered_in_fifo_order_when_a_worker_frees_up() {
    let mut h = Harness::new();
    let (j1, _) = h.submit(llm_job());
    let (j2, _) = h.submit(llm_job());
    let out = h.online(1, "w", caps());
    // Offer comes right after the welcome.
    let frames = sent(&out, 1);
    assert!(matches!(frames[0], StudioFrame::Welcome { .. }));
    assert_eq!(offers(&out, 1), vec![j1.clone()]);
    h.accept(1, &j1);
    let out = h.complete_json(1, &j1);
    assert_eq!(
        sent(&out, 1),
        vec![
            StudioFrame::CompleteAck { job_id: j1 },
            sent(&out, 1)[1].clone()
        ]
    );
    assert_eq!(offers(&out, 1), vec![j2]);
}

// ------------------------------------------------------------------------------------------
// Accept / complete / fail / reject
// ------------------------------------------------------------------------------------------

#[test]
fn accept_then_complete_json_is_done_once_and_acked() {
    let mut h = Harness::new();
    h.online(1, "w", caps());
    let (j, out) = h.submit(llm_job());
    let claim = sent(&out, 1)
        .into_iter()
        .find_map(|f| match f {
            StudioFrame::Offer { claim } => Some(claim),
            _ => None,
        })
        .unwrap();
    assert_eq!(claim.job_id, j);
    assert_eq!(claim.task.kind(), TaskKind::Llm);
    assert_eq!(h.state(&j), offered_to("w"));
    h.accept(1, &j);
    assert_eq!(h.state(&j), running_on("w"));
    assert_eq!(h.attempts(&j), 1);
    let out = h.complete_json(1, &j);
    assert_eq!(
        sent(&out, 1),
        vec![StudioFrame::CompleteAck { job_id: j.clone() }]
    );
    let rec = h.s.job(&j).unwrap();
    assert_eq!(rec.completions, 1);
    assert_eq!(
        rec.state,
        JobState::Done {
            worker_id: "w".into(),
            result: JobResult::Json {
                result: json!({"text":"ok"}),
                prompt: Some("p".into())
            }
        }
    );
    assert_eq!(h.s.worker("w").unwrap().current_job, None);
    // A second completion is stale: acked (so the worker stops re-sending it), state
    // untouched, session kept.
    let out = h.complete_json(1, &j);
    assert_eq!(
        sent(&out, 1),
        vec![StudioFrame::CompleteAck { job_id: j.clone() }]
    );
    assert!(closes(&out).is_empty());
    assert_eq!(h.s.job(&j).unwrap().completions, 1);
    assert!(matches!(events(&out)[..], [StudioEvent::StaleFrame { .. }]));
}

#[test]
fn retryable_failures_requeue_until_attempts_are_spent() {
    let mut h = Harness::new(); // max_attempts 3
    h.online(1, "w", caps());
    let (j, _) = h.submit(llm_job());
    for attempt in 1..=3 {
        h.accept(1, &j);
        assert_eq!(h.attempts(&j), attempt);
        let out = h.fail(1, &j, true);
        assert_eq!(sent(&out, 1)[0], StudioFrame::FailAck { job_id: j.clone() });
        if attempt < 3 {
            // Requeued and offered straight back (the only worker is free again).
            assert_eq!(offers(&out, 1), vec![j.clone()]);
        } else {
            assert!(offers(&out, 1).is_empty());
        }
    }
    let rec = h.s.job(&j).unwrap();
    assert!(matches!(&rec.state, JobState::Failed { error } if error.contains("boom")));
    assert_eq!(rec.completions, 0);
    assert_eq!(rec.last_error.as_deref(), Some("boom"));
}

#[test]
fn non_retryable_failure_fails_at_once() {
    let mut h = Harness::new();
    h.online(1, "w", caps());
    let (j, _) = h.submit(llm_job());
    h.accept(1, &j);
    h.fail(1, &j, false);
    assert_eq!(
        h.state(&j),
        JobState::Failed {
            error: "boom".into()
        }
    );
    assert_eq!(h.attempts(&j), 1);
}

#[rstest]
#[case::busy("worker already has an in-flight job", Some(RejectCode::Busy))]
#[case::paused("worker paused by operator", Some(RejectCode::Paused))]
#[case::legacy_paused("worker paused by operator", None)]
#[case::legacy_idle("only when idle: the person is using this computer", None)]
#[case::legacy_busy("worker already has an in-flight job", None)]
fn transient_rejects_requeue_without_attempt_or_immediate_reoffer(
    #[case] reason: &str,
    #[case] code: Option<RejectCode>,
) {
    let mut h = Harness::new();
    h.online(1, "w", caps());
    let (j, _) = h.submit(llm_job());
    let out = h.reject(1, &j, reason, code);
    assert!(offers(&out, 1).is_empty(), "no spin");
    assert_eq!(h.state(&j), JobState::Queued);
    assert_eq!(h.attempts(&j), 0);
    assert!(events(&out).contains(&StudioEvent::JobRequeued {
        job_id: j.clone(),
        reason: RequeueReason::TransientReject,
        attempts: 0
    }));
    // Another tick does not re-offer either; the next heartbeat does.
    h.at(1);
    assert!(offers(&h.tick(), 1).is_empty());
    let out = h.heartbeat(1, caps(), None);
    assert_eq!(offers(&out, 1), vec![j]);
}

#[test]
fn a_transient_reject_lets_another_worker_take_the_job() {
    let mut h = Harness::new();
    h.online(1, "a", caps());
    let (j, _) = h.submit(llm_job());
    h.online(2, "b", caps());
    let out = h.reject(1, &j, "busy", Some(RejectCode::Busy));
    assert_eq!(all_offers(&out), vec![(2, j)]);
}

#[test]
fn other_rejects_spend_an_attempt_and_end_failed() {
    let mut h = Harness::new();
    h.online(1, "w", caps());
    let (j, _) = h.submit(llm_job());
    for n in 1..=3 {
        let out = h.reject(1, &j, "cannot serve this model", None);
        assert!(offers(&out, 1).is_empty());
        assert_eq!(h.attempts(&j), n);
        if n < 3 {
            let out = h.heartbeat(1, caps(), None);
            assert_eq!(offers(&out, 1), vec![j.clone()]);
        }
    }
    assert!(matches!(h.state(&j), JobState::Failed { error } if error.contains("cannot serve")));
}

#[test]
fn frames_about_unknown_or_foreign_jobs_are_violations() {
    let mut h = Harness::new();
    h.online(1, "a", caps());
    let out = h.accept(1, "job-404");
    assert_eq!(
        error_frame(&out, 1),
        Some((
            WorkerErrorCode::ProtocolViolation,
            "accept for unknown jobId".into()
        ))
    );
    assert_eq!(closes(&out), vec![(1, 4002)]);

    let mut h = Harness::new();
    h.online(1, "a", caps());
    let (j, _) = h.submit(llm_job());
    h.online(2, "b", caps());
    for f in [
        WorkerFrame::Accept { job_id: j.clone() },
        WorkerFrame::CompleteJson {
            job_id: j.clone(),
            result: json!(1),
            prompt: None,
        },
        WorkerFrame::Fail {
            job_id: j.clone(),
            error: "x".into(),
            retryable: true,
        },
        WorkerFrame::Reject {
            job_id: j.clone(),
            reason: "x".into(),
            code: None,
        },
    ] {
        let out = h.frame(2, &f);
        assert_eq!(closes(&out), vec![(2, 4002)], "{f:?}");
        assert_eq!(h.state(&j), offered_to("a"));
        h.hello(2, "b", caps());
    }
}

#[test]
fn a_duplicate_accept_is_stale_not_a_violation() {
    let mut h = Harness::new();
    h.online(1, "w", caps());
    let (j, _) = h.submit(llm_job());
    h.accept(1, &j);
    let out = h.accept(1, &j);
    assert!(closes(&out).is_empty());
    assert_eq!(h.attempts(&j), 1);
}

#[test]
fn reject_of_an_accepted_job_is_a_violation() {
    let mut h = Harness::new();
    h.online(1, "w", caps());
    let (j, _) = h.submit(llm_job());
    h.accept(1, &j);
    let out = h.reject(1, &j, "x", Some(RejectCode::Busy));
    assert_eq!(closes(&out), vec![(1, 4002)]);
    // The claim survives the session like any disconnect.
    assert_eq!(h.state(&j), running_on("w"));
}

#[test]
fn log_batches_go_to_a_bounded_ring() {
    let mut h = Harness::with(StudioConfig {
        log_ring_capacity: 3,
        max_log_message_bytes: 5,
        ..StudioConfig::default()
    });
    h.online(1, "w", caps());
    let entries: Vec<LogEntry> = (0..5)
        .map(|i| LogEntry {
            ts: "2026-05-25T12:00:00.000Z".into(),
            level: "info".into(),
            category: "ws".into(),
            message: format!("ééé message {i}"),
            job_id: None,
        })
        .collect();
    let out = h.frame(1, &WorkerFrame::LogBatch { entries });
    assert_eq!(
        events(&out),
        vec![StudioEvent::LogsReceived {
            worker_id: "w".into(),
            received: 5,
            dropped: 2
        }]
    );
    let logs = h.s.worker_logs("w");
    assert_eq!(logs.len(), 3);
    assert_eq!(logs[0].message, "éé"); // 5 bytes would split the third é
}

#[test]
fn ready_for_more_is_ignored_with_an_event() {
    let mut h = Harness::new();
    h.online(1, "w", caps());
    let out = h.frame(1, &WorkerFrame::ReadyForMore);
    assert_eq!(
        events(&out),
        vec![StudioEvent::ReadyForMore {
            worker_id: "w".into()
        }]
    );
    assert!(sent(&out, 1).is_empty());
}

// ------------------------------------------------------------------------------------------
// Timers: offer timeout, sweeps, claims
// ------------------------------------------------------------------------------------------

#[test]
fn unanswered_offers_time_out_and_requeue_without_attempt() {
    let mut h = Harness::with(StudioConfig {
        offer_timeout: Duration::from_secs(5),
        ..StudioConfig::default()
    });
    h.online(1, "w", caps());
    let (j, out) = h.submit(llm_job());
    assert_eq!(wait(&out), Some(Mono::from_secs(5)));
    assert_eq!(
        h.s.job(&j).unwrap().offer_deadline(),
        Some(Mono::from_secs(5))
    );
    h.at(4);
    let out = h.tick();
    assert_eq!(h.state(&j), offered_to("w"));
    assert_eq!(wait(&out), Some(Mono::from_secs(5)));
    h.at(5);
    let out = h.tick();
    assert_eq!(h.state(&j), JobState::Queued);
    assert_eq!(h.attempts(&j), 0);
    assert!(offers(&out, 1).is_empty(), "held until the next heartbeat");
    assert!(events(&out).contains(&StudioEvent::JobRequeued {
        job_id: j.clone(),
        reason: RequeueReason::OfferTimedOut,
        attempts: 0
    }));
    assert_eq!(wait(&out), Some(Mono::from_secs(10)), "next sweep");
    let out = h.heartbeat(1, caps(), None);
    assert_eq!(offers(&out, 1), vec![j]);
}

#[test]
fn a_silent_session_is_swept_and_its_job_released() {
    let mut h = Harness::new();
    h.online(1, "w", caps());
    let (j, _) = h.submit(llm_job());
    h.accept(1, &j);
    for s in [10, 20] {
        h.at(s);
        let out = h.tick();
        assert!(closes(&out).is_empty());
        assert_eq!(wait(&out), Some(Mono::from_secs(s + 10)));
    }
    h.at(30);
    let out = h.tick();
    assert_eq!(closes(&out), vec![(1, close_code::NORMAL)]);
    assert!(events(&out).contains(&StudioEvent::Swept {
        expired_sessions: 1,
        released_claims: 1
    }));
    assert_eq!(h.state(&j), JobState::Queued);
    assert_eq!(h.attempts(&j), 1, "the accepted run counts");
    assert!(!h.s.worker("w").unwrap().connected);
    // Nothing left to watch: no timer.
    assert_eq!(wait(&out), None);
    // The driver's Disconnected for the closed socket is harmless.
    h.disconnect(1);
}

#[test]
fn heartbeats_keep_a_session_alive() {
    let mut h = Harness::new();
    h.online(1, "w", caps());
    for s in (5..=120).step_by(5) {
        h.at(s);
        h.heartbeat(1, caps(), None);
        let out = h.tick();
        assert!(closes(&out).is_empty());
    }
}

/// Silent sessions expire in the order of their last frames, not of their connects: a
/// frame after connect moves a session behind one that connected later and stayed quiet.
#[test]
fn silent_sessions_expire_in_the_order_of_their_last_frames() {
    let mut h = Harness::new();
    h.online(1, "a", caps());
    h.at(2);
    h.online(2, "b", caps());
    h.at(4);
    h.heartbeat(1, caps(), None);
    for s in [10, 20, 30] {
        h.at(s);
        assert!(closes(&h.tick()).is_empty(), "at {s} s");
    }
    h.at(40);
    let out = h.tick();
    assert_eq!(
        closes(&out),
        vec![(2, close_code::NORMAL), (1, close_code::NORMAL)]
    );
}

/// A socket connected for a worker id the studio learns only afterwards is that worker's
/// session once it says hello: its frames find the record by id.
#[test]
fn a_connection_opened_before_its_worker_was_added_serves_it() {
    let mut h = Harness::new();
    h.connect(1, "w");
    h.s.add_worker("w", &token("w"));
    h.drain();
    h.frame(
        1,
        &WorkerFrame::Hello {
            auth_token: token("w").into(),
            capabilities: caps(),
        },
    );
    assert_eq!(h.s.worker("w").unwrap().conn, Some(ConnId(1)));
    h.at(5);
    h.heartbeat(1, caps(), None);
    h.at(6);
    // Repeated (not decoded again): still the record of "w".
    h.heartbeat(1, caps(), None);
    assert_eq!(
        h.s.worker("w").unwrap().last_heartbeat,
        Some(Mono::from_secs(6))
    );
    let (j, out) = h.submit(llm_job());
    assert_eq!(offers(&out, 1), vec![j.clone()]);
    h.s.check_invariants().unwrap();
    // Its end detaches the worker and requeues the offer.
    h.disconnect(1);
    assert!(!h.s.worker("w").unwrap().connected);
    assert_eq!(h.state(&j), JobState::Queued);
    h.s.check_invariants().unwrap();
}

#[test]
fn a_connection_that_never_says_hello_is_swept() {
    let mut h = Harness::new();
    h.s.add_worker("w", "t");
    h.connect(1, "w");
    for s in [10, 20] {
        h.at(s);
        assert!(closes(&h.tick()).is_empty());
    }
    h.at(30);
    let out = h.tick();
    assert_eq!(closes(&out), vec![(1, 1000)]);
    assert!(events(&out).contains(&StudioEvent::SessionExpired {
        conn: ConnId(1),
        worker_id: "w".into()
    }));
}

#[test]
fn a_quick_reconnect_keeps_the_running_job() {
    let mut h = Harness::new();
    h.online(1, "w", caps());
    let (j, _) = h.submit(llm_job());
    h.accept(1, &j);
    h.at(5);
    let out = h.disconnect(1);
    assert!(events(&out).contains(&StudioEvent::ConnLost {
        conn: ConnId(1),
        worker_id: "w".into()
    }));
    assert_eq!(h.state(&j), running_on("w"));
    assert_eq!(
        wait(&out),
        Some(Mono::from_secs(10)),
        "the claim is watched"
    );
    h.at(10);
    h.tick();
    h.at(12);
    let out = h.hello(2, "w", caps());
    assert!(offers(&out, 2).is_empty(), "its slot is still taken");
    h.heartbeat(2, caps(), Some(&j));
    for s in [20, 30, 40, 50] {
        h.at(s);
        h.heartbeat(2, caps(), Some(&j));
        h.tick();
        assert_eq!(h.state(&j), running_on("w"));
    }
    h.complete_json(2, &j);
    assert_eq!(h.s.job(&j).unwrap().completions, 1);
}

#[test]
fn a_disconnected_worker_loses_its_claim_after_the_session_timeout() {
    let mut h = Harness::new();
    h.online(1, "a", caps());
    let (j, _) = h.submit(llm_job());
    h.accept(1, &j);
    h.at(5);
    h.heartbeat(1, caps(), Some(&j));
    h.disconnect(1);
    h.at(10);
    h.tick();
    h.at(20);
    h.tick();
    h.at(30);
    h.tick();
    assert_eq!(h.state(&j), running_on("a"), "last frame at 5 s");
    h.at(40);
    let out = h.tick();
    assert_eq!(h.state(&j), JobState::Queued);
    assert!(events(&out).contains(&StudioEvent::JobRequeued {
        job_id: j,
        reason: RequeueReason::ClaimExpired,
        attempts: 1
    }));
}

#[test]
fn a_disconnect_before_accept_requeues_at_once() {
    let mut h = Harness::new();
    h.online(1, "a", caps());
    let (j, _) = h.submit(llm_job());
    h.online(2, "b", caps());
    let out = h.disconnect(1);
    assert_eq!(all_offers(&out), vec![(2, j.clone())]);
    assert_eq!(h.attempts(&j), 0);
}

#[test]
fn an_idle_heartbeat_releases_a_held_job_after_the_grace() {
    let mut h = Harness::with(StudioConfig {
        idle_claim_grace: Duration::from_secs(10),
        ..StudioConfig::default()
    });
    h.online(1, "w", caps());
    let (j, _) = h.submit(llm_job());
    h.accept(1, &j);
    // A heartbeat built before the accept was processed: inside the grace, and the next
    // heartbeat naming the job cancels it.
    h.heartbeat(1, caps(), None);
    h.at(15);
    h.heartbeat(1, caps(), Some(&j));
    h.at(20);
    h.heartbeat(1, caps(), None);
    assert_eq!(h.state(&j), running_on("w"));
    h.at(30);
    let out = h.heartbeat(1, caps(), None);
    assert!(events(&out).contains(&StudioEvent::JobRequeued {
        job_id: j.clone(),
        reason: RequeueReason::WorkerReportedIdle,
        attempts: 1
    }));
    // Released and offered again to the now idle worker.
    assert_eq!(offers(&out, 1), vec![j]);
}

#[test]
fn a_worker_running_a_requeued_job_reclaims_it() {
    let mut h = Harness::new();
    h.online(1, "w", caps());
    let (j, _) = h.submit(llm_job());
    h.accept(1, &j);
    h.disconnect(1);
    for s in [10, 20, 30] {
        h.at(s);
        h.tick();
    }
    assert_eq!(h.state(&j), JobState::Queued);
    // Back, paused (so nothing is offered), still running the job.
    h.at(31);
    h.hello(2, "w", caps_disabled());
    let out = h.heartbeat(2, caps_disabled(), Some(&j));
    assert!(events(&out).contains(&StudioEvent::JobReclaimed {
        job_id: j.clone(),
        worker_id: "w".into()
    }));
    assert_eq!(h.state(&j), running_on("w"));
    assert_eq!(h.attempts(&j), 1);
    h.complete_json(2, &j);
    assert_eq!(h.s.job(&j).unwrap().completions, 1);
}

#[test]
fn a_late_completion_of_a_still_queued_job_is_accepted_once() {
    let mut h = Harness::new();
    h.online(1, "w", caps());
    let (j, _) = h.submit(llm_job());
    h.accept(1, &j);
    h.disconnect(1);
    for s in [10, 20, 30] {
        h.at(s);
        h.tick();
    }
    h.at(31);
    h.hello(2, "w", caps_disabled());
    let out = h.complete_json(2, &j);
    assert_eq!(
        sent(&out, 2),
        vec![StudioFrame::CompleteAck { job_id: j.clone() }]
    );
    assert!(events(&out).contains(&StudioEvent::JobCompleted {
        job_id: j.clone(),
        worker_id: "w".into(),
        late: true
    }));
    let out = h.complete_json(2, &j);
    assert_eq!(
        sent(&out, 2),
        vec![StudioFrame::CompleteAck { job_id: j.clone() }]
    );
    assert_eq!(h.s.job(&j).unwrap().completions, 1);
}

#[test]
fn a_stale_completion_never_completes_a_reassigned_job() {
    let mut h = Harness::new();
    h.online(1, "a", caps());
    let (j, _) = h.submit(llm_job());
    h.accept(1, &j);
    h.disconnect(1);
    h.at(1);
    h.online(2, "b", caps_disabled());
    for s in [10, 20, 30] {
        h.at(s);
        h.heartbeat(2, caps_disabled(), None);
        h.tick();
    }
    // Requeued; b resumes and takes it.
    let out = h.heartbeat(2, caps(), None);
    assert_eq!(offers(&out, 2), vec![j.clone()]);
    // a comes back (paused) and delivers: stale, ignored, session kept.
    h.hello(3, "a", caps_disabled());
    let out = h.complete_json(3, &j);
    assert!(closes(&out).is_empty());
    assert_eq!(
        sent(&out, 3),
        vec![StudioFrame::CompleteAck { job_id: j.clone() }]
    );
    assert!(matches!(
        &events(&out)[..],
        [StudioEvent::StaleFrame {
            frame: "completeJson",
            state: "offered",
            ..
        }]
    ));
    assert_eq!(h.state(&j), offered_to("b"));
    let err =
        h.s.complete_upload(h.now(), up("a", &token("a"), &j, "p", "webp", 10))
            .unwrap_err();
    assert_eq!(err.status, 409);
    h.drain();
    h.accept(2, &j);
    h.complete_json(2, &j);
    assert!(matches!(h.state(&j), JobState::Done { worker_id, .. } if worker_id == "b"));
    // And once more from a after it is done.
    let out = h.fail(3, &j, true);
    assert!(closes(&out).is_empty());
    assert_eq!(h.s.job(&j).unwrap().completions, 1);
}

#[test]
fn a_stale_accept_marks_the_worker_busy_until_it_reports_idle() {
    let mut h = Harness::with(StudioConfig {
        offer_timeout: Duration::from_secs(5),
        ..StudioConfig::default()
    });
    h.online(1, "w", caps());
    let (j, _) = h.submit(llm_job());
    h.at(5);
    h.tick(); // offer timed out
    let (j2, _) = h.submit(llm_job());
    let out = h.accept(1, &j);
    assert!(closes(&out).is_empty());
    assert_eq!(h.state(&j), JobState::Queued);
    // The worker heartbeats running j (still queued, it was the last holder): reclaimed.
    let out = h.heartbeat(1, caps(), Some(&j));
    assert!(events(&out).contains(&StudioEvent::JobReclaimed {
        job_id: j.clone(),
        worker_id: "w".into()
    }));
    h.complete_json(1, &j);
    let out = h.heartbeat(1, caps(), None);
    assert!(offers(&out, 1).is_empty() || offers(&out, 1) == vec![j2.clone()]);
    assert!(matches!(h.state(&j2), JobState::Offered { .. }));
}

// ------------------------------------------------------------------------------------------
// HTTP upload
// ------------------------------------------------------------------------------------------

#[test]
fn upload_completion_checks_token_and_claim_and_nudges() {
    let mut h = Harness::new();
    h.online(1, "w", caps());
    h.online(2, "other", caps());
    let (j1, _) = h.submit(image_job(1.0));
    let (j2, _) = h.submit(image_job(1.0));
    let (j3, _) = h.submit(image_job(1.0));
    assert_eq!(h.state(&j1), offered_to("w"));
    assert_eq!(h.state(&j2), offered_to("other"));
    h.accept(1, &j1);
    let t = h.now();
    let e =
        h.s.complete_upload(t, up("w", "bad", &j1, "p", "webp", 1))
            .unwrap_err();
    assert_eq!(e.status, 401);
    let e =
        h.s.complete_upload(t, up("nobody", "x", &j1, "p", "webp", 1))
            .unwrap_err();
    assert_eq!(e.status, 401);
    let e =
        h.s.complete_upload(t, up("w", &token("w"), &j2, "p", "webp", 1))
            .unwrap_err();
    assert_eq!(e.status, 409, "held by another worker");
    let e =
        h.s.complete_upload(t, up("w", &token("w"), "job-999", "p", "webp", 1))
            .unwrap_err();
    assert_eq!(e.status, 409, "unknown job");
    h.drain();
    h.s.complete_upload(t, up("w", &token("w"), &j1, "the prompt", "webp", 1234))
        .unwrap();
    let out = h.drain();
    assert_eq!(offers(&out, 1), vec![j3], "the nudge offers the next job");
    assert_eq!(
        h.state(&j1),
        JobState::Done {
            worker_id: "w".into(),
            result: JobResult::Binary {
                ext: "webp".into(),
                prompt: "the prompt".into(),
                bytes_len: 1234
            }
        }
    );
    // A repeated upload is a conflict and never completes twice.
    let e =
        h.s.complete_upload(t, up("w", &token("w"), &j1, "p", "webp", 1))
            .unwrap_err();
    assert_eq!(e.status, 409);
    h.drain();
    assert_eq!(h.s.job(&j1).unwrap().completions, 1);
}

// ------------------------------------------------------------------------------------------
// Jobs API
// ------------------------------------------------------------------------------------------

#[test]
fn submit_validates_its_input() {
    let mut h = Harness::with(StudioConfig {
        max_queued_jobs: 2,
        max_frame_bytes: 2_000,
        ..StudioConfig::default()
    });
    let t = h.now();
    let e =
        h.s.submit(
            t,
            JobSpec {
                model: String::new(),
                ..llm_job()
            },
        )
        .unwrap_err();
    assert_eq!(e.status, 400);
    for bad in [f32::NAN, -1.0, f32::INFINITY] {
        assert_eq!(h.s.submit(t, image_job(bad)).unwrap_err().status, 400);
    }
    let huge = JobSpec::synthetic(Task::Image(ImageTask {
        prompt: "x".repeat(5_000),
        ..ImageTask::default()
    }));
    assert_eq!(h.s.submit(t, huge).unwrap_err().status, 413);
    assert_eq!(h.s.submit(t, llm_job()).unwrap(), "job-1");
    assert_eq!(h.s.submit(t, llm_job()).unwrap(), "job-2");
    assert_eq!(h.s.submit(t, llm_job()).unwrap_err().status, 429);
    h.drain();
    let ids: Vec<_> = h.s.jobs().map(|j| j.id.clone()).collect();
    assert_eq!(ids, vec!["job-1", "job-2"]);
    assert_eq!(h.s.stats().queued, 2);
}

#[test]
fn finished_jobs_beyond_the_limit_are_forgotten() {
    let mut h = Harness::with(StudioConfig {
        max_finished_jobs: 2,
        ..StudioConfig::default()
    });
    h.online(1, "w", caps());
    let mut ids = Vec::new();
    for _ in 0..4 {
        let (j, _) = h.submit(llm_job());
        h.accept(1, &j);
        h.complete_json(1, &j);
        ids.push(j);
    }
    assert!(h.s.job(&ids[0]).is_none() && h.s.job(&ids[1]).is_none());
    assert!(h.s.job(&ids[3]).is_some());
    assert_eq!(h.s.stats().done, 2);
}

#[test]
fn removing_a_worker_closes_4004_and_requeues_its_job() {
    let mut h = Harness::new();
    h.online(1, "w", caps());
    let (j, _) = h.submit(llm_job());
    h.accept(1, &j);
    h.s.remove_worker("w");
    let out = h.drain();
    assert_eq!(
        error_frame(&out, 1).unwrap().0,
        WorkerErrorCode::WorkerDeleted
    );
    assert_eq!(closes(&out), vec![(1, close_code::WORKER_DELETED)]);
    assert_eq!(h.state(&j), JobState::Queued);
    assert_eq!(h.attempts(&j), 0, "refunded");
    assert!(h.s.worker("w").is_none());
    assert_eq!(
        h.s.authorize_upgrade("w", &token("w")).unwrap_err().status,
        401
    );
}

#[test]
fn upgrade_authorisation() {
    let mut h = Harness::new();
    h.s.add_worker("w", "secret");
    assert!(h.s.authorize_upgrade("w", "secret").is_ok());
    assert_eq!(
        h.s.authorize_upgrade("w", "secreT").unwrap_err().status,
        401
    );
    assert_eq!(
        h.s.authorize_upgrade("x", "secret").unwrap_err().status,
        401
    );
    // Re-provisioning re-keys.
    h.s.add_worker("w", "new");
    assert!(h.s.authorize_upgrade("w", "secret").is_err());
    assert!(h.s.authorize_upgrade("w", "new").is_ok());
}

// ------------------------------------------------------------------------------------------
// Registration
// ------------------------------------------------------------------------------------------

fn reg(install: &str, secret: &str) -> AutoRegisterRequest {
    AutoRegisterRequest {
        install_id: install.into(),
        registration_secret_hash: sha256_hex(secret.as_bytes()),
        capabilities: caps(),
        user_agent: "studio-worker/0.4.15".into(),
    }
}

#[test]
fn registration_pending_approve_and_rekey_on_every_poll() {
    let mut h = Harness::new();
    h.at(3);
    let t = h.now();
    let r = h.s.register_request(t, reg("inst-1", "s3cret")).unwrap();
    assert_eq!(r.status, "pending");
    let rid = r.request_id;
    let pend = h.s.pending_requests();
    assert_eq!(pend.len(), 1);
    assert_eq!(pend[0].install_id, "inst-1");
    assert_eq!(pend[0].requested_at, Mono::from_secs(3));
    assert_eq!(
        h.s.register_status(t, &rid, "s3cret").unwrap(),
        RegisterStatus::Pending
    );
    assert_eq!(
        h.s.register_status(t, &rid, "wrong").unwrap_err().status,
        401
    );
    assert_eq!(
        h.s.register_status(t, "rr-nope", "s3cret")
            .unwrap_err()
            .status,
        404
    );
    h.s.approve(&rid).unwrap();
    assert!(h.s.pending_requests().is_empty());
    let RegisterStatus::Approved {
        worker_id,
        auth_token: tok1,
    } = h.s.register_status(t, &rid, "s3cret").unwrap()
    else {
        panic!("approved expected")
    };
    assert_eq!(tok1.expose().len(), 64);
    assert!(h.s.authorize_upgrade(&worker_id, tok1.expose()).is_ok());
    let RegisterStatus::Approved {
        worker_id: w2,
        auth_token: tok2,
    } = h.s.register_status(t, &rid, "s3cret").unwrap()
    else {
        panic!()
    };
    assert_eq!(w2, worker_id);
    assert_ne!(tok1, tok2, "each approved poll mints a fresh token");
    assert!(h.s.authorize_upgrade(&worker_id, tok1.expose()).is_err());
    assert!(h.s.authorize_upgrade(&worker_id, tok2.expose()).is_ok());
    // The token works for hello as well.
    h.drain();
    h.connect(1, &worker_id);
    let out = h.frame(
        1,
        &WorkerFrame::Hello {
            auth_token: tok2,
            capabilities: caps(),
        },
    );
    assert!(matches!(sent(&out, 1)[0], StudioFrame::Welcome { .. }));
    // Approve is idempotent, reject after approve conflicts.
    assert!(h.s.approve(&rid).is_ok());
    assert_eq!(h.s.reject(&rid, "no").unwrap_err().status, 409);
    h.drain();
}

#[test]
fn registration_reject_and_unknown_ids() {
    let mut h = Harness::new();
    let t = h.now();
    let rid = h.s.register_request(t, reg("i", "s")).unwrap().request_id;
    h.s.reject(&rid, "unknown contributor").unwrap();
    assert_eq!(
        h.s.register_status(t, &rid, "s").unwrap(),
        RegisterStatus::Rejected {
            reason: "unknown contributor".into()
        }
    );
    assert!(h.s.reject(&rid, "again").is_ok());
    assert_eq!(h.s.approve(&rid).unwrap_err().status, 409);
    assert_eq!(h.s.approve("rr-x").unwrap_err().status, 404);
    assert_eq!(h.s.reject("rr-x", "r").unwrap_err().status, 404);
    // The same install can ask again: a fresh request.
    let rid2 = h.s.register_request(t, reg("i", "s2")).unwrap().request_id;
    assert_ne!(rid2, rid);
    h.drain();
}

#[test]
fn registration_dedups_by_install_id_and_keeps_the_newest_secret() {
    let mut h = Harness::new();
    h.at(1);
    let rid =
        h.s.register_request(h.now(), reg("inst", "old"))
            .unwrap()
            .request_id;
    h.at(31);
    let again = h.s.register_request(h.now(), reg("inst", "new")).unwrap();
    assert_eq!(again.request_id, rid);
    assert_eq!(h.s.pending_requests().len(), 1);
    assert_eq!(
        h.s.pending_requests()[0].requested_at,
        Mono::from_secs(1),
        "first seen is kept"
    );
    assert_eq!(
        h.s.register_status(h.now(), &rid, "old")
            .unwrap_err()
            .status,
        401
    );
    assert_eq!(
        h.s.register_status(h.now(), &rid, "new").unwrap(),
        RegisterStatus::Pending
    );
    let other = h.s.register_request(h.now(), reg("inst-2", "x")).unwrap();
    assert_ne!(other.request_id, rid);
    h.drain();
}

#[test]
fn registration_input_is_validated() {
    let mut h = Harness::new();
    let t = h.now();
    let mut bad = reg("i", "s");
    bad.registration_secret_hash = "not-a-hash".into();
    assert_eq!(h.s.register_request(t, bad).unwrap_err().status, 400);
    assert_eq!(
        h.s.register_request(t, reg("", "s")).unwrap_err().status,
        400
    );
    let long = "i".repeat(300);
    assert_eq!(
        h.s.register_request(t, reg(&long, "s")).unwrap_err().status,
        400
    );
    h.drain();
}

#[test]
fn registration_store_is_bounded() {
    let mut h = Harness::with(StudioConfig {
        max_registration_requests: 2,
        ..StudioConfig::default()
    });
    let t = h.now();
    let a = h.s.register_request(t, reg("a", "s")).unwrap().request_id;
    h.s.register_request(t, reg("b", "s")).unwrap();
    assert_eq!(
        h.s.register_request(t, reg("c", "s")).unwrap_err(),
        HttpError::new(429, "too many pending registration requests")
    );
    h.s.reject(&a, "no").unwrap();
    h.s.register_request(t, reg("c", "s")).unwrap();
    assert_eq!(h.s.register_status(t, &a, "s").unwrap_err().status, 404);
    h.drain();
}

#[test]
fn auto_approve_reports_approved_on_the_first_poll_and_reuses_the_worker() {
    let mut h = Harness::with(StudioConfig {
        auto_approve: true,
        ..StudioConfig::default()
    });
    let t = h.now();
    let r = h.s.register_request(t, reg("inst", "s")).unwrap();
    assert_eq!(r.status, "pending");
    let RegisterStatus::Approved { worker_id, .. } =
        h.s.register_status(t, &r.request_id, "s").unwrap()
    else {
        panic!()
    };
    // Same install registers again after approval: a fresh request, same worker id.
    let r2 = h.s.register_request(t, reg("inst", "s2")).unwrap();
    assert_ne!(r2.request_id, r.request_id);
    let RegisterStatus::Approved { worker_id: w2, .. } =
        h.s.register_status(t, &r2.request_id, "s2").unwrap()
    else {
        panic!()
    };
    assert_eq!(w2, worker_id);
    // After the worker is deleted, polling its approval is stale.
    h.s.remove_worker(&worker_id);
    assert_eq!(
        h.s.register_status(t, &r2.request_id, "s2")
            .unwrap_err()
            .status,
        404
    );
    h.drain();
}

#[test]
fn tokens_are_deterministic_per_seed() {
    let mint = |seed: u64| {
        let mut s = Studio::new_with_seed(
            StudioConfig {
                auto_approve: true,
                ..StudioConfig::default()
            },
            seed,
        );
        let rid = s
            .register_request(Now::default(), reg("i", "s"))
            .unwrap()
            .request_id;
        match s.register_status(Now::default(), &rid, "s").unwrap() {
            RegisterStatus::Approved { auth_token, .. } => auth_token,
            _ => unreachable!(),
        }
    };
    assert_eq!(mint(1), mint(1));
    assert_ne!(mint(1), mint(2));
}

// ------------------------------------------------------------------------------------------
// Wait deadlines
// ------------------------------------------------------------------------------------------

#[test]
fn wait_deadlines() {
    let mut h = Harness::new();
    // Nothing scheduled.
    let (_, out) = h.submit(llm_job());
    assert_eq!(wait(&out), None);
    assert_eq!(wait(&h.tick()), None);
    // A connection arms the sweep.
    h.at(2);
    let out = h.connect(1, "w");
    assert_eq!(wait(&out), Some(Mono::from_secs(12)));
    // An early tick changes nothing and emits nothing.
    h.at(5);
    let out = h.tick();
    assert_eq!(
        out,
        vec![StudioCommand::Wait {
            until: Some(Mono::from_secs(12))
        }]
    );
    // An offer deadline earlier than the sweep wins.
    let mut h = Harness::with(StudioConfig {
        offer_timeout: Duration::from_secs(3),
        ..StudioConfig::default()
    });
    h.online(1, "w", caps());
    let (_, out) = h.submit(llm_job());
    assert_eq!(wait(&out), Some(Mono::from_secs(3)));
    // Past deadlines are reported as `now`, never earlier.
    h.at(7);
    let out = h.heartbeat(1, caps(), None);
    assert_eq!(wait(&out), Some(Mono::from_secs(7)));
    // Tick is idempotent.
    let first = h.tick();
    let second = h.tick();
    assert!(first.len() > 1);
    assert_eq!(
        second,
        vec![StudioCommand::Wait {
            until: Some(Mono::from_secs(10))
        }]
    );
}

#[test]
fn time_going_backwards_is_a_usage_error_and_changes_nothing() {
    let mut h = Harness::new();
    h.at(100);
    h.online(1, "w", caps());
    let wait_before = h.s.poll();
    h.at(1);
    let heartbeat = WorkerFrame::Heartbeat {
        capabilities: caps(),
        current_job_id: None,
    };
    let input = StudioInput::Frame {
        conn: ConnId(1),
        text: wire::encode(&heartbeat),
    };
    assert_eq!(
        h.s.handle(h.now(), input),
        Err(UsageError {
            last: Mono::from_secs(100),
            now: Mono::from_secs(1)
        })
    );
    assert_eq!(h.s.poll(), wait_before, "nothing queued, the same deadline");
    assert_eq!(h.s.now(), Mono::from_secs(100));
    // An HTTP call at that time is answered 500 and changes nothing either.
    assert_eq!(h.s.submit(h.now(), llm_job()).unwrap_err().status, 500);
    assert_eq!(h.s.jobs().count(), 0);
    assert_eq!(h.s.poll(), wait_before);
    h.s.check_invariants().unwrap();
}

// ------------------------------------------------------------------------------------------
// Properties: arbitrary input never panics, invariants always hold, runs are deterministic
// ------------------------------------------------------------------------------------------

const WORKERS: [&str; 3] = ["wa", "wb", "wc"];

/// Interprets a byte script as a sequence of inputs and returns every command.
fn run_script(script: &[(u8, u8, u8)]) -> Result<Cmds, String> {
    let mut s = Studio::new(StudioConfig {
        offer_timeout: Duration::from_secs(7),
        idle_claim_grace: Duration::from_secs(12),
        max_attempts: 2,
        max_finished_jobs: 6,
        log_ring_capacity: 4,
        ..StudioConfig::default()
    });
    for w in WORKERS {
        s.add_worker(w, &token(w));
    }
    let mut t = Mono::ZERO;
    let mut all = Vec::new();
    let drain = |s: &mut Studio, all: &mut Cmds| -> Result<(), String> {
        let mut n = 0;
        loop {
            let c = s.poll();
            n += 1;
            if n > 10_000 {
                return Err("drain does not end".into());
            }
            let last = matches!(c, StudioCommand::Wait { .. });
            if let StudioCommand::Wait { until: Some(u) } = c {
                if u < s.now() {
                    return Err("deadline before now".into());
                }
            }
            all.push(c);
            if last {
                break;
            }
        }
        s.check_invariants()
    };
    drain(&mut s, &mut all)?;
    for &(op, a, b) in script {
        let conn = ConnId(u64::from(a % 5));
        let worker = WORKERS[usize::from(b) % WORKERS.len()];
        let job = format!("job-{}", 1 + b % 6);
        let mut c = caps();
        c.auto_enabled = a % 7 != 0;
        c.vram_threshold_gb = f32::from(b % 4) * 4.0;
        if a % 3 == 0 {
            c = caps_kinds(&[TaskKind::Image]);
        }
        let frame = |f: WorkerFrame| StudioInput::Frame {
            conn,
            text: wire::encode(&f),
        };
        let input = match op % 16 {
            0 => Some(StudioInput::Connected {
                conn,
                worker_id: worker.into(),
            }),
            1 | 2 => Some(frame(WorkerFrame::Hello {
                auth_token: if b % 11 == 0 {
                    "bad".into()
                } else {
                    token(worker).into()
                },
                capabilities: c,
            })),
            3 => Some(frame(WorkerFrame::Heartbeat {
                capabilities: c,
                current_job_id: (b % 2 == 0).then(|| job.clone()),
            })),
            4 => Some(frame(WorkerFrame::Accept { job_id: job })),
            5 => Some(frame(WorkerFrame::Reject {
                job_id: job,
                reason: "r".into(),
                code: match b % 3 {
                    0 => None,
                    1 => Some(RejectCode::Busy),
                    _ => Some(RejectCode::Paused),
                },
            })),
            6 => Some(frame(WorkerFrame::CompleteJson {
                job_id: job,
                result: json!(b),
                prompt: None,
            })),
            7 => Some(frame(WorkerFrame::Fail {
                job_id: job,
                error: "e".into(),
                retryable: b % 2 == 0,
            })),
            8 => Some(StudioInput::Disconnected { conn }),
            9 => {
                t = t + Duration::from_millis(u64::from(a) * 200 + u64::from(b) * 50);
                Some(StudioInput::Tick)
            }
            10 => {
                let spec = if b % 2 == 0 {
                    image_job(f32::from(a % 12))
                } else {
                    llm_job()
                };
                let _ = s.submit(now_at(0, t), spec);
                None
            }
            11 => {
                let bearer = if a % 4 == 0 {
                    "bad".to_string()
                } else {
                    token(worker)
                };
                let _ = s.complete_upload(now_at(0, t), up(worker, &bearer, &job, "p", "png", 1));
                None
            }
            12 => Some(StudioInput::Frame {
                conn,
                text: [
                    "",
                    "{",
                    "null",
                    r#"{"type":"readyForMore"}"#,
                    r#"{"type":"x"}"#,
                ][usize::from(b) % 5]
                    .into(),
            }),
            13 => Some(frame(WorkerFrame::LogBatch {
                entries: vec![
                    LogEntry {
                        ts: "t".into(),
                        level: "info".into(),
                        category: "ws".into(),
                        message: "m".into(),
                        job_id: None,
                    };
                    usize::from(b % 7)
                ],
            })),
            14 => {
                if a % 8 == 0 {
                    s.remove_worker(worker);
                } else {
                    s.add_worker(worker, &token(worker));
                }
                None
            }
            _ => {
                t = t + Duration::from_secs(u64::from(b % 40));
                Some(StudioInput::Tick)
            }
        };
        if let Some(input) = input {
            s.handle(now_at(0, t), input).map_err(|e| e.to_string())?;
        }
        drain(&mut s, &mut all)?;
        for j in s.jobs() {
            if j.completions > 1 {
                return Err(format!("{} completed twice", j.id));
            }
        }
    }
    Ok(all)
}

#[test]
fn arbitrary_input_keeps_invariants() {
    fn prop(script: Vec<(u8, u8, u8)>) -> TestResult {
        match run_script(&script) {
            Ok(_) => TestResult::passed(),
            Err(e) => TestResult::error(e),
        }
    }
    QuickCheck::new()
        .tests(400)
        .max_tests(400)
        .quickcheck(prop as fn(Vec<(u8, u8, u8)>) -> TestResult);
}

#[test]
fn long_scripted_runs_are_deterministic() {
    // A fixed pseudo-random script (xorshift), run twice.
    let mut x: u32 = 0x9e37_79b9;
    let script: Vec<(u8, u8, u8)> = (0..3_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let [a, b, c, _] = x.to_le_bytes();
            (a, b, c)
        })
        .collect();
    let first = run_script(&script).unwrap();
    let second = run_script(&script).unwrap();
    assert_eq!(first, second);
    assert!(first.len() > 3_000);
}
