//! The AVX-512 (F, BW, VL, VNNI) kernels: every quantized type's one-token dot product,
//! 64 weights per 512-bit register (two blocks of 32, or two sub-blocks of a K-quant
//! super-block) unpacked to bytes and summed against the activations by `vpdpbusd`
//! (unsigned x signed bytes); and the panel product's register tiles ([`panel_gemm`]).

use std::arch::x86_64::*;

use super::panel::{Panel, PanelActs, PANEL_ROWS};
use super::{Act, WType, QK, QK_K};

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

/// Dot products of `R` rows of `ty` (a quantized type) with `x`; row `k`'s result is the
/// same whatever `R`.
///
/// # Safety
///
/// The CPU must support AVX-512 F, BW, VL and VNNI, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot_rows<const R: usize>(ty: WType, rows: &[&[u8]; R], x: Act<'_>) -> [f32; R] {
    match ty {
        WType::Q8_0 => dot_q8_0::<R>(rows, x),
        WType::Q4_0 => dot_small::<R, 18, 2, 0, false, 8>(rows, x),
        WType::Q4_1 => dot_small::<R, 20, 4, 0, true, 0>(rows, x),
        WType::Q5_0 => dot_small::<R, 22, 6, 2, false, 16>(rows, x),
        WType::Q5_1 => dot_small::<R, 24, 8, 4, true, 0>(rows, x),
        WType::Q4K => dot_q45k::<R, 144, false>(rows, x),
        WType::Q5K => dot_q45k::<R, 176, true>(rows, x),
        WType::Q6K => dot_q6k::<R>(rows, x),
        WType::F32 | WType::F16 => unreachable!("{ty:?} rows have no AVX-512 kernel"),
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

/// The halves (f16 bits) that open blocks `b0` and `b1`, four to a word: `[d0, m0, d1, m1]`
/// when `pair` (each block starts with a scale and a minimum), else `[d0, d0, d1, d1]`.
#[inline]
fn halves2(b0: &[u8], b1: &[u8], pair: bool) -> u64 {
    let one = |b: &[u8]| {
        let d = u16_at(b, 0);
        if pair {
            d | (u16_at(b, 2) << 16)
        } else {
            d | (d << 16)
        }
    };
    one(b0) | (one(b1) << 32)
}

/// The 32 unsigned values of each of two Q4_0 / Q4_1 / Q5_0 / Q5_1 blocks (`b1` may be
/// `None`: zeros), in element order: nibbles at `NIB`, fifth bits at `QH` (0: none).
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn small_pair<const NIB: usize, const QH: usize>(b0: &[u8], b1: Option<&[u8]>) -> __m512i {
    let nib = |b: &[u8]| {
        assert!(b.len() >= NIB + 16);
        // SAFETY: 16 readable bytes at `NIB` (checked); the load is unaligned.
        unsafe { _mm_loadu_si128(b[NIB..].as_ptr().cast()) }
    };
    let n0 = nib(b0);
    let n1 = b1.map_or(_mm_setzero_si128(), nib);
    // Each block's 16 bytes twice: the first copy's low nibbles are elements 0..16, the
    // second's high nibbles 16..32.
    let v = _mm512_inserti32x4(_mm512_castsi128_si512(n0), n0, 1);
    let v = _mm512_inserti32x4(_mm512_inserti32x4(v, n1, 2), n1, 3);
    let v = _mm512_srlv_epi64(v, _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4));
    let v = _mm512_and_si512(v, _mm512_set1_epi8(0x0f));
    if QH == 0 {
        return v;
    }
    let bits = |b: &[u8]| u64::from(u32::from_le_bytes([b[QH], b[QH + 1], b[QH + 2], b[QH + 3]]));
    let mask = bits(b0) | b1.map_or(0, |b| bits(b) << 32);
    _mm512_or_si512(v, _mm512_maskz_mov_epi8(mask, _mm512_set1_epi8(0x10)))
}

/// Q4_0 / Q4_1 / Q5_0 / Q5_1 (`BYTES` per block, nibbles at `NIB`, fifth bits at `QH`, a
/// stored minimum (`MIN`) or the offset `OFF`): two blocks per register, the unsigned
/// values against the signed activations by `vpdpbusd`; the minimum's (offset's) share
/// `sum m s` (`-OFF sum d s`) is gathered beside the products and added at the end.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dot_small<
    const R: usize,
    const BYTES: usize,
    const NIB: usize,
    const QH: usize,
    const MIN: bool,
    const OFF: i32,
>(
    rows: &[&[u8]; R],
    x: Act<'_>,
) -> [f32; R] {
    let n = x.ds.len();
    assert!(x.qs.len() >= n * QK);
    for row in rows {
        assert!(row.len() >= n * BYTES);
    }
    let mut acc = [_mm512_setzero_ps(); R];
    // Lanes 1 and 3: the minimums' (offsets') sums.
    let mut macc = [_mm_setzero_ps(); R];
    for p in 0..n / 2 {
        let xq = load512_i8(&x.qs[p * 2 * QK..]);
        let dsv = load_ds2(&x.ds[p * 2..]);
        for k in 0..R {
            let b = &rows[k][p * 2 * BYTES..][..2 * BYTES];
            let (b0, b1) = b.split_at(BYTES);
            let dm = halves2(b0, b1, MIN);
            // [d0, m0, d1, m1] * [dx0, s0, dx1, s1].
            let sc = _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi64_si128(dm as i64)), dsv);
            let w = small_pair::<NIB, QH>(b0, Some(b1));
            let pr = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, xq);
            acc[k] = _mm512_fmadd_ps(spread02(sc), _mm512_cvtepi32_ps(pr), acc[k]);
            macc[k] = _mm_add_ps(macc[k], sc);
        }
    }
    if n % 2 == 1 {
        let xq = load256_i8_zext(&x.qs[(n - 1) * QK..]);
        let dsv = load_ds1(&x.ds[n - 1]);
        for k in 0..R {
            let b = &rows[k][(n - 1) * BYTES..][..BYTES];
            let dm = halves2(b, b, MIN) & 0xffff_ffff;
            let sc = _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi64_si128(dm as i64)), dsv);
            let w = small_pair::<NIB, QH>(b, None);
            let pr = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, xq);
            acc[k] = _mm512_fmadd_ps(spread02(sc), _mm512_cvtepi32_ps(pr), acc[k]);
            macc[k] = _mm_add_ps(macc[k], sc);
        }
    }
    std::array::from_fn(|k| {
        let m = _mm_add_ps(macc[k], _mm_movehl_ps(macc[k], macc[k]));
        let m = _mm_cvtss_f32(_mm_movehdup_ps(m));
        let m = if MIN { m } else { -(OFF as f32) * m };
        _mm512_reduce_add_ps(acc[k]) + m
    })
}

/// `[d, dmin, d, dmin, ...]` times each sub-block's `[scale dx, minimum s]` of a Q4_K /
/// Q5_K super-block: `b`'s scale bytes unpacked to 16 floats (the layout
/// [`super::k_scale_min`] reads, four sub-blocks per 32-bit word) against the activations'
/// 16 `[dx, s]` floats.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
fn k_factors(b: &[u8], ds: &[[f32; 2]]) -> __m512 {
    assert!(b.len() >= 16 && ds.len() >= 8);
    let word = |i: usize| u32::from_le_bytes([b[4 + i], b[5 + i], b[6 + i], b[7 + i]]);
    let (u0, u1, u2) = (word(0), word(4), word(8));
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const TOP2: u32 = 0x0303_0303;
    // Scales of sub-blocks 0-3, then 4-7; minimums likewise.
    let sc = [u0 & LOW6, (u2 & LOW4) | (((u0 >> 6) & TOP2) << 4)];
    let mn = [u1 & LOW6, ((u2 >> 4) & LOW4) | (((u1 >> 6) & TOP2) << 4)];
    let sc = _mm_cvtsi64_si128((u64::from(sc[0]) | (u64::from(sc[1]) << 32)) as i64);
    let mn = _mm_cvtsi64_si128((u64::from(mn[0]) | (u64::from(mn[1]) << 32)) as i64);
    // [sc0, m0, sc1, m1, ...] as floats.
    let sm = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(sc, mn)));
    // SAFETY: `ds` holds 16 readable floats (checked); the load is unaligned.
    let dsv = unsafe { _mm512_loadu_ps(ds.as_ptr().cast()) };
    let dd = _mm_cvtph_ps(_mm_cvtsi32_si128(
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i32,
    ));
    let dd = _mm512_permutexvar_ps(
        _mm512_setr_epi32(0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1),
        _mm512_castps128_ps512(dd),
    );
    _mm512_mul_ps(_mm512_mul_ps(sm, dsv), dd)
}

/// Q4_K (`BYTES` 144) and Q5_K (176, `HIGH`): per 64 elements, two sub-blocks' nibbles
/// (and fifth bits) against 64 activations by `vpdpbusd`, each half scaled by its
/// sub-block's `d sc dx`; the minimums' `dmin m s` gathered and taken off at the end.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dot_q45k<const R: usize, const BYTES: usize, const HIGH: bool>(
    rows: &[&[u8]; R],
    x: Act<'_>,
) -> [f32; R] {
    const SUB: usize = QK_K / QK;
    let n = x.ds.len() / SUB;
    assert!(x.qs.len() >= n * QK_K && x.ds.len() >= n * SUB);
    for row in rows {
        assert!(row.len() >= n * BYTES);
    }
    let mut acc = [_mm512_setzero_ps(); R];
    let mut macc = [_mm512_setzero_ps(); R];
    let low4 = _mm512_set1_epi8(0x0f);
    let halves = _mm512_setr_epi64(0, 0, 0, 0, 4, 4, 4, 4);
    for s in 0..n {
        let ds = &x.ds[s * SUB..][..SUB];
        let xs: [__m512i; SUB / 2] =
            std::array::from_fn(|c| load512_i8(&x.qs[s * QK_K + c * 64..]));
        for k in 0..R {
            let b = &rows[k][s * BYTES..][..BYTES];
            let f = k_factors(b, ds);
            let (qh, qs) = if HIGH {
                let h = load256(&b[16..48]);
                (
                    _mm512_inserti64x4(_mm512_castsi256_si512(h), h, 1),
                    &b[48..176],
                )
            } else {
                (_mm512_setzero_si512(), &b[16..144])
            };
            for (c, &xq) in xs.iter().enumerate() {
                let raw = load256(&qs[c * 32..]);
                let v = _mm512_inserti64x4(_mm512_castsi256_si512(raw), raw, 1);
                let mut w = _mm512_and_si512(_mm512_srlv_epi64(v, halves), low4);
                if HIGH {
                    // Bit 2c of each qh byte for the first sub-block, 2c + 1 for the second.
                    let sel = _mm512_inserti64x4(
                        _mm512_set1_epi8(1 << (2 * c)),
                        _mm256_set1_epi8(1 << (2 * c + 1)),
                        1,
                    );
                    let hi = _mm512_test_epi8_mask(qh, sel);
                    w = _mm512_or_si512(w, _mm512_maskz_mov_epi8(hi, _mm512_set1_epi8(0x10)));
                }
                let pr = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, xq);
                // Lanes 4c (sub-block 2c's scale) and 4c + 2 (2c + 1's), 8 each.
                let idx = _mm512_add_epi32(
                    _mm512_set1_epi32(4 * c as i32),
                    _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2),
                );
                let fc = _mm512_permutexvar_ps(idx, f);
                acc[k] = _mm512_fmadd_ps(fc, _mm512_cvtepi32_ps(pr), acc[k]);
            }
            macc[k] = _mm512_add_ps(macc[k], f);
        }
    }
    std::array::from_fn(|k| {
        _mm512_reduce_add_ps(acc[k]) - _mm512_mask_reduce_add_ps(0xaaaa, macc[k])
    })
}

/// Q6_K: per 64 elements, two sub-blocks' 6-bit values (unsigned, the offset 32 taken off
/// by starting the integer sums at `-32 sum(x)` per four) against 64 activations by
/// `vpdpbusd`; each group of 16 scaled by its `d sc dx`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dot_q6k<const R: usize>(rows: &[&[u8]; R], x: Act<'_>) -> [f32; R] {
    const SUB: usize = QK_K / QK;
    const BYTES: usize = 210;
    let n = x.ds.len() / SUB;
    assert!(x.qs.len() >= n * QK_K && x.ds.len() >= n * SUB);
    for row in rows {
        assert!(row.len() >= n * BYTES);
    }
    let mut acc = [_mm512_setzero_ps(); R];
    let low4 = _mm512_set1_epi8(0x0f);
    let three = _mm512_set1_epi8(3);
    let off = _mm512_set1_epi8(32);
    // Each scale (one per 16) with its sub-block's dx: [dx0, dx0, dx1, dx1, ...].
    let pairs = _mm512_setr_epi32(0, 0, 2, 2, 4, 4, 6, 6, 8, 8, 10, 10, 12, 12, 14, 14);
    for s in 0..n {
        // SAFETY: `x.ds` holds 8 pairs from `s * SUB` (checked); the load is unaligned.
        let dsv = unsafe { _mm512_loadu_ps(x.ds[s * SUB..].as_ptr().cast()) };
        let dx = _mm512_permutexvar_ps(pairs, dsv);
        // x in four registers of 64 (two sub-blocks each), with -32 sum(x) per four.
        let xs: [(__m512i, __m512i); 4] = std::array::from_fn(|r| {
            let xq = load512_i8(&x.qs[s * QK_K + r * 64..]);
            let corr = _mm512_dpbusd_epi32(_mm512_setzero_si512(), off, xq);
            (xq, _mm512_sub_epi32(_mm512_setzero_si512(), corr))
        });
        for k in 0..R {
            let b = &rows[k][s * BYTES..][..BYTES];
            // SAFETY: 16 readable bytes at 192 (`b` is `BYTES` long); unaligned.
            let sc = unsafe { _mm_loadu_si128(b[192..].as_ptr().cast()) };
            let d = _mm512_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
                u16_at(b, 208) as i32,
            ))));
            let f = _mm512_mul_ps(
                _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(sc)), dx),
                d,
            );
            for h in 0..2 {
                let ql0 = load256(&b[h * 64..]);
                let ql1 = load256(&b[h * 64 + 32..]);
                let qh = load256(&b[128 + h * 32..]);
                let ql = _mm512_inserti64x4(_mm512_castsi256_si512(ql0), ql1, 1);
                let qh = _mm512_inserti64x4(_mm512_castsi256_si512(qh), qh, 1);
                // Quarters 0 and 1 (low nibbles, qh bits 0-1 and 2-3), then 2 and 3 (high
                // nibbles, qh bits 4-5 and 6-7).
                for (j, (lo_shift, hi_shift)) in [(0, [0, 2]), (4, [4, 6])].into_iter().enumerate()
                {
                    let lo =
                        _mm512_and_si512(_mm512_srl_epi64(ql, _mm_cvtsi32_si128(lo_shift)), low4);
                    let shifts = _mm512_setr_epi64(
                        hi_shift[0],
                        hi_shift[0],
                        hi_shift[0],
                        hi_shift[0],
                        hi_shift[1],
                        hi_shift[1],
                        hi_shift[1],
                        hi_shift[1],
                    );
                    let hi = _mm512_and_si512(_mm512_srlv_epi64(qh, shifts), three);
                    let w = _mm512_or_si512(lo, _mm512_slli_epi16(hi, 4));
                    let r = 2 * h + j;
                    let (xq, corr) = xs[r];
                    let pr = _mm512_dpbusd_epi32(corr, w, xq);
                    // Lanes 0-3 take scale 4r, 4-7 4r + 1, ...
                    let idx = _mm512_add_epi32(
                        _mm512_set1_epi32(4 * r as i32),
                        _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3),
                    );
                    let fr = _mm512_permutexvar_ps(idx, f);
                    acc[k] = _mm512_fmadd_ps(fr, _mm512_cvtepi32_ps(pr), acc[k]);
                }
            }
        }
    }
    acc.map(|a| _mm512_reduce_add_ps(a))
}

/// Tokens per register tile of [`panel_gemm`].
const TILE_TOKENS: usize = 4;

/// [`super::panel::gemm`]: `out[r * rs + t * ts] = row r . token t`, in tiles of up to
/// [`PANEL_ROWS`] rows x [`TILE_TOKENS`] tokens, two blocks per register.
///
/// # Safety
///
/// The CPU must support AVX-512 F, BW, VL and VNNI, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn panel_gemm(p: &Panel, a: &PanelActs, out: &mut [f32], rs: usize, ts: usize) {
    assert!(p.pairs == a.pairs && p.rows <= PANEL_ROWS);
    let mut t = 0;
    while t < a.tokens {
        let n = (a.tokens - t).min(TILE_TOKENS);
        macro_rules! tiles {
            ($($r:literal $t:literal),*) => {
                match (p.rows, n) {
                    $(($r, $t) => tile::<$r, $t>(p, a, t, out, rs, ts),)*
                    _ => unreachable!("a tile of {} rows x {n} tokens", p.rows),
                }
            };
        }
        tiles!(1 1, 1 2, 1 3, 1 4, 2 1, 2 2, 2 3, 2 4, 3 1, 3 2, 3 3, 3 4, 4 1, 4 2, 4 3, 4 4);
        t += n;
    }
}

/// `R` rows x `T` tokens from token `t0`: per pair of blocks, each token's bytes and scales
/// are loaded once for the `R` rows and each row's once for the `T` tokens.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn tile<const R: usize, const T: usize>(
    p: &Panel,
    a: &PanelActs,
    t0: usize,
    out: &mut [f32],
    rs: usize,
    ts: usize,
) {
    let pairs = p.pairs;
    assert!(p.rows == R && p.w.len() >= pairs * R && p.sc.len() >= pairs * R);
    let toks: [_; T] = std::array::from_fn(|t| a.token(t0 + t));
    for (aq, da, _) in &toks {
        assert!(aq.len() >= pairs && da.len() >= pairs);
    }
    let (w, sc) = (p.w.as_ptr(), p.sc.as_ptr());
    let mut acc = [[_mm512_setzero_ps(); T]; R];
    for i in 0..pairs {
        // SAFETY: every index is below `pairs` (tokens) or `pairs * R` (the panel), checked
        // above; `Line` and `Lanes` are 64 bytes aligned to 64, as the loads want.
        unsafe {
            let av: [__m512i; T] =
                std::array::from_fn(|t| _mm512_load_si512(toks[t].0.as_ptr().add(i).cast()));
            let dv: [__m512; T] =
                std::array::from_fn(|t| _mm512_load_ps(toks[t].1.as_ptr().add(i).cast()));
            for (r, acc) in acc.iter_mut().enumerate() {
                let wv = _mm512_load_si512(w.add(i * R + r).cast());
                let s = _mm512_load_ps(sc.add(i * R + r).cast());
                for ((acc, &a), &d) in acc.iter_mut().zip(&av).zip(&dv) {
                    let pr = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv, a);
                    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(pr), _mm512_mul_ps(s, d), *acc);
                }
            }
        }
    }
    for (r, acc) in acc.iter_mut().enumerate() {
        let ex = p.extras(r);
        for (t, acc) in acc.iter_mut().enumerate() {
            for (x, y) in ex.iter().zip(toks[t].2) {
                // SAFETY: `Lanes` are 64 bytes aligned to 64.
                let (x, y) =
                    unsafe { (_mm512_load_ps(x.0.as_ptr()), _mm512_load_ps(y.0.as_ptr())) };
                *acc = _mm512_fmadd_ps(x, y, *acc);
            }
            out[r * rs + (t0 + t) * ts] = _mm512_reduce_add_ps(*acc);
        }
    }
}
