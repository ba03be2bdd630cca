//! UnoPE: the position ids of text, target and reference tokens (UNO paper Eq. 8).
//!
//! Text tokens sit at (0, 0, 0). The target's token (r, c) sits at (0, r, c). Reference k's token
//! (r, c) sits at (0, r + H_k, c + W_k), where the offsets start at the target's token-grid size
//! and grow by each earlier reference's size on both axes: the references form a diagonal chain
//! after the target, so no two images share a position. Modes `h`, `w` and `o` apply the
//! offset on one axis or none (the paper's ablations); the offsets still accumulate.
//!
//! Reference: `uno/flux/sampling.py::prepare_multi_ip` at bytedance/UNO d305981.

use std::fmt;
use std::str::FromStr;

/// How reference tokens are offset from the target's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PeMode {
    /// `d`: both axes (UnoPE, the default).
    #[default]
    Diagonal,
    /// `h`: rows only.
    Height,
    /// `w`: columns only.
    Width,
    /// `o`: no offset; references overlap the target's positions.
    None,
}

impl FromStr for PeMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "d" => Ok(Self::Diagonal),
            "h" => Ok(Self::Height),
            "w" => Ok(Self::Width),
            "o" => Ok(Self::None),
            other => Err(format!("unknown position mode `{other}`: expected d (diagonal), h (height), w (width) or o (none)")),
        }
    }
}

impl fmt::Display for PeMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Diagonal => "d",
            Self::Height => "h",
            Self::Width => "w",
            Self::None => "o",
        })
    }
}

/// The size of an image in tokens (its latent height and width divided by 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenGrid {
    pub rows: usize,
    pub cols: usize,
}

impl TokenGrid {
    /// The token grid of a latent of `height × width` (latent pixels, 8× below image pixels).
    pub fn of_latent(height: usize, width: usize) -> Self {
        Self { rows: height / 2, cols: width / 2 }
    }

    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One token's position: (axis 0, row, column), as f32 like the reference's id tensors.
pub type Position = [f32; 3];

/// Ids for the text, the target and each reference, in token order (row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct PositionIds {
    pub txt: Vec<Position>,
    pub target: Vec<Position>,
    pub refs: Vec<Vec<Position>>,
}

fn grid_ids(grid: TokenGrid, row_offset: usize, col_offset: usize) -> Vec<Position> {
    let mut ids = Vec::with_capacity(grid.len());
    for r in 0..grid.rows {
        for c in 0..grid.cols {
            ids.push([0.0, (r + row_offset) as f32, (c + col_offset) as f32]);
        }
    }
    ids
}

/// The ids for `txt_len` text tokens, a target of `target` tokens and references of `refs`.
pub fn position_ids(txt_len: usize, target: TokenGrid, refs: &[TokenGrid], mode: PeMode) -> PositionIds {
    let (mut shift_rows, mut shift_cols) = (target.rows, target.cols);
    let refs = refs
        .iter()
        .map(|grid| {
            let rows = if matches!(mode, PeMode::Diagonal | PeMode::Height) { shift_rows } else { 0 };
            let cols = if matches!(mode, PeMode::Diagonal | PeMode::Width) { shift_cols } else { 0 };
            shift_rows += grid.rows;
            shift_cols += grid.cols;
            grid_ids(*grid, rows, cols)
        })
        .collect();
    PositionIds { txt: vec![[0.0; 3]; txt_len], target: grid_ids(target, 0, 0), refs }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(ids: &[Position]) -> ((f32, f32), (f32, f32)) {
        let rows = ids.iter().map(|p| p[1]);
        let cols = ids.iter().map(|p| p[2]);
        (
            (rows.clone().fold(f32::MAX, f32::min), rows.fold(f32::MIN, f32::max)),
            (cols.clone().fold(f32::MAX, f32::min), cols.fold(f32::MIN, f32::max)),
        )
    }

    const G32: TokenGrid = TokenGrid { rows: 32, cols: 32 };

    #[test]
    fn one_512_reference_follows_a_512_target() {
        // uno-method §1.2: a 512² target has ids 0..31; one 512² reference has rows/cols 32..63.
        let ids = position_ids(512, G32, &[G32], PeMode::Diagonal);
        assert_eq!(ids.txt.len(), 512);
        assert!(ids.txt.iter().all(|p| *p == [0.0; 3]));
        assert_eq!(span(&ids.target), ((0.0, 31.0), (0.0, 31.0)));
        assert_eq!(span(&ids.refs[0]), ((32.0, 63.0), (32.0, 63.0)));
        assert!(ids.refs[0].iter().all(|p| p[0] == 0.0));
    }

    #[test]
    fn two_320_references_chain_diagonally() {
        // Two 320² references (20×20 tokens): rows/cols 32..51, then 52..71.
        let g20 = TokenGrid::of_latent(40, 40);
        assert_eq!(g20, TokenGrid { rows: 20, cols: 20 });
        let ids = position_ids(512, G32, &[g20, g20], PeMode::Diagonal);
        assert_eq!(span(&ids.refs[0]), ((32.0, 51.0), (32.0, 51.0)));
        assert_eq!(span(&ids.refs[1]), ((52.0, 71.0), (52.0, 71.0)));
    }

    #[test]
    fn a_704_target_with_a_512_reference() {
        // 704² → 44×44 target tokens; the 512² reference has rows/cols 44..75.
        let ids = position_ids(512, TokenGrid { rows: 44, cols: 44 }, &[G32], PeMode::Diagonal);
        assert_eq!(ids.target.len(), 1936);
        assert_eq!(span(&ids.refs[0]), ((44.0, 75.0), (44.0, 75.0)));
    }

    #[test]
    fn non_square_references_accumulate_per_axis() {
        let target = TokenGrid { rows: 4, cols: 6 };
        let refs = [TokenGrid { rows: 3, cols: 2 }, TokenGrid { rows: 2, cols: 4 }];
        let ids = position_ids(0, target, &refs, PeMode::Diagonal);
        assert_eq!(span(&ids.refs[0]), ((4.0, 6.0), (6.0, 7.0)));
        assert_eq!(span(&ids.refs[1]), ((7.0, 8.0), (8.0, 11.0)));
        // Row-major token order.
        assert_eq!(ids.refs[0][..3], [[0.0, 4.0, 6.0], [0.0, 4.0, 7.0], [0.0, 5.0, 6.0]]);
    }

    #[test]
    fn ablation_modes() {
        let refs = [TokenGrid { rows: 3, cols: 2 }, TokenGrid { rows: 2, cols: 4 }];
        let target = TokenGrid { rows: 4, cols: 6 };
        let h = position_ids(0, target, &refs, PeMode::Height);
        assert_eq!(span(&h.refs[1]), ((7.0, 8.0), (0.0, 3.0)));
        let w = position_ids(0, target, &refs, PeMode::Width);
        assert_eq!(span(&w.refs[1]), ((0.0, 1.0), (8.0, 11.0)));
        let o = position_ids(0, target, &refs, PeMode::None);
        assert_eq!(span(&o.refs[1]), ((0.0, 1.0), (0.0, 3.0)));
    }

    #[test]
    fn modes_parse() {
        assert_eq!("d".parse::<PeMode>(), Ok(PeMode::Diagonal));
        assert_eq!(PeMode::Width.to_string(), "w");
        assert!("x".parse::<PeMode>().unwrap_err().contains("unknown position mode"));
    }
}
