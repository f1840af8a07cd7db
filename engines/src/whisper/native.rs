//! The engine's own CPU forward pass of Whisper (the default on the CPU; candle-transformers'
//! model is the other backend, used on a CUDA device).
//!
//! # Weights
//!
//! [`Weights::load`] takes every tensor by its Hugging Face name through a [`Source`] (a
//! CTranslate2 `model.bin`, whose fused projections are sliced, or a safetensors
//! checkpoint). The encoder's matrices and the decoder's cross-attention key / value
//! projection (products over a whole window) are held as f32 and transposed to `[in, out]`
//! at load, so the matrix product reads the weights' rows contiguously (packing them for
//! its kernel is a copy of whole vectors, not a gather of one value per column); the
//! decoder's other matrices and the token embeddings (which are also the output
//! projection) stay in their stored precision ([`kernels::Mat`]: IEEE half in the usual
//! CTranslate2 file, so nothing is rounded), which halves the bytes each generated token
//! reads. The convolution kernels are reordered at load to `[tap][in][out]`, so a
//! convolution is one matrix product over overlapping rows of its input (no im2col copy).
//!
//! # Encoder (one 30 s window)
//!
//! The mel window, time-major with a zero frame at each end, is multiplied with the first
//! convolution's kernel (rows of 3 frames, one frame apart), then GELU; the second
//! convolution reads rows of 3 frames two apart (stride 2), then GELU and the position
//! table. Each layer: layer norm, the fused q/k/v projection, attention per head (scores
//! for a block of queries, softmax, times the values: the full 1500 x 1500 score matrix is
//! never held), the output projection added to the residual, layer norm, the MLP (exact
//! GELU) added to the residual. Then the final layer norm. The products are the `gemm`
//! crate's f32 kernels on row blocks shared out among the threads of the CPU pool;
//! bias, GELU and residual are applied to each block as it is finished.
//!
//! # Decoder
//!
//! Keys and values of the cross-attention are computed once per window
//! ([`Model::set_audio`]); the self-attention's are appended to a per-layer cache as tokens
//! run, so a step runs the new token only. Exact (erf) GELU, as the reference model uses.

use super::kernels::{self, gemm_here, gemm_rows, matvec, Mat, SyncPtr, View};
use crate::error::EngineError;
use crate::threads::ThreadPool;
use candle_transformers::models::whisper::Config;
use std::sync::Mutex;

/// A tensor as loaded: its shape and values in f32 or IEEE half (bit patterns).
#[derive(Clone, Debug, PartialEq)]
pub struct Arr {
    pub shape: Vec<usize>,
    pub data: ArrData,
}

/// The values of an [`Arr`].
#[derive(Clone, Debug, PartialEq)]
pub enum ArrData {
    F32(Vec<f32>),
    /// IEEE half bit patterns.
    F16(Vec<u16>),
}

impl Arr {
    /// Number of values.
    pub fn len(&self) -> usize {
        match &self.data {
            ArrData::F32(v) => v.len(),
            ArrData::F16(v) => v.len(),
        }
    }

    /// Whether it holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values as f32.
    pub fn into_f32(self) -> Vec<f32> {
        match self.data {
            ArrData::F32(v) => v,
            ArrData::F16(v) => {
                use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
                let mut out = vec![0f32; v.len()];
                v.reinterpret_cast::<half::f16>()
                    .convert_to_f32_slice(&mut out);
                out
            }
        }
    }

    /// Rows `start..start + count` of the first dimension.
    pub fn rows(self, start: usize, count: usize) -> Arr {
        let total = self.shape.first().copied().unwrap_or(1).max(1);
        let per = self.len() / total;
        let range = start * per..(start + count) * per;
        let mut shape = self.shape;
        if let Some(first) = shape.first_mut() {
            *first = count;
        }
        let data = match self.data {
            ArrData::F32(v) => ArrData::F32(v[range].to_vec()),
            ArrData::F16(v) => ArrData::F16(v[range].to_vec()),
        };
        Arr { shape, data }
    }
}

/// Where the weights come from: a tensor by its Hugging Face name
/// (`model.encoder.layers.0.self_attn.q_proj.weight`, ...).
pub trait Source {
    /// The tensor called `name`; an error names what is missing.
    fn get(&self, name: &str) -> Result<Arr, EngineError>;
}

fn bad(message: impl std::fmt::Display) -> EngineError {
    EngineError::failed(format!("whisper weights: {message}"), false)
}

struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

/// The encoder's matrices are held transposed, `[in, out]` (see [`Weights`]).
struct EncoderLayer {
    attn_ln: Norm,
    /// `[d, 3d]`: q, k, v side by side.
    qkv: Vec<f32>,
    qkv_b: Vec<f32>,
    /// `[d, d]`.
    out: Vec<f32>,
    out_b: Vec<f32>,
    mlp_ln: Norm,
    /// `[d, 4d]`.
    fc1: Vec<f32>,
    fc1_b: Vec<f32>,
    /// `[4d, d]`.
    fc2: Vec<f32>,
    fc2_b: Vec<f32>,
}

struct DecoderLayer {
    self_ln: Norm,
    self_qkv: Mat,
    self_qkv_b: Vec<f32>,
    self_out: Mat,
    self_out_b: Vec<f32>,
    cross_ln: Norm,
    cross_q: Mat,
    cross_q_b: Vec<f32>,
    /// `[d, 2d]`: k, v side by side, transposed (f32: multiplied with a whole window of
    /// features).
    cross_kv: Vec<f32>,
    cross_kv_b: Vec<f32>,
    cross_out: Mat,
    cross_out_b: Vec<f32>,
    mlp_ln: Norm,
    fc1: Mat,
    fc1_b: Vec<f32>,
    fc2: Mat,
    fc2_b: Vec<f32>,
}

/// Whisper's weights laid out for the native forward pass.
pub struct Weights {
    n_mels: usize,
    d: usize,
    enc_heads: usize,
    dec_heads: usize,
    /// Encoder positions (1500 for the standard models).
    audio_ctx: usize,
    /// Decoder positions (448).
    text_ctx: usize,
    /// `[tap][n_mels][d]`.
    conv1: Vec<f32>,
    conv1_b: Vec<f32>,
    /// `[tap][d][d]`.
    conv2: Vec<f32>,
    conv2_b: Vec<f32>,
    enc_pos: Vec<f32>,
    encoder: Vec<EncoderLayer>,
    enc_ln: Norm,
    /// `[vocab, d]`: token embeddings and the output projection.
    embed: Mat,
    dec_pos: Vec<f32>,
    decoder: Vec<DecoderLayer>,
    dec_ln: Norm,
}

fn concat(parts: Vec<Vec<f32>>) -> Vec<f32> {
    parts.into_iter().flatten().collect()
}

impl Weights {
    /// Loads the weights of a model with dimensions `cfg` from `src`.
    pub fn load(src: &dyn Source, cfg: &Config) -> Result<Weights, EngineError> {
        let d = cfg.d_model;
        let n_mels = cfg.num_mel_bins;
        let vec = |name: &str, len: usize| -> Result<Vec<f32>, EngineError> {
            let a = src.get(name)?;
            if a.len() != len {
                return Err(bad(format!(
                    "`{name}` has {} values, {len} expected",
                    a.len()
                )));
            }
            Ok(a.into_f32())
        };
        let mat = |name: &str, rows: usize, cols: usize| -> Result<Mat, EngineError> {
            let a = src.get(name)?;
            if a.len() != rows * cols {
                return Err(bad(format!(
                    "`{name}` has {} values, {rows}x{cols} expected",
                    a.len()
                )));
            }
            Ok(match a.data {
                ArrData::F32(v) => Mat::f32(rows, cols, v),
                ArrData::F16(v) => Mat::f16(rows, cols, v),
            })
        };
        let norm = |prefix: &str| -> Result<Norm, EngineError> {
            Ok(Norm {
                gamma: vec(&format!("{prefix}.weight"), d)?,
                beta: vec(&format!("{prefix}.bias"), d)?,
            })
        };
        // A matrix for the products over many rows: `[out, in]` as stored, held as its
        // transpose `[in, out]`.
        let t = |w: Vec<f32>, out: usize| kernels::transpose(&w, out, w.len() / out);
        // `[out][in][tap]` -> `[tap][in][out]`.
        let conv = |name: &str, cin: usize| -> Result<Vec<f32>, EngineError> {
            let w = vec(name, d * cin * 3)?;
            let mut out = vec![0f32; w.len()];
            for o in 0..d {
                for c in 0..cin {
                    for tap in 0..3 {
                        out[(tap * cin + c) * d + o] = w[(o * cin + c) * 3 + tap];
                    }
                }
            }
            Ok(out)
        };
        let qkv = |p: &str| -> Result<(Vec<f32>, Vec<f32>), EngineError> {
            let w = concat(vec![
                vec(&format!("{p}.q_proj.weight"), d * d)?,
                vec(&format!("{p}.k_proj.weight"), d * d)?,
                vec(&format!("{p}.v_proj.weight"), d * d)?,
            ]);
            let b = concat(vec![
                vec(&format!("{p}.q_proj.bias"), d)?,
                vec![0f32; d],
                vec(&format!("{p}.v_proj.bias"), d)?,
            ]);
            Ok((w, b))
        };
        // The decoder's fused q/k/v in the stored precision.
        let qkv_mat = |p: &str| -> Result<Mat, EngineError> {
            let parts =
                ["q_proj", "k_proj", "v_proj"].map(|n| mat(&format!("{p}.{n}.weight"), d, d));
            let [q, k, v] = parts;
            let (q, k, v) = (q?, k?, v?);
            Ok(Mat::concat_rows(&[q, k, v]))
        };

        let mut encoder = Vec::with_capacity(cfg.encoder_layers);
        for i in 0..cfg.encoder_layers {
            let p = format!("model.encoder.layers.{i}");
            let (qkv_w, qkv_b) = qkv(&format!("{p}.self_attn"))?;
            encoder.push(EncoderLayer {
                attn_ln: norm(&format!("{p}.self_attn_layer_norm"))?,
                qkv: t(qkv_w, 3 * d),
                qkv_b,
                out: t(vec(&format!("{p}.self_attn.out_proj.weight"), d * d)?, d),
                out_b: vec(&format!("{p}.self_attn.out_proj.bias"), d)?,
                mlp_ln: norm(&format!("{p}.final_layer_norm"))?,
                fc1: t(vec(&format!("{p}.fc1.weight"), 4 * d * d)?, 4 * d),
                fc1_b: vec(&format!("{p}.fc1.bias"), 4 * d)?,
                fc2: t(vec(&format!("{p}.fc2.weight"), 4 * d * d)?, d),
                fc2_b: vec(&format!("{p}.fc2.bias"), d)?,
            });
        }
        let mut decoder = Vec::with_capacity(cfg.decoder_layers);
        for i in 0..cfg.decoder_layers {
            let p = format!("model.decoder.layers.{i}");
            let a = format!("{p}.self_attn");
            let c = format!("{p}.encoder_attn");
            decoder.push(DecoderLayer {
                self_ln: norm(&format!("{p}.self_attn_layer_norm"))?,
                self_qkv: qkv_mat(&a)?,
                self_qkv_b: concat(vec![
                    vec(&format!("{a}.q_proj.bias"), d)?,
                    vec![0f32; d],
                    vec(&format!("{a}.v_proj.bias"), d)?,
                ]),
                self_out: mat(&format!("{a}.out_proj.weight"), d, d)?,
                self_out_b: vec(&format!("{a}.out_proj.bias"), d)?,
                cross_ln: norm(&format!("{p}.encoder_attn_layer_norm"))?,
                cross_q: mat(&format!("{c}.q_proj.weight"), d, d)?,
                cross_q_b: vec(&format!("{c}.q_proj.bias"), d)?,
                cross_kv: t(
                    concat(vec![
                        vec(&format!("{c}.k_proj.weight"), d * d)?,
                        vec(&format!("{c}.v_proj.weight"), d * d)?,
                    ]),
                    2 * d,
                ),
                cross_kv_b: concat(vec![vec![0f32; d], vec(&format!("{c}.v_proj.bias"), d)?]),
                cross_out: mat(&format!("{c}.out_proj.weight"), d, d)?,
                cross_out_b: vec(&format!("{c}.out_proj.bias"), d)?,
                mlp_ln: norm(&format!("{p}.final_layer_norm"))?,
                fc1: mat(&format!("{p}.fc1.weight"), 4 * d, d)?,
                fc1_b: vec(&format!("{p}.fc1.bias"), 4 * d)?,
                fc2: mat(&format!("{p}.fc2.weight"), d, 4 * d)?,
                fc2_b: vec(&format!("{p}.fc2.bias"), d)?,
            });
        }
        let audio_ctx = cfg.max_source_positions;
        let enc_pos = match src.get("model.encoder.embed_positions.weight") {
            Ok(a) if a.len() == audio_ctx * d => a.into_f32(),
            _ => sinusoids(audio_ctx, d),
        };
        Ok(Weights {
            n_mels,
            d,
            enc_heads: cfg.encoder_attention_heads.max(1),
            dec_heads: cfg.decoder_attention_heads.max(1),
            audio_ctx,
            text_ctx: cfg.max_target_positions,
            conv1: conv("model.encoder.conv1.weight", n_mels)?,
            conv1_b: vec("model.encoder.conv1.bias", d)?,
            conv2: conv("model.encoder.conv2.weight", d)?,
            conv2_b: vec("model.encoder.conv2.bias", d)?,
            enc_pos,
            encoder,
            enc_ln: norm("model.encoder.layer_norm")?,
            embed: mat("model.decoder.embed_tokens.weight", cfg.vocab_size, d)?,
            dec_pos: vec(
                "model.decoder.embed_positions.weight",
                cfg.max_target_positions * d,
            )?,
            decoder,
            dec_ln: norm("model.decoder.layer_norm")?,
        })
    }

    /// Bytes held by the weights.
    pub fn bytes(&self) -> usize {
        let f = |v: &Vec<f32>| v.len() * 4;
        let n = |n: &Norm| f(&n.gamma) + f(&n.beta);
        let enc: usize = self
            .encoder
            .iter()
            .map(|l| {
                n(&l.attn_ln)
                    + f(&l.qkv)
                    + f(&l.qkv_b)
                    + f(&l.out)
                    + f(&l.out_b)
                    + n(&l.mlp_ln)
                    + f(&l.fc1)
                    + f(&l.fc1_b)
                    + f(&l.fc2)
                    + f(&l.fc2_b)
            })
            .sum();
        let dec: usize = self
            .decoder
            .iter()
            .map(|l| {
                n(&l.self_ln)
                    + l.self_qkv.bytes()
                    + f(&l.self_qkv_b)
                    + l.self_out.bytes()
                    + f(&l.self_out_b)
                    + n(&l.cross_ln)
                    + l.cross_q.bytes()
                    + f(&l.cross_q_b)
                    + f(&l.cross_kv)
                    + f(&l.cross_kv_b)
                    + l.cross_out.bytes()
                    + f(&l.cross_out_b)
                    + n(&l.mlp_ln)
                    + l.fc1.bytes()
                    + f(&l.fc1_b)
                    + l.fc2.bytes()
                    + f(&l.fc2_b)
            })
            .sum();
        f(&self.conv1)
            + f(&self.conv1_b)
            + f(&self.conv2)
            + f(&self.conv2_b)
            + f(&self.enc_pos)
            + enc
            + n(&self.enc_ln)
            + self.embed.bytes()
            + f(&self.dec_pos)
            + dec
            + n(&self.dec_ln)
    }
}

/// Whisper's sinusoidal position table `[length, channels]`: sines then cosines of
/// `pos * 10000^(-i / (channels / 2 - 1))`.
pub fn sinusoids(length: usize, channels: usize) -> Vec<f32> {
    let half = channels / 2;
    let inc = (10_000f64).ln() / (half.max(2) - 1) as f64;
    let mut out = vec![0f32; length * channels];
    for p in 0..length {
        for i in 0..half {
            let angle = p as f64 * (-inc * i as f64).exp();
            out[p * channels + i] = angle.sin() as f32;
            out[p * channels + half + i] = angle.cos() as f32;
        }
    }
    out
}

/// Queries per block of the attention (bounds the score block to `128 x keys`).
const QUERY_BLOCK: usize = 128;
/// Up to this many queries (decoding steps), attention is dot products and weighted sums of
/// rows rather than matrix products.
const FEW_QUERIES: usize = 4;
/// Multiply-adds below which such an attention runs on the calling thread alone.
const INLINE_WORK: usize = 1 << 17;

/// Per-thread scratch buffers.
struct Scratch(Vec<Mutex<Vec<f32>>>);

impl Scratch {
    fn new(threads: usize) -> Scratch {
        Scratch((0..threads).map(|_| Mutex::new(Vec::new())).collect())
    }

    fn with<R>(&self, thread: usize, len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
        let mut g = self.0[thread % self.0.len()]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if g.len() < len {
            g.resize(len, 0.0);
        }
        f(&mut g[..len])
    }
}

/// Multi-head attention of `m` queries over `keys` keys and values (views of rows with the
/// heads side by side, `head_dim` columns each; row-major when `m <= FEW_QUERIES`, any
/// strides otherwise), written to `out` (`m` rows, `ldo` apart). With `causal = Some(p)`, query `i` sees keys `0..=p + i` only.
#[allow(clippy::too_many_arguments)]
fn attention(
    pool: &ThreadPool,
    scratch: &Scratch,
    heads: usize,
    head_dim: usize,
    m: usize,
    keys: usize,
    q: View,
    k: View,
    v: View,
    causal: Option<usize>,
    out: *mut f32,
    ldo: usize,
) {
    let scale = (head_dim as f32).powf(-0.5);
    let out = SyncPtr(out);
    let (q, k, v) = (Shared(q), Shared(k), Shared(v));
    if m <= FEW_QUERIES {
        // A step or two: dot products and sums of rows, one task per head and query.
        assert!(q.0.cs == 1 && k.0.cs == 1 && v.0.cs == 1, "row-major heads");
        let simd = kernels::Simd::detect();
        let task = |thread: usize, tasks: std::ops::Range<usize>| {
            let (q, k, v, out) = (q, k, v, out);
            for task in tasks {
                let (h, i) = (task / m, task % m);
                let col = h * head_dim;
                scratch.with(thread, keys, |s| {
                    // SAFETY: the views address `m` query rows and `keys` key / value rows of
                    // `heads * head_dim` contiguous columns; each task writes its own query
                    // row's head columns of `out`.
                    unsafe {
                        let row = |view: View, r: usize| {
                            std::slice::from_raw_parts(
                                view.ptr.offset(r as isize * view.rs).add(col),
                                head_dim,
                            )
                        };
                        let qi = row(q.0, i);
                        for j in (0..keys).step_by(4) {
                            let last = keys - 1;
                            let rows = [0, 1, 2, 3].map(|t| row(k.0, (j + t).min(last)));
                            let dots = kernels::dot4_f32(simd, rows, qi);
                            for (t, d) in dots.iter().enumerate().take(keys - j) {
                                s[j + t] = d * scale;
                            }
                        }
                        if let Some(p) = causal {
                            if p + i + 1 < keys {
                                s[p + i + 1..].fill(f32::NEG_INFINITY);
                            }
                        }
                        kernels::softmax(s);
                        let o = std::slice::from_raw_parts_mut(out.0.add(i * ldo + col), head_dim);
                        // Value rows `v.rs` apart, from this head's first column.
                        let values = std::slice::from_raw_parts(
                            v.0.ptr.add(col),
                            keys.saturating_sub(1) * v.0.rs as usize + head_dim,
                        );
                        kernels::weighted_rows(simd, s, values, v.0.rs as usize, o);
                    }
                });
            }
        };
        // Little work (self-attention over a short prefix) runs here, without a dispatch.
        if heads * m * keys * head_dim < INLINE_WORK {
            task(0, 0..heads * m);
        } else {
            pool.for_each_chunk(heads * m, 1, &task);
        }
        return;
    }
    let blocks = m.div_ceil(QUERY_BLOCK);
    pool.for_each_chunk(heads * blocks, 1, &|thread, tasks| {
        let (q, k, v, out) = (q, k, v, out);
        for task in tasks {
            let (h, b) = (task / blocks, task % blocks);
            let r0 = b * QUERY_BLOCK;
            let rows = QUERY_BLOCK.min(m - r0);
            let col = (h * head_dim) as isize;
            scratch.with(thread, rows * keys, |s| {
                // SAFETY: the views address `m` (queries) and `keys` (keys, values) rows
                // of `heads * head_dim` columns; `s` is this thread's; each task writes its
                // own rows and head columns of `out`.
                unsafe {
                    let qh = View {
                        ptr: q.0.ptr.wrapping_offset(r0 as isize * q.0.rs + col * q.0.cs),
                        ..q.0
                    };
                    // K^T: element (l, j) is key j's value l.
                    let kt = View {
                        ptr: k.0.ptr.wrapping_offset(col * k.0.cs),
                        rs: k.0.cs,
                        cs: k.0.rs,
                    };
                    gemm_here(rows, keys, head_dim, qh, kt, s.as_mut_ptr(), keys, false);
                    for (i, row) in s.chunks_exact_mut(keys).enumerate() {
                        for x in row.iter_mut() {
                            *x *= scale;
                        }
                        if let Some(p) = causal {
                            let last = p + r0 + i;
                            if last + 1 < keys {
                                row[last + 1..].fill(f32::NEG_INFINITY);
                            }
                        }
                        kernels::softmax(row);
                    }
                    let vh = View {
                        ptr: v.0.ptr.wrapping_offset(col * v.0.cs),
                        ..v.0
                    };
                    gemm_here(
                        rows,
                        head_dim,
                        keys,
                        View::rows(s, keys),
                        vh,
                        out.0.add(r0 * ldo + h * head_dim),
                        ldo,
                        false,
                    );
                }
            });
        }
    });
}

#[derive(Clone, Copy)]
struct Shared(View);
// SAFETY: read-only views of buffers that outlive the pool dispatch.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

/// A Whisper model on the native path with its per-window state.
pub struct Model {
    w: Weights,
    pool: &'static ThreadPool,
    scratch: Scratch,
    /// Per decoder layer: the window's cross-attention keys and values, `[audio_ctx, 2d]`.
    cross: Vec<Vec<f32>>,
    /// Per decoder layer: self-attention keys and values, `[text_ctx, d]` each.
    self_k: Vec<Vec<f32>>,
    self_v: Vec<Vec<f32>>,
    /// Tokens run since the last reset.
    len: usize,
    /// Final hidden states of the last [`Model::forward`], `[n, d]`.
    hidden: Vec<f32>,
}

impl Model {
    /// A model over `w`, computing on the process-wide CPU pool.
    pub fn new(w: Weights) -> Model {
        let pool = ThreadPool::global();
        let layers = w.decoder.len();
        let cache = w.text_ctx * w.d;
        Model {
            scratch: Scratch::new(pool.threads()),
            cross: vec![Vec::new(); layers],
            self_k: vec![vec![0f32; cache]; layers],
            self_v: vec![vec![0f32; cache]; layers],
            len: 0,
            hidden: Vec::new(),
            w,
            pool,
        }
    }

    /// Bytes held by the weights.
    pub fn weight_bytes(&self) -> usize {
        self.w.bytes()
    }

    /// Mel frames one window takes (twice the encoder positions: 3000).
    pub fn window_frames(&self) -> usize {
        2 * self.w.audio_ctx
    }

    /// Runs the encoder over `window_frames()` frames of `mel` (`n_mels` rows of `stride`
    /// frames, channel-major) starting at frame `start`, and sets the decoder's
    /// cross-attention to the result; forgets every token.
    pub fn set_audio(&mut self, mel: &[f32], stride: usize, start: usize) {
        let features = self.encode(mel, stride, start);
        let (d, n) = (self.w.d, self.w.audio_ctx);
        for (layer, cross) in self.w.decoder.iter().zip(self.cross.iter_mut()) {
            cross.resize(n * 2 * d, 0.0);
            let bias = &layer.cross_kv_b;
            // SAFETY: `features` is n x d, the weights d x 2d, `cross` n x 2d.
            unsafe {
                gemm_rows(
                    self.pool,
                    n,
                    2 * d,
                    d,
                    View::rows(&features, d),
                    View::rows(&layer.cross_kv, 2 * d),
                    cross.as_mut_ptr(),
                    &|_, rows| add_bias(rows, bias),
                )
            };
        }
        self.reset();
    }

    /// Forgets every token (the audio stays).
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Tokens run since the last reset.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no token has run since the last reset.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The encoder (see the module docs): `[audio_ctx, d]` features.
    fn encode(&self, mel: &[f32], stride: usize, start: usize) -> Vec<f32> {
        let w = &self.w;
        let (d, n_mels, n) = (w.d, w.n_mels, w.audio_ctx);
        let frames = 2 * n;
        // Time-major input with a zero frame at each end.
        let mut x0 = vec![0f32; (frames + 2) * n_mels];
        for c in 0..n_mels {
            let row = &mel[c * stride + start..c * stride + start + frames];
            for (t, &v) in row.iter().enumerate() {
                x0[(t + 1) * n_mels + c] = v;
            }
        }
        // conv1 + GELU into rows 1..=frames of a zero-padded buffer.
        let mut h1 = vec![0f32; (frames + 2) * d];
        // SAFETY: rows t of the input view are frames t..t+3 of `x0` (in bounds: t <
        // frames), the output rows 1..=frames of `h1`.
        unsafe {
            gemm_rows(
                self.pool,
                frames,
                d,
                3 * n_mels,
                View::rows(&x0, n_mels),
                View::rows(&w.conv1, d),
                h1.as_mut_ptr().add(d),
                &|_, rows| {
                    add_bias(rows, &w.conv1_b);
                    kernels::gelu(rows);
                },
            )
        };
        drop(x0);
        // conv2 (stride 2) + GELU + positions.
        let mut x = vec![0f32; n * d];
        // SAFETY: row t of the input view is padded frames 2t..2t+3 of `h1` (2t + 2 <=
        // frames + 1).
        unsafe {
            gemm_rows(
                self.pool,
                n,
                d,
                3 * d,
                View::rows(&h1, 2 * d),
                View::rows(&w.conv2, d),
                x.as_mut_ptr(),
                &|first, rows| {
                    add_bias(rows, &w.conv2_b);
                    kernels::gelu(rows);
                    let pos = &w.enc_pos[first * d..first * d + rows.len()];
                    for (v, p) in rows.iter_mut().zip(pos) {
                        *v += p;
                    }
                },
            )
        };
        drop(h1);
        let mut xn = vec![0f32; n * d];
        let mut qkv = vec![0f32; n * 3 * d];
        let mut att = vec![0f32; n * d];
        let mut hidden = vec![0f32; n * 4 * d];
        // The keys transposed, `[d, n]`: the score products then pack them with vector
        // copies (once per block of queries) rather than gathering a value per key.
        let mut keys_t = vec![0f32; d * n];
        let head_dim = d / w.enc_heads;
        for l in &w.encoder {
            kernels::layer_norm(&x, &l.attn_ln.gamma, &l.attn_ln.beta, &mut xn);
            // SAFETY (all products below): operand sizes as allocated above.
            unsafe {
                gemm_rows(
                    self.pool,
                    n,
                    3 * d,
                    d,
                    View::rows(&xn, d),
                    View::rows(&l.qkv, 3 * d),
                    qkv.as_mut_ptr(),
                    &|_, rows| add_bias(rows, &l.qkv_b),
                );
            }
            kernels::transpose_into(&qkv[d..], n, d, 3 * d, &mut keys_t);
            attention(
                self.pool,
                &self.scratch,
                w.enc_heads,
                head_dim,
                n,
                n,
                View::rows(&qkv, 3 * d),
                // Key j's value l at l * n + j.
                View {
                    ptr: keys_t.as_ptr(),
                    rs: 1,
                    cs: n as isize,
                },
                View::rows(&qkv[2 * d..], 3 * d),
                None,
                att.as_mut_ptr(),
                d,
            );
            self.residual(&mut x, &att, &l.out, &l.out_b);
            kernels::layer_norm(&x, &l.mlp_ln.gamma, &l.mlp_ln.beta, &mut xn);
            unsafe {
                gemm_rows(
                    self.pool,
                    n,
                    4 * d,
                    d,
                    View::rows(&xn, d),
                    View::rows(&l.fc1, 4 * d),
                    hidden.as_mut_ptr(),
                    &|_, rows| {
                        add_bias(rows, &l.fc1_b);
                        kernels::gelu(rows);
                    },
                );
            }
            self.residual(&mut x, &hidden, &l.fc2, &l.fc2_b);
        }
        kernels::layer_norm(&x, &w.enc_ln.gamma, &w.enc_ln.beta, &mut xn);
        xn
    }

    /// `x += a W + b` over whole rows (`W` is `k x d`, the transpose of the stored
    /// projection, `a` is `rows x k`).
    fn residual(&self, x: &mut [f32], a: &[f32], w: &[f32], b: &[f32]) {
        let d = b.len();
        let k = w.len() / d;
        let m = x.len() / d;
        let mut tmp = vec![0f32; m * d];
        let xs = SyncPtr(x.as_mut_ptr());
        // SAFETY: `a` is m x k, `w` k x d, `tmp` m x d; the epilogue adds each finished
        // block of rows to the same rows of `x`, which no other block touches.
        unsafe {
            gemm_rows(
                self.pool,
                m,
                d,
                k,
                View::rows(a, k),
                View::rows(w, d),
                tmp.as_mut_ptr(),
                &|first, rows| {
                    let x = std::slice::from_raw_parts_mut(xs.get().add(first * d), rows.len());
                    for (row, xrow) in rows.chunks_exact(d).zip(x.chunks_exact_mut(d)) {
                        for ((xv, &v), &bv) in xrow.iter_mut().zip(row).zip(b) {
                            *xv += v + bv;
                        }
                    }
                },
            );
        }
    }

    /// Runs `tokens` after the ones already seen (at most `text_ctx` in all) and keeps
    /// their final hidden states for [`Model::logits`].
    pub fn forward(&mut self, tokens: &[u32]) -> Result<(), EngineError> {
        let w = &self.w;
        let (d, m, offset) = (w.d, tokens.len(), self.len);
        if offset + m > w.text_ctx {
            return Err(bad(format!(
                "{} tokens exceed the decoder's {} positions",
                offset + m,
                w.text_ctx
            )));
        }
        let vocab = w.embed.rows;
        let mut x = vec![0f32; m * d];
        for (i, (&t, row)) in tokens.iter().zip(x.chunks_exact_mut(d)).enumerate() {
            if t as usize >= vocab {
                return Err(bad(format!(
                    "token {t} is outside the vocabulary ({vocab})"
                )));
            }
            w.embed.row_into(t as usize, row);
            let pos = &w.dec_pos[(offset + i) * d..(offset + i + 1) * d];
            for (v, p) in row.iter_mut().zip(pos) {
                *v += p;
            }
        }
        let head_dim = d / w.dec_heads;
        let mut xn = vec![0f32; m * d];
        let mut att = vec![0f32; m * d];
        for (li, l) in w.decoder.iter().enumerate() {
            // Self-attention over the cache.
            kernels::layer_norm(&x, &l.self_ln.gamma, &l.self_ln.beta, &mut xn);
            let qkv = matvec(self.pool, &l.self_qkv, Some(&l.self_qkv_b), &xn, m);
            let (ck, cv) = (&mut self.self_k[li], &mut self.self_v[li]);
            for (i, row) in qkv.chunks_exact(3 * d).enumerate() {
                let at = (offset + i) * d;
                ck[at..at + d].copy_from_slice(&row[d..2 * d]);
                cv[at..at + d].copy_from_slice(&row[2 * d..]);
            }
            attention(
                self.pool,
                &self.scratch,
                w.dec_heads,
                head_dim,
                m,
                offset + m,
                View::rows(&qkv, 3 * d),
                View::rows(ck, d),
                View::rows(cv, d),
                Some(offset),
                att.as_mut_ptr(),
                d,
            );
            add_rows(
                &mut x,
                &matvec(self.pool, &l.self_out, Some(&l.self_out_b), &att, m),
            );
            // Cross-attention over the window's features.
            kernels::layer_norm(&x, &l.cross_ln.gamma, &l.cross_ln.beta, &mut xn);
            let q = matvec(self.pool, &l.cross_q, Some(&l.cross_q_b), &xn, m);
            let cross = &self.cross[li];
            if cross.is_empty() {
                return Err(bad("the decoder ran before any audio was set"));
            }
            attention(
                self.pool,
                &self.scratch,
                w.dec_heads,
                head_dim,
                m,
                w.audio_ctx,
                View::rows(&q, d),
                View::rows(cross, 2 * d),
                View::rows(&cross[d..], 2 * d),
                None,
                att.as_mut_ptr(),
                d,
            );
            add_rows(
                &mut x,
                &matvec(self.pool, &l.cross_out, Some(&l.cross_out_b), &att, m),
            );
            // MLP.
            kernels::layer_norm(&x, &l.mlp_ln.gamma, &l.mlp_ln.beta, &mut xn);
            let mut h = matvec(self.pool, &l.fc1, Some(&l.fc1_b), &xn, m);
            kernels::gelu(&mut h);
            add_rows(&mut x, &matvec(self.pool, &l.fc2, Some(&l.fc2_b), &h, m));
        }
        self.hidden.resize(m * d, 0.0);
        kernels::layer_norm(&x, &w.dec_ln.gamma, &w.dec_ln.beta, &mut self.hidden);
        self.len += m;
        Ok(())
    }

    /// Vocabulary logits of the hidden state of token `pos` of the last [`Model::forward`].
    pub fn logits(&self, pos: usize) -> Vec<f32> {
        let d = self.w.d;
        matvec(
            self.pool,
            &self.w.embed,
            None,
            &self.hidden[pos * d..(pos + 1) * d],
            1,
        )
    }
}

fn add_bias(rows: &mut [f32], bias: &[f32]) {
    for row in rows.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

fn add_rows(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
