//! The CLI's side of the local control API: find the running worker of a config through
//! its `local-api.json`, and call it.
//!
//! A worker "answers" when the file exists, names a loopback URL, and the API there
//! accepts the file's token. Anything else (no file, a refused connection, a stale file
//! whose token another worker no longer takes) means no worker runs for that config.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::{info_path, LocalApiInfo};

/// How long the CLI waits for a running worker's answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A call that got no usable answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientError {
    /// No worker answers for this config.
    NotRunning,
    /// A worker answered with an error (the status and its message).
    Failed { status: u16, message: String },
}

/// The running worker of one config.
#[derive(Debug)]
pub struct Client {
    base: String,
    info: LocalApiInfo,
    agent: ureq::Agent,
}

impl Client {
    /// The worker of `config_path` as its `local-api.json` describes it (`None`: no file,
    /// an unreadable one, or one naming anything but a loopback `http://` URL). Whether
    /// it answers is only known by calling it.
    pub fn for_config(config_path: &Path) -> Option<Client> {
        let text = std::fs::read_to_string(info_path(config_path)).ok()?;
        let info: LocalApiInfo = serde_json::from_str(&text).ok()?;
        let rest = info.url.strip_prefix("http://")?;
        let authority = rest.split('/').next().unwrap_or_default();
        if !super::routes::is_loopback_authority(authority) || authority.is_empty() {
            return None;
        }
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(CLIENT_TIMEOUT))
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(None)
            .build()
            .into();
        Some(Client {
            base: info.url.trim_end_matches('/').to_string(),
            info,
            agent,
        })
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Result<Value, ClientError> {
        let call = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("Authorization", &self.bearer())
            .call();
        answer(call)
    }

    /// `POST path` without a body.
    pub fn post(&self, path: &str) -> Result<Value, ClientError> {
        let call = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Authorization", &self.bearer())
            .send_empty();
        answer(call)
    }

    /// `PATCH path` with a JSON body.
    pub fn patch(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        let call = self
            .agent
            .patch(format!("{}{path}", self.base))
            .header("Authorization", &self.bearer())
            .header("Content-Type", "application/json")
            .send(body.to_string().as_bytes());
        answer(call)
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.info.token.expose())
    }
}

fn answer(
    call: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<Value, ClientError> {
    let mut response = call.map_err(|_| ClientError::NotRunning)?;
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .with_config()
        .limit(super::MAX_BODY_BYTES as u64)
        .read_to_string()
        .unwrap_or_default();
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    match status {
        200..=299 => Ok(value),
        // A stale file: some other process on that port does not take this token.
        401 | 403 | 404 => Err(ClientError::NotRunning),
        _ => Err(ClientError::Failed {
            status,
            message: value["error"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| crate::http::single_line(&text)),
        }),
    }
}
