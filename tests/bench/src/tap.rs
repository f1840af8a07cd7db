//! A passive frame tap: a TCP forwarder between the worker and studio-local that
//! timestamps what crosses it.
//!
//! studio-local records no offer time (its `JobDetail` has only millisecond
//! `submittedMs` / `updatedMs`), so the offer -> result interval is observed from the
//! outside: the worker's `api_base_url` points at the tap, which forwards every byte at once
//! (before looking at it) and then parses a copy: the HTTP heads, the WebSocket frames of
//! the session (`offer`, `accept`, `completeJson`, ... by `type`) and the multipart result
//! uploads (`POST .../jobs/<jobId>/complete`, their `Content-Length` counted down).
//!
//! An interval between two events seen at the tap equals the one the studio would see
//! (each side's one-way hop is inside it once); the tap's own extra hop only adds to
//! submit -> completed, so that figure is measured on a direct connection instead.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use serde_json::Value;

/// When a frame for a job was seen, and its payload size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub at: Instant,
    pub payload_bytes: usize,
}

/// One TCP connection through the tap.
#[derive(Clone, Debug)]
pub struct ConnSeen {
    pub opened: Instant,
    /// An upgrade to a WebSocket (`GET .../connect`).
    pub websocket: bool,
    /// The job of a result upload (`POST .../jobs/<jobId>/complete`).
    pub upload_job: Option<String>,
    /// The request (head and `Content-Length` body) had fully passed.
    pub request_done: Option<Instant>,
    /// The first bytes of the studio's answer passed.
    pub response_first: Option<Instant>,
    pub request_body_bytes: u64,
}

/// Everything the tap saw.
#[derive(Clone, Debug, Default)]
pub struct TapLog {
    /// `offer` frames (studio -> worker) by job id (the first one of each job).
    pub offers: HashMap<String, Seen>,
    /// `accept` frames (worker -> studio) by job id.
    pub accepts: HashMap<String, Seen>,
    /// `completeJson` frames (worker -> studio) by job id.
    pub completes: HashMap<String, Seen>,
    /// `completeAck` frames (studio -> worker) by job id.
    pub complete_acks: HashMap<String, Seen>,
    /// Every connection by its number.
    pub conns: BTreeMap<u64, ConnSeen>,
    /// Frames by `"<direction> <type>"` (non-text frames by opcode name).
    pub frames: BTreeMap<String, FrameStat>,
    /// Every `logBatch` frame (worker -> studio): when, and its payload size.
    pub log_batches: Vec<Seen>,
}

/// Count and payload bytes of one kind of frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameStat {
    pub count: u64,
    pub bytes: u64,
    pub max_bytes: u64,
}

impl FrameStat {
    fn add(&mut self, bytes: usize) {
        self.count += 1;
        self.bytes += bytes as u64;
        self.max_bytes = self.max_bytes.max(bytes as u64);
    }

    /// What was added since `earlier` (its max is kept: a max cannot be subtracted).
    pub fn since(&self, earlier: Option<&FrameStat>) -> FrameStat {
        let e = earlier.copied().unwrap_or_default();
        FrameStat {
            count: self.count - e.count.min(self.count),
            bytes: self.bytes - e.bytes.min(self.bytes),
            max_bytes: self.max_bytes,
        }
    }
}

/// Frame counts added between two [`Tap::frames`] snapshots (kinds with none left out).
pub fn frames_since(
    before: &BTreeMap<String, FrameStat>,
    after: &BTreeMap<String, FrameStat>,
) -> BTreeMap<String, FrameStat> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v.since(before.get(k))))
        .filter(|(_, v)| v.count > 0)
        .collect()
}

impl TapLog {
    /// The upload connection of `job_id`, if any.
    pub fn upload(&self, job_id: &str) -> Option<&ConnSeen> {
        self.conns
            .values()
            .find(|c| c.upload_job.as_deref() == Some(job_id))
    }
}

/// Direction of a byte stream through the tap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Worker -> studio (requests, masked frames).
    Up,
    /// Studio -> worker (responses, unmasked frames).
    Down,
}

impl Dir {
    pub fn label(self) -> &'static str {
        match self {
            Dir::Up => "worker->studio",
            Dir::Down => "studio->worker",
        }
    }
}

/// A running tap. Dropping it stops accepting; open connections end with their peers.
pub struct Tap {
    addr: SocketAddr,
    log: Arc<Mutex<TapLog>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Tap {
    /// Listens on an ephemeral loopback port and forwards every connection to `upstream`.
    pub fn start(upstream: SocketAddr) -> io::Result<Tap> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let addr = listener.local_addr()?;
        let log = Arc::new(Mutex::new(TapLog::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicU64::new(1));
        let (log2, stop2) = (log.clone(), stop.clone());
        let acceptor = std::thread::Builder::new()
            .name("bench-tap".into())
            .spawn(move || {
                for client in listener.incoming() {
                    if stop2.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if let Err(e) = start_conn(n, client, upstream, &log2) {
                        eprintln!("studio-bench: tap connection {n}: {e}");
                    }
                }
            })?;
        Ok(Tap {
            addr,
            log,
            stop,
            acceptor: Some(acceptor),
        })
    }

    /// Where the worker should connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A copy of what was seen so far.
    pub fn snapshot(&self) -> TapLog {
        lock(&self.log).clone()
    }

    /// Frame counts so far.
    pub fn frames(&self) -> BTreeMap<String, FrameStat> {
        lock(&self.log).frames.clone()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Unblock accept().
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

fn lock(log: &Mutex<TapLog>) -> MutexGuard<'_, TapLog> {
    log.lock().unwrap_or_else(|p| p.into_inner())
}

fn start_conn(
    n: u64,
    client: TcpStream,
    upstream: SocketAddr,
    log: &Arc<Mutex<TapLog>>,
) -> io::Result<()> {
    let opened = Instant::now();
    let server = TcpStream::connect(upstream)?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    lock(log).conns.insert(
        n,
        ConnSeen {
            opened,
            websocket: false,
            upload_job: None,
            request_done: None,
            response_first: None,
            request_body_bytes: 0,
        },
    );
    let (c2, s2) = (client.try_clone()?, server.try_clone()?);
    let (log_up, log_down) = (log.clone(), log.clone());
    std::thread::Builder::new()
        .name(format!("bench-tap-{n}u"))
        .spawn(move || pump(client, server, Parser::new(Dir::Up, n), &log_up))?;
    std::thread::Builder::new()
        .name(format!("bench-tap-{n}d"))
        .spawn(move || pump(s2, c2, Parser::new(Dir::Down, n), &log_down))?;
    Ok(())
}

/// Copies `from` to `to` until EOF, forwarding each chunk before parsing it.
fn pump(mut from: TcpStream, mut to: TcpStream, mut parser: Parser, log: &Mutex<TapLog>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let at = Instant::now();
        if to.write_all(&buf[..n]).is_err() {
            let _ = from.shutdown(Shutdown::Both);
            break;
        }
        parser.feed(at, &buf[..n], log);
    }
    let _ = to.shutdown(Shutdown::Write);
}

enum Phase {
    /// Collecting an HTTP head.
    Head,
    /// Counting down a request body.
    Body { left: u64 },
    /// WebSocket frames.
    Frames,
    /// Nothing more of interest.
    Opaque,
}

/// The passive parser of one direction of one connection.
pub struct Parser {
    dir: Dir,
    conn: u64,
    buf: Vec<u8>,
    phase: Phase,
    seen_any: bool,
}

impl Parser {
    pub fn new(dir: Dir, conn: u64) -> Parser {
        Parser {
            dir,
            conn,
            buf: Vec::new(),
            phase: Phase::Head,
            seen_any: false,
        }
    }

    /// Takes the next chunk of this direction, which passed the tap at `at`.
    pub fn feed(&mut self, at: Instant, bytes: &[u8], log: &Mutex<TapLog>) {
        if !self.seen_any {
            self.seen_any = true;
            if self.dir == Dir::Down {
                if let Some(c) = lock(log).conns.get_mut(&self.conn) {
                    c.response_first.get_or_insert(at);
                }
            }
        }
        match self.phase {
            Phase::Opaque => {}
            Phase::Body { .. } => self.body(at, bytes.len() as u64, log),
            Phase::Head | Phase::Frames => {
                self.buf.extend_from_slice(bytes);
                self.advance(at, log);
            }
        }
    }

    fn advance(&mut self, at: Instant, log: &Mutex<TapLog>) {
        if matches!(self.phase, Phase::Head) {
            let Some(end) = find(&self.buf, b"\r\n\r\n") else {
                return;
            };
            let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
            self.buf.drain(..end + 4);
            self.on_head(at, &head, log);
            match self.phase {
                Phase::Body { .. } => {
                    let rest = std::mem::take(&mut self.buf);
                    self.body(at, rest.len() as u64, log);
                    return;
                }
                Phase::Opaque => {
                    self.buf.clear();
                    return;
                }
                _ => {}
            }
        }
        if matches!(self.phase, Phase::Frames) {
            while let Some((opcode, payload)) = next_frame(&mut self.buf) {
                self.on_frame(at, opcode, &payload, log);
            }
        }
    }

    fn on_head(&mut self, at: Instant, head: &str, log: &Mutex<TapLog>) {
        let first = head.lines().next().unwrap_or("");
        match self.dir {
            Dir::Up => {
                let mut parts = first.split_whitespace();
                let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let mut log = lock(log);
                let Some(conn) = log.conns.get_mut(&self.conn) else {
                    self.phase = Phase::Opaque;
                    return;
                };
                if method == "GET" && path.ends_with("/connect") {
                    conn.websocket = true;
                    self.phase = Phase::Frames;
                } else if method == "POST" {
                    conn.upload_job = upload_job_id(path);
                    let len = head.lines().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.trim()
                            .eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<u64>().ok())?
                    });
                    match len {
                        Some(0) | None => {
                            conn.request_done = Some(at);
                            self.phase = Phase::Opaque;
                        }
                        Some(left) => self.phase = Phase::Body { left },
                    }
                } else {
                    self.phase = Phase::Opaque;
                }
            }
            Dir::Down => {
                let status = first.split_whitespace().nth(1).unwrap_or("");
                self.phase = if status == "101" {
                    Phase::Frames
                } else {
                    Phase::Opaque
                };
            }
        }
    }

    fn body(&mut self, at: Instant, n: u64, log: &Mutex<TapLog>) {
        let Phase::Body { left } = &mut self.phase else {
            return;
        };
        let take = n.min(*left);
        *left -= take;
        let done = *left == 0;
        let mut log = lock(log);
        if let Some(c) = log.conns.get_mut(&self.conn) {
            c.request_body_bytes += take;
            if done {
                c.request_done = Some(at);
            }
        }
        if done {
            self.phase = Phase::Opaque;
        }
    }

    fn on_frame(&mut self, at: Instant, opcode: u8, payload: &[u8], log: &Mutex<TapLog>) {
        let dir = self.dir.label();
        if opcode != 0x1 {
            let name = match opcode {
                0x0 => "continuation",
                0x2 => "binary",
                0x8 => "close",
                0x9 => "ping",
                0xA => "pong",
                _ => "other",
            };
            lock(log)
                .frames
                .entry(format!("{dir} [{name}]"))
                .or_default()
                .add(payload.len());
            return;
        }
        let v: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
        let ty = v.get("type").and_then(Value::as_str).unwrap_or("?");
        let seen = Seen {
            at,
            payload_bytes: payload.len(),
        };
        let mut log = lock(log);
        log.frames
            .entry(format!("{dir} {ty}"))
            .or_default()
            .add(payload.len());
        let job = |v: &Value| v.get("jobId").and_then(Value::as_str).map(str::to_string);
        match (self.dir, ty) {
            (Dir::Down, "offer") => {
                if let Some(id) = v.get("claim").and_then(job) {
                    log.offers.entry(id).or_insert(seen);
                }
            }
            (Dir::Down, "completeAck") => {
                if let Some(id) = job(&v) {
                    log.complete_acks.entry(id).or_insert(seen);
                }
            }
            (Dir::Up, "accept") => {
                if let Some(id) = job(&v) {
                    log.accepts.entry(id).or_insert(seen);
                }
            }
            (Dir::Up, "logBatch") => log.log_batches.push(seen),
            (Dir::Up, "completeJson") => {
                if let Some(id) = job(&v) {
                    log.completes.entry(id).or_insert(seen);
                }
            }
            _ => {}
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `/graphics/api/workers/<w>/jobs/<jobId>/complete` -> `<jobId>`.
pub fn upload_job_id(path: &str) -> Option<String> {
    let path = path.split('?').next()?;
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let i = segs.iter().position(|s| *s == "jobs")?;
    (segs.get(i + 2) == Some(&"complete")).then(|| segs[i + 1].to_string())
}

/// Takes one whole WebSocket frame off the front of `buf` (unmasked): (opcode, payload).
pub fn next_frame(buf: &mut Vec<u8>) -> Option<(u8, Vec<u8>)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut off) = match buf[1] & 0x7f {
        126 => {
            if buf.len() < 4 {
                return None;
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return None;
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        n => (u64::from(n), 2),
    };
    let key = if masked {
        if buf.len() < off + 4 {
            return None;
        }
        let k = [buf[off], buf[off + 1], buf[off + 2], buf[off + 3]];
        off += 4;
        Some(k)
    } else {
        None
    };
    let len = usize::try_from(len).ok()?;
    if buf.len() < off.checked_add(len)? {
        return None;
    }
    let mut payload = buf[off..off + len].to_vec();
    if let Some(k) = key {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= k[i % 4];
        }
    }
    buf.drain(..off + len);
    Some((opcode, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_masked_and_long_frames() {
        // Masked text "Hi" (RFC 6455 §5.7 style), then an unmasked 300-byte binary frame.
        let key = [1u8, 2, 3, 4];
        let mut buf = vec![0x81, 0x82, 1, 2, 3, 4, b'H' ^ key[0], b'i' ^ key[1]];
        buf.extend_from_slice(&[0x82, 126, 0x01, 0x2c]);
        buf.extend(std::iter::repeat_n(7u8, 300));
        buf.push(0x89); // a partial frame stays
        assert_eq!(next_frame(&mut buf), Some((1, b"Hi".to_vec())));
        let (op, p) = next_frame(&mut buf).unwrap();
        assert_eq!((op, p.len()), (2, 300));
        assert_eq!(next_frame(&mut buf), None);
        assert_eq!(buf, vec![0x89]);
    }

    #[test]
    fn finds_the_upload_job() {
        assert_eq!(
            upload_job_id("/graphics/api/workers/w-1/jobs/job-7/complete").as_deref(),
            Some("job-7")
        );
        assert_eq!(upload_job_id("/graphics/api/workers/w-1/connect"), None);
    }

    #[test]
    fn records_offers_and_results() {
        let log = Mutex::new(TapLog::default());
        log.lock().unwrap().conns.insert(
            1,
            ConnSeen {
                opened: Instant::now(),
                websocket: false,
                upload_job: None,
                request_done: None,
                response_first: None,
                request_body_bytes: 0,
            },
        );
        let t = Instant::now();
        let mut down = Parser::new(Dir::Down, 1);
        let offer = br#"{"type":"offer","claim":{"jobId":"j1"}}"#;
        let mut bytes = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n".to_vec();
        bytes.extend_from_slice(&[0x81, offer.len() as u8]);
        bytes.extend_from_slice(offer);
        // Split anywhere: the parser must reassemble.
        down.feed(t, &bytes[..20], &log);
        down.feed(t, &bytes[20..], &log);
        let mut up = Parser::new(Dir::Up, 2);
        let copy = log.lock().unwrap().conns[&1].clone();
        log.lock().unwrap().conns.insert(2, copy);
        up.feed(
            t,
            b"POST /graphics/api/workers/w/jobs/j1/complete HTTP/1.1\r\nContent-Length: 5\r\n\r\nab",
            &log,
        );
        assert!(log.lock().unwrap().conns[&2].request_done.is_none());
        up.feed(t, b"cde", &log);
        let log = log.into_inner().unwrap();
        assert_eq!(log.offers["j1"].payload_bytes, offer.len());
        assert_eq!(log.frames["studio->worker offer"].count, 1);
        let upload = log.upload("j1").unwrap();
        assert!(upload.request_done.is_some());
        assert_eq!(upload.request_body_bytes, 5);
    }
}
