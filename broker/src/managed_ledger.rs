//! The managed ledger: one topic's log as an ordered list of bookie ledgers.
//!
//! Only the owning broker writes it. Its record (`/managed-ledgers/{path}`) lists the ledgers
//! and changes only by compare-and-set, so a broker that lost the topic to another cannot
//! change it. On open, the last ledger is recovered (fenced and sealed) before anything is
//! served; appends go through one appender task that pipelines them into the current ledger
//! and rolls over by entry count, size and age.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use magnetar_bookie::ledger::{LedgerClient, LedgerError, LedgerReader, LedgerWriter};
use magnetar_bookie::placement::Affinity;
use magnetar_meta::{Expected, MetaError, MetaStore, MetadataStoreExt};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::position::Position;

#[derive(Debug, Clone, thiserror::Error)]
pub enum MlError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
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

/// How ledgers are created and rolled over.
#[derive(Debug, Clone)]
pub struct MlConfig {
    pub ensemble_size: usize,
    pub write_quorum: usize,
    pub ack_quorum: usize,
    pub max_entries_per_ledger: u64,
    pub max_ledger_bytes: u64,
    pub max_ledger_age: Duration,
    /// Bytes of recent entries kept in memory for tailing readers: what all persistent
    /// topics sharing `cache_budget` hold together (Pulsar's managedLedgerCacheSizeMB is per
    /// broker too); a non-persistent topic holds up to this much on its own.
    pub cache_bytes: usize,
    /// Shared by every topic opened with clones of this config.
    pub cache_budget: Arc<CacheBudget>,
    /// Keep consumed ledgers this long (0: trim as soon as every cursor is past them).
    pub retention_time: Duration,
    /// ... or while they fit in this many bytes (0: no size-based retention).
    pub retention_bytes: u64,
    /// Track each producer's highest persisted sequence id (deduplication), rebuilt on open
    /// from the snapshot in the log's record plus the entries after it.
    pub track_producers: bool,
    /// Entries between snapshots of the producer sequence ids.
    pub producer_snapshot_every: u64,
    /// Non-persistent topics: entries live only in the (bounded) entry cache, nothing is
    /// written to bookies or the metadata store, and what the cache drops is gone.
    pub in_memory: bool,
    /// The bookie groups the topic's ledgers are placed on (its namespace's bookie affinity).
    pub affinity: Option<Affinity>,
}

impl Default for MlConfig {
    fn default() -> Self {
        MlConfig {
            ensemble_size: 1,
            write_quorum: 1,
            ack_quorum: 1,
            max_entries_per_ledger: 50_000,
            max_ledger_bytes: 2 << 30,
            max_ledger_age: Duration::from_secs(4 * 3600),
            cache_bytes: DEFAULT_CACHE_BYTES,
            cache_budget: Arc::default(),
            retention_time: Duration::ZERO,
            retention_bytes: 0,
            track_producers: false,
            producer_snapshot_every: 1000,
            in_memory: false,
            affinity: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LedgerInfo {
    pub ledger_id: u64,
    pub entries: u64,
    pub size: u64,
    /// Messages in the ledger (batches count each message); None until counted.
    #[serde(default)]
    pub messages: Option<u64>,
    /// Creation time, ms since the epoch.
    pub timestamp_ms: u64,
    /// Close time, ms since the epoch (None while open).
    #[serde(default)]
    pub closed_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct MlRecord {
    ledgers: Vec<LedgerInfo>,
    /// Set once the topic is terminated: its last entry (ledger, entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    terminated: Option<(u64, i64)>,
    /// Producers' highest sequence ids as of an entry (deduplication).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    producers: Option<ProducerSnapshot>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ProducerSnapshot {
    /// Every entry up to this (ledger, entry) is reflected.
    at: (u64, i64),
    sequences: BTreeMap<String, i64>,
}

impl MlState {
    fn new(
        ledgers: BTreeMap<u64, LedgerInfo>,
        version: u64,
        current: Option<LedgerWriter>,
        counts: HashMap<u64, Vec<u64>>,
        terminated: Option<Position>,
    ) -> MlState {
        MlState {
            ledgers,
            version,
            current,
            readers: HashMap::new(),
            counts,
            closed: false,
            fenced: false,
            terminated,
            producers: None,
            affinity: None,
            roll_soon: false,
        }
    }

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

/// `AppendReq::messages` values that are commands to the appender, not appends.
const CLOSE_MARKER: u32 = u32::MAX;
const TERMINATE_MARKER: u32 = u32::MAX - 1;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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

pub const DEFAULT_CACHE_BYTES: usize = 128 << 20;

/// The bytes the entry caches of a broker's persistent topics hold together, and how many
/// topics hold some (each one's fair share is the budget divided among them).
#[derive(Debug, Default)]
pub struct CacheBudget {
    used: AtomicUsize,
    holders: AtomicUsize,
    /// Reads the caches answered / that went to the bookies, over all topics.
    hits: AtomicU64,
    misses: AtomicU64,
}

impl CacheBudget {
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn holders(&self) -> usize {
        self.holders.load(Ordering::Relaxed)
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }
}

/// Bounded FIFO of a topic's recent entries.
#[derive(Debug)]
struct EntryCache {
    entries: BTreeMap<Position, Bytes>,
    bytes: usize,
    max: usize,
    /// None for a non-persistent topic: its cache is its storage and only its own `max`
    /// bounds it (another topic's entries must not push its undelivered ones out).
    budget: Option<Arc<CacheBudget>>,
    /// `entries_added` when housekeeping last looked: unchanged since means idle.
    seen_added: u64,
}

impl EntryCache {
    fn new(max: usize, budget: Option<Arc<CacheBudget>>) -> EntryCache {
        EntryCache {
            entries: BTreeMap::new(),
            bytes: 0,
            max,
            budget,
            seen_added: 0,
        }
    }

    fn used(&self) -> usize {
        self.budget.as_ref().map_or(self.bytes, |b| b.used())
    }

    fn add_bytes(&mut self, n: usize) {
        let was = self.bytes;
        self.bytes += n;
        if let Some(b) = &self.budget {
            b.used.fetch_add(n, Ordering::Relaxed);
            if was == 0 && self.bytes > 0 {
                b.holders.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn sub_bytes(&mut self, n: usize) {
        let was = self.bytes;
        self.bytes -= n;
        if let Some(b) = &self.budget {
            b.used.fetch_sub(n, Ordering::Relaxed);
            if was > 0 && self.bytes == 0 {
                b.holders.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// This topic's part of an overdrawn budget: the budget split evenly among the topics
    /// holding some of it (its own `max` without a shared budget).
    fn fair_share(&self) -> usize {
        self.budget
            .as_ref()
            .map_or(self.max, |b| self.max / b.holders().max(1))
    }

    /// Keeps `data`, then lets go of this topic's oldest entries while it is over its own
    /// bound, or while the budget is overdrawn and it holds more than its fair share. A
    /// topic under its share keeps its entries even then: the topics over theirs shrink at
    /// their next insert or housekeeping pass ([`EntryCache::shed`]), so the first busy topic
    /// cannot keep a later one from caching anything. The budget can so be overdrawn, by
    /// at most what under-share topics add before that.
    fn insert(&mut self, p: Position, data: Bytes) {
        if self.max == 0 || data.len() > self.max {
            return;
        }
        self.add_bytes(data.len());
        if let Some(old) = self.entries.insert(p, data) {
            self.sub_bytes(old.len());
        }
        self.evict_while(|c| c.bytes > c.max);
        self.shed();
    }

    /// Gives back what this topic holds beyond its fair share of an overdrawn budget.
    fn shed(&mut self) -> usize {
        self.evict_while(|c| c.used() > c.max && c.bytes > c.fair_share())
    }

    /// Lets go of the oldest entries while `over` holds; the bytes released.
    fn evict_while(&mut self, over: impl Fn(&EntryCache) -> bool) -> usize {
        let mut released = 0;
        while over(self) {
            let Some((_, d)) = self.entries.pop_first() else {
                break;
            };
            released += d.len();
            self.sub_bytes(d.len());
        }
        released
    }

    /// Keeps only the entries at or after `from`.
    fn keep_from(&mut self, from: Position) {
        let keep = self.entries.split_off(&from);
        let dropped: usize = self.entries.values().map(Bytes::len).sum();
        self.entries = keep;
        self.sub_bytes(dropped);
    }

    fn clear(&mut self) {
        let all = self.bytes;
        self.entries.clear();
        self.sub_bytes(all);
    }
}

impl Drop for EntryCache {
    fn drop(&mut self) {
        self.clear();
    }
}

struct MlState {
    ledgers: BTreeMap<u64, LedgerInfo>,
    version: u64,
    current: Option<LedgerWriter>,
    readers: HashMap<u64, LedgerReader>,
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

#[derive(Debug, Default)]
pub struct MlStats {
    pub entries_added: AtomicU64,
    pub messages_added: AtomicU64,
    pub bytes_added: AtomicU64,
}

struct MlInner {
    name: String,
    key: String,
    client: LedgerClient,
    meta: MetaStore,
    cfg: MlConfig,
    state: Mutex<MlState>,
    cache: Mutex<EntryCache>,
    last: watch::Sender<Position>,
    stats: MlStats,
    record_writes: tokio::sync::Mutex<()>,
    /// A background measurement of recovered ledgers is running.
    measuring: std::sync::atomic::AtomicBool,
}

impl MlInner {
    fn new(
        name: &str,
        key: String,
        (client, meta): (LedgerClient, MetaStore),
        cfg: MlConfig,
        mut state: MlState,
        last: Position,
    ) -> Arc<MlInner> {
        let (last_tx, _) = watch::channel(last);
        state.affinity = cfg.affinity.clone();
        Arc::new(MlInner {
            name: name.to_string(),
            key,
            client,
            meta,
            cache: Mutex::new(EntryCache::new(
                cfg.cache_bytes,
                (!cfg.in_memory).then(|| Arc::clone(&cfg.cache_budget)),
            )),
            cfg,
            state: Mutex::new(state),
            last: last_tx,
            stats: MlStats::default(),
            record_writes: tokio::sync::Mutex::new(()),
            measuring: std::sync::atomic::AtomicBool::new(false),
        })
    }
}

/// A topic's log. Cheap to clone.
#[derive(Clone)]
pub struct ManagedLedger {
    inner: Arc<MlInner>,
    appends: mpsc::Sender<AppendReq>,
}

impl std::fmt::Debug for ManagedLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedLedger")
            .field("name", &self.inner.name)
            .finish()
    }
}

impl ManagedLedger {
    /// Opens (creating if needed) the log at `/managed-ledgers/{path}`: recovers its last
    /// ledger if a previous owner left it open, then starts a fresh ledger for appends.
    pub async fn open(
        name: &str,
        path: &str,
        client: LedgerClient,
        cfg: MlConfig,
    ) -> Result<ManagedLedger, MlError> {
        if cfg.in_memory {
            return Ok(Self::open_in_memory(name, path, client, cfg));
        }
        let meta = client.meta_store().clone();
        let key = format!("/managed-ledgers/{path}");
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
            let reader = match client.open_for_recovery(info.ledger_id).await {
                Ok(r) => r,
                Err(LedgerError::NoSuchLedger(_)) => {
                    warn!(
                        topic = name,
                        ledger_id = info.ledger_id,
                        "ledger record missing; dropping it from the log"
                    );
                    info.entries = 0;
                    info.closed_ms = Some(now_ms());
                    empty.push(info.ledger_id);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            info.entries = (reader.last_entry() + 1) as u64;
            info.closed_ms = Some(now_ms());
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
            None => Some(
                client
                    .create_with(
                        cfg.ensemble_size,
                        cfg.write_quorum,
                        cfg.ack_quorum,
                        cfg.affinity.clone(),
                    )
                    .await?,
            ),
        };
        if let Some(w) = &writer {
            record.ledgers.push(LedgerInfo {
                ledger_id: w.id(),
                entries: 0,
                size: 0,
                messages: Some(0),
                timestamp_ms: now_ms(),
                closed_ms: None,
            });
        }
        let expected = version.map_or(Expected::Absent, Expected::Version);
        match meta.put_json(&key, &record, expected).await {
            Ok(v) => version = Some(v),
            Err(MetaError::BadVersion { .. }) => {
                if let Some(w) = &writer {
                    let _ = client.delete(w.id()).await;
                }
                return Err(MlError::Fenced(name.to_string()));
            }
            Err(e) => return Err(e.into()),
        }
        for id in empty {
            if let Err(e) = client.delete(id).await {
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
        let inner = MlInner::new(
            name,
            key,
            (client, meta),
            cfg,
            MlState::new(ledgers, version.unwrap_or(0), writer, counts, terminated),
            last,
        );
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(appender(Arc::clone(&inner), rx));
        info!(topic = name, last = %last, "managed ledger open");
        let ml = ManagedLedger { inner, appends: tx };
        if ml.inner.cfg.track_producers {
            ml.rebuild_producers(record.producers).await?;
        }
        Ok(ml)
    }

    /// A log kept only in memory (non-persistent topics): numbered like a real one, in
    /// in-memory "ledgers" of `max_entries_per_ledger` entries that are dropped once the
    /// cache has let go of all their entries.
    fn open_in_memory(
        name: &str,
        path: &str,
        client: LedgerClient,
        cfg: MlConfig,
    ) -> ManagedLedger {
        let meta = client.meta_store().clone();
        let first = LedgerInfo {
            ledger_id: 1,
            entries: 0,
            size: 0,
            messages: Some(0),
            timestamp_ms: now_ms(),
            closed_ms: None,
        };
        let mut cfg = cfg;
        cfg.cache_bytes = cfg.cache_bytes.max(1 << 20); // the cache is all there is
        let inner = MlInner::new(
            name,
            format!("(in memory) {path}"),
            (client, meta),
            cfg,
            MlState::new(
                BTreeMap::from([(1, first)]),
                0,
                None,
                HashMap::from([(1, Vec::new())]),
                None,
            ),
            Position::new(1, -1),
        );
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(memory_appender(Arc::clone(&inner), rx));
        info!(topic = name, "in-memory log open");
        ManagedLedger { inner, appends: tx }
    }

    pub fn ledger_client(&self) -> &LedgerClient {
        &self.inner.client
    }

    /// (ensemble, write quorum, ack quorum) of new ledgers.
    pub fn quorum(&self) -> (usize, usize, usize) {
        let c = &self.inner.cfg;
        (c.ensemble_size, c.write_quorum, c.ack_quorum)
    }

    pub fn in_memory(&self) -> bool {
        self.inner.cfg.in_memory
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
            if let Ok(m) = magnetar_protocol::entry::peek_metadata(&data) {
                let name: Arc<str> = Arc::from(m.producer_name.as_str());
                if let Some(seqs) = self.inner.state.lock().producers.as_mut() {
                    seqs.note(&name, sequence_of(&m), pos);
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
        if on == self.tracks_producers() || self.inner.cfg.in_memory {
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

    /// Places the topic's next ledgers by `affinity`; when the current ledger's bookies do not
    /// match it, the next append rolls over to a ledger that does (an idle topic moves when it
    /// next writes). True when that roll was asked for.
    pub fn set_affinity(&self, affinity: Option<Affinity>) -> bool {
        if self.inner.cfg.in_memory {
            return false;
        }
        let mut st = self.inner.state.lock();
        if st.affinity == affinity {
            return false;
        }
        let current = st.current.as_ref().map(|w| w.metadata().affinity);
        st.roll_soon = current.is_some_and(|a| a != affinity);
        st.affinity = affinity;
        st.roll_soon
    }

    /// The affinity the topic's next ledger is placed by.
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
        self.appends
            .send(AppendReq {
                data,
                messages,
                producer,
                reply,
            })
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

    fn entries_in(st: &MlState, ledger: u64) -> u64 {
        st.ledgers.get(&ledger).map_or(0, |l| l.entries)
    }

    /// The entry after `p`, if it has been written.
    pub fn next_position(&self, p: Position) -> Option<Position> {
        let st = self.inner.state.lock();
        if ((p.entry + 1) as u64) < Self::entries_in(&st, p.ledger) {
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

    /// Lets go of the entry cache of a persistent topic that took no entry since the last
    /// call (housekeeping's period), so that idle topics do not hold the broker's budget; a
    /// busy topic gives back what it holds beyond its fair share of an overdrawn budget.
    /// Returns the bytes released.
    pub fn release_idle_cache(&self) -> usize {
        if self.inner.cfg.in_memory {
            return 0;
        }
        let added = self.inner.stats.entries_added.load(Ordering::Relaxed);
        let mut c = self.inner.cache.lock();
        if std::mem::replace(&mut c.seen_added, added) != added {
            return c.shed();
        }
        let released = c.bytes;
        c.clear();
        released
    }

    fn reader_for(&self, ledger: u64) -> Option<LedgerReader> {
        let st = self.inner.state.lock();
        if let Some(w) = &st.current
            && w.id() == ledger
        {
            return Some(w.reader());
        }
        st.readers.get(&ledger).cloned()
    }

    /// Reads one entry.
    pub async fn read(&self, p: Position) -> Result<Bytes, MlError> {
        let cached = self.inner.cache.lock().entries.get(&p).cloned();
        let budget = &self.inner.cfg.cache_budget;
        if let Some(d) = cached {
            budget.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(d);
        }
        budget.misses.fetch_add(1, Ordering::Relaxed);
        if p.entry < 0 || p > self.last_confirmed() || self.inner.cfg.in_memory {
            return Err(MlError::NoSuchPosition(p));
        }
        let reader = match self.reader_for(p.ledger) {
            Some(r) => r,
            None => {
                if !self.inner.state.lock().ledgers.contains_key(&p.ledger) {
                    return Err(MlError::NoSuchPosition(p));
                }
                let r = self.inner.client.open_closed(p.ledger).await?;
                self.inner.state.lock().readers.insert(p.ledger, r.clone());
                r
            }
        };
        Ok(reader.read(p.entry as u64).await?)
    }

    /// Reads up to `max` entries from `from` on (inclusive, skipping positions `skip` says
    /// to), stopping at the last durable entry. Reads run concurrently. Also returns the last
    /// position examined (read or skipped), where the next read should continue after.
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
            // in memory, what the cache dropped is gone: passed over like a skip
            let gone =
                self.inner.cfg.in_memory && !self.inner.cache.lock().entries.contains_key(&pos);
            if !gone && !skip(pos) {
                positions.push(pos);
            }
            examined = Some(pos);
            p = self.next_position(pos);
        }
        let reads = futures::stream::iter(positions.into_iter().map(|pos| {
            let ml = self.clone();
            async move { ml.read(pos).await.map(|d| (pos, d)) }
        }))
        .buffered(32)
        .collect::<Vec<_>>()
        .await;
        let mut out = Vec::with_capacity(reads.len());
        for r in reads {
            out.push(r?);
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
        let entries = {
            let st = self.inner.state.lock();
            Self::entries_in(&st, ledger)
        };
        let mut counts = Vec::with_capacity(entries as usize);
        let mut sum = 0u64;
        let mut bytes = 0u64;
        let reads = futures::stream::iter((0..entries).map(|e| {
            let ml = self.clone();
            async move { ml.read(Position::new(ledger, e as i64)).await }
        }))
        .buffered(32);
        futures::pin_mut!(reads);
        while let Some(d) = reads.next().await {
            let d = d?;
            let n = magnetar_protocol::entry::peek_counted(&d).unwrap_or(1);
            sum += n as u64;
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
        if self.inner.cfg.in_memory {
            return;
        }
        let unmeasured: Vec<u64> = {
            let st = self.inner.state.lock();
            let current = st.current.as_ref().map(LedgerWriter::id);
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
        let publish_time =
            |d: &Bytes| magnetar_protocol::entry::peek_metadata(d).map_or(0, |m| m.publish_time);
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
            if publish_time(&tail) < ts_ms {
                continue;
            }
            // binary search for the first entry at or after ts in this ledger
            let (mut lo, mut hi) = (0i64, last_entry);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                let d = self.read(Position::new(id, mid)).await?;
                if publish_time(&d) >= ts_ms {
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
            return Ok(Some(Position::new(id, lo)));
        }
        Ok(None)
    }

    /// Drops in-memory ledgers before the oldest entry the cache still holds.
    fn trim_in_memory(&self) -> usize {
        let oldest = self.inner.cache.lock().entries.keys().next().copied();
        let mut st = self.inner.state.lock();
        let newest = st.ledgers.keys().next_back().copied().unwrap_or(0);
        let keep_from = oldest.map_or(newest, |p| p.ledger).min(newest);
        let gone: Vec<u64> = st.ledgers.range(..keep_from).map(|(id, _)| *id).collect();
        for id in &gone {
            st.ledgers.remove(id);
            st.counts.remove(id);
        }
        gone.len()
    }

    /// Bytes stored after `p` (whole ledgers after it, and its own ledger pro rata; ledgers
    /// recovered from an earlier owner count 0 until rewritten, their size being unknown).
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

    /// Deletes ledgers every cursor has consumed, subject to retention. `slowest` is the
    /// lowest mark-delete position over the durable cursors (None: no cursors).
    pub async fn trim(
        &self,
        slowest: Option<Position>,
        retention: crate::policies::Retention,
    ) -> Result<usize, MlError> {
        if self.inner.cfg.in_memory {
            return Ok(self.trim_in_memory());
        }
        let now = now_ms();
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
                victims.push(l.ledger_id);
            }
            victims
        };
        if victims.is_empty() {
            return Ok(0);
        }
        // dropped from memory with the record write, so no later write brings them back
        write_record(&self.inner, |st| {
            for id in &victims {
                st.ledgers.remove(id);
                st.readers.remove(id);
                st.counts.remove(id);
            }
            st.record()
        })
        .await?;
        {
            self.inner.cache.lock().keep_from(Position::new(
                victims.iter().max().copied().unwrap_or(0) + 1,
                -1,
            ));
        }
        for id in &victims {
            if let Err(e) = self.inner.client.delete(*id).await {
                warn!(topic = %self.inner.name, ledger_id = id, error = %e, "ledger trimmed from the log but not deleted");
            }
        }
        info!(topic = %self.inner.name, ledgers = ?victims, "trimmed consumed ledgers");
        Ok(victims.len())
    }

    /// Seals the current ledger and stops accepting appends (pending ones finish first).
    pub async fn close(&self) -> Result<(), MlError> {
        let (tx, rx) = oneshot::channel();
        if self
            .appends
            .send(AppendReq {
                data: Bytes::new(),
                messages: CLOSE_MARKER,
                producer: None,
                reply: tx,
            })
            .await
            .is_err()
        {
            return Ok(());
        }
        rx.await.unwrap_or(Ok(Position::new(0, -1))).map(|_| ())
    }

    /// Terminates the topic: appends queued before this finish, later ones fail with
    /// `Terminated`, and the log's last position is recorded durably and returned.
    /// Terminating twice returns the same position.
    pub async fn terminate(&self) -> Result<Position, MlError> {
        if let Some(p) = self.terminated() {
            return Ok(p);
        }
        let (tx, rx) = oneshot::channel();
        self.appends
            .send(AppendReq {
                data: Bytes::new(),
                messages: TERMINATE_MARKER,
                producer: None,
                reply: tx,
            })
            .await
            .map_err(|_| MlError::Closed(self.inner.name.clone()))?;
        rx.await
            .unwrap_or_else(|_| Err(MlError::Closed(self.inner.name.clone())))
    }

    /// The last position of a terminated topic; None while it takes appends.
    pub fn terminated(&self) -> Option<Position> {
        self.inner.state.lock().terminated
    }

    /// Deletes the whole log: every ledger and the record.
    pub async fn delete(&self) -> Result<(), MlError> {
        let _ = self.close().await;
        let (ids, version) = {
            let st = self.inner.state.lock();
            (st.ledgers.keys().copied().collect::<Vec<_>>(), st.version)
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
        for id in ids {
            if let Err(e) = self.inner.client.delete(id).await {
                warn!(topic = %self.inner.name, ledger_id = id, error = %e, "could not delete ledger");
            }
        }
        Ok(())
    }
}

/// The single writer of a managed ledger: takes appends in order, pipelines them into the
/// current ledger, and rolls over between them.
async fn appender(inner: Arc<MlInner>, mut rx: mpsc::Receiver<AppendReq>) {
    type Pending =
        std::pin::Pin<Box<dyn Future<Output = (Result<u64, LedgerError>, AppendReq, u64)> + Send>>;
    let mut pending: FuturesOrdered<Pending> = FuturesOrdered::new();
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
            req = rx.recv() => {
                let Some(req) = req else { break };
                if req.messages == TERMINATE_MARKER {
                    while let Some((res, r, ledger)) = pending.next().await {
                        match res {
                            Ok(entry) => {
                                completed(&inner, ledger, entry, r);
                            }
                            Err(e) => { broken = true; let _ = r.reply.send(Err(e.into())); }
                        }
                    }
                    let _ = req.reply.send(terminate(&inner, broken).await);
                    continue;
                }
                if req.messages == CLOSE_MARKER {
                    // close: finish what is in flight, then seal
                    while let Some((res, r, ledger)) = pending.next().await {
                        match res {
                            Ok(entry) => {
                                completed(&inner, ledger, entry, r);
                            }
                            Err(e) => { broken = true; let _ = r.reply.send(Err(e.into())); }
                        }
                    }
                    let res = seal_current(&inner, broken).await;
                    inner.state.lock().closed = true;
                    let _ = req.reply.send(res.map(|_| Position::new(0, -1)));
                    rx.close();
                    while let Some(r) = rx.recv().await {
                        let _ = r.reply.send(Err(MlError::Closed(inner.name.clone())));
                    }
                    return;
                }
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
                            let age = info.map_or(0, |l| now_ms().saturating_sub(l.timestamp_ms));
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
                    while let Some((res, r, ledger)) = pending.next().await {
                        match res {
                            Ok(entry) => {
                                completed(&inner, ledger, entry, r);
                            }
                            Err(e) => { broken = true; let _ = r.reply.send(Err(e.into())); }
                        }
                    }
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
                match writer.submit(req.data.clone()) {
                    Ok(fut) => pending.push_back(Box::pin(async move { (fut.await, req, ledger) })),
                    Err(e) => {
                        broken = true;
                        let _ = req.reply.send(Err(e.into()));
                    }
                }
            }
        }
    }
}

/// The appender of an in-memory log: numbers entries and puts them in the cache.
async fn memory_appender(inner: Arc<MlInner>, mut rx: mpsc::Receiver<AppendReq>) {
    while let Some(req) = rx.recv().await {
        match req.messages {
            CLOSE_MARKER => {
                inner.state.lock().closed = true;
                let _ = req.reply.send(Ok(Position::new(0, -1)));
                rx.close();
                while let Some(r) = rx.recv().await {
                    let _ = r.reply.send(Err(MlError::Closed(inner.name.clone())));
                }
                return;
            }
            TERMINATE_MARKER => {
                let _ = req.reply.send(Err(MlError::Unsupported(format!(
                    "{} is non-persistent; only persistent topics can be terminated",
                    inner.name
                ))));
            }
            _ => {
                let (ledger, entry) = {
                    let mut st = inner.state.lock();
                    let (id, entries) = st
                        .ledgers
                        .iter()
                        .next_back()
                        .map_or((1, 0), |(id, l)| (*id, l.entries));
                    if entries >= inner.cfg.max_entries_per_ledger {
                        let next = id + 1;
                        st.ledgers.insert(
                            next,
                            LedgerInfo {
                                ledger_id: next,
                                entries: 0,
                                size: 0,
                                messages: Some(0),
                                timestamp_ms: now_ms(),
                                closed_ms: None,
                            },
                        );
                        if let Some(l) = st.ledgers.get_mut(&id) {
                            l.closed_ms = Some(now_ms());
                        }
                        st.counts.insert(next, Vec::new());
                        (next, 0)
                    } else {
                        (id, entries)
                    }
                };
                completed(&inner, ledger, entry, req);
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

/// The sequence id an entry stands for: the highest of its batch (given, or the first plus
/// the batch size, as batch members are numbered consecutively).
pub fn sequence_of(m: &magnetar_protocol::MessageMetadata) -> i64 {
    highest_sequence(
        m.sequence_id,
        m.highest_sequence_id,
        m.num_messages_in_batch,
    )
}

/// See [`sequence_of`]; the same rule for a SEND's fields.
pub fn highest_sequence(sequence_id: u64, highest: Option<u64>, messages: Option<i32>) -> i64 {
    let seq = sequence_id as i64;
    match highest {
        Some(h) if h as i64 >= seq && h > 0 => h as i64,
        _ => seq + (messages.unwrap_or(1).max(1) as i64 - 1),
    }
}

/// Closes the current ledger (recovering it if its writer failed) and records that.
async fn seal_current(inner: &MlInner, broken: bool) -> Result<(), MlError> {
    let writer = inner.state.lock().current.take();
    let Some(writer) = writer else { return Ok(()) };
    let id = writer.id();
    let last = if broken {
        inner.client.open_for_recovery(id).await?.last_entry()
    } else {
        match writer.close().await {
            Ok(l) => l,
            Err(LedgerError::Fenced(_)) => {
                inner.state.lock().fenced = true;
                return Err(MlError::Fenced(inner.name.clone()));
            }
            Err(e) => {
                warn!(topic = %inner.name, ledger_id = id, error = %e, "close failed; recovering the ledger");
                inner.client.open_for_recovery(id).await?.last_entry()
            }
        }
    };
    write_record(inner, |st| {
        if let Some(l) = st.ledgers.get_mut(&id) {
            l.entries = (last + 1) as u64;
            l.closed_ms = Some(now_ms());
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
        let _ = inner.client.delete(id).await;
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
    let writer = inner
        .client
        .create_with(
            inner.cfg.ensemble_size,
            inner.cfg.write_quorum,
            inner.cfg.ack_quorum,
            affinity.clone(),
        )
        .await?;
    {
        let mut st = inner.state.lock();
        if st.affinity == affinity {
            st.roll_soon = false;
        }
    }
    let id = writer.id();
    let res = write_record(inner, |st| {
        st.ledgers.insert(
            id,
            LedgerInfo {
                ledger_id: id,
                entries: 0,
                size: 0,
                messages: Some(0),
                timestamp_ms: now_ms(),
                closed_ms: None,
            },
        );
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
            let _ = inner.client.delete(id).await;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: usize) -> Bytes {
        Bytes::from(vec![0u8; n])
    }

    #[test]
    fn persistent_topics_share_one_budget() {
        let budget = Arc::new(CacheBudget::default());
        let mut a = EntryCache::new(1000, Some(Arc::clone(&budget)));
        let mut b = EntryCache::new(1000, Some(Arc::clone(&budget)));
        for i in 0..6 {
            a.insert(Position::new(1, i), entry(100));
        }
        assert_eq!((a.bytes, budget.used(), budget.holders()), (600, 600, 1));
        // b fills the rest, then goes over: it keeps its fair share (half), from its own
        // oldest on, never taking a's
        for i in 0..6 {
            b.insert(Position::new(2, i), entry(100));
        }
        assert_eq!((a.bytes, b.bytes, budget.used()), (600, 500, 1100));
        assert_eq!(b.entries.keys().next(), Some(&Position::new(2, 1)));
        // a, over its share of the overdrawn budget, shrinks at its next insert
        a.insert(Position::new(1, 6), entry(100));
        assert_eq!((a.bytes, b.bytes, budget.used()), (500, 500, 1000));
        assert_eq!(a.entries.keys().next(), Some(&Position::new(1, 2)));
        // a third busy topic still caches: the first ones do not starve it
        let mut c = EntryCache::new(1000, Some(Arc::clone(&budget)));
        c.insert(Position::new(3, 0), entry(100));
        assert_eq!((c.bytes, budget.used(), budget.holders()), (100, 1100, 3));
        // housekeeping brings a and b back to their share (333 each)
        assert_eq!(a.shed() + b.shed(), 100);
        assert!(budget.used() <= 1000 && a.bytes <= 400 && b.bytes <= 500);
        // within its bound and the budget, shedding gives nothing back
        assert_eq!(c.shed(), 0);
        a.keep_from(Position::new(1, 5));
        assert_eq!(a.bytes, 200);
        drop(b);
        assert_eq!(budget.used(), 300);
        a.clear();
        c.clear();
        assert_eq!((budget.used(), budget.holders()), (0, 0));
    }

    #[test]
    fn a_non_persistent_topic_is_bounded_on_its_own() {
        let mut np = EntryCache::new(300, None);
        for i in 0..5 {
            np.insert(Position::new(1, i), entry(100));
        }
        assert_eq!(np.bytes, 300);
        assert_eq!(np.entries.keys().next(), Some(&Position::new(1, 2)));
        // an entry larger than the whole cache is not kept
        np.insert(Position::new(1, 5), entry(301));
        assert_eq!(np.bytes, 300);
    }
}
