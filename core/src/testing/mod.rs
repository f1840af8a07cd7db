//! The test peer of the core, behind the `testing` feature (off in every shipped build):
//! what the core's tests, the property checks, the fuzzer and the fleet simulation need to
//! drive the machines in memory, written once. Pure like the rest of the core: time is
//! passed in, nothing sleeps, nothing touches the network.
//!
//! * [`Driver`]: one worker machine with a clock, drained to its `Wait` after every input,
//!   remembering what it asked for last (connection, HTTP request, dispatched job) so a
//!   test can answer it.
//! * [`Link`]: one socket as the two machines see it (the worker's connection id and the
//!   studio's), translating what one side does into the other side's input.
//! * [`studio_http`] and [`studio_upgrade`]: the one bridge from a worker's requests (HTTP
//!   calls and the WebSocket upgrade) to the studio machine, as the studio's routes answer.
//! * [`Pair`]: a worker and the studio wired together over a link and the bridge, with a
//!   simulated engine and fault switches, stepped to the next deadline (quinn-proto's
//!   `Pair` idea).
//! * [`LlmJob`] and [`Driver::run_llm_job`]: a steady stream of synthetic llm jobs through
//!   one live machine (the core's allocation bound, `studio-bench`'s machine-alone
//!   baseline).
//! * Fixtures: [`WALL0`], [`registered`], [`welcome`], [`offer`], [`task`],
//!   [`job_success`].

mod driver;
mod link;
mod pair;
mod stream;

use serde_json::{json, Value};

use crate::studio::{HttpError, Studio, Upload};
use crate::time::Now;
use crate::wire::{self, StudioFrame, Task, TaskKind};
use crate::worker::{ConnectError, Credentials, HttpRequest, JobOutcome, WorkerConfig};

pub use driver::{Driver, MAX_DRAIN};
pub use link::Link;
pub use pair::{EngineMode, EngineRun, Pair};
pub use stream::{LlmJob, JOB_SPACING_MICROS};

/// Wall clock at `Mono::ZERO`: 2026-05-25T12:00:00Z.
pub const WALL0: u64 = 1_779_710_400_000;

/// What a refused connection or request reports while the studio is down.
pub const REFUSED: &str = "connection refused";

/// The size every simulated binary result claims.
pub const RESULT_BYTES: u64 = 1234;

/// A test configuration with credentials (`w-1` / `tok-1`) against `api_base_url`.
pub fn registered(api_base_url: &str) -> WorkerConfig {
    let mut cfg = WorkerConfig::for_tests(api_base_url);
    cfg.credentials = Some(Credentials {
        worker_id: "w-1".into(),
        auth_token: "tok-1".into(),
    });
    cfg
}

/// The studio's `welcome` for `w-1`.
pub fn welcome() -> StudioFrame {
    StudioFrame::Welcome {
        worker_id: "w-1".into(),
        server_time: "2026-05-25T12:00:00Z".into(),
    }
}

/// An offer of `job` for the synthetic engine with the given task JSON.
pub fn offer(job: &str, task: Value) -> StudioFrame {
    let text = json!({"type":"offer","claim":{"jobId":job,"gameId":"g","assetName":"g/a","model":"synthetic",
        "vramGbEstimate":1.0,"task":task,"modelSource":{"engine":"synthetic","files":[],
        "cliDefaults":{"cfgScale":1.0,"steps":8,"width":1024,"height":1024}}}})
    .to_string();
    wire::decode_studio_frame(&text).expect("a valid offer")
}

/// A task of `kind` whose prompt (or input) is `prompt`.
pub fn task(kind: TaskKind, prompt: &str) -> Task {
    let v = match kind {
        TaskKind::Image => json!({"kind":"image","prompt":prompt}),
        TaskKind::Llm => json!({"kind":"llm","messages":[{"role":"user","content":prompt}]}),
        TaskKind::AudioStt => json!({"kind":"audio_stt","inputUrl":prompt}),
        TaskKind::AudioTts => json!({"kind":"audio_tts","text":prompt}),
        TaskKind::Video => json!({"kind":"video","prompt":prompt}),
    };
    serde_json::from_value(v).expect("a valid task")
}

/// What a simulated engine returns for a `kind` job that succeeds: [`RESULT_BYTES`] of
/// output with the kind's extension for the binary kinds, else the JSON `result`.
pub fn job_success(kind: TaskKind, result: Value) -> JobOutcome {
    if kind.is_binary() {
        JobOutcome::Binary {
            ext: match kind {
                TaskKind::AudioTts => "wav".into(),
                _ => "webp".into(),
            },
            bytes_len: RESULT_BYTES,
        }
    } else {
        JobOutcome::Json { result }
    }
}

/// The worker id in a studio URL (`.../workers/<id>/...`), empty when there is none.
pub fn worker_id_in_url(url: &str) -> String {
    url.split("/workers/")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .unwrap_or_default()
        .to_string()
}

/// A worker's HTTP request answered by the studio machine as its routes would: the status
/// and the body. An upload claims `bytes_len` bytes (the bytes stay with the caller).
/// Faults (a 5xx, a transport error, a studio that is down) are the caller's to inject
/// before it calls this. Drain the studio afterwards: an HTTP call may make it offer work.
pub fn studio_http(
    studio: &mut Studio,
    now: Now,
    request: HttpRequest,
    bytes_len: u64,
) -> (u16, String) {
    fn answer<T: serde::Serialize>(r: Result<T, HttpError>) -> (u16, String) {
        match r {
            Ok(v) => (200, wire::encode(&v)),
            Err(e) => (e.status, e.message),
        }
    }
    match request {
        HttpRequest::RegisterRequest { body, .. } => answer(studio.register_request(now, body)),
        HttpRequest::PollRegistration { url, bearer } => {
            let request_id = url.rsplit('/').next().unwrap_or_default();
            answer(studio.register_status(now, request_id, bearer.expose()))
        }
        HttpRequest::Upload {
            url,
            auth_token,
            job_id,
            prompt,
            ext,
        } => {
            let upload = Upload {
                worker_id: &worker_id_in_url(&url),
                bearer: auth_token.expose(),
                job_id: &job_id,
                prompt: &prompt,
                ext: &ext,
                bytes_len,
            };
            match studio.complete_upload(now, upload) {
                Ok(()) => (200, r#"{"ok":true}"#.into()),
                Err(e) => (e.status, e.message),
            }
        }
    }
}

/// A worker's WebSocket upgrade to `url` with `auth_token`, authorised by the studio
/// machine: the worker id it is for, or the failure the worker sees (401: unauthorised,
/// any other refusal: a status).
pub fn studio_upgrade(
    studio: &Studio,
    url: &str,
    auth_token: &str,
) -> Result<String, ConnectError> {
    let worker_id = worker_id_in_url(url);
    match studio.authorize_upgrade(&worker_id, auth_token) {
        Ok(()) => Ok(worker_id),
        Err(e) if e.status == 401 => Err(ConnectError::Unauthorized { body: e.message }),
        Err(e) => Err(ConnectError::Status {
            status: e.status,
            body: e.message,
        }),
    }
}
