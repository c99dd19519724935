//! The bookie: journal + ledger storage behind the wire protocol.
//!
//! An add is journaled and answered once its group is synced; the journal hands every synced
//! group to ledger storage before answering, so an acknowledged entry is always findable. A
//! flush commits storage's index and checkpoints the journal where the index is complete.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::error::{BookieError, Result};
use crate::journal::{self, Journal, JournalConfig, JournalFiles, Record, kind};
use crate::protocol::{self, Op, Request, Response, Status};
use crate::storage::{LedgerStorage, StorageConfig};

#[derive(Debug, Clone)]
pub struct BookieConfig {
    pub data_dir: PathBuf,
    pub journal: JournalConfig,
    pub storage: StorageConfig,
    /// Largest entry accepted.
    pub max_entry_bytes: usize,
    /// How often the index is flushed and the journal checkpointed.
    pub flush_interval: Duration,
    /// Requests one connection may have in flight before the bookie stops reading from it.
    pub max_pending_per_connection: usize,
    /// Go read-only when the data disk has less than this many bytes free.
    pub min_free_disk_bytes: u64,
    /// How often deleted ledgers' space is reclaimed (and, with a metadata store, ledgers
    /// deleted while this bookie was away are found and dropped).
    pub gc_interval: Duration,
    /// The cluster's shared secret: when set, a connection must present it first
    /// (`Op::Auth`) or is refused and closed.
    pub auth_secret: Option<Bytes>,
}

impl BookieConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> BookieConfig {
        let data_dir = data_dir.into();
        BookieConfig {
            journal: JournalConfig::new(data_dir.join("journal")),
            storage: StorageConfig::new(data_dir.join("ledgers")),
            data_dir,
            max_entry_bytes: 5 * 1024 * 1024 + 64 * 1024,
            flush_interval: Duration::from_secs(1),
            max_pending_per_connection: 10_000,
            min_free_disk_bytes: 1 << 30,
            gc_interval: Duration::from_secs(300),
            auth_secret: None,
        }
    }
}

/// How an add went: done, or refused with a status and why.
pub type AddOutcome = Result<(), (Status, String)>;

/// Counters for /metrics and tests.
#[derive(Debug, Default)]
pub struct BookieStats {
    pub adds: AtomicU64,
    pub add_bytes: AtomicU64,
    pub reads: AtomicU64,
    pub flushes: AtomicU64,
    pub bad_frames: AtomicU64,
    /// Connections refused for not presenting the cluster's secret.
    pub unauthenticated: AtomicU64,
    pub connections: AtomicU64,
    /// Requests being handled, over all connections.
    pub pending: AtomicU64,
    /// Times a connection had its limit of requests in flight and was not read until one
    /// finished.
    pub throttled: AtomicU64,
    /// Adds refused for exceeding the entry size limit.
    pub too_large: AtomicU64,
    /// Time spent flushing the write cache (entry log, index, journal checkpoint).
    pub flush_micros: AtomicU64,
    /// From an add's arrival to its answer (durable or refused).
    pub add_latency: crate::histogram::Histogram,
}

pub struct Bookie {
    config: BookieConfig,
    /// Where ledger records live; lets GC find ledgers deleted while this bookie was down.
    meta: Option<magnetar_meta::MetaStore>,
    journal: Journal,
    storage: Arc<LedgerStorage>,
    read_only: AtomicBool,
    flush_now: Notify,
    flushed: watch::Sender<u64>,
    /// Shared with the completions of adds in flight, which run on the journal's sync
    /// thread and must not hold the bookie itself (its last owner would join that thread).
    stats: Arc<BookieStats>,
    /// Serialises first adds of a ledger: see `claim_writer_key`.
    key_lock: parking_lot::Mutex<()>,
}

impl BookieStats {
    fn count_add(&self, size: usize) {
        self.adds.fetch_add(1, Ordering::Relaxed);
        self.add_bytes.fetch_add(size as u64, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Bookie {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bookie")
            .field("data_dir", &self.config.data_dir)
            .finish()
    }
}

impl Bookie {
    /// Opens storage, replays the journal into it, and makes the result durable before
    /// serving.
    pub fn open(
        config: BookieConfig,
        meta: Option<magnetar_meta::MetaStore>,
    ) -> Result<Arc<Bookie>> {
        let files = JournalFiles::new(&config.journal.dir);
        let storage = Arc::new(LedgerStorage::open(
            config.storage.clone(),
            Arc::clone(&files),
        )?);
        let sink = {
            let storage = Arc::clone(&storage);
            Box::new(move |group: &[(Record, _)]| storage.apply(group))
        };
        let journal = Journal::open(
            config.journal.clone(),
            files,
            |r, loc| {
                storage.replay(&r, loc);
                Ok(())
            },
            sink,
        )?;
        // Everything replayed is indexed now: replay can start in the new file.
        storage.flush()?;
        journal.checkpoint(journal.durable_position())?;
        let (flushed, _) = watch::channel(0);
        Ok(Arc::new(Bookie {
            config,
            meta,
            journal,
            storage,
            read_only: AtomicBool::new(false),
            flush_now: Notify::new(),
            flushed,
            stats: Arc::default(),
            key_lock: parking_lot::Mutex::new(()),
        }))
    }

    pub fn stats(&self) -> &BookieStats {
        &self.stats
    }

    pub fn config(&self) -> &BookieConfig {
        &self.config
    }

    pub fn storage(&self) -> &LedgerStorage {
        &self.storage
    }

    pub fn journal_stats(&self) -> &crate::journal::JournalStats {
        self.journal.stats()
    }

    /// Bytes of journal files holding records, and of spare files kept for reuse.
    pub fn journal_disk_usage(&self) -> (u64, u64) {
        self.journal.disk_usage()
    }

    /// Why the journal stopped accepting writes, if it did.
    pub fn journal_failure(&self) -> Option<String> {
        self.journal.failure()
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only.load(Ordering::Relaxed)
    }

    /// Flushes the write cache and checkpoints the journal.
    pub async fn flush(self: &Arc<Self>) -> Result<()> {
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            // Every group before `durable` went through the sink before it was read, so this
            // flush takes them all: the index is complete up to it, even if nothing came.
            let durable = me.journal.durable_position();
            let upto = me.storage.flush()?;
            let indexed = started.elapsed();
            me.journal
                .checkpoint(upto.map_or(durable, |u| u.max(durable)))?;
            if started.elapsed() >= Duration::from_millis(200) {
                warn!(
                    index_ms = indexed.as_millis() as u64,
                    checkpoint_ms = (started.elapsed() - indexed).as_millis() as u64,
                    "slow flush"
                );
            }
            me.stats.flushes.fetch_add(1, Ordering::Relaxed);
            me.stats
                .flush_micros
                .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            Ok::<_, BookieError>(())
        })
        .await
        .map_err(|_| BookieError::Closed)??;
        self.flushed.send_modify(|g| *g += 1);
        Ok(())
    }

    /// Runs the periodic flush, and an early one whenever the write cache fills, until the
    /// bookie is dropped. Also watches free disk space.
    pub async fn run_flusher(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.flush_interval);
        let mut last_gc = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.flush_now.notified() => {}
            }
            if let Err(e) = self.flush().await {
                error!(error = %e, "flush failed");
            }
            self.check_disk();
            if last_gc.elapsed() >= self.config.gc_interval {
                last_gc = tokio::time::Instant::now();
                if let Err(e) = self.gc().await {
                    warn!(error = %e, "garbage collection failed");
                }
            }
        }
    }

    /// Drops ledgers whose record is gone from meta (deleted while this bookie was away),
    /// then reclaims the space of every deleted ledger: journal files with nothing live are
    /// retired, and mostly dead ones first have their live entries copied to the journal's
    /// end. Returns bytes that left the disk (files kept as spares count once deleted).
    pub async fn gc(self: &Arc<Self>) -> Result<u64> {
        if let Some(meta) = &self.meta {
            for ledger in self.storage.ledgers() {
                // A ledger's record is written before its first entry, so a definite absence
                // means it was deleted; an error means we do not know, and keep it.
                if let Ok(None) = meta.get(&format!("/ledgers/{ledger}")).await {
                    info!(
                        ledger_id = ledger,
                        "ledger no longer exists in meta; dropping it"
                    );
                    if let Err((_, why)) = self.delete(ledger).await {
                        warn!(ledger_id = ledger, error = %why, "dropping orphaned ledger failed");
                    }
                }
            }
        }
        let plan = self
            .storage
            .gc_plan(self.journal.checkpoint_position(), &self.journal.files()?);
        for &file in &plan.compact {
            self.move_live_entries(file).await?;
        }
        if !plan.compact.is_empty() {
            // The index must point at the copies, durably, before the originals go.
            self.flush().await?;
        }
        let mut freed = 0;
        for file in plan.dead.into_iter().chain(plan.compact) {
            let me = Arc::clone(self);
            freed += tokio::task::spawn_blocking(move || {
                let freed = me.journal.retire(file)?;
                me.storage.forget_file(file)?;
                Ok::<_, BookieError>(freed)
            })
            .await
            .map_err(|_| BookieError::Closed)??;
            info!(journal_file = file, "journal file reclaimed");
        }
        Ok(freed)
    }

    /// Appends a copy of every live entry of journal `file` to the journal (a `MOVED`
    /// record), pipelined; the sink repoints the index at each copy.
    async fn move_live_entries(self: &Arc<Self>, file: u64) -> Result<()> {
        let me = Arc::clone(self);
        let entries = tokio::task::spawn_blocking(move || me.storage.live_entries(file))
            .await
            .map_err(|_| BookieError::Closed)??;
        let total = entries.len();
        for chunk in entries.chunks(256) {
            let me = Arc::clone(self);
            let chunk = chunk.to_vec();
            let read = tokio::task::spawn_blocking(move || {
                chunk
                    .into_iter()
                    .filter_map(|(key, loc)| match me.storage.read_for_move(key, loc) {
                        Ok(data) => Some((key, data)),
                        Err(e) => {
                            // Left behind: the other replicas hold it.
                            warn!(ledger_id = key.0, entry = key.1, error = %e, "entry unreadable during compaction");
                            None
                        }
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(|_| BookieError::Closed)?;
            let appends = read.into_iter().map(|((ledger, entry), payload)| {
                self.journal.append(Record {
                    kind: kind::MOVED,
                    ledger,
                    entry,
                    extra: -1,
                    payload,
                })
            });
            for r in futures::future::join_all(appends).await {
                r?;
            }
        }
        debug!(
            journal_file = file,
            entries = total,
            "live entries copied out"
        );
        Ok(())
    }

    fn check_disk(&self) {
        let Some(free) = free_bytes(&self.config.data_dir) else {
            return;
        };
        let low = free < self.config.min_free_disk_bytes;
        if self.read_only.swap(low, Ordering::Relaxed) != low {
            if low {
                warn!(free, "disk nearly full: bookie is read-only");
            } else {
                info!(free, "disk has room again: bookie accepts adds");
            }
        }
    }

    async fn wait_for_flush(&self) {
        let mut rx = self.flushed.subscribe();
        let seen = *rx.borrow_and_update();
        self.flush_now.notify_one();
        let _ = rx.wait_for(|g| *g > seen).await;
    }

    /// Handles one request and says how it went.
    pub async fn handle(self: &Arc<Self>, req: Request) -> Response {
        let id = req.id;
        let result = match req.op {
            None => Err((
                Status::BadRequest,
                "request without an operation".to_string(),
            )),
            Some(Op::Add(add)) => {
                let arrived = std::time::Instant::now();
                let r = self.add(add).await.map(|()| Response::ok(id));
                self.stats.add_latency.record(arrived.elapsed());
                r
            }
            Some(Op::Read(r)) => self.read(r.ledger_id, r.entry_id, 1, u64::MAX).await,
            Some(Op::ReadRange(r)) => {
                self.read(
                    r.ledger_id,
                    r.first_entry,
                    r.max_entries.clamp(1, 10_000),
                    r.max_bytes.max(1),
                )
                .await
            }
            Some(Op::ReadLac(r)) => self.lac(r.ledger_id, false).await,
            Some(Op::Fence(f)) => self.lac(f.ledger_id, true).await,
            Some(Op::DeleteLedger(d)) => self.delete(d.ledger_id).await.map(|()| Response::ok(id)),
            // a connection that needed to has already proved it (see `connection`)
            Some(Op::Health(_)) | Some(Op::Auth(_)) => Ok(Response::ok(id)),
        };
        match result {
            Ok(mut resp) => {
                resp.id = id;
                resp
            }
            Err((status, message)) => Response::error(id, status, message),
        }
    }

    /// The checks every add passes first; says whether the ledger has no writer key yet.
    fn check_add(&self, add: &protocol::AddEntry) -> Result<bool, (Status, String)> {
        let ledger = add.ledger_id;
        if add.data.len() > self.config.max_entry_bytes {
            self.stats.too_large.fetch_add(1, Ordering::Relaxed);
            return Err((
                Status::TooLarge,
                format!(
                    "entry of {} bytes exceeds {}",
                    add.data.len(),
                    self.config.max_entry_bytes
                ),
            ));
        }
        if self.is_read_only() {
            return Err((
                Status::ReadOnly,
                "bookie is read-only (disk nearly full)".into(),
            ));
        }
        let state = self.storage.ledger_state(ledger);
        if let Some(state) = &state {
            if state.fenced && !add.recovery {
                return Err((Status::Fenced, format!("ledger {ledger} is fenced")));
            }
            if !state.writer_key.is_empty() && state.writer_key != add.writer_key {
                return Err((
                    Status::WrongWriter,
                    format!("ledger {ledger} belongs to another writer"),
                ));
            }
        }
        Ok(state.is_none_or(|s| s.writer_key.is_empty()))
    }

    /// Flush at half the cache so adds keep landing in the other half while it runs,
    /// instead of stalling on a full cache.
    fn note_cache_use(&self) {
        if self.storage.write_cache_bytes() > self.config.storage.write_cache_bytes / 2 {
            self.flush_now.notify_one();
        }
    }

    fn entry_record(&self, add: protocol::AddEntry) -> Record {
        self.storage.update_lac(add.ledger_id, add.lac);
        Record {
            kind: kind::ENTRY,
            ledger: add.ledger_id,
            entry: add.entry_id,
            extra: add.lac,
            payload: add.data,
        }
    }

    /// An add without a task of its own, for the common case where nothing has to wait:
    /// `reply` runs on the journal's sync thread once the entry is durable (or at once, if
    /// the add is refused). Gives the add back when it must wait first (its ledger's writer
    /// key to be journaled, or a flush to make room in the write cache); the caller then
    /// runs [`handle`](Self::handle)'s path in a task.
    pub fn add_now<R>(
        self: &Arc<Self>,
        add: protocol::AddEntry,
        reply: R,
    ) -> Option<(protocol::AddEntry, impl FnOnce(AddOutcome) + Send + 'static)>
    where
        R: FnOnce(AddOutcome) + Send + 'static,
    {
        let (stats, arrived) = (Arc::clone(&self.stats), std::time::Instant::now());
        let reply = move |r: Result<(), (Status, String)>| {
            stats.add_latency.record(arrived.elapsed());
            reply(r);
        };
        let new_key = match self.check_add(&add) {
            Ok(k) => k,
            Err(e) => {
                reply(Err(e));
                return None;
            }
        };
        if new_key || self.storage.write_cache_bytes() >= self.config.storage.write_cache_bytes {
            return Some((add, reply));
        }
        self.note_cache_use();
        let size = add.data.len();
        let stats = Arc::clone(&self.stats);
        let done: journal::Done = Box::new(move |r| {
            if r.is_ok() {
                stats.count_add(size);
            }
            reply(
                r.map(|_| ())
                    .map_err(|e| (Status::Internal, format!("journal: {e}"))),
            );
        });
        if let Some((record, done)) = self.journal.try_append_then(self.entry_record(add), done) {
            // The journal's queue is full: wait for room in a task.
            let me = Arc::clone(self);
            tokio::spawn(async move { done(me.journal.append(record).await) });
        }
        None
    }

    /// Binds a ledger without a writer to `key`. Its record is queued before the key is set
    /// in memory, both under one lock: an add that sees the key (and may then go to the
    /// journal without waiting) is journaled after it, so replay never meets an entry of a
    /// ledger it does not know yet (it would drop it).
    async fn claim_writer_key(&self, ledger: u64, key: &Bytes) -> Result<(), (Status, String)> {
        let durable = {
            let _serial = self.key_lock.lock();
            match self.storage.ledger_state(ledger) {
                Some(s) if !s.writer_key.is_empty() => {
                    if s.writer_key != key {
                        return Err((
                            Status::WrongWriter,
                            format!("ledger {ledger} belongs to another writer"),
                        ));
                    }
                    // Claimed meanwhile by the same writer; its record is already queued.
                    None
                }
                _ => {
                    let durable = self.journal.enqueue(Record {
                        kind: kind::WRITER_KEY,
                        ledger,
                        entry: 0,
                        extra: -1,
                        payload: key.clone(),
                    });
                    self.storage.set_writer_key(ledger, key);
                    Some(durable)
                }
            }
        };
        match durable {
            Some(d) => d
                .await
                .map(|_| ())
                .map_err(|e| (Status::Internal, format!("journal: {e}"))),
            None => Ok(()),
        }
    }

    pub(crate) async fn add(
        self: &Arc<Self>,
        add: protocol::AddEntry,
    ) -> Result<(), (Status, String)> {
        if self.check_add(&add)? {
            self.claim_writer_key(add.ledger_id, &add.writer_key)
                .await?;
        }
        let size = add.data.len();
        let limit = self.config.storage.write_cache_bytes;
        while self.storage.write_cache_bytes() >= limit {
            self.wait_for_flush().await;
        }
        self.note_cache_use();
        self.journal
            .append(self.entry_record(add))
            .await
            .map_err(|e| (Status::Internal, format!("journal: {e}")))?;
        self.stats.count_add(size);
        Ok(())
    }

    async fn journal_append(
        &self,
        kind: u8,
        ledger: u64,
        entry: u64,
        extra: i64,
        payload: Bytes,
    ) -> Result<(), (Status, String)> {
        self.journal
            .append(Record {
                kind,
                ledger,
                entry,
                extra,
                payload,
            })
            .await
            .map(|_| ())
            .map_err(|e| (Status::Internal, format!("journal: {e}")))
    }

    async fn read(
        self: &Arc<Self>,
        ledger: u64,
        first: u64,
        max_entries: u32,
        max_bytes: u64,
    ) -> Result<Response, (Status, String)> {
        let me = Arc::clone(self);
        let entries = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let mut bytes = 0u64;
            for entry_id in first..first.saturating_add(u64::from(max_entries)) {
                match me.storage.get_entry(ledger, entry_id)? {
                    Some(data) => {
                        bytes += data.len() as u64;
                        out.push(protocol::Entry { entry_id, data });
                        if bytes >= max_bytes {
                            break;
                        }
                    }
                    None => break,
                }
            }
            Ok::<_, BookieError>(out)
        })
        .await
        .map_err(|_| (Status::Internal, "read task failed".to_string()))?
        .map_err(|e| match e {
            BookieError::Corrupt { .. } => (Status::Corrupt, e.to_string()),
            other => (Status::Internal, other.to_string()),
        })?;
        self.stats
            .reads
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        if entries.is_empty() {
            let status = if self.storage.ledger_state(ledger).is_some() {
                Status::NoSuchEntry
            } else {
                Status::NoSuchLedger
            };
            return Err((status, format!("no entry {ledger}:{first} here")));
        }
        Ok(Response {
            entries,
            ..Response::ok(0)
        })
    }

    async fn lac(self: &Arc<Self>, ledger: u64, fence: bool) -> Result<Response, (Status, String)> {
        if fence && !self.storage.ledger_state(ledger).is_some_and(|s| s.fenced) {
            // Fence in memory first so no add slips in, then make it durable.
            self.storage.set_fenced(ledger);
            self.journal_append(kind::FENCE, ledger, 0, -1, Bytes::new())
                .await?;
        }
        let state = self.storage.ledger_state(ledger).unwrap_or_default();
        let last = self
            .storage
            .last_entry(ledger)
            .map_err(|e| (Status::Internal, e.to_string()))?;
        Ok(Response {
            lac: state.lac,
            last_entry: last.map_or(-1, |e| e as i64),
            ..Response::ok(0)
        })
    }

    /// Storage forgets the ledger when the journal hands it the durable delete record.
    async fn delete(self: &Arc<Self>, ledger: u64) -> Result<(), (Status, String)> {
        self.journal_append(kind::DELETE, ledger, 0, -1, Bytes::new())
            .await
    }
}

fn free_bytes(path: &std::path::Path) -> Option<u64> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Accepts connections until `shutdown` resolves.
pub async fn serve(
    bookie: Arc<Bookie>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let bookie = Arc::clone(&bookie);
        tokio::spawn(
            async move {
                bookie.stats.connections.fetch_add(1, Ordering::Relaxed);
                if let Err(reason) = connection(Arc::clone(&bookie), stream).await {
                    bookie.stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                    warn!(%reason, "closing connection");
                }
                bookie.stats.connections.fetch_sub(1, Ordering::Relaxed);
            }
            .instrument(info_span!("conn", %peer)),
        );
    }
}

async fn connection(bookie: Arc<Bookie>, stream: TcpStream) -> Result<(), String> {
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Response>();
    let writer = tokio::spawn(async move {
        let mut buf = BytesMut::with_capacity(64 << 10);
        while let Some(resp) = rx.recv().await {
            protocol::encode_frame(&resp, &mut buf);
            // Let the other answers of this moment arrive: one write for all of them.
            tokio::task::yield_now().await;
            // Coalesce whatever else is ready into one write.
            while buf.len() < (1 << 20) {
                match rx.try_recv() {
                    Ok(r) => protocol::encode_frame(&r, &mut buf),
                    Err(_) => break,
                }
            }
            if wr.write_all(&buf).await.is_err() {
                return;
            }
            buf.clear();
        }
    });
    let pending = Arc::new(Semaphore::new(bookie.config.max_pending_per_connection));
    let mut buf = BytesMut::with_capacity(64 << 10);
    let mut authenticated = bookie.config.auth_secret.is_none();
    let result = loop {
        match protocol::decode_frame::<Request>(&mut buf) {
            Ok(Some(req)) if !authenticated => {
                let (id, secret) = (req.id, bookie.config.auth_secret.as_ref());
                match (req.op, secret) {
                    (Some(Op::Auth(a)), Some(s)) if same_secret(&a.secret, s) => {
                        authenticated = true;
                        let _ = tx.send(Response::ok(id));
                    }
                    _ => {
                        bookie.stats.unauthenticated.fetch_add(1, Ordering::Relaxed);
                        let _ = tx.send(Response::error(
                            id,
                            Status::Unauthenticated,
                            "this bookie needs the cluster's secret first (--bookie-auth-secret)",
                        ));
                        warn!("refused a client without the cluster's secret");
                        break Ok(());
                    }
                }
            }
            Ok(Some(req)) => {
                let permit = match Arc::clone(&pending).try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => {
                        bookie.stats.throttled.fetch_add(1, Ordering::Relaxed);
                        let Ok(p) = Arc::clone(&pending).acquire_owned().await else {
                            break Ok(());
                        };
                        p
                    }
                };
                bookie.stats.pending.fetch_add(1, Ordering::Relaxed);
                let req = match req.op {
                    Some(Op::Add(add)) => {
                        let (id, tx, stats) = (req.id, tx.clone(), Arc::clone(&bookie.stats));
                        let reply = move |r: Result<(), (Status, String)>| {
                            let _ = tx.send(match r {
                                Ok(()) => Response::ok(id),
                                Err((status, message)) => Response::error(id, status, message),
                            });
                            stats.pending.fetch_sub(1, Ordering::Relaxed);
                            drop(permit);
                        };
                        if let Some((add, reply)) = bookie.add_now(add, reply) {
                            let bookie = Arc::clone(&bookie);
                            tokio::spawn(async move { reply(bookie.add(add).await) });
                        }
                        continue;
                    }
                    op => Request { id: req.id, op },
                };
                let bookie = Arc::clone(&bookie);
                let tx = tx.clone();
                tokio::spawn(async move {
                    let resp = bookie.handle(req).await;
                    let _ = tx.send(resp);
                    bookie.stats.pending.fetch_sub(1, Ordering::Relaxed);
                    drop(permit);
                });
                continue;
            }
            Ok(None) => {}
            Err(e) => break Err(e.to_string()),
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) => break Ok(()),
            Ok(_) => {}
            Err(e) => {
                debug!(error = %e, "connection read failed");
                break Ok(());
            }
        }
    };
    drop(tx);
    // Let in-flight answers go out before closing.
    let _ = writer.await;
    result
}

/// Compares secrets in time that depends on their lengths only.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

/// Binds the bookie port.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| BookieError::io("bind bookie port", addr.to_string(), e))
}

#[cfg(test)]
mod tests {
    #[test]
    fn free_space_is_read_from_the_filesystem() {
        let free = super::free_bytes(std::path::Path::new("/")).expect("statvfs of /");
        assert!(free > 0);
        assert!(super::free_bytes(std::path::Path::new("/no/such/dir")).is_none());
    }
}
