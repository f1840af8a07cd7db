//! The local control API's requests: the checks every request passes (Host and Origin,
//! body size, token) and the routes. [`handle`] is the whole decision, independent of the
//! connection handling ([`super::server`]).

use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use studio_core::Secret;

use super::views::{self, Live, METRICS_CONTENT_TYPE};
use super::{LOOP_TIMEOUT, MAX_BODY_BYTES};
use crate::control::{Change, Control, ControlError};

/// What the routes need: the token, the daemon, the config path it reports.
pub struct Ctx {
    pub token: Secret,
    pub control: Control,
    pub config_path: String,
}

/// The parts of a request the API looks at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    /// Path and query, as sent (`/daemon/logs?after=3`).
    pub url: String,
    /// Every `Host` header's value (HTTP/1.1 requires exactly one).
    pub host: Vec<String>,
    /// Every `Origin` header's value.
    pub origin: Vec<String>,
    /// The `Authorization` header's value.
    pub authorization: Option<String>,
    /// The declared body length (`Content-Length`), when there is one.
    pub body_len: Option<usize>,
}

/// An answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Extra headers (`WWW-Authenticate`, `Allow`).
    pub headers: Vec<(&'static str, String)>,
}

const JSON: &str = "application/json";

impl Reply {
    fn json(status: u16, value: &Value) -> Reply {
        Reply {
            status,
            content_type: JSON,
            body: value.to_string().into_bytes(),
            headers: Vec::new(),
        }
    }

    /// `{"error": message}` with `status`.
    pub fn error(status: u16, message: impl Into<String>) -> Reply {
        Reply::json(status, &json!({ "error": message.into() }))
    }

    fn unavailable(e: &ControlError) -> Reply {
        match e {
            ControlError::Refused(why) => Reply::error(500, why.clone()),
            other => Reply::error(503, other.to_string()),
        }
    }
}

/// `host` (a `Host` header: a name or address, maybe with a port) is loopback:
/// `localhost`, `127.0.0.0/8` or `[::1]`.
pub fn is_loopback_authority(host: &str) -> bool {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        match rest.split_once(']') {
            Some((addr, port)) if port.is_empty() || valid_port(port) => addr,
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if valid_port(port) => name,
            Some(_) => return false,
            None => host,
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty() && studio_engines::models::is_loopback_host(name)
}

fn valid_port(s: &str) -> bool {
    s.strip_prefix(':')
        .unwrap_or(s)
        .parse::<u16>()
        .is_ok_and(|_| !s.is_empty())
}

/// An `Origin` header whose host is loopback (`http://localhost:8080`); `null` and
/// anything else are not.
pub fn is_loopback_origin(origin: &str) -> bool {
    match origin.trim().split_once("://") {
        Some((scheme, rest)) if !scheme.is_empty() && !rest.contains('/') => {
            is_loopback_authority(rest)
        }
        _ => false,
    }
}

fn authorized(head: &Head, token: &Secret) -> bool {
    let Some(value) = head.authorization.as_deref() else {
        return false;
    };
    let Some((scheme, given)) = value.trim().split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer")
        && !token.is_empty()
        && studio_core::secret::ct_eq(given.trim(), token.expose())
}

/// The routes and the methods each takes.
const ROUTES: [(&str, &[&str]); 11] = [
    ("/healthz", &["GET"]),
    ("/daemon/status", &["GET"]),
    ("/daemon/pause", &["POST"]),
    ("/daemon/resume", &["POST"]),
    ("/daemon/enable", &["POST"]),
    ("/daemon/disable", &["POST"]),
    ("/daemon/shutdown", &["POST"]),
    ("/daemon/check-update", &["POST"]),
    ("/daemon/logs", &["GET"]),
    ("/daemon/config", &["GET", "PATCH"]),
    ("/metrics", &["GET"]),
];

/// Answers one request (`body`: its body, at most [`MAX_BODY_BYTES`]).
///
/// A page served from a loopback origin (a desktop window's web view) may call the API:
/// its CORS preflight (`OPTIONS`) is answered, and every answer to it names its origin in
/// `Access-Control-Allow-Origin`. Any other origin never gets past the checks.
pub fn handle(head: &Head, body: &[u8], ctx: &Ctx) -> Reply {
    // Web pages must not reach the API, whatever the route (DNS rebinding included).
    if head.host.len() != 1 || !is_loopback_authority(&head.host[0]) {
        return Reply::error(403, "the Host must be a loopback name or address");
    }
    if head.origin.len() > 1 || head.origin.iter().any(|o| !is_loopback_origin(o)) {
        return Reply::error(403, "requests from web pages are refused");
    }
    let mut reply = if head.method == "OPTIONS" {
        Reply {
            status: 204,
            content_type: JSON,
            body: Vec::new(),
            headers: vec![
                ("Access-Control-Allow-Methods", "GET, POST, PATCH".into()),
                (
                    "Access-Control-Allow-Headers",
                    "Authorization, Content-Type".into(),
                ),
                ("Access-Control-Max-Age", "600".into()),
            ],
        }
    } else {
        route(head, body, ctx)
    };
    if let Some(origin) = head.origin.first() {
        reply
            .headers
            .push(("Access-Control-Allow-Origin", origin.trim().to_string()));
        reply.headers.push(("Vary", "Origin".into()));
    }
    reply
}

/// The token and size checks, then the route.
fn route(head: &Head, body: &[u8], ctx: &Ctx) -> Reply {
    if head.body_len.is_some_and(|n| n > MAX_BODY_BYTES) || body.len() > MAX_BODY_BYTES {
        return Reply::error(413, format!("the body is over {MAX_BODY_BYTES} bytes"));
    }
    let (path, query) = head.url.split_once('?').unwrap_or((&head.url, ""));
    if path != "/healthz" && !authorized(head, &ctx.token) {
        let mut r = Reply::error(
            401,
            "a valid `Authorization: Bearer <token>` is required (see local-api.json)",
        );
        r.headers.push(("WWW-Authenticate", "Bearer".into()));
        return r;
    }
    let Some((_, methods)) = ROUTES.iter().find(|(p, _)| *p == path) else {
        return Reply::error(404, format!("no route {path}"));
    };
    if !methods.contains(&head.method.as_str()) {
        let mut r = Reply::error(405, format!("{path} takes {}", methods.join(", ")));
        r.headers.push(("Allow", methods.join(", ")));
        return r;
    }
    let live = || ctx.control.query(Live::of, LOOP_TIMEOUT);
    match (head.method.as_str(), path) {
        ("GET", "/healthz") => match live() {
            Ok(live) => Reply::json(200, &views::health(&live)),
            Err(e) => Reply::json(503, &json!({"ok": false, "error": e.to_string()})),
        },
        ("GET", "/daemon/status") => match live() {
            Ok(live) => Reply::json(200, &views::status(&live, &ctx.config_path)),
            Err(e) => Reply::unavailable(&e),
        },
        ("POST", "/daemon/pause") => change(ctx, Change::Pause),
        ("POST", "/daemon/resume") => change(ctx, Change::Resume),
        ("POST", "/daemon/enable") => change(ctx, Change::Enabled(true)),
        ("POST", "/daemon/disable") => change(ctx, Change::Enabled(false)),
        ("POST", "/daemon/shutdown") => {
            ctx.control.shutdown();
            Reply::json(202, &json!({"stopping": true}))
        }
        ("POST", "/daemon/check-update") => check_update(ctx),
        ("GET", "/daemon/logs") => logs(ctx, query),
        ("GET", "/daemon/config") => match live() {
            Ok(live) => Reply::json(200, &views::settings(&live.status)),
            Err(e) => Reply::unavailable(&e),
        },
        ("PATCH", "/daemon/config") => patch_config(ctx, body),
        ("GET", "/metrics") => match live() {
            Ok(live) => Reply {
                status: 200,
                content_type: METRICS_CONTENT_TYPE,
                body: views::metrics(&live, studio_engines::models::downloaded_bytes_total())
                    .into_bytes(),
                headers: Vec::new(),
            },
            Err(e) => Reply::unavailable(&e),
        },
        _ => Reply::error(405, format!("{path} takes {}", methods.join(", "))),
    }
}

/// Applies a change, then answers with the state it is about.
fn change(ctx: &Ctx, change: Change) -> Reply {
    if let Err(e) = ctx.control.change(change, LOOP_TIMEOUT) {
        return Reply::unavailable(&e);
    }
    let read = ctx.control.query(Live::of, LOOP_TIMEOUT);
    match (change, read) {
        (Change::Pause | Change::Resume, Ok(live)) => {
            Reply::json(200, &json!({"paused": live.status.paused}))
        }
        (Change::Enabled(_), Ok(live)) => {
            Reply::json(200, &json!({"enabled": live.status.enabled}))
        }
        (Change::Threshold(_), Ok(live)) => Reply::json(200, &views::settings(&live.status)),
        (Change::CheckUpdate, Ok(_)) => Reply::json(202, &json!({"checking": true})),
        (_, Err(e)) => Reply::unavailable(&e),
    }
}

/// How long `POST /daemon/check-update` waits for the feed's answer.
pub const CHECK_UPDATE_TIMEOUT: Duration = Duration::from_secs(90);

/// `POST /daemon/check-update`: asks the core for a check now and answers with what it
/// found once the core has it (200, the `lastUpdateCheck` object); 409 while an update
/// installs or the worker stops, 504 when no answer came in time.
fn check_update(ctx: &Ctx) -> Reply {
    let seq = |live: &Live| live.status.last_update_check.as_ref().map_or(0, |c| c.seq);
    let before = match ctx.control.query(Live::of, LOOP_TIMEOUT) {
        Ok(live) if live.status.updating.is_some() || live.status.stopping => {
            return Reply::error(
                409,
                "an update is being installed or the worker is stopping",
            )
        }
        Ok(live) => seq(&live),
        Err(e) => return Reply::unavailable(&e),
    };
    if let Err(e) = ctx.control.change(Change::CheckUpdate, LOOP_TIMEOUT) {
        return Reply::unavailable(&e);
    }
    let started = Instant::now();
    while started.elapsed() < CHECK_UPDATE_TIMEOUT {
        match ctx.control.query(Live::of, LOOP_TIMEOUT) {
            Ok(live) if seq(&live) > before => {
                let check = live.status.last_update_check.as_ref().expect("seq > 0");
                return Reply::json(200, &views::update_check(check));
            }
            Ok(_) => std::thread::sleep(CHECK_UPDATE_POLL),
            Err(e) => return Reply::unavailable(&e),
        }
    }
    Reply::error(504, "the update feed did not answer in time")
}

/// How often `POST /daemon/check-update` looks for the answer.
const CHECK_UPDATE_POLL: Duration = Duration::from_millis(50);

fn logs(ctx: &Ctx, query: &str) -> Reply {
    let mut after = 0;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key == "after" {
            match value.parse::<u64>() {
                Ok(n) => after = n,
                Err(_) => {
                    return Reply::error(400, format!("after={value:?} is not a sequence number"))
                }
            }
        }
    }
    let read = ctx.control.query(
        move |worker, _| views::logs(worker.logs_after(after), after, worker.log_seq()),
        LOOP_TIMEOUT,
    );
    match read {
        Ok(v) => Reply::json(200, &v),
        Err(e) => Reply::unavailable(&e),
    }
}

/// `PATCH /daemon/config`: a JSON object of live settings (`vramThresholdGb`,
/// `autoEnabled`), each saved and applied; anything else is refused before any applies.
fn patch_config(ctx: &Ctx, body: &[u8]) -> Reply {
    let object: Map<String, Value> = match serde_json::from_slice(body) {
        Ok(Value::Object(o)) => o,
        Ok(_) => return Reply::error(400, "the body must be a JSON object"),
        Err(e) => return Reply::error(400, format!("the body is not JSON: {e}")),
    };
    let mut changes = Vec::new();
    for (key, value) in &object {
        match (key.as_str(), value) {
            ("vramThresholdGb", Value::Number(n)) => match n.as_f64() {
                Some(gb) if gb.is_finite() && gb >= 0.0 && gb <= f64::from(f32::MAX) => {
                    changes.push(Change::Threshold(gb as f32))
                }
                _ => return Reply::error(400, "vramThresholdGb must be a number of GB >= 0"),
            },
            ("vramThresholdGb", _) => {
                return Reply::error(400, "vramThresholdGb must be a number of GB >= 0")
            }
            ("autoEnabled", Value::Bool(b)) => changes.push(Change::Enabled(*b)),
            ("autoEnabled", _) => return Reply::error(400, "autoEnabled must be true or false"),
            (other, _) => {
                return Reply::error(
                    400,
                    format!(
                        "`{other}` is not a setting a running worker applies \
                         (vramThresholdGb, autoEnabled); edit config.toml and restart for others"
                    ),
                )
            }
        }
    }
    for c in changes {
        if let Err(e) = ctx.control.change(c, LOOP_TIMEOUT) {
            return Reply::unavailable(&e);
        }
    }
    match ctx.control.query(Live::of, LOOP_TIMEOUT) {
        Ok(live) => Reply::json(200, &views::settings(&live.status)),
        Err(e) => Reply::unavailable(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_and_origins() {
        for ok in [
            "127.0.0.1",
            "127.0.0.1:4787",
            "localhost",
            "LOCALHOST:80",
            "localhost.",
            "[::1]",
            "[::1]:4787",
            "127.8.9.10:1",
        ] {
            assert!(is_loopback_authority(ok), "{ok}");
        }
        for bad in [
            "",
            "evil.example",
            "evil.example:4787",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "10.0.0.1:4787",
            "[::2]:1",
            "[::1]x",
            "localhost:port",
            "0.0.0.0",
            "::1",
        ] {
            assert!(!is_loopback_authority(bad), "{bad}");
        }
        for ok in [
            "http://localhost:3000",
            "http://127.0.0.1",
            "tauri://localhost",
        ] {
            assert!(is_loopback_origin(ok), "{ok}");
        }
        for bad in [
            "null",
            "http://evil.example",
            "https://localhost.evil.example",
            "localhost",
            "http://localhost/path",
            "http://127.0.0.1@evil.example",
        ] {
            assert!(!is_loopback_origin(bad), "{bad}");
        }
    }

    #[test]
    fn bearer_tokens_compare_exactly() {
        let token = Secret::from("tok-123");
        let head = |auth: &str| Head {
            authorization: Some(auth.into()),
            ..Head::default()
        };
        assert!(authorized(&head("Bearer tok-123"), &token));
        assert!(authorized(&head("bearer  tok-123 "), &token));
        for bad in [
            "Bearer tok-124",
            "Bearer tok-1234",
            "Basic tok-123",
            "tok-123",
            "Bearer ",
        ] {
            assert!(!authorized(&head(bad), &token), "{bad}");
        }
        assert!(!authorized(&Head::default(), &token));
        assert!(!authorized(&head("Bearer "), &Secret::from("")));
    }
}
