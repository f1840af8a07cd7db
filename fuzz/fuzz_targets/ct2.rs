//! `ct2`: see `studio_fuzz::ct2` for the input and the checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = studio_fuzz::ct2::check(data) {
        panic!("ct2: {e}");
    }
});
