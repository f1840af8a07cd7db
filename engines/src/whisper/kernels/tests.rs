use super::*;

/// Deterministic test values in [-1, 1).
fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s % 20_000) as f32 / 10_000.0 - 1.0
        })
        .collect()
}

/// erf in f64 by its Maclaurin series (|x| < 5 here), the reference for GELU.
fn erf_f64(x: f64) -> f64 {
    let (mut term, mut sum, mut n) = (x, x, 0.0);
    while term.abs() > 1e-17 * sum.abs().max(1e-300) {
        n += 1.0;
        term *= -x * x / n;
        sum += term / (2.0 * n + 1.0);
    }
    2.0 / std::f64::consts::PI.sqrt() * sum
}

fn simds() -> Vec<Simd> {
    [Simd::Scalar, Simd::Avx2, Simd::Avx512]
        .into_iter()
        .filter(|&s| s <= Simd::detect())
        .collect()
}

#[test]
fn matrix_vector_products_match_the_plain_sums_in_every_precision_and_isa() {
    let (rows, cols, tokens) = (11, 37, 3); // odd sizes: row groups and SIMD tails
    let w = values(rows * cols, 1);
    let x = values(tokens * cols, 2);
    let halves: Vec<u16> = w
        .iter()
        .map(|&v| half::f16::from_f32(v).to_bits())
        .collect();
    let rounded: Vec<f32> = halves
        .iter()
        .map(|&h| half::f16::from_bits(h).to_f32())
        .collect();
    for (mat, exact) in [
        (Mat::f32(rows, cols, w.clone()), &w),
        (Mat::f16(rows, cols, halves), &rounded),
    ] {
        for simd in simds() {
            let mut out = vec![f32::NAN; tokens * (rows - 2)];
            mat.dot_rows(simd, 1..rows - 1, &x, tokens, &mut out, rows - 2);
            for t in 0..tokens {
                for r in 1..rows - 1 {
                    let want: f32 = (0..cols)
                        .map(|c| exact[r * cols + c] * x[t * cols + c])
                        .sum();
                    let got = out[t * (rows - 2) + r - 1];
                    assert!(
                        (got - want).abs() < 1e-4,
                        "{simd:?} t{t} r{r}: {got} vs {want}"
                    );
                }
            }
        }
    }
    let pool = ThreadPool::new(3);
    let bias = values(rows, 3);
    let y = matvec(
        &pool,
        &Mat::f32(rows, cols, w.clone()),
        Some(&bias),
        &x,
        tokens,
    );
    for t in 0..tokens {
        for r in 0..rows {
            let want: f32 = bias[r]
                + (0..cols)
                    .map(|c| w[r * cols + c] * x[t * cols + c])
                    .sum::<f32>();
            assert!((y[t * rows + r] - want).abs() < 1e-4);
        }
    }
    let joined = Mat::concat_rows(&[Mat::f32(2, 3, vec![1.0; 6]), Mat::f32(1, 3, vec![2.0; 3])]);
    let mut row = [0f32; 3];
    joined.row_into(2, &mut row);
    assert_eq!((joined.rows, row), (3, [2.0; 3]));
}

#[test]
fn gemm_over_strided_and_overlapping_rows_matches_the_plain_sums() {
    // A convolution-like view: row i is x[2i .. 2i + k] (rows overlap), times W^T (held
    // transposed, `k x n`, as the encoder's weights are).
    let (m, n, k) = (150, 19, 9);
    let x = values(2 * m + k, 4);
    let w = values(n * k, 5);
    let mut c = vec![f32::NAN; m * n];
    let pool = ThreadPool::new(2);
    let seen = std::sync::atomic::AtomicUsize::new(0);
    // SAFETY: the views stay inside `x` (row m - 1 ends at 2(m - 1) + k) and `w`.
    unsafe {
        gemm_rows(
            &pool,
            m,
            n,
            k,
            View::rows(&x, 2),
            View::rows(&transpose(&w, n, k), n),
            c.as_mut_ptr(),
            &|_, rows| {
                seen.fetch_add(rows.len(), std::sync::atomic::Ordering::Relaxed);
                for v in rows.iter_mut() {
                    *v += 1.0;
                }
            },
        )
    };
    assert_eq!(seen.into_inner(), m * n, "the epilogue sees every row once");
    for i in 0..m {
        for j in 0..n {
            let want: f32 = 1.0 + (0..k).map(|l| x[2 * i + l] * w[j * k + l]).sum::<f32>();
            assert!((c[i * n + j] - want).abs() < 1e-4, "({i}, {j})");
        }
    }
}

#[test]
fn weighted_rows_and_transposes_match_the_plain_sums_in_every_isa() {
    // Widths around the vector and group sizes; rows `ld` apart with gaps between.
    for (keys, n, ld) in [
        (1, 1, 1),
        (5, 7, 9),
        (13, 64, 64),
        (1500, 64, 768),
        (9, 100, 131),
    ] {
        let w = values(keys, 6);
        let v = values((keys - 1) * ld + n, 7);
        for simd in simds() {
            let mut out = vec![f32::NAN; n];
            weighted_rows(simd, &w, &v, ld, &mut out);
            for (c, &got) in out.iter().enumerate() {
                let want: f32 = (0..keys).map(|j| w[j] * v[j * ld + c]).sum();
                assert!(
                    (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                    "{simd:?} {keys}x{n}/{ld} column {c}: {got} vs {want}"
                );
            }
        }
    }
    let mut out = [f32::NAN; 3];
    weighted_rows(Simd::detect(), &[], &[], 3, &mut out);
    assert_eq!(out, [0.0; 3], "no rows: zeros");
    let (rows, cols) = (45, 70); // more than a tile each way, neither a multiple of it
    let m = values(rows * cols, 8);
    let t = transpose(&m, rows, cols);
    for r in 0..rows {
        for c in 0..cols {
            assert_eq!(t[c * rows + r], m[r * cols + c], "({r}, {c})");
        }
    }
    // Columns 3.. of rows 70 apart: the transpose of the sub-matrix.
    let mut sub = vec![f32::NAN; rows * (cols - 3)];
    transpose_into(&m[3..], rows, cols - 3, cols, &mut sub);
    for r in 0..rows {
        for c in 0..cols - 3 {
            assert_eq!(
                sub[c * rows + r],
                m[r * cols + 3 + c],
                "({r}, {c}) of the part"
            );
        }
    }
}

#[test]
fn erf_gelu_softmax_and_layer_norm_are_accurate() {
    // erf reference values (to 9 digits).
    for (x, want) in [
        (0.0f32, 0.0f64),
        (0.1, 0.112_462_916),
        (0.5, 0.520_499_878),
        (1.0, 0.842_700_793),
        (2.0, 0.995_322_265),
        (-1.5, -0.966_105_146),
        (4.0, 0.999_999_985),
    ] {
        assert!(
            (f64::from(erf(x)) - want).abs() < 3e-7,
            "erf({x}) = {}",
            erf(x)
        );
    }
    // 21 values: whole vectors and a tail in every SIMD width.
    let xs: Vec<f32> = (0..21).map(|i| (i as f32 - 10.0) * 0.61).collect();
    for simd in simds() {
        let mut g = [-3.0f32, -1.0, 0.0, 1.0, 3.0];
        gelu_with(simd, &mut g);
        let want = [
            -0.004_049_73f64,
            -0.158_655_25,
            0.0,
            0.841_344_75,
            2.995_950_3,
        ];
        for (&a, b) in g.iter().zip(want) {
            assert!((f64::from(a) - b).abs() < 1e-6, "{simd:?} {g:?}");
        }
        let mut g = xs.clone();
        gelu_with(simd, &mut g);
        for (&x, &y) in xs.iter().zip(&g) {
            let want = 0.5 * f64::from(x) * (1.0 + erf_f64(f64::from(x) / 2f64.sqrt()));
            assert!(
                (f64::from(y) - want).abs() < 1e-6,
                "{simd:?} gelu({x}) = {y}"
            );
        }
        let mut s = xs.clone();
        s[3] = f32::NEG_INFINITY;
        s[20] = -200.0;
        softmax_with(simd, &mut s);
        assert_eq!((s[3], s[20]), (0.0, 0.0), "{simd:?}");
        assert!((s.iter().sum::<f32>() - 1.0).abs() < 1e-6, "{simd:?}");
        for i in [0, 7, 18] {
            let ratio = f64::from(s[i + 1]) / f64::from(s[i]);
            assert!(
                (ratio / 0.61f64.exp() - 1.0).abs() < 1e-5,
                "{simd:?} {i}: {ratio}"
            );
        }
        let mut masked = [f32::NEG_INFINITY; 3];
        softmax_with(simd, &mut masked);
        assert_eq!(masked, [0.0; 3]);
    }
    let lse = log_sum_exp(&xs);
    let want = xs.iter().map(|&v| f64::from(v).exp()).sum::<f64>().ln();
    assert!((f64::from(lse) - want).abs() < 1e-5, "{lse} vs {want}");
    assert_eq!(
        log_sum_exp(&[f32::NEG_INFINITY, f32::NEG_INFINITY]),
        f32::NEG_INFINITY
    );
    assert_eq!(log_sum_exp(&[]), f32::NEG_INFINITY);

    let x = [1.0f32, 2.0, 3.0, 4.0, 10.0, 10.0, 10.0, 10.0];
    let mut out = [0f32; 8];
    layer_norm(&x, &[1.0, 1.0, 2.0, 1.0], &[0.0, 0.0, 0.0, 0.5], &mut out);
    let z = 1.0 / (1.25f32 + 1e-5).sqrt();
    let want = [
        -1.5 * z,
        -0.5 * z,
        2.0 * 0.5 * z,
        1.5 * z + 0.5,
        0.0,
        0.0,
        0.0,
        0.5,
    ];
    for (a, b) in out.iter().zip(want) {
        assert!((a - b).abs() < 1e-5, "{out:?}");
    }
}
