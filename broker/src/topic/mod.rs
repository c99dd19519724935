//! A topic: its managed ledger, producers and subscriptions, and everything that decides
//! about them: producer admission and deduplication (`producers`), subscriptions and their
//! dispatchers (`subscription`, with `key_shared` and `delayed`), compaction (`compaction`),
//! and what the log is told of Pulsar entries (`entries`). Topics reach client connections
//! only through [`link::ClientLink`]; they never import the protocol layer.

pub mod compaction;
pub mod delayed;
pub mod dispatch;
pub mod entries;
pub mod key_shared;
pub mod link;
pub mod producers;
pub mod subscription;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use bytes::Bytes;
use magnetar_managed_ledger::cursor::Cursor;
use magnetar_managed_ledger::position::Position;
use magnetar_managed_ledger::{ManagedLedger, MlError};
use magnetar_meta::MetaStore;
use magnetar_protocol::proto::command_subscribe::SubType;
use parking_lot::Mutex;
use tracing::{info, warn};

use crate::cluster::keys;
use crate::error::BrokerError;
use crate::names::{Domain, TopicName};
use crate::policies::{Effective, QuotaPolicy};
use crate::ratelimit::{Rate, RateLimiter};
use crate::stats::Meter;
use crate::topic::compaction::CompactionState;
use crate::topic::producers::{
    Dedup, Grant, ProducerInfo, Producers, Promoted, PublishGate, PublishLimits, SendCheck,
};
use crate::topic::subscription::{CompactedHandle, DispatchConfig, Subscription};

pub struct Topic {
    pub name: TopicName,
    pub full: String,
    pub ml: ManagedLedger,
    meta: MetaStore,
    /// Producers by name (a name is connected at most once).
    pub producers: Mutex<Producers>,
    pub subscriptions: Mutex<HashMap<String, Arc<Subscription>>>,
    /// Serialises subscription creation, which awaits meta.
    sub_lock: tokio::sync::Mutex<()>,
    /// Messages and bytes published.
    pub input: Meter,
    pub partition: i32,
    dispatch: DispatchConfig,
    /// Deduplication: the highest sequence id accepted (queued or persisted) per producer.
    dedup: Mutex<Dedup>,
    /// What its producers may have in flight.
    pub publish: PublishGate,
    /// Backlog quota state: QUOTA_OK, or the refusal producers get.
    quota: AtomicU8,
    /// The compacted view (shared with the subscriptions) and how compaction stands.
    compacted: CompactedHandle,
    compaction: Mutex<CompactionState>,
    /// Publish rate limit (the connection pauses reading while over it).
    pub publish_limit: RateLimiter,
    /// Dispatch rate limit shared by the topic's subscriptions, and the limit each
    /// subscription gets on its own.
    pub dispatch_limit: Arc<RateLimiter>,
    subscription_rate: Mutex<Rate>,
    /// SUBSCRIBEs per client host in the current window (subscribe rate limit).
    subscribes: Mutex<HashMap<String, (std::time::Instant, u32)>>,
    /// Offload runs of its log and how the last one went.
    pub offloads: magnetar_tiering::LogOffloads,
}

const QUOTA_OK: u8 = 0;

const QUOTA_HOLD: u8 = 1;

const QUOTA_EXCEPTION: u8 = 2;

/// The publish time before which messages are older than `age`.
fn cutoff_of(now: u64, age: Duration) -> u64 {
    now.saturating_sub(age.as_millis() as u64)
}

impl std::fmt::Debug for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topic").field("name", &self.full).finish()
    }
}

pub struct SubscribeOpts {
    pub durable: bool,
    pub initial_earliest: bool,
    /// For non-durable subscriptions: start delivering at this entry (inclusive).
    pub start: Option<(u64, u64)>,
}

impl Topic {
    /// Loads the topic's durable subscriptions along with it.
    pub async fn load(
        name: TopicName,
        ml: ManagedLedger,
        meta: MetaStore,
        dispatch: DispatchConfig,
        publish: PublishLimits,
    ) -> Result<Arc<Topic>, MlError> {
        let partition = name.partition().map_or(-1, |p| p as i32);
        let mut dedup = Dedup::default();
        dedup.switch(ml.tracks_producers());
        let t = Arc::new(Topic {
            full: name.to_string(),
            name,
            ml,
            meta,
            producers: Mutex::default(),
            subscriptions: Mutex::default(),
            sub_lock: tokio::sync::Mutex::new(()),
            input: Meter::default(),
            partition,
            dispatch,
            dedup: Mutex::new(dedup),
            publish: PublishGate::new(publish),
            quota: AtomicU8::new(QUOTA_OK),
            compacted: CompactedHandle::default(),
            compaction: Mutex::default(),
            publish_limit: RateLimiter::default(),
            dispatch_limit: Arc::new(RateLimiter::default()),
            subscription_rate: Mutex::default(),
            subscribes: Mutex::default(),
            offloads: Default::default(),
        });
        let path = t.name.path();
        if t.persistent() {
            match compaction::load(&t.meta, t.ml.storage().as_ref(), &path).await {
                Ok(view) => *t.compacted.write() = view,
                Err(e) => {
                    warn!(topic = %t.full, error = %e, "compacted view not loaded; compacted readers read the log")
                }
            }
        }
        let names = t
            .meta
            .children(&keys::cursors(&t.name))
            .await
            .map_err(MlError::from)?;
        for sub in names {
            let cursor = Cursor::open_durable(
                t.ml.clone(),
                t.meta.clone(),
                &path,
                &sub,
                t.ml.last_confirmed(),
            )
            .await
            .map_err(MlError::from)?;
            let s = Subscription::new(
                &sub,
                SubType::Exclusive,
                cursor,
                t.ml.clone(),
                t.dispatch.clone(),
                Arc::clone(&t.compacted),
                Arc::clone(&t.dispatch_limit),
            );
            t.subscriptions.lock().insert(sub, s);
        }
        Ok(t)
    }

    /// Finds or creates the subscription a SUBSCRIBE names.
    pub async fn subscription(
        &self,
        name: &str,
        sub_type: SubType,
        opts: &SubscribeOpts,
    ) -> Result<Arc<Subscription>, MlError> {
        let _serial = self.sub_lock.lock().await;
        if let Some(s) = self.subscriptions.lock().get(name).cloned()
            && !s.is_closed()
        {
            return Ok(s);
        }
        let initial = if opts.initial_earliest {
            self.ml.before_first()
        } else {
            self.ml.last_confirmed()
        };
        // a non-persistent topic keeps no cursors: every subscription lives in memory
        let cursor = if opts.durable && self.persistent() {
            Cursor::open_durable(
                self.ml.clone(),
                self.meta.clone(),
                &self.name.path(),
                name,
                initial,
            )
            .await?
        } else {
            let md = match opts.start {
                // earliest
                Some((l, e)) if l == u64::MAX || e == u64::MAX => self.ml.before_first(),
                // latest
                Some((l, e)) if l >= i64::MAX as u64 || e >= i64::MAX as u64 => {
                    self.ml.last_confirmed()
                }
                // deliver from (l, e) inclusive
                Some((l, e)) => self.ml.start_before(Position::new(l, e as i64)),
                None => initial,
            };
            Cursor::non_durable(self.ml.clone(), self.meta.clone(), name, md)
        };
        let s = Subscription::new(
            name,
            sub_type,
            cursor,
            self.ml.clone(),
            self.dispatch.clone(),
            Arc::clone(&self.compacted),
            Arc::clone(&self.dispatch_limit),
        );
        s.limit.set(*self.subscription_rate.lock());
        self.subscriptions
            .lock()
            .insert(name.to_string(), Arc::clone(&s));
        info!(topic = %self.full, subscription = name, durable = opts.durable, "subscription created");
        Ok(s)
    }

    /// Admits a producer (see [`Producers::admit`]); producers an exclusive one fences are
    /// closed.
    pub fn add_producer(
        &self,
        p: ProducerInfo,
        request_id: u64,
        client_epoch: Option<u64>,
    ) -> Result<Grant, BrokerError> {
        let (grant, fenced) = self.producers.lock().admit(p, request_id, client_epoch)?;
        for o in fenced {
            o.conn
                .send(magnetar_protocol::commands::close_producer(o.producer_id));
            info!(topic = %self.full, producer = %o.name, "producer fenced by an exclusive producer");
        }
        Ok(grant)
    }

    /// Removes a producer (by its unique key) and lets the next waiting exclusive
    /// producer in once the topic is free.
    pub fn remove_producer(&self, name: &str, key: u64) {
        let promoted = self.producers.lock().remove(name, key);
        if let Some(Promoted {
            producer: p,
            request_id,
            epoch,
        }) = promoted
        {
            info!(topic = %self.full, producer = %p.name, epoch, "waiting exclusive producer takes the topic");
            use magnetar_protocol::commands;
            p.conn.send(commands::with_schema_version(
                commands::producer_success_with(request_id, &p.name, -1, Some(epoch), true),
                p.schema_version.clone(),
            ));
        }
    }

    /// The time TTL and backlog-age decisions go by (the broker's clock).
    fn now(&self) -> u64 {
        self.dispatch.clock.now_ms()
    }

    /// Whether the topic's log is durable (`persistent://`), not kept in memory only.
    pub fn persistent(&self) -> bool {
        self.name.domain == Domain::Persistent
    }

    /// Terminates the topic (see `ManagedLedger::terminate`) and lets the dispatchers tell
    /// consumers that have read everything.
    pub async fn terminate(&self) -> Result<Position, MlError> {
        if !self.persistent() {
            return Err(MlError::Unsupported(format!(
                "{} is non-persistent; only persistent topics can be terminated",
                self.full
            )));
        }
        let last = self.ml.terminate().await?;
        for s in self.subscriptions.lock().values() {
            s.poke();
        }
        Ok(last)
    }

    /// Drops a subscription (and its durable cursor).
    pub async fn remove_subscription(&self, name: &str) -> Result<(), MlError> {
        let s = self.subscriptions.lock().remove(name);
        if let Some(s) = s {
            s.close();
            s.cursor.delete().await.map_err(MlError::from)?;
            if let Some(prefix) = crate::topic::delayed::prefix_of(&s.cursor) {
                crate::topic::delayed::delete_all(s.cursor.meta(), &prefix).await;
            }
        }
        Ok(())
    }

    /// The lowest mark-delete position of the durable subscriptions.
    pub fn slowest_cursor(&self) -> Option<Position> {
        self.subscriptions
            .lock()
            .values()
            .filter(|s| s.cursor.is_durable())
            .map(|s| s.cursor.mark_delete())
            .min()
    }

    pub fn record_publish(&self, messages: u32, bytes: usize) {
        self.input.record(messages as u64, bytes as u64);
    }

    pub fn compaction_state(&self) -> CompactionState {
        self.compaction.lock().clone()
    }

    /// The compacted view's ledger and how many entries it holds, once there is one.
    pub fn compacted_ledger(&self) -> Option<(u64, usize)> {
        self.compacted
            .read()
            .as_ref()
            .map(|v| (v.ledger, v.positions.len()))
    }

    /// The lowest position trimming may go to: the slowest durable cursor, and never past
    /// the compaction horizon (what comes after it is not compacted yet).
    pub fn trim_floor(&self) -> Option<Position> {
        let horizon = self.compacted.read().as_ref().map(|v| v.horizon);
        // a non-persistent topic keeps entries for its (in-memory) subscriptions only
        let slowest = if self.persistent() {
            self.slowest_cursor()
        } else {
            self.subscriptions
                .lock()
                .values()
                .map(|s| s.cursor.mark_delete())
                .min()
        };
        match (slowest, horizon) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Bytes that arrived after the last compaction (all of them before the first).
    pub fn bytes_since_compaction(&self) -> u64 {
        let from = self
            .compacted
            .read()
            .as_ref()
            .map_or_else(|| self.ml.before_first(), |v| v.horizon);
        self.ml.bytes_after(from)
    }

    /// Starts a compaction in the background; false if one is running (or the topic is
    /// non-persistent).
    pub fn trigger_compaction(self: &Arc<Self>) -> bool {
        if !self.persistent() {
            return false;
        }
        {
            let mut st = self.compaction.lock();
            if *st == CompactionState::Running {
                return false;
            }
            *st = CompactionState::Running;
        }
        let t = Arc::clone(self);
        tokio::spawn(async move {
            let res = t.compact().await;
            let mut st = t.compaction.lock();
            *st = match res {
                Ok(()) => CompactionState::Success,
                Err(e) => {
                    warn!(topic = %t.full, error = %e, "compaction failed");
                    CompactionState::Error(e.to_string())
                }
            };
        });
        true
    }

    async fn compact(&self) -> Result<(), MlError> {
        let storage = self.ml.storage();
        let (record, view) = compaction::compact(&self.ml).await?;
        let old = match compaction::publish(&self.meta, &self.name.path(), &record).await {
            Ok(old) => old,
            Err(e) => {
                let _ = storage.delete(record.ledger).await;
                return Err(e);
            }
        };
        *self.compacted.write() = Some(Arc::new(view));
        if let Some(old) = old.filter(|o| *o != record.ledger)
            && let Err(e) = storage.delete(old).await
        {
            warn!(topic = %self.full, ledger_id = old, error = %e, "superseded compacted ledger not deleted");
        }
        Ok(())
    }

    /// Applies message TTL and backlog quotas (housekeeping); producers are closed when
    /// the topic goes over a quota that turns them away.
    pub async fn enforce_policies(&self, eff: &Effective) -> Result<(), MlError> {
        if self.persistent() {
            self.set_deduplication(eff.deduplication).await?;
        }
        if let Some(ttl) = eff.ttl {
            let n = self.expire_older_than(ttl).await?;
            if n > 0 {
                info!(topic = %self.full, subscriptions = n, ttl_secs = ttl.as_secs(), "expired messages past their TTL");
            }
        }
        let state = self.check_backlog_quota(eff).await?;
        let before = self.quota.swap(state, Ordering::AcqRel);
        if state != QUOTA_OK && before == QUOTA_OK {
            warn!(topic = %self.full, "backlog quota exceeded; producers are turned away");
            for p in self.producers.lock().by_name.values() {
                p.conn
                    .send(magnetar_protocol::commands::close_producer(p.producer_id));
            }
        }
        Ok(())
    }

    pub fn set_quota(&self, state: u8) {
        self.quota.store(state, Ordering::Release);
    }

    /// The refusal a new producer gets while the topic is over a backlog quota.
    pub fn quota_refusal(&self) -> Option<BrokerError> {
        match self.quota.load(Ordering::Acquire) {
            QUOTA_HOLD => Some(BrokerError::QuotaHold(format!(
                "{}: backlog quota exceeded; waiting for consumers",
                self.full
            ))),
            QUOTA_EXCEPTION => Some(BrokerError::QuotaExceeded(format!(
                "{}: backlog quota exceeded",
                self.full
            ))),
            _ => None,
        }
    }

    /// Moves every durable subscription past messages published longer than `age` ago.
    /// Returns how many subscriptions moved.
    pub async fn expire_older_than(&self, age: Duration) -> Result<usize, MlError> {
        let cutoff = cutoff_of(self.now(), age);
        self.evict_through(|ml, slowest| async move {
            ml.start_before_time(cutoff, slowest.ledger).await
        })
        .await
    }

    /// Acknowledges, for every durable subscription behind it, everything through the
    /// position `through` computes from the log and the slowest mark-delete position.
    async fn evict_through<F, Fut>(&self, through: F) -> Result<usize, MlError>
    where
        F: FnOnce(ManagedLedger, Position) -> Fut,
        Fut: std::future::Future<Output = Result<Position, MlError>>,
    {
        let Some(slowest) = self.slowest_cursor() else {
            return Ok(0);
        };
        let target = through(self.ml.clone(), slowest).await?;
        let subs: Vec<Arc<Subscription>> = self
            .subscriptions
            .lock()
            .values()
            .filter(|s| s.cursor.is_durable() && s.cursor.mark_delete() < target)
            .cloned()
            .collect();
        for s in &subs {
            s.ack_cumulative(target);
        }
        Ok(subs.len())
    }

    /// Checks (and for consumer_backlog_eviction, enforces) the backlog quotas; returns the
    /// quota state producers see.
    pub async fn check_backlog_quota(&self, eff: &Effective) -> Result<u8, MlError> {
        let mut state = QUOTA_OK;
        let refuse = |p: QuotaPolicy| match p {
            QuotaPolicy::ProducerException => QUOTA_EXCEPTION,
            _ => QUOTA_HOLD,
        };
        if let Some((limit, policy)) = eff.size_quota
            && let Some(slowest) = self.slowest_cursor()
            && self.ml.bytes_after(slowest) > limit
        {
            if policy == QuotaPolicy::ConsumerBacklogEviction {
                let n = self
                    .evict_through(|ml, _| async move { Ok(ml.position_keeping(limit)) })
                    .await?;
                info!(topic = %self.full, subscriptions = n, limit, "backlog evicted down to the size quota");
            } else {
                state = state.max(refuse(policy));
            }
        }
        if let Some((age, policy)) = eff.age_quota {
            if policy == QuotaPolicy::ConsumerBacklogEviction {
                let n = self.expire_older_than(age).await?;
                if n > 0 {
                    info!(topic = %self.full, subscriptions = n, "backlog evicted down to the age quota");
                }
            } else if let Some(slowest) = self.slowest_cursor()
                && let Some(oldest) = self.ml.next_position(slowest)
            {
                let d = self.ml.read(oldest).await?;
                let published =
                    magnetar_protocol::entry::peek_metadata(&d).map_or(0, |m| m.publish_time);
                if self.now().saturating_sub(published) > age.as_millis() as u64 {
                    state = state.max(refuse(policy));
                }
            }
        }
        Ok(state)
    }

    /// Switches deduplication as the policies now say (the log replays what it needs).
    pub async fn set_deduplication(&self, on: bool) -> Result<(), MlError> {
        if on == self.deduplicating() {
            return Ok(());
        }
        if on {
            self.ml.set_producer_tracking(true).await?;
            self.dedup.lock().switch(true);
        } else {
            self.dedup.lock().switch(false);
            self.ml.set_producer_tracking(false).await?;
        }
        info!(topic = %self.full, on, "deduplication switched");
        Ok(())
    }

    pub fn deduplicating(&self) -> bool {
        self.dedup.lock().on()
    }

    /// Deduplication check of a SEND whose entry stands for sequence id `seq`.
    pub fn check_send(&self, producer: &str, seq: i64) -> SendCheck {
        self.dedup
            .lock()
            .check(producer, seq, || self.ml.producer_sequence(producer))
    }

    /// After a failed append: forget what was accepted but not persisted, so the client's
    /// resend is stored.
    pub fn reset_send_check(&self, producer: &str) {
        let persisted = self.ml.producer_sequence(producer);
        self.dedup.lock().reset(producer, persisted);
    }

    /// Recomputes every rate of this topic, its producers, subscriptions and consumers.
    pub fn update_rates(&self) {
        let now = std::time::Instant::now();
        self.input.tick(now);
        for p in self.producers.lock().by_name.values() {
            p.meter.tick(now);
        }
        for s in self.subscriptions.lock().values() {
            s.tick(now);
        }
    }

    /// (msg/s in, bytes/s in, msg/s out, bytes/s out) over the last interval.
    pub fn rates(&self) -> (f64, f64, f64, f64) {
        let (mi, bi) = self.input.rates();
        let (mut mo, mut bo) = (0.0, 0.0);
        for s in self.subscriptions.lock().values() {
            let (m, b) = s.out.rates();
            mo += m;
            bo += b;
        }
        (mi, bi, mo, bo)
    }

    /// (messages, bytes) delivered over all subscriptions.
    pub fn out_totals(&self) -> (u64, u64) {
        self.subscriptions
            .lock()
            .values()
            .map(|s| s.out.totals())
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }

    /// The next `n` entries (at most) a subscription has not acknowledged, in log order.
    pub fn unacked_positions(&self, s: &Subscription, n: usize) -> Vec<Position> {
        let last = self.ml.last_confirmed();
        let mut out = Vec::new();
        let mut p = s.cursor.mark_delete();
        while out.len() < n
            && let Some(next) = self.ml.next_position(p)
            && next <= last
        {
            if !s.cursor.is_acked(next) {
                out.push(next);
            }
            p = next;
        }
        out
    }

    /// The `n`th (from 1) entry a subscription has not acknowledged, with its position.
    pub async fn peek(
        &self,
        s: &Subscription,
        n: usize,
    ) -> Result<Option<(Position, Bytes)>, MlError> {
        let Some(p) = self.unacked_positions(s, n).get(n.wrapping_sub(1)).copied() else {
            return Ok(None);
        };
        Ok(Some((p, self.ml.read(p).await?)))
    }

    /// Acknowledges a subscription's next `n` unacknowledged entries; returns how many.
    pub fn skip(&self, s: &Subscription, n: usize) -> usize {
        let positions = self.unacked_positions(s, n);
        s.ack_individual(&positions);
        positions.len()
    }

    /// Acknowledges, for one subscription, every message published longer than `age` ago.
    pub async fn expire_subscription(
        &self,
        s: &Subscription,
        age: Duration,
    ) -> Result<bool, MlError> {
        let md = s.cursor.mark_delete();
        let target = self
            .ml
            .start_before_time(cutoff_of(self.now(), age), md.ledger)
            .await?;
        if target > md {
            s.ack_cumulative(target);
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Moves a subscription so delivery restarts after `md`, as an operator's reset does:
    /// its consumers are closed (they subscribe again and drop what they prefetched).
    pub async fn reset_subscription(&self, s: &Subscription, md: Position) -> Result<(), String> {
        let detached = s.detach_consumers();
        let seq = s.reset(md);
        let flushed = s.cursor.persisted(seq).await;
        for c in detached {
            c.conn
                .send(magnetar_protocol::commands::close_consumer(c.consumer_id));
        }
        info!(topic = %self.full, subscription = %s.name, mark_delete = %md, "subscription reset by an operator");
        flushed
    }

    /// Applies the rate limits policies give (publish, topic dispatch, per subscription).
    pub fn apply_rates(&self, eff: &Effective) {
        self.publish_limit.set(eff.publish_rate);
        self.dispatch_limit.set(eff.dispatch_rate);
        *self.subscription_rate.lock() = eff.subscription_dispatch_rate;
        for s in self.subscriptions.lock().values() {
            s.limit.set(eff.subscription_dispatch_rate);
        }
    }

    /// Counts a SUBSCRIBE from `client` against the subscribe rate (a fixed window per
    /// client); false when over it.
    pub fn admit_subscribe(&self, client: &str, rate: Option<(u32, Duration)>) -> bool {
        let Some((max, window)) = rate else {
            return true;
        };
        let now = std::time::Instant::now();
        let mut m = self.subscribes.lock();
        if m.len() > 4096 {
            m.retain(|_, (start, _)| now.duration_since(*start) < window);
        }
        let (start, n) = m.entry(client.to_string()).or_insert((now, 0));
        if now.duration_since(*start) >= window {
            *start = now;
            *n = 0;
        }
        *n += 1;
        *n <= max
    }

    /// Whether anyone is connected: producers, or consumers on any subscription.
    pub fn in_use(&self) -> bool {
        !self.producers.lock().by_name.is_empty()
            || self
                .subscriptions
                .lock()
                .values()
                .any(|s| !s.consumers().is_empty())
    }

    /// Flushes cursors and seals the log (clean shutdown or unload).
    pub async fn close(&self) {
        let subs: Vec<Arc<Subscription>> = self.subscriptions.lock().values().cloned().collect();
        for s in subs {
            for c in s.consumers() {
                c.conn
                    .send(magnetar_protocol::commands::close_consumer(c.consumer_id));
            }
            if let Err(e) = s.cursor.flush().await {
                warn!(topic = %self.full, subscription = %s.name, error = %e, "cursor flush failed");
            }
            s.close();
        }
        for p in self.producers.lock().by_name.values() {
            p.conn
                .send(magnetar_protocol::commands::close_producer(p.producer_id));
        }
        if let Err(e) = self.ml.close().await {
            warn!(topic = %self.full, error = %e, "closing the log failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use magnetar_managed_ledger::clock::ManualClock;
    use magnetar_managed_ledger::storage::MemoryStorage;
    use magnetar_managed_ledger::{LedgerStorage, MlConfig};
    use magnetar_meta::MemoryStore;
    use magnetar_protocol::MessageMetadata;

    use super::*;
    use crate::topic::entries::PulsarEntries;

    /// TTL goes by the clock the broker is given, so a test moves time instead of waiting.
    #[tokio::test]
    async fn ttl_goes_by_the_brokers_clock() {
        let start = 1_700_000_000_000;
        let clock = ManualClock::new(start);
        let storage: Arc<dyn LedgerStorage> = Arc::new(MemoryStorage::new());
        let meta: MetaStore = Arc::new(MemoryStore::new().unwrap());
        let name = TopicName::parse("persistent://t/ns/ttl").unwrap();
        let ml = ManagedLedger::open(
            &name.to_string(),
            &name.path(),
            storage,
            meta.clone(),
            MlConfig {
                format: Arc::new(PulsarEntries),
                clock: clock.clone(),
                ..MlConfig::default()
            },
        )
        .await
        .unwrap();
        let dispatch = DispatchConfig {
            clock: clock.clone(),
            ..DispatchConfig::default()
        };
        let topic = Topic::load(name, ml, meta, dispatch, PublishLimits::default())
            .await
            .unwrap();
        let opts = SubscribeOpts {
            durable: true,
            initial_earliest: true,
            start: None,
        };
        let sub = topic
            .subscription("s", SubType::Shared, &opts)
            .await
            .unwrap();
        // one message a minute, for five minutes
        let mut positions = Vec::new();
        for i in 0..5u64 {
            let m = MessageMetadata {
                producer_name: "p".into(),
                sequence_id: i,
                publish_time: start + i * 60_000,
                ..Default::default()
            };
            let entry = magnetar_protocol::entry::encode_entry(&m, b"x");
            positions.push(topic.ml.append(entry, 1).await.unwrap());
        }
        // a TTL of 150 s expires nothing while the clock says minute 0; at minute 4 it
        // expires the messages of minutes 0 and 1
        assert_eq!(
            topic
                .expire_older_than(Duration::from_secs(150))
                .await
                .unwrap(),
            0
        );
        clock.advance(Duration::from_secs(4 * 60));
        assert_eq!(
            topic
                .expire_older_than(Duration::from_secs(150))
                .await
                .unwrap(),
            1
        );
        assert_eq!(sub.cursor.mark_delete(), positions[1]);
    }
}
