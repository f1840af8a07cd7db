//! quickcheck properties of the worker machine under arbitrary input sequences with
//! arbitrary time steps: no panic, never two jobs in flight, no job dispatched while the
//! operator paused or disabled the worker, heartbeats advertising `autoEnabled` as it is,
//! queues within their caps, log sequence numbers without gaps, per-kind job counts that
//! add up, deadlines never at or before `now`, and determinism (same inputs, same outputs).

use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};
use serde_json::json;
use studio_core::testing::Driver;
use studio_core::wire::{self, LogEntry, StudioFrame, WorkerErrorCode};
use studio_core::worker::*;

/// One step of a generated session. Ids (connection, HTTP request, job) are chosen from
/// what the machine asked for, so sequences reach deep states, with a few stale ones mixed
/// in.
#[derive(Clone, Debug)]
enum Op {
    Advance(u32),
    Tick,
    Connected(bool),
    ConnectFailed(u8),
    Welcome(bool),
    Offer(u8, bool),
    HbAck(bool),
    Ack(bool),
    Error(u8),
    Garbage(u8),
    Binary,
    Disconnected(Option<u16>),
    Http(u16),
    HttpTransport,
    Minted(bool),
    Finish(u8),
    Log(u8),
    Pause,
    Resume,
    Enable,
    Disable,
    Threshold(u8),
    Presence(u8),
    Shutdown,
    UpdateChecked(u8),
    UpdateApplied(bool),
    CheckUpdateNow,
}

impl Arbitrary for Op {
    fn arbitrary(g: &mut Gen) -> Op {
        let pick = u8::arbitrary(g) % 32;
        match pick {
            0..=4 => Op::Advance(u32::arbitrary(g) % 40_000_000),
            5 => Op::Tick,
            6 => Op::Connected(bool::arbitrary(g)),
            7 => Op::ConnectFailed(u8::arbitrary(g)),
            8 => Op::Welcome(bool::arbitrary(g)),
            9 | 10 => Op::Offer(u8::arbitrary(g), bool::arbitrary(g)),
            11 | 12 => Op::HbAck(bool::arbitrary(g)),
            13 => Op::Ack(bool::arbitrary(g)),
            14 => Op::Error(u8::arbitrary(g)),
            15 => Op::Garbage(u8::arbitrary(g)),
            16 => Op::Binary,
            17 => Op::Disconnected(
                *g.choose(&[None, Some(1000), Some(4001), Some(4003)])
                    .unwrap(),
            ),
            18 => Op::Http(*g.choose(&[200, 404, 409, 500, 503]).unwrap()),
            19 => Op::HttpTransport,
            20 => Op::Minted(bool::arbitrary(g)),
            21 | 22 => Op::Finish(u8::arbitrary(g)),
            23 => Op::Log(u8::arbitrary(g)),
            24 => Op::Pause,
            25 => Op::Resume,
            26 => Op::Threshold(u8::arbitrary(g)),
            27 => Op::Presence(u8::arbitrary(g)),
            28 => {
                if u8::arbitrary(g) % 4 == 0 {
                    Op::Shutdown
                } else {
                    Op::Tick
                }
            }
            29 => match u8::arbitrary(g) % 3 {
                0 => Op::UpdateChecked(u8::arbitrary(g)),
                1 => Op::UpdateApplied(bool::arbitrary(g)),
                _ => Op::CheckUpdateNow,
            },
            30 => Op::Enable,
            _ => Op::Disable,
        }
    }
}

#[derive(Clone, Debug)]
struct Scenario {
    registered: bool,
    /// `auto_enabled` at start.
    enabled: bool,
    auto_update: bool,
    only_when_idle: bool,
    ops: Vec<Op>,
}

impl Arbitrary for Scenario {
    fn arbitrary(g: &mut Gen) -> Scenario {
        Scenario {
            registered: u8::arbitrary(g) % 4 != 0,
            enabled: u8::arbitrary(g) % 4 != 0,
            auto_update: bool::arbitrary(g),
            only_when_idle: u8::arbitrary(g) % 4 == 0,
            ops: Vec::arbitrary(g),
        }
    }

    fn shrink(&self) -> Box<dyn Iterator<Item = Scenario>> {
        let base = self.clone();
        Box::new(self.ops.shrink().map(move |ops| Scenario {
            ops,
            ..base.clone()
        }))
    }
}

const LOG_CAP: usize = 8;
const RECENT_JOBS: usize = 3;
const RECENT_LOGS: usize = 5;

fn config(s: &Scenario) -> WorkerConfig {
    let mut cfg = WorkerConfig::for_tests("http://127.0.0.1:9");
    if s.registered {
        cfg.credentials = Some(Credentials {
            worker_id: "w-1".into(),
            auth_token: "tok".into(),
        });
    }
    cfg.auto_enabled = s.enabled;
    cfg.auto_update_enabled = s.auto_update;
    cfg.only_when_idle = s.only_when_idle;
    cfg.timings.update_interval = std::time::Duration::from_secs(60);
    cfg.limits.log_queue_cap = LOG_CAP;
    cfg.limits.recent_jobs = RECENT_JOBS;
    cfg.limits.recent_logs = RECENT_LOGS;
    cfg
}

/// What a run observed.
#[derive(Debug, PartialEq)]
struct Trace {
    commands: Vec<String>,
}

#[derive(Default)]
struct Ctx {
    conn: Option<ConnId>,
    http: Vec<HttpId>,
    /// Dispatched runs neither finished nor cancelled.
    running: Vec<(String, RunId)>,
    jobs_seen: u32,
}

fn offer_text(job: &str) -> String {
    json!({"type":"offer","claim":{"jobId":job,"gameId":"g","assetName":"g/a","model":"synthetic",
        "vramGbEstimate":1.0,"task":{"kind":"image","prompt":"p"},"modelSource":{"engine":"synthetic",
        "files":[],"cliDefaults":{"cfgScale":1.0,"steps":8,"width":1024,"height":1024}}}})
    .to_string()
}

fn to_input(op: &Op, ctx: &mut Ctx) -> Option<Input> {
    let conn = |fresh: bool, ctx: &Ctx| {
        if fresh {
            ctx.conn.unwrap_or(ConnId(1))
        } else {
            ConnId(77)
        }
    };
    let c = conn(true, ctx);
    Some(match op {
        Op::Advance(_) | Op::Tick => Input::Tick,
        Op::Connected(fresh) => Input::Connected {
            conn: conn(*fresh, ctx),
        },
        Op::ConnectFailed(k) => Input::ConnectFailed {
            conn: c,
            error: match k % 3 {
                0 => ConnectError::Unauthorized { body: "x".into() },
                1 => ConnectError::Status {
                    status: 503,
                    body: "busy".into(),
                },
                _ => ConnectError::Transport("refused".into()),
            },
        },
        Op::Welcome(fresh) => Input::Frame {
            conn: conn(*fresh, ctx),
            text: wire::encode(&StudioFrame::Welcome {
                worker_id: "w-1".into(),
                server_time: "now".into(),
            }),
        },
        Op::Offer(n, repeat) => {
            let job = if *repeat {
                format!("job-{}", ctx.jobs_seen)
            } else {
                ctx.jobs_seen += 1;
                format!("job-{}-{n}", ctx.jobs_seen)
            };
            Input::Frame {
                conn: c,
                text: offer_text(&job),
            }
        }
        Op::HbAck(fresh) => Input::Frame {
            conn: conn(*fresh, ctx),
            text: r#"{"type":"heartbeatAck"}"#.into(),
        },
        Op::Ack(complete) => Input::Frame {
            conn: c,
            text: if *complete {
                r#"{"type":"completeAck","jobId":"job-1-0"}"#.into()
            } else {
                r#"{"type":"failAck","jobId":"job-x"}"#.into()
            },
        },
        Op::Error(k) => {
            let all = WorkerErrorCode::ALL;
            let code = all[*k as usize % all.len()];
            Input::Frame {
                conn: c,
                text: wire::encode(&StudioFrame::Error {
                    code,
                    message: "m".into(),
                }),
            }
        }
        Op::Garbage(k) => Input::Frame {
            conn: c,
            text: match k % 4 {
                0 => "{".into(),
                1 => r#"{"type":"wat"}"#.into(),
                2 => r#"{"type":"offer","claim":{"jobId":"j"}}"#.into(),
                _ => "x".repeat(*k as usize),
            },
        },
        Op::Binary => Input::BinaryFrame { conn: c, len: 4 },
        Op::Disconnected(code) => Input::Disconnected {
            conn: c,
            code: *code,
            reason: "r".into(),
        },
        Op::Http(status) => Input::Http {
            id: *ctx.http.last()?,
            result: HttpResult::Response {
                status: *status,
                body: match status {
                    200 if ctx.jobs_seen.is_multiple_of(2) => {
                        r#"{"requestId":"rr-1","status":"pending"}"#.into()
                    }
                    200 => r#"{"status":"approved","workerId":"w-2","authToken":"t2"}"#.into(),
                    _ => "err".into(),
                },
            },
        },
        Op::HttpTransport => Input::Http {
            id: *ctx.http.last()?,
            result: HttpResult::Transport("reset".into()),
        },
        Op::Minted(with_id) => Input::Minted {
            install_id: with_id.then(|| "install-1".into()),
            secret: "ab".repeat(32).into(),
        },
        Op::Finish(k) => {
            let (job, run) = ctx.running.first()?.clone();
            Input::JobFinished {
                job_id: job,
                run,
                outcome: match k % 3 {
                    0 => JobOutcome::Json {
                        result: json!({"n": k}),
                    },
                    1 => JobOutcome::Binary {
                        ext: "png".into(),
                        bytes_len: *k as u64,
                    },
                    _ => JobOutcome::Failed {
                        error: "e".into(),
                        retryable: k.is_multiple_of(2),
                    },
                },
            }
        }
        Op::Log(k) => Input::Log(LogEntry {
            ts: "2026-01-01T00:00:00.000Z".into(),
            level: "info".into(),
            category: "engine".into(),
            message: format!("line {k}"),
            job_id: None,
        }),
        Op::Pause => Input::Pause,
        Op::Resume => Input::Resume,
        Op::Enable => Input::Enable,
        Op::Disable => Input::Disable,
        Op::Threshold(g) => Input::SetThreshold {
            gb: *g as f32 / 4.0,
        },
        Op::Presence(p) => Input::SetPresence(match p % 3 {
            0 => None,
            1 => Some(wire::UserPresence::Idle),
            _ => Some(wire::UserPresence::Active),
        }),
        Op::Shutdown => Input::Shutdown,
        Op::CheckUpdateNow => Input::CheckUpdateNow,
        Op::UpdateChecked(k) => Input::UpdateChecked {
            result: match k % 3 {
                0 => Ok(None),
                1 => Ok(Some("9.9.9".into())),
                _ => Err("feed down".into()),
            },
        },
        Op::UpdateApplied(ok) => Input::UpdateApplied {
            result: if *ok { Ok(()) } else { Err("disk full".into()) },
        },
    })
}

/// Runs a scenario, checking the per-step invariants; returns the trace or a failure.
fn run(s: &Scenario) -> Result<Trace, String> {
    run_tampered(s, |c| vec![c])
}

/// [`run`] with every command the machine emits passed through `tamper` before the checks
/// see it (the identity for the real machine; the meta-test makes a broken one).
fn run_tampered(s: &Scenario, tamper: impl Fn(Command) -> Vec<Command>) -> Result<Trace, String> {
    let mut d = Driver::new(config(s));
    let mut ctx = Ctx::default();
    let mut trace = Trace { commands: vec![] };
    let mut inputs = vec![Input::Start];
    let mut ops = s.ops.iter();
    loop {
        for input in inputs.drain(..) {
            let now = d.now().mono;
            // Paused or disabled before the input: nothing may be dispatched in its drain
            // (neither resuming nor enabling takes an offer by itself).
            let blocked = d.worker.status().exited || !d.worker.auto_enabled();
            // Usage errors are allowed (the drain then yields only the Wait); panics, and a
            // drain that never reaches Wait (the driver's bound), are not.
            let cmds = d.try_step(input).unwrap_or_else(|_| d.drain());
            for c in cmds.into_iter().flat_map(&tamper) {
                trace.commands.push(format!("{c:?}"));
                observe(&mut ctx, &c)?;
                if blocked && matches!(c, Command::Dispatch { .. }) {
                    return Err("a job was dispatched while paused or disabled".into());
                }
                if let Some(advertised) = advertised_auto_enabled(&c) {
                    if advertised != d.worker.auto_enabled() {
                        return Err(format!(
                            "a heartbeat advertised autoEnabled={advertised}, the machine is {}",
                            d.worker.auto_enabled()
                        ));
                    }
                }
            }
            trace
                .commands
                .push(format!("Wait {{ until: {:?} }}", d.until));
            if let Some(u) = d.until {
                if u <= now {
                    return Err(format!("deadline {u} not after now {now}"));
                }
            }
            let st = d.worker.status();
            if st.log_queue_len > LOG_CAP {
                return Err(format!("log queue {} > cap {LOG_CAP}", st.log_queue_len));
            }
            if st.recent_jobs.len() > RECENT_JOBS || st.recent_logs.len() > RECENT_LOGS {
                return Err("a ring exceeded its cap".into());
            }
            let seqs: Vec<u64> = d.worker.logs_after(0).map(|(n, _)| n).collect();
            let kept = st.log_seq.min(RECENT_LOGS as u64);
            let want: Vec<u64> = (st.log_seq + 1 - kept..=st.log_seq).collect();
            if seqs != want || st.recent_logs.len() as u64 != kept {
                return Err(format!("log sequence {seqs:?}, want {want:?}"));
            }
            let by_kind: u64 = st.stats.jobs.values().map(|j| j.count()).sum();
            if by_kind + st.stats.undecodable_offers != st.stats.completed + st.stats.failed {
                return Err(format!(
                    "jobs by kind {by_kind} + undecodable offers {} != completed {} + failed {}",
                    st.stats.undecodable_offers, st.stats.completed, st.stats.failed
                ));
            }
        }
        let Some(op) = ops.next() else { break };
        if let Op::Advance(us) = op {
            d.micros += *us as u64;
        }
        if let Some(input) = to_input(op, &mut ctx) {
            if let Input::JobFinished { run, .. } = &input {
                // The shell reports each dispatched run once.
                let run = *run;
                ctx.running.retain(|(_, r)| *r != run);
            }
            inputs.push(input);
        }
    }
    Ok(trace)
}

/// The `autoEnabled` of a heartbeat the command sends, if it sends one.
fn advertised_auto_enabled(c: &Command) -> Option<bool> {
    let Command::Send { text, .. } = c else {
        return None;
    };
    match wire::decode_worker_frame(text, usize::MAX).ok()? {
        wire::WorkerFrame::Heartbeat { capabilities, .. } => Some(capabilities.auto_enabled),
        _ => None,
    }
}

/// The checks of one command, and what the shell learns from it.
fn observe(ctx: &mut Ctx, c: &Command) -> Result<(), String> {
    match c {
        Command::Connect { conn, .. } => ctx.conn = Some(*conn),
        Command::Http { id, .. } => ctx.http.push(*id),
        Command::Dispatch { run, claim } => {
            ctx.running.push((claim.job_id.clone(), *run));
            if ctx.running.len() > 1 {
                return Err(format!("two jobs in flight: {:?}", ctx.running));
            }
        }
        Command::CancelJob { job_id } => ctx.running.retain(|(j, _)| j != job_id),
        _ => {}
    }
    Ok(())
}

#[test]
fn arbitrary_sequences_keep_every_invariant() {
    fn prop(s: Scenario) -> TestResult {
        match run(&s) {
            Ok(_) => TestResult::passed(),
            Err(e) => TestResult::error(e),
        }
    }
    QuickCheck::new()
        .tests(2000)
        .rng(Gen::new(120))
        .quickcheck(prop as fn(Scenario) -> TestResult);
}

#[test]
fn same_inputs_give_the_same_outputs() {
    fn prop(s: Scenario) -> bool {
        run(&s) == run(&s)
    }
    QuickCheck::new()
        .tests(300)
        .rng(Gen::new(120))
        .quickcheck(prop as fn(Scenario) -> bool);
}

/// The property harness itself must be able to fail: a machine that dispatches every job
/// twice (the real one, each `Dispatch` repeated on its way out) is caught by the checks
/// `run` applies, on a session the real machine passes; and that session does reach
/// dispatches (the generator is not vacuous).
#[test]
fn the_two_jobs_check_can_fail() {
    let s = Scenario {
        registered: true,
        enabled: true,
        auto_update: false,
        only_when_idle: false,
        ops: vec![
            Op::Connected(true),
            Op::Welcome(true),
            Op::Offer(1, false),
            Op::Offer(2, false),
            Op::Finish(0),
            Op::Offer(3, false),
        ],
    };
    let trace = run(&s).unwrap();
    let dispatches = trace
        .commands
        .iter()
        .filter(|c| c.starts_with("Dispatch"))
        .count();
    assert_eq!(dispatches, 2);
    assert!(trace
        .commands
        .iter()
        .any(|c| c.contains("already has an in-flight job")));

    let twice = |c: Command| match c {
        Command::Dispatch { .. } => vec![c.clone(), c],
        c => vec![c],
    };
    match run_tampered(&s, twice) {
        Ok(_) => panic!("a machine that dispatches every job twice passed the checks"),
        Err(e) => assert!(e.starts_with("two jobs in flight"), "{e}"),
    }
}

/// The pause checks can fail too: a machine that, disabled, dispatches the offer it rejects
/// is caught; and one whose heartbeat says `autoEnabled: true` while disabled is caught.
#[test]
fn the_disabled_checks_can_fail() {
    let s = Scenario {
        registered: true,
        enabled: true,
        auto_update: false,
        only_when_idle: false,
        ops: vec![
            Op::Connected(true),
            Op::Welcome(true),
            Op::Disable,
            Op::Offer(1, false),
            Op::Enable,
            Op::Offer(2, false),
        ],
    };
    let trace = run(&s).unwrap();
    assert!(trace.commands.iter().any(|c| c.contains(REASON_DISABLED)));
    assert_eq!(
        trace
            .commands
            .iter()
            .filter(|c| c.starts_with("Dispatch"))
            .count(),
        1,
        "the offer after Enable is taken"
    );

    let claim = match wire::decode_studio_frame(&offer_text("sneaky")).unwrap() {
        StudioFrame::Offer { claim } => std::sync::Arc::<wire::JobOfferClaim>::from(claim),
        other => panic!("{other:?}"),
    };
    let dispatch_rejected = move |c: Command| match &c {
        Command::Send { text, .. } if text.contains(r#""type":"reject""#) => vec![
            c.clone(),
            Command::Dispatch {
                run: RunId(99),
                claim: claim.clone(),
            },
        ],
        _ => vec![c],
    };
    match run_tampered(&s, dispatch_rejected) {
        Ok(_) => panic!("a dispatch while disabled passed the checks"),
        Err(e) => assert!(e.contains("while paused or disabled"), "{e}"),
    }

    let lie = |c: Command| match &c {
        Command::Send { conn, text } if text.contains(r#""autoEnabled":false"#) => {
            vec![Command::Send {
                conn: *conn,
                text: text.replace(r#""autoEnabled":false"#, r#""autoEnabled":true"#),
            }]
        }
        _ => vec![c],
    };
    match run_tampered(&s, lie) {
        Ok(_) => panic!("a heartbeat advertising the wrong autoEnabled passed the checks"),
        Err(e) => assert!(e.contains("advertised autoEnabled=true"), "{e}"),
    }
}
