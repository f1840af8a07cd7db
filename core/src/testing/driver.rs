//! [`Driver`]: one worker machine with a clock, drained after every input.

use crate::time::{Mono, WallMs};
use crate::wire::{self, StudioFrame};
use crate::worker::{
    Command, ConnId, HttpId, HttpRequest, HttpResult, Input, JobOutcome, Now, RunId, UsageError,
    Worker, WorkerConfig,
};

use super::{welcome, WALL0};

/// A drain longer than this is a runaway: the machine emits a handful of commands per input.
pub const MAX_DRAIN: usize = 10_000;

/// Drives one [`Worker`] the way a shell does, with time passed in: every input is followed
/// by a drain to the final `Wait`. It remembers what the machine asked for last (the
/// connection, the HTTP request, the dispatched job) so a test can answer it.
///
/// [`Driver::step`] feeds and drains in one call; a caller that acts on each command as it
/// comes (the simulation, which turns commands into events without buffering them) uses
/// [`Driver::feed`] and then [`Driver::poll`] until the `Wait`.
/// Its clock and drain state come first (`repr(C)`), then the machine's own first fields
/// (see [`Worker`]): what every input reads lies in adjacent cache lines.
#[derive(Clone, Debug)]
#[repr(C)]
pub struct Driver {
    /// The clock, in microseconds from `Mono::ZERO` (the wall clock is [`WALL0`] plus it,
    /// plus `wall_offset_ms`).
    pub micros: u64,
    /// Milliseconds added to the wall clock: a wall clock may step (backwards too) where the
    /// monotonic one never does.
    pub wall_offset_ms: i64,
    /// The deadline of the `Wait` that ended the last drain.
    pub until: Option<Mono>,
    /// Commands polled since the last `Wait` (the runaway guard).
    polled: usize,
    pub worker: Worker,
    /// The connection of the last `Connect`.
    pub conn: Option<ConnId>,
    /// The last HTTP request.
    pub http: Option<(HttpId, HttpRequest)>,
    /// The job of the last `Dispatch` ...
    pub job: Option<String>,
    /// ... and its run.
    pub run: Option<RunId>,
}

impl Driver {
    /// A driver of a fresh machine built from `cfg`, at `Mono::ZERO`.
    pub fn new(cfg: WorkerConfig) -> Driver {
        Driver {
            worker: Worker::new(cfg),
            micros: 0,
            wall_offset_ms: 0,
            conn: None,
            http: None,
            job: None,
            run: None,
            until: None,
            polled: 0,
        }
    }

    /// Started, connected and welcomed.
    pub fn live(cfg: WorkerConfig) -> Driver {
        let mut d = Driver::new(cfg);
        d.step(Input::Start);
        let conn = d.conn.expect("a registered worker connects at start");
        d.step(Input::Connected { conn });
        d.frame(&welcome());
        d
    }

    /// The time the next input is fed at.
    pub fn now(&self) -> Now {
        let wall = (WALL0 + self.micros / 1000).saturating_add_signed(self.wall_offset_ms);
        Now::new(Mono(self.micros), WallMs(wall))
    }

    /// Feeds an input at [`Driver::now`] without draining: drain with [`Driver::poll`] (or
    /// [`Driver::drain`]) next, also after an `Err` (the drain is then the previous `Wait`).
    pub fn feed(&mut self, input: Input) -> Result<(), UsageError> {
        self.worker.handle(self.now(), input)
    }

    /// Feeds an input and drains to `Wait` (excluded from the commands returned).
    pub fn try_step(&mut self, input: Input) -> Result<Vec<Command>, UsageError> {
        self.feed(input)?;
        Ok(self.drain())
    }

    /// [`Driver::try_step`] for an input the machine must accept.
    pub fn step(&mut self, input: Input) -> Vec<Command> {
        self.try_step(input).expect("valid input")
    }

    /// The machine's next command, remembering the ids it carries; a `Wait` ends the drain
    /// (its deadline goes to `until`). Panics when a drain runs past [`MAX_DRAIN`] commands.
    pub fn poll(&mut self) -> Command {
        let c = self.worker.poll();
        match &c {
            Command::Wait { until } => {
                self.until = *until;
                self.polled = 0;
                return c;
            }
            Command::Connect { conn, .. } => self.conn = Some(*conn),
            Command::Http { id, request } => self.http = Some((*id, (**request).clone())),
            Command::Dispatch { run, claim } => {
                self.job = Some(claim.job_id.clone());
                self.run = Some(*run);
            }
            _ => {}
        }
        self.polled += 1;
        assert!(
            self.polled < MAX_DRAIN,
            "a drain must end in Wait: {MAX_DRAIN} commands, the last {c:?}"
        );
        c
    }

    /// Drains to the final `Wait` (excluded), remembering the ids the commands carry.
    pub fn drain(&mut self) -> Vec<Command> {
        let mut out = Vec::new();
        loop {
            match self.poll() {
                Command::Wait { .. } => return out,
                c => out.push(c),
            }
        }
    }

    /// Moves time to `secs` after the origin and ticks.
    pub fn at(&mut self, secs: f64) -> Vec<Command> {
        let target = (secs * 1e6) as u64;
        assert!(target >= self.micros, "time goes forward only");
        self.micros = target;
        self.step(Input::Tick)
    }

    /// Moves time forward by `secs` and ticks.
    pub fn advance(&mut self, secs: f64) -> Vec<Command> {
        self.micros += (secs * 1e6) as u64;
        self.step(Input::Tick)
    }

    /// Moves time to the machine's deadline and ticks (what a shell does when it wakes).
    pub fn to_deadline(&mut self) -> Vec<Command> {
        let d = self.worker.deadline().expect("a deadline is armed");
        self.micros = self.micros.max(d.0);
        self.step(Input::Tick)
    }

    /// The engine's result of the last dispatched run.
    pub fn finish(&mut self, outcome: JobOutcome) -> Vec<Command> {
        self.step(self.finished(outcome))
    }

    /// The input that reports `outcome` for the last dispatched run.
    pub fn finished(&self, outcome: JobOutcome) -> Input {
        Input::JobFinished {
            job_id: self.job.clone().expect("a dispatched job"),
            run: self.run.expect("a dispatched run"),
            outcome,
        }
    }

    /// A studio frame on the last connection.
    pub fn frame(&mut self, f: &StudioFrame) -> Vec<Command> {
        self.frame_text(&wire::encode(f))
    }

    /// A raw text frame on the last connection.
    pub fn frame_text(&mut self, text: &str) -> Vec<Command> {
        let conn = self.conn.expect("a connection");
        self.step(Input::Frame {
            conn,
            text: text.into(),
        })
    }

    /// Answers the last HTTP request with `status` and `body`.
    pub fn http_reply(&mut self, status: u16, body: &str) -> Vec<Command> {
        let (id, _) = self.http.clone().expect("an HTTP request");
        self.step(Input::Http {
            id,
            result: HttpResult::Response {
                status,
                body: body.into(),
            },
        })
    }

    /// The last connection ends without a close frame.
    pub fn disconnect(&mut self) -> Vec<Command> {
        let conn = self.conn.expect("a connection");
        self.step(Input::Disconnected {
            conn,
            code: None,
            reason: "reset".into(),
        })
    }

    /// From a dropped session: waits out the backoff, connects, is welcomed.
    pub fn reconnect(&mut self) -> Vec<Command> {
        self.to_deadline();
        let conn = self.conn.expect("a reconnect");
        self.step(Input::Connected { conn });
        self.frame(&welcome())
    }

    /// The machine's deadline in seconds from the origin.
    pub fn deadline(&self) -> Option<f64> {
        self.worker.deadline().map(|m| m.0 as f64 / 1e6)
    }
}
