//! The kernels against the scalar reference, the block layouts, and the kernel micro-benchmark.

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
        WType::Q8_0 | WType::Q4_0 | WType::Q4_1 | WType::Q5_0 | WType::Q5_1 => {
            for _ in 0..cols / QK {
                half(rng, &mut out);
                if matches!(ty, WType::Q4_1 | WType::Q5_1) {
                    half(rng, &mut out);
                }
                let n = ty.block_bytes() - out.len() % ty.block_bytes();
                for _ in 0..n {
                    out.push(rng.next_u64() as u8);
                }
            }
        }
        WType::Q4K | WType::Q5K => {
            for _ in 0..cols / QK_K {
                half(rng, &mut out);
                half(rng, &mut out);
                for _ in 4..ty.block_bytes() {
                    out.push(rng.next_u64() as u8);
                }
            }
        }
        WType::Q6K => {
            for _ in 0..cols / QK_K {
                for _ in 0..208 {
                    out.push(rng.next_u64() as u8);
                }
                half(rng, &mut out);
            }
        }
    }
    assert_eq!(out.len(), ty.row_bytes(cols));
    out
}

const TYPES: [WType; 10] = [
    WType::F32,
    WType::F16,
    WType::Q4_0,
    WType::Q4_1,
    WType::Q8_0,
    WType::Q5_0,
    WType::Q5_1,
    WType::Q4K,
    WType::Q5K,
    WType::Q6K,
];

/// Block counts of 32 for a type: whole super-blocks for the K-quants.
fn block_counts(ty: WType, counts: &[usize]) -> Vec<usize> {
    let per = ty.block_elems().max(QK) / QK;
    counts.iter().map(|c| c * per).collect()
}

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
fn dequantize_follows_the_5_bit_and_k_quant_layouts() {
    let mut out = vec![0f32; QK_K];
    // Q5_0: d = 0.5, qh bit 0 and bit 17 set, byte 0 = 0x3a, byte 1 = 0x00:
    // element 0 = 0.5 * (10 + 16 - 16), element 16 = 0.5 * (3 - 16),
    // element 17 = 0.5 * (0 + 16 - 16), element 1 = 0.5 * (0 - 16).
    let mut row = vec![0x00, 0x38, 0x01, 0x00, 0x02, 0x00, 0x3a];
    row.extend_from_slice(&[0; 15]);
    dequantize_row(WType::Q5_0, &row, &mut out[..32]);
    assert_eq!((out[0], out[16], out[17], out[1]), (5.0, -6.5, 0.0, -8.0));
    // Q5_1: d = 1, m = -1, qh bit 1 set, byte 1 = 0x21: element 1 = 1 + 16 - 1, element 17 = 2 - 1.
    let mut row = vec![0x00, 0x3c, 0x00, 0xbc, 0x02, 0x00, 0x00, 0x00, 0x00, 0x21];
    row.extend_from_slice(&[0; 14]);
    dequantize_row(WType::Q5_1, &row, &mut out[..32]);
    assert_eq!((out[0], out[1], out[17]), (-1.0, 16.0, 1.0));
    // Q4_K: d = 1, dmin = 0.5; sub-block 0: scale 2, min 4; sub-block 1: scale 3, min 1;
    // sub-block 5: scale 0x25 = 5 | (0 << 4)... set through the packed high bits.
    let mut row = vec![0x00, 0x3c, 0x00, 0x38];
    let mut scales = [0u8; 12];
    scales[0] = 2;
    scales[1] = 3;
    scales[4] = 4;
    scales[5] = 1;
    // Sub-block 5: scale = (scales[9] & 15) | (scales[1] >> 6) << 4 = 5 | 1 << 4 = 21,
    // min = (scales[9] >> 4) | (scales[5] >> 6) << 4 = 2 | 0 = 2.
    scales[9] = 0x25;
    scales[1] |= 0x40;
    row.extend_from_slice(&scales);
    let mut qs = [0u8; 128];
    qs[0] = 0x7a; // sub-block 0 element 0 = 10, sub-block 1 element 0 = 7
    qs[64 + 3] = 0x90; // sub-block 5 element 3 = 9
    row.extend_from_slice(&qs);
    assert_eq!(row.len(), 144);
    dequantize_row(WType::Q4K, &row, &mut out);
    assert_eq!(out[0], 2.0 * 10.0 - 0.5 * 4.0);
    assert_eq!(out[1], -2.0);
    assert_eq!(out[32], 3.0 * 7.0 - 0.5);
    assert_eq!(out[5 * 32 + 3], 21.0 * 9.0 - 0.5 * 2.0);
    assert_eq!(k_scale_min(&scales, 5), (21, 2));
    // Q5_K: the same with qh bit 1 of byte 0 (sub-block 1, element 0) set: 7 + 16.
    let mut row5 = row[..16].to_vec();
    let mut qh = [0u8; 32];
    qh[0] = 0b10;
    row5.extend_from_slice(&qh);
    row5.extend_from_slice(&qs);
    dequantize_row(WType::Q5K, &row5, &mut out);
    assert_eq!(out[0], 2.0 * 10.0 - 0.5 * 4.0);
    assert_eq!(out[32], 3.0 * 23.0 - 0.5);
    // Q6_K: d = 0.5; element 0 = ql[0] low | qh[0] bits 0-1, element 64 = ql[0] high |
    // qh[0] bits 4-5, element 32 = ql[32] low | qh[0] bits 2-3, element 128 (second half)
    // = ql[64] low | qh[32] bits 0-1; scales 2, 3 (elements 0..16, 16..32), ...
    let mut row = vec![0u8; 210];
    row[0] = 0x53; // 3, 5
    row[32] = 0x01;
    row[64] = 0x0f;
    row[128] = 0b0001_1110; // bits 0-1: 2, 2-3: 3, 4-5: 1
    row[160] = 0b11;
    for (i, s) in row[192..208].iter_mut().enumerate() {
        *s = (i as i8 - 3) as u8;
    }
    row[208..].copy_from_slice(&[0x00, 0x38]);
    dequantize_row(WType::Q6K, &row, &mut out);
    assert_eq!(out[0], -1.5 * (3.0 + 32.0 - 32.0));
    assert_eq!(out[32], -0.5 * (1.0 + 48.0 - 32.0));
    assert_eq!(out[64], 0.5 * (5.0 + 16.0 - 32.0));
    assert_eq!(out[16], 32.0); // 0.5 * -2 * (0 - 32)
    assert_eq!(out[128], 0.5 * 5.0 * (15.0 + 48.0 - 32.0));
}

/// The AVX2 quantization gives the portable one's bits, ties and zeros included.
#[test]
fn quantize_kernels_agree() {
    let mut rng = SplitMix64::new(29);
    let mut x: Vec<f32> = (0..QK * 40).map(|_| rand_f32(&mut rng) * 9.0).collect();
    // A block of zeros, and a block whose steps fall exactly on halves.
    x[QK..2 * QK].fill(0.0);
    for (i, v) in x[2 * QK..3 * QK].iter_mut().enumerate() {
        *v = (i as f32 - 15.5) * 0.5;
    }
    x[3 * QK] = 127.0;
    for isa in isas() {
        let (mut qs, mut ds) = (vec![0i8; x.len()], vec![[0f32; 2]; x.len() / QK]);
        quantize_isa(isa, &x, &mut qs, &mut ds);
        let (mut wq, mut wd) = (vec![0i8; x.len()], vec![[0f32; 2]; x.len() / QK]);
        quantize(&x, &mut wq, &mut wd);
        assert_eq!(qs, wq, "{isa:?}");
        assert_eq!(
            ds.iter().flatten().map(|v| v.to_bits()).collect::<Vec<_>>(),
            wd.iter().flatten().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{isa:?}"
        );
    }
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
            for blocks in block_counts(ty, &[1, 2, 3, 7, 18, 48]) {
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

/// The gated activations and the softmax's exponentials against the scalar forms, over
/// the range a layer sees (and past the exponential's clamps).
#[test]
fn activations_match_the_reference() {
    let mut rng = SplitMix64::new(23);
    for isa in isas() {
        for n in [0usize, 1, 7, 8, 9, 64, 67] {
            let x: Vec<f32> = (0..n).map(|_| rand_f32(&mut rng) * 12.0).collect();
            let u: Vec<f32> = (0..n).map(|_| rand_f32(&mut rng)).collect();
            for gelu in [true, false] {
                let (mut got, mut want) = (x.clone(), x.clone());
                gated(isa, gelu, &mut got, &u);
                scalar::gated(gelu, &mut want, &u);
                // Absolute near zero: the tanh form's `1 + tanh(y)` loses digits there.
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= 2e-6 * w.abs().max(1.0),
                        "{isa:?} {gelu} {g} {w}"
                    );
                }
            }
            let max = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let (mut got, mut want) = (x.clone(), x.clone());
            let (sg, sw) = (exp_sub(isa, &mut got, max), scalar::exp_sub(&mut want, max));
            assert!((sg - sw).abs() <= 1e-6 * sw.max(1.0), "{isa:?} {sg} {sw}");
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-6 * w.max(1e-30), "{isa:?} {g} {w}");
            }
        }
    }
    // One query's attention over a cache of 9 rows of 3 heads of 16 (the second head, a
    // window of positions 2..9) against its definition.
    let (hd, stride, off, first, n) = (16, 48, 16, 2, 9);
    let k: Vec<f32> = (0..n * stride).map(|_| rand_f32(&mut rng)).collect();
    let v: Vec<f32> = (0..n * stride).map(|_| rand_f32(&mut rng)).collect();
    let q: Vec<f32> = (0..hd).map(|_| rand_f32(&mut rng) * 3.0).collect();
    let scores: Vec<f64> = (first..n)
        .map(|p| {
            let d: f64 = (0..hd)
                .map(|i| f64::from(q[i]) * f64::from(k[p * stride + off + i]))
                .sum();
            (d * 0.25).exp()
        })
        .collect();
    let total: f64 = scores.iter().sum();
    for isa in isas() {
        let (mut s, mut out) = (vec![f32::NAN; n], vec![f32::NAN; hd]);
        attend(
            isa,
            &q,
            (&k, &v),
            (stride, off),
            (first, n),
            0.25,
            &mut s,
            &mut out,
        );
        for (i, o) in out.iter().enumerate() {
            let want: f64 = (first..n)
                .map(|p| scores[p - first] / total * f64::from(v[p * stride + off + i]))
                .sum();
            assert!(
                (f64::from(*o) - want).abs() < 1e-5,
                "{isa:?} {i}: {o} vs {want}"
            );
        }
    }
    // Far outside: the clamped exponential still gives 0 and x.
    if Isa::Avx2.available() {
        let mut g = vec![-200.0f32, 200.0, -90.0, 90.0, 0.0, 1.0, -1.0, 3.0];
        gated(Isa::Avx2, false, &mut g, &[1.0; 8]);
        assert!(g[0].abs() < 1e-30 && g[1] == 200.0 && g[3] == 90.0, "{g:?}");
    }
}

/// The generic attention loop with the AVX2 kernels (what [`avx2::attend`] must equal), at
/// a scale of 1/8.
///
/// # Safety
///
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
unsafe fn generic_avx2_attend(
    q: &[f32],
    kv: (&[f32], &[f32]),
    at: (usize, usize),
    span: (usize, usize),
    s: &mut [f32],
    out: &mut [f32],
) {
    // SAFETY (the closures): the caller promised AVX2 and FMA.
    attend_with(
        |a, b| unsafe { avx2::dot_f32(a, b) },
        |s, m| unsafe { avx2::exp_sub(s, m) },
        |y, a, x| unsafe { avx2::axpy(y, a, x) },
        q,
        kv,
        at,
        span,
        0.125,
        s,
        out,
    )
}

/// The AVX2 attention (four positions per reduction, the output in registers) gives bit
/// for bit what the generic loop gives with the AVX2 kernels, for head sizes it handles
/// itself (multiples of 16, with and without a remainder of 64) and one it hands back, and
/// for position counts around its groups of four.
#[cfg(target_arch = "x86_64")]
#[test]
fn avx2_attention_matches_the_generic_loop_bit_for_bit() {
    if !Isa::Avx2.available() {
        eprintln!("note: no AVX2 + FMA here, the AVX2 attention is not tested");
        return;
    }
    let mut rng = SplitMix64::new(23);
    for hd in [16, 24, 64, 80, 128, 256] {
        for (first, n) in [
            (0, 1),
            (0, 3),
            (0, 4),
            (1, 6),
            (0, 9),
            (5, 13),
            (0, 300),
            (44, 301),
        ] {
            let heads = 3;
            let (stride, off) = (heads * hd, hd);
            let k: Vec<f32> = (0..n * stride).map(|_| rand_f32(&mut rng)).collect();
            let v: Vec<f32> = (0..n * stride).map(|_| rand_f32(&mut rng)).collect();
            let q: Vec<f32> = (0..hd).map(|_| rand_f32(&mut rng) * 3.0).collect();
            let (mut s1, mut o1) = (vec![f32::NAN; n], vec![f32::NAN; hd]);
            let (mut s2, mut o2) = (vec![f32::NAN; n], vec![f32::NAN; hd]);
            // SAFETY: AVX2 and FMA are available (checked above).
            unsafe {
                avx2::attend(
                    &q,
                    (&k, &v),
                    (stride, off),
                    (first, n),
                    0.125,
                    &mut s1,
                    &mut o1,
                );
                generic_avx2_attend(&q, (&k, &v), (stride, off), (first, n), &mut s2, &mut o2);
            }
            let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&o1),
                bits(&o2),
                "output, head size {hd}, positions {first}..{n}"
            );
            assert_eq!(
                bits(&s1[first..n]),
                bits(&s2[first..n]),
                "weights, head size {hd}, positions {first}..{n}"
            );
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
            for blocks in block_counts(ty, &[1, 2, 3, 5, 18, 48]) {
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

/// The panel product (every quantized type, 1-4 rows, 1-9 tokens, odd and even block
/// counts): each output as the one-token kernel gives it, within float rounding.
#[test]
fn panels_match_the_one_token_kernels() {
    use panel::{Panel, PanelActs, PANEL_ROWS};
    let mut rng = SplitMix64::new(17);
    for isa in isas() {
        for ty in TYPES.into_iter().filter(|t| t.quantized()) {
            for blocks in block_counts(ty, &[1, 3, 20]) {
                let cols = blocks * QK;
                for tokens in [1, 3, 4, 9] {
                    let x: Vec<f32> = (0..cols * tokens)
                        .map(|_| rand_f32(&mut rng) * 2.0)
                        .collect();
                    let mut q = QActs {
                        qs: vec![0i8; cols * tokens],
                        ds: vec![[0f32; 2]; blocks * tokens],
                    };
                    quantize(&x, &mut q.qs, &mut q.ds);
                    let mut acts = PanelActs::default();
                    acts.set(&q, cols, tokens);
                    for nrows in 1..=PANEL_ROWS {
                        let rows: Vec<Vec<u8>> =
                            (0..nrows).map(|_| rand_row(&mut rng, ty, cols)).collect();
                        let refs: Vec<&[u8]> = rows.iter().map(|r| r.as_slice()).collect();
                        let mut p = Panel::default();
                        p.fill(isa, ty, cols, &refs);
                        // Row-major with a gap after each row's tokens.
                        let stride = tokens + 2;
                        let mut out = vec![f32::NAN; nrows * stride];
                        panel_gemm(isa, &p, &acts, &mut out, stride, 1);
                        let mut tm = vec![f32::NAN; tokens * nrows];
                        panel_gemm(isa, &p, &acts, &mut tm, 1, nrows);
                        for (r, row) in rows.iter().enumerate() {
                            for t in 0..tokens {
                                let act = Act {
                                    f: &x[t * cols..][..cols],
                                    qs: &q.qs[t * cols..][..cols],
                                    ds: &q.ds[t * blocks..][..blocks],
                                };
                                let want = scalar::dot(ty, row, act);
                                let got = out[r * stride + t];
                                assert_eq!(got.to_bits(), tm[t * nrows + r].to_bits());
                                let mut w = vec![0f32; cols];
                                dequantize_row(ty, row, &mut w);
                                let scale: f64 = (0..cols)
                                    .map(|i| {
                                        let xq = f32::from(act.qs[i]) * act.ds[i / QK][0];
                                        f64::from((w[i] * xq).abs())
                                    })
                                    .sum();
                                assert!(
                                    f64::from((got - want).abs()) <= 1e-5 * scale + 1e-6,
                                    "{isa:?} {ty:?} {cols} cols, {nrows} rows, row {r}, \
                                     token {t}: {got} vs {want}"
                                );
                            }
                            // Columns past the tokens are left alone.
                            assert!(out[r * stride + tokens].is_nan());
                        }
                    }
                }
            }
        }
    }
}

/// Kernel timings (best of `KS_REPS` passes, default 200, over a `KS_ROWS` x 768
/// matrix, default 1536 rows, in cache; 131072 rows stream it from memory), one thread:
/// `cargo test --release -p studio-engines --features llm --lib kernel_speed --
/// --ignored --nocapture`.
#[test]
#[ignore]
fn kernel_speed() {
    let mut rng = SplitMix64::new(5);
    let (rows, cols): (usize, usize) =
        std::env::var("KS_ROWS").map_or((1536, 768), |r| (r.parse().unwrap(), 768));
    let x: Vec<f32> = (0..cols).map(|_| rand_f32(&mut rng)).collect();
    let mut qs = vec![0i8; cols];
    let mut ds = vec![[0f32; 2]; cols / QK];
    quantize(&x, &mut qs, &mut ds);
    let act = Act {
        f: &x,
        qs: &qs,
        ds: &ds,
    };
    for ty in [
        WType::Q4_1,
        WType::Q8_0,
        WType::Q5_0,
        WType::Q4K,
        WType::Q6K,
    ] {
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

/// Not a test: the time of one query's attention, the AVX2 kernel against the generic loop
/// with the AVX2 kernels (best of `KS_REPS`, default 2000), for a head of 64 (SmolLM2) and
/// of 256 (Gemma 3) over 300 and 1000 cached positions:
/// `cargo test --release -p studio-engines --features llm --lib attention_speed --
/// --ignored --nocapture`.
#[cfg(target_arch = "x86_64")]
#[test]
#[ignore]
fn attention_speed() {
    if !Isa::Avx2.available() {
        return;
    }
    let mut rng = SplitMix64::new(9);
    let reps = std::env::var("KS_REPS").map_or(2000, |r| r.parse().unwrap());
    for hd in [64, 256] {
        for n in [300, 1000] {
            let stride = 3 * hd;
            let k: Vec<f32> = (0..n * stride).map(|_| rand_f32(&mut rng)).collect();
            let v: Vec<f32> = (0..n * stride).map(|_| rand_f32(&mut rng)).collect();
            let q: Vec<f32> = (0..hd).map(|_| rand_f32(&mut rng)).collect();
            let (mut s, mut o) = (vec![0f32; n], vec![0f32; hd]);
            let mut best = [f64::MAX; 2];
            // Alternating, so that both see the same machine.
            for _ in 0..reps {
                for (kernel, best) in best.iter_mut().enumerate() {
                    let t = std::time::Instant::now();
                    // SAFETY: AVX2 and FMA are available (checked above).
                    unsafe {
                        if kernel == 0 {
                            generic_avx2_attend(&q, (&k, &v), (stride, hd), (0, n), &mut s, &mut o);
                        } else {
                            avx2::attend(&q, (&k, &v), (stride, hd), (0, n), 0.125, &mut s, &mut o);
                        }
                    }
                    *best = best.min(t.elapsed().as_secs_f64());
                }
            }
            eprintln!(
                "head {hd}, {n} positions: generic loop {:.2} us, AVX2 kernel {:.2} us ({:.2}x)",
                best[0] * 1e6,
                best[1] * 1e6,
                best[0] / best[1]
            );
        }
    }
}
