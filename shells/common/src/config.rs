//! `config.toml`: the worker's settings and registration state (PROTOCOL.md §7).
//!
//! * **Location**: `directories::ProjectDirs::from("gg", "minis", "minis-studio-worker")`
//!   config dir + `config.toml` ([`default_config_path`]); `--config PATH` overrides it.
//! * **Load** ([`Config::load`]): a missing file is created with defaults (atomically);
//!   `models_root` starting with `~` is expanded; values are validated. Keys this build
//!   does not know are ignored without a warning and kept: they are written back on save,
//!   so a file shared with another build loses nothing.
//! * **Parse errors** name the file, line and column and the parser's message with every
//!   quoted fragment of the file removed: a TOML error excerpt could otherwise echo a
//!   secret from the neighbouring text.
//! * **Save** ([`Config::save`]): atomic (temp file in the same directory, write, fsync,
//!   rename, fsync the directory) and owner-only (`0600`) on Unix, in a directory created
//!   `0700`. A truncated write used to wipe the registration, and `0644` leaked secrets
//!   (PROTOCOL.md §8). A file found readable or writable by group or others is tightened to
//!   owner-only on load, with a warning.
//! * **Plain-text studio URLs**: an `http://` / `ws://` `api_base_url` to a host other than
//!   this machine would send the auth token and the registration secret unencrypted; it is
//!   refused unless `allow_insecure_studio_url = true`, and then warned about at start
//!   ([`insecure_url_warning`]).
//! * **Secrets** (`auth_token`, `registration_secret`, and unknown keys whose names look
//!   secret) are masked by [`Config::redacted`], by `Display` and by `Debug`; only the
//!   file itself holds them.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use studio_core::wire::TaskKind;
use studio_core::worker::{
    Credentials, HostFacts, Limits, PersistedState, RegistrationState, Timings, WorkerConfig,
};
use studio_core::Secret;
use studio_engines::gradio::{GradioApi, GradioSettings};

use crate::error::ShellError;

/// The studio the worker talks to unless configured otherwise.
pub const DEFAULT_API_BASE_URL: &str = "https://studio.minis.gg/";
/// Default advertised VRAM threshold in GB.
pub const DEFAULT_VRAM_THRESHOLD_GB: f32 = 12.0;
/// Default auto-update check interval in seconds.
pub const DEFAULT_AUTO_UPDATE_INTERVAL_SECS: u64 = 1800;
/// The shortest auto-update check interval a config may ask for, in seconds.
pub const MIN_AUTO_UPDATE_INTERVAL_SECS: u64 = 60;
/// Default models directory, before `~` expansion.
pub const DEFAULT_MODELS_ROOT: &str = "~/models";
/// The config file's name inside the config directory.
pub const CONFIG_FILE_NAME: &str = "config.toml";
/// What [`Config::redacted`] writes in place of a secret.
pub const REDACTED: &str = "<redacted>";

/// The local control API's port on 127.0.0.1 unless configured otherwise.
pub const DEFAULT_LOCAL_API_PORT: u16 = 4787;

/// Whether the first-run config written by [`Config::default`] checks for and installs
/// updates (`auto_update_enabled`).
pub const SELF_UPDATE_AVAILABLE: bool = true;

pub use settings::{LIVE_SETTING_KEYS, OPTIONAL_SETTING_KEYS, SETTING_KEYS};

/// The keys this build reads (everything else is kept verbatim in [`Config::extra`]).
pub const KNOWN_KEYS: [&str; 28] = [
    "api_base_url",
    "worker_id",
    "auth_token",
    "vram_threshold_gb",
    "auto_start",
    "start_minimised",
    "auto_update_enabled",
    "auto_update_interval_secs",
    "auto_update_feed",
    "auto_update_prerelease",
    "models_root",
    "ws_reconnect_attempts",
    "only_when_idle",
    "auto_enabled",
    "local_api_port",
    "local_api_token",
    "install_id",
    "registration_request_id",
    "registration_secret",
    "job_deadline_secs",
    "allow_insecure_studio_url",
    "model_memory_budget_gb",
    "gradio_endpoint_url",
    "gradio_api",
    "gradio_api_name",
    "gradio_timeout_secs",
    "supported_models_override",
    "onnxruntime_library",
];

fn default_true() -> bool {
    true
}

fn default_interval() -> u64 {
    DEFAULT_AUTO_UPDATE_INTERVAL_SECS
}

fn default_local_api_port() -> u16 {
    DEFAULT_LOCAL_API_PORT
}

fn default_models_root() -> PathBuf {
    PathBuf::from(DEFAULT_MODELS_ROOT)
}

/// The contents of `config.toml` (snake_case keys, PROTOCOL.md §7.2).
///
/// `api_base_url` and `vram_threshold_gb` are required keys; every other key is optional
/// and takes the documented default.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// The studio origin (`https://studio.minis.gg/`); `/graphics/api` is appended.
    pub api_base_url: String,
    /// Set on approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    /// Set on approval. Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<String>,
    /// Jobs whose VRAM estimate exceeds this are not offered (studio-side admission). >= 0.
    pub vram_threshold_gb: f32,
    /// Start the worker at login (not implemented by this build; advertised as `false`).
    #[serde(default)]
    pub auto_start: bool,
    /// Start the tray UI minimised.
    #[serde(default = "default_true")]
    pub start_minimised: bool,
    /// Check for (and install) updates while idle.
    #[serde(default = "default_true")]
    pub auto_update_enabled: bool,
    /// Seconds between update checks.
    #[serde(default = "default_interval")]
    pub auto_update_interval_secs: u64,
    /// The release feed (a GitHub releases API URL; https, or http to loopback); unset =
    /// this project's own feed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_update_feed: Option<String>,
    /// Also install pre-releases.
    #[serde(default)]
    pub auto_update_prerelease: bool,
    /// Where models are stored (`~` expanded on load).
    #[serde(default = "default_models_root", serialize_with = "path_lossy")]
    pub models_root: PathBuf,
    /// Reconnect attempts before giving up; unset or 0 = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ws_reconnect_attempts: Option<u32>,
    /// Reject offers (code `paused`) while the person uses the computer.
    #[serde(default)]
    pub only_when_idle: bool,
    /// Take jobs at all: `false` rejects every offer (code `paused`) until enabled again
    /// (`studio-worker enable`). Unlike a pause it survives a restart.
    #[serde(default = "default_true")]
    pub auto_enabled: bool,
    /// The local control API's port on 127.0.0.1; `0`: an ephemeral one.
    /// `STUDIO_WORKER_LOCAL_API_PORT` overrides it.
    #[serde(default = "default_local_api_port")]
    pub local_api_port: u16,
    /// The local control API's bearer token, minted on the first `run`. Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_api_token: Option<String>,
    /// Minted on first registration; stable across re-requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_id: Option<String>,
    /// The pending registration request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_request_id: Option<String>,
    /// The raw registration secret (the poll bearer). Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_secret: Option<String>,
    /// `[job_deadline_secs]`: how long a job of each kind (`image = 1800`, `llm`,
    /// `audio_stt`, `audio_tts`, `video`) may run before the watchdog fails it retryable; a
    /// kind left out keeps its default (30 min, video 60 min). A table, so written after
    /// every plain key by [`Config::to_toml`].
    #[serde(default, skip_serializing)]
    pub job_deadline_secs: BTreeMap<TaskKind, u64>,
    /// Accept an `http://` / `ws://` `api_base_url` to a host other than this machine (the
    /// credentials then cross the network unencrypted; warned about at start).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_insecure_studio_url: bool,
    /// How much memory (GB) each engine may keep in loaded models between jobs; unset:
    /// [`studio_engines::DEFAULT_MODEL_MEMORY_BUDGET_PERCENT`] of this machine's memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_memory_budget_gb: Option<f64>,
    /// The Gradio engine's app; unset = `http://127.0.0.1:7860/` (loopback, Gradio's
    /// default port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gradio_endpoint_url: Option<String>,
    /// Which Gradio API the app is called through: `call` (unset) or `legacy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gradio_api: Option<String>,
    /// The app function's API name; unset = `predict`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gradio_api_name: Option<String>,
    /// A Gradio job's time limit in seconds; unset = 600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gradio_timeout_secs: Option<u64>,
    /// The model ids the Gradio app serves (advertised for `image`); empty = none
    /// advertised, any model of a `gradio` job served.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supported_models_override: Vec<String>,
    /// The ONNX Runtime library the Piper engine loads (`~` expanded); unset =
    /// `$ORT_DYLIB_PATH`, else `libonnxruntime.so` found by the dynamic loader.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "opt_path_lossy"
    )]
    pub onnxruntime_library: Option<PathBuf>,
    /// Keys this build does not know, kept so a save writes them back unchanged.
    #[serde(skip)]
    pub extra: BTreeMap<String, toml::Value>,
}

impl Default for Config {
    /// The first-run config: every documented default, no registration, `models_root`
    /// expanded.
    fn default() -> Config {
        Config {
            api_base_url: DEFAULT_API_BASE_URL.to_string(),
            worker_id: None,
            auth_token: None,
            vram_threshold_gb: DEFAULT_VRAM_THRESHOLD_GB,
            auto_start: false,
            start_minimised: true,
            auto_update_enabled: SELF_UPDATE_AVAILABLE,
            auto_update_interval_secs: DEFAULT_AUTO_UPDATE_INTERVAL_SECS,
            auto_update_feed: None,
            auto_update_prerelease: false,
            models_root: expand_home(Path::new(DEFAULT_MODELS_ROOT)),
            ws_reconnect_attempts: None,
            only_when_idle: false,
            auto_enabled: true,
            local_api_port: DEFAULT_LOCAL_API_PORT,
            local_api_token: None,
            install_id: None,
            registration_request_id: None,
            registration_secret: None,
            job_deadline_secs: BTreeMap::new(),
            allow_insecure_studio_url: false,
            model_memory_budget_gb: None,
            gradio_endpoint_url: None,
            gradio_api: None,
            gradio_api_name: None,
            gradio_timeout_secs: None,
            supported_models_override: Vec::new(),
            onnxruntime_library: None,
            extra: BTreeMap::new(),
        }
    }
}

/// Writes a path as a string (a non-UTF-8 path is written lossily rather than failing the
/// whole save).
fn path_lossy<S: serde::Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}

/// [`path_lossy`] for an optional path (only called when it is set).
fn opt_path_lossy<S: serde::Serializer>(path: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
    match path {
        Some(path) => path_lossy(path, s),
        None => s.serialize_none(),
    }
}

/// The default config file: `<OS config dir>/minis-studio-worker/config.toml` (Linux
/// `~/.config/minis-studio-worker/config.toml`).
pub fn default_config_path() -> Result<PathBuf, ShellError> {
    directories::ProjectDirs::from("gg", "minis", "minis-studio-worker")
        .map(|dirs| dirs.config_dir().join(CONFIG_FILE_NAME))
        .ok_or(ShellError::NoConfigDir)
}

/// The user's home directory, if known.
pub fn home_dir() -> Option<PathBuf> {
    directories::BaseDirs::new().map(|b| b.home_dir().to_path_buf())
}

/// Expands a leading `~` (alone, or followed by a path separator) to the home directory.
/// Without a home directory `~/models` becomes `$TMPDIR/studio-worker-models` and any other
/// `~` path is returned unchanged.
pub fn expand_home(path: &Path) -> PathBuf {
    expand_home_with(path, home_dir().as_deref())
}

fn expand_home_with(path: &Path, home: Option<&Path>) -> PathBuf {
    let Some(s) = path.to_str() else {
        return path.to_path_buf();
    };
    let rest = if s == "~" {
        ""
    } else if let Some(rest) = s.strip_prefix("~/").or_else(|| s.strip_prefix("~\\")) {
        rest
    } else {
        return path.to_path_buf();
    };
    match home {
        Some(home) if rest.is_empty() => home.to_path_buf(),
        Some(home) => home.join(rest),
        None if s == DEFAULT_MODELS_ROOT => std::env::temp_dir().join("studio-worker-models"),
        None => path.to_path_buf(),
    }
}

fn non_empty(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

/// Registration progress as recorded in the config file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistrationView<'a> {
    /// `worker_id` and `auth_token` are both set.
    Approved { worker_id: &'a str },
    /// A request is waiting for the operator.
    Pending { request_id: &'a str },
    /// Neither: the daemon requests approval when it runs.
    NotRegistered,
}

impl Config {
    /// Loads `path`, creating it with [`Config::default`] when it does not exist. A file
    /// group or others may read or write is made owner-only first, with a warning.
    pub fn load(path: &Path) -> Result<Config, ShellError> {
        if let Some(warning) = tighten_permissions(path) {
            tracing::warn!("{warning}");
        }
        match fs::read_to_string(path) {
            Ok(text) => {
                let config = Config::parse(path, &text)?;
                tracing::debug!(path = %path.display(), "config loaded");
                Ok(config)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let config = Config::default();
                config.save(path)?;
                tracing::info!(path = %path.display(), "config file created with defaults");
                Ok(config)
            }
            Err(source) => Err(ShellError::ConfigIo {
                path: path.to_path_buf(),
                action: "read",
                source,
            }),
        }
    }

    /// Parses config text (`path` only names the file in errors): unknown keys are kept in
    /// [`Config::extra`], empty id/secret strings count as unset, `~` is expanded, and the
    /// values are validated.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ShellError> {
        let mut config: Config = toml::from_str(text).map_err(|e| parse_error(path, text, &e))?;
        let table: toml::Table = toml::from_str(text).map_err(|e| parse_error(path, text, &e))?;
        config.extra = table
            .into_iter()
            .filter(|(k, _)| !KNOWN_KEYS.contains(&k.as_str()))
            .collect();
        for field in [
            &mut config.worker_id,
            &mut config.auth_token,
            &mut config.auto_update_feed,
            &mut config.install_id,
            &mut config.registration_request_id,
            &mut config.registration_secret,
            &mut config.local_api_token,
        ] {
            if field.as_deref().is_some_and(|s| s.trim().is_empty()) {
                *field = None;
            }
        }
        config.models_root = expand_home(&config.models_root);
        config.onnxruntime_library = config.onnxruntime_library.as_deref().map(expand_home);
        config
            .validate()
            .map_err(|message| ShellError::ConfigInvalid {
                path: path.to_path_buf(),
                message,
            })?;
        Ok(config)
    }

    /// Checks the values a file can get wrong; the message says how to fix it.
    pub fn validate(&self) -> Result<(), String> {
        validate_threshold(self.vram_threshold_gb)
            .map_err(|e| format!("vram_threshold_gb: {e}"))?;
        validate_api_base_url(&self.api_base_url).map_err(|e| format!("api_base_url: {e}"))?;
        if let Some((kind, _)) = self.job_deadline_secs.iter().find(|(_, s)| **s == 0) {
            return Err(format!(
                "job_deadline_secs.{kind}: must be at least 1 (seconds)"
            ));
        }
        if let Some(api) = &self.gradio_api {
            GradioApi::parse(api).map_err(|e| format!("gradio_api: {e}"))?;
        }
        self.gradio_settings().validate()?;
        if self.auto_update_interval_secs < MIN_AUTO_UPDATE_INTERVAL_SECS {
            return Err(format!(
                "auto_update_interval_secs: {} is below the minimum of \
                 {MIN_AUTO_UPDATE_INTERVAL_SECS} seconds",
                self.auto_update_interval_secs
            ));
        }
        if let Some(feed) = &self.auto_update_feed {
            studio_engines::models::check_url_for("auto_update_feed", feed)
                .map_err(|e| e.message)?;
        }
        if let (Some(host), false) = (
            insecure_remote_host(&self.api_base_url),
            self.allow_insecure_studio_url,
        ) {
            return Err(format!(
                "api_base_url: `{}` is plain text to {host}, another machine: the auth token \
                 and registration secret would cross the network unencrypted. Use https:// \
                 (or wss://), or set allow_insecure_studio_url = true to accept that",
                self.api_base_url.trim()
            ));
        }
        if let Some(gb) = self.model_memory_budget_gb {
            if !(gb.is_finite() && gb >= 0.0) {
                return Err(format!(
                    "model_memory_budget_gb: must be a number of GB >= 0, got {gb}"
                ));
            }
        }
        Ok(())
    }

    /// The warning to log at start when the config accepts a plain-text studio URL to
    /// another machine (`allow_insecure_studio_url = true`).
    pub fn insecure_url_warning(&self) -> Option<String> {
        insecure_url_warning(&self.api_base_url, self.allow_insecure_studio_url)
    }

    /// The model memory budget in bytes: `model_memory_budget_gb`, or the engines' default
    /// for a machine with `total_ram` bytes of memory.
    pub fn model_memory_budget_bytes(&self, total_ram: Option<u64>) -> u64 {
        match self.model_memory_budget_gb {
            Some(gb) => (gb * 1e9) as u64,
            None => studio_engines::EngineSettings::default_budget(total_ram),
        }
    }

    /// The Gradio engine's settings from the `gradio_*` keys and
    /// `supported_models_override`, unset keys at the engine's defaults (an unknown
    /// `gradio_api`, which [`Config::validate`] refuses, counts as unset).
    pub fn gradio_settings(&self) -> GradioSettings {
        let defaults = GradioSettings::default();
        GradioSettings {
            endpoint_url: self
                .gradio_endpoint_url
                .clone()
                .unwrap_or(defaults.endpoint_url),
            api: self
                .gradio_api
                .as_deref()
                .and_then(|api| GradioApi::parse(api).ok())
                .unwrap_or(defaults.api),
            api_name: self.gradio_api_name.clone().unwrap_or(defaults.api_name),
            models: self.supported_models_override.clone(),
            timeout: self
                .gradio_timeout_secs
                .map_or(defaults.timeout, std::time::Duration::from_secs),
            max_result_bytes: defaults.max_result_bytes,
        }
    }

    /// Writes the config to `path` atomically with owner-only permissions, creating the
    /// directory if needed.
    pub fn save(&self, path: &Path) -> Result<(), ShellError> {
        atomic_write(path, self.to_toml().as_bytes())?;
        tracing::debug!(path = %path.display(), "config saved");
        Ok(())
    }

    /// The TOML text of this config, secrets included (what [`Config::save`] writes).
    pub fn to_toml(&self) -> String {
        // Known keys first, in declaration order (no tables among them), then the unknown
        // keys (plain values before tables, as TOML requires).
        let mut text = toml::to_string(self).expect("config values always serialise");
        if !self.extra.is_empty() {
            let extra: toml::Table = self.extra.clone().into_iter().collect();
            match toml::to_string(&extra) {
                Ok(more) => {
                    if !text.is_empty() && !text.ends_with('\n') {
                        text.push('\n');
                    }
                    text.push_str(&more);
                }
                Err(e) => tracing::warn!("unknown config keys could not be written back: {e}"),
            }
        }
        if !self.job_deadline_secs.is_empty() {
            #[derive(Serialize)]
            struct Section<'a> {
                job_deadline_secs: &'a BTreeMap<TaskKind, u64>,
            }
            let section = Section {
                job_deadline_secs: &self.job_deadline_secs,
            };
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&toml::to_string(&section).expect("deadlines always serialise"));
        }
        text
    }

    /// A copy with every secret replaced by [`REDACTED`]: `auth_token`,
    /// `registration_secret`, `local_api_token`, and unknown keys whose names contain
    /// `token`, `secret`, `password`, `dsn` or `key` (at any depth).
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        for field in [
            &mut c.auth_token,
            &mut c.registration_secret,
            &mut c.local_api_token,
        ] {
            if field.is_some() {
                *field = Some(REDACTED.to_string());
            }
        }
        for (k, v) in c.extra.iter_mut() {
            redact_value(k, v);
        }
        c
    }

    /// The registration state recorded in the file.
    pub fn registration(&self) -> RegistrationView<'_> {
        match (
            non_empty(&self.worker_id),
            non_empty(&self.auth_token),
            non_empty(&self.registration_request_id),
        ) {
            (Some(worker_id), Some(_), _) => RegistrationView::Approved { worker_id },
            (_, _, Some(request_id)) => RegistrationView::Pending { request_id },
            _ => RegistrationView::NotRegistered,
        }
    }

    /// The core's config: settings and registration from this file, `host` from the probe,
    /// `models` from the engine roster, `seed` from the OS RNG. Timings and limits are the
    /// protocol's defaults, except the update interval (`auto_update_interval_secs`) and
    /// the job deadlines (`job_deadline_secs`).
    pub fn to_worker_config(
        &self,
        host: HostFacts,
        models: BTreeMap<TaskKind, Vec<String>>,
        seed: u64,
    ) -> WorkerConfig {
        let credentials = match (non_empty(&self.worker_id), non_empty(&self.auth_token)) {
            (Some(worker_id), Some(auth_token)) => Some(Credentials {
                worker_id: worker_id.to_string(),
                auth_token: auth_token.into(),
            }),
            _ => None,
        };
        let mut timings = Timings {
            update_interval: std::time::Duration::from_secs(self.auto_update_interval_secs),
            ..Timings::default()
        };
        for (kind, secs) in &self.job_deadline_secs {
            *timings.job_deadlines.for_kind_mut(*kind) = std::time::Duration::from_secs(*secs);
        }
        WorkerConfig {
            api_base_url: self.api_base_url.clone(),
            credentials,
            registration: RegistrationState {
                install_id: non_empty(&self.install_id).map(str::to_string),
                request_id: non_empty(&self.registration_request_id).map(str::to_string),
                secret: non_empty(&self.registration_secret).map(Secret::from),
            },
            vram_threshold_gb: self.vram_threshold_gb,
            auto_enabled: self.auto_enabled,
            auto_update_enabled: self.auto_update_enabled,
            start_minimised: self.start_minimised,
            only_when_idle: self.only_when_idle,
            reconnect_attempts: self.ws_reconnect_attempts.unwrap_or(0),
            seed,
            host,
            models,
            timings,
            limits: Limits::default(),
        }
    }

    /// Applies a `Command::Persist` from the core: every registration field takes the
    /// persisted value (absent = cleared).
    pub fn apply_persist(&mut self, state: &PersistedState) {
        self.install_id = state.install_id.clone();
        self.registration_request_id = state.registration_request_id.clone();
        self.registration_secret = state
            .registration_secret
            .as_ref()
            .map(|s| s.expose().to_string());
        self.worker_id = state.worker_id.clone();
        self.auth_token = state.auth_token.as_ref().map(|s| s.expose().to_string());
    }

    /// Forgets the registration (`register --reset`): worker id, auth token, request id,
    /// secret and install id.
    pub fn clear_registration(&mut self) {
        self.apply_persist(&PersistedState {
            install_id: None,
            registration_request_id: None,
            registration_secret: None,
            worker_id: None,
            auth_token: None,
        });
    }
}

impl fmt::Display for Config {
    /// The redacted TOML text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted().to_toml())
    }
}

impl fmt::Debug for Config {
    /// Redacted, like `Display`: a config in a log line never leaks a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.redacted();
        f.debug_struct("Config")
            .field("api_base_url", &r.api_base_url)
            .field("worker_id", &r.worker_id)
            .field("auth_token", &r.auth_token)
            .field("vram_threshold_gb", &r.vram_threshold_gb)
            .field("auto_start", &r.auto_start)
            .field("start_minimised", &r.start_minimised)
            .field("auto_update_enabled", &r.auto_update_enabled)
            .field("auto_update_interval_secs", &r.auto_update_interval_secs)
            .field("auto_update_feed", &r.auto_update_feed)
            .field("auto_update_prerelease", &r.auto_update_prerelease)
            .field("models_root", &r.models_root)
            .field("ws_reconnect_attempts", &r.ws_reconnect_attempts)
            .field("only_when_idle", &r.only_when_idle)
            .field("auto_enabled", &r.auto_enabled)
            .field("local_api_port", &r.local_api_port)
            .field("local_api_token", &r.local_api_token)
            .field("install_id", &r.install_id)
            .field("registration_request_id", &r.registration_request_id)
            .field("registration_secret", &r.registration_secret)
            .field("allow_insecure_studio_url", &r.allow_insecure_studio_url)
            .field("model_memory_budget_gb", &r.model_memory_budget_gb)
            .field("gradio_endpoint_url", &r.gradio_endpoint_url)
            .field("gradio_api", &r.gradio_api)
            .field("gradio_api_name", &r.gradio_api_name)
            .field("gradio_timeout_secs", &r.gradio_timeout_secs)
            .field("supported_models_override", &r.supported_models_override)
            .field("onnxruntime_library", &r.onnxruntime_library)
            .field("extra", &r.extra)
            .finish()
    }
}

fn looks_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["token", "secret", "password", "dsn", "key"]
        .iter()
        .any(|w| k.contains(w))
}

fn redact_value(key: &str, value: &mut toml::Value) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                redact_value(k, v);
            }
        }
        toml::Value::Array(items) if !looks_secret(key) => {
            for v in items.iter_mut() {
                redact_value(key, v);
            }
        }
        _ if looks_secret(key) => *value = toml::Value::String(REDACTED.to_string()),
        _ => {}
    }
}

/// `Ok` for a finite threshold >= 0.
pub fn validate_threshold(gb: f32) -> Result<(), String> {
    if gb.is_finite() && gb >= 0.0 {
        Ok(())
    } else {
        Err(format!("must be a number of GB >= 0, got {gb}"))
    }
}

/// `Ok` for `scheme://host...` with scheme http, https, ws or wss.
pub fn validate_api_base_url(url: &str) -> Result<(), String> {
    let url = url.trim();
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!(
            "`{url}` is not a URL with a scheme (expected e.g. {DEFAULT_API_BASE_URL})"
        ));
    };
    if !matches!(
        scheme.to_ascii_lowercase().as_str(),
        "http" | "https" | "ws" | "wss"
    ) {
        return Err(format!(
            "scheme `{scheme}` is not supported (use https://, or http:// for a local studio)"
        ));
    }
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.chars().any(char::is_whitespace) {
        return Err(format!("`{url}` has no valid host"));
    }
    Ok(())
}

/// The host of a plain-text (`http://`, `ws://`) URL when it is not this machine (loopback
/// hosts are fine: nothing leaves the box); `None` for https / wss or a loopback host.
pub fn insecure_remote_host(url: &str) -> Option<String> {
    let (scheme, rest) = url.trim().split_once("://")?;
    if !matches!(scheme.to_ascii_lowercase().as_str(), "http" | "ws") {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = hostport.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        hostport.split(':').next().unwrap_or("")
    };
    (!studio_engines::models::is_loopback_host(host)).then(|| host.to_string())
}

/// The start-up warning for a plain-text `url` to another machine that the config
/// accepts (`allowed`); `None` otherwise.
pub fn insecure_url_warning(url: &str, allowed: bool) -> Option<String> {
    let host = insecure_remote_host(url).filter(|_| allowed)?;
    Some(format!(
        "allow_insecure_studio_url = true: the studio URL `{}` is plain text to {host}; the \
         auth token and registration secret cross the network unencrypted",
        url.trim()
    ))
}

/// Makes the file at `path` owner-only when group or others may read or write it; the
/// warning to log when it did (or could not). Nothing on other platforms, or when the file
/// does not exist.
#[cfg(unix)]
pub fn tighten_permissions(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(path).ok()?.permissions().mode();
    if mode & 0o077 == 0 {
        return None;
    }
    let tight = mode & 0o700;
    Some(
        match fs::set_permissions(path, fs::Permissions::from_mode(tight)) {
            Ok(()) => format!(
                "{} was open to other users (mode {:04o}); it holds secrets, so it is now \
                 {:04o}",
                path.display(),
                mode & 0o7777,
                tight
            ),
            Err(e) => format!(
                "{} is open to other users (mode {:04o}) and could not be tightened ({e}): \
                 it holds secrets; run `chmod 600` on it",
                path.display(),
                mode & 0o7777
            ),
        },
    )
}

/// See the unix version: other platforms keep their own access control.
#[cfg(not(unix))]
pub fn tighten_permissions(_path: &Path) -> Option<String> {
    None
}

fn parse_error(path: &Path, text: &str, e: &toml::de::Error) -> ShellError {
    let (line, column) = match e.span() {
        Some(span) => {
            let (l, c) = line_column(text, span.start);
            (Some(l), Some(c))
        }
        None => (None, None),
    };
    ShellError::ConfigParse {
        path: path.to_path_buf(),
        line,
        column,
        message: sanitize_message(e.message()),
    }
}

/// 1-based line and character column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Removes every quoted fragment (`"…"`, `'…'` or `` `…` ``) from a parser message unless it
/// is a known config key or short punctuation (a grammar token such as `` `=` ``): serde
/// messages quote the offending value (`invalid type: string "…", expected f32`), which
/// could be a secret.
fn sanitize_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = find_opening_quote(rest) {
        let quote = rest[start..].chars().next().unwrap_or('"');
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find(quote) {
            Some(end) => {
                let inner = &after[..end];
                let keep = KNOWN_KEYS.contains(&inner)
                    || matches!(inner, "true" | "false" | "inf" | "nan")
                    || (inner.chars().count() <= 2 && !inner.chars().any(char::is_alphanumeric));
                out.push(quote);
                out.push_str(if keep { inner } else { "…" });
                out.push(quote);
                rest = &after[end + 1..];
            }
            None => {
                // An unbalanced quote: drop everything after it.
                out.push(quote);
                out.push('…');
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out.trim_end().to_string()
}

/// The next `"` or `` ` ``, or a `'` that opens a quote (not an apostrophe as in "can't").
fn find_opening_quote(s: &str) -> Option<usize> {
    let mut prev: Option<char> = None;
    for (i, c) in s.char_indices() {
        match c {
            '"' | '`' => return Some(i),
            '\'' if !prev.is_some_and(char::is_alphanumeric) => return Some(i),
            _ => {}
        }
        prev = Some(c);
    }
    None
}

/// Writes `bytes` to `path` atomically: a temp file in the same directory (owner-only on
/// Unix), write, fsync, rename over `path`, fsync the directory. On failure the temp file
/// is removed and `path` is untouched.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), ShellError> {
    write_atomically(path, bytes).map_err(|(action, source)| ShellError::ConfigIo {
        path: path.to_path_buf(),
        action,
        source,
    })
}

/// [`atomic_write`] for any file (the durable outbox too): the error names the step that
/// failed (`create the directory of`, `write`).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), (&'static str, io::Error)> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    create_private_dir(&dir).map_err(|e| ("create the directory of", e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| CONFIG_FILE_NAME.to_string());
    let (tmp, mut file) = create_temp(&dir, &name).map_err(|e| ("write", e))?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| {
            drop(file);
            fs::rename(&tmp, path)
        });
    if let Err(source) = written {
        let _ = fs::remove_file(&tmp);
        return Err(("write", source));
    }
    sync_dir(&dir);
    Ok(())
}

/// Creates `dir` and its missing parents; on Unix the directories created are owner-only
/// (`0700`: the config directory holds secrets). Existing directories are left alone.
fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

fn create_temp(dir: &Path, name: &str) -> io::Result<(PathBuf, File)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut last = None;
    for _ in 0..16 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.tmp-{}-{n}", std::process::id()));
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        match options.open(&tmp) {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free temp file name")))
}

#[cfg(unix)]
pub(crate) fn sync_dir(dir: &Path) {
    // Makes the rename durable. Best effort: the data itself is already synced.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(not(unix))]
pub(crate) fn sync_dir(_dir: &Path) {}

mod settings;

#[cfg(test)]
mod tests;
