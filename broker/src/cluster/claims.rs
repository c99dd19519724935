//! Ownership in a cluster. Every live broker registers under `/loadbalance/brokers` with a
//! record bound to its metadata session; a bundle is owned by the broker whose ephemeral
//! record sits at `/namespace/{tenant}/{ns}/{range}` (Pulsar's paths and field names). Both
//! vanish with the session, so a broker that dies (or is cut off for longer than its session
//! timeout) gives up everything it owned, and the next lookup hands each bundle to a live one.
//!
//! An unowned bundle goes to the live broker ranked first by a rendezvous hash of bundle and
//! broker: every broker computes the same choice without a leader, bundles spread evenly,
//! and only the bundles of a broker that leaves move. A lookup redirected here by another
//! broker (authoritative) claims the bundle outright, so two brokers with momentarily
//! different views of who is alive cannot bounce a client between them. The claim itself
//! is a compare-and-set (create if absent): at most one broker wins.
//!
//! One live broker is the leader: the first to create `/loadbalance/leader` under its
//! session. The others look again every session timeout and at every `leaderBroker` query,
//! so a dead leader is replaced within about two session timeouts. Ownership does not depend
//! on the leader; it is there for the work only one broker should do (load management).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use magnetar_meta::{
    Expected, MetaError, MetaStore, MetadataStoreExt, Session, decode_json, encode_json,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::bundles::{stored_bundles, topic_hash};
use super::keys;
use super::ownership::{BrokerUrls, Leader, ListenerUrls, Owner, Ownership};
use crate::error::BrokerError;
use crate::names::TopicName;

/// A live broker's record (`/loadbalance/brokers/{host}:{web port}`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BrokerRecord {
    pub pulsar_service_url: String,
    #[serde(default)]
    pub pulsar_service_url_tls: Option<String>,
    pub web_service_url: String,
    #[serde(default)]
    pub web_service_url_tls: Option<String>,
    /// Milliseconds since the epoch when it joined.
    #[serde(default)]
    pub start_timestamp: u64,
    #[serde(default)]
    pub advertised_listeners: BTreeMap<String, ListenerUrls>,
}

impl BrokerRecord {
    fn urls(&self) -> BrokerUrls {
        BrokerUrls {
            service_url: self.pulsar_service_url.clone(),
            service_url_tls: self.pulsar_service_url_tls.clone(),
            web_url: self.web_service_url.clone(),
            web_url_tls: self.web_service_url_tls.clone(),
            listeners: self.advertised_listeners.clone(),
        }
    }
}

/// A bundle owner's record (Pulsar's namespace ephemeral data).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct OwnerRecord {
    native_url: String,
    #[serde(default)]
    native_url_tls: Option<String>,
    http_url: String,
    #[serde(default)]
    http_url_tls: Option<String>,
    #[serde(default)]
    disabled: bool,
    #[serde(default)]
    advertised_listeners: BTreeMap<String, ListenerUrls>,
}

impl OwnerRecord {
    fn of(u: &BrokerUrls) -> OwnerRecord {
        OwnerRecord {
            native_url: u.service_url.clone(),
            native_url_tls: u.service_url_tls.clone(),
            http_url: u.web_url.clone(),
            http_url_tls: u.web_url_tls.clone(),
            disabled: false,
            advertised_listeners: u.listeners.clone(),
        }
    }

    fn urls(&self) -> BrokerUrls {
        BrokerUrls {
            service_url: self.native_url.clone(),
            service_url_tls: self.native_url_tls.clone(),
            web_url: self.http_url.clone(),
            web_url_tls: self.http_url_tls.clone(),
            listeners: self.advertised_listeners.clone(),
        }
    }
}

/// What this broker holds while its session lives.
#[derive(Default)]
struct Held {
    session: Option<Session>,
    /// Owner-record keys of the bundles claimed with `session`.
    owned: HashSet<String>,
}

/// Ownership through session-bound records in the metadata store.
pub struct ClaimedOwnership {
    meta: MetaStore,
    me: BrokerUrls,
    /// This broker's name among the live ones: `host:web port`.
    id: String,
    ttl: Duration,
    held: Mutex<Held>,
    /// Times bundles were given up ([`Ownership::generation`]).
    given_up: std::sync::atomic::AtomicU64,
    /// Serializes claims so one session's bookkeeping never races a new session's.
    claiming: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for ClaimedOwnership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimedOwnership")
            .field("id", &self.id)
            .finish()
    }
}

impl ClaimedOwnership {
    /// Joins the cluster: a session of `ttl` and this broker's record under it.
    pub async fn join(
        meta: MetaStore,
        me: BrokerUrls,
        ttl: Duration,
    ) -> Result<Arc<ClaimedOwnership>, MetaError> {
        let id = broker_id(&me.web_url);
        let own = Arc::new(ClaimedOwnership {
            meta,
            me,
            id,
            ttl,
            held: Mutex::default(),
            given_up: Default::default(),
            claiming: tokio::sync::Mutex::new(()),
        });
        own.register().await?;
        Ok(own)
    }

    /// This broker's name among the live ones.
    pub fn id(&self) -> &str {
        &self.id
    }

    async fn register(&self) -> Result<(), MetaError> {
        let session = self.meta.create_session(self.ttl).await?;
        let key = keys::live_broker(&self.id);
        let record = BrokerRecord {
            pulsar_service_url: self.me.service_url.clone(),
            pulsar_service_url_tls: self.me.service_url_tls.clone(),
            web_service_url: self.me.web_url.clone(),
            web_service_url_tls: self.me.web_url_tls.clone(),
            start_timestamp: magnetar_managed_ledger::clock::now_ms(),
            advertised_listeners: self.me.listeners.clone(),
        };
        // A record of an earlier life of this broker may still wait out its session: this
        // one replaces it (the old session's expiry then deletes nothing of ours).
        self.meta
            .put_ephemeral(&session, &key, encode_json(&key, &record)?, Expected::Any)
            .await?;
        info!(broker = %self.id, session = format_args!("{:#x}", session.id()), ttl = ?self.ttl, "joined the cluster");
        let mut held = self.held.lock();
        held.session = Some(session);
        held.owned.clear();
        Ok(())
    }

    /// Watches the session: when it is lost, everything owned is forgotten, `on_lost` runs
    /// (the service unloads every topic: their bundles may already be someone else's), and
    /// the broker joins again. Runs until the process ends.
    pub async fn keep_alive<F>(self: Arc<Self>, on_lost: F)
    where
        F: Fn() -> BoxFuture<'static, ()> + Send + Sync,
    {
        loop {
            let session = self.held.lock().session.clone();
            match session {
                Some(s) => {
                    tokio::select! {
                        _ = s.lost() => {}
                        _ = tokio::time::sleep(self.ttl) => {
                            if let Err(e) = self.leader().await {
                                debug!(broker = %self.id, error = %e, "looking for the leader failed");
                            }
                            continue;
                        }
                    }
                    let dropped = {
                        let _g = self.claiming.lock().await;
                        let mut held = self.held.lock();
                        held.session = None;
                        self.given_up
                            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                        std::mem::take(&mut held.owned)
                    };
                    warn!(broker = %self.id, bundles = dropped.len(), "metadata session lost: unloading every topic and joining again");
                    on_lost().await;
                }
                None => {
                    if let Err(e) = self.register().await {
                        warn!(broker = %self.id, error = %e, "joining the cluster failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        }
    }

    /// Gives up every bundle and leaves the cluster (a clean shutdown: others take over at
    /// once instead of after the session timeout).
    pub async fn leave(&self) {
        let _g = self.claiming.lock().await;
        let (session, owned) = {
            let mut held = self.held.lock();
            (held.session.take(), std::mem::take(&mut held.owned))
        };
        for key in owned {
            if let Err(e) = self.meta.delete(&key, Expected::Any).await
                && !matches!(e, MetaError::NotFound(_))
            {
                warn!(key = %key, error = %e, "releasing a bundle failed");
            }
        }
        if let Some(s) = session
            && let Err(e) = self.meta.revoke_session(s.id()).await
        {
            warn!(error = %e, "ending the metadata session failed");
        }
    }

    /// The live brokers: name and record.
    pub async fn live(&self) -> Result<Vec<(String, BrokerRecord)>, MetaError> {
        let mut out = Vec::new();
        for name in self.meta.children(keys::LIVE_BROKERS).await? {
            let key = keys::live_broker(&name);
            if let Some(v) = self.meta.get(&key).await? {
                match decode_json::<BrokerRecord>(&key, &v.value) {
                    Ok(r) => out.push((name, r)),
                    Err(e) => warn!(key = %key, error = %e, "unreadable broker record"),
                }
            }
        }
        Ok(out)
    }

    /// The cluster's leader; when there is none, this broker runs for it (a create-if-absent
    /// under its session: one winner), so the answer is None only while it is rejoining.
    pub async fn leader(&self) -> Result<Option<Leader>, MetaError> {
        for _ in 0..3 {
            if let Some(v) = self.meta.get(keys::LEADER).await? {
                return decode_json(keys::LEADER, &v.value).map(Some);
            }
            let Some(session) = self.held.lock().session.clone() else {
                return Ok(None);
            };
            let me = Leader {
                broker_id: self.id.clone(),
                service_url: self.me.web_url.clone(),
            };
            let value = encode_json(keys::LEADER, &me)?;
            match self
                .meta
                .put_ephemeral(&session, keys::LEADER, value, Expected::Absent)
                .await
            {
                Ok(_) => {
                    info!(broker = %self.id, "elected leader");
                    return Ok(Some(me));
                }
                // someone else won; read theirs (it may already be gone again: look again)
                Err(MetaError::BadVersion { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// The bundles this broker owns now, as `tenant/ns/range`.
    pub fn owned(&self) -> BTreeSet<String> {
        self.held
            .lock()
            .owned
            .iter()
            .filter_map(|k| keys::bundle_of_owner_key(k))
            .collect()
    }

    async fn owner(&self, topic: &TopicName, authoritative: bool) -> Result<Owner, BrokerError> {
        let ns_key = keys::namespace(&topic.tenant, &topic.namespace);
        let Some(policies) = self.meta.get_json::<serde_json::Value>(&ns_key).await? else {
            return Err(BrokerError::TopicNotFound(format!(
                "Namespace {}/{} does not exist",
                topic.tenant, topic.namespace
            )));
        };
        let range = stored_bundles(&policies.value)
            .ok()
            .and_then(|b| b.bundle_of(topic_hash(topic)))
            .ok_or_else(|| {
                BrokerError::Metadata(format!(
                    "the bundles of {}/{} are invalid",
                    topic.tenant, topic.namespace
                ))
            })?;
        let key = keys::bundle_owner(&topic.tenant, &topic.namespace, &range);
        for _ in 0..3 {
            if self.held.lock().owned.contains(&key) {
                return Ok(Owner::Me);
            }
            if let Some(v) = self.meta.get(&key).await? {
                let rec: OwnerRecord = decode_json(&key, &v.value)?;
                if rec.native_url == self.me.service_url {
                    // ours, from a session that is gone or going: it expires on its own
                    return Err(BrokerError::NotReady(format!(
                        "bundle {range} of {}/{} is still held by an earlier session of this \
                         broker; retry shortly",
                        topic.tenant, topic.namespace
                    )));
                }
                // A client sent to a dead owner backs off (seconds, doubling) before it asks
                // again; held here instead, it gets its answer the moment the owner's session
                // ends and the bundle is free.
                if refuses_connections(&rec.native_url).await && self.outlived(&key).await? {
                    continue;
                }
                return Ok(Owner::Broker(rec.urls()));
            }
            if !authoritative {
                let live = self.live().await?;
                match choose(&key, &live) {
                    Some((name, rec)) if *name != self.id => return Ok(Owner::Broker(rec.urls())),
                    _ => {}
                }
            }
            if self.claim(&key).await? {
                info!(bundle = %key, broker = %self.id, "bundle claimed");
                return Ok(Owner::Me);
            }
        }
        Err(BrokerError::NotReady(format!(
            "bundle {range} of {}/{} is changing owner; retry",
            topic.tenant, topic.namespace
        )))
    }

    /// Waits (at most a session timeout and a second) for the record at `key` to go;
    /// whether it went.
    async fn outlived(&self, key: &str) -> Result<bool, MetaError> {
        let deadline = tokio::time::Instant::now() + self.ttl + Duration::from_secs(1);
        while tokio::time::Instant::now() < deadline {
            if self.meta.get(key).await?.is_none() {
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(false)
    }

    /// Creates the owner record if there is none; false if another broker's is there.
    async fn claim(&self, key: &str) -> Result<bool, BrokerError> {
        let _g = self.claiming.lock().await;
        let Some(session) = self.held.lock().session.clone() else {
            return Err(BrokerError::NotReady(
                "this broker is joining the cluster again; retry".into(),
            ));
        };
        let value = encode_json(key, &OwnerRecord::of(&self.me))?;
        match self
            .meta
            .put_ephemeral(&session, key, value, Expected::Absent)
            .await
        {
            Ok(_) => {
                self.held.lock().owned.insert(key.to_string());
                Ok(true)
            }
            Err(MetaError::BadVersion { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

impl Ownership for ClaimedOwnership {
    fn owner_of<'a>(
        &'a self,
        topic: &'a TopicName,
        authoritative: bool,
    ) -> BoxFuture<'a, Result<Owner, BrokerError>> {
        Box::pin(self.owner(topic, authoritative))
    }

    fn generation(&self) -> u64 {
        self.given_up.load(std::sync::atomic::Ordering::Acquire)
    }

    fn owns_bundle(&self, namespace: &str, range: &str) -> bool {
        let Some((tenant, ns)) = namespace.split_once('/') else {
            return false;
        };
        self.held
            .lock()
            .owned
            .contains(&keys::bundle_owner(tenant, ns, range))
    }

    fn release<'a>(
        &'a self,
        namespace: &'a str,
        range: Option<&'a str>,
        unload: BoxFuture<'a, ()>,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let prefix = match range {
                Some(r) => keys::bundle_owners(Some(&format!("{namespace}/{r}"))),
                None => keys::bundle_owners(Some(&format!("{namespace}/"))),
            };
            // no longer "mine": clients asking now are told to retry, and while the record
            // stays (marked disabled, as Pulsar marks a bundle being unloaded) nobody else
            // takes the bundle before its topics are closed here
            let (session, keys) = {
                let _g = self.claiming.lock().await;
                let mut held = self.held.lock();
                let keys: Vec<String> = held
                    .owned
                    .iter()
                    .filter(|k| k.starts_with(&prefix))
                    .cloned()
                    .collect();
                for k in &keys {
                    held.owned.remove(k);
                }
                self.given_up
                    .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                (held.session.clone(), keys)
            };
            if let Some(session) = &session {
                let mut rec = OwnerRecord::of(&self.me);
                rec.disabled = true;
                for k in &keys {
                    let value = encode_json(k, &rec)?;
                    self.meta
                        .put_ephemeral(session, k, value, Expected::Any)
                        .await?;
                }
            }
            unload.await;
            for k in &keys {
                match self.meta.delete(k, Expected::Any).await {
                    Ok(()) | Err(MetaError::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
                info!(bundle = %k, "bundle released");
            }
            Ok(())
        })
    }

    fn bundle_owner_elsewhere<'a>(
        &'a self,
        namespace: &'a str,
        range: &'a str,
    ) -> BoxFuture<'a, Result<Option<BrokerUrls>, BrokerError>> {
        Box::pin(async move {
            let key = keys::bundle_owners(Some(&format!("{namespace}/{range}")));
            let Some(v) = self.meta.get(&key).await? else {
                return Ok(None);
            };
            let rec: OwnerRecord = decode_json(&key, &v.value)?;
            Ok((rec.native_url != self.me.service_url).then(|| rec.urls()))
        })
    }

    fn bundles_of_broker<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<String>>, BrokerError>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for t in self.meta.children(&keys::bundle_owners(None)).await? {
                for ns in self.meta.children(&keys::bundle_owners(Some(&t))).await? {
                    let namespace = format!("{t}/{ns}");
                    for range in self
                        .meta
                        .children(&keys::bundle_owners(Some(&namespace)))
                        .await?
                    {
                        let key = keys::bundle_owner(&t, &ns, &range);
                        let Some(v) = self.meta.get(&key).await? else {
                            continue;
                        };
                        let rec: OwnerRecord = decode_json(&key, &v.value)?;
                        if broker_id(&rec.http_url) == id {
                            out.push(format!("{t}/{ns}/{range}"));
                        }
                    }
                }
            }
            Ok(Some(out))
        })
    }

    fn live_brokers(&self) -> BoxFuture<'_, Result<Option<Vec<String>>, BrokerError>> {
        Box::pin(async move {
            let names = self.meta.children(keys::LIVE_BROKERS).await?;
            Ok(Some(names))
        })
    }

    fn leader(&self) -> BoxFuture<'_, Result<Option<Leader>, BrokerError>> {
        Box::pin(async move {
            match ClaimedOwnership::leader(self).await? {
                Some(l) => Ok(Some(l)),
                None => Err(BrokerError::NotReady(
                    "no leader yet: this broker is joining the cluster again; retry".into(),
                )),
            }
        })
    }
}

/// Whether nothing listens at a `pulsar://host:port` URL: the connection is refused, which
/// only a host without that process answers. Anything else (it answers, it is slow, the URL
/// is not a plain one) counts as alive: a live owner is never waited out.
async fn refuses_connections(service_url: &str) -> bool {
    let Some(addr) = service_url.strip_prefix("pulsar://") else {
        return false;
    };
    matches!(
        tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr)
        )
        .await,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

/// `host:port` of a web URL: how Pulsar names a broker.
fn broker_id(web_url: &str) -> String {
    web_url
        .split_once("://")
        .map_or(web_url, |(_, rest)| rest)
        .trim_end_matches('/')
        .to_string()
}

/// The live broker a bundle goes to: the highest rendezvous score of (bundle, broker).
fn choose<'a>(
    bundle_key: &str,
    live: &'a [(String, BrokerRecord)],
) -> Option<&'a (String, BrokerRecord)> {
    live.iter()
        .max_by_key(|(name, _)| (score(bundle_key, name), name.clone()))
}

/// FNV-1a over bundle and broker, then a 64-bit finalizer: stable across processes and
/// versions (the standard library's hasher promises neither).
fn score(bundle_key: &str, broker: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bundle_key.bytes().chain([0]).chain(broker.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use magnetar_meta::MemoryStore;

    fn urls(port: u16) -> BrokerUrls {
        BrokerUrls {
            service_url: format!("pulsar://127.0.0.1:{port}"),
            service_url_tls: None,
            web_url: format!("http://web-{port}:8080"),
            web_url_tls: None,
            listeners: Default::default(),
        }
    }

    /// A port something listens on (a live broker's, as far as probes can tell).
    fn listening() -> (std::net::TcpListener, u16) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        (l, port)
    }

    /// A broker joined to `meta`, with a port that answers (alive, as probes tell).
    async fn join(
        meta: &MetaStore,
        ttl: Duration,
    ) -> (Arc<ClaimedOwnership>, std::net::TcpListener, u16) {
        let (listener, port) = listening();
        let own = ClaimedOwnership::join(meta.clone(), urls(port), ttl)
            .await
            .unwrap();
        (own, listener, port)
    }

    /// Bundles of the test namespace: enough that brokers with random names all get some.
    const BUNDLES: u32 = 64;

    async fn cluster() -> MetaStore {
        let meta: MetaStore = Arc::new(MemoryStore::new().unwrap());
        meta.put_json(
            &keys::namespace("public", "default"),
            &serde_json::json!({"bundles": super::super::bundles::Bundles::even(BUNDLES)}),
            Expected::Absent,
        )
        .await
        .unwrap();
        meta
    }

    /// How many bundles `n` test topics fall in.
    fn bundles_of(n: usize) -> usize {
        let b = super::super::bundles::Bundles::even(BUNDLES);
        topics(n)
            .iter()
            .filter_map(|t| b.bundle_of(topic_hash(t)))
            .collect::<BTreeSet<_>>()
            .len()
    }

    fn topics(n: usize) -> Vec<TopicName> {
        (0..n)
            .map(|i| TopicName::parse(&format!("persistent://public/default/t-{i}")).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn every_bundle_has_one_owner_and_both_brokers_agree() {
        let meta = cluster().await;
        let ttl = Duration::from_secs(5);
        let (a, _la, pa) = join(&meta, ttl).await;
        let (b, _lb, pb) = join(&meta, ttl).await;
        let mut served = [0, 0];
        for t in topics(64) {
            // asked at a: either a serves it, or it sends the client to b, which then does
            let at_a = a.owner_of(&t, false).await.unwrap();
            let at_b = b.owner_of(&t, false).await.unwrap();
            match (at_a, at_b) {
                (Owner::Me, Owner::Broker(u)) => {
                    assert_eq!(u, urls(pa));
                    served[0] += 1;
                }
                (Owner::Broker(u), Owner::Me) => {
                    assert_eq!(u, urls(pb));
                    served[1] += 1;
                }
                other => panic!("{t}: {other:?}"),
            }
        }
        assert!(served[0] > 0 && served[1] > 0, "bundles spread: {served:?}");
        assert_eq!(a.owned().len() + b.owned().len(), bundles_of(64));
        assert!(a.owned().is_disjoint(&b.owned()));
        // what either says a broker owns is what that broker holds
        for (who, by) in [(&a, &b), (&b, &a)] {
            let listed = by.bundles_of_broker(who.id()).await.unwrap().unwrap();
            assert_eq!(listed.into_iter().collect::<BTreeSet<_>>(), who.owned());
        }
    }

    #[tokio::test]
    async fn a_lost_session_hands_its_bundles_to_the_survivor() {
        let meta = cluster().await;
        let ttl = Duration::from_secs(5);
        let (a, _la, _) = join(&meta, ttl).await;
        let (b, _lb, pb) = join(&meta, ttl).await;
        for t in topics(32) {
            a.owner_of(&t, true).await.unwrap();
        }
        assert_eq!(
            a.owned().len(),
            bundles_of(32),
            "authoritative lookups claim outright"
        );
        let unloaded = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let u = Arc::clone(&unloaded);
        tokio::spawn(Arc::clone(&a).keep_alive(move || {
            let u = Arc::clone(&u);
            Box::pin(async move {
                u.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            })
        }));
        let id = a.held.lock().session.as_ref().unwrap().id();
        meta.revoke_session(id).await.unwrap();
        while unloaded.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(a.owned().is_empty(), "nothing owned survives the session");
        // the records went with the session: the survivor can take every bundle, and the
        // lost broker (joined again meanwhile) sends clients there
        for t in topics(32) {
            assert_eq!(b.owner_of(&t, true).await.unwrap(), Owner::Me, "{t}");
            let seen_by_a = loop {
                match a.owner_of(&t, false).await {
                    Err(BrokerError::NotReady(_)) => tokio::task::yield_now().await,
                    other => break other.unwrap(),
                }
            };
            assert_eq!(seen_by_a, Owner::Broker(urls(pb)), "{t}");
        }
        assert_eq!(b.owned().len(), bundles_of(32));
        b.leave().await;
        assert!(meta.children(keys::LIVE_BROKERS).await.unwrap().len() <= 1);
    }

    #[tokio::test]
    async fn a_lookup_for_a_dead_owners_bundle_waits_for_it_to_be_free() {
        let meta = cluster().await;
        let ttl = Duration::from_secs(1);
        let (a, listener, pa) = join(&meta, ttl).await;
        let (b, _lb, _) = join(&meta, ttl).await;
        let t = &topics(1)[0];
        assert_eq!(a.owner_of(t, true).await.unwrap(), Owner::Me);
        assert_eq!(b.owner_of(t, false).await.unwrap(), Owner::Broker(urls(pa)));
        // a dies: its port refuses, and its session ends a little later
        drop(listener);
        let id = a.held.lock().session.as_ref().unwrap().id();
        let meta2 = meta.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            meta2.revoke_session(id).await.unwrap();
        });
        assert_eq!(
            b.owner_of(t, false).await.unwrap(),
            Owner::Me,
            "answered once the bundle was free, not sent to the dead owner"
        );
    }

    #[tokio::test]
    async fn a_released_bundle_is_held_until_its_topics_are_closed_then_free() {
        let meta = cluster().await;
        let ttl = Duration::from_secs(5);
        let (a, _la, pa) = join(&meta, ttl).await;
        let (b, _lb, _) = join(&meta, ttl).await;
        let t = &topics(1)[0];
        assert_eq!(a.owner_of(t, true).await.unwrap(), Owner::Me);
        let range = a.owned().into_iter().next().unwrap();
        let range = range.rsplit('/').next().unwrap().to_string();
        let during = async {
            // while a closes the topics: a no longer serves it, nobody else takes it
            assert!(matches!(
                a.owner_of(t, false).await,
                Err(BrokerError::NotReady(_))
            ));
            assert_eq!(b.owner_of(t, true).await.unwrap(), Owner::Broker(urls(pa)));
        };
        a.release("public/default", Some(&range), Box::pin(during))
            .await
            .unwrap();
        assert!(a.owned().is_empty());
        assert_eq!(b.owner_of(t, true).await.unwrap(), Owner::Me, "free after");
    }

    #[tokio::test]
    async fn one_leader_and_a_new_one_when_it_goes() {
        let meta = cluster().await;
        let ttl = Duration::from_secs(1);
        let (a, _la, _) = join(&meta, ttl).await;
        let (b, _lb, _) = join(&meta, ttl).await;
        let first = a.leader().await.unwrap().unwrap();
        assert_eq!(first.broker_id, a.id(), "the first to ask runs and wins");
        assert_eq!(b.leader().await.unwrap().unwrap(), first, "both agree");
        a.leave().await;
        let second = b.leader().await.unwrap().unwrap();
        assert_eq!(second.broker_id, b.id(), "the survivor takes over");
    }

    #[tokio::test]
    async fn unknown_namespaces_are_not_found() {
        let meta = cluster().await;
        let a = ClaimedOwnership::join(meta, urls(6650), Duration::from_secs(5))
            .await
            .unwrap();
        let t = TopicName::parse("persistent://nope/none/t").unwrap();
        assert!(matches!(
            a.owner_of(&t, true).await,
            Err(BrokerError::TopicNotFound(_))
        ));
    }

    #[test]
    fn the_choice_moves_only_the_bundles_of_a_leaving_broker() {
        let rec = |p: u16| BrokerRecord {
            pulsar_service_url: format!("pulsar://h:{p}"),
            pulsar_service_url_tls: None,
            web_service_url: format!("http://h:{p}"),
            web_service_url_tls: None,
            start_timestamp: 0,
            advertised_listeners: Default::default(),
        };
        let three: Vec<_> = (1..=3).map(|i| (format!("h:{i}"), rec(i))).collect();
        let two: Vec<_> = three[..2].to_vec();
        let mut moved = 0;
        for i in 0..300 {
            let k = format!("/namespace/t/n/{i}");
            let before = &choose(&k, &three).unwrap().0;
            let after = &choose(&k, &two).unwrap().0;
            if before != "h:3" {
                assert_eq!(before, after);
            } else {
                moved += 1;
            }
        }
        assert!((60..140).contains(&moved), "about a third moved: {moved}");
        assert_eq!(broker_id("http://10.0.0.1:8080/"), "10.0.0.1:8080");
    }
}
