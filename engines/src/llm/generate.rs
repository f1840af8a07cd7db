//! One job's generation: the prompt rendered and tokenized, prefill in chunks, sampling
//! until an end-of-generation token, a stop string, `maxTokens` or the context ends, and
//! the `chat.completion` JSON of the result.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use studio_core::wire::{LlmTask, ModelSource};

use super::grammar::Grammars;
use super::sampling::{Sampler, SamplingParams};
use super::template::{ChatTemplate, TemplateInput};
use super::tokenizer::GgufTokenizer;
use super::{candle_err, cpu, not_retryable, Backend, LoadedModel, Weights};
use crate::error::EngineError;

/// Prompt tokens are fed in chunks of this many (bounds the attention scratch memory).
const PREFILL_CHUNK: usize = 512;

/// What one generation produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    /// The text (cut before a stop string).
    pub text: String,
    /// `"stop"` or `"length"`.
    pub finish_reason: &'static str,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated (including the one that completed a stop string or ended the turn).
    pub completion_tokens: usize,
    /// Seconds spent on the prompt (prefill).
    pub prefill_secs: f64,
    /// Seconds spent generating after the first token.
    pub decode_secs: f64,
    /// The forward pass that ran.
    pub backend: Backend,
}

/// The seed of a task: the first 8 bytes (big-endian) of SHA-256 of its canonical JSON.
pub fn task_seed(task: &LlmTask) -> u64 {
    let canonical = serde_json::to_string(task).unwrap_or_default();
    let d = Sha256::digest(canonical.as_bytes());
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// Renders `task`'s prompt with `template` and `tokenizer`'s bos/eos texts and the
/// `chatTemplateKwargs` (defaults from `source`, then the task's).
pub fn render_prompt(
    template: &ChatTemplate,
    tokenizer: &GgufTokenizer,
    task: &LlmTask,
    source_kwargs: Option<&Value>,
) -> Result<String, EngineError> {
    let kwargs: Vec<&Value> = [source_kwargs, task.chat_template_kwargs.as_ref()]
        .into_iter()
        .flatten()
        .collect();
    template
        .render(&TemplateInput {
            messages: &task.messages,
            system: task.system.as_deref(),
            bos_token: tokenizer.bos_text(),
            eos_token: tokenizer.eos_text(),
            kwargs: &kwargs,
        })
        .map_err(EngineError::invalid_input)
}

/// The effective context: the model's, capped by `cliDefaults.contextSize` when given.
fn context_for(model: &LoadedModel, source: &ModelSource) -> usize {
    match source.cli_defaults.context_size {
        Some(n) if n > 0 => model.context_length.min(n as usize),
        _ => model.context_length,
    }
}

fn logits_of(t: &Tensor) -> Result<Vec<f32>, EngineError> {
    t.squeeze(0)
        .and_then(|t| t.to_dtype(DType::F32))
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(candle_err("reading logits"))
}

pub(super) fn generate(
    model: &mut LoadedModel,
    task: &LlmTask,
    source: &ModelSource,
    params: SamplingParams,
) -> Result<Completion, EngineError> {
    let prompt = render_prompt(
        &model.template,
        &model.tokenizer,
        task,
        source.cli_defaults.chat_template_kwargs.as_ref(),
    )?;
    let prompt_ids = model
        .tokenizer
        .encode_prompt(&prompt)
        .map_err(not_retryable)?;
    if prompt_ids.is_empty() {
        return Err(EngineError::invalid_input("the rendered prompt is empty"));
    }
    let n_ctx = context_for(model, source);
    if prompt_ids.len() >= n_ctx {
        return Err(EngineError::invalid_input(format!(
            "the prompt is {} tokens long; the context holds {n_ctx} (prompt plus at least one \
             new token)",
            prompt_ids.len()
        )));
    }
    let stops: Vec<&[u8]> = task
        .stop
        .iter()
        .flatten()
        .map(|s| s.as_bytes())
        .filter(|s| !s.is_empty())
        .collect();
    let longest_stop = stops.iter().map(|s| s.len()).max().unwrap_or(0);
    let max_new = (task.max_tokens() as usize).min(n_ctx - prompt_ids.len());
    let mut constraint = match task.json_schema.as_ref().filter(|s| !s.is_null()) {
        Some(schema) => {
            let grammars = match &model.grammars {
                Some(g) => g.clone(),
                None => {
                    let g = std::sync::Arc::new(
                        Grammars::new(&model.tokenizer).map_err(not_retryable)?,
                    );
                    model.grammars = Some(g.clone());
                    g
                }
            };
            Some(grammars.constraint(schema).map_err(not_retryable)?)
        }
        None => None,
    };

    let mut runner = match &mut model.weights {
        Weights::Candle { weights, device } => Runner::Candle { weights, device },
        Weights::Native(m) => {
            // The cache holds the prompt and every token fed back (the last one sampled
            // is not).
            let ctx = prompt_ids.len() + max_new.saturating_sub(1);
            Runner::Native {
                session: m.session(ctx.max(1)),
                model: m,
            }
        }
    };
    let backend = runner.backend();
    let mut sampler = Sampler::new(params);
    let started = Instant::now();
    let mut pos = 0usize;
    let mut logits = Vec::new();
    for chunk in prompt_ids.chunks(PREFILL_CHUNK) {
        logits = runner.forward(chunk, pos, "prompt evaluation")?;
        pos += chunk.len();
    }
    let prefill_secs = started.elapsed().as_secs_f64();

    let decode_started = Instant::now();
    let mut bytes: Vec<u8> = Vec::new();
    let mut generated = 0usize;
    let mut finish_reason = "length";
    let mut cut: Option<usize> = None;
    while generated < max_new {
        if let Some(c) = &mut constraint {
            c.mask(&mut logits, model.tokenizer.end_of_generation_ids())
                .map_err(not_retryable)?;
        }
        let next = sampler.sample(&logits);
        generated += 1;
        if model.tokenizer.is_end_of_generation(next) {
            finish_reason = "stop";
            break;
        }
        if let Some(c) = &mut constraint {
            c.accept(next).map_err(not_retryable)?;
        }
        let before = bytes.len();
        bytes.extend_from_slice(model.tokenizer.piece(next));
        if longest_stop > 0 {
            // Only a window ending in the new bytes can hold a stop string that was not
            // there before.
            let from = before.saturating_sub(longest_stop - 1);
            if let Some(at) = find_first_stop(&bytes[from..], &stops) {
                cut = Some(from + at);
                finish_reason = "stop";
                break;
            }
        }
        if constraint.as_ref().is_some_and(|c| c.is_done()) {
            // The JSON value is complete.
            finish_reason = "stop";
            break;
        }
        if generated == max_new {
            break;
        }
        logits = runner.forward(&[next], pos, "token evaluation")?;
        pos += 1;
    }
    if let Some(cut) = cut {
        bytes.truncate(cut);
    }
    Ok(Completion {
        text: String::from_utf8_lossy(&bytes).into_owned(),
        finish_reason,
        prompt_tokens: prompt_ids.len(),
        completion_tokens: generated,
        prefill_secs,
        decode_secs: decode_started.elapsed().as_secs_f64(),
        backend,
    })
}

/// One job's forward passes on either backend.
enum Runner<'a> {
    Candle {
        weights: &'a mut ModelWeights,
        device: &'a Device,
    },
    Native {
        model: &'a cpu::Model,
        session: cpu::Session,
    },
}

impl Runner<'_> {
    fn backend(&self) -> Backend {
        match self {
            Runner::Candle { .. } => Backend::Candle,
            Runner::Native { .. } => Backend::Native,
        }
    }

    /// Feeds `tokens` at `pos..`; the logits after the last one.
    fn forward(&mut self, tokens: &[u32], pos: usize, what: &str) -> Result<Vec<f32>, EngineError> {
        match self {
            Runner::Candle { weights, device } => {
                let input = Tensor::new(tokens, device)
                    .and_then(|t| t.unsqueeze(0))
                    .map_err(candle_err(what))?;
                let out = weights.forward(&input, pos).map_err(candle_err(what))?;
                logits_of(&out)
            }
            Runner::Native { model, session } => model
                .forward(session, tokens, pos)
                .map_err(|e| not_retryable(format!("{what}: {e}"))),
        }
    }
}

/// The earliest position in `hay` where one of `stops` starts.
fn find_first_stop(hay: &[u8], stops: &[&[u8]]) -> Option<usize> {
    stops
        .iter()
        .filter_map(|s| hay.windows(s.len()).position(|w| w == *s))
        .min()
}

/// The `chat.completion` JSON of `completion`.
pub fn completion_json(model: &str, task: &LlmTask, completion: &Completion) -> Value {
    let mut h = Sha256::new();
    h.update(model.as_bytes());
    h.update([0]);
    h.update(serde_json::to_string(task).unwrap_or_default().as_bytes());
    let id = studio_core::wire::hex(&h.finalize()[..8]);
    json!({
        "id": format!("chatcmpl-{id}"),
        "object": "chat.completion",
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": completion.text},
            "finish_reason": completion.finish_reason,
        }],
        "usage": {
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_search_finds_the_earliest() {
        let stops: Vec<&[u8]> = vec![b"END", b"\n\n"];
        assert_eq!(find_first_stop(b"abc\n\nEND", &stops), Some(3));
        assert_eq!(find_first_stop(b"abcEND\n\n", &stops), Some(3));
        assert_eq!(find_first_stop(b"abc", &stops), None);
    }

    #[test]
    fn seed_depends_on_the_whole_task() {
        let task = LlmTask {
            messages: vec![studio_core::wire::ChatMessage {
                role: "user".into(),
                content: "hi".into(),
            }],
            ..Default::default()
        };
        let mut other = task.clone();
        other.temperature = Some(0.9);
        assert_eq!(task_seed(&task), task_seed(&task.clone()));
        assert_ne!(task_seed(&task), task_seed(&other));
    }
}
