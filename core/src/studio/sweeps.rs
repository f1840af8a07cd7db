//! Timers: offer timeouts and the periodic sweep of silent sessions and expired claims.

use crate::wire;

use super::Studio;
use super::{RequeueReason, StudioCommand, StudioEvent};

impl Studio {
    pub(super) fn on_tick(&mut self) {
        let now = self.now;
        while let Some(&(deadline, seq)) = self.offer_deadlines.first() {
            if deadline > now {
                break;
            }
            self.offer_deadlines.pop_first();
            if let Some(j) = self.jobs.get_mut(&seq) {
                j.offer_deadline = None;
            }
            self.release_offer(seq, RequeueReason::OfferTimedOut, true);
        }
        if self.next_sweep.is_some_and(|s| s <= now) {
            self.next_sweep = None;
            self.sweep();
        }
    }

    pub(super) fn sweep(&mut self) {
        let now = self.now;
        let timeout = self.cfg.session_timeout;
        let mut expired = 0;
        let mut released = 0;
        // Entries sit at or before their connection's last frame. The first entry is
        // re-filed at the last frame until it is exact, so a session is closed only when it
        // is the earliest by `(last_frame, conn)`: the order an index kept exact on every
        // frame gives.
        while let Some(&(last, conn)) = self.session_index.first() {
            if now.saturating_since(last) < timeout {
                break;
            }
            let refile = self
                .conns
                .get_mut(&conn)
                .filter(|c| c.last_frame > last)
                .map(|c| {
                    c.indexed = c.last_frame;
                    c.last_frame
                });
            if let Some(at) = refile {
                self.session_index.remove(&(last, conn));
                self.session_index.insert((at, conn));
                continue;
            }
            let worker_id = self
                .conns
                .get(&conn)
                .map(|c| c.worker_id.clone())
                .unwrap_or_default();
            self.event(StudioEvent::SessionExpired {
                conn,
                worker_id: worker_id.to_string(),
            });
            self.out.push_back(StudioCommand::Close {
                conn,
                code: wire::close_code::NORMAL,
                reason: wire::close_reason::SESSION_TIMED_OUT.into(),
            });
            // Guarantees progress even if the index and the map ever disagreed.
            self.session_index.remove(&(last, conn));
            self.drop_conn(conn);
            expired += 1;
        }
        while let Some((since, worker_id)) = self.orphans.first().cloned() {
            if now.saturating_since(since) < timeout {
                break;
            }
            self.orphans.remove(&(since, worker_id.clone()));
            let slot = self.workers.get_mut(&worker_id).and_then(|w| {
                w.orphan_since = None;
                w.slot
            });
            if let Some(seq) = slot {
                self.release_run(seq, RequeueReason::ClaimExpired, false);
                released += 1;
            }
        }
        if expired + released > 0 {
            self.event(StudioEvent::Swept {
                expired_sessions: expired,
                released_claims: released,
            });
        }
    }
}
