//! The runtime-agnostic half of a daemon's loop: one worker core, its command router, and
//! the bookkeeping of its WebSocket connections. Both shells drive a [`Session`]; only the
//! socket IO and the way they sleep are theirs ([`SocketIo`]).
//!
//! # What the shell does
//!
//! ```text
//! session.start(&mut io);                                  // Input::Start
//! while !session.finished(&mut io) {                       // exit: once the sockets are gone
//!     sleep until IO, a background event, or session.poll_timeout() / wake_at()
//!     session.on_message / on_error (socket events), on_loop_msg (other threads / tasks)
//!     session.after_wake(&mut io);                         // close timeouts, Input::Tick
//! }
//! session.into_exit()
//! ```
//!
//! Every `on_*` call feeds its input through [`CommandRouter::feed`] (handle, drain to
//! `Wait`, perform the non-socket commands) and carries out the socket commands through
//! the shell's [`SocketIo`]; what those produce (a failed write -> `Disconnected`) is fed
//! next, in order. The deadline is re-read after every drain, so a timer is re-armed after
//! every input.
//!
//! # Connections
//!
//! Each `ConnId` the core names is *connecting* (after `Connect`), *open* (after
//! `Connected`) or *closing*. The rules, the same in both shells:
//!
//! * **`Send`** on an open connection goes to [`SocketIo::send`]; a frame for a connection
//!   that is gone is dropped.
//! * **`Close`** of a connecting connection forgets it: its result, when it arrives, is fed
//!   like any other (below). Of an open one: the close frame
//!   is queued ([`SocketIo::close`]) and the connection is *closing*: nothing it receives
//!   is fed again, and it is dropped when the peer hangs up or after
//!   [`ws::CLOSE_TIMEOUT`], whichever is first. The loop never blocks on it.
//! * A message is fed only while its connection is open. A close from the studio is fed
//!   as `Disconnected { code }` and the connection finishes the close handshake as a
//!   closing one (tungstenite has queued the reply).
//! * A read or write error is `Disconnected { code: None }`. When the transport itself is
//!   gone (IO, TLS, reset) the socket is dropped; when the bytes were bad (oversized or
//!   malformed frame) it is closed with 1000 "protocol violation" first.
//! * Every connect result becomes `Connected` / `ConnectFailed`: the core decides about a
//!   connection it gave up on (it closes a late success with 1000 "session ended" and
//!   ignores a late failure); the session only carries that out.
//! * After the core's `Exit`, nothing is fed; connections left open (a late success
//!   included) are closed with 1000 "session ended" as the process ends, and
//!   [`Session::finished`] says yes once no socket is left.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use studio_core::wire::{close_code, close_reason};
use studio_core::worker::{Command, ConnId, ConnectError, ExitCode, Input, Worker, WorkerConfig};
use studio_core::{Mono, Secret};
use studio_engines::Engine;
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;

use crate::clock::{wait_duration, Clock};
use crate::config::Config;
use crate::control::{Change, Control, Exit, Request};
use crate::driver::CommandRouter;
use crate::error::ShellError;
use crate::pool::{EventSink, PoolEvent};
use crate::trim::IdleTrim;
use crate::ws::{self, close_frame, input_for_error, input_for_message};

/// What reaches a loop from other threads and tasks, in either shell: `S` is the shell's
/// session socket.
pub enum LoopMsg<S> {
    /// An engine job or HTTP request finished.
    Pool(PoolEvent),
    /// A connect attempt finished.
    Connect {
        conn: ConnId,
        result: Result<Box<S>, ConnectError>,
    },
    /// A [`Control`] request: SIGINT / SIGTERM, the local control API, the demo, tests.
    Control(Request),
}

/// The two ways into a loop from other threads, built on one `post` (a channel send that
/// wakes the loop): the [`EventSink`] of the engine pool and HTTP runner, and the
/// [`Control`] of the signal thread, the local control API, the demo and tests.
pub fn mailbox<S: 'static>(
    post: impl Fn(LoopMsg<S>) + Clone + Send + Sync + 'static,
) -> (EventSink, Control) {
    let to_sink = post.clone();
    let sink = crate::pool::sink(move |event| to_sink(LoopMsg::Pool(event)));
    (
        sink,
        Control::new(move |request| post(LoopMsg::Control(request))),
    )
}

/// The socket IO of one runtime. The [`Session`] calls it while performing the core's
/// socket commands; it never calls back into the session (errors are returned instead).
pub trait SocketIo {
    /// The shell's session socket, as a connect attempt delivers it.
    type Socket;

    /// Takes a connected socket into the loop (registers it, starts its tasks). `Err`:
    /// it could not be watched (the attempt counts as failed).
    fn adopt(&mut self, conn: ConnId, socket: Self::Socket) -> Result<(), ConnectError>;

    /// Starts a connection attempt. Its outcome comes back later through
    /// [`Session::on_connected`] (after the shell has adopted a successful socket).
    fn connect(&mut self, conn: ConnId, url: String, auth_token: Secret);

    /// Hands a text frame to an open socket without blocking the loop (what the socket does
    /// not take now goes out later). `Err`: the connection broke.
    fn send(&mut self, conn: ConnId, text: String) -> Result<(), tungstenite::Error>;

    /// Starts closing a socket: queue `frame` (`None` when answering the peer's close,
    /// which tungstenite has queued already), then keep flushing and discarding what
    /// arrives until the peer hangs up, without blocking the loop. `Err`: drop it now.
    fn close(&mut self, conn: ConnId, frame: Option<CloseFrame>) -> Result<(), tungstenite::Error>;

    /// Drops a socket now (the session forgets it too).
    fn drop_socket(&mut self, conn: ConnId);
}

/// Where a connection the core named stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConnState {
    /// A connect attempt is under way and the core still wants it.
    Connecting,
    /// Up; its messages are fed.
    Open,
    /// Closed by the core, the peer or the shell: never fed again, dropped at `until` at
    /// the latest.
    Closing { until: Mono },
}

/// What a session (and so a daemon) is built from.
pub struct Setup {
    /// The settings `Command::Persist` updates ...
    pub config: Config,
    /// ... and the file it saves them to.
    pub config_path: PathBuf,
    /// The core's configuration.
    pub worker_config: WorkerConfig,
    /// The engine jobs run on.
    pub engine: Arc<dyn Engine>,
}

impl Setup {
    /// The setup of `studio-worker run`: the config file's settings, the host probe, the
    /// engine roster of [`crate::engine_router`] (every compiled-in engine, or the delayed
    /// synthetic one under the `STUDIO_WORKER_SYNTHETIC_DELAY_MS` test hook) and a jitter
    /// seed from the OS.
    pub fn from_config(config: Config, config_path: PathBuf) -> Result<Setup, ShellError> {
        let engine = crate::engine_router(&config);
        let worker_config = config.to_worker_config(
            crate::host::probe(),
            engine.capabilities(),
            crate::entropy::seed()?,
        );
        Ok(Setup {
            config,
            config_path,
            worker_config,
            engine: Arc::new(engine),
        })
    }
}

/// One worker core, its command router and its connections (see the module docs).
pub struct Session {
    worker: Worker,
    router: CommandRouter,
    conns: BTreeMap<ConnId, ConnState>,
    /// Inputs produced while performing commands (a failed write), fed in order.
    queue: VecDeque<Input>,
    /// The core's deadline after the last drain.
    until: Option<Mono>,
    exit: Option<Exit>,
    /// `--record`: the path and the shell's name, until `start` opens the recorder.
    record: Option<(PathBuf, String)>,
    /// When to give back the code pages an idle worker does not use (the executable's, its libraries').
    trim: IdleTrim,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("router", &self.router)
            .field("conns", &self.conns)
            .field("until", &self.until)
            .field("exit", &self.exit)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session of a new core (`setup.worker_config`) running jobs on `setup.engine` and
    /// HTTP on [`crate::http::agent`], delivering background completions to `sink`.
    pub fn new(setup: Setup, sink: EventSink) -> Session {
        let router = CommandRouter::new(
            setup.config,
            setup.config_path,
            setup.engine,
            crate::http::agent(),
            sink,
            Clock::new(),
        );
        Session {
            worker: Worker::new(setup.worker_config),
            router,
            conns: BTreeMap::new(),
            queue: VecDeque::new(),
            until: None,
            exit: None,
            record: None,
            trim: IdleTrim::default(),
        }
    }

    /// `--record PATH`: record the session into `path` from [`Session::start`] on, as the
    /// shell named `shell` (`sync`, `async`). The recorder sits in
    /// [`CommandRouter::feed`], the only place that calls `Worker::handle`, so it sees
    /// every input (immediate answers included) at the exact `Now` the core got.
    pub fn set_record(&mut self, path: Option<PathBuf>, shell: &str) {
        self.record = path.map(|p| (p, shell.to_string()));
    }

    /// The recorder, once [`Session::start`] opened it.
    pub fn recorder(&self) -> Option<&crate::record::Recorder> {
        self.router.recorder()
    }

    /// The core's status snapshot (tests, the demo).
    pub fn worker(&self) -> &Worker {
        &self.worker
    }

    /// The clock every input is stamped with.
    pub fn clock(&self) -> &Clock {
        self.router.clock()
    }

    /// Feeds what the durable outbox holds (`Input::Restore`), then `Input::Start`.
    pub fn start(&mut self, io: &mut impl SocketIo) {
        if let Some((path, shell)) = self.record.take() {
            let start = self.router.clock().now();
            match crate::record::Recorder::create(&path, &shell, self.worker.config(), start) {
                Ok(recorder) => {
                    tracing::info!(path = %path.display(), "recording the session");
                    self.router.set_recorder(Some(recorder));
                }
                Err(e) => tracing::error!(
                    path = %path.display(),
                    "cannot record the session ({e}); running without recording"
                ),
            }
        }
        // The durable outbox of an earlier run goes to the core first; it decides.
        for input in self.router.restore_outbox() {
            self.feed(input, io);
        }
        self.feed(Input::Start, io);
    }

    /// Whether `conn` is open: its messages are fed (otherwise a shell only drives the
    /// close of its socket).
    pub fn is_open(&self, conn: ConnId) -> bool {
        self.conns.get(&conn) == Some(&ConnState::Open)
    }

    /// A message read from `conn`: fed when `conn` is open; a close from the peer also
    /// moves it to closing.
    pub fn on_message(&mut self, conn: ConnId, message: Message, io: &mut impl SocketIo) {
        if !self.is_open(conn) {
            return; // data after a close, or the peer's close reply: not fed
        }
        let Some(input) = input_for_message(conn, message) else {
            return; // ping / pong: tungstenite queued the pong
        };
        if matches!(input, Input::Disconnected { .. }) {
            // The peer closed: tungstenite queued the close reply; finish the handshake on
            // the side, never feed this socket again.
            self.start_closing(conn, None, io);
        }
        self.feed(input, io);
    }

    /// A read or write error on `conn` (a peer that hung up included): an open connection
    /// is lost (`Disconnected`), a closing one is done.
    pub fn on_error(&mut self, conn: ConnId, error: &tungstenite::Error, io: &mut impl SocketIo) {
        match self.conns.get(&conn) {
            Some(ConnState::Open) => {
                self.lost(conn, error, io);
                self.pump(io);
            }
            Some(ConnState::Closing { .. }) => {
                tracing::debug!(%conn, "closed: {error}");
                self.drop_socket(conn, io);
            }
            _ => {}
        }
    }

    /// The outcome of a connect attempt (normally through [`Session::on_loop_msg`]). On
    /// success the shell has adopted the socket already (so the session can send on it or
    /// close it); `Err` also covers a socket the shell could not adopt.
    pub fn on_connected(
        &mut self,
        conn: ConnId,
        result: Result<(), ConnectError>,
        io: &mut impl SocketIo,
    ) {
        // Whether the core still wants it is the core's call: it answers a late success with
        // `Close` and ignores a late failure.
        self.conns.remove(&conn);
        let running = self.exit.is_none();
        match result {
            Ok(()) => {
                self.conns.insert(conn, ConnState::Open);
                if running {
                    tracing::debug!(%conn, "connected");
                    self.feed(Input::Connected { conn }, io);
                } else {
                    tracing::debug!(%conn, "connected after the core exited; closing");
                    self.start_closing(
                        conn,
                        Some(close_frame(close_code::NORMAL, close_reason::SESSION_ENDED)),
                        io,
                    );
                }
            }
            Err(error) if running => self.feed(Input::ConnectFailed { conn, error }, io),
            Err(error) => tracing::debug!(%conn, ?error, "connect failed after the core exited"),
        }
    }

    /// A message from another thread or task: a pool completion, a connect result (the
    /// socket adopted first), a [`Control`] request.
    pub fn on_loop_msg<IO: SocketIo>(&mut self, msg: LoopMsg<IO::Socket>, io: &mut IO) {
        match msg {
            LoopMsg::Pool(event) => self.on_pool_event(event, io),
            LoopMsg::Connect { conn, result } => {
                let result = result.and_then(|socket| io.adopt(conn, *socket));
                self.on_connected(conn, result, io);
            }
            LoopMsg::Control(request) => self.on_request(request, io),
        }
    }

    /// A [`Control`] request: a shutdown, an operator's change (saved first when it is a
    /// setting, then fed to the core as its input), or a query answered from the core
    /// itself.
    pub fn on_request(&mut self, request: Request, io: &mut impl SocketIo) {
        match request {
            Request::Shutdown => self.on_shutdown(io),
            Request::Query(read) => read(&self.worker, self.clock().mono()),
            Request::Change { change, reply } => {
                let outcome = self.apply(change, io);
                if let Err(why) = &outcome {
                    tracing::warn!("{change:?} refused: {why}");
                }
                if let Some(reply) = reply {
                    let _ = reply.send(outcome);
                }
            }
            Request::EditConfig { edit, reply } => {
                let outcome = self.edit_config(edit, io);
                if let Err(why) = &outcome {
                    tracing::warn!("config edit refused: {why}");
                }
                let _ = reply.send(outcome);
            }
        }
    }

    /// Carries out an operator's edit of the config: saved first (a change the file does
    /// not keep is not made), then the settings a running worker applies live fed to the
    /// core as their inputs.
    fn edit_config(
        &mut self,
        edit: crate::control::ConfigEdit,
        io: &mut impl SocketIo,
    ) -> Result<crate::control::Edited, String> {
        if self.exit.is_some() {
            return Err("the worker is stopping".into());
        }
        let before = self.router.config().clone();
        let after = edit(&before)?;
        if after != before {
            self.router
                .update_config(|c| *c = after.clone())
                .map_err(|e| e.to_string())?;
            tracing::info!(changed = ?before.changed_settings(&after), "operator: config edited");
        }
        if after.vram_threshold_gb != before.vram_threshold_gb {
            let gb = after.vram_threshold_gb;
            self.feed(Input::SetThreshold { gb }, io);
        }
        if after.auto_enabled != before.auto_enabled {
            let input = Change::Enabled(after.auto_enabled).input();
            self.feed(input, io);
        }
        Ok((Box::new(before), Box::new(after)))
    }

    /// Carries out an operator's change (see [`Change`]).
    fn apply(&mut self, change: Change, io: &mut impl SocketIo) -> Result<(), String> {
        if self.exit.is_some() {
            return Err("the worker is stopping".into());
        }
        // A setting is saved first: a change the file does not keep is not made.
        match change {
            Change::Pause | Change::Resume | Change::CheckUpdate => {}
            Change::Enabled(enabled) => self
                .router
                .update_config(|c| c.auto_enabled = enabled)
                .map_err(|e| e.to_string())?,
            Change::Threshold(gb) => {
                crate::config::validate_threshold(gb).map_err(|e| format!("vram threshold {e}"))?;
                self.router
                    .update_config(|c| c.vram_threshold_gb = gb)
                    .map_err(|e| e.to_string())?;
            }
        }
        tracing::info!("operator: {change:?}");
        self.feed(change.input(), io);
        Ok(())
    }

    /// A completion from an engine or HTTP thread (a result of a run the core cancelled is
    /// fed too: the core tells it by its run).
    pub fn on_pool_event(&mut self, event: PoolEvent, io: &mut impl SocketIo) {
        self.trim.activity(self.clock().mono());
        self.feed(event.into_input(), io);
    }

    /// SIGINT / SIGTERM / `Control::shutdown`.
    pub fn on_shutdown(&mut self, io: &mut impl SocketIo) {
        tracing::info!("shutdown requested");
        self.feed(Input::Shutdown, io);
    }

    /// After every wake-up: drops closing sockets whose close timeout is up, feeds
    /// `Input::Tick` when the core's deadline has passed, and gives back the idle worker's
    /// code pages when [`IdleTrim`] says it is time.
    pub fn after_wake(&mut self, io: &mut impl SocketIo) {
        let now = self.clock().mono();
        let expired: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, s)| matches!(s, ConnState::Closing { until } if *until <= now))
            .map(|(c, _)| *c)
            .collect();
        for conn in expired {
            tracing::debug!(%conn, "close timed out; dropping the socket");
            self.drop_socket(conn, io);
        }
        if self.exit.is_none() && self.until.is_some_and(|u| self.clock().mono() >= u) {
            self.feed(Input::Tick, io);
        }
        let busy = !self.router.pool().is_idle();
        if self.trim.due(now, busy) {
            match crate::trim::release_read_only_pages() {
                Ok(bytes) => tracing::debug!(
                    kib = bytes / 1024,
                    "idle for {:?}: released the mapped pages of the executable and its libraries",
                    self.trim.after()
                ),
                Err(e) => tracing::debug!("idle trim failed: {e}"),
            }
        }
    }

    /// Whether the loop is done: the core has exited and no socket is left. Closes the
    /// sockets the core left open (nothing, normally) once it has exited.
    pub fn finished(&mut self, io: &mut impl SocketIo) -> bool {
        if self.exit.is_none() {
            return false;
        }
        let open: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, s)| **s == ConnState::Open)
            .map(|(c, _)| *c)
            .collect();
        for conn in open {
            self.start_closing(
                conn,
                Some(close_frame(close_code::NORMAL, close_reason::SESSION_ENDED)),
                io,
            );
        }
        !self
            .conns
            .values()
            .any(|s| matches!(s, ConnState::Open | ConnState::Closing { .. }))
    }

    /// When the loop must wake at the latest: the core's deadline (until it has exited) or
    /// the earliest close timeout, whichever is first; `None` when neither exists.
    pub fn deadline(&self) -> Option<Mono> {
        self.core_deadline()
            .into_iter()
            .chain(self.closing_deadlines())
            .min()
    }

    /// How long the loop may sleep now: [`poll_timeout`] of the core's deadline and the
    /// close timeouts.
    pub fn poll_timeout(&self) -> Option<Duration> {
        poll_timeout(
            self.core_deadline(),
            self.closing_deadlines(),
            self.clock().mono(),
        )
    }

    /// The instant to sleep until, for runtimes with absolute timers: the
    /// [`Session::deadline`] itself. Nothing is rounded (a timer at an instant fires at or
    /// after it, so it can never spin early), and the instant stays the same while the
    /// deadline does, so a shell re-arms its timer only when the deadline moves.
    pub fn wake_at(&self) -> Option<Instant> {
        self.deadline().map(|d| self.clock().instant_at(d))
    }

    /// The core's exit (a fatal one if the loop ended without it).
    pub fn into_exit(self) -> Exit {
        self.exit.unwrap_or(Exit {
            code: ExitCode::Fatal,
            reason: "the worker stopped without a reason".into(),
        })
    }

    /// The core's deadline; none once it has exited.
    fn core_deadline(&self) -> Option<Mono> {
        self.until.filter(|_| self.exit.is_none())
    }

    fn closing_deadlines(&self) -> impl Iterator<Item = Mono> + '_ {
        self.conns.values().filter_map(|s| match s {
            ConnState::Closing { until } => Some(*until),
            _ => None,
        })
    }

    /// Feeds `input` and everything it leads to.
    fn feed(&mut self, input: Input, io: &mut impl SocketIo) {
        self.queue.push_back(input);
        self.pump(io);
    }

    /// Feeds the queued inputs, in order: each drain's socket commands are carried out
    /// here, and what they produce (a write error -> `Disconnected`) is queued behind.
    fn pump(&mut self, io: &mut impl SocketIo) {
        while let Some(input) = self.queue.pop_front() {
            if self.exit.is_some() {
                // The core has exited; it ignores everything from here on.
                self.queue.clear();
                break;
            }
            let mut socket_commands = Vec::new();
            let drained = self.router.feed(&mut self.worker, input, &mut |cmd| {
                socket_commands.push(cmd)
            });
            self.until = drained.until;
            if let Some((code, reason)) = drained.exit {
                self.exit = Some(Exit { code, reason });
            }
            for cmd in socket_commands {
                self.perform(cmd, io);
            }
            // The accept is written: now the engine may start.
            self.router.start_held_jobs();
        }
    }

    /// Carries out `Connect`, `Send` or `Close`.
    fn perform(&mut self, cmd: Command, io: &mut impl SocketIo) {
        match cmd {
            Command::Connect {
                conn,
                url,
                auth_token,
            } => {
                tracing::debug!(%conn, %url, "connecting");
                self.conns.insert(conn, ConnState::Connecting);
                io.connect(conn, url, auth_token);
            }
            Command::Send { conn, text } => {
                if !self.is_open(conn) {
                    tracing::debug!(%conn, "frame for a connection that is gone; dropped");
                } else if let Err(e) = io.send(conn, text) {
                    self.lost(conn, &e, io);
                }
            }
            Command::Close { conn, code, reason } => match self.conns.get(&conn) {
                Some(ConnState::Connecting) => {
                    // Still connecting: its result will be closed and dropped unseen.
                    self.conns.remove(&conn);
                    tracing::debug!(%conn, "connection abandoned before it was up");
                }
                Some(ConnState::Open) => {
                    tracing::debug!(%conn, code, %reason, "closing");
                    self.start_closing(conn, Some(close_frame(code, &reason)), io);
                }
                _ => {}
            },
            other => {
                tracing::error!("not a socket command: {other:?}");
            }
        }
    }

    /// The connection broke (read or write error): queue the input for the core, drop the
    /// socket or, when only the bytes were bad, close it saying so.
    fn lost(&mut self, conn: ConnId, error: &tungstenite::Error, io: &mut impl SocketIo) {
        let input = input_for_error(conn, error);
        if transport_gone(error) {
            self.drop_socket(conn, io);
        } else {
            // The bytes were bad, the socket is fine: say why before hanging up.
            self.start_closing(
                conn,
                Some(close_frame(
                    close_code::NORMAL,
                    close_reason::PROTOCOL_VIOLATION,
                )),
                io,
            );
        }
        // Fed by the running `pump` (inside a drain) or by the caller's `pump`.
        self.queue.push_back(input);
    }

    /// Moves an open connection to closing: `frame` is queued (none when answering the
    /// peer's close) and it lingers until the peer hangs up or [`ws::CLOSE_TIMEOUT`].
    fn start_closing(&mut self, conn: ConnId, frame: Option<CloseFrame>, io: &mut impl SocketIo) {
        if !self.is_open(conn) {
            return;
        }
        let until = self.clock().mono() + ws::CLOSE_TIMEOUT;
        self.conns.insert(conn, ConnState::Closing { until });
        if let Err(e) = io.close(conn, frame) {
            tracing::debug!(%conn, "closed: {e}");
            self.drop_socket(conn, io);
        }
    }

    fn drop_socket(&mut self, conn: ConnId, io: &mut impl SocketIo) {
        if self.conns.remove(&conn).is_some() {
            io.drop_socket(conn);
        }
    }
}

/// Whether an error means the transport itself is gone (nothing more can be written), as
/// opposed to bad bytes on a socket that still works.
pub fn transport_gone(error: &tungstenite::Error) -> bool {
    matches!(
        error,
        tungstenite::Error::Io(_)
            | tungstenite::Error::Tls(_)
            | tungstenite::Error::ConnectionClosed
            | tungstenite::Error::AlreadyClosed
            | tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::ResetWithoutClosingHandshake
            )
    )
}

/// How long a loop may sleep: until the core's deadline or the earliest close timeout,
/// whichever is first, rounded **up** to whole milliseconds by [`wait_duration`] (a
/// deadline 1 µs away sleeps 1 ms, never a zero-timeout spin); `None` (sleep until IO)
/// when neither exists.
pub fn poll_timeout(
    core_until: Option<Mono>,
    closing: impl IntoIterator<Item = Mono>,
    now: Mono,
) -> Option<Duration> {
    let earliest = core_until.into_iter().chain(closing).min();
    wait_duration(earliest, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_timeout_rounds_up_and_takes_the_earliest_deadline() {
        let now = Mono(10_000_000);
        assert_eq!(poll_timeout(None, [], now), None);
        assert_eq!(
            poll_timeout(Some(Mono(10_000_001)), [], now),
            Some(Duration::from_millis(1)),
            "1 µs left must sleep 1 ms, not spin"
        );
        assert_eq!(
            poll_timeout(Some(Mono(15_000_000)), [Mono(11_500_500)], now),
            Some(Duration::from_millis(1501))
        );
        assert_eq!(
            poll_timeout(None, [Mono(12_000_000), Mono(11_000_000)], now),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            poll_timeout(Some(Mono(9_000_000)), [], now),
            Some(Duration::ZERO),
            "a passed deadline polls without sleeping, then ticks"
        );
    }

    #[test]
    fn close_reasons_fit_a_close_frame() {
        for reason in [
            close_reason::SESSION_ENDED,
            close_reason::PROTOCOL_VIOLATION,
        ] {
            assert_eq!(ws::clip_close_reason(reason), reason);
        }
    }

    #[test]
    fn transport_errors_drop_and_bad_bytes_close() {
        use std::io;
        assert!(transport_gone(&tungstenite::Error::Io(
            io::ErrorKind::ConnectionReset.into()
        )));
        assert!(transport_gone(&tungstenite::Error::ConnectionClosed));
        assert!(!transport_gone(&tungstenite::Error::Capacity(
            tungstenite::error::CapacityError::MessageTooLong {
                size: 10,
                max_size: 5
            }
        )));
    }
}
