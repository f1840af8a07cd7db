//! What a run found ([`SimReport`]), its hash, and the traces a failing seed leaves.

use std::collections::BTreeSet;

use sha2::Digest;
use studio_core::studio::JobState;
use studio_core::wire;
use studio_core::worker::{Command, Input, Now, WorkerConfig};
use studio_core::Mono;

use crate::world::World;
use crate::TRACE_ALL_UP_TO;

/// One recorded step of a worker machine.
#[derive(Clone, Debug)]
pub struct TraceStep {
    pub now: Now,
    pub input: Input,
    pub commands: Vec<Command>,
}

/// Every input one worker machine got, with the commands of each drain.
#[derive(Clone, Debug)]
pub struct WorkerTrace {
    pub config: WorkerConfig,
    pub steps: Vec<TraceStep>,
}

/// What a run found.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    pub seed: u64,
    pub workers: usize,
    pub submitted: usize,
    /// Jobs done (completed once).
    pub done: usize,
    /// Jobs failed for a non-retryable error or with their attempts spent.
    pub failed: usize,
    /// Submitted jobs never finished, plus [`SimReport::lost_results`].
    pub lost: usize,
    /// Results an engine finished that never reached the studio (neither as a frame nor
    /// as an upload), whatever became of their jobs.
    pub lost_results: usize,
    /// Worker processes killed (and started again).
    pub crashes: u32,
    /// Offers that arrived undecodable (of poison jobs).
    pub poison_offers: u32,
    /// Jobs completed more than once.
    pub doubled: usize,
    /// The fleet did not quiesce after heal.
    pub stuck: bool,
    /// Broken invariants (the first few, with the time).
    pub violations: Vec<String>,
    pub violation_count: usize,
    /// Jobs that ran on two engines at once (allowed: a claim expired while the first
    /// worker was cut off; the studio still completes them once).
    pub concurrent_runs: usize,
    /// Worker handles.
    pub steps: u64,
    /// Studio handles (frames, connects, disconnects, ticks) and HTTP calls.
    pub studio_steps: u64,
    pub faults_injected: u64,
    pub studio_restarts: u32,
    /// Simulated time at the end.
    pub end: Mono,
    /// When the fleet quiesced, if it did.
    pub quiesced_at: Option<Mono>,
    /// SHA-256 of every input and command of every machine (empty unless `hash`).
    pub hash: String,
    /// Per-worker traces, by worker index (empty unless `record`).
    pub traces: Vec<(usize, WorkerTrace)>,
    /// Workers named by a violation.
    pub implicated: BTreeSet<usize>,
}

impl SimReport {
    /// Nothing lost, doubled or stuck, and no invariant broke.
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.doubled == 0 && !self.stuck && self.violation_count == 0
    }
}

/// What the report hash covers of a worker's input or command: its `Debug` text, except
/// that a dispatch and its result are written without their run id. The hash predates run
/// ids, and a run id follows from the dispatches before it, which the hash covers already.
pub(crate) enum Hashed<'a> {
    Input(&'a Input),
    Command(&'a Command),
}

impl std::fmt::Debug for Hashed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hashed::Input(Input::JobFinished {
                job_id, outcome, ..
            }) => f
                .debug_struct("JobFinished")
                .field("job_id", job_id)
                .field("outcome", outcome)
                .finish(),
            Hashed::Input(input) => input.fmt(f),
            Hashed::Command(Command::Dispatch { claim, .. }) => {
                f.debug_struct("Dispatch").field("claim", claim).finish()
            }
            Hashed::Command(command) => command.fmt(f),
        }
    }
}

impl World {
    /// Adds `s` to the report hash, tagged with what it is and the time.
    pub(crate) fn hash_str(&mut self, tag: &str, s: &str) {
        if let Some(h) = &mut self.hasher {
            h.update(tag.as_bytes());
            h.update(self.now.0.to_le_bytes());
            h.update(s.as_bytes());
            h.update([0]);
        }
    }

    /// The end of a run: the last whole check, the unsettled workers implicated, the jobs
    /// counted, the hash and the traces.
    pub(crate) fn finish(mut self) -> SimReport {
        self.full_check();
        if !self.quiesced {
            self.implicate_unsettled();
        }
        let mut bad_jobs = Vec::new();
        let (mut done, mut failed, mut lost, mut doubled) = (0, 0, 0, 0);
        for id in &self.submitted {
            match self.studio.job(id).map(|j| (&j.state, j.completions)) {
                // A poison job cannot run anywhere: done, it was decoded by mistake.
                Some((JobState::Done { .. }, _)) if self.poisoned.contains(id) => {
                    self.report.violation_count += 1;
                    self.report
                        .violations
                        .push(format!("poison job {id} completed"));
                    bad_jobs.push(id.clone());
                }
                Some((JobState::Done { .. }, c)) => {
                    done += 1;
                    if c > 1 {
                        doubled += 1;
                        bad_jobs.push(id.clone());
                    }
                }
                Some((JobState::Failed { .. }, _)) => failed += 1,
                _ => {
                    lost += 1;
                    bad_jobs.push(id.clone());
                }
            }
        }
        let mut never_arrived = std::mem::take(&mut self.results_lost);
        never_arrived.extend(std::mem::take(&mut self.results_pending).into_keys());
        for (job_id, w) in &never_arrived {
            self.report.implicated.insert(*w);
            let what = format!("worker {w}: the result of job {job_id} never reached the studio");
            self.violation(what);
        }
        lost += never_arrived.len();
        for id in bad_jobs {
            self.implicate_job(&id);
        }
        let mut r = std::mem::take(&mut self.report);
        r.submitted = self.submitted.len();
        (r.done, r.failed, r.lost, r.doubled) = (done, failed, lost, doubled);
        r.lost_results = never_arrived.len();
        let doubled_events = self.completions.values().filter(|n| **n > 1).count();
        r.doubled = r.doubled.max(doubled_events);
        r.stuck = !self.quiesced;
        r.end = self.now;
        if let Some(h) = self.hasher.take() {
            r.hash = wire::hex(&h.finalize());
        }
        if self.cfg.record {
            r.traces = self
                .workers
                .drain(..)
                .enumerate()
                .filter(|(_, wk)| !wk.trace.is_empty())
                .map(|(k, wk)| {
                    let config = wk.driver.worker.config().clone();
                    (
                        k,
                        WorkerTrace {
                            config,
                            steps: wk.trace,
                        },
                    )
                })
                .collect();
        }
        r
    }
}

/// The workers whose traces a failing run should write (`SimConfig::record_only` of the
/// recording re-run): every worker of a fleet of at most [`TRACE_ALL_UP_TO`], otherwise
/// only the implicated ones (named by a violation, involved with a bad job, or unsettled
/// at the end), since a full recording of 10 000 workers is gigabytes.
pub fn trace_selection(r: &SimReport) -> Option<BTreeSet<usize>> {
    (r.workers > TRACE_ALL_UP_TO).then(|| r.implicated.clone())
}

/// A one-line description of a report.
pub fn describe(r: &SimReport) -> String {
    format!(
        "seed={} workers={} jobs={} done={} failed={} lost={} lost_results={} doubled={} stuck={} \
         violations={} concurrent_runs={} faults={} restarts={} crashes={} poison_offers={} \
         steps={} studio_steps={} end={} quiesced_at={}",
        r.seed,
        r.workers,
        r.submitted,
        r.done,
        r.failed,
        r.lost,
        r.lost_results,
        r.doubled,
        r.stuck,
        r.violation_count,
        r.concurrent_runs,
        r.faults_injected,
        r.studio_restarts,
        r.crashes,
        r.poison_offers,
        r.steps,
        r.studio_steps,
        r.end,
        r.quiesced_at
            .map(|t| t.to_string())
            .unwrap_or_else(|| "-".into()),
    )
}
