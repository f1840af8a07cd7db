//! The settings an operator edits (the desktop window's Config tab, `PATCH
//! /daemon/settings`): which keys they are, and a config read and edited as a JSON object
//! of them, validated by the config's own rules.

use super::expand_home;
use super::Config;

/// The keys an operator edits (the desktop window's Config tab, `PATCH /daemon/settings`):
/// every key but the registration (`worker_id`, `install_id`, `registration_request_id`)
/// and the secrets (`auth_token`, `registration_secret`, `local_api_token`). The
/// `[job_deadline_secs]` table is a JSON object of kind to seconds, `supported_models_override`
/// a list of model ids.
pub const SETTING_KEYS: [&str; 22] = concat_keys(REQUIRED_SETTING_KEYS, OPTIONAL_SETTING_KEYS);

/// The settings that always have a value.
const REQUIRED_SETTING_KEYS: [&str; 14] = [
    "api_base_url",
    "vram_threshold_gb",
    "auto_enabled",
    "auto_start",
    "start_minimised",
    "only_when_idle",
    "models_root",
    "auto_update_enabled",
    "auto_update_interval_secs",
    "auto_update_prerelease",
    "local_api_port",
    "allow_insecure_studio_url",
    "job_deadline_secs",
    "supported_models_override",
];

/// `a` then `b` (`N` must be their lengths added; a wrong one fails the build).
const fn concat_keys<const A: usize, const B: usize, const N: usize>(
    a: [&'static str; A],
    b: [&'static str; B],
) -> [&'static str; N] {
    assert!(A + B == N);
    let mut out = [""; N];
    let mut i = 0;
    while i < N {
        out[i] = if i < A { a[i] } else { b[i - A] };
        i += 1;
    }
    out
}

/// The settings a running worker applies at once; a change to any other setting takes
/// effect when the worker restarts.
pub const LIVE_SETTING_KEYS: [&str; 2] = ["vram_threshold_gb", "auto_enabled"];

/// The settings that may be absent (`null` in [`Config::settings`] clears them).
pub const OPTIONAL_SETTING_KEYS: [&str; 8] = [
    "ws_reconnect_attempts",
    "auto_update_feed",
    "model_memory_budget_gb",
    "onnxruntime_library",
    "gradio_endpoint_url",
    "gradio_api",
    "gradio_api_name",
    "gradio_timeout_secs",
];

/// Editing the settings as JSON (the local control API and the desktop window).
impl Config {
    /// The settings ([`SETTING_KEYS`]) as a JSON object of config.toml's keys and values
    /// (an unset optional setting is `null`).
    pub fn settings(&self) -> serde_json::Map<String, serde_json::Value> {
        let all = self.as_json();
        SETTING_KEYS
            .iter()
            .map(|k| (k.to_string(), all.get(*k).cloned().unwrap_or_default()))
            .collect()
    }

    /// Every key as JSON, including those config.toml leaves out when they hold their
    /// default (an empty list, `false`) or writes on its own (the deadline table): an edit
    /// must see and keep them.
    fn as_json(&self) -> serde_json::Value {
        let mut all = serde_json::to_value(self).expect("config values always serialise");
        let object = all.as_object_mut().expect("a config is an object");
        object.insert(
            "job_deadline_secs".into(),
            serde_json::to_value(&self.job_deadline_secs).expect("kinds and numbers serialise"),
        );
        object.insert(
            "supported_models_override".into(),
            serde_json::json!(self.supported_models_override),
        );
        object.insert(
            "allow_insecure_studio_url".into(),
            serde_json::json!(self.allow_insecure_studio_url),
        );
        all
    }

    /// This config with `edits` applied: a JSON object of settings ([`SETTING_KEYS`];
    /// `null` clears an optional one), each checked on its own, then the whole config
    /// validated. The error names the first bad key and says why; nothing is applied then.
    pub fn with_settings(
        &self,
        edits: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Config, String> {
        let base = self.as_json();
        let edit_one = |mut value: serde_json::Value, key: &str, new: &serde_json::Value| {
            let object = value.as_object_mut().expect("a config is an object");
            if new.is_null() && OPTIONAL_SETTING_KEYS.contains(&key) {
                object.remove(key);
            } else {
                object.insert(key.to_string(), new.clone());
            }
            value
        };
        let mut merged = base.clone();
        for (key, new) in edits {
            if !SETTING_KEYS.contains(&key.as_str()) {
                return Err(format!(
                    "`{key}` is not a setting (settings: {})",
                    SETTING_KEYS.join(", ")
                ));
            }
            serde_json::from_value::<Config>(edit_one(base.clone(), key, new))
                .map_err(|e| format!("{key}: {e}"))?;
            if key == "models_root" && new.as_str().is_some_and(|s| s.trim().is_empty()) {
                return Err("models_root: must name a directory".into());
            }
            merged = edit_one(merged, key, new);
        }
        let mut config: Config = serde_json::from_value(merged).map_err(|e| e.to_string())?;
        config.extra = self.extra.clone();
        config.models_root = expand_home(&config.models_root);
        if config
            .auto_update_feed
            .as_deref()
            .is_some_and(|s| s.trim().is_empty())
        {
            config.auto_update_feed = None;
        }
        config.validate()?;
        Ok(config)
    }

    /// The settings whose values differ between this config and `other`, in
    /// [`SETTING_KEYS`] order.
    pub fn changed_settings(&self, other: &Config) -> Vec<&'static str> {
        let (a, b) = (self.settings(), other.settings());
        SETTING_KEYS
            .into_iter()
            .filter(|k| a.get(*k) != b.get(*k))
            .collect()
    }
}
