//! The admin operations (the `/local` routes and the in-process `Handle` share these) and
//! the views they answer with: job summaries and details, workers, registration requests,
//! stats.

use std::fs;

use studio_core::studio::{HttpError, JobRecord, JobResult, JobState};
use studio_core::wire::{self, LogEntry};

use super::state::{Kind, WsState};
use super::{ms, safe_name, Server};
use crate::api::{
    ConnectionStats, JobDetail, JobSubmission, JobSummary, PendingInfo, ResultView, Stats,
    WorkerInfo,
};
use crate::http;

impl Server {
    pub(crate) fn submit(&mut self, sub: &JobSubmission) -> Result<String, HttpError> {
        let spec = sub.to_spec()?;
        self.with_studio(|s, now| s.submit(now, spec))
    }

    fn summary(&self, j: &JobRecord) -> JobSummary {
        let worker = match &j.state {
            JobState::Done { worker_id, .. } => Some(worker_id.clone()),
            other => other.holder().map(str::to_string),
        };
        let result_summary = match &j.state {
            JobState::Done {
                result: JobResult::Json { .. },
                ..
            } => Some("json".to_string()),
            JobState::Done {
                result: JobResult::Binary { ext, bytes_len, .. },
                ..
            } => Some(format!("{ext}, {bytes_len} bytes")),
            _ => None,
        };
        let last_error = match &j.state {
            JobState::Failed { error } => Some(error.clone()),
            _ => j.last_error.clone(),
        };
        JobSummary {
            id: j.id.clone(),
            kind: j.spec.task.kind(),
            state: j.state.name().to_string(),
            worker,
            attempts: j.attempts,
            model: j.spec.model.clone(),
            prompt: wire::prompt_preview(j.spec.task.prompt()),
            submitted_ms: ms(j.submitted_at),
            updated_ms: ms(j.updated_at),
            last_error,
            result_summary,
        }
    }

    pub(crate) fn jobs(&self) -> Vec<JobSummary> {
        self.studio.jobs().map(|j| self.summary(j)).collect()
    }

    pub(crate) fn job(&self, id: &str) -> Option<JobDetail> {
        let j = self.studio.job(id)?;
        let result = match &j.state {
            JobState::Done { result, .. } => Some(match result {
                JobResult::Json { result, prompt } => ResultView::Json {
                    value: result.clone(),
                    prompt: prompt.clone(),
                },
                JobResult::Binary {
                    ext,
                    prompt,
                    bytes_len,
                } => ResultView::File {
                    ext: ext.clone(),
                    bytes: *bytes_len,
                    prompt: prompt.clone(),
                    content_type: http::content_type_for_ext(ext).to_string(),
                    path: self
                        .uploads
                        .get(id)
                        .filter(|f| f.ok)
                        .map(|f| f.path.clone()),
                },
            }),
            _ => None,
        };
        Some(JobDetail {
            summary: self.summary(j),
            task: j.spec.task.clone(),
            model_source: j.spec.model_source.clone(),
            vram_gb_estimate: j.spec.vram_gb_estimate,
            game_id: j.spec.game_id.clone(),
            asset_name: j.spec.asset_name.clone(),
            offered_to: j.offered_to().map(str::to_string).collect(),
            completions: j.completions,
            result,
        })
    }

    pub(crate) fn job_result(&self, id: &str) -> Result<(String, Vec<u8>), HttpError> {
        let j = self
            .studio
            .job(id)
            .ok_or_else(|| HttpError::new(404, "unknown job"))?;
        match &j.state {
            JobState::Done {
                result: JobResult::Json { result, .. },
                ..
            } => Ok((
                "application/json".into(),
                serde_json::to_vec(result).unwrap_or_default(),
            )),
            JobState::Done {
                result: JobResult::Binary { ext, .. },
                ..
            } => {
                let file = self
                    .uploads
                    .get(id)
                    .filter(|f| f.ok)
                    .ok_or_else(|| HttpError::new(404, "the result file was not stored"))?;
                let bytes = fs::read(&file.path).map_err(|e| {
                    HttpError::new(404, format!("cannot read the result file: {e}"))
                })?;
                Ok((http::content_type_for_ext(ext).into(), bytes))
            }
            other => Err(HttpError::new(
                409,
                format!("job {id} is {}, no result", other.name()),
            )),
        }
    }

    pub(crate) fn workers(&self) -> Vec<WorkerInfo> {
        let now = self.now();
        self.studio
            .workers()
            .into_iter()
            .map(|w| {
                let (mut sockets, mut stalled) = (0, 0);
                for c in self.conns.values() {
                    if let Kind::Ws(ws) = &c.kind {
                        if ws.worker_id == w.id {
                            match ws.state {
                                WsState::Open => sockets += 1,
                                WsState::Stalled => {
                                    sockets += 1;
                                    stalled += 1
                                }
                                WsState::Closing { .. } => {}
                            }
                        }
                    }
                }
                WorkerInfo {
                    logs: self.studio.worker_logs(&w.id).len(),
                    sockets,
                    stalled_sockets: stalled,
                    connected: w.connected,
                    connected_since_ms: w.connected_since.map(ms),
                    capabilities: w.capabilities,
                    current_job: w.current_job,
                    last_heartbeat_ms: w.last_heartbeat.map(ms),
                    last_heartbeat_ago_ms: w
                        .last_heartbeat
                        .map(|t| now.saturating_since(t).as_millis() as u64),
                    has_token: w.has_token,
                    idle: w.idle,
                    connection_stats: self.tallies.get(&w.id).cloned().unwrap_or_default(),
                    id: w.id,
                }
            })
            .collect()
    }

    pub(crate) fn worker_logs(&self, id: &str) -> Result<Vec<LogEntry>, HttpError> {
        if self.studio.worker(id).is_none() {
            return Err(HttpError::new(404, "unknown worker"));
        }
        Ok(self.studio.worker_logs(id))
    }

    pub(crate) fn pending(&self) -> Vec<PendingInfo> {
        self.studio
            .pending_requests()
            .into_iter()
            .map(|p| PendingInfo {
                request_id: p.request_id,
                install_id: p.install_id,
                user_agent: p.user_agent,
                capabilities: p.capabilities,
                requested_ms: ms(p.requested_at),
            })
            .collect()
    }

    pub(crate) fn approve(&mut self, id: &str) -> Result<(), HttpError> {
        self.with_studio(|s, _| s.approve(id))
    }

    pub(crate) fn reject(&mut self, id: &str, reason: &str) -> Result<(), HttpError> {
        self.with_studio(|s, _| s.reject(id, reason))
    }

    pub(crate) fn add_worker(&mut self, id: &str, token: &str) -> Result<(), HttpError> {
        if !safe_name(id) {
            return Err(HttpError::new(
                400,
                "workerId must be 1-128 ASCII letters, digits, `-`, `_` or `.`",
            ));
        }
        if token.is_empty() {
            return Err(HttpError::new(400, "authToken must not be empty"));
        }
        self.with_studio(|s, _| s.add_worker(id, token));
        Ok(())
    }

    pub(crate) fn remove_worker(&mut self, id: &str) -> Result<(), HttpError> {
        if self.studio.worker(id).is_none() {
            return Err(HttpError::new(404, "unknown worker"));
        }
        self.with_studio(|s, _| s.remove_worker(id));
        Ok(())
    }

    pub(crate) fn stats(&self) -> Stats {
        let s = self.studio.stats();
        let mut stats = Stats {
            queued: s.queued,
            offered: s.offered,
            running: s.running,
            done: s.done,
            failed: s.failed,
            connected_workers: s.connected_workers,
            uptime_ms: self.origin.elapsed().as_millis() as u64,
            upgrade_attempts: self.upgrade_attempts,
            ..Stats::default()
        };
        for c in self.conns.values() {
            match c.kind {
                Kind::Http(_) => stats.http_connections += 1,
                Kind::Ws(_) => stats.websockets += 1,
            }
        }
        stats
    }

    /// What this server saw of `worker_id`'s connections (zeros for an id never seen).
    pub(crate) fn connection_stats(&self, worker_id: &str) -> ConnectionStats {
        self.tallies.get(worker_id).cloned().unwrap_or_default()
    }
}
