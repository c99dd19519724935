//! A subscription: its cursor, its consumers, and the task that dispatches to them.
//!
//! The decisions (who gets which entry, permits, redelivery, Key_Shared order, delayed
//! entries) are [`Dispatch`]'s, a state machine with no I/O. This is its shell: one dispatcher
//! task per subscription asks it what to read, reads the log (or the compacted view), parses
//! what dispatch needs of each entry, hands the entries to it and sends the deliveries it
//! decides on, then charges the rate limits and counts the metrics. Acks, flow, nacks, seeks
//! and consumers coming and going are told to the machine as they arrive.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use magnetar_managed_ledger::clock::{self, SharedClock};
use magnetar_managed_ledger::cursor::Cursor;
use magnetar_managed_ledger::position::Position;
use magnetar_managed_ledger::{ManagedLedger, MlError};
use magnetar_protocol::proto::command_subscribe::SubType;
use magnetar_protocol::{commands, entry as pentry};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::ratelimit::RateLimiter;
use crate::stats::Meter;
use crate::topic::compaction::CompactedView;
use crate::topic::delayed::{self, DelayedIndex};
pub use crate::topic::dispatch::SubscribeError;
use crate::topic::dispatch::{
    ActiveChange, ConsumerSpec, Delivery, Dispatch, EntryMeta, Limits, READ_BATCH,
};
use crate::topic::key_shared::KeySharedSpec;
use crate::topic::link::Link;

/// Protocol version from which clients understand ACTIVE_CONSUMER_CHANGE.
const ACTIVE_CONSUMER_CHANGE_VERSION: i32 = 12;

static NEXT_CONSUMER_KEY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Times a consumer's connection was found backlogged and its dispatch paused, since the
/// process began (`magnetar_dispatch_throttled_total`).
pub static THROTTLED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How soon a dispatcher waiting only on backlogged connections looks again.
const BACKLOG_RECHECK: Duration = Duration::from_millis(10);

/// Most messages one entry can hold (each batch record takes at least a few bytes of a 5 MiB
/// entry); larger claimed batch sizes are refused rather than allocated for.
const MAX_BATCH: usize = 1 << 20;

/// Dispatch settings shared by a broker's subscriptions.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// How long a Key_Shared consumer may sit on unacknowledged messages without acking
    /// anything before its hash slots move to other consumers (and those messages with them).
    pub key_shared_lease: Duration,
    /// Most entries a Key_Shared subscription holds back for busy slots before it stops
    /// reading ahead.
    pub key_shared_max_held: usize,
    /// Delayed delivery: entries due within this are kept in memory; later ones are
    /// persisted in buckets this wide and loaded as their time nears.
    pub delayed_horizon: Duration,
    /// The time dispatch decides by (delivery times, leases).
    pub clock: SharedClock,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            key_shared_lease: Duration::from_secs(30),
            key_shared_max_held: 5_000,
            delayed_horizon: Duration::from_secs(60),
            clock: clock::system(),
        }
    }
}

/// Which indexes of a batch an ack covers.
#[derive(Debug, Clone, Copy)]
pub enum BatchAck<'a> {
    /// The client's ack set: bit i set = index i still unacknowledged.
    Set(&'a [i64]),
    Index(usize),
    /// Indexes 0 through this one.
    Through(usize),
}

/// A consumer as its connection and the subscription share it: who it is and where its
/// messages go. Its permits and unacknowledged counts are the dispatch machine's.
pub struct Consumer {
    /// Unique in this broker.
    pub key: u64,
    /// The id the client chose (unique per connection).
    pub consumer_id: u64,
    pub name: String,
    pub priority: i32,
    pub conn: Link,
    pub client_protocol: i32,
    /// Whether to send CLOSE_CONSUMER after a seek so the client subscribes again (C++ and
    /// Java need it; the Rust crate replaces its consumer itself and must not get it).
    pub close_after_seek: bool,
    pub partition: i32,
    pub out: Meter,
    /// Messages acknowledged (counted per ack command entry).
    pub acks: Meter,
    pub connected_since: String,
    pub address: String,
    /// Closed by the broker (CLOSE_CONSUMER sent); the client will subscribe again.
    pub kicked: AtomicBool,
    /// Whether the client handles REACHED_END_OF_TOPIC (the C++ client drops the
    /// connection on it), and whether it was sent.
    pub end_of_topic_ok: bool,
    end_of_topic_sent: AtomicBool,
}

/// What a consumer's client library can take.
#[derive(Debug, Clone, Copy)]
pub struct ClientTraits {
    pub protocol: i32,
    /// Send CLOSE_CONSUMER after a seek (see [`Consumer::close_after_seek`]).
    pub close_after_seek: bool,
    pub end_of_topic: bool,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("consumer_id", &self.consumer_id)
            .field("name", &self.name)
            .finish()
    }
}

impl Consumer {
    pub fn new(
        consumer_id: u64,
        name: String,
        priority: i32,
        conn: Link,
        traits: ClientTraits,
        partition: i32,
        address: String,
    ) -> Arc<Consumer> {
        Arc::new(Consumer {
            key: NEXT_CONSUMER_KEY.fetch_add(1, Ordering::Relaxed),
            consumer_id,
            name,
            priority,
            conn,
            client_protocol: traits.protocol,
            close_after_seek: traits.close_after_seek,
            partition,
            out: Meter::default(),
            acks: Meter::default(),
            connected_since: clock::now_ms().to_string(),
            address,
            kicked: AtomicBool::new(false),
            end_of_topic_ok: traits.end_of_topic,
            end_of_topic_sent: AtomicBool::new(false),
        })
    }
}

/// The machine and the consumers it names, under one lock.
struct Shared {
    dispatch: Dispatch,
    consumers: HashMap<u64, Arc<Consumer>>,
}

/// A topic's compacted view as its subscriptions see it (replaced by each compaction).
pub type CompactedHandle = Arc<parking_lot::RwLock<Option<Arc<CompactedView>>>>;

pub struct Subscription {
    pub name: String,
    pub cursor: Arc<Cursor>,
    ml: ManagedLedger,
    cfg: DispatchConfig,
    compacted: CompactedHandle,
    /// Its consumer reads the compacted view up to the horizon (Exclusive/Failover).
    read_compacted: AtomicBool,
    state: Mutex<Shared>,
    wake: Notify,
    closed: AtomicBool,
    pub out: Meter,
    pub redelivered: Meter,
    /// Dispatch limits: the topic's (shared by its subscriptions) and this one's own.
    pub topic_limit: Arc<RateLimiter>,
    pub limit: RateLimiter,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("name", &self.name)
            .finish()
    }
}

impl Subscription {
    pub fn new(
        name: &str,
        sub_type: SubType,
        cursor: Arc<Cursor>,
        ml: ManagedLedger,
        cfg: DispatchConfig,
        compacted: CompactedHandle,
        topic_limit: Arc<RateLimiter>,
    ) -> Arc<Self> {
        let md = cursor.mark_delete();
        let delayed_prefix = delayed::prefix_of(&cursor);
        let horizon_ms = cfg.delayed_horizon.as_millis() as u64;
        let limits = Limits {
            key_shared_lease: cfg.key_shared_lease,
            key_shared_max_held: cfg.key_shared_max_held,
        };
        let s = Arc::new(Subscription {
            name: name.to_string(),
            cursor,
            ml,
            cfg,
            compacted,
            read_compacted: AtomicBool::new(false),
            state: Mutex::new(Shared {
                dispatch: Dispatch::new(
                    sub_type,
                    md,
                    DelayedIndex::new(delayed_prefix, horizon_ms),
                    limits,
                ),
                consumers: HashMap::new(),
            }),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            out: Meter::default(),
            redelivered: Meter::default(),
            topic_limit,
            limit: RateLimiter::default(),
        });
        tokio::spawn(dispatcher(Arc::clone(&s)));
        s
    }

    fn now(&self) -> u64 {
        self.cfg.clock.now_ms()
    }

    /// Recomputes this subscription's and its consumers' rates.
    pub fn tick(&self, now: std::time::Instant) {
        self.out.tick(now);
        self.redelivered.tick(now);
        for c in self.state.lock().consumers.values() {
            c.out.tick(now);
            c.acks.tick(now);
        }
    }

    pub fn sub_type(&self) -> SubType {
        self.state.lock().dispatch.sub_type()
    }

    /// The consumers, in the order they joined.
    pub fn consumers(&self) -> Vec<Arc<Consumer>> {
        let st = self.state.lock();
        st.dispatch
            .consumer_keys()
            .iter()
            .filter_map(|k| st.consumers.get(k).cloned())
            .collect()
    }

    /// A consumer's (permits, unacknowledged messages).
    pub fn consumer_counts(&self, c: &Consumer) -> (i64, i64) {
        self.state.lock().dispatch.counts(c.key)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Tells Failover consumers that speak it whether they are the active one now.
    fn announce(st: &Shared, changes: &[ActiveChange]) {
        for ch in changes {
            if let Some(c) = st.consumers.get(&ch.consumer)
                && c.client_protocol >= ACTIVE_CONSUMER_CHANGE_VERSION
            {
                c.conn
                    .send(commands::active_consumer_change(c.consumer_id, ch.active));
            }
        }
    }

    /// Adds a consumer; `key_shared` is its Key_Shared spec (for Key_Shared subscriptions).
    pub fn add_consumer(
        &self,
        c: Arc<Consumer>,
        sub_type: SubType,
        key_shared: Option<&KeySharedSpec>,
        read_compacted: bool,
    ) -> Result<(), SubscribeError> {
        self.read_compacted.store(read_compacted, Ordering::Release);
        if self.is_closed() {
            return Err(SubscribeError::Closed);
        }
        let now = self.now();
        let mut st = self.state.lock();
        let spec = ConsumerSpec {
            key: c.key,
            name: c.name.clone(),
            priority: c.priority,
        };
        let changes = st.dispatch.add_consumer(spec, sub_type, key_shared, now)?;
        st.consumers.insert(c.key, c);
        Self::announce(&st, &changes);
        drop(st);
        self.wake.notify_one();
        Ok(())
    }

    /// Removes a consumer; its unacknowledged entries go back for redelivery. Returns the
    /// number of consumers left.
    pub fn remove_consumer(&self, key: u64) -> usize {
        let now = self.now();
        let mut st = self.state.lock();
        let (left, changes) = st.dispatch.remove_consumer(key, now);
        st.consumers.remove(&key);
        Self::announce(&st, &changes);
        drop(st);
        self.wake.notify_one();
        left
    }

    pub fn flow(&self, c: &Consumer, permits: u32) {
        self.state.lock().dispatch.flow(c.key, permits);
        self.wake.notify_one();
    }

    /// The consumer acknowledged something: it is alive (Key_Shared leases).
    pub fn progressed(&self, c: &Consumer) {
        let now = self.now();
        self.state.lock().dispatch.progressed(c.key, now);
    }

    /// After acks: a Key_Shared slot may have been unlocked.
    fn acked(&self, st: &Shared) {
        if st.dispatch.sub_type() == SubType::KeyShared {
            self.wake.notify_one();
        }
    }

    /// Individual acks of whole entries. Returns the cursor change number.
    pub fn ack_individual(&self, positions: &[Position]) -> u64 {
        {
            let now = self.now();
            let mut st = self.state.lock();
            for p in positions {
                st.dispatch.release(*p, now);
            }
            self.acked(&st);
        }
        self.cursor.ack_individual(positions)
    }

    /// The message count of a batch entry: what we delivered (trusted) before what the
    /// client claims; None for single messages and for sizes no entry can have.
    fn batch_size(&self, p: Position, claimed: Option<i32>) -> Option<usize> {
        let delivered = self
            .state
            .lock()
            .dispatch
            .delivered_messages(p)
            .map(|m| m as usize);
        delivered
            .or_else(|| claimed.and_then(|s| usize::try_from(s).ok()))
            .filter(|s| *s > 1 && *s <= MAX_BATCH)
    }

    /// An ack of some indexes of a batch entry; the entry is released once every index is.
    /// Indexes outside the batch are ignored (returns change number 0, durable at once).
    pub fn ack_batch(&self, p: Position, claimed_size: Option<i32>, acked: BatchAck<'_>) -> u64 {
        let Some(size) = self.batch_size(p, claimed_size) else {
            // not a batch we can track: the ack covers the entry (as in Pulsar)
            return self.ack_individual(&[p]);
        };
        let mut unacked = vec![-1i64; size.div_ceil(64)];
        match acked {
            BatchAck::Set(set) => {
                for (w, c) in unacked
                    .iter_mut()
                    .zip(set.iter().chain(std::iter::repeat(&0)))
                {
                    *w &= *c;
                }
            }
            BatchAck::Index(i) if i < size => unacked[i / 64] &= !(1i64 << (i % 64)),
            BatchAck::Through(last) if last < size => {
                for i in 0..=last {
                    unacked[i / 64] &= !(1i64 << (i % 64));
                }
            }
            _ => return 0,
        }
        let (done, seq) = self.cursor.ack_batch(p, size, &unacked);
        if done {
            let now = self.now();
            let mut st = self.state.lock();
            st.dispatch.release(p, now);
            self.acked(&st);
        }
        seq
    }

    /// A cumulative ack of message `index` of entry `p`: everything before the entry, and
    /// the entry itself only if `index` is its last message.
    pub fn ack_cumulative_at(
        &self,
        p: Position,
        index: Option<usize>,
        claimed_size: Option<i32>,
    ) -> u64 {
        match (index, self.batch_size(p, claimed_size)) {
            (Some(i), Some(size)) if i + 1 < size => {
                self.ack_cumulative(self.ml.previous_position(p));
                self.ack_batch(p, Some(size as i32), BatchAck::Through(i))
            }
            _ => self.ack_cumulative(p),
        }
    }

    pub fn ack_cumulative(&self, p: Position) -> u64 {
        {
            let now = self.now();
            let mut st = self.state.lock();
            st.dispatch.release_through(p, now);
            self.acked(&st);
        }
        self.cursor.ack_cumulative(p)
    }

    /// Puts a consumer's unacknowledged entries (or only `only`) back for redelivery.
    pub fn redeliver(&self, consumer: u64, only: Option<&[Position]>) {
        let now = self.now();
        let n = self.state.lock().dispatch.redeliver(consumer, only, now);
        self.redelivered.record(n as u64, 0);
        self.wake.notify_one();
    }

    /// Moves the cursor so delivery restarts after `md`.
    pub fn reset(&self, md: Position) -> u64 {
        let seq = self.cursor.reset(md);
        let stale = self.state.lock().dispatch.reset(md);
        if !stale.is_empty() {
            let meta = self.cursor.meta().clone();
            tokio::spawn(async move { delayed::delete(&meta, stale).await });
        }
        self.wake.notify_one();
        seq
    }

    /// Detaches every consumer, as Pulsar does on seek: the caller sends them CLOSE_CONSUMER
    /// (after answering the seek) and the clients subscribe again with fresh permits, having
    /// dropped what they prefetched. Returns the detached consumers.
    pub fn detach_consumers(&self) -> Vec<Arc<Consumer>> {
        let mut st = self.state.lock();
        let keys = st.dispatch.detach_all();
        let consumers: Vec<Arc<Consumer>> =
            keys.iter().filter_map(|k| st.consumers.remove(k)).collect();
        for c in &consumers {
            c.kicked.store(true, Ordering::Release);
        }
        consumers
    }

    /// The compacted view this subscription reads, if it reads one and one exists.
    fn view(&self) -> Option<Arc<CompactedView>> {
        if !self.read_compacted.load(Ordering::Acquire) {
            return None;
        }
        self.compacted.read().clone()
    }

    /// Reads an entry: from the compacted view at or before its horizon for a compacted
    /// reader (a position compacted away is gone), else from the log.
    async fn read_entry(&self, p: Position) -> Result<Bytes, MlError> {
        if let Some(view) = self.view()
            && p <= view.horizon
        {
            return match view.index_of(p) {
                Some(i) => view.read(self.ml.storage().as_ref(), i).await,
                None => Err(MlError::NoSuchPosition(p)),
            };
        }
        self.ml.read(p).await
    }

    /// Whether a read should pass over `p` (acknowledged, out with a consumer, delayed).
    fn skips(&self, p: Position) -> bool {
        self.cursor.is_acked(p) || self.state.lock().dispatch.skips(p)
    }

    /// Reads up to `n` compacted entries after `after`; returns them and the position to
    /// continue after (the horizon once the view is exhausted).
    async fn read_compacted_after(
        &self,
        view: &CompactedView,
        after: Position,
        n: usize,
    ) -> (Vec<(Position, Bytes)>, Position) {
        let start = view.first_after(after);
        let end = (start + n).min(view.positions.len());
        let mut out = Vec::new();
        let mut last = after;
        for i in start..end {
            let p = view.positions[i];
            last = p;
            if self.skips(p) {
                continue;
            }
            match view.read(self.ml.storage().as_ref(), i).await {
                Ok(d) => out.push((p, d)),
                Err(e) => {
                    warn!(subscription = %self.name, position = %p, error = %e, "compacted entry unreadable; skipped");
                }
            }
        }
        if end >= view.positions.len() {
            last = last.max(view.horizon);
        }
        (out, last)
    }

    /// Makes the dispatcher look again (the topic's state changed).
    pub fn poke(&self) {
        self.wake.notify_one();
    }

    /// A terminated topic was read to its end: tells each consumer that can take it, once.
    fn tell_end_of_topic(&self) {
        for c in self.state.lock().consumers.values() {
            if c.end_of_topic_ok && !c.end_of_topic_sent.swap(true, Ordering::AcqRel) {
                c.conn.send(commands::reached_end_of_topic(c.consumer_id));
            }
        }
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Key_Shared (held entries, slot locks, hung consumers) for stats.
    pub fn key_shared_stats(&self) -> (usize, usize, Vec<String>) {
        self.state.lock().dispatch.key_shared_stats()
    }

    /// Entries queued for (re)delivery ahead of new ones (for stats).
    pub fn redelivery_queue(&self) -> usize {
        self.state.lock().dispatch.redelivery_queue()
    }

    /// Entries waiting for their delivery time (for stats).
    pub fn delayed_entries(&self) -> (usize, usize) {
        self.state.lock().dispatch.delayed_entries()
    }

    /// Unacknowledged-and-delivered entry count (for stats).
    pub fn pending_entries(&self) -> usize {
        self.state.lock().dispatch.pending_entries()
    }

    /// Messages not yet acknowledged.
    pub async fn backlog(&self) -> u64 {
        let (md, ranges, partial) = self.cursor.with_state(|s| {
            (
                s.mark_delete,
                s.acked.iter().collect::<Vec<_>>(),
                s.batch_acks
                    .iter()
                    .map(|(p, set)| (*p, set.iter().map(|w| w.count_ones() as u64).sum::<u64>()))
                    .collect::<Vec<(Position, u64)>>(),
            )
        });
        let ml = &self.ml;
        let mut total = match ml.messages_after(md).await {
            Ok(n) => n,
            Err(e) => {
                debug!(error = %e, "backlog unavailable");
                return 0;
            }
        };
        for (s, e) in ranges {
            total = total.saturating_sub(
                ml.messages_in(s.ledger, s.entry, e.entry)
                    .await
                    .unwrap_or(0),
            );
        }
        // partly acked batches: their acked indexes are no longer backlog
        for (p, unacked) in partial {
            let size = ml
                .messages_in(p.ledger, p.entry, p.entry)
                .await
                .unwrap_or(0);
            total = total.saturating_sub(size.saturating_sub(unacked));
        }
        total
    }

    /// Waits for a wake-up, or at most `limit`.
    async fn idle(&self, limit: Option<Duration>) {
        match limit {
            Some(d) => {
                let _ = tokio::time::timeout(d, self.wake.notified()).await;
            }
            None => self.wake.notified().await,
        }
    }

    /// Persists and loads delayed-index segments as the machine asks (without holding the
    /// lock across the I/O).
    async fn tend_delayed(&self, last_flush: &mut u64) {
        let now = self.now();
        let force = now.saturating_sub(*last_flush) >= 1000;
        let (flush, load) = self.state.lock().dispatch.tend_delayed(now, force);
        let meta = self.cursor.meta();
        if let Some(f) = flush {
            *last_flush = now;
            let written = delayed::write(meta, f).await;
            self.state.lock().dispatch.delayed_flushed(written);
        }
        if let Some(l) = load {
            let entries = delayed::read(meta, l).await;
            self.state.lock().dispatch.delayed_loaded(entries);
        }
    }

    /// Hands read entries to the machine and sends what it decides, in order, before any
    /// seek can come between (the lock is held while the sends are queued; queuing does not
    /// wait). Returns (entries delivered, how long the dispatcher may sleep), or None if a
    /// seek raced the read.
    fn hand_out(
        &self,
        entries: Vec<(Position, Bytes)>,
        epoch: u64,
    ) -> Option<(usize, Option<Duration>)> {
        let metas: Vec<(Position, Option<EntryMeta>)> = entries
            .iter()
            .map(|(p, d)| {
                let meta = pentry::peek_dispatch(d).ok().map(|i| EntryMeta {
                    messages: i.messages,
                    key_slot: i.key_slot,
                    deliver_at: i.deliver_at.and_then(|t| u64::try_from(t).ok()),
                });
                (*p, meta)
            })
            .collect();
        let now = self.now();
        let cursor = &self.cursor;
        let view = self.view();
        let mut sent = Vec::new();
        let limit = {
            let mut st = self.state.lock();
            let (deliveries, limit) = st
                .dispatch
                .hand_out(&metas, epoch, now, &|p| cursor.is_acked(p))?;
            for d in &deliveries {
                if let Some(c) = st.consumers.get(&d.consumer) {
                    let data = entries[d.index].1.clone();
                    self.send(c, d, data, view.as_deref());
                    sent.push((Arc::clone(c), d.messages, entries[d.index].1.len()));
                }
            }
            limit
        };
        for (c, messages, bytes) in &sent {
            c.out.record(*messages as u64, *bytes as u64);
            self.out.record(*messages as u64, *bytes as u64);
            self.topic_limit.charge(*messages as u64, *bytes as u64);
            self.limit.charge(*messages as u64, *bytes as u64);
        }
        Some((sent.len(), limit))
    }

    /// Queues one MESSAGE: with the ack set of a partly acknowledged batch, and, from a
    /// compacted view, only the batch's live messages left unacknowledged.
    fn send(&self, c: &Consumer, d: &Delivery, data: Bytes, view: Option<&CompactedView>) {
        let p = d.position;
        let mut id = commands::message_id(p.ledger, p.entry as u64);
        id.partition = Some(c.partition);
        let mut ack_set = self.cursor.batch_ack_set(p).unwrap_or_default();
        if let Some(view) = view.filter(|v| p <= v.horizon)
            && let Some(live) = view.live_set(p)
        {
            if ack_set.is_empty() {
                ack_set = live.to_vec();
            } else {
                for (w, l) in ack_set.iter_mut().zip(live) {
                    *w &= l;
                }
            }
        }
        c.conn.send_message(
            commands::message(c.consumer_id, id, d.redeliveries, ack_set),
            data,
        );
    }
}

async fn dispatcher(sub: Arc<Subscription>) {
    let mut last_rx = sub.ml.subscribe_last();
    // the delayed-delivery index of a durable subscription comes back from its segments
    let horizon_ms = sub.cfg.delayed_horizon.as_millis() as u64;
    if let Some(prefix) = delayed::prefix_of(&sub.cursor) {
        let mut idx = DelayedIndex::new(Some(prefix), horizon_ms);
        match delayed::restore(sub.cursor.meta(), &mut idx, sub.now()).await {
            Ok(()) => sub.state.lock().dispatch.set_delayed(idx),
            Err(e) => {
                warn!(subscription = %sub.name, error = %e, "delayed-delivery index not restored; delayed entries are found again in the log")
            }
        }
    }
    let mut last_flush = sub.now();
    loop {
        if sub.is_closed() {
            return;
        }
        // over a dispatch rate: wait out the debt (permits and reads resume after)
        if let Some(wait) = sub.topic_limit.wait().max(sub.limit.wait()) {
            tokio::time::sleep(wait).await;
            continue;
        }
        let _ = last_rx.borrow_and_update();
        sub.tend_delayed(&mut last_flush).await;
        let (plan, blocked) = {
            let now = sub.now();
            let md = sub.cursor.mark_delete();
            let cursor = &sub.cursor;
            let mut st = sub.state.lock();
            let Shared {
                dispatch,
                consumers,
            } = &mut *st;
            // consumers whose connections are backlogged are sent nothing this pass
            let mut blocked = false;
            for (k, c) in consumers.iter() {
                let b = c.conn.backlogged();
                blocked |= b;
                if dispatch.set_blocked(*k, b) {
                    THROTTLED.fetch_add(1, Ordering::Relaxed);
                }
            }
            (dispatch.plan(now, md, &|p| cursor.is_acked(p)), blocked)
        };
        let key_shared = sub.sub_type() == SubType::KeyShared;
        if plan.budget <= 0 {
            // a backlogged connection drains on its own: look again soon
            let limit = if blocked {
                Some(
                    plan.idle_limit
                        .map_or(BACKLOG_RECHECK, |l| l.min(BACKLOG_RECHECK)),
                )
            } else {
                plan.idle_limit
            };
            sub.idle(limit).await;
            continue;
        }
        let mut entries = Vec::new();
        let mut from_log = false;
        if !plan.redeliver.is_empty() {
            for p in plan.redeliver {
                match sub.read_entry(p).await {
                    Ok(d) => entries.push((p, d)),
                    Err(e) => {
                        warn!(subscription = %sub.name, position = %p, error = %e, "cannot read entry for redelivery; skipping it");
                        sub.state.lock().dispatch.skip_held(p);
                    }
                }
            }
        } else if !plan.may_read {
            // read-ahead limit: wait for held entries to drain
            sub.idle(plan.idle_limit).await;
            continue;
        } else if let Some(view) = sub.view().filter(|v| plan.read_after < v.horizon) {
            // a compacted reader short of the horizon reads the compacted view
            let n = (plan.budget as usize).min(READ_BATCH);
            let (e, last) = sub.read_compacted_after(&view, plan.read_after, n).await;
            if !sub.state.lock().dispatch.read_done(plan.epoch, Some(last)) {
                continue;
            }
            if e.is_empty() {
                continue;
            }
            entries = e;
            from_log = true;
        } else {
            let n = (plan.budget as usize).min(READ_BATCH);
            let start = match sub.ml.next_position(plan.read_after) {
                Some(p) => p,
                None => {
                    if sub.ml.terminated().is_some() {
                        sub.tell_end_of_topic();
                    }
                    tokio::select! {
                        _ = sub.idle(plan.idle_limit) => {}
                        _ = last_rx.changed() => {}
                    }
                    continue;
                }
            };
            let s2 = Arc::clone(&sub);
            match sub.ml.read_from(start, n, move |p| s2.skips(p)).await {
                Ok((e, examined)) => {
                    // never past what was examined: entries appended meanwhile are next
                    if !sub.state.lock().dispatch.read_done(plan.epoch, examined) {
                        continue; // a seek moved the cursor while we read
                    }
                    entries = e;
                    from_log = true;
                }
                Err(e) => {
                    warn!(subscription = %sub.name, error = %e, "read failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
            if entries.is_empty() {
                continue;
            }
        }
        let Some((delivered, idle_limit)) = sub.hand_out(entries, plan.epoch) else {
            continue;
        };
        if key_shared && delivered == 0 && !from_log {
            sub.idle(idle_limit).await;
        }
    }
}
