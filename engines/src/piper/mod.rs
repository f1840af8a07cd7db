//! The Piper text-to-speech engine (`piper`, feature `tts`): `audio_tts` jobs spoken by a
//! Piper voice (a VITS model in ONNX) run by ONNX Runtime, loaded at run time.
//!
//! # Routing: `modelSource.engine == "onnx"`
//!
//! `onnx` is the protocol's value for models run by ONNX Runtime (PROTOCOL.md §3.6). This
//! engine serves it for `audio_tts`; an `onnx` job of another kind (the reference's ONNX
//! image inpainting) fails "cannot serve <kind> tasks", not retryable. The model id is free
//! text: the engine advertises the wildcard `onnx:*` for `audio_tts` (any voice: the files
//! come with the offer; PROTOCOL.md §3.1), so a studio matching model ids offers it every
//! `onnx` speech job whatever its model id; the voice comes
//! from `modelSource.files`: two files with role `model`, the VITS `<name>.onnx` and its
//! config `<name>.onnx.json`, told apart by name, fetched and verified into
//! `<models_root>/<model id>/` like every model file.
//!
//! # From text to speech
//!
//! 1. The text is checked first: empty (or only spaces) or longer than
//!    [`MAX_TEXT_CHARS`] characters is `InvalidInput`, as is a `speed` outside
//!    [`MIN_SPEED`]..=[`MAX_SPEED`] (default 1).
//! 2. It is cut into sentences and clauses, each clause keeping the punctuation that ends
//!    it ([`text::sentences`]).
//! 3. Each clause is phonemized by espeak-ng in the voice's `espeak.voice`
//!    ([`espeak`]); a sentence's phoneme string is its clauses' phonemes each followed by
//!    its punctuation (Piper keeps `.` `,` `?` `!` `;` `:`).
//! 4. A sentence's phonemes become ids through the voice's `phoneme_id_map` in Piper's
//!    layout (`^ _ p1 _ ... pn _ $`, [`text::Alphabet::ids`]); a sentence longer than
//!    [`MAX_PHONEMES_PER_RUN`] phonemes is run in pieces cut at word boundaries.
//! 5. Each piece runs through the model with `scales = [noise_scale, length_scale / speed,
//!    noise_w]` from the voice's `inference` values; `sid` picks the speaker of a
//!    multi-speaker voice from the task's `voice` ([`voice::VoiceConfig::speaker`]).
//! 6. The sentences' audio, in order with [`SENTENCE_SILENCE_SECONDS`] of silence between
//!    them, becomes a 16-bit mono PCM WAV at the voice's sample rate (hound). The result
//!    is always `wav`, whatever `ext` asked for. `language` is not used: the voice speaks
//!    its own language.
//!
//! # What the worker needs
//!
//! ONNX Runtime 1.17 or newer ([`runtime`]: config `onnxruntime_library`, else
//! `ORT_DYLIB_PATH`, else `libonnxruntime.so` on the loader's path) and espeak-ng on
//! `PATH`. Either missing fails the job `EngineNotAvailable` (not retryable) with the
//! install hint, before any model file is downloaded.
//!
//! The last voices used stay loaded ([`KEPT_VOICES`], within the settings' memory budget,
//! charged the `.onnx` file's size) in the engines' [`ModelCache`].

pub mod espeak;
pub mod runtime;
pub mod text;
pub mod voice;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use studio_core::wire::{AudioTtsTask, ModelEngine, ModelFile, Task, TaskKind};

use crate::engine::{Engine, EngineOutput, JobRequest};
use crate::error::EngineError;
use crate::model_cache::{FileIdentity, ModelCache};
use crate::models::ModelStore;
use crate::settings::EngineSettings;
use text::Ending;
pub use voice::{Voice, VoiceConfig};

/// The longest text spoken, in characters.
pub const MAX_TEXT_CHARS: usize = 5_000;
/// The slowest `speed` accepted.
pub const MIN_SPEED: f32 = 0.25;
/// The fastest `speed` accepted.
pub const MAX_SPEED: f32 = 4.0;
/// The most phonemes one model run takes; a longer sentence runs in pieces.
pub const MAX_PHONEMES_PER_RUN: usize = 400;
/// Silence between sentences, in seconds (Piper's own default).
pub const SENTENCE_SILENCE_SECONDS: f32 = 0.2;
/// Voices kept loaded at once.
pub const KEPT_VOICES: usize = 2;

/// The Piper engine. Cheap to share; one job at a time per loaded voice.
pub struct PiperEngine {
    store: ModelStore,
    library: PathBuf,
    cache: ModelCache<Arc<Mutex<Voice>>>,
}

impl std::fmt::Debug for PiperEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PiperEngine")
            .field("models_root", &self.store.root())
            .field("onnxruntime_library", &self.library)
            .finish()
    }
}

/// What a spoken text came to, beside the WAV.
#[derive(Clone, Debug, PartialEq)]
pub struct Speech {
    /// The WAV file.
    pub wav: Vec<u8>,
    /// Its sample rate, Hz.
    pub sample_rate: u32,
    /// Its length in samples.
    pub samples: usize,
    /// The sentences spoken.
    pub sentences: usize,
    /// Phonemes the voice had no id for (left out).
    pub unknown_phonemes: usize,
}

impl PiperEngine {
    /// An engine whose voices live in `store`, loading ONNX Runtime from
    /// `settings.onnxruntime_library` (else `ORT_DYLIB_PATH`, else the default name).
    pub fn new(store: ModelStore, settings: &EngineSettings) -> PiperEngine {
        PiperEngine {
            store,
            library: runtime::library_path(settings.onnxruntime_library.as_deref()),
            cache: ModelCache::new(settings.model_memory_budget_bytes, KEPT_VOICES),
        }
    }

    /// The ONNX Runtime library this engine loads.
    pub fn library(&self) -> &Path {
        &self.library
    }

    /// Checks what the engine needs on this machine: ONNX Runtime (loaded now) and
    /// espeak-ng.
    pub fn check_available(&self) -> Result<(), EngineError> {
        runtime::ensure_loaded(&self.library)?;
        espeak::check()
    }

    /// The voice whose model is `onnx` and config `json`, loaded once and kept.
    pub fn voice(&self, onnx: &Path, json: &Path) -> Result<Arc<Mutex<Voice>>, EngineError> {
        runtime::ensure_loaded(&self.library)?;
        let identity = FileIdentity::of([onnx, json])?;
        let charge = std::fs::metadata(onnx).map(|m| m.len()).unwrap_or(0);
        let fetched = self.cache.get_or_load(identity, |_| {
            let voice = Voice::load(onnx, json)?;
            Ok((Arc::new(Mutex::new(voice)), charge))
        })?;
        Ok(fetched.model)
    }

    /// Speaks `task` with the voice in `onnx` + `json` (checks, phonemes, model, WAV).
    /// [`Engine::dispatch`] is this after the download.
    pub fn speak(
        &self,
        onnx: &Path,
        json: &Path,
        task: &AudioTtsTask,
    ) -> Result<Speech, EngineError> {
        let speed = check_task(task)?;
        let voice = self.voice(onnx, json)?;
        let mut voice = voice.lock().unwrap_or_else(|p| p.into_inner());
        let config = voice.config.clone();
        let speaker = config.speaker(task.voice.as_deref())?;
        let length_scale = config.length_scale / speed;

        let mut phonemized: Vec<String> = Vec::new();
        for sentence in text::sentences(&task.text) {
            let mut clauses: Vec<(String, Ending)> = Vec::with_capacity(sentence.len());
            for clause in sentence {
                let phonemes = espeak::phonemize(&config.espeak_voice, &clause.text)?;
                clauses.push((phonemes, clause.ending));
            }
            let phonemes = text::sentence_phonemes(&clauses);
            if phonemes.chars().any(char::is_alphanumeric) {
                phonemized.push(phonemes);
            }
        }
        if phonemized.is_empty() {
            return Err(EngineError::invalid_input(
                "the text has nothing to say: no words espeak-ng can phonemize",
            ));
        }

        let silence = (SENTENCE_SILENCE_SECONDS * config.sample_rate as f32) as usize;
        let mut audio: Vec<f32> = Vec::new();
        let mut unknown = 0;
        for (i, sentence) in phonemized.iter().enumerate() {
            if i > 0 {
                audio.extend(std::iter::repeat_n(0.0, silence));
            }
            for piece in text::chunks(sentence, MAX_PHONEMES_PER_RUN) {
                let (ids, missing) = config.alphabet.ids(&piece);
                unknown += missing;
                audio.extend(voice.synthesize(&ids, length_scale, speaker)?);
            }
        }
        drop(voice);
        let samples = audio.len();
        Ok(Speech {
            wav: wav(&audio, config.sample_rate)?,
            sample_rate: config.sample_rate,
            samples,
            sentences: phonemized.len(),
            unknown_phonemes: unknown,
        })
    }
}

/// The task's checks that need no voice; the speed to use.
pub fn check_task(task: &AudioTtsTask) -> Result<f32, EngineError> {
    let chars = task.text.chars().count();
    if task.text.trim().is_empty() {
        return Err(EngineError::invalid_input("the text to speak is empty"));
    }
    if chars > MAX_TEXT_CHARS {
        return Err(EngineError::invalid_input(format!(
            "the text to speak has {chars} characters; at most {MAX_TEXT_CHARS} are spoken in \
             one job"
        )));
    }
    let speed = task.speed.unwrap_or(1.0);
    if !(MIN_SPEED..=MAX_SPEED).contains(&speed) {
        return Err(EngineError::invalid_input(format!(
            "speed {speed} is outside {MIN_SPEED}..={MAX_SPEED}"
        )));
    }
    Ok(speed)
}

/// 16-bit mono PCM WAV of float samples (clipped to [-1, 1]).
fn wav(samples: &[f32], sample_rate: u32) -> Result<Vec<u8>, EngineError> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut bytes = Vec::with_capacity(44 + 2 * samples.len());
    let mut writer = hound::WavWriter::new(std::io::Cursor::new(&mut bytes), spec)
        .map_err(|e| EngineError::io(format!("writing the WAV: {e}")))?;
    for &s in samples {
        let s = (s.clamp(-1.0, 1.0) * f32::from(i16::MAX)).round() as i16;
        writer
            .write_sample(s)
            .map_err(|e| EngineError::io(format!("writing the WAV: {e}")))?;
    }
    writer
        .finalize()
        .map_err(|e| EngineError::io(format!("writing the WAV: {e}")))?;
    Ok(bytes)
}

/// The voice's two files among `files` (role `model`): `(<name>.onnx, <name>.onnx.json)`.
pub fn voice_files(files: &[ModelFile]) -> Result<(&ModelFile, &ModelFile), EngineError> {
    let models: Vec<&ModelFile> = files.iter().filter(|f| f.role == "model").collect();
    let pick = |suffix: &str| {
        let found: Vec<&&ModelFile> = models
            .iter()
            .filter(|f| f.filename.to_ascii_lowercase().ends_with(suffix))
            .collect();
        match found.as_slice() {
            [one] => Ok(**one),
            _ => Err(EngineError::invalid_input(format!(
                "a Piper voice is two `model` files, <name>.onnx and <name>.onnx.json; this \
                 model source has {} `model` file(s) ending in `{suffix}`",
                found.len()
            ))),
        }
    };
    Ok((pick(".onnx")?, pick(".onnx.json")?))
}

impl Engine for PiperEngine {
    fn name(&self) -> &'static str {
        "piper"
    }

    fn serves(&self) -> Vec<ModelEngine> {
        vec![ModelEngine::Onnx]
    }

    fn capabilities(&self) -> BTreeMap<TaskKind, Vec<String>> {
        BTreeMap::from([(TaskKind::AudioTts, vec![ModelEngine::Onnx.wildcard()])])
    }

    fn dispatch(&self, job: &JobRequest) -> Result<EngineOutput, EngineError> {
        self.ensure_source(job)?;
        let Task::AudioTts(task) = &job.task else {
            return Err(EngineError::unsupported_kind(self.name(), job.kind()));
        };
        // Everything that needs no download first: the text, the files named, and what
        // this machine must have.
        check_task(task)?;
        let (onnx, json) = voice_files(&job.source.files)?;
        self.check_available()?;
        let paths = self
            .store
            .ensure(&job.model, &[onnx.clone(), json.clone()])?;
        let [onnx, json] = paths.as_slice() else {
            return Err(EngineError::io("the model store returned no file paths"));
        };
        let speech = self.speak(onnx, json, task)?;
        Ok(EngineOutput::Binary {
            bytes: speech.wav,
            ext: "wav".to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(text: &str, speed: Option<f32>) -> AudioTtsTask {
        AudioTtsTask {
            text: text.into(),
            speed,
            ..AudioTtsTask::default()
        }
    }

    #[test]
    fn text_and_speed_are_checked() {
        assert_eq!(check_task(&task("hello", None)).unwrap(), 1.0);
        assert_eq!(check_task(&task("hello", Some(1.5))).unwrap(), 1.5);
        for (t, needle) in [
            (task("", None), "empty"),
            (task(" \n\t ", None), "empty"),
            (task(&"a".repeat(MAX_TEXT_CHARS + 1), None), "at most 5000"),
            (task("hi", Some(0.0)), "speed"),
            (task("hi", Some(10.0)), "speed"),
        ] {
            let err = check_task(&t).unwrap_err();
            assert!(!err.retryable());
            assert!(err.message.contains(needle), "{}", err.message);
        }
        // The limit counts characters, not bytes.
        assert!(check_task(&task(&"é".repeat(MAX_TEXT_CHARS), None)).is_ok());
    }

    fn file(role: &str, name: &str) -> ModelFile {
        ModelFile {
            role: role.into(),
            url: format!("https://example.org/{name}"),
            filename: name.into(),
            approx_bytes: None,
            sha256: None,
        }
    }

    #[test]
    fn the_voice_files_are_told_apart_by_name() {
        let files = [
            file("model", "en_US-joe-medium.onnx.json"),
            file("model", "en_US-joe-medium.onnx"),
            file("vae", "other.onnx"),
        ];
        let (onnx, json) = voice_files(&files).unwrap();
        assert_eq!(onnx.filename, "en_US-joe-medium.onnx");
        assert_eq!(json.filename, "en_US-joe-medium.onnx.json");
        for bad in [
            vec![file("model", "v.onnx")],
            vec![file("model", "v.onnx.json")],
            vec![
                file("model", "a.onnx"),
                file("model", "b.onnx"),
                file("model", "a.onnx.json"),
            ],
            vec![file("text-encoder", "v.onnx"), file("model", "v.onnx.json")],
        ] {
            let err = voice_files(&bad).unwrap_err();
            assert!(!err.retryable());
            assert!(err.message.contains("two `model` files"), "{}", err.message);
        }
    }

    #[test]
    fn wav_is_16_bit_mono_pcm_clipped() {
        let bytes = wav(&[0.0, 0.5, -2.0, 1.0], 22050).unwrap();
        let mut reader = hound::WavReader::new(std::io::Cursor::new(bytes)).unwrap();
        let spec = reader.spec();
        assert_eq!(
            (spec.channels, spec.sample_rate, spec.bits_per_sample),
            (1, 22050, 16)
        );
        let samples: Vec<i16> = reader.samples::<i16>().map(Result::unwrap).collect();
        assert_eq!(samples, vec![0, 16384, -32767, 32767]);
    }
}
