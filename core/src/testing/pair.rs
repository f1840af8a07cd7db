//! [`Pair`]: a worker machine and the studio machine wired together in memory.

use std::collections::VecDeque;
use std::time::Duration;

use serde_json::json;

use crate::studio::{
    self, JobSpec, JobState, Studio, StudioCommand, StudioConfig, StudioEvent, StudioInput,
};
use crate::time::{Mono, WallMs};
use crate::wire::{self, Task};
use crate::worker::{
    Command, ConnectError, ExitCode, HttpRequest, HttpResult, Input, JobOutcome, Now,
    PersistedState, RunId, SessionState, Worker, WorkerConfig,
};

use super::{
    job_success, registered, studio_http, studio_upgrade, Link, REFUSED, RESULT_BYTES, WALL0,
};

/// How the simulated engine answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineMode {
    /// Every job succeeds: a JSON result, or binary bytes for the binary kinds.
    Ok,
    /// Every job fails with this `retryable` flag.
    Fail { retryable: bool },
}

/// The job the simulated engine runs: which run of which job, when it finishes and how.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineRun {
    pub job_id: String,
    pub run: RunId,
    pub done_at: Mono,
    pub outcome: JobOutcome,
}

/// A worker machine and the studio machine over one in-memory [`Link`], the HTTP bridge and
/// a simulated engine, stepped to the next deadline: no sockets, no threads, no sleeping.
/// Faults (studio down, half-open link, failing uploads, updates) are switches, so a
/// scenario reads as a story. After every settle the studio's invariants are checked and
/// every deadline either machine returns must lie ahead.
pub struct Pair {
    pub now: Mono,
    pub worker: Worker,
    pub studio: Studio,
    /// The live socket, if any.
    pub link: Option<Link>,
    next_studio_conn: u64,
    /// Inputs in flight to the worker (frames, HTTP answers, engine results, operator
    /// actions a test pushes) ...
    pub to_worker: VecDeque<Input>,
    /// ... and to the studio.
    pub to_studio: VecDeque<StudioInput>,
    /// The running job.
    pub engine: Option<EngineRun>,
    pub engine_latency: Duration,
    pub engine_mode: EngineMode,
    /// Fault: the studio refuses connections and requests.
    pub studio_up: bool,
    /// Fault: frames and closes on the link are lost in both directions.
    pub half_open: bool,
    /// Fault: this many next uploads answer 500.
    pub fail_uploads: u32,
    /// What the update feed offers.
    pub update_available: Option<String>,
    /// Observations: connection attempts, the exit, the last persisted state, every frame
    /// the worker sent, every studio event.
    pub connects: u32,
    pub exit: Option<(ExitCode, String)>,
    pub persisted: Option<PersistedState>,
    pub sent_by_worker: Vec<String>,
    pub events: Vec<StudioEvent>,
}

impl Pair {
    /// A pair around a worker built from `cfg` (pointed at `http://studio.test`); its
    /// credentials, if any, are provisioned in the studio.
    pub fn new(mut cfg: WorkerConfig) -> Pair {
        let mut studio = Studio::new(StudioConfig::default());
        if let Some(c) = &cfg.credentials {
            studio.add_worker(&c.worker_id, c.auth_token.expose());
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
        }
    }

    /// A pair around a registered worker (`w-1` / `tok-1`).
    pub fn registered() -> Pair {
        Pair::new(registered("http://studio.test"))
    }

    /// The time now, as both machines get it.
    pub fn time(&self) -> Now {
        Now::new(self.now, WallMs(WALL0 + self.now.0 / 1000))
    }

    /// Starts the worker.
    pub fn start(&mut self) {
        self.to_worker.push_back(Input::Start);
        self.settle();
    }

    /// Delivers everything in flight until both machines are quiet, then checks the
    /// studio's invariants.
    pub fn settle(&mut self) {
        let mut guard = 0;
        loop {
            guard += 1;
            assert!(guard < 100_000, "the pair never settles");
            if let Some(input) = self.to_worker.pop_front() {
                if self.exit.is_none() {
                    self.worker
                        .handle(self.time(), input)
                        .unwrap_or_else(|e| panic!("usage error: {e}"));
                }
                self.drain_worker();
                continue;
            }
            if let Some(input) = self.to_studio.pop_front() {
                self.studio
                    .handle(self.time(), input)
                    .unwrap_or_else(|e| panic!("studio usage error: {e}"));
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
                            error: ConnectError::Transport(REFUSED.into()),
                        });
                        continue;
                    }
                    match studio_upgrade(&self.studio, &url, auth_token.expose()) {
                        Ok(worker_id) => {
                            let link = Link {
                                worker: conn,
                                studio: studio::ConnId(self.next_studio_conn),
                            };
                            self.next_studio_conn += 1;
                            self.link = Some(link);
                            let (to_worker, to_studio) = link.opened(worker_id);
                            self.to_studio.push_back(to_studio);
                            self.to_worker.push_back(to_worker);
                        }
                        Err(error) => self
                            .to_worker
                            .push_back(Input::ConnectFailed { conn, error }),
                    }
                }
                Command::Send { conn, text } => {
                    self.sent_by_worker.push(text.clone());
                    let input = self.link.and_then(|l| l.worker_sent(conn, text));
                    if let Some(input) = input.filter(|_| !self.half_open) {
                        self.to_studio.push_back(input);
                    }
                }
                Command::Close { conn, .. } => {
                    if let Some(input) = self.link.and_then(|l| l.worker_closed(conn)) {
                        self.link = None;
                        if !self.half_open {
                            self.to_studio.push_back(input);
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
                Command::Dispatch { run, claim } => {
                    assert!(self.engine.is_none(), "two jobs dispatched at once");
                    let kind = claim.task.kind();
                    let outcome = match self.engine_mode {
                        EngineMode::Fail { retryable } => JobOutcome::Failed {
                            error: "engine exploded".into(),
                            retryable,
                        },
                        EngineMode::Ok => job_success(
                            kind,
                            json!({"kind": kind.as_str(), "prompt": claim.task.prompt()}),
                        ),
                    };
                    self.engine = Some(EngineRun {
                        job_id: claim.job_id.clone(),
                        run,
                        done_at: self.now + self.engine_latency,
                        outcome,
                    });
                }
                Command::CancelJob { job_id } => {
                    if self.engine.as_ref().is_some_and(|e| e.job_id == job_id) {
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
            return HttpResult::Transport(REFUSED.into());
        }
        let now = self.time();
        let (status, body) = match request {
            HttpRequest::Upload { .. } if self.fail_uploads > 0 => {
                self.fail_uploads -= 1;
                (500, "storage hiccup".into())
            }
            request => studio_http(&mut self.studio, now, request, RESULT_BYTES),
        };
        // The studio may have work to do after an HTTP call (e.g. offer the next job).
        self.drain_studio();
        HttpResult::Response { status, body }
    }

    /// Carries out the studio's commands.
    pub fn drain_studio(&mut self) {
        loop {
            match self.studio.poll() {
                StudioCommand::Wait { until } => {
                    if let Some(u) = until {
                        assert!(u >= self.now, "studio deadline {u} before now {}", self.now);
                    }
                    break;
                }
                StudioCommand::Send { conn, text } => {
                    let input = self.link.and_then(|l| l.studio_sent(conn, text));
                    if let Some(input) = input.filter(|_| !self.half_open) {
                        self.to_worker.push_back(input);
                    }
                }
                StudioCommand::Close { conn, code, reason } => {
                    if let Some(input) = self.link.and_then(|l| l.studio_closed(conn, code, reason))
                    {
                        self.link = None;
                        if !self.half_open {
                            self.to_worker.push_back(input);
                        }
                    }
                }
                StudioCommand::Event(e) => self.events.push(e),
            }
        }
    }

    /// Jumps to the next thing that happens (a deadline or the engine) and runs it; false
    /// when nothing is scheduled.
    pub fn step(&mut self) -> bool {
        let next = [
            self.worker.deadline(),
            self.studio.deadline(),
            self.engine.as_ref().map(|e| e.done_at),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(t) = next else { return false };
        self.now = self.now.max(t);
        if self.engine.as_ref().is_some_and(|e| e.done_at <= self.now) {
            if let Some(e) = self.engine.take() {
                self.to_worker.push_back(Input::JobFinished {
                    job_id: e.job_id,
                    run: e.run,
                    outcome: e.outcome,
                });
            }
        }
        self.to_worker.push_back(Input::Tick);
        self.to_studio.push_back(StudioInput::Tick);
        self.settle();
        true
    }

    /// Steps until `cond` holds or `limit` of simulated time passes (or the worker exits,
    /// or nothing is scheduled); whether `cond` holds.
    pub fn run_until(&mut self, limit: Duration, mut cond: impl FnMut(&Pair) -> bool) -> bool {
        let end = self.now + limit;
        while !cond(self) {
            if self.now >= end || self.exit.is_some() || !self.step() {
                return cond(self);
            }
        }
        true
    }

    /// Steps for `d` of simulated time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end && self.exit.is_none() {
            if !self.step() {
                break;
            }
        }
    }

    /// Submits a synthetic job to the studio and lets it be offered.
    pub fn submit(&mut self, task: Task) -> String {
        let id = self
            .studio
            .submit(self.time(), JobSpec::synthetic(task))
            .expect("the studio takes the job");
        self.drain_studio();
        self.settle();
        id
    }

    /// Where `job` stands in the studio.
    pub fn state(&self, job: &str) -> JobState {
        self.studio.job(job).expect("a known job").state.clone()
    }

    /// Whether every one of `jobs` is done.
    pub fn all_done(&self, jobs: &[String]) -> bool {
        jobs.iter()
            .all(|j| matches!(self.state(j), JobState::Done { .. }))
    }

    /// The `type` of every frame the worker sent, in order.
    pub fn sent_types(&self) -> Vec<String> {
        self.sent_by_worker
            .iter()
            .map(|t| {
                wire::decode_worker_frame(t, usize::MAX)
                    .expect("the worker sends valid frames")
                    .type_name()
                    .to_string()
            })
            .collect()
    }

    /// Drops the link the way a studio restart or a network blip does: both sides see it.
    pub fn drop_link(&mut self) {
        if let Some(link) = self.link.take() {
            let (to_worker, to_studio) = link.reset("connection reset");
            self.to_worker.push_back(to_worker);
            self.to_studio.push_back(to_studio);
            self.settle();
        }
    }

    /// Whether the worker holds a welcomed session.
    pub fn connected(&self) -> bool {
        self.worker.status().session == SessionState::Connected
    }
}
