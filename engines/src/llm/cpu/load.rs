//! Reading a GGUF for the native pass: the metadata check that says whether (and as
//! what) this pass runs a file, and the tensor bytes as stored.

use std::io::{Read, Seek, SeekFrom};

use candle_core::quantized::gguf_file;

use super::quant::{WType, QK};
use super::{Arch, Config};

fn md_u32(ct: &gguf_file::Content, key: &str) -> Result<usize, String> {
    let v = ct
        .metadata
        .get(key)
        .ok_or_else(|| format!("no {key} metadata"))?;
    v.to_u32()
        .map(|v| v as usize)
        .or_else(|_| v.to_u64().map(|v| v as usize))
        .or_else(|_| v.to_i32().map(|v| v.max(0) as usize))
        .map_err(|e| format!("{key}: {e}"))
}

fn md_f32(ct: &gguf_file::Content, key: &str) -> Option<f32> {
    ct.metadata.get(key).and_then(|v| v.to_f32().ok())
}

/// The 2-D shape `(rows, cols)` and type of tensor `name`, checked.
fn tensor_shape(
    ct: &gguf_file::Content,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<WType, String> {
    let info = ct
        .tensor_infos
        .get(name)
        .ok_or_else(|| format!("no tensor {name}"))?;
    let ty = WType::from_ggml(info.ggml_dtype).ok_or_else(|| {
        format!(
            "{name} is {:?}, which the native path has no kernel for",
            info.ggml_dtype
        )
    })?;
    let dims = info.shape.dims();
    if dims != [rows, cols] {
        return Err(format!("{name} is {dims:?}, expected [{rows}, {cols}]"));
    }
    if !cols.is_multiple_of(ty.block_elems()) {
        return Err(format!("{name}: {cols} columns are not whole blocks"));
    }
    Ok(ty)
}

fn vector_type(ct: &gguf_file::Content, name: &str, n: usize) -> Result<WType, String> {
    let info = ct
        .tensor_infos
        .get(name)
        .ok_or_else(|| format!("no tensor {name}"))?;
    let ty = match WType::from_ggml(info.ggml_dtype) {
        Some(t @ (WType::F32 | WType::F16)) => t,
        _ => return Err(format!("{name} is {:?}, not F32 / F16", info.ggml_dtype)),
    };
    if info.shape.elem_count() != n {
        return Err(format!(
            "{name} has {} elements, expected {n}",
            info.shape.elem_count()
        ));
    }
    Ok(ty)
}

/// The per-layer vectors an architecture needs (`true`) or may have (`false`), with their
/// length: `(name, length, required)`.
fn layer_vectors(cfg: &Config) -> Vec<(&'static str, usize, bool)> {
    let (dim, hd) = (cfg.dim, cfg.head_dim);
    let mut v = vec![
        ("attn_norm", dim, true),
        ("ffn_norm", dim, true),
        ("attn_q.bias", cfg.q_dim(), cfg.arch == Arch::Qwen2),
        ("attn_k.bias", cfg.kv_dim(), cfg.arch == Arch::Qwen2),
        ("attn_v.bias", cfg.kv_dim(), cfg.arch == Arch::Qwen2),
    ];
    let qk_norm = matches!(cfg.arch, Arch::Qwen3 | Arch::Gemma3);
    v.push(("attn_q_norm", hd, qk_norm));
    v.push(("attn_k_norm", hd, qk_norm));
    let post = cfg.arch == Arch::Gemma3;
    v.push(("post_attention_norm", dim, post));
    v.push(("post_ffw_norm", dim, post));
    v
}

/// The GGUF name of a layer vector (`attn_norm` -> `blk.3.attn_norm.weight`, biases as
/// named).
pub(super) fn vector_name(layer: usize, name: &str) -> String {
    if name.ends_with(".bias") {
        format!("blk.{layer}.{name}")
    } else {
        format!("blk.{layer}.{name}.weight")
    }
}

/// Whether the native path can run the GGUF with header `ct`: its configuration, or why
/// not.
pub fn check(ct: &gguf_file::Content) -> Result<Config, String> {
    let arch_name = ct
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .map(String::as_str);
    let arch = arch_name.and_then(Arch::from_name).ok_or_else(|| {
        format!("architecture {arch_name:?} is not one of llama, qwen2, qwen3, gemma3")
    })?;
    let a = arch.name();
    let key = |k: &str| format!("{a}.{k}");
    if md_u32(ct, &key("expert_count")).unwrap_or(0) > 1 {
        return Err("mixtures of experts are not supported".into());
    }
    let dim = md_u32(ct, &key("embedding_length"))?;
    let n_head = md_u32(ct, &key("attention.head_count"))?;
    let n_kv_head = md_u32(ct, &key("attention.head_count_kv")).unwrap_or(n_head);
    let n_layer = md_u32(ct, &key("block_count"))?;
    if n_head == 0 || n_kv_head == 0 || !n_head.is_multiple_of(n_kv_head) {
        return Err(format!("{n_head} heads / {n_kv_head} kv heads"));
    }
    let head_dim = match md_u32(ct, &key("attention.key_length")) {
        Ok(k) => k,
        Err(_) if dim.is_multiple_of(n_head) => dim / n_head,
        Err(_) => return Err(format!("{n_head} heads over {dim}")),
    };
    if let Ok(v) = md_u32(ct, &key("attention.value_length")) {
        if v != head_dim {
            return Err(format!(
                "value length {v} differs from key length {head_dim}"
            ));
        }
    }
    let rope_dim = md_u32(ct, &key("rope.dimension_count")).unwrap_or(head_dim);
    if rope_dim != head_dim || head_dim == 0 || !head_dim.is_multiple_of(2) {
        return Err(format!(
            "rope over {rope_dim} of {head_dim} head dimensions"
        ));
    }
    let eps = md_f32(ct, &key("attention.layer_norm_rms_epsilon"))
        .ok_or_else(|| format!("no {a}.attention.layer_norm_rms_epsilon metadata"))?;
    let rope_base = md_f32(ct, &key("rope.freq_base")).unwrap_or(10000.0);
    let scaling = ct
        .metadata
        .get(&key("rope.scaling.type"))
        .and_then(|v| v.to_string().ok())
        .map(String::as_str);
    let factor = md_f32(ct, &key("rope.scaling.factor")).unwrap_or(1.0);
    let rope_scale = match scaling {
        None | Some("none") => 1.0,
        Some("linear") if factor > 0.0 => 1.0 / factor,
        Some(other) => return Err(format!("rope scaling `{other}` is not supported")),
    };
    let sliding = if arch == Arch::Gemma3 {
        // Gemma 3: five sliding-window layers, then a global one; the local rope base is
        // 10 000 unless the file says otherwise.
        let window = md_u32(ct, &key("attention.sliding_window"))?;
        let base = md_f32(ct, &key("rope.local_freq_base")).unwrap_or(10000.0);
        Some((window, base, 6))
    } else {
        None
    };
    let softcap = md_f32(ct, &key("final_logit_softcapping")).filter(|c| *c > 0.0);
    let embd = ct
        .tensor_infos
        .get("token_embd.weight")
        .ok_or("no tensor token_embd.weight")?;
    let vocab = embd.shape.dims().first().copied().unwrap_or(0);
    let ff = ct
        .tensor_infos
        .get("blk.0.ffn_gate.weight")
        .ok_or("no tensor blk.0.ffn_gate.weight")?
        .shape
        .dims()
        .first()
        .copied()
        .unwrap_or(0);
    let cfg = Config {
        arch,
        dim,
        n_head,
        n_kv_head,
        head_dim,
        n_layer,
        ff,
        vocab,
        eps,
        rope_base,
        rope_scale,
        rope_neox: arch != Arch::Llama,
        sliding,
        embed_scale: (arch == Arch::Gemma3).then(|| (dim as f32).sqrt()),
        final_softcap: softcap,
        gelu: arch == Arch::Gemma3,
    };
    let (qd, kv) = (cfg.q_dim(), cfg.kv_dim());
    let mut quantized_cols = vec![];
    let t = tensor_shape(ct, "token_embd.weight", vocab, dim)?;
    quantized_cols.push((t, dim));
    if ct.tensor_infos.contains_key("output.weight") {
        tensor_shape(ct, "output.weight", vocab, dim)?;
    }
    vector_type(ct, "output_norm.weight", dim)?;
    for l in 0..n_layer {
        for (name, n, required) in layer_vectors(&cfg) {
            let name = vector_name(l, name);
            if required || ct.tensor_infos.contains_key(&name) {
                vector_type(ct, &name, n)?;
            }
        }
        for (name, rows, cols) in [
            ("attn_q", qd, dim),
            ("attn_k", kv, dim),
            ("attn_v", kv, dim),
            ("attn_output", dim, qd),
            ("ffn_gate", ff, dim),
            ("ffn_up", ff, dim),
            ("ffn_down", dim, ff),
        ] {
            let t = tensor_shape(ct, &format!("blk.{l}.{name}.weight"), rows, cols)?;
            quantized_cols.push((t, cols));
        }
    }
    // The activations are quantized in blocks of 32 for the quantized matrices.
    if quantized_cols
        .iter()
        .any(|(t, cols)| t.quantized() && !cols.is_multiple_of(QK))
    {
        return Err("a quantized matrix's width is not a multiple of 32".into());
    }
    Ok(cfg)
}

/// Why a model could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    /// The native path cannot run this model (see [`check`]).
    Unsupported(String),
    /// The file could not be read.
    Read(String),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Unsupported(m) => write!(f, "not supported by the native path: {m}"),
            LoadError::Read(m) => f.write_str(m),
        }
    }
}

pub(super) fn read_bytes<R: Read + Seek>(
    ct: &gguf_file::Content,
    r: &mut R,
    file_len: u64,
    name: &str,
) -> Result<(WType, Vec<u8>), LoadError> {
    let info = ct
        .tensor_infos
        .get(name)
        .ok_or_else(|| LoadError::Unsupported(format!("no tensor {name}")))?;
    let ty = WType::from_ggml(info.ggml_dtype)
        .ok_or_else(|| LoadError::Unsupported(format!("{name}: {:?}", info.ggml_dtype)))?;
    let n = info.shape.elem_count();
    let len = n / ty.block_elems() * ty.block_bytes();
    let start = ct.tensor_data_offset.saturating_add(info.offset);
    if start.saturating_add(len as u64) > file_len {
        return Err(LoadError::Read(format!(
            "tensor {name} needs {len} bytes at offset {start}, the file has {file_len}"
        )));
    }
    let mut data = vec![0u8; len];
    r.seek(SeekFrom::Start(start))
        .and_then(|_| r.read_exact(&mut data))
        .map_err(|e| LoadError::Read(format!("tensor {name}: {e}")))?;
    Ok((ty, data))
}
