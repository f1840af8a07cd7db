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

/// What [`redact_json`] leaves of a secret, and of a URL's query or fragment.
pub const REDACTED: &str = "***";

/// URL schemes whose query and fragment [`redact_json`] masks (signed download and upload
/// URLs carry their credentials there).
pub const URL_SCHEMES: [&str; 4] = ["https", "http", "wss", "ws"];

/// `text` with every secret masked, for logging or recording frame and body text that may
/// carry one (a `hello`, an approved registration status, a signed URL). Works on any
/// text, JSON or not, never panics, and is idempotent:
///
/// * the string value of every [`SECRET_JSON_KEYS`] key becomes `"***"`, however the key
///   is spelled in JSON (`"auth\u0054oken"` is `authToken`);
/// * JSON text inside a JSON string (a frame quoted in an error message) is redacted the
///   same way, at any depth;
/// * the query and fragment of every `http(s)://` / `ws(s)://` URL, inside strings or in
///   plain text, become `?***` (`#***`).
pub fn redact_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('"') {
        out.push_str(&mask_url_queries(&rest[..open]));
        let body = &rest[open + 1..];
        let Some(end) = closing_quote(body) else {
            // An unterminated string: the rest is plain text.
            out.push_str(&mask_url_queries(&rest[open..]));
            return out;
        };
        let token = &rest[open..open + end + 2];
        let decoded = decode_json_string(&body[..end]);
        let after = &body[end + 1..];
        let after_colon = after.trim_start().strip_prefix(':');
        match after_colon {
            Some(tail) if SECRET_JSON_KEYS.contains(&decoded.as_str()) => {
                let value = tail.trim_start();
                let masked = value
                    .strip_prefix('"')
                    .and_then(|v| closing_quote(v).map(|e| &v[e + 1..]));
                if let Some(after_value) = masked {
                    out.push_str(token);
                    out.push_str(":\"");
                    out.push_str(REDACTED);
                    out.push('"');
                    rest = after_value;
                    continue;
                }
                out.push_str(token);
            }
            // Another key: kept as sent.
            Some(_) => out.push_str(token),
            // A value: its decoded text is redacted too (nested JSON, URLs).
            None => {
                let redacted = redact_json(&decoded);
                if redacted == decoded {
                    out.push_str(token);
                } else {
                    out.push_str(&encode_json_string(&redacted));
                }
            }
        }
        rest = after;
    }
    out.push_str(&mask_url_queries(rest));
    out
}

/// `text` with the query and fragment of every URL of the [`URL_SCHEMES`] replaced by
/// `?***` (or `#***` when there is no query). A URL ends at whitespace, a quote, `<`, `>`
/// or a backslash.
pub fn mask_url_queries(text: &str) -> std::borrow::Cow<'_, str> {
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut search = 0;
    while let Some(found) = text[search..].find("://") {
        let sep = search + found;
        search = sep + 3;
        // The scheme is the ASCII letters before `://`; what precedes them may be any
        // character, so step over it by its own width.
        let scheme_start = text[..sep]
            .char_indices()
            .rev()
            .find(|(_, c)| !c.is_ascii_alphabetic())
            .map_or(0, |(i, c)| i + c.len_utf8());
        let scheme = &text[scheme_start..sep];
        if !URL_SCHEMES.iter().any(|s| s.eq_ignore_ascii_case(scheme)) {
            continue;
        }
        let url_end = text[search..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '\\' | '`'))
            .map_or(text.len(), |i| search + i);
        let Some(mark) = text[search..url_end].find(['?', '#']).map(|i| search + i) else {
            search = url_end;
            continue;
        };
        let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
        o.push_str(&text[copied..=mark]);
        o.push_str(REDACTED);
        copied = url_end;
        search = url_end;
    }
    match out {
        None => std::borrow::Cow::Borrowed(text),
        Some(mut o) => {
            o.push_str(&text[copied..]);
            std::borrow::Cow::Owned(o)
        }
    }
}

/// The text of a JSON string body (between its quotes), escapes resolved; an invalid
/// escape is kept as written (lone surrogates become U+FFFD).
fn decode_json_string(body: &str) -> String {
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('"') => out.push('"'),
            Some('\\') => out.push('\\'),
            Some('/') => out.push('/'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('u') => {
                let unit = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| {
                    let hex: String = chars.clone().take(4).collect();
                    let v = (hex.len() == 4)
                        .then(|| u16::from_str_radix(&hex, 16).ok())
                        .flatten()?;
                    chars.nth(3);
                    Some(v)
                };
                match unit(&mut chars) {
                    Some(hi @ 0xD800..=0xDBFF) => {
                        let mut probe = chars.clone();
                        let lo = (probe.next() == Some('\\') && probe.next() == Some('u'))
                            .then(|| unit(&mut probe))
                            .flatten()
                            .filter(|lo| (0xDC00..=0xDFFF).contains(lo));
                        match lo {
                            Some(lo) => {
                                chars = probe;
                                let code = 0x10000
                                    + ((u32::from(hi) - 0xD800) << 10)
                                    + (u32::from(lo) - 0xDC00);
                                out.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                            }
                            None => out.push('\u{fffd}'),
                        }
                    }
                    Some(v) => out.push(char::from_u32(u32::from(v)).unwrap_or('\u{fffd}')),
                    None => out.push_str("\\u"),
                }
            }
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// `text` as a JSON string (quotes included).
fn encode_json_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| format!("\"{REDACTED}\""))
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

    #[test]
    fn escaped_key_names_and_nested_json_are_masked() {
        // The key spelled with a JSON escape is still `authToken`.
        let escaped = r#"{"auth\u0054oken":"tok-1","x":1}"#;
        assert_eq!(redact_json(escaped), r#"{"auth\u0054oken":"***","x":1}"#);
        // A frame quoted inside a string (an error echoing the hello).
        let nested = r#"{"type":"error","message":"bad frame {\"authToken\":\"tok-2\"}"}"#;
        let out = redact_json(nested);
        assert!(!out.contains("tok-2"), "{out}");
        assert!(out.contains(r#"\"authToken\":\"***\""#), "{out}");
        // Twice nested.
        let deeper = serde_json::to_string(&serde_json::json!({"m": nested})).unwrap();
        assert!(!redact_json(&deeper).contains("tok-2"));
        for text in [escaped, nested, &deeper] {
            let once = redact_json(text);
            assert_eq!(redact_json(&once), once, "not idempotent on {text}");
        }
    }

    #[test]
    fn a_multibyte_character_before_a_scheme_is_stepped_over() {
        // Found by the decode_frame fuzz target: a character of several bytes right before
        // the scheme's letters (the split once landed inside it and panicked).
        for (text, want) in [
            ("é://x?q=1", "é://x?q=1"),
            ("\u{fffd}https://h/p?sig=1", "\u{fffd}https://h/p?***"),
            // The scheme is `ps` here: not a URL, kept.
            ("htt\u{fffd}ps://h/p?sig=1", "htt\u{fffd}ps://h/p?sig=1"),
            ("日本http://h/?a=b", "日本http://h/?***"),
        ] {
            assert_eq!(mask_url_queries(text), want, "{text}");
        }
    }

    #[test]
    fn signed_url_queries_are_masked_in_strings_and_plain_text() {
        let offer = r#"{"inputUrl":"https://cdn.example/a.wav?X-Amz-Signature=abc123&X=1","u":"https:\/\/h\/p?sig=def456"}"#;
        let out = redact_json(offer);
        assert!(!out.contains("abc123") && !out.contains("def456"), "{out}");
        assert!(
            out.contains(r#""inputUrl":"https://cdn.example/a.wav?***""#),
            "{out}"
        );
        assert_eq!(
            mask_url_queries("GET wss://h:1/p#frag and HTTP://x/y?q=1 z"),
            "GET wss://h:1/p#*** and HTTP://x/y?*** z"
        );
        assert_eq!(
            mask_url_queries("no ? url ftp://x/?a=1"),
            "no ? url ftp://x/?a=1"
        );
        assert_eq!(mask_url_queries("https://h/p"), "https://h/p");
        let once = redact_json(offer);
        assert_eq!(redact_json(&once), once);
        // Decoding and re-encoding keeps everything else.
        let back: serde_json::Value = serde_json::from_str(&once).unwrap();
        assert_eq!(back["u"], "https://h/p?***");
    }
}
