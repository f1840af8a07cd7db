//! What the shells tell the engines: where model files live and how much memory loaded
//! models may keep.

use std::path::PathBuf;

use crate::gradio::GradioSettings;

/// The memory loaded models may keep between jobs when neither the config nor the
/// machine's memory size says otherwise: 8 GiB. A real engine keeps a model loaded for the
/// next job while the sum of the loaded models' sizes stays within the budget, and unloads
/// the least recently used ones first.
pub const DEFAULT_MODEL_MEMORY_BUDGET_BYTES: u64 = 8 * 1024 * 1024 * 1024;

/// The default budget on a machine whose memory size is known: this share of it (percent).
pub const DEFAULT_MODEL_MEMORY_BUDGET_PERCENT: u64 = 50;

/// The models root of [`EngineSettings::default`] (tests, `Router::new_default`):
/// `$TMPDIR/studio-worker-models`, the config's own fallback (PROTOCOL.md §7.2).
pub const DEFAULT_MODELS_DIR_NAME: &str = "studio-worker-models";

/// The engines' settings, built by the shells from `config.toml`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineSettings {
    /// Where verified model files are kept (`<models_root>/<model id>/<file>`), the
    /// config's `models_root`.
    pub models_root: PathBuf,
    /// How many bytes of loaded models an engine may keep in memory between jobs
    /// ([`DEFAULT_MODEL_MEMORY_BUDGET_BYTES`] by default).
    pub model_memory_budget_bytes: u64,
    /// The Gradio engine's app and the models it serves ([`GradioSettings::default`]:
    /// `http://127.0.0.1:7860/`, no models listed).
    pub gradio: GradioSettings,
    /// The ONNX Runtime library the Piper engine loads (config `onnxruntime_library`);
    /// `None`: `ORT_DYLIB_PATH`, else the platform's default name (`libonnxruntime.so`).
    pub onnxruntime_library: Option<PathBuf>,
}

impl EngineSettings {
    /// The default model memory budget on a machine with `total_ram` bytes of memory:
    /// [`DEFAULT_MODEL_MEMORY_BUDGET_PERCENT`] of it, or
    /// [`DEFAULT_MODEL_MEMORY_BUDGET_BYTES`] when the size is unknown.
    pub fn default_budget(total_ram: Option<u64>) -> u64 {
        match total_ram {
            Some(bytes) if bytes > 0 => {
                (u128::from(bytes) * u128::from(DEFAULT_MODEL_MEMORY_BUDGET_PERCENT) / 100) as u64
            }
            _ => DEFAULT_MODEL_MEMORY_BUDGET_BYTES,
        }
    }

    /// Settings with `models_root` and every other value at its default.
    pub fn with_models_root(models_root: impl Into<PathBuf>) -> EngineSettings {
        EngineSettings {
            models_root: models_root.into(),
            ..EngineSettings::default()
        }
    }
}

impl Default for EngineSettings {
    fn default() -> EngineSettings {
        EngineSettings {
            models_root: std::env::temp_dir().join(DEFAULT_MODELS_DIR_NAME),
            model_memory_budget_bytes: DEFAULT_MODEL_MEMORY_BUDGET_BYTES,
            gradio: GradioSettings::default(),
            onnxruntime_library: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let s = EngineSettings::default();
        assert_eq!(s.model_memory_budget_bytes, 8 << 30);
        assert!(s.models_root.ends_with(DEFAULT_MODELS_DIR_NAME));
        let s = EngineSettings::with_models_root("/m");
        assert_eq!(s.models_root, PathBuf::from("/m"));
        assert_eq!(
            s.model_memory_budget_bytes,
            DEFAULT_MODEL_MEMORY_BUDGET_BYTES
        );
        assert_eq!(EngineSettings::default_budget(Some(64 << 30)), 32 << 30);
        assert_eq!(
            EngineSettings::default_budget(None),
            DEFAULT_MODEL_MEMORY_BUDGET_BYTES
        );
        assert_eq!(
            EngineSettings::default_budget(Some(0)),
            DEFAULT_MODEL_MEMORY_BUDGET_BYTES
        );
    }
}
