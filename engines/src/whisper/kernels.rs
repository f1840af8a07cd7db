//! The numeric kernels of the native Whisper forward pass ([`super::native`]).
//!
//! * **Matrix products with many rows** (the encoder's convolutions and projections, the
//!   attention scores, the cross-attention keys and values of a window): the `gemm` crate's
//!   f32 kernels, called single-threaded on row blocks that the threads of the CPU pool
//!   ([`crate::threads::ThreadPool`]) take in turn.
//! * **Matrix-vector products** (the decoder's projections and the vocabulary logits, one
//!   token at a time): [`Mat`] keeps the weights in their stored precision (IEEE half as in
//!   the CTranslate2 file, or f32), converted to f32 in registers; four rows at a time share
//!   each load of the activations. AVX-512 F or AVX2 + FMA + F16C when the CPU has them
//!   (detected once at run time), portable code otherwise.
//! * Layer norm, exact (erf) GELU, and a numerically safe softmax, on f32 rows.

use std::ops::Range;

use crate::threads::ThreadPool;

/// The instruction set of the matrix-vector kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Simd {
    /// Portable Rust.
    Scalar,
    /// AVX2 + FMA + F16C (x86-64).
    Avx2,
    /// AVX-512 F (x86-64), with AVX2 + FMA + F16C.
    Avx512,
}

impl Simd {
    /// The best this CPU runs (detected once).
    pub fn detect() -> Simd {
        static SIMD: std::sync::OnceLock<Simd> = std::sync::OnceLock::new();
        *SIMD.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
                {
                    if std::arch::is_x86_feature_detected!("avx512f") {
                        return Simd::Avx512;
                    }
                    return Simd::Avx2;
                }
            }
            Simd::Scalar
        })
    }
}

/// Weights of a matrix-vector product: `rows` rows of `cols` elements, row-major.
#[derive(Clone, Debug)]
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    data: MatData,
}

#[derive(Clone, Debug)]
enum MatData {
    F32(Vec<f32>),
    /// IEEE half bit patterns.
    F16(Vec<u16>),
}

impl Mat {
    /// A matrix of f32 values.
    pub fn f32(rows: usize, cols: usize, data: Vec<f32>) -> Mat {
        assert_eq!(data.len(), rows * cols, "matrix size");
        Mat {
            rows,
            cols,
            data: MatData::F32(data),
        }
    }

    /// A matrix of IEEE half values (bit patterns).
    pub fn f16(rows: usize, cols: usize, data: Vec<u16>) -> Mat {
        assert_eq!(data.len(), rows * cols, "matrix size");
        Mat {
            rows,
            cols,
            data: MatData::F16(data),
        }
    }

    /// The rows of `parts` (all of one width and precision) one after the other.
    pub fn concat_rows(parts: &[Mat]) -> Mat {
        let cols = parts.first().map_or(0, |p| p.cols);
        let rows = parts.iter().map(|p| p.rows).sum();
        assert!(parts.iter().all(|p| p.cols == cols), "matrix widths");
        let data = match parts.first().map(|p| &p.data) {
            Some(MatData::F16(_)) if parts.iter().all(|p| matches!(p.data, MatData::F16(_))) => {
                MatData::F16(
                    parts
                        .iter()
                        .flat_map(|p| match &p.data {
                            MatData::F16(v) => v.iter().copied(),
                            MatData::F32(_) => unreachable!("checked above"),
                        })
                        .collect(),
                )
            }
            _ => {
                let mut v = Vec::with_capacity(rows * cols);
                let mut row = vec![0f32; cols];
                for p in parts {
                    for r in 0..p.rows {
                        p.row_into(r, &mut row);
                        v.extend_from_slice(&row);
                    }
                }
                MatData::F32(v)
            }
        };
        Mat { rows, cols, data }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match &self.data {
            MatData::F32(d) => d.len() * 4,
            MatData::F16(d) => d.len() * 2,
        }
    }

    /// Row `r` as f32 values, written to `out`.
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        let range = r * self.cols..(r + 1) * self.cols;
        match &self.data {
            MatData::F32(d) => out.copy_from_slice(&d[range]),
            MatData::F16(d) => {
                for (o, &h) in out.iter_mut().zip(&d[range]) {
                    *o = half::f16::from_bits(h).to_f32();
                }
            }
        }
    }

    /// `out[t * ldo + r - rows.start] = dot(row r, x[t * cols ..])` for every token `t` of
    /// `x` (`tokens` vectors of `cols` values) and every row in `rows`.
    pub fn dot_rows(
        &self,
        simd: Simd,
        rows: Range<usize>,
        x: &[f32],
        tokens: usize,
        out: &mut [f32],
        ldo: usize,
    ) {
        let k = self.cols;
        assert!(rows.end <= self.rows && x.len() >= tokens * k);
        let mut r = rows.start;
        while r < rows.end {
            let n = (rows.end - r).min(4);
            for t in 0..tokens {
                let xt = &x[t * k..(t + 1) * k];
                let sums = self.dot4(simd, r, n, xt);
                let o = t * ldo + r - rows.start;
                out[o..o + n].copy_from_slice(&sums[..n]);
            }
            r += n;
        }
    }

    /// Dots of rows `r..r + n` (`n <= 4`) with `x`.
    fn dot4(&self, simd: Simd, r: usize, n: usize, x: &[f32]) -> [f32; 4] {
        let k = self.cols;
        // Rows past `n` repeat the last one (their sums are ignored).
        let idx = |i: usize| (r + i.min(n - 1)) * k;
        match &self.data {
            MatData::F32(d) => dot4_f32(simd, [0, 1, 2, 3].map(|i| &d[idx(i)..idx(i) + k]), x),
            MatData::F16(d) => {
                let rows = [0, 1, 2, 3].map(|i| &d[idx(i)..idx(i) + k]);
                #[cfg(target_arch = "x86_64")]
                if simd >= Simd::Avx2 {
                    // SAFETY: as above, and F16C was detected too.
                    return unsafe {
                        if simd == Simd::Avx512 {
                            x86::dot4_f16_avx512(rows, x)
                        } else {
                            x86::dot4_f16_avx2(rows, x)
                        }
                    };
                }
                let _ = simd;
                rows.map(|row| {
                    row.iter()
                        .zip(x)
                        .map(|(&h, b)| half::f16::from_bits(h).to_f32() * b)
                        .sum()
                })
            }
        }
    }
}

/// A raw pointer the pool's threads write through, each to its own rows.
#[derive(Clone, Copy)]
pub struct SyncPtr(pub *mut f32);

impl SyncPtr {
    /// The pointer (a method, so a closure captures the whole `SyncPtr`, which is `Sync`).
    pub fn get(self) -> *mut f32 {
        self.0
    }
}
// SAFETY: used only to hand disjoint output regions to the pool's threads, which finish
// before the borrow the pointer came from ends (`ThreadPool::run` returns after them).
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

/// `y = x W^T (+ bias)` for `tokens` vectors: `x` is `tokens x w.cols`, `y` is
/// `tokens x w.rows`; the rows of `w` are shared out among the pool's threads.
pub fn matvec(
    pool: &ThreadPool,
    w: &Mat,
    bias: Option<&[f32]>,
    x: &[f32],
    tokens: usize,
) -> Vec<f32> {
    let n = w.rows;
    let mut y = vec![0f32; tokens * n];
    let simd = Simd::detect();
    let out = SyncPtr(y.as_mut_ptr());
    let chunk = (n / (pool.threads() * 8))
        .clamp(16, 1024)
        .next_multiple_of(4);
    pool.for_each_chunk(n, chunk, &|_, rows| {
        let width = rows.len();
        if tokens == 1 {
            // SAFETY: each chunk writes only its own elements `rows` of `y`, which outlives
            // the dispatch.
            let y = unsafe { std::slice::from_raw_parts_mut(out.get().add(rows.start), width) };
            w.dot_rows(simd, rows, x, 1, y, width);
            return;
        }
        let mut tmp = vec![0f32; tokens * width];
        w.dot_rows(simd, rows.clone(), x, tokens, &mut tmp, width);
        for (t, part) in tmp.chunks_exact(width).enumerate() {
            // SAFETY: as above, row `t`'s columns `rows`.
            let y =
                unsafe { std::slice::from_raw_parts_mut(out.get().add(t * n + rows.start), width) };
            y.copy_from_slice(part);
        }
    });
    if let Some(b) = bias {
        for row in y.chunks_exact_mut(n) {
            for (v, b) in row.iter_mut().zip(b) {
                *v += b;
            }
        }
    }
    y
}

/// A strided f32 matrix view for [`gemm`]: element `(i, j)` is at `ptr + i * rs + j * cs`.
#[derive(Clone, Copy)]
pub struct View {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

impl View {
    /// Row-major with `ld` values between rows.
    pub fn rows(data: &[f32], ld: usize) -> View {
        View {
            ptr: data.as_ptr(),
            rs: ld as isize,
            cs: 1,
        }
    }

    fn offset_rows(self, rows: usize) -> View {
        View {
            // SAFETY (of the later reads): callers pass row ranges inside the matrix.
            ptr: self.ptr.wrapping_offset(rows as isize * self.rs),
            ..self
        }
    }
}

/// `c[i][j] (+)= sum_l a[i][l] b[l][j]` for `i < m`, `j < n`, `l < k`, on this thread
/// (added to `c` when `accumulate`).
///
/// # Safety
///
/// Every element the views address for those indices must be readable, `c` (row-major,
/// `ldc` between rows) writable, and no other thread may write them meanwhile.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_here(
    m: usize,
    n: usize,
    k: usize,
    a: View,
    b: View,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    gemm::gemm(
        m,
        n,
        k,
        c,
        1,
        ldc as isize,
        accumulate,
        a.ptr,
        a.cs,
        a.rs,
        b.ptr,
        b.cs,
        b.rs,
        1.0f32,
        1.0f32,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
}

/// Fewest rows of `c` per task of [`gemm_rows`].
const GEMM_MIN_ROWS: usize = 64;
/// Tasks per thread of [`gemm_rows`]: few, so each packs `b` (the weights) rarely, but
/// more than one, so a thread the OS delays leaves its last blocks to the others.
const GEMM_TASKS_PER_THREAD: usize = 3;

/// `c = a b` (`m x n`, row-major and contiguous) with the rows shared out among the pool's
/// threads in blocks (about [`GEMM_TASKS_PER_THREAD`] per thread, at least
/// [`GEMM_MIN_ROWS`] rows); `epilogue(first_row, rows)` runs on each finished block (bias,
/// activation, residual) while it is in cache.
///
/// # Safety
///
/// As [`gemm_here`] for `ldc = n`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_rows(
    pool: &ThreadPool,
    m: usize,
    n: usize,
    k: usize,
    a: View,
    b: View,
    c: *mut f32,
    epilogue: &(dyn Fn(usize, &mut [f32]) + Sync),
) {
    let a = SendView(a);
    let b = SendView(b);
    let c = SyncPtr(c);
    let block = m
        .div_ceil(pool.threads() * GEMM_TASKS_PER_THREAD)
        .max(GEMM_MIN_ROWS)
        .next_multiple_of(16);
    pool.for_each_chunk(m, block, &|_, rows| {
        let (a, b, c) = (a, b, c);
        // SAFETY: the caller's guarantee; each block writes its own rows of `c`.
        unsafe {
            let out = c.0.add(rows.start * n);
            gemm_here(
                rows.len(),
                n,
                k,
                a.0.offset_rows(rows.start),
                b.0,
                out,
                n,
                false,
            );
            epilogue(
                rows.start,
                std::slice::from_raw_parts_mut(out, rows.len() * n),
            );
        }
    });
}

#[derive(Clone, Copy)]
struct SendView(View);
// SAFETY: read-only views of data that outlives the pool dispatch.
unsafe impl Send for SendView {}
unsafe impl Sync for SendView {}

/// `x` (rows of `gamma.len()` values) normalised per row: `(x - mean) / sqrt(var + eps)
/// * gamma + beta`, written to `out`.
pub fn layer_norm(x: &[f32], gamma: &[f32], beta: &[f32], out: &mut [f32]) {
    const EPS: f32 = 1e-5;
    let d = gamma.len();
    for (x, o) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let mean = x.iter().sum::<f32>() / d as f32;
        let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
        let inv = 1.0 / (var + EPS).sqrt();
        for (((o, &v), &g), &b) in o.iter_mut().zip(x).zip(gamma).zip(beta) {
            *o = (v - mean) * inv * g + b;
        }
    }
}

/// The constants of Abramowitz & Stegun 7.1.26: `erf(x) = 1 - t (a1 + t (a2 + ...)) e^-x^2`
/// with `t = 1 / (1 + p x)` for `x >= 0`.
const ERF_P: f32 = 0.327_591_1;
const ERF_A: [f32; 5] = [
    0.254_829_6,
    -0.284_496_74,
    1.421_413_8,
    -1.453_152,
    1.061_405_4,
];

/// The error function to within 1.5e-7 (Abramowitz & Stegun 7.1.26, above), enough for
/// f32 activations.
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + ERF_P * a);
    let poly = t * (ERF_A[0] + t * (ERF_A[1] + t * (ERF_A[2] + t * (ERF_A[3] + t * ERF_A[4]))));
    let y = 1.0 - poly * (-a * a).exp();
    y.copysign(x)
}

/// Exact GELU, `x * (1 + erf(x / sqrt 2)) / 2`, in place (the SIMD forms evaluate the same
/// approximation of erf with a vector exponential).
pub fn gelu(x: &mut [f32]) {
    gelu_with(Simd::detect(), x)
}

/// [`gelu`] with `simd`'s kernels (at most [`Simd::detect`]).
fn gelu_with(simd: Simd, x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if simd >= Simd::Avx2 {
        // SAFETY: `Simd::detect` found the instructions (AVX-512 F for `Avx512`; AVX2 and
        // FMA otherwise).
        unsafe {
            if simd == Simd::Avx512 {
                x86::gelu_avx512(x)
            } else {
                x86::gelu_avx2(x)
            }
        };
        return;
    }
    let _ = simd;
    for v in x {
        *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// `x[i] = exp(x[i] - shift)`; returns their sum.
fn exp_shifted(simd: Simd, x: &mut [f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd >= Simd::Avx2 {
        // SAFETY: as in `gelu`.
        return unsafe {
            if simd == Simd::Avx512 {
                x86::exp_shifted_avx512(x, shift)
            } else {
                x86::exp_shifted_avx2(x, shift)
            }
        };
    }
    let _ = simd;
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - shift).exp();
        sum += *v;
    }
    sum
}

/// `x` replaced by its softmax (`exp(x - max) / sum`); `-inf` entries become 0.
pub fn softmax(x: &mut [f32]) {
    softmax_with(Simd::detect(), x)
}

/// [`softmax`] with `simd`'s kernels (at most [`Simd::detect`]).
fn softmax_with(simd: Simd, x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        x.fill(0.0);
        return;
    }
    let inv = 1.0 / exp_shifted(simd, x, max);
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// `ln(sum(exp(x)))`, computed stably (`-inf` for an empty or all `-inf` slice).
pub fn log_sum_exp(x: &[f32]) -> f32 {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return max;
    }
    let mut tmp = x.to_vec();
    max + exp_shifted(Simd::detect(), &mut tmp, max).ln()
}

/// The transpose of the `rows x cols` row-major matrix `m` (`cols x rows`, row-major),
/// in tiles that stay in cache.
pub fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    assert_eq!(m.len(), rows * cols, "matrix size");
    let mut out = vec![0f32; m.len()];
    transpose_into(m, rows, cols, cols, &mut out);
    out
}

/// Writes the transpose of the `rows x cols` matrix in `m` (rows `ld` apart) to `out`
/// (`cols x rows`, row-major), in tiles that stay in cache.
pub fn transpose_into(m: &[f32], rows: usize, cols: usize, ld: usize, out: &mut [f32]) {
    const TILE: usize = 32;
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(
        ld >= cols && m.len() >= (rows - 1) * ld + cols && out.len() >= rows * cols,
        "matrix size"
    );
    for r0 in (0..rows).step_by(TILE) {
        let r1 = (r0 + TILE).min(rows);
        for c0 in (0..cols).step_by(TILE) {
            for c in c0..(c0 + TILE).min(cols) {
                let dst = &mut out[c * rows + r0..c * rows + r1];
                for (o, r) in dst.iter_mut().zip(r0..r1) {
                    *o = m[r * ld + c];
                }
            }
        }
    }
}

/// `out = sum_j w[j] * values[j * ld..j * ld + out.len()]`: the weighted sum of rows
/// `ld` apart (the attention's probabilities times its value rows).
pub fn weighted_rows(simd: Simd, w: &[f32], values: &[f32], ld: usize, out: &mut [f32]) {
    let n = out.len();
    if w.is_empty() {
        out.fill(0.0);
        return;
    }
    assert!(
        ld >= n && values.len() >= (w.len() - 1) * ld + n,
        "value rows"
    );
    #[cfg(target_arch = "x86_64")]
    if simd >= Simd::Avx2 {
        // SAFETY: `Simd::detect` found AVX2 and FMA (AVX-512 F for `Avx512`); the kernels
        // read `n` values at `j * ld` for `j < w.len()`, inside `values` (checked above).
        unsafe {
            if simd == Simd::Avx512 {
                x86::weighted_rows_avx512(w, values, ld, out)
            } else {
                x86::weighted_rows_avx2(w, values, ld, out)
            }
        };
        return;
    }
    let _ = simd;
    out.fill(0.0);
    for (j, &p) in w.iter().enumerate() {
        for (o, &x) in out.iter_mut().zip(&values[j * ld..j * ld + n]) {
            *o += p * x;
        }
    }
}

/// Four dot products of f32 rows with `x` (rows and `x` of one length).
pub fn dot4_f32(simd: Simd, rows: [&[f32]; 4], x: &[f32]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    if simd >= Simd::Avx2 {
        // SAFETY: `Simd::detect` found AVX2 and FMA (AVX-512 F for `Avx512`); the kernels
        // read `x.len()` values of every row, which the caller's rows hold.
        assert!(rows.iter().all(|r| r.len() >= x.len()));
        return unsafe {
            if simd == Simd::Avx512 {
                x86::dot4_f32_avx512(rows, x)
            } else {
                x86::dot4_f32_avx2(rows, x)
            }
        };
    }
    let _ = simd;
    rows.map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{ERF_A, ERF_P};

    // exp(x) = 2^n e^r, n = round(x / ln 2), |r| <= ln 2 / 2, e^r by a degree-7 polynomial
    // (Cephes' expf coefficients): about 1 ulp. Inputs below EXP_LO give 0.
    const EXP_LO: f32 = -87.336_55;
    const EXP_HI: f32 = 88.3;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const EXP_P: [f32; 6] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ];

    #[target_feature(enable = "avx512f")]
    unsafe fn exp512(x: __m512) -> __m512 {
        let live = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, _mm512_set1_ps(EXP_LO));
        let x = _mm512_min_ps(
            _mm512_max_ps(x, _mm512_set1_ps(EXP_LO)),
            _mm512_set1_ps(EXP_HI),
        );
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
        let mut p = _mm512_set1_ps(EXP_P[0]);
        for &c in &EXP_P[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let y = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r);
        let y = _mm512_add_ps(y, _mm512_set1_ps(1.0));
        _mm512_maskz_mov_ps(live, _mm512_scalef_ps(y, n))
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp256(x: __m256) -> __m256 {
        let live = _mm256_cmp_ps::<_CMP_GE_OQ>(x, _mm256_set1_ps(EXP_LO));
        let x = _mm256_min_ps(
            _mm256_max_ps(x, _mm256_set1_ps(EXP_LO)),
            _mm256_set1_ps(EXP_HI),
        );
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
        let mut p = _mm256_set1_ps(EXP_P[0]);
        for &c in &EXP_P[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let y = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r);
        let y = _mm256_add_ps(y, _mm256_set1_ps(1.0));
        // 2^n from the exponent bits (n is in -126..=127 after the clamps).
        let pow = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        )));
        _mm256_and_ps(_mm256_mul_ps(y, pow), live)
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn exp_shifted_avx512(x: &mut [f32], shift: f32) -> f32 {
        let s = _mm512_set1_ps(shift);
        let mut sum = _mm512_setzero_ps();
        let mut chunks = x.chunks_exact_mut(16);
        for c in &mut chunks {
            let v = exp512(_mm512_sub_ps(_mm512_loadu_ps(c.as_ptr()), s));
            _mm512_storeu_ps(c.as_mut_ptr(), v);
            sum = _mm512_add_ps(sum, v);
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let m: __mmask16 = (1u32 << rest.len()).wrapping_sub(1) as __mmask16;
            let v = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, rest.as_ptr()), s));
            let v = _mm512_maskz_mov_ps(m, v);
            _mm512_mask_storeu_ps(rest.as_mut_ptr(), m, v);
            sum = _mm512_add_ps(sum, v);
        }
        _mm512_reduce_add_ps(sum)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_shifted_avx2(x: &mut [f32], shift: f32) -> f32 {
        let s = _mm256_set1_ps(shift);
        let mut sum = _mm256_setzero_ps();
        let mut chunks = x.chunks_exact_mut(8);
        for c in &mut chunks {
            let v = exp256(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), s));
            _mm256_storeu_ps(c.as_mut_ptr(), v);
            sum = _mm256_add_ps(sum, v);
        }
        let mut total = hsum256(sum);
        for v in chunks.into_remainder() {
            *v = (*v - shift).exp();
            total += *v;
        }
        total
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn gelu512(x: __m512) -> __m512 {
        let u = _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
        let a = _mm512_abs_ps(u);
        let one = _mm512_set1_ps(1.0);
        let t = _mm512_div_ps(one, _mm512_fmadd_ps(_mm512_set1_ps(ERF_P), a, one));
        let mut p = _mm512_set1_ps(ERF_A[4]);
        for &c in ERF_A[..4].iter().rev() {
            p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(c));
        }
        p = _mm512_mul_ps(p, t);
        let e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(a, a)));
        let erf_abs = _mm512_fnmadd_ps(p, e, one);
        // erf(u) has u's sign: 1 + erf(u) = 1 + sign * erf_abs.
        let neg = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(u, _mm512_setzero_ps());
        let erf = _mm512_mask_sub_ps(erf_abs, neg, _mm512_setzero_ps(), erf_abs);
        _mm512_mul_ps(
            _mm512_mul_ps(_mm512_set1_ps(0.5), x),
            _mm512_add_ps(one, erf),
        )
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn gelu256(x: __m256) -> __m256 {
        let u = _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
        let sign = _mm256_set1_ps(-0.0);
        let a = _mm256_andnot_ps(sign, u);
        let one = _mm256_set1_ps(1.0);
        let t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(ERF_P), a, one));
        let mut p = _mm256_set1_ps(ERF_A[4]);
        for &c in ERF_A[..4].iter().rev() {
            p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(c));
        }
        p = _mm256_mul_ps(p, t);
        let e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(a, a)));
        let erf_abs = _mm256_fnmadd_ps(p, e, one);
        let erf = _mm256_or_ps(erf_abs, _mm256_and_ps(sign, u));
        _mm256_mul_ps(
            _mm256_mul_ps(_mm256_set1_ps(0.5), x),
            _mm256_add_ps(one, erf),
        )
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn gelu_avx512(x: &mut [f32]) {
        let mut chunks = x.chunks_exact_mut(16);
        for c in &mut chunks {
            _mm512_storeu_ps(c.as_mut_ptr(), gelu512(_mm512_loadu_ps(c.as_ptr())));
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let m: __mmask16 = (1u32 << rest.len()).wrapping_sub(1) as __mmask16;
            let v = gelu512(_mm512_maskz_loadu_ps(m, rest.as_ptr()));
            _mm512_mask_storeu_ps(rest.as_mut_ptr(), m, v);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gelu_avx2(x: &mut [f32]) {
        let mut chunks = x.chunks_exact_mut(8);
        for c in &mut chunks {
            _mm256_storeu_ps(c.as_mut_ptr(), gelu256(_mm256_loadu_ps(c.as_ptr())));
        }
        for v in chunks.into_remainder() {
            *v = 0.5 * *v * (1.0 + super::erf(*v * std::f32::consts::FRAC_1_SQRT_2));
        }
    }

    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn dot4_f16_avx512(rows: [&[u16]; 4], x: &[f32]) -> [f32; 4] {
        let k = x.len();
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        while i + 16 <= k {
            let xv = _mm512_loadu_ps(x.as_ptr().add(i));
            for (a, row) in acc.iter_mut().zip(&rows) {
                let w = _mm512_cvtph_ps(_mm256_loadu_si256(row.as_ptr().add(i).cast()));
                *a = _mm512_fmadd_ps(w, xv, *a);
            }
            i += 16;
        }
        let mut out = acc.map(|a| _mm512_reduce_add_ps(a));
        for (o, row) in out.iter_mut().zip(&rows) {
            for j in i..k {
                *o += half::f16::from_bits(row[j]).to_f32() * x[j];
            }
        }
        out
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn dot4_f32_avx512(rows: [&[f32]; 4], x: &[f32]) -> [f32; 4] {
        let k = x.len();
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        while i + 16 <= k {
            let xv = _mm512_loadu_ps(x.as_ptr().add(i));
            for (a, row) in acc.iter_mut().zip(&rows) {
                *a = _mm512_fmadd_ps(_mm512_loadu_ps(row.as_ptr().add(i)), xv, *a);
            }
            i += 16;
        }
        let mut out = acc.map(|a| _mm512_reduce_add_ps(a));
        for (o, row) in out.iter_mut().zip(&rows) {
            for j in i..k {
                *o += row[j] * x[j];
            }
        }
        out
    }

    /// [`super::weighted_rows`]: columns in groups of up to four vectors held in
    /// registers across all rows, the last `n % 16` columns plainly.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn weighted_rows_avx512(w: &[f32], values: &[f32], ld: usize, out: &mut [f32]) {
        let n = out.len();
        let mut c = 0;
        while c + 16 <= n {
            let vecs = ((n - c) / 16).min(4);
            let mut acc = [_mm512_setzero_ps(); 4];
            for (j, &p) in w.iter().enumerate() {
                let pv = _mm512_set1_ps(p);
                let row = values.as_ptr().add(j * ld + c);
                for (i, a) in acc.iter_mut().enumerate().take(vecs) {
                    *a = _mm512_fmadd_ps(pv, _mm512_loadu_ps(row.add(16 * i)), *a);
                }
            }
            for (i, a) in acc.iter().enumerate().take(vecs) {
                _mm512_storeu_ps(out.as_mut_ptr().add(c + 16 * i), *a);
            }
            c += 16 * vecs;
        }
        weighted_columns(w, values, ld, out, c);
    }

    /// [`super::weighted_rows`] in 8-wide vectors.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn weighted_rows_avx2(w: &[f32], values: &[f32], ld: usize, out: &mut [f32]) {
        let n = out.len();
        let mut c = 0;
        while c + 8 <= n {
            let vecs = ((n - c) / 8).min(4);
            let mut acc = [_mm256_setzero_ps(); 4];
            for (j, &p) in w.iter().enumerate() {
                let pv = _mm256_set1_ps(p);
                let row = values.as_ptr().add(j * ld + c);
                for (i, a) in acc.iter_mut().enumerate().take(vecs) {
                    *a = _mm256_fmadd_ps(pv, _mm256_loadu_ps(row.add(8 * i)), *a);
                }
            }
            for (i, a) in acc.iter().enumerate().take(vecs) {
                _mm256_storeu_ps(out.as_mut_ptr().add(c + 8 * i), *a);
            }
            c += 8 * vecs;
        }
        weighted_columns(w, values, ld, out, c);
    }

    /// Columns `from..` of [`super::weighted_rows`], one at a time.
    fn weighted_columns(w: &[f32], values: &[f32], ld: usize, out: &mut [f32], from: usize) {
        for (c, o) in out.iter_mut().enumerate().skip(from) {
            *o = w
                .iter()
                .enumerate()
                .map(|(j, &p)| p * values[j * ld + c])
                .sum();
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum256(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot4_f16_avx2(rows: [&[u16]; 4], x: &[f32]) -> [f32; 4] {
        let k = x.len();
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 8 <= k {
            let xv = _mm256_loadu_ps(x.as_ptr().add(i));
            for (a, row) in acc.iter_mut().zip(&rows) {
                let w = _mm256_cvtph_ps(_mm_loadu_si128(row.as_ptr().add(i).cast()));
                *a = _mm256_fmadd_ps(w, xv, *a);
            }
            i += 8;
        }
        let mut out = acc.map(|a| hsum256(a));
        for (o, row) in out.iter_mut().zip(&rows) {
            for j in i..k {
                *o += half::f16::from_bits(row[j]).to_f32() * x[j];
            }
        }
        out
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot4_f32_avx2(rows: [&[f32]; 4], x: &[f32]) -> [f32; 4] {
        let k = x.len();
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 8 <= k {
            let xv = _mm256_loadu_ps(x.as_ptr().add(i));
            for (a, row) in acc.iter_mut().zip(&rows) {
                *a = _mm256_fmadd_ps(_mm256_loadu_ps(row.as_ptr().add(i)), xv, *a);
            }
            i += 8;
        }
        let mut out = acc.map(|a| hsum256(a));
        for (o, row) in out.iter_mut().zip(&rows) {
            for j in i..k {
                *o += row[j] * x[j];
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
