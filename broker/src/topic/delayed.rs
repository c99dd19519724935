//! The delayed-delivery index of one Shared or Key_Shared subscription: which entries wait
//! for their `deliver_at_time`, kept so memory stays bounded and a restart does not re-read
//! the backlog to find them.
//!
//! Entries due within the horizon live in memory. Later ones are grouped by horizon-wide
//! time bucket and written to the metadata store in segments of up to [`SEGMENT_ENTRIES`];
//! a segment is loaded (and its record deleted) once its bucket comes within the horizon.
//! One bit per entry (per ledger) remembers every indexed position, so the dispatcher skips
//! them without reading them. The log stays the source of truth: an entry whose segment
//! was loaded and lost in a crash is simply read again after the cursor and re-indexed.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use magnetar_managed_ledger::position::Position;
use magnetar_meta::{Expected, MetaError, MetaStore, MetadataStoreExt};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::cluster::keys;

/// Where a durable subscription keeps its delayed-delivery index: beside its cursor's record,
/// under `/delayed/` (None for a cursor kept in memory, whose index is in memory too).
pub fn prefix_of(cursor: &magnetar_managed_ledger::Cursor) -> Option<String> {
    cursor.key().map(keys::delayed_index)
}

/// Most entries in one persisted segment.
pub const SEGMENT_ENTRIES: usize = 1000;

/// Entry ids beyond this are not indexed (delivered at once instead), so a stray id cannot
/// make the per-ledger bitset huge; real ledgers roll over long before.
const MAX_INDEXED_ENTRY: usize = 1 << 24;

#[derive(Debug, Serialize, Deserialize)]
struct Segment {
    /// (deliver at ms, ledger, entry)
    entries: Vec<(u64, u64, i64)>,
}

/// A batch of buffered entries to persist (taken out under the subscription lock, written
/// without it).
#[derive(Debug)]
pub struct Flush {
    segments: Vec<(String, Segment, u64)>,
}

/// Segments to load (taken under the lock, read without it).
#[derive(Debug)]
pub struct Load {
    keys: Vec<String>,
}

#[derive(Debug)]
pub struct DelayedIndex {
    /// `/delayed/{topic path}/{subscription}`; None for non-durable subscriptions, whose
    /// index lives in memory only.
    prefix: Option<String>,
    horizon_ms: u64,
    /// Due within the horizon: (deliver at, position).
    due: BTreeSet<(u64, Position)>,
    /// Later entries not yet persisted, by bucket.
    buffer: BTreeMap<u64, Vec<(u64, Position)>>,
    buffered: usize,
    /// Persisted segments not loaded: (bucket, seq) -> key.
    segments: BTreeMap<(u64, u64), String>,
    /// Indexed positions: ledger -> (bitset of entry ids, set bits).
    members: HashMap<u64, (Vec<u64>, u32)>,
    count: usize,
    next_seq: u64,
}

impl DelayedIndex {
    pub fn new(prefix: Option<String>, horizon_ms: u64) -> DelayedIndex {
        DelayedIndex {
            prefix,
            horizon_ms: horizon_ms.max(1),
            due: BTreeSet::new(),
            buffer: BTreeMap::new(),
            buffered: 0,
            segments: BTreeMap::new(),
            members: HashMap::new(),
            count: 0,
            next_seq: 0,
        }
    }

    /// Entries waiting.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Segments written to the metadata store and not loaded yet.
    pub fn persisted_segments(&self) -> usize {
        self.segments.len()
    }

    pub fn contains(&self, p: Position) -> bool {
        let Ok(e) = usize::try_from(p.entry) else {
            return false;
        };
        self.members
            .get(&p.ledger)
            .and_then(|(bits, _)| bits.get(e / 64))
            .is_some_and(|w| w & (1 << (e % 64)) != 0)
    }

    fn mark(&mut self, p: Position, on: bool) -> bool {
        let Some(e) = usize::try_from(p.entry)
            .ok()
            .filter(|e| *e < MAX_INDEXED_ENTRY)
        else {
            return false;
        };
        let (bits, n) = self.members.entry(p.ledger).or_default();
        if bits.len() <= e / 64 {
            if !on {
                return false;
            }
            bits.resize(e / 64 + 1, 0);
        }
        let mask = 1u64 << (e % 64);
        let was = bits[e / 64] & mask != 0;
        if on && !was {
            bits[e / 64] |= mask;
            *n += 1;
        } else if !on && was {
            bits[e / 64] &= !mask;
            *n -= 1;
            if *n == 0 {
                self.members.remove(&p.ledger);
            }
        }
        on != was
    }

    fn bucket(&self, at: u64) -> u64 {
        at - at % self.horizon_ms
    }

    /// Indexes an entry to be delivered at `at` (epoch ms); false if it cannot be indexed
    /// (it should then go at once).
    pub fn add(&mut self, p: Position, at: u64, now: u64) -> bool {
        if !self.mark(p, true) {
            return self.contains(p);
        }
        self.count += 1;
        if at <= now + self.horizon_ms || self.prefix.is_none() {
            self.due.insert((at, p));
        } else {
            let b = self.bucket(at);
            self.buffer.entry(b).or_default().push((at, p));
            self.buffered += 1;
        }
        true
    }

    /// Takes out the entries due by `now`, in delivery-time order.
    pub fn pop_due(&mut self, now: u64) -> Vec<Position> {
        let mut out = Vec::new();
        while let Some(&(at, p)) = self.due.first() {
            if at > now {
                break;
            }
            self.due.pop_first();
            if self.mark(p, false) {
                self.count -= 1;
                out.push(p);
            }
        }
        out
    }

    /// When the next entry in memory is due (ms), if any.
    pub fn next_due(&self) -> Option<u64> {
        self.due.first().map(|(at, _)| *at)
    }

    /// Buffered entries whose bucket came within the horizon move to memory; the rest are
    /// handed out for persisting once there are enough of them (or `force`).
    pub fn take_flush(&mut self, now: u64, force: bool) -> Option<Flush> {
        let near: Vec<u64> = self
            .buffer
            .range(..=self.bucket(now + self.horizon_ms))
            .map(|(b, _)| *b)
            .collect();
        for b in near {
            if let Some(v) = self.buffer.remove(&b) {
                self.buffered -= v.len();
                self.due.extend(v);
            }
        }
        let prefix = self.prefix.as_ref()?;
        if self.buffered == 0 || (!force && self.buffered < SEGMENT_ENTRIES) {
            return None;
        }
        let mut segments = Vec::new();
        for (b, v) in std::mem::take(&mut self.buffer) {
            for chunk in v.chunks(SEGMENT_ENTRIES) {
                self.next_seq += 1;
                let key = format!("{prefix}/{b:016}-{:08}", self.next_seq);
                let seg = Segment {
                    entries: chunk.iter().map(|(t, p)| (*t, p.ledger, p.entry)).collect(),
                };
                segments.push((key, seg, b));
            }
        }
        self.buffered = 0;
        Some(Flush { segments })
    }

    /// Records segments that were written.
    pub fn flushed(&mut self, written: Vec<(String, u64)>) {
        for (key, bucket) in written {
            self.next_seq += 1;
            self.segments.insert((bucket, self.next_seq), key);
        }
    }

    /// Segments whose bucket comes within the horizon, to load.
    pub fn take_load(&mut self, now: u64) -> Option<Load> {
        let limit = self.bucket(now + self.horizon_ms);
        let keys: Vec<(u64, u64)> = self
            .segments
            .range(..=(limit, u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        if keys.is_empty() {
            return None;
        }
        Some(Load {
            keys: keys
                .into_iter()
                .filter_map(|k| self.segments.remove(&k))
                .collect(),
        })
    }

    /// Adds loaded entries that are still indexed (a seek may have cleared them).
    fn loaded(&mut self, entries: Vec<(u64, Position)>) {
        for (at, p) in entries {
            if self.contains(p) {
                self.due.insert((at, p));
            }
        }
    }

    /// Forgets everything in memory; returns the segment keys to delete.
    pub fn clear(&mut self) -> Vec<String> {
        let keys = self.segments.values().cloned().collect();
        let prefix = self.prefix.take();
        *self = DelayedIndex::new(prefix, self.horizon_ms);
        keys
    }
}

/// Writes segments; returns the (key, bucket) pairs written. A failed write leaves those
/// entries out of the index; they are found again in the log after a restart.
pub async fn write(meta: &MetaStore, f: Flush) -> Vec<(String, u64)> {
    let mut done = Vec::new();
    for (key, seg, bucket) in f.segments {
        match meta.put_json(&key, &seg, Expected::Absent).await {
            Ok(_) => done.push((key, bucket)),
            Err(e) => warn!(key = %key, error = %e, "delayed-delivery segment not written"),
        }
    }
    done
}

/// Reads segments and deletes their records; returns their entries.
pub async fn read(meta: &MetaStore, l: Load) -> Vec<(u64, Position)> {
    let mut out = Vec::new();
    for key in l.keys {
        match meta.get_json::<Segment>(&key).await {
            Ok(Some(v)) => out.extend(
                v.value
                    .entries
                    .into_iter()
                    .map(|(t, l, e)| (t, Position::new(l, e))),
            ),
            Ok(None) => {}
            Err(e) => {
                warn!(key = %key, error = %e, "delayed-delivery segment unreadable");
                continue;
            }
        }
        if let Err(e) = meta.delete(&key, Expected::Any).await
            && !matches!(e, MetaError::NotFound(_))
        {
            warn!(key = %key, error = %e, "delayed-delivery segment not deleted");
        }
    }
    out
}

/// Deletes segment records (after a seek or when the subscription goes).
pub async fn delete(meta: &MetaStore, keys: Vec<String>) {
    for key in keys {
        if let Err(e) = meta.delete(&key, Expected::Any).await
            && !matches!(e, MetaError::NotFound(_))
        {
            warn!(key = %key, error = %e, "delayed-delivery segment not deleted");
        }
    }
}

/// Deletes every segment under a subscription's prefix.
pub async fn delete_all(meta: &MetaStore, prefix: &str) {
    match meta.children(prefix).await {
        Ok(names) => {
            delete(
                meta,
                names.into_iter().map(|n| format!("{prefix}/{n}")).collect(),
            )
            .await
        }
        Err(e) => warn!(prefix, error = %e, "delayed-delivery segments not listed"),
    }
}

/// Rebuilds an index from its persisted segments: positions are marked, entries of
/// segments already within the horizon are loaded, the others stay on disk.
pub async fn restore(meta: &MetaStore, idx: &mut DelayedIndex, now: u64) -> Result<(), MetaError> {
    let Some(prefix) = idx.prefix.clone() else {
        return Ok(());
    };
    let names = meta.children(&prefix).await?;
    let mut restored = 0usize;
    for name in names {
        let key = format!("{prefix}/{name}");
        let Some((bucket, seq)) = name
            .split_once('-')
            .and_then(|(b, s)| Some((b.parse::<u64>().ok()?, s.parse::<u64>().ok()?)))
        else {
            warn!(key = %key, "not a delayed-delivery segment; ignored");
            continue;
        };
        let Some(seg) = meta.get_json::<Segment>(&key).await? else {
            continue;
        };
        for &(_, l, e) in &seg.value.entries {
            if idx.mark(Position::new(l, e), true) {
                idx.count += 1;
                restored += 1;
            }
        }
        idx.next_seq = idx.next_seq.max(seq);
        idx.segments.insert((bucket, seq), key);
    }
    if let Some(load) = idx.take_load(now) {
        let entries = read(meta, load).await;
        idx.loaded(entries);
    }
    if restored > 0 {
        info!(prefix = %prefix, entries = restored, "delayed-delivery index restored");
    } else {
        debug!(prefix = %prefix, "no delayed-delivery index to restore");
    }
    Ok(())
}

/// See [`DelayedIndex::loaded`].
pub fn add_loaded(idx: &mut DelayedIndex, entries: Vec<(u64, Position)>) {
    idx.loaded(entries);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::Arc;

    fn p(e: i64) -> Position {
        Position::new(7, e)
    }

    #[test]
    fn due_entries_come_out_in_time_order() {
        let mut idx = DelayedIndex::new(None, 1000);
        idx.add(p(1), 500, 0);
        idx.add(p(2), 100, 0);
        idx.add(p(2), 100, 0); // twice: once
        idx.add(p(3), 5000, 0);
        assert_eq!(idx.len(), 3);
        assert!(idx.contains(p(2)) && !idx.contains(p(4)));
        assert_eq!(idx.pop_due(600), vec![p(2), p(1)]);
        assert_eq!(idx.next_due(), Some(5000));
        assert_eq!(idx.pop_due(5000), vec![p(3)]);
        assert!(idx.is_empty() && idx.members.is_empty());
    }

    #[tokio::test]
    async fn far_entries_are_persisted_and_restored() {
        let meta: MetaStore = Arc::new(magnetar_meta::MemoryStore::new().unwrap());
        let prefix = "/delayed/t/s".to_string();
        let mut idx = DelayedIndex::new(Some(prefix.clone()), 1000);
        let now = 10_000;
        for e in 0..(SEGMENT_ENTRIES as i64 + 10) {
            idx.add(p(e), now + 60_000 + e as u64, now);
        }
        idx.add(p(5000), now + 10, now); // near: memory only
        let f = idx.take_flush(now, false).unwrap();
        let written = write(&meta, f).await;
        assert!(written.len() >= 2);
        idx.flushed(written);
        assert_eq!(idx.buffered, 0);
        assert_eq!(idx.due.len(), 1);
        // a restart: a fresh index sees every persisted position without the log
        let mut again = DelayedIndex::new(Some(prefix.clone()), 1000);
        restore(&meta, &mut again, now).await.unwrap();
        assert_eq!(again.len(), SEGMENT_ENTRIES + 10);
        assert!(again.contains(p(0)) && again.contains(p(1009)) && !again.contains(p(5000)));
        assert!(again.due.is_empty(), "nothing is near yet");
        // time passes: the buckets load, their records go
        let later = now + 60_000 + 2_000;
        let load = again.take_load(later).unwrap();
        let entries = read(&meta, load).await;
        add_loaded(&mut again, entries);
        let out = again.pop_due(later + 10_000);
        assert_eq!(out.len(), SEGMENT_ENTRIES + 10);
        assert!(meta.children(&prefix).await.unwrap().is_empty());
    }
}
