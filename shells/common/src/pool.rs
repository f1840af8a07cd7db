//! Background work: engine jobs and studio HTTP requests on their own threads, their
//! completions delivered through a caller-supplied callback ([`EventSink`]).
//!
//! Neither shell may block its event loop on an engine or on HTTP. The sync shell's sink
//! pushes into a channel and wakes mio (`Waker`); the async shell's sink sends on a smol
//! channel. Either way the loop turns each [`PoolEvent`] back into a core `Input` with
//! [`PoolEvent::into_input`] and feeds it: a job's result names the run the core dispatched,
//! and the core itself drops the result of a run it cancelled.
//!
//! # Jobs
//!
//! [`EnginePool::dispatch`] runs one `Command::Dispatch` (a job and its run id) on a
//! long-lived engine thread: an idle one takes it, and only when none is idle (a cancelled
//! run still finishing, say) does a new thread start. A thread that finishes a job waits
//! for the next one, blocked on its channel (no wake-ups while idle), while fewer than
//! [`IDLE_ENGINE_THREADS`] wait; otherwise it ends. So sequential jobs cost a channel send,
//! not a thread start (the protocol has one job in flight, but nothing here assumes it).
//! The outcome becomes a `JobOutcome`, delivered with the run:
//!
//! * `EngineOutput::Json(v)` -> `JobOutcome::Json { result: v }`;
//! * `EngineOutput::Binary { bytes, ext }` -> the bytes are kept in the pool under the job
//!   id ([`EnginePool::result_bytes`], for the upload) and the core gets
//!   `JobOutcome::Binary { ext, bytes_len }`; `Command::DiscardResult` drops them
//!   ([`EnginePool::discard`]);
//! * `Err(e)` -> `JobOutcome::Failed { error: e.message, retryable: e.retryable() }`;
//! * a panicking engine -> `JobOutcome::Failed { error: "task <job> panicked",
//!   retryable: true }` (the panic is caught; the worker keeps running).
//!
//! While a job runs, the engine's notices (`studio_engines::job_log`: model download
//! progress, verified or discarded files) reach the sink as [`PoolEvent::Log`] and become
//! `Input::Log` entries (category `engine`, the job's id), which the core ships to the
//! studio with the other log lines.
//!
//! [`EnginePool::cancel`] (`Command::CancelJob`: the shutdown grace or the job deadline ran
//! out) drops the job's held bytes and cancels the job's [`CancelToken`] (installed for the
//! engine thread, `studio_engines::cancel`): an engine running a child process kills it at
//! once, one that polls the token stops early. A Rust thread cannot be killed: an engine
//! that does neither finishes in the background and its result still arrives, under its
//! run, for the core to drop; the bytes of a cancelled run (or of any run but the job's
//! latest dispatch) are never kept, so a hung engine that wakes up leaves nothing behind.
//! Dispatching a job id again cancels the earlier run's token.
//!
//! Binary results restored from the durable outbox at start are held the same way
//! ([`EnginePool::restore`]), for their upload.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread;

use studio_core::wire::{JobOfferClaim, LogEntry};
use studio_core::worker::{HttpId, HttpRequest, HttpResult, Input, JobOutcome, RunId};
use studio_engines::cancel::{self, CancelToken};
use studio_engines::job_log::{self, JobLogLevel, JobLogSink};
use studio_engines::{Engine, EngineOutput, JobRequest};

/// The `category` of the log entries made from engine notices.
pub const ENGINE_LOG_CATEGORY: &str = "engine";

/// How many engine threads may wait, idle, for the next job. One serves the protocol's
/// one job in flight; a thread finishing a job while this many already wait ends.
pub const IDLE_ENGINE_THREADS: usize = 1;

/// A completion from a background thread.
#[derive(Clone, Debug, PartialEq)]
pub enum PoolEvent {
    /// Run `run` of an engine job ended.
    Job {
        job_id: String,
        run: RunId,
        outcome: JobOutcome,
    },
    /// An HTTP request ended.
    Http { id: HttpId, result: HttpResult },
    /// A running engine's notice, as the log entry to ship.
    Log(LogEntry),
    /// An update check ended (`Ok(Some(version))`: a newer release).
    UpdateChecked {
        result: Result<Option<String>, String>,
    },
    /// An update install ended.
    UpdateApplied { result: Result<(), String> },
}

impl PoolEvent {
    /// The core input this event carries.
    pub fn into_input(self) -> Input {
        match self {
            PoolEvent::Job {
                job_id,
                run,
                outcome,
            } => Input::JobFinished {
                job_id,
                run,
                outcome,
            },
            PoolEvent::Http { id, result } => Input::Http { id, result },
            PoolEvent::Log(entry) => Input::Log(entry),
            PoolEvent::UpdateChecked { result } => Input::UpdateChecked { result },
            PoolEvent::UpdateApplied { result } => Input::UpdateApplied { result },
        }
    }
}

/// Where background threads deliver their completions. Called on the worker threads: it
/// must be quick and must not call back into the pool's blocking paths (a channel send plus
/// a wake-up is the intended body).
pub type EventSink = Arc<dyn Fn(PoolEvent) + Send + Sync>;

/// Wraps a closure as an [`EventSink`].
pub fn sink(f: impl Fn(PoolEvent) + Send + Sync + 'static) -> EventSink {
    Arc::new(f)
}

#[derive(Default)]
struct State {
    /// The cancel token of each job's current run, until the run ends.
    tokens: BTreeMap<String, (RunId, CancelToken)>,
    /// Binary results awaiting upload (only a current run's: see [`finish`]).
    results: BTreeMap<String, Arc<Vec<u8>>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // The lock is never held across user code, so poisoning cannot leave the maps
    // half-updated; recover rather than cascade a panic.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// One job for an engine thread. It calls its argument once the engine is done and before
/// the result is delivered, so the thread is idle again by the time the result leads to
/// the next job.
type Task = Box<dyn FnOnce(&mut dyn FnMut()) + Send>;

/// The channels of the engine threads that wait for a job, the most recently idle last.
type Idle = Mutex<Vec<mpsc::Sender<Task>>>;

/// Runs engine jobs on long-lived engine threads and keeps their binary results until
/// uploaded.
pub struct EnginePool {
    engine: Arc<dyn Engine>,
    sink: EventSink,
    state: Arc<Mutex<State>>,
    /// Dropped with the pool: the idle threads' channels close and they end.
    idle: Arc<Idle>,
}

impl EnginePool {
    /// A pool running jobs on `engine` (in production the `studio_engines::Router`) and
    /// delivering completions to `sink`.
    pub fn new(engine: Arc<dyn Engine>, sink: EventSink) -> EnginePool {
        EnginePool {
            engine,
            sink,
            state: Arc::default(),
            idle: Arc::default(),
        }
    }

    /// The engine jobs run on (for the capability roster).
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// Starts run `run` of `claim` on an engine thread (an idle one, else a new one); its
    /// [`PoolEvent::Job`] arrives through the sink.
    pub fn dispatch(&self, claim: &JobOfferClaim, run: RunId) {
        let request = JobRequest::new(
            claim.job_id.clone(),
            claim.model.clone(),
            claim.task.clone(),
            claim.model_source.clone(),
        );
        let job_id = claim.job_id.clone();
        let token = CancelToken::new();
        let superseded = {
            let mut st = lock(&self.state);
            st.results.remove(&job_id);
            st.tokens.insert(job_id.clone(), (run, token.clone()))
        };
        if let Some((_, earlier)) = superseded {
            earlier.cancel();
        }
        tracing::debug!(%job_id, %run, model = %claim.model, kind = %claim.task.kind(), "job dispatched");
        let engine = Arc::clone(&self.engine);
        let state = Arc::clone(&self.state);
        let sink = Arc::clone(&self.sink);
        let task: Task = Box::new(move |ready| {
            let notices = notice_sink(&sink, &request.job_id);
            let outcome = cancel::with_token(token, || {
                job_log::with_sink(notices, || run_engine(engine.as_ref(), &request))
            });
            ready();
            finish(&state, &sink, request.job_id, run, outcome);
        });
        if let Err(e) = self.run_task(task) {
            tracing::error!(%job_id, "cannot start an engine thread: {e}");
            let outcome = Err(Failure {
                error: format!("cannot start an engine thread: {e}"),
                retryable: true,
            });
            finish(&self.state, &self.sink, job_id, run, outcome);
        }
    }

    /// Hands `task` to an idle engine thread, or starts one.
    fn run_task(&self, mut task: Task) -> std::io::Result<()> {
        loop {
            let waiting = lock_idle(&self.idle).pop();
            let Some(tx) = waiting else { break };
            match tx.send(task) {
                Ok(()) => return Ok(()),
                // That thread is gone (it panicked outside the engine): try the next.
                Err(mpsc::SendError(t)) => task = t,
            }
        }
        let idle = Arc::downgrade(&self.idle);
        thread::Builder::new()
            .name("engine".into())
            .spawn(move || engine_thread(task, idle))
            .map(drop)
    }

    /// `Command::CancelJob`: drops the held bytes of `job_id` and cancels its running
    /// engine's token (its result still arrives).
    pub fn cancel(&self, job_id: &str) {
        let token = {
            let mut st = lock(&self.state);
            st.results.remove(job_id);
            st.tokens.remove(job_id)
        };
        // Outside the state lock: the token's hooks may take a moment (a kill signal).
        if let Some((_, token)) = token {
            token.cancel();
        }
    }

    /// Holds `bytes` as the binary result of `job_id` (restored from the outbox).
    pub fn restore(&self, job_id: &str, bytes: Vec<u8>) {
        lock(&self.state)
            .results
            .insert(job_id.to_string(), Arc::new(bytes));
    }

    /// Drops the held binary result of `job_id` (`Command::DiscardResult`).
    pub fn discard(&self, job_id: &str) {
        lock(&self.state).results.remove(job_id);
    }

    /// The held binary result of `job_id`, for the upload.
    pub fn result_bytes(&self, job_id: &str) -> Option<Arc<Vec<u8>>> {
        lock(&self.state).results.get(job_id).cloned()
    }

    /// How many binary results are held.
    pub fn held_results(&self) -> usize {
        lock(&self.state).results.len()
    }

    /// No job runs and no binary result waits for its upload.
    pub fn is_idle(&self) -> bool {
        let st = lock(&self.state);
        st.tokens.is_empty() && st.results.is_empty()
    }
}

impl std::fmt::Debug for EnginePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = lock(&self.state);
        f.debug_struct("EnginePool")
            .field("engine", &self.engine.name())
            .field("held_results", &st.results.keys().collect::<Vec<_>>())
            .finish()
    }
}

struct Failure {
    error: String,
    retryable: bool,
}

fn lock_idle(idle: &Idle) -> MutexGuard<'_, Vec<mpsc::Sender<Task>>> {
    // Pushes and pops only: a poisoned list is still a list.
    idle.lock().unwrap_or_else(|e| e.into_inner())
}

/// An engine thread: runs `first`, then waits for more while the pool lives and fewer than
/// [`IDLE_ENGINE_THREADS`] others wait.
fn engine_thread(first: Task, idle: Weak<Idle>) {
    let (tx, rx) = mpsc::channel::<Task>();
    let mut task = first;
    loop {
        let mut waits = false;
        task(&mut || waits = offer_idle(&idle, &tx));
        if !waits {
            return;
        }
        match rx.recv() {
            Ok(next) => task = next,
            // The pool is gone.
            Err(_) => return,
        }
    }
}

/// Puts an engine thread's channel on the idle list; `false` when the pool is gone or
/// enough threads wait already (then the thread ends after its job).
fn offer_idle(idle: &Weak<Idle>, tx: &mpsc::Sender<Task>) -> bool {
    let Some(pool) = idle.upgrade() else {
        return false;
    };
    let mut waiting = lock_idle(&pool);
    if waiting.len() >= IDLE_ENGINE_THREADS {
        return false;
    }
    waiting.push(tx.clone());
    true
}

/// Turns the notices of `job_id`'s engine thread into [`PoolEvent::Log`]s on `sink`.
fn notice_sink(sink: &EventSink, job_id: &str) -> JobLogSink {
    let sink = Arc::clone(sink);
    let job_id = job_id.to_string();
    Arc::new(move |level: JobLogLevel, message: &str| {
        sink(PoolEvent::Log(LogEntry {
            ts: crate::clock::Clock::new().wall().to_rfc3339(),
            level: level.as_str().into(),
            category: ENGINE_LOG_CATEGORY.into(),
            message: message.to_string(),
            job_id: Some(job_id.clone()),
        }))
    })
}

fn run_engine(engine: &dyn Engine, request: &JobRequest) -> Result<EngineOutput, Failure> {
    match catch_unwind(AssertUnwindSafe(|| engine.dispatch(request))) {
        Ok(Ok(output)) => Ok(output),
        Ok(Err(e)) => Err(Failure {
            retryable: e.retryable(),
            error: e.message,
        }),
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".into());
            tracing::error!(job_id = %request.job_id, "engine panicked: {what}");
            Err(Failure {
                error: format!("task {} panicked", request.job_id),
                retryable: true,
            })
        }
    }
}

/// Holds a binary result's bytes and delivers the outcome.
fn finish(
    state: &Mutex<State>,
    sink: &EventSink,
    job_id: String,
    run: RunId,
    result: Result<EngineOutput, Failure>,
) {
    // The run is current while its token is held: a cancelled run, or one a later
    // dispatch of the job superseded, keeps no bytes.
    let current = {
        let mut st = lock(state);
        let current = st.tokens.get(&job_id).is_some_and(|(r, _)| *r == run);
        if current {
            st.tokens.remove(&job_id);
        }
        current
    };
    let outcome = match result {
        Ok(EngineOutput::Json(result)) => JobOutcome::Json { result },
        Ok(EngineOutput::Binary { bytes, ext }) => {
            let bytes_len = bytes.len() as u64;
            if current {
                lock(state).results.insert(job_id.clone(), Arc::new(bytes));
            } else {
                tracing::debug!(%job_id, %run, "result of a cancelled run; bytes not kept");
            }
            JobOutcome::Binary { ext, bytes_len }
        }
        Err(Failure { error, retryable }) => JobOutcome::Failed { error, retryable },
    };
    sink(PoolEvent::Job {
        job_id,
        run,
        outcome,
    });
}

/// Runs studio HTTP requests ([`crate::http::execute`]) on background threads and delivers
/// `PoolEvent::Http` through the sink.
#[derive(Clone)]
pub struct HttpRunner {
    agent: ureq::Agent,
    sink: EventSink,
}

impl HttpRunner {
    /// A runner using `agent` (see [`crate::http::agent`]).
    pub fn new(agent: ureq::Agent, sink: EventSink) -> HttpRunner {
        HttpRunner { agent, sink }
    }

    /// Starts `request` (`id` from the core's `Command::Http`); `body` is the job's result
    /// for an upload.
    pub fn spawn(&self, id: HttpId, request: HttpRequest, body: Option<Arc<Vec<u8>>>) {
        self.spawn_after(id, request, body, None);
    }

    /// [`HttpRunner::spawn`], the request leaving only once `after` fires (or its sender
    /// is gone): an upload waits for the durable outbox to hold its result.
    pub fn spawn_after(
        &self,
        id: HttpId,
        request: HttpRequest,
        body: Option<Arc<Vec<u8>>>,
        after: Option<mpsc::Receiver<()>>,
    ) {
        let agent = self.agent.clone();
        let sink = Arc::clone(&self.sink);
        let spawned = thread::Builder::new()
            .name(format!("http-{}", id.0))
            .spawn(move || {
                if let Some(after) = after {
                    let _ = after.recv();
                }
                let result = catch_unwind(AssertUnwindSafe(|| {
                    crate::http::execute(&agent, &request, body.as_deref().map(|b| &b[..]))
                }))
                .unwrap_or_else(|_| HttpResult::Transport("the HTTP client panicked".into()));
                sink(PoolEvent::Http { id, result });
            });
        if let Err(e) = spawned {
            (self.sink)(PoolEvent::Http {
                id,
                result: HttpResult::Transport(format!("cannot start an HTTP thread: {e}")),
            });
        }
    }
}

impl std::fmt::Debug for HttpRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpRunner").finish_non_exhaustive()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::mpsc;
    use std::time::Duration;

    use serde_json::json;
    use studio_core::wire::{ModelEngine, ModelSource, Task, TaskKind};
    use studio_engines::{EngineError, EngineErrorKind, Router, SyntheticEngine};

    pub(crate) fn channel_sink() -> (EventSink, mpsc::Receiver<PoolEvent>) {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        (
            sink(move |ev| {
                let _ = tx.lock().unwrap().send(ev);
            }),
            rx,
        )
    }

    pub(crate) fn claim(job_id: &str, task: serde_json::Value) -> JobOfferClaim {
        claim_with_engine(job_id, task, "synthetic")
    }

    fn claim_with_engine(job_id: &str, task: serde_json::Value, engine: &str) -> JobOfferClaim {
        serde_json::from_value(json!({
            "jobId": job_id,
            "gameId": "g",
            "assetName": "a",
            "model": "synthetic",
            "vramGbEstimate": 1.0,
            "task": task,
            "modelSource": {
                "engine": engine,
                "files": [],
                "cliDefaults": {"cfgScale": 1.0, "steps": 8, "width": 1024, "height": 1024}
            },
        }))
        .unwrap()
    }

    fn recv(rx: &mpsc::Receiver<PoolEvent>) -> PoolEvent {
        rx.recv_timeout(Duration::from_secs(20)).expect("no event")
    }

    /// An engine whose behaviour the test picks by prompt, and which can be held until
    /// released.
    struct TestEngine {
        gate: Mutex<Option<mpsc::Receiver<()>>>,
    }

    impl Engine for TestEngine {
        fn name(&self) -> &'static str {
            "test"
        }
        fn serves(&self) -> Vec<ModelEngine> {
            vec![ModelEngine::Synthetic]
        }
        fn capabilities(&self) -> BTreeMap<TaskKind, Vec<String>> {
            BTreeMap::new()
        }
        fn dispatch(&self, job: &JobRequest) -> Result<EngineOutput, EngineError> {
            let mut prompt = job.task.prompt();
            if let Some(rest) = prompt.strip_prefix("hold-") {
                let gate = self.gate.lock().unwrap().take();
                if let Some(gate) = gate {
                    let _ = gate.recv();
                }
                prompt = rest;
            }
            match prompt {
                "panic" => panic!("boom"),
                "until-cancelled" => {
                    // Like an engine running a child process: a hook fires on cancel.
                    let (tx, rx) = mpsc::channel();
                    let tx = Mutex::new(tx);
                    let _hook = cancel::current().on_cancel(move || {
                        let _ = tx.lock().unwrap().send(());
                    });
                    let cancelled = rx.recv_timeout(Duration::from_secs(10)).is_ok();
                    Ok(EngineOutput::Json(json!({"cancelled": cancelled})))
                }
                "notice" => {
                    job_log::info("fetching model.gguf: 50% of 1.0 KiB");
                    job_log::warn("a cached copy was bad");
                    Ok(EngineOutput::Json(json!({"ok": true})))
                }
                "thread" => Ok(EngineOutput::Json(
                    json!({"thread": format!("{:?}", thread::current().id())}),
                )),
                "fail" => Err(EngineError::new(EngineErrorKind::Io, "disk full")),
                "fatal" => Err(EngineError::new(EngineErrorKind::InvalidInput, "bad size")),
                "bin" => Ok(EngineOutput::Binary {
                    bytes: vec![1, 2, 3],
                    ext: "png".into(),
                }),
                _ => Ok(EngineOutput::Json(json!({"ok": true}))),
            }
        }
    }

    fn test_pool(gate: Option<mpsc::Receiver<()>>) -> (EnginePool, mpsc::Receiver<PoolEvent>) {
        let (sink, rx) = channel_sink();
        let engine = TestEngine {
            gate: Mutex::new(gate),
        };
        (EnginePool::new(Arc::new(engine), sink), rx)
    }

    fn image(prompt: &str) -> serde_json::Value {
        json!({"kind": "image", "prompt": prompt})
    }

    #[test]
    fn cancel_and_a_new_run_trip_the_engines_cancel_token() {
        let (pool, rx) = test_pool(None);
        let cancelled = |run: u64| PoolEvent::Job {
            job_id: "j-c".into(),
            run: RunId(run),
            outcome: JobOutcome::Json {
                result: json!({"cancelled": true}),
            },
        };
        pool.dispatch(&claim("j-c", image("until-cancelled")), RunId(1));
        pool.cancel("j-c");
        assert_eq!(recv(&rx), cancelled(1));
        // A new run of the same job cancels the earlier one; its own runs on.
        pool.dispatch(&claim("j-c", image("until-cancelled")), RunId(2));
        pool.dispatch(&claim("j-c", image("hello")), RunId(3));
        let mut got = vec![recv(&rx), recv(&rx)];
        got.sort_by_key(|e| match e {
            PoolEvent::Job { run, .. } => run.0,
            _ => 0,
        });
        assert_eq!(got[0], cancelled(2));
        assert!(
            matches!(&got[1], PoolEvent::Job { run: RunId(3), outcome: JobOutcome::Json { result }, .. } if result == &json!({"ok": true})),
            "{got:?}"
        );
    }

    fn engine_thread_of(event: PoolEvent) -> String {
        match event {
            PoolEvent::Job {
                outcome: JobOutcome::Json { result },
                ..
            } => result["thread"].as_str().expect("a thread id").to_string(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sequential_jobs_run_on_one_long_lived_engine_thread() {
        let (pool, rx) = test_pool(None);
        let mut threads = Vec::new();
        for (i, job) in ["t1", "t2", "t3"].into_iter().enumerate() {
            pool.dispatch(&claim(job, image("thread")), RunId(i as u64));
            threads.push(engine_thread_of(recv(&rx)));
        }
        assert_ne!(threads[0], format!("{:?}", thread::current().id()));
        assert!(threads.iter().all(|t| t == &threads[0]), "{threads:?}");
        assert_eq!(lock_idle(&pool.idle).len(), 1);
    }

    #[test]
    fn a_busy_engine_thread_gets_a_second_and_at_most_the_limit_stay_idle() {
        let (tx, gate) = mpsc::channel();
        let (pool, rx) = test_pool(Some(gate));
        pool.dispatch(&claim("h", image("hold-thread")), RunId(1));
        pool.dispatch(&claim("f", image("thread")), RunId(2));
        let second = engine_thread_of(recv(&rx));
        tx.send(()).unwrap();
        let first = engine_thread_of(recv(&rx));
        assert_ne!(first, second);
        // Both threads offered themselves; only the limit's worth wait for more.
        assert_eq!(lock_idle(&pool.idle).len(), IDLE_ENGINE_THREADS);
        // And the one that waits takes the next job.
        pool.dispatch(&claim("n", image("thread")), RunId(3));
        let next = engine_thread_of(recv(&rx));
        assert!(next == first || next == second, "{next}");
    }

    #[test]
    fn an_engine_thread_stops_waiting_once_the_pool_is_gone() {
        let (pool, rx) = test_pool(None);
        pool.dispatch(&claim("e", image("hello")), RunId(1));
        recv(&rx);
        let idle = Arc::downgrade(&pool.idle);
        let waiting = lock_idle(&pool.idle)[0].clone();
        drop(pool);
        assert!(idle.upgrade().is_none());
        // The thread's receiver is gone once it ended: a send fails.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while waiting.send(Box::new(|_| {})).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "the engine thread lives on"
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn json_results_are_delivered_with_their_run() {
        let (pool, rx) = test_pool(None);
        pool.dispatch(&claim("j1", image("hello")), RunId(1));
        assert_eq!(
            recv(&rx).into_input(),
            Input::JobFinished {
                job_id: "j1".into(),
                run: RunId(1),
                outcome: JobOutcome::Json {
                    result: json!({"ok": true})
                }
            }
        );
    }

    #[test]
    fn engine_notices_become_log_entries_of_the_job_before_its_result() {
        let (pool, rx) = test_pool(None);
        pool.dispatch(&claim("j-n", image("notice")), RunId(2));
        let mut entries = Vec::new();
        let finished = loop {
            match recv(&rx).into_input() {
                Input::Log(entry) => entries.push(entry),
                other => break other,
            }
        };
        assert!(
            matches!(finished, Input::JobFinished { .. }),
            "{finished:?}"
        );
        let got: Vec<(&str, &str, &str, Option<&str>)> = entries
            .iter()
            .map(|e| {
                (
                    e.level.as_str(),
                    e.category.as_str(),
                    e.message.as_str(),
                    e.job_id.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    "info",
                    ENGINE_LOG_CATEGORY,
                    "fetching model.gguf: 50% of 1.0 KiB",
                    Some("j-n")
                ),
                (
                    "warn",
                    ENGINE_LOG_CATEGORY,
                    "a cached copy was bad",
                    Some("j-n")
                ),
            ]
        );
        assert!(entries
            .iter()
            .all(|e| e.ts.ends_with('Z') && e.ts.len() == 24));
    }

    #[test]
    fn binary_results_are_held_until_discarded() {
        let (pool, rx) = test_pool(None);
        pool.dispatch(&claim("j2", image("bin")), RunId(3));
        let input = recv(&rx).into_input();
        assert_eq!(
            input,
            Input::JobFinished {
                job_id: "j2".into(),
                run: RunId(3),
                outcome: JobOutcome::Binary {
                    ext: "png".into(),
                    bytes_len: 3
                }
            }
        );
        assert_eq!(pool.result_bytes("j2").as_deref(), Some(&vec![1, 2, 3]));
        assert_eq!(pool.held_results(), 1);
        pool.discard("j2");
        assert_eq!(pool.result_bytes("j2"), None);
        assert_eq!(pool.held_results(), 0);
    }

    #[test]
    fn engine_errors_keep_their_retryability() {
        let (pool, rx) = test_pool(None);
        pool.dispatch(&claim("a", image("fail")), RunId(4));
        let a = recv(&rx).into_input();
        pool.dispatch(&claim("b", image("fatal")), RunId(5));
        let b = recv(&rx).into_input();
        assert_eq!(
            a,
            Input::JobFinished {
                job_id: "a".into(),
                run: RunId(4),
                outcome: JobOutcome::Failed {
                    error: "disk full".into(),
                    retryable: true
                }
            }
        );
        assert_eq!(
            b,
            Input::JobFinished {
                job_id: "b".into(),
                run: RunId(5),
                outcome: JobOutcome::Failed {
                    error: "bad size".into(),
                    retryable: false
                }
            }
        );
    }

    #[test]
    fn a_panicking_engine_fails_the_job_retryably() {
        let (pool, rx) = test_pool(None);
        pool.dispatch(&claim("p1", image("panic")), RunId(6));
        assert_eq!(
            recv(&rx).into_input(),
            Input::JobFinished {
                job_id: "p1".into(),
                run: RunId(6),
                outcome: JobOutcome::Failed {
                    error: "task p1 panicked".into(),
                    retryable: true
                }
            }
        );
    }

    #[test]
    fn a_cancelled_run_still_reports_under_its_run() {
        let (tx, gate) = mpsc::channel();
        let (pool, rx) = test_pool(Some(gate));
        pool.dispatch(&claim("c1", image("hold-bin")), RunId(7));
        pool.cancel("c1");
        tx.send(()).unwrap();
        // The pool does not judge the result: the core drops a cancelled run's.
        assert!(matches!(
            recv(&rx).into_input(),
            Input::JobFinished { run: RunId(7), .. }
        ));
        // But it keeps no bytes for it: a hung engine that wakes after the watchdog leaves
        // nothing behind.
        assert_eq!(pool.held_results(), 0);
    }

    #[test]
    fn only_the_latest_dispatch_of_a_job_keeps_its_bytes() {
        let (tx, gate) = mpsc::channel();
        let (pool, rx) = test_pool(Some(gate));
        pool.dispatch(&claim("r2", image("hold-bin")), RunId(1));
        pool.dispatch(&claim("r2", image("bin")), RunId(2));
        assert!(matches!(recv(&rx), PoolEvent::Job { run: RunId(2), .. }));
        pool.discard("r2");
        tx.send(()).unwrap();
        assert!(matches!(recv(&rx), PoolEvent::Job { run: RunId(1), .. }));
        assert_eq!(pool.result_bytes("r2"), None, "run 1 is not the latest");
    }

    #[test]
    fn restored_bytes_are_held_for_the_upload() {
        let (pool, _rx) = test_pool(None);
        pool.restore("old", vec![9, 9]);
        assert_eq!(pool.result_bytes("old").as_deref(), Some(&vec![9, 9]));
    }

    #[test]
    fn a_cancel_drops_the_held_bytes() {
        let (pool, rx) = test_pool(None);
        pool.dispatch(&claim("c2", image("bin")), RunId(1));
        recv(&rx);
        assert_eq!(pool.held_results(), 1);
        pool.cancel("c2");
        assert_eq!(pool.result_bytes("c2"), None);
        assert_eq!(pool.held_results(), 0);
    }

    #[test]
    fn each_result_names_the_run_it_was_dispatched_as() {
        let (tx, gate) = mpsc::channel();
        let (pool, rx) = test_pool(Some(gate));
        pool.dispatch(&claim("r", image("hold-first")), RunId(1));
        pool.dispatch(&claim("r", image("second")), RunId(2));
        // The second (ungated) run finishes first.
        assert!(matches!(recv(&rx), PoolEvent::Job { run: RunId(2), .. }));
        tx.send(()).unwrap();
        assert!(matches!(recv(&rx), PoolEvent::Job { run: RunId(1), .. }));
    }

    #[test]
    fn the_router_runs_synthetic_jobs_and_refuses_unknown_engines() {
        let (sink, rx) = channel_sink();
        let pool = EnginePool::new(Arc::new(Router::new_default()), sink);
        assert_eq!(pool.engine().name(), "multi");
        let mut c = claim(
            "s1",
            json!({"kind": "llm", "messages": [{"role": "user", "content": "hi"}]}),
        );
        c.model = "synthetic-llm".into();
        pool.dispatch(&c, RunId(11));
        match recv(&rx).into_input() {
            Input::JobFinished {
                outcome: JobOutcome::Json { result },
                ..
            } => assert_eq!(result["object"], "chat.completion"),
            other => panic!("{other:?}"),
        }
        let c = claim_with_engine("s2", image("x"), "sd-cpp");
        pool.dispatch(&c, RunId(12));
        match recv(&rx).into_input() {
            Input::JobFinished {
                outcome: JobOutcome::Failed { retryable, .. },
                ..
            } => assert!(!retryable),
            other => panic!("{other:?}"),
        }
        // Synthetic images are binary and held for the upload.
        let mut c = claim(
            "s3",
            json!({"kind": "image", "prompt": "fox", "ext": "webp"}),
        );
        c.model = "synthetic-image".into();
        pool.dispatch(&c, RunId(13));
        match recv(&rx).into_input() {
            Input::JobFinished {
                outcome: JobOutcome::Binary { ext, bytes_len },
                ..
            } => {
                assert_eq!(ext, "webp");
                assert_eq!(pool.result_bytes("s3").unwrap().len() as u64, bytes_len);
            }
            other => panic!("{other:?}"),
        }
        let _ = SyntheticEngine::new();
        let _ = ModelSource::synthetic();
        let _: Option<Task> = None;
    }

    #[test]
    fn http_runner_delivers_transport_errors() {
        let (sink, rx) = channel_sink();
        let runner = HttpRunner::new(crate::http::agent(), sink);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        runner.spawn(
            HttpId(7),
            HttpRequest::PollRegistration {
                url: format!("http://127.0.0.1:{port}/x"),
                bearer: "b".into(),
            },
            None,
        );
        match recv(&rx) {
            PoolEvent::Http {
                id,
                result: HttpResult::Transport(_),
            } => assert_eq!(id, HttpId(7)),
            other => panic!("{other:?}"),
        }
    }
}
