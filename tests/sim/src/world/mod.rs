//! The world: the fleet of simulated workers, the studio machine, the links between them,
//! the event queue and the clock, and the loop that runs a seed from start to quiescence.
//!
//! The run has two phases. Chaos: faults on, jobs submitted. Heal (at the end of chaos):
//! faults off, every link reset, hung engines released, the studio up. Then the world runs
//! until it is quiescent (every job finished, every worker connected and idle, the studio
//! holding exactly one session per worker) or a simulated-time bound passes (`stuck`).
//!
//! Time is simulated: the loop pops the next event ([`Queue`]) and never sleeps. Each
//! worker's deadline (and the studio's) is one queue entry, re-scheduled after every
//! `handle` with a version number so stale entries are skipped: no per-step scan of the
//! fleet.

pub(crate) mod checks;
pub(crate) mod faults;
pub(crate) mod links;
pub(crate) mod report;
pub(crate) mod studio;
pub(crate) mod workers;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use sha2::{Digest, Sha256};
use studio_core::studio::{Studio, StudioConfig, StudioInput};
use studio_core::worker::{ConnId, HttpId, HttpRequest, Input, Now};
use studio_core::{Mono, WallMs};

use crate::queue::Queue;
use crate::rng::Rng;
use crate::world::faults::EngineProfile;
use crate::world::links::{Link, LinkInput};
use crate::world::report::SimReport;
use crate::world::workers::SimWorker;
use crate::{SimConfig, WALL0};

/// Something that happens at an instant.
#[derive(Debug)]
pub(crate) enum Event {
    /// A worker's deadline (stale unless `version` is the worker's current one).
    WorkerTimer {
        worker: usize,
        version: u64,
    },
    /// The studio's deadline (likewise).
    StudioTimer {
        version: u64,
    },
    /// A frame or close the worker sent on `link` arrives at the studio.
    ToStudio {
        link: usize,
        input: StudioInput,
    },
    /// The upgrade, a frame or a close the studio sent on `link` arrives at the worker.
    ToWorker {
        link: usize,
        input: LinkInput,
    },
    /// The worker learns that `link` broke.
    WorkerSeesReset {
        link: usize,
    },
    /// The studio learns that `link` broke.
    StudioSeesReset {
        link: usize,
    },
    /// `link` breaks (the end of a frame loss).
    ResetLink {
        link: usize,
    },
    /// A worker's WebSocket upgrade reaches the studio (dropped if its process crashed).
    ConnectArrives {
        worker: usize,
        process: u32,
        conn: ConnId,
        /// The URL and the token (boxed: a connect is rare, and every event is as large
        /// as the largest).
        target: Box<(String, String)>,
    },
    /// An input for a worker that is not on a link (start, HTTP answers, minted secrets,
    /// update results), for the process `process` of it (dropped if that one crashed).
    WorkerInput {
        worker: usize,
        process: u32,
        input: Box<Input>,
    },
    /// A random worker's process is killed (and the next crash scheduled).
    Crash,
    /// Worker `worker`'s process `process` is killed (if it still runs).
    CrashWorker {
        worker: usize,
        process: u32,
    },
    /// A crashed worker starts again (process `process`).
    Restart {
        worker: usize,
        process: u32,
    },
    /// A worker's HTTP request reaches the studio (dropped if its process died on the
    /// way: the connection died with it).
    HttpArrives {
        worker: usize,
        process: u32,
        id: HttpId,
        request: Box<HttpRequest>,
    },
    /// A worker's engine finishes (stale unless `attempt` is the run it has).
    EngineDone {
        worker: usize,
        attempt: u64,
    },
    /// A job is submitted to the studio.
    Submit,
    /// A link fault strikes (and the next is scheduled).
    LinkFault,
    StudioDown,
    StudioUp,
    Heal,
    /// The periodic whole-studio check and the quiescence test.
    Check,
}

#[derive(PartialEq, Eq, Clone, Copy, Debug)]
pub(crate) enum Phase {
    Chaos,
    Settle,
}

/// Everything of one run.
pub(crate) struct World {
    pub cfg: SimConfig,
    pub rng: Rng,
    pub now: Mono,
    pub queue: Queue<Event>,
    pub studio: Studio,
    /// The studio's scheduled deadline and its version (see [`Event::StudioTimer`]).
    pub studio_timer: Option<Mono>,
    pub studio_timer_version: u64,
    /// The studio's handles at the current instant (the storm check).
    pub studio_instant: Mono,
    pub studio_ticks: u32,
    /// False while the studio is down (restarting).
    pub studio_up: bool,
    pub workers: Vec<SimWorker>,
    /// Every link ever opened, by index (the studio's connection id).
    pub links: Vec<Link>,
    /// The links open on at least one side.
    pub live: BTreeSet<usize>,
    /// Each worker's newest link, while it is open on a side.
    pub current_link: Vec<Option<usize>>,
    pub phase: Phase,
    /// Every job submitted, in order.
    pub submitted: Vec<String>,
    /// Completion events per job, and the jobs done or failed for good.
    pub completions: BTreeMap<String, u32>,
    pub finished: BTreeSet<String>,
    /// Engines running each job (more than one: a claim expired while the first worker
    /// was cut off).
    pub running: BTreeMap<String, u32>,
    /// The report hash, while `cfg.hash`.
    pub hasher: Option<Sha256>,
    pub report: SimReport,
    /// How often the whole studio is checked.
    pub check_every: Duration,
    /// When the last whole-studio check ran.
    pub last_full_check: Mono,
    pub quiesced: bool,
    /// Jobs and workers (studio ids) named by the events of the current studio step: what
    /// [`World::check_studio_step`] looks at.
    pub touched_jobs: Vec<String>,
    pub touched_workers: Vec<String>,
    /// Each held job's holder as of the last step that touched it.
    pub holders: BTreeMap<String, String>,
    /// Studio worker id -> simulated worker index.
    pub wid_index: BTreeMap<String, usize>,
    /// Results an engine handed its worker that have not reached the studio yet (as a
    /// frame or an upload), by (job, worker), with the worker's process then. One still
    /// here at the end never reached the studio: it is lost. So is one still here when the
    /// same worker finishes the job again in a later process (a crash ate it); in the same
    /// process the studio asked for the job again and the new result replaces it. A `fail`
    /// the worker kept and dropped when the studio offered it the job again is superseded
    /// by that offer in any process (the worker answers a re-offer with a kept completion,
    /// so a completion is never superseded this way).
    pub results_pending: BTreeMap<(String, usize), u32>,
    /// Those lost results.
    pub results_lost: Vec<(String, usize)>,
    /// Jobs whose every offer arrives undecodable (the `poison_offers` class).
    pub poisoned: BTreeSet<String>,
}

impl World {
    /// The world of `cfg` at time zero: the studio, and the fleet (a tenth unregistered
    /// with the `registration` class; each worker's engine profile drawn).
    pub fn new(cfg: SimConfig) -> World {
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
            let unregistered = cfg.faults.registration && k % 10 == 9;
            let (wc, credentials) = SimWorker::config(k, unregistered, cfg.job_deadline, &mut rng);
            if let Some((id, token)) = credentials {
                studio.add_worker(&id, &token);
            }
            let profile = EngineProfile::pick(&cfg.faults, &mut rng);
            workers.push(SimWorker::new(wc, profile));
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
            queue: Queue::default(),
            studio,
            studio_timer: None,
            studio_timer_version: 0,
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
            results_pending: BTreeMap::new(),
            results_lost: Vec::new(),
            poisoned: BTreeSet::new(),
            cfg,
        }
    }

    /// Schedules `event` at `at`.
    pub fn at(&mut self, at: Mono, event: Event) {
        self.queue.push(at, event);
    }

    /// Schedules `event` `d` from now.
    pub fn after(&mut self, d: Duration, event: Event) {
        let t = self.now + d;
        self.at(t, event);
    }

    pub fn chaos(&self) -> bool {
        self.phase == Phase::Chaos
    }

    /// The time now, as both machines get it.
    pub fn time(&self) -> Now {
        Now::new(self.now, WallMs(WALL0 + self.now.0 / 1000))
    }

    /// Runs the world to quiescence or the time bound, and reports.
    pub fn run(mut self) -> SimReport {
        self.schedule_start();
        let settle_end = Mono::ZERO + self.cfg.chaos + self.cfg.settle_limit;
        while let Some((at, event)) = self.queue.pop() {
            if at > settle_end {
                break;
            }
            debug_assert!(at >= self.now);
            self.now = at;
            self.event(event);
            if self.quiesced {
                break;
            }
        }
        self.finish()
    }

    /// What the run starts with: every worker starts within 5 s, the jobs are spread over
    /// chaos, a studio restart every 20 minutes of chaos (at least one), the first link
    /// fault, heal, and the first check.
    fn schedule_start(&mut self) {
        for w in 0..self.workers.len() {
            let d = self.rng.between(Duration::ZERO, Duration::from_secs(5));
            let input = Box::new(Input::Start);
            let process = 0;
            self.at(
                Mono::ZERO + d,
                Event::WorkerInput {
                    worker: w,
                    process,
                    input,
                },
            );
        }
        for _ in 0..self.cfg.jobs {
            let d = self.rng.between(
                Duration::from_secs(1),
                self.cfg.chaos.max(Duration::from_secs(1)),
            );
            self.at(Mono::ZERO + d, Event::Submit);
        }
        if self.cfg.faults.studio_restarts && !self.cfg.chaos.is_zero() {
            let n = (self.cfg.chaos.as_secs() / 1200).max(1);
            for _ in 0..n {
                let d = self.rng.between(
                    Duration::from_secs(30),
                    self.cfg.chaos.max(Duration::from_secs(30)),
                );
                self.at(Mono::ZERO + d, Event::StudioDown);
            }
        }
        if !self.cfg.faults.link_classes().is_empty() && self.cfg.workers > 0 {
            self.schedule_link_fault();
        }
        if self.cfg.faults.crashes && self.cfg.workers > 0 {
            self.schedule_crash();
        }
        self.at(Mono::ZERO + self.cfg.chaos, Event::Heal);
        self.at(Mono::ZERO + self.check_every, Event::Check);
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::WorkerTimer { worker, version } => {
                let wk = &mut self.workers[worker];
                if wk.timer_version == version {
                    wk.timer_at = None;
                    self.feed(worker, Input::Tick);
                }
            }
            Event::StudioTimer { version } => {
                if self.studio_timer_version == version {
                    self.studio_timer = None;
                    self.studio_tick();
                }
            }
            Event::ToStudio { link, input } => self.deliver_to_studio(link, input),
            Event::ToWorker { link, input } => self.deliver_to_worker(link, input.into()),
            Event::WorkerSeesReset { link } => self.worker_sees_reset(link),
            Event::StudioSeesReset { link } => self.studio_sees_reset(link),
            Event::ResetLink { link } => self.reset(link),
            Event::ConnectArrives {
                worker,
                process,
                conn,
                target,
            } => {
                if self.workers[worker].process == process {
                    let (url, token) = &*target;
                    self.connect_arrives(worker, conn, url, token);
                }
            }
            Event::WorkerInput {
                worker,
                process,
                input,
            } => {
                if self.workers[worker].process == process {
                    self.feed(worker, *input);
                }
            }
            Event::Crash => {
                if self.chaos() {
                    let w = self.rng.below(self.cfg.workers as u64) as usize;
                    self.crash(w);
                    self.schedule_crash();
                }
            }
            Event::CrashWorker { worker, process } => {
                if self.workers[worker].process == process {
                    self.crash(worker);
                }
            }
            Event::Restart { worker, process } => self.restart(worker, process),
            Event::HttpArrives {
                worker,
                process,
                id,
                request,
            } => {
                if self.workers[worker].process == process {
                    self.http(worker, id, *request);
                }
            }
            Event::EngineDone { worker, attempt } => self.engine_done(worker, attempt),
            Event::Submit => self.submit(),
            Event::LinkFault => {
                if self.chaos() {
                    self.inject_link_fault();
                    self.schedule_link_fault();
                }
            }
            Event::StudioDown => {
                if self.chaos() {
                    self.studio_down();
                }
            }
            Event::StudioUp => self.studio_up = true,
            Event::Heal => self.heal(),
            Event::Check => {
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
                self.after(d, Event::Check);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Event;

    /// A queued event fits a cache line (the queue keeps each in a 64-byte slot of its
    /// own): a variant that grows past it should box its payload, as the rare ones do.
    #[test]
    fn an_event_fits_a_cache_line() {
        assert!(
            std::mem::size_of::<Event>() <= 64,
            "{} bytes",
            std::mem::size_of::<Event>()
        );
    }
}
