//! The faults the simulation injects during chaos, and the deliberate bugs
//! ([`Sabotage`]) that prove its checks can fail.
//!
//! Every fault class is a switch in [`Faults`] (named as `--without` takes it). A class
//! lives in three places, all reached from here:
//!
//! * its switch and name ([`Faults`], [`Faults::NAMES`]);
//! * its decision, drawn from the run's [`Rng`]: which link fault strikes
//!   ([`Faults::link_classes`], [`World::inject_link_fault`]), how a worker's engine behaves
//!   ([`EngineProfile::pick`], [`EngineProfile::plan`]), when the studio restarts
//!   ([`World::studio_down`]), whether an upload fails ([`World::upload_fault`]), whether a
//!   result frame is replayed ([`World::duplicate_result`]), how far a frame is delayed
//!   ([`World::latency`]);
//! * its undoing at heal ([`World::heal`]): chaos ends, every link is reset clean, hung
//!   engines are released and the studio is up, so the fleet can converge.
//!
//! Frame loss is modelled as a WebSocket over TCP shows it: the frame and everything after
//! it on that connection is lost and the connection resets within 2 s (a stream cannot lose
//! one frame and live). A half-open link silently drops both directions until the worker's
//! read-idle timer and the studio's sweep close their sides; a partition cuts one
//! direction. A studio restart drops every session and refuses connects and HTTP for
//! 5-30 s; jobs survive. A hung engine never finishes by itself: the worker's job deadline
//! ([`crate::JOB_DEADLINE`] here) fails the job retryable and cancels the engine; one still
//! hung at heal finishes then. A worker crash ([`World::crash`]) kills the process: its
//! machine, engine, timers and sockets are gone (the studio sees its links reset), only the
//! durable outbox survives; 1-10 s later a new machine starts on the same config and gets
//! the outbox back (`Input::Restore`). A poison job's every `offer` names a task kind no
//! build knows: the worker must answer it (taken: `accept` then a non-retryable `fail`) and
//! keep its session.

use std::time::Duration;

use studio_core::worker::{HttpResult, JobOutcome};

use crate::rng::Rng;
use crate::world::{Event, World};

/// Which fault classes are active during chaos.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Faults {
    /// A frame and everything after it on its connection is lost; the link resets.
    pub drops: bool,
    /// Some frames take 0.2-8 s longer.
    pub delays: bool,
    /// A link delivers nothing for 1-40 s, then everything in order.
    pub stalls: bool,
    /// A link drops everything in both directions, and neither side is told.
    pub half_open: bool,
    /// Both sides see the link end.
    pub resets: bool,
    /// One direction of a link drops everything.
    pub partitions: bool,
    /// The studio drops every session and refuses everything for a while.
    pub studio_restarts: bool,
    /// The last result frame of a worker's previous connection arrives again on its next.
    pub duplicates: bool,
    /// A tenth of the engines take 10-90 s.
    pub slow_engines: bool,
    /// Some engines fail jobs, retryably or not.
    pub failing_engines: bool,
    /// Some engines never finish (until heal).
    pub hung_engines: bool,
    /// Uploads answer 500 or break off.
    pub upload_failures: bool,
    /// A tenth of the fleet starts unregistered (the studio approves automatically).
    pub registration: bool,
    /// Worker processes are killed (memory lost, the durable outbox kept) and started
    /// again 1-10 s later.
    pub crashes: bool,
    /// Every offer of some jobs arrives undecodable (an unknown task kind; the job id
    /// readable): answered, not looped.
    pub poison_offers: bool,
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
            crashes: true,
            poison_offers: true,
        }
    }

    /// No faults: a calm fleet.
    pub fn none() -> Faults {
        let mut f = Faults::all();
        for name in Faults::NAMES {
            f.disable(name);
        }
        f
    }

    /// The names of the fault classes, as `--without` takes them.
    pub const NAMES: [&'static str; 15] = [
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
        "crashes",
        "poison_offers",
    ];

    /// The switch of a class, by name.
    fn switch(&mut self, name: &str) -> Option<&mut bool> {
        Some(match name {
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
            "crashes" => &mut self.crashes,
            "poison_offers" => &mut self.poison_offers,
            _ => return None,
        })
    }

    /// Turns one class off by name; false when the name is unknown.
    pub fn disable(&mut self, name: &str) -> bool {
        self.switch(name).map(|f| *f = false).is_some()
    }

    /// The link faults that may strike, in the order a draw picks from.
    pub fn link_classes(&self) -> Vec<LinkFault> {
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
            v.push(LinkFault::CutToStudio);
            v.push(LinkFault::CutToWorker);
        }
        v
    }
}

/// What can happen to one live link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkFault {
    Drop,
    Stall,
    HalfOpen,
    Reset,
    /// Frames from the worker are lost.
    CutToStudio,
    /// Frames to the worker are lost.
    CutToWorker,
}

/// How one worker's engine behaves during chaos (after heal every engine is normal).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineProfile {
    Normal,
    /// 10-90 s a job.
    Slow,
    /// Fails 40 % of its jobs, retryably.
    Flaky,
    /// Fails 20 % of its jobs for good.
    Broken,
    /// Hangs on 30 % of its jobs.
    Hangs,
}

/// How the engine will run one job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnginePlan {
    pub latency: Duration,
    /// The job fails, with this `retryable`.
    pub fails: Option<bool>,
    /// The job never finishes until heal.
    pub hangs: bool,
}

impl EngineProfile {
    /// A worker's engine, as the active classes allow (one profile per worker, drawn when
    /// the fleet is built).
    pub fn pick(faults: &Faults, rng: &mut Rng) -> EngineProfile {
        if faults.hung_engines && rng.chance(0.05) {
            EngineProfile::Hangs
        } else if faults.slow_engines && rng.chance(0.1) {
            EngineProfile::Slow
        } else if faults.failing_engines && rng.chance(0.1) {
            EngineProfile::Flaky
        } else if faults.failing_engines && rng.chance(0.05) {
            EngineProfile::Broken
        } else {
            EngineProfile::Normal
        }
    }

    /// How this engine runs the next job.
    pub fn plan(self, rng: &mut Rng) -> EnginePlan {
        let ms = Duration::from_millis;
        let secs = Duration::from_secs;
        let plain = |latency| EnginePlan {
            latency,
            fails: None,
            hangs: false,
        };
        match self {
            EngineProfile::Normal => plain(rng.between(ms(50), secs(3))),
            EngineProfile::Slow => plain(rng.between(secs(10), secs(90))),
            EngineProfile::Flaky | EngineProfile::Broken => {
                let retryable = self == EngineProfile::Flaky;
                let fails = rng.chance(if retryable { 0.4 } else { 0.2 });
                EnginePlan {
                    latency: rng.between(ms(50), secs(5)),
                    fails: fails.then_some(retryable),
                    hangs: false,
                }
            }
            EngineProfile::Hangs => EnginePlan {
                latency: rng.between(ms(50), secs(3)),
                fails: None,
                hangs: rng.chance(0.3),
            },
        }
    }
}

/// The outcome of a planned run whose success would be `ok`.
pub fn outcome(plan: &EnginePlan, ok: JobOutcome) -> JobOutcome {
    match plan.fails {
        Some(retryable) => JobOutcome::Failed {
            error: "simulated engine failure".into(),
            retryable,
        },
        None => ok,
    }
}

/// A deliberate bug in the simulated shell, to prove the checks can fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sabotage {
    None,
    /// Some offers are also delivered to another worker (a cross-wired proxy).
    CrossWireOffers,
    /// Engine results of some jobs are never reported to the worker.
    LoseEngineResults,
    /// The hosts keep no durable outbox: a crashed worker comes back with nothing.
    NoOutbox,
}

/// A result frame: the only frames the protocol repeats (the worker re-sends unacked results
/// after `welcome`), so the only ones the duplicate fault replays. A WebSocket never
/// duplicates a frame; replaying an `accept` or `reject` would be a fault no network makes
/// (and the studio rightly calls `accept`-then-`reject` of one job a protocol violation).
pub fn is_result_frame(text: &str) -> bool {
    text.starts_with(r#"{"type":"completeJson""#) || is_fail_frame(text)
}

/// Whether `text` is a `fail` frame.
pub fn is_fail_frame(text: &str) -> bool {
    text.starts_with(r#"{"type":"fail""#)
}

impl World {
    /// One-way network latency of a frame, a connect or an HTTP exchange: 1-40 ms, and
    /// with `delays` sometimes 0.2-8 s more.
    pub(crate) fn latency(&mut self) -> Duration {
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

    /// The next link fault: on a random worker's live link, if it has one. Scheduled as a
    /// Poisson process over the fleet (mean `fault_mean / workers` between faults).
    pub(crate) fn inject_link_fault(&mut self) {
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
        let fault = classes[self.rng.below(classes.len() as u64) as usize];
        match fault {
            LinkFault::Drop => {
                self.links[link].dropping = true;
                let d = self.rng.between(Duration::ZERO, Duration::from_secs(2));
                self.after(d, Event::ResetLink { link });
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
            LinkFault::CutToStudio => self.links[link].cut_to_studio = true,
            LinkFault::CutToWorker => self.links[link].cut_to_worker = true,
        }
    }

    /// Schedules the next link fault while chaos lasts.
    pub(crate) fn schedule_link_fault(&mut self) {
        let mean = self.cfg.fault_mean / self.cfg.workers as u32;
        let d = self.rng.exp(mean);
        self.after(d, Event::LinkFault);
    }

    /// The studio goes down: every session is dropped (the studio sees its side end at
    /// once, each worker a reset a latency later), and it comes back in 5-30 s.
    pub(crate) fn studio_down(&mut self) {
        if !self.studio_up {
            return;
        }
        self.report.studio_restarts += 1;
        self.studio_up = false;
        let live: Vec<usize> = self.live.iter().copied().collect();
        for link in live {
            self.links[link].dead = true;
            self.studio_sees_reset(link);
            if self.links[link].worker_open {
                let d = self.latency();
                self.after(d, Event::WorkerSeesReset { link });
            }
            self.retire_if_closed(link);
        }
        let d = self
            .rng
            .between(Duration::from_secs(5), Duration::from_secs(30));
        self.after(d, Event::StudioUp);
    }

    /// An upload meets a storage fault (15 % of uploads while the class is on): half of
    /// them answer 500, the other half break off.
    pub(crate) fn upload_fault(&mut self) -> Option<HttpResult> {
        if !(self.chaos() && self.cfg.faults.upload_failures && self.rng.chance(0.15)) {
            return None;
        }
        Some(if self.rng.chance(0.5) {
            HttpResult::Response {
                status: 500,
                body: r#"{"error":"storage hiccup"}"#.into(),
            }
        } else {
            HttpResult::Transport("reset".into())
        })
    }

    /// A worker process dies now and then (about once per `fault_mean` per ten workers):
    /// the first crash is scheduled here, each one schedules the next.
    pub(crate) fn schedule_crash(&mut self) {
        let mean = self.cfg.fault_mean * 10 / self.cfg.workers.max(1) as u32;
        let d = self.rng.exp(mean);
        self.after(d, Event::Crash);
    }

    /// Whether a worker whose engine just finished is killed within 20 ms (10 % while the
    /// class is on): mostly while its result is on the way, where only the durable outbox
    /// saves it.
    pub(crate) fn crash_after_result(&mut self) -> bool {
        self.chaos() && self.cfg.faults.crashes && self.rng.chance(0.1)
    }

    /// Whether the job submitted now is poison: every offer of it arrives undecodable, as
    /// a studio bug or a newer studio's task would (2 % of the jobs of chaos while the
    /// class is on).
    pub(crate) fn poison_job(&mut self) -> bool {
        self.chaos() && self.cfg.faults.poison_offers && self.rng.chance(0.02)
    }

    /// Whether the first frame on a worker's new link is followed by a replay of the last
    /// result frame it sent on an earlier link (half of the time while the class is on).
    pub(crate) fn duplicate_result(&mut self) -> bool {
        self.chaos() && self.cfg.faults.duplicates && self.rng.chance(0.5)
    }

    /// Chaos ends: every live link is reset clean (both sides see it end), hung engines
    /// finish within 2 s, the studio is up. The whole studio is checked first.
    pub(crate) fn heal(&mut self) {
        self.full_check();
        self.phase = crate::world::Phase::Settle;
        self.studio_up = true;
        let live: Vec<usize> = self.live.iter().copied().collect();
        for link in live {
            self.links[link].heal();
            self.reset(link);
        }
        for w in 0..self.workers.len() {
            if let Some(e) = &self.workers[w].engine {
                if e.hung {
                    let attempt = e.attempt;
                    let d = self
                        .rng
                        .between(Duration::from_millis(50), Duration::from_secs(2));
                    self.after(d, Event::EngineDone { worker: w, attempt });
                }
            }
        }
    }
}
