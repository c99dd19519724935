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
