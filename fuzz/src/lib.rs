//! Harness logic of the fuzz targets in `fuzz_targets/`, kept in a library so the input
//! encodings and invariant checks have their own tests (`cargo test` in `fuzz/`), including
//! tests proving each check can fail.
//!
//! * [`frames`]: the frame codec (both directions) and the HTTP bodies the worker parses.
//! * [`machine`]: the worker session machine under fuzzer-chosen inputs and time steps.
//! * [`world`]: whole simulated fleets (`studio_sim`) from a fuzzer-chosen seed and knobs.
//! * [`audio`]: an uploaded WAV through the decoder and the resampler.
//! * [`gguf`]: a GGUF model file's header, metadata, tokenizer and chat template.
//! * [`ct2`]: a CTranslate2 `model.bin` and the Whisper dimensions read from it.
//! * [`template`]: a model's chat template rendered over a conversation.
//! * [`local_http`]: the loopback studio's HTTP and multipart parser and its admin guard.
//! * [`download`]: the model download against a scripted loopback server.
//! * [`redact`]: trace and log redaction: a secret never survives.
//!
//! Every check returns `Err(description)`; the targets turn an `Err` into a panic, which
//! libFuzzer reports as a crash and saves under `fuzz/artifacts/<target>/`.
//!
//! Every check is on, always: the core bugs these targets found are fixed, and their
//! inputs are kept as `regression-*` seeds in `corpus/<target>/` (each with a test here
//! asserting the fixed behaviour).

use std::sync::OnceLock;

pub mod audio;
pub mod ct2;
pub mod download;
pub mod frames;
pub mod gguf;
pub mod local_http;
pub mod machine;
pub mod reader;
pub mod redact;
pub mod template;
pub mod world;

/// Whether the harnesses narrate each step on stderr (`STUDIO_FUZZ_VERBOSE=1`), for
/// reading a crash: `STUDIO_FUZZ_VERBOSE=1 cargo fuzz run <target> <crash-file>`.
pub fn verbose() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    #[allow(clippy::disallowed_methods)] // the harness, not the core, reads the environment
    *ON.get_or_init(|| std::env::var_os("STUDIO_FUZZ_VERBOSE").is_some_and(|v| v == "1"))
}

#[cfg(test)]
mod tests {
    /// The committed seeds of `target`, by file name.
    fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("corpus")
            .join(target);
        let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| {
                let path = e.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read(&path).unwrap())
            })
            .collect();
        out.sort();
        assert!(!out.is_empty(), "no seeds in {}", dir.display());
        out
    }

    #[test]
    fn every_committed_seed_of_the_decoder_and_parser_targets_passes() {
        let targets: [(&str, fn(&[u8]) -> Result<(), String>); 7] = [
            ("wav", super::audio::check),
            ("gguf", super::gguf::check),
            ("ct2", super::ct2::check),
            ("chat_template", super::template::check),
            ("local_http", super::local_http::check),
            ("download", super::download::check),
            ("redact", super::redact::check),
        ];
        for (target, check) in targets {
            for (name, data) in seeds(target) {
                check(&data).unwrap_or_else(|e| panic!("{target}/{name}: {e}"));
            }
        }
    }
}
