//! The engine roster both binaries run: [`engine_router`].
//!
//! # Test / demo hook: `STUDIO_WORKER_SYNTHETIC_DELAY_MS`
//!
//! When the environment variable [`SYNTHETIC_DELAY_ENV`] holds a whole number of
//! milliseconds greater than zero, every synthetic job takes that much longer (outputs
//! unchanged), so a job stays in flight long enough to observe busy rejects, a graceful
//! shutdown waiting for it, or a reconnect during it. It is meant for the end-to-end tests
//! and demos only: with it set, the roster is the delayed synthetic engine alone. Unset,
//! empty or `0`: the normal roster (`studio_engines::Router::with_settings` with the
//! config's values, [`engine_settings`]). Anything else is ignored with a warning.

use std::time::Duration;

use studio_engines::{EngineSettings, Router, SyntheticEngine};

use crate::config::Config;

/// The test/demo hook: extra milliseconds per synthetic job (see the module docs).
pub const SYNTHETIC_DELAY_ENV: &str = "STUDIO_WORKER_SYNTHETIC_DELAY_MS";

/// What the engines take from the config: `models_root` (verified model downloads go to
/// `<models_root>/<model id>/`), the loaded-model memory budget (`model_memory_budget_gb`,
/// by default a share of this machine's memory), the Gradio engine's app and models
/// ([`Config::gradio_settings`]) and the ONNX Runtime library (`onnxruntime_library`).
pub fn engine_settings(config: &Config) -> EngineSettings {
    EngineSettings {
        model_memory_budget_bytes: config
            .model_memory_budget_bytes(crate::host::total_memory_bytes()),
        gradio: config.gradio_settings(),
        onnxruntime_library: config.onnxruntime_library.clone(),
        ..EngineSettings::with_models_root(config.models_root.clone())
    }
}

/// The engines of `studio-worker run`: every compiled-in engine, set up from `config`
/// ([`engine_settings`]), or the delayed synthetic engine when [`SYNTHETIC_DELAY_ENV`] asks
/// for one.
pub fn engine_router(config: &Config) -> Router {
    let settings = engine_settings(config);
    let value = std::env::var(SYNTHETIC_DELAY_ENV).ok();
    match synthetic_delay(value.as_deref()) {
        Ok(None) => Router::with_settings(&settings),
        Ok(Some(delay)) => {
            tracing::warn!(
                "{SYNTHETIC_DELAY_ENV}={}: test hook, every synthetic job takes that much \
                 longer and only the synthetic engine is available",
                delay.as_millis()
            );
            Router::new(vec![Box::new(SyntheticEngine::new().with_delay(delay))])
        }
        Err(e) => {
            tracing::warn!("{SYNTHETIC_DELAY_ENV} ignored: {e}");
            Router::with_settings(&settings)
        }
    }
}

/// Parses the hook's value: `None` / empty / `0` -> no delay.
pub fn synthetic_delay(value: Option<&str>) -> Result<Option<Duration>, String> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let ms: u64 = v
        .parse()
        .map_err(|_| format!("`{v}` is not a whole number of milliseconds"))?;
    Ok((ms > 0).then(|| Duration::from_millis(ms)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use studio_engines::Engine;

    #[test]
    fn the_delay_value_parses() {
        assert_eq!(synthetic_delay(None), Ok(None));
        assert_eq!(synthetic_delay(Some("")), Ok(None));
        assert_eq!(synthetic_delay(Some("0")), Ok(None));
        assert_eq!(
            synthetic_delay(Some(" 250 ")),
            Ok(Some(Duration::from_millis(250)))
        );
        assert!(synthetic_delay(Some("1.5")).is_err());
        assert!(synthetic_delay(Some("-3")).is_err());
    }

    #[test]
    fn the_default_roster_is_the_default_router() {
        // The variable is normally unset in test runs; only compare when it is.
        if std::env::var_os(SYNTHETIC_DELAY_ENV).is_none() {
            assert_eq!(
                engine_router(&Config::default()).capabilities(),
                Router::new_default().capabilities()
            );
        }
    }

    #[test]
    fn the_engines_get_the_configured_models_root() {
        let config = Config {
            models_root: std::path::PathBuf::from("/srv/models"),
            ..Config::default()
        };
        let settings = engine_settings(&config);
        assert_eq!(settings.models_root, config.models_root);
        assert_eq!(
            settings.model_memory_budget_bytes,
            EngineSettings::default_budget(crate::host::total_memory_bytes())
        );
        let config = Config {
            model_memory_budget_gb: Some(3.0),
            ..config
        };
        assert_eq!(
            engine_settings(&config).model_memory_budget_bytes,
            3_000_000_000
        );
        assert_eq!(settings.onnxruntime_library, None);
    }

    #[test]
    fn the_engines_get_the_configured_onnx_runtime() {
        let config = Config::parse(
            std::path::Path::new("c.toml"),
            "api_base_url = \"https://s/\"\nvram_threshold_gb = 1\n\
             onnxruntime_library = \"/opt/ort/libonnxruntime.so.1.31.1\"\n",
        )
        .unwrap();
        assert_eq!(
            engine_settings(&config).onnxruntime_library.as_deref(),
            Some(std::path::Path::new("/opt/ort/libonnxruntime.so.1.31.1"))
        );
        // Written back as it was read.
        assert!(config
            .to_toml()
            .contains("onnxruntime_library = \"/opt/ort/libonnxruntime.so.1.31.1\""));
    }
}
