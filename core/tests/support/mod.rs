//! What the worker machine's integration tests share: the core's test driver
//! (`studio_core::testing::Driver`) and a few fixtures.
#![allow(dead_code)] // each test file uses a different part

use serde_json::{json, Value};
use studio_core::wire::{self, WorkerFrame};
use studio_core::worker::*;

#[allow(unused_imports)] // each test file uses a different part
pub use studio_core::testing::{offer, welcome, Driver, WALL0};

/// A registered worker's configuration (`w-1` / `tok-1`) against a closed local port.
pub fn registered() -> WorkerConfig {
    studio_core::testing::registered("http://127.0.0.1:9")
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

/// A studio that reads everything the live session has sent so far, stays connected and
/// acknowledges no result: a heartbeat interval after a welcome it answers both heartbeats
/// sent by then (the welcome's and the interval's, which follows every earlier frame).
/// Returns the commands of the interval.
pub fn studio_reads_all(h: &mut Driver) -> Vec<Command> {
    let interval = h.worker.config().timings.heartbeat.as_secs_f64();
    let mut cmds = h.advance(interval);
    assert!(
        types(&cmds).contains(&"heartbeat"),
        "a heartbeat a full interval later: {cmds:?}"
    );
    for _ in 0..2 {
        cmds.extend(h.frame(&wire::StudioFrame::HeartbeatAck));
    }
    cmds
}
