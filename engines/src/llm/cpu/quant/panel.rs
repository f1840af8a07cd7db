//! The many-token product (a prompt's prefill): quantized rows unpacked once into a
//! [`Panel`], then multiplied with every token of the chunk in register tiles.
//!
//! The one-token kernels ([`super::dot`]) unpack each weight block for each token; over a
//! prompt of a few hundred tokens that unpacking, the per-call overhead and the horizontal
//! sums are most of the work. Here a few rows at a time are unpacked into one format for
//! every quantized type, and an integer product runs over all the tokens:
//!
//! * weights: per block of 32, 32 unsigned bytes `q` with `weight = scale_lane q +
//!   min_half`: a scale per lane of four elements and a minimum per half of 16 (Q6_K's
//!   halves have scales of their own; Q8_0's `q + 128` and Q6_K's `q + 32` take their
//!   offset into the minimum), as the one-token kernels read Q4_1;
//! * activations ([`PanelActs`]): the 8-bit blocks of [`super::QActs`] (the signed operand
//!   of `vpdpbusd`), the block scale `d` spread over its lanes, and per half block
//!   `d sum(q)` for the minimum.
//!
//! Per block the weights keep `[min_lo, min_hi]` and the activations `[d sum(q_lo), d
//! sum(q_hi)]`, so one short float dot per row and token adds the minimums. The result is
//! [`super::dot`]'s up to the order of the float additions.
//!
//! Blocks go in pairs (a 512-bit register holds two); a row's odd last block is paired with
//! zero weights. Rows of a panel are interleaved pair by pair, so a tile walks one stream.

use super::{k_block, small_block_isa, Isa, QActs, WType, QK, QK_K};

/// Lanes of four elements per block.
pub const LANES: usize = QK / 4;

/// Rows unpacked per [`Panel`] (a tile's height).
pub const PANEL_ROWS: usize = 4;

/// The fewest tokens a product runs through panels for; fewer go token by token.
pub const PANEL_MIN_TOKENS: usize = 4;

/// 64 bytes, aligned to a cache line: a pair of blocks' bytes.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug)]
pub struct Line(pub [u8; 64]);

/// 16 floats, aligned to a cache line: a pair of blocks' lane scales, or eight blocks'
/// minimums / half sums (two per block).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug)]
pub struct Lanes(pub [f32; 16]);

const ZERO_LINE: Line = Line([0; 64]);
const ZERO_LANES: Lanes = Lanes([0.0; 16]);

/// Pairs of blocks of `cols` elements (a row's odd last block is paired with zeros).
pub fn pairs(cols: usize) -> usize {
    (cols / QK).div_ceil(2)
}

/// [`Lanes`] that hold two floats per block for `cols` elements.
pub fn extra_lines(cols: usize) -> usize {
    (2 * (cols / QK)).div_ceil(16)
}

/// Up to [`PANEL_ROWS`] weight rows in the unpacked format (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct Panel {
    /// Rows held.
    pub rows: usize,
    /// Pairs of blocks per row.
    pub pairs: usize,
    /// Per pair, per row (interleaved: index `pair * rows + row`): the unsigned weights.
    pub w: Vec<Line>,
    /// Per pair, per row (as `w`): the lane scales.
    pub sc: Vec<Lanes>,
    /// Per row, [`extra_lines`] lines of `[min_lo, min_hi]` per block.
    pub ex: Vec<Lanes>,
}

impl Panel {
    /// Unpacks `rows` (each `cols` elements of the quantized type `ty`) with `isa`'s
    /// instructions.
    pub fn fill(&mut self, isa: Isa, ty: WType, cols: usize, rows: &[&[u8]]) {
        assert!(ty.quantized() && rows.len() <= PANEL_ROWS && cols.is_multiple_of(QK));
        self.rows = rows.len();
        self.pairs = pairs(cols);
        let n = self.rows * self.pairs;
        self.w.clear();
        self.w.resize(n, ZERO_LINE);
        self.sc.clear();
        self.sc.resize(n, ZERO_LANES);
        self.ex.clear();
        self.ex.resize(self.rows * extra_lines(cols), ZERO_LANES);
        for (r, row) in rows.iter().enumerate() {
            match ty {
                WType::Q8_0 => {
                    for (j, b) in row.chunks_exact(34).enumerate() {
                        let d = super::half_at(b, 0);
                        let q: [u8; QK] = std::array::from_fn(|i| b[2 + i] ^ 0x80);
                        self.set(cols, r, j, &q, [d, d, -128.0 * d, -128.0 * d]);
                    }
                }
                WType::Q4_0 | WType::Q4_1 | WType::Q5_0 | WType::Q5_1 => {
                    for (j, b) in row.chunks_exact(ty.block_bytes()).enumerate() {
                        let (d, m, q) = small_block_isa(isa, ty, b);
                        self.set(cols, r, j, &q, [d, d, m, m]);
                    }
                }
                WType::Q4K | WType::Q5K | WType::Q6K => {
                    for (j, b) in row.chunks_exact(ty.block_bytes()).enumerate() {
                        let (scales, q) = k_block(ty, b);
                        for (s, [lo, hi, m]) in scales.into_iter().enumerate() {
                            let q = &q[s * QK..][..QK];
                            let (q, mins) = if ty == WType::Q6K {
                                // Stored as `q - 32`: back to unsigned, the offset in the
                                // minimums.
                                let q = std::array::from_fn(|i| (q[i] + 32) as u8);
                                (q, [-32.0 * lo, -32.0 * hi])
                            } else {
                                (std::array::from_fn(|i| q[i] as u8), [m, m])
                            };
                            let at = j * (QK_K / QK) + s;
                            self.set(cols, r, at, &q, [lo, hi, mins[0], mins[1]]);
                        }
                    }
                }
                WType::F32 | WType::F16 => unreachable!("float rows are not unpacked"),
            }
        }
    }

    /// Block `j` of row `r`: weights `q`, `[scale of elements 0..16, scale of 16..32,
    /// minimum of 0..16, minimum of 16..32]`.
    fn set(&mut self, cols: usize, r: usize, j: usize, q: &[u8; QK], [lo, hi, m0, m1]: [f32; 4]) {
        let at = (j / 2) * self.rows + r;
        self.w[at].0[(j % 2) * QK..][..QK].copy_from_slice(q);
        let sc = &mut self.sc[at].0[(j % 2) * LANES..][..LANES];
        sc[..LANES / 2].fill(lo);
        sc[LANES / 2..].fill(hi);
        let ex = &mut self.ex[r * extra_lines(cols)..];
        ex[2 * j / 16].0[2 * j % 16] = m0;
        ex[2 * j / 16].0[2 * j % 16 + 1] = m1;
    }

    /// Row `r`'s `[min_lo, min_hi]` lines.
    #[inline]
    pub fn extras(&self, r: usize) -> &[Lanes] {
        let per = self.ex.len() / self.rows.max(1);
        &self.ex[r * per..][..per]
    }
}

/// Every token's quantized activations as the panel kernels read them (see the module
/// docs).
#[derive(Clone, Debug, Default)]
pub struct PanelActs {
    /// Tokens.
    pub tokens: usize,
    /// Pairs of blocks per token.
    pub pairs: usize,
    /// Per token, per pair (index `token * pairs + pair`): the signed bytes `q`.
    pub aq: Vec<Line>,
    /// Per token, per pair (as `aq`): the block scales over their lanes.
    pub da: Vec<Lanes>,
    /// Per token, [`extra_lines`] lines of `[d sum(q_lo), d sum(q_hi)]` per block.
    pub ex: Vec<Lanes>,
}

impl PanelActs {
    /// Takes `tokens` vectors of `n` elements from their 8-bit quantization `q`.
    pub fn set(&mut self, q: &QActs, n: usize, tokens: usize) {
        let blocks = n / QK;
        let (pairs, lines) = (pairs(n), extra_lines(n));
        self.tokens = tokens;
        self.pairs = pairs;
        self.aq.clear();
        self.aq.resize(tokens * pairs, ZERO_LINE);
        self.da.clear();
        self.da.resize(tokens * pairs, ZERO_LANES);
        self.ex.clear();
        self.ex.resize(tokens * lines, ZERO_LANES);
        for t in 0..tokens {
            let qs = &q.qs[t * n..][..n];
            for (j, (q, ds)) in qs
                .chunks_exact(QK)
                .zip(&q.ds[t * blocks..][..blocks])
                .enumerate()
            {
                let at = t * pairs + j / 2;
                for (d, &s) in self.aq[at].0[(j % 2) * QK..][..QK].iter_mut().zip(q) {
                    *d = s as u8;
                }
                self.da[at].0[(j % 2) * LANES..][..LANES].fill(ds[0]);
                let sum = |h: &[i8]| h.iter().map(|&v| i32::from(v)).sum::<i32>() as f32;
                let ex = &mut self.ex[t * lines + 2 * j / 16].0;
                ex[2 * j % 16] = ds[0] * sum(&q[..16]);
                ex[2 * j % 16 + 1] = ds[0] * sum(&q[16..]);
            }
        }
    }

    /// Token `t`'s pairs (bytes, lane scales) and its half sums.
    #[inline]
    pub fn token(&self, t: usize) -> (&[Line], &[Lanes], &[Lanes]) {
        let (p, l) = (self.pairs, self.ex.len() / self.tokens.max(1));
        (
            &self.aq[t * p..][..p],
            &self.da[t * p..][..p],
            &self.ex[t * l..][..l],
        )
    }
}

/// `out[r * rs + t * ts] = row r . token t` for every row of `p` and every token of `a`
/// (portable form).
pub fn gemm(p: &Panel, a: &PanelActs, out: &mut [f32], rs: usize, ts: usize) {
    assert_eq!(p.pairs, a.pairs);
    for r in 0..p.rows {
        for t in 0..a.tokens {
            let (aq, da, aex) = a.token(t);
            let mut lanes = [0f32; 2 * LANES];
            for i in 0..p.pairs {
                let (w, sc) = (&p.w[i * p.rows + r].0, &p.sc[i * p.rows + r].0);
                for (l, acc) in lanes.iter_mut().enumerate() {
                    let s: i32 = (l * 4..l * 4 + 4)
                        .map(|e| i32::from(w[e]) * i32::from(aq[i].0[e] as i8))
                        .sum();
                    *acc += sc[l] * da[i].0[l] * s as f32;
                }
            }
            let mut v: f32 = lanes.iter().sum();
            for (x, y) in p.extras(r).iter().zip(aex) {
                v += x.0.iter().zip(&y.0).map(|(x, y)| x * y).sum::<f32>();
            }
            out[r * rs + t * ts] = v;
        }
    }
}
