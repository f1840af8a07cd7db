//! `gguf`: see `studio_fuzz::gguf` for the input and the checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = studio_fuzz::gguf::check(data) {
        panic!("gguf: {e}");
    }
});
