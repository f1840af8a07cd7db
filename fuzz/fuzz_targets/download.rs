//! `download`: see `studio_fuzz::download` for the input and the checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = studio_fuzz::download::check(data) {
        panic!("download: {e}");
    }
});
