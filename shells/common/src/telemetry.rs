//! Crash and error reports to Sentry, opt-in: only when `SENTRY_DSN` is set for
//! `studio-worker run` (no DSN is compiled in; nothing is sent otherwise).
//!
//! * Release `studio-worker@<version>`, environment `SENTRY_ENVIRONMENT` (default
//!   `production`), server name = the machine's name.
//! * Panics are captured (sentry's panic integration), `tracing` errors become events and
//!   warnings breadcrumbs ([`layer`]); nothing else is recorded, and there is no performance
//!   tracing (no spans, no sampling of transactions).
//! * Events go out on sentry's transport thread through a ureq agent of ours (rustls, no
//!   reqwest, no tokio). [`Telemetry`] flushes them (at most [`FLUSH_TIMEOUT`]) when it is
//!   dropped, which `main` does on every exit path after `run`, fatal ones included.
//! * **No secret is ever sent**: every event and breadcrumb is scrubbed before it leaves
//!   ([`scrub`]): the values of the worker's secrets (auth token, registration secret, local
//!   API token; [`remember_secret`]) wherever they appear, secret-looking JSON keys inside
//!   text, `Bearer` credentials, and the values of secret-looking fields. An event that
//!   cannot be scrubbed is dropped.
//! * An invalid DSN is a warning; the worker then runs without telemetry.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sentry::protocol::{Breadcrumb, Event};
use sentry::{ClientOptions, Transport};
use serde_json::Value;

/// The environment variable holding the DSN.
pub const DSN_ENV: &str = "SENTRY_DSN";
/// The environment variable naming the environment.
pub const ENVIRONMENT_ENV: &str = "SENTRY_ENVIRONMENT";
/// The environment when [`ENVIRONMENT_ENV`] is unset.
pub const DEFAULT_ENVIRONMENT: &str = "production";
/// The longest the process waits for its events to be sent before it exits.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one envelope upload may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// What a scrubbed secret becomes.
pub const SCRUBBED: &str = "[redacted]";
/// Secrets shorter than this are not searched for in text (they would match too much).
const MIN_SECRET_LEN: usize = 6;

/// The secrets' values to scrub from every event.
static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Adds a secret's value to what [`scrub`] removes (the worker's tokens, as it learns them).
pub fn remember_secret(secret: &str) {
    if secret.len() < MIN_SECRET_LEN {
        return;
    }
    let mut secrets = SECRETS.lock().unwrap_or_else(|e| e.into_inner());
    if !secrets.iter().any(|s| s == secret) {
        secrets.push(secret.to_string());
    }
}

/// Sentry, while it is on. Dropping it flushes what is queued (at most
/// [`FLUSH_TIMEOUT`]) and turns it off.
pub struct Telemetry {
    _guard: sentry::ClientInitGuard,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Telemetry")
    }
}

/// Turns Sentry on when [`DSN_ENV`] is set. Returns it (or `None`), and a warning for the
/// log when the DSN was set but unusable (the worker runs without telemetry then).
pub fn init_from_env(server_name: &str) -> (Option<Telemetry>, Option<String>) {
    let dsn = match std::env::var(DSN_ENV) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => return (None, None),
    };
    let environment = std::env::var(ENVIRONMENT_ENV)
        .ok()
        .filter(|e| !e.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_ENVIRONMENT.to_string());
    match init(dsn.trim(), &environment, server_name) {
        Ok(t) => (Some(t), None),
        // The parser's message never quotes the DSN (which holds a key).
        Err(e) => (
            None,
            Some(format!(
                "{DSN_ENV} is not a valid Sentry DSN ({e}); running without telemetry"
            )),
        ),
    }
}

/// Sends what is queued (waiting at most the flush timeout), for a process about to be
/// replaced by `exec` (no destructor runs then). A no-op while Sentry is off.
pub fn flush() {
    if let Some(client) = sentry::Hub::current().client() {
        client.flush(Some(FLUSH_TIMEOUT));
    }
}

/// Turns Sentry on with `dsn`.
pub fn init(dsn: &str, environment: &str, server_name: &str) -> Result<Telemetry, String> {
    let dsn: sentry::types::Dsn = dsn.parse().map_err(|e| format!("{e}"))?;
    let mut options = ClientOptions::default();
    options.dsn = Some(dsn);
    options.release = Some(format!("studio-worker@{}", env!("CARGO_PKG_VERSION")).into());
    options.environment = Some(environment.to_string().into());
    options.server_name = Some(server_name.to_string().into());
    options.send_default_pii = false;
    options.shutdown_timeout = FLUSH_TIMEOUT;
    options.before_send = Some(Arc::new(scrub_event));
    options.before_breadcrumb = Some(Arc::new(scrub_breadcrumb));
    options.transport = Some(Arc::new(transport));
    Ok(Telemetry {
        _guard: sentry::init(options),
    })
}

/// Sentry's ureq transport on an agent of ours (rustls and its roots, bounded time).
fn transport(options: &ClientOptions) -> Arc<dyn Transport> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(SEND_TIMEOUT))
        .http_status_as_error(false)
        .build()
        .into();
    match sentry::TransportOptions::try_from_client_options(options) {
        Some(general) => Arc::new(
            sentry::transports::UreqHttpTransportOptions::from(general)
                .with_agent(agent)
                .build(),
        ),
        None => Arc::new(Nothing),
    }
}

/// A transport that sends nothing (no DSN; never the case once initialised).
struct Nothing;

impl Transport for Nothing {
    fn send_envelope(&self, _envelope: sentry::Envelope) {}
}

/// The `tracing` layers that feed Sentry: errors become events, warnings breadcrumbs,
/// nothing else is recorded (no span layer: no performance tracing). A no-op while Sentry
/// is off.
pub fn layer<S>() -> impl tracing_subscriber::Layer<S> + Send + Sync
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use sentry::integrations::tracing::{BreadcrumbLayer, ErrorLayer};
    use tracing_subscriber::filter::{filter_fn, LevelFilter};
    use tracing_subscriber::Layer;
    ErrorLayer::new()
        .with_filter(LevelFilter::ERROR)
        .and_then(BreadcrumbLayer::new().with_filter(filter_fn(|metadata| {
            *metadata.level() == tracing::Level::WARN
        })))
}

fn scrub_event(event: Event<'static>) -> Option<Event<'static>> {
    scrub(&event)
}

fn scrub_breadcrumb(crumb: Breadcrumb) -> Option<Breadcrumb> {
    scrub(&crumb)
}

/// `item` with every secret removed (see the module docs), or `None` when it cannot be
/// rewritten (then it is not sent).
pub fn scrub<T: serde::Serialize + serde::de::DeserializeOwned>(item: &T) -> Option<T> {
    let mut value = serde_json::to_value(item).ok()?;
    let secrets = SECRETS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    scrub_value(&mut value, &secrets);
    serde_json::from_value(value).ok()
}

fn looks_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "token",
        "secret",
        "password",
        "passwd",
        "authorization",
        "cookie",
    ]
    .iter()
    .any(|w| k.contains(w))
}

fn scrub_value(value: &mut Value, secrets: &[String]) {
    match value {
        Value::String(s) => *s = scrub_text(s, secrets),
        Value::Array(items) => items.iter_mut().for_each(|v| scrub_value(v, secrets)),
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                match v {
                    Value::String(s) if looks_secret(key) && !s.is_empty() => {
                        *s = SCRUBBED.to_string()
                    }
                    _ => scrub_value(v, secrets),
                }
            }
        }
        _ => {}
    }
}

/// `text` without the remembered secrets, secret JSON values and `Bearer` credentials.
pub fn scrub_text(text: &str, secrets: &[String]) -> String {
    let mut out = studio_core::secret::redact_json(text);
    for secret in secrets {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), SCRUBBED);
        }
    }
    mask_bearer(&out)
}

/// Every `Bearer <credential>` with the credential replaced.
fn mask_bearer(text: &str) -> String {
    const WORD: &str = "bearer ";
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    while let Some(found) = lower[at..].find(WORD) {
        let start = at + found + WORD.len();
        out.push_str(&text[at..start]);
        let end = text[start..]
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'')
            .map_or(text.len(), |n| start + n);
        if end > start {
            out.push_str(SCRUBBED);
        }
        at = end;
    }
    out.push_str(&text[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_loses_every_kind_of_secret() {
        let secrets = vec!["tok-0123456789".to_string(), "lat-abcdef0123".to_string()];
        let text = r#"studio error: duplicate worker with tok-0123456789; body {"authToken":"abc","x":1} Authorization: Bearer lat-abcdef0123 and bearer other-credential."#;
        let out = scrub_text(text, &secrets);
        for gone in [
            "tok-0123456789",
            "lat-abcdef0123",
            "other-credential",
            "\"abc\"",
        ] {
            assert!(!out.contains(gone), "{gone} left in {out}");
        }
        assert!(
            out.contains("studio error: duplicate worker with [redacted]"),
            "{out}"
        );
        assert!(out.contains(r#""x":1"#), "{out}");
        assert_eq!(
            scrub_text("nothing to hide é", &secrets),
            "nothing to hide é"
        );
        assert_eq!(mask_bearer("Bearer"), "Bearer");
    }

    #[test]
    fn events_and_breadcrumbs_are_scrubbed_everywhere() {
        remember_secret("tok-remembered-42");
        remember_secret("short"); // too short to search for: ignored
        let mut event = Event {
            message: Some("exiting: the token tok-remembered-42 was refused".into()),
            ..Event::default()
        };
        event
            .extra
            .insert("auth_token".into(), Value::String("anything".into()));
        event.extra.insert(
            "nested".into(),
            serde_json::json!({"list": ["tok-remembered-42"], "n": 3}),
        );
        let out = scrub(&event).expect("scrubbed");
        let text = serde_json::to_string(&out).unwrap();
        assert!(!text.contains("tok-remembered-42"), "{text}");
        assert!(!text.contains("anything"), "{text}");
        assert!(text.contains("was refused"), "{text}");
        assert_eq!(out.extra["nested"]["n"], 3);
        assert_eq!(out.event_id, event.event_id, "the rest is kept");

        let crumb = Breadcrumb {
            message: Some("retrying with Bearer tok-remembered-42".into()),
            ..Breadcrumb::default()
        };
        let out = scrub(&crumb).unwrap();
        assert_eq!(
            out.message.as_deref(),
            Some("retrying with Bearer [redacted]")
        );
    }

    #[test]
    fn an_invalid_dsn_is_a_warning_not_an_error() {
        let e = init("not a dsn", "test", "host").unwrap_err();
        assert!(!e.is_empty());
    }
}
