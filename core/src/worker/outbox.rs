//! The durable outbox, as the machine decides it: which results outlive the process
//! (`Command::KeepResult`), when one is settled and forgotten (`Command::ForgetResult`), and
//! what a restart does with those the shell hands back (`Input::Restore`). The shell only
//! writes and reads the entries; it decides nothing.
//!
//! A result is kept from the moment it exists (the engine finished, or a `fail` was
//! decided) until the studio acknowledges it (`completeAck` / `failAck`, a 2xx or 4xx
//! answer to its upload), the machine stops waiting for it ([`super::MAX_RESULT_RESENDS`]
//! sessions read it and ended without acknowledging it) or, a `fail`, a re-offer of its job
//! supersedes it (a kept completion answers such an offer instead:
//! `Worker::answer_with_held_completion`). The outbox is bounded in entries and bytes
//! (`Limits::outbox_max_entries`, `Limits::outbox_max_bytes`): past a bound the oldest
//! entry is forgotten from disk (the machine still holds it in memory), and a result
//! larger than the byte bound alone is kept in memory only. Each drop is a log line.
//!
//! At restore (before `Start`) entries older than `Limits::outbox_max_age`, entries of
//! another worker id and entries past the bounds (oldest first) are dropped with a log
//! line; result frames wait for the next `welcome` like those of a lost session, binary
//! results are uploaded again, one at a time through the one-job slot, from `Start` on.

use std::collections::VecDeque;
use std::sync::Arc;

use super::delivery::Unacked;
use super::state::{ActiveJob, JobStage, Slot};
use super::{
    clip, Command, JobStatus, KeptBody, KeptResult, LogCategory, LogLevel, UsageError, Worker,
    STUDIO_TEXT_CLIP,
};

/// What the machine has asked the shell to keep, oldest first: a job id and its size.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Kept {
    entries: VecDeque<(String, u64)>,
}

impl Kept {
    fn bytes(&self) -> u64 {
        self.entries.iter().map(|(_, n)| n).sum()
    }

    fn remove(&mut self, job_id: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(j, _)| j != job_id);
        self.entries.len() != before
    }

    /// How many entries it holds.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

impl Worker {
    /// Asks the shell to keep `body` as the durable result of `job_id` (replacing what it
    /// kept for the job), within the outbox's bounds.
    pub(super) fn keep_result(&mut self, job_id: &str, body: KeptBody) {
        let Some(worker_id) = self.cfg.credentials.as_ref().map(|c| c.worker_id.clone()) else {
            return;
        };
        let result = KeptResult {
            job_id: job_id.to_string(),
            worker_id,
            kept_at: self.now.wall,
            body,
        };
        let size = result.size();
        let limits = &self.cfg.limits;
        if size > limits.outbox_max_bytes || limits.outbox_max_entries == 0 {
            let max = limits.outbox_max_bytes;
            self.forget_result(job_id);
            self.log(
                LogLevel::Warn,
                LogCategory::Ws,
                format!(
                    "the result of job {job_id} ({size} bytes) does not fit the outbox \
                     ({max} bytes); it is held in memory only and a crash would lose it"
                ),
                Some(job_id.to_string()),
            );
            return;
        }
        self.kept.remove(job_id);
        self.kept.entries.push_back((job_id.to_string(), size));
        self.emit(Command::KeepResult(Box::new(result)));
        self.trim_outbox("outbox full");
    }

    /// Forgets the durable copy of `job_id`'s result, if the outbox holds one.
    pub(super) fn forget_result(&mut self, job_id: &str) {
        if self.kept.remove(job_id) {
            self.emit(Command::ForgetResult {
                job_id: job_id.to_string(),
            });
        }
    }

    /// Forgets the oldest entries while the outbox is past a bound (the newest entry is
    /// never forgotten here: it fits alone, `keep_result` checked).
    fn trim_outbox(&mut self, why: &str) {
        let (max_n, max_bytes) = (
            self.cfg.limits.outbox_max_entries,
            self.cfg.limits.outbox_max_bytes,
        );
        while self.kept.len() > 1 && (self.kept.len() > max_n || self.kept.bytes() > max_bytes) {
            let Some((job_id, _)) = self.kept.entries.pop_front() else {
                break;
            };
            self.emit(Command::ForgetResult {
                job_id: job_id.clone(),
            });
            self.log(
                LogLevel::Warn,
                LogCategory::Ws,
                format!(
                    "{why} ({max_n} results, {max_bytes} bytes): the kept result of job \
                     {job_id} is forgotten from disk (still held in memory)"
                ),
                Some(job_id),
            );
        }
    }

    /// `Input::Restore`: the outbox of an earlier process (see the module docs).
    pub(super) fn validate_restore(&self) -> Result<(), UsageError> {
        if self.started {
            Err(UsageError::RestoreAfterStart)
        } else {
            Ok(())
        }
    }

    pub(super) fn on_restore(&mut self, mut results: Vec<KeptResult>) {
        // Oldest first, so the bounds drop the oldest; a job kept twice keeps its newest.
        results.sort_by_key(|a| a.kept_at);
        let mut seen = std::collections::BTreeSet::new();
        let mut newest_first = Vec::new();
        for r in results.into_iter().rev() {
            if seen.insert(r.job_id.clone()) {
                newest_first.push(r);
            } else {
                self.drop_restored(&r.job_id, "an older copy of a kept result");
            }
        }
        let worker_id = self.cfg.credentials.as_ref().map(|c| c.worker_id.clone());
        let max_age = self.cfg.limits.outbox_max_age;
        let (max_n, max_bytes) = (
            self.cfg.limits.outbox_max_entries,
            self.cfg.limits.outbox_max_bytes,
        );
        let mut taken: Vec<KeptResult> = Vec::new();
        let mut bytes = 0u64;
        for r in newest_first {
            let age_ms = self.now.wall.0.saturating_sub(r.kept_at.0);
            if worker_id.as_deref() != Some(r.worker_id.as_str()) {
                let why = format!(
                    "kept for worker {} (this worker is {})",
                    clip(&r.worker_id, STUDIO_TEXT_CLIP),
                    worker_id.as_deref().unwrap_or("not registered")
                );
                self.drop_restored(&r.job_id, &why);
            } else if u128::from(age_ms) > max_age.as_millis() {
                let why = format!(
                    "kept {} s ago, past the {} s age limit",
                    age_ms / 1000,
                    max_age.as_secs()
                );
                self.drop_restored(&r.job_id, &why);
            } else if taken.len() >= max_n || bytes + r.size() > max_bytes {
                self.drop_restored(&r.job_id, "past the outbox's bounds");
            } else {
                bytes += r.size();
                taken.push(r);
            }
        }
        taken.reverse();
        let (mut frames, mut uploads) = (0, 0);
        for r in taken {
            self.kept.entries.push_back((r.job_id.clone(), r.size()));
            match r.body {
                KeptBody::Frame { text } => {
                    frames += 1;
                    self.undelivered.push_back(Unacked::new(r.job_id, text));
                }
                KeptBody::Upload { claim, ext, .. } => {
                    uploads += 1;
                    self.restored_uploads.push_back((claim, ext));
                }
            }
        }
        if frames + uploads > 0 {
            self.log(
                LogLevel::Info,
                LogCategory::Ws,
                format!(
                    "outbox restored: {frames} result frame(s) to re-send after the next \
                     welcome, {uploads} result(s) to upload again"
                ),
                None,
            );
        }
    }

    fn drop_restored(&mut self, job_id: &str, why: &str) {
        self.emit(Command::ForgetResult {
            job_id: job_id.to_string(),
        });
        self.log(
            LogLevel::Warn,
            LogCategory::Ws,
            format!("kept result of job {job_id} dropped: {why}"),
            Some(job_id.to_string()),
        );
    }

    /// Puts the next restored binary result in the free slot and uploads it again.
    /// `true` when one took the slot.
    pub(super) fn upload_next_restored(&mut self) -> bool {
        if self.slot != Slot::Free || self.cfg.credentials.is_none() {
            return false;
        }
        let Some((claim, ext)) = self.restored_uploads.pop_front() else {
            return false;
        };
        let job_id = claim.job_id.clone();
        self.log(
            LogLevel::Info,
            LogCategory::Ws,
            format!("uploading the kept result of job {job_id} again"),
            Some(job_id),
        );
        self.record_job(&claim, JobStatus::Running);
        self.slot = Slot::Job(Box::new(ActiveJob {
            claim: Arc::from(claim),
            run: None,
            stage: JobStage::UploadBackoff {
                ext: ext.clone(),
                attempt: 0,
            },
            started: self.now.mono,
        }));
        self.start_upload(ext, 0);
        true
    }
}
