//! The reference studio machine: the studio side of the worker <-> studio contract
//! (`PROTOCOL.md`), sans-IO.
//!
//! It is the peer of the loopback studio server, of in-memory worker+studio pair tests and
//! of the fleet simulation. It owns worker registration (§4.1), the WebSocket sessions
//! (§2, §5), job offering and bookkeeping (§3.1 "Studio selection", §3.9), the multipart
//! completion route (§4.1) and the periodic sweep (§1.1, §6). It reads no clock, socket,
//! file, environment, thread or random source, and uses no hashed collections: the same
//! calls at the same times give the same commands, always.
//!
//! # Driving contract
//!
//! The same as the worker machine's: one `handle(now, input) -> Result<(), UsageError>`
//! and one `poll()` drained until it returns [`StudioCommand::Wait`]; time is a
//! [`Now`] (monotonic for every decision, the wall clock for `welcome.serverTime`) and
//! follows [`Now::after`]'s rule: a monotonic time earlier than the previous call's is a
//! [`UsageError`] and changes nothing (an HTTP call answers it with a 500).
//!
//! * The driver assigns a [`ConnId`] per accepted socket. Before accepting a WebSocket
//!   upgrade it calls [`Studio::authorize_upgrade`] (401 refuses the upgrade), then feeds
//!   [`StudioInput::Connected`], every text frame as [`StudioInput::Frame`], the end of the
//!   socket as [`StudioInput::Disconnected`], and [`StudioInput::Tick`] whenever the last
//!   `Wait { until }` is reached (a spurious or early `Tick` is harmless).
//! * HTTP handlers call [`Studio::register_request`], [`Studio::register_status`],
//!   [`Studio::complete_upload`], [`Studio::submit`], [`Studio::approve`], ... directly and
//!   map the `Result` to a status code and JSON body.
//! * After **every** call that takes `&mut self` the driver drains [`Studio::poll`] until it
//!   returns a [`StudioCommand::Wait`]: `Send` a text frame, `Close` a socket with a code,
//!   log an `Event`, then sleep until `until` (`None`: nothing scheduled, sleep until IO).
//!   After the `Wait`, `poll` repeats it until the next such call.
//! * Binary WebSocket frames are not part of the contract; a driver may feed them as a
//!   `Frame` with any non-JSON text (they then count as a protocol violation) or drop them.
//!
//! ```
//! use studio_core::studio::{ConnId, Studio, StudioCommand, StudioConfig, StudioInput};
//! use studio_core::{Mono, Now, WallMs};
//!
//! let mut studio = Studio::new(StudioConfig::default());
//! studio.add_worker("w-1", "token-1");
//! assert!(studio.authorize_upgrade("w-1", "token-1").is_ok());
//! let now = Now::new(Mono::from_secs(1), WallMs(1_779_710_401_000));
//! let conn = ConnId(7);
//! studio.handle(now, StudioInput::Connected { conn, worker_id: "w-1".into() }).unwrap();
//! let hello = r#"{"type":"hello","authToken":"token-1","capabilities":{"machineName":"m",
//!   "username":"u","agentVersion":"0","engine":"synthetic","vramTotalGb":8.0,
//!   "vramThresholdGb":8.0,"autoEnabled":true,"autoStart":false,"supportedModels":[]}}"#;
//! studio.handle(now, StudioInput::Frame { conn, text: hello.into() }).unwrap();
//! let mut sent = Vec::new();
//! loop {
//!     match studio.poll() {
//!         StudioCommand::Send { conn, text } => sent.push((conn, text)),
//!         StudioCommand::Close { .. } | StudioCommand::Event(_) => {}
//!         StudioCommand::Wait { until } => {
//!             // the next sweep, 10 s after the connection appeared
//!             assert_eq!(until, Some(Mono::from_secs(11)));
//!             break;
//!         }
//!     }
//! }
//! assert_eq!(
//!     sent[0].1,
//!     r#"{"type":"welcome","workerId":"w-1","serverTime":"2026-05-25T12:00:01.000Z"}"#
//! );
//! ```
//!
//! # Decisions where the protocol is silent
//!
//! | Topic | Decision |
//! |---|---|
//! | What an *attempt* is | `JobRecord::attempts` counts started runs: it grows on `accept` (or on a `completeJson`/`fail` that arrives for a still-offered job) and on a non-transient `reject`. A job is requeued while `attempts < max_attempts` (a `max_attempts` of 0 counts as 1). |
//! | `reject` code `busy`/`paused` (or, for legacy workers, a reason mentioning paused / only when idle / in-flight / busy) | Transient: requeued, no attempt spent, and the rejecting worker gets no offer until its next heartbeat (no spin). |
//! | Any other `reject` | Spends an attempt (a worker refusing a job for a reason of its own is a signal the job may be unservable; this bounds ping-pong). Same hold-until-heartbeat for the worker. |
//! | `fail` | Answered with `failAck`. `retryable` and attempts left: requeued; else `Failed`. |
//! | Offer not answered within `offer_timeout` | Requeued, no attempt spent; the worker is held until its next heartbeat. |
//! | Session ends (disconnect, close, sweep) with a job only *offered* | Requeued at once, no attempt (the offer died with the socket; a worker drops offers before `welcome`). |
//! | Session ends with a *running* job | The claim survives until `session_timeout` after the worker's last frame, so a quick reconnect keeps the job. When that passes (checked by the sweep) the job is requeued if attempts remain (the accept already spent one: a job that keeps killing its workers ends `Failed`), else `Failed`. |
//! | Liveness | Any decoded frame counts, not only heartbeats. A sweep (every `sweep_interval`) closes a session whose last frame is `>= session_timeout` old with close 1000 `session timed out` and no `error` frame. A connection that never sends `hello` is swept the same way. |
//! | Heartbeat says idle (no `currentJobId`) while the studio holds a running job for it | The first such heartbeat starts a grace (`idle_claim_grace`, 60 s: an upload may still be in flight); a heartbeat naming the job cancels it; an idle heartbeat after the grace releases the job like a lost claim. |
//! | Heartbeat names a job the studio does not attribute to this worker | If that job is still queued and this worker was its last holder, the claim is re-attached (`JobReclaimed`, no attempt). Otherwise the worker is marked busy with it and gets no offers until a heartbeat says idle or it reports that job. |
//! | `accept` / `completeJson` / `fail` / `reject` for a job never offered to this worker, or unknown | `protocol_violation` + close 4002. |
//! | The same for a job offered to this worker earlier but no longer held (timed out, re-assigned, finished) | *Stale*: ignored with a `StaleFrame` event, no ack, the session lives (an offer-timeout race must not kill a session). A stale `accept` marks the worker busy with that job. |
//! | Completion for a job that was requeued and is still queued, from its last holder | Accepted as a *late* completion (saves a regeneration); never for a job that is offered/running elsewhere, done or failed. A job completes at most once, ever. |
//! | HTTP `/complete` | 401 bad worker or token; 409 for an unknown job, a job not held by this worker, or one already finished (including a repeated upload); 200 otherwise. The kind is not checked (any job may be delivered by upload). |
//! | A second `hello` on a welcomed session, a `reject` of an accepted job | `protocol_violation`. |
//! | `readyForMore` | Ignored with an event (offers are always studio-driven; the slot bookkeeping makes a second nudge harmless anyway). |
//! | Which worker can serve a job | One that is enabled and idle, serves the job's kind (`taskKinds`; a worker without it serves every kind), advertises `vramThresholdGb` at least the job's estimate, and advertises for that kind (`supportedModelsPerKind`; a worker without per-kind lists: its flat `supportedModels`) the job's `model` or the wildcard of its `modelSource.engine`, `<engine>:*` (PROTOCOL.md §3.1). The bare `*` matches nothing. |
//! | Offer order | FIFO by submission (a requeued job keeps its place). A freed worker takes the oldest queued job it can serve; a newly queued job goes to the earliest-connected idle worker that can serve it. After every call no idle worker can serve any queued job. |
//! | Registration dedup | A repeat `register-request` with the same `installId` while its request is pending returns the same `requestId` and replaces the secret hash and capabilities (the worker may have re-minted its secret after a failed POST). Once decided, the same `installId` opens a fresh request; approving it re-uses the worker id bound to that install. |
//! | Register POST response | Always `status: "pending"` (the only value the contract shows); an auto-approved request reports `approved` on its first poll. |
//! | Register poll | 404 unknown (or its worker was deleted since), 401 wrong bearer, `approved` mints a fresh token each poll and rotates the stored hash (old token stops working for new upgrades; a live session is not cut). |
//! | Register input checks | 400 for an empty or over-long `installId` or a secret hash that is not 64 hex chars. Rate limiting by source IP is the driver's job (the core sees no addresses). |
//! | Approve / reject | 404 unknown; idempotent on the same decision; 409 on the opposite one. |
//! | Upgrade authorisation | 401 for an unknown worker, one without a token yet, or a wrong bearer. |
//! | `remove_worker` | Every socket of the worker gets `error worker_deleted` + close 4004; its job is requeued with the attempt refunded (an operator action is not the job's fault). |
//! | Tokens | `sha256_hex` of a domain tag, the seed and a counter: deterministic; the driver seeds from a real random source. Only the SHA-256 of a token is stored. |
//! | `serverTime` | RFC 3339 of the wall clock passed in (the worker only logs it). |
//! | Timers | Offer timeouts are exact deadlines; session and claim expiry are checked by the sweep, like the reference's 10 s alarm. The sweep is armed only while a connection or an orphaned claim exists, so an empty studio waits with `None`. Timers fire on `Tick` only. |
//! | Limits | Every limit is a field of [`StudioConfig`] with a named default: frame size, unfinished jobs, finished jobs kept, registration requests kept, per-worker log ring, stored log message length. Over a limit: 413/429/400 on HTTP, violation on the socket, oldest-first eviction for rings. |
//!
//! | Forgotten jobs | Beyond `max_finished_jobs` the oldest finished records are dropped; a frame that later names one is about an unknown job (violation), an upload gets 409. |
//!
//! Complexity: every frame, heartbeat, HTTP call and timer costs `O(log n)` in workers,
//! connections and jobs. The offer step uses two indexes: the queue by (kind, model key,
//! VRAM estimate), each job under two model keys (its model id and its engine), and the
//! idle workers by (kind, model key, VRAM threshold), one entry per model id or wildcard
//! they advertise, so "the oldest queued job this worker can serve" costs one range lookup
//! per (kind, model key) the worker advertises and "the earliest idle worker that can
//! serve this job" two, each visiting one bucket per distinct estimate or threshold, never
//! a scan of unservable entries.
//! Only [`Studio::check_invariants`] (for tests and the simulation) is linear, plus a
//! brute-force idle x queued cross-check that does not trust the indexes.
//!
//! # Layout
//!
//! One module per concern: `sessions` (workers, sockets, `hello`, the frames of a session,
//! stored logs), `heartbeats`, `registration`, `queue` (the job queue and the idle pool,
//! indexed by fit), `offers` (who gets which job, and the worker's answers), `jobs`
//! (submission, the upload route, every job transition), `sweeps` (timers), `invariants`;
//! `types` holds the vocabulary.

mod heartbeats;
mod invariants;
mod jobs;
mod offers;
mod queue;
mod registration;
mod sessions;
mod state;
mod sweeps;
mod types;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::time::{Mono, Now, WallMs};
use crate::wire::{self, StudioFrame};

pub use types::*;

use queue::{IdleKey, IdlePool, JobQueue};
use registration::RegRequest;
use state::{ConnRec, Workers};

/// The reference studio machine. See the module docs for the driving contract.
#[derive(Clone, Debug)]
pub struct Studio {
    cfg: StudioConfig,
    /// The latest time seen (see [`Now::after`]).
    now: Mono,
    wall: WallMs,
    out: VecDeque<StudioCommand>,
    next_sweep: Option<Mono>,

    // registration
    requests: BTreeMap<String, RegRequest>,
    request_order: BTreeMap<u64, String>,
    pending_by_install: BTreeMap<String, String>,
    install_workers: BTreeMap<String, String>,
    next_request: u64,
    next_worker: u64,
    token_counter: u64,

    // sessions
    workers: Workers,
    conns: BTreeMap<ConnId, ConnRec>,
    session_index: BTreeSet<(Mono, ConnId)>,
    orphans: BTreeSet<(Mono, String)>,
    idle: IdlePool,
    next_connect_seq: u64,
    next_conn_seq: u64,
    /// Counts assignments of worker capabilities (see [`heartbeats::HeartbeatMemo`]).
    caps_gen: u64,

    // jobs
    jobs: BTreeMap<u64, JobRecord>,
    job_index: BTreeMap<String, u64>,
    queue: JobQueue,
    offer_deadlines: BTreeSet<(Mono, u64)>,
    finished: BTreeMap<u64, u64>,
    next_job: u64,
    next_finish: u64,
    dirty_workers: BTreeSet<IdleKey>,
    dirty_jobs: BTreeSet<u64>,
}

impl Studio {
    /// A studio with `config`; tokens are minted from `config.token_seed`.
    pub fn new(config: StudioConfig) -> Studio {
        let mut cfg = config;
        if cfg.sweep_interval < MIN_SWEEP_INTERVAL {
            cfg.sweep_interval = MIN_SWEEP_INTERVAL;
        }
        Studio {
            cfg,
            now: Mono::ZERO,
            wall: WallMs(0),
            out: VecDeque::new(),
            next_sweep: None,
            requests: BTreeMap::new(),
            request_order: BTreeMap::new(),
            pending_by_install: BTreeMap::new(),
            install_workers: BTreeMap::new(),
            next_request: 0,
            next_worker: 0,
            token_counter: 0,
            workers: Workers::default(),
            conns: BTreeMap::new(),
            session_index: BTreeSet::new(),
            orphans: BTreeSet::new(),
            idle: IdlePool::default(),
            next_connect_seq: 0,
            next_conn_seq: 0,
            caps_gen: 0,
            jobs: BTreeMap::new(),
            job_index: BTreeMap::new(),
            queue: JobQueue::default(),
            offer_deadlines: BTreeSet::new(),
            finished: BTreeMap::new(),
            next_job: 0,
            next_finish: 0,
            dirty_workers: BTreeSet::new(),
            dirty_jobs: BTreeSet::new(),
        }
    }

    /// A studio whose token generator starts from `seed` (overrides `config.token_seed`).
    pub fn new_with_seed(config: StudioConfig, seed: u64) -> Studio {
        let mut s = Studio::new(config);
        s.cfg.token_seed = seed;
        s
    }

    /// Re-seeds the token generator (the counter keeps running).
    pub fn set_token_seed(&mut self, seed: u64) {
        self.cfg.token_seed = seed;
    }

    /// The configuration in use.
    pub fn config(&self) -> &StudioConfig {
        &self.cfg
    }

    /// The latest time seen.
    pub fn now(&self) -> Mono {
        self.now
    }

    /// Feeds one input. On `Err` nothing changed. Drain [`Studio::poll`] afterwards.
    pub fn handle(&mut self, now: Now, input: StudioInput) -> Result<(), UsageError> {
        self.advance(now)?;
        match input {
            StudioInput::Connected { conn, worker_id } => self.on_connected(conn, worker_id),
            StudioInput::Frame { conn, text } => self.on_frame(conn, &text),
            StudioInput::Disconnected { conn } => self.on_disconnected(conn),
            StudioInput::Tick => self.on_tick(),
        }
        self.finish();
        Ok(())
    }

    /// The next command. The last command of every drain is [`StudioCommand::Wait`]; after
    /// it, `poll` keeps returning the same `Wait` until the next call that takes `&mut self`.
    pub fn poll(&mut self) -> StudioCommand {
        match self.out.pop_front() {
            Some(cmd) => cmd,
            None => StudioCommand::Wait {
                until: self.deadline(),
            },
        }
    }

    /// The earliest timer (next sweep or offer timeout), never before the latest `now` (the
    /// same value the final `Wait` carries).
    pub fn deadline(&self) -> Option<Mono> {
        let offer = self.offer_deadlines.first().map(|(d, _)| *d);
        let at = match (self.next_sweep, offer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        at.map(|d| d.max(self.now))
    }

    /// Takes `now` as the time of a call ([`Now::after`]'s rule).
    pub(super) fn advance(&mut self, now: Now) -> Result<(), UsageError> {
        let now = now.after(Now::new(self.now, self.wall))?;
        self.now = now.mono;
        self.wall = now.wall;
        Ok(())
    }

    /// Ends every call that takes `&mut self`: offers what can be offered and arms the
    /// sweep while something needs watching.
    pub(super) fn finish(&mut self) {
        self.dispatch();
        if !self.conns.is_empty() || !self.orphans.is_empty() {
            if self.next_sweep.is_none() {
                self.next_sweep = Some(self.now + self.cfg.sweep_interval);
            }
        } else {
            self.next_sweep = None;
        }
    }

    pub(super) fn send(&mut self, conn: ConnId, frame: &StudioFrame) {
        let text = match frame {
            // One per heartbeat; the codec's own text for it, without the serialiser.
            StudioFrame::HeartbeatAck => wire::HEARTBEAT_ACK_TEXT.to_string(),
            _ => wire::encode(frame),
        };
        self.out.push_back(StudioCommand::Send { conn, text });
    }

    pub(super) fn event(&mut self, e: StudioEvent) {
        self.out.push_back(StudioCommand::Event(e));
    }

    pub(super) fn max_attempts(&self) -> u32 {
        self.cfg.max_attempts.max(1)
    }
}
