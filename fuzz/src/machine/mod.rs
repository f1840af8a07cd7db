//! `worker_machine`: one [`Worker`] driven by a fuzzer-chosen sequence of inputs and time
//! steps, with the core's invariants checked after every step.
//!
//! # Input format
//!
//! ```text
//! byte 0   flags: 0x01 unregistered, 0x02 auto-update, 0x04 only-when-idle,
//!                 0x08 production caps (else log queue 8, recent jobs 3, recent logs 5),
//!                 0x10 tiny timings (milliseconds), 0x20 zero timings (sanitised to 1 ms),
//!                 0x40 reconnect attempts capped at 2, 0x80 record a trace and replay it
//! byte 1   more flags: 0x01 api_base_url without scheme, 0x02 config holds an install id
//!                 and a secret, 0x04 ... and a request id, 0x08 no upload retries,
//!                 0x10 empty model roster, 0x20 started disabled (`auto_enabled = false`)
//! byte 2   reconnect jitter seed
//! then     up to MAX_OPS operations: an opcode byte (mod OPS) and its operands
//! ```
//!
//! Operands are bytes, little-endian integers, LEB128 varints and byte strings (varint
//! length + bytes); reading past the end yields zeros (see [`crate::reader`]). Ids are
//! chosen relative to what the machine asked for, so short inputs reach deep states:
//! a connection selector 0 is the newest connection the machine opened, 1 the one before,
//! `n >= 2` the raw `ConnId(n - 2)`; HTTP ids likewise; job selectors pick the dispatched
//! job, the last offered one or `job-<n>`. `Start` is always the first input. The opcode
//! table is [`Op`]; `fuzz/seed-corpus.py` writes the same encoding (recorded traces become
//! `Advance` + `RawFrame` / `Connected` / `InputJson` operations).
//!
//! # Invariants checked
//!
//! * no panic; every drain ends in `Wait` within [`MAX_DRAIN`] commands (the test peer's
//!   [`Driver`] guards it), a second `poll`
//!   repeats that `Wait`, and its deadline equals `deadline()` and is strictly after `now`
//!   (after a refused input the drain is exactly the previous `Wait`, whose deadline may
//!   have passed: a refused input changes nothing, so it runs no timer either);
//! * `handle` errors only where the contract allows: `UnknownJob` for a job the shell is
//!   not running (and a `JobFinished` for such a job is never accepted, unless it names the
//!   run the machine cancelled), `InvalidThreshold` for a negative or non-finite threshold (and never for
//!   a valid one), `EmptySecret` for an empty minted secret; never `TimeWentBackwards`
//!   (time here is monotone); and an erroring `handle` changes nothing;
//! * one job: no `Dispatch` (or `ApplyUpdate`) while the shell runs a dispatched job that
//!   was neither finished nor cancelled, and such a job is what `status()` names and its
//!   `JobFinished` is accepted;
//! * one connection: no `Connect` while an earlier connection is open (not closed by the
//!   machine, nor ended by `Disconnected` / `ConnectFailed`); connection and HTTP ids
//!   strictly increase; `Send` only on an open, connected connection; every sent frame
//!   decodes as a worker frame;
//! * `Exit` is the last command of its drain before `Wait { until: None }`, and after it
//!   every drain is exactly `Wait { until: None }`;
//! * the log queue and the recent-jobs / recent-logs rings stay within their caps;
//! * with flag 0x80: the session written with [`studio_core::trace::TraceWriter`] parses
//!   and replays with no divergence (determinism + the trace format), unless an input
//!   carries a secret-like key where redaction changes what the machine sees (the
//!   documented limit of the trace format; a minted secret, an approved registration
//!   status and HTTP / upgrade-failure bodies are redacted by design and still replay).
//!
//! Regressions (core bugs this target found, now fixed; their inputs are the
//! `corpus/worker_machine/regression-*` seeds and the `regression_*` tests):
//! * a refused `SetThreshold` with a non-finite value (a usage-error step, which traces
//!   record like any other) was written as `"gb":null`, so the trace no longer parsed; it
//!   is now recorded as the string `"NaN"` / `"inf"` / `"-inf"` and parses back;
//! * an HTTP or upgrade-failure body was copied, clipped but not redacted, into `Report`
//!   notices and `fail` errors (`HttpResult::describe`), so a body carrying a secret-like
//!   key (`"authToken":"..."`) leaked, and the recorded session did not replay from its
//!   redacted trace; bodies are now redacted before clipping, so such sessions replay.

mod checks;
mod ops;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use studio_core::testing::Driver;
pub use studio_core::testing::{MAX_DRAIN, WALL0};
use studio_core::trace::{self, TraceHeader, TraceWriter};
use studio_core::worker::{Command, Credentials, Input, RunId, WorkerConfig};

use crate::reader::Reader;
use checks::Redaction;

pub use ops::{Op, OPS};

/// Most operations read from one input.
pub const MAX_OPS: usize = 512;
/// Largest single time step, in microseconds (~19 h); with [`MAX_OPS`] steps the clock
/// stays far from `u64::MAX`.
pub const MAX_ADVANCE_US: u64 = 1 << 36;

const SMALL_LOG_CAP: usize = 8;
const SMALL_RECENT_JOBS: usize = 3;
const SMALL_RECENT_LOGS: usize = 5;

/// The configuration the header bytes select.
pub fn config(flags: u8, flags2: u8, seed: u8) -> WorkerConfig {
    let url = if flags2 & 0x01 != 0 {
        "nourl"
    } else {
        "http://127.0.0.1:9"
    };
    let mut cfg = WorkerConfig::for_tests(url);
    if flags & 0x01 == 0 {
        cfg.credentials = Some(Credentials {
            worker_id: "w-1".into(),
            auth_token: "tok".into(),
        });
    }
    cfg.auto_update_enabled = flags & 0x02 != 0;
    cfg.only_when_idle = flags & 0x04 != 0;
    if flags & 0x08 == 0 {
        cfg.limits.log_queue_cap = SMALL_LOG_CAP;
        cfg.limits.recent_jobs = SMALL_RECENT_JOBS;
        cfg.limits.recent_logs = SMALL_RECENT_LOGS;
    }
    let t = &mut cfg.timings;
    if flags & 0x20 != 0 {
        for d in [
            &mut t.heartbeat,
            &mut t.log_flush,
            &mut t.read_idle,
            &mut t.connect_timeout,
            &mut t.registration_poll,
            &mut t.backoff_base,
            &mut t.backoff_cap,
            &mut t.shutdown_grace,
            &mut t.update_interval,
        ] {
            *d = Duration::ZERO;
        }
        t.upload_retries = vec![Duration::ZERO, Duration::ZERO];
    } else if flags & 0x10 != 0 {
        let ms = Duration::from_millis;
        t.heartbeat = ms(3);
        t.log_flush = ms(1);
        t.read_idle = ms(10);
        t.connect_timeout = ms(5);
        t.registration_poll = ms(7);
        t.backoff_base = ms(1);
        t.backoff_cap = ms(8);
        t.upload_retries = vec![ms(1), ms(2)];
        t.shutdown_grace = ms(9);
        t.update_interval = ms(20);
    } else {
        // The default update interval (30 min) would rarely fire; keep it reachable.
        t.update_interval = Duration::from_secs(60);
    }
    if flags2 & 0x08 != 0 {
        t.upload_retries.clear();
    }
    if flags & 0x40 != 0 {
        cfg.reconnect_attempts = 2;
    }
    if flags2 & 0x02 != 0 {
        cfg.registration.install_id = Some("install-1".into());
        cfg.registration.secret = Some("cd".repeat(32).into());
        if flags2 & 0x04 != 0 {
            cfg.registration.request_id = Some("rr-1".into());
        }
    }
    if flags2 & 0x10 != 0 {
        cfg.models.clear();
    }
    if flags2 & 0x20 != 0 {
        cfg.auto_enabled = false;
    }
    cfg.seed = u64::from(seed);
    cfg
}

/// The harness: the machine plus the shell's view of what it asked for.
struct Harness {
    /// The machine, its clock (the wall clock skews with `WallSkew`) and the drain.
    driver: Driver,
    step: u64,
    caps: Option<(usize, usize, usize)>,
    // Ids the machine issued.
    last_conn: Option<u64>,
    last_http: Option<u64>,
    prev_http: Option<u64>,
    /// HTTP ids of registration polls.
    poll_ids: BTreeSet<u64>,
    /// Connections opened and not yet closed or ended.
    open: BTreeSet<u64>,
    /// Open connections the shell reported `Connected`.
    connected: BTreeSet<u64>,
    /// The dispatched job the shell is running (neither finished nor cancelled).
    running: Option<String>,
    last_dispatched: Option<String>,
    /// The run of each job's latest dispatch (what a result of that job names).
    run_of: BTreeMap<String, RunId>,
    /// The run the machine cancelled, whose late result it must not refuse.
    cancelled: Option<RunId>,
    last_offered: Option<String>,
    offers: u64,
    exited: bool,
    /// The final `Wait` of the last accepted input's drain.
    last_wait: Option<Command>,
    // Recording (flag 0x80).
    recording: Option<(TraceWriter, String)>,
    replay_safe: bool,
}

impl Harness {
    fn new(cfg: WorkerConfig, record: bool) -> Harness {
        let caps = if cfg.limits.log_queue_cap == SMALL_LOG_CAP {
            Some((SMALL_LOG_CAP, SMALL_RECENT_JOBS, SMALL_RECENT_LOGS))
        } else {
            None
        };
        let recording = record.then(|| {
            let w = TraceWriter::new();
            let header = TraceHeader::new("fuzz", &cfg, Driver::new(cfg.clone()).now());
            let mut text = w.header_line(&header);
            text.push('\n');
            (w, text)
        });
        Harness {
            driver: Driver::new(cfg),
            step: 0,
            caps,
            last_conn: None,
            last_http: None,
            prev_http: None,
            poll_ids: BTreeSet::new(),
            open: BTreeSet::new(),
            connected: BTreeSet::new(),
            running: None,
            last_dispatched: None,
            run_of: BTreeMap::new(),
            cancelled: None,
            last_offered: None,
            offers: 0,
            exited: false,
            last_wait: None,
            recording,
            replay_safe: true,
        }
    }

    /// Feeds one input, drains, and checks every invariant.
    fn feed(&mut self, input: Input) -> Result<(), String> {
        self.step += 1;
        let now = self.driver.now();
        let step = self.step;
        let ctx = || format!("step {step} at {} ({input:?})", now.mono);
        if self.recording.is_some() {
            let plain = serde_json::to_value(&input).map_err(|e| e.to_string())?;
            if trace::redacted(&input) != plain {
                match self.redaction(&input) {
                    Redaction::ByDesign => {}
                    Redaction::Limit => self.replay_safe = false,
                }
            }
        }
        // Inputs the contract says must be refused need a before-image (an `Err` must
        // change nothing; the `Debug` of the whole machine is the most complete picture).
        // Refusals of other inputs are errors by themselves (`check_result`).
        let refused = match &input {
            Input::JobFinished { job_id, run, .. } => {
                self.running.as_ref() != Some(job_id) && self.cancelled != Some(*run)
            }
            Input::SetThreshold { gb } => !(gb.is_finite() && *gb >= 0.0),
            Input::Minted { secret, .. } => secret.is_empty(),
            _ => false,
        };
        let before = refused.then(|| format!("{:?}", self.driver.worker));
        let result = self.driver.feed(input.clone());
        if let Err(e) = &result {
            if let Some(before) = before {
                if format!("{:?}", self.driver.worker) != before {
                    return Err(format!(
                        "{}: handle returned {e:?} but changed the machine",
                        ctx()
                    ));
                }
            }
        }
        self.check_result(&input, &result)
            .map_err(|e| format!("{}: {e}", ctx()))?;
        if result.is_ok() {
            self.shell_view_of_input(&input);
        }
        // The drain, with its final `Wait` (the driver panics on a runaway drain).
        let mut cmds = self.driver.drain();
        cmds.push(Command::Wait {
            until: self.driver.until,
        });
        if crate::verbose() {
            eprintln!("#{step} {} {input:?} -> {result:?}", now.mono);
            for c in &cmds {
                eprintln!("    {c:?}");
            }
        }
        self.check_drain(now, &cmds, result.is_err())
            .map_err(|e| format!("{}: {e}\n  drain: {cmds:#?}", ctx()))?;
        // `status()` clones the recent-jobs and recent-logs rings: every step with the
        // small caps, every 16th step with the production caps (up to 1000 log lines).
        if self.caps.is_some() || step.is_multiple_of(16) || self.exited {
            self.check_status().map_err(|e| format!("{}: {e}", ctx()))?;
        }
        if let Some((w, text)) = &mut self.recording {
            text.push_str(&w.record(now, &input, &cmds));
            text.push('\n');
        }
        Ok(())
    }
}

/// Runs one fuzz input; `Err` describes the broken invariant.
pub fn check(data: &[u8]) -> Result<(), String> {
    let mut r = Reader::new(data);
    let flags = r.u8();
    let flags2 = r.u8();
    let seed = r.u8();
    let mut h = Harness::new(config(flags, flags2, seed), flags & 0x80 != 0);
    h.feed(Input::Start)?;
    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        let op = Op::from_byte(r.u8());
        if let Some(input) = h.input(op, &mut r) {
            h.feed(input)?;
        }
    }
    h.check_replay()
}
