//! The deduplication cache of one exchange: which keys passed, until when, bounded in size.
//!
//! A key is live until its expiry (unix ms; 0 = never). When the cache is full the oldest
//! insertion goes first (the plugin evicts an unspecified entry; oldest-first is one such
//! choice and the one that keeps the most recent window, which is what retries hit).
//! Eviction being a pure function of the insertion order is also what lets the on-disk
//! file record insertions only: replaying them with the same bound evicts the same keys.
//!
//! Memory: two map entries per live key (a 16-byte digest, never the key itself), about
//! 100 bytes, at most `size_max` of them.

use std::collections::{BTreeMap, HashMap};

use ferrymq_store::DedupEntry;

/// A digest of a message's deduplication key (see [`super::message_key`]).
pub type Key = [u8; ferrymq_store::dedup_log::DEDUP_KEY_BYTES];

#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Insertion order.
    seq: u64,
    expiry_ms: u64,
}

impl Slot {
    fn live_at(&self, now_ms: u64) -> bool {
        self.expiry_ms == 0 || self.expiry_ms > now_ms
    }
}

#[derive(Debug)]
pub struct DedupCache {
    size_max: usize,
    slots: HashMap<Key, Slot>,
    /// seq → key: the oldest insertion first.
    order: BTreeMap<u64, Key>,
    next_seq: u64,
}

impl DedupCache {
    pub fn new(size_max: usize) -> Self {
        DedupCache {
            size_max: size_max.max(1),
            slots: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Lets `key` through (and remembers it until `expiry_ms`) unless it is live: returns
    /// `true` when it was let through, `false` for a duplicate.
    pub fn insert(&mut self, key: Key, expiry_ms: u64, now_ms: u64) -> bool {
        if self.slots.get(&key).is_some_and(|s| s.live_at(now_ms)) {
            return false;
        }
        self.put(key, expiry_ms, now_ms);
        true
    }

    /// Forgets `key` (its message was refused after all).
    pub fn remove(&mut self, key: &Key) {
        if let Some(slot) = self.slots.remove(key) {
            self.order.remove(&slot.seq);
        }
    }

    /// Rebuilds the cache from insertions in their original order (the cache file): it holds
    /// the newest live insertions, up to the size. That is every key the cache held before
    /// (replay evicts oldest first too), plus possibly keys that were evicted only because
    /// entries that have expired since took their room: more deduplication, never less.
    pub fn replay(&mut self, entries: &[DedupEntry], now_ms: u64) {
        for entry in entries {
            let live = entry.expiry_ms == 0 || entry.expiry_ms > now_ms;
            if live {
                self.put(entry.key, entry.expiry_ms, now_ms);
            }
        }
    }

    /// The live entries, oldest first: what a compacted file holds.
    pub fn entries(&self) -> Vec<DedupEntry> {
        self.order
            .values()
            .map(|key| DedupEntry {
                key: *key,
                expiry_ms: self.slots[key].expiry_ms,
            })
            .collect()
    }

    fn put(&mut self, key: Key, expiry_ms: u64, now_ms: u64) {
        if let Some(old) = self.slots.remove(&key) {
            self.order.remove(&old.seq);
        }
        // The oldest insertions are the first to expire under one TTL: dropping expired
        // ones from the front keeps the cache small without scanning it.
        while let Some((&seq, oldest)) = self.order.first_key_value() {
            if self.slots[oldest].live_at(now_ms) {
                break;
            }
            self.slots.remove(oldest);
            self.order.remove(&seq);
        }
        while self.slots.len() >= self.size_max {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.slots.remove(&oldest);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.slots.insert(key, Slot { seq, expiry_ms });
        self.order.insert(seq, key);
        debug_assert_eq!(self.slots.len(), self.order.len());
        debug_assert!(self.slots.len() <= self.size_max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Key {
        [n; 16]
    }

    #[test]
    fn a_live_key_is_a_duplicate_until_it_expires() {
        let mut cache = DedupCache::new(10);
        assert!(cache.insert(key(1), 1_500, 1_000));
        assert!(!cache.insert(key(1), 2_000, 1_499));
        // Expiry is exclusive: at the expiry instant the key may pass again (the plugin).
        assert!(cache.insert(key(1), 3_000, 1_500));
        assert!(!cache.insert(key(1), 3_000, 2_999));
    }

    #[test]
    fn keys_without_expiry_stay_until_evicted() {
        let mut cache = DedupCache::new(2);
        assert!(cache.insert(key(1), 0, 1));
        assert!(!cache.insert(key(1), 0, u64::MAX - 1));
        assert!(cache.insert(key(2), 0, 2));
        assert!(cache.insert(key(3), 0, 3));
        // The oldest went to make room.
        assert!(cache.insert(key(1), 0, 4));
        assert!(!cache.insert(key(3), 0, 5));
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn the_size_bounds_the_cache_whatever_the_keys() {
        let mut cache = DedupCache::new(100);
        for n in 0..10_000u32 {
            let mut k = [0u8; 16];
            k[..4].copy_from_slice(&n.to_be_bytes());
            assert!(cache.insert(k, 0, u64::from(n)));
            assert!(cache.len() <= 100);
        }
        assert_eq!(cache.order.len(), 100);
    }

    #[test]
    fn expired_keys_at_the_front_are_dropped_on_insert() {
        let mut cache = DedupCache::new(10);
        for n in 0..5 {
            cache.insert(key(n), 100, 0);
        }
        cache.insert(key(9), 1_000, 200);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn a_reinserted_key_moves_to_the_back_of_the_eviction_order() {
        let mut cache = DedupCache::new(2);
        cache.insert(key(1), 10, 0);
        cache.insert(key(2), 0, 1);
        // key 1 expired and comes back: now it is the newest, so key 2 is evicted next.
        cache.insert(key(1), 0, 20);
        cache.insert(key(3), 0, 21);
        assert!(!cache.insert(key(1), 0, 22));
        assert!(cache.insert(key(2), 0, 23));
    }

    #[test]
    fn replaying_the_insertions_rebuilds_the_same_cache() {
        let mut cache = DedupCache::new(3);
        let mut written = Vec::new();
        for (n, expiry) in [(1, 0), (2, 50), (3, 0), (4, 0), (5, 500)] {
            if cache.insert(key(n), expiry, 10) {
                written.push(DedupEntry {
                    key: key(n),
                    expiry_ms: expiry,
                });
            }
        }
        let mut rebuilt = DedupCache::new(3);
        rebuilt.replay(&written, 100);
        assert_eq!(rebuilt.entries(), cache.entries());
        // Time passed: key 2 (expiry 50) would be gone anyway; 3, 4, 5 remain.
        let keys: Vec<Key> = rebuilt.entries().iter().map(|e| e.key).collect();
        assert_eq!(keys, vec![key(3), key(4), key(5)]);
        // Later still key 5 expired too, and the newest live insertions up to the size are
        // kept: key 1 among them, although before the restart key 2 (still live then) had
        // taken its room. A rebuilt cache may remember more, never less.
        let mut later = DedupCache::new(3);
        later.replay(&written, 1_000);
        let keys: Vec<Key> = later.entries().iter().map(|e| e.key).collect();
        assert_eq!(keys, vec![key(1), key(3), key(4)]);
    }
}
