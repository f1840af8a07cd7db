//! Delivery of a finished job: binary results uploaded over HTTP with retries, result
//! frames kept until the studio acknowledges them and re-sent after a reconnect.

use crate::wire::{self, WorkerFrame};

use super::state::Link;
use super::state::{JobStage, Slot};
use super::timers::Timer;
use super::{Command, HttpId, HttpRequest, HttpResult, JobStatus, LogCategory, LogLevel, Worker};

/// A result frame sent but not yet acknowledged by the studio (`completeAck`/`failAck`).
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Unacked {
    pub(super) job_id: String,
    pub(super) frame: String,
    /// How many sessions it has been sent on.
    pub(super) sends: u32,
}

/// Most sessions a result frame is re-sent on before the worker gives up waiting for its
/// acknowledgement (a studio that never acks must not make us resend forever).
pub const MAX_RESULT_RESENDS: u32 = 3;

impl Worker {
    pub(super) fn start_upload(&mut self, ext: String, attempt: u32) {
        let (Slot::Job(job), Some(creds)) = (&mut self.slot, self.cfg.credentials.as_ref()) else {
            return;
        };
        let job_id = job.claim.job_id.clone();
        let Some(url) = wire::http_url(
            &self.cfg.api_base_url,
            &format!("/workers/{}/jobs/{}/complete", creds.worker_id, job_id),
        ) else {
            return;
        };
        let id = HttpId(self.next_http);
        self.next_http += 1;
        job.stage = JobStage::Uploading {
            ext: ext.clone(),
            attempt,
            req: id,
        };
        let request = HttpRequest::Upload {
            url,
            auth_token: creds.auth_token.clone(),
            job_id,
            prompt: job.claim.task.prompt().to_string(),
            ext,
        };
        self.emit(Command::Http {
            id,
            request: Box::new(request),
        });
    }

    pub(super) fn on_upload_response(&mut self, result: HttpResult) {
        self.handle_upload_response(result);
        // The upload left the in-flight stage: an offer that waited for it is decided now.
        self.decide_parked();
    }

    pub(super) fn handle_upload_response(&mut self, result: HttpResult) {
        let Slot::Job(job) = &self.slot else { return };
        let JobStage::Uploading { ext, attempt, .. } = job.stage.clone() else {
            return;
        };
        let job_id = job.claim.job_id.clone();
        let transient = match &result {
            HttpResult::Response { status, .. } if (200..300).contains(status) => {
                self.log(
                    LogLevel::Info,
                    LogCategory::Ws,
                    format!("result of job {job_id} uploaded"),
                    Some(job_id.clone()),
                );
                self.emit(Command::DiscardResult {
                    job_id: job_id.clone(),
                });
                self.job_ended(&job_id, JobStatus::Completed);
                self.slot = Slot::Free;
                self.after_slot_freed();
                return;
            }
            HttpResult::Response { status, .. } => *status >= 500,
            HttpResult::Transport(_) => true,
        };
        let retries = &self.cfg.timings.upload_retries;
        if transient && (attempt as usize) < retries.len() {
            let pause = retries[attempt as usize];
            self.stats.upload_retries += 1;
            self.log(
                LogLevel::Warn,
                LogCategory::Ws,
                format!(
                    "upload of job {job_id} failed ({}); retry {} in {}ms",
                    result.describe(),
                    attempt + 1,
                    pause.as_millis()
                ),
                Some(job_id.clone()),
            );
            if let Slot::Job(job) = &mut self.slot {
                job.stage = JobStage::UploadBackoff {
                    ext,
                    attempt: attempt + 1,
                };
            }
            self.timers.set(Timer::UploadRetry, self.now.mono + pause);
            return;
        }
        self.emit(Command::DiscardResult {
            job_id: job_id.clone(),
        });
        let frame = WorkerFrame::Fail {
            job_id: job_id.clone(),
            error: format!("complete failed: {}", result.describe()),
            retryable: true,
        };
        self.log(
            LogLevel::Error,
            LogCategory::Ws,
            format!("upload of job {job_id} failed: {}", result.describe()),
            Some(job_id.clone()),
        );
        self.finish_job(job_id, frame, JobStatus::Failed);
    }

    /// Frees the slot after a job's final frame is ready; sends it now if a session is
    /// live, otherwise keeps it for the next session.
    pub(super) fn finish_job(&mut self, job_id: String, frame: WorkerFrame, status: JobStatus) {
        self.job_ended(&job_id, status);
        let text = wire::encode(&frame);
        self.slot = Slot::Free;
        self.timers.clear(Timer::UploadRetry);
        let u = Unacked {
            job_id,
            frame: text,
            sends: 0,
        };
        if matches!(self.link, Link::Live { .. }) {
            self.send_unacked(u);
        } else {
            self.undelivered.push_back(u);
        }
        self.after_slot_freed();
    }

    pub(super) fn send_unacked(&mut self, mut u: Unacked) {
        let Link::Live { conn } = self.link else {
            self.undelivered.push_back(u);
            return;
        };
        u.sends += 1;
        self.emit(Command::Send {
            conn,
            text: u.frame.clone(),
        });
        self.stats.frames_out += 1;
        self.unacked.push(u);
    }

    /// After a welcome: re-send results the previous session may have lost.
    pub(super) fn redeliver(&mut self) {
        let pending: Vec<Unacked> = self.undelivered.drain(..).collect();
        for u in pending {
            if u.sends >= MAX_RESULT_RESENDS {
                self.log(
                    LogLevel::Warn,
                    LogCategory::Ws,
                    format!(
                        "giving up on the studio's acknowledgement of job {} after {} sends",
                        u.job_id, u.sends
                    ),
                    Some(u.job_id.clone()),
                );
                continue;
            }
            self.send_unacked(u);
        }
    }
}
