//! Reading offloaded ledgers: [`OffloadedLedger`] is a closed ledger served from its segment.
//! Its index is fetched once at open (with the data object's header, checked); entries come
//! from blocks fetched by ranged GETs into a bounded [`BlockCache`] shared by every offloaded
//! ledger of the broker. A reader moving forward block by block gets read-ahead: the next
//! blocks are fetched in one GET in the background before it asks, so a catch-up read from
//! the tier does not wait on a round trip per block. Concurrent reads of one block share one
//! fetch. Every GET is retried with backoff before its error reaches the reader, and then it
//! is a clear one (which ledger, where, what failed).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use magnetar_bookie::placement::Affinity;
use magnetar_managed_ledger::storage::{AppendFuture, Ledger, StorageError, StorageFuture};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parking_lot::Mutex;
use tracing::warn;

use crate::TierError;
use crate::offload::OffloadRecord;
use crate::segment::{self, HEADER_LEN, Index};
use crate::stats::TierStats;
use crate::store::{Location, with_retries};

/// Attempts of one ranged GET before a read fails.
pub const READ_ATTEMPTS: u32 = 4;

/// A decoded block: its entries in order.
type Block = Arc<Vec<(u64, Bytes)>>;

/// Decoded blocks of every offloaded ledger, least recently used out first once over budget.
pub struct BlockCache {
    budget: usize,
    inner: Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    blocks: HashMap<(u128, usize), (Block, u64, usize)>,
    /// Use tick -> key, oldest first.
    order: BTreeMap<u64, (u128, usize)>,
    tick: u64,
    bytes: usize,
}

impl fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.inner.lock();
        f.debug_struct("BlockCache")
            .field("budget", &self.budget)
            .field("bytes", &c.bytes)
            .field("blocks", &c.blocks.len())
            .finish()
    }
}

impl BlockCache {
    pub fn new(budget: usize) -> BlockCache {
        BlockCache {
            budget,
            inner: Mutex::default(),
        }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.inner.lock().bytes
    }

    fn get(&self, key: (u128, usize)) -> Option<Block> {
        let mut c = self.inner.lock();
        c.tick += 1;
        let tick = c.tick;
        let (block, used, _) = c.blocks.get_mut(&key)?;
        let block = Arc::clone(block);
        let old = std::mem::replace(used, tick);
        c.order.remove(&old);
        c.order.insert(tick, key);
        Some(block)
    }

    fn contains(&self, key: (u128, usize)) -> bool {
        self.inner.lock().blocks.contains_key(&key)
    }

    fn insert(&self, key: (u128, usize), block: Block, size: usize) {
        let mut c = self.inner.lock();
        c.tick += 1;
        let tick = c.tick;
        if let Some((_, old, old_size)) = c.blocks.insert(key, (block, tick, size)) {
            c.order.remove(&old);
            c.bytes -= old_size;
        }
        c.order.insert(tick, key);
        c.bytes += size;
        while c.bytes > self.budget {
            let Some((_, victim)) = c.order.pop_first() else {
                break;
            };
            if let Some((_, _, s)) = c.blocks.remove(&victim) {
                c.bytes -= s;
            }
        }
    }

    fn forget(&self, uid: u128) {
        let mut c = self.inner.lock();
        let keys: Vec<_> = c.blocks.keys().filter(|k| k.0 == uid).copied().collect();
        for k in keys {
            if let Some((_, tick, s)) = c.blocks.remove(&k) {
                c.order.remove(&tick);
                c.bytes -= s;
            }
        }
    }
}

type Fetch = Shared<BoxFuture<'static, Result<Arc<Vec<(usize, Block)>>, TierError>>>;

/// A closed ledger read from its offloaded copy.
pub struct OffloadedLedger {
    shared: Arc<Shared_>,
    index: Arc<Index>,
    /// Blocks fetched ahead of a sequential reader.
    readahead: usize,
    /// The block the last read was in (usize::MAX: none yet).
    last_block: AtomicUsize,
}

/// What fetch tasks need, owned so they can outlive a read.
struct Shared_ {
    ledger_id: u64,
    uid: u128,
    location: Location,
    store: Arc<dyn ObjectStore>,
    data: Path,
    cache: Arc<BlockCache>,
    stats: Arc<TierStats>,
    inflight: Mutex<HashMap<usize, Fetch>>,
}

impl fmt::Debug for OffloadedLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OffloadedLedger")
            .field("ledger_id", &self.shared.ledger_id)
            .field("location", &self.shared.location.to_string())
            .field("key", &self.shared.data.to_string())
            .finish()
    }
}

impl OffloadedLedger {
    /// Opens ledger `ledger_id`'s copy described by `r`, expecting `entries` entries: its
    /// index and the data object's header are fetched and checked.
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        r: &OffloadRecord,
        ledger_id: u64,
        entries: u64,
        cache: Arc<BlockCache>,
        stats: Arc<TierStats>,
        readahead_bytes: usize,
    ) -> Result<OffloadedLedger, TierError> {
        let uid = u128::from_str_radix(&r.uid, 16)
            .map_err(|_| TierError::Corrupt(format!("offload record uid {:?}", r.uid)))?;
        let data = r.data_path();
        let index_path = r.index_path();
        let what = |e: object_store::Error| TierError::Read {
            ledger: ledger_id,
            at: format!("{} ({index_path})", r.location),
            error: e.to_string(),
        };
        let started = Instant::now();
        let (raw_index, header) = futures::try_join!(
            with_retries(READ_ATTEMPTS, || async {
                store.get(&index_path).await?.bytes().await
            }),
            with_retries(READ_ATTEMPTS, || store
                .get_range(&data, 0..HEADER_LEN as u64)),
        )
        .map_err(|e| {
            stats.read_failed();
            what(e)
        })?;
        stats.read((raw_index.len() + header.len()) as u64, started.elapsed());
        let corrupt = |e: segment::SegmentError| {
            TierError::Corrupt(format!(
                "ledger {ledger_id} at {} ({data}): {e}",
                r.location
            ))
        };
        let index = Index::decode(&raw_index).map_err(corrupt)?;
        segment::check_header(&header, ledger_id).map_err(corrupt)?;
        if index.ledger_id != ledger_id || index.entries != entries || index.data_len != r.data_len
        {
            return Err(TierError::Corrupt(format!(
                "ledger {ledger_id} at {} ({data}): the index holds ledger {} with {} entries \
                 in {} bytes, the log recorded {entries} entries in {} bytes",
                r.location, index.ledger_id, index.entries, index.data_len, r.data_len
            )));
        }
        let avg_block = (index.data_len as usize / index.blocks.len().max(1)).max(1);
        Ok(OffloadedLedger {
            shared: Arc::new(Shared_ {
                ledger_id,
                uid,
                location: r.location.clone(),
                store,
                data,
                cache,
                stats,
                inflight: Mutex::default(),
            }),
            index: Arc::new(index),
            readahead: (readahead_bytes / avg_block).clamp(1, 256),
            last_block: AtomicUsize::new(usize::MAX),
        })
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Reads entry `entry`, fetching (and reading ahead) as needed.
    pub async fn read_entry(&self, entry: u64) -> Result<Bytes, TierError> {
        let bi = block_index(&self.index, entry).ok_or(TierError::NoEntry {
            ledger: self.shared.ledger_id,
            entry,
        })?;
        let last = self.last_block.swap(bi, Ordering::Relaxed);
        let sequential = last == bi || last.wrapping_add(1) == bi;
        let key = (self.shared.uid, bi);
        let block = match self.shared.cache.get(key) {
            Some(b) => {
                self.shared.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                b
            }
            None => {
                self.shared
                    .stats
                    .cache_misses
                    .fetch_add(1, Ordering::Relaxed);
                let n = if sequential { self.readahead } else { 1 };
                let fetched = self.start(bi, n).await?;
                fetched
                    .iter()
                    .find(|(i, _)| *i == bi)
                    .map(|(_, b)| Arc::clone(b))
                    .ok_or_else(|| TierError::Corrupt(format!("block {bi} not fetched")))?
            }
        };
        if sequential {
            self.read_ahead(bi);
        }
        let first = self.index.blocks[bi].first_entry;
        block
            .get((entry - first) as usize)
            .map(|(_, e)| e.clone())
            .ok_or_else(|| {
                TierError::Corrupt(format!(
                    "entry {entry} missing from its block in ledger {}",
                    self.shared.ledger_id
                ))
            })
    }

    /// Keeps the window after block `bi` filled: once fewer than half of the next
    /// `readahead` blocks are cached or on their way, the missing run is fetched.
    fn read_ahead(&self, bi: usize) {
        let end = (bi + 1 + self.readahead).min(self.index.blocks.len());
        let missing = (bi + 1..end).find(|i| !self.present(*i));
        if let Some(from) = missing
            && from - bi <= self.readahead.div_ceil(2)
        {
            drop(self.start(from, self.readahead));
        }
    }

    fn present(&self, i: usize) -> bool {
        self.shared.inflight.lock().contains_key(&i)
            || self.shared.cache.contains((self.shared.uid, i))
    }

    /// The fetch that brings block `bi`: the one in flight, or a new one of blocks
    /// `bi..bi+n` (stopping at the first present) started now as a task of its own.
    fn start(&self, bi: usize, n: usize) -> Fetch {
        let mut inflight = self.shared.inflight.lock();
        if let Some(f) = inflight.get(&bi) {
            return f.clone();
        }
        let mut end = bi + 1;
        let limit = (bi + n.max(1)).min(self.index.blocks.len());
        while end < limit
            && !inflight.contains_key(&end)
            && !self.shared.cache.contains((self.shared.uid, end))
        {
            end += 1;
        }
        let shared = Arc::clone(&self.shared);
        let index = Arc::clone(&self.index);
        let range = bi..end;
        let task = tokio::spawn(fetch_blocks(shared, index, range.clone()));
        let fut: BoxFuture<'static, _> = async move {
            task.await
                .map_err(|e| TierError::Source(format!("fetch task: {e}")))?
        }
        .boxed();
        let fut = fut.shared();
        for i in range {
            inflight.insert(i, fut.clone());
        }
        fut
    }
}

/// Fetches blocks `range` in one ranged GET, decodes them into the cache and lets go of
/// their in-flight entries.
async fn fetch_blocks(
    s: Arc<Shared_>,
    index: Arc<Index>,
    range: Range<usize>,
) -> Result<Arc<Vec<(usize, Block)>>, TierError> {
    let res = fetch_and_decode(&s, &index, range.clone()).await;
    if let Ok(blocks) = &res {
        for (i, b) in blocks.iter() {
            let size = b.iter().map(|(_, e)| e.len()).sum::<usize>() + 64;
            s.cache.insert((s.uid, *i), Arc::clone(b), size);
        }
    }
    let mut inflight = s.inflight.lock();
    for i in range {
        inflight.remove(&i);
    }
    res
}

async fn fetch_and_decode(
    s: &Shared_,
    index: &Index,
    range: Range<usize>,
) -> Result<Arc<Vec<(usize, Block)>>, TierError> {
    let refs = &index.blocks[range.clone()];
    let (Some(first), Some(last)) = (refs.first(), refs.last()) else {
        return Ok(Arc::new(Vec::new()));
    };
    let bytes = first.offset..last.offset + u64::from(last.len);
    let started = Instant::now();
    let raw = with_retries(READ_ATTEMPTS, || s.store.get_range(&s.data, bytes.clone()))
        .await
        .map_err(|e| {
            s.stats.read_failed();
            warn!(ledger_id = s.ledger_id, location = %s.location, key = %s.data, error = %e, "tiered read failed after retries");
            TierError::Read {
                ledger: s.ledger_id,
                at: format!("{} ({}, bytes {}..{})", s.location, s.data, bytes.start, bytes.end),
                error: e.to_string(),
            }
        })?;
    s.stats.read(raw.len() as u64, started.elapsed());
    if raw.len() as u64 != bytes.end - bytes.start {
        return Err(TierError::Corrupt(format!(
            "ledger {} at {} ({}): asked for {} bytes, got {}",
            s.ledger_id,
            s.location,
            s.data,
            bytes.end - bytes.start,
            raw.len()
        )));
    }
    let mut out = Vec::with_capacity(refs.len());
    for (i, r) in range.zip(refs) {
        let at = (r.offset - first.offset) as usize;
        let block = raw.slice(at..at + r.len as usize);
        let entries = segment::decode_block(block, r).map_err(|e| {
            TierError::Corrupt(format!(
                "ledger {} at {} ({}), block {i}: {e}",
                s.ledger_id, s.location, s.data
            ))
        })?;
        out.push((i, Arc::new(entries)));
    }
    Ok(Arc::new(out))
}

/// The position in `index.blocks` of the block holding `entry`.
fn block_index(index: &Index, entry: u64) -> Option<usize> {
    let i = index
        .blocks
        .partition_point(|b| b.first_entry <= entry)
        .checked_sub(1)?;
    (entry <= index.blocks[i].last_entry()).then_some(i)
}

impl Ledger for OffloadedLedger {
    fn id(&self) -> u64 {
        self.shared.ledger_id
    }

    fn affinity(&self) -> Option<Affinity> {
        None
    }

    fn last_entry(&self) -> i64 {
        self.index.last_entry
    }

    fn submit(&self, _data: Bytes) -> Result<AppendFuture, StorageError> {
        Err(StorageError::Closed(self.shared.ledger_id))
    }

    fn read(&self, entry: u64) -> StorageFuture<'_, Bytes> {
        Box::pin(async move { self.read_entry(entry).await.map_err(StorageError::from) })
    }

    fn close(&self) -> StorageFuture<'_, i64> {
        Box::pin(futures::future::ready(Ok(self.index.last_entry)))
    }
}

/// Drops a deleted copy's blocks from the cache.
pub(crate) fn forget(cache: &BlockCache, r: &OffloadRecord) {
    if let Ok(uid) = u128::from_str_radix(&r.uid, 16) {
        cache.forget(uid);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_cache_keeps_to_its_budget_and_drops_the_least_recently_used() {
        let c = BlockCache::new(300);
        let b = |n: u64| Arc::new(vec![(n, Bytes::from(vec![0u8; 90]))]);
        c.insert((1, 0), b(0), 100);
        c.insert((1, 1), b(1), 100);
        c.insert((1, 2), b(2), 100);
        assert!(c.get((1, 0)).is_some(), "0 used again: 1 is now the oldest");
        c.insert((2, 0), b(3), 100);
        assert!(c.get((1, 1)).is_none());
        assert!(c.get((1, 0)).is_some() && c.get((1, 2)).is_some());
        assert_eq!(c.bytes(), 300);
        c.forget(1);
        assert_eq!(c.bytes(), 100);
        assert!(c.get((2, 0)).is_some());
    }

    #[test]
    fn entries_map_to_their_blocks() {
        let mut w = segment::SegmentWriter::new(1, 1024);
        for i in 0..100u64 {
            w.add(&[i as u8; 100]).unwrap();
        }
        let (_, index) = w.finish();
        for e in 0..100 {
            let i = block_index(&index, e).unwrap();
            let b = index.blocks[i];
            assert!(b.first_entry <= e && e <= b.last_entry());
        }
        assert_eq!(block_index(&index, 100), None);
    }
}
