//! The job queue and the idle pool, both indexed by fit (task kind, model, VRAM), and the
//! bookkeeping that keeps a worker in the pool exactly while it may get an offer.
//!
//! A job fits a worker that serves its kind, whose VRAM threshold is at least the job's
//! estimate, and that advertises for that kind either the job's model id or the wildcard of
//! the job's `modelSource.engine` (`<engine>:*`, PROTOCOL.md §3.1). So a job is indexed
//! under two keys, its model and its engine, and a worker under one key per model id or
//! wildcard it advertises per kind.

use std::collections::{BTreeMap, BTreeSet};

use crate::wire::{ModelEngine, TaskKind, UserPresence, WorkerCapabilities};

use super::state::{Fit, ModelKey, WorkerHandle, WorkerRec};
use super::{JobSpec, Studio};

pub(super) fn vram_bits(v: f32) -> u32 {
    // -0.0 and 0.0 compare equal; give them one key.
    if v == 0.0 {
        0
    } else {
        v.to_bits()
    }
}

/// A job's two index keys: its model id and its engine, with its kind and estimate.
pub(super) fn job_fits(spec: &JobSpec) -> [Fit; 2] {
    let (kind, v) = (spec.task.kind(), vram_bits(spec.vram_gb_estimate));
    [
        (kind, ModelKey::Model(spec.model.clone()), v),
        (
            kind,
            ModelKey::Engine(spec.model_source.engine.as_str().to_string()),
            v,
        ),
    ]
}

/// The model ids a worker advertises for `kind`: its `supportedModelsPerKind` entry, or,
/// from a worker that sends no per-kind lists (older workers), its flat `supportedModels`.
pub(super) fn advertised(caps: &WorkerCapabilities, kind: TaskKind) -> &[String] {
    if caps.supported_models_per_kind.is_empty() {
        &caps.supported_models
    } else {
        caps.supported_models_per_kind
            .get(&kind)
            .map_or(&[], Vec::as_slice)
    }
}

/// The index keys of a worker: one per kind it serves and model key it advertises for it,
/// with its threshold, sorted. A threshold that is negative or NaN serves nothing.
pub(super) fn worker_fits(caps: &WorkerCapabilities) -> Vec<Fit> {
    let t = caps.vram_threshold_gb;
    if t.is_nan() || t < 0.0 {
        return Vec::new();
    }
    let t = vram_bits(t);
    let fits: BTreeSet<Fit> = TaskKind::ALL
        .into_iter()
        .filter(|k| caps.serves_kind(*k))
        .flat_map(|k| {
            advertised(caps, k)
                .iter()
                .map(move |m| (k, ModelKey::advertised(m), t))
        })
        .collect();
    fits.into_iter().collect()
}

/// The FIFO queue, indexed by fit so that "the oldest job this worker can serve" costs a
/// few range lookups instead of a scan.
#[derive(Clone, Debug, Default)]
pub(super) struct JobQueue {
    pub(super) fifo: BTreeSet<u64>,
    pub(super) by_fit: BTreeMap<Fit, BTreeSet<u64>>,
}

impl JobQueue {
    /// Queues `seq` under each of its fits ([`job_fits`]).
    pub(super) fn insert(&mut self, seq: u64, fits: &[Fit]) {
        if self.fifo.insert(seq) {
            for fit in fits {
                self.by_fit.entry(fit.clone()).or_default().insert(seq);
            }
        }
    }

    pub(super) fn remove(&mut self, seq: u64, fits: &[Fit]) {
        if self.fifo.remove(&seq) {
            for fit in fits {
                if let Some(b) = self.by_fit.get_mut(fit) {
                    b.remove(&seq);
                    if b.is_empty() {
                        self.by_fit.remove(fit);
                    }
                }
            }
        }
    }

    pub(super) fn contains(&self, seq: u64) -> bool {
        self.fifo.contains(&seq)
    }

    /// The oldest queued job this worker can serve (`compatible`), over the worker's fits:
    /// one range lookup per fit.
    pub(super) fn first_fit(&self, fits: &[Fit]) -> Option<u64> {
        fits.iter()
            .flat_map(|(kind, key, t)| {
                self.by_fit
                    .range((*kind, key.clone(), 0)..=(*kind, key.clone(), *t))
                    .filter_map(|(_, b)| b.first().copied())
            })
            .min()
    }
}

/// An idle worker's key: its connect order (`connect_seq`, never shared by two workers,
/// so it alone decides the order) and its record.
pub(super) type IdleKey = (u64, WorkerHandle);

/// Idle-eligible workers by connect order, indexed by fit.
#[derive(Clone, Debug, Default)]
pub(super) struct IdlePool {
    pub(super) set: BTreeSet<IdleKey>,
    pub(super) by_fit: BTreeMap<Fit, BTreeSet<IdleKey>>,
}

impl IdlePool {
    pub(super) fn insert(&mut self, key: IdleKey, fits: &[Fit]) {
        for f in fits {
            self.by_fit.entry(f.clone()).or_default().insert(key);
        }
        self.set.insert(key);
    }

    pub(super) fn remove(&mut self, key: &IdleKey, fits: &[Fit]) {
        for f in fits {
            if let Some(b) = self.by_fit.get_mut(f) {
                b.remove(key);
                if b.is_empty() {
                    self.by_fit.remove(f);
                }
            }
        }
        self.set.remove(key);
    }

    /// The earliest-connected idle worker that can serve a job with these fits
    /// ([`job_fits`]): one range lookup per fit.
    pub(super) fn first_fit(&self, fits: &[Fit]) -> Option<IdleKey> {
        fits.iter()
            .flat_map(|(kind, key, v)| {
                self.by_fit
                    .range((*kind, key.clone(), *v)..=(*kind, key.clone(), u32::MAX))
                    .filter_map(|(_, b)| b.first().copied())
            })
            .min()
    }
}

pub(super) fn eligible(w: &WorkerRec) -> bool {
    w.session.is_some()
        && w.slot.is_none()
        && !w.hold
        && w.busy_hint.is_none()
        && w.capabilities.as_ref().is_some_and(|c| {
            c.auto_enabled
                && (c.only_when_idle != Some(true) || c.user_presence == Some(UserPresence::Idle))
        })
}

/// Whether the worker can serve the job, decided without the indexes (the invariants'
/// cross-check): the kind, the VRAM, and the job's model id or its engine's wildcard among
/// the models it advertises for the kind.
pub(super) fn compatible(caps: &WorkerCapabilities, spec: &JobSpec) -> bool {
    let kind = spec.task.kind();
    let engine = spec.model_source.engine.as_str();
    caps.serves_kind(kind)
        && caps.vram_threshold_gb >= spec.vram_gb_estimate
        && advertised(caps, kind)
            .iter()
            .any(|m| *m == spec.model || ModelEngine::of_wildcard(m) == Some(engine))
}

impl Studio {
    pub(super) fn idle_remove(&mut self, worker_id: &str) {
        let Some(h) = self.workers.handle(worker_id) else {
            return;
        };
        if let Some(w) = self.workers.at_mut(h) {
            if w.in_idle {
                w.in_idle = false;
                let fits = std::mem::take(&mut w.idle_fits);
                self.idle.remove(&(w.connect_seq, h), &fits);
            }
        }
    }

    pub(super) fn orphan_remove(&mut self, worker_id: &str) {
        if let Some(w) = self.workers.get_mut(worker_id) {
            if let Some(t) = w.orphan_since.take() {
                self.orphans.remove(&(t, worker_id.to_string()));
            }
        }
    }

    /// Recomputes whether the worker is idle-eligible (and re-indexes it under its current
    /// capabilities); a worker that becomes eligible, or whose capabilities changed
    /// (`force`), is looked at by the next dispatch.
    pub(super) fn refresh(&mut self, worker_id: &str, force: bool) {
        let Some(h) = self.workers.handle(worker_id) else {
            return;
        };
        let Some(w) = self.workers.at(h) else {
            return;
        };
        let key = (w.connect_seq, h);
        let was_idle = w.in_idle;
        // Still idle (every heartbeat of an idle worker): when it stays indexed under the
        // same fits, removing and re-inserting would leave the index as it is.
        if was_idle && eligible(w) && self.idle_indexed(worker_id) {
            if force {
                self.dirty_workers.insert(key);
            }
            return;
        }
        let Some(w) = self.workers.at_mut(h) else {
            return;
        };
        if was_idle {
            let old = std::mem::take(&mut w.idle_fits);
            self.idle.remove(&key, &old);
            w.in_idle = false;
        }
        if eligible(w) {
            let fits = w.capabilities.as_ref().map(worker_fits).unwrap_or_default();
            self.idle.insert(key, &fits);
            w.idle_fits = fits;
            w.in_idle = true;
            if !was_idle || force {
                self.dirty_workers.insert(key);
            }
        }
    }

    /// Whether an idle worker is indexed under the fits of its current capabilities.
    pub(super) fn idle_indexed(&self, worker_id: &str) -> bool {
        let Some(h) = self.workers.handle(worker_id) else {
            return false;
        };
        let Some(w) = self.workers.at(h) else {
            return false;
        };
        let key = (w.connect_seq, h);
        let fits = w.capabilities.as_ref().map(worker_fits).unwrap_or_default();
        fits == w.idle_fits
            && self.idle.set.contains(&key)
            && fits
                .iter()
                .all(|f| self.idle.by_fit.get(f).is_some_and(|b| b.contains(&key)))
    }
}
