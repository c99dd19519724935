//! Topic compaction: the latest value of every key, up to a horizon, in a ledger of its own.
//!
//! Two passes over the log up to the horizon (its end when compaction starts): the first
//! finds each key's last message (an empty payload or `null_value` is a tombstone that removes
//! the key), the second writes every entry that still holds a live message to a new ledger,
//! each prefixed with its original position. Superseded messages inside a kept batch are
//! marked `compacted_out`, which clients skip. Messages without a key are kept. Compressed
//! batches cannot be opened here and are judged by their outer key. The record at
//! `/compaction/{topic path}` names the ledger and horizon and changes only by CAS.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use magnetar_bookie::ledger::{LedgerClient, LedgerReader};
use magnetar_meta::{Expected, MetaError, MetaStore, MetadataStoreExt};
use magnetar_protocol::proto::CompressionType;
use magnetar_protocol::{MessageMetadata, batch, entry as pentry};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;
use tracing::{info, warn};

use crate::managed_ledger::{ManagedLedger, MlError};
use crate::position::Position;

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
    reader: OnceCell<LedgerReader>,
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

    /// Reads compacted entry `i` (the entry as stored, without its position prefix).
    pub async fn read(&self, client: &LedgerClient, i: usize) -> Result<Bytes, MlError> {
        let reader = self
            .reader
            .get_or_try_init(|| client.open_closed(self.ledger))
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
    format!("/compaction/{path}")
}

/// The key of a message: the partition key (what Pulsar compacts by), else the ordering key.
fn key_of(partition_key: Option<&str>, ordering_key: Option<&[u8]>) -> Option<Vec<u8>> {
    partition_key
        .map(|k| k.as_bytes().to_vec())
        .or_else(|| ordering_key.map(|k| k.to_vec()))
}

enum Parsed {
    /// (key, tombstone) per message; None key = keep regardless.
    Messages(
        MessageMetadata,
        Vec<(Option<Vec<u8>>, bool)>,
        Option<Vec<Bytes>>,
    ),
}

/// Splits an entry into its messages' keys (and, for uncompressed batches, their records).
fn parse(raw: Bytes) -> Result<(Parsed, Bytes), MlError> {
    let e = pentry::parse_entry(raw.clone())
        .map_err(|err| MlError::Unsupported(format!("unreadable entry: {err}")))?;
    let m = e.metadata;
    let tomb = |payload: &[u8], null: Option<bool>| payload.is_empty() || null == Some(true);
    let outer_key = key_of(m.partition_key.as_deref(), m.ordering_key.as_deref());
    let compressed = m
        .compression
        .is_some_and(|c| c != CompressionType::None as i32);
    match m.num_messages_in_batch {
        Some(n) if n > 0 && !compressed => {
            let records = batch::decode_batch(e.payload.clone(), n as usize)
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
            let payloads = records.iter().map(|(_, p)| p.clone()).collect();
            Ok((Parsed::Messages(m, keys, Some(payloads)), raw))
        }
        _ => {
            let t = !compressed && tomb(&e.payload, m.null_value);
            Ok((Parsed::Messages(m, vec![(outer_key, t)], None), raw))
        }
    }
}

/// Compacts `ml` up to its current end into a new ledger and returns the record and view.
pub async fn compact(
    ml: &ManagedLedger,
    client: &LedgerClient,
    quorum: (usize, usize, usize),
) -> Result<(CompactionRecord, CompactedView), MlError> {
    let horizon = ml.last_confirmed();
    // pass 1: each key's last message
    let mut latest: HashMap<Vec<u8>, (Position, usize, bool)> = HashMap::new();
    let mut p = ml.next_position(ml.before_first());
    while let Some(pos) = p.filter(|q| *q <= horizon) {
        let (Parsed::Messages(_, keys, _), _) = parse(ml.read(pos).await?)?;
        for (i, (k, tomb)) in keys.into_iter().enumerate() {
            if let Some(k) = k {
                latest.insert(k, (pos, i, tomb));
            }
        }
        p = ml.next_position(pos);
    }
    let live = |k: &Option<Vec<u8>>, pos: Position, i: usize| match k {
        None => true,
        Some(k) => latest
            .get(k)
            .is_some_and(|(lp, li, tomb)| *lp == pos && *li == i && !tomb),
    };
    // pass 2: what survives, to a ledger of its own
    let (e, qw, qa) = quorum;
    let writer = client.create(e, qw, qa).await?;
    let mut positions = Vec::new();
    let mut p = ml.next_position(ml.before_first());
    while let Some(pos) = p.filter(|q| *q <= horizon) {
        let (Parsed::Messages(meta, keys, payloads), raw) = parse(ml.read(pos).await?)?;
        let alive: Vec<bool> = keys
            .iter()
            .enumerate()
            .map(|(i, (k, _))| live(k, pos, i))
            .collect();
        let kept = if !alive.iter().any(|a| *a) {
            None
        } else if alive.iter().all(|a| *a) {
            Some(raw)
        } else if let Some(payloads) = payloads {
            // a batch with some messages superseded: mark them, keep the rest
            let records = batch::decode_batch(
                pentry::parse_entry(raw)
                    .map_err(|err| MlError::Unsupported(err.to_string()))?
                    .payload,
                payloads.len(),
            )
            .map_err(|err| MlError::Unsupported(err.to_string()))?;
            let marked: Vec<_> = records
                .into_iter()
                .zip(&alive)
                .map(|((mut s, p), a)| {
                    if !*a {
                        s.compacted_out = Some(true);
                    }
                    (s, p)
                })
                .collect();
            let payload = batch::encode_batch(marked.iter().map(|(s, p)| (s, &p[..])));
            Some(pentry::encode_entry(&meta, &payload))
        } else {
            Some(raw)
        };
        if let Some(data) = kept {
            let mut framed = BytesMut::with_capacity(16 + data.len());
            framed.put_u64(pos.ledger);
            framed.put_i64(pos.entry);
            framed.put_slice(&data);
            writer.append(framed.freeze()).await?;
            positions.push(pos);
        }
        p = ml.next_position(pos);
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
pub async fn delete(meta: &MetaStore, client: &LedgerClient, path: &str) -> Result<(), MlError> {
    let key = record_key(path);
    let Some(rec) = meta.get_json::<CompactionRecord>(&key).await? else {
        return Ok(());
    };
    match meta.delete(&key, Expected::Version(rec.version)).await {
        Ok(()) | Err(MetaError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    if let Err(e) = client.delete(rec.value.ledger).await {
        warn!(ledger_id = rec.value.ledger, error = %e, "compacted ledger not deleted");
    }
    Ok(())
}

/// Loads a topic's compacted view, if it has one.
pub async fn load(
    meta: &MetaStore,
    client: &LedgerClient,
    path: &str,
) -> Result<Option<Arc<CompactedView>>, MlError> {
    let Some(rec) = meta.get_json::<CompactionRecord>(&record_key(path)).await? else {
        return Ok(None);
    };
    let r = rec.value;
    let reader = client.open_closed(r.ledger).await?;
    let mut positions = Vec::with_capacity(r.entries as usize);
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
        positions.push(Position::new(l, e));
    }
    let cell = OnceCell::new();
    let _ = cell.set(reader);
    Ok(Some(Arc::new(CompactedView {
        ledger: r.ledger,
        horizon: Position::new(r.horizon.0, r.horizon.1),
        positions,
        reader: cell,
    })))
}
