//! How many heap allocations the worker machine makes for one llm job, in a steady stream
//! of them: the offer decoded and answered, the result delivered and kept, the ack, and
//! each job's share of the log batches and heartbeats. Allocations are counted by a global
//! allocator, on this test's thread only, so the number is exact and the same on every
//! run. It is the loop thread's share of a job in the core; what the shells allocate
//! around it is not counted here.
//!
//! A bound, not a timing: an allocation costs tens of nanoseconds, and a job's time on the
//! loop thread is a few tens of microseconds (`studio-bench`), so a change that adds a
//! dozen allocations to every job is worth seeing. Raise the bound on purpose, with the
//! reason in the commit.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use studio_core::testing::{registered, Driver, LlmJob};

/// The most allocations one llm job may cost the machine (see the module docs).
const MAX_ALLOCATIONS_PER_LLM_JOB: u64 = 90;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// The system allocator, counting the allocations of each thread.
struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// Runs `jobs` llm jobs (`LlmJob`, `Driver::run_llm_job`: 5 ms apart, so the count takes in
/// the log flushes and heartbeats) and returns the allocations they cost.
fn run_jobs(d: &mut Driver, first: usize, jobs: usize) -> u64 {
    let inputs: Vec<LlmJob> = (first..first + jobs).map(LlmJob::new).collect();
    let before = allocations();
    for job in inputs {
        d.run_llm_job(job);
    }
    allocations() - before
}

#[test]
fn an_llm_job_costs_the_machine_a_bounded_number_of_allocations() {
    let mut d = Driver::live(registered("http://127.0.0.1:9"));
    // Warm up: the queues and rings reach their working sizes.
    run_jobs(&mut d, 0, 2_000);
    let jobs = 2_000;
    let total = run_jobs(&mut d, 2_000, jobs);
    let per_job = total as f64 / jobs as f64;
    eprintln!("{per_job:.1} allocations per llm job ({total} for {jobs} jobs)");
    assert!(
        per_job <= MAX_ALLOCATIONS_PER_LLM_JOB as f64,
        "{per_job:.1} allocations per llm job, over the bound of {MAX_ALLOCATIONS_PER_LLM_JOB}"
    );
    // The jobs really ran: each one is in the stats.
    assert_eq!(d.worker.status().stats.completed, 4_000);
}
