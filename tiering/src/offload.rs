//! Copying a closed ledger into object storage. The data object streams out in parts as its
//! blocks fill (a multipart upload once it outgrows one part, a single PUT below that), then
//! the index object is written; only then does the caller record the copy (by CAS, in the
//! managed ledger's record). Both keys carry a fresh unique id, so a retried or concurrent
//! offload of the same ledger writes objects of its own and never overwrites one that a
//! record already points at. Objects written but never recorded (a crash between the two
//! steps, a lost CAS) are orphans: [`sweep`] finds and deletes them.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use futures::{StreamExt, TryStreamExt};
use magnetar_managed_ledger::storage::Ledger;
use object_store::path::{Path, PathPart};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use crate::TierError;
use crate::segment::SegmentWriter;
use crate::stats::TierStats;
use crate::store::Location;

/// Entries read from the ledger at a time while copying it.
const READ_CHUNK: u64 = 64;
/// Parts of a multipart upload in flight at once.
const PARTS_IN_FLIGHT: usize = 4;

/// How segments are cut and uploaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentOptions {
    /// A block closes once it holds this many bytes: the unit of a ranged read and of the
    /// read cache (Pulsar's `s3ManagedLedgerOffloadReadBufferSizeInBytes` plays this part).
    pub block_bytes: usize,
    /// Multipart upload part size; smaller data objects go up in one PUT (Pulsar's
    /// `s3ManagedLedgerOffloadMaxBlockSizeInBytes`). At least 5 MiB, S3's smallest part.
    pub part_bytes: usize,
}

impl Default for SegmentOptions {
    fn default() -> Self {
        SegmentOptions {
            block_bytes: 1 << 20,
            part_bytes: 16 << 20,
        }
    }
}

/// What the managed ledger's record keeps of an offloaded ledger (its `offload` field).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OffloadRecord {
    /// Unique per offload run: in both object keys.
    pub uid: String,
    pub location: Location,
    /// The data object's key; the index is at this key plus [`INDEX_SUFFIX`].
    pub key: String,
    pub data_len: u64,
    pub entries: u64,
    /// When the copy was recorded, ms since the epoch (the deletion lag counts from here).
    pub offloaded_ms: u64,
    /// The bookie copy was deleted after the deletion lag: only this copy is left.
    #[serde(default)]
    pub bookie_deleted: bool,
}

pub const INDEX_SUFFIX: &str = ".index";

impl OffloadRecord {
    pub fn from_value(v: &serde_json::Value) -> Result<OffloadRecord, TierError> {
        serde_json::from_value(v.clone())
            .map_err(|e| TierError::Corrupt(format!("offload record: {e}")))
    }

    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    pub fn data_path(&self) -> Path {
        Path::from(self.key.as_str())
    }

    pub fn index_path(&self) -> Path {
        Path::from(format!("{}{INDEX_SUFFIX}", self.key))
    }
}

/// The directory of a log's objects: its name's `/`-separated parts, each escaped.
pub fn log_prefix(log: &str) -> Path {
    Path::from_iter(log.split('/').filter(|p| !p.is_empty()).map(PathPart::from))
}

fn new_uid() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Copies closed ledger `ledger` (entries `0..=last_entry`) of log `log` into `store` at
/// `location`. Returns the record to keep once both objects are complete; on error, what was
/// written is removed where possible (anything left is an orphan for [`sweep`]).
pub async fn offload_ledger(
    store: &Arc<dyn ObjectStore>,
    location: &Location,
    log: &str,
    ledger: &dyn Ledger,
    last_entry: i64,
    opts: SegmentOptions,
    stats: &TierStats,
) -> Result<OffloadRecord, TierError> {
    let started = Instant::now();
    let id = ledger.id();
    let uid = new_uid();
    let file = format!("{id}-{uid}");
    let data_path = log_prefix(log).join(file.as_str());
    let index_path = log_prefix(log).join(format!("{file}{INDEX_SUFFIX}").as_str());
    let res = write_objects(
        store,
        &data_path,
        &index_path,
        ledger,
        last_entry,
        opts,
        stats,
    )
    .await;
    let (data_len, entries) = match res {
        Ok(v) => v,
        Err(e) => {
            stats.offload_failed();
            // best effort: an object left behind is swept later
            let _ = store.delete(&data_path).await;
            let _ = store.delete(&index_path).await;
            return Err(e);
        }
    };
    let elapsed = started.elapsed();
    stats.offloaded(data_len, elapsed);
    info!(
        log, ledger_id = id, entries, bytes = data_len, ms = elapsed.as_millis() as u64,
        location = %location, key = %data_path, "ledger copied to the tier"
    );
    Ok(OffloadRecord {
        uid,
        location: location.clone(),
        key: data_path.to_string(),
        data_len,
        entries,
        offloaded_ms: 0,
        bookie_deleted: false,
    })
}

async fn write_objects(
    store: &Arc<dyn ObjectStore>,
    data_path: &Path,
    index_path: &Path,
    ledger: &dyn Ledger,
    last_entry: i64,
    opts: SegmentOptions,
    stats: &TierStats,
) -> Result<(u64, u64), TierError> {
    let part_bytes = opts.part_bytes.max(5 << 20);
    let mut seg = SegmentWriter::new(ledger.id(), opts.block_bytes);
    let mut pending = BytesMut::new();
    let mut upload: Option<WriteMultipart> = None;
    let count = u64::try_from(last_entry + 1).unwrap_or(0);
    // the next chunk is read while this one is cut into blocks and sent
    let mut chunks = futures::stream::iter((0..count).step_by(READ_CHUNK as usize))
        .map(|first| ledger.read_range(first, (first + READ_CHUNK).min(count) - 1))
        .buffered(2);
    let result: Result<(), TierError> = async {
        while let Some(chunk) = chunks.next().await {
            for e in chunk.map_err(|e| TierError::Source(e.to_string()))? {
                seg.add(&e)?;
            }
            if seg.ready() > 0 {
                pending.extend_from_slice(&seg.take());
            }
            if pending.len() >= part_bytes {
                let w = match &mut upload {
                    Some(w) => w,
                    None => upload.insert(WriteMultipart::new_with_chunk_size(
                        store.put_multipart(data_path).await?,
                        part_bytes,
                    )),
                };
                w.wait_for_capacity(PARTS_IN_FLIGHT).await?;
                w.put(pending.split().freeze());
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        if let Some(w) = upload {
            let _ = w.abort().await;
        }
        return Err(e);
    }
    let (rest, index) = seg.finish();
    pending.extend_from_slice(&rest);
    let data = pending.freeze();
    match upload {
        Some(mut w) => {
            w.put(data);
            w.finish().await?;
        }
        None => {
            store.put(data_path, PutPayload::from(data)).await?;
        }
    }
    // a data object whose length is not the index's was not written whole
    let written = store.head(data_path).await?.size;
    if written != index.data_len {
        return Err(TierError::Corrupt(format!(
            "{data_path}: {written} bytes stored, {} written",
            index.data_len
        )));
    }
    store
        .put(index_path, PutPayload::from(index.encode()))
        .await?;
    stats.note_written(index.data_len);
    debug!(key = %data_path, blocks = index.blocks.len(), "segment written");
    Ok((index.data_len, index.entries))
}

/// Deletes the objects of log `log` whose unique id is not in `keep`: what offloads that were
/// never recorded left behind. Only the log's own directory is looked at (not deeper: a
/// topic named like a directory of this one is another log). Returns how many were deleted.
pub async fn sweep(
    store: &Arc<dyn ObjectStore>,
    log: &str,
    keep: &HashSet<String>,
) -> Result<usize, TierError> {
    let prefix = log_prefix(log);
    let depth = prefix.parts().count() + 1;
    let listed: Vec<_> = store.list(Some(&prefix)).try_collect().await?;
    let mut deleted = 0;
    for meta in listed {
        if meta.location.parts().count() != depth {
            continue;
        }
        let Some(name) = meta.location.filename() else {
            continue;
        };
        let Some(uid) = uid_of(name) else { continue };
        if keep.contains(uid) {
            continue;
        }
        match store.delete(&meta.location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                info!(log, key = %meta.location, "orphaned offload object deleted");
                deleted += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(deleted)
}

/// The unique id in an object name `{ledger}-{uid}[.index]`.
fn uid_of(name: &str) -> Option<&str> {
    let stem = name.strip_suffix(INDEX_SUFFIX).unwrap_or(name);
    let (ledger, uid) = stem.split_once('-')?;
    (ledger.parse::<u64>().is_ok() && uid.len() == 32 && uid.bytes().all(|b| b.is_ascii_hexdigit()))
        .then_some(uid)
}

/// Deletes an offloaded copy (both objects; already gone counts as deleted).
pub async fn delete_copy(store: &Arc<dyn ObjectStore>, r: &OffloadRecord) -> Result<(), TierError> {
    for p in [r.data_path(), r.index_path()] {
        match store.delete(&p).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_object_names_have_a_uid() {
        let uid = "0123456789abcdef0123456789abcdef";
        assert_eq!(uid_of(&format!("17-{uid}")), Some(uid));
        assert_eq!(uid_of(&format!("17-{uid}.index")), Some(uid));
        assert_eq!(uid_of("17-short"), None);
        assert_eq!(uid_of(&format!("x-{uid}")), None);
        assert_eq!(uid_of("README"), None);
        assert_eq!(
            log_prefix("a/b/persistent/t").to_string(),
            "a/b/persistent/t"
        );
    }
}
