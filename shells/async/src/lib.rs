//! `studio-worker-async`, the async shell: the worker core driven by one async session task
//! on smol's parts (the `polling` poller under a small reactor of its own, async-executor,
//! async-channel), with async-tungstenite for the WebSocket and futures-rustls for `wss`.
//! The binary for GPU rigs.
//!
//! To a studio it is indistinguishable from the sync shell (`studio-worker`): the same core,
//! and the same shell code for everything that is not about the runtime, from
//! `studio_shell`: CLI and `main`, config, HTTP, the engine pool, the command router, the
//! session bookkeeping (`studio_shell::Session`: feeding, connection states, the 5 s close
//! linger, exit), the upgrade exchange with its refused-body reading and every connect
//! failure message (`studio_shell::connect`), message mapping, TLS config, signals and the
//! demo. Both shells pass the same test scenarios (`studio_shell::test_support`). What is
//! here: the session task ([`daemon`]), the async connect ([`connect`]) and the session
//! thread's reactor ([`reactor`]).
//!
//! # The loop ([`Daemon`]'s `run`)
//!
//! ```text
//!  engine / HTTP threads ─ EventSink: try_send ─┐
//!  signal thread ──────── Control: try_send ────┤ LoopMsg (unbounded)
//!  connect tasks ──────── send ─────────────────┘──┐
//!  reader tasks (one per socket) ─ IoEvent (bounded) ┤   race ──► Session::on_* (feed,
//!  writer tasks (one per socket) ─ IoEvent ──────────┤            perform Connect / Send /
//!  the deadline (core deadline or close timeout) ────┘            Close) ──► after_wake
//! ```
//!
//! One thread runs `LocalExecutor::run(session task)` under its own reactor's
//! `block_on_until` ([`reactor`]), which waits on the poller (epoll / kqueue / IOCP) itself
//! until a socket a task waits on is ready, a waker fires (from another thread through
//! `Poller::notify`), or the session's deadline comes; everything below is a task of that
//! executor, except engine jobs and HTTP requests (their own threads, via the shared
//! `EnginePool` / `HttpRunner`), the signal thread, and each connection attempt's
//! short-lived DNS + TCP thread. No other thread stands between a socket and the session:
//! an incoming frame wakes the session thread once, as in the sync shell.
//!
//! *Why not async-io (smol's reactor):* its `Async` and `Timer` start a global reactor
//! that its own `async-io` thread drives; that thread wakes with every socket event and
//! then wakes the session thread, two wake-ups per incoming frame (idle: 36 a minute
//! against the protocol's 24, the heartbeat and the ack of each 5 s). `async_io::block_on`
//! lets the calling thread drive the reactor, but the driver thread stays and polls with a
//! backoff (50 µs up to 10 ms, about ten wake-ups) after every reactor tick, to take over
//! while the `block_on` thread is busy. The reactor here is only what the session needs:
//! sockets registered with oneshot interest, armed in a direction only while a task waits
//! on it (write interest only while a write is pending), a timer for the connect deadline,
//! and the wait, whose timeout is the session's deadline (one wake-up per deadline).
//!
//! 1. `Input::Start` is fed; then, until the core has exited and its sockets are gone: set
//!    the deadline, **race**, feed what won, perform the socket commands of that drain, check
//!    close timeouts and the deadline (`Session::after_wake`: `Input::Tick` when it has
//!    passed).
//! 2. **The race** is between three futures, all cancel-safe, so losing one loses
//!    nothing: `recv` on the `LoopMsg` channel (pool completions, connect results,
//!    shutdown), `recv` on the `IoEvent` channel (whole messages from the reader tasks,
//!    errors from readers and writers), and the deadline (a check of the clock). A losing `recv` leaves its message in the channel for the next turn.
//!    `futures_lite::future::or` runs the race; its bias (control messages, then socket
//!    events, then the deadline) costs nothing because every turn feeds one event and the
//!    deadline is re-checked after every turn anyway.
//!
//!    *Why reader tasks, not a raced socket read:* a raced `WebSocketStream::next` would be
//!    cancel-safe too (tungstenite keeps partial frames), but one task per socket gives
//!    each socket its own waker and backpressure, keeps the race the same size whatever
//!    the number of sockets (one open, maybe one closing), and lets a closing socket go on
//!    reading (and so flushing its close reply and pongs) with no help from the loop.
//! 3. **Sends happen in the drain, never inside the race.** A `Send` or `Close` is
//!    `try_send` of the message to the socket's writer task (an unbounded queue, like
//!    tungstenite's own output buffer in the sync shell), which writes and flushes it. The
//!    session task never awaits a socket, so a studio that stops reading cannot stall the
//!    loop: the core's read-idle timer still fires and closes the session.
//! 4. **One deadline.** The core's deadline (or the earliest close timeout,
//!    `Session::wake_at`) is set before each race; the race's third future is ready once
//!    it has passed, and `block_on_until` waits on the poller until exactly then (an
//!    absolute deadline: nothing to round, no early zero-length wait to spin on). Idle costs
//!    nothing: the thread sleeps until the deadline or an event.
//! 5. **Engine work** runs on dedicated threads (the shared `EnginePool`); the completion
//!    callback (`EventSink`) is an `async_channel` `try_send`, which wakes the session task
//!    (its waker notifies the poller when the thread waits in it).
//!
//! # Sockets
//!
//! * **`Connect`** is a task ([`connect`]): DNS and TCP (blocking, on a short-lived
//!   thread, as in the sync shell), then the socket registered with the reactor, TLS and
//!   the upgrade, the whole attempt bounded by 15 s, with `studio_shell::connect::Exchange` reading the
//!   response (a refused upgrade's body is read to its end: `401` ->
//!   `ConnectError::Unauthorized { body }`, another status -> `Status`, anything else ->
//!   `Transport`). The result goes back to the session task; a result for a connection
//!   the core closed meanwhile is closed (1000 "session ended") and dropped, never fed.
//! * An adopted socket is split into a reader and a writer half, each with its task. A
//!   message is fed only while its connection is open; a read error is
//!   `Disconnected { code: None }` (after a 1000 "protocol violation" close when the
//!   bytes were bad); the studio's close is `Disconnected { code }`.
//! * **`Close`** queues the close frame behind what is already queued and moves the socket
//!   to *closing*: never fed again, dropped (its tasks cancelled, the socket closed) when
//!   the reader sees the studio hang up, or after 5 s. Nothing waits for it.
//!
//! # Exit
//!
//! When the core emits `Exit`, the loop stops feeding it, lets the closing sockets finish
//! (at most 5 s) and returns the core's `Exit`; the process exits with
//! `ExitCode::code()` (0 clean, 3 fatal, 4 auth failed, 5 rejected). SIGINT / SIGTERM are
//! a graceful shutdown (`Input::Shutdown`), as in the sync shell.
//!
//! # Test / demo hook
//!
//! `STUDIO_WORKER_SYNTHETIC_DELAY_MS=<ms>` works as in the sync shell (the engine roster is
//! `studio_shell::engine_router`).

pub mod connect;
pub mod daemon;
pub mod reactor;

pub use daemon::Daemon;
pub use studio_shell::{Control, Exit, RunError, WorkerDaemon};
