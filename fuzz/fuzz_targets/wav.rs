//! `wav`: see `studio_fuzz::audio` for the input and the checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = studio_fuzz::audio::check(data) {
        panic!("wav: {e}");
    }
});
