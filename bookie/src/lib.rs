//! The storage node ("bookie") and the ledger client the broker uses to reach it.
//!
//! It will own the fsync'd journal with group commit, the entry logs with their RocksDB index,
//! the length-prefixed bookie wire protocol, and the ledger client (quorum writes, fencing,
//! recovery, ensemble changes, auto-recovery). Ledger and bookie records live in `meta`.
//! It depends on `meta` only and must never import `broker` or `tiering`.
