//! The measurements: binary size, idle memory and wakeups, per-job overhead.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use studio_core::wire::TaskKind;
use studio_local::{Handle, JobSubmission, ResultView};

use crate::procfs::{
    self, LoadSample, LoadShare, Memory, ProcessStat, ThreadCounters, ThreadDelta,
};
use crate::rig::Rig;
use crate::stats::Summary;
use crate::tap::{self, FrameStat, TapLog};
use crate::BenchError;

// ------------------------------------------------------------------------------------------
// Size
// ------------------------------------------------------------------------------------------

/// The file size, and what `strip` would leave of a copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SizeReport {
    pub bytes: u64,
    /// The copy's size after `strip` (None: no `strip` on the PATH, or it failed).
    pub stripped_bytes: Option<u64>,
    /// Why there is no stripped size.
    pub strip_note: Option<String>,
}

impl SizeReport {
    /// Bytes `strip` would remove.
    pub fn strip_removes(&self) -> Option<u64> {
        self.stripped_bytes.map(|s| self.bytes.saturating_sub(s))
    }

    pub fn to_json(&self) -> Value {
        json!({
            "bytes": self.bytes,
            "mib": self.bytes as f64 / MIB,
            "stripped_copy_bytes": self.stripped_bytes,
            "strip_would_remove_bytes": self.strip_removes(),
            "strip_note": self.strip_note,
        })
    }
}

pub const MIB: f64 = 1024.0 * 1024.0;

/// Measures `bin`; `strip` runs on a copy in a temp dir, never on `bin`.
pub fn measure_size(bin: &Path) -> Result<SizeReport, BenchError> {
    let bytes = fs::metadata(bin)?.len();
    let dir = tempfile::Builder::new()
        .prefix("studio-bench-strip-")
        .tempdir()?;
    let copy = dir.path().join("bin");
    fs::copy(bin, &copy)?;
    let (stripped_bytes, strip_note) = match Command::new("strip").arg(&copy).output() {
        Ok(o) if o.status.success() => (Some(fs::metadata(&copy)?.len()), None),
        Ok(o) => (
            None,
            Some(format!(
                "strip failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
        ),
        Err(e) => (None, Some(format!("no strip: {e}"))),
    };
    Ok(SizeReport {
        bytes,
        stripped_bytes,
        strip_note,
    })
}

// ------------------------------------------------------------------------------------------
// Idle
// ------------------------------------------------------------------------------------------

/// What a connected worker costs while nothing happens.
#[derive(Clone, Debug)]
pub struct IdleReport {
    /// From the session being up to the start of the window.
    pub settle: Duration,
    /// The measured window.
    pub window: Duration,
    /// Memory at the end of the window.
    pub memory: Memory,
    /// Per thread, in the window.
    pub threads: Vec<ThreadDelta>,
    /// Threads that existed at the start and exited during the window.
    pub exited: Vec<ThreadCounters>,
    /// Frames that crossed the tap in the window (empty without a tap).
    pub frames: BTreeMap<String, FrameStat>,
    /// Lines the worker logged in the window.
    pub log_lines: usize,
    /// CPU use of the machine in the window (and how much of it was other processes).
    pub load: Option<LoadShare>,
}

impl IdleReport {
    /// Voluntary + involuntary context switches of every thread in the window.
    pub fn switches(&self) -> u64 {
        self.threads.iter().map(ThreadDelta::switches).sum()
    }

    fn per_minute(&self, n: u64) -> f64 {
        n as f64 * 60.0 / self.window.as_secs_f64()
    }

    /// [`IdleReport::switches`] scaled to a minute.
    pub fn wakeups_per_minute(&self) -> f64 {
        self.per_minute(self.switches())
    }

    /// CPU time of all threads in the window, scaled to a minute (None without schedstat).
    pub fn cpu_us_per_minute(&self) -> Option<f64> {
        let ns: Option<u64> = self.threads.iter().map(|t| t.cpu_ns).sum();
        ns.map(|ns| ns as f64 / 1e3 * 60.0 / self.window.as_secs_f64())
    }

    /// (thread, wakeups per minute) busiest first.
    pub fn per_thread_per_minute(&self) -> Vec<(String, f64)> {
        let mut rows: Vec<(String, f64)> = self
            .threads
            .iter()
            .map(|t| {
                (
                    format!("{} (tid {})", t.name, t.tid),
                    self.per_minute(t.switches()),
                )
            })
            .collect();
        rows.sort_by(|a, b| b.1.total_cmp(&a.1));
        rows
    }

    /// Frames in the window, scaled to a minute.
    pub fn frames_per_minute(&self) -> Vec<(String, f64, u64)> {
        self.frames
            .iter()
            .map(|(k, v)| (k.clone(), self.per_minute(v.count), v.max_bytes))
            .collect()
    }

    pub fn to_json(&self) -> Value {
        let secs = self.window.as_secs_f64();
        json!({
            "settle_s": self.settle.as_secs_f64(),
            "window_s": secs,
            "memory": self.memory.to_json(),
            "context_switches": self.switches(),
            "wakeups_per_minute": crate::stats::round1(self.wakeups_per_minute()),
            "cpu_us_per_minute": self.cpu_us_per_minute().map(crate::stats::round1),
            "threads": self.threads.iter().map(|t| json!({
                "tid": t.tid,
                "name": t.name,
                "voluntary": t.voluntary,
                "nonvoluntary": t.nonvoluntary,
                "per_minute": crate::stats::round1(self.per_minute(t.switches())),
                "cpu_ns": t.cpu_ns,
                "born_in_window": !t.existed_at_start,
            })).collect::<Vec<_>>(),
            "threads_exited_in_window": self.exited.iter().map(|t| json!({
                "tid": t.tid, "name": t.name,
            })).collect::<Vec<_>>(),
            "frames_in_window": frames_json(&self.frames),
            "log_lines_in_window": self.log_lines,
            "cpu_load": self.load.as_ref().map(LoadShare::to_json),
        })
    }
}

/// Waits `settle`, then samples every thread of the worker, sleeps `window`, samples
/// again and reads its memory. The bench does nothing else meanwhile (the studio thread
/// answers heartbeats).
pub fn measure_idle(
    rig: &Rig,
    settle: Duration,
    window: Duration,
) -> Result<IdleReport, BenchError> {
    let pid = rig.pid();
    std::thread::sleep(settle);
    let frames0 = rig.tap.as_ref().map(|t| t.frames()).unwrap_or_default();
    let lines0 = rig.log_lines();
    let load0 = LoadSample::read(pid).ok();
    let before = procfs::threads(pid)?;
    let t0 = Instant::now();
    std::thread::sleep(window);
    let after = procfs::threads(pid)?;
    let load = load0
        .zip(LoadSample::read(pid).ok())
        .and_then(|(a, b)| b.share_since(&a));
    let measured = t0.elapsed();
    let memory = Memory::read(pid)?;
    let frames1 = rig.tap.as_ref().map(|t| t.frames()).unwrap_or_default();
    let frames = tap::frames_since(&frames0, &frames1);
    let (threads, exited) = procfs::delta(&before, &after);
    Ok(IdleReport {
        settle,
        window: measured,
        memory,
        threads,
        exited,
        frames,
        log_lines: rig.log_lines().saturating_sub(lines0),
        load,
    })
}

/// Frame statistics as JSON: `{"<dir> <type>": {"count", "bytes", "max_bytes"}}`.
pub fn frames_json(frames: &BTreeMap<String, FrameStat>) -> Value {
    frames
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                json!({"count": v.count, "bytes": v.bytes, "max_bytes": v.max_bytes}),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

// ------------------------------------------------------------------------------------------
// Jobs
// ------------------------------------------------------------------------------------------

/// How a job series runs.
#[derive(Clone, Debug)]
pub struct JobOptions {
    /// Timed jobs.
    pub n: usize,
    /// Untimed jobs first (lazy initialisation, first thread spawns); the very first job's
    /// time is kept apart as the cold one.
    pub warmup: usize,
    /// Sleep between two `Handle::job` polls (zero: poll back to back).
    pub poll_every: Duration,
    /// A job not done by then fails the run.
    pub timeout: Duration,
}

/// One series of jobs of one kind, run one after another.
#[derive(Clone, Debug)]
pub struct JobSeries {
    pub kind: TaskKind,
    pub ids: Vec<String>,
    /// Submit -> seen completed through the handle, per timed job.
    pub submit_to_done: Vec<Duration>,
    /// The studio's own submitted -> updated (done), whole milliseconds.
    pub studio_ms: Vec<u64>,
    /// The first warm-up job (or the first timed one without warm-up).
    pub cold: Duration,
    /// `Handle::job` calls per timed job, on average.
    pub polls_per_job: f64,
    /// Median time of one `Handle::job` poll round (call + sleep).
    pub poll_period: Duration,
    /// Bytes of the last result (file size, or the JSON text).
    pub result_bytes: u64,
    /// What the timed jobs cost the worker process (when its pid was given).
    pub cost: Option<WorkerCost>,
    /// CPU use of the machine during the timed jobs, and how much of it was other
    /// processes (when the worker's pid was given).
    pub load: Option<LoadShare>,
}

/// What a job series cost the worker process, from /proc before and after.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerCost {
    pub jobs: usize,
    /// Whole process (exited threads included), utime + stime: clock-tick resolution.
    pub process_cpu: Duration,
    /// The main (event loop) thread's CPU time, from schedstat (ns resolution).
    pub main_cpu_ns: Option<u64>,
    /// The main thread's context switches (voluntary + involuntary).
    pub main_switches: u64,
    /// Minor page faults of the whole process.
    pub minflt: u64,
}

impl WorkerCost {
    fn sample(pid: u32) -> Result<(ProcessStat, Option<ThreadCounters>), BenchError> {
        Ok((ProcessStat::read(pid)?, procfs::threads(pid)?.remove(&pid)))
    }

    fn between(
        jobs: usize,
        before: &(ProcessStat, Option<ThreadCounters>),
        after: &(ProcessStat, Option<ThreadCounters>),
    ) -> WorkerCost {
        let ticks = after.0.cpu_ticks.saturating_sub(before.0.cpu_ticks);
        let (main_cpu_ns, main_switches) = match (&before.1, &after.1) {
            (Some(b), Some(a)) => (
                a.cpu_ns.zip(b.cpu_ns).map(|(a, b)| a.saturating_sub(b)),
                (a.voluntary + a.nonvoluntary).saturating_sub(b.voluntary + b.nonvoluntary),
            ),
            _ => (None, 0),
        };
        WorkerCost {
            jobs,
            process_cpu: Duration::from_secs_f64(
                ticks as f64 / procfs::clock_ticks_per_sec() as f64,
            ),
            main_cpu_ns,
            main_switches,
            minflt: after.0.minflt.saturating_sub(before.0.minflt),
        }
    }

    fn per_job(&self, x: f64) -> f64 {
        x / self.jobs.max(1) as f64
    }

    pub fn process_cpu_us_per_job(&self) -> f64 {
        self.per_job(self.process_cpu.as_secs_f64() * 1e6)
    }

    pub fn main_cpu_us_per_job(&self) -> Option<f64> {
        self.main_cpu_ns.map(|ns| self.per_job(ns as f64 / 1e3))
    }

    pub fn main_switches_per_job(&self) -> f64 {
        self.per_job(self.main_switches as f64)
    }

    pub fn minflt_per_job(&self) -> f64 {
        self.per_job(self.minflt as f64)
    }

    pub fn to_json(&self) -> Value {
        use crate::stats::round1;
        json!({
            "jobs": self.jobs,
            "process_cpu_us_per_job_tick_resolution": round1(self.process_cpu_us_per_job()),
            "main_thread_cpu_us_per_job": self.main_cpu_us_per_job().map(round1),
            "main_thread_context_switches_per_job": round1(self.main_switches_per_job()),
            "minor_faults_per_job": round1(self.minflt_per_job()),
        })
    }
}

fn prompt_for(kind: TaskKind, i: usize) -> String {
    format!("studio-bench {kind} job {i}")
}

/// Runs `opts.warmup + opts.n` jobs of `kind`, each submitted after the previous one was
/// seen completed, and times submit -> completed through the handle. With the worker's
/// `pid`, its /proc counters are sampled around the timed jobs ([`WorkerCost`]).
pub fn run_jobs(
    studio: &Handle,
    kind: TaskKind,
    opts: &JobOptions,
    pid: Option<u32>,
) -> Result<JobSeries, BenchError> {
    let mut series = JobSeries {
        kind,
        ids: Vec::with_capacity(opts.n),
        submit_to_done: Vec::with_capacity(opts.n),
        studio_ms: Vec::with_capacity(opts.n),
        cold: Duration::ZERO,
        polls_per_job: 0.0,
        poll_period: Duration::ZERO,
        result_bytes: 0,
        cost: None,
        load: None,
    };
    let mut before = None;
    let mut load0 = None;
    let mut polls_total = 0u64;
    let mut periods = Vec::new();
    for i in 0..opts.warmup + opts.n.max(1) {
        if i == opts.warmup {
            if let Some(pid) = pid {
                load0 = LoadSample::read(pid).ok();
                before = Some(WorkerCost::sample(pid)?);
            }
        }
        let t0 = Instant::now();
        let id = studio
            .submit(JobSubmission::new(kind, prompt_for(kind, i)))
            .map_err(|e| BenchError::new(format!("submit: {} {}", e.status, e.message)))?;
        let mut polls = 0u64;
        let mut last = Instant::now();
        let detail = loop {
            if !opts.poll_every.is_zero() {
                std::thread::sleep(opts.poll_every);
            }
            let d = studio.job(&id);
            polls += 1;
            let now = Instant::now();
            periods.push(now - last);
            last = now;
            match d {
                Some(d) if d.summary.state == "done" => break d,
                Some(d) if d.summary.state == "failed" => {
                    return Err(BenchError::new(format!(
                        "{kind} job {id} failed: {}",
                        d.summary.last_error.unwrap_or_default()
                    )))
                }
                None => return Err(BenchError::new(format!("job {id} vanished"))),
                Some(d) if t0.elapsed() > opts.timeout => {
                    return Err(BenchError::new(format!(
                        "{kind} job {id} still {} after {:?}",
                        d.summary.state, opts.timeout
                    )))
                }
                Some(_) => {}
            }
        };
        let took = last - t0;
        if i == 0 {
            series.cold = took;
        }
        series.result_bytes = match &detail.result {
            Some(ResultView::File { bytes, .. }) => *bytes,
            Some(ResultView::Json { value, .. }) => value.to_string().len() as u64,
            None => 0,
        };
        if i >= opts.warmup {
            series.ids.push(id);
            series.submit_to_done.push(took);
            series.studio_ms.push(
                detail
                    .summary
                    .updated_ms
                    .saturating_sub(detail.summary.submitted_ms),
            );
            polls_total += polls;
        }
    }
    if let (Some(pid), Some(l0)) = (pid, load0) {
        series.load = LoadSample::read(pid)
            .ok()
            .and_then(|l1| l1.share_since(&l0));
    }
    if let (Some(pid), Some(before)) = (pid, before) {
        let after = WorkerCost::sample(pid)?;
        series.cost = Some(WorkerCost::between(series.ids.len(), &before, &after));
    }
    series.polls_per_job = polls_total as f64 / series.ids.len() as f64;
    periods.sort();
    series.poll_period = periods.get(periods.len() / 2).copied().unwrap_or_default();
    Ok(series)
}

/// The synthetic engine alone, in this process, on the same tasks as a job series: what a
/// job of `kind` costs before any transport, thread or studio is involved.
pub fn engine_baseline(kind: TaskKind, n: usize) -> Result<Vec<Duration>, BenchError> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let spec = JobSubmission::new(kind, prompt_for(kind, i))
            .to_spec()
            .map_err(|e| BenchError::new(e.message))?;
        let t0 = Instant::now();
        let output = studio_engines::synthetic::render(&spec.task);
        out.push(t0.elapsed());
        std::hint::black_box(output).map_err(|e| BenchError::new(e.message))?;
    }
    Ok(out)
}

/// Warm-up jobs of the machine-alone baseline: its queues and rings reach their working
/// sizes before the timed jobs.
pub const MACHINE_WARMUP_JOBS: usize = 1_000;

/// The worker machine alone (`studio_core` in this process: no socket, no thread, no
/// engine), on a stream of synthetic llm jobs 5 ms apart: each job's offer, result, ack and
/// tick, timed together. The core's own share of a job's time on the loop thread.
pub fn machine_baseline(n: usize) -> Vec<Duration> {
    use studio_core::testing::{registered, Driver, LlmJob};
    let mut d = Driver::live(registered("http://127.0.0.1:9"));
    for i in 0..MACHINE_WARMUP_JOBS {
        d.run_llm_job(LlmJob::new(i));
    }
    let jobs: Vec<LlmJob> = (MACHINE_WARMUP_JOBS..MACHINE_WARMUP_JOBS + n)
        .map(LlmJob::new)
        .collect();
    jobs.into_iter()
        .map(|job| {
            let t0 = Instant::now();
            d.run_llm_job(job);
            t0.elapsed()
        })
        .collect()
}

/// What the tap saw of a series' jobs.
#[derive(Clone, Debug, Default)]
pub struct TapTimes {
    /// offer frame -> accept frame.
    pub offer_to_accept: Vec<Duration>,
    /// offer frame -> the result fully sent (completeJson frame, or the last byte of the
    /// upload request).
    pub offer_to_result: Vec<Duration>,
    /// Uploads only: offer frame -> the upload's TCP connection accepted.
    pub offer_to_upload_open: Vec<Duration>,
    /// Uploads only: the upload's TCP connection accepted -> its request fully sent.
    pub upload_send: Vec<Duration>,
    /// Uploads only: request fully sent -> the studio's response started.
    pub upload_answer: Vec<Duration>,
    /// Offer frame payload sizes.
    pub offer_bytes: Vec<usize>,
    /// Result payload sizes (completeJson frame, or the upload body).
    pub result_bytes: Vec<u64>,
    /// offer -> result of the jobs during which the worker sent a `logBatch` frame (between
    /// the offer and the result), and of the others.
    pub with_log_batch: Vec<Duration>,
    pub without_log_batch: Vec<Duration>,
    /// Jobs the tap missed an event of.
    pub missing: usize,
}

/// Correlates the tap's events with the series' job ids.
pub fn tap_times(log: &TapLog, ids: &[String]) -> TapTimes {
    let mut t = TapTimes::default();
    for id in ids {
        let Some(offer) = log.offers.get(id) else {
            t.missing += 1;
            continue;
        };
        t.offer_bytes.push(offer.payload_bytes);
        if let Some(a) = log.accepts.get(id) {
            t.offer_to_accept
                .push(a.at.saturating_duration_since(offer.at));
        }
        let result_at = if let Some(c) = log.completes.get(id) {
            t.result_bytes.push(c.payload_bytes as u64);
            Some(c.at)
        } else if let Some(u) = log.upload(id) {
            if let Some(done) = u.request_done {
                t.offer_to_upload_open
                    .push(u.opened.saturating_duration_since(offer.at));
                t.upload_send.push(done.saturating_duration_since(u.opened));
                t.result_bytes.push(u.request_body_bytes);
                if let Some(r) = u.response_first {
                    t.upload_answer.push(r.saturating_duration_since(done));
                }
            }
            u.request_done
        } else {
            None
        };
        let Some(result_at) = result_at else {
            t.missing += 1;
            continue;
        };
        let took = result_at.saturating_duration_since(offer.at);
        t.offer_to_result.push(took);
        let batch_inside = log
            .log_batches
            .iter()
            .any(|b| b.at >= offer.at && b.at <= result_at);
        if batch_inside {
            t.with_log_batch.push(took);
        } else {
            t.without_log_batch.push(took);
        }
    }
    t
}

/// Median of byte counts.
pub fn median_bytes<T: Copy + Into<u64>>(v: &[T]) -> Option<u64> {
    let mut v: Vec<u64> = v.iter().map(|x| (*x).into()).collect();
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

impl TapTimes {
    pub fn to_json(&self) -> Value {
        let s = |v: &[Duration]| Summary::of(v).map(|s| s.to_json());
        json!({
            "offer_to_accept": s(&self.offer_to_accept),
            "offer_to_result": s(&self.offer_to_result),
            "offer_to_upload_connect": s(&self.offer_to_upload_open),
            "upload_connect_to_sent": s(&self.upload_send),
            "upload_sent_to_answer": s(&self.upload_answer),
            "offer_to_result_with_log_batch": s(&self.with_log_batch),
            "offer_to_result_without_log_batch": s(&self.without_log_batch),
            "offer_frame_bytes_median": median_bytes(&self.offer_bytes.iter().map(|&b| b as u64).collect::<Vec<_>>()),
            "result_bytes_median": median_bytes(&self.result_bytes),
            "jobs_missing_events": self.missing,
        })
    }
}

impl JobSeries {
    pub fn to_json(&self) -> Value {
        let studio: Vec<f64> = self.studio_ms.iter().map(|&m| m as f64 * 1e3).collect();
        json!({
            "kind": self.kind.to_string(),
            "submit_to_completed": Summary::of(&self.submit_to_done).map(|s| s.to_json()),
            "studio_clock_submit_to_done_1ms_res": Summary::of_us(&studio).map(|s| s.to_json()),
            "cold_first_job_us": crate::stats::round1(self.cold.as_secs_f64() * 1e6),
            "polls_per_job": crate::stats::round1(self.polls_per_job),
            "poll_period_us": crate::stats::round1(self.poll_period.as_secs_f64() * 1e6),
            "result_bytes": self.result_bytes,
            "worker_cost": self.cost.as_ref().map(WorkerCost::to_json),
            "cpu_load": self.load.as_ref().map(LoadShare::to_json),
        })
    }
}
