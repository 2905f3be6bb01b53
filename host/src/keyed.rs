//! Keyed hashing of ids the input chooses: transaction ids for
//! de-duplication, and entity keys for look-back state.
//!
//! An unkeyed hash of attacker-chosen ids lets a crafted stream pile ids
//! onto one slot of an index (hash flooding), or make two entities one.
//! xxh3 with a secret is made for this (its authors: a secret "makes it more
//! difficult for an external actor to prepare an intentional collision")
//! and costs what plain xxh3 does. The secret is derived from the PAN key:
//! secret as that key is, and the same on every daemon and every restart
//! that shares it, as stored hashes need. Changing the PAN key starts every
//! history afresh anyway (card tokens change with it).

use std::sync::Arc;
use xxhash_rust::xxh3::{xxh3_64_with_secret, xxh3_128_with_secret};

/// Bytes of secret: xxh3 needs at least 136.
const SECRET_BYTES: usize = 192;

/// xxh3 under a secret derived from the PAN key. Cheap to clone.
#[derive(Clone)]
pub struct KeyedHash {
    secret: Arc<[u8; SECRET_BYTES]>,
}

impl std::fmt::Debug for KeyedHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyedHash(<secret>)")
    }
}

impl KeyedHash {
    /// The hash keyed by `key`: in the daemon, derived from the PAN key
    /// (`Tokenizer::derive`).
    pub fn new(key: [u8; 32]) -> Self {
        use sha2::Digest;
        let mut secret = [0u8; SECRET_BYTES];
        for (i, chunk) in secret.chunks_mut(32).enumerate() {
            let block = sha2::Sha256::new().chain_update(key).chain_update([i as u8]).finalize();
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
        Self { secret: Arc::new(secret) }
    }

    /// A hash under a fixed key, for tests and benchmarks.
    pub fn for_tests() -> Self {
        Self::new([0x5a; 32])
    }

    /// The 128-bit hash of `bytes`.
    #[inline]
    pub fn hash128(&self, bytes: &[u8]) -> u128 {
        xxh3_128_with_secret(bytes, &self.secret[..])
    }

    /// The 64-bit hash of `bytes`.
    #[inline]
    pub fn hash64(&self, bytes: &[u8]) -> u64 {
        xxh3_64_with_secret(bytes, &self.secret[..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_depends_on_the_key_and_only_on_it() {
        let a = KeyedHash::new([1; 32]);
        let again = KeyedHash::new([1; 32]);
        let b = KeyedHash::new([2; 32]);
        assert_eq!(a.hash128(b"tx-1"), again.hash128(b"tx-1"), "stable across restarts and daemons");
        assert_ne!(a.hash128(b"tx-1"), b.hash128(b"tx-1"), "another key, other hashes");
        assert_ne!(a.hash128(b"tx-1"), xxhash_rust::xxh3::xxh3_128(b"tx-1"), "not the unkeyed hash");
        assert_ne!(a.hash64(b"tx-1"), a.hash64(b"tx-2"));
    }
}
