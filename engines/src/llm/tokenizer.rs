//! The tokenizer of a GGUF file (`tokenizer.ggml.*` metadata).
//!
//! Two kinds of vocabulary are read:
//!
//! * byte-level BPE (`tokenizer.ggml.model = "gpt2"`, what llama.cpp calls
//!   `LLAMA_VOCAB_TYPE_BPE`): SmolLM, Llama 3, Qwen and most recent models. Encoding goes
//!   through the `tokenizers` crate (a BPE model built from the GGUF's vocabulary and
//!   merges, the pre-tokenizer named by `tokenizer.ggml.pre`, and every control or
//!   user-defined token as an added token, so `<|im_start|>` in a rendered chat template
//!   becomes its single id).
//! * SentencePiece (`tokenizer.ggml.model = "llama"`, with `tokenizer.ggml.scores`): Llama 2,
//!   TinyLlama, Gemma; encoded by [`super::spm`] the way llama.cpp does it, byte fallback
//!   included.
//!
//! Decoding is done here, token by token, from each token's bytes, so generated text can be
//! checked for stop strings as it grows.

use std::collections::BTreeMap;

use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// GGUF token types (`tokenizer.ggml.token_type`, llama.cpp's `llama_token_type`).
pub mod token_type {
    /// An ordinary vocabulary entry.
    pub const NORMAL: i32 = 1;
    /// The unknown token.
    pub const UNKNOWN: i32 = 2;
    /// A control token (`<|im_start|>`, `<|endoftext|>`): matched in prompts, never shown.
    pub const CONTROL: i32 = 3;
    /// A user-defined token: matched in prompts as a whole, decoded to its text.
    pub const USER_DEFINED: i32 = 4;
    /// An unused slot.
    pub const UNUSED: i32 = 5;
    /// A raw byte (`<0x0A>`), SentencePiece vocabularies only.
    pub const BYTE: i32 = 6;
}

/// The Llama 3 pre-tokenizer pattern (llama.cpp `llama3` / `llama-bpe`).
const PATTERN_LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Everything needed to build a tokenizer; [`GgufTokenizer::from_gguf`] reads it from the
/// file's metadata, tests fill it by hand.
#[derive(Clone, Debug, Default)]
pub struct TokenizerSpec {
    /// `tokenizer.ggml.model`: `gpt2` (byte-level BPE) or `llama` (SentencePiece).
    pub model: String,
    /// `tokenizer.ggml.pre` (`smollm`, `gpt2`, `llama3`, ...; empty = `default`).
    pub pre: String,
    /// The vocabulary, in id order (byte-level encoded strings).
    pub tokens: Vec<String>,
    /// Token types, one per token ([`token_type`]); empty = all normal.
    pub token_types: Vec<i32>,
    /// Merges, `"left right"`, in priority order.
    pub merges: Vec<String>,
    /// Beginning-of-sequence token.
    pub bos: Option<u32>,
    /// End-of-sequence token.
    pub eos: Option<u32>,
    /// End-of-turn token, when distinct from `eos` (`tokenizer.ggml.eot_token_id`).
    pub eot: Option<u32>,
    /// Whether prompts start with `bos` (`tokenizer.ggml.add_bos_token`).
    pub add_bos: bool,
    /// SentencePiece: the token scores (`tokenizer.ggml.scores`), one per token.
    pub scores: Vec<f32>,
    /// SentencePiece: the unknown token (`tokenizer.ggml.unknown_token_id`).
    pub unk: Option<u32>,
    /// SentencePiece: whether text starts with a space (`tokenizer.ggml.add_space_prefix`,
    /// default true).
    pub add_space_prefix: bool,
}

/// How text becomes ids.
enum Encoder {
    Bpe(Box<Tokenizer>),
    Spm(Box<super::spm::Spm>),
}

/// A tokenizer built from GGUF metadata.
pub struct GgufTokenizer {
    inner: Encoder,
    /// The bytes each token decodes to (empty for control tokens).
    pieces: Vec<Vec<u8>>,
    tokens: Vec<String>,
    bos: Option<u32>,
    eos: Option<u32>,
    /// Tokens that end generation (eos, eot, and control tokens named like an end of turn).
    end_of_generation: Vec<u32>,
    /// Control tokens, sorted.
    control: Vec<u32>,
    add_bos: bool,
}

impl std::fmt::Debug for GgufTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufTokenizer")
            .field("vocab", &self.tokens.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

/// GPT-2's byte <-> printable character table: bytes that are printable Latin-1 map to
/// themselves, the others to U+0100 onwards, in byte order.
fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(256 + next).expect("U+0100..U+0143 are valid chars");
            next += 1;
            c
        };
    }
    table
}

/// The bytes a byte-level token string stands for; `None` when a character is outside the
/// byte-level alphabet (the token is then taken as literal UTF-8).
fn byte_level_bytes(token: &str, char_to_byte: &BTreeMap<char, u8>) -> Option<Vec<u8>> {
    token
        .chars()
        .map(|c| char_to_byte.get(&c).copied())
        .collect()
}

impl GgufTokenizer {
    /// Builds the tokenizer from `spec`.
    pub fn new(spec: TokenizerSpec) -> Result<GgufTokenizer, String> {
        if spec.model != "gpt2" && spec.model != "llama" {
            return Err(format!(
                "unsupported tokenizer `tokenizer.ggml.model = {}`: the llama engine reads \
                 byte-level BPE (`gpt2`) and SentencePiece (`llama`) vocabularies",
                spec.model
            ));
        }
        if spec.tokens.is_empty() {
            return Err("the GGUF has an empty tokenizer.ggml.tokens".into());
        }
        let n = spec.tokens.len();
        let types: Vec<i32> = if spec.token_types.is_empty() {
            vec![token_type::NORMAL; n]
        } else if spec.token_types.len() == n {
            spec.token_types.clone()
        } else {
            return Err(format!(
                "tokenizer.ggml.token_type has {} entries for {n} tokens",
                spec.token_types.len()
            ));
        };
        for (name, id) in [
            ("bos", spec.bos),
            ("eos", spec.eos),
            ("eot", spec.eot),
            ("unknown", spec.unk),
        ] {
            if let Some(id) = id {
                if id as usize >= n {
                    return Err(format!(
                        "{name} token id {id} is outside the vocabulary ({n})"
                    ));
                }
            }
        }
        let spm = spec.model == "llama";
        let inner = if spm {
            if spec.scores.len() != n {
                return Err(format!(
                    "tokenizer.ggml.scores has {} entries for {n} tokens",
                    spec.scores.len()
                ));
            }
            let specials: Vec<u32> = types
                .iter()
                .enumerate()
                .filter(|(_, t)| matches!(**t, token_type::CONTROL | token_type::USER_DEFINED))
                .map(|(id, _)| id as u32)
                .collect();
            let mut bytes = [None; 256];
            for (id, (tok, ty)) in spec.tokens.iter().zip(&types).enumerate() {
                if *ty == token_type::BYTE {
                    if let Some(b) = parse_byte_token(tok) {
                        bytes[b as usize].get_or_insert(id as u32);
                    }
                }
            }
            Encoder::Spm(Box::new(super::spm::Spm::new(
                &spec.tokens,
                &spec.scores,
                &specials,
                bytes,
                spec.unk,
                spec.add_space_prefix,
            )))
        } else {
            Encoder::Bpe(Box::new(bpe_encoder(&spec, &types)?))
        };

        let table = byte_to_char_table();
        let char_to_byte: BTreeMap<char, u8> =
            (0..=255u8).map(|b| (table[b as usize], b)).collect();
        let pieces = spec
            .tokens
            .iter()
            .zip(&types)
            .map(|(tok, ty)| match *ty {
                token_type::CONTROL | token_type::UNKNOWN | token_type::UNUSED => Vec::new(),
                token_type::USER_DEFINED => tok.as_bytes().to_vec(),
                token_type::BYTE => parse_byte_token(tok).map(|b| vec![b]).unwrap_or_default(),
                _ if spm => tok.replace(super::spm::SPACE, " ").into_bytes(),
                _ => byte_level_bytes(tok, &char_to_byte).unwrap_or_else(|| tok.as_bytes().into()),
            })
            .collect();

        let mut end_of_generation: Vec<u32> = [spec.eos, spec.eot].into_iter().flatten().collect();
        // Control tokens that close a turn in the common chat formats (llama.cpp treats them
        // as end-of-generation too): a model that emits one is done talking.
        for (id, (tok, ty)) in spec.tokens.iter().zip(&types).enumerate() {
            if *ty == token_type::CONTROL
                && matches!(
                    tok.as_str(),
                    "<|im_end|>" | "<|eot_id|>" | "<|end|>" | "<|endoftext|>" | "<end_of_turn>"
                )
            {
                end_of_generation.push(id as u32);
            }
        }
        end_of_generation.sort_unstable();
        end_of_generation.dedup();

        let control = types
            .iter()
            .enumerate()
            .filter(|(_, t)| **t == token_type::CONTROL)
            .map(|(id, _)| id as u32)
            .collect();
        Ok(GgufTokenizer {
            inner,
            pieces,
            tokens: spec.tokens,
            bos: spec.bos,
            eos: spec.eos,
            end_of_generation,
            control,
            add_bos: spec.add_bos,
        })
    }

    /// Reads the tokenizer from a GGUF file's metadata.
    pub fn from_gguf(
        ct: &candle_core::quantized::gguf_file::Content,
    ) -> Result<GgufTokenizer, String> {
        GgufTokenizer::new(spec_from_gguf(ct)?)
    }

    /// The vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The id of `token` (exact vocabulary string), if any.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokens
            .iter()
            .position(|t| t == token)
            .map(|i| i as u32)
    }

    /// The vocabulary string of `id`.
    pub fn token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The beginning-of-sequence token's text (empty when there is none).
    pub fn bos_text(&self) -> &str {
        self.bos.and_then(|id| self.token(id)).unwrap_or("")
    }

    /// The end-of-sequence token's text (empty when there is none).
    pub fn eos_text(&self) -> &str {
        self.eos.and_then(|id| self.token(id)).unwrap_or("")
    }

    /// The tokens that end a completion, sorted.
    pub fn end_of_generation_ids(&self) -> &[u32] {
        &self.end_of_generation
    }

    /// Whether generating `id` ends the completion.
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.end_of_generation.binary_search(&id).is_ok()
    }

    /// Encodes `text` (control and user-defined token strings in it become their ids).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        match &self.inner {
            Encoder::Bpe(t) => {
                let enc = t
                    .encode(text, false)
                    .map_err(|e| format!("tokenizer: {e}"))?;
                Ok(enc.get_ids().to_vec())
            }
            Encoder::Spm(s) => Ok(s.encode(text)),
        }
    }

    /// Whether this is a SentencePiece vocabulary (`tokenizer.ggml.model = llama`).
    pub fn is_sentencepiece(&self) -> bool {
        matches!(self.inner, Encoder::Spm(_))
    }

    /// Whether `id` is a control token (never shown in text).
    pub fn is_control(&self, id: u32) -> bool {
        self.control.binary_search(&id).is_ok()
    }

    /// Encodes a rendered prompt: [`encode`](Self::encode), with `bos` put first when the
    /// model wants it and the text does not already start with it.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>, String> {
        let mut ids = self.encode(text)?;
        if self.add_bos {
            if let Some(bos) = self.bos {
                if ids.first() != Some(&bos) {
                    ids.insert(0, bos);
                }
            }
        }
        Ok(ids)
    }

    /// The bytes `id` decodes to (empty for control tokens and unknown ids).
    pub fn piece(&self, id: u32) -> &[u8] {
        self.pieces
            .get(id as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Decodes `ids` (control tokens dropped; invalid UTF-8 replaced).
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| self.piece(id)).copied().collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// The `tokenizers` BPE model of a byte-level vocabulary.
fn bpe_encoder(spec: &TokenizerSpec, types: &[i32]) -> Result<Tokenizer, String> {
    let pre: PreTokenizerWrapper = match spec.pre.as_str() {
        "" | "default" | "gpt2" => ByteLevel::new(false, true, true).into(),
        // llama.cpp's `smollm`: every digit on its own, then GPT-2's pattern (the same as
        // SmolLM's tokenizer.json: Digits(individual) + ByteLevel).
        "smollm" => Sequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ])
        .into(),
        "llama3" | "llama-bpe" | "smaug-bpe" => {
            let split = Split::new(
                SplitPattern::Regex(PATTERN_LLAMA3.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| format!("pre-tokenizer pattern: {e}"))?;
            Sequence::new(vec![
                split.into(),
                ByteLevel::new(false, true, false).into(),
            ])
            .into()
        }
        other => {
            return Err(format!(
                "unsupported pre-tokenizer `tokenizer.ggml.pre = {other}` (supported: \
                 default, gpt2, smollm, llama3, llama-bpe, smaug-bpe)"
            ))
        }
    };

    let vocab: Vocab = spec
        .tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.clone(), id as u32))
        .collect();
    let merges = spec
        .merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| format!("malformed merge `{m}`"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| format!("cannot build the BPE model: {e}"))?;
    let mut inner = Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(pre));
    let added: Vec<AddedToken> = types
        .iter()
        .enumerate()
        .filter(|(_, t)| matches!(**t, token_type::CONTROL | token_type::USER_DEFINED))
        .map(|(id, t)| AddedToken::from(spec.tokens[id].clone(), *t == token_type::CONTROL))
        .collect();
    inner
        .add_special_tokens(added)
        .map_err(|e| format!("cannot add special tokens: {e}"))?;
    Ok(inner)
}

/// `<0x0A>` -> 0x0A.
fn parse_byte_token(tok: &str) -> Option<u8> {
    let hex = tok.strip_prefix("<0x")?.strip_suffix('>')?;
    u8::from_str_radix(hex, 16).ok()
}

fn spec_from_gguf(
    ct: &candle_core::quantized::gguf_file::Content,
) -> Result<TokenizerSpec, String> {
    use candle_core::quantized::gguf_file::Value;
    let md = &ct.metadata;
    let string =
        |key: &str| -> Option<String> { md.get(key).and_then(|v| v.to_string().ok()).cloned() };
    let id = |key: &str| -> Option<u32> {
        md.get(key).and_then(|v| match v {
            Value::U8(x) => Some(u32::from(*x)),
            Value::U16(x) => Some(u32::from(*x)),
            Value::U32(x) => Some(*x),
            Value::I32(x) => u32::try_from(*x).ok(),
            Value::U64(x) => u32::try_from(*x).ok(),
            Value::I64(x) => u32::try_from(*x).ok(),
            _ => None,
        })
    };
    let strings = |key: &str| -> Result<Vec<String>, String> {
        match md.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.to_string()
                        .cloned()
                        .map_err(|_| format!("`{key}` holds a non-string entry"))
                })
                .collect(),
            Some(_) => Err(format!("`{key}` is not an array")),
        }
    };
    let model = string("tokenizer.ggml.model")
        .ok_or("the GGUF has no tokenizer (tokenizer.ggml.model is missing)")?;
    let scores = match md.get("tokenizer.ggml.scores") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.to_f32()
                    .map_err(|_| "tokenizer.ggml.scores holds a non-float entry".to_string())
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => Vec::new(),
    };
    let token_types = match md.get("tokenizer.ggml.token_type") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::I32(x) => Ok(*x),
                Value::U32(x) => i32::try_from(*x).map_err(|_| "bad token type".to_string()),
                Value::I8(x) => Ok(i32::from(*x)),
                Value::U8(x) => Ok(i32::from(*x)),
                _ => Err("tokenizer.ggml.token_type holds a non-integer entry".to_string()),
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => Vec::new(),
    };
    Ok(TokenizerSpec {
        model,
        pre: string("tokenizer.ggml.pre").unwrap_or_default(),
        tokens: strings("tokenizer.ggml.tokens")?,
        token_types,
        merges: strings("tokenizer.ggml.merges")?,
        bos: id("tokenizer.ggml.bos_token_id"),
        eos: id("tokenizer.ggml.eos_token_id"),
        eot: id("tokenizer.ggml.eot_token_id"),
        add_bos: md
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(false),
        scores,
        unk: id("tokenizer.ggml.unknown_token_id"),
        add_space_prefix: md
            .get("tokenizer.ggml.add_space_prefix")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(true),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn byte_token(s: &str) -> String {
        let table = byte_to_char_table();
        s.bytes().map(|b| table[b as usize]).collect()
    }

    /// A toy vocabulary: the 256 byte tokens, a few merges, two control tokens.
    fn toy() -> GgufTokenizer {
        let table = byte_to_char_table();
        let mut tokens: Vec<String> = vec![
            "<|endoftext|>".into(),
            "<|im_start|>".into(),
            "<|im_end|>".into(),
        ];
        let mut types = vec![token_type::CONTROL; 3];
        for b in 0..=255u8 {
            tokens.push(table[b as usize].to_string());
            types.push(token_type::NORMAL);
        }
        let merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o"];
        for m in merges {
            tokens.push(m.replace(' ', ""));
            types.push(token_type::NORMAL);
        }
        GgufTokenizer::new(TokenizerSpec {
            model: "gpt2".into(),
            pre: "smollm".into(),
            tokens,
            token_types: types,
            merges: merges.iter().map(|m| m.to_string()).collect(),
            bos: Some(1),
            eos: Some(2),
            eot: None,
            add_bos: false,
            ..TokenizerSpec::default()
        })
        .unwrap()
    }

    #[test]
    fn byte_table_is_a_bijection() {
        let table = byte_to_char_table();
        let mut chars: Vec<char> = table.to_vec();
        chars.sort_unstable();
        chars.dedup();
        assert_eq!(chars.len(), 256);
        assert_eq!(table[b' ' as usize], 'Ġ');
        assert_eq!(table[b'\n' as usize], 'Ċ');
        assert_eq!(table[b'A' as usize], 'A');
    }

    #[test]
    fn merges_and_special_tokens() {
        let t = toy();
        let hello = t.token_id("hello").unwrap();
        let wo = t.token_id(&byte_token(" wo")).unwrap();
        let ids = t.encode("<|im_start|>hello wo<|im_end|>").unwrap();
        assert_eq!(ids, vec![1, hello, wo, 2]);
        // Control tokens decode to nothing, the rest round-trips.
        assert_eq!(t.decode(&ids), "hello wo");
        assert!(t.is_end_of_generation(2));
        assert!(!t.is_end_of_generation(hello));
    }

    #[test]
    fn digits_are_split_one_by_one() {
        let t = toy();
        let ids = t.encode("2024").unwrap();
        assert_eq!(ids.len(), 4);
        assert_eq!(t.decode(&ids), "2024");
    }

    #[test]
    fn utf8_round_trip() {
        let t = toy();
        for text in [
            "héllo wörld ✓ 日本",
            "tabs\tand\nnewlines  ",
            "",
            "emoji 🦀!",
        ] {
            let ids = t.encode(text).unwrap();
            assert_eq!(t.decode(&ids), text);
        }
    }

    #[test]
    fn refuses_unknown_models_and_pre_tokenizers() {
        let spec = TokenizerSpec {
            model: "rwkv".into(),
            tokens: vec!["a".into()],
            ..TokenizerSpec::default()
        };
        let err = GgufTokenizer::new(spec).unwrap_err();
        assert!(err.contains("rwkv"), "{err}");
        // SentencePiece needs a score per token.
        let spec = TokenizerSpec {
            model: "llama".into(),
            tokens: vec!["a".into()],
            ..TokenizerSpec::default()
        };
        let err = GgufTokenizer::new(spec).unwrap_err();
        assert!(err.contains("scores"), "{err}");
        let spec = TokenizerSpec {
            model: "gpt2".into(),
            pre: "mystery".into(),
            tokens: vec!["a".into()],
            ..TokenizerSpec::default()
        };
        assert!(GgufTokenizer::new(spec).unwrap_err().contains("mystery"));
    }

    #[test]
    fn byte_tokens_parse() {
        assert_eq!(parse_byte_token("<0x0A>"), Some(10));
        assert_eq!(parse_byte_token("<0xff>"), Some(255));
        assert_eq!(parse_byte_token("0x0A"), None);
    }
}
