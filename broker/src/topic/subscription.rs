//! Subscriptions and their dispatchers: who gets which entry, permits, redelivery.
//!
//! One dispatcher task per subscription reads entries after the cursor (or the positions
//! queued for redelivery, which go first and keep their order), and hands whole entries to
//! consumers that have permits: the active consumer for Exclusive/Failover, round robin for
//! Shared, and for Key_Shared the consumer owning the entry's hash slot (see `key_shared`):
//! an entry whose slot is still locked by another consumer's unacknowledged entries is held,
//! in order, and later entries of that slot queue behind it. Every delivered entry is remembered with its consumer until acknowledged, so a
//! consumer that leaves gives its entries back. Redelivery counts are kept for every
//! subscription type, so client-side dead-letter policies work everywhere.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use magnetar_managed_ledger::clock::now_ms;
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
use crate::topic::key_shared::{KeySharedSpec, OrderLocks, Selector};
use crate::topic::link::Link;

/// Protocol version from which clients understand ACTIVE_CONSUMER_CHANGE.
const ACTIVE_CONSUMER_CHANGE_VERSION: i32 = 12;

static NEXT_CONSUMER_KEY: AtomicU64 = AtomicU64::new(1);

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
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            key_shared_lease: Duration::from_secs(30),
            key_shared_max_held: 5_000,
            delayed_horizon: Duration::from_secs(60),
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
    pub permits: AtomicI64,
    pub unacked: AtomicI64,
    pub out: Meter,
    /// Messages acknowledged (counted per ack command entry).
    pub acks: Meter,
    pub connected_since: String,
    pub address: String,
    /// Closed by the broker (CLOSE_CONSUMER sent); the client will subscribe again.
    pub kicked: AtomicBool,
    /// Last ack, or the delivery that ended an idle spell (ms): how hung consumers are found.
    pub last_progress_ms: AtomicU64,
    /// Found hung (Key_Shared): passed over for slots until it acknowledges something.
    pub hung: AtomicBool,
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
            permits: AtomicI64::new(0),
            unacked: AtomicI64::new(0),
            out: Meter::default(),
            acks: Meter::default(),
            connected_since: magnetar_managed_ledger::clock::now_ms().to_string(),
            address,
            kicked: AtomicBool::new(false),
            last_progress_ms: AtomicU64::new(now_ms()),
            hung: AtomicBool::new(false),
            end_of_topic_ok: traits.end_of_topic,
            end_of_topic_sent: AtomicBool::new(false),
        })
    }

    /// Has acked nothing for `lease` while holding unacknowledged messages or asking for
    /// none (no permits); once found so, it stays hung until it acknowledges (taking its
    /// messages back does not cure it: the client still holds them).
    fn stalled(&self, now: u64, lease: Duration) -> bool {
        if self.hung.load(Ordering::Relaxed) {
            return true;
        }
        let idle = now.saturating_sub(self.last_progress_ms.load(Ordering::Relaxed))
            > lease.as_millis() as u64;
        let hung = idle
            && (self.unacked.load(Ordering::Relaxed) > 0
                || self.permits.load(Ordering::Relaxed) <= 0);
        if hung {
            self.hung.store(true, Ordering::Relaxed);
        }
        hung
    }

    /// The consumer acknowledged something.
    pub fn progressed(&self) {
        self.last_progress_ms.store(now_ms(), Ordering::Relaxed);
        self.hung.store(false, Ordering::Relaxed);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error("Exclusive consumer is already connected")]
    ExclusiveBusy,
    #[error("Subscription is of a different type: {existing:?}")]
    TypeMismatch { existing: SubType },
    #[error("Subscription is closed")]
    Closed,
    #[error("{0}")]
    KeySharedAssign(String),
}

struct Delivered {
    consumer: u64,
    messages: u32,
}

struct SubState {
    sub_type: SubType,
    consumers: Vec<Arc<Consumer>>,
    active: Option<u64>,
    /// The last position read from the log for first delivery.
    read_after: Position,
    redeliver: BTreeSet<Position>,
    redelivery_counts: HashMap<Position, u32>,
    pending: HashMap<Position, Delivered>,
    rr: usize,
    /// Bumped by every reset (seek), so a read that raced one is thrown away.
    epoch: u64,
    /// Key_Shared: slot owners and per-slot order.
    selector: Selector,
    order: OrderLocks,
    /// Shared/Key_Shared: entries waiting for their delivery time.
    delayed: DelayedIndex,
}

impl SubState {
    fn consumer(&self, key: u64) -> Option<&Arc<Consumer>> {
        self.consumers.iter().find(|c| c.key == key)
    }

    /// Takes a delivered entry back from its consumer (acked, or to be redelivered).
    fn take_pending(&mut self, p: Position) -> Option<Delivered> {
        let d = self.pending.remove(&p)?;
        if let Some(c) = self.consumer(d.consumer) {
            c.unacked.fetch_sub(d.messages as i64, Ordering::Relaxed);
        }
        self.order.undelivered(p, now_ms());
        Some(d)
    }

    /// Queues an entry for (re)delivery ahead of new ones.
    fn hold(&mut self, p: Position) {
        if self.redeliver.insert(p) {
            self.order.held(p);
        }
    }

    fn unhold(&mut self, p: Position) {
        if self.redeliver.remove(&p) {
            self.order.unheld(p);
        }
    }

    /// Takes a delivered entry back and queues it again, counting a redelivery if `count`.
    fn requeue(&mut self, p: Position, count: bool) {
        self.take_pending(p);
        self.hold(p);
        if count {
            *self.redelivery_counts.entry(p).or_insert(0) += 1;
        }
    }

    /// The entry is acknowledged: forget it everywhere.
    fn release(&mut self, p: Position) {
        self.take_pending(p);
        self.unhold(p);
        self.redelivery_counts.remove(&p);
        self.order.forget(p);
    }

    /// Forgets all delivery state; returns persisted delayed-index records to delete.
    fn clear(&mut self) -> Vec<String> {
        self.redeliver.clear();
        self.pending.clear();
        self.redelivery_counts.clear();
        self.order.clear();
        let stale = self.delayed.clear();
        for c in &self.consumers {
            c.unacked.store(0, Ordering::Relaxed);
        }
        stale
    }

    /// Whether entries are delayed for this subscription type (as in Pulsar, only Shared
    /// and Key_Shared honour a delivery time).
    fn delays(&self) -> bool {
        matches!(self.sub_type, SubType::Shared | SubType::KeyShared)
    }

    /// Key_Shared: the consumer for `slot` now, passing over hung consumers.
    fn slot_target(&self, slot: u32, now: u64, lease: Duration) -> Option<u64> {
        self.selector.select(slot, |k| {
            self.consumer(k).is_none_or(|c| c.stalled(now, lease))
        })
    }

    /// Key_Shared: where an entry of `slot` may go now, if anywhere. `spent` counts entries
    /// already promised to consumers in this pass.
    fn key_shared_route(
        &self,
        slot: u32,
        now: u64,
        lease: Duration,
        spent: &HashMap<u64, i64>,
    ) -> Option<Arc<Consumer>> {
        let target = self.slot_target(slot, now, lease)?;
        if !self.selector.allow_out_of_order()
            && let Some(lock) = self.order.locks.get(&slot)
            && lock.owner != target
        {
            return None;
        }
        let c = self.consumer(target)?;
        let left = c.permits.load(Ordering::Acquire) - spent.get(&target).copied().unwrap_or(0);
        (left > 0).then(|| Arc::clone(c))
    }

    /// Key_Shared: takes back the entries of slots whose owner stopped acking (hung, or
    /// sitting on the slot for a whole lease) while entries of the slot wait for another
    /// consumer. Returns whether anything moved.
    fn revoke_expired_locks(&mut self, now: u64, lease: Duration) -> bool {
        let lease_ms = lease.as_millis() as u64;
        let expired: Vec<(u32, u64)> = self
            .order
            .locks
            .iter()
            .filter(|(slot, lock)| {
                self.order.has_held(**slot)
                    && self.slot_target(**slot, now, lease) != Some(lock.owner)
                    && (now.saturating_sub(lock.since_ms) > lease_ms
                        || self
                            .consumer(lock.owner)
                            .is_none_or(|c| c.stalled(now, lease)))
            })
            .map(|(slot, lock)| (*slot, lock.owner))
            .collect();
        for &(slot, owner) in &expired {
            let mine: Vec<Position> = self
                .pending
                .iter()
                .filter(|(p, d)| d.consumer == owner && self.order.slot_of(p) == Some(slot))
                .map(|(p, _)| *p)
                .collect();
            warn!(
                slot,
                consumer = owner,
                entries = mine.len(),
                "Key_Shared consumer stopped acknowledging; its slot moves to another consumer"
            );
            // what it holds is gone from our books but not from its queue: until it acks
            // again it gets no slots, or it would sit on them with no permits
            if let Some(c) = self.consumer(owner) {
                c.hung.store(true, Ordering::Relaxed);
            }
            for p in mine {
                self.requeue(p, true);
            }
            self.order.locks.remove(&slot);
        }
        !expired.is_empty()
    }
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
    state: Mutex<SubState>,
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
        let s = Arc::new(Subscription {
            name: name.to_string(),
            cursor,
            ml,
            cfg,
            compacted,
            read_compacted: AtomicBool::new(false),
            state: Mutex::new(SubState {
                sub_type,
                consumers: Vec::new(),
                active: None,
                read_after: md,
                redeliver: BTreeSet::new(),
                redelivery_counts: HashMap::new(),
                pending: HashMap::new(),
                rr: 0,
                epoch: 0,
                selector: Selector::default(),
                order: OrderLocks::default(),
                delayed: DelayedIndex::new(delayed_prefix, horizon_ms),
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

    /// Recomputes this subscription's and its consumers' rates.
    pub fn tick(&self, now: std::time::Instant) {
        self.out.tick(now);
        self.redelivered.tick(now);
        for c in self.state.lock().consumers.iter() {
            c.out.tick(now);
            c.acks.tick(now);
        }
    }

    pub fn sub_type(&self) -> SubType {
        self.state.lock().sub_type
    }

    pub fn consumers(&self) -> Vec<Arc<Consumer>> {
        self.state.lock().consumers.clone()
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
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
        let mut st = self.state.lock();
        if !st.consumers.is_empty() && st.sub_type != sub_type {
            return Err(SubscribeError::TypeMismatch {
                existing: st.sub_type,
            });
        }
        if sub_type == SubType::Exclusive && !st.consumers.is_empty() {
            return Err(SubscribeError::ExclusiveBusy);
        }
        if sub_type == SubType::KeyShared {
            let spec = match key_shared {
                Some(s) => s.clone(),
                None => KeySharedSpec::from_proto(None).map_err(SubscribeError::KeySharedAssign)?,
            };
            st.selector
                .add(c.key, &spec)
                .map_err(SubscribeError::KeySharedAssign)?;
        }
        st.sub_type = sub_type;
        st.consumers.push(c);
        self.elect(&mut st);
        drop(st);
        self.wake.notify_one();
        Ok(())
    }

    /// Removes a consumer; its unacknowledged entries go back for redelivery. Returns the
    /// number of consumers left.
    pub fn remove_consumer(&self, key: u64) -> usize {
        let mut st = self.state.lock();
        st.consumers.retain(|c| c.key != key);
        st.selector.remove(key);
        let mine: Vec<Position> = st
            .pending
            .iter()
            .filter(|(_, d)| d.consumer == key)
            .map(|(p, _)| *p)
            .collect();
        for p in mine {
            st.requeue(p, true);
        }
        self.elect(&mut st);
        let left = st.consumers.len();
        drop(st);
        self.wake.notify_one();
        left
    }

    /// Picks the active consumer of Exclusive/Failover subscriptions (priority, then name)
    /// and tells each consumer whether it is active when that changes.
    fn elect(&self, st: &mut SubState) {
        if !matches!(st.sub_type, SubType::Exclusive | SubType::Failover) {
            st.active = None;
            return;
        }
        let best = st
            .consumers
            .iter()
            .min_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)))
            .map(|c| c.key);
        if best == st.active {
            return;
        }
        let old = st.active;
        st.active = best;
        // the old active consumer's unacked entries go to the new one, in order
        if let Some(old) = old {
            let mine: Vec<Position> = st
                .pending
                .iter()
                .filter(|(_, d)| d.consumer == old)
                .map(|(p, _)| *p)
                .collect();
            for p in mine {
                st.requeue(p, false);
            }
        }
        if st.sub_type == SubType::Failover {
            for c in &st.consumers {
                if c.client_protocol >= ACTIVE_CONSUMER_CHANGE_VERSION {
                    c.conn.send(commands::active_consumer_change(
                        c.consumer_id,
                        Some(c.key) == best,
                    ));
                }
            }
        }
    }

    pub fn flow(&self, c: &Consumer, permits: u32) {
        c.permits.fetch_add(permits as i64, Ordering::AcqRel);
        self.wake.notify_one();
    }

    /// After acks: a Key_Shared slot may have been unlocked.
    fn acked(&self, st: &SubState) {
        if st.sub_type == SubType::KeyShared {
            self.wake.notify_one();
        }
    }

    /// Individual acks of whole entries. Returns the cursor change number.
    pub fn ack_individual(&self, positions: &[Position]) -> u64 {
        {
            let mut st = self.state.lock();
            for p in positions {
                st.release(*p);
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
            .pending
            .get(&p)
            .map(|d| d.messages as usize);
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
            let mut st = self.state.lock();
            st.release(p);
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
            let mut st = self.state.lock();
            let mut done: Vec<Position> = st.pending.keys().filter(|q| **q <= p).copied().collect();
            done.extend(st.redeliver.range(..=p).copied());
            for q in done {
                st.release(q);
            }
            self.acked(&st);
        }
        self.cursor.ack_cumulative(p)
    }

    /// Puts a consumer's unacknowledged entries (or only `only`) back for redelivery.
    pub fn redeliver(&self, consumer: u64, only: Option<&[Position]>) {
        let mut st = self.state.lock();
        let mine: Vec<Position> = st
            .pending
            .iter()
            .filter(|(p, d)| d.consumer == consumer && only.is_none_or(|o| o.contains(p)))
            .map(|(p, _)| *p)
            .collect();
        for p in mine {
            st.requeue(p, true);
            self.redelivered.record(1, 0);
        }
        drop(st);
        self.wake.notify_one();
    }

    /// Moves the cursor so delivery restarts after `md`.
    pub fn reset(&self, md: Position) -> u64 {
        let seq = self.cursor.reset(md);
        let mut st = self.state.lock();
        st.read_after = md;
        st.epoch += 1;
        let stale = st.clear();
        drop(st);
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
        let consumers = std::mem::take(&mut st.consumers);
        st.selector = Selector::default();
        for c in &consumers {
            c.kicked.store(true, Ordering::Release);
        }
        st.active = None;
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
            let skip = self.cursor.is_acked(p) || {
                let st = self.state.lock();
                st.pending.contains_key(&p) || st.delayed.contains(p)
            };
            if skip {
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
        for c in self.state.lock().consumers.iter() {
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
        let st = self.state.lock();
        (
            st.order.held_total(),
            st.order.locks.len(),
            st.consumers
                .iter()
                .filter(|c| c.hung.load(Ordering::Relaxed))
                .map(|c| c.name.clone())
                .collect(),
        )
    }

    /// Entries queued for (re)delivery ahead of new ones (for stats).
    pub fn redelivery_queue(&self) -> usize {
        self.state.lock().redeliver.len()
    }

    /// Entries waiting for their delivery time (for stats).
    pub fn delayed_entries(&self) -> (usize, usize) {
        let st = self.state.lock();
        (st.delayed.len(), st.delayed.persisted_segments())
    }

    /// Unacknowledged-and-delivered entry count (for stats).
    pub fn pending_entries(&self) -> usize {
        self.state.lock().pending.len()
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

    /// Picks the consumer for the next entry, or None if nobody can take one now.
    fn pick(&self, st: &mut SubState) -> Option<Arc<Consumer>> {
        let has_permits = |c: &Arc<Consumer>| c.permits.load(Ordering::Acquire) > 0;
        match st.sub_type {
            SubType::Exclusive | SubType::Failover => {
                let a = st.active?;
                st.consumers
                    .iter()
                    .find(|c| c.key == a)
                    .filter(|c| has_permits(c))
                    .cloned()
            }
            _ => {
                let n = st.consumers.len();
                for i in 0..n {
                    let idx = (st.rr + i) % n;
                    if has_permits(&st.consumers[idx]) {
                        st.rr = (idx + 1) % n;
                        return Some(Arc::clone(&st.consumers[idx]));
                    }
                }
                None
            }
        }
    }

    fn deliver(&self, c: &Consumer, p: Position, data: Bytes, messages: u32, st: &mut SubState) {
        c.permits.fetch_sub(messages as i64, Ordering::AcqRel);
        let now = now_ms();
        if c.unacked.fetch_add(messages as i64, Ordering::Relaxed) <= 0 {
            c.last_progress_ms.store(now, Ordering::Relaxed);
        }
        st.order.delivered(p, c.key, now);
        c.out.record(messages as u64, data.len() as u64);
        self.out.record(messages as u64, data.len() as u64);
        self.topic_limit.charge(messages as u64, data.len() as u64);
        self.limit.charge(messages as u64, data.len() as u64);
        let count = st.redelivery_counts.get(&p).copied().unwrap_or(0);
        st.pending.insert(
            p,
            Delivered {
                consumer: c.key,
                messages,
            },
        );
        let mut id = commands::message_id(p.ledger, p.entry as u64);
        id.partition = Some(c.partition);
        let mut ack_set = self.cursor.batch_ack_set(p).unwrap_or_default();
        if let Some(view) = self.view().filter(|v| p <= v.horizon)
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
        c.conn
            .send_message(commands::message(c.consumer_id, id, count, ack_set), data);
    }
}

const READ_BATCH: usize = 100;

impl Subscription {
    /// How often a Key_Shared dispatcher with held entries looks again for expired leases.
    fn lease_tick(&self) -> Duration {
        (self.cfg.key_shared_lease / 2).clamp(Duration::from_millis(10), Duration::from_secs(1))
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

    /// How long the dispatcher may sleep: until a lease tick when Key_Shared entries are
    /// held, until the next delayed entry is due (looking again at least every second while
    /// any wait, for segments to load and buffers to flush).
    fn idle_limit(&self, st: &SubState, now: u64) -> Option<Duration> {
        let mut limit = None;
        if st.sub_type == SubType::KeyShared && st.order.held_total() > 0 {
            limit = Some(self.lease_tick());
        }
        if !st.delayed.is_empty() {
            let due = st
                .delayed
                .next_due()
                .map_or(1000, |t| t.saturating_sub(now));
            let d = Duration::from_millis(due.clamp(5, 1000));
            limit = Some(limit.map_or(d, |l: Duration| l.min(d)));
        }
        limit
    }

    /// Moves due delayed entries to the front of the line; persists and loads index
    /// segments as needed (without holding the state lock across the I/O).
    async fn tend_delayed(&self, last_flush: &mut u64) {
        let now = now_ms();
        let (flush, load) = {
            let mut st = self.state.lock();
            if st.delayed.is_empty() {
                return;
            }
            for p in st.delayed.pop_due(now) {
                st.hold(p);
            }
            let force = now.saturating_sub(*last_flush) >= 1000;
            (st.delayed.take_flush(now, force), st.delayed.take_load(now))
        };
        let meta = self.cursor.meta();
        if let Some(f) = flush {
            *last_flush = now;
            let written = delayed::write(meta, f).await;
            self.state.lock().delayed.flushed(written);
        }
        if let Some(l) = load {
            let entries = delayed::read(meta, l).await;
            let mut st = self.state.lock();
            delayed::add_loaded(&mut st.delayed, entries);
        }
    }
}

/// Key_Shared: held entries that can go now, in order; a slot whose first held entry cannot
/// go blocks its later ones, so nothing overtakes within a slot.
fn key_shared_candidates(st: &SubState, now: u64, lease: Duration, limit: usize) -> Vec<Position> {
    let mut blocked = HashSet::new();
    let mut spent: HashMap<u64, i64> = HashMap::new();
    let mut out = Vec::new();
    for p in &st.redeliver {
        if out.len() >= limit {
            break;
        }
        let Some(slot) = st.order.slot_of(p) else {
            // not read since it was queued: read it, and nothing after it this time
            out.push(*p);
            break;
        };
        if blocked.contains(&slot) {
            continue;
        }
        match st.key_shared_route(slot, now, lease, &spent) {
            Some(c) => {
                *spent.entry(c.key).or_insert(0) += 1;
                out.push(*p);
            }
            None => {
                blocked.insert(slot);
            }
        }
    }
    out
}

impl Subscription {
    /// Hands read entries to consumers, holding what cannot go now. Returns (entries
    /// delivered, whether held Key_Shared entries need lease ticks), or None if a seek
    /// raced the read.
    fn hand_out(
        &self,
        entries: Vec<(Position, Bytes)>,
        epoch: u64,
        key_shared: bool,
    ) -> Option<(usize, Option<Duration>)> {
        let lease = self.cfg.key_shared_lease;
        let mut st = self.state.lock();
        if st.epoch != epoch {
            return None;
        }
        let now = now_ms();
        let mut blocked = HashSet::new();
        let mut delivered = 0usize;
        let no_spend = HashMap::new();
        for (p, d) in entries {
            if self.cursor.is_acked(p) {
                st.release(p);
                continue;
            }
            if st.pending.contains_key(&p) {
                st.unhold(p);
                continue;
            }
            // one look at the metadata serves delay, key and permits; an entry whose
            // metadata cannot be read goes as one message under the no-key slot
            let info = pentry::peek_dispatch(&d).ok();
            // first read of an entry with a delivery time still ahead: it waits in the index
            if st.delays()
                && !st.redeliver.contains(&p)
                && let Some(at) = info
                    .and_then(|i| i.deliver_at)
                    .and_then(|t| u64::try_from(t).ok())
                && at > now
                && st.delayed.add(p, at, now)
            {
                continue;
            }
            let messages = info.map_or(1, |i| i.messages);
            let target = if key_shared {
                let slot = info.map_or_else(
                    || magnetar_protocol::hash::key_slot(magnetar_protocol::hash::NONE_KEY),
                    |i| i.key_slot,
                );
                let queued = st.redeliver.contains(&p);
                st.order.learn(p, slot, queued);
                // a slot's entries go in order: none overtakes one held before it
                let behind = blocked.contains(&slot) || (!queued && st.order.has_held(slot));
                let target = if behind {
                    None
                } else {
                    st.key_shared_route(slot, now, lease, &no_spend)
                };
                if target.is_none() {
                    blocked.insert(slot);
                }
                target
            } else {
                self.pick(&mut st)
            };
            match target {
                Some(c) => {
                    st.unhold(p);
                    self.deliver(&c, p, d, messages, &mut st);
                    delivered += 1;
                }
                // read but not sendable now: first in line next time
                None => st.hold(p),
            }
        }
        let limit = self.idle_limit(&st, now);
        Some((delivered, limit))
    }
}

async fn dispatcher(sub: Arc<Subscription>) {
    let mut last_rx = sub.ml.subscribe_last();
    let lease = sub.cfg.key_shared_lease;
    // the delayed-delivery index of a durable subscription comes back from its segments
    let horizon_ms = sub.cfg.delayed_horizon.as_millis() as u64;
    if let Some(prefix) = delayed::prefix_of(&sub.cursor) {
        let mut idx = DelayedIndex::new(Some(prefix), horizon_ms);
        match delayed::restore(sub.cursor.meta(), &mut idx, now_ms()).await {
            Ok(()) => sub.state.lock().delayed = idx,
            Err(e) => {
                warn!(subscription = %sub.name, error = %e, "delayed-delivery index not restored; delayed entries are found again in the log")
            }
        }
    }
    let mut last_flush = now_ms();
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
        // what can be sent, and to how many permits
        let (budget, redeliver, read_after, epoch, key_shared, may_read, idle_limit) = {
            let mut st = sub.state.lock();
            let key_shared = st.sub_type == SubType::KeyShared;
            let budget: i64 = match st.sub_type {
                SubType::Exclusive | SubType::Failover => st
                    .active
                    .and_then(|a| st.consumer(a))
                    .map_or(0, |c| c.permits.load(Ordering::Acquire)),
                _ => st
                    .consumers
                    .iter()
                    .map(|c| c.permits.load(Ordering::Acquire).max(0))
                    .sum(),
            };
            let now = now_ms();
            if key_shared && st.order.held_total() > 0 {
                st.revoke_expired_locks(now, lease);
            }
            let cursor = &sub.cursor;
            let redeliver: Vec<Position> = if budget > 0 {
                let acked: Vec<Position> = st
                    .redeliver
                    .iter()
                    .filter(|p| cursor.is_acked(**p))
                    .copied()
                    .collect();
                for p in acked {
                    st.release(p);
                }
                let limit = (budget as usize).min(READ_BATCH);
                if key_shared {
                    key_shared_candidates(&st, now, lease, limit)
                } else {
                    st.redeliver.iter().take(limit).copied().collect()
                }
            } else {
                Vec::new()
            };
            // a reset (seek) may have moved the cursor past what we read
            let md = sub.cursor.mark_delete();
            if st.read_after < md {
                st.read_after = md;
            }
            let held = st.order.held_total();
            (
                budget,
                redeliver,
                st.read_after,
                st.epoch,
                key_shared,
                !key_shared || held < sub.cfg.key_shared_max_held,
                sub.idle_limit(&st, now),
            )
        };
        if budget <= 0 {
            sub.idle(idle_limit).await;
            continue;
        }
        let mut entries = Vec::new();
        let mut from_log = false;
        if !redeliver.is_empty() {
            for p in redeliver {
                match sub.read_entry(p).await {
                    Ok(d) => entries.push((p, d)),
                    Err(e) => {
                        warn!(subscription = %sub.name, position = %p, error = %e, "cannot read entry for redelivery; skipping it");
                        sub.state.lock().unhold(p);
                    }
                }
            }
        } else if !may_read {
            // read-ahead limit: wait for held entries to drain
            sub.idle(idle_limit).await;
            continue;
        } else if let Some(view) = sub.view().filter(|v| read_after < v.horizon) {
            // a compacted reader short of the horizon reads the compacted view
            let n = (budget as usize).min(READ_BATCH);
            let (e, last) = sub.read_compacted_after(&view, read_after, n).await;
            {
                let mut st = sub.state.lock();
                if st.epoch != epoch {
                    continue;
                }
                st.read_after = st.read_after.max(last);
            }
            if e.is_empty() {
                continue;
            }
            entries = e;
            from_log = true;
        } else {
            let n = (budget as usize).min(READ_BATCH);
            let skip = {
                let cursor = Arc::clone(&sub.cursor);
                let sub2 = Arc::clone(&sub);
                move |p: Position| {
                    cursor.is_acked(p) || {
                        let st = sub2.state.lock();
                        st.pending.contains_key(&p) || st.delayed.contains(p)
                    }
                }
            };
            let start = match sub.ml.next_position(read_after) {
                Some(p) => p,
                None => {
                    if sub.ml.terminated().is_some() {
                        sub.tell_end_of_topic();
                    }
                    tokio::select! {
                        _ = sub.idle(idle_limit) => {}
                        _ = last_rx.changed() => {}
                    }
                    continue;
                }
            };
            match sub.ml.read_from(start, n, skip).await {
                Ok((e, examined)) => {
                    // never past what was examined: entries appended meanwhile are next
                    let mut st = sub.state.lock();
                    if st.epoch != epoch {
                        continue; // a seek moved the cursor while we read
                    }
                    if let Some(x) = examined {
                        st.read_after = st.read_after.max(x);
                    }
                    drop(st);
                    entries = e;
                    from_log = true;
                }
                Err(e) => {
                    warn!(subscription = %sub.name, error = %e, "read failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    continue;
                }
            }
            if entries.is_empty() {
                continue;
            }
        }
        let Some((delivered, idle_limit)) = sub.hand_out(entries, epoch, key_shared) else {
            continue;
        };
        if key_shared && delivered == 0 && !from_log {
            sub.idle(idle_limit).await;
        }
    }
}
