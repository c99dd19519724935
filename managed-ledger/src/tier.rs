//! The read path's extension point for tiered storage: a closed ledger whose entries were
//! copied elsewhere (object storage) is read from there. The tier records what it needs in the
//! ledger's entry of the log's record ([`LedgerInfo::offload`], opaque here); the managed
//! ledger routes reads of such a ledger to the tier and asks it to delete its copy when the
//! ledger is trimmed. How and where the copy lives is the tier's business alone.

use std::fmt;
use std::sync::Arc;

use crate::record::LedgerInfo;
use crate::storage::{Ledger, StorageFuture};

pub trait Tier: Send + Sync + fmt::Debug {
    /// Opens an offloaded ledger for reading (`ledger.offload` is set).
    fn open(&self, ledger: LedgerInfo) -> StorageFuture<'_, Arc<dyn Ledger>>;

    /// Deletes the tier's copy of a ledger the log no longer holds.
    fn delete(&self, ledger: LedgerInfo) -> StorageFuture<'_, ()>;
}
