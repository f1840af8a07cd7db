//! The mio event loop that drives the worker core (see the crate docs for the whole picture).

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::Duration;

use mio::{Events, Interest, Poll, Registry, Token, Waker};
use rustls::ClientConfig;
use studio_core::worker::{Command, ConnId, ConnectError, ExitCode, Input, Worker, WorkerConfig};
use studio_core::Mono;
use studio_engines::{Engine, Router};
use studio_shell::pool::{self, PoolEvent};
use studio_shell::ws::{self, close_frame, input_for_error, input_for_message, would_block};
use studio_shell::{entropy, host, http, wait_duration, Clock, CommandRouter, Config, ShellError};
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;

use crate::connect::{self, Ws};

/// The waker's token; sockets count up from 1.
const WAKER: Token = Token(0);

/// The close reason of a socket the shell closes on its own (a connection the core gave up
/// on before it was up, or one still open when the core exited).
const REASON_SESSION_ENDED: &str = "session ended";
/// The close reason after the studio broke the WebSocket protocol (oversized frame, bad
/// framing): the same words the core uses for its own protocol-violation closes.
const REASON_PROTOCOL_VIOLATION: &str = "protocol violation";

/// What reaches the loop from other threads (always followed by a `Waker::wake`).
enum LoopMsg {
    /// An engine job or HTTP request finished.
    Pool(PoolEvent),
    /// A connect thread finished.
    Connect {
        conn: ConnId,
        result: Result<Box<Ws>, ConnectError>,
    },
    /// SIGINT / SIGTERM / [`Control::shutdown`].
    Shutdown,
}

/// Sends to the loop and wakes it.
#[derive(Clone)]
struct Notifier {
    tx: Sender<LoopMsg>,
    waker: Arc<Waker>,
}

impl Notifier {
    fn send(&self, msg: LoopMsg) {
        // A send fails only once the loop is gone; then nobody needs waking.
        if self.tx.send(msg).is_ok() {
            if let Err(e) = self.waker.wake() {
                tracing::error!("cannot wake the event loop: {e}");
            }
        }
    }
}

/// A handle to a running [`Daemon`] from another thread (the signal thread, the demo,
/// tests).
#[derive(Clone)]
pub struct Control(Notifier);

impl Control {
    /// Asks for a graceful shutdown (`Input::Shutdown`): the core finishes or hands back
    /// the running job, closes the session with 1000 and exits cleanly. Harmless to repeat.
    pub fn shutdown(&self) {
        self.0.send(LoopMsg::Shutdown);
    }
}

impl fmt::Debug for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Control")
    }
}

/// How the daemon ended: the core's exit code and reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    pub code: ExitCode,
    pub reason: String,
}

/// Why the daemon could not start (or its event loop failed).
#[derive(Debug)]
pub enum RunError {
    /// Config, CLI or entropy trouble from the shared shell code.
    Shell(ShellError),
    /// The OS refused an event-loop resource.
    Io {
        what: &'static str,
        source: io::Error,
    },
}

impl RunError {
    /// The process exit code: the shell error's own, or 3 (fatal).
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Shell(e) => e.exit_code(),
            RunError::Io { .. } => ExitCode::Fatal.code(),
        }
    }
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Shell(e) => e.fmt(f),
            RunError::Io { what, source } => write!(f, "cannot {what}: {source}"),
        }
    }
}

impl std::error::Error for RunError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RunError::Shell(e) => Some(e),
            RunError::Io { source, .. } => Some(source),
        }
    }
}

impl From<ShellError> for RunError {
    fn from(e: ShellError) -> RunError {
        RunError::Shell(e)
    }
}

/// One WebSocket the loop owns.
struct Socket {
    conn: ConnId,
    token: Token,
    ws: Ws,
    /// The interest it is registered with.
    interest: Interest,
    /// Output is waiting for the socket to become writable.
    write_blocked: bool,
    /// Set once the core (or the peer) closed it: its events are never fed again; it is
    /// dropped when the close handshake ends or at this deadline.
    closing: Option<Mono>,
}

impl Socket {
    fn wanted_interest(&self) -> Interest {
        if self.write_blocked {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        }
    }
}

/// The sync shell's daemon: one mio `Poll` driving one worker core.
pub struct Daemon {
    poll: Poll,
    notifier: Notifier,
    rx: Receiver<LoopMsg>,
    router: CommandRouter,
    worker: Worker,
    tls: Arc<ClientConfig>,
    sockets: Vec<Socket>,
    next_token: usize,
    /// Connect threads whose result the core still wants.
    connecting: BTreeSet<ConnId>,
    /// Inputs produced while performing commands (a failed write), fed in order.
    queue: VecDeque<Input>,
    /// The core's deadline after the last drain.
    until: Option<Mono>,
    exit: Option<Exit>,
    record: Option<PathBuf>,
}

impl fmt::Debug for Daemon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Daemon")
            .field("router", &self.router)
            .field("sockets", &self.sockets.len())
            .field("connecting", &self.connecting)
            .field("until", &self.until)
            .field("exit", &self.exit)
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// The daemon `studio-worker run` starts: the config file's settings, the host probe,
    /// every compiled-in engine (`studio_engines::Router::new_default`) and a jitter seed
    /// from the OS.
    pub fn from_config(config: Config, config_path: PathBuf) -> Result<Daemon, RunError> {
        let engine = Router::new_default();
        let worker_config =
            config.to_worker_config(host::probe(), engine.capabilities(), entropy::seed()?);
        Daemon::new(config, config_path, worker_config, Arc::new(engine))
    }

    /// A daemon with an explicit core configuration and engine (tests, the demo).
    /// `config` / `config_path` are what `Command::Persist` updates and saves.
    pub fn new(
        config: Config,
        config_path: PathBuf,
        worker_config: WorkerConfig,
        engine: Arc<dyn Engine>,
    ) -> Result<Daemon, RunError> {
        let poll = Poll::new().map_err(|source| RunError::Io {
            what: "create the event loop",
            source,
        })?;
        let waker = Waker::new(poll.registry(), WAKER).map_err(|source| RunError::Io {
            what: "create the event loop waker",
            source,
        })?;
        let (tx, rx) = mpsc::channel();
        let notifier = Notifier {
            tx,
            waker: Arc::new(waker),
        };
        let sink_notifier = notifier.clone();
        let sink = pool::sink(move |event| sink_notifier.send(LoopMsg::Pool(event)));
        let router = CommandRouter::new(
            config,
            config_path,
            engine,
            http::agent(),
            sink,
            Clock::new(),
        );
        Ok(Daemon {
            poll,
            notifier,
            rx,
            router,
            worker: Worker::new(worker_config),
            tls: studio_shell::tls::client_config(),
            sockets: Vec::new(),
            next_token: 1,
            connecting: BTreeSet::new(),
            queue: VecDeque::new(),
            until: None,
            exit: None,
            record: None,
        })
    }

    /// A handle that can ask this daemon to shut down from another thread.
    pub fn control(&self) -> Control {
        Control(self.notifier.clone())
    }

    /// `--record PATH`: where the session recording would go.
    ///
    /// **Recording hook.** The recorder is not part of this build. It belongs in
    /// `studio_shell::CommandRouter::feed`, the only place that calls `Worker::handle`
    /// (it knows the exact `Now` of every input, immediate answers included), so both
    /// shells record identically; this setter and the warning in [`Daemon::run`] are where
    /// the sync shell hands the path over.
    pub fn set_record(&mut self, path: Option<PathBuf>) {
        self.record = path;
    }

    /// Replaces the TLS client configuration of `wss://` connections (default:
    /// `studio_shell::tls::client_config`, the bundled webpki roots): a private CA, tests.
    pub fn set_tls_config(&mut self, config: Arc<ClientConfig>) {
        self.tls = config;
    }

    /// The core's status snapshot (tests, the demo).
    pub fn worker(&self) -> &Worker {
        &self.worker
    }

    /// Runs until the core exits (and its last close frames are out, or their 5 s are up).
    pub fn run(mut self) -> Exit {
        if let Some(path) = &self.record {
            tracing::warn!(
                path = %path.display(),
                "session recording (--record) is not available in this build yet; running without it"
            );
        }
        let mut events = Events::with_capacity(64);
        self.feed(Input::Start);
        loop {
            if self.exit.is_some() {
                self.close_leftovers();
                if self.sockets.is_empty() {
                    break;
                }
            }
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!("the event loop failed: {e}");
                return Exit {
                    code: ExitCode::Fatal,
                    reason: format!("the event loop failed: {e}; restart the worker"),
                };
            }
            for event in events.iter() {
                if event.token() == WAKER {
                    continue; // the channel is drained below, every turn
                }
                let readable = event.is_readable() || event.is_read_closed() || event.is_error();
                self.on_socket_event(event.token(), readable, event.is_writable());
            }
            self.pump();
            self.drain_channel();
            self.pump();
            self.expire_closing();
            if self.exit.is_none() && self.until.is_some_and(|u| self.router.clock().mono() >= u) {
                self.feed(Input::Tick);
            }
        }
        self.exit.unwrap_or(Exit {
            code: ExitCode::Fatal,
            reason: "the worker stopped without a reason".into(),
        })
    }

    /// Feeds `input` and everything it leads to: each drain's socket commands are carried
    /// out here, and what they produce (a write error -> `Disconnected`) is fed next.
    fn feed(&mut self, input: Input) {
        self.queue.push_back(input);
        self.pump();
    }

    /// Feeds the queued inputs, in order.
    fn pump(&mut self) {
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
                self.perform(cmd);
            }
        }
    }

    /// Carries out `Connect`, `Send` or `Close`.
    fn perform(&mut self, cmd: Command) {
        match cmd {
            Command::Connect {
                conn,
                url,
                auth_token,
            } => {
                tracing::debug!(%conn, %url, "connecting");
                self.connecting.insert(conn);
                let notifier = self.notifier.clone();
                connect::spawn(
                    conn,
                    url,
                    auth_token,
                    Arc::clone(&self.tls),
                    move |conn, r| {
                        notifier.send(LoopMsg::Connect {
                            conn,
                            result: r.map(Box::new),
                        });
                    },
                );
            }
            Command::Send { conn, text } => self.send(conn, text),
            Command::Close { conn, code, reason } => {
                if self.connecting.remove(&conn) {
                    // Still connecting: its result will be closed and dropped unseen.
                    tracing::debug!(%conn, "connection abandoned before it was up");
                } else if self.open_index(conn).is_some() {
                    tracing::debug!(%conn, code, %reason, "closing");
                    self.start_closing(conn, Some(close_frame(code, &reason)));
                }
            }
            other => {
                tracing::error!("not a socket command: {other:?}");
            }
        }
    }

    fn send(&mut self, conn: ConnId, text: String) {
        let Some(i) = self.open_index(conn) else {
            tracing::debug!(%conn, "frame for a connection that is gone; dropped");
            return;
        };
        let sock = &mut self.sockets[i];
        match sock.ws.write(Message::text(text)) {
            Ok(()) => self.flush(conn),
            // tungstenite keeps the frame; it goes out with the next flush.
            Err(e) if would_block(&e) => {
                sock.write_blocked = true;
                self.update_interest(conn);
            }
            Err(e) => self.lost(conn, &e),
        }
    }

    /// Flushes what tungstenite holds (frames, automatic pongs, close replies) and keeps the
    /// WRITABLE interest in line with what is left.
    fn flush(&mut self, conn: ConnId) {
        let Some(i) = self.index(conn) else { return };
        let sock = &mut self.sockets[i];
        match sock.ws.flush() {
            Ok(()) => sock.write_blocked = false,
            Err(e) if would_block(&e) => sock.write_blocked = true,
            Err(e) => {
                if sock.closing.is_some() {
                    self.drop_socket(conn);
                } else {
                    self.lost(conn, &e);
                }
                return;
            }
        }
        self.update_interest(conn);
    }

    /// The connection broke (read or write error): tell the core, drop the socket.
    fn lost(&mut self, conn: ConnId, error: &tungstenite::Error) {
        let input = input_for_error(conn, error);
        let transport_gone = matches!(
            error,
            tungstenite::Error::Io(_)
                | tungstenite::Error::Tls(_)
                | tungstenite::Error::ConnectionClosed
                | tungstenite::Error::AlreadyClosed
                | tungstenite::Error::Protocol(
                    tungstenite::error::ProtocolError::ResetWithoutClosingHandshake
                )
        );
        if transport_gone {
            self.drop_socket(conn);
        } else {
            // The bytes were bad, the socket is fine: say why before hanging up.
            self.start_closing(
                conn,
                Some(close_frame(
                    studio_core::wire::close_code::NORMAL,
                    REASON_PROTOCOL_VIOLATION,
                )),
            );
        }
        // Fed by the running `pump` (inside a drain) or by the loop's next `pump`.
        self.queue.push_back(input);
    }

    fn on_socket_event(&mut self, token: Token, readable: bool, writable: bool) {
        let Some(sock) = self.sockets.iter().find(|s| s.token == token) else {
            return;
        };
        let conn = sock.conn;
        if sock.closing.is_some() {
            self.drive_closing(conn);
            return;
        }
        if writable {
            self.flush(conn);
        }
        if readable {
            self.read(conn);
        }
    }

    /// Reads every available message of an open socket (edge-triggered: until
    /// `WouldBlock`), feeding each before reading the next, so that nothing is fed once the
    /// core closed the connection.
    fn read(&mut self, conn: ConnId) {
        loop {
            let Some(i) = self.open_index(conn) else {
                // Closed meanwhile (by the core or the peer): finish that instead.
                if self.index(conn).is_some() {
                    self.drive_closing(conn);
                }
                return;
            };
            match self.sockets[i].ws.read() {
                Ok(message) => {
                    let Some(input) = input_for_message(conn, message) else {
                        continue; // ping / pong: tungstenite queued the pong
                    };
                    if matches!(input, Input::Disconnected { .. }) {
                        // The peer closed: tungstenite queued the close reply; finish the
                        // handshake on the side, never feed this socket again.
                        self.start_closing(conn, None);
                    }
                    self.feed(input);
                }
                Err(e) if would_block(&e) => {
                    // Send what reading queued (pongs), then wait for the next edge.
                    self.flush(conn);
                    return;
                }
                Err(e) => {
                    self.lost(conn, &e);
                    return;
                }
            }
        }
    }

    /// Moves an open socket to the closing list: queue `frame` (none when answering the
    /// peer's close), then flush and read until the peer hangs up or [`ws::CLOSE_TIMEOUT`].
    fn start_closing(&mut self, conn: ConnId, frame: Option<CloseFrame>) {
        let Some(i) = self.index(conn) else { return };
        let deadline = self.router.clock().mono() + ws::CLOSE_TIMEOUT;
        let sock = &mut self.sockets[i];
        if sock.closing.is_some() {
            return;
        }
        sock.closing = Some(deadline);
        if let Some(frame) = frame {
            match sock.ws.close(Some(frame)) {
                Ok(()) => {}
                Err(e) if would_block(&e) => sock.write_blocked = true,
                Err(e) => {
                    tracing::debug!(%conn, "close frame not sent: {e}");
                    self.drop_socket(conn);
                    return;
                }
            }
        }
        self.drive_closing(conn);
    }

    /// Drives a closing socket: discard what arrives, flush what is queued; drop it once
    /// the peer has hung up (or on any error).
    fn drive_closing(&mut self, conn: ConnId) {
        loop {
            let Some(i) = self.index(conn) else { return };
            match self.sockets[i].ws.read() {
                Ok(_) => {} // data after close, or the peer's close reply: not fed
                Err(e) if would_block(&e) => break,
                Err(e) => {
                    tracing::debug!(%conn, "closed: {e}");
                    self.drop_socket(conn);
                    return;
                }
            }
        }
        self.flush(conn);
    }

    /// Drops closing sockets whose close timeout is up.
    fn expire_closing(&mut self) {
        let now = self.router.clock().mono();
        let expired: Vec<ConnId> = self
            .sockets
            .iter()
            .filter(|s| s.closing.is_some_and(|d| d <= now))
            .map(|s| s.conn)
            .collect();
        for conn in expired {
            tracing::debug!(%conn, "close timed out; dropping the socket");
            self.drop_socket(conn);
        }
    }

    /// After the core exited: close what it left open (nothing, normally).
    fn close_leftovers(&mut self) {
        let open: Vec<ConnId> = self
            .sockets
            .iter()
            .filter(|s| s.closing.is_none())
            .map(|s| s.conn)
            .collect();
        for conn in open {
            self.start_closing(
                conn,
                Some(close_frame(
                    studio_core::wire::close_code::NORMAL,
                    REASON_SESSION_ENDED,
                )),
            );
        }
    }

    fn drain_channel(&mut self) {
        loop {
            match self.rx.try_recv() {
                Ok(LoopMsg::Pool(event)) => {
                    if let Some(input) = self.router.admit(event) {
                        self.feed(input);
                    }
                }
                Ok(LoopMsg::Connect { conn, result }) => self.on_connect_result(conn, result),
                Ok(LoopMsg::Shutdown) => {
                    tracing::info!("shutdown requested");
                    self.feed(Input::Shutdown);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            }
        }
    }

    fn on_connect_result(&mut self, conn: ConnId, result: Result<Box<Ws>, ConnectError>) {
        let wanted = self.connecting.remove(&conn) && self.exit.is_none();
        match result {
            Ok(ws) => {
                let token = Token(self.next_token);
                self.next_token += 1;
                let mut ws = *ws;
                let registered = self.poll.registry().register(
                    ws.get_mut().socket_mut(),
                    token,
                    Interest::READABLE,
                );
                if let Err(e) = registered {
                    if wanted {
                        self.feed(Input::ConnectFailed {
                            conn,
                            error: ConnectError::Transport(format!("cannot watch the socket: {e}")),
                        });
                    }
                    return;
                }
                self.sockets.push(Socket {
                    conn,
                    token,
                    ws,
                    interest: Interest::READABLE,
                    write_blocked: false,
                    closing: None,
                });
                if wanted {
                    tracing::debug!(%conn, "connected");
                    self.feed(Input::Connected { conn });
                    // Bytes that came with the upgrade response, or before registration,
                    // raise no readiness edge: read now.
                    self.read(conn);
                } else {
                    tracing::debug!(%conn, "late connection the core no longer wants; closing");
                    self.start_closing(
                        conn,
                        Some(close_frame(
                            studio_core::wire::close_code::NORMAL,
                            REASON_SESSION_ENDED,
                        )),
                    );
                }
            }
            Err(error) if wanted => self.feed(Input::ConnectFailed { conn, error }),
            Err(error) => tracing::debug!(%conn, ?error, "late connect failure dropped"),
        }
    }

    fn index(&self, conn: ConnId) -> Option<usize> {
        self.sockets.iter().position(|s| s.conn == conn)
    }

    fn open_index(&self, conn: ConnId) -> Option<usize> {
        self.sockets
            .iter()
            .position(|s| s.conn == conn && s.closing.is_none())
    }

    fn update_interest(&mut self, conn: ConnId) {
        let Some(i) = self.index(conn) else { return };
        let registry: &Registry = self.poll.registry();
        let sock = &mut self.sockets[i];
        let wanted = sock.wanted_interest();
        if wanted == sock.interest {
            return;
        }
        match registry.reregister(sock.ws.get_mut().socket_mut(), sock.token, wanted) {
            Ok(()) => sock.interest = wanted,
            Err(e) => tracing::warn!(%conn, "cannot change the socket's interest: {e}"),
        }
    }

    fn drop_socket(&mut self, conn: ConnId) {
        let Some(i) = self.index(conn) else { return };
        let mut sock = self.sockets.swap_remove(i);
        let _ = self
            .poll
            .registry()
            .deregister(sock.ws.get_mut().socket_mut());
    }

    fn poll_timeout(&self) -> Option<Duration> {
        let now = self.router.clock().mono();
        let core = if self.exit.is_some() {
            None
        } else {
            self.until
        };
        poll_timeout(core, self.sockets.iter().filter_map(|s| s.closing), now)
    }
}

/// How long `Poll::poll` may sleep: until the core's deadline or the earliest close
/// timeout, whichever is first, rounded **up** to whole milliseconds by
/// [`wait_duration`] (a deadline 1 µs away sleeps 1 ms, never a zero-timeout spin);
/// `None` (sleep until IO) when neither exists.
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
        for reason in [REASON_SESSION_ENDED, REASON_PROTOCOL_VIOLATION] {
            assert_eq!(ws::clip_close_reason(reason), reason);
        }
    }
}
