//! What a live session sends on its own: heartbeats, log batches, and the log entries the
//! machine writes (shipped and reported).

use std::sync::Arc;

use crate::wire::{self, LogEntry, UserPresence, WorkerFrame};

use super::state::Link;
use super::timers::Timer;
use super::{clip_bytes, Command, LogCategory, LogLevel, Notice, Worker, LOG_FIELD_MAX_BYTES};

/// The last heartbeat frame the machine encoded, with the machine state it depends on.
/// Performance only: most heartbeats repeat the previous one, so while that state is
/// unchanged the text is reused rather than rebuilt and re-serialised. The capabilities
/// come from the configuration (fixed once the machine is built: `cfg` is private and
/// never handed out mutably) plus the inputs the machine changes: pause and enable (as the
/// `autoEnabled` they give), user presence and the VRAM threshold. Those and the current job are the key, compared each time, so
/// no code path needs to invalidate the cache. A debug assertion in `send_heartbeat`
/// re-encodes every heartbeat and compares, so a capability that starts depending on
/// other state fails every core test until it joins the key.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct HeartbeatCache {
    pub(super) key: HeartbeatKey,
    pub(super) text: String,
}

/// What a cached heartbeat was encoded from, besides the fixed configuration.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct HeartbeatKey {
    pub(super) auto_enabled: bool,
    pub(super) presence: Option<UserPresence>,
    /// By bits: the encoding tells -0.0 from 0.0.
    pub(super) vram_threshold_bits: u32,
    pub(super) current_job_id: Option<String>,
}

impl Worker {
    pub(super) fn send_heartbeat(&mut self) {
        let fresh = self.hb_cache.as_ref().is_some_and(|c| {
            c.key.auto_enabled == self.auto_enabled()
                && c.key.presence == self.presence
                && c.key.vram_threshold_bits == self.cfg.vram_threshold_gb.to_bits()
                && c.key.current_job_id.as_deref() == self.current_job_id()
        });
        if !fresh {
            let current_job_id = self.current_job_id().map(str::to_string);
            let text = wire::encode(&WorkerFrame::Heartbeat {
                capabilities: self.capabilities(),
                current_job_id: current_job_id.clone(),
            });
            self.hb_cache = Some(HeartbeatCache {
                key: HeartbeatKey {
                    auto_enabled: self.auto_enabled(),
                    presence: self.presence,
                    vram_threshold_bits: self.cfg.vram_threshold_gb.to_bits(),
                    current_job_id,
                },
                text,
            });
        }
        let text = self
            .hb_cache
            .as_ref()
            .map(|c| c.text.clone())
            .unwrap_or_default();
        debug_assert_eq!(
            text,
            wire::encode(&WorkerFrame::Heartbeat {
                capabilities: self.capabilities(),
                current_job_id: self.current_job_id().map(str::to_string),
            }),
            "the cached heartbeat is the one encoding now would give"
        );
        self.send_text(text);
        self.heartbeats_sent += 1;
        if self.hb_outstanding.len() >= MAX_OUTSTANDING_HEARTBEATS {
            // The studio stopped acking; the read-idle timer will end this session. Keep
            // the bookkeeping bounded meanwhile.
            self.hb_outstanding.pop_front();
        }
        self.hb_outstanding.push_back(self.logs_unconfirmed.len());
        let at = self.now.mono + self.cfg.timings.heartbeat;
        self.timers.set(Timer::Heartbeat, at);
    }

    /// Sends one `logBatch` of at most `log_batch_max_bytes` (what does not fit waits for
    /// the next flush, re-armed here).
    pub(super) fn flush_logs(&mut self) {
        let batch = self
            .logs
            .drain_batch(self.now.wall, self.cfg.limits.log_batch_max_bytes);
        self.arm_log_flush();
        if batch.is_empty() {
            return;
        }
        self.send_frame(&wire::LogBatchRef { entries: &batch });
        if self.logs_unconfirmed.len() >= MAX_UNCONFIRMED_LOG_BATCHES {
            // Bounded: the oldest unconfirmed batch is assumed delivered.
            self.logs_unconfirmed.pop_front();
            for n in self.hb_outstanding.iter_mut() {
                *n = n.saturating_sub(1);
            }
        }
        self.logs_unconfirmed.push_back(batch);
    }

    /// Encodes `frame` and sends it on the live connection, if any (without one, nothing
    /// is encoded).
    pub(super) fn send_frame(&mut self, frame: &impl serde::Serialize) {
        if self.link.conn().is_none() {
            return;
        }
        self.send_text(wire::encode(frame));
    }

    /// Sends an encoded frame on the live connection, if any. A frame over
    /// `max_send_frame_bytes` is not sent (the studio would refuse it, maybe end the
    /// session for it): a `completeJson` is turned into a `fail` before it gets here, the
    /// others are bounded by the frames they answer, so this is a guard with a log line.
    pub(super) fn send_text(&mut self, text: String) {
        let Some(conn) = self.link.conn() else { return };
        let limit = self.cfg.limits.max_send_frame_bytes;
        if text.len() > limit {
            // Every frame this crate encodes starts with its tag.
            let kind = text
                .strip_prefix(r#"{"type":""#)
                .and_then(|t| t.split('"').next())
                .unwrap_or("unknown")
                .to_string();
            self.log(
                LogLevel::Error,
                LogCategory::Ws,
                format!(
                    "a {kind} frame of {} bytes is over the {limit}-byte frame limit; not sent",
                    text.len()
                ),
                None,
            );
            return;
        }
        self.stats.frames_out += 1;
        self.emit(Command::Send { conn, text });
    }

    // --------------------------------------------------------------------------------
    // Logs, notices, persistence, exit
    // --------------------------------------------------------------------------------

    pub(super) fn log(
        &mut self,
        level: LogLevel,
        category: LogCategory,
        message: String,
        job_id: Option<String>,
    ) {
        let entry = LogEntry {
            ts: self.now.wall.to_rfc3339(),
            level: level.as_str().into(),
            category: category.as_str().into(),
            message,
            job_id,
        };
        self.emit(Command::Report(Notice {
            level,
            category,
            message: entry.message.clone(),
            job_id: entry.job_id.clone(),
        }));
        self.push_log_entry(entry);
    }

    /// Queues a log entry for shipping (and the status ring), clipped: `message` to
    /// `log_message_max_bytes`, the other fields to [`LOG_FIELD_MAX_BYTES`].
    pub(super) fn push_log_entry(&mut self, mut entry: LogEntry) {
        let max = self.cfg.limits.log_message_max_bytes;
        if entry.message.len() > max {
            entry.message = clip_bytes(&entry.message, max);
        }
        for field in [&mut entry.ts, &mut entry.level, &mut entry.category] {
            if field.len() > LOG_FIELD_MAX_BYTES {
                *field = clip_bytes(field, LOG_FIELD_MAX_BYTES);
            }
        }
        if let Some(job_id) = entry
            .job_id
            .as_mut()
            .filter(|j| j.len() > LOG_FIELD_MAX_BYTES)
        {
            *job_id = clip_bytes(job_id, LOG_FIELD_MAX_BYTES);
        }
        self.log_seq += 1;
        // One entry, shared by the ship queue and the ring of recent entries.
        let entry = Arc::new(entry);
        if self.cfg.limits.recent_logs > 0 {
            if self.recent_logs.len() >= self.cfg.limits.recent_logs {
                self.recent_logs.pop_front();
            }
            self.recent_logs.push_back(Arc::clone(&entry));
        }
        self.logs.push(entry);
        self.arm_log_flush();
    }

    /// Schedules the next log flush one interval from now, if entries wait, the session is
    /// live and no flush is scheduled yet. Batches still go out at most once per interval.
    pub(super) fn arm_log_flush(&mut self) {
        if matches!(self.link, Link::Live { .. })
            && !self.logs.is_empty()
            && self.timers.get(Timer::LogFlush).is_none()
        {
            let at = self.now.mono + self.cfg.timings.log_flush;
            self.timers.set(Timer::LogFlush, at);
        }
    }
}

/// Heartbeats remembered while waiting for their acks (bounded; read-idle ends a session
/// long before this fills at the default timings).
pub const MAX_OUTSTANDING_HEARTBEATS: usize = 16;
/// Log batches remembered until a later heartbeatAck confirms them.
pub const MAX_UNCONFIRMED_LOG_BATCHES: usize = 64;
