//! The client's shared core: its options, its connections to the service, lookups that follow
//! redirects, retries with backoff, and topic names. Producers, consumers and readers all go
//! through it; the builders that make them are in `client`.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use magnetar_protocol::BaseCommand;
use magnetar_protocol::proto::{
    CommandGetTopicsOfNamespace, CommandLookupTopic, CommandPartitionedTopicMetadata,
    base_command::Type, command_get_topics_of_namespace::Mode,
    command_lookup_topic_response::LookupType,
};
use tracing::debug;

use crate::conn::{Authentication, Connection, Pool, Target};
use crate::error::{Error, Result};

const MAX_REDIRECTS: usize = 20;

/// How the client behaves; every field has a default.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub auth: Option<Authentication>,
    /// PEM certificates to trust for `pulsar+ssl://`.
    pub tls_trust_certs: Option<PathBuf>,
    /// How long a lookup, subscribe or other request may take, retries included.
    pub operation_timeout: Duration,
    pub connection_timeout: Duration,
    /// PING interval; a broker silent for two of them is considered gone.
    pub keepalive: Duration,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            auth: None,
            tls_trust_certs: None,
            operation_timeout: Duration::from_secs(30),
            connection_timeout: Duration::from_secs(10),
            keepalive: Duration::from_secs(30),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// A Pulsar client: cheap to clone, shares its connections.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<ClientInner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("service", &self.inner.service)
            .finish()
    }
}

pub(crate) struct ClientInner {
    pub(crate) pool: Pool,
    service: Vec<Target>,
    next_service: AtomicUsize,
    next_id: AtomicU64,
    pub(crate) opts: ClientOptions,
}

/// Which topics of a namespace to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicMode {
    Persistent,
    NonPersistent,
    All,
}

/// The full name of a topic: `x` is `persistent://public/default/x`, `t/ns/x` is
/// `persistent://t/ns/x`.
pub fn topic_name(s: &str) -> Result<String> {
    let bad = |why: &str| Error::Invalid(format!("{s:?} is not a topic name: {why}"));
    let (domain, rest) = match s.split_once("://") {
        Some((d @ ("persistent" | "non-persistent"), r)) => (d, r),
        Some(_) => return Err(bad("the domain must be persistent or non-persistent")),
        None => ("persistent", s),
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let full = match parts.as_slice() {
        [local] => format!("{domain}://public/default/{local}"),
        [t, n, local] => format!("{domain}://{t}/{n}/{local}"),
        _ => return Err(bad("expected tenant/namespace/topic")),
    };
    if parts.iter().any(|p| p.is_empty()) {
        return Err(bad("empty part"));
    }
    Ok(full)
}

/// Exponential backoff with jitter, from 100 ms up to a maximum.
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(max: Duration) -> Backoff {
        Backoff {
            next: Duration::from_millis(100),
            max,
        }
    }

    pub(crate) fn next(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let jitter = rand::random::<f64>() * 0.2 + 0.9;
        base.mul_f64(jitter).min(self.max)
    }

    pub(crate) fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }
}

impl Client {
    /// A client over `pool`, reaching the service at `service`.
    pub(crate) fn start(pool: Pool, service: Vec<Target>, opts: ClientOptions) -> Client {
        Client {
            inner: Arc::new(ClientInner {
                pool,
                service,
                next_service: AtomicUsize::new(0),
                next_id: AtomicU64::new(1),
                opts,
            }),
        }
    }

    pub(crate) fn opts(&self) -> &ClientOptions {
        &self.inner.opts
    }

    /// A producer or consumer id, unique in this client.
    pub(crate) fn new_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn service_target(&self) -> Target {
        let i = self.inner.next_service.fetch_add(1, Ordering::Relaxed);
        self.inner.service[i % self.inner.service.len()].clone()
    }

    pub(crate) async fn service_connection(&self) -> Result<Arc<Connection>> {
        self.inner.pool.get(&self.service_target()).await
    }

    /// Runs `f` until it succeeds, fails for good, or the operation timeout has passed,
    /// backing off between attempts.
    pub(crate) async fn retrying<T, F, Fut>(&self, what: &'static str, mut f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let deadline = Instant::now() + self.opts().operation_timeout;
        let mut backoff = Backoff::new(self.opts().max_backoff);
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retriable() => {
                    let wait = backoff.next();
                    if Instant::now() + wait >= deadline {
                        return Err(e);
                    }
                    debug!(operation = what, error = %e, ?wait, "retrying");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The connection to the broker that owns `topic`, following redirects.
    pub(crate) async fn lookup(&self, topic: &str) -> Result<Arc<Connection>> {
        self.retrying("lookup", || self.lookup_once(topic)).await
    }

    async fn lookup_once(&self, topic: &str) -> Result<Arc<Connection>> {
        let service = self.service_target();
        let mut conn = self.inner.pool.get(&service).await?;
        let mut authoritative = false;
        for _ in 0..MAX_REDIRECTS {
            let rid = conn.request_id();
            let cmd = BaseCommand {
                r#type: Type::Lookup as i32,
                lookup_topic: Some(CommandLookupTopic {
                    topic: topic.to_string(),
                    request_id: rid,
                    authoritative: Some(authoritative),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let r = conn
                .request(rid, cmd)
                .await?
                .lookup_topic_response
                .ok_or_else(|| Error::Protocol("LOOKUP answered with something else".into()))?;
            let url = if service.tls {
                r.broker_service_url_tls
                    .clone()
                    .or(r.broker_service_url.clone())
            } else {
                r.broker_service_url.clone()
            }
            .ok_or_else(|| Error::Protocol("lookup answer without a broker URL".into()))?;
            let mut target = Target::parse(&url)?;
            if r.proxy_through_service_url == Some(true) {
                target = Target {
                    url: target.url,
                    addr: service.addr.clone(),
                    host: service.host.clone(),
                    tls: service.tls,
                    proxied: true,
                };
            }
            match r.response.and_then(|x| LookupType::try_from(x).ok()) {
                Some(LookupType::Connect) => return self.inner.pool.get(&target).await,
                Some(LookupType::Redirect) => {
                    debug!(topic, to = %target.url, "lookup redirected");
                    conn = self.inner.pool.get(&target).await?;
                    authoritative = r.authoritative.unwrap_or(false);
                }
                _ => return Err(Error::Protocol("lookup answer of unknown type".into())),
            }
        }
        Err(Error::Protocol(format!(
            "lookup of {topic} redirected more than {MAX_REDIRECTS} times"
        )))
    }

    /// Partitions of `topic` (0: not partitioned).
    pub async fn partitions(&self, topic: &str) -> Result<u32> {
        let topic = topic_name(topic)?;
        self.retrying("partitioned metadata", || async {
            let conn = self.service_connection().await?;
            let rid = conn.request_id();
            let cmd = BaseCommand {
                r#type: Type::PartitionedMetadata as i32,
                partition_metadata: Some(CommandPartitionedTopicMetadata {
                    topic: topic.clone(),
                    request_id: rid,
                    ..Default::default()
                }),
                ..Default::default()
            };
            let r = conn.request(rid, cmd).await?;
            Ok(r.partition_metadata_response
                .and_then(|m| m.partitions)
                .unwrap_or(0))
        })
        .await
    }

    /// The topics (partitions listed one by one) of `tenant/namespace`.
    pub async fn topics_of_namespace(
        &self,
        namespace: &str,
        mode: TopicMode,
    ) -> Result<Vec<String>> {
        if namespace.split('/').count() != 2 || namespace.split('/').any(str::is_empty) {
            return Err(Error::Invalid(format!(
                "{namespace:?} is not a namespace (tenant/namespace)"
            )));
        }
        self.retrying("topics of namespace", || async {
            let conn = self.service_connection().await?;
            let rid = conn.request_id();
            let cmd = BaseCommand {
                r#type: Type::GetTopicsOfNamespace as i32,
                get_topics_of_namespace: Some(CommandGetTopicsOfNamespace {
                    request_id: rid,
                    namespace: namespace.to_string(),
                    mode: Some(match mode {
                        TopicMode::Persistent => Mode::Persistent,
                        TopicMode::NonPersistent => Mode::NonPersistent,
                        TopicMode::All => Mode::All,
                    } as i32),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let r = conn.request(rid, cmd).await?;
            Ok(r.get_topics_of_namespace_response
                .map(|t| t.topics)
                .unwrap_or_default())
        })
        .await
    }

    /// The partitions of `topic` by full name, or the topic itself when it has none.
    pub(crate) async fn expand(&self, topic: &str) -> Result<Vec<(String, i32)>> {
        let topic = topic_name(topic)?;
        let n = self.partitions(&topic).await?;
        Ok(if n == 0 {
            vec![(topic, -1)]
        } else {
            (0..n as i32)
                .map(|i| (format!("{topic}-partition-{i}"), i))
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names() {
        assert_eq!(topic_name("x").unwrap(), "persistent://public/default/x");
        assert_eq!(topic_name("t/n/x").unwrap(), "persistent://t/n/x");
        assert_eq!(
            topic_name("non-persistent://t/n/x").unwrap(),
            "non-persistent://t/n/x"
        );
        assert!(topic_name("http://t/n/x").is_err());
        assert!(topic_name("t/n").is_err());
        assert!(topic_name("t//x").is_err());
    }

    #[test]
    fn backoff_grows_to_its_cap() {
        let mut b = Backoff::new(Duration::from_secs(1));
        let first = b.next();
        assert!(first <= Duration::from_millis(110));
        for _ in 0..10 {
            b.next();
        }
        assert!(b.next() <= Duration::from_secs(1));
        b.reset();
        assert!(b.next() <= Duration::from_millis(110));
    }
}
