//! The loaded-model cache every real engine keeps its models in (LLM, Whisper, diffusion).
//!
//! A loaded model is known by the files it was loaded from ([`FileIdentity`]: each file's
//! path, size and modification time) and charged a number of bytes against the settings'
//! `model_memory_budget_bytes` ([`crate::EngineSettings`]). The rules:
//!
//! * **Identity.** A lookup with the same paths and the same sizes and mtimes is a hit. The
//!   same paths with another size or mtime (the file was downloaded again) drop the loaded
//!   model: it is loaded afresh.
//! * **Room before a load.** Before a model is loaded the cache evicts the least recently
//!   used models until one more fits its model count ([`ModelCache::new`]'s `max_models`),
//!   so the old model is released before the new one takes memory. An engine that knows
//!   the new model's charge before loading it (the LLM engine reads it from the GGUF
//!   header) asks [`Room::reserve`] for that much: a charge alone larger than the budget is
//!   refused with a clear error (not retryable: this worker cannot run the model), anything
//!   else evicts least recently used models until it fits.
//! * **Kept after a load.** A loaded model whose charge fits the budget is kept (evicting
//!   least recently used others if needed); one whose charge exceeds it is handed to the
//!   job and released after it (engines that learn the charge only from the loaded model).
//!
//! Loads happen under the cache's lock: two jobs asking for the same model load it once.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use crate::error::EngineError;

/// No limit on the number of models kept (only the memory budget counts).
pub const UNLIMITED_MODELS: usize = usize::MAX;

/// A file's size and modification time: what tells a file downloaded again from the copy
/// a model was loaded from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileStamp {
    /// Size in bytes.
    pub len: u64,
    /// Modification time, where the platform has one.
    pub modified: Option<SystemTime>,
}

impl FileStamp {
    /// The stamp of the file at `path`; an I/O error (`model file <path>: <why>`) when it
    /// cannot be read.
    pub fn of(path: &Path) -> Result<FileStamp, EngineError> {
        let meta = std::fs::metadata(path)
            .map_err(|e| EngineError::io(format!("model file {}: {e}", path.display())))?;
        Ok(FileStamp {
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }
}

/// The files a model was loaded from, each with its [`FileStamp`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileIdentity {
    files: Vec<(PathBuf, FileStamp)>,
}

impl FileIdentity {
    /// An identity from paths and the stamps they had.
    pub fn new(files: Vec<(PathBuf, FileStamp)>) -> FileIdentity {
        FileIdentity { files }
    }

    /// The identity of the files at `paths` as they are now ([`FileStamp::of`] each).
    pub fn of<'a>(paths: impl IntoIterator<Item = &'a Path>) -> Result<FileIdentity, EngineError> {
        let files = paths
            .into_iter()
            .map(|p| Ok((p.to_path_buf(), FileStamp::of(p)?)))
            .collect::<Result<_, EngineError>>()?;
        Ok(FileIdentity { files })
    }

    /// The first file's path (an engine whose models are one file: that file).
    pub fn path(&self) -> Option<&Path> {
        self.files.first().map(|(p, _)| p.as_path())
    }

    /// Whether `other` names the same files (whatever their stamps).
    fn same_files(&self, other: &FileIdentity) -> bool {
        self.files.len() == other.files.len()
            && self.files.iter().zip(&other.files).all(|(a, b)| a.0 == b.0)
    }
}

struct Entry<M> {
    identity: FileIdentity,
    charge: u64,
    last_used: u64,
    model: M,
}

struct State<M> {
    entries: Vec<Entry<M>>,
    /// Counts lookups; an entry's `last_used` is the count at its last use.
    clock: u64,
}

impl<M> State<M> {
    fn charged(&self) -> u64 {
        self.entries.iter().map(|e| e.charge).sum()
    }

    /// Evicts least recently used entries until `charge` more bytes and one more model fit.
    fn evict_for(&mut self, charge: u64, budget: u64, max_models: usize) {
        while !self.entries.is_empty()
            && (self.charged().saturating_add(charge) > budget || self.entries.len() >= max_models)
        {
            let lru = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(i, _)| i)
                .expect("non-empty");
            self.entries.remove(lru);
        }
    }
}

/// Loaded models within a memory budget (see the module docs). `M` is what a job gets:
/// a cheap handle such as an `Arc`.
pub struct ModelCache<M> {
    budget: u64,
    max_models: usize,
    loads: AtomicU64,
    state: Mutex<State<M>>,
}

impl<M> std::fmt::Debug for ModelCache<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelCache")
            .field("budget", &self.budget)
            .field("max_models", &self.max_models)
            .field("loads", &self.loads())
            .finish()
    }
}

/// A model handed out by [`ModelCache::get_or_load`].
#[derive(Clone, Debug)]
pub struct Fetched<M> {
    /// The model.
    pub model: M,
    /// Whether it was loaded for this call (false: it was loaded already).
    pub loaded: bool,
    /// Whether the cache keeps it for the next job (false: its charge exceeds the budget
    /// and it is released when the caller drops it).
    pub kept: bool,
}

/// The cache while a model is being loaded: what a loader that learns the model's charge
/// before loading it tells the cache ([`Room::reserve`]).
pub struct Room<'a, M> {
    cache: &'a ModelCache<M>,
    state: &'a mut State<M>,
}

impl<M> Room<'_, M> {
    /// Makes room for a model charged `charge` bytes before it is loaded: refuses a charge
    /// beyond the whole budget (`<what> needs about N MiB loaded, more than the model memory
    /// budget of M MiB`, not retryable), else evicts least recently used models until it
    /// fits.
    pub fn reserve(&mut self, charge: u64, what: &str) -> Result<(), EngineError> {
        let budget = self.cache.budget;
        if charge > budget {
            return Err(EngineError::failed(
                format!(
                    "{what} needs about {} MiB loaded, more than the model memory budget of \
                     {} MiB",
                    charge >> 20,
                    budget >> 20
                ),
                false,
            ));
        }
        self.state.evict_for(charge, budget, self.cache.max_models);
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<M> ModelCache<M> {
    /// A cache keeping at most `max_models` models ([`UNLIMITED_MODELS`] for no count
    /// limit) whose charges sum to at most `budget` bytes.
    pub fn new(budget: u64, max_models: usize) -> ModelCache<M> {
        ModelCache {
            budget,
            max_models: max_models.max(1),
            loads: AtomicU64::new(0),
            state: Mutex::new(State {
                entries: Vec::new(),
                clock: 0,
            }),
        }
    }

    /// The memory budget, bytes.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// How many models have been loaded (cache misses that loaded) so far.
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }
}

impl<M: Clone> ModelCache<M> {
    /// The identities of the models kept now, least recently used first.
    pub fn loaded(&self) -> Vec<FileIdentity> {
        let state = lock(&self.state);
        let mut entries: Vec<(u64, &FileIdentity)> = state
            .entries
            .iter()
            .map(|e| (e.last_used, &e.identity))
            .collect();
        entries.sort_by_key(|(used, _)| *used);
        entries.into_iter().map(|(_, id)| id.clone()).collect()
    }

    /// The bytes charged by the models kept now.
    pub fn charged(&self) -> u64 {
        lock(&self.state).charged()
    }

    /// Releases every kept model (jobs holding one keep it until they finish).
    pub fn clear(&self) {
        lock(&self.state).entries.clear();
    }

    /// The model loaded from `identity`: the kept one when its files are unchanged, else
    /// `load`'s (run under the cache's lock after room for one more model was made; it
    /// returns the model and its charge, and may [`Room::reserve`] the charge first).
    pub fn get_or_load(
        &self,
        identity: FileIdentity,
        load: impl FnOnce(&mut Room<'_, M>) -> Result<(M, u64), EngineError>,
    ) -> Result<Fetched<M>, EngineError> {
        let mut state = lock(&self.state);
        state.clock += 1;
        let now = state.clock;
        if let Some(i) = state
            .entries
            .iter()
            .position(|e| e.identity.same_files(&identity))
        {
            if state.entries[i].identity == identity {
                state.entries[i].last_used = now;
                return Ok(Fetched {
                    model: state.entries[i].model.clone(),
                    loaded: false,
                    kept: true,
                });
            }
            // The files changed on disk (downloaded again): load them afresh.
            state.entries.remove(i);
        }
        state.evict_for(0, self.budget, self.max_models);
        let (model, charge) = load(&mut Room {
            cache: self,
            state: &mut state,
        })?;
        self.loads.fetch_add(1, Ordering::Relaxed);
        let kept = charge <= self.budget;
        if kept {
            state.evict_for(charge, self.budget, self.max_models);
            state.entries.push(Entry {
                identity,
                charge,
                last_used: now,
                model: model.clone(),
            });
        }
        Ok(Fetched {
            model,
            loaded: true,
            kept,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn id(name: &str, len: u64) -> FileIdentity {
        FileIdentity::new(vec![(
            PathBuf::from(name),
            FileStamp {
                len,
                modified: None,
            },
        )])
    }

    fn names(cache: &ModelCache<&'static str>) -> Vec<String> {
        cache
            .loaded()
            .iter()
            .map(|i| i.path().unwrap().display().to_string())
            .collect()
    }

    /// Loads `name` charged `charge` (reserved before the load when `reserve`); the
    /// model is the name itself.
    fn get(
        cache: &ModelCache<&'static str>,
        name: &'static str,
        charge: u64,
        reserve: bool,
    ) -> Result<Fetched<&'static str>, EngineError> {
        cache.get_or_load(id(name, 1), |room| {
            if reserve {
                room.reserve(charge, &format!("model file {name}"))?;
            }
            Ok((name, charge))
        })
    }

    #[test]
    fn the_least_recently_used_models_go_first() {
        let cache = ModelCache::new(100, UNLIMITED_MODELS);
        get(&cache, "a", 40, true).unwrap();
        get(&cache, "b", 40, true).unwrap();
        assert_eq!(names(&cache), ["a", "b"]);
        // Using `a` makes `b` the least recently used: `c` evicts `b`, not `a`.
        assert!(!get(&cache, "a", 40, true).unwrap().loaded);
        assert_eq!(names(&cache), ["b", "a"]);
        get(&cache, "c", 40, true).unwrap();
        assert_eq!(names(&cache), ["a", "c"]);
        assert_eq!(cache.charged(), 80);
        // A model needing the whole budget evicts both.
        get(&cache, "d", 100, true).unwrap();
        assert_eq!(names(&cache), ["d"]);
        assert_eq!(cache.loads(), 4);
    }

    #[test]
    fn a_charge_beyond_the_budget_is_refused_before_loading_and_evicts_nothing() {
        let cache = ModelCache::new(100 << 20, UNLIMITED_MODELS);
        get(&cache, "a", 60 << 20, true).unwrap();
        let loaded = Cell::new(false);
        let e = cache
            .get_or_load(id("big", 1), |room| {
                room.reserve(101 << 20, "model file big")?;
                loaded.set(true);
                Ok(("big", 101 << 20))
            })
            .unwrap_err();
        assert!(!e.retryable(), "{e}");
        assert_eq!(
            e.message,
            "model file big needs about 101 MiB loaded, more than the model memory budget \
             of 100 MiB"
        );
        assert!(!loaded.get(), "the loader went on after the refusal");
        assert_eq!(names(&cache), ["a"]);
        assert_eq!(cache.loads(), 1);
    }

    #[test]
    fn a_model_over_budget_known_only_after_loading_is_used_once_not_kept() {
        let cache = ModelCache::new(100, 1);
        get(&cache, "a", 50, false).unwrap();
        let big = get(&cache, "big", 150, false).unwrap();
        assert_eq!((big.model, big.loaded, big.kept), ("big", true, false));
        // Room for it was made before the load: `a` is gone, and `big` is not kept.
        assert!(cache.loaded().is_empty());
        let again = get(&cache, "big", 150, false).unwrap();
        assert!(again.loaded);
        assert_eq!(cache.loads(), 3);
    }

    #[test]
    fn a_changed_file_is_loaded_again() {
        let cache = ModelCache::new(100, UNLIMITED_MODELS);
        let load = |len: u64| {
            cache
                .get_or_load(id("m", len), |_| Ok(("m", 10)))
                .unwrap()
                .loaded
        };
        assert!(load(1));
        assert!(!load(1));
        assert!(load(2), "same path, other size: a fresh load");
        assert_eq!(cache.loaded(), [id("m", 2)]);
        assert_eq!(cache.loads(), 2);
    }

    #[test]
    fn max_models_releases_the_old_model_before_the_next_load() {
        let cache = ModelCache::new(1000, 1);
        get(&cache, "a", 10, false).unwrap();
        let seen = Cell::new(usize::MAX);
        cache
            .get_or_load(id("b", 1), |room| {
                seen.set(room.state.entries.len());
                Ok(("b", 10))
            })
            .unwrap();
        assert_eq!(seen.get(), 0, "`a` was still held during the load of `b`");
        assert_eq!(names(&cache), ["b"]);
    }

    #[test]
    fn a_failed_load_keeps_nothing_and_counts_no_load() {
        let cache: ModelCache<&'static str> = ModelCache::new(100, UNLIMITED_MODELS);
        let e = cache
            .get_or_load(id("bad", 1), |_| {
                Err(EngineError::failed("bad file", false))
            })
            .unwrap_err();
        assert_eq!(e.message, "bad file");
        assert!(cache.loaded().is_empty());
        assert_eq!(cache.loads(), 0);
        get(&cache, "a", 10, true).unwrap();
        cache.clear();
        assert!(cache.loaded().is_empty());
        assert_eq!(cache.charged(), 0);
    }

    #[test]
    fn identities_compare_paths_and_stamps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        std::fs::write(&path, b"abc").unwrap();
        let a = FileIdentity::of([path.as_path()]).unwrap();
        assert_eq!(a.path(), Some(path.as_path()));
        assert_eq!(a, FileIdentity::of([path.as_path()]).unwrap());
        std::fs::write(&path, b"abcd").unwrap();
        let b = FileIdentity::of([path.as_path()]).unwrap();
        assert_ne!(a, b);
        assert!(a.same_files(&b));
        let e = FileIdentity::of([dir.path().join("missing").as_path()]).unwrap_err();
        assert!(e.message.starts_with("model file "), "{e}");
        assert!(e.retryable(), "an I/O error: {e}");
    }
}
