//! Weight formats, activation quantization and the dot-product kernels of the native path.
//!
//! Weights stay in their GGUF block format. A matrix-vector product quantizes the
//! activation vector once to 8-bit blocks of 32 ([`QActs`]: one `i8` per element, and per
//! block the scale `d` and `s = d * sum(q)`, the term Q4_0 / Q4_1's offset needs), then
//! every weight row is dotted with it block by block in integer arithmetic, one float
//! multiply-add per block. F16 and F32 weights are dotted with the f32 activations.
//!
//! Block layouts (public GGML facts): Q8_0 = f16 scale `d` + 32 `i8` (`w = d q`); Q4_0 =
//! f16 `d` + 16 bytes of nibbles (`w = d (q - 8)`); Q4_1 = f16 `d`, f16 `m` + 16 bytes of
//! nibbles (`w = d q + m`). In both 4-bit formats byte `j`'s low nibble is element `j` and
//! its high nibble element `j + 16`. Q5_0 = f16 `d`, 4 bytes `qh` (bit `j` is element `j`'s
//! fifth bit), 16 bytes of nibbles as in Q4_0 (`w = d (q - 16)`); Q5_1 = f16 `d`, f16 `m`,
//! `qh`, nibbles (`w = d q + m`).
//!
//! The K-quants pack 256 elements in a super-block ([`QK_K`]):
//! * Q4_K (144 bytes): f16 `d`, f16 `dmin`, 12 bytes of 6-bit scales and minimums for eight
//!   sub-blocks of 32 ([`k_scale_min`]), 128 bytes of nibbles: bytes `32 c..32 c + 32` hold
//!   sub-block `2c` in their low nibbles and `2c + 1` in their high nibbles;
//!   `w = d sc q - dmin m`.
//! * Q5_K (176 bytes): as Q4_K with 32 bytes `qh` after the scales: bit `s` of `qh[l]` is the
//!   fifth bit of element `l` of sub-block `s`.
//! * Q6_K (210 bytes): 128 bytes `ql` (low 4 bits), 64 bytes `qh` (high 2 bits), 16 `i8`
//!   scales (one per 16 elements), f16 `d`; `w = d sc (q - 32)`. Each half of 128 elements
//!   takes 64 bytes of `ql` and 32 of `qh`: element `l` (of 32) of its four quarters is
//!   `ql[l]` low, `ql[l + 32]` low, `ql[l]` high, `ql[l + 32]` high nibble, with bits
//!   `0-1`, `2-3`, `4-5`, `6-7` of `qh[l]` on top.
//!
//! llama.cpp dots the K-quants with activations quantized per super-block (Q8_K); here every
//! quantized type is dotted with the same per-32 activation blocks ([`QActs`]): a K-quant
//! sub-block of 32 is a block with scale `d sc` and minimum `-dmin m` (Q6_K: two scales of
//! 16), so one activation format serves every matrix and keeps a finer activation scale.
//!
//! Every kernel has a portable scalar form, always compiled (and the reference the tests
//! hold the SIMD forms to), and an AVX2 + FMA + F16C form chosen at run time ([`Isa`]).
//! On CPUs with AVX-512 (F, BW, VL and VNNI) the Q8_0 kernel has a third form,
//! two blocks per 512-bit register with `vpdpbusd`, also in a several-rows-at-once
//! variant ([`dot_rows`]) that loads each activation block once for [`ROWS`] rows.
//!
//! A product over several tokens (a prompt) goes through [`panel`] instead on those CPUs:
//! a few rows are unpacked once into one byte format for every quantized type and
//! multiplied with all the tokens in register tiles ([`panel_gemm`]). The activation
//! functions and the softmax's exponentials have AVX2 forms too ([`gated`], [`exp_sub`]).

use candle_core::quantized::GgmlDType;

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod panel;
pub mod scalar;
#[cfg(test)]
mod tests;

/// Elements per quantized block.
pub const QK: usize = 32;

/// Elements per K-quant super-block.
pub const QK_K: usize = 256;

/// A weight storage type the native path multiplies with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WType {
    /// 32-bit floats.
    F32,
    /// IEEE half floats.
    F16,
    /// 4-bit, scale only.
    Q4_0,
    /// 4-bit, scale and minimum.
    Q4_1,
    /// 8-bit, scale only.
    Q8_0,
    /// 5-bit, scale only.
    Q5_0,
    /// 5-bit, scale and minimum.
    Q5_1,
    /// 4-bit K-quant (super-blocks of 256).
    Q4K,
    /// 5-bit K-quant.
    Q5K,
    /// 6-bit K-quant.
    Q6K,
}

impl WType {
    /// The native type of a GGML type, `None` when the native path has no kernel for it.
    pub fn from_ggml(t: GgmlDType) -> Option<WType> {
        Some(match t {
            GgmlDType::F32 => WType::F32,
            GgmlDType::F16 => WType::F16,
            GgmlDType::Q4_0 => WType::Q4_0,
            GgmlDType::Q4_1 => WType::Q4_1,
            GgmlDType::Q8_0 => WType::Q8_0,
            GgmlDType::Q5_0 => WType::Q5_0,
            GgmlDType::Q5_1 => WType::Q5_1,
            GgmlDType::Q4K => WType::Q4K,
            GgmlDType::Q5K => WType::Q5K,
            GgmlDType::Q6K => WType::Q6K,
            _ => return None,
        })
    }

    /// Elements per block (1 for the float types).
    pub fn block_elems(self) -> usize {
        match self {
            WType::F32 | WType::F16 => 1,
            WType::Q4K | WType::Q5K | WType::Q6K => QK_K,
            _ => QK,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            WType::F32 => 4,
            WType::F16 => 2,
            WType::Q4_0 => 18,
            WType::Q4_1 => 20,
            WType::Q8_0 => 34,
            WType::Q5_0 => 22,
            WType::Q5_1 => 24,
            WType::Q4K => 144,
            WType::Q5K => 176,
            WType::Q6K => 210,
        }
    }

    /// Whether rows of this type are dotted with the quantized activations.
    pub fn quantized(self) -> bool {
        !matches!(self, WType::F32 | WType::F16)
    }

    /// Bytes of a row of `cols` elements (`cols` a multiple of the block size).
    pub fn row_bytes(self, cols: usize) -> usize {
        cols / self.block_elems() * self.block_bytes()
    }
}

/// The instruction set the kernels use.
///
/// Ordered: a CPU that runs one level runs every lower one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Portable Rust.
    Scalar,
    /// AVX2 + FMA + F16C (x86-64).
    Avx2,
    /// [`Isa::Avx2`] plus AVX-512 F, BW, VL and VNNI (x86-64): the Q8_0 kernel uses
    /// 512-bit registers, the others stay those of AVX2.
    Avx512,
}

impl Isa {
    /// The best kernels this CPU runs (detected once), capped by `STUDIO_LLM_ISA`
    /// (`scalar`, `avx2` or `avx512`) when set (for comparisons).
    pub fn detect() -> Isa {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            let cap = match std::env::var("STUDIO_LLM_ISA").as_deref() {
                Ok("scalar") => Isa::Scalar,
                Ok("avx2") => Isa::Avx2,
                _ => Isa::Avx512,
            };
            Isa::detect_cpu().min(cap)
        })
    }

    fn detect_cpu() -> Isa {
        {
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
                {
                    if std::arch::is_x86_feature_detected!("avx512f")
                        && std::arch::is_x86_feature_detected!("avx512bw")
                        && std::arch::is_x86_feature_detected!("avx512vl")
                        && std::arch::is_x86_feature_detected!("avx512vnni")
                    {
                        return Isa::Avx512;
                    }
                    return Isa::Avx2;
                }
            }
            Isa::Scalar
        }
    }

    /// Whether this CPU can run kernels of `self`.
    pub fn available(self) -> bool {
        self <= Isa::detect()
    }
}

/// IEEE half (bits) to f32, exactly.
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    if exp == 0 {
        // Zero or subnormal: man * 2^-24.
        let v = man as f32 * (1.0 / 16_777_216.0);
        if sign != 0 {
            -v
        } else {
            v
        }
    } else if exp == 31 {
        f32::from_bits(sign | 0x7f80_0000 | (man << 13))
    } else {
        f32::from_bits(sign | ((exp + 112) << 23) | (man << 13))
    }
}

fn half_at(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// Writes the elements of `row` (a row of type `ty`) to `out` as f32.
pub fn dequantize_row(ty: WType, row: &[u8], out: &mut [f32]) {
    match ty {
        WType::F32 => {
            for (o, b) in out.iter_mut().zip(row.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        WType::F16 => {
            for (o, b) in out.iter_mut().zip(row.chunks_exact(2)) {
                *o = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
            }
        }
        WType::Q8_0 => {
            for (o, b) in out.chunks_exact_mut(QK).zip(row.chunks_exact(34)) {
                let d = half_at(b, 0);
                for (o, &q) in o.iter_mut().zip(&b[2..34]) {
                    *o = d * f32::from(q as i8);
                }
            }
        }
        WType::Q4_0 | WType::Q4_1 | WType::Q5_0 | WType::Q5_1 => {
            let bytes = ty.block_bytes();
            for (o, b) in out.chunks_exact_mut(QK).zip(row.chunks_exact(bytes)) {
                let (d, m, q) = small_block(ty, b);
                for (o, q) in o.iter_mut().zip(q) {
                    *o = d * f32::from(q) + m;
                }
            }
        }
        WType::Q4K | WType::Q5K | WType::Q6K => {
            for (o, b) in out
                .chunks_exact_mut(QK_K)
                .zip(row.chunks_exact(ty.block_bytes()))
            {
                let (scales, q) = k_block(ty, b);
                for (s, (o, q)) in o.chunks_exact_mut(QK).zip(q.chunks_exact(QK)).enumerate() {
                    let [a, b, m] = scales[s];
                    for (j, (o, &q)) in o.iter_mut().zip(q).enumerate() {
                        *o = if j < 16 { a } else { b } * f32::from(q) + m;
                    }
                }
            }
        }
    }
}

/// A Q4_0 / Q4_1 / Q5_0 / Q5_1 block: `(d, m, q)` with `w = d q + m` (`q` unsigned).
pub(crate) fn small_block(ty: WType, b: &[u8]) -> (f32, f32, [u8; QK]) {
    let d = half_at(b, 0);
    let (m, qh, nib) = match ty {
        WType::Q4_0 => (-8.0 * d, 0, 2),
        WType::Q4_1 => (half_at(b, 2), 0, 4),
        WType::Q5_0 => (-16.0 * d, u32::from_le_bytes([b[2], b[3], b[4], b[5]]), 6),
        WType::Q5_1 => (
            half_at(b, 2),
            u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            8,
        ),
        _ => unreachable!("{ty:?} is not a 32-element block type"),
    };
    let mut q = [0u8; QK];
    for j in 0..16 {
        let v = b[nib + j];
        q[j] = (v & 0x0f) | (((qh >> j) & 1) as u8) << 4;
        q[j + 16] = (v >> 4) | (((qh >> (j + 16)) & 1) as u8) << 4;
    }
    (d, m, q)
}

/// [`small_block`] with `isa`'s instructions.
pub(crate) fn small_block_isa(isa: Isa, ty: WType, b: &[u8]) -> (f32, f32, [u8; QK]) {
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: as in `dot`: AVX2 and F16C were detected.
        return unsafe { avx2::small_block_q(ty, b) };
    }
    let _ = isa;
    small_block(ty, b)
}

/// The 6-bit scale and minimum of sub-block `j` (0..8) of a Q4_K / Q5_K super-block, from
/// its 12 scale bytes: sub-blocks 0-3 keep theirs in the low 6 bits of bytes `j` (scale)
/// and `j + 4` (minimum); sub-blocks 4-7 in the nibbles of bytes `j + 4` with their top two
/// bits in the top bits of bytes `j - 4` (scale) and `j` (minimum).
pub fn k_scale_min(scales: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0x0f) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    }
}

/// A K-quant super-block as eight blocks of 32: per block `[scale of elements 0..16, scale
/// of 16..32, minimum]` (`w = scale q + minimum`) and the 256 `q` (Q6_K: signed, `q - 32`).
pub(crate) fn k_block(ty: WType, b: &[u8]) -> ([[f32; 3]; 8], [i8; QK_K]) {
    let mut out = [[0f32; 3]; 8];
    let mut q = [0i8; QK_K];
    match ty {
        WType::Q4K | WType::Q5K => {
            let (d, dmin) = (half_at(b, 0), half_at(b, 2));
            let scales = &b[4..16];
            let (qh, qs) = if ty == WType::Q5K {
                (Some(&b[16..48]), &b[48..176])
            } else {
                (None, &b[16..144])
            };
            for (s, o) in out.iter_mut().enumerate() {
                let (sc, m) = k_scale_min(scales, s);
                let sc = d * f32::from(sc);
                *o = [sc, sc, -dmin * f32::from(m)];
                let bytes = &qs[s / 2 * 32..][..32];
                for l in 0..32 {
                    let nib = if s % 2 == 0 {
                        bytes[l] & 0x0f
                    } else {
                        bytes[l] >> 4
                    };
                    let hi = qh.map_or(0, |qh| ((qh[l] >> s) & 1) << 4);
                    q[s * 32 + l] = (nib | hi) as i8;
                }
            }
        }
        WType::Q6K => {
            let (ql, qh, sc) = (&b[..128], &b[128..192], &b[192..208]);
            let d = half_at(b, 208);
            for half in 0..2 {
                let (ql, qh) = (&ql[half * 64..], &qh[half * 32..]);
                for l in 0..32 {
                    let quarters = [
                        (ql[l] & 0x0f) | ((qh[l] & 3) << 4),
                        (ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4),
                        (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                        (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
                    ];
                    for (k, v) in quarters.into_iter().enumerate() {
                        q[half * 128 + k * 32 + l] = v as i8 - 32;
                    }
                }
            }
            for (s, o) in out.iter_mut().enumerate() {
                let sc = |i: usize| d * f32::from(sc[i] as i8);
                *o = [sc(2 * s), sc(2 * s + 1), 0.0];
            }
        }
        _ => unreachable!("{ty:?} is not a K-quant"),
    }
    (out, q)
}

/// Activations quantized to 8-bit blocks of 32, for `tokens` vectors of `n` elements.
#[derive(Clone, Debug, Default)]
pub struct QActs {
    /// The quantized elements, token after token.
    pub qs: Vec<i8>,
    /// Per block: `[d, d * sum(q)]`.
    pub ds: Vec<[f32; 2]>,
}

/// One activation vector as the kernels read it.
#[derive(Clone, Copy, Debug)]
pub struct Act<'a> {
    /// The f32 elements.
    pub f: &'a [f32],
    /// The quantized elements (empty when not quantized).
    pub qs: &'a [i8],
    /// Per block `[d, d * sum(q)]` (empty when not quantized).
    pub ds: &'a [[f32; 2]],
}

/// Quantizes `x` (a multiple of 32 long) into `qs` / `ds`.
pub fn quantize(x: &[f32], qs: &mut [i8], ds: &mut [[f32; 2]]) {
    for ((x, q), ds) in x
        .chunks_exact(QK)
        .zip(qs.chunks_exact_mut(QK))
        .zip(ds.iter_mut())
    {
        let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in q.iter_mut().zip(x) {
            let v = v * id;
            // Round half away from zero (`as` truncates toward zero; |v| <= 127).
            let r = (v + 0.5f32.copysign(v)) as i32;
            *q = r as i8;
            sum += r;
        }
        *ds = [d, d * sum as f32];
    }
}

/// [`quantize`] with `isa`'s instructions (the same bits).
pub fn quantize_isa(isa: Isa, x: &[f32], qs: &mut [i8], ds: &mut [[f32; 2]]) {
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: as in `dot`: AVX2 was detected.
        return unsafe { avx2::quantize(x, qs, ds) };
    }
    let _ = isa;
    quantize(x, qs, ds)
}

/// The dot product of a weight row of type `ty` with `x`, using `isa`'s kernels.
pub fn dot(isa: Isa, ty: WType, row: &[u8], x: Act<'_>) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && ty.quantized() {
        // SAFETY: `Isa::Avx512` is only ever used once `Isa::detect` (or a test checking
        // `available`) found AVX-512 F / BW / VL / VNNI, AVX2, FMA and F16C on this CPU;
        // the kernels check lengths.
        return unsafe { avx512::dot_rows::<1>(ty, &[row], x)[0] };
    }
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: `Isa::Avx2` is only ever used once `Isa::detect` (or a test checking
        // `available`) found AVX2, FMA and F16C on this CPU; the kernels check lengths.
        return unsafe { avx2::dot(ty, row, x) };
    }
    let _ = isa;
    scalar::dot(ty, row, x)
}

/// How far ahead of the row being multiplied the one-token product asks the CPU to fetch
/// a matrix, in bytes. One token reads each weight once, straight from memory; with the
/// hardware prefetcher alone decode read the matrices well below the measured bandwidth,
/// and this hint made it 1.3-1.5x faster (BENCHMARKS.md, "LLM decode: software prefetch
/// and AVX-512 one-token kernels").
pub const PREFETCH_AHEAD: usize = 4096;

/// Asks the CPU to start bringing `bytes` into its caches, a line at a time: a hint, with no
/// effect on any result (none at all on architectures without the instruction).
#[inline]
pub fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in bytes.chunks(64) {
        // SAFETY: a prefetch reads nothing architecturally and cannot fault; the address
        // lies in `bytes`. SSE, which has the instruction, is part of x86-64.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr().cast(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

/// Rows per call of [`dot_rows`].
pub const ROWS: usize = 4;

/// `[dot(isa, ty, rows[k], x)]`, bit for bit, computed together (each activation block is
/// loaded once for all the rows where `isa` has a multi-row kernel).
pub fn dot_rows(isa: Isa, ty: WType, rows: [&[u8]; ROWS], x: Act<'_>) -> [f32; ROWS] {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && ty.quantized() {
        // SAFETY: as in `dot`: AVX-512 F / BW / VL / VNNI, AVX2, FMA and F16C were detected.
        return unsafe { avx512::dot_rows::<ROWS>(ty, &rows, x) };
    }
    rows.map(|row| dot(isa, ty, row, x))
}

/// [`panel::gemm`] with `isa`'s kernels: `out[r * rs + t * ts] = row r . token t` for every
/// row of `p` and token of `a`.
pub fn panel_gemm(
    isa: Isa,
    p: &panel::Panel,
    a: &panel::PanelActs,
    out: &mut [f32],
    rs: usize,
    ts: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        // SAFETY: as in `dot`: AVX-512 F / BW / VL / VNNI, AVX2, FMA and F16C were detected.
        return unsafe { avx512::panel_gemm(p, a, out, rs, ts) };
    }
    let _ = isa;
    panel::gemm(p, a, out, rs, ts)
}

/// `sum(a[i] * b[i])` over f32 slices of equal length.
/// (The forward pass reaches these kernels through [`attend`]; this is the tests' entry.)
#[cfg(test)]
pub fn dot_f32(isa: Isa, a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: as in `dot`: AVX2 and FMA were detected.
        return unsafe { avx2::dot_f32(a, b) };
    }
    let _ = isa;
    scalar::dot_f32(a, b)
}

/// `g[i] = act(g[i]) * u[i]`, `act` GELU (tanh form) when `gelu`, else SiLU.
pub fn gated(isa: Isa, gelu: bool, g: &mut [f32], u: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: as in `dot`: AVX2 and FMA were detected.
        return unsafe { avx2::gated(gelu, g, u) };
    }
    let _ = isa;
    scalar::gated(gelu, g, u)
}

/// `s[i] = e^(s[i] - max)`, returning their sum.
/// (The forward pass reaches these kernels through [`attend`]; this is the tests' entry.)
#[cfg(test)]
pub fn exp_sub(isa: Isa, s: &mut [f32], max: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: as in `dot`: AVX2 and FMA were detected.
        return unsafe { avx2::exp_sub(s, max) };
    }
    let _ = isa;
    scalar::exp_sub(s, max)
}

/// One query's attention: over the positions `first..n` of a cache whose rows are `stride`
/// floats apart (this head's keys and values at `off` in each row), the scores
/// `q . k_p * scale` into `s[first..n]`, their softmax, and `out = sum_p softmax_p v_p`.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    isa: Isa,
    q: &[f32],
    (k, v): (&[f32], &[f32]),
    (stride, off): (usize, usize),
    (first, n): (usize, usize),
    scale: f32,
    s: &mut [f32],
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: as in `dot`: AVX2 and FMA were detected.
        return unsafe { avx2::attend(q, (k, v), (stride, off), (first, n), scale, s, out) };
    }
    let _ = isa;
    attend_with(
        scalar::dot_f32,
        scalar::exp_sub,
        scalar::axpy,
        q,
        (k, v),
        (stride, off),
        (first, n),
        scale,
        s,
        out,
    )
}

/// [`attend`] with the given kernels (inlined into each instruction set's caller).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend_with(
    dot: impl Fn(&[f32], &[f32]) -> f32,
    exp_sub: impl Fn(&mut [f32], f32) -> f32,
    axpy: impl Fn(&mut [f32], f32, &[f32]),
    q: &[f32],
    (k, v): (&[f32], &[f32]),
    (stride, off): (usize, usize),
    (first, n): (usize, usize),
    scale: f32,
    s: &mut [f32],
    out: &mut [f32],
) {
    let hd = q.len();
    let s = &mut s[first..n];
    let mut max = f32::NEG_INFINITY;
    for (p, s) in (first..n).zip(s.iter_mut()) {
        *s = dot(q, &k[p * stride + off..][..hd]) * scale;
        max = max.max(*s);
    }
    let inv = 1.0 / exp_sub(s, max);
    out.fill(0.0);
    for (p, &s) in (first..n).zip(s.iter()) {
        axpy(out, s * inv, &v[p * stride + off..][..hd]);
    }
}

/// `y[i] += a * x[i]`.
/// (The forward pass reaches these kernels through [`attend`]; this is the tests' entry.)
#[cfg(test)]
pub fn axpy(isa: Isa, y: &mut [f32], a: f32, x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: as in `dot`: AVX2 and FMA were detected.
        return unsafe { avx2::axpy(y, a, x) };
    }
    let _ = isa;
    scalar::axpy(y, a, x)
}
