//! `Command::Connect` as an async task on the session's executor.
//!
//! The steps and every failure message are `studio_shell::connect`'s, shared with the sync
//! shell's connect thread; only the IO is async here:
//!
//! 1. build the upgrade ([`Exchange`]: bearer header, subprotocol);
//! 2. resolve the host and TCP-connect to each address in turn, on a short-lived thread
//!    ([`studio_shell::connect::tcp_connect`], blocking, as the sync shell), then register
//!    the socket with the session thread's [`Reactor`] ([`Tcp`]);
//! 3. for `wss`, the TLS handshake (futures-rustls with [`studio_shell::tls::client_config`]);
//! 4. write the upgrade request, then read until [`Exchange::on_read`] has the verdict (a
//!    refusal's body included);
//! 5. on `101`: wrap the stream in an async-tungstenite `WebSocketStream` that starts with
//!    the bytes read past the head.
//!
//! The whole attempt races one timer of the reactor, the attempt's deadline (the connects
//! on the thread are bounded by the same [`Deadline`]): a peer answering a byte at a time
//! cannot stretch it. Losing the race drops the attempt (the thread, whose lookup cannot be
//! interrupted, finishes on its own).

use std::net::TcpStream;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use async_tungstenite::WebSocketStream;
use futures_lite::io::{AsyncRead, AsyncWrite};
use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use futures_rustls::TlsConnector;
use rustls::ClientConfig;
use studio_core::worker::ConnectError;
use studio_shell::connect::{
    server_name, tcp_connect, tls_failed, transport, Deadline, Exchange, READ_CHUNK,
};
use studio_shell::ws::websocket_config;
use tungstenite::protocol::Role;

use crate::reactor::{Reactor, Tcp};

/// The byte stream under the WebSocket: a TCP socket, plain or under TLS.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// The session socket as the loop owns it.
pub type Ws = WebSocketStream<Box<dyn Stream>>;

/// Opens the studio session `url` with the bearer `auth_token`, all of it within
/// `deadline` (see the module docs), its socket registered with `reactor`: the reactor of
/// the thread that runs this future.
pub async fn connect(
    url: &str,
    auth_token: &str,
    tls: &Arc<ClientConfig>,
    deadline: Duration,
    reactor: &Arc<Reactor>,
) -> Result<Ws, ConnectError> {
    let exchange = Exchange::new(url, auth_token)?;
    let at = exchange.at().to_string();
    let limit = Deadline::after(deadline);
    let timer = reactor.sleep_until(Instant::now() + deadline);
    future::or(attempt(exchange, tls, limit, reactor), async move {
        timer.await;
        Err(limit.expired(&at))
    })
    .await
}

async fn attempt(
    mut exchange: Exchange,
    tls: &Arc<ClientConfig>,
    limit: Deadline,
    reactor: &Arc<Reactor>,
) -> Result<Ws, ConnectError> {
    let target = exchange.target().clone();
    let tcp = connect_thread(&target.host, target.port, limit).await?;
    let tcp = Tcp::new(reactor, tcp)
        .map_err(|e| transport(format!("cannot make the socket non-blocking: {e}")))?;
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

/// [`tcp_connect`] (the OS resolver, then a blocking connect to each address, within
/// `limit`) on a short-lived thread of its own. Not a thread pool: an idle pool thread would
/// wake the process twice a second forever.
async fn connect_thread(host: &str, port: u16, limit: Deadline) -> Result<TcpStream, ConnectError> {
    let (tx, rx) = async_channel::bounded(1);
    let name = host.to_string();
    thread::Builder::new()
        .name("ws-connect".into())
        .spawn(move || {
            let _ = tx.send_blocking(tcp_connect(&name, port, &limit));
        })
        .map_err(|e| transport(format!("cannot start the connect thread: {e}")))?;
    rx.recv().await.unwrap_or_else(|_| {
        Err(transport(
            "the connect thread ended without an answer".to_string(),
        ))
    })
}
