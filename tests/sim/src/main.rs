//! `studio-sim --seeds N --workers M [--seed S] [--jobs J] [--hours H] [--trace-dir D]
//! [--hash] [--verbose]`: runs seeds S, S+1, ..., S+N-1 and ends with exactly one summary
//! line `seeds=N workers=M jobs=J lost=L doubled=D stuck=K`. A failing seed prints the
//! command that reproduces it and writes each worker's trace to
//! `<trace-dir>/seed-S/worker-K.jsonl` (above 100 workers, only the implicated workers'). Exit code 1 when anything is lost, doubled, stuck
//! or an invariant broke; 2 on a usage error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use studio_sim::{describe, run, trace_out, trace_selection, Faults, SimConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Args {
    seeds: u64,
    workers: usize,
    seed: u64,
    jobs: Option<usize>,
    hours: Option<f64>,
    trace_dir: PathBuf,
    hash: bool,
    verbose: bool,
    without: Vec<String>,
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("error: {msg}");
    eprintln!(
        "usage: studio-sim --seeds N --workers M [--seed S] [--jobs J] [--hours H] \
         [--without CLASS,..] [--trace-dir DIR] [--hash] [--verbose]"
    );
    ExitCode::from(2)
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        seeds: 1,
        workers: 10,
        seed: 1,
        jobs: None,
        hours: None,
        trace_dir: PathBuf::from("sim-failures"),
        hash: false,
        verbose: false,
        without: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--seeds" => a.seeds = val()?.parse().map_err(|e| format!("--seeds: {e}"))?,
            "--workers" => a.workers = val()?.parse().map_err(|e| format!("--workers: {e}"))?,
            "--seed" => a.seed = val()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--jobs" => a.jobs = Some(val()?.parse().map_err(|e| format!("--jobs: {e}"))?),
            "--hours" => {
                let h: f64 = val()?.parse().map_err(|e| format!("--hours: {e}"))?;
                if !(h.is_finite() && h > 0.0) {
                    return Err("--hours must be > 0".into());
                }
                a.hours = Some(h)
            }
            "--trace-dir" => a.trace_dir = PathBuf::from(val()?),
            "--without" => {
                for name in val()?.split(',').filter(|s| !s.is_empty()) {
                    if !Faults::all().disable(name) {
                        return Err(format!(
                            "--without: unknown fault class {name} (one of {})",
                            Faults::NAMES.join(", ")
                        ));
                    }
                    a.without.push(name.to_string());
                }
            }
            "--hash" => a.hash = true,
            "--verbose" | "-v" => a.verbose = true,
            "--help" | "-h" => return Err("help".into()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.workers == 0 {
        return Err("--workers must be at least 1".into());
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => return usage(&e),
    };
    let (mut jobs, mut lost, mut doubled, mut stuck, mut failed_seeds) = (0, 0, 0, 0, 0);
    let started = Instant::now();
    for seed in args.seed..args.seed + args.seeds {
        let mut cfg = SimConfig::new(seed, args.workers);
        if let Some(j) = args.jobs {
            cfg.jobs = j;
        }
        if let Some(h) = args.hours {
            cfg.chaos = Duration::from_secs_f64(h * 3600.0);
        }
        cfg.hash = args.hash;
        for name in &args.without {
            cfg.faults.disable(name);
        }
        let t0 = Instant::now();
        let r = run(&cfg);
        jobs += r.submitted;
        lost += r.lost;
        doubled += r.doubled;
        stuck += usize::from(r.stuck);
        if args.verbose || args.hash {
            let hash = if r.hash.is_empty() {
                String::new()
            } else {
                format!(" hash={}", r.hash)
            };
            println!(
                "{} wall={:.2}s{hash}",
                describe(&r),
                t0.elapsed().as_secs_f64()
            );
        }
        if !r.ok() {
            failed_seeds += 1;
            println!("FAIL {}", describe(&r));
            for v in &r.violations {
                println!("  {v}");
            }
            let mut repro = format!(
                "cargo run --release --bin studio-sim -- --seeds 1 --workers {} --seed {seed}",
                args.workers
            );
            if let Some(j) = args.jobs {
                repro.push_str(&format!(" --jobs {j}"));
            }
            if let Some(h) = args.hours {
                repro.push_str(&format!(" --hours {h}"));
            }
            if !args.without.is_empty() {
                repro.push_str(&format!(" --without {}", args.without.join(",")));
            }
            println!("  reproduce: {repro}");
            // The run is deterministic: run it again, recording, for the trace files.
            let mut rec = cfg.clone();
            rec.record = true;
            rec.hash = false;
            // Every worker of a small fleet; at scale only the implicated ones.
            rec.record_only = trace_selection(&r);
            if let Some(only) = &rec.record_only {
                println!(
                    "  implicated: {} of {} workers {:?}",
                    only.len(),
                    args.workers,
                    only.iter().take(20).collect::<Vec<_>>()
                );
            }
            let rr = run(&rec);
            let dir = args.trace_dir.join(format!("seed-{seed}"));
            match trace_out::write_traces(&dir, &rr.traces) {
                Ok(p) => println!("  traces: {} files in {}", p.len(), dir.display()),
                Err(e) => println!("  traces: could not write {}: {e}", dir.display()),
            }
        }
    }
    if args.verbose {
        println!("wall={:.2}s", started.elapsed().as_secs_f64());
    }
    println!(
        "seeds={} workers={} jobs={jobs} lost={lost} doubled={doubled} stuck={stuck}",
        args.seeds, args.workers
    );
    if failed_seeds > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
