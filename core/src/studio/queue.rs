//! The job queue and the idle pool, both indexed by fit (task kind, VRAM), and the
//! bookkeeping that keeps a worker in the pool exactly while it may get an offer.

use std::collections::{BTreeMap, BTreeSet};

use crate::wire::{TaskKind, UserPresence, WorkerCapabilities};

use super::state::{Fit, WorkerRec};
use super::{JobSpec, Studio};

pub(super) fn vram_bits(v: f32) -> u32 {
    // -0.0 and 0.0 compare equal; give them one key.
    if v == 0.0 {
        0
    } else {
        v.to_bits()
    }
}

pub(super) fn job_fit(spec: &JobSpec) -> Fit {
    (spec.task.kind(), vram_bits(spec.vram_gb_estimate))
}

/// The index keys of a worker: one per kind it serves, with its threshold. A threshold that
/// is negative or NaN serves nothing.
pub(super) fn worker_fits(caps: &WorkerCapabilities) -> Vec<Fit> {
    let t = caps.vram_threshold_gb;
    if t.is_nan() || t < 0.0 {
        return Vec::new();
    }
    TaskKind::ALL
        .into_iter()
        .filter(|k| caps.serves_kind(*k))
        .map(|k| (k, vram_bits(t)))
        .collect()
}

/// The FIFO queue, indexed by fit so that "the oldest job this worker can serve" costs a
/// few range lookups instead of a scan.
#[derive(Clone, Debug, Default)]
pub(super) struct JobQueue {
    pub(super) fifo: BTreeSet<u64>,
    pub(super) by_fit: BTreeMap<Fit, BTreeSet<u64>>,
}

impl JobQueue {
    pub(super) fn insert(&mut self, seq: u64, fit: Fit) {
        if self.fifo.insert(seq) {
            self.by_fit.entry(fit).or_default().insert(seq);
        }
    }

    pub(super) fn remove(&mut self, seq: u64, fit: Fit) {
        if self.fifo.remove(&seq) {
            if let Some(b) = self.by_fit.get_mut(&fit) {
                b.remove(&seq);
                if b.is_empty() {
                    self.by_fit.remove(&fit);
                }
            }
        }
    }

    pub(super) fn contains(&self, seq: u64) -> bool {
        self.fifo.contains(&seq)
    }

    /// The oldest queued job whose kind is served and whose estimate is within the
    /// threshold (`compatible`), over the worker's fits.
    pub(super) fn first_fit(&self, fits: &[Fit]) -> Option<u64> {
        fits.iter()
            .flat_map(|&(kind, t)| {
                self.by_fit
                    .range((kind, 0)..=(kind, t))
                    .filter_map(|(_, b)| b.first().copied())
            })
            .min()
    }
}

/// Idle-eligible workers by connect order, indexed by fit.
#[derive(Clone, Debug, Default)]
pub(super) struct IdlePool {
    pub(super) set: BTreeSet<(u64, String)>,
    pub(super) by_fit: BTreeMap<Fit, BTreeSet<(u64, String)>>,
}

impl IdlePool {
    pub(super) fn insert(&mut self, key: (u64, String), fits: &[Fit]) {
        for f in fits {
            self.by_fit.entry(*f).or_default().insert(key.clone());
        }
        self.set.insert(key);
    }

    pub(super) fn remove(&mut self, key: &(u64, String), fits: &[Fit]) {
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

    /// The earliest-connected idle worker that serves `kind` with a threshold at or above
    /// the estimate.
    pub(super) fn first_fit(&self, (kind, v): Fit) -> Option<&(u64, String)> {
        self.by_fit
            .range((kind, v)..=(kind, u32::MAX))
            .filter_map(|(_, b)| b.first())
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

pub(super) fn compatible(caps: &WorkerCapabilities, spec: &JobSpec) -> bool {
    caps.serves_kind(spec.task.kind()) && caps.vram_threshold_gb >= spec.vram_gb_estimate
}

impl Studio {
    pub(super) fn idle_remove(&mut self, worker_id: &str) {
        if let Some(w) = self.workers.get_mut(worker_id) {
            if w.in_idle {
                w.in_idle = false;
                let fits = std::mem::take(&mut w.idle_fits);
                self.idle
                    .remove(&(w.connect_seq, worker_id.to_string()), &fits);
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
        let Some(w) = self.workers.get(worker_id) else {
            return;
        };
        let key = (w.connect_seq, worker_id.to_string());
        let was_idle = w.in_idle;
        // Still idle (every heartbeat of an idle worker): when it stays indexed under the
        // same fits, removing and re-inserting would leave the index as it is.
        if was_idle && eligible(w) && self.idle_indexed(worker_id) {
            if force {
                self.dirty_workers.insert(key);
            }
            return;
        }
        let Some(w) = self.workers.get_mut(worker_id) else {
            return;
        };
        if was_idle {
            let old = std::mem::take(&mut w.idle_fits);
            self.idle.remove(&key, &old);
            w.in_idle = false;
        }
        if eligible(w) {
            let fits = w.capabilities.as_ref().map(worker_fits).unwrap_or_default();
            self.idle.insert(key.clone(), &fits);
            w.idle_fits = fits;
            w.in_idle = true;
            if !was_idle || force {
                self.dirty_workers.insert(key);
            }
        }
    }

    /// Whether an idle worker is indexed under the fits of its current capabilities.
    pub(super) fn idle_indexed(&self, worker_id: &str) -> bool {
        let Some(w) = self.workers.get(worker_id) else {
            return false;
        };
        let key = (w.connect_seq, worker_id.to_string());
        let fits = w.capabilities.as_ref().map(worker_fits).unwrap_or_default();
        fits == w.idle_fits
            && self.idle.set.contains(&key)
            && fits
                .iter()
                .all(|f| self.idle.by_fit.get(f).is_some_and(|b| b.contains(&key)))
    }
}
