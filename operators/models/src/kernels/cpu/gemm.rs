//! Matrix products too large for the caches, as a linear layer computes them:
//! `c[m × n] = a[m × k] · b[k × n] (+ bias[n])`, blocked and run in parallel.
//!
//! The rows of `c` are split into blocks, one work item each (enough items for every core).
//! An item walks `k` in blocks of [`BLOCK_K`]: it packs its rows of `a` for the block
//! (L2-resident), then packs one register tile of `b` at a time (L1-resident) and runs that tile
//! against every packed row panel. `b` may be row-major or a transposed view
//! (a PyTorch `[out, in]` weight seen as `[in, out]`): packing reads either.

use pulp::Simd;
use rayon::prelude::*;

use super::simd::{Accumulate, TILE_ROWS, TILE_VECTORS, TileTarget, pack_a_panel, tile_product, tile_width};

/// Depth of one block of the product: a packed row panel is `BLOCK_K × 6` f32 (6 KiB).
const BLOCK_K: usize = 256;
/// The most rows of `c` one work item takes.
const BLOCK_M: usize = 96;
/// The fewest columns of `c` one work item takes when items split the columns.
const MIN_COLUMN_BLOCK: usize = 256;

/// How `b` (`[k, n]`) is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `b[p][j]` at `p · ld + j`.
    RowMajor { ld: usize },
    /// `b[p][j]` at `j · ld + p`: the transpose of a row-major `[n, k]`.
    Transposed { ld: usize },
}

/// What is added to a product.
#[derive(Debug, Clone, Copy)]
pub enum Bias<'a> {
    /// `bias[j]` to every row's column `j` (a linear layer's bias, `[n]`).
    PerColumn(&'a [f32]),
    /// `bias[i]` to all of row `i` (a convolution's bias per output channel, `[m]`).
    PerRow(&'a [f32]),
}

/// One product `c = a · b (+ bias)`; `a` is row-major with row stride `lda`.
#[derive(Debug, Clone, Copy)]
pub struct Gemm<'a> {
    pub a: &'a [f32],
    pub lda: usize,
    pub b: &'a [f32],
    pub b_layout: Layout,
    pub bias: Option<Bias<'a>>,
    /// `[m, n, k]`.
    pub dims: [usize; 3],
    /// The row stride of `c`, at least `n`.
    pub ldc: usize,
}

impl Gemm<'_> {
    /// Computes the product into `c`: row `i` at `i · ldc`, `n` values.
    pub fn run(&self, c: &mut [f32]) {
        let [m, n, k] = self.dims;
        let ldc = self.ldc;
        assert!(ldc >= n, "gemm: the output's row stride {ldc} is below its {n} columns");
        assert!(m == 0 || (m - 1) * ldc + n <= c.len(), "gemm: the output holds {} values, too few for {m} rows of stride {ldc}", c.len());
        match self.bias {
            Some(Bias::PerColumn(bias)) => assert_eq!(bias.len(), n, "gemm: the bias has {} values, not one per column ({n})", bias.len()),
            Some(Bias::PerRow(bias)) => assert_eq!(bias.len(), m, "gemm: the bias has {} values, not one per row ({m})", bias.len()),
            None => {}
        }
        if m == 0 || n == 0 {
            return;
        }
        let last_a = (m - 1) * self.lda + k;
        assert!(last_a <= self.a.len(), "gemm: a ends at {last_a}, past its {} values", self.a.len());
        let last_b = match self.b_layout {
            Layout::RowMajor { ld } => (k.max(1) - 1) * ld + n,
            Layout::Transposed { ld } => (n - 1) * ld + k,
        };
        assert!(k == 0 || last_b <= self.b.len(), "gemm: b ends at {last_b}, past its {} values", self.b.len());
        let threads = rayon::current_num_threads();
        let c = &mut c[..(m - 1) * ldc + n];
        if m.div_ceil(TILE_ROWS) >= 4 * threads || n <= MIN_COLUMN_BLOCK {
            // Blocks of rows, each item writing its rows of `c` in place.
            let block_m = m.div_ceil(4 * threads).next_multiple_of(TILE_ROWS).clamp(TILE_ROWS, BLOCK_M);
            c.par_chunks_mut(block_m * ldc).enumerate().for_each(|(block, c)| {
                let rows = c.len().div_ceil(ldc);
                pulp::Arch::new().dispatch(RowBlock { gemm: self, first: block * block_m, rows, columns: 0..n, c, ldc });
            });
        } else {
            // Few rows (a convolution with few output channels): blocks of columns instead, as
            // row blocks would each pack all of `b`. Items cannot share `c`'s interleaved rows,
            // so each fills its own `[m, columns]` and the blocks are copied in after.
            let block_n = n.div_ceil(4 * threads).next_multiple_of(64).max(MIN_COLUMN_BLOCK);
            let blocks: Vec<(usize, Vec<f32>)> = (0..n)
                .step_by(block_n)
                .collect::<Vec<_>>()
                .into_par_iter()
                .map(|start| {
                    let columns = start..(start + block_n).min(n);
                    let mut block = vec![0.0f32; m * columns.len()];
                    let ldc = columns.len();
                    pulp::Arch::new().dispatch(RowBlock { gemm: self, first: 0, rows: m, columns, c: &mut block, ldc });
                    (start, block)
                })
                .collect();
            for (start, block) in blocks {
                let width = block.len() / m;
                for (row, values) in c.chunks_mut(ldc).zip(block.chunks_exact(width)) {
                    row[start..start + width].copy_from_slice(values);
                }
            }
        }
    }
}

/// One work item: rows `first..first + rows` and `columns` of the product, into `c` (its row 0
/// is the item's first row, its column 0 is `columns.start`, row stride `ldc`).
struct RowBlock<'a, 'g> {
    gemm: &'a Gemm<'g>,
    first: usize,
    rows: usize,
    columns: std::ops::Range<usize>,
    c: &'a mut [f32],
    ldc: usize,
}

impl pulp::WithSimd for RowBlock<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Gemm { a, lda, b, b_layout, bias, dims: [_, _, k], .. } = *self.gemm;
        let (c, rows, ldc, columns) = (self.c, self.rows, self.ldc, self.columns);
        let n = columns.len();
        for r in 0..rows {
            let row = &mut c[r * ldc..][..n];
            match bias {
                Some(Bias::PerColumn(bias)) => row.copy_from_slice(&bias[columns.clone()]),
                Some(Bias::PerRow(bias)) => row.fill(bias[self.first + r]),
                None if k == 0 => row.fill(0.0),
                None => {}
            }
        }
        let width = tile_width::<S>();
        let panels = rows.div_ceil(TILE_ROWS);
        let mut a_packed = vec![0.0f32; panels * BLOCK_K * TILE_ROWS];
        let mut b_tile = [[simd.splat_f32s(0.0); TILE_VECTORS]; BLOCK_K];
        let mut gathered = vec![0.0f32; BLOCK_K * width];
        for k0 in (0..k).step_by(BLOCK_K) {
            let depth = BLOCK_K.min(k - k0);
            let accumulate = if k0 == 0 && bias.is_none() { Accumulate::No } else { Accumulate::Yes };
            for (panel, packed) in a_packed.chunks_exact_mut(depth * TILE_ROWS).take(panels).enumerate() {
                let row = self.first + panel * TILE_ROWS;
                pack_a_panel(packed, &a[row * lda + k0..], lda, TILE_ROWS.min(rows - panel * TILE_ROWS), depth);
            }
            for col in (0..n).step_by(width) {
                let cols = width.min(n - col);
                let b_col = columns.start + col;
                let b_tile = &mut b_tile[..depth];
                match b_layout {
                    Layout::RowMajor { ld } => super::simd::pack_b_tile::<S>(b_tile, &b[k0 * ld..], ld, b_col, cols),
                    Layout::Transposed { ld } => {
                        // Column j of the tile is row `col + j` of the stored `[n, k]`.
                        let gathered = &mut gathered[..depth * width];
                        if cols < width {
                            gathered.fill(0.0);
                        }
                        for j in 0..cols {
                            for (p, &x) in b[(b_col + j) * ld + k0..][..depth].iter().enumerate() {
                                gathered[p * width + j] = x;
                            }
                        }
                        super::simd::pack_b_tile::<S>(b_tile, gathered, width, 0, width);
                    }
                }
                for (panel, a_panel) in a_packed.chunks_exact(depth * TILE_ROWS).take(panels).enumerate() {
                    let sums = tile_product(simd, a_panel, b_tile);
                    let target = TileTarget { ldc, rows: TILE_ROWS.min(rows - panel * TILE_ROWS), col, cols, accumulate };
                    target.store(simd, &mut c[panel * TILE_ROWS * ldc..], sums);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 - 1001.0) / 500.0).collect()
    }

    /// `a·b + bias` by the definition, `b` row-major `[k, n]`.
    fn reference(a: &[f32], b: &[f32], bias: Option<&[f32]>, [m, n, k]: [usize; 3]) -> Vec<f32> {
        (0..m)
            .flat_map(|i| {
                (0..n).map(move |j| {
                    let dot: f64 = (0..k).map(|p| a[i * k + p] as f64 * b[p * n + j] as f64).sum();
                    (dot + bias.map_or(0.0, |bias| bias[j] as f64)) as f32
                })
            })
            .collect()
    }

    #[test]
    fn matches_the_definition_for_both_layouts_with_and_without_bias() {
        // Sizes past every block (k 600 > 2 blocks, m spread over row items), few rows and many
        // columns (column items), and leftovers everywhere.
        for [m, n, k] in [[1, 1, 1], [7, 17, 3], [250, 300, 600], [13, 40, 0], [10, 1500, 70]] {
            let (a, b, bias) = (values(m * k, 1), values(k * n, 2), values(n, 3));
            // The same b stored transposed: `[n, k]` row-major.
            let b_t: Vec<f32> = (0..n * k).map(|at| b[(at % k.max(1)) * n + at / k.max(1)]).collect();
            for bias in [None, Some(bias.as_slice())] {
                let want = reference(&a, &b, bias, [m, n, k]);
                for (b, b_layout) in [(&b, Layout::RowMajor { ld: n }), (&b_t, Layout::Transposed { ld: k })] {
                    // Rows of 3 more than n: the gap must stay as it was.
                    let ldc = n + 3;
                    let mut c = vec![f32::NAN; m * ldc];
                    Gemm { a: &a, lda: k, b, b_layout, bias: bias.map(Bias::PerColumn), dims: [m, n, k], ldc }.run(&mut c);
                    assert!(c.chunks(ldc).all(|row| row[n..].iter().all(|x| x.is_nan())));
                    let c: Vec<f32> = c.chunks(ldc).flat_map(|row| row[..n].to_vec()).collect();
                    for (i, (x, y)) in c.iter().zip(&want).enumerate() {
                        assert!(
                            (x - y).abs() <= 1e-4 * y.abs().max(1.0),
                            "{m}×{n}×{k} {b_layout:?} bias {}: c[{i}] = {x}, want {y}",
                            bias.is_some()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_result_has_the_same_bits_on_any_number_of_threads() {
        // The work split (row or column items, their sizes) follows the thread count; each
        // output's sum must not, so a DAG gives the same bytes on any machine.
        for [m, n, k] in [[250, 300, 600], [10, 1500, 70]] {
            let (a, b, bias) = (values(m * k, 1), values(k * n, 2), values(n, 3));
            let on = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("a pool");
                let mut c = vec![0.0f32; m * n];
                let gemm = Gemm {
                    a: &a,
                    lda: k,
                    b: &b,
                    b_layout: Layout::RowMajor { ld: n },
                    bias: Some(Bias::PerColumn(&bias)),
                    dims: [m, n, k],
                    ldc: n,
                };
                pool.install(|| gemm.run(&mut c));
                c.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            };
            // 1 thread: row items; 16: column items for the first shape, smaller ones for the second.
            assert_eq!(on(1), on(16), "{m}×{n}×{k}");
        }
    }
}
