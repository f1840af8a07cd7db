//! One download per file at a time: an in-process guard plus an OS lock on `<file>.lock`
//! (so other processes sharing the models root wait too).

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{with_suffix, LOCK_POLL, LOCK_SUFFIX};
use crate::error::EngineError;
use crate::job_log;

/// Files being downloaded by this process (the in-process half of the lock).
static IN_PROGRESS: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

/// Held while a file is downloaded: the path in [`IN_PROGRESS`] and an exclusive OS lock
/// on `<file>.lock` (so other processes sharing the models root wait too). Both are
/// released on drop; the lock file itself stays (removing it would race).
pub(crate) struct DownloadLock {
    key: PathBuf,
    _file: Option<File>,
}

impl DownloadLock {
    pub(crate) fn acquire(dest: &Path, wait: Duration) -> Result<DownloadLock, EngineError> {
        let deadline = Instant::now() + wait;
        let busy = || {
            EngineError::failed(
                format!(
                    "another download of {} is still running after {}s",
                    dest.display(),
                    wait.as_secs()
                ),
                true,
            )
        };
        let mut announced = false;
        loop {
            let mut held = IN_PROGRESS.lock().unwrap_or_else(|e| e.into_inner());
            if held.insert(dest.to_path_buf()) {
                break;
            }
            drop(held);
            if !announced {
                job_log::info(&format!(
                    "waiting for another download of {}",
                    dest.display()
                ));
                announced = true;
            }
            if Instant::now() >= deadline {
                return Err(busy());
            }
            std::thread::sleep(LOCK_POLL);
        }
        let mut lock = DownloadLock {
            key: dest.to_path_buf(),
            _file: None,
        };
        lock._file = os_lock(dest, deadline, &mut announced).map_err(|e| match e {
            Some(e) => e,
            None => busy(),
        })?;
        Ok(lock)
    }
}

impl Drop for DownloadLock {
    fn drop(&mut self) {
        let mut held = IN_PROGRESS.lock().unwrap_or_else(|e| e.into_inner());
        held.remove(&self.key);
    }
}

/// The OS lock on `<dest>.lock`; `Err(None)` when the deadline passed.
#[cfg(any(unix, windows))]
fn os_lock(
    dest: &Path,
    deadline: Instant,
    announced: &mut bool,
) -> Result<Option<File>, Option<EngineError>> {
    let path = with_suffix(dest, LOCK_SUFFIX);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| {
            Some(EngineError::io(format!(
                "cannot open the lock file {}: {e}",
                path.display()
            )))
        })?;
    loop {
        match fs4::FileExt::try_lock(&file) {
            Ok(()) => return Ok(Some(file)),
            Err(fs4::TryLockError::WouldBlock) => {}
            Err(fs4::TryLockError::Error(e)) => {
                // A file system without locks: the in-process guard still holds.
                tracing::debug!("no OS lock on {}: {e}", path.display());
                return Ok(Some(file));
            }
        }
        if !*announced {
            job_log::info(&format!(
                "waiting for another process downloading {}",
                dest.display()
            ));
            *announced = true;
        }
        if Instant::now() >= deadline {
            return Err(None);
        }
        std::thread::sleep(LOCK_POLL);
    }
}

/// No OS file locks on this platform: the in-process guard alone.
#[cfg(not(any(unix, windows)))]
fn os_lock(
    _dest: &Path,
    _deadline: Instant,
    _announced: &mut bool,
) -> Result<Option<File>, Option<EngineError>> {
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_excludes_a_second_holder_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("m.bin");
        let first = DownloadLock::acquire(&dest, Duration::from_millis(10)).unwrap();
        let e = match DownloadLock::acquire(&dest, Duration::from_millis(250)) {
            Err(e) => e,
            Ok(_) => panic!("a second lock was granted"),
        };
        assert!(
            e.retryable() && e.message.contains("another download"),
            "{e}"
        );
        drop(first);
        DownloadLock::acquire(&dest, Duration::from_millis(10)).unwrap();
    }
}
