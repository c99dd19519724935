//! The entry cache: a topic's recent entries kept for tailing readers, under one budget shared
//! by every topic of a broker (Pulsar's managedLedgerCacheSizeMB is per broker too).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;

use crate::position::Position;

pub const DEFAULT_CACHE_BYTES: usize = 128 << 20;

/// The bytes the entry caches of a broker's topics hold together, and how many topics hold
/// some (each one's fair share is the budget divided among them).
#[derive(Debug, Default)]
pub struct CacheBudget {
    used: AtomicUsize,
    holders: AtomicUsize,
    /// Reads the caches answered / that went to storage, over all topics.
    hits: AtomicU64,
    misses: AtomicU64,
}

impl CacheBudget {
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn holders(&self) -> usize {
        self.holders.load(Ordering::Relaxed)
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    pub(crate) fn hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }
}

/// Bounded FIFO of a topic's recent entries.
#[derive(Debug)]
pub(crate) struct EntryCache {
    pub(crate) entries: BTreeMap<Position, Bytes>,
    pub(crate) bytes: usize,
    max: usize,
    budget: Arc<CacheBudget>,
    /// `entries_added` when housekeeping last looked: unchanged since means idle.
    pub(crate) seen_added: u64,
}

impl EntryCache {
    pub(crate) fn new(max: usize, budget: Arc<CacheBudget>) -> EntryCache {
        EntryCache {
            entries: BTreeMap::new(),
            bytes: 0,
            max,
            budget,
            seen_added: 0,
        }
    }

    /// Whether this cache can hold anything (a log whose storage is memory has none).
    pub(crate) fn enabled(&self) -> bool {
        self.max > 0
    }

    pub(crate) fn budget(&self) -> &CacheBudget {
        &self.budget
    }

    fn add_bytes(&mut self, n: usize) {
        let was = self.bytes;
        self.bytes += n;
        self.budget.used.fetch_add(n, Ordering::Relaxed);
        if was == 0 && self.bytes > 0 {
            self.budget.holders.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn sub_bytes(&mut self, n: usize) {
        let was = self.bytes;
        self.bytes -= n;
        self.budget.used.fetch_sub(n, Ordering::Relaxed);
        if was > 0 && self.bytes == 0 {
            self.budget.holders.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// This topic's part of an overdrawn budget: the budget split evenly among the topics
    /// holding some of it.
    fn fair_share(&self) -> usize {
        self.max / self.budget.holders().max(1)
    }

    /// Keeps `data`, then lets go of this topic's oldest entries while it is over its own
    /// bound, or while the budget is overdrawn and it holds more than its fair share. A
    /// topic under its share keeps its entries even then: the topics over theirs shrink at
    /// their next insert or housekeeping pass ([`EntryCache::shed`]), so the first busy topic
    /// cannot keep a later one from caching anything. The budget can so be overdrawn, by
    /// at most what under-share topics add before that.
    pub(crate) fn insert(&mut self, p: Position, data: Bytes) {
        if self.max == 0 || data.len() > self.max {
            return;
        }
        self.add_bytes(data.len());
        if let Some(old) = self.entries.insert(p, data) {
            self.sub_bytes(old.len());
        }
        self.evict_while(|c| c.bytes > c.max);
        self.shed();
    }

    /// Gives back what this topic holds beyond its fair share of an overdrawn budget.
    pub(crate) fn shed(&mut self) -> usize {
        self.evict_while(|c| c.budget.used() > c.max && c.bytes > c.fair_share())
    }

    /// Lets go of the oldest entries while `over` holds; the bytes released.
    fn evict_while(&mut self, over: impl Fn(&EntryCache) -> bool) -> usize {
        let mut released = 0;
        while over(self) {
            let Some((_, d)) = self.entries.pop_first() else {
                break;
            };
            released += d.len();
            self.sub_bytes(d.len());
        }
        released
    }

    /// Keeps only the entries at or after `from`.
    pub(crate) fn keep_from(&mut self, from: Position) {
        let keep = self.entries.split_off(&from);
        let dropped: usize = self.entries.values().map(Bytes::len).sum();
        self.entries = keep;
        self.sub_bytes(dropped);
    }

    pub(crate) fn clear(&mut self) {
        let all = self.bytes;
        self.entries.clear();
        self.sub_bytes(all);
    }
}

impl Drop for EntryCache {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: usize) -> Bytes {
        Bytes::from(vec![0u8; n])
    }

    #[test]
    fn topics_share_one_budget() {
        let budget = Arc::new(CacheBudget::default());
        let mut a = EntryCache::new(1000, Arc::clone(&budget));
        let mut b = EntryCache::new(1000, Arc::clone(&budget));
        for i in 0..6 {
            a.insert(Position::new(1, i), entry(100));
        }
        assert_eq!((a.bytes, budget.used(), budget.holders()), (600, 600, 1));
        // b fills the rest, then goes over: it keeps its fair share (half), from its own
        // oldest on, never taking a's
        for i in 0..6 {
            b.insert(Position::new(2, i), entry(100));
        }
        assert_eq!((a.bytes, b.bytes, budget.used()), (600, 500, 1100));
        assert_eq!(b.entries.keys().next(), Some(&Position::new(2, 1)));
        // a, over its share of the overdrawn budget, shrinks at its next insert
        a.insert(Position::new(1, 6), entry(100));
        assert_eq!((a.bytes, b.bytes, budget.used()), (500, 500, 1000));
        assert_eq!(a.entries.keys().next(), Some(&Position::new(1, 2)));
        // a third busy topic still caches: the first ones do not starve it
        let mut c = EntryCache::new(1000, Arc::clone(&budget));
        c.insert(Position::new(3, 0), entry(100));
        assert_eq!((c.bytes, budget.used(), budget.holders()), (100, 1100, 3));
        // housekeeping brings a and b back to their share (333 each)
        assert_eq!(a.shed() + b.shed(), 100);
        assert!(budget.used() <= 1000 && a.bytes <= 400 && b.bytes <= 500);
        // within its bound and the budget, shedding gives nothing back
        assert_eq!(c.shed(), 0);
        a.keep_from(Position::new(1, 5));
        assert_eq!(a.bytes, 200);
        drop(b);
        assert_eq!(budget.used(), 300);
        a.clear();
        c.clear();
        assert_eq!((budget.used(), budget.holders()), (0, 0));
    }

    #[test]
    fn a_cache_is_bounded_on_its_own_and_may_be_off() {
        let budget = Arc::new(CacheBudget::default());
        let mut small = EntryCache::new(300, Arc::clone(&budget));
        for i in 0..5 {
            small.insert(Position::new(1, i), entry(100));
        }
        assert_eq!(small.bytes, 300);
        assert_eq!(small.entries.keys().next(), Some(&Position::new(1, 2)));
        // an entry larger than the whole cache is not kept
        small.insert(Position::new(1, 5), entry(301));
        assert_eq!(small.bytes, 300);
        let mut off = EntryCache::new(0, budget);
        off.insert(Position::new(1, 0), entry(1));
        assert!(!off.enabled() && off.entries.is_empty());
    }
}
