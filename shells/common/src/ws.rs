//! The WebSocket parts of a shell that do no IO (PROTOCOL.md §5), shared by both shells.
//!
//! * [`Upgrade`]: the client upgrade as a sans-IO exchange. It builds the request bytes
//!   (`Authorization: Bearer <token>`, `Sec-WebSocket-Protocol: studio-worker-v1`) and
//!   checks the response head; a refused upgrade becomes a [`Refusal`] that collects the
//!   response body (by `Content-Length`, chunked, or up to EOF, capped at
//!   [`MAX_REFUSAL_BODY_BYTES`]) and turns into the core's `ConnectError`
//!   (`401` -> `Unauthorized { body }`, any other status -> `Status { status, body }`).
//!   The shell moves the bytes: write [`Upgrade::request`], read until
//!   [`Upgrade::read_head`] answers, then for a refusal read until [`Refusal::push`] says
//!   the body is complete (or EOF / the connect deadline).
//!
//!   The handshake is done here rather than by `tungstenite::client` because a refused
//!   upgrade's error drops the stream there, and with it any part of the body that had not
//!   arrived yet: the studio's explanation of a `401` would be lost.
//! * [`input_for_message`] / [`input_for_error`]: a received WebSocket message or a read
//!   error as the core's `Input` (text -> `Frame`, binary -> `BinaryFrame`, close ->
//!   `Disconnected` with the peer's code, ping/pong -> nothing).
//! * [`close_frame`]: the core's `Close { code, reason }` as a close frame (the reason
//!   clipped to the 123 bytes a control frame can carry).
//! * [`websocket_config`]: tungstenite's limits (message and frame size =
//!   `wire::MAX_FRAME_BYTES`) and its read buffer ([`READ_BUFFER_BYTES`]).

use std::time::Duration;

use studio_core::wire::{MAX_FRAME_BYTES, SUBPROTOCOL};
use studio_core::worker::{ConnId, ConnectError, Input};
use tungstenite::client::{ClientRequestBuilder, IntoClientRequest};
use tungstenite::handshake::client::{generate_request, Response};
use tungstenite::handshake::derive_accept_key;
use tungstenite::handshake::machine::TryParse;
use tungstenite::http::{HeaderMap, Uri};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tungstenite::Message;

/// The deadline of a whole connection attempt: TCP connect, TLS handshake, upgrade request
/// and response together (a peer answering one byte at a time cannot stretch it), the
/// same as the core's connect timeout (`Timings::connect_timeout`), which gives up on the
/// attempt at the same moment. The OS resolver cannot be interrupted: a hung lookup is
/// left to finish on its own thread, the attempt has failed by then.
pub const CONNECT_DEADLINE: Duration = Duration::from_secs(15);

/// How long a close frame (and the peer's answer) may take before the socket is dropped.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest upgrade response head accepted.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// A refused upgrade's body is kept up to this many bytes (the core clips it further for
/// its messages).
pub const MAX_REFUSAL_BODY_BYTES: usize = 8 * 1024;

/// The longest close reason a close frame can carry (125-byte control payload - 2-byte code).
pub const MAX_CLOSE_REASON_BYTES: usize = 123;

/// The most bytes one read of the session socket asks for. tungstenite zero-fills that much
/// of its read buffer before every `read` (its default, 128 KiB, cost the loop thread more
/// than decoding the offer did: a job takes six reads). Studio frames are small (an offer
/// is a few hundred bytes); a larger one is read in several reads of this size.
pub const READ_BUFFER_BYTES: usize = 8 * 1024;

/// tungstenite's limits for the studio session: messages and frames up to
/// [`MAX_FRAME_BYTES`] (larger ones are a read error, never a buffer without bound), read
/// [`READ_BUFFER_BYTES`] at a time.
pub fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES))
}

/// Where an upgrade goes: host (IPv6 without brackets), port, and whether it is `wss`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

/// One client upgrade (see the module docs). Holds the bearer token inside the request
/// bytes only; its `Debug` shows neither.
pub struct Upgrade {
    target: Target,
    request: Vec<u8>,
    accept: String,
}

impl std::fmt::Debug for Upgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgrade")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// The answer to the upgrade request, once its head is complete.
#[derive(Debug)]
pub enum Head {
    /// `101` with every header checked: the WebSocket starts right after the first
    /// `consumed` bytes of the buffer (anything after them is already WebSocket data).
    Accepted { consumed: usize },
    /// Any other status: collect the body, then [`Refusal::into_error`].
    Refused(Refusal),
}

impl Upgrade {
    /// Builds the upgrade of `url` (`ws://` or `wss://`, from `Command::Connect`) with the
    /// bearer `auth_token`. A bad URL or token is a `ConnectError::Transport` (the core
    /// retries with backoff, as it does for every transport failure).
    pub fn new(url: &str, auth_token: &str) -> Result<Upgrade, ConnectError> {
        let uri: Uri = url
            .parse()
            .map_err(|e| transport(format!("invalid websocket URL `{url}`: {e}")))?;
        let tls = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => {
                return Err(transport(format!(
                    "invalid websocket URL `{url}`: the scheme must be ws or wss"
                )))
            }
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| transport(format!("invalid websocket URL `{url}`: no host")))?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let request = ClientRequestBuilder::new(uri)
            .with_header("Authorization", format!("Bearer {auth_token}"))
            .with_sub_protocol(SUBPROTOCOL)
            .into_client_request()
            // The error never quotes the header value (the token).
            .map_err(|e| transport(format!("cannot build the upgrade request: {e}")))?;
        let (request, key) = generate_request(request)
            .map_err(|e| transport(format!("cannot build the upgrade request: {e}")))?;
        Ok(Upgrade {
            target: Target { host, port, tls },
            request,
            accept: derive_accept_key(key.as_bytes()),
        })
    }

    /// Where to connect.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The request bytes to write (they carry the bearer token: never log them).
    pub fn request(&self) -> &[u8] {
        &self.request
    }

    /// Looks at what has been read so far: `Ok(None)` while the head is incomplete,
    /// otherwise the verdict. A malformed or oversized head, or a `101` that fails a check
    /// (missing `Upgrade`/`Connection`, wrong `Sec-WebSocket-Accept`, subprotocol not
    /// echoed), is a `ConnectError::Transport`.
    pub fn read_head(&self, buf: &[u8]) -> Result<Option<Head>, ConnectError> {
        let parsed = <Response as TryParse>::try_parse(buf)
            .map_err(|e| transport(format!("invalid upgrade response: {e}")))?;
        let Some((consumed, response)) = parsed else {
            if buf.len() > MAX_HEAD_BYTES {
                return Err(transport(format!(
                    "upgrade response head larger than {MAX_HEAD_BYTES} bytes"
                )));
            }
            return Ok(None);
        };
        let status = response.status().as_u16();
        if status != 101 {
            let mut refusal = Refusal::new(status, response.headers());
            refusal.push(&buf[consumed..]);
            return Ok(Some(Head::Refused(refusal)));
        }
        self.verify(response.headers())?;
        Ok(Some(Head::Accepted { consumed }))
    }

    fn verify(&self, headers: &HeaderMap) -> Result<(), ConnectError> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if !header("Upgrade").is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket")) {
            return Err(transport(
                "upgrade response lacks `Upgrade: websocket`".to_string(),
            ));
        }
        if !header("Connection").is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        }) {
            return Err(transport(
                "upgrade response lacks `Connection: upgrade`".to_string(),
            ));
        }
        if header("Sec-WebSocket-Accept").map(str::trim) != Some(self.accept.as_str()) {
            return Err(transport(
                "upgrade response has a wrong Sec-WebSocket-Accept".to_string(),
            ));
        }
        match header("Sec-WebSocket-Protocol").map(str::trim) {
            Some(p) if p == SUBPROTOCOL => Ok(()),
            Some(p) => Err(transport(format!(
                "the server chose subprotocol `{p}`, not {SUBPROTOCOL}"
            ))),
            None => Err(transport(format!(
                "the server did not accept subprotocol {SUBPROTOCOL}"
            ))),
        }
    }
}

/// How a refused upgrade's body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// A refused upgrade: its status and the body collected so far.
#[derive(Debug)]
pub struct Refusal {
    status: u16,
    framing: Framing,
    raw: Vec<u8>,
}

impl Refusal {
    fn new(status: u16, headers: &HeaderMap) -> Refusal {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let framing = if matches!(status, 100..=199 | 204 | 304) {
            Framing::Length(0)
        } else if header("Transfer-Encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            Framing::Chunked
        } else if let Some(n) = header("Content-Length").and_then(|v| v.trim().parse().ok()) {
            Framing::Length(n)
        } else {
            Framing::UntilClose
        };
        Refusal {
            status,
            framing,
            raw: Vec::new(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Adds body bytes as they arrive (more than the body needs is ignored). Returns
    /// whether the body is complete or has reached the cap; at EOF, stop reading anyway.
    pub fn push(&mut self, bytes: &[u8]) -> bool {
        let room = self.raw_cap().saturating_sub(self.raw.len());
        self.raw.extend_from_slice(&bytes[..bytes.len().min(room)]);
        self.is_complete()
    }

    /// Whether nothing more needs to be read.
    pub fn is_complete(&self) -> bool {
        if self.raw.len() >= self.raw_cap() {
            return true;
        }
        match self.framing {
            Framing::Length(n) => self.raw.len() >= n,
            Framing::Chunked => decode_chunked(&self.raw).1,
            Framing::UntilClose => false,
        }
    }

    fn raw_cap(&self) -> usize {
        match self.framing {
            Framing::Length(n) => n.min(MAX_REFUSAL_BODY_BYTES),
            // Chunk headers take room too.
            Framing::Chunked => 2 * MAX_REFUSAL_BODY_BYTES,
            Framing::UntilClose => MAX_REFUSAL_BODY_BYTES,
        }
    }

    /// The body as text (lossy UTF-8, at most [`MAX_REFUSAL_BODY_BYTES`]).
    pub fn body(&self) -> String {
        let body = match self.framing {
            Framing::Chunked => decode_chunked(&self.raw).0,
            _ => self.raw.clone(),
        };
        let body = &body[..body.len().min(MAX_REFUSAL_BODY_BYTES)];
        String::from_utf8_lossy(body).into_owned()
    }

    /// The core's error: `401` -> `Unauthorized { body }`, otherwise `Status`.
    pub fn into_error(self) -> ConnectError {
        refusal_error(self.status, self.body())
    }
}

/// A refused upgrade as the core's error: `401` -> `Unauthorized { body }` (terminal),
/// any other status -> `Status { status, body }` (retried with backoff). The body is only
/// quoted in messages, so it is made one line ([`crate::http::single_line`]).
pub fn refusal_error(status: u16, body: String) -> ConnectError {
    let body = crate::http::single_line(&body);
    if status == 401 {
        ConnectError::Unauthorized { body }
    } else {
        ConnectError::Status { status, body }
    }
}

/// Decodes as much of a chunked body as is there (leniently: a malformed size line ends
/// it). Returns the data and whether the final zero-size chunk was seen.
fn decode_chunked(mut raw: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
            return (out, false);
        };
        let line = String::from_utf8_lossy(&raw[..eol]);
        let size = line.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size, 16) else {
            return (out, true);
        };
        if size == 0 {
            return (out, true);
        }
        raw = &raw[eol + 2..];
        let take = size.min(raw.len());
        out.extend_from_slice(&raw[..take]);
        if take < size {
            return (out, false);
        }
        raw = &raw[size..];
        match raw.strip_prefix(b"\r\n") {
            Some(rest) => raw = rest,
            None if raw.len() < 2 => return (out, false),
            None => return (out, true),
        }
    }
}

fn transport(message: String) -> ConnectError {
    ConnectError::Transport(message)
}

/// A received message as the core's input: text -> `Frame`, binary -> `BinaryFrame`,
/// close -> `Disconnected` with the peer's code and reason (a close frame without a code
/// reports 1005, "no status received"), ping / pong / raw frames -> `None` (tungstenite
/// queues the pong itself; the shell only has to keep flushing).
pub fn input_for_message(conn: ConnId, message: Message) -> Option<Input> {
    match message {
        Message::Text(text) => Some(Input::Frame {
            conn,
            text: text.as_str().to_owned(),
        }),
        Message::Binary(bytes) => Some(Input::BinaryFrame {
            conn,
            len: bytes.len(),
        }),
        Message::Close(frame) => Some(match frame {
            Some(f) => Input::Disconnected {
                conn,
                code: Some(u16::from(f.code)),
                reason: f.reason.as_str().to_owned(),
            },
            None => Input::Disconnected {
                conn,
                code: Some(u16::from(CloseCode::Status)),
                reason: String::new(),
            },
        }),
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => None,
    }
}

/// A read or write error (other than `WouldBlock`) as the core's input: the connection is
/// gone without a close code.
pub fn input_for_error(conn: ConnId, error: &tungstenite::Error) -> Input {
    use tungstenite::error::ProtocolError;
    let reason = match error {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            "connection closed".to_string()
        }
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            "connection closed without a closing handshake".to_string()
        }
        tungstenite::Error::Capacity(e) => format!("frame from the studio too large: {e}"),
        tungstenite::Error::Protocol(e) => format!("websocket protocol error: {e}"),
        other => other.to_string(),
    };
    Input::Disconnected {
        conn,
        code: None,
        reason,
    }
}

/// Whether a read/write error only means "try again when the socket is ready".
pub fn would_block(error: &tungstenite::Error) -> bool {
    matches!(error, tungstenite::Error::Io(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Clips a close reason to [`MAX_CLOSE_REASON_BYTES`] on a character boundary.
pub fn clip_close_reason(reason: &str) -> &str {
    if reason.len() <= MAX_CLOSE_REASON_BYTES {
        return reason;
    }
    let mut end = MAX_CLOSE_REASON_BYTES;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// The core's `Command::Close { code, reason }` as a close frame.
pub fn close_frame(code: u16, reason: &str) -> CloseFrame {
    CloseFrame {
        code: CloseCode::from(code),
        reason: clip_close_reason(reason).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::protocol::frame::{Frame, Utf8Bytes};
    use tungstenite::Bytes;

    fn upgrade() -> Upgrade {
        Upgrade::new(
            "ws://127.0.0.1:9790/graphics/api/workers/w-1/connect",
            "tok-1",
        )
        .unwrap()
    }

    fn request_text(u: &Upgrade) -> String {
        String::from_utf8(u.request().to_vec()).unwrap()
    }

    fn key_of(request: &str) -> String {
        request
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap()
            .to_string()
    }

    fn accepted_head(request: &str, protocol: Option<&str>) -> String {
        let accept = derive_accept_key(key_of(request).as_bytes());
        let mut head = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n"
        );
        if let Some(p) = protocol {
            head.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
        }
        head.push_str("\r\n");
        head
    }

    #[test]
    fn the_request_carries_path_bearer_and_subprotocol() {
        let u = upgrade();
        assert_eq!(
            u.target(),
            &Target {
                host: "127.0.0.1".into(),
                port: 9790,
                tls: false
            }
        );
        let text = request_text(&u);
        assert!(
            text.starts_with("GET /graphics/api/workers/w-1/connect HTTP/1.1\r\n"),
            "{text}"
        );
        assert!(text.contains("Host: 127.0.0.1:9790\r\n"), "{text}");
        assert!(text.contains("Upgrade: websocket\r\n"), "{text}");
        assert!(text.contains("Sec-WebSocket-Version: 13\r\n"), "{text}");
        assert!(text.contains("authorization: Bearer tok-1\r\n"), "{text}");
        assert!(
            text.contains("Sec-WebSocket-Protocol: studio-worker-v1\r\n"),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\n"));
        assert!(!format!("{u:?}").contains("tok-1"));
    }

    #[test]
    fn targets_default_ports_and_strip_ipv6_brackets() {
        let t = |url: &str| Upgrade::new(url, "t").unwrap().target().clone();
        assert_eq!(
            t("wss://studio.example/graphics/api/workers/w/connect"),
            Target {
                host: "studio.example".into(),
                port: 443,
                tls: true
            }
        );
        assert_eq!(t("ws://example.org/x").port, 80);
        assert_eq!(t("ws://[::1]:8080/x").host, "::1");
        let q = Upgrade::new("ws://h/graphics/api/workers/w/connect?region=eu", "t").unwrap();
        assert!(request_text(&q).starts_with("GET /graphics/api/workers/w/connect?region=eu "));
    }

    #[test]
    fn bad_urls_and_tokens_are_transport_errors_without_the_token() {
        for url in ["http://h/x", "not a url", "ws:///x", "/x"] {
            assert!(
                matches!(Upgrade::new(url, "t"), Err(ConnectError::Transport(_))),
                "{url}"
            );
        }
        match Upgrade::new("ws://h/x", "bad\ntoken") {
            Err(ConnectError::Transport(m)) => assert!(!m.contains("bad"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_checked_101_is_accepted_and_keeps_the_tail() {
        let u = upgrade();
        let head = accepted_head(&request_text(&u), Some(SUBPROTOCOL));
        let mut buf = head.as_bytes().to_vec();
        assert!(u.read_head(&buf[..buf.len() - 3]).unwrap().is_none());
        buf.extend_from_slice(b"\x81\x02hi");
        match u.read_head(&buf).unwrap() {
            Some(Head::Accepted { consumed }) => assert_eq!(&buf[consumed..], b"\x81\x02hi"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_101_failing_a_check_is_a_transport_error() {
        let u = upgrade();
        let request = request_text(&u);
        let cases = [
            accepted_head(&request, None),
            accepted_head(&request, Some("other")),
            accepted_head(&request, Some(SUBPROTOCOL)).replace("Sec-WebSocket-Accept: ", "X: "),
            accepted_head(&request, Some(SUBPROTOCOL)).replace("Upgrade: websocket", "Upgrade: h2"),
            accepted_head(&request, Some(SUBPROTOCOL))
                .replace("Connection: Upgrade", "Connection: close"),
        ];
        for head in cases {
            assert!(
                matches!(
                    u.read_head(head.as_bytes()),
                    Err(ConnectError::Transport(_))
                ),
                "{head}"
            );
        }
        assert!(matches!(
            u.read_head(b"garbage\r\n\r\n"),
            Err(ConnectError::Transport(_))
        ));
        let huge = vec![b'a'; MAX_HEAD_BYTES + 1];
        assert!(matches!(
            u.read_head(&huge),
            Err(ConnectError::Transport(_))
        ));
    }

    fn refusal(head_and_body: &str) -> Refusal {
        match upgrade().read_head(head_and_body.as_bytes()).unwrap() {
            Some(Head::Refused(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_401_collects_its_body_by_content_length() {
        let mut r = refusal("HTTP/1.1 401 Unauthorized\r\nContent-Length: 12\r\n\r\ninvalid");
        assert_eq!(r.status(), 401);
        assert!(!r.is_complete());
        assert!(r.push(b" toke"));
        assert!(r.push(b"trailing junk ignored"));
        assert_eq!(
            r.into_error(),
            ConnectError::Unauthorized {
                body: "invalid toke".into()
            }
        );
    }

    #[test]
    fn other_statuses_collect_chunked_or_until_close_bodies() {
        let mut r = refusal(
            "HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nbusy \r\n",
        );
        assert!(!r.is_complete());
        assert!(r.push(b"3;ext=1\r\nnow\r\n0\r\n\r\n"));
        assert_eq!(
            r.into_error(),
            ConnectError::Status {
                status: 503,
                body: "busy now".into()
            }
        );

        let mut r = refusal("HTTP/1.1 404 Not Found\r\n\r\nno such");
        assert!(!r.push(b" worker"));
        assert_eq!(r.body(), "no such worker");

        let r = refusal("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n");
        assert!(r.is_complete());
        assert_eq!(
            r.into_error(),
            ConnectError::Status {
                status: 403,
                body: String::new()
            }
        );
    }

    #[test]
    fn refusal_bodies_are_quoted_on_one_line() {
        let body = "{\"error\":\"invalid worker credentials\"}\n";
        let mut r = refusal(&format!(
            "HTTP/1.1 401 Unauthorized\r\nContent-Length: {}\r\n\r\n",
            body.len() + 14
        ));
        assert!(!r.push(body.as_bytes()));
        assert!(r.push(b"line\r\nforged\t\n"));
        assert_eq!(
            r.into_error(),
            ConnectError::Unauthorized {
                body: "{\"error\":\"invalid worker credentials\"} line  forged".into()
            }
        );
    }

    #[test]
    fn refusal_bodies_are_capped() {
        let mut r = refusal("HTTP/1.1 500 Oops\r\nContent-Length: 100000\r\n\r\n");
        assert!(!r.push(&vec![b'x'; MAX_REFUSAL_BODY_BYTES - 1]));
        assert!(r.push(b"yy"));
        assert_eq!(r.body().len(), MAX_REFUSAL_BODY_BYTES);
        let mut r = refusal("HTTP/1.1 500 Oops\r\n\r\n");
        assert!(r.push(&vec![b'x'; MAX_REFUSAL_BODY_BYTES * 2]));
        assert_eq!(r.body().len(), MAX_REFUSAL_BODY_BYTES);
    }

    #[test]
    fn chunked_decoding_is_lenient() {
        assert_eq!(decode_chunked(b""), (vec![], false));
        assert_eq!(decode_chunked(b"2\r\nab"), (b"ab".to_vec(), false));
        assert_eq!(decode_chunked(b"2\r\nab\r\n0\r\n"), (b"ab".to_vec(), true));
        assert_eq!(decode_chunked(b"zz\r\n"), (vec![], true));
        assert_eq!(decode_chunked(b"4\r\nab"), (b"ab".to_vec(), false));
    }

    #[test]
    fn messages_map_to_inputs() {
        let conn = ConnId(7);
        assert_eq!(
            input_for_message(conn, Message::text("{\"type\":\"welcome\"}")),
            Some(Input::Frame {
                conn,
                text: "{\"type\":\"welcome\"}".into()
            })
        );
        assert_eq!(
            input_for_message(conn, Message::binary(vec![1, 2, 3])),
            Some(Input::BinaryFrame { conn, len: 3 })
        );
        assert_eq!(
            input_for_message(
                conn,
                Message::Close(Some(CloseFrame {
                    code: CloseCode::from(4001),
                    reason: Utf8Bytes::from("auth failed"),
                }))
            ),
            Some(Input::Disconnected {
                conn,
                code: Some(4001),
                reason: "auth failed".into()
            })
        );
        assert_eq!(
            input_for_message(conn, Message::Close(None)),
            Some(Input::Disconnected {
                conn,
                code: Some(1005),
                reason: String::new()
            })
        );
        assert_eq!(input_for_message(conn, Message::Ping(Bytes::new())), None);
        assert_eq!(input_for_message(conn, Message::Pong(Bytes::new())), None);
        assert_eq!(
            input_for_message(conn, Message::Frame(Frame::ping(vec![]))),
            None
        );
    }

    #[test]
    fn errors_map_to_a_disconnect_without_code() {
        use std::io;
        let conn = ConnId(2);
        let reason = |e: tungstenite::Error| match input_for_error(conn, &e) {
            Input::Disconnected {
                conn: c,
                code: None,
                reason,
            } if c == conn => reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            reason(tungstenite::Error::ConnectionClosed),
            "connection closed"
        );
        assert!(reason(tungstenite::Error::Io(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "reset by peer"
        )))
        .contains("reset by peer"));
        assert!(reason(tungstenite::Error::Capacity(
            tungstenite::error::CapacityError::MessageTooLong {
                size: 10,
                max_size: 5
            }
        ))
        .contains("too large"));
        assert!(would_block(&tungstenite::Error::Io(
            io::ErrorKind::WouldBlock.into()
        )));
        assert!(!would_block(&tungstenite::Error::ConnectionClosed));
    }

    #[test]
    fn close_frames_carry_the_code_and_a_clipped_reason() {
        let f = close_frame(1000, "session ended");
        assert_eq!(u16::from(f.code), 1000);
        assert_eq!(f.reason.as_str(), "session ended");
        assert_eq!(u16::from(close_frame(4001, "").code), 4001);
        let long = "é".repeat(100); // 200 bytes
        let clipped = clip_close_reason(&long);
        assert!(clipped.len() <= MAX_CLOSE_REASON_BYTES);
        assert_eq!(clipped.len(), 122);
        assert_eq!(clip_close_reason("short"), "short");
    }

    #[test]
    fn the_websocket_config_uses_the_core_frame_limit() {
        let c = websocket_config();
        assert_eq!(c.max_message_size, Some(MAX_FRAME_BYTES));
        assert_eq!(c.max_frame_size, Some(MAX_FRAME_BYTES));
        assert_eq!(c.read_buffer_size, READ_BUFFER_BYTES);
    }

    #[test]
    fn a_message_larger_than_the_read_buffer_is_read_whole() {
        use tungstenite::protocol::{Role, WebSocket};
        // What a studio sends (unmasked, server role), in bytes.
        let text = "x".repeat(5 * READ_BUFFER_BYTES + 17);
        let mut server =
            WebSocket::from_raw_socket(std::io::Cursor::new(Vec::new()), Role::Server, None);
        server.send(Message::text(text.clone())).unwrap();
        let wire = server.get_ref().get_ref().clone();
        let mut client = WebSocket::from_raw_socket(
            std::io::Cursor::new(wire),
            Role::Client,
            Some(websocket_config()),
        );
        assert_eq!(client.read().unwrap(), Message::text(text));
    }
}
