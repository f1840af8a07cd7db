//! `studio-worker demo [--out DIR] [--keep-running]`: the whole system on one machine.
//!
//! 1. Start the loopback studio (`studio_local`) on an ephemeral `127.0.0.1` port with one
//!    pre-provisioned worker (a random token), storing uploads in `DIR` (default
//!    `./demo-out`).
//! 2. Write a throw-away config pointing at it (in the OS temp dir; the operator's own
//!    config is never touched) and run the same daemon as `studio-worker run` (any
//!    [`WorkerDaemon`]: the binary's own shell), on a thread of this process.
//! 3. Submit one job of each kind (image, llm, audio_stt, audio_tts, video) to the
//!    synthetic engine and wait until all are finished (at most [`JOB_TIMEOUT`]).
//! 4. Print `job | kind | status | ms | output` (ms from submit to done as the studio saw
//!    it); binary results are the uploaded files in `DIR`, JSON results are written there
//!    as `<job>.json`.
//! 5. Shut the worker down gracefully (`Input::Shutdown`: close 1000, exit 0) and stop the
//!    studio; with `--keep-running`, both stay up until Ctrl-C first.
//!
//! The exit code is 0 only when every job completed and the worker exited cleanly.

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use studio_core::wire::TaskKind;
use studio_local::{JobSubmission, JobSummary, LocalConfig, LocalStudio, ResultView};

use crate::config::Config;
use crate::control::Exit;
use crate::daemon::WorkerDaemon;
use crate::entropy;
use crate::error::RunError;

/// Where results go without `--out`.
pub const DEFAULT_OUT_DIR: &str = "demo-out";
/// The demo's worker id.
pub const WORKER_ID: &str = "demo-worker";
/// How long the demo waits for the worker's session.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the demo waits for all five jobs.
pub const JOB_TIMEOUT: Duration = Duration::from_secs(60);

/// The demo's jobs: one per kind.
pub fn demo_jobs() -> Vec<(TaskKind, &'static str)> {
    vec![
        (
            TaskKind::Image,
            "a lighthouse on a cliff at dusk, pixel art",
        ),
        (
            TaskKind::Llm,
            "Write a two-line poem about a worker that never drops a job.",
        ),
        (TaskKind::AudioStt, "transcribe the demo clip"),
        (TaskKind::AudioTts, "Hello from the studio worker demo."),
        (TaskKind::Video, "a paper boat drifting down a rainy street"),
    ]
}

/// Runs the demo (`studio-worker demo`): results in `out` (default [`DEFAULT_OUT_DIR`]),
/// SIGINT/SIGTERM handled. Returns the process exit code.
pub fn run<D: WorkerDaemon>(out: Option<&Path>, keep_running: bool) -> Result<i32, RunError> {
    run_with::<D>(&DemoOptions {
        out_dir: out.map_or_else(|| PathBuf::from(DEFAULT_OUT_DIR), Path::to_path_buf),
        keep_running,
        handle_signals: true,
    })
}

/// How to run the demo.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Where the studio stores the results.
    pub out_dir: PathBuf,
    /// Keep both running until SIGINT/SIGTERM after the jobs are done.
    pub keep_running: bool,
    /// Forward SIGINT/SIGTERM to the worker (off in tests: it changes the process's
    /// signal handling).
    pub handle_signals: bool,
}

/// Runs the demo with `options` on the daemon `D`; returns the process exit code.
pub fn run_with<D: WorkerDaemon>(options: &DemoOptions) -> Result<i32, RunError> {
    let out_dir = options.out_dir.clone();
    let keep_running = options.keep_running;
    let token = entropy::random_hex(32)?;

    let studio = LocalStudio::bind(LocalConfig {
        out_dir: out_dir.clone(),
        auto_approve: true,
        workers: vec![(WORKER_ID.to_string(), token.clone())],
        ..LocalConfig::default()
    })
    .map_err(RunError::io("start the local studio"))?
    .spawn()
    .map_err(RunError::io("start the local studio"))?;
    println!("local studio:  {}", studio.base_url());

    let config_dir =
        std::env::temp_dir().join(format!("studio-worker-demo-{}", std::process::id()));
    let config_path = config_dir.join("config.toml");
    let config = Config {
        api_base_url: studio.base_url(),
        worker_id: Some(WORKER_ID.to_string()),
        auth_token: Some(token),
        auto_update_enabled: false,
        ..Config::default()
    };
    config.save(&config_path)?;
    let daemon = D::from_config(config, config_path).inspect_err(|_| {
        let _ = fs::remove_dir_all(&config_dir);
    })?;
    let control = daemon.control();
    if options.handle_signals {
        crate::signals::forward_to(control.clone())
            .map_err(RunError::io("install the SIGINT/SIGTERM handler"))?;
    }
    let worker = thread::Builder::new()
        .name("worker".into())
        .spawn(move || daemon.run())
        .map_err(RunError::io("start the worker thread"))?;

    println!(
        "worker:        {WORKER_ID} ({}, synthetic engines)",
        D::SHELL
    );
    println!("results:       {}", out_dir.display());
    if !wait_until(CONNECT_TIMEOUT, || {
        worker.is_finished() || studio.wait_for_worker(WORKER_ID, Duration::from_millis(200))
    }) || worker.is_finished()
    {
        crate::logging::program_line("the demo worker did not connect to the local studio");
        control.shutdown();
        let exit = join(worker);
        studio.shutdown();
        let _ = fs::remove_dir_all(&config_dir);
        return Ok(if exit.code.is_error() {
            exit.code.code()
        } else {
            1
        });
    }

    let mut ids = Vec::new();
    for (kind, prompt) in demo_jobs() {
        match studio.submit(JobSubmission::new(kind, prompt)) {
            Ok(id) => ids.push(id),
            Err(e) => {
                crate::logging::program_line(format_args!("cannot submit the {kind:?} job: {e:?}"))
            }
        }
    }
    let finished = |jobs: &[JobSummary]| {
        ids.iter().all(|id| {
            jobs.iter()
                .any(|j| &j.id == id && (j.state == "done" || j.state == "failed"))
        })
    };
    wait_until(JOB_TIMEOUT, || {
        worker.is_finished() || finished(&studio.jobs())
    });

    let jobs = studio.jobs();
    println!();
    let mut rows = Vec::new();
    for id in &ids {
        let Some(job) = jobs.iter().find(|j| &j.id == id) else {
            continue;
        };
        let ms = if job.state == "done" {
            job.updated_ms.saturating_sub(job.submitted_ms).to_string()
        } else {
            "-".to_string()
        };
        let output = match studio.job(id).and_then(|d| d.result) {
            Some(ResultView::File {
                path, ext, bytes, ..
            }) => match path {
                Some(p) => format!("{} ({bytes} bytes)", p.display()),
                None => format!("{ext}, {bytes} bytes"),
            },
            Some(ResultView::Json { value, .. }) => save_json(&out_dir, id, &value),
            _ => job.last_error.clone().unwrap_or_default(),
        };
        rows.push([
            job.id.clone(),
            kind_name(job.kind).to_string(),
            job.state.clone(),
            ms,
            output,
        ]);
    }
    print_table(&["job", "kind", "status", "ms", "output"], &rows);
    let all_done = ids.len() == demo_jobs().len()
        && ids
            .iter()
            .all(|id| jobs.iter().any(|j| &j.id == id && j.state == "done"));
    println!();
    println!(
        "{}",
        if all_done {
            "all jobs completed"
        } else {
            "some jobs did not complete"
        }
    );

    if keep_running && !worker.is_finished() {
        println!(
            "keeping the worker and the local studio ({}) running; Ctrl-C to stop",
            studio.base_url()
        );
    } else {
        control.shutdown();
    }
    let exit = join(worker);
    studio.shutdown();
    let _ = fs::remove_dir_all(&config_dir);
    println!("worker exited: {}", exit.reason);
    Ok(if all_done && !exit.code.is_error() {
        0
    } else if exit.code.is_error() {
        exit.code.code()
    } else {
        1
    })
}

fn join(worker: thread::JoinHandle<Exit>) -> Exit {
    worker.join().unwrap_or_else(|_| Exit {
        code: studio_core::worker::ExitCode::Fatal,
        reason: "the worker thread panicked".into(),
    })
}

/// Calls `done` every 50 ms until it says yes or `timeout` passes; whether it said yes.
fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Writes a JSON result to `<out>/<job>.json`; the table cell.
fn save_json(out: &Path, id: &str, value: &serde_json::Value) -> String {
    let path = out.join(format!("{id}.json"));
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    match fs::write(&path, text) {
        Ok(()) => path.display().to_string(),
        Err(e) => format!("(cannot write {}: {e})", path.display()),
    }
}

/// The wire name of a kind.
pub fn kind_name(kind: TaskKind) -> &'static str {
    match kind {
        TaskKind::Image => "image",
        TaskKind::Llm => "llm",
        TaskKind::AudioStt => "audio_stt",
        TaskKind::AudioTts => "audio_tts",
        TaskKind::Video => "video",
    }
}

/// Formats rows under a header as a `|`-separated table with aligned columns.
pub fn format_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("{}\n", padded.join(" | ").trim_end())
    };
    let mut text = line(header.to_vec());
    text.push_str(&format!("{}\n", widths.map(|w| "-".repeat(w)).join("-|-")));
    for row in rows {
        text.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    text
}

fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    print!("{}", format_table(header, rows));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_covers_every_kind_once() {
        let kinds: Vec<TaskKind> = demo_jobs().into_iter().map(|(k, _)| k).collect();
        assert_eq!(kinds, TaskKind::ALL.to_vec());
        for k in TaskKind::ALL {
            let wire = serde_json::to_value(k).unwrap();
            assert_eq!(wire, kind_name(k));
        }
    }

    #[test]
    fn the_table_aligns_columns() {
        let table = format_table(
            &["job", "kind", "ms"],
            &[
                ["j-1".into(), "image".into(), "12".into()],
                ["job-22".into(), "llm".into(), "7".into()],
            ],
        );
        assert_eq!(
            table,
            "job    | kind  | ms\n\
             -------|-------|---\n\
             j-1    | image | 12\n\
             job-22 | llm   | 7\n"
        );
    }
}
