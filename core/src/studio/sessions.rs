//! Sessions: the workers the studio knows, their sockets from upgrade to close, `hello`,
//! the frames of a welcomed session, and the stored logs.

use std::sync::Arc;

use crate::wire::{
    self, sha256_hex, LogEntry, StudioFrame, WorkerCapabilities, WorkerErrorCode, WorkerFrame,
};

use super::state::{ConnPhase, ConnRec, WorkerHandle, WorkerRec};
use super::{ConnId, HttpError, RequeueReason, Studio, StudioCommand, StudioEvent, WorkerView};
use crate::secret::ct_eq;

impl Studio {
    /// Pre-provisions `worker_id` with `auth_token` (only its SHA-256 is kept). An existing
    /// worker is re-keyed; a live session is not cut.
    pub fn add_worker(&mut self, worker_id: &str, auth_token: &str) {
        let hash = sha256_hex(auth_token.as_bytes());
        self.workers.or_default(worker_id).token_hash = Some(hash);
        self.finish();
    }

    /// Deletes a worker: its sockets get `error worker_deleted` + close 4004 and its job is
    /// requeued (attempt refunded). Unknown ids are ignored.
    pub fn remove_worker(&mut self, worker_id: &str) {
        if !self.workers.contains_key(worker_id) {
            return;
        }
        let conns: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| *c.worker_id == *worker_id)
            .map(|(id, _)| *id)
            .collect();
        for conn in conns {
            self.close_with_error(conn, WorkerErrorCode::WorkerDeleted, "worker deleted");
        }
        if let Some(seq) = self.workers.get(worker_id).and_then(|w| w.slot) {
            match self.jobs.get(&seq).map(|j| j.state.name()) {
                Some("running") => self.release_run(seq, RequeueReason::WorkerRemoved, true),
                Some("offered") => self.release_offer(seq, RequeueReason::WorkerRemoved, false),
                _ => {}
            }
        }
        self.idle_remove(worker_id);
        self.orphan_remove(worker_id);
        self.workers.remove(worker_id);
        self.install_workers.retain(|_, w| w != worker_id);
        self.event(StudioEvent::WorkerRemoved {
            worker_id: worker_id.to_string(),
        });
        self.finish();
    }

    /// Checks the bearer of a WebSocket upgrade (§5): 401 for an unknown worker, one without
    /// a token, or a wrong token.
    pub fn authorize_upgrade(&self, worker_id: &str, bearer: &str) -> Result<(), HttpError> {
        self.check_token(worker_id, bearer)
    }

    pub(super) fn check_token(&self, worker_id: &str, token: &str) -> Result<(), HttpError> {
        let ok = self
            .workers
            .get(worker_id)
            .and_then(|w| w.token_hash.as_deref())
            .is_some_and(|h| ct_eq(h, &sha256_hex(token.as_bytes())));
        if ok {
            Ok(())
        } else {
            Err(HttpError::unauthorized("invalid worker credentials"))
        }
    }

    /// Snapshots of every worker, by id.
    pub fn workers(&self) -> Vec<WorkerView> {
        self.workers
            .iter()
            .map(|(id, w)| self.view(id, w))
            .collect()
    }

    /// Snapshot of one worker.
    pub fn worker(&self, worker_id: &str) -> Option<WorkerView> {
        self.workers.get(worker_id).map(|w| self.view(worker_id, w))
    }

    /// Snapshot of one worker without its capabilities (`capabilities` is always `None`):
    /// the cheap form for checks that look at its session and slot on every step.
    pub fn worker_status(&self, worker_id: &str) -> Option<WorkerView> {
        self.workers
            .get(worker_id)
            .map(|w| self.view_with(worker_id, w, false))
    }

    pub(super) fn view(&self, id: &str, w: &WorkerRec) -> WorkerView {
        self.view_with(id, w, true)
    }

    pub(super) fn view_with(&self, id: &str, w: &WorkerRec, capabilities: bool) -> WorkerView {
        WorkerView {
            id: id.to_string(),
            connected: w.session.is_some(),
            conn: w.session,
            connected_since: w.connected_at,
            capabilities: if capabilities {
                w.capabilities.clone()
            } else {
                None
            },
            current_job: w.slot.and_then(|s| self.jobs.get(&s)).map(|j| j.id.clone()),
            last_heartbeat: w.last_seen,
            has_token: w.token_hash.is_some(),
            idle: w.in_idle,
        }
    }

    /// The stored log ring of a worker, oldest first.
    pub fn worker_logs(&self, worker_id: &str) -> Vec<LogEntry> {
        self.workers
            .get(worker_id)
            .map(|w| w.logs.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub(super) fn on_connected(&mut self, conn: ConnId, worker_id: String) {
        if self.conns.contains_key(&conn) {
            self.event(StudioEvent::Ignored {
                conn: Some(conn),
                what: "Connected for a connection id already in use".into(),
            });
            return;
        }
        let now = self.now;
        self.next_conn_seq += 1;
        self.conns.insert(
            conn,
            ConnRec {
                worker_id: Arc::from(worker_id.as_str()),
                worker: self.workers.handle(&worker_id),
                phase: ConnPhase::AwaitingHello,
                last_frame: now,
                indexed: now,
                opened: self.next_conn_seq,
                last_heartbeat: None,
            },
        );
        self.session_index.insert((now, conn));
        self.event(StudioEvent::ConnOpened { conn, worker_id });
    }

    /// The record of a connection's worker: by the handle taken at connect, or by id for a
    /// connection opened for an id the studio did not know then.
    pub(super) fn conn_worker(&self, c: &ConnRec) -> Option<WorkerHandle> {
        c.worker
            .filter(|h| self.workers.at(*h).is_some())
            .or_else(|| self.workers.handle(&c.worker_id))
    }

    pub(super) fn on_disconnected(&mut self, conn: ConnId) {
        let Some(worker_id) = self.conns.get(&conn).map(|c| c.worker_id.clone()) else {
            return; // already closed by us, or never known
        };
        self.event(StudioEvent::ConnLost {
            conn,
            worker_id: worker_id.to_string(),
        });
        self.drop_conn(conn);
    }

    /// Forgets a connection; detaches the worker's session if it was this one.
    pub(super) fn drop_conn(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        self.session_index.remove(&(c.indexed, conn));
        let is_session = self
            .conn_worker(&c)
            .and_then(|h| self.workers.at(h))
            .is_some_and(|w| w.session == Some(conn));
        if is_session {
            self.detach(&c.worker_id);
        }
    }

    pub(super) fn detach(&mut self, worker_id: &str) {
        self.idle_remove(worker_id);
        let Some(w) = self.workers.get_mut(worker_id) else {
            return;
        };
        w.session = None;
        w.connected_at = None;
        let slot = w.slot;
        let last_seen = w.last_seen.unwrap_or(self.now);
        if let Some(seq) = slot {
            match self.jobs.get(&seq).map(|j| j.state.name()) {
                Some("offered") => self.release_offer(seq, RequeueReason::OfferLost, false),
                Some("running") => {
                    if let Some(w) = self.workers.get_mut(worker_id) {
                        w.orphan_since = Some(last_seen);
                    }
                    self.orphans.insert((last_seen, worker_id.to_string()));
                }
                _ => {}
            }
        }
    }

    pub(super) fn close_with_error(&mut self, conn: ConnId, code: WorkerErrorCode, message: &str) {
        self.send(
            conn,
            &StudioFrame::Error {
                code,
                message: message.to_string(),
            },
        );
        self.out.push_back(StudioCommand::Close {
            conn,
            code: code.close_code(),
            reason: code.close_reason().into(),
        });
        self.drop_conn(conn);
    }

    pub(super) fn violation(&mut self, conn: ConnId, worker_id: &str, message: &str) {
        self.event(StudioEvent::ProtocolViolation {
            conn,
            worker_id: worker_id.to_string(),
            message: message.to_string(),
        });
        self.close_with_error(conn, WorkerErrorCode::ProtocolViolation, message);
    }

    pub(super) fn on_frame(&mut self, conn: ConnId, text: &str) {
        let Some(c) = self.conns.get(&conn) else {
            self.event(StudioEvent::Ignored {
                conn: Some(conn),
                what: "frame for an unknown or closed connection".into(),
            });
            return;
        };
        if let Some((worker, current)) = self.repeated_heartbeat(c, text) {
            // Exactly the previous heartbeat on this connection, whose capabilities are
            // still the record's: what decoding would give, without decoding.
            // (`on_heartbeat` records `last_seen`.)
            self.touch(conn);
            self.on_heartbeat(conn, Some(worker), None, current);
            return;
        }
        let worker_id = c.worker_id.clone();
        let phase = c.phase;
        let frame = match wire::decode_worker_frame(text, self.cfg.max_frame_bytes) {
            Ok(f) => f,
            Err(e) => {
                self.violation(conn, &worker_id, &e.to_string());
                return;
            }
        };
        self.touch(conn);
        if phase == ConnPhase::AwaitingHello {
            match frame {
                WorkerFrame::Hello {
                    auth_token,
                    capabilities,
                } => self.on_hello(conn, &worker_id, auth_token.expose(), capabilities),
                _ => self.violation(conn, &worker_id, "session not authenticated"),
            }
            return;
        }
        if let Some(w) = self.workers.get_mut(&worker_id) {
            w.last_seen = Some(self.now);
        }
        match frame {
            WorkerFrame::Hello { .. } => self.violation(conn, &worker_id, "duplicate hello"),
            WorkerFrame::Heartbeat {
                capabilities,
                current_job_id,
            } => {
                let memo_current = current_job_id.clone();
                let worker = self.workers.handle(&worker_id);
                self.on_heartbeat(conn, worker, Some(capabilities), current_job_id);
                self.remember_heartbeat(conn, &worker_id, text, memo_current);
            }
            WorkerFrame::Accept { job_id } => self.on_accept(conn, &worker_id, &job_id),
            WorkerFrame::Reject {
                job_id,
                reason,
                code,
            } => self.on_reject(conn, &worker_id, &job_id, reason, code),
            WorkerFrame::CompleteJson {
                job_id,
                result,
                prompt,
            } => self.on_complete_json(conn, &worker_id, &job_id, result, prompt),
            WorkerFrame::Fail {
                job_id,
                error,
                retryable,
            } => self.on_fail(conn, &worker_id, &job_id, error, retryable),
            WorkerFrame::LogBatch { entries } => self.on_logs(&worker_id, entries),
            WorkerFrame::ReadyForMore => self.event(StudioEvent::ReadyForMore {
                worker_id: worker_id.to_string(),
            }),
        }
    }

    /// A frame arrived on `conn`: its session lives on. The index entry stays where it is
    /// (at or before `last_frame`); the sweep re-files it when it comes up.
    pub(super) fn touch(&mut self, conn: ConnId) {
        let now = self.now;
        if let Some(c) = self.conns.get_mut(&conn) {
            c.last_frame = now;
        }
    }

    pub(super) fn on_hello(
        &mut self,
        conn: ConnId,
        worker_id: &str,
        token: &str,
        capabilities: WorkerCapabilities,
    ) {
        if self.check_token(worker_id, token).is_err() {
            self.event(StudioEvent::AuthFailed {
                conn,
                worker_id: worker_id.to_string(),
            });
            self.close_with_error(conn, WorkerErrorCode::AuthFailed, "invalid auth token");
            return;
        }
        if let Some(old) = self.workers.get(worker_id).and_then(|w| w.session) {
            let opened = |c: ConnId| self.conns.get(&c).map_or(0, |r| r.opened);
            if old != conn && opened(old) > opened(conn) {
                // A late hello on a connection opened before the live session (a stalled
                // link delivering it only now): the newer connection wins, the stale one is
                // closed and the live session is left alone.
                self.event(StudioEvent::DuplicateSession {
                    worker_id: worker_id.to_string(),
                    old_conn: conn,
                    new_conn: old,
                });
                self.close_with_error(
                    conn,
                    WorkerErrorCode::DuplicateWorker,
                    "a newer session is connected for this worker",
                );
                return;
            }
            if old != conn {
                self.event(StudioEvent::DuplicateSession {
                    worker_id: worker_id.to_string(),
                    old_conn: old,
                    new_conn: conn,
                });
                self.close_with_error(
                    old,
                    WorkerErrorCode::DuplicateWorker,
                    "another session connected for this worker",
                );
            }
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.phase = ConnPhase::Welcomed;
        }
        self.idle_remove(worker_id);
        self.orphan_remove(worker_id);
        self.next_connect_seq += 1;
        self.caps_gen += 1;
        let now = self.now;
        if let Some(w) = self.workers.get_mut(worker_id) {
            w.session = Some(conn);
            w.connect_seq = self.next_connect_seq;
            w.connected_at = Some(now);
            w.capabilities = Some(capabilities);
            w.caps_gen = self.caps_gen;
            w.last_seen = Some(now);
            w.hold = false;
            w.busy_hint = None;
            w.idle_since = None;
        }
        let server_time = self.wall.to_rfc3339();
        self.send(
            conn,
            &StudioFrame::Welcome {
                worker_id: worker_id.to_string(),
                server_time,
            },
        );
        self.event(StudioEvent::Welcomed {
            conn,
            worker_id: worker_id.to_string(),
        });
        self.refresh(worker_id, true);
    }

    pub(super) fn on_logs(&mut self, worker_id: &str, entries: Vec<LogEntry>) {
        let cap = self.cfg.log_ring_capacity;
        let max_msg = self.cfg.max_log_message_bytes;
        let Some(w) = self.workers.get_mut(worker_id) else {
            return;
        };
        let received = entries.len();
        let mut dropped = 0;
        for mut e in entries {
            truncate_at_boundary(&mut e.message, max_msg);
            w.logs.push_back(e);
            while w.logs.len() > cap {
                w.logs.pop_front();
                dropped += 1;
            }
        }
        self.event(StudioEvent::LogsReceived {
            worker_id: worker_id.to_string(),
            received,
            dropped,
        });
    }
}

pub(super) fn truncate_at_boundary(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while cut > 0 && !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}
