//! Producers.
//!
//! Each partition has one task that owns its state: the open batch, the entries in flight
//! (sent, receipt not yet back) and the connection. Callers hand messages over a channel and
//! get a receipt future back; a semaphore of `max_pending` permits bounds what is queued, so
//! a full producer makes `send_async` wait (or fail with `QueueFull`) instead of growing.
//! On a lost connection the task looks the topic up again, re-registers under the same name
//! and re-sends everything in flight in order; the broker's deduplication (when on) drops
//! what it already stored. Receipts complete in order: a receipt that skips ahead means the
//! broker lost something, and the task re-sends from the gap by reconnecting.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use magnetar_protocol::compression::Compression;
use magnetar_protocol::entry::encode_entry;
use magnetar_protocol::proto::{
    CommandCloseProducer, CommandProducer, CommandSend, KeyValue, MessageMetadata,
    ProducerAccessMode, SingleMessageMetadata, base_command::Type,
};
use magnetar_protocol::{BaseCommand, ServerError, hash};
use prost::Message as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::conn::{Connection, ProducerEvent};
use crate::error::{Error, Result};
use crate::message::{MessageId, ProducerMessage, now_ms};
use crate::service::{Backoff, Client, topic_name};

/// Fewer entries than this in flight count as an idle pipeline: an open batch goes at once.
const IDLE_PIPELINE: usize = 2;

/// Which partition a message without a key goes to (keyed messages always go by key hash).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RoutingMode {
    /// Spread over all partitions in turn.
    #[default]
    RoundRobin,
    /// One partition, picked at random when the producer is created.
    SinglePartition,
}

/// Pulsar's producer access modes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AccessMode {
    #[default]
    Shared,
    Exclusive,
    WaitForExclusive,
    ExclusiveWithFencing,
}

#[derive(Debug, Clone)]
pub struct ProducerOptions {
    /// Producer name; the broker picks one when unset. Deduplication keys on it.
    pub name: Option<String>,
    pub batching: bool,
    pub batch_max_messages: usize,
    pub batch_max_bytes: usize,
    pub batch_max_delay: Duration,
    pub compression: Compression,
    /// Messages queued or in flight per partition before `send_async` waits.
    pub max_pending: usize,
    /// Wait for room (true) or fail with `QueueFull` (false) when `max_pending` is reached.
    pub block_if_queue_full: bool,
    pub routing: RoutingMode,
    /// Split messages larger than the broker's maximum into chunks.
    pub chunking: bool,
    pub access_mode: AccessMode,
    /// A message not acknowledged in this time fails (with everything behind it).
    pub send_timeout: Duration,
    pub properties: Vec<(String, String)>,
    /// Create this subscription with the producer (so nothing is missed before a consumer).
    pub initial_subscription: Option<String>,
}

impl Default for ProducerOptions {
    fn default() -> Self {
        ProducerOptions {
            name: None,
            batching: true,
            batch_max_messages: 1000,
            batch_max_bytes: 128 * 1024,
            batch_max_delay: Duration::from_millis(1),
            compression: Compression::None,
            max_pending: 1000,
            block_if_queue_full: true,
            routing: RoutingMode::RoundRobin,
            chunking: false,
            access_mode: AccessMode::Shared,
            send_timeout: Duration::from_secs(30),
            properties: Vec::new(),
            initial_subscription: None,
        }
    }
}

pub struct ProducerBuilder {
    client: Client,
    topic: String,
    opts: ProducerOptions,
}

impl ProducerBuilder {
    pub(crate) fn new(client: Client, topic: String) -> ProducerBuilder {
        ProducerBuilder {
            client,
            topic,
            opts: ProducerOptions::default(),
        }
    }

    pub fn name(mut self, n: impl Into<String>) -> Self {
        self.opts.name = Some(n.into());
        self
    }

    pub fn batching(mut self, on: bool) -> Self {
        self.opts.batching = on;
        self
    }

    pub fn batch_max_messages(mut self, n: usize) -> Self {
        self.opts.batch_max_messages = n.max(1);
        self
    }

    pub fn batch_max_bytes(mut self, n: usize) -> Self {
        self.opts.batch_max_bytes = n.max(1);
        self
    }

    pub fn batch_max_delay(mut self, d: Duration) -> Self {
        self.opts.batch_max_delay = d;
        self
    }

    pub fn compression(mut self, c: Compression) -> Self {
        self.opts.compression = c;
        self
    }

    pub fn max_pending(mut self, n: usize) -> Self {
        self.opts.max_pending = n.max(1);
        self
    }

    pub fn block_if_queue_full(mut self, on: bool) -> Self {
        self.opts.block_if_queue_full = on;
        self
    }

    pub fn routing(mut self, r: RoutingMode) -> Self {
        self.opts.routing = r;
        self
    }

    pub fn chunking(mut self, on: bool) -> Self {
        self.opts.chunking = on;
        self
    }

    pub fn access_mode(mut self, m: AccessMode) -> Self {
        self.opts.access_mode = m;
        self
    }

    pub fn send_timeout(mut self, d: Duration) -> Self {
        self.opts.send_timeout = d;
        self
    }

    pub fn property(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.opts.properties.push((k.into(), v.into()));
        self
    }

    pub fn initial_subscription(mut self, s: impl Into<String>) -> Self {
        self.opts.initial_subscription = Some(s.into());
        self
    }

    pub fn options(mut self, o: ProducerOptions) -> Self {
        self.opts = o;
        self
    }

    /// Registers the producer on every partition; fails if any refuses.
    pub async fn create(self) -> Result<Producer> {
        if self.opts.chunking && self.opts.batching {
            // as in Pulsar: a chunked message is never part of a batch, and mixing both
            // makes receipts of one message arrive out of step with the others
            debug!("chunking on: large messages bypass batching");
        }
        let topic = topic_name(&self.topic)?;
        let parts = self.client.expand(&topic).await?;
        let opts = Arc::new(self.opts);
        let mut made = Vec::with_capacity(parts.len());
        for (name, index) in parts {
            match PartProducer::start(&self.client, name, index, Arc::clone(&opts)).await {
                Ok(p) => made.push(p),
                Err(e) => {
                    for p in &made {
                        let _ = p.close().await;
                    }
                    return Err(e);
                }
            }
        }
        let single = rand::random::<u32>() as usize % made.len().max(1);
        Ok(Producer {
            inner: Arc::new(Shared {
                topic,
                parts: made,
                routing: opts.routing,
                next: AtomicUsize::new(single),
                single,
            }),
        })
    }
}

/// Sends messages to a topic (all its partitions). Cheap to clone.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Shared>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("topic", &self.inner.topic)
            .finish()
    }
}

struct Shared {
    topic: String,
    parts: Vec<PartProducer>,
    routing: RoutingMode,
    next: AtomicUsize,
    single: usize,
}

/// The receipt of one message: resolves to its id once the broker has stored it.
pub struct SendFuture(oneshot::Receiver<Result<MessageId>>);

impl Future for SendFuture {
    type Output = Result<MessageId>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(Error::Closed)))
    }
}

impl Producer {
    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    pub fn partitions(&self) -> usize {
        self.inner.parts.len()
    }

    fn route(&self, msg: &ProducerMessage) -> &PartProducer {
        let parts = &self.inner.parts;
        if parts.len() == 1 {
            return &parts[0];
        }
        let i = match (&msg.key, self.inner.routing) {
            (Some(k), _) => (hash::murmur3_32(k.as_bytes(), 0) & 0x7fff_ffff) as usize,
            (None, RoutingMode::SinglePartition) => self.inner.single,
            (None, RoutingMode::RoundRobin) => self.inner.next.fetch_add(1, Ordering::Relaxed),
        };
        &parts[i % parts.len()]
    }

    /// Queues a message: waits for room when the producer is full (or fails with
    /// `QueueFull` if so configured), then returns the future of its receipt.
    pub async fn send_async(&self, msg: impl Into<ProducerMessage>) -> Result<SendFuture> {
        let msg = msg.into();
        self.route(&msg).enqueue(msg).await
    }

    /// Sends a message and waits until the broker has stored it.
    pub async fn send(&self, msg: impl Into<ProducerMessage>) -> Result<MessageId> {
        self.send_async(msg).await?.await
    }

    /// Sends the open batches now and waits for everything queued so far.
    pub async fn flush(&self) -> Result<()> {
        for p in &self.inner.parts {
            p.flush().await?;
        }
        Ok(())
    }

    /// Flushes, then closes the producer on the broker.
    pub async fn close(&self) -> Result<()> {
        let mut first = Ok(());
        for p in &self.inner.parts {
            if let Err(e) = p.close().await
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        first
    }
}

enum Cmd {
    Send(ProducerMessage, Waiter),
    Flush(oneshot::Sender<Result<()>>),
    Close(oneshot::Sender<Result<()>>),
}

struct Waiter {
    tx: oneshot::Sender<Result<MessageId>>,
    _permit: OwnedSemaphorePermit,
}

struct PartProducer {
    tx: mpsc::UnboundedSender<Cmd>,
    permits: Arc<Semaphore>,
    block: bool,
}

impl PartProducer {
    async fn start(
        client: &Client,
        topic: String,
        partition: i32,
        opts: Arc<ProducerOptions>,
    ) -> Result<PartProducer> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let permits = Arc::new(Semaphore::new(opts.max_pending));
        let block = opts.block_if_queue_full;
        let task = Task {
            client: client.clone(),
            topic: topic.into(),
            partition,
            id: client.new_id(),
            name: opts.name.clone(),
            opts,
            conn: None,
            events: None,
            epoch: 0,
            next_seq: 0,
            seq_known: false,
            batch: Batch::default(),
            inflight: VecDeque::new(),
            flushes: Vec::new(),
            max_message_size: magnetar_protocol::DEFAULT_MAX_MESSAGE_SIZE,
            backoff: Backoff::new(client.opts().max_backoff),
            reconnect_at: None,
            failed: None,
        };
        tokio::spawn(task.run(rx, ready_tx));
        ready_rx.await.unwrap_or(Err(Error::Closed))?;
        Ok(PartProducer { tx, permits, block })
    }

    async fn enqueue(&self, msg: ProducerMessage) -> Result<SendFuture> {
        let permit = if self.block {
            Arc::clone(&self.permits)
                .acquire_owned()
                .await
                .map_err(|_| Error::Closed)?
        } else {
            Arc::clone(&self.permits)
                .try_acquire_owned()
                .map_err(|_| Error::QueueFull)?
        };
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Send(
                msg,
                Waiter {
                    tx,
                    _permit: permit,
                },
            ))
            .map_err(|_| Error::Closed)?;
        Ok(SendFuture(rx))
    }

    async fn flush(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Cmd::Flush(tx)).map_err(|_| Error::Closed)?;
        rx.await.unwrap_or(Err(Error::Closed))
    }

    async fn close(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Close(tx)).is_err() {
            return Ok(());
        }
        let r = rx.await.unwrap_or(Ok(()));
        self.permits.close();
        r
    }
}

/// Messages collected into the next batch entry.
#[derive(Default)]
struct Batch {
    payload: BytesMut,
    waiters: Vec<Waiter>,
    first_seq: u64,
    last_seq: u64,
    opened: Option<Instant>,
}

/// An entry sent (or to be sent after a reconnect) whose receipt has not come back.
struct InFlight {
    seq: u64,
    highest: u64,
    entry: Bytes,
    messages: i32,
    chunk: bool,
    /// For a batch, waiter i gets batch index i; empty for all but a message's last chunk.
    waiters: Vec<Waiter>,
    batched: bool,
    sent_at: Instant,
}

struct Task {
    client: Client,
    topic: Arc<str>,
    partition: i32,
    id: u64,
    name: Option<String>,
    opts: Arc<ProducerOptions>,
    conn: Option<Arc<Connection>>,
    events: Option<mpsc::UnboundedReceiver<ProducerEvent>>,
    epoch: u64,
    next_seq: u64,
    /// The next sequence id was learnt from the broker (or set by the first message).
    seq_known: bool,
    batch: Batch,
    inflight: VecDeque<InFlight>,
    flushes: Vec<(u64, oneshot::Sender<Result<()>>)>,
    max_message_size: usize,
    backoff: Backoff,
    reconnect_at: Option<Instant>,
    /// Set when the producer can never send again (fenced, terminated topic, closed).
    failed: Option<Error>,
}

impl Task {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Cmd>,
        ready: oneshot::Sender<Result<()>>,
    ) {
        match self.connect().await {
            Ok(()) => {
                let _ = ready.send(Ok(()));
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        }
        let mut housekeeping = tokio::time::interval(Duration::from_millis(250));
        let mut closing: Option<oneshot::Sender<Result<()>>> = None;
        let mut input_open = true;
        loop {
            let batch_due = self
                .batch
                .opened
                .map(|t| t + self.opts.batch_max_delay)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            let reconnect_due = self
                .reconnect_at
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                ev = recv_event(&mut self.events) => self.on_event(ev),
                cmd = rx.recv(), if input_open => match cmd {
                    Some(Cmd::Send(m, w)) => {
                        self.add(m, w);
                        // take what else is queued before flushing on time
                        while let Ok(c) = rx.try_recv() {
                            match c {
                                Cmd::Send(m, w) => self.add(m, w),
                                Cmd::Flush(tx) => self.flush_request(tx),
                                Cmd::Close(tx) => {
                                    self.send_batch();
                                    closing = Some(tx);
                                    input_open = false;
                                    break;
                                }
                            }
                        }
                        // nothing else queued and the pipe to the broker nearly empty: waiting
                        // out the batch delay would only add latency (under load batches
                        // still fill while earlier ones are in flight)
                        if self.inflight.len() < IDLE_PIPELINE && self.conn.is_some() {
                            self.send_batch();
                        }
                    }
                    Some(Cmd::Flush(tx)) => self.flush_request(tx),
                    Some(Cmd::Close(tx)) => {
                        self.send_batch();
                        closing = Some(tx);
                        input_open = false;
                    }
                    None => {
                        self.send_batch();
                        input_open = false;
                    }
                },
                _ = tokio::time::sleep_until(batch_due.into()), if self.batch.opened.is_some() => {
                    self.send_batch();
                }
                _ = tokio::time::sleep_until(reconnect_due.into()), if self.reconnect_at.is_some() => {
                    self.reconnect_at = None;
                    if let Err(e) = self.connect().await {
                        self.connect_failed(e);
                    }
                }
                _ = housekeeping.tick() => self.expire(),
            }
            if !input_open && self.inflight.is_empty() && self.batch.waiters.is_empty() {
                let r = self.close_on_broker().await;
                if let Some(tx) = closing.take() {
                    let _ = tx.send(r);
                }
                break;
            }
            if !input_open && self.failed.is_some() {
                self.fail_all(Error::Closed);
            }
        }
    }

    async fn connect(&mut self) -> Result<()> {
        let conn = self.client.lookup(&self.topic).await?;
        let (etx, erx) = mpsc::unbounded_channel();
        conn.register_producer(self.id, etx);
        let rid = conn.request_id();
        let cmd = BaseCommand {
            r#type: Type::Producer as i32,
            producer: Some(CommandProducer {
                topic: self.topic.to_string(),
                producer_id: self.id,
                request_id: rid,
                producer_name: self.name.clone(),
                metadata: self
                    .opts
                    .properties
                    .iter()
                    .map(|(k, v)| KeyValue {
                        key: k.clone(),
                        value: v.clone(),
                    })
                    .collect(),
                epoch: Some(self.epoch),
                user_provided_producer_name: Some(self.opts.name.is_some()),
                producer_access_mode: Some(match self.opts.access_mode {
                    AccessMode::Shared => ProducerAccessMode::Shared,
                    AccessMode::Exclusive => ProducerAccessMode::Exclusive,
                    AccessMode::WaitForExclusive => ProducerAccessMode::WaitForExclusive,
                    AccessMode::ExclusiveWithFencing => ProducerAccessMode::ExclusiveWithFencing,
                } as i32),
                initial_subscription_name: self.opts.initial_subscription.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.epoch += 1;
        let answer = conn.request(rid, cmd).await;
        let mut ok = match answer.map(|c| c.producer_success) {
            Ok(Some(s)) => s,
            Ok(None) => {
                conn.forget_producer(self.id);
                return Err(Error::Protocol(
                    "PRODUCER answered with something else".into(),
                ));
            }
            Err(e) => {
                conn.forget_producer(self.id);
                return Err(e);
            }
        };
        if ok.producer_ready == Some(false) {
            // WaitForExclusive: the broker answers again once this producer has the topic
            info!(topic = %self.topic, "waiting for exclusive access");
            let rx = conn.expect(rid)?;
            ok = conn
                .answer(rid, rx, None)
                .await?
                .producer_success
                .ok_or_else(|| Error::Protocol("expected PRODUCER_SUCCESS".into()))?;
        }
        self.name = Some(ok.producer_name.clone());
        if !self.seq_known {
            self.seq_known = true;
            let last = ok.last_sequence_id.unwrap_or(-1);
            if last >= 0 {
                self.next_seq = self.next_seq.max(last as u64 + 1);
            }
        }
        self.max_message_size = conn.max_message_size;
        debug!(topic = %self.topic, producer = %ok.producer_name, broker = %conn.url, "producer ready");
        self.backoff.reset();
        // everything not yet acknowledged goes again, in order
        for f in &mut self.inflight {
            f.sent_at = Instant::now();
            let _ = conn.send_payload(send_cmd(self.id, f), f.entry.clone());
        }
        self.conn = Some(conn);
        self.events = Some(erx);
        Ok(())
    }

    fn connect_failed(&mut self, e: Error) {
        if e.is_retriable() || matches!(e.server_code(), Some(ServerError::ProducerBusy)) {
            let wait = self.backoff.next();
            warn!(topic = %self.topic, error = %e, ?wait, "producer reconnect failed; retrying");
            self.reconnect_at = Some(Instant::now() + wait);
        } else {
            warn!(topic = %self.topic, error = %e, "producer cannot reconnect; failing it");
            self.fail_all(e.clone());
            self.failed = Some(e);
        }
    }

    fn disconnected(&mut self) {
        if let Some(c) = self.conn.take() {
            c.forget_producer(self.id);
        }
        self.events = None;
        if self.failed.is_none() && self.reconnect_at.is_none() {
            self.reconnect_at = Some(Instant::now() + self.backoff.next());
        }
    }

    fn on_event(&mut self, ev: Option<ProducerEvent>) {
        match ev {
            Some(ProducerEvent::Receipt(r)) => {
                let id = r.message_id.as_ref();
                match self.inflight.front() {
                    Some(f) if f.seq == r.sequence_id => {}
                    Some(f) if r.sequence_id < f.seq => return, // an old duplicate
                    Some(f) => {
                        warn!(topic = %self.topic, expected = f.seq, got = r.sequence_id,
                              "receipt out of order; re-sending from the gap");
                        self.disconnected();
                        return;
                    }
                    None => return,
                }
                let Some(f) = self.inflight.pop_front() else {
                    return;
                };
                let base = id.map_or(MessageId::new(u64::MAX, u64::MAX), |d| {
                    MessageId::from_proto(d, 0)
                });
                let base = MessageId {
                    partition: self.partition,
                    ..base
                };
                let n = f.waiters.len() as i32;
                for (i, w) in f.waiters.into_iter().enumerate() {
                    let id = if f.batched {
                        MessageId {
                            batch_index: i as i32,
                            batch_size: n,
                            ..base
                        }
                    } else {
                        base
                    };
                    let _ = w.tx.send(Ok(id));
                }
                // a flush waiting for `target` is done once nothing at or before it is left
                let front = self.inflight.front().map(|x| x.seq);
                let mut i = 0;
                while i < self.flushes.len() {
                    if front.is_none_or(|s| s > self.flushes[i].0) {
                        let (_, tx) = self.flushes.swap_remove(i);
                        let _ = tx.send(Ok(()));
                    } else {
                        i += 1;
                    }
                }
            }
            Some(ProducerEvent::Error(e)) => {
                let err = Error::server(e.error, e.message.clone());
                match err.server_code() {
                    Some(
                        ServerError::TopicTerminatedError
                        | ServerError::ProducerFenced
                        | ServerError::ProducerBlockedQuotaExceededException,
                    ) => {
                        warn!(topic = %self.topic, error = %err, "producer failed");
                        self.fail_all(err.clone());
                        if err.server_code()
                            != Some(ServerError::ProducerBlockedQuotaExceededException)
                        {
                            self.failed = Some(err);
                        }
                    }
                    Some(ServerError::ChecksumError) => {
                        // this one entry was damaged on the way; it fails alone
                        if let Some(i) = self.inflight.iter().position(|f| f.seq == e.sequence_id)
                            && let Some(f) = self.inflight.remove(i)
                        {
                            for w in f.waiters {
                                let _ = w.tx.send(Err(err.clone()));
                            }
                        }
                    }
                    _ => {
                        warn!(topic = %self.topic, error = %err, "send refused; reconnecting");
                        self.disconnected();
                    }
                }
            }
            Some(ProducerEvent::Closed) | None => {
                debug!(topic = %self.topic, "producer connection closed; reconnecting");
                self.disconnected();
            }
        }
    }

    fn flush_request(&mut self, tx: oneshot::Sender<Result<()>>) {
        self.send_batch();
        if let Some(e) = &self.failed {
            let _ = tx.send(Err(e.clone()));
            return;
        }
        match self.inflight.back() {
            Some(f) => self.flushes.push((f.highest, tx)),
            None => {
                let _ = tx.send(Ok(()));
            }
        }
    }

    fn assign_seq(&mut self, msg: &ProducerMessage) -> u64 {
        let seq = msg.sequence_id.unwrap_or(self.next_seq);
        self.next_seq = self.next_seq.max(seq + 1);
        self.seq_known = true;
        seq
    }

    fn add(&mut self, msg: ProducerMessage, w: Waiter) {
        if let Some(e) = &self.failed {
            let _ = w.tx.send(Err(e.clone()));
            return;
        }
        let batchable = self.opts.batching
            && msg.deliver_at.is_none()
            && msg.payload.len() < self.opts.batch_max_bytes;
        if !batchable {
            self.send_batch();
            return self.send_single(msg, w);
        }
        let b = &self.batch;
        if !b.waiters.is_empty()
            && (b.waiters.len() >= self.opts.batch_max_messages
                || b.payload.len() + msg.payload.len() + 64 > self.opts.batch_max_bytes)
        {
            self.send_batch();
        }
        let seq = self.assign_seq(&msg);
        let smm = SingleMessageMetadata {
            properties: key_values(msg.properties),
            partition_key: msg.key,
            payload_size: msg.payload.len() as i32,
            event_time: msg.event_time,
            ordering_key: msg.ordering_key,
            sequence_id: Some(seq),
            ..Default::default()
        };
        let b = &mut self.batch;
        if b.waiters.is_empty() {
            b.first_seq = seq;
            b.opened = Some(Instant::now());
        }
        b.last_seq = seq;
        b.payload.reserve(4 + smm.encoded_len() + msg.payload.len());
        b.payload.put_u32(smm.encoded_len() as u32);
        let _ = smm.encode(&mut b.payload);
        b.payload.put_slice(&msg.payload);
        b.waiters.push(w);
        if b.waiters.len() >= self.opts.batch_max_messages
            || b.payload.len() >= self.opts.batch_max_bytes
        {
            self.send_batch();
        }
    }

    fn metadata(&self, seq: u64) -> MessageMetadata {
        MessageMetadata {
            producer_name: self.name.clone().unwrap_or_default(),
            sequence_id: seq,
            publish_time: now_ms(),
            ..Default::default()
        }
    }

    /// Compresses `payload` into `md`; the bytes to send.
    fn compress(&self, md: &mut MessageMetadata, payload: &[u8]) -> Result<Vec<u8>, Error> {
        let c = self.opts.compression;
        if c == Compression::None {
            return Ok(payload.to_vec());
        }
        md.compression = Some(c.proto() as i32);
        md.uncompressed_size = Some(payload.len() as u32);
        c.compress(payload).map_err(Error::Invalid)
    }

    fn send_batch(&mut self) {
        if self.batch.waiters.is_empty() {
            return;
        }
        let b = std::mem::take(&mut self.batch);
        let n = b.waiters.len() as i32;
        let mut md = self.metadata(b.first_seq);
        md.num_messages_in_batch = Some(n);
        if b.last_seq > b.first_seq {
            md.highest_sequence_id = Some(b.last_seq);
        }
        let body = if self.opts.compression == Compression::None {
            None
        } else {
            match self.compress(&mut md, &b.payload) {
                Ok(z) => Some(z),
                Err(e) => {
                    for w in b.waiters {
                        let _ = w.tx.send(Err(e.clone()));
                    }
                    return;
                }
            }
        };
        let entry = encode_entry(&md, body.as_deref().unwrap_or(&b.payload));
        if entry.len() > self.max_message_size {
            let e = Error::TooLarge {
                size: entry.len(),
                max: self.max_message_size,
            };
            for w in b.waiters {
                let _ = w.tx.send(Err(e.clone()));
            }
            return;
        }
        self.push(InFlight {
            seq: b.first_seq,
            highest: b.last_seq,
            entry,
            messages: n,
            chunk: false,
            waiters: b.waiters,
            batched: true,
            sent_at: Instant::now(),
        });
    }

    fn send_single(&mut self, msg: ProducerMessage, w: Waiter) {
        let seq = self.assign_seq(&msg);
        let mut md = self.metadata(seq);
        md.properties = key_values(msg.properties);
        md.partition_key = msg.key;
        md.ordering_key = msg.ordering_key;
        md.event_time = msg.event_time;
        md.deliver_at_time = msg.deliver_at.map(|t| t as i64);
        md.replicated_from = msg.replicated_from;
        let body = match self.compress(&mut md, &msg.payload) {
            Ok(b) => b,
            Err(e) => {
                let _ = w.tx.send(Err(e));
                return;
            }
        };
        let room = self.max_message_size.saturating_sub(md.encoded_len() + 64);
        if body.len() <= room {
            let entry = encode_entry(&md, &body);
            return self.push(InFlight {
                seq,
                highest: seq,
                entry,
                messages: 1,
                chunk: false,
                waiters: vec![w],
                batched: false,
                sent_at: Instant::now(),
            });
        }
        if !self.opts.chunking {
            let _ = w.tx.send(Err(Error::TooLarge {
                size: body.len(),
                max: self.max_message_size,
            }));
            return;
        }
        // room for the chunk fields, then each chunk carries up to `size` bytes
        let size = room.saturating_sub(64).max(1);
        let total = body.len().div_ceil(size);
        md.uuid = Some(format!("{}-{seq}", md.producer_name));
        md.num_chunks_from_msg = Some(total as i32);
        md.total_chunk_msg_size = Some(body.len() as i32);
        let mut w = Some(w);
        for (i, piece) in body.chunks(size).enumerate() {
            md.chunk_id = Some(i as i32);
            let entry = encode_entry(&md, piece);
            let last = i + 1 == total;
            self.push(InFlight {
                seq,
                highest: seq,
                entry,
                messages: 1,
                chunk: true,
                waiters: if last {
                    w.take().into_iter().collect()
                } else {
                    Vec::new()
                },
                batched: false,
                sent_at: Instant::now(),
            });
        }
    }

    fn push(&mut self, f: InFlight) {
        if let Some(c) = &self.conn
            && c.send_payload(send_cmd(self.id, &f), f.entry.clone())
                .is_err()
        {
            self.disconnected();
        }
        self.inflight.push_back(f);
    }

    /// Fails everything in flight once the oldest entry has waited out the send timeout.
    fn expire(&mut self) {
        let limit = self.opts.send_timeout;
        if limit.is_zero() {
            return;
        }
        if self
            .inflight
            .front()
            .is_some_and(|f| f.sent_at.elapsed() > limit)
        {
            warn!(topic = %self.topic, pending = self.inflight.len(), "send timed out");
            self.fail_all(Error::Timeout {
                operation: "send",
                after: limit,
            });
        }
    }

    fn fail_all(&mut self, e: Error) {
        for f in self.inflight.drain(..) {
            for w in f.waiters {
                let _ = w.tx.send(Err(e.clone()));
            }
        }
        for w in std::mem::take(&mut self.batch).waiters {
            let _ = w.tx.send(Err(e.clone()));
        }
        for (_, tx) in self.flushes.drain(..) {
            let _ = tx.send(Err(e.clone()));
        }
    }

    async fn close_on_broker(&mut self) -> Result<()> {
        let Some(conn) = self.conn.take() else {
            return Ok(());
        };
        let rid = conn.request_id();
        let cmd = BaseCommand {
            r#type: Type::CloseProducer as i32,
            close_producer: Some(CommandCloseProducer {
                producer_id: self.id,
                request_id: rid,
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = conn.request(rid, cmd).await.map(|_| ());
        conn.forget_producer(self.id);
        match r {
            Err(Error::Disconnected { .. }) => Ok(()),
            other => other,
        }
    }
}

async fn recv_event(
    events: &mut Option<mpsc::UnboundedReceiver<ProducerEvent>>,
) -> Option<ProducerEvent> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn send_cmd(producer_id: u64, f: &InFlight) -> BaseCommand {
    BaseCommand {
        r#type: Type::Send as i32,
        send: Some(CommandSend {
            producer_id,
            sequence_id: f.seq,
            num_messages: Some(f.messages),
            highest_sequence_id: (f.highest > f.seq).then_some(f.highest),
            is_chunk: f.chunk.then_some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn key_values(props: Vec<(String, String)>) -> Vec<KeyValue> {
    props
        .into_iter()
        .map(|(key, value)| KeyValue { key, value })
        .collect()
}
