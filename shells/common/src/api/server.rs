//! The API's HTTP/1.1 connection handling, on one thread: accept, read one request (its
//! head parsed by `httparse`, its body read up to its `Content-Length`), answer it with
//! `Connection: close`, close. Every step is bounded:
//!
//! | limit | value | over it |
//! |---|---|---|
//! | request head (line + headers) | [`MAX_HEAD_BYTES`] | 431 |
//! | headers | [`MAX_HEADERS`] | 431 |
//! | body | [`super::MAX_BODY_BYTES`] | 413, the body is not read |
//! | each read and write | [`IO_TIMEOUT`] | the connection is dropped |
//!
//! A body is only accepted with a `Content-Length` (a chunked one gets 411). Nothing is
//! allocated from what a client declares: a body is read into a buffer at most
//! `MAX_BODY_BYTES` long. One connection at a time is enough for a control API, and
//! [`IO_TIMEOUT`] bounds what a stalled client can hold it for; the worker's session is
//! never involved.
//!
//! The thread blocks in `accept` (no timer): an idle API costs no wake-up.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::routes::{self, Ctx, Head, Reply};
use super::MAX_BODY_BYTES;

/// The largest request head (request line and headers) read.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// The most headers a request may have.
pub const MAX_HEADERS: usize = 64;
/// How long one read or write on a connection may block.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// After answering: how long, and how many bytes, the connection is read and dropped
/// before it is closed (so the client gets the answer rather than a reset).
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: u64 = 256 * 1024;
/// How long stopping waits for a request being answered.
const STOP_WAIT: Duration = Duration::from_secs(2);
/// After a failed `accept` (out of file descriptors, say), the pause before the next one,
/// so the thread does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(200);

/// The accept thread and how to stop it.
pub struct Listening {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listening {
    /// Serves `listener` on a thread named `local-api`.
    pub fn start(listener: TcpListener, ctx: Ctx) -> io::Result<Listening> {
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("local-api".into())
            .spawn(move || accept_loop(&listener, &ctx, &stopping))?;
        Ok(Listening {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Listening {
    /// Stops the thread (waking its `accept` with a connection of our own) and closes the
    /// listening socket.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let Some(thread) = self.thread.take() else {
            return;
        };
        let _ = TcpStream::connect_timeout(&self.addr, STOP_WAIT);
        // The thread ends at once unless it is answering a request; a stalled client must
        // not hold up the worker's exit, so it gets a short while, then the thread is left
        // to finish on its own (the socket closes with it, or with the process).
        let waited = std::time::Instant::now();
        while !thread.is_finished() && waited.elapsed() < STOP_WAIT {
            std::thread::sleep(Duration::from_millis(10));
        }
        if thread.is_finished() {
            let _ = thread.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, ctx: &Ctx, stop: &AtomicBool) {
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match accepted {
            Ok((stream, _)) => {
                if let Err(e) = connection(stream, ctx) {
                    tracing::debug!("local API connection: {e}");
                }
            }
            Err(e) => {
                tracing::warn!("local API: accept failed: {e}");
                std::thread::sleep(ACCEPT_BACKOFF);
            }
        }
    }
}

/// Reads one request from `stream`, answers it, closes.
fn connection(mut stream: TcpStream, ctx: &Ctx) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let reply = match read_request(&mut stream) {
        Ok(Some((head, body))) => routes::handle(&head, &body, ctx),
        Ok(None) => return Ok(()), // closed (or timed out) before a whole head
        Err(reply) => reply,
    };
    write_reply(&mut stream, &reply)?;
    // Closing a socket with unread bytes in it resets the connection, and the client can
    // lose the answer with it: say we are done, then read (and drop) what is still coming,
    // a little and briefly, before closing.
    let _ = stream.shutdown(Shutdown::Write);
    stream.set_read_timeout(Some(LINGER))?;
    let _ = io::copy(&mut (&stream).take(LINGER_BYTES), &mut io::sink());
    Ok(())
}

/// The request, `Ok(None)` when the client went away before sending one, or the error
/// reply for a request that cannot be taken.
fn read_request(stream: &mut TcpStream) -> Result<Option<(Head, Vec<u8>)>, Reply> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let (head, head_len, body_len) = loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) => return Ok(None),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Ok(None),
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let (head, body_len) = head_of(&request)?;
                break (head, len, body_len);
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
                return Err(too_large_head())
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => return Err(too_large_head()),
            Err(e) => return Err(Reply::error(400, format!("malformed request: {e}"))),
        }
    };
    if head_len > MAX_HEAD_BYTES {
        return Err(too_large_head());
    }
    if body_len > MAX_BODY_BYTES {
        return Err(Reply::error(
            413,
            format!("the body is over {MAX_BODY_BYTES} bytes"),
        ));
    }
    let mut body = buf.split_off(head_len);
    if body.len() > body_len {
        return Err(Reply::error(400, "more bytes than the Content-Length"));
    }
    let missing = body_len - body.len();
    let read = stream.take(missing as u64).read_to_end(&mut body);
    if read.is_err() || body.len() != body_len {
        return Ok(None); // the client stopped sending: nobody to answer
    }
    Ok(Some((head, body)))
}

fn too_large_head() -> Reply {
    Reply::error(
        431,
        format!("the request head is over {MAX_HEAD_BYTES} bytes or {MAX_HEADERS} headers"),
    )
}

/// The parts of a parsed head the routes use, and the declared body length.
fn head_of(request: &httparse::Request<'_, '_>) -> Result<(Head, usize), Reply> {
    let mut head = Head {
        method: request.method.unwrap_or_default().to_string(),
        url: request.path.unwrap_or_default().to_string(),
        ..Head::default()
    };
    let mut body_len = None;
    for h in request.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| Reply::error(400, format!("the {} header is not UTF-8", h.name)))?
            .trim()
            .to_string();
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            head.host.push(value);
        } else if name.eq_ignore_ascii_case("origin") {
            head.origin.push(value);
        } else if name.eq_ignore_ascii_case("authorization") {
            head.authorization.get_or_insert(value);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Reply::error(
                411,
                "send the body with a Content-Length (chunked bodies are not accepted)",
            ));
        } else if name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse::<u64>()
                .map_err(|_| Reply::error(400, "a bad Content-Length"))?;
            if body_len.is_some_and(|m| m != n) {
                return Err(Reply::error(400, "conflicting Content-Length headers"));
            }
            body_len = Some(n);
        }
    }
    let body_len = usize::try_from(body_len.unwrap_or(0)).unwrap_or(usize::MAX);
    head.body_len = Some(body_len);
    Ok((head, body_len))
}

/// The standard reason phrase of a status (the `http` crate's table, through tungstenite).
fn reason(status: u16) -> &'static str {
    tungstenite::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|code| code.canonical_reason())
        .unwrap_or("")
}

fn write_reply(stream: &mut impl Write, reply: &Reply) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        reply.status,
        reason(reply.status),
        reply.content_type,
        reply.body.len()
    );
    for (name, value) in &reply.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    stream.write_all(out.as_bytes())?;
    stream.write_all(&reply.body)?;
    stream.flush()
}
