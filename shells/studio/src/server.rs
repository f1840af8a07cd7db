//! The event loop: one `mio::Poll` for the listener, every connection and the in-process
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

use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use serde_json::{json, Value};
use studio_core::studio::{
    ConnId, HttpError, JobRecord, JobResult, JobState, Studio, StudioCommand, StudioEvent,
    StudioInput,
};
use studio_core::wire::{
    self, AutoRegisterRequest, ImageTask, JobOfferClaim, LogEntry, ModelSource, StudioFrame, Task,
};
use studio_core::Mono;
use tracing::{debug, error, info, trace, warn};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};

use crate::api::{
    AddWorkerBody, CloseBody, ConnectionStats, ErrorBody, Fault, FaultState, FaultsBody, JobDetail,
    JobSubmission, JobSummary, PendingInfo, ProbeOfferBody, RejectBody, ResultView, Stats,
    WorkerInfo, DEFAULT_PROBE_PROMPT,
};
use crate::http::{self, HeadParse, RequestHead, Response};

pub(crate) const LISTENER: Token = Token(0);
pub(crate) const WAKER: Token = Token(1);
const FIRST_CONN: u64 = 2;

/// Largest request head; larger is a 431.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Default largest request body; larger is a 413.
pub const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024 * 1024;
/// An HTTP connection that makes no progress for this long is dropped (408 when a request
/// had started).
pub const HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// After a response (or a close frame) the socket is kept this long at most so the peer
/// can read what was sent before the TCP close.
pub const LINGER: Duration = Duration::from_secs(2);
/// How long a stop waits for pending HTTP answers (e.g. the `/local/shutdown` reply).
const STOP_GRACE: Duration = Duration::from_secs(1);
/// Most simultaneous connections; more are accepted and closed at once.
const MAX_CONNECTIONS: usize = 1024;
/// WebSocket messages handled per read burst before other connections get a turn.
const WS_BATCH: usize = 64;
/// Most bytes reserved up front for a request body (a large announced body grows the
/// buffer as it actually arrives).
const RESERVE_LIMIT: usize = 8 * 1024 * 1024;
/// Bytes read per `read` call on HTTP connections.
const READ_CHUNK: usize = 64 * 1024;
/// What a binary frame is fed to the studio machine as: text that is not JSON, so the
/// machine answers `protocol_violation` (binary frames are not part of the contract).
const BINARY_FRAME_TEXT: &str = "<binary frame: only text frames are part of the contract>";
/// What a frame over the size limit is fed as (tungstenite refused to buffer it).
const OVERSIZE_FRAME_TEXT: &str = "<frame over the size limit>";
/// Most worker ids whose [`ConnectionStats`] are kept (ids come from request paths; past
/// this, only the server-wide counter grows).
const MAX_TALLIES: usize = 4096;
/// Most intercepted replies kept per worker (oldest dropped first).
const MAX_PROBE_REPLIES: usize = 1024;
/// The worker frame types a probe offer intercepts when they name a probe job.
const PROBE_REPLY_TYPES: [&str; 4] = ["accept", "reject", "completeJson", "fail"];

/// An in-process call, run on the server thread.
pub(crate) type Call = Box<dyn FnOnce(&mut Server) + Send>;

/// Settings the loop needs beyond the studio machine's.
pub(crate) struct ServerSettings {
    pub out_dir: PathBuf,
    pub max_body_bytes: usize,
    pub upload_nudge_delay: Duration,
}

struct ParsedHead {
    head: RequestHead,
    head_len: usize,
    body_len: usize,
}

enum After {
    /// Shut the write half and linger.
    Close,
    /// Hand the socket to tungstenite and tell the studio.
    Upgrade {
        worker_id: String,
        leftover: Vec<u8>,
    },
}

enum HttpPhase {
    Reading,
    Writing(After),
    Draining,
}

struct HttpConn {
    stream: TcpStream,
    buf: Vec<u8>,
    head: Option<ParsedHead>,
    out: Vec<u8>,
    out_pos: usize,
    phase: HttpPhase,
    deadline: Instant,
    writable: bool,
    continue_sent: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WsState {
    Open,
    /// The `stall` fault: no reads, no writes, deregistered from the poll.
    Stalled,
    /// A close frame was queued (or received): waiting for the handshake to finish.
    Closing {
        deadline: Instant,
    },
}

struct WsConn {
    ws: WebSocket<TcpStream>,
    worker_id: String,
    state: WsState,
    writable: bool,
    /// The studio machine knows this connection (Connected fed, not yet forgotten).
    known: bool,
    /// tungstenite refused a frame; the input stream is unusable.
    poisoned: bool,
    /// Frames held back until `hold_until` (the upload nudge delay), in order.
    held: Vec<String>,
    hold_until: Option<Instant>,
}

enum Kind {
    Http(HttpConn),
    Ws(WsConn),
}

struct Conn {
    peer: SocketAddr,
    kind: Kind,
}

/// Where a stop stands.
struct Stopping {
    deadline: Instant,
}

/// What routing produced.
enum Outcome {
    Respond(Response),
    Upgrade {
        response: Vec<u8>,
        worker_id: String,
    },
}

/// A stored upload.
#[derive(Clone, Debug)]
struct StoredFile {
    path: PathBuf,
    ok: bool,
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

fn is_would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

fn ms(m: Mono) -> u64 {
    m.as_micros() / 1000
}

/// A file-name-safe id: ASCII letters, digits, `-`, `_`, `.`, not starting with `.`.
fn safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn valid_ext(s: &str) -> bool {
    !s.is_empty() && s.len() <= 16 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Close codes an endpoint may put on the wire (RFC 6455 §7.4).
fn sendable_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

fn err_response(e: &HttpError) -> Response {
    Response::error(e.status, &e.message)
}

fn parse_json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, HttpError> {
    let body = if body.iter().all(|b| b.is_ascii_whitespace()) {
        &b"{}"[..]
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| HttpError::new(400, format!("invalid JSON body: {e}")))
}

fn to_json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
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

    fn now(&self) -> Mono {
        Mono(u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    fn instant_of(&self, m: Mono) -> Instant {
        self.origin + Duration::from_micros(m.as_micros())
    }

    // --------------------------------------------------------------------------------------
    // The loop
    // --------------------------------------------------------------------------------------

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

    // --------------------------------------------------------------------------------------
    // The studio machine
    // --------------------------------------------------------------------------------------

    fn studio_input(&mut self, input: StudioInput) {
        let now = self.now();
        self.studio.handle(now, input);
        self.drain();
    }

    /// Runs `f` on the machine, then drains its commands.
    fn with_studio<R>(&mut self, f: impl FnOnce(&mut Studio, Mono) -> R) -> R {
        let now = self.now();
        let r = f(&mut self.studio, now);
        self.drain();
        r
    }

    /// Executes the machine's commands up to its `Wait`.
    fn drain(&mut self) {
        while let Some(cmd) = self.studio.poll() {
            match cmd {
                StudioCommand::Send { conn, text } => self.ws_send(conn, text),
                StudioCommand::Close { conn, code, reason } => {
                    self.ws_close(conn, code, &reason, false)
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
            self.studio_input(StudioInput::Disconnected { conn });
        }
    }

    // --------------------------------------------------------------------------------------
    // Connections
    // --------------------------------------------------------------------------------------

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
    fn remove(&mut self, id: ConnId) {
        let Some(mut conn) = self.conns.remove(&id) else {
            return;
        };
        let (stream, known) = match &mut conn.kind {
            Kind::Http(h) => (&mut h.stream, false),
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

    fn set_interest(&mut self, id: ConnId, writable: bool) {
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

    // --------------------------------------------------------------------------------------
    // HTTP connections
    // --------------------------------------------------------------------------------------

    fn http_read(&mut self, id: ConnId) {
        let max_body = self.settings.max_body_bytes;
        let mut chunk = vec![0u8; READ_CHUNK];
        loop {
            let Some(Conn {
                kind: Kind::Http(h),
                ..
            }) = self.conns.get_mut(&id)
            else {
                return;
            };
            match h.phase {
                // An upgrade answer is on its way: the bytes after it belong to the socket.
                HttpPhase::Writing(After::Upgrade { .. }) => return,
                HttpPhase::Writing(After::Close) | HttpPhase::Draining => {
                    match h.stream.read(&mut chunk) {
                        Ok(0) => {
                            if matches!(h.phase, HttpPhase::Draining) {
                                self.remove(id);
                            }
                            // While writing, the answer still goes out; reads stop.
                            return;
                        }
                        Ok(_) => continue,
                        Err(e) if is_would_block(&e) => return,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => {
                            self.remove(id);
                            return;
                        }
                    }
                }
                HttpPhase::Reading => {}
            }
            // Reading a request: never past its end.
            let want = match &h.head {
                None => READ_CHUNK,
                Some(p) => (p.head_len + p.body_len)
                    .saturating_sub(h.buf.len())
                    .min(READ_CHUNK),
            };
            if want == 0 {
                self.http_request_ready(id);
                return;
            }
            match h.stream.read(&mut chunk[..want]) {
                Ok(0) => {
                    let partial = !h.buf.is_empty();
                    if partial {
                        let msg = if h.head.is_none() {
                            "connection closed before the end of the request head"
                        } else {
                            "connection closed before the end of the request body"
                        };
                        self.respond(id, Response::error(400, msg), false);
                    } else {
                        self.remove(id);
                    }
                    return;
                }
                Ok(n) => {
                    h.buf.extend_from_slice(&chunk[..n]);
                    h.deadline = Instant::now() + HTTP_IDLE_TIMEOUT;
                    if h.head.is_none() {
                        match http::parse_head(&h.buf, MAX_HEAD_BYTES) {
                            Ok(HeadParse::Incomplete) => continue,
                            Ok(HeadParse::Done(head, head_len)) => {
                                let body_len = match head.body_length() {
                                    Ok(n) => n,
                                    Err(f) => {
                                        let r = Response::error(f.status, &f.message);
                                        self.respond(id, r, head.method == "HEAD");
                                        return;
                                    }
                                };
                                if body_len > max_body as u64 {
                                    let r = Response::error(
                                        413,
                                        &format!(
                                            "request body of {body_len} bytes is over the {max_body}-byte limit"
                                        ),
                                    );
                                    self.respond(id, r, false);
                                    return;
                                }
                                let body_len = body_len as usize;
                                let expects = head.expects_continue();
                                // Grow as the body arrives; reserve a bounded head start.
                                h.buf.reserve(
                                    (head_len + body_len)
                                        .saturating_sub(h.buf.len())
                                        .min(RESERVE_LIMIT),
                                );
                                h.head = Some(ParsedHead {
                                    head,
                                    head_len,
                                    body_len,
                                });
                                if expects && h.buf.len() < head_len + body_len && !h.continue_sent
                                {
                                    h.continue_sent = true;
                                    h.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                                    self.http_flush(id);
                                }
                            }
                            Err(f) => {
                                self.respond(id, Response::error(f.status, &f.message), false);
                                return;
                            }
                        }
                    }
                }
                Err(e) if is_would_block(&e) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    debug!(target: "studio_local::http", conn = id, "read failed: {e}");
                    self.remove(id);
                    return;
                }
            }
        }
    }

    /// A whole request is buffered: route it.
    fn http_request_ready(&mut self, id: ConnId) {
        let Some(Conn {
            kind: Kind::Http(h),
            peer,
        }) = self.conns.get_mut(&id)
        else {
            return;
        };
        let peer = *peer;
        let Some(parsed) = h.head.take() else {
            return;
        };
        let mut buf = std::mem::take(&mut h.buf);
        let leftover = buf.split_off(parsed.head_len + parsed.body_len);
        let body = buf.split_off(parsed.head_len);
        let head = parsed.head;
        let head_only = head.method == "HEAD";
        let outcome = self.route(id, &head, &body);
        match outcome {
            Outcome::Respond(r) => {
                info!(
                    target: "studio_local::http",
                    "{peer} {} {} -> {} ({} bytes)",
                    head.method,
                    head.path,
                    r.status,
                    r.body.len()
                );
                self.respond(id, r, head_only);
                // Commands a route left in the machine (see `route_complete`).
                self.drain();
            }
            Outcome::Upgrade {
                response,
                worker_id,
            } => {
                info!(
                    target: "studio_local::http",
                    "{peer} {} {} -> 101 (worker {worker_id})",
                    head.method,
                    head.path
                );
                let Some(Conn {
                    kind: Kind::Http(h),
                    ..
                }) = self.conns.get_mut(&id)
                else {
                    return;
                };
                h.out = response;
                h.out_pos = 0;
                h.phase = HttpPhase::Writing(After::Upgrade {
                    worker_id,
                    leftover,
                });
                self.http_flush(id);
            }
        }
    }

    fn respond(&mut self, id: ConnId, response: Response, head_only: bool) {
        let Some(Conn {
            kind: Kind::Http(h),
            ..
        }) = self.conns.get_mut(&id)
        else {
            return;
        };
        h.head = None;
        h.buf = Vec::new();
        // A `100 Continue` not yet written is dropped: the final answer replaces it.
        if h.out_pos >= h.out.len() {
            h.out.clear();
            h.out_pos = 0;
        }
        h.out.extend_from_slice(&response.to_bytes(head_only));
        h.phase = HttpPhase::Writing(After::Close);
        h.deadline = Instant::now() + HTTP_IDLE_TIMEOUT;
        self.http_flush(id);
    }

    fn http_flush(&mut self, id: ConnId) {
        let Some(Conn {
            kind: Kind::Http(h),
            ..
        }) = self.conns.get_mut(&id)
        else {
            return;
        };
        while h.out_pos < h.out.len() {
            match h.stream.write(&h.out[h.out_pos..]) {
                Ok(0) => {
                    self.remove(id);
                    return;
                }
                Ok(n) => {
                    h.out_pos += n;
                    h.deadline = Instant::now() + HTTP_IDLE_TIMEOUT;
                }
                Err(e) if is_would_block(&e) => {
                    self.set_interest(id, true);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.remove(id);
                    return;
                }
            }
        }
        h.out.clear();
        h.out_pos = 0;
        let phase = std::mem::replace(&mut h.phase, HttpPhase::Draining);
        match phase {
            HttpPhase::Writing(After::Close) => {
                let _ = h.stream.shutdown(Shutdown::Write);
                h.deadline = Instant::now() + LINGER;
                self.set_interest(id, false);
                self.http_read(id);
            }
            HttpPhase::Writing(After::Upgrade {
                worker_id,
                leftover,
            }) => self.finish_upgrade(id, worker_id, leftover),
            other => {
                // Reading (a 100 Continue went out) or draining: nothing changes.
                h.phase = other;
                self.set_interest(id, false);
            }
        }
    }

    fn finish_upgrade(&mut self, id: ConnId, worker_id: String, leftover: Vec<u8>) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        let Kind::Http(h) = conn.kind else {
            return;
        };
        let mut stream = h.stream;
        if h.writable {
            let _ = self.poll.registry().reregister(
                &mut stream,
                Token(id as usize),
                Interest::READABLE,
            );
        }
        let ws = if leftover.is_empty() {
            WebSocket::from_raw_socket(stream, Role::Server, Some(self.ws_config))
        } else {
            WebSocket::from_partially_read(stream, leftover, Role::Server, Some(self.ws_config))
        };
        self.conns.insert(
            id,
            Conn {
                peer: conn.peer,
                kind: Kind::Ws(WsConn {
                    ws,
                    worker_id: worker_id.clone(),
                    state: WsState::Open,
                    writable: false,
                    known: true,
                    poisoned: false,
                    held: Vec::new(),
                    hold_until: None,
                }),
            },
        );
        if let Some(t) = self.tally(&worker_id) {
            t.connections += 1;
        }
        self.studio_input(StudioInput::Connected {
            conn: id,
            worker_id,
        });
        // Frames may have arrived while the 101 was being written.
        self.ws_read(id);
    }

    // --------------------------------------------------------------------------------------
    // WebSocket connections
    // --------------------------------------------------------------------------------------

    fn ws_read(&mut self, id: ConnId) {
        loop {
            let mut frames: Vec<String> = Vec::new();
            let mut peer_closed = false;
            let mut gone = false;
            let mut blocked = false;
            let mut worker_close: Option<(u16, String)> = None;
            let known;
            let worker_id;
            {
                let Some(Conn {
                    kind: Kind::Ws(w), ..
                }) = self.conns.get_mut(&id)
                else {
                    return;
                };
                if w.state == WsState::Stalled || w.poisoned {
                    return;
                }
                for _ in 0..WS_BATCH {
                    match w.ws.read() {
                        Ok(Message::Text(t)) => frames.push(t.as_str().to_string()),
                        Ok(Message::Binary(_)) => frames.push(BINARY_FRAME_TEXT.to_string()),
                        Ok(Message::Close(frame)) => {
                            debug!(target: "studio_local::ws", conn = id, "peer closed: {frame:?}");
                            peer_closed = true;
                            if !matches!(w.state, WsState::Closing { .. }) {
                                // The worker started this close (not a reply to ours).
                                worker_close = Some(match &frame {
                                    Some(f) => (u16::from(f.code), f.reason.as_str().to_string()),
                                    None => (1005, String::new()),
                                });
                                w.state = WsState::Closing {
                                    deadline: Instant::now() + LINGER,
                                };
                            }
                            // The next read writes the reply and ends the socket.
                        }
                        Ok(_) => {}
                        Err(tungstenite::Error::Io(e)) if is_would_block(&e) => {
                            blocked = true;
                            break;
                        }
                        Err(tungstenite::Error::Capacity(e)) => {
                            warn!(target: "studio_local::ws", conn = id, "frame refused: {e}");
                            frames.push(OVERSIZE_FRAME_TEXT.to_string());
                            w.poisoned = true;
                            blocked = true;
                            break;
                        }
                        Err(
                            tungstenite::Error::ConnectionClosed
                            | tungstenite::Error::AlreadyClosed,
                        ) => {
                            gone = true;
                            break;
                        }
                        Err(e) => {
                            debug!(target: "studio_local::ws", conn = id, "read failed: {e}");
                            gone = true;
                            break;
                        }
                    }
                }
                known = w.known && (w.state == WsState::Open || peer_closed);
                worker_id = w.worker_id.clone();
            }
            if let Some((code, reason)) = worker_close {
                if let Some(t) = self.tally(&worker_id) {
                    t.last_close_code = Some(code);
                    t.last_close_reason = Some(reason);
                }
            }
            if known {
                for text in frames {
                    trace!(target: "studio_local::ws", conn = id, bytes = text.len(), "frame");
                    if self.intercept_probe_reply(id, &worker_id, &text) {
                        continue;
                    }
                    self.studio_input(StudioInput::Frame { conn: id, text });
                    if !self.conn_known(id) {
                        break;
                    }
                }
            }
            if peer_closed {
                if let Some(Conn {
                    kind: Kind::Ws(w), ..
                }) = self.conns.get_mut(&id)
                {
                    if w.known {
                        w.known = false;
                        self.lost.push_back(id);
                    }
                }
            }
            if gone {
                self.remove(id);
                return;
            }
            if let Some(Conn {
                kind: Kind::Ws(w), ..
            }) = self.conns.get_mut(&id)
            {
                if w.poisoned && !matches!(w.state, WsState::Closing { .. }) {
                    w.state = WsState::Closing {
                        deadline: Instant::now() + LINGER,
                    };
                }
            }
            if blocked {
                self.ws_flush(id);
                return;
            }
        }
    }

    /// The studio machine still knows the socket (it has not closed it).
    fn conn_known(&self, id: ConnId) -> bool {
        matches!(
            self.conns.get(&id).map(|c| &c.kind),
            Some(Kind::Ws(WsConn { known: true, .. }))
        )
    }

    fn ws_send(&mut self, id: ConnId, text: String) {
        let Some(Conn {
            kind: Kind::Ws(w), ..
        }) = self.conns.get_mut(&id)
        else {
            trace!(target: "studio_local::ws", conn = id, "send to a closed connection dropped");
            return;
        };
        if w.state != WsState::Open {
            trace!(target: "studio_local::ws", conn = id, "send to a stalled/closing connection dropped");
            return;
        }
        if w.hold_until.is_some() {
            w.held.push(text);
            return;
        }
        self.ws_write(id, text);
    }

    /// Writes one text frame now.
    fn ws_write(&mut self, id: ConnId, text: String) {
        let Some(Conn {
            kind: Kind::Ws(w), ..
        }) = self.conns.get_mut(&id)
        else {
            return;
        };
        match w.ws.write(Message::text(text)) {
            Ok(()) => {}
            Err(tungstenite::Error::Io(e)) if is_would_block(&e) => {}
            Err(e) => {
                debug!(target: "studio_local::ws", conn = id, "write failed: {e}");
                self.remove(id);
                return;
            }
        }
        self.ws_flush(id);
    }

    fn ws_flush(&mut self, id: ConnId) {
        let Some(Conn {
            kind: Kind::Ws(w), ..
        }) = self.conns.get_mut(&id)
        else {
            return;
        };
        if w.state == WsState::Stalled {
            return;
        }
        match w.ws.flush() {
            Ok(()) => self.set_interest(id, false),
            Err(tungstenite::Error::Io(e)) if is_would_block(&e) => self.set_interest(id, true),
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                self.remove(id)
            }
            Err(e) => {
                debug!(target: "studio_local::ws", conn = id, "flush failed: {e}");
                self.remove(id);
            }
        }
    }

    /// Sends a close frame and lingers for the handshake. `tell_studio`: the studio machine
    /// did not ask for this close, so it is told the socket is gone.
    fn ws_close(&mut self, id: ConnId, code: u16, reason: &str, tell_studio: bool) {
        // Held frames go out before the close, in order.
        self.ws_release(id);
        let Some(Conn {
            kind: Kind::Ws(w), ..
        }) = self.conns.get_mut(&id)
        else {
            return;
        };
        if tell_studio && w.known {
            self.lost.push_back(id);
        }
        w.known = false;
        match w.state {
            WsState::Stalled => {
                // A half-open peer: nothing reaches it; drop the socket.
                self.remove(id);
                return;
            }
            WsState::Closing { .. } => return,
            WsState::Open => {}
        }
        debug!(target: "studio_local::ws", conn = id, code, reason, "closing");
        w.state = WsState::Closing {
            deadline: Instant::now() + LINGER,
        };
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: truncate_utf8(reason, 123).to_string().into(),
        };
        match w.ws.close(Some(frame)) {
            Ok(()) => {}
            Err(tungstenite::Error::Io(e)) if is_would_block(&e) => {}
            Err(_) => {
                self.remove(id);
                return;
            }
        }
        self.ws_flush(id);
    }

    /// Ends a hold: the held frames are written in order.
    fn ws_release(&mut self, id: ConnId) {
        let Some(Conn {
            kind: Kind::Ws(w), ..
        }) = self.conns.get_mut(&id)
        else {
            return;
        };
        if w.hold_until.take().is_none() {
            return;
        }
        let held = std::mem::take(&mut w.held);
        if w.state != WsState::Open {
            return;
        }
        for text in held {
            self.ws_write(id, text);
        }
    }

    /// Holds back the frames to a worker's sockets for the upload nudge delay.
    fn hold_worker(&mut self, worker_id: &str) {
        let delay = self.settings.upload_nudge_delay;
        if delay.is_zero() {
            return;
        }
        let until = Instant::now() + delay;
        for c in self.conns.values_mut() {
            if let Kind::Ws(w) = &mut c.kind {
                if w.worker_id == worker_id && w.state == WsState::Open {
                    w.hold_until = Some(w.hold_until.map_or(until, |t| t.max(until)));
                }
            }
        }
    }

    /// The open WebSocket connections of a worker.
    fn worker_conns(&self, worker_id: &str, include_stalled: bool) -> Vec<ConnId> {
        self.conns
            .iter()
            .filter(|(_, c)| match &c.kind {
                Kind::Ws(w) => {
                    w.worker_id == worker_id
                        && (w.state == WsState::Open
                            || (include_stalled && w.state == WsState::Stalled))
                }
                Kind::Http(_) => false,
            })
            .map(|(id, _)| *id)
            .collect()
    }

    // --------------------------------------------------------------------------------------
    // Routing
    // --------------------------------------------------------------------------------------

    fn reference(&mut self) -> String {
        self.next_reference += 1;
        format!("studio-local-{}", self.next_reference)
    }

    fn route(&mut self, id: ConnId, head: &RequestHead, body: &[u8]) -> Outcome {
        let segs = match http::path_segments(&head.path) {
            Ok(s) => s,
            Err(f) => return Outcome::Respond(Response::error(f.status, &f.message)),
        };
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        let method = if head.method == "HEAD" {
            "GET"
        } else {
            head.method.as_str()
        };
        let respond = Outcome::Respond;
        match segs.as_slice() {
            ["graphics", "api", "workers", rest @ ..] => match (method, rest) {
                ("POST", ["register-request"]) => respond(self.route_register(body)),
                ("GET", ["register-requests", rid]) => {
                    respond(self.route_register_status(head, rid))
                }
                ("GET", [wid, "connect"]) => self.route_upgrade(head, wid),
                ("POST", [wid, "jobs", jid, "complete"]) => {
                    respond(self.route_complete(id, head, body, wid, jid))
                }
                (_, ["register-request"]) => respond(method_not_allowed("POST")),
                (_, ["register-requests", _]) | (_, [_, "connect"]) => {
                    respond(method_not_allowed("GET"))
                }
                (_, [_, "jobs", _, "complete"]) => respond(method_not_allowed("POST")),
                _ => respond(not_found(&head.path)),
            },
            ["local", rest @ ..] => respond(self.route_local(method, rest, body, &head.path)),
            [] if method == "GET" => respond(Response::json(200, &index())),
            _ => respond(not_found(&head.path)),
        }
    }

    fn route_register(&mut self, body: &[u8]) -> Response {
        let req: AutoRegisterRequest = match parse_json_body(body) {
            Ok(r) => r,
            Err(e) => return err_response(&e),
        };
        match self.with_studio(|s, now| s.register_request(now, req)) {
            Ok(resp) => Response::json(200, &to_json(&resp)),
            Err(e) => err_response(&e),
        }
    }

    fn route_register_status(&mut self, head: &RequestHead, rid: &str) -> Response {
        let Some(bearer) = head.bearer() else {
            return Response::error(401, "missing `Authorization: Bearer <registration secret>`");
        };
        let bearer = bearer.to_string();
        match self.with_studio(|s, now| s.register_status(now, rid, &bearer)) {
            Ok(status) => Response::json(200, &to_json(&status)),
            Err(e) => err_response(&e),
        }
    }

    /// The upgrade route, counted per worker id ([`ConnectionStats`]).
    fn route_upgrade(&mut self, head: &RequestHead, worker_id: &str) -> Outcome {
        self.upgrade_attempts += 1;
        let outcome = self.answer_upgrade(head, worker_id);
        if let Some(t) = self.tally(worker_id) {
            t.upgrade_attempts += 1;
            if matches!(outcome, Outcome::Respond(_)) {
                t.upgrades_refused += 1;
            }
        }
        outcome
    }

    /// The [`ConnectionStats`] of `worker_id`, created while fewer than [`MAX_TALLIES`]
    /// ids are kept.
    fn tally(&mut self, worker_id: &str) -> Option<&mut ConnectionStats> {
        if !self.tallies.contains_key(worker_id) {
            if self.tallies.len() >= MAX_TALLIES {
                return None;
            }
            self.tallies
                .insert(worker_id.to_string(), ConnectionStats::default());
        }
        self.tallies.get_mut(worker_id)
    }

    fn answer_upgrade(&mut self, head: &RequestHead, worker_id: &str) -> Outcome {
        if !head.header_has_token("upgrade", "websocket") {
            return Outcome::Respond(
                Response::error(
                    426,
                    "this route only accepts a WebSocket upgrade (Upgrade: websocket)",
                )
                .with_header("Upgrade", "websocket"),
            );
        }
        let reference = self.reference();
        if self.faults.upgrade_failures > 0 {
            self.faults.upgrade_failures -= 1;
            let status = self.faults.upgrade_status;
            warn!(target: "studio_local::faults", worker_id, status, "injected upgrade failure");
            return Outcome::Respond(Response::json(
                status,
                &json!({"error": "injected upgrade failure (studio-local fault)", "reference": reference}),
            ));
        }
        if !head.header_has_token("connection", "upgrade") {
            return Outcome::Respond(Response::error(
                400,
                "WebSocket upgrade without `Connection: Upgrade`",
            ));
        }
        if head.header("sec-websocket-version").map(str::trim) != Some("13") {
            return Outcome::Respond(
                Response::error(426, "only WebSocket version 13 is supported")
                    .with_header("Sec-WebSocket-Version", "13"),
            );
        }
        let Some(key) = head.header("sec-websocket-key").map(str::trim) else {
            return Outcome::Respond(Response::error(
                400,
                "WebSocket upgrade without Sec-WebSocket-Key",
            ));
        };
        if key.len() != 24 {
            return Outcome::Respond(Response::error(
                400,
                "Sec-WebSocket-Key is not 16 bytes of base64",
            ));
        }
        let Some(bearer) = head.bearer() else {
            warn!(target: "studio_local::http", worker_id, reference, "upgrade without a bearer token");
            return Outcome::Respond(Response::json(
                401,
                &json!({"error": "missing `Authorization: Bearer <auth token>`", "reference": reference}),
            ));
        };
        if let Err(e) = self.studio.authorize_upgrade(worker_id, bearer) {
            warn!(target: "studio_local::http", worker_id, reference, "upgrade refused: {}", e.message);
            return Outcome::Respond(Response::json(
                e.status,
                &json!({"error": e.message, "reference": reference}),
            ));
        }
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let wants_protocol = head
            .headers_named("sec-websocket-protocol")
            .flat_map(|v| v.split(','))
            .any(|p| p.trim() == wire::SUBPROTOCOL);
        let mut response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n"
        );
        if wants_protocol {
            response.push_str(&format!(
                "Sec-WebSocket-Protocol: {}\r\n",
                wire::SUBPROTOCOL
            ));
        }
        response.push_str("\r\n");
        Outcome::Upgrade {
            response: response.into_bytes(),
            worker_id: worker_id.to_string(),
        }
    }

    fn route_complete(
        &mut self,
        id: ConnId,
        head: &RequestHead,
        body: &[u8],
        worker_id: &str,
        job_id: &str,
    ) -> Response {
        if self.faults.fail_uploads > 0 {
            self.faults.fail_uploads -= 1;
            let status = self.faults.fail_uploads_status;
            warn!(target: "studio_local::faults", worker_id, job_id, status, "injected upload failure");
            return Response::error(status, "injected upload failure (studio-local fault)");
        }
        let Some(bearer) = head.bearer().map(str::to_string) else {
            return Response::error(401, "missing `Authorization: Bearer <auth token>`");
        };
        if let Err(e) = self.studio.authorize_upgrade(worker_id, &bearer) {
            return err_response(&e);
        }
        let Some(ct) = head.header("content-type") else {
            return Response::error(415, "expected Content-Type multipart/form-data");
        };
        let boundary = match http::multipart_boundary(ct) {
            Ok(b) => b,
            Err(m) => return Response::error(400, &m),
        };
        let parts = match http::parse_multipart(body, &boundary) {
            Ok(p) => p,
            Err(m) => return Response::error(400, &format!("malformed multipart body: {m}")),
        };
        let mut prompt = None;
        let mut ext = None;
        let mut image = None;
        for p in &parts {
            let slot = match p.name.as_str() {
                "prompt" => &mut prompt,
                "ext" => &mut ext,
                "image" => &mut image,
                _ => continue,
            };
            if slot.is_some() {
                return Response::error(400, &format!("duplicate multipart part `{}`", p.name));
            }
            *slot = Some(p);
        }
        let (Some(prompt), Some(ext), Some(image)) = (prompt, ext, image) else {
            return Response::error(
                400,
                "the upload needs the multipart parts `prompt`, `ext` and `image`",
            );
        };
        let Ok(prompt) = std::str::from_utf8(prompt.data) else {
            return Response::error(400, "the `prompt` part is not UTF-8");
        };
        let ext = match std::str::from_utf8(ext.data) {
            Ok(e) if valid_ext(e.trim()) => e.trim().to_ascii_lowercase(),
            _ => {
                return Response::error(400, "the `ext` part must be 1-16 ASCII letters or digits")
            }
        };
        if image.filename.is_none() {
            debug!(target: "studio_local::http", job_id, "image part without a filename");
        }
        if self.probes.get(job_id).map(String::as_str) == Some(worker_id) {
            let record = json!({
                "type": "upload",
                "jobId": job_id,
                "ext": ext,
                "bytes": image.data.len(),
                "prompt": prompt,
            });
            info!(target: "studio_local::faults", worker_id, job_id, "probe upload intercepted");
            self.record_probe_reply(worker_id, record.to_string());
            return Response::json(200, &json!({"ok": true}));
        }
        if !safe_name(job_id) {
            return Response::error(409, "unknown job");
        }
        let dir = self.settings.out_dir.clone();
        let final_path = dir.join(format!("{job_id}.{ext}"));
        let temp_path = dir.join(format!(".{job_id}.{ext}.part-{id}"));
        if let Err(e) = write_file(&temp_path, image.data) {
            error!(target: "studio_local", "cannot store the upload of {job_id}: {e}");
            let _ = fs::remove_file(&temp_path);
            return Response::error(500, &format!("could not store the upload: {e}"));
        }
        let len = image.data.len() as u64;
        // Not drained here: the machine's commands (typically the next offer to this
        // worker) go out after this answer is written, and the frames to this worker are
        // held for the upload nudge delay, like the reference studio, which nudges its
        // session object asynchronously after answering. A worker that gets the offer
        // before it has processed its upload's 200 still holds its one-job slot, rejects
        // it `busy`, and the machine then waits for its next heartbeat (5 s).
        let now = self.now();
        let result = self
            .studio
            .complete_upload(now, worker_id, &bearer, job_id, prompt, &ext, len);
        match result {
            Ok(()) => {
                self.hold_worker(worker_id);
                let ok = match fs::rename(&temp_path, &final_path) {
                    Ok(()) => true,
                    Err(e) => {
                        error!(target: "studio_local", "cannot move the upload of {job_id} into place: {e}");
                        let _ = fs::remove_file(&temp_path);
                        false
                    }
                };
                info!(target: "studio_local", job_id, worker_id, bytes = len, path = %final_path.display(), "result stored");
                self.uploads.insert(
                    job_id.to_string(),
                    StoredFile {
                        path: final_path,
                        ok,
                    },
                );
                Response::json(200, &json!({"ok": true}))
            }
            Err(e) => {
                let _ = fs::remove_file(&temp_path);
                err_response(&e)
            }
        }
    }

    fn route_local(&mut self, method: &str, rest: &[&str], body: &[u8], path: &str) -> Response {
        let result: Result<Response, HttpError> = match (method, rest) {
            ("GET", []) => Ok(Response::json(200, &index())),
            ("GET", ["stats"]) => Ok(Response::json(200, &to_json(&self.stats()))),
            ("POST", ["jobs"]) => parse_json_body::<JobSubmission>(body)
                .and_then(|sub| self.submit(&sub))
                .map(|job_id| Response::json(200, &json!({ "jobId": job_id }))),
            ("GET", ["jobs"]) => Ok(Response::json(200, &to_json(&self.jobs()))),
            ("GET", ["jobs", jid]) => self
                .job(jid)
                .map(|d| Response::json(200, &to_json(&d)))
                .ok_or_else(|| HttpError::new(404, "unknown job")),
            ("GET", ["jobs", jid, "result"]) => self
                .job_result(jid)
                .map(|(ct, bytes)| Response::bytes(200, &ct, bytes)),
            ("GET", ["workers"]) => Ok(Response::json(200, &to_json(&self.workers()))),
            ("POST", ["workers"]) => parse_json_body::<AddWorkerBody>(body)
                .and_then(|b| self.add_worker(&b.worker_id, &b.auth_token))
                .map(|()| Response::json(200, &json!({"ok": true}))),
            ("DELETE", ["workers", wid]) => self
                .remove_worker(wid)
                .map(|()| Response::json(200, &json!({"ok": true}))),
            ("GET", ["workers", wid, "logs"]) => self
                .worker_logs(wid)
                .map(|logs| Response::json(200, &to_json(&logs))),
            ("GET", ["workers", wid, "connections"]) => {
                Ok(Response::json(200, &to_json(&self.connection_stats(wid))))
            }
            ("GET", ["workers", wid, "probe-replies"]) => {
                Ok(Response::json(200, &to_json(&self.probe_replies(wid))))
            }
            ("POST", ["workers", wid, action]) => self
                .worker_fault(wid, action, body)
                .map(|n| Response::json(200, &json!({"ok": true, "connections": n}))),
            ("GET", ["requests"]) => Ok(Response::json(200, &to_json(&self.pending()))),
            ("POST", ["requests", rid, "approve"]) => self
                .approve(rid)
                .map(|()| Response::json(200, &json!({"ok": true}))),
            ("POST", ["requests", rid, "reject"]) => parse_json_body::<RejectBody>(body)
                .and_then(|b| {
                    self.reject(
                        rid,
                        b.reason.as_deref().unwrap_or("rejected by the operator"),
                    )
                })
                .map(|()| Response::json(200, &json!({"ok": true}))),
            ("GET", ["faults"]) => Ok(Response::json(200, &to_json(&self.faults))),
            ("POST", ["faults"]) => parse_json_body::<FaultsBody>(body)
                .and_then(|b| self.set_faults(&b))
                .map(|s| Response::json(200, &to_json(&s))),
            ("POST", ["shutdown"]) => {
                info!(target: "studio_local", "shutdown requested over HTTP");
                self.request_stop(STOP_GRACE);
                Ok(Response::json(200, &json!({"ok": true})))
            }
            (_, [] | ["stats"] | ["jobs", _] | ["jobs", _, "result"] | ["requests"])
            | (_, ["workers", _, "logs" | "connections" | "probe-replies"]) => {
                Ok(method_not_allowed("GET"))
            }
            (_, ["jobs"] | ["workers"] | ["faults"]) => Ok(method_not_allowed("GET, POST")),
            (_, ["requests", _, "approve" | "reject"] | ["shutdown"]) => {
                Ok(method_not_allowed("POST"))
            }
            (_, ["workers", _]) => Ok(method_not_allowed("DELETE")),
            _ => Ok(not_found(path)),
        };
        result.unwrap_or_else(|e| err_response(&e))
    }

    fn worker_fault(
        &mut self,
        worker_id: &str,
        action: &str,
        body: &[u8],
    ) -> Result<usize, HttpError> {
        let fault = match action {
            "drop" => Fault::Drop {
                worker_id: worker_id.into(),
            },
            "stall" => Fault::Stall {
                worker_id: worker_id.into(),
            },
            "close" => {
                let b: CloseBody = parse_json_body(body)?;
                Fault::Close {
                    worker_id: worker_id.into(),
                    code: b.code.unwrap_or(1000),
                    reason: b.reason.unwrap_or_default(),
                }
            }
            "error" => {
                let b: ErrorBody = parse_json_body(body)?;
                Fault::Error {
                    worker_id: worker_id.into(),
                    code: b.code,
                    message: b
                        .message
                        .unwrap_or_else(|| "injected by studio-local".into()),
                }
            }
            "probe-offer" => {
                let b: ProbeOfferBody = parse_json_body(body)?;
                Fault::ProbeOffer {
                    worker_id: worker_id.into(),
                    job_id: b.job_id,
                    task: Box::new(b.task.unwrap_or_else(|| {
                        Task::Image(ImageTask {
                            prompt: DEFAULT_PROBE_PROMPT.into(),
                            ..ImageTask::default()
                        })
                    })),
                }
            }
            other => {
                return Err(HttpError::new(
                    404,
                    format!(
                        "unknown worker action `{other}` (drop, stall, close, error, probe-offer)"
                    ),
                ))
            }
        };
        self.inject(fault)
    }

    // --------------------------------------------------------------------------------------
    // The admin operations (HTTP routes and Handle helpers share these)
    // --------------------------------------------------------------------------------------

    pub(crate) fn submit(&mut self, sub: &JobSubmission) -> Result<String, HttpError> {
        let spec = sub.to_spec()?;
        self.with_studio(|s, now| s.submit(now, spec))
    }

    fn summary(&self, j: &JobRecord) -> JobSummary {
        let worker = match &j.state {
            JobState::Done { worker_id, .. } => Some(worker_id.clone()),
            other => other.holder().map(str::to_string),
        };
        let result_summary = match &j.state {
            JobState::Done {
                result: JobResult::Json { .. },
                ..
            } => Some("json".to_string()),
            JobState::Done {
                result: JobResult::Binary { ext, bytes_len, .. },
                ..
            } => Some(format!("{ext}, {bytes_len} bytes")),
            _ => None,
        };
        let last_error = match &j.state {
            JobState::Failed { error } => Some(error.clone()),
            _ => j.last_error.clone(),
        };
        JobSummary {
            id: j.id.clone(),
            kind: j.spec.task.kind(),
            state: j.state.name().to_string(),
            worker,
            attempts: j.attempts,
            model: j.spec.model.clone(),
            prompt: wire::prompt_preview(j.spec.task.prompt()),
            submitted_ms: ms(j.submitted_at),
            updated_ms: ms(j.updated_at),
            last_error,
            result_summary,
        }
    }

    pub(crate) fn jobs(&self) -> Vec<JobSummary> {
        self.studio.jobs().map(|j| self.summary(j)).collect()
    }

    pub(crate) fn job(&self, id: &str) -> Option<JobDetail> {
        let j = self.studio.job(id)?;
        let result = match &j.state {
            JobState::Done { result, .. } => Some(match result {
                JobResult::Json { result, prompt } => ResultView::Json {
                    value: result.clone(),
                    prompt: prompt.clone(),
                },
                JobResult::Binary {
                    ext,
                    prompt,
                    bytes_len,
                } => ResultView::File {
                    ext: ext.clone(),
                    bytes: *bytes_len,
                    prompt: prompt.clone(),
                    content_type: http::content_type_for_ext(ext).to_string(),
                    path: self
                        .uploads
                        .get(id)
                        .filter(|f| f.ok)
                        .map(|f| f.path.clone()),
                },
            }),
            _ => None,
        };
        Some(JobDetail {
            summary: self.summary(j),
            task: j.spec.task.clone(),
            model_source: j.spec.model_source.clone(),
            vram_gb_estimate: j.spec.vram_gb_estimate,
            game_id: j.spec.game_id.clone(),
            asset_name: j.spec.asset_name.clone(),
            offered_to: j.offered_to().map(str::to_string).collect(),
            completions: j.completions,
            result,
        })
    }

    pub(crate) fn job_result(&self, id: &str) -> Result<(String, Vec<u8>), HttpError> {
        let j = self
            .studio
            .job(id)
            .ok_or_else(|| HttpError::new(404, "unknown job"))?;
        match &j.state {
            JobState::Done {
                result: JobResult::Json { result, .. },
                ..
            } => Ok((
                "application/json".into(),
                serde_json::to_vec(result).unwrap_or_default(),
            )),
            JobState::Done {
                result: JobResult::Binary { ext, .. },
                ..
            } => {
                let file = self
                    .uploads
                    .get(id)
                    .filter(|f| f.ok)
                    .ok_or_else(|| HttpError::new(404, "the result file was not stored"))?;
                let bytes = fs::read(&file.path).map_err(|e| {
                    HttpError::new(404, format!("cannot read the result file: {e}"))
                })?;
                Ok((http::content_type_for_ext(ext).into(), bytes))
            }
            other => Err(HttpError::new(
                409,
                format!("job {id} is {}, no result", other.name()),
            )),
        }
    }

    pub(crate) fn workers(&self) -> Vec<WorkerInfo> {
        let now = self.now();
        self.studio
            .workers()
            .into_iter()
            .map(|w| {
                let (mut sockets, mut stalled) = (0, 0);
                for c in self.conns.values() {
                    if let Kind::Ws(ws) = &c.kind {
                        if ws.worker_id == w.id {
                            match ws.state {
                                WsState::Open => sockets += 1,
                                WsState::Stalled => {
                                    sockets += 1;
                                    stalled += 1
                                }
                                WsState::Closing { .. } => {}
                            }
                        }
                    }
                }
                WorkerInfo {
                    logs: self.studio.worker_logs(&w.id).len(),
                    sockets,
                    stalled_sockets: stalled,
                    connected: w.connected,
                    connected_since_ms: w.connected_since.map(ms),
                    capabilities: w.capabilities,
                    current_job: w.current_job,
                    last_heartbeat_ms: w.last_heartbeat.map(ms),
                    last_heartbeat_ago_ms: w
                        .last_heartbeat
                        .map(|t| now.saturating_since(t).as_millis() as u64),
                    has_token: w.has_token,
                    idle: w.idle,
                    connection_stats: self.tallies.get(&w.id).cloned().unwrap_or_default(),
                    id: w.id,
                }
            })
            .collect()
    }

    pub(crate) fn worker_logs(&self, id: &str) -> Result<Vec<LogEntry>, HttpError> {
        if self.studio.worker(id).is_none() {
            return Err(HttpError::new(404, "unknown worker"));
        }
        Ok(self.studio.worker_logs(id))
    }

    pub(crate) fn pending(&self) -> Vec<PendingInfo> {
        self.studio
            .pending_requests()
            .into_iter()
            .map(|p| PendingInfo {
                request_id: p.request_id,
                install_id: p.install_id,
                user_agent: p.user_agent,
                capabilities: p.capabilities,
                requested_ms: ms(p.requested_at),
            })
            .collect()
    }

    pub(crate) fn approve(&mut self, id: &str) -> Result<(), HttpError> {
        self.with_studio(|s, _| s.approve(id))
    }

    pub(crate) fn reject(&mut self, id: &str, reason: &str) -> Result<(), HttpError> {
        self.with_studio(|s, _| s.reject(id, reason))
    }

    pub(crate) fn add_worker(&mut self, id: &str, token: &str) -> Result<(), HttpError> {
        if !safe_name(id) {
            return Err(HttpError::new(
                400,
                "workerId must be 1-128 ASCII letters, digits, `-`, `_` or `.`",
            ));
        }
        if token.is_empty() {
            return Err(HttpError::new(400, "authToken must not be empty"));
        }
        self.with_studio(|s, _| s.add_worker(id, token));
        Ok(())
    }

    pub(crate) fn remove_worker(&mut self, id: &str) -> Result<(), HttpError> {
        if self.studio.worker(id).is_none() {
            return Err(HttpError::new(404, "unknown worker"));
        }
        self.with_studio(|s, _| s.remove_worker(id));
        Ok(())
    }

    pub(crate) fn stats(&self) -> Stats {
        let s = self.studio.stats();
        let mut stats = Stats {
            queued: s.queued,
            offered: s.offered,
            running: s.running,
            done: s.done,
            failed: s.failed,
            connected_workers: s.connected_workers,
            uptime_ms: self.origin.elapsed().as_millis() as u64,
            upgrade_attempts: self.upgrade_attempts,
            ..Stats::default()
        };
        for c in self.conns.values() {
            match c.kind {
                Kind::Http(_) => stats.http_connections += 1,
                Kind::Ws(_) => stats.websockets += 1,
            }
        }
        stats
    }

    pub(crate) fn faults(&self) -> FaultState {
        self.faults.clone()
    }

    pub(crate) fn set_faults(&mut self, b: &FaultsBody) -> Result<FaultState, HttpError> {
        for status in [b.fail_uploads_status, b.upgrade_status]
            .into_iter()
            .flatten()
        {
            if !(400..=599).contains(&status) {
                return Err(HttpError::new(400, "fault statuses must be 400-599"));
            }
        }
        if let Some(s) = b.fail_uploads_status {
            self.faults.fail_uploads_status = s;
        }
        if let Some(n) = b.fail_uploads {
            self.faults.fail_uploads = n;
        }
        if let Some(s) = b.upgrade_status {
            self.faults.upgrade_status = s;
        }
        if let Some(n) = b.upgrade_failures {
            self.faults.upgrade_failures = n;
        }
        info!(target: "studio_local::faults", "faults armed: {:?}", self.faults);
        Ok(self.faults.clone())
    }

    /// Applies a fault; the number of connections it touched (0 for counting faults).
    pub(crate) fn inject(&mut self, fault: Fault) -> Result<usize, HttpError> {
        let no_socket =
            |w: &str| HttpError::new(404, format!("worker {w} has no open WebSocket here"));
        match fault {
            Fault::FailUploads { count, status } => {
                self.set_faults(&FaultsBody {
                    fail_uploads: Some(count),
                    fail_uploads_status: Some(status),
                    ..FaultsBody::default()
                })?;
                Ok(0)
            }
            Fault::FailUpgrades { count, status } => {
                self.set_faults(&FaultsBody {
                    upgrade_failures: Some(count),
                    upgrade_status: Some(status),
                    ..FaultsBody::default()
                })?;
                Ok(0)
            }
            Fault::Drop { worker_id } => {
                let conns = self.worker_conns(&worker_id, true);
                if conns.is_empty() {
                    return Err(no_socket(&worker_id));
                }
                warn!(target: "studio_local::faults", worker_id, "dropping TCP connection(s)");
                for id in &conns {
                    self.remove(*id);
                }
                Ok(conns.len())
            }
            Fault::Stall { worker_id } => {
                let conns = self.worker_conns(&worker_id, false);
                if conns.is_empty() {
                    return Err(no_socket(&worker_id));
                }
                warn!(target: "studio_local::faults", worker_id, "stalling connection(s)");
                for id in &conns {
                    if let Some(Conn {
                        kind: Kind::Ws(w), ..
                    }) = self.conns.get_mut(id)
                    {
                        w.state = WsState::Stalled;
                        w.writable = false;
                        let _ = self.poll.registry().deregister(w.ws.get_mut());
                    }
                }
                Ok(conns.len())
            }
            Fault::Close {
                worker_id,
                code,
                reason,
            } => {
                if !sendable_close_code(code) {
                    return Err(HttpError::new(
                        400,
                        format!("close code {code} cannot be sent (use 1000-1003, 1007-1014 or 3000-4999)"),
                    ));
                }
                let conns = self.worker_conns(&worker_id, false);
                if conns.is_empty() {
                    return Err(no_socket(&worker_id));
                }
                warn!(target: "studio_local::faults", worker_id, code, "closing connection(s)");
                for id in &conns {
                    self.ws_close(*id, code, &reason, true);
                }
                Ok(conns.len())
            }
            Fault::Error {
                worker_id,
                code,
                message,
            } => {
                let conns = self.worker_conns(&worker_id, false);
                if conns.is_empty() {
                    return Err(no_socket(&worker_id));
                }
                warn!(target: "studio_local::faults", worker_id, code = code.as_str(), "sending error frame(s)");
                let text = wire::encode(&StudioFrame::Error {
                    code,
                    message: message.clone(),
                });
                for id in &conns {
                    self.ws_send(*id, text.clone());
                    self.ws_close(*id, code.close_code(), code.as_str(), true);
                }
                Ok(conns.len())
            }
            Fault::ProbeOffer {
                worker_id,
                job_id,
                task,
            } => {
                if !safe_name(&job_id) {
                    return Err(HttpError::new(
                        400,
                        "jobId must be 1-128 ASCII letters, digits, `-`, `_` or `.`",
                    ));
                }
                if self.studio.job(&job_id).is_some() {
                    return Err(HttpError::new(
                        409,
                        format!("job {job_id} is a real job; a probe needs an id the studio does not know"),
                    ));
                }
                if let Some(other) = self.probes.get(&job_id) {
                    if *other != worker_id {
                        return Err(HttpError::new(
                            409,
                            format!("job {job_id} was already probed on worker {other}"),
                        ));
                    }
                }
                let conns = self.worker_conns(&worker_id, false);
                if conns.is_empty() {
                    return Err(no_socket(&worker_id));
                }
                let kind = task.kind();
                let claim = JobOfferClaim {
                    job_id: job_id.clone(),
                    game_id: "probe".into(),
                    asset_name: format!("probe/{kind}"),
                    model: "synthetic".into(),
                    vram_gb_estimate: 0.0,
                    task: *task,
                    model_source: ModelSource::synthetic(),
                };
                warn!(target: "studio_local::faults", worker_id, job_id, "sending a probe offer");
                self.probes.insert(job_id, worker_id);
                let text = wire::encode(&StudioFrame::Offer {
                    claim: Box::new(claim),
                });
                for id in &conns {
                    self.ws_send(*id, text.clone());
                }
                Ok(conns.len())
            }
        }
    }

    /// A frame of a probe job ([`Fault::ProbeOffer`]) from its worker: recorded (and
    /// acknowledged like a studio would), never fed to the machine. `true` when taken.
    fn intercept_probe_reply(&mut self, conn: ConnId, worker_id: &str, text: &str) -> bool {
        if self.probes.is_empty() {
            return false;
        }
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            return false;
        };
        let (Some(ty), Some(job_id)) = (v["type"].as_str(), v["jobId"].as_str()) else {
            return false;
        };
        if !PROBE_REPLY_TYPES.contains(&ty)
            || self.probes.get(job_id).map(String::as_str) != Some(worker_id)
        {
            return false;
        }
        info!(target: "studio_local::faults", worker_id, job_id, ty, "probe reply intercepted");
        let ack = match ty {
            "completeJson" => Some(StudioFrame::CompleteAck {
                job_id: job_id.to_string(),
            }),
            "fail" => Some(StudioFrame::FailAck {
                job_id: job_id.to_string(),
            }),
            _ => None,
        };
        self.record_probe_reply(worker_id, text.to_string());
        if let Some(ack) = ack {
            self.ws_send(conn, wire::encode(&ack));
        }
        true
    }

    fn record_probe_reply(&mut self, worker_id: &str, text: String) {
        let replies = self.probe_replies.entry(worker_id.to_string()).or_default();
        if replies.len() >= MAX_PROBE_REPLIES {
            replies.remove(0);
        }
        replies.push(text);
    }

    /// The intercepted replies to probe offers sent to `worker_id`, oldest first.
    pub(crate) fn probe_replies(&self, worker_id: &str) -> Vec<String> {
        self.probe_replies
            .get(worker_id)
            .cloned()
            .unwrap_or_default()
    }

    /// What this server saw of `worker_id`'s connections (zeros for an id never seen).
    pub(crate) fn connection_stats(&self, worker_id: &str) -> ConnectionStats {
        self.tallies.get(worker_id).cloned().unwrap_or_default()
    }
}

fn write_file(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = fs::File::create(path)?;
    f.write_all(data)?;
    f.sync_all()
}

fn method_not_allowed(allow: &str) -> Response {
    Response::error(405, &format!("method not allowed (allowed: {allow})"))
        .with_header("Allow", allow)
}

fn not_found(path: &str) -> Response {
    Response::error(
        404,
        &format!("no route for {path}; GET /local lists the admin API"),
    )
}

/// `GET /` and `GET /local`: the routes, for discoverability.
fn index() -> Value {
    json!({
        "server": "studio-local",
        "studio": [
            "POST /graphics/api/workers/register-request",
            "GET  /graphics/api/workers/register-requests/:requestId   (Bearer registration secret)",
            "GET  /graphics/api/workers/:workerId/connect               (WebSocket upgrade, Bearer auth token)",
            "POST /graphics/api/workers/:workerId/jobs/:jobId/complete  (multipart, Bearer auth token)"
        ],
        "admin": [
            "POST /local/jobs                       {kind, task?, prompt?, model?, modelSource?, vramGbEstimate?}",
            "GET  /local/jobs",
            "GET  /local/jobs/:id",
            "GET  /local/jobs/:id/result",
            "GET  /local/workers",
            "POST /local/workers                    {workerId, authToken}",
            "DELETE /local/workers/:id",
            "GET  /local/workers/:id/logs",
            "GET  /local/requests",
            "POST /local/requests/:id/approve",
            "POST /local/requests/:id/reject        {reason?}",
            "GET  /local/stats",
            "POST /local/shutdown"
        ],
        "faults": [
            "GET  /local/faults",
            "POST /local/faults                     {failUploads?, failUploadsStatus?, upgradeFailures?, upgradeStatus?}",
            "POST /local/workers/:id/drop",
            "POST /local/workers/:id/stall",
            "POST /local/workers/:id/close          {code?, reason?}",
            "POST /local/workers/:id/error          {code, message?}",
            "POST /local/workers/:id/probe-offer    {jobId, task?}",
            "GET  /local/workers/:id/probe-replies",
            "GET  /local/workers/:id/connections"
        ]
    })
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
