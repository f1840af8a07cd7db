//! Harness logic of the fuzz targets in `fuzz_targets/`, kept in a library so the input
//! encodings and invariant checks have their own tests (`cargo test` in `fuzz/`), including
//! tests proving each check can fail.
//!
//! * [`frames`]: the frame codec (both directions) and the HTTP bodies the worker parses.
//! * [`machine`]: the worker session machine under fuzzer-chosen inputs and time steps.
//! * [`world`]: whole simulated fleets (`studio_sim`) from a fuzzer-chosen seed and knobs.
//!
//! Every check returns `Err(description)`; the targets turn an `Err` into a panic, which
//! libFuzzer reports as a crash and saves under `fuzz/artifacts/<target>/`.
//!
//! Every check is on, always: the core bugs these targets found are fixed, and their
//! inputs are kept as `regression-*` seeds in `corpus/<target>/` (each with a test here
//! asserting the fixed behaviour).

use std::sync::OnceLock;

pub mod frames;
pub mod machine;
pub mod reader;
pub mod world;

/// Whether the harnesses narrate each step on stderr (`STUDIO_FUZZ_VERBOSE=1`), for
/// reading a crash: `STUDIO_FUZZ_VERBOSE=1 cargo fuzz run <target> <crash-file>`.
pub fn verbose() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    #[allow(clippy::disallowed_methods)] // the harness, not the core, reads the environment
    *ON.get_or_init(|| std::env::var_os("STUDIO_FUZZ_VERBOSE").is_some_and(|v| v == "1"))
}
