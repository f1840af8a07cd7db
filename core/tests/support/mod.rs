//! The harness the worker machine's integration tests share: drives a `Worker` with time
//! passed in, drains every command, and remembers the last connection, HTTP request and
//! dispatched job so a test can answer them.
#![allow(dead_code)] // each test file uses a different part

use serde_json::{json, Value};
use studio_core::wire::{self, StudioFrame, WorkerFrame};
use studio_core::worker::*;
use studio_core::{Mono, WallMs};

/// Wall clock at `Mono::ZERO`: 2026-05-25T12:00:00Z.
pub const WALL0: u64 = 1_779_710_400_000;

pub struct H {
    pub w: Worker,
    /// Microseconds.
    pub t: u64,
    pub conn: Option<ConnId>,
    pub http: Option<(HttpId, HttpRequest)>,
    pub job: Option<String>,
}

impl H {
    pub fn new(cfg: WorkerConfig) -> H {
        H {
            w: Worker::new(cfg),
            t: 0,
            conn: None,
            http: None,
            job: None,
        }
    }

    /// Started, connected and welcomed.
    pub fn live(cfg: WorkerConfig) -> H {
        let mut h = H::new(cfg);
        h.step(Input::Start);
        let conn = h.conn.unwrap();
        h.step(Input::Connected { conn });
        h.frame(&welcome());
        h
    }

    pub fn now(&self) -> Now {
        Now::new(Mono(self.t), WallMs(WALL0 + self.t / 1000))
    }

    /// Feeds an input and drains to `Wait`.
    pub fn try_step(&mut self, input: Input) -> Result<Vec<Command>, UsageError> {
        self.w.handle(self.now(), input)?;
        Ok(self.drain())
    }

    pub fn step(&mut self, input: Input) -> Vec<Command> {
        self.try_step(input).expect("valid input")
    }

    pub fn drain(&mut self) -> Vec<Command> {
        let mut out = Vec::new();
        loop {
            let c = self.w.poll();
            match &c {
                Command::Wait { .. } => break,
                Command::Connect { conn, .. } => self.conn = Some(*conn),
                Command::Http { id, request } => self.http = Some((*id, (**request).clone())),
                Command::Dispatch { claim } => self.job = Some(claim.job_id.clone()),
                _ => {}
            }
            out.push(c);
        }
        out
    }

    /// Moves time to `secs` after the origin and ticks.
    pub fn at(&mut self, secs: f64) -> Vec<Command> {
        let target = (secs * 1e6) as u64;
        assert!(target >= self.t, "time goes forward only");
        self.t = target;
        self.step(Input::Tick)
    }

    /// Moves time forward by `secs` and ticks.
    pub fn advance(&mut self, secs: f64) -> Vec<Command> {
        self.t += (secs * 1e6) as u64;
        self.step(Input::Tick)
    }

    pub fn frame(&mut self, f: &StudioFrame) -> Vec<Command> {
        self.frame_text(&wire::encode(f))
    }

    pub fn frame_text(&mut self, text: &str) -> Vec<Command> {
        let conn = self.conn.unwrap();
        self.step(Input::Frame {
            conn,
            text: text.into(),
        })
    }

    pub fn http_reply(&mut self, status: u16, body: &str) -> Vec<Command> {
        let (id, _) = self.http.clone().unwrap();
        self.step(Input::Http {
            id,
            result: HttpResult::Response {
                status,
                body: body.into(),
            },
        })
    }

    pub fn disconnect(&mut self) -> Vec<Command> {
        let conn = self.conn.unwrap();
        self.step(Input::Disconnected {
            conn,
            code: None,
            reason: "reset".into(),
        })
    }

    /// From a dropped session: waits out the backoff, connects, is welcomed.
    pub fn reconnect(&mut self) -> Vec<Command> {
        let d = self.w.deadline().unwrap();
        self.t = d.0;
        self.step(Input::Tick);
        let conn = self.conn.unwrap();
        self.step(Input::Connected { conn });
        self.frame(&welcome())
    }

    /// The deadline in seconds.
    pub fn deadline(&self) -> Option<f64> {
        self.w.deadline().map(|m| m.0 as f64 / 1e6)
    }
}

pub fn registered() -> WorkerConfig {
    let mut cfg = WorkerConfig::for_tests("http://127.0.0.1:9");
    cfg.credentials = Some(Credentials {
        worker_id: "w-1".into(),
        auth_token: "tok-1".into(),
    });
    cfg
}

pub fn welcome() -> StudioFrame {
    StudioFrame::Welcome {
        worker_id: "w-1".into(),
        server_time: "2026-05-25T12:00:00Z".into(),
    }
}

/// An offer for the synthetic engine with the given task JSON.
pub fn offer(job: &str, task: Value) -> StudioFrame {
    let text = json!({"type":"offer","claim":{"jobId":job,"gameId":"g","assetName":"g/a","model":"synthetic",
        "vramGbEstimate":1.0,"task":task,"modelSource":{"engine":"synthetic","files":[],
        "cliDefaults":{"cfgScale":1.0,"steps":8,"width":1024,"height":1024}}}})
    .to_string();
    wire::decode_studio_frame(&text).unwrap()
}

pub fn llm_task() -> Value {
    json!({"kind":"llm","messages":[{"role":"user","content":"x"}]})
}

pub fn log_entry(message: &str) -> wire::LogEntry {
    wire::LogEntry {
        ts: "2026-05-25T12:00:00.000Z".into(),
        level: "info".into(),
        category: "engine".into(),
        message: message.into(),
        job_id: None,
    }
}

/// The frames among the commands, decoded.
pub fn frames(cmds: &[Command]) -> Vec<WorkerFrame> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Send { text, .. } => Some(
                wire::decode_worker_frame(text, usize::MAX).expect("the worker sends valid frames"),
            ),
            _ => None,
        })
        .collect()
}

/// The `type` of each frame sent.
pub fn types(cmds: &[Command]) -> Vec<&'static str> {
    frames(cmds).iter().map(|f| f.type_name()).collect()
}

pub fn exit_of(cmds: &[Command]) -> Option<(ExitCode, String)> {
    cmds.iter().find_map(|c| match c {
        Command::Exit { code, reason } => Some((*code, reason.clone())),
        _ => None,
    })
}
