//! `Command::Connect` on a short-lived helper thread with blocking std sockets.
//!
//! DNS, TCP, TLS and the HTTP upgrade block, so none of them runs on the loop. One thread
//! per attempt does, in order:
//!
//! 1. build the upgrade ([`studio_shell::ws::Upgrade`]: bearer header, subprotocol);
//! 2. resolve the host (`ToSocketAddrs`; the OS resolver has no timeout knob, the core's
//!    15 s connect timeout covers a slow one);
//! 3. TCP connect to each address in turn, [`STEP_TIMEOUT`] each;
//! 4. for `wss`, the TLS handshake (rustls, [`studio_shell::tls::client_config`]);
//! 5. write the upgrade request, read the response head, and for a refusal read its body
//!    too (every read and write bounded by [`STEP_TIMEOUT`]);
//! 6. on `101`: switch the socket to non-blocking, hand it to mio
//!    ([`Transport::map_socket`]), and wrap it in a tungstenite `WebSocket` that starts with
//!    the bytes read past the head.
//!
//! The outcome goes back to the loop through a callback (the loop's channel + `Waker`).
//! Errors map to the core's `ConnectError`: `401` -> `Unauthorized { body }`, another
//! status -> `Status { status, body }`, anything else -> `Transport(message)`.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::thread;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use studio_core::worker::{ConnId, ConnectError};
use studio_shell::ws::{websocket_config, Head, Upgrade, STEP_TIMEOUT};
use tungstenite::protocol::Role;
use tungstenite::WebSocket;

use crate::transport::Transport;

/// The session socket as the loop owns it.
pub type Ws = WebSocket<Transport<mio::net::TcpStream>>;

/// Runs [`connect`] on a new thread and calls `deliver` with the outcome (exactly once;
/// inline when no thread can be started).
pub fn spawn(
    conn: ConnId,
    url: String,
    auth_token: studio_core::Secret,
    tls: Arc<ClientConfig>,
    deliver: impl FnOnce(ConnId, Result<Ws, ConnectError>) + Send + 'static,
) {
    let slot = Arc::new(std::sync::Mutex::new(Some(deliver)));
    let in_thread = Arc::clone(&slot);
    let spawned = thread::Builder::new()
        .name(format!("ws-connect-{}", conn.0))
        .spawn(move || {
            let result = connect(&url, auth_token.expose(), &tls);
            if let Some(deliver) = take(&in_thread) {
                deliver(conn, result);
            }
        });
    if let Err(e) = spawned {
        if let Some(deliver) = take(&slot) {
            deliver(
                conn,
                Err(ConnectError::Transport(format!(
                    "cannot start a connect thread: {e}"
                ))),
            );
        }
    }
}

fn take<T>(slot: &std::sync::Mutex<Option<T>>) -> Option<T> {
    slot.lock().unwrap_or_else(|e| e.into_inner()).take()
}

/// Opens the studio session `url` with the bearer `auth_token` (blocking; see the module
/// docs). The returned socket is non-blocking and not yet registered with any poll.
pub fn connect(url: &str, auth_token: &str, tls: &Arc<ClientConfig>) -> Result<Ws, ConnectError> {
    let upgrade = Upgrade::new(url, auth_token)?;
    let target = upgrade.target().clone();
    let at = format!("{}:{}", target.host, target.port);
    let tcp = tcp_connect(&target.host, target.port)?;
    tcp.set_read_timeout(Some(STEP_TIMEOUT))
        .and_then(|()| tcp.set_write_timeout(Some(STEP_TIMEOUT)))
        .map_err(|e| transport(format!("cannot set socket timeouts: {e}")))?;
    // Small frames (heartbeats, acks) should leave at once.
    let _ = tcp.set_nodelay(true);

    let mut stream = if target.tls {
        Transport::Tls(Box::new(tls_handshake(tcp, &target.host, tls, &at)?))
    } else {
        Transport::Plain(tcp)
    };

    stream
        .write_all(upgrade.request())
        .and_then(|()| stream.flush())
        .map_err(|e| {
            transport(format!(
                "sending the upgrade request to {at} failed: {}",
                io_text(&e)
            ))
        })?;

    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head = loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) => {
                return Err(transport(format!(
                    "{at} closed the connection during the websocket upgrade"
                )))
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(transport(format!(
                    "reading the upgrade response from {at} failed: {}",
                    io_text(&e)
                )))
            }
        };
        buf.extend_from_slice(&chunk[..n]);
        if let Some(head) = upgrade.read_head(&buf)? {
            break head;
        }
    };

    match head {
        Head::Refused(mut refusal) => {
            // Read the body (the studio explains a refusal there); stop at its end, EOF,
            // an error or the step timeout, whichever is first.
            while !refusal.is_complete() {
                match stream.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => {
                        refusal.push(&chunk[..n]);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            Err(refusal.into_error())
        }
        Head::Accepted { consumed } => {
            let tail = buf.split_off(consumed);
            let sock = stream.socket();
            sock.set_read_timeout(None)
                .and_then(|()| sock.set_write_timeout(None))
                .and_then(|()| sock.set_nonblocking(true))
                .map_err(|e| transport(format!("cannot make the socket non-blocking: {e}")))?;
            let stream = stream.map_socket(mio::net::TcpStream::from_std);
            Ok(WebSocket::from_partially_read(
                stream,
                tail,
                Role::Client,
                Some(websocket_config()),
            ))
        }
    }
}

/// Resolves `host` and connects to the first address that answers, [`STEP_TIMEOUT`] per
/// address.
fn tcp_connect(host: &str, port: u16) -> Result<TcpStream, ConnectError> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| transport(format!("cannot resolve {host}: {e}")))?
        .collect();
    let mut last = None;
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, STEP_TIMEOUT) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some((addr, e)),
        }
    }
    Err(transport(match last {
        Some((addr, e)) if addr.ip().to_string() == host => {
            format!("cannot connect to {addr}: {}", io_text(&e))
        }
        Some((addr, e)) => format!("cannot connect to {host}:{port} ({addr}): {}", io_text(&e)),
        None => format!("cannot resolve {host}: no addresses"),
    }))
}

/// Runs the TLS handshake to completion so its failures read as TLS failures.
fn tls_handshake(
    mut tcp: TcpStream,
    host: &str,
    config: &Arc<ClientConfig>,
    at: &str,
) -> Result<StreamOwned<ClientConnection, TcpStream>, ConnectError> {
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| transport(format!("`{host}` is not a valid TLS server name: {e}")))?;
    let mut conn = ClientConnection::new(Arc::clone(config), name)
        .map_err(|e| transport(format!("cannot start TLS with {at}: {e}")))?;
    while conn.is_handshaking() {
        match conn.complete_io(&mut tcp) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(transport(format!(
                    "TLS handshake with {at} failed: {}",
                    io_text(&e)
                )))
            }
        }
    }
    Ok(StreamOwned::new(conn, tcp))
}

/// An IO error for a message; a read/write timeout says so plainly.
fn io_text(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("timed out after {} s", STEP_TIMEOUT.as_secs())
        }
        _ => e.to_string(),
    }
}

fn transport(message: String) -> ConnectError {
    ConnectError::Transport(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn tls() -> Arc<ClientConfig> {
        studio_shell::tls::client_config()
    }

    #[test]
    fn a_refused_connection_is_a_transport_error() {
        // Bind, learn the port, close: nothing listens there any more.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        match connect(&format!("ws://127.0.0.1:{port}/x"), "t", &tls()) {
            Err(ConnectError::Transport(m)) => assert!(m.contains("cannot connect"), "{m}"),
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn a_server_that_is_not_tls_fails_the_tls_handshake() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        });
        match connect(&format!("wss://localhost:{port}/x"), "t", &tls()) {
            Err(ConnectError::Transport(m)) => assert!(m.contains("TLS"), "{m}"),
            other => panic!("{:?}", other.map(|_| ())),
        }
        server.join().unwrap();
    }

    #[test]
    fn a_server_closing_mid_upgrade_is_a_transport_error() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut b = [0u8; 1024];
            let _ = s.read(&mut b);
            let _ = s.write_all(b"HTTP/1.1 101 Switching");
        });
        match connect(&format!("ws://127.0.0.1:{port}/x"), "t", &tls()) {
            Err(ConnectError::Transport(m)) => assert!(m.contains("closed"), "{m}"),
            other => panic!("{:?}", other.map(|_| ())),
        }
        server.join().unwrap();
    }

    #[test]
    fn a_bad_url_never_touches_the_network() {
        assert!(matches!(
            connect("https://127.0.0.1/x", "t", &tls()),
            Err(ConnectError::Transport(_))
        ));
    }
}
