//! The names and URLs an offer gives for model files, checked before any request or
//! write: the model's directory name, plain file names, https-only URLs (plain http to
//! loopback only), each redirect hop ([`check_redirect`]), and the expected hash's format.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use sha2::{Digest, Sha256};
use studio_core::wire::{hex, ModelFile};

use super::{MAX_FILE_NAME_LEN, MAX_MODEL_DIR_LEN, STORE_SUFFIXES};
use crate::error::EngineError;

/// The device names Windows reserves in every directory, whatever the extension
/// (`nul.gguf` is the null device there): a model file or directory never takes one, on
/// any platform, so an offer behaves the same on every worker.
pub const WINDOWS_RESERVED_NAMES: [&str; 24] = [
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
    "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9", "CONIN$",
    "CONOUT$",
];

/// Whether Windows would not create `name` as an ordinary file: its part before the first
/// `.` (trailing spaces ignored) is one of [`WINDOWS_RESERVED_NAMES`] or `COM`/`LPT` plus a
/// superscript digit (any case), or the name ends in `.` or a space (Windows drops those,
/// so two names would meet in one file).
pub fn is_windows_reserved_name(name: &str) -> bool {
    if name.ends_with(['.', ' ']) {
        return true;
    }
    let stem = name.split('.').next().unwrap_or("").trim_end_matches(' ');
    let upper = stem.to_ascii_uppercase();
    WINDOWS_RESERVED_NAMES.contains(&upper.as_str())
        || ["COM", "LPT"].iter().any(|p| {
            upper
                .strip_prefix(p)
                .is_some_and(|d| matches!(d, "\u{b9}" | "\u{b2}" | "\u{b3}"))
        })
}

/// The directory name of a model id: the id itself when it is made of ASCII letters,
/// digits, `.`, `_` and `-` only, does not start with `.` and is at most
/// [`MAX_MODEL_DIR_LEN`] long; otherwise every other character becomes `_` (a leading `.`
/// too), the result is cut to that length and `-` plus the first 12 hex digits of the id's
/// SHA-256 is appended, so two ids never share a directory (`org/model` →
/// `org_model-<hash>`). An id Windows reserves ([`is_windows_reserved_name`]) is changed
/// the same way (`con` → `con-<hash>`). An empty id is refused.
pub fn model_dir_name(model_id: &str) -> Result<String, EngineError> {
    if model_id.is_empty() {
        return Err(EngineError::invalid_input("the model id is empty"));
    }
    let safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if model_id.len() <= MAX_MODEL_DIR_LEN
        && model_id.chars().all(safe)
        && !model_id.starts_with('.')
        && !is_windows_reserved_name(model_id)
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
    // `nul.x` would become `nul.x-<hash>`, still reserved: `_nul.x-<hash>` is not.
    if is_windows_reserved_name(&format!("{name}-")) {
        name.insert(0, '_');
    }
    let digest = hex(&Sha256::digest(model_id.as_bytes()));
    Ok(format!("{name}-{}", &digest[..12]))
}

/// Checks that `name` is a plain file name: not empty, not `.` or `..`, no `/` or `\`, no
/// drive prefix (`:`), no NUL or other control characters, at most [`MAX_FILE_NAME_LEN`]
/// bytes (so `<name>.sha256.tmp` and the other siblings still fit a path component), not a
/// name Windows reserves ([`is_windows_reserved_name`]), and not ending in one of the
/// store's own suffixes. Every refusal is `InvalidInput` (not retryable).
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
        return bad(&format!(
            "it is {} bytes long; at most {MAX_FILE_NAME_LEN} are accepted, so the store's \
             `.sha256.tmp`, `.part` and `.lock` files beside it still fit a file name",
            name.len()
        ));
    }
    if is_windows_reserved_name(name) {
        return bad("Windows reserves it (a device name, or a trailing `.` or space)");
    }
    if STORE_SUFFIXES.iter().any(|s| name.ends_with(s)) {
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

/// Checks one redirect hop of a download that started at `origin`, from `from` to the
/// `Location` resolved to `next`: the hop must pass [`check_url`], may not leave https for
/// http, and may not lead to this machine ([`is_local_host`]) unless the download started
/// there. A remote server could otherwise make the worker probe its own local ports.
/// Every refusal is `InvalidInput` (not retryable: the same offer is redirected the same
/// way).
pub fn check_redirect(
    origin: &ureq::http::Uri,
    from: &ureq::http::Uri,
    next: &str,
) -> Result<ureq::http::Uri, EngineError> {
    let uri = check_url(next)?;
    let shown = redact(next);
    if from.scheme_str() == Some("https") && uri.scheme_str() != Some("https") {
        return Err(EngineError::invalid_input(format!(
            "a redirect from https to `{shown}` is refused: it would leave https"
        )));
    }
    if is_local_host(uri.host().unwrap_or("")) && !is_local_host(origin.host().unwrap_or("")) {
        return Err(EngineError::invalid_input(format!(
            "a redirect to `{shown}` is refused: a download from another host may not lead \
             to this machine"
        )));
    }
    Ok(uri)
}

/// `localhost` (and its subdomains), a loopback address (`127.0.0.0/8`, `::1`,
/// `::ffff:127.x.y.z`, with or without brackets), including the short numeric forms the
/// system resolver reads as one (`127.1`, `0x7f.1`, `2130706433`).
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let lower = host.trim_end_matches('.').to_ascii_lowercase();
    lower == "localhost"
        || lower.ends_with(".localhost")
        || loose_ipv4(&lower).is_some_and(|ip| ip.is_loopback())
        || host.parse::<Ipv6Addr>().is_ok_and(|ip| {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        })
}

/// Whether a connection to `host` stays on this machine: a loopback host
/// ([`is_loopback_host`]) or the unspecified address (`0.0.0.0`, `::`, in any form), which
/// connects to this machine too.
pub fn is_local_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    is_loopback_host(host)
        || loose_ipv4(&bare.to_ascii_lowercase()).is_some_and(|ip| ip.is_unspecified())
        || bare.parse::<Ipv6Addr>().is_ok_and(|ip| {
            ip.is_unspecified() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_unspecified())
        })
}

/// An IPv4 address the way the system resolver (`inet_aton`) reads it: one to four parts
/// separated by `.`, each decimal, octal (leading `0`) or hex (`0x`), the last part filling
/// the remaining bytes (`127.1` is 127.0.0.1, `2130706433` is 127.0.0.1).
fn loose_ipv4(host: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = host.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut values = Vec::with_capacity(parts.len());
    for part in &parts {
        let (digits, radix) = if let Some(hex) = part.strip_prefix("0x") {
            (hex, 16)
        } else if part.len() > 1 && part.starts_with('0') {
            (&part[1..], 8)
        } else {
            (*part, 10)
        };
        if digits.is_empty() && radix != 16 {
            return None;
        }
        let value = if digits.is_empty() {
            0
        } else {
            u32::from_str_radix(digits, radix).ok()?
        };
        values.push(value);
    }
    let (last, head) = values.split_last()?;
    if head.iter().any(|&v| v > 255) {
        return None;
    }
    let rest_bits = 8 * (4 - head.len() as u32);
    if rest_bits < 32 && *last >= 1u32 << rest_bits {
        return None;
    }
    let mut addr: u32 = 0;
    for (i, v) in head.iter().enumerate() {
        addr |= v << (24 - 8 * i as u32);
    }
    Some(Ipv4Addr::from(addr | last))
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
    fn a_name_whose_siblings_would_not_fit_is_refused() {
        // 244 bytes: `<name>.sha256.tmp` is exactly 255.
        assert_eq!(MAX_FILE_NAME_LEN, 244);
        let longest = "n".repeat(MAX_FILE_NAME_LEN);
        check_file_name(&longest).unwrap();
        for suffix in STORE_SUFFIXES {
            assert!(longest.len() + suffix.len() <= super::super::MAX_PATH_COMPONENT_LEN);
        }
        for len in [MAX_FILE_NAME_LEN + 1, 250, 255] {
            let e = check_file_name(&"n".repeat(len)).unwrap_err();
            assert!(!e.retryable(), "{len}");
            assert!(e.message.contains("244"), "{e}");
        }
    }

    #[test]
    fn windows_reserved_names_are_refused_everywhere() {
        for bad in [
            "CON",
            "con.gguf",
            "Nul.tar.gz",
            "aux",
            "COM1.bin",
            "lpt9",
            "COM\u{b9}.bin",
            "conin$",
            "model.",
            "model ",
            "nul .txt",
        ] {
            assert!(is_windows_reserved_name(bad), "{bad}");
            let e = check_file_name(bad).unwrap_err();
            assert!(!e.retryable(), "{bad}");
        }
        for ok in [
            "console.gguf",
            "com10.bin",
            "lpt",
            "nullable.json",
            "a.con",
            "COM0x",
        ] {
            assert!(!is_windows_reserved_name(ok), "{ok}");
            check_file_name(ok).unwrap();
        }
        // A model id that is a reserved name gets a directory that is not.
        for id in ["con", "NUL", "aux.v1", "com1", "x."] {
            let d = model_dir_name(id).unwrap();
            assert!(!is_windows_reserved_name(&d), "{id} -> {d}");
            check_file_name(&d).unwrap_or_else(|e| panic!("{id} -> {d}: {e}"));
        }
    }

    #[test]
    fn loopback_and_local_hosts_in_every_spelling() {
        for local in [
            "localhost",
            "LOCALHOST.",
            "a.localhost",
            "127.0.0.1",
            "127.1",
            "127.255.255.254",
            "0x7f.1",
            "0177.0.0.1",
            "2130706433",
            "[::1]",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_loopback_host(local), "{local}");
            assert!(is_local_host(local), "{local}");
        }
        for unspecified in ["0.0.0.0", "0", "[::]", "0x0"] {
            assert!(!is_loopback_host(unspecified), "{unspecified}");
            assert!(is_local_host(unspecified), "{unspecified}");
        }
        for remote in [
            "example.com",
            "128.0.0.1",
            "10.0.0.1",
            "localhost.example.com",
            "1.2.3.4.5",
            "256.1.1.1",
            "[::2]",
            "127.0.0.1.nip.io",
        ] {
            assert!(!is_local_host(remote), "{remote}");
        }
    }

    #[test]
    fn redirect_hops_keep_https_and_stay_off_this_machine() {
        let remote: ureq::http::Uri = "https://models.example/m".parse().unwrap();
        let local: ureq::http::Uri = "http://127.0.0.1:8/m".parse().unwrap();
        // Remote https -> remote https: fine.
        check_redirect(&remote, &remote, "https://cdn.example/m").unwrap();
        // https -> http, even to loopback (where check_url alone allows plain http).
        for next in ["http://127.0.0.1:9/m", "http://localhost/m"] {
            let e = check_redirect(&remote, &remote, next).unwrap_err();
            assert!(!e.retryable());
            assert!(e.message.contains("leave https"), "{e}");
        }
        // Remote -> this machine, over https too.
        for next in [
            "https://127.0.0.1:22/",
            "https://localhost/",
            "https://127.1/",
            "https://[::1]/",
            "https://0.0.0.0:6379/",
        ] {
            let e = check_redirect(&remote, &remote, next).unwrap_err();
            assert!(e.message.contains("this machine"), "{next}: {e}");
        }
        // A download that started on this machine may stay there.
        check_redirect(&local, &local, "http://127.0.0.1:9/other").unwrap();
        check_redirect(&local, &local, "http://localhost:9/other").unwrap();
        // And an https origin's hop to plain http elsewhere is refused by check_url.
        assert!(check_redirect(&local, &local, "http://example.com/m").is_err());
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
