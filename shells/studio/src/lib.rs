//! `studio-local`: a loopback studio server for studio-worker.
//!
//! A real server over real sockets (HTTP/1.1 and WebSocket on **one port**) that drives the
//! core's sans-IO reference studio machine, [`studio_core::studio::Studio`]. It is the peer
//! of the end-to-end tests, the studio of the worker's `demo` subcommand, and a tool for
//! anyone who wants to exercise a worker without a real studio.
//!
//! One thread runs one `mio::Poll` loop for the listener, every connection and the
//! in-process [`Handle`] calls (a channel plus a `mio::Waker`); the studio machine lives on
//! that thread only. Its `Wait { until }` deadline is the poll timeout, rounded up to whole
//! milliseconds.
//!
//! # The worker-facing routes (PROTOCOL.md §4.1, §5)
//!
//! | Route | |
//! |---|---|
//! | `POST /graphics/api/workers/register-request` | JSON `AutoRegisterRequest` → `{"requestId","status":"pending"}` |
//! | `GET /graphics/api/workers/register-requests/:id` | `Authorization: Bearer <registration secret>` → `RegisterStatus` |
//! | `GET /graphics/api/workers/:workerId/connect` | WebSocket upgrade, `Authorization: Bearer <auth token>`; `Sec-WebSocket-Protocol: studio-worker-v1` is echoed when asked for. A refused upgrade answers `401 {"error","reference"}`. |
//! | `POST /graphics/api/workers/:workerId/jobs/:jobId/complete` | multipart `prompt`, `ext`, `image` + Bearer → `{"ok":true}`; the bytes are stored as `<out_dir>/<jobId>.<ext>` |
//!
//! Errors of the studio machine answer its status with `{"error": message}`.
//!
//! # The local admin API (`/local/...`, JSON)
//!
//! Every `/local` request passes [`admin_auth::check_admin`] before its body is read: a
//! `Host` of this machine, no foreign `Origin`, `Authorization: Bearer <admin token>` (a
//! random token made at [`LocalStudio::bind`] and printed by the binary; see
//! [`AdminAuth`]) and `Content-Type: application/json` on a body. Its bodies are capped at
//! [`LocalConfig::max_json_body_bytes`].
//!
//! | Route | Body / answer |
//! |---|---|
//! | `GET /local` | the route list |
//! | `POST /local/jobs` | [`JobSubmission`]: `{"kind":"image"\|"llm"\|"audio_stt"\|"audio_tts"\|"video", "task":{..full Task..}?, "prompt"?, "model"? (default `synthetic`), "modelSource"? (default synthetic), "vramGbEstimate"? (default 0), "gameId"?, "assetName"?}` → `{"jobId"}` |
//! | `GET /local/jobs` | `[`[`JobSummary`]`]`: id, kind, state, worker, attempts, result summary, ... |
//! | `GET /local/jobs/:id` | [`JobDetail`]: the summary plus task, model source, offers and the result (JSON value, or file path and size) |
//! | `GET /local/jobs/:id/result` | the stored bytes with their content type, or the JSON result; 409 while unfinished |
//! | `GET /local/workers` | `[`[`WorkerInfo`]`]`: connection, capabilities, current job, last heartbeat, log count |
//! | `POST /local/workers` | `{"workerId","authToken"}`: pre-provision (or re-key) a worker |
//! | `DELETE /local/workers/:id` | delete a worker (`error worker_deleted` + close 4004) |
//! | `GET /local/workers/:id/logs` | the worker's shipped log ring |
//! | `GET /local/workers/:id/connections` | [`ConnectionStats`]: upgrade attempts (refused ones too), connections, the last close code the worker sent (also in [`WorkerInfo`]; kept for unknown ids too) |
//! | `GET /local/requests` | `[`[`PendingInfo`]`]`: registration requests awaiting approval |
//! | `POST /local/requests/:id/approve` | approve |
//! | `POST /local/requests/:id/reject` | `{"reason"?}`: reject |
//! | `GET /local/stats` | [`Stats`] |
//! | `POST /local/shutdown` | stop the server (after answering) |
//!
//! # Test hooks (fault injection)
//!
//! | Route | Effect |
//! |---|---|
//! | `GET /local/faults` | the armed counters ([`FaultState`]) |
//! | `POST /local/faults` | `{"failUploads":N, "failUploadsStatus":500, "upgradeFailures":N, "upgradeStatus":503, "holdUploads":N, "dropResults":N}` (each optional): the next N result uploads / WebSocket upgrades answer that status without reaching the studio machine; the next N uploads are held (read, never answered, until the worker hangs up; `uploadsHeld` counts them); the next N `completeJson` / `fail` frames are dropped (never fed, never acknowledged) |
//! | `POST /local/workers/:id/drop` | close the worker's TCP connection(s) at once, no close frame |
//! | `POST /local/workers/:id/stall` | keep the socket(s) open but stop reading and writing (a half-open peer); the studio machine's sweep closes the session after its session timeout |
//! | `POST /local/workers/:id/close` | `{"code":4001,"reason":"..."}`: send that close frame |
//! | `POST /local/workers/:id/error` | `{"code":"auth_failed","message":"..."}`: send an `error` frame, then close with the paired code |
//! | `POST /local/workers/:id/probe-offer` | `{"jobId":"probe-1","task":{..}?}` (default an image task), or `{"jobId","claim":{..}}` (a raw claim, sent as given: maybe one the worker cannot decode): send a raw `offer` for a job id the studio machine does not know, bypassing it (it never offers to a worker it knows is busy). The worker's `accept` / `reject` / `completeJson` / `fail` naming that job, and its result upload, are intercepted and recorded, never fed to the machine; `completeJson` / `fail` get their ack, the upload a `200` |
//! | `GET /local/workers/:id/probe-replies` | the intercepted replies, oldest first, as the frame texts (an upload as `{"type":"upload","jobId","ext","bytes","prompt"}`) |
//!
//! The same operations are methods of [`Handle`] ([`Handle::inject`] with a [`Fault`]).
//!
//! # Decisions
//!
//! * Loopback only unless [`LocalConfig::allow_remote`]: there is no TLS.
//! * Every HTTP response carries `Connection: close`; request heads are capped at 64 KiB
//!   (431), result uploads at [`LocalConfig::max_body_bytes`] and every other body at
//!   [`LocalConfig::max_json_body_bytes`] (413, answered from the head before the body is
//!   read); chunked request bodies get 411;
//!   a malformed request gets 400 with the reason in `{"error"}`.
//! * A binary WebSocket frame, or one over the studio's `max_frame_bytes`, is fed to the
//!   machine as non-JSON text: it answers `protocol_violation` and close 4002.
//! * A close asked for by the machine is sent as a close frame; the socket is dropped when
//!   the peer answers or after [`server::LINGER`].
//! * An upload is written to a temporary file first and moved to `<jobId>.<ext>` only when
//!   the machine accepted it, so a refused upload leaves nothing behind. The machine's
//!   reaction (usually the next offer) is sent after the `200`, and frames to that worker
//!   can be held for [`LocalConfig::upload_nudge_delay`] (default none; it emulates the
//!   reference studio's asynchronous nudge for workers that reject an offer overtaking
//!   their own processing of the `200` as `busy`).
//! * When [`StudioConfig::token_seed`] is 0 it is replaced by a random seed (std's
//!   per-process random hasher keys mixed with the time and pid). The machine's wall clock
//!   (`welcome.serverTime`) is the wall-clock time at start plus the monotonic time since.
//!
//! ```no_run
//! use studio_local::{JobSubmission, LocalConfig, LocalStudio};
//! use studio_core::wire::TaskKind;
//!
//! let mut cfg = LocalConfig::default();
//! cfg.workers.push(("w-1".into(), "token-1".into()));
//! let studio = LocalStudio::bind(cfg)?.spawn()?;
//! println!("point a worker at {}", studio.base_url());
//! let job = studio.submit(JobSubmission::new(TaskKind::Image, "a fox")).unwrap();
//! let done = studio.wait_for_job(&job, std::time::Duration::from_secs(30));
//! println!("{done:?}");
//! studio.shutdown();
//! # Ok::<(), std::io::Error>(())
//! ```

pub mod admin_auth;
pub mod api;
pub mod http;
pub mod server;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::TcpListener;
use mio::{Interest, Poll, Waker};
use studio_core::studio::{HttpError, Studio, StudioConfig};
use studio_core::wire::LogEntry;
use studio_core::WallMs;

pub use api::{
    ConnectionStats, Fault, FaultState, FaultsBody, JobDetail, JobSubmission, JobSummary,
    PendingInfo, ResultView, Stats, WorkerInfo,
};
pub use server::{DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_JSON_BODY_BYTES, MAX_HEAD_BYTES};

use server::{Call, Server, ServerSettings};

/// The default `--bind` of the binary.
pub const DEFAULT_BIND: &str = "127.0.0.1:9790";

/// How the server is set up.
#[derive(Clone, Debug)]
pub struct LocalConfig {
    /// Where to listen (default `127.0.0.1:0`, an ephemeral port).
    pub bind: SocketAddr,
    /// Where uploaded results are stored (created if missing).
    pub out_dir: PathBuf,
    /// Approve every registration request at once (also `studio.auto_approve`).
    pub auto_approve: bool,
    /// The studio machine's settings.
    pub studio: StudioConfig,
    /// Pre-provisioned workers: (worker id, auth token).
    pub workers: Vec<(String, String)>,
    /// Allow a non-loopback `bind` (there is no TLS).
    pub allow_remote: bool,
    /// Who may use the `/local` admin API (default [`AdminAuth::Random`]).
    pub admin: AdminAuth,
    /// Largest result upload (default [`DEFAULT_MAX_BODY_BYTES`]).
    pub max_body_bytes: usize,
    /// Largest body of every other request: the admin API, registration requests (default
    /// [`DEFAULT_MAX_JSON_BODY_BYTES`]).
    pub max_json_body_bytes: usize,
    /// After an accepted result upload, frames to that worker (typically its next offer)
    /// are held this long (default [`DEFAULT_UPLOAD_NUDGE_DELAY`]; zero: no hold). This
    /// mirrors the reference studio, whose upload handler nudges the session object
    /// asynchronously after answering, so the worker has processed its `200` (and freed
    /// its one-job slot) before the next offer arrives instead of rejecting it `busy`.
    pub upload_nudge_delay: Duration,
}

/// The default [`LocalConfig::upload_nudge_delay`]: none. Our worker parks an offer that
/// overtakes its own upload's `200` and decides it when the upload finishes, so no hold is
/// needed; set a delay to emulate the reference studio's asynchronous nudge when testing a
/// worker that rejects such offers `busy`.
pub const DEFAULT_UPLOAD_NUDGE_DELAY: Duration = Duration::ZERO;

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            out_dir: PathBuf::from("studio-local-out"),
            auto_approve: false,
            studio: StudioConfig::default(),
            workers: Vec::new(),
            allow_remote: false,
            admin: AdminAuth::Random,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_json_body_bytes: DEFAULT_MAX_JSON_BODY_BYTES,
            upload_nudge_delay: DEFAULT_UPLOAD_NUDGE_DELAY,
        }
    }
}

/// The admin API's token ([`admin_auth`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AdminAuth {
    /// A fresh random token ([`admin_auth::generate_token`]), made at bind: the default.
    #[default]
    Random,
    /// This token.
    Token(String),
    /// No token (`--no-admin-token`, for scripts); the `Host`, `Origin` and content-type
    /// checks still apply.
    Disabled,
}

/// A bound, not yet running server.
pub struct LocalStudio {
    server: Server,
    tx: Sender<Call>,
    waker: Arc<Waker>,
    addr: SocketAddr,
    admin_token: Option<String>,
}

fn random_seed() -> u64 {
    let mut h = RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    h.finish() | 1
}

fn base_url_of(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}/", SocketAddr::new(ip, addr.port()))
}

impl LocalStudio {
    /// Binds the listener, creates `out_dir`, sets up the studio machine and the
    /// pre-provisioned workers. Refuses a non-loopback address unless `allow_remote`.
    pub fn bind(cfg: LocalConfig) -> io::Result<LocalStudio> {
        if !cfg.bind.ip().is_loopback() && !cfg.allow_remote {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "refusing to bind {}: not a loopback address. studio-local has no TLS and \
                     its /local admin API has no authentication; pass --allow-remote \
                     (LocalConfig::allow_remote) to bind it anyway",
                    cfg.bind
                ),
            ));
        }
        std::fs::create_dir_all(&cfg.out_dir).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot create the output directory {}: {e}",
                    cfg.out_dir.display()
                ),
            )
        })?;
        let origin = Instant::now();
        let wall_origin = WallMs(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        );
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(cfg.bind)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {}: {e}", cfg.bind)))?;
        let addr = listener.local_addr()?;
        poll.registry()
            .register(&mut listener, server::LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), server::WAKER)?);
        let (tx, rx) = mpsc::channel();

        let mut studio_cfg = cfg.studio.clone();
        studio_cfg.auto_approve |= cfg.auto_approve;
        if studio_cfg.token_seed == 0 {
            studio_cfg.token_seed = random_seed();
        }
        let mut studio = Studio::new(studio_cfg);
        for (id, token) in &cfg.workers {
            studio.add_worker(id, token);
        }
        let admin_token = match &cfg.admin {
            AdminAuth::Random => Some(admin_auth::generate_token()?),
            AdminAuth::Token(t) => Some(t.clone()),
            AdminAuth::Disabled => None,
        };
        let server = Server::new(
            poll,
            listener,
            rx,
            waker.clone(),
            studio,
            ServerSettings {
                out_dir: cfg.out_dir.clone(),
                max_body_bytes: cfg.max_body_bytes,
                max_json_body_bytes: cfg.max_json_body_bytes,
                admin_token: admin_token.clone(),
                bind: addr,
                upload_nudge_delay: cfg.upload_nudge_delay,
                wall_origin,
            },
            origin,
        );
        Ok(LocalStudio {
            server,
            tx,
            waker,
            addr,
            admin_token,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The token the `/local` admin API wants (`None` when [`AdminAuth::Disabled`]).
    pub fn admin_token(&self) -> Option<&str> {
        self.admin_token.as_deref()
    }

    /// `http://127.0.0.1:<port>/` (an unspecified bind address shows as loopback).
    pub fn base_url(&self) -> String {
        base_url_of(self.addr)
    }

    /// Runs the loop on this thread until `POST /local/shutdown`.
    pub fn run(self) -> io::Result<()> {
        let LocalStudio { server, tx, .. } = self;
        // Keep the channel open so the loop never sees it disconnected.
        let _tx = tx;
        server.run()
    }

    /// Runs the loop on a new thread; the [`Handle`] talks to it and stops it.
    pub fn spawn(self) -> io::Result<Handle> {
        let LocalStudio {
            server,
            tx,
            waker,
            addr,
            admin_token,
        } = self;
        let thread = std::thread::Builder::new()
            .name("studio-local".into())
            .spawn(move || server.run())?;
        Ok(Handle {
            addr,
            tx,
            waker,
            admin_token,
            thread: Some(thread),
        })
    }
}

/// A running server on its own thread. In-process helpers go through the same operations
/// as the HTTP admin API, on the server thread. Dropping the handle stops the server.
pub struct Handle {
    addr: SocketAddr,
    tx: Sender<Call>,
    waker: Arc<Waker>,
    admin_token: Option<String>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

fn stopped() -> HttpError {
    HttpError::new(503, "the local studio is not running")
}

impl Handle {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The token the `/local` admin API wants (`None` when [`AdminAuth::Disabled`]).
    pub fn admin_token(&self) -> Option<&str> {
        self.admin_token.as_deref()
    }

    /// `http://127.0.0.1:<port>/`.
    pub fn base_url(&self) -> String {
        base_url_of(self.addr)
    }

    /// Runs `f` on the server thread and returns its value (`None`: the server stopped).
    fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Server) -> R + Send + 'static,
    ) -> Option<R> {
        let (rtx, rrx) = mpsc::sync_channel(1);
        let call: Call = Box::new(move |s: &mut Server| {
            let _ = rtx.send(f(s));
        });
        self.tx.send(call).ok()?;
        self.waker.wake().ok()?;
        rrx.recv().ok()
    }

    /// Queues a job (as `POST /local/jobs`); its id.
    pub fn submit(&self, job: JobSubmission) -> Result<String, HttpError> {
        self.call(move |s| s.submit(&job))
            .unwrap_or_else(|| Err(stopped()))
    }

    /// Every job (as `GET /local/jobs`); empty when the server stopped.
    pub fn jobs(&self) -> Vec<JobSummary> {
        self.call(|s| s.jobs()).unwrap_or_default()
    }

    /// One job (as `GET /local/jobs/:id`).
    pub fn job(&self, id: &str) -> Option<JobDetail> {
        let id = id.to_string();
        self.call(move |s| s.job(&id)).flatten()
    }

    /// A finished job's result: (content type, bytes) (as `GET /local/jobs/:id/result`).
    pub fn job_result(&self, id: &str) -> Result<(String, Vec<u8>), HttpError> {
        let id = id.to_string();
        self.call(move |s| s.job_result(&id))
            .unwrap_or_else(|| Err(stopped()))
    }

    /// Polls until the job is done or failed, or `timeout` passes; the last view.
    pub fn wait_for_job(&self, id: &str, timeout: Duration) -> Option<JobDetail> {
        let end = Instant::now() + timeout;
        loop {
            let job = self.job(id);
            let finished = job
                .as_ref()
                .is_some_and(|j| j.summary.state == "done" || j.summary.state == "failed");
            if finished || Instant::now() >= end {
                return job;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls until `worker_id` has a welcomed session, or `timeout` passes.
    pub fn wait_for_worker(&self, worker_id: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if self
                .workers()
                .iter()
                .any(|w| w.id == worker_id && w.connected)
            {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every worker (as `GET /local/workers`).
    pub fn workers(&self) -> Vec<WorkerInfo> {
        self.call(|s| s.workers()).unwrap_or_default()
    }

    /// A worker's log ring (as `GET /local/workers/:id/logs`).
    pub fn worker_logs(&self, id: &str) -> Result<Vec<LogEntry>, HttpError> {
        let id = id.to_string();
        self.call(move |s| s.worker_logs(&id))
            .unwrap_or_else(|| Err(stopped()))
    }

    /// Pending registration requests (as `GET /local/requests`).
    pub fn pending(&self) -> Vec<PendingInfo> {
        self.call(|s| s.pending()).unwrap_or_default()
    }

    /// Approves a registration request.
    pub fn approve(&self, request_id: &str) -> Result<(), HttpError> {
        let id = request_id.to_string();
        self.call(move |s| s.approve(&id))
            .unwrap_or_else(|| Err(stopped()))
    }

    /// Rejects a registration request.
    pub fn reject(&self, request_id: &str, reason: &str) -> Result<(), HttpError> {
        let (id, reason) = (request_id.to_string(), reason.to_string());
        self.call(move |s| s.reject(&id, &reason))
            .unwrap_or_else(|| Err(stopped()))
    }

    /// Pre-provisions (or re-keys) a worker.
    pub fn add_worker(&self, worker_id: &str, auth_token: &str) -> Result<(), HttpError> {
        let (id, token) = (worker_id.to_string(), auth_token.to_string());
        self.call(move |s| s.add_worker(&id, &token))
            .unwrap_or_else(|| Err(stopped()))
    }

    /// Deletes a worker.
    pub fn remove_worker(&self, worker_id: &str) -> Result<(), HttpError> {
        let id = worker_id.to_string();
        self.call(move |s| s.remove_worker(&id))
            .unwrap_or_else(|| Err(stopped()))
    }

    /// Server-wide counters.
    pub fn stats(&self) -> Option<Stats> {
        self.call(|s| s.stats())
    }

    /// The armed counting faults.
    pub fn faults(&self) -> Option<FaultState> {
        self.call(|s| s.faults())
    }

    /// Applies a test fault; the number of connections it touched.
    pub fn inject(&self, fault: Fault) -> Result<usize, HttpError> {
        self.call(move |s| s.inject(fault))
            .unwrap_or_else(|| Err(stopped()))
    }

    /// The replies of `worker_id` to [`Fault::ProbeOffer`] offers, intercepted before the
    /// studio machine, oldest first: each the frame's text (`accept`, `reject`,
    /// `completeJson`, `fail`), or `{"type":"upload","jobId","ext","bytes","prompt"}` for a
    /// result upload. Empty when the server stopped.
    pub fn probe_replies(&self, worker_id: &str) -> Vec<String> {
        let id = worker_id.to_string();
        self.call(move |s| s.probe_replies(&id)).unwrap_or_default()
    }

    /// What the server saw of `worker_id`'s WebSocket connections: upgrade attempts,
    /// connections, the last close the worker started (zeros for an id never seen, or
    /// when the server stopped).
    pub fn connection_stats(&self, worker_id: &str) -> ConnectionStats {
        let id = worker_id.to_string();
        self.call(move |s| s.connection_stats(&id))
            .unwrap_or_default()
    }

    /// Whether the server thread is still running.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Waits for the server to stop on its own (`POST /local/shutdown`); its result.
    pub fn join(mut self) -> io::Result<()> {
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the studio-local thread panicked"))),
            None => Ok(()),
        }
    }

    /// Stops the server (open WebSockets get close 1001) and joins its thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        let call: Call = Box::new(|s: &mut Server| s.request_stop(Duration::ZERO));
        if self.tx.send(call).is_ok() {
            let _ = self.waker.wake();
        }
        match thread.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(target: "studio_local", "the server loop failed: {e}"),
            Err(_) => tracing::error!(target: "studio_local", "the server thread panicked"),
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_non_loopback_bind() {
        let cfg = LocalConfig {
            bind: "0.0.0.0:0".parse().unwrap(),
            ..LocalConfig::default()
        };
        let err = LocalStudio::bind(cfg).err().expect("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("--allow-remote"), "{err}");
    }

    #[test]
    fn base_url_shows_loopback_for_unspecified() {
        assert_eq!(
            base_url_of("0.0.0.0:80".parse().unwrap()),
            "http://127.0.0.1:80/"
        );
        assert_eq!(base_url_of("[::]:81".parse().unwrap()), "http://[::1]:81/");
        assert_eq!(
            base_url_of("127.0.0.1:82".parse().unwrap()),
            "http://127.0.0.1:82/"
        );
    }

    #[test]
    fn random_seeds_differ() {
        assert_ne!(random_seed(), random_seed());
    }
}
