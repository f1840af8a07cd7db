//! The AVX2 + FMA + F16C kernels.

use std::arch::x86_64::*;

use super::{Act, WType, QK, QK_K};

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
        WType::Q4_0 => dot_small::<18, 2, 0, false, 8>(row, x),
        WType::Q4_1 => dot_small::<20, 4, 0, true, 0>(row, x),
        WType::Q5_0 => dot_small::<22, 6, 2, false, 16>(row, x),
        WType::Q5_1 => dot_small::<24, 8, 4, true, 0>(row, x),
        WType::Q4K => dot_q45k::<144, false>(row, x),
        WType::Q5K => dot_q45k::<176, true>(row, x),
        WType::Q6K => dot_q6k(row, x),
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

/// Q4_0 / Q4_1 / Q5_0 / Q5_1: `BYTES` per block, nibbles at `NIB`, the fifth bits at `QH`
/// (0: none), a stored minimum (`MIN`) or the offset `OFF` (`m = -OFF d`).
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_small<
    const BYTES: usize,
    const NIB: usize,
    const QH: usize,
    const MIN: bool,
    const OFF: i32,
>(
    row: &[u8],
    x: Act<'_>,
) -> f32 {
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    // Lane 0: sum of d dx isum (unused); lane 1: sum of m s (MIN) or d s (offset types).
    let mut macc = _mm_setzero_ps();
    let pairs = row.len() / (2 * BYTES);
    for ((b, q), ds) in row
        .chunks_exact(2 * BYTES)
        .zip(x.qs.chunks_exact(2 * QK))
        .zip(x.ds.chunks_exact(2))
    {
        (acc0, macc) = small_block::<NIB, QH, MIN>(&b[..BYTES], &q[..QK], &ds[0], acc0, macc);
        (acc1, macc) = small_block::<NIB, QH, MIN>(&b[BYTES..], &q[QK..], &ds[1], acc1, macc);
    }
    for ((b, q), ds) in row[pairs * 2 * BYTES..]
        .chunks_exact(BYTES)
        .zip(x.qs[pairs * 2 * QK..].chunks_exact(QK))
        .zip(&x.ds[pairs * 2..])
    {
        (acc0, macc) = small_block::<NIB, QH, MIN>(b, q, ds, acc0, macc);
    }
    let m = _mm_cvtss_f32(_mm_movehdup_ps(macc));
    let m = if MIN { m } else { -(OFF as f32) * m };
    hsum(_mm256_add_ps(acc0, acc1)) + m
}

/// 32 bytes, byte `i` 0x10 where bit `i` of `bits` is set, else 0.
#[inline]
#[target_feature(enable = "avx2")]
fn fifth_bits(bits: u32) -> __m256i {
    let x = _mm256_set1_epi32(bits as i32);
    // Byte i takes byte i / 8 of `bits`, then keeps bit i % 8.
    let spread = _mm256_shuffle_epi8(
        x,
        _mm256_setr_epi64x(
            0,
            0x0101_0101_0101_0101,
            0x0202_0202_0202_0202,
            0x0303_0303_0303_0303,
        ),
    );
    let select = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, select), select);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// A Q4_0 / Q4_1 / Q5_0 / Q5_1 block's 32 unsigned values: nibbles at `nib`, the fifth
/// bits at `qh` (0: none).
#[inline]
#[target_feature(enable = "avx2")]
fn small_q(b: &[u8], nib: usize, qh: usize) -> __m256i {
    // The 16 bytes in both halves; the upper half shifted by 4: low nibbles (elements
    // 0..16) below, high nibbles (16..32) above.
    let raw = load128_twice(&b[nib..nib + 16]);
    let shifted = _mm256_srlv_epi32(raw, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4));
    let w = _mm256_and_si256(shifted, _mm256_set1_epi8(0x0f));
    if qh > 0 {
        let bits = u32::from_le_bytes([b[qh], b[qh + 1], b[qh + 2], b[qh + 3]]);
        return _mm256_or_si256(w, fifth_bits(bits));
    }
    w
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn small_block<const NIB: usize, const QH: usize, const MIN: bool>(
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
    // [d, m] * [dx, s] = [d dx, m s] (offset types: [d dx, d s]).
    let scales = _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(dm as i32)), load_pair(ds));
    let w = small_q(b, NIB, QH);
    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(w, load256_i8(q)), _mm256_set1_epi16(1));
    let acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(scales), _mm256_cvtepi32_ps(p), acc);
    (acc, _mm_add_ps(macc, scales))
}

#[inline]
#[target_feature(enable = "f16c")]
fn half(b: &[u8], at: usize) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(
        u16::from_le_bytes([b[at], b[at + 1]]),
    ))))
}

/// Q4_K (`BYTES` 144) and Q5_K (176, `HIGH`): each sub-block of 32 is a block with scale
/// `d sc` and minimum `-dmin m` against its activation block.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q45k<const BYTES: usize, const HIGH: bool>(row: &[u8], x: Act<'_>) -> f32 {
    const SUB: usize = QK_K / QK;
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut mins = 0f32;
    let low4 = _mm256_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    for ((b, q), ds) in row
        .chunks_exact(BYTES)
        .zip(x.qs.chunks_exact(QK_K))
        .zip(x.ds.chunks_exact(SUB))
    {
        let (d, dmin) = (half(b, 0), half(b, 2));
        let scales = &b[4..16];
        let (qh, qs) = if HIGH {
            (load256(&b[16..48]), &b[48..176])
        } else {
            (_mm256_setzero_si256(), &b[16..144])
        };
        let mut msum = 0f32;
        for c in 0..SUB / 2 {
            let (s0, m0) = super::k_scale_min(scales, 2 * c);
            let (s1, m1) = super::k_scale_min(scales, 2 * c + 1);
            msum += f32::from(m0) * ds[2 * c][1] + f32::from(m1) * ds[2 * c + 1][1];
            let raw = load256(&qs[c * 32..]);
            let mut lo = _mm256_and_si256(raw, low4);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4);
            if HIGH {
                // Bits 2c and 2c + 1 of each qh byte, moved to bit 4 (the 16-bit shift
                // right brings the upper byte's low bits into the lower byte's high bits,
                // which the mask drops).
                let one = _mm256_set1_epi8(1);
                let bit = |b: i32| {
                    let v = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(b));
                    _mm256_slli_epi16(_mm256_and_si256(v, one), 4)
                };
                lo = _mm256_or_si256(lo, bit(2 * c as i32));
                hi = _mm256_or_si256(hi, bit(2 * c as i32 + 1));
            }
            let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, load256_i8(&q[c * 64..])), ones);
            let p1 = _mm256_madd_epi16(
                _mm256_maddubs_epi16(hi, load256_i8(&q[c * 64 + 32..])),
                ones,
            );
            let f0 = _mm256_set1_ps(d * f32::from(s0) * ds[2 * c][0]);
            let f1 = _mm256_set1_ps(d * f32::from(s1) * ds[2 * c + 1][0]);
            acc0 = _mm256_fmadd_ps(f0, _mm256_cvtepi32_ps(p0), acc0);
            acc1 = _mm256_fmadd_ps(f1, _mm256_cvtepi32_ps(p1), acc1);
        }
        mins += dmin * msum;
    }
    hsum(_mm256_add_ps(acc0, acc1)) - mins
}

/// Q6_K: 6-bit values offset by 32 (signed after the subtraction), one `i8` scale per 16.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q6k(row: &[u8], x: Act<'_>) -> f32 {
    const SUB: usize = QK_K / QK;
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let low4 = _mm256_set1_epi8(0x0f);
    let three = _mm256_set1_epi8(3);
    let off = _mm256_set1_epi8(32);
    for ((b, q), ds) in row
        .chunks_exact(210)
        .zip(x.qs.chunks_exact(QK_K))
        .zip(x.ds.chunks_exact(SUB))
    {
        let d = half(b, 208);
        let sc = &b[192..208];
        for h in 0..2 {
            let ql0 = load256(&b[h * 64..]);
            let ql1 = load256(&b[h * 64 + 32..]);
            let qh = load256(&b[128 + h * 32..]);
            let top = |shift: i32| {
                let v = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(shift));
                _mm256_slli_epi16(_mm256_and_si256(v, three), 4)
            };
            let quarters = [
                _mm256_or_si256(_mm256_and_si256(ql0, low4), top(0)),
                _mm256_or_si256(_mm256_and_si256(ql1, low4), top(2)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), low4), top(4)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), low4), top(6)),
            ];
            for (k, w) in quarters.into_iter().enumerate() {
                let s = h * 4 + k;
                let w = _mm256_sub_epi8(w, off);
                let xq = load256_i8(&q[s * 32..]);
                let p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(xq, w));
                let scale = _mm256_setr_m128i(
                    _mm_set1_epi16(i16::from(sc[2 * s] as i8)),
                    _mm_set1_epi16(i16::from(sc[2 * s + 1] as i8)),
                );
                let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p, scale));
                let f = _mm256_set1_ps(d * ds[s][0]);
                if k % 2 == 0 {
                    acc0 = _mm256_fmadd_ps(f, p, acc0);
                } else {
                    acc1 = _mm256_fmadd_ps(f, p, acc1);
                }
            }
        }
    }
    hsum(_mm256_add_ps(acc0, acc1))
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
#[inline]
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
#[inline]
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

/// `e^x` of 8 lanes (inputs clamped to [-87, 88]): `2^n e^r` with `n = round(x / ln 2)`,
/// `r = x - n ln 2` (ln 2 in two parts) and a degree-6 Taylor polynomial for `e^r`
/// (|r| <= ln 2 / 2: relative error about 1e-7).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn exp8(x: __m256) -> __m256 {
    let x = _mm256_min_ps(
        _mm256_max_ps(x, _mm256_set1_ps(-87.0)),
        _mm256_set1_ps(88.0),
    );
    let n = _mm256_round_ps(
        _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
    );
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_145_75), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428_606_8e-6), r);
    let mut p = _mm256_set1_ps(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let e = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    _mm256_mul_ps(p, _mm256_castsi256_ps(e))
}

/// `g[i] = act(g[i]) * u[i]`, `act` GELU (tanh form, as `x / (1 + e^(-2y))`) or SiLU.
///
/// # Safety
///
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn gated(gelu: bool, g: &mut [f32], u: &[f32]) {
    let n = g.len().min(u.len());
    let full = n / 8 * 8;
    let one = _mm256_set1_ps(1.0);
    for (g, u) in g[..full].chunks_exact_mut(8).zip(u.chunks_exact(8)) {
        let x = load_f32x8(g);
        // The exponent: -2y for GELU (y = sqrt(2 / pi) (x + 0.044715 x^3)), -x for SiLU.
        let e = if gelu {
            let x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
            let y = _mm256_fmadd_ps(_mm256_set1_ps(0.044_715), x3, x);
            _mm256_mul_ps(y, _mm256_set1_ps(-2.0 * 0.797_884_6))
        } else {
            _mm256_sub_ps(_mm256_setzero_ps(), x)
        };
        let a = _mm256_div_ps(x, _mm256_add_ps(one, exp8(e)));
        // SAFETY: `g` is a chunk of exactly 8 writable floats.
        unsafe { _mm256_storeu_ps(g.as_mut_ptr(), _mm256_mul_ps(a, load_f32x8(u))) };
    }
    super::scalar::gated(gelu, &mut g[full..n], &u[full..n]);
}

/// `s[i] = e^(s[i] - max)`, returning their sum.
///
/// # Safety
///
/// The CPU must support AVX2 and FMA.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn exp_sub(s: &mut [f32], max: f32) -> f32 {
    let full = s.len() / 8 * 8;
    let m = _mm256_set1_ps(max);
    let mut acc = _mm256_setzero_ps();
    for c in s[..full].chunks_exact_mut(8) {
        let e = exp8(_mm256_sub_ps(load_f32x8(c), m));
        acc = _mm256_add_ps(acc, e);
        // SAFETY: `c` is a chunk of exactly 8 writable floats.
        unsafe { _mm256_storeu_ps(c.as_mut_ptr(), e) };
    }
    hsum(acc) + super::scalar::exp_sub(&mut s[full..], max)
}

/// [`super::small_block`] (`(d, m, q)`, `w = d q + m`) with the nibbles and fifth bits
/// spread by vector instructions.
///
/// # Safety
///
/// The CPU must support AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn small_block_q(ty: WType, b: &[u8]) -> (f32, f32, [u8; QK]) {
    let (nib, qh, d) = match ty {
        WType::Q4_0 => (2, 0, half(b, 0)),
        WType::Q4_1 => (4, 0, half(b, 0)),
        WType::Q5_0 => (6, 2, half(b, 0)),
        WType::Q5_1 => (8, 4, half(b, 0)),
        _ => unreachable!("{ty:?} is not a 32-element block type"),
    };
    let m = match ty {
        WType::Q4_0 => -8.0 * d,
        WType::Q5_0 => -16.0 * d,
        _ => half(b, 2),
    };
    let w = small_q(b, nib, qh);
    let mut q = [0u8; QK];
    // SAFETY: `q` is 32 writable bytes; the store is unaligned.
    unsafe { _mm256_storeu_si256(q.as_mut_ptr().cast(), w) };
    (d, m, q)
}

/// [`super::attend`] with the AVX2 kernels, bit for bit what [`super::attend_with`] gives
/// with [`dot_f32`], [`exp_sub`] and [`axpy`] (the tests compare the two).
///
/// For a head size that is a multiple of 16 (every model's), the scores are computed four
/// positions at a time, the four sums reduced together (one transpose instead of four
/// horizontal sums, in the same order as [`hsum`]), and the output is accumulated in
/// registers, up to 64 floats at a time, instead of read and written back for every
/// position.
///
/// # Safety
///
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn attend(
    q: &[f32],
    (k, v): (&[f32], &[f32]),
    (stride, off): (usize, usize),
    (first, n): (usize, usize),
    scale: f32,
    s: &mut [f32],
    out: &mut [f32],
) {
    let hd = q.len();
    if !hd.is_multiple_of(16) || out.len() != hd {
        // SAFETY (the three closures): AVX2 and FMA are enabled here, as the caller promised.
        return super::attend_with(
            |a, b| unsafe { dot_f32(a, b) },
            |s, m| unsafe { exp_sub(s, m) },
            |y, a, x| unsafe { axpy(y, a, x) },
            q,
            (k, v),
            (stride, off),
            (first, n),
            scale,
            s,
            out,
        );
    }
    let s = &mut s[first..n];
    let row = |p: usize| &k[p * stride + off..][..hd];
    // The largest score, per lane of the groups of four (no chain of scalar maxima through
    // every position), then across the lanes.
    let mut vmax = _mm_set1_ps(f32::NEG_INFINITY);
    let mut groups = s.chunks_exact_mut(4);
    let mut p = first;
    for group in &mut groups {
        // (Not `array::from_fn`: its closure would not be compiled with AVX2 and not inlined,
        // which measured 1.7x slower.)
        let rows = [row(p), row(p + 1), row(p + 2), row(p + 3)];
        let sums = _mm_mul_ps(dot4_f32(q, rows), _mm_set1_ps(scale));
        vmax = _mm_max_ps(vmax, sums);
        // SAFETY: `group` is exactly 4 writable floats; the store is unaligned.
        unsafe { _mm_storeu_ps(group.as_mut_ptr(), sums) };
        p += 4;
    }
    let mut lanes = [0f32; 4];
    // SAFETY: `lanes` is 4 writable floats; the store is unaligned.
    unsafe { _mm_storeu_ps(lanes.as_mut_ptr(), vmax) };
    let mut max = lanes.into_iter().fold(f32::NEG_INFINITY, f32::max);
    for x in groups.into_remainder() {
        *x = dot_f32(q, row(p)) * scale;
        max = max.max(*x);
        p += 1;
    }
    let inv = 1.0 / exp_sub(s, max);
    let mut c = 0;
    while c + 64 <= hd {
        weighted_sum::<8>(v, (stride, off + c), first, s, inv, &mut out[c..]);
        c += 64;
    }
    while c < hd {
        weighted_sum::<2>(v, (stride, off + c), first, s, inv, &mut out[c..]);
        c += 16;
    }
}

/// The four dot products of `q` with `rows`, each summed as [`dot_f32`] sums it.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn dot4_f32(q: &[f32], rows: [&[f32]; 4]) -> __m128 {
    let hd = q.len();
    assert!(hd.is_multiple_of(16) && rows.iter().all(|r| r.len() >= hd));
    let (r0, r1, r2, r3) = (
        rows[0].as_ptr(),
        rows[1].as_ptr(),
        rows[2].as_ptr(),
        rows[3].as_ptr(),
    );
    let qp = q.as_ptr();
    let z = _mm256_setzero_ps();
    let (mut a00, mut a01, mut a10, mut a11) = (z, z, z, z);
    let (mut a20, mut a21, mut a30, mut a31) = (z, z, z, z);
    let mut c = 0;
    while c < hd {
        // SAFETY: `c + 16 <= hd`, and `q` and every row hold `hd` floats (asserted above);
        // the loads are unaligned.
        unsafe {
            let q0 = _mm256_loadu_ps(qp.add(c));
            let q1 = _mm256_loadu_ps(qp.add(c + 8));
            a00 = _mm256_fmadd_ps(q0, _mm256_loadu_ps(r0.add(c)), a00);
            a01 = _mm256_fmadd_ps(q1, _mm256_loadu_ps(r0.add(c + 8)), a01);
            a10 = _mm256_fmadd_ps(q0, _mm256_loadu_ps(r1.add(c)), a10);
            a11 = _mm256_fmadd_ps(q1, _mm256_loadu_ps(r1.add(c + 8)), a11);
            a20 = _mm256_fmadd_ps(q0, _mm256_loadu_ps(r2.add(c)), a20);
            a21 = _mm256_fmadd_ps(q1, _mm256_loadu_ps(r2.add(c + 8)), a21);
            a30 = _mm256_fmadd_ps(q0, _mm256_loadu_ps(r3.add(c)), a30);
            a31 = _mm256_fmadd_ps(q1, _mm256_loadu_ps(r3.add(c + 8)), a31);
        }
        c += 16;
    }
    // Per row, [`hsum`]'s first step: the two 128-bit halves added.
    let half = |v: __m256| _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let t0 = half(_mm256_add_ps(a00, a01));
    let t1 = half(_mm256_add_ps(a10, a11));
    let t2 = half(_mm256_add_ps(a20, a21));
    let t3 = half(_mm256_add_ps(a30, a31));
    // Transposed, lane i of `e<j>` is element j of row i; then `(e0 + e2) + (e1 + e3)`,
    // the order of [`hsum`]'s last two steps.
    let lo01 = _mm_unpacklo_ps(t0, t1);
    let lo23 = _mm_unpacklo_ps(t2, t3);
    let hi01 = _mm_unpackhi_ps(t0, t1);
    let hi23 = _mm_unpackhi_ps(t2, t3);
    let e0 = _mm_movelh_ps(lo01, lo23);
    let e1 = _mm_movehl_ps(lo23, lo01);
    let e2 = _mm_movelh_ps(hi01, hi23);
    let e3 = _mm_movehl_ps(hi23, hi01);
    _mm_add_ps(_mm_add_ps(e0, e2), _mm_add_ps(e1, e3))
}

/// `out[..8 R] = sum over p of w[p] inv v[first + p][..8 R]` (the rows of `v` at `stride`,
/// from `off`), accumulated in `R` registers in the order [`axpy`] adds.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn weighted_sum<const R: usize>(
    v: &[f32],
    (stride, off): (usize, usize),
    first: usize,
    w: &[f32],
    inv: f32,
    out: &mut [f32],
) {
    let out = &mut out[..8 * R];
    if w.is_empty() {
        out.fill(0.0);
        return;
    }
    // The last row read ends inside `v`.
    let last = (first + w.len() - 1) * stride + off;
    assert!(last + 8 * R <= v.len());
    let mut acc = [_mm256_setzero_ps(); R];
    let mut at = v[first * stride + off..].as_ptr();
    for &w in w {
        let a = _mm256_set1_ps(w * inv);
        for (j, acc) in acc.iter_mut().enumerate() {
            // SAFETY: `at` is a row start at most `last` (asserted above), followed by at
            // least `8 R` floats of `v`; the load is unaligned.
            *acc = _mm256_fmadd_ps(a, unsafe { _mm256_loadu_ps(at.add(8 * j)) }, *acc);
        }
        at = at.wrapping_add(stride);
    }
    for (o, acc) in out.chunks_exact_mut(8).zip(acc) {
        // SAFETY: `o` is exactly 8 writable floats; the store is unaligned.
        unsafe { _mm256_storeu_ps(o.as_mut_ptr(), acc) };
    }
}

/// [`super::quantize`], bit for bit: per block of 32 the largest magnitude gives
/// `d = amax / 127`, each element `x / d` rounded half away from zero.
///
/// # Safety
///
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn quantize(x: &[f32], qs: &mut [i8], ds: &mut [[f32; 2]]) {
    let sign = _mm256_set1_ps(-0.0);
    let half = _mm256_set1_ps(0.5);
    for ((x, q), ds) in x
        .chunks_exact(QK)
        .zip(qs.chunks_exact_mut(QK))
        .zip(ds.iter_mut())
    {
        let v: [__m256; 4] = std::array::from_fn(|i| load_f32x8(&x[i * 8..]));
        let abs = v.map(|v| _mm256_andnot_ps(sign, v));
        let m = _mm256_max_ps(_mm256_max_ps(abs[0], abs[1]), _mm256_max_ps(abs[2], abs[3]));
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
        // v * id, plus 0.5 with v's sign, truncated: the scalar form's rounding.
        let r = v.map(|v| {
            let v = _mm256_mul_ps(v, id);
            _mm256_cvttps_epi32(_mm256_add_ps(v, _mm256_or_ps(half, _mm256_and_ps(v, sign))))
        });
        let sum = _mm256_add_epi32(_mm256_add_epi32(r[0], r[1]), _mm256_add_epi32(r[2], r[3]));
        let sum = _mm_add_epi32(
            _mm256_castsi256_si128(sum),
            _mm256_extracti128_si256(sum, 1),
        );
        let sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0b0100_1110));
        let sum = _mm_cvtsi128_si32(_mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0b1011_0001)));
        // i32 -> i16 -> i8 packs work per 128-bit lane: put the 32 bytes back in order.
        let w = _mm256_packs_epi32(r[0], r[1]);
        let z = _mm256_packs_epi32(r[2], r[3]);
        let b = _mm256_packs_epi16(w, z);
        let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        // SAFETY: `q` is a chunk of exactly 32 writable bytes; the store is unaligned.
        unsafe { _mm256_storeu_si256(q.as_mut_ptr().cast(), b) };
        *ds = [d, d * sum as f32];
    }
}
