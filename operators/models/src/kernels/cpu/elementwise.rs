//! Element-wise kernels over f32 slices, in parallel chunks on rayon's pool.

use pulp::Simd;
use rayon::prelude::*;

use super::simd;

/// Elements per parallel work item: large enough that scheduling costs nothing, small enough
/// that every core gets several.
const CHUNK: usize = 16 * 1024;

/// GELU with the tanh approximation, in place: `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`,
/// computed as `x / (1 + e^(−2u))`, the same value without tanh's cancellation near 0.
pub fn gelu_tanh(xs: &mut [f32]) {
    xs.par_chunks_mut(CHUNK).for_each(|chunk| pulp::Arch::new().dispatch(GeluTanh(chunk)));
}

/// `√(2/π)`.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_CUBIC: f32 = 0.044_715;

struct GeluTanh<'a>(&'a mut [f32]);

impl pulp::WithSimd for GeluTanh<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let (vectors, tail) = S::as_mut_simd_f32s(self.0);
        let minus_two_k = simd.splat_f32s(-2.0 * SQRT_2_OVER_PI);
        let (cubic, one) = (simd.splat_f32s(GELU_CUBIC), simd.splat_f32s(1.0));
        for v in vectors {
            let x = *v;
            let inner = simd.mul_add_f32s(simd.mul_f32s(cubic, x), x, one); // 1 + 0.044715·x²
            let e = simd::exp_vector(simd, simd.mul_f32s(minus_two_k, simd.mul_f32s(inner, x)));
            *v = simd.div_f32s(x, simd.add_f32s(one, e));
        }
        for x in tail {
            *x = gelu_tanh_one(*x);
        }
    }
}

/// The gradient through [`gelu_tanh`], in place on `grad`: `grad · gelu'(x)` with
/// `gelu'(x) = σ + 2x·σ(1 − σ)·√(2/π)·(1 + 3·0.044715·x²)`, `σ = sigmoid(2u)` (so that
/// `0.5·(1 + tanh u) = σ` and `1 − tanh² u = 4σ(1 − σ)`).
pub fn gelu_tanh_backward(x: &[f32], grad: &mut [f32]) {
    assert_eq!(x.len(), grad.len(), "gelu_tanh_backward: x and its gradient differ in length");
    grad.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(grad, x)| pulp::Arch::new().dispatch(GeluTanhBackward { x, grad }));
}

struct GeluTanhBackward<'a> {
    x: &'a [f32],
    grad: &'a mut [f32],
}

impl pulp::WithSimd for GeluTanhBackward<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let (grads, grad_tail) = S::as_mut_simd_f32s(self.grad);
        let (xs, x_tail) = S::as_simd_f32s(self.x);
        let (k, cubic, one, two) =
            (simd.splat_f32s(SQRT_2_OVER_PI), simd.splat_f32s(GELU_CUBIC), simd.splat_f32s(1.0), simd.splat_f32s(2.0));
        let (three_cubic, minus_two_k) = (simd.splat_f32s(3.0 * GELU_CUBIC), simd.splat_f32s(-2.0 * SQRT_2_OVER_PI));
        for (g, &x) in grads.iter_mut().zip(xs) {
            let x2 = simd.mul_f32s(x, x);
            let inner = simd.mul_add_f32s(cubic, x2, one); // 1 + 0.044715·x²
            let sigma = simd.div_f32s(one, simd.add_f32s(one, simd::exp_vector(simd, simd.mul_f32s(minus_two_k, simd.mul_f32s(inner, x)))));
            let du = simd.mul_f32s(k, simd.mul_add_f32s(three_cubic, x2, one)); // u'(x)
            let slope = simd.mul_f32s(simd.mul_f32s(two, x), simd.mul_f32s(simd.mul_f32s(sigma, simd.sub_f32s(one, sigma)), du));
            *g = simd.mul_f32s(*g, simd.add_f32s(sigma, slope));
        }
        for (g, &x) in grad_tail.iter_mut().zip(x_tail) {
            *g *= gelu_tanh_slope(x);
        }
    }
}

#[inline(always)]
fn gelu_tanh_slope(x: f32) -> f32 {
    let sigma = 1.0 / (1.0 + simd::exp(-2.0 * SQRT_2_OVER_PI * x * (GELU_CUBIC * x).mul_add(x, 1.0)));
    let du = SQRT_2_OVER_PI * (3.0 * GELU_CUBIC * x).mul_add(x, 1.0);
    sigma + 2.0 * x * sigma * (1.0 - sigma) * du
}

#[inline(always)]
fn gelu_tanh_one(x: f32) -> f32 {
    let u = SQRT_2_OVER_PI * x * (GELU_CUBIC * x).mul_add(x, 1.0);
    x / (1.0 + simd::exp(-2.0 * u))
}

/// FLUX's rotary embedding: `x` is `[rows, heads, dim]` (rows = batch × tokens) with the
/// rotated pairs interleaved along `dim`; `cos` and `sin` are `[rows, dim / 2]`, shared by the
/// heads. Pair `(a, b)` becomes `(cos·a − sin·b, sin·a + cos·b)`.
pub fn rope(x: &[f32], cos: &[f32], sin: &[f32], heads: usize, dim: usize) -> Vec<f32> {
    let half = dim / 2;
    assert_eq!(dim % 2, 0, "rope: the head dimension {dim} is odd");
    assert_eq!(cos.len(), sin.len(), "rope: cos and sin differ in length");
    assert_eq!(x.len() / (heads * dim) * half, cos.len(), "rope: {} tables for {} values of {heads} heads × {dim}", cos.len(), x.len());
    let mut out = vec![0.0f32; x.len()];
    out.par_chunks_mut(heads * dim).zip(x.par_chunks(heads * dim)).enumerate().for_each(|(row, (out, x))| {
        let (cos, sin) = (&cos[row * half..][..half], &sin[row * half..][..half]);
        for (out, x) in out.chunks_exact_mut(dim).zip(x.chunks_exact(dim)) {
            for (((out, x), &c), &s) in out.chunks_exact_mut(2).zip(x.chunks_exact(2)).zip(cos).zip(sin) {
                out[0] = c * x[0] - s * x[1];
                out[1] = s * x[0] + c * x[1];
            }
        }
    });
    out
}

/// Rows per parallel work item of the row-wise kernels.
const ROWS_PER_ITEM: usize = 16;

/// A `[batch · rows, dim]` tensor's rows with a `[batch, dim]` vector per batch item.
#[derive(Debug, Clone, Copy)]
pub struct PerBatchRows {
    /// Rows per batch item.
    pub rows: usize,
    pub dim: usize,
}

/// FLUX's modulated LayerNorm: each row of `x` normalised (no affine, statistics in f32, `eps`
/// added to the biased variance), then `· (1 + scale) + shift` with its batch item's `shift`
/// and `scale`, in place.
pub fn layer_norm_modulate(x: &mut [f32], shift: &[f32], scale: &[f32], layout: PerBatchRows, eps: f32) {
    let PerBatchRows { rows, dim } = layout;
    assert_eq!(shift.len(), scale.len(), "layer_norm_modulate: shift and scale differ in length");
    if x.is_empty() {
        return;
    }
    assert_eq!(x.len() / (rows * dim) * dim, shift.len(), "layer_norm_modulate: one shift per batch item and channel");
    x.par_chunks_mut(ROWS_PER_ITEM * dim).enumerate().for_each(|(item, block)| {
        for (i, row) in block.chunks_exact_mut(dim).enumerate() {
            let batch = (item * ROWS_PER_ITEM + i) / rows;
            let (add, mul) = (&shift[batch * dim..][..dim], &scale[batch * dim..][..dim]);
            pulp::Arch::new().dispatch(NormRow { row, mul, add, one_plus: true, eps });
        }
    });
}

/// LayerNorm over rows of `dim` values, in place, statistics in f32: `normed · weight + bias`.
pub fn layer_norm(x: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    let dim = weight.len();
    assert_eq!(bias.len(), dim, "layer_norm: weight and bias differ in length");
    assert_eq!(x.len() % dim.max(1), 0, "layer_norm: {} values are not rows of {dim}", x.len());
    x.par_chunks_mut(ROWS_PER_ITEM * dim.max(1)).for_each(|block| {
        for row in block.chunks_exact_mut(dim.max(1)) {
            pulp::Arch::new().dispatch(NormRow { row, mul: weight, add: bias, one_plus: false, eps });
        }
    });
}

/// One row normalised, then `· mul + add` (or `· (1 + mul) + add`).
struct NormRow<'a> {
    row: &'a mut [f32],
    mul: &'a [f32],
    add: &'a [f32],
    /// Multiply by `1 + mul` (FLUX's modulation scale) instead of `mul`.
    one_plus: bool,
    eps: f32,
}

impl pulp::WithSimd for NormRow<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let (mean, inverse_std) = simd::mean_and_inverse_std(simd, self.row, self.eps);
        let offset = if self.one_plus { 1.0 } else { 0.0 };
        let (xs, x_tail) = S::as_mut_simd_f32s(self.row);
        let (adds, add_tail) = S::as_simd_f32s(self.add);
        let (muls, mul_tail) = S::as_simd_f32s(self.mul);
        let (mean_v, inverse_v, offset_v) = (simd.splat_f32s(mean), simd.splat_f32s(inverse_std), simd.splat_f32s(offset));
        for ((x, &add), &mul) in xs.iter_mut().zip(adds).zip(muls) {
            let normed = simd.mul_f32s(simd.sub_f32s(*x, mean_v), inverse_v);
            *x = simd.mul_add_f32s(normed, simd.add_f32s(mul, offset_v), add);
        }
        for ((x, &add), &mul) in x_tail.iter_mut().zip(add_tail).zip(mul_tail) {
            *x = ((*x - mean) * inverse_std).mul_add(mul + offset, add);
        }
    }
}

/// GELU in its exact form, in place: `0.5·x·(1 + erf(x/√2))`. `1 + erf(z)` is computed as
/// `2 − erfc(z)` or, for `z < 0`, `erfc(|z|)` directly, which avoids the cancellation of
/// `1 + erf(z)` near −1; erfc by Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5e−7, so the
/// GELU's absolute error is at most 0.75e−7·|x|).
pub fn gelu_erf(xs: &mut [f32]) {
    xs.par_chunks_mut(CHUNK).for_each(|chunk| pulp::Arch::new().dispatch(GeluErf(chunk)));
}

const ERFC_P: f32 = 0.327_591_1;
/// A&S 7.1.26 coefficients a5 … a1, for Horner's rule.
const ERFC_A: [f32; 5] = [1.061_405_4, -1.453_152_1, 1.421_413_8, -0.284_496_74, 0.254_829_6];

struct GeluErf<'a>(&'a mut [f32]);

impl pulp::WithSimd for GeluErf<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let (vectors, tail) = S::as_mut_simd_f32s(self.0);
        let (half, one, two) = (simd.splat_f32s(0.5), simd.splat_f32s(1.0), simd.splat_f32s(2.0));
        let (inv_sqrt2, p, zero) = (simd.splat_f32s(std::f32::consts::FRAC_1_SQRT_2), simd.splat_f32s(ERFC_P), simd.splat_f32s(0.0));
        for v in vectors {
            let x = *v;
            let z = simd.abs_f32s(simd.mul_f32s(x, inv_sqrt2));
            let t = simd.div_f32s(one, simd.mul_add_f32s(p, z, one));
            let poly = ERFC_A[1..].iter().fold(simd.splat_f32s(ERFC_A[0]), |acc, &a| simd.mul_add_f32s(acc, t, simd.splat_f32s(a)));
            let neg_z2 = simd.sub_f32s(zero, simd.mul_f32s(z, z));
            let erfc = simd.mul_f32s(simd.mul_f32s(poly, t), simd::exp_vector(simd, neg_z2));
            let one_plus_erf = simd.select_f32s(simd.less_than_f32s(x, zero), erfc, simd.sub_f32s(two, erfc));
            *v = simd.mul_f32s(simd.mul_f32s(half, x), one_plus_erf);
        }
        for x in tail {
            *x = gelu_erf_one(*x);
        }
    }
}

#[inline(always)]
fn gelu_erf_one(x: f32) -> f32 {
    let z = (x * std::f32::consts::FRAC_1_SQRT_2).abs();
    let t = 1.0 / ERFC_P.mul_add(z, 1.0);
    let poly = ERFC_A[1..].iter().fold(ERFC_A[0], |acc, &a| acc.mul_add(t, a));
    let erfc = poly * t * simd::exp(-z * z);
    0.5 * x * if x < 0.0 { erfc } else { 2.0 - erfc }
}

/// A gated residual, in place: `x += gate · y`, with its batch item's `gate` for each row.
pub fn add_gated(x: &mut [f32], gate: &[f32], y: &[f32], layout: PerBatchRows) {
    let PerBatchRows { rows, dim } = layout;
    assert_eq!(x.len(), y.len(), "add_gated: x and y differ in length");
    if x.is_empty() {
        return;
    }
    assert_eq!(x.len() / (rows * dim) * dim, gate.len(), "add_gated: one gate per batch item and channel");
    x.par_chunks_mut(ROWS_PER_ITEM * dim).zip(y.par_chunks(ROWS_PER_ITEM * dim)).enumerate().for_each(|(item, (xs, ys))| {
        for (i, (x, y)) in xs.chunks_exact_mut(dim).zip(ys.chunks_exact(dim)).enumerate() {
            let gate = &gate[(item * ROWS_PER_ITEM + i) / rows * dim..][..dim];
            pulp::Arch::new().dispatch(AddGated { x, gate, y });
        }
    });
}

struct AddGated<'a> {
    x: &'a mut [f32],
    gate: &'a [f32],
    y: &'a [f32],
}

impl pulp::WithSimd for AddGated<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let (xs, x_tail) = S::as_mut_simd_f32s(self.x);
        let (gates, gate_tail) = S::as_simd_f32s(self.gate);
        let (ys, y_tail) = S::as_simd_f32s(self.y);
        for ((x, &g), &y) in xs.iter_mut().zip(gates).zip(ys) {
            *x = simd.mul_add_f32s(g, y, *x);
        }
        for ((x, &g), &y) in x_tail.iter_mut().zip(gate_tail).zip(y_tail) {
            *x = g.mul_add(y, *x);
        }
    }
}

/// What follows a normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterNorm {
    Nothing,
    /// `y · sigmoid(y)`.
    Silu,
}

/// GroupNorm over `[batch, channels, plane]` values in place (statistics in f32 over each
/// group's `channels / groups` planes), then `· weight[c] + bias[c]` and `after`.
pub fn group_norm(x: &mut [f32], weight: &[f32], bias: &[f32], groups: usize, plane: usize, eps: f32, after: AfterNorm) {
    let channels = weight.len();
    assert!(groups > 0 && channels.is_multiple_of(groups), "group_norm: {channels} channels do not split into {groups} groups");
    assert_eq!(bias.len(), channels, "group_norm: weight and bias differ in length");
    assert_eq!(x.len() % (channels * plane).max(1), 0, "group_norm: {} values are not images of {channels} × {plane}", x.len());
    let per_group = channels / groups;
    x.par_chunks_mut((per_group * plane).max(1)).enumerate().for_each(|(item, values)| {
        let first_channel = item % groups * per_group;
        let (weight, bias) = (&weight[first_channel..][..per_group], &bias[first_channel..][..per_group]);
        pulp::Arch::new().dispatch(NormGroup { values, weight, bias, plane, eps, after });
    });
}

struct NormGroup<'a> {
    values: &'a mut [f32],
    weight: &'a [f32],
    bias: &'a [f32],
    plane: usize,
    eps: f32,
    after: AfterNorm,
}

impl pulp::WithSimd for NormGroup<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let (mean, inverse_std) = simd::mean_and_inverse_std(simd, self.values, self.eps);
        for ((channel, &w), &b) in self.values.chunks_exact_mut(self.plane).zip(self.weight).zip(self.bias) {
            // y = x · (w / σ) + (b − mean · w / σ)
            let (mul, add) = (w * inverse_std, b - mean * w * inverse_std);
            let (vectors, tail) = S::as_mut_simd_f32s(channel);
            let (mul_v, add_v, one, zero) = (simd.splat_f32s(mul), simd.splat_f32s(add), simd.splat_f32s(1.0), simd.splat_f32s(0.0));
            for v in vectors {
                let y = simd.mul_add_f32s(*v, mul_v, add_v);
                *v = match self.after {
                    AfterNorm::Nothing => y,
                    AfterNorm::Silu => simd.div_f32s(y, simd.add_f32s(one, simd::exp_vector(simd, simd.sub_f32s(zero, y)))),
                };
            }
            for x in tail {
                let y = x.mul_add(mul, add);
                *x = match self.after {
                    AfterNorm::Nothing => y,
                    AfterNorm::Silu => y / (1.0 + simd::exp(-y)),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_tanh_matches_the_tanh_formula_in_vectors_and_tail() {
        let xs: Vec<f32> = (0..2_000).map(|i| (i as f32 - 1_000.0) / 97.0).chain([-30.0, 30.0, 0.0, -1e-6]).collect();
        let mut ys = xs.clone();
        gelu_tanh(&mut ys);
        for (&x, &y) in xs.iter().zip(&ys) {
            let x64 = x as f64;
            let want = 0.5 * x64 * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x64 + 0.044_715 * x64.powi(3))).tanh());
            assert!((y as f64 - want).abs() <= 2e-6 * want.abs().max(1.0), "gelu({x}) = {y}, want {want}");
        }
    }

    #[test]
    fn gelu_tanh_backward_is_the_derivative() {
        let xs: Vec<f32> = (0..1_000).map(|i| (i as f32 - 500.0) / 61.0).chain([-30.0, 30.0, 0.0]).collect();
        let mut grads: Vec<f32> = xs.iter().map(|x| 1.0 + x / 10.0).collect();
        gelu_tanh_backward(&xs, &mut grads);
        let gelu = |x: f64| 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044_715 * x.powi(3))).tanh());
        for (&x, &g) in xs.iter().zip(&grads) {
            let x64 = x as f64;
            let slope = (gelu(x64 + 1e-6) - gelu(x64 - 1e-6)) / 2e-6;
            let want = (1.0 + x64 / 10.0) * slope;
            assert!((g as f64 - want).abs() < 1e-5 * want.abs().max(1.0), "gelu'({x}) · grad = {g}, want {want}");
        }
    }

    #[test]
    fn layer_norm_modulate_and_add_gated_use_each_rows_batch_item() {
        // 2 batch items × 3 rows × 19 channels (a vector tail).
        let layout = PerBatchRows { rows: 3, dim: 19 };
        let x: Vec<f32> = (0..2 * 3 * 19).map(|i| ((i * 37 % 23) as f32 - 11.0) / 4.0).collect();
        let shift: Vec<f32> = (0..2 * 19).map(|i| i as f32 / 10.0).collect();
        let scale: Vec<f32> = (0..2 * 19).map(|i| 1.0 - i as f32 / 20.0).collect();
        let mut got = x.clone();
        layer_norm_modulate(&mut got, &shift, &scale, layout, 1e-6);
        for (r, (row, out)) in x.chunks(19).zip(got.chunks(19)).enumerate() {
            let b = r / 3;
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / 19.0;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / 19.0;
            for (c, (&v, &o)) in row.iter().zip(out).enumerate() {
                let want = (v as f64 - mean) / (var + 1e-6).sqrt() * (1.0 + scale[b * 19 + c] as f64) + shift[b * 19 + c] as f64;
                assert!((o as f64 - want).abs() < 1e-5, "row {r} channel {c}: {o} != {want}");
            }
        }
        let y: Vec<f32> = x.iter().map(|v| v * 3.0 - 1.0).collect();
        let mut sum = x.clone();
        add_gated(&mut sum, &scale, &y, layout);
        for (i, ((&s, &a), &b)) in sum.iter().zip(&x).zip(&y).enumerate() {
            assert_eq!(s, scale[i / (3 * 19) * 19 + i % 19].mul_add(b, a));
        }
    }

    #[test]
    fn gelu_erf_matches_the_erf_formula_in_vectors_and_tail() {
        let xs: Vec<f32> = (0..2_000).map(|i| (i as f32 - 1_000.0) / 97.0).chain([-30.0, 30.0, 0.0]).collect();
        let mut ys = xs.clone();
        gelu_erf(&mut ys);
        for (&x, &y) in xs.iter().zip(&ys) {
            let want = 0.5 * x as f64 * (1.0 + libm_erf(x as f64 / std::f64::consts::SQRT_2));
            assert!((y as f64 - want).abs() <= 2e-7 * x.abs().max(1.0) as f64, "gelu({x}) = {y}, want {want}");
        }
    }

    /// erf by its series (|z| < 3) and its continued fraction beyond: exact enough for f32 checks.
    fn libm_erf(z: f64) -> f64 {
        if z.abs() > 3.0 {
            let erfc = (-z * z).exp() / (z.abs() * std::f64::consts::PI.sqrt()) * (1.0 - 1.0 / (2.0 * z * z) + 3.0 / (4.0 * z.powi(4)));
            return z.signum() * (1.0 - erfc);
        }
        let (mut term, mut sum) = (z, z);
        for n in 1..200 {
            term *= -z * z / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn group_norm_then_silu_matches_the_definition() {
        // 2 images × 6 channels × 21 values, 3 groups of 2 channels.
        let (channels, plane, groups) = (6, 21, 3);
        let x: Vec<f32> = (0..2 * channels * plane).map(|i| ((i * 29 % 31) as f32 - 15.0) / 4.0).collect();
        let weight: Vec<f32> = (0..channels).map(|c| 0.5 + c as f32 / 4.0).collect();
        let bias: Vec<f32> = (0..channels).map(|c| c as f32 / 3.0 - 1.0).collect();
        for then in [AfterNorm::Nothing, AfterNorm::Silu] {
            let mut got = x.clone();
            group_norm(&mut got, &weight, &bias, groups, plane, 1e-6, then);
            for (g, (values, out)) in x.chunks(2 * plane).zip(got.chunks(2 * plane)).enumerate() {
                let mean = values.iter().map(|&v| v as f64).sum::<f64>() / values.len() as f64;
                let var = values.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / values.len() as f64;
                for (i, (&v, &o)) in values.iter().zip(out).enumerate() {
                    let c = g % groups * 2 + i / plane;
                    let y = (v as f64 - mean) / (var + 1e-6).sqrt() * weight[c] as f64 + bias[c] as f64;
                    let want = if then == AfterNorm::Silu { y / (1.0 + (-y).exp()) } else { y };
                    assert!((o as f64 - want).abs() < 1e-5, "{then:?} group {g} value {i}: {o} != {want}");
                }
            }
        }
    }

    #[test]
    fn rope_rotates_each_pair_by_its_rows_angle_for_every_head() {
        // 2 rows, 2 heads, dim 4: angles per (row, pair).
        let angles = [0.0f32, 0.5, 1.0, -2.0];
        let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
        let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
        let x: Vec<f32> = (0..16).map(|i| i as f32 + 1.0).collect();
        let out = rope(&x, &cos, &sin, 2, 4);
        for row in 0..2 {
            for head in 0..2 {
                for pair in 0..2 {
                    let at = row * 8 + head * 4 + pair * 2;
                    let (a, b) = (x[at], x[at + 1]);
                    let (c, s) = (cos[row * 2 + pair], sin[row * 2 + pair]);
                    assert_eq!([out[at], out[at + 1]], [c * a - s * b, s * a + c * b]);
                }
            }
        }
    }
}
