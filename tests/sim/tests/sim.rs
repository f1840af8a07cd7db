//! The simulation's own tests: determinism, a small fleet under every fault class, and
//! proof that the checker can fail.

use studio_sim::{run, trace_out, trace_selection, Faults, Sabotage, SimConfig, TRACE_ALL_UP_TO};

fn small(seed: u64) -> SimConfig {
    let mut cfg = SimConfig::new(seed, 10);
    cfg.chaos = std::time::Duration::from_secs(300);
    cfg.jobs = 40;
    cfg
}

#[test]
fn the_same_seed_gives_the_same_run_hash() {
    let mut cfg = small(7);
    cfg.hash = true;
    let a = run(&cfg);
    let b = run(&cfg);
    assert_eq!(a.hash.len(), 64);
    assert_eq!(a.hash, b.hash);
    assert_eq!(a.steps, b.steps);
    let mut other = cfg.clone();
    other.seed = 8;
    assert_ne!(run(&other).hash, a.hash, "the seed matters");
}

#[test]
fn twenty_seeds_of_ten_workers_with_every_fault_class() {
    let mut failures = Vec::new();
    let mut faults = 0;
    for seed in 1..=20 {
        let cfg = small(seed);
        assert_eq!(cfg.faults, Faults::all());
        let r = run(&cfg);
        faults += r.faults_injected;
        assert!(r.submitted == 40);
        if !r.ok() {
            failures.push(format!("{}: {:?}", studio_sim::describe(&r), r.violations));
        }
    }
    assert!(faults > 100, "faults were injected: {faults}");
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn a_cross_wired_offer_is_caught_as_an_unoffered_dispatch() {
    let mut cfg = small(3);
    cfg.faults = Faults::none();
    cfg.sabotage = Sabotage::CrossWireOffers;
    let r = run(&cfg);
    assert!(!r.ok());
    assert!(
        r.violations
            .iter()
            .any(|v| v.contains("never offered to it")),
        "{:?}",
        r.violations
    );
    assert!(
        !r.implicated.is_empty(),
        "the dispatching worker is implicated"
    );
    assert_eq!(
        trace_selection(&r),
        None,
        "a small fleet traces every worker"
    );
}

#[test]
fn lost_engine_results_are_caught_as_stuck() {
    let mut cfg = small(4);
    cfg.faults = Faults::none();
    cfg.sabotage = Sabotage::LoseEngineResults;
    cfg.settle_limit = std::time::Duration::from_secs(600);
    // No watchdog within the run: nothing frees a slot whose result never comes.
    cfg.job_deadline = std::time::Duration::from_secs(24 * 3600);
    let r = run(&cfg);
    assert!(r.stuck && r.lost > 0, "{}", studio_sim::describe(&r));
    assert!(!r.ok());
}

/// The same lost results with the job deadline: the watchdog fails each such job
/// retryable, the studio offers it again, and everything finishes.
#[test]
fn the_job_deadline_recovers_lost_engine_results() {
    let mut cfg = small(4);
    cfg.faults = Faults::none();
    cfg.sabotage = Sabotage::LoseEngineResults;
    cfg.settle_limit = std::time::Duration::from_secs(600);
    let r = run(&cfg);
    assert!(r.ok(), "{} {:?}", studio_sim::describe(&r), r.violations);
    assert_eq!(r.done, 40);
}

/// Only crashes: every crashed worker comes back, its kept results delivered.
#[test]
fn crashed_workers_come_back_and_lose_no_result() {
    let mut failures = Vec::new();
    let mut crashes = 0;
    for seed in 1..=5 {
        let mut cfg = small(seed);
        cfg.faults = Faults::none();
        cfg.faults.crashes = true;
        let r = run(&cfg);
        crashes += r.crashes;
        if !r.ok() {
            failures.push(format!("{}: {:?}", studio_sim::describe(&r), r.violations));
        }
    }
    assert!(crashes > 5, "workers crashed: {crashes}");
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Hosts that keep no outbox: a worker killed while its result is on the way loses it,
/// and the run says so (`lost_results`).
#[test]
fn a_lost_outbox_is_caught_as_lost_results() {
    let mut lost = 0;
    for seed in 1..=10 {
        let mut cfg = small(seed);
        cfg.faults = Faults::none();
        cfg.faults.crashes = true;
        cfg.sabotage = Sabotage::NoOutbox;
        let r = run(&cfg);
        assert_eq!(r.lost_results > 0, !r.ok() && r.lost > 0);
        lost += r.lost_results;
    }
    assert!(lost > 0, "no result was lost without the outbox");
}

/// Only poison jobs: each ends failed (answered, not looped), the rest done.
#[test]
fn poison_offers_fail_their_jobs_and_nothing_loops() {
    let mut poisoned = 0;
    for seed in 1..=5 {
        let mut cfg = small(seed);
        cfg.faults = Faults::none();
        cfg.faults.poison_offers = true;
        cfg.jobs = 200;
        let r = run(&cfg);
        assert!(r.ok(), "{} {:?}", studio_sim::describe(&r), r.violations);
        poisoned += r.poison_offers;
        assert_eq!(r.done + r.failed, 200);
    }
    assert!(poisoned > 0, "no offer was poisoned");
}

#[test]
fn a_calm_fleet_finishes_everything() {
    let mut cfg = small(5);
    cfg.faults = Faults::none();
    let r = run(&cfg);
    assert!(r.ok(), "{} {:?}", studio_sim::describe(&r), r.violations);
    assert_eq!((r.done, r.failed, r.lost), (40, 0, 0));
}

#[test]
fn recorded_worker_traces_replay_without_divergence() {
    let mut cfg = small(9);
    cfg.workers = 3;
    cfg.jobs = 10;
    cfg.record = true;
    let r = run(&cfg);
    assert_eq!(r.traces.len(), 3);
    for (_, t) in &r.traces {
        assert!(!t.steps.is_empty());
        let text = trace_out::worker_trace_text(t);
        let rep = studio_core::trace::replay(&text).expect("a well-formed trace");
        assert!(rep.is_ok(), "{:?}", rep.first_divergence);
        assert_eq!(rep.steps as usize, t.steps.len());
    }
}

#[test]
fn a_failing_large_fleet_traces_only_the_implicated_workers() {
    let mut cfg = SimConfig::new(4, TRACE_ALL_UP_TO + 20);
    cfg.chaos = std::time::Duration::from_secs(120);
    cfg.jobs = 60;
    cfg.faults = Faults::none();
    cfg.sabotage = Sabotage::LoseEngineResults;
    cfg.settle_limit = std::time::Duration::from_secs(120);
    let r = run(&cfg);
    assert!(r.stuck && r.lost > 0, "{}", studio_sim::describe(&r));
    let only = trace_selection(&r).expect("a large fleet traces a selection");
    assert!(
        !only.is_empty() && only.len() < cfg.workers / 2,
        "{} of {} workers implicated",
        only.len(),
        cfg.workers
    );
    let mut rec = cfg.clone();
    rec.record = true;
    rec.record_only = Some(only.clone());
    let rr = run(&rec);
    assert_eq!(rr.lost, r.lost, "recording does not change the run");
    let traced: Vec<usize> = rr.traces.iter().map(|(k, _)| *k).collect();
    assert!(!traced.is_empty());
    assert!(
        traced.iter().all(|k| only.contains(k)),
        "{traced:?} not within {only:?}"
    );
}

/// Regression: under dense link faults a worker sent a result on three sessions that each
/// died before the studio read it, then gave up on its acknowledgement as if the studio had
/// ignored it, and the result was lost. (The fuzz corpus keeps the same world as
/// `corpus/world/regression-resends-on-dying-sessions.bin`.)
#[test]
fn a_result_sent_on_sessions_that_die_unread_is_not_given_up() {
    let mut cfg = SimConfig::new(13_572_767_776, 2);
    cfg.jobs = 6;
    cfg.chaos = std::time::Duration::from_secs(120);
    cfg.fault_mean = std::time::Duration::from_secs(2);
    // The link fault classes only: the first six (the fuzz input's class mask 0x3f).
    let (link, rest) = Faults::NAMES.split_at(6);
    assert_eq!(link.last(), Some(&"partitions"));
    for class in rest {
        cfg.faults.disable(class);
    }
    let r = run(&cfg);
    assert!(r.ok(), "{} {:?}", studio_sim::describe(&r), r.violations);
    assert_eq!(r.lost, 0);
}

/// Regression: under dense faults with worker crashes, a restarted worker re-sends its kept
/// result after `welcome`, but the studio, which requeued the job while the worker was down,
/// offers it again at that `welcome` and reads the re-sent result as a stale one. The worker
/// dropped a kept completion on that offer and ran the job again, so the finished result
/// never reached the studio (seed 16 of a 400-seed sweep); it now answers the offer with it.
/// A kept `fail` is still dropped on such an offer (the offer is the retry it asked for), and
/// the check no longer counts that as lost when the new run finishes in a later process
/// (seed 0).
#[test]
fn a_job_offered_again_after_a_restart_keeps_its_kept_result() {
    for seed in [0, 16] {
        let mut cfg = SimConfig::new(seed, 1);
        cfg.jobs = 6;
        cfg.chaos = std::time::Duration::from_secs(120);
        cfg.fault_mean = std::time::Duration::from_secs(2);
        assert_eq!(cfg.faults, Faults::all());
        let r = run(&cfg);
        assert!(r.crashes > 0, "seed {seed}: the worker crashed");
        assert!(r.ok(), "{} {:?}", studio_sim::describe(&r), r.violations);
        assert_eq!(r.lost_results, 0);
    }
}
