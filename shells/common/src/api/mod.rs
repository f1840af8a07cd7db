//! The local control API of a running worker: HTTP/1.1 on 127.0.0.1, for the CLI
//! (`status`, `pause`, `enable`, ...), a desktop window, and a Prometheus scraper.
//!
//! * **Where**: config `local_api_port` (default [`DEFAULT_LOCAL_API_PORT`]; `0` an
//!   ephemeral port; [`PORT_ENV`] wins). A busy port falls back to an ephemeral one and
//!   says so. The address and the token are written to [`LOCAL_API_FILE`] beside
//!   `config.toml` (mode 0600, atomically): `{"url":"http://127.0.0.1:PORT/","token":"..."}`;
//!   the file is removed when the server stops.
//! * **Who**: every route but `GET /healthz` needs `Authorization: Bearer <token>`, the
//!   config's `local_api_token` (minted from the OS CSPRNG on the first `run`, compared in
//!   constant time), else 401. A `Host` that is not a loopback name or address, or an
//!   `Origin` that is not loopback, gets 403 whatever the route: a web page (and a DNS
//!   rebinding one) cannot reach the API. A body over [`MAX_BODY_BYTES`] gets 413 and a
//!   malformed request 400, with a JSON `{"error": ...}`.
//! * **What** ([`routes`]): `GET /healthz`, `GET /daemon/status`, `POST /daemon/pause` /
//!   `resume` (runtime only), `POST /daemon/disable` / `enable` (saved as `auto_enabled`),
//!   `POST /daemon/shutdown` (202, then the SIGTERM path), `GET /daemon/logs?after=SEQ`,
//!   `GET` / `PATCH /daemon/config` (the settings applied at once: `vramThresholdGb`,
//!   `autoEnabled`), `GET /metrics` (Prometheus text format 0.0.4).
//! * **How**: one thread ([`server`]) accepts a connection, reads one bounded request
//!   (`httparse` parses its head), answers it and closes. It never touches the core:
//!   changes go through the daemon's [`Control`] as core inputs, and everything it reports
//!   is read from the core by a [`Control::query`] on the loop thread ([`views::Live`]). It
//!   blocks in `accept` (no timer), so an idle API adds no wake-up, and nothing on this
//!   port can disturb the worker's session: the loop only ever sees a request in its
//!   mailbox.
//! * **Stop** ([`ApiServer::stop`], or drop): the port is closed and the file removed. The
//!   listening socket is close-on-exec, so a re-executed worker can bind the port again.

pub mod client;
pub mod routes;
pub mod server;
pub mod views;

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use studio_core::Secret;

use crate::config::atomic_write;
use crate::control::Control;
use crate::error::ShellError;

pub use crate::config::DEFAULT_LOCAL_API_PORT;

/// The environment variable that overrides `local_api_port`.
pub const PORT_ENV: &str = "STUDIO_WORKER_LOCAL_API_PORT";
/// The file, beside `config.toml`, that tells clients where the API is and its token.
pub const LOCAL_API_FILE: &str = "local-api.json";
/// The largest request body accepted (413 beyond).
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// How long a request waits for the daemon's loop to answer (503 beyond).
pub const LOOP_TIMEOUT: Duration = Duration::from_secs(5);

/// What `local-api.json` holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalApiInfo {
    /// `http://127.0.0.1:PORT/`.
    pub url: String,
    /// The bearer token. Secret.
    pub token: Secret,
}

/// `local-api.json` of the worker whose config is `config_path`.
pub fn info_path(config_path: &Path) -> PathBuf {
    match config_path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(LOCAL_API_FILE),
        _ => PathBuf::from(LOCAL_API_FILE),
    }
}

/// The port to listen on: [`PORT_ENV`] when set to a port number (a bad value is warned
/// about and ignored), else `configured`.
pub fn port(configured: u16) -> u16 {
    match std::env::var(PORT_ENV) {
        Ok(v) if !v.trim().is_empty() => match v.trim().parse() {
            Ok(port) => port,
            Err(_) => {
                tracing::warn!("{PORT_ENV}={v:?} is not a port number; using {configured}");
                configured
            }
        },
        _ => configured,
    }
}

/// Binds 127.0.0.1:`port`; when that port is taken, an ephemeral one instead (with a
/// warning naming both).
pub fn bind(port: u16) -> io::Result<TcpListener> {
    match TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse && port != 0 => {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
            tracing::warn!(
                "the local control API port {port} is busy; listening on {} instead",
                listener.local_addr()?
            );
            Ok(listener)
        }
        other => other,
    }
}

/// The running API: its thread and the file it published.
pub struct ApiServer {
    listening: server::Listening,
    info_file: Option<PathBuf>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("addr", &self.addr())
            .field("info_file", &self.info_file)
            .finish_non_exhaustive()
    }
}

impl ApiServer {
    /// Serves the API on `listener` for the daemon behind `control`, requiring `token`.
    /// `config_path` is reported by `/daemon/status`.
    pub fn start(
        listener: TcpListener,
        token: Secret,
        control: Control,
        config_path: &Path,
    ) -> io::Result<ApiServer> {
        let ctx = routes::Ctx {
            token,
            control,
            config_path: config_path.display().to_string(),
        };
        Ok(ApiServer {
            listening: server::Listening::start(listener, ctx)?,
            info_file: None,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.listening.addr()
    }

    /// `http://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr())
    }

    /// Writes `local-api.json` beside `config_path` (0600, atomically) with the URL and
    /// `token`; it is removed when the server stops.
    pub fn publish(&mut self, config_path: &Path, token: &Secret) -> Result<PathBuf, ShellError> {
        let path = info_path(config_path);
        let info = LocalApiInfo {
            url: self.url(),
            token: token.clone(),
        };
        let text = serde_json::to_string(&info).expect("the API info serialises");
        atomic_write(&path, text.as_bytes())?;
        self.info_file = Some(path.clone());
        Ok(path)
    }

    /// Stops serving now: `local-api.json` is removed, the thread stopped and the port
    /// closed (the same as dropping it). A module that re-executes the worker calls this
    /// first.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(path) = self.info_file.take() {
            let _ = std::fs::remove_file(path);
        }
        // Then `listening` drops: the thread stops and the listening socket closes.
    }
}

/// Serves the API of the daemon behind `control` as `config` says (port, token), and
/// publishes `local-api.json`. A failure is logged and the worker runs without the API
/// (`None`): the API must never stop the worker.
pub fn serve(config: &crate::Config, config_path: &Path, control: Control) -> Option<ApiServer> {
    let Some(token) = config.local_api_token.as_deref().map(Secret::from) else {
        tracing::warn!("no local_api_token in the config; the local control API is off");
        return None;
    };
    let started = bind(port(config.local_api_port))
        .and_then(|listener| ApiServer::start(listener, token.clone(), control, config_path));
    let mut server = match started {
        Ok(server) => server,
        Err(e) => {
            tracing::warn!("the local control API could not start ({e}); running without it");
            return None;
        }
    };
    match server.publish(config_path, &token) {
        Ok(path) => tracing::info!(
            url = %server.url(),
            file = %path.display(),
            "local control API listening"
        ),
        Err(e) => tracing::warn!(
            url = %server.url(),
            "local control API listening, but its address could not be published: {e}"
        ),
    }
    Some(server)
}

/// A daemon's loop without sockets, for the API's and the CLI's tests: a thread owning a
/// real core that carries out [`Control`] requests the way a session does (changes as core
/// inputs, queries against the core), minus saving the config.
#[cfg(test)]
pub(crate) mod test_loop {
    use std::sync::mpsc;
    use std::time::Instant;

    use studio_core::worker::{Command, ConnId, Credentials, Input, Now, Worker, WorkerConfig};
    use studio_core::{Mono, WallMs};

    use crate::control::{Control, Request};

    /// A welcomed worker `w-1` behind a [`Control`]; the thread ends with the last control.
    pub(crate) fn start() -> Control {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::spawn(move || {
            let mut cfg = WorkerConfig::for_tests("http://127.0.0.1:9");
            cfg.credentials = Some(Credentials {
                worker_id: "w-1".into(),
                auth_token: "tok".into(),
            });
            let mut worker = Worker::new(cfg);
            let t0 = Instant::now();
            let now = move || {
                let us = t0.elapsed().as_micros() as u64;
                Now::new(Mono(us), WallMs(1_779_710_400_000 + us / 1000))
            };
            let feed = |worker: &mut Worker, input: Input| {
                let result = worker.handle(now(), input);
                while !matches!(worker.poll(), Command::Wait { .. }) {}
                result
            };
            let conn = ConnId(1);
            feed(&mut worker, Input::Start).unwrap();
            feed(&mut worker, Input::Connected { conn }).unwrap();
            let welcome = r#"{"type":"welcome","workerId":"w-1","serverTime":"now"}"#;
            feed(
                &mut worker,
                Input::Frame {
                    conn,
                    text: welcome.into(),
                },
            )
            .unwrap();
            for request in rx {
                match request {
                    Request::Query(read) => read(&worker, now().mono),
                    Request::Shutdown => {
                        let _ = feed(&mut worker, Input::Shutdown);
                    }
                    Request::Change { change, reply } => {
                        let outcome = feed(&mut worker, change.input()).map_err(|e| e.to_string());
                        if let Some(reply) = reply {
                            let _ = reply.send(outcome);
                        }
                    }
                }
            }
        });
        Control::new(move |request| {
            let _ = tx.send(request);
        })
    }
}

#[cfg(test)]
mod tests;
