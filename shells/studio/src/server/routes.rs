//! The router: a request's path and method to its route (the worker-facing routes under
//! `/graphics/api/workers`, the admin API under `/local`), and what the routes share: JSON
//! bodies in and out, the error answers, the route index.

use serde_json::{json, Value};
use studio_core::studio::HttpError;

use super::state::Outcome;
use super::{ConnId, Server};
use crate::admin_auth::{check_admin, AdminPolicy};
use crate::http::{self, HttpFault, RequestHead, Response};

impl Server {
    /// What a request head must pass before its body is read, by route: the `/local` admin
    /// checks ([`check_admin`]); and the largest body it may have (a result upload
    /// `max_body_bytes`, anything else `max_json_body_bytes`).
    pub(super) fn admit(&self, head: &RequestHead) -> Result<usize, HttpFault> {
        let segs = http::path_segments(&head.path)?;
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        if let ["local", ..] = segs.as_slice() {
            check_admin(
                head,
                &AdminPolicy {
                    token: self.settings.admin_token.as_deref(),
                    bind: self.settings.bind,
                },
            )?;
        }
        Ok(match segs.as_slice() {
            ["graphics", "api", "workers", _, "jobs", _, "complete"] => {
                self.settings.max_body_bytes
            }
            _ => self.settings.max_json_body_bytes,
        })
    }

    pub(super) fn route(&mut self, id: ConnId, head: &RequestHead, body: &[u8]) -> Outcome {
        let segs = match http::path_segments(&head.path) {
            Ok(s) => s,
            Err(f) => return Outcome::Respond(Response::error(f.status, &f.message)),
        };
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        let method = if head.method == "HEAD" {
            "GET"
        } else {
            head.method.as_str()
        };
        let respond = Outcome::Respond;
        match segs.as_slice() {
            ["graphics", "api", "workers", rest @ ..] => match (method, rest) {
                ("POST", ["register-request"]) => respond(self.route_register(body)),
                ("GET", ["register-requests", rid]) => {
                    respond(self.route_register_status(head, rid))
                }
                ("GET", [wid, "connect"]) => self.route_upgrade(head, wid),
                ("POST", [wid, "jobs", jid, "complete"]) => {
                    if self.hold_upload(wid, jid) {
                        Outcome::Hold
                    } else {
                        respond(self.route_complete(id, head, body, wid, jid))
                    }
                }
                (_, ["register-request"]) => respond(method_not_allowed("POST")),
                (_, ["register-requests", _]) | (_, [_, "connect"]) => {
                    respond(method_not_allowed("GET"))
                }
                (_, [_, "jobs", _, "complete"]) => respond(method_not_allowed("POST")),
                _ => respond(not_found(&head.path)),
            },
            ["local", rest @ ..] => respond(self.route_local(method, rest, body, &head.path)),
            [] if method == "GET" => respond(Response::json(200, &index())),
            _ => respond(not_found(&head.path)),
        }
    }
}

pub(super) fn err_response(e: &HttpError) -> Response {
    Response::error(e.status, &e.message)
}

pub(super) fn parse_json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, HttpError> {
    let body = if body.iter().all(|b| b.is_ascii_whitespace()) {
        &b"{}"[..]
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| HttpError::new(400, format!("invalid JSON body: {e}")))
}

pub(super) fn to_json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

pub(super) fn method_not_allowed(allow: &str) -> Response {
    Response::error(405, &format!("method not allowed (allowed: {allow})"))
        .with_header("Allow", allow)
}

pub(super) fn not_found(path: &str) -> Response {
    Response::error(
        404,
        &format!("no route for {path}; GET /local lists the admin API"),
    )
}

/// `GET /` and `GET /local`: the routes, for discoverability.
pub(super) fn index() -> Value {
    json!({
        "server": "studio-local",
        "studio": [
            "POST /graphics/api/workers/register-request",
            "GET  /graphics/api/workers/register-requests/:requestId   (Bearer registration secret)",
            "GET  /graphics/api/workers/:workerId/connect               (WebSocket upgrade, Bearer auth token)",
            "POST /graphics/api/workers/:workerId/jobs/:jobId/complete  (multipart, Bearer auth token)"
        ],
        "admin": [
            "POST /local/jobs                       {kind, task?, prompt?, model?, modelSource?, vramGbEstimate?}",
            "GET  /local/jobs",
            "GET  /local/jobs/:id",
            "GET  /local/jobs/:id/result",
            "GET  /local/workers",
            "POST /local/workers                    {workerId, authToken}",
            "DELETE /local/workers/:id",
            "GET  /local/workers/:id/logs",
            "GET  /local/requests",
            "POST /local/requests/:id/approve",
            "POST /local/requests/:id/reject        {reason?}",
            "GET  /local/stats",
            "POST /local/shutdown"
        ],
        "faults": [
            "GET  /local/faults",
            "POST /local/faults                     {failUploads?, failUploadsStatus?, upgradeFailures?, upgradeStatus?, holdUploads?, dropResults?}",
            "POST /local/workers/:id/drop",
            "POST /local/workers/:id/stall",
            "POST /local/workers/:id/close          {code?, reason?}",
            "POST /local/workers/:id/error          {code, message?}",
            "POST /local/workers/:id/probe-offer    {jobId, task? | claim?}",
            "GET  /local/workers/:id/probe-replies",
            "GET  /local/workers/:id/connections"
        ]
    })
}
