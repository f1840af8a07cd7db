//! Failing seeds leave one trace per worker in the core's replay format
//! (`studio_core::trace`, v1): `studio-worker replay <file>` (or `trace::replay`) re-runs
//! the worker machine on exactly the inputs it got in the simulation.

use std::path::{Path, PathBuf};

use studio_core::trace::{TraceHeader, TraceWriter};
use studio_core::worker::Now;
use studio_core::{Mono, WallMs};

use crate::{WorkerTrace, WALL0};

/// The trace text (JSON lines, newline-terminated) of one worker of a recorded run.
pub fn worker_trace_text(t: &WorkerTrace) -> String {
    let start = Now::new(Mono::ZERO, WallMs(WALL0));
    let mut writer = TraceWriter::new();
    let mut out = writer.header_line(&TraceHeader::new("sim", &t.config, start));
    out.push('\n');
    for s in &t.steps {
        out.push_str(&writer.record(s.now, &s.input, &s.commands));
        out.push('\n');
    }
    out
}

/// Writes `dir/worker-K.jsonl` for every recorded worker; returns the paths.
pub fn write_traces(dir: &Path, traces: &[(usize, WorkerTrace)]) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut paths = Vec::with_capacity(traces.len());
    for (k, t) in traces {
        let p = dir.join(format!("worker-{k}.jsonl"));
        std::fs::write(&p, worker_trace_text(t))?;
        paths.push(p);
    }
    Ok(paths)
}
