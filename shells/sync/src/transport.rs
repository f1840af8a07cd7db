//! The byte stream under the WebSocket: a TCP socket, plain or wrapped in rustls.
//!
//! It is generic over the socket so that one connection can change hands: the connect
//! thread runs the TLS handshake and the upgrade over a blocking `std::net::TcpStream`, then
//! [`Transport::map_socket`] swaps in a non-blocking `mio::net::TcpStream` around the same
//! file descriptor / socket handle, keeping the TLS session state. From then on every read
//! and write goes through mio's stream, so mio sees each `WouldBlock` itself (on Windows it
//! re-arms its emulated readiness there) and the loop can register the socket directly.

use std::io::{self, Read, Write};

use mio::event::Source;
use mio::{Interest, Registry, Token};
use rustls::{ClientConnection, StreamOwned};

/// Whether a short read lets [`ShortReads`] skip the next read (see there): on unix, where
/// readiness is the kernel's own and edge-triggered; not on Windows, where mio re-arms its
/// emulated readiness only when the system call itself says `WouldBlock`.
pub const SKIP_READ_AFTER_SHORT_READ: bool = cfg!(unix);

/// The loop's socket: it remembers a short read. A `read` that returned fewer bytes than it
/// asked for emptied the kernel's receive queue, so the next `read` could only say
/// `WouldBlock`: it says so at once, without the system call, until [`ShortReads::rearm`]
/// (the loop calls it on each readable event of the socket; with edge-triggered readiness,
/// bytes that arrive after the short read raise a new event). A job's three frames each
/// cost one read instead of two. Only where [`SKIP_READ_AFTER_SHORT_READ`] holds.
#[derive(Debug)]
pub struct ShortReads<S> {
    inner: S,
    drained: bool,
}

impl<S> ShortReads<S> {
    pub fn new(inner: S) -> ShortReads<S> {
        ShortReads {
            inner,
            drained: false,
        }
    }

    /// The socket became readable again: the next read reaches it.
    pub fn rearm(&mut self) {
        self.drained = false;
    }
}

impl<S: Read> Read for ShortReads<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.drained {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.inner.read(buf)?;
        // 0 is the end of the stream, which every later read must see too.
        self.drained = SKIP_READ_AFTER_SHORT_READ && n > 0 && n < buf.len();
        Ok(n)
    }
}

impl<S: Write> Write for ShortReads<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<S: Source> Source for ShortReads<S> {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        self.inner.register(registry, token, interests)
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        self.inner.reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        self.inner.deregister(registry)
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket holding `queued` bytes; counts the reads that reach it.
    struct Queue {
        queued: usize,
        reads: usize,
    }

    impl Read for Queue {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.reads += 1;
            if self.queued == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = self.queued.min(buf.len());
            self.queued -= n;
            Ok(n)
        }
    }

    #[test]
    fn a_short_read_answers_the_next_read_itself_until_rearmed() {
        let mut s = ShortReads::new(Queue {
            queued: 10,
            reads: 0,
        });
        let mut buf = [0u8; 4];
        // Full reads: the queue may hold more.
        assert_eq!(s.read(&mut buf).unwrap(), 4);
        assert_eq!(s.read(&mut buf).unwrap(), 4);
        // Short: the queue is empty now.
        assert_eq!(s.read(&mut buf).unwrap(), 2);
        let e = s.read(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        let expected = if SKIP_READ_AFTER_SHORT_READ { 3 } else { 4 };
        assert_eq!(s.inner.reads, expected, "the read after the short one");
        // New bytes raise a readable event: the loop re-arms and reads them.
        s.inner.queued = 3;
        s.rearm();
        assert_eq!(s.read(&mut buf).unwrap(), 3);
    }

    #[test]
    fn the_end_of_the_stream_is_seen_by_every_read() {
        struct Eof;
        impl Read for Eof {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Ok(0)
            }
        }
        let mut s = ShortReads::new(Eof);
        let mut buf = [0u8; 4];
        assert_eq!(s.read(&mut buf).unwrap(), 0);
        assert_eq!(s.read(&mut buf).unwrap(), 0);
    }
}
