//! The journal: every add is made durable here before it is acknowledged.
//!
//! Records from all ledgers are appended to one sequence of files. A dedicated thread takes
//! whatever is queued, writes it as one group and makes the group durable with a single
//! `fdatasync` (group commit): while one sync runs the next group gathers, so groups grow with
//! load without a fixed wait. `max_group_bytes` caps a group and `max_group_wait` may hold a
//! small group open a little longer. Files are zero-filled ahead of the write position so a
//! sync never has to persist a size change, and written with direct I/O (see `direct`) in
//! whole 4 KiB blocks: a group starts with the already written part of its first block
//! (rewritten unchanged) and ends with zeros up to a block boundary, where the next group's
//! records will go. The zeros read as the end of data, so the record format knows nothing
//! of blocks. Every open continues in a new file, so a file is only ever written by one
//! process, from offset 0, block-aligned.
//!
//! Record: `len u32 | crc32c(len, body) u32 | body`, body = `kind u8 | ledger u64 | entry u64 |
//! extra i64 | payload`, all little-endian. Zero `len` marks the end of written data. On open, files are
//! replayed from the checkpoint; a record that fails its checksum in the newest file is a torn
//! tail from a crash (it was never acknowledged) and is cut off; anywhere else it is corruption
//! and opening fails rather than skip acknowledged data.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tracing::{debug, error, info, warn};

use crate::direct::{self, AlignedBuf, BLOCK, DirectFile};
use crate::error::{BookieError, Result};

const RECORD_HEADER: usize = 8;
const BODY_HEADER: usize = 1 + 8 + 8 + 8;
/// Largest record body accepted (an entry is bounded far below this by the bookie).
pub const MAX_RECORD_BYTES: usize = 64 << 20;
const CHECKPOINT_FILE: &str = "checkpoint";
/// Zero-fill granularity when preallocating.
const ZERO_CHUNK: usize = 1 << 20;

/// One journaled change. The journal does not interpret `kind`; ledger storage does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub kind: u8,
    pub ledger: u64,
    pub entry: u64,
    /// A second number whose meaning `kind` gives (the writer's last-add-confirmed for an
    /// entry), so common records need no payload encoding of their own.
    pub extra: i64,
    pub payload: Bytes,
}

impl Record {
    fn encoded_len(&self) -> usize {
        RECORD_HEADER + BODY_HEADER + self.payload.len()
    }
}

/// A place in the journal: file sequence number and byte offset. Ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct JournalPos {
    pub file: u64,
    pub offset: u64,
}

/// The journal's writes and syncs, behind a seam so tests can make the disk fail.
pub trait JournalIo: Send + Sync + std::fmt::Debug {
    fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> std::io::Result<()>;
    fn sync(&self, file: &File) -> std::io::Result<()>;
}

/// The real disk.
#[derive(Debug, Default)]
pub struct DiskIo;

impl JournalIo for DiskIo {
    fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> std::io::Result<()> {
        file.write_all_at(buf, offset)
    }

    fn sync(&self, file: &File) -> std::io::Result<()> {
        file.sync_data()
    }
}

#[derive(Debug, Clone)]
pub struct JournalConfig {
    pub dir: PathBuf,
    /// How records reach the disk ([`DiskIo`] but in fault tests).
    pub io: Arc<dyn JournalIo>,
    /// Start a new file once the current one reaches this size.
    pub max_file_bytes: u64,
    /// Zero-fill this far ahead of the write position.
    pub prealloc_bytes: u64,
    /// Close a group once it holds this many bytes.
    pub max_group_bytes: usize,
    /// Hold a group open up to this long for more records (0: sync as soon as the previous
    /// sync is done, which already batches under load).
    pub max_group_wait: Duration,
    /// Bytes queued but not yet durable before `append` waits (backpressure).
    pub max_pending_bytes: usize,
}

impl JournalConfig {
    pub fn new(dir: impl Into<PathBuf>) -> JournalConfig {
        JournalConfig {
            dir: dir.into(),
            io: Arc::new(DiskIo),
            max_file_bytes: 512 << 20,
            prealloc_bytes: 4 << 20,
            max_group_bytes: 512 << 10,
            max_group_wait: Duration::ZERO,
            max_pending_bytes: 64 << 20,
        }
    }
}

/// Counters for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct JournalStats {
    pub records: AtomicU64,
    pub groups: AtomicU64,
    pub bytes: AtomicU64,
    pub sync_micros: AtomicU64,
}

struct Pending {
    record: Record,
    done: oneshot::Sender<Result<JournalPos>>,
    _budget: OwnedSemaphorePermit,
}

struct Shared {
    dir: PathBuf,
    failed: Mutex<Option<String>>,
    /// End of the durable data: every record before it is synced.
    durable: Mutex<JournalPos>,
    stats: JournalStats,
}

pub struct Journal {
    tx: Option<std_mpsc::Sender<Pending>>,
    budget: Arc<Semaphore>,
    budget_total: usize,
    budget_unit: usize,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.shared.dir)
            .field("durable", &*self.shared.durable.lock())
            .finish()
    }
}

fn file_name(seq: u64) -> String {
    format!("{seq:016x}.journal")
}

fn list_files(dir: &Path) -> Result<Vec<u64>> {
    let mut seqs = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| BookieError::io("list journal", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| BookieError::io("list journal", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(hex) = name.strip_suffix(".journal")
            && let Ok(seq) = u64::from_str_radix(hex, 16)
        {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| BookieError::io("sync journal dir", dir, e))
}

fn read_checkpoint(dir: &Path) -> Result<Option<JournalPos>> {
    let path = dir.join(CHECKPOINT_FILE);
    let raw = match std::fs::read(&path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(BookieError::io("read journal checkpoint", path, e)),
    };
    if raw.len() != 20 || crc32c::crc32c(&raw[..16]).to_le_bytes() != raw[16..20] {
        // Replaying from the oldest file is always safe (replay is idempotent); guessing is not.
        warn!(path = %path.display(), "journal checkpoint is corrupt; replaying every file");
        return Ok(None);
    }
    let mut file = [0u8; 8];
    let mut offset = [0u8; 8];
    file.copy_from_slice(&raw[..8]);
    offset.copy_from_slice(&raw[8..16]);
    Ok(Some(JournalPos {
        file: u64::from_le_bytes(file),
        offset: u64::from_le_bytes(offset),
    }))
}

fn write_checkpoint(dir: &Path, pos: JournalPos) -> Result<()> {
    let mut raw = Vec::with_capacity(20);
    raw.extend_from_slice(&pos.file.to_le_bytes());
    raw.extend_from_slice(&pos.offset.to_le_bytes());
    let crc = crc32c::crc32c(&raw);
    raw.extend_from_slice(&crc.to_le_bytes());
    let tmp = dir.join("checkpoint.tmp");
    let path = dir.join(CHECKPOINT_FILE);
    let write = || -> std::io::Result<()> {
        let f = File::create(&tmp)?;
        f.write_all_at(&raw, 0)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| BookieError::io("write journal checkpoint", &path, e))?;
    sync_dir(dir)
}

enum ScanEnd {
    /// Clean end of data.
    Clean,
    /// A record at this offset does not check out.
    Bad { offset: u64, reason: String },
}

/// Reads records of one file from `from`, handing each to `visit` with the position after it.
fn scan_file(
    path: &Path,
    seq: u64,
    from: u64,
    visit: &mut dyn FnMut(Record, JournalPos) -> Result<()>,
) -> Result<ScanEnd> {
    let file = File::open(path).map_err(|e| BookieError::io("open journal", path, e))?;
    let len = file
        .metadata()
        .map_err(|e| BookieError::io("stat journal", path, e))?
        .len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    reader
        .seek(SeekFrom::Start(from))
        .map_err(|e| BookieError::io("seek journal", path, e))?;
    let mut offset = from;
    loop {
        if offset + RECORD_HEADER as u64 > len {
            return Ok(ScanEnd::Clean);
        }
        let mut header = [0u8; RECORD_HEADER];
        reader
            .read_exact(&mut header)
            .map_err(|e| BookieError::io("read journal", path, e))?;
        let body_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if body_len == 0 && crc == 0 {
            return Ok(ScanEnd::Clean);
        }
        if !(BODY_HEADER..=MAX_RECORD_BYTES).contains(&body_len) {
            return Ok(ScanEnd::Bad {
                offset,
                reason: format!("impossible record length {body_len}"),
            });
        }
        if offset + (RECORD_HEADER + body_len) as u64 > len {
            return Ok(ScanEnd::Bad {
                offset,
                reason: "record runs past the end of the file".into(),
            });
        }
        let mut body = vec![0u8; body_len];
        reader
            .read_exact(&mut body)
            .map_err(|e| BookieError::io("read journal", path, e))?;
        if crc32c::crc32c_append(crc32c::crc32c(&header[..4]), &body) != crc {
            return Ok(ScanEnd::Bad {
                offset,
                reason: "checksum mismatch".into(),
            });
        }
        let mut word = [0u8; 8];
        word.copy_from_slice(&body[1..9]);
        let ledger = u64::from_le_bytes(word);
        word.copy_from_slice(&body[9..17]);
        let entry = u64::from_le_bytes(word);
        word.copy_from_slice(&body[17..25]);
        let extra = i64::from_le_bytes(word);
        let kind = body[0];
        let payload = Bytes::from(body).slice(BODY_HEADER..);
        offset += (RECORD_HEADER + body_len) as u64;
        visit(
            Record {
                kind,
                ledger,
                entry,
                extra,
                payload,
            },
            JournalPos { file: seq, offset },
        )?;
    }
}

impl Journal {
    /// Opens the journal in `config.dir`, replaying every record after the checkpoint into
    /// `replay` (in order) before any new append is accepted.
    pub fn open(
        config: JournalConfig,
        mut replay: impl FnMut(Record, JournalPos) -> Result<()>,
    ) -> Result<Journal> {
        std::fs::create_dir_all(&config.dir)
            .map_err(|e| BookieError::io("create journal dir", &config.dir, e))?;
        let checkpoint = read_checkpoint(&config.dir)?;
        let files = list_files(&config.dir)?;
        let mut replayed = 0u64;
        let last = files.last().copied();
        for &seq in &files {
            let from = match checkpoint {
                Some(c) if seq < c.file => continue,
                Some(c) if seq == c.file => c.offset,
                _ => 0,
            };
            let path = config.dir.join(file_name(seq));
            let scan = scan_file(&path, seq, from, &mut |rec, pos| {
                replayed += 1;
                replay(rec, pos)
            })?;
            match scan {
                ScanEnd::Clean => {}
                ScanEnd::Bad { offset, reason } if Some(seq) == last => {
                    // The last group before a crash was never synced, so never acknowledged.
                    warn!(path = %path.display(), offset, %reason, "journal has a torn tail; cutting it off");
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(|e| BookieError::io("open journal", &path, e))?;
                    f.set_len(offset)
                        .and_then(|_| f.sync_all())
                        .map_err(|e| BookieError::io("truncate torn journal tail", &path, e))?;
                }
                ScanEnd::Bad { offset, reason } => {
                    return Err(BookieError::Corrupt {
                        path,
                        offset,
                        reason: format!("{reason} in a journal file that is not the newest"),
                    });
                }
            }
        }
        if replayed > 0 {
            info!(records = replayed, files = files.len(), "journal replayed");
        }

        // Appends go to a new file: everything replayed stays as it is, and the new file is
        // written block-aligned from its start.
        let seq = last.map_or(0, |l| l + 1);
        let path = config.dir.join(file_name(seq));
        let file =
            DirectFile::create(&path).map_err(|e| BookieError::io("create journal", &path, e))?;
        sync_dir(&config.dir)?;
        debug!(file = %path.display(), direct = file.is_direct(), "journal appends to a new file");
        let end = JournalPos {
            file: seq,
            offset: 0,
        };

        let shared = Arc::new(Shared {
            dir: config.dir.clone(),
            failed: Mutex::new(None),
            durable: Mutex::new(end),
            stats: JournalStats::default(),
        });
        // One permit per KiB queued.
        let budget_unit = 1024;
        let budget_total = (config.max_pending_bytes / budget_unit).max(1);
        let budget = Arc::new(Semaphore::new(budget_total));
        let (tx, rx) = std_mpsc::channel();
        let writer = Writer {
            buf: AlignedBuf::with_capacity(config.max_group_bytes + (64 << 10)),
            zeros: None,
            config,
            shared: Arc::clone(&shared),
            file,
            path,
            seq,
            pos: 0,
            allocated: 0,
        };
        let thread = std::thread::Builder::new()
            .name("bookie-journal".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| BookieError::io("start journal thread", &shared.dir, e))?;
        Ok(Journal {
            tx: Some(tx),
            budget,
            budget_total,
            budget_unit,
            shared,
            thread: Some(thread),
        })
    }

    /// Appends a record; resolves once it is durable, with the position just after its group.
    pub async fn append(&self, record: Record) -> Result<JournalPos> {
        let size = record.encoded_len();
        if size - RECORD_HEADER > MAX_RECORD_BYTES {
            return Err(BookieError::TooLarge {
                size,
                max: MAX_RECORD_BYTES,
            });
        }
        if let Some(why) = self.shared.failed.lock().clone() {
            return Err(BookieError::JournalFailed(why));
        }
        // A record larger than the whole budget waits for all of it rather than forever.
        let permits = (size / self.budget_unit).clamp(1, self.budget_total);
        let permits = u32::try_from(permits).unwrap_or(u32::MAX);
        let budget = Arc::clone(&self.budget)
            .acquire_many_owned(permits)
            .await
            .map_err(|_| BookieError::Closed)?;
        let (done, rx) = oneshot::channel();
        let tx = self.tx.as_ref().ok_or(BookieError::Closed)?;
        tx.send(Pending {
            record,
            done,
            _budget: budget,
        })
        .map_err(|_| BookieError::Closed)?;
        rx.await.map_err(|_| BookieError::Closed)?
    }

    /// Everything before this position is durable.
    pub fn durable_position(&self) -> JournalPos {
        *self.shared.durable.lock()
    }

    /// Records that ledger storage has made everything before `pos` durable on its own, so
    /// replay may start there and older files can go.
    pub fn checkpoint(&self, pos: JournalPos) -> Result<()> {
        write_checkpoint(&self.shared.dir, pos)?;
        for seq in list_files(&self.shared.dir)? {
            if seq >= pos.file {
                break;
            }
            let path = self.shared.dir.join(file_name(seq));
            std::fs::remove_file(&path)
                .map_err(|e| BookieError::io("remove old journal", &path, e))?;
            debug!(file = %path.display(), "removed journal file behind the checkpoint");
        }
        Ok(())
    }

    pub fn stats(&self) -> &JournalStats {
        &self.shared.stats
    }

    /// Why the journal stopped accepting appends, if it did.
    pub fn failure(&self) -> Option<String> {
        self.shared.failed.lock().clone()
    }

    /// Stops accepting appends, lets the writer finish what is queued, and waits for it.
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Writer {
    config: JournalConfig,
    shared: Arc<Shared>,
    file: DirectFile,
    path: PathBuf,
    seq: u64,
    /// Where the next record goes.
    pos: u64,
    /// The file is zero-filled up to here (a multiple of `BLOCK`).
    allocated: u64,
    /// The group being built, from the start of the block holding `pos`: between groups it
    /// holds just the written part of that block.
    buf: AlignedBuf,
    /// A zeroed chunk for preallocation, made on first use.
    zeros: Option<AlignedBuf>,
}

impl Writer {
    fn run(mut self, rx: std_mpsc::Receiver<Pending>) {
        let mut group: Vec<Pending> = Vec::new();
        while let Ok(first) = rx.recv() {
            self.push(first, &mut group);
            let deadline = Instant::now() + self.config.max_group_wait;
            while self.buf.len() < self.config.max_group_bytes {
                match rx.try_recv() {
                    Ok(p) => self.push(p, &mut group),
                    Err(std_mpsc::TryRecvError::Disconnected) => break,
                    Err(std_mpsc::TryRecvError::Empty) => {
                        let now = Instant::now();
                        if now >= deadline {
                            break;
                        }
                        match rx.recv_timeout(deadline - now) {
                            Ok(p) => self.push(p, &mut group),
                            Err(_) => break,
                        }
                    }
                }
            }
            match self.write_group(group.len() as u64) {
                Ok(end) => {
                    for p in group.drain(..) {
                        let _ = p.done.send(Ok(end));
                    }
                }
                Err(e) => {
                    error!(error = %e, "journal write failed; refusing further appends");
                    let why = e.to_string();
                    *self.shared.failed.lock() = Some(why.clone());
                    for p in group.drain(..).chain(rx.try_iter()) {
                        let _ = p.done.send(Err(BookieError::JournalFailed(why.clone())));
                    }
                    // Keep draining so no caller waits forever.
                    for p in rx.iter() {
                        let _ = p.done.send(Err(BookieError::JournalFailed(why.clone())));
                    }
                    return;
                }
            }
        }
    }

    fn push(&mut self, p: Pending, group: &mut Vec<Pending>) {
        let r = &p.record;
        let start = self.buf.len();
        let body_len = (BODY_HEADER + r.payload.len()) as u32;
        let mut header = [0u8; RECORD_HEADER + BODY_HEADER];
        header[..4].copy_from_slice(&body_len.to_le_bytes());
        header[8] = r.kind;
        header[9..17].copy_from_slice(&r.ledger.to_le_bytes());
        header[17..25].copy_from_slice(&r.entry.to_le_bytes());
        header[25..33].copy_from_slice(&r.extra.to_le_bytes());
        let crc = crc32c::crc32c_append(
            crc32c::crc32c_append(crc32c::crc32c(&header[..4]), &header[RECORD_HEADER..]),
            &r.payload,
        );
        header[4..8].copy_from_slice(&crc.to_le_bytes());
        self.buf.extend_from_slice(&header);
        self.buf.extend_from_slice(&r.payload);
        debug_assert_eq!(self.buf.len() - start, r.encoded_len());
        group.push(p);
    }

    fn write_group(&mut self, records: u64) -> Result<JournalPos> {
        let base = direct::align_down(self.pos);
        let carried = (self.pos - base) as usize;
        let filled = self.buf.len();
        let len = (filled - carried) as u64;
        self.buf.pad_to_block();
        let end_of_write = base + self.buf.len() as u64;
        if end_of_write > self.allocated {
            self.preallocate(end_of_write)?;
        }
        let buf = std::mem::take(&mut self.buf);
        let written = self.write_at(buf.as_slice(), base, "write journal");
        self.buf = buf;
        written?;
        let t = Instant::now();
        self.config
            .io
            .sync(self.file.file())
            .map_err(|e| BookieError::io("sync journal", &self.path, e))?;
        let stats = &self.shared.stats;
        stats
            .sync_micros
            .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
        stats.groups.fetch_add(1, Ordering::Relaxed);
        stats.records.fetch_add(records, Ordering::Relaxed);
        stats.bytes.fetch_add(len, Ordering::Relaxed);
        self.pos += len;
        // Keep the written part of the last block: the next group starts by rewriting it.
        self.buf.truncate(filled);
        self.buf.drain_front(filled - filled % BLOCK);
        let end = JournalPos {
            file: self.seq,
            offset: self.pos,
        };
        *self.shared.durable.lock() = end;
        if self.pos >= self.config.max_file_bytes {
            self.rotate()?;
        }
        Ok(end)
    }

    fn write_at(&mut self, data: &[u8], offset: u64, what: &'static str) -> Result<()> {
        let io = &self.config.io;
        self.file
            .write_with(data, offset, |f, b, o| io.write_at(f, b, o))
            .map_err(|e| BookieError::io(what, &self.path, e))
    }

    /// Zero-fills at least up to `need`, in `prealloc_bytes` steps.
    fn preallocate(&mut self, need: u64) -> Result<()> {
        let step = self.config.prealloc_bytes.max(BLOCK as u64);
        let target = direct::align_up(need.max(self.allocated + step));
        let zeros = self.zeros.take().unwrap_or_else(|| {
            let mut z = AlignedBuf::with_capacity(ZERO_CHUNK);
            z.extend_from_slice(&[0; ZERO_CHUNK]);
            z
        });
        let mut at = self.allocated;
        let mut written = Ok(());
        while at < target && written.is_ok() {
            let n = (target - at).min(ZERO_CHUNK as u64) as usize;
            written = self.write_at(&zeros.as_slice()[..n], at, "preallocate journal");
            at += n as u64;
        }
        self.zeros = Some(zeros);
        written?;
        // Made durable now, so the blocks exist before records land on them: a record's
        // fdatasync then flushes data only, never a filesystem-journal commit that would
        // also wait for other files' (entry logs') dirty data.
        self.config
            .io
            .sync(self.file.file())
            .map_err(|e| BookieError::io("preallocate journal", &self.path, e))?;
        self.allocated = target;
        Ok(())
    }

    fn rotate(&mut self) -> Result<()> {
        // The allocated tail beyond `pos` stays zero, which replay reads as the end.
        self.seq += 1;
        self.path = self.shared.dir.join(file_name(self.seq));
        self.file = DirectFile::create(&self.path)
            .map_err(|e| BookieError::io("create journal", &self.path, e))?;
        sync_dir(&self.shared.dir)?;
        self.pos = 0;
        self.allocated = 0;
        self.buf.clear();
        debug!(file = %self.path.display(), "journal rotated");
        Ok(())
    }
}
