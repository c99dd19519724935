//! The storage seam: where a managed ledger's ledgers live. One trait, three implementations:
//! bookie ledgers ([`BookieStorage`], replicated and durable), memory ([`MemoryStorage`],
//! non-persistent topics and unit tests) and a fault-injecting wrapper ([`FaultyStorage`])
//! around either. The managed ledger never sees more than this.
//!
//! A ledger has one writer: [`Ledger::submit`] numbers each entry at the call, so a caller can
//! pipeline appends and keep their order; an entry completes once it and every earlier one is
//! durable. A closed ledger never changes. [`LedgerStorage::recover`] takes a ledger away from
//! a writer that may still be alive (fencing it) and seals it at its last durable entry.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use magnetar_bookie::placement::Affinity;

mod bookie;
pub mod conformance;
mod faulty;
mod memory;

pub use bookie::BookieStorage;
pub use faulty::{Call, Faults, FaultyStorage};
pub use memory::MemoryStorage;

pub type StorageFuture<'a, T> = BoxFuture<'a, Result<T, StorageError>>;

/// Resolves with an entry's id once it (and every entry before it) is durable.
pub type AppendFuture = BoxFuture<'static, Result<u64, StorageError>>;

/// Reads of one ledger running at once (a range read, a catch-up read).
pub const READ_CONCURRENCY: usize = 32;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StorageError {
    #[error("ledger {0} does not exist")]
    NoSuchLedger(u64),
    /// The storage let go of this entry (a bounded memory storage): readers pass over it.
    #[error("entry {entry} of ledger {ledger} is no longer held")]
    Gone { ledger: u64, entry: u64 },
    #[error("ledger {0} was fenced: another writer took it over")]
    Fenced(u64),
    #[error("ledger {0} is closed")]
    Closed(u64),
    /// Not possible now (too few storage nodes, no room); may pass by itself.
    #[error("{0}")]
    Unavailable(String),
    /// Too much in flight: the caller should slow down, not fail its client.
    #[error("{0}")]
    Overloaded(String),
    #[error("{0}")]
    Failed(String),
}

/// How a new ledger is replicated and where it may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub ensemble_size: usize,
    pub write_quorum: usize,
    pub ack_quorum: usize,
    /// The groups its copies must come from (a namespace's bookie affinity); storages
    /// without such groups record it and otherwise ignore it.
    pub affinity: Option<Affinity>,
}

impl Default for Placement {
    fn default() -> Self {
        Placement {
            ensemble_size: 1,
            write_quorum: 1,
            ack_quorum: 1,
            affinity: None,
        }
    }
}

/// Creates, opens, recovers and deletes ledgers.
pub trait LedgerStorage: Send + Sync + fmt::Debug {
    /// A new, empty ledger open for appends.
    fn create(&self, placement: &Placement) -> StorageFuture<'_, Arc<dyn Ledger>>;

    /// A closed ledger, for reading.
    fn open(&self, id: u64) -> StorageFuture<'_, Arc<dyn Ledger>>;

    /// Fences the ledger against its writer (alive or not), seals it at the last entry that
    /// may have been acknowledged, and returns that entry's id (-1: empty).
    fn recover(&self, id: u64) -> StorageFuture<'_, i64>;

    fn delete(&self, id: u64) -> StorageFuture<'_, ()>;

    /// Bytes the storage holds for the ledger, if it can tell without reading it.
    fn stored_bytes(&self, _id: u64) -> StorageFuture<'_, Option<u64>> {
        Box::pin(futures::future::ready(Ok(None)))
    }
}

/// One ledger: the writer's handle while open, a reader's once closed.
pub trait Ledger: Send + Sync + fmt::Debug {
    fn id(&self) -> u64;

    /// The affinity its data was placed by.
    fn affinity(&self) -> Option<Affinity>;

    /// The last entry durable with every one before it (-1: none).
    fn last_entry(&self) -> i64;

    /// Numbers the entry now (ids follow the order of calls) and stores it. An error here
    /// means the ledger takes nothing more; an error from the future, that this entry (and,
    /// completion being ordered, every later one) did not become durable.
    fn submit(&self, data: Bytes) -> Result<AppendFuture, StorageError>;

    /// Reads one entry the ledger has confirmed.
    fn read(&self, entry: u64) -> StorageFuture<'_, Bytes>;

    /// Reads entries `first..=last` in order.
    fn read_range(&self, first: u64, last: u64) -> StorageFuture<'_, Vec<Bytes>> {
        Box::pin(
            futures::stream::iter(first..=last)
                .map(move |e| self.read(e))
                .buffered(READ_CONCURRENCY)
                .try_collect(),
        )
    }

    /// Waits for what was submitted, then seals the ledger; returns its last entry (-1:
    /// empty). `Fenced` if another writer recovered it meanwhile.
    fn close(&self) -> StorageFuture<'_, i64>;
}
