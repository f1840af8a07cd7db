//! `tracing` setup shared by both binaries: human-readable lines on stderr, filtered by
//! `RUST_LOG` (default `info`; invalid directives are ignored rather than fatal), and, for
//! `run`, the Sentry layer ([`crate::telemetry::layer`], a no-op unless `SENTRY_DSN` is
//! set).
//!
//! Nothing logged by the shells carries a secret: bearer tokens and registration secrets
//! never appear in events, and configs log through their redacting `Display`/`Debug`.
//!
//! # Batched lines on the loop thread
//!
//! A job makes the core report a few lines (offer, result); written one by one, each is a
//! `write(2)` on the loop thread between reading the offer and sending the result. A shell
//! holds a [`Batch`] ([`batch`]) for each turn of its loop: the lines that thread logs
//! meanwhile are kept, in order, and written to stderr with one `write` when the turn ends
//! (also when it unwinds), or at once when they reach [`LOG_BATCH_BYTES`]. Other threads,
//! and the loop thread outside a turn, write each line as it comes.

use std::cell::RefCell;
use std::io::{self, Write};

use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The `RUST_LOG` filter, defaulting to `info`.
pub fn env_filter() -> EnvFilter {
    env_filter_with_default(LevelFilter::INFO)
}

/// `RUST_LOG`, or `default` when it is unset.
pub fn env_filter_with_default(default: LevelFilter) -> EnvFilter {
    EnvFilter::builder()
        .with_default_directive(default.into())
        .from_env_lossy()
}

/// Installs the global subscriber (stderr, `RUST_LOG`). Returns `false` when one was
/// already installed (then nothing changes), so calling it twice is harmless.
pub fn init() -> bool {
    init_with_default(LevelFilter::INFO)
}

/// [`init`] with another level for when `RUST_LOG` is unset (the demo uses `warn` so its
/// table is not buried in session logs).
pub fn init_with_default(default: LevelFilter) -> bool {
    init_with(default, false)
}

/// [`init_with_default`], with the Sentry layer when `sentry` is set (errors become
/// events, warnings breadcrumbs, while Sentry is on).
pub fn init_with(default: LevelFilter, sentry: bool) -> bool {
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(Stderr)
        .with_target(true);
    tracing_subscriber::registry()
        .with(env_filter_with_default(default))
        .with(stderr)
        .with(sentry.then(crate::telemetry::layer))
        .try_init()
        .is_ok()
}

/// How many bytes of log lines a [`Batch`] keeps before it writes them out early.
pub const LOG_BATCH_BYTES: usize = 64 * 1024;

thread_local! {
    /// The lines of this thread's open batch (`None`: no batch, write at once).
    static BATCH: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

/// Keeps the lines this thread logs until it drops, then writes them with one `write` (see
/// the module docs). A batch opened while one is open adds to that one.
#[must_use = "lines are kept only while the batch lives"]
pub struct Batch {
    /// This guard opened the batch (an inner one leaves the writing to the outer).
    owner: bool,
    /// Per thread: not `Send`.
    _thread: std::marker::PhantomData<*const ()>,
}

/// Opens a [`Batch`] on this thread.
pub fn batch() -> Batch {
    let owner = BATCH
        .try_with(|b| {
            let mut b = b.borrow_mut();
            let opened = b.is_none();
            if opened {
                *b = Some(Vec::new());
            }
            opened
        })
        .unwrap_or(false);
    Batch {
        owner,
        _thread: std::marker::PhantomData,
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        if !self.owner {
            return;
        }
        if let Ok(Some(lines)) = BATCH.try_with(|b| b.borrow_mut().take()) {
            write_out(&lines);
        }
    }
}

fn write_out(lines: &[u8]) {
    if !lines.is_empty() {
        // Nowhere to report a failed write to stderr.
        let _ = io::stderr().lock().write_all(lines);
    }
}

/// Keeps `line` in this thread's open batch; `false` when there is none. A batch that
/// reaches [`LOG_BATCH_BYTES`] is written out and starts again.
fn keep(line: &[u8]) -> bool {
    keep_in(line, write_out)
}

/// [`keep`], writing a full batch with `out`.
fn keep_in(line: &[u8], out: fn(&[u8])) -> bool {
    BATCH
        .try_with(|b| {
            let mut b = b.borrow_mut();
            let Some(lines) = b.as_mut() else {
                return false;
            };
            lines.extend_from_slice(line);
            if lines.len() >= LOG_BATCH_BYTES {
                out(lines);
                lines.clear();
            }
            true
        })
        .unwrap_or(false)
}

/// The subscriber's writer: stderr, through this thread's [`Batch`] when one is open.
struct Stderr;

/// One event's writer (the formatter writes a whole line at once).
struct Line;

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line
    }
}

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if keep(buf) {
            Ok(buf.len())
        } else {
            io::stderr().write(buf)
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        if keep(buf) {
            Ok(())
        } else {
            io::stderr().write_all(buf)
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept() -> Option<Vec<u8>> {
        BATCH.with(|b| b.borrow().clone())
    }

    #[test]
    fn a_batch_keeps_lines_until_it_drops_and_nests() {
        assert_eq!(kept(), None);
        assert!(!keep_in(b"not kept\n", record));
        {
            let _outer = batch();
            assert!(keep_in(b"one\n", record));
            {
                let _inner = batch();
                assert!(keep_in(b"two\n", record));
            }
            // The inner batch did not write the outer one's lines.
            assert_eq!(kept().as_deref(), Some(&b"one\ntwo\n"[..]));
        }
        // The outer one wrote them (to stderr) and closed.
        assert_eq!(kept(), None);
    }

    thread_local! {
        static WRITTEN: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
    }

    fn record(lines: &[u8]) {
        WRITTEN.with(|w| w.borrow_mut().push(lines.len()));
    }

    #[test]
    fn a_full_batch_is_written_out_early() {
        let _batch = batch();
        let line = vec![b'x'; LOG_BATCH_BYTES / 2 + 1];
        assert!(keep_in(&line, record));
        assert_eq!(kept().map(|k| k.len()), Some(line.len()));
        assert!(WRITTEN.with(|w| w.borrow().is_empty()));
        // The second line takes it past the limit: written out, the batch starts again.
        assert!(keep_in(&line, record));
        assert_eq!(WRITTEN.with(|w| w.borrow().clone()), [2 * line.len()]);
        assert_eq!(kept().map(|k| k.len()), Some(0));
    }

    #[test]
    fn other_threads_have_no_batch() {
        let _batch = batch();
        std::thread::spawn(|| assert!(!keep_in(b"elsewhere\n", record)))
            .join()
            .unwrap();
        assert!(keep_in(b"here\n", record));
    }

    #[test]
    fn the_default_filter_is_info() {
        // RUST_LOG may be set by whoever runs the tests; only check it builds and that the
        // default directive is there when the variable is absent.
        let filter = super::env_filter();
        if std::env::var_os("RUST_LOG").is_none() {
            assert_eq!(filter.to_string(), "info");
        }
    }
}
