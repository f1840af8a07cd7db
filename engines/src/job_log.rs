//! The job's log: the lines an engine wants the studio operator to see while a job runs
//! (model download progress, a verified or discarded file, a model load), shipped as log
//! entries of that job. (Not the core's `Notice`, which is the worker machine's own
//! report to its shell.)
//!
//! Each line is a `tracing` event (target `studio_engines`), printed by the shells'
//! subscriber like any other line. The shells' `tracing` output is not shipped to the
//! studio, so whoever runs an engine may also install a [`JobLogSink`] for the current
//! thread with [`with_sink`]: the worker's engine pool does, and ships each line as a log
//! entry carrying the job id. Engines call [`info`] / [`warn`] from the thread that runs
//! `dispatch`; without a sink (tests, benchmarks) the lines are only logged.

use std::cell::RefCell;
use std::sync::Arc;

/// How serious a job log line is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobLogLevel {
    /// Progress and outcomes.
    Info,
    /// Something was wrong but the job goes on (a bad cached file was replaced, ...).
    Warn,
}

impl JobLogLevel {
    /// `info` / `warn`: a log entry's `level`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobLogLevel::Info => "info",
            JobLogLevel::Warn => "warn",
        }
    }
}

/// Receives the job log lines of the engine running on the thread it was installed on.
pub type JobLogSink = Arc<dyn Fn(JobLogLevel, &str) + Send + Sync>;

thread_local! {
    static SINK: RefCell<Option<JobLogSink>> = const { RefCell::new(None) };
}

/// Runs `f` with `sink` receiving this thread's job log lines; the previous sink (if any) is put
/// back afterwards, also when `f` panics.
pub fn with_sink<R>(sink: JobLogSink, f: impl FnOnce() -> R) -> R {
    crate::thread_scope::with_installed(&SINK, sink, f)
}

/// Hands `message` to this thread's sink only (no `tracing` event): for lines already
/// shown another way (the terminal progress bar).
pub fn ship(level: JobLogLevel, message: &str) {
    // Cloned out first so a sink that logs lines itself cannot hit a borrow error.
    let sink = SINK.with(|s| s.borrow().clone());
    if let Some(sink) = sink {
        sink(level, message);
    }
}

/// An info line: logged, and shipped when a sink is installed.
pub fn info(message: &str) {
    tracing::info!(target: "studio_engines", "{message}");
    ship(JobLogLevel::Info, message);
}

/// A warning line: logged, and shipped when a sink is installed.
pub fn warn(message: &str) {
    tracing::warn!(target: "studio_engines", "{message}");
    ship(JobLogLevel::Warn, message);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn lines_reach_the_sink_of_their_thread_only_while_installed() {
        let got = Arc::new(Mutex::new(Vec::<(JobLogLevel, String)>::new()));
        let sink: JobLogSink = {
            let got = got.clone();
            Arc::new(move |l, m| got.lock().unwrap().push((l, m.to_string())))
        };
        info("before");
        with_sink(sink, || {
            info("one");
            warn("two");
            std::thread::spawn(|| info("other thread")).join().unwrap();
        });
        info("after");
        assert_eq!(
            *got.lock().unwrap(),
            [
                (JobLogLevel::Info, "one".to_string()),
                (JobLogLevel::Warn, "two".to_string())
            ]
        );
    }

    #[test]
    fn the_previous_sink_comes_back_after_a_panic() {
        let count = Arc::new(Mutex::new(0));
        let outer: JobLogSink = {
            let count = count.clone();
            Arc::new(move |_, _| *count.lock().unwrap() += 1)
        };
        with_sink(outer, || {
            let inner: JobLogSink = Arc::new(|_, _| {});
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                with_sink(inner, || panic!("boom"))
            }));
            assert!(r.is_err());
            info("to the outer sink");
        });
        assert_eq!(*count.lock().unwrap(), 1);
        assert_eq!(JobLogLevel::Warn.as_str(), "warn");
    }
}
