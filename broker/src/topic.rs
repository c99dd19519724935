//! A persistent topic: its managed ledger, producers and subscriptions.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use magnetar_meta::MetaStore;
use magnetar_protocol::ServerError;
use magnetar_protocol::proto::ProducerAccessMode;
use magnetar_protocol::proto::command_subscribe::SubType;
use parking_lot::Mutex;
use tracing::{info, warn};

use crate::compaction::{self, CompactionState};
use crate::connection::ConnTx;
use crate::names::{Domain, TopicName};
use crate::policies::{Effective, QuotaPolicy};
use crate::ratelimit::{Rate, RateLimiter};
use crate::service::ClientError;
use crate::stats::Meter;
use crate::subscription::{CompactedHandle, DispatchConfig, Subscription};
use magnetar_managed_ledger::clock::now_ms;
use magnetar_managed_ledger::cursor::Cursor;
use magnetar_managed_ledger::position::Position;
use magnetar_managed_ledger::{ManagedLedger, MlError};

#[derive(Debug, Clone)]
pub struct ProducerInfo {
    /// Unique in this broker (names can be reused by a reconnecting client).
    pub key: u64,
    pub name: String,
    pub producer_id: u64,
    pub conn: ConnTx,
    pub address: String,
    pub connected_since: String,
    pub meter: Arc<Meter>,
    pub access_mode: ProducerAccessMode,
    /// Shared with the producer's connection: waiting, ready or fenced.
    pub state: Arc<AtomicU8>,
}

/// [`ProducerInfo::state`] values.
pub const PRODUCER_WAITING: u8 = 0;
pub const PRODUCER_READY: u8 = 1;
pub const PRODUCER_FENCED: u8 = 2;

static NEXT_PRODUCER_KEY: AtomicU64 = AtomicU64::new(1);

impl ProducerInfo {
    pub fn next_key() -> u64 {
        NEXT_PRODUCER_KEY.fetch_add(1, Ordering::Relaxed)
    }
}

/// A topic's producers and who may write: Shared producers side by side, or one exclusive
/// producer (with WaitForExclusive producers queued behind it).
#[derive(Default)]
pub struct Producers {
    pub by_name: HashMap<String, ProducerInfo>,
    exclusive: Option<u64>,
    /// Bumped whenever an exclusive producer takes the topic (in memory only).
    epoch: u64,
    waiting: VecDeque<(ProducerInfo, u64)>,
}

/// How a producer request ended.
#[derive(Debug)]
pub enum Grant {
    /// Writing now; the topic epoch for exclusive producers.
    Ready(Option<u64>),
    /// Queued behind the exclusive producer (WaitForExclusive).
    Waiting,
}

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
    dedup: Mutex<Option<HashMap<String, i64>>>,
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
}

const QUOTA_OK: u8 = 0;
const QUOTA_HOLD: u8 = 1;
const QUOTA_EXCEPTION: u8 = 2;

/// The publish time before which messages are older than `age`.
fn cutoff_of(age: Duration) -> u64 {
    now_ms().saturating_sub(age.as_millis() as u64)
}

/// What deduplication says of a SEND.
#[derive(Debug, PartialEq, Eq)]
pub enum SendCheck {
    /// Not deduplicating, or an entry dedup skips (a chunk before the last).
    Unchecked,
    /// New: append it and record this sequence id.
    New(i64),
    /// Seen before: answer without storing.
    Duplicate(i64),
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
    ) -> Result<Arc<Topic>, MlError> {
        let partition = name.partition().map_or(-1, |p| p as i32);
        let ml_tracks = ml.tracks_producers();
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
            dedup: Mutex::new(ml_tracks.then(HashMap::new)),
            quota: AtomicU8::new(QUOTA_OK),
            compacted: CompactedHandle::default(),
            compaction: Mutex::default(),
            publish_limit: RateLimiter::default(),
            dispatch_limit: Arc::new(RateLimiter::default()),
            subscription_rate: Mutex::default(),
            subscribes: Mutex::default(),
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
            .children(&format!("/cursors/{path}"))
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

    /// Admits a producer under the access rules (Pulsar's): a Shared producer is refused
    /// while an exclusive one writes or waits; Exclusive is refused while anyone else
    /// writes; ExclusiveWithFencing fences everyone else; WaitForExclusive queues.
    pub fn add_producer(
        &self,
        p: ProducerInfo,
        request_id: u64,
        client_epoch: Option<u64>,
    ) -> Result<Grant, ClientError> {
        use ProducerAccessMode as M;
        let mut ps = self.producers.lock();
        if let Some(other) = ps.by_name.get(&p.name)
            && !other.conn.is_closed()
        {
            return Err(ClientError::new(
                ServerError::ProducerBusy,
                format!(
                    "Producer with name '{}' is already connected to topic",
                    p.name
                ),
            ));
        }
        let exclusive_name = |ps: &Producers| {
            ps.by_name
                .values()
                .find(|o| Some(o.key) == ps.exclusive)
                .map_or_else(|| "a waiting producer".to_string(), |o| o.name.clone())
        };
        let taken = ps.exclusive.is_some() || !ps.waiting.is_empty();
        match p.access_mode {
            M::Shared => {
                if taken {
                    return Err(ClientError::new(
                        ServerError::ProducerBusy,
                        format!("Topic has an exclusive producer: {}", exclusive_name(&ps)),
                    ));
                }
                p.state.store(PRODUCER_READY, Ordering::Release);
                ps.by_name.insert(p.name.clone(), p);
                Ok(Grant::Ready(None))
            }
            M::Exclusive | M::WaitForExclusive => {
                let busy = taken || !ps.by_name.is_empty();
                if busy && p.access_mode == M::WaitForExclusive {
                    ps.waiting.push_back((p, request_id));
                    return Ok(Grant::Waiting);
                }
                if busy {
                    let why = if taken {
                        format!("Topic has an exclusive producer: {}", exclusive_name(&ps))
                    } else {
                        "Topic has shared producers".to_string()
                    };
                    return Err(ClientError::new(ServerError::ProducerFenced, why));
                }
                if let Some(e) = client_epoch
                    && e < ps.epoch
                {
                    return Err(ClientError::new(
                        ServerError::ProducerFenced,
                        format!("Topic epoch moved on to {} (producer has {e})", ps.epoch),
                    ));
                }
                Ok(Grant::Ready(Some(Self::grant_exclusive(&mut ps, p))))
            }
            M::ExclusiveWithFencing => {
                let ps = &mut *ps;
                let fenced: Vec<ProducerInfo> = ps
                    .by_name
                    .drain()
                    .map(|(_, o)| o)
                    .chain(ps.waiting.drain(..).map(|(o, _)| o))
                    .collect();
                for o in fenced {
                    o.state.store(PRODUCER_FENCED, Ordering::Release);
                    o.conn
                        .send(magnetar_protocol::commands::close_producer(o.producer_id));
                    info!(topic = %self.full, producer = %o.name, "producer fenced by an exclusive producer");
                }
                ps.exclusive = None;
                Ok(Grant::Ready(Some(Self::grant_exclusive(ps, p))))
            }
        }
    }

    fn grant_exclusive(ps: &mut Producers, p: ProducerInfo) -> u64 {
        ps.epoch += 1;
        ps.exclusive = Some(p.key);
        p.state.store(PRODUCER_READY, Ordering::Release);
        ps.by_name.insert(p.name.clone(), p);
        ps.epoch
    }

    /// Removes a producer (by its unique key) and lets the next waiting exclusive
    /// producer in once the topic is free.
    pub fn remove_producer(&self, name: &str, key: u64) {
        let mut ps = self.producers.lock();
        if ps.by_name.get(name).is_some_and(|p| p.key == key) {
            ps.by_name.remove(name);
        }
        ps.waiting.retain(|(p, _)| p.key != key);
        if ps.exclusive == Some(key) {
            ps.exclusive = None;
        }
        while ps.exclusive.is_none() && ps.by_name.is_empty() {
            let Some((p, request_id)) = ps.waiting.pop_front() else {
                break;
            };
            if p.conn.is_closed() {
                continue;
            }
            let (conn, name) = (p.conn.clone(), p.name.clone());
            let epoch = Self::grant_exclusive(&mut ps, p);
            info!(topic = %self.full, producer = %name, epoch, "waiting exclusive producer takes the topic");
            conn.send(magnetar_protocol::commands::producer_success_with(
                request_id,
                &name,
                -1,
                Some(epoch),
                true,
            ));
        }
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
            if let Some(prefix) = crate::delayed::prefix_of(&s.cursor) {
                crate::delayed::delete_all(s.cursor.meta(), &prefix).await;
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
    pub fn quota_refusal(&self) -> Option<ClientError> {
        match self.quota.load(Ordering::Acquire) {
            QUOTA_HOLD => Some(ClientError::new(
                ServerError::ProducerBlockedQuotaExceededError,
                format!(
                    "{}: backlog quota exceeded; waiting for consumers",
                    self.full
                ),
            )),
            QUOTA_EXCEPTION => Some(ClientError::new(
                ServerError::ProducerBlockedQuotaExceededException,
                format!("{}: backlog quota exceeded", self.full),
            )),
            _ => None,
        }
    }

    /// Moves every durable subscription past messages published longer than `age` ago.
    /// Returns how many subscriptions moved.
    pub async fn expire_older_than(&self, age: Duration) -> Result<usize, MlError> {
        self.evict_through(|ml, slowest| async move {
            ml.start_before_time(cutoff_of(age), slowest.ledger).await
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
                if now_ms().saturating_sub(published) > age.as_millis() as u64 {
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
            *self.dedup.lock() = Some(HashMap::new());
        } else {
            *self.dedup.lock() = None;
            self.ml.set_producer_tracking(false).await?;
        }
        info!(topic = %self.full, on, "deduplication switched");
        Ok(())
    }

    pub fn deduplicating(&self) -> bool {
        self.dedup.lock().is_some()
    }

    /// Deduplication check of a SEND whose entry stands for sequence id `seq`; a new one is
    /// accepted at once, so a resend racing the original is caught too.
    pub fn check_send(&self, producer: &str, seq: i64) -> SendCheck {
        let mut guard = self.dedup.lock();
        let Some(pushed) = guard.as_mut() else {
            return SendCheck::Unchecked;
        };
        let last = match pushed.get(producer) {
            Some(s) => *s,
            None => self.ml.producer_sequence(producer).unwrap_or(-1),
        };
        if seq <= last {
            return SendCheck::Duplicate(seq);
        }
        pushed.insert(producer.to_string(), seq);
        SendCheck::New(seq)
    }

    /// After a failed append: forget what was accepted but not persisted, so the client's
    /// resend is stored.
    pub fn reset_send_check(&self, producer: &str) {
        let persisted = self.ml.producer_sequence(producer).unwrap_or(-1);
        if let Some(pushed) = self.dedup.lock().as_mut() {
            pushed.insert(producer.to_string(), persisted);
        }
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
        let target = self.ml.start_before_time(cutoff_of(age), md.ledger).await?;
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
