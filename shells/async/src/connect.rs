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
//! Each step (the lookup too) is bounded by [`STEP_TIMEOUT`]: the step future races a
//! timer, and losing reads as an `io::ErrorKind::TimedOut` ("timed out after 15 s").

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::thread;

use async_io::{Async, Timer};
use async_tungstenite::WebSocketStream;
use futures_lite::io::{AsyncRead, AsyncWrite};
use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use futures_rustls::TlsConnector;
use rustls::ClientConfig;
use studio_core::worker::ConnectError;
use studio_shell::connect::{
    connect_failed, resolve_failed, server_name, tls_failed, Exchange, READ_CHUNK, STEP_TIMEOUT,
};
use studio_shell::ws::websocket_config;
use tungstenite::protocol::Role;

/// The byte stream under the WebSocket: a TCP socket, plain or under TLS.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// The session socket as the loop owns it.
pub type Ws = WebSocketStream<Box<dyn Stream>>;

/// Opens the studio session `url` with the bearer `auth_token` (see the module docs).
pub async fn connect(
    url: &str,
    auth_token: &str,
    tls: &Arc<ClientConfig>,
) -> Result<Ws, ConnectError> {
    let mut exchange = Exchange::new(url, auth_token)?;
    let target = exchange.target().clone();
    let tcp = tcp_connect(&target.host, target.port).await?;
    // Small frames (heartbeats, acks) should leave at once.
    let _ = tcp.get_ref().set_nodelay(true);

    let mut stream: Box<dyn Stream> = if target.tls {
        let name = server_name(&target.host)?;
        let handshake = TlsConnector::from(Arc::clone(tls)).connect(name, tcp);
        let tls = step(handshake)
            .await
            .map_err(|e| tls_failed(exchange.at(), &e))?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    step(async {
        stream.write_all(exchange.request()).await?;
        stream.flush().await
    })
    .await
    .map_err(|e| exchange.write_failed(&e))?;
    let mut chunk = [0u8; READ_CHUNK];
    let tail = loop {
        let read = step(stream.read(&mut chunk)).await;
        if let Some(tail) = exchange.on_read(read, &chunk)? {
            break tail;
        }
    };
    Ok(
        WebSocketStream::from_partially_read(stream, tail, Role::Client, Some(websocket_config()))
            .await,
    )
}

/// Resolves `host` and connects to the first address that answers, [`STEP_TIMEOUT`] per
/// address.
async fn tcp_connect(host: &str, port: u16) -> Result<Async<TcpStream>, ConnectError> {
    let addrs = step(resolve(host, port))
        .await
        .map_err(|e| resolve_failed(host, &e))?;
    let mut last = None;
    for addr in addrs {
        match step(Async::<TcpStream>::connect(addr)).await {
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

/// `io` bounded by [`STEP_TIMEOUT`] (a timeout is `io::ErrorKind::TimedOut`).
async fn step<T>(io: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    future::or(io, async {
        Timer::after(STEP_TIMEOUT).await;
        Err(io::ErrorKind::TimedOut.into())
    })
    .await
}
