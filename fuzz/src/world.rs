//! `world`: a whole simulated fleet ([`studio_sim::run`]) from a fuzzer-chosen seed and a
//! few knobs, kept small so one execution takes milliseconds.
//!
//! # Input format
//!
//! ```text
//! bytes 0-7   simulation seed (u64 little-endian)
//! byte 8      workers: 1 + b % 4
//! byte 9      jobs: b % 13
//! byte 10     chaos length: 5 + b % 120 seconds
//! bytes 11-12 fault classes (u16 little-endian), bit i = Faults::NAMES[i]
//! byte 13     mean time between link faults: 2 + b % 60 seconds
//! byte 14     0x01: run twice with hashing and compare (determinism)
//! ```
//!
//! Missing bytes read as zero (seed 0, one worker, no jobs, 5 s chaos, no faults).
//!
//! # Invariants checked
//!
//! Everything the simulation checks ([`SimReport::ok`]): no job lost or completed twice,
//! the fleet quiesces after heal, and no invariant violation recorded by the simulated
//! shells (usage errors, deadlines not after now, timer storms, unexpected exits, studio
//! protocol violations, studio invariants, dispatches of jobs never offered, ...); plus,
//! with 0x01, the same configuration gives the same run hash.
//!
//! Every fault class the input selects is on, `stalls` and `duplicates` included (the two
//! core bugs they used to trigger, a stale hello beating a newer connection and a re-sent
//! result for a re-offered job being taken twice, are fixed; `corpus/world/regression-*`
//! and the `regression_*` tests keep them covered).

use std::time::Duration;

use studio_sim::{describe, run, Faults, SimConfig, SimReport};

use crate::reader::Reader;

/// The simulation configuration an input selects.
pub fn config(data: &[u8]) -> (SimConfig, bool) {
    let mut r = Reader::new(data);
    let seed = r.u64();
    let workers = 1 + usize::from(r.u8() % 4);
    let mut cfg = SimConfig::new(seed, workers);
    cfg.jobs = usize::from(r.u8() % 13);
    cfg.chaos = Duration::from_secs(5 + u64::from(r.u8() % 120));
    let mask = r.u16();
    cfg.faults = Faults::all();
    for (i, name) in Faults::NAMES.iter().enumerate() {
        if mask & (1 << i) == 0 {
            cfg.faults.disable(name);
        }
    }
    cfg.fault_mean = Duration::from_secs(2 + u64::from(r.u8() % 60));
    let determinism = r.u8() & 1 == 1;
    (cfg, determinism)
}

/// Runs one input; `Err` describes what the simulation found.
pub fn check(data: &[u8]) -> Result<(), String> {
    let (mut cfg, determinism) = config(data);
    cfg.hash = determinism;
    let report = run(&cfg);
    verdict(&cfg, &report)?;
    if determinism {
        let again = run(&cfg);
        if again.hash != report.hash || again.steps != report.steps {
            return Err(format!(
                "the same configuration gave two runs: {} / {} ({cfg:?})",
                describe(&report),
                describe(&again)
            ));
        }
    }
    Ok(())
}

fn verdict(cfg: &SimConfig, report: &SimReport) -> Result<(), String> {
    if report.ok() {
        return Ok(());
    }
    let off: Vec<&str> = Faults::NAMES
        .into_iter()
        .filter(|name| {
            let mut f = cfg.faults.clone();
            f.disable(name);
            f == cfg.faults
        })
        .collect();
    Err(format!(
        "simulation failed: {}\n  violations: {:#?}\n  config: {cfg:?}\n  \
         near-equivalent CLI (the CLI keeps the default fault mean of 90 s, this run used \
         {} s): studio-sim --seeds 1 --seed {} --workers {} --jobs {} --hours {}{}",
        describe(report),
        report.violations,
        cfg.fault_mean.as_secs(),
        cfg.seed,
        cfg.workers,
        cfg.jobs,
        cfg.chaos.as_secs_f64() / 3600.0,
        if off.is_empty() {
            String::new()
        } else {
            format!(" --without {}", off.join(","))
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use studio_sim::Sabotage;

    #[test]
    fn empty_and_busy_inputs_pass() {
        check(&[]).unwrap();
        let busy = [7, 0, 0, 0, 0, 0, 0, 0, 3, 12, 60, 0xff, 0x7f, 10, 1];
        check(&busy).unwrap();
        let (cfg, det) = config(&busy);
        assert_eq!((cfg.workers, cfg.jobs, det), (4, 12, true));
        assert_eq!(cfg.faults, Faults::all());
    }

    #[test]
    fn the_committed_seeds_pass() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus/world");
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            check(&data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }

    /// Regressions: two inputs that failed before the core fixes (and passed with their
    /// fault class off) now pass with it on.
    #[test]
    fn regression_stalls_and_duplicates_pass() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus/world");
        for (name, class) in [
            ("regression-stalls-stale-hello.bin", "stalls"),
            ("regression-duplicates-resent-result.bin", "duplicates"),
        ] {
            let data = std::fs::read(format!("{dir}/{name}")).unwrap();
            let (cfg, _) = config(&data);
            let mut without = cfg.faults.clone();
            assert!(
                without.disable(class) && without != cfg.faults,
                "{name}: {class} is on"
            );
            check(&data).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn the_verdict_can_fail() {
        let (mut cfg, _) = config(&[3, 0, 0, 0, 0, 0, 0, 0, 1, 8, 60]);
        cfg.sabotage = Sabotage::LoseEngineResults;
        // The job deadline would fail the lost runs and requeue them; past the run's end it
        // cannot, so the lost results must show in the verdict.
        cfg.job_deadline = Duration::from_secs(1_000_000);
        let report = run(&cfg);
        assert!(verdict(&cfg, &report).is_err(), "{}", describe(&report));
    }
}
