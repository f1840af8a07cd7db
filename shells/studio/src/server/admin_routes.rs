//! The `/local` admin API: each route parses its body, calls the admin operation
//! (`views`, `faults`) and answers JSON; wrong methods get a 405 with `Allow`.

use std::time::Duration;

use serde_json::json;
use studio_core::studio::HttpError;
use studio_core::wire::{ImageTask, Task};
use tracing::info;

use super::routes::{err_response, index, method_not_allowed, not_found, parse_json_body, to_json};
use super::Server;
use crate::api::{
    AddWorkerBody, CloseBody, ErrorBody, Fault, FaultsBody, JobSubmission, ProbeOfferBody,
    RejectBody, DEFAULT_PROBE_PROMPT,
};
use crate::http::Response;

/// How long a stop waits for pending HTTP answers (e.g. the `/local/shutdown` reply).
const STOP_GRACE: Duration = Duration::from_secs(1);

impl Server {
    pub(super) fn route_local(
        &mut self,
        method: &str,
        rest: &[&str],
        body: &[u8],
        path: &str,
    ) -> Response {
        let result: Result<Response, HttpError> = match (method, rest) {
            ("GET", []) => Ok(Response::json(200, &index())),
            ("GET", ["stats"]) => Ok(Response::json(200, &to_json(&self.stats()))),
            ("POST", ["jobs"]) => parse_json_body::<JobSubmission>(body)
                .and_then(|sub| self.submit(&sub))
                .map(|job_id| Response::json(200, &json!({ "jobId": job_id }))),
            ("GET", ["jobs"]) => Ok(Response::json(200, &to_json(&self.jobs()))),
            ("GET", ["jobs", jid]) => self
                .job(jid)
                .map(|d| Response::json(200, &to_json(&d)))
                .ok_or_else(|| HttpError::new(404, "unknown job")),
            ("GET", ["jobs", jid, "result"]) => self
                .job_result(jid)
                .map(|(ct, bytes)| Response::bytes(200, &ct, bytes)),
            ("GET", ["workers"]) => Ok(Response::json(200, &to_json(&self.workers()))),
            ("POST", ["workers"]) => parse_json_body::<AddWorkerBody>(body)
                .and_then(|b| self.add_worker(&b.worker_id, &b.auth_token))
                .map(|()| Response::json(200, &json!({"ok": true}))),
            ("DELETE", ["workers", wid]) => self
                .remove_worker(wid)
                .map(|()| Response::json(200, &json!({"ok": true}))),
            ("GET", ["workers", wid, "logs"]) => self
                .worker_logs(wid)
                .map(|logs| Response::json(200, &to_json(&logs))),
            ("GET", ["workers", wid, "connections"]) => {
                Ok(Response::json(200, &to_json(&self.connection_stats(wid))))
            }
            ("GET", ["workers", wid, "probe-replies"]) => {
                Ok(Response::json(200, &to_json(&self.probe_replies(wid))))
            }
            ("POST", ["workers", wid, action]) => self
                .worker_fault(wid, action, body)
                .map(|n| Response::json(200, &json!({"ok": true, "connections": n}))),
            ("GET", ["requests"]) => Ok(Response::json(200, &to_json(&self.pending()))),
            ("POST", ["requests", rid, "approve"]) => self
                .approve(rid)
                .map(|()| Response::json(200, &json!({"ok": true}))),
            ("POST", ["requests", rid, "reject"]) => parse_json_body::<RejectBody>(body)
                .and_then(|b| {
                    self.reject(
                        rid,
                        b.reason.as_deref().unwrap_or("rejected by the operator"),
                    )
                })
                .map(|()| Response::json(200, &json!({"ok": true}))),
            ("GET", ["faults"]) => Ok(Response::json(200, &to_json(&self.faults))),
            ("POST", ["faults"]) => parse_json_body::<FaultsBody>(body)
                .and_then(|b| self.set_faults(&b))
                .map(|s| Response::json(200, &to_json(&s))),
            ("POST", ["shutdown"]) => {
                info!(target: "studio_local", "shutdown requested over HTTP");
                self.request_stop(STOP_GRACE);
                Ok(Response::json(200, &json!({"ok": true})))
            }
            (_, [] | ["stats"] | ["jobs", _] | ["jobs", _, "result"] | ["requests"])
            | (_, ["workers", _, "logs" | "connections" | "probe-replies"]) => {
                Ok(method_not_allowed("GET"))
            }
            (_, ["jobs"] | ["workers"] | ["faults"]) => Ok(method_not_allowed("GET, POST")),
            (_, ["requests", _, "approve" | "reject"] | ["shutdown"]) => {
                Ok(method_not_allowed("POST"))
            }
            (_, ["workers", _]) => Ok(method_not_allowed("DELETE")),
            _ => Ok(not_found(path)),
        };
        result.unwrap_or_else(|e| err_response(&e))
    }

    fn worker_fault(
        &mut self,
        worker_id: &str,
        action: &str,
        body: &[u8],
    ) -> Result<usize, HttpError> {
        let fault = match action {
            "drop" => Fault::Drop {
                worker_id: worker_id.into(),
            },
            "stall" => Fault::Stall {
                worker_id: worker_id.into(),
            },
            "close" => {
                let b: CloseBody = parse_json_body(body)?;
                Fault::Close {
                    worker_id: worker_id.into(),
                    code: b.code.unwrap_or(1000),
                    reason: b.reason.unwrap_or_default(),
                }
            }
            "error" => {
                let b: ErrorBody = parse_json_body(body)?;
                Fault::Error {
                    worker_id: worker_id.into(),
                    code: b.code,
                    message: b
                        .message
                        .unwrap_or_else(|| "injected by studio-local".into()),
                }
            }
            "probe-offer" => {
                let b: ProbeOfferBody = parse_json_body(body)?;
                if let Some(claim) = b.claim {
                    return self.inject(Fault::RawProbeOffer {
                        worker_id: worker_id.into(),
                        job_id: b.job_id,
                        claim,
                    });
                }
                Fault::ProbeOffer {
                    worker_id: worker_id.into(),
                    job_id: b.job_id,
                    task: Box::new(b.task.unwrap_or_else(|| {
                        Task::Image(ImageTask {
                            prompt: DEFAULT_PROBE_PROMPT.into(),
                            ..ImageTask::default()
                        })
                    })),
                }
            }
            other => {
                return Err(HttpError::new(
                    404,
                    format!(
                        "unknown worker action `{other}` (drop, stall, close, error, probe-offer)"
                    ),
                ))
            }
        };
        self.inject(fault)
    }
}
