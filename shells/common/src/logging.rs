//! `tracing` setup shared by both binaries: human-readable lines on stderr, filtered by
//! `RUST_LOG` (default `info`; invalid directives are ignored rather than fatal), and, for
//! `run`, the Sentry layer ([`crate::telemetry::layer`], a no-op unless `SENTRY_DSN` is
//! set).
//!
//! Nothing logged by the shells carries a secret: bearer tokens and registration secrets
//! never appear in events, and configs log through their redacting `Display`/`Debug`.
//!
//! # Lines are formatted and written on a logger thread
//!
//! A job makes the core report a few lines (offer, result) on the loop thread, between
//! reading the offer and sending the result. Formatting them (`tracing-subscriber`'s `fmt`
//! layer) and writing them to stderr cost that thread about a sixth of its time per job.
//! So the layer installed here ([`Deferred`]) only captures an event where it happens: its
//! metadata (a `'static` reference), the time, and its field values (numbers as they are,
//! text copied into one string, `Debug` values rendered there, errors with their sources'
//! messages). The capture goes through a bounded channel to the `logger` thread, which
//! rebuilds the event from the same metadata and values and hands it to the same `fmt`
//! layer (target on, no colours, the event's own time: [`EventTime`]), so the text is what
//! formatting in place would have written, line for line, in the order the events were
//! captured (all threads share the channel).
//!
//! The logger writes what it has formatted with one `write` when its queue is empty (or at
//! [`LOG_BATCH_BYTES`]), then waits [`LINGER`] before it looks again, so a busy loop thread
//! does not wake it for every job: a line reaches stderr at most a few milliseconds after
//! its event. Nothing is lost on the way out: [`flush`] returns once every line captured
//! before it is written; the binaries call it before they print their last line and when
//! `main` returns (or unwinds), and a panic flushes before its message is printed. A full
//! queue ([`LOG_QUEUE`]) makes the logging thread wait, as a blocked stderr did before; a
//! logger that is gone (it cannot start) leaves each thread formatting its own lines.

use std::cell::{Cell, RefCell};
use std::fmt::{self, Write as _};
use std::io::{self, Write};
use std::ops::Range;
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use studio_core::time::WallMs;
use tracing::field::{Field, Value, Visit};
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

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
    // Detached: it ends with the process (everything written by then: `flush`).
    let logger = spawn_logger(Box::new(io::stderr()), LINGER, LOG_QUEUE).map(|(handle, _)| handle);
    let layer = Deferred::new(logger.clone(), SystemTime::now);
    let installed = tracing_subscriber::registry()
        .with(env_filter_with_default(default))
        .with(layer)
        .with(sentry.then(crate::telemetry::layer))
        .try_init()
        .is_ok();
    if let (true, Some(logger)) = (installed, logger) {
        if GLOBAL.set(logger).is_ok() {
            let shown = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                flush();
                shown(info);
            }));
        }
    }
    installed
}

/// Returns once every line captured so far (by any thread) is written to stderr. A no-op
/// without the logger (no [`init`]), and on the logger thread itself.
pub fn flush() {
    if let Some(logger) = GLOBAL.get() {
        logger.flush();
    }
}

/// Writes `studio-worker: <message>` on stderr once every line logged before it is there
/// ([`flush`]): the plain line an operator reads last, whatever `RUST_LOG` says.
pub fn program_line(message: impl fmt::Display) {
    flush();
    eprintln!("{}: {message}", crate::error::PROGRAM);
}

/// Calls [`flush`] when it drops (also while unwinding): held by `main`.
#[must_use = "flushes only when it drops"]
#[derive(Debug)]
pub struct FlushOnDrop;

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        flush();
    }
}

/// How many bytes of formatted lines the logger keeps before it writes them out.
pub const LOG_BATCH_BYTES: usize = 64 * 1024;

/// How many captured lines may wait for the logger before a logging thread waits too. The
/// queue's slots are allocated and written when the logger starts, so they count in the
/// resident memory of an idle worker: 1 024 of them are well under 128 KiB (a test holds
/// that), and more lines than a busy minute's are logged in one linger.
pub const LOG_QUEUE: usize = 1024;

/// How long the logger waits after a write before it looks at its queue again.
pub const LINGER: Duration = Duration::from_millis(2);

/// The logger of the global subscriber, once [`init_with`] installed it.
static GLOBAL: OnceLock<LoggerHandle> = OnceLock::new();

// ------------------------------------------------------------------------------------------
// Capture

/// One captured field value. Text lives in the [`Captured::text`] of its event.
#[derive(Debug)]
enum Val {
    Str(Range<usize>),
    /// The value's `Debug` text (also what a `Display` field records).
    Debug(Range<usize>),
    I64(i64),
    U64(u64),
    I128(i128),
    U128(u128),
    F64(f64),
    Bool(bool),
    Bytes(Vec<u8>),
    Error(Box<ErrorText>),
}

/// An event as captured where it happened.
#[derive(Debug)]
struct Captured {
    meta: &'static Metadata<'static>,
    at: SystemTime,
    text: String,
    /// (index of the field in `meta.fields()`, value), in the order they were recorded.
    values: Vec<(usize, Val)>,
}

impl Captured {
    fn of(event: &Event<'_>, at: SystemTime) -> Captured {
        let mut captured = Captured {
            meta: event.metadata(),
            at,
            text: String::new(),
            values: Vec::with_capacity(event.metadata().fields().len()),
        };
        event.record(&mut captured);
        captured
    }

    fn text_of(&mut self, write: impl FnOnce(&mut String)) -> Range<usize> {
        let start = self.text.len();
        write(&mut self.text);
        start..self.text.len()
    }

    fn push(&mut self, field: &Field, value: Val) {
        self.values.push((field.index(), value));
    }
}

impl Visit for Captured {
    fn record_str(&mut self, field: &Field, value: &str) {
        let range = self.text_of(|t| t.push_str(value));
        self.push(field, Val::Str(range));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // Writing into a String cannot fail.
        let range = self.text_of(|t| {
            let _ = write!(t, "{value:?}");
        });
        self.push(field, Val::Debug(range));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, Val::I64(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field, Val::U64(value));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.push(field, Val::I128(value));
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.push(field, Val::U128(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field, Val::F64(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, Val::Bool(value));
    }

    fn record_bytes(&mut self, field: &Field, value: &[u8]) {
        self.push(field, Val::Bytes(value.to_vec()));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.push(field, Val::Error(Box::new(ErrorText::of(value))));
    }
}

/// A captured error: its message and its sources', for the formatter to print as it would
/// the error itself.
#[derive(Debug)]
struct ErrorText {
    message: String,
    source: Option<Box<ErrorText>>,
}

impl ErrorText {
    fn of(error: &(dyn std::error::Error + 'static)) -> ErrorText {
        ErrorText {
            message: error.to_string(),
            source: error.source().map(|s| Box::new(ErrorText::of(s))),
        }
    }
}

impl fmt::Display for ErrorText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ErrorText {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|s| s as _)
    }
}

/// Text that was a value's `Debug` output: printed as it is.
struct DebugText<'a>(&'a str);

impl fmt::Debug for DebugText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// The most field values a captured event replays, its message included (the shells' events
/// have a handful); values past it are left out of the line.
const MAX_VALUES: usize = 32;

// ------------------------------------------------------------------------------------------
// Formatting

thread_local! {
    /// The time of the event being formatted on this thread ([`EventTime`]).
    static EVENT_TIME: Cell<Option<SystemTime>> = const { Cell::new(None) };
    /// The formatted lines not yet written ([`Formatted`]).
    static FORMATTED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The `fmt` layer's timer: the time of the event being formatted (captured with it), in
/// the layout of `tracing-subscriber`'s default timer (UTC, microseconds).
#[derive(Clone, Copy, Debug, Default)]
pub struct EventTime;

impl FormatTime for EventTime {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        let at = EVENT_TIME.with(Cell::get).unwrap_or_else(SystemTime::now);
        w.write_str(&rfc3339_micros(at))
    }
}

/// `2026-12-06T01:37:40.123456Z` (times before 1970 read as 1970).
fn rfc3339_micros(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let ms = u64::try_from(since.as_millis()).unwrap_or(u64::MAX);
    let mut text = WallMs(ms).to_rfc3339();
    // `…:SS.mmmZ` -> `…:SS.uuuuuuZ`
    text.truncate(text.len() - "mmmZ".len());
    let _ = write!(text, "{:06}Z", since.subsec_micros());
    text
}

/// The `fmt` layer's writer: this thread's [`FORMATTED`] buffer.
struct Formatted;

impl<'a> MakeWriter<'a> for Formatted {
    type Writer = Formatted;

    fn make_writer(&'a self) -> Formatted {
        Formatted
    }
}

impl Write for Formatted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        FORMATTED.with(|f| f.borrow_mut().extend_from_slice(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Takes what this thread has formatted.
fn take_formatted() -> Vec<u8> {
    FORMATTED.with(|f| std::mem::take(&mut *f.borrow_mut()))
}

/// The `fmt` layer that writes the lines, on a subscriber of its own (never a dispatcher:
/// nothing reaches it but the events replayed into it).
type Formatter = tracing_subscriber::layer::Layered<
    tracing_subscriber::fmt::Layer<
        tracing_subscriber::Registry,
        tracing_subscriber::fmt::format::DefaultFields,
        tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Full, EventTime>,
        Formatted,
    >,
    tracing_subscriber::Registry,
>;

/// The layer the lines are formatted with: the `fmt` defaults, target on, no colours.
fn formatter() -> Formatter {
    tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .with_writer(Formatted)
            .with_target(true)
            .with_timer(EventTime),
    )
}

static FORMATTER: LazyLock<Formatter> = LazyLock::new(formatter);

/// Formats `captured` (appending to this thread's [`FORMATTED`]): the event is rebuilt from
/// its metadata and values and given to the [`FORMATTER`].
fn format(captured: &Captured) {
    let fields: Vec<Field> = captured.meta.fields().iter().collect();
    let Some(pad) = fields.first() else {
        return; // an event without fields has nothing to show
    };
    let values: Vec<(&Field, Box<dyn Value + '_>)> = captured
        .values
        .iter()
        .take(MAX_VALUES)
        .filter_map(|(i, v)| Some((fields.get(*i)?, replay_value(captured, v))))
        .collect();
    let mut set: [(&Field, Option<&dyn Value>); MAX_VALUES] = [(pad, None); MAX_VALUES];
    for (slot, (field, value)) in set.iter_mut().zip(&values) {
        *slot = (*field, Some(&**value));
    }
    let value_set = captured.meta.fields().value_set(&set);
    let event = Event::new(captured.meta, &value_set);
    EVENT_TIME.with(|t| t.set(Some(captured.at)));
    FORMATTER.event(&event);
    EVENT_TIME.with(|t| t.set(None));
}

/// The value the formatter sees for a captured one: recorded the same way as the original.
fn replay_value<'a>(captured: &'a Captured, value: &'a Val) -> Box<dyn Value + 'a> {
    match value {
        Val::Str(r) => Box::new(&captured.text[r.clone()]),
        Val::Debug(r) => Box::new(tracing::field::debug(DebugText(&captured.text[r.clone()]))),
        Val::I64(n) => Box::new(*n),
        Val::U64(n) => Box::new(*n),
        Val::I128(n) => Box::new(*n),
        Val::U128(n) => Box::new(*n),
        Val::F64(n) => Box::new(*n),
        Val::Bool(b) => Box::new(*b),
        Val::Bytes(b) => Box::new(&b[..]),
        Val::Error(e) => Box::new(&**e as &(dyn std::error::Error + 'static)),
    }
}

// ------------------------------------------------------------------------------------------
// The logger thread

enum Msg {
    Line(Captured),
    /// Write everything before this, then answer.
    Flush(SyncSender<()>),
}

/// What a capturing layer holds: the `logger` thread's queue, and the thread (to cut its wait
/// short on [`LoggerHandle::flush`]).
#[derive(Clone)]
struct LoggerHandle {
    tx: SyncSender<Msg>,
    thread: Thread,
}

/// Starts the `logger` thread writing to `out`; `None` if it cannot start. The thread ends once
/// every handle is gone and it has written what was queued.
fn spawn_logger(
    out: Box<dyn Write + Send>,
    linger: Duration,
    queue: usize,
) -> Option<(LoggerHandle, JoinHandle<()>)> {
    let (tx, rx) = mpsc::sync_channel(queue);
    let thread = thread::Builder::new()
        .name("logger".into())
        .spawn(move || run_logger(&rx, out, linger))
        .ok()?;
    let handle = LoggerHandle {
        tx,
        thread: thread.thread().clone(),
    };
    Some((handle, thread))
}

impl LoggerHandle {
    /// Queues `captured`; gives it back when the logger is gone.
    fn send(&self, captured: Captured) -> Result<(), Captured> {
        self.tx.send(Msg::Line(captured)).map_err(|e| match e.0 {
            Msg::Line(c) => c,
            Msg::Flush(_) => unreachable!("a line was sent"),
        })
    }

    /// Returns once the logger has written every line queued before this call.
    fn flush(&self) {
        if thread::current().id() == self.thread.id() {
            return;
        }
        let (ack, done) = mpsc::sync_channel(1);
        if self.tx.send(Msg::Flush(ack)).is_ok() {
            self.thread.unpark();
            let _ = done.recv();
        }
    }
}

/// The logger's loop: format what is queued, write it, linger, again; ends once every
/// sender is gone and the queue is empty.
fn run_logger(rx: &Receiver<Msg>, mut out: Box<dyn Write + Send>, linger: Duration) {
    let mut write = |bytes: Vec<u8>| {
        if !bytes.is_empty() {
            // Nowhere to report a failed write to stderr.
            let _ = out.write_all(&bytes);
            let _ = out.flush();
        }
    };
    let Ok(mut next) = rx.recv() else {
        return;
    };
    loop {
        let ended = loop {
            match next {
                Msg::Line(captured) => {
                    format(&captured);
                    if FORMATTED.with(|f| f.borrow().len()) >= LOG_BATCH_BYTES {
                        write(take_formatted());
                    }
                }
                Msg::Flush(ack) => {
                    write(take_formatted());
                    let _ = ack.send(());
                }
            }
            next = match rx.try_recv() {
                Ok(msg) => msg,
                Err(TryRecvError::Empty) => break false,
                Err(TryRecvError::Disconnected) => break true,
            };
        };
        write(take_formatted());
        if ended {
            return;
        }
        // Let the queue fill a while ([`flush`] cuts this short), then empty it again; only
        // an empty queue after the wait sends the thread back to `recv`.
        thread::park_timeout(linger);
        next = match rx.try_recv() {
            Ok(msg) => msg,
            Err(TryRecvError::Empty) => match rx.recv() {
                Ok(msg) => msg,
                Err(_) => return,
            },
            Err(TryRecvError::Disconnected) => return,
        };
    }
}

// ------------------------------------------------------------------------------------------
// The layer

/// The layer that captures each event for the logger (see the module docs).
pub struct Deferred {
    logger: Option<LoggerHandle>,
    now: fn() -> SystemTime,
    /// Lines are written in the order they were queued: a thread formatting its own (no
    /// logger) takes this first.
    direct: Arc<Mutex<()>>,
}

impl Deferred {
    fn new(logger: Option<LoggerHandle>, now: fn() -> SystemTime) -> Deferred {
        Deferred {
            logger,
            now,
            direct: Arc::new(Mutex::new(())),
        }
    }
}

impl fmt::Debug for Deferred {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deferred")
            .field("logger", &self.logger.is_some())
            .finish_non_exhaustive()
    }
}

impl<S: Subscriber> Layer<S> for Deferred {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let captured = Captured::of(event, (self.now)());
        let captured = match &self.logger {
            Some(logger) => match logger.send(captured) {
                Ok(()) => return,
                Err(captured) => captured,
            },
            None => captured,
        };
        // No logger: format and write here.
        let _one_at_a_time = self.direct.lock();
        format(&captured);
        let _ = io::stderr().lock().write_all(&take_formatted());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tracing::subscriber::with_default;

    /// A writer the tests read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// A logger the test owns and ends.
    struct TestLogger {
        handle: LoggerHandle,
        thread: JoinHandle<()>,
    }

    impl TestLogger {
        fn spawn(out: Box<dyn Write + Send>, linger: Duration) -> Option<TestLogger> {
            TestLogger::with_queue(out, linger, LOG_QUEUE)
        }

        fn with_queue(
            out: Box<dyn Write + Send>,
            linger: Duration,
            queue: usize,
        ) -> Option<TestLogger> {
            let (handle, thread) = spawn_logger(out, linger, queue)?;
            Some(TestLogger { handle, thread })
        }

        fn handle(&self) -> LoggerHandle {
            self.handle.clone()
        }

        /// Drops this handle and waits for the thread to write what is left and end (the
        /// subscribers holding the other handles must be gone).
        fn finish(self) {
            let TestLogger { handle, thread } = self;
            let waker = handle.thread.clone();
            drop(handle);
            waker.unpark();
            thread.join().unwrap();
        }
    }

    fn fixed_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(1_796_521_060_123_456)
    }

    #[derive(Debug)]
    struct Outer(std::io::Error);

    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("cannot save")
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    /// Events of every kind of value the shells log.
    fn events() {
        let job: Option<&str> = Some("job-1");
        let none: Option<&str> = None;
        tracing::info!(target: "studio_core", category = "job", job_id = job, "{}", "offer accepted");
        tracing::info!(target: "studio_core", category = "job", job_id = none, "no job");
        tracing::warn!(
            code = 3_i64,
            big = 1_u64 << 40,
            ratio = 0.5,
            ok = true,
            "exiting: {}",
            "bye"
        );
        tracing::error!(conn = %7, path = ?"a \"quoted\"\tpath", "a control \u{1b}[31m char");
        tracing::info!(wide = 1_u128 << 100, neg = -(1_i128 << 100), "wide numbers");
        let e = Outer(std::io::Error::other("disk full"));
        tracing::warn!(
            error = &e as &(dyn std::error::Error + 'static),
            "flat error"
        );
        let plain = std::io::Error::other("no source");
        tracing::warn!(error = &plain as &(dyn std::error::Error + 'static));
        tracing::debug!("below info");
        tracing::info!(bytes = &b"\x00\xffab"[..], "bytes");
    }

    /// What `fmt` writes in place for the events `log` makes, at `fixed_time`.
    fn in_place(log: impl Fn()) -> String {
        let out = Shared::default();
        let sink = out.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_writer(move || sink.clone())
                .with_target(true)
                .with_timer(EventTime),
        );
        EVENT_TIME.with(|t| t.set(Some(fixed_time())));
        with_default(subscriber, log);
        EVENT_TIME.with(|t| t.set(None));
        out.text()
    }

    /// What the logger writes for the events `log` makes, at `fixed_time`.
    fn through_the_logger(log: impl Fn()) -> String {
        let out = Shared::default();
        let logger = TestLogger::spawn(Box::new(out.clone()), LINGER).unwrap();
        let subscriber =
            tracing_subscriber::registry().with(Deferred::new(Some(logger.handle()), fixed_time));
        with_default(subscriber, log);
        logger.handle().flush();
        logger.finish();
        out.text()
    }

    #[test]
    fn the_logger_writes_the_lines_fmt_writes_in_place() {
        let expected = in_place(events);
        assert_eq!(through_the_logger(events), expected);
        assert_eq!(expected.lines().count(), 9, "{expected}");
        assert!(
            expected.starts_with(
                "2026-12-06T01:37:40.123456Z  INFO studio_core: offer accepted category=\"job\" job_id=\"job-1\"\n"
            ),
            "{expected}"
        );
        assert!(expected.contains("sources=[disk full]"), "{expected}");
    }

    /// An event with [`MAX_VALUES`] values (31 fields and the message) comes out whole, as
    /// formatting in place writes it.
    #[test]
    fn an_event_with_the_most_values_is_written_whole() {
        let many = || {
            tracing::info!(
                f0 = 0,
                f1 = 1,
                f2 = 2,
                f3 = 3,
                f4 = 4,
                f5 = 5,
                f6 = 6,
                f7 = 7,
                f8 = 8,
                f9 = 9,
                f10 = 10,
                f11 = 11,
                f12 = 12,
                f13 = 13,
                f14 = 14,
                f15 = 15,
                f16 = 16,
                f17 = 17,
                f18 = 18,
                f19 = 19,
                f20 = 20,
                f21 = 21,
                f22 = 22,
                f23 = 23,
                f24 = 24,
                f25 = 25,
                f26 = 26,
                f27 = 27,
                f28 = 28,
                f29 = 29,
                f30 = 30,
                "many fields"
            )
        };
        let text = through_the_logger(many);
        assert_eq!(text, in_place(many));
        assert!(text.trim_end().ends_with("f29=29 f30=30"), "{text}");
    }

    /// The queue's slots are written when the logger starts: they stay small.
    #[test]
    fn the_queue_costs_little_memory() {
        let bytes = LOG_QUEUE * std::mem::size_of::<Msg>();
        assert!(bytes <= 128 * 1024, "{LOG_QUEUE} slots take {bytes} bytes");
    }

    /// A full queue makes the threads that log wait for the logger: nothing is lost, and
    /// each thread's lines come out in its order.
    #[test]
    fn a_full_queue_holds_back_the_logging_threads_and_loses_nothing() {
        let out = Shared::default();
        let logger = TestLogger::with_queue(Box::new(out.clone()), LINGER, 2).unwrap();
        std::thread::scope(|scope| {
            for t in 0..3 {
                let handle = logger.handle();
                scope.spawn(move || {
                    let subscriber = tracing_subscriber::registry()
                        .with(Deferred::new(Some(handle), fixed_time));
                    with_default(subscriber, || {
                        for n in 0..300 {
                            tracing::info!(t, n, "line");
                        }
                    });
                });
            }
        });
        logger.handle().flush();
        let text = out.text();
        assert_eq!(text.lines().count(), 900);
        let mut seen = vec![Vec::new(); 3];
        for line in text.lines() {
            let (t, n) = line
                .rsplit_once(": line t=")
                .and_then(|(_, rest)| rest.split_once(" n="))
                .unwrap_or_else(|| panic!("{line}"));
            seen[t.parse::<usize>().unwrap()].push(n.parse::<usize>().unwrap());
        }
        for (t, ns) in seen.iter().enumerate() {
            assert_eq!(*ns, (0..300).collect::<Vec<_>>(), "thread {t}");
        }
        logger.finish();
    }

    #[test]
    fn flush_writes_what_was_queued_before_it_in_order() {
        let out = Shared::default();
        // A wait far longer than any test: only `flush` (or the end) makes it write again.
        let logger = TestLogger::spawn(Box::new(out.clone()), Duration::from_secs(3600)).unwrap();
        let subscriber =
            tracing_subscriber::registry().with(Deferred::new(Some(logger.handle()), fixed_time));
        with_default(subscriber, || {
            for round in 0..3 {
                for n in 0..100 {
                    tracing::info!(round, n, "line");
                }
                logger.handle().flush();
                let text = out.text();
                assert_eq!(text.lines().count(), 100 * (round + 1));
                let last = text.lines().last().unwrap();
                assert!(
                    last.ends_with(&format!("line round={round} n=99")),
                    "{last}"
                );
            }
        });
        let text = out.text();
        let order: Vec<String> = text
            .lines()
            .map(|l| l.split(": ").nth(1).unwrap().to_string())
            .collect();
        let expected: Vec<String> = (0..3)
            .flat_map(|r| (0..100).map(move |n| format!("line round={r} n={n}")))
            .collect();
        assert_eq!(order, expected);
        logger.finish();
    }

    #[test]
    fn lines_queued_when_the_logger_ends_are_written() {
        let out = Shared::default();
        let logger = TestLogger::spawn(Box::new(out.clone()), Duration::from_secs(3600)).unwrap();
        let subscriber =
            tracing_subscriber::registry().with(Deferred::new(Some(logger.handle()), fixed_time));
        with_default(subscriber, || {
            for n in 0..1000 {
                tracing::warn!(n, "before the end");
            }
        });
        // The subscriber (and its queue) is gone; the logger drains and ends.
        logger.finish();
        let text = out.text();
        assert_eq!(text.lines().count(), 1000);
        assert!(text.ends_with("before the end n=999\n"), "{text}");
    }

    #[test]
    fn lines_from_other_threads_reach_the_logger() {
        let out = Shared::default();
        let logger = TestLogger::spawn(Box::new(out.clone()), LINGER).unwrap();
        let subscriber =
            tracing_subscriber::registry().with(Deferred::new(Some(logger.handle()), fixed_time));
        let dispatch = tracing::Dispatch::new(subscriber);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let dispatch = dispatch.clone();
                thread::spawn(move || {
                    tracing::dispatcher::with_default(&dispatch, || {
                        for n in 0..50 {
                            tracing::info!(t, n, "from a thread");
                        }
                    });
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        logger.handle().flush();
        let text = out.text();
        assert_eq!(text.lines().count(), 200);
        for t in 0..4 {
            // Each thread's lines in its order.
            let ns: Vec<usize> = text
                .lines()
                .filter(|l| l.contains(&format!(" t={t} ")))
                .map(|l| l.rsplit("n=").next().unwrap().parse().unwrap())
                .collect();
            assert_eq!(ns, (0..50).collect::<Vec<_>>());
        }
        drop(dispatch);
        logger.finish();
    }

    #[test]
    fn the_time_has_the_default_timers_layout() {
        assert_eq!(rfc3339_micros(fixed_time()), "2026-12-06T01:37:40.123456Z");
        assert_eq!(rfc3339_micros(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        // The same shape as tracing-subscriber's own timer writes now.
        let mut theirs = String::new();
        tracing_subscriber::fmt::time::SystemTime
            .format_time(&mut Writer::new(&mut theirs))
            .unwrap();
        let ours = rfc3339_micros(SystemTime::now());
        assert_eq!(theirs.len(), ours.len(), "{theirs} / {ours}");
        let shape = |s: &str| s.chars().map(|c| c.is_ascii_digit()).collect::<Vec<_>>();
        assert_eq!(shape(&theirs), shape(&ours));
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
