//! The storage node ("bookie") and the ledger client the broker uses to reach it.
//!
//! Built so far: the fsync'd journal with group commit (`journal`) and ledger storage (entry
//! logs with a RocksDB index, caches, GC: `storage`). Still to come: the length-prefixed bookie wire protocol, and the ledger
//! client (quorum writes, fencing, recovery, ensemble changes, auto-recovery). Ledger and
//! bookie records will live in `meta`. It depends on `meta` only and must never import
//! `broker` or `tiering`.

pub mod autorecovery;
pub mod client;
pub mod error;
pub mod http;
pub mod journal;
pub mod ledger;
pub mod protocol;
pub mod server;
pub mod storage;

pub use error::{BookieError, Result};
