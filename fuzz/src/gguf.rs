//! `gguf`: the fuzzer's bytes as a GGUF model file, through everything the LLM engine reads
//! before it loads weights ([`studio_engines::llm::inspect_bytes`]): the metadata pre-check,
//! candle's header reader, the header facts and memory charge, the native path's shape
//! check, the tokenizer built from the vocabulary and the chat template.
//!
//! Checks:
//! * no panic and no abort (`general.alignment = 0` divided by zero in candle's reader
//!   before the pre-check; a metadata array of a billion one-byte elements took tens of
//!   times its size in memory);
//! * every refusal is not retryable (the same file fails the same way everywhere), and
//!   whatever [`studio_engines::llm::check_metadata`] refuses, the engine refuses;
//! * an accepted header reports the file's own size as its charge, and its tokenizer
//!   encodes a fixed text to ids it can decode back to tokens it knows
//!   ([`check_accepted`]); its chat template renders a message or fails cleanly, within
//!   the prompt cap.
//!
//! Seeds (`corpus/gguf/`): tiny GGUF v3 files with a byte-level vocabulary, merges and a
//! chat template, variants with every metadata type, a zero alignment and an oversized
//! array.

use std::io::Cursor;

use studio_core::wire::ChatMessage;
use studio_engines::llm::template::{ChatTemplate, TemplateInput, MAX_RENDERED_PROMPT_BYTES};
use studio_engines::llm::tokenizer::GgufTokenizer;
use studio_engines::llm::{check_metadata, inspect_bytes, GgufInfo};

/// Runs every check on `data`.
pub fn check(data: &[u8]) -> Result<(), String> {
    let precheck = check_metadata(&mut Cursor::new(data));
    match inspect_bytes(data) {
        Err(e) => {
            if e.retryable() {
                return Err(format!("a GGUF was refused as retryable: {}", e.message));
            }
        }
        Ok((info, tokenizer, template)) => {
            if let Err(why) = precheck {
                return Err(format!(
                    "the metadata check refused the file ({why}) but the engine read it"
                ));
            }
            check_accepted(&info, data.len() as u64, &tokenizer)?;
            render(&template)?;
        }
    }
    Ok(())
}

/// An accepted header: its charge is the file's size, and its tokenizer round-trips ids.
pub fn check_accepted(info: &GgufInfo, len: u64, tokenizer: &GgufTokenizer) -> Result<(), String> {
    if info.charge.file_bytes != len {
        return Err(format!(
            "a {len}-byte file was charged {} bytes",
            info.charge.file_bytes
        ));
    }
    if let Ok(ids) = tokenizer.encode("hello, world 42") {
        for id in ids {
            if tokenizer.token(id).is_none() {
                return Err(format!(
                    "the tokenizer produced id {id}, which it does not know"
                ));
            }
        }
    }
    Ok(())
}

/// Renders `template` with one message: a clean error or a prompt within the cap.
pub fn render(template: &ChatTemplate) -> Result<(), String> {
    let messages = [ChatMessage {
        role: "user".into(),
        content: "hi".into(),
    }];
    let input = TemplateInput {
        messages: &messages,
        system: None,
        bos_token: "<s>",
        eos_token: "</s>",
        kwargs: &[],
    };
    if let Ok(prompt) = template.render(&input) {
        if prompt.len() > MAX_RENDERED_PROMPT_BYTES {
            return Err(format!("a prompt of {} bytes was rendered", prompt.len()));
        }
    }
    Ok(())
}
