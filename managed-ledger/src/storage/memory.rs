//! Ledgers in memory. Unbounded for unit tests; bounded for non-persistent topics, where what
//! no longer fits is let go of, oldest first, and reads of it answer [`StorageError::Gone`]
//! (a slow consumer of a non-persistent topic loses messages, as it would in Pulsar, but only
//! once the topic's memory bound is reached).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use futures::future::ready;
use magnetar_bookie::placement::Affinity;
use parking_lot::Mutex;

use super::{AppendFuture, Ledger, LedgerStorage, Placement, StorageError, StorageFuture};

#[derive(Debug, Clone, Default)]
pub struct MemoryStorage {
    inner: Arc<Mutex<MemState>>,
}

#[derive(Debug, Default)]
struct MemState {
    next_id: u64,
    ledgers: BTreeMap<u64, MemLedger>,
    /// Bytes held over all ledgers, and the bound (None: unbounded).
    bytes: usize,
    max_bytes: Option<usize>,
}

#[derive(Debug)]
struct MemLedger {
    /// Entries from `first_held` on (earlier ones were let go of).
    entries: VecDeque<Bytes>,
    first_held: u64,
    bytes: usize,
    closed: bool,
    /// Recovered by someone else: the writer's appends and close fail.
    fenced: bool,
    affinity: Option<Affinity>,
}

impl MemLedger {
    fn last(&self) -> i64 {
        (self.first_held + self.entries.len() as u64) as i64 - 1
    }
}

impl MemState {
    /// Lets go of the oldest held entries (lowest ledger first) while over the bound.
    fn shed(&mut self) {
        let Some(max) = self.max_bytes else { return };
        while self.bytes > max {
            let Some(l) = self.ledgers.values_mut().find(|l| !l.entries.is_empty()) else {
                return;
            };
            if let Some(d) = l.entries.pop_front() {
                l.first_held += 1;
                l.bytes -= d.len();
                self.bytes -= d.len();
            }
        }
    }
}

impl MemoryStorage {
    /// Keeps everything until deleted.
    pub fn new() -> MemoryStorage {
        MemoryStorage::default()
    }

    /// Holds at most `max_bytes` of entries over all its ledgers.
    pub fn bounded(max_bytes: usize) -> MemoryStorage {
        let s = MemoryStorage::default();
        s.inner.lock().max_bytes = Some(max_bytes);
        s
    }

    /// Bytes held now, over all ledgers.
    pub fn bytes(&self) -> usize {
        self.inner.lock().bytes
    }

    /// Ids of the ledgers that exist.
    pub fn ledger_ids(&self) -> Vec<u64> {
        self.inner.lock().ledgers.keys().copied().collect()
    }

    fn handle(&self, id: u64) -> Arc<dyn Ledger> {
        Arc::new(MemoryLedger {
            id,
            store: Arc::clone(&self.inner),
        })
    }
}

impl LedgerStorage for MemoryStorage {
    fn create(&self, placement: &Placement) -> StorageFuture<'_, Arc<dyn Ledger>> {
        let id = {
            let mut st = self.inner.lock();
            st.next_id += 1;
            let id = st.next_id;
            st.ledgers.insert(
                id,
                MemLedger {
                    entries: VecDeque::new(),
                    first_held: 0,
                    bytes: 0,
                    closed: false,
                    fenced: false,
                    affinity: placement.affinity.clone(),
                },
            );
            id
        };
        Box::pin(ready(Ok(self.handle(id))))
    }

    fn open(&self, id: u64) -> StorageFuture<'_, Arc<dyn Ledger>> {
        let res = match self.inner.lock().ledgers.get(&id) {
            None => Err(StorageError::NoSuchLedger(id)),
            Some(l) if !l.closed => Err(StorageError::Failed(format!(
                "ledger {id} is not closed; recover it first"
            ))),
            Some(_) => Ok(self.handle(id)),
        };
        Box::pin(ready(res))
    }

    fn recover(&self, id: u64) -> StorageFuture<'_, i64> {
        let res = match self.inner.lock().ledgers.get_mut(&id) {
            None => Err(StorageError::NoSuchLedger(id)),
            Some(l) => {
                if !l.closed {
                    l.closed = true;
                    l.fenced = true;
                }
                Ok(l.last())
            }
        };
        Box::pin(ready(res))
    }

    fn delete(&self, id: u64) -> StorageFuture<'_, ()> {
        let mut st = self.inner.lock();
        if let Some(l) = st.ledgers.remove(&id) {
            st.bytes -= l.bytes;
        }
        Box::pin(ready(Ok(())))
    }

    fn stored_bytes(&self, id: u64) -> StorageFuture<'_, Option<u64>> {
        let held = self.inner.lock().ledgers.get(&id).map(|l| l.bytes as u64);
        Box::pin(ready(held.ok_or(StorageError::NoSuchLedger(id)).map(Some)))
    }
}

#[derive(Debug)]
struct MemoryLedger {
    id: u64,
    store: Arc<Mutex<MemState>>,
}

impl MemoryLedger {
    fn with<T>(
        &self,
        f: impl FnOnce(&mut MemLedger) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        match self.store.lock().ledgers.get_mut(&self.id) {
            Some(l) => f(l),
            None => Err(StorageError::NoSuchLedger(self.id)),
        }
    }
}

impl Ledger for MemoryLedger {
    fn id(&self) -> u64 {
        self.id
    }

    fn affinity(&self) -> Option<Affinity> {
        self.with(|l| Ok(l.affinity.clone())).ok().flatten()
    }

    fn last_entry(&self) -> i64 {
        self.with(|l| Ok(l.last())).unwrap_or(-1)
    }

    fn submit(&self, data: Bytes) -> Result<AppendFuture, StorageError> {
        let mut st = self.store.lock();
        let id = self.id;
        let len = data.len();
        let entry = {
            let l = st
                .ledgers
                .get_mut(&id)
                .ok_or(StorageError::NoSuchLedger(id))?;
            if l.fenced {
                return Err(StorageError::Fenced(id));
            }
            if l.closed {
                return Err(StorageError::Closed(id));
            }
            l.entries.push_back(data);
            l.bytes += len;
            l.last() as u64
        };
        st.bytes += len;
        st.shed();
        Ok(Box::pin(ready(Ok(entry))))
    }

    fn read(&self, entry: u64) -> StorageFuture<'_, Bytes> {
        let res = self.with(|l| {
            if entry < l.first_held {
                return Err(StorageError::Gone {
                    ledger: self.id,
                    entry,
                });
            }
            l.entries
                .get((entry - l.first_held) as usize)
                .cloned()
                .ok_or_else(|| {
                    StorageError::Failed(format!(
                        "entry {entry} of ledger {} is past its last entry {}",
                        self.id,
                        l.last()
                    ))
                })
        });
        Box::pin(ready(res))
    }

    fn close(&self) -> StorageFuture<'_, i64> {
        let res = self.with(|l| {
            if l.fenced {
                return Err(StorageError::Fenced(self.id));
            }
            l.closed = true;
            Ok(l.last())
        });
        Box::pin(ready(res))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::conformance;

    #[tokio::test]
    async fn memory_storage_behaves_as_storage() {
        conformance::run(&MemoryStorage::new()).await;
    }

    #[tokio::test]
    async fn a_bounded_storage_lets_go_of_its_oldest_entries() {
        let s = MemoryStorage::bounded(250);
        let a = s.create(&Placement::default()).await.unwrap();
        for i in 0..2u8 {
            a.submit(Bytes::from(vec![i; 100])).unwrap().await.unwrap();
        }
        a.close().await.unwrap();
        let b = s.create(&Placement::default()).await.unwrap();
        b.submit(Bytes::from(vec![9; 100])).unwrap().await.unwrap();
        // 300 > 250: the oldest entry of the oldest ledger went
        assert_eq!(s.bytes(), 200);
        assert_eq!(
            a.read(0).await,
            Err(StorageError::Gone {
                ledger: a.id(),
                entry: 0
            })
        );
        assert_eq!(a.read(1).await.unwrap()[0], 1);
        assert_eq!(s.stored_bytes(a.id()).await, Ok(Some(100)));
        b.submit(Bytes::from(vec![9; 100])).unwrap().await.unwrap();
        assert_eq!(s.stored_bytes(a.id()).await, Ok(Some(0)));
        assert_eq!(b.last_entry(), 1);
    }
}
