//! What the engine reads from a GGUF before (or instead of) loading its weights: the
//! header facts and memory charge ([`inspect`]), the tokenizer and chat template
//! ([`load_tokenizer`]), and the in-memory rewrite that converts slow quant types for
//! candle ([`rewrite_gguf`]).

use std::fs::File;
use std::io::Cursor;
use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::Device;

use super::template::ChatTemplate;
use super::tokenizer::GgufTokenizer;
use super::{cpu, not_retryable};
use crate::error::EngineError;

/// What a loaded model is charged against the budget, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryCharge {
    /// The GGUF file's size.
    pub file_bytes: u64,
    /// The f32 token-embedding table candle builds at load.
    pub embedding_bytes: u64,
    /// What converting the [`SLOW_TYPES`] weights to Q8_0 adds (charged only when the
    /// engine does it, see
    /// [`LlmEngine::with_requantize`](super::LlmEngine::with_requantize)).
    pub requantize_extra_bytes: u64,
}

impl MemoryCharge {
    /// The total charge on the native path: the file's size (it holds the tensors as
    /// stored, the embeddings included, and no f32 copy of them).
    pub fn total_native(&self) -> u64 {
        self.file_bytes
    }

    /// The total charge on candle with the weights as stored.
    pub fn total(&self) -> u64 {
        self.file_bytes + self.embedding_bytes
    }

    /// The total charge when the slow types are converted to Q8_0.
    pub fn total_requantized(&self) -> u64 {
        self.total() + self.requantize_extra_bytes
    }
}

/// Weight types candle 0.11 multiplies with portable scalar code only (it has AVX2 / NEON
/// kernels for Q4_0, Q8_0 and the K-quants). Converting them to Q8_0 at load costs 1.7x
/// their bytes (Q4_1: 20 -> 34 bytes per 32 weights) and no meaningful precision (a 4-bit
/// grid re-expressed on an 8-bit one), and buys the SIMD kernels.
pub const SLOW_TYPES: [GgmlDType; 3] = [GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q5_1];

pub(super) fn requantize_by_default() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn requantizable(dtype: GgmlDType, dims: &[usize]) -> bool {
    SLOW_TYPES.contains(&dtype) && dims.len() == 2 && dims[1].is_multiple_of(32)
}

/// An in-memory GGUF equal to `ct` (read from `file`) with the [`SLOW_TYPES`] matrices
/// converted to Q8_0, ready for `ModelWeights::from_gguf`.
pub(super) fn requantized(
    ct: &gguf_file::Content,
    file: &mut File,
) -> candle_core::Result<(gguf_file::Content, Cursor<Vec<u8>>)> {
    rewrite_gguf(ct, file, |t| {
        if requantizable(t.dtype(), t.shape().dims()) {
            QTensor::quantize(&t.dequantize(&Device::Cpu)?, GgmlDType::Q8_0)
        } else {
            Ok(t)
        }
    })
}

/// An in-memory GGUF with `ct`'s metadata and every tensor of `ct` (read from `file`, in
/// name order) passed through `convert`, read back and ready for
/// `ModelWeights::from_gguf`. The engine converts slow quant types with it; tests build
/// reference models (e.g. every tensor as f32).
pub fn rewrite_gguf(
    ct: &gguf_file::Content,
    file: &mut (impl std::io::Read + std::io::Seek),
    mut convert: impl FnMut(QTensor) -> candle_core::Result<QTensor>,
) -> candle_core::Result<(gguf_file::Content, Cursor<Vec<u8>>)> {
    let mut names: Vec<&String> = ct.tensor_infos.keys().collect();
    names.sort();
    let mut tensors: Vec<(&str, QTensor)> = Vec::with_capacity(names.len());
    for name in names {
        let t = ct.tensor_infos[name].read(file, ct.tensor_data_offset, &Device::Cpu)?;
        tensors.push((name.as_str(), convert(t)?));
    }
    // The writer aligns to 32 bytes whatever the source said.
    let metadata: Vec<(&str, &gguf_file::Value)> = ct
        .metadata
        .iter()
        .filter(|(k, _)| k.as_str() != "general.alignment")
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
    let mut buf = Cursor::new(Vec::new());
    gguf_file::write(&mut buf, &metadata, &refs)?;
    drop(tensors);
    buf.set_position(0);
    let content = gguf_file::Content::read(&mut buf)?;
    Ok((content, buf))
}

/// Facts about a GGUF read from its header (no weights loaded).
#[derive(Clone, Debug, PartialEq)]
pub struct GgufInfo {
    /// `general.architecture`.
    pub architecture: String,
    /// `general.name`, if any.
    pub name: Option<String>,
    /// `<arch>.context_length`, if any.
    pub context_length: Option<usize>,
    /// The memory the model is charged when loaded.
    pub charge: MemoryCharge,
    /// Whether the native forward pass can run it ([`cpu::check`]: a llama model whose
    /// tensors are all F32 / F16 / Q4_0 / Q4_1 / Q8_0).
    pub native: bool,
}

/// Reads the GGUF header of `path`.
pub(super) fn read_header(path: &Path) -> Result<(File, gguf_file::Content), EngineError> {
    let mut file = File::open(path)
        .map_err(|e| EngineError::io(format!("cannot open model file {}: {e}", path.display())))?;
    let content = gguf_file::Content::read(&mut file).map_err(|e| {
        not_retryable(format!(
            "model file {} is not a readable GGUF file: {e}",
            path.display()
        ))
    })?;
    Ok((file, content))
}

pub(super) fn header_info(path: &Path, ct: &gguf_file::Content) -> Result<GgufInfo, EngineError> {
    let md = &ct.metadata;
    let architecture = md
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .ok_or_else(|| {
            not_retryable(format!(
                "model file {} has no general.architecture metadata",
                path.display()
            ))
        })?;
    let name = md
        .get("general.name")
        .and_then(|v| v.to_string().ok())
        .cloned();
    let context_length = md
        .get(&format!("{architecture}.context_length"))
        .and_then(|v| v.to_u64().ok().or_else(|| v.to_u32().ok().map(u64::from)))
        .map(|v| v as usize);
    let file_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let embedding_bytes = ct
        .tensor_infos
        .get("token_embd.weight")
        .map(|t| t.shape.elem_count() as u64 * 4)
        .unwrap_or(0);
    let requantize_extra_bytes = ct
        .tensor_infos
        .values()
        .filter(|t| requantizable(t.ggml_dtype, t.shape.dims()))
        .map(|t| {
            let blocks = (t.shape.elem_count() / 32) as u64;
            let q8 = GgmlDType::Q8_0.type_size() as u64;
            let now = (t.ggml_dtype.type_size() * 32 / t.ggml_dtype.block_size()) as u64;
            blocks * q8.saturating_sub(now)
        })
        .sum();
    Ok(GgufInfo {
        architecture,
        name,
        context_length,
        charge: MemoryCharge {
            file_bytes,
            embedding_bytes,
            requantize_extra_bytes,
        },
        native: cpu::check(ct).is_ok(),
    })
}

/// Reads the header facts of the GGUF at `path` (architecture, context, memory charge).
pub fn inspect(path: &Path) -> Result<GgufInfo, EngineError> {
    let (_, ct) = read_header(path)?;
    header_info(path, &ct)
}

/// The tokenizer and chat template of the GGUF at `path` (no weights loaded): what a
/// caller needs to count a prompt's tokens the way the engine does.
pub fn load_tokenizer(path: &Path) -> Result<(GgufTokenizer, ChatTemplate), EngineError> {
    let (_, ct) = read_header(path)?;
    tokenizer_and_template(path, &ct)
}

pub(super) fn tokenizer_and_template(
    path: &Path,
    ct: &gguf_file::Content,
) -> Result<(GgufTokenizer, ChatTemplate), EngineError> {
    let tokenizer = GgufTokenizer::from_gguf(ct)
        .map_err(|e| not_retryable(format!("model file {}: {e}", path.display())))?;
    let gemma_turns = tokenizer.token_id("<start_of_turn>").is_some()
        && tokenizer.token_id("<end_of_turn>").is_some();
    let template = ChatTemplate::for_vocabulary(
        ct.metadata
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .map(String::as_str),
        gemma_turns,
    );
    Ok((tokenizer, template))
}
