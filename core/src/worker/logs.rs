//! The log ship queue: bounded, oldest dropped first with a visible marker, and an
//! unconfirmed batch can be put back at the front.

use std::collections::VecDeque;
use std::sync::Arc;

use super::{LogCategory, LogLevel};
use crate::time::WallMs;
use crate::wire::LogEntry;

/// How the queue-full marker's message begins.
const MARKER_PREFIX: &str = "ship queue full";

/// The bounded ship queue. Its entries are shared (the machine's ring of recent entries
/// holds the same ones), never copied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogQueue {
    cap: usize,
    entries: VecDeque<Arc<LogEntry>>,
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
    pub fn push(&mut self, entry: impl Into<Arc<LogEntry>>) {
        self.entries.push_back(entry.into());
        self.trim();
    }

    /// Puts an unshipped batch back ahead of newer entries; if that overflows the cap, the
    /// oldest entries (the restored ones first) are dropped and counted.
    pub fn restore_front(&mut self, batch: Vec<Arc<LogEntry>>) {
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

    /// Takes the oldest entries as one batch whose `logBatch` frame is at most `max_bytes`
    /// long; the rest stay queued for the next batch. When entries were dropped since the
    /// last batch, a `warn` marker (`ship queue full (<cap> entries); dropped N oldest`)
    /// stamped `wall` leads the batch. An entry too large for any batch on its own (never,
    /// with the machine's clipping and `MIN_LOG_BATCH_BYTES`) is dropped and counted.
    pub fn drain_batch(&mut self, wall: WallMs, max_bytes: usize) -> Vec<Arc<LogEntry>> {
        let mut batch = Vec::new();
        let mut len = EMPTY_BATCH_LEN;
        if self.dropped > 0 {
            let marker = LogEntry {
                ts: wall.to_rfc3339(),
                level: LogLevel::Warn.as_str().into(),
                category: LogCategory::Logs.as_str().into(),
                message: format!(
                    "{MARKER_PREFIX} ({} entries); dropped {} oldest",
                    self.cap, self.dropped
                ),
                job_id: None,
            };
            len += encoded_len(&marker);
            batch.push(Arc::new(marker));
            self.dropped = 0;
        }
        while let Some(e) = self.entries.front() {
            let n = encoded_len(e) + usize::from(!batch.is_empty());
            if len + n > max_bytes {
                if batch.is_empty() {
                    self.entries.pop_front();
                    self.dropped += 1;
                    self.dropped_total += 1;
                    continue;
                }
                break;
            }
            len += n;
            batch.extend(self.entries.pop_front());
        }
        batch
    }
}

/// The length of `{"type":"logBatch","entries":[]}`: a batch's frame is this plus its
/// entries' JSON and the commas between them.
const EMPTY_BATCH_LEN: usize = 32;

/// The length of `e` as JSON, counted without building the text.
fn encoded_len(e: &LogEntry) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    // Writing to a counter cannot fail, and a log entry always serialises.
    let _ = serde_json::to_writer(&mut n, e);
    n.0
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
        let batch = q.drain_batch(WallMs(0), usize::MAX);
        assert_eq!(batch.len(), 5001);
        assert_eq!(
            batch[0].message,
            "ship queue full (5000 entries); dropped 2 oldest"
        );
        assert_eq!(batch[0].level, "warn");
        assert_eq!(batch[0].category, "logs");
        assert_eq!(batch[1].message, "m2");
        assert_eq!(q.drain_batch(WallMs(0), usize::MAX).len(), 0);
        assert_eq!(q.dropped_total(), 2);
    }

    #[test]
    fn restore_goes_to_the_front_and_respects_the_cap() {
        let mut q = LogQueue::new(4);
        q.push(e(0));
        q.push(e(1));
        let batch = q.drain_batch(WallMs(0), usize::MAX);
        q.push(e(2));
        q.restore_front(batch);
        let got: Vec<_> = q
            .drain_batch(WallMs(0), usize::MAX)
            .into_iter()
            .map(|x| x.message.clone())
            .collect();
        assert_eq!(got, vec!["m0", "m1", "m2"]);

        let mut q = LogQueue::new(3);
        q.push(e(0));
        q.push(e(1));
        let batch = q.drain_batch(WallMs(0), usize::MAX);
        q.push(e(2));
        q.push(e(3));
        q.restore_front(batch);
        assert_eq!(q.len(), 3);
        let got: Vec<_> = q
            .drain_batch(WallMs(0), usize::MAX)
            .into_iter()
            .map(|x| x.message.clone())
            .collect();
        assert_eq!(got[0], "ship queue full (3 entries); dropped 1 oldest");
        assert_eq!(&got[1..], ["m1", "m2", "m3"]);
    }

    #[test]
    fn a_batch_is_cut_at_the_byte_limit_and_the_rest_waits() {
        let mut q = LogQueue::new(100);
        for i in 0..10 {
            q.push(e(i));
        }
        let one = encoded_len(&e(0));
        // Room for three entries and their two commas.
        let max = EMPTY_BATCH_LEN + 3 * one + 2;
        let batch = q.drain_batch(WallMs(0), max);
        assert_eq!(batch.len(), 3);
        let text = crate::wire::encode(&crate::wire::LogBatchRef { entries: &batch });
        assert_eq!(
            text.len(),
            max,
            "the size estimate is the frame's exact length"
        );
        assert_eq!(q.len(), 7);
        assert_eq!(q.drain_batch(WallMs(0), max - 1).len(), 2);
        assert_eq!(
            crate::wire::encode(&crate::wire::WorkerFrame::LogBatch { entries: vec![] }).len(),
            EMPTY_BATCH_LEN
        );
    }

    #[test]
    fn an_entry_too_large_for_any_batch_is_dropped_and_counted() {
        let mut q = LogQueue::new(10);
        let mut big = e(0);
        big.message = "x".repeat(1000);
        q.push(big);
        q.push(e(1));
        let batch = q.drain_batch(WallMs(0), 200);
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].message, "m1");
        assert_eq!(q.dropped_total(), 1);
        let next = q.drain_batch(WallMs(0), 200);
        assert!(next[0].message.contains("dropped 1 oldest"), "{next:?}");
    }

    #[test]
    fn a_restored_marker_is_owed_again_not_duplicated() {
        let mut q = LogQueue::new(1);
        q.push(e(0));
        q.push(e(1));
        let batch = q.drain_batch(WallMs(0), usize::MAX);
        assert_eq!(batch.len(), 2);
        q.restore_front(batch);
        let again = q.drain_batch(WallMs(0), usize::MAX);
        assert_eq!(
            again[0].message,
            "ship queue full (1 entries); dropped 1 oldest"
        );
        assert_eq!(again.len(), 2);
    }
}
