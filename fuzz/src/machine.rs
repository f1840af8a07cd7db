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
//! * no panic; every drain ends in `Wait` within [`MAX_DRAIN`] commands, a second `poll`
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

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{json, Value};
use studio_core::trace::{self, TraceHeader, TraceWriter};
use studio_core::wire::{self, LogEntry, StudioFrame, TaskKind, UserPresence, WorkerErrorCode};
use studio_core::worker::{
    Command, ConnId, ConnectError, Credentials, HttpId, HttpRequest, HttpResult, Input, JobOutcome,
    Now, RunId, UsageError, Worker, WorkerConfig,
};
use studio_core::{Mono, WallMs};

use crate::reader::Reader;

/// Most operations read from one input.
pub const MAX_OPS: usize = 512;
/// A drain longer than this is a runaway (the machine emits a handful per input).
pub const MAX_DRAIN: usize = 10_000;
/// Largest single time step, in microseconds (~19 h); with [`MAX_OPS`] steps the clock
/// stays far from `u64::MAX`.
pub const MAX_ADVANCE_US: u64 = 1 << 36;
/// Wall clock at `Mono::ZERO`.
pub const WALL0: u64 = 1_779_710_400_000;

const SMALL_LOG_CAP: usize = 8;
const SMALL_RECENT_JOBS: usize = 3;
const SMALL_RECENT_LOGS: usize = 5;

/// The opcodes, in table order (opcode byte mod [`OPS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// varint microseconds (capped at [`MAX_ADVANCE_US`]); no input.
    Advance = 0,
    /// Jump to the machine's deadline (if later) and `Tick`: what a driver does.
    ToDeadline,
    Tick,
    /// conn selector.
    Connected,
    /// conn selector, kind byte, u16 status.
    ConnectFailed,
    /// conn selector.
    Welcome,
    /// conn selector, job selector, kind byte, flags byte.
    Offer,
    /// conn selector.
    HeartbeatAck,
    /// conn selector, job selector.
    CompleteAck,
    /// conn selector, job selector.
    FailAck,
    /// conn selector, code byte.
    ErrorFrame,
    /// conn selector, byte string (the frame text).
    RawFrame,
    /// conn selector, varint length.
    BinaryFrame,
    /// conn selector, code byte (+ u16 when raw).
    Disconnected,
    /// http selector, status byte (+ u16 when raw), body byte (+ byte string when raw).
    Http,
    /// http selector.
    HttpTransport,
    /// flags byte.
    Minted,
    /// job selector, outcome byte (+ operands).
    JobFinished,
    /// level byte, byte string (message), job flag byte.
    Log,
    Pause,
    Resume,
    /// u32 (f32 bits).
    SetThreshold,
    /// byte.
    SetPresence,
    Shutdown,
    /// byte.
    UpdateChecked,
    /// byte.
    UpdateApplied,
    Start,
    /// byte string: an `Input` as serde JSON (recorded traces use it).
    InputJson,
    /// u16 as i16 seconds added to the wall clock (wall time may step backwards).
    WallSkew,
    Enable,
    Disable,
}

/// Number of opcodes.
pub const OPS: u8 = Op::Disable as u8 + 1;

impl Op {
    /// The opcode of a byte.
    pub fn from_byte(b: u8) -> Op {
        const TABLE: [Op; OPS as usize] = [
            Op::Advance,
            Op::ToDeadline,
            Op::Tick,
            Op::Connected,
            Op::ConnectFailed,
            Op::Welcome,
            Op::Offer,
            Op::HeartbeatAck,
            Op::CompleteAck,
            Op::FailAck,
            Op::ErrorFrame,
            Op::RawFrame,
            Op::BinaryFrame,
            Op::Disconnected,
            Op::Http,
            Op::HttpTransport,
            Op::Minted,
            Op::JobFinished,
            Op::Log,
            Op::Pause,
            Op::Resume,
            Op::SetThreshold,
            Op::SetPresence,
            Op::Shutdown,
            Op::UpdateChecked,
            Op::UpdateApplied,
            Op::Start,
            Op::InputJson,
            Op::WallSkew,
            Op::Enable,
            Op::Disable,
        ];
        TABLE[usize::from(b % OPS)]
    }
}

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
    worker: Worker,
    mono: u64,
    wall_skew_ms: i64,
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

fn now_of(mono: u64, skew_ms: i64) -> Now {
    let wall = (WALL0 + mono / 1000) as i64 + skew_ms;
    Now::new(Mono(mono), WallMs(wall.max(0) as u64))
}

fn offer_text(job: &str, kind_byte: u8, flags: u8) -> String {
    let kind = TaskKind::ALL[usize::from(kind_byte % 5)];
    let task = match kind {
        TaskKind::Image => json!({"kind":"image","prompt":"p","width":64,"height":64,"steps":2}),
        TaskKind::Llm => json!({"kind":"llm","messages":[{"role":"user","content":"hi"}]}),
        TaskKind::AudioStt => json!({"kind":"audio_stt","inputUrl":"https://x/a.wav"}),
        TaskKind::AudioTts => json!({"kind":"audio_tts","text":"hello"}),
        TaskKind::Video => json!({"kind":"video","prompt":"v","seconds":0.5}),
    };
    let model = match (kind_byte / 5) % 3 {
        0 => "synthetic".to_string(),
        1 => format!("synthetic-{}", kind.as_str()),
        _ => "unknown-model".to_string(),
    };
    let engine = ["synthetic", "sd-cpp", "future-engine", "synthetic"][usize::from(flags & 3)];
    let vram = [0.0, 1.0, 12.0, 100.0][usize::from((flags >> 2) & 3)];
    json!({"type":"offer","claim":{"jobId":job,"gameId":"g","assetName":"g/a","model":model,
        "vramGbEstimate":vram,"task":task,"modelSource":{"engine":engine,"files":[],
        "cliDefaults":{"cfgScale":1.0,"steps":8,"width":1024,"height":1024}}}})
    .to_string()
}

const HTTP_STATUS: [u16; 8] = [200, 201, 401, 404, 409, 410, 500, 503];
const CLOSE_CODES: [Option<u16>; 8] = [
    None,
    Some(1000),
    Some(1001),
    Some(1006),
    Some(4001),
    Some(4002),
    Some(4003),
    Some(4004),
];

/// Why redacting an input changes it (see [`Harness::redaction`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Redaction {
    /// The machine only copies or hashes the secret into masked places (or redacts it
    /// itself, as it does with peer bodies in messages): replays exactly.
    ByDesign,
    /// Any other input with a secret-like key: the documented limit of the trace format.
    Limit,
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
            let header = TraceHeader::new("fuzz", &cfg, now_of(0, 0));
            let mut text = w.header_line(&header);
            text.push('\n');
            (w, text)
        });
        Harness {
            worker: Worker::new(cfg),
            mono: 0,
            wall_skew_ms: 0,
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

    fn conn(&self, sel: u8) -> ConnId {
        let cur = self.last_conn.unwrap_or(1);
        match sel {
            0 => ConnId(cur),
            1 => ConnId(cur.saturating_sub(1)),
            n => ConnId(u64::from(n - 2)),
        }
    }

    fn http(&self, sel: u8) -> HttpId {
        match sel {
            0 => HttpId(self.last_http.unwrap_or(1)),
            1 => HttpId(self.prev_http.unwrap_or(0)),
            n => HttpId(u64::from(n - 2)),
        }
    }

    fn job(&self, sel: u8) -> String {
        let pick = |o: &Option<String>| o.clone().unwrap_or_else(|| "job-0".into());
        match sel {
            0 => self
                .running
                .clone()
                .unwrap_or_else(|| pick(&self.last_offered)),
            1 => pick(&self.last_offered),
            2 => pick(&self.last_dispatched),
            n => format!("job-{n}"),
        }
    }

    /// Decodes one operation into an input (or a time change); `None`: nothing to feed.
    fn input(&mut self, op: Op, r: &mut Reader<'_>) -> Option<Input> {
        let frame = |this: &Self, sel: u8, text: String| Input::Frame {
            conn: this.conn(sel),
            text,
        };
        Some(match op {
            Op::Advance => {
                self.mono = self.mono.saturating_add(r.varint().min(MAX_ADVANCE_US));
                return None;
            }
            Op::ToDeadline => {
                if let Some(d) = self.worker.deadline() {
                    self.mono = self.mono.max(d.0);
                }
                Input::Tick
            }
            Op::Tick => Input::Tick,
            Op::Connected => Input::Connected {
                conn: self.conn(r.u8()),
            },
            Op::ConnectFailed => {
                let conn = self.conn(r.u8());
                let kind = r.u8();
                let status = r.u16();
                let error = match kind % 4 {
                    0 => ConnectError::Unauthorized { body: "no".into() },
                    1 => ConnectError::Status {
                        status: 503,
                        body: "busy".into(),
                    },
                    2 => ConnectError::Status {
                        status,
                        body: String::new(),
                    },
                    _ => ConnectError::Transport("refused".into()),
                };
                Input::ConnectFailed { conn, error }
            }
            Op::Welcome => {
                let sel = r.u8();
                let text = wire::encode(&StudioFrame::Welcome {
                    worker_id: "w-1".into(),
                    server_time: "2026-05-25T12:00:00.000Z".into(),
                });
                frame(self, sel, text)
            }
            Op::Offer => {
                let sel = r.u8();
                let job_sel = r.u8();
                let kind = r.u8();
                let flags = r.u8();
                let job = match job_sel {
                    0 => {
                        self.offers += 1;
                        format!("job-o{}", self.offers)
                    }
                    1 => self.job(1),
                    2 => self.job(0),
                    n => format!("job-{n}"),
                };
                self.last_offered = Some(job.clone());
                frame(self, sel, offer_text(&job, kind, flags))
            }
            Op::HeartbeatAck => {
                let sel = r.u8();
                frame(self, sel, r#"{"type":"heartbeatAck"}"#.into())
            }
            Op::CompleteAck | Op::FailAck => {
                let sel = r.u8();
                let job = self.job(r.u8());
                let f = if op == Op::CompleteAck {
                    StudioFrame::CompleteAck { job_id: job }
                } else {
                    StudioFrame::FailAck { job_id: job }
                };
                frame(self, sel, wire::encode(&f))
            }
            Op::ErrorFrame => {
                let sel = r.u8();
                let all = WorkerErrorCode::ALL;
                let code = all[usize::from(r.u8()) % all.len()];
                let f = StudioFrame::Error {
                    code,
                    message: "m".into(),
                };
                frame(self, sel, wire::encode(&f))
            }
            Op::RawFrame => {
                let sel = r.u8();
                let text = r.string();
                frame(self, sel, text)
            }
            Op::BinaryFrame => {
                let conn = self.conn(r.u8());
                let len = usize::try_from(r.varint()).unwrap_or(usize::MAX);
                Input::BinaryFrame { conn, len }
            }
            Op::Disconnected => {
                let conn = self.conn(r.u8());
                let c = r.u8();
                let code = match CLOSE_CODES.get(usize::from(c)) {
                    Some(code) => *code,
                    None => Some(r.u16()),
                };
                Input::Disconnected {
                    conn,
                    code,
                    reason: "r".into(),
                }
            }
            Op::Http => {
                let id = self.http(r.u8());
                let s = r.u8();
                let status = match HTTP_STATUS.get(usize::from(s)) {
                    Some(st) => *st,
                    None => r.u16(),
                };
                let body = match r.u8() % 6 {
                    0 => r#"{"requestId":"rr-1","status":"pending"}"#.to_string(),
                    1 => r#"{"status":"approved","workerId":"w-2","authToken":"t2"}"#.to_string(),
                    2 => r#"{"status":"rejected","reason":"no"}"#.to_string(),
                    3 => r#"{"status":"pending"}"#.to_string(),
                    4 => r.string(),
                    _ => String::new(),
                };
                Input::Http {
                    id,
                    result: HttpResult::Response { status, body },
                }
            }
            Op::HttpTransport => Input::Http {
                id: self.http(r.u8()),
                result: HttpResult::Transport("reset".into()),
            },
            Op::Minted => {
                let f = r.u8();
                let install_id = match f & 3 {
                    0 => None,
                    1 => Some("install-1".to_string()),
                    _ => Some(String::new()),
                };
                let secret = if f & 4 != 0 {
                    String::new()
                } else {
                    "ab".repeat(32)
                };
                Input::Minted {
                    install_id,
                    secret: secret.into(),
                }
            }
            Op::JobFinished => {
                let job_id = self.job(r.u8());
                let k = r.u8();
                let outcome = match k % 6 {
                    0 => JobOutcome::Json {
                        result: json!({"n": k}),
                    },
                    1 => JobOutcome::Binary {
                        ext: "png".into(),
                        bytes_len: u64::from(r.u16()),
                    },
                    2 => JobOutcome::Failed {
                        error: "e".into(),
                        retryable: true,
                    },
                    3 => JobOutcome::Failed {
                        error: "e".into(),
                        retryable: false,
                    },
                    4 => JobOutcome::Binary {
                        ext: r.string(),
                        bytes_len: r.varint(),
                    },
                    _ => {
                        let raw = r.string();
                        JobOutcome::Json {
                            result: serde_json::from_str(&raw).unwrap_or(Value::String(raw)),
                        }
                    }
                };
                let run = self.run_of.get(&job_id).copied().unwrap_or_default();
                Input::JobFinished {
                    job_id,
                    run,
                    outcome,
                }
            }
            Op::Log => {
                let level = ["info", "warn", "error", "debug"][usize::from(r.u8() % 4)];
                let message = r.string();
                let job_id = (r.u8() & 1 == 1).then(|| self.job(0));
                let ts = WallMs((WALL0 as i64 + self.wall_skew_ms).max(0) as u64).to_rfc3339();
                Input::Log(LogEntry {
                    ts,
                    level: level.into(),
                    category: "engine".into(),
                    message,
                    job_id,
                })
            }
            Op::Pause => Input::Pause,
            Op::Resume => Input::Resume,
            Op::Enable => Input::Enable,
            Op::Disable => Input::Disable,
            Op::SetThreshold => Input::SetThreshold {
                gb: f32::from_bits(r.u32()),
            },
            Op::SetPresence => Input::SetPresence(match r.u8() % 3 {
                0 => None,
                1 => Some(UserPresence::Idle),
                _ => Some(UserPresence::Active),
            }),
            Op::Shutdown => Input::Shutdown,
            Op::UpdateChecked => Input::UpdateChecked {
                result: match r.u8() % 3 {
                    0 => Ok(None),
                    1 => Ok(Some("9.9.9".into())),
                    _ => Err("feed down".into()),
                },
            },
            Op::UpdateApplied => Input::UpdateApplied {
                result: if r.u8() & 1 == 0 {
                    Ok(())
                } else {
                    Err("disk full".into())
                },
            },
            Op::Start => Input::Start,
            Op::InputJson => {
                let text = r.string();
                let value = serde_json::from_str::<Value>(&text).ok()?;
                let names_a_run = value.pointer("/JobFinished/run").is_some();
                let input = serde_json::from_value::<Input>(value).ok()?;
                // An input recorded before run ids: a result names no run (`RunId(0)`); the
                // shell then fed only the run in flight, as the trace replayer assumes too.
                return Some(match input {
                    Input::JobFinished {
                        job_id,
                        run: RunId(0),
                        outcome,
                    } if !names_a_run => Input::JobFinished {
                        run: self.run_of.get(&job_id).copied().unwrap_or_default(),
                        job_id,
                        outcome,
                    },
                    other => other,
                });
            }
            Op::WallSkew => {
                self.wall_skew_ms += i64::from(r.u16() as i16) * 1000;
                return None;
            }
        })
    }

    /// Feeds one input, drains, and checks every invariant.
    fn feed(&mut self, input: Input) -> Result<(), String> {
        self.step += 1;
        let now = now_of(self.mono, self.wall_skew_ms);
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
        let before = refused.then(|| format!("{:?}", self.worker));
        let result = self.worker.handle(now, input.clone());
        if let Err(e) = &result {
            if let Some(before) = before {
                if format!("{:?}", self.worker) != before {
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
        let mut cmds = Vec::new();
        loop {
            if cmds.len() >= MAX_DRAIN {
                return Err(format!(
                    "{}: drain did not reach Wait in {MAX_DRAIN} commands",
                    ctx()
                ));
            }
            let c = self.worker.poll();
            let done = matches!(c, Command::Wait { .. });
            cmds.push(c);
            if done {
                break;
            }
        }
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

    /// Why redacting `input` changes it (called only when it does).
    fn redaction(&self, input: &Input) -> Redaction {
        match input {
            Input::Minted { .. } => Redaction::ByDesign,
            // An approved registration status: the token goes into `Persist` and
            // `Connect`, both masked.
            Input::Http {
                id,
                result: HttpResult::Response { status, .. },
            } if (200..300).contains(status) && self.poll_ids.contains(&id.0) => {
                Redaction::ByDesign
            }
            // Any other body (an error, an upgrade failure): the machine redacts it before
            // clipping it into notices and `fail` errors, so only masked text reaches them.
            Input::Http { .. } | Input::ConnectFailed { .. } => Redaction::ByDesign,
            _ => Redaction::Limit,
        }
    }

    fn check_result(&self, input: &Input, result: &Result<(), UsageError>) -> Result<(), String> {
        match (input, result) {
            (_, Err(UsageError::TimeWentBackwards { .. })) => {
                Err("TimeWentBackwards although time only moved forward".into())
            }
            (Input::JobFinished { job_id, .. }, Err(UsageError::UnknownJob(_))) => {
                if self.running.as_ref() == Some(job_id) && !self.exited {
                    Err(format!(
                        "JobFinished for {job_id}, dispatched and never cancelled, was refused: \
                         the machine forgot a running job without CancelJob"
                    ))
                } else {
                    Ok(())
                }
            }
            (Input::JobFinished { job_id, run, .. }, Ok(()))
                if self.running.as_ref() != Some(job_id) && self.cancelled != Some(*run) =>
            {
                Err(format!(
                    "JobFinished for {job_id} ({run}) accepted, but the shell is not running it \
                     (never dispatched or already finished) and the machine did not cancel it"
                ))
            }
            (Input::SetThreshold { gb }, r) => {
                let valid = gb.is_finite() && *gb >= 0.0;
                match (valid, r) {
                    (true, Err(e)) => Err(format!("valid threshold {gb} refused: {e:?}")),
                    (false, Ok(())) => Err(format!("invalid threshold {gb} accepted")),
                    _ => Ok(()),
                }
            }
            (Input::Minted { secret, .. }, Err(UsageError::EmptySecret)) if secret.is_empty() => {
                Ok(())
            }
            (Input::Minted { secret, .. }, Ok(())) if secret.is_empty() => {
                Err("an empty minted secret was accepted".into())
            }
            (_, Ok(())) => Ok(()),
            (_, Err(e)) => Err(format!("unexpected usage error {e:?}")),
        }
    }

    /// What the shell learns from feeding an input the machine accepted.
    fn shell_view_of_input(&mut self, input: &Input) {
        match input {
            Input::Connected { conn } if self.open.contains(&conn.0) => {
                self.connected.insert(conn.0);
            }
            // A failure report for a connection already upgraded is a driver mistake the
            // machine ignores (the fuzzer sends it anyway); a real shell still has it open.
            Input::ConnectFailed { conn, .. } if !self.connected.contains(&conn.0) => {
                self.open.remove(&conn.0);
            }
            Input::Disconnected { conn, .. } => {
                self.open.remove(&conn.0);
                self.connected.remove(&conn.0);
            }
            Input::JobFinished { job_id, .. } if self.running.as_ref() == Some(job_id) => {
                self.running = None;
            }
            _ => {}
        }
    }

    fn check_drain(&mut self, now: Now, cmds: &[Command], refused: bool) -> Result<(), String> {
        let (last, body) = cmds.split_last().expect("a drain has at least its Wait");
        let Command::Wait { until } = last else {
            return Err("the drain does not end in Wait".into());
        };
        if self.exited {
            if !body.is_empty() || until.is_some() {
                return Err("commands after Exit".into());
            }
            return Ok(());
        }
        if refused {
            // "On Err nothing changed": the drain is the previous drain's Wait again. Its
            // deadline may have passed meanwhile (the refused input ran no timer), so the
            // after-now check applies to accepted inputs only.
            if !body.is_empty() || Some(last) != self.last_wait.as_ref() {
                return Err(format!(
                    "a refused input changed the drain: previous Wait {:?}",
                    self.last_wait
                ));
            }
            return Ok(());
        }
        self.last_wait = Some(last.clone());
        if let Some(u) = until {
            if *u <= now.mono {
                return Err(format!("deadline {u} is not after now {}", now.mono));
            }
        }
        if *until != self.worker.deadline() {
            return Err(format!(
                "Wait {{ until: {until:?} }} but deadline() = {:?}",
                self.worker.deadline()
            ));
        }
        let again = self.worker.poll();
        if again != *last {
            return Err(format!("a second poll gave {again:?}, not the same Wait"));
        }
        for (i, c) in body.iter().enumerate() {
            match c {
                Command::Connect { conn, .. } => {
                    if self.last_conn.is_some_and(|l| conn.0 <= l) {
                        return Err(format!("Connect {conn} does not increase the conn id"));
                    }
                    if let Some(open) = self.open.first() {
                        return Err(format!(
                            "Connect {conn} while conn#{open} is still open (two connections)"
                        ));
                    }
                    self.last_conn = Some(conn.0);
                    self.open.insert(conn.0);
                }
                Command::Close { conn, .. } => {
                    self.open.remove(&conn.0);
                    self.connected.remove(&conn.0);
                }
                Command::Send { conn, text } => {
                    if !self.connected.contains(&conn.0) {
                        return Err(format!(
                            "Send on {conn}, which is not an open, connected connection"
                        ));
                    }
                    if let Err(e) = wire::decode_worker_frame(text, wire::MAX_FRAME_BYTES) {
                        return Err(format!("sent a frame the studio cannot decode: {e}"));
                    }
                }
                Command::Http { id, request } => {
                    if self.last_http.is_some_and(|l| id.0 <= l) {
                        return Err(format!("HTTP id {} does not increase", id.0));
                    }
                    if matches!(**request, HttpRequest::PollRegistration { .. }) {
                        self.poll_ids.insert(id.0);
                    }
                    self.prev_http = self.last_http;
                    self.last_http = Some(id.0);
                }
                Command::Dispatch { run, claim } => {
                    if let Some(r) = &self.running {
                        return Err(format!(
                            "Dispatch {} while {r} is still running (two jobs)",
                            claim.job_id
                        ));
                    }
                    self.running = Some(claim.job_id.clone());
                    self.last_dispatched = Some(claim.job_id.clone());
                    self.run_of.insert(claim.job_id.clone(), *run);
                }
                Command::ApplyUpdate { version } => {
                    if let Some(r) = &self.running {
                        return Err(format!("ApplyUpdate {version} while {r} is running"));
                    }
                }
                Command::CancelJob { job_id } if self.running.as_ref() == Some(job_id) => {
                    self.cancelled = self.run_of.get(job_id).copied();
                    self.running = None;
                }
                Command::Exit { .. } => {
                    if i + 1 != body.len() {
                        return Err("Exit is not the last command before Wait".into());
                    }
                    if until.is_some() {
                        return Err("Wait after Exit has a deadline".into());
                    }
                    self.exited = true;
                }
                Command::Wait { .. } => return Err("Wait in the middle of a drain".into()),
                _ => {}
            }
        }
        Ok(())
    }

    fn check_status(&self) -> Result<(), String> {
        let st = self.worker.status();
        if let Some((log, jobs, logs)) = self.caps {
            if st.log_queue_len > log {
                return Err(format!("log queue {} > cap {log}", st.log_queue_len));
            }
            if st.recent_jobs.len() > jobs || st.recent_logs.len() > logs {
                return Err(format!(
                    "a ring exceeded its cap: recent jobs {} (cap {jobs}), recent logs {} (cap {logs})",
                    st.recent_jobs.len(),
                    st.recent_logs.len()
                ));
            }
        }
        if let Some(r) = &self.running {
            if !self.exited && st.current_job_id.as_ref() != Some(r) {
                return Err(format!(
                    "the shell runs {r} but status() names {:?}",
                    st.current_job_id
                ));
            }
        }
        if st.exited != self.exited {
            return Err(format!(
                "status().exited = {} but Exit {} emitted",
                st.exited,
                if self.exited { "was" } else { "was not" }
            ));
        }
        Ok(())
    }

    fn check_replay(&self) -> Result<(), String> {
        let Some((_, text)) = &self.recording else {
            return Ok(());
        };
        if !self.replay_safe {
            return Ok(());
        }
        match trace::replay(text) {
            Err(e) => Err(format!("the recorded trace does not parse: {e}\n{text}")),
            Ok(report) if !report.is_ok() => Err(format!(
                "the recorded trace does not replay: {report}\n{text}"
            )),
            Ok(_) => Ok(()),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reader::put_varint;

    fn session() -> Vec<u8> {
        // registered, small caps; connect, welcome, offer, finish, ack, shutdown.
        let mut v = vec![0, 0, 1];
        v.extend([Op::Connected as u8, 0, Op::Welcome as u8, 0]);
        v.extend([Op::Offer as u8, 0, 0, 1, 0]);
        v.extend([Op::JobFinished as u8, 0, 0]);
        v.extend([Op::CompleteAck as u8, 0, 0]);
        v.push(Op::Advance as u8);
        put_varint(&mut v, 6_000_000);
        v.extend([
            Op::ToDeadline as u8,
            Op::Shutdown as u8,
            Op::ToDeadline as u8,
        ]);
        v
    }

    #[test]
    fn a_plain_session_passes_and_is_not_vacuous() {
        let data = session();
        check(&data).unwrap();
        // Recorded and replayed too.
        let mut rec = data.clone();
        rec[0] |= 0x80;
        check(&rec).unwrap();
        // The session really dispatched a job.
        let mut h = Harness::new(config(0, 0, 1), false);
        h.feed(Input::Start).unwrap();
        let mut r = Reader::new(&data[3..]);
        while !r.is_empty() {
            let op = Op::from_byte(r.u8());
            if let Some(i) = h.input(op, &mut r) {
                h.feed(i).unwrap();
            }
        }
        assert_eq!(h.last_dispatched.as_deref(), Some("job-o1"));
        assert!(h.exited);
    }

    #[test]
    fn every_byte_string_is_an_input() {
        for data in [&[][..], &[0xff; 64], &[0x80, 0xff, 0, 27, 200, 1, 2, 3]] {
            check(data).unwrap();
        }
    }

    #[test]
    fn the_drain_checks_can_fail() {
        let mut h = Harness::new(config(0, 0, 1), false);
        let now = now_of(5, 0);
        // A deadline in the past.
        let past = [Command::Wait {
            until: Some(Mono(5)),
        }];
        assert!(h.check_drain(now, &past, false).is_err());
        // Two dispatches.
        let claim: wire::JobOfferClaim = match wire::decode_studio_frame(&offer_text("j", 0, 0)) {
            Ok(StudioFrame::Offer { claim }) => *claim,
            other => panic!("{other:?}"),
        };
        h.running = Some("other".into());
        let two = [
            Command::Dispatch {
                run: RunId(1),
                claim: Box::new(claim),
            },
            Command::Wait { until: None },
        ];
        assert!(h
            .check_drain(now, &two, false)
            .unwrap_err()
            .contains("two jobs"));
        // A second connection while one is open.
        h.running = None;
        h.open.insert(1);
        let connect = [
            Command::Connect {
                conn: ConnId(2),
                url: "ws://x".into(),
                auth_token: "t".into(),
            },
            Command::Wait { until: None },
        ];
        assert!(h.check_drain(now, &connect, false).is_err());
        // A frame on a connection that was never connected.
        let send = [
            Command::Send {
                conn: ConnId(9),
                text: "{}".into(),
            },
            Command::Wait { until: None },
        ];
        assert!(h.check_drain(now, &send, false).is_err());
    }

    /// Feeds a committed seed (after its three header bytes) to `h`.
    fn feed_seed(h: &mut Harness, data: &[u8]) {
        let mut r = Reader::new(data);
        while !r.is_empty() {
            let op = Op::from_byte(r.u8());
            if let Some(i) = h.input(op, &mut r) {
                h.feed(i).unwrap();
            }
        }
    }

    fn seed(name: &str) -> Vec<u8> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus/worker_machine");
        std::fs::read(format!("{dir}/{name}")).unwrap()
    }

    /// Regression: a refused non-finite threshold is recorded as a string that parses
    /// back to the same value, and the session replays (the committed seed is one NaN).
    #[test]
    fn regression_a_non_finite_threshold_is_recorded_and_replays() {
        let data = seed("regression-nan-threshold-recorded.bin");
        assert_eq!(data[0] & 0x80, 0x80, "the seed records and replays");
        check(&data).unwrap();
        for (gb, text) in [
            (f32::NAN, "\"NaN\""),
            (f32::INFINITY, "\"inf\""),
            (f32::NEG_INFINITY, "\"-inf\""),
        ] {
            let mut h = Harness::new(config(0, 0, 1), true);
            h.feed(Input::Start).unwrap();
            h.feed(Input::SetThreshold { gb }).unwrap();
            assert!(h.replay_safe);
            let recorded = &h.recording.as_ref().unwrap().1;
            assert!(recorded.contains(&format!("\"gb\":{text}")), "{recorded}");
            let parsed = trace::parse(recorded).unwrap_or_else(|e| panic!("{e}\n{recorded}"));
            assert!(
                format!("{parsed:?}").contains(&format!("{gb:?}")),
                "{parsed:?}"
            );
            h.check_replay().unwrap();
        }
    }

    /// Regression: an upload answered 500 with a body holding `"authToken":"..."` no
    /// longer leaks the token into the machine's commands, and the recorded session (the
    /// committed seed) replays from its redacted trace.
    #[test]
    fn regression_an_error_body_is_redacted_before_it_is_echoed() {
        let data = seed("regression-upload-error-body-echoed.bin");
        assert_eq!(data[0] & 0x80, 0x80, "the seed records and replays");
        let mut h = Harness::new(config(data[0], data[1], data[2]), true);
        h.feed(Input::Start).unwrap();
        feed_seed(&mut h, &data[3..]);
        assert!(h.replay_safe);
        let recorded = &h.recording.as_ref().unwrap().1;
        assert!(
            recorded.contains("authToken"),
            "the seed's body has a token: {recorded}"
        );
        h.check_replay().unwrap();
        check(&data).unwrap();

        let mut h = Harness::new(config(0, 0, 1), true);
        h.feed(Input::Start).unwrap();
        feed_seed(&mut h, &[3, 0, 5, 0, 6, 0, 0, 0, 0, 17, 0, 1, 0, 1]);
        let body = r#"{"status":"approved","workerId":"w-2","authToken":"SECRETTOKEN"}"#;
        // Padded so that the clip (after `UPGRADE_BODY_CLIP` characters) falls inside the
        // token: clipping first would cut its closing quote and hide it from redaction.
        let cut_inside = studio_core::worker::UPGRADE_BODY_CLIP - body.find("SECRET").unwrap() - 6;
        for result in [
            HttpResult::Response {
                status: 500,
                body: body.into(),
            },
            HttpResult::Response {
                status: 503,
                body: format!("{}{body}", " ".repeat(cut_inside)),
            },
        ] {
            let failed = Input::Http {
                id: HttpId(1),
                result,
            };
            assert_eq!(h.redaction(&failed), Redaction::ByDesign);
            let (cmds, _) = trace::step(&mut h.worker.clone(), now_of(0, 0), failed);
            assert!(
                !cmds.iter().any(|c| format!("{c:?}").contains("SECRET")),
                "{cmds:?}"
            );
        }
    }

    /// Every committed seed passes, and the seeds made from recorded traces are not
    /// vacuous: the "every kind" recording dispatches a job of every kind (six in all).
    #[test]
    fn the_committed_seeds_pass_and_reach_deep_states() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus/worker_machine");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            check(&data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
        assert!(n >= 10, "{n} seeds");
        let data = std::fs::read(format!(
            "{dir}/trace-sync-every_kind_completes_with_real_output.bin"
        ))
        .unwrap();
        let mut h = Harness::new(config(data[0], data[1], data[2]), false);
        h.feed(Input::Start).unwrap();
        let mut r = Reader::new(&data[3..]);
        let mut dispatched = BTreeSet::new();
        while !r.is_empty() {
            let op = Op::from_byte(r.u8());
            if let Some(i) = h.input(op, &mut r) {
                h.feed(i).unwrap();
                dispatched.extend(h.last_dispatched.clone());
            }
        }
        assert!(dispatched.len() >= 5, "{dispatched:?}");
    }

    #[test]
    fn a_refused_input_may_repeat_a_past_deadline_but_nothing_else() {
        let mut h = Harness::new(config(0, 0, 1), false);
        h.feed(Input::Start).unwrap();
        // The connect timeout (15 s) has passed; a refused input runs no timer.
        h.mono = 20_000_000;
        h.feed(Input::SetThreshold { gb: -1.0 }).unwrap();
        let stale = h.last_wait.clone().unwrap();
        let now = now_of(h.mono, 0);
        assert!(h
            .check_drain(now, std::slice::from_ref(&stale), true)
            .is_ok());
        assert!(h
            .check_drain(now, std::slice::from_ref(&stale), false)
            .is_err());
        let changed = [Command::CheckUpdate, stale];
        assert!(h.check_drain(now, &changed, true).is_err());
    }

    #[test]
    fn the_usage_error_checks_can_fail() {
        let h = Harness::new(config(0, 0, 1), false);
        let bad = Input::SetThreshold { gb: f32::NAN };
        assert!(h.check_result(&bad, &Ok(())).is_err());
        let good = Input::SetThreshold { gb: 1.0 };
        assert!(h
            .check_result(&good, &Err(UsageError::InvalidThreshold(1.0)))
            .is_err());
        assert!(h
            .check_result(
                &Input::Tick,
                &Err(UsageError::TimeWentBackwards {
                    last: Mono(2),
                    now: Mono(1)
                })
            )
            .is_err());
    }
}
