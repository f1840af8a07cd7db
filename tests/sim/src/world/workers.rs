//! The simulated hosts of the worker machines: each is the core's [`Driver`] (the machine
//! and its clock) plus what a real shell and engine would add: the scheduled deadline, the
//! engine's job, the connections it holds, and what the checks need to know of it. The
//! world feeds a worker one input at a time and acts on each command as it is polled.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::json;
use studio_core::testing::{self, Driver};
use studio_core::wire::{self, StudioFrame, TaskKind};
use studio_core::worker::{
    Command, Credentials, Input, JobOutcome, KeptBody, KeptResult, RunId, SessionState,
    WorkerConfig,
};
use studio_core::Mono;

use crate::rng::Rng;
use crate::world::faults::{self, EngineProfile, Sabotage};
use crate::world::links::ConnLinks;
use crate::world::report::{Hashed, TraceStep};
use crate::world::{Event, World};
use crate::STORM_LIMIT;

/// The job a worker's engine is running.
pub(crate) struct EngineJob {
    pub job_id: String,
    pub run: RunId,
    /// This worker's count of engine runs at its start (tells a stale `EngineDone` apart).
    pub attempt: u64,
    pub outcome: JobOutcome,
    /// It never finishes until heal.
    pub hung: bool,
}

/// One simulated worker. What every input reads comes first (`repr(C)`), then the
/// driver, whose own first fields are the machine's (see [`Driver`]): in a large fleet a
/// worker's state is cold when its next input comes, and the fields an input touches then
/// lie in adjacent cache lines.
#[repr(C)]
pub(crate) struct SimWorker {
    /// The deadline scheduled in the queue, and its version (see
    /// [`Event::WorkerTimer`]).
    pub timer_at: Option<Mono>,
    pub timer_version: u64,
    /// Handles at the current instant (the storm check).
    pub instant: Mono,
    pub instant_count: u32,
    /// Which process of this worker runs (0 at first, one more per restart); events for
    /// an earlier one are dropped.
    pub process: u32,
    pub exited: bool,
    /// Crashed and not yet started again.
    pub down: bool,
    pub conn_links: ConnLinks,
    pub driver: Driver,
    pub engine: Option<EngineJob>,
    /// Engine runs started so far.
    pub attempts: u64,
    pub profile: EngineProfile,
    /// Jobs the studio offered to this worker (the dispatch check).
    pub offered: BTreeSet<String>,
    /// The last result frame it sent, and on which link (the duplicate fault).
    pub last_result_frame: Option<(usize, String)>,
    /// Its inputs and drains, when recorded.
    pub trace: Vec<TraceStep>,
    /// The durable outbox: what the machine asked to keep (`KeepResult`) and not yet
    /// forgot, by job id. It survives a crash.
    pub outbox: BTreeMap<String, KeptResult>,
}

impl SimWorker {
    /// The configuration of worker `k` and, unless it starts unregistered, the credentials
    /// the studio is provisioned with.
    pub fn config(
        k: usize,
        unregistered: bool,
        job_deadline: Duration,
        rng: &mut Rng,
    ) -> (WorkerConfig, Option<(String, String)>) {
        let mut wc = WorkerConfig::for_tests("http://studio.sim");
        wc.seed = rng.next_u64();
        wc.host.machine_name = format!("sim-{k}");
        wc.limits.recent_jobs = 4;
        wc.limits.recent_logs = 4;
        for kind in TaskKind::ALL {
            *wc.timings.job_deadlines.for_kind_mut(kind) = job_deadline;
        }
        if unregistered {
            return (wc, None);
        }
        let id = format!("w-{k}");
        let token = format!("tok-{k}-{:x}", rng.next_u64());
        wc.credentials = Some(Credentials {
            worker_id: id.clone(),
            auth_token: token.clone().into(),
        });
        (wc, Some((id, token)))
    }

    pub fn new(cfg: WorkerConfig, profile: EngineProfile) -> SimWorker {
        SimWorker {
            driver: Driver::new(cfg),
            timer_at: None,
            timer_version: 0,
            engine: None,
            attempts: 0,
            profile,
            offered: BTreeSet::new(),
            last_result_frame: None,
            instant: Mono::ZERO,
            instant_count: 0,
            exited: false,
            trace: Vec::new(),
            conn_links: ConnLinks::default(),
            process: 0,
            down: false,
            outbox: BTreeMap::new(),
        }
    }

    /// Connected over a clean link, holding and running no job.
    pub fn settled(&self, link_clean: bool) -> bool {
        link_clean && {
            let st = self.driver.worker.status();
            st.session == SessionState::Connected
                && st.current_job_id.is_none()
                && self.engine.is_none()
        }
    }
}

impl World {
    /// Feeds `input` to worker `w` now, acting on each command as it is polled, then checks
    /// the worker.
    pub(crate) fn feed(&mut self, w: usize, input: Input) {
        if self.workers[w].exited || self.workers[w].down {
            return;
        }
        self.report.steps += 1;
        let wk = &mut self.workers[w];
        wk.driver.micros = self.now.0;
        let now = wk.driver.now();
        if wk.instant == now.mono {
            wk.instant_count += 1;
        } else {
            wk.instant = now.mono;
            wk.instant_count = 1;
        }
        if wk.instant_count == STORM_LIMIT + 1 {
            self.violation_of_worker(
                w,
                format!("worker {w}: timer storm, more than {STORM_LIMIT} handles at one instant"),
            );
        }
        if self.hasher.is_some() {
            let s = format!("{w}:{:?}", Hashed::Input(&input));
            self.hash_str("wi", &s);
        }
        let recorded = (self.cfg.record
            && self.cfg.record_only.as_ref().is_none_or(|o| o.contains(&w)))
        .then(|| input.clone());
        if let Err(e) = self.workers[w].driver.feed(input) {
            self.violation_of_worker(w, format!("worker {w}: usage error {e}"));
        }
        // Each command is acted on as it is polled (a command never feeds the worker, so
        // what the machine emits next does not depend on it), not buffered: copying
        // commands through a buffer was a tenth of a large run. The hash sees the same
        // `[a, b, ...]` text a buffered `{cmds:?}` gave.
        let mut hashed = self.hasher.is_some().then(|| format!("{w}:["));
        let mut kept = recorded.is_some().then(Vec::new);
        let mut first = true;
        loop {
            let c = self.workers[w].driver.poll();
            let wait = matches!(c, Command::Wait { .. });
            if let Some(h) = hashed.as_mut() {
                if !first {
                    h.push_str(", ");
                }
                let _ = write!(h, "{:?}", Hashed::Command(&c));
                first = false;
            }
            if let Some(k) = kept.as_mut() {
                k.push(c.clone());
            }
            self.worker_command(w, c);
            if wait {
                break;
            }
        }
        if let Some(mut h) = hashed {
            h.push(']');
            self.hash_str("wc", &h);
        }
        if let (Some(input), Some(commands)) = (recorded, kept) {
            self.workers[w].trace.push(TraceStep {
                now,
                input,
                commands,
            });
        }
        self.check_worker(w);
    }

    /// What the host does with one command of worker `w`.
    fn worker_command(&mut self, w: usize, c: Command) {
        match c {
            Command::Wait { until } => self.schedule_worker_timer(w, until),
            Command::Connect {
                conn,
                url,
                auth_token,
            } => {
                let token = auth_token.expose().to_string();
                let d = self.latency();
                let worker = w;
                let process = self.workers[w].process;
                self.after(
                    d,
                    Event::ConnectArrives {
                        worker,
                        process,
                        conn,
                        target: Box::new((url, token)),
                    },
                );
            }
            Command::Send { conn, text } => self.worker_sends(w, conn, text),
            Command::Close { conn, .. } => self.worker_closes(w, conn),
            Command::Http { id, request } => {
                let d = self.latency();
                let worker = w;
                let process = self.workers[w].process;
                self.after(
                    d,
                    Event::HttpArrives {
                        worker,
                        process,
                        id,
                        request,
                    },
                );
            }
            Command::MintSecret { need_install_id } => {
                let a = self.rng.next_u64();
                let b = self.rng.next_u64();
                let input = Input::Minted {
                    install_id: need_install_id
                        .then(|| format!("{:08x}-0000-4000-8000-{:012x}", w, a & 0xffff_ffff_ffff)),
                    secret: format!("{a:016x}{b:016x}{a:016x}{b:016x}").into(),
                };
                self.input_later(w, Duration::from_micros(100), input);
            }
            // The machine keeps its credentials in its config, which a restart reuses.
            Command::Persist(_) | Command::DiscardResult { .. } | Command::Report(_) => {}
            Command::KeepResult(result) => {
                if self.cfg.sabotage != Sabotage::NoOutbox {
                    let result = *result;
                    self.workers[w].outbox.insert(result.job_id.clone(), result);
                }
            }
            Command::ForgetResult { job_id } => {
                self.workers[w].outbox.remove(&job_id);
            }
            Command::Dispatch { run, claim } => self.dispatch(w, run, &claim),
            Command::CancelJob { job_id } => {
                let wk = &mut self.workers[w];
                if wk.engine.as_ref().is_some_and(|e| e.job_id == job_id) {
                    wk.engine = None;
                    unrun(&mut self.running, &job_id);
                }
            }
            Command::CheckUpdate => {
                let input = Input::UpdateChecked { result: Ok(None) };
                self.input_later(w, Duration::from_millis(5), input);
            }
            Command::ApplyUpdate { .. } => {
                let input = Input::UpdateApplied {
                    result: Err("no updates in the simulation".into()),
                };
                self.input_later(w, Duration::from_millis(5), input);
            }
            Command::Exit { code, reason } => {
                self.workers[w].exited = true;
                self.violation_of_worker(w, format!("worker {w}: exited {code:?}: {reason}"));
            }
        }
    }

    /// The drain of worker `w` ended in `Wait { until }`: its deadline must lie ahead, and
    /// the queue gets it when it changed.
    fn schedule_worker_timer(&mut self, w: usize, until: Option<Mono>) {
        if let Some(u) = until {
            if u <= self.now {
                self.violation_of_worker(w, format!("worker {w}: deadline {u} not after now"));
            }
        }
        let wk = &mut self.workers[w];
        if wk.timer_at != until {
            wk.timer_at = until;
            wk.timer_version += 1;
            if let Some(u) = until {
                let version = wk.timer_version;
                let u = u.max(self.now + Duration::from_micros(1));
                self.at(u, Event::WorkerTimer { worker: w, version });
            }
        }
    }

    /// The studio offered `text` (an `offer` frame) to worker `w`.
    pub(crate) fn note_offer(&mut self, w: usize, text: &str) {
        if let Ok(StudioFrame::Offer { claim }) = wire::decode_studio_frame(text) {
            self.workers[w].offered.insert(claim.job_id);
        }
    }

    /// Worker `w` dispatched `claim` as `run`: its engine starts the job as its profile
    /// plans it (every engine is normal after heal).
    fn dispatch(&mut self, w: usize, run: RunId, claim: &wire::JobOfferClaim) {
        let job_id = claim.job_id.clone();
        if !self.workers[w].offered.contains(&job_id) {
            self.violation_of_worker(
                w,
                format!("worker {w}: dispatched job {job_id} that was never offered to it"),
            );
        }
        if let Some(e) = &self.workers[w].engine {
            let held = e.job_id.clone();
            self.violation_of_worker(
                w,
                format!("worker {w}: dispatched {job_id} while {held} is still in flight"),
            );
        }
        let n = self.running.entry(job_id.clone()).or_insert(0);
        *n += 1;
        if *n > 1 {
            self.report.concurrent_runs += 1;
        }
        let profile = if self.chaos() {
            self.workers[w].profile
        } else {
            EngineProfile::Normal
        };
        let kind = claim.task.kind();
        let ok = testing::job_success(kind, json!({"kind": kind.as_str(), "by": w}));
        let plan = profile.plan(&mut self.rng);
        let wk = &mut self.workers[w];
        wk.attempts += 1;
        let attempt = wk.attempts;
        wk.engine = Some(EngineJob {
            job_id,
            run,
            attempt,
            outcome: faults::outcome(&plan, ok),
            hung: plan.hangs,
        });
        if !plan.hangs {
            self.after(plan.latency, Event::EngineDone { worker: w, attempt });
        }
    }

    /// Worker `w`'s engine finished run `attempt` (unless it was cancelled or replaced).
    pub(crate) fn engine_done(&mut self, w: usize, attempt: u64) {
        let wk = &mut self.workers[w];
        let Some(e) = wk.engine.take_if(|e| e.attempt == attempt) else {
            return;
        };
        unrun(&mut self.running, &e.job_id);
        if self.cfg.sabotage == Sabotage::LoseEngineResults && self.rng.chance(0.2) {
            return;
        }
        let key = (e.job_id.clone(), w);
        let process = self.workers[w].process;
        if let Some(earlier) = self.results_pending.insert(key.clone(), process) {
            if earlier != process {
                // Offered again after a crash: the earlier result never reached the studio.
                self.results_lost.push(key);
            }
        }
        if self.crash_after_result() {
            // The worst moment: the result is on its way (frame or upload), unacknowledged.
            let d = self.rng.between(Duration::ZERO, Duration::from_millis(20));
            let process = self.workers[w].process;
            self.after(d, Event::CrashWorker { worker: w, process });
        }
        let input = Input::JobFinished {
            job_id: e.job_id,
            run: e.run,
            outcome: e.outcome,
        };
        self.feed(w, input);
    }

    /// Feeds `input` to worker `w` `d` from now, unless its process dies first.
    pub(crate) fn input_later(&mut self, w: usize, d: Duration, input: Input) {
        let process = self.workers[w].process;
        self.after(
            d,
            Event::WorkerInput {
                worker: w,
                process,
                input: Box::new(input),
            },
        );
    }

    /// Worker `w`'s process is killed, if it runs registered: its machine, engine,
    /// timers and sockets are gone (the studio sees each link reset a latency later); its
    /// durable outbox stays. It starts again 1-10 s later ([`World::restart`]).
    pub(crate) fn crash(&mut self, w: usize) {
        let wk = &self.workers[w];
        if wk.down || wk.exited || wk.driver.worker.config().credentials.is_none() {
            return;
        }
        self.report.crashes += 1;
        self.hash_str("crash", &w.to_string());
        if let Some(e) = self.workers[w].engine.take() {
            unrun(&mut self.running, &e.job_id);
        }
        let wk = &mut self.workers[w];
        wk.down = true;
        wk.process += 1;
        wk.timer_at = None;
        wk.timer_version += 1;
        wk.last_result_frame = None;
        let links = wk.conn_links.take();
        self.current_link[w] = None;
        for link in links {
            let l = &mut self.links[link];
            l.worker_open = false;
            if !l.dead {
                l.dead = true;
                let d = self.latency();
                self.after(d, Event::StudioSeesReset { link });
            }
            self.retire_if_closed(link);
        }
        let d = self
            .rng
            .between(Duration::from_secs(1), Duration::from_secs(10));
        let process = self.workers[w].process;
        self.after(d, Event::Restart { worker: w, process });
    }

    /// Crashed worker `w` starts again: a new machine on the same config (a new seed),
    /// handed the durable outbox (`Input::Restore`) before `Start`. Its trace restarts
    /// too: a failing seed's trace of it covers the last process.
    pub(crate) fn restart(&mut self, w: usize, process: u32) {
        let wk = &mut self.workers[w];
        if !wk.down || wk.process != process {
            return;
        }
        let mut cfg = wk.driver.worker.config().clone();
        cfg.seed = self.rng.next_u64();
        wk.driver = Driver::new(cfg);
        wk.down = false;
        wk.trace.clear();
        let results: Vec<KeptResult> = wk.outbox.values().cloned().collect();
        if !results.is_empty() {
            self.feed(w, Input::Restore { results });
        }
        self.feed(w, Input::Start);
    }

    /// A frame of worker `w` reached the studio: a result frame names its job.
    pub(crate) fn note_result_arrived(&mut self, w: usize, text: &str) {
        if faults::is_result_frame(text) {
            let frame: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
            if let Some(job_id) = frame["jobId"].as_str() {
                self.results_pending.remove(&(job_id.to_string(), w));
            }
        }
    }

    /// The job `input` offers worker `w` when it is one whose result the studio has not
    /// received and whose durable outbox keeps it as a `fail` frame.
    pub(crate) fn reoffer_of_held_fail(&self, w: usize, input: &Input) -> Option<String> {
        if self.results_pending.is_empty() {
            return None;
        }
        let Input::Frame { text, .. } = input else {
            return None;
        };
        if !text.starts_with(r#"{"type":"offer""#) {
            return None;
        }
        let offer: serde_json::Value = serde_json::from_str(text).ok()?;
        let job_id = offer["claim"]["jobId"].as_str()?.to_string();
        let kept = self.workers[w].outbox.get(&job_id)?;
        let fail = matches!(&kept.body, KeptBody::Frame { text } if faults::is_fail_frame(text));
        (fail && self.results_pending.contains_key(&(job_id.clone(), w))).then_some(job_id)
    }

    /// Worker `w` was offered `job_id` again while it kept a `fail` for it: if it dropped
    /// that copy (the protocol's answer: the re-offer asks for a new attempt, which a
    /// failure asked for too, and a held failure cannot tell whether the studio settled it
    /// already), the failure is superseded, not lost, whichever process of the worker
    /// produced it. The new attempt's result is owed instead.
    pub(crate) fn note_fail_superseded(&mut self, w: usize, job_id: String) {
        if !self.workers[w].outbox.contains_key(&job_id) {
            self.results_pending.remove(&(job_id, w));
        }
    }

    /// Whether this offer is also delivered to another worker (the cross-wired sabotage).
    pub(crate) fn cross_wired(&mut self) -> bool {
        self.cfg.sabotage == Sabotage::CrossWireOffers && self.rng.chance(0.2)
    }
}

/// One engine fewer runs `job`.
fn unrun(running: &mut BTreeMap<String, u32>, job: &str) {
    if let Some(n) = running.get_mut(job) {
        *n -= 1;
        if *n == 0 {
            running.remove(job);
        }
    }
}
