//! The managed ledger's [`Tier`]: opens offloaded ledgers from wherever their record says
//! they were written (stores are built once per location and kept), and deletes copies of
//! ledgers the log let go of. One per broker, shared by every log, with one block cache.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use magnetar_managed_ledger::LedgerInfo;
use magnetar_managed_ledger::storage::{Ledger, StorageError, StorageFuture};
use magnetar_managed_ledger::tier::Tier;
use object_store::ObjectStore;
use parking_lot::Mutex;

use crate::TierError;
use crate::offload::{self, OffloadRecord, SegmentOptions};
use crate::read::{self, BlockCache, OffloadedLedger};
use crate::stats::TierStats;
use crate::store::{self, Location};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierConfig {
    pub segment: SegmentOptions,
    /// Decoded blocks kept in memory, over every offloaded ledger.
    pub cache_bytes: usize,
    /// Bytes fetched ahead of a reader that moves forward block by block.
    pub readahead_bytes: usize,
}

impl Default for TierConfig {
    fn default() -> Self {
        TierConfig {
            segment: SegmentOptions::default(),
            cache_bytes: 64 << 20,
            readahead_bytes: 8 << 20,
        }
    }
}

pub struct ObjectTier {
    cfg: TierConfig,
    stores: Mutex<HashMap<Location, Arc<dyn ObjectStore>>>,
    cache: Arc<BlockCache>,
    stats: Arc<TierStats>,
}

impl fmt::Debug for ObjectTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectTier")
            .field("cfg", &self.cfg)
            .field("stores", &self.stores.lock().len())
            .field("cache", &self.cache)
            .finish()
    }
}

impl ObjectTier {
    pub fn new(cfg: TierConfig) -> ObjectTier {
        ObjectTier {
            cfg,
            stores: Mutex::default(),
            cache: Arc::new(BlockCache::new(cfg.cache_bytes)),
            stats: Arc::default(),
        }
    }

    pub fn config(&self) -> &TierConfig {
        &self.cfg
    }

    pub fn stats(&self) -> &Arc<TierStats> {
        &self.stats
    }

    pub fn cache(&self) -> &BlockCache {
        &self.cache
    }

    /// The store at `l`, built on first use.
    pub fn store(&self, l: &Location) -> Result<Arc<dyn ObjectStore>, TierError> {
        if let Some(s) = self.stores.lock().get(l) {
            return Ok(Arc::clone(s));
        }
        let s = store::open(l)?;
        Ok(Arc::clone(self.stores.lock().entry(l.clone()).or_insert(s)))
    }

    /// Opens offloaded ledger `info` for reading.
    pub async fn open_ledger(&self, info: &LedgerInfo) -> Result<OffloadedLedger, TierError> {
        let r = record_of(info)?;
        let store = self.store(&r.location)?;
        OffloadedLedger::open(
            store,
            &r,
            info.ledger_id,
            info.entries,
            Arc::clone(&self.cache),
            Arc::clone(&self.stats),
            self.cfg.readahead_bytes,
        )
        .await
    }

    /// Deletes a copy (both objects) and its cached blocks.
    pub async fn delete_copy(&self, r: &OffloadRecord) -> Result<(), TierError> {
        read::forget(&self.cache, r);
        offload::delete_copy(&self.store(&r.location)?, r).await
    }

    /// Deletes every object of log `log` at `l` (the log is deleted): recorded copies and
    /// orphans alike. Returns how many objects went.
    pub async fn delete_log(&self, l: &Location, log: &str) -> Result<usize, TierError> {
        offload::sweep(&self.store(l)?, log, &Default::default()).await
    }
}

/// The offload record in a ledger's entry of the log's record.
pub fn record_of(info: &LedgerInfo) -> Result<OffloadRecord, TierError> {
    let v = info
        .offload
        .as_ref()
        .ok_or_else(|| TierError::Refused(format!("ledger {} is not offloaded", info.ledger_id)))?;
    OffloadRecord::from_value(v)
}

impl Tier for ObjectTier {
    fn open(&self, ledger: LedgerInfo) -> StorageFuture<'_, Arc<dyn Ledger>> {
        Box::pin(async move {
            let l = self
                .open_ledger(&ledger)
                .await
                .map_err(StorageError::from)?;
            Ok(Arc::new(l) as Arc<dyn Ledger>)
        })
    }

    fn delete(&self, ledger: LedgerInfo) -> StorageFuture<'_, ()> {
        Box::pin(async move {
            let r = record_of(&ledger).map_err(StorageError::from)?;
            self.delete_copy(&r).await.map_err(StorageError::from)
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::offload::SegmentOptions;
    use crate::offloader::{LogOffloads, Phase, Which};
    use bytes::Bytes;
    use magnetar_managed_ledger::storage::{LedgerStorage, MemoryStorage};
    use magnetar_managed_ledger::{ManagedLedger, MlConfig, Position};

    fn entry(i: u64) -> Bytes {
        Bytes::from(format!("entry-{i}-").repeat(20))
    }

    async fn log(
        storage: &Arc<dyn LedgerStorage>,
        meta: &magnetar_meta::MetaStore,
        tier: &Arc<ObjectTier>,
    ) -> ManagedLedger {
        let cfg = MlConfig {
            max_entries_per_ledger: 100,
            cache_bytes: 0,
            tier: Some(Arc::clone(tier) as Arc<dyn Tier>),
            ..MlConfig::default()
        };
        ManagedLedger::open(
            "t",
            "a/b/persistent/t",
            Arc::clone(storage),
            meta.clone(),
            cfg,
        )
        .await
        .unwrap()
    }

    async fn read_all(ml: &ManagedLedger) -> Result<Vec<Bytes>, magnetar_managed_ledger::MlError> {
        let (entries, _) = ml
            .read_from(ml.before_first(), usize::MAX, |_| false)
            .await?;
        Ok(entries.into_iter().map(|(_, d)| d).collect())
    }

    #[tokio::test]
    async fn offloaded_ledgers_read_back_and_a_corrupt_copy_is_reported_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn LedgerStorage> = Arc::new(MemoryStorage::new());
        let meta: magnetar_meta::MetaStore = Arc::new(magnetar_meta::MemoryStore::new().unwrap());
        let tier = Arc::new(ObjectTier::new(TierConfig {
            segment: SegmentOptions {
                block_bytes: 4096,
                part_bytes: 5 << 20,
            },
            cache_bytes: 64 << 10,
            readahead_bytes: 16 << 10,
        }));
        let ml = log(&storage, &meta, &tier).await;
        for i in 0..250 {
            ml.append(entry(i), 1).await.unwrap();
        }
        let offloads = LogOffloads::default();
        let at = Location::filesystem(dir.path());
        assert!(offloads.begin());
        let all = Which::Before(Position::new(u64::MAX, i64::MAX));
        assert_eq!(offloads.run(&tier, &ml, &at, all, true).await.unwrap(), 2);
        let status = offloads.status();
        assert_eq!(status.phase, Phase::Success);
        assert_eq!(status.first_unoffloaded.map(|p| p.entry), Some(0));
        assert_eq!(
            ml.ledgers().iter().filter(|l| l.offload.is_some()).count(),
            2
        );
        // the storage copies go; every entry still reads, in order, from the tier
        for l in ml.ledgers().iter().filter(|l| l.offload.is_some()) {
            storage.delete(l.ledger_id).await.unwrap();
        }
        let got = read_all(&ml).await.unwrap();
        assert_eq!(got, (0..250).map(entry).collect::<Vec<_>>());
        assert!(
            tier.stats()
                .read_bytes
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
        );

        // flip one byte in the middle of a data object: a reader of a fresh log (no
        // cached blocks) gets an error naming the corruption, never the wrong bytes
        let first = ml.ledgers()[0].clone();
        let rec = record_of(&first).unwrap();
        let file = dir.path().join(&rec.key);
        let mut raw = std::fs::read(&file).unwrap();
        let mid = raw.len() / 2;
        raw[mid] ^= 0x01;
        std::fs::write(&file, raw).unwrap();
        let fresh = Arc::new(ObjectTier::new(TierConfig::default()));
        let reopened = log(&storage, &meta, &fresh).await;
        let err = read_all(&reopened).await.unwrap_err().to_string();
        assert!(err.contains("checksum") || err.contains("corrupt"), "{err}");

        // an orphan (a copy never recorded) is swept by the next run; recorded ones stay
        let orphan = dir
            .path()
            .join("a/b/persistent/t")
            .join(format!("1-{:032x}", 5u128));
        std::fs::write(&orphan, b"half").unwrap();
        assert!(offloads.begin());
        offloads.run(&tier, &ml, &at, all, true).await.unwrap();
        assert!(!orphan.exists());
        assert!(file.exists());
    }
}
