//! `Command::Connect` as an async task on the session's executor.
//!
//! The steps and every failure message are `studio_shell::connect`'s, shared with the sync
//! shell's connect thread; only the IO is async here:
//!
//! 1. build the upgrade ([`Exchange`]: bearer header, subprotocol);
//! 2. resolve the host on a short-lived thread (`ToSocketAddrs`, as the sync shell);
//! 3. TCP connect (`Async<TcpStream>`) to each address in turn;
//! 4. for `wss`, the TLS handshake (futures-rustls with [`studio_shell::tls::client_config`]);
//! 5. write the upgrade request, then read until [`Exchange::on_read`] has the verdict (a
//!    refusal's body included);
//! 6. on `101`: wrap the stream in an async-tungstenite `WebSocketStream` that starts with
//!    the bytes read past the head.
//!
//! The whole attempt (the lookup too) races one timer, the attempt's [`Deadline`]: a peer
//! answering a byte at a time cannot stretch it. Losing the race drops the attempt (the
//! lookup thread, which cannot be interrupted, finishes on its own).

use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use async_io::{Async, Timer};
use async_tungstenite::WebSocketStream;
use futures_lite::io::{AsyncRead, AsyncWrite};
use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use futures_rustls::TlsConnector;
use rustls::ClientConfig;
use studio_core::worker::ConnectError;
use studio_shell::connect::{
    connect_failed, resolve_failed, server_name, tls_failed, Deadline, Exchange, READ_CHUNK,
};
use studio_shell::ws::websocket_config;
use tungstenite::protocol::Role;

/// The byte stream under the WebSocket: a TCP socket, plain or under TLS.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// The session socket as the loop owns it.
pub type Ws = WebSocketStream<Box<dyn Stream>>;

/// Opens the studio session `url` with the bearer `auth_token`, all of it within
/// `deadline` (see the module docs).
pub async fn connect(
    url: &str,
    auth_token: &str,
    tls: &Arc<ClientConfig>,
    deadline: Duration,
) -> Result<Ws, ConnectError> {
    let exchange = Exchange::new(url, auth_token)?;
    let at = exchange.at().to_string();
    let limit = Deadline::after(deadline);
    future::or(attempt(exchange, tls), async move {
        Timer::after(deadline).await;
        Err(limit.expired(&at))
    })
    .await
}

async fn attempt(mut exchange: Exchange, tls: &Arc<ClientConfig>) -> Result<Ws, ConnectError> {
    let target = exchange.target().clone();
    let tcp = tcp_connect(&target.host, target.port).await?;
    // Small frames (heartbeats, acks) should leave at once.
    let _ = tcp.get_ref().set_nodelay(true);

    let mut stream: Box<dyn Stream> = if target.tls {
        let name = server_name(&target.host)?;
        let tls = TlsConnector::from(Arc::clone(tls))
            .connect(name, tcp)
            .await
            .map_err(|e| tls_failed(exchange.at(), &e))?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    let written = async {
        stream.write_all(exchange.request()).await?;
        stream.flush().await
    };
    written.await.map_err(|e| exchange.write_failed(&e))?;
    let mut chunk = [0u8; READ_CHUNK];
    let tail = loop {
        let read = stream.read(&mut chunk).await;
        if let Some(tail) = exchange.on_read(read, &chunk)? {
            break tail;
        }
    };
    Ok(
        WebSocketStream::from_partially_read(stream, tail, Role::Client, Some(websocket_config()))
            .await,
    )
}

/// Resolves `host` and connects to the first address that answers.
async fn tcp_connect(host: &str, port: u16) -> Result<Async<TcpStream>, ConnectError> {
    let addrs = resolve(host, port)
        .await
        .map_err(|e| resolve_failed(host, &e))?;
    let mut last = None;
    for addr in addrs {
        match Async::<TcpStream>::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some((addr, e)),
        }
    }
    Err(connect_failed(host, port, last))
}

/// The OS resolver (blocking, as the sync shell's) on a short-lived thread of its own. Not
/// a thread pool: an idle pool thread would wake the process twice a second forever.
async fn resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    let (tx, rx) = async_channel::bounded(1);
    let name = host.to_string();
    thread::Builder::new()
        .name("ws-resolve".into())
        .spawn(move || {
            let addrs = (name.as_str(), port)
                .to_socket_addrs()
                .map(Iterator::collect);
            let _ = tx.send_blocking(addrs);
        })?;
    rx.recv().await.unwrap_or_else(|_| {
        Err(io::Error::other(
            "the resolver thread ended without an answer",
        ))
    })
}
