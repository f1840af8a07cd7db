//! The JSON shapes of the local admin API (`/local/...`), shared by the HTTP routes and the
//! in-process [`Handle`](crate::Handle) helpers.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use studio_core::studio::{HttpError, JobSpec};
use studio_core::wire::{
    AudioSttTask, AudioTtsTask, ChatMessage, ImageTask, LlmTask, LogEntry, ModelSource, Task,
    TaskKind, VideoTask, WorkerCapabilities, WorkerErrorCode,
};

/// The prompt of a probe offer sent without a task.
pub const DEFAULT_PROBE_PROMPT: &str = "a studio-local probe offer";

/// The prompt of a job submitted without one.
pub const DEFAULT_PROMPT: &str = "a studio-local test job";

/// A job to queue: the body of `POST /local/jobs`.
///
/// Either a full `task` (PROTOCOL.md §3.3) or a `kind` plus a `prompt` from which a
/// minimal task is built (llm: one user message; audio_stt: the prompt is the `inputUrl`;
/// audio_tts: the prompt is the `text`). Neither: an image job. Unknown fields are refused.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobSubmission {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<TaskKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<Task>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Default `synthetic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Default: the synthetic engine, no files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_source: Option<ModelSource>,
    /// Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vram_gb_estimate: Option<f32>,
    /// Default `game`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub game_id: Option<String>,
    /// Default `game/<job kind>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset_name: Option<String>,
}

impl JobSubmission {
    /// A job of `kind` with `prompt`, every other field defaulted.
    pub fn new(kind: TaskKind, prompt: impl Into<String>) -> JobSubmission {
        JobSubmission {
            kind: Some(kind),
            prompt: Some(prompt.into()),
            ..JobSubmission::default()
        }
    }

    /// A job running exactly `task`.
    pub fn from_task(task: Task) -> JobSubmission {
        JobSubmission {
            task: Some(task),
            ..JobSubmission::default()
        }
    }

    /// The studio's job spec. 400 when `kind` and `task.kind` disagree.
    pub fn to_spec(&self) -> Result<JobSpec, HttpError> {
        let task = match (&self.task, self.kind) {
            (Some(task), Some(kind)) if task.kind() != kind => {
                return Err(HttpError::new(
                    400,
                    format!("kind `{kind}` does not match task.kind `{}`", task.kind()),
                ))
            }
            (Some(task), _) => task.clone(),
            (None, kind) => {
                let prompt = self
                    .prompt
                    .clone()
                    .unwrap_or_else(|| DEFAULT_PROMPT.to_string());
                task_for(kind.unwrap_or(TaskKind::Image), prompt)
            }
        };
        let kind = task.kind();
        Ok(JobSpec {
            model: self.model.clone().unwrap_or_else(|| "synthetic".into()),
            vram_gb_estimate: self.vram_gb_estimate.unwrap_or(0.0),
            model_source: self
                .model_source
                .clone()
                .unwrap_or_else(ModelSource::synthetic),
            game_id: self.game_id.clone().unwrap_or_else(|| "game".into()),
            asset_name: self
                .asset_name
                .clone()
                .unwrap_or_else(|| format!("game/{kind}")),
            task,
        })
    }
}

/// A minimal task of `kind` around `prompt`.
pub fn task_for(kind: TaskKind, prompt: String) -> Task {
    match kind {
        TaskKind::Image => Task::Image(ImageTask {
            prompt,
            ..ImageTask::default()
        }),
        TaskKind::Llm => Task::Llm(LlmTask {
            messages: vec![ChatMessage {
                role: "user".into(),
                content: prompt,
            }],
            ..LlmTask::default()
        }),
        TaskKind::AudioStt => Task::AudioStt(AudioSttTask {
            input_url: prompt,
            ..AudioSttTask::default()
        }),
        TaskKind::AudioTts => Task::AudioTts(AudioTtsTask {
            text: prompt,
            ..AudioTtsTask::default()
        }),
        TaskKind::Video => Task::Video(VideoTask {
            prompt,
            ..VideoTask::default()
        }),
    }
}

/// One row of `GET /local/jobs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobSummary {
    pub id: String,
    pub kind: TaskKind,
    /// `queued`, `offered`, `running`, `done` or `failed`.
    pub state: String,
    /// The worker holding it (offered/running) or that delivered it (done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Started runs (see the studio machine's docs).
    pub attempts: u32,
    pub model: String,
    /// The prompt, cut to 200 characters.
    pub prompt: String,
    /// Milliseconds since the server started.
    pub submitted_ms: u64,
    pub updated_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// `json` or `<ext>, <n> bytes`, once done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_summary: Option<String>,
}

/// A delivered result as `GET /local/jobs/:id` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum ResultView {
    /// Delivered by `completeJson`.
    Json {
        value: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prompt: Option<String>,
    },
    /// Delivered by the multipart upload and stored at `path`.
    File {
        ext: String,
        bytes: u64,
        prompt: String,
        content_type: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<PathBuf>,
    },
}

/// `GET /local/jobs/:id`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobDetail {
    #[serde(flatten)]
    pub summary: JobSummary,
    pub task: Task,
    pub model_source: ModelSource,
    pub vram_gb_estimate: f32,
    pub game_id: String,
    pub asset_name: String,
    /// Every worker it was offered to.
    pub offered_to: Vec<String>,
    pub completions: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ResultView>,
}

/// One row of `GET /local/workers`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerInfo {
    pub id: String,
    /// Has a welcomed session.
    pub connected: bool,
    /// Open WebSocket connections of this worker on this server (welcomed or not).
    pub sockets: usize,
    /// Sockets frozen by the `stall` fault.
    pub stalled_sockets: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected_since_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<WorkerCapabilities>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_job: Option<String>,
    /// Time of its last frame, in milliseconds since the server started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_ago_ms: Option<u64>,
    pub has_token: bool,
    pub idle: bool,
    /// Entries in its log ring.
    pub logs: usize,
    /// What this server saw of its connection attempts (see [`ConnectionStats`]).
    #[serde(default)]
    pub connection_stats: ConnectionStats,
}

/// Per worker id (as named in the upgrade path): what this server saw of its WebSocket
/// connections (`GET /local/workers/:id/connections`, also part of [`WorkerInfo`]). Kept
/// for ids the studio does not know too, so a worker with a wrong id or token can be
/// observed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionStats {
    /// Requests on `GET /graphics/api/workers/:id/connect`, answered or refused.
    pub upgrade_attempts: u64,
    /// Those answered with anything but `101` (401 bad token, injected failures, ...).
    pub upgrades_refused: u64,
    /// Upgrades that became WebSocket connections (`101` written).
    pub connections: u64,
    /// The code of the last close frame the worker started (a close it sent first, not
    /// its reply to a close of the studio); 1005 for a close frame without a code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_close_code: Option<u16>,
    /// That close frame's reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_close_reason: Option<String>,
}

/// One row of `GET /local/requests`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingInfo {
    pub request_id: String,
    pub install_id: String,
    pub user_agent: String,
    pub capabilities: WorkerCapabilities,
    pub requested_ms: u64,
}

/// Server-wide counters (`GET /local/stats`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub queued: usize,
    pub offered: usize,
    pub running: usize,
    pub done: usize,
    pub failed: usize,
    pub connected_workers: usize,
    pub websockets: usize,
    pub http_connections: usize,
    pub uptime_ms: u64,
    /// Every request on the WebSocket upgrade route since the server started (per worker:
    /// [`ConnectionStats`]).
    #[serde(default)]
    pub upgrade_attempts: u64,
}

/// The armed counting faults (`GET /local/faults`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultState {
    /// Upload requests still to fail.
    pub fail_uploads: u32,
    pub fail_uploads_status: u16,
    /// WebSocket upgrades still to refuse.
    pub upgrade_failures: u32,
    pub upgrade_status: u16,
    /// Result uploads still to hold: read, never answered, never fed to the machine (the
    /// worker waits; the upload is dropped when the worker hangs up).
    #[serde(default)]
    pub hold_uploads: u32,
    /// Uploads held now.
    #[serde(default)]
    pub uploads_held: u32,
    /// `completeJson` / `fail` frames still to drop: never fed to the machine, never
    /// acknowledged (as if lost on the way).
    #[serde(default)]
    pub drop_results: u32,
}

/// A test hook. Every variant is also reachable over HTTP (see the crate docs).
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// The next `count` result uploads answer `status` without reaching the studio machine.
    FailUploads { count: u32, status: u16 },
    /// The next `count` WebSocket upgrades answer `status` (with a JSON error body).
    FailUpgrades { count: u32, status: u16 },
    /// The next `count` result uploads are read and never answered nor fed to the studio
    /// machine, until the worker hangs up ([`FaultState::uploads_held`] counts them).
    HoldUploads { count: u32 },
    /// The next `count` `completeJson` / `fail` frames are dropped: never fed to the
    /// machine, never acknowledged.
    DropResults { count: u32 },
    /// Close the worker's TCP connections at once: no close frame.
    Drop { worker_id: String },
    /// Stop reading from and writing to the worker's sockets but keep them open (a
    /// half-open peer); the studio machine's sweep or the worker's read-idle timeout acts.
    Stall { worker_id: String },
    /// Send a close frame with this code and reason.
    Close {
        worker_id: String,
        code: u16,
        reason: String,
    },
    /// Send an `error` frame, then close with the code paired with `code`.
    Error {
        worker_id: String,
        code: WorkerErrorCode,
        message: String,
    },
    /// Send a raw `offer` for `job_id`, a job the studio machine does not know, to the
    /// worker's open sockets, bypassing the machine (which never offers to a worker it
    /// knows is busy). The worker's answers naming `job_id` (`accept`, `reject`,
    /// `completeJson`, `fail`, and a result upload for it) are intercepted: recorded as
    /// text in [`Handle::probe_replies`](crate::Handle::probe_replies), never fed to the
    /// machine (which would call them protocol violations). `completeJson` / `fail` get a
    /// `completeAck` / `failAck` and an upload a `200`, as a studio would answer.
    ProbeOffer {
        worker_id: String,
        job_id: String,
        task: Box<Task>,
    },
    /// [`Fault::ProbeOffer`] with a raw `claim` sent as given (its `jobId` set to
    /// `job_id`): an offer the worker may not be able to decode (`"width": -1`, an unknown
    /// kind, a missing field).
    RawProbeOffer {
        worker_id: String,
        job_id: String,
        claim: serde_json::Value,
    },
}

/// The body of `POST /local/workers/:id/probe-offer`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ProbeOfferBody {
    pub job_id: String,
    /// Default: an image task with [`DEFAULT_PROBE_PROMPT`].
    #[serde(default)]
    pub task: Option<Task>,
    /// A raw claim instead (JSON, sent as given with its `jobId` set): see
    /// [`Fault::RawProbeOffer`].
    #[serde(default)]
    pub claim: Option<serde_json::Value>,
}

/// The body of `POST /local/faults`: every field optional; absent ones keep their value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultsBody {
    #[serde(default)]
    pub fail_uploads: Option<u32>,
    #[serde(default)]
    pub fail_uploads_status: Option<u16>,
    #[serde(default)]
    pub upgrade_failures: Option<u32>,
    #[serde(default)]
    pub upgrade_status: Option<u16>,
    #[serde(default)]
    pub hold_uploads: Option<u32>,
    #[serde(default)]
    pub drop_results: Option<u32>,
}

/// The body of `POST /local/workers/:id/close`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct CloseBody {
    #[serde(default)]
    pub code: Option<u16>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// The body of `POST /local/workers/:id/error`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ErrorBody {
    pub code: WorkerErrorCode,
    #[serde(default)]
    pub message: Option<String>,
}

/// The body of `POST /local/workers`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct AddWorkerBody {
    pub worker_id: String,
    pub auth_token: String,
}

/// The body of `POST /local/requests/:id/reject`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RejectBody {
    #[serde(default)]
    pub reason: Option<String>,
}

/// The log ring of a worker (`GET /local/workers/:id/logs`).
pub type WorkerLogs = Vec<LogEntry>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submissions_build_tasks_of_every_kind() {
        for kind in TaskKind::ALL {
            let spec = JobSubmission::new(kind, "p").to_spec().unwrap();
            assert_eq!(spec.task.kind(), kind);
            assert_eq!(spec.task.prompt(), "p");
            assert_eq!(spec.model, "synthetic");
            assert_eq!(spec.model_source, ModelSource::synthetic());
        }
        let spec = JobSubmission::default().to_spec().unwrap();
        assert_eq!(spec.task.kind(), TaskKind::Image);
        assert_eq!(spec.task.prompt(), DEFAULT_PROMPT);
    }

    #[test]
    fn submission_json_and_mismatch() {
        let s: JobSubmission = serde_json::from_str(
            r#"{"kind":"llm","task":{"kind":"image","prompt":"x"},"vramGbEstimate":2}"#,
        )
        .unwrap();
        assert_eq!(s.to_spec().unwrap_err().status, 400);
        let s: JobSubmission =
            serde_json::from_str(r#"{"task":{"kind":"video","prompt":"x","seconds":1.5}}"#)
                .unwrap();
        assert_eq!(s.to_spec().unwrap().task.kind(), TaskKind::Video);
        assert!(serde_json::from_str::<JobSubmission>(r#"{"knd":"llm"}"#).is_err());
    }
}
