//! The one-job slot: offers (accept, park, reject; answer an undecodable one), dispatch,
//! the job deadline, and what happens when the engine is done. Delivery of the result is
//! in [`super::delivery`].

use std::sync::Arc;

use crate::wire::{self, JobOfferClaim, RejectCode, UserPresence, WorkerFrame};

use super::state::{ActiveJob, JobStage, Slot, Stop};
use super::timers::Timer;
use super::{
    clip, clip_bytes, Command, JobOutcome, JobStatus, JobSummary, KeptBody, LogCategory, LogLevel,
    RunId, Worker, FAIL_ERROR_MAX_BYTES, STUDIO_TEXT_CLIP,
};

/// Reject reason sent while the operator paused the worker.
pub const REASON_PAUSED: &str = "worker paused by operator";
/// Reject reason sent while the operator disabled the worker (`auto_enabled = false`).
pub const REASON_DISABLED: &str = "worker disabled by operator";
/// Reject reason sent while `only_when_idle` is on and the person is using the computer.
pub const REASON_NOT_IDLE: &str = "only when idle: the person is using this computer";
/// Reject reason sent while the one-job slot is taken.
pub const REASON_BUSY: &str = "worker already has an in-flight job";
/// Reject reason sent while the worker is shutting down (code `busy`: the studio requeues
/// without spending an attempt).
pub const REASON_SHUTTING_DOWN: &str = "worker is shutting down";

/// An offer as the machine decides it: a claim it can run, or an offer whose `claim.jobId`
/// could be read although the frame as a whole could not be decoded (PROTOCOL.md §10).
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Offered {
    Claim(Box<JobOfferClaim>),
    Undecodable { job_id: String, error: String },
}

impl Offered {
    fn job_id(&self) -> &str {
        match self {
            Offered::Claim(c) => &c.job_id,
            Offered::Undecodable { job_id, .. } => job_id,
        }
    }
}

impl Worker {
    pub(super) fn on_offer(&mut self, offered: Offered) {
        let job_id = offered.job_id().to_string();
        let line = match &offered {
            Offered::Claim(claim) => format!(
                "offer {} kind={} model={} game={} asset={} vram_estimate={}GB",
                job_id,
                claim.task.kind(),
                clip(&claim.model, STUDIO_TEXT_CLIP),
                clip(&claim.game_id, STUDIO_TEXT_CLIP),
                clip(&claim.asset_name, STUDIO_TEXT_CLIP),
                claim.vram_gb_estimate
            ),
            Offered::Undecodable { error, .. } => format!(
                "offer {job_id} could not be decoded: {}",
                clip(error, STUDIO_TEXT_CLIP)
            ),
        };
        self.log(LogLevel::Info, LogCategory::Ws, line, Some(job_id.clone()));
        if matches!(&self.slot, Slot::Job(j) if j.claim.job_id == job_id) {
            // The studio lost track of the job we are running (it requeued it after a
            // disconnect) and offers it to us again: we hold it, so we take it back instead
            // of rejecting it busy and running it twice. Our result settles it.
            self.log(
                LogLevel::Info,
                LogCategory::Ws,
                format!("offer {job_id} is the job already running here; accepted, not re-run"),
                Some(job_id.clone()),
            );
            self.stats.accepted += 1;
            self.send_frame(&WorkerFrame::Accept { job_id });
            return;
        }
        if matches!(offered, Offered::Claim(_)) && self.answer_with_held_completion(&job_id) {
            return;
        }
        if self.has_job_with_id(&job_id) {
            // A re-offer of a job whose held result is a `fail`: the studio may have settled
            // it (requeued the job) and the acknowledgement been lost with the session, so
            // sending it again would read as the outcome of this new offer, a failure that
            // never ran. The held copy is dropped and the offer decided afresh.
            self.unacked.retain(|u| u.job_id != job_id);
            self.undelivered.retain(|u| u.job_id != job_id);
            self.forget_result(&job_id);
            self.log(
                LogLevel::Info,
                LogCategory::Ws,
                format!(
                    "offer {job_id} supersedes our unacknowledged result for it; result dropped"
                ),
                Some(job_id.clone()),
            );
        }
        let uploading =
            matches!(&self.slot, Slot::Job(j) if matches!(j.stage, JobStage::Uploading { .. }));
        if uploading && self.parked_offer.is_none() {
            // The studio answers our upload's HTTP 200 by offering the next job over the
            // socket, and that offer can overtake the 200. Decide it the moment the upload
            // finishes instead of rejecting it `busy` (which would idle us until the next
            // heartbeat).
            // It waits at most `parked_offer` (1 s): a studio that holds our upload longer
            // gets a `busy` then, not an answer it may no longer expect.
            let wait = self.cfg.timings.parked_offer;
            self.log(
                LogLevel::Info,
                LogCategory::Ws,
                format!(
                    "offer {job_id} arrived while an upload is in flight; deciding when it \
                     finishes (within {}ms)",
                    wait.as_millis()
                ),
                Some(job_id),
            );
            self.parked_offer = Some(offered);
            self.timers.set(Timer::ParkedOffer, self.now.mono + wait);
            return;
        }
        self.decide_offer(offered);
    }

    /// Decides a parked offer, if any: accepted when the slot is free, else rejected.
    pub(super) fn decide_parked(&mut self) {
        self.timers.clear(Timer::ParkedOffer);
        if let Some(offered) = self.parked_offer.take() {
            self.decide_offer(offered);
        }
    }

    pub(super) fn decide_offer(&mut self, offered: Offered) {
        let job_id = offered.job_id().to_string();
        let reject = if self.stop != Stop::Running {
            Some((REASON_SHUTTING_DOWN, RejectCode::Busy))
        } else if self.paused {
            Some((REASON_PAUSED, RejectCode::Paused))
        } else if !self.enabled {
            Some((REASON_DISABLED, RejectCode::Paused))
        } else if self.cfg.only_when_idle && self.presence != Some(UserPresence::Idle) {
            Some((REASON_NOT_IDLE, RejectCode::Paused))
        } else if self.slot != Slot::Free {
            Some((REASON_BUSY, RejectCode::Busy))
        } else {
            None
        };
        if let Some((reason, code)) = reject {
            self.stats.rejected += 1;
            self.send_frame(&WorkerFrame::Reject {
                job_id,
                reason: reason.into(),
                code: Some(code),
            });
            return;
        }
        self.send_frame(&WorkerFrame::Accept {
            job_id: job_id.clone(),
        });
        self.stats.accepted += 1;
        let claim = match offered {
            Offered::Claim(claim) => claim,
            Offered::Undecodable { error, .. } => return self.refuse_undecodable(job_id, &error),
        };
        let run = RunId(self.next_run);
        self.next_run += 1;
        let deadline = self.cfg.timings.job_deadlines.for_kind(claim.task.kind());
        self.timers
            .set(Timer::JobDeadline, self.now.mono + deadline);
        let claim = Arc::<JobOfferClaim>::from(claim);
        self.slot = Slot::Job(Box::new(ActiveJob {
            claim: Arc::clone(&claim),
            run: Some(run),
            stage: JobStage::Running,
            started: self.now.mono,
        }));
        self.record_job(&claim, JobStatus::Running);
        self.emit(Command::Dispatch { run, claim });
    }

    /// An undecodable offer the machine took: failed at once, not retryable (every worker
    /// of this protocol would fail to read it the same way), so the studio stops offering
    /// it and the session lives on. The slot is never taken.
    fn refuse_undecodable(&mut self, job_id: String, error: &str) {
        self.log(
            LogLevel::Error,
            LogCategory::Ws,
            format!("offer {job_id} accepted and failed (not retryable): it could not be decoded"),
            Some(job_id.clone()),
        );
        self.stats.failed += 1;
        self.stats.undecodable_offers += 1;
        let frame = WorkerFrame::Fail {
            job_id: job_id.clone(),
            error: clip_bytes(
                &format!("the worker could not decode the offer: {error}"),
                FAIL_ERROR_MAX_BYTES,
            ),
            retryable: false,
        };
        self.deliver_result(job_id, wire::encode(&frame));
    }

    /// The job deadline expired: if the engine is still running the job, the watchdog
    /// gives up on it (the engine thread is abandoned: `CancelJob`) and fails it
    /// `retryable: true`, freeing the slot.
    pub(super) fn on_job_deadline(&mut self) {
        let Slot::Job(job) = &self.slot else { return };
        if job.stage != JobStage::Running {
            return;
        }
        let job_id = job.claim.job_id.clone();
        let kind = job.claim.task.kind();
        let secs = self.cfg.timings.job_deadlines.for_kind(kind).as_secs();
        self.log(
            LogLevel::Warn,
            LogCategory::Engine,
            format!(
                "watchdog: job {job_id} ({kind}) still running after its {secs}s deadline; \
                 engine abandoned, job reported retryable"
            ),
            Some(job_id.clone()),
        );
        self.cancel_job();
        let frame = WorkerFrame::Fail {
            job_id: job_id.clone(),
            error: format!("the {kind} job did not finish within its {secs}s deadline"),
            retryable: true,
        };
        self.finish_job(job_id, &frame, JobStatus::Failed);
    }

    pub(super) fn has_job_with_id(&self, job_id: &str) -> bool {
        self.unacked.iter().any(|u| u.job_id == job_id)
            || self.undelivered.iter().any(|u| u.job_id == job_id)
    }

    // --------------------------------------------------------------------------------
    // Jobs
    // --------------------------------------------------------------------------------

    pub(super) fn on_job_finished(&mut self, job_id: String, run: RunId, outcome: JobOutcome) {
        let Slot::Job(job) = &self.slot else { return };
        if job.run != Some(run) {
            // A cancelled run's result (`validate` lets it through): reported already.
            return;
        }
        let prompt = job.claim.task.prompt().to_string();
        let elapsed = self.now.mono.saturating_since(job.started);
        self.timers.clear(Timer::JobDeadline);
        match outcome {
            JobOutcome::Json { result } => {
                let frame = WorkerFrame::CompleteJson {
                    job_id: job_id.clone(),
                    result,
                    prompt: Some(prompt),
                };
                let text = wire::encode(&frame);
                let limit = self.cfg.limits.max_send_frame_bytes;
                if text.len() > limit {
                    // The studio would refuse the frame (and may end the session for it):
                    // a result this large cannot be delivered by any worker, so not
                    // retryable.
                    let error = format!(
                        "the result is {} bytes as a completeJson frame, over the {limit}-byte \
                         frame limit",
                        text.len()
                    );
                    self.log(
                        LogLevel::Error,
                        LogCategory::Engine,
                        format!("job {job_id} failed: {error}"),
                        Some(job_id.clone()),
                    );
                    let frame = WorkerFrame::Fail {
                        job_id: job_id.clone(),
                        error,
                        retryable: false,
                    };
                    self.finish_job(job_id, &frame, JobStatus::Failed);
                    return;
                }
                self.log(
                    LogLevel::Info,
                    LogCategory::Engine,
                    format!(
                        "job {job_id} finished in {}ms; json result sent",
                        elapsed.as_millis()
                    ),
                    Some(job_id.clone()),
                );
                self.finish_job_text(job_id, text, JobStatus::Completed);
            }
            JobOutcome::Binary { ext, bytes_len } => {
                self.log(
                    LogLevel::Info,
                    LogCategory::Engine,
                    format!(
                        "job {job_id} finished in {}ms; uploading {bytes_len} bytes .{ext}",
                        elapsed.as_millis()
                    ),
                    Some(job_id.clone()),
                );
                let Slot::Job(job) = &self.slot else { return };
                let claim = Box::new(JobOfferClaim::clone(&job.claim));
                self.keep_result(
                    &job_id,
                    KeptBody::Upload {
                        claim,
                        ext: ext.clone(),
                        bytes_len,
                    },
                );
                self.start_upload(ext, 0);
            }
            JobOutcome::Failed { error, retryable } => {
                let error = clip_bytes(&error, FAIL_ERROR_MAX_BYTES);
                self.log(
                    LogLevel::Error,
                    LogCategory::Engine,
                    format!("dispatch failed: {error}"),
                    Some(job_id.clone()),
                );
                let frame = WorkerFrame::Fail {
                    job_id: job_id.clone(),
                    error,
                    retryable,
                };
                self.finish_job(job_id, &frame, JobStatus::Failed);
            }
        }
    }

    pub(super) fn after_slot_freed(&mut self) {
        self.timers.clear(Timer::JobDeadline);
        if self.stop == Stop::Draining {
            self.maybe_finish_shutdown();
            return;
        }
        if self.upload_next_restored() {
            return;
        }
        self.maybe_apply_update();
    }

    pub(super) fn record_job(&mut self, claim: &JobOfferClaim, status: JobStatus) {
        if self.cfg.limits.recent_jobs == 0 {
            return;
        }
        if self.recent_jobs.len() >= self.cfg.limits.recent_jobs {
            self.recent_jobs.pop_back();
        }
        self.recent_jobs.push_front(JobSummary {
            job_id: claim.job_id.clone(),
            kind: claim.task.kind(),
            model: claim.model.clone(),
            prompt_preview: wire::prompt_preview(claim.task.prompt()),
            status,
            started: self.now.mono,
            finished: None,
        });
    }

    /// A job reached its final outcome: counted (by kind, with its duration since
    /// dispatch) and marked in the recent-jobs ring.
    pub(super) fn job_ended(&mut self, job_id: &str, status: JobStatus) {
        let now = self.now.mono;
        match status {
            JobStatus::Completed => self.stats.completed += 1,
            JobStatus::Failed => self.stats.failed += 1,
            JobStatus::Running => {}
        }
        if let Slot::Job(job) = &self.slot {
            if job.claim.job_id == job_id {
                let kind = job.claim.task.kind();
                let took = now.saturating_since(job.started);
                self.stats
                    .jobs
                    .entry(kind)
                    .or_default()
                    .observe(status, took);
            }
        }
        if let Some(j) = self.recent_jobs.iter_mut().find(|j| j.job_id == job_id) {
            j.status = status;
            j.finished = Some(now);
        }
    }

    pub(super) fn current_job_id(&self) -> Option<&str> {
        match &self.slot {
            Slot::Job(j) => Some(&j.claim.job_id),
            _ => None,
        }
    }
}
