//! HTTP connections: a request is read (head capped, body by `Content-Length`, a
//! `100 Continue` when asked for), routed, answered with `Connection: close`, and the socket
//! lingers with its write half shut; an accepted upgrade hands the socket to tungstenite.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::time::Instant;

use mio::{Interest, Token};
use studio_core::studio::{ConnId as StudioConnId, StudioInput};
use tracing::{debug, info};
use tungstenite::protocol::Role;
use tungstenite::WebSocket;

use super::state::{After, Conn, HttpPhase, Kind, Outcome, ParsedHead, WsConn, WsState};
use super::{
    is_would_block, ConnId, Server, HELD_UPLOAD_LIMIT, HTTP_IDLE_TIMEOUT, LINGER, MAX_HEAD_BYTES,
};
use crate::http::{self, HeadParse, Response};

/// Most bytes reserved up front for a request body (a large announced body grows the
/// buffer as it actually arrives).
const RESERVE_LIMIT: usize = 8 * 1024 * 1024;

/// Bytes read per `read` call on HTTP connections.
const READ_CHUNK: usize = 64 * 1024;

impl Server {
    pub(super) fn http_read(&mut self, id: ConnId) {
        let mut chunk = vec![0u8; READ_CHUNK];
        loop {
            let Some(Conn {
                kind: Kind::Http(h),
                ..
            }) = self.conns.get_mut(&id)
            else {
                return;
            };
            match h.phase {
                // An upgrade answer is on its way: the bytes after it belong to the socket.
                HttpPhase::Writing(After::Upgrade { .. }) => return,
                HttpPhase::Writing(After::Close) | HttpPhase::Draining => {
                    match h.stream.read(&mut chunk) {
                        Ok(0) => {
                            if matches!(h.phase, HttpPhase::Draining) {
                                self.remove(id);
                            }
                            // While writing, the answer still goes out; reads stop.
                            return;
                        }
                        Ok(_) => continue,
                        Err(e) if is_would_block(&e) => return,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => {
                            self.remove(id);
                            return;
                        }
                    }
                }
                HttpPhase::Reading => {}
            }
            // Reading a request: never past its end.
            let want = match &h.head {
                None => READ_CHUNK,
                Some(p) => (p.head_len + p.body_len)
                    .saturating_sub(h.buf.len())
                    .min(READ_CHUNK),
            };
            if want == 0 {
                self.http_request_ready(id);
                return;
            }
            match h.stream.read(&mut chunk[..want]) {
                Ok(0) => {
                    let partial = !h.buf.is_empty();
                    if partial {
                        let msg = if h.head.is_none() {
                            "connection closed before the end of the request head"
                        } else {
                            "connection closed before the end of the request body"
                        };
                        self.respond(id, Response::error(400, msg), false);
                    } else {
                        self.remove(id);
                    }
                    return;
                }
                Ok(n) => {
                    h.buf.extend_from_slice(&chunk[..n]);
                    h.deadline = Instant::now() + HTTP_IDLE_TIMEOUT;
                    if h.head.is_none() {
                        match http::parse_head(&h.buf, MAX_HEAD_BYTES) {
                            Ok(HeadParse::Incomplete) => continue,
                            Ok(HeadParse::Done(head, head_len)) => {
                                let admitted = self
                                    .admit(&head)
                                    .and_then(|cap| head.body_length().map(|len| (cap, len)));
                                let (max_body, body_len) = match admitted {
                                    Ok(v) => v,
                                    Err(f) => {
                                        let mut r = Response::error(f.status, &f.message);
                                        if f.status == 401 {
                                            r = r.with_header("WWW-Authenticate", "Bearer");
                                        }
                                        self.respond(id, r, head.method == "HEAD");
                                        return;
                                    }
                                };
                                let Some(Conn {
                                    kind: Kind::Http(h),
                                    ..
                                }) = self.conns.get_mut(&id)
                                else {
                                    return;
                                };
                                if body_len > max_body as u64 {
                                    let r = Response::error(
                                        413,
                                        &format!(
                                            "request body of {body_len} bytes is over the {max_body}-byte limit"
                                        ),
                                    );
                                    self.respond(id, r, false);
                                    return;
                                }
                                let body_len = body_len as usize;
                                let expects = head.expects_continue();
                                // Grow as the body arrives; reserve a bounded head start.
                                h.buf.reserve(
                                    (head_len + body_len)
                                        .saturating_sub(h.buf.len())
                                        .min(RESERVE_LIMIT),
                                );
                                h.head = Some(ParsedHead {
                                    head,
                                    head_len,
                                    body_len,
                                });
                                if expects && h.buf.len() < head_len + body_len && !h.continue_sent
                                {
                                    h.continue_sent = true;
                                    h.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                                    self.http_flush(id);
                                }
                            }
                            Err(f) => {
                                self.respond(id, Response::error(f.status, &f.message), false);
                                return;
                            }
                        }
                    }
                }
                Err(e) if is_would_block(&e) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    debug!(target: "studio_local::http", conn = id, "read failed: {e}");
                    self.remove(id);
                    return;
                }
            }
        }
    }

    /// A whole request is buffered: route it.
    fn http_request_ready(&mut self, id: ConnId) {
        let Some(Conn {
            kind: Kind::Http(h),
            peer,
        }) = self.conns.get_mut(&id)
        else {
            return;
        };
        let peer = *peer;
        let Some(parsed) = h.head.take() else {
            return;
        };
        let mut buf = std::mem::take(&mut h.buf);
        let leftover = buf.split_off(parsed.head_len + parsed.body_len);
        let body = buf.split_off(parsed.head_len);
        let head = parsed.head;
        let head_only = head.method == "HEAD";
        let outcome = self.route(id, &head, &body);
        match outcome {
            Outcome::Hold => {
                info!(
                    target: "studio_local::http",
                    "{peer} {} {} -> held (never answered)",
                    head.method,
                    head.path
                );
                if let Some(Conn {
                    kind: Kind::Http(h),
                    ..
                }) = self.conns.get_mut(&id)
                {
                    h.held = true;
                    // Until the peer hangs up (it reads EOF then), not the idle timeout.
                    h.deadline = Instant::now() + HELD_UPLOAD_LIMIT;
                }
            }
            Outcome::Respond(r) => {
                info!(
                    target: "studio_local::http",
                    "{peer} {} {} -> {} ({} bytes)",
                    head.method,
                    head.path,
                    r.status,
                    r.body.len()
                );
                self.respond(id, r, head_only);
                // Commands a route left in the machine (see `route_complete`).
                self.drain();
            }
            Outcome::Upgrade {
                response,
                worker_id,
            } => {
                info!(
                    target: "studio_local::http",
                    "{peer} {} {} -> 101 (worker {worker_id})",
                    head.method,
                    head.path
                );
                let Some(Conn {
                    kind: Kind::Http(h),
                    ..
                }) = self.conns.get_mut(&id)
                else {
                    return;
                };
                h.out = response;
                h.out_pos = 0;
                h.phase = HttpPhase::Writing(After::Upgrade {
                    worker_id,
                    leftover,
                });
                self.http_flush(id);
            }
        }
    }

    pub(super) fn respond(&mut self, id: ConnId, response: Response, head_only: bool) {
        let Some(Conn {
            kind: Kind::Http(h),
            ..
        }) = self.conns.get_mut(&id)
        else {
            return;
        };
        h.head = None;
        h.buf = Vec::new();
        // A `100 Continue` not yet written is dropped: the final answer replaces it.
        if h.out_pos >= h.out.len() {
            h.out.clear();
            h.out_pos = 0;
        }
        h.out.extend_from_slice(&response.to_bytes(head_only));
        h.phase = HttpPhase::Writing(After::Close);
        h.deadline = Instant::now() + HTTP_IDLE_TIMEOUT;
        self.http_flush(id);
    }

    pub(super) fn http_flush(&mut self, id: ConnId) {
        let Some(Conn {
            kind: Kind::Http(h),
            ..
        }) = self.conns.get_mut(&id)
        else {
            return;
        };
        while h.out_pos < h.out.len() {
            match h.stream.write(&h.out[h.out_pos..]) {
                Ok(0) => {
                    self.remove(id);
                    return;
                }
                Ok(n) => {
                    h.out_pos += n;
                    h.deadline = Instant::now() + HTTP_IDLE_TIMEOUT;
                }
                Err(e) if is_would_block(&e) => {
                    self.set_interest(id, true);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.remove(id);
                    return;
                }
            }
        }
        h.out.clear();
        h.out_pos = 0;
        let phase = std::mem::replace(&mut h.phase, HttpPhase::Draining);
        match phase {
            HttpPhase::Writing(After::Close) => {
                let _ = h.stream.shutdown(Shutdown::Write);
                h.deadline = Instant::now() + LINGER;
                self.set_interest(id, false);
                self.http_read(id);
            }
            HttpPhase::Writing(After::Upgrade {
                worker_id,
                leftover,
            }) => self.finish_upgrade(id, worker_id, leftover),
            other => {
                // Reading (a 100 Continue went out) or draining: nothing changes.
                h.phase = other;
                self.set_interest(id, false);
            }
        }
    }

    fn finish_upgrade(&mut self, id: ConnId, worker_id: String, leftover: Vec<u8>) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        let Kind::Http(h) = conn.kind else {
            return;
        };
        let mut stream = h.stream;
        if h.writable {
            let _ = self.poll.registry().reregister(
                &mut stream,
                Token(id as usize),
                Interest::READABLE,
            );
        }
        let ws = if leftover.is_empty() {
            WebSocket::from_raw_socket(stream, Role::Server, Some(self.ws_config))
        } else {
            WebSocket::from_partially_read(stream, leftover, Role::Server, Some(self.ws_config))
        };
        self.conns.insert(
            id,
            Conn {
                peer: conn.peer,
                kind: Kind::Ws(WsConn {
                    ws,
                    worker_id: worker_id.clone(),
                    state: WsState::Open,
                    writable: false,
                    known: true,
                    poisoned: false,
                    held: Vec::new(),
                    hold_until: None,
                }),
            },
        );
        if let Some(t) = self.tally(&worker_id) {
            t.connections += 1;
        }
        self.studio_input(StudioInput::Connected {
            conn: StudioConnId(id),
            worker_id,
        });
        // Frames may have arrived while the 101 was being written.
        self.ws_read(id);
    }
}
