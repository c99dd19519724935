//! The storage node ("bookie") and the ledger client the broker uses to reach it.
//!
//! Built so far: the fsync'd journal with group commit (`journal`). Still to come: the entry
//! logs with their RocksDB index, the length-prefixed bookie wire protocol, and the ledger
//! client (quorum writes, fencing, recovery, ensemble changes, auto-recovery). Ledger and
//! bookie records will live in `meta`. It depends on `meta` only and must never import
//! `broker` or `tiering`.

pub mod error;
pub mod journal;

pub use error::{BookieError, Result};
