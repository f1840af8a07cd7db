//! The opcode table of the `worker_machine` input format and the decoding of one
//! operation into an input for the machine.

use serde_json::{json, Value};
use studio_core::wire::{self, LogEntry, StudioFrame, TaskKind, UserPresence, WorkerErrorCode};
use studio_core::worker::{ConnId, ConnectError, HttpId, HttpResult, Input, JobOutcome, RunId};
use studio_core::WallMs;

use super::{Harness, MAX_ADVANCE_US, WALL0};
use crate::reader::Reader;

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
    CheckUpdateNow,
}

/// Number of opcodes.
pub const OPS: u8 = Op::CheckUpdateNow as u8 + 1;

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
            Op::CheckUpdateNow,
        ];
        TABLE[usize::from(b % OPS)]
    }
}

pub(super) fn offer_text(job: &str, kind_byte: u8, flags: u8) -> String {
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

impl Harness {
    pub(super) fn conn(&self, sel: u8) -> ConnId {
        let cur = self.last_conn.unwrap_or(1);
        match sel {
            0 => ConnId(cur),
            1 => ConnId(cur.saturating_sub(1)),
            n => ConnId(u64::from(n - 2)),
        }
    }

    pub(super) fn http(&self, sel: u8) -> HttpId {
        match sel {
            0 => HttpId(self.last_http.unwrap_or(1)),
            1 => HttpId(self.prev_http.unwrap_or(0)),
            n => HttpId(u64::from(n - 2)),
        }
    }

    pub(super) fn job(&self, sel: u8) -> String {
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
    pub(super) fn input(&mut self, op: Op, r: &mut Reader<'_>) -> Option<Input> {
        let frame = |this: &Self, sel: u8, text: String| Input::Frame {
            conn: this.conn(sel),
            text,
        };
        Some(match op {
            Op::Advance => {
                let d = &mut self.driver;
                d.micros = d.micros.saturating_add(r.varint().min(MAX_ADVANCE_US));
                return None;
            }
            Op::ToDeadline => {
                if let Some(d) = self.driver.worker.deadline() {
                    self.driver.micros = self.driver.micros.max(d.0);
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
                let ts =
                    WallMs(WALL0.saturating_add_signed(self.driver.wall_offset_ms)).to_rfc3339();
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
            Op::CheckUpdateNow => Input::CheckUpdateNow,
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
                self.driver.wall_offset_ms += i64::from(r.u16() as i16) * 1000;
                return None;
            }
        })
    }
}
