//! The worker machine under a fuzzer-chosen sequence of inputs and time steps, with the
//! core's invariants checked after every step. Input format and checks:
//! `studio_fuzz::machine`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = studio_fuzz::machine::check(data) {
        panic!("worker_machine: {e}");
    }
});
