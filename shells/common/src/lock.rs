//! One daemon per config: an exclusive lock on `daemon.lock` beside `config.toml`, held
//! for the life of `studio-worker run`.
//!
//! * The lock is the OS's advisory whole-file lock (`flock` on Unix, `LockFileEx` on
//!   Windows, through `std::fs::File::try_lock`): it is released when the file is closed,
//!   which the OS does on every exit path, a crash or a `SIGKILL` included, so a stale lock
//!   cannot outlive its process.
//! * The holder writes its process id into the file, so a second `run` can say who holds
//!   it ([`Lock::HeldBy`]); that `run` exits 0, so a service manager does not restart-loop
//!   on it.
//! * The file is opened close-on-exec (Rust opens every file so), so a process the worker
//!   starts, or the image a re-exec replaces it with, does not inherit the lock. A module
//!   that re-executes the worker calls [`DaemonLock::release`] first, so the new image can
//!   take the lock at once even where close-on-exec is not honoured.
//! * The file is left in place when released: removing a lock file races with a process
//!   that has just opened it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::error::ShellError;

/// The lock file's name, beside `config.toml`.
pub const LOCK_FILE_NAME: &str = "daemon.lock";

/// The lock file of the daemon whose config is `config_path`.
pub fn lock_path(config_path: &Path) -> PathBuf {
    match config_path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(LOCK_FILE_NAME),
        _ => PathBuf::from(LOCK_FILE_NAME),
    }
}

/// The outcome of [`DaemonLock::acquire`].
#[derive(Debug)]
pub enum Lock {
    /// This process holds the lock now.
    Acquired(DaemonLock),
    /// Another process holds it (`pid` as it wrote it; `None` when unreadable).
    HeldBy { pid: Option<u32>, path: PathBuf },
}

/// The held lock. Dropping it releases it, like [`DaemonLock::release`].
#[derive(Debug)]
pub struct DaemonLock {
    file: File,
    path: PathBuf,
}

impl DaemonLock {
    /// Takes the lock of the daemon whose config is `config_path` (creating the directory
    /// and the file as needed), without waiting.
    pub fn acquire(config_path: &Path) -> Result<Lock, ShellError> {
        let path = lock_path(config_path);
        let io_err = |action: &'static str| {
            let path = path.clone();
            move |source| ShellError::ConfigIo {
                path,
                action,
                source,
            }
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(io_err("create the directory of"))?;
        }
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&path).map_err(io_err("open the lock file"))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Ok(Lock::HeldBy {
                    pid: holder_pid(&path),
                    path,
                })
            }
            Err(fs::TryLockError::Error(source)) => {
                return Err(ShellError::ConfigIo {
                    path,
                    action: "lock",
                    source,
                })
            }
        }
        write_pid(&mut file).map_err(io_err("write the process id into"))?;
        Ok(Lock::Acquired(DaemonLock { file, path }))
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Releases the lock now (before a re-exec, say); the same as dropping it.
    pub fn release(self) {
        drop(self);
    }
}

impl Drop for DaemonLock {
    fn drop(&mut self) {
        // Closing the file releases the lock as well; unlocking first makes it explicit
        // (and immediate even if a duplicate of the descriptor were still open).
        let _ = self.file.unlock();
    }
}

fn write_pid(file: &mut File) -> io::Result<()> {
    file.set_len(0)?;
    writeln!(file, "{}", std::process::id())?;
    file.sync_all()
}

/// The process id the holder wrote, if readable.
fn holder_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_the_second_learns_its_pid() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("sub").join("config.toml");
        let Lock::Acquired(lock) = DaemonLock::acquire(&config).unwrap() else {
            panic!("the first acquire takes the lock")
        };
        assert_eq!(lock.path(), dir.path().join("sub").join(LOCK_FILE_NAME));
        match DaemonLock::acquire(&config).unwrap() {
            Lock::HeldBy { pid, path } => {
                assert_eq!(pid, Some(std::process::id()));
                assert_eq!(path, lock.path());
            }
            Lock::Acquired(_) => panic!("a second holder"),
        }
        lock.release();
        let Lock::Acquired(again) = DaemonLock::acquire(&config).unwrap() else {
            panic!("released: free again")
        };
        drop(again);
        assert!(matches!(
            DaemonLock::acquire(&config).unwrap(),
            Lock::Acquired(_)
        ));
    }

    #[test]
    fn a_leftover_lock_file_is_not_a_lock() {
        // What a process restarting into an update (or one that crashed) leaves behind.
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(lock_path(&config), "4194304\n").unwrap();
        let Lock::Acquired(lock) = DaemonLock::acquire(&config).unwrap() else {
            panic!("a file nobody holds locked is free")
        };
        assert_eq!(holder_pid(lock.path()), Some(std::process::id()));
    }

    #[test]
    fn a_config_in_the_current_directory_locks_beside_it() {
        assert_eq!(
            lock_path(Path::new("config.toml")),
            PathBuf::from(LOCK_FILE_NAME)
        );
        assert_eq!(
            lock_path(Path::new("/etc/w/config.toml")),
            PathBuf::from("/etc/w/daemon.lock")
        );
    }

    #[cfg(unix)]
    #[test]
    fn the_lock_file_is_private_and_not_inherited() {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::io::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let Lock::Acquired(lock) = DaemonLock::acquire(&dir.path().join("config.toml")).unwrap()
        else {
            panic!()
        };
        let mode = fs::metadata(lock.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // FD_CLOEXEC: an exec'd image does not inherit (and so does not hold) the lock.
        let flags = unsafe { libc::fcntl(lock.file.as_raw_fd(), libc::F_GETFD) };
        assert!(flags >= 0 && flags & libc::FD_CLOEXEC != 0, "{flags}");
    }
}
