//! Attention on the CPU in one pass: `softmax(Q Kᵀ / √D) V` over f32 `[B, H, L, D]` slices,
//! without materialising the `L × L` scores.
//!
//! Each work item is one (batch, head, block of query rows). It walks the keys in tiles, keeps
//! the running maximum and sum of every row (the online softmax of FlashAttention) and rescales
//! its partial output when a row's maximum grows, so its memory is one tile of scores
//! (L2-resident) whatever the sequence length. Items run on rayon's pool: a 2,304-token FLUX
//! attention with 4 heads is 96 items, enough for every core; burn Flex's own attention runs the
//! heads one after another on one thread.

use rayon::prelude::*;

use pulp::Simd;

use super::simd::{self, Accumulate, Matmul};

/// Query rows per work item.
const BLOCK_Q: usize = 96;
/// Keys per tile: the tile's scores are `BLOCK_Q × BLOCK_KV` f32, 96 KiB.
const BLOCK_KV: usize = 256;

/// The sizes of one attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    pub batch: usize,
    pub heads: usize,
    pub seq_q: usize,
    pub seq_kv: usize,
    pub head_dim: usize,
    pub val_dim: usize,
}

/// Which keys each query sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mask {
    /// Every key.
    None,
    /// Query `i` sees keys `0..=i` (a text encoder's causal mask).
    Causal,
}

/// Scaled dot-product attention with scale `1/√head_dim`: `q` is `[B, H, seq_q, head_dim]`, `k`
/// `[B, H, seq_kv, head_dim]`, `v` `[B, H, seq_kv, val_dim]`, all contiguous; the result is
/// `[B, H, seq_q, val_dim]`.
pub fn attention(q: &[f32], k: &[f32], v: &[f32], shape: AttentionShape, mask: Mask) -> Vec<f32> {
    let AttentionShape { batch, heads, seq_q, seq_kv, head_dim, val_dim } = shape;
    let heads_total = batch * heads;
    assert_eq!(q.len(), heads_total * seq_q * head_dim, "attention: query length does not match {shape:?}");
    assert_eq!(k.len(), heads_total * seq_kv * head_dim, "attention: key length does not match {shape:?}");
    assert_eq!(v.len(), heads_total * seq_kv * val_dim, "attention: value length does not match {shape:?}");
    let mut out = vec![0.0f32; heads_total * seq_q * val_dim];
    if out.is_empty() || seq_kv == 0 || head_dim == 0 {
        return out;
    }
    let keys_t = transpose_keys(k, seq_kv, head_dim);
    let scale = 1.0 / (head_dim as f32).sqrt();
    out.par_chunks_mut(seq_q * val_dim).enumerate().for_each(|(head, out)| {
        let q = &q[head * seq_q * head_dim..][..seq_q * head_dim];
        let keys_t = &keys_t[head * head_dim * seq_kv..][..head_dim * seq_kv];
        let v = &v[head * seq_kv * val_dim..][..seq_kv * val_dim];
        out.par_chunks_mut(BLOCK_Q * val_dim).enumerate().for_each(|(block, out)| {
            let first_row = block * BLOCK_Q;
            let rows = out.len() / val_dim;
            pulp::Arch::new().dispatch(QueryBlock {
                out,
                q: &q[first_row * head_dim..][..rows * head_dim],
                keys_t,
                v,
                head_dim,
                seq_kv,
                val_dim,
                first_row,
                scale,
                mask,
            });
        });
    });
    out
}

/// `[…, L, D]` → `[…, D, L]` per head, so the scores are a product of row-major operands.
fn transpose_keys(k: &[f32], seq_kv: usize, head_dim: usize) -> Vec<f32> {
    let mut keys_t = vec![0.0f32; k.len()];
    keys_t.par_chunks_mut(seq_kv * head_dim).zip(k.par_chunks(seq_kv * head_dim)).for_each(|(dst, src)| {
        for (j, key) in src.chunks_exact(head_dim).enumerate() {
            for (d, &x) in key.iter().enumerate() {
                dst[d * seq_kv + j] = x;
            }
        }
    });
    keys_t
}

/// One work item: a block of query rows of one head against all its keys.
struct QueryBlock<'a> {
    /// The block's output rows, `[rows, val_dim]`, zeroed.
    out: &'a mut [f32],
    /// `[rows, head_dim]`.
    q: &'a [f32],
    /// `[head_dim, seq_kv]`.
    keys_t: &'a [f32],
    /// `[seq_kv, val_dim]`.
    v: &'a [f32],
    head_dim: usize,
    seq_kv: usize,
    val_dim: usize,
    /// The index of the block's first query row within its head (for the causal mask).
    first_row: usize,
    scale: f32,
    mask: Mask,
}

/// A `WithSimd` operation, not a closure: pulp compiles `with_simd` inside a function with
/// AVX2/FMA enabled, and a closure's body is not reliably inlined there (its `mul_add`s then
/// become calls to libm's `fmaf`).
impl pulp::WithSimd for QueryBlock<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        self.run(simd);
    }
}

impl QueryBlock<'_> {
    #[inline(always)]
    fn run<S: Simd>(self, simd: S) {
        let out = self.out;
        let (dv, rows) = (self.val_dim, out.len() / self.val_dim);
        let mut row_max = vec![f32::NEG_INFINITY; rows];
        let mut row_sum = vec![0.0f32; rows];
        let mut tile = vec![0.0f32; rows * BLOCK_KV];
        // Causal: no row of this block sees keys past its last row.
        let keys = match self.mask {
            Mask::None => self.seq_kv,
            Mask::Causal => (self.first_row + rows).min(self.seq_kv),
        };
        for start in (0..keys).step_by(BLOCK_KV) {
            let n = BLOCK_KV.min(keys - start);
            let scores = &mut tile[..rows * n];
            let dims = [rows, n, self.head_dim];
            Matmul { ldc: n, a: self.q, lda: self.head_dim, b: &self.keys_t[start..], ldb: self.seq_kv, dims, accumulate: Accumulate::No }
                .run(simd, scores);
            for (r, row) in scores.chunks_exact_mut(n).enumerate() {
                let visible = match self.mask {
                    Mask::None => n,
                    Mask::Causal => (self.first_row + r + 1).saturating_sub(start).min(n),
                };
                let (seen, hidden) = row.split_at_mut(visible);
                hidden.fill(0.0);
                if seen.is_empty() {
                    continue;
                }
                let max = simd::max(simd, seen).max(row_max[r]);
                // A row's first tile: its old maximum is −∞ and its sum and output are still 0.
                let rescale = simd::exp((row_max[r] - max) * self.scale);
                let sum = simd::exp_shifted_in_place(simd, seen, max, self.scale);
                row_sum[r] = row_sum[r] * rescale + sum;
                row_max[r] = max;
                if rescale != 1.0 {
                    out[r * dv..][..dv].iter_mut().for_each(|x| *x *= rescale);
                }
            }
            let dims = [rows, dv, n];
            Matmul { ldc: dv, a: scores, lda: n, b: &self.v[start * dv..], ldb: dv, dims, accumulate: Accumulate::Yes }.run(simd, out);
        }
        for (row, sum) in out.chunks_exact_mut(dv).zip(&row_sum) {
            let inverse = 1.0 / sum;
            row.iter_mut().for_each(|x| *x *= inverse);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, in f64: scores, softmax, weighted sum.
    fn reference(q: &[f32], k: &[f32], v: &[f32], s: AttentionShape, mask: Mask) -> Vec<f32> {
        let mut out = vec![0.0f32; s.batch * s.heads * s.seq_q * s.val_dim];
        let scale = 1.0 / (s.head_dim as f64).sqrt();
        for h in 0..s.batch * s.heads {
            for i in 0..s.seq_q {
                let keys = if mask == Mask::Causal { (i + 1).min(s.seq_kv) } else { s.seq_kv };
                let scores: Vec<f64> = (0..keys)
                    .map(|j| {
                        let qi = &q[(h * s.seq_q + i) * s.head_dim..][..s.head_dim];
                        let kj = &k[(h * s.seq_kv + j) * s.head_dim..][..s.head_dim];
                        qi.iter().zip(kj).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * scale
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for c in 0..s.val_dim {
                    let value = (0..keys).map(|j| weights[j] * v[(h * s.seq_kv + j) * s.val_dim + c] as f64).sum::<f64>();
                    out[(h * s.seq_q + i) * s.val_dim + c] = (value / total) as f32;
                }
            }
        }
        out
    }

    /// Seeded values in [-spread, spread).
    fn values(n: usize, seed: u64, spread: f32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (0..n)
            .map(|_| {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * spread
            })
            .collect()
    }

    fn check(s: AttentionShape, mask: Mask, spread: f32) {
        let q = values(s.batch * s.heads * s.seq_q * s.head_dim, 1, spread);
        let k = values(s.batch * s.heads * s.seq_kv * s.head_dim, 2, spread);
        let v = values(s.batch * s.heads * s.seq_kv * s.val_dim, 3, 1.0);
        let got = attention(&q, &k, &v, s, mask);
        let want = reference(&q, &k, &v, s, mask);
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst < 2e-5, "{s:?} {mask:?}: largest difference {worst}");
    }

    fn shape(batch: usize, heads: usize, seq_q: usize, seq_kv: usize, head_dim: usize, val_dim: usize) -> AttentionShape {
        AttentionShape { batch, heads, seq_q, seq_kv, head_dim, val_dim }
    }

    #[test]
    fn matches_the_definition_on_shapes_that_are_not_multiples_of_any_block() {
        check(shape(1, 1, 1, 1, 1, 1), Mask::None, 1.0);
        check(shape(1, 1, 5, 7, 3, 5), Mask::None, 1.0);
        check(shape(2, 3, 100, 300, 64, 64), Mask::None, 1.0);
        check(shape(1, 2, 257, 257, 64, 48), Mask::None, 1.0);
        check(shape(1, 1, 97, 513, 17, 33), Mask::None, 1.0);
    }

    #[test]
    fn large_scores_are_rescaled_across_tiles_without_overflow() {
        // Scores up to ±30 after scaling: exp of the raw scores would overflow f32, and the
        // row maximum moves from tile to tile.
        check(shape(1, 2, 130, 700, 16, 16), Mask::None, 4.0);
    }

    #[test]
    fn the_causal_mask_hides_later_keys() {
        check(shape(1, 2, 300, 300, 32, 32), Mask::Causal, 1.0);
        check(shape(2, 1, 77, 77, 64, 64), Mask::Causal, 2.0);
    }

    #[test]
    fn empty_inputs_give_an_empty_or_zero_output() {
        assert!(attention(&[], &[0.0; 12], &[0.0; 12], shape(1, 1, 0, 3, 4, 4), Mask::None).is_empty());
        assert_eq!(attention(&[0.0; 4], &[], &[], shape(1, 1, 1, 0, 4, 2), Mask::None), vec![0.0; 2]);
    }
}
