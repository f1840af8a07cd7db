//! Offers: who gets which job, and what the worker answers (`accept`, `reject`,
//! `completeJson`, `fail`), including answers that arrive after the studio moved on.

use serde_json::Value;

use crate::wire::{JobOfferClaim, RejectCode, StudioFrame};

use super::queue::job_fits;
use super::{ConnId, JobResult, JobSpec, JobState, RequeueReason, Studio, StudioEvent};

/// How a completion-like message relates to the sender.
pub(super) enum Claim {
    /// Accepted by (running on) the sender.
    Held,
    /// Offered to the sender, no accept seen yet. A result frame for it is a re-sent result
    /// of an earlier attempt (the worker accepts before it runs), not this offer's outcome.
    Offered,
    /// Queued again and the sender was the last holder.
    Late,
    /// The sender held it once; not any more.
    Stale,
    /// Never offered to the sender.
    Foreign,
}

impl Studio {
    /// Offers work to the workers and jobs that changed since the last dispatch. A freed
    /// worker takes the oldest queued job it can serve; a newly queued job goes to the
    /// earliest-connected idle worker that can serve it. Workers go first so that a freed
    /// worker never skips an older job for a newer one.
    pub(super) fn dispatch(&mut self) {
        let workers = std::mem::take(&mut self.dirty_workers);
        for (connect_seq, h) in workers {
            let Some(w) = self.workers.at(h) else {
                continue;
            };
            if !w.in_idle || w.connect_seq != connect_seq {
                continue;
            }
            if let Some(seq) = self.queue.first_fit(&w.idle_fits) {
                if let Some(id) = self.workers.id(h).cloned() {
                    self.offer(seq, &id);
                }
            }
        }
        let jobs = std::mem::take(&mut self.dirty_jobs);
        for seq in jobs {
            if !self.queue.contains(seq) {
                continue;
            }
            let Some(job) = self.jobs.get(&seq) else {
                continue;
            };
            let idle = self.idle.first_fit(&job_fits(&job.spec));
            if let Some(id) = idle.and_then(|(_, h)| self.workers.id(h).cloned()) {
                self.offer(seq, &id);
            }
        }
    }

    pub(super) fn offer(&mut self, seq: u64, worker_id: &str) {
        let now = self.now;
        let deadline = now + self.cfg.offer_timeout;
        let Some(conn) = self.workers.get(worker_id).and_then(|w| w.session) else {
            return;
        };
        let Some(job) = self.jobs.get_mut(&seq) else {
            return;
        };
        if job.state != JobState::Queued {
            return;
        }
        self.queue.remove(seq, &job_fits(&job.spec));
        job.state = JobState::Offered {
            worker_id: worker_id.to_string(),
        };
        job.offered_to.insert(worker_id.to_string());
        job.last_worker = Some(worker_id.to_string());
        job.offer_deadline = Some(deadline);
        job.updated_at = now;
        self.offer_deadlines.insert((deadline, seq));
        let frame = StudioFrame::Offer {
            claim: Box::new(claim_for(&job.id, &job.spec)),
        };
        let job_id = job.id.clone();
        if let Some(w) = self.workers.get_mut(worker_id) {
            w.slot = Some(seq);
        }
        self.refresh(worker_id, false);
        self.send(conn, &frame);
        self.event(StudioEvent::JobOffered {
            job_id,
            worker_id: worker_id.to_string(),
        });
    }

    pub(super) fn reclaim(&mut self, seq: u64, worker_id: &str) {
        let now = self.now;
        let Some(job) = self.jobs.get_mut(&seq) else {
            return;
        };
        self.queue.remove(seq, &job_fits(&job.spec));
        job.state = JobState::Running {
            worker_id: worker_id.to_string(),
        };
        job.updated_at = now;
        let job_id = job.id.clone();
        if let Some(w) = self.workers.get_mut(worker_id) {
            w.slot = Some(seq);
            w.busy_hint = None;
            w.idle_since = None;
        }
        self.event(StudioEvent::JobReclaimed {
            job_id,
            worker_id: worker_id.to_string(),
        });
    }

    pub(super) fn classify(&self, seq: u64, worker_id: &str) -> Claim {
        let Some(job) = self.jobs.get(&seq) else {
            return Claim::Foreign;
        };
        match &job.state {
            JobState::Running { worker_id: w } if w == worker_id => Claim::Held,
            JobState::Offered { worker_id: w } if w == worker_id => Claim::Offered,
            JobState::Queued if job.last_worker.as_deref() == Some(worker_id) => Claim::Late,
            _ if job.offered_to.contains(worker_id) => Claim::Stale,
            _ => Claim::Foreign,
        }
    }

    pub(super) fn stale(&mut self, worker_id: &str, seq: u64, frame: &'static str) {
        let Some(job) = self.jobs.get(&seq) else {
            return;
        };
        let (job_id, state) = (job.id.clone(), job.state.name());
        self.clear_busy_hint(worker_id, &job_id);
        self.event(StudioEvent::StaleFrame {
            worker_id: worker_id.to_string(),
            job_id,
            frame,
            state,
        });
    }

    pub(super) fn clear_busy_hint(&mut self, worker_id: &str, job_id: &str) {
        if let Some(w) = self.workers.get_mut(worker_id) {
            if w.busy_hint.as_deref() == Some(job_id) {
                w.busy_hint = None;
            }
        }
        self.refresh(worker_id, false);
    }

    pub(super) fn on_accept(&mut self, conn: ConnId, worker_id: &str, job_id: &str) {
        let Some(&seq) = self.job_index.get(job_id) else {
            self.violation(conn, worker_id, "accept for unknown jobId");
            return;
        };
        let state = self.jobs.get(&seq).map(|j| j.state.clone());
        match state {
            Some(JobState::Offered { worker_id: w }) if w == worker_id => {
                let now = self.now;
                if let Some(job) = self.jobs.get_mut(&seq) {
                    if let Some(d) = job.offer_deadline.take() {
                        self.offer_deadlines.remove(&(d, seq));
                    }
                    job.attempts = job.attempts.saturating_add(1);
                    job.state = JobState::Running {
                        worker_id: worker_id.to_string(),
                    };
                    job.updated_at = now;
                    let attempt = job.attempts;
                    self.event(StudioEvent::JobAccepted {
                        job_id: job_id.to_string(),
                        worker_id: worker_id.to_string(),
                        attempt,
                    });
                }
            }
            Some(JobState::Running { worker_id: w }) if w == worker_id => {
                self.stale(worker_id, seq, "accept");
            }
            _ => {
                if self
                    .jobs
                    .get(&seq)
                    .is_some_and(|j| j.offered_to.contains(worker_id))
                {
                    // The worker will run it: keep offers away until it reports idle.
                    if let Some(w) = self.workers.get_mut(worker_id) {
                        if w.slot.is_none() {
                            w.busy_hint = Some(job_id.to_string());
                        }
                    }
                    self.refresh(worker_id, false);
                    self.event_stale(worker_id, seq, "accept");
                } else {
                    self.violation(
                        conn,
                        worker_id,
                        "accept for a job not offered to this worker",
                    );
                }
            }
        }
    }

    /// Like `stale` but without clearing the busy hint.
    pub(super) fn event_stale(&mut self, worker_id: &str, seq: u64, frame: &'static str) {
        if let Some(job) = self.jobs.get(&seq) {
            let e = StudioEvent::StaleFrame {
                worker_id: worker_id.to_string(),
                job_id: job.id.clone(),
                frame,
                state: job.state.name(),
            };
            self.event(e);
        }
    }

    pub(super) fn on_reject(
        &mut self,
        conn: ConnId,
        worker_id: &str,
        job_id: &str,
        reason: String,
        code: Option<RejectCode>,
    ) {
        let Some(&seq) = self.job_index.get(job_id) else {
            self.violation(conn, worker_id, "reject for unknown jobId");
            return;
        };
        let state = self.jobs.get(&seq).map(|j| j.state.clone());
        match state {
            Some(JobState::Offered { worker_id: w }) if w == worker_id => {
                let transient = code.is_some() || transient_reason(&reason);
                self.event(StudioEvent::JobRejected {
                    job_id: job_id.to_string(),
                    worker_id: worker_id.to_string(),
                    code,
                    reason: reason.clone(),
                    transient,
                });
                if transient {
                    self.release_offer(seq, RequeueReason::TransientReject, true);
                } else {
                    if let Some(job) = self.jobs.get_mut(&seq) {
                        job.attempts = job.attempts.saturating_add(1);
                        job.last_error = Some(format!("rejected by {worker_id}: {reason}"));
                    }
                    self.release_offer(seq, RequeueReason::Rejected, true);
                }
            }
            Some(JobState::Running { worker_id: w }) if w == worker_id => {
                self.violation(conn, worker_id, "reject for an accepted job");
            }
            _ => {
                if self
                    .jobs
                    .get(&seq)
                    .is_some_and(|j| j.offered_to.contains(worker_id))
                {
                    self.event_stale(worker_id, seq, "reject");
                } else {
                    self.violation(
                        conn,
                        worker_id,
                        "reject for a job not offered to this worker",
                    );
                }
            }
        }
    }

    pub(super) fn on_complete_json(
        &mut self,
        conn: ConnId,
        worker_id: &str,
        job_id: &str,
        result: Value,
        prompt: Option<String>,
    ) {
        let Some(&seq) = self.job_index.get(job_id) else {
            self.violation(conn, worker_id, "completeJson for unknown jobId");
            return;
        };
        let result = JobResult::Json { result, prompt };
        match self.classify(seq, worker_id) {
            Claim::Held | Claim::Late => {
                let late = matches!(self.classify(seq, worker_id), Claim::Late);
                self.complete(seq, worker_id, result, late);
                self.send(
                    conn,
                    &StudioFrame::CompleteAck {
                        job_id: job_id.to_string(),
                    },
                );
            }
            Claim::Offered | Claim::Stale => {
                // Already settled (or re-offered): acknowledged so the worker stops
                // re-sending it; the job's state is not touched.
                self.stale(worker_id, seq, "completeJson");
                self.send(
                    conn,
                    &StudioFrame::CompleteAck {
                        job_id: job_id.to_string(),
                    },
                );
            }
            Claim::Foreign => self.violation(
                conn,
                worker_id,
                "completeJson for a job not offered to this worker",
            ),
        }
    }

    pub(super) fn on_fail(
        &mut self,
        conn: ConnId,
        worker_id: &str,
        job_id: &str,
        error: String,
        retryable: bool,
    ) {
        let Some(&seq) = self.job_index.get(job_id) else {
            self.violation(conn, worker_id, "fail for unknown jobId");
            return;
        };
        match self.classify(seq, worker_id) {
            Claim::Held => {
                self.send(
                    conn,
                    &StudioFrame::FailAck {
                        job_id: job_id.to_string(),
                    },
                );
                let now = self.now;
                if let Some(job) = self.jobs.get_mut(&seq) {
                    job.last_error = Some(error.clone());
                    job.updated_at = now;
                }
                self.free_slot(worker_id, job_id);
                if retryable {
                    self.requeue_or_fail(seq, RequeueReason::RetryableFailure);
                } else {
                    self.fail_job(seq, error);
                }
            }
            Claim::Offered | Claim::Late | Claim::Stale => {
                // A re-sent failure of an earlier attempt: acknowledged so the worker stops
                // re-sending it; the job's state is not touched.
                self.stale(worker_id, seq, "fail");
                self.send(
                    conn,
                    &StudioFrame::FailAck {
                        job_id: job_id.to_string(),
                    },
                );
            }
            Claim::Foreign => {
                self.violation(conn, worker_id, "fail for a job not offered to this worker")
            }
        }
    }
}

/// Legacy workers reject without a code; classify their fixed reasons (§2.1, §3.9).
pub(super) fn transient_reason(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    ["paused", "only when idle", "in-flight job", "busy"]
        .iter()
        .any(|k| r.contains(k))
}

pub(super) fn claim_for(job_id: &str, spec: &JobSpec) -> JobOfferClaim {
    JobOfferClaim {
        job_id: job_id.to_string(),
        game_id: spec.game_id.clone(),
        asset_name: spec.asset_name.clone(),
        model: spec.model.clone(),
        vram_gb_estimate: spec.vram_gb_estimate,
        task: spec.task.clone(),
        model_source: spec.model_source.clone(),
    }
}
