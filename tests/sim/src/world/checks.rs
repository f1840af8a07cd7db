//! The invariants the simulation checks, and the violations it records.
//!
//! Checks run after every step, incrementally: a worker's step checks that worker
//! (deadline after now and no timer storm as its commands are handled, only offered jobs
//! dispatched and one engine run at a time as it dispatches, its log queue within its cap
//! after the drain); a studio step checks the jobs and workers its events named (claims,
//! slots, offer deadlines, completions). The whole studio ([`Studio::check_invariants`],
//! linear in its state) is checked every `check_every` (`max(10 s, workers / 100 s)`), at
//! heal and at the end.
//!
//! A violation names the workers involved ([`SimReport::implicated`]): those it names,
//! every worker a lost or doubled job was offered to or ran on, and (stuck) the workers
//! that never settled; a failing large fleet writes traces for those only.
//!
//! [`Studio::check_invariants`]: studio_core::studio::Studio::check_invariants
//! [`SimReport::implicated`]: crate::SimReport::implicated

use studio_core::studio::{JobState, StudioEvent};

use crate::world::World;
use crate::UNSETTLED_TRACES;

impl World {
    /// Records a violation (the first 20 with their time).
    pub(crate) fn violation(&mut self, what: String) {
        self.report.violation_count += 1;
        if self.report.violations.len() < 20 {
            let line = format!("t={} {what}", self.now);
            self.report.violations.push(line);
        }
    }

    /// A violation of worker `w`.
    pub(crate) fn violation_of_worker(&mut self, w: usize, what: String) {
        self.report.implicated.insert(w);
        self.violation(what);
    }

    /// A violation about a worker the studio names by its id.
    fn violation_of_worker_id(&mut self, worker_id: &str, what: String) {
        match self.wid_index.get(worker_id) {
            Some(&w) => self.violation_of_worker(w, what),
            None => self.violation(what),
        }
    }

    /// A violation about a job: implicates every worker involved with it.
    fn violation_of_job(&mut self, job_id: &str, what: String) {
        self.implicate_job(job_id);
        self.violation(what);
    }

    /// Implicates the workers involved with a job: its holder, every worker it was offered
    /// to, and any whose engine runs it.
    pub(crate) fn implicate_job(&mut self, job_id: &str) {
        let mut ids: Vec<String> = Vec::new();
        if let Some(j) = self.studio.job(job_id) {
            ids.extend(j.state.holder().map(str::to_string));
            ids.extend(j.last_worker().map(str::to_string));
            ids.extend(j.offered_to().map(str::to_string));
        }
        for id in ids {
            if let Some(&w) = self.wid_index.get(&id) {
                self.report.implicated.insert(w);
            }
        }
        for (w, wk) in self.workers.iter().enumerate() {
            if wk.engine.as_ref().is_some_and(|e| e.job_id == job_id) {
                self.report.implicated.insert(w);
            }
        }
    }

    /// Implicates every worker and job a free-text message names (a studio invariant's
    /// error names its records by id).
    fn implicate_text(&mut self, text: &str) {
        let words: Vec<&str> = text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .filter(|s| !s.is_empty())
            .collect();
        for word in words {
            if let Some(&w) = self.wid_index.get(word) {
                self.report.implicated.insert(w);
            } else if self.studio.job(word).is_some() {
                self.implicate_job(word);
            }
        }
    }

    /// The per-step check of a worker machine, after its drain: what one step can break
    /// that its commands did not show.
    pub(crate) fn check_worker(&mut self, w: usize) {
        let worker = &self.workers[w].driver.worker;
        let len = worker.log_queue_len();
        let cap = worker.config().limits.log_queue_cap;
        if len > cap {
            self.violation_of_worker(w, format!("worker {w}: log queue {len} over its cap {cap}"));
        }
    }

    /// Notes what a studio event tells the checks: the jobs and workers it names (checked
    /// after the step), completions (a second one is a violation), finished jobs, and
    /// protocol violations (a worker broke the protocol: a violation).
    pub(crate) fn observe(&mut self, e: StudioEvent) {
        match &e {
            StudioEvent::JobOffered { job_id, worker_id }
            | StudioEvent::JobAccepted {
                job_id, worker_id, ..
            }
            | StudioEvent::JobRejected {
                job_id, worker_id, ..
            }
            | StudioEvent::JobReclaimed { job_id, worker_id }
            | StudioEvent::JobCompleted {
                job_id, worker_id, ..
            }
            | StudioEvent::StaleFrame {
                job_id, worker_id, ..
            } => {
                self.touched_jobs.push(job_id.clone());
                self.touched_workers.push(worker_id.clone());
            }
            StudioEvent::JobSubmitted { job_id }
            | StudioEvent::JobRequeued { job_id, .. }
            | StudioEvent::JobFailed { job_id, .. } => self.touched_jobs.push(job_id.clone()),
            StudioEvent::ConnOpened { worker_id, .. }
            | StudioEvent::Welcomed { worker_id, .. }
            | StudioEvent::AuthFailed { worker_id, .. }
            | StudioEvent::ProtocolViolation { worker_id, .. }
            | StudioEvent::DuplicateSession { worker_id, .. }
            | StudioEvent::SessionExpired { worker_id, .. }
            | StudioEvent::ConnLost { worker_id, .. }
            | StudioEvent::WorkerRemoved { worker_id } => {
                self.touched_workers.push(worker_id.clone())
            }
            _ => {}
        }
        match e {
            StudioEvent::JobCompleted { job_id, .. } => {
                let n = self.completions.entry(job_id.clone()).or_insert(0);
                *n += 1;
                let n = *n;
                if n > 1 {
                    self.violation_of_job(&job_id, format!("job {job_id} completed {n} times"));
                }
                self.finished.insert(job_id);
            }
            StudioEvent::JobFailed { job_id, .. } => {
                self.finished.insert(job_id);
            }
            StudioEvent::ProtocolViolation { ref worker_id, .. } => {
                let what = format!("studio saw a protocol violation: {e:?}");
                self.violation_of_worker_id(worker_id, what);
            }
            _ => {}
        }
    }

    /// The per-step check of the studio machine, after its drain: the jobs and workers its
    /// events named (a step that names none, a heartbeat, changes no claim).
    pub(crate) fn check_studio_step(&mut self) {
        if self.touched_jobs.is_empty() && self.touched_workers.is_empty() {
            return;
        }
        let mut jobs = std::mem::take(&mut self.touched_jobs);
        let mut workers = std::mem::take(&mut self.touched_workers);
        for id in &jobs {
            self.check_job(id);
        }
        for wid in &workers {
            self.check_studio_worker(wid);
        }
        // The buffers keep their allocations for the next step.
        jobs.clear();
        workers.clear();
        self.touched_jobs = jobs;
        self.touched_workers = workers;
    }

    /// A job a studio step named: completed at most once (exactly when done), an offer
    /// deadline exactly while offered and not past, held only by a worker it was offered
    /// to whose slot is this job, and a slot released when the holder changed.
    fn check_job(&mut self, id: &str) {
        let now = self.now;
        let Some(j) = self.studio.job(id) else {
            self.violation_of_job(id, format!("job {id}: named by an event but unknown"));
            return;
        };
        let done = matches!(j.state, JobState::Done { .. });
        let mut bad = Vec::new();
        if j.completions > 1 || done != (j.completions == 1) {
            bad.push(format!(
                "job {id}: state {} with {} completions",
                j.state.name(),
                j.completions
            ));
        }
        match (&j.state, j.offer_deadline()) {
            (JobState::Offered { .. }, Some(d)) if d >= now => {}
            (JobState::Offered { .. }, d) => {
                bad.push(format!("job {id}: offered with deadline {d:?} at {now}"))
            }
            (_, Some(_)) => bad.push(format!("job {id}: deadline while {}", j.state.name())),
            _ => {}
        }
        let holder = j.state.holder().map(str::to_string);
        if let Some(h) = &holder {
            if !j.offered_to().any(|o| o == h) {
                bad.push(format!("job {id}: held by {h} without an offer"));
            }
            let slot = self.studio.worker_status(h).and_then(|v| v.current_job);
            if slot.as_deref() != Some(id) {
                bad.push(format!("job {id}: held by {h} whose slot is {slot:?}"));
            }
        }
        let prev = match &holder {
            Some(h) => self.holders.insert(id.to_string(), h.clone()),
            None => self.holders.remove(id),
        };
        if let Some(p) = prev.filter(|p| holder.as_ref() != Some(p)) {
            let slot = self.studio.worker_status(&p).and_then(|v| v.current_job);
            if slot.as_deref() == Some(id) {
                bad.push(format!(
                    "job {id}: moved from {p}, whose slot still points at it"
                ));
            }
        }
        for what in bad {
            self.violation_of_job(id, what);
        }
    }

    /// A worker a studio step named: its slot's job is held by it, idle only when connected
    /// with an empty slot, connected exactly when it has a connection.
    fn check_studio_worker(&mut self, wid: &str) {
        let Some(v) = self.studio.worker_status(wid) else {
            return;
        };
        let mut bad = Vec::new();
        if let Some(j) = &v.current_job {
            let holder = self.studio.job(j).and_then(|r| r.state.holder());
            if holder != Some(wid) {
                bad.push(format!("worker {wid}: slot {j} held by {holder:?}"));
            }
        }
        if v.idle && (v.current_job.is_some() || !v.connected) {
            bad.push(format!(
                "worker {wid}: idle with slot {:?}, connected {}",
                v.current_job, v.connected
            ));
        }
        if v.connected != v.conn.is_some() {
            bad.push(format!(
                "worker {wid}: connected {} but conn {:?}",
                v.connected, v.conn
            ));
        }
        for what in bad {
            self.violation_of_worker_id(wid, what);
        }
    }

    /// The whole-machine check of the studio (linear in its state; the workers are checked
    /// after each of their steps, see [`World::check_worker`]).
    pub(crate) fn full_check(&mut self) {
        self.last_full_check = self.now;
        if let Err(e) = self.studio.check_invariants() {
            self.implicate_text(&e);
            self.violation(format!("studio invariant: {e}"));
        }
    }

    /// Whether worker `w` is connected over a clean link, holding and running no job.
    fn worker_settled(&self, w: usize) -> bool {
        let clean = self.current_link[w].is_some_and(|l| self.links[l].clean());
        self.workers[w].settled(clean)
    }

    /// Every job finished, the studio holding exactly one session per worker, and every
    /// worker settled.
    pub(crate) fn quiescent(&self) -> bool {
        if self.finished.len() < self.submitted.len() {
            return false;
        }
        let stats = self.studio.stats();
        if stats.connections != self.workers.len() || stats.connected_workers != self.workers.len()
        {
            return false;
        }
        (0..self.workers.len()).all(|w| self.worker_settled(w))
    }

    /// A run that did not quiesce: implicates the workers that keep it from quiescing, at
    /// most [`UNSETTLED_TRACES`] of them, the lowest indices first.
    pub(crate) fn implicate_unsettled(&mut self) {
        let unsettled: Vec<usize> = (0..self.workers.len())
            .filter(|&w| !self.worker_settled(w))
            .take(UNSETTLED_TRACES)
            .collect();
        self.report.implicated.extend(unsettled);
    }
}
