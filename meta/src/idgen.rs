//! Ids that are unique and increasing across every process sharing a store (ledger ids).

use crate::{MetaError, MetaStore, MetadataStoreExt, Result};

/// Hands out ids from a counter record by compare-and-set, one write per id. Every id is
/// larger than any id handed out before it by any process, which managed ledgers rely on to
/// order their ledgers. A crash between the write and the use of an id leaves a gap, never a
/// repeat.
#[derive(Debug, Clone)]
pub struct IdGenerator {
    store: MetaStore,
    key: String,
}

impl IdGenerator {
    pub fn new(store: MetaStore, key: impl Into<String>) -> IdGenerator {
        IdGenerator {
            store,
            key: key.into(),
        }
    }

    /// The next id; the first is 1.
    pub async fn next_id(&self) -> Result<u64> {
        let v = self
            .store
            .update_json::<u64, _, MetaError>(&self.key, |old| {
                let last = old.unwrap_or(0);
                last.checked_add(1).ok_or_else(|| MetaError::Corrupt {
                    key: self.key.clone(),
                    reason: "id counter is exhausted".into(),
                })
            })
            .await?;
        Ok(v.value)
    }
}
