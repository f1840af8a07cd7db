//! `jsonSchema`: constrained decoding with llguidance. Before each token is sampled, the
//! tokens that cannot continue a JSON text valid against the schema are masked out, so the
//! output parses and validates; generation stops when the JSON value is complete.
//!
//! The schema is the task's `jsonSchema` (a JSON Schema document). One it cannot compile
//! (an unsupported keyword, a malformed schema) is a non-retryable failure: the job would
//! fail the same way on any worker of this build.
//!
//! The token trie llguidance walks is built once per loaded model from the vocabulary's
//! bytes ([`GgufTokenizer::piece`]); control tokens enter it as special tokens (never
//! allowed inside the JSON). When the value may end, the model's end-of-generation tokens
//! are allowed as well as the one llguidance knows.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;

use super::tokenizer::GgufTokenizer;

/// llguidance's compiled view of a model's vocabulary, shared by its jobs.
pub(super) struct Grammars {
    factory: ParserFactory,
    vocab: usize,
    eos: u32,
}

impl Grammars {
    /// The factory for `tok`'s vocabulary.
    pub(super) fn new(tok: &GgufTokenizer) -> Result<Grammars, String> {
        let n = tok.vocab_size();
        let words: Vec<Vec<u8>> = (0..n as u32)
            .map(|id| {
                let piece = tok.piece(id);
                if tok.is_control(id) || piece.is_empty() {
                    // Special tokens are marked by a leading 0xFF byte.
                    let mut w = vec![0xff];
                    w.extend_from_slice(tok.token(id).unwrap_or("").as_bytes());
                    w
                } else {
                    piece.to_vec()
                }
            })
            .collect();
        let eos = tok.end_of_generation_ids().first().copied().unwrap_or(0);
        let info = TokRxInfo::new(n as u32, eos);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(TokTrie::from(&info, &words)));
        let mut factory =
            ParserFactory::new_simple(&env).map_err(|e| format!("llguidance: {e}"))?;
        factory.set_stderr_log_level(0);
        Ok(Grammars {
            factory,
            vocab: n,
            eos,
        })
    }

    /// A constraint for one generation against `schema`, or why the schema cannot be
    /// honoured.
    pub(super) fn constraint(&self, schema: &Value) -> Result<JsonConstraint, String> {
        let grammar = TopLevelGrammar::from_json_schema(schema.clone());
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| format!("jsonSchema cannot be honoured: {e}"))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(format!("jsonSchema cannot be honoured: {e}"));
        }
        Ok(JsonConstraint {
            matcher,
            vocab: self.vocab,
            eos: self.eos,
        })
    }
}

/// One generation's grammar state.
pub(super) struct JsonConstraint {
    matcher: Matcher,
    vocab: usize,
    eos: u32,
}

impl JsonConstraint {
    /// Sets the logits of the tokens the grammar forbids now to minus infinity; when the
    /// value may end there, `end_of_generation` stay allowed.
    pub(super) fn mask(
        &mut self,
        logits: &mut [f32],
        end_of_generation: &[u32],
    ) -> Result<(), String> {
        let mask = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| format!("constrained decoding: {e}"))?;
        let may_end = mask.is_allowed(self.eos);
        let kept: Vec<(u32, f32)> = if may_end {
            end_of_generation
                .iter()
                .filter_map(|&t| logits.get(t as usize).map(|&l| (t, l)))
                .collect()
        } else {
            Vec::new()
        };
        for (id, l) in logits.iter_mut().enumerate() {
            if id >= self.vocab || !mask.is_allowed(id as u32) {
                *l = f32::NEG_INFINITY;
            }
        }
        for (t, l) in kept {
            logits[t as usize] = l;
        }
        Ok(())
    }

    /// Advances the grammar by the sampled token.
    pub(super) fn accept(&mut self, token: u32) -> Result<(), String> {
        self.matcher
            .consume_token(token)
            .map_err(|e| format!("constrained decoding: {e}"))
    }

    /// Whether the JSON value is complete (nothing more may follow).
    pub(super) fn is_done(&self) -> bool {
        self.matcher.is_stopped()
    }
}
