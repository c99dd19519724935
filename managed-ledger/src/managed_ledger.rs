//! The managed ledger: one topic's log as an ordered list of ledgers.
//!
//! Only the owning broker writes it. Its record lists the ledgers and changes only by
//! compare-and-set, so a broker that lost the topic to another cannot change it. On open, the
//! ledgers a previous owner left open are recovered (fenced and sealed) before anything is
//! served; appends go through one appender task that pipelines them into the current ledger
//! and rolls over by entry count, size and age.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use magnetar_bookie::placement::Affinity;
use magnetar_meta::{Expected, MetaError, MetaStore, MetadataStoreExt};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::cache::{CacheBudget, DEFAULT_CACHE_BYTES, EntryCache};
use crate::clock::{self, SharedClock};
use crate::format::{EntryFormat, OpaqueEntries};
use crate::position::Position;
use crate::record::{LedgerInfo, MlRecord, ProducerSnapshot, record_key};
use crate::storage::{
    AppendFuture, Ledger, LedgerStorage, Placement, READ_CONCURRENCY, StorageError,
};
use crate::tier::Tier;

#[derive(Debug, Clone, thiserror::Error)]
pub enum MlError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("managed ledger {0} was fenced: another broker owns it now")]
    Fenced(String),
    #[error("managed ledger {0} is closed")]
    Closed(String),
    #[error("position {0} is not in the log")]
    NoSuchPosition(Position),
    #[error("topic {0} was terminated: it takes no more messages")]
    Terminated(String),
    #[error("{0}")]
    Unsupported(String),
}

/// How consumed ledgers are kept: each limit None = forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub time: Option<Duration>,
    pub bytes: Option<u64>,
}

impl Retention {
    /// From Pulsar's numbers: negative = forever, 0 = not at all.
    pub fn from_limits(minutes: i64, mb: i64) -> Retention {
        Retention {
            time: u64::try_from(minutes)
                .ok()
                .map(|m| Duration::from_secs(m * 60)),
            bytes: u64::try_from(mb).ok().map(|m| m << 20),
        }
    }
}

/// How ledgers are created and rolled over, and what the log is told from outside.
#[derive(Debug, Clone)]
pub struct MlConfig {
    /// Replication and placement of new ledgers.
    pub placement: Placement,
    pub max_entries_per_ledger: u64,
    pub max_ledger_bytes: u64,
    pub max_ledger_age: Duration,
    /// Bytes of recent entries kept in memory for tailing readers: what all the logs sharing
    /// `cache_budget` hold together; 0 turns the cache off (a log whose storage is memory).
    pub cache_bytes: usize,
    /// Shared by every log opened with clones of this config.
    pub cache_budget: Arc<CacheBudget>,
    /// Track each producer's highest persisted sequence id (deduplication), rebuilt on open
    /// from the snapshot in the log's record plus the entries after it.
    pub track_producers: bool,
    /// Entries between snapshots of the producer sequence ids.
    pub producer_snapshot_every: u64,
    /// What entries hold (messages, publish time, producer sequence).
    pub format: Arc<dyn EntryFormat>,
    pub clock: SharedClock,
    /// Where offloaded ledgers are read from (None: no tier).
    pub tier: Option<Arc<dyn Tier>>,
}

impl Default for MlConfig {
    fn default() -> Self {
        MlConfig {
            placement: Placement::default(),
            max_entries_per_ledger: 50_000,
            max_ledger_bytes: 2 << 30,
            max_ledger_age: Duration::from_secs(4 * 3600),
            cache_bytes: DEFAULT_CACHE_BYTES,
            cache_budget: Arc::default(),
            track_producers: false,
            producer_snapshot_every: 1000,
            format: Arc::new(OpaqueEntries),
            clock: clock::system(),
            tier: None,
        }
    }
}

/// Highest persisted sequence id per producer, in log order.
struct ProducerSeqs {
    sequences: HashMap<Arc<str>, i64>,
    /// Last entry reflected.
    at: Position,
    since_snapshot: u64,
}

impl ProducerSeqs {
    fn note(&mut self, producer: &Arc<str>, seq: i64, at: Position) {
        match self.sequences.get_mut(producer) {
            Some(s) => *s = (*s).max(seq),
            None => {
                self.sequences.insert(Arc::clone(producer), seq);
            }
        }
        self.at = self.at.max(at);
        self.since_snapshot += 1;
    }
}

struct MlState {
    ledgers: BTreeMap<u64, LedgerInfo>,
    version: u64,
    /// The ledger appends go to.
    current: Option<Arc<dyn Ledger>>,
    /// Closed ledgers opened for reading.
    readers: HashMap<u64, Arc<dyn Ledger>>,
    /// Per ledger, cumulative message counts by entry (where known).
    counts: HashMap<u64, Vec<u64>>,
    closed: bool,
    fenced: bool,
    /// The last entry of a terminated topic.
    terminated: Option<Position>,
    /// Present when tracking producers (deduplication).
    producers: Option<ProducerSeqs>,
    /// Where the next ledger goes.
    affinity: Option<Affinity>,
    /// The current ledger is on bookies `affinity` no longer allows: roll at the next append.
    roll_soon: bool,
}

impl MlState {
    fn record(&self) -> MlRecord {
        MlRecord {
            ledgers: self.ledgers.values().cloned().collect(),
            terminated: self.terminated.map(|p| (p.ledger, p.entry)),
            producers: self.producers.as_ref().map(|t| ProducerSnapshot {
                at: (t.at.ledger, t.at.entry),
                sequences: t
                    .sequences
                    .iter()
                    .map(|(k, v)| (k.to_string(), *v))
                    .collect(),
            }),
        }
    }

    fn entries_in(&self, ledger: u64) -> u64 {
        self.ledgers.get(&ledger).map_or(0, |l| l.entries)
    }
}

#[derive(Debug, Default)]
pub struct MlStats {
    pub entries_added: AtomicU64,
    pub messages_added: AtomicU64,
    pub bytes_added: AtomicU64,
    /// Appends the storage said it was too busy for (retried shortly, never failed).
    pub overloaded: AtomicU64,
}

struct MlInner {
    name: String,
    key: String,
    storage: Arc<dyn LedgerStorage>,
    meta: MetaStore,
    cfg: MlConfig,
    state: Mutex<MlState>,
    cache: Mutex<EntryCache>,
    last: watch::Sender<Position>,
    stats: MlStats,
    record_writes: tokio::sync::Mutex<()>,
    /// A background measurement of recovered ledgers is running.
    measuring: AtomicBool,
}

impl MlInner {
    fn now(&self) -> u64 {
        self.cfg.clock.now_ms()
    }
}

/// Resolves with an append's position once it is durable (a dropped sender: the log closed).
pub type AppendWait = oneshot::Receiver<Result<Position, MlError>>;

struct AppendReq {
    data: Bytes,
    messages: u32,
    /// (producer name, sequence id) to record once durable, when tracking producers.
    producer: Option<(Arc<str>, i64)>,
    reply: oneshot::Sender<Result<Position, MlError>>,
}

/// What the appender task is asked to do, in order.
enum Command {
    Append(AppendReq),
    /// Finish what is in flight, seal the current ledger, take nothing more.
    Close(oneshot::Sender<Result<(), MlError>>),
    /// Finish what is in flight, seal, and record the last position as final.
    Terminate(oneshot::Sender<Result<Position, MlError>>),
}

/// A topic's log. Cheap to clone.
#[derive(Clone)]
pub struct ManagedLedger {
    inner: Arc<MlInner>,
    commands: mpsc::Sender<Command>,
}

impl std::fmt::Debug for ManagedLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedLedger")
            .field("name", &self.inner.name)
            .finish()
    }
}

impl ManagedLedger {
    /// Opens (creating if needed) the log whose record is `record_key(path)` in `meta`:
    /// recovers the ledgers a previous owner left open, then starts a fresh ledger for
    /// appends (none for a terminated log).
    pub async fn open(
        name: &str,
        path: &str,
        storage: Arc<dyn LedgerStorage>,
        meta: MetaStore,
        cfg: MlConfig,
    ) -> Result<ManagedLedger, MlError> {
        let key = record_key(path);
        let now = cfg.clock.now_ms();
        let (mut record, mut version) = match meta.get_json::<MlRecord>(&key).await? {
            Some(v) => (v.value, Some(v.version)),
            None => (MlRecord::default(), None),
        };
        // Seal whatever ledgers a previous owner left open; drop empty ones.
        let mut empty = Vec::new();
        for info in record.ledgers.iter_mut() {
            if info.closed_ms.is_some() {
                continue;
            }
            let last = match storage.recover(info.ledger_id).await {
                Ok(last) => last,
                Err(StorageError::NoSuchLedger(_)) => {
                    warn!(
                        topic = name,
                        ledger_id = info.ledger_id,
                        "ledger record missing; dropping it from the log"
                    );
                    info.entries = 0;
                    info.closed_ms = Some(now);
                    empty.push(info.ledger_id);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            info.entries = (last + 1) as u64;
            info.closed_ms = Some(now);
            info.messages = None;
            info.size = 0;
            if info.entries == 0 {
                empty.push(info.ledger_id);
            }
            info!(
                topic = name,
                ledger_id = info.ledger_id,
                entries = info.entries,
                "recovered ledger"
            );
        }
        record
            .ledgers
            .retain(|l| l.entries > 0 || l.closed_ms.is_none());
        let terminated = record.terminated.map(|(l, e)| Position::new(l, e));
        // a terminated topic takes no appends, so it gets no ledger to write
        let writer = match terminated {
            Some(_) => None,
            None => Some(storage.create(&cfg.placement).await?),
        };
        if let Some(w) = &writer {
            record.ledgers.push(LedgerInfo::new(w.id(), now));
        }
        let expected = version.map_or(Expected::Absent, Expected::Version);
        match meta.put_json(&key, &record, expected).await {
            Ok(v) => version = Some(v),
            Err(MetaError::BadVersion { .. }) => {
                if let Some(w) = &writer {
                    let _ = storage.delete(w.id()).await;
                }
                return Err(MlError::Fenced(name.to_string()));
            }
            Err(e) => return Err(e.into()),
        }
        for id in empty {
            if let Err(e) = storage.delete(id).await {
                warn!(topic = name, ledger_id = id, error = %e, "could not delete empty ledger");
            }
        }
        let ledgers: BTreeMap<u64, LedgerInfo> = record
            .ledgers
            .into_iter()
            .map(|l| (l.ledger_id, l))
            .collect();
        // before the first entry: (first ledger id or the new writer's, -1)
        let empty_at = writer
            .as_ref()
            .map(|w| w.id())
            .or_else(|| ledgers.keys().next().copied())
            .or_else(|| terminated.map(|t| t.ledger))
            .unwrap_or(0);
        let last = ledgers
            .values()
            .rev()
            .find(|l| l.entries > 0)
            .map_or(Position::new(empty_at, -1), |l| {
                Position::new(l.ledger_id, l.entries as i64 - 1)
            });
        let mut counts = HashMap::new();
        if let Some(w) = &writer {
            counts.insert(w.id(), Vec::new());
        }
        let state = MlState {
            ledgers,
            version: version.unwrap_or(0),
            current: writer,
            readers: HashMap::new(),
            counts,
            closed: false,
            fenced: false,
            terminated,
            producers: None,
            affinity: cfg.placement.affinity.clone(),
            roll_soon: false,
        };
        let inner = Arc::new(MlInner {
            name: name.to_string(),
            key,
            storage,
            meta,
            cache: Mutex::new(EntryCache::new(
                cfg.cache_bytes,
                Arc::clone(&cfg.cache_budget),
            )),
            cfg,
            state: Mutex::new(state),
            last: watch::channel(last).0,
            stats: MlStats::default(),
            record_writes: tokio::sync::Mutex::new(()),
            measuring: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(appender(Arc::clone(&inner), rx));
        info!(topic = name, last = %last, "managed ledger open");
        let ml = ManagedLedger {
            inner,
            commands: tx,
        };
        if ml.inner.cfg.track_producers {
            ml.rebuild_producers(record.producers).await?;
        }
        Ok(ml)
    }

    pub fn storage(&self) -> &Arc<dyn LedgerStorage> {
        &self.inner.storage
    }

    pub fn meta(&self) -> &MetaStore {
        &self.inner.meta
    }

    /// Replication and placement of this log's ledgers (the affinity as now in force).
    pub fn placement(&self) -> Placement {
        Placement {
            affinity: self.affinity(),
            ..self.inner.cfg.placement.clone()
        }
    }

    /// Producer sequence ids from the snapshot, brought up to date by the entries after it;
    /// without a snapshot, from every retained entry, and a first snapshot is written so the
    /// next open replays only what came after. Tracking starts before the replay, so
    /// appends completing meanwhile are counted too.
    async fn rebuild_producers(&self, snap: Option<ProducerSnapshot>) -> Result<(), MlError> {
        let last = self.last_confirmed();
        let had_snapshot = snap.is_some();
        let (sequences, from) = match snap {
            Some(s) => (
                s.sequences
                    .into_iter()
                    .map(|(k, v)| (Arc::from(k.as_str()), v))
                    .collect(),
                Position::new(s.at.0, s.at.1),
            ),
            None => (HashMap::new(), self.before_first()),
        };
        self.inner.state.lock().producers = Some(ProducerSeqs {
            sequences,
            at: from,
            since_snapshot: 0,
        });
        let mut replayed = 0u64;
        let mut p = self.next_position(from);
        while let Some(pos) = p {
            if pos > last {
                break;
            }
            let data = self.read(pos).await?;
            if let Some((name, seq)) = self.inner.cfg.format.producer_sequence(&data) {
                let name: Arc<str> = Arc::from(name.as_str());
                if let Some(seqs) = self.inner.state.lock().producers.as_mut() {
                    seqs.note(&name, seq, pos);
                }
            }
            replayed += 1;
            p = self.next_position(pos);
        }
        let producers = {
            let mut st = self.inner.state.lock();
            st.producers.as_mut().map_or(0, |seqs| {
                seqs.at = seqs.at.max(last);
                seqs.since_snapshot = 0;
                seqs.sequences.len()
            })
        };
        info!(topic = %self.inner.name, producers, replayed, "producer sequence ids rebuilt");
        if !had_snapshot || replayed > 0 {
            write_record(&self.inner, |st| st.record()).await?;
        }
        Ok(())
    }

    /// Starts or stops tracking producer sequence ids (deduplication switched at runtime);
    /// starting replays the log from the last snapshot.
    pub async fn set_producer_tracking(&self, on: bool) -> Result<(), MlError> {
        if on == self.tracks_producers() {
            return Ok(());
        }
        if !on {
            self.inner.state.lock().producers = None;
            return Ok(());
        }
        let snap = self
            .inner
            .meta
            .get_json::<MlRecord>(&self.inner.key)
            .await?
            .and_then(|v| v.value.producers);
        self.rebuild_producers(snap).await
    }

    /// Places the log's next ledgers by `affinity`; when the current ledger's data does not
    /// match it, the next append rolls over to a ledger that does (an idle log moves when it
    /// next writes). True when that roll was asked for.
    pub fn set_affinity(&self, affinity: Option<Affinity>) -> bool {
        let mut st = self.inner.state.lock();
        if st.affinity == affinity {
            return false;
        }
        let current = st.current.as_ref().map(|w| w.affinity());
        st.roll_soon = current.is_some_and(|a| a != affinity);
        st.affinity = affinity;
        st.roll_soon
    }

    /// The affinity the log's next ledger is placed by.
    pub fn affinity(&self) -> Option<Affinity> {
        self.inner.state.lock().affinity.clone()
    }

    pub fn tracks_producers(&self) -> bool {
        self.inner.state.lock().producers.is_some()
    }

    /// The highest persisted sequence id of a producer (None: not tracking, or unknown).
    pub fn producer_sequence(&self, producer: &str) -> Option<i64> {
        self.inner
            .state
            .lock()
            .producers
            .as_ref()
            .and_then(|p| p.sequences.get(producer).copied())
    }

    /// The log's path (`tenant/ns/domain/topic`): its record is at
    /// `/managed-ledgers/{path}`, and other stores key what belongs to it by it.
    pub fn path(&self) -> &str {
        self.inner
            .key
            .strip_prefix("/managed-ledgers/")
            .unwrap_or(&self.inner.key)
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn stats(&self) -> &MlStats {
        &self.inner.stats
    }

    /// Appends one entry holding `messages` messages; resolves once it is durable.
    pub async fn append(&self, data: Bytes, messages: u32) -> Result<Position, MlError> {
        self.append_start(data, messages, None)
            .await?
            .await
            .unwrap_or_else(|_| Err(MlError::Closed(self.inner.name.clone())))
    }

    /// Queues an append now (fixing its order) and returns the receiver of its result.
    /// `producer` is the (name, sequence id) to record when tracking producers.
    pub async fn append_start(
        &self,
        data: Bytes,
        messages: u32,
        producer: Option<(Arc<str>, i64)>,
    ) -> Result<AppendWait, MlError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Append(AppendReq {
                data,
                messages,
                producer,
                reply,
            }))
            .await
            .map_err(|_| MlError::Closed(self.inner.name.clone()))?;
        Ok(rx)
    }

    /// The last durable entry ((current ledger, -1) when the log is empty).
    pub fn last_confirmed(&self) -> Position {
        *self.inner.last.borrow()
    }

    /// Watches the last durable entry.
    pub fn subscribe_last(&self) -> watch::Receiver<Position> {
        self.inner.last.subscribe()
    }

    /// The position just before the first entry still in the log.
    pub fn before_first(&self) -> Position {
        let st = self.inner.state.lock();
        st.ledgers
            .values()
            .find(|l| l.entries > 0 || l.closed_ms.is_none())
            .map_or(Position::new(0, -1), |l| Position::new(l.ledger_id, -1))
    }

    /// The entry after `p`, if it has been written.
    pub fn next_position(&self, p: Position) -> Option<Position> {
        let st = self.inner.state.lock();
        if ((p.entry + 1) as u64) < st.entries_in(p.ledger) {
            return Some(p.next_in_ledger());
        }
        st.ledgers
            .range(p.ledger + 1..)
            .find(|(_, l)| l.entries > 0)
            .map(|(id, _)| Position::new(*id, 0))
    }

    /// The first written entry at or after `p`.
    pub fn at_or_after(&self, p: Position) -> Option<Position> {
        let p = Position::new(p.ledger, p.entry.max(0));
        if p.entry > 0 {
            self.next_position(Position::new(p.ledger, p.entry - 1))
        } else {
            let st = self.inner.state.lock();
            st.ledgers
                .range(p.ledger..)
                .find(|(_, l)| l.entries > 0)
                .map(|(id, _)| Position::new(*id, 0))
        }
    }

    /// The entry before `p` (or the "before first" position of p's ledger when p is first).
    pub fn previous_position(&self, p: Position) -> Position {
        if p.entry > 0 {
            return Position::new(p.ledger, p.entry - 1);
        }
        let st = self.inner.state.lock();
        st.ledgers
            .range(..p.ledger)
            .rev()
            .find(|(_, l)| l.entries > 0)
            .map_or(Position::new(p.ledger, -1), |(id, l)| {
                Position::new(*id, l.entries as i64 - 1)
            })
    }

    /// Total entries and bytes stored.
    pub fn totals(&self) -> (u64, u64) {
        let st = self.inner.state.lock();
        st.ledgers
            .values()
            .fold((0, 0), |(e, b), l| (e + l.entries, b + l.size))
    }

    pub fn ledgers(&self) -> Vec<LedgerInfo> {
        self.inner.state.lock().ledgers.values().cloned().collect()
    }

    pub fn current_ledger(&self) -> Option<u64> {
        self.inner.state.lock().current.as_ref().map(|w| w.id())
    }

    /// Lets go of the entry cache of a log that took no entry since the last call
    /// (housekeeping's period), so that idle topics do not hold the broker's budget; a busy
    /// one gives back what it holds beyond its fair share of an overdrawn budget. Returns the
    /// bytes released.
    pub fn release_idle_cache(&self) -> usize {
        let added = self.inner.stats.entries_added.load(Ordering::Relaxed);
        let mut c = self.inner.cache.lock();
        if std::mem::replace(&mut c.seen_added, added) != added {
            return c.shed();
        }
        let released = c.bytes;
        c.clear();
        released
    }

    /// The ledger that holds `ledger`'s entries for reading: the current writer, a reader
    /// already open, or one opened now (from the tier if the ledger was offloaded).
    async fn ledger_for(&self, p: Position) -> Result<Arc<dyn Ledger>, MlError> {
        let ledger = p.ledger;
        let info = {
            let st = self.inner.state.lock();
            if let Some(w) = &st.current
                && w.id() == ledger
            {
                return Ok(Arc::clone(w));
            }
            if let Some(r) = st.readers.get(&ledger) {
                return Ok(Arc::clone(r));
            }
            st.ledgers.get(&ledger).cloned()
        };
        let Some(info) = info else {
            return Err(MlError::NoSuchPosition(p));
        };
        let r = match (&info.offload, &self.inner.cfg.tier) {
            (Some(_), Some(tier)) => tier.open(info).await?,
            _ => self.inner.storage.open(ledger).await?,
        };
        self.inner
            .state
            .lock()
            .readers
            .insert(ledger, Arc::clone(&r));
        Ok(r)
    }

    /// Reads one entry.
    pub async fn read(&self, p: Position) -> Result<Bytes, MlError> {
        {
            let cache = self.inner.cache.lock();
            if cache.enabled() {
                if let Some(d) = cache.entries.get(&p) {
                    cache.budget().hit();
                    return Ok(d.clone());
                }
                cache.budget().miss();
            }
        }
        if p.entry < 0 || p > self.last_confirmed() {
            return Err(MlError::NoSuchPosition(p));
        }
        let ledger = self.ledger_for(p).await?;
        Ok(ledger.read(p.entry as u64).await?)
    }

    /// Reads up to `max` entries from `from` on (inclusive, skipping positions `skip` says
    /// to), stopping at the last durable entry. Reads run concurrently; an entry the storage
    /// has let go of (a bounded memory storage) is passed over as if skipped. Also returns
    /// the last position examined (read or skipped), where the next read should continue
    /// after.
    pub async fn read_from(
        &self,
        from: Position,
        max: usize,
        skip: impl Fn(Position) -> bool,
    ) -> Result<(Vec<(Position, Bytes)>, Option<Position>), MlError> {
        let last = self.last_confirmed();
        let mut positions = Vec::with_capacity(max.min(1024));
        let mut p = self.at_or_after(from);
        let mut examined = None;
        while let Some(pos) = p {
            if pos > last || positions.len() >= max {
                break;
            }
            if !skip(pos) {
                positions.push(pos);
            }
            examined = Some(pos);
            p = self.next_position(pos);
        }
        let reads = futures::stream::iter(positions.into_iter().map(|pos| {
            let ml = self.clone();
            async move { (pos, ml.read(pos).await) }
        }))
        .buffered(READ_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
        let mut out = Vec::with_capacity(reads.len());
        for (pos, r) in reads {
            match r {
                Ok(d) => out.push((pos, d)),
                Err(MlError::Storage(StorageError::Gone { .. })) => {}
                Err(e) => return Err(e),
            }
        }
        Ok((out, examined))
    }

    /// Messages in the entries of `ledger` from `from` to `to` (inclusive).
    pub async fn messages_in(&self, ledger: u64, from: i64, to: i64) -> Result<u64, MlError> {
        if to < from || to < 0 {
            return Ok(0);
        }
        let from = from.max(0);
        // counted in place: a full ledger's counts are 400 KB, not to be copied per call
        let span = |counts: &Vec<u64>| {
            let at = |i: i64| -> u64 {
                if i < 0 {
                    0
                } else {
                    counts
                        .get(i as usize)
                        .copied()
                        .unwrap_or_else(|| counts.last().copied().unwrap_or(0))
                }
            };
            at(to) - at(from - 1)
        };
        if let Some(c) = self.inner.state.lock().counts.get(&ledger) {
            return Ok(span(c));
        }
        self.count_ledger(ledger).await?;
        Ok(self.inner.state.lock().counts.get(&ledger).map_or(0, span))
    }

    /// Messages in every entry after `after`.
    pub async fn messages_after(&self, after: Position) -> Result<u64, MlError> {
        let ledgers: Vec<(u64, u64)> = {
            let st = self.inner.state.lock();
            st.ledgers
                .range(after.ledger..)
                .map(|(id, l)| (*id, l.entries))
                .collect()
        };
        let mut total = 0;
        for (id, entries) in ledgers {
            if entries == 0 {
                continue;
            }
            let from = if id == after.ledger {
                after.entry + 1
            } else {
                0
            };
            total += self.messages_in(id, from, entries as i64 - 1).await?;
        }
        Ok(total)
    }

    /// Counts the messages of a ledger this broker did not write, by reading it once, and
    /// keeps the cumulative counts by entry. A ledger recovered from an earlier owner has no
    /// size yet (the owner died before recording it): the same read measures it, and the
    /// size is recorded so backlog bytes, size retention and quotas count it.
    async fn count_ledger(&self, ledger: u64) -> Result<(), MlError> {
        let entries = self.inner.state.lock().entries_in(ledger);
        let mut counts = Vec::with_capacity(entries as usize);
        let mut sum = 0u64;
        let mut bytes = 0u64;
        let reads = futures::stream::iter((0..entries).map(|e| {
            let ml = self.clone();
            async move { ml.read(Position::new(ledger, e as i64)).await }
        }))
        .buffered(READ_CONCURRENCY);
        futures::pin_mut!(reads);
        let format = &self.inner.cfg.format;
        while let Some(d) = reads.next().await {
            let d = match d {
                Ok(d) => d,
                // let go of by the storage: counted as nothing
                Err(MlError::Storage(StorageError::Gone { .. })) => Bytes::new(),
                Err(e) => return Err(e),
            };
            if !d.is_empty() {
                sum += format.messages(&d);
            }
            bytes += d.len() as u64;
            counts.push(sum);
        }
        debug!(topic = %self.inner.name, ledger_id = ledger, entries, bytes, "counted messages");
        let sized = {
            let mut st = self.inner.state.lock();
            let mut sized = false;
            if let Some(l) = st.ledgers.get_mut(&ledger) {
                l.messages = Some(sum);
                if l.size == 0 && entries > 0 {
                    l.size = bytes;
                    sized = true;
                }
            }
            st.counts.insert(ledger, counts);
            sized
        };
        if sized {
            // kept for the next owner too; losing this write only means measuring again
            if let Err(e) = write_record(&self.inner, |st| st.record()).await {
                warn!(topic = %self.inner.name, ledger_id = ledger, error = %e, "recording a measured ledger size failed");
            } else {
                info!(topic = %self.inner.name, ledger_id = ledger, bytes, "recovered ledger measured");
            }
        }
        Ok(())
    }

    /// Measures, in the background and one at a time, the closed ledgers whose size is
    /// unknown (recovered from an earlier owner); a no-op while a measurement runs. Called
    /// by housekeeping, so a restart's recovered ledgers are read once, after the topic
    /// already serves.
    pub fn measure_unsized(&self) {
        let unmeasured: Vec<u64> = {
            let st = self.inner.state.lock();
            let current = st.current.as_ref().map(|w| w.id());
            st.ledgers
                .values()
                .filter(|l| l.size == 0 && l.entries > 0 && Some(l.ledger_id) != current)
                .map(|l| l.ledger_id)
                .collect()
        };
        if unmeasured.is_empty() || self.inner.measuring.swap(true, Ordering::AcqRel) {
            return;
        }
        let ml = self.clone();
        tokio::spawn(async move {
            for id in unmeasured {
                // a ledger trimmed meanwhile is simply gone
                if !ml.inner.state.lock().ledgers.contains_key(&id) {
                    continue;
                }
                if let Err(e) = ml.count_ledger(id).await {
                    warn!(topic = %ml.inner.name, ledger_id = id, error = %e, "measuring a recovered ledger failed; retried next pass");
                    break;
                }
            }
            ml.inner.measuring.store(false, Ordering::Release);
        });
    }

    /// The mark-delete position from which delivery starts at `p`: just before the first
    /// entry at or after it (the log's end when there is none yet).
    pub fn start_before(&self, p: Position) -> Position {
        match self.at_or_after(p) {
            Some(first) => self.previous_position(first),
            None => self.last_confirmed(),
        }
    }

    /// The mark-delete position from which delivery starts at the first message published
    /// at or after `ts_ms` (looking from ledger `first_ledger` on; the log's end if none).
    pub async fn start_before_time(
        &self,
        ts_ms: u64,
        first_ledger: u64,
    ) -> Result<Position, MlError> {
        Ok(
            match self.find_by_publish_time_from(ts_ms, first_ledger).await? {
                Some(first) => self.previous_position(first),
                None => self.last_confirmed(),
            },
        )
    }

    /// Finds the first entry published at or after `ts_ms` (None: all are older), looking
    /// only at ledgers from `first_ledger` on.
    async fn find_by_publish_time_from(
        &self,
        ts_ms: u64,
        first_ledger: u64,
    ) -> Result<Option<Position>, MlError> {
        let format = &self.inner.cfg.format;
        let ledgers: Vec<(u64, u64)> = {
            let st = self.inner.state.lock();
            st.ledgers
                .range(first_ledger..)
                .filter(|(_, l)| l.entries > 0)
                .map(|(id, l)| (*id, l.entries))
                .collect()
        };
        let last = self.last_confirmed();
        for (id, entries) in ledgers {
            let last_entry = if id == last.ledger {
                last.entry
            } else {
                entries as i64 - 1
            };
            if last_entry < 0 {
                continue;
            }
            let tail = self.read(Position::new(id, last_entry)).await?;
            if format.publish_time(&tail) < ts_ms {
                continue;
            }
            // binary search for the first entry at or after ts in this ledger
            let (mut lo, mut hi) = (0i64, last_entry);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                let d = self.read(Position::new(id, mid)).await?;
                if format.publish_time(&d) >= ts_ms {
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
            return Ok(Some(Position::new(id, lo)));
        }
        Ok(None)
    }

    /// Bytes stored after `p` (whole ledgers after it, and its own ledger pro rata; ledgers
    /// recovered from an earlier owner count 0 until measured, their size being unknown).
    pub fn bytes_after(&self, p: Position) -> u64 {
        let st = self.inner.state.lock();
        st.ledgers
            .range(p.ledger..)
            .map(|(id, l)| {
                if *id > p.ledger {
                    l.size
                } else if l.entries == 0 {
                    0
                } else {
                    let after = (l.entries as i64 - 1 - p.entry).clamp(0, l.entries as i64) as u64;
                    l.size / l.entries * after
                }
            })
            .sum()
    }

    /// The first position after which at most `budget` bytes are stored (for evicting a
    /// backlog down to a size quota).
    pub fn position_keeping(&self, budget: u64) -> Position {
        let st = self.inner.state.lock();
        let mut kept = 0u64;
        for (id, l) in st.ledgers.iter().rev() {
            if l.entries == 0 {
                continue;
            }
            if kept + l.size <= budget {
                kept += l.size;
                continue;
            }
            // keep as many of this ledger's last entries as fit
            let per = (l.size / l.entries).max(1);
            let fit = (budget - kept) / per;
            return Position::new(*id, l.entries as i64 - 1 - fit as i64);
        }
        drop(st);
        self.before_first()
    }

    /// Closed ledgers whose storage no longer holds any of their entries (a bounded memory
    /// storage let go of them): nothing is left to keep them for.
    async fn ledgers_gone(&self) -> Vec<u64> {
        let closed: Vec<u64> = {
            let st = self.inner.state.lock();
            let current = st.current.as_ref().map(|w| w.id());
            st.ledgers
                .values()
                .filter(|l| Some(l.ledger_id) != current && l.closed_ms.is_some())
                .filter(|l| l.entries > 0 && l.offload.is_none())
                .map(|l| l.ledger_id)
                .collect()
        };
        let mut gone = Vec::new();
        for id in closed {
            if let Ok(Some(0)) = self.inner.storage.stored_bytes(id).await {
                gone.push(id);
            }
        }
        gone
    }

    /// Deletes ledgers every cursor has consumed, subject to retention, and ledgers the
    /// storage already let go of. `slowest` is the lowest mark-delete position over the
    /// cursors that hold data back (None: none does).
    pub async fn trim(
        &self,
        slowest: Option<Position>,
        retention: Retention,
    ) -> Result<usize, MlError> {
        let now = self.inner.now();
        let gone = self.ledgers_gone().await;
        let victims = {
            let st = self.inner.state.lock();
            if st.fenced || st.closed {
                return Ok(0);
            }
            let current = st.current.as_ref().map(|w| w.id());
            let mut candidates: Vec<&LedgerInfo> = st
                .ledgers
                .values()
                .filter(|l| Some(l.ledger_id) != current && l.closed_ms.is_some())
                .filter(|l| match slowest {
                    None => true,
                    Some(s) => {
                        s.ledger > l.ledger_id
                            || (s.ledger == l.ledger_id && s.entry + 1 >= l.entries as i64)
                    }
                })
                .collect();
            // retention: keep the newest consumed ledgers within time and size limits
            let mut kept_bytes = 0u64;
            candidates.reverse();
            let mut victims = Vec::new();
            for l in candidates {
                let young = retention.time.is_none_or(|t| {
                    let rt = t.as_millis() as u64;
                    rt > 0 && now.saturating_sub(l.closed_ms.unwrap_or(now)) < rt
                });
                let fits = retention
                    .bytes
                    .is_none_or(|rb| rb > 0 && kept_bytes + l.size <= rb);
                if young || fits {
                    kept_bytes += l.size;
                    continue;
                }
                victims.push(l.clone());
            }
            for id in gone {
                if !victims.iter().any(|v| v.ledger_id == id)
                    && let Some(l) = st.ledgers.get(&id)
                {
                    victims.push(l.clone());
                }
            }
            victims
        };
        if victims.is_empty() {
            return Ok(0);
        }
        // dropped from memory with the record write, so no later write brings them back
        write_record(&self.inner, |st| {
            for v in &victims {
                st.ledgers.remove(&v.ledger_id);
                st.readers.remove(&v.ledger_id);
                st.counts.remove(&v.ledger_id);
            }
            st.record()
        })
        .await?;
        let newest = victims.iter().map(|v| v.ledger_id).max().unwrap_or(0);
        self.inner
            .cache
            .lock()
            .keep_from(Position::new(newest + 1, -1));
        for v in &victims {
            self.delete_ledger(v).await;
        }
        let ids: Vec<u64> = victims.iter().map(|v| v.ledger_id).collect();
        info!(topic = %self.inner.name, ledgers = ?ids, "trimmed consumed ledgers");
        Ok(victims.len())
    }

    /// Deletes a ledger's data wherever it is (a failure leaves only wasted space: the
    /// ledger is already out of the log).
    async fn delete_ledger(&self, l: &LedgerInfo) {
        let id = l.ledger_id;
        match self.inner.storage.delete(id).await {
            Ok(()) | Err(StorageError::NoSuchLedger(_)) => {}
            Err(e) => {
                warn!(topic = %self.inner.name, ledger_id = id, error = %e, "ledger dropped from the log but not deleted")
            }
        }
        if l.offload.is_some()
            && let Some(tier) = &self.inner.cfg.tier
            && let Err(e) = tier.delete(l.clone()).await
        {
            warn!(topic = %self.inner.name, ledger_id = id, error = %e, "offloaded copy of a dropped ledger not deleted");
        }
    }

    /// Records what a tier wrote for closed ledger `id` (its reads go to the tier from now
    /// on). The ledger's data was copied first, so a failure here leaves a copy nobody
    /// refers to, never a ledger that cannot be read.
    pub async fn mark_offloaded(&self, id: u64, offload: serde_json::Value) -> Result<(), MlError> {
        {
            let st = self.inner.state.lock();
            let current = st.current.as_ref().map(|w| w.id());
            match st.ledgers.get(&id) {
                Some(l) if l.closed_ms.is_some() && Some(id) != current => {}
                _ => {
                    return Err(MlError::Unsupported(format!(
                        "ledger {id} is not a closed ledger of {}",
                        self.inner.name
                    )));
                }
            }
        }
        write_record(&self.inner, |st| {
            if let Some(l) = st.ledgers.get_mut(&id) {
                l.offload = Some(offload);
            }
            st.readers.remove(&id);
            st.record()
        })
        .await
    }

    /// A closed ledger's copy in storage, for reading it whole (an offload copies it from
    /// here, whatever the log's reads use).
    pub async fn open_stored(&self, id: u64) -> Result<Arc<dyn Ledger>, MlError> {
        {
            let st = self.inner.state.lock();
            let current = st.current.as_ref().map(|w| w.id());
            if Some(id) == current || st.ledgers.get(&id).is_none_or(|l| l.closed_ms.is_none()) {
                return Err(MlError::Unsupported(format!(
                    "ledger {id} is not a closed ledger of {}",
                    self.inner.name
                )));
            }
        }
        Ok(self.inner.storage.open(id).await?)
    }

    /// Deletes the storage's copy of offloaded ledger `id` (its reads already go to the
    /// tier), then records `offload` (saying so). Deleted first: a crash in between leaves
    /// a record that asks for the deletion again, which finds nothing to delete.
    pub async fn release_offloaded(
        &self,
        id: u64,
        offload: serde_json::Value,
    ) -> Result<(), MlError> {
        let offloaded = self
            .inner
            .state
            .lock()
            .ledgers
            .get(&id)
            .is_some_and(|l| l.offload.is_some());
        if !offloaded {
            return Err(MlError::Unsupported(format!(
                "ledger {id} of {} is not offloaded",
                self.inner.name
            )));
        }
        match self.inner.storage.delete(id).await {
            Ok(()) | Err(StorageError::NoSuchLedger(_)) => {}
            Err(e) => return Err(e.into()),
        }
        write_record(&self.inner, |st| {
            if let Some(l) = st.ledgers.get_mut(&id) {
                l.offload = Some(offload);
            }
            st.record()
        })
        .await
    }

    /// Seals the current ledger and stops accepting appends (pending ones finish first).
    pub async fn close(&self) -> Result<(), MlError> {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Close(tx)).await.is_err() {
            return Ok(());
        }
        rx.await.unwrap_or(Ok(()))
    }

    /// Terminates the log: appends queued before this finish, later ones fail with
    /// `Terminated`, and the last position is recorded durably and returned. Terminating
    /// twice returns the same position.
    pub async fn terminate(&self) -> Result<Position, MlError> {
        if let Some(p) = self.terminated() {
            return Ok(p);
        }
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Terminate(tx))
            .await
            .map_err(|_| MlError::Closed(self.inner.name.clone()))?;
        rx.await
            .unwrap_or_else(|_| Err(MlError::Closed(self.inner.name.clone())))
    }

    /// The last position of a terminated log; None while it takes appends.
    pub fn terminated(&self) -> Option<Position> {
        self.inner.state.lock().terminated
    }

    /// Deletes the whole log: every ledger and the record.
    pub async fn delete(&self) -> Result<(), MlError> {
        let _ = self.close().await;
        let (ledgers, version) = {
            let st = self.inner.state.lock();
            (st.ledgers.values().cloned().collect::<Vec<_>>(), st.version)
        };
        match self
            .inner
            .meta
            .delete(&self.inner.key, Expected::Version(version))
            .await
        {
            Ok(()) | Err(MetaError::NotFound(_)) => {}
            Err(MetaError::BadVersion { .. }) => {
                return Err(MlError::Fenced(self.inner.name.clone()));
            }
            Err(e) => return Err(e.into()),
        }
        for l in &ledgers {
            self.delete_ledger(l).await;
        }
        Ok(())
    }
}

/// An append in flight: the storage's future, and the request it answers.
struct InFlight {
    fut: AppendFuture,
    req: Option<AppendReq>,
    ledger: u64,
}

impl Future for InFlight {
    type Output = (Result<u64, StorageError>, AppendReq, u64);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let res = std::task::ready!(self.fut.as_mut().poll(cx));
        match self.req.take() {
            Some(req) => Poll::Ready((res, req, self.ledger)),
            // polled again after completing: FuturesOrdered never does that
            None => Poll::Pending,
        }
    }
}

/// The single writer of a managed ledger: takes appends in order, pipelines them into the
/// current ledger, and rolls over between them.
async fn appender(inner: Arc<MlInner>, mut rx: mpsc::Receiver<Command>) {
    let mut pending: FuturesOrdered<InFlight> = FuturesOrdered::new();
    let mut broken = false;
    loop {
        tokio::select! {
            biased;
            Some((res, req, ledger)) = pending.next(), if !pending.is_empty() => {
                match res {
                    Ok(entry) => {
                        if completed(&inner, ledger, entry, req) {
                            let inner = Arc::clone(&inner);
                            tokio::spawn(async move {
                                if let Err(e) = write_record(&inner, |st| st.record()).await {
                                    warn!(topic = %inner.name, error = %e, "producer snapshot not written");
                                }
                            });
                        }
                    }
                    Err(e) => {
                        warn!(topic = %inner.name, ledger_id = ledger, error = %e, "append failed");
                        broken = true;
                        let _ = req.reply.send(Err(e.into()));
                    }
                }
            }
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { break };
                let req = match cmd {
                    Command::Append(req) => req,
                    Command::Terminate(reply) => {
                        drain(&inner, &mut pending, &mut broken).await;
                        let _ = reply.send(terminate(&inner, broken).await);
                        continue;
                    }
                    Command::Close(reply) => {
                        drain(&inner, &mut pending, &mut broken).await;
                        let res = seal_current(&inner, broken).await;
                        inner.state.lock().closed = true;
                        let _ = reply.send(res);
                        refuse_the_rest(&inner, rx).await;
                        return;
                    }
                };
                let roll = {
                    let st = inner.state.lock();
                    if st.fenced {
                        let _ = req.reply.send(Err(MlError::Fenced(inner.name.clone())));
                        continue;
                    }
                    if st.terminated.is_some() {
                        let _ = req.reply.send(Err(MlError::Terminated(inner.name.clone())));
                        continue;
                    }
                    match &st.current {
                        None => true,
                        Some(w) => {
                            let info = st.ledgers.get(&w.id());
                            let age = info.map_or(0, |l| inner.now().saturating_sub(l.timestamp_ms));
                            broken
                                || st.roll_soon
                                || info.is_some_and(|l| {
                                    l.entries + pending.len() as u64 >= inner.cfg.max_entries_per_ledger
                                        || l.size >= inner.cfg.max_ledger_bytes
                                })
                                || age >= inner.cfg.max_ledger_age.as_millis() as u64
                        }
                    }
                };
                if roll {
                    drain(&inner, &mut pending, &mut broken).await;
                    match rollover(&inner, broken).await {
                        Ok(()) => broken = false,
                        Err(e) => {
                            warn!(topic = %inner.name, error = %e, "rollover failed");
                            let _ = req.reply.send(Err(e));
                            continue;
                        }
                    }
                }
                let writer = inner.state.lock().current.clone();
                let Some(writer) = writer else {
                    let _ = req.reply.send(Err(MlError::Closed(inner.name.clone())));
                    continue;
                };
                let ledger = writer.id();
                match submit(&inner, writer.as_ref(), &req.data).await {
                    Ok(fut) => pending.push_back(InFlight { fut, req: Some(req), ledger }),
                    Err(e) => {
                        broken = true;
                        let _ = req.reply.send(Err(e.into()));
                    }
                }
            }
        }
    }
}

/// How long the appender waits before trying a storage that was too busy again.
const OVERLOADED_BACKOFF: Duration = Duration::from_micros(500);

/// Submits an append, waiting out a storage that is too busy (its queues full): that slows
/// this log's appends (and, through the publish limits, its producers) and fails nothing.
async fn submit(
    inner: &MlInner,
    writer: &dyn Ledger,
    data: &Bytes,
) -> Result<AppendFuture, StorageError> {
    loop {
        match writer.submit(data.clone()) {
            Err(StorageError::Overloaded(_)) => {
                inner.stats.overloaded.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(OVERLOADED_BACKOFF).await;
            }
            other => return other,
        }
    }
}

/// Waits for every append in flight and answers each.
async fn drain(inner: &MlInner, pending: &mut FuturesOrdered<InFlight>, broken: &mut bool) {
    while let Some((res, req, ledger)) = pending.next().await {
        match res {
            Ok(entry) => {
                completed(inner, ledger, entry, req);
            }
            Err(e) => {
                *broken = true;
                let _ = req.reply.send(Err(e.into()));
            }
        }
    }
}

/// After a close: every command still queued or sent later is refused.
async fn refuse_the_rest(inner: &MlInner, mut rx: mpsc::Receiver<Command>) {
    rx.close();
    while let Some(cmd) = rx.recv().await {
        let closed = MlError::Closed(inner.name.clone());
        match cmd {
            Command::Append(r) => {
                let _ = r.reply.send(Err(closed));
            }
            Command::Close(reply) => {
                let _ = reply.send(Ok(()));
            }
            Command::Terminate(reply) => {
                let _ = reply.send(Err(closed));
            }
        }
    }
}

/// Records a durable append; returns whether a producer snapshot is due.
fn completed(inner: &MlInner, ledger: u64, entry: u64, req: AppendReq) -> bool {
    let pos = Position::new(ledger, entry as i64);
    let len = req.data.len() as u64;
    let mut snapshot = false;
    {
        let mut st = inner.state.lock();
        if let Some(l) = st.ledgers.get_mut(&ledger) {
            l.entries = l.entries.max(entry + 1);
            l.size += len;
            l.messages = Some(l.messages.unwrap_or(0) + req.messages as u64);
        }
        let c = st.counts.entry(ledger).or_default();
        let prev = c.last().copied().unwrap_or(0);
        c.push(prev + req.messages as u64);
        if let (Some(seqs), Some((name, seq))) = (st.producers.as_mut(), &req.producer) {
            seqs.note(name, *seq, pos);
            snapshot = seqs.since_snapshot >= inner.cfg.producer_snapshot_every;
            if snapshot {
                seqs.since_snapshot = 0;
            }
        }
    }
    inner.stats.entries_added.fetch_add(1, Ordering::Relaxed);
    inner
        .stats
        .messages_added
        .fetch_add(req.messages as u64, Ordering::Relaxed);
    inner.stats.bytes_added.fetch_add(len, Ordering::Relaxed);
    inner.cache.lock().insert(pos, req.data.clone());
    inner.last.send_replace(pos);
    let _ = req.reply.send(Ok(pos));
    snapshot
}

/// Closes the current ledger (recovering it if its writer failed) and records that.
async fn seal_current(inner: &MlInner, broken: bool) -> Result<(), MlError> {
    let writer = inner.state.lock().current.take();
    let Some(writer) = writer else { return Ok(()) };
    let id = writer.id();
    let last = if broken {
        inner.storage.recover(id).await?
    } else {
        match writer.close().await {
            Ok(l) => l,
            Err(StorageError::Fenced(_)) => {
                inner.state.lock().fenced = true;
                return Err(MlError::Fenced(inner.name.clone()));
            }
            Err(e) => {
                warn!(topic = %inner.name, ledger_id = id, error = %e, "close failed; recovering the ledger");
                inner.storage.recover(id).await?
            }
        }
    };
    let now = inner.now();
    write_record(inner, |st| {
        if let Some(l) = st.ledgers.get_mut(&id) {
            l.entries = (last + 1) as u64;
            l.closed_ms = Some(now);
            if let Some(c) = st.counts.get(&id) {
                let n = c.get(last as usize).copied().unwrap_or(0);
                if let Some(l) = st.ledgers.get_mut(&id) {
                    l.messages = Some(n);
                }
            }
        }
        if last < 0 {
            st.ledgers.remove(&id);
        }
        st.record()
    })
    .await?;
    if last < 0 {
        let _ = inner.storage.delete(id).await;
    }
    info!(topic = %inner.name, ledger_id = id, last_entry = last, "ledger closed");
    Ok(())
}

/// Seals the current ledger and records the log's last position as final.
async fn terminate(inner: &MlInner, broken: bool) -> Result<Position, MlError> {
    seal_current(inner, broken).await?;
    let last = *inner.last.borrow();
    let res = write_record(inner, |st| {
        st.terminated = Some(last);
        st.record()
    })
    .await;
    match res {
        Ok(()) => {
            info!(topic = %inner.name, last = %last, "topic terminated");
            Ok(last)
        }
        Err(e) => {
            inner.state.lock().terminated = None;
            Err(e)
        }
    }
}

/// Changes the in-memory state with `change` and writes the resulting record by CAS. Record
/// writes of this process are serialised (trims race rollovers otherwise, and the loser of
/// that CAS would wrongly take itself for fenced), so a version conflict here really means
/// another owner wrote the record.
async fn write_record(
    inner: &MlInner,
    change: impl FnOnce(&mut MlState) -> MlRecord,
) -> Result<(), MlError> {
    let _serial = inner.record_writes.lock().await;
    let (record, version) = {
        let mut st = inner.state.lock();
        let r = change(&mut st);
        (r, st.version)
    };
    let v = put_record(inner, &record, version).await?;
    inner.state.lock().version = v;
    Ok(())
}

async fn put_record(inner: &MlInner, record: &MlRecord, version: u64) -> Result<u64, MlError> {
    match inner
        .meta
        .put_json(&inner.key, record, Expected::Version(version))
        .await
    {
        Ok(v) => Ok(v),
        Err(MetaError::BadVersion { .. }) => {
            inner.state.lock().fenced = true;
            Err(MlError::Fenced(inner.name.clone()))
        }
        Err(e) => Err(e.into()),
    }
}

async fn rollover(inner: &MlInner, broken: bool) -> Result<(), MlError> {
    seal_current(inner, broken).await?;
    let affinity = inner.state.lock().affinity.clone();
    let placement = Placement {
        affinity: affinity.clone(),
        ..inner.cfg.placement.clone()
    };
    let writer = inner.storage.create(&placement).await?;
    {
        let mut st = inner.state.lock();
        if st.affinity == affinity {
            st.roll_soon = false;
        }
    }
    let id = writer.id();
    let now = inner.now();
    let res = write_record(inner, |st| {
        st.ledgers.insert(id, LedgerInfo::new(id, now));
        st.record()
    })
    .await;
    match res {
        Ok(()) => {
            let mut st = inner.state.lock();
            st.current = Some(writer);
            st.counts.insert(id, Vec::new());
            info!(topic = %inner.name, ledger_id = id, "rolled over to a new ledger");
            Ok(())
        }
        Err(e) => {
            inner.state.lock().ledgers.remove(&id);
            let _ = inner.storage.delete(id).await;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests;
