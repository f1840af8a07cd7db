//! A real Gradio app for the Gradio engine's tests: `tests/gradio/app.py` (the `gradio` PyPI
//! package), started once per test process on a free loopback port.
//!
//! The app runs in the Python environment `STUDIO_TEST_GRADIO_PYTHON` names (the
//! interpreter of a venv with `gradio` installed); `.ci/gradio-venv` creates it, cached, and
//! prints the line that sets it: `eval "$(.ci/gradio-venv)"`. Without it [`app`] returns
//! `None` and the test skips with a note, except under `CI=true`, where it fails: CI must
//! run these tests.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The variable naming the venv's Python.
pub const PYTHON_ENV: &str = "STUDIO_TEST_GRADIO_PYTHON";

/// How long the app may take to start (importing gradio is slow on a busy machine).
pub const APP_START_TIMEOUT: Duration = Duration::from_secs(180);

/// The running app. Its standard input stays open while this process lives; when the
/// process exits the pipe closes and the app exits with it.
pub struct App {
    /// The app's URL (`http://127.0.0.1:<port>/`).
    pub url: String,
    _child: Mutex<Child>,
    _stdin: Mutex<ChildStdin>,
}

impl App {
    /// The URL the legacy API is reached through: Gradio 5 and later serve `/run/<name>`
    /// under `/gradio_api`.
    pub fn legacy_url(&self) -> String {
        format!("{}gradio_api", self.url)
    }
}

/// The venv's Python, or `None` (skip, with a note) when unset outside CI.
pub fn python() -> Option<PathBuf> {
    match std::env::var_os(PYTHON_ENV) {
        Some(p) if !p.is_empty() => {
            let p = PathBuf::from(p);
            assert!(p.is_file(), "{PYTHON_ENV}={} is not a file", p.display());
            Some(p)
        }
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => panic!(
            "{PYTHON_ENV} is not set, and CI must run the real Gradio app tests: run \
             `eval \"$(.ci/gradio-venv)\"` first"
        ),
        _ => {
            println!(
                "note: {PYTHON_ENV} is not set: skipping a real Gradio app test \
                 (`eval \"$(.ci/gradio-venv)\"` creates the venv and sets it)"
            );
            None
        }
    }
}

/// The app, started on first use; `None` (skip) without the venv.
pub fn app() -> Option<&'static App> {
    static APP: OnceLock<Option<App>> = OnceLock::new();
    APP.get_or_init(|| python().map(|python| start(&python)))
        .as_ref()
}

/// A loopback port nothing listens on (just now).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

fn start(python: &Path) -> App {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("gradio/app.py");
    let port = free_port();
    let mut child = Command::new(python)
        .arg(&script)
        .arg(port.to_string())
        .env("GRADIO_ANALYTICS_ENABLED", "False")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", python.display()));
    let stdin = child.stdin.take().expect("piped stdin");
    // The app's stderr, kept for a failure message and drained so it never blocks.
    let stderr = child.stderr.take().expect("piped stderr");
    let log = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
            log.push_str(&line);
            log.push('\n');
        }
    });
    let url = format!("http://127.0.0.1:{port}/");
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "the Gradio app exited ({status}) before answering:\n{}",
                log.lock().unwrap_or_else(|e| e.into_inner())
            );
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        if started.elapsed() > APP_START_TIMEOUT {
            let _ = child.kill();
            panic!(
                "the Gradio app did not answer at {url} within {APP_START_TIMEOUT:?}:\n{}",
                log.lock().unwrap_or_else(|e| e.into_inner())
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    App {
        url,
        _child: Mutex::new(child),
        _stdin: Mutex::new(stdin),
    }
}
