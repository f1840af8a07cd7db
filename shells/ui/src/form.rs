//! The Config tab's form: every setting of config.toml as a widget value, grouped, turned
//! back into a JSON edit and validated by the config module itself before anything is sent.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use studio_shell::config::SETTING_KEYS;
use studio_shell::Config;

/// The groups of the form, each with its settings (every [`SETTING_KEYS`] entry once).
pub const GROUPS: [(&str, &[&str]); 5] = [
    ("Connection", &["api_base_url", "ws_reconnect_attempts"]),
    (
        "Worker",
        &[
            "vram_threshold_gb",
            "auto_enabled",
            "only_when_idle",
            "auto_start",
            "start_minimised",
        ],
    ),
    ("Engines and models", &["models_root"]),
    (
        "Auto-update",
        &[
            "auto_update_enabled",
            "auto_update_interval_secs",
            "auto_update_feed",
        ],
    ),
    ("Local API", &["local_api_port"]),
];

/// What each setting means, for the person editing it.
pub fn help(key: &str) -> &'static str {
    match key {
        "api_base_url" => "the studio's URL",
        "ws_reconnect_attempts" => "reconnect attempts before giving up (empty: unlimited)",
        "vram_threshold_gb" => "only jobs needing at most this much VRAM (GB) are offered",
        "auto_enabled" => "take jobs at all (off: every offer is rejected, across restarts)",
        "only_when_idle" => "reject offers while the computer is in use",
        "auto_start" => "start with my session (the window, which starts the worker)",
        "start_minimised" => "start the window hidden in the tray",
        "models_root" => "where models are downloaded",
        "auto_update_enabled" => "check for and install updates while idle",
        "auto_update_interval_secs" => "seconds between update checks",
        "auto_update_feed" => "the release feed (empty: this project's own)",
        "local_api_port" => "the local control API's port on 127.0.0.1 (0: any free port)",
        _ => "",
    }
}

/// One widget's value.
#[derive(Clone, Debug, PartialEq)]
pub enum Field {
    /// A checkbox.
    Bool(bool),
    /// A text box (numbers too; parsed on validation).
    Text(String),
}

/// The settings being edited, and the values they were loaded with.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Form {
    loaded: Map<String, Value>,
    pub fields: BTreeMap<String, Field>,
}

impl Form {
    /// A form showing `settings` (a `/daemon/settings` object).
    pub fn load(settings: &Map<String, Value>) -> Form {
        let fields = SETTING_KEYS
            .iter()
            .map(|k| {
                let field = match settings.get(*k) {
                    Some(Value::Bool(b)) => Field::Bool(*b),
                    Some(Value::String(s)) => Field::Text(s.clone()),
                    Some(Value::Null) | None => Field::Text(String::new()),
                    Some(other) => Field::Text(number_text(other)),
                };
                (k.to_string(), field)
            })
            .collect();
        Form {
            loaded: settings.clone(),
            fields,
        }
    }

    /// Whether settings were loaded at all.
    pub fn is_loaded(&self) -> bool {
        !self.loaded.is_empty()
    }

    /// The settings that differ from those loaded, as a JSON edit, validated with the
    /// config module's own rules (the same the daemon applies): `Err` names the first bad
    /// setting and why.
    pub fn edits(&self) -> Result<Map<String, Value>, String> {
        let mut all = Map::new();
        for (key, field) in &self.fields {
            all.insert(key.clone(), field_value(key, field)?);
        }
        // Every setting checked, whatever changed.
        Config::default().with_settings(&all)?;
        Ok(all
            .into_iter()
            .filter(|(k, v)| self.loaded.get(k).unwrap_or(&Value::Null) != v)
            .collect())
    }
}

/// A number as the person would type it (`12`, `10.5`), not as f32 → f64 widening prints
/// it (`10.5`, but `0.30000001192092896`).
fn number_text(value: &Value) -> String {
    match value.as_f64() {
        Some(f) if value.is_f64() => {
            let short = format!("{}", f as f32);
            short
        }
        _ => value.to_string(),
    }
}

/// The JSON value of a field: booleans as they are; the numeric settings parsed (empty is
/// `null`, which unsets an optional one); text as text (empty unsets an optional one).
fn field_value(key: &str, field: &Field) -> Result<Value, String> {
    let text = match field {
        Field::Bool(b) => return Ok(Value::Bool(*b)),
        Field::Text(t) => t.trim(),
    };
    let numeric = matches!(
        key,
        "vram_threshold_gb"
            | "ws_reconnect_attempts"
            | "auto_update_interval_secs"
            | "local_api_port"
    );
    if text.is_empty() && matches!(key, "ws_reconnect_attempts" | "auto_update_feed") {
        return Ok(Value::Null);
    }
    if !numeric {
        return Ok(Value::String(text.to_string()));
    }
    if key == "vram_threshold_gb" {
        return match text.parse::<f64>() {
            Ok(f) => Ok(serde_json::json!(f)),
            Err(_) => Err(format!("{key}: `{text}` is not a number")),
        };
    }
    match text.parse::<i64>() {
        Ok(n) => Ok(Value::from(n)),
        Err(_) => Err(format!("{key}: `{text}` is not a whole number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded() -> Form {
        Form::load(&Config::default().settings())
    }

    #[test]
    fn every_setting_is_in_exactly_one_group() {
        let mut keys: Vec<&str> = GROUPS.iter().flat_map(|(_, k)| k.iter().copied()).collect();
        keys.sort_unstable();
        let mut all = SETTING_KEYS.to_vec();
        all.sort_unstable();
        assert_eq!(keys, all);
        assert!(SETTING_KEYS.iter().all(|k| !help(k).is_empty()));
    }

    #[test]
    fn only_changes_are_sent_and_bad_values_are_refused() {
        let mut form = loaded();
        assert_eq!(form.edits(), Ok(Map::new()));
        form.fields
            .insert("vram_threshold_gb".into(), Field::Text("6.5".into()));
        form.fields.insert("auto_start".into(), Field::Bool(true));
        let edits = form.edits().unwrap();
        assert_eq!(
            Value::Object(edits),
            serde_json::json!({"auto_start": true, "vram_threshold_gb": 6.5})
        );
        for (key, bad) in [
            ("vram_threshold_gb", "-1"),
            ("vram_threshold_gb", "lots"),
            ("local_api_port", "70000"),
            ("api_base_url", "studio"),
            ("auto_update_interval_secs", "1.5"),
        ] {
            let mut form = loaded();
            form.fields.insert(key.into(), Field::Text(bad.into()));
            let e = form.edits().unwrap_err();
            assert!(e.contains(key), "{key}={bad}: {e}");
        }
    }

    #[test]
    fn numbers_show_as_typed() {
        assert_eq!(number_text(&serde_json::json!(0.30000001192092896)), "0.3");
        assert_eq!(number_text(&serde_json::json!(12.0)), "12");
        assert_eq!(number_text(&serde_json::json!(4787)), "4787");
    }
}
