//! A topic's producers: who may write (Pulsar's access modes) and which SENDs are new
//! (deduplication). Plain bookkeeping over what the topic hands in; the topic holds it under
//! its locks and does the I/O.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use magnetar_protocol::proto::ProducerAccessMode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::BrokerError;
use crate::stats::Meter;
use crate::topic::link::Link;

#[derive(Debug, Clone)]
pub struct ProducerInfo {
    /// Unique in this broker (names can be reused by a reconnecting client).
    pub key: u64,
    pub name: String,
    pub producer_id: u64,
    pub conn: Link,
    pub address: String,
    pub connected_since: String,
    pub meter: Arc<Meter>,
    pub access_mode: ProducerAccessMode,
    /// Shared with the producer's connection: waiting, ready or fenced.
    pub state: Arc<AtomicU8>,
    /// The schema version it writes with, as the protocol carries it (repeated in the
    /// PRODUCER_SUCCESS of a waiting producer that takes the topic).
    pub schema_version: Option<Vec<u8>>,
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

/// How a producer request ended.
#[derive(Debug)]
pub enum Grant {
    /// Writing now; the topic epoch for exclusive producers.
    Ready(Option<u64>),
    /// Queued behind the exclusive producer (WaitForExclusive).
    Waiting,
}

/// A waiting exclusive producer that now has the topic: it is told with a second
/// PRODUCER_SUCCESS answering its request.
#[derive(Debug)]
pub struct Promoted {
    pub producer: ProducerInfo,
    pub request_id: u64,
    pub epoch: u64,
}

/// Shared producers side by side, or one exclusive producer (with WaitForExclusive producers
/// queued behind it).
#[derive(Debug, Default)]
pub struct Producers {
    pub by_name: HashMap<String, ProducerInfo>,
    exclusive: Option<u64>,
    /// Bumped whenever an exclusive producer takes the topic (in memory only).
    epoch: u64,
    waiting: VecDeque<(ProducerInfo, u64)>,
}

impl Producers {
    /// Admits a producer under the access rules (Pulsar's): a Shared producer is refused
    /// while an exclusive one writes or waits; Exclusive is refused while anyone else
    /// writes; ExclusiveWithFencing fences everyone else (returned, to be told);
    /// WaitForExclusive queues.
    pub fn admit(
        &mut self,
        p: ProducerInfo,
        request_id: u64,
        client_epoch: Option<u64>,
    ) -> Result<(Grant, Vec<ProducerInfo>), BrokerError> {
        use ProducerAccessMode as M;
        if let Some(other) = self.by_name.get(&p.name)
            && !other.conn.is_closed()
        {
            return Err(BrokerError::ProducerBusy(format!(
                "Producer with name '{}' is already connected to topic",
                p.name
            )));
        }
        let taken = self.exclusive.is_some() || !self.waiting.is_empty();
        match p.access_mode {
            M::Shared => {
                if taken {
                    return Err(BrokerError::ProducerBusy(format!(
                        "Topic has an exclusive producer: {}",
                        self.exclusive_name()
                    )));
                }
                p.state.store(PRODUCER_READY, Ordering::Release);
                self.by_name.insert(p.name.clone(), p);
                Ok((Grant::Ready(None), Vec::new()))
            }
            M::Exclusive | M::WaitForExclusive => {
                let busy = taken || !self.by_name.is_empty();
                if busy && p.access_mode == M::WaitForExclusive {
                    self.waiting.push_back((p, request_id));
                    return Ok((Grant::Waiting, Vec::new()));
                }
                if busy {
                    let why = if taken {
                        format!("Topic has an exclusive producer: {}", self.exclusive_name())
                    } else {
                        "Topic has shared producers".to_string()
                    };
                    return Err(BrokerError::ProducerFenced(why));
                }
                if let Some(e) = client_epoch
                    && e < self.epoch
                {
                    return Err(BrokerError::ProducerFenced(format!(
                        "Topic epoch moved on to {} (producer has {e})",
                        self.epoch
                    )));
                }
                Ok((Grant::Ready(Some(self.grant_exclusive(p))), Vec::new()))
            }
            M::ExclusiveWithFencing => {
                let fenced: Vec<ProducerInfo> = self
                    .by_name
                    .drain()
                    .map(|(_, o)| o)
                    .chain(self.waiting.drain(..).map(|(o, _)| o))
                    .collect();
                for o in &fenced {
                    o.state.store(PRODUCER_FENCED, Ordering::Release);
                }
                self.exclusive = None;
                Ok((Grant::Ready(Some(self.grant_exclusive(p))), fenced))
            }
        }
    }

    /// WaitForExclusive producers queued behind the exclusive one.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    fn exclusive_name(&self) -> String {
        self.by_name
            .values()
            .find(|o| Some(o.key) == self.exclusive)
            .map_or_else(|| "a waiting producer".to_string(), |o| o.name.clone())
    }

    fn grant_exclusive(&mut self, p: ProducerInfo) -> u64 {
        self.epoch += 1;
        self.exclusive = Some(p.key);
        p.state.store(PRODUCER_READY, Ordering::Release);
        self.by_name.insert(p.name.clone(), p);
        self.epoch
    }

    /// Removes a producer (by its unique key); once the topic is free, the next waiting
    /// exclusive producer still connected takes it (returned, to be told).
    pub fn remove(&mut self, name: &str, key: u64) -> Option<Promoted> {
        if self.by_name.get(name).is_some_and(|p| p.key == key) {
            self.by_name.remove(name);
        }
        self.waiting.retain(|(p, _)| p.key != key);
        if self.exclusive == Some(key) {
            self.exclusive = None;
        }
        while self.exclusive.is_none() && self.by_name.is_empty() {
            let (p, request_id) = self.waiting.pop_front()?;
            if p.conn.is_closed() {
                continue;
            }
            let epoch = self.grant_exclusive(p.clone());
            return Some(Promoted {
                producer: p,
                request_id,
                epoch,
            });
        }
        None
    }
}

/// How much a topic's producers may have in flight (appended, not yet durable): Pulsar's
/// `maxPendingPublishRequestsPerConnection` and `maxMessagePublishBufferSizeInMB` idea, per
/// topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishLimits {
    pub requests: usize,
    pub bytes: usize,
}

impl Default for PublishLimits {
    fn default() -> Self {
        PublishLimits {
            requests: 5_000,
            bytes: 64 << 20,
        }
    }
}

/// Times a SEND found its topic's publish budget spent and its connection paused, since the
/// process began (`magnetar_publish_paused_total`).
pub static PUBLISH_PAUSED: AtomicU64 = AtomicU64::new(0);

/// A topic's in-flight publish budget: a SEND takes room for one request and its bytes
/// before it is appended and gives it back with its receipt. Without room its connection
/// waits (stops reading), so producers slow down and nothing fails.
#[derive(Debug)]
pub struct PublishGate {
    requests: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    limits: PublishLimits,
}

/// Room taken in a [`PublishGate`], given back when dropped.
#[derive(Debug)]
pub struct PublishPermit {
    _requests: Option<OwnedSemaphorePermit>,
    _bytes: Option<OwnedSemaphorePermit>,
}

impl PublishGate {
    pub fn new(limits: PublishLimits) -> PublishGate {
        let limits = PublishLimits {
            requests: limits.requests.clamp(1, Semaphore::MAX_PERMITS),
            bytes: limits.bytes.clamp(1, u32::MAX as usize),
        };
        PublishGate {
            requests: Arc::new(Semaphore::new(limits.requests)),
            bytes: Arc::new(Semaphore::new(limits.bytes)),
            limits,
        }
    }

    /// What a SEND of `bytes` takes of the byte budget (a message larger than all of it
    /// takes all of it, and so waits until nothing else is in flight).
    fn cost(&self, bytes: usize) -> u32 {
        bytes.clamp(1, self.limits.bytes) as u32
    }

    /// Room for a SEND of `bytes`, now if there is some.
    pub fn try_admit(&self, bytes: usize) -> Option<PublishPermit> {
        let r = Arc::clone(&self.requests).try_acquire_owned().ok()?;
        let b = Arc::clone(&self.bytes)
            .try_acquire_many_owned(self.cost(bytes))
            .ok()?;
        Some(PublishPermit {
            _requests: Some(r),
            _bytes: Some(b),
        })
    }

    /// Room for a SEND of `bytes`, waiting for it (counted as a pause) if there is none now.
    pub async fn admit(&self, bytes: usize) -> PublishPermit {
        if let Some(p) = self.try_admit(bytes) {
            return p;
        }
        PUBLISH_PAUSED.fetch_add(1, Ordering::Relaxed);
        // the semaphores are never closed, so these only wait
        let r = Arc::clone(&self.requests).acquire_owned().await.ok();
        let b = Arc::clone(&self.bytes)
            .acquire_many_owned(self.cost(bytes))
            .await
            .ok();
        PublishPermit {
            _requests: r,
            _bytes: b,
        }
    }

    /// (requests, bytes) in flight now.
    pub fn in_flight(&self) -> (usize, usize) {
        (
            self.limits.requests - self.requests.available_permits(),
            self.limits.bytes - self.bytes.available_permits(),
        )
    }
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

/// The highest sequence id accepted (queued or persisted) per producer, while deduplicating.
#[derive(Debug, Default)]
pub struct Dedup {
    accepted: Option<HashMap<String, i64>>,
}

impl Dedup {
    pub fn on(&self) -> bool {
        self.accepted.is_some()
    }

    pub fn switch(&mut self, on: bool) {
        self.accepted = on.then(HashMap::new);
    }

    /// A SEND standing for sequence id `seq`; `persisted` gives the producer's highest
    /// durable one when nothing was accepted from it yet. A new one is accepted at once, so a
    /// resend racing the original is caught too.
    pub fn check(
        &mut self,
        producer: &str,
        seq: i64,
        persisted: impl FnOnce() -> Option<i64>,
    ) -> SendCheck {
        let Some(accepted) = self.accepted.as_mut() else {
            return SendCheck::Unchecked;
        };
        let last = match accepted.get(producer) {
            Some(s) => *s,
            None => persisted().unwrap_or(-1),
        };
        if seq <= last {
            return SendCheck::Duplicate(seq);
        }
        accepted.insert(producer.to_string(), seq);
        SendCheck::New(seq)
    }

    /// After a failed append: back to what is durable, so the client's resend is stored.
    pub fn reset(&mut self, producer: &str, persisted: Option<i64>) {
        if let Some(accepted) = self.accepted.as_mut() {
            accepted.insert(producer.to_string(), persisted.unwrap_or(-1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::link::ClientLink;

    #[derive(Debug, Default)]
    struct Open;

    impl ClientLink for Open {
        fn send(&self, _: magnetar_protocol::proto::BaseCommand) {}
        fn send_message(&self, _: magnetar_protocol::proto::BaseCommand, _: bytes::Bytes) {}
        fn is_closed(&self) -> bool {
            false
        }
    }

    fn producer(name: &str, mode: ProducerAccessMode) -> ProducerInfo {
        ProducerInfo {
            key: ProducerInfo::next_key(),
            name: name.into(),
            producer_id: 1,
            conn: Arc::new(Open),
            address: String::new(),
            connected_since: String::new(),
            meter: Arc::default(),
            access_mode: mode,
            state: Arc::default(),
            schema_version: None,
        }
    }

    #[test]
    fn access_modes_admit_as_pulsar_does() {
        use ProducerAccessMode as M;
        let mut ps = Producers::default();
        let a = producer("a", M::Shared);
        ps.admit(a.clone(), 1, None).unwrap();
        assert!(matches!(
            ps.admit(producer("a", M::Shared), 2, None),
            Err(BrokerError::ProducerBusy(_))
        ));
        assert!(matches!(
            ps.admit(producer("x", M::Exclusive), 3, None),
            Err(BrokerError::ProducerFenced(_))
        ));
        let w = producer("w", M::WaitForExclusive);
        assert!(matches!(
            ps.admit(w.clone(), 4, None),
            Ok((Grant::Waiting, _))
        ));
        // the waiting one takes the topic when the last shared producer leaves
        let promoted = ps.remove("a", a.key).unwrap();
        assert_eq!(
            (promoted.producer.key, promoted.request_id, promoted.epoch),
            (w.key, 4, 1)
        );
        assert_eq!(w.state.load(Ordering::Acquire), PRODUCER_READY);
        // fencing takes it from everyone
        let f = producer("f", M::ExclusiveWithFencing);
        let (grant, fenced) = ps.admit(f, 5, None).unwrap();
        assert!(matches!(grant, Grant::Ready(Some(2))));
        assert_eq!(fenced.len(), 1);
        assert_eq!(w.state.load(Ordering::Acquire), PRODUCER_FENCED);
        // a stale epoch is refused
        ps.by_name.clear();
        ps.exclusive = None;
        assert!(matches!(
            ps.admit(producer("old", M::Exclusive), 6, Some(1)),
            Err(BrokerError::ProducerFenced(_))
        ));
    }

    #[tokio::test]
    async fn the_publish_gate_pauses_past_its_limits_and_reopens() {
        let g = PublishGate::new(PublishLimits {
            requests: 2,
            bytes: 100,
        });
        let a = g.try_admit(60).unwrap();
        assert!(g.try_admit(60).is_none(), "bytes spent");
        let b = g.try_admit(10).unwrap();
        assert_eq!(g.in_flight(), (2, 70));
        assert!(g.try_admit(1).is_none(), "requests spent");
        let paused = PUBLISH_PAUSED.load(Ordering::Relaxed);
        let waiting = tokio::spawn({
            let g = Arc::new(g);
            let g2 = Arc::clone(&g);
            async move { (g2.admit(500).await, g) }
        });
        tokio::task::yield_now().await;
        drop(a);
        drop(b);
        let (big, g) = waiting.await.unwrap();
        // a message larger than the whole budget takes all of it
        assert_eq!(g.in_flight(), (1, 100));
        assert!(PUBLISH_PAUSED.load(Ordering::Relaxed) > paused);
        drop(big);
        assert_eq!(g.in_flight(), (0, 0));
    }

    #[test]
    fn deduplication_accepts_each_sequence_once() {
        let mut d = Dedup::default();
        assert_eq!(d.check("p", 5, || None), SendCheck::Unchecked);
        d.switch(true);
        assert_eq!(d.check("p", 5, || Some(3)), SendCheck::New(5));
        assert_eq!(d.check("p", 5, || unreachable!()), SendCheck::Duplicate(5));
        assert_eq!(d.check("p", 4, || unreachable!()), SendCheck::Duplicate(4));
        assert_eq!(d.check("q", 1, || Some(1)), SendCheck::Duplicate(1));
        // the append of 6 failed: back to what is durable
        assert_eq!(d.check("p", 6, || unreachable!()), SendCheck::New(6));
        d.reset("p", Some(5));
        assert_eq!(d.check("p", 6, || unreachable!()), SendCheck::New(6));
    }
}
