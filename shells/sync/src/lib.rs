//! `studio-worker`, the sync shell: the worker core driven by one mio event loop, with
//! tungstenite for the WebSocket. The minimal-dependency binary for small boxes.
//!
//! The core (`studio_core::worker::Worker`) makes every decision; this crate only moves
//! bytes. Everything that is not specific to mio lives in `studio_shell` and is shared with
//! the async shell, so both behave identically: CLI, config, HTTP, the engine pool, the
//! command router, the session bookkeeping (`studio_shell::Session`: feeding, connection
//! states, close timeouts, exit), the WebSocket upgrade exchange and message mapping, TLS,
//! signals, `main` and the demo. What is here: the mio loop ([`daemon`]), the blocking
//! connect thread ([`connect`]) and the socket under tungstenite ([`transport`]).
//!
//! # The loop ([`Daemon::run`])
//!
//! ```text
//!             ┌──────────── mio::Poll ────────────┐
//!  sockets ──►│ READABLE: read every message until │──► Input::Frame / BinaryFrame /
//!             │ WouldBlock, feed each before the   │    Disconnected{code}
//!             │ next; WRITABLE: flush              │
//!  Waker   ──►│ channel: PoolEvent (job, HTTP)     │──► Input (into_input)
//!             │          connect-thread result     │──► Input::Connected / ConnectFailed
//!             │          SIGINT / SIGTERM          │──► Input::Shutdown
//!  timeout ──►│ the core's deadline passed         │──► Input::Tick
//!             └────────────────────────────────────┘
//! ```
//!
//! 1. `Input::Start` is fed; then, forever: sleep in `Poll::poll` for
//!    `Session::poll_timeout` (the core's deadline or the earliest close timeout, rounded **up**
//!    to whole milliseconds by `studio_shell::wait_duration`, so a non-zero wait is never
//!    a zero-timeout spin; no deadline = block until IO).
//! 2. Every input goes through `studio_shell::CommandRouter::feed`, which calls
//!    `Worker::handle`, drains `Worker::poll` to the final `Wait`, performs every
//!    non-socket command (HTTP and engine jobs on background threads, persist, mint, ...)
//!    and hands the socket commands back; the loop carries those out and re-reads the
//!    deadline from that same drain. A timer is therefore re-armed after every input.
//! 3. Background threads (engine jobs, HTTP, connect attempts, the signal thread) never
//!    touch the core: they push a message into a channel and wake the loop through a
//!    `mio::Waker`. Idle costs nothing: between heartbeats the process sleeps in the
//!    kernel until the core's next deadline.
//!
//! # Sockets
//!
//! * **`Connect`** runs on a short-lived helper thread ([`connect`]): DNS, TCP, TLS
//!   (rustls, ring, webpki roots) and the HTTP upgrade (`Authorization: Bearer`,
//!   `Sec-WebSocket-Protocol: studio-worker-v1`) over a blocking `std` socket, each step
//!   bounded by 15 s. A refused upgrade's body is read to its end: `401` ->
//!   `ConnectError::Unauthorized { body }`, another status -> `Status`, anything else ->
//!   `Transport`. On success the socket is made non-blocking and handed back; the loop
//!   registers it and feeds `Connected`. A result for a connection the core closed while
//!   it was being made is closed (1000) and dropped, never fed.
//! * **Readiness registration**: the socket tungstenite reads and writes *is* the
//!   `mio::net::TcpStream` the loop registers ([`transport::Transport`] swaps the
//!   blocking std stream of the handshake for a mio stream around the same socket, TLS
//!   state kept). So every `WouldBlock` is seen by mio itself, which is what its Windows
//!   backend needs, and no duplicated descriptor or `SourceFd` is involved. Interest is
//!   `READABLE`, plus `WRITABLE` only while tungstenite holds output the socket would not
//!   take (the rustls mio example's pattern). Reads are edge-triggered: every readable
//!   event reads until `WouldBlock`, then flushes, so the pongs tungstenite queues for
//!   pings actually leave. On unix a short read stands for that `WouldBlock`
//!   ([`transport::ShortReads`]: the read after it is answered without a system call
//!   until the next readable event).
//! * **`Send`** writes and flushes; a `WouldBlock` keeps the frame in tungstenite and
//!   raises `WRITABLE` interest. A frame for a connection that is gone is dropped.
//! * **`Close`** queues the close frame and moves the socket to the *closing* list: the
//!   loop keeps flushing it and discarding what arrives until the studio hangs up, or
//!   for at most 5 s, then drops it. The loop never blocks on it, and nothing a closing
//!   socket receives is fed to the core. When the studio closes first, its close code
//!   goes to the core as `Disconnected { code }` and the socket finishes the close
//!   handshake the same way.
//! * A read error (EOF, reset) is `Disconnected { code: None }`; an oversized or malformed
//!   frame is the same, after a 1000 "protocol violation" close.
//!
//! # Test / demo hook
//!
//! `STUDIO_WORKER_SYNTHETIC_DELAY_MS=<ms>` in the environment of `studio-worker run` makes
//! every synthetic job take that many milliseconds longer (the roster is then the delayed
//! synthetic engine alone; see `studio_shell::engine`). It exists so the end-to-end tests
//! and demos can hold a job in flight (busy rejects, shutdown grace, reconnects mid-job);
//! never set it on a production worker.
//!
//! # Exit
//!
//! When the core emits `Exit`, the loop stops feeding it, lets the closing sockets finish
//! (at most 5 s) and returns the core's [`Exit`]; the process exits with
//! `ExitCode::code()` (0 clean, 3 fatal, 4 auth failed, 5 rejected).

pub mod connect;
pub mod daemon;
pub mod transport;

pub use daemon::Daemon;
pub use studio_shell::{Control, Exit, RunError, WorkerDaemon};

use std::path::Path;

/// `studio-worker run`: loads (or creates) the config, installs the signal handler and
/// runs the daemon until the core exits. Returns the core's exit.
pub fn run(config_path: &Path, record: Option<&Path>) -> Result<Exit, RunError> {
    studio_shell::app::run::<Daemon>(config_path, record)
}
