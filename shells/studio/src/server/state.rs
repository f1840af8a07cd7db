//! What the server holds besides the studio machine: its connections (an HTTP request
//! being read or answered, an upgraded WebSocket), its stored uploads, and what routing a
//! request produced.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use mio::net::TcpStream;
use tungstenite::WebSocket;

use crate::http::{RequestHead, Response};

pub(super) struct ParsedHead {
    pub(super) head: RequestHead,
    pub(super) head_len: usize,
    pub(super) body_len: usize,
}

pub(super) enum After {
    /// Shut the write half and linger.
    Close,
    /// Hand the socket to tungstenite and tell the studio.
    Upgrade {
        worker_id: String,
        leftover: Vec<u8>,
    },
}

pub(super) enum HttpPhase {
    Reading,
    Writing(After),
    Draining,
}

pub(super) struct HttpConn {
    pub(super) stream: TcpStream,
    pub(super) buf: Vec<u8>,
    pub(super) head: Option<ParsedHead>,
    pub(super) out: Vec<u8>,
    pub(super) out_pos: usize,
    pub(super) phase: HttpPhase,
    pub(super) deadline: Instant,
    pub(super) writable: bool,
    pub(super) continue_sent: bool,
    /// The `holdUploads` fault holds this request: never answered, counted until the
    /// connection goes.
    pub(super) held: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum WsState {
    Open,
    /// The `stall` fault: no reads, no writes, deregistered from the poll.
    Stalled,
    /// A close frame was queued (or received): waiting for the handshake to finish.
    Closing {
        deadline: Instant,
    },
}

pub(super) struct WsConn {
    pub(super) ws: WebSocket<TcpStream>,
    pub(super) worker_id: String,
    pub(super) state: WsState,
    pub(super) writable: bool,
    /// The studio machine knows this connection (Connected fed, not yet forgotten).
    pub(super) known: bool,
    /// tungstenite refused a frame; the input stream is unusable.
    pub(super) poisoned: bool,
    /// Frames held back until `hold_until` (the upload nudge delay), in order.
    pub(super) held: Vec<String>,
    pub(super) hold_until: Option<Instant>,
}

pub(super) enum Kind {
    Http(HttpConn),
    Ws(WsConn),
}

pub(super) struct Conn {
    pub(super) peer: SocketAddr,
    pub(super) kind: Kind,
}

/// What routing produced.
pub(super) enum Outcome {
    Respond(Response),
    /// Never answered (the `holdUploads` fault): the connection waits until the peer goes.
    Hold,
    Upgrade {
        response: Vec<u8>,
        worker_id: String,
    },
}

/// A stored upload.
#[derive(Clone, Debug)]
pub(super) struct StoredFile {
    pub(super) path: PathBuf,
    pub(super) ok: bool,
}
