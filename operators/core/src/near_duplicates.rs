//! Near-duplicate groups, by leader clustering.
//!
//! Rows are visited in a given order (row order, or best first by a preference column). A row
//! joins the most similar representative chosen before it, when that one is within the bound;
//! otherwise it becomes a representative itself. So every member is within the bound of its
//! representative — no chains (A ~ B and B ~ C do not put A with C unless A ~ C), which keeps a
//! group from creeping from one subject to the next — and the groups depend only on the rows,
//! the bound and the order: the same bytes on any number of threads.
//!
//! Candidates are found without comparing every pair:
//! - keys (exact digests): a hash map;
//! - 64-bit hashes within a Hamming radius: multi-index hashing (the hash cut into four 16-bit
//!   bands; two hashes within `d` bits agree within `d / 4` bits on at least one band, so the
//!   bands' tables, probed with every nearby band value, miss nothing);
//! - embeddings above a cosine threshold: blocking as SemDeDup does it (spherical k-means, then
//!   every pair inside a block), plus a second probe of each representative's second-nearest
//!   block for pairs a block boundary split. Blocks are only formed above [`BLOCK_ROWS`] rows,
//!   so smaller sets are compared exactly.

use std::collections::HashMap;
use std::hash::Hash;

use rayon::prelude::*;
use unoflow_models::kernels::cpu::gemm::{Gemm, Layout};

/// Each row's group: the index of its representative (itself for a representative) and its
/// similarity to it (1 for a representative).
#[derive(Debug, Clone, PartialEq)]
pub struct Grouping {
    pub representative: Vec<usize>,
    pub similarity: Vec<f32>,
}

impl Grouping {
    fn singletons(rows: usize) -> Self {
        Self { representative: (0..rows).collect(), similarity: vec![1.0; rows] }
    }

    /// Whether row `row` represents its group.
    pub fn is_representative(&self, row: usize) -> bool {
        self.representative[row] == row
    }
}

/// Groups of equal keys; each group's representative is its first row in `order`.
pub fn by_key<K: Hash + Eq>(keys: &[K], order: &[usize]) -> Grouping {
    let mut grouping = Grouping::singletons(keys.len());
    let mut first: HashMap<&K, usize> = HashMap::with_capacity(keys.len());
    for &row in order {
        grouping.representative[row] = *first.entry(&keys[row]).or_insert(row);
    }
    grouping
}

/// Bits per band of a 64-bit hash.
const BAND_BITS: u32 = 16;
const BANDS: usize = (64 / BAND_BITS) as usize;

/// The largest Hamming radius [`by_hamming`] takes: beyond it a probe enumerates tens of
/// thousands of band values per row (and a pHash that far off is another picture).
pub const MAX_HAMMING: u32 = 16;

/// Groups of 64-bit hashes at most `max_distance` bits apart from their representative; a row
/// joins the nearest representative (the earliest of equals). Similarity is `1 - bits / 64`.
pub fn by_hamming(hashes: &[u64], max_distance: u32, order: &[usize]) -> Grouping {
    assert!(max_distance <= MAX_HAMMING, "a Hamming radius above {MAX_HAMMING} bits");
    let mut grouping = Grouping::singletons(hashes.len());
    let probes = band_probes(max_distance / BANDS as u32);
    let mut tables: Vec<HashMap<u16, Vec<usize>>> = vec![HashMap::new(); BANDS];
    // Representatives by rank (when they were chosen), so ties go to the earliest.
    let mut representatives: Vec<usize> = Vec::new();
    let mut seen = vec![usize::MAX; hashes.len()];
    for (step, &row) in order.iter().enumerate() {
        let hash = hashes[row];
        let mut best: Option<(u32, usize)> = None;
        for (band, table) in tables.iter().enumerate() {
            let value = band_value(hash, band);
            for probe in &probes {
                for &rank in table.get(&(value ^ probe)).into_iter().flatten() {
                    if std::mem::replace(&mut seen[rank], step) == step {
                        continue;
                    }
                    let distance = (hash ^ hashes[representatives[rank]]).count_ones();
                    if distance <= max_distance && best.is_none_or(|b| (distance, rank) < b) {
                        best = Some((distance, rank));
                    }
                }
            }
        }
        match best {
            Some((distance, rank)) => {
                grouping.representative[row] = representatives[rank];
                grouping.similarity[row] = 1.0 - distance as f32 / 64.0;
            }
            None => {
                let rank = representatives.len();
                representatives.push(row);
                for (band, table) in tables.iter_mut().enumerate() {
                    table.entry(band_value(hash, band)).or_default().push(rank);
                }
            }
        }
    }
    grouping
}

fn band_value(hash: u64, band: usize) -> u16 {
    (hash >> (band as u32 * BAND_BITS)) as u16
}

/// Every 16-bit mask of at most `radius` bits, fewest bits first.
fn band_probes(radius: u32) -> Vec<u16> {
    let mut masks: Vec<u16> = (0..=u16::MAX).filter(|m| m.count_ones() <= radius).collect();
    masks.sort_by_key(|m| (m.count_ones(), *m));
    masks
}

/// Unit-length embeddings, one row of `dim` values each.
#[derive(Debug, Clone)]
pub struct Embeddings {
    dim: usize,
    values: Vec<f32>,
}

impl Embeddings {
    /// `rows` scaled to unit length (a zero vector stays zero: similar to nothing). Every row
    /// must have `dim` values.
    pub fn normalized<'a>(dim: usize, rows: impl IntoIterator<Item = &'a [f32]>) -> Self {
        let rows = rows.into_iter();
        let mut values = Vec::with_capacity(rows.size_hint().0 * dim);
        for row in rows {
            assert_eq!(row.len(), dim, "an embedding of {} values among embeddings of {dim}", row.len());
            let norm = dot(row, row).sqrt();
            let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
            values.extend(row.iter().map(|v| v * scale));
        }
        Self { dim, values }
    }

    pub fn len(&self) -> usize {
        self.values.len().checked_div(self.dim).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.dim..(i + 1) * self.dim]
    }

    /// Rows `rows`, in that order.
    fn gather(&self, rows: &[usize]) -> Embeddings {
        Embeddings { dim: self.dim, values: rows.iter().flat_map(|&r| self.row(r).iter().copied()).collect() }
    }

    /// The cosine similarity of each of these rows to each of `others`: `len × others.len()`,
    /// row-major.
    fn similarities(&self, others: &Embeddings) -> Vec<f32> {
        products(&self.values, &others.values, self.dim)
    }
}

/// `a · bᵀ` for row-major `a` and `b` of `dim` columns. One matrix product: it parallelises
/// over its rows, and each value sums in the same order however many threads there are.
fn products(a: &[f32], b: &[f32], dim: usize) -> Vec<f32> {
    let (m, n) = (a.len() / dim.max(1), b.len() / dim.max(1));
    let mut out = vec![0f32; m * n];
    if m > 0 && n > 0 {
        Gemm { a, lda: dim, b, b_layout: Layout::Transposed { ld: dim }, bias: None, dims: [m, n, dim], ldc: n }.run(&mut out);
    }
    out
}

/// Above this many rows, rows are split into blocks (k-means) and compared within them.
pub const BLOCK_ROWS: usize = 4096;
/// The rows per block k-means aims at.
const ROWS_PER_CENTROID: usize = 1024;
/// Lloyd iterations of the blocking's k-means.
const KMEANS_ITERATIONS: usize = 8;
/// Rows of the sample k-means learns its centroids from, per centroid.
const SAMPLE_PER_CENTROID: usize = 24;
/// How many times a block too large is split again.
const MAX_SPLITS: usize = 3;

/// Which pairs of embeddings [`by_cosine_with`] compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Candidates {
    /// Every pair up to [`BLOCK_ROWS`] rows, pairs within k-means blocks above.
    Blocked,
    /// Every pair, however many rows (quadratic: the baseline blocking is measured against).
    AllPairs,
}

/// Groups of embeddings whose cosine similarity to their representative is at least
/// `threshold`; a row joins the most similar representative (the earliest of equals).
pub fn by_cosine(embeddings: &Embeddings, threshold: f32, order: &[usize]) -> Grouping {
    by_cosine_with(embeddings, threshold, order, Candidates::Blocked)
}

/// [`by_cosine`], comparing the pairs `candidates` says.
///
/// With blocks, rows are grouped within their block first (in parallel). A near copy k-means
/// put on the other side of a block boundary from its original would then represent a group of
/// its own, so each representative is also compared with the earlier representatives of its
/// second-nearest block, and joins the most similar one within the bound — when every member of
/// its group is within the bound of that one too (no member ends up farther than `threshold`
/// from its representative).
pub fn by_cosine_with(embeddings: &Embeddings, threshold: f32, order: &[usize], candidates: Candidates) -> Grouping {
    let mut rank = vec![0usize; embeddings.len()];
    for (r, &row) in order.iter().enumerate() {
        rank[row] = r;
    }
    let mut blocks = Blocks { members: Vec::new(), second: vec![NO_BLOCK; embeddings.len()] };
    match candidates {
        Candidates::Blocked => split(embeddings, order.to_vec(), threshold, 0, &mut blocks),
        Candidates::AllPairs => blocks.members.push(order.to_vec()),
    }
    for block in &mut blocks.members {
        block.sort_unstable_by_key(|&row| rank[row]);
    }
    let joined: Vec<Vec<(usize, usize, f32)>> = blocks.members.par_iter().map(|block| leaders(embeddings, block, threshold)).collect();
    let mut grouping = Grouping::singletons(embeddings.len());
    for (row, representative, similarity) in joined.into_iter().flatten() {
        grouping.representative[row] = representative;
        grouping.similarity[row] = similarity;
    }
    if blocks.members.len() > 1 {
        join_across_blocks(embeddings, threshold, &rank, &blocks, &mut grouping);
    }
    grouping
}

/// The second probe of [`by_cosine_with`]: representatives join an earlier representative of
/// their second-nearest block.
fn join_across_blocks(embeddings: &Embeddings, threshold: f32, rank: &[usize], blocks: &Blocks, grouping: &mut Grouping) {
    let representatives_of: Vec<Vec<usize>> =
        blocks.members.iter().map(|m| m.iter().copied().filter(|&r| grouping.is_representative(r)).collect()).collect();
    let mut members: HashMap<usize, Vec<usize>> = HashMap::new();
    for (row, &r) in grouping.representative.iter().enumerate() {
        if r != row {
            members.entry(r).or_default().push(row);
        }
    }
    // Every representative's candidates, most similar first (then earliest): one matrix product
    // per block probed, blocks in parallel.
    let mut representatives: Vec<usize> = representatives_of.concat();
    representatives.sort_unstable_by_key(|&r| rank[r]);
    let mut probing: Vec<Vec<usize>> = vec![Vec::new(); blocks.members.len()];
    for &r in &representatives {
        if let Some(p) = probing.get_mut(blocks.second[r]) {
            p.push(r);
        }
    }
    let found: Vec<(usize, Vec<(f32, usize)>)> = probing
        .par_iter()
        .zip(&representatives_of)
        .flat_map_iter(|(probes, others)| {
            let scores = if probes.is_empty() || others.is_empty() {
                Vec::new()
            } else {
                embeddings.gather(probes).similarities(&embeddings.gather(others))
            };
            probes.iter().enumerate().map(move |(i, &r)| {
                let row = &scores[i * others.len()..(i + 1) * others.len()];
                let mut found: Vec<(f32, usize)> = others
                    .iter()
                    .zip(row)
                    .take_while(|(o, _)| rank[**o] < rank[r])
                    .filter(|(_, s)| **s >= threshold)
                    .map(|(&o, &s)| (s, o))
                    .collect();
                found.sort_by(|a, b| b.0.total_cmp(&a.0).then(rank[a.1].cmp(&rank[b.1])));
                (r, found)
            })
        })
        .collect();
    let mut candidates: HashMap<usize, Vec<(f32, usize)>> = found.into_iter().filter(|(_, f)| !f.is_empty()).collect();
    let candidates: Vec<Vec<(f32, usize)>> = representatives.iter().map(|r| candidates.remove(r).unwrap_or_default()).collect();
    // In rank order, so a candidate's own fate is settled before anyone joins it.
    for (&r, found) in representatives.iter().zip(candidates) {
        let group = members.get(&r).map_or(&[][..], Vec::as_slice);
        // A candidate that has joined a group since stands for its representative (settled
        // already: it came earlier), which must be within the bound of `r` too.
        let target = found.into_iter().find_map(|(s, o)| {
            let t = grouping.representative[o];
            let s = if t == o { s } else { dot(embeddings.row(r), embeddings.row(t)) };
            (s >= threshold && group.iter().all(|&m| dot(embeddings.row(m), embeddings.row(t)) >= threshold)).then_some((s, t))
        });
        if let Some((s, o)) = target {
            grouping.representative[r] = o;
            grouping.similarity[r] = s.min(1.0);
            for &m in group {
                grouping.representative[m] = o;
                grouping.similarity[m] = dot(embeddings.row(m), embeddings.row(o)).min(1.0);
            }
        }
    }
}

/// Rows whose similarities are computed by one matrix product.
const ROW_CHUNK: usize = 256;

/// Leader clustering of one block (rows in visiting order): the rows that join a
/// representative, with it and their similarity. A chunk of [`ROW_CHUNK`] rows at a time is
/// compared, by two matrix products, with the representatives chosen before it and with
/// itself: the work grows with rows × representatives, so a block of many copies of a few
/// images costs little.
fn leaders(embeddings: &Embeddings, block: &[usize], threshold: f32) -> Vec<(usize, usize, f32)> {
    let mut representatives: Vec<usize> = Vec::new();
    // Their embeddings, gathered as they are chosen.
    let mut gathered = Embeddings { dim: embeddings.dim, values: Vec::new() };
    let mut joined = Vec::new();
    for chunk in block.chunks(ROW_CHUNK) {
        let rows = embeddings.gather(chunk);
        let earlier = rows.similarities(&gathered);
        let within = rows.similarities(&rows);
        let before = representatives.len();
        // The chunk's own representatives, by position in the chunk.
        let mut chosen: Vec<usize> = Vec::new();
        for (i, &row) in chunk.iter().enumerate() {
            let mut best: Option<(f32, usize)> = None;
            let scores = earlier[i * before..(i + 1) * before].iter().zip(&representatives).map(|(&s, &r)| (s, r));
            let own = chosen.iter().map(|&j| (within[i * chunk.len() + j], chunk[j]));
            for (s, r) in scores.chain(own) {
                if s >= threshold && best.is_none_or(|(b, _)| s > b) {
                    best = Some((s, r));
                }
            }
            match best {
                Some((s, r)) => joined.push((row, r, s.min(1.0))),
                None => chosen.push(i),
            }
        }
        for j in chosen {
            representatives.push(chunk[j]);
            gathered.values.extend_from_slice(rows.row(j));
        }
    }
    joined
}

/// No second block: the row's block was never split from another.
const NO_BLOCK: usize = usize::MAX;

/// Rows cut into blocks: each block's rows, and each row's second-nearest block.
struct Blocks {
    members: Vec<Vec<usize>>,
    second: Vec<usize>,
}

/// Adds `rows` to `blocks` cut into blocks of about [`ROWS_PER_CENTROID`] by spherical
/// k-means, each at most [`BLOCK_ROWS`] (a block still larger after [`MAX_SPLITS`] splits
/// stays whole), and records each row's second-nearest block.
fn split(embeddings: &Embeddings, rows: Vec<usize>, threshold: f32, splits: usize, blocks: &mut Blocks) {
    if rows.len() <= BLOCK_ROWS || splits == MAX_SPLITS {
        blocks.members.push(rows);
        return;
    }
    let centroids = kmeans(embeddings, &rows, rows.len().div_ceil(ROWS_PER_CENTROID), threshold);
    // A chunk at a time: the rows are not copied whole.
    let nearest: Vec<[(usize, f32); 2]> =
        rows.chunks(QUERY_CHUNK).flat_map(|chunk| top_two(&embeddings.gather(chunk), &centroids)).collect();
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); centroids.len()];
    for (&row, [(first, _), _]) in rows.iter().zip(&nearest) {
        members[*first].push(row);
    }
    if members.iter().filter(|m| !m.is_empty()).count() <= 1 {
        // k-means found no structure (every row alike): nothing to gain from splitting.
        blocks.members.push(rows);
        return;
    }
    // A centroid's block is the first block its rows went to (a block split again: its first part).
    let mut block_of = vec![NO_BLOCK; centroids.len()];
    for (centroid, m) in members.into_iter().enumerate().filter(|(_, m)| !m.is_empty()) {
        block_of[centroid] = blocks.members.len();
        split(embeddings, m, threshold, splits + 1, blocks);
    }
    for (&row, [_, (second, _)]) in rows.iter().zip(&nearest) {
        // A finer split already named a nearer neighbour.
        if blocks.second[row] == NO_BLOCK {
            blocks.second[row] = block_of[*second];
        }
    }
}

/// At most `k` unit centroids of `rows`, learnt on an evenly strided sample (no randomness: the same
/// rows give the same blocks).
fn kmeans(embeddings: &Embeddings, rows: &[usize], k: usize, threshold: f32) -> Embeddings {
    let stride = rows.len().div_ceil(k * SAMPLE_PER_CENTROID).max(1);
    let sample: Vec<usize> = rows.iter().copied().step_by(stride).collect();
    let seeds = sample.len().div_ceil(k).max(1);
    // Seeds one group would hold (two copies of one image) would split it between blocks:
    // each seed is at least `threshold` from those before it.
    let mut chosen: Vec<usize> = Vec::new();
    for &r in sample.iter().step_by(seeds) {
        if chosen.iter().all(|&c| dot(embeddings.row(r), embeddings.row(c)) < threshold) {
            chosen.push(r);
        }
    }
    let mut centroids = Embeddings::normalized(embeddings.dim, chosen.iter().map(|&r| embeddings.row(r)));
    let points = embeddings.gather(&sample);
    for _ in 0..KMEANS_ITERATIONS {
        let assigned = nearest(&points, &centroids);
        let mut sums = vec![0f32; centroids.values.len()];
        for (&row, (c, _)) in sample.iter().zip(&assigned) {
            for (s, v) in sums[c * embeddings.dim..(c + 1) * embeddings.dim].iter_mut().zip(embeddings.row(row)) {
                *s += v;
            }
        }
        let mut next = Embeddings::normalized(embeddings.dim, sums.chunks(embeddings.dim));
        // A centroid nothing chose keeps its place.
        for c in 0..next.len() {
            if next.row(c).iter().all(|v| *v == 0.0) {
                let old = centroids.row(c).to_vec();
                next.values[c * embeddings.dim..(c + 1) * embeddings.dim].copy_from_slice(&old);
            }
        }
        centroids = next;
    }
    centroids
}

/// Rows compared against references per matrix product.
const QUERY_CHUNK: usize = 2048;

/// For each query, the nearest reference and its cosine similarity (the earliest of equals);
/// `(0, -inf)` when there are no references.
pub fn nearest(queries: &Embeddings, references: &Embeddings) -> Vec<(usize, f32)> {
    top_two(queries, references).into_iter().map(|[first, _]| first).collect()
}

/// For each query, the two nearest references and their cosine similarities, nearest first
/// (the earliest of equals); `(0, -inf)` where there are too few references.
fn top_two(queries: &Embeddings, references: &Embeddings) -> Vec<[(usize, f32); 2]> {
    assert_eq!(queries.dim, references.dim, "queries and references of different dimensions");
    let (dim, n) = (queries.dim, references.len());
    let none = (0, f32::NEG_INFINITY);
    if n == 0 {
        return vec![[none, none]; queries.len()];
    }
    let mut out = Vec::with_capacity(queries.len());
    for chunk in queries.values.chunks(QUERY_CHUNK * dim) {
        let scores = products(chunk, &references.values, dim);
        out.extend(scores.chunks(n).map(|row| {
            row.iter().enumerate().fold([none, none], |[first, second], (j, &s)| {
                if s > first.1 {
                    [(j, s), first]
                } else if s > second.1 {
                    [first, (j, s)]
                } else {
                    [first, second]
                }
            })
        }));
    }
    out
}

/// The dot product, summed in eight lanes (vectorised; the same order on every machine).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (chunks_a, chunks_b) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = chunks_a.remainder().iter().zip(chunks_b.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in chunks_a.zip(chunks_b) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seeded draws for test data.
    struct Draws(crate::draws::Draws);

    impl Draws {
        fn new(seed: u64) -> Self {
            Self(crate::draws::Draws::new(seed, "near_duplicates.tests", &[]))
        }

        fn next(&mut self) -> u64 {
            self.0.next_u64()
        }

        /// About N(0, 1) (a sum of uniforms): enough for spreading points.
        fn normal(&mut self) -> f32 {
            ((0..4).map(|_| self.0.unit()).sum::<f64>() - 2.0) as f32
        }
    }

    fn order(n: usize) -> Vec<usize> {
        (0..n).collect()
    }

    #[test]
    fn equal_keys_share_their_first_row() {
        let grouping = by_key(&["a", "b", "a", "c", "b"], &order(5));
        assert_eq!(grouping.representative, [0, 1, 0, 3, 1]);
        let reversed = by_key(&["a", "b", "a", "c", "b"], &[4, 3, 2, 1, 0]);
        assert_eq!(reversed.representative, [2, 4, 2, 3, 4]);
    }

    #[test]
    fn hamming_groups_find_every_hash_within_the_radius_and_no_chain() {
        let mut draws = Draws::new(7);
        let bases: Vec<u64> = (0..300).map(|_| draws.next()).collect();
        // Each base, then a copy 1..=radius bits off, in random bit positions.
        let radius = 10;
        let mut hashes = Vec::new();
        for &b in &bases {
            hashes.push(b);
            let mut copy = b;
            let flips = 1 + draws.next() % radius as u64;
            let mut flipped = 0;
            while flipped < flips {
                let bit = 1u64 << (draws.next() % 64);
                if copy & bit == b & bit {
                    copy ^= bit;
                    flipped += 1;
                }
            }
            hashes.push(copy);
        }
        let grouping = by_hamming(&hashes, radius, &order(hashes.len()));
        for i in 0..bases.len() {
            assert_eq!(grouping.representative[2 * i + 1], 2 * i, "copy {i} not grouped with its base");
            assert!(grouping.is_representative(2 * i), "random base {i} grouped");
        }
        // The brute force agrees, pair by pair.
        for (row, &rep) in grouping.representative.iter().enumerate() {
            assert!((hashes[row] ^ hashes[rep]).count_ones() <= radius);
        }
        // A chain 0 — 6 bits — 1 — 6 bits — 2 (12 apart) with radius 8: 2 starts a group.
        let chain = [0u64, 0b11_1111, 0b1111_1111_1111];
        assert_eq!(by_hamming(&chain, 8, &order(3)).representative, [0, 0, 2]);
    }

    #[test]
    fn cosine_groups_are_exact_below_the_block_size_and_blocking_keeps_them_above() {
        let dim = 32;
        let mut draws = Draws::new(11);
        // 5000 random directions (above one block), each with a near copy right after it.
        let mut rows: Vec<Vec<f32>> = Vec::new();
        for _ in 0..5000 {
            let base: Vec<f32> = (0..dim).map(|_| draws.normal()).collect();
            let norm = dot(&base, &base).sqrt();
            let copy: Vec<f32> = base.iter().map(|v| v + 0.02 * norm / (dim as f32).sqrt() * draws.normal()).collect();
            rows.push(base);
            rows.push(copy);
        }
        let embeddings = Embeddings::normalized(dim, rows.iter().map(Vec::as_slice));
        let grouping = by_cosine(&embeddings, 0.98, &order(rows.len()));
        let found = (0..5000).filter(|i| grouping.representative[2 * i + 1] == 2 * i).count();
        // Random 32-d directions are far apart: no base joins another.
        assert!((0..5000).all(|i| grouping.is_representative(2 * i)));
        assert!(found >= 4950, "blocking lost {} of 5000 near copies", 5000 - found);
        for (row, &rep) in grouping.representative.iter().enumerate() {
            assert!(dot(embeddings.row(row), embeddings.row(rep)) >= 0.98 - 1e-6);
        }
        // The first 4000 rows fit one block: every near copy found.
        let small = Embeddings::normalized(dim, rows[..4000].iter().map(Vec::as_slice));
        let exact = by_cosine(&small, 0.98, &order(4000));
        assert!((0..2000).all(|i| exact.representative[2 * i + 1] == 2 * i));
    }

    #[test]
    fn many_copies_of_a_few_images_make_a_few_groups() {
        // 30 000 rows, copies of three directions: k-means finds one block per direction (or
        // none worth splitting), and each block's rows meet its one representative only.
        let dim = 16;
        let mut draws = Draws::new(5);
        let bases: Vec<Vec<f32>> = (0..3).map(|_| (0..dim).map(|_| draws.normal()).collect()).collect();
        let rows: Vec<Vec<f32>> = (0..30_000).map(|i| bases[i % 3].iter().map(|v| v + 1e-3 * draws.normal()).collect()).collect();
        let embeddings = Embeddings::normalized(dim, rows.iter().map(Vec::as_slice));
        let grouping = by_cosine(&embeddings, 0.95, &order(rows.len()));
        assert_eq!(grouping.representative.iter().enumerate().filter(|(i, r)| i == *r).count(), 3);
        assert!(grouping.representative.iter().enumerate().all(|(i, &r)| r == i % 3));
    }

    #[test]
    fn nearest_matches_brute_force() {
        let mut draws = Draws::new(3);
        let dim = 24;
        let make = |n: usize, draws: &mut Draws| {
            let rows: Vec<Vec<f32>> = (0..n).map(|_| (0..dim).map(|_| draws.normal()).collect()).collect();
            Embeddings::normalized(dim, rows.iter().map(Vec::as_slice))
        };
        let (queries, references) = (make(300, &mut draws), make(37, &mut draws));
        for (q, (j, s)) in nearest(&queries, &references).into_iter().enumerate() {
            let brute = (0..references.len()).map(|r| dot(queries.row(q), references.row(r))).fold(f32::NEG_INFINITY, f32::max);
            assert!((s - brute).abs() < 1e-5 && (dot(queries.row(q), references.row(j)) - brute).abs() < 1e-5);
        }
    }
}
