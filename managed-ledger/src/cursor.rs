//! Cursors: how far a subscription has consumed a managed ledger.
//!
//! State = mark-delete position (everything at or before it is acknowledged) + the ranges
//! acknowledged individually beyond it + per-entry ack sets of partly acknowledged batches.
//! A durable cursor persists that state at `/cursors/{path}/{subscription}` by compare-and-set
//! from a flusher task that coalesces changes; callers that must know an acknowledgement is
//! durable wait for the flush that covers it.

use std::collections::BTreeMap;
use std::sync::Arc;

use magnetar_meta::{Expected, MetaError, MetaStore, MetadataStoreExt};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tracing::{debug, warn};

use crate::managed_ledger::ManagedLedger;
use crate::position::{Position, RangeSet};

/// How long a failed cursor write waits before it is tried again.
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_millis(200);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CursorRecord {
    pub mark_delete: Position,
    #[serde(default)]
    pub individually_deleted: Vec<(Position, Position)>,
    /// Partly acknowledged batches: bit i set = index i still unacknowledged.
    #[serde(default)]
    pub batch_acks: Vec<(Position, Vec<i64>)>,
}

#[derive(Debug)]
pub struct CursorState {
    pub mark_delete: Position,
    pub acked: RangeSet,
    pub batch_acks: BTreeMap<Position, Vec<i64>>,
    seq: u64,
}

impl CursorState {
    pub fn is_acked(&self, p: Position) -> bool {
        p <= self.mark_delete || self.acked.contains(p)
    }

    fn record(&self) -> CursorRecord {
        CursorRecord {
            mark_delete: self.mark_delete,
            individually_deleted: self.acked.iter().collect(),
            batch_acks: self
                .batch_acks
                .iter()
                .map(|(p, s)| (*p, s.clone()))
                .collect(),
        }
    }
}

/// A subscription's cursor. Cheap to share through `Arc`.
pub struct Cursor {
    pub name: String,
    key: Option<String>,
    meta: MetaStore,
    ml: ManagedLedger,
    state: Mutex<CursorState>,
    version: Mutex<Option<u64>>,
    dirty: Notify,
    persisted: watch::Sender<u64>,
    failed: Mutex<Option<String>>,
}

impl std::fmt::Debug for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cursor").field("name", &self.name).finish()
    }
}

/// Where a durable cursor of the log at `path` keeps its state.
pub fn cursor_key(path: &str, name: &str) -> String {
    format!("/cursors/{path}/{name}")
}

impl Cursor {
    /// Loads a durable cursor, or creates it at `initial` if it does not exist yet.
    pub async fn open_durable(
        ml: ManagedLedger,
        meta: MetaStore,
        path: &str,
        name: &str,
        initial: Position,
    ) -> Result<Arc<Cursor>, MetaError> {
        let key = cursor_key(path, name);
        let (record, version) = match meta.get_json::<CursorRecord>(&key).await? {
            Some(v) => (v.value, v.version),
            None => {
                let r = CursorRecord {
                    mark_delete: initial,
                    individually_deleted: vec![],
                    batch_acks: vec![],
                };
                match meta.put_json(&key, &r, Expected::Absent).await {
                    Ok(v) => (r, v),
                    // created concurrently: take theirs
                    Err(MetaError::BadVersion { .. }) => {
                        let v = meta.get_json::<CursorRecord>(&key).await?.ok_or_else(|| {
                            MetaError::Backend(format!("cursor {key} vanished while opening"))
                        })?;
                        (v.value, v.version)
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let mut acked = RangeSet::default();
        for (s, e) in &record.individually_deleted {
            if s.ledger == e.ledger && s <= e {
                acked.insert_range(*s, *e);
            }
        }
        let c = Arc::new(Cursor {
            name: name.to_string(),
            key: Some(key),
            meta,
            ml,
            state: Mutex::new(CursorState {
                mark_delete: record.mark_delete,
                acked,
                batch_acks: record.batch_acks.into_iter().collect(),
                seq: 0,
            }),
            version: Mutex::new(Some(version)),
            dirty: Notify::new(),
            persisted: watch::channel(0).0,
            failed: Mutex::new(None),
        });
        tokio::spawn(flusher(Arc::clone(&c)));
        Ok(c)
    }

    /// A cursor kept only in memory (readers).
    pub fn non_durable(
        ml: ManagedLedger,
        meta: MetaStore,
        name: &str,
        initial: Position,
    ) -> Arc<Cursor> {
        Arc::new(Cursor {
            name: name.to_string(),
            key: None,
            meta,
            ml,
            state: Mutex::new(CursorState {
                mark_delete: initial,
                acked: RangeSet::default(),
                batch_acks: BTreeMap::new(),
                seq: 0,
            }),
            version: Mutex::new(None),
            dirty: Notify::new(),
            persisted: watch::channel(0).0,
            failed: Mutex::new(None),
        })
    }

    /// The record a durable cursor persists to (None: kept in memory only).
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    pub fn meta(&self) -> &MetaStore {
        &self.meta
    }

    pub fn is_durable(&self) -> bool {
        self.key.is_some()
    }

    pub fn mark_delete(&self) -> Position {
        self.state.lock().mark_delete
    }

    pub fn with_state<R>(&self, f: impl FnOnce(&CursorState) -> R) -> R {
        f(&self.state.lock())
    }

    pub fn is_acked(&self, p: Position) -> bool {
        self.state.lock().is_acked(p)
    }

    /// The ack set to send with a redelivered batch entry, if some indexes are acked.
    pub fn batch_ack_set(&self, p: Position) -> Option<Vec<i64>> {
        self.state.lock().batch_acks.get(&p).cloned()
    }

    fn changed(&self, st: &mut CursorState) -> u64 {
        st.seq += 1;
        self.dirty.notify_one();
        st.seq
    }

    /// Moves mark-delete over every acknowledged entry that follows it.
    fn advance(&self, st: &mut CursorState) {
        while let Some(next) = self.ml.next_position(st.mark_delete) {
            if !st.acked.contains(next) {
                break;
            }
            let end = st.acked.range_starting_at(next).unwrap_or(next);
            st.mark_delete = end;
            st.acked.remove_through(end);
        }
        let md = st.mark_delete;
        st.batch_acks.retain(|p, _| *p > md);
    }

    /// Acknowledges whole entries. Returns the change sequence number.
    pub fn ack_individual(&self, positions: &[Position]) -> u64 {
        let mut st = self.state.lock();
        for &p in positions {
            if p > st.mark_delete {
                st.acked.insert(p);
                st.batch_acks.remove(&p);
            }
        }
        self.advance(&mut st);
        self.changed(&mut st)
    }

    /// Acknowledges some indexes of a batch entry of `size` messages; `unacked` is the
    /// client's view (bit set = still unacknowledged). Returns (entry now fully acked, seq).
    pub fn ack_batch(&self, p: Position, size: usize, unacked: &[i64]) -> (bool, u64) {
        let mut st = self.state.lock();
        if st.is_acked(p) {
            let s = st.seq;
            return (true, s);
        }
        let words = size.div_ceil(64).max(1);
        let set = st.batch_acks.entry(p).or_insert_with(|| {
            let mut v = vec![-1i64; words];
            let rem = size % 64;
            if rem != 0
                && let Some(last) = v.last_mut()
            {
                *last = ((1u64 << rem) - 1) as i64;
            }
            v
        });
        for (i, w) in set.iter_mut().enumerate() {
            *w &= unacked.get(i).copied().unwrap_or(0);
        }
        let done = set.iter().all(|w| *w == 0);
        if done {
            st.batch_acks.remove(&p);
            st.acked.insert(p);
            self.advance(&mut st);
        }
        let seq = self.changed(&mut st);
        (done, seq)
    }

    /// Acknowledges everything up to and including `p`.
    pub fn ack_cumulative(&self, p: Position) -> u64 {
        let mut st = self.state.lock();
        if p > st.mark_delete {
            st.mark_delete = p;
            st.acked.remove_through(p);
        }
        self.advance(&mut st);
        self.changed(&mut st)
    }

    /// Moves the cursor so the next message delivered is the one after `md` (seek/reset):
    /// forgets individual acks.
    pub fn reset(&self, md: Position) -> u64 {
        let mut st = self.state.lock();
        st.mark_delete = md;
        st.acked = RangeSet::default();
        st.batch_acks.clear();
        self.changed(&mut st)
    }

    /// Waits until the change numbered `seq` is durable (immediately for non-durable cursors).
    pub async fn persisted(&self, seq: u64) -> Result<(), String> {
        if !self.is_durable() {
            return Ok(());
        }
        let mut rx = self.persisted.subscribe();
        loop {
            if *rx.borrow_and_update() >= seq {
                return Ok(());
            }
            if let Some(e) = self.failed.lock().clone() {
                return Err(e);
            }
            if rx.changed().await.is_err() {
                return Err("cursor closed".into());
            }
        }
    }

    /// Writes the state now (used on clean shutdown).
    pub async fn flush(&self) -> Result<(), String> {
        let seq = self.state.lock().seq;
        self.dirty.notify_one();
        self.persisted(seq).await
    }

    /// Removes the durable record.
    pub async fn delete(&self) -> Result<(), MetaError> {
        let Some(key) = &self.key else { return Ok(()) };
        *self.failed.lock() = Some("cursor deleted".into());
        let version = *self.version.lock();
        let expected = version.map_or(Expected::Any, Expected::Version);
        match self.meta.delete(key, expected).await {
            Ok(()) | Err(MetaError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Number of entries acknowledged individually beyond mark-delete (for stats).
    pub fn individually_acked_ranges(&self) -> Vec<(Position, Position)> {
        self.state.lock().acked.iter().collect()
    }
}

async fn flusher(c: Arc<Cursor>) {
    let Some(key) = c.key.clone() else { return };
    loop {
        c.dirty.notified().await;
        if c.failed.lock().is_some() {
            return;
        }
        let (record, seq) = {
            let st = c.state.lock();
            (st.record(), st.seq)
        };
        if seq <= *c.persisted.borrow() {
            continue;
        }
        let version = *c.version.lock();
        let expected = version.map_or(Expected::Any, Expected::Version);
        match c.meta.put_json(&key, &record, expected).await {
            Ok(v) => {
                *c.version.lock() = Some(v);
                c.persisted.send_replace(seq);
                debug!(cursor = %c.name, mark_delete = %record.mark_delete, "cursor persisted");
            }
            Err(MetaError::BadVersion { .. }) | Err(MetaError::NotFound(_)) => {
                warn!(cursor = %key, "cursor changed by someone else; this broker no longer owns it");
                *c.failed.lock() = Some("cursor fenced".into());
                c.persisted.send_modify(|_| {});
                return;
            }
            Err(e) => {
                warn!(cursor = %key, error = %e, "cursor write failed; retrying");
                tokio::time::sleep(RETRY_AFTER).await;
                c.dirty.notify_one();
            }
        }
    }
}
