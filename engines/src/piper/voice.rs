//! A Piper voice: its config (`<name>.onnx.json`) and its VITS model (`<name>.onnx`) in an
//! ONNX Runtime session.
//!
//! Facts of the format used here: the config's `audio.sample_rate`, `espeak.voice`,
//! `inference` (`noise_scale`, `length_scale`, `noise_w`), `phoneme_type` (`espeak`),
//! `phoneme_id_map` (phoneme → ids), `phoneme_map` (phoneme → phonemes, optional),
//! `num_speakers` and `speaker_id_map`; the model's inputs `input` (int64 `[1, n]` ids),
//! `input_lengths` (int64 `[1]`), `scales` (float `[3]`: noise scale, length scale, noise
//! width) and, for voices with several speakers, `sid` (int64 `[1]`); its one output is
//! the audio, float samples in [-1, 1] at the sample rate.

use std::collections::BTreeMap;
use std::path::Path;

use ort::session::Session;
use ort::value::Tensor;
use serde_json::Value;

use super::text::Alphabet;
use crate::error::EngineError;

/// A voice's config.
#[derive(Clone, Debug, PartialEq)]
pub struct VoiceConfig {
    /// `audio.sample_rate`, Hz.
    pub sample_rate: u32,
    /// `espeak.voice`: the espeak-ng voice that phonemizes for it.
    pub espeak_voice: String,
    /// `inference.noise_scale` (default 0.667).
    pub noise_scale: f32,
    /// `inference.length_scale` (default 1): above 1 is slower.
    pub length_scale: f32,
    /// `inference.noise_w` (default 0.8).
    pub noise_w: f32,
    /// `phoneme_id_map` and `phoneme_map`.
    pub alphabet: Alphabet,
    /// `num_speakers` (default 1).
    pub num_speakers: u32,
    /// `speaker_id_map`: speaker name → id.
    pub speakers: BTreeMap<String, i64>,
}

fn bad(message: impl std::fmt::Display) -> EngineError {
    EngineError::invalid_input(format!("the Piper voice config (.onnx.json) {message}"))
}

fn number(v: &Value, path: &[&str], default: Option<f64>) -> Result<f64, EngineError> {
    let mut at = v;
    for key in path {
        match at.get(key) {
            Some(next) => at = next,
            None => return default.ok_or_else(|| bad(format!("has no {}", path.join(".")))),
        }
    }
    at.as_f64()
        .filter(|n| n.is_finite())
        .ok_or_else(|| bad(format!("has a {} that is not a number", path.join("."))))
}

/// A map key that must be one Unicode scalar (a phoneme).
fn one_char(key: &str) -> Result<char, EngineError> {
    let mut chars = key.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) => Ok(c),
        _ => Err(bad(format!("maps `{key}`, which is not one phoneme"))),
    }
}

impl VoiceConfig {
    /// Parses the `.onnx.json` text.
    pub fn parse(json: &[u8]) -> Result<VoiceConfig, EngineError> {
        let v: Value =
            serde_json::from_slice(json).map_err(|e| bad(format!("is not JSON ({e})")))?;
        let sample_rate = number(&v, &["audio", "sample_rate"], None)?;
        if !(1000.0..=192_000.0).contains(&sample_rate) || sample_rate.fract() != 0.0 {
            return Err(bad(format!("has a sample rate of {sample_rate} Hz")));
        }
        if let Some(kind) = v.get("phoneme_type").and_then(Value::as_str) {
            if kind != "espeak" {
                return Err(bad(format!(
                    "has phoneme_type `{kind}`; this engine phonemizes with espeak-ng only"
                )));
            }
        }
        let espeak_voice = v
            .get("espeak")
            .and_then(|e| e.get("voice"))
            .and_then(Value::as_str)
            .ok_or_else(|| bad("has no espeak.voice"))?
            .to_string();
        let mut alphabet = Alphabet::default();
        let map = v
            .get("phoneme_id_map")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("has no phoneme_id_map"))?;
        for (key, ids) in map {
            let ids = ids
                .as_array()
                .and_then(|ids| ids.iter().map(Value::as_i64).collect::<Option<Vec<_>>>())
                .ok_or_else(|| bad(format!("maps `{key}` to something other than ids")))?;
            alphabet.ids.insert(one_char(key)?, ids);
        }
        let missing = alphabet.missing_symbols();
        if !missing.is_empty() {
            return Err(bad(format!(
                "has no id for {missing:?} in its phoneme_id_map (Piper's ^, _ and $)"
            )));
        }
        if let Some(rewrite) = v.get("phoneme_map").and_then(Value::as_object) {
            for (key, to) in rewrite {
                let to = to
                    .as_array()
                    .and_then(|to| {
                        to.iter()
                            .map(|p| p.as_str().and_then(|p| one_char(p).ok()))
                            .collect::<Option<Vec<_>>>()
                    })
                    .ok_or_else(|| {
                        bad(format!("has a phoneme_map entry `{key}` it cannot read"))
                    })?;
                alphabet.rewrite.insert(one_char(key)?, to);
            }
        }
        let num_speakers = number(&v, &["num_speakers"], Some(1.0))?.max(1.0) as u32;
        let speakers = v
            .get("speaker_id_map")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(name, id)| Some((name.clone(), id.as_i64()?)))
                    .collect()
            })
            .unwrap_or_default();
        Ok(VoiceConfig {
            sample_rate: sample_rate as u32,
            espeak_voice,
            noise_scale: number(&v, &["inference", "noise_scale"], Some(0.667))? as f32,
            length_scale: number(&v, &["inference", "length_scale"], Some(1.0))? as f32,
            noise_w: number(&v, &["inference", "noise_w"], Some(0.8))? as f32,
            alphabet,
            num_speakers,
            speakers,
        })
    }

    /// The speaker id for the task's `voice`: `None` for a one-speaker voice (whatever
    /// `voice` says); for several speakers, `default` (or nothing) is speaker 0, a name of
    /// `speaker_id_map` its id, a number below `num_speakers` itself.
    pub fn speaker(&self, voice: Option<&str>) -> Result<Option<i64>, EngineError> {
        if self.num_speakers <= 1 {
            return Ok(None);
        }
        let voice = voice.unwrap_or("default");
        if voice == "default" {
            return Ok(Some(0));
        }
        if let Some(&id) = self.speakers.get(voice) {
            return Ok(Some(id));
        }
        if let Ok(id) = voice.parse::<i64>() {
            if (0..i64::from(self.num_speakers)).contains(&id) {
                return Ok(Some(id));
            }
        }
        let known: Vec<&str> = self.speakers.keys().take(20).map(String::as_str).collect();
        Err(EngineError::invalid_input(format!(
            "voice `{voice}` is not a speaker of this Piper voice ({} speakers; names: {})",
            self.num_speakers,
            known.join(", ")
        )))
    }
}

/// A loaded voice: config and session.
pub struct Voice {
    /// The config.
    pub config: VoiceConfig,
    session: Session,
    output: String,
    has_sid: bool,
}

impl std::fmt::Debug for Voice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Voice")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn ort_error(what: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::failed(format!("{what}: {e}"), false)
}

impl Voice {
    /// Loads the voice: the config from `json`, the model from `onnx` into a session.
    /// ONNX Runtime must be loaded ([`super::runtime::ensure_loaded`]).
    pub fn load(onnx: &Path, json: &Path) -> Result<Voice, EngineError> {
        let text = std::fs::read(json)
            .map_err(|e| EngineError::io(format!("reading {}: {e}", json.display())))?;
        let config = VoiceConfig::parse(&text)?;
        let session = Session::builder()
            .and_then(|mut b| b.commit_from_file(onnx))
            .map_err(|e| ort_error("the Piper voice model (.onnx) does not load", e))?;
        let inputs: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        for needed in ["input", "input_lengths", "scales"] {
            if !inputs.contains(&needed) {
                return Err(EngineError::invalid_input(format!(
                    "the .onnx model is not a Piper voice: it has no `{needed}` input \
                     (inputs: {inputs:?})"
                )));
            }
        }
        let has_sid = inputs.contains(&"sid");
        if config.num_speakers > 1 && !has_sid {
            return Err(EngineError::invalid_input(
                "the Piper voice config names several speakers, its model takes no `sid`",
            ));
        }
        let output = session
            .outputs()
            .first()
            .map(|o| o.name().to_string())
            .ok_or_else(|| EngineError::invalid_input("the .onnx model has no output"))?;
        Ok(Voice {
            config,
            session,
            output,
            has_sid,
        })
    }

    /// The audio of one piece of ids: float samples at the voice's sample rate.
    /// `length_scale` is the voice's divided by the speed; `speaker` as
    /// [`VoiceConfig::speaker`] gave it.
    pub fn synthesize(
        &mut self,
        ids: &[i64],
        length_scale: f32,
        speaker: Option<i64>,
    ) -> Result<Vec<f32>, EngineError> {
        let n = ids.len();
        let tensor = |shape: Vec<i64>, data: Vec<i64>| {
            Tensor::from_array((shape, data)).map_err(|e| ort_error("building an input", e))
        };
        let input = tensor(vec![1, n as i64], ids.to_vec())?;
        let lengths = tensor(vec![1], vec![n as i64])?;
        let scales = Tensor::from_array((
            vec![3_i64],
            vec![self.config.noise_scale, length_scale, self.config.noise_w],
        ))
        .map_err(|e| ort_error("building an input", e))?;
        let outputs = if self.has_sid {
            let sid = tensor(vec![1], vec![speaker.unwrap_or(0)])?;
            self.session.run(ort::inputs![
                "input" => input,
                "input_lengths" => lengths,
                "scales" => scales,
                "sid" => sid,
            ])
        } else {
            self.session.run(ort::inputs![
                "input" => input,
                "input_lengths" => lengths,
                "scales" => scales,
            ])
        }
        .map_err(|e| EngineError::failed(format!("the Piper voice failed: {e}"), true))?;
        let audio = outputs
            .get(&self.output)
            .ok_or_else(|| EngineError::failed("the Piper voice gave no audio", false))?;
        let (_, samples) = audio
            .try_extract_tensor::<f32>()
            .map_err(|e| ort_error("the Piper voice's output is not float audio", e))?;
        Ok(samples.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(extra: Value) -> Value {
        let mut v = json!({
            "audio": {"sample_rate": 22050},
            "espeak": {"voice": "en-us"},
            "inference": {"noise_scale": 0.5, "length_scale": 1.25, "noise_w": 0.7},
            "phoneme_type": "espeak",
            "phoneme_id_map": {"_": [0], "^": [1], "$": [2], " ": [3], "a": [4], "ˈ": [5, 6]},
            "num_speakers": 1,
            "speaker_id_map": {}
        });
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        v
    }

    fn parse(v: &Value) -> Result<VoiceConfig, EngineError> {
        VoiceConfig::parse(v.to_string().as_bytes())
    }

    #[test]
    fn a_voice_config_parses() {
        let c = parse(&config(json!({}))).unwrap();
        assert_eq!(c.sample_rate, 22050);
        assert_eq!(c.espeak_voice, "en-us");
        assert_eq!((c.noise_scale, c.length_scale, c.noise_w), (0.5, 1.25, 0.7));
        assert_eq!(c.alphabet.ids[&'ˈ'], vec![5, 6]);
        assert_eq!(c.num_speakers, 1);
        assert_eq!(c.speaker(Some("anyone")).unwrap(), None);
        // Inference values default to Piper's.
        let mut v = config(json!({}));
        v.as_object_mut().unwrap().remove("inference");
        let c = parse(&v).unwrap();
        assert_eq!(
            (c.noise_scale, c.length_scale, c.noise_w),
            (0.667, 1.0, 0.8)
        );
    }

    #[test]
    fn bad_configs_are_invalid_input() {
        for (extra, needle) in [
            (json!({"audio": {}}), "audio.sample_rate"),
            (json!({"audio": {"sample_rate": 5}}), "sample rate"),
            (json!({"espeak": {}}), "espeak.voice"),
            (json!({"phoneme_type": "text"}), "phoneme_type"),
            (
                json!({"phoneme_id_map": {"_": [0], "^": [1]}}),
                "phoneme_id_map",
            ),
            (
                json!({"phoneme_id_map": {"_": [0], "^": [1], "$": [2], "ab": [3]}}),
                "one phoneme",
            ),
            (
                json!({"phoneme_id_map": {"_": [0], "^": [1], "$": ["x"]}}),
                "ids",
            ),
            (
                json!({"inference": {"noise_scale": "loud"}}),
                "not a number",
            ),
        ] {
            let err = parse(&config(extra.clone())).unwrap_err();
            assert!(!err.retryable(), "{extra}");
            assert!(err.message.contains(needle), "{extra}: {}", err.message);
        }
        assert!(VoiceConfig::parse(b"{oops")
            .unwrap_err()
            .message
            .contains("not JSON"));
    }

    #[test]
    fn speakers_of_a_multi_speaker_voice() {
        let c = parse(&config(json!({
            "num_speakers": 3,
            "speaker_id_map": {"alice": 0, "bob": 2}
        })))
        .unwrap();
        assert_eq!(c.speaker(None).unwrap(), Some(0));
        assert_eq!(c.speaker(Some("default")).unwrap(), Some(0));
        assert_eq!(c.speaker(Some("bob")).unwrap(), Some(2));
        assert_eq!(c.speaker(Some("1")).unwrap(), Some(1));
        let err = c.speaker(Some("carol")).unwrap_err();
        assert!(!err.retryable());
        assert!(err.message.contains("alice, bob"), "{}", err.message);
        assert!(c.speaker(Some("3")).is_err());
    }

    #[test]
    fn the_phoneme_map_is_read() {
        let c = parse(&config(json!({"phoneme_map": {"x": ["a", " "]}}))).unwrap();
        assert_eq!(c.alphabet.rewrite[&'x'], vec!['a', ' ']);
    }
}
