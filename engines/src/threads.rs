//! A persistent thread pool for the kernels of the engines' own CPU forward passes (the
//! LLM's and Whisper's; not the shells' engine pool, which runs whole jobs). Feature `llm`
//! or `whisper`; one process-wide pool ([`ThreadPool::global`]) serves both.
//!
//! [`ThreadPool::run`] calls a task on the calling thread (index 0) and on every worker
//! thread (indices 1..n) that picks it up before the caller's own call returns; tasks share
//! out the work themselves (see [`ThreadPool::for_each_chunk`]: the threads take chunks in
//! turn until none is left). A worker that is late, say descheduled on a busy machine, skips the task
//! rather than being waited for: the caller only waits for workers already inside it. A
//! dispatch costs a few hundred nanoseconds when the workers are awake: they spin for
//! [`SPIN`] after each task, watching for the next one, then block on a condition
//! variable, so an idle pool uses no CPU.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker (or a caller waiting for workers) spins before it blocks.
pub const SPIN: Duration = Duration::from_micros(200);

type Task = &'static (dyn Fn(usize) + Sync);

/// The gate's bit saying the current task takes no more workers.
const CLOSED: usize = 1 << (usize::BITS - 1);

struct State {
    task: Option<Task>,
    sleepers: usize,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    epoch: AtomicU64,
    shutdown: AtomicBool,
    /// [`CLOSED`] while no task takes new threads, plus the number of workers inside it.
    gate: AtomicUsize,
    done_lock: Mutex<()>,
    done: Condvar,
    panicked: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A fixed set of threads running one task at a time.
pub struct ThreadPool {
    shared: Arc<Shared>,
    threads: usize,
    handles: Vec<JoinHandle<()>>,
    /// Serializes callers (two jobs on two models may share the pool).
    dispatch: Mutex<()>,
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool")
            .field("threads", &self.threads)
            .finish()
    }
}

impl ThreadPool {
    /// A pool of `threads` threads in all (the caller counts as one; at least 1).
    pub fn new(threads: usize) -> ThreadPool {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                task: None,
                sleepers: 0,
            }),
            wake: Condvar::new(),
            epoch: AtomicU64::new(0),
            shutdown: AtomicBool::new(false),
            gate: AtomicUsize::new(CLOSED),
            done_lock: Mutex::new(()),
            done: Condvar::new(),
            panicked: AtomicBool::new(false),
        });
        let handles = (1..threads)
            .map(|i| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("cpu-pool-{i}"))
                    .spawn(move || worker(&shared, i))
                    .expect("spawning a CPU pool thread")
            })
            .collect();
        ThreadPool {
            shared,
            threads,
            handles,
            dispatch: Mutex::new(()),
        }
    }

    /// The process-wide pool: `STUDIO_LLM_THREADS` threads when set (a positive integer),
    /// else one per core (`std::thread::available_parallelism`).
    pub fn global() -> &'static ThreadPool {
        static POOL: std::sync::OnceLock<ThreadPool> = std::sync::OnceLock::new();
        POOL.get_or_init(|| ThreadPool::new(default_threads()))
    }

    /// Threads in all, the caller included.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Calls `task(0)` here and `task(i)` on each worker `i` (in `1..threads()`) that
    /// picks the task up before `task(0)` returns, concurrently, and returns when every
    /// call that started has returned. A panic in a task is re-raised here after that.
    pub fn run(&self, task: &(dyn Fn(usize) + Sync)) {
        if self.threads == 1 {
            task(0);
            return;
        }
        let _serial = lock(&self.dispatch);
        let sh = &*self.shared;
        // SAFETY: workers only call `task` between a successful entry through the gate
        // (opened below) and their exit from it, and this function does not return (nor
        // unwind: the caller's share runs under `catch_unwind`) before the gate is closed
        // and no worker is inside, after which none can enter and the slot is cleared. So
        // the borrow outlives every use despite the `'static` the slot's type claims: the
        // lifetime erasure a scoped thread pool needs.
        let erased: Task = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Task>(task) };
        {
            let mut st = lock(&sh.state);
            st.task = Some(erased);
            sh.epoch.fetch_add(1, Ordering::Release);
            // Open the gate once late workers of the last task have backed out of it.
            while sh
                .gate
                .compare_exchange_weak(CLOSED, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                std::hint::spin_loop();
            }
            if st.sleepers > 0 {
                sh.wake.notify_all();
            }
        }
        let mine = catch_unwind(AssertUnwindSafe(|| task(0)));
        // Take no more workers; wait for those inside: spin a little, then block.
        sh.gate.fetch_or(CLOSED, Ordering::AcqRel);
        let started = Instant::now();
        let mut spins = 0u32;
        while sh.gate.load(Ordering::Acquire) != CLOSED {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) && started.elapsed() > SPIN {
                let mut g = lock(&sh.done_lock);
                while sh.gate.load(Ordering::Acquire) != CLOSED {
                    g = sh
                        .done
                        .wait_timeout(g, Duration::from_millis(10))
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                break;
            }
            std::hint::spin_loop();
        }
        lock(&sh.state).task = None;
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        if sh.panicked.swap(false, Ordering::AcqRel) {
            panic!("a task of the CPU thread pool panicked");
        }
    }

    /// Splits `0..n` into chunks of `chunk` (the last one shorter) and calls `f(thread,
    /// start..end)` for each, the threads taking chunks in order as they get free (so a
    /// thread the OS delays does less of the work).
    pub fn for_each_chunk(
        &self,
        n: usize,
        chunk: usize,
        f: &(dyn Fn(usize, std::ops::Range<usize>) + Sync),
    ) {
        let chunk = chunk.max(1);
        let chunks = n.div_ceil(chunk);
        if chunks == 0 {
            return;
        }
        if chunks == 1 || self.threads == 1 {
            for c in 0..chunks {
                f(0, c * chunk..((c + 1) * chunk).min(n));
            }
            return;
        }
        let next = AtomicUsize::new(0);
        self.run(&|t| loop {
            let c = next.fetch_add(1, Ordering::Relaxed);
            if c >= chunks {
                break;
            }
            f(t, c * chunk..((c + 1) * chunk).min(n));
        });
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        {
            let _st = lock(&self.shared.state);
            self.shared.wake.notify_all();
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// `STUDIO_LLM_THREADS` when it is a positive integer, else the available parallelism.
pub fn default_threads() -> usize {
    std::env::var("STUDIO_LLM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}

fn worker(sh: &Shared, index: usize) {
    let mut seen = 0u64;
    loop {
        // Spin for the next task a little ...
        let started = Instant::now();
        let mut spins = 0u32;
        while sh.epoch.load(Ordering::Acquire) == seen && !sh.shutdown.load(Ordering::Acquire) {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) && started.elapsed() > SPIN {
                break;
            }
            std::hint::spin_loop();
        }
        // ... then block until there is one.
        {
            let mut st = lock(&sh.state);
            while sh.epoch.load(Ordering::Acquire) == seen && !sh.shutdown.load(Ordering::Acquire) {
                st.sleepers += 1;
                st = sh.wake.wait(st).unwrap_or_else(|p| p.into_inner());
                st.sleepers -= 1;
            }
            if sh.shutdown.load(Ordering::Acquire) {
                return;
            }
            seen = sh.epoch.load(Ordering::Acquire);
        }
        // Enter the task unless it is already closed (the caller finished without us).
        if sh.gate.fetch_add(1, Ordering::AcqRel) & CLOSED != 0 {
            sh.gate.fetch_sub(1, Ordering::AcqRel);
            continue;
        }
        // Inside the gate the slot holds the open task and stays set until we leave, and
        // the epoch is that task's.
        seen = sh.epoch.load(Ordering::Acquire);
        let task = lock(&sh.state).task;
        if let Some(task) = task {
            if catch_unwind(AssertUnwindSafe(|| task(index))).is_err() {
                sh.panicked.store(true, Ordering::Release);
            }
        }
        if sh.gate.fetch_sub(1, Ordering::AcqRel) == CLOSED | 1 {
            let _g = lock(&sh.done_lock);
            sh.done.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_run_each_task_at_most_once_and_the_caller_always() {
        for threads in [1, 2, 3, 5] {
            let pool = ThreadPool::new(threads);
            let mut joined = 0;
            for _ in 0..200 {
                let hits: Vec<AtomicUsize> = (0..threads).map(|_| AtomicUsize::new(0)).collect();
                pool.run(&|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                    // Long enough for the workers to join.
                    std::thread::sleep(Duration::from_micros(300));
                });
                assert_eq!(hits[0].load(Ordering::Relaxed), 1);
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) <= 1));
                joined += hits
                    .iter()
                    .filter(|h| h.load(Ordering::Relaxed) == 1)
                    .count();
            }
            if threads > 1 {
                assert!(joined > 200, "{threads} threads: the workers never joined");
            }
        }
    }

    #[test]
    fn chunks_cover_the_range_exactly_once() {
        for threads in [1, 2, 3] {
            let pool = ThreadPool::new(threads);
            for (n, chunk) in [(0, 4), (1, 4), (7, 3), (577, 16), (1000, 1), (33, 100)] {
                let seen: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                pool.for_each_chunk(n, chunk, &|t, r| {
                    assert!(t < threads);
                    assert!(r.len() <= chunk);
                    for i in r {
                        seen[i].fetch_add(1, Ordering::Relaxed);
                    }
                });
                assert!(
                    seen.iter().all(|s| s.load(Ordering::Relaxed) == 1),
                    "{n} {chunk}"
                );
            }
        }
    }

    #[test]
    fn a_panicking_task_is_reported_and_the_pool_still_works() {
        let pool = ThreadPool::new(3);
        for bad in [0, 2] {
            let r = catch_unwind(AssertUnwindSafe(|| {
                pool.run(&|i| {
                    std::thread::sleep(Duration::from_millis(5));
                    if i == bad {
                        panic!("boom");
                    }
                })
            }));
            assert!(r.is_err(), "a panic on thread {bad}");
        }
        let n = AtomicUsize::new(0);
        pool.for_each_chunk(100, 1, &|_, r| {
            n.fetch_add(r.len(), Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 100);
    }

    #[test]
    fn idle_workers_block() {
        let pool = ThreadPool::new(2);
        pool.run(&|_| {});
        // The worker spins for SPIN, then sleeps; on a loaded machine it may be scheduled
        // late, so wait (generously) for it rather than for a fixed time.
        let end = std::time::Instant::now() + Duration::from_secs(30);
        while lock(&pool.shared.state).sleepers != 1 && std::time::Instant::now() < end {
            std::thread::sleep(SPIN);
        }
        assert_eq!(lock(&pool.shared.state).sleepers, 1);
        // And wake up again.
        let n = AtomicUsize::new(0);
        pool.run(&|_| {
            n.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(20));
        });
        assert_eq!(n.load(Ordering::Relaxed), 2);
    }
}
