//! Ledger storage: where entries live once the journal has them.
//!
//! Adds land in a bounded write cache (after which the bookie journals them); `flush` writes
//! the cache to the current entry log sequentially, sorted by ledger, with direct I/O in
//! slices (so at most one slice is queued at the device ahead of a journal sync, and no page
//! cache is dirtied), syncs it, and then commits the index for those entries in one synced
//! RocksDB batch. Each flush ends on a 4 KiB boundary (zero padding nobody points at). Reads go write cache,
//! read cache, then index + entry log; every entry read from disk is checked against its
//! CRC32C and its ledger/entry ids, and a mismatch is an error, never data.
//!
//! Entry log record: `len u32 | crc32c(rest) u32 | ledger u64 | entry u64 | data`.
//! Index keys: `e`+ledger+entry -> log u32, offset u64, len u32; `m`+ledger -> fenced u8,
//! lac i64; `g`+log -> per-ledger byte counts of that log (for garbage collection).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use rocksdb::{DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions};
use tracing::{debug, info, warn};

use crate::direct::{AlignedBuf, BLOCK, DirectFile};
use crate::error::{BookieError, Result};

const LOG_HEADER: usize = 4 + 4 + 8 + 8;

#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub dir: PathBuf,
    /// Start a new entry log past this size.
    pub max_entry_log_bytes: u64,
    /// Adds beyond this many cached bytes wait for a flush (`add_entry` returns `CacheFull`).
    pub write_cache_bytes: usize,
    pub read_cache_bytes: usize,
    /// Compact an entry log once less than this fraction of it is live.
    pub compact_threshold: f64,
    /// A flush writes the entry log this many bytes at a time.
    pub flush_slice_bytes: usize,
}

impl StorageConfig {
    pub fn new(dir: impl Into<PathBuf>) -> StorageConfig {
        StorageConfig {
            dir: dir.into(),
            max_entry_log_bytes: 1 << 30,
            write_cache_bytes: 64 << 20,
            read_cache_bytes: 64 << 20,
            compact_threshold: 0.5,
            flush_slice_bytes: 1 << 20,
        }
    }
}

/// What is known of a ledger on this bookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerState {
    pub fenced: bool,
    /// Highest last-add-confirmed seen from the writer (-1: none).
    pub lac: i64,
    /// The key the first writer presented; adds with another key are refused.
    pub writer_key: Bytes,
}

impl Default for LedgerState {
    fn default() -> Self {
        LedgerState {
            fenced: false,
            lac: -1,
            writer_key: Bytes::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loc {
    log: u32,
    offset: u64,
    len: u32,
}

impl Loc {
    fn encode(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..4].copy_from_slice(&self.log.to_be_bytes());
        out[4..12].copy_from_slice(&self.offset.to_be_bytes());
        out[12..].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    fn decode(raw: &[u8]) -> Option<Loc> {
        let raw: &[u8; 16] = raw.try_into().ok()?;
        Some(Loc {
            log: u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]),
            offset: u64::from_be_bytes(raw[4..12].try_into().ok()?),
            len: u32::from_be_bytes([raw[12], raw[13], raw[14], raw[15]]),
        })
    }
}

fn entry_key(ledger: u64, entry: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = b'e';
    k[1..9].copy_from_slice(&ledger.to_be_bytes());
    k[9..].copy_from_slice(&entry.to_be_bytes());
    k
}

fn ledger_prefix(ledger: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'e';
    k[1..].copy_from_slice(&ledger.to_be_bytes());
    k
}

fn meta_key(ledger: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'm';
    k[1..].copy_from_slice(&ledger.to_be_bytes());
    k
}

fn gc_key(log: u32) -> [u8; 5] {
    let mut k = [0u8; 5];
    k[0] = b'g';
    k[1..].copy_from_slice(&log.to_be_bytes());
    k
}

fn encode_state(s: &LedgerState) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + s.writer_key.len());
    out.push(s.fenced as u8);
    out.extend_from_slice(&s.lac.to_be_bytes());
    out.extend_from_slice(&s.writer_key);
    out
}

fn decode_state(raw: &[u8]) -> Option<LedgerState> {
    if raw.len() < 9 {
        return None;
    }
    Some(LedgerState {
        fenced: raw[0] != 0,
        lac: i64::from_be_bytes(raw[1..9].try_into().ok()?),
        writer_key: Bytes::copy_from_slice(&raw[9..]),
    })
}

fn encode_usage(usage: &HashMap<u64, u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(usage.len() * 16);
    for (l, b) in usage {
        out.extend_from_slice(&l.to_be_bytes());
        out.extend_from_slice(&b.to_be_bytes());
    }
    out
}

fn decode_usage(raw: &[u8]) -> HashMap<u64, u64> {
    raw.chunks_exact(16)
        .filter_map(|c| {
            Some((
                u64::from_be_bytes(c[..8].try_into().ok()?),
                u64::from_be_bytes(c[8..].try_into().ok()?),
            ))
        })
        .collect()
}

fn log_name(id: u32) -> String {
    format!("{id:08x}.log")
}

type Key = (u64, u64);

#[derive(Default)]
struct WriteCache {
    active: BTreeMap<Key, Bytes>,
    active_bytes: usize,
    /// Being written by `flush`; still served to readers until the index has it.
    flushing: Arc<BTreeMap<Key, Bytes>>,
}

/// FIFO-evicted cache of entries read from disk.
#[derive(Default)]
struct ReadCache {
    map: HashMap<Key, Bytes>,
    order: VecDeque<Key>,
    bytes: usize,
}

impl ReadCache {
    fn insert(&mut self, key: Key, data: Bytes, cap: usize) {
        if data.len() > cap / 4 || self.map.contains_key(&key) {
            return;
        }
        self.bytes += data.len();
        self.map.insert(key, data);
        self.order.push_back(key);
        while self.bytes > cap {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(d) = self.map.remove(&old) {
                self.bytes -= d.len();
            }
        }
    }
}

struct CurrentLog {
    id: u32,
    /// Where flushes write (direct I/O where the filesystem has it).
    writer: DirectFile,
    /// Where reads of this log go (buffered).
    file: Arc<File>,
    /// End of the written data, always block-aligned.
    pos: u64,
    /// Bytes per ledger in this log, persisted with each flush.
    usage: HashMap<u64, u64>,
}

pub struct LedgerStorage {
    config: StorageConfig,
    index: DB,
    cache: RwLock<WriteCache>,
    read_cache: Mutex<ReadCache>,
    states: RwLock<HashMap<u64, LedgerState>>,
    /// Ledgers whose state changed since the last flush (a set: the LAC of a busy ledger
    /// moves with every add, and its state needs writing once per flush, not once per add).
    dirty: Mutex<HashSet<u64>>,
    current: Mutex<CurrentLog>,
    readers: RwLock<HashMap<u32, Arc<File>>>,
    /// Serialises flush, compaction and deletion against each other; holds the slice buffer
    /// flushes build their writes in.
    flush_lock: Mutex<AlignedBuf>,
}

impl std::fmt::Debug for LedgerStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerStorage")
            .field("dir", &self.config.dir)
            .finish()
    }
}

fn rocks(context: &'static str, path: &Path, e: rocksdb::Error) -> BookieError {
    BookieError::io(context, path, std::io::Error::other(e.to_string()))
}

impl LedgerStorage {
    pub fn open(config: StorageConfig) -> Result<LedgerStorage> {
        let logs_dir = config.dir.join("logs");
        std::fs::create_dir_all(&logs_dir)
            .map_err(|e| BookieError::io("create entry log dir", &logs_dir, e))?;
        let index_dir = config.dir.join("index");
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_keep_log_file_num(4);
        let index = DB::open(&opts, &index_dir).map_err(|e| rocks("open index", &index_dir, e))?;

        let mut states = HashMap::new();
        for item in index.iterator(IteratorMode::From(b"m", Direction::Forward)) {
            let (k, v) = item.map_err(|e| rocks("load ledger states", &index_dir, e))?;
            if k.first() != Some(&b'm') {
                break;
            }
            let ledger = k
                .get(1..9)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes);
            match (ledger, decode_state(&v)) {
                (Some(l), Some(s)) => {
                    states.insert(l, s);
                }
                _ => {
                    return Err(BookieError::Corrupt {
                        path: index_dir,
                        offset: 0,
                        reason: "undecodable ledger state in index".into(),
                    });
                }
            }
        }

        // Always start a fresh entry log: a crash may have left a half-written tail in the
        // last one, which the index never points into.
        let mut max_id = 0u32;
        for entry in std::fs::read_dir(&logs_dir)
            .map_err(|e| BookieError::io("list entry logs", &logs_dir, e))?
        {
            let entry = entry.map_err(|e| BookieError::io("list entry logs", &logs_dir, e))?;
            if let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|h| u32::from_str_radix(h, 16).ok())
            {
                max_id = max_id.max(id);
            }
        }
        let current = Self::create_log(&logs_dir, max_id + 1)?;
        info!(dir = %config.dir.display(), ledgers = states.len(), entry_log = max_id + 1, "ledger storage opened");
        Ok(LedgerStorage {
            config,
            index,
            cache: RwLock::default(),
            read_cache: Mutex::default(),
            states: RwLock::new(states),
            dirty: Mutex::default(),
            current: Mutex::new(current),
            readers: RwLock::default(),
            flush_lock: Mutex::new(AlignedBuf::default()),
        })
    }

    fn logs_dir(&self) -> PathBuf {
        self.config.dir.join("logs")
    }

    fn create_log(dir: &Path, id: u32) -> Result<CurrentLog> {
        let path = dir.join(log_name(id));
        // A log left by a crash between its creation and its first indexed entry holds
        // nothing anyone points at.
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(BookieError::io("remove stale entry log", &path, e));
            }
            _ => {}
        }
        let writer =
            DirectFile::create(&path).map_err(|e| BookieError::io("create entry log", &path, e))?;
        let file = File::open(&path).map_err(|e| BookieError::io("open entry log", &path, e))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| BookieError::io("sync entry log dir", dir, e))?;
        Ok(CurrentLog {
            id,
            writer,
            file: Arc::new(file),
            pos: 0,
            usage: HashMap::new(),
        })
    }

    /// Caches an entry for the next flush. Fails with `CacheFull` when the write cache holds
    /// its limit; the caller flushes and tries again.
    pub fn add_entry(&self, ledger: u64, entry: u64, data: Bytes) -> Result<()> {
        let mut cache = self.cache.write();
        if cache.active_bytes + data.len() > self.config.write_cache_bytes
            && !cache.active.is_empty()
        {
            return Err(BookieError::CacheFull);
        }
        cache.active_bytes += data.len();
        if let Some(old) = cache.active.insert((ledger, entry), data) {
            cache.active_bytes -= old.len();
        }
        drop(cache);
        if !self.states.read().contains_key(&ledger) {
            self.states.write().entry(ledger).or_default();
            self.dirty.lock().insert(ledger);
        }
        Ok(())
    }

    pub fn write_cache_bytes(&self) -> usize {
        self.cache.read().active_bytes
    }

    pub fn read_cache_bytes(&self) -> usize {
        self.read_cache.lock().bytes
    }

    /// Raises the ledger's last-add-confirmed (it never goes down).
    pub fn update_lac(&self, ledger: u64, lac: i64) {
        let mut states = self.states.write();
        let s = states.entry(ledger).or_default();
        if lac > s.lac {
            s.lac = lac;
            drop(states);
            self.dirty.lock().insert(ledger);
        }
    }

    /// Marks the ledger fenced; returns whether it already was.
    pub fn set_fenced(&self, ledger: u64) -> bool {
        let mut states = self.states.write();
        let s = states.entry(ledger).or_default();
        let was = s.fenced;
        s.fenced = true;
        drop(states);
        if !was {
            self.dirty.lock().insert(ledger);
        }
        was
    }

    /// Binds the ledger to `key` if it has no writer yet; false if another key holds it.
    pub fn set_writer_key(&self, ledger: u64, key: &Bytes) -> bool {
        let mut states = self.states.write();
        let s = states.entry(ledger).or_default();
        if s.writer_key.is_empty() {
            s.writer_key = key.clone();
            drop(states);
            self.dirty.lock().insert(ledger);
            true
        } else {
            s.writer_key == key
        }
    }

    /// Every ledger this bookie holds anything of.
    pub fn ledgers(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.states.read().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    pub fn ledger_state(&self, ledger: u64) -> Option<LedgerState> {
        self.states.read().get(&ledger).cloned()
    }

    /// Reads an entry. `Ok(None)` when this bookie does not have it.
    pub fn get_entry(&self, ledger: u64, entry: u64) -> Result<Option<Bytes>> {
        let key = (ledger, entry);
        {
            let cache = self.cache.read();
            if let Some(d) = cache.active.get(&key).or_else(|| cache.flushing.get(&key)) {
                return Ok(Some(d.clone()));
            }
        }
        if let Some(d) = self.read_cache.lock().map.get(&key) {
            return Ok(Some(d.clone()));
        }
        let Some(raw) = self
            .index
            .get_pinned(entry_key(ledger, entry))
            .map_err(|e| rocks("read index", &self.config.dir, e))?
        else {
            return Ok(None);
        };
        let loc = Loc::decode(&raw).ok_or_else(|| BookieError::Corrupt {
            path: self.config.dir.join("index"),
            offset: 0,
            reason: format!("undecodable location of {ledger}:{entry}"),
        })?;
        let data = self.read_at(loc, ledger, entry)?;
        self.read_cache
            .lock()
            .insert(key, data.clone(), self.config.read_cache_bytes);
        Ok(Some(data))
    }

    /// The highest entry id this bookie has for the ledger, if any.
    pub fn last_entry(&self, ledger: u64) -> Result<Option<u64>> {
        let mut best = None;
        {
            let cache = self.cache.read();
            for map in [&cache.active, &*cache.flushing] {
                if let Some(((_, e), _)) = map.range((ledger, 0)..=(ledger, u64::MAX)).next_back() {
                    best = best.max(Some(*e));
                }
            }
        }
        let mut end = ledger_prefix(ledger).to_vec();
        end.extend_from_slice(&[0xff; 8]);
        let mut it = self.index.raw_iterator();
        it.seek_for_prev(&end);
        if let Some(k) = it.key()
            && k.len() == 17
            && k[..9] == ledger_prefix(ledger)
            && let Ok(e) = <[u8; 8]>::try_from(&k[9..])
        {
            best = best.max(Some(u64::from_be_bytes(e)));
        }
        Ok(best)
    }

    fn reader(&self, log: u32) -> Result<Arc<File>> {
        if let Some(f) = self.readers.read().get(&log) {
            return Ok(Arc::clone(f));
        }
        {
            let cur = self.current.lock();
            if cur.id == log {
                return Ok(Arc::clone(&cur.file));
            }
        }
        let path = self.logs_dir().join(log_name(log));
        let f =
            Arc::new(File::open(&path).map_err(|e| BookieError::io("open entry log", &path, e))?);
        self.readers.write().insert(log, Arc::clone(&f));
        Ok(f)
    }

    fn read_at(&self, loc: Loc, ledger: u64, entry: u64) -> Result<Bytes> {
        let path = || self.logs_dir().join(log_name(loc.log));
        if loc.len as usize > crate::journal::MAX_RECORD_BYTES {
            // A damaged index must not make us allocate gigabytes.
            return Err(BookieError::Corrupt {
                path: path(),
                offset: loc.offset,
                reason: format!(
                    "index gives entry {ledger}:{entry} an impossible length {}",
                    loc.len
                ),
            });
        }
        let file = self.reader(loc.log)?;
        let mut buf = vec![0u8; loc.len as usize];
        file.read_exact_at(&mut buf, loc.offset)
            .map_err(|e| BookieError::io("read entry log", path(), e))?;
        let corrupt = |reason: String| BookieError::Corrupt {
            path: path(),
            offset: loc.offset,
            reason,
        };
        if buf.len() < LOG_HEADER {
            return Err(corrupt("entry shorter than its header".into()));
        }
        let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
        if len + 8 != buf.len() {
            return Err(corrupt(format!("entry {ledger}:{entry} has a bad length")));
        }
        if crc32c::crc32c(&buf[8..]) != crc {
            return Err(corrupt(format!(
                "checksum mismatch in entry {ledger}:{entry}"
            )));
        }
        let l = u64::from_le_bytes(buf[8..16].try_into().unwrap_or_default());
        let e = u64::from_le_bytes(buf[16..24].try_into().unwrap_or_default());
        if (l, e) != (ledger, entry) {
            return Err(corrupt(format!(
                "index points at {l}:{e} for {ledger}:{entry}"
            )));
        }
        Ok(Bytes::from(buf).slice(LOG_HEADER..))
    }

    /// Writes everything cached so far to the entry log and the index, durably. Entries added
    /// while it runs wait for the next flush.
    pub fn flush(&self) -> Result<()> {
        let mut slice = self.flush_lock.lock();
        let batch = {
            let mut cache = self.cache.write();
            let active = std::mem::take(&mut cache.active);
            cache.active_bytes = 0;
            cache.flushing = Arc::new(active);
            Arc::clone(&cache.flushing)
        };
        let dirty: Vec<u64> = self.dirty.lock().drain().collect();
        let result = self.write_batch(&mut slice, &batch, &dirty);
        if result.is_err() {
            // Keep the entries readable and flush them next time.
            let mut cache = self.cache.write();
            for (k, v) in batch.iter() {
                if !cache.active.contains_key(k) {
                    cache.active_bytes += v.len();
                    cache.active.insert(*k, v.clone());
                }
            }
            self.dirty.lock().extend(dirty);
        }
        self.cache.write().flushing = Arc::default();
        result
    }

    fn write_batch(
        &self,
        slice: &mut AlignedBuf,
        batch: &BTreeMap<Key, Bytes>,
        dirty: &[u64],
    ) -> Result<()> {
        let mut wb = WriteBatch::default();
        let mut cur = self.current.lock();
        if !batch.is_empty() {
            let path = self.logs_dir().join(log_name(cur.id));
            let cur = &mut *cur;
            let mut write = |data: &[u8], at: u64| {
                cur.writer
                    .write_with(data, at, |f, b, o| f.write_all_at(b, o))
                    .map_err(|e| BookieError::io("write entry log", &path, e))
            };
            // `pos` is where `slice` will go; `slice` is written whenever it holds a full
            // slice's worth, in whole blocks, and the part-block rest moves to its front.
            slice.clear();
            let mut pos = cur.pos;
            for (&(ledger, entry), data) in batch {
                let offset = pos + slice.len() as u64;
                let len = (16 + data.len()) as u32;
                let mut header = [0u8; LOG_HEADER];
                header[..4].copy_from_slice(&len.to_le_bytes());
                header[8..16].copy_from_slice(&ledger.to_le_bytes());
                header[16..24].copy_from_slice(&entry.to_le_bytes());
                let crc = crc32c::crc32c_append(crc32c::crc32c(&header[8..]), data);
                header[4..8].copy_from_slice(&crc.to_le_bytes());
                slice.extend_from_slice(&header);
                slice.extend_from_slice(data);
                let loc = Loc {
                    log: cur.id,
                    offset,
                    len: len + 8,
                };
                wb.put(entry_key(ledger, entry), loc.encode());
                *cur.usage.entry(ledger).or_default() += u64::from(len) + 8;
                if slice.len() >= self.config.flush_slice_bytes {
                    let whole = slice.len() - slice.len() % BLOCK;
                    write(&slice.as_slice()[..whole], pos)?;
                    pos += whole as u64;
                    slice.drain_front(whole);
                }
            }
            slice.pad_to_block();
            write(slice.as_slice(), pos)?;
            pos += slice.len() as u64;
            cur.writer
                .file()
                .sync_data()
                .map_err(|e| BookieError::io("sync entry log", &path, e))?;
            cur.pos = pos;
            wb.put(gc_key(cur.id), encode_usage(&cur.usage));
        }
        {
            let states = self.states.read();
            for l in dirty {
                if let Some(s) = states.get(l) {
                    wb.put(meta_key(*l), encode_state(s));
                }
            }
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.index
            .write_opt(wb, &opts)
            .map_err(|e| rocks("commit index", &self.config.dir, e))?;
        if cur.pos >= self.config.max_entry_log_bytes {
            self.roll(&mut cur)?;
        }
        Ok(())
    }

    /// Starts a new current log; the old one stays readable.
    fn roll(&self, cur: &mut CurrentLog) -> Result<()> {
        let old = cur.id;
        let next = Self::create_log(&self.logs_dir(), cur.id + 1)?;
        self.readers.write().insert(old, Arc::clone(&cur.file));
        *cur = next;
        debug!(entry_log = cur.id, "entry log rolled");
        Ok(())
    }

    /// Forgets a ledger: its index entries and state go now, its bytes at the next `gc`.
    pub fn delete_ledger(&self, ledger: u64) -> Result<()> {
        let _slice = self.flush_lock.lock();
        {
            let mut cache = self.cache.write();
            let keys: Vec<Key> = cache
                .active
                .range((ledger, 0)..=(ledger, u64::MAX))
                .map(|(k, _)| *k)
                .collect();
            for k in keys {
                if let Some(d) = cache.active.remove(&k) {
                    cache.active_bytes -= d.len();
                }
            }
        }
        self.states.write().remove(&ledger);
        let mut end = ledger_prefix(ledger).to_vec();
        end.extend_from_slice(&[0xff; 8]);
        end.push(0xff);
        let mut wb = WriteBatch::default();
        wb.delete_range(ledger_prefix(ledger).to_vec(), end);
        wb.delete(meta_key(ledger));
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.index
            .write_opt(wb, &opts)
            .map_err(|e| rocks("delete ledger", &self.config.dir, e))?;
        let mut rc = self.read_cache.lock();
        let rc = &mut *rc;
        rc.order.retain(|k| k.0 != ledger);
        rc.map.retain(|k, _| k.0 != ledger);
        rc.bytes = rc.map.values().map(Bytes::len).sum();
        Ok(())
    }

    /// Reclaims space of deleted ledgers: removes entry logs with nothing live and compacts
    /// those below the live threshold into the current log. Returns bytes freed.
    pub fn gc(&self) -> Result<u64> {
        let mut slice = self.flush_lock.lock();
        let current = {
            let mut cur = self.current.lock();
            // A current log that is mostly garbage is rolled so this pass can reclaim it.
            let total: u64 = cur.usage.values().sum();
            let live: u64 = {
                let states = self.states.read();
                cur.usage
                    .iter()
                    .filter(|(l, _)| states.contains_key(l))
                    .map(|(_, b)| b)
                    .sum()
            };
            if total > 0 && (live as f64) < self.config.compact_threshold * total as f64 {
                self.roll(&mut cur)?;
            }
            cur.id
        };
        let mut logs = Vec::new();
        for item in self
            .index
            .iterator(IteratorMode::From(b"g", Direction::Forward))
        {
            let (k, v) = item.map_err(|e| rocks("scan entry log usage", &self.config.dir, e))?;
            if k.first() != Some(&b'g') {
                break;
            }
            let Some(id) = k
                .get(1..5)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_be_bytes)
            else {
                continue;
            };
            if id != current {
                logs.push((id, decode_usage(&v)));
            }
        }
        let mut freed = 0;
        for (id, usage) in logs {
            let total: u64 = usage.values().sum();
            let live: HashMap<u64, u64> = {
                let states = self.states.read();
                usage
                    .into_iter()
                    .filter(|(l, _)| states.contains_key(l))
                    .collect()
            };
            let live_bytes: u64 = live.values().sum();
            if live_bytes > 0 && (live_bytes as f64) >= self.config.compact_threshold * total as f64
            {
                continue;
            }
            if live_bytes > 0 {
                self.compact_log(&mut slice, id, &live)?;
            }
            let path = self.logs_dir().join(log_name(id));
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            self.readers.write().remove(&id);
            let mut opts = WriteOptions::default();
            opts.set_sync(true);
            self.index
                .delete_opt(gc_key(id), &opts)
                .map_err(|e| rocks("drop entry log usage", &self.config.dir, e))?;
            match std::fs::remove_file(&path) {
                Ok(()) => freed += size,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(BookieError::io("remove entry log", &path, e)),
            }
            info!(
                entry_log = id,
                bytes = size,
                live = live_bytes,
                "entry log reclaimed"
            );
        }
        Ok(freed)
    }

    /// Copies the live entries of `log` into the current log and repoints the index.
    fn compact_log(
        &self,
        slice: &mut AlignedBuf,
        log: u32,
        live: &HashMap<u64, u64>,
    ) -> Result<()> {
        let mut moved = BTreeMap::new();
        for &ledger in live.keys() {
            let prefix = ledger_prefix(ledger);
            for item in self
                .index
                .iterator(IteratorMode::From(&prefix, Direction::Forward))
            {
                let (k, v) = item.map_err(|e| rocks("scan ledger index", &self.config.dir, e))?;
                if k.len() != 17 || k[..9] != prefix {
                    break;
                }
                let Some(loc) = Loc::decode(&v) else { continue };
                if loc.log != log {
                    continue;
                }
                let entry = u64::from_be_bytes(k[9..17].try_into().unwrap_or_default());
                match self.read_at(loc, ledger, entry) {
                    Ok(data) => {
                        moved.insert((ledger, entry), data);
                    }
                    Err(e) => {
                        warn!(ledger, entry, error = %e, "entry unreadable during compaction; other replicas hold it")
                    }
                }
            }
        }
        debug!(
            entry_log = log,
            entries = moved.len(),
            "compacting entry log"
        );
        self.write_batch(slice, &moved, &[])
    }

    /// Total bytes of entry log files on disk.
    pub fn disk_usage(&self) -> Result<u64> {
        let dir = self.logs_dir();
        let mut total = 0;
        for entry in
            std::fs::read_dir(&dir).map_err(|e| BookieError::io("list entry logs", &dir, e))?
        {
            let entry = entry.map_err(|e| BookieError::io("list entry logs", &dir, e))?;
            total += entry.metadata().map(|m| m.len()).unwrap_or(0);
        }
        Ok(total)
    }
}
