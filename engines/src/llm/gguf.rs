//! What the engine reads from a GGUF before (or instead of) loading its weights: the
//! header facts and memory charge ([`inspect`]), the tokenizer and chat template
//! ([`load_tokenizer`]), and the in-memory rewrite that converts slow quant types for
//! candle ([`rewrite_gguf`]).

use std::fs::File;
use std::io::{BufReader, Cursor, Read, Seek, SeekFrom};
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

/// The longest array a GGUF's metadata may hold (elements): vocabularies and their merges
/// have a few hundred thousand.
pub const MAX_METADATA_ARRAY_LEN: u64 = 1 << 22;
/// The most metadata values a GGUF may hold in all, array elements included. The reader
/// keeps each as a value of tens of bytes, so a file of one-byte elements would otherwise
/// take tens of times its size in memory.
pub const MAX_METADATA_VALUES: u64 = 1 << 24;

/// Reads the GGUF header of `path`.
pub(super) fn read_header(path: &Path) -> Result<(File, gguf_file::Content), EngineError> {
    let mut file = File::open(path)
        .map_err(|e| EngineError::io(format!("cannot open model file {}: {e}", path.display())))?;
    let content = read_header_from(&mut file, path)?;
    Ok((file, content))
}

/// Reads a GGUF header from `r` (named `shown` in errors) after [`check_metadata`].
fn read_header_from<R: Read + Seek>(
    r: &mut R,
    shown: &Path,
) -> Result<gguf_file::Content, EngineError> {
    let unreadable = |e: &dyn std::fmt::Display| {
        not_retryable(format!(
            "model file {} is not a readable GGUF file: {e}",
            shown.display()
        ))
    };
    check_metadata(&mut BufReader::new(&mut *r)).map_err(|e| unreadable(&e))?;
    r.seek(SeekFrom::Start(0)).map_err(|e| unreadable(&e))?;
    gguf_file::Content::read(r).map_err(|e| unreadable(&e))
}

/// Checks a GGUF's metadata section before candle reads it: no array longer than
/// [`MAX_METADATA_ARRAY_LEN`], at most [`MAX_METADATA_VALUES`] values, and a
/// `general.alignment` that is a power of two (candle divides by it). A file that ends
/// early or has an unknown type passes: candle's reader reports it.
pub fn check_metadata(r: &mut (impl Read + Seek)) -> Result<(), String> {
    match scan_metadata(r) {
        Ok(()) | Err(Scan::Stop) => Ok(()),
        Err(Scan::Refuse(why)) => Err(why),
    }
}

enum Scan {
    /// Not ours to judge (truncated, unknown type, too deep): candle reports it.
    Stop,
    Refuse(String),
}

impl From<std::io::Error> for Scan {
    fn from(_: std::io::Error) -> Scan {
        Scan::Stop
    }
}

fn scan_metadata(r: &mut (impl Read + Seek)) -> Result<(), Scan> {
    fn u32_of(r: &mut impl Read) -> Result<u32, Scan> {
        let mut b = [0u8; 4];
        r.read_exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn u64_of(r: &mut impl Read) -> Result<u64, Scan> {
        let mut b = [0u8; 8];
        r.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    struct Meta {
        wide: bool,
        values: u64,
    }
    impl Meta {
        fn len(&self, r: &mut impl Read) -> Result<u64, Scan> {
            if self.wide {
                u64_of(r)
            } else {
                u32_of(r).map(u64::from)
            }
        }
        fn count(&mut self, n: u64) -> Result<(), Scan> {
            self.values = self.values.saturating_add(n);
            if self.values > MAX_METADATA_VALUES {
                return Err(Scan::Refuse(format!(
                    "its metadata holds more than {MAX_METADATA_VALUES} values"
                )));
            }
            Ok(())
        }
        /// Skips a value of GGUF type `ty`; returns an integer value's number.
        fn skip(
            &mut self,
            r: &mut (impl Read + Seek),
            ty: u32,
            depth: usize,
        ) -> Result<Option<i128>, Scan> {
            fn fixed(n: usize, r: &mut impl Read) -> Result<[u8; 8], Scan> {
                let mut b = [0u8; 8];
                r.read_exact(&mut b[..n])?;
                Ok(b)
            }
            Ok(match ty {
                0 => Some(i128::from(fixed(1, r)?[0])),
                1 => Some(i128::from(fixed(1, r)?[0] as i8)),
                2 | 3 => {
                    let b = fixed(2, r)?;
                    let v = u16::from_le_bytes([b[0], b[1]]);
                    Some(if ty == 2 {
                        i128::from(v)
                    } else {
                        i128::from(v as i16)
                    })
                }
                6 | 7 | 11 | 12 => {
                    fixed(
                        if ty == 6 {
                            4
                        } else if ty == 7 {
                            1
                        } else {
                            8
                        },
                        r,
                    )?;
                    None
                }
                4 => Some(i128::from(u32_of(r)?)),
                5 => Some(i128::from(u32_of(r)? as i32)),
                10 => Some(i128::from(u64_of(r)?)),
                8 => {
                    let n = self.len(r)?;
                    r.seek(SeekFrom::Current(i64::try_from(n).map_err(|_| Scan::Stop)?))?;
                    None
                }
                9 if depth < 8 => {
                    let elem = u32_of(r)?;
                    let n = self.len(r)?;
                    if n > MAX_METADATA_ARRAY_LEN {
                        return Err(Scan::Refuse(format!(
                            "a metadata array of {n} elements (at most {MAX_METADATA_ARRAY_LEN})"
                        )));
                    }
                    self.count(n)?;
                    let size = match elem {
                        0 | 1 | 7 => Some(1),
                        2 | 3 => Some(2),
                        4..=6 => Some(4),
                        10..=12 => Some(8),
                        _ => None,
                    };
                    match size {
                        Some(size) => {
                            r.seek(SeekFrom::Current((n * size) as i64))?;
                        }
                        None => {
                            for _ in 0..n {
                                self.skip(r, elem, depth + 1)?;
                            }
                        }
                    }
                    None
                }
                _ => return Err(Scan::Stop),
            })
        }
    }
    let magic = u32_of(r)?;
    if magic != 0x4655_4747 && magic != 0x4747_5546 {
        return Err(Scan::Stop);
    }
    let version = u32_of(r)?;
    if !(1..=3).contains(&version) {
        return Err(Scan::Stop);
    }
    let mut meta = Meta {
        wide: version >= 2,
        values: 0,
    };
    let _tensors = meta.len(r)?;
    let kvs = meta.len(r)?;
    for _ in 0..kvs {
        meta.count(1)?;
        let key_len = meta.len(r)?;
        let mut key = Vec::new();
        (&mut *r).take(key_len.min(64)).read_to_end(&mut key)?;
        if key_len > 64 {
            r.seek(SeekFrom::Current((key_len - 64) as i64))?;
        }
        let ty = u32_of(r)?;
        let value = meta.skip(r, ty, 0)?;
        // The integer types candle takes an alignment from (u8 to i32; others it ignores).
        if key_len <= 64 && key == b"general.alignment" && ty <= 5 {
            if let Some(v) = value {
                // Negative signed values are ignored by candle (the default applies).
                let signed = matches!(ty, 1 | 3 | 5);
                if v == 0 || (v > 0 && (v as u128).count_ones() != 1) || (v < 0 && !signed) {
                    return Err(Scan::Refuse(format!(
                        "general.alignment is {v}, not a power of two"
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Everything the engine reads from a GGUF header before loading weights (the header's
/// facts, the tokenizer and the chat template), from `bytes` in memory: the fuzz target's
/// way in, through the same checks as a model file's.
pub fn inspect_bytes(bytes: &[u8]) -> Result<(GgufInfo, GgufTokenizer, ChatTemplate), EngineError> {
    let shown = Path::new("<memory>");
    let ct = read_header_from(&mut Cursor::new(bytes), shown)?;
    let info = header_info_sized(shown, bytes.len() as u64, &ct)?;
    let (tokenizer, template) = tokenizer_and_template(shown, &ct)?;
    Ok((info, tokenizer, template))
}

pub(super) fn header_info(path: &Path, ct: &gguf_file::Content) -> Result<GgufInfo, EngineError> {
    let file_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    header_info_sized(path, file_bytes, ct)
}

fn header_info_sized(
    path: &Path,
    file_bytes: u64,
    ct: &gguf_file::Content,
) -> Result<GgufInfo, EngineError> {
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
    // Element counts from the header's shapes, saturating: a crafted shape may overflow.
    let elems = |dims: &[usize]| {
        dims.iter()
            .fold(1u64, |acc, &d| acc.saturating_mul(d as u64))
    };
    let embedding_bytes = ct
        .tensor_infos
        .get("token_embd.weight")
        .map(|t| elems(t.shape.dims()).saturating_mul(4))
        .unwrap_or(0);
    let requantize_extra_bytes = ct
        .tensor_infos
        .values()
        .filter(|t| requantizable(t.ggml_dtype, t.shape.dims()))
        .map(|t| {
            let blocks = elems(t.shape.dims()) / 32;
            let q8 = GgmlDType::Q8_0.type_size() as u64;
            let now = (t.ggml_dtype.type_size() * 32 / t.ggml_dtype.block_size()) as u64;
            blocks.saturating_mul(q8.saturating_sub(now))
        })
        .fold(0u64, u64::saturating_add);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A GGUF v3 with no tensors and the given metadata: `(key, type, value bytes)`.
    fn gguf(kvs: &[(&str, u32, Vec<u8>)]) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend(0u64.to_le_bytes());
        out.extend((kvs.len() as u64).to_le_bytes());
        for (key, ty, value) in kvs {
            out.extend((key.len() as u64).to_le_bytes());
            out.extend(key.as_bytes());
            out.extend(ty.to_le_bytes());
            out.extend(value);
        }
        out
    }

    fn string(s: &str) -> Vec<u8> {
        let mut v = (s.len() as u64).to_le_bytes().to_vec();
        v.extend(s.as_bytes());
        v
    }

    #[test]
    fn a_zero_alignment_is_an_error_not_a_division_by_zero() {
        let arch = ("general.architecture", 8, string("llama"));
        for (ty, value) in [
            (4u32, 0u32.to_le_bytes().to_vec()),
            (0, vec![0]),
            (3, 0u16.to_le_bytes().to_vec()),
            (4, 24u32.to_le_bytes().to_vec()),
        ] {
            let bytes = gguf(&[arch.clone(), ("general.alignment", ty, value)]);
            let e = inspect_bytes(&bytes).unwrap_err();
            assert!(!e.retryable());
            assert!(e.message.contains("power of two"), "{e}");
        }
        // A good alignment passes this check (and fails later, for want of a tokenizer).
        let bytes = gguf(&[arch, ("general.alignment", 4, 64u32.to_le_bytes().to_vec())]);
        let e = inspect_bytes(&bytes).unwrap_err();
        assert!(!e.message.contains("power of two"), "{e}");
    }

    #[test]
    fn metadata_arrays_are_bounded() {
        let array = |elem: u32, n: u64, bytes: usize| {
            let mut v = elem.to_le_bytes().to_vec();
            v.extend(n.to_le_bytes());
            v.extend(vec![0u8; bytes]);
            v
        };
        let n = MAX_METADATA_ARRAY_LEN + 1;
        let big = gguf(&[("x", 9, array(0, n, n as usize))]);
        let e = inspect_bytes(&big).unwrap_err();
        assert!(e.message.contains("metadata array"), "{e}");
        // Many arrays within the per-array limit still count against the total.
        let per = MAX_METADATA_ARRAY_LEN;
        let arrays: Vec<(String, u32, Vec<u8>)> = (0..=(MAX_METADATA_VALUES / per))
            .map(|i| (format!("a{i}"), 9, array(0, per, per as usize)))
            .collect();
        let refs: Vec<(&str, u32, Vec<u8>)> = arrays
            .iter()
            .map(|(k, t, v)| (k.as_str(), *t, v.clone()))
            .collect();
        let e = inspect_bytes(&gguf(&refs)).unwrap_err();
        assert!(e.message.contains("values"), "{e}");
        // Truncated or unknown input is left to the reader's own errors.
        assert!(check_metadata(&mut Cursor::new(&big[..40])).is_ok());
        assert!(check_metadata(&mut Cursor::new(b"not a gguf")).is_ok());
    }
}
