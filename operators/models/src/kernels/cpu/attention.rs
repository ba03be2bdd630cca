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

/// The result of [`attention`].
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionOutput {
    /// `[B, seq_q, H, val_dim]`.
    pub out: Vec<f32>,
    /// Each row's log-sum-exp of its scaled scores, `[B, seq_q, H]`: what the backward pass
    /// needs to recompute the probabilities.
    pub log_sum_exp: Vec<f32>,
}

/// Scaled dot-product attention with scale `1/√head_dim`: `q` `[B, H, seq_q, head_dim]`, `k`
/// `[B, H, seq_kv, head_dim]`, `v` `[B, H, seq_kv, val_dim]`; the result is laid out
/// `[B, seq_q, H, val_dim]`.
pub fn attention(q: Operand, k: Operand, v: Operand, shape: AttentionShape, mask: Mask) -> AttentionOutput {
    let AttentionShape { batch, heads, seq_q, seq_kv, head_dim, val_dim } = shape;
    let mut out = vec![0.0f32; batch * seq_q * heads * val_dim];
    let mut log_sum_exp = vec![f32::NEG_INFINITY; batch * seq_q * heads];
    if out.is_empty() || seq_kv == 0 || head_dim == 0 {
        return AttentionOutput { out, log_sum_exp };
    }
    for (name, operand, tokens, dim) in [("query", &q, seq_q, head_dim), ("key", &k, seq_kv, head_dim), ("value", &v, seq_kv, val_dim)] {
        let [sb, sh, st] = operand.strides;
        let last = operand.offset + (batch - 1) * sb + (heads - 1) * sh + (tokens - 1) * st + dim;
        assert!(last <= operand.data.len(), "attention: the {name} ends at {last}, past its {} values ({shape:?})", operand.data.len());
    }
    let keys_t = transpose_rows(k, shape, seq_kv, head_dim);
    let scale = 1.0 / (head_dim as f32).sqrt();
    let enough_items = batch * seq_q.div_ceil(BLOCK_Q) >= 4 * rayon::current_num_threads();
    let block_q = if enough_items { BLOCK_Q } else { BLOCK_Q_SMALL };
    let row_len = heads * val_dim;
    let items = out.par_chunks_mut(seq_q * row_len).zip(log_sum_exp.par_chunks_mut(seq_q * heads));
    items.enumerate().for_each(|(b, (out, log_sum_exp))| {
        let blocks = out.par_chunks_mut(block_q * row_len).zip(log_sum_exp.par_chunks_mut(block_q * heads));
        blocks.enumerate().for_each(|(block, (out, log_sum_exp))| {
            let first_row = block * block_q;
            let rows = out.len() / row_len;
            for h in 0..heads {
                pulp::Arch::new().dispatch(QueryBlock {
                    out: &mut out[h * val_dim..],
                    out_stride: row_len,
                    log_sum_exp: &mut log_sum_exp[h..],
                    heads,
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
    AttentionOutput { out, log_sum_exp }
}

/// The `[tokens, dim]` rows of every head of `operand` as `[dim, tokens]`, contiguous, so that
/// products with them are of row-major operands.
fn transpose_rows(operand: Operand, shape: AttentionShape, tokens: usize, dim: usize) -> Vec<f32> {
    let heads = shape.heads;
    let mut transposed = vec![0.0f32; shape.batch * heads * dim * tokens];
    transposed.par_chunks_mut(dim * tokens).enumerate().for_each(|(bh, dst)| {
        let rows = operand.rows(bh / heads, bh % heads, 0);
        for j in 0..tokens {
            for (d, &x) in rows[j * operand.strides[2]..][..dim].iter().enumerate() {
                dst[d * tokens + j] = x;
            }
        }
    });
    transposed
}

/// One work item: a block of query rows of one head against all its keys.
struct QueryBlock<'a> {
    /// The block's output rows of this head, row `r` at `r · out_stride` (zeroed).
    out: &'a mut [f32],
    out_stride: usize,
    /// The block's log-sum-exp of this head, row `r` at `r · heads`.
    log_sum_exp: &'a mut [f32],
    heads: usize,
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
            self.log_sum_exp[r * self.heads] = row_max[r] * self.scale + sum.ln();
        }
    }
}

/// Key rows per work item of the backward pass's first sweep, and query rows per tile of it.
const BACKWARD_BLOCK: usize = 64;

/// The gradients of [`attention`]'s inputs, each `[B, H, tokens, dim]` contiguous.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionGrads {
    pub dq: Vec<f32>,
    pub dk: Vec<f32>,
    pub dv: Vec<f32>,
}

/// What the backward pass reads: the forward's inputs, its output `[B, seq_q, H, val_dim]` and
/// log-sum-exp `[B, seq_q, H]`, and the output's gradient `dout` (`[B, H, seq_q, val_dim]`).
#[derive(Debug, Clone, Copy)]
pub struct BackwardInputs<'a> {
    pub q: Operand<'a>,
    pub k: Operand<'a>,
    pub v: Operand<'a>,
    pub out: &'a [f32],
    pub log_sum_exp: &'a [f32],
    pub dout: Operand<'a>,
}

/// The gradients of [`attention`] (FlashAttention-2's backward): the probabilities are
/// recomputed tile by tile from the log-sum-exp, never stored whole. A first sweep over blocks
/// of keys accumulates their `dk` and `dv`; a second over blocks of queries accumulates `dq`
/// (two sweeps, so that no two work items write the same gradient rows).
pub fn attention_backward(inputs: BackwardInputs, shape: AttentionShape, mask: Mask) -> AttentionGrads {
    let AttentionShape { batch, heads, seq_q, seq_kv, head_dim, val_dim } = shape;
    let mut grads = AttentionGrads {
        dq: vec![0.0f32; batch * heads * seq_q * head_dim],
        dk: vec![0.0f32; batch * heads * seq_kv * head_dim],
        dv: vec![0.0f32; batch * heads * seq_kv * val_dim],
    };
    if [batch, heads, seq_q, seq_kv, head_dim, val_dim].contains(&0) {
        return grads;
    }
    let keys_t = transpose_rows(inputs.k, shape, seq_kv, head_dim);
    let values_t = transpose_rows(inputs.v, shape, seq_kv, val_dim);
    // delta[b, h, i] = Σ_c dout[b, h, i, c] · out[b, i, h, c], the softmax backward's row term.
    let mut delta = vec![0.0f32; batch * heads * seq_q];
    delta.par_chunks_mut(seq_q).enumerate().for_each(|(bh, delta)| {
        let (b, h) = (bh / heads, bh % heads);
        let dout = inputs.dout.rows(b, h, 0);
        for (i, d) in delta.iter_mut().enumerate() {
            let out = &inputs.out[((b * seq_q + i) * heads + h) * val_dim..][..val_dim];
            *d = out.iter().zip(&dout[i * inputs.dout.strides[2]..][..val_dim]).map(|(o, g)| o * g).sum();
        }
    });
    let context =
        BackwardContext { inputs, shape, mask, keys_t: &keys_t, values_t: &values_t, delta: &delta, scale: 1.0 / (head_dim as f32).sqrt() };
    let AttentionGrads { dq, dk, dv } = &mut grads;
    dk.par_chunks_mut(seq_kv * head_dim).zip(dv.par_chunks_mut(seq_kv * val_dim)).enumerate().for_each(|(bh, (dk, dv))| {
        let blocks = dk.par_chunks_mut(BACKWARD_BLOCK * head_dim).zip(dv.par_chunks_mut(BACKWARD_BLOCK * val_dim));
        blocks.enumerate().for_each(|(block, (dk, dv))| {
            pulp::Arch::new().dispatch(KeyBlock { context: &context, bh, first_key: block * BACKWARD_BLOCK, dk, dv });
        });
    });
    dq.par_chunks_mut(seq_q * head_dim).enumerate().for_each(|(bh, dq)| {
        dq.par_chunks_mut(BACKWARD_BLOCK * head_dim).enumerate().for_each(|(block, dq)| {
            pulp::Arch::new().dispatch(QueryGradBlock { context: &context, bh, first_row: block * BACKWARD_BLOCK, dq });
        });
    });
    grads
}

/// What every backward work item reads.
struct BackwardContext<'a> {
    inputs: BackwardInputs<'a>,
    shape: AttentionShape,
    mask: Mask,
    /// Keys and values of every head, `[dim, seq_kv]`.
    keys_t: &'a [f32],
    values_t: &'a [f32],
    /// `[B, H, seq_q]`.
    delta: &'a [f32],
    scale: f32,
}

impl BackwardContext<'_> {
    /// For query rows `rows` and keys `keys` of head `bh`: the probabilities into `p` and the
    /// scores' gradient `p ⊙ (dp − delta)` into `ds` (both `[rows, keys]`, row-major).
    #[inline(always)]
    fn tile<S: Simd>(&self, simd: S, bh: usize, rows: std::ops::Range<usize>, keys: std::ops::Range<usize>, p: &mut [f32], ds: &mut [f32]) {
        let AttentionShape { heads, seq_q, seq_kv, head_dim, val_dim, .. } = self.shape;
        let (b, h) = (bh / heads, bh % heads);
        let (nq, nk) = (rows.len(), keys.len());
        let (p, ds) = (&mut p[..nq * nk], &mut ds[..nq * nk]);
        let q = self.inputs.q.rows(b, h, rows.start);
        let keys_t = &self.keys_t[bh * head_dim * seq_kv + keys.start..];
        Matmul {
            ldc: nk,
            a: q,
            lda: self.inputs.q.strides[2],
            b: keys_t,
            ldb: seq_kv,
            dims: [nq, nk, head_dim],
            accumulate: Accumulate::No,
        }
        .run(simd, p);
        let dout = self.inputs.dout.rows(b, h, rows.start);
        let values_t = &self.values_t[bh * val_dim * seq_kv + keys.start..];
        Matmul {
            ldc: nk,
            a: dout,
            lda: self.inputs.dout.strides[2],
            b: values_t,
            ldb: seq_kv,
            dims: [nq, nk, val_dim],
            accumulate: Accumulate::No,
        }
        .run(simd, ds);
        for (r, (p_row, ds_row)) in p.chunks_exact_mut(nk).zip(ds.chunks_exact_mut(nk)).enumerate() {
            let i = rows.start + r;
            let log_sum_exp = self.inputs.log_sum_exp[(b * seq_q + i) * heads + h];
            let visible = match self.mask {
                Mask::None => nk,
                Mask::Causal => (i + 1).saturating_sub(keys.start).min(nk),
            };
            simd::exp_shifted_in_place(simd, &mut p_row[..visible], log_sum_exp / self.scale, self.scale);
            p_row[visible..].fill(0.0);
            let delta = self.delta[bh * seq_q + i];
            for (g, &pr) in ds_row.iter_mut().zip(p_row.iter()) {
                *g = pr * (*g - delta);
            }
        }
    }
}

/// `dst[c][r] = src[r][c]` for a `[rows, cols]` `src`.
#[inline(always)]
fn transpose_into(dst: &mut [f32], src: &[f32], rows: usize, cols: usize) {
    for (r, row) in src.chunks_exact(cols).take(rows).enumerate() {
        for (c, &x) in row.iter().enumerate() {
            dst[c * rows + r] = x;
        }
    }
}

/// The first sweep's work item: `dk` and `dv` of keys `first_key..` of head `bh`.
struct KeyBlock<'a, 'c> {
    context: &'a BackwardContext<'c>,
    bh: usize,
    first_key: usize,
    /// `[keys, head_dim]` and `[keys, val_dim]`.
    dk: &'a mut [f32],
    dv: &'a mut [f32],
}

impl pulp::WithSimd for KeyBlock<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let c = self.context;
        let AttentionShape { heads, seq_q, head_dim, val_dim, .. } = c.shape;
        let (b, h) = (self.bh / heads, self.bh % heads);
        let nk = self.dv.len() / val_dim;
        let keys = self.first_key..self.first_key + nk;
        let mut p = vec![0.0f32; BACKWARD_BLOCK * nk];
        let mut ds = vec![0.0f32; BACKWARD_BLOCK * nk];
        let mut transposed = vec![0.0f32; BACKWARD_BLOCK * nk];
        // Causal: queries before the block's first key see none of it.
        let first_query = match c.mask {
            Mask::None => 0,
            Mask::Causal => self.first_key.min(seq_q),
        };
        for start in (first_query..seq_q).step_by(BACKWARD_BLOCK) {
            let rows = start..(start + BACKWARD_BLOCK).min(seq_q);
            let nq = rows.len();
            c.tile(simd, self.bh, rows.clone(), keys.clone(), &mut p, &mut ds);
            // dv += pᵀ · dout
            transpose_into(&mut transposed, &p, nq, nk);
            let (dout, dout_stride) = (c.inputs.dout.rows(b, h, start), c.inputs.dout.strides[2]);
            Matmul {
                ldc: val_dim,
                a: &transposed,
                lda: nq,
                b: dout,
                ldb: dout_stride,
                dims: [nk, val_dim, nq],
                accumulate: Accumulate::Yes,
            }
            .run(simd, self.dv);
            // dk += dsᵀ · q (scaled below)
            transpose_into(&mut transposed, &ds, nq, nk);
            let (q, q_stride) = (c.inputs.q.rows(b, h, start), c.inputs.q.strides[2]);
            Matmul { ldc: head_dim, a: &transposed, lda: nq, b: q, ldb: q_stride, dims: [nk, head_dim, nq], accumulate: Accumulate::Yes }
                .run(simd, self.dk);
        }
        self.dk.iter_mut().for_each(|x| *x *= c.scale);
    }
}

/// The second sweep's work item: `dq` of query rows `first_row..` of head `bh`.
struct QueryGradBlock<'a, 'c> {
    context: &'a BackwardContext<'c>,
    bh: usize,
    first_row: usize,
    /// `[rows, head_dim]`.
    dq: &'a mut [f32],
}

impl pulp::WithSimd for QueryGradBlock<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let c = self.context;
        let AttentionShape { heads, seq_kv, head_dim, .. } = c.shape;
        let (b, h) = (self.bh / heads, self.bh % heads);
        let nq = self.dq.len() / head_dim;
        let rows = self.first_row..self.first_row + nq;
        let mut p = vec![0.0f32; nq * BACKWARD_BLOCK];
        let mut ds = vec![0.0f32; nq * BACKWARD_BLOCK];
        // Causal: no row of this block sees keys past its last row.
        let keys_seen = match c.mask {
            Mask::None => seq_kv,
            Mask::Causal => rows.end.min(seq_kv),
        };
        for start in (0..keys_seen).step_by(BACKWARD_BLOCK) {
            let keys = start..(start + BACKWARD_BLOCK).min(keys_seen);
            let nk = keys.len();
            c.tile(simd, self.bh, rows.clone(), keys, &mut p, &mut ds);
            // dq += ds · k (scaled below)
            let (k, k_stride) = (c.inputs.k.rows(b, h, start), c.inputs.k.strides[2]);
            Matmul {
                ldc: head_dim,
                a: &ds[..nq * nk],
                lda: nk,
                b: k,
                ldb: k_stride,
                dims: [nq, head_dim, nk],
                accumulate: Accumulate::Yes,
            }
            .run(simd, self.dq);
        }
        self.dq.iter_mut().for_each(|x| *x *= c.scale);
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
        let got =
            attention(operand(&q, s.seq_q, s.head_dim), operand(&k, s.seq_kv, s.head_dim), operand(&v, s.seq_kv, s.val_dim), s, mask).out;
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

    /// The gradients by the definition, in f64: for each head, `P = softmax(scale·QKᵀ)`,
    /// `dV = Pᵀ dO`, `dP = dO Vᵀ`, `dS = P ⊙ (dP − rowsum(dP ⊙ P))`, `dQ = scale·dS K`,
    /// `dK = scale·dSᵀ Q`.
    fn reference_grads(q: &[f32], k: &[f32], v: &[f32], dout: &[f32], s: AttentionShape, mask: Mask) -> [Vec<f64>; 3] {
        let scale = 1.0 / (s.head_dim as f64).sqrt();
        let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
        for h in 0..s.batch * s.heads {
            let (qo, ko, vo) = (h * s.seq_q * s.head_dim, h * s.seq_kv * s.head_dim, h * s.seq_kv * s.val_dim);
            for i in 0..s.seq_q {
                let keys = if mask == Mask::Causal { (i + 1).min(s.seq_kv) } else { s.seq_kv };
                let scores: Vec<f64> = (0..keys)
                    .map(|j| {
                        (0..s.head_dim).map(|d| q[qo + i * s.head_dim + d] as f64 * k[ko + j * s.head_dim + d] as f64).sum::<f64>() * scale
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let total: f64 = scores.iter().map(|x| (x - max).exp()).sum();
                let p: Vec<f64> = scores.iter().map(|x| (x - max).exp() / total).collect();
                let g = |c: usize| dout[(h * s.seq_q + i) * s.val_dim + c] as f64;
                let dp: Vec<f64> = (0..keys).map(|j| (0..s.val_dim).map(|c| g(c) * v[vo + j * s.val_dim + c] as f64).sum()).collect();
                let row: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
                for j in 0..keys {
                    let ds = p[j] * (dp[j] - row);
                    for c in 0..s.val_dim {
                        dv[vo + j * s.val_dim + c] += p[j] * g(c);
                    }
                    for d in 0..s.head_dim {
                        dq[qo + i * s.head_dim + d] += scale * ds * k[ko + j * s.head_dim + d] as f64;
                        dk[ko + j * s.head_dim + d] += scale * ds * q[qo + i * s.head_dim + d] as f64;
                    }
                }
            }
        }
        [dq, dk, dv]
    }

    fn check_backward(s: AttentionShape, mask: Mask) {
        let q = values(s.batch * s.heads * s.seq_q * s.head_dim, 4, 1.5);
        let k = values(s.batch * s.heads * s.seq_kv * s.head_dim, 5, 1.5);
        let v = values(s.batch * s.heads * s.seq_kv * s.val_dim, 6, 1.0);
        let dout = values(s.batch * s.heads * s.seq_q * s.val_dim, 7, 1.0);
        let operand = |data, tokens, dim| Operand::contiguous(data, s.heads, tokens, dim);
        let (q_op, k_op, v_op) = (operand(&q, s.seq_q, s.head_dim), operand(&k, s.seq_kv, s.head_dim), operand(&v, s.seq_kv, s.val_dim));
        let forward = attention(q_op, k_op, v_op, s, mask);
        let inputs = BackwardInputs {
            q: q_op,
            k: k_op,
            v: v_op,
            out: &forward.out,
            log_sum_exp: &forward.log_sum_exp,
            dout: operand(&dout, s.seq_q, s.val_dim),
        };
        let got = attention_backward(inputs, s, mask);
        let want = reference_grads(&q, &k, &v, &dout, s, mask);
        for (name, got, want) in [("dq", &got.dq, &want[0]), ("dk", &got.dk, &want[1]), ("dv", &got.dv, &want[2])] {
            let worst = got.iter().zip(want).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
            assert!(worst < 1e-4, "{s:?} {mask:?} {name}: largest difference {worst}");
        }
    }

    #[test]
    fn the_backward_pass_gives_the_definitions_gradients() {
        check_backward(shape(2, 2, 70, 150, 16, 24), Mask::None);
        check_backward(shape(1, 3, 130, 130, 32, 32), Mask::Causal);
        check_backward(shape(1, 1, 5, 3, 4, 2), Mask::None);
    }

    #[test]
    fn the_result_has_the_same_bits_on_any_number_of_threads() {
        // The query block size follows the thread count; each row's sums must not.
        let s = shape(1, 2, 300, 300, 32, 32);
        let (q, k, v) = (values(2 * 300 * 32, 1, 1.0), values(2 * 300 * 32, 2, 1.0), values(2 * 300 * 32, 3, 1.0));
        let on = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("a pool");
            let operand = |data| Operand::contiguous(data, 2, 300, 32);
            let result = pool.install(|| attention(operand(&q), operand(&k), operand(&v), s, Mask::None));
            result.out.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        };
        assert_eq!(on(1), on(16));
    }

    #[test]
    fn empty_inputs_give_an_empty_or_zero_output() {
        let (none, twelve) = (Operand::contiguous(&[], 1, 0, 4), Operand::contiguous(&[0.0; 12], 1, 3, 4));
        assert!(attention(none, twelve, twelve, shape(1, 1, 0, 3, 4, 4), Mask::None).out.is_empty());
        let one = Operand::contiguous(&[0.0; 4], 1, 1, 4);
        assert_eq!(attention(one, none, none, shape(1, 1, 1, 0, 4, 2), Mask::None).out, vec![0.0; 2]);
    }
}
