//! Seeded, reproducible random draws keyed by what is being drawn for.
//!
//! A draw is a function of the DAG seed and a key (an operator name, a row id, an index), never
//! of the order rows arrive in, so re-partitioning or resuming a node gives the same draws.

/// A stream of uniform draws: blake3 in extendable-output mode over the seed and the key.
#[derive(Debug, Clone)]
pub struct Draws(blake3::OutputReader);

impl Draws {
    /// The draws for `key` under `seed` in `domain`.
    pub fn new(seed: u64, domain: &str, key: &[&[u8]]) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(&seed.to_le_bytes());
        for part in std::iter::once(domain.as_bytes()).chain(key.iter().copied()) {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
        Self(h.finalize_xof())
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.0.fill(&mut b);
        u64::from_le_bytes(b)
    }

    /// A uniform number in [0, 1) with 53 random bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A uniform index in `0..n` (`n > 0`); Lemire's widening multiply, bias below 2⁻⁶⁴·n.
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_same_draws_other_key_other_draws() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut d = Draws::new(1, "t", &[b"row"]);
                move |_| d.next_u64()
            })
            .collect();
        let mut again = Draws::new(1, "t", &[b"row"]);
        assert_eq!(a, (0..4).map(|_| again.next_u64()).collect::<Vec<_>>());
        assert_ne!(a[0], Draws::new(2, "t", &[b"row"]).next_u64());
        assert_ne!(a[0], Draws::new(1, "t", &[b"ro", b"w"]).next_u64());
    }

    #[test]
    fn below_covers_the_range_evenly() {
        let mut d = Draws::new(0, "t", &[]);
        let mut counts = [0usize; 3];
        for _ in 0..3000 {
            counts[d.below(3)] += 1;
        }
        assert!(counts.iter().all(|&c| (900..1100).contains(&c)), "{counts:?}");
    }
}
