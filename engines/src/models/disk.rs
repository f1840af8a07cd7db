//! The free-disk preflight.

use std::path::Path;

use crate::error::EngineError;
use crate::job_log;

/// `bytes` plus `headroom_percent` %, saturating (never overflows).
pub fn needed_with_headroom(bytes: u64, headroom_percent: u64) -> u64 {
    let total = u128::from(bytes) * u128::from(100 + headroom_percent) / 100;
    u64::try_from(total).unwrap_or(u64::MAX)
}

/// Bytes available to this user on the file system holding `path`, or of its nearest
/// existing ancestor (the models root may not exist yet). `None` where it cannot be told:
/// a platform without a free-space call, or a failing call; the preflight is then skipped
/// (with a log line) rather than blocking every download.
pub fn available_space(path: &Path) -> Option<u64> {
    let mut at = path;
    loop {
        if at.exists() {
            break;
        }
        at = at.parent()?;
        if at.as_os_str().is_empty() {
            at = Path::new(".");
        }
    }
    free_bytes(at)
}

#[cfg(any(unix, windows))]
fn free_bytes(path: &Path) -> Option<u64> {
    match fs4::available_space(path) {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::warn!("cannot tell the free space at {}: {e}", path.display());
            None
        }
    }
}

#[cfg(not(any(unix, windows)))]
fn free_bytes(_path: &Path) -> Option<u64> {
    None
}

/// Fails (not retryable) when `need` bytes plus the headroom do not fit at `root`.
pub(crate) fn preflight(root: &Path, need: u64, headroom_percent: u64) -> Result<(), EngineError> {
    let want = needed_with_headroom(need, headroom_percent);
    match available_space(root) {
        Some(free) if free < want => Err(EngineError::failed(
            format!(
                "not enough free disk space for the model files under {}: {} needed \
                 ({} plus {headroom_percent} % headroom), {} available",
                root.display(),
                human(want),
                human(need),
                human(free)
            ),
            false,
        )),
        Some(_) => Ok(()),
        None => {
            job_log::warn(&format!(
                "free disk space unknown at {}; downloading {} without the preflight",
                root.display(),
                human(need)
            ));
            Ok(())
        }
    }
}

/// `1.5 GiB`, `320.0 MiB`, `12 B`.
pub(crate) fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headroom_is_ten_percent_and_saturates() {
        assert_eq!(needed_with_headroom(1000, 10), 1100);
        assert_eq!(needed_with_headroom(0, 10), 0);
        assert_eq!(
            needed_with_headroom(u64::MAX / 2, 10),
            10_145_709_240_540_253_387
        );
        assert_eq!(needed_with_headroom(u64::MAX, 10), u64::MAX);
    }

    #[test]
    fn free_space_is_found_through_missing_directories() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        if cfg!(any(unix, windows)) {
            assert!(available_space(&deep).is_some_and(|n| n > 0));
        }
    }

    #[test]
    fn an_impossible_need_fails_not_retryable() {
        let dir = tempfile::tempdir().unwrap();
        let e = preflight(dir.path(), u64::MAX / 2, 10).unwrap_err();
        assert!(!e.retryable());
        assert!(e.message.contains("not enough free disk space"), "{e}");
        preflight(dir.path(), 1, 10).unwrap();
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human(12), "12 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
    }
}
