//! `redact`: trace and log redaction ([`studio_core::secret::redact_json`] on text,
//! [`studio_core::trace::redact`] on recorded values): a secret never survives.
//!
//! Input ([`Case::read`]): a secret (8 to 24 upper-case letters after `SEK`, so nothing
//! else in the case can spell it), a JSON tree of fuzzer-chosen lower-case keys, strings
//! and numbers, and up to four placements of the secret where redaction promises to find
//! it: as the value of `authToken` / `registrationSecret` / `auth_token` (the first key
//! possibly spelled with a `\uXXXX` escape), in the query or fragment of an
//! `https://` / `wss://` URL inside a string, inside JSON quoted in a string, and in the
//! query of a URL in plain (non-JSON) text.
//!
//! Checks ([`check_with`]):
//! * the redacted text holds no copy of the secret, is still valid JSON (for JSON input),
//!   and redacting it again changes nothing;
//! * the recorded value (the tree as the trace writer sees it) holds no copy after
//!   `trace::redact`.

use serde_json::{json, Map, Value};
use studio_core::secret::redact_json;
use studio_core::trace;

use crate::reader::Reader;

/// Characters of the noise (no upper-case letter, so no noise spells the secret).
const NOISE: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789 -_./:?#&=\"\\{}[],";

/// A fuzzer-written redaction case.
#[derive(Clone, Debug)]
pub struct Case {
    pub secret: String,
    pub tree: Value,
    /// Which character of the first `authToken` key is written as `\uXXXX` (none: 0).
    pub escape: u8,
    pub plain: String,
}

fn noise(r: &mut Reader<'_>, max: usize) -> String {
    let n = usize::from(r.u8()) % (max + 1);
    (0..n)
        .map(|_| char::from(NOISE[usize::from(r.u8()) % NOISE.len()]))
        .collect()
}

fn lower(r: &mut Reader<'_>) -> String {
    let n = 1 + usize::from(r.u8() % 8);
    (0..n).map(|_| char::from(b'a' + r.u8() % 26)).collect()
}

fn tree(r: &mut Reader<'_>, depth: u32) -> Value {
    match r.u8() % if depth >= 3 { 3 } else { 5 } {
        0 => Value::String(noise(r, 24)),
        1 => json!(r.u16()),
        2 => Value::Null,
        3 => Value::Array((0..r.u8() % 4).map(|_| tree(r, depth + 1)).collect()),
        _ => {
            let mut m = Map::new();
            for _ in 0..r.u8() % 4 {
                m.insert(lower(r), tree(r, depth + 1));
            }
            Value::Object(m)
        }
    }
}

fn holds_object(v: &Value) -> bool {
    match v {
        Value::Object(_) => true,
        Value::Array(items) => items.iter().any(holds_object),
        _ => false,
    }
}

/// An object at or below `v`, walking down as the fuzzer says.
fn pick<'a>(v: &'a mut Value, r: &mut Reader<'_>) -> Option<&'a mut Map<String, Value>> {
    match v {
        Value::Object(m) => {
            let down = if r.u8() % 2 == 1 {
                let keys: Vec<&String> = m.keys().filter(|k| holds_object(&m[*k])).collect();
                (!keys.is_empty()).then(|| keys[usize::from(r.u8()) % keys.len()].clone())
            } else {
                None
            };
            if let Some(k) = down {
                return pick(m.get_mut(&k).expect("a key just listed"), r);
            }
            Some(m)
        }
        Value::Array(items) => items
            .iter_mut()
            .find(|i| holds_object(i))
            .and_then(|i| pick(i, r)),
        _ => None,
    }
}

impl Case {
    /// Decodes a case (any bytes are one).
    pub fn read(data: &[u8]) -> Case {
        let mut r = Reader::new(data);
        let n = 8 + usize::from(r.u8() % 17);
        let secret: String = std::iter::once("SEK".to_string())
            .chain((0..n).map(|_| char::from(b'A' + r.u8() % 26).to_string()))
            .collect();
        let mut root = Map::new();
        for _ in 0..r.u8() % 4 {
            root.insert(lower(&mut r), tree(&mut r, 1));
        }
        let mut tree_value = Value::Object(root);
        let escape = r.u8() % 10;
        for i in 0..1 + r.u8() % 4 {
            let kind = r.u8() % 6;
            let (before, after) = (
                noise(&mut r, 8).replace('"', ""),
                noise(&mut r, 8).replace('"', ""),
            );
            let map = pick(&mut tree_value, &mut r).expect("the root is an object");
            let key = format!("k{i}{}", lower(&mut r));
            match kind {
                0 => {
                    map.insert("authToken".into(), Value::String(secret.clone()));
                }
                1 => {
                    map.insert("registrationSecret".into(), Value::String(secret.clone()));
                }
                2 => {
                    map.insert("auth_token".into(), Value::String(secret.clone()));
                }
                3 => {
                    map.insert(
                        key,
                        Value::String(format!(
                            "{before} https://cdn.example/m.gguf?sig={secret}&x=1 {after}"
                        )),
                    );
                }
                4 => {
                    map.insert(
                        key,
                        Value::String(format!("{before} wss://h.example/p#{secret} {after}")),
                    );
                }
                _ => {
                    let inner = json!({"type": "hello", "authToken": secret.clone()});
                    map.insert(
                        key,
                        Value::String(format!("{before} {inner} {after}").replace("\\", "")),
                    );
                }
            }
        }
        let plain = format!(
            "{} GET https://s.example/x.wav?token={} {}",
            noise(&mut r, 16).replace('"', ""),
            secret,
            noise(&mut r, 16).replace('"', "")
        );
        Case {
            secret,
            tree: tree_value,
            escape,
            plain,
        }
    }

    /// The tree as JSON text, the first `"authToken":` key possibly escaped.
    pub fn text(&self) -> String {
        let text = serde_json::to_string(&self.tree).expect("a tree serialises");
        let key = "authToken";
        let i = usize::from(self.escape);
        if i == 0 || i > key.len() {
            return text;
        }
        let c = key.as_bytes()[i - 1];
        let spelled = format!("\"{}\\u{:04x}{}\":", &key[..i - 1], c, &key[i..]);
        text.replacen("\"authToken\":", &spelled, 1)
    }
}

/// Runs every check on `data` with the real redaction functions.
pub fn check(data: &[u8]) -> Result<(), String> {
    check_with(&Case::read(data), redact_json, trace::redact)
}

/// The checks, with the redaction functions given (the tests hand in broken ones).
pub fn check_with(
    case: &Case,
    redact_text: impl Fn(&str) -> String,
    redact_value: impl Fn(&mut Value),
) -> Result<(), String> {
    let secret = case.secret.as_str();
    let text = case.text();
    let once = redact_text(&text);
    if once.contains(secret) {
        return Err(format!(
            "the secret survived redaction:\n  in:  {text}\n  out: {once}"
        ));
    }
    if serde_json::from_str::<Value>(&once).is_err() {
        return Err(format!(
            "redaction broke the JSON:\n  in:  {text}\n  out: {once}"
        ));
    }
    let twice = redact_text(&once);
    if twice != once {
        return Err(format!(
            "redaction is not idempotent:\n  once:  {once}\n  twice: {twice}"
        ));
    }
    let plain = redact_text(&case.plain);
    if plain.contains(secret) {
        return Err(format!("the secret survived in plain text: {plain}"));
    }
    let mut recorded = case.tree.clone();
    redact_value(&mut recorded);
    let shown = serde_json::to_string(&recorded).unwrap_or_default();
    if shown.contains(secret) {
        return Err(format!("the secret survived trace redaction: {shown}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placement_is_made_and_found() {
        for seed in 0..200u8 {
            let data: Vec<u8> = (0..96u8)
                .map(|i| i.wrapping_mul(seed).wrapping_add(seed))
                .collect();
            let case = Case::read(&data);
            assert!(case.text().contains(&case.secret) || case.plain.contains(&case.secret));
            check_with(&case, redact_json, trace::redact).unwrap();
        }
    }

    #[test]
    fn the_checks_can_fail() {
        let case = Case::read(&[7; 64]);
        assert!(check_with(&case, |t| t.to_string(), trace::redact).is_err());
        assert!(check_with(&case, redact_json, |_| {}).is_err());
        assert!(check_with(&case, |_| "not json".to_string(), trace::redact).is_err());
    }
}
