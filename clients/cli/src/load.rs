//! The Pulsar-protocol workloads of `magnetar-perf`: produce, consume and end-to-end, driven
//! through our own client (`magnetar-client`), so they run against Magnetar or any Pulsar.
//!
//! Latency of a send counts from when the message was due (with a rate) rather than from
//! when it was handed over, so a stalled producer shows as latency, not as a lower rate.
//! End-to-end latency uses a microsecond stamp in the payload, taken and read in this one
//! process; consume alone uses the publish time (milliseconds, the producer's clock).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use futures::FutureExt;
use magnetar_client::admin::{AdminClient, AdminError, Connection as AdminConn};
use magnetar_client::{
    Authentication, Client, Compression, Consumer, InitialPosition, Message, Producer, SendFuture,
    SubscriptionType,
};
use serde::Serialize;

use crate::parse_duration;
use crate::report::{Latency, Live, Recorder, Summary, new_histogram, spawn_live};

/// How to reach the broker.
#[derive(clap::Args, Debug, Clone)]
pub struct ClientArgs {
    /// Service URL (pulsar://host:6650 or pulsar+ssl://host:6651).
    #[arg(
        long,
        short = 'u',
        env = "MAGNETAR_SERVICE_URL",
        default_value = "pulsar://127.0.0.1:6650"
    )]
    pub service_url: String,
    /// Admin REST URL, used to create partitioned topics.
    #[arg(
        long,
        env = "MAGNETAR_WEB_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub web_url: String,
    /// JWT to authenticate with.
    #[arg(long, env = "MAGNETAR_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the JWT (re-read when the broker asks for a fresh one).
    #[arg(long, conflicts_with = "token")]
    pub token_file: Option<std::path::PathBuf>,
    /// PEM certificates to trust for pulsar+ssl://.
    #[arg(long)]
    pub tls_trust_cert: Option<std::path::PathBuf>,
}

impl ClientArgs {
    pub fn client(&self) -> Result<Client> {
        let mut b = Client::builder(&self.service_url);
        if let Some(t) = &self.token {
            b = b.token(t.clone());
        }
        if let Some(f) = &self.token_file {
            b = b.authentication(Authentication::token_file(f));
        }
        if let Some(c) = &self.tls_trust_cert {
            b = b.tls_trust_certs(c);
        }
        b.build().context("client options")
    }

    fn admin(&self) -> Result<AdminClient> {
        let mut token = self.token.clone();
        if let Some(f) = &self.token_file {
            token = Some(std::fs::read_to_string(f)?.trim().to_string());
        }
        Ok(AdminClient::new(&AdminConn {
            url: self.web_url.clone(),
            token,
            trust_cert: self.tls_trust_cert.clone(),
            insecure: false,
        })?)
    }
}

/// Which topics a workload uses.
#[derive(clap::Args, Debug, Clone)]
pub struct TopicArgs {
    /// Topic names (persistent://tenant/ns/name, tenant/ns/name, or a name in public/default).
    #[arg(required = true)]
    pub topics: Vec<String>,
    /// Use N topics per name given: NAME-0 .. NAME-(N-1).
    #[arg(long, default_value_t = 1)]
    pub num_topics: usize,
    /// Create the topics with this many partitions first (through the admin API).
    #[arg(long, default_value_t = 0)]
    pub partitions: u32,
}

impl TopicArgs {
    fn names(&self) -> Vec<String> {
        if self.num_topics <= 1 {
            return self.topics.clone();
        }
        self.topics
            .iter()
            .flat_map(|t| (0..self.num_topics).map(move |i| format!("{t}-{i}")))
            .collect()
    }

    fn create(&self, c: &ClientArgs) -> Result<()> {
        if self.partitions == 0 {
            return Ok(());
        }
        let admin = c.admin()?;
        for t in self.names() {
            match admin.create_topic(&t, self.partitions) {
                Ok(()) | Err(AdminError::Status { status: 409, .. }) => {}
                Err(e) => return Err(e).with_context(|| format!("create {t}")),
            }
        }
        Ok(())
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct ProducerArgs {
    /// Messages per second over all producers (0: as fast as possible).
    #[arg(long, short = 'r', default_value_t = 0)]
    pub rate: u64,
    /// Bytes per message.
    #[arg(long, short = 's', default_value_t = 1024)]
    pub size: usize,
    /// Producers per topic.
    #[arg(long, short = 'p', default_value_t = 1)]
    pub producers: usize,
    /// Send each message on its own instead of in batches.
    #[arg(long)]
    pub no_batching: bool,
    #[arg(long, default_value_t = 1000)]
    pub batch_max_messages: usize,
    #[arg(long, default_value_t = 128 * 1024)]
    pub batch_max_bytes: usize,
    /// Longest a batch stays open.
    #[arg(long, default_value = "1ms", value_parser = parse_duration)]
    pub batch_delay: Duration,
    /// none, lz4, zlib, zstd or snappy.
    #[arg(long, default_value = "none")]
    pub compression: Compression,
    /// Messages queued or in flight per producer and partition.
    #[arg(long, default_value_t = 1000)]
    pub max_pending: usize,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ConsumerArgs {
    #[arg(long, short = 'S', default_value = "perf")]
    pub subscription: String,
    #[arg(long, value_enum, default_value = "exclusive")]
    pub sub_type: SubType,
    /// Consumers per topic (more than one needs shared, key-shared or failover).
    #[arg(long, short = 'c', default_value_t = 1)]
    pub consumers: usize,
    /// Messages fetched ahead per consumer and partition.
    #[arg(long, default_value_t = 1000)]
    pub receiver_queue: u32,
    /// Start a new subscription at the oldest message (default: the newest).
    #[arg(long)]
    pub earliest: bool,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum SubType {
    Exclusive,
    Shared,
    Failover,
    KeyShared,
}

impl From<SubType> for SubscriptionType {
    fn from(s: SubType) -> Self {
        match s {
            SubType::Exclusive => SubscriptionType::Exclusive,
            SubType::Shared => SubscriptionType::Shared,
            SubType::Failover => SubscriptionType::Failover,
            SubType::KeyShared => SubscriptionType::KeyShared,
        }
    }
}

/// How long a workload runs.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Stop after this many messages instead (shows a progress bar).
    #[arg(long, short = 'n')]
    pub count: Option<u64>,
}

#[derive(clap::Args, Debug)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub topics: TopicArgs,
    #[command(flatten)]
    pub producer: ProducerArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(clap::Args, Debug)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub topics: TopicArgs,
    #[command(flatten)]
    pub consumer: ConsumerArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(clap::Args, Debug)]
pub struct E2eArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub topics: TopicArgs,
    #[command(flatten)]
    pub producer: ProducerArgs,
    #[command(flatten)]
    pub consumer: ConsumerArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Serialize)]
struct Report {
    #[serde(flatten)]
    summary: Summary,
    messages: u64,
    bytes: u64,
    mb_per_sec: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    publish_latency_ms: Option<Latency>,
}

fn report(summary: Summary, bytes: u64, publish: Option<Latency>) -> Result<()> {
    let mb_per_sec = bytes as f64 / 1e6 / summary.seconds;
    let r = Report {
        messages: summary.ops,
        bytes,
        mb_per_sec,
        publish_latency_ms: publish,
        summary,
    };
    println!("{}", serde_json::to_string_pretty(&r)?);
    Ok(())
}

async fn producers(c: &Client, topics: &[String], a: &ProducerArgs) -> Result<Vec<Producer>> {
    let mut out = Vec::new();
    for t in topics {
        for _ in 0..a.producers.max(1) {
            let p = c
                .producer(t)
                .batching(!a.no_batching)
                .batch_max_messages(a.batch_max_messages)
                .batch_max_bytes(a.batch_max_bytes)
                .batch_max_delay(a.batch_delay)
                .compression(a.compression)
                .max_pending(a.max_pending)
                .create()
                .await
                .with_context(|| format!("create a producer on {t}"))?;
            out.push(p);
        }
    }
    Ok(out)
}

async fn consumers(c: &Client, topics: &[String], a: &ConsumerArgs) -> Result<Vec<Consumer>> {
    let mut out = Vec::new();
    for t in topics {
        for _ in 0..a.consumers.max(1) {
            let con = c
                .consumer()
                .topic(t)
                .subscription(&a.subscription)
                .subscription_type(a.sub_type.into())
                .receiver_queue_size(a.receiver_queue)
                .initial_position(if a.earliest {
                    InitialPosition::Earliest
                } else {
                    InitialPosition::Latest
                })
                .subscribe()
                .await
                .with_context(|| format!("subscribe to {t}"))?;
            out.push(con);
        }
    }
    Ok(out)
}

/// Payload stamps for end-to-end latency: microseconds since `origin`.
#[derive(Clone, Copy)]
struct Stamp(Instant);

impl Stamp {
    fn now(&self) -> u64 {
        self.0.elapsed().as_micros() as u64
    }

    fn payload(&self, size: usize) -> Bytes {
        let mut b = BytesMut::with_capacity(size.max(8));
        b.put_u64(self.now());
        b.resize(size.max(8), b'p');
        b.freeze()
    }

    fn latency(&self, m: &Message) -> Option<u64> {
        let sent = u64::from_be_bytes(m.payload.get(..8)?.try_into().ok()?);
        Some(self.now().saturating_sub(sent).max(1))
    }
}

struct Sender {
    producer: Producer,
    payload: Bytes,
    stamp: Option<Stamp>,
    /// Seconds between messages (none: as fast as possible).
    every: Option<Duration>,
    limit: u64,
    deadline: Instant,
    rec: Recorder,
    bytes: Arc<AtomicU64>,
}

impl Sender {
    async fn run(self) -> Result<u64> {
        let started = Instant::now();
        let mut waiting: VecDeque<(Instant, SendFuture)> = VecDeque::new();
        let mut local = new_histogram();
        let mut errors = 0u64;
        let mut issued = 0u64;
        let mut last_flush = Instant::now();
        let size = self.payload.len() as u64;
        let done = |due: Instant,
                    r: magnetar_client::Result<magnetar_client::MessageId>,
                    local: &mut hdrhistogram::Histogram<u64>,
                    errors: &mut u64| match r {
            Ok(_) => {
                let _ = local.record(due.elapsed().as_micros().max(1) as u64);
                self.bytes.fetch_add(size, Ordering::Relaxed);
            }
            Err(_) => *errors += 1,
        };
        loop {
            // receipts come back in order: take every one that is already here
            while let Some((_, f)) = waiting.front_mut() {
                match f.now_or_never() {
                    Some(r) => {
                        let (due, _) = waiting.pop_front().context("front")?;
                        done(due, r, &mut local, &mut errors);
                    }
                    None => break,
                }
            }
            if issued < self.limit && Instant::now() < self.deadline {
                let due = self
                    .every
                    .map_or_else(Instant::now, |i| started + i.mul_f64(issued as f64));
                if due > Instant::now() {
                    match waiting.front_mut() {
                        Some((_, f)) => {
                            tokio::select! {
                                _ = tokio::time::sleep_until(due.into()) => {}
                                r = f => {
                                    let (d, _) = waiting.pop_front().context("front")?;
                                    done(d, r, &mut local, &mut errors);
                                }
                            }
                        }
                        None => tokio::time::sleep_until(due.into()).await,
                    }
                    continue;
                }
                let payload = match self.stamp {
                    Some(s) => s.payload(self.payload.len()),
                    None => self.payload.clone(),
                };
                match self.producer.send_async(payload).await {
                    Ok(f) => waiting.push_back((due, f)),
                    Err(_) => errors += 1,
                }
                issued += 1;
            } else {
                match waiting.pop_front() {
                    Some((due, f)) => {
                        let r = f.await;
                        done(due, r, &mut local, &mut errors);
                    }
                    None => break,
                }
            }
            if last_flush.elapsed() >= Duration::from_millis(100) {
                self.rec.record_batch(&mut local, errors);
                errors = 0;
                last_flush = Instant::now();
            }
        }
        self.rec.record_batch(&mut local, errors);
        let _ = self.producer.close().await;
        Ok(issued)
    }
}

fn senders(
    ps: Vec<Producer>,
    a: &ProducerArgs,
    run: &RunArgs,
    stamp: Option<Stamp>,
    rec: &Recorder,
    bytes: &Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<Result<u64>>> {
    let n = ps.len().max(1) as u64;
    let deadline = Instant::now() + run.duration;
    let payload = Bytes::from(vec![b'p'; a.size.max(if stamp.is_some() { 8 } else { 0 })]);
    let total = run.count.unwrap_or(u64::MAX);
    ps.into_iter()
        .enumerate()
        .map(|(i, producer)| {
            let share = if total == u64::MAX {
                u64::MAX
            } else {
                total / n + u64::from((i as u64) < total % n)
            };
            let s = Sender {
                producer,
                payload: payload.clone(),
                stamp,
                every: (a.rate > 0).then(|| Duration::from_secs_f64(n as f64 / a.rate as f64)),
                limit: share,
                deadline,
                rec: rec.clone(),
                bytes: Arc::clone(bytes),
            };
            tokio::spawn(s.run())
        })
        .collect()
}

/// One workload's measurement: its recorder, the bytes counter and the live line.
struct Measure {
    name: String,
    rec: Recorder,
    bytes: Arc<AtomicU64>,
    live: tokio::task::JoinHandle<()>,
    started: Instant,
}

impl Measure {
    fn start(kind: &str, topics: &[String], count: Option<u64>) -> Measure {
        let name = match topics {
            [one] => format!("{kind} {one}"),
            many => format!("{kind} {} topics", many.len()),
        };
        let rec = Recorder::default();
        let bytes = Arc::new(AtomicU64::new(0));
        let live = spawn_live(
            name.clone(),
            rec.clone(),
            Live {
                bytes: Some(Arc::clone(&bytes)),
                total: count,
            },
        );
        Measure {
            name,
            rec,
            bytes,
            live,
            started: Instant::now(),
        }
    }

    /// Stops the live line and prints the JSON summary.
    fn finish(
        self,
        target: &str,
        concurrency: usize,
        publish: Option<(hdrhistogram::Histogram<u64>, u64)>,
    ) -> Result<()> {
        let elapsed = self.started.elapsed();
        self.live.abort();
        let (hist, mut errors) = self.rec.total();
        errors += publish.as_ref().map_or(0, |p| p.1);
        let summary = Summary::new(&self.name, target, concurrency, &hist, errors, elapsed);
        report(
            summary,
            self.bytes.load(Ordering::Relaxed),
            publish.map(|(h, _)| Latency::of(&h)),
        )
    }
}

pub async fn produce(a: ProduceArgs) -> Result<()> {
    a.topics.create(&a.client)?;
    let client = a.client.client()?;
    let topics = a.topics.names();
    let ps = producers(&client, &topics, &a.producer).await?;
    let concurrency = ps.len();
    let m = Measure::start("produce", &topics, a.run.count);
    for t in senders(ps, &a.producer, &a.run, None, &m.rec, &m.bytes) {
        t.await.context("producer task")??;
    }
    m.finish(&a.client.service_url, concurrency, None)
}

/// Receives until `limit` messages (over all receivers; it may be lowered while this runs)
/// or the deadline; records latency.
async fn receive_all(
    cs: Vec<Consumer>,
    limit: Arc<AtomicU64>,
    deadline: Instant,
    stamp: Option<Stamp>,
    rec: &Recorder,
    bytes: &Arc<AtomicU64>,
) -> Result<()> {
    let received = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for mut c in cs {
        let rec = rec.clone();
        let bytes = Arc::clone(bytes);
        let received = Arc::clone(&received);
        let limit = Arc::clone(&limit);
        tasks.push(tokio::spawn(async move {
            let mut local = new_histogram();
            let mut last_flush = Instant::now();
            let mut errors = 0;
            while received.load(Ordering::Relaxed) < limit.load(Ordering::Relaxed) {
                let m = tokio::select! {
                    m = c.receive() => m,
                    // wake up now and then to see whether the limit moved
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    _ = tokio::time::sleep_until(deadline.into()) => break,
                };
                let m = match m {
                    Ok(m) => m,
                    Err(_) => {
                        errors += 1;
                        continue;
                    }
                };
                let us = match stamp {
                    Some(s) => s.latency(&m),
                    None => {
                        let now = magnetar_client::now_ms();
                        Some(now.saturating_sub(m.publish_time).max(1) * 1000)
                    }
                };
                if let Some(us) = us {
                    let _ = local.record(us);
                }
                bytes.fetch_add(m.payload.len() as u64, Ordering::Relaxed);
                received.fetch_add(1, Ordering::Relaxed);
                if c.ack(&m).is_err() {
                    errors += 1;
                }
                if last_flush.elapsed() >= Duration::from_millis(100) {
                    rec.record_batch(&mut local, errors);
                    errors = 0;
                    last_flush = Instant::now();
                }
            }
            rec.record_batch(&mut local, errors);
            let _ = c.close().await;
        }));
    }
    for t in tasks {
        t.await.context("consumer task")?;
    }
    Ok(())
}

pub async fn consume(a: ConsumeArgs) -> Result<()> {
    a.topics.create(&a.client)?;
    let client = a.client.client()?;
    let topics = a.topics.names();
    let cs = consumers(&client, &topics, &a.consumer).await?;
    let concurrency = cs.len();
    let m = Measure::start("consume", &topics, a.run.count);
    let deadline = m.started + a.run.duration;
    let limit = Arc::new(AtomicU64::new(a.run.count.unwrap_or(u64::MAX)));
    receive_all(cs, limit, deadline, None, &m.rec, &m.bytes).await?;
    m.finish(&a.client.service_url, concurrency, None)
}

pub async fn e2e(a: E2eArgs) -> Result<()> {
    a.topics.create(&a.client)?;
    let client = a.client.client()?;
    let topics = a.topics.names();
    // consumers first, at the end of the topic: they see exactly what this run sends
    let cs = consumers(&client, &topics, &a.consumer).await?;
    let ps = producers(&client, &topics, &a.producer).await?;
    let concurrency = ps.len() + cs.len();
    let stamp = Stamp(Instant::now());
    let pub_rec = Recorder::default();
    let sent_bytes = Arc::new(AtomicU64::new(0));
    let m = Measure::start("e2e", &topics, a.run.count);
    let senders = senders(ps, &a.producer, &a.run, Some(stamp), &pub_rec, &sent_bytes);
    let mut sent = 0;
    // the consumers wait for everything sent, or until 10 s past the producers' end
    let limit = Arc::new(AtomicU64::new(a.run.count.unwrap_or(u64::MAX)));
    let receiving = {
        let rec = m.rec.clone();
        let bytes = Arc::clone(&m.bytes);
        let limit = Arc::clone(&limit);
        let deadline = m.started + a.run.duration + Duration::from_secs(10);
        tokio::spawn(
            async move { receive_all(cs, limit, deadline, Some(stamp), &rec, &bytes).await },
        )
    };
    for t in senders {
        sent += t.await.context("producer task")??;
    }
    limit.fetch_min(sent, Ordering::Relaxed);
    receiving.await.context("consumers")??;
    m.finish(&a.client.service_url, concurrency, Some(pub_rec.total()))
}
