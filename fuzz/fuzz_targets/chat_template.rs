//! `chat_template`: see `studio_fuzz::template` for the input and the checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = studio_fuzz::template::check(data) {
        panic!("chat_template: {e}");
    }
});
