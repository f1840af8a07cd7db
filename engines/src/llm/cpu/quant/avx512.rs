//! The AVX-512 (F, BW, VL, VNNI) kernels: Q8_0's, two 32-element blocks per 512-bit
//! register, products summed by `vpdpbusd` (unsigned x signed bytes); and the panel
//! product's register tiles ([`panel_gemm`]).

use std::arch::x86_64::*;

use super::panel::{Panel, PanelActs, PANEL_ROWS};
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
