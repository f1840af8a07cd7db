//! The fleet simulation: N worker machines and one studio machine in one process, over
//! simulated links, engines, HTTP and time, with faults. One seed drives everything, so the
//! same seed gives the same run, input for input ([`SimReport::hash`]).
//!
//! Where things are (VOPR-style, one concern per module):
//!
//! * `rng`: the seeded random source (the core's SplitMix64);
//! * `queue`: the event queue (a monotone radix heap);
//! * `world`: the fleet, the studio, the clock and the loop (phases: chaos, heal, settle),
//!   with the rooms that act on the world as its children (each imports the world; none
//!   imports a sibling that imports it back):
//!   * `world::faults`: the fault classes ([`Faults`]), their decisions and their undoing at
//!     heal, and the deliberate bugs that prove the checks can fail ([`Sabotage`]);
//!   * `world::links`: the simulated WebSockets (the core's test
//!     [`Link`](studio_core::testing::Link) plus latency, order and faults);
//!   * `world::workers` and `world::studio` host the two kinds of machine (the workers on
//!     the core's test [`Driver`](studio_core::testing::Driver), the HTTP bridge of the
//!     core's test peer);
//!   * `world::checks`: the invariants checked after every step and the violations;
//!   * `world::report`: what a run found ([`SimReport`]), its hash, and the traces of a
//!     failing seed ([`trace_out`] writes them in the core's replay format);
//! * the CLI is `src/main.rs`.

use std::collections::BTreeSet;
use std::time::Duration;

mod queue;
mod rng;
pub mod trace_out;
mod world;

pub use rng::Rng;
pub use world::faults::{Faults, Sabotage};
pub use world::report::{describe, trace_selection, SimReport, TraceStep, WorkerTrace};

/// Wall clock at `Mono::ZERO` (2026-05-25T12:00:00Z), the test peer's.
pub const WALL0: u64 = studio_core::testing::WALL0;
/// More handles of one machine at a single instant than this is a timer storm.
pub const STORM_LIMIT: u32 = 64;
/// A run that does not quiesce implicates at most this many unsettled workers.
pub const UNSETTLED_TRACES: usize = 50;
/// Fleets larger than this record traces only for the implicated workers.
pub const TRACE_ALL_UP_TO: usize = 100;
/// The simulated workers' default job deadline, every kind (the watchdog fails a hung job
/// retryable after it): well past the slowest simulated engine (90 s), well inside chaos.
pub const JOB_DEADLINE: Duration = Duration::from_secs(150);

/// One simulation run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub workers: usize,
    /// Jobs submitted during chaos.
    pub jobs: usize,
    /// Length of the chaos phase.
    pub chaos: Duration,
    /// How long after heal the fleet may take to quiesce.
    pub settle_limit: Duration,
    pub faults: Faults,
    /// Mean time between link faults, per worker.
    pub fault_mean: Duration,
    pub sabotage: Sabotage,
    /// Keep every worker's inputs and commands (for trace files).
    pub record: bool,
    /// With `record`: keep only these workers (all when `None`).
    pub record_only: Option<BTreeSet<usize>>,
    /// Hash every input and command of every machine into [`SimReport::hash`].
    pub hash: bool,
    /// The workers' job deadline, every kind ([`JOB_DEADLINE`]).
    pub job_deadline: Duration,
}

impl SimConfig {
    /// Defaults for `workers` workers: 5 jobs per worker over 15 minutes of chaos.
    pub fn new(seed: u64, workers: usize) -> SimConfig {
        SimConfig {
            seed,
            workers,
            jobs: workers * 5,
            chaos: Duration::from_secs(15 * 60),
            settle_limit: Duration::from_secs(3600),
            faults: Faults::all(),
            fault_mean: Duration::from_secs(90),
            sabotage: Sabotage::None,
            record: false,
            record_only: None,
            hash: false,
            job_deadline: JOB_DEADLINE,
        }
    }
}

/// Runs one seed.
pub fn run(cfg: &SimConfig) -> SimReport {
    world::World::new(cfg.clone()).run()
}
