//! Attention on the CPU in one pass: `softmax(Q Kᵀ / √D) V` over f32 slices, without
//! materialising the `L × L` scores.
//!
//! Each work item is one (batch item, block of query rows), all heads. For each head it walks
//! the keys in tiles, keeps the running maximum and sum of every row (the online softmax of
//! FlashAttention) and rescales its partial output when a row's maximum grows, so its memory is
//! one tile of scores (L2-resident) whatever the sequence length. Items run on rayon's pool; burn
//! Flex's own attention runs the heads one after another on one thread.
//!
//! Layouts: the models hold q, k and v as `[B, L, H, D]` and view them as `[B, H, L, D]`, so
//! the kernel reads any strides (the last dimension contiguous) and writes `[B, L, H, Dv]`,
//! which the models' next step (`[B, L, H·Dv]`) takes without a copy.

use pulp::Simd;
use rayon::prelude::*;

use super::simd::{self, Accumulate, Matmul};

/// Query rows per work item, when there are enough items to share out.
const BLOCK_Q: usize = 96;
/// Query rows per work item when few batch items and short sequences would leave cores idle.
const BLOCK_Q_SMALL: usize = 32;
/// Keys per tile: the tile's scores are at most `BLOCK_Q × BLOCK_KV` f32, 96 KiB.
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

/// A `[batch, heads, tokens, dim]` operand: its storage and the element offset of `[0, 0, 0, 0]`,
/// and the strides of batch, head and token (the last dimension is contiguous).
#[derive(Debug, Clone, Copy)]
pub struct Operand<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub strides: [usize; 3],
}

impl<'a> Operand<'a> {
    /// A contiguous `[batch, heads, tokens, dim]` slice.
    pub fn contiguous(data: &'a [f32], heads: usize, tokens: usize, dim: usize) -> Self {
        Self { data, offset: 0, strides: [heads * tokens * dim, tokens * dim, dim] }
    }

    /// The rows of head `h` of batch item `b`, from token `first` on (row stride `strides[2]`).
    fn rows(&self, b: usize, h: usize, first: usize) -> &'a [f32] {
        let [sb, sh, st] = self.strides;
        &self.data[self.offset + b * sb + h * sh + first * st..]
    }
}

/// Scaled dot-product attention with scale `1/√head_dim`: `q` `[B, H, seq_q, head_dim]`, `k`
/// `[B, H, seq_kv, head_dim]`, `v` `[B, H, seq_kv, val_dim]`; the result is laid out
/// `[B, seq_q, H, val_dim]`.
pub fn attention(q: Operand, k: Operand, v: Operand, shape: AttentionShape, mask: Mask) -> Vec<f32> {
    let AttentionShape { batch, heads, seq_q, seq_kv, head_dim, val_dim } = shape;
    let mut out = vec![0.0f32; batch * seq_q * heads * val_dim];
    if out.is_empty() || seq_kv == 0 || head_dim == 0 {
        return out;
    }
    for (name, operand, tokens, dim) in [("query", &q, seq_q, head_dim), ("key", &k, seq_kv, head_dim), ("value", &v, seq_kv, val_dim)] {
        let [sb, sh, st] = operand.strides;
        let last = operand.offset + (batch - 1) * sb + (heads - 1) * sh + (tokens - 1) * st + dim;
        assert!(last <= operand.data.len(), "attention: the {name} ends at {last}, past its {} values ({shape:?})", operand.data.len());
    }
    let keys_t = transpose_keys(k, shape);
    let scale = 1.0 / (head_dim as f32).sqrt();
    let enough_items = batch * seq_q.div_ceil(BLOCK_Q) >= 4 * rayon::current_num_threads();
    let block_q = if enough_items { BLOCK_Q } else { BLOCK_Q_SMALL };
    let row_len = heads * val_dim;
    out.par_chunks_mut(seq_q * row_len).enumerate().for_each(|(b, out)| {
        out.par_chunks_mut(block_q * row_len).enumerate().for_each(|(block, out)| {
            let first_row = block * block_q;
            let rows = out.len() / row_len;
            for h in 0..heads {
                pulp::Arch::new().dispatch(QueryBlock {
                    out: &mut out[h * val_dim..],
                    out_stride: row_len,
                    rows,
                    q: q.rows(b, h, first_row),
                    q_stride: q.strides[2],
                    keys_t: &keys_t[(b * heads + h) * head_dim * seq_kv..][..head_dim * seq_kv],
                    v: v.rows(b, h, 0),
                    v_stride: v.strides[2],
                    head_dim,
                    seq_kv,
                    val_dim,
                    first_row,
                    scale,
                    mask,
                });
            }
        });
    });
    out
}

/// The keys of every head as `[D, L]`, contiguous, so the scores are a product of row-major
/// operands.
fn transpose_keys(k: Operand, shape: AttentionShape) -> Vec<f32> {
    let AttentionShape { heads, seq_kv, head_dim, .. } = shape;
    let mut keys_t = vec![0.0f32; shape.batch * heads * head_dim * seq_kv];
    keys_t.par_chunks_mut(head_dim * seq_kv).enumerate().for_each(|(bh, dst)| {
        let rows = k.rows(bh / heads, bh % heads, 0);
        for j in 0..seq_kv {
            for (d, &x) in rows[j * k.strides[2]..][..head_dim].iter().enumerate() {
                dst[d * seq_kv + j] = x;
            }
        }
    });
    keys_t
}

/// One work item: a block of query rows of one head against all its keys.
struct QueryBlock<'a> {
    /// The block's output rows of this head, row `r` at `r · out_stride` (zeroed).
    out: &'a mut [f32],
    out_stride: usize,
    rows: usize,
    /// The block's first query row; row `r` at `r · q_stride`.
    q: &'a [f32],
    q_stride: usize,
    /// `[head_dim, seq_kv]`.
    keys_t: &'a [f32],
    /// Key `j`'s value at `j · v_stride`.
    v: &'a [f32],
    v_stride: usize,
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
        let (rows, dv, ldo) = (self.rows, self.val_dim, self.out_stride);
        let out = self.out;
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
            Matmul { ldc: n, a: self.q, lda: self.q_stride, b: &self.keys_t[start..], ldb: self.seq_kv, dims, accumulate: Accumulate::No }
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
                    out[r * ldo..][..dv].iter_mut().for_each(|x| *x *= rescale);
                }
            }
            let dims = [rows, dv, n];
            Matmul {
                ldc: ldo,
                a: scores,
                lda: n,
                b: &self.v[start * self.v_stride..],
                ldb: self.v_stride,
                dims,
                accumulate: Accumulate::Yes,
            }
            .run(simd, out);
        }
        for (r, sum) in row_sum.iter().enumerate() {
            let inverse = 1.0 / sum;
            out[r * ldo..][..dv].iter_mut().for_each(|x| *x *= inverse);
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
        let operand = |data, tokens, dim| Operand::contiguous(data, s.heads, tokens, dim);
        let got = attention(operand(&q, s.seq_q, s.head_dim), operand(&k, s.seq_kv, s.head_dim), operand(&v, s.seq_kv, s.val_dim), s, mask);
        // The kernel writes [B, L, H, Dv]; the reference [B, H, L, Dv].
        let want = reference(&q, &k, &v, s, mask);
        let want: Vec<f32> = (0..got.len())
            .map(|at| {
                let (c, rest) = (at % s.val_dim, at / s.val_dim);
                let (h, rest) = (rest % s.heads, rest / s.heads);
                let (i, b) = (rest % s.seq_q, rest / s.seq_q);
                want[((b * s.heads + h) * s.seq_q + i) * s.val_dim + c]
            })
            .collect();
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
        let (none, twelve) = (Operand::contiguous(&[], 1, 0, 4), Operand::contiguous(&[0.0; 12], 1, 3, 4));
        assert!(attention(none, twelve, twelve, shape(1, 1, 0, 3, 4, 4), Mask::None).is_empty());
        let one = Operand::contiguous(&[0.0; 4], 1, 1, 4);
        assert_eq!(attention(one, none, none, shape(1, 1, 1, 0, 4, 2), Mask::None), vec![0.0; 2]);
    }
}
