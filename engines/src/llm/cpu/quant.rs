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
//! its high nibble element `j + 16`.
//!
//! Every kernel has a portable scalar form, always compiled (and the reference the tests
//! hold the SIMD forms to), and an AVX2 + FMA + F16C form chosen at run time ([`Isa`]).
//! On CPUs with AVX-512 (F, BW, VL and VNNI) the Q8_0 kernel has a third form,
//! two blocks per 512-bit register with `vpdpbusd`, also in a several-rows-at-once
//! variant ([`dot_rows`]) that loads each activation block once for [`ROWS`] rows.

use candle_core::quantized::GgmlDType;

/// Elements per quantized block.
pub const QK: usize = 32;

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
            _ => return None,
        })
    }

    /// Elements per block (1 for the float types).
    pub fn block_elems(self) -> usize {
        match self {
            WType::F32 | WType::F16 => 1,
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
        WType::Q4_0 | WType::Q4_1 => {
            let (bytes, nib) = if ty == WType::Q4_0 { (18, 2) } else { (20, 4) };
            for (o, b) in out.chunks_exact_mut(QK).zip(row.chunks_exact(bytes)) {
                let d = half_at(b, 0);
                let (m, off) = if ty == WType::Q4_0 {
                    (0.0, 8)
                } else {
                    (half_at(b, 2), 0)
                };
                for j in 0..16 {
                    let q = b[nib + j];
                    o[j] = d * f32::from(i16::from(q & 0x0f) - off) + m;
                    o[j + 16] = d * f32::from(i16::from(q >> 4) - off) + m;
                }
            }
        }
    }
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

/// The dot product of a weight row of type `ty` with `x`, using `isa`'s kernels.
pub fn dot(isa: Isa, ty: WType, row: &[u8], x: Act<'_>) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && ty == WType::Q8_0 {
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

/// Rows per call of [`dot_rows`].
pub const ROWS: usize = 4;

/// `[dot(isa, ty, rows[k], x)]`, bit for bit, computed together (each activation block is
/// loaded once for all the rows where `isa` has a multi-row kernel).
pub fn dot_rows(isa: Isa, ty: WType, rows: [&[u8]; ROWS], x: Act<'_>) -> [f32; ROWS] {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && ty == WType::Q8_0 {
        // SAFETY: as in `dot`: AVX-512 F / BW / VL / VNNI, AVX2, FMA and F16C were detected.
        return unsafe { avx512::dot_rows::<ROWS>(ty, &rows, x) };
    }
    rows.map(|row| dot(isa, ty, row, x))
}

/// `sum(a[i] * b[i])` over f32 slices of equal length.
pub fn dot_f32(isa: Isa, a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: as in `dot`: AVX2 and FMA were detected.
        return unsafe { avx2::dot_f32(a, b) };
    }
    let _ = isa;
    scalar::dot_f32(a, b)
}

/// `y[i] += a * x[i]`.
pub fn axpy(isa: Isa, y: &mut [f32], a: f32, x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: as in `dot`: AVX2 and FMA were detected.
        return unsafe { avx2::axpy(y, a, x) };
    }
    let _ = isa;
    scalar::axpy(y, a, x)
}

/// The portable kernels.
pub mod scalar {
    use super::{half_at, Act, WType, QK};

    /// The dot product of a weight row of type `ty` with `x`.
    pub fn dot(ty: WType, row: &[u8], x: Act<'_>) -> f32 {
        match ty {
            WType::F32 => {
                let mut acc = 0f32;
                for (b, &v) in row.chunks_exact(4).zip(x.f) {
                    acc += f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * v;
                }
                acc
            }
            WType::F16 => {
                let mut acc = 0f32;
                for (b, &v) in row.chunks_exact(2).zip(x.f) {
                    acc += half_at(b, 0) * v;
                }
                acc
            }
            WType::Q8_0 => {
                let mut acc = 0f32;
                for ((b, q), ds) in row.chunks_exact(34).zip(x.qs.chunks_exact(QK)).zip(x.ds) {
                    let mut isum = 0i32;
                    for (&w, &q) in b[2..34].iter().zip(q) {
                        isum += i32::from(w as i8) * i32::from(q);
                    }
                    acc += half_at(b, 0) * ds[0] * isum as f32;
                }
                acc
            }
            WType::Q4_0 | WType::Q4_1 => {
                let q4_1 = ty == WType::Q4_1;
                let (bytes, nib) = if q4_1 { (20, 4) } else { (18, 2) };
                let mut acc = 0f32;
                for ((b, q), ds) in row.chunks_exact(bytes).zip(x.qs.chunks_exact(QK)).zip(x.ds) {
                    let mut isum = 0i32;
                    for j in 0..16 {
                        let w = b[nib + j];
                        isum += i32::from(w & 0x0f) * i32::from(q[j]);
                        isum += i32::from(w >> 4) * i32::from(q[j + 16]);
                    }
                    let d = half_at(b, 0);
                    // sum((d q + m) * dx qx) = d dx sum(q qx) + m s; Q4_0's m is -8 d.
                    let m = if q4_1 { half_at(b, 2) } else { -8.0 * d };
                    acc += d * ds[0] * isum as f32 + m * ds[1];
                }
                acc
            }
        }
    }

    /// `sum(a[i] * b[i])`.
    pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0f32; 8];
        let ca = a.chunks_exact(8);
        let cb = b.chunks_exact(8);
        let tail: f32 = ca
            .remainder()
            .iter()
            .zip(cb.remainder())
            .map(|(x, y)| x * y)
            .sum();
        for (x, y) in ca.zip(cb) {
            for i in 0..8 {
                acc[i] += x[i] * y[i];
            }
        }
        acc.iter().sum::<f32>() + tail
    }

    /// `y[i] += a * x[i]`.
    pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y += a * x;
        }
    }
}

/// The AVX2 + FMA + F16C kernels.
#[cfg(target_arch = "x86_64")]
pub mod avx2 {
    use std::arch::x86_64::*;

    use super::{Act, WType, QK};

    #[inline]
    #[target_feature(enable = "avx2")]
    fn load256(b: &[u8]) -> __m256i {
        assert!(b.len() >= 32);
        // SAFETY: `b` holds at least 32 readable bytes (checked); the load is unaligned.
        unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn load256_i8(b: &[i8]) -> __m256i {
        assert!(b.len() >= 32);
        // SAFETY: `b` holds at least 32 readable bytes (checked); the load is unaligned.
        unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn load128(b: &[u8]) -> __m128i {
        assert!(b.len() >= 16);
        // SAFETY: `b` holds at least 16 readable bytes (checked); the load is unaligned.
        unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn load128_twice(b: &[u8]) -> __m256i {
        assert!(b.len() >= 16);
        // SAFETY: `b` holds at least 16 readable bytes (checked); the load is unaligned.
        unsafe { _mm256_broadcastsi128_si256(_mm_loadu_si128(b.as_ptr().cast())) }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn load_pair(p: &[f32; 2]) -> __m128 {
        // SAFETY: `p` is 8 readable bytes; `_mm_load_sd` reads 8 bytes, unaligned.
        unsafe { _mm_castpd_ps(_mm_load_sd(p.as_ptr().cast())) }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn load_f32x8(b: &[f32]) -> __m256 {
        assert!(b.len() >= 8);
        // SAFETY: `b` holds at least 8 readable floats (checked); the load is unaligned.
        unsafe { _mm256_loadu_ps(b.as_ptr()) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// The dot product of a weight row of type `ty` with `x`.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot(ty: WType, row: &[u8], x: Act<'_>) -> f32 {
        match ty {
            WType::F32 => dot_row_f32(row, x.f),
            WType::F16 => dot_f16(row, x.f),
            WType::Q8_0 => dot_q8_0(row, x),
            WType::Q4_0 => dot_q4::<18, 2, false>(row, x),
            WType::Q4_1 => dot_q4::<20, 4, true>(row, x),
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_q8_0(row: &[u8], x: Act<'_>) -> f32 {
        let ones = _mm256_set1_epi16(1);
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut blocks = row
            .chunks_exact(68)
            .zip(x.qs.chunks_exact(64))
            .zip(x.ds.chunks_exact(2));
        for ((b, q), ds) in &mut blocks {
            acc0 = q8_block(&b[..34], &q[..32], ds[0][0], ones, acc0);
            acc1 = q8_block(&b[34..], &q[32..], ds[1][0], ones, acc1);
        }
        let done = row.len() / 68;
        for ((b, q), ds) in row[done * 68..]
            .chunks_exact(34)
            .zip(x.qs[done * 64..].chunks_exact(QK))
            .zip(&x.ds[done * 2..])
        {
            acc0 = q8_block(b, q, ds[0], ones, acc0);
        }
        hsum(_mm256_add_ps(acc0, acc1))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn q8_block(b: &[u8], q: &[i8], dx: f32, ones: __m256i, acc: __m256) -> __m256 {
        let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(
            u16::from_le_bytes([b[0], b[1]]),
        ))));
        let w = load256(&b[2..34]);
        let xq = load256_i8(q);
        // maddubs multiplies unsigned by signed bytes: move w's sign onto x.
        let aw = _mm256_sign_epi8(w, w);
        let sx = _mm256_sign_epi8(xq, w);
        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sx), ones);
        _mm256_fmadd_ps(_mm256_set1_ps(d * dx), _mm256_cvtepi32_ps(p), acc)
    }

    /// Q4_0 (`BYTES` 18, nibbles at 2, no minimum: `m = -8 d`) and Q4_1 (20, 4, `m`).
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_q4<const BYTES: usize, const NIB: usize, const MIN: bool>(
        row: &[u8],
        x: Act<'_>,
    ) -> f32 {
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        // Lane 0: sum of d dx isum (unused); lane 1: sum of m s (Q4_1) or d s (Q4_0).
        let mut macc = _mm_setzero_ps();
        let pairs = row.len() / (2 * BYTES);
        for ((b, q), ds) in row
            .chunks_exact(2 * BYTES)
            .zip(x.qs.chunks_exact(2 * QK))
            .zip(x.ds.chunks_exact(2))
        {
            (acc0, macc) = q4_block::<NIB, MIN>(&b[..BYTES], &q[..QK], &ds[0], acc0, macc);
            (acc1, macc) = q4_block::<NIB, MIN>(&b[BYTES..], &q[QK..], &ds[1], acc1, macc);
        }
        for ((b, q), ds) in row[pairs * 2 * BYTES..]
            .chunks_exact(BYTES)
            .zip(x.qs[pairs * 2 * QK..].chunks_exact(QK))
            .zip(&x.ds[pairs * 2..])
        {
            (acc0, macc) = q4_block::<NIB, MIN>(b, q, ds, acc0, macc);
        }
        let m = _mm_cvtss_f32(_mm_movehdup_ps(macc));
        let m = if MIN { m } else { -8.0 * m };
        hsum(_mm256_add_ps(acc0, acc1)) + m
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn q4_block<const NIB: usize, const MIN: bool>(
        b: &[u8],
        q: &[i8],
        ds: &[f32; 2],
        acc: __m256,
        macc: __m128,
    ) -> (__m256, __m128) {
        let dm = if MIN {
            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
        } else {
            let d = u32::from(u16::from_le_bytes([b[0], b[1]]));
            d | (d << 16)
        };
        // [d, m] * [dx, s] = [d dx, m s] (Q4_0: [d dx, d s]).
        let scales = _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(dm as i32)), load_pair(ds));
        // The 16 bytes in both halves; the upper half shifted by 4: low nibbles (elements
        // 0..16) below, high nibbles (16..32) above.
        let raw = load128_twice(&b[NIB..NIB + 16]);
        let shifted = _mm256_srlv_epi32(raw, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4));
        let w = _mm256_and_si256(shifted, _mm256_set1_epi8(0x0f));
        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(w, load256_i8(q)), _mm256_set1_epi16(1));
        let acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(scales), _mm256_cvtepi32_ps(p), acc);
        (acc, _mm_add_ps(macc, scales))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_f16(row: &[u8], x: &[f32]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let n = x.len().min(row.len() / 2);
        let full = n / 8 * 8;
        for (w, v) in row[..full * 2].chunks_exact(16).zip(x.chunks_exact(8)) {
            let w = _mm256_cvtph_ps(load128(w));
            acc = _mm256_fmadd_ps(w, load_f32x8(v), acc);
        }
        let mut tail = 0f32;
        for i in full..n {
            tail += super::f16_to_f32(u16::from_le_bytes([row[2 * i], row[2 * i + 1]])) * x[i];
        }
        hsum(acc) + tail
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_row_f32(row: &[u8], x: &[f32]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let n = x.len().min(row.len() / 4);
        let full = n / 8 * 8;
        for (w, v) in row[..full * 4].chunks_exact(32).zip(x.chunks_exact(8)) {
            let w = _mm256_castsi256_ps(load256(w));
            acc = _mm256_fmadd_ps(w, load_f32x8(v), acc);
        }
        let mut tail = 0f32;
        for i in full..n {
            let b = &row[4 * i..4 * i + 4];
            tail += f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * x[i];
        }
        hsum(acc) + tail
    }

    /// `sum(a[i] * b[i])`.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let full = n / 16 * 16;
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        for (x, y) in a[..full].chunks_exact(16).zip(b.chunks_exact(16)) {
            acc0 = _mm256_fmadd_ps(load_f32x8(&x[..8]), load_f32x8(&y[..8]), acc0);
            acc1 = _mm256_fmadd_ps(load_f32x8(&x[8..]), load_f32x8(&y[8..]), acc1);
        }
        let mut tail = 0f32;
        for i in full..n {
            tail += a[i] * b[i];
        }
        hsum(_mm256_add_ps(acc0, acc1)) + tail
    }

    /// `y[i] += a * x[i]`.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
        let n = y.len().min(x.len());
        let full = n / 8 * 8;
        let va = _mm256_set1_ps(a);
        for (y, x) in y[..full].chunks_exact_mut(8).zip(x.chunks_exact(8)) {
            let r = _mm256_fmadd_ps(va, load_f32x8(x), load_f32x8(y));
            // SAFETY: `y` is a chunk of exactly 8 writable floats.
            unsafe { _mm256_storeu_ps(y.as_mut_ptr(), r) };
        }
        for i in full..n {
            y[i] += a * x[i];
        }
    }
}

/// The AVX-512 (F, BW, VL, VNNI) kernel of Q8_0: two 32-element blocks
/// per 512-bit register, products summed by `vpdpbusd` (unsigned x signed bytes).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Act, WType, QK};

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn load512_i8(q: &[i8]) -> __m512i {
        assert!(q.len() >= 64);
        // SAFETY: `q` holds at least 64 readable bytes (checked); the load is unaligned.
        unsafe { _mm512_loadu_si512(q.as_ptr().cast()) }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn load256_i8_zext(q: &[i8]) -> __m512i {
        assert!(q.len() >= 32);
        // SAFETY: `q` holds at least 32 readable bytes (checked); the load is unaligned.
        unsafe { _mm512_zextsi256_si512(_mm256_loadu_si256(q.as_ptr().cast())) }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn load256(b: &[u8]) -> __m256i {
        assert!(b.len() >= 32);
        // SAFETY: `b` holds at least 32 readable bytes (checked); the load is unaligned.
        unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
    }

    /// `[dx0, s0, dx1, s1]` of two blocks' activation scales.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn load_ds2(ds: &[[f32; 2]]) -> __m128 {
        assert!(ds.len() >= 2);
        // SAFETY: `ds` holds at least 4 readable floats (checked); the load is unaligned.
        unsafe { _mm_loadu_ps(ds.as_ptr().cast()) }
    }

    /// `[dx, s, 0, 0]` of one block's activation scales.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn load_ds1(ds: &[f32; 2]) -> __m128 {
        // SAFETY: `ds` is 8 readable bytes; `_mm_load_sd` reads 8 bytes, unaligned.
        unsafe { _mm_castpd_ps(_mm_load_sd(ds.as_ptr().cast())) }
    }

    #[inline]
    fn u16_at(b: &[u8], at: usize) -> u64 {
        u64::from(u16::from_le_bytes([b[at], b[at + 1]]))
    }

    /// Dot products of `R` rows of `ty` (Q8_0, the one type with a kernel here) with `x`; row `k`'s result is
    /// the same whatever `R`.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX-512 F, BW, VL and VNNI, AVX2, FMA and F16C.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn dot_rows<const R: usize>(ty: WType, rows: &[&[u8]; R], x: Act<'_>) -> [f32; R] {
        match ty {
            WType::Q8_0 => dot_q8_0::<R>(rows, x),
            _ => unreachable!("{ty:?} rows have no AVX-512 kernel"),
        }
    }

    /// Spreads `[a, _, b, _]` to 8 lanes of `a` then 8 of `b`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn spread02(sc: __m128) -> __m512 {
        let idx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2);
        _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(sc))
    }

    /// Q8_0: the weights offset by 128 to unsigned bytes; the offset's `128 sum(x)` is
    /// taken off by starting the integer sums at `-128 sum(x)` (computed once per block
    /// pair for all the rows).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    fn dot_q8_0<const R: usize>(rows: &[&[u8]; R], x: Act<'_>) -> [f32; R] {
        const BYTES: usize = 34;
        let n = x.ds.len();
        assert!(x.qs.len() >= n * QK);
        for row in rows {
            assert!(row.len() >= n * BYTES);
        }
        let mut acc = [_mm512_setzero_ps(); R];
        let bias = _mm512_set1_epi8(-128);
        let neg_corr = |xq: __m512i| {
            _mm512_sub_epi32(
                _mm512_setzero_si512(),
                _mm512_dpbusd_epi32(_mm512_setzero_si512(), bias, xq),
            )
        };
        let pairs = n / 2;
        for p in 0..pairs {
            let xq = load512_i8(&x.qs[p * 2 * QK..]);
            let dsv = load_ds2(&x.ds[p * 2..]);
            let corr = neg_corr(xq);
            for k in 0..R {
                let b = &rows[k][p * 2 * BYTES..][..2 * BYTES];
                let w = _mm512_inserti64x4(
                    _mm512_castsi256_si512(load256(&b[2..])),
                    load256(&b[BYTES + 2..]),
                    1,
                );
                let w = _mm512_xor_si512(w, bias);
                // [d0, 0, d1, 0] * [dx0, s0, dx1, s1].
                let ds = u16_at(b, 0) | (u16_at(b, BYTES) << 32);
                let sc = _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi64_si128(ds as i64)), dsv);
                let pr = _mm512_dpbusd_epi32(corr, w, xq);
                acc[k] = _mm512_fmadd_ps(spread02(sc), _mm512_cvtepi32_ps(pr), acc[k]);
            }
        }
        if n % 2 == 1 {
            let xq = load256_i8_zext(&x.qs[(n - 1) * QK..]);
            let dsv = load_ds1(&x.ds[n - 1]);
            let corr = neg_corr(xq);
            for k in 0..R {
                let b = &rows[k][(n - 1) * BYTES..][..BYTES];
                // The upper half: weights 0 + 128 against activations 0.
                let w = _mm512_xor_si512(_mm512_zextsi256_si512(load256(&b[2..])), bias);
                let sc = _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi64_si128(u16_at(b, 0) as i64)), dsv);
                let pr = _mm512_dpbusd_epi32(corr, w, xq);
                acc[k] = _mm512_fmadd_ps(spread02(sc), _mm512_cvtepi32_ps(pr), acc[k]);
            }
        }
        acc.map(|a| _mm512_reduce_add_ps(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use studio_core::splitmix::SplitMix64;

    fn rand_f32(rng: &mut SplitMix64) -> f32 {
        (rng.next_f64() * 2.0 - 1.0) as f32
    }

    /// A random normal half in about [-4, 4] (bits).
    fn rand_half(rng: &mut SplitMix64) -> u16 {
        let r = rng.next_u64();
        let sign = ((r & 1) as u16) << 15;
        let exp = (8 + (r >> 1) % 9) as u16; // 2^-7 .. 2^1
        let man = ((r >> 8) & 0x3ff) as u16;
        sign | (exp << 10) | man
    }

    /// A random row of `ty` with `cols` elements.
    pub(crate) fn rand_row(rng: &mut SplitMix64, ty: WType, cols: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(ty.row_bytes(cols));
        let half = |rng: &mut SplitMix64, out: &mut Vec<u8>| {
            out.extend_from_slice(&rand_half(rng).to_le_bytes())
        };
        match ty {
            WType::F32 => {
                for _ in 0..cols {
                    out.extend_from_slice(&rand_f32(rng).to_le_bytes());
                }
            }
            WType::F16 => {
                for _ in 0..cols {
                    half(rng, &mut out);
                }
            }
            WType::Q8_0 | WType::Q4_0 | WType::Q4_1 => {
                for _ in 0..cols / QK {
                    half(rng, &mut out);
                    if ty == WType::Q4_1 {
                        half(rng, &mut out);
                    }
                    let n = if ty == WType::Q8_0 { 32 } else { 16 };
                    for _ in 0..n {
                        out.push(rng.next_u64() as u8);
                    }
                }
            }
        }
        assert_eq!(out.len(), ty.row_bytes(cols));
        out
    }

    const TYPES: [WType; 5] = [
        WType::F32,
        WType::F16,
        WType::Q4_0,
        WType::Q4_1,
        WType::Q8_0,
    ];

    fn isas() -> Vec<Isa> {
        let mut v = vec![Isa::Scalar];
        if Isa::Avx2.available() {
            v.push(Isa::Avx2);
        } else {
            eprintln!("note: no AVX2 + FMA + F16C here, only the scalar kernels are tested");
        }
        if Isa::Avx512.available() {
            v.push(Isa::Avx512);
        } else {
            eprintln!("note: no AVX-512 F / BW / VL / VNNI here, its kernels are not tested");
        }
        v
    }

    #[test]
    fn half_conversion_is_exact() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8);
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert!(f16_to_f32(0x7e00).is_nan());
    }

    #[test]
    fn dequantize_follows_the_block_layouts() {
        // Q4_1: d = 0.5, m = -1, byte 0 = 0x3a: element 0 = 0.5 * 10 - 1, element 16 = 0.5 * 3 - 1.
        let mut row = vec![0x00, 0x38, 0x00, 0xbc, 0x3a];
        row.extend_from_slice(&[0; 15]);
        let mut out = [0f32; 32];
        dequantize_row(WType::Q4_1, &row, &mut out);
        assert_eq!(out[0], 4.0);
        assert_eq!(out[16], 0.5);
        assert_eq!(out[1], -1.0);
        // Q4_0: w = d (q - 8).
        let mut row = vec![0x00, 0x38, 0x3a];
        row.extend_from_slice(&[0; 15]);
        dequantize_row(WType::Q4_0, &row, &mut out);
        assert_eq!((out[0], out[16], out[1]), (1.0, -2.5, -4.0));
        // Q8_0: w = d q.
        let mut row = vec![0x00, 0x40, 0xff, 0x05];
        row.extend_from_slice(&[0; 30]);
        dequantize_row(WType::Q8_0, &row, &mut out);
        assert_eq!((out[0], out[1], out[2]), (-2.0, 10.0, 0.0));
    }

    #[test]
    #[allow(clippy::needless_range_loop)]
    fn quantize_round_trips_within_half_a_step() {
        let mut rng = SplitMix64::new(7);
        let x: Vec<f32> = (0..96).map(|_| rand_f32(&mut rng) * 3.0).collect();
        let mut qs = vec![0i8; 96];
        let mut ds = vec![[0f32; 2]; 3];
        quantize(&x, &mut qs, &mut ds);
        for b in 0..3 {
            let d = ds[b][0];
            let mut sum = 0i32;
            for j in 0..32 {
                let i = b * 32 + j;
                assert!((f32::from(qs[i]) * d - x[i]).abs() <= d * 0.5001, "{i}");
                sum += i32::from(qs[i]);
            }
            assert!((ds[b][1] - d * sum as f32).abs() < 1e-4);
        }
        // An all-zero block.
        let mut qs = vec![1i8; 32];
        let mut ds = vec![[1f32; 2]; 1];
        quantize(&[0.0; 32], &mut qs, &mut ds);
        assert!(qs.iter().all(|&q| q == 0));
        assert_eq!(ds[0], [0.0, 0.0]);
    }

    /// Every kernel against dequantize-then-f32-dot with the dequantized activations.
    #[test]
    fn kernels_match_the_reference() {
        let mut rng = SplitMix64::new(42);
        for isa in isas() {
            for ty in TYPES {
                for blocks in [1usize, 2, 3, 7, 18, 48] {
                    let cols = blocks * QK;
                    let row = rand_row(&mut rng, ty, cols);
                    let x: Vec<f32> = (0..cols).map(|_| rand_f32(&mut rng)).collect();
                    let mut qs = vec![0i8; cols];
                    let mut ds = vec![[0f32; 2]; blocks];
                    quantize(&x, &mut qs, &mut ds);
                    let mut w = vec![0f32; cols];
                    dequantize_row(ty, &row, &mut w);
                    // The kernels see the quantized activations for the quantized types.
                    let xr: Vec<f32> = if ty.quantized() {
                        (0..cols)
                            .map(|i| f32::from(qs[i]) * ds[i / QK][0])
                            .collect()
                    } else {
                        x.clone()
                    };
                    let want: f64 = w.iter().zip(&xr).map(|(a, b)| f64::from(a * b)).sum();
                    let scale: f64 = w
                        .iter()
                        .zip(&xr)
                        .map(|(a, b)| f64::from((a * b).abs()))
                        .sum();
                    let act = Act {
                        f: &x,
                        qs: &qs,
                        ds: &ds,
                    };
                    let got = f64::from(dot(isa, ty, &row, act));
                    assert!(
                        (got - want).abs() <= 1e-5 * scale + 1e-6,
                        "{isa:?} {ty:?} {cols}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    #[allow(clippy::needless_range_loop)]
    fn f32_helpers_match_the_reference() {
        let mut rng = SplitMix64::new(3);
        for isa in isas() {
            for n in [0usize, 1, 7, 8, 15, 16, 64, 67] {
                let a: Vec<f32> = (0..n).map(|_| rand_f32(&mut rng)).collect();
                let b: Vec<f32> = (0..n).map(|_| rand_f32(&mut rng)).collect();
                let want: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
                assert!((dot_f32(isa, &a, &b) - want).abs() < 1e-4, "{isa:?} {n}");
                let mut y = b.clone();
                axpy(isa, &mut y, 0.5, &a);
                for i in 0..n {
                    assert!((y[i] - (b[i] + 0.5 * a[i])).abs() < 1e-6, "{isa:?} {n} {i}");
                }
            }
        }
    }

    /// The multi-row kernels: every row as the single-row kernel gives it (bit for bit)
    /// and as the scalar reference does (within rounding), for block counts odd and even.
    #[test]
    fn row_groups_match_single_rows() {
        let mut rng = SplitMix64::new(11);
        for isa in isas() {
            for ty in TYPES {
                for blocks in [1usize, 2, 3, 5, 18, 48] {
                    let cols = blocks * QK;
                    let x: Vec<f32> = (0..cols).map(|_| rand_f32(&mut rng) * 2.0).collect();
                    let mut qs = vec![0i8; cols];
                    let mut ds = vec![[0f32; 2]; blocks];
                    quantize(&x, &mut qs, &mut ds);
                    let act = Act {
                        f: &x,
                        qs: &qs,
                        ds: &ds,
                    };
                    // 7 rows: one group of `ROWS` and leftovers done one by one.
                    let rows: Vec<Vec<u8>> = (0..7).map(|_| rand_row(&mut rng, ty, cols)).collect();
                    let mut got = Vec::new();
                    let mut i = 0;
                    while i + ROWS <= rows.len() {
                        let group: [&[u8]; ROWS] = std::array::from_fn(|k| rows[i + k].as_slice());
                        got.extend(dot_rows(isa, ty, group, act));
                        i += ROWS;
                    }
                    got.extend(rows[i..].iter().map(|r| dot(isa, ty, r, act)));
                    for (r, row) in rows.iter().enumerate() {
                        let single = dot(isa, ty, row, act);
                        assert_eq!(
                            got[r].to_bits(),
                            single.to_bits(),
                            "{isa:?} {ty:?} {cols} row {r}"
                        );
                        let want = scalar::dot(ty, row, act);
                        let mut w = vec![0f32; cols];
                        dequantize_row(ty, row, &mut w);
                        let xr: Vec<f32> = if ty.quantized() {
                            (0..cols)
                                .map(|i| f32::from(qs[i]) * ds[i / QK][0])
                                .collect()
                        } else {
                            x.clone()
                        };
                        let scale: f64 = w
                            .iter()
                            .zip(&xr)
                            .map(|(a, b)| f64::from((a * b).abs()))
                            .sum();
                        assert!(
                            f64::from((single - want).abs()) <= 1e-5 * scale + 1e-6,
                            "{isa:?} {ty:?} {cols} row {r}: {single} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// Kernel timings (best of `KS_REPS` passes, default 200, over a `KS_ROWS` x 576
    /// matrix, default 1536 rows, in cache; 131072 rows stream it from memory), one thread:
    /// `cargo test --release -p studio-engines --features llm --lib kernel_speed --
    /// --ignored --nocapture`.
    #[test]
    #[ignore]
    fn kernel_speed() {
        let mut rng = SplitMix64::new(5);
        let (rows, cols): (usize, usize) =
            std::env::var("KS_ROWS").map_or((1536, 576), |r| (r.parse().unwrap(), 576));
        let x: Vec<f32> = (0..cols).map(|_| rand_f32(&mut rng)).collect();
        let mut qs = vec![0i8; cols];
        let mut ds = vec![[0f32; 2]; cols / QK];
        quantize(&x, &mut qs, &mut ds);
        let act = Act {
            f: &x,
            qs: &qs,
            ds: &ds,
        };
        for ty in [WType::Q4_1, WType::Q8_0] {
            let m: Vec<u8> = (0..rows)
                .flat_map(|_| rand_row(&mut rng, ty, cols))
                .collect();
            let rb = ty.row_bytes(cols);
            for isa in isas() {
                for grouped in [false, true] {
                    let mut best = f64::MAX;
                    let mut sink = 0f32;
                    for _ in 0..std::env::var("KS_REPS").map_or(200, |r| r.parse().unwrap()) {
                        let t = std::time::Instant::now();
                        if grouped {
                            for g in 0..rows / ROWS {
                                let r: [&[u8]; ROWS] =
                                    std::array::from_fn(|k| &m[(g * ROWS + k) * rb..][..rb]);
                                sink += dot_rows(isa, ty, r, act)[0];
                            }
                        } else {
                            for r in 0..rows {
                                sink += dot(isa, ty, &m[r * rb..][..rb], act);
                            }
                        }
                        best = best.min(t.elapsed().as_secs_f64());
                    }
                    eprintln!(
                        "{ty:?} {isa:?} grouped={grouped}: {:.3} ns/weight ({sink})",
                        best * 1e9 / (rows * cols) as f64
                    );
                }
            }
        }
    }
}
