//! The blocking studio HTTP client (PROTOCOL.md §4): register request, registration poll
//! and the multipart result upload, with `ureq` over rustls (bundled webpki roots).
//!
//! [`execute`] carries out one `HttpRequest` of the core and always answers with an
//! `HttpResult`: **any** status, 2xx or not, comes back as `HttpResult::Response` with the
//! body as text (clipped to [`MAX_BODY_BYTES`]); only DNS / connect / TLS / timeout /
//! reset failures become `HttpResult::Transport`. The core makes every decision about the
//! status (retry, stale request, ...).
//!
//! Bearer tokens are sent in the `Authorization` header only and are never logged.
//! Redirects are not followed (a 3xx comes back as a response), so a bearer can never be
//! forwarded to another host.

use std::io::Read;
use std::time::Duration;

use studio_core::worker::{HttpRequest, HttpResult};

/// Request timeout for every studio HTTP call (PROTOCOL.md §6); an upload gets more, see
/// [`upload_timeout`].
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The slowest upload rate a result upload is given time for: an upload's timeout is the
/// request timeout plus its body at this rate (512 kbit/s), so a large video on a slow
/// uplink is not cut off where a small image would finish.
pub const UPLOAD_MIN_BYTES_PER_SEC: u64 = 64 * 1024;

/// The timeout of an upload of `body_len` bytes on an agent whose requests get `base`:
/// `base` plus the body at [`UPLOAD_MIN_BYTES_PER_SEC`].
pub fn upload_timeout(base: Duration, body_len: usize) -> Duration {
    base + Duration::from_millis(body_len as u64 * 1000 / UPLOAD_MIN_BYTES_PER_SEC)
}

/// Response bodies are read up to this many bytes; the rest is dropped.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The HTTP agent the worker uses for every studio request: 60 s timeout, statuses
/// returned as responses (never as errors), no redirects, no `User-Agent` header (like the
/// reference worker). Cheap to clone; clones share the connection pool, so an upload goes
/// out on a connection an earlier request left open when the studio keeps connections alive
/// (a test checks it; the loopback studio, `studio-local`, closes every connection).
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(REQUEST_TIMEOUT))
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent("")
        .build()
        .into()
}

pub use studio_core::wire::content_type_for_ext;

/// A multipart/form-data body for the `/complete` upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Multipart {
    /// The boundary (without the leading `--`).
    pub boundary: String,
    /// The encoded body.
    pub body: Vec<u8>,
}

impl Multipart {
    /// The request's `Content-Type` header value.
    pub fn content_type(&self) -> String {
        format!("multipart/form-data; boundary={}", self.boundary)
    }
}

/// Escapes a value for a quoted `Content-Disposition` parameter the way browsers do:
/// `"` -> `%22`, CR -> `%0D`, LF -> `%0A`.
fn quote_param(value: &str) -> String {
    value
        .replace('"', "%22")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Encodes the upload form with the given boundary, parts in the order the studio expects
/// (PROTOCOL.md §4.1): `prompt` (text), `ext` (text), `image` (file `<job_id>.<ext>`, with
/// the Content-Type of [`content_type_for_ext`]). The caller picks a boundary that occurs
/// in none of the values ([`encode_upload`] does).
pub fn encode_multipart(
    boundary: &str,
    job_id: &str,
    prompt: &str,
    ext: &str,
    bytes: &[u8],
) -> Vec<u8> {
    let mut body = Vec::with_capacity(bytes.len() + prompt.len() + 512);
    let mut text_part = |name: &str, value: &str| {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        body.extend_from_slice(
            format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(value.as_bytes());
        body.extend_from_slice(b"\r\n");
    };
    text_part("prompt", prompt);
    text_part("ext", ext);
    let filename = quote_param(&format!("{job_id}.{ext}"));
    body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
    body.extend_from_slice(
        format!(
            "Content-Disposition: form-data; name=\"image\"; filename=\"{filename}\"\r\n\
             Content-Type: {}\r\n\r\n",
            content_type_for_ext(ext)
        )
        .as_bytes(),
    );
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

/// Encodes the upload form with a fresh random boundary that occurs in none of the parts.
pub fn encode_upload(job_id: &str, prompt: &str, ext: &str, bytes: &[u8]) -> Multipart {
    let mut counter = 0u64;
    loop {
        // The OS RNG practically never fails; if it does, a counter still gives distinct
        // candidates and the collision check below keeps the body well-formed.
        let boundary = match crate::entropy::random_hex(16) {
            Ok(hex) => format!("studio-worker-{hex}"),
            Err(_) => format!("studio-worker-boundary-{counter}"),
        };
        counter += 1;
        let needle = boundary.as_bytes();
        if contains(bytes, needle)
            || contains(prompt.as_bytes(), needle)
            || contains(ext.as_bytes(), needle)
            || contains(job_id.as_bytes(), needle)
        {
            continue;
        }
        let body = encode_multipart(&boundary, job_id, prompt, ext, bytes);
        return Multipart { boundary, body };
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Carries out one studio request. `result_bytes` is the job's binary result and is needed
/// for `Upload` only (without it the upload fails as a transport error, nothing is sent).
/// Never panics; every outcome is an `HttpResult`.
pub fn execute(
    agent: &ureq::Agent,
    request: &HttpRequest,
    result_bytes: Option<&[u8]>,
) -> HttpResult {
    let (op, url, outcome) = match request {
        HttpRequest::RegisterRequest { url, body } => {
            let json = studio_core::wire::encode(body);
            let outcome = agent
                .post(url)
                .header("Content-Type", "application/json")
                .send(json.as_bytes());
            ("register request", url, outcome)
        }
        HttpRequest::PollRegistration {
            url,
            bearer: secret,
        } => {
            let outcome = agent
                .get(url)
                .header("Authorization", &bearer(secret.expose()))
                .call();
            ("registration poll", url, outcome)
        }
        HttpRequest::Upload {
            url,
            auth_token,
            job_id,
            prompt,
            ext,
        } => {
            let Some(bytes) = result_bytes else {
                tracing::warn!(%job_id, "upload skipped: the result bytes are gone");
                return HttpResult::Transport(format!(
                    "the result of job {job_id} is no longer held; nothing was uploaded"
                ));
            };
            let form = encode_upload(job_id, prompt, ext, bytes);
            let base = agent.config().timeouts().global.unwrap_or(REQUEST_TIMEOUT);
            let timeout = upload_timeout(base, form.body.len());
            tracing::debug!(%job_id, %url, bytes = bytes.len(), %ext, ?timeout, "uploading result");
            let outcome = agent
                .post(url)
                .config()
                .timeout_global(Some(timeout))
                .build()
                .header("Authorization", &bearer(auth_token.expose()))
                .header("Content-Type", &form.content_type())
                .send(&form.body[..]);
            ("upload", url, outcome)
        }
    };
    match outcome {
        Ok(mut response) => {
            let status = response.status().as_u16();
            let mut body = read_clipped(response.body_mut().as_reader());
            if (200..300).contains(&status) {
                tracing::debug!(%url, status, "{op} answered");
            } else {
                // Only quoted in messages: one line (a trailing newline used to split them).
                body = single_line(&body);
                tracing::warn!(%url, status, body = %clip_chars(&body, 300), "{op} failed");
            }
            HttpResult::Response { status, body }
        }
        Err(e) => {
            let message = e.to_string();
            tracing::warn!(%url, error = %message, "{op}: no response");
            HttpResult::Transport(message)
        }
    }
}

/// Reads at most [`MAX_BODY_BYTES`] of a body as (lossy) UTF-8. A read error keeps what was
/// read: the status already arrived, and it is what the core decides on.
fn read_clipped(reader: impl Read) -> String {
    let mut buf = Vec::new();
    let _ = reader.take(MAX_BODY_BYTES as u64).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// An error body as it is quoted in log lines and the operator's last message: trimmed,
/// every control character (newlines, tabs, escapes) replaced by a space, so a body ending
/// in `\n` (or one crafted to forge log lines) cannot split a message.
pub fn single_line(s: &str) -> String {
    s.trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn clip_chars(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;
    use std::thread;

    use studio_core::wire::{AutoRegisterRequest, WorkerCapabilities};

    /// One request as the test server saw it.
    #[derive(Debug)]
    struct Seen {
        request_line: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// Serves exactly one request on 127.0.0.1, answering `status` with `body`.
    fn serve_once(status: u16, body: &'static str) -> (String, mpsc::Receiver<Seen>) {
        serve_once_after(status, body, Duration::ZERO)
    }

    /// [`serve_once`], answering only `delay` after the request was read.
    fn serve_once_after(
        status: u16,
        body: &'static str,
        delay: Duration,
    ) -> (String, mpsc::Receiver<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut headers = Vec::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let line = line.trim_end().to_string();
                if line.is_empty() {
                    break;
                }
                let (k, v) = line.split_once(':').unwrap();
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
            let len = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, v)| v.parse::<usize>().unwrap());
            let mut req_body = vec![0u8; len];
            reader.read_exact(&mut req_body).unwrap();
            thread::sleep(delay);
            let mut stream = stream;
            write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            stream.flush().unwrap();
            tx.send(Seen {
                request_line: request_line.trim_end().to_string(),
                headers,
                body: req_body,
            })
            .unwrap();
        });
        (base, rx)
    }

    fn caps() -> WorkerCapabilities {
        let mut cfg = studio_core::worker::WorkerConfig::for_tests("http://x");
        cfg.credentials = None;
        studio_core::worker::Worker::new(cfg).capabilities()
    }

    #[test]
    fn an_upload_gets_time_for_its_body() {
        assert_eq!(upload_timeout(REQUEST_TIMEOUT, 0), REQUEST_TIMEOUT);
        assert_eq!(
            upload_timeout(REQUEST_TIMEOUT, 64 * 1024 * 1024),
            REQUEST_TIMEOUT + Duration::from_secs(1024)
        );
    }

    /// An agent whose requests get 1 s, and a studio that answers a 256 KiB upload 2 s
    /// after reading it: the upload's own timeout (1 s + 4 s for the body) lets it finish
    /// where the flat one would have cut it off.
    #[test]
    fn a_large_upload_outlives_the_flat_request_timeout() {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(1)))
            .http_status_as_error(false)
            .build()
            .into();
        let (base, rx) = serve_once_after(200, "{}", Duration::from_secs(2));
        let bytes = vec![7u8; 256 * 1024];
        upload_answered_200(
            &agent,
            &format!("{base}/graphics/api/workers/w/jobs/j/complete"),
            &bytes,
        );
        assert!(rx.recv().unwrap().body.len() > bytes.len());
    }

    #[test]
    fn content_types_cover_every_engine_ext() {
        for (ext, ct) in [
            ("png", "image/png"),
            ("webp", "image/webp"),
            ("gif", "image/gif"),
            ("jpg", "image/jpeg"),
            ("JPEG", "image/jpeg"),
            ("wav", "audio/wav"),
            ("mp3", "audio/mpeg"),
            ("mp4", "video/mp4"),
            ("bin", "application/octet-stream"),
            ("", "application/octet-stream"),
        ] {
            assert_eq!(content_type_for_ext(ext), ct, "{ext}");
        }
    }

    #[test]
    fn multipart_encoding_is_exact() {
        let body = encode_multipart("BND", "job-1", "a red fox", "png", b"\x89PNG\r\n");
        let expected = b"--BND\r\n\
Content-Disposition: form-data; name=\"prompt\"\r\n\r\n\
a red fox\r\n\
--BND\r\n\
Content-Disposition: form-data; name=\"ext\"\r\n\r\n\
png\r\n\
--BND\r\n\
Content-Disposition: form-data; name=\"image\"; filename=\"job-1.png\"\r\n\
Content-Type: image/png\r\n\r\n\
\x89PNG\r\n\r\n\
--BND--\r\n";
        assert_eq!(body, expected.to_vec());
    }

    #[test]
    fn multipart_filename_is_escaped() {
        let body = encode_multipart("B", "a\"b\r\nc", "p", "wav", b"x");
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("filename=\"a%22b%0D%0Ac.wav\""), "{text}");
        assert!(text.contains("Content-Type: audio/wav"), "{text}");
    }

    #[test]
    fn upload_boundary_is_fresh_and_absent_from_the_data() {
        let a = encode_upload("j", "p", "png", b"data");
        let b = encode_upload("j", "p", "png", b"data");
        assert_ne!(a.boundary, b.boundary);
        assert!(a.boundary.starts_with("studio-worker-"));
        assert_eq!(
            a.content_type(),
            format!("multipart/form-data; boundary={}", a.boundary)
        );
        let body = String::from_utf8_lossy(&a.body);
        assert_eq!(body.matches(&a.boundary).count(), 4);
        assert!(body.ends_with(&format!("--{}--\r\n", a.boundary)));
    }

    #[test]
    fn register_request_posts_json() {
        let (base, rx) = serve_once(200, r#"{"requestId":"rr-1","status":"pending"}"#);
        let body = AutoRegisterRequest {
            install_id: "11111111-2222-4333-8444-555555555555".into(),
            registration_secret_hash: "ab".repeat(32),
            capabilities: caps(),
            user_agent: "studio-worker/0.1.0".into(),
        };
        let url = format!("{base}/graphics/api/workers/register-request");
        let result = execute(
            &agent(),
            &HttpRequest::RegisterRequest {
                url,
                body: body.clone(),
            },
            None,
        );
        assert_eq!(
            result,
            HttpResult::Response {
                status: 200,
                body: r#"{"requestId":"rr-1","status":"pending"}"#.into()
            }
        );
        let seen = rx.recv().unwrap();
        assert_eq!(
            seen.request_line,
            "POST /graphics/api/workers/register-request HTTP/1.1"
        );
        assert_eq!(seen.header("content-type"), Some("application/json"));
        assert_eq!(seen.header("authorization"), None);
        assert_eq!(seen.header("user-agent"), None);
        let sent: AutoRegisterRequest = serde_json::from_slice(&seen.body).unwrap();
        assert_eq!(sent, body);
    }

    #[test]
    fn poll_sends_the_bearer_and_non_2xx_is_a_response() {
        let (base, rx) = serve_once(404, r#"{"error":"not found"}"#);
        let url = format!("{base}/graphics/api/workers/register-requests/rr-1");
        let result = execute(
            &agent(),
            &HttpRequest::PollRegistration {
                url,
                bearer: "raw-secret".into(),
            },
            None,
        );
        assert_eq!(
            result,
            HttpResult::Response {
                status: 404,
                body: r#"{"error":"not found"}"#.into()
            }
        );
        let seen = rx.recv().unwrap();
        assert_eq!(
            seen.request_line,
            "GET /graphics/api/workers/register-requests/rr-1 HTTP/1.1"
        );
        assert_eq!(seen.header("authorization"), Some("Bearer raw-secret"));
    }

    #[test]
    fn upload_sends_the_multipart_form() {
        let (base, rx) = serve_once(503, "busy");
        let url = format!("{base}/graphics/api/workers/w-1/jobs/job-9/complete");
        let bytes = vec![7u8; 100_000];
        let result = execute(
            &agent(),
            &HttpRequest::Upload {
                url,
                auth_token: "tok".into(),
                job_id: "job-9".into(),
                prompt: "a cat".into(),
                ext: "webp".into(),
            },
            Some(&bytes),
        );
        assert_eq!(
            result,
            HttpResult::Response {
                status: 503,
                body: "busy".into()
            }
        );
        let seen = rx.recv().unwrap();
        assert_eq!(
            seen.request_line,
            "POST /graphics/api/workers/w-1/jobs/job-9/complete HTTP/1.1"
        );
        assert_eq!(seen.header("authorization"), Some("Bearer tok"));
        let ct = seen.header("content-type").unwrap();
        let boundary = ct
            .strip_prefix("multipart/form-data; boundary=")
            .unwrap()
            .to_string();
        assert_eq!(
            seen.body,
            encode_multipart(&boundary, "job-9", "a cat", "webp", &bytes)
        );
    }

    /// Uploads `bytes` as a png result to `url` and checks the answer: 200, `{}`.
    fn upload_answered_200(agent: &ureq::Agent, url: &str, bytes: &[u8]) {
        let job_id = url.rsplit('/').nth(1).unwrap_or("j").to_string();
        let result = execute(
            agent,
            &HttpRequest::Upload {
                url: url.to_string(),
                auth_token: "tok".into(),
                job_id,
                prompt: "p".into(),
                ext: "png".into(),
            },
            Some(bytes),
        );
        assert_eq!(
            result,
            HttpResult::Response {
                status: 200,
                body: "{}".into()
            }
        );
    }

    /// Uploads through the worker's agent reuse its connection when the studio keeps it
    /// alive: three uploads, one TCP connection (a real HTTP/1.1 server that keeps
    /// connections alive).
    #[test]
    fn uploads_through_one_agent_reuse_a_kept_alive_connection() {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let port = server.server_addr().to_ip().unwrap().port();
        let (tx, rx) = mpsc::channel();
        let studio = std::thread::spawn(move || {
            for _ in 0..3 {
                let mut request = server.recv().unwrap();
                let mut body = Vec::new();
                request.as_reader().read_to_end(&mut body).unwrap();
                tx.send((*request.remote_addr().unwrap(), body.len()))
                    .unwrap();
                request
                    .respond(tiny_http::Response::from_string("{}"))
                    .unwrap();
            }
        });
        let agent = agent();
        let bytes = vec![3u8; 50_000];
        for job in ["job-1", "job-2", "job-3"] {
            let url =
                format!("http://127.0.0.1:{port}/graphics/api/workers/w-1/jobs/{job}/complete");
            upload_answered_200(&agent, &url, &bytes);
        }
        studio.join().unwrap();
        let seen: Vec<_> = rx.iter().collect();
        assert_eq!(seen.len(), 3);
        assert!(seen.iter().all(|(_, len)| *len > bytes.len()), "{seen:?}");
        assert!(
            seen.iter().all(|(peer, _)| *peer == seen[0].0),
            "every upload on the first connection: {seen:?}"
        );
    }

    #[test]
    fn upload_without_bytes_sends_nothing() {
        let result = execute(
            &agent(),
            &HttpRequest::Upload {
                url: "http://127.0.0.1:9/never".into(),
                auth_token: "tok".into(),
                job_id: "j".into(),
                prompt: "p".into(),
                ext: "png".into(),
            },
            None,
        );
        assert!(matches!(result, HttpResult::Transport(m) if m.contains("no longer held")));
    }

    #[test]
    fn connection_refused_is_a_transport_error() {
        // Bind then drop: the port is (almost certainly) closed now.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let result = execute(
            &agent(),
            &HttpRequest::PollRegistration {
                url: format!("http://127.0.0.1:{port}/x"),
                bearer: "secret-never-in-errors".into(),
            },
            None,
        );
        match result {
            HttpResult::Transport(m) => assert!(!m.contains("secret-never-in-errors"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn error_bodies_come_back_on_one_line() {
        let (base, _rx) = serve_once(500, "{\"error\":\"oops\"}\r\nforged line\n");
        let result = execute(
            &agent(),
            &HttpRequest::PollRegistration {
                url: format!("{base}/x"),
                bearer: "b".into(),
            },
            None,
        );
        assert_eq!(
            result,
            HttpResult::Response {
                status: 500,
                body: "{\"error\":\"oops\"}  forged line".into()
            }
        );
        assert_eq!(single_line(" a\tb\u{1b}[2Kc \n"), "a b [2Kc");
    }

    #[test]
    fn long_bodies_are_clipped() {
        let long = "é".repeat(MAX_BODY_BYTES);
        let clipped = read_clipped(long.as_bytes());
        assert!(clipped.len() <= MAX_BODY_BYTES + 3);
        assert_eq!(clip_chars("héllo", 2), "hé");
        assert_eq!(clip_chars("hi", 5), "hi");
    }
}
