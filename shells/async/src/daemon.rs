//! The async loop that drives the worker core (see the crate docs for the whole picture).
//! The session logic (feeding, connection bookkeeping, close timeouts, exit) is
//! `studio_shell::Session`, the same as the sync shell's; this file is the async half: one
//! session task racing cancel-safe futures, a reader and a writer task per socket, and
//! connect tasks, all on one thread that waits on its own reactor ([`crate::reactor`]).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use async_channel::{Receiver, Sender};
use async_executor::{LocalExecutor, Task};
use async_tungstenite::{WebSocketReceiver, WebSocketSender};
use futures_lite::{future, StreamExt};
use rustls::ClientConfig;
use studio_core::worker::{ConnId, ConnectError, Worker};
use studio_core::Secret;
use studio_shell::session::{self, LoopMsg, Setup};
use studio_shell::{Control, Exit, RunError, Session, SocketIo, WorkerDaemon};
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;

use crate::connect::{self, Stream, Ws};
use crate::reactor::Reactor;

/// How many received messages (of all sockets together) may wait for the session task
/// before the reader tasks stop reading: backpressure instead of an unbounded read-ahead.
pub const IO_QUEUE: usize = 16;

/// What a socket's reader (a message, or the error that ended it; a clean end of stream is
/// `ConnectionClosed`) or writer (the error that ended it) task reports.
struct IoEvent {
    conn: ConnId,
    event: Result<Message, tungstenite::Error>,
}

/// What ended one race of the session task.
enum Wake {
    /// From other threads (pool completions, shutdown) and connect tasks.
    Msg(LoopMsg<Ws>),
    Io(IoEvent),
    Timer,
}

/// The async shell's daemon: one session task driving one worker core.
pub struct Daemon {
    session: Session,
    tx: Sender<LoopMsg<Ws>>,
    rx: Receiver<LoopMsg<Ws>>,
    control: Control,
    tls: Arc<ClientConfig>,
    reactor: Arc<Reactor>,
}

impl fmt::Debug for Daemon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Daemon")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl WorkerDaemon for Daemon {
    const SHELL: &'static str = "async shell";
    const PACKAGE: &'static str = "studio-worker-async";

    fn new(setup: Setup) -> Result<Daemon, RunError> {
        let reactor = Reactor::new().map_err(RunError::io("create the event loop"))?;
        let (tx, rx) = async_channel::unbounded();
        let post = tx.clone();
        // Called on engine / HTTP / signal threads: never blocks (unbounded), and wakes the
        // session task. It fails only once the loop is gone; then nobody needs the message.
        let (sink, control) = session::mailbox(move |msg| {
            let _ = post.try_send(msg);
        });
        Ok(Daemon {
            session: Session::new(setup, sink),
            tx,
            rx,
            control,
            tls: studio_shell::tls::client_config(),
            reactor,
        })
    }

    fn control(&self) -> Control {
        self.control.clone()
    }

    fn set_record(&mut self, path: Option<PathBuf>) {
        self.session.set_record(path, "async");
    }

    fn set_tls_config(&mut self, config: Arc<ClientConfig>) {
        self.tls = config;
    }

    fn run(self) -> Exit {
        let Daemon {
            mut session,
            tx,
            rx,
            tls,
            reactor,
            ..
        } = self;
        let ex = LocalExecutor::new();
        let (io_tx, io_rx) = async_channel::bounded(IO_QUEUE);
        let mut io = Sockets {
            ex: &ex,
            reactor: Arc::clone(&reactor),
            tx,
            io_tx,
            tls,
            conns: BTreeMap::new(),
        };
        // The thread waits on its own poller between events, until the session's deadline
        // (see the crate docs for why not async-io's reactor and its thread).
        let deadline = Cell::new(None);
        reactor.block_on_until(
            || deadline.get(),
            ex.run(session_task(&mut session, &mut io, &rx, &io_rx, &deadline)),
        );
        // The sockets (and with them their tasks) go before the executor; connect attempts
        // still under way are cancelled with it.
        drop(io);
        session.into_exit()
    }
}

impl Daemon {
    /// The core's status snapshot (tests, the demo).
    pub fn worker(&self) -> &Worker {
        self.session.worker()
    }
}

/// The session task: race, feed, perform, until the core has exited and the sockets are
/// gone (see the crate docs). `deadline` is where it tells [`Reactor::block_on_until`] when
/// to wake it if nothing else does.
async fn session_task(
    session: &mut Session,
    io: &mut Sockets<'_>,
    rx: &Receiver<LoopMsg<Ws>>,
    io_rx: &Receiver<IoEvent>,
    deadline: &Cell<Option<Instant>>,
) {
    session.start(io);
    while !session.finished(io) {
        deadline.set(session.wake_at());
        // Only cancel-safe futures race: a channel `recv` that loses leaves its message in
        // the channel, and the deadline is a check of the clock.
        let wake = future::or(
            async { Wake::Msg(recv(rx).await) },
            future::or(async { Wake::Io(recv(io_rx).await) }, async {
                Passed(deadline).await;
                Wake::Timer
            }),
        )
        .await;
        // The race is over: feed, and perform the socket commands, here.
        match wake {
            Wake::Msg(msg) => session.on_loop_msg(msg, io),
            Wake::Io(IoEvent {
                conn,
                event: Ok(message),
            }) => session.on_message(conn, message, io),
            Wake::Io(IoEvent {
                conn,
                event: Err(e),
            }) => session.on_error(conn, &e, io),
            Wake::Timer => {}
        }
        session.after_wake(io);
    }
}

/// Ready once the instant in the cell has passed (never while it is `None`). It registers
/// no waker: [`Reactor::block_on_until`] wakes at that instant and polls again.
struct Passed<'a>(&'a Cell<Option<Instant>>);

impl Future for Passed<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        match self.0.get() {
            Some(at) if Instant::now() >= at => Poll::Ready(()),
            _ => Poll::Pending,
        }
    }
}

/// The next message of `rx` (which never closes while the loop runs: the loop holds a
/// sender; should it close anyway, this never completes rather than spin).
async fn recv<T>(rx: &Receiver<T>) -> T {
    match rx.recv().await {
        Ok(msg) => msg,
        Err(_) => future::pending().await,
    }
}

/// One socket: its reader and writer tasks (dropping this cancels both and closes the
/// socket) and the queue of frames for the writer.
struct Connection {
    out: Sender<Message>,
    _reader: Task<()>,
    _writer: Task<()>,
}

/// The sockets, their tasks and the executor they run on: the [`SocketIo`] of the async
/// shell.
struct Sockets<'a> {
    /// Every task is `'static` (it owns what it uses), so the executor is too.
    ex: &'a LocalExecutor<'static>,
    /// The session thread's reactor, which connect tasks register their sockets with.
    reactor: Arc<Reactor>,
    /// For connect tasks' results.
    tx: Sender<LoopMsg<Ws>>,
    /// For reader / writer tasks' events.
    io_tx: Sender<IoEvent>,
    tls: Arc<ClientConfig>,
    conns: BTreeMap<ConnId, Connection>,
}

impl Sockets<'_> {
    /// Hands a message to the socket's writer task (never blocks: the queue is unbounded,
    /// like tungstenite's own output buffer in the sync shell).
    fn queue(&self, conn: ConnId, message: Message) {
        if let Some(c) = self.conns.get(&conn) {
            let _ = c.out.try_send(message);
        }
    }
}

impl SocketIo for Sockets<'_> {
    type Socket = Ws;

    /// Takes a new session socket: a reader task and a writer task over its two halves.
    fn adopt(&mut self, conn: ConnId, ws: Ws) -> Result<(), ConnectError> {
        let (sender, receiver) = ws.split();
        let (out, queue) = async_channel::unbounded();
        let reader_done = Rc::new(Cell::new(false));
        let reader = self.ex.spawn(read_loop(
            conn,
            receiver,
            Rc::clone(&reader_done),
            self.io_tx.clone(),
        ));
        let writer = self.ex.spawn(write_loop(
            conn,
            sender,
            queue,
            reader_done,
            self.io_tx.clone(),
        ));
        self.conns.insert(
            conn,
            Connection {
                out,
                _reader: reader,
                _writer: writer,
            },
        );
        Ok(())
    }

    fn connect(&mut self, conn: ConnId, url: String, auth_token: Secret) {
        let tx = self.tx.clone();
        let tls = Arc::clone(&self.tls);
        let reactor = Arc::clone(&self.reactor);
        self.ex
            .spawn(async move {
                let result = connect::connect(
                    &url,
                    auth_token.expose(),
                    &tls,
                    studio_shell::connect::CONNECT_DEADLINE,
                    &reactor,
                )
                .await;
                let result = result.map(Box::new);
                let _ = tx.send(LoopMsg::Connect { conn, result }).await;
            })
            .detach();
    }

    fn send(&mut self, conn: ConnId, text: String) -> Result<(), tungstenite::Error> {
        self.queue(conn, Message::text(text));
        Ok(())
    }

    fn close(&mut self, conn: ConnId, frame: Option<CloseFrame>) -> Result<(), tungstenite::Error> {
        if let Some(frame) = frame {
            self.queue(conn, Message::Close(Some(frame)));
        }
        // The reader task goes on reading (and so flushing tungstenite's close reply, and
        // pongs) until the peer hangs up; the session drops the socket then, or at its
        // close timeout.
        Ok(())
    }

    fn drop_socket(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
    }
}

/// Reads whole messages and forwards each to the session task, until the stream ends
/// (forwarded as its error; a clean end as `ConnectionClosed`). `done` is set before the
/// last event is forwarded.
async fn read_loop(
    conn: ConnId,
    mut receiver: WebSocketReceiver<Box<dyn Stream>>,
    done: Rc<Cell<bool>>,
    events: Sender<IoEvent>,
) {
    loop {
        let event = receiver
            .next()
            .await
            .unwrap_or(Err(tungstenite::Error::ConnectionClosed));
        let end = event.is_err();
        done.set(end);
        if events.send(IoEvent { conn, event }).await.is_err() || end {
            return;
        }
    }
}

/// Writes and flushes each queued message in order; a failed write is forwarded to the
/// session task and ends the writer.
///
/// A close frame sent after the reader has ended (the studio sent bad bytes: an oversized
/// or malformed frame ends async-tungstenite's stream) is the last thing the socket does:
/// nobody can read the studio's hang-up any more, so once the frame is out the writer
/// reports the end itself (the sync shell's next read fails on the same bytes at that
/// point), instead of leaving the socket to its 5 s close timeout.
async fn write_loop(
    conn: ConnId,
    mut sender: WebSocketSender<Box<dyn Stream>>,
    queue: Receiver<Message>,
    reader_done: Rc<Cell<bool>>,
    events: Sender<IoEvent>,
) {
    while let Ok(message) = queue.recv().await {
        let closing = matches!(message, Message::Close(_));
        let event = match sender.send(message).await {
            Err(e) => Err(e),
            Ok(()) if closing && reader_done.get() => Err(tungstenite::Error::ConnectionClosed),
            Ok(()) => continue,
        };
        let _ = events.send(IoEvent { conn, event }).await;
        return;
    }
}
