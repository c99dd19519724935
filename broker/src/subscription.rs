//! Subscriptions and their dispatchers: who gets which entry, permits, redelivery.
//!
//! One dispatcher task per subscription reads entries after the cursor (or the positions
//! queued for redelivery, which go first and keep their order), and hands whole entries to
//! consumers that have permits: the active consumer for Exclusive/Failover, round robin for
//! Shared. Every delivered entry is remembered with its consumer until acknowledged, so a
//! consumer that leaves gives its entries back. Redelivery counts are kept for every
//! subscription type, so client-side dead-letter policies work everywhere.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use bytes::Bytes;
use magnetar_protocol::proto::command_subscribe::SubType;
use magnetar_protocol::{commands, entry as pentry};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::connection::ConnTx;
use crate::cursor::Cursor;
use crate::managed_ledger::ManagedLedger;
use crate::position::Position;

/// Protocol version from which clients understand ACTIVE_CONSUMER_CHANGE.
const ACTIVE_CONSUMER_CHANGE_VERSION: i32 = 12;

static NEXT_CONSUMER_KEY: AtomicU64 = AtomicU64::new(1);

/// Most messages one entry can hold (each batch record takes at least a few bytes of a 5 MiB
/// entry); larger claimed batch sizes are refused rather than allocated for.
const MAX_BATCH: usize = 1 << 20;

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
    pub conn: ConnTx,
    pub client_protocol: i32,
    /// Whether to send CLOSE_CONSUMER after a seek so the client subscribes again (C++ and
    /// Java need it; the Rust crate replaces its consumer itself and must not get it).
    pub close_after_seek: bool,
    pub partition: i32,
    pub permits: AtomicI64,
    pub unacked: AtomicI64,
    pub msg_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub connected_since: String,
    pub address: String,
    /// Closed by the broker (CLOSE_CONSUMER sent); the client will subscribe again.
    pub kicked: AtomicBool,
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
        conn: ConnTx,
        (client_protocol, close_after_seek): (i32, bool),
        partition: i32,
        address: String,
    ) -> Arc<Consumer> {
        Arc::new(Consumer {
            key: NEXT_CONSUMER_KEY.fetch_add(1, Ordering::Relaxed),
            consumer_id,
            name,
            priority,
            conn,
            client_protocol,
            close_after_seek,
            partition,
            permits: AtomicI64::new(0),
            unacked: AtomicI64::new(0),
            msg_out: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            connected_since: crate::managed_ledger::now_ms().to_string(),
            address,
            kicked: AtomicBool::new(false),
        })
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
}

pub struct Subscription {
    pub name: String,
    pub cursor: Arc<Cursor>,
    ml: ManagedLedger,
    state: Mutex<SubState>,
    wake: Notify,
    closed: AtomicBool,
    pub msg_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub redelivered: AtomicU64,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("name", &self.name)
            .finish()
    }
}

impl Subscription {
    pub fn new(name: &str, sub_type: SubType, cursor: Arc<Cursor>, ml: ManagedLedger) -> Arc<Self> {
        let md = cursor.mark_delete();
        let s = Arc::new(Subscription {
            name: name.to_string(),
            cursor,
            ml,
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
            }),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            msg_out: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            redelivered: AtomicU64::new(0),
        });
        tokio::spawn(dispatcher(Arc::clone(&s)));
        s
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

    pub fn add_consumer(&self, c: Arc<Consumer>, sub_type: SubType) -> Result<(), SubscribeError> {
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
        let mine: Vec<Position> = st
            .pending
            .iter()
            .filter(|(_, d)| d.consumer == key)
            .map(|(p, _)| *p)
            .collect();
        for p in mine {
            st.pending.remove(&p);
            st.redeliver.insert(p);
            *st.redelivery_counts.entry(p).or_insert(0) += 1;
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
                st.pending.remove(&p);
                st.redeliver.insert(p);
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

    fn release(&self, st: &mut SubState, p: Position) {
        if let Some(d) = st.pending.remove(&p)
            && let Some(c) = st.consumers.iter().find(|c| c.key == d.consumer)
        {
            c.unacked.fetch_sub(d.messages as i64, Ordering::Relaxed);
        }
        st.redelivery_counts.remove(&p);
        st.redeliver.remove(&p);
    }

    /// Individual acks of whole entries. Returns the cursor change number.
    pub fn ack_individual(&self, positions: &[Position]) -> u64 {
        {
            let mut st = self.state.lock();
            for p in positions {
                self.release(&mut st, *p);
            }
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
            self.release(&mut st, p);
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
            let done: Vec<Position> = st.pending.keys().filter(|q| **q <= p).copied().collect();
            for q in done {
                self.release(&mut st, q);
            }
            st.redeliver.retain(|q| *q > p);
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
            if let Some(d) = st.pending.remove(&p)
                && let Some(c) = st.consumers.iter().find(|c| c.key == d.consumer)
            {
                c.unacked.fetch_sub(d.messages as i64, Ordering::Relaxed);
            }
            st.redeliver.insert(p);
            *st.redelivery_counts.entry(p).or_insert(0) += 1;
            self.redelivered.fetch_add(1, Ordering::Relaxed);
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
        st.redeliver.clear();
        st.pending.clear();
        st.redelivery_counts.clear();
        for c in &st.consumers {
            c.unacked.store(0, Ordering::Relaxed);
        }
        drop(st);
        self.wake.notify_one();
        seq
    }

    /// Detaches every consumer, as Pulsar does on seek: the caller sends them CLOSE_CONSUMER
    /// (after answering the seek) and the clients subscribe again with fresh permits, having
    /// dropped what they prefetched. Returns the detached consumers.
    pub fn detach_consumers(&self) -> Vec<Arc<Consumer>> {
        let mut st = self.state.lock();
        let consumers = std::mem::take(&mut st.consumers);
        for c in &consumers {
            c.kicked.store(true, Ordering::Release);
        }
        st.active = None;
        consumers
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake.notify_one();
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

    fn deliver(&self, c: &Consumer, p: Position, data: Bytes, st: &mut SubState) {
        let messages = pentry::peek_message_count(&data).unwrap_or(1);
        c.permits.fetch_sub(messages as i64, Ordering::AcqRel);
        c.unacked.fetch_add(messages as i64, Ordering::Relaxed);
        c.msg_out.fetch_add(messages as u64, Ordering::Relaxed);
        c.bytes_out.fetch_add(data.len() as u64, Ordering::Relaxed);
        self.msg_out.fetch_add(messages as u64, Ordering::Relaxed);
        self.bytes_out
            .fetch_add(data.len() as u64, Ordering::Relaxed);
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
        let ack_set = self.cursor.batch_ack_set(p).unwrap_or_default();
        c.conn
            .send_message(commands::message(c.consumer_id, id, count, ack_set), data);
    }
}

const READ_BATCH: usize = 100;

async fn dispatcher(sub: Arc<Subscription>) {
    let mut last_rx = sub.ml.subscribe_last();
    loop {
        if sub.is_closed() {
            return;
        }
        let _ = last_rx.borrow_and_update();
        // what can be sent, and to how many permits
        let (budget, redeliver, read_after, epoch) = {
            let mut st = sub.state.lock();
            let budget: i64 = match st.sub_type {
                SubType::Exclusive | SubType::Failover => st
                    .active
                    .and_then(|a| st.consumers.iter().find(|c| c.key == a))
                    .map_or(0, |c| c.permits.load(Ordering::Acquire)),
                _ => st
                    .consumers
                    .iter()
                    .map(|c| c.permits.load(Ordering::Acquire).max(0))
                    .sum(),
            };
            let cursor = &sub.cursor;
            let redeliver: Vec<Position> = if budget > 0 {
                let acked: Vec<Position> = st
                    .redeliver
                    .iter()
                    .filter(|p| cursor.is_acked(**p))
                    .copied()
                    .collect();
                for p in acked {
                    st.redeliver.remove(&p);
                }
                st.redeliver
                    .iter()
                    .take((budget as usize).min(READ_BATCH))
                    .copied()
                    .collect()
            } else {
                Vec::new()
            };
            // a reset (seek) may have moved the cursor past what we read
            let md = sub.cursor.mark_delete();
            if st.read_after < md {
                st.read_after = md;
            }
            (budget, redeliver, st.read_after, st.epoch)
        };
        if budget <= 0 {
            sub.wake.notified().await;
            continue;
        }
        let mut entries = Vec::new();
        let mut from_log = false;
        if !redeliver.is_empty() {
            for p in redeliver {
                match sub.ml.read(p).await {
                    Ok(d) => entries.push((p, d)),
                    Err(e) => {
                        warn!(subscription = %sub.name, position = %p, error = %e, "cannot read entry for redelivery; skipping it");
                        sub.state.lock().redeliver.remove(&p);
                    }
                }
            }
        } else {
            let n = (budget as usize).min(READ_BATCH);
            let skip = {
                let cursor = Arc::clone(&sub.cursor);
                let sub2 = Arc::clone(&sub);
                move |p: Position| cursor.is_acked(p) || sub2.state.lock().pending.contains_key(&p)
            };
            let start = match sub.ml.next_position(read_after) {
                Some(p) => p,
                None => {
                    tokio::select! {
                        _ = sub.wake.notified() => {}
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
        let mut st = sub.state.lock();
        if st.epoch != epoch {
            continue;
        }
        let mut leftover = Vec::new();
        for (p, d) in entries {
            if sub.cursor.is_acked(p) || (from_log && st.pending.contains_key(&p)) {
                st.redeliver.remove(&p);
                continue;
            }
            if st.pending.contains_key(&p) {
                st.redeliver.remove(&p);
                continue;
            }
            match sub.pick(&mut st) {
                Some(c) => {
                    st.redeliver.remove(&p);
                    sub.deliver(&c, p, d, &mut st);
                }
                None => leftover.push(p),
            }
        }
        // read but not sendable now: first in line next time
        for p in leftover {
            st.redeliver.insert(p);
        }
    }
}
