//! Consumers: one subscription over one or more topics (partitions, lists, or a regex over
//! a namespace).
//!
//! Each partition has a task that owns its subscription: it subscribes (again after any
//! reconnect), grants FLOW permits, verifies, inflates and splits entries into messages,
//! reassembles chunked messages, and batches acknowledgements. All partitions feed one
//! queue that `receive` reads. Messages carry the epoch of the subscription they came
//! from: after a reconnect or a seek the broker sends everything unacknowledged again, so
//! whatever was still queued from before is dropped instead of delivered twice.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use magnetar_protocol::BaseCommand;
use magnetar_protocol::batch::decode_batch;
use magnetar_protocol::compression::Compression;
use magnetar_protocol::entry::parse_entry;
use magnetar_protocol::proto::{
    CommandAck, CommandCloseConsumer, CommandFlow, CommandGetLastMessageId, CommandMessage,
    CommandRedeliverUnacknowledgedMessages, CommandSeek, CommandSubscribe, CommandUnsubscribe,
    KeySharedMeta, KeyValue, MessageIdData, MessageMetadata, SingleMessageMetadata,
    base_command::Type, command_ack::AckType, command_subscribe::InitialPosition as ProtoInitial,
    command_subscribe::SubType, key_shared_meta::KeySharedMode,
};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::conn::{Connection, ConsumerEvent};
use crate::error::{Error, Result};
use crate::message::{Message, MessageId, ProducerMessage};
use crate::producer::{Producer, ProducerBuilder};
use crate::service::{Backoff, Client, TopicMode, topic_name};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SubscriptionType {
    #[default]
    Exclusive,
    Shared,
    Failover,
    KeyShared,
}

/// Where a new subscription starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum InitialPosition {
    #[default]
    Latest,
    Earliest,
}

/// Messages that keep failing go to a dead-letter topic; `reconsume_later` goes through a
/// retry topic.
#[derive(Debug, Clone)]
pub struct DeadLetterPolicy {
    /// Deliveries after the first before a message is dead-lettered.
    pub max_redeliver_count: u32,
    /// Default: `<topic>-<subscription>-DLQ`.
    pub dead_letter_topic: Option<String>,
    /// Default: `<topic>-<subscription>-RETRY`.
    pub retry_letter_topic: Option<String>,
    /// Subscribe to the retry topic too, so `reconsume_later` messages come back.
    pub retry_enabled: bool,
}

impl DeadLetterPolicy {
    pub fn new(max_redeliver_count: u32) -> DeadLetterPolicy {
        DeadLetterPolicy {
            max_redeliver_count,
            dead_letter_topic: None,
            retry_letter_topic: None,
            retry_enabled: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    pub topics: Vec<String>,
    /// A regex over full topic names of one namespace (`persistent://t/ns/orders-.*`).
    pub pattern: Option<String>,
    /// How often a regex consumer looks for new topics.
    pub pattern_refresh: Duration,
    pub subscription: String,
    pub sub_type: SubscriptionType,
    pub name: Option<String>,
    pub initial_position: InitialPosition,
    /// Messages fetched ahead per partition (FLOW permits).
    pub receiver_queue_size: u32,
    /// Redeliver what is not acknowledged in this time.
    pub ack_timeout: Option<Duration>,
    /// Wait before a negatively acknowledged message is redelivered.
    pub nack_delay: Duration,
    /// Acknowledgements are sent in groups this often (zero: one by one, at once).
    pub ack_group_time: Duration,
    pub dead_letter: Option<DeadLetterPolicy>,
    pub read_compacted: bool,
    pub priority: Option<i32>,
    /// Key_Shared: let the broker deliver a key's messages out of order.
    pub allow_out_of_order: bool,
    pub properties: Vec<(String, String)>,
    /// Chunked messages being assembled at once; the oldest is dropped beyond this.
    pub max_pending_chunked: usize,
    pub(crate) durable: bool,
    pub(crate) start: Option<MessageId>,
    pub(crate) start_inclusive: bool,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        ConsumerOptions {
            topics: Vec::new(),
            pattern: None,
            pattern_refresh: Duration::from_secs(60),
            subscription: String::new(),
            sub_type: SubscriptionType::Exclusive,
            name: None,
            initial_position: InitialPosition::Latest,
            receiver_queue_size: 1000,
            ack_timeout: None,
            nack_delay: Duration::from_secs(60),
            ack_group_time: Duration::from_millis(10),
            dead_letter: None,
            read_compacted: false,
            priority: None,
            allow_out_of_order: false,
            properties: Vec::new(),
            max_pending_chunked: 10,
            durable: true,
            start: None,
            start_inclusive: false,
        }
    }
}

pub struct ConsumerBuilder {
    client: Client,
    opts: ConsumerOptions,
}

impl ConsumerBuilder {
    pub(crate) fn new(client: Client) -> ConsumerBuilder {
        ConsumerBuilder {
            client,
            opts: ConsumerOptions::default(),
        }
    }

    pub fn topic(mut self, t: impl Into<String>) -> Self {
        self.opts.topics.push(t.into());
        self
    }

    pub fn topics<I: IntoIterator<Item = S>, S: Into<String>>(mut self, ts: I) -> Self {
        self.opts.topics.extend(ts.into_iter().map(Into::into));
        self
    }

    pub fn topic_pattern(mut self, regex: impl Into<String>) -> Self {
        self.opts.pattern = Some(regex.into());
        self
    }

    pub fn pattern_refresh(mut self, d: Duration) -> Self {
        self.opts.pattern_refresh = d;
        self
    }

    pub fn subscription(mut self, s: impl Into<String>) -> Self {
        self.opts.subscription = s.into();
        self
    }

    pub fn subscription_type(mut self, t: SubscriptionType) -> Self {
        self.opts.sub_type = t;
        self
    }

    pub fn name(mut self, n: impl Into<String>) -> Self {
        self.opts.name = Some(n.into());
        self
    }

    pub fn initial_position(mut self, p: InitialPosition) -> Self {
        self.opts.initial_position = p;
        self
    }

    pub fn receiver_queue_size(mut self, n: u32) -> Self {
        self.opts.receiver_queue_size = n.max(1);
        self
    }

    pub fn ack_timeout(mut self, d: Duration) -> Self {
        self.opts.ack_timeout = Some(d);
        self
    }

    pub fn nack_delay(mut self, d: Duration) -> Self {
        self.opts.nack_delay = d;
        self
    }

    pub fn ack_group_time(mut self, d: Duration) -> Self {
        self.opts.ack_group_time = d;
        self
    }

    pub fn dead_letter(mut self, p: DeadLetterPolicy) -> Self {
        self.opts.dead_letter = Some(p);
        self
    }

    pub fn read_compacted(mut self, on: bool) -> Self {
        self.opts.read_compacted = on;
        self
    }

    pub fn priority(mut self, p: i32) -> Self {
        self.opts.priority = Some(p);
        self
    }

    pub fn allow_out_of_order(mut self, on: bool) -> Self {
        self.opts.allow_out_of_order = on;
        self
    }

    pub fn property(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.opts.properties.push((k.into(), v.into()));
        self
    }

    pub fn options(mut self, o: ConsumerOptions) -> Self {
        self.opts = o;
        self
    }

    /// Subscribes on every topic and partition; fails if any refuses.
    pub async fn subscribe(self) -> Result<Consumer> {
        let mut opts = self.opts;
        if opts.subscription.is_empty() {
            return Err(Error::Invalid("a subscription name is needed".into()));
        }
        if opts.topics.is_empty() && opts.pattern.is_none() {
            return Err(Error::Invalid("no topic and no topic pattern".into()));
        }
        let mut topics = Vec::new();
        for t in &opts.topics {
            topics.push(topic_name(t)?);
        }
        if let Some(dl) = &opts.dead_letter
            && dl.retry_enabled
        {
            for t in topics.clone() {
                topics.push(retry_topic(dl, &t, &opts.subscription)?);
            }
        }
        opts.topics = topics.clone();
        let pattern = match &opts.pattern {
            Some(p) => Some(Pattern::new(p)?),
            None => None,
        };
        let (out, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(ConsumerShared {
            client: self.client.clone(),
            opts: Arc::new(opts),
            parts: Mutex::new(Vec::new()),
            topics: Mutex::new(HashSet::new()),
            out,
            letters: Arc::new(Letters {
                client: self.client.clone(),
                producers: tokio::sync::Mutex::new(HashMap::new()),
            }),
        });
        if let Some(p) = &pattern {
            topics.extend(p.matching(&self.client).await?);
        }
        for t in topics {
            if let Err(e) = shared.add_topic(&t).await {
                shared.close_all().await;
                return Err(e);
            }
        }
        let refresher = pattern.map(|p| {
            let weak = Arc::downgrade(&shared);
            let every = shared.opts.pattern_refresh;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let Some(shared) = weak.upgrade() else { return };
                    match p.matching(&shared.client).await {
                        Ok(found) => {
                            for t in found {
                                if let Err(e) = shared.add_topic(&t).await {
                                    warn!(topic = %t, error = %e, "cannot subscribe to a new topic");
                                }
                            }
                        }
                        Err(e) => warn!(error = %e, "cannot list topics for the pattern"),
                    }
                }
            })
        });
        Ok(Consumer {
            shared,
            rx,
            peeked: None,
            refresher,
        })
    }
}

struct Pattern {
    namespace: String,
    mode: TopicMode,
    regex: regex::Regex,
}

impl Pattern {
    fn new(p: &str) -> Result<Pattern> {
        let full = if p.contains("://") {
            p.to_string()
        } else {
            format!("persistent://{p}")
        };
        let (domain, rest) = full
            .split_once("://")
            .ok_or_else(|| Error::Invalid(format!("bad pattern {p:?}")))?;
        let mode = match domain {
            "persistent" => TopicMode::Persistent,
            "non-persistent" => TopicMode::NonPersistent,
            _ => return Err(Error::Invalid(format!("bad domain in pattern {p:?}"))),
        };
        let mut it = rest.splitn(3, '/');
        let (Some(t), Some(n), Some(_)) = (it.next(), it.next(), it.next()) else {
            return Err(Error::Invalid(format!(
                "pattern {p:?} must be domain://tenant/namespace/regex"
            )));
        };
        let regex = regex::Regex::new(&format!("^(?:{full})$"))
            .map_err(|e| Error::Invalid(format!("pattern {p:?}: {e}")))?;
        Ok(Pattern {
            namespace: format!("{t}/{n}"),
            mode,
            regex,
        })
    }

    async fn matching(&self, client: &Client) -> Result<Vec<String>> {
        let all = client
            .topics_of_namespace(&self.namespace, self.mode)
            .await?;
        Ok(all.into_iter().filter(|t| self.regex.is_match(t)).collect())
    }
}

fn base_topic(t: &str) -> &str {
    match t.rfind("-partition-") {
        Some(i) if t[i + 11..].chars().all(|c| c.is_ascii_digit()) && i + 11 < t.len() => &t[..i],
        _ => t,
    }
}

/// The topic a message first came from: partitions and the retry topic map back to it.
fn origin_topic<'a>(topic: &'a str, sub: &str) -> &'a str {
    let base = base_topic(topic);
    base.strip_suffix(&format!("-{sub}-RETRY")).unwrap_or(base)
}

fn retry_topic(dl: &DeadLetterPolicy, topic: &str, sub: &str) -> Result<String> {
    match &dl.retry_letter_topic {
        Some(t) => topic_name(t),
        None => Ok(format!("{}-{sub}-RETRY", origin_topic(topic, sub))),
    }
}

fn dead_letter_topic(dl: &DeadLetterPolicy, topic: &str, sub: &str) -> Result<String> {
    match &dl.dead_letter_topic {
        Some(t) => topic_name(t),
        None => Ok(format!("{}-{sub}-DLQ", origin_topic(topic, sub))),
    }
}

struct ConsumerShared {
    client: Client,
    opts: Arc<ConsumerOptions>,
    parts: Mutex<Vec<PartHandle>>,
    topics: Mutex<HashSet<String>>,
    out: mpsc::UnboundedSender<Result<Message>>,
    letters: Arc<Letters>,
}

/// Producers to dead-letter and retry topics, made when first needed.
struct Letters {
    client: Client,
    producers: tokio::sync::Mutex<HashMap<String, Producer>>,
}

impl Letters {
    async fn producer(&self, topic: &str) -> Result<Producer> {
        let mut m = self.producers.lock().await;
        if let Some(p) = m.get(topic) {
            return Ok(p.clone());
        }
        let p = ProducerBuilder::new(self.client.clone(), topic.to_string())
            .batching(false)
            .create()
            .await?;
        m.insert(topic.to_string(), p.clone());
        Ok(p)
    }
}

impl ConsumerShared {
    async fn add_topic(&self, topic: &str) -> Result<()> {
        if !self.topics.lock().insert(topic.to_string()) {
            return Ok(());
        }
        let parts = match self.client.expand(topic).await {
            Ok(p) => p,
            Err(e) => {
                self.topics.lock().remove(topic);
                return Err(e);
            }
        };
        for (name, partition) in parts {
            PartTask::start(self, name, partition).await?;
        }
        Ok(())
    }

    /// Runs `f` on partition `i`'s handle (without cloning it: this is per message).
    fn with_part<R>(&self, i: usize, f: impl FnOnce(&PartHandle) -> R) -> Option<R> {
        self.parts.lock().get(i).map(f)
    }

    fn all(&self) -> Vec<PartHandle> {
        self.parts.lock().clone()
    }

    async fn close_all(&self) {
        for p in self.all() {
            let (tx, rx) = oneshot::channel();
            if p.tx.send(PCmd::Close(tx)).is_ok() {
                let _ = rx.await;
            }
        }
    }
}

#[derive(Clone)]
struct PartHandle {
    topic: Arc<str>,
    partition: i32,
    tx: mpsc::UnboundedSender<PCmd>,
    st: Arc<PartState>,
}

impl PartHandle {
    fn consumed(&self, permits: u32) {
        let threshold = self.st.threshold;
        let before = self.st.consumed.fetch_add(permits, Ordering::AcqRel);
        if before < threshold && before + permits >= threshold {
            let _ = self.tx.send(PCmd::Flow);
        }
    }

    fn start(&self) -> (Option<MessageId>, bool) {
        *self.st.start.lock()
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> PCmd) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| Error::Closed)?;
        rx.await.unwrap_or(Err(Error::Closed))
    }
}

/// What a partition's task and the consumer handle share.
struct PartState {
    epoch: AtomicU64,
    consumed: AtomicU32,
    threshold: u32,
    last_received: Mutex<Option<MessageId>>,
    end_of_topic: AtomicBool,
    active: AtomicBool,
    /// Where a non-durable subscription starts (after a seek: the seek's target).
    start: Mutex<(Option<MessageId>, bool)>,
}

enum PCmd {
    Ack(MsgIds),
    AckCumulative(MessageId),
    Nack(MsgIds),
    Flow,
    Seek(SeekTo, oneshot::Sender<Result<()>>),
    /// The last stored id, and the subscription's mark-delete position.
    LastId(oneshot::Sender<Result<(MessageId, Option<MessageId>)>>),
    Unsubscribe(oneshot::Sender<Result<()>>),
    Close(oneshot::Sender<Result<()>>),
}

/// The entries behind one message: its own id, or every chunk of a chunked message.
struct MsgIds {
    id: MessageId,
    chunks: Arc<[MessageId]>,
}

impl MsgIds {
    fn of(m: &Message) -> MsgIds {
        MsgIds {
            id: m.id,
            chunks: Arc::clone(&m.chunks),
        }
    }

    fn iter(&self) -> impl Iterator<Item = &MessageId> {
        let own = self.chunks.is_empty().then_some(&self.id);
        own.into_iter().chain(self.chunks.iter())
    }
}

#[derive(Debug, Clone, Copy)]
enum SeekTo {
    Id(MessageId),
    Time(u64),
}

/// Receives from a subscription.
pub struct Consumer {
    shared: Arc<ConsumerShared>,
    rx: mpsc::UnboundedReceiver<Result<Message>>,
    peeked: Option<Message>,
    refresher: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("subscription", &self.shared.opts.subscription)
            .finish()
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if let Some(r) = self.refresher.take() {
            r.abort();
        }
    }
}

impl Consumer {
    pub fn subscription(&self) -> &str {
        &self.shared.opts.subscription
    }

    /// The topics (partitions) this consumer reads.
    pub fn topics(&self) -> Vec<String> {
        self.shared
            .all()
            .iter()
            .map(|p| p.topic.to_string())
            .collect()
    }

    /// The next message that is still current (see the module notes), or `None`.
    fn accept(&self, m: Message) -> Option<Message> {
        let current = self.shared.with_part(m.part, |p| {
            if m.epoch != p.st.epoch.load(Ordering::Acquire) {
                return false;
            }
            p.consumed(m.permits);
            *p.st.last_received.lock() = Some(m.id);
            true
        })?;
        current.then_some(m)
    }

    /// Waits for the next message.
    pub async fn receive(&mut self) -> Result<Message> {
        if let Some(m) = self.peeked.take() {
            return Ok(m);
        }
        loop {
            let m = match self.rx.recv().await {
                Some(Ok(m)) => m,
                Some(Err(e)) => return Err(e),
                None => return Err(Error::Closed),
            };
            let Some(m) = self.accept(m) else { continue };
            return Ok(m);
        }
    }

    /// A message if one is queued now, without waiting.
    pub async fn try_receive(&mut self) -> Result<Option<Message>> {
        if let Some(m) = self.peeked.take() {
            return Ok(Some(m));
        }
        loop {
            let m = match self.rx.try_recv() {
                Ok(Ok(m)) => m,
                Ok(Err(e)) => return Err(e),
                Err(mpsc::error::TryRecvError::Empty) => return Ok(None),
                Err(mpsc::error::TryRecvError::Disconnected) => return Err(Error::Closed),
            };
            let Some(m) = self.accept(m) else { continue };
            return Ok(Some(m));
        }
    }

    /// Up to `max` messages: returns when it has them or `timeout` has passed (perhaps
    /// with none).
    pub async fn batch_receive(&mut self, max: usize, timeout: Duration) -> Result<Vec<Message>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::with_capacity(max.min(1024));
        while out.len() < max {
            tokio::select! {
                m = self.receive() => out.push(m?),
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        Ok(out)
    }

    /// Publishes `m` again to the retry topic, to come back after `delay`, and acknowledges
    /// it here. Needs a dead-letter policy with `retry_enabled` (and a Shared subscription
    /// for the delay to be honoured).
    pub async fn reconsume_later(&self, m: &Message, delay: Duration) -> Result<()> {
        let Some(dl) = self
            .shared
            .opts
            .dead_letter
            .as_ref()
            .filter(|d| d.retry_enabled)
        else {
            return Err(Error::Invalid(
                "reconsume_later needs a retry-enabled dead-letter policy".into(),
            ));
        };
        let times: u32 = m
            .property("RECONSUMETIMES")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
            + 1;
        let sub = &self.shared.opts.subscription;
        let mut out = letter(m, m.payload.clone());
        out.properties
            .retain(|(k, _)| k != "RECONSUMETIMES" && k != "DELAY_TIME");
        out.properties
            .push(("RECONSUMETIMES".into(), times.to_string()));
        out.properties
            .push(("DELAY_TIME".into(), delay.as_millis().to_string()));
        let topic = if times > dl.max_redeliver_count {
            dead_letter_topic(dl, &m.topic, sub)?
        } else {
            out = out.deliver_after(delay);
            retry_topic(dl, &m.topic, sub)?
        };
        let p = self.shared.letters.producer(&topic).await?;
        p.send(out).await?;
        self.ack(m)
    }

    /// Hands a command about `m` to the task of its partition.
    fn tell(&self, m: &Message, cmd: PCmd) -> Result<()> {
        self.shared
            .with_part(m.part, |p| p.tx.send(cmd).map_err(|_| Error::Closed))
            .unwrap_or_else(|| Err(Error::Invalid("message from another consumer".into())))
    }

    /// Acknowledges one message.
    pub fn ack(&self, m: &Message) -> Result<()> {
        self.tell(m, PCmd::Ack(MsgIds::of(m)))
    }

    /// Acknowledges a message and every one before it on its partition (not on Shared).
    pub fn ack_cumulative(&self, m: &Message) -> Result<()> {
        if matches!(
            self.shared.opts.sub_type,
            SubscriptionType::Shared | SubscriptionType::KeyShared
        ) {
            return Err(Error::Invalid(
                "cumulative acknowledgement is not allowed on Shared or Key_Shared".into(),
            ));
        }
        self.tell(m, PCmd::AckCumulative(m.id))
    }

    /// Asks for the message again, after the nack delay.
    pub fn nack(&self, m: &Message) -> Result<()> {
        self.tell(m, PCmd::Nack(MsgIds::of(m)))
    }

    /// Restarts delivery at `id` (`MessageId::EARLIEST`, `LATEST`, or a message's id) on
    /// every partition, or on the id's own partition when it names one.
    pub async fn seek(&mut self, id: MessageId) -> Result<()> {
        self.peeked = None;
        for p in self.shared.all() {
            if id.partition >= 0 && p.partition >= 0 && p.partition != id.partition {
                continue;
            }
            p.ask(|tx| PCmd::Seek(SeekTo::Id(id), tx)).await?;
        }
        Ok(())
    }

    /// Restarts delivery at the first message published at or after `ms` (epoch millis).
    pub async fn seek_time(&mut self, ms: u64) -> Result<()> {
        self.peeked = None;
        for p in self.shared.all() {
            p.ask(|tx| PCmd::Seek(SeekTo::Time(ms), tx)).await?;
        }
        Ok(())
    }

    /// The id of the last message stored on each partition.
    pub async fn last_message_ids(&self) -> Result<Vec<MessageId>> {
        let mut out = Vec::new();
        for p in self.shared.all() {
            out.push(p.ask(PCmd::LastId).await?.0);
        }
        Ok(out)
    }

    /// Whether a message is queued here or stored after the last one received.
    pub async fn has_message_available(&mut self) -> Result<bool> {
        if self.peeked.is_some() {
            return Ok(true);
        }
        if let Some(m) = self.try_receive().await? {
            self.peeked = Some(m);
            return Ok(true);
        }
        for p in self.shared.all() {
            let (last, mark_delete) = p.ask(PCmd::LastId).await?;
            if last.is_earliest() {
                continue;
            }
            let seen = *p.st.last_received.lock();
            let entry = |m: &MessageId| (m.ledger_id, m.entry_id);
            let more = match seen {
                Some(s) => last > s,
                // nothing received since (re)subscribing or seeking: the broker's position
                // says where delivery starts; an exclusive start skips its own entry
                None => {
                    let past =
                        mark_delete.is_none_or(|m| m.is_earliest() || entry(&last) > entry(&m));
                    let (start, inclusive) = p.start();
                    let skipped = start.is_some_and(|s| {
                        !inclusive
                            && !s.is_earliest()
                            && !s.is_latest()
                            && entry(&s) == entry(&last)
                            && (s.batch_index < 0 || last.batch_index <= s.batch_index)
                    });
                    past && !skipped
                }
            };
            if more {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether every partition reported the end of a terminated topic.
    pub fn has_reached_end_of_topic(&self) -> bool {
        let parts = self.shared.all();
        !parts.is_empty()
            && parts
                .iter()
                .all(|p| p.st.end_of_topic.load(Ordering::Acquire))
    }

    /// Failover: whether this consumer is the active one on any partition.
    pub fn is_active(&self) -> bool {
        self.shared
            .all()
            .iter()
            .any(|p| p.st.active.load(Ordering::Acquire))
    }

    /// Deletes the subscription (on every partition).
    pub async fn unsubscribe(self) -> Result<()> {
        for p in self.shared.all() {
            p.ask(PCmd::Unsubscribe).await?;
        }
        Ok(())
    }

    /// Sends outstanding acknowledgements and closes the consumer on the broker.
    pub async fn close(self) -> Result<()> {
        self.shared.close_all().await;
        Ok(())
    }
}

/// `m` as a message for a dead-letter or retry topic.
fn letter(m: &Message, payload: Bytes) -> ProducerMessage {
    let mut out = ProducerMessage::new(payload);
    out.key = m.key.clone();
    out.event_time = m.event_time;
    out.properties = m.properties.clone();
    if m.property("REAL_TOPIC").is_none() {
        out.properties
            .push(("REAL_TOPIC".into(), m.topic.to_string()));
        out.properties
            .push(("ORIGIN_MESSAGE_ID".into(), m.id.to_string()));
    }
    out
}

/// What the messages of one entry share.
struct EntryInfo<'a> {
    md: &'a MessageMetadata,
    producer: Arc<str>,
    redelivery_count: u32,
}

/// What is a message's own: the entry's metadata for a lone message, its
/// `SingleMessageMetadata` inside a batch.
struct Fields {
    key: Option<String>,
    ordering_key: Option<Bytes>,
    properties: Vec<(String, String)>,
    event_time: Option<u64>,
    sequence_id: u64,
    null_value: bool,
}

impl Fields {
    fn of_entry(md: &MessageMetadata) -> Fields {
        Fields {
            key: md.partition_key.clone(),
            ordering_key: md.ordering_key.clone(),
            properties: md
                .properties
                .iter()
                .map(|kv| (kv.key.clone(), kv.value.clone()))
                .collect(),
            event_time: md.event_time,
            sequence_id: md.sequence_id,
            null_value: md.null_value.unwrap_or(false),
        }
    }

    fn of_single(smm: SingleMessageMetadata, sequence_id: u64) -> Fields {
        Fields {
            key: smm.partition_key,
            ordering_key: smm.ordering_key,
            properties: smm
                .properties
                .into_iter()
                .map(|kv| (kv.key, kv.value))
                .collect(),
            event_time: smm.event_time,
            sequence_id: smm.sequence_id.unwrap_or(sequence_id),
            null_value: smm.null_value.unwrap_or(false),
        }
    }
}

struct Chunked {
    buf: BytesMut,
    ids: Vec<MessageId>,
    next: i32,
    total: i32,
    metadata: MessageMetadata,
}

struct PartTask {
    client: Client,
    topic: Arc<str>,
    partition: i32,
    part: usize,
    id: u64,
    opts: Arc<ConsumerOptions>,
    st: Arc<PartState>,
    out: mpsc::UnboundedSender<Result<Message>>,
    letters: Arc<Letters>,
    /// Acknowledgements of messages this task dead-lettered itself.
    own_acks: mpsc::UnboundedSender<MsgIds>,
    conn: Option<Arc<Connection>>,
    events: Option<mpsc::UnboundedReceiver<ConsumerEvent>>,
    /// Requests that need the connection, held while it is being re-established.
    deferred: Vec<PCmd>,
    epoch: u64,
    backoff: Backoff,
    reconnect_at: Option<Instant>,
    /// Non-durable subscriptions (readers): where delivery starts.
    start: Option<MessageId>,
    start_inclusive: bool,
    /// After a seek: what arrives before the broker's re-subscribe is from the old place.
    seeking: bool,
    acks: Vec<MessageIdData>,
    ack_due: Option<Instant>,
    nacks: Vec<(Instant, MessageId)>,
    /// Entries delivered and not yet fully acknowledged: when, and messages left.
    unacked: HashMap<(u64, u64), (Instant, u32)>,
    chunks: HashMap<String, Chunked>,
    chunk_order: VecDeque<String>,
    /// Shared by every message that is not chunked (one allocation, not one per message).
    no_chunks: Arc<[MessageId]>,
    failed: Option<Error>,
}

impl PartTask {
    /// Adds a partition to `shared` and subscribes to it. The handle is in place before the
    /// subscription exists, so no message can arrive for a partition the consumer does not
    /// know. Calls never overlap (the initial subscribe, then the one pattern refresher).
    async fn start(shared: &ConsumerShared, topic: String, partition: i32) -> Result<()> {
        let opts = Arc::clone(&shared.opts);
        let st = Arc::new(PartState {
            epoch: AtomicU64::new(0),
            consumed: AtomicU32::new(0),
            threshold: (opts.receiver_queue_size / 2).max(1),
            last_received: Mutex::new(None),
            end_of_topic: AtomicBool::new(false),
            active: AtomicBool::new(false),
            start: Mutex::new((None, false)),
        });
        let topic: Arc<str> = topic.into();
        let (tx, rx) = mpsc::unbounded_channel();
        let (own_acks, own_rx) = mpsc::unbounded_channel();
        let part = {
            let mut parts = shared.parts.lock();
            parts.push(PartHandle {
                topic: Arc::clone(&topic),
                partition,
                tx,
                st: Arc::clone(&st),
            });
            parts.len() - 1
        };
        let mut task = PartTask {
            client: shared.client.clone(),
            topic,
            partition,
            part,
            id: shared.client.new_id(),
            start: opts.start,
            start_inclusive: opts.start_inclusive,
            opts,
            st: Arc::clone(&st),
            out: shared.out.clone(),
            letters: Arc::clone(&shared.letters),
            own_acks,
            conn: None,
            events: None,
            deferred: Vec::new(),
            epoch: 0,
            backoff: Backoff::new(shared.client.opts().max_backoff),
            reconnect_at: None,
            seeking: false,
            acks: Vec::new(),
            ack_due: None,
            nacks: Vec::new(),
            unacked: HashMap::new(),
            chunks: HashMap::new(),
            chunk_order: VecDeque::new(),
            no_chunks: Arc::new([]),
            failed: None,
        };
        task.set_start(task.start, task.start_inclusive);
        if let Err(e) = task.subscribe().await {
            // never subscribed, so nothing refers to it yet: it goes again
            let mut parts = shared.parts.lock();
            if parts.len() == part + 1 {
                parts.pop();
            }
            return Err(e);
        }
        tokio::spawn(task.run(rx, own_rx));
        Ok(())
    }

    async fn subscribe(&mut self) -> Result<()> {
        let conn = self.client.lookup(&self.topic).await?;
        let (etx, erx) = mpsc::unbounded_channel();
        conn.register_consumer(self.id, etx);
        let rid = conn.request_id();
        let o = Arc::clone(&self.opts);
        let start = if o.durable {
            None
        } else {
            // a reader that already received something resumes right after it
            let seen = *self.st.last_received.lock();
            if let Some(s) = seen {
                self.set_start(Some(s), false);
            }
            self.start.map(|s| s.entry().to_proto())
        };
        let cmd = BaseCommand {
            r#type: Type::Subscribe as i32,
            subscribe: Some(CommandSubscribe {
                topic: self.topic.to_string(),
                subscription: o.subscription.clone(),
                sub_type: match o.sub_type {
                    SubscriptionType::Exclusive => SubType::Exclusive,
                    SubscriptionType::Shared => SubType::Shared,
                    SubscriptionType::Failover => SubType::Failover,
                    SubscriptionType::KeyShared => SubType::KeyShared,
                } as i32,
                consumer_id: self.id,
                request_id: rid,
                consumer_name: o.name.clone(),
                priority_level: o.priority,
                durable: Some(o.durable),
                start_message_id: start,
                metadata: o
                    .properties
                    .iter()
                    .map(|(k, v)| KeyValue {
                        key: k.clone(),
                        value: v.clone(),
                    })
                    .collect(),
                read_compacted: Some(o.read_compacted),
                initial_position: Some(match o.initial_position {
                    InitialPosition::Latest => ProtoInitial::Latest,
                    InitialPosition::Earliest => ProtoInitial::Earliest,
                } as i32),
                force_topic_creation: Some(true),
                key_shared_meta: (o.sub_type == SubscriptionType::KeyShared).then(|| {
                    KeySharedMeta {
                        key_shared_mode: KeySharedMode::AutoSplit as i32,
                        hash_ranges: Vec::new(),
                        allow_out_of_order_delivery: Some(o.allow_out_of_order),
                    }
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        // a new subscription: what is still queued from an earlier one is stale
        let epoch = self.st.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        if let Err(e) = conn.request(rid, cmd).await {
            conn.forget_consumer(self.id);
            return Err(e);
        }
        self.epoch = epoch;
        self.seeking = false;
        self.chunks.clear();
        self.chunk_order.clear();
        self.unacked.clear();
        self.st.consumed.store(0, Ordering::Release);
        conn.send(BaseCommand {
            r#type: Type::Flow as i32,
            flow: Some(CommandFlow {
                consumer_id: self.id,
                message_permits: self.opts.receiver_queue_size,
            }),
            ..Default::default()
        })?;
        debug!(topic = %self.topic, subscription = %self.opts.subscription, broker = %conn.url, "subscribed");
        self.backoff.reset();
        self.conn = Some(conn);
        self.events = Some(erx);
        Ok(())
    }

    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<PCmd>,
        mut own_acks: mpsc::UnboundedReceiver<MsgIds>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            let ack_due = self
                .ack_due
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            let reconnect_due = self
                .reconnect_at
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                ev = recv_event(&mut self.events) => self.on_event(ev),
                cmd = rx.recv() => match cmd {
                    Some(PCmd::Close(tx)) => {
                        let _ = tx.send(self.close(false).await);
                        return;
                    }
                    Some(PCmd::Unsubscribe(tx)) => {
                        let r = self.close(true).await;
                        let failed = r.is_err();
                        let _ = tx.send(r);
                        if !failed {
                            return;
                        }
                    }
                    Some(c) => self.on_command(c).await,
                    None => {
                        let _ = self.close(false).await;
                        return;
                    }
                },
                Some(ids) = own_acks.recv() => self.on_command(PCmd::Ack(ids)).await,
                _ = tokio::time::sleep_until(ack_due.into()), if self.ack_due.is_some() => self.send_acks(),
                _ = tokio::time::sleep_until(reconnect_due.into()), if self.reconnect_at.is_some() => {
                    self.reconnect_at = None;
                    match self.subscribe().await {
                        Ok(()) => {
                            for c in std::mem::take(&mut self.deferred) {
                                self.on_command(c).await;
                            }
                        }
                        Err(e) => self.subscribe_failed(e),
                    }
                }
                _ = tick.tick() => self.housekeeping(),
            }
        }
    }

    fn set_start(&mut self, start: Option<MessageId>, inclusive: bool) {
        self.start = start;
        self.start_inclusive = inclusive;
        *self.st.start.lock() = (start, inclusive);
    }

    fn subscribe_failed(&mut self, e: Error) {
        let again = e.is_retriable()
            || matches!(
                e.server_code(),
                Some(magnetar_protocol::ServerError::ConsumerBusy)
            );
        if again {
            let wait = self.backoff.next();
            warn!(topic = %self.topic, error = %e, ?wait, "re-subscribe failed; retrying");
            self.reconnect_at = Some(Instant::now() + wait);
        } else {
            warn!(topic = %self.topic, error = %e, "cannot re-subscribe; the consumer fails");
            let _ = self.out.send(Err(e.clone()));
            self.failed = Some(e);
        }
    }

    fn disconnected(&mut self) {
        if let Some(c) = self.conn.take() {
            c.forget_consumer(self.id);
        }
        self.events = None;
        if self.failed.is_none() && self.reconnect_at.is_none() {
            self.reconnect_at = Some(Instant::now() + self.backoff.next());
        }
    }

    fn on_event(&mut self, ev: Option<ConsumerEvent>) {
        match ev {
            Some(ConsumerEvent::Message(m, payload)) => {
                if self.seeking {
                    return;
                }
                self.on_message(m, payload)
            }
            Some(ConsumerEvent::Active(a)) => self.st.active.store(a, Ordering::Release),
            Some(ConsumerEvent::EndOfTopic) => self.st.end_of_topic.store(true, Ordering::Release),
            Some(ConsumerEvent::Closed) | None => {
                debug!(topic = %self.topic, "consumer closed by the broker; subscribing again");
                self.disconnected();
                // re-subscribe at once the first time (seeks end this way)
                self.reconnect_at = Some(Instant::now());
            }
        }
    }

    /// A permit that no message will return to the application.
    fn give_back(&mut self, n: u32) {
        let before = self.st.consumed.fetch_add(n, Ordering::AcqRel);
        if before + n >= self.st.threshold {
            self.flow();
        }
    }

    fn flow(&mut self) {
        let n = self.st.consumed.swap(0, Ordering::AcqRel);
        if n == 0 {
            return;
        }
        if let Some(c) = &self.conn {
            let _ = c.send(BaseCommand {
                r#type: Type::Flow as i32,
                flow: Some(CommandFlow {
                    consumer_id: self.id,
                    message_permits: n,
                }),
                ..Default::default()
            });
        }
    }

    fn skip(&self, id: &MessageId) -> bool {
        let Some(s) = self.start else { return false };
        if s.is_earliest() || s.is_latest() {
            return false;
        }
        if s.batch_index < 0 {
            let (e, se) = ((id.ledger_id, id.entry_id), (s.ledger_id, s.entry_id));
            return e < se || (e == se && !self.start_inclusive);
        }
        *id < s || (*id == s && !self.start_inclusive)
    }

    fn corrupt(&mut self, reason: String) {
        warn!(topic = %self.topic, %reason, "dropped a message that cannot be read");
        let _ = self.out.send(Err(Error::Corrupt {
            topic: self.topic.to_string(),
            reason,
        }));
    }

    fn on_message(&mut self, m: CommandMessage, payload: Bytes) {
        let entry = match parse_entry(payload) {
            Ok(e) => e,
            Err(e) => {
                self.give_back(1);
                return self.corrupt(format!(
                    "entry {}:{}: {e}",
                    m.message_id.ledger_id, m.message_id.entry_id
                ));
            }
        };
        let md = entry.metadata;
        let base = MessageId {
            partition: self.partition,
            ..MessageId::from_proto(&m.message_id, 0)
        };
        let redelivery_count = m.redelivery_count.unwrap_or(0);
        if md.num_chunks_from_msg.is_some_and(|n| n > 1) {
            return self.on_chunk(md, entry.payload, base, redelivery_count);
        }
        let payload = match inflate(&md, entry.payload) {
            Ok(p) => p,
            Err(e) => {
                self.give_back(message_count(&md));
                return self.corrupt(format!("entry {base}: {e}"));
            }
        };
        let e = EntryInfo {
            md: &md,
            producer: md.producer_name.as_str().into(),
            redelivery_count,
        };
        let Some(n) = md.num_messages_in_batch else {
            if self.skip(&base) {
                return self.give_back(1);
            }
            let msg = self.message(&e, base, payload, Fields::of_entry(&md));
            return self.deliver(msg, 1);
        };
        let items = match decode_batch(payload, n.max(0) as usize) {
            Ok(v) => v,
            Err(e) => {
                self.give_back(n.max(1) as u32);
                return self.corrupt(format!("batch {base}: {e}"));
            }
        };
        let mut delivered = 0;
        for (i, (smm, body)) in items.into_iter().enumerate() {
            let id = MessageId {
                batch_index: i as i32,
                batch_size: n,
                ..base
            };
            let acked = !m.ack_set.is_empty()
                && m.ack_set
                    .get(i / 64)
                    .is_none_or(|w| w & (1i64 << (i % 64)) == 0);
            if acked || self.skip(&id) || smm.compacted_out == Some(true) {
                self.give_back(1);
                continue;
            }
            let own = Fields::of_single(smm, md.sequence_id + i as u64);
            let msg = self.message(&e, id, body, own);
            self.deliver(msg, 0);
            delivered += 1;
        }
        if delivered > 0 {
            self.track(base.entry(), delivered);
        }
    }

    /// A message of entry `e`: `f` holds what is its own (moved in, not copied).
    fn message(&self, e: &EntryInfo<'_>, id: MessageId, payload: Bytes, f: Fields) -> Message {
        Message {
            topic: Arc::clone(&self.topic),
            id,
            payload,
            key: f.key,
            ordering_key: f.ordering_key,
            properties: f.properties,
            publish_time: e.md.publish_time,
            event_time: f.event_time.filter(|t| *t > 0),
            producer_name: Arc::clone(&e.producer),
            sequence_id: f.sequence_id,
            redelivery_count: e.redelivery_count,
            replicated_from: e.md.replicated_from.clone(),
            null_value: f.null_value,
            part: self.part,
            epoch: self.epoch,
            permits: 1,
            chunks: Arc::clone(&self.no_chunks),
        }
    }

    /// Hands a message to the application; `track` > 0 records its entry for ack timeout.
    /// One delivered too often goes to the dead-letter topic instead, and is acknowledged
    /// once it is stored there.
    fn deliver(&mut self, msg: Message, track: u32) {
        if let Some(dl) = &self.opts.dead_letter
            && msg.redelivery_count > dl.max_redeliver_count
        {
            let topic = match dead_letter_topic(dl, &msg.topic, &self.opts.subscription) {
                Ok(t) => t,
                Err(e) => {
                    let _ = self.out.send(Err(e));
                    return;
                }
            };
            self.give_back(msg.permits);
            let letters = Arc::clone(&self.letters);
            let acks = self.own_acks.clone();
            tokio::spawn(async move {
                let sent = match letters.producer(&topic).await {
                    Ok(p) => p.send(letter(&msg, msg.payload.clone())).await,
                    Err(e) => Err(e),
                };
                match sent {
                    Ok(_) => {
                        debug!(topic = %msg.topic, id = %msg.id, dlq = %topic, "dead-lettered");
                        let _ = acks.send(MsgIds::of(&msg));
                    }
                    // not acknowledged: it comes back and is tried again
                    Err(e) => warn!(topic = %msg.topic, error = %e, "cannot dead-letter"),
                }
            });
            return;
        }
        if track > 0 {
            self.track(msg.id.entry(), track);
        }
        let _ = self.out.send(Ok(msg));
    }

    fn track(&mut self, entry: MessageId, messages: u32) {
        if self.opts.ack_timeout.is_some() {
            self.unacked
                .entry((entry.ledger_id, entry.entry_id))
                .or_insert((Instant::now(), messages));
        }
    }

    fn on_chunk(
        &mut self,
        md: MessageMetadata,
        piece: Bytes,
        id: MessageId,
        redelivery_count: u32,
    ) {
        let uuid = md.uuid.clone().unwrap_or_default();
        let chunk_id = md.chunk_id.unwrap_or(0);
        let total = md.num_chunks_from_msg.unwrap_or(1);
        if chunk_id == 0 {
            if self.chunks.len() >= self.opts.max_pending_chunked.max(1)
                && let Some(old) = self.chunk_order.pop_front()
                && let Some(c) = self.chunks.remove(&old)
            {
                // too many half-assembled messages: the oldest is asked for again later
                warn!(topic = %self.topic, uuid = %old, "dropped a partial chunked message");
                let n = c.ids.len() as u32;
                self.redeliver(c.ids);
                self.give_back(n);
            }
            let cap = md.total_chunk_msg_size.unwrap_or(0).clamp(0, 64 << 20) as usize;
            self.chunks.insert(
                uuid.clone(),
                Chunked {
                    buf: BytesMut::with_capacity(cap),
                    ids: Vec::new(),
                    next: 0,
                    total,
                    metadata: md.clone(),
                },
            );
            self.chunk_order.push_back(uuid.clone());
        }
        let Some(c) = self
            .chunks
            .get_mut(&uuid)
            .filter(|c| c.next == chunk_id && c.total == total)
        else {
            // a chunk out of place (its start was lost or dropped): skip it
            debug!(topic = %self.topic, %uuid, chunk_id, "chunk without its predecessors");
            return self.give_back(1);
        };
        if c.buf.len() + piece.len() > magnetar_protocol::compression::MAX_UNCOMPRESSED {
            // a broker that never ends a message must not grow this without bound
            let n = c.ids.len() as u32 + 1;
            self.chunks.remove(&uuid);
            self.chunk_order.retain(|u| *u != uuid);
            self.give_back(n);
            return self.corrupt(format!("chunked message {uuid} exceeds the size limit"));
        }
        c.buf.extend_from_slice(&piece);
        c.ids.push(id);
        c.next += 1;
        if c.next < c.total {
            return;
        }
        let Some(c) = self.chunks.remove(&uuid) else {
            return;
        };
        self.chunk_order.retain(|u| *u != uuid);
        let n = c.ids.len() as u32;
        let payload = match inflate(&c.metadata, c.buf.freeze()) {
            Ok(p) => p,
            Err(e) => {
                self.give_back(n);
                return self.corrupt(format!("chunked message {uuid}: {e}"));
            }
        };
        let producer: Arc<str> = c.metadata.producer_name.as_str().into();
        let ids: Arc<[MessageId]> = c.ids.into();
        let e = EntryInfo {
            md: &c.metadata,
            producer,
            redelivery_count,
        };
        let mut msg = self.message(&e, id, payload, Fields::of_entry(&c.metadata));
        msg.permits = n;
        msg.chunks = Arc::clone(&ids);
        for i in ids.iter() {
            self.track(*i, 1);
        }
        self.deliver(msg, 0);
    }

    async fn on_command(&mut self, c: PCmd) {
        match c {
            PCmd::Ack(ids) => {
                for id in ids.iter() {
                    self.untrack(id);
                    self.acks.push(id.to_proto());
                }
                if self.opts.ack_group_time.is_zero() || self.acks.len() >= 1000 {
                    self.send_acks();
                } else if self.ack_due.is_none() {
                    self.ack_due = Some(Instant::now() + self.opts.ack_group_time);
                }
            }
            PCmd::AckCumulative(id) => {
                self.send_acks();
                self.unacked
                    .retain(|(l, e), _| (*l, *e) > (id.ledger_id, id.entry_id));
                self.send_ack(AckType::Cumulative, vec![id.to_proto()]);
            }
            PCmd::Nack(ids) => {
                let at = Instant::now() + self.opts.nack_delay;
                for id in ids.iter() {
                    self.untrack(id);
                    self.nacks.push((at, id.entry()));
                }
            }
            PCmd::Flow => self.flow(),
            c @ (PCmd::Seek(..) | PCmd::LastId(_))
                if self.conn.is_none() && self.failed.is_none() =>
            {
                self.deferred.push(c);
            }
            PCmd::Seek(to, tx) => {
                let _ = tx.send(self.seek(to).await);
            }
            PCmd::LastId(tx) => {
                let _ = tx.send(self.last_id().await);
            }
            PCmd::Close(_) | PCmd::Unsubscribe(_) => {}
        }
    }

    fn untrack(&mut self, id: &MessageId) {
        if let Some((_, left)) = self.unacked.get_mut(&(id.ledger_id, id.entry_id)) {
            *left = left.saturating_sub(1);
            if *left == 0 {
                self.unacked.remove(&(id.ledger_id, id.entry_id));
            }
        }
    }

    fn send_acks(&mut self) {
        self.ack_due = None;
        if self.acks.is_empty() {
            return;
        }
        let ids = std::mem::take(&mut self.acks);
        self.send_ack(AckType::Individual, ids);
    }

    fn send_ack(&mut self, t: AckType, ids: Vec<MessageIdData>) {
        if let Some(c) = &self.conn {
            let _ = c.send(BaseCommand {
                r#type: Type::Ack as i32,
                ack: Some(CommandAck {
                    consumer_id: self.id,
                    ack_type: t as i32,
                    message_id: ids,
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        // without a connection the broker redelivers them after the re-subscribe anyway
    }

    fn redeliver(&mut self, ids: Vec<MessageId>) {
        let Some(c) = &self.conn else { return };
        let mut seen = HashSet::new();
        let ids: Vec<MessageIdData> = ids
            .into_iter()
            .map(|i| i.entry())
            .filter(|i| seen.insert((i.ledger_id, i.entry_id)))
            .map(|i| MessageIdData {
                ledger_id: i.ledger_id,
                entry_id: i.entry_id,
                ..Default::default()
            })
            .collect();
        let _ = c.send(BaseCommand {
            r#type: Type::RedeliverUnacknowledgedMessages as i32,
            redeliver_unacknowledged_messages: Some(CommandRedeliverUnacknowledgedMessages {
                consumer_id: self.id,
                message_ids: ids,
                consumer_epoch: None,
            }),
            ..Default::default()
        });
    }

    fn housekeeping(&mut self) {
        let now = Instant::now();
        if self.nacks.iter().any(|(t, _)| *t <= now) {
            let (due, later): (Vec<_>, Vec<_>) = self.nacks.drain(..).partition(|(t, _)| *t <= now);
            self.nacks = later;
            self.redeliver(due.into_iter().map(|(_, id)| id).collect());
        }
        if let Some(limit) = self.opts.ack_timeout {
            let expired: Vec<(u64, u64)> = self
                .unacked
                .iter()
                .filter(|(_, (t, _))| now.duration_since(*t) >= limit)
                .map(|(k, _)| *k)
                .collect();
            if !expired.is_empty() {
                debug!(topic = %self.topic, n = expired.len(), "ack timeout: redelivering");
                for k in &expired {
                    self.unacked.remove(k);
                }
                self.redeliver(
                    expired
                        .into_iter()
                        .map(|(l, e)| MessageId::new(l, e))
                        .collect(),
                );
            }
        }
    }

    async fn seek(&mut self, to: SeekTo) -> Result<()> {
        let conn = self.conn.clone().ok_or_else(|| Error::Disconnected {
            addr: self.topic.to_string(),
            reason: "not connected; try again".into(),
        })?;
        self.send_acks();
        let rid = conn.request_id();
        let (message_id, message_publish_time) = match to {
            SeekTo::Id(id) => (Some(id.entry().to_proto()), None),
            SeekTo::Time(t) => (None, Some(t)),
        };
        let cmd = BaseCommand {
            r#type: Type::Seek as i32,
            seek: Some(CommandSeek {
                consumer_id: self.id,
                request_id: rid,
                message_id,
                message_publish_time,
            }),
            ..Default::default()
        };
        conn.request(rid, cmd).await?;
        // the broker closes this consumer next; until the re-subscribe, what arrives (and
        // what is queued) is from before the seek
        self.seeking = true;
        self.st.epoch.fetch_add(1, Ordering::AcqRel);
        *self.st.last_received.lock() = None;
        self.nacks.clear();
        self.unacked.clear();
        match to {
            SeekTo::Id(id) => {
                self.set_start(Some(id), true);
            }
            SeekTo::Time(_) => self.set_start(None, false),
        }
        Ok(())
    }

    async fn last_id(&mut self) -> Result<(MessageId, Option<MessageId>)> {
        let conn = self.conn.clone().ok_or_else(|| Error::Disconnected {
            addr: self.topic.to_string(),
            reason: "not connected; try again".into(),
        })?;
        let rid = conn.request_id();
        let cmd = BaseCommand {
            r#type: Type::GetLastMessageId as i32,
            get_last_message_id: Some(CommandGetLastMessageId {
                consumer_id: self.id,
                request_id: rid,
            }),
            ..Default::default()
        };
        let r = conn
            .request(rid, cmd)
            .await?
            .get_last_message_id_response
            .ok_or_else(|| Error::Protocol("expected GET_LAST_MESSAGE_ID_RESPONSE".into()))?;
        let last = MessageId {
            partition: self.partition,
            ..MessageId::from_proto(&r.last_message_id, 0)
        };
        let md = r
            .consumer_mark_delete_position
            .as_ref()
            .map(|m| MessageId::from_proto(m, 0));
        Ok((last, md))
    }

    async fn close(&mut self, unsubscribe: bool) -> Result<()> {
        self.send_acks();
        let Some(conn) = self.conn.clone() else {
            return if unsubscribe {
                Err(Error::Disconnected {
                    addr: self.topic.to_string(),
                    reason: "not connected; try again".into(),
                })
            } else {
                Ok(())
            };
        };
        let rid = conn.request_id();
        let cmd = if unsubscribe {
            BaseCommand {
                r#type: Type::Unsubscribe as i32,
                unsubscribe: Some(CommandUnsubscribe {
                    consumer_id: self.id,
                    request_id: rid,
                    force: None,
                }),
                ..Default::default()
            }
        } else {
            BaseCommand {
                r#type: Type::CloseConsumer as i32,
                close_consumer: Some(CommandCloseConsumer {
                    consumer_id: self.id,
                    request_id: rid,
                    ..Default::default()
                }),
                ..Default::default()
            }
        };
        let r = conn.request(rid, cmd).await.map(|_| ());
        if r.is_ok() || !unsubscribe {
            conn.forget_consumer(self.id);
            self.conn = None;
            self.events = None;
        }
        match r {
            Err(Error::Disconnected { .. }) if !unsubscribe => Ok(()),
            other => other,
        }
    }
}

fn message_count(md: &MessageMetadata) -> u32 {
    md.num_messages_in_batch.map_or(1, |n| n.max(1) as u32)
}

fn inflate(md: &MessageMetadata, payload: Bytes) -> Result<Bytes, String> {
    let c = md
        .compression
        .map(|c| Compression::from_proto(c).ok_or_else(|| format!("unknown compression {c}")))
        .transpose()?
        .unwrap_or(Compression::None);
    if c == Compression::None {
        return Ok(payload);
    }
    let size = md.uncompressed_size.unwrap_or(0) as usize;
    c.decompress(&payload, size).map(Bytes::from)
}

async fn recv_event(
    events: &mut Option<mpsc::UnboundedReceiver<ConsumerEvent>>,
) -> Option<ConsumerEvent> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn letter_topics_and_patterns() {
        let dl = DeadLetterPolicy::new(3);
        assert_eq!(
            dead_letter_topic(&dl, "persistent://t/n/x-partition-2", "s").unwrap(),
            "persistent://t/n/x-s-DLQ"
        );
        assert_eq!(
            dead_letter_topic(&dl, "persistent://t/n/x-s-RETRY", "s").unwrap(),
            "persistent://t/n/x-s-DLQ"
        );
        assert_eq!(
            retry_topic(&dl, "persistent://t/n/x", "s").unwrap(),
            "persistent://t/n/x-s-RETRY"
        );
        assert_eq!(
            retry_topic(&dl, "persistent://t/n/x-s-RETRY", "s").unwrap(),
            "persistent://t/n/x-s-RETRY"
        );
        assert_eq!(base_topic("a-partition-"), "a-partition-");
        let p = Pattern::new("persistent://t/n/orders-.*").unwrap();
        assert_eq!(p.namespace, "t/n");
        assert!(p.regex.is_match("persistent://t/n/orders-1"));
        assert!(!p.regex.is_match("persistent://t/n/other"));
        assert!(Pattern::new("persistent://t/n").is_err());
        assert!(Pattern::new("persistent://t/n/(").is_err());
    }
}
