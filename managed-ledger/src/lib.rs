//! The managed ledger: a topic's log as an ordered list of ledgers (`managed_ledger`), the
//! positions in it (`position`), the cursors that consume it (`cursor`) and the cache of its
//! recent entries (`cache`). It owns the log's record (`/managed-ledgers/{path}`) and its
//! cursors' records (`/cursors/{path}/{subscription}`), each changed only by compare-and-set.
//!
//! It reaches storage through one trait (`storage::LedgerStorage`: bookie ledgers, memory, or
//! a fault-injecting wrapper), learns what an entry holds through `format::EntryFormat`, asks
//! the time of a `clock::Clock`, and reads offloaded ledgers through `tier::Tier`, the seam
//! tiered storage plugs into. It must never import the broker or the Pulsar protocol crate:
//! entries are opaque bytes here, and policies arrive as plain numbers. It builds without
//! RocksDB and its tests need no bookie.

pub mod cache;
pub mod clock;
pub mod cursor;
pub mod format;
pub mod managed_ledger;
pub mod position;
pub mod record;
pub mod storage;
pub mod tier;

pub use cache::CacheBudget;
pub use cursor::Cursor;
pub use format::EntryFormat;
pub use managed_ledger::{AppendWait, ManagedLedger, MlConfig, MlError, MlStats, Retention};
pub use position::{Position, RangeSet};
pub use record::LedgerInfo;
pub use storage::{LedgerStorage, Placement, StorageError};
