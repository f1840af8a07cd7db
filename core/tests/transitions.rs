//! The worker machine's transition table, tested row by row.
//!
//! `TABLE` lists what every (state x input) pair must do. The states are the core's
//! [`Phase`]s: each row reaches its state, asserts it with `Worker::phase()`, feeds the
//! input and checks the outcome (and the phase where the outcome names one). `every_pair_has_a_row` fails when
//! a state or input is added without rows for it, and `docs_table_is_current` fails when
//! `core/TRANSITIONS.md` no longer matches the table (regenerate it with
//! `UPDATE_TRANSITIONS=1 cargo test -p studio-core --test transitions`).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use rstest::rstest;
use serde_json::json;
use studio_core::wire::{self, RejectCode, StudioFrame, WorkerFrame};
use studio_core::worker::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum In {
    Start,
    Tick,
    Connected,
    ConnectFail401,
    ConnectFailNet,
    Welcome,
    Offer,
    HbAck,
    CompleteAck,
    ErrAuth,
    ErrDuplicate,
    Garbage,
    Binary,
    Close4001,
    Close1000,
    HttpOk,
    Http404,
    Http500,
    Minted,
    DoneJson,
    DoneBinary,
    DoneFail,
    Log,
    Pause,
    Resume,
    Enable,
    Disable,
    Threshold,
    Shutdown,
    CheckNow,
    UpdateAvailable,
    UpdateApplied,
}

impl In {
    const ALL: [In; 32] = [
        In::Start,
        In::Tick,
        In::Connected,
        In::ConnectFail401,
        In::ConnectFailNet,
        In::Welcome,
        In::Offer,
        In::HbAck,
        In::CompleteAck,
        In::ErrAuth,
        In::ErrDuplicate,
        In::Garbage,
        In::Binary,
        In::Close4001,
        In::Close1000,
        In::HttpOk,
        In::Http404,
        In::Http500,
        In::Minted,
        In::DoneJson,
        In::DoneBinary,
        In::DoneFail,
        In::Log,
        In::Pause,
        In::Resume,
        In::Enable,
        In::Disable,
        In::Threshold,
        In::Shutdown,
        In::CheckNow,
        In::UpdateAvailable,
        In::UpdateApplied,
    ];
}

/// What a row demands. Every expectation also checks that no frame other than the named
/// ones went out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ex {
    /// No IO command at all (Report/Wait only) and the session state is unchanged.
    Ignored,
    /// No IO command; internal state may change (checked by scenario tests).
    Quiet,
    /// `handle` returns a UsageError.
    Usage,
    /// `MintSecret`.
    Mint,
    /// An HTTP request of this kind.
    Http(HttpKind),
    /// A `Connect`.
    Connect,
    /// `hello` sent.
    Hello,
    /// `heartbeat` sent.
    Heartbeat,
    /// `accept` sent and the job dispatched.
    Accept,
    /// `reject` with this code.
    Reject(RejectCode),
    /// This frame sent (by `type`).
    Sends(&'static str),
    /// Reconnect scheduled (state `reconnecting`), with a Close if a connection was open.
    Reconnect,
    /// Process exit with this code.
    Exit(ExitCode),
    /// Close 1000 + Exit(Clean), after flushing.
    CleanExit,
    /// `CheckUpdate` issued (an update check).
    Check,
    /// `ApplyUpdate` issued.
    ApplyUpdate,
    /// Upload succeeded: the result bytes are discarded and the slot is free.
    Uploaded,
    /// A connection the machine abandoned finished late: it is closed, nothing else.
    CloseStale,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HttpKind {
    Register,
    Upload,
}

use Ex::*;
use In::*;
use Phase::*;

macro_rules! rows {
    ($($st:ident : { $($inp:ident => $ex:expr),* $(,)? })*) => {
        &[ $( $( ($st, $inp, $ex), )* )* ]
    };
}

/// The table. Read a row as: in state S, input I must do E.
const TABLE: &[(Phase, In, Ex)] = rows! {
    NotStarted: {
        Start => Connect, Tick => Ignored, Connected => Ignored, ConnectFail401 => Ignored,
        ConnectFailNet => Ignored, Welcome => Ignored, Offer => Ignored, HbAck => Ignored,
        CompleteAck => Ignored, ErrAuth => Ignored, ErrDuplicate => Ignored, Garbage => Ignored,
        Binary => Ignored, Close4001 => Ignored, Close1000 => Ignored, HttpOk => Ignored,
        Http404 => Ignored, Http500 => Ignored, Minted => Ignored,
        DoneJson => Usage, DoneBinary => Usage, DoneFail => Usage, Log => Quiet, Pause => Quiet,
        Resume => Ignored, Threshold => Quiet, Shutdown => Exit(ExitCode::Clean),
        UpdateAvailable => Ignored, CheckNow => Ignored, UpdateApplied => Ignored,
        Enable => Ignored, Disable => Quiet,
    }
    Minting: {
        Start => Ignored, Tick => Ignored, Connected => Ignored, ConnectFail401 => Ignored,
        ConnectFailNet => Ignored, Welcome => Ignored, Offer => Ignored, HbAck => Ignored,
        CompleteAck => Ignored, ErrAuth => Ignored, ErrDuplicate => Ignored, Garbage => Ignored,
        Binary => Ignored, Close4001 => Ignored, Close1000 => Ignored, HttpOk => Ignored,
        Http404 => Ignored, Http500 => Ignored, Minted => Http(HttpKind::Register),
        DoneJson => Usage, DoneBinary => Usage, DoneFail => Usage, Log => Quiet, Pause => Quiet,
        Resume => Ignored, Threshold => Quiet, Shutdown => Exit(ExitCode::Clean),
        UpdateAvailable => Ignored, CheckNow => Check, UpdateApplied => Ignored,
        Enable => Ignored, Disable => Quiet,
    }
    Requesting: {
        Start => Ignored, Tick => Ignored, Connected => Ignored, ConnectFail401 => Ignored,
        ConnectFailNet => Ignored, Welcome => Ignored, Offer => Ignored, HbAck => Ignored,
        CompleteAck => Ignored, ErrAuth => Ignored, ErrDuplicate => Ignored, Garbage => Ignored,
        Binary => Ignored, Close4001 => Ignored, Close1000 => Ignored, HttpOk => Quiet,
        Http404 => Quiet, Http500 => Quiet, Minted => Ignored,
        DoneJson => Usage, DoneBinary => Usage, DoneFail => Usage, Log => Quiet, Pause => Quiet,
        Resume => Ignored, Threshold => Quiet, Shutdown => Exit(ExitCode::Clean),
        UpdateAvailable => Ignored, CheckNow => Check, UpdateApplied => Ignored,
        Enable => Ignored, Disable => Quiet,
    }
    Polling: {
        Start => Ignored, Tick => Ignored, Connected => Ignored, ConnectFail401 => Ignored,
        ConnectFailNet => Ignored, Welcome => Ignored, Offer => Ignored, HbAck => Ignored,
        CompleteAck => Ignored, ErrAuth => Ignored, ErrDuplicate => Ignored, Garbage => Ignored,
        Binary => Ignored, Close4001 => Ignored, Close1000 => Ignored, HttpOk => Connect,
        Http404 => Mint, Http500 => Quiet, Minted => Ignored,
        DoneJson => Usage, DoneBinary => Usage, DoneFail => Usage, Log => Quiet, Pause => Quiet,
        Resume => Ignored, Threshold => Quiet, Shutdown => Exit(ExitCode::Clean),
        UpdateAvailable => Ignored, CheckNow => Check, UpdateApplied => Ignored,
        Enable => Ignored, Disable => Quiet,
    }
    Connecting: {
        Start => Ignored, Tick => Ignored, Connected => Hello, ConnectFail401 => Exit(ExitCode::AuthFailed),
        ConnectFailNet => Reconnect, Welcome => Ignored, Offer => Ignored, HbAck => Ignored,
        CompleteAck => Ignored, ErrAuth => Ignored, ErrDuplicate => Ignored,
        Garbage => Ignored, Binary => Ignored, Close4001 => Exit(ExitCode::AuthFailed),
        Close1000 => Reconnect, HttpOk => Ignored, Http404 => Ignored, Http500 => Ignored,
        Minted => Ignored, DoneJson => Usage, DoneBinary => Usage, DoneFail => Usage, Log => Quiet,
        Pause => Quiet, Resume => Ignored, Threshold => Quiet, Shutdown => Exit(ExitCode::Clean),
        UpdateAvailable => Ignored, CheckNow => Check, UpdateApplied => Ignored,
        Enable => Ignored, Disable => Quiet,
    }
    AwaitWelcome: {
        Start => Ignored, Tick => Ignored, Connected => Ignored, ConnectFail401 => Ignored,
        ConnectFailNet => Ignored, Welcome => Heartbeat, Offer => Quiet, HbAck => Quiet,
        CompleteAck => Quiet, ErrAuth => Exit(ExitCode::AuthFailed), ErrDuplicate => Exit(ExitCode::Fatal),
        Garbage => Reconnect, Binary => Reconnect, Close4001 => Exit(ExitCode::AuthFailed),
        Close1000 => Reconnect, HttpOk => Ignored, Http404 => Ignored, Http500 => Ignored,
        Minted => Ignored, DoneJson => Usage, DoneBinary => Usage, DoneFail => Usage, Log => Quiet,
        Pause => Quiet, Resume => Ignored, Threshold => Quiet, Shutdown => CleanExit,
        UpdateAvailable => Ignored, CheckNow => Check, UpdateApplied => Ignored,
        Enable => Ignored, Disable => Quiet,
    }
    LiveIdle: {
        Start => Ignored, Tick => Ignored, Connected => Ignored, ConnectFail401 => Ignored,
        ConnectFailNet => Ignored, Welcome => Quiet, Offer => Accept, HbAck => Quiet,
        CompleteAck => Quiet, ErrAuth => Exit(ExitCode::AuthFailed), ErrDuplicate => Exit(ExitCode::Fatal),
        Garbage => Reconnect, Binary => Reconnect, Close4001 => Exit(ExitCode::AuthFailed),
        Close1000 => Reconnect, HttpOk => Ignored, Http404 => Ignored, Http500 => Ignored,
        Minted => Ignored, DoneJson => Usage, DoneBinary => Usage, DoneFail => Usage, Log => Quiet,
        Pause => Heartbeat, Resume => Ignored, Threshold => Quiet, Shutdown => CleanExit,
        UpdateAvailable => ApplyUpdate, CheckNow => Check, UpdateApplied => Ignored,
        Enable => Ignored, Disable => Heartbeat,
    }
    LiveBusy: {
        Start => Ignored, Tick => Ignored, Connected => Ignored, ConnectFail401 => Ignored,
        ConnectFailNet => Ignored, Welcome => Quiet, Offer => Reject(RejectCode::Busy), HbAck => Quiet,
        CompleteAck => Quiet, ErrAuth => Exit(ExitCode::AuthFailed), ErrDuplicate => Exit(ExitCode::Fatal),
        Garbage => Reconnect, Binary => Reconnect, Close4001 => Exit(ExitCode::AuthFailed),
        Close1000 => Reconnect, HttpOk => Ignored, Http404 => Ignored, Http500 => Ignored,
        Minted => Ignored, DoneJson => Sends("completeJson"), DoneBinary => Http(HttpKind::Upload),
        DoneFail => Sends("fail"), Log => Quiet, Pause => Heartbeat, Resume => Ignored,
        Threshold => Quiet, Shutdown => Quiet, UpdateAvailable => Quiet, CheckNow => Check, UpdateApplied => Ignored,
        Enable => Ignored, Disable => Heartbeat,
    }
    Uploading: {
        Start => Ignored, Tick => Ignored, Connected => Ignored, ConnectFail401 => Ignored,
        ConnectFailNet => Ignored, Welcome => Quiet, Offer => Quiet, HbAck => Quiet,
        CompleteAck => Quiet, ErrAuth => Exit(ExitCode::AuthFailed), ErrDuplicate => Exit(ExitCode::Fatal),
        Garbage => Reconnect, Binary => Reconnect, Close4001 => Exit(ExitCode::AuthFailed),
        Close1000 => Reconnect, HttpOk => Uploaded, Http404 => Sends("fail"), Http500 => Quiet,
        Minted => Ignored, DoneJson => Usage, DoneBinary => Usage, DoneFail => Usage, Log => Quiet,
        Pause => Heartbeat, Resume => Ignored, Threshold => Quiet, Shutdown => Quiet,
        UpdateAvailable => Quiet, CheckNow => Check, UpdateApplied => Ignored,
        Enable => Ignored, Disable => Heartbeat,
    }
    Updating: {
        Start => Ignored, Tick => Ignored, Connected => Ignored, ConnectFail401 => Ignored,
        ConnectFailNet => Ignored, Welcome => Quiet, Offer => Reject(RejectCode::Busy), HbAck => Quiet,
        CompleteAck => Quiet, ErrAuth => Exit(ExitCode::AuthFailed), ErrDuplicate => Exit(ExitCode::Fatal),
        Garbage => Reconnect, Binary => Reconnect, Close4001 => Exit(ExitCode::AuthFailed),
        Close1000 => Reconnect, HttpOk => Ignored, Http404 => Ignored, Http500 => Ignored,
        Minted => Ignored, DoneJson => Usage, DoneBinary => Usage, DoneFail => Usage, Log => Quiet,
        Pause => Heartbeat, Resume => Ignored, Threshold => Quiet, Shutdown => CleanExit,
        UpdateAvailable => Ignored, CheckNow => Ignored, UpdateApplied => Exit(ExitCode::Restart),
        Enable => Ignored, Disable => Heartbeat,
    }
    Paused: {
        Start => Ignored, Tick => Ignored, Connected => Ignored, ConnectFail401 => Ignored,
        ConnectFailNet => Ignored, Welcome => Quiet, Offer => Reject(RejectCode::Paused), HbAck => Quiet,
        CompleteAck => Quiet, ErrAuth => Exit(ExitCode::AuthFailed), ErrDuplicate => Exit(ExitCode::Fatal),
        Garbage => Reconnect, Binary => Reconnect, Close4001 => Exit(ExitCode::AuthFailed),
        Close1000 => Reconnect, HttpOk => Ignored, Http404 => Ignored, Http500 => Ignored,
        Minted => Ignored, DoneJson => Usage, DoneBinary => Usage, DoneFail => Usage, Log => Quiet,
        Pause => Ignored, Resume => Heartbeat, Threshold => Quiet, Shutdown => CleanExit,
        UpdateAvailable => ApplyUpdate, CheckNow => Check, UpdateApplied => Ignored,
        Enable => Ignored, Disable => Quiet,
    }
    Backoff: {
        Start => Ignored, Tick => Ignored, Connected => CloseStale, ConnectFail401 => Ignored,
        ConnectFailNet => Ignored, Welcome => Ignored, Offer => Ignored, HbAck => Ignored,
        CompleteAck => Ignored, ErrAuth => Ignored, ErrDuplicate => Ignored, Garbage => Ignored,
        Binary => Ignored, Close4001 => Ignored, Close1000 => Ignored, HttpOk => Ignored,
        Http404 => Ignored, Http500 => Ignored, Minted => Ignored,
        DoneJson => Usage, DoneBinary => Usage, DoneFail => Usage, Log => Quiet, Pause => Quiet,
        Resume => Ignored, Threshold => Quiet, Shutdown => Exit(ExitCode::Clean),
        UpdateAvailable => ApplyUpdate, CheckNow => Check, UpdateApplied => Ignored,
        Enable => Ignored, Disable => Quiet,
    }
    Draining: {
        Start => Ignored, Tick => Ignored, Connected => Ignored, ConnectFail401 => Ignored,
        ConnectFailNet => Ignored, Welcome => Quiet, Offer => Reject(RejectCode::Busy), HbAck => Quiet,
        CompleteAck => Quiet, ErrAuth => Exit(ExitCode::AuthFailed), ErrDuplicate => Exit(ExitCode::Fatal),
        Garbage => Reconnect, Binary => Reconnect, Close4001 => Exit(ExitCode::AuthFailed),
        Close1000 => Reconnect, HttpOk => Ignored, Http404 => Ignored, Http500 => Ignored,
        Minted => Ignored, DoneJson => CleanExit, DoneBinary => Http(HttpKind::Upload),
        DoneFail => CleanExit, Log => Quiet, Pause => Heartbeat, Resume => Ignored,
        Threshold => Quiet, Shutdown => Ignored, UpdateAvailable => Quiet, CheckNow => Ignored, UpdateApplied => Ignored,
        Enable => Ignored, Disable => Heartbeat,
    }
    Exited: {
        Start => Ignored, Tick => Ignored, Connected => Ignored, ConnectFail401 => Ignored,
        ConnectFailNet => Ignored, Welcome => Ignored, Offer => Ignored, HbAck => Ignored,
        CompleteAck => Ignored, ErrAuth => Ignored, ErrDuplicate => Ignored, Garbage => Ignored,
        Binary => Ignored, Close4001 => Ignored, Close1000 => Ignored, HttpOk => Ignored,
        Http404 => Ignored, Http500 => Ignored, Minted => Ignored,
        DoneJson => Usage, DoneBinary => Usage, DoneFail => Usage, Log => Ignored, Pause => Ignored,
        Resume => Ignored, Threshold => Ignored, Shutdown => Ignored,
        UpdateAvailable => Ignored, CheckNow => Ignored, UpdateApplied => Ignored,
        Enable => Ignored, Disable => Ignored,
    }
};

// ------------------------------------------------------------------------------------------
// Harness
// ------------------------------------------------------------------------------------------

mod support;
use support::{registered as creds_cfg, welcome, Driver};

fn conn_or_stale(h: &Driver) -> ConnId {
    h.conn.unwrap_or(ConnId(999))
}

fn offer_kind(job: &str, kind: &str) -> StudioFrame {
    let task = match kind {
        "llm" => json!({"kind":"llm","messages":[{"role":"user","content":"hi there"}]}),
        "image" => json!({"kind":"image","prompt":"a fox"}),
        _ => unreachable!(),
    };
    let text = json!({"type":"offer","claim":{"jobId":job,"gameId":"g","assetName":"g/a","model":"synthetic",
        "vramGbEstimate":1.0,"task":task,"modelSource":{"engine":"synthetic","files":[],
        "cliDefaults":{"cfgScale":1.0,"steps":8,"width":1024,"height":1024}}}})
    .to_string();
    wire::decode_studio_frame(&text).unwrap()
}

/// A machine in phase `st`, checked with [`Worker::phase`].
fn reach(st: Phase) -> Driver {
    let h = reach_unchecked(st);
    assert_eq!(h.worker.phase(), st, "reach({st:?}) got there");
    h
}

fn reach_unchecked(st: Phase) -> Driver {
    match st {
        NotStarted => Driver::new(creds_cfg()),
        Minting => {
            let mut h = Driver::new(WorkerConfig::for_tests("http://127.0.0.1:9"));
            let c = h.step(Input::Start);
            assert!(c.iter().any(|c| matches!(
                c,
                Command::MintSecret {
                    need_install_id: true
                }
            )));
            h
        }
        Requesting => {
            let mut h = reach(Minting);
            h.step(Input::Minted {
                install_id: Some("11111111-2222-4333-8444-555555555555".into()),
                secret: "ab".repeat(32).into(),
            });
            h
        }
        Polling => {
            let mut h = reach(Requesting);
            let id = h.http.clone().unwrap().0;
            h.step(Input::Http {
                id,
                result: HttpResult::Response {
                    status: 200,
                    body: r#"{"requestId":"rr-1","status":"pending"}"#.into(),
                },
            });
            let c = h.advance(30.0);
            assert!(c.iter().any(|c| matches!(
                c,
                Command::Http { request, .. }
                    if matches!(**request, HttpRequest::PollRegistration { .. })
            )));
            h
        }
        Connecting => {
            let mut h = Driver::new(creds_cfg());
            h.step(Input::Start);
            assert!(h.conn.is_some());
            h
        }
        AwaitWelcome => {
            let mut h = reach(Connecting);
            let conn = h.conn.unwrap();
            h.step(Input::Connected { conn });
            h
        }
        LiveIdle => {
            let mut h = reach(AwaitWelcome);
            h.frame(&welcome());
            h
        }
        LiveBusy => {
            let mut h = reach(LiveIdle);
            h.frame(&offer_kind("job-1", "image"));
            assert_eq!(h.job.as_deref(), Some("job-1"));
            h
        }
        Uploading => {
            let mut h = reach(LiveBusy);
            h.step(Input::JobFinished {
                job_id: "job-1".into(),
                run: h.run.unwrap(),
                outcome: JobOutcome::Binary {
                    ext: "webp".into(),
                    bytes_len: 10,
                },
            });
            h
        }
        Updating => {
            let mut h = reach_with_update(LiveIdle);
            let input = input_for(&h, UpdateAvailable);
            let c = h.step(input);
            assert!(c.iter().any(|c| matches!(c, Command::ApplyUpdate { .. })));
            h
        }
        Paused => {
            let mut h = reach(LiveIdle);
            h.step(Input::Pause);
            h
        }
        Backoff => {
            let mut h = reach(LiveIdle);
            let conn = h.conn.unwrap();
            h.step(Input::Disconnected {
                conn,
                code: None,
                reason: "eof".into(),
            });
            h
        }
        Draining => {
            let mut h = reach(LiveBusy);
            h.step(Input::Shutdown);
            h
        }
        Exited => {
            let mut h = reach(LiveIdle);
            h.step(Input::Shutdown);
            assert!(h.worker.status().exited);
            h
        }
    }
}

fn input_for(h: &Driver, i: In) -> Input {
    let conn = conn_or_stale(h);
    let http = h.http.as_ref().map_or(HttpId(999), |(id, _)| *id);
    let job = h.job.clone().unwrap_or_else(|| "job-x".into());
    // The last dispatched run, or one never dispatched.
    let run = h.run.unwrap_or_default();
    let frame = |f: StudioFrame| Input::Frame {
        conn,
        text: wire::encode(&f),
    };
    match i {
        Start => Input::Start,
        Tick => Input::Tick,
        Connected => Input::Connected { conn },
        ConnectFail401 => Input::ConnectFailed {
            conn,
            error: ConnectError::Unauthorized { body: "no".into() },
        },
        ConnectFailNet => Input::ConnectFailed {
            conn,
            error: ConnectError::Transport("refused".into()),
        },
        Welcome => frame(welcome()),
        Offer => frame(offer_kind("job-2", "llm")),
        HbAck => frame(StudioFrame::HeartbeatAck),
        CompleteAck => frame(StudioFrame::CompleteAck { job_id: job }),
        ErrAuth => frame(StudioFrame::Error {
            code: wire::WorkerErrorCode::AuthFailed,
            message: "bad token".into(),
        }),
        ErrDuplicate => frame(StudioFrame::Error {
            code: wire::WorkerErrorCode::DuplicateWorker,
            message: "dup".into(),
        }),
        Garbage => Input::Frame {
            conn,
            text: "{not json".into(),
        },
        Binary => Input::BinaryFrame { conn, len: 3 },
        Close4001 => Input::Disconnected {
            conn,
            code: Some(4001),
            reason: "auth".into(),
        },
        Close1000 => Input::Disconnected {
            conn,
            code: Some(1000),
            reason: "bye".into(),
        },
        HttpOk => Input::Http {
            id: http,
            result: HttpResult::Response {
                status: 200,
                body: r#"{"status":"approved","workerId":"w-9","authToken":"tok-9"}"#.into(),
            },
        },
        Http404 => Input::Http {
            id: http,
            result: HttpResult::Response {
                status: 404,
                body: "gone".into(),
            },
        },
        Http500 => Input::Http {
            id: http,
            result: HttpResult::Response {
                status: 500,
                body: "oops".into(),
            },
        },
        Minted => Input::Minted {
            install_id: Some("i".into()),
            secret: "cd".repeat(32).into(),
        },
        DoneJson => Input::JobFinished {
            job_id: job,
            run,
            outcome: JobOutcome::Json {
                result: json!({"ok": true}),
            },
        },
        DoneBinary => Input::JobFinished {
            job_id: job,
            run,
            outcome: JobOutcome::Binary {
                ext: "png".into(),
                bytes_len: 5,
            },
        },
        DoneFail => Input::JobFinished {
            job_id: job,
            run,
            outcome: JobOutcome::Failed {
                error: "boom".into(),
                retryable: true,
            },
        },
        Log => Input::Log(wire::LogEntry {
            ts: "2026-01-01T00:00:00.000Z".into(),
            level: "info".into(),
            category: "engine".into(),
            message: "hello".into(),
            job_id: None,
        }),
        Pause => Input::Pause,
        Resume => Input::Resume,
        Enable => Input::Enable,
        Disable => Input::Disable,
        Threshold => Input::SetThreshold { gb: 8.0 },
        Shutdown => Input::Shutdown,
        CheckNow => Input::CheckUpdateNow,
        UpdateAvailable => Input::UpdateChecked {
            result: Ok(Some("9.9.9".into())),
        },
        UpdateApplied => Input::UpdateApplied { result: Ok(()) },
    }
}

fn sent_types(cmds: &[Command]) -> Vec<String> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Send { text, .. } => Some(
                wire::decode_worker_frame(text, usize::MAX)
                    .expect("the worker only sends valid frames")
                    .type_name()
                    .to_string(),
            ),
            _ => None,
        })
        .collect()
}

fn is_io(c: &Command) -> bool {
    !matches!(c, Command::Report(_) | Command::Wait { .. })
}

fn check(st: Phase, i: In, ex: Ex) {
    let mut h = reach(st);
    let before = h.worker.status();
    let input = input_for(&h, i);
    let res = h.try_step(input);
    let ctx = format!("state {st:?} input {i:?} expect {ex:?}");
    if ex == Usage {
        assert!(res.is_err(), "{ctx}: expected a UsageError");
        assert_eq!(
            h.worker.status(),
            before,
            "{ctx}: a usage error must not change state"
        );
        assert_eq!(
            h.worker.phase(),
            st,
            "{ctx}: a usage error must not change the phase"
        );
        return;
    }
    let cmds = res.unwrap_or_else(|e| panic!("{ctx}: unexpected usage error {e}"));
    let sent = sent_types(&cmds);
    let io: Vec<&Command> = cmds.iter().filter(|c| is_io(c)).collect();
    let after = h.worker.status();
    match ex {
        Ignored => {
            assert!(io.is_empty(), "{ctx}: expected no IO, got {io:?}");
            assert_eq!(h.worker.phase(), st, "{ctx}: the phase must not change");
            assert_eq!(after.session, before.session, "{ctx}");
            assert_eq!(after.current_job_id, before.current_job_id, "{ctx}");
        }
        Quiet => assert!(
            io.iter().all(|c| matches!(c, Command::Persist(_))),
            "{ctx}: expected no IO, got {io:?}"
        ),
        Usage => unreachable!(),
        Mint => assert!(
            cmds.iter().any(|c| matches!(c, Command::MintSecret { .. })),
            "{ctx}: {cmds:?}"
        ),
        Http(kind) => {
            let ok = cmds.iter().any(|c| match c {
                Command::Http { request, .. } => matches!(
                    (kind, &**request),
                    (HttpKind::Register, HttpRequest::RegisterRequest { .. })
                        | (HttpKind::Upload, HttpRequest::Upload { .. })
                ),
                _ => false,
            });
            assert!(ok, "{ctx}: {cmds:?}");
            assert!(sent.is_empty(), "{ctx}: unexpected frames {sent:?}");
        }
        Connect => assert!(
            cmds.iter().any(|c| matches!(c, Command::Connect { .. })),
            "{ctx}: {cmds:?}"
        ),
        Hello => assert_eq!(sent, vec!["hello"], "{ctx}"),
        Heartbeat => assert_eq!(sent, vec!["heartbeat"], "{ctx}"),
        Accept => {
            assert_eq!(sent, vec!["accept"], "{ctx}");
            assert_eq!(h.worker.phase(), LiveBusy, "{ctx}");
            assert!(
                cmds.iter().any(|c| matches!(c, Command::Dispatch { .. })),
                "{ctx}"
            );
        }
        Reject(code) => {
            assert_eq!(sent, vec!["reject"], "{ctx}");
            let frame = cmds
                .iter()
                .find_map(|c| match c {
                    Command::Send { text, .. } => wire::decode_worker_frame(text, usize::MAX).ok(),
                    _ => None,
                })
                .unwrap();
            assert!(
                matches!(frame, WorkerFrame::Reject { code: Some(c), .. } if c == code),
                "{ctx}: {frame:?}"
            );
            assert!(
                !cmds.iter().any(|c| matches!(c, Command::Dispatch { .. })),
                "{ctx}"
            );
        }
        Sends(t) => assert_eq!(sent, vec![t], "{ctx}"),
        Reconnect => {
            assert!(
                matches!(after.session, SessionState::Reconnecting { .. }),
                "{ctx}: {:?}",
                after.session
            );
            let want = if st == Draining { Draining } else { Backoff };
            assert_eq!(h.worker.phase(), want, "{ctx}");
            assert!(
                !cmds.iter().any(|c| matches!(c, Command::Exit { .. })),
                "{ctx}"
            );
            assert!(sent.is_empty(), "{ctx}: {sent:?}");
        }
        Exit(code) => {
            let got = cmds.iter().find_map(|c| match c {
                Command::Exit { code, .. } => Some(*code),
                _ => None,
            });
            assert_eq!(got, Some(code), "{ctx}: {cmds:?}");
            assert!(after.exited, "{ctx}");
            assert_eq!(h.worker.phase(), Exited, "{ctx}");
        }
        CleanExit => {
            let close = cmds
                .iter()
                .position(|c| matches!(c, Command::Close { code: 1000, .. }));
            let exit = cmds.iter().position(|c| {
                matches!(
                    c,
                    Command::Exit {
                        code: ExitCode::Clean,
                        ..
                    }
                )
            });
            assert!(
                close.is_some() && exit.is_some() && close < exit,
                "{ctx}: {cmds:?}"
            );
            assert_eq!(h.worker.phase(), Exited, "{ctx}");
        }
        Check => {
            assert_eq!(io, [&Command::CheckUpdate], "{ctx}: only the check");
            assert_eq!(h.worker.phase(), st, "{ctx}: the phase must not change");
        }
        ApplyUpdate => assert!(
            cmds.iter()
                .any(|c| matches!(c, Command::ApplyUpdate { .. })),
            "{ctx}: {cmds:?}"
        ),
        Uploaded => {
            assert!(
                io.iter()
                    .all(|c| matches!(c, Command::DiscardResult { .. }))
                    && io.len() == 1,
                "{ctx}: {io:?}"
            );
            assert_eq!(after.current_job_id, None, "{ctx}");
        }
        CloseStale => {
            assert!(
                io.len() == 1 && matches!(io[0], Command::Close { code: 1000, .. }),
                "{ctx}: {io:?}"
            );
            assert_eq!(after.session, before.session, "{ctx}");
        }
    }
}

#[rstest]
fn table_row(#[values(0usize, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13)] st_idx: usize) {
    let st = Phase::ALL[st_idx];
    for &(s, i, ex) in TABLE.iter().filter(|(s, _, _)| *s == st) {
        let ex = adjust_for_update(s, i, ex);
        check(s, i, ex);
    }
}

/// `UpdateChecked` is only awaited after `CheckUpdate`; the default harness has
/// auto-update off, so the row's full behaviour is exercised by `update_rows` below and
/// here the unsolicited answer must be ignored.
fn adjust_for_update(_s: Phase, i: In, ex: Ex) -> Ex {
    if i == UpdateAvailable {
        Ignored
    } else {
        ex
    }
}

/// The UpdateAvailable rows with an outstanding check.
#[rstest]
fn update_rows(#[values(LiveIdle, LiveBusy, Paused, Backoff)] st: Phase) {
    let ex = TABLE
        .iter()
        .find(|(s, i, _)| *s == st && *i == UpdateAvailable)
        .unwrap()
        .2;
    let mut h = reach_with_update(st);
    let input = input_for(&h, UpdateAvailable);
    let cmds = h.step(input);
    match ex {
        ApplyUpdate => assert!(
            cmds.iter()
                .any(|c| matches!(c, Command::ApplyUpdate { .. })),
            "{st:?}: {cmds:?}"
        ),
        Quiet => assert!(!cmds.iter().any(is_io), "{st:?}: {cmds:?}"),
        other => panic!("unexpected {other:?}"),
    }
}

/// Reaches `st` with auto-update on and a `CheckUpdate` outstanding.
fn reach_with_update(st: Phase) -> Driver {
    let mut cfg = creds_cfg();
    cfg.auto_update_enabled = true;
    cfg.timings.update_interval = std::time::Duration::from_secs(3600);
    let mut h = Driver::new(cfg);
    h.step(Input::Start);
    let conn = h.conn.unwrap();
    h.step(Input::Connected { conn });
    // The first check goes out right after the first welcome.
    let cmds = h.frame(&welcome());
    let mut check_seen = cmds.contains(&Command::CheckUpdate);
    match st {
        LiveIdle => {}
        Paused => {
            h.step(Input::Pause);
        }
        Backoff => {
            h.step(Input::Disconnected {
                conn,
                code: None,
                reason: "eof".into(),
            });
        }
        LiveBusy => {}
        _ => unreachable!(),
    }
    // (Otherwise, keep the session alive across the hour: ack heartbeats as they come.)
    for _ in 0..(3600 / 5 + 1) {
        if check_seen {
            break;
        }
        let cmds = h.advance(5.0);
        if cmds.iter().any(|c| matches!(c, Command::CheckUpdate)) {
            check_seen = true;
        }
        if h.worker.status().session == SessionState::Connected {
            h.frame(&StudioFrame::HeartbeatAck);
        } else if st == Backoff {
            // Stay disconnected: fail every reconnect.
            if let Some(Command::Connect { .. }) =
                cmds.iter().find(|c| matches!(c, Command::Connect { .. }))
            {
                let conn = h.conn.unwrap();
                h.step(Input::ConnectFailed {
                    conn,
                    error: ConnectError::Transport("down".into()),
                });
            }
        }
        if check_seen {
            break;
        }
    }
    assert!(check_seen, "{st:?}: no CheckUpdate within the interval");
    if st == LiveBusy {
        h.frame(&offer_kind("job-1", "image"));
        assert!(h.job.is_some());
    }
    h
}

#[test]
fn every_pair_has_a_row() {
    let mut seen = BTreeSet::new();
    for (s, i, _) in TABLE {
        assert!(seen.insert((*s, *i)), "duplicate row ({s:?}, {i:?})");
    }
    let mut missing = Vec::new();
    for &s in Phase::ALL {
        for i in In::ALL {
            if !seen.contains(&(s, i)) {
                missing.push(format!("({s:?}, {i:?})"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "pairs without a row: {}",
        missing.join(", ")
    );
}

fn render_table() -> String {
    let mut out = String::new();
    out.push_str("# Worker machine transition table\n\n");
    out.push_str(
        "Generated from `core/tests/transitions.rs` (`TABLE`); every cell is a tested row.\n\
         Regenerate: `UPDATE_TRANSITIONS=1 cargo test -p studio-core --test transitions`.\n\n\
         Legend: `Ignored` = no IO and no state change; `Quiet` = no IO, internal state may\n\
         change; `Usage` = `handle` returns `UsageError` and nothing changes; `Reconnect` =\n\
         session torn down (Close if open) and a jittered reconnect scheduled;\n\
         `CleanExit` = logs flushed, close 1000, `Exit(Clean)`. An offer during an upload is\n\
         parked (`Quiet`) and decided when the upload finishes.\n\n\
         The states are `studio_core::worker::Phase`, what `Worker::phase()` returns; every\n\
         row checks that it starts in its state, and `Ignored` and `Usage` rows that it stays.\n\n",
    );
    out.push_str("## States\n\n| state | meaning |\n|---|---|\n");
    for s in Phase::ALL {
        let _ = writeln!(out, "| {s:?} | {} |", s.meaning());
    }
    out.push_str("\n## Transitions\n\n| input |");
    for s in Phase::ALL {
        let _ = write!(out, " {s:?} |");
    }
    out.push_str("\n|---|");
    for _ in Phase::ALL {
        out.push_str("---|");
    }
    out.push('\n');
    for i in In::ALL {
        let _ = write!(out, "| {i:?} |");
        for &s in Phase::ALL {
            let ex = TABLE
                .iter()
                .find(|(a, b, _)| *a == s && *b == i)
                .map(|r| format!("{:?}", r.2))
                .unwrap_or_else(|| "?".into());
            let _ = write!(
                out,
                " {} |",
                ex.replace("ExitCode::", "")
                    .replace("HttpKind::", "")
                    .replace("RejectCode::", "")
            );
        }
        out.push('\n');
    }
    out
}

#[test]
fn docs_table_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("TRANSITIONS.md");
    let want = render_table();
    if std::env::var_os("UPDATE_TRANSITIONS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "core/TRANSITIONS.md is out of date; run UPDATE_TRANSITIONS=1 cargo test -p studio-core --test transitions"
    );
}
