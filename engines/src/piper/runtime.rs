//! ONNX Runtime, loaded at run time (the `ort` crate's `load-dynamic`): nothing is
//! downloaded or linked when the worker is built, so a worker without the library still
//! starts, and its `onnx` jobs fail "engine not available" with the install hint.
//!
//! Which library: the config's `onnxruntime_library`, else the environment variable
//! [`LIBRARY_ENV`] (`ORT_DYLIB_PATH`, the name `ort` programs share), else
//! [`default_library`] (`libonnxruntime.so` on Linux, found by the dynamic loader's search:
//! `LD_LIBRARY_PATH`, the system library directories). The library is loaded once per
//! process; a load that failed is tried again by the next job (the operator may have
//! installed it meanwhile).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{EngineError, EngineErrorKind};

/// The environment variable naming the library when the config does not.
pub const LIBRARY_ENV: &str = "ORT_DYLIB_PATH";

/// The ONNX Runtime version the tests and benchmarks run (the `onnxruntime` PyPI wheel).
pub const TESTED_VERSION: &str = "1.31.1";

/// How to get the library, for the "not available" message.
pub const INSTALL_HINT: &str = "install ONNX Runtime (1.17 or newer; e.g. `pip install \
     onnxruntime==1.31.1` ships onnxruntime/capi/libonnxruntime.so.1.31.1, or take \
     lib/libonnxruntime.so from an official release archive) and set `onnxruntime_library` in \
     config.toml (or ORT_DYLIB_PATH) to that file";

/// The library's file name on this platform (`libonnxruntime.so`, `libonnxruntime.dylib`,
/// `onnxruntime.dll`), looked up by the dynamic loader.
pub fn default_library() -> PathBuf {
    PathBuf::from(format!(
        "{}onnxruntime{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ))
}

/// The library to load: `configured`, else `$ORT_DYLIB_PATH` (when set and not empty),
/// else [`default_library`].
pub fn library_path(configured: Option<&Path>) -> PathBuf {
    resolve(configured, std::env::var_os(LIBRARY_ENV).map(PathBuf::from))
}

fn resolve(configured: Option<&Path>, env: Option<PathBuf>) -> PathBuf {
    configured
        .map(Path::to_path_buf)
        .or(env.filter(|p| !p.as_os_str().is_empty()))
        .unwrap_or_else(default_library)
}

/// The library loaded in this process, once one is.
static LOADED: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Loads ONNX Runtime from `path` unless a library is loaded already (then that one stays:
/// a process has one). A library that cannot be loaded, or is older than the API `ort`
/// speaks, is `EngineNotAvailable` with [`INSTALL_HINT`].
pub fn ensure_loaded(path: &Path) -> Result<(), EngineError> {
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    if loaded.is_some() {
        return Ok(());
    }
    let builder = ort::init_from(path).map_err(|e| {
        EngineError::new(
            EngineErrorKind::EngineNotAvailable,
            format!(
                "the piper engine needs ONNX Runtime, which could not be loaded from `{}` \
                 ({e}); {INSTALL_HINT}",
                path.display()
            ),
        )
    })?;
    builder.with_name("studio-worker").commit();
    *loaded = Some(path.to_path_buf());
    Ok(())
}

/// The library loaded in this process, if any.
pub fn loaded_library() -> Option<PathBuf> {
    LOADED.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_then_the_environment_then_the_default() {
        let from_config = Path::new("/opt/ort/libonnxruntime.so.1.31.1");
        let from_env = PathBuf::from("/usr/local/lib/libonnxruntime.so");
        assert_eq!(
            resolve(Some(from_config), Some(from_env.clone())),
            from_config
        );
        assert_eq!(resolve(None, Some(from_env.clone())), from_env);
        assert_eq!(resolve(None, Some(PathBuf::new())), default_library());
        assert_eq!(resolve(None, None), default_library());
        #[cfg(target_os = "linux")]
        assert_eq!(default_library(), PathBuf::from("libonnxruntime.so"));
    }
}
