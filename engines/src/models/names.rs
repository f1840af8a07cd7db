//! The names and URLs an offer gives for model files, checked before any request or
//! write: the model's directory name, plain file names, https-only URLs (plain http to
//! loopback only), and the expected hash's format.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use sha2::{Digest, Sha256};
use studio_core::wire::{hex, ModelFile};

use super::{
    LOCK_SUFFIX, MAX_FILE_NAME_LEN, MAX_MODEL_DIR_LEN, PART_SUFFIX, SIDECAR_SUFFIX,
    SIDECAR_TMP_SUFFIX,
};
use crate::error::EngineError;

/// The directory name of a model id: the id itself when it is made of ASCII letters,
/// digits, `.`, `_` and `-` only, does not start with `.` and is at most
/// [`MAX_MODEL_DIR_LEN`] long; otherwise every other character becomes `_` (a leading `.`
/// too), the result is cut to that length and `-` plus the first 12 hex digits of the id's
/// SHA-256 is appended, so two ids never share a directory (`org/model` →
/// `org_model-<hash>`). An empty id is refused.
pub fn model_dir_name(model_id: &str) -> Result<String, EngineError> {
    if model_id.is_empty() {
        return Err(EngineError::invalid_input("the model id is empty"));
    }
    let safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if model_id.len() <= MAX_MODEL_DIR_LEN
        && model_id.chars().all(safe)
        && !model_id.starts_with('.')
    {
        return Ok(model_id.to_string());
    }
    let mut name: String = model_id
        .chars()
        .map(|c| if safe(c) { c } else { '_' })
        .take(MAX_MODEL_DIR_LEN)
        .collect();
    if name.starts_with('.') {
        name.replace_range(0..1, "_");
    }
    let digest = hex(&Sha256::digest(model_id.as_bytes()));
    Ok(format!("{name}-{}", &digest[..12]))
}

/// Checks that `name` is a plain file name: not empty, not `.` or `..`, no `/` or `\`, no
/// drive prefix (`:`), no NUL or other control characters, at most [`MAX_FILE_NAME_LEN`]
/// bytes, and not ending in one of the store's own suffixes.
pub fn check_file_name(name: &str) -> Result<(), EngineError> {
    let bad = |why: &str| {
        Err(EngineError::invalid_input(format!(
            "modelSource file name `{}` is not a plain file name: {why}",
            name.escape_debug()
        )))
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name == "." || name == ".." {
        return bad("it names a directory");
    }
    if name.contains(['/', '\\']) {
        return bad("it contains a path separator");
    }
    if name.contains(':') {
        return bad("it contains `:` (a drive or stream prefix)");
    }
    if name.chars().any(char::is_control) {
        return bad("it contains a control character");
    }
    if name.len() > MAX_FILE_NAME_LEN {
        return bad("it is too long");
    }
    if [PART_SUFFIX, SIDECAR_SUFFIX, SIDECAR_TMP_SUFFIX, LOCK_SUFFIX]
        .iter()
        .any(|s| name.ends_with(s))
    {
        return bad("it ends in a suffix the model store uses for its own files");
    }
    let path = Path::new(name);
    if path.is_absolute() || path.components().count() != 1 {
        return bad("it is not a single path component");
    }
    Ok(())
}

/// Checks a model URL: `https`, or plain `http` to a loopback host (`127.0.0.0/8`, `::1`,
/// `localhost`) for tests. Returns the parsed URL.
pub fn check_url(url: &str) -> Result<ureq::http::Uri, EngineError> {
    check_url_for("model URL", url)
}

/// The URL rule of every download (model files and a task's input files): `https`, or plain
/// `http` to a loopback host. `what` names the URL in messages (`model URL`, `inputUrl`,
/// ...); the URL is shown without its query. Returns the parsed URL.
pub fn check_url_for(what: &str, url: &str) -> Result<ureq::http::Uri, EngineError> {
    let shown = redact(url);
    let uri: ureq::http::Uri = url
        .parse()
        .map_err(|e| EngineError::invalid_input(format!("{what} `{shown}` is not a URL: {e}")))?;
    let host = uri.host().unwrap_or("");
    if host.is_empty() {
        return Err(EngineError::invalid_input(format!(
            "{what} `{shown}` has no host"
        )));
    }
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if is_loopback_host(host) => Ok(uri),
        Some("http") => Err(EngineError::invalid_input(format!(
            "{what} `{shown}` uses plain http: files are fetched over https only (plain http \
             is allowed to loopback hosts only)"
        ))),
        other => Err(EngineError::invalid_input(format!(
            "{what} `{shown}` is not an https URL (scheme `{}`)",
            other.unwrap_or("")
        ))),
    }
}

/// `localhost`, `127.0.0.0/8` or `::1` (with or without brackets).
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
        || host.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback())
}

/// A URL without its query and fragment (signed download URLs carry credentials there),
/// for messages and logs.
pub fn redact(url: &str) -> &str {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    &url[..end]
}

/// One file to make present: the wire entry, its lowercase expected hash and its URL.
pub(crate) struct Plan<'a> {
    pub(crate) file: &'a ModelFile,
    pub(crate) sha: Option<String>,
    pub(crate) url: ureq::http::Uri,
}

impl<'a> Plan<'a> {
    pub(super) fn new(file: &'a ModelFile) -> Result<Plan<'a>, EngineError> {
        check_file_name(&file.filename)?;
        let url = check_url(&file.url)?;
        let sha = match &file.sha256 {
            None => None,
            Some(s) => {
                let s = s.trim();
                if s.len() != 64 || !s.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(EngineError::invalid_input(format!(
                        "sha256 of `{}` is not 64 hex digits",
                        file.filename
                    )));
                }
                Some(s.to_ascii_lowercase())
            }
        };
        Ok(Plan { file, sha, url })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ids_are_their_own_directory() {
        for id in ["smollm2-135m", "whisper_tiny.en", "Model-1.2"] {
            assert_eq!(model_dir_name(id).unwrap(), id);
        }
    }

    #[test]
    fn other_ids_are_sanitised_and_distinct() {
        let a = model_dir_name("org/model").unwrap();
        let b = model_dir_name("org_model").unwrap();
        let c = model_dir_name("org\\model").unwrap();
        assert!(a.starts_with("org_model-"), "{a}");
        assert_eq!(b, "org_model");
        assert_ne!(a, c);
        for id in ["..", ".", "../../etc", "/abs", "a b", "ü", ".hidden"] {
            let d = model_dir_name(id).unwrap();
            check_file_name(&d).unwrap_or_else(|e| panic!("{id} -> {d}: {e}"));
            assert!(!d.starts_with('.'), "{id} -> {d}");
            assert!(d
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)));
        }
        let long = "x".repeat(500);
        assert!(model_dir_name(&long).unwrap().len() <= MAX_MODEL_DIR_LEN + 13);
        assert!(model_dir_name("").is_err());
    }

    #[test]
    fn file_names_must_be_plain() {
        for ok in ["model.gguf", "tokenizer.json", "a..b", "..x"] {
            check_file_name(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "/abs",
            "a\\b",
            "C:x",
            "x\0",
            "m.part",
            "m.sha256",
            "m.lock",
            "m.sha256.tmp",
        ] {
            let e = check_file_name(bad).unwrap_err();
            assert!(!e.retryable(), "{bad}");
        }
        assert!(check_file_name(&"n".repeat(MAX_FILE_NAME_LEN + 1)).is_err());
    }

    #[test]
    fn urls_need_https_except_to_loopback() {
        for ok in [
            "https://example.com/m.gguf",
            "http://127.0.0.1:8080/m",
            "http://127.1.2.3/m",
            "http://localhost/m",
            "http://[::1]:9/m",
        ] {
            check_url(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "http://example.com/m",
            "http://10.0.0.1/m",
            "http://128.0.0.1/m",
            "ftp://example.com/m",
            "file:///etc/passwd",
            "not a url",
            "/relative",
        ] {
            let e = check_url(bad).unwrap_err();
            assert!(!e.retryable(), "{bad}");
        }
        assert!(check_url("http://example.com/m")
            .unwrap_err()
            .message
            .contains("https"));
    }

    #[test]
    fn redaction_drops_query_and_fragment() {
        assert_eq!(redact("https://h/p?sig=secret"), "https://h/p");
        assert_eq!(redact("https://h/p#x"), "https://h/p");
        assert_eq!(redact("https://h/p"), "https://h/p");
    }
}
