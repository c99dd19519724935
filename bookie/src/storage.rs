//! Ledger storage: the index that finds entries where the journal wrote them, the state of
//! every ledger, the caches, and garbage collection.
//!
//! Entries are written once, by the journal, and stay in its files: the journal's files are
//! this bookie's entry logs. Writing every entry a second time into separate entry logs (as
//! BookKeeper does) doubles the bytes the disk must take and makes journal syncs wait behind
//! the second copy, which on one disk was the limit of both throughput and latency.
//!
//! Each durable journal group reaches [`LedgerStorage::apply`] (on the journal thread, before
//! its adds are answered): entries go into the write cache with their place in the journal.
//! `flush` commits the cached places to the RocksDB index in one synced batch, with the
//! ledgers' state, and returns the journal position the index is now complete up to, which
//! becomes the journal's checkpoint. Reads go write cache, read cache, then index + journal
//! file; every record read is checked against its CRC32C and its ledger/entry ids, and a
//! mismatch is an error, never data.
//!
//! Space: per journal file the bytes of each ledger are kept (persisted at each flush). A file
//! wholly behind the checkpoint whose ledgers are all deleted is retired; one that is mostly
//! dead is compacted first: its live entries are appended to the journal again (`MOVED`
//! records) and the file retired once the index points at the copies.
//!
//! Index keys: `e`+ledger+entry -> file u64, offset u64, len u32; `m`+ledger -> fenced u8,
//! lac i64, writer key; `g`+file -> per-ledger byte counts of that journal file.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use rocksdb::{DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions};
use tracing::{debug, info, warn};

use crate::error::{BookieError, Result};
use crate::journal::{JournalFiles, JournalPos, Record, RecordLoc, kind};

#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub dir: PathBuf,
    /// Bytes of entries kept in memory between index flushes; adds wait beyond this.
    pub write_cache_bytes: usize,
    pub read_cache_bytes: usize,
    /// Compact a journal file once less than this fraction of it is live.
    pub compact_threshold: f64,
}

impl StorageConfig {
    pub fn new(dir: impl Into<PathBuf>) -> StorageConfig {
        StorageConfig {
            dir: dir.into(),
            write_cache_bytes: 64 << 20,
            read_cache_bytes: 64 << 20,
            compact_threshold: 0.5,
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

fn encode_loc(loc: &RecordLoc) -> [u8; 20] {
    let mut out = [0u8; 20];
    out[..8].copy_from_slice(&loc.file.to_be_bytes());
    out[8..16].copy_from_slice(&loc.offset.to_be_bytes());
    out[16..].copy_from_slice(&loc.len.to_be_bytes());
    out
}

fn decode_loc(raw: &[u8]) -> Option<RecordLoc> {
    let raw: &[u8; 20] = raw.try_into().ok()?;
    Some(RecordLoc {
        file: u64::from_be_bytes(raw[..8].try_into().ok()?),
        offset: u64::from_be_bytes(raw[8..16].try_into().ok()?),
        len: u32::from_be_bytes(raw[16..].try_into().ok()?),
    })
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

fn gc_key(file: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'g';
    k[1..].copy_from_slice(&file.to_be_bytes());
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

type Usage = HashMap<u64, u64>;

fn encode_usage(usage: &Usage) -> Vec<u8> {
    let mut out = Vec::with_capacity(usage.len() * 16);
    for (l, b) in usage {
        out.extend_from_slice(&l.to_be_bytes());
        out.extend_from_slice(&b.to_be_bytes());
    }
    out
}

fn decode_usage(raw: &[u8]) -> Usage {
    raw.chunks_exact(16)
        .filter_map(|c| {
            Some((
                u64::from_be_bytes(c[..8].try_into().ok()?),
                u64::from_be_bytes(c[8..].try_into().ok()?),
            ))
        })
        .collect()
}

type Key = (u64, u64);
type Cached = BTreeMap<Key, (RecordLoc, Bytes)>;

/// What arrived since the last flush.
#[derive(Default)]
struct WriteCache {
    active: Cached,
    active_bytes: usize,
    /// Being committed by `flush`; still served to readers until the index has it.
    flushing: Arc<Cached>,
    /// Just past the last record applied, if any was since the last flush.
    upto: Option<JournalPos>,
    /// Bytes per ledger per journal file added since the last flush.
    usage: HashMap<u64, Usage>,
    /// Ledgers deleted since the last flush, whose index entries go with it.
    deleted: Vec<u64>,
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

    fn forget_ledger(&mut self, ledger: u64) {
        self.order.retain(|k| k.0 != ledger);
        self.map.retain(|k, _| k.0 != ledger);
        self.bytes = self.map.values().map(Bytes::len).sum();
    }
}

/// What garbage collection can do now: files to retire as they are, and files whose live
/// entries must be copied out first.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GcPlan {
    pub dead: Vec<u64>,
    pub compact: Vec<u64>,
}

pub struct LedgerStorage {
    config: StorageConfig,
    index: DB,
    files: Arc<JournalFiles>,
    cache: RwLock<WriteCache>,
    read_cache: Mutex<ReadCache>,
    states: RwLock<HashMap<u64, LedgerState>>,
    /// Ledgers whose state changed since the last flush (a set: the LAC of a busy ledger
    /// moves with every add, and its state needs writing once per flush, not once per add).
    dirty: Mutex<HashSet<u64>>,
    /// Bytes per ledger of every journal file with entries, as of the last flush.
    usage: Mutex<BTreeMap<u64, Usage>>,
    /// Serialises flushes.
    flush_lock: Mutex<()>,
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

fn synced() -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    opts
}

impl LedgerStorage {
    /// Opens the index in `config.dir`; entries are read from the journal's `files`.
    pub fn open(config: StorageConfig, files: Arc<JournalFiles>) -> Result<LedgerStorage> {
        let index_dir = config.dir.join("index");
        std::fs::create_dir_all(&config.dir)
            .map_err(|e| BookieError::io("create ledger storage dir", &config.dir, e))?;
        let old_logs = config.dir.join("logs");
        if std::fs::read_dir(&old_logs).is_ok_and(|mut d| d.next().is_some()) {
            return Err(BookieError::Corrupt {
                path: old_logs,
                offset: 0,
                reason: "entry logs of an older Magnetar layout; this bookie keeps entries in \
                         its journal and cannot read them"
                    .into(),
            });
        }
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_keep_log_file_num(4);
        let index = DB::open(&opts, &index_dir).map_err(|e| rocks("open index", &index_dir, e))?;

        let mut states = HashMap::new();
        let mut usage = BTreeMap::new();
        let bad = |what: &str| BookieError::Corrupt {
            path: index_dir.clone(),
            offset: 0,
            reason: format!("undecodable {what} in index"),
        };
        for prefix in [b'g', b'm'] {
            for item in index.iterator(IteratorMode::From(&[prefix], Direction::Forward)) {
                let (k, v) = item.map_err(|e| rocks("load ledger states", &index_dir, e))?;
                if k.first() != Some(&prefix) {
                    break;
                }
                let id = k
                    .get(1..9)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
                    .ok_or_else(|| bad("key"))?;
                if prefix == b'm' {
                    states.insert(id, decode_state(&v).ok_or_else(|| bad("ledger state"))?);
                } else {
                    usage.insert(id, decode_usage(&v));
                }
            }
        }
        info!(dir = %config.dir.display(), ledgers = states.len(), "ledger storage opened");
        Ok(LedgerStorage {
            config,
            index,
            files,
            cache: RwLock::default(),
            read_cache: Mutex::default(),
            states: RwLock::new(states),
            dirty: Mutex::default(),
            usage: Mutex::new(usage),
            flush_lock: Mutex::new(()),
        })
    }

    /// Takes in a durable journal group, in journal order, from the journal's sink. Entries
    /// of ledgers this bookie does not hold (deleted meanwhile) are dropped. The bookie has
    /// already applied the other records' changes (and raised the LAC) in memory before
    /// journaling them; applying them again changes nothing.
    pub fn apply(&self, records: &[(Record, RecordLoc)]) {
        let Some((_, last)) = records.last() else {
            return;
        };
        if records
            .iter()
            .all(|(r, _)| matches!(r.kind, kind::ENTRY | kind::MOVED))
        {
            // The common case: one lock for the whole group.
            let states = self.states.read();
            let mut cache = self.cache.write();
            for (r, loc) in records {
                if states.contains_key(&r.ledger) {
                    index_in(&mut cache, r, *loc);
                }
            }
            cache.upto = Some(last.end());
            return;
        }
        for (r, loc) in records {
            self.apply_one(r, *loc);
        }
    }

    /// Takes in one record found by journal replay on start.
    pub fn replay(&self, r: &Record, loc: RecordLoc) {
        self.apply_one(r, loc);
        if r.kind == kind::ENTRY {
            self.update_lac(r.ledger, r.extra);
        }
    }

    fn apply_one(&self, r: &Record, loc: RecordLoc) {
        match r.kind {
            kind::ENTRY | kind::MOVED => {
                let states = self.states.read();
                if states.contains_key(&r.ledger) {
                    index_in(&mut self.cache.write(), r, loc);
                }
            }
            kind::WRITER_KEY => {
                self.set_writer_key(r.ledger, &r.payload);
            }
            kind::FENCE => {
                self.set_fenced(r.ledger);
            }
            kind::DELETE => self.forget_ledger(r.ledger),
            other => warn!(
                kind = other,
                ledger_id = r.ledger,
                "unknown journal record kind; skipped"
            ),
        }
        self.cache.write().upto = Some(loc.end());
    }

    /// Bytes of entries waiting for the next flush.
    pub fn write_cache_bytes(&self) -> usize {
        self.cache.read().active_bytes
    }

    pub fn read_cache_bytes(&self) -> usize {
        self.read_cache.lock().bytes
    }

    /// Raises the ledger's last-add-confirmed (it never goes down).
    pub fn update_lac(&self, ledger: u64, lac: i64) {
        let mut states = self.states.write();
        let Some(s) = states.get_mut(&ledger) else {
            return;
        };
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

    /// Forgets a deleted ledger at once; its index entries go with the next flush and its
    /// bytes with the journal files that hold them.
    fn forget_ledger(&self, ledger: u64) {
        self.states.write().remove(&ledger);
        {
            let mut cache = self.cache.write();
            let keys: Vec<Key> = cache
                .active
                .range((ledger, 0)..=(ledger, u64::MAX))
                .map(|(k, _)| *k)
                .collect();
            for k in keys {
                if let Some((_, d)) = cache.active.remove(&k) {
                    cache.active_bytes -= d.len();
                }
            }
            cache.deleted.push(ledger);
        }
        self.read_cache.lock().forget_ledger(ledger);
    }

    /// Reads an entry. `Ok(None)` when this bookie does not have it.
    pub fn get_entry(&self, ledger: u64, entry: u64) -> Result<Option<Bytes>> {
        if !self.states.read().contains_key(&ledger) {
            return Ok(None);
        }
        let key = (ledger, entry);
        {
            let cache = self.cache.read();
            if let Some((_, d)) = cache.active.get(&key).or_else(|| cache.flushing.get(&key)) {
                return Ok(Some(d.clone()));
            }
        }
        if let Some(d) = self.read_cache.lock().map.get(&key) {
            return Ok(Some(d.clone()));
        }
        let Some(loc) = self.indexed(ledger, entry)? else {
            return Ok(None);
        };
        let data = match self.read_record(loc, ledger, entry) {
            // The file may have been compacted and reused since the index was asked: if the
            // entry has moved, read it where it is now.
            Err(e @ BookieError::Corrupt { .. }) => match self.indexed(ledger, entry)? {
                Some(now) if now != loc => self.read_record(now, ledger, entry)?,
                _ => return Err(e),
            },
            other => other?,
        };
        self.read_cache
            .lock()
            .insert(key, data.clone(), self.config.read_cache_bytes);
        Ok(Some(data))
    }

    fn indexed(&self, ledger: u64, entry: u64) -> Result<Option<RecordLoc>> {
        let Some(raw) = self
            .index
            .get_pinned(entry_key(ledger, entry))
            .map_err(|e| rocks("read index", &self.config.dir, e))?
        else {
            return Ok(None);
        };
        decode_loc(&raw)
            .map(Some)
            .ok_or_else(|| BookieError::Corrupt {
                path: self.config.dir.join("index"),
                offset: 0,
                reason: format!("undecodable location of {ledger}:{entry}"),
            })
    }

    /// The entry's payload from its journal record, which must be that entry's.
    fn read_record(&self, loc: RecordLoc, ledger: u64, entry: u64) -> Result<Bytes> {
        let r = self.files.read(loc)?;
        if !matches!(r.kind, kind::ENTRY | kind::MOVED) || (r.ledger, r.entry) != (ledger, entry) {
            return Err(BookieError::Corrupt {
                path: self.files.dir().to_path_buf(),
                offset: loc.offset,
                reason: format!(
                    "index points at record {}:{} (kind {}) for entry {ledger}:{entry}",
                    r.ledger, r.entry, r.kind
                ),
            });
        }
        Ok(r.payload)
    }

    /// The highest entry id this bookie has for the ledger, if any.
    pub fn last_entry(&self, ledger: u64) -> Result<Option<u64>> {
        if !self.states.read().contains_key(&ledger) {
            return Ok(None);
        }
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

    /// Commits everything applied so far to the index, durably. Returns the journal
    /// position the index is complete up to (`None`: nothing new since the last flush).
    pub fn flush(&self) -> Result<Option<JournalPos>> {
        let _serial = self.flush_lock.lock();
        let (batch, usage_delta, deleted, upto) = {
            let mut cache = self.cache.write();
            let active = std::mem::take(&mut cache.active);
            cache.active_bytes = 0;
            cache.flushing = Arc::new(active);
            (
                Arc::clone(&cache.flushing),
                std::mem::take(&mut cache.usage),
                std::mem::take(&mut cache.deleted),
                cache.upto.take(),
            )
        };
        let dirty: Vec<u64> = self.dirty.lock().drain().collect();
        let mut merged: Vec<(u64, Usage)> = Vec::with_capacity(usage_delta.len());
        let result = {
            let mut wb = WriteBatch::default();
            for (&(ledger, entry), (loc, _)) in batch.iter() {
                wb.put(entry_key(ledger, entry), encode_loc(loc));
            }
            for &ledger in &deleted {
                let mut end = ledger_prefix(ledger).to_vec();
                end.extend_from_slice(&[0xff; 9]);
                wb.delete_range(ledger_prefix(ledger).to_vec(), end);
                wb.delete(meta_key(ledger));
            }
            {
                let states = self.states.read();
                for l in &dirty {
                    if let Some(s) = states.get(l) {
                        wb.put(meta_key(*l), encode_state(s));
                    }
                }
            }
            {
                let usage = self.usage.lock();
                for (&file, delta) in &usage_delta {
                    let mut u = usage.get(&file).cloned().unwrap_or_default();
                    for (&l, &b) in delta {
                        *u.entry(l).or_default() += b;
                    }
                    wb.put(gc_key(file), encode_usage(&u));
                    merged.push((file, u));
                }
            }
            self.index
                .write_opt(wb, &synced())
                .map_err(|e| rocks("commit index", &self.config.dir, e))
        };
        let mut cache = self.cache.write();
        match result {
            Ok(()) => {
                self.usage.lock().extend(merged);
                cache.flushing = Arc::default();
                Ok(upto)
            }
            Err(e) => {
                // Keep everything readable and commit it next time.
                for (k, v) in batch.iter() {
                    if !cache.active.contains_key(k) {
                        cache.active_bytes += v.1.len();
                        cache.active.insert(*k, v.clone());
                    }
                }
                for (file, delta) in usage_delta {
                    let u = cache.usage.entry(file).or_default();
                    for (l, b) in delta {
                        *u.entry(l).or_default() += b;
                    }
                }
                cache.deleted.extend(deleted);
                cache.upto = cache.upto.max(upto);
                cache.flushing = Arc::default();
                self.dirty.lock().extend(dirty);
                Err(e)
            }
        }
    }

    /// Which of the journal `files` can go, given that replay starts at `checkpoint`: files
    /// wholly before it with no live entries (dead) or few (to compact first).
    pub fn gc_plan(&self, checkpoint: JournalPos, files: &[u64]) -> GcPlan {
        let states = self.states.read();
        let usage = self.usage.lock();
        let mut plan = GcPlan::default();
        for &f in files.iter().filter(|&&f| f < checkpoint.file) {
            let (total, live) = usage.get(&f).map_or((0, 0), |u| {
                u.iter().fold((0, 0), |(t, l), (ledger, &b)| {
                    (t + b, l + if states.contains_key(ledger) { b } else { 0 })
                })
            });
            if live == 0 {
                plan.dead.push(f);
            } else if (live as f64) < self.config.compact_threshold * total as f64 {
                plan.compact.push(f);
            }
        }
        plan
    }

    /// The live entries of journal file `file` and where they are.
    pub fn live_entries(&self, file: u64) -> Result<Vec<(Key, RecordLoc)>> {
        let ledgers: Vec<u64> = {
            let states = self.states.read();
            self.usage
                .lock()
                .get(&file)
                .map(|u| {
                    u.keys()
                        .filter(|l| states.contains_key(l))
                        .copied()
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut out = Vec::new();
        for ledger in ledgers {
            let prefix = ledger_prefix(ledger);
            for item in self
                .index
                .iterator(IteratorMode::From(&prefix, Direction::Forward))
            {
                let (k, v) = item.map_err(|e| rocks("scan ledger index", &self.config.dir, e))?;
                if k.len() != 17 || k[..9] != prefix {
                    break;
                }
                let Some(loc) = decode_loc(&v) else { continue };
                if loc.file == file {
                    let entry = u64::from_be_bytes(k[9..17].try_into().unwrap_or_default());
                    out.push(((ledger, entry), loc));
                }
            }
        }
        debug!(
            journal_file = file,
            entries = out.len(),
            "live entries to move"
        );
        Ok(out)
    }

    /// Reads a live entry for compaction (checked like any read).
    pub fn read_for_move(&self, (ledger, entry): Key, loc: RecordLoc) -> Result<Bytes> {
        self.read_record(loc, ledger, entry)
    }

    /// Drops what is known of a journal file that is gone.
    pub fn forget_file(&self, file: u64) -> Result<()> {
        self.usage.lock().remove(&file);
        self.index
            .delete_opt(gc_key(file), &synced())
            .map_err(|e| rocks("drop journal file usage", &self.config.dir, e))
    }
}

/// Puts an entry's place (and data, for readers) into the write cache.
fn index_in(cache: &mut WriteCache, r: &Record, loc: RecordLoc) {
    *cache
        .usage
        .entry(loc.file)
        .or_default()
        .entry(r.ledger)
        .or_default() += u64::from(loc.len);
    cache.active_bytes += r.payload.len();
    if let Some((_, old)) = cache
        .active
        .insert((r.ledger, r.entry), (loc, r.payload.clone()))
    {
        cache.active_bytes -= old.len();
    }
}
