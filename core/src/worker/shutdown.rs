//! Graceful shutdown (reject new offers, give the in-flight job its grace, deliver, close
//! 1000) and the machine's exit.

use super::state::{JobStage, Link, Slot, Stop};
use super::timers::{Timer, Timers};
use super::{
    Command, ExitCode, JobStatus, LogCategory, LogLevel, Notice, SessionState, Worker,
    CANCELLED_RUNS_KEPT,
};
use crate::wire::{close_reason, WorkerFrame};

impl Worker {
    pub(super) fn on_shutdown(&mut self) {
        if self.stop != Stop::Running {
            return;
        }
        self.stop = Stop::Draining;
        self.log(
            LogLevel::Info,
            LogCategory::Ws,
            "shutdown requested".into(),
            None,
        );
        self.decide_parked();
        if matches!(self.slot, Slot::Job(_)) {
            let at = self.now.mono + self.cfg.timings.shutdown_grace;
            self.timers.set(Timer::ShutdownGrace, at);
            self.log(
                LogLevel::Info,
                LogCategory::Ws,
                format!(
                    "waiting up to {}s for the in-flight job to finish",
                    self.cfg.timings.shutdown_grace.as_secs()
                ),
                self.current_job_id().map(str::to_string),
            );
        }
        self.maybe_finish_shutdown();
    }

    pub(super) fn maybe_finish_shutdown(&mut self) {
        if matches!(self.slot, Slot::Job(_)) {
            return;
        }
        // Everything deliverable goes out before the close: results and queued logs.
        if matches!(self.link, Link::Live { .. }) {
            while !self.logs.is_empty() {
                self.flush_logs();
            }
        }
        self.close_current(close_reason::SESSION_ENDED);
        self.timers.clear(Timer::ShutdownGrace);
        self.exit(ExitCode::Clean, "stopped".into());
    }

    pub(super) fn on_shutdown_grace_expired(&mut self) {
        let Slot::Job(job) = &self.slot else {
            return self.maybe_finish_shutdown();
        };
        let job_id = job.claim.job_id.clone();
        self.log(
            LogLevel::Warn,
            LogCategory::Ws,
            format!(
                "job {job_id} did not finish within the {}s shutdown grace; reporting it retryable",
                self.cfg.timings.shutdown_grace.as_secs()
            ),
            Some(job_id.clone()),
        );
        self.cancel_job();
        let frame = WorkerFrame::Fail {
            job_id: job_id.clone(),
            error: "worker shut down before the job finished".into(),
            retryable: true,
        };
        self.finish_job(job_id, &frame, JobStatus::Failed);
    }

    /// Asks the shell to stop the job in the slot; its run is remembered, so a result the
    /// engine still delivers is told apart as one of a cancelled run. Only a running engine
    /// has anything to stop: once it finished (its result uploading), a `CancelJob` would name
    /// a job the shell no longer runs, and a second report of that run would be taken for a
    /// cancelled run's late result instead of refused. Such a job's binary result, held for
    /// an upload that will not happen now, is discarded instead.
    pub(super) fn cancel_job(&mut self) {
        let Slot::Job(job) = &self.slot else { return };
        if job.stage != JobStage::Running {
            let job_id = job.claim.job_id.clone();
            self.emit(Command::DiscardResult { job_id });
            return;
        }
        if let Some(run) = job.run {
            if self.cancelled.len() >= CANCELLED_RUNS_KEPT {
                self.cancelled.pop_front();
            }
            self.cancelled.push_back(run);
        }
        let job_id = job.claim.job_id.clone();
        self.emit(Command::CancelJob { job_id });
    }

    pub(super) fn exit(&mut self, code: ExitCode, reason: String) {
        if self.stop == Stop::Exited {
            return;
        }
        self.session_state = match code {
            ExitCode::Clean | ExitCode::Restart => SessionState::Stopped,
            ExitCode::AuthFailed => SessionState::AuthFailed {
                reason: reason.clone(),
            },
            ExitCode::Fatal | ExitCode::Rejected => SessionState::Fatal {
                reason: reason.clone(),
            },
        };
        let level = if code.is_error() {
            LogLevel::Error
        } else {
            LogLevel::Info
        };
        self.emit(Command::Report(Notice {
            level,
            category: LogCategory::Ws,
            message: reason.clone(),
            job_id: None,
        }));
        if matches!(self.slot, Slot::Job(_)) {
            // A job still running when the process must end (auth failure, fatal error):
            // tell the shell to stop it; the studio requeues it when the session times out.
            self.cancel_job();
            self.slot = Slot::Free;
        }
        self.timers = Timers::default();
        self.link = Link::Down;
        self.stop = Stop::Exited;
        self.emit(Command::Exit { code, reason });
    }
}
