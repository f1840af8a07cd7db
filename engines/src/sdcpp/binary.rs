//! Finding `sd-cli`: [`SD_CLI_ENV`], else `<models_root>/bin/sd-cli`, else the `PATH`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// The environment variable naming the `sd-cli` binary to run (an absolute path).
pub const SD_CLI_ENV: &str = "STUDIO_WORKER_SD_CLI";

/// The binary's file name.
pub const BINARY_NAME: &str = if cfg!(windows) {
    "sd-cli.exe"
} else {
    "sd-cli"
};

/// Where the binary was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// [`SD_CLI_ENV`].
    Env,
    /// `<models_root>/bin/`.
    ModelsRoot,
    /// A directory of the `PATH`.
    Path,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Origin::Env => SD_CLI_ENV,
            Origin::ModelsRoot => "the models root's bin/",
            Origin::Path => "PATH",
        })
    }
}

/// A file this process may run.
pub fn is_executable(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    if !meta.is_file() {
        return false;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        true
    }
}

/// Resolves the binary from the values of [`SD_CLI_ENV`] and `PATH` (passed in, so tests
/// need not change the process environment). A set, non-empty [`SD_CLI_ENV`] is final: when
/// it names no executable file the result is the error saying so, never another binary.
pub fn locate(
    models_root: &Path,
    env_value: Option<&OsStr>,
    path_value: Option<&OsStr>,
) -> Result<(PathBuf, Origin), String> {
    if let Some(value) = env_value.filter(|v| !v.is_empty()) {
        let path = PathBuf::from(value);
        return if is_executable(&path) {
            Ok((path, Origin::Env))
        } else {
            Err(format!(
                "{SD_CLI_ENV}={} is not an executable file",
                path.display()
            ))
        };
    }
    let in_root = models_root.join("bin").join(BINARY_NAME);
    if is_executable(&in_root) {
        return Ok((in_root, Origin::ModelsRoot));
    }
    if let Some(paths) = path_value {
        for dir in std::env::split_paths(paths) {
            let candidate = dir.join(BINARY_NAME);
            if dir.is_absolute() && is_executable(&candidate) {
                return Ok((candidate, Origin::Path));
            }
        }
    }
    Err(format!(
        "no sd-cli found: set {SD_CLI_ENV} to the binary, put it at {}, or on the PATH",
        in_root.display()
    ))
}

/// [`locate`] with this process's environment.
pub fn locate_from_env(models_root: &Path) -> Result<(PathBuf, Origin), String> {
    locate(
        models_root,
        std::env::var_os(SD_CLI_ENV).as_deref(),
        std::env::var_os("PATH").as_deref(),
    )
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn executable(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn the_env_wins_then_the_models_root_then_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("models");
        let on_path = tmp.path().join("path-dir");
        let env_bin = tmp.path().join("elsewhere/sd-cli-custom");
        executable(&on_path.join(BINARY_NAME));
        let path_var = std::env::join_paths([Path::new("relative"), &on_path]).unwrap();

        let found = locate(&root, None, Some(&path_var)).unwrap();
        assert_eq!(found, (on_path.join(BINARY_NAME), Origin::Path));

        executable(&root.join("bin").join(BINARY_NAME));
        let found = locate(&root, Some(OsStr::new("")), Some(&path_var)).unwrap();
        assert_eq!(found, (root.join("bin/sd-cli"), Origin::ModelsRoot));

        executable(&env_bin);
        let found = locate(&root, Some(env_bin.as_os_str()), Some(&path_var)).unwrap();
        assert_eq!(found, (env_bin.clone(), Origin::Env));
    }

    #[test]
    fn a_wrong_env_value_or_nothing_found_is_an_error_naming_the_fix() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("models");
        executable(&root.join("bin").join(BINARY_NAME));
        let missing = tmp.path().join("nope");
        let e = locate(&root, Some(missing.as_os_str()), None).unwrap_err();
        assert!(
            e.contains(SD_CLI_ENV) && e.contains("not an executable"),
            "{e}"
        );

        let plain = tmp.path().join("plain-file");
        std::fs::write(&plain, b"x").unwrap();
        assert!(!is_executable(&plain), "no execute bit");
        assert!(!is_executable(tmp.path()), "a directory");

        let empty = tmp.path().join("empty-root");
        let e = locate(&empty, None, Some(OsStr::new(""))).unwrap_err();
        assert!(
            e.contains("no sd-cli found") && e.contains(SD_CLI_ENV),
            "{e}"
        );
    }
}
