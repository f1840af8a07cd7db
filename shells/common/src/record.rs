//! `--record PATH`: the session recorder both shells share, and `studio-worker replay`.
//!
//! The trace format and the replayer are the core's ([`studio_core::trace`]); this module
//! only owns the file. [`CommandRouter::feed`](crate::CommandRouter::feed), the one place
//! that calls `Worker::handle`, hands the recorder every input with the exact `Now` it was
//! fed at and the commands of that drain (the immediate answers `feed` loops back, such as
//! `Minted`, are steps of their own). So a recording holds everything the core saw, in both
//! shells alike, and replays exactly.
//!
//! The file is created `0600` (even a redacted trace names workers, jobs and studio URLs),
//! written through a buffer that `feed` flushes once per call (so a worker killed without
//! warning leaves whole lines), after every step that ends the core (an `Exit`) and when
//! the recorder is dropped (the end of the session). A write error is logged
//! once and turns recording off: a recording never stops the worker.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use studio_core::trace::{self, TraceHeader, TraceWriter};
use studio_core::worker::{Command, Input, Now, WorkerConfig};

/// Writes one session's trace to a file.
pub struct Recorder {
    path: PathBuf,
    out: Option<BufWriter<File>>,
    writer: TraceWriter,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("path", &self.path)
            .field("active", &self.out.is_some())
            .field("steps", &self.writer.steps())
            .finish()
    }
}

impl Recorder {
    /// Creates (truncates) `path`, `0600` on unix, and writes the header: `shell` names the
    /// recorder (`sync`, `async`), `config` is the core's configuration (redacted in the
    /// file), `start` the clocks now.
    pub fn create(
        path: &Path,
        shell: &str,
        config: &WorkerConfig,
        start: Now,
    ) -> io::Result<Recorder> {
        let file = open_private(path)?;
        let mut rec = Recorder {
            path: path.to_path_buf(),
            out: Some(BufWriter::new(file)),
            writer: TraceWriter::new(),
        };
        let header = rec
            .writer
            .header_line(&TraceHeader::new(shell, config, start));
        rec.write_line(&header);
        rec.flush();
        match rec.out {
            Some(_) => Ok(rec),
            None => Err(io::Error::other("could not write the trace header")),
        }
    }

    /// Where the trace goes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether it is still recording (no write error so far).
    pub fn is_active(&self) -> bool {
        self.out.is_some()
    }

    /// Steps recorded so far.
    pub fn steps(&self) -> u64 {
        self.writer.steps()
    }

    /// Records one step: `input` was fed at `now` and its drain produced `cmds` (the final
    /// `Wait` included).
    pub fn step(&mut self, now: Now, input: &Input, cmds: &[Command]) {
        if self.out.is_none() {
            return;
        }
        let line = self.writer.record(now, input, cmds);
        self.write_line(&line);
        if cmds.iter().any(|c| matches!(c, Command::Exit { .. })) {
            self.flush();
        }
    }

    /// Flushes the buffer (also done on drop).
    pub fn flush(&mut self) {
        if let Some(out) = &mut self.out {
            if let Err(e) = out.flush() {
                self.fail(&e);
            }
        }
    }

    fn write_line(&mut self, line: &str) {
        if let Some(out) = &mut self.out {
            let result = out
                .write_all(line.as_bytes())
                .and_then(|()| out.write_all(b"\n"));
            if let Err(e) = result {
                self.fail(&e);
            }
        }
    }

    fn fail(&mut self, e: &io::Error) {
        tracing::error!(
            path = %self.path.display(),
            "cannot write the session recording ({e}); recording is off from here on"
        );
        // Dropping the writer would try to flush again: forget its buffer instead.
        if let Some(out) = self.out.take() {
            let (_file, _lost) = out.into_parts();
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(unix)]
fn open_private(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its mode through `open`: tighten it.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

#[cfg(not(unix))]
fn open_private(path: &Path) -> io::Result<File> {
    File::create(path)
}

/// `studio-worker replay PATH [--explain] [--bless]`: replays the trace at `path`, writes
/// the outcome to `out` and returns the process exit code (0: every step reproduced, or
/// blessed; 1: divergence; 2: unreadable or malformed trace).
pub fn replay_command(path: &Path, explain: bool, bless: bool, out: &mut dyn Write) -> i32 {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(out, "cannot read {}: {e}", path.display());
            return 2;
        }
    };
    let name = path.display();
    if explain {
        match trace::explain(&text) {
            Ok(t) => {
                let _ = write!(out, "{t}");
            }
            Err(e) => {
                let _ = writeln!(out, "{name}: {e}");
                return 2;
            }
        }
    }
    if bless {
        let blessed = match trace::bless(&text) {
            Ok(b) => b,
            Err(e) => {
                let _ = writeln!(out, "{name}: {e}");
                return 2;
            }
        };
        if let Err(e) = write_atomic(path, &blessed) {
            let _ = writeln!(out, "cannot rewrite {name}: {e}");
            return 2;
        }
        let changed = text
            .lines()
            .zip(blessed.lines())
            .filter(|(a, b)| a != b)
            .count();
        let _ = writeln!(out, "{name}: blessed ({changed} step hashes changed)");
        return 0;
    }
    match trace::replay(&text) {
        Ok(report) if report.is_ok() => {
            let _ = writeln!(out, "{report}");
            0
        }
        Ok(report) => {
            let _ = writeln!(out, "{name}: {report}");
            1
        }
        Err(e) => {
            let _ = writeln!(out, "{name}: {e}");
            2
        }
    }
}

/// Writes `text` to a temporary file beside `path` (same mode, `0600` on unix) and renames
/// it over `path`.
fn write_atomic(path: &Path, text: &str) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".blessing");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = open_private(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use studio_core::worker::Worker;
    use studio_core::{Mono, WallMs};

    fn now(ms: u64) -> Now {
        Now::new(Mono::from_millis(ms), WallMs(1_700_000_000_000 + ms))
    }

    #[test]
    fn records_a_private_file_that_replays_and_blesses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        let cfg = WorkerConfig::for_tests("http://127.0.0.1:1");
        {
            let mut rec = Recorder::create(&path, "sync", &cfg, now(0)).unwrap();
            let mut w = Worker::new(cfg.clone());
            for (t, input) in [(0, Input::Start), (5, Input::Tick), (9, Input::Shutdown)] {
                let (cmds, _) = trace::step(&mut w, now(t), input.clone());
                rec.step(now(t), &input, &cmds);
            }
            assert_eq!(rec.steps(), 3);
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let mut out = Vec::new();
        assert_eq!(replay_command(&path, false, false, &mut out), 0);
        assert_eq!(String::from_utf8(out).unwrap(), "replayed 3 steps: OK\n");

        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("\"Tick\"", "\"Pause\"", 1)).unwrap();
        let mut out = Vec::new();
        assert_eq!(replay_command(&path, false, false, &mut out), 1);
        let shown = String::from_utf8(out).unwrap();
        assert!(shown.contains("diverged at step 2"), "{shown}");
        let mut out = Vec::new();
        assert_eq!(replay_command(&path, true, true, &mut out), 0);
        assert!(String::from_utf8(out).unwrap().contains("blessed (1 step"));
        let mut out = Vec::new();
        assert_eq!(replay_command(&path, false, false, &mut out), 0);

        std::fs::write(&path, "{}\n").unwrap();
        let mut out = Vec::new();
        assert_eq!(replay_command(&path, false, false, &mut out), 2);
        assert!(String::from_utf8(out).unwrap().contains("line 1"));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_write_error_turns_recording_off_without_panicking() {
        let cfg = WorkerConfig::for_tests("http://127.0.0.1:1");
        let mut rec = Recorder::create(Path::new("/dev/full"), "sync", &cfg, now(0));
        // /dev/full fails on flush: either create reports it or recording is off.
        if let Ok(rec) = &mut rec {
            assert!(!rec.is_active());
            rec.step(now(1), &Input::Tick, &[]);
        }
    }
}
