//! The storage node ("bookie") and what the broker uses to reach it. It owns the fsync'd
//! journal with group commit, whose files also hold the entries (`journal`), ledger storage:
//! the RocksDB index into those files, caches, GC (`storage`), latency histograms
//! (`histogram`), the bookie wire protocol and its server (`protocol`, `server`, `http`), one
//! pipelined connection to a bookie (`client`), the ledger client with quorum writes, fencing,
//! recovery and ensemble changes (`ledger`, with recovery's decisions kept pure in `recovery`), and auto-recovery (`autorecovery`). Ledger and
//! bookie records live in `meta`. It depends on `meta` only and must never import `broker` or
//! `tiering`. Feature `server` (default) holds the node itself; without it only the client side
//! builds, with no RocksDB.

pub mod autorecovery;
pub mod client;
pub mod error;
pub mod histogram;
#[cfg(feature = "server")]
pub mod http;
#[cfg(feature = "server")]
pub mod journal;
pub mod ledger;
pub mod placement;
pub mod protocol;
pub mod recovery;
pub mod registration;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod storage;

pub use error::{BookieError, Result};
