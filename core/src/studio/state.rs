//! The studio's records of workers and connections, shared by the modules that act on
//! them (sessions, heartbeats, the queue, registration). Kept apart from the behaviour so
//! that those modules depend on this one and not on each other.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::time::Mono;
use crate::wire::{LogEntry, ModelEngine, TaskKind, WorkerCapabilities};

use super::ConnId;

/// What matches a job to a worker besides kind and VRAM: an exact model id, or the
/// wildcard of an engine (the `modelSource.engine` wire name).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum ModelKey {
    /// `model` of the job; a model id the worker advertises.
    Model(String),
    /// `modelSource.engine` of the job; a worker advertising `<engine>:*`.
    Engine(String),
}

impl ModelKey {
    /// The key of one advertised model id.
    pub(super) fn advertised(model: &str) -> ModelKey {
        match ModelEngine::of_wildcard(model) {
            Some(engine) => ModelKey::Engine(engine.to_string()),
            None => ModelKey::Model(model.to_string()),
        }
    }
}

/// An index key: a kind, a model key and the bit pattern of a (finite, non-negative) VRAM
/// value, which orders like the number (a job's estimate, a worker's threshold).
pub(super) type Fit = (TaskKind, ModelKey, u32);

/// Where a socket stands: authenticated by `hello` or not yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ConnPhase {
    AwaitingHello,
    Welcomed,
}

#[derive(Clone, Debug)]
pub(super) struct ConnRec {
    /// Shared, not owned: every frame on the connection takes a copy of it to pass along
    /// while the record itself may change, and cloning an `Arc` allocates nothing.
    pub(super) worker_id: Arc<str>,
    pub(super) phase: ConnPhase,
    pub(super) last_frame: Mono,
    /// Connect order (the studio's own counter): of two connections of one worker, the one
    /// opened later wins, whichever hello arrives last.
    pub(super) opened: u64,
    /// The last heartbeat handled on this connection (performance only).
    pub(super) last_heartbeat: Option<HeartbeatMemo>,
}

#[derive(Clone, Debug, Default)]
pub(super) struct WorkerRec {
    pub(super) token_hash: Option<String>,
    pub(super) session: Option<ConnId>,
    pub(super) connect_seq: u64,
    pub(super) connected_at: Option<Mono>,
    pub(super) capabilities: Option<WorkerCapabilities>,
    /// Which assignment of `capabilities` they come from (the studio's `caps_gen` then).
    pub(super) caps_gen: u64,
    pub(super) last_seen: Option<Mono>,
    /// Seq of the job whose slot it holds.
    pub(super) slot: Option<u64>,
    /// No offers until the next heartbeat (after a reject or an offer timeout).
    pub(super) hold: bool,
    /// The worker reported (or accepted) a job the studio does not attribute to it.
    pub(super) busy_hint: Option<String>,
    /// First idle heartbeat while holding a running job.
    pub(super) idle_since: Option<Mono>,
    /// Key in `orphans` while disconnected with a running job.
    pub(super) orphan_since: Option<Mono>,
    pub(super) in_idle: bool,
    /// The fits it was indexed under while idle.
    pub(super) idle_fits: Vec<Fit>,
    pub(super) logs: VecDeque<LogEntry>,
}

/// A heartbeat's text with what it decoded to. Performance only: a worker repeats the same
/// heartbeat while nothing in it changes, and a byte-identical text decodes to the same
/// frame, so it is not decoded again. Its capabilities are the worker record's as long as
/// the record's `caps_gen` is still `caps_gen` (nothing assigned them since).
#[derive(Clone, Debug)]
pub(super) struct HeartbeatMemo {
    pub(super) text: String,
    pub(super) current_job_id: Option<String>,
    pub(super) caps_gen: u64,
}
