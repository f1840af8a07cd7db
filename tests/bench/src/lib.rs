//! `studio-bench`: a rerunnable benchmark of the `studio-worker` binary (and, side by side,
//! of any other binary with the same CLI, such as `studio-worker-async`).
//!
//! For each binary:
//!
//! 1. **Size** of the file, and what `strip` would still remove from a copy.
//! 2. **Idle**: a studio-local in this process on 127.0.0.1:0 with a pre-provisioned worker,
//!    a minimal config, `BIN --config PATH run`; once the session is up and a short settle
//!    has passed, the per-thread context switches (/proc/<pid>/task/*/status) are sampled
//!    across the idle window (default 60 s), then VmRSS / VmHWM are read. Every context
//!    switch of a thread that sleeps in the kernel is one wakeup.
//! 3. **Jobs**: N jobs of a JSON kind (llm) and N of a binary kind (image) on the synthetic
//!    engine, each submitted after the previous one completed; submit -> completed as seen
//!    through the [`studio_local::Handle`] (direct connection), and offer -> result as seen
//!    by a [`tap::Tap`] between worker and studio (a second worker process, same binary).
//!
//! Once per run: a bare tungstenite WebSocket echo round trip on loopback ([`echo`]), the
//! transport's limit the job figures are divided by (run at the start and at the end, the
//! samples pooled; then pinned to one CPU, and through a second thread and back: the wake-ups
//! of a job's path with no work), and the synthetic engine alone in this process
//! ([`measure::engine_baseline`]), what a job costs before any transport or thread.
//!
//! studio-local records no offer time (`JobDetail` has millisecond `submittedMs` /
//! `updatedMs` only), hence the tap. Set `STUDIO_BENCH_KEEP=1` to keep each rig's temp
//! dir (config, worker log, uploaded results).

pub mod echo;
pub mod machine;
pub mod measure;
pub mod procfs;
pub mod report;
pub mod rig;
pub mod stats;
pub mod tap;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use studio_core::wire::TaskKind;

use measure::{IdleReport, JobOptions, JobSeries, SizeReport, TapTimes};
use procfs::Memory;
use rig::Rig;
use tap::FrameStat;

/// A failed measurement, with a message for the operator.
#[derive(Debug)]
pub struct BenchError(String);

impl BenchError {
    pub fn new(msg: impl Into<String>) -> BenchError {
        BenchError(msg.into())
    }
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BenchError {}

impl From<std::io::Error> for BenchError {
    fn from(e: std::io::Error) -> BenchError {
        BenchError(e.to_string())
    }
}

/// The kinds measured: one with a JSON result (a `completeJson` frame) and one with a
/// binary result (a multipart upload over HTTP).
pub const KINDS: [TaskKind; 2] = [TaskKind::Llm, TaskKind::Image];

/// Defaults of the command line.
pub const DEFAULT_IDLE_SECS: u64 = 60;
pub const DEFAULT_JOBS: usize = 200;
pub const QUICK_IDLE_SECS: u64 = 5;
pub const QUICK_JOBS: usize = 20;
pub const DEFAULT_ECHO_N: usize = 2000;
/// About the size of an `offer` frame of a synthetic job (the tap reports the real one).
pub const DEFAULT_ECHO_BYTES: usize = 600;
pub const DEFAULT_WARMUP: usize = 3;
pub const DEFAULT_POLL_US: u64 = 50;
/// After the session is up, before the idle window opens (startup logs, first heartbeat).
pub const SETTLE: Duration = Duration::from_secs(2);

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    pub settle: Duration,
    pub idle: Duration,
    pub jobs: JobOptions,
    pub echo_n: usize,
    pub echo_bytes: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            settle: SETTLE,
            idle: Duration::from_secs(DEFAULT_IDLE_SECS),
            jobs: JobOptions {
                n: DEFAULT_JOBS,
                warmup: DEFAULT_WARMUP,
                poll_every: Duration::from_micros(DEFAULT_POLL_US),
                timeout: Duration::from_secs(30),
            },
            echo_n: DEFAULT_ECHO_N,
            echo_bytes: DEFAULT_ECHO_BYTES,
        }
    }
}

/// One kind's figures for one binary.
#[derive(Clone, Debug)]
pub struct KindReport {
    /// On a direct connection: submit -> completed.
    pub direct: JobSeries,
    /// Through the tap (its submit -> completed includes the tap's hop).
    pub tapped: JobSeries,
    /// What the tap saw of `tapped`.
    pub tap: TapTimes,
    /// Frames that crossed the tap during `tapped` (warm-up included).
    pub frames: BTreeMap<String, FrameStat>,
}

/// Everything measured of one binary.
#[derive(Clone, Debug)]
pub struct BinReport {
    pub label: String,
    pub path: PathBuf,
    pub size: SizeReport,
    /// Spawn -> session up (direct rig).
    pub connect_time: Duration,
    pub idle: IdleReport,
    pub kinds: Vec<KindReport>,
    /// Memory after the direct job series.
    pub after_jobs: Memory,
    /// How the two worker processes ended (SIGTERM).
    pub exits: Vec<String>,
}

fn exit_text(r: Result<ExitStatus, BenchError>) -> String {
    match r {
        Ok(s) => s.to_string(),
        Err(e) => e.to_string(),
    }
}

/// Runs every measurement of one binary, reporting progress through `progress`.
pub fn bench_binary(
    label: &str,
    bin: &Path,
    opts: &Options,
    progress: &mut dyn FnMut(&str),
) -> Result<BinReport, BenchError> {
    progress(&format!("{label}: size"));
    let size = measure::measure_size(bin)?;

    progress(&format!(
        "{label}: idle ({} s settle + {} s window, through the tap)",
        opts.settle.as_secs_f64(),
        opts.idle.as_secs_f64()
    ));
    let mut tapped_rig = Rig::start(bin, true)?;
    let idle = measure::measure_idle(&tapped_rig, opts.settle, opts.idle)?;
    let mut tapped = Vec::new();
    for kind in KINDS {
        progress(&format!(
            "{label}: {} {kind} jobs through the tap",
            opts.jobs.n
        ));
        let frames0 = tapped_rig
            .tap
            .as_ref()
            .map(|t| t.frames())
            .unwrap_or_default();
        let series =
            measure::run_jobs(&tapped_rig.studio, kind, &opts.jobs, Some(tapped_rig.pid()))?;
        // The tap parses a copy after forwarding it, so its record of the last job can
        // trail the studio's by a moment.
        let t0 = std::time::Instant::now();
        let times = loop {
            let log = tapped_rig
                .tap
                .as_ref()
                .map(|t| t.snapshot())
                .unwrap_or_default();
            let times = measure::tap_times(&log, &series.ids);
            if times.missing == 0 || t0.elapsed() > Duration::from_secs(2) {
                break times;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let frames1 = tapped_rig
            .tap
            .as_ref()
            .map(|t| t.frames())
            .unwrap_or_default();
        tapped.push((series, times, tap::frames_since(&frames0, &frames1)));
    }
    let mut exits = vec![format!("tapped: {}", exit_text(tapped_rig.stop()))];
    drop(tapped_rig);

    let mut direct_rig = Rig::start(bin, false)?;
    let connect_time = direct_rig.connect_time;
    let mut kinds = Vec::new();
    for (kind, (tapped, tap, frames)) in KINDS.into_iter().zip(tapped) {
        progress(&format!("{label}: {} {kind} jobs, direct", opts.jobs.n));
        let direct =
            measure::run_jobs(&direct_rig.studio, kind, &opts.jobs, Some(direct_rig.pid()))?;
        kinds.push(KindReport {
            direct,
            tapped,
            tap,
            frames,
        });
    }
    let after_jobs = Memory::read(direct_rig.pid())?;
    exits.push(format!("direct: {}", exit_text(direct_rig.stop())));
    Ok(BinReport {
        label: label.to_string(),
        path: bin.to_path_buf(),
        size,
        connect_time,
        idle,
        kinds,
        after_jobs,
        exits,
    })
}

/// Labels for the binaries: their file names, or their paths where names repeat.
pub fn labels(bins: &[PathBuf]) -> Vec<String> {
    let names: Vec<String> = bins
        .iter()
        .map(|b| {
            b.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| b.display().to_string())
        })
        .collect();
    names
        .iter()
        .zip(bins)
        .map(|(n, b)| {
            if names.iter().filter(|m| *m == n).count() > 1 {
                b.display().to_string()
            } else {
                n.clone()
            }
        })
        .collect()
}
