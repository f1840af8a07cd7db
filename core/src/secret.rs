//! Secrets (auth tokens, registration secrets) as a type whose `Debug` never shows them.
//! On the wire and in serde they are plain strings (`#[serde(transparent)]`), so the
//! protocol is unchanged; only `expose()` reveals the value, at the few places that must
//! put it on a wire or in the config file.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A secret string. `Debug` prints `***`; there is deliberately no `Display`.
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret value, for the wire or the config file only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl PartialEq<str> for Secret {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Secret {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret(s.to_string())
    }
}

/// JSON keys whose string values are secrets wherever they appear in frame or body text.
/// `registrationSecretHash` is not a secret itself, but it is derived from one (so a
/// redacted recording could not reproduce it) and it identifies the install.
pub const SECRET_JSON_KEYS: [&str; 4] = [
    "authToken",
    "registrationSecret",
    "auth_token",
    "registrationSecretHash",
];

/// `text` with the string value of every [`SECRET_JSON_KEYS`] key replaced by `***`: for
/// logging or recording frame and body text that may carry a token (a `hello`, an
/// approved registration status). Works on any text, JSON or not, and never panics.
pub fn redact_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    'scan: while !rest.is_empty() {
        for key in SECRET_JSON_KEYS {
            let pat = format!("\"{key}\"");
            if let Some(stripped) = rest.strip_prefix(pat.as_str()) {
                // "key" ws : ws "value"
                let after = stripped.trim_start();
                if let Some(after_colon) = after.strip_prefix(':') {
                    let value = after_colon.trim_start();
                    if let Some(body) = value.strip_prefix('"') {
                        if let Some(end) = closing_quote(body) {
                            out.push_str(&pat);
                            out.push_str(":\"***\"");
                            rest = &body[end + 1..];
                            continue 'scan;
                        }
                    }
                }
            }
        }
        let ch = rest.chars().next().expect("rest is not empty");
        out.push(ch);
        rest = &rest[ch.len_utf8()..];
    }
    out
}

/// Index of the closing quote of a JSON string body (after its opening quote).
fn closing_quote(body: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            '"' if !escaped => return Some(i),
            _ => escaped = false,
        }
    }
    None
}

/// Compares two strings in time that depends only on their lengths (tokens, hashes).
pub fn ct_eq(a: &str, b: &str) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.bytes()
        .zip(b.bytes())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_serde_keeps() {
        let s = Secret::new("tok-123");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"tok-123\"");
        let back: Secret = serde_json::from_str("\"tok-123\"").unwrap();
        assert_eq!(back.expose(), "tok-123");
    }

    #[test]
    fn redact_json_masks_token_values_only() {
        let hello =
            r#"{"type":"hello","authToken":"tok-\"x\"-1","capabilities":{"engine":"multi"}}"#;
        assert_eq!(
            redact_json(hello),
            r#"{"type":"hello","authToken":"***","capabilities":{"engine":"multi"}}"#
        );
        let approved = r#"{"status":"approved","workerId":"w","authToken" : "abc"}"#;
        assert_eq!(
            redact_json(approved),
            r#"{"status":"approved","workerId":"w","authToken":"***"}"#
        );
        assert_eq!(redact_json("no secrets é"), "no secrets é");
        assert_eq!(
            redact_json(r#""authToken":"unterminated"#),
            r#""authToken":"unterminated"#
        );
    }
}
