//! Jobs: submission, the upload route, views, and every transition of a job's state
//! (requeue, fail, complete) with its effect on the worker that held it.

use std::collections::BTreeSet;

use crate::time::Now;
use crate::wire::{self, StudioFrame};

use super::offers::{claim_for, Claim};
use super::queue::job_fits;
use super::{
    HttpError, JobRecord, JobResult, JobSpec, JobState, RequeueReason, Studio, StudioEvent,
    StudioStats, Upload,
};

impl Studio {
    /// Queues a job and offers it if a worker can take it. 400 for an empty model or a
    /// negative/non-finite VRAM estimate, 413 when the offer would exceed the frame limit,
    /// 429 when `max_queued_jobs` unfinished jobs exist.
    pub fn submit(&mut self, now: Now, job: JobSpec) -> Result<String, HttpError> {
        self.advance(now)?;
        let result = self.submit_inner(job);
        self.finish();
        result
    }

    pub(super) fn submit_inner(&mut self, spec: JobSpec) -> Result<String, HttpError> {
        if spec.model.is_empty() {
            return Err(HttpError::bad_request("model is required"));
        }
        if !spec.vram_gb_estimate.is_finite() || spec.vram_gb_estimate < 0.0 {
            return Err(HttpError::bad_request(
                "vramGbEstimate must be a finite number >= 0",
            ));
        }
        let unfinished = self.jobs.len().saturating_sub(self.finished.len());
        if unfinished >= self.cfg.max_queued_jobs {
            return Err(HttpError::new(429, "job queue is full"));
        }
        let seq = self.next_job + 1;
        let id = format!("job-{seq}");
        let offer_len = wire::encode(&StudioFrame::Offer {
            claim: Box::new(claim_for(&id, &spec)),
        })
        .len();
        if offer_len > self.cfg.max_frame_bytes {
            return Err(HttpError::new(
                413,
                format!(
                    "the offer would be {offer_len} bytes, over the {}-byte frame limit",
                    self.cfg.max_frame_bytes
                ),
            ));
        }
        self.next_job = seq;
        self.jobs.insert(
            seq,
            JobRecord {
                id: id.clone(),
                spec,
                state: JobState::Queued,
                attempts: 0,
                completions: 0,
                submitted_at: self.now,
                updated_at: self.now,
                last_error: None,
                seq,
                offered_to: BTreeSet::new(),
                last_worker: None,
                offer_deadline: None,
                finish_seq: None,
            },
        );
        self.job_index.insert(id.clone(), seq);
        let fits = self.jobs.get(&seq).map(|j| job_fits(&j.spec));
        if let Some(fits) = fits {
            self.queue.insert(seq, &fits);
        }
        self.dirty_jobs.insert(seq);
        self.event(StudioEvent::JobSubmitted { job_id: id.clone() });
        Ok(id)
    }

    /// A job by id.
    pub fn job(&self, id: &str) -> Option<&JobRecord> {
        self.job_index.get(id).and_then(|s| self.jobs.get(s))
    }

    /// Every known job, in submission order.
    pub fn jobs(&self) -> impl Iterator<Item = &JobRecord> {
        self.jobs.values()
    }

    /// Counts by state.
    pub fn stats(&self) -> StudioStats {
        let mut s = StudioStats {
            connections: self.conns.len(),
            connected_workers: self
                .workers
                .values()
                .filter(|w| w.session.is_some())
                .count(),
            ..StudioStats::default()
        };
        for j in self.jobs.values() {
            match j.state {
                JobState::Queued => s.queued += 1,
                JobState::Offered { .. } => s.offered += 1,
                JobState::Running { .. } => s.running += 1,
                JobState::Done { .. } => s.done += 1,
                JobState::Failed { .. } => s.failed += 1,
            }
        }
        s
    }

    /// `POST /workers/:workerId/jobs/:jobId/complete` (multipart; the driver keeps the
    /// bytes). 401 bad worker/token; 409 when the job is unknown, not held by this worker,
    /// or already finished; otherwise the job is done and the freed worker is offered the
    /// next job.
    pub fn complete_upload(&mut self, now: Now, upload: Upload<'_>) -> Result<(), HttpError> {
        self.advance(now)?;
        let result = self.complete_upload_inner(upload);
        self.finish();
        result
    }

    fn complete_upload_inner(&mut self, upload: Upload<'_>) -> Result<(), HttpError> {
        let worker_id = upload.worker_id;
        self.check_token(worker_id, upload.bearer)?;
        let Some(&seq) = self.job_index.get(upload.job_id) else {
            return Err(HttpError::conflict("unknown job"));
        };
        let result = JobResult::Binary {
            ext: upload.ext.to_string(),
            prompt: upload.prompt.to_string(),
            bytes_len: upload.bytes_len,
        };
        match self.classify(seq, worker_id) {
            // An upload carries the finished bytes: taken even if the job was re-offered to
            // the same worker meanwhile.
            Claim::Held | Claim::Offered => {
                self.complete(seq, worker_id, result, false);
                Ok(())
            }
            Claim::Late => {
                self.complete(seq, worker_id, result, true);
                Ok(())
            }
            Claim::Stale => {
                self.stale(worker_id, seq, "upload");
                Err(HttpError::conflict("job is not claimed by this worker"))
            }
            Claim::Foreign => Err(HttpError::conflict("job is not claimed by this worker")),
        }
    }

    /// Offered job back to the queue (no attempt spent unless the caller counted one).
    /// `hold`: the worker waits for its next heartbeat before it gets another offer.
    pub(super) fn release_offer(&mut self, seq: u64, reason: RequeueReason, hold: bool) {
        let Some(job) = self.jobs.get_mut(&seq) else {
            return;
        };
        let JobState::Offered { worker_id } = job.state.clone() else {
            return;
        };
        if let Some(d) = job.offer_deadline.take() {
            self.offer_deadlines.remove(&(d, seq));
        }
        if let Some(w) = self.workers.get_mut(&worker_id) {
            if w.slot == Some(seq) {
                w.slot = None;
            }
            if hold {
                w.hold = true;
            }
        }
        self.refresh(&worker_id, false);
        self.requeue_or_fail(seq, reason);
    }

    /// Running job taken away from its worker (lost claim, idle report, removal). The
    /// accept already spent an attempt unless `refund`.
    pub(super) fn release_run(&mut self, seq: u64, reason: RequeueReason, refund: bool) {
        let Some(job) = self.jobs.get_mut(&seq) else {
            return;
        };
        let JobState::Running { worker_id } = job.state.clone() else {
            return;
        };
        if refund {
            job.attempts = job.attempts.saturating_sub(1);
        } else {
            job.last_error = Some(format!("{reason} on {worker_id}"));
        }
        if let Some(w) = self.workers.get_mut(&worker_id) {
            if w.slot == Some(seq) {
                w.slot = None;
            }
            w.idle_since = None;
        }
        self.orphan_remove(&worker_id);
        self.refresh(&worker_id, false);
        self.requeue_or_fail(seq, reason);
    }

    /// Back to the queue while attempts remain, else failed.
    pub(super) fn requeue_or_fail(&mut self, seq: u64, reason: RequeueReason) {
        let max = self.max_attempts();
        let now = self.now;
        let Some(job) = self.jobs.get_mut(&seq) else {
            return;
        };
        if job.state.is_finished() {
            return;
        }
        if job.attempts >= max {
            let error = format!(
                "gave up after {} attempts: {}",
                job.attempts,
                job.last_error.as_deref().unwrap_or(reason.as_str())
            );
            self.fail_job(seq, error);
            return;
        }
        job.state = JobState::Queued;
        job.updated_at = now;
        let (job_id, attempts) = (job.id.clone(), job.attempts);
        self.queue.insert(seq, &job_fits(&job.spec));
        self.dirty_jobs.insert(seq);
        self.event(StudioEvent::JobRequeued {
            job_id,
            reason,
            attempts,
        });
    }

    pub(super) fn fail_job(&mut self, seq: u64, error: String) {
        let now = self.now;
        let Some(job) = self.jobs.get_mut(&seq) else {
            return;
        };
        if job.state.is_finished() {
            return;
        }
        if let Some(d) = job.offer_deadline.take() {
            self.offer_deadlines.remove(&(d, seq));
        }
        self.queue.remove(seq, &job_fits(&job.spec));
        job.state = JobState::Failed {
            error: error.clone(),
        };
        job.updated_at = now;
        let job_id = job.id.clone();
        self.mark_finished(seq);
        self.event(StudioEvent::JobFailed { job_id, error });
        self.evict_finished();
    }

    pub(super) fn complete(&mut self, seq: u64, worker_id: &str, result: JobResult, late: bool) {
        let now = self.now;
        let Some(job) = self.jobs.get_mut(&seq) else {
            return;
        };
        if job.completions > 0 || job.state.is_finished() {
            return; // at most once, ever
        }
        if let Some(d) = job.offer_deadline.take() {
            self.offer_deadlines.remove(&(d, seq));
            job.attempts = job.attempts.saturating_add(1);
        }
        let held_here = job.state.holder() == Some(worker_id);
        self.queue.remove(seq, &job_fits(&job.spec));
        job.state = JobState::Done {
            worker_id: worker_id.to_string(),
            result,
        };
        job.completions += 1;
        job.updated_at = now;
        let job_id = job.id.clone();
        self.mark_finished(seq);
        if held_here {
            self.free_slot(worker_id, &job_id);
        } else {
            self.clear_busy_hint(worker_id, &job_id);
        }
        self.event(StudioEvent::JobCompleted {
            job_id,
            worker_id: worker_id.to_string(),
            late,
        });
        self.evict_finished();
    }

    pub(super) fn free_slot(&mut self, worker_id: &str, job_id: &str) {
        self.orphan_remove(worker_id);
        if let Some(w) = self.workers.get_mut(worker_id) {
            w.slot = None;
            w.idle_since = None;
            if w.busy_hint.as_deref() == Some(job_id) {
                w.busy_hint = None;
            }
        }
        self.refresh(worker_id, false);
    }

    pub(super) fn mark_finished(&mut self, seq: u64) {
        self.next_finish += 1;
        let f = self.next_finish;
        if let Some(job) = self.jobs.get_mut(&seq) {
            job.finish_seq = Some(f);
        }
        self.finished.insert(f, seq);
    }

    pub(super) fn evict_finished(&mut self) {
        while self.finished.len() > self.cfg.max_finished_jobs {
            let Some((_, seq)) = self.finished.pop_first() else {
                break;
            };
            if let Some(job) = self.jobs.remove(&seq) {
                self.job_index.remove(&job.id);
            }
        }
    }
}
