//! Stopping a running job from outside: the [`CancelToken`] of the job on this thread.
//!
//! An engine's `dispatch` is a blocking call on a thread of its own; a Rust thread cannot be
//! killed, so whoever runs an engine and may give up on the job (the worker's engine pool,
//! on `CancelJob`: the shutdown grace ran out, the process must end) installs a token for
//! the dispatching thread with [`with_token`] and calls [`CancelToken::cancel`] later, from
//! any thread. Engines that can stop early look at [`current`]: they poll
//! [`CancelToken::is_cancelled`] between steps, and an engine that runs a child process
//! registers a hook with [`CancelToken::on_cancel`] so the child is killed at the moment of
//! the cancel, not at the engine's next poll (the process may be about to exit).
//!
//! Without an installed token (tests, benchmarks) [`current`] gives a token nobody cancels.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

type Hook = Box<dyn Fn() + Send>;

#[derive(Default)]
struct Inner {
    cancelled: AtomicBool,
    next_hook: AtomicU64,
    hooks: Mutex<BTreeMap<u64, Hook>>,
}

/// A shared "stop this job" flag with hooks run once when it is set. Cheap to clone; every
/// clone is the same token.
#[derive(Clone, Default)]
pub struct CancelToken {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelToken")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

fn lock_hooks(inner: &Inner) -> MutexGuard<'_, BTreeMap<u64, Hook>> {
    // Hooks are only inserted and removed under the lock; a panicking hook cannot leave
    // the map half-updated.
    inner.hooks.lock().unwrap_or_else(|e| e.into_inner())
}

impl CancelToken {
    /// A fresh token, not cancelled.
    pub fn new() -> CancelToken {
        CancelToken::default()
    }

    /// Sets the flag and runs every registered hook (once: later calls do nothing).
    pub fn cancel(&self) {
        if self.inner.cancelled.swap(true, Ordering::SeqCst) {
            return;
        }
        // Run under the lock: a hook's registration cannot be dropped (and the resource it
        // guards freed) while the hook runs.
        let hooks = lock_hooks(&self.inner);
        for hook in hooks.values() {
            hook();
        }
    }

    /// Whether [`CancelToken::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::SeqCst)
    }

    /// Runs `hook` when the token is cancelled, for as long as the returned registration
    /// lives (dropping it unregisters the hook). A token that is already cancelled runs
    /// `hook` at once. The hook runs on the cancelling thread, under a lock: keep it short
    /// (a kill signal) and never cancel or register from inside it.
    pub fn on_cancel(&self, hook: impl Fn() + Send + 'static) -> CancelHook {
        let id = self.inner.next_hook.fetch_add(1, Ordering::Relaxed);
        let mut hooks = lock_hooks(&self.inner);
        if self.is_cancelled() {
            hook();
        }
        hooks.insert(id, Box::new(hook));
        CancelHook {
            inner: Arc::clone(&self.inner),
            id,
        }
    }
}

/// A registered [`CancelToken::on_cancel`] hook; dropping it unregisters the hook (waiting
/// for a hook that is running right now to return).
#[must_use = "the hook is unregistered when this is dropped"]
pub struct CancelHook {
    inner: Arc<Inner>,
    id: u64,
}

impl Drop for CancelHook {
    fn drop(&mut self) {
        lock_hooks(&self.inner).remove(&self.id);
    }
}

thread_local! {
    static TOKEN: RefCell<Option<CancelToken>> = const { RefCell::new(None) };
}

/// Runs `f` with `token` as this thread's [`current`] token; the previous one is put back
/// afterwards, also when `f` panics.
pub fn with_token<R>(token: CancelToken, f: impl FnOnce() -> R) -> R {
    crate::thread_scope::with_installed(&TOKEN, token, f)
}

/// The token installed for this thread, or a fresh one nobody else holds (never cancelled).
pub fn current() -> CancelToken {
    TOKEN.with(|t| t.borrow().clone()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn cancel_sets_the_flag_and_runs_live_hooks_once() {
        let token = CancelToken::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = |runs: &Arc<AtomicUsize>| {
            let runs = Arc::clone(runs);
            move || {
                runs.fetch_add(1, Ordering::SeqCst);
            }
        };
        let kept = token.on_cancel(counted(&runs));
        drop(token.on_cancel(counted(&runs)));
        assert!(!token.is_cancelled());
        token.clone().cancel();
        token.cancel();
        assert!(token.is_cancelled());
        assert_eq!(runs.load(Ordering::SeqCst), 1, "only the live hook, once");
        // Registered after the cancel: runs at once.
        let _late = token.on_cancel(counted(&runs));
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        drop(kept);
    }

    #[test]
    fn the_thread_token_is_the_installed_one_while_installed() {
        assert!(!current().is_cancelled());
        let token = CancelToken::new();
        token.cancel();
        let seen = with_token(token, || current().is_cancelled());
        assert!(seen);
        assert!(!current().is_cancelled(), "restored afterwards");
        let other_thread = with_token(CancelToken::new(), || {
            current().cancel();
            std::thread::spawn(|| current().is_cancelled())
                .join()
                .unwrap()
        });
        assert!(!other_thread, "a token belongs to its thread only");
    }
}
