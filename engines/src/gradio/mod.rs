//! The Gradio engine (`gradio`): `image` jobs painted by a Gradio app the operator runs on
//! their own machine (a seed engine of the reference worker, which dropped it).
//!
//! # Routing: `modelSource.engine == "gradio"` (an extension)
//!
//! The protocol has no `modelSource.engine` value for a Gradio app (PROTOCOL.md §3.6), so
//! this engine serves `"gradio"` ([`SOURCE_ENGINE`], read by the wire codec as
//! `ModelEngine::Other("gradio")`), exactly as `whisper` and `candle-sd` are served: a
//! studio that wants the operator's app names it; the strict rule stands (a job naming
//! `sd-cpp` never reaches the app, and a `gradio` job never reaches another engine). The
//! model ids the operator lists (`supported_models_override`, [`GradioSettings::models`])
//! are what the engine advertises for `image` and the only models it serves; with no list
//! it advertises nothing and serves whatever model a `gradio` job names (the app paints
//! what it paints). `modelSource.files` are not used: the app has its own weights.
//!
//! # The two Gradio APIs ([`GradioApi`])
//!
//! * **Current** (`call`, the default; Gradio 4.x with `<app>/call/...` as the app URL,
//!   Gradio 5 and later at the app's root): `POST <app>/gradio_api/call/<api_name>` with
//!   `{"data": [prompt]}` answers `{"event_id": ...}`; then `GET
//!   <app>/gradio_api/call/<api_name>/<event_id>` streams server-sent events until
//!   `complete` (`data:` is the list of outputs) or `error` ([`sse`]).
//! * **Legacy** (`legacy`): `POST <app>/run/<api_name>` with `{"data": [prompt]}` answers
//!   `{"data": [outputs...]}` (Gradio 3 at the app's root; Gradio 5 and later still serve
//!   it at `<app>/gradio_api/run/<api_name>`, so such apps are configured with the app URL
//!   `<root>/gradio_api`).
//!
//! The first output is the image, in any shape a Gradio image output takes ([`output`]):
//! a `data:` URL, an absolute or relative file URL (fetched), or an object with `url` /
//! `path`. The bytes are delivered as they are, with the extension of what they really are
//! (`png`, `webp`, `jpg`, `gif`, ...), whatever `ext` the task asked for. Only the prompt
//! is sent: an app's function takes the prompt as its one input.
//!
//! # Errors and `retryable`
//!
//! | failure | retryable |
//! |---|---|
//! | the app is not answering (connection refused, reset, DNS) | yes |
//! | no result within [`GradioSettings::timeout`] (whole job) | yes |
//! | HTTP 5xx, 408, 429 | yes |
//! | HTTP 4xx (a wrong `gradio_api` or `gradio_api_name`, a file the app will not serve) | no |
//! | the app's error event (or legacy 500) with a message: `gr.Error`, the app refused this input | no |
//! | the app's error event without a message: an unexpected exception in the app | yes |
//! | the stream ended without a result | yes |
//! | an output that is not an image, a result over [`GradioSettings::max_result_bytes`] | no |

pub mod output;
pub mod sse;

use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use studio_core::wire::{ModelEngine, Task, TaskKind};
use ureq::http::Uri;

use crate::engine::{Engine, EngineOutput, JobRequest};
use crate::error::{EngineError, EngineErrorKind};
use crate::models::{is_loopback_host, USER_AGENT};
use output::{ImageRef, Origin};

/// The `modelSource.engine` value this engine serves.
pub const SOURCE_ENGINE: &str = "gradio";
/// The app's URL unless configured otherwise: Gradio's default port on loopback.
pub const DEFAULT_ENDPOINT_URL: &str = "http://127.0.0.1:7860/";
/// The API name of the app's function unless configured otherwise (the legacy
/// `/run/predict`).
pub const DEFAULT_API_NAME: &str = "predict";
/// How long one job may take, from the first request to the last byte of the image.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// How long connecting to the app may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer (result stream, legacy JSON, image file) read from the app.
pub const DEFAULT_MAX_RESULT_BYTES: u64 = 64 * 1024 * 1024;
/// The largest `event_id` answer read.
const MAX_SUBMIT_ANSWER_BYTES: u64 = 64 * 1024;
/// How much of an error body a message shows.
const ERROR_BODY_CHARS: usize = 300;
/// Redirects followed when fetching the image file.
const MAX_FILE_REDIRECTS: u32 = 5;

/// Which of Gradio's APIs the app is called through (config `gradio_api`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GradioApi {
    /// `POST /gradio_api/call/<api_name>`, then the result stream (`call`).
    #[default]
    Call,
    /// `POST /run/<api_name>` answering the outputs at once (`legacy`).
    Legacy,
}

impl GradioApi {
    /// `call` or `legacy`.
    pub fn as_str(self) -> &'static str {
        match self {
            GradioApi::Call => "call",
            GradioApi::Legacy => "legacy",
        }
    }

    /// The config value: `call` or `legacy`.
    pub fn parse(value: &str) -> Result<GradioApi, String> {
        match value {
            "call" => Ok(GradioApi::Call),
            "legacy" => Ok(GradioApi::Legacy),
            other => Err(format!("`{other}` is not one of `call`, `legacy`")),
        }
    }
}

/// The Gradio engine's settings (config keys `gradio_endpoint_url`, `gradio_api`,
/// `gradio_api_name`, `gradio_timeout_secs`, `supported_models_override`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GradioSettings {
    /// The app's URL ([`DEFAULT_ENDPOINT_URL`]): http or https, no query.
    pub endpoint_url: String,
    /// Which API ([`GradioApi::Call`]).
    pub api: GradioApi,
    /// The function's API name ([`DEFAULT_API_NAME`]).
    pub api_name: String,
    /// The model ids the app serves (advertised for `image`); empty: any, none advertised.
    pub models: Vec<String>,
    /// The whole job's time limit ([`DEFAULT_TIMEOUT`]).
    pub timeout: Duration,
    /// The largest answer read from the app ([`DEFAULT_MAX_RESULT_BYTES`]).
    pub max_result_bytes: u64,
}

impl Default for GradioSettings {
    fn default() -> GradioSettings {
        GradioSettings {
            endpoint_url: DEFAULT_ENDPOINT_URL.to_string(),
            api: GradioApi::default(),
            api_name: DEFAULT_API_NAME.to_string(),
            models: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
        }
    }
}

impl GradioSettings {
    /// Checks the values a config file can get wrong; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        app_url(&self.endpoint_url).map_err(|e| format!("gradio_endpoint_url: {e}"))?;
        check_api_name(&self.api_name).map_err(|e| format!("gradio_api_name: {e}"))?;
        if self.timeout.is_zero() {
            return Err("gradio_timeout_secs: must be at least 1".to_string());
        }
        Ok(())
    }
}

/// The app's URL parsed and ending in `/`.
fn app_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = format!("{}/", url.trim().trim_end_matches('/'))
        .parse()
        .map_err(|e| format!("`{url}` is not a URL ({e})"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!("`{url}` is not an http or https URL"));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{url}` names no host"));
    }
    if uri.query().is_some() {
        return Err(format!("`{url}` has a query; give the app's URL alone"));
    }
    Ok(uri)
}

/// An API name is one path segment: letters, digits, `_` and `-`.
fn check_api_name(name: &str) -> Result<(), String> {
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not an API name (letters, digits, `_` and `-`)"
        ))
    }
}

/// The Gradio engine. Holds no connection: every job makes its own requests.
#[derive(Clone, Debug)]
pub struct GradioEngine {
    settings: GradioSettings,
}

impl GradioEngine {
    /// An engine calling the app `settings` describe.
    pub fn new(settings: GradioSettings) -> GradioEngine {
        GradioEngine { settings }
    }

    /// The settings.
    pub fn settings(&self) -> &GradioSettings {
        &self.settings
    }

    /// Sends `prompt` to the app and returns the image's bytes and their extension.
    pub fn paint(&self, prompt: &str) -> Result<(Vec<u8>, String), EngineError> {
        let base = self
            .settings
            .validate()
            .and_then(|()| app_url(&self.settings.endpoint_url))
            .map_err(|e| {
                EngineError::new(
                    EngineErrorKind::EngineNotAvailable,
                    format!("the gradio engine is not set up: {e}"),
                )
            })?;
        let call = Call {
            settings: &self.settings,
            base: &base,
            deadline: Instant::now() + self.settings.timeout,
        };
        let (first_output, file_route) = match self.settings.api {
            GradioApi::Call => (call.current(prompt)?, "gradio_api/file="),
            GradioApi::Legacy => (call.legacy(prompt)?, "file="),
        };
        let origin = Origin {
            base: &base,
            file_route,
        };
        let bytes = match output::image_ref(&first_output, &origin)? {
            ImageRef::Inline(bytes) => bytes,
            ImageRef::Url(url) => call.fetch_file(&url)?,
        };
        if bytes.len() as u64 > self.settings.max_result_bytes {
            return Err(call.too_large("image"));
        }
        let ext = image_ext(&bytes)?;
        Ok((bytes, ext.to_string()))
    }
}

impl Engine for GradioEngine {
    fn name(&self) -> &'static str {
        "gradio"
    }

    fn serves(&self) -> Vec<ModelEngine> {
        vec![ModelEngine::Other(SOURCE_ENGINE.into())]
    }

    fn capabilities(&self) -> BTreeMap<TaskKind, Vec<String>> {
        if self.settings.models.is_empty() {
            return BTreeMap::new();
        }
        let mut models = self.settings.models.clone();
        models.sort();
        models.dedup();
        BTreeMap::from([(TaskKind::Image, models)])
    }

    fn dispatch(&self, job: &JobRequest) -> Result<EngineOutput, EngineError> {
        self.ensure_source(job)?;
        let Task::Image(task) = &job.task else {
            return Err(EngineError::unsupported_kind(self.name(), job.kind()));
        };
        if !self.settings.models.is_empty() && !self.settings.models.contains(&job.model) {
            return Err(EngineError::unsupported_model(
                self.name(),
                TaskKind::Image,
                &job.model,
            ));
        }
        let (bytes, ext) = self.paint(&task.prompt)?;
        Ok(EngineOutput::Binary { bytes, ext })
    }
}

/// One job's requests to the app, sharing one deadline.
struct Call<'a> {
    settings: &'a GradioSettings,
    base: &'a Uri,
    deadline: Instant,
}

impl Call<'_> {
    /// The current API: submit, then read the result stream to its `complete` event.
    fn current(&self, prompt: &str) -> Result<Value, EngineError> {
        let name = &self.settings.api_name;
        let submit = format!("{}gradio_api/call/{name}", self.base);
        let mut response = self.post(&submit, prompt)?;
        let answer = self.read_json(&mut response, MAX_SUBMIT_ANSWER_BYTES, "the submit answer")?;
        let event_id = answer
            .get("event_id")
            .and_then(Value::as_str)
            .filter(|id| check_api_name(id).is_ok())
            .ok_or_else(|| {
                EngineError::failed(
                    format!(
                        "the Gradio app answered the submit without an event_id: {}",
                        clip(&answer.to_string())
                    ),
                    true,
                )
            })?;
        let stream_url = format!("{submit}/{event_id}");
        let response = self.send(self.agent(0).get(&stream_url).call(), "the result stream")?;
        let response = self.check_status(response, "the result stream")?;
        let reader = response
            .into_body()
            .into_with_config()
            .limit(self.settings.max_result_bytes)
            .reader();
        let mut events = sse::Events::new(BufReader::new(reader));
        loop {
            let event = events
                .next_event()
                .map_err(|e| self.read_error(e, "the result stream"))?;
            let Some(event) = event else {
                return Err(EngineError::failed(
                    "the Gradio app ended its result stream without a result",
                    true,
                ));
            };
            match event.name.as_str() {
                "complete" => return first_output(&event.data),
                "error" => return Err(app_error(serde_json::from_str(&event.data).ok())),
                // heartbeat, generating (a generator's partial output), anything newer
                _ => {}
            }
        }
    }

    /// The legacy API: one POST answering the outputs.
    fn legacy(&self, prompt: &str) -> Result<Value, EngineError> {
        let url = format!("{}run/{}", self.base, self.settings.api_name);
        let mut response = self.post_raw(&url, prompt)?;
        let status = response.status().as_u16();
        if status == 500 {
            // Gradio answers an exception with 500 and `{"error": <message or null>}`.
            let body = read_limited(&mut response, MAX_SUBMIT_ANSWER_BYTES);
            if let Some(error) = body
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .and_then(|v| v.get("error").cloned())
            {
                return Err(app_error(Some(json!({ "error": error }))));
            }
            return Err(status_error(status, "", "the legacy predict call"));
        }
        let mut response = self.check_status(response, "the legacy predict call")?;
        let answer = self.read_json(
            &mut response,
            self.settings.max_result_bytes,
            "the legacy answer",
        )?;
        match answer.get("data") {
            Some(data) => first_output(&data.to_string()),
            None => Err(EngineError::failed(
                format!(
                    "the Gradio app's answer has no `data`: {}",
                    clip(&answer.to_string())
                ),
                false,
            )),
        }
    }

    /// GETs the image file, following redirects.
    fn fetch_file(&self, url: &str) -> Result<Vec<u8>, EngineError> {
        let response = self.send(
            self.agent(MAX_FILE_REDIRECTS).get(url).call(),
            "the image file",
        )?;
        let mut response = self.check_status(response, "the image file")?;
        read_limited(&mut response, self.settings.max_result_bytes).map_err(|e| match e {
            Limited::TooLarge => self.too_large("image"),
            Limited::Io(e) => self.read_error(e, "the image file"),
        })
    }

    /// POSTs `{"data": [prompt]}` and checks the status.
    fn post(
        &self,
        url: &str,
        prompt: &str,
    ) -> Result<ureq::http::Response<ureq::Body>, EngineError> {
        let response = self.post_raw(url, prompt)?;
        self.check_status(response, "the submit")
    }

    fn post_raw(
        &self,
        url: &str,
        prompt: &str,
    ) -> Result<ureq::http::Response<ureq::Body>, EngineError> {
        let body = json!({ "data": [prompt] }).to_string();
        self.send(
            self.agent(0)
                .post(url)
                .header("Content-Type", "application/json")
                .send(body.as_bytes()),
            "the submit",
        )
    }

    /// An agent for one request: the job's remaining time as its whole limit, statuses as
    /// responses, no proxy for a loopback app.
    fn agent(&self, redirects: u32) -> ureq::Agent {
        let remaining = self.remaining();
        let mut config = ureq::Agent::config_builder()
            .timeout_global(Some(remaining))
            .timeout_connect(Some(CONNECT_TIMEOUT.min(remaining)))
            .http_status_as_error(false)
            .max_redirects(redirects)
            .user_agent(USER_AGENT);
        if is_loopback_host(self.base.host().unwrap_or("")) {
            config = config.proxy(None);
        }
        config.build().into()
    }

    fn remaining(&self) -> Duration {
        self.deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    }

    fn send(
        &self,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
        what: &str,
    ) -> Result<ureq::http::Response<ureq::Body>, EngineError> {
        result.map_err(|e| match e {
            ureq::Error::Timeout(_) => self.timed_out(what),
            ureq::Error::Io(e) => self.read_error(e, what),
            e => self.not_answering(&e.to_string(), what),
        })
    }

    fn check_status(
        &self,
        mut response: ureq::http::Response<ureq::Body>,
        what: &str,
    ) -> Result<ureq::http::Response<ureq::Body>, EngineError> {
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(response);
        }
        let body = read_limited(&mut response, 8 * 1024)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        Err(status_error(status, &body, what))
    }

    fn read_json(
        &self,
        response: &mut ureq::http::Response<ureq::Body>,
        limit: u64,
        what: &str,
    ) -> Result<Value, EngineError> {
        let bytes = read_limited(response, limit).map_err(|e| match e {
            Limited::TooLarge => self.too_large(what),
            Limited::Io(e) => self.read_error(e, what),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| {
            EngineError::failed(
                format!(
                    "{what} of the Gradio app is not JSON ({e}): {}",
                    clip(&String::from_utf8_lossy(&bytes))
                ),
                true,
            )
        })
    }

    fn read_error(&self, e: std::io::Error, what: &str) -> EngineError {
        if e.kind() == std::io::ErrorKind::TimedOut {
            return self.timed_out(what);
        }
        if let Some(inner) = e.get_ref() {
            if let Some(ureq::Error::Timeout(_)) = inner.downcast_ref::<ureq::Error>() {
                return self.timed_out(what);
            }
            if let Some(ureq::Error::BodyExceedsLimit(_)) = inner.downcast_ref::<ureq::Error>() {
                return self.too_large(what);
            }
        }
        self.not_answering(&e.to_string(), what)
    }

    fn timed_out(&self, what: &str) -> EngineError {
        EngineError::failed(
            format!(
                "no result from the Gradio app at {} within {} s (waiting for {what}); \
                 gradio_timeout_secs sets the limit",
                self.base,
                self.settings.timeout.as_secs()
            ),
            true,
        )
    }

    fn not_answering(&self, why: &str, what: &str) -> EngineError {
        EngineError::failed(
            format!(
                "the Gradio app at {} is not answering ({what}: {why}); start it, or point \
                 gradio_endpoint_url at it",
                self.base
            ),
            true,
        )
    }

    fn too_large(&self, what: &str) -> EngineError {
        EngineError::failed(
            format!(
                "{what} of the Gradio app is larger than {} bytes",
                self.settings.max_result_bytes
            ),
            false,
        )
    }
}

enum Limited {
    TooLarge,
    Io(std::io::Error),
}

/// Reads a response body, at most `limit` bytes.
fn read_limited(
    response: &mut ureq::http::Response<ureq::Body>,
    limit: u64,
) -> Result<Vec<u8>, Limited> {
    let mut bytes = Vec::new();
    response
        .body_mut()
        .as_reader()
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(Limited::Io)?;
    if bytes.len() as u64 > limit {
        return Err(Limited::TooLarge);
    }
    Ok(bytes)
}

/// The first output of a `data` list (JSON text).
fn first_output(data: &str) -> Result<Value, EngineError> {
    match serde_json::from_str::<Value>(data) {
        Ok(Value::Array(mut outputs)) if !outputs.is_empty() => Ok(outputs.swap_remove(0)),
        Ok(other) => Err(EngineError::failed(
            format!(
                "the Gradio app returned no outputs: {}",
                clip(&other.to_string())
            ),
            false,
        )),
        Err(e) => Err(EngineError::failed(
            format!(
                "the Gradio app's outputs are not JSON ({e}): {}",
                clip(data)
            ),
            true,
        )),
    }
}

/// The app's error event (or legacy 500): a message means the app refused this input
/// (`gr.Error`, not retryable); none means an unexpected exception (retryable).
fn app_error(data: Option<Value>) -> EngineError {
    let message = match &data {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Object(map)) => map.get("error").and_then(Value::as_str).map(String::from),
        _ => None,
    };
    match message {
        Some(m) => EngineError::failed(
            format!("the Gradio app refused the job: {}", clip(&m)),
            false,
        ),
        None => EngineError::failed(
            "the Gradio app failed with an unexpected error (its log has the details)",
            true,
        ),
    }
}

/// An HTTP status that is not success.
fn status_error(status: u16, body: &str, what: &str) -> EngineError {
    let retryable = !(400..500).contains(&status) || status == 408 || status == 429;
    let hint = if retryable {
        ""
    } else {
        "; check gradio_api and gradio_api_name against the app"
    };
    let body = body.trim();
    let shown = if body.is_empty() {
        String::new()
    } else {
        format!(": {}", clip(body))
    };
    EngineError::failed(
        format!("the Gradio app answered HTTP {status} to {what}{shown}{hint}"),
        retryable,
    )
}

/// The extension of what `bytes` really are.
fn image_ext(bytes: &[u8]) -> Result<&'static str, EngineError> {
    use image::ImageFormat;
    let format = image::guess_format(bytes).map_err(|_| {
        EngineError::failed(
            format!(
                "the Gradio app's result is not an image (it starts with {:02x?})",
                &bytes[..bytes.len().min(8)]
            ),
            false,
        )
    })?;
    Ok(match format {
        ImageFormat::Png => "png",
        ImageFormat::WebP => "webp",
        ImageFormat::Jpeg => "jpg",
        ImageFormat::Gif => "gif",
        other => other.extensions_str().first().copied().unwrap_or("bin"),
    })
}

fn clip(text: &str) -> String {
    match text.char_indices().nth(ERROR_BODY_CHARS) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let s = GradioSettings::default();
        assert_eq!(s.endpoint_url, "http://127.0.0.1:7860/");
        assert_eq!(s.api, GradioApi::Call);
        assert_eq!(s.api_name, "predict");
        assert!(s.models.is_empty());
        assert_eq!(s.timeout, Duration::from_secs(600));
        assert_eq!(s.max_result_bytes, 64 << 20);
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn settings_are_validated() {
        let with = |f: fn(&mut GradioSettings)| {
            let mut s = GradioSettings::default();
            f(&mut s);
            s.validate()
        };
        assert!(with(|s| s.endpoint_url = "https://gpu-box.lan:8443/app".into()).is_ok());
        for (bad, key) in [
            (
                with(|s| s.endpoint_url = "ftp://127.0.0.1/".into()),
                "gradio_endpoint_url",
            ),
            (
                with(|s| s.endpoint_url = "127.0.0.1:7860".into()),
                "gradio_endpoint_url",
            ),
            (
                with(|s| s.endpoint_url = "http://h/?x=1".into()),
                "gradio_endpoint_url",
            ),
            (with(|s| s.api_name = "../x".into()), "gradio_api_name"),
            (with(|s| s.api_name = String::new()), "gradio_api_name"),
            (with(|s| s.timeout = Duration::ZERO), "gradio_timeout_secs"),
        ] {
            let e = bad.unwrap_err();
            assert!(e.starts_with(key), "{e}");
        }
        assert_eq!(GradioApi::parse("call"), Ok(GradioApi::Call));
        assert_eq!(GradioApi::parse("legacy"), Ok(GradioApi::Legacy));
        assert!(GradioApi::parse("rest").is_err());
        assert_eq!(GradioApi::Legacy.as_str(), "legacy");
    }

    #[test]
    fn app_errors_with_a_message_are_final_and_without_one_retryable() {
        let refused = app_error(Some(json!({"error": "nsfw prompt", "title": "Error"})));
        assert!(!refused.retryable());
        assert!(
            refused.message.contains("nsfw prompt"),
            "{}",
            refused.message
        );
        assert!(!app_error(Some(json!("404: Not Found"))).retryable());
        assert!(app_error(Some(json!({"error": null}))).retryable());
        assert!(app_error(None).retryable());
    }

    #[test]
    fn statuses_classify() {
        for (status, retryable) in [
            (404, false),
            (422, false),
            (408, true),
            (429, true),
            (500, true),
            (503, true),
        ] {
            assert_eq!(
                status_error(status, "x", "the submit").retryable(),
                retryable,
                "{status}"
            );
        }
        assert!(status_error(404, "", "the submit")
            .message
            .contains("gradio_api_name"));
    }

    #[test]
    fn outputs_lists_give_their_first_output() {
        assert_eq!(
            first_output(r#"[{"url": "u"}, 2]"#).unwrap(),
            json!({"url": "u"})
        );
        assert!(!first_output("[]").unwrap_err().retryable());
        assert!(first_output("not json").unwrap_err().retryable());
    }

    #[test]
    fn image_extensions_come_from_the_bytes() {
        assert_eq!(image_ext(b"\x89PNG\r\n\x1a\n....").unwrap(), "png");
        assert_eq!(image_ext(b"RIFF\0\0\0\0WEBPVP8L").unwrap(), "webp");
        assert_eq!(image_ext(b"\xff\xd8\xff\xe0\0\x10JFIF").unwrap(), "jpg");
        assert_eq!(image_ext(b"GIF89a....").unwrap(), "gif");
        let err = image_ext(b"<html>oops</html>").unwrap_err();
        assert!(!err.retryable());
        assert!(err.message.contains("not an image"), "{}", err.message);
    }
}
