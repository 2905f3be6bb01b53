//! Partition: `hash(key) mod P` chooses the worker that owns an event's key,
//! so all events of one key are handled in order by one worker, which owns
//! that key's state outright (no locks on the hot path).

use xxhash_rust::xxh3::xxh3_64;

use crate::config::PartitionKey;
use crate::event::Payment;

/// Maps events to workers.
#[derive(Debug, Clone, Copy)]
pub struct Partitioner {
    key: PartitionKey,
    parts: u64,
}

impl Partitioner {
    /// A partitioner over `parts` workers (at least one).
    pub fn new(key: PartitionKey, parts: usize) -> Self {
        Self { key, parts: parts.max(1) as u64 }
    }

    /// The key an event is partitioned by; the account when the configured
    /// field is absent.
    pub fn key_of<'a>(&self, p: &'a Payment) -> &'a str {
        let field = match self.key {
            PartitionKey::Account => None,
            PartitionKey::Card => p.card.as_ref().map(|c| c.token.as_str()),
            PartitionKey::Device => p.device.as_deref(),
            PartitionKey::Ip => p.ip.as_deref(),
            PartitionKey::Merchant => p.merchant.as_ref().map(|m| m.id.as_str()),
        };
        field.unwrap_or(&p.account)
    }

    /// The worker for a key.
    pub fn partition_key(&self, key: &str) -> usize {
        (xxh3_64(key.as_bytes()) % self.parts) as usize
    }

    /// The worker for an event.
    pub fn partition(&self, p: &Payment) -> usize {
        self.partition_key(self.key_of(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_key_always_lands_on_the_same_worker_in_range(key in ".{0,40}", parts in 1usize..64) {
            let p = Partitioner::new(PartitionKey::Account, parts);
            let w = p.partition_key(&key);
            prop_assert!(w < parts);
            prop_assert_eq!(w, p.partition_key(&key));
        }
    }

    #[test]
    fn keys_spread_over_all_workers() {
        let p = Partitioner::new(PartitionKey::Account, 8);
        let mut counts = [0usize; 8];
        for i in 0..8000 {
            counts[p.partition_key(&format!("acct-{i}"))] += 1;
        }
        // Each worker gets its share within a generous tolerance.
        assert!(counts.iter().all(|&c| (700..1300).contains(&c)), "{counts:?}");
    }
}
