//! The Config tab's form: every setting of config.toml as a widget value, grouped, turned
//! back into a JSON edit and validated by the config module itself before anything is sent.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use studio_shell::config::{OPTIONAL_SETTING_KEYS, SETTING_KEYS};
use studio_shell::Config;

/// The groups of the form, each with its settings (every [`SETTING_KEYS`] entry once).
pub const GROUPS: [(&str, &[&str]); 6] = [
    (
        "Connection",
        &[
            "api_base_url",
            "allow_insecure_studio_url",
            "ws_reconnect_attempts",
        ],
    ),
    (
        "Worker",
        &[
            "vram_threshold_gb",
            "auto_enabled",
            "only_when_idle",
            "auto_start",
            "start_minimised",
            "job_deadline_secs",
        ],
    ),
    (
        "Engines and models",
        &[
            "models_root",
            "model_memory_budget_gb",
            "onnxruntime_library",
        ],
    ),
    (
        "Gradio app",
        &[
            "gradio_endpoint_url",
            "gradio_api",
            "gradio_api_name",
            "gradio_timeout_secs",
            "supported_models_override",
        ],
    ),
    (
        "Auto-update",
        &[
            "auto_update_enabled",
            "auto_update_interval_secs",
            "auto_update_feed",
            "auto_update_prerelease",
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
        "auto_update_prerelease" => "also install pre-releases",
        "model_memory_budget_gb" => {
            "memory (GB) each engine may keep in loaded models (empty: half of this machine's)"
        }
        "onnxruntime_library" => "the ONNX Runtime library for speech (empty: found by the loader)",
        "gradio_endpoint_url" => "your Gradio app's URL (empty: http://127.0.0.1:7860/)",
        "gradio_api" => "`call` (Gradio 4 and later) or `legacy` (empty: call)",
        "gradio_api_name" => "the app function's API name (empty: predict)",
        "gradio_timeout_secs" => "seconds one Gradio job may take (empty: 600)",
        "allow_insecure_studio_url" => {
            "accept an http:// studio on another machine (the token then crosses the network unencrypted)"
        }
        "job_deadline_secs" => {
            "per kind, seconds a job may run: `image=1800, video=3600` (empty: the defaults)"
        }
        "supported_models_override" => {
            "the model ids the Gradio app serves, comma-separated (empty: none advertised)"
        }
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
                    Some(Value::Array(items)) => Field::Text(list_text(items)),
                    Some(Value::Object(pairs)) => Field::Text(table_text(pairs)),
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

/// A list as the person types it: `a, b`.
fn list_text(items: &[Value]) -> String {
    let texts: Vec<String> = items
        .iter()
        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
        .collect();
    texts.join(", ")
}

/// A table as the person types it: `image=1800, video=3600`.
fn table_text(pairs: &Map<String, Value>) -> String {
    let texts: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    texts.join(", ")
}

/// `a, b` as a JSON list of strings (empty: an empty list).
fn list_value(text: &str) -> Value {
    Value::Array(
        text.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| Value::String(t.to_string()))
            .collect(),
    )
}

/// `image=1800, video=3600` as a JSON object of whole numbers (empty: an empty object);
/// what each key may be is the config module's to say.
fn table_value(key: &str, text: &str) -> Result<Value, String> {
    let mut object = Map::new();
    for pair in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let Some((name, number)) = pair.split_once('=') else {
            return Err(format!("{key}: `{pair}` is not name=seconds"));
        };
        let number: u64 = number
            .trim()
            .parse()
            .map_err(|_| format!("{key}: `{}` is not a whole number", number.trim()))?;
        object.insert(name.trim().to_string(), Value::from(number));
    }
    Ok(Value::Object(object))
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
            | "model_memory_budget_gb"
            | "ws_reconnect_attempts"
            | "auto_update_interval_secs"
            | "local_api_port"
            | "gradio_timeout_secs"
    );
    if text.is_empty() && OPTIONAL_SETTING_KEYS.contains(&key) {
        return Ok(Value::Null);
    }
    match key {
        "supported_models_override" => return Ok(list_value(text)),
        "job_deadline_secs" => return table_value(key, text),
        _ => {}
    }
    if !numeric {
        return Ok(Value::String(text.to_string()));
    }
    if matches!(key, "vram_threshold_gb" | "model_memory_budget_gb") {
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
    fn the_table_and_the_list_are_typed_as_text() {
        let mut config = Config::default();
        config
            .job_deadline_secs
            .insert(studio_core::wire::TaskKind::Image, 60);
        config.supported_models_override = vec!["sdxl".into(), "flux".into()];
        let mut form = Form::load(&config.settings());
        let text = |form: &Form, key: &str| form.fields[key].clone();
        assert_eq!(
            text(&form, "job_deadline_secs"),
            Field::Text("image=60".into())
        );
        assert_eq!(
            text(&form, "supported_models_override"),
            Field::Text("sdxl, flux".into())
        );
        assert_eq!(
            form.edits(),
            Ok(Map::new()),
            "loaded as typed, nothing changed"
        );
        form.fields.insert(
            "job_deadline_secs".into(),
            Field::Text(" image = 60, video=7200 ".into()),
        );
        form.fields.insert(
            "supported_models_override".into(),
            Field::Text(String::new()),
        );
        assert_eq!(
            Value::Object(form.edits().unwrap()),
            serde_json::json!({
                "job_deadline_secs": {"image": 60, "video": 7200},
                "supported_models_override": [],
            })
        );
        for bad in ["image", "image=soon", "sculpt=5", "llm=0"] {
            form.fields
                .insert("job_deadline_secs".into(), Field::Text(bad.into()));
            let e = form.edits().unwrap_err();
            assert!(e.contains("job_deadline_secs"), "{bad}: {e}");
        }
    }

    #[test]
    fn numbers_show_as_typed() {
        assert_eq!(number_text(&serde_json::json!(0.30000001192092896)), "0.3");
        assert_eq!(number_text(&serde_json::json!(12.0)), "12");
        assert_eq!(number_text(&serde_json::json!(4787)), "4787");
    }
}
