//! The studio's records of workers and connections, shared by the modules that act on
//! them (sessions, heartbeats, the queue, registration). Kept apart from the behaviour so
//! that those modules depend on this one and not on each other.

use std::collections::{BTreeMap, VecDeque};
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
    /// Its worker's record, when the id was known at connect (see [`Studio::conn_worker`]).
    ///
    /// [`Studio::conn_worker`]: super::Studio::conn_worker
    pub(super) worker: Option<WorkerHandle>,
    pub(super) phase: ConnPhase,
    pub(super) last_frame: Mono,
    /// Its key in the session index, `(indexed, conn)`: a time at or before `last_frame`.
    /// A frame moves only `last_frame`; the sweep re-files an entry it finds behind (see
    /// `Studio::sweep`), so the index is touched once per timeout, not once per frame.
    pub(super) indexed: Mono,
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

/// A worker record's place in [`Workers`]: its slot and the slot's generation when the
/// handle was taken. A handle outlives its record harmlessly: the slot's generation moves
/// on when the record is removed, and the handle then finds nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct WorkerHandle {
    slot: u32,
    generation: u32,
}

#[derive(Clone, Debug)]
struct WorkerSlot {
    id: Arc<str>,
    generation: u32,
    rec: Option<WorkerRec>,
}

/// The worker records by id, each also reachable by a [`WorkerHandle`]: the id map is the
/// order (iteration is by id, as a `BTreeMap<String, WorkerRec>` gives), the handle is the
/// fast way in for what a connection already knows its worker by (every frame), without
/// a string-keyed search through the fleet.
#[derive(Clone, Debug, Default)]
pub(super) struct Workers {
    ids: BTreeMap<String, u32>,
    slots: Vec<WorkerSlot>,
    free: Vec<u32>,
}

impl Workers {
    pub(super) fn handle(&self, id: &str) -> Option<WorkerHandle> {
        let slot = *self.ids.get(id)?;
        Some(WorkerHandle {
            slot,
            generation: self.slots[slot as usize].generation,
        })
    }

    fn slot(&self, h: WorkerHandle) -> Option<&WorkerSlot> {
        self.slots
            .get(h.slot as usize)
            .filter(|s| s.generation == h.generation && s.rec.is_some())
    }

    pub(super) fn at(&self, h: WorkerHandle) -> Option<&WorkerRec> {
        self.slot(h)?.rec.as_ref()
    }

    pub(super) fn at_mut(&mut self, h: WorkerHandle) -> Option<&mut WorkerRec> {
        self.slots
            .get_mut(h.slot as usize)
            .filter(|s| s.generation == h.generation)?
            .rec
            .as_mut()
    }

    /// The id of the worker behind `h`.
    pub(super) fn id(&self, h: WorkerHandle) -> Option<&Arc<str>> {
        Some(&self.slot(h)?.id)
    }

    pub(super) fn get(&self, id: &str) -> Option<&WorkerRec> {
        self.at(self.handle(id)?)
    }

    pub(super) fn get_mut(&mut self, id: &str) -> Option<&mut WorkerRec> {
        self.at_mut(self.handle(id)?)
    }

    pub(super) fn contains_key(&self, id: &str) -> bool {
        self.ids.contains_key(id)
    }

    /// The record of `id`, a default one added if there is none.
    pub(super) fn or_default(&mut self, id: &str) -> &mut WorkerRec {
        let h = match self.handle(id) {
            Some(h) => h,
            None => self.insert(id.to_string(), WorkerRec::default()),
        };
        self.at_mut(h).expect("a record just found or added")
    }

    /// Adds or replaces the record of `id`.
    pub(super) fn insert(&mut self, id: String, rec: WorkerRec) -> WorkerHandle {
        if let Some(h) = self.handle(&id) {
            self.slots[h.slot as usize].rec = Some(rec);
            return h;
        }
        let slot = match self.free.pop() {
            Some(slot) => {
                let s = &mut self.slots[slot as usize];
                s.id = Arc::from(id.as_str());
                s.rec = Some(rec);
                slot
            }
            None => {
                self.slots.push(WorkerSlot {
                    id: Arc::from(id.as_str()),
                    generation: 0,
                    rec: Some(rec),
                });
                u32::try_from(self.slots.len() - 1).expect("under 2^32 workers")
            }
        };
        self.ids.insert(id, slot);
        WorkerHandle {
            slot,
            generation: self.slots[slot as usize].generation,
        }
    }

    pub(super) fn remove(&mut self, id: &str) {
        if let Some(slot) = self.ids.remove(id) {
            let s = &mut self.slots[slot as usize];
            s.rec = None;
            s.generation = s.generation.wrapping_add(1);
            self.free.push(slot);
        }
    }

    /// Every worker record, by id.
    pub(super) fn values(&self) -> impl Iterator<Item = &WorkerRec> {
        self.iter().map(|(_, rec)| rec)
    }

    /// Every worker, by id.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&String, &WorkerRec)> {
        self.ids
            .iter()
            .filter_map(|(id, &slot)| self.slots[slot as usize].rec.as_ref().map(|rec| (id, rec)))
    }
}
