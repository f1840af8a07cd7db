//! The log ship queue: bounded, oldest dropped first with a visible marker, and an
//! unconfirmed batch can be put back at the front.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::{LogCategory, LogLevel};
use crate::time::WallMs;
use crate::wire::LogEntry;

/// How the queue-full marker's message begins.
const MARKER_PREFIX: &str = "ship queue full";

/// The bounded ship queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogQueue {
    cap: usize,
    entries: VecDeque<LogEntry>,
    /// Dropped since the last marker was shipped.
    dropped: u64,
    dropped_total: u64,
}

impl LogQueue {
    /// A queue holding at most `cap` entries.
    pub fn new(cap: usize) -> LogQueue {
        LogQueue {
            cap,
            entries: VecDeque::new(),
            dropped: 0,
            dropped_total: 0,
        }
    }

    /// Entries waiting.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing waits (and no drop marker is owed).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.dropped == 0
    }

    /// Entries dropped over the queue's life.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }

    /// The capacity.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Appends, dropping the oldest entry when full.
    pub fn push(&mut self, entry: LogEntry) {
        self.entries.push_back(entry);
        self.trim();
    }

    /// Puts an unshipped batch back ahead of newer entries; if that overflows the cap, the
    /// oldest entries (the restored ones first) are dropped and counted.
    pub fn restore_front(&mut self, batch: Vec<LogEntry>) {
        for e in batch.into_iter().rev() {
            if e.category == LogCategory::Logs.as_str() && e.message.starts_with(MARKER_PREFIX) {
                // A marker from the lost batch: its count is already in `dropped_total`;
                // re-owe it rather than queueing a stale marker.
                if let Some(n) = parse_marker_count(&e.message) {
                    self.dropped += n;
                }
                continue;
            }
            self.entries.push_front(e);
        }
        self.trim();
    }

    fn trim(&mut self) {
        while self.entries.len() > self.cap {
            self.entries.pop_front();
            self.dropped += 1;
            self.dropped_total += 1;
        }
    }

    /// Takes every queued entry as one batch. When entries were dropped since the last
    /// batch, a `warn` marker (`ship queue full (<cap> entries); dropped N oldest`) stamped
    /// `wall` leads the batch, so a batch holds at most `cap + 1` entries.
    pub fn drain_batch(&mut self, wall: WallMs) -> Vec<LogEntry> {
        let mut batch = Vec::with_capacity(self.entries.len() + 1);
        if self.dropped > 0 {
            batch.push(LogEntry {
                ts: wall.to_rfc3339(),
                level: LogLevel::Warn.as_str().into(),
                category: LogCategory::Logs.as_str().into(),
                message: format!(
                    "{MARKER_PREFIX} ({} entries); dropped {} oldest",
                    self.cap, self.dropped
                ),
                job_id: None,
            });
            self.dropped = 0;
        }
        batch.extend(self.entries.drain(..));
        batch
    }
}

fn parse_marker_count(msg: &str) -> Option<u64> {
    msg.split("dropped ")
        .nth(1)?
        .split(' ')
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(i: usize) -> LogEntry {
        LogEntry {
            ts: "t".into(),
            level: "info".into(),
            category: "ws".into(),
            message: format!("m{i}"),
            job_id: None,
        }
    }

    #[test]
    fn cap_drops_oldest_and_marks() {
        let mut q = LogQueue::new(5000);
        for i in 0..5002 {
            q.push(e(i));
        }
        assert_eq!(q.len(), 5000);
        let batch = q.drain_batch(WallMs(0));
        assert_eq!(batch.len(), 5001);
        assert_eq!(
            batch[0].message,
            "ship queue full (5000 entries); dropped 2 oldest"
        );
        assert_eq!(batch[0].level, "warn");
        assert_eq!(batch[0].category, "logs");
        assert_eq!(batch[1].message, "m2");
        assert_eq!(q.drain_batch(WallMs(0)).len(), 0);
        assert_eq!(q.dropped_total(), 2);
    }

    #[test]
    fn restore_goes_to_the_front_and_respects_the_cap() {
        let mut q = LogQueue::new(4);
        q.push(e(0));
        q.push(e(1));
        let batch = q.drain_batch(WallMs(0));
        q.push(e(2));
        q.restore_front(batch);
        let got: Vec<_> = q
            .drain_batch(WallMs(0))
            .into_iter()
            .map(|x| x.message)
            .collect();
        assert_eq!(got, vec!["m0", "m1", "m2"]);

        let mut q = LogQueue::new(3);
        q.push(e(0));
        q.push(e(1));
        let batch = q.drain_batch(WallMs(0));
        q.push(e(2));
        q.push(e(3));
        q.restore_front(batch);
        assert_eq!(q.len(), 3);
        let got: Vec<_> = q
            .drain_batch(WallMs(0))
            .into_iter()
            .map(|x| x.message)
            .collect();
        assert_eq!(got[0], "ship queue full (3 entries); dropped 1 oldest");
        assert_eq!(&got[1..], ["m1", "m2", "m3"]);
    }

    #[test]
    fn a_restored_marker_is_owed_again_not_duplicated() {
        let mut q = LogQueue::new(1);
        q.push(e(0));
        q.push(e(1));
        let batch = q.drain_batch(WallMs(0));
        assert_eq!(batch.len(), 2);
        q.restore_front(batch);
        let again = q.drain_batch(WallMs(0));
        assert_eq!(
            again[0].message,
            "ship queue full (1 entries); dropped 1 oldest"
        );
        assert_eq!(again.len(), 2);
    }
}
