//! One worker process connected to an in-process studio-local (optionally through a
//! [`Tap`]).

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use studio_local::{Handle, LocalConfig, LocalStudio};

use crate::tap::Tap;
use crate::BenchError;

/// The pre-provisioned worker's id.
pub const WORKER_ID: &str = "bench-worker";
/// How long the worker may take to get a welcomed session.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Set (to anything) to keep each rig's temp dir (config, worker log, uploads).
pub const KEEP_ENV: &str = "STUDIO_BENCH_KEEP";
/// How long a SIGTERM may take before the worker is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A studio-local on 127.0.0.1:0 and `BIN --config <tmp>/config.toml run` connected to it.
pub struct Rig {
    /// The worker process (None once stopped).
    child: Option<Child>,
    /// The frame tap between them, when asked for.
    pub tap: Option<Tap>,
    pub studio: Handle,
    /// How long from spawning the process to the studio seeing its session.
    pub connect_time: Duration,
    log_path: PathBuf,
    /// Always Some until dropped.
    dir: Option<tempfile::TempDir>,
}

/// The minimal worker config: the studio URL, the pre-provisioned credentials, a VRAM
/// threshold and no auto-update.
pub fn config_toml(api_base_url: &str, worker_id: &str, auth_token: &str) -> String {
    format!(
        "api_base_url = \"{api_base_url}\"\n\
         worker_id = \"{worker_id}\"\n\
         auth_token = \"{auth_token}\"\n\
         vram_threshold_gb = 12.0\n\
         auto_update_enabled = false\n"
    )
}

impl Rig {
    /// Starts the studio (and the tap), writes the config, spawns the worker and waits for
    /// its session. The worker's stdout and stderr go to a log file in the rig's temp dir
    /// (`RUST_LOG` is removed: the default, info, is what a deployed worker runs with).
    pub fn start(bin: &Path, tap: bool) -> Result<Rig, BenchError> {
        let dir = tempfile::Builder::new().prefix("studio-bench-").tempdir()?;
        let token = format!("bench-token-{}", std::process::id());
        let studio = LocalStudio::bind(LocalConfig {
            out_dir: dir.path().join("out"),
            workers: vec![(WORKER_ID.to_string(), token.clone())],
            ..LocalConfig::default()
        })?
        .spawn()?;
        let tap = if tap {
            Some(Tap::start(studio.local_addr())?)
        } else {
            None
        };
        let base_url = match &tap {
            Some(t) => format!("http://{}/", t.addr()),
            None => studio.base_url(),
        };
        let config = dir.path().join("config.toml");
        fs::write(&config, config_toml(&base_url, WORKER_ID, &token))?;
        let log_path = dir.path().join("worker.log");
        let log = File::create(&log_path)?;
        let t0 = Instant::now();
        let child = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .arg("run")
            .env_remove("RUST_LOG")
            // The local control API listens (it is part of what is measured), on a port of
            // its own; no crash reports from a benchmark.
            .env("STUDIO_WORKER_LOCAL_API_PORT", "0")
            .env_remove("SENTRY_DSN")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| BenchError::new(format!("cannot start {}: {e}", bin.display())))?;
        let mut rig = Rig {
            child: Some(child),
            tap,
            studio,
            connect_time: Duration::ZERO,
            log_path,
            dir: Some(dir),
        };
        loop {
            if rig
                .studio
                .wait_for_worker(WORKER_ID, Duration::from_millis(100))
            {
                break;
            }
            let exited = rig.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                return Err(BenchError::new(format!(
                    "{} exited ({status}) before connecting; its log:\n{}",
                    bin.display(),
                    rig.log_tail()
                )));
            }
            if t0.elapsed() > CONNECT_TIMEOUT {
                return Err(BenchError::new(format!(
                    "{} did not connect within {CONNECT_TIMEOUT:?}; its log:\n{}",
                    bin.display(),
                    rig.log_tail()
                )));
            }
        }
        rig.connect_time = t0.elapsed();
        Ok(rig)
    }

    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The temp dir (config, log, uploads).
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_ref().map(tempfile::TempDir::path)
    }

    /// The last 40 lines of the worker's log.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Lines in the worker's log so far.
    pub fn log_lines(&self) -> usize {
        fs::read_to_string(&self.log_path)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }

    /// SIGTERM (a graceful shutdown), then SIGKILL after [`STOP_TIMEOUT`]; the exit status.
    pub fn stop(&mut self) -> Result<ExitStatus, BenchError> {
        let Some(mut child) = self.child.take() else {
            return Err(BenchError::new("the worker was already stopped"));
        };
        terminate(&child);
        let t0 = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if t0.elapsed() > STOP_TIMEOUT {
                let _ = child.kill();
                let status = child.wait()?;
                return Err(BenchError::new(format!(
                    "the worker ignored SIGTERM for {STOP_TIMEOUT:?} and was killed ({status})"
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
        if std::env::var_os(KEEP_ENV).is_some() {
            if let Some(dir) = self.dir.take() {
                eprintln!("studio-bench: kept {}", dir.keep().display());
            }
        }
    }
}

#[cfg(unix)]
fn terminate(child: &Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) with a pid we spawned and have not reaped (it cannot be reused).
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}

#[cfg(not(unix))]
fn terminate(_child: &Child) {}
