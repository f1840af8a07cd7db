//! The LLM engine's own CPU forward pass (`llm::cpu`, the native backend, feature `llm`)
//! against candle's quantized llama.
//!
//! The synthetic tests build small random llama GGUFs in memory (candle quantizes and
//! writes them) and need no model. Tests marked "real model" run SmolLM2-135M-Instruct at
//! `STUDIO_TEST_LLM_GGUF`, like engines/tests/llm.rs (skipped with a note when
//! `STUDIO_SKIP_MODEL_TESTS=1` and no model is set).
#![cfg(feature = "llm")]

mod support;

use std::io::Cursor;
use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use studio_core::splitmix::SplitMix64;
use studio_core::wire::{ChatMessage, LlmTask, ModelEngine, ModelSource};
use studio_engines::llm::cpu::quant::{self, Isa, WType};
use studio_engines::llm::cpu::threads::ThreadPool;
use studio_engines::llm::cpu::{self, Model};
use studio_engines::llm::{self, Backend, LlmEngine};
use studio_engines::ModelStore;

fn candle_logits(w: &mut ModelWeights, tokens: &[u32], pos: usize) -> Vec<f32> {
    let input = Tensor::new(tokens, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    w.forward(&input, pos)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap()
}

/// Max |a - b| over the range of `b`.
fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let max = b.iter().cloned().fold(f32::MIN, f32::max);
    let min = b.iter().cloned().fold(f32::MAX, f32::min);
    let d = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    d / (max - min)
}

// ------------------------------------------------------------------------------------------
// Synthetic models
// ------------------------------------------------------------------------------------------

/// A small random model: its family, shape and weight types.
#[derive(Clone, Copy)]
struct Tiny {
    arch: &'static str,
    dim: usize,
    heads: usize,
    kv_heads: usize,
    /// Elements per head (written as `attention.key_length` when not `dim / heads`).
    head_dim: usize,
    layers: usize,
    ff: usize,
    vocab: usize,
    embd: GgmlDType,
    mats: GgmlDType,
    tied: bool,
    /// Gemma 3's sliding window (gemma3 only).
    window: usize,
}

const TINY: Tiny = Tiny {
    arch: "llama",
    dim: 128,
    heads: 4,
    kv_heads: 2,
    head_dim: 32,
    layers: 2,
    ff: 128,
    vocab: 200,
    embd: GgmlDType::Q8_0,
    mats: GgmlDType::Q4_1,
    tied: true,
    window: 0,
};

/// A random llama GGUF: the embeddings in `embd`, the matrices in `mats`.
fn tiny_gguf(seed: u64, embd: GgmlDType, mats: GgmlDType, tied: bool) -> Vec<u8> {
    build_gguf(
        seed,
        &Tiny {
            embd,
            mats,
            tied,
            ..TINY
        },
    )
}

/// A random GGUF of `t`'s family (llama, qwen2, qwen3 or gemma3) with the tensors and
/// metadata that family's readers (the native path, candle) expect.
fn build_gguf(seed: u64, t: &Tiny) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed);
    let mut rand = |rows: usize, cols: usize, scale: f64| -> Tensor {
        let v: Vec<f32> = (0..rows * cols)
            .map(|_| ((rng.next_f64() * 2.0 - 1.0) * scale) as f32)
            .collect();
        Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
    };
    let q = |t: Tensor, ty: GgmlDType| QTensor::quantize(&t, ty).unwrap();
    let vector = |t: Tensor, a: f64, b: f64| {
        QTensor::quantize(
            &t.flatten_all().unwrap().affine(a, b).unwrap(),
            GgmlDType::F32,
        )
        .unwrap()
    };
    let (hd, mats) = (t.head_dim, t.mats);
    let (qd, kv) = (t.heads * hd, t.kv_heads * hd);
    let mut tensors: Vec<(String, QTensor)> = vec![
        (
            "token_embd.weight".into(),
            q(rand(t.vocab, t.dim, 1.0), t.embd),
        ),
        (
            "output_norm.weight".into(),
            vector(rand(1, t.dim, 1.0), 0.2, 1.0),
        ),
    ];
    if !t.tied {
        tensors.push(("output.weight".into(), q(rand(t.vocab, t.dim, 0.2), mats)));
    }
    for l in 0..t.layers {
        let p = format!("blk.{l}");
        let s = 1.0 / (t.dim as f64).sqrt();
        let mut push = |name: &str, v: QTensor| tensors.push((format!("{p}.{name}"), v));
        push("attn_norm.weight", vector(rand(1, t.dim, 1.0), 0.2, 1.0));
        push("ffn_norm.weight", vector(rand(1, t.dim, 1.0), 0.2, 1.0));
        push("attn_q.weight", q(rand(qd, t.dim, 4.0 * s), mats));
        push("attn_k.weight", q(rand(kv, t.dim, 4.0 * s), mats));
        push("attn_v.weight", q(rand(kv, t.dim, 2.0 * s), mats));
        push("attn_output.weight", q(rand(t.dim, qd, 2.0 * s), mats));
        push("ffn_gate.weight", q(rand(t.ff, t.dim, 2.0 * s), mats));
        push("ffn_up.weight", q(rand(t.ff, t.dim, 2.0 * s), mats));
        push(
            "ffn_down.weight",
            q(rand(t.dim, t.ff, 2.0 / (t.ff as f64).sqrt()), mats),
        );
        if t.arch == "qwen2" {
            push("attn_q.bias", vector(rand(1, qd, 1.0), 0.5, 0.0));
            push("attn_k.bias", vector(rand(1, kv, 1.0), 0.5, 0.0));
            push("attn_v.bias", vector(rand(1, kv, 1.0), 0.5, 0.0));
        }
        if t.arch == "qwen3" || t.arch == "gemma3" {
            push("attn_q_norm.weight", vector(rand(1, hd, 1.0), 0.2, 1.0));
            push("attn_k_norm.weight", vector(rand(1, hd, 1.0), 0.2, 1.0));
        }
        if t.arch == "gemma3" {
            push(
                "post_attention_norm.weight",
                vector(rand(1, t.dim, 1.0), 0.1, 0.5),
            );
            push(
                "post_ffw_norm.weight",
                vector(rand(1, t.dim, 1.0), 0.1, 0.5),
            );
        }
    }
    use gguf_file::Value;
    let a = t.arch;
    let key = |k: &str| format!("{a}.{k}");
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(a.into())),
        (key("embedding_length"), Value::U32(t.dim as u32)),
        (key("attention.head_count"), Value::U32(t.heads as u32)),
        (
            key("attention.head_count_kv"),
            Value::U32(t.kv_heads as u32),
        ),
        (key("block_count"), Value::U32(t.layers as u32)),
        (key("context_length"), Value::U32(256)),
        (key("attention.layer_norm_rms_epsilon"), Value::F32(1e-5)),
        (key("rope.freq_base"), Value::F32(10000.0)),
    ];
    if a == "llama" {
        md.push((key("rope.dimension_count"), Value::U32(hd as u32)));
    }
    if hd * t.heads != t.dim || a == "qwen3" || a == "gemma3" {
        md.push((key("attention.key_length"), Value::U32(hd as u32)));
        md.push((key("attention.value_length"), Value::U32(hd as u32)));
    }
    if a == "gemma3" {
        md.push((key("attention.sliding_window"), Value::U32(t.window as u32)));
    }
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut buf = Cursor::new(Vec::new());
    gguf_file::write(&mut buf, &md_refs, &t_refs).unwrap();
    buf.into_inner()
}

fn load_native(bytes: &[u8]) -> Model {
    let mut c = Cursor::new(bytes);
    let ct = gguf_file::Content::read(&mut c).unwrap();
    Model::load(&ct, &mut c).unwrap()
}

fn load_both(bytes: &[u8]) -> (Model, ModelWeights) {
    let native = load_native(bytes);
    let mut c = Cursor::new(bytes);
    let ct = gguf_file::Content::read(&mut c).unwrap();
    let candle = ModelWeights::from_gguf(ct, &mut c, &Device::Cpu).unwrap();
    (native, candle)
}

fn tokens(seed: u64, n: usize) -> Vec<u32> {
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|_| (rng.next_u64() % TINY.vocab as u64) as u32)
        .collect()
}

fn leaked_pool(threads: usize) -> &'static ThreadPool {
    Box::leak(Box::new(ThreadPool::new(threads)))
}

#[test]
fn synthetic_models_match_candle_for_every_weight_type() {
    let cases = [
        (GgmlDType::Q8_0, GgmlDType::Q4_1, true),
        (GgmlDType::Q8_0, GgmlDType::Q4_0, false),
        (GgmlDType::Q4_1, GgmlDType::Q8_0, true),
        (GgmlDType::F16, GgmlDType::F16, false),
        (GgmlDType::F32, GgmlDType::F32, true),
    ];
    let prompt = tokens(1, 23);
    for (i, (embd, mats, tied)) in cases.into_iter().enumerate() {
        let bytes = tiny_gguf(100 + i as u64, embd, mats, tied);
        let (native, mut candle) = load_both(&bytes);
        let mut sess = native.session(40);
        // Prefill in two chunks, then three single tokens, against candle doing the same.
        let a = native.forward(&mut sess, &prompt[..9], 0).unwrap();
        let b = candle_logits(&mut candle, &prompt[..9], 0);
        assert!(
            rel_diff(&a, &b) < 0.03,
            "{embd:?}/{mats:?} chunk 1: {}",
            rel_diff(&a, &b)
        );
        let a = native.forward(&mut sess, &prompt[9..], 9).unwrap();
        let b = candle_logits(&mut candle, &prompt[9..], 9);
        assert!(
            rel_diff(&a, &b) < 0.03,
            "{embd:?}/{mats:?} chunk 2: {}",
            rel_diff(&a, &b)
        );
        for (k, tok) in [5u32, 77, 199].into_iter().enumerate() {
            let pos = prompt.len() + k;
            let a = native.forward(&mut sess, &[tok], pos).unwrap();
            let b = candle_logits(&mut candle, &[tok], pos);
            let d = rel_diff(&a, &b);
            assert!(d < 0.03, "{embd:?}/{mats:?} token at {pos}: {d}");
            if matches!(mats, GgmlDType::F32 | GgmlDType::F16) && embd != GgmlDType::Q8_0 {
                // Unquantized activations: the same arithmetic up to rounding order.
                assert!(d < 1e-3, "{embd:?}/{mats:?} token at {pos}: {d}");
            }
        }
    }
}

/// Chunking, thread counts and kernels change nothing but float rounding.
#[test]
fn synthetic_model_is_consistent_across_chunks_threads_and_kernels() {
    let bytes = tiny_gguf(7, GgmlDType::Q8_0, GgmlDType::Q4_1, true);
    let (mut native, _) = load_both(&bytes);
    let prompt = tokens(2, 31);
    let whole = {
        let mut s = native.session(31);
        native.forward(&mut s, &prompt, 0).unwrap()
    };
    // Chunks of several tokens run each row and token through the same arithmetic as the
    // whole pass, whatever the chunking: equal bits.
    let mut s = native.session(31);
    native.forward(&mut s, &prompt[..4], 0).unwrap();
    native.forward(&mut s, &prompt[4..17], 4).unwrap();
    let chunked = native.forward(&mut s, &prompt[17..], 17).unwrap();
    assert_eq!(whole, chunked);
    // Single tokens go through the one-token kernels (on AVX-512 CPUs the chunks above used
    // the many-token ones): the same within float rounding.
    let mut s = native.session(31);
    native.forward(&mut s, &prompt[..17], 0).unwrap();
    let mut last = Vec::new();
    for (i, &t) in prompt.iter().enumerate().skip(17) {
        last = native.forward(&mut s, &[t], i).unwrap();
    }
    assert!(
        rel_diff(&last, &whole) < 1e-4,
        "{}",
        rel_diff(&last, &whole)
    );
    for threads in [1, 3] {
        native.set_pool(leaked_pool(threads));
        let mut s = native.session(31);
        assert_eq!(
            native.forward(&mut s, &prompt, 0).unwrap(),
            whole,
            "{threads} threads"
        );
    }
    if Isa::detect() != Isa::Scalar {
        native.set_isa(Isa::Scalar);
        let mut s = native.session(31);
        let scalar = native.forward(&mut s, &prompt, 0).unwrap();
        assert!(
            rel_diff(&scalar, &whole) < 1e-4,
            "{}",
            rel_diff(&scalar, &whole)
        );
    }
    // The context bound and the vocabulary are checked.
    let mut s = native.session(4);
    assert!(native.forward(&mut s, &prompt[..5], 0).is_err());
    assert!(native.forward(&mut s, &[TINY.vocab as u32], 0).is_err());
}

#[test]
fn unsupported_types_are_refused_by_check() {
    // Q2_K and Q3_K have no native kernel; the same model in Q4_K (which has one) passes, so
    // the refusal is the weight type's.
    for (mats, supported) in [
        (GgmlDType::Q2K, false),
        (GgmlDType::Q3K, false),
        (GgmlDType::Q4K, true),
    ] {
        let spec = Tiny {
            dim: 256,
            head_dim: 64,
            ff: 256,
            mats,
            ..TINY
        };
        let bytes = build_gguf(9, &spec);
        let mut c = Cursor::new(&bytes[..]);
        let ct = gguf_file::Content::read(&mut c).unwrap();
        let loaded = Model::load(&ct, &mut c);
        if supported {
            cpu::check(&ct).unwrap();
            loaded.unwrap();
            continue;
        }
        let err = cpu::check(&ct).unwrap_err();
        assert!(err.contains(&format!("{mats:?}")), "{err}");
        assert!(err.contains("no kernel"), "{err}");
        assert!(matches!(loaded, Err(cpu::LoadError::Unsupported(_))));
    }
}

/// The 5-bit and K-quant layouts read as candle (an independent implementation of the same
/// GGML formats) reads them.
#[test]
fn k_quants_and_5_bit_types_dequantize_like_candle() {
    let mut rng = SplitMix64::new(21);
    for ty in [
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
    ] {
        let (rows, cols) = (3, 512);
        let v: Vec<f32> = (0..rows * cols)
            .map(|_| (rng.next_f64() * 4.0 - 2.0) as f32)
            .collect();
        let t = Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap();
        let qt = QTensor::quantize(&t, ty).unwrap();
        let want: Vec<f32> = qt
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let data = qt.data().unwrap();
        let wty = WType::from_ggml(ty).unwrap();
        let row_bytes = wty.row_bytes(cols);
        assert_eq!(data.len(), rows * row_bytes, "{ty:?}");
        let mut got = vec![0f32; rows * cols];
        for r in 0..rows {
            quant::dequantize_row(
                wty,
                &data[r * row_bytes..][..row_bytes],
                &mut got[r * cols..][..cols],
            );
        }
        assert_eq!(got, want, "{ty:?}");
    }
}

/// `bytes` with every tensor dequantized (by candle) to F32: the same weights, exactly.
fn dequantized_copy(bytes: &[u8]) -> Vec<u8> {
    let mut c = Cursor::new(bytes);
    let ct = gguf_file::Content::read(&mut c).unwrap();
    let tensors: Vec<(String, QTensor)> = ct
        .tensor_infos
        .keys()
        .map(|name| {
            let t = ct.tensor(&mut c, name, &Device::Cpu).unwrap();
            let f = t.dequantize(&Device::Cpu).unwrap();
            (name.clone(), QTensor::quantize(&f, GgmlDType::F32).unwrap())
        })
        .collect();
    let md: Vec<(&str, &gguf_file::Value)> =
        ct.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut buf = Cursor::new(Vec::new());
    gguf_file::write(&mut buf, &md, &t_refs).unwrap();
    buf.into_inner()
}

/// The K-quant and 5-bit kernels in a whole forward pass, against candle's llama.
///
/// The reference is candle on the same weights dequantized to F32 (candle reads the block
/// layouts independently), so the only approximation left is the native path's own 8-bit
/// activation blocks of 32. Candle's quantized matmul is no exact reference for the
/// K-quants: it quantizes the activations per super-block of 256 (Q8_K), a coarser scale;
/// on these models that alone puts candle's Q5_K logits 0.024 of the logit range away from
/// the exact ones (the native Q5_K logits: 0.0095), and the two errors add up to more
/// than the limit.
#[test]
fn synthetic_k_quant_models_match_candle() {
    let prompt = tokens(4, 19);
    for (i, mats) in [
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
    ]
    .into_iter()
    .enumerate()
    {
        let spec = Tiny {
            dim: 256,
            head_dim: 64,
            ff: 512,
            mats,
            tied: i % 2 == 0,
            ..TINY
        };
        let bytes = build_gguf(300 + i as u64, &spec);
        let native = load_native(&bytes);
        let (_, mut candle) = load_both(&dequantized_copy(&bytes));
        let mut sess = native.session(24);
        let a = native.forward(&mut sess, &prompt, 0).unwrap();
        let b = candle_logits(&mut candle, &prompt, 0);
        let d = rel_diff(&a, &b);
        assert!(d < 0.03, "{mats:?} prompt: {d}");
        let a = native.forward(&mut sess, &[7], prompt.len()).unwrap();
        let b = candle_logits(&mut candle, &[7], prompt.len());
        let d = rel_diff(&a, &b);
        assert!(d < 0.03, "{mats:?} token: {d}");
    }
}

/// A reference model's forward pass: tokens at a position -> the last logits.
type Forward = dyn FnMut(&[u32], usize) -> Vec<f32>;

/// qwen2 (q/k/v biases, NeoX rope) and qwen3 (q/k norms, a head width apart from
/// dim / heads) against candle's quantized_qwen2 / quantized_qwen3 on the same file.
#[test]
fn synthetic_qwen_models_match_candle() {
    use candle_transformers::models::{quantized_qwen2, quantized_qwen3};
    let prompt = tokens(5, 21);
    for (arch, head_dim) in [("qwen2", 32), ("qwen3", 48)] {
        let spec = Tiny {
            arch,
            head_dim,
            mats: GgmlDType::Q8_0,
            tied: arch == "qwen2",
            ..TINY
        };
        let bytes = build_gguf(77, &spec);
        let native = load_native(&bytes);
        assert_eq!(native.config().arch.name(), arch);
        assert_eq!(native.config().head_dim, head_dim);
        let mut forward: Box<Forward> = {
            let mut c = Cursor::new(bytes.clone());
            let ct = gguf_file::Content::read(&mut c).unwrap();
            let to_vec = |t: Tensor| t.squeeze(0).unwrap().to_vec1::<f32>().unwrap();
            if arch == "qwen2" {
                let mut m =
                    quantized_qwen2::ModelWeights::from_gguf(ct, &mut c, &Device::Cpu).unwrap();
                Box::new(move |toks, pos| {
                    let x = Tensor::new(toks, &Device::Cpu)
                        .unwrap()
                        .unsqueeze(0)
                        .unwrap();
                    to_vec(m.forward(&x, pos).unwrap())
                })
            } else {
                let mut m =
                    quantized_qwen3::ModelWeights::from_gguf(ct, &mut c, &Device::Cpu).unwrap();
                Box::new(move |toks, pos| {
                    let x = Tensor::new(toks, &Device::Cpu)
                        .unwrap()
                        .unsqueeze(0)
                        .unwrap();
                    to_vec(m.forward(&x, pos).unwrap())
                })
            }
        };
        let mut sess = native.session(32);
        let a = native.forward(&mut sess, &prompt, 0).unwrap();
        let b = forward(&prompt, 0);
        let d = rel_diff(&a, &b);
        assert!(d < 0.03, "{arch} prompt: {d}");
        for (k, tok) in [3u32, 150].into_iter().enumerate() {
            let pos = prompt.len() + k;
            let a = native.forward(&mut sess, &[tok], pos).unwrap();
            let b = forward(&[tok], pos);
            let d = rel_diff(&a, &b);
            assert!(d < 0.03, "{arch} token at {pos}: {d}");
            assert_eq!(argmax(&a), argmax(&b), "{arch} token at {pos}");
        }
    }
}

/// Gemma 3's sliding window: with two sliding layers of window 3, the last position sees
/// back 2 x (3 - 1) = 4 positions, so the first token of a 12-token prompt changes
/// nothing there (bit for bit), while it does on a llama-style model; and the whole pass
/// is consistent across chunking and kernels.
#[test]
fn synthetic_gemma3_window_chunks_and_kernels() {
    let spec = Tiny {
        arch: "gemma3",
        dim: 256,
        heads: 4,
        kv_heads: 1,
        head_dim: 64,
        ff: 512,
        embd: GgmlDType::Q8_0,
        mats: GgmlDType::Q4K,
        window: 3,
        ..TINY
    };
    let mut native = load_native(&build_gguf(91, &spec));
    let cfg = native.config().clone();
    assert_eq!(cfg.window(0), Some(3));
    assert_eq!(cfg.window(5), None);
    assert_eq!(cfg.embed_scale, Some(16.0));
    let a = tokens(8, 12);
    let mut b = a.clone();
    b[0] = (a[0] + 1) % TINY.vocab as u32;
    let run = |m: &Model, p: &[u32]| m.forward(&mut m.session(p.len()), p, 0).unwrap();
    assert_eq!(run(&native, &a), run(&native, &b));
    // The window is what hides it: 4 positions in, token 0 is still seen.
    assert_ne!(run(&native, &a[..4]), run(&native, &b[..4]));

    // Chunked prefill gives the whole pass's bits; single tokens (the one-token kernels)
    // the same within float rounding.
    let whole = run(&native, &a);
    let mut s = native.session(12);
    native.forward(&mut s, &a[..5], 0).unwrap();
    assert_eq!(native.forward(&mut s, &a[5..], 5).unwrap(), whole);
    let mut s = native.session(12);
    native.forward(&mut s, &a[..5], 0).unwrap();
    let mut last = Vec::new();
    for (i, &t) in a.iter().enumerate().skip(5) {
        last = native.forward(&mut s, &[t], i).unwrap();
    }
    assert!(
        rel_diff(&last, &whole) < 1e-4,
        "{}",
        rel_diff(&last, &whole)
    );
    if Isa::detect() != Isa::Scalar {
        native.set_isa(Isa::Scalar);
        let d = rel_diff(&run(&native, &a), &whole);
        assert!(d < 1e-4, "{d}");
    }
}

// ------------------------------------------------------------------------------------------
// Real model
// ------------------------------------------------------------------------------------------

fn prompt_ids(path: &Path, system: Option<&str>, text: &str) -> Vec<u32> {
    let (tok, template) = llm::load_tokenizer(path).unwrap();
    let task = LlmTask {
        system: system.map(String::from),
        messages: vec![ChatMessage {
            role: "user".into(),
            content: text.into(),
        }],
        ..LlmTask::default()
    };
    let prompt = llm::render_prompt(&template, &tok, &task, None).unwrap();
    tok.encode_prompt(&prompt).unwrap()
}

fn load_real(path: &Path) -> (Model, ModelWeights) {
    let mut f = std::fs::File::open(path).unwrap();
    let ct = gguf_file::Content::read(&mut f).unwrap();
    let native = Model::load(&ct, &mut f).unwrap();
    let mut f = std::fs::File::open(path).unwrap();
    let ct = gguf_file::Content::read(&mut f).unwrap();
    let candle = ModelWeights::from_gguf(ct, &mut f, &Device::Cpu).unwrap();
    (native, candle)
}

fn greedy_native(m: &Model, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut s = m.session(prompt.len() + n);
    let mut logits = m.forward(&mut s, prompt, 0).unwrap();
    let mut out = Vec::new();
    for i in 0..n {
        let t = argmax(&logits) as u32;
        out.push(t);
        logits = m.forward(&mut s, &[t], prompt.len() + i).unwrap();
    }
    out
}

fn greedy_candle(w: &mut ModelWeights, prompt: &[u32], n: usize) -> Vec<u32> {
    w.clear_kv_cache();
    let mut logits = candle_logits(w, prompt, 0);
    let mut out = Vec::new();
    for i in 0..n {
        let t = argmax(&logits) as u32;
        out.push(t);
        logits = candle_logits(w, &[t], prompt.len() + i);
    }
    out
}

/// The prompts of the real-model comparisons. (Not "Write a short poem about the sea.":
/// its first token is a near tie, 26.2946 vs 26.2829 with f32 activations, which native and
/// candle's quantized activations break differently.)
const PROMPTS: [(Option<&str>, &str); 2] = [
    (
        Some("You are a helpful assistant."),
        "What is the capital of France?",
    ),
    (None, "List three fruits."),
];

#[test]
fn real_model_native_logits_match_candle() {
    let Some(path) = support::llm_model_path() else {
        return;
    };
    let (native, mut candle) = load_real(&path);
    let cfg = native.config();
    assert_eq!(
        (cfg.dim, cfg.n_head, cfg.n_kv_head, cfg.n_layer, cfg.vocab),
        (576, 9, 3, 30, 49152)
    );
    let mut reference = f32_reference(&path);
    for (system, text) in PROMPTS {
        let prompt = prompt_ids(&path, system, text);
        let mut s = native.session(prompt.len());
        let a = native.forward(&mut s, &prompt, 0).unwrap();
        candle.clear_kv_cache();
        let b = candle_logits(&mut candle, &prompt, 0);
        reference.clear_kv_cache();
        let r = candle_logits(&mut reference, &prompt, 0);
        let (dn, dc, dnc) = (rel_diff(&a, &r), rel_diff(&b, &r), rel_diff(&a, &b));
        eprintln!(
            "{text:?}: max |diff| / range against f32 activations: native {dn:.4}, candle \
             {dc:.4}; native against candle {dnc:.4}"
        );
        // Both quantize the activations to 8 bits, so a rounding difference anywhere can
        // move an activation by a quantization step, and that spreads through 30 layers:
        // the native path's own kernels (scalar, AVX2, AVX-512) differ from one another by
        // up to 0.03 of the range on these prompts. Native stays within that of the f32
        // computation, as candle does (measured 2026-12-05: native 0.024-0.031 across its
        // kernels, candle 0.024-0.031).
        assert!(dn < 0.04, "{dn}");
        assert!(dnc < 0.05, "{dnc}");
        assert_eq!(argmax(&a), argmax(&r));
        assert_eq!(argmax(&a), argmax(&b));
    }
}

/// Greedy decoding, and the next-token choice along candle's greedy text.
#[test]
fn real_model_native_greedy_tokens_match_candle() {
    let Some(path) = support::llm_model_path() else {
        return;
    };
    let (native, mut candle) = load_real(&path);
    for (system, text) in PROMPTS {
        let prompt = prompt_ids(&path, system, text);
        let a = greedy_native(&native, &prompt, 30);
        let b = greedy_candle(&mut candle, &prompt, 30);
        let same = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
        eprintln!("{text:?}: native and candle agree on the first {same} of 30 greedy tokens");
        // Free-running greedy texts part at the first near tie (measured: 19 and 6 tokens).
        assert!(same >= 6, "native {a:?}\ncandle {b:?}");

        // Along candle's text, native picks candle's token at every step but near ties
        // (both backends' top two within 0.5 of each other: 8-bit activation noise).
        let mut s = native.session(prompt.len() + b.len());
        let mut logits = native.forward(&mut s, &prompt, 0).unwrap();
        candle.clear_kv_cache();
        let mut reference = candle_logits(&mut candle, &prompt, 0);
        let mut ties = 0;
        for (i, &want) in b.iter().enumerate() {
            let got = argmax(&logits) as u32;
            assert_eq!(want, argmax(&reference) as u32);
            if got != want {
                let (w, g) = (want as usize, got as usize);
                let native_gap = logits[g] - logits[w];
                let candle_gap = reference[w] - reference[g];
                assert!(
                    native_gap < 0.5 && candle_gap < 0.5,
                    "{text:?} step {i}: native {got} candle {want}, gaps {native_gap} / {candle_gap}"
                );
                ties += 1;
            }
            logits = native.forward(&mut s, &[want], prompt.len() + i).unwrap();
            reference = candle_logits(&mut candle, &[want], prompt.len() + i);
        }
        eprintln!("{text:?}: along candle's 30 tokens native differs at {ties} near ties");
        assert!(ties <= 5, "{ties}");
    }
}

#[test]
fn real_model_engine_runs_native_by_default() {
    let Some(path) = support::llm_model_path() else {
        return;
    };
    let info = llm::inspect(&path).unwrap();
    assert!(info.native);
    let root = std::env::temp_dir().join(format!("studio-llm-cpu-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let engine = LlmEngine::new(ModelStore::new(&root), 1 << 32);
    assert_eq!(engine.backend(), Backend::Native);
    assert_eq!(engine.charge(&info), info.charge.file_bytes);
    let source = ModelSource {
        engine: ModelEngine::LlamaCpp,
        files: Vec::new(),
        cli_defaults: Default::default(),
    };
    let task = LlmTask {
        system: Some("You are a helpful assistant.".into()),
        messages: vec![ChatMessage {
            role: "user".into(),
            content: "What is the capital of France?".into(),
        }],
        temperature: Some(0.0),
        max_tokens: Some(20),
        ..LlmTask::default()
    };
    let native = engine.complete(&task, &source, &path).unwrap();
    assert_eq!(native.backend, Backend::Native);
    assert!(native.text.contains("Paris"), "{:?}", native.text);
    let candle_engine = LlmEngine::new(ModelStore::new(&root), 1 << 32)
        .with_backend(Backend::Candle)
        .with_requantize(false);
    assert!(candle_engine.charge(&info) > info.charge.file_bytes);
    let candle = candle_engine.complete(&task, &source, &path).unwrap();
    assert_eq!(candle.backend, Backend::Candle);
    assert_eq!(native.text, candle.text);
}

/// candle on the file's weights dequantized to f32 (exact weights, f32 activations): the
/// reference both quantized-activation paths approximate.
fn f32_reference(path: &Path) -> ModelWeights {
    let mut f = std::fs::File::open(path).unwrap();
    let ct = gguf_file::Content::read(&mut f).unwrap();
    let (ct, mut buf) = llm::rewrite_gguf(&ct, &mut f, |t| {
        QTensor::quantize(&t.dequantize(&Device::Cpu)?, GgmlDType::F32)
    })
    .unwrap();
    ModelWeights::from_gguf(ct, &mut buf, &Device::Cpu).unwrap()
}
