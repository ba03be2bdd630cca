//! Vector building blocks of the CPU kernels, in safe Rust over pulp's portable vectors.
//!
//! Each function takes the instruction set (`S: Simd`) it was dispatched to and is
//! `#[inline(always)]`, so that inside `pulp::Arch::dispatch` (AVX2 + FMA on a CPU that has
//! them, plain scalar code otherwise) its vector operations become single instructions.

use pulp::Simd;

/// Vectors per row of the matrix-product register tile: two, 16 columns with AVX2.
pub const TILE_VECTORS: usize = 2;
/// Rows of the register tile: 6 × 2 accumulators + 2 loads + 1 broadcast fill AVX2's 16
/// registers.
pub const TILE_ROWS: usize = 6;

/// Whether a product overwrites its destination or adds to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accumulate {
    No,
    Yes,
}

/// One matrix product `c[m × n] = a[m × k] · b[k × n]` (or `+=`, by `accumulate`), all
/// row-major: `ldc`, `lda` and `ldb` are the row strides.
#[derive(Debug, Clone, Copy)]
pub struct Matmul<'a> {
    pub ldc: usize,
    pub a: &'a [f32],
    pub lda: usize,
    pub b: &'a [f32],
    pub ldb: usize,
    /// `[m, n, k]`.
    pub dims: [usize; 3],
    pub accumulate: Accumulate,
}

impl Matmul<'_> {
    /// Computes the product into `c`: `a` packed once, `b` one tile of columns at a time
    /// (for operands that fit in cache; [`super::gemm`] blocks larger ones).
    #[inline(always)]
    pub fn run<S: Simd>(&self, simd: S, c: &mut [f32]) {
        let [m, n, k] = self.dims;
        let width = tile_width::<S>();
        let panels = m.div_ceil(TILE_ROWS);
        let mut a_packed = vec![0.0f32; panels * k * TILE_ROWS];
        for (panel, packed) in a_packed.chunks_exact_mut(k * TILE_ROWS).enumerate() {
            let first = panel * TILE_ROWS;
            pack_a_panel(packed, &self.a[first * self.lda..], self.lda, TILE_ROWS.min(m - first), k);
        }
        let mut b_tile = vec![[simd.splat_f32s(0.0); TILE_VECTORS]; k];
        for col in (0..n).step_by(width) {
            let cols = width.min(n - col);
            pack_b_tile::<S>(&mut b_tile, self.b, self.ldb, col, cols);
            for (panel, a_panel) in a_packed.chunks_exact(k * TILE_ROWS).enumerate() {
                let first = panel * TILE_ROWS;
                let sums = tile_product(simd, a_panel, &b_tile);
                let target = TileTarget { ldc: self.ldc, rows: TILE_ROWS.min(m - first), col, cols, accumulate: self.accumulate };
                target.store(simd, &mut c[first * self.ldc..], sums);
            }
        }
    }
}

/// Columns of one register tile for instruction set `S`.
#[inline(always)]
pub fn tile_width<S: Simd>() -> usize {
    TILE_VECTORS * S::F32_LANES
}

/// Copies `rows` (at most [`TILE_ROWS`]) rows of `k` values of `a` (row stride `lda`) into
/// `dst` as `[k][TILE_ROWS]`, zero-padding missing rows: the order the register tile reads.
#[inline(always)]
pub fn pack_a_panel(dst: &mut [f32], a: &[f32], lda: usize, rows: usize, k: usize) {
    let dst = &mut dst[..k * TILE_ROWS];
    if rows < TILE_ROWS {
        dst.fill(0.0);
    }
    for r in 0..rows {
        for (p, &x) in a[r * lda..][..k].iter().enumerate() {
            dst[p * TILE_ROWS + r] = x;
        }
    }
}

/// Copies columns `col..col + cols` (at most one tile) of the first `dst.len()` rows of `b`
/// (row stride `ldb`) into `dst` as one pair of vectors per row, zero-padding missing columns.
#[inline(always)]
pub fn pack_b_tile<S: Simd>(dst: &mut [[S::f32s; TILE_VECTORS]], b: &[f32], ldb: usize, col: usize, cols: usize) {
    let width = tile_width::<S>();
    let mut padded = [0.0f32; 64];
    for (packed, b_row) in dst.iter_mut().zip(b.chunks(ldb)) {
        let source = if cols == width {
            &b_row[col..col + width]
        } else {
            padded[..cols].copy_from_slice(&b_row[col..col + cols]);
            &padded[..width]
        };
        let (vectors, _) = S::as_simd_f32s(source);
        *packed = std::array::from_fn(|v| vectors[v]);
    }
}

/// One register tile of the product: a packed `[k][TILE_ROWS]` panel times `k` packed vector
/// pairs.
#[inline(always)]
pub fn tile_product<S: Simd>(simd: S, a_panel: &[f32], b_tile: &[[S::f32s; TILE_VECTORS]]) -> [[S::f32s; TILE_VECTORS]; TILE_ROWS] {
    let mut sums = [[simd.splat_f32s(0.0); TILE_VECTORS]; TILE_ROWS];
    for (a_col, b_pair) in a_panel.chunks_exact(TILE_ROWS).zip(b_tile) {
        let a_col: &[f32; TILE_ROWS] = a_col.try_into().expect("a column of the panel");
        for (sum, &x) in sums.iter_mut().zip(a_col) {
            let x = simd.splat_f32s(x);
            for (s, &b) in sum.iter_mut().zip(b_pair) {
                *s = simd.mul_add_f32s(x, b, *s);
            }
        }
    }
    sums
}

/// Where a register tile goes: `rows` rows from the start of `c` (row stride `ldc`), columns
/// `col..col + cols`.
#[derive(Debug, Clone, Copy)]
pub struct TileTarget {
    pub ldc: usize,
    pub rows: usize,
    pub col: usize,
    pub cols: usize,
    pub accumulate: Accumulate,
}

impl TileTarget {
    /// Writes (or adds) the tile. The accumulators arrive by value: a reference to them would
    /// make the compiler keep them in memory and store all twelve on every step of the product.
    #[inline(always)]
    pub fn store<S: Simd>(&self, simd: S, c: &mut [f32], sums: [[S::f32s; TILE_VECTORS]; TILE_ROWS]) {
        let width = tile_width::<S>();
        let mut padded = [0.0f32; 64];
        for (r, sum) in sums.into_iter().enumerate().take(self.rows) {
            let c_row = &mut c[r * self.ldc + self.col..][..self.cols];
            if self.cols == width {
                let (c_vectors, _) = S::as_mut_simd_f32s(c_row);
                for (c, s) in c_vectors.iter_mut().zip(sum) {
                    *c = match self.accumulate {
                        Accumulate::No => s,
                        Accumulate::Yes => simd.add_f32s(*c, s),
                    };
                }
            } else {
                let (vectors, _) = S::as_mut_simd_f32s(&mut padded[..width]);
                for (v, s) in vectors.iter_mut().zip(sum) {
                    *v = s;
                }
                for (c, &s) in c_row.iter_mut().zip(&padded[..self.cols]) {
                    *c = match self.accumulate {
                        Accumulate::No => s,
                        Accumulate::Yes => *c + s,
                    };
                }
            }
        }
    }
}

/// The largest value of a non-empty slice (NaN-free input).
#[inline(always)]
pub fn max<S: Simd>(simd: S, xs: &[f32]) -> f32 {
    let (vectors, tail) = S::as_simd_f32s(xs);
    let mut best = simd.splat_f32s(f32::NEG_INFINITY);
    for &v in vectors {
        best = simd.max_f32s(best, v);
    }
    tail.iter().fold(simd.reduce_max_f32s(best), |m, &x| m.max(x))
}

/// The sum of a slice.
#[inline(always)]
pub fn sum<S: Simd>(simd: S, xs: &[f32]) -> f32 {
    let (vectors, tail) = S::as_simd_f32s(xs);
    let total = vectors.iter().fold(simd.splat_f32s(0.0), |t, &v| simd.add_f32s(t, v));
    simd.reduce_sum_f32s(total) + tail.iter().sum::<f32>()
}

/// `Σ (x − mean)²` over a slice.
#[inline(always)]
pub fn sum_squared_deviations<S: Simd>(simd: S, xs: &[f32], mean: f32) -> f32 {
    let (vectors, tail) = S::as_simd_f32s(xs);
    let mean_v = simd.splat_f32s(mean);
    let total = vectors.iter().fold(simd.splat_f32s(0.0), |t, &v| {
        let d = simd.sub_f32s(v, mean_v);
        simd.mul_add_f32s(d, d, t)
    });
    simd.reduce_sum_f32s(total) + tail.iter().map(|&x| (x - mean) * (x - mean)).sum::<f32>()
}

/// A slice's mean and `1/√(variance + eps)` (biased variance, two passes): a normalisation's
/// statistics.
#[inline(always)]
pub fn mean_and_inverse_std<S: Simd>(simd: S, xs: &[f32], eps: f32) -> (f32, f32) {
    let n = xs.len() as f32;
    let mean = sum(simd, xs) / n;
    (mean, 1.0 / (sum_squared_deviations(simd, xs, mean) / n + eps).sqrt())
}

/// Replaces every `x` by `exp((x − shift) · scale)` and returns their sum.
#[inline(always)]
pub fn exp_shifted_in_place<S: Simd>(simd: S, xs: &mut [f32], shift: f32, scale: f32) -> f32 {
    let (vectors, tail) = S::as_mut_simd_f32s(xs);
    let (shift_v, scale_v) = (simd.splat_f32s(shift), simd.splat_f32s(scale));
    let mut total = simd.splat_f32s(0.0);
    for v in vectors {
        *v = exp_vector(simd, simd.mul_f32s(simd.sub_f32s(*v, shift_v), scale_v));
        total = simd.add_f32s(total, *v);
    }
    let mut sum = simd.reduce_sum_f32s(total);
    for x in tail {
        *x = exp((*x - shift) * scale);
        sum += *x;
    }
    sum
}

/// Adding 1.5 · 2²³ rounds a float of magnitude below 2²² to an integer (ties to even).
const ROUND: f32 = 12_582_912.0;
/// Cephes' `expf` coefficients for `eʳ` on `|r| ≤ ln 2 / 2`, highest degree first.
const EXP_POLY: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5];
/// ln 2 split in two, the high part exact in few bits, so `x − n·ln 2` loses nothing.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;

/// [`exp`] on a vector, the same steps.
#[inline(always)]
pub fn exp_vector<S: Simd>(simd: S, x: S::f32s) -> S::f32s {
    let x = simd.min_f32s(simd.max_f32s(x, simd.splat_f32s(-87.0)), simd.splat_f32s(88.0));
    let rounded = simd.mul_add_f32s(x, simd.splat_f32s(std::f32::consts::LOG2_E), simd.splat_f32s(ROUND));
    let n = simd.sub_f32s(rounded, simd.splat_f32s(ROUND));
    let r = simd.mul_add_f32s(n, simd.splat_f32s(-LN2_HI), x);
    let r = simd.mul_add_f32s(n, simd.splat_f32s(-LN2_LO), r);
    let p = EXP_POLY[1..].iter().fold(simd.splat_f32s(EXP_POLY[0]), |p, &c| simd.mul_add_f32s(p, r, simd.splat_f32s(c)));
    let er = simd.add_f32s(simd.mul_add_f32s(simd.mul_f32s(p, r), r, r), simd.splat_f32s(1.0));
    // `rounded` is 1.5 · 2²³ + n exactly, so its bits are those of 1.5 · 2²³ plus n: the
    // biased exponent n + 127, shifted into place, is 2ⁿ.
    let biased = simd.sub_u32s(simd.transmute_u32s_f32s(rounded), simd.splat_u32s(ROUND.to_bits() - 127));
    let two_n = simd.transmute_f32s_u32s(simd.wrapping_dyn_shl_u32s(biased, simd.splat_u32s(23)));
    simd.mul_f32s(er, two_n)
}

/// `eˣ` in f32 from arithmetic alone, as Cephes' `expf`: `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`,
/// `eʳ ≈ 1 + r + r²·p(r)` with `p` of degree 5, and `2ⁿ` built in the exponent bits. Within 2 ulp of the exact value on [−87, 88]; below
/// −87 it returns about 1.6e−38 instead of a smaller number or 0, and `x = −∞` gives the same.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = x.mul_add(std::f32::consts::LOG2_E, ROUND) - ROUND;
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    let p = EXP_POLY[1..].iter().fold(EXP_POLY[0], |p, &c| p.mul_add(r, c));
    let er = (p * r).mul_add(r, r) + 1.0;
    er * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `exp_vector` over a slice (its tail by the scalar `exp`).
    struct ExpOf<'a>(&'a [f32]);

    impl pulp::WithSimd for ExpOf<'_> {
        type Output = Vec<f32>;

        #[inline(always)]
        fn with_simd<S: Simd>(self, simd: S) -> Vec<f32> {
            let mut out = self.0.to_vec();
            let (vectors, tail) = S::as_mut_simd_f32s(&mut out);
            vectors.iter_mut().for_each(|v| *v = exp_vector(simd, *v));
            tail.iter_mut().for_each(|x| *x = exp(*x));
            out
        }
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_exact_value_in_scalar_and_vector_form() {
        let xs: Vec<f32> = (0..=175_000).map(|i| (-87.0 + i as f32 * 0.001).min(88.0)).collect();
        let vector = pulp::Arch::new().dispatch(ExpOf(&xs));
        for (name, ys) in [("scalar", xs.iter().map(|&x| exp(x)).collect::<Vec<_>>()), ("vector", vector)] {
            let (mut worst, mut at) = (0.0f64, 0.0f32);
            for (&x, &y) in xs.iter().zip(&ys) {
                let exact = (x as f64).exp();
                let ulp = (exact as f32).next_up() as f64 - exact as f32 as f64;
                let off = (y as f64 - exact).abs() / ulp;
                if off > worst {
                    (worst, at) = (off, x);
                }
            }
            assert!(worst <= 2.0, "{name} exp({at}) is {worst} ulp off");
        }
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NEG_INFINITY) < 1e-37 && exp(-1000.0) < 1e-37);
    }

    /// `c = a·b` by the definition.
    fn reference(a: &[f32], b: &[f32], [m, n, k]: [usize; 3]) -> Vec<f32> {
        (0..m).flat_map(|i| (0..n).map(move |j| (0..k).map(|p| a[i * k + p] as f64 * b[p * n + j] as f64).sum::<f64>() as f32)).collect()
    }

    /// A product run on the dispatched instruction set.
    struct Product<'a>(Matmul<'a>, &'a mut [f32]);

    impl pulp::WithSimd for Product<'_> {
        type Output = ();

        #[inline(always)]
        fn with_simd<S: Simd>(self, simd: S) {
            self.0.run(simd, self.1);
        }
    }

    /// `product` into `c`, with both the dispatched vectors and plain scalar code.
    fn run_both(product: Matmul, c: &[f32]) -> [Vec<f32>; 2] {
        let (mut vector, mut scalar) = (c.to_vec(), c.to_vec());
        pulp::Arch::new().dispatch(Product(product, &mut vector));
        product.run(pulp::Scalar::new(), &mut scalar);
        [vector, scalar]
    }

    #[test]
    fn matmul_matches_the_definition_for_every_leftover_of_the_register_tile() {
        for (m, n, k) in [(1, 1, 1), (5, 15, 3), (6, 16, 8), (7, 17, 9), (13, 40, 64), (11, 33, 1)] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 3.0).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 2.0).collect();
            let want = reference(&a, &b, [m, n, k]);
            let close = |c: &[f32], want: &[f32]| c.iter().zip(want).all(|(x, y)| (x - y).abs() <= 1e-4 * y.abs().max(1.0));
            let product = Matmul { ldc: n, a: &a, lda: k, b: &b, ldb: n, dims: [m, n, k], accumulate: Accumulate::No };
            for c in run_both(product, &vec![f32::NAN; m * n]) {
                assert!(close(&c, &want), "{m}×{n}×{k}: {c:?} != {want:?}");
            }
            let twice: Vec<f32> = want.iter().map(|x| 2.0 * x).collect();
            for c in run_both(Matmul { accumulate: Accumulate::Yes, ..product }, &want) {
                assert!(close(&c, &twice), "{m}×{n}×{k} accumulated");
            }
        }
    }

    #[test]
    fn matmul_respects_row_strides() {
        // a and b are the top-left corners of wider matrices; c is written into a wider one.
        let a = [1.0, 2.0, 99.0, 3.0, 4.0, 99.0];
        let b = [5.0, 6.0, 99.0, 7.0, 8.0, 99.0];
        let product = Matmul { ldc: 3, a: &a, lda: 3, b: &b, ldb: 3, dims: [2, 2, 2], accumulate: Accumulate::No };
        for c in run_both(product, &[0.0; 6]) {
            assert_eq!(c, [19.0, 22.0, 0.0, 43.0, 50.0, 0.0]);
        }
    }

    #[test]
    fn max_and_exp_shifted_cover_the_tail_of_a_slice() {
        let simd = pulp::Scalar::new();
        let xs: Vec<f32> = (0..37).map(|i| ((i * 11) % 37) as f32 / 10.0).collect();
        assert_eq!(max(simd, &xs), 3.6);
        let mut ys = xs.clone();
        let sum = exp_shifted_in_place(simd, &mut ys, 3.6, 0.5);
        let want: f64 = xs.iter().map(|&x| ((x as f64 - 3.6) * 0.5).exp()).sum();
        assert!((sum as f64 - want).abs() < 1e-5 * want, "{sum} != {want}");
        assert!((ys[36] as f64 - ((xs[36] as f64 - 3.6) * 0.5).exp()).abs() < 1e-6);
    }
}
