//! A worker machine and the studio machine wired together in memory and stepped to the
//! next deadline (quinn-proto's `Pair` idea): no sockets, no threads, no sleeping. Faults
//! (drops, half-open links, outages, upload errors, studio restarts) are switches on the
//! link, so each scenario reads as a story.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde_json::json;
use studio_core::studio::{
    self, JobResult, JobSpec, JobState, Studio, StudioCommand, StudioConfig, StudioInput,
};
use studio_core::wire::{self, Task, TaskKind};
use studio_core::worker::{
    Command, ConnectError, Credentials, ExitCode, HttpRequest, HttpResult, Input, JobOutcome, Now,
    SessionState, Worker, WorkerConfig,
};
use studio_core::{Mono, WallMs};

const WALL0: u64 = 1_779_710_400_000;

/// How the simulated engine answers.
#[derive(Clone, Copy, Debug, PartialEq)]
enum EngineMode {
    Ok,
    Fail { retryable: bool },
}

struct Pair {
    now: Mono,
    worker: Worker,
    studio: Studio,
    /// (worker conn, studio conn) of the live link.
    link: Option<(studio_core::worker::ConnId, studio::ConnId)>,
    next_studio_conn: u64,
    /// Frames in flight.
    to_worker: VecDeque<Input>,
    to_studio: VecDeque<StudioInput>,
    /// Engine: (job, finish time, outcome).
    engine: Option<(String, Mono, JobOutcome)>,
    engine_latency: Duration,
    engine_mode: EngineMode,
    /// Faults.
    studio_up: bool,
    half_open: bool,
    fail_uploads: u32,
    update_available: Option<String>,
    // Observations.
    connects: u32,
    exit: Option<(ExitCode, String)>,
    persisted: Option<studio_core::worker::PersistedState>,
    sent_by_worker: Vec<String>,
    events: Vec<studio::StudioEvent>,
    tokens: BTreeMap<String, String>,
}

impl Pair {
    fn new(mut cfg: WorkerConfig) -> Pair {
        let mut studio = Studio::new(StudioConfig::default());
        let mut tokens = BTreeMap::new();
        if cfg.credentials.is_none() {
            // registration flow: nothing provisioned
        } else {
            let c = cfg.credentials.clone().unwrap();
            studio.add_worker(&c.worker_id, c.auth_token.expose());
            tokens.insert(c.worker_id, c.auth_token.expose().to_string());
        }
        cfg.api_base_url = "http://studio.test".into();
        Pair {
            now: Mono::ZERO,
            worker: Worker::new(cfg),
            studio,
            link: None,
            next_studio_conn: 1,
            to_worker: VecDeque::new(),
            to_studio: VecDeque::new(),
            engine: None,
            engine_latency: Duration::from_millis(300),
            engine_mode: EngineMode::Ok,
            studio_up: true,
            half_open: false,
            fail_uploads: 0,
            update_available: None,
            connects: 0,
            exit: None,
            persisted: None,
            sent_by_worker: Vec::new(),
            events: Vec::new(),
            tokens,
        }
    }

    fn registered() -> Pair {
        let mut cfg = WorkerConfig::for_tests("http://studio.test");
        cfg.credentials = Some(Credentials {
            worker_id: "w-1".into(),
            auth_token: "tok-1".into(),
        });
        Pair::new(cfg)
    }

    fn wnow(&self) -> Now {
        Now::new(self.now, WallMs(WALL0 + self.now.0 / 1000))
    }

    fn start(&mut self) {
        self.to_worker.push_back(Input::Start);
        self.settle();
    }

    /// Delivers everything in flight until both machines are quiet.
    fn settle(&mut self) {
        let mut guard = 0;
        loop {
            guard += 1;
            assert!(guard < 100_000, "the pair never settles");
            if let Some(input) = self.to_worker.pop_front() {
                if self.exit.is_none() {
                    self.worker
                        .handle(self.wnow(), input)
                        .unwrap_or_else(|e| panic!("usage error: {e}"));
                }
                self.drain_worker();
                continue;
            }
            if let Some(input) = self.to_studio.pop_front() {
                self.studio.handle(self.now, input);
                self.drain_studio();
                continue;
            }
            break;
        }
        self.studio
            .check_invariants()
            .unwrap_or_else(|e| panic!("studio invariant: {e}"));
    }

    fn drain_worker(&mut self) {
        loop {
            let cmd = self.worker.poll();
            match cmd {
                Command::Wait { until } => {
                    if let Some(u) = until {
                        assert!(
                            u > self.now,
                            "worker deadline {u} not after now {}",
                            self.now
                        );
                    }
                    break;
                }
                Command::Connect {
                    conn,
                    url,
                    auth_token,
                } => {
                    self.connects += 1;
                    if !self.studio_up {
                        self.to_worker.push_back(Input::ConnectFailed {
                            conn,
                            error: ConnectError::Transport("connection refused".into()),
                        });
                        continue;
                    }
                    let worker_id = url
                        .split("/workers/")
                        .nth(1)
                        .and_then(|s| s.split('/').next())
                        .unwrap()
                        .to_string();
                    match self
                        .studio
                        .authorize_upgrade(&worker_id, auth_token.expose())
                    {
                        Ok(()) => {
                            let sconn = self.next_studio_conn;
                            self.next_studio_conn += 1;
                            self.link = Some((conn, sconn));
                            self.to_studio.push_back(StudioInput::Connected {
                                conn: sconn,
                                worker_id,
                            });
                            self.to_worker.push_back(Input::Connected { conn });
                        }
                        Err(e) if e.status == 401 => {
                            self.to_worker.push_back(Input::ConnectFailed {
                                conn,
                                error: ConnectError::Unauthorized { body: e.message },
                            })
                        }
                        Err(e) => self.to_worker.push_back(Input::ConnectFailed {
                            conn,
                            error: ConnectError::Status {
                                status: e.status,
                                body: e.message,
                            },
                        }),
                    }
                }
                Command::Send { conn, text } => {
                    self.sent_by_worker.push(text.clone());
                    if let Some((w, s)) = self.link {
                        if w == conn && !self.half_open {
                            self.to_studio
                                .push_back(StudioInput::Frame { conn: s, text });
                        }
                    }
                }
                Command::Close { conn, .. } => {
                    if let Some((w, s)) = self.link {
                        if w == conn {
                            self.link = None;
                            if !self.half_open {
                                self.to_studio
                                    .push_back(StudioInput::Disconnected { conn: s });
                            }
                        }
                    }
                }
                Command::Http { id, request } => {
                    let result = self.http(*request);
                    self.to_worker.push_back(Input::Http { id, result });
                }
                Command::MintSecret { need_install_id } => {
                    self.to_worker.push_back(Input::Minted {
                        install_id: need_install_id
                            .then(|| "11111111-2222-4333-8444-555555555555".into()),
                        secret: "5e".repeat(32).into(),
                    })
                }
                Command::Persist(p) => self.persisted = Some(p),
                Command::Dispatch { claim } => {
                    assert!(self.engine.is_none(), "two jobs dispatched at once");
                    let kind = claim.task.kind();
                    let outcome = match self.engine_mode {
                        EngineMode::Fail { retryable } => JobOutcome::Failed {
                            error: "engine exploded".into(),
                            retryable,
                        },
                        EngineMode::Ok if kind.is_binary() => JobOutcome::Binary {
                            ext: match kind {
                                TaskKind::AudioTts => "wav".into(),
                                _ => "webp".into(),
                            },
                            bytes_len: 1234,
                        },
                        EngineMode::Ok => JobOutcome::Json {
                            result: json!({"kind": kind.as_str(), "prompt": claim.task.prompt()}),
                        },
                    };
                    self.engine = Some((
                        claim.job_id.clone(),
                        self.now + self.engine_latency,
                        outcome,
                    ));
                }
                Command::CancelJob { job_id } => {
                    if self.engine.as_ref().is_some_and(|(j, _, _)| *j == job_id) {
                        self.engine = None;
                    }
                }
                Command::DiscardResult { .. } | Command::Report(_) => {}
                Command::CheckUpdate => self.to_worker.push_back(Input::UpdateChecked {
                    result: Ok(self.update_available.clone()),
                }),
                Command::ApplyUpdate { .. } => {}
                Command::Exit { code, reason } => self.exit = Some((code, reason)),
            }
        }
    }

    fn http(&mut self, request: HttpRequest) -> HttpResult {
        if !self.studio_up {
            return HttpResult::Transport("connection refused".into());
        }
        let (status, body) = match request {
            HttpRequest::RegisterRequest { body, .. } => {
                match self.studio.register_request(self.now, body) {
                    Ok(r) => (200, wire::encode(&r)),
                    Err(e) => (e.status, e.message),
                }
            }
            HttpRequest::PollRegistration { url, bearer } => {
                let rr = url.rsplit('/').next().unwrap().to_string();
                match self.studio.register_status(self.now, &rr, bearer.expose()) {
                    Ok(s) => (200, wire::encode(&s)),
                    Err(e) => (e.status, e.message),
                }
            }
            HttpRequest::Upload {
                url,
                auth_token,
                job_id,
                prompt,
                ext,
            } => {
                if self.fail_uploads > 0 {
                    self.fail_uploads -= 1;
                    (500, "storage hiccup".into())
                } else {
                    let worker_id = url
                        .split("/workers/")
                        .nth(1)
                        .unwrap()
                        .split('/')
                        .next()
                        .unwrap()
                        .to_string();
                    match self.studio.complete_upload(
                        self.now,
                        &worker_id,
                        auth_token.expose(),
                        &job_id,
                        &prompt,
                        &ext,
                        1234,
                    ) {
                        Ok(()) => (200, r#"{"ok":true}"#.into()),
                        Err(e) => (e.status, e.message),
                    }
                }
            }
        };
        // The studio may have work to do after an HTTP call (e.g. offer the next job).
        self.drain_studio();
        HttpResult::Response { status, body }
    }

    fn drain_studio(&mut self) {
        while let Some(cmd) = self.studio.poll() {
            match cmd {
                StudioCommand::Wait { until } => {
                    if let Some(u) = until {
                        assert!(u >= self.now, "studio deadline {u} before now {}", self.now);
                    }
                    break;
                }
                StudioCommand::Send { conn, text } => {
                    if let Some((w, s)) = self.link {
                        if s == conn && !self.half_open {
                            self.to_worker.push_back(Input::Frame { conn: w, text });
                        }
                    }
                }
                StudioCommand::Close { conn, code, reason } => {
                    if let Some((w, s)) = self.link {
                        if s == conn {
                            self.link = None;
                            if !self.half_open {
                                self.to_worker.push_back(Input::Disconnected {
                                    conn: w,
                                    code: Some(code),
                                    reason,
                                });
                            }
                        }
                    }
                }
                StudioCommand::Event(e) => self.events.push(e),
            }
        }
    }

    /// Jumps to the next thing that happens (a deadline or the engine) and runs it.
    fn step(&mut self) -> bool {
        let mut next: Option<Mono> = None;
        for t in [
            self.worker.deadline(),
            self.studio.next_deadline(),
            self.engine.as_ref().map(|e| e.1),
        ]
        .into_iter()
        .flatten()
        {
            next = Some(next.map_or(t, |n: Mono| n.min(t)));
        }
        let Some(t) = next else { return false };
        self.now = self.now.max(t);
        if let Some((job, at, _)) = &self.engine {
            if *at <= self.now {
                let job_id = job.clone();
                let (_, _, outcome) = self.engine.take().unwrap();
                self.to_worker
                    .push_back(Input::JobFinished { job_id, outcome });
            }
        }
        self.to_worker.push_back(Input::Tick);
        self.to_studio.push_back(StudioInput::Tick);
        self.settle();
        true
    }

    /// Steps until `cond` holds or `limit` of simulated time passes.
    fn run_until(&mut self, limit: Duration, mut cond: impl FnMut(&Pair) -> bool) -> bool {
        let end = self.now + limit;
        while !cond(self) {
            if self.now >= end || self.exit.is_some() || !self.step() {
                return cond(self);
            }
        }
        true
    }

    /// Steps for `d` of simulated time.
    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end && self.exit.is_none() {
            if !self.step() {
                break;
            }
        }
    }

    fn submit(&mut self, task: Task) -> String {
        let id = self
            .studio
            .submit(self.now, JobSpec::synthetic(task))
            .unwrap();
        self.drain_studio();
        self.settle();
        id
    }

    fn state(&self, job: &str) -> JobState {
        self.studio.job(job).unwrap().state.clone()
    }

    fn all_done(&self, jobs: &[String]) -> bool {
        jobs.iter()
            .all(|j| matches!(self.state(j), JobState::Done { .. }))
    }

    fn sent_types(&self) -> Vec<String> {
        self.sent_by_worker
            .iter()
            .map(|t| {
                wire::decode_worker_frame(t, usize::MAX)
                    .unwrap()
                    .type_name()
                    .to_string()
            })
            .collect()
    }

    /// Drops the link the way a studio restart or a network blip does: both sides see it.
    fn drop_link(&mut self) {
        if let Some((w, s)) = self.link.take() {
            self.to_worker.push_back(Input::Disconnected {
                conn: w,
                code: None,
                reason: "connection reset".into(),
            });
            self.to_studio
                .push_back(StudioInput::Disconnected { conn: s });
            self.settle();
        }
    }

    fn connected(&self) -> bool {
        self.worker.status().session == SessionState::Connected
    }
}

fn task(kind: TaskKind, prompt: &str) -> Task {
    let v = match kind {
        TaskKind::Image => json!({"kind":"image","prompt":prompt}),
        TaskKind::Llm => json!({"kind":"llm","messages":[{"role":"user","content":prompt}]}),
        TaskKind::AudioStt => json!({"kind":"audio_stt","inputUrl":prompt}),
        TaskKind::AudioTts => json!({"kind":"audio_tts","text":prompt}),
        TaskKind::Video => json!({"kind":"video","prompt":prompt}),
    };
    serde_json::from_value(v).unwrap()
}

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
    let _ = &p.tokens;
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
