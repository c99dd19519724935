//! The metadata store: versioned records with compare-and-set, watches, sessions with
//! ephemeral records and atomic multi-key transactions, over three real backends (memory for
//! unit tests, embedded RocksDB for the standalone, etcd for clusters), plus what every
//! component builds on top: typed JSON records with a CAS retry loop, a cluster-wide id
//! generator and a watch-fed read-through cache; and `FaultyStore`, any store with faults
//! on demand, for the tests of everything above.
//!
//! It owns no Magnetar record layouts (brokers and bookies define their own keys) and must
//! never depend on another Magnetar crate: `bookie`, `tiering` and `broker` depend on it.

mod cache;
mod error;
mod etcd;
mod faulty;
mod idgen;
pub mod key;
mod local;
mod memory;
mod ops;
mod records;
#[cfg(feature = "rocksdb")]
mod rocks;
mod store;
mod version;

pub use cache::RecordCache;
pub use error::{MetaError, Result};
pub use etcd::{EtcdConfig, EtcdStore};
pub use faulty::{FaultyStore, MetaFaults};
pub use idgen::IdGenerator;
pub use memory::MemoryStore;
pub use ops::{MAX_SESSION_TTL, MIN_SESSION_TTL};
pub use records::{MAX_CAS_ATTEMPTS, MetadataStoreExt, decode_json, encode_json};
#[cfg(feature = "rocksdb")]
pub use rocks::RocksStore;
pub use store::{
    EventKind, Expected, MetaStore, MetadataStore, Op, Session, SessionId, SessionState, Version,
    Versioned, Watch, WatchEvent,
};

use std::sync::Arc;

/// Opens the store a URL names:
/// - `memory://` — in this process only;
/// - `rocksdb:///absolute/path` or `rocksdb://relative/path` — embedded and durable;
/// - `etcd://host1:2379,host2:2379` — an etcd cluster.
pub async fn connect(url: &str) -> Result<MetaStore> {
    let bad = |why: &str| MetaError::InvalidArgument(format!("metadata url {url:?}: {why}"));
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("expected scheme://..., e.g. rocksdb:///var/lib/magnetar/meta"))?;
    match scheme {
        "memory" => Ok(Arc::new(MemoryStore::new()?)),
        #[cfg(feature = "rocksdb")]
        "rocksdb" => {
            if rest.is_empty() {
                return Err(bad("no path given"));
            }
            let path = rest.to_string();
            let store = tokio::task::spawn_blocking(move || RocksStore::open(path))
                .await
                .map_err(|e| MetaError::Backend(format!("open task failed: {e}")))??;
            Ok(Arc::new(store))
        }
        #[cfg(not(feature = "rocksdb"))]
        "rocksdb" => Err(bad("this build has no RocksDB backend (feature `rocksdb`)")),
        "etcd" => {
            let endpoints: Vec<String> = rest
                .trim_end_matches('/')
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            if endpoints.is_empty() {
                return Err(bad("no etcd endpoints given"));
            }
            Ok(Arc::new(
                EtcdStore::connect(EtcdConfig::new(endpoints)).await?,
            ))
        }
        other => Err(bad(&format!(
            "unknown scheme {other:?} (memory, rocksdb, etcd)"
        ))),
    }
}
