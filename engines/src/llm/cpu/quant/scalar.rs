//! The portable kernels.

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
