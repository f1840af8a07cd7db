//! Running `sd-cli` as a child process that can never outlive its job.
//!
//! * The child gets no stdin; its stdout and stderr are read by two reader threads and
//!   handed, split into lines (at `\n` and at the `\r` of sd-cli's progress bar, colour
//!   escapes removed, each at most [`MAX_LINE_BYTES`]), to the calling thread, which calls
//!   the caller's line handler: job log lines are emitted from the dispatching thread.
//! * It runs in a process group of its own, and on Linux with `PR_SET_PDEATHSIG` = SIGKILL:
//!   if the worker dies, even by SIGKILL, the kernel kills the child.
//! * Killing means SIGKILL to the whole group (a wrapper script's own children too). The
//!   child is killed when the deadline passes, when the job's [`CancelToken`] is cancelled
//!   (at once, from the cancelling thread, through a hook), and when the guard holding it
//!   is dropped before the child was reaped (an early return or a panic): never orphaned.
//! * A process is only signalled while it has not been reaped, under the same lock as the
//!   reaping, so a recycled pid is never hit.

use std::io::{self, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::cancel::CancelToken;

/// How often the waiting thread checks the child, the deadline and the cancel flag when
/// no output arrives.
pub const POLL: Duration = Duration::from_millis(50);
/// After the child exited, how long its output may still take to drain (a descendant that
/// escaped the process group could hold the pipes open forever).
pub const OUTPUT_DRAIN_GRACE: Duration = Duration::from_secs(2);
/// The longest line kept; the rest of a longer line is dropped.
pub const MAX_LINE_BYTES: usize = 4096;

/// Which pipe a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// The child's stdout (sd-cli: info lines and the progress bar).
    Stdout,
    /// The child's stderr (sd-cli: errors).
    Stderr,
}

/// How a run ended, when the child exited on its own.
#[derive(Debug)]
pub struct Exited {
    /// Its exit status.
    pub status: ExitStatus,
    /// The last non-empty stderr line.
    pub last_stderr: Option<String>,
    /// The last non-empty stdout line.
    pub last_stdout: Option<String>,
}

impl Exited {
    /// The line that best says why it failed: the last stderr line, else the last stdout
    /// line.
    pub fn last_line(&self) -> Option<&str> {
        self.last_stderr.as_deref().or(self.last_stdout.as_deref())
    }
}

/// Why a run did not end with the child's own exit.
#[derive(Debug)]
pub enum RunError {
    /// The process could not be started.
    Spawn(io::Error),
    /// Waiting for the process failed.
    Wait(io::Error),
    /// The deadline passed; the child was killed.
    TimedOut {
        /// The last non-empty line it wrote (stderr first).
        last_line: Option<String>,
    },
    /// The job was cancelled; the child was killed.
    Cancelled,
}

struct Proc {
    child: Child,
    reaped: bool,
}

impl Proc {
    /// SIGKILL to the child's process group (and the child itself), unless it was reaped.
    fn kill(&mut self) {
        if self.reaped {
            return;
        }
        #[cfg(unix)]
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) has no memory effects; the group id is the pid of our own
            // child, which is not reaped yet (checked above, under the lock the reaper
            // takes), so the group cannot belong to anyone else.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
    }

    fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        let status = self.child.try_wait()?;
        if status.is_some() {
            self.reaped = true;
        }
        Ok(status)
    }
}

fn lock(proc: &Mutex<Proc>) -> MutexGuard<'_, Proc> {
    proc.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kills and reaps the child when dropped (unless it was reaped already).
struct Guard(Arc<Mutex<Proc>>);

impl Drop for Guard {
    fn drop(&mut self) {
        let mut proc = lock(&self.0);
        if !proc.reaped {
            proc.kill();
            let _ = proc.child.wait();
            proc.reaped = true;
        }
    }
}

/// Prepares `command` for [`run`]: no stdin, piped output, its own process group and, on
/// Linux, death with its parent.
fn configure(command: &mut Command) {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        command.process_group(0);
    }
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure runs in the forked child before exec and only calls prctl(2)
        // and reads errno, both async-signal-safe; it allocates nothing and takes no lock.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

/// Runs `command` until it exits, `timeout` passes or `cancel` is cancelled, handing every
/// output line to `on_line` on this thread. See the module docs.
pub fn run(
    mut command: Command,
    timeout: Duration,
    cancel: &CancelToken,
    on_line: &mut dyn FnMut(Stream, &str),
) -> Result<Exited, RunError> {
    configure(&mut command);
    let started = Instant::now();
    let mut child = command.spawn().map_err(RunError::Spawn)?;
    let (tx, rx) = mpsc::channel();
    let pipes: [(Stream, Option<Box<dyn Read + Send>>); 2] = [
        (
            Stream::Stdout,
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
        (
            Stream::Stderr,
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
    ];
    let proc = Arc::new(Mutex::new(Proc {
        child,
        reaped: false,
    }));
    let _guard = Guard(Arc::clone(&proc));
    let _hook = {
        let proc = Arc::clone(&proc);
        cancel.on_cancel(move || lock(&proc).kill())
    };
    for (stream, pipe) in pipes {
        if let Some(pipe) = pipe {
            spawn_reader(stream, pipe, tx.clone());
        }
    }
    drop(tx);

    let mut lines = Lines::default();
    let deadline = started + timeout;
    let status = loop {
        lines.receive(&rx, POLL, on_line);
        // The cancel flag first: a child killed by the cancel hook has exited by now.
        if cancel.is_cancelled() {
            lock(&proc).kill();
            return Err(RunError::Cancelled);
        }
        let exited = lock(&proc).try_wait().map_err(RunError::Wait)?;
        if let Some(status) = exited {
            break status;
        }
        if Instant::now() >= deadline {
            lock(&proc).kill();
            lines.drain(&rx, OUTPUT_DRAIN_GRACE, on_line);
            return Err(RunError::TimedOut {
                last_line: lines.last_stderr.or(lines.last_stdout),
            });
        }
    };
    lines.drain(&rx, OUTPUT_DRAIN_GRACE, on_line);
    Ok(Exited {
        status,
        last_stderr: lines.last_stderr,
        last_stdout: lines.last_stdout,
    })
}

/// The lines received so far (the last of each stream) and whether the readers are done.
#[derive(Default)]
struct Lines {
    last_stdout: Option<String>,
    last_stderr: Option<String>,
    closed: bool,
}

impl Lines {
    fn take(&mut self, stream: Stream, line: String, on_line: &mut dyn FnMut(Stream, &str)) {
        on_line(stream, &line);
        if !line.trim().is_empty() {
            match stream {
                Stream::Stdout => self.last_stdout = Some(line),
                Stream::Stderr => self.last_stderr = Some(line),
            }
        }
    }

    /// Handles what arrives within `wait` (everything already queued, then waits for more).
    fn receive(
        &mut self,
        rx: &Receiver<(Stream, String)>,
        wait: Duration,
        on_line: &mut dyn FnMut(Stream, &str),
    ) {
        if self.closed {
            std::thread::sleep(wait);
            return;
        }
        match rx.recv_timeout(wait) {
            Ok((stream, line)) => {
                self.take(stream, line, on_line);
                while let Ok((stream, line)) = rx.try_recv() {
                    self.take(stream, line, on_line);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => self.closed = true,
        }
    }

    /// Handles the rest of the output, until both pipes are closed or `grace` passes.
    fn drain(
        &mut self,
        rx: &Receiver<(Stream, String)>,
        grace: Duration,
        on_line: &mut dyn FnMut(Stream, &str),
    ) {
        let until = Instant::now() + grace;
        while !self.closed {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match rx.recv_timeout(left) {
                Ok((stream, line)) => self.take(stream, line, on_line),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => self.closed = true,
            }
        }
    }
}

/// Reads `pipe` to its end on a detached thread, sending each line.
fn spawn_reader(stream: Stream, mut pipe: Box<dyn Read + Send>, tx: Sender<(Stream, String)>) {
    let spawned = std::thread::Builder::new()
        .name(format!("sd-cli-{stream:?}").to_lowercase())
        .spawn(move || {
            let mut splitter = LineSplitter::default();
            let mut buf = [0u8; 8192];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        for line in splitter.push(&buf[..n]) {
                            if tx.send((stream, line)).is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            if let Some(line) = splitter.finish() {
                let _ = tx.send((stream, line));
            }
        });
    if let Err(e) = spawned {
        // The pipe is dropped with the closure: the child may get SIGPIPE, and its exit
        // status then says so.
        tracing::warn!("cannot start a reader thread for sd-cli's {stream:?}: {e}");
    }
}

/// Splits a byte stream into lines at `\n` and `\r`, removing terminal escape sequences
/// (`ESC [ ... final`), keeping at most [`MAX_LINE_BYTES`] of each line. Empty lines are
/// dropped.
#[derive(Default)]
pub struct LineSplitter {
    line: Vec<u8>,
    escape: Escape,
}

#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum Escape {
    #[default]
    None,
    Start,
    Csi,
}

impl LineSplitter {
    /// Feeds bytes; returns the lines they completed.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for &b in bytes {
            match self.escape {
                Escape::Start => {
                    self.escape = if b == b'[' { Escape::Csi } else { Escape::None };
                    continue;
                }
                Escape::Csi => {
                    if (0x40..=0x7e).contains(&b) {
                        self.escape = Escape::None;
                    }
                    continue;
                }
                Escape::None => {}
            }
            match b {
                0x1b => self.escape = Escape::Start,
                b'\n' | b'\r' => {
                    if let Some(line) = self.take() {
                        out.push(line);
                    }
                }
                _ if self.line.len() < MAX_LINE_BYTES => self.line.push(b),
                _ => {}
            }
        }
        out
    }

    /// The unterminated last line, if any.
    pub fn finish(&mut self) -> Option<String> {
        self.take()
    }

    fn take(&mut self) -> Option<String> {
        let line = String::from_utf8_lossy(&self.line).trim_end().to_string();
        self.line.clear();
        (!line.is_empty()).then_some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_at_returns_and_newlines_without_escapes() {
        let mut s = LineSplitter::default();
        let mut got = s.push(b"[INFO ] a.cpp:1 - loading\n\r  |==>  | 1/4 - 2.00s/it\x1b[K");
        got.extend(s.push(b"\r  |====> | 2/4 - 1.50s/it\x1b[K\r\x1b[31;1mred\x1b[0m tail"));
        got.extend(s.finish());
        assert_eq!(
            got,
            [
                "[INFO ] a.cpp:1 - loading",
                "  |==>  | 1/4 - 2.00s/it",
                "  |====> | 2/4 - 1.50s/it",
                "red tail",
            ]
        );
    }

    #[test]
    fn a_long_line_is_cut_and_invalid_utf8_replaced() {
        let mut s = LineSplitter::default();
        let long = vec![b'x'; MAX_LINE_BYTES * 3];
        assert!(s.push(&long).is_empty());
        let got = s.push(b"\n\xff\xfeok\n");
        assert_eq!(got[0].len(), MAX_LINE_BYTES);
        assert_eq!(got[1], "\u{fffd}\u{fffd}ok");
    }
}
