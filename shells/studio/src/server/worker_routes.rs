//! The worker-facing routes: the registration request and its status, the WebSocket
//! upgrade (counted per worker id, refusable by a fault), and the result upload (stored
//! through a temporary file, moved into place only when the machine accepted it).

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use serde_json::json;
use studio_core::studio::Upload;
use studio_core::wire::{self, AutoRegisterRequest};
use tracing::{debug, error, info, warn};

use super::routes::{err_response, parse_json_body, to_json};
use super::state::{Outcome, StoredFile};
use super::{safe_name, ConnId, Server};
use crate::api::ConnectionStats;
use crate::http::{self, RequestHead, Response};

/// Most worker ids whose [`ConnectionStats`] are kept (ids come from request paths; past
/// this, only the server-wide counter grows).
const MAX_TALLIES: usize = 4096;

impl Server {
    fn reference(&mut self) -> String {
        self.next_reference += 1;
        format!("studio-local-{}", self.next_reference)
    }

    pub(super) fn route_register(&mut self, body: &[u8]) -> Response {
        let req: AutoRegisterRequest = match parse_json_body(body) {
            Ok(r) => r,
            Err(e) => return err_response(&e),
        };
        match self.with_studio(|s, now| s.register_request(now, req)) {
            Ok(resp) => Response::json(200, &to_json(&resp)),
            Err(e) => err_response(&e),
        }
    }

    pub(super) fn route_register_status(&mut self, head: &RequestHead, rid: &str) -> Response {
        let Some(bearer) = head.bearer() else {
            return Response::error(401, "missing `Authorization: Bearer <registration secret>`");
        };
        let bearer = bearer.to_string();
        match self.with_studio(|s, now| s.register_status(now, rid, &bearer)) {
            Ok(status) => Response::json(200, &to_json(&status)),
            Err(e) => err_response(&e),
        }
    }

    /// The upgrade route, counted per worker id ([`ConnectionStats`]).
    pub(super) fn route_upgrade(&mut self, head: &RequestHead, worker_id: &str) -> Outcome {
        self.upgrade_attempts += 1;
        let outcome = self.answer_upgrade(head, worker_id);
        if let Some(t) = self.tally(worker_id) {
            t.upgrade_attempts += 1;
            if matches!(outcome, Outcome::Respond(_)) {
                t.upgrades_refused += 1;
            }
        }
        outcome
    }

    /// The [`ConnectionStats`] of `worker_id`, created while fewer than [`MAX_TALLIES`]
    /// ids are kept.
    pub(super) fn tally(&mut self, worker_id: &str) -> Option<&mut ConnectionStats> {
        if !self.tallies.contains_key(worker_id) {
            if self.tallies.len() >= MAX_TALLIES {
                return None;
            }
            self.tallies
                .insert(worker_id.to_string(), ConnectionStats::default());
        }
        self.tallies.get_mut(worker_id)
    }

    fn answer_upgrade(&mut self, head: &RequestHead, worker_id: &str) -> Outcome {
        if !head.header_has_token("upgrade", "websocket") {
            return Outcome::Respond(
                Response::error(
                    426,
                    "this route only accepts a WebSocket upgrade (Upgrade: websocket)",
                )
                .with_header("Upgrade", "websocket"),
            );
        }
        let reference = self.reference();
        if self.faults.upgrade_failures > 0 {
            self.faults.upgrade_failures -= 1;
            let status = self.faults.upgrade_status;
            warn!(target: "studio_local::faults", worker_id, status, "injected upgrade failure");
            return Outcome::Respond(Response::json(
                status,
                &json!({"error": "injected upgrade failure (studio-local fault)", "reference": reference}),
            ));
        }
        if !head.header_has_token("connection", "upgrade") {
            return Outcome::Respond(Response::error(
                400,
                "WebSocket upgrade without `Connection: Upgrade`",
            ));
        }
        if head.header("sec-websocket-version").map(str::trim) != Some("13") {
            return Outcome::Respond(
                Response::error(426, "only WebSocket version 13 is supported")
                    .with_header("Sec-WebSocket-Version", "13"),
            );
        }
        let Some(key) = head.header("sec-websocket-key").map(str::trim) else {
            return Outcome::Respond(Response::error(
                400,
                "WebSocket upgrade without Sec-WebSocket-Key",
            ));
        };
        if key.len() != 24 {
            return Outcome::Respond(Response::error(
                400,
                "Sec-WebSocket-Key is not 16 bytes of base64",
            ));
        }
        let Some(bearer) = head.bearer() else {
            warn!(target: "studio_local::http", worker_id, reference, "upgrade without a bearer token");
            return Outcome::Respond(Response::json(
                401,
                &json!({"error": "missing `Authorization: Bearer <auth token>`", "reference": reference}),
            ));
        };
        if let Err(e) = self.studio.authorize_upgrade(worker_id, bearer) {
            warn!(target: "studio_local::http", worker_id, reference, "upgrade refused: {}", e.message);
            return Outcome::Respond(Response::json(
                e.status,
                &json!({"error": e.message, "reference": reference}),
            ));
        }
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let wants_protocol = head
            .headers_named("sec-websocket-protocol")
            .flat_map(|v| v.split(','))
            .any(|p| p.trim() == wire::SUBPROTOCOL);
        let mut response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n"
        );
        if wants_protocol {
            response.push_str(&format!(
                "Sec-WebSocket-Protocol: {}\r\n",
                wire::SUBPROTOCOL
            ));
        }
        response.push_str("\r\n");
        Outcome::Upgrade {
            response: response.into_bytes(),
            worker_id: worker_id.to_string(),
        }
    }

    pub(super) fn route_complete(
        &mut self,
        id: ConnId,
        head: &RequestHead,
        body: &[u8],
        worker_id: &str,
        job_id: &str,
    ) -> Response {
        if self.faults.fail_uploads > 0 {
            self.faults.fail_uploads -= 1;
            let status = self.faults.fail_uploads_status;
            warn!(target: "studio_local::faults", worker_id, job_id, status, "injected upload failure");
            return Response::error(status, "injected upload failure (studio-local fault)");
        }
        let Some(bearer) = head.bearer().map(str::to_string) else {
            return Response::error(401, "missing `Authorization: Bearer <auth token>`");
        };
        if let Err(e) = self.studio.authorize_upgrade(worker_id, &bearer) {
            return err_response(&e);
        }
        let Some(ct) = head.header("content-type") else {
            return Response::error(415, "expected Content-Type multipart/form-data");
        };
        let boundary = match http::multipart_boundary(ct) {
            Ok(b) => b,
            Err(m) => return Response::error(400, &m),
        };
        let parts = match http::parse_multipart(body, &boundary) {
            Ok(p) => p,
            Err(m) => return Response::error(400, &format!("malformed multipart body: {m}")),
        };
        let mut prompt = None;
        let mut ext = None;
        let mut image = None;
        for p in &parts {
            let slot = match p.name.as_str() {
                "prompt" => &mut prompt,
                "ext" => &mut ext,
                "image" => &mut image,
                _ => continue,
            };
            if slot.is_some() {
                return Response::error(400, &format!("duplicate multipart part `{}`", p.name));
            }
            *slot = Some(p);
        }
        let (Some(prompt), Some(ext), Some(image)) = (prompt, ext, image) else {
            return Response::error(
                400,
                "the upload needs the multipart parts `prompt`, `ext` and `image`",
            );
        };
        let Ok(prompt) = std::str::from_utf8(prompt.data) else {
            return Response::error(400, "the `prompt` part is not UTF-8");
        };
        let ext = match std::str::from_utf8(ext.data) {
            Ok(e) if valid_ext(e.trim()) => e.trim().to_ascii_lowercase(),
            _ => {
                return Response::error(400, "the `ext` part must be 1-16 ASCII letters or digits")
            }
        };
        if image.filename.is_none() {
            debug!(target: "studio_local::http", job_id, "image part without a filename");
        }
        if self.probes.get(job_id).map(String::as_str) == Some(worker_id) {
            let record = json!({
                "type": "upload",
                "jobId": job_id,
                "ext": ext,
                "bytes": image.data.len(),
                "prompt": prompt,
            });
            info!(target: "studio_local::faults", worker_id, job_id, "probe upload intercepted");
            self.record_probe_reply(worker_id, record.to_string());
            return Response::json(200, &json!({"ok": true}));
        }
        if !safe_name(job_id) {
            return Response::error(409, "unknown job");
        }
        let dir = self.settings.out_dir.clone();
        let final_path = dir.join(format!("{job_id}.{ext}"));
        let temp_path = dir.join(format!(".{job_id}.{ext}.part-{id}"));
        if let Err(e) = write_file(&temp_path, image.data) {
            error!(target: "studio_local", "cannot store the upload of {job_id}: {e}");
            let _ = fs::remove_file(&temp_path);
            return Response::error(500, &format!("could not store the upload: {e}"));
        }
        let len = image.data.len() as u64;
        // Not drained here: the machine's commands (typically the next offer to this
        // worker) go out after this answer is written, and the frames to this worker are
        // held for the upload nudge delay, like the reference studio, which nudges its
        // session object asynchronously after answering. A worker that gets the offer
        // before it has processed its upload's 200 still holds its one-job slot, rejects
        // it `busy`, and the machine then waits for its next heartbeat (5 s).
        let now = self.studio_now();
        let upload = Upload {
            worker_id,
            bearer: &bearer,
            job_id,
            prompt,
            ext: &ext,
            bytes_len: len,
        };
        let result = self.studio.complete_upload(now, upload);
        match result {
            Ok(()) => {
                self.hold_worker(worker_id);
                let ok = match fs::rename(&temp_path, &final_path) {
                    Ok(()) => true,
                    Err(e) => {
                        error!(target: "studio_local", "cannot move the upload of {job_id} into place: {e}");
                        let _ = fs::remove_file(&temp_path);
                        false
                    }
                };
                info!(target: "studio_local", job_id, worker_id, bytes = len, path = %final_path.display(), "result stored");
                self.uploads.insert(
                    job_id.to_string(),
                    StoredFile {
                        path: final_path,
                        ok,
                    },
                );
                Response::json(200, &json!({"ok": true}))
            }
            Err(e) => {
                let _ = fs::remove_file(&temp_path);
                err_response(&e)
            }
        }
    }
}

fn valid_ext(s: &str) -> bool {
    !s.is_empty() && s.len() <= 16 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn write_file(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = fs::File::create(path)?;
    f.write_all(data)?;
    f.sync_all()
}
