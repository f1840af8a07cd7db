//! The daemon loop of any [`WorkerDaemon`] against a minimal in-test WebSocket server
//! (std `TcpListener` + tungstenite's server handshake, echoing the subprotocol). Each
//! scenario is a function generic over the daemon; [`crate::daemon_loop_tests!`] turns
//! them into `#[test]`s in a shell's crate. Timeouts are generous and nothing asserts
//! speed.

// tungstenite's server callback returns `Result<Response, ErrorResponse>`; its size is not ours.
#![allow(clippy::result_large_err)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use serde_json::{json, Value};
use studio_core::worker::ExitCode;
use studio_engines::{Engine, Router};

use crate::config::Config;
use crate::control::{Control, Exit};
use crate::daemon::WorkerDaemon;
use crate::host;
use crate::session::Setup;
use tungstenite::handshake::derive_accept_key;
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::http::HeaderValue;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

const WORKER_ID: &str = "w-1";
const TOKEN: &str = "tok-1";
const WAIT: Duration = Duration::from_secs(60);

/// A worker daemon pointed at `base`, running on its own thread.
struct Running {
    control: Control,
    exit: Receiver<Exit>,
    config_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Running {
    fn start<D: WorkerDaemon>(base: &str) -> Running {
        Running::start_with::<D>(base, None)
    }

    fn start_with<D: WorkerDaemon>(base: &str, tls: Option<Arc<rustls::ClientConfig>>) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let path: PathBuf = dir.path().join("config.toml");
        let config = Config {
            api_base_url: base.to_string(),
            worker_id: Some(WORKER_ID.into()),
            auth_token: Some(TOKEN.into()),
            auto_update_enabled: false,
            ..Config::default()
        };
        config.save(&path).unwrap();
        let engine = Router::new_default();
        let worker_config = config.to_worker_config(host::probe(), engine.capabilities(), 7);
        let mut daemon = D::new(Setup {
            config,
            config_path: path.clone(),
            worker_config,
            engine: Arc::new(engine),
        })
        .unwrap();
        if let Some(tls) = tls {
            daemon.set_tls_config(tls);
        }
        let control = daemon.control();
        let (tx, exit) = mpsc::channel();
        thread::spawn(move || {
            let _ = tx.send(daemon.run());
        });
        Running {
            control,
            exit,
            config_path: path,
            _dir: dir,
        }
    }

    fn exit(&self) -> Exit {
        self.exit
            .recv_timeout(WAIT)
            .expect("the daemon did not exit in time")
    }
}

/// What the server saw of the upgrade request.
#[derive(Clone, Debug, Default)]
struct SeenRequest {
    path: String,
    authorization: Option<String>,
    protocol: Option<String>,
}

fn listen() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    (listener, base)
}

/// Accepts one connection with the WebSocket handshake (subprotocol echoed).
fn accept(listener: &TcpListener, seen: &Arc<Mutex<SeenRequest>>) -> WebSocket<TcpStream> {
    let (stream, _) = listener.accept().unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let seen = Arc::clone(seen);
    tungstenite::accept_hdr(stream, move |req: &Request, mut resp: Response| {
        let header = |n: &str| {
            req.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        *seen.lock().unwrap() = SeenRequest {
            path: req.uri().path().to_string(),
            authorization: header("Authorization"),
            protocol: header("Sec-WebSocket-Protocol"),
        };
        resp.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("studio-worker-v1"),
        );
        Ok::<_, ErrorResponse>(resp)
    })
    .unwrap()
}

/// Accepts one connection and runs it to the worker's first heartbeat (hello, welcome).
fn welcomed_session(
    listener: &TcpListener,
    seen: &Arc<Mutex<SeenRequest>>,
) -> WebSocket<TcpStream> {
    let mut ws = accept(listener, seen);
    until_type(&mut ws, "hello");
    ws.send(welcome()).unwrap();
    until_type(&mut ws, "heartbeat");
    ws
}

/// The next text frame as JSON (pings and pongs skipped).
fn next_json(ws: &mut WebSocket<TcpStream>) -> Value {
    loop {
        match ws.read().unwrap() {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected message {other:?}"),
        }
    }
}

/// Frames until one of type `ty` (log batches and the like skipped).
fn until_type(ws: &mut WebSocket<TcpStream>, ty: &str) -> Value {
    loop {
        let v = next_json(ws);
        if v["type"] == ty {
            return v;
        }
    }
}

fn welcome() -> Message {
    Message::text(
        json!({"type": "welcome", "workerId": WORKER_ID, "serverTime": "2026-01-01T00:00:00.000Z"})
            .to_string(),
    )
}

/// Reads until the worker's close frame; its code and reason.
fn close_of(ws: &mut WebSocket<TcpStream>) -> (u16, String) {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(f))) => {
                // Let tungstenite answer the close, then hang up.
                let _ = ws.flush();
                return (u16::from(f.code), f.reason.as_str().to_string());
            }
            Ok(Message::Close(None)) => panic!("close without a code"),
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

/// Whether another connection is waiting on `listener`.
fn another_connection(listener: &TcpListener) -> bool {
    listener.set_nonblocking(true).unwrap();
    thread::sleep(Duration::from_millis(200));
    listener.accept().is_ok()
}

fn serve<T: Send + 'static>(
    listener: TcpListener,
    f: impl FnOnce(TcpListener) -> T + Send + 'static,
) -> JoinHandle<T> {
    thread::spawn(move || f(listener))
}

pub fn hello_welcome_heartbeat_and_pongs<D: WorkerDaemon>() {
    let (listener, base) = listen();
    let seen = Arc::new(Mutex::new(SeenRequest::default()));
    let seen_in_server = Arc::clone(&seen);
    let (to_test, frames) = mpsc::channel();
    let server = serve(listener, move |listener| {
        let mut ws = accept(&listener, &seen_in_server);
        let hello = until_type(&mut ws, "hello");
        to_test.send(hello).unwrap();
        ws.send(welcome()).unwrap();
        let heartbeat = until_type(&mut ws, "heartbeat");
        to_test.send(heartbeat).unwrap();
        // A ping is answered by tungstenite inside the worker; the loop must flush it.
        ws.send(Message::Ping(b"are you there".to_vec().into()))
            .unwrap();
        loop {
            match ws.read().unwrap() {
                Message::Pong(p) => {
                    assert_eq!(&p[..], b"are you there");
                    break;
                }
                Message::Text(_) => {}
                other => panic!("{other:?}"),
            }
        }
        to_test.send(json!({"type": "pong"})).unwrap();
        close_of(&mut ws)
    });

    let running = Running::start::<D>(&base);
    let hello = frames.recv_timeout(WAIT).unwrap();
    assert_eq!(hello["authToken"], TOKEN);
    assert_eq!(hello["capabilities"]["engine"], "multi");
    let heartbeat = frames.recv_timeout(WAIT).unwrap();
    assert_eq!(heartbeat["type"], "heartbeat");
    assert_eq!(frames.recv_timeout(WAIT).unwrap()["type"], "pong");

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.path, "/graphics/api/workers/w-1/connect");
    assert_eq!(seen.authorization.as_deref(), Some("Bearer tok-1"));
    assert_eq!(seen.protocol.as_deref(), Some("studio-worker-v1"));

    running.control.shutdown();
    let exit = running.exit();
    assert_eq!(exit.code, ExitCode::Clean, "{exit:?}");
    assert_eq!(server.join().unwrap().0, 1000);
}

pub fn close_4001_exits_with_auth_failed_and_never_reconnects<D: WorkerDaemon>() {
    let (listener, base) = listen();
    let seen = Arc::new(Mutex::new(SeenRequest::default()));
    let server = serve(listener, move |listener| {
        let mut ws = welcomed_session(&listener, &seen);
        ws.close(Some(tungstenite::protocol::CloseFrame {
            code: CloseCode::from(4001),
            reason: "token revoked".into(),
        }))
        .unwrap();
        // Drive the close handshake until the worker hangs up.
        while ws.read().is_ok() {}
        listener
    });

    let running = Running::start::<D>(&base);
    let exit = running.exit();
    assert_eq!(exit.code, ExitCode::AuthFailed, "{exit:?}");
    assert_eq!(exit.code.code(), 4);
    assert!(exit.reason.contains("token revoked"), "{}", exit.reason);
    assert!(exit.reason.contains("register"), "{}", exit.reason);
    let listener = server.join().unwrap();
    assert!(!another_connection(&listener), "the worker reconnected");
}

/// Reads an HTTP request head from `stream`.
fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "request head cut short");
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

pub fn a_503_upgrade_is_retried_and_a_401_exits_with_its_body<D: WorkerDaemon>() {
    let (listener, base) = listen();
    let server = serve(listener, |listener| {
        // First attempt: 503, retried with backoff.
        let (mut s, _) = listener.accept().unwrap();
        read_head(&mut s);
        s.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy")
            .unwrap();
        drop(s);
        // Second attempt: 401, its body sent in a separate write after a pause.
        let (mut s, _) = listener.accept().unwrap();
        let head = read_head(&mut s);
        let body = b"{\"error\":\"invalid token\"}";
        write!(
            s,
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        s.flush().unwrap();
        thread::sleep(Duration::from_millis(200));
        s.write_all(body).unwrap();
        thread::sleep(Duration::from_millis(200));
        (head, listener)
    });

    let running = Running::start::<D>(&base);
    let exit = running.exit();
    assert_eq!(exit.code, ExitCode::AuthFailed, "{exit:?}");
    assert!(exit.reason.contains("invalid token"), "{}", exit.reason);
    let (head, listener) = server.join().unwrap();
    assert!(head
        .to_ascii_lowercase()
        .contains("authorization: bearer tok-1\r\n"));
    assert!(!another_connection(&listener), "the worker retried a 401");
}

pub fn shutdown_closes_with_1000_and_exits_cleanly<D: WorkerDaemon>() {
    let (listener, base) = listen();
    let seen = Arc::new(Mutex::new(SeenRequest::default()));
    let (welcomed_tx, welcomed) = mpsc::channel();
    let server = serve(listener, move |listener| {
        let mut ws = welcomed_session(&listener, &seen);
        welcomed_tx.send(()).unwrap();
        let close = close_of(&mut ws);
        // The worker waits for us to hang up (or its close timeout).
        drop(ws);
        (close, listener)
    });

    let running = Running::start::<D>(&base);
    welcomed.recv_timeout(WAIT).unwrap();
    // What SIGTERM does: the signal thread calls Control::shutdown.
    running.control.shutdown();
    let exit = running.exit();
    assert_eq!(exit.code, ExitCode::Clean, "{exit:?}");
    assert_eq!(exit.code.code(), 0);
    let ((code, reason), listener) = server.join().unwrap();
    assert_eq!(code, 1000);
    assert!(!reason.is_empty());
    assert!(
        !another_connection(&listener),
        "the worker reconnected after shutdown"
    );
}

pub fn a_frame_in_the_same_packet_as_the_101_is_not_lost<D: WorkerDaemon>() {
    let (listener, base) = listen();
    let (welcomed_tx, welcomed) = mpsc::channel();
    let server = serve(listener, move |listener| {
        let (mut s, _) = listener.accept().unwrap();
        let head = read_head(&mut s);
        let key = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("sec-websocket-key")
                    .then(|| v.trim().to_string())
            })
            .unwrap();
        let payload = json!({"type": "welcome", "workerId": WORKER_ID, "serverTime": "2026-01-01T00:00:00.000Z"})
            .to_string();
        let mut out = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: studio-worker-v1\r\n\r\n",
            derive_accept_key(key.as_bytes())
        )
        .into_bytes();
        // An unmasked server text frame, in the same write as the head.
        out.push(0x81);
        out.push(u8::try_from(payload.len()).unwrap());
        out.extend_from_slice(payload.as_bytes());
        s.write_all(&out).unwrap();
        let mut ws = WebSocket::from_raw_socket(s, tungstenite::protocol::Role::Server, None);
        until_type(&mut ws, "hello");
        // Welcomed already: the next frame is the first heartbeat.
        until_type(&mut ws, "heartbeat");
        welcomed_tx.send(()).unwrap();
        close_of(&mut ws)
    });

    let running = Running::start::<D>(&base);
    welcomed.recv_timeout(WAIT).unwrap();
    running.control.shutdown();
    assert_eq!(running.exit().code, ExitCode::Clean);
    assert_eq!(server.join().unwrap().0, 1000);
}

/// A throwaway CA and a `localhost` certificate it signed, generated once per test run
/// (no key material lives in the repository).
struct TestPki {
    ca: rustls::pki_types::CertificateDer<'static>,
    leaf: rustls::pki_types::CertificateDer<'static>,
    leaf_key: Vec<u8>,
}

fn test_pki() -> &'static TestPki {
    static PKI: std::sync::OnceLock<TestPki> = std::sync::OnceLock::new();
    PKI.get_or_init(|| {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "studio-worker test CA");
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        TestPki {
            ca: ca.der().clone(),
            leaf: leaf.der().clone(),
            leaf_key: leaf_key.serialize_der(),
        }
    })
}

/// The client side: trusts only the test CA.
fn test_client_tls() -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(test_pki().ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

fn test_server_tls() -> Arc<rustls::ServerConfig> {
    let pki = test_pki();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(pki.leaf_key.clone().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![pki.leaf.clone()], key)
            .unwrap(),
    )
}

pub fn wss_session_with_large_frames_and_pongs<D: WorkerDaemon>() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!(
        "https://localhost:{}/",
        listener.local_addr().unwrap().port()
    );
    let (welcomed_tx, welcomed) = mpsc::channel();
    let server = serve(listener, move |listener| {
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        let tls = rustls::StreamOwned::new(
            rustls::ServerConnection::new(test_server_tls()).unwrap(),
            tcp,
        );
        let mut ws = tungstenite::accept_hdr(tls, |req: &Request, mut resp: Response| {
            assert_eq!(req.headers().get("Authorization").unwrap(), "Bearer tok-1");
            resp.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static("studio-worker-v1"),
            );
            Ok::<_, ErrorResponse>(resp)
        })
        .unwrap();
        let next = |ws: &mut WebSocket<_>| loop {
            match ws.read().unwrap() {
                Message::Text(t) => return serde_json::from_str::<Value>(t.as_str()).unwrap(),
                Message::Ping(_) => {}
                Message::Pong(p) => return json!({"type": "pong", "len": p.len()}),
                other => panic!("{other:?}"),
            }
        };
        while next(&mut ws)["type"] != "hello" {}
        ws.send(welcome()).unwrap();
        while next(&mut ws)["type"] != "heartbeat" {}
        // A frame much larger than a TLS record (unknown fields are ignored by the core):
        // the worker reads it across many records and WouldBlocks.
        let pad = "x".repeat(1024 * 1024);
        ws.send(Message::text(
            json!({"type": "heartbeatAck", "pad": pad}).to_string(),
        ))
        .unwrap();
        ws.send(Message::Ping(vec![7u8; 100].into())).unwrap();
        loop {
            let v = next(&mut ws);
            if v["type"] == "pong" {
                assert_eq!(v["len"], 100);
                break;
            }
        }
        welcomed_tx.send(()).unwrap();
        loop {
            match ws.read() {
                Ok(Message::Close(Some(f))) => {
                    let _ = ws.flush();
                    return u16::from(f.code);
                }
                Ok(_) => {}
                Err(e) => panic!("no close frame: {e}"),
            }
        }
    });

    let running = Running::start_with::<D>(&base, Some(test_client_tls()));
    welcomed
        .recv_timeout(WAIT)
        .expect("no wss session (see the server thread's panic)");
    running.control.shutdown();
    let exit = running.exit();
    assert_eq!(exit.code, ExitCode::Clean, "{exit:?}");
    assert_eq!(server.join().unwrap(), 1000);
}

pub fn wss_with_an_untrusted_certificate_is_a_transport_error_and_retried<D: WorkerDaemon>() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!(
        "https://localhost:{}/",
        listener.local_addr().unwrap().port()
    );
    let server = serve(listener, |listener| {
        // Two attempts: the first is refused by the worker's TLS (default roots), the second
        // shows that it retried.
        for _ in 0..2 {
            let (tcp, _) = listener.accept().unwrap();
            tcp.set_read_timeout(Some(WAIT)).unwrap();
            let mut tls = rustls::StreamOwned::new(
                rustls::ServerConnection::new(test_server_tls()).unwrap(),
                tcp,
            );
            let _ = tls.read(&mut [0u8; 16]);
        }
    });
    let running = Running::start::<D>(&base);
    server.join().unwrap();
    running.control.shutdown();
    assert_eq!(running.exit().code, ExitCode::Clean);
}

pub fn an_oversized_frame_closes_with_protocol_violation_and_reconnects<D: WorkerDaemon>() {
    let (listener, base) = listen();
    let seen = Arc::new(Mutex::new(SeenRequest::default()));
    let (reconnected_tx, reconnected) = mpsc::channel();
    let server = serve(listener, move |listener| {
        let mut ws = welcomed_session(&listener, &seen);
        // The head of a text frame of 5 MiB (over MAX_FRAME_BYTES): the worker refuses it
        // from the header alone.
        let len: u64 = 5 * 1024 * 1024;
        let mut head = vec![0x81, 127];
        head.extend_from_slice(&len.to_be_bytes());
        head.extend_from_slice(b"{\"type\":");
        ws.get_mut().write_all(&head).unwrap();
        let first_close = close_of(&mut ws);
        drop(ws);
        // The core reconnects with backoff.
        let mut ws = accept(&listener, &seen);
        until_type(&mut ws, "hello");
        reconnected_tx.send(()).unwrap();
        ws.send(welcome()).unwrap();
        (first_close, close_of(&mut ws))
    });

    let running = Running::start::<D>(&base);
    reconnected.recv_timeout(WAIT).expect("no reconnect");
    running.control.shutdown();
    assert_eq!(running.exit().code, ExitCode::Clean);
    let ((code, reason), (last_code, _)) = server.join().unwrap();
    assert_eq!((code, reason.as_str()), (1000, "protocol violation"));
    assert_eq!(last_code, 1000);
}

/// An operator's changes through the daemon's [`Control`] (what the local control API and
/// the CLI use): a pause is advertised at once and read back from the core; `enable` /
/// `disable` and the threshold are saved in config.toml before they apply; a refused value
/// changes nothing; the worker's session goes on throughout.
pub fn operator_changes_reach_the_studio_and_are_saved<D: WorkerDaemon>() {
    use crate::control::{Change, ControlError};
    let (listener, base) = listen();
    let seen = Arc::new(Mutex::new(SeenRequest::default()));
    let (to_test, heartbeats) = mpsc::channel();
    let server = serve(listener, move |listener| {
        let mut ws = welcomed_session(&listener, &seen);
        loop {
            match ws.read() {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    if v["type"] == "heartbeat" {
                        let _ = to_test.send(v["capabilities"]["autoEnabled"].clone());
                        ws.send(Message::text(r#"{"type":"heartbeatAck"}"#))
                            .unwrap();
                    }
                }
                Ok(Message::Close(_)) => {
                    let _ = ws.flush();
                    return;
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    let running = Running::start::<D>(&base);
    let next_advertised = || heartbeats.recv_timeout(WAIT).expect("a heartbeat");
    let control = &running.control;
    let saved = || Config::load(&running.config_path).unwrap();
    let read = |f: fn(&studio_core::worker::StatusSnapshot) -> Value| {
        control
            .query(move |w, _| f(&w.status()), WAIT)
            .expect("the loop answers")
    };
    wait_for_session(control);

    control.change(Change::Pause, WAIT).unwrap();
    assert_eq!(read(|s| json!(s.paused)), json!(true));
    assert_eq!(until_advertised(&next_advertised, false), json!(false));

    control.change(Change::Enabled(false), WAIT).unwrap();
    assert!(!saved().auto_enabled, "disable is saved");
    control.change(Change::Resume, WAIT).unwrap();
    assert_eq!(
        read(|s| json!([s.paused, s.enabled])),
        json!([false, false])
    );
    control.change(Change::Enabled(true), WAIT).unwrap();
    assert!(saved().auto_enabled);
    assert_eq!(until_advertised(&next_advertised, true), json!(true));

    match control.change(Change::Threshold(-1.0), WAIT) {
        Err(ControlError::Refused(why)) => assert!(why.contains(">= 0"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        saved().vram_threshold_gb,
        Config::default().vram_threshold_gb
    );
    control.change(Change::Threshold(6.0), WAIT).unwrap();
    assert_eq!(saved().vram_threshold_gb, 6.0);
    assert_eq!(read(|s| json!(s.vram_threshold_gb)), json!(6.0));

    running.control.shutdown();
    assert_eq!(running.exit().code, ExitCode::Clean);
    server.join().unwrap();
    // The loop is gone: requests get no answer, without hanging.
    assert_eq!(
        running.control.change(Change::Pause, WAIT),
        Err(ControlError::Stopped)
    );
}

/// Waits until the core says its session is welcomed.
fn wait_for_session(control: &Control) {
    let deadline = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < deadline {
        let connected = control
            .query(
                |w, _| w.status().session == studio_core::worker::SessionState::Connected,
                WAIT,
            )
            .unwrap();
        if connected {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("no welcomed session within {WAIT:?}");
}

/// Heartbeats until one advertises `autoEnabled: want`.
fn until_advertised(next: &dyn Fn() -> Value, want: bool) -> Value {
    loop {
        let v = next();
        if v == json!(want) {
            return v;
        }
    }
}
