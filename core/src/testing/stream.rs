//! A steady stream of synthetic llm jobs through one live [`Driver`]: what the core's
//! allocation bound and `studio-bench`'s "machine alone" baseline feed, written once.

use serde_json::{json, Value};

use crate::wire::{self, StudioFrame, TaskKind};
use crate::worker::{Command, Input, RunId};

use super::{job_success, offer, Driver};

/// How far apart the jobs of a stream are: 5 ms, so a stream of a few thousand jobs sees
/// the log flushes (every second) and heartbeats (every five) of a busy worker.
pub const JOB_SPACING_MICROS: u64 = 5_000;

/// One llm job's inputs, made before it is fed: the shell reads the frames off the socket
/// and the engine builds the result, so making them is not the machine's cost.
#[derive(Clone, Debug)]
pub struct LlmJob {
    pub job_id: String,
    pub offer: String,
    pub result: Value,
    pub ack: String,
}

impl LlmJob {
    /// Job `i`: a two-message chat offer (about 330 bytes, like `studio-bench`'s), a short
    /// answer, and the studio's `completeAck`.
    pub fn new(i: usize) -> LlmJob {
        let job_id = format!("job-{i:06}");
        let task = json!({"kind":"llm","messages":[
            {"role":"system","content":"You are a helpful assistant."},
            {"role":"user","content":"Write one short sentence about a lighthouse."}],
            "maxTokens":64});
        LlmJob {
            offer: wire::encode(&offer(&job_id, task)),
            result: json!({"text":"The lighthouse keeps its light on all night.","tokens":11}),
            ack: wire::encode(&StudioFrame::CompleteAck {
                job_id: job_id.clone(),
            }),
            job_id,
        }
    }
}

impl Driver {
    /// Runs `job` on this live machine, [`JOB_SPACING_MICROS`] after the previous one: the
    /// offer (accepted and dispatched), the engine's result, the studio's ack, and a tick
    /// for the timers due. A heartbeat sent meanwhile is acknowledged. The commands are
    /// dropped as they come, the way a shell performs them.
    pub fn run_llm_job(&mut self, job: LlmJob) {
        let LlmJob {
            job_id,
            offer,
            result,
            ack,
        } = job;
        let conn = self.conn.expect("a live connection");
        let at = self.micros + JOB_SPACING_MICROS;
        let run = self
            .feed_at(at, Input::Frame { conn, text: offer })
            .expect("the offer is dispatched");
        let outcome = job_success(TaskKind::Llm, result);
        let finished = Input::JobFinished {
            job_id,
            run,
            outcome,
        };
        self.feed_at(at + 100, finished);
        self.feed_at(at + 200, Input::Frame { conn, text: ack });
        self.feed_at(at + 300, Input::Tick);
    }

    /// Feeds `input` at `at` microseconds and drains without keeping the commands; answers
    /// a heartbeat with its ack. Returns the run of a dispatch.
    fn feed_at(&mut self, at: u64, input: Input) -> Option<RunId> {
        self.micros = self.micros.max(at);
        self.feed(input).expect("valid input");
        let (mut run, mut heartbeat) = (None, false);
        loop {
            match self.worker.poll() {
                Command::Wait { .. } => break,
                Command::Dispatch { run: r, .. } => run = Some(r),
                Command::Send { text, .. } => {
                    heartbeat |= text.starts_with(r#"{"type":"heartbeat""#);
                }
                _ => {}
            }
        }
        if heartbeat {
            let conn = self.conn.expect("a live connection");
            let text = wire::encode(&StudioFrame::HeartbeatAck);
            self.feed_at(at, Input::Frame { conn, text });
        }
        run
    }
}
