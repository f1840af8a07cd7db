//! Whisper's tokenizer: GPT-2 style byte-level BPE read from a Hugging Face
//! `tokenizer.json` (the `model.vocab`, `model.merges` and `added_tokens` fields).
//!
//! Decoding maps each token's characters back to bytes through the byte-level alphabet
//! (every byte has a printable stand-in character) and reads the bytes as UTF-8. Encoding
//! (only needed for the `prompt` bias text) splits the text with the GPT-2 pre-tokenizer
//! pattern, maps bytes to the alphabet and applies the merges by rank.

use std::collections::HashMap;
use std::path::Path;

use fancy_regex::Regex;
use serde_json::Value;

use crate::error::EngineError;

/// The GPT-2 pre-tokenizer pattern (contractions, letters, digits, other symbols, spaces).
const PRE_TOKENIZER: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// The largest token id accepted (the table of token strings is sized by the largest id,
/// so `{"vocab": {"a": 4294967295}}` would ask for about 100 GiB).
pub const MAX_TOKEN_ID: u64 = (1 << 20) - 1;

/// A loaded byte-level BPE tokenizer.
pub struct Tokenizer {
    vocab: HashMap<String, u32>,
    tokens: Vec<Option<String>>,
    merges: HashMap<(String, String), usize>,
    special: HashMap<String, u32>,
    byte_to_char: [char; 256],
    char_to_byte: HashMap<char, u8>,
    pattern: Regex,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab", &self.vocab.len())
            .field("merges", &self.merges.len())
            .field("special", &self.special.len())
            .finish()
    }
}

fn bad(path: &Path, message: impl std::fmt::Display) -> EngineError {
    EngineError::failed(format!("{}: {message}", path.display()), false)
}

/// The byte-level alphabet: printable Latin-1 bytes stand for themselves, the others are
/// mapped, in order, to U+0100 and up.
fn byte_alphabet() -> [char; 256] {
    let mut table = ['\0'; 256];
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
    let mut next = 256u32;
    for b in 0..256u32 {
        let c = if printable(b) {
            b
        } else {
            let c = next;
            next += 1;
            c
        };
        table[b as usize] = char::from_u32(c).expect("valid code point");
    }
    table
}

impl Tokenizer {
    /// Loads `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Tokenizer, EngineError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| EngineError::io(format!("reading {}: {e}", path.display())))?;
        let json: Value =
            serde_json::from_str(&text).map_err(|e| bad(path, format!("not JSON: {e}")))?;
        Tokenizer::from_json(&json).map_err(|m| bad(path, m))
    }

    /// Builds the tokenizer from a parsed `tokenizer.json`.
    pub fn from_json(json: &Value) -> Result<Tokenizer, String> {
        let model = json.get("model").ok_or("no `model` object")?;
        if let Some(kind) = model.get("type").and_then(Value::as_str) {
            if kind != "BPE" {
                return Err(format!("the tokenizer model is `{kind}`, not BPE"));
            }
        }
        let vocab_json = model
            .get("vocab")
            .and_then(Value::as_object)
            .ok_or("no `model.vocab` object")?;
        let mut vocab = HashMap::with_capacity(vocab_json.len());
        let check_id = |id: u64| -> Result<u32, String> {
            if id > MAX_TOKEN_ID {
                return Err(format!(
                    "token id {id} is larger than the largest accepted ({MAX_TOKEN_ID})"
                ));
            }
            Ok(id as u32)
        };
        for (token, id) in vocab_json {
            let id = check_id(id.as_u64().ok_or("a vocab id is not an integer")?)?;
            vocab.insert(token.clone(), id);
        }
        let mut merges = HashMap::new();
        if let Some(list) = model.get("merges").and_then(Value::as_array) {
            for (rank, m) in list.iter().enumerate() {
                let pair = match m {
                    Value::String(s) => s
                        .split_once(' ')
                        .map(|(a, b)| (a.to_string(), b.to_string())),
                    Value::Array(parts) if parts.len() == 2 => {
                        match (parts[0].as_str(), parts[1].as_str()) {
                            (Some(a), Some(b)) => Some((a.to_string(), b.to_string())),
                            _ => None,
                        }
                    }
                    _ => None,
                };
                let pair = pair.ok_or("a merge is neither `a b` nor [a, b]")?;
                merges.entry(pair).or_insert(rank);
            }
        }
        let mut special = HashMap::new();
        if let Some(list) = json.get("added_tokens").and_then(Value::as_array) {
            for t in list {
                if let (Some(content), Some(id)) = (
                    t.get("content").and_then(Value::as_str),
                    t.get("id").and_then(Value::as_u64),
                ) {
                    special.insert(content.to_string(), check_id(id)?);
                }
            }
        }
        let max_id = vocab
            .values()
            .chain(special.values())
            .copied()
            .max()
            .unwrap_or(0);
        let mut tokens = vec![None; max_id as usize + 1];
        for (t, &id) in vocab.iter().chain(special.iter()) {
            tokens[id as usize] = Some(t.clone());
        }
        let byte_to_char = byte_alphabet();
        let char_to_byte = byte_to_char
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        Ok(Tokenizer {
            vocab,
            tokens,
            merges,
            special,
            byte_to_char,
            char_to_byte,
            pattern: Regex::new(PRE_TOKENIZER).map_err(|e| e.to_string())?,
        })
    }

    /// The id of a special (added) token such as `<|endoftext|>`.
    pub fn special(&self, content: &str) -> Option<u32> {
        self.special
            .get(content)
            .or_else(|| self.vocab.get(content))
            .copied()
    }

    /// Every added token, `(content, id)`.
    pub fn specials(&self) -> impl Iterator<Item = (&str, u32)> {
        self.special.iter().map(|(c, &id)| (c.as_str(), id))
    }

    /// The string of token `id` (byte-level alphabet), if known.
    pub fn token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).and_then(|t| t.as_deref())
    }

    /// Decodes text tokens; ids at or above `skip_from` (specials, timestamps) and unknown
    /// ids are skipped. Invalid UTF-8 (a character split across tokens) becomes U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_from: u32) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            if id >= skip_from {
                continue;
            }
            if let Some(token) = self.token(id) {
                for c in token.chars() {
                    match self.char_to_byte.get(&c) {
                        Some(&b) => bytes.push(b),
                        None => {
                            let mut buf = [0u8; 4];
                            bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        }
                    }
                }
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Encodes plain text (no special tokens) to token ids.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        for piece in self.pattern.find_iter(text) {
            let Ok(piece) = piece else { break };
            let symbols: Vec<String> = piece
                .as_str()
                .bytes()
                .map(|b| self.byte_to_char[b as usize].to_string())
                .collect();
            for symbol in self.bpe(symbols) {
                if let Some(&id) = self.vocab.get(&symbol) {
                    ids.push(id);
                } else {
                    // Not in the vocabulary: fall back to its single bytes, which always are.
                    for c in symbol.chars() {
                        if let Some(&id) = self.vocab.get(&c.to_string()) {
                            ids.push(id);
                        }
                    }
                }
            }
        }
        ids
    }

    /// Applies the merges to one pre-token, lowest rank first, until none applies.
    fn bpe(&self, mut symbols: Vec<String>) -> Vec<String> {
        while symbols.len() > 1 {
            let best = symbols
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| {
                    self.merges
                        .get(&(w[0].clone(), w[1].clone()))
                        .map(|&rank| (rank, i))
                })
                .min();
            let Some((rank, _)) = best else { break };
            let mut merged = Vec::with_capacity(symbols.len());
            let mut i = 0;
            while i < symbols.len() {
                if i + 1 < symbols.len()
                    && self
                        .merges
                        .get(&(symbols[i].clone(), symbols[i + 1].clone()))
                        == Some(&rank)
                {
                    merged.push(format!("{}{}", symbols[i], symbols[i + 1]));
                    i += 2;
                } else {
                    merged.push(symbols[i].clone());
                    i += 1;
                }
            }
            symbols = merged;
        }
        symbols
    }
}
