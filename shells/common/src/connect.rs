//! The runtime-agnostic steps of `Command::Connect`, shared by the sync shell's connect
//! thread and the async shell's connect task, so both fail the same way with the same
//! words.
//!
//! A connection attempt is, in either runtime:
//!
//! 1. [`Exchange::new`]: build the upgrade ([`crate::ws::Upgrade`]: bearer header,
//!    subprotocol) and learn the target; a bad URL fails here, before any IO;
//! 2. resolve the host and TCP-connect to each address in turn ([`tcp_connect`], blocking,
//!    in both shells; [`resolve_failed`], [`connect_failed`] name the failure);
//! 3. for `wss`, the TLS handshake with [`crate::tls::client_config`]
//!    ([`server_name`], [`tls_failed`]);
//! 4. write [`Exchange::request`] ([`Exchange::write_failed`]), then hand every read to
//!    [`Exchange::on_read`] until it returns the bytes read past the `101` head (the first
//!    WebSocket bytes) or the error: a refused upgrade's body is read to its end (or EOF,
//!    an error, the deadline) and becomes `401` -> `ConnectError::Unauthorized { body }`,
//!    another status -> `Status { status, body }`; anything else is `Transport(message)`.
//!
//! The whole attempt has one [`Deadline`] ([`CONNECT_DEADLINE`] in production): every
//! socket timeout of the sync shell is what is left of it, the async shell races the whole
//! attempt against it; past it the attempt fails with [`Deadline::expired`]'s message.

use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use studio_core::worker::ConnectError;

use crate::ws::{Head, Refusal, Target, Upgrade};

pub use crate::ws::CONNECT_DEADLINE;

/// The one deadline of a connection attempt (see the module docs).
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    at: Instant,
    total: Duration,
}

impl Deadline {
    /// `total` from now.
    pub fn after(total: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + total,
            total,
        }
    }

    /// What is left of it (at least 1 ms, a socket timeout cannot be zero), or the
    /// attempt's error once it passed.
    pub fn left(&self, at: &str) -> Result<Duration, ConnectError> {
        match self.at.checked_duration_since(Instant::now()) {
            Some(d) if !d.is_zero() => Ok(d.max(Duration::from_millis(1))),
            _ => Err(self.expired(at)),
        }
    }

    /// The error of an attempt on `at` that ran out of time.
    pub fn expired(&self, at: &str) -> ConnectError {
        transport(format!(
            "connecting to {at} timed out after {} s",
            self.total.as_secs_f64()
        ))
    }
}

/// The size of one read of the upgrade response.
pub const READ_CHUNK: usize = 4096;

/// One upgrade exchange over an already connected stream (see the module docs).
#[derive(Debug)]
pub struct Exchange {
    upgrade: Upgrade,
    /// `host:port`, for messages.
    at: String,
    /// What has been read of the response head.
    buf: Vec<u8>,
    /// Set once the head said no: its body is being read.
    refusal: Option<Refusal>,
}

impl Exchange {
    /// The upgrade of `url` with the bearer `auth_token`; a bad URL or token is a
    /// `ConnectError::Transport` (retried with backoff by the core).
    pub fn new(url: &str, auth_token: &str) -> Result<Exchange, ConnectError> {
        let upgrade = Upgrade::new(url, auth_token)?;
        let target = upgrade.target();
        let at = format!("{}:{}", target.host, target.port);
        Ok(Exchange {
            upgrade,
            at,
            buf: Vec::with_capacity(1024),
            refusal: None,
        })
    }

    /// Where to connect.
    pub fn target(&self) -> &Target {
        self.upgrade.target()
    }

    /// `host:port`.
    pub fn at(&self) -> &str {
        &self.at
    }

    /// The request bytes to write (they carry the bearer token: never log them).
    pub fn request(&self) -> &[u8] {
        self.upgrade.request()
    }

    /// The error for a failed write (or flush) of the request.
    pub fn write_failed(&self, e: &io::Error) -> ConnectError {
        transport(format!(
            "sending the upgrade request to {} failed: {}",
            self.at,
            io_text(e)
        ))
    }

    /// Takes the outcome of one read into `chunk`: `Ok(None)` to read again,
    /// `Ok(Some(tail))` when the upgrade was accepted (`tail`: the bytes after the head,
    /// already WebSocket data), `Err` when it failed or was refused (its body read).
    pub fn on_read(
        &mut self,
        read: io::Result<usize>,
        chunk: &[u8],
    ) -> Result<Option<Vec<u8>>, ConnectError> {
        if let Some(mut refusal) = self.refusal.take() {
            // Reading the body: stop at its end, EOF or an error, whichever is first.
            let done = match read {
                Ok(0) => true,
                Ok(n) => refusal.push(&chunk[..n]),
                Err(e) => e.kind() != io::ErrorKind::Interrupted,
            };
            if done {
                return Err(refusal.into_error());
            }
            self.refusal = Some(refusal);
            return Ok(None);
        }
        let n = match read {
            Ok(0) => {
                return Err(transport(format!(
                    "{} closed the connection during the websocket upgrade",
                    self.at
                )))
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(None),
            Err(e) => {
                return Err(transport(format!(
                    "reading the upgrade response from {} failed: {}",
                    self.at,
                    io_text(&e)
                )))
            }
        };
        self.buf.extend_from_slice(&chunk[..n]);
        match self.upgrade.read_head(&self.buf)? {
            None => Ok(None),
            Some(Head::Accepted { consumed }) => Ok(Some(self.buf.split_off(consumed))),
            // The studio explains a refusal in the body: read it (maybe it is all here).
            Some(Head::Refused(refusal)) if refusal.is_complete() => Err(refusal.into_error()),
            Some(Head::Refused(refusal)) => {
                self.refusal = Some(refusal);
                Ok(None)
            }
        }
    }
}

/// Step 2, blocking (on the sync shell's connect thread, and on a short-lived thread of the
/// async shell's connect task): resolves `host` (the OS resolver) and connects to the first
/// address that answers, each connect within what is left of `deadline`.
pub fn tcp_connect(host: &str, port: u16, deadline: &Deadline) -> Result<TcpStream, ConnectError> {
    let at = format!("{host}:{port}");
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| resolve_failed(host, &e))?
        .collect();
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, deadline.left(&at)?) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some((addr, e)),
        }
    }
    Err(connect_failed(host, port, last))
}

/// The error when `host` cannot be resolved.
pub fn resolve_failed(host: &str, e: &io::Error) -> ConnectError {
    transport(format!("cannot resolve {host}: {}", io_text(e)))
}

/// The error when no address of `host` answered (`last`: the last one tried and why;
/// `None`: there were no addresses).
pub fn connect_failed(
    host: &str,
    port: u16,
    last: Option<(SocketAddr, io::Error)>,
) -> ConnectError {
    transport(match last {
        Some((addr, e)) if addr.ip().to_string() == host => {
            format!("cannot connect to {addr}: {}", io_text(&e))
        }
        Some((addr, e)) => format!("cannot connect to {host}:{port} ({addr}): {}", io_text(&e)),
        None => format!("cannot resolve {host}: no addresses"),
    })
}

/// `host` as a TLS server name.
pub fn server_name(host: &str) -> Result<ServerName<'static>, ConnectError> {
    ServerName::try_from(host.to_string())
        .map_err(|e| transport(format!("`{host}` is not a valid TLS server name: {e}")))
}

/// The error when the TLS handshake with `at` failed.
pub fn tls_failed(at: &str, e: &io::Error) -> ConnectError {
    transport(format!("TLS handshake with {at} failed: {}", io_text(e)))
}

/// An IO error for a message; a timed-out step says so plainly.
pub fn io_text(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            "timed out (the connect deadline passed)".to_string()
        }
        _ => e.to_string(),
    }
}

/// A `ConnectError::Transport`.
pub fn transport(message: String) -> ConnectError {
    ConnectError::Transport(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::handshake::derive_accept_key;

    fn exchange() -> Exchange {
        Exchange::new("ws://127.0.0.1:9/graphics/api/workers/w/connect", "t").unwrap()
    }

    fn feed(ex: &mut Exchange, bytes: &[u8]) -> Result<Option<Vec<u8>>, ConnectError> {
        ex.on_read(Ok(bytes.len()), bytes)
    }

    #[test]
    fn an_accepted_upgrade_returns_the_bytes_past_the_head() {
        let mut ex = exchange();
        let request = String::from_utf8(ex.request().to_vec()).unwrap();
        let key = request
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap();
        let head = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: studio-worker-v1\r\n\r\n",
            derive_accept_key(key.as_bytes())
        );
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(b"\x81\x01x");
        let (a, b) = bytes.split_at(20);
        assert_eq!(feed(&mut ex, a), Ok(None));
        assert_eq!(
            ex.on_read(Err(io::ErrorKind::Interrupted.into()), &[]),
            Ok(None)
        );
        assert_eq!(feed(&mut ex, b), Ok(Some(b"\x81\x01x".to_vec())));
    }

    #[test]
    fn a_refusal_reads_its_body_until_complete_or_eof() {
        let mut ex = exchange();
        assert_eq!(
            feed(
                &mut ex,
                b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 8\r\n\r\nbad"
            ),
            Ok(None)
        );
        assert_eq!(
            feed(&mut ex, b" token"),
            Err(ConnectError::Unauthorized {
                body: "bad toke".into()
            })
        );
        let mut ex = exchange();
        assert_eq!(feed(&mut ex, b"HTTP/1.1 503 Busy\r\n\r\nlater"), Ok(None));
        assert_eq!(
            ex.on_read(Ok(0), &[]),
            Err(ConnectError::Status {
                status: 503,
                body: "later".into()
            })
        );
        let mut ex = exchange();
        assert_eq!(
            feed(&mut ex, b"HTTP/1.1 403 No\r\nContent-Length: 2\r\n\r\nno"),
            Err(ConnectError::Status {
                status: 403,
                body: "no".into()
            })
        );
    }

    #[test]
    fn eof_and_errors_during_the_head_are_transport_errors() {
        let mut ex = exchange();
        match ex.on_read(Ok(0), &[]) {
            Err(ConnectError::Transport(m)) => assert!(m.contains("closed"), "{m}"),
            other => panic!("{other:?}"),
        }
        let mut ex = exchange();
        match ex.on_read(Err(io::ErrorKind::TimedOut.into()), &[]) {
            Err(ConnectError::Transport(m)) => assert!(m.contains("timed out"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn connect_failures_name_the_address() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let e = || io::Error::from(io::ErrorKind::ConnectionRefused);
        match connect_failed("127.0.0.1", 9, Some((addr, e()))) {
            ConnectError::Transport(m) => assert!(m.starts_with("cannot connect to 127.0.0.1:9:")),
            other => panic!("{other:?}"),
        }
        match connect_failed("localhost", 9, Some((addr, e()))) {
            ConnectError::Transport(m) => {
                assert!(m.starts_with("cannot connect to localhost:9 (127.0.0.1:9):"))
            }
            other => panic!("{other:?}"),
        }
        assert!(server_name("not a name").is_err());
    }
}
