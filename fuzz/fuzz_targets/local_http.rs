//! `local_http`: see `studio_fuzz::local_http` for the input and the checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = studio_fuzz::local_http::check(data) {
        panic!("local_http: {e}");
    }
});
