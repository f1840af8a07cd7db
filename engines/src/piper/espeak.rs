//! Phonemes from espeak-ng, the phonemizer Piper voices are trained on, through its
//! command line: `espeak-ng -q --ipa -b 1 -v <voice> --stdin`, the text on standard input,
//! IPA phonemes on standard output (one line per clause espeak sees).
//!
//! Why the program and not the library: the library keeps global state (not safe to call
//! from two threads), its phoneme call reports the punctuation that ended a clause only
//! from 1.52 on (Debian 12 ships 1.51), and a crash in it would take the worker down. The
//! program runs in its own process, works with every espeak-ng the distributions ship, and
//! needs nothing at build time. The punctuation Piper keeps is ours to know: the text is
//! split into clauses here ([`super::text::sentences`]) and each clause is phonemized alone,
//! so its ending is known exactly; a process per clause costs a few milliseconds.
//!
//! espeak-ng marks words it reads in another language with `(fr)`-style flags; they are
//! removed, as Piper does.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::error::{EngineError, EngineErrorKind};

/// The program run (found on `PATH`).
pub const PROGRAM: &str = "espeak-ng";

/// The install hint of a missing espeak-ng.
pub const INSTALL_HINT: &str =
    "install espeak-ng (Debian/Ubuntu: apt-get install espeak-ng; macOS: brew install espeak-ng)";

/// Checks that espeak-ng runs (`--version`); `EngineNotAvailable` with the install hint
/// otherwise.
pub fn check() -> Result<(), EngineError> {
    match Command::new(PROGRAM)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(not_available(&format!(
            "`{PROGRAM} --version` failed ({status})"
        ))),
        Err(e) => Err(not_available(&format!("cannot run `{PROGRAM}` ({e})"))),
    }
}

fn not_available(why: &str) -> EngineError {
    EngineError::new(
        EngineErrorKind::EngineNotAvailable,
        format!("the piper engine needs espeak-ng: {why}; {INSTALL_HINT}"),
    )
}

/// Checks an espeak voice name before it reaches the command line: letters, digits and
/// `-`, `_`, `+`, `/`, not starting with `-`.
pub fn check_voice(voice: &str) -> Result<(), String> {
    let ok = !voice.is_empty()
        && !voice.starts_with('-')
        && voice
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'+' | b'/'));
    if ok {
        Ok(())
    } else {
        Err(format!("`{voice}` is not an espeak-ng voice name"))
    }
}

/// The IPA phonemes of `text` (one clause) in espeak voice `voice`: espeak's lines joined
/// by spaces, language flags removed. A voice espeak-ng lacks is `EngineNotAvailable`.
pub fn phonemize(voice: &str, text: &str) -> Result<String, EngineError> {
    check_voice(voice).map_err(EngineError::invalid_input)?;
    let mut child = Command::new(PROGRAM)
        .args(["-q", "--ipa", "-b", "1", "-v", voice, "--stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| not_available(&format!("cannot run `{PROGRAM}` ({e})")))?;
    {
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| EngineError::io(format!("writing to {PROGRAM}: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| EngineError::io(format!("reading from {PROGRAM}: {e}")))?;
    if !out.status.success() {
        // espeak-ng fails for a voice (language) it does not have; nothing else in a
        // clause of text makes it fail, and trying again does not help.
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(EngineError::new(
            EngineErrorKind::EngineNotAvailable,
            format!(
                "`{PROGRAM} -v {voice}` failed ({}): {}; the Piper voice's espeak.voice must be \
                 a voice this espeak-ng has (`{PROGRAM} --voices` lists them)",
                out.status,
                stderr.trim()
            ),
        ));
    }
    Ok(clean(&String::from_utf8_lossy(&out.stdout)))
}

/// espeak's output made one line: lines joined by a space, `(xx)` language flags and
/// zero-width joiners removed, whitespace runs made one space.
pub fn clean(output: &str) -> String {
    let mut text = String::with_capacity(output.len());
    let mut rest = output;
    while let Some(open) = rest.find('(') {
        let after = &rest[open + 1..];
        match after.find(')') {
            Some(close)
                if close > 0
                    && after[..close]
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
            {
                text.push_str(&rest[..open]);
                rest = &after[close + 1..];
            }
            _ => {
                text.push_str(&rest[..=open]);
                rest = after;
            }
        }
    }
    text.push_str(rest);
    text.replace('\u{200d}', "")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_cleaned() {
        assert_eq!(clean("həlˈoʊ\nwˈɜːld\n"), "həlˈoʊ wˈɜːld");
        assert_eq!(clean("(fr)bɔ̃ʒˈuːɹ(en) ænd"), "bɔ̃ʒˈuːɹ ænd");
        assert_eq!(clean("bɹˈa\u{200d}ʊn  (x y) ()"), "bɹˈaʊn (x y) ()");
        assert_eq!(clean(""), "");
    }

    #[test]
    fn voice_names_are_checked() {
        for ok in [
            "en-us",
            "en",
            "cmn",
            "de",
            "en-gb-x-rp",
            "mb/mb-de1",
            "en+f3",
        ] {
            assert_eq!(check_voice(ok), Ok(()), "{ok}");
        }
        for bad in ["", "-q", "en us", "en;rm", "../x\n"] {
            assert!(check_voice(bad).is_err(), "{bad:?}");
        }
    }
}
