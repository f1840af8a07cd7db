//! Fault injection (the end-to-end tests' hooks): failing and held uploads, failing
//! upgrades, dropped result frames, dropped, stalled and closed sessions, error frames, and
//! probe offers (raw offers for a job the machine does not know, maybe undecodable, whose
//! replies are intercepted and recorded, never fed to it).

use serde_json::Value;
use studio_core::studio::HttpError;
use studio_core::wire::{self, JobOfferClaim, ModelSource, StudioFrame};
use tracing::{info, warn};

use super::state::{Conn, Kind, WsState};
use super::{safe_name, ConnId, Server};
use crate::api::{Fault, FaultState, FaultsBody};

/// Most intercepted replies kept per worker (oldest dropped first).
const MAX_PROBE_REPLIES: usize = 1024;

/// The worker frame types a probe offer intercepts when they name a probe job.
const PROBE_REPLY_TYPES: [&str; 4] = ["accept", "reject", "completeJson", "fail"];

impl Server {
    pub(crate) fn faults(&self) -> FaultState {
        self.faults.clone()
    }

    pub(crate) fn set_faults(&mut self, b: &FaultsBody) -> Result<FaultState, HttpError> {
        for status in [b.fail_uploads_status, b.upgrade_status]
            .into_iter()
            .flatten()
        {
            if !(400..=599).contains(&status) {
                return Err(HttpError::new(400, "fault statuses must be 400-599"));
            }
        }
        if let Some(s) = b.fail_uploads_status {
            self.faults.fail_uploads_status = s;
        }
        if let Some(n) = b.fail_uploads {
            self.faults.fail_uploads = n;
        }
        if let Some(s) = b.upgrade_status {
            self.faults.upgrade_status = s;
        }
        if let Some(n) = b.upgrade_failures {
            self.faults.upgrade_failures = n;
        }
        if let Some(n) = b.hold_uploads {
            self.faults.hold_uploads = n;
        }
        if let Some(n) = b.drop_results {
            self.faults.drop_results = n;
        }
        info!(target: "studio_local::faults", "faults armed: {:?}", self.faults);
        Ok(self.faults.clone())
    }

    /// Applies a fault; the number of connections it touched (0 for counting faults).
    pub(crate) fn inject(&mut self, fault: Fault) -> Result<usize, HttpError> {
        match fault {
            Fault::FailUploads { count, status } => {
                self.set_faults(&FaultsBody {
                    fail_uploads: Some(count),
                    fail_uploads_status: Some(status),
                    ..FaultsBody::default()
                })?;
                Ok(0)
            }
            Fault::FailUpgrades { count, status } => {
                self.set_faults(&FaultsBody {
                    upgrade_failures: Some(count),
                    upgrade_status: Some(status),
                    ..FaultsBody::default()
                })?;
                Ok(0)
            }
            Fault::HoldUploads { count } => {
                self.set_faults(&FaultsBody {
                    hold_uploads: Some(count),
                    ..FaultsBody::default()
                })?;
                Ok(0)
            }
            Fault::DropResults { count } => {
                self.set_faults(&FaultsBody {
                    drop_results: Some(count),
                    ..FaultsBody::default()
                })?;
                Ok(0)
            }
            Fault::Drop { worker_id } => {
                let conns = self.worker_conns(&worker_id, true);
                if conns.is_empty() {
                    return Err(no_socket(&worker_id));
                }
                warn!(target: "studio_local::faults", worker_id, "dropping TCP connection(s)");
                for id in &conns {
                    self.remove(*id);
                }
                Ok(conns.len())
            }
            Fault::Stall { worker_id } => {
                let conns = self.worker_conns(&worker_id, false);
                if conns.is_empty() {
                    return Err(no_socket(&worker_id));
                }
                warn!(target: "studio_local::faults", worker_id, "stalling connection(s)");
                for id in &conns {
                    if let Some(Conn {
                        kind: Kind::Ws(w), ..
                    }) = self.conns.get_mut(id)
                    {
                        w.state = WsState::Stalled;
                        w.writable = false;
                        let _ = self.poll.registry().deregister(w.ws.get_mut());
                    }
                }
                Ok(conns.len())
            }
            Fault::Close {
                worker_id,
                code,
                reason,
            } => {
                if !sendable_close_code(code) {
                    return Err(HttpError::new(
                        400,
                        format!("close code {code} cannot be sent (use 1000-1003, 1007-1014 or 3000-4999)"),
                    ));
                }
                let conns = self.worker_conns(&worker_id, false);
                if conns.is_empty() {
                    return Err(no_socket(&worker_id));
                }
                warn!(target: "studio_local::faults", worker_id, code, "closing connection(s)");
                for id in &conns {
                    self.ws_close(*id, code, &reason, true);
                }
                Ok(conns.len())
            }
            Fault::Error {
                worker_id,
                code,
                message,
            } => {
                let conns = self.worker_conns(&worker_id, false);
                if conns.is_empty() {
                    return Err(no_socket(&worker_id));
                }
                warn!(target: "studio_local::faults", worker_id, code = code.as_str(), "sending error frame(s)");
                let text = wire::encode(&StudioFrame::Error {
                    code,
                    message: message.clone(),
                });
                for id in &conns {
                    self.ws_send(*id, text.clone());
                    self.ws_close(*id, code.close_code(), code.as_str(), true);
                }
                Ok(conns.len())
            }
            Fault::ProbeOffer {
                worker_id,
                job_id,
                task,
            } => {
                let kind = task.kind();
                let claim = JobOfferClaim {
                    job_id: job_id.clone(),
                    game_id: "probe".into(),
                    asset_name: format!("probe/{kind}"),
                    model: "synthetic".into(),
                    vram_gb_estimate: 0.0,
                    task: *task,
                    model_source: ModelSource::synthetic(),
                };
                let text = wire::encode(&StudioFrame::Offer {
                    claim: Box::new(claim),
                });
                self.send_probe(worker_id, job_id, text)
            }
            Fault::RawProbeOffer {
                worker_id,
                job_id,
                mut claim,
            } => {
                let Some(fields) = claim.as_object_mut() else {
                    return Err(HttpError::new(400, "claim must be a JSON object"));
                };
                fields.insert("jobId".into(), Value::String(job_id.clone()));
                let text = serde_json::json!({"type": "offer", "claim": claim}).to_string();
                self.send_probe(worker_id, job_id, text)
            }
        }
    }

    /// Sends a probe offer's `text` for `job_id` to the worker's open sockets (see
    /// [`Fault::ProbeOffer`]).
    fn send_probe(
        &mut self,
        worker_id: String,
        job_id: String,
        text: String,
    ) -> Result<usize, HttpError> {
        if !safe_name(&job_id) {
            return Err(HttpError::new(
                400,
                "jobId must be 1-128 ASCII letters, digits, `-`, `_` or `.`",
            ));
        }
        if self.studio.job(&job_id).is_some() {
            return Err(HttpError::new(
                409,
                format!("job {job_id} is a real job; a probe needs an id the studio does not know"),
            ));
        }
        if let Some(other) = self.probes.get(&job_id) {
            if *other != worker_id {
                return Err(HttpError::new(
                    409,
                    format!("job {job_id} was already probed on worker {other}"),
                ));
            }
        }
        let conns = self.worker_conns(&worker_id, false);
        if conns.is_empty() {
            return Err(no_socket(&worker_id));
        }
        warn!(target: "studio_local::faults", worker_id, job_id, "sending a probe offer");
        self.probes.insert(job_id, worker_id);
        for id in &conns {
            self.ws_send(*id, text.clone());
        }
        Ok(conns.len())
    }

    /// The `dropResults` fault: whether this worker frame is a result to drop (never fed,
    /// never acknowledged, as if lost on the way). Counts it down.
    pub(super) fn drop_result_frame(&mut self, worker_id: &str, text: &str) -> bool {
        if self.faults.drop_results == 0 {
            return false;
        }
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            return false;
        };
        if !matches!(v["type"].as_str(), Some("completeJson" | "fail")) {
            return false;
        }
        self.faults.drop_results -= 1;
        warn!(target: "studio_local::faults", worker_id, job_id = v["jobId"].as_str(), "result frame dropped");
        true
    }

    /// The `holdUploads` fault: whether to hold this upload (never answered). Counts it
    /// down and counts it held.
    pub(super) fn hold_upload(&mut self, worker_id: &str, job_id: &str) -> bool {
        if self.faults.hold_uploads == 0 {
            return false;
        }
        self.faults.hold_uploads -= 1;
        self.faults.uploads_held += 1;
        warn!(target: "studio_local::faults", worker_id, job_id, "upload held (never answered)");
        true
    }

    /// A frame of a probe job ([`Fault::ProbeOffer`]) from its worker: recorded (and
    /// acknowledged like a studio would), never fed to the machine. `true` when taken.
    pub(super) fn intercept_probe_reply(
        &mut self,
        conn: ConnId,
        worker_id: &str,
        text: &str,
    ) -> bool {
        if self.probes.is_empty() {
            return false;
        }
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            return false;
        };
        let (Some(ty), Some(job_id)) = (v["type"].as_str(), v["jobId"].as_str()) else {
            return false;
        };
        if !PROBE_REPLY_TYPES.contains(&ty)
            || self.probes.get(job_id).map(String::as_str) != Some(worker_id)
        {
            return false;
        }
        info!(target: "studio_local::faults", worker_id, job_id, ty, "probe reply intercepted");
        let ack = match ty {
            "completeJson" => Some(StudioFrame::CompleteAck {
                job_id: job_id.to_string(),
            }),
            "fail" => Some(StudioFrame::FailAck {
                job_id: job_id.to_string(),
            }),
            _ => None,
        };
        self.record_probe_reply(worker_id, text.to_string());
        if let Some(ack) = ack {
            self.ws_send(conn, wire::encode(&ack));
        }
        true
    }

    pub(super) fn record_probe_reply(&mut self, worker_id: &str, text: String) {
        let replies = self.probe_replies.entry(worker_id.to_string()).or_default();
        if replies.len() >= MAX_PROBE_REPLIES {
            replies.remove(0);
        }
        replies.push(text);
    }

    /// The intercepted replies to probe offers sent to `worker_id`, oldest first.
    pub(crate) fn probe_replies(&self, worker_id: &str) -> Vec<String> {
        self.probe_replies
            .get(worker_id)
            .cloned()
            .unwrap_or_default()
    }
}

fn no_socket(worker_id: &str) -> HttpError {
    HttpError::new(
        404,
        format!("worker {worker_id} has no open WebSocket here"),
    )
}

/// Close codes an endpoint may put on the wire (RFC 6455 §7.4).
fn sendable_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}
