//! A loaded Whisper checkpoint and greedy, timestamped decoding over 30-second windows.
//!
//! # Loading
//!
//! A model directory holds `config.json`, `tokenizer.json` and the weights, either
//! `model.safetensors` (a Hugging Face Whisper checkpoint; any float type) or `model.bin`
//! (the CTranslate2 layout, see [`super::ct2`]). On the CPU the network is the engine's
//! own forward pass ([`super::native`], [`Backend::Native`]): IEEE half weights stay half
//! where a token at a time reads them. On a CUDA device (or with
//! `STUDIO_WHISPER_BACKEND=candle`) the weights are converted to f32 and mapped onto
//! candle-transformers' Whisper encoder and our cached candle decoder
//! ([`super::decoder`], [`Backend::Candle`]). The tokenizer loads on a second thread while
//! the weights are read.
//!
//! # Decoding
//!
//! The audio's log-mel spectrogram is computed once; a window of 3000 frames (30 s) starts
//! at `seek`. For each window: the encoder runs once; the decoder (with a key/value cache)
//! is fed
//! `[<|startofprev|> context...] <|startoftranscript|> [<|lang|> <|task|>]` and extended one
//! greedy (argmax) token at a time, with Whisper's decoding rules applied to the logits:
//! special tokens and the checkpoint's `suppress_tokens` never appear, a blank or
//! end-of-text never starts a window, timestamps come in pairs, never go backwards, the
//! first token is a timestamp of at most 1 s, and text is banned whenever the timestamps
//! together are likelier than any text token. Timestamp pairs close segments; the window
//! then advances to the last complete segment's end (or by the whole window when it ended
//! on a single timestamp or with no timestamp at all). A window whose first step says
//! "no speech" (probability above 0.6) and whose text is unlikely (mean log-probability
//! below -1) is skipped as silence. The context of the next window is the optional
//! `prompt` followed by the tokens decoded so far (the last 223).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::whisper::{model::Whisper, Config};
use serde_json::Value;

use super::ct2::Ct2Model;
use super::decoder::Decoder;
use super::kernels::log_sum_exp;
use super::mel;
use super::native::{self, Arr, ArrData, Source};
use super::tokenizer::Tokenizer;
use crate::error::EngineError;

/// Mel frames in one 30-second window.
pub const N_FRAMES: usize = 3000;
/// Seconds per mel frame.
pub const FRAME_SECONDS: f64 = mel::HOP_LENGTH as f64 / 16_000.0;
/// Seconds per timestamp token step.
pub const TIMESTAMP_SECONDS: f64 = 0.02;
/// The latest first timestamp of a window (Whisper's `max_initial_timestamp`, 1 s).
pub const MAX_INITIAL_TIMESTAMP_STEPS: u32 = 50;
/// No-speech probability above which (with a low mean log-probability) a window is silence.
pub const NO_SPEECH_THRESHOLD: f64 = 0.6;
/// Mean log-probability below which a "no speech" window is skipped.
pub const LOGPROB_THRESHOLD: f64 = -1.0;

/// Which forward pass runs a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The engine's own CPU forward pass ([`super::native`]); the default on the CPU.
    Native,
    /// candle-transformers' encoder and our cached decoder on candle tensors; the default
    /// on a CUDA device.
    Candle,
}

impl Backend {
    /// The default where models run now: [`Backend::Native`] on the CPU,
    /// [`Backend::Candle`] on a GPU. `STUDIO_WHISPER_BACKEND=native|candle` overrides it
    /// (for comparisons).
    pub fn default_here() -> Backend {
        match std::env::var("STUDIO_WHISPER_BACKEND").as_deref() {
            Ok("candle") => Backend::Candle,
            Ok("native") => Backend::Native,
            _ if crate::device::compute_device().is_cpu() => Backend::Native,
            _ => Backend::Candle,
        }
    }

    /// `native` or `candle`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Native => "native",
            Backend::Candle => "candle",
        }
    }
}

/// The network of a loaded model, on one of the backends.
enum Net {
    Native(Box<native::Model>),
    Candle {
        /// candle-transformers' model; its encoder is used.
        model: Box<Whisper>,
        /// The cached decoder (same weights as `model.decoder`).
        decoder: Box<Decoder>,
        /// Final hidden states of the last `forward`.
        hidden: Option<Tensor>,
    },
}

impl Net {
    /// Encodes the window of `frames` mel frames at `start` and sets it as the decoder's
    /// audio; forgets every token.
    fn set_audio(
        &mut self,
        mel: &mel::Spectrogram,
        start: usize,
        frames: usize,
    ) -> Result<(), EngineError> {
        match self {
            Net::Native(m) => {
                m.set_audio(&mel.data, mel.frames, start);
                Ok(())
            }
            Net::Candle { model, decoder, .. } => {
                let mut window = Vec::with_capacity(mel.n_mels * frames);
                for m in 0..mel.n_mels {
                    window.extend_from_slice(&mel.row(m)[start..start + frames]);
                }
                let device = crate::device::compute_device();
                let window = Tensor::from_vec(window, (1, mel.n_mels, frames), &device)
                    .map_err(candle_err)?;
                let features = model.encoder.forward(&window, true).map_err(candle_err)?;
                decoder.set_audio(&features).map_err(candle_err)
            }
        }
    }

    fn reset(&mut self) {
        match self {
            Net::Native(m) => m.reset(),
            Net::Candle { decoder, .. } => decoder.reset(),
        }
    }

    /// Runs `tokens` after those seen since the last reset.
    fn forward(&mut self, tokens: &[u32]) -> Result<(), EngineError> {
        match self {
            Net::Native(m) => m.forward(tokens),
            Net::Candle {
                decoder, hidden, ..
            } => {
                *hidden = Some(decoder.forward(tokens).map_err(candle_err)?);
                Ok(())
            }
        }
    }

    /// Logits of token `pos` of the last `forward`.
    fn logits(&self, pos: usize) -> Result<Vec<f32>, EngineError> {
        match self {
            Net::Native(m) => Ok(m.logits(pos)),
            Net::Candle {
                decoder, hidden, ..
            } => {
                let hidden = hidden
                    .as_ref()
                    .ok_or_else(|| failed("logits asked for before any token ran"))?;
                decoder.logits(hidden, pos).map_err(candle_err)
            }
        }
    }
}

/// What [`WhisperModel::load_weights`] reads besides the tokenizer.
struct Loaded {
    config: Config,
    net: Net,
    weight_bytes: u64,
    /// Never sampled.
    suppress: Vec<u32>,
    /// Not sampled first (empty: the defaults).
    suppress_begin: Vec<u32>,
}

/// A safetensors checkpoint's tensors as a weight [`Source`].
struct HfTensors(HashMap<String, Tensor>);

impl Source for HfTensors {
    fn get(&self, name: &str) -> Result<Arr, EngineError> {
        let t = self
            .0
            .get(name)
            .ok_or_else(|| failed(format!("model.safetensors has no `{name}`")))?;
        let shape = t.dims().to_vec();
        let flat = t.flatten_all().map_err(candle_err)?;
        let data = if t.dtype() == DType::F16 {
            ArrData::F16(
                flat.to_vec1::<half::f16>()
                    .map_err(candle_err)?
                    .into_iter()
                    .map(half::f16::to_bits)
                    .collect(),
            )
        } else {
            ArrData::F32(
                flat.to_dtype(DType::F32)
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(candle_err)?,
            )
        };
        Ok(Arr { shape, data })
    }
}

/// Which weights file a model was loaded from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightsFormat {
    /// `model.safetensors` (Hugging Face layout).
    Safetensors,
    /// `model.bin` (CTranslate2 layout).
    CTranslate2,
}

/// What a transcription is asked to do.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TranscribeOptions {
    /// Spoken language code (`en`, `de`, ...); detected when `None` on multilingual models.
    pub language: Option<String>,
    /// Translate to English instead of transcribing (multilingual models only).
    pub translate: bool,
    /// Text that biases the decoder (names, spelling, style), fed as previous context.
    pub prompt: Option<String>,
}

/// One timed piece of the transcript.
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    pub id: usize,
    /// Start, seconds from the beginning of the audio.
    pub start: f64,
    /// End, seconds.
    pub end: f64,
    pub text: String,
}

/// A finished transcription.
#[derive(Clone, Debug, PartialEq)]
pub struct Transcript {
    pub text: String,
    pub language: String,
    pub segments: Vec<Segment>,
    /// Things the caller asked for that were not done as asked.
    pub warnings: Vec<String>,
}

struct Specials {
    eot: u32,
    sot: u32,
    sot_prev: u32,
    translate: Option<u32>,
    transcribe: Option<u32>,
    no_speech: Option<u32>,
    timestamp_begin: u32,
    /// `(code, token)` of every language token.
    languages: Vec<(String, u32)>,
}

/// A Whisper model ready to transcribe, on [`crate::device::compute_device`] (the CPU, or
/// the first CUDA device in a `cuda` build that finds one).
pub struct WhisperModel {
    net: Net,
    backend: Backend,
    /// Bytes the weights take in memory.
    weight_bytes: u64,
    config: Config,
    tokenizer: Tokenizer,
    front_end: mel::LogMel,
    specials: Specials,
    /// Never sampled.
    suppress: Vec<u32>,
    /// Not sampled as the first token of a window.
    suppress_begin: Vec<u32>,
    english_only: bool,
    format: WeightsFormat,
    dir: PathBuf,
}

impl std::fmt::Debug for WhisperModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhisperModel")
            .field("dir", &self.dir)
            .field("format", &self.format)
            .field("config", &self.config)
            .field("english_only", &self.english_only)
            .field("backend", &self.backend)
            .finish()
    }
}

fn failed(message: impl std::fmt::Display) -> EngineError {
    EngineError::failed(message.to_string(), false)
}

/// The most mel bins a checkpoint may declare (Whisper uses 80 or 128).
pub const MAX_MEL_BINS: usize = 512;
/// The most audio or text positions a checkpoint may declare (Whisper: 1500 and 448).
/// Candle builds tables of these sizes (the text causal mask is their square) before the
/// weights are checked, so a `config.json` claiming billions would abort the process.
pub const MAX_POSITIONS: usize = 8192;
/// The widest model accepted (`d_model`; Whisper large: 1280).
pub const MAX_D_MODEL: usize = 16_384;
/// The most encoder or decoder layers accepted (Whisper large: 32).
pub const MAX_LAYERS: usize = 256;
/// The largest vocabulary accepted (Whisper: 51 865).
pub const MAX_VOCAB: usize = 1 << 20;

/// Checks the dimensions a checkpoint declares against the named limits above before
/// anything is built from them: within the limits, `d_model` even and at least 4, and a
/// whole number of heads.
pub fn check_config(config: &Config) -> Result<(), EngineError> {
    let limit = |what: &str, value: usize, min: usize, max: usize| {
        if (min..=max).contains(&value) {
            Ok(())
        } else {
            Err(failed(format!(
                "the checkpoint declares {what} = {value}; accepted: {min} to {max}"
            )))
        }
    };
    limit("num_mel_bins", config.num_mel_bins, 1, MAX_MEL_BINS)?;
    limit(
        "max_source_positions",
        config.max_source_positions,
        1,
        MAX_POSITIONS,
    )?;
    limit(
        "max_target_positions",
        config.max_target_positions,
        1,
        MAX_POSITIONS,
    )?;
    limit("d_model", config.d_model, 4, MAX_D_MODEL)?;
    limit("encoder_layers", config.encoder_layers, 1, MAX_LAYERS)?;
    limit("decoder_layers", config.decoder_layers, 1, MAX_LAYERS)?;
    limit("vocab_size", config.vocab_size, 1, MAX_VOCAB)?;
    for (what, heads) in [
        ("encoder_attention_heads", config.encoder_attention_heads),
        ("decoder_attention_heads", config.decoder_attention_heads),
    ] {
        if heads == 0 || !config.d_model.is_multiple_of(heads) || !config.d_model.is_multiple_of(2)
        {
            return Err(failed(format!(
                "the checkpoint declares {what} = {heads} over d_model = {}: not a whole \
                 number of even-width heads",
                config.d_model
            )));
        }
    }
    Ok(())
}

fn candle_err(e: candle_core::Error) -> EngineError {
    EngineError::failed(format!("whisper inference failed: {e}"), false)
}

/// Bytes of a model's weights held as f32, from its dimensions: per layer, attention
/// 4 d^2 (plus cross-attention 4 d^2 in the decoder) and the MLP 8 d^2; embeddings,
/// positions and the convolutions besides.
fn f32_weight_bytes(c: &Config) -> u64 {
    let d = c.d_model as u64;
    let enc = c.encoder_layers as u64 * 12 * d * d;
    let dec = c.decoder_layers as u64 * 16 * d * d;
    let emb = (c.vocab_size as u64 + c.max_target_positions as u64) * d;
    let conv = 3 * d * (c.num_mel_bins as u64 + d);
    (enc + dec + emb + conv) * 4
}

fn read_json(path: &Path) -> Result<Value, EngineError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| EngineError::io(format!("reading {}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| failed(format!("{}: not JSON: {e}", path.display())))
}

fn id_list(json: &Value, key: &str) -> Vec<u32> {
    json.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_u64)
                .map(|v| v as u32)
                .collect()
        })
        .unwrap_or_default()
}

/// Which weights a directory holds, if any.
pub fn detect_format(dir: &Path) -> Option<WeightsFormat> {
    if dir.join("model.safetensors").is_file() {
        Some(WeightsFormat::Safetensors)
    } else if dir.join("model.bin").is_file() {
        Some(WeightsFormat::CTranslate2)
    } else {
        None
    }
}

impl WhisperModel {
    /// Loads the checkpoint in `dir` (see the module docs for the layouts) for the
    /// default backend ([`Backend::default_here`]).
    pub fn load(dir: &Path) -> Result<WhisperModel, EngineError> {
        Self::load_with(dir, Backend::default_here())
    }

    /// Loads the checkpoint in `dir` for `backend`.
    pub fn load_with(dir: &Path, backend: Backend) -> Result<WhisperModel, EngineError> {
        let format = detect_format(dir).ok_or_else(|| {
            failed(format!(
                "{} holds no Whisper weights (model.safetensors or CTranslate2 model.bin)",
                dir.display()
            ))
        })?;
        let config_json = read_json(&dir.join("config.json"))?;
        let tokenizer_path = dir.join("tokenizer.json");
        if !tokenizer_path.is_file() {
            return Err(failed(format!(
                "{} has no tokenizer.json (Hugging Face tokenizers format)",
                dir.display()
            )));
        }
        // The tokenizer (a 2 MB JSON) loads on a second thread while the weights are read.
        let (tokenizer, weights) = std::thread::scope(|scope| {
            let tokenizer = scope.spawn(|| Tokenizer::from_file(&tokenizer_path));
            let weights = Self::load_weights(dir, format, &config_json, backend);
            let tokenizer = tokenizer
                .join()
                .unwrap_or_else(|_| Err(failed("loading tokenizer.json panicked")));
            (tokenizer, weights)
        });
        let tokenizer = tokenizer?;
        let Loaded {
            config,
            net,
            weight_bytes,
            suppress,
            suppress_begin,
        } = weights?;
        let specials = Self::specials(&tokenizer, &config)?;
        let english_only = config.vocab_size < 51865;
        let front_end = mel::LogMel::new(config.num_mel_bins);
        Ok(WhisperModel {
            net,
            backend,
            weight_bytes,
            config,
            tokenizer,
            front_end,
            specials,
            suppress,
            suppress_begin: if suppress_begin.is_empty() {
                vec![220, 50256]
            } else {
                suppress_begin
            },
            english_only,
            format,
            dir: dir.to_path_buf(),
        })
    }

    /// The network of the checkpoint in `dir` on `backend`.
    fn load_weights(
        dir: &Path,
        format: WeightsFormat,
        config_json: &Value,
        backend: Backend,
    ) -> Result<Loaded, EngineError> {
        let not_whisper = |e: &dyn std::fmt::Display| {
            failed(format!("{}: not a Whisper checkpoint: {e}", dir.display()))
        };
        let (config, source, suppress, suppress_begin): (Config, Box<dyn Source>, _, _) =
            match format {
                WeightsFormat::CTranslate2 => {
                    let path = dir.join("model.bin");
                    let bytes = std::fs::read(&path)
                        .map_err(|e| EngineError::io(format!("reading {}: {e}", path.display())))?;
                    let ct2 = Ct2Model::parse(bytes)?;
                    let mut config = ct2.whisper_config()?;
                    check_config(&config)?;
                    let suppress = id_list(config_json, "suppress_ids");
                    config.suppress_tokens = suppress.clone();
                    (
                        config,
                        Box::new(ct2),
                        suppress,
                        id_list(config_json, "suppress_ids_begin"),
                    )
                }
                WeightsFormat::Safetensors => {
                    let config: Config = serde_json::from_value(config_json.clone())
                        .map_err(|e| failed(format!("{}/config.json: {e}", dir.display())))?;
                    check_config(&config)
                        .map_err(|e| e.context(format!("{}/config.json", dir.display())))?;
                    let path = dir.join("model.safetensors");
                    let raw = candle_core::safetensors::load(&path, &candle_core::Device::Cpu)
                        .map_err(|e| failed(format!("{}: {e}", path.display())))?;
                    let mut begin = id_list(config_json, "begin_suppress_tokens");
                    if begin.is_empty() {
                        if let Ok(gen) = read_json(&dir.join("generation_config.json")) {
                            begin = id_list(&gen, "begin_suppress_tokens");
                        }
                    }
                    let suppress = config.suppress_tokens.clone();
                    (config, Box::new(HfTensors(raw)), suppress, begin)
                }
            };
        let (net, weight_bytes) = match backend {
            Backend::Native => {
                let weights =
                    native::Weights::load(source.as_ref(), &config).map_err(|e| not_whisper(&e))?;
                let bytes = weights.bytes() as u64;
                (Net::Native(Box::new(native::Model::new(weights))), bytes)
            }
            Backend::Candle => {
                let device = crate::device::compute_device();
                let mut tensors = HashMap::new();
                for name in super::ct2::hf_names(&config) {
                    let a = source.get(&name).map_err(|e| not_whisper(&e))?;
                    let shape = a.shape.clone();
                    let t = Tensor::from_vec(a.into_f32(), shape, &device).map_err(candle_err)?;
                    tensors.insert(name, t);
                }
                let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
                let model = Whisper::load(&vb, config.clone()).map_err(|e| not_whisper(&e))?;
                let decoder = Decoder::load(vb, &config).map_err(|e| not_whisper(&e))?;
                let net = Net::Candle {
                    model: Box::new(model),
                    decoder: Box::new(decoder),
                    hidden: None,
                };
                (net, f32_weight_bytes(&config))
            }
        };
        Ok(Loaded {
            config,
            net,
            weight_bytes,
            suppress,
            suppress_begin,
        })
    }

    fn specials(tokenizer: &Tokenizer, config: &Config) -> Result<Specials, EngineError> {
        let need = |name: &str| {
            tokenizer
                .special(name)
                .ok_or_else(|| failed(format!("tokenizer.json has no `{name}` token")))
        };
        let no_timestamps = need("<|notimestamps|>")?;
        let sot = need("<|startoftranscript|>")?;
        let translate = tokenizer.special("<|translate|>");
        let mut languages: Vec<(String, u32)> = tokenizer
            .specials()
            .filter(|&(_, id)| id > sot && translate.is_none_or(|t| id < t))
            .filter_map(|(content, id)| {
                let code = content.strip_prefix("<|")?.strip_suffix("|>")?;
                (code.len() <= 3 && code.chars().all(|c| c.is_ascii_lowercase()))
                    .then(|| (code.to_string(), id))
            })
            .collect();
        languages.sort_by_key(|&(_, id)| id);
        let timestamp_begin = no_timestamps + 1;
        if timestamp_begin as usize >= config.vocab_size {
            return Err(failed("the model has no timestamp tokens"));
        }
        Ok(Specials {
            eot: need("<|endoftext|>")?,
            sot,
            sot_prev: need("<|startofprev|>")?,
            translate,
            transcribe: tokenizer.special("<|transcribe|>"),
            no_speech: tokenizer
                .special("<|nospeech|>")
                .or_else(|| tokenizer.special("<|nocaptions|>")),
            timestamp_begin,
            languages,
        })
    }

    /// Bytes the weights take in memory.
    pub fn memory_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// The backend running the model.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The model dimensions.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether this is an English-only (`.en`) checkpoint.
    pub fn english_only(&self) -> bool {
        self.english_only
    }

    /// The weights format the model was loaded from.
    pub fn format(&self) -> WeightsFormat {
        self.format
    }

    /// The directory the model was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Transcribes 16 kHz mono `samples`.
    pub fn transcribe(
        &mut self,
        samples: &[f32],
        options: &TranscribeOptions,
    ) -> Result<Transcript, EngineError> {
        let mut warnings = Vec::new();
        let language = options
            .language
            .as_deref()
            .map(|l| l.trim().to_ascii_lowercase())
            .filter(|l| !l.is_empty() && l != "auto");
        let mut language_token = None;
        let mut task_token = None;
        let language_code: Option<String>;
        if self.english_only {
            if let Some(l) = &language {
                if l != "en" && l != "english" {
                    return Err(EngineError::invalid_input(format!(
                        "this Whisper model is English-only; language `{l}` cannot be transcribed"
                    )));
                }
            }
            if options.translate {
                warnings.push(
                    "translate ignored: this English-only model transcribes English as is".into(),
                );
            }
            language_code = Some("en".into());
        } else {
            if let Some(l) = &language {
                let code = if l == "english" { "en" } else { l.as_str() };
                let token = self
                    .specials
                    .languages
                    .iter()
                    .find(|(c, _)| c == code)
                    .map(|&(_, t)| t)
                    .ok_or_else(|| {
                        EngineError::invalid_input(format!(
                            "language `{l}` is not one this Whisper model knows"
                        ))
                    })?;
                language_token = Some(token);
                language_code = Some(code.to_string());
            } else {
                language_code = None;
            }
            task_token = if options.translate {
                self.specials.translate
            } else {
                self.specials.transcribe
            };
        }

        let content_frames = samples.len() / mel::HOP_LENGTH;
        // Thirty seconds of silence after the audio, so every window has 3000 frames.
        let mel = self.front_end.compute_with_silence(samples, 16_000 * 30);

        let prompt_tokens: Vec<u32> = match options.prompt.as_deref().map(str::trim) {
            Some(p) if !p.is_empty() => self.tokenizer.encode(&format!(" {p}")),
            _ => Vec::new(),
        };
        let mut context: Vec<u32> = prompt_tokens;
        let mut segments: Vec<Segment> = Vec::new();
        let mut detected: Option<String> = language_code.clone();
        let mut seek = 0usize;
        while seek < content_frames {
            let window_frames = N_FRAMES.min(content_frames - seek);
            self.net.set_audio(&mel, seek, N_FRAMES)?;
            if !self.english_only && language_token.is_none() {
                let (code, token) = self.detect_language()?;
                language_token = Some(token);
                detected = Some(code);
            }
            let mut sot_sequence = vec![self.specials.sot];
            sot_sequence.extend(language_token);
            sot_sequence.extend(task_token);
            let result = self.decode_window(&context, &sot_sequence)?;
            let offset = seek as f64 * FRAME_SECONDS;
            let window_end = (seek + window_frames) as f64 * FRAME_SECONDS;
            if result.no_speech_prob > NO_SPEECH_THRESHOLD && result.avg_logprob < LOGPROB_THRESHOLD
            {
                seek += window_frames;
                continue;
            }
            let parsed = self.parse_window(&result.tokens);
            tracing::debug!(
                seek_s = offset,
                tokens = result.tokens.len(),
                no_speech_prob = result.no_speech_prob,
                avg_logprob = result.avg_logprob,
                "whisper window decoded"
            );
            for (start, end, tokens) in &parsed.segments {
                self.push_segment(
                    &mut segments,
                    offset + f64::from(*start) * TIMESTAMP_SECONDS,
                    (offset + f64::from(*end) * TIMESTAMP_SECONDS).min(window_end),
                    tokens,
                );
            }
            let advance = match parsed.resume_at {
                Some(step) => (step as usize * 2).clamp(1, window_frames),
                None => {
                    if let Some((start, tokens)) = &parsed.trailing {
                        self.push_segment(
                            &mut segments,
                            offset + f64::from(*start) * TIMESTAMP_SECONDS,
                            window_end,
                            tokens,
                        );
                    }
                    window_frames
                }
            };
            context.extend(
                result
                    .tokens
                    .iter()
                    .copied()
                    .filter(|&t| t != self.specials.eot),
            );
            seek += advance;
        }
        for (i, s) in segments.iter_mut().enumerate() {
            s.id = i;
        }
        let text = segments
            .iter()
            .map(|s| s.text.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        Ok(Transcript {
            text,
            language: detected.unwrap_or_else(|| "en".into()),
            segments,
            warnings,
        })
    }

    fn push_segment(&self, segments: &mut Vec<Segment>, start: f64, end: f64, tokens: &[u32]) {
        let text = self
            .tokenizer
            .decode(tokens, self.specials.eot)
            .trim()
            .to_string();
        if text.is_empty() {
            return;
        }
        let round = |x: f64| (x * 1000.0).round() / 1000.0;
        segments.push(Segment {
            id: segments.len(),
            start: round(start),
            end: round(end.max(start)),
            text,
        });
    }

    fn detect_language(&mut self) -> Result<(String, u32), EngineError> {
        self.net.reset();
        self.net.forward(&[self.specials.sot])?;
        let logits = self.net.logits(0)?;
        let best = self
            .specials
            .languages
            .iter()
            .filter(|&&(_, t)| (t as usize) < logits.len())
            .max_by(|a, b| logits[a.1 as usize].total_cmp(&logits[b.1 as usize]))
            .cloned()
            .ok_or_else(|| failed("the tokenizer has no language tokens"))?;
        Ok(best)
    }

    /// Greedy decoding of one window whose audio is already set on the decoder.
    fn decode_window(
        &mut self,
        context: &[u32],
        sot_sequence: &[u32],
    ) -> Result<WindowResult, EngineError> {
        let n_ctx = self.config.max_target_positions;
        let mut tokens: Vec<u32> = Vec::new();
        let keep = context.len().min(n_ctx / 2 - 1);
        if keep > 0 {
            tokens.push(self.specials.sot_prev);
            tokens.extend_from_slice(&context[context.len() - keep..]);
        }
        let sot_index = tokens.len();
        tokens.extend_from_slice(sot_sequence);
        let sample_begin = tokens.len();
        let sample_len = n_ctx / 2;
        self.net.reset();
        // The prompt in one pass: the no-speech probability is read at <|startoftranscript|>.
        self.net.forward(&tokens)?;
        let mut no_speech_prob = 0f64;
        if let Some(ns) = self.specials.no_speech {
            let at_sot = self.net.logits(sot_index)?;
            no_speech_prob = softmax_prob(&at_sot, ns as usize);
        }
        let mut logits = self.net.logits(tokens.len() - 1)?;
        let mut sum_logprob = 0f64;
        let mut sampled = 0usize;
        for _ in 0..sample_len {
            self.apply_rules(&mut logits, &tokens[sample_begin..]);
            let logprobs = log_softmax(&logits);
            let (next, lp) = logprobs
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, &lp)| (i as u32, lp))
                .unwrap_or((self.specials.eot, 0.0));
            sum_logprob += f64::from(lp);
            sampled += 1;
            if next == self.specials.eot || tokens.len() + 1 >= n_ctx {
                break;
            }
            tokens.push(next);
            self.net.forward(&[next])?;
            logits = self.net.logits(0)?;
        }
        Ok(WindowResult {
            tokens: tokens[sample_begin..].to_vec(),
            avg_logprob: sum_logprob / sampled.max(1) as f64,
            no_speech_prob,
        })
    }

    /// Whisper's logit filters (see the module docs) for the next token after `sampled`.
    fn apply_rules(&self, logits: &mut [f32], sampled: &[u32]) {
        let s = &self.specials;
        let ts = s.timestamp_begin as usize;
        let n = logits.len();
        let ban = |logits: &mut [f32], range: std::ops::Range<usize>| {
            let end = range.end.min(n);
            let start = range.start.min(end);
            logits[start..end].fill(f32::NEG_INFINITY);
        };
        for &t in &self.suppress {
            if (t as usize) < n {
                logits[t as usize] = f32::NEG_INFINITY;
            }
        }
        // Every special token except end-of-text, including <|notimestamps|>.
        ban(logits, s.sot as usize..ts);
        if sampled.is_empty() {
            for &t in &self.suppress_begin {
                if (t as usize) < n {
                    logits[t as usize] = f32::NEG_INFINITY;
                }
            }
        }
        let is_ts = |t: u32| t >= s.timestamp_begin;
        let last_ts = sampled.last().is_some_and(|&t| is_ts(t));
        let penultimate_ts = sampled.len() < 2 || is_ts(sampled[sampled.len() - 2]);
        if last_ts {
            if penultimate_ts {
                ban(logits, ts..n);
            } else {
                ban(logits, 0..s.eot as usize);
            }
        }
        if let Some(&last) = sampled.iter().rev().find(|&&t| is_ts(t)) {
            let min = if last_ts && !penultimate_ts {
                last
            } else {
                last + 1
            };
            ban(logits, ts..min as usize);
        }
        if sampled.is_empty() {
            ban(logits, 0..ts);
            ban(logits, ts + MAX_INITIAL_TIMESTAMP_STEPS as usize + 1..n);
        }
        let logprobs = log_softmax(logits);
        let ts_mass = log_sum_exp(&logprobs[ts.min(n)..]);
        let best_text = logprobs[..ts.min(n)]
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        if ts_mass > best_text {
            ban(logits, 0..ts);
        }
    }

    /// Splits a window's tokens into closed segments `(start_step, end_step, text)`.
    fn parse_window(&self, tokens: &[u32]) -> ParsedWindow {
        let tb = self.specials.timestamp_begin;
        let mut segments = Vec::new();
        let mut start: Option<u32> = None;
        let mut text: Vec<u32> = Vec::new();
        let mut last_end: Option<u32> = None;
        let mut reopened = false;
        for &t in tokens {
            if t >= tb {
                let step = t - tb;
                match start {
                    Some(s) if !text.is_empty() => {
                        segments.push((s, step, std::mem::take(&mut text)));
                        last_end = Some(step);
                        start = None;
                        reopened = false;
                    }
                    _ => {
                        reopened = last_end.is_some();
                        start = Some(step);
                    }
                }
            } else if t < self.specials.eot {
                text.push(t);
            }
        }
        // Whisper's rule: resume from the last complete segment's end unless the window
        // ended on a single timestamp (everything consumed) or produced no timestamps.
        let ends_open = !text.is_empty() || reopened;
        let resume_at = if ends_open && !segments.is_empty() {
            last_end.filter(|&e| e > 0)
        } else {
            None
        };
        let trailing = if resume_at.is_none() && !text.is_empty() {
            Some((start.unwrap_or(0), text))
        } else {
            None
        };
        ParsedWindow {
            segments,
            resume_at,
            trailing,
        }
    }
}

struct WindowResult {
    tokens: Vec<u32>,
    avg_logprob: f64,
    no_speech_prob: f64,
}

struct ParsedWindow {
    segments: Vec<(u32, u32, Vec<u32>)>,
    /// Timestamp step to resume the next window at (`None`: after the whole window).
    resume_at: Option<u32>,
    /// Text after the last timestamp, kept when the window is consumed whole.
    trailing: Option<(u32, Vec<u32>)>,
}

fn log_softmax(xs: &[f32]) -> Vec<f32> {
    let lse = log_sum_exp(xs);
    xs.iter().map(|&x| x - lse).collect()
}

fn softmax_prob(xs: &[f32], index: usize) -> f64 {
    if index >= xs.len() {
        return 0.0;
    }
    f64::from((xs[index] - log_sum_exp(xs)).exp())
}
