//! Job notices: the lines an engine wants the studio operator to see while a job runs
//! (model download progress, a verified or discarded file, a model load).
//!
//! Each notice is a `tracing` event (target `studio_engines`), printed by the shells'
//! subscriber like any other line. The shells' `tracing` output is not shipped to the
//! studio, so whoever runs an engine may also install a [`NoticeSink`] for the current
//! thread with [`with_sink`]: the worker's engine pool does, and ships each notice as a log
//! entry carrying the job id. Engines call [`info`] / [`warn`] from the thread that runs
//! `dispatch`; without a sink (tests, benchmarks) the notices are only logged.

use std::cell::RefCell;
use std::sync::Arc;

/// How serious a notice is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoticeLevel {
    /// Progress and outcomes.
    Info,
    /// Something was wrong but the job goes on (a bad cached file was replaced, ...).
    Warn,
}

impl NoticeLevel {
    /// `info` / `warn`: a log entry's `level`.
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeLevel::Info => "info",
            NoticeLevel::Warn => "warn",
        }
    }
}

/// Receives the notices of the engine running on the thread it was installed on.
pub type NoticeSink = Arc<dyn Fn(NoticeLevel, &str) + Send + Sync>;

thread_local! {
    static SINK: RefCell<Option<NoticeSink>> = const { RefCell::new(None) };
}

/// Runs `f` with `sink` receiving this thread's notices; the previous sink (if any) is put
/// back afterwards, also when `f` panics.
pub fn with_sink<R>(sink: NoticeSink, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<NoticeSink>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            SINK.with(|s| *s.borrow_mut() = previous);
        }
    }
    let previous = SINK.with(|s| s.borrow_mut().replace(sink));
    let _restore = Restore(previous);
    f()
}

/// Hands `message` to this thread's sink only (no `tracing` event): for lines already
/// shown another way (the terminal progress bar).
pub fn ship(level: NoticeLevel, message: &str) {
    // Cloned out first so a sink that emits notices itself cannot hit a borrow error.
    let sink = SINK.with(|s| s.borrow().clone());
    if let Some(sink) = sink {
        sink(level, message);
    }
}

/// An info notice: logged, and shipped when a sink is installed.
pub fn info(message: &str) {
    tracing::info!(target: "studio_engines", "{message}");
    ship(NoticeLevel::Info, message);
}

/// A warning notice: logged, and shipped when a sink is installed.
pub fn warn(message: &str) {
    tracing::warn!(target: "studio_engines", "{message}");
    ship(NoticeLevel::Warn, message);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn notices_reach_the_sink_of_their_thread_only_while_installed() {
        let got = Arc::new(Mutex::new(Vec::<(NoticeLevel, String)>::new()));
        let sink: NoticeSink = {
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
                (NoticeLevel::Info, "one".to_string()),
                (NoticeLevel::Warn, "two".to_string())
            ]
        );
    }

    #[test]
    fn the_previous_sink_comes_back_after_a_panic() {
        let count = Arc::new(Mutex::new(0));
        let outer: NoticeSink = {
            let count = count.clone();
            Arc::new(move |_, _| *count.lock().unwrap() += 1)
        };
        with_sink(outer, || {
            let inner: NoticeSink = Arc::new(|_, _| {});
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                with_sink(inner, || panic!("boom"))
            }));
            assert!(r.is_err());
            info("to the outer sink");
        });
        assert_eq!(*count.lock().unwrap(), 1);
        assert_eq!(NoticeLevel::Warn.as_str(), "warn");
    }
}
