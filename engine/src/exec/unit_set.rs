//! A set of a node's unit indices, one bit each.
//!
//! A worker remembers which units other workers committed (to count their rows, to know the
//! node complete, and for the manifest's writer to know whose records to read). Units are
//! dense indices from 0, and at the end of a node a worker learns of nearly all of them at
//! once: as a `BTreeSet` that was tens of megabytes and 5–30 ms of inserts per worker at
//! 100,000 units; as bits it is 12.5 KB and a pass over a vector.

use std::collections::BTreeSet;

/// Indices from here on are kept in a tree, not as bits: a unit number comes from a listing of
/// the store, and one stray key naming unit 10¹² must not make a terabyte of bits (the bits
/// below this take 8 MiB at most).
const DENSE_UNITS: usize = 1 << 26;

/// A set of unit indices, one bit each (the vector grows to the largest index inserted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitSet {
    words: Vec<u64>,
    /// Indices of [`DENSE_UNITS`] and above.
    sparse: BTreeSet<usize>,
    len: usize,
}

impl UnitSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `unit`; whether it was new.
    pub fn insert(&mut self, unit: usize) -> bool {
        if unit >= DENSE_UNITS {
            let new = self.sparse.insert(unit);
            self.len += usize::from(new);
            return new;
        }
        let (word, bit) = (unit / 64, 1u64 << (unit % 64));
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let new = self.words[word] & bit == 0;
        self.words[word] |= bit;
        self.len += usize::from(new);
        new
    }

    pub fn contains(&self, unit: &usize) -> bool {
        if *unit >= DENSE_UNITS {
            return self.sparse.contains(unit);
        }
        self.words.get(unit / 64).is_some_and(|w| w & (1u64 << (unit % 64)) != 0)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The units, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        let dense = self.words.iter().enumerate().flat_map(|(i, &word)| {
            let mut rest = word;
            std::iter::from_fn(move || {
                (rest != 0).then(|| {
                    let bit = rest.trailing_zeros() as usize;
                    rest &= rest - 1;
                    i * 64 + bit
                })
            })
        });
        dense.chain(self.sparse.iter().copied())
    }
}

impl Extend<usize> for UnitSet {
    fn extend<I: IntoIterator<Item = usize>>(&mut self, units: I) {
        for unit in units {
            self.insert(unit);
        }
    }
}

impl FromIterator<usize> for UnitSet {
    fn from_iter<I: IntoIterator<Item = usize>>(units: I) -> Self {
        let mut set = Self::new();
        set.extend(units);
        set
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn holds_what_a_btreeset_holds_in_the_same_order() {
        // Scattered indices across word boundaries, with repeats.
        let units: Vec<usize> = (0..500).map(|i| (i * 7919) % 1031).chain([0, 63, 64, 127, 128, 1030]).collect();
        let expected: BTreeSet<usize> = units.iter().copied().collect();
        let set: UnitSet = units.iter().copied().collect();
        assert_eq!(set.len(), expected.len());
        assert_eq!(set.iter().collect::<Vec<_>>(), expected.iter().copied().collect::<Vec<_>>());
        assert!((0..1100).all(|u| set.contains(&u) == expected.contains(&u)));
        let mut again = set.clone();
        assert!(!again.insert(63), "a unit present is not new");
        assert!(again.insert(5_000), "a unit beyond the words grows them");
        assert_eq!((again.len(), again.iter().last()), (set.len() + 1, Some(5_000)));
        assert!(UnitSet::new().is_empty() && !UnitSet::new().contains(&0));
    }

    #[test]
    fn a_huge_index_costs_no_more_than_a_small_one() {
        let mut set: UnitSet = [3, 1_000_000_000_000, DENSE_UNITS, DENSE_UNITS - 1].into_iter().collect();
        assert!(set.words.len() <= DENSE_UNITS / 64, "bits only below the dense limit");
        assert!(!set.insert(1_000_000_000_000));
        assert_eq!(set.len(), 4);
        assert!(set.contains(&1_000_000_000_000) && set.contains(&DENSE_UNITS) && !set.contains(&(DENSE_UNITS + 1)));
        assert_eq!(set.iter().collect::<Vec<_>>(), [3, DENSE_UNITS - 1, DENSE_UNITS, 1_000_000_000_000]);
    }
}
