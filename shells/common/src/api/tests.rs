//! The local control API over real sockets, against a real core (the [`test_loop`]).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use super::client::{Client, ClientError};
use super::server::{IO_TIMEOUT, MAX_HEAD_BYTES};
use super::*;

const TOKEN: &str = "lat-test-0123456789";

struct Api {
    server: ApiServer,
    _dir: tempfile::TempDir,
    config: PathBuf,
}

fn api() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let listener = bind(0).unwrap();
    let mut server =
        ApiServer::start(listener, Secret::from(TOKEN), test_loop::start(), &config).unwrap();
    server.publish(&config, &Secret::from(TOKEN)).unwrap();
    Api {
        server,
        _dir: dir,
        config,
    }
}

/// Sends `raw` (a whole request) and reads the answer to its end: (status, headers, body).
fn send_raw(addr: SocketAddr, raw: &[u8]) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // The server may answer (and close) before taking everything: that is fine.
    let _ = stream.write_all(raw);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, head.to_string(), body.to_string())
}

/// A request with a loopback Host and `extra` header lines.
fn request(addr: SocketAddr, method: &str, path: &str, extra: &str, body: &str) -> (u16, Value) {
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        addr.port(),
        body.len()
    );
    let (status, _, body) = send_raw(addr, raw.as_bytes());
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

fn authed(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    request(
        addr,
        method,
        path,
        &format!("Authorization: Bearer {TOKEN}\r\n"),
        body,
    )
}

#[test]
fn health_needs_no_token_and_everything_else_does() {
    let api = api();
    let addr = api.server.addr();
    let (status, body) = request(addr, "GET", "/healthz", "", "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ok"], true);
    assert_eq!(body["session"], "connected");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    for extra in [
        "",
        "Authorization: Bearer wrong-token\r\n",
        "Authorization: Basic bGF0Og==\r\n",
        &format!("Authorization: Bearer {TOKEN}x\r\n"),
    ] {
        for (method, path) in [
            ("GET", "/daemon/status"),
            ("POST", "/daemon/pause"),
            ("GET", "/metrics"),
            ("GET", "/nowhere"),
        ] {
            let (status, body) = request(addr, method, path, extra, "");
            assert_eq!(status, 401, "{method} {path} with {extra:?}: {body}");
            assert!(body["error"].is_string());
        }
    }
    let (status, body) = authed(addr, "GET", "/daemon/status", "");
    assert_eq!(status, 200);
    assert_eq!(body["workerId"], "w-1");
    assert_eq!(body["session"], "connected");
    assert_eq!(body["paused"], false);
    assert_eq!(body["enabled"], true);
    assert!(body["pid"].is_u64());
    let (status, _) = authed(addr, "GET", "/nowhere", "");
    assert_eq!(status, 404);
    let (status, _) = authed(addr, "GET", "/daemon/pause", "");
    assert_eq!(status, 405);
}

#[test]
fn web_pages_are_refused_whatever_the_route() {
    let api = api();
    let addr = api.server.addr();
    for (host, origin) in [
        ("evil.example", None),
        ("evil.example:4787", None),
        ("127.0.0.1.nip.example", None),
        ("127.0.0.1", Some("http://evil.example")),
        ("localhost", Some("null")),
    ] {
        for path in ["/healthz", "/daemon/status", "/daemon/shutdown"] {
            let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
            let raw = format!(
                "POST {path} HTTP/1.1\r\nHost: {host}\r\n{origin}Authorization: Bearer {TOKEN}\r\nContent-Length: 0\r\n\r\n"
            );
            let (status, _, body) = send_raw(addr, raw.as_bytes());
            assert_eq!(status, 403, "{host} {origin:?} {path}: {body}");
        }
    }
    // No Host at all, and two of them.
    for raw in [
        "GET /healthz HTTP/1.1\r\n\r\n".to_string(),
        "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n\r\n".to_string(),
    ] {
        assert_eq!(send_raw(addr, raw.as_bytes()).0, 403, "{raw}");
    }
    // A loopback page (a desktop window's web view) is allowed, CORS preflight included.
    let (status, _) = request(
        addr,
        "GET",
        "/healthz",
        "Origin: http://localhost:3000\r\n",
        "",
    );
    assert_eq!(status, 200);
    let raw =
        "OPTIONS /daemon/config HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://localhost:1420\r\n\
               Access-Control-Request-Method: PATCH\r\n\r\n";
    let (status, head, _) = send_raw(addr, raw.as_bytes());
    assert_eq!(status, 204, "{head}");
    assert!(
        head.contains("Access-Control-Allow-Origin: http://localhost:1420"),
        "{head}"
    );
    assert!(
        head.contains("Access-Control-Allow-Headers: Authorization"),
        "{head}"
    );
    let raw = format!(
        "GET /daemon/status HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://localhost:1420\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    );
    let (status, head, _) = send_raw(addr, raw.as_bytes());
    assert_eq!(status, 200);
    assert!(
        head.contains("Access-Control-Allow-Origin: http://localhost:1420"),
        "{head}"
    );
    let (status, head, _) = send_raw(
        addr,
        b"OPTIONS /daemon/config HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: https://evil.example\r\n\r\n",
    );
    assert_eq!(status, 403);
    assert!(!head.contains("Access-Control-Allow-Origin"), "{head}");
    // The worker is still there, untouched.
    assert_eq!(
        authed(addr, "GET", "/daemon/status", "").1["session"],
        "connected"
    );
}

#[test]
fn bad_requests_get_a_json_error_and_never_take_the_worker_down() {
    let api = api();
    let addr = api.server.addr();
    let over = MAX_BODY_BYTES + 1;
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (b"GARBAGE\r\n\r\n".to_vec(), 400),
        (b"GET /healthz HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n".to_vec(), 400),
        (
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX: \xff\xfe\r\n\r\n".to_vec(),
            400,
        ),
        // A body declared far past the limit is refused unread, whatever it claims.
        (
            format!("PATCH /daemon/config HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {over}\r\n\r\n{{").into_bytes(),
            413,
        ),
        (
            b"POST /daemon/pause HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 99999999999999999\r\n\r\nx".to_vec(),
            413,
        ),
        (
            b"POST /daemon/pause HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: nope\r\n\r\n".to_vec(),
            400,
        ),
        (
            b"POST /daemon/pause HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            411,
        ),
        (
            format!(
                "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {}\r\n\r\n",
                "a".repeat(MAX_HEAD_BYTES)
            )
            .into_bytes(),
            431,
        ),
        (
            format!(
                "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n{}\r\n",
                "X-A: b\r\n".repeat(100)
            )
            .into_bytes(),
            431,
        ),
    ];
    for (raw, want) in cases {
        let (status, head, body) = send_raw(addr, &raw);
        let shown = String::from_utf8_lossy(&raw[..raw.len().min(80)]).into_owned();
        assert_eq!(status, want, "{shown}: {body}");
        assert!(head.contains("Content-Type: application/json"), "{head}");
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{shown}: {body}"));
        assert!(v["error"].is_string(), "{body}");
    }
    // A client that sends half a head and goes away is simply dropped.
    let mut half = TcpStream::connect(addr).unwrap();
    half.write_all(b"GET /heal").unwrap();
    drop(half);
    assert_eq!(authed(addr, "GET", "/daemon/status", "").0, 200);
    assert!(IO_TIMEOUT >= Duration::from_secs(1));
}

#[test]
fn pause_resume_enable_disable_change_the_core() {
    let api = api();
    let addr = api.server.addr();
    assert_eq!(
        authed(addr, "POST", "/daemon/pause", ""),
        (200, json!({"paused": true}))
    );
    let status = authed(addr, "GET", "/daemon/status", "").1;
    assert_eq!(status["paused"], true);
    assert_eq!(authed(addr, "GET", "/healthz", "").1["paused"], true);
    assert_eq!(
        authed(addr, "POST", "/daemon/resume", ""),
        (200, json!({"paused": false}))
    );
    assert_eq!(
        authed(addr, "POST", "/daemon/disable", ""),
        (200, json!({"enabled": false}))
    );
    let metrics = authed(addr, "GET", "/metrics", "").1;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("\nstudio_worker_enabled 0\n"),
        "{metrics}"
    );
    assert_eq!(
        authed(addr, "POST", "/daemon/enable", ""),
        (200, json!({"enabled": true}))
    );
    // The core logged each change: the log route shows them, numbered.
    let (status, logs) = authed(addr, "GET", "/daemon/logs?after=0", "");
    assert_eq!(status, 200);
    let entries = logs["entries"].as_array().unwrap();
    let messages: Vec<&str> = entries
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    for needle in [
        "paused by operator",
        "resumed by operator",
        "disabled by operator",
    ] {
        assert!(
            messages.iter().any(|m| m.contains(needle)),
            "{needle}: {messages:?}"
        );
    }
    let next = logs["next"].as_u64().unwrap();
    assert_eq!(Some(next), entries.last().and_then(|e| e["seq"].as_u64()));
    let seqs: Vec<u64> = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    let (_, newer) = authed(addr, "GET", &format!("/daemon/logs?after={next}"), "");
    assert_eq!(newer, json!({"entries": [], "next": next}));
    assert_eq!(authed(addr, "GET", "/daemon/logs?after=abc", "").0, 400);
}

#[test]
fn live_settings_are_read_and_patched() {
    let api = api();
    let addr = api.server.addr();
    let (status, settings) = authed(addr, "GET", "/daemon/config", "");
    assert_eq!(status, 200);
    assert_eq!(
        settings,
        json!({"vramThresholdGb": 12.0, "autoEnabled": true})
    );
    let (status, settings) = authed(
        addr,
        "PATCH",
        "/daemon/config",
        r#"{"vramThresholdGb": 6.5, "autoEnabled": false}"#,
    );
    assert_eq!(status, 200, "{settings}");
    assert_eq!(
        settings,
        json!({"vramThresholdGb": 6.5, "autoEnabled": false})
    );
    assert_eq!(
        authed(addr, "GET", "/daemon/status", "").1["vramThresholdGb"],
        6.5
    );
    for bad in [
        r#"{"vramThresholdGb": -1}"#,
        r#"{"vramThresholdGb": "8"}"#,
        r#"{"autoEnabled": 1}"#,
        r#"{"models_root": "/tmp"}"#,
        r#"[1]"#,
        "not json",
    ] {
        let (status, body) = authed(addr, "PATCH", "/daemon/config", bad);
        assert_eq!(status, 400, "{bad}: {body}");
    }
    // Nothing of the refused bodies was applied.
    assert_eq!(
        authed(addr, "GET", "/daemon/config", "").1,
        json!({"vramThresholdGb": 6.5, "autoEnabled": false})
    );
}

#[test]
fn metrics_and_shutdown() {
    let api = api();
    let addr = api.server.addr();
    let raw = format!(
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    );
    let (status, head, body) = send_raw(addr, raw.as_bytes());
    assert_eq!(status, 200);
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    assert!(body.contains("studio_worker_session_connected 1"), "{body}");
    assert!(body.contains("# TYPE studio_worker_job_duration_seconds histogram"));
    let (status, body) = authed(addr, "POST", "/daemon/shutdown", "");
    assert_eq!((status, body), (202, json!({"stopping": true})));
    let status = authed(addr, "GET", "/daemon/status", "").1;
    assert_eq!(status["session"], "stopping");
}

#[cfg(unix)]
#[test]
fn the_published_file_is_private_and_goes_with_the_server() {
    use std::os::unix::fs::PermissionsExt;
    let api = api();
    let path = info_path(&api.config);
    assert_eq!(path, api.config.parent().unwrap().join(LOCAL_API_FILE));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let info: LocalApiInfo =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(info.url, api.server.url());
    assert_eq!(info.token.expose(), TOKEN);
    assert!(info.url.starts_with("http://127.0.0.1:"));

    // The CLI's client finds it and is let in.
    let client = Client::for_config(&api.config).expect("a client");
    assert_eq!(client.get("/daemon/status").unwrap()["workerId"], "w-1");
    assert_eq!(client.post("/daemon/pause").unwrap()["paused"], true);
    assert_eq!(
        client
            .patch("/daemon/config", &json!({"vramThresholdGb": 3}))
            .unwrap()["vramThresholdGb"],
        3.0
    );
    match client.patch("/daemon/config", &json!({"x": 1})) {
        Err(ClientError::Failed {
            status: 400,
            message,
        }) => assert!(message.contains("`x`")),
        other => panic!("{other:?}"),
    }

    let addr = api.server.addr();
    let Api {
        server,
        _dir,
        config,
    } = api;
    server.stop();
    assert!(!path.exists(), "removed with the server");
    assert!(TcpStream::connect(addr).is_err(), "the port is closed");
    // A stale file (the worker died without removing it) means no worker.
    std::fs::write(
        info_path(&config),
        serde_json::to_string(&LocalApiInfo {
            url: format!("http://{addr}/"),
            token: TOKEN.into(),
        })
        .unwrap(),
    )
    .unwrap();
    let stale = Client::for_config(&config).unwrap();
    assert_eq!(stale.get("/daemon/status"), Err(ClientError::NotRunning));
    // A file pointing anywhere but loopback is not followed.
    for url in [
        "http://evil.example:4787/",
        "https://127.0.0.1:1/",
        "file:///etc",
    ] {
        let text = serde_json::to_string(&LocalApiInfo {
            url: url.into(),
            token: TOKEN.into(),
        })
        .unwrap();
        std::fs::write(info_path(&config), text).unwrap();
        assert!(Client::for_config(&config).is_none(), "{url}");
    }
    assert!(Client::for_config(Path::new("/nonexistent/dir/config.toml")).is_none());
}

#[test]
fn a_busy_port_falls_back_to_an_ephemeral_one() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let listener = bind(port).unwrap();
    let got = listener.local_addr().unwrap();
    assert!(got.ip().is_loopback());
    assert_ne!(got.port(), port);
    assert_eq!(DEFAULT_LOCAL_API_PORT, 4787);
}
