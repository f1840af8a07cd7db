//! `redact`: see `studio_fuzz::redact` for the input and the checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = studio_fuzz::redact::check(data) {
        panic!("redact: {e}");
    }
});
