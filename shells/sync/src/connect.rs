//! `Command::Connect` on a short-lived helper thread with blocking std sockets.
//!
//! DNS, TCP, TLS and the HTTP upgrade block, so none of them runs on the loop. One thread
//! per attempt runs the steps of `studio_shell::connect` (the upgrade exchange, its
//! refused-body reading and every failure message are shared with the async shell):
//!
//! 1. build the upgrade ([`Exchange`]: bearer header, subprotocol);
//! 2. resolve the host (`ToSocketAddrs`; the OS resolver has no timeout knob, the core's
//!    connect timeout gives up on a slow one and the thread ends when the lookup does);
//! 3. TCP connect to each address in turn;
//! 4. for `wss`, the TLS handshake (rustls, [`studio_shell::tls::client_config`]);
//! 5. write the upgrade request, then read until [`Exchange::on_read`] has the verdict
//!    (a refusal's body included);
//! 6. on `101`: switch the socket to non-blocking, hand it to mio
//!    ([`Transport::map_socket`]), and wrap it in a tungstenite `WebSocket` that starts with
//!    the bytes read past the head.
//!
//! Steps 3 to 5 share one [`Deadline`]: each connect, read and write may take only what is
//! left of it (the socket's timeouts), so a peer answering a byte at a time cannot hold
//! the thread past it.
//!
//! The outcome goes back to the loop through a callback (the loop's channel + `Waker`).
//! Errors map to the core's `ConnectError`: `401` -> `Unauthorized { body }`, another
//! status -> `Status { status, body }`, anything else -> `Transport(message)`.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::thread;

use rustls::{ClientConfig, ClientConnection, StreamOwned};
use std::time::Duration;
use studio_core::worker::{ConnId, ConnectError};

use studio_shell::connect::{
    server_name, tcp_connect, tls_failed, transport, Deadline, Exchange, READ_CHUNK,
};
use studio_shell::ws::websocket_config;
use tungstenite::protocol::Role;
use tungstenite::WebSocket;

use crate::transport::{ShortReads, Transport};

/// The session socket as the loop owns it.
pub type Ws = WebSocket<Transport<ShortReads<mio::net::TcpStream>>>;

/// Runs [`connect`] on a new thread and calls `deliver` with the outcome (exactly once;
/// inline when no thread can be started).
pub fn spawn(
    conn: ConnId,
    url: String,
    auth_token: studio_core::Secret,
    tls: Arc<ClientConfig>,
    deadline: Duration,
    deliver: impl FnOnce(ConnId, Result<Ws, ConnectError>) + Send + 'static,
) {
    let slot = Arc::new(std::sync::Mutex::new(Some(deliver)));
    let in_thread = Arc::clone(&slot);
    let spawned = thread::Builder::new()
        .name(format!("ws-connect-{}", conn.0))
        .spawn(move || {
            let result = connect(&url, auth_token.expose(), &tls, deadline);
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
/// docs), all of it within `deadline`. The returned socket is non-blocking and not yet
/// registered with any poll.
pub fn connect(
    url: &str,
    auth_token: &str,
    tls: &Arc<ClientConfig>,
    deadline: Duration,
) -> Result<Ws, ConnectError> {
    let deadline = Deadline::after(deadline);
    let mut exchange = Exchange::new(url, auth_token)?;
    let target = exchange.target().clone();
    let tcp = tcp_connect(&target.host, target.port, &deadline)?;
    // Small frames (heartbeats, acks) should leave at once.
    let _ = tcp.set_nodelay(true);

    let mut stream = if target.tls {
        Transport::Tls(Box::new(tls_handshake(
            tcp,
            &target.host,
            tls,
            exchange.at(),
            &deadline,
        )?))
    } else {
        Transport::Plain(tcp)
    };
    bound(stream.socket(), &deadline, exchange.at())?;
    stream
        .write_all(exchange.request())
        .and_then(|()| stream.flush())
        .map_err(|e| exchange.write_failed(&e))?;
    let mut chunk = [0u8; READ_CHUNK];
    let tail = loop {
        bound(stream.socket(), &deadline, exchange.at())?;
        let read = stream.read(&mut chunk);
        if let Some(tail) = exchange.on_read(read, &chunk)? {
            break tail;
        }
    };

    let sock = stream.socket();
    sock.set_read_timeout(None)
        .and_then(|()| sock.set_write_timeout(None))
        .and_then(|()| sock.set_nonblocking(true))
        .map_err(|e| transport(format!("cannot make the socket non-blocking: {e}")))?;
    let stream = stream.map_socket(|s| ShortReads::new(mio::net::TcpStream::from_std(s)));
    Ok(WebSocket::from_partially_read(
        stream,
        tail,
        Role::Client,
        Some(websocket_config()),
    ))
}

/// Gives the socket's next reads and writes what is left of `deadline`, or fails the
/// attempt once it passed.
fn bound(sock: &TcpStream, deadline: &Deadline, at: &str) -> Result<(), ConnectError> {
    let left = deadline.left(at)?;
    sock.set_read_timeout(Some(left))
        .and_then(|()| sock.set_write_timeout(Some(left)))
        .map_err(|e| transport(format!("cannot set socket timeouts: {e}")))
}

/// Runs the TLS handshake to completion (within `deadline`) so its failures read as TLS
/// failures.
fn tls_handshake(
    mut tcp: TcpStream,
    host: &str,
    config: &Arc<ClientConfig>,
    at: &str,
    deadline: &Deadline,
) -> Result<StreamOwned<ClientConnection, TcpStream>, ConnectError> {
    let mut conn = ClientConnection::new(Arc::clone(config), server_name(host)?)
        .map_err(|e| transport(format!("cannot start TLS with {at}: {e}")))?;
    while conn.is_handshaking() {
        bound(&tcp, deadline, at)?;
        match conn.complete_io(&mut tcp) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(tls_failed(at, &e)),
        }
    }
    Ok(StreamOwned::new(conn, tcp))
}
