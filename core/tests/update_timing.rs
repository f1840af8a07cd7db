//! The auto-updater's timing rules, one table row per rule: when a check goes out, when an
//! install starts, what offers get meanwhile (`core/src/worker/update.rs`).

use std::time::Duration;

use serde_json::json;
use studio_core::wire::{RejectCode, StudioFrame, WorkerFrame};
use studio_core::worker::*;

mod support;
use support::{frames, offer, registered, welcome, Driver};

/// The interval of every row (the shortest a config may ask for).
const INTERVAL: f64 = 60.0;

/// What happens at a step.
#[derive(Clone, Copy, Debug)]
enum Ev {
    /// Time passes to this second (heartbeats acked on the way).
    At(f64),
    /// The session opens (connect, hello, welcome).
    Welcome,
    /// The session drops and a new one is welcomed.
    Reconnect,
    /// The studio offers a job.
    Offer(&'static str),
    /// The engine finishes the running job.
    Finish,
    /// The operator asks for a check now.
    CheckNow,
    /// The feed answers: a newer version, or none.
    Found(Option<&'static str>),
    /// The feed could not be read.
    FeedError,
    /// The install ended.
    Installed(bool),
}

/// What the machine did that matters to the updater.
#[derive(Clone, Debug, PartialEq)]
enum Did {
    Check,
    Apply(&'static str),
    Accept,
    RejectBusy,
    Restart,
}

use Did::*;
use Ev::*;

struct Row {
    name: &'static str,
    auto_update: bool,
    steps: &'static [(Ev, &'static [Did])],
}

const ROWS: &[Row] = &[
    Row {
        name: "the first check goes out right after the first welcome, then every interval",
        auto_update: true,
        steps: &[
            (Welcome, &[Check]),
            (Found(None), &[]),
            (At(INTERVAL - 1.0), &[]),
            (At(INTERVAL), &[Check]),
            (Found(None), &[]),
            (At(2.0 * INTERVAL), &[Check]),
        ],
    },
    Row {
        name: "auto-update off: never checks by itself",
        auto_update: false,
        steps: &[(Welcome, &[]), (At(10.0 * INTERVAL), &[])],
    },
    Row {
        name: "a later session's welcome does not check again",
        auto_update: true,
        steps: &[
            (Welcome, &[Check]),
            (Found(None), &[]),
            (At(10.0), &[]),
            (Reconnect, &[]),
            (At(INTERVAL), &[Check]),
        ],
    },
    Row {
        name: "a check due during a job is skipped until the next interval",
        auto_update: true,
        steps: &[
            (Welcome, &[Check]),
            (Found(None), &[]),
            (At(30.0), &[]),
            (Offer("j-1"), &[Accept]),
            (At(INTERVAL), &[]),
            (Finish, &[]),
            (At(2.0 * INTERVAL), &[Check]),
        ],
    },
    Row {
        name:
            "found while idle: installs at once, offers meanwhile are rejected busy, then restarts",
        auto_update: true,
        steps: &[
            (Welcome, &[Check]),
            (Found(Some("1.2.3")), &[Apply("1.2.3")]),
            (Offer("j-1"), &[RejectBusy]),
            (At(5.0), &[]),
            (Installed(true), &[Restart]),
        ],
    },
    Row {
        name: "found during a job: the job is not interrupted, the install waits for the slot",
        auto_update: true,
        steps: &[
            (Welcome, &[Check]),
            (Found(None), &[]),
            (Offer("j-1"), &[Accept]),
            (CheckNow, &[Check]),
            (Found(Some("1.2.3")), &[]),
            (At(INTERVAL), &[]),
            (Finish, &[Apply("1.2.3")]),
            (Offer("j-2"), &[RejectBusy]),
        ],
    },
    Row {
        name: "an operator's check with auto-update off reports and never installs",
        auto_update: false,
        steps: &[
            (Welcome, &[]),
            (CheckNow, &[Check]),
            (Found(Some("2.0.0")), &[]),
            (Offer("j-1"), &[Accept]),
        ],
    },
    Row {
        name: "a failed install frees the slot and the next interval checks again",
        auto_update: true,
        steps: &[
            (Welcome, &[Check]),
            (Found(Some("1.2.3")), &[Apply("1.2.3")]),
            (Installed(false), &[]),
            (Offer("j-1"), &[Accept]),
            (Finish, &[]),
            (At(INTERVAL), &[Check]),
        ],
    },
    Row {
        name: "a check is never doubled: an operator's request or a due timer while one is out",
        auto_update: true,
        steps: &[
            (Welcome, &[Check]),
            (CheckNow, &[]),
            (At(INTERVAL), &[]),
            (Found(None), &[]),
            (At(2.0 * INTERVAL), &[Check]),
        ],
    },
    Row {
        name: "a feed error is retried at the next interval",
        auto_update: true,
        steps: &[
            (Welcome, &[Check]),
            (FeedError, &[]),
            (At(INTERVAL), &[Check]),
        ],
    },
];

fn config(auto_update: bool) -> WorkerConfig {
    let mut cfg = registered();
    cfg.auto_update_enabled = auto_update;
    cfg.timings.update_interval = Duration::from_secs_f64(INTERVAL);
    cfg.timings.read_idle = Duration::from_secs(3600);
    cfg
}

fn did(cmds: &[Command]) -> Vec<Did> {
    let mut out = Vec::new();
    for c in cmds {
        match c {
            Command::CheckUpdate => out.push(Check),
            Command::ApplyUpdate { version } => {
                out.push(Apply(Box::leak(version.clone().into_boxed_str())))
            }
            Command::Exit {
                code: ExitCode::Restart,
                ..
            } => out.push(Restart),
            _ => {}
        }
    }
    for f in frames(cmds) {
        match f {
            WorkerFrame::Accept { .. } => out.push(Accept),
            WorkerFrame::Reject {
                code: Some(RejectCode::Busy),
                ..
            } => out.push(RejectBusy),
            _ => {}
        }
    }
    out
}

fn connect(h: &mut Driver) -> Vec<Command> {
    let conn = h.conn.expect("a connection");
    let mut cmds = h.step(Input::Connected { conn });
    cmds.extend(h.frame(&welcome()));
    cmds
}

fn run_row(row: &Row) {
    let mut h = Driver::new(config(row.auto_update));
    h.step(Input::Start);
    for (i, (ev, want)) in row.steps.iter().enumerate() {
        let cmds = match *ev {
            At(secs) => {
                let mut cmds = Vec::new();
                let target = (secs * 1e6) as u64;
                while h.micros < target {
                    let step = (h.micros + 5_000_000).min(target);
                    cmds.extend(h.at(step as f64 / 1e6));
                    if h.worker.status().session == SessionState::Connected {
                        cmds.extend(h.frame(&StudioFrame::HeartbeatAck));
                    }
                }
                cmds
            }
            Welcome => connect(&mut h),
            Reconnect => {
                let conn = h.conn.expect("a connection");
                h.step(Input::Disconnected {
                    conn,
                    code: Some(1001),
                    reason: "going away".into(),
                });
                let mut cmds = h.to_deadline();
                cmds.extend(connect(&mut h));
                cmds
            }
            Offer(job) => h.frame(&offer(job, json!({"kind":"llm","messages":[]}))),
            Finish => h.finish(JobOutcome::Json { result: json!({}) }),
            CheckNow => h.step(Input::CheckUpdateNow),
            Found(v) => h.step(Input::UpdateChecked {
                result: Ok(v.map(str::to_string)),
            }),
            FeedError => h.step(Input::UpdateChecked {
                result: Err("feed answered 500".into()),
            }),
            Installed(ok) => h.step(Input::UpdateApplied {
                result: if ok {
                    Ok(())
                } else {
                    Err("bad checksum".into())
                },
            }),
        };
        assert_eq!(
            did(&cmds),
            *want,
            "{}: step {i} ({ev:?}): {cmds:?}",
            row.name
        );
    }
}

#[test]
fn update_timing_rules() {
    for row in ROWS {
        run_row(row);
    }
}

#[test]
fn the_last_check_is_reported_with_its_outcome() {
    let mut h = Driver::new(config(true));
    h.step(Input::Start);
    connect(&mut h);
    assert_eq!(
        h.worker.status().last_update_check,
        None,
        "none finished yet"
    );
    h.step(Input::UpdateChecked {
        result: Err("feed answered 500".into()),
    });
    let first = h.worker.status().last_update_check.expect("a check");
    assert_eq!(first.seq, 1);
    assert_eq!(
        first.outcome,
        UpdateOutcome::Failed("feed answered 500".into())
    );
    assert_eq!(first.current, h.worker.config().host.agent_version);
    h.at(INTERVAL);
    h.step(Input::UpdateChecked {
        result: Ok(Some("9.0.0".into())),
    });
    let second = h.worker.status().last_update_check.expect("a check");
    assert_eq!(second.seq, 2);
    assert_eq!(second.outcome, UpdateOutcome::Available("9.0.0".into()));
    assert!(second.at.0 > first.at.0, "stamped with the wall clock");
    // An answer nobody asked for is not a check.
    h.step(Input::UpdateChecked { result: Ok(None) });
    assert_eq!(h.worker.status().last_update_check.unwrap().seq, 2);
    let logs: Vec<String> = h
        .worker
        .status()
        .recent_logs
        .iter()
        .map(|e| e.message.clone())
        .collect();
    assert!(
        logs.iter()
            .any(|m| m.starts_with("update check failed: feed answered 500")),
        "{logs:?}"
    );
}
