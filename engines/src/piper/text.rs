//! From text to a Piper voice's ids, the parts that need no phonemizer: sentences and their
//! clauses with the punctuation that ends each, the phoneme string of a sentence, and the
//! ids of a phoneme string (Piper's layout).
//!
//! Piper's id layout (a fact of the format): BOS `^`, then a pad `_` after it and after every
//! phoneme, then EOS `$`: `^ _ p1 _ p2 _ ... pn _ $`. A phoneme is one Unicode scalar of
//! the phoneme string; a phoneme the voice's `phoneme_id_map` lacks is left out (and
//! counted).

use std::collections::BTreeMap;

/// How a clause ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// `.` (also `…`, `。`): ends the sentence.
    Period,
    /// `?` (also `？`): ends the sentence.
    Question,
    /// `!` (also `！`): ends the sentence.
    Exclamation,
    /// `,` (also `，`, `、`): inside a sentence.
    Comma,
    /// `;` (also `；`).
    Semicolon,
    /// `:` (also `：`).
    Colon,
    /// The end of the text, without punctuation.
    None,
}

impl Ending {
    fn of(c: char) -> Option<Ending> {
        Some(match c {
            '.' | '…' | '。' => Ending::Period,
            '?' | '？' => Ending::Question,
            '!' | '！' => Ending::Exclamation,
            ',' | '，' | '、' => Ending::Comma,
            ';' | '；' => Ending::Semicolon,
            ':' | '：' => Ending::Colon,
            _ => return None,
        })
    }

    /// Whether the clause ends its sentence.
    pub fn ends_sentence(self) -> bool {
        matches!(
            self,
            Ending::Period | Ending::Question | Ending::Exclamation | Ending::None
        )
    }

    /// What the phoneme string carries for this ending (Piper keeps sentence punctuation;
    /// a clause inside a sentence is followed by a space).
    pub fn phonemes(self) -> &'static str {
        match self {
            Ending::Period => ".",
            Ending::Question => "?",
            Ending::Exclamation => "!",
            Ending::Comma => ", ",
            Ending::Semicolon => "; ",
            Ending::Colon => ": ",
            Ending::None => "",
        }
    }
}

/// A clause: its words (without the ending punctuation) and how it ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clause {
    /// The clause's text, trimmed.
    pub text: String,
    /// Its punctuation.
    pub ending: Ending,
}

/// Closing quotes and brackets that may follow a clause's punctuation.
fn closes(c: char) -> bool {
    matches!(
        c,
        '"' | '\'' | ')' | ']' | '}' | '»' | '”' | '’' | '」' | '』'
    )
}

/// Whether clause punctuation at this point ends a clause: followed by whitespace or the
/// end of the text (so `3.5` and `a,b` stay whole), or a full-width mark (no spaces
/// follow those).
fn is_boundary(c: char, next: Option<char>) -> bool {
    !c.is_ascii() || next.is_none_or(char::is_whitespace)
}

/// The text's sentences, each a list of clauses, in order. Whitespace runs (newlines
/// included) count as one space; a blank line also ends a sentence. A run of punctuation
/// (`?!`, `...`) is one ending, named by its first mark; closing quotes and brackets after
/// it belong to the clause. Clauses without words are dropped.
pub fn sentences(text: &str) -> Vec<Vec<Clause>> {
    let mut out: Vec<Vec<Clause>> = Vec::new();
    let mut sentence: Vec<Clause> = Vec::new();
    let mut current = String::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut finish = |current: &mut String, ending: Ending, sentence: &mut Vec<Clause>| {
        let words = current.split_whitespace().collect::<Vec<_>>().join(" ");
        current.clear();
        if words.chars().any(char::is_alphanumeric) {
            sentence.push(Clause {
                text: words,
                ending,
            });
        }
        if ending.ends_sentence() && !sentence.is_empty() {
            out.push(std::mem::take(sentence));
        }
    };
    while i < chars.len() {
        let c = chars[i];
        // A blank line ends a sentence.
        if c == '\n' {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != '\n' && chars[j].is_whitespace() {
                j += 1;
            }
            if j < chars.len() && chars[j] == '\n' {
                finish(&mut current, Ending::None, &mut sentence);
                i = j + 1;
                continue;
            }
        }
        if let Some(ending) = Ending::of(c) {
            // The whole run of marks and closing quotes.
            let mut j = i + 1;
            while j < chars.len() && Ending::of(chars[j]).is_some() {
                j += 1;
            }
            let marks_end = j;
            while j < chars.len() && closes(chars[j]) {
                j += 1;
            }
            if is_boundary(chars[marks_end - 1], chars.get(j).copied()) {
                current.extend(&chars[marks_end..j]);
                finish(&mut current, ending, &mut sentence);
                i = j;
                continue;
            }
        }
        current.push(c);
        i += 1;
    }
    finish(&mut current, Ending::None, &mut sentence);
    out
}

/// A sentence's phoneme string: each clause's phonemes followed by its punctuation.
/// `phonemes` gives a clause's phonemes (an empty string when it has none to say).
pub fn sentence_phonemes(clauses: &[(String, Ending)]) -> String {
    let mut out = String::new();
    for (phonemes, ending) in clauses {
        out.push_str(phonemes.trim());
        out.push_str(ending.phonemes());
    }
    out.trim_end().to_string()
}

/// A voice's phoneme alphabet: each phoneme's ids, and the optional `phoneme_map` that
/// rewrites a phoneme into others before the lookup.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Alphabet {
    /// `phoneme_id_map`.
    pub ids: BTreeMap<char, Vec<i64>>,
    /// `phoneme_map`.
    pub rewrite: BTreeMap<char, Vec<char>>,
}

/// Piper's beginning-of-sentence phoneme.
pub const BOS: char = '^';
/// Piper's end-of-sentence phoneme.
pub const EOS: char = '$';
/// Piper's pad, after BOS and after every phoneme.
pub const PAD: char = '_';

impl Alphabet {
    /// Whether the map has the three symbols of Piper's layout.
    pub fn missing_symbols(&self) -> Vec<char> {
        [BOS, EOS, PAD]
            .into_iter()
            .filter(|c| !self.ids.contains_key(c))
            .collect()
    }

    /// The ids of `phonemes` in Piper's layout, and how many phonemes had no id.
    pub fn ids(&self, phonemes: &str) -> (Vec<i64>, usize) {
        let pad = self.ids.get(&PAD).map(Vec::as_slice).unwrap_or(&[]);
        let mut ids: Vec<i64> = Vec::with_capacity(2 * phonemes.len() + 3);
        let mut missing = 0;
        if let Some(bos) = self.ids.get(&BOS) {
            ids.extend(bos);
            ids.extend(pad);
        }
        for c in phonemes.chars() {
            let rewritten = self.rewrite.get(&c);
            let each: &[char] = match rewritten {
                Some(r) => r,
                None => std::slice::from_ref(&c),
            };
            for p in each {
                match self.ids.get(p) {
                    Some(p_ids) => {
                        ids.extend(p_ids);
                        ids.extend(pad);
                    }
                    None => missing += 1,
                }
            }
        }
        if let Some(eos) = self.ids.get(&EOS) {
            ids.extend(eos);
        }
        (ids, missing)
    }
}

/// `phonemes` cut into pieces of at most `max` phonemes, at spaces where there is one (a
/// word longer than `max` is cut where it must), in order.
pub fn chunks(phonemes: &str, max: usize) -> Vec<String> {
    let max = max.max(1);
    let chars: Vec<char> = phonemes.chars().collect();
    let mut out = Vec::new();
    let mut start = 0;
    while chars.len() - start > max {
        let window = &chars[start..start + max + 1];
        let cut = match window.iter().rposition(|&c| c == ' ') {
            Some(space) if space > 0 => start + space,
            _ => start + max,
        };
        out.push(
            chars[start..cut]
                .iter()
                .collect::<String>()
                .trim()
                .to_string(),
        );
        start = cut;
        while start < chars.len() && chars[start] == ' ' {
            start += 1;
        }
    }
    let rest: String = chars[start..].iter().collect();
    if !rest.trim().is_empty() {
        out.push(rest.trim().to_string());
    }
    out.retain(|c| !c.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clause(text: &str, ending: Ending) -> Clause {
        Clause {
            text: text.into(),
            ending,
        }
    }

    #[test]
    fn sentences_and_clauses_keep_their_punctuation() {
        assert_eq!(
            sentences("Hello, world. How are you?  I'm fine;\nthanks!"),
            vec![
                vec![
                    clause("Hello", Ending::Comma),
                    clause("world", Ending::Period)
                ],
                vec![clause("How are you", Ending::Question)],
                vec![
                    clause("I'm fine", Ending::Semicolon),
                    clause("thanks", Ending::Exclamation)
                ],
            ]
        );
    }

    #[test]
    fn the_end_of_the_text_and_blank_lines_end_sentences() {
        assert_eq!(
            sentences("first line\n\n  second: part"),
            vec![
                vec![clause("first line", Ending::None)],
                vec![
                    clause("second", Ending::Colon),
                    clause("part", Ending::None)
                ],
            ]
        );
        // A single newline is a space.
        assert_eq!(
            sentences("one\ntwo."),
            vec![vec![clause("one two", Ending::Period)]]
        );
    }

    #[test]
    fn marks_inside_words_and_numbers_do_not_split() {
        assert_eq!(
            sentences("It costs 3.5 dollars, a,b stays."),
            vec![vec![
                clause("It costs 3.5 dollars", Ending::Comma),
                clause("a,b stays", Ending::Period)
            ]]
        );
    }

    #[test]
    fn runs_of_marks_and_closing_quotes_are_one_ending() {
        assert_eq!(
            sentences("Really?! \"Yes.\" Wait... (ok)"),
            vec![
                vec![clause("Really", Ending::Question)],
                vec![clause("\"Yes\"", Ending::Period)],
                vec![clause("Wait", Ending::Period)],
                vec![clause("(ok)", Ending::None)],
            ]
        );
    }

    #[test]
    fn full_width_marks_end_clauses_without_spaces() {
        assert_eq!(
            sentences("你好，世界。再见！"),
            vec![
                vec![
                    clause("你好", Ending::Comma),
                    clause("世界", Ending::Period)
                ],
                vec![clause("再见", Ending::Exclamation)],
            ]
        );
    }

    #[test]
    fn clauses_without_words_are_dropped() {
        assert_eq!(sentences(" ... ?! , "), Vec::<Vec<Clause>>::new());
        assert_eq!(sentences(""), Vec::<Vec<Clause>>::new());
        assert_eq!(
            sentences("-- , hi."),
            vec![vec![clause("hi", Ending::Period)]]
        );
    }

    #[test]
    fn sentence_phonemes_carry_the_punctuation() {
        let s = sentence_phonemes(&[
            ("həlˈoʊ".into(), Ending::Comma),
            (" wˈɜːld ".into(), Ending::Period),
        ]);
        assert_eq!(s, "həlˈoʊ, wˈɜːld.");
        assert_eq!(
            sentence_phonemes(&[("a".into(), Ending::Colon), ("b".into(), Ending::None)]),
            "a: b"
        );
    }

    fn alphabet() -> Alphabet {
        let mut ids = BTreeMap::new();
        for (i, c) in ['_', '^', '$', ' ', 'a', 'b', '.'].into_iter().enumerate() {
            ids.insert(c, vec![i as i64]);
        }
        ids.insert('c', vec![7, 8]);
        Alphabet {
            ids,
            rewrite: BTreeMap::new(),
        }
    }

    #[test]
    fn ids_follow_pipers_layout() {
        let a = alphabet();
        assert!(a.missing_symbols().is_empty());
        // ^ _ a _ ' ' _ b _ . _ $
        assert_eq!(a.ids("a b."), (vec![1, 0, 4, 0, 3, 0, 5, 0, 6, 0, 2], 0));
        // A phoneme with several ids gets them all, then one pad.
        assert_eq!(a.ids("c"), (vec![1, 0, 7, 8, 0, 2], 0));
        // Unknown phonemes are left out and counted.
        assert_eq!(a.ids("aXb"), (vec![1, 0, 4, 0, 5, 0, 2], 1));
        assert_eq!(a.ids(""), (vec![1, 0, 2], 0));
    }

    #[test]
    fn the_phoneme_map_rewrites_before_the_lookup() {
        let mut a = alphabet();
        a.rewrite.insert('x', vec!['a', 'b']);
        assert_eq!(a.ids("x"), (vec![1, 0, 4, 0, 5, 0, 2], 0));
        let mut bare = alphabet();
        bare.ids.remove(&'^');
        bare.ids.remove(&'$');
        assert_eq!(bare.missing_symbols(), vec!['^', '$']);
    }

    #[test]
    fn long_phoneme_strings_are_cut_at_spaces() {
        assert_eq!(chunks("ab cd ef", 5), vec!["ab cd", "ef"]);
        assert_eq!(chunks("ab cd ef", 8), vec!["ab cd ef"]);
        assert_eq!(chunks("abcdefgh", 3), vec!["abc", "def", "gh"]);
        assert_eq!(chunks("ab  cd", 2), vec!["ab", "cd"]);
        assert_eq!(chunks("", 4), Vec::<String>::new());
        for piece in chunks(&"word ".repeat(100), 12) {
            assert!(piece.chars().count() <= 12, "{piece}");
        }
    }
}
