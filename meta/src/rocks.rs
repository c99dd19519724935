//! The embedded RocksDB backend: the standalone's durable store. One process opens a
//! directory at a time (RocksDB's LOCK file enforces it), so the engine's single writer thread
//! is the only writer and compare-and-set needs no cross-process coordination.
//!
//! Layout: `k` + key -> record (format byte, version, owning session, value);
//! `r` -> last committed revision. Every commit is one synced `WriteBatch`.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use rocksdb::{DB, Options, WriteBatch, WriteOptions};

use crate::local::{Backing, LocalStore, Record, Seek};
use crate::{MetaError, Result, SessionId, Version};

const RECORD_FORMAT: u8 = 1;
const HEADER: usize = 1 + 8 + 8;
const REVISION_KEY: &[u8] = b"r";

pub(crate) struct RocksBacking {
    db: DB,
}

fn backend(what: &str, e: rocksdb::Error) -> MetaError {
    MetaError::Backend(format!("{what}: {e}"))
}

fn encode(record: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + record.value.len());
    out.push(RECORD_FORMAT);
    out.extend_from_slice(&record.version.to_be_bytes());
    out.extend_from_slice(&record.session.to_be_bytes());
    out.extend_from_slice(&record.value);
    out
}

fn decode_header(key: &str, raw: &[u8]) -> Result<(Version, SessionId)> {
    let corrupt = |reason: &str| MetaError::Corrupt {
        key: key.to_string(),
        reason: reason.to_string(),
    };
    if raw.len() < HEADER {
        return Err(corrupt("stored record is shorter than its header"));
    }
    if raw[0] != RECORD_FORMAT {
        return Err(corrupt("unknown stored record format"));
    }
    let mut v = [0u8; 8];
    v.copy_from_slice(&raw[1..9]);
    let mut s = [0u8; 8];
    s.copy_from_slice(&raw[9..17]);
    Ok((u64::from_be_bytes(v), i64::from_be_bytes(s)))
}

fn data_key(key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(b'k');
    k.extend_from_slice(key.as_bytes());
    k
}

impl RocksBacking {
    fn open(path: &Path) -> Result<RocksBacking> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_keep_log_file_num(4);
        let db =
            DB::open(&opts, path).map_err(|e| backend(&format!("open {}", path.display()), e))?;
        Ok(RocksBacking { db })
    }
}

impl Backing for RocksBacking {
    const READS_MAY_BLOCK: bool = true;

    fn revision(&self) -> Result<Version> {
        match self
            .db
            .get_pinned(REVISION_KEY)
            .map_err(|e| backend("read revision", e))?
        {
            None => Ok(0),
            Some(raw) => {
                let bytes: [u8; 8] = raw.as_ref().try_into().map_err(|_| MetaError::Corrupt {
                    key: "<revision>".into(),
                    reason: format!("revision record has {} bytes, not 8", raw.len()),
                })?;
                Ok(u64::from_be_bytes(bytes))
            }
        }
    }

    fn get(&self, key: &str) -> Result<Option<Record>> {
        let Some(raw) = self
            .db
            .get_pinned(data_key(key))
            .map_err(|e| backend(&format!("get {key}"), e))?
        else {
            return Ok(None);
        };
        let (version, session) = decode_header(key, &raw)?;
        Ok(Some(Record {
            version,
            session,
            value: Bytes::copy_from_slice(&raw[HEADER..]),
        }))
    }

    fn scan(&self, start: &str, visit: &mut dyn FnMut(&str, SessionId) -> Seek) -> Result<()> {
        let mut it = self.db.raw_iterator();
        it.seek(data_key(start));
        while it.valid() {
            let (Some(raw_key), Some(raw)) = (it.key(), it.value()) else {
                break;
            };
            let Some(key_bytes) = raw_key.strip_prefix(b"k") else {
                break;
            };
            let key = std::str::from_utf8(key_bytes).map_err(|_| MetaError::Corrupt {
                key: String::from_utf8_lossy(key_bytes).into_owned(),
                reason: "stored key is not UTF-8".into(),
            })?;
            let (_, session) = decode_header(key, raw)?;
            match visit(key, session) {
                Seek::Next => it.next(),
                Seek::Stop => return Ok(()),
                Seek::To(next) => it.seek(data_key(&next)),
            }
        }
        it.status().map_err(|e| backend("scan", e))
    }

    fn commit(&self, revision: Version, writes: &BTreeMap<String, Option<Record>>) -> Result<()> {
        let mut batch = WriteBatch::default();
        for (key, record) in writes {
            match record {
                Some(r) => batch.put(data_key(key), encode(r)),
                None => batch.delete(data_key(key)),
            }
        }
        batch.put(REVISION_KEY, revision.to_be_bytes());
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db
            .write_opt(batch, &opts)
            .map_err(|e| backend("commit", e))
    }
}

/// A durable metadata store in a RocksDB directory.
#[derive(Debug)]
pub struct RocksStore(LocalStore<RocksBacking>);

crate::local::forward_store!(RocksStore);

impl RocksStore {
    /// Opens (or creates) the store in `path`. Ephemeral records of an earlier process are
    /// removed: the sessions that owned them died with it.
    pub fn open(path: impl AsRef<Path>) -> Result<RocksStore> {
        LocalStore::start("rocksdb", RocksBacking::open(path.as_ref())?).map(RocksStore)
    }
}
