//! The server: one `mio::Poll` loop for the listener, every connection and the in-process
//! call channel, driving one [`Studio`] machine.
//!
//! Per connection: an HTTP/1.1 request is read (head capped, body by `Content-Length`),
//! routed, answered with `Connection: close`, and the socket lingers a moment (write half
//! shut, input discarded) so the peer reads the answer before the close. A WebSocket
//! upgrade is answered by hand and the socket handed to tungstenite as a server-role
//! `WebSocket` once the `101` has been written.
//!
//! Timers: the studio machine's `Wait { until }`, per-connection deadlines (HTTP idle, close
//! linger) and the stop grace. The poll timeout is the earliest of them rounded up to a
//! whole millisecond and never zero. Connection deadlines are found by a scan: this server
//! holds a handful of connections.
//!
//! One [`Server`] holds it all; its methods are written by concern, one file each:
//!
//! | module | concern |
//! |---|---|
//! | this one | the [`Server`] itself, the event loop and its timers, the studio machine's commands, accepting and dropping connections |
//! | `state` | what the server holds per connection (HTTP, WebSocket) and per upload |
//! | `http_conn` | HTTP connections: reading a request, answering it, handing an upgraded socket over |
//! | `ws_conn` | WebSocket connections: frames in and out, closes, the upload nudge hold |
//! | `routes` | the router from a request to its route, and what every route shares |
//! | `worker_routes` | the worker-facing routes: registration, the upgrade, result uploads |
//! | `admin_routes` | the `/local` admin API |
//! | `views` | the admin operations and the views they answer with (jobs, workers, requests, stats) |
//! | `faults` | fault injection and probe offers |

mod admin_routes;
mod faults;
mod http_conn;
mod routes;
mod state;
mod views;
mod worker_routes;
mod ws_conn;

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::Shutdown;
use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use studio_core::studio::{
    ConnId as StudioConnId, Studio, StudioCommand, StudioEvent, StudioInput,
};
use studio_core::{Mono, Now, WallMs};
use tracing::{debug, info, trace, warn};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, WebSocketConfig};

use crate::api::{ConnectionStats, FaultState};
use crate::http::Response;
use state::{Conn, HttpConn, HttpPhase, Kind, StoredFile, WsState};

/// The server's id of a connection, its mio token; a WebSocket's is also its id in the
/// studio machine (`studio::ConnId`).
pub(super) type ConnId = u64;

pub(crate) const LISTENER: Token = Token(0);

pub(crate) const WAKER: Token = Token(1);

const FIRST_CONN: u64 = 2;

/// Largest request head; larger is a 431.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Default largest result upload; larger is a 413.
pub const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024 * 1024;

/// Default largest body of every request but a result upload (the admin API's JSON, a
/// registration request); larger is a 413.
pub const DEFAULT_MAX_JSON_BODY_BYTES: usize = 1024 * 1024;

/// An HTTP connection that makes no progress for this long is dropped (408 when a request
/// had started).
pub const HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// An upload held by the `holdUploads` fault is dropped after this long at the latest (it
/// normally goes when the worker hangs up).
pub const HELD_UPLOAD_LIMIT: Duration = Duration::from_secs(600);

/// After a response (or a close frame) the socket is kept this long at most so the peer
/// can read what was sent before the TCP close.
pub const LINGER: Duration = Duration::from_secs(2);

/// Most simultaneous connections; more are accepted and closed at once.
const MAX_CONNECTIONS: usize = 1024;

/// An in-process call, run on the server thread.
pub(crate) type Call = Box<dyn FnOnce(&mut Server) + Send>;

/// Settings the loop needs beyond the studio machine's.
pub(crate) struct ServerSettings {
    pub out_dir: PathBuf,
    pub max_body_bytes: usize,
    pub max_json_body_bytes: usize,
    /// The admin API's bearer token (`None`: not required).
    pub admin_token: Option<String>,
    /// The bound address (an accepted `Host` of admin requests).
    pub bind: std::net::SocketAddr,
    pub upload_nudge_delay: Duration,
    /// The wall clock when the server's monotonic origin was taken.
    pub wall_origin: WallMs,
}

/// Where a stop stands.
struct Stopping {
    deadline: Instant,
}

pub(crate) struct Server {
    poll: Poll,
    listener: TcpListener,
    rx: Receiver<Call>,
    _waker: Arc<Waker>,
    studio: Studio,
    origin: Instant,
    studio_wait: Option<Mono>,
    conns: BTreeMap<ConnId, Conn>,
    next_conn: ConnId,
    lost: VecDeque<ConnId>,
    settings: ServerSettings,
    faults: FaultState,
    uploads: BTreeMap<String, StoredFile>,
    stopping: Option<Stopping>,
    next_reference: u64,
    ws_config: WebSocketConfig,
    /// Per worker id: upgrade attempts, connections, the last close it started.
    tallies: BTreeMap<String, ConnectionStats>,
    /// Every request on the upgrade route.
    upgrade_attempts: u64,
    /// Probe offers: job id -> the worker it was sent to (see [`Fault::ProbeOffer`]).
    probes: BTreeMap<String, String>,
    /// Per worker: the intercepted replies to probe offers, in arrival order.
    probe_replies: BTreeMap<String, Vec<String>>,
}

pub(super) fn is_would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

pub(super) fn ms(m: Mono) -> u64 {
    m.as_micros() / 1000
}

/// A file-name-safe id: ASCII letters, digits, `-`, `_`, `.`, not starting with `.`.
pub(super) fn safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl Server {
    pub(crate) fn new(
        poll: Poll,
        listener: TcpListener,
        rx: Receiver<Call>,
        waker: Arc<Waker>,
        studio: Studio,
        settings: ServerSettings,
        origin: Instant,
    ) -> Server {
        let max_frame = studio.config().max_frame_bytes.max(1);
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(max_frame))
            .max_frame_size(Some(max_frame))
            .write_buffer_size(0)
            .max_write_buffer_size(max_frame.saturating_mul(4).max(64 * 1024 * 1024));
        let mut server = Server {
            poll,
            listener,
            rx,
            _waker: waker,
            studio,
            origin,
            studio_wait: None,
            conns: BTreeMap::new(),
            next_conn: FIRST_CONN,
            lost: VecDeque::new(),
            settings,
            faults: FaultState {
                fail_uploads_status: 500,
                upgrade_status: 503,
                ..FaultState::default()
            },
            uploads: BTreeMap::new(),
            stopping: None,
            next_reference: 0,
            ws_config,
            tallies: BTreeMap::new(),
            upgrade_attempts: 0,
            probes: BTreeMap::new(),
            probe_replies: BTreeMap::new(),
        };
        server.drain();
        server
    }

    pub(super) fn now(&self) -> Mono {
        Mono(u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    /// The time of a call into the studio machine: the monotonic clock, and the wall clock
    /// derived from it.
    pub(super) fn studio_now(&self) -> Now {
        let mono = self.now();
        let wall = WallMs(self.settings.wall_origin.0 + mono.as_micros() / 1000);
        Now::new(mono, wall)
    }

    fn instant_of(&self, m: Mono) -> Instant {
        self.origin + Duration::from_micros(m.as_micros())
    }

    pub(crate) fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        info!(target: "studio_local", "listening on {}", self.listener.local_addr()?);
        loop {
            self.fire_timers();
            if self.should_exit() {
                break;
            }
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept_all(),
                    WAKER => self.run_calls(),
                    Token(t) => self.conn_event(t as ConnId),
                }
                self.settle();
            }
        }
        self.close_everything();
        info!(target: "studio_local", "stopped");
        Ok(())
    }

    fn should_exit(&self) -> bool {
        let Some(stop) = &self.stopping else {
            return false;
        };
        let pending = self.conns.values().any(|c| match &c.kind {
            Kind::Http(h) => matches!(h.phase, HttpPhase::Writing(_)),
            Kind::Ws(_) => false,
        });
        !pending || Instant::now() >= stop.deadline
    }

    fn poll_timeout(&self) -> Option<Duration> {
        let mut at: Option<Instant> = self.studio_wait.map(|m| self.instant_of(m));
        let mut consider = |d: Instant| {
            at = Some(match at {
                Some(a) if a <= d => a,
                _ => d,
            })
        };
        for c in self.conns.values() {
            match &c.kind {
                Kind::Http(h) => consider(h.deadline),
                Kind::Ws(w) => {
                    if let WsState::Closing { deadline } = w.state {
                        consider(deadline)
                    }
                    if let Some(t) = w.hold_until {
                        consider(t)
                    }
                }
            }
        }
        if let Some(s) = &self.stopping {
            consider(s.deadline);
        }
        let at = at?;
        let left = at.saturating_duration_since(Instant::now());
        // Whole milliseconds, rounded up, at least one: never a zero-timeout spin.
        let ms = left.as_micros().div_ceil(1000).max(1);
        Some(Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX)))
    }

    fn fire_timers(&mut self) {
        if let Some(until) = self.studio_wait {
            if self.now() >= until {
                self.studio_input(StudioInput::Tick);
            }
        }
        let now = Instant::now();
        let released: Vec<ConnId> = self
            .conns
            .iter()
            .filter(
                |(_, c)| matches!(&c.kind, Kind::Ws(w) if w.hold_until.is_some_and(|t| t <= now)),
            )
            .map(|(id, _)| *id)
            .collect();
        for id in released {
            self.ws_release(id);
        }
        let due: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| match &c.kind {
                Kind::Http(h) => h.deadline <= now,
                Kind::Ws(w) => matches!(w.state, WsState::Closing { deadline } if deadline <= now),
            })
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let timed_out_request = match self.conns.get(&id).map(|c| &c.kind) {
                Some(Kind::Http(h)) => matches!(h.phase, HttpPhase::Reading) && !h.buf.is_empty(),
                _ => false,
            };
            if timed_out_request {
                debug!(target: "studio_local::http", conn = id, "request timed out");
                self.respond(id, Response::error(408, "request timed out"), false);
            } else {
                self.remove(id);
            }
        }
        self.settle();
    }

    fn run_calls(&mut self) {
        while let Ok(call) = self.rx.try_recv() {
            call(self);
            self.settle();
        }
    }

    pub(crate) fn request_stop(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        match &mut self.stopping {
            Some(s) => s.deadline = s.deadline.min(deadline),
            None => self.stopping = Some(Stopping { deadline }),
        }
    }

    fn close_everything(&mut self) {
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            if let Some(Conn {
                kind: Kind::Ws(w), ..
            }) = self.conns.get_mut(&id)
            {
                if w.state == WsState::Open {
                    let _ = w.ws.close(Some(CloseFrame {
                        code: CloseCode::Away,
                        reason: "studio-local shutting down".into(),
                    }));
                    let _ = w.ws.flush();
                }
            }
            if let Some(mut c) = self.conns.remove(&id) {
                let stream = match &mut c.kind {
                    Kind::Http(h) => &mut h.stream,
                    Kind::Ws(w) => w.ws.get_mut(),
                };
                let _ = self.poll.registry().deregister(stream);
            }
        }
    }

    pub(super) fn studio_input(&mut self, input: StudioInput) {
        let now = self.studio_now();
        if let Err(e) = self.studio.handle(now, input) {
            warn!(target: "studio_local", "the studio machine refused an input: {e}");
        }
        self.drain();
    }

    /// Runs `f` on the machine, then drains its commands.
    pub(super) fn with_studio<R>(&mut self, f: impl FnOnce(&mut Studio, Now) -> R) -> R {
        let now = self.studio_now();
        let r = f(&mut self.studio, now);
        self.drain();
        r
    }

    /// Executes the machine's commands up to its `Wait`.
    pub(super) fn drain(&mut self) {
        loop {
            match self.studio.poll() {
                StudioCommand::Send { conn, text } => self.ws_send(conn.0, text),
                StudioCommand::Close { conn, code, reason } => {
                    self.ws_close(conn.0, code, &reason, false)
                }
                StudioCommand::Event(e) => log_event(&e),
                StudioCommand::Wait { until } => {
                    self.studio_wait = until;
                    break;
                }
            }
        }
    }

    /// Feeds `Disconnected` for every known socket that ended, until none is left.
    fn settle(&mut self) {
        while let Some(conn) = self.lost.pop_front() {
            self.studio_input(StudioInput::Disconnected {
                conn: StudioConnId(conn),
            });
        }
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, peer)) => {
                    if self.stopping.is_some() || self.conns.len() >= MAX_CONNECTIONS {
                        warn!(target: "studio_local", %peer, "connection refused (stopping or too many connections)");
                        drop(stream);
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let id = self.next_conn;
                    self.next_conn += 1;
                    if let Err(e) = self.poll.registry().register(
                        &mut stream,
                        Token(id as usize),
                        Interest::READABLE,
                    ) {
                        warn!(target: "studio_local", %peer, "cannot register a connection: {e}");
                        continue;
                    }
                    trace!(target: "studio_local", conn = id, %peer, "accepted");
                    self.conns.insert(
                        id,
                        Conn {
                            peer,
                            kind: Kind::Http(HttpConn {
                                stream,
                                buf: Vec::new(),
                                head: None,
                                out: Vec::new(),
                                out_pos: 0,
                                phase: HttpPhase::Reading,
                                deadline: Instant::now() + HTTP_IDLE_TIMEOUT,
                                writable: false,
                                continue_sent: false,
                                held: false,
                            }),
                        },
                    );
                    // Data may already be waiting (edge-triggered: no event for it).
                    self.http_read(id);
                }
                Err(e) if is_would_block(&e) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!(target: "studio_local", "accept failed: {e}");
                    break;
                }
            }
        }
    }

    fn conn_event(&mut self, id: ConnId) {
        match self.conns.get(&id).map(|c| &c.kind) {
            Some(Kind::Http(_)) => {
                self.http_flush(id);
                self.http_read(id);
            }
            Some(Kind::Ws(_)) => {
                self.ws_flush(id);
                self.ws_read(id);
            }
            None => {}
        }
    }

    /// Drops a connection; a socket the studio knows is reported `Disconnected`.
    pub(super) fn remove(&mut self, id: ConnId) {
        let Some(mut conn) = self.conns.remove(&id) else {
            return;
        };
        let (stream, known) = match &mut conn.kind {
            Kind::Http(h) => {
                if h.held {
                    self.faults.uploads_held = self.faults.uploads_held.saturating_sub(1);
                }
                (&mut h.stream, false)
            }
            Kind::Ws(w) => {
                let known = w.known;
                (w.ws.get_mut(), known)
            }
        };
        let _ = self.poll.registry().deregister(stream);
        let _ = stream.shutdown(Shutdown::Both);
        trace!(target: "studio_local", conn = id, peer = %conn.peer, "closed");
        if known {
            self.lost.push_back(id);
        }
    }

    pub(super) fn set_interest(&mut self, id: ConnId, writable: bool) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let (stream, flag) = match &mut conn.kind {
            Kind::Http(h) => (&mut h.stream, &mut h.writable),
            Kind::Ws(w) => {
                if w.state == WsState::Stalled {
                    return;
                }
                (w.ws.get_mut(), &mut w.writable)
            }
        };
        if *flag == writable {
            return;
        }
        *flag = writable;
        let interest = if writable {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        let _ = self
            .poll
            .registry()
            .reregister(stream, Token(id as usize), interest);
    }
}

fn log_event(e: &StudioEvent) {
    match e {
        StudioEvent::LogsReceived { .. }
        | StudioEvent::ReadyForMore { .. }
        | StudioEvent::Ignored { .. } => debug!(target: "studio_local::studio", "{e:?}"),
        StudioEvent::Swept {
            expired_sessions: 0,
            released_claims: 0,
        } => trace!(target: "studio_local::studio", "{e:?}"),
        StudioEvent::AuthFailed { .. }
        | StudioEvent::ProtocolViolation { .. }
        | StudioEvent::DuplicateSession { .. }
        | StudioEvent::SessionExpired { .. }
        | StudioEvent::JobFailed { .. }
        | StudioEvent::StaleFrame { .. } => warn!(target: "studio_local::studio", "{e:?}"),
        _ => info!(target: "studio_local::studio", "{e:?}"),
    }
}
