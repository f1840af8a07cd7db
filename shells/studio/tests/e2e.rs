//! End-to-end tests over real sockets on 127.0.0.1: a raw tungstenite client (blocking std
//! `TcpStream`) plays the worker, plain HTTP/1.1 requests play the operator. Timeouts are
//! generous; the tests assert behaviour, not speed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use studio_core::studio::StudioConfig;
use studio_core::wire::{self, StudioFrame, TaskKind, WorkerCapabilities};
use studio_local::{AdminAuth, Fault, Handle, JobSubmission, LocalConfig, LocalStudio};
use tungstenite::client::ClientRequestBuilder;
use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

const IO_TIMEOUT: Duration = Duration::from_secs(15);
/// The admin token of every test server; [`request`] sends it with every `/local` request
/// that does not bring its own `Authorization`.
const ADMIN_TOKEN: &str = "test-admin-token-5f1e";
const WAIT: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------

struct Env {
    studio: Handle,
    dir: tempfile::TempDir,
}

impl Env {
    fn addr(&self) -> SocketAddr {
        self.studio.local_addr()
    }
    fn out(&self) -> &Path {
        self.dir.path()
    }
}

fn start_with(tweak: impl FnOnce(&mut LocalConfig)) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = LocalConfig {
        out_dir: dir.path().to_path_buf(),
        workers: vec![("w-1".into(), "tok-1".into())],
        admin: AdminAuth::Token(ADMIN_TOKEN.into()),
        ..LocalConfig::default()
    };
    tweak(&mut cfg);
    let studio = LocalStudio::bind(cfg).unwrap().spawn().unwrap();
    Env { studio, dir }
}

fn start() -> Env {
    start_with(|_| {})
}

struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl HttpResponse {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends raw bytes, reads until the server closes, parses the (last) response.
fn raw(addr: SocketAddr, bytes: &[u8]) -> HttpResponse {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(bytes).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse_response(&buf)
}

fn parse_response(buf: &[u8]) -> HttpResponse {
    let text_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(buf)));
    let head = std::str::from_utf8(&buf[..text_end]).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_string(), v.trim().to_string())
        })
        .collect();
    let body = buf[text_end + 4..].to_vec();
    if status == 100 {
        return parse_response(&body);
    }
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    let own_auth = headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("authorization"));
    if path.starts_with("/local") && !own_auth {
        req.push_str(&format!("Authorization: Bearer {ADMIN_TOKEN}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    let r = raw(addr, &bytes);
    if let Some(len) = r.header("content-length") {
        assert_eq!(len.parse::<usize>().unwrap(), r.body.len(), "framing");
    }
    r
}

fn get(addr: SocketAddr, path: &str) -> HttpResponse {
    request(addr, "GET", path, &[], b"")
}

fn post_json(addr: SocketAddr, path: &str, body: Value) -> HttpResponse {
    request(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
}

fn caps() -> WorkerCapabilities {
    WorkerCapabilities {
        machine_name: "test-box".into(),
        username: "tester".into(),
        agent_version: "0.0.0".into(),
        engine: "synthetic".into(),
        vram_total_gb: 8.0,
        vram_threshold_gb: 8.0,
        auto_enabled: true,
        auto_start: false,
        auto_update: None,
        start_minimised: None,
        only_when_idle: None,
        supported_models: vec!["synthetic".into()],
        task_kinds: TaskKind::ALL.to_vec(),
        supported_models_per_kind: Default::default(),
        user_presence: None,
    }
}

type Ws = WebSocket<TcpStream>;

fn ws_connect(
    addr: SocketAddr,
    worker_id: &str,
    token: &str,
) -> Result<(Ws, tungstenite::handshake::client::Response), tungstenite::Error> {
    let url = format!("ws://{addr}/graphics/api/workers/{worker_id}/connect");
    let req = ClientRequestBuilder::new(url.parse().unwrap())
        .with_header("Authorization", format!("Bearer {token}"))
        .with_sub_protocol(wire::SUBPROTOCOL);
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    match tungstenite::client::client_with_config(req, stream, None) {
        Ok(ok) => Ok(ok),
        Err(HandshakeError::Failure(e)) => Err(e),
        Err(HandshakeError::Interrupted(_)) => panic!("blocking handshake interrupted"),
    }
}

fn send(ws: &mut Ws, value: Value) {
    ws.send(Message::text(value.to_string())).unwrap();
}

/// The next application frame, skipping pings/pongs.
fn recv(ws: &mut Ws) -> StudioFrame {
    loop {
        match ws.read().expect("a frame") {
            Message::Text(t) => return wire::decode_studio_frame(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

fn hello(ws: &mut Ws, token: &str) {
    send(
        ws,
        json!({"type": "hello", "authToken": token, "capabilities": caps()}),
    );
}

/// Connects and completes hello/welcome.
fn session(addr: SocketAddr, worker_id: &str, token: &str) -> Ws {
    let (mut ws, _) = ws_connect(addr, worker_id, token).expect("upgrade");
    hello(&mut ws, token);
    match recv(&mut ws) {
        StudioFrame::Welcome { worker_id: w, .. } => assert_eq!(w, worker_id),
        other => panic!("expected welcome, got {other:?}"),
    }
    ws
}

fn next_offer(ws: &mut Ws) -> String {
    loop {
        match recv(ws) {
            StudioFrame::Offer { claim } => return claim.job_id,
            StudioFrame::HeartbeatAck => continue,
            other => panic!("expected an offer, got {other:?}"),
        }
    }
}

fn submit(addr: SocketAddr, body: Value) -> String {
    let r = post_json(addr, "/local/jobs", body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["jobId"].as_str().unwrap().to_string()
}

fn job_state(addr: SocketAddr, id: &str) -> Value {
    let r = get(addr, &format!("/local/jobs/{id}"));
    assert_eq!(r.status, 200);
    r.json()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn multipart(boundary: &str, prompt: &str, ext: &str, filename: &str, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\n{prompt}\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"ext\"\r\n\r\n{ext}\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{filename}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    b.extend_from_slice(data);
    b.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    b
}

fn upload(addr: SocketAddr, worker: &str, token: &str, job: &str, data: &[u8]) -> HttpResponse {
    let body = multipart(
        "XyZ-boundary",
        "a red fox",
        "png",
        &format!("{job}.png"),
        data,
    );
    request(
        addr,
        "POST",
        &format!("/graphics/api/workers/{worker}/jobs/{job}/complete"),
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("Content-Type", "multipart/form-data; boundary=XyZ-boundary"),
        ],
        &body,
    )
}

/// A session that accepted one binary job.
fn running_image_job(env: &Env) -> (Ws, String) {
    let mut ws = session(env.addr(), "w-1", "tok-1");
    let job = submit(env.addr(), json!({"kind": "image", "prompt": "a red fox"}));
    assert_eq!(next_offer(&mut ws), job);
    send(&mut ws, json!({"type": "accept", "jobId": job}));
    wait_until("the job to run", || {
        job_state(env.addr(), &job)["state"] == "running"
    });
    (ws, job)
}

/// Reads until the socket ends; the close frame, if one came.
fn read_until_end(ws: &mut Ws) -> (Vec<StudioFrame>, Option<(u16, String)>) {
    let mut frames = Vec::new();
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => frames.push(wire::decode_studio_frame(t.as_str()).unwrap()),
            Ok(Message::Close(Some(f))) => {
                return (
                    frames,
                    Some((u16::from(f.code), f.reason.as_str().to_string())),
                )
            }
            Ok(Message::Close(None)) => return (frames, Some((1005, String::new()))),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("the server never ended the socket")
            }
            Err(_) => return (frames, None),
        }
    }
}

// ------------------------------------------------------------------------------------------
// Tests
// ------------------------------------------------------------------------------------------

#[test]
fn websocket_session_happy_path() {
    let env = start();
    let addr = env.addr();
    let (mut ws, resp) = ws_connect(addr, "w-1", "tok-1").expect("upgrade");
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some(wire::SUBPROTOCOL)
    );
    hello(&mut ws, "tok-1");
    assert!(matches!(recv(&mut ws), StudioFrame::Welcome { worker_id, .. } if worker_id == "w-1"));
    send(
        &mut ws,
        json!({"type": "heartbeat", "capabilities": caps()}),
    );
    assert_eq!(recv(&mut ws), StudioFrame::HeartbeatAck);

    let job = submit(addr, json!({"kind": "llm", "prompt": "hello there"}));
    assert_eq!(next_offer(&mut ws), job);
    send(&mut ws, json!({"type": "accept", "jobId": job}));
    send(
        &mut ws,
        json!({"type": "completeJson", "jobId": job, "result": {"role": "assistant", "content": "hi"}, "prompt": "hello there"}),
    );
    assert_eq!(
        recv(&mut ws),
        StudioFrame::CompleteAck {
            job_id: job.clone()
        }
    );
    send(
        &mut ws,
        json!({"type": "logBatch", "entries": [{"ts": "2026-05-25T12:00:00.000Z", "level": "info", "category": "ws", "message": "json result sent", "jobId": job}]}),
    );

    let jobs = get(addr, "/local/jobs").json();
    let row = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == job.as_str())
        .unwrap();
    assert_eq!(row["state"], "done");
    assert_eq!(row["worker"], "w-1");
    assert_eq!(row["attempts"], 1);
    assert_eq!(row["resultSummary"], "json");
    assert_eq!(row["kind"], "llm");

    let detail = job_state(addr, &job);
    assert_eq!(detail["result"]["type"], "json");
    assert_eq!(detail["result"]["value"]["content"], "hi");
    let result = get(addr, &format!("/local/jobs/{job}/result"));
    assert_eq!(result.status, 200);
    assert_eq!(result.header("content-type"), Some("application/json"));
    assert_eq!(result.json()["content"], "hi");

    wait_until("the log batch", || {
        let logs = get(addr, "/local/workers/w-1/logs").json();
        logs.as_array().is_some_and(|a| a.len() == 1)
    });
    let workers = get(addr, "/local/workers").json();
    let w = &workers.as_array().unwrap()[0];
    assert_eq!(w["id"], "w-1");
    assert_eq!(w["connected"], true);
    assert_eq!(w["sockets"], 1);
    assert_eq!(w["logs"], 1);
    assert_eq!(w["capabilities"]["machineName"], "test-box");
    assert!(w["lastHeartbeatMs"].is_u64());

    // The in-process helpers see the same state.
    let summary = env.studio.jobs().into_iter().find(|j| j.id == job).unwrap();
    assert_eq!(summary.state, "done");
    ws.close(None).unwrap();
    let _ = read_until_end(&mut ws);
    wait_until("the worker to disconnect", || {
        env.studio.workers().iter().all(|w| !w.connected)
    });
    env.studio.shutdown();
}

#[test]
fn bad_token_upgrade_is_401_with_a_json_body() {
    let env = start();
    for (worker, token) in [("w-1", "wrong"), ("nobody", "tok-1")] {
        match ws_connect(env.addr(), worker, token) {
            Err(tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 401);
                let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
                assert!(body["error"].as_str().is_some_and(|s| !s.is_empty()));
                assert!(body["reference"].as_str().is_some());
            }
            Err(e) => panic!("expected HTTP 401, got {e}"),
            Ok(_) => panic!("a bad token was accepted"),
        }
    }
    // No bearer at all.
    let r = request(
        env.addr(),
        "GET",
        "/graphics/api/workers/w-1/connect",
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
        b"",
    );
    assert_eq!(r.status, 401);
    assert!(r.json()["error"].as_str().unwrap().contains("Bearer"));
    // A plain GET on the upgrade route.
    assert_eq!(
        get(env.addr(), "/graphics/api/workers/w-1/connect").status,
        426
    );
}

#[test]
fn hello_with_a_wrong_token_is_closed_4001() {
    let env = start();
    let (mut ws, _) = ws_connect(env.addr(), "w-1", "tok-1").unwrap();
    hello(&mut ws, "not-the-token");
    let (frames, close) = read_until_end(&mut ws);
    assert!(matches!(
        frames.first(),
        Some(StudioFrame::Error {
            code: wire::WorkerErrorCode::AuthFailed,
            ..
        })
    ));
    assert_eq!(close.map(|c| c.0), Some(4001));
}

#[test]
fn registration_over_http_then_connect_with_the_issued_token() {
    let env = start_with(|c| c.workers.clear());
    let addr = env.addr();
    let secret = "s".repeat(64);
    let body = json!({
        "installId": "11111111-2222-3333-4444-555555555555",
        "registrationSecretHash": wire::sha256_hex(secret.as_bytes()),
        "capabilities": caps(),
        "userAgent": "studio-worker/test",
    });
    let r = post_json(addr, "/graphics/api/workers/register-request", body);
    assert_eq!(r.status, 200);
    let rid = r.json()["requestId"].as_str().unwrap().to_string();
    assert_eq!(r.json()["status"], "pending");
    // The id carries 64 random bits after its sequence number: approving a request takes
    // knowing its id, not counting.
    let random = rid.strip_prefix("rr-1-").unwrap_or_else(|| panic!("{rid}"));
    assert!(
        random.len() == 16 && random.bytes().all(|b| b.is_ascii_hexdigit()),
        "{rid}"
    );

    let status_path = format!("/graphics/api/workers/register-requests/{rid}");
    let bearer = format!("Bearer {secret}");
    let poll = || {
        request(
            addr,
            "GET",
            &status_path,
            &[("Authorization", &bearer)],
            b"",
        )
    };
    assert_eq!(poll().json(), json!({"status": "pending"}));
    assert_eq!(
        request(
            addr,
            "GET",
            &status_path,
            &[("Authorization", "Bearer nope")],
            b""
        )
        .status,
        401
    );
    assert_eq!(
        request(
            addr,
            "GET",
            "/graphics/api/workers/register-requests/rr-999",
            &[("Authorization", &bearer)],
            b""
        )
        .status,
        404
    );

    let pending = get(addr, "/local/requests").json();
    assert_eq!(pending[0]["requestId"], rid.as_str());
    assert_eq!(pending[0]["userAgent"], "studio-worker/test");
    let r = request(
        addr,
        "POST",
        &format!("/local/requests/{rid}/approve"),
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(get(addr, "/local/requests")
        .json()
        .as_array()
        .unwrap()
        .is_empty());

    let approved = poll().json();
    assert_eq!(approved["status"], "approved");
    let worker_id = approved["workerId"].as_str().unwrap().to_string();
    let token = approved["authToken"].as_str().unwrap().to_string();
    let _ws = session(addr, &worker_id, &token);
    assert!(env.studio.wait_for_worker(&worker_id, WAIT));

    // Rejection of a second install, via the admin API.
    let body2 = json!({
        "installId": "other-install",
        "registrationSecretHash": wire::sha256_hex(secret.as_bytes()),
        "capabilities": caps(),
        "userAgent": "studio-worker/test",
    });
    let rid2 = post_json(addr, "/graphics/api/workers/register-request", body2).json()["requestId"]
        .as_str()
        .unwrap()
        .to_string();
    let r = post_json(
        addr,
        &format!("/local/requests/{rid2}/reject"),
        json!({"reason": "not today"}),
    );
    assert_eq!(r.status, 200);
    let r = request(
        addr,
        "GET",
        &format!("/graphics/api/workers/register-requests/{rid2}"),
        &[("Authorization", &bearer)],
        b"",
    );
    assert_eq!(
        r.json(),
        json!({"status": "rejected", "reason": "not today"})
    );
    // Approving a rejected request conflicts.
    assert_eq!(
        request(
            addr,
            "POST",
            &format!("/local/requests/{rid2}/approve"),
            &[],
            b""
        )
        .status,
        409
    );
    // A malformed register body is a 400 with a message.
    let r = post_json(
        addr,
        "/graphics/api/workers/register-request",
        json!({"installId": 3}),
    );
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("invalid JSON"));
}

#[test]
fn auto_approve_hands_out_a_token_on_the_first_poll() {
    let env = start_with(|c| c.auto_approve = true);
    let secret = "a".repeat(64);
    let r = post_json(
        env.addr(),
        "/graphics/api/workers/register-request",
        json!({
            "installId": "i-1",
            "registrationSecretHash": wire::sha256_hex(secret.as_bytes()),
            "capabilities": caps(),
            "userAgent": "t",
        }),
    );
    let rid = r.json()["requestId"].as_str().unwrap().to_string();
    let r = request(
        env.addr(),
        "GET",
        &format!("/graphics/api/workers/register-requests/{rid}"),
        &[("Authorization", &format!("Bearer {secret}"))],
        b"",
    );
    assert_eq!(r.json()["status"], "approved");
}

#[test]
fn multipart_upload_stores_the_file_and_marks_the_job_done() {
    let env = start();
    let addr = env.addr();
    let (mut ws, job) = running_image_job(&env);
    // Larger than the socket buffers: many reads in, many writes out.
    let data: Vec<u8> = (0..=255u8).cycle().take(3_000_000).collect();

    // Wrong token: 401, nothing stored.
    assert_eq!(upload(addr, "w-1", "bad", &job, &data).status, 401);
    let r = upload(addr, "w-1", "tok-1", &job, &data);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json(), json!({"ok": true}));

    let path = env.out().join(format!("{job}.png"));
    assert_eq!(std::fs::read(&path).unwrap(), data);
    let leftovers: Vec<_> = std::fs::read_dir(env.out())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");

    let detail = job_state(addr, &job);
    assert_eq!(detail["state"], "done");
    assert_eq!(detail["resultSummary"], "png, 3000000 bytes");
    assert_eq!(detail["result"]["type"], "file");
    assert_eq!(detail["result"]["bytes"], 3_000_000);
    assert_eq!(detail["result"]["prompt"], "a red fox");
    let result = get(addr, &format!("/local/jobs/{job}/result"));
    assert_eq!(result.status, 200);
    assert_eq!(result.header("content-type"), Some("image/png"));
    assert_eq!(result.body, data);
    let (ct, bytes) = env.studio.job_result(&job).unwrap();
    assert_eq!((ct.as_str(), bytes.len()), ("image/png", data.len()));

    // A repeated upload conflicts.
    assert_eq!(upload(addr, "w-1", "tok-1", &job, &data).status, 409);
    // Unknown job: 409.
    assert_eq!(upload(addr, "w-1", "tok-1", "job-999", &data).status, 409);
    // Malformed multipart: 400 with a reason.
    let r = request(
        addr,
        "POST",
        &format!("/graphics/api/workers/w-1/jobs/{job}/complete"),
        &[
            ("Authorization", "Bearer tok-1"),
            ("Content-Type", "multipart/form-data; boundary=zz"),
        ],
        b"--zz\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nno end",
    );
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("multipart"));
    // Missing parts: 400.
    let r = request(
        addr,
        "POST",
        &format!("/graphics/api/workers/w-1/jobs/{job}/complete"),
        &[
            ("Authorization", "Bearer tok-1"),
            ("Content-Type", "multipart/form-data; boundary=zz"),
        ],
        b"--zz\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\np\r\n--zz--\r\n",
    );
    assert_eq!(r.status, 400);
    // The session is still fine: a heartbeat is acked.
    send(
        &mut ws,
        json!({"type": "heartbeat", "capabilities": caps()}),
    );
    assert_eq!(recv(&mut ws), StudioFrame::HeartbeatAck);
}

#[test]
fn upload_fault_fails_once_then_succeeds() {
    let env = start();
    let addr = env.addr();
    let (_ws, job) = running_image_job(&env);
    let r = post_json(
        addr,
        "/local/faults",
        json!({"failUploads": 1, "failUploadsStatus": 500}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["failUploads"], 1);
    let r = upload(addr, "w-1", "tok-1", &job, b"img");
    assert_eq!(r.status, 500);
    assert_eq!(job_state(addr, &job)["state"], "running");
    let r = upload(addr, "w-1", "tok-1", &job, b"img");
    assert_eq!(r.status, 200);
    assert_eq!(job_state(addr, &job)["state"], "done");
    assert_eq!(get(addr, "/local/faults").json()["failUploads"], 0);
    assert_eq!(
        post_json(addr, "/local/faults", json!({"failUploadsStatus": 200})).status,
        400
    );
}

#[test]
fn upgrade_fault_refuses_the_next_upgrade() {
    let env = start();
    env.studio
        .inject(Fault::FailUpgrades {
            count: 1,
            status: 503,
        })
        .unwrap();
    match ws_connect(env.addr(), "w-1", "tok-1") {
        Err(tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 503);
            let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
            assert!(body["error"].as_str().unwrap().contains("injected"));
        }
        other => panic!("expected HTTP 503, got {:?}", other.map(|_| ())),
    }
    let _ws = session(env.addr(), "w-1", "tok-1");
}

#[test]
fn drop_fault_ends_the_socket_without_a_close_frame() {
    let env = start();
    let mut ws = session(env.addr(), "w-1", "tok-1");
    let r = request(env.addr(), "POST", "/local/workers/w-1/drop", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["connections"], 1);
    let (frames, close) = read_until_end(&mut ws);
    assert!(frames.is_empty(), "{frames:?}");
    assert_eq!(close, None, "a close frame was sent");
    wait_until("the studio to see the disconnect", || {
        env.studio.workers().iter().all(|w| !w.connected)
    });
    // No socket left: 404.
    assert_eq!(
        request(env.addr(), "POST", "/local/workers/w-1/drop", &[], b"").status,
        404
    );
}

#[test]
fn close_fault_sends_the_requested_close_frame() {
    let env = start();
    let mut ws = session(env.addr(), "w-1", "tok-1");
    let r = post_json(
        env.addr(),
        "/local/workers/w-1/close",
        json!({"code": 4001, "reason": "go away"}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let (_, close) = read_until_end(&mut ws);
    assert_eq!(close, Some((4001, "go away".to_string())));
    wait_until("the studio to see the disconnect", || {
        env.studio.workers().iter().all(|w| !w.connected)
    });
    // Codes that cannot be sent are refused.
    let _ws2 = session(env.addr(), "w-1", "tok-1");
    assert_eq!(
        post_json(
            env.addr(),
            "/local/workers/w-1/close",
            json!({"code": 1005})
        )
        .status,
        400
    );
}

#[test]
fn error_fault_sends_an_error_frame_then_the_paired_close() {
    let env = start();
    let mut ws = session(env.addr(), "w-1", "tok-1");
    let r = post_json(
        env.addr(),
        "/local/workers/w-1/error",
        json!({"code": "auth_failed", "message": "token revoked"}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let (frames, close) = read_until_end(&mut ws);
    assert_eq!(
        frames,
        vec![StudioFrame::Error {
            code: wire::WorkerErrorCode::AuthFailed,
            message: "token revoked".into()
        }]
    );
    assert_eq!(close.map(|c| c.0), Some(4001));

    let mut ws = session(env.addr(), "w-1", "tok-1");
    env.studio
        .inject(Fault::Error {
            worker_id: "w-1".into(),
            code: wire::WorkerErrorCode::DuplicateWorker,
            message: "x".into(),
        })
        .unwrap();
    let (_, close) = read_until_end(&mut ws);
    assert_eq!(close.map(|c| c.0), Some(4003));
    assert_eq!(
        post_json(
            env.addr(),
            "/local/workers/w-1/error",
            json!({"code": "nope"})
        )
        .status,
        400
    );
}

#[test]
fn stall_fault_leaves_a_half_open_socket_the_sweep_closes() {
    let env = start_with(|c| {
        c.studio = StudioConfig {
            session_timeout: Duration::from_millis(800),
            sweep_interval: Duration::from_millis(200),
            ..StudioConfig::default()
        }
    });
    let mut ws = session(env.addr(), "w-1", "tok-1");
    let r = request(env.addr(), "POST", "/local/workers/w-1/stall", &[], b"");
    assert_eq!(r.status, 200);
    let w = &env.studio.workers()[0];
    assert_eq!((w.sockets, w.stalled_sockets), (1, 1));
    // A heartbeat goes unanswered; the sweep eventually drops the socket.
    send(
        &mut ws,
        json!({"type": "heartbeat", "capabilities": caps()}),
    );
    let (frames, close) = read_until_end(&mut ws);
    assert!(frames.is_empty(), "a stalled socket answered: {frames:?}");
    assert_eq!(close, None);
    wait_until("the session to expire", || {
        env.studio
            .workers()
            .iter()
            .all(|w| !w.connected && w.sockets == 0)
    });
}

#[test]
fn unanswered_offer_times_out_and_requeues() {
    let env = start_with(|c| {
        c.studio = StudioConfig {
            offer_timeout: Duration::from_millis(300),
            ..StudioConfig::default()
        }
    });
    let mut ws = session(env.addr(), "w-1", "tok-1");
    let job = env
        .studio
        .submit(JobSubmission::new(TaskKind::Llm, "x"))
        .unwrap();
    assert_eq!(next_offer(&mut ws), job);
    // Not answered: the studio's timer (the poll timeout) requeues it.
    wait_until("the offer to time out", || {
        env.studio
            .job(&job)
            .is_some_and(|j| j.summary.state == "queued")
    });
    // The next heartbeat frees the worker, which gets the job again.
    send(
        &mut ws,
        json!({"type": "heartbeat", "capabilities": caps()}),
    );
    assert_eq!(next_offer(&mut ws), job);
}

#[test]
fn binary_frames_are_a_protocol_violation() {
    let env = start();
    let mut ws = session(env.addr(), "w-1", "tok-1");
    ws.send(Message::binary(vec![1u8, 2, 3])).unwrap();
    let (frames, close) = read_until_end(&mut ws);
    assert!(matches!(
        frames.as_slice(),
        [StudioFrame::Error {
            code: wire::WorkerErrorCode::ProtocolViolation,
            ..
        }]
    ));
    assert_eq!(close.map(|c| c.0), Some(4002));
}

#[test]
fn oversized_frames_are_a_protocol_violation() {
    let env = start_with(|c| c.studio.max_frame_bytes = 4096);
    let mut ws = session(env.addr(), "w-1", "tok-1");
    let big = format!(
        "{{\"type\":\"logBatch\",\"entries\":[],\"pad\":\"{}\"}}",
        "x".repeat(10_000)
    );
    ws.send(Message::text(big)).unwrap();
    let (frames, close) = read_until_end(&mut ws);
    assert!(
        matches!(
            frames.as_slice(),
            [StudioFrame::Error {
                code: wire::WorkerErrorCode::ProtocolViolation,
                ..
            }]
        ),
        "{frames:?}"
    );
    assert_eq!(close.map(|c| c.0), Some(4002));
}

/// `bytes` with its `Host: x` line replaced by what the admin guard wants (a local host, the
/// token, a JSON body), so the codec's own answers show through.
fn as_admin(bytes: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(bytes).replacen(
        "Host: x\r\n",
        &format!(
            "Host: 127.0.0.1\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\n"
        ),
        1,
    );
    text.into_bytes()
}

#[test]
fn malformed_http_gets_clear_errors() {
    let env = start_with(|c| c.max_json_body_bytes = 1024);
    let addr = env.addr();
    let cases: &[(&[u8], u16)] = &[
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET /local/jobs HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n", 400),
        (b"GET /local/%zz HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET / HTTP/3.0\r\nHost: x\r\n\r\n", 505),
        (
            b"POST /local/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            411,
        ),
        (
            b"POST /local/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 99999\r\n\r\n",
            413,
        ),
        (
            b"POST /local/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            400,
        ),
        (b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (b"DELETE /local/jobs HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"POST /local/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n{nope", 400),
        (
            b"POST /local/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 13\r\n\r\n{\"kind\":\"3d\"}",
            400,
        ),
        (b"GET /local/jobs/job-404 HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    ];
    for (bytes, status) in cases {
        let r = raw(addr, &as_admin(bytes));
        assert_eq!(r.status, *status, "{:?}", String::from_utf8_lossy(bytes));
        let body = r.json();
        assert!(
            body["error"].as_str().is_some_and(|s| !s.is_empty()),
            "{body}"
        );
    }
    // A head over 64 KiB.
    let mut big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 70 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    assert_eq!(raw(addr, &big).status, 431);
    // A request cut short: 400 (the write half is closed, the answer still comes back).
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(&as_admin(
        b"POST /local/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{",
    ))
    .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert_eq!(parse_response(&buf).status, 400);
    // The server is still healthy.
    assert_eq!(get(addr, "/local/stats").status, 200);
}

#[test]
fn expect_continue_is_honoured() {
    let env = start();
    let mut s = TcpStream::connect(env.addr()).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let body = br#"{"kind":"video","prompt":"waves"}"#;
    s.write_all(&as_admin(
        format!(
            "POST /local/jobs HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    ))
    .unwrap();
    let mut first = [0u8; 25];
    s.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(body).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let r = parse_response(&buf);
    assert_eq!(r.status, 200);
    assert!(r.json()["jobId"].as_str().is_some());
}

#[test]
fn admin_api_and_in_process_helpers() {
    let env = start_with(|c| c.workers.clear());
    let addr = env.addr();
    // Pre-provision over HTTP, then connect.
    let r = post_json(
        addr,
        "/local/workers",
        json!({"workerId": "w-9", "authToken": "t-9"}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        post_json(
            addr,
            "/local/workers",
            json!({"workerId": "a/b", "authToken": "t"})
        )
        .status,
        400
    );
    let mut ws = session(addr, "w-9", "t-9");
    // A full task with a VRAM estimate over the worker's threshold stays queued.
    let heavy = submit(
        addr,
        json!({"task": {"kind": "image", "prompt": "big", "width": 64}, "vramGbEstimate": 99.0}),
    );
    assert_eq!(job_state(addr, &heavy)["state"], "queued");
    assert_eq!(job_state(addr, &heavy)["task"]["width"], 64);
    // The in-process helpers go through the same operations.
    let job = env
        .studio
        .submit(JobSubmission::new(TaskKind::AudioStt, "file:///a.wav"))
        .unwrap();
    assert_eq!(next_offer(&mut ws), job);
    send(&mut ws, json!({"type": "accept", "jobId": job}));
    send(
        &mut ws,
        json!({"type": "fail", "jobId": job, "error": "no such file", "retryable": false}),
    );
    assert_eq!(
        recv(&mut ws),
        StudioFrame::FailAck {
            job_id: job.clone()
        }
    );
    let done = env.studio.wait_for_job(&job, WAIT).unwrap();
    assert_eq!(done.summary.state, "failed");
    assert_eq!(done.summary.last_error.as_deref(), Some("no such file"));
    assert_eq!(get(addr, &format!("/local/jobs/{job}/result")).status, 409);
    let stats = get(addr, "/local/stats").json();
    assert_eq!(stats["failed"], 1);
    assert_eq!(stats["queued"], 1);
    assert_eq!(stats["websockets"], 1);
    let index = get(addr, "/local").json();
    assert!(index["admin"].as_array().unwrap().len() > 5);
    // Deleting the worker closes its socket with 4004.
    assert_eq!(
        request(addr, "DELETE", "/local/workers/w-9", &[], b"").status,
        200
    );
    let (frames, close) = read_until_end(&mut ws);
    assert!(matches!(
        frames.last(),
        Some(StudioFrame::Error {
            code: wire::WorkerErrorCode::WorkerDeleted,
            ..
        })
    ));
    assert_eq!(close.map(|c| c.0), Some(4004));
    assert_eq!(
        request(addr, "DELETE", "/local/workers/w-9", &[], b"").status,
        404
    );
    assert!(env.studio.approve("rr-1").is_err());
}

#[test]
fn shutdown_over_http_stops_the_server_and_closes_sockets() {
    let env = start();
    let addr = env.addr();
    let mut ws = session(addr, "w-1", "tok-1");
    let r = request(addr, "POST", "/local/shutdown", &[], b"");
    assert_eq!(r.status, 200);
    let (_, close) = read_until_end(&mut ws);
    assert_eq!(close.map(|c| c.0), Some(u16::from(CloseCode::Away)));
    let Env { studio, dir: _dir } = env;
    studio.join().unwrap();
    assert!(TcpStream::connect(addr).is_err(), "still listening");
}

#[test]
fn run_blocks_until_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let studio = LocalStudio::bind(LocalConfig {
        out_dir: dir.path().join("nested/out"),
        admin: AdminAuth::Token(ADMIN_TOKEN.into()),
        ..LocalConfig::default()
    })
    .unwrap();
    let addr = studio.local_addr();
    assert_eq!(studio.base_url(), format!("http://{addr}/"));
    let t = std::thread::spawn(move || studio.run());
    assert_eq!(get(addr, "/local/jobs").json(), json!([]));
    assert_eq!(
        request(addr, "POST", "/local/shutdown", &[], b"").status,
        200
    );
    t.join().unwrap().unwrap();
    assert!(dir.path().join("nested/out").is_dir());
}

#[test]
fn many_clients_at_once() {
    let env = start();
    let addr = env.addr();
    let threads: Vec<_> = (0..16)
        .map(|i| {
            std::thread::spawn(move || {
                for _ in 0..5 {
                    let id = submit(addr, json!({"kind": "llm", "prompt": format!("p{i}")}));
                    assert!(id.starts_with("job-"));
                }
            })
        })
        .collect();
    let mut ws = session(addr, "w-1", "tok-1");
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(env.studio.jobs().len(), 80);
    // The one worker gets the oldest job.
    assert_eq!(next_offer(&mut ws), "job-1");
}

/// A client frame: FIN + text opcode, masked.
fn masked_text_frame(text: &str) -> Vec<u8> {
    let payload = text.as_bytes();
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut f = vec![0x81u8];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

#[test]
fn frames_sent_with_the_upgrade_request_are_not_lost() {
    let env = start();
    let mut s = TcpStream::connect(env.addr()).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut bytes = b"GET /graphics/api/workers/w-1/connect HTTP/1.1\r\nHost: x\r\n\
        Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer tok-1\r\n\r\n"
        .to_vec();
    let hello = json!({"type": "hello", "authToken": "tok-1", "capabilities": caps()});
    bytes.extend(masked_text_frame(&hello.to_string()));
    s.write_all(&bytes).unwrap();
    let mut ws = WebSocket::from_raw_socket(s, tungstenite::protocol::Role::Client, None);
    // The 101 head comes first; read it byte by byte off the raw stream.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        ws.get_mut().read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    // RFC 6455's sample key and accept value.
    assert!(head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    assert!(
        !head.contains("Sec-WebSocket-Protocol"),
        "not requested, not echoed"
    );
    assert!(matches!(recv(&mut ws), StudioFrame::Welcome { .. }));
}

#[test]
fn handle_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Handle>();
}

#[test]
fn the_next_offer_follows_an_upload_after_the_nudge_delay() {
    // A delay longer than the test: when the 200 is out the machine has offered the next
    // job, yet the offer is held, so a ping sent after the 200 is answered before it.
    let env = start_with(|c| c.upload_nudge_delay = Duration::from_secs(3600));
    let addr = env.addr();
    let (mut ws, job) = running_image_job(&env);
    let second = submit(addr, json!({"kind": "image", "prompt": "second"}));
    assert_eq!(upload(addr, "w-1", "tok-1", &job, b"img").status, 200);
    assert_eq!(job_state(addr, &second)["state"], "offered");
    ws.send(Message::Ping(b"after the 200".to_vec().into()))
        .unwrap();
    loop {
        match ws.read().expect("a frame") {
            Message::Pong(p) => {
                assert_eq!(&p[..], b"after the 200");
                break;
            }
            Message::Text(t) => panic!("the offer overtook the nudge delay: {t}"),
            _ => {}
        }
    }
    // A short delay: the held offer follows it.
    let env = start_with(|c| c.upload_nudge_delay = Duration::from_millis(300));
    let (mut ws, job) = running_image_job(&env);
    let second = submit(env.addr(), json!({"kind": "image", "prompt": "second"}));
    assert_eq!(upload(env.addr(), "w-1", "tok-1", &job, b"img").status, 200);
    assert_eq!(next_offer(&mut ws), second);
    // Without a delay the offer still comes (after the 200).
    let env = start_with(|c| c.upload_nudge_delay = Duration::ZERO);
    let (mut ws, job) = running_image_job(&env);
    let second = submit(env.addr(), json!({"kind": "llm", "prompt": "second"}));
    assert_eq!(upload(env.addr(), "w-1", "tok-1", &job, b"img").status, 200);
    assert_eq!(next_offer(&mut ws), second);
}

#[test]
fn frames_just_before_a_close_are_delivered() {
    let env = start();
    let mut ws = session(env.addr(), "w-1", "tok-1");
    let entry = json!({"ts": "2026-05-25T12:00:00.000Z", "level": "info", "category": "ws", "message": "m"});
    // Written back to back with the close: they reach the server in one burst.
    for _ in 0..3 {
        ws.write(Message::text(
            json!({"type": "logBatch", "entries": [entry]}).to_string(),
        ))
        .unwrap();
    }
    ws.close(None).unwrap();
    let _ = read_until_end(&mut ws);
    wait_until("the disconnect", || {
        env.studio.workers().iter().all(|w| !w.connected)
    });
    assert_eq!(env.studio.worker_logs("w-1").unwrap().len(), 3);
}

#[test]
fn probe_offer_replies_are_intercepted_not_fed_to_the_machine() {
    let env = start();
    let mut ws = session(env.addr(), "w-1", "tok-1");
    // Over HTTP, an image probe by default.
    let r = post_json(
        env.addr(),
        "/local/workers/w-1/probe-offer",
        json!({"jobId": "probe-1"}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["connections"], 1);
    let claim = match recv(&mut ws) {
        StudioFrame::Offer { claim } => claim,
        other => panic!("expected the probe offer, got {other:?}"),
    };
    assert_eq!(claim.job_id, "probe-1");
    assert_eq!(claim.task.kind(), TaskKind::Image);
    assert_eq!(claim.model_source, wire::ModelSource::synthetic());

    // accept and a result upload: recorded, the upload answered 200.
    send(&mut ws, json!({"type": "accept", "jobId": "probe-1"}));
    wait_until("the accept to be recorded", || {
        env.studio.probe_replies("w-1").len() == 1
    });
    let up = upload(env.addr(), "w-1", "tok-1", "probe-1", b"\x89PNG fake");
    assert_eq!(up.status, 200, "{}", String::from_utf8_lossy(&up.body));
    // In process: an llm probe answered with completeJson, which gets its ack.
    env.studio
        .inject(Fault::ProbeOffer {
            worker_id: "w-1".into(),
            job_id: "probe-2".into(),
            task: Box::new(studio_local::api::task_for(TaskKind::Llm, "hi".into())),
        })
        .unwrap();
    assert!(matches!(recv(&mut ws), StudioFrame::Offer { claim } if claim.job_id == "probe-2"));
    send(
        &mut ws,
        json!({"type": "completeJson", "jobId": "probe-2", "result": {"ok": 1}, "prompt": "hi"}),
    );
    assert_eq!(
        recv(&mut ws),
        StudioFrame::CompleteAck {
            job_id: "probe-2".into()
        }
    );
    // A reject of a third probe.
    env.studio
        .inject(Fault::ProbeOffer {
            worker_id: "w-1".into(),
            job_id: "probe-3".into(),
            task: Box::new(studio_local::api::task_for(TaskKind::Video, "v".into())),
        })
        .unwrap();
    assert!(matches!(recv(&mut ws), StudioFrame::Offer { .. }));
    send(
        &mut ws,
        json!({"type": "reject", "jobId": "probe-3", "reason": "worker already has an in-flight job", "code": "busy"}),
    );

    wait_until("three replies and an upload", || {
        env.studio.probe_replies("w-1").len() == 4
    });
    let replies: Vec<Value> = env
        .studio
        .probe_replies("w-1")
        .iter()
        .map(|t| serde_json::from_str(t).unwrap())
        .collect();
    assert_eq!(replies[0], json!({"type": "accept", "jobId": "probe-1"}));
    assert_eq!(replies[1]["type"], "upload");
    assert_eq!(replies[1]["jobId"], "probe-1");
    assert_eq!(replies[1]["ext"], "png");
    assert_eq!(replies[1]["bytes"], 9);
    assert_eq!(replies[2]["type"], "completeJson");
    assert_eq!(replies[3]["code"], "busy");
    let over_http = get(env.addr(), "/local/workers/w-1/probe-replies");
    assert_eq!(over_http.json().as_array().map(Vec::len), Some(4));

    // The machine never saw any of it: the session is alive, no job exists, nothing stored.
    assert!(env.studio.jobs().is_empty());
    assert!(!env.out().join("probe-1.png").exists());
    let w = &env.studio.workers()[0];
    assert!(w.connected, "{w:?}");
    assert_eq!(w.connection_stats.connections, 1);

    // Refusals: a real job id, a worker without a socket, a bad id.
    let real = submit(env.addr(), json!({"kind": "llm", "prompt": "real"}));
    let r = post_json(
        env.addr(),
        "/local/workers/w-1/probe-offer",
        json!({"jobId": real}),
    );
    assert_eq!(r.status, 409);
    let r = post_json(
        env.addr(),
        "/local/workers/w-9/probe-offer",
        json!({"jobId": "probe-9"}),
    );
    assert_eq!(r.status, 404);
    let r = post_json(
        env.addr(),
        "/local/workers/w-1/probe-offer",
        json!({"jobId": "../etc"}),
    );
    assert_eq!(r.status, 400);
}

#[test]
fn connection_stats_count_upgrades_and_the_workers_own_close() {
    let env = start();
    // A refused upgrade (wrong token) and an id the studio does not know.
    assert!(ws_connect(env.addr(), "w-1", "wrong").is_err());
    assert!(ws_connect(env.addr(), "nobody", "x").is_err());
    let mut ws = session(env.addr(), "w-1", "tok-1");
    ws.close(Some(tungstenite::protocol::CloseFrame {
        code: CloseCode::Normal,
        reason: "session ended".into(),
    }))
    .unwrap();
    let _ = read_until_end(&mut ws);
    wait_until("the close to be recorded", || {
        env.studio.connection_stats("w-1").last_close_code == Some(1000)
    });
    let seen = env.studio.connection_stats("w-1");
    assert_eq!(seen.upgrade_attempts, 2, "{seen:?}");
    assert_eq!(seen.upgrades_refused, 1, "{seen:?}");
    assert_eq!(seen.connections, 1, "{seen:?}");
    assert_eq!(seen.last_close_reason.as_deref(), Some("session ended"));
    assert_eq!(env.studio.connection_stats("nobody").upgrade_attempts, 1);
    assert_eq!(env.studio.stats().unwrap().upgrade_attempts, 3);
    let over_http = get(env.addr(), "/local/workers/w-1/connections").json();
    assert_eq!(over_http["upgradeAttempts"], 2);
    assert_eq!(over_http["lastCloseCode"], 1000);

    // A close the studio starts is not the worker's: the reply is not recorded.
    let mut ws = session(env.addr(), "w-1", "tok-1");
    env.studio
        .inject(Fault::Close {
            worker_id: "w-1".into(),
            code: 4001,
            reason: "revoked".into(),
        })
        .unwrap();
    let _ = read_until_end(&mut ws);
    wait_until("the studio to see the disconnect", || {
        env.studio.workers().iter().all(|w| !w.connected)
    });
    let seen = env.studio.connection_stats("w-1");
    assert_eq!(seen.connections, 2);
    assert_eq!(seen.last_close_code, Some(1000), "{seen:?}");
}

// ------------------------------------------------------------------------------------------
// The admin API's guard
// ------------------------------------------------------------------------------------------

#[test]
fn the_admin_api_wants_its_token_a_local_host_no_foreign_origin_and_json() {
    let env = start();
    let addr = env.addr();
    let job = br#"{"kind":"llm","prompt":"hi"}"#;
    let json = ("Content-Type", "application/json");
    let cases: [(&[(&str, &str)], u16); 6] = [
        (&[json, ("Authorization", "Bearer nope")], 401),
        (&[json, ("Authorization", "Basic x")], 401),
        (&[json, ("Origin", "https://evil.example")], 403),
        (&[json, ("Origin", "null")], 403),
        (&[("Content-Type", "text/plain")], 415),
        (
            &[("Content-Type", "application/x-www-form-urlencoded")],
            415,
        ),
    ];
    for (headers, status) in cases {
        let r = request(addr, "POST", "/local/jobs", headers, job);
        assert_eq!(
            r.status,
            status,
            "{headers:?}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(r.json()["error"].is_string());
    }
    assert_eq!(
        request(
            addr,
            "GET",
            "/local/jobs",
            &[("Authorization", "Bearer x")],
            b""
        )
        .header("www-authenticate"),
        Some("Bearer")
    );
    // A name pointed at 127.0.0.1 (DNS rebinding) is not this server.
    let rebound = format!(
        "GET /local/jobs HTTP/1.1\r\nHost: evil.example:{}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\r\n",
        addr.port()
    );
    assert_eq!(raw(addr, rebound.as_bytes()).status, 403);
    // None of the refused submissions made a job; the right request does.
    assert_eq!(get(addr, "/local/jobs").json().as_array().unwrap().len(), 0);
    assert_eq!(
        request(addr, "POST", "/local/jobs", &[json], job).status,
        200
    );
    // The worker-facing routes take no admin token (their own bearer is the worker's).
    let r = request(
        addr,
        "POST",
        "/graphics/api/workers/register-request",
        &[json],
        b"{}",
    );
    assert_ne!(r.status, 401);
}

#[test]
fn admin_bodies_are_capped_before_they_are_read() {
    let env = start_with(|c| c.max_json_body_bytes = 1000);
    let addr = env.addr();
    // Announced past the cap: refused from the head, the body is never sent.
    let head = format!(
        "POST /local/jobs HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 1001\r\n\r\n"
    );
    let r = raw(addr, head.as_bytes());
    assert_eq!(r.status, 413);
    assert!(r.json()["error"].as_str().unwrap().contains("1000"));
    // So is a registration request; a result upload has its own, larger cap.
    let r = request(
        addr,
        "POST",
        "/graphics/api/workers/register-request",
        &[("Content-Type", "application/json")],
        &vec![b' '; 1001],
    );
    assert_eq!(r.status, 413);
    assert_eq!(studio_local::DEFAULT_MAX_JSON_BODY_BYTES, 1 << 20);
}

#[test]
fn the_admin_token_can_be_turned_off_and_a_random_one_is_the_default() {
    let env = start_with(|c| c.admin = AdminAuth::Disabled);
    assert_eq!(env.studio.admin_token(), None);
    let r = request(
        env.addr(),
        "GET",
        "/local/jobs",
        &[("Authorization", "Bearer anything")],
        b"",
    );
    assert_eq!(r.status, 200);
    let a = start_with(|c| c.admin = AdminAuth::Random);
    let b = start_with(|c| c.admin = AdminAuth::Random);
    let (ta, tb) = (
        a.studio.admin_token().unwrap(),
        b.studio.admin_token().unwrap(),
    );
    assert_eq!(ta.len(), 32);
    assert_ne!(ta, tb);
    assert_eq!(get(a.addr(), "/local/jobs").status, 401);
}
