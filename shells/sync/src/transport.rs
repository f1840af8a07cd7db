//! The byte stream under the WebSocket: a TCP socket, plain or wrapped in rustls.
//!
//! It is generic over the socket so that one connection can change hands: the connect
//! thread runs the TLS handshake and the upgrade over a blocking `std::net::TcpStream`, then
//! [`Transport::map_socket`] swaps in a non-blocking `mio::net::TcpStream` around the same
//! file descriptor / socket handle, keeping the TLS session state. From then on every read
//! and write goes through mio's stream, so mio sees each `WouldBlock` itself (on Windows it
//! re-arms its emulated readiness there) and the loop can register the socket directly.

use std::io::{self, Read, Write};

use rustls::{ClientConnection, StreamOwned};

/// A socket, plain (`ws://`) or under TLS (`wss://`).
pub enum Transport<S: Read + Write> {
    Plain(S),
    Tls(Box<StreamOwned<ClientConnection, S>>),
}

impl<S: Read + Write> Transport<S> {
    /// The socket.
    pub fn socket(&self) -> &S {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(t) => &t.sock,
        }
    }

    /// The socket, mutably (for registering it with mio).
    pub fn socket_mut(&mut self) -> &mut S {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(t) => &mut t.sock,
        }
    }

    /// The same connection over another handle of the socket (TLS state kept).
    pub fn map_socket<T: Read + Write>(self, f: impl FnOnce(S) -> T) -> Transport<T> {
        match self {
            Transport::Plain(s) => Transport::Plain(f(s)),
            Transport::Tls(t) => {
                let StreamOwned { conn, sock } = *t;
                Transport::Tls(Box::new(StreamOwned::new(conn, f(sock))))
            }
        }
    }

    /// Whether this is a TLS connection.
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }
}

impl<S: Read + Write> Read for Transport<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
            Transport::Tls(t) => t.read(buf),
        }
    }
}

impl<S: Read + Write> Write for Transport<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write(buf),
            Transport::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.flush(),
            Transport::Tls(t) => t.flush(),
        }
    }
}

impl<S: Read + Write> std::fmt::Debug for Transport<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_tls() {
            "Transport::Tls"
        } else {
            "Transport::Plain"
        })
    }
}
