//! SentencePiece vocabularies as llama.cpp reads them from a GGUF (`tokenizer.ggml.model =
//! "llama"`: Llama 2, TinyLlama, Gemma): every token has a score, spaces are written `▁`
//! (U+2581), and bytes no token covers fall back to the `<0xNN>` byte tokens.
//!
//! Encoding follows llama.cpp's definition, so that token ids match it:
//!
//! 1. The text is split at special tokens: user-defined tokens always, control tokens too
//!    (prompts are rendered chat templates, which use them). The special tokens are tried
//!    longest first; each splits every remaining text fragment at its occurrences, left to
//!    right.
//! 2. In each text fragment spaces become `▁` (after a leading space when the vocabulary
//!    asks for one, `tokenizer.ggml.add_space_prefix`, at the start and after a special
//!    token). The fragment starts as one symbol per UTF-8 character; repeatedly, the
//!    adjacent pair whose concatenation is a vocabulary token with the highest score (the
//!    leftmost among equal scores) is merged.
//! 3. Each final symbol is its token, or, when it is not in the vocabulary (a character the
//!    vocabulary lacks), its bytes' byte tokens (the unknown token for a byte without one).
//!
//! No crate implements this score-driven merge with llama.cpp's tie rules (the
//! `tokenizers` crate's BPE needs merge ranks, and its Unigram model is a different
//! algorithm), so it is written here.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// The space marker of SentencePiece vocabularies.
pub const SPACE: &str = "\u{2581}";

/// A SentencePiece encoder.
pub(super) struct Spm {
    ids: HashMap<Vec<u8>, u32>,
    scores: Vec<f32>,
    bytes: [Option<u32>; 256],
    unk: Option<u32>,
    /// Special token texts and ids, longest first (ties: lower id first).
    specials: Vec<(Vec<u8>, u32)>,
    add_space_prefix: bool,
}

/// A text fragment or a special token, while splitting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Frag {
    Text(usize, usize),
    Token(u32),
}

#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

#[derive(Clone, Copy, Debug)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// The heap's top is the highest score, then the leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// The length of the UTF-8 sequence a byte starts (1 for a stray continuation byte).
fn utf8_len(b: u8) -> usize {
    match b {
        0xf0..=0xff => 4,
        0xe0..=0xef => 3,
        0xc0..=0xdf => 2,
        _ => 1,
    }
}

impl Spm {
    /// An encoder over `tokens` (texts with `▁` for spaces) and their `scores`; `specials`
    /// are the ids of the control and user-defined tokens; `byte_tokens` the `<0xNN>`
    /// tokens by byte.
    pub(super) fn new(
        tokens: &[String],
        scores: &[f32],
        specials: &[u32],
        byte_tokens: [Option<u32>; 256],
        unk: Option<u32>,
        add_space_prefix: bool,
    ) -> Spm {
        let mut ids = HashMap::with_capacity(tokens.len());
        for (id, t) in tokens.iter().enumerate() {
            // The first of duplicate texts wins, as in llama.cpp's text-to-token map.
            ids.entry(t.as_bytes().to_vec()).or_insert(id as u32);
        }
        let mut specials: Vec<(Vec<u8>, u32)> = specials
            .iter()
            .map(|&id| (tokens[id as usize].as_bytes().to_vec(), id))
            .filter(|(t, _)| !t.is_empty())
            .collect();
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        Spm {
            ids,
            scores: scores.to_vec(),
            bytes: byte_tokens,
            unk,
            specials,
            add_space_prefix,
        }
    }

    /// The ids of `text` (special token texts in it become their ids).
    pub(super) fn encode(&self, text: &str) -> Vec<u32> {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let mut prev_special = true;
        for frag in self.partition(bytes) {
            match frag {
                Frag::Token(id) => {
                    out.push(id);
                    prev_special = true;
                }
                Frag::Text(a, b) => {
                    let mut piece = String::new();
                    if self.add_space_prefix && prev_special {
                        piece.push(' ');
                    }
                    piece.push_str(&String::from_utf8_lossy(&bytes[a..b]));
                    let escaped = piece.replace(' ', SPACE);
                    self.encode_fragment(escaped.as_bytes(), &mut out);
                    prev_special = false;
                }
            }
        }
        out
    }

    /// Splits `text` at the special tokens (longest first, each at every occurrence in the
    /// fragments still text).
    fn partition(&self, text: &[u8]) -> Vec<Frag> {
        let mut frags = vec![Frag::Text(0, text.len())];
        if text.is_empty() {
            return Vec::new();
        }
        let mut present = [false; 256];
        for &b in text {
            present[b as usize] = true;
        }
        for (special, id) in &self.specials {
            if !present[special[0] as usize] || special.len() > text.len() {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len());
            for f in frags {
                let Frag::Text(mut a, b) = f else {
                    next.push(f);
                    continue;
                };
                while let Some(at) = find(&text[a..b], special) {
                    if at > 0 {
                        next.push(Frag::Text(a, a + at));
                    }
                    next.push(Frag::Token(*id));
                    a += at + special.len();
                }
                if a < b {
                    next.push(Frag::Text(a, b));
                }
            }
            frags = next;
        }
        frags
    }

    fn try_bigram(
        &self,
        text: &[u8],
        syms: &[Symbol],
        left: Option<usize>,
        right: Option<usize>,
        heap: &mut BinaryHeap<Bigram>,
    ) {
        let (Some(left), Some(right)) = (left, right) else {
            return;
        };
        let len = syms[left].len + syms[right].len;
        let piece = &text[syms[left].start..syms[left].start + len];
        if let Some(&id) = self.ids.get(piece) {
            heap.push(Bigram {
                score: self.scores.get(id as usize).copied().unwrap_or(0.0),
                left,
                right,
                len,
            });
        }
    }

    fn encode_fragment(&self, text: &[u8], out: &mut Vec<u32>) {
        let mut syms: Vec<Symbol> = Vec::new();
        let mut at = 0;
        while at < text.len() {
            let len = utf8_len(text[at]).min(text.len() - at);
            let i = syms.len();
            syms.push(Symbol {
                start: at,
                len,
                prev: i.checked_sub(1),
                next: None,
            });
            if i > 0 {
                syms[i - 1].next = Some(i);
            }
            at += len;
        }
        let mut heap = BinaryHeap::new();
        for i in 1..syms.len() {
            self.try_bigram(text, &syms, Some(i - 1), Some(i), &mut heap);
        }
        while let Some(bg) = heap.pop() {
            let (l, r) = (bg.left, bg.right);
            if syms[l].len == 0 || syms[r].len == 0 || syms[l].len + syms[r].len != bg.len {
                continue; // outdated: one side was merged since
            }
            syms[l].len += syms[r].len;
            syms[r].len = 0;
            syms[l].next = syms[r].next;
            if let Some(n) = syms[r].next {
                syms[n].prev = Some(l);
            }
            self.try_bigram(text, &syms, syms[l].prev, Some(l), &mut heap);
            self.try_bigram(text, &syms, Some(l), syms[l].next, &mut heap);
        }
        let mut cur = (!syms.is_empty()).then_some(0);
        while let Some(i) = cur {
            let s = syms[i];
            let piece = &text[s.start..s.start + s.len];
            match self.ids.get(piece) {
                Some(&id) => out.push(id),
                None => out.extend(
                    piece
                        .iter()
                        .filter_map(|&b| self.bytes[b as usize].or(self.unk)),
                ),
            }
            cur = s.next;
        }
    }
}

/// The first position of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.len() > hay.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy vocabulary: characters, a few merges with scores, byte tokens for `\n` only,
    /// a control token and a user-defined one.
    fn toy(add_space_prefix: bool) -> (Spm, Vec<String>) {
        let tokens: Vec<String> = [
            "<unk>", "<s>", "<0x0A>", "▁", "h", "e", "l", "o", "he", "ll", "hell", "hello",
            "▁hello", "lo", "<ctl>", "\n\n", "w", "▁w",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let scores = [
            0.0, 0.0, 0.0, -1.0, -5.0, -5.0, -5.0, -5.0, -3.0, -2.0, -2.5, -1.0, -0.5, -4.0, 0.0,
            0.0, -5.0, -4.0,
        ];
        let mut bytes = [None; 256];
        bytes[b'\n' as usize] = Some(2);
        let spm = Spm::new(
            &tokens,
            &scores,
            &[14, 15],
            bytes,
            Some(0),
            add_space_prefix,
        );
        (spm, tokens)
    }

    fn texts(ids: &[u32], tokens: &[String]) -> Vec<String> {
        ids.iter().map(|&i| tokens[i as usize].clone()).collect()
    }

    #[test]
    fn merges_by_score_and_splits_at_specials() {
        let (spm, tokens) = toy(false);
        // "hello": "ll" (-2) first, then "he" (-3), which makes "hell" (-2.5) possible,
        // then "hello" (-1) = hell + o; "lo" (-4) never gets its turn.
        assert_eq!(texts(&spm.encode("hello"), &tokens), ["hello"]);
        // " hello" with the space as ▁: "▁hello" (-0.5) beats stopping at "▁" + "hello".
        assert_eq!(texts(&spm.encode(" hello"), &tokens), ["▁hello"]);
        // Special tokens split the text; the user-defined "\n\n" too; a lone "\n" falls
        // back to its byte token; "x" has neither a token nor a byte token: unknown.
        assert_eq!(
            texts(&spm.encode("he<ctl>lo\n\nw\nx"), &tokens),
            ["he", "<ctl>", "lo", "\n\n", "w", "<0x0A>", "<unk>"]
        );
    }

    #[test]
    fn equal_scores_merge_leftmost_first() {
        // "aaa" with "aa" in the vocabulary: the left pair merges first: "aa" + "a".
        let tokens: Vec<String> = ["a", "aa"].iter().map(|s| s.to_string()).collect();
        let spm = Spm::new(&tokens, &[-1.0, -1.0], &[], [None; 256], None, false);
        assert_eq!(spm.encode("aaa"), [1, 0]);
    }

    #[test]
    fn space_prefix_when_asked() {
        let (spm, tokens) = toy(true);
        assert_eq!(texts(&spm.encode("hello"), &tokens), ["▁hello"]);
        assert_eq!(
            texts(&spm.encode("<ctl>hello"), &tokens),
            ["<ctl>", "▁hello"]
        );
        assert!(spm.encode("").is_empty());
    }

    #[test]
    fn longer_specials_win_over_their_parts() {
        let tokens: Vec<String> = ["\n", "\n\n", "a"].iter().map(|s| s.to_string()).collect();
        let spm = Spm::new(&tokens, &[0.0; 3], &[0, 1], [None; 256], None, false);
        // Longest first: "\n\n" twice, then the lone "\n".
        assert_eq!(spm.encode("\n\n\n\n\na"), [1, 1, 0, 2]);
    }
}
