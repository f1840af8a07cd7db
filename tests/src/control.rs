//! Talking to a running worker the way an operator's tools do: its local control API
//! (found through `local-api.json` beside its config), its CLI against the same config, and
//! a loopback Sentry endpoint that keeps the envelopes it receives.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::{wait_for, Bin, Worker, WAIT};

/// The name of the file a running worker publishes beside its config.
pub const LOCAL_API_FILE: &str = "local-api.json";

/// A running worker's local control API.
#[derive(Clone, Debug)]
pub struct LocalApi {
    pub addr: SocketAddr,
    pub token: String,
}

/// One HTTP answer: status, head (status line and headers) and body.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

impl LocalApi {
    /// The API of `worker`, once it has published `local-api.json` beside its config
    /// (waits up to [`WAIT`]).
    pub fn of(worker: &Worker) -> LocalApi {
        let path = worker
            .config_path()
            .parent()
            .expect("the config has a directory")
            .join(LOCAL_API_FILE);
        let info: Value = wait_for("the worker to publish local-api.json", WAIT, || {
            let text = std::fs::read_to_string(&path).ok()?;
            serde_json::from_str(&text).ok()
        });
        let url = info["url"].as_str().expect("a url").to_string();
        let authority = url
            .strip_prefix("http://")
            .and_then(|r| r.split('/').next())
            .unwrap_or_else(|| panic!("not a loopback http URL: {url}"));
        LocalApi {
            addr: authority.parse().expect("an IP:port"),
            token: info["token"].as_str().expect("a token").to_string(),
        }
    }

    /// `method path` with a loopback `Host`, the given extra header lines (each ending in
    /// `\r\n`) and `body`; with the bearer token when `authed`.
    pub fn call(&self, method: &str, path: &str, authed: bool, extra: &str, body: &str) -> Answer {
        let auth = if authed {
            format!("Authorization: Bearer {}\r\n", self.token)
        } else {
            String::new()
        };
        let raw = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n{auth}{extra}Content-Length: {}\r\n\r\n{body}",
            self.addr.port(),
            body.len()
        );
        http_raw(self.addr, raw.as_bytes())
    }

    /// An authorised `GET`, required to answer 200 with JSON.
    pub fn get(&self, path: &str) -> Value {
        let a = self.call("GET", path, true, "", "");
        assert_eq!(a.status, 200, "GET {path}: {}", a.body);
        a.json()
    }

    /// `GET /metrics` (authorised): the Prometheus text.
    pub fn metrics(&self) -> String {
        let a = self.call("GET", "/metrics", true, "", "");
        assert_eq!(a.status, 200, "GET /metrics: {}", a.body);
        assert!(
            a.head.contains("text/plain; version=0.0.4"),
            "content type: {}",
            a.head
        );
        a.body
    }
}

/// The value of the sample `name` (its whole series text, labels included, e.g.
/// `studio_worker_jobs_total{kind="llm",outcome="completed"}`) in Prometheus text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Sends a whole raw request to `addr` and reads the answer to its end.
pub fn http_raw(addr: SocketAddr, raw: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(addr).expect("connect to the local API");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let _ = stream.write_all(raw);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status line in {text:?}"));
    Answer {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// What a CLI command printed and its exit code.
#[derive(Clone, Debug)]
pub struct CliRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// `bin --config <config> <args>`, to its end (no `RUST_LOG`, no inherited test hooks).
pub fn cli(bin: &Bin, config: &Path, args: &[&str]) -> CliRun {
    let out = Command::new(&bin.path)
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.path.display()));
    CliRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A loopback HTTP endpoint standing in for Sentry: it answers every request `200 {}` and
/// keeps each request's path and body. Its DSN is [`SentrySink::dsn`].
pub struct SentrySink {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<(String, String)>>>,
}

impl SentrySink {
    /// Listens on 127.0.0.1:0 (a thread, for the rest of the test process).
    pub fn start() -> SentrySink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the sink");
        let addr = listener.local_addr().expect("addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let keep = Arc::clone(&received);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                if let Some(request) = read_request(&stream) {
                    keep.lock().unwrap().push(request);
                }
                let mut stream = stream;
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
                );
            }
        });
        SentrySink { addr, received }
    }

    /// A DSN pointing here (project 42).
    pub fn dsn(&self) -> String {
        format!("http://e2epublickey@{}/42", self.addr)
    }

    /// Every (path, body) received so far.
    pub fn received(&self) -> Vec<(String, String)> {
        self.received.lock().unwrap().clone()
    }
}

/// One request's path and body (`Content-Length` bodies only).
fn read_request(stream: &TcpStream) -> Option<(String, String)> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split(' ').nth(1)?.to_string();
    let mut len = 0;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        if h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some((path, String::from_utf8_lossy(&body).into_owned()))
}
