//! The mio event loop that drives the worker core (see the crate docs for the whole
//! picture). The session logic (feeding, connection bookkeeping, close timeouts, exit) is
//! `studio_shell::Session`; this file is the mio half: readiness, tokens, interest, and
//! reading / flushing until `WouldBlock`.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::Duration;

use mio::{Events, Interest, Poll, Registry, Token, Waker};
use rustls::ClientConfig;
use studio_core::worker::{ConnId, ConnectError, ExitCode};
use studio_core::Secret;
use studio_shell::session::{self, LoopMsg, Setup};
use studio_shell::ws::would_block;
use studio_shell::{Control, Exit, RunError, Session, SocketIo, WorkerDaemon};
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;

use crate::connect::{self, Ws};

/// The waker's token; sockets count up from 1.
const WAKER: Token = Token(0);

/// Sends to the loop (pool completions, connect-thread results, shutdown) and wakes it when
/// it waits.
#[derive(Clone)]
struct Notifier {
    tx: Sender<LoopMsg<Ws>>,
    waker: Arc<Waker>,
    /// Set while the loop waits in `poll` (from just before it looks at the channel a last
    /// time): only then does a message need the waker (a write to its `eventfd`, and a turn
    /// of the loop for the readiness it raises). An awake loop finds the message itself.
    waiting: Arc<AtomicBool>,
}

impl Notifier {
    fn send(&self, msg: LoopMsg<Ws>) {
        // A send fails only once the loop is gone; then nobody needs waking.
        if self.tx.send(msg).is_err() {
            return;
        }
        // With the fence in `Daemon::queued_before_waiting`: the loop sees this message before it waits, or
        // this sees the loop waiting (or both).
        fence(Ordering::SeqCst);
        if self.waiting.swap(false, Ordering::SeqCst) {
            if let Err(e) = self.waker.wake() {
                tracing::error!("cannot wake the event loop: {e}");
            }
        }
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

/// The sockets and the mio registry: the [`SocketIo`] of the sync shell.
struct Sockets {
    poll: Poll,
    notifier: Notifier,
    tls: Arc<ClientConfig>,
    sockets: Vec<Socket>,
    next_token: usize,
}

/// The sync shell's daemon: one mio `Poll` driving one worker core.
pub struct Daemon {
    session: Session,
    io: Sockets,
    rx: Receiver<LoopMsg<Ws>>,
    control: Control,
}

impl fmt::Debug for Daemon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Daemon")
            .field("session", &self.session)
            .field("sockets", &self.io.sockets.len())
            .finish_non_exhaustive()
    }
}

impl WorkerDaemon for Daemon {
    const SHELL: &'static str = "sync shell";
    const PACKAGE: &'static str = "studio-worker";

    fn new(setup: Setup) -> Result<Daemon, RunError> {
        let poll = Poll::new().map_err(RunError::io("create the event loop"))?;
        let waker = Waker::new(poll.registry(), WAKER)
            .map_err(RunError::io("create the event loop waker"))?;
        let (tx, rx) = mpsc::channel();
        let notifier = Notifier {
            tx,
            waker: Arc::new(waker),
            waiting: Arc::new(AtomicBool::new(false)),
        };
        let post = notifier.clone();
        let (sink, control) = session::mailbox(move |msg| post.send(msg));
        Ok(Daemon {
            session: Session::new(setup, sink),
            io: Sockets {
                poll,
                notifier,
                tls: studio_shell::tls::client_config(),
                sockets: Vec::new(),
                next_token: 1,
            },
            rx,
            control,
        })
    }

    fn control(&self) -> Control {
        self.control.clone()
    }

    fn set_record(&mut self, path: Option<PathBuf>) {
        self.session.set_record(path, "sync");
    }

    fn set_tls_config(&mut self, config: Arc<ClientConfig>) {
        self.io.tls = config;
    }

    fn run(mut self) -> Exit {
        let mut events = Events::with_capacity(64);
        self.session.start(&mut self.io);
        // Whether the last turn polled the sockets.
        let mut polled = true;
        while !self.session.finished(&mut self.io) {
            // A message already queued (a job's result that came while the loop was busy,
            // say) is fed without waiting; the sockets are polled at least every other turn
            // (then without waiting either).
            let queued = self.queued_before_waiting();
            let skip = queued.is_some() && polled;
            polled = !skip;
            if skip {
                events.clear();
            } else {
                let timeout = match queued {
                    Some(_) => Some(Duration::ZERO),
                    None => self.session.poll_timeout(),
                };
                if let Err(e) = self.io.poll.poll(&mut events, timeout) {
                    if e.kind() != io::ErrorKind::Interrupted {
                        tracing::error!("the event loop failed: {e}");
                        return Exit {
                            code: ExitCode::Fatal,
                            reason: format!("the event loop failed: {e}; restart the worker"),
                        };
                    }
                    events.clear();
                }
            }
            self.io.notifier.waiting.store(false, Ordering::SeqCst);
            for event in events.iter() {
                if event.token() == WAKER {
                    continue; // the channel is drained below, every turn
                }
                let readable = event.is_readable() || event.is_read_closed() || event.is_error();
                self.on_socket_event(event.token(), readable, event.is_writable());
            }
            self.drain_channel(queued);
            self.session.after_wake(&mut self.io);
        }
        self.session.into_exit()
    }
}

impl Daemon {
    /// The core's status snapshot (tests, the demo).
    pub fn worker(&self) -> &studio_core::worker::Worker {
        self.session.worker()
    }

    fn on_socket_event(&mut self, token: Token, readable: bool, writable: bool) {
        let Some(conn) = self.io.conn_of(token) else {
            return;
        };
        if readable {
            if let Some(socket) = self.io.socket(conn) {
                // New bytes (or the end): the next read must reach the socket.
                socket.ws.get_mut().socket_mut().rearm();
            }
        }
        if !self.session.is_open(conn) {
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

    /// Flushes what tungstenite holds (frames, automatic pongs, close replies).
    fn flush(&mut self, conn: ConnId) {
        if let Err(e) = self.io.flush(conn) {
            self.session.on_error(conn, &e, &mut self.io);
        }
    }

    /// Reads every available message of an open socket (edge-triggered: until
    /// `WouldBlock`), feeding each before reading the next, so that nothing is fed once the
    /// core closed the connection.
    fn read(&mut self, conn: ConnId) {
        loop {
            if !self.session.is_open(conn) {
                // Closed meanwhile (by the core or the peer): finish that instead.
                self.drive_closing(conn);
                return;
            }
            let Some(socket) = self.io.socket(conn) else {
                return;
            };
            match socket.ws.read() {
                Ok(message) => self.session.on_message(conn, message, &mut self.io),
                Err(e) if would_block(&e) => {
                    // Send what reading queued (pongs), then wait for the next edge.
                    self.flush(conn);
                    return;
                }
                Err(e) => {
                    self.session.on_error(conn, &e, &mut self.io);
                    return;
                }
            }
        }
    }

    fn drive_closing(&mut self, conn: ConnId) {
        if let Err(e) = self.io.drive_closing(conn) {
            self.session.on_error(conn, &e, &mut self.io);
        }
    }

    /// Marks the loop as waiting, then takes a message that is already queued, if any (see
    /// `Notifier::waiting`).
    fn queued_before_waiting(&self) -> Option<LoopMsg<Ws>> {
        self.io.notifier.waiting.store(true, Ordering::SeqCst);
        // See `Notifier::send`.
        fence(Ordering::SeqCst);
        self.rx.try_recv().ok()
    }

    /// Feeds `first` (a message taken before waiting), then every queued message.
    fn drain_channel(&mut self, mut first: Option<LoopMsg<Ws>>) {
        loop {
            let msg = match first.take().map_or_else(|| self.rx.try_recv(), Ok) {
                Ok(msg) => msg,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            };
            let connected = match &msg {
                LoopMsg::Connect { conn, .. } => Some(*conn),
                _ => None,
            };
            self.session.on_loop_msg(msg, &mut self.io);
            if let Some(conn) = connected.filter(|c| self.session.is_open(*c)) {
                // Bytes that came with the upgrade response, or before registration, raise
                // no readiness edge: read now.
                self.read(conn);
            }
        }
    }
}

impl Sockets {
    fn conn_of(&self, token: Token) -> Option<ConnId> {
        self.sockets
            .iter()
            .find(|s| s.token == token)
            .map(|s| s.conn)
    }

    fn socket(&mut self, conn: ConnId) -> Option<&mut Socket> {
        self.sockets.iter_mut().find(|s| s.conn == conn)
    }

    /// Flushes what tungstenite holds and keeps the WRITABLE interest in line with what is
    /// left. `Err`: the connection broke.
    fn flush(&mut self, conn: ConnId) -> Result<(), tungstenite::Error> {
        let Some(sock) = self.socket(conn) else {
            return Ok(());
        };
        match sock.ws.flush() {
            Ok(()) => sock.write_blocked = false,
            Err(e) if would_block(&e) => sock.write_blocked = true,
            Err(e) => return Err(e),
        }
        self.update_interest(conn);
        Ok(())
    }

    /// Drives a closing socket: discard what arrives, flush what is queued. `Err` once the
    /// peer has hung up (or on any error).
    fn drive_closing(&mut self, conn: ConnId) -> Result<(), tungstenite::Error> {
        let Some(sock) = self.socket(conn) else {
            return Ok(());
        };
        loop {
            match sock.ws.read() {
                Ok(_) => {} // data after close, or the peer's close reply: not fed
                Err(e) if would_block(&e) => break,
                Err(e) => return Err(e),
            }
        }
        self.flush(conn)
    }

    fn update_interest(&mut self, conn: ConnId) {
        let registry: &Registry = self.poll.registry();
        let Some(sock) = self.sockets.iter_mut().find(|s| s.conn == conn) else {
            return;
        };
        let wanted = sock.wanted_interest();
        if wanted == sock.interest {
            return;
        }
        match registry.reregister(sock.ws.get_mut().socket_mut(), sock.token, wanted) {
            Ok(()) => sock.interest = wanted,
            Err(e) => tracing::warn!(%conn, "cannot change the socket's interest: {e}"),
        }
    }
}

impl SocketIo for Sockets {
    type Socket = Ws;

    /// Registers a new session socket (readable interest).
    fn adopt(&mut self, conn: ConnId, mut ws: Ws) -> Result<(), ConnectError> {
        let token = Token(self.next_token);
        self.next_token += 1;
        self.poll
            .registry()
            .register(ws.get_mut().socket_mut(), token, Interest::READABLE)
            .map_err(|e| ConnectError::Transport(format!("cannot watch the socket: {e}")))?;
        self.sockets.push(Socket {
            conn,
            token,
            ws,
            interest: Interest::READABLE,
            write_blocked: false,
        });
        Ok(())
    }

    fn connect(&mut self, conn: ConnId, url: String, auth_token: Secret) {
        let notifier = self.notifier.clone();
        connect::spawn(
            conn,
            url,
            auth_token,
            Arc::clone(&self.tls),
            studio_shell::connect::CONNECT_DEADLINE,
            move |conn, r| {
                notifier.send(LoopMsg::Connect {
                    conn,
                    result: r.map(Box::new),
                });
            },
        );
    }

    /// Writes and flushes; a `WouldBlock` keeps the frame in tungstenite and raises the
    /// WRITABLE interest.
    fn send(&mut self, conn: ConnId, text: String) -> Result<(), tungstenite::Error> {
        let Some(sock) = self.socket(conn) else {
            return Ok(());
        };
        match sock.ws.write(Message::text(text)) {
            Ok(()) => self.flush(conn),
            // tungstenite keeps the frame; it goes out with the next flush.
            Err(e) if would_block(&e) => {
                sock.write_blocked = true;
                self.update_interest(conn);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn close(&mut self, conn: ConnId, frame: Option<CloseFrame>) -> Result<(), tungstenite::Error> {
        let Some(sock) = self.socket(conn) else {
            return Ok(());
        };
        if let Some(frame) = frame {
            match sock.ws.close(Some(frame)) {
                Ok(()) => {}
                Err(e) if would_block(&e) => sock.write_blocked = true,
                Err(e) => return Err(e),
            }
        }
        self.drive_closing(conn)
    }

    fn drop_socket(&mut self, conn: ConnId) {
        let Some(i) = self.sockets.iter().position(|s| s.conn == conn) else {
            return;
        };
        let mut sock = self.sockets.swap_remove(i);
        let _ = self
            .poll
            .registry()
            .deregister(sock.ws.get_mut().socket_mut());
    }
}
