//! WebSocket connections: frames read in bursts and fed to the studio machine (binary and
//! oversized frames as non-JSON text), frames written without blocking, closes with their
//! linger, and the upload nudge hold (frames to a worker held back, then written in order).

use std::time::Instant;

use studio_core::studio::{ConnId as StudioConnId, StudioInput};
use tracing::{debug, trace, warn};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;

use super::state::{Conn, Kind, WsConn, WsState};
use super::{is_would_block, ConnId, Server, LINGER};

/// WebSocket messages handled per read burst before other connections get a turn.
const WS_BATCH: usize = 64;

/// What a binary frame is fed to the studio machine as: text that is not JSON, so the
/// machine answers `protocol_violation` (binary frames are not part of the contract).
const BINARY_FRAME_TEXT: &str = "<binary frame: only text frames are part of the contract>";

/// What a frame over the size limit is fed as (tungstenite refused to buffer it).
const OVERSIZE_FRAME_TEXT: &str = "<frame over the size limit>";

impl Server {
    pub(super) fn ws_read(&mut self, id: ConnId) {
        loop {
            let mut frames: Vec<String> = Vec::new();
            let mut peer_closed = false;
            let mut gone = false;
            let mut blocked = false;
            let mut worker_close: Option<(u16, String)> = None;
            let known;
            let worker_id;
            {
                let Some(Conn {
                    kind: Kind::Ws(w), ..
                }) = self.conns.get_mut(&id)
                else {
                    return;
                };
                if w.state == WsState::Stalled || w.poisoned {
                    return;
                }
                for _ in 0..WS_BATCH {
                    match w.ws.read() {
                        Ok(Message::Text(t)) => frames.push(t.as_str().to_string()),
                        Ok(Message::Binary(_)) => frames.push(BINARY_FRAME_TEXT.to_string()),
                        Ok(Message::Close(frame)) => {
                            debug!(target: "studio_local::ws", conn = id, "peer closed: {frame:?}");
                            peer_closed = true;
                            if !matches!(w.state, WsState::Closing { .. }) {
                                // The worker started this close (not a reply to ours).
                                worker_close = Some(match &frame {
                                    Some(f) => (u16::from(f.code), f.reason.as_str().to_string()),
                                    None => (1005, String::new()),
                                });
                                w.state = WsState::Closing {
                                    deadline: Instant::now() + LINGER,
                                };
                            }
                            // The next read writes the reply and ends the socket.
                        }
                        Ok(_) => {}
                        Err(tungstenite::Error::Io(e)) if is_would_block(&e) => {
                            blocked = true;
                            break;
                        }
                        Err(tungstenite::Error::Capacity(e)) => {
                            warn!(target: "studio_local::ws", conn = id, "frame refused: {e}");
                            frames.push(OVERSIZE_FRAME_TEXT.to_string());
                            w.poisoned = true;
                            blocked = true;
                            break;
                        }
                        Err(
                            tungstenite::Error::ConnectionClosed
                            | tungstenite::Error::AlreadyClosed,
                        ) => {
                            gone = true;
                            break;
                        }
                        Err(e) => {
                            debug!(target: "studio_local::ws", conn = id, "read failed: {e}");
                            gone = true;
                            break;
                        }
                    }
                }
                known = w.known && (w.state == WsState::Open || peer_closed);
                worker_id = w.worker_id.clone();
            }
            if let Some((code, reason)) = worker_close {
                if let Some(t) = self.tally(&worker_id) {
                    t.last_close_code = Some(code);
                    t.last_close_reason = Some(reason);
                }
            }
            if known {
                for text in frames {
                    trace!(target: "studio_local::ws", conn = id, bytes = text.len(), "frame");
                    if self.intercept_probe_reply(id, &worker_id, &text)
                        || self.drop_result_frame(&worker_id, &text)
                    {
                        continue;
                    }
                    self.studio_input(StudioInput::Frame {
                        conn: StudioConnId(id),
                        text,
                    });
                    if !self.conn_known(id) {
                        break;
                    }
                }
            }
            if peer_closed {
                if let Some(Conn {
                    kind: Kind::Ws(w), ..
                }) = self.conns.get_mut(&id)
                {
                    if w.known {
                        w.known = false;
                        self.lost.push_back(id);
                    }
                }
            }
            if gone {
                self.remove(id);
                return;
            }
            if let Some(Conn {
                kind: Kind::Ws(w), ..
            }) = self.conns.get_mut(&id)
            {
                if w.poisoned && !matches!(w.state, WsState::Closing { .. }) {
                    w.state = WsState::Closing {
                        deadline: Instant::now() + LINGER,
                    };
                }
            }
            if blocked {
                self.ws_flush(id);
                return;
            }
        }
    }

    /// The studio machine still knows the socket (it has not closed it).
    fn conn_known(&self, id: ConnId) -> bool {
        matches!(
            self.conns.get(&id).map(|c| &c.kind),
            Some(Kind::Ws(WsConn { known: true, .. }))
        )
    }

    pub(super) fn ws_send(&mut self, id: ConnId, text: String) {
        let Some(Conn {
            kind: Kind::Ws(w), ..
        }) = self.conns.get_mut(&id)
        else {
            trace!(target: "studio_local::ws", conn = id, "send to a closed connection dropped");
            return;
        };
        if w.state != WsState::Open {
            trace!(target: "studio_local::ws", conn = id, "send to a stalled/closing connection dropped");
            return;
        }
        if w.hold_until.is_some() {
            w.held.push(text);
            return;
        }
        self.ws_write(id, text);
    }

    /// Writes one text frame now.
    fn ws_write(&mut self, id: ConnId, text: String) {
        let Some(Conn {
            kind: Kind::Ws(w), ..
        }) = self.conns.get_mut(&id)
        else {
            return;
        };
        match w.ws.write(Message::text(text)) {
            Ok(()) => {}
            Err(tungstenite::Error::Io(e)) if is_would_block(&e) => {}
            Err(e) => {
                debug!(target: "studio_local::ws", conn = id, "write failed: {e}");
                self.remove(id);
                return;
            }
        }
        self.ws_flush(id);
    }

    pub(super) fn ws_flush(&mut self, id: ConnId) {
        let Some(Conn {
            kind: Kind::Ws(w), ..
        }) = self.conns.get_mut(&id)
        else {
            return;
        };
        if w.state == WsState::Stalled {
            return;
        }
        match w.ws.flush() {
            Ok(()) => self.set_interest(id, false),
            Err(tungstenite::Error::Io(e)) if is_would_block(&e) => self.set_interest(id, true),
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                self.remove(id)
            }
            Err(e) => {
                debug!(target: "studio_local::ws", conn = id, "flush failed: {e}");
                self.remove(id);
            }
        }
    }

    /// Sends a close frame and lingers for the handshake. `tell_studio`: the studio machine
    /// did not ask for this close, so it is told the socket is gone.
    pub(super) fn ws_close(&mut self, id: ConnId, code: u16, reason: &str, tell_studio: bool) {
        // Held frames go out before the close, in order.
        self.ws_release(id);
        let Some(Conn {
            kind: Kind::Ws(w), ..
        }) = self.conns.get_mut(&id)
        else {
            return;
        };
        if tell_studio && w.known {
            self.lost.push_back(id);
        }
        w.known = false;
        match w.state {
            WsState::Stalled => {
                // A half-open peer: nothing reaches it; drop the socket.
                self.remove(id);
                return;
            }
            WsState::Closing { .. } => return,
            WsState::Open => {}
        }
        debug!(target: "studio_local::ws", conn = id, code, reason, "closing");
        w.state = WsState::Closing {
            deadline: Instant::now() + LINGER,
        };
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: truncate_utf8(reason, 123).to_string().into(),
        };
        match w.ws.close(Some(frame)) {
            Ok(()) => {}
            Err(tungstenite::Error::Io(e)) if is_would_block(&e) => {}
            Err(_) => {
                self.remove(id);
                return;
            }
        }
        self.ws_flush(id);
    }

    /// Ends a hold: the held frames are written in order.
    pub(super) fn ws_release(&mut self, id: ConnId) {
        let Some(Conn {
            kind: Kind::Ws(w), ..
        }) = self.conns.get_mut(&id)
        else {
            return;
        };
        if w.hold_until.take().is_none() {
            return;
        }
        let held = std::mem::take(&mut w.held);
        if w.state != WsState::Open {
            return;
        }
        for text in held {
            self.ws_write(id, text);
        }
    }

    /// Holds back the frames to a worker's sockets for the upload nudge delay.
    pub(super) fn hold_worker(&mut self, worker_id: &str) {
        let delay = self.settings.upload_nudge_delay;
        if delay.is_zero() {
            return;
        }
        let until = Instant::now() + delay;
        for c in self.conns.values_mut() {
            if let Kind::Ws(w) = &mut c.kind {
                if w.worker_id == worker_id && w.state == WsState::Open {
                    w.hold_until = Some(w.hold_until.map_or(until, |t| t.max(until)));
                }
            }
        }
    }

    /// The open WebSocket connections of a worker.
    pub(super) fn worker_conns(&self, worker_id: &str, include_stalled: bool) -> Vec<ConnId> {
        self.conns
            .iter()
            .filter(|(_, c)| match &c.kind {
                Kind::Ws(w) => {
                    w.worker_id == worker_id
                        && (w.state == WsState::Open
                            || (include_stalled && w.state == WsState::Stalled))
                }
                Kind::Http(_) => false,
            })
            .map(|(id, _)| *id)
            .collect()
    }
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}
