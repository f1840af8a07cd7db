//! The CTranslate2 model format (`model.bin`), read without CTranslate2, and the mapping of
//! its `WhisperSpec` variables onto candle's (Hugging Face) Whisper names.
//!
//! # `model.bin` layout (little-endian)
//!
//! ```text
//! u32 binary_version                      (1..=6 are read)
//! if version >= 2: string spec_name, u32 spec_revision
//! u32 num_variables
//! num_variables times:
//!     string name                          e.g. "encoder/layer_0/ffn/linear_0/weight"
//!     u8     rank
//!     u32    dims[rank]
//!     if version >= 4: u8 dtype_id, u32 num_bytes
//!     else:            u8 item_size, u32 num_elements  (dtype guessed from the size)
//!     u8     data[num_bytes]                row-major
//! if version >= 3:
//!     u32 num_aliases
//!     num_aliases times: string alias, string target_variable
//! ```
//!
//! A `string` is a `u16` byte length (counting a trailing NUL) followed by the bytes.
//! `dtype_id` indexes `float32, int8, int16, int32, float16, bfloat16`. Quantised weights
//! (`int8`/`int16`) carry a `<name>_scale` variable (per output row for int8, one value for
//! int16) and dequantise as `q / scale`.
//!
//! # Whisper variable names
//!
//! CTranslate2 fuses projections: encoder and decoder self-attention keep Q, K and V in one
//! `linear_0` (`[3d, d]`), the decoder's cross-attention keeps Q in `linear_0` and K, V in
//! `linear_1` (`[2d, d]`); the key projection has no bias in Whisper, so its slice of the
//! fused bias is zero and is dropped. `gamma`/`beta` are layer-norm weight/bias. The
//! encoder's sinusoidal position table is recomputed by candle and not used. The model
//! dimensions come from the tensor shapes and the `*/num_heads` scalars.

use std::collections::HashMap;
use std::ops::Range;

use candle_core::{Device, Tensor};
use candle_transformers::models::whisper::Config;

use super::native::{Arr, ArrData, Source};
use crate::error::EngineError;

/// The newest `model.bin` binary version this reader understands.
pub const MAX_BINARY_VERSION: u32 = 6;

/// Element type of a CTranslate2 variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ct2DType {
    F32,
    I8,
    I16,
    I32,
    F16,
    BF16,
}

impl Ct2DType {
    fn from_id(id: u8) -> Option<Ct2DType> {
        Some(match id {
            0 => Ct2DType::F32,
            1 => Ct2DType::I8,
            2 => Ct2DType::I16,
            3 => Ct2DType::I32,
            4 => Ct2DType::F16,
            5 => Ct2DType::BF16,
            _ => return None,
        })
    }

    fn from_item_size(size: u8) -> Option<Ct2DType> {
        Some(match size {
            4 => Ct2DType::F32,
            2 => Ct2DType::I16,
            1 => Ct2DType::I8,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Ct2DType::I8 => 1,
            Ct2DType::I16 | Ct2DType::F16 | Ct2DType::BF16 => 2,
            Ct2DType::F32 | Ct2DType::I32 => 4,
        }
    }
}

/// One variable of a `model.bin`: its name, shape, type and where its bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ct2Variable {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: Ct2DType,
    /// Byte range of the data in the file.
    pub data: Range<usize>,
}

/// A parsed `model.bin` (the bytes are kept; variables point into them).
#[derive(Clone, Debug)]
pub struct Ct2Model {
    pub binary_version: u32,
    /// The spec name (`WhisperSpec`, ...); empty before version 2.
    pub spec: String,
    pub spec_revision: u32,
    pub variables: Vec<Ct2Variable>,
    /// `(alias, target)` pairs.
    pub aliases: Vec<(String, String)>,
    bytes: Vec<u8>,
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize, what: &str) -> Result<Range<usize>, EngineError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let range = self.pos..end;
                self.pos = end;
                Ok(range)
            }
            None => Err(bad(format!(
                "truncated at byte {} while reading {what} ({n} bytes needed, {} left)",
                self.pos,
                self.bytes.len() - self.pos
            ))),
        }
    }

    fn u8(&mut self, what: &str) -> Result<u8, EngineError> {
        let r = self.take(1, what)?;
        Ok(self.bytes[r.start])
    }

    fn u16(&mut self, what: &str) -> Result<u16, EngineError> {
        let r = self.take(2, what)?;
        Ok(u16::from_le_bytes(
            self.bytes[r].try_into().expect("2 bytes"),
        ))
    }

    fn u32(&mut self, what: &str) -> Result<u32, EngineError> {
        let r = self.take(4, what)?;
        Ok(u32::from_le_bytes(
            self.bytes[r].try_into().expect("4 bytes"),
        ))
    }

    fn string(&mut self, what: &str) -> Result<String, EngineError> {
        let len = self.u16(what)? as usize;
        let r = self.take(len, what)?;
        let raw = &self.bytes[r];
        let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
        String::from_utf8(raw.to_vec()).map_err(|_| bad(format!("{what} is not UTF-8")))
    }
}

fn bad(message: impl std::fmt::Display) -> EngineError {
    EngineError::failed(format!("CTranslate2 model.bin: {message}"), false)
}

impl Ct2Model {
    /// Parses a whole `model.bin`.
    pub fn parse(bytes: Vec<u8>) -> Result<Ct2Model, EngineError> {
        let mut r = Reader {
            bytes: &bytes,
            pos: 0,
        };
        let binary_version = r.u32("the binary version")?;
        if binary_version == 0 || binary_version > MAX_BINARY_VERSION {
            return Err(bad(format!(
                "unsupported binary version {binary_version} (1..={MAX_BINARY_VERSION} are read)"
            )));
        }
        let (spec, spec_revision) = if binary_version >= 2 {
            (r.string("the spec name")?, r.u32("the spec revision")?)
        } else {
            (String::new(), 1)
        };
        let count = r.u32("the variable count")? as usize;
        let mut variables = Vec::with_capacity(count.min(100_000));
        for i in 0..count {
            let name = r.string(&format!("the name of variable {i}"))?;
            let rank = r.u8(&format!("the rank of `{name}`"))? as usize;
            let mut shape = Vec::with_capacity(rank);
            for _ in 0..rank {
                shape.push(r.u32(&format!("the shape of `{name}`"))? as usize);
            }
            let (dtype, num_bytes) = if binary_version >= 4 {
                let id = r.u8(&format!("the type of `{name}`"))?;
                let dtype = Ct2DType::from_id(id)
                    .ok_or_else(|| bad(format!("`{name}` has an unknown type id {id}")))?;
                (dtype, r.u32(&format!("the size of `{name}`"))? as usize)
            } else {
                let size = r.u8(&format!("the item size of `{name}`"))?;
                let dtype = Ct2DType::from_item_size(size)
                    .ok_or_else(|| bad(format!("`{name}` has an unknown item size {size}")))?;
                let n = r.u32(&format!("the size of `{name}`"))? as usize;
                (dtype, n * size as usize)
            };
            // Every dimension's size counts, even beside a zero one: an empty tensor of
            // shape [0, 2^40, 2^40] holds no bytes, but its strides overflow.
            let needed = shape
                .iter()
                .filter(|&&d| d != 0)
                .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
                .map(|n| if shape.contains(&0) { 0 } else { n });
            if needed != Some(num_bytes) {
                return Err(bad(format!(
                    "`{name}`: shape {shape:?} of {dtype:?} needs {} bytes, the file says {num_bytes}",
                    needed.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string())
                )));
            }
            let data = r.take(num_bytes, &format!("the data of `{name}`"))?;
            variables.push(Ct2Variable {
                name,
                shape,
                dtype,
                data,
            });
        }
        let mut aliases = Vec::new();
        if binary_version >= 3 {
            let n = r.u32("the alias count")?;
            for _ in 0..n {
                let alias = r.string("an alias")?;
                let target = r.string("an alias target")?;
                aliases.push((alias, target));
            }
        }
        Ok(Ct2Model {
            binary_version,
            spec,
            spec_revision,
            variables,
            aliases,
            bytes,
        })
    }

    /// The variable called `name` (aliases resolved).
    pub fn get(&self, name: &str) -> Option<&Ct2Variable> {
        let target = self
            .aliases
            .iter()
            .find(|(alias, _)| alias == name)
            .map(|(_, target)| target.as_str())
            .unwrap_or(name);
        self.variables.iter().find(|v| v.name == target)
    }

    /// The raw bytes of `var`.
    pub fn data(&self, var: &Ct2Variable) -> &[u8] {
        &self.bytes[var.data.clone()]
    }

    /// A scalar integer variable (`*/num_heads`, ...).
    pub fn scalar_int(&self, name: &str) -> Option<i64> {
        let v = self.get(name)?;
        if !v.shape.is_empty() {
            return None;
        }
        let d = self.data(v);
        Some(match v.dtype {
            Ct2DType::I8 => d[0] as i8 as i64,
            Ct2DType::I16 => i16::from_le_bytes([d[0], d[1]]) as i64,
            Ct2DType::I32 => i32::from_le_bytes([d[0], d[1], d[2], d[3]]) as i64,
            _ => return None,
        })
    }

    /// The variable `name` as loaded: f32 and IEEE half kept as they are, bfloat16
    /// converted to f32, int8 / int16 weights dequantised with their `<name>_scale`.
    pub fn array(&self, name: &str) -> Result<Arr, EngineError> {
        self.array_part(name, None)
    }

    /// [`Ct2Model::array`], or with `part = Some((index, parts))` only the `index`-th of
    /// `parts` equal blocks of rows (one projection of a fused one), converting only those.
    fn array_part(&self, name: &str, part: Option<(usize, usize)>) -> Result<Arr, EngineError> {
        let v = self
            .get(name)
            .ok_or_else(|| bad(format!("variable `{name}` is missing")))?;
        let mut data = self.data(v);
        let mut shape = v.shape.clone();
        let (start, count) = match part {
            None => (0, shape.first().copied().unwrap_or(1)),
            Some((index, parts)) => {
                let rows = shape.first().copied().unwrap_or(0);
                if parts == 0 || rows % parts != 0 {
                    return Err(bad(format!(
                        "`{name}`: {rows} rows do not split into {parts} projections"
                    )));
                }
                (index * rows / parts, rows / parts)
            }
        };
        let quantised = matches!(v.dtype, Ct2DType::I8 | Ct2DType::I16);
        if part.is_some() && !quantised {
            // Plain values: convert only the rows asked for.
            let rows = shape.first().copied().unwrap_or(1).max(1);
            let per = data.len() / rows;
            data = &data[start * per..(start + count) * per];
            if let Some(first) = shape.first_mut() {
                *first = count;
            }
        }
        let data = match v.dtype {
            Ct2DType::F32 => ArrData::F32(
                data.as_chunks::<4>()
                    .0
                    .iter()
                    .map(|&b| f32::from_le_bytes(b))
                    .collect(),
            ),
            Ct2DType::F16 => ArrData::F16(
                data.as_chunks::<2>()
                    .0
                    .iter()
                    .map(|&b| u16::from_le_bytes(b))
                    .collect(),
            ),
            Ct2DType::BF16 => ArrData::F32(
                data.as_chunks::<2>()
                    .0
                    .iter()
                    .map(|&b| half::bf16::from_bits(u16::from_le_bytes(b)).to_f32())
                    .collect(),
            ),
            Ct2DType::I8 | Ct2DType::I16 => ArrData::F32(self.dequantize(name, v)?),
            Ct2DType::I32 => {
                return Err(bad(format!("`{name}` is int32, not a weight")));
            }
        };
        let a = Arr { shape, data };
        Ok(match part {
            Some(_) if quantised => a.rows(start, count),
            _ => a,
        })
    }

    /// The variable `name` as an f32 tensor (see [`Ct2Model::array`]).
    pub fn tensor(&self, name: &str, device: &Device) -> Result<Tensor, EngineError> {
        let a = self.array(name)?;
        let shape = a.shape.clone();
        Tensor::from_vec(a.into_f32(), shape, device).map_err(|e| bad(format!("`{name}`: {e}")))
    }

    fn dequantize(&self, name: &str, v: &Ct2Variable) -> Result<Vec<f32>, EngineError> {
        let data = self.data(v);
        let values: Vec<f32> = match v.dtype {
            Ct2DType::I8 => data.iter().map(|&b| b as i8 as f32).collect(),
            _ => data
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]) as f32)
                .collect(),
        };
        let scale = self.array(&format!("{name}_scale"))?.into_f32();
        if scale.is_empty() {
            return Err(bad(format!("`{name}_scale` is empty")));
        }
        let rows = v.shape.first().copied().unwrap_or(1).max(1);
        let per_row = values.len() / rows;
        Ok(values
            .chunks(per_row.max(1))
            .enumerate()
            .flat_map(|(row, chunk)| {
                let s = if scale.len() == rows {
                    scale[row]
                } else {
                    scale[0]
                };
                chunk.iter().map(move |&q| q / s)
            })
            .collect())
    }

    /// How many `<prefix>/layer_<i>/...` layers exist (consecutive from 0), found in one
    /// pass over the variables.
    fn count_layers(&self, prefix: &str) -> usize {
        let lead = format!("{prefix}/layer_");
        let present: std::collections::BTreeSet<usize> = self
            .variables
            .iter()
            .filter_map(|v| {
                let rest = v.name.strip_prefix(&lead)?;
                let (index, _) = rest.split_once('/')?;
                index
                    .parse()
                    .ok()
                    .filter(|n: &usize| n.to_string() == index)
            })
            .collect();
        (0..).take_while(|i| present.contains(i)).count()
    }

    /// The Whisper model dimensions, from the tensor shapes and `num_heads` scalars.
    /// `suppress_tokens` is left empty (the caller reads it from `config.json`).
    pub fn whisper_config(&self) -> Result<Config, EngineError> {
        if !self.spec.is_empty() && self.spec != "WhisperSpec" {
            return Err(bad(format!(
                "the model is a `{}`, not a Whisper model (WhisperSpec)",
                self.spec
            )));
        }
        let shape = |name: &str| -> Result<Vec<usize>, EngineError> {
            self.get(name)
                .map(|v| v.shape.clone())
                .ok_or_else(|| bad(format!("variable `{name}` is missing")))
        };
        let conv1 = shape("encoder/conv1/weight")?; // [d, n_mels, 3]
        let embed = shape("decoder/embeddings/weight")?; // [vocab, d]
        let dec_pos = shape("decoder/position_encodings/encodings")?; // [n_text_ctx, d]
        let enc_pos = shape("encoder/position_encodings/encodings")
            .ok()
            .and_then(|s| s.first().copied())
            .unwrap_or(1500);
        if conv1.len() != 3 || embed.len() != 2 || dec_pos.len() != 2 {
            return Err(bad(
                "unexpected ranks of the conv1/embedding/position tensors",
            ));
        }
        let d_model = conv1[0];
        let heads = |name: &str| -> Result<usize, EngineError> {
            match self.scalar_int(name) {
                Some(n) if n > 0 => Ok(n as usize),
                // Older specs store no head count; Whisper uses 64-wide heads.
                _ => Ok((d_model / 64).max(1)),
            }
        };
        let cfg = Config {
            num_mel_bins: conv1[1],
            max_source_positions: enc_pos,
            d_model,
            encoder_attention_heads: heads("encoder/num_heads")?,
            encoder_layers: self.count_layers("encoder"),
            vocab_size: embed[0],
            max_target_positions: dec_pos[0],
            decoder_attention_heads: heads("decoder/num_heads")?,
            decoder_layers: self.count_layers("decoder"),
            suppress_tokens: Vec::new(),
        };
        if cfg.encoder_layers == 0 || cfg.decoder_layers == 0 {
            return Err(bad("no encoder or decoder layers found"));
        }
        if embed[1] != d_model || dec_pos[1] != d_model {
            return Err(bad(format!(
                "inconsistent widths: conv1 {d_model}, embeddings {}, positions {}",
                embed[1], dec_pos[1]
            )));
        }
        Ok(cfg)
    }

    /// The tensor a Hugging Face Whisper checkpoint calls `hf_name`
    /// (`model.encoder.layers.0.self_attn.q_proj.weight`, ...), sliced out of the fused
    /// projection that holds it (see the module docs); an error for a name no Whisper
    /// variable maps to.
    pub fn hf_array(&self, hf_name: &str) -> Result<Arr, EngineError> {
        let (name, part) = ct2_location(hf_name)
            .ok_or_else(|| bad(format!("no CTranslate2 variable holds `{hf_name}`")))?;
        self.array_part(&name, part)
    }

    /// Every tensor candle's Whisper model loads, under its Hugging Face name, as f32 on
    /// `device`.
    pub fn whisper_tensors(
        &self,
        cfg: &Config,
        device: &Device,
    ) -> Result<HashMap<String, Tensor>, EngineError> {
        let mut out = HashMap::new();
        for name in hf_names(cfg) {
            let a = self.hf_array(&name)?;
            let shape = a.shape.clone();
            let t = Tensor::from_vec(a.into_f32(), shape, device)
                .map_err(|e| bad(format!("`{name}`: {e}")))?;
            out.insert(name, t);
        }
        Ok(out)
    }
}

impl Source for Ct2Model {
    fn get(&self, name: &str) -> Result<Arr, EngineError> {
        self.hf_array(name)
    }
}

/// The Hugging Face names of the tensors of a Whisper model with dimensions `cfg` (the
/// key projections have no bias; the encoder's position table is left out: candle
/// recomputes it).
pub fn hf_names(cfg: &Config) -> Vec<String> {
    let mut names = Vec::new();
    let linear = |names: &mut Vec<String>, p: &str, bias: bool| {
        names.push(format!("{p}.weight"));
        if bias {
            names.push(format!("{p}.bias"));
        }
    };
    for conv in ["conv1", "conv2"] {
        linear(&mut names, &format!("model.encoder.{conv}"), true);
    }
    let attention = |names: &mut Vec<String>, p: &str| {
        for (proj, bias) in [
            ("q_proj", true),
            ("k_proj", false),
            ("v_proj", true),
            ("out_proj", true),
        ] {
            linear(names, &format!("{p}.{proj}"), bias);
        }
    };
    for (side, layers) in [
        ("encoder", cfg.encoder_layers),
        ("decoder", cfg.decoder_layers),
    ] {
        for i in 0..layers {
            let p = format!("model.{side}.layers.{i}");
            linear(&mut names, &format!("{p}.self_attn_layer_norm"), true);
            attention(&mut names, &format!("{p}.self_attn"));
            if side == "decoder" {
                linear(&mut names, &format!("{p}.encoder_attn_layer_norm"), true);
                attention(&mut names, &format!("{p}.encoder_attn"));
            }
            for m in ["final_layer_norm", "fc1", "fc2"] {
                linear(&mut names, &format!("{p}.{m}"), true);
            }
        }
        linear(&mut names, &format!("model.{side}.layer_norm"), true);
    }
    names.push("model.decoder.embed_tokens.weight".into());
    names.push("model.decoder.embed_positions.weight".into());
    names
}

/// Where the Hugging Face tensor `hf_name` lives in a CTranslate2 Whisper model: the
/// variable, and for a fused projection `(index, parts)`: the `index`-th of `parts` equal
/// blocks of its rows.
pub fn ct2_location(hf_name: &str) -> Option<(String, Option<(usize, usize)>)> {
    let rest = hf_name.strip_prefix("model.")?;
    let (side, rest) = rest.split_once('.')?;
    if side != "encoder" && side != "decoder" {
        return None;
    }
    let fixed = match (side, rest) {
        ("encoder", "embed_positions.weight") => Some("encoder/position_encodings/encodings"),
        ("decoder", "embed_positions.weight") => Some("decoder/position_encodings/encodings"),
        ("decoder", "embed_tokens.weight") => Some("decoder/embeddings/weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some((name.to_string(), None));
    }
    let (module, param) = rest.rsplit_once('.')?;
    let norm_param = match param {
        "weight" => "gamma",
        "bias" => "beta",
        _ => return None,
    };
    if module == "layer_norm" {
        return Some((format!("{side}/layer_norm/{norm_param}"), None));
    }
    if let Some(conv) = module.strip_prefix("conv") {
        return Some((format!("{side}/conv{conv}/{param}"), None));
    }
    let rest = module.strip_prefix("layers.")?;
    let (layer, module) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let p = format!("{side}/layer_{layer}");
    let (var, part, norm) = match module {
        "self_attn_layer_norm" => ("self_attention/layer_norm", None, true),
        "self_attn.q_proj" => ("self_attention/linear_0", Some((0, 3)), false),
        "self_attn.k_proj" => ("self_attention/linear_0", Some((1, 3)), false),
        "self_attn.v_proj" => ("self_attention/linear_0", Some((2, 3)), false),
        "self_attn.out_proj" => ("self_attention/linear_1", None, false),
        "encoder_attn_layer_norm" => ("attention/layer_norm", None, true),
        "encoder_attn.q_proj" => ("attention/linear_0", None, false),
        "encoder_attn.k_proj" => ("attention/linear_1", Some((0, 2)), false),
        "encoder_attn.v_proj" => ("attention/linear_1", Some((1, 2)), false),
        "encoder_attn.out_proj" => ("attention/linear_2", None, false),
        "final_layer_norm" => ("ffn/layer_norm", None, true),
        "fc1" => ("ffn/linear_0", None, false),
        "fc2" => ("ffn/linear_1", None, false),
        _ => return None,
    };
    let param = if norm { norm_param } else { param };
    Some((format!("{p}/{var}/{param}"), part))
}

/// Writes a `model.bin` (binary version 6) holding `variables` (name, shape, dtype id,
/// raw bytes) and `aliases`. For tests and tools: the inverse of [`Ct2Model::parse`].
pub fn write_model_bin(
    spec: &str,
    revision: u32,
    variables: &[(&str, &[u32], u8, &[u8])],
    aliases: &[(&str, &str)],
) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&((s.len() + 1) as u16).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }
    let mut out = Vec::new();
    out.extend_from_slice(&MAX_BINARY_VERSION.to_le_bytes());
    string(&mut out, spec);
    out.extend_from_slice(&revision.to_le_bytes());
    out.extend_from_slice(&(variables.len() as u32).to_le_bytes());
    for (name, shape, dtype, data) in variables {
        string(&mut out, name);
        out.push(shape.len() as u8);
        for d in *shape {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.push(*dtype);
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
    }
    out.extend_from_slice(&(aliases.len() as u32).to_le_bytes());
    for (alias, target) in aliases {
        string(&mut out, alias);
        string(&mut out, target);
    }
    out
}
