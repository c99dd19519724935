//! Offload of closed ledgers to object storage, and reading them back. It owns the segment
//! format (`segment`: a data object of CRC32C'd blocks and an index object), the stores
//! (`store`: local filesystem, S3 and S3-compatible servers, GCS, Azure through
//! `object_store`), writing a ledger's copy and sweeping orphaned objects (`offload`), ranged,
//! read-ahead and cached reads of copies (`read`), the managed ledger's `Tier`
//! (`tier::ObjectTier`), and the per-log offload runs with their thresholds and status
//! (`offloader`). It sees logs only through the managed ledger (opaque entries, ledger
//! records); it knows nothing of topics, subscriptions or the Pulsar protocol and must never
//! import `broker`.

pub mod offload;
pub mod offloader;
pub mod read;
pub mod segment;
pub mod stats;
pub mod store;
pub mod tier;

use magnetar_managed_ledger::{MlError, StorageError};

pub use offload::{OffloadRecord, SegmentOptions};
pub use offloader::{LogOffloads, Phase, Status, Which};
pub use stats::TierStats;
pub use store::{Driver, Location};
pub use tier::{ObjectTier, TierConfig};

#[derive(Debug, Clone, thiserror::Error)]
pub enum TierError {
    #[error("offload configuration: {0}")]
    Config(String),
    #[error("object store: {0}")]
    Store(String),
    #[error("tiered read of ledger {ledger} from {at} failed after retries: {error}")]
    Read {
        ledger: u64,
        at: String,
        error: String,
    },
    #[error("offloaded data is corrupt: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Segment(#[from] segment::SegmentError),
    #[error("reading the ledger to offload: {0}")]
    Source(String),
    #[error("entry {entry} is not in offloaded ledger {ledger}")]
    NoEntry { ledger: u64, entry: u64 },
    #[error(transparent)]
    Log(#[from] MlError),
    #[error("{0}")]
    Refused(String),
}

impl From<object_store::Error> for TierError {
    fn from(e: object_store::Error) -> Self {
        TierError::Store(e.to_string())
    }
}

impl From<TierError> for StorageError {
    fn from(e: TierError) -> Self {
        match e {
            // may pass: the store was unreachable
            TierError::Read { .. } | TierError::Store(_) => {
                StorageError::Unavailable(e.to_string())
            }
            TierError::Log(MlError::Storage(s)) => s,
            other => StorageError::Failed(other.to_string()),
        }
    }
}
