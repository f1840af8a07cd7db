//! Whisper's text decoder with a key/value cache.
//!
//! candle-transformers' `TextDecoder` re-runs every token of the sequence at each step (it
//! caches only the cross-attention keys and values), so a step costs O(sequence length)
//! and a window O(length²). This decoder, loaded from the same `model.decoder.*` weights,
//! keeps each layer's self-attention keys and values, so a step runs the new token only;
//! the cross-attention keys and values are computed once per window ([`Decoder::set_audio`]).
//! Exact (erf) GELU, as the reference model uses.

use candle_core::{Device, Module, Result, Tensor, D};
use candle_nn::{
    layer_norm, linear, linear_no_bias, LayerNorm, LayerNormConfig, Linear, VarBuilder,
};
use candle_transformers::models::whisper::Config;

struct Attention {
    query: Linear,
    key: Linear,
    value: Linear,
    out: Linear,
    n_head: usize,
    /// Self-attention: keys and values of every position so far, `(1, heads, T, head_dim)`.
    /// Cross-attention: those of the audio features.
    cache: Option<(Tensor, Tensor)>,
}

impl Attention {
    fn load(d: usize, n_head: usize, vb: VarBuilder) -> Result<Attention> {
        Ok(Attention {
            query: linear(d, d, vb.pp("q_proj"))?,
            key: linear_no_bias(d, d, vb.pp("k_proj"))?,
            value: linear(d, d, vb.pp("v_proj"))?,
            out: linear(d, d, vb.pp("out_proj"))?,
            n_head,
            cache: None,
        })
    }

    /// `(1, n, d)` -> `(1, heads, n, head_dim)`.
    fn heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        x.reshape((b, n, self.n_head, d / self.n_head))?
            .transpose(1, 2)?
            .contiguous()
    }

    fn project_kv(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((
            self.heads(&self.key.forward(x)?)?,
            self.heads(&self.value.forward(x)?)?,
        ))
    }

    /// Attention of the new positions `x` over the cached keys and values (after appending
    /// this step's, for self-attention). `mask` is added to the scores when given.
    fn forward(
        &mut self,
        x: &Tensor,
        self_attention: bool,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let q = self.heads(&self.query.forward(x)?)?;
        if self_attention {
            let (k, v) = self.project_kv(x)?;
            self.cache = Some(match self.cache.take() {
                Some((ck, cv)) => (Tensor::cat(&[&ck, &k], 2)?, Tensor::cat(&[&cv, &v], 2)?),
                None => (k, v),
            });
        }
        let (k, v) = self
            .cache
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("cross-attention without audio".into()))?;
        let head_dim = q.dim(D::Minus1)?;
        let scores = (q.matmul(&k.t()?)? * (head_dim as f64).powf(-0.5))?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let (b, _, n, _) = q.dims4()?;
        let wv = weights
            .matmul(v)?
            .transpose(1, 2)?
            .reshape((b, n, head_dim * self.n_head))?;
        self.out.forward(&wv)
    }
}

struct Block {
    self_attn: Attention,
    self_ln: LayerNorm,
    cross_attn: Attention,
    cross_ln: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    mlp_ln: LayerNorm,
}

/// The cached text decoder (see the module docs).
pub struct Decoder {
    embed: Tensor,
    positions: Tensor,
    blocks: Vec<Block>,
    ln: LayerNorm,
    /// Tokens run since [`Decoder::reset`].
    len: usize,
    device: Device,
}

impl Decoder {
    /// Loads `model.decoder.*` (Hugging Face names) from `vb`.
    pub fn load(vb: VarBuilder, cfg: &Config) -> Result<Decoder> {
        let d = cfg.d_model;
        let vb = vb.pp("model.decoder");
        let ln_cfg = LayerNormConfig {
            eps: 1e-5,
            ..LayerNormConfig::default()
        };
        let blocks = (0..cfg.decoder_layers)
            .map(|i| {
                let vb = vb.pp(format!("layers.{i}"));
                Ok(Block {
                    self_attn: Attention::load(d, cfg.decoder_attention_heads, vb.pp("self_attn"))?,
                    self_ln: layer_norm(d, ln_cfg, vb.pp("self_attn_layer_norm"))?,
                    cross_attn: Attention::load(
                        d,
                        cfg.decoder_attention_heads,
                        vb.pp("encoder_attn"),
                    )?,
                    cross_ln: layer_norm(d, ln_cfg, vb.pp("encoder_attn_layer_norm"))?,
                    fc1: linear(d, 4 * d, vb.pp("fc1"))?,
                    fc2: linear(4 * d, d, vb.pp("fc2"))?,
                    mlp_ln: layer_norm(d, ln_cfg, vb.pp("final_layer_norm"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Decoder {
            embed: vb.get((cfg.vocab_size, d), "embed_tokens.weight")?,
            positions: vb.get((cfg.max_target_positions, d), "embed_positions.weight")?,
            blocks,
            ln: layer_norm(d, ln_cfg, vb.pp("layer_norm"))?,
            len: 0,
            device: vb.device().clone(),
        })
    }

    /// Computes the cross-attention keys and values of a window's audio features
    /// `(1, frames, d)` and forgets every token.
    pub fn set_audio(&mut self, features: &Tensor) -> Result<()> {
        for b in &mut self.blocks {
            let kv = b.cross_attn.project_kv(features)?;
            b.cross_attn.cache = Some(kv);
            b.self_attn.cache = None;
        }
        self.len = 0;
        Ok(())
    }

    /// Forgets every token (the audio stays).
    pub fn reset(&mut self) {
        for b in &mut self.blocks {
            b.self_attn.cache = None;
        }
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

    /// Runs `tokens` after the ones already seen; returns their final hidden states
    /// `(1, n, d)`.
    pub fn forward(&mut self, tokens: &[u32]) -> Result<Tensor> {
        let n = tokens.len();
        let offset = self.len;
        let ids = Tensor::new(tokens, &self.device)?;
        let x = self
            .embed
            .index_select(&ids, 0)?
            .broadcast_add(&self.positions.narrow(0, offset, n)?)?
            .unsqueeze(0)?;
        // New token i (position offset + i) sees keys 0..=offset + i.
        let mask = if n > 1 {
            let total = offset + n;
            let m: Vec<f32> = (0..n)
                .flat_map(|i| {
                    (0..total).map(move |j| {
                        if j > offset + i {
                            f32::NEG_INFINITY
                        } else {
                            0.0
                        }
                    })
                })
                .collect();
            Some(Tensor::from_vec(m, (n, total), &self.device)?)
        } else {
            None
        };
        let mut x = x;
        for b in &mut self.blocks {
            let h = b
                .self_attn
                .forward(&b.self_ln.forward(&x)?, true, mask.as_ref())?;
            x = (x + h)?;
            let h = b
                .cross_attn
                .forward(&b.cross_ln.forward(&x)?, false, None)?;
            x = (x + h)?;
            let h = b
                .fc2
                .forward(&b.fc1.forward(&b.mlp_ln.forward(&x)?)?.gelu_erf()?)?;
            x = (x + h)?;
        }
        self.len += n;
        self.ln.forward(&x)
    }

    /// Vocabulary logits of the hidden state at position `pos` of `hidden` `(1, n, d)`.
    pub fn logits(&self, hidden: &Tensor, pos: usize) -> Result<Vec<f32>> {
        hidden
            .narrow(1, pos, 1)?
            .squeeze(0)?
            .matmul(&self.embed.t()?)?
            .flatten_all()?
            .to_vec1()
    }
}
