//! The fleet simulation: N worker machines ([`Worker`]) and one studio machine ([`Studio`])
//! in one process, over simulated links, engines, HTTP and time, with faults.
//!
//! * One seed drives everything through [`Rng`] (splitmix64): the same seed gives the same
//!   run, input for input (see [`SimReport::hash`]).
//! * Time is simulated: a binary heap of events ordered by (time, sequence number); the
//!   loop jumps to the next event and never sleeps. Each worker's deadline (and the
//!   studio's) is one heap entry, re-inserted after every `handle` with a version number so
//!   stale entries are skipped: no per-step scan of the fleet.
//! * Invariants are checked after every step, incrementally: a worker's step checks that
//!   worker (deadline after now, no storm, only offered jobs dispatched, one engine run at a
//!   time, log queue within its cap); a studio step checks the jobs and workers its events
//!   named (claims, slots, offer deadlines, completions). The whole studio
//!   ([`Studio::check_invariants`], linear in its state) is checked every `check_every`
//!   (`max(10 s, workers / 100 s)`), at heal and at the end.
//! * A failing run names the workers involved ([`SimReport::implicated`]): those a violation
//!   names, every worker a lost or doubled job was offered to or ran on, and (stuck) the
//!   workers that never settled; a fleet over [`TRACE_ALL_UP_TO`] writes traces for those
//!   only ([`trace_selection`]).
//! * Links are per-connection ordered queues: a frame's delivery time is at least the
//!   previous frame's on the same connection and direction, so order is kept under delays
//!   and stalls.
//! * Phases: chaos (faults on, jobs submitted), heal (faults off, every link reset, hung
//!   engines released, the studio up), then run to quiescence (every job finished, every
//!   worker connected and idle, the studio holding exactly one session per worker) or a
//!   simulated-time bound (`stuck`).
//!
//! Faults (each a switch in [`Faults`]): frame loss (the frame and everything after it on
//! that connection is lost and the connection resets within 2 s: a WebSocket over TCP cannot
//! lose one frame and live), extra per-frame delays, stalls, half-open links (both
//! directions silently dropped until the worker's read-idle and the studio's sweep close
//! their sides), resets (both sides see `Disconnected`), one-way partitions, studio
//! restarts (all sessions dropped, connects and HTTP refused for 5-30 s; jobs survive),
//! duplicate frames at reconnect boundaries (the last result frame, `completeJson` or
//! `fail`, of the previous connection is delivered again right after `hello` on the new one), slow / failing (retryable and
//! not) / hung engines, upload failures (500 and transport), and registration (a tenth of
//! the fleet starts unregistered against an auto-approving studio).
//!
//! Hung engines never finish during chaos; at heal they are released (their job finishes
//! normally), otherwise convergence would be impossible: the worker keeps the job (as the
//! real one would, there is no engine timeout in the protocol) and the studio keeps the
//! claim because the worker's heartbeats name it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::json;
use sha2::{Digest, Sha256};
use studio_core::studio::ConnId as StudioConnId;
use studio_core::studio::{
    JobSpec, JobState, Studio, StudioCommand, StudioConfig, StudioEvent, StudioInput,
};
use studio_core::testing;
use studio_core::wire::{self, StudioFrame, Task, TaskKind};
use studio_core::worker::{
    Command, ConnId, ConnectError, Credentials, HttpId, HttpRequest, HttpResult, Input, JobOutcome,
    Now, RunId, SessionState, Worker, WorkerConfig,
};
use studio_core::{Mono, WallMs};

pub mod trace_out;

/// Wall clock at `Mono::ZERO` (2026-05-25T12:00:00Z).
pub const WALL0: u64 = 1_779_710_400_000;
/// More handles of one machine at a single instant than this is a timer storm.
pub const STORM_LIMIT: u32 = 64;
/// A run that does not quiesce implicates at most this many unsettled workers.
pub const UNSETTLED_TRACES: usize = 50;
/// Fleets larger than this record traces only for the implicated workers.
pub const TRACE_ALL_UP_TO: usize = 100;

// ------------------------------------------------------------------------------------------
// PRNG
// ------------------------------------------------------------------------------------------

/// splitmix64: small, fast, seeded; the only randomness of the simulation.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5851_f42d_4c95_7f2d)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }
    /// Uniform duration in `[lo, hi]` with microsecond resolution.
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let (a, b) = (lo.as_micros() as u64, hi.as_micros() as u64);
        Duration::from_micros(a + self.below(b - a + 1))
    }
    /// Exponentially distributed with the given mean.
    pub fn exp(&mut self, mean: Duration) -> Duration {
        let u = ((self.next_u64() >> 11) as f64 + 1.0) / ((1u64 << 53) as f64 + 1.0);
        Duration::from_secs_f64(-u.ln() * mean.as_secs_f64())
    }
    /// An independent stream.
    pub fn fork(&mut self) -> Rng {
        Rng(self.next_u64())
    }
}

// ------------------------------------------------------------------------------------------
// Configuration and report
// ------------------------------------------------------------------------------------------

/// Which fault classes are active during chaos.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Faults {
    pub drops: bool,
    pub delays: bool,
    pub stalls: bool,
    pub half_open: bool,
    pub resets: bool,
    pub partitions: bool,
    pub studio_restarts: bool,
    pub duplicates: bool,
    pub slow_engines: bool,
    pub failing_engines: bool,
    pub hung_engines: bool,
    pub upload_failures: bool,
    pub registration: bool,
}

impl Faults {
    /// Every fault class on.
    pub fn all() -> Faults {
        Faults {
            drops: true,
            delays: true,
            stalls: true,
            half_open: true,
            resets: true,
            partitions: true,
            studio_restarts: true,
            duplicates: true,
            slow_engines: true,
            failing_engines: true,
            hung_engines: true,
            upload_failures: true,
            registration: true,
        }
    }
    /// No faults: a calm fleet.
    pub fn none() -> Faults {
        Faults {
            drops: false,
            delays: false,
            stalls: false,
            half_open: false,
            resets: false,
            partitions: false,
            studio_restarts: false,
            duplicates: false,
            slow_engines: false,
            failing_engines: false,
            hung_engines: false,
            upload_failures: false,
            registration: false,
        }
    }
    /// The names of the fault classes, as `--without` takes them.
    pub const NAMES: [&'static str; 13] = [
        "drops",
        "delays",
        "stalls",
        "half_open",
        "resets",
        "partitions",
        "studio_restarts",
        "duplicates",
        "slow_engines",
        "failing_engines",
        "hung_engines",
        "upload_failures",
        "registration",
    ];

    /// Turns one class off by name; false when the name is unknown.
    pub fn disable(&mut self, name: &str) -> bool {
        let f = match name {
            "drops" => &mut self.drops,
            "delays" => &mut self.delays,
            "stalls" => &mut self.stalls,
            "half_open" => &mut self.half_open,
            "resets" => &mut self.resets,
            "partitions" => &mut self.partitions,
            "studio_restarts" => &mut self.studio_restarts,
            "duplicates" => &mut self.duplicates,
            "slow_engines" => &mut self.slow_engines,
            "failing_engines" => &mut self.failing_engines,
            "hung_engines" => &mut self.hung_engines,
            "upload_failures" => &mut self.upload_failures,
            "registration" => &mut self.registration,
            _ => return false,
        };
        *f = false;
        true
    }

    fn link_classes(&self) -> Vec<LinkFault> {
        let mut v = Vec::new();
        if self.drops {
            v.push(LinkFault::Drop);
        }
        if self.stalls {
            v.push(LinkFault::Stall);
        }
        if self.half_open {
            v.push(LinkFault::HalfOpen);
        }
        if self.resets {
            v.push(LinkFault::Reset);
        }
        if self.partitions {
            v.push(LinkFault::CutW2S);
            v.push(LinkFault::CutS2W);
        }
        v
    }
}

/// A deliberate bug in the simulated shell, to prove the checker can fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sabotage {
    None,
    /// Some offers are also delivered to another worker (a cross-wired proxy).
    CrossWireOffers,
    /// Engine results of some jobs are never reported to the worker.
    LoseEngineResults,
}

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
        }
    }
}

/// One recorded step of a worker machine.
#[derive(Clone, Debug)]
pub struct TraceStep {
    pub now: Now,
    pub input: Input,
    pub commands: Vec<Command>,
}

/// Every input one worker machine got, with the commands of each drain.
#[derive(Clone, Debug)]
pub struct WorkerTrace {
    pub config: WorkerConfig,
    pub steps: Vec<TraceStep>,
}

/// What a run found.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    pub seed: u64,
    pub workers: usize,
    pub submitted: usize,
    /// Jobs done (completed once).
    pub done: usize,
    /// Jobs failed for a non-retryable error or with their attempts spent.
    pub failed: usize,
    /// Submitted jobs never finished.
    pub lost: usize,
    /// Jobs completed more than once.
    pub doubled: usize,
    /// The fleet did not quiesce after heal.
    pub stuck: bool,
    /// Broken invariants (the first few, with the time).
    pub violations: Vec<String>,
    pub violation_count: usize,
    /// Jobs that ran on two engines at once (allowed: a claim expired while the first
    /// worker was cut off; the studio still completes them once).
    pub concurrent_runs: usize,
    /// Worker handles.
    pub steps: u64,
    /// Studio handles (frames, connects, disconnects, ticks) and HTTP calls.
    pub studio_steps: u64,
    pub faults_injected: u64,
    pub studio_restarts: u32,
    /// Simulated time at the end.
    pub end: Mono,
    /// When the fleet quiesced, if it did.
    pub quiesced_at: Option<Mono>,
    /// SHA-256 of every input and command of every machine (empty unless `hash`).
    pub hash: String,
    /// Per-worker traces, by worker index (empty unless `record`).
    pub traces: Vec<(usize, WorkerTrace)>,
    /// Workers named by a violation.
    pub implicated: BTreeSet<usize>,
}

impl SimReport {
    /// Nothing lost, doubled or stuck, and no invariant broke.
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.doubled == 0 && !self.stuck && self.violation_count == 0
    }
}

// ------------------------------------------------------------------------------------------
// Events
// ------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinkFault {
    Drop,
    Stall,
    HalfOpen,
    Reset,
    CutW2S,
    CutS2W,
}

#[derive(Debug)]
enum W2S {
    Frame(String),
    Close,
}

#[derive(Debug)]
enum S2W {
    Opened,
    Frame(String),
    Close { code: u16, reason: String },
}

#[derive(Debug)]
enum Ev {
    WorkerTimer {
        w: usize,
        ver: u64,
    },
    StudioTimer {
        ver: u64,
    },
    W2S {
        link: usize,
        msg: W2S,
    },
    S2W {
        link: usize,
        msg: S2W,
    },
    ResetWorkerSide {
        link: usize,
    },
    ResetStudioSide {
        link: usize,
    },
    ResetLink {
        link: usize,
    },
    ConnArrive {
        w: usize,
        conn: ConnId,
        url: String,
        token: String,
    },
    ToWorker {
        w: usize,
        input: Input,
    },
    HttpArrive {
        w: usize,
        id: HttpId,
        request: Box<HttpRequest>,
    },
    EngineDone {
        w: usize,
        gen: u64,
    },
    Submit,
    Fault,
    StudioDown,
    StudioUp,
    Heal,
    Check,
}

/// A queued event's key: when, then the order it was scheduled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    at: Mono,
    seq: u64,
    slot: u32,
}

/// Buckets of a [`Queue`]: bucket 0 holds the keys at the current instant; bucket `i > 0`
/// the keys whose time differs from it first in bit `i - 1` (counting from the lowest).
const BUCKETS: usize = 65;

/// The event queue, popping in (time, sequence number) order: a monotone radix heap over a
/// slab of events with a free list.
///
/// Simulated time never goes back (every event is scheduled at or after the instant being
/// processed), which a radix heap exploits: a key sits in the bucket of the highest bit in
/// which its time differs from the last instant popped, and only moves to lower buckets,
/// at most 64 times, usually a few. Pushes are appends; a pop takes the front of bucket 0
/// or, when it is empty, splits the lowest non-empty bucket around its earliest time. With
/// tens of thousands of pending events this touches memory sequentially where a binary
/// heap sifts through ~17 scattered levels per pop (the heap was ~10 % of a 10 000-worker
/// run). Within bucket 0 (one instant) keys leave in sequence order: keys of one time are
/// always in the same bucket, appended in push order, and a split keeps their order.
struct Queue {
    /// Bucket 0 (the current instant), in sequence order.
    now: VecDeque<Key>,
    /// Buckets 1..BUCKETS, unordered.
    buckets: Vec<Vec<Key>>,
    /// The time of bucket 0.
    last: Mono,
    slots: Vec<Option<Ev>>,
    free: Vec<u32>,
}

impl Default for Queue {
    fn default() -> Queue {
        Queue {
            now: VecDeque::new(),
            buckets: (0..BUCKETS).map(|_| Vec::new()).collect(),
            last: Mono::ZERO,
            slots: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl Queue {
    fn bucket(&self, at: Mono) -> usize {
        (u64::BITS - (at.0 ^ self.last.0).leading_zeros()) as usize
    }

    fn push(&mut self, at: Mono, seq: u64, ev: Ev) {
        assert!(
            at >= self.last,
            "an event scheduled at {at:?}, before the instant being processed ({:?})",
            self.last
        );
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(ev);
                s
            }
            None => {
                self.slots.push(Some(ev));
                u32::try_from(self.slots.len() - 1).expect("under 2^32 pending events")
            }
        };
        let key = Key { at, seq, slot };
        match self.bucket(at) {
            0 => {
                debug_assert!(self.now.back().is_none_or(|k| k.seq < seq));
                self.now.push_back(key)
            }
            b => self.buckets[b].push(key),
        }
    }

    fn pop(&mut self) -> Option<(Mono, Ev)> {
        if self.now.is_empty() {
            let b = (1..BUCKETS).find(|&b| !self.buckets[b].is_empty())?;
            let moving = std::mem::take(&mut self.buckets[b]);
            self.last = moving.iter().map(|k| k.at).min().expect("non-empty");
            for k in &moving {
                match self.bucket(k.at) {
                    0 => self.now.push_back(*k),
                    to => self.buckets[to].push(*k),
                }
            }
            // Every key moved to a lower bucket: give the emptied one its allocation back.
            let mut moving = moving;
            moving.clear();
            self.buckets[b] = moving;
            // Keys of one time sit in one bucket in push order and a split keeps order, so
            // bucket 0 comes out sorted by sequence number.
            debug_assert!(self
                .now
                .iter()
                .zip(self.now.iter().skip(1))
                .all(|(a, b)| a.seq < b.seq));
        }
        let k = self.now.pop_front()?;
        let ev = self.slots[k.slot as usize].take().expect("a queued event");
        self.free.push(k.slot);
        Some((k.at, ev))
    }
}

// ------------------------------------------------------------------------------------------
// World
// ------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum EngineProfile {
    Normal,
    Slow,
    Flaky,
    Broken,
    Hangs,
}

struct Engine {
    job_id: String,
    run: RunId,
    gen: u64,
    outcome: JobOutcome,
    hung: bool,
}

struct Wk {
    m: Worker,
    timer_at: Option<Mono>,
    timer_ver: u64,
    engine: Option<Engine>,
    engine_gen: u64,
    profile: EngineProfile,
    offered: BTreeSet<String>,
    last_job_frame: Option<(usize, String)>,
    instant: Mono,
    instant_count: u32,
    exited: bool,
    trace: Vec<TraceStep>,
    config: WorkerConfig,
    /// This worker's connections still in use on either side: (its connection id, link).
    /// A few at most, so a list beside the worker's state beats a fleet-wide map.
    conn_links: Vec<(ConnId, usize)>,
}

impl Wk {
    fn link_of(&self, conn: ConnId) -> Option<usize> {
        self.conn_links
            .iter()
            .find(|&&(c, _)| c == conn)
            .map(|&(_, link)| link)
    }
}

struct Link {
    worker: usize,
    wconn: ConnId,
    w_open: bool,
    s_open: bool,
    dead: bool,
    half_open: bool,
    dropping: bool,
    cut_w2s: bool,
    cut_s2w: bool,
    stall_until: Mono,
    last_w2s: Mono,
    last_s2w: Mono,
    first_sent: bool,
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum Phase {
    Chaos,
    Settle,
}

struct World {
    cfg: SimConfig,
    rng: Rng,
    now: Mono,
    seq: u64,
    queue: Queue,
    studio: Studio,
    studio_timer: Option<Mono>,
    studio_ver: u64,
    studio_instant: Mono,
    studio_ticks: u32,
    studio_up: bool,
    workers: Vec<Wk>,
    links: Vec<Link>,
    live: BTreeSet<usize>,
    current_link: Vec<Option<usize>>,
    phase: Phase,
    submitted: Vec<String>,
    completions: BTreeMap<String, u32>,
    finished: BTreeSet<String>,
    running: BTreeMap<String, u32>,
    hasher: Option<Sha256>,
    report: SimReport,
    check_every: Duration,
    /// When the last full check ([`Studio::check_invariants`]) ran.
    last_full_check: Mono,
    quiesced: bool,
    /// Jobs and workers (studio ids) named by the events of the current studio step: what
    /// [`World::check_studio_step`] looks at.
    touched_jobs: Vec<String>,
    touched_workers: Vec<String>,
    /// Each held job's holder as of the last step that touched it.
    holders: BTreeMap<String, String>,
    /// Studio worker id -> simulated worker index.
    wid_index: BTreeMap<String, usize>,
}

/// What the report hash covers of a worker's input or command: its `Debug` text, except
/// that a dispatch and its result are written without their run id. The hash predates run
/// ids, and a run id follows from the dispatches before it, which the hash covers already.
enum Hashed<'a> {
    Input(&'a Input),
    Command(&'a Command),
}

impl std::fmt::Debug for Hashed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hashed::Input(Input::JobFinished {
                job_id, outcome, ..
            }) => f
                .debug_struct("JobFinished")
                .field("job_id", job_id)
                .field("outcome", outcome)
                .finish(),
            Hashed::Input(input) => input.fmt(f),
            Hashed::Command(Command::Dispatch { claim, .. }) => {
                f.debug_struct("Dispatch").field("claim", claim).finish()
            }
            Hashed::Command(command) => command.fmt(f),
        }
    }
}

fn task_for(kind: TaskKind, n: usize) -> Task {
    testing::task(kind, &format!("sim prompt {n}"))
}

/// A result frame: the only frames the protocol repeats (the worker re-sends unacked results
/// after `welcome`), so the only ones the duplicate fault replays. A WebSocket never
/// duplicates a frame; replaying an `accept` or `reject` would be a fault no network makes
/// (and the studio rightly calls `accept`-then-`reject` of one job a protocol violation).
fn is_result_frame(text: &str) -> bool {
    [r#"{"type":"completeJson""#, r#"{"type":"fail""#]
        .iter()
        .any(|p| text.starts_with(p))
}

impl World {
    fn new(cfg: SimConfig) -> World {
        let mut rng = Rng::new(cfg.seed);
        let studio_cfg = StudioConfig {
            auto_approve: true,
            max_queued_jobs: usize::MAX / 2,
            max_finished_jobs: usize::MAX / 2,
            max_registration_requests: usize::MAX / 2,
            log_ring_capacity: 16,
            token_seed: rng.next_u64(),
            ..StudioConfig::default()
        };
        let mut studio = Studio::new(studio_cfg);
        let n = cfg.workers;
        let mut workers = Vec::with_capacity(n);
        for k in 0..n {
            let mut wc = WorkerConfig::for_tests("http://studio.sim");
            wc.seed = rng.next_u64();
            wc.host.machine_name = format!("sim-{k}");
            wc.limits.recent_jobs = 4;
            wc.limits.recent_logs = 4;
            let unregistered = cfg.faults.registration && k % 10 == 9;
            if !unregistered {
                let id = format!("w-{k}");
                let token = format!("tok-{k}-{:x}", rng.next_u64());
                studio.add_worker(&id, &token);
                wc.credentials = Some(Credentials {
                    worker_id: id,
                    auth_token: token.into(),
                });
            }
            let profile = if cfg.faults.hung_engines && rng.chance(0.05) {
                EngineProfile::Hangs
            } else if cfg.faults.slow_engines && rng.chance(0.1) {
                EngineProfile::Slow
            } else if cfg.faults.failing_engines && rng.chance(0.1) {
                EngineProfile::Flaky
            } else if cfg.faults.failing_engines && rng.chance(0.05) {
                EngineProfile::Broken
            } else {
                EngineProfile::Normal
            };
            workers.push(Wk {
                m: Worker::new(wc.clone()),
                timer_at: None,
                timer_ver: 0,
                engine: None,
                engine_gen: 0,
                profile,
                offered: BTreeSet::new(),
                conn_links: Vec::new(),
                last_job_frame: None,
                instant: Mono::ZERO,
                instant_count: 0,
                exited: false,
                trace: Vec::new(),
                config: wc,
            });
        }
        let check_every = Duration::from_secs((n as u64 / 100).max(10));
        let hasher = cfg.hash.then(Sha256::new);
        let report = SimReport {
            seed: cfg.seed,
            workers: n,
            ..SimReport::default()
        };
        World {
            rng,
            now: Mono::ZERO,
            seq: 0,
            queue: Queue::default(),
            studio,
            studio_timer: None,
            studio_ver: 0,
            studio_instant: Mono::ZERO,
            studio_ticks: 0,
            studio_up: true,
            workers,
            links: Vec::new(),
            live: BTreeSet::new(),
            current_link: vec![None; n],
            phase: Phase::Chaos,
            submitted: Vec::new(),
            completions: BTreeMap::new(),
            finished: BTreeSet::new(),
            running: BTreeMap::new(),
            hasher,
            report,
            check_every,
            last_full_check: Mono::ZERO,
            quiesced: false,
            touched_jobs: Vec::new(),
            touched_workers: Vec::new(),
            holders: BTreeMap::new(),
            wid_index: BTreeMap::new(),
            cfg,
        }
    }

    fn at(&mut self, at: Mono, ev: Ev) {
        self.seq += 1;
        self.queue.push(at, self.seq, ev);
    }

    fn after(&mut self, d: Duration, ev: Ev) {
        let t = self.now + d;
        self.at(t, ev);
    }

    fn violation(&mut self, what: String) {
        self.report.violation_count += 1;
        if self.report.violations.len() < 20 {
            let line = format!("t={} {what}", self.now);
            self.report.violations.push(line);
        }
    }

    fn wviolation(&mut self, w: usize, what: String) {
        self.report.implicated.insert(w);
        self.violation(what);
    }

    /// A violation about a worker the studio names by its id.
    fn sviolation(&mut self, worker_id: &str, what: String) {
        match self.wid_index.get(worker_id) {
            Some(&w) => self.wviolation(w, what),
            None => self.violation(what),
        }
    }

    /// A violation about a job: implicates every worker involved with it.
    fn jviolation(&mut self, job_id: &str, what: String) {
        self.implicate_job(job_id);
        self.violation(what);
    }

    /// The workers involved with a job: its holder, every worker it was offered to, and any
    /// whose engine runs it.
    fn implicate_job(&mut self, job_id: &str) {
        let mut ids: Vec<String> = Vec::new();
        if let Some(j) = self.studio.job(job_id) {
            ids.extend(j.state.holder().map(str::to_string));
            ids.extend(j.last_worker().map(str::to_string));
            ids.extend(j.offered_to().map(str::to_string));
        }
        for id in ids {
            if let Some(&w) = self.wid_index.get(&id) {
                self.report.implicated.insert(w);
            }
        }
        for (w, wk) in self.workers.iter().enumerate() {
            if wk.engine.as_ref().is_some_and(|e| e.job_id == job_id) {
                self.report.implicated.insert(w);
            }
        }
    }

    /// Implicates every worker and job a free-text message names (a studio invariant's
    /// error names its records by id).
    fn implicate_text(&mut self, text: &str) {
        let words: Vec<&str> = text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .filter(|s| !s.is_empty())
            .collect();
        for word in words {
            if let Some(&w) = self.wid_index.get(word) {
                self.report.implicated.insert(w);
            } else if self.studio.job(word).is_some() {
                self.implicate_job(word);
            }
        }
    }

    fn chaos(&self) -> bool {
        self.phase == Phase::Chaos
    }

    /// One-way network latency.
    fn lat(&mut self) -> Duration {
        let mut d = self
            .rng
            .between(Duration::from_millis(1), Duration::from_millis(40));
        if self.chaos() && self.cfg.faults.delays && self.rng.chance(0.05) {
            d += self
                .rng
                .between(Duration::from_millis(200), Duration::from_secs(8));
        }
        d
    }

    fn wnow(&self) -> Now {
        Now::new(self.now, WallMs(WALL0 + self.now.0 / 1000))
    }

    fn hash_str(&mut self, tag: &str, s: &str) {
        if let Some(h) = &mut self.hasher {
            h.update(tag.as_bytes());
            h.update(self.now.0.to_le_bytes());
            h.update(s.as_bytes());
            h.update([0]);
        }
    }

    // --------------------------------------------------------------------------------
    // Workers
    // --------------------------------------------------------------------------------

    fn feed(&mut self, w: usize, input: Input) {
        if self.workers[w].exited {
            return;
        }
        self.report.steps += 1;
        let now = self.wnow();
        {
            let wk = &mut self.workers[w];
            if wk.instant == now.mono {
                wk.instant_count += 1;
            } else {
                wk.instant = now.mono;
                wk.instant_count = 1;
            }
        }
        if self.workers[w].instant_count == STORM_LIMIT + 1 {
            self.wviolation(
                w,
                format!("worker {w}: timer storm, more than {STORM_LIMIT} handles at one instant"),
            );
        }
        if self.hasher.is_some() {
            let s = format!("{w}:{:?}", Hashed::Input(&input));
            self.hash_str("wi", &s);
        }
        let recorded = (self.cfg.record
            && self.cfg.record_only.as_ref().is_none_or(|o| o.contains(&w)))
        .then(|| input.clone());
        if let Err(e) = self.workers[w].m.handle(now, input) {
            self.wviolation(w, format!("worker {w}: usage error {e}"));
        }
        // Each command is acted on as it is polled (a command never feeds the worker, so
        // what the machine emits next does not depend on it), not buffered: a command is
        // ~300 bytes, and copying them through a buffer was a tenth of a large run. The
        // hash sees the same `[a, b, ...]` text a buffered `{cmds:?}` gave.
        let mut hashed = self.hasher.is_some().then(|| format!("{w}:["));
        let mut kept = recorded.is_some().then(Vec::new);
        let mut first = true;
        loop {
            let c = self.workers[w].m.poll();
            let wait = matches!(c, Command::Wait { .. });
            if let Some(h) = hashed.as_mut() {
                if !first {
                    h.push_str(", ");
                }
                let _ = write!(h, "{:?}", Hashed::Command(&c));
                first = false;
            }
            if let Some(k) = kept.as_mut() {
                k.push(c.clone());
            }
            self.worker_command(w, c);
            if wait {
                break;
            }
        }
        if let Some(mut h) = hashed {
            h.push(']');
            self.hash_str("wc", &h);
        }
        if let (Some(input), Some(commands)) = (recorded, kept) {
            self.workers[w].trace.push(TraceStep {
                now,
                input,
                commands,
            });
        }
        self.check_worker(w);
    }

    /// The per-step check of a worker machine, after its drain: what one step can break.
    fn check_worker(&mut self, w: usize) {
        let len = self.workers[w].m.log_queue_len();
        let cap = self.workers[w].config.limits.log_queue_cap;
        if len > cap {
            self.wviolation(w, format!("worker {w}: log queue {len} over its cap {cap}"));
        }
    }

    fn worker_command(&mut self, w: usize, c: Command) {
        match c {
            Command::Wait { until } => {
                if let Some(u) = until {
                    if u <= self.now {
                        self.wviolation(w, format!("worker {w}: deadline {u} not after now"));
                    }
                }
                let wk = &mut self.workers[w];
                if wk.timer_at != until {
                    wk.timer_at = until;
                    wk.timer_ver += 1;
                    if let Some(u) = until {
                        let ver = wk.timer_ver;
                        let u = u.max(self.now + Duration::from_micros(1));
                        self.at(u, Ev::WorkerTimer { w, ver });
                    }
                }
            }
            Command::Connect {
                conn,
                url,
                auth_token,
            } => {
                let token = auth_token.expose().to_string();
                let d = self.lat();
                self.after(
                    d,
                    Ev::ConnArrive {
                        w,
                        conn,
                        url,
                        token,
                    },
                );
            }
            Command::Send { conn, text } => {
                let Some(link) = self.workers[w].link_of(conn) else {
                    return;
                };
                if !self.links[link].w_open {
                    return;
                }
                let first = !self.links[link].first_sent;
                self.links[link].first_sent = true;
                let job_frame = is_result_frame(&text);
                let previous = self.workers[w].last_job_frame.clone();
                if job_frame {
                    self.workers[w].last_job_frame = Some((link, text.clone()));
                }
                self.w2s(link, W2S::Frame(text));
                if first && self.chaos() && self.cfg.faults.duplicates && self.rng.chance(0.5) {
                    if let Some((old, dup)) = previous {
                        if old != link {
                            self.w2s(link, W2S::Frame(dup));
                        }
                    }
                }
            }
            Command::Close { conn, .. } => {
                if let Some(link) = self.workers[w].link_of(conn) {
                    if self.links[link].w_open {
                        self.links[link].w_open = false;
                        self.w2s(link, W2S::Close);
                        self.maybe_retire(link);
                    }
                }
            }
            Command::Http { id, request } => {
                let d = self.lat();
                self.after(d, Ev::HttpArrive { w, id, request });
            }
            Command::MintSecret { need_install_id } => {
                let a = self.rng.next_u64();
                let b = self.rng.next_u64();
                let input = Input::Minted {
                    install_id: need_install_id
                        .then(|| format!("{:08x}-0000-4000-8000-{:012x}", w, a & 0xffff_ffff_ffff)),
                    secret: format!("{a:016x}{b:016x}{a:016x}{b:016x}").into(),
                };
                self.after(Duration::from_micros(100), Ev::ToWorker { w, input });
            }
            Command::Persist(_)
            | Command::DiscardResult { .. }
            | Command::KeepResult(_)
            | Command::ForgetResult { .. }
            | Command::Report(_) => {}
            Command::Dispatch { run, claim } => self.dispatch(w, run, &claim),
            Command::CancelJob { job_id } => {
                let wk = &mut self.workers[w];
                if wk.engine.as_ref().is_some_and(|e| e.job_id == job_id) {
                    wk.engine = None;
                    Self::unrun(&mut self.running, &job_id);
                }
            }
            Command::CheckUpdate => self.after(
                Duration::from_millis(5),
                Ev::ToWorker {
                    w,
                    input: Input::UpdateChecked { result: Ok(None) },
                },
            ),
            Command::ApplyUpdate { .. } => self.after(
                Duration::from_millis(5),
                Ev::ToWorker {
                    w,
                    input: Input::UpdateApplied {
                        result: Err("no updates in the simulation".into()),
                    },
                },
            ),
            Command::Exit { code, reason } => {
                self.workers[w].exited = true;
                self.wviolation(w, format!("worker {w}: exited {code:?}: {reason}"));
            }
        }
    }

    fn unrun(running: &mut BTreeMap<String, u32>, job: &str) {
        if let Some(n) = running.get_mut(job) {
            *n -= 1;
            if *n == 0 {
                running.remove(job);
            }
        }
    }

    fn dispatch(&mut self, w: usize, run: RunId, claim: &wire::JobOfferClaim) {
        let job_id = claim.job_id.clone();
        if !self.workers[w].offered.contains(&job_id) {
            self.wviolation(
                w,
                format!("worker {w}: dispatched job {job_id} that was never offered to it"),
            );
        }
        if let Some(e) = &self.workers[w].engine {
            let held = e.job_id.clone();
            self.wviolation(
                w,
                format!("worker {w}: dispatched {job_id} while {held} is still in flight"),
            );
        }
        let n = self.running.entry(job_id.clone()).or_insert(0);
        *n += 1;
        if *n > 1 {
            self.report.concurrent_runs += 1;
        }
        let chaos = self.chaos();
        let profile = if chaos {
            self.workers[w].profile
        } else {
            EngineProfile::Normal
        };
        let kind = claim.task.kind();
        let ok = if kind.is_binary() {
            JobOutcome::Binary {
                ext: match kind {
                    TaskKind::AudioTts => "wav".into(),
                    _ => "webp".into(),
                },
                bytes_len: 1234,
            }
        } else {
            JobOutcome::Json {
                result: json!({"kind": kind.as_str(), "by": w}),
            }
        };
        let (latency, outcome, hung) = match profile {
            EngineProfile::Normal => (
                self.rng
                    .between(Duration::from_millis(50), Duration::from_secs(3)),
                ok,
                false,
            ),
            EngineProfile::Slow => (
                self.rng
                    .between(Duration::from_secs(10), Duration::from_secs(90)),
                ok,
                false,
            ),
            EngineProfile::Flaky | EngineProfile::Broken => {
                let retryable = profile == EngineProfile::Flaky;
                let fails = self.rng.chance(if retryable { 0.4 } else { 0.2 });
                let d = self
                    .rng
                    .between(Duration::from_millis(50), Duration::from_secs(5));
                if fails {
                    (
                        d,
                        JobOutcome::Failed {
                            error: "simulated engine failure".into(),
                            retryable,
                        },
                        false,
                    )
                } else {
                    (d, ok, false)
                }
            }
            EngineProfile::Hangs => (
                self.rng
                    .between(Duration::from_millis(50), Duration::from_secs(3)),
                ok,
                self.rng.chance(0.3),
            ),
        };
        let wk = &mut self.workers[w];
        wk.engine_gen += 1;
        let gen = wk.engine_gen;
        wk.engine = Some(Engine {
            job_id,
            run,
            gen,
            outcome,
            hung,
        });
        if !hung {
            self.after(latency, Ev::EngineDone { w, gen });
        }
    }

    // --------------------------------------------------------------------------------
    // Links
    // --------------------------------------------------------------------------------

    fn w2s(&mut self, link: usize, msg: W2S) {
        let l = &self.links[link];
        if l.dead || l.half_open || l.dropping || l.cut_w2s {
            return;
        }
        let d = self.lat();
        let l = &mut self.links[link];
        let t = (self.now + d).max(l.last_w2s).max(l.stall_until);
        l.last_w2s = t;
        self.at(t, Ev::W2S { link, msg });
    }

    fn s2w(&mut self, link: usize, msg: S2W) {
        let l = &self.links[link];
        if l.dead || l.half_open || l.dropping || l.cut_s2w || !l.w_open {
            return;
        }
        let d = self.lat();
        let l = &mut self.links[link];
        let t = (self.now + d).max(l.last_s2w).max(l.stall_until);
        l.last_s2w = t;
        self.at(t, Ev::S2W { link, msg });
    }

    fn maybe_retire(&mut self, link: usize) {
        let l = &self.links[link];
        if !l.w_open && !l.s_open {
            self.live.remove(&link);
            let (w, conn) = (l.worker, l.wconn);
            self.workers[w].conn_links.retain(|&(c, _)| c != conn);
            if self.current_link[l.worker] == Some(link) {
                self.current_link[l.worker] = None;
            }
        }
    }

    fn reset(&mut self, link: usize) {
        if self.links[link].dead {
            return;
        }
        self.links[link].dead = true;
        let d1 = self.lat();
        let d2 = self.lat();
        self.after(d1, Ev::ResetWorkerSide { link });
        self.after(d2, Ev::ResetStudioSide { link });
    }

    fn inject_fault(&mut self) {
        let classes = self.cfg.faults.link_classes();
        if classes.is_empty() || self.cfg.workers == 0 {
            return;
        }
        let w = self.rng.below(self.cfg.workers as u64) as usize;
        let Some(link) = self.current_link[w] else {
            return;
        };
        if self.links[link].dead {
            return;
        }
        self.report.faults_injected += 1;
        let f = classes[self.rng.below(classes.len() as u64) as usize];
        match f {
            LinkFault::Drop => {
                self.links[link].dropping = true;
                let d = self.rng.between(Duration::ZERO, Duration::from_secs(2));
                self.after(d, Ev::ResetLink { link });
            }
            LinkFault::Stall => {
                let d = self
                    .rng
                    .between(Duration::from_secs(1), Duration::from_secs(40));
                let until = self.now + d;
                let l = &mut self.links[link];
                l.stall_until = l.stall_until.max(until);
            }
            LinkFault::HalfOpen => self.links[link].half_open = true,
            LinkFault::Reset => self.reset(link),
            LinkFault::CutW2S => self.links[link].cut_w2s = true,
            LinkFault::CutS2W => self.links[link].cut_s2w = true,
        }
    }

    // --------------------------------------------------------------------------------
    // Studio
    // --------------------------------------------------------------------------------

    fn studio_handle(&mut self, input: StudioInput) {
        if self.hasher.is_some() {
            let s = format!("{input:?}");
            self.hash_str("si", &s);
        }
        self.report.studio_steps += 1;
        if let Err(e) = self.studio.handle(self.wnow(), input) {
            self.violation(format!("studio: usage error {e}"));
        }
        self.drain_studio();
    }

    fn drain_studio(&mut self) {
        loop {
            let cmd = self.studio.poll();
            if self.hasher.is_some() {
                let s = format!("{cmd:?}");
                self.hash_str("sc", &s);
            }
            match cmd {
                StudioCommand::Wait { until } => {
                    if let Some(u) = until {
                        if u < self.now {
                            self.violation(format!("studio: deadline {u} before now"));
                        }
                    }
                    if self.studio_timer != until {
                        self.studio_timer = until;
                        self.studio_ver += 1;
                        if let Some(u) = until {
                            let ver = self.studio_ver;
                            let u = u.max(self.now);
                            self.at(u, Ev::StudioTimer { ver });
                        }
                    }
                    break;
                }
                StudioCommand::Send { conn, text } => {
                    let link = conn.0 as usize;
                    if text.starts_with(r#"{"type":"offer""#) {
                        // What the studio offered to this worker (the dispatch check).
                        if let Ok(StudioFrame::Offer { claim }) = wire::decode_studio_frame(&text) {
                            let w = self.links[link].worker;
                            self.workers[w].offered.insert(claim.job_id);
                        }
                    }
                    if self.cfg.sabotage == Sabotage::CrossWireOffers
                        && text.starts_with(r#"{"type":"offer""#)
                        && self.rng.chance(0.2)
                    {
                        let other = (self.links[link].worker + 1) % self.cfg.workers;
                        if let Some(ol) = self.current_link[other] {
                            self.s2w(ol, S2W::Frame(text.clone()));
                        }
                    }
                    self.s2w(link, S2W::Frame(text));
                }
                StudioCommand::Close { conn, code, reason } => {
                    let link = conn.0 as usize;
                    if self.links[link].s_open {
                        self.links[link].s_open = false;
                        self.s2w(link, S2W::Close { code, reason });
                        self.maybe_retire(link);
                    }
                }
                StudioCommand::Event(e) => self.studio_event(e),
            }
        }
        self.check_studio_step();
    }

    /// The per-step check of the studio machine, after its drain: the jobs and workers its
    /// events named (a step that names none, a heartbeat, changes no claim). The whole
    /// machine is checked by [`Studio::check_invariants`] every `check_every`, at heal and
    /// at the end.
    fn check_studio_step(&mut self) {
        if self.touched_jobs.is_empty() && self.touched_workers.is_empty() {
            return;
        }
        let mut jobs = std::mem::take(&mut self.touched_jobs);
        let mut workers = std::mem::take(&mut self.touched_workers);
        let now = self.now;
        for id in &jobs {
            let Some(j) = self.studio.job(id) else {
                self.jviolation(id, format!("job {id}: named by an event but unknown"));
                continue;
            };
            let done = matches!(j.state, JobState::Done { .. });
            let mut bad = Vec::new();
            if j.completions > 1 || done != (j.completions == 1) {
                bad.push(format!(
                    "job {id}: state {} with {} completions",
                    j.state.name(),
                    j.completions
                ));
            }
            match (&j.state, j.offer_deadline()) {
                (JobState::Offered { .. }, Some(d)) if d >= now => {}
                (JobState::Offered { .. }, d) => {
                    bad.push(format!("job {id}: offered with deadline {d:?} at {now}"))
                }
                (_, Some(_)) => bad.push(format!("job {id}: deadline while {}", j.state.name())),
                _ => {}
            }
            let holder = j.state.holder().map(str::to_string);
            if let Some(h) = &holder {
                if !j.offered_to().any(|o| o == h) {
                    bad.push(format!("job {id}: held by {h} without an offer"));
                }
                let slot = self.studio.worker_status(h).and_then(|v| v.current_job);
                if slot.as_deref() != Some(id.as_str()) {
                    bad.push(format!("job {id}: held by {h} whose slot is {slot:?}"));
                }
            }
            let prev = match &holder {
                Some(h) => self.holders.insert(id.clone(), h.clone()),
                None => self.holders.remove(id),
            };
            if let Some(p) = prev.filter(|p| holder.as_ref() != Some(p)) {
                let slot = self.studio.worker_status(&p).and_then(|v| v.current_job);
                if slot.as_deref() == Some(id.as_str()) {
                    bad.push(format!(
                        "job {id}: moved from {p}, whose slot still points at it"
                    ));
                }
            }
            for what in bad {
                self.jviolation(id, what);
            }
        }
        for wid in &workers {
            let Some(v) = self.studio.worker_status(wid) else {
                continue;
            };
            let mut bad = Vec::new();
            if let Some(j) = &v.current_job {
                let holder = self.studio.job(j).and_then(|r| r.state.holder());
                if holder != Some(wid.as_str()) {
                    bad.push(format!("worker {wid}: slot {j} held by {holder:?}"));
                }
            }
            if v.idle && (v.current_job.is_some() || !v.connected) {
                bad.push(format!(
                    "worker {wid}: idle with slot {:?}, connected {}",
                    v.current_job, v.connected
                ));
            }
            if v.connected != v.conn.is_some() {
                bad.push(format!(
                    "worker {wid}: connected {} but conn {:?}",
                    v.connected, v.conn
                ));
            }
            for what in bad {
                self.sviolation(wid, what);
            }
        }
        jobs.clear();
        workers.clear();
        self.touched_jobs = jobs;
        self.touched_workers = workers;
    }

    fn studio_event(&mut self, e: StudioEvent) {
        match &e {
            StudioEvent::JobOffered { job_id, worker_id }
            | StudioEvent::JobAccepted {
                job_id, worker_id, ..
            }
            | StudioEvent::JobRejected {
                job_id, worker_id, ..
            }
            | StudioEvent::JobReclaimed { job_id, worker_id }
            | StudioEvent::JobCompleted {
                job_id, worker_id, ..
            }
            | StudioEvent::StaleFrame {
                job_id, worker_id, ..
            } => {
                self.touched_jobs.push(job_id.clone());
                self.touched_workers.push(worker_id.clone());
            }
            StudioEvent::JobSubmitted { job_id }
            | StudioEvent::JobRequeued { job_id, .. }
            | StudioEvent::JobFailed { job_id, .. } => self.touched_jobs.push(job_id.clone()),
            StudioEvent::ConnOpened { worker_id, .. }
            | StudioEvent::Welcomed { worker_id, .. }
            | StudioEvent::AuthFailed { worker_id, .. }
            | StudioEvent::ProtocolViolation { worker_id, .. }
            | StudioEvent::DuplicateSession { worker_id, .. }
            | StudioEvent::SessionExpired { worker_id, .. }
            | StudioEvent::ConnLost { worker_id, .. }
            | StudioEvent::WorkerRemoved { worker_id } => {
                self.touched_workers.push(worker_id.clone())
            }
            _ => {}
        }
        match e {
            StudioEvent::JobCompleted { job_id, .. } => {
                let n = self.completions.entry(job_id.clone()).or_insert(0);
                *n += 1;
                let n = *n;
                if n > 1 {
                    self.jviolation(&job_id, format!("job {job_id} completed {n} times"));
                }
                self.finished.insert(job_id);
            }
            StudioEvent::JobFailed { job_id, .. } => {
                self.finished.insert(job_id);
            }
            StudioEvent::ProtocolViolation { ref worker_id, .. } => {
                let w = self.wid_index.get(worker_id).copied();
                let what = format!("studio saw a protocol violation: {e:?}");
                match w {
                    Some(w) => self.wviolation(w, what),
                    None => self.violation(what),
                }
            }
            _ => {}
        }
    }

    fn http(&mut self, w: usize, id: HttpId, request: HttpRequest) {
        let result = if !self.studio_up {
            HttpResult::Transport(testing::REFUSED.into())
        } else {
            let now = self.wnow();
            self.report.studio_steps += 1;
            // Whether the request reached the studio machine (which then has commands to
            // drain) or a fault answered it first.
            let (status, body, reached) = match request {
                HttpRequest::Upload { .. }
                    if self.chaos() && self.cfg.faults.upload_failures && self.rng.chance(0.15) =>
                {
                    if self.rng.chance(0.5) {
                        (500, r#"{"error":"storage hiccup"}"#.into(), false)
                    } else {
                        self.respond(w, id, HttpResult::Transport("reset".into()));
                        return;
                    }
                }
                request => {
                    let (status, body) =
                        testing::studio_http(&mut self.studio, now, request, testing::RESULT_BYTES);
                    (status, body, true)
                }
            };
            if self.hasher.is_some() {
                let s = format!("http {w} {status} {body}");
                self.hash_str("sh", &s);
            }
            if reached {
                self.drain_studio();
            }
            HttpResult::Response { status, body }
        };
        self.respond(w, id, result);
    }

    fn respond(&mut self, w: usize, id: HttpId, result: HttpResult) {
        let d = self.lat();
        self.after(
            d,
            Ev::ToWorker {
                w,
                input: Input::Http { id, result },
            },
        );
    }

    fn submit(&mut self) {
        let n = self.submitted.len();
        let kind = TaskKind::ALL[self.rng.below(5) as usize];
        match self
            .studio
            .submit(self.wnow(), JobSpec::synthetic(task_for(kind, n)))
        {
            Ok(id) => {
                self.hash_str("submit", &id);
                self.submitted.push(id);
            }
            Err(e) => self.violation(format!("submit refused: {e}")),
        }
        self.drain_studio();
    }

    fn studio_down(&mut self) {
        if !self.studio_up {
            return;
        }
        self.report.studio_restarts += 1;
        self.studio_up = false;
        let live: Vec<usize> = self.live.iter().copied().collect();
        for link in live {
            self.links[link].dead = true;
            if self.links[link].s_open {
                self.links[link].s_open = false;
                self.studio_handle(StudioInput::Disconnected {
                    conn: StudioConnId(link as u64),
                });
            }
            if self.links[link].w_open {
                let d = self.lat();
                self.after(d, Ev::ResetWorkerSide { link });
            }
            self.maybe_retire(link);
        }
        let d = self
            .rng
            .between(Duration::from_secs(5), Duration::from_secs(30));
        self.after(d, Ev::StudioUp);
    }

    fn heal(&mut self) {
        self.full_check();
        self.phase = Phase::Settle;
        self.studio_up = true;
        let live: Vec<usize> = self.live.iter().copied().collect();
        for link in live {
            let l = &mut self.links[link];
            l.half_open = false;
            l.cut_s2w = false;
            l.cut_w2s = false;
            l.dropping = false;
            l.stall_until = Mono::ZERO;
            l.dead = false;
            // reset clean: both sides see Disconnected
            self.reset(link);
        }
        for w in 0..self.workers.len() {
            if let Some(e) = &self.workers[w].engine {
                if e.hung {
                    let gen = e.gen;
                    let d = self
                        .rng
                        .between(Duration::from_millis(50), Duration::from_secs(2));
                    self.after(d, Ev::EngineDone { w, gen });
                }
            }
        }
    }

    // --------------------------------------------------------------------------------
    // Checks
    // --------------------------------------------------------------------------------

    /// The whole-machine check of the studio (linear in its state; the workers are checked
    /// after each of their steps, see [`World::check_worker`]).
    fn full_check(&mut self) {
        self.last_full_check = self.now;
        if let Err(e) = self.studio.check_invariants() {
            self.implicate_text(&e);
            self.violation(format!("studio invariant: {e}"));
        }
    }

    fn quiescent(&self) -> bool {
        if self.finished.len() < self.submitted.len() {
            return false;
        }
        let stats = self.studio.stats();
        if stats.connections != self.workers.len() || stats.connected_workers != self.workers.len()
        {
            return false;
        }
        self.workers.iter().enumerate().all(|(w, wk)| {
            let clean = self.current_link[w].is_some_and(|l| {
                let l = &self.links[l];
                l.w_open && l.s_open && !l.dead && !l.half_open && !l.cut_s2w && !l.cut_w2s
            });
            if !clean {
                return false;
            }
            let st = wk.m.status();
            st.session == SessionState::Connected
                && st.current_job_id.is_none()
                && wk.engine.is_none()
        })
    }

    /// A run that did not quiesce: implicates the workers that keep it from quiescing (not
    /// connected cleanly, or holding or running a job), at most [`UNSETTLED_TRACES`] of
    /// them, the lowest indices first.
    fn implicate_unsettled(&mut self) {
        let mut n = 0;
        for (w, wk) in self.workers.iter().enumerate() {
            if n >= UNSETTLED_TRACES {
                break;
            }
            let clean = self.current_link[w].is_some_and(|l| {
                let l = &self.links[l];
                l.w_open && l.s_open && !l.dead && !l.half_open && !l.cut_s2w && !l.cut_w2s
            });
            let st = wk.m.status();
            let settled = clean
                && st.session == SessionState::Connected
                && st.current_job_id.is_none()
                && wk.engine.is_none();
            if !settled {
                self.report.implicated.insert(w);
                n += 1;
            }
        }
    }

    // --------------------------------------------------------------------------------
    // The loop
    // --------------------------------------------------------------------------------

    fn run(mut self) -> SimReport {
        let chaos_end = Mono::ZERO + self.cfg.chaos;
        for w in 0..self.workers.len() {
            let d = self.rng.between(Duration::ZERO, Duration::from_secs(5));
            self.at(
                Mono::ZERO + d,
                Ev::ToWorker {
                    w,
                    input: Input::Start,
                },
            );
        }
        for _ in 0..self.cfg.jobs {
            let d = self.rng.between(
                Duration::from_secs(1),
                self.cfg.chaos.max(Duration::from_secs(1)),
            );
            self.at(Mono::ZERO + d, Ev::Submit);
        }
        if self.cfg.faults.studio_restarts && !self.cfg.chaos.is_zero() {
            let n = (self.cfg.chaos.as_secs() / 1200).max(1);
            for _ in 0..n {
                let d = self.rng.between(
                    Duration::from_secs(30),
                    self.cfg.chaos.max(Duration::from_secs(30)),
                );
                self.at(Mono::ZERO + d, Ev::StudioDown);
            }
        }
        if !self.cfg.faults.link_classes().is_empty() && self.cfg.workers > 0 {
            let mean = self.cfg.fault_mean / self.cfg.workers as u32;
            let d = self.rng.exp(mean);
            self.after(d, Ev::Fault);
        }
        self.at(chaos_end, Ev::Heal);
        self.at(Mono::ZERO + self.check_every, Ev::Check);
        let settle_end = chaos_end + self.cfg.settle_limit;

        while let Some((at, ev)) = self.queue.pop() {
            if at > settle_end {
                break;
            }
            debug_assert!(at >= self.now);
            self.now = at;
            self.event(ev);
            if self.quiesced {
                break;
            }
        }
        self.finish()
    }

    fn event(&mut self, ev: Ev) {
        match ev {
            Ev::WorkerTimer { w, ver } => {
                if self.workers[w].timer_ver == ver {
                    self.workers[w].timer_at = None;
                    self.feed(w, Input::Tick);
                }
            }
            Ev::StudioTimer { ver } => {
                if self.studio_ver == ver {
                    self.studio_timer = None;
                    if self.studio_instant == self.now {
                        self.studio_ticks += 1;
                        if self.studio_ticks == STORM_LIMIT + 1 {
                            self.violation("studio: timer storm".into());
                        }
                    } else {
                        self.studio_instant = self.now;
                        self.studio_ticks = 1;
                    }
                    self.studio_handle(StudioInput::Tick);
                }
            }
            Ev::W2S { link, msg } => {
                let l = &self.links[link];
                if l.dead || !l.s_open || l.half_open || l.cut_w2s {
                    return;
                }
                match msg {
                    W2S::Frame(text) => self.studio_handle(StudioInput::Frame {
                        conn: StudioConnId(link as u64),
                        text,
                    }),
                    W2S::Close => {
                        self.links[link].s_open = false;
                        self.studio_handle(StudioInput::Disconnected {
                            conn: StudioConnId(link as u64),
                        });
                        self.maybe_retire(link);
                    }
                }
            }
            Ev::S2W { link, msg } => {
                let l = &self.links[link];
                if l.dead || !l.w_open || l.half_open || l.cut_s2w {
                    return;
                }
                let (w, conn) = (l.worker, l.wconn);
                match msg {
                    S2W::Opened => self.feed(w, Input::Connected { conn }),
                    S2W::Frame(text) => self.feed(w, Input::Frame { conn, text }),
                    S2W::Close { code, reason } => {
                        self.links[link].w_open = false;
                        self.feed(
                            w,
                            Input::Disconnected {
                                conn,
                                code: Some(code),
                                reason,
                            },
                        );
                        self.maybe_retire(link);
                    }
                }
            }
            Ev::ResetWorkerSide { link } => {
                if self.links[link].w_open {
                    self.links[link].w_open = false;
                    let (w, conn) = (self.links[link].worker, self.links[link].wconn);
                    self.feed(
                        w,
                        Input::Disconnected {
                            conn,
                            code: None,
                            reason: "connection reset".into(),
                        },
                    );
                    self.maybe_retire(link);
                }
            }
            Ev::ResetStudioSide { link } => {
                if self.links[link].s_open {
                    self.links[link].s_open = false;
                    self.studio_handle(StudioInput::Disconnected {
                        conn: StudioConnId(link as u64),
                    });
                    self.maybe_retire(link);
                }
            }
            Ev::ResetLink { link } => self.reset(link),
            Ev::ConnArrive {
                w,
                conn,
                url,
                token,
            } => self.conn_arrive(w, conn, &url, &token),
            Ev::ToWorker { w, input } => self.feed(w, input),
            Ev::HttpArrive { w, id, request } => self.http(w, id, *request),
            Ev::EngineDone { w, gen } => {
                let wk = &mut self.workers[w];
                if wk.engine.as_ref().is_some_and(|e| e.gen == gen) {
                    let e = wk.engine.take().expect("checked");
                    Self::unrun(&mut self.running, &e.job_id);
                    if self.cfg.sabotage == Sabotage::LoseEngineResults && self.rng.chance(0.2) {
                        return;
                    }
                    self.feed(
                        w,
                        Input::JobFinished {
                            job_id: e.job_id,
                            run: e.run,
                            outcome: e.outcome,
                        },
                    );
                }
            }
            Ev::Submit => self.submit(),
            Ev::Fault => {
                if self.chaos() {
                    self.inject_fault();
                    let mean = self.cfg.fault_mean / self.cfg.workers as u32;
                    let d = self.rng.exp(mean);
                    self.after(d, Ev::Fault);
                }
            }
            Ev::StudioDown => {
                if self.chaos() {
                    self.studio_down();
                }
            }
            Ev::StudioUp => self.studio_up = true,
            Ev::Heal => self.heal(),
            Ev::Check => {
                if self.now.saturating_since(self.last_full_check) >= self.check_every {
                    self.full_check();
                }
                if self.phase == Phase::Settle && self.quiescent() {
                    self.quiesced = true;
                    self.report.quiesced_at = Some(self.now);
                    return;
                }
                let d = if self.phase == Phase::Settle {
                    Duration::from_secs(5).min(self.check_every)
                } else {
                    self.check_every
                };
                self.after(d, Ev::Check);
            }
        }
    }

    fn conn_arrive(&mut self, w: usize, conn: ConnId, url: &str, token: &str) {
        if !self.studio_up {
            let d = self.lat();
            self.after(
                d,
                Ev::ToWorker {
                    w,
                    input: Input::ConnectFailed {
                        conn,
                        error: ConnectError::Transport(testing::REFUSED.into()),
                    },
                },
            );
            return;
        }
        match testing::studio_upgrade(&self.studio, url, token) {
            Ok(worker_id) => {
                if !self.wid_index.contains_key(&worker_id) {
                    self.wid_index.insert(worker_id.clone(), w);
                }
                let link = self.links.len();
                self.links.push(Link {
                    worker: w,
                    wconn: conn,
                    w_open: true,
                    s_open: true,
                    dead: false,
                    half_open: false,
                    dropping: false,
                    cut_w2s: false,
                    cut_s2w: false,
                    stall_until: Mono::ZERO,
                    last_w2s: Mono::ZERO,
                    last_s2w: Mono::ZERO,
                    first_sent: false,
                });
                self.live.insert(link);
                let links = &mut self.workers[w].conn_links;
                links.retain(|&(c, _)| c != conn);
                links.push((conn, link));
                self.current_link[w] = Some(link);
                self.studio_handle(StudioInput::Connected {
                    conn: StudioConnId(link as u64),
                    worker_id,
                });
                self.s2w(link, S2W::Opened);
            }
            Err(error) => {
                let d = self.lat();
                self.after(
                    d,
                    Ev::ToWorker {
                        w,
                        input: Input::ConnectFailed { conn, error },
                    },
                );
            }
        }
    }

    fn finish(mut self) -> SimReport {
        self.full_check();
        if !self.quiesced {
            self.implicate_unsettled();
        }
        let mut bad_jobs = Vec::new();
        let (mut done, mut failed, mut lost, mut doubled) = (0, 0, 0, 0);
        for id in &self.submitted {
            match self.studio.job(id).map(|j| (&j.state, j.completions)) {
                Some((JobState::Done { .. }, c)) => {
                    done += 1;
                    if c > 1 {
                        doubled += 1;
                        bad_jobs.push(id.clone());
                    }
                }
                Some((JobState::Failed { .. }, _)) => failed += 1,
                _ => {
                    lost += 1;
                    bad_jobs.push(id.clone());
                }
            }
        }
        for id in bad_jobs {
            self.implicate_job(&id);
        }
        let mut r = std::mem::take(&mut self.report);
        r.submitted = self.submitted.len();
        (r.done, r.failed, r.lost, r.doubled) = (done, failed, lost, doubled);
        let doubled_events = self.completions.values().filter(|n| **n > 1).count();
        r.doubled = r.doubled.max(doubled_events);
        r.stuck = !self.quiesced;
        r.end = self.now;
        if let Some(h) = self.hasher.take() {
            r.hash = wire::hex(&h.finalize());
        }
        if self.cfg.record {
            r.traces = self
                .workers
                .drain(..)
                .enumerate()
                .filter(|(_, wk)| !wk.trace.is_empty())
                .map(|(k, wk)| {
                    (
                        k,
                        WorkerTrace {
                            config: wk.config,
                            steps: wk.trace,
                        },
                    )
                })
                .collect();
        }
        r
    }
}

/// Runs one seed.
pub fn run(cfg: &SimConfig) -> SimReport {
    World::new(cfg.clone()).run()
}

/// The workers whose traces a failing run should write (`SimConfig::record_only` of the
/// recording re-run): every worker of a fleet of at most [`TRACE_ALL_UP_TO`], otherwise
/// only the implicated ones (named by a violation, involved with a bad job, or unsettled
/// at the end), since a full recording of 10 000 workers is gigabytes.
pub fn trace_selection(r: &SimReport) -> Option<BTreeSet<usize>> {
    (r.workers > TRACE_ALL_UP_TO).then(|| r.implicated.clone())
}

/// A one-line description of a report.
pub fn describe(r: &SimReport) -> String {
    format!(
        "seed={} workers={} jobs={} done={} failed={} lost={} doubled={} stuck={} violations={} \
         concurrent_runs={} faults={} restarts={} steps={} studio_steps={} end={} quiesced_at={}",
        r.seed,
        r.workers,
        r.submitted,
        r.done,
        r.failed,
        r.lost,
        r.doubled,
        r.stuck,
        r.violation_count,
        r.concurrent_runs,
        r.faults_injected,
        r.studio_restarts,
        r.steps,
        r.studio_steps,
        r.end,
        r.quiesced_at
            .map(|t| t.to_string())
            .unwrap_or_else(|| "-".into()),
    )
}

#[cfg(test)]
mod queue_tests {
    use super::*;

    fn popped_key(q: &mut Queue) -> Option<(Mono, u64)> {
        q.pop().map(|(at, ev)| match ev {
            Ev::StudioTimer { ver } => (at, ver),
            _ => unreachable!("only studio timers are queued here"),
        })
    }

    /// The radix queue pops exactly what a sorted set of (time, sequence) would, for
    /// pushes at or after the last instant popped: bursts at one instant, near and far
    /// times, and pushes at the instant being processed.
    #[test]
    fn pops_in_time_then_sequence_order() {
        for seed in 0..50u64 {
            let mut rng = Rng::new(seed);
            let mut q = Queue::default();
            let mut reference: BTreeSet<(Mono, u64)> = BTreeSet::new();
            let mut seq = 0u64;
            let mut now = Mono::ZERO;
            let mut popped = 0;
            for _ in 0..5_000 {
                let pushes = rng.below(4);
                for _ in 0..pushes {
                    seq += 1;
                    let ahead = match rng.below(4) {
                        0 => 0,
                        1 => rng.below(10),
                        2 => rng.below(5_000_000),
                        _ => rng.below(1 << 40),
                    };
                    let at = Mono(now.0 + ahead);
                    q.push(at, seq, Ev::StudioTimer { ver: seq });
                    reference.insert((at, seq));
                }
                if rng.below(3) > 0 {
                    let want = reference.pop_first();
                    assert_eq!(popped_key(&mut q), want, "seed {seed}");
                    if let Some((at, _)) = want {
                        now = at;
                        popped += 1;
                    }
                }
            }
            while let Some(want) = reference.pop_first() {
                assert_eq!(popped_key(&mut q), Some(want), "seed {seed}");
            }
            assert!(q.pop().is_none());
            assert!(popped > 1_000);
        }
    }
}
