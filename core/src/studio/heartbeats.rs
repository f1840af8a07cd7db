//! Heartbeats: liveness, capability changes, and what the worker says it is running
//! against what the studio holds for it (idle grace, reclaim, busy hints).

use crate::wire::{self, StudioFrame, WorkerCapabilities, WorkerFrame};

use super::queue::eligible;
use super::state::{ConnPhase, ConnRec, HeartbeatMemo, WorkerHandle};
use super::{ConnId, JobState, RequeueReason, Studio};

impl Studio {
    /// The current job id of a heartbeat `text` that repeats the last one handled on `c`
    /// while the worker record still holds the capabilities it carried (see
    /// [`HeartbeatMemo`]); `None` when it must be decoded.
    pub(super) fn repeated_heartbeat(
        &self,
        c: &ConnRec,
        text: &str,
    ) -> Option<(WorkerHandle, Option<String>)> {
        let m = c.last_heartbeat.as_ref()?;
        if c.phase != ConnPhase::Welcomed || text.len() > self.cfg.max_frame_bytes || m.text != text
        {
            return None;
        }
        let worker = self.conn_worker(c)?;
        let w = self.workers.at(worker)?;
        if w.caps_gen != m.caps_gen {
            return None;
        }
        debug_assert_eq!(
            wire::decode_worker_frame(text, self.cfg.max_frame_bytes).ok(),
            w.capabilities
                .clone()
                .map(|capabilities| WorkerFrame::Heartbeat {
                    capabilities,
                    current_job_id: m.current_job_id.clone(),
                }),
            "a repeated heartbeat decodes to the remembered one"
        );
        Some((worker, m.current_job_id.clone()))
    }

    /// Remembers a heartbeat just handled on `conn` (see [`HeartbeatMemo`]).
    pub(super) fn remember_heartbeat(
        &mut self,
        conn: ConnId,
        worker_id: &str,
        text: &str,
        current_job_id: Option<String>,
    ) {
        let Some(caps_gen) = self
            .workers
            .get(worker_id)
            .filter(|w| w.capabilities.is_some())
            .map(|w| w.caps_gen)
        else {
            return;
        };
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        match &mut c.last_heartbeat {
            Some(m) => {
                m.text.clear();
                m.text.push_str(text);
                m.current_job_id = current_job_id;
                m.caps_gen = caps_gen;
            }
            None => {
                c.last_heartbeat = Some(HeartbeatMemo {
                    text: text.to_string(),
                    current_job_id,
                    caps_gen,
                })
            }
        }
    }

    /// `capabilities` is `None` when the heartbeat carried exactly the record's.
    pub(super) fn on_heartbeat(
        &mut self,
        conn: ConnId,
        worker: Option<WorkerHandle>,
        capabilities: Option<WorkerCapabilities>,
        current: Option<String>,
    ) {
        self.send(conn, &StudioFrame::HeartbeatAck);
        let now = self.now;
        let grace = self.cfg.idle_claim_grace;
        let Some(worker) = worker else {
            return;
        };
        let Some(w) = self.workers.at_mut(worker) else {
            return;
        };
        // Equal capabilities are kept as they are (same value, same generation).
        let caps_changed = match capabilities {
            Some(caps) if w.capabilities.as_ref() != Some(&caps) => {
                self.caps_gen += 1;
                w.capabilities = Some(caps);
                w.caps_gen = self.caps_gen;
                true
            }
            _ => false,
        };
        w.hold = false;
        w.last_seen = Some(now);
        let slot = w.slot;
        let held = slot.and_then(|s| self.jobs.get(&s).map(|j| (s, j)));
        let mut release = None;
        // The job the worker reports while the studio has none running on it.
        let mut reported = None;
        match held {
            Some((seq, job)) if matches!(job.state, JobState::Running { .. }) => {
                if current.as_deref() == Some(job.id.as_str()) {
                    w.idle_since = None;
                    w.busy_hint = None;
                } else {
                    w.busy_hint = current.clone();
                    match w.idle_since {
                        None => w.idle_since = Some(now),
                        Some(t) if now.saturating_since(t) >= grace => release = Some(seq),
                        Some(_) => {}
                    }
                }
            }
            Some((_, job)) => {
                // Offered, not accepted yet.
                w.busy_hint = current.filter(|c| *c != job.id);
            }
            None => {
                w.busy_hint = None;
                reported = current;
            }
        }
        // Whether the worker is still idle under unchanged capabilities. In the common case
        // (nothing below touches the worker) it is decided on the record in hand; otherwise
        // after the release or reclaim, on the record as they leave it.
        let untouched = release.is_none() && reported.is_none();
        if untouched && !caps_changed {
            let (idle, fits) = (w.in_idle, eligible(w));
            if !idle && !fits {
                // Neither idle nor becoming idle (a busy worker's heartbeat): `refresh` would
                // change nothing.
                return;
            }
            if idle && fits {
                // Still idle under unchanged capabilities (an idle worker's heartbeat, the
                // most common frame): the machine's invariants (an idle worker is indexed
                // under the fits of its capabilities) make `refresh` a no-op. Decided without
                // a copy of the worker's id (an `Arc` whose count lives in a cache line of
                // its own).
                debug_assert!(self
                    .workers
                    .id(worker)
                    .is_some_and(|id| self.idle_indexed(id)));
                return;
            }
        }
        let Some(worker_id) = self.workers.id(worker).cloned() else {
            return;
        };
        let worker_id = &*worker_id;
        if let Some(cur) = reported {
            let reclaim = self.job_index.get(&cur).copied().filter(|s| {
                self.jobs.get(s).is_some_and(|j| {
                    j.state == JobState::Queued && j.last_worker.as_deref() == Some(worker_id)
                })
            });
            match reclaim {
                Some(seq) => self.reclaim(seq, worker_id),
                None => {
                    if let Some(w) = self.workers.get_mut(worker_id) {
                        w.busy_hint = Some(cur);
                    }
                }
            }
        }
        if let Some(seq) = release {
            self.release_run(seq, RequeueReason::WorkerReportedIdle, false);
        }
        // After the release or reclaim, on the record as they leave it.
        let still_idle = !untouched
            && !caps_changed
            && self
                .workers
                .get(worker_id)
                .is_some_and(|w| w.in_idle && eligible(w));
        if still_idle {
            // As above: `refresh` would be a no-op.
            debug_assert!(self.idle_indexed(worker_id));
            return;
        }
        self.refresh(worker_id, caps_changed);
    }
}
