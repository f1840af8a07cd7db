//! A task's input files named by URL (`inputUrl` of `audio_stt`; `initImageUrl`, `maskUrl`,
//! `refImageUrl` of `image` and `video`): fetched into memory under the model downloads'
//! URL rule.
//!
//! * `https://` anywhere, plain `http://` only to a loopback host (tests and local tools);
//!   redirects followed only over https (at most [`MAX_REDIRECTS`]), none from loopback http.
//! * At most `max_bytes`, checked against `Content-Length` first, then while reading.
//! * The whole download within [`FETCH_TIMEOUT`].
//! * Messages show the URL without its query (signed URLs carry credentials there).
//!
//! Errors: a bad URL, a 4xx status or an oversized body are `InvalidInput` (not retryable:
//! the same offer fails the same way); transport trouble, 408, 429 and 5xx are `Io`
//! (retryable).

use std::time::Duration;

use crate::error::EngineError;
use crate::models::{check_url_for, redact};

/// Timeout of the whole input download.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(300);

/// Redirects followed for an https input URL.
pub const MAX_REDIRECTS: u32 = 5;

/// Checks that `url` (the task field `what`, named in messages) may be fetched
/// ([`check_url_for`]). Returns whether it is https.
pub fn check(what: &str, url: &str) -> Result<bool, EngineError> {
    Ok(check_url_for(what, url)?.scheme_str() == Some("https"))
}

/// Downloads `url` (the task field `what`) into memory, at most `max_bytes` (see the module
/// docs for the rules and the errors).
pub fn fetch(what: &str, url: &str, max_bytes: u64) -> Result<Vec<u8>, EngineError> {
    let https = check(what, url)?;
    let shown = redact(url);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(FETCH_TIMEOUT))
        .http_status_as_error(false)
        // Over https, redirects may not leave https; a loopback http URL is not redirected.
        .https_only(https)
        .max_redirects(if https { MAX_REDIRECTS } else { 0 })
        .build()
        .into();
    let mut response = agent
        .get(url)
        .call()
        .map_err(|e| EngineError::io(format!("fetching {what} `{shown}` failed: {e}")))?;
    let status = response.status().as_u16();
    if !(200..300).contains(&status) {
        let message = format!("fetching {what} `{shown}` failed: HTTP {status}");
        return Err(
            if (500..600).contains(&status) || status == 429 || status == 408 {
                EngineError::io(message)
            } else {
                EngineError::invalid_input(message)
            },
        );
    }
    if let Some(len) = response.body().content_length() {
        if len > max_bytes {
            return Err(too_large(what, shown, Some(len), max_bytes));
        }
    }
    response
        .body_mut()
        .with_config()
        .limit(max_bytes)
        .read_to_vec()
        .map_err(|e| match e {
            ureq::Error::BodyExceedsLimit(_) => too_large(what, shown, None, max_bytes),
            e => EngineError::io(format!("reading {what} `{shown}` failed: {e}")),
        })
}

fn too_large(what: &str, url: &str, announced: Option<u64>, max: u64) -> EngineError {
    let size = match announced {
        Some(len) => format!("{len} bytes"),
        None => format!("more than {max} bytes"),
    };
    EngineError::invalid_input(format!(
        "{what} `{url}` is too large: {size}; at most {max} bytes are accepted"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_task_field_and_hide_the_query() {
        let e = check("maskUrl", "http://example.com/m.png?sig=secret").unwrap_err();
        assert!(e.message.starts_with("maskUrl `"), "{e}");
        assert!(!e.message.contains("secret"), "{e}");
        assert!(check("initImageUrl", "https://example.com/i.png").unwrap());
        assert!(!check("initImageUrl", "http://127.0.0.1:1/i.png").unwrap());
    }
}
