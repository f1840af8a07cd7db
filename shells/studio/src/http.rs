//! A small, strict HTTP/1.1 server-side codec: the request head, the framing of the body,
//! responses, and `multipart/form-data` bodies. Pure functions over byte slices (the event
//! loop owns the sockets), so every malformed input is a value, never a panic.

use std::fmt::Write as _;

/// Most headers accepted in one request head.
pub const MAX_HEADERS: usize = 100;
/// Most parts accepted in one multipart body.
pub const MAX_PARTS: usize = 64;
/// Largest header section of one multipart part.
pub const MAX_PART_HEAD_BYTES: usize = 16 * 1024;

/// A parsed request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// The raw request target (origin form: path and query).
    pub target: String,
    /// The path part of the target, still percent-encoded.
    pub path: String,
    /// The query, without `?`.
    pub query: Option<String>,
    /// `HTTP/1.x`: the `x`.
    pub minor_version: u8,
    /// Header names as sent (compare case-insensitively), values trimmed.
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of the header `name`.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether a comma-separated header (`Connection`, `Upgrade`, ...) lists `token`
    /// (case-insensitive), across repeated headers.
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers_named(name)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// The token of `Authorization: Bearer <token>` (scheme case-insensitive).
    pub fn bearer(&self) -> Option<&str> {
        let value = self.header("authorization")?.trim();
        let (scheme, rest) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let token = rest.trim();
        (!token.is_empty()).then_some(token)
    }

    /// The body length announced by the head: 0 without `Content-Length`.
    pub fn body_length(&self) -> Result<u64, HttpFault> {
        if self.header("transfer-encoding").is_some() {
            return Err(HttpFault::new(
                411,
                "Transfer-Encoding (chunked) request bodies are not supported; send Content-Length",
            ));
        }
        let mut length: Option<u64> = None;
        for value in self.headers_named("content-length") {
            for item in value.split(',') {
                let item = item.trim();
                if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(HttpFault::new(400, "Content-Length is not a number"));
                }
                let n: u64 = item
                    .parse()
                    .map_err(|_| HttpFault::new(400, "Content-Length is out of range"))?;
                match length {
                    Some(prev) if prev != n => {
                        return Err(HttpFault::new(400, "conflicting Content-Length headers"))
                    }
                    _ => length = Some(n),
                }
            }
        }
        Ok(length.unwrap_or(0))
    }

    /// `Expect: 100-continue`.
    pub fn expects_continue(&self) -> bool {
        self.header("expect")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"))
    }
}

/// A request the codec refuses: the status to answer and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpFault {
    pub status: u16,
    pub message: String,
}

impl HttpFault {
    pub fn new(status: u16, message: impl Into<String>) -> HttpFault {
        HttpFault {
            status,
            message: message.into(),
        }
    }
}

/// The outcome of looking for a head in the bytes received so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeadParse {
    /// Not all of the head has arrived yet.
    Incomplete,
    /// The head and its length in bytes (including the blank line).
    Done(RequestHead, usize),
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let last_start = haystack.len() - needle.len();
    let mut i = 0;
    while i <= last_start {
        match haystack[i..=last_start].iter().position(|&b| b == first) {
            None => return None,
            Some(off) => {
                let at = i + off;
                if &haystack[at..at + needle.len()] == needle {
                    return Some(at);
                }
                i = at + 1;
            }
        }
    }
    None
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses the request head at the start of `buf`, which holds at most `cap` head bytes
/// that matter: a head longer than `cap` is a 431.
pub fn parse_head(buf: &[u8], cap: usize) -> Result<HeadParse, HttpFault> {
    // RFC 9112 §2.2: ignore at least one empty line before the request line.
    let mut start = 0;
    while buf[start..].starts_with(b"\r\n") {
        start += 2;
    }
    let window = &buf[..buf.len().min(cap.saturating_add(4))];
    let Some(end) = find(&window[start.min(window.len())..], b"\r\n\r\n").map(|e| e + start) else {
        if buf.len() >= cap {
            return Err(HttpFault::new(
                431,
                format!("request head larger than {cap} bytes"),
            ));
        }
        return Ok(HeadParse::Incomplete);
    };
    if end > cap {
        return Err(HttpFault::new(
            431,
            format!("request head larger than {cap} bytes"),
        ));
    }
    let head = std::str::from_utf8(&buf[start..end])
        .map_err(|_| HttpFault::new(400, "request head is not valid UTF-8"))?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpFault::new(
            400,
            "malformed request line (expected `METHOD /path HTTP/1.1`)",
        ));
    };
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(HttpFault::new(400, "malformed request method"));
    }
    if !target.starts_with('/') || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(HttpFault::new(
            400,
            "request target must be an origin-form path starting with `/`",
        ));
    }
    let minor_version = match version {
        "HTTP/1.1" => 1,
        "HTTP/1.0" => 0,
        v if v.starts_with("HTTP/") => {
            return Err(HttpFault::new(
                505,
                format!("{v} is not supported (HTTP/1.0 or HTTP/1.1 only)"),
            ))
        }
        _ => return Err(HttpFault::new(400, "malformed HTTP version")),
    };
    let mut headers = Vec::new();
    for line in lines {
        if line.starts_with([' ', '\t']) {
            return Err(HttpFault::new(
                400,
                "obsolete header line folding is not accepted",
            ));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(HttpFault::new(400, "malformed header line (no `:`)"));
        };
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(HttpFault::new(400, "malformed header name"));
        }
        let value = value.trim_matches([' ', '\t']);
        if value.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f) {
            return Err(HttpFault::new(400, "control character in a header value"));
        }
        if headers.len() >= MAX_HEADERS {
            return Err(HttpFault::new(
                431,
                format!("more than {MAX_HEADERS} headers"),
            ));
        }
        headers.push((name.to_string(), value.to_string()));
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    let head = RequestHead {
        method: method.to_string(),
        target: target.to_string(),
        path,
        query,
        minor_version,
        headers,
    };
    if head.minor_version == 1 && head.header("host").is_none() {
        return Err(HttpFault::new(
            400,
            "HTTP/1.1 request without a Host header",
        ));
    }
    Ok(HeadParse::Done(head, end + 4))
}

/// Splits a path into percent-decoded segments (`/a/b%20c/` -> `["a", "b c"]`; empty
/// segments from doubled or trailing slashes are dropped).
pub fn path_segments(path: &str) -> Result<Vec<String>, HttpFault> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect()
}

fn percent_decode(s: &str) -> Result<String, HttpFault> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| HttpFault::new(400, "malformed percent-encoding in the path"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| HttpFault::new(400, "path is not valid UTF-8"))
}

/// The standard reason phrase of a status (the `http` crate's table, through tungstenite).
pub fn reason(status: u16) -> &'static str {
    tungstenite::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|code| code.canonical_reason())
        .unwrap_or("Status")
}

/// A response to serialise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// A JSON response.
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        let mut body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
        body.push(b'\n');
        Response {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body,
        }
    }

    /// `{"error": message}` with `status`.
    pub fn error(status: u16, message: &str) -> Response {
        Response::json(status, &serde_json::json!({ "error": message }))
    }

    /// Raw bytes with a content type.
    pub fn bytes(status: u16, content_type: &str, body: Vec<u8>) -> Response {
        Response {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body,
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The wire bytes; every response closes the connection (no keep-alive), so framing
    /// never depends on the client reading exactly `Content-Length` bytes. A `HEAD`
    /// response keeps the length but drops the body.
    pub fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let mut head = String::with_capacity(128);
        let _ = write!(head, "HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (n, v) in &self.headers {
            let _ = write!(head, "{n}: {v}\r\n");
        }
        let _ = write!(
            head,
            "Content-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n",
            self.body.len()
        );
        let mut out = head.into_bytes();
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// The Content-Type to serve a stored result with, by extension: the protocol's upload
/// table ([`studio_core::wire::content_type_for_ext`]) plus the few extra types a local
/// result store serves (ogg, webm, JSON results, text).
pub fn content_type_for_ext(ext: &str) -> &'static str {
    match ext.to_ascii_lowercase().as_str() {
        "ogg" => "audio/ogg",
        "webm" => "video/webm",
        "json" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        _ => studio_core::wire::content_type_for_ext(ext),
    }
}

// ------------------------------------------------------------------------------------------
// Header parameters and multipart/form-data (RFC 7578, RFC 2046 §5.1)
// ------------------------------------------------------------------------------------------

/// Splits `type/subtype; a=b; c="d;e"` into the lower-cased media type and its parameters
/// (names lower-cased, quoted values unquoted with `\` escapes resolved).
pub fn parse_header_params(value: &str) -> Result<(String, Vec<(String, String)>), String> {
    let first_end = value.find(';').unwrap_or(value.len());
    let main = value[..first_end].trim().to_ascii_lowercase();
    let mut params = Vec::new();
    let rest = if first_end < value.len() {
        &value[first_end + 1..]
    } else {
        ""
    };
    let bytes: Vec<char> = rest.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        while i < bytes.len() && (bytes[i] == ' ' || bytes[i] == '\t' || bytes[i] == ';') {
            i += 1;
        }
        if i >= bytes.len() {
            break;
        }
        let name_start = i;
        while i < bytes.len() && bytes[i] != '=' && bytes[i] != ';' {
            i += 1;
        }
        let name: String = bytes[name_start..i]
            .iter()
            .collect::<String>()
            .trim()
            .to_ascii_lowercase();
        if name.is_empty() {
            return Err("empty parameter name".into());
        }
        if i >= bytes.len() || bytes[i] == ';' {
            // A parameter without a value: keep it with an empty value.
            params.push((name, String::new()));
            continue;
        }
        i += 1; // '='
        while i < bytes.len() && (bytes[i] == ' ' || bytes[i] == '\t') {
            i += 1;
        }
        let mut val = String::new();
        if i < bytes.len() && bytes[i] == '"' {
            i += 1;
            let mut closed = false;
            while i < bytes.len() {
                match bytes[i] {
                    '\\' if i + 1 < bytes.len() => {
                        val.push(bytes[i + 1]);
                        i += 2;
                    }
                    '"' => {
                        i += 1;
                        closed = true;
                        break;
                    }
                    c => {
                        val.push(c);
                        i += 1;
                    }
                }
            }
            if !closed {
                return Err(format!("unterminated quoted value of parameter `{name}`"));
            }
            while i < bytes.len() && bytes[i] != ';' {
                if bytes[i] != ' ' && bytes[i] != '\t' {
                    return Err(format!("junk after the quoted value of `{name}`"));
                }
                i += 1;
            }
        } else {
            let start = i;
            while i < bytes.len() && bytes[i] != ';' {
                i += 1;
            }
            val = bytes[start..i]
                .iter()
                .collect::<String>()
                .trim()
                .to_string();
        }
        params.push((name, val));
    }
    Ok((main, params))
}

/// The boundary of a `multipart/form-data` Content-Type.
pub fn multipart_boundary(content_type: &str) -> Result<String, String> {
    let (media, params) = parse_header_params(content_type)?;
    if media != "multipart/form-data" {
        return Err(format!(
            "expected Content-Type multipart/form-data, got `{media}`"
        ));
    }
    let boundary = params
        .into_iter()
        .find(|(n, _)| n == "boundary")
        .map(|(_, v)| v)
        .ok_or("multipart/form-data without a boundary parameter")?;
    if boundary.is_empty() || boundary.len() > 70 {
        return Err("multipart boundary must be 1 to 70 characters".into());
    }
    if boundary.ends_with(' ') || boundary.bytes().any(|b| !(b' '..=b'~').contains(&b)) {
        return Err("multipart boundary has characters RFC 2046 does not allow".into());
    }
    Ok(boundary)
}

/// One part of a multipart body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part<'a> {
    /// The `name` of its `Content-Disposition: form-data`.
    pub name: String,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub data: &'a [u8],
}

/// The next `CRLF--boundary` that is a real delimiter: followed by `--` (the close) or by
/// optional padding and CRLF. Look-alikes inside the data (`--boundaryX`) are skipped.
fn find_delimiter(data: &[u8], delim: &[u8]) -> Option<usize> {
    let mut from = 0;
    loop {
        let at = from + find(&data[from..], delim)?;
        let after = &data[at + delim.len()..];
        let pad = after
            .iter()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
        if after.starts_with(b"--") || after[pad..].starts_with(b"\r\n") {
            return Some(at);
        }
        from = at + 1;
    }
}

/// Parses a `multipart/form-data` body. A preamble and an epilogue are ignored; every part
/// needs `Content-Disposition: form-data; name=...`; the closing delimiter is required.
pub fn parse_multipart<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, String> {
    let dash = format!("--{boundary}");
    let delim = format!("\r\n--{boundary}");
    // The first delimiter: at the very start, or after a preamble line.
    let mut pos = if body.starts_with(dash.as_bytes()) {
        dash.len()
    } else {
        find_delimiter(body, delim.as_bytes())
            .map(|p| p + delim.len())
            .ok_or("multipart body does not contain its boundary")?
    };
    let mut parts = Vec::new();
    loop {
        // After a delimiter: `--` closes, otherwise optional padding and CRLF.
        let rest = &body[pos..];
        if rest.starts_with(b"--") {
            return Ok(parts);
        }
        let pad = rest
            .iter()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
        if !rest[pad..].starts_with(b"\r\n") {
            return Err("malformed multipart delimiter line".into());
        }
        pos += pad + 2;
        if parts.len() >= MAX_PARTS {
            return Err(format!("more than {MAX_PARTS} multipart parts"));
        }
        // Part headers, possibly none.
        let rest = &body[pos..];
        let (head, data_start) = if rest.starts_with(b"\r\n") {
            ("", pos + 2)
        } else {
            let window = &rest[..rest.len().min(MAX_PART_HEAD_BYTES + 4)];
            let end = find(window, b"\r\n\r\n")
                .ok_or("multipart part headers are unterminated or too large")?;
            let head = std::str::from_utf8(&rest[..end])
                .map_err(|_| "multipart part headers are not valid UTF-8")?;
            (head, pos + end + 4)
        };
        let mut name = None;
        let mut filename = None;
        let mut content_type = None;
        for line in head.split("\r\n").filter(|l| !l.is_empty()) {
            let (h, v) = line
                .split_once(':')
                .ok_or("malformed multipart part header line")?;
            if h.trim().eq_ignore_ascii_case("content-disposition") {
                let (disp, params) = parse_header_params(v)?;
                if disp != "form-data" {
                    return Err(format!(
                        "multipart part disposition `{disp}` is not form-data"
                    ));
                }
                for (n, val) in params {
                    match n.as_str() {
                        "name" => name = Some(val),
                        "filename" => filename = Some(val),
                        _ => {}
                    }
                }
            } else if h.trim().eq_ignore_ascii_case("content-type") {
                content_type = Some(v.trim().to_string());
            }
        }
        let name = name.ok_or("multipart part without a Content-Disposition name")?;
        let data_len = find_delimiter(&body[data_start..], delim.as_bytes())
            .ok_or("multipart body ends without its closing boundary")?;
        parts.push(Part {
            name,
            filename,
            content_type,
            data: &body[data_start..data_start + data_len],
        });
        pos = data_start + data_len + delim.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<HeadParse, HttpFault> {
        parse_head(text.as_bytes(), 64 * 1024)
    }

    #[test]
    fn parses_a_request_head() {
        let raw = "GET /a/b%20c?x=1 HTTP/1.1\r\nHost: h\r\nX-Thing:  v \r\n\r\nBODY";
        let HeadParse::Done(h, len) = head(raw).unwrap() else {
            panic!("incomplete")
        };
        assert_eq!(len, raw.len() - 4);
        assert_eq!(h.method, "GET");
        assert_eq!(h.path, "/a/b%20c");
        assert_eq!(h.query.as_deref(), Some("x=1"));
        assert_eq!(h.header("x-thing"), Some("v"));
        assert_eq!(path_segments(&h.path).unwrap(), vec!["a", "b c"]);
        assert_eq!(h.body_length().unwrap(), 0);
    }

    #[test]
    fn incomplete_heads_wait_and_oversized_ones_are_431() {
        assert_eq!(
            head("GET / HTTP/1.1\r\nHost: h\r\n").unwrap(),
            HeadParse::Incomplete
        );
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(100));
        assert_eq!(parse_head(big.as_bytes(), 50).unwrap_err().status, 431);
        let unterminated = "a".repeat(60);
        assert_eq!(
            parse_head(unterminated.as_bytes(), 50).unwrap_err().status,
            431
        );
    }

    #[test]
    fn malformed_heads_are_400_with_a_reason() {
        for raw in [
            "GARBAGE\r\n\r\n",
            "GET  / HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Header: v\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n",
            "GET / HTTP/1.1\r\nNoColon\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "G(T / HTTP/1.1\r\nHost: h\r\n\r\n",
        ] {
            let err = head(raw).unwrap_err();
            assert_eq!(err.status, 400, "{raw:?}: {err:?}");
            assert!(!err.message.is_empty());
        }
        assert_eq!(
            head("GET / HTTP/2.0\r\nHost: h\r\n\r\n")
                .unwrap_err()
                .status,
            505
        );
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nHost: \xff\r\n\r\n", 1024)
                .map_err(|e| e.status)
                .unwrap_err(),
            400
        );
    }

    #[test]
    fn body_framing() {
        let h = |extra: &str| {
            let raw = format!("POST / HTTP/1.1\r\nHost: h\r\n{extra}\r\n");
            match head(&raw).unwrap() {
                HeadParse::Done(h, _) => h,
                HeadParse::Incomplete => panic!(),
            }
        };
        assert_eq!(h("Content-Length: 12\r\n").body_length().unwrap(), 12);
        assert_eq!(
            h("Content-Length: 5\r\nContent-Length: 5\r\n")
                .body_length()
                .unwrap(),
            5
        );
        assert_eq!(
            h("Content-Length: 5\r\nContent-Length: 6\r\n")
                .body_length()
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            h("Content-Length: -1\r\n")
                .body_length()
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            h("Transfer-Encoding: chunked\r\n")
                .body_length()
                .unwrap_err()
                .status,
            411
        );
        assert!(h("Expect: 100-continue\r\n").expects_continue());
        assert_eq!(h("Authorization: bearer  tok \r\n").bearer(), Some("tok"));
        assert_eq!(h("Authorization: Basic x\r\n").bearer(), None);
        assert!(h("Connection: keep-alive, Upgrade\r\n").header_has_token("connection", "upgrade"));
    }

    #[test]
    fn bad_percent_encoding_is_400() {
        assert_eq!(path_segments("/a%zz").unwrap_err().status, 400);
        assert_eq!(path_segments("/a%ff").unwrap_err().status, 400);
        assert_eq!(path_segments("/a%2").unwrap_err().status, 400);
    }

    #[test]
    fn response_bytes() {
        let r = Response::error(404, "nope");
        let text = String::from_utf8(r.to_bytes(false)).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.contains("Content-Type: application/json\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\n{\"error\":\"nope\"}\n"), "{text}");
        let head_only = String::from_utf8(r.to_bytes(true)).unwrap();
        assert!(head_only.ends_with("\r\n\r\n"));
        assert!(head_only.contains("Content-Length: 17\r\n"));
    }

    #[test]
    fn header_params() {
        let (m, p) =
            parse_header_params(r#"form-data; name="image"; filename="a \"b\";c.png""#).unwrap();
        assert_eq!(m, "form-data");
        assert_eq!(
            p,
            vec![
                ("name".to_string(), "image".to_string()),
                ("filename".to_string(), "a \"b\";c.png".to_string())
            ]
        );
        assert!(parse_header_params(r#"form-data; name="x"#).is_err());
        assert_eq!(
            multipart_boundary("Multipart/Form-Data; charset=utf-8; BOUNDARY=\"a b\"").unwrap(),
            "a b"
        );
        assert!(multipart_boundary("application/json").is_err());
        assert!(multipart_boundary("multipart/form-data").is_err());
        assert!(
            multipart_boundary(&format!("multipart/form-data; boundary={}", "x".repeat(71)))
                .is_err()
        );
    }

    /// The exact body the worker's studio-shell encoder produces (pinned there too).
    const WORKER_BODY: &[u8] = b"--BND\r\n\
Content-Disposition: form-data; name=\"prompt\"\r\n\r\n\
a red fox\r\n\
--BND\r\n\
Content-Disposition: form-data; name=\"ext\"\r\n\r\n\
png\r\n\
--BND\r\n\
Content-Disposition: form-data; name=\"image\"; filename=\"job-1.png\"\r\n\
Content-Type: image/png\r\n\r\n\
\x89PNG\r\n\r\n--BN\r\n--BNDx\r\n\
--BND--\r\n";

    #[test]
    fn multipart_from_the_worker_encoder() {
        let parts = parse_multipart(WORKER_BODY, "BND").unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].name, "prompt");
        assert_eq!(parts[0].data, b"a red fox");
        assert_eq!(parts[1].data, b"png");
        assert_eq!(parts[2].name, "image");
        assert_eq!(parts[2].filename.as_deref(), Some("job-1.png"));
        assert_eq!(parts[2].content_type.as_deref(), Some("image/png"));
        // Data that merely resembles the boundary stays in the part.
        assert_eq!(parts[2].data, b"\x89PNG\r\n\r\n--BN\r\n--BNDx");
    }

    #[test]
    fn multipart_preamble_epilogue_padding_and_empty_parts() {
        let body = b"preamble text\r\n--b  \r\n\
Content-Disposition: form-data; name=e\r\n\r\n\
\r\n--b\r\n\
content-disposition: FORM-DATA; name=\"x\"\r\n\r\n\
1\r\n--b--epilogue";
        let parts = parse_multipart(body, "b").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "e");
        assert_eq!(parts[0].data, b"");
        assert_eq!(parts[1].name, "x");
        assert_eq!(parts[1].data, b"1");
        assert!(parse_multipart(b"--b--\r\n", "b").unwrap().is_empty());
    }

    #[test]
    fn malformed_multipart_is_an_error_never_a_panic() {
        let cases: &[&[u8]] = &[
            b"",
            b"no boundary here",
            b"--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nunterminated",
            b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--",
            b"--b\r\nContent-Disposition: attachment; name=\"a\"\r\n\r\nx\r\n--b--",
            b"--bX\r\n",
            b"--b\r\nno colon\r\n\r\nx\r\n--b--",
            b"--b\r\nContent-Disposition: form-data; name=\"a",
            b"--b",
            b"--b\r\n",
        ];
        for body in cases {
            assert!(
                parse_multipart(body, "b").is_err(),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        // Every prefix of a valid body is rejected or parsed, never a panic.
        for n in 0..WORKER_BODY.len() {
            let _ = parse_multipart(&WORKER_BODY[..n], "BND");
        }
        // Every prefix of a valid head as well.
        let raw = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n";
        for n in 0..raw.len() {
            let _ = parse_head(&raw[..n], 1024);
        }
    }

    /// Mutated valid inputs (a fixed xorshift stream): every outcome is a value.
    #[test]
    fn mutated_inputs_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let head = b"POST /a/b%20c?q HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\
Content-Type: multipart/form-data; boundary=\"BND\"\r\n\r\n";
        let alphabet = b"\r\n-:;=\"\\ %aB\x00\xff";
        for seed_input in [&head[..], WORKER_BODY] {
            for _ in 0..3000 {
                let mut v = seed_input.to_vec();
                for _ in 0..(next() % 6 + 1) {
                    let at = (next() as usize) % (v.len() + 1);
                    match next() % 3 {
                        0 if at < v.len() => {
                            v.remove(at);
                        }
                        1 => v.insert(at, alphabet[(next() as usize) % alphabet.len()]),
                        _ if at < v.len() => v[at] = alphabet[(next() as usize) % alphabet.len()],
                        _ => {}
                    }
                }
                if let Ok(HeadParse::Done(h, _)) = parse_head(&v, 1024) {
                    let _ = h.body_length();
                    let _ = path_segments(&h.path);
                    if let Some(ct) = h.header("content-type") {
                        let _ = multipart_boundary(ct);
                    }
                }
                let _ = parse_multipart(&v, "BND");
                let _ = parse_header_params(&String::from_utf8_lossy(&v));
            }
        }
    }

    #[test]
    fn find_works_at_the_edges() {
        assert_eq!(find(b"abc", b"abc"), Some(0));
        assert_eq!(find(b"xxabc", b"abc"), Some(2));
        assert_eq!(find(b"ab", b"abc"), None);
        assert_eq!(find(b"aaab", b"aab"), Some(1));
        assert_eq!(find(b"abc", b""), None);
    }
}
