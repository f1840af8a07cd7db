//! A small simulated fleet (studio_sim) from a fuzzer-chosen seed and knobs; the
//! simulation's own invariants must hold. Input format and checks: `studio_fuzz::world`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = studio_fuzz::world::check(data) {
        panic!("world: {e}");
    }
});
