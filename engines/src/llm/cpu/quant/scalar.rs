//! The portable kernels.

use super::{half_at, k_block, small_block, Act, WType, QK, QK_K};

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
        WType::Q4_0 | WType::Q4_1 | WType::Q5_0 | WType::Q5_1 => {
            let mut acc = 0f32;
            let blocks = row.chunks_exact(ty.block_bytes());
            for ((b, q), ds) in blocks.zip(x.qs.chunks_exact(QK)).zip(x.ds) {
                let (d, m, w) = small_block(ty, b);
                let mut isum = 0i32;
                for (&w, &q) in w.iter().zip(q) {
                    isum += i32::from(w) * i32::from(q);
                }
                // sum((d w + m) * dx qx) = d dx sum(w qx) + m s.
                acc += d * ds[0] * isum as f32 + m * ds[1];
            }
            acc
        }
        WType::Q4K | WType::Q5K | WType::Q6K => {
            let mut acc = 0f32;
            let blocks = row.chunks_exact(ty.block_bytes());
            for ((b, q), ds) in blocks
                .zip(x.qs.chunks_exact(QK_K))
                .zip(x.ds.chunks_exact(QK_K / QK))
            {
                let (scales, w) = k_block(ty, b);
                for (s, [a, bs, m]) in scales.into_iter().enumerate() {
                    let (w, q) = (&w[s * QK..][..QK], &q[s * QK..][..QK]);
                    let half = |r: std::ops::Range<usize>| -> i32 {
                        r.map(|j| i32::from(w[j]) * i32::from(q[j])).sum()
                    };
                    let (lo, hi) = (half(0..16), half(16..32));
                    acc += ds[s][0] * (a * lo as f32 + bs * hi as f32) + m * ds[s][1];
                }
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

/// GELU, tanh form.
pub fn gelu(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)).tanh())
}

/// `g[i] = act(g[i]) * u[i]`, `act` [`gelu`] or SiLU (`x / (1 + e^-x)`).
pub fn gated(gelu_act: bool, g: &mut [f32], u: &[f32]) {
    for (g, u) in g.iter_mut().zip(u) {
        let a = if gelu_act {
            gelu(*g)
        } else {
            *g / (1.0 + (-*g).exp())
        };
        *g = a * u;
    }
}

/// `s[i] = e^(s[i] - max)`, returning their sum.
pub fn exp_sub(s: &mut [f32], max: f32) -> f32 {
    let mut sum = 0f32;
    for s in s.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    sum
}
