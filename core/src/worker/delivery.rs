//! Delivery of a finished job: binary results uploaded over HTTP with retries, result
//! frames kept until the studio acknowledges them and re-sent after a reconnect.

use crate::wire::{self, WorkerFrame};

use super::state::Link;
use super::state::{JobStage, Slot};
use super::timers::Timer;
use super::{
    Command, HttpId, HttpRequest, HttpResult, JobStatus, KeptBody, LogCategory, LogLevel, Worker,
};

/// A result frame sent but not yet acknowledged by the studio (`completeAck`/`failAck`).
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Unacked {
    pub(super) job_id: String,
    pub(super) frame: String,
    /// How many sessions it has been sent on.
    pub(super) sends: u32,
    /// How many of those sessions the studio read it on and ended without acknowledging
    /// it: what [`MAX_RESULT_RESENDS`] bounds.
    pub(super) ignored: u32,
    /// On the session it was last sent on: how many heartbeats that session had sent
    /// before it (see [`Unacked::was_read`]).
    pub(super) heartbeats_before: u64,
    /// Acknowledgements still to come on this session for earlier copies that the studio
    /// reads as stale (see [`Worker::answer_with_held_completion`]): they do not settle it.
    pub(super) stale_acks: u32,
}

impl Unacked {
    /// A result frame not sent yet.
    pub(super) fn new(job_id: String, frame: String) -> Unacked {
        Unacked {
            job_id,
            frame,
            sends: 0,
            ignored: 0,
            heartbeats_before: 0,
            stale_acks: 0,
        }
    }

    /// Whether the studio has read it, on a session whose studio acknowledged
    /// `heartbeats_acked` heartbeats: it reads a session's frames in order and answers every
    /// heartbeat, so the ack of a heartbeat sent after this frame proves it read this one.
    fn was_read(&self, heartbeats_acked: u64) -> bool {
        heartbeats_acked > self.heartbeats_before
    }
}

/// Most sessions that read a result frame and ended without acknowledging it before the
/// worker gives up waiting for the acknowledgement (a studio that never acks must not make
/// us resend forever). A session that ended before the studio was seen to read the frame
/// (it acknowledged no heartbeat sent after it) does not count: the frame may have been
/// lost with the connection, and a run of such sessions under a flaky network must not
/// lose the result.
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
                self.forget_result(&job_id);
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
        self.finish_job(job_id, &frame, JobStatus::Failed);
    }

    /// Frees the slot after a job's final frame is ready; sends it now if a session is
    /// live, otherwise keeps it for the next session.
    pub(super) fn finish_job(&mut self, job_id: String, frame: &WorkerFrame, status: JobStatus) {
        self.finish_job_text(job_id, wire::encode(frame), status);
    }

    /// [`Worker::finish_job`] with the frame already encoded.
    pub(super) fn finish_job_text(&mut self, job_id: String, text: String, status: JobStatus) {
        self.job_ended(&job_id, status);
        self.slot = Slot::Free;
        self.timers.clear(Timer::UploadRetry);
        self.deliver_result(job_id, text);
        self.after_slot_freed();
    }

    /// Keeps a result frame (in memory and in the durable outbox) until the studio
    /// acknowledges it; sends it now if a session is live, otherwise after the next
    /// welcome.
    pub(super) fn deliver_result(&mut self, job_id: String, text: String) {
        self.keep_result(&job_id, KeptBody::Frame { text: text.clone() });
        let u = Unacked::new(job_id, text);
        if matches!(self.link, Link::Live { .. }) {
            self.send_unacked(u);
        } else {
            self.undelivered.push_back(u);
        }
    }

    /// The studio acknowledged the result frame of `job_id` (`completeAck` / `failAck`):
    /// it is forgotten, in memory and in the outbox, unless the acknowledgement answers a
    /// copy the studio read as stale (see [`Worker::answer_with_held_completion`]).
    pub(super) fn on_result_acked(&mut self, job_id: &str) {
        if let Some(u) = self
            .unacked
            .iter_mut()
            .find(|u| u.job_id == job_id && u.stale_acks > 0)
        {
            u.stale_acks -= 1;
            return;
        }
        let before = self.unacked.len();
        self.unacked.retain(|u| u.job_id != job_id);
        if self.unacked.len() != before {
            self.forget_result(job_id);
        }
    }

    pub(super) fn send_unacked(&mut self, mut u: Unacked) {
        let Link::Live { conn } = self.link else {
            self.undelivered.push_back(u);
            return;
        };
        u.sends += 1;
        u.heartbeats_before = self.heartbeats_sent;
        self.emit(Command::Send {
            conn,
            text: u.frame.clone(),
        });
        self.stats.frames_out += 1;
        self.unacked.push(u);
    }

    /// At the end of a session: its unacknowledged results wait for the next one, each
    /// counted as ignored where the studio read it (see [`MAX_RESULT_RESENDS`]).
    pub(super) fn requeue_unacked(&mut self) {
        for mut u in self.unacked.drain(..) {
            if u.was_read(self.heartbeats_acked) {
                u.ignored += 1;
            }
            // Acknowledgements of a session that ended never come.
            u.stale_acks = 0;
            self.undelivered.push_back(u);
        }
    }

    /// A re-offer of `job_id` while we hold its completed result (`completeJson`) without
    /// an acknowledgement: the studio never applied that result (a completed job is never
    /// offered again), and it reads a result frame for a job it has offered to us but not
    /// seen accepted as a re-sent result of an earlier attempt, acknowledged and not applied.
    /// That is the usual case after a crash or a lost session: the studio requeued the job
    /// and offers it again at `welcome`, before it reads the result we re-send then. So the
    /// offer is accepted and answered with the held result, sent again after the `accept`:
    /// the engine does not run twice and the result is not lost. The copy already sent on
    /// this session will be acknowledged as stale first; that acknowledgement does not
    /// settle it. `false` (nothing done) when the held result is not a completion.
    pub(super) fn answer_with_held_completion(&mut self, job_id: &str) -> bool {
        let held = |u: &Unacked| {
            u.job_id == job_id
                && matches!(
                    wire::decode_worker_frame(&u.frame, usize::MAX),
                    Ok(WorkerFrame::CompleteJson { .. })
                )
        };
        let u = if let Some(i) = self.unacked.iter().position(held) {
            let mut u = self.unacked.remove(i);
            u.stale_acks += 1;
            u
        } else if let Some(i) = self.undelivered.iter().position(held) {
            match self.undelivered.remove(i) {
                Some(u) => u,
                None => return false,
            }
        } else {
            return false;
        };
        self.log(
            LogLevel::Info,
            LogCategory::Ws,
            format!(
                "offer {job_id} is a job whose completed result we hold unacknowledged; \
                 accepted and answered with that result, not run again"
            ),
            Some(job_id.to_string()),
        );
        self.stats.accepted += 1;
        self.send_frame(&WorkerFrame::Accept {
            job_id: job_id.to_string(),
        });
        self.send_unacked(u);
        true
    }

    /// After a welcome: re-send results the previous session may have lost.
    pub(super) fn redeliver(&mut self) {
        let pending: Vec<Unacked> = self.undelivered.drain(..).collect();
        for u in pending {
            if u.ignored >= MAX_RESULT_RESENDS {
                self.log(
                    LogLevel::Warn,
                    LogCategory::Ws,
                    format!(
                        "giving up on the studio's acknowledgement of job {} after {} \
                         sessions read it without acknowledging it ({} sends)",
                        u.job_id, u.ignored, u.sends
                    ),
                    Some(u.job_id.clone()),
                );
                self.forget_result(&u.job_id);
                continue;
            }
            self.send_unacked(u);
        }
    }
}
