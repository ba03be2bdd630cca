//! Stable row ids: 128-bit blake3 digests written as 32 hex digits.
//!
//! Ids are derived from what a row is made of (its content, or the ids of the rows it came from
//! and the operator that made it), never from where it sits in a table, so they survive
//! re-partitioning, reordering and renaming.

/// Builds a row id from a sequence of fields; each field is length-prefixed so that
/// `("ab", "c")` and `("a", "bc")` differ.
#[derive(Debug, Clone, Default)]
pub struct RowIdHasher(blake3::Hasher);

impl RowIdHasher {
    /// A hasher in the given domain (e.g. the operator name), so that ids of different kinds of
    /// rows never collide by construction.
    pub fn new(domain: &str) -> Self {
        let mut h = Self(blake3::Hasher::new());
        h.field(domain.as_bytes());
        h
    }

    /// Adds one field.
    pub fn field(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.update(&(bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
        self
    }

    /// The id: the first 16 bytes of the digest in lowercase hex.
    pub fn finish(&self) -> String {
        let digest = self.0.finalize();
        hex(&digest.as_bytes()[..16])
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_length_prefixed() {
        let a = RowIdHasher::new("t").field(b"ab").field(b"c").finish();
        let b = RowIdHasher::new("t").field(b"a").field(b"bc").finish();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
    }

    #[test]
    fn domain_separates() {
        let a = RowIdHasher::new("x").field(b"1").finish();
        let b = RowIdHasher::new("y").field(b"1").finish();
        assert_ne!(a, b);
    }

    #[test]
    fn hex_digits() {
        assert_eq!(hex(&[0x00, 0xab, 0x7f]), "00ab7f");
    }
}
