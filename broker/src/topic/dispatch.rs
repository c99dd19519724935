//! One subscription's dispatch, as a state machine: who gets which entry, permits and unacked
//! counts, redelivery, Key_Shared order and leases, delayed entries. Pure bookkeeping: it is
//! told what happened (a consumer joined or left, FLOW, an ack, a nack, a seek, entries read,
//! the time) and answers with what to read next and which deliveries to make. It reads no
//! storage, writes no socket and reads no clock; [`super::subscription`] does all three.
//!
//! The rules: Exclusive and Failover send to the active consumer (lowest priority level, then
//! name); Shared goes round robin over consumers with permits; Key_Shared sends an entry to the
//! consumer owning its hash slot, holding it (in order, nothing overtaking within a slot) while
//! earlier entries of the slot are out with another consumer. Permits are counted in messages
//! and may go negative by one whole entry. Every delivered entry is remembered with its
//! consumer until acknowledged; a consumer that leaves gives its entries back, counted as
//! redeliveries.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use magnetar_managed_ledger::position::Position;
use magnetar_protocol::proto::command_subscribe::SubType;
use tracing::warn;

use crate::topic::delayed::{self, DelayedIndex, Flush, Load};
use crate::topic::key_shared::{KeySharedSpec, OrderLocks, Selector};

/// Most entries one pass reads and hands out.
pub const READ_BATCH: usize = 100;

/// A consumer as dispatch sees it.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// Unique in the broker.
    pub key: u64,
    pub name: String,
    pub priority: i32,
}

#[derive(Debug)]
struct Slot {
    key: u64,
    name: String,
    priority: i32,
    /// Messages it asked for and was not sent yet (negative: one entry's overshoot).
    permits: i64,
    /// Messages delivered to it and not acknowledged.
    unacked: i64,
    /// Last ack, or the delivery that ended an idle spell: how hung consumers are found.
    last_progress_ms: u64,
    /// Found hung (Key_Shared): passed over for slots until it acknowledges something.
    hung: bool,
    /// Its connection has more queued than the client reads: sent nothing until it drains.
    blocked: bool,
}

impl Slot {
    /// Permits it can be sent against now.
    fn usable(&self) -> i64 {
        if self.blocked { 0 } else { self.permits }
    }

    /// Has acked nothing for `lease` while holding unacknowledged messages or asking for
    /// none. Once found so it is marked hung ([`Dispatch::latch_hung`]) until it acknowledges
    /// (taking its messages back does not cure it: the client still holds them).
    fn looks_stalled(&self, now: u64, lease: Duration) -> bool {
        self.hung
            || (now.saturating_sub(self.last_progress_ms) > lease.as_millis() as u64
                && (self.unacked > 0 || self.permits <= 0))
    }
}

/// What an entry says of itself, as far as dispatch cares (None in [`Dispatch::hand_out`]:
/// unreadable metadata; it goes as one message under the no-key slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryMeta {
    pub messages: u32,
    pub key_slot: u32,
    /// Delivery time, ms since the epoch.
    pub deliver_at: Option<u64>,
}

/// One entry to send: `index` into the entries handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub index: usize,
    pub consumer: u64,
    pub position: Position,
    pub messages: u32,
    /// Times it was delivered before.
    pub redeliveries: u32,
}

/// A Failover consumer learns whether it is now the active one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveChange {
    pub consumer: u64,
    pub active: bool,
}

/// What the subscription should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Messages the consumers that can take entries now have permits for.
    pub budget: i64,
    /// Entries to read again and hand out first, in order.
    pub redeliver: Vec<Position>,
    /// Read new entries after this.
    pub read_after: Position,
    /// The reset count when planned: a read that raced a seek is thrown away.
    pub epoch: u64,
    /// Whether reading ahead is allowed (Key_Shared stops once too much is held).
    pub may_read: bool,
    /// How long to sleep at most when there is nothing to do (lease ticks, delayed entries).
    pub idle_limit: Option<Duration>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
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

#[derive(Debug)]
struct Delivered {
    consumer: u64,
    messages: u32,
}

/// Dispatch settings (from the broker's `DispatchConfig`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub key_shared_lease: Duration,
    pub key_shared_max_held: usize,
}

#[derive(Debug)]
pub struct Dispatch {
    sub_type: SubType,
    consumers: Vec<Slot>,
    active: Option<u64>,
    /// The last position read from the log for first delivery.
    read_after: Position,
    redeliver: BTreeSet<Position>,
    redelivery_counts: HashMap<Position, u32>,
    pending: HashMap<Position, Delivered>,
    rr: usize,
    /// Bumped by every reset (seek).
    epoch: u64,
    /// Key_Shared: slot owners and per-slot order.
    selector: Selector,
    order: OrderLocks,
    /// Shared/Key_Shared: entries waiting for their delivery time.
    delayed: DelayedIndex,
    limits: Limits,
    /// Consumers found stalled while choosing a slot's owner, to be marked hung after.
    found_stalled: std::cell::RefCell<Vec<u64>>,
}

impl Dispatch {
    pub fn new(
        sub_type: SubType,
        read_after: Position,
        delayed: DelayedIndex,
        limits: Limits,
    ) -> Dispatch {
        Dispatch {
            sub_type,
            consumers: Vec::new(),
            active: None,
            read_after,
            redeliver: BTreeSet::new(),
            redelivery_counts: HashMap::new(),
            pending: HashMap::new(),
            rr: 0,
            epoch: 0,
            selector: Selector::default(),
            order: OrderLocks::default(),
            delayed,
            limits,
            found_stalled: std::cell::RefCell::default(),
        }
    }

    pub fn sub_type(&self) -> SubType {
        self.sub_type
    }

    pub fn consumer_keys(&self) -> Vec<u64> {
        self.consumers.iter().map(|c| c.key).collect()
    }

    fn slot(&self, key: u64) -> Option<&Slot> {
        self.consumers.iter().find(|c| c.key == key)
    }

    fn slot_mut(&mut self, key: u64) -> Option<&mut Slot> {
        self.consumers.iter_mut().find(|c| c.key == key)
    }

    /// (permits, unacked messages) of a consumer, for stats.
    pub fn counts(&self, key: u64) -> (i64, i64) {
        self.slot(key).map_or((0, 0), |c| (c.permits, c.unacked))
    }

    /// Adds a consumer; `key_shared` is its Key_Shared spec (for Key_Shared subscriptions).
    pub fn add_consumer(
        &mut self,
        c: ConsumerSpec,
        sub_type: SubType,
        key_shared: Option<&KeySharedSpec>,
        now: u64,
    ) -> Result<Vec<ActiveChange>, SubscribeError> {
        if !self.consumers.is_empty() && self.sub_type != sub_type {
            return Err(SubscribeError::TypeMismatch {
                existing: self.sub_type,
            });
        }
        if sub_type == SubType::Exclusive && !self.consumers.is_empty() {
            return Err(SubscribeError::ExclusiveBusy);
        }
        if sub_type == SubType::KeyShared {
            let spec = match key_shared {
                Some(s) => s.clone(),
                None => KeySharedSpec::from_proto(None).map_err(SubscribeError::KeySharedAssign)?,
            };
            self.selector
                .add(c.key, &spec)
                .map_err(SubscribeError::KeySharedAssign)?;
        }
        self.sub_type = sub_type;
        self.consumers.push(Slot {
            key: c.key,
            name: c.name,
            priority: c.priority,
            permits: 0,
            unacked: 0,
            last_progress_ms: now,
            hung: false,
            blocked: false,
        });
        Ok(self.elect(now))
    }

    /// Removes a consumer; its unacknowledged entries go back for redelivery. Returns the
    /// number of consumers left.
    pub fn remove_consumer(&mut self, key: u64, now: u64) -> (usize, Vec<ActiveChange>) {
        self.consumers.retain(|c| c.key != key);
        self.selector.remove(key);
        for p in self.pending_of(key, None) {
            self.requeue(p, true, now);
        }
        let changes = self.elect(now);
        (self.consumers.len(), changes)
    }

    /// Detaches every consumer (a seek: their clients subscribe again); their entries stay
    /// pending until the reset that follows forgets them. Returns their keys.
    pub fn detach_all(&mut self) -> Vec<u64> {
        let keys = self.consumer_keys();
        self.consumers.clear();
        self.selector = Selector::default();
        self.active = None;
        keys
    }

    /// Picks the active consumer of Exclusive/Failover subscriptions (priority, then name);
    /// when it changes, the old one's unacknowledged entries go to the new one in order, and
    /// (Failover) every consumer is told whether it is active.
    fn elect(&mut self, now: u64) -> Vec<ActiveChange> {
        if !matches!(self.sub_type, SubType::Exclusive | SubType::Failover) {
            self.active = None;
            return Vec::new();
        }
        let best = self
            .consumers
            .iter()
            .min_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)))
            .map(|c| c.key);
        if best == self.active {
            return Vec::new();
        }
        if let Some(old) = std::mem::replace(&mut self.active, best) {
            for p in self.pending_of(old, None) {
                self.requeue(p, false, now);
            }
        }
        if self.sub_type != SubType::Failover {
            return Vec::new();
        }
        self.consumers
            .iter()
            .map(|c| ActiveChange {
                consumer: c.key,
                active: Some(c.key) == best,
            })
            .collect()
    }

    /// A consumer asks for more messages.
    pub fn flow(&mut self, key: u64, permits: u32) {
        if let Some(c) = self.slot_mut(key) {
            c.permits += permits as i64;
        }
    }

    /// Whether a consumer's connection is backlogged (it is then sent nothing). Returns
    /// whether that changed to blocked.
    pub fn set_blocked(&mut self, key: u64, blocked: bool) -> bool {
        match self.slot_mut(key) {
            Some(c) if c.blocked != blocked => {
                c.blocked = blocked;
                blocked
            }
            _ => false,
        }
    }

    /// The consumer acknowledged something: it is alive.
    pub fn progressed(&mut self, key: u64, now: u64) {
        if let Some(c) = self.slot_mut(key) {
            c.last_progress_ms = now;
            c.hung = false;
        }
    }

    /// Entries delivered to `consumer` and not acknowledged (all, or those in `only`).
    fn pending_of(&self, consumer: u64, only: Option<&[Position]>) -> Vec<Position> {
        let mut v: Vec<Position> = self
            .pending
            .iter()
            .filter(|(p, d)| d.consumer == consumer && only.is_none_or(|o| o.contains(p)))
            .map(|(p, _)| *p)
            .collect();
        v.sort();
        v
    }

    /// Takes a delivered entry back from its consumer (acked, or to be redelivered).
    fn take_pending(&mut self, p: Position, now: u64) -> Option<Delivered> {
        let d = self.pending.remove(&p)?;
        if let Some(c) = self.slot_mut(d.consumer) {
            c.unacked -= d.messages as i64;
        }
        self.order.undelivered(p, now);
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
    fn requeue(&mut self, p: Position, count: bool, now: u64) {
        self.take_pending(p, now);
        self.hold(p);
        if count {
            *self.redelivery_counts.entry(p).or_insert(0) += 1;
        }
    }

    /// The entry is acknowledged: forget it everywhere.
    pub fn release(&mut self, p: Position, now: u64) {
        self.take_pending(p, now);
        self.unhold(p);
        self.redelivery_counts.remove(&p);
        self.order.forget(p);
    }

    /// An entry queued for redelivery that cannot be read any more: passed over.
    pub fn skip_held(&mut self, p: Position) {
        self.unhold(p);
    }

    /// Everything at or before `p` is acknowledged (a cumulative ack).
    pub fn release_through(&mut self, p: Position, now: u64) {
        let mut done: Vec<Position> = self.pending.keys().filter(|q| **q <= p).copied().collect();
        done.extend(self.redeliver.range(..=p).copied());
        for q in done {
            self.release(q, now);
        }
    }

    /// Messages of an entry as delivered (trusted over what a client claims).
    pub fn delivered_messages(&self, p: Position) -> Option<u32> {
        self.pending.get(&p).map(|d| d.messages)
    }

    /// Puts a consumer's unacknowledged entries (or only those in `only`) back for
    /// redelivery; returns how many.
    pub fn redeliver(&mut self, consumer: u64, only: Option<&[Position]>, now: u64) -> usize {
        let mine = self.pending_of(consumer, only);
        for p in &mine {
            self.requeue(*p, true, now);
        }
        mine.len()
    }

    /// Restarts delivery after `md` (a seek): forgets every delivery; returns the persisted
    /// delayed-index records to delete.
    pub fn reset(&mut self, md: Position) -> Vec<String> {
        self.read_after = md;
        self.epoch += 1;
        self.redeliver.clear();
        self.pending.clear();
        self.redelivery_counts.clear();
        self.order.clear();
        for c in &mut self.consumers {
            c.unacked = 0;
        }
        self.delayed.clear()
    }

    /// Whether a read should pass over `p`: out with a consumer, or waiting in the delayed
    /// index.
    pub fn skips(&self, p: Position) -> bool {
        self.pending.contains_key(&p) || self.delayed.contains(p)
    }

    /// Whether entries are delayed for this subscription type (as in Pulsar, only Shared
    /// and Key_Shared honour a delivery time).
    fn delays(&self) -> bool {
        matches!(self.sub_type, SubType::Shared | SubType::KeyShared)
    }

    /// Key_Shared: the consumer for `slot` now, passing over hung consumers.
    fn slot_target(&mut self, slot: u32, now: u64) -> Option<u64> {
        let lease = self.limits.key_shared_lease;
        let (consumers, found) = (&self.consumers, &self.found_stalled);
        let target = self
            .selector
            .select(slot, |k| match consumers.iter().find(|c| c.key == k) {
                None => true,
                Some(c) => {
                    let stalled = c.looks_stalled(now, lease);
                    if stalled && !c.hung {
                        found.borrow_mut().push(k);
                    }
                    stalled
                }
            });
        self.latch_hung();
        target
    }

    /// Marks hung the consumers found stalled, so they stay passed over until they ack.
    fn latch_hung(&mut self) {
        let mut found = std::mem::take(self.found_stalled.get_mut());
        for k in found.drain(..) {
            if let Some(c) = self.slot_mut(k) {
                c.hung = true;
            }
        }
        *self.found_stalled.get_mut() = found;
    }

    /// Key_Shared: where an entry of `slot` may go now, if anywhere. `spent` counts messages
    /// already promised to consumers in this pass.
    fn key_shared_route(&mut self, slot: u32, now: u64, spent: &HashMap<u64, i64>) -> Option<u64> {
        let target = self.slot_target(slot, now)?;
        if !self.selector.allow_out_of_order()
            && let Some(lock) = self.order.locks.get(&slot)
            && lock.owner != target
        {
            return None;
        }
        let c = self.slot(target)?;
        let left = c.usable() - spent.get(&target).copied().unwrap_or(0);
        (left > 0).then_some(target)
    }

    /// Key_Shared: takes back the entries of slots whose owner stopped acking (hung, or
    /// sitting on the slot for a whole lease) while entries of the slot wait for another
    /// consumer. Returns whether anything moved.
    fn revoke_expired_locks(&mut self, now: u64) -> bool {
        let lease = self.limits.key_shared_lease;
        let lease_ms = lease.as_millis() as u64;
        let locks: Vec<(u32, u64, u64)> = self
            .order
            .locks
            .iter()
            .filter(|(slot, _)| self.order.has_held(**slot))
            .map(|(slot, lock)| (*slot, lock.owner, lock.since_ms))
            .collect();
        let mut expired = Vec::new();
        for (slot, owner, since) in locks {
            if self.slot_target(slot, now) == Some(owner) {
                continue;
            }
            let owner_stalled = match self.slot_mut(owner) {
                Some(c) => {
                    c.hung = c.looks_stalled(now, lease);
                    c.hung
                }
                None => true,
            };
            if now.saturating_sub(since) > lease_ms || owner_stalled {
                expired.push((slot, owner));
            }
        }
        for &(slot, owner) in &expired {
            let mine: Vec<Position> = self
                .pending_of(owner, None)
                .into_iter()
                .filter(|p| self.order.slot_of(p) == Some(slot))
                .collect();
            warn!(
                slot,
                consumer = owner,
                entries = mine.len(),
                "Key_Shared consumer stopped acknowledging; its slot moves to another consumer"
            );
            // what it holds is gone from our books but not from its queue: until it acks
            // again it gets no slots, or it would sit on them with no permits
            if let Some(c) = self.slot_mut(owner) {
                c.hung = true;
            }
            for p in mine {
                self.requeue(p, true, now);
            }
            self.order.locks.remove(&slot);
        }
        !expired.is_empty()
    }

    /// What to do next: the budget of permits that can be used now, the entries to send
    /// again first, where to read new ones from. `is_acked` says what the cursor has
    /// acknowledged; `mark_delete` is the cursor's, which a seek may have moved past what was
    /// read.
    pub fn plan(
        &mut self,
        now: u64,
        mark_delete: Position,
        is_acked: &dyn Fn(Position) -> bool,
    ) -> Plan {
        let key_shared = self.sub_type == SubType::KeyShared;
        let budget: i64 = match self.sub_type {
            SubType::Exclusive | SubType::Failover => self
                .active
                .and_then(|a| self.slot(a))
                .map_or(0, Slot::usable),
            _ => self.consumers.iter().map(|c| c.usable().max(0)).sum(),
        };
        if key_shared && self.order.held_total() > 0 {
            self.revoke_expired_locks(now);
        }
        let redeliver = if budget > 0 {
            let acked: Vec<Position> = self
                .redeliver
                .iter()
                .filter(|p| is_acked(**p))
                .copied()
                .collect();
            for p in acked {
                self.release(p, now);
            }
            let limit = (budget as usize).min(READ_BATCH);
            if key_shared {
                self.key_shared_candidates(now, limit)
            } else {
                self.redeliver.iter().take(limit).copied().collect()
            }
        } else {
            Vec::new()
        };
        if self.read_after < mark_delete {
            self.read_after = mark_delete;
        }
        Plan {
            budget,
            redeliver,
            read_after: self.read_after,
            epoch: self.epoch,
            may_read: !key_shared || self.order.held_total() < self.limits.key_shared_max_held,
            idle_limit: self.idle_limit(now),
        }
    }

    /// A read of the log examined entries up to `examined`; false if a seek raced the read
    /// (its entries must be thrown away).
    pub fn read_done(&mut self, epoch: u64, examined: Option<Position>) -> bool {
        if self.epoch != epoch {
            return false;
        }
        if let Some(x) = examined {
            self.read_after = self.read_after.max(x);
        }
        true
    }

    /// Key_Shared: held entries that can go now, in order; a slot whose first held entry
    /// cannot go blocks its later ones, so nothing overtakes within a slot.
    fn key_shared_candidates(&mut self, now: u64, limit: usize) -> Vec<Position> {
        let mut blocked = HashSet::new();
        let mut spent: HashMap<u64, i64> = HashMap::new();
        let mut out = Vec::new();
        let held: Vec<Position> = self.redeliver.iter().copied().collect();
        for p in held {
            if out.len() >= limit {
                break;
            }
            let Some(slot) = self.order.slot_of(&p) else {
                // not read since it was queued: read it, and nothing after it this time
                out.push(p);
                break;
            };
            if blocked.contains(&slot) {
                continue;
            }
            match self.key_shared_route(slot, now, &spent) {
                Some(c) => {
                    *spent.entry(c).or_insert(0) += 1;
                    out.push(p);
                }
                None => {
                    blocked.insert(slot);
                }
            }
        }
        out
    }

    /// Picks the consumer for the next entry (not Key_Shared), or None if nobody can take
    /// one now.
    fn pick(&mut self) -> Option<u64> {
        match self.sub_type {
            SubType::Exclusive | SubType::Failover => {
                let a = self.active?;
                self.slot(a).filter(|c| c.usable() > 0).map(|c| c.key)
            }
            _ => {
                let n = self.consumers.len();
                for i in 0..n {
                    let idx = (self.rr + i) % n;
                    if self.consumers[idx].usable() > 0 {
                        self.rr = (idx + 1) % n;
                        return Some(self.consumers[idx].key);
                    }
                }
                None
            }
        }
    }

    /// Hands read entries to consumers, holding what cannot go now. Returns the deliveries
    /// to make (in order) and how long the dispatcher may then sleep, or None if a seek
    /// raced the read.
    pub fn hand_out(
        &mut self,
        entries: &[(Position, Option<EntryMeta>)],
        epoch: u64,
        now: u64,
        is_acked: &dyn Fn(Position) -> bool,
    ) -> Option<(Vec<Delivery>, Option<Duration>)> {
        if self.epoch != epoch {
            return None;
        }
        let key_shared = self.sub_type == SubType::KeyShared;
        let mut blocked = HashSet::new();
        let no_spend = HashMap::new();
        let mut out = Vec::new();
        for (index, (p, meta)) in entries.iter().enumerate() {
            let p = *p;
            if is_acked(p) {
                self.release(p, now);
                continue;
            }
            if self.pending.contains_key(&p) {
                self.unhold(p);
                continue;
            }
            // first read of an entry with a delivery time still ahead: it waits in the index
            if self.delays()
                && !self.redeliver.contains(&p)
                && let Some(at) = meta.and_then(|m| m.deliver_at)
                && at > now
                && self.delayed.add(p, at, now)
            {
                continue;
            }
            let messages = meta.map_or(1, |m| m.messages);
            let target = if key_shared {
                let slot = meta.map_or_else(
                    || magnetar_protocol::hash::key_slot(magnetar_protocol::hash::NONE_KEY),
                    |m| m.key_slot,
                );
                let queued = self.redeliver.contains(&p);
                self.order.learn(p, slot, queued);
                // a slot's entries go in order: none overtakes one held before it
                let behind = blocked.contains(&slot) || (!queued && self.order.has_held(slot));
                let target = if behind {
                    None
                } else {
                    self.key_shared_route(slot, now, &no_spend)
                };
                if target.is_none() {
                    blocked.insert(slot);
                }
                target
            } else {
                self.pick()
            };
            match target {
                Some(c) => {
                    self.unhold(p);
                    out.push(self.deliver(index, c, p, messages, now));
                }
                // read but not sendable now: first in line next time
                None => self.hold(p),
            }
        }
        Some((out, self.idle_limit(now)))
    }

    fn deliver(
        &mut self,
        index: usize,
        consumer: u64,
        p: Position,
        messages: u32,
        now: u64,
    ) -> Delivery {
        if let Some(c) = self.slot_mut(consumer) {
            c.permits -= messages as i64;
            if c.unacked <= 0 {
                c.last_progress_ms = now;
            }
            c.unacked += messages as i64;
        }
        self.order.delivered(p, consumer, now);
        self.pending.insert(p, Delivered { consumer, messages });
        Delivery {
            index,
            consumer,
            position: p,
            messages,
            redeliveries: self.redelivery_counts.get(&p).copied().unwrap_or(0),
        }
    }

    /// How long the dispatcher may sleep: until a lease tick when Key_Shared entries are
    /// held, until the next delayed entry is due (looking again at least every second while
    /// any wait, for segments to load and buffers to flush).
    pub fn idle_limit(&self, now: u64) -> Option<Duration> {
        let mut limit = None;
        if self.sub_type == SubType::KeyShared && self.order.held_total() > 0 {
            limit = Some(
                (self.limits.key_shared_lease / 2)
                    .clamp(Duration::from_millis(10), Duration::from_secs(1)),
            );
        }
        if !self.delayed.is_empty() {
            let due = self
                .delayed
                .next_due()
                .map_or(1000, |t| t.saturating_sub(now));
            let d = Duration::from_millis(due.clamp(5, 1000));
            limit = Some(limit.map_or(d, |l: Duration| l.min(d)));
        }
        limit
    }

    /// Moves due delayed entries to the front of the line and says which index segments to
    /// persist and load (the caller does the I/O, then reports back).
    pub fn tend_delayed(&mut self, now: u64, force_flush: bool) -> (Option<Flush>, Option<Load>) {
        if self.delayed.is_empty() {
            return (None, None);
        }
        for p in self.delayed.pop_due(now) {
            self.hold(p);
        }
        (
            self.delayed.take_flush(now, force_flush),
            self.delayed.take_load(now),
        )
    }

    pub fn delayed_flushed(&mut self, written: Vec<(String, u64)>) {
        self.delayed.flushed(written);
    }

    pub fn delayed_loaded(&mut self, entries: Vec<(u64, Position)>) {
        delayed::add_loaded(&mut self.delayed, entries);
    }

    pub fn set_delayed(&mut self, idx: DelayedIndex) {
        self.delayed = idx;
    }

    /// (held entries, locked slots, hung consumers' names) for stats.
    pub fn key_shared_stats(&self) -> (usize, usize, Vec<String>) {
        (
            self.order.held_total(),
            self.order.locks.len(),
            self.consumers
                .iter()
                .filter(|c| c.hung)
                .map(|c| c.name.clone())
                .collect(),
        )
    }

    /// Entries queued for (re)delivery ahead of new ones.
    pub fn redelivery_queue(&self) -> usize {
        self.redeliver.len()
    }

    /// (entries waiting for their delivery time, persisted segments).
    pub fn delayed_entries(&self) -> (usize, usize) {
        (self.delayed.len(), self.delayed.persisted_segments())
    }

    /// Delivered and unacknowledged entries.
    pub fn pending_entries(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests;
