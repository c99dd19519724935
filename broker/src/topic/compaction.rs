//! Topic compaction: the latest value of every key, up to a horizon, in a ledger of its own.
//!
//! Two passes over the log up to the horizon (its end when compaction starts): the first
//! finds each key's last message (an empty payload or `null_value` is a tombstone that removes
//! the key), the second writes every entry that still holds a live message to a new ledger,
//! each prefixed with its original position. Superseded messages inside a kept batch are
//! marked `compacted_out`, which clients skip; such a batch is compressed again with its own
//! codec. Messages without a key are kept. Encrypted payloads cannot be opened here and are
//! judged by their outer key. The record at
//! `/compaction/{topic path}` names the ledger and horizon and changes only by CAS.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use magnetar_managed_ledger::position::Position;
use magnetar_managed_ledger::storage::{Ledger, LedgerStorage};
use magnetar_managed_ledger::{ManagedLedger, MlError};
use magnetar_meta::{Expected, MetaError, MetaStore, MetadataStoreExt};
use magnetar_protocol::compression::Compression;
use magnetar_protocol::proto::SingleMessageMetadata;
use magnetar_protocol::{MessageMetadata, batch, entry as pentry};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;
use tracing::{info, warn};

use crate::cluster::keys;

/// Compacted entries being written at once (one journal group can take them all).
const APPENDS_IN_FLIGHT: usize = 64;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompactionRecord {
    pub ledger: u64,
    pub horizon: (u64, i64),
    pub entries: u64,
}

/// A finished compaction: the ledger, its horizon and the original position of each of its
/// entries (in order).
#[derive(Debug)]
pub struct CompactedView {
    pub ledger: u64,
    pub horizon: Position,
    pub positions: Vec<Position>,
    /// Kept batches with messages compacted out: the ack set to deliver them with (bit i
    /// set = message i is live), so that clients which ignore `compacted_out` (the C++ and
    /// Python ones) skip them as they skip messages already acknowledged.
    live: HashMap<Position, Vec<i64>>,
    reader: OnceCell<Arc<dyn Ledger>>,
}

impl CompactedView {
    /// Index of the first compacted entry after `p`.
    pub fn first_after(&self, p: Position) -> usize {
        self.positions.partition_point(|q| *q <= p)
    }

    /// Index of the compacted entry for `p`, if `p` survived compaction.
    pub fn index_of(&self, p: Position) -> Option<usize> {
        self.positions.binary_search(&p).ok()
    }

    /// The ack set of a kept batch with messages compacted out, if `p` is one.
    pub fn live_set(&self, p: Position) -> Option<&[i64]> {
        self.live.get(&p).map(Vec::as_slice)
    }

    /// Reads compacted entry `i` (the entry as stored, without its position prefix).
    pub async fn read(&self, storage: &dyn LedgerStorage, i: usize) -> Result<Bytes, MlError> {
        let reader = self
            .reader
            .get_or_try_init(|| storage.open(self.ledger))
            .await?;
        let framed = reader.read(i as u64).await?;
        if framed.len() < 16 {
            return Err(MlError::Unsupported(format!(
                "compacted entry {i} of ledger {} is truncated",
                self.ledger
            )));
        }
        Ok(framed.slice(16..))
    }
}

/// Where a topic's compaction stands (the admin API's `status`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CompactionState {
    #[default]
    NotRun,
    Running,
    Success,
    Error(String),
}

pub fn record_key(path: &str) -> String {
    keys::compaction(path)
}

/// The key of a message: the partition key (what Pulsar compacts by), else the ordering key.
fn key_of(partition_key: Option<&str>, ordering_key: Option<&[u8]>) -> Option<Vec<u8>> {
    partition_key
        .map(|k| k.as_bytes().to_vec())
        .or_else(|| ordering_key.map(|k| k.to_vec()))
}

/// An entry's messages: their keys (None: keep regardless) and tombstone flags, and for a
/// batch that could be opened, its records (uncompressed).
struct Parsed {
    meta: MessageMetadata,
    keys: Vec<(Option<Vec<u8>>, bool)>,
    records: Option<Vec<(SingleMessageMetadata, Bytes)>>,
}

/// Splits an entry into its messages, inflating a compressed payload. A payload that cannot
/// be opened here (encrypted, or not inflating) is one message judged by its outer key and
/// never a tombstone: kept rather than lost (said once, by the pass that passes `report`).
fn parse(raw: &Bytes, report: Option<Position>) -> Result<Parsed, MlError> {
    let e = pentry::parse_entry(raw.clone())
        .map_err(|err| MlError::Unsupported(format!("unreadable entry: {err}")))?;
    let meta = e.metadata;
    let outer_key = key_of(meta.partition_key.as_deref(), meta.ordering_key.as_deref());
    let payload = if meta.encryption_keys.is_empty() {
        inflate(&meta, e.payload).inspect_err(|err| {
            if let Some(pos) = report {
                warn!(position = %pos, error = %err, "entry kept whole by compaction");
            }
        })
    } else {
        Err(MlError::Unsupported("encrypted".into()))
    };
    let Ok(payload) = payload else {
        return Ok(Parsed {
            meta,
            keys: vec![(outer_key, false)],
            records: None,
        });
    };
    let tomb = |payload: &[u8], null: Option<bool>| payload.is_empty() || null == Some(true);
    match meta.num_messages_in_batch {
        Some(n) if n > 0 => {
            let records = batch::decode_batch(payload, n as usize)
                .map_err(|err| MlError::Unsupported(format!("unreadable batch: {err}")))?;
            let keys = records
                .iter()
                .map(|(s, p)| {
                    (
                        key_of(s.partition_key.as_deref(), s.ordering_key.as_deref()),
                        tomb(p, s.null_value),
                    )
                })
                .collect();
            Ok(Parsed {
                meta,
                keys,
                records: Some(records),
            })
        }
        _ => {
            let t = tomb(&payload, meta.null_value);
            Ok(Parsed {
                meta,
                keys: vec![(outer_key, t)],
                records: None,
            })
        }
    }
}

fn codec(meta: &MessageMetadata) -> Result<Compression, MlError> {
    meta.compression.map_or(Ok(Compression::None), |c| {
        Compression::from_proto(c)
            .ok_or_else(|| MlError::Unsupported(format!("unknown compression {c}")))
    })
}

fn inflate(meta: &MessageMetadata, payload: Bytes) -> Result<Bytes, MlError> {
    match codec(meta)? {
        Compression::None => Ok(payload),
        c => c
            .decompress(&payload, meta.uncompressed_size.unwrap_or(0) as usize)
            .map(Bytes::from)
            .map_err(|err| MlError::Unsupported(format!("compressed entry: {err}"))),
    }
}

/// A kept batch whose superseded messages are replaced by empty records marked
/// `compacted_out` (indexes, and so message ids, stay), compressed again with the codec it
/// came with.
fn rewrite_batch(
    mut meta: MessageMetadata,
    records: Vec<(SingleMessageMetadata, Bytes)>,
    alive: &[bool],
) -> Result<Bytes, MlError> {
    let marked: Vec<_> = records
        .into_iter()
        .zip(alive)
        .map(|(r, a)| {
            if *a {
                r
            } else {
                let out = SingleMessageMetadata {
                    compacted_out: Some(true),
                    ..Default::default()
                };
                (out, Bytes::new())
            }
        })
        .collect();
    let payload = batch::encode_batch(marked.iter().map(|(s, p)| (s, &p[..])));
    let size = u32::try_from(payload.len())
        .map_err(|_| MlError::Unsupported("batch too large to store".into()))?;
    let c = codec(&meta)?;
    if c == Compression::None {
        if meta.uncompressed_size.is_some() {
            meta.uncompressed_size = Some(size);
        }
        return Ok(pentry::encode_entry(&meta, &payload));
    }
    let packed = c
        .compress(&payload)
        .map_err(|err| MlError::Unsupported(format!("compressing a compacted batch: {err}")))?;
    meta.uncompressed_size = Some(size);
    Ok(pentry::encode_entry(&meta, &packed))
}

/// An ack set with bit i set for each live message.
fn live_set(alive: impl ExactSizeIterator<Item = bool>) -> Vec<i64> {
    let mut set = vec![0i64; alive.len().div_ceil(64).max(1)];
    for (i, a) in alive.enumerate() {
        if a {
            set[i / 64] |= 1 << (i % 64);
        }
    }
    set
}

/// Compacts `ml` up to its current end into a new ledger and returns the record and view.
pub async fn compact(ml: &ManagedLedger) -> Result<(CompactionRecord, CompactedView), MlError> {
    let horizon = ml.last_confirmed();
    // pass 1: each key's last message
    let mut latest: HashMap<Vec<u8>, (Position, usize, bool)> = HashMap::new();
    let mut p = ml.next_position(ml.before_first());
    while let Some(pos) = p.filter(|q| *q <= horizon) {
        for (i, (k, tomb)) in parse(&ml.read(pos).await?, Some(pos))?
            .keys
            .into_iter()
            .enumerate()
        {
            if let Some(k) = k {
                latest.insert(k, (pos, i, tomb));
            }
        }
        p = ml.next_position(pos);
    }
    let is_live = |k: &Option<Vec<u8>>, pos: Position, i: usize| match k {
        None => true,
        Some(k) => latest
            .get(k)
            .is_some_and(|(lp, li, tomb)| *lp == pos && *li == i && !tomb),
    };
    // pass 2: what survives, to a ledger of its own
    // the compacted view is the namespace's data too: it stays on the namespace's bookies
    let writer = ml.storage().create(&ml.placement()).await?;
    let mut positions = Vec::new();
    let mut live = HashMap::new();
    // appends are pipelined: `submit` numbers each entry as it is called, so the view's
    // entry k is positions[k] however the syncs group
    let mut in_flight = VecDeque::with_capacity(APPENDS_IN_FLIGHT);
    let mut p = ml.next_position(ml.before_first());
    while let Some(pos) = p.filter(|q| *q <= horizon) {
        let raw = ml.read(pos).await?;
        let Parsed {
            meta,
            keys,
            records,
        } = parse(&raw, None)?;
        let alive: Vec<bool> = keys
            .iter()
            .enumerate()
            .map(|(i, (k, _))| is_live(k, pos, i))
            .collect();
        let kept = if !alive.iter().any(|a| *a) {
            None
        } else if alive.iter().all(|a| *a) {
            Some(raw)
        } else if let Some(records) = records {
            // a batch with some messages superseded: mark them, keep the rest
            live.insert(pos, live_set(alive.iter().copied()));
            Some(rewrite_batch(meta, records, &alive)?)
        } else {
            Some(raw)
        };
        if let Some(data) = kept {
            let mut framed = BytesMut::with_capacity(16 + data.len());
            framed.put_u64(pos.ledger);
            framed.put_i64(pos.entry);
            framed.put_slice(&data);
            in_flight.push_back(writer.submit(framed.freeze())?);
            positions.push(pos);
            if in_flight.len() >= APPENDS_IN_FLIGHT
                && let Some(oldest) = in_flight.pop_front()
            {
                oldest.await?;
            }
        }
        p = ml.next_position(pos);
    }
    for add in in_flight {
        add.await?;
    }
    writer.close().await?;
    let record = CompactionRecord {
        ledger: writer.id(),
        horizon: (horizon.ledger, horizon.entry),
        entries: positions.len() as u64,
    };
    info!(topic = %ml.name(), ledger_id = writer.id(), horizon = %horizon, kept = positions.len(), keys = latest.len(), "topic compacted");
    Ok((
        record,
        CompactedView {
            ledger: writer.id(),
            horizon,
            positions,
            live,
            reader: OnceCell::new(),
        },
    ))
}

/// Records a compaction by CAS over the previous record (`previous`: its version, None if
/// there was none); returns the superseded record's ledger to delete.
pub async fn publish(
    meta: &MetaStore,
    path: &str,
    record: &CompactionRecord,
) -> Result<Option<u64>, MlError> {
    let key = record_key(path);
    let old = meta.get_json::<CompactionRecord>(&key).await?;
    let expected = old
        .as_ref()
        .map_or(Expected::Absent, |v| Expected::Version(v.version));
    match meta.put_json(&key, record, expected).await {
        Ok(_) => Ok(old.map(|v| v.value.ledger)),
        Err(MetaError::BadVersion { .. }) => Err(MlError::Unsupported(
            "another compaction of this topic finished first".into(),
        )),
        Err(e) => Err(e.into()),
    }
}

/// Deletes a topic's compacted view: its record, then its ledger (a ledger left behind by a
/// failure here is only wasted space, never served).
pub async fn delete(
    meta: &MetaStore,
    storage: &dyn LedgerStorage,
    path: &str,
) -> Result<(), MlError> {
    let key = record_key(path);
    let Some(rec) = meta.get_json::<CompactionRecord>(&key).await? else {
        return Ok(());
    };
    match meta.delete(&key, Expected::Version(rec.version)).await {
        Ok(()) | Err(MetaError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    if let Err(e) = storage.delete(rec.value.ledger).await {
        warn!(ledger_id = rec.value.ledger, error = %e, "compacted ledger not deleted");
    }
    Ok(())
}

/// Loads a topic's compacted view, if it has one.
pub async fn load(
    meta: &MetaStore,
    storage: &dyn LedgerStorage,
    path: &str,
) -> Result<Option<Arc<CompactedView>>, MlError> {
    let Some(rec) = meta.get_json::<CompactionRecord>(&record_key(path)).await? else {
        return Ok(None);
    };
    let r = rec.value;
    let reader = storage.open(r.ledger).await?;
    let mut positions = Vec::with_capacity(r.entries as usize);
    let mut live = HashMap::new();
    for i in 0..r.entries {
        let framed = reader.read(i).await?;
        if framed.len() < 16 {
            warn!(
                ledger_id = r.ledger,
                entry = i,
                "truncated compacted entry; view dropped"
            );
            return Ok(None);
        }
        let l = u64::from_be_bytes(framed[0..8].try_into().unwrap_or_default());
        let e = i64::from_be_bytes(framed[8..16].try_into().unwrap_or_default());
        let pos = Position::new(l, e);
        if let Ok(Parsed {
            records: Some(records),
            ..
        }) = parse(&framed.slice(16..), None)
            && records.iter().any(|(s, _)| s.compacted_out == Some(true))
        {
            live.insert(
                pos,
                live_set(records.iter().map(|(s, _)| s.compacted_out != Some(true))),
            );
        }
        positions.push(pos);
    }
    let cell = OnceCell::new();
    let _ = cell.set(reader);
    Ok(Some(Arc::new(CompactedView {
        ledger: r.ledger,
        horizon: Position::new(r.horizon.0, r.horizon.1),
        positions,
        live,
        reader: cell,
    })))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn batch_entry(codec: Compression, keys: &[&str]) -> Bytes {
        let records: Vec<_> = keys
            .iter()
            .map(|k| {
                let s = SingleMessageMetadata {
                    partition_key: Some(k.to_string()),
                    ..Default::default()
                };
                (s, Bytes::from(format!("value of {k}")))
            })
            .collect();
        let payload = batch::encode_batch(records.iter().map(|(s, p)| (s, &p[..])));
        let meta = MessageMetadata {
            num_messages_in_batch: Some(keys.len() as i32),
            compression: Some(codec.proto() as i32),
            uncompressed_size: Some(payload.len() as u32),
            ..Default::default()
        };
        pentry::encode_entry(&meta, &codec.compress(&payload).unwrap())
    }

    #[test]
    fn compressed_batches_are_opened_and_rewritten_with_their_codec() {
        let at = Position::new(1, 0);
        for codec in [Compression::None, Compression::Lz4, Compression::Zstd] {
            let raw = batch_entry(codec, &["a", "b", "c"]);
            let p = parse(&raw, Some(at)).unwrap();
            let keys: Vec<_> = p.keys.iter().map(|(k, _)| k.clone().unwrap()).collect();
            assert_eq!(
                keys,
                [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()],
                "{codec:?}"
            );
            let rewritten =
                rewrite_batch(p.meta, p.records.unwrap(), &[true, false, true]).unwrap();
            // what load() finds again: the same codec, "b" emptied and compacted out
            let again = parse(&rewritten, None).unwrap();
            assert_eq!(again.meta.compression, Some(codec.proto() as i32));
            let records = again.records.unwrap();
            assert_eq!(records[1].0.compacted_out, Some(true));
            assert!(records[1].1.is_empty() && records[1].0.partition_key.is_none());
            assert_eq!(records[2].1, Bytes::from("value of c"));
            let set = live_set(records.iter().map(|(s, _)| s.compacted_out != Some(true)));
            assert_eq!(set, vec![0b101]);
        }
    }

    #[test]
    fn an_entry_that_does_not_inflate_is_kept_whole() {
        let meta = MessageMetadata {
            num_messages_in_batch: Some(2),
            compression: Some(Compression::Lz4.proto() as i32),
            uncompressed_size: Some(1000),
            partition_key: Some("outer".into()),
            ..Default::default()
        };
        let raw = pentry::encode_entry(&meta, b"not lz4 at all");
        let p = parse(&raw, Some(Position::new(1, 0))).unwrap();
        assert_eq!(p.keys, vec![(Some(b"outer".to_vec()), false)]);
        assert!(p.records.is_none());
    }

    #[test]
    fn live_sets_span_words() {
        let set = live_set((0..70).map(|i| i != 3 && i != 65));
        assert_eq!(set.len(), 2);
        assert_eq!(set[0], !(1i64 << 3));
        assert_eq!(set[1], 0b11_1101);
    }
}
