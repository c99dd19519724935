//! A metadata store that fails or stalls on purpose, around a real one: the next N
//! compare-and-sets (optionally only below a key prefix) fail as if the store were
//! unreachable or lose as if someone else had written, every call can be delayed, and open
//! watches can be dropped as etcd drops them when its history is compacted. With no fault
//! set it is the store it wraps (the conformance suite runs on it to prove that), so tests of
//! the components above can put faults exactly where they want them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use crate::store::{MetaStore, MetadataStore, Op, Session, SessionId, Version, Versioned, Watch};
use crate::{Expected, MetaError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CasFault {
    /// `Unavailable`: the store could not be reached (nothing was written).
    Unavailable,
    /// `BadVersion`: someone else wrote first.
    Conflict,
}

#[derive(Debug, Default)]
struct Planned {
    /// Faults for the next conditional writes, each with the key prefix it is aimed at.
    cas: Vec<(String, CasFault)>,
    delay: Duration,
}

/// The faults to inject; change them at any time.
#[derive(Debug)]
pub struct MetaFaults {
    planned: Mutex<Planned>,
    /// Bumped to end every open watch.
    watch_drops: watch::Sender<u64>,
    injected: AtomicU64,
}

impl Default for MetaFaults {
    fn default() -> Self {
        MetaFaults {
            planned: Mutex::default(),
            watch_drops: watch::channel(0).0,
            injected: AtomicU64::new(0),
        }
    }
}

impl MetaFaults {
    /// The next `n` conditional writes fail with `Unavailable` (nothing is written).
    pub fn fail_next_cas(&self, n: usize) {
        self.fail_next_cas_under("/", n);
    }

    /// The next `n` conditional writes to keys starting with `prefix` fail with
    /// `Unavailable`.
    pub fn fail_next_cas_under(&self, prefix: &str, n: usize) {
        self.plan(prefix, n, CasFault::Unavailable);
    }

    /// The next `n` conditional writes to keys starting with `prefix` lose as if another
    /// writer had been first (`BadVersion`; nothing is written).
    pub fn conflict_next_cas_under(&self, prefix: &str, n: usize) {
        self.plan(prefix, n, CasFault::Conflict);
    }

    fn plan(&self, prefix: &str, n: usize, fault: CasFault) {
        let mut p = self.planned.lock();
        p.cas
            .extend(std::iter::repeat_n((prefix.to_string(), fault), n));
    }

    /// Every call waits this long first (zero: no delay).
    pub fn delay(&self, by: Duration) {
        self.planned.lock().delay = by;
    }

    /// Ends every open watch with an error, as a watch whose history was compacted away
    /// ends: its owner must read again and watch anew.
    pub fn drop_watches(&self) {
        self.watch_drops.send_modify(|n| *n += 1);
    }

    /// Forgets every planned fault.
    pub fn heal(&self) {
        *self.planned.lock() = Planned::default();
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    /// The fault for a transaction, if one is planned for a key it writes conditionally.
    fn cas_fault(&self, ops: &[Op]) -> Option<MetaError> {
        let mut p = self.planned.lock();
        for op in ops {
            let (key, expected) = match op {
                Op::Put { key, expected, .. } | Op::Delete { key, expected } => (key, *expected),
            };
            if expected == Expected::Any {
                continue;
            }
            if let Some(i) = p.cas.iter().position(|(prefix, _)| key.starts_with(prefix)) {
                let (_, fault) = p.cas.remove(i);
                self.injected.fetch_add(1, Ordering::Relaxed);
                return Some(match fault {
                    CasFault::Unavailable => {
                        MetaError::Unavailable(format!("injected fault writing {key}"))
                    }
                    CasFault::Conflict => MetaError::BadVersion {
                        key: key.clone(),
                        expected,
                        actual: None,
                    },
                });
            }
        }
        None
    }

    async fn stall(&self) {
        let d = self.planned.lock().delay;
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }
}

/// Wraps a store with [`MetaFaults`].
#[derive(Debug, Clone)]
pub struct FaultyStore {
    inner: MetaStore,
    faults: Arc<MetaFaults>,
}

impl FaultyStore {
    pub fn new(inner: MetaStore) -> FaultyStore {
        FaultyStore {
            inner,
            faults: Arc::default(),
        }
    }

    pub fn faults(&self) -> &Arc<MetaFaults> {
        &self.faults
    }
}

#[async_trait]
impl MetadataStore for FaultyStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned<Bytes>>> {
        self.faults.stall().await;
        self.inner.get(key).await
    }

    async fn txn(&self, ops: Vec<Op>) -> Result<Vec<Version>> {
        self.faults.stall().await;
        if let Some(e) = self.faults.cas_fault(&ops) {
            return Err(e);
        }
        self.inner.txn(ops).await
    }

    async fn children(&self, path: &str) -> Result<Vec<String>> {
        self.faults.stall().await;
        self.inner.children(path).await
    }

    async fn watch(&self, path: &str) -> Result<Watch> {
        self.faults.stall().await;
        let mut inner = self.inner.watch(path).await?;
        let start = inner.start_revision();
        let (tx, rx) = mpsc::unbounded_channel();
        let mut drops = self.faults.watch_drops.subscribe();
        drops.borrow_and_update();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    ev = inner.next() => match ev {
                        Some(ev) => {
                            if tx.send(ev).is_err() {
                                return; // the watcher is gone
                            }
                        }
                        None => return,
                    },
                    r = drops.changed() => {
                        if r.is_ok() {
                            let _ = tx.send(Err(MetaError::Unavailable(
                                "injected fault: watch dropped".into(),
                            )));
                        }
                        return;
                    }
                }
            }
        });
        Ok(Watch::new(start, rx, None))
    }

    async fn create_session(&self, ttl: Duration) -> Result<Session> {
        self.faults.stall().await;
        self.inner.create_session(ttl).await
    }

    async fn revoke_session(&self, id: SessionId) -> Result<()> {
        self.faults.stall().await;
        self.inner.revoke_session(id).await
    }
}
