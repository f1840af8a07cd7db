//! The engine's own CPU forward pass for llama, qwen2, qwen3 and gemma3 GGUFs
//! ([`Backend::Native`], the default on the CPU; candle is the other backend, for llama
//! GGUFs).
//!
//! [`Backend::Native`]: super::Backend::Native
//!
//! # Weights
//!
//! [`Model::load`] reads every tensor's bytes from the file into an owned buffer and keeps
//! them in the file's format: matrices in F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K,
//! Q5_K or Q6_K ([`quant::WType`]), the norm vectors and biases as f32. A GGUF holding any
//! other type in a tensor the forward pass uses, a mixture of experts, a rope over part of
//! the head only or a rope scaling other than linear is refused by [`check`]. The token
//! embeddings stay quantized too: each looked-up token's row is dequantized when it is
//! needed. Without an `output.weight` the embedding matrix is also the output projection
//! (tied weights). The memory held is therefore the tensor bytes of the file, about its
//! size.
//!
//! # Kernels
//!
//! A matrix-vector product quantizes the activations to 8-bit blocks of 32 once, then dots
//! each weight row with them in integer arithmetic ([`quant`]; AVX2 + FMA + F16C when the
//! CPU has them, detected at run time, portable scalar code otherwise). A prompt chunk
//! multiplies each matrix with all its tokens at once, reading each weight row once per
//! chunk.
//!
//! # Threads
//!
//! One persistent thread pool ([`threads::ThreadPool::global`]) serves every model: one
//! thread per core (`std::thread::available_parallelism`), or `STUDIO_LLM_THREADS` threads
//! when that variable is a positive integer; the calling thread is one of them. Each product is cut
//! into row chunks that the threads take in turn; the q/k/v projections share one dispatch,
//! the FFN's gate and up projections another. Idle workers spin for 200 µs after a task,
//! then block until the next one.
//!
//! # Forward pass
//!
//! The token embeddings (gemma3: times sqrt(dim)), then per layer: RMSNorm; q, k, v
//! projections (qwen2: plus their biases); qwen3 and gemma3: a per-head RMSNorm of q and k;
//! rope on q and k (llama: interleaved pairs `(2i, 2i+1)`; the others: pairs `(i, i +
//! head_dim / 2)`; angle `pos / base^(2i / head_dim)`); k and v appended to the job's KV
//! cache ([`Session`]: f32, allocated for the job's context up front, touched as it fills);
//! causal grouped-query attention with a softmax over scores scaled by 1 / sqrt(head_dim)
//! (gemma3's sliding-window layers, five of every six, see only the last
//! `attention.sliding_window` positions and use rope base 10 000; the global layers use
//! `rope.freq_base`); the output projection (gemma3: RMSNorm after it) and the residual;
//! RMSNorm; the gated FFN (`down(act(gate x) * up x)`, SiLU, gemma3 GELU; gemma3: RMSNorm
//! after it) and the residual. Then the final RMSNorm and the logits of the last token
//! (soft-capped when the file gives `final_logit_softcapping`).

mod load;
pub mod quant;
/// The kernels' thread pool, shared with the Whisper engine.
pub use crate::threads;

use std::io::{Read, Seek, SeekFrom};
use std::sync::Mutex;

use candle_core::quantized::gguf_file;

use quant::panel::{Panel, PanelActs, PANEL_MIN_TOKENS, PANEL_ROWS};
use quant::{Act, Isa, QActs, WType, PREFETCH_AHEAD, QK, ROWS};
use threads::ThreadPool;

pub use load::{check, LoadError};
use load::{read_bytes, vector_name};

/// A weight matrix in its stored format: `rows` rows of `cols` elements.
#[derive(Clone, Debug)]
pub struct Matrix {
    /// The storage type.
    pub ty: WType,
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    row_bytes: usize,
    data: Vec<u8>,
}

impl Matrix {
    /// A matrix from raw row-major bytes in format `ty`.
    pub fn new(ty: WType, rows: usize, cols: usize, data: Vec<u8>) -> Result<Matrix, String> {
        if !cols.is_multiple_of(ty.block_elems()) {
            return Err(format!(
                "{cols} columns are not whole blocks of {}",
                ty.block_elems()
            ));
        }
        let row_bytes = ty.row_bytes(cols);
        if data.len() != rows * row_bytes {
            return Err(format!(
                "{rows}x{cols} {ty:?} needs {} bytes, not {}",
                rows * row_bytes,
                data.len()
            ));
        }
        Ok(Matrix {
            ty,
            rows,
            cols,
            row_bytes,
            data,
        })
    }

    /// The bytes of row `r`.
    pub fn row(&self, r: usize) -> &[u8] {
        &self.data[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// The bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// [`quant::prefetch`] of `rows` rows' worth of bytes `ahead` bytes past the start of row
    /// `r`, as much of them as the matrix holds.
    fn prefetch(&self, r: usize, rows: usize, ahead: usize) {
        let from = (r * self.row_bytes)
            .saturating_add(ahead)
            .min(self.data.len());
        let to = from
            .saturating_add(rows * self.row_bytes)
            .min(self.data.len());
        quant::prefetch(&self.data[from..to]);
    }
}

/// The model families the native path runs (`general.architecture`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// `llama` (and SmolLM, Mistral-style models written as llama): interleaved rope.
    Llama,
    /// `qwen2`: rope over halves (NeoX), biases on q, k and v.
    Qwen2,
    /// `qwen3`: rope over halves, a per-head RMSNorm of q and k before it.
    Qwen3,
    /// `gemma3`: embeddings scaled by sqrt(dim), q/k norms, norms after attention and FFN,
    /// GeGLU, sliding-window layers (5 of 6) with their own rope base, tied embeddings.
    Gemma3,
}

impl Arch {
    /// The architecture named `name`, if the native path runs it.
    pub fn from_name(name: &str) -> Option<Arch> {
        Some(match name {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            "gemma3" => Arch::Gemma3,
            _ => return None,
        })
    }

    /// The `general.architecture` value (and metadata key prefix).
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma3 => "gemma3",
        }
    }
}

/// The hyper-parameters of a GGUF the native path runs.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The model family.
    pub arch: Arch,
    /// Embedding width.
    pub dim: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key / value heads.
    pub n_kv_head: usize,
    /// Elements per head (`attention.key_length` when given, else `dim / n_head`).
    pub head_dim: usize,
    /// Transformer blocks.
    pub n_layer: usize,
    /// FFN hidden width.
    pub ff: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// Rope frequency base (of the global layers where some use a sliding window).
    pub rope_base: f32,
    /// Positions are divided by this before rope on the global layers (linear rope
    /// scaling; 1 without).
    pub rope_scale: f32,
    /// Rope pairs: `(i, i + head_dim / 2)` (NeoX) instead of `(2i, 2i + 1)`.
    pub rope_neox: bool,
    /// Sliding-window attention: `(window, base, pattern)`: layer `l` attends to the last
    /// `window` positions only, with rope base `base`, unless `(l + 1) % pattern == 0`.
    pub sliding: Option<(usize, f32, usize)>,
    /// Embeddings are multiplied by this (gemma: sqrt(dim)).
    pub embed_scale: Option<f32>,
    /// Logits are soft-capped: `cap * tanh(logit / cap)`.
    pub final_softcap: Option<f32>,
    /// The FFN's gate activation is GELU (tanh form) instead of SiLU.
    pub gelu: bool,
}

impl Config {
    /// Query width (`n_head * head_dim`).
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    /// Key / value width (`n_kv_head * head_dim`).
    pub fn kv_dim(&self) -> usize {
        self.n_kv_head * self.head_dim
    }

    /// Whether layer `l` uses the sliding window, and its window.
    pub fn window(&self, l: usize) -> Option<usize> {
        match self.sliding {
            Some((w, _, pattern)) if pattern == 0 || !(l + 1).is_multiple_of(pattern) => Some(w),
            _ => None,
        }
    }

    /// The rope base and position scale of layer `l`.
    fn rope_of(&self, l: usize) -> (f32, f32) {
        match (self.window(l), self.sliding) {
            (Some(_), Some((_, base, _))) => (base, 1.0),
            _ => (self.rope_base, self.rope_scale),
        }
    }
}

/// Optional per-layer vectors.
struct Extras {
    q_bias: Option<Vec<f32>>,
    k_bias: Option<Vec<f32>>,
    v_bias: Option<Vec<f32>>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    post_attn_norm: Option<Vec<f32>>,
    post_ffn_norm: Option<Vec<f32>>,
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: Matrix,
    wk: Matrix,
    wv: Matrix,
    wo: Matrix,
    ffn_norm: Vec<f32>,
    gate: Matrix,
    up: Matrix,
    down: Matrix,
    extras: Extras,
}

/// A model held for the native forward pass.
pub struct Model {
    cfg: Config,
    embd: Matrix,
    output: Option<Matrix>,
    norm: Vec<f32>,
    layers: Vec<Layer>,
    isa: Isa,
    pool: &'static ThreadPool,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("cfg", &self.cfg)
            .field("isa", &self.isa)
            .field("threads", &self.pool.threads())
            .finish()
    }
}

impl Model {
    /// Loads the GGUF with header `ct` from `r` (the file it was read from).
    pub fn load<R: Read + Seek>(ct: &gguf_file::Content, r: &mut R) -> Result<Model, LoadError> {
        let cfg = check(ct).map_err(LoadError::Unsupported)?;
        let file_len = r
            .seek(SeekFrom::End(0))
            .map_err(|e| LoadError::Read(e.to_string()))?;
        let mut matrix = |name: &str| -> Result<Matrix, LoadError> {
            let info = &ct.tensor_infos[name];
            let (rows, cols) = (info.shape.dims()[0], info.shape.dims()[1]);
            let (ty, data) = read_bytes(ct, r, file_len, name)?;
            Matrix::new(ty, rows, cols, data).map_err(LoadError::Read)
        };
        let embd = matrix("token_embd.weight")?;
        let output = if ct.tensor_infos.contains_key("output.weight") {
            Some(matrix("output.weight")?)
        } else {
            None
        };
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for l in 0..cfg.n_layer {
            let p = format!("blk.{l}");
            layers.push((
                matrix(&format!("{p}.attn_q.weight"))?,
                matrix(&format!("{p}.attn_k.weight"))?,
                matrix(&format!("{p}.attn_v.weight"))?,
                matrix(&format!("{p}.attn_output.weight"))?,
                matrix(&format!("{p}.ffn_gate.weight"))?,
                matrix(&format!("{p}.ffn_up.weight"))?,
                matrix(&format!("{p}.ffn_down.weight"))?,
            ));
        }
        let mut vector = |name: &str| -> Result<Vec<f32>, LoadError> {
            let (ty, data) = read_bytes(ct, r, file_len, name)?;
            let mut out = vec![0f32; data.len() / ty.block_bytes()];
            quant::dequantize_row(ty, &data, &mut out);
            Ok(out)
        };
        let norm = vector("output_norm.weight")?;
        let mut built = Vec::with_capacity(cfg.n_layer);
        for (l, (wq, wk, wv, wo, gate, up, down)) in layers.into_iter().enumerate() {
            let mut opt = |name: &str| -> Result<Option<Vec<f32>>, LoadError> {
                let name = vector_name(l, name);
                if ct.tensor_infos.contains_key(&name) {
                    vector(&name).map(Some)
                } else {
                    Ok(None)
                }
            };
            let extras = Extras {
                q_bias: opt("attn_q.bias")?,
                k_bias: opt("attn_k.bias")?,
                v_bias: opt("attn_v.bias")?,
                q_norm: opt("attn_q_norm")?,
                k_norm: opt("attn_k_norm")?,
                post_attn_norm: opt("post_attention_norm")?,
                post_ffn_norm: opt("post_ffw_norm")?,
            };
            built.push(Layer {
                attn_norm: vector(&vector_name(l, "attn_norm"))?,
                ffn_norm: vector(&vector_name(l, "ffn_norm"))?,
                wq,
                wk,
                wv,
                wo,
                gate,
                up,
                down,
                extras,
            });
        }
        Ok(Model {
            cfg,
            embd,
            output,
            norm,
            layers: built,
            isa: Isa::detect(),
            pool: ThreadPool::global(),
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The kernels used (the best this CPU runs, unless changed by [`set_isa`](Self::set_isa)).
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Uses `isa`'s kernels from now on (tests; `isa` must be available on this CPU).
    pub fn set_isa(&mut self, isa: Isa) {
        assert!(
            isa.available(),
            "{isa:?} kernels need CPU features this CPU lacks"
        );
        self.isa = isa;
    }

    /// Runs on `pool` from now on (the default is [`ThreadPool::global`]).
    pub fn set_pool(&mut self, pool: &'static ThreadPool) {
        self.pool = pool;
    }

    /// The weight bytes held (matrices as stored plus the f32 norm vectors).
    pub fn bytes(&self) -> u64 {
        let mut n = self.embd.bytes() + self.norm.len() * 4;
        n += self.output.as_ref().map_or(0, Matrix::bytes);
        for l in &self.layers {
            n += (l.attn_norm.len() + l.ffn_norm.len()) * 4;
            let e = &l.extras;
            for v in [
                &e.q_bias,
                &e.k_bias,
                &e.v_bias,
                &e.q_norm,
                &e.k_norm,
                &e.post_attn_norm,
                &e.post_ffn_norm,
            ]
            .into_iter()
            .flatten()
            {
                n += v.len() * 4;
            }
            for m in [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down] {
                n += m.bytes();
            }
        }
        n as u64
    }

    /// A job's state for a context of `ctx` tokens (the KV cache; its memory is touched
    /// only as positions are filled).
    pub fn session(&self, ctx: usize) -> Session {
        let n = self.cfg.n_layer * ctx * self.cfg.kv_dim();
        Session {
            ctx,
            k: vec![0f32; n],
            v: vec![0f32; n],
        }
    }

    /// Feeds `tokens` at positions `pos..pos + tokens.len()` (the cache must hold the
    /// positions before `pos`) and returns the logits after the last one.
    pub fn forward(
        &self,
        sess: &mut Session,
        tokens: &[u32],
        pos: usize,
    ) -> Result<Vec<f32>, String> {
        let cfg = &self.cfg;
        let b = tokens.len();
        if b == 0 {
            return Err("no tokens to evaluate".into());
        }
        if pos + b > sess.ctx {
            return Err(format!(
                "positions up to {} do not fit the context of {}",
                pos + b,
                sess.ctx
            ));
        }
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= cfg.vocab) {
            return Err(format!(
                "token {t} is outside the vocabulary of {}",
                cfg.vocab
            ));
        }
        let (dim, hd, ff) = (cfg.dim, cfg.head_dim, cfg.ff);
        let (qd, kv) = (cfg.q_dim(), cfg.kv_dim());
        let isa = self.isa;
        let pool = self.pool;

        let mut x = vec![0f32; b * dim];
        for (t, &tok) in tokens.iter().enumerate() {
            let row = &mut x[t * dim..][..dim];
            quant::dequantize_row(self.embd.ty, self.embd.row(tok as usize), row);
            if let Some(scale) = cfg.embed_scale {
                row.iter_mut().for_each(|v| *v *= scale);
            }
        }
        // Rope angles of the chunk's positions, per distinct (base, scale) of the layers.
        let half = hd / 2;
        let mut ropes: Vec<(RopeKey, Vec<(f32, f32)>)> = Vec::new();
        for l in 0..cfg.n_layer {
            let key = cfg.rope_of(l);
            if ropes.iter().any(|(k, _)| *k == key) {
                continue;
            }
            let (base, scale) = key;
            let inv_freq: Vec<f32> = (0..half)
                .map(|i| 1f32 / base.powf((2 * i) as f32 / hd as f32))
                .collect();
            let mut table = vec![(0f32, 0f32); b * half];
            for t in 0..b {
                let p = (pos + t) as f32 * scale;
                for (i, f) in inv_freq.iter().enumerate() {
                    let a = p * f;
                    table[t * half + i] = (a.cos(), a.sin());
                }
            }
            ropes.push((key, table));
        }

        let mut acts = Acts::new(isa);
        let mut xn = vec![0f32; b * dim];
        let mut q = vec![0f32; b * qd];
        let mut k = vec![0f32; b * kv];
        let mut v = vec![0f32; b * kv];
        let mut att = vec![0f32; b * qd];
        let mut o = vec![0f32; b * dim];
        let mut g = vec![0f32; b * ff];
        let mut u = vec![0f32; b * ff];
        let scratch: Vec<Mutex<Vec<f32>>> = (0..pool.threads())
            .map(|_| Mutex::new(vec![0f32; pos + b]))
            .collect();

        for (li, l) in self.layers.iter().enumerate() {
            let e = &l.extras;
            rms_norm(&x, &l.attn_norm, cfg.eps, &mut xn);
            acts.set(
                &xn,
                dim,
                b,
                [&l.wq, &l.wk, &l.wv].iter().any(|m| m.ty.quantized()),
            );
            matmul(
                pool,
                isa,
                &acts,
                &[&l.wq, &l.wk, &l.wv],
                &mut [&mut q, &mut k, &mut v],
            );
            for (out, bias) in [
                (&mut q, &e.q_bias),
                (&mut k, &e.k_bias),
                (&mut v, &e.v_bias),
            ] {
                if let Some(bias) = bias {
                    for row in out.chunks_exact_mut(bias.len()) {
                        row.iter_mut().zip(bias).for_each(|(o, b)| *o += b);
                    }
                }
            }
            // Per-head norms of q and k (qwen3, gemma3), in place.
            for (out, w) in [(&mut q, &e.q_norm), (&mut k, &e.k_norm)] {
                if let Some(w) = w {
                    let normed: Vec<f32> = out.clone();
                    rms_norm(&normed, w, cfg.eps, out);
                }
            }
            let rope = &ropes
                .iter()
                .find(|(key, _)| *key == cfg.rope_of(li))
                .expect("a table per rope of the layers")
                .1;
            for t in 0..b {
                let r = &rope[t * half..][..half];
                for h in q[t * qd..][..qd].chunks_exact_mut(hd) {
                    rotate(h, r, cfg.rope_neox);
                }
                for h in k[t * kv..][..kv].chunks_exact_mut(hd) {
                    rotate(h, r, cfg.rope_neox);
                }
                let at = (li * sess.ctx + pos + t) * kv;
                sess.k[at..at + kv].copy_from_slice(&k[t * kv..][..kv]);
                sess.v[at..at + kv].copy_from_slice(&v[t * kv..][..kv]);
            }
            let layer_k = &sess.k[li * sess.ctx * kv..][..(pos + b) * kv];
            let layer_v = &sess.v[li * sess.ctx * kv..][..(pos + b) * kv];
            attention(
                pool,
                isa,
                cfg,
                cfg.window(li),
                &q,
                layer_k,
                layer_v,
                pos,
                b,
                &scratch,
                &mut att,
            );
            acts.set(&att, qd, b, l.wo.ty.quantized());
            matmul(pool, isa, &acts, &[&l.wo], &mut [&mut o]);
            if let Some(w) = &e.post_attn_norm {
                let raw = o.clone();
                rms_norm(&raw, w, cfg.eps, &mut o);
            }
            for (x, o) in x.iter_mut().zip(&o) {
                *x += o;
            }

            rms_norm(&x, &l.ffn_norm, cfg.eps, &mut xn);
            acts.set(&xn, dim, b, l.gate.ty.quantized() || l.up.ty.quantized());
            matmul(pool, isa, &acts, &[&l.gate, &l.up], &mut [&mut g, &mut u]);
            quant::gated(isa, cfg.gelu, &mut g, &u);
            acts.set(&g, ff, b, l.down.ty.quantized());
            matmul(pool, isa, &acts, &[&l.down], &mut [&mut o]);
            if let Some(w) = &e.post_ffn_norm {
                let raw = o.clone();
                rms_norm(&raw, w, cfg.eps, &mut o);
            }
            for (x, o) in x.iter_mut().zip(&o) {
                *x += o;
            }
        }
        let last = &x[(b - 1) * dim..];
        let mut xl = vec![0f32; dim];
        rms_norm(last, &self.norm, cfg.eps, &mut xl);
        let out = self.output.as_ref().unwrap_or(&self.embd);
        acts.set(&xl, dim, 1, out.ty.quantized());
        let mut logits = vec![0f32; cfg.vocab];
        matmul(pool, isa, &acts, &[out], &mut [&mut logits]);
        if let Some(cap) = cfg.final_softcap {
            logits.iter_mut().for_each(|l| *l = cap * (*l / cap).tanh());
        }
        Ok(logits)
    }
}

/// A layer's rope: (base, position scale).
type RopeKey = (f32, f32);

/// A job's KV cache: per layer, `ctx` positions of `n_kv_head * head_dim` keys (values).
pub struct Session {
    ctx: usize,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl Session {
    /// The positions the cache holds.
    pub fn context(&self) -> usize {
        self.ctx
    }
}

/// `out = x / rms(x) * w`, row by row (rows of `w.len()`).
fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let n = w.len();
    for (x, out) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let ss: f32 = x.iter().map(|v| v * v).sum();
        let scale = 1.0 / (ss / n as f32 + eps).sqrt();
        for ((o, &x), &w) in out.iter_mut().zip(x).zip(w) {
            *o = x * scale * w;
        }
    }
}

/// Rotates one head by the angles `r` (cos, sin): the pairs `(2i, 2i + 1)`, or with `neox`
/// the pairs `(i, i + head_dim / 2)`.
fn rotate(h: &mut [f32], r: &[(f32, f32)], neox: bool) {
    if neox {
        let (a, b) = h.split_at_mut(h.len() / 2);
        for ((a, b), &(c, s)) in a.iter_mut().zip(b.iter_mut()).zip(r) {
            let (x, y) = (*a, *b);
            *a = x * c - y * s;
            *b = x * s + y * c;
        }
    } else {
        for (p, &(c, s)) in h.chunks_exact_mut(2).zip(r) {
            let (a, b) = (p[0], p[1]);
            p[0] = a * c - b * s;
            p[1] = a * s + b * c;
        }
    }
}

/// Activations as the matrix products read them: `b` vectors of `n`, and when needed their
/// 8-bit quantization.
/// With AVX-512 (the panel kernels), a quantization of [`PANEL_MIN_TOKENS`] or more tokens
/// is also laid out for the panel product ([`quant::panel`]).
struct Acts {
    n: usize,
    b: usize,
    f: Vec<f32>,
    q: QActs,
    quantized: bool,
    isa: Isa,
    p: PanelActs,
    in_panels: bool,
}

impl Acts {
    fn new(isa: Isa) -> Acts {
        Acts {
            n: 0,
            b: 0,
            f: Vec::new(),
            q: QActs::default(),
            quantized: false,
            isa,
            p: PanelActs::default(),
            in_panels: false,
        }
    }

    fn set(&mut self, x: &[f32], n: usize, b: usize, quantize: bool) {
        self.n = n;
        self.b = b;
        self.f.clear();
        self.f.extend_from_slice(&x[..n * b]);
        self.quantized = quantize;
        self.in_panels = quantize && self.isa == Isa::Avx512 && b >= PANEL_MIN_TOKENS;
        if quantize {
            self.q.qs.resize(n * b, 0);
            self.q.ds.resize(n * b / QK, [0.0; 2]);
            quant::quantize_isa(self.isa, &self.f, &mut self.q.qs, &mut self.q.ds);
        }
        if self.in_panels {
            self.p.set(&self.q, n, b);
        }
    }

    fn act(&self, t: usize) -> Act<'_> {
        let n = self.n;
        Act {
            f: &self.f[t * n..][..n],
            qs: if self.quantized {
                &self.q.qs[t * n..][..n]
            } else {
                &[]
            },
            ds: if self.quantized {
                &self.q.ds[t * n / QK..][..n / QK]
            } else {
                &[]
            },
        }
    }
}

/// `outs[j] = ws[j] x` for every token of `acts` (outputs token-major: `b` rows of
/// `ws[j].rows`), all matrices in one dispatch.
fn matmul(pool: &ThreadPool, isa: Isa, acts: &Acts, ws: &[&Matrix], outs: &mut [&mut Vec<f32>]) {
    let b = acts.b;
    let threads = pool.threads();
    let total: usize = ws.iter().map(|w| w.bytes()).sum();
    // About 8 chunks per thread, none tiny.
    let target = (total / (threads * 8)).max(4096);
    // Several tokens: each chunk of rows computes into its own token-major scratch (the
    // chunk's outputs of token 0, then of token 1, ...), copied into place afterwards.
    let mut tmp: Vec<Vec<f32>> = if b > 1 {
        ws.iter().map(|w| vec![0f32; w.rows * b]).collect()
    } else {
        Vec::new()
    };
    // (matrix, first row, rows) of each chunk.
    let mut spans = Vec::new();
    {
        let mut chunks = Vec::new();
        let dests: Vec<&mut [f32]> = if b > 1 {
            tmp.iter_mut().map(|v| v.as_mut_slice()).collect()
        } else {
            outs.iter_mut().map(|v| v.as_mut_slice()).collect()
        };
        for (j, dest) in dests.into_iter().enumerate() {
            let w = ws[j];
            // Whole groups of `ROWS` rows per chunk where the matrix has them.
            let rows = (target / w.row_bytes.max(1)).div_ceil(ROWS) * ROWS;
            let rows = rows.clamp(1, w.rows.max(1));
            for (c, piece) in dest[..w.rows * b].chunks_mut(rows * b).enumerate() {
                spans.push((j, c * rows, piece.len() / b));
                chunks.push(Mutex::new((j, c * rows, piece)));
            }
        }
        pool.for_each_chunk(chunks.len(), 1, &|_, range| {
            let mut panel = Panel::default();
            for c in range {
                let mut guard = chunks[c].lock().unwrap_or_else(|p| p.into_inner());
                let (j, r0, ref mut piece) = *guard;
                let w = ws[j];
                let n = piece.len() / b;
                if acts.in_panels && w.ty.quantized() {
                    // Unpacked a few rows at a time, each group against every token.
                    for g in (0..n).step_by(PANEL_ROWS) {
                        let k = (n - g).min(PANEL_ROWS);
                        let mut rows = [&[][..]; PANEL_ROWS];
                        for (i, row) in rows[..k].iter_mut().enumerate() {
                            *row = w.row(r0 + g + i);
                        }
                        panel.fill(isa, w.ty, w.cols, &rows[..k]);
                        quant::panel_gemm(isa, &panel, &acts.p, &mut piece[g..], 1, n);
                    }
                    continue;
                }
                let mut i = 0;
                // Row groups for several tokens, and for one token where the matrix is
                // small enough to stay in cache ([`ONE_TOKEN_GROUP_MAX_BYTES`]).
                let grouped = row_groups(b, w.bytes());
                while grouped && i + ROWS <= n {
                    w.prefetch(r0 + i, ROWS, PREFETCH_AHEAD);
                    let rows: [&[u8]; ROWS] = std::array::from_fn(|k| w.row(r0 + i + k));
                    for t in 0..b {
                        let o = quant::dot_rows(isa, w.ty, rows, acts.act(t));
                        piece[t * n + i..][..ROWS].copy_from_slice(&o);
                    }
                    i += ROWS;
                }
                for i in i..n {
                    w.prefetch(r0 + i, 1, PREFETCH_AHEAD);
                    let row = w.row(r0 + i);
                    for t in 0..b {
                        piece[t * n + i] = quant::dot(isa, w.ty, row, acts.act(t));
                    }
                }
            }
        });
    }
    if b > 1 {
        for (j, r0, n) in spans {
            let rows = ws[j].rows;
            let piece = &tmp[j][r0 * b..][..n * b];
            for (t, src) in piece.chunks_exact(n).enumerate() {
                outs[j][t * rows + r0..][..n].copy_from_slice(src);
            }
        }
    }
}

/// The largest matrix whose one-token product takes its rows in groups of [`ROWS`]: a
/// matrix this small stays in the last-level cache between tokens, where the product is
/// bound by the kernels and the grouped kernel is faster per weight (`kernel_speed`:
/// Q4_1 0.071 -> 0.050 ns, Q4_K 0.056 -> 0.044, Q6_K 0.070 -> 0.046); a larger one (Gemma
/// 3's 178 MB output matrix) streams from memory, where one row at a time with the
/// prefetch measured better. Several tokens always take rows in groups.
pub const ONE_TOKEN_GROUP_MAX_BYTES: usize = 64 << 20;

/// Whether a product of `b` tokens with a matrix of `bytes` takes rows in groups.
fn row_groups(b: usize, bytes: usize) -> bool {
    b > 1 || bytes <= ONE_TOKEN_GROUP_MAX_BYTES
}

/// Causal grouped-query attention of the chunk's `b` queries (at `pos..pos + b`) over the
/// layer's cached keys / values `k`, `v` (positions `0..pos + b`), into `out`; with a
/// `window`, a query at `p` sees the positions `p - window + 1..=p` only.
#[allow(clippy::too_many_arguments)]
fn attention(
    pool: &ThreadPool,
    isa: Isa,
    cfg: &Config,
    window: Option<usize>,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    pos: usize,
    b: usize,
    scratch: &[Mutex<Vec<f32>>],
    out: &mut [f32],
) {
    let (hd, nh) = (cfg.head_dim, cfg.n_head);
    let kv = cfg.kv_dim();
    let group = nh / cfg.n_kv_head;
    let scale = 1.0 / (hd as f32).sqrt();
    let pieces: Vec<Mutex<&mut [f32]>> = out.chunks_mut(hd).map(Mutex::new).collect();
    let tasks = b * nh;
    let per = (tasks / (pool.threads() * 4)).max(1);
    pool.for_each_chunk(tasks, per, &|thread, range| {
        let mut scores = scratch[thread].lock().unwrap_or_else(|p| p.into_inner());
        for idx in range {
            let (t, h) = (idx / nh, idx % nh);
            let n = pos + t + 1;
            let first = window.map_or(0, |w| n.saturating_sub(w));
            let qh = &q[t * nh * hd + h * hd..][..hd];
            let off = (h / group) * hd;
            let mut o = pieces[idx].lock().unwrap_or_else(|p| p.into_inner());
            quant::attend(
                isa,
                qh,
                (k, v),
                (kv, off),
                (first, n),
                scale,
                &mut scores,
                &mut o,
            );
        }
    });
}

#[cfg(test)]
mod tests;
