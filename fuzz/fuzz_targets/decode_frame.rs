//! The fuzzer's bytes as a text frame, through both frame decoders, the HTTP body types
//! and `redact_json`: no panic, size limits honoured, decode/encode round trips. See
//! `studio_fuzz::frames` for the exact checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = studio_fuzz::frames::check(data) {
        panic!("decode_frame: {e}");
    }
});
