//! `studio-bench`: see the library docs (`studio_bench`) and BENCHMARKS.md.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use studio_bench::machine::Machine;
use studio_bench::report::Report;
use studio_bench::stats::Summary;
use studio_bench::{echo, Options};

const USAGE: &str = "\
studio-bench: size, idle RSS, idle wakeups and per-job overhead of studio-worker binaries

Build the worker first:  cargo build --release -p studio-worker
Then:                    cargo run --release -p studio-bench -- [OPTIONS]

Options:
  --bin PATH        a worker binary to measure (repeat to compare side by side;
                    default target/release/studio-worker)
  --idle-secs N     the idle window in seconds (default 60)
  --jobs N          jobs per kind, llm and image (default 200)
  --json PATH       also write the results as JSON to PATH
  --quick           a smoke run: idle 5 s, 20 jobs (explicit --idle-secs / --jobs win)
  --echo-n N        echo round trips of the transport baseline (default 2000)
  --echo-bytes N    echo message size in bytes (default 600)
  --warmup N        untimed jobs before each series (default 3)
  --poll-us N       sleep between two job-state polls in microseconds (default 50)
  -h, --help        this text

Linux only (reads /proc).";

struct Args {
    bins: Vec<PathBuf>,
    json: Option<PathBuf>,
    opts: Options,
}

fn parse_args(args: &[String]) -> Result<Option<Args>, String> {
    let mut opts = Options::default();
    let mut bins = Vec::new();
    let mut json = None;
    let mut quick = false;
    let (mut idle, mut jobs) = (None, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let mut value = || -> Result<String, String> {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        let num = |v: String| -> Result<u64, String> {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: `{v}` is not a whole number"))
        };
        match flag {
            "-h" | "--help" => return Ok(None),
            "--bin" => bins.push(PathBuf::from(value()?)),
            "--json" => json = Some(PathBuf::from(value()?)),
            "--quick" => quick = true,
            "--idle-secs" => idle = Some(num(value()?)?),
            "--jobs" => jobs = Some(num(value()?)?),
            "--echo-n" => opts.echo_n = num(value()?)?.max(1) as usize,
            "--echo-bytes" => opts.echo_bytes = num(value()?)? as usize,
            "--warmup" => opts.jobs.warmup = num(value()?)? as usize,
            "--poll-us" => opts.jobs.poll_every = Duration::from_micros(num(value()?)?),
            other => return Err(format!("unknown argument `{other}` (see --help)")),
        }
    }
    let (quick_idle, quick_jobs) = if quick {
        (
            studio_bench::QUICK_IDLE_SECS,
            studio_bench::QUICK_JOBS as u64,
        )
    } else {
        (
            studio_bench::DEFAULT_IDLE_SECS,
            studio_bench::DEFAULT_JOBS as u64,
        )
    };
    opts.idle = Duration::from_secs(idle.unwrap_or(quick_idle).max(1));
    opts.jobs.n = jobs.unwrap_or(quick_jobs).max(1) as usize;
    if bins.is_empty() {
        bins.push(default_bin());
    }
    Ok(Some(Args { bins, json, opts }))
}

/// `target/release/studio-worker` of this workspace (or of `$CARGO_TARGET_DIR`), relative
/// to the current directory when it exists there.
fn default_bin() -> PathBuf {
    let rel = Path::new("target/release/studio-worker");
    if rel.exists() {
        return rel.to_path_buf();
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir).join("release/studio-worker");
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release/studio-worker")
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&argv) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("studio-bench: {e}");
            return ExitCode::from(2);
        }
    };
    if !cfg!(target_os = "linux") {
        eprintln!("studio-bench: Linux only (it reads /proc)");
        return ExitCode::from(2);
    }
    for b in &args.bins {
        if !b.is_file() {
            eprintln!(
                "studio-bench: {} does not exist; build it with `cargo build --release -p \
                 studio-worker` or pass --bin PATH",
                b.display()
            );
            return ExitCode::from(2);
        }
    }
    let machine = Machine::probe();
    let mut progress = |s: &str| eprintln!("studio-bench: {s}");
    let load1 = machine
        .loadavg
        .as_deref()
        .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok());
    if load1.is_some_and(|l| l > 0.5) {
        progress(&format!(
            "warning: load average {} at start: other work on this machine skews every \
             figure (wakeup latency first); rerun on a quiet machine for numbers to keep",
            machine.loadavg.as_deref().unwrap_or("?")
        ));
    }

    let echo_once = |progress: &mut dyn FnMut(&str), when: &str| {
        progress(&format!(
            "echo baseline, {when} ({} x {} B)",
            args.opts.echo_n, args.opts.echo_bytes
        ));
        echo::echo_round_trips(args.opts.echo_n, args.opts.echo_bytes).map_err(|e| {
            eprintln!("studio-bench: echo baseline: {e}");
            ExitCode::FAILURE
        })
    };
    let mut echo_samples = match echo_once(&mut progress, "start") {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut echo_medians: Vec<f64> = Summary::of(&echo_samples)
        .map(|s| s.median_us)
        .into_iter()
        .collect();

    // The optional baselines: one that fails is left out of the report, with a line saying so.
    let optional = |what: &str, samples: std::io::Result<Vec<std::time::Duration>>| {
        samples
            .map_err(|e| eprintln!("studio-bench: {what} skipped: {e}"))
            .ok()
            .and_then(|s| Summary::of(&s))
    };
    let (n, bytes) = (args.opts.echo_n, args.opts.echo_bytes);
    progress("echo baseline, both threads pinned to CPU 0");
    let echo_pinned = optional("pinned echo", echo::echo_round_trips_on(n, bytes, Some(0)));
    // The same through a second thread and back: a job's four wake-ups with no work.
    progress("echo baseline through a second thread");
    let relayed = optional("relayed echo", echo::relay_round_trips_on(n, bytes, None));
    progress("echo baseline through a second thread, all three threads pinned to CPU 0");
    let relayed_pinned = optional(
        "relayed echo",
        echo::relay_round_trips_on(n, bytes, Some(0)),
    );

    let mut engine = Vec::new();
    for kind in studio_bench::KINDS {
        progress(&format!(
            "engine alone: {} synthetic {kind} renders",
            args.opts.jobs.n
        ));
        match studio_bench::measure::engine_baseline(kind, args.opts.jobs.n)
            .map(|s| Summary::of(&s))
        {
            Ok(Some(s)) => engine.push((kind, s)),
            Ok(None) => {}
            Err(e) => {
                eprintln!("studio-bench: engine baseline: {e}");
                return ExitCode::FAILURE;
            }
        }
    }

    progress(&format!(
        "machine alone: {} synthetic llm jobs through the worker's core",
        args.opts.jobs.n
    ));
    let machine_alone = Summary::of(&studio_bench::measure::machine_baseline(args.opts.jobs.n));

    let labels = studio_bench::labels(&args.bins);
    let mut bins = Vec::new();
    for (label, bin) in labels.iter().zip(&args.bins) {
        match studio_bench::bench_binary(label, bin, &args.opts, &mut progress) {
            Ok(r) => bins.push(r),
            Err(e) => {
                eprintln!("studio-bench: {label}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    match echo_once(&mut progress, "end") {
        Ok(s) => {
            echo_medians.extend(Summary::of(&s).map(|s| s.median_us));
            echo_samples.extend(s);
        }
        Err(code) => return code,
    }
    let Some(echo) = Summary::of(&echo_samples) else {
        eprintln!("studio-bench: no echo samples");
        return ExitCode::FAILURE;
    };
    let report = Report {
        machine,
        options: args.opts,
        command: std::iter::once("studio-bench".to_string())
            .chain(argv)
            .collect::<Vec<_>>()
            .join(" "),
        source: studio_bench::machine::source_revision(),
        echo,
        echo_medians,
        echo_pinned,
        relayed,
        relayed_pinned,
        loadavg_at_end: studio_bench::machine::loadavg(),
        engine,
        machine_alone,
        bins,
    };
    print!("{}", report.table());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report.to_json()).unwrap_or_default();
        if let Err(e) = std::fs::write(path, text + "\n") {
            eprintln!("studio-bench: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        eprintln!("studio-bench: wrote {}", path.display());
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Args>, String> {
        parse_args(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn flags() {
        let a = parse(&["--quick", "--bin", "a", "--bin=b", "--jobs", "7"])
            .unwrap()
            .unwrap();
        assert_eq!(a.bins, vec![PathBuf::from("a"), PathBuf::from("b")]);
        assert_eq!(
            a.opts.idle,
            Duration::from_secs(studio_bench::QUICK_IDLE_SECS)
        );
        assert_eq!(a.opts.jobs.n, 7);
        let a = parse(&[]).unwrap().unwrap();
        assert_eq!(a.opts.idle, Duration::from_secs(60));
        assert_eq!(a.opts.jobs.n, 200);
        assert_eq!(a.bins.len(), 1);
        assert!(parse(&["--help"]).unwrap().is_none());
        assert!(parse(&["--jobs"]).is_err());
        assert!(parse(&["--jobs", "x"]).is_err());
        assert!(parse(&["--nope"]).is_err());
    }
}
