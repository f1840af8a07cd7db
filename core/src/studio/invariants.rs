//! The machine's internal consistency, checked by tests and the simulation.

use std::collections::BTreeSet;

use super::queue::{compatible, eligible, job_fits, worker_fits};
use super::state::ConnPhase;
use super::{JobState, Studio};

impl Studio {
    /// Checks the machine's internal consistency, for tests and the simulation: every
    /// index agrees with the records, each job is held by at most one worker and that
    /// worker's slot points back at it, `completions <= 1` (and `== 1` exactly when done),
    /// offered jobs have a deadline, disconnected running claims are watched, and no idle
    /// worker could serve a queued job. Cost is linear in the state plus
    /// (idle workers x queued jobs).
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut queued = 0;
        let mut offered = 0;
        let mut finished = 0;
        for (seq, job) in &self.jobs {
            let id = &job.id;
            if job.seq != *seq || self.job_index.get(id) != Some(seq) {
                return Err(format!("job {id}: index out of sync"));
            }
            if job.completions > 1 {
                return Err(format!("job {id}: completed {} times", job.completions));
            }
            let done = matches!(job.state, JobState::Done { .. });
            if done != (job.completions == 1) {
                return Err(format!(
                    "job {id}: state {} with {} completions",
                    job.state.name(),
                    job.completions
                ));
            }
            if (job.state == JobState::Queued) != self.queue.contains(*seq) {
                return Err(format!("job {id}: queue membership disagrees with state"));
            }
            if job.state == JobState::Queued {
                queued += 1;
                let in_buckets = job_fits(&job.spec)
                    .iter()
                    .all(|fit| self.queue.by_fit.get(fit).is_some_and(|b| b.contains(seq)));
                if !in_buckets {
                    return Err(format!("job {id}: queued but not in its fit buckets"));
                }
            }
            match (&job.state, job.offer_deadline) {
                (JobState::Offered { .. }, Some(d))
                    if self.offer_deadlines.contains(&(d, *seq)) =>
                {
                    offered += 1;
                }
                (JobState::Offered { .. }, _) => {
                    return Err(format!("job {id}: offered without a deadline"))
                }
                (_, Some(_)) => {
                    return Err(format!("job {id}: deadline while {}", job.state.name()))
                }
                _ => {}
            }
            if let Some(holder) = job.state.holder() {
                let slot = self.workers.get(holder).and_then(|w| w.slot);
                if slot != Some(*seq) {
                    return Err(format!(
                        "job {id}: {} on {holder} but that worker's slot is {slot:?}",
                        job.state.name()
                    ));
                }
                if !job.offered_to.contains(holder) {
                    return Err(format!("job {id}: held by {holder} without an offer"));
                }
            }
            if job.state.is_finished() {
                finished += 1;
                match job.finish_seq {
                    Some(f) if self.finished.get(&f) == Some(seq) => {}
                    _ => return Err(format!("job {id}: finished but not indexed")),
                }
            }
        }
        let bucketed: usize = self.queue.by_fit.values().map(BTreeSet::len).sum();
        // Each queued job sits in two buckets: its model's and its engine's.
        if queued != self.queue.fifo.len()
            || 2 * queued != bucketed
            || offered != self.offer_deadlines.len()
        {
            return Err("queue or offer-deadline index has stray entries".into());
        }
        if finished != self.finished.len() || self.job_index.len() != self.jobs.len() {
            return Err("finished or id index has stray entries".into());
        }
        if finished > self.cfg.max_finished_jobs {
            return Err(format!("{finished} finished jobs kept, over the limit"));
        }

        let mut slots = BTreeSet::new();
        let mut idle = 0;
        let mut idle_fits = 0;
        let mut orphans = 0;
        for (id, w) in self.workers.iter() {
            if let Some(seq) = w.slot {
                if !slots.insert(seq) {
                    return Err(format!("job seq {seq} held by two workers"));
                }
                let ok = self
                    .jobs
                    .get(&seq)
                    .is_some_and(|j| j.state.holder() == Some(id.as_str()));
                if !ok {
                    return Err(format!("worker {id}: slot {seq} not held by it"));
                }
            }
            if let Some(c) = w.session {
                match self.conns.get(&c) {
                    Some(rec) if *rec.worker_id == **id && rec.phase == ConnPhase::Welcomed => {}
                    _ => return Err(format!("worker {id}: session {c} is not its welcomed conn")),
                }
            }
            let handle = self.workers.handle(id);
            let indexed = handle.is_some_and(|h| self.idle.set.contains(&(w.connect_seq, h)));
            if w.in_idle != eligible(w) || w.in_idle != indexed {
                return Err(format!("worker {id}: idle index disagrees"));
            }
            if w.in_idle {
                idle += 1;
                let fits = w.capabilities.as_ref().map(worker_fits).unwrap_or_default();
                if fits != w.idle_fits {
                    return Err(format!("worker {id}: indexed under stale capabilities"));
                }
                let key = handle.map(|h| (w.connect_seq, h));
                for f in &w.idle_fits {
                    let bucket = self.idle.by_fit.get(f);
                    if !key.is_some_and(|k| bucket.is_some_and(|b| b.contains(&k))) {
                        return Err(format!("worker {id}: missing from its fit bucket"));
                    }
                }
                idle_fits += w.idle_fits.len();
            } else if !w.idle_fits.is_empty() {
                return Err(format!("worker {id}: fits kept while not idle"));
            }
            let running = w
                .slot
                .and_then(|s| self.jobs.get(&s))
                .is_some_and(|j| matches!(j.state, JobState::Running { .. }));
            let should_orphan = w.session.is_none() && running;
            match w.orphan_since {
                Some(t) if should_orphan && self.orphans.contains(&(t, id.clone())) => orphans += 1,
                None if !should_orphan => {}
                _ => return Err(format!("worker {id}: orphan index disagrees")),
            }
            if w.session.is_none() && w.slot.is_some() && !running {
                return Err(format!("worker {id}: disconnected with an open offer"));
            }
            if w.logs.len() > self.cfg.log_ring_capacity {
                return Err(format!("worker {id}: log ring over capacity"));
            }
        }
        let bucketed: usize = self.idle.by_fit.values().map(BTreeSet::len).sum();
        if idle != self.idle.set.len() || idle_fits != bucketed || orphans != self.orphans.len() {
            return Err("idle or orphan index has stray entries".into());
        }
        if self.session_index.len() != self.conns.len() {
            return Err("session index has stray entries".into());
        }
        for (c, rec) in &self.conns {
            if rec.indexed > rec.last_frame || !self.session_index.contains(&(rec.indexed, *c)) {
                return Err(format!("conn {c}: not in the session index"));
            }
            if rec.phase == ConnPhase::Welcomed
                && self.workers.get(&rec.worker_id).and_then(|w| w.session) != Some(*c)
            {
                return Err(format!("conn {c}: welcomed but not its worker's session"));
            }
        }
        if (!self.conns.is_empty() || !self.orphans.is_empty()) && self.next_sweep.is_none() {
            return Err("sessions to watch but no sweep armed".into());
        }
        for (_, h) in &self.idle.set {
            let Some(caps) = self.workers.at(*h).and_then(|w| w.capabilities.as_ref()) else {
                continue;
            };
            let wid = self.workers.id(*h).map_or("", |id| id);
            for seq in &self.queue.fifo {
                if self
                    .jobs
                    .get(seq)
                    .is_some_and(|j| compatible(caps, &j.spec))
                {
                    return Err(format!(
                        "idle worker {wid} could serve queued job seq {seq}"
                    ));
                }
            }
        }
        Ok(())
    }
}
