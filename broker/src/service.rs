//! The broker service: configuration, the topics this broker has loaded, and the cluster,
//! tenant and namespace records it needs.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use magnetar_bookie::ledger::LedgerClient;
use magnetar_managed_ledger::LedgerStorage;
use magnetar_managed_ledger::storage::{BookieStorage, MemoryStorage};
use magnetar_managed_ledger::{ManagedLedger, MlError};
use magnetar_meta::{Expected, MemoryStore, MetaError, MetaStore, MetadataStoreExt};
use magnetar_tiering::{Location, ObjectTier, TierError, Which, offloader};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;
use tracing::{info, warn};

use crate::authz::{AuthPolicies, TenantInfo, TopicOp};
use crate::cluster::keys;
use crate::cluster::lookup::{self, Located};
use crate::cluster::ownership::{OwnEverything, Owner, Ownership};
use crate::config::BrokerConfig;
use crate::error::BrokerError;
use crate::names::{Domain, TopicName};
use crate::offload::OffloadSettings;
use crate::policies::{Effective, NamespacePolicies, TopicPolicies};
use crate::topic::Topic;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionedMetadata {
    pub partitions: u32,
    #[serde(default)]
    pub properties: HashMap<String, String>,
}

#[derive(Debug, Default)]
pub struct BrokerStats {
    pub connections: AtomicU64,
    pub connections_total: AtomicU64,
    pub producers: AtomicU64,
    pub consumers: AtomicU64,
    /// Housekeeping passes completed (policies applied, ledgers trimmed).
    pub housekeeping_runs: AtomicU64,
    /// Bytes queued for clients over all connections, not yet written.
    pub outbound_bytes: Arc<std::sync::atomic::AtomicUsize>,
}

type TopicCell = Arc<OnceCell<Arc<Topic>>>;

pub struct BrokerService {
    pub cfg: BrokerConfig,
    pub meta: MetaStore,
    pub ledgers: LedgerClient,
    /// Where persistent topics' ledgers live (the bookies, through `ledgers`).
    pub storage: Arc<dyn LedgerStorage>,
    /// The records of non-persistent topics' logs: in memory, gone with the process.
    volatile: MetaStore,
    /// Which bundles this broker serves.
    pub ownership: Arc<dyn Ownership>,
    topics: Mutex<HashMap<String, TopicCell>>,
    /// Topics being deleted: not loaded again until the deletion is over.
    deleting: Mutex<std::collections::HashSet<String>>,
    pub stats: BrokerStats,
    next_producer: AtomicU64,
    pub ready: AtomicBool,
    pub started_ms: u64,
    /// More Prometheus text for `/metrics` (the standalone's in-process bookie).
    pub extra_metrics: std::sync::OnceLock<ExtraMetrics>,
    /// Offloaded ledgers' copies: read by every persistent log, written by offload runs.
    pub tier: Arc<ObjectTier>,
}

pub type ExtraMetrics = Box<dyn Fn() -> String + Send + Sync>;

impl std::fmt::Debug for BrokerService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerService").finish()
    }
}

impl BrokerService {
    /// A broker that owns every bundle (standalone).
    pub fn new(
        cfg: BrokerConfig,
        meta: MetaStore,
        ledgers: LedgerClient,
    ) -> Result<Arc<BrokerService>, MetaError> {
        Self::with_ownership(cfg, meta, ledgers, Arc::new(OwnEverything))
    }

    /// A broker that serves the bundles `ownership` gives it (a cluster member).
    pub fn with_ownership(
        cfg: BrokerConfig,
        meta: MetaStore,
        ledgers: LedgerClient,
        ownership: Arc<dyn Ownership>,
    ) -> Result<Arc<BrokerService>, MetaError> {
        let tier = Arc::new(ObjectTier::new(cfg.offload.tier));
        Ok(Arc::new(BrokerService {
            tier,
            cfg,
            meta,
            storage: Arc::new(BookieStorage::new(ledgers.clone())),
            ledgers,
            volatile: Arc::new(MemoryStore::new()?),
            ownership,
            topics: Mutex::default(),
            deleting: Mutex::default(),
            stats: BrokerStats::default(),
            next_producer: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            started_ms: magnetar_managed_ledger::clock::now_ms(),
            extra_metrics: std::sync::OnceLock::new(),
        }))
    }

    /// Where `t` is served (see [`lookup::locate`]); nowhere if its namespace does not exist.
    pub async fn locate(&self, t: &TopicName, authoritative: bool) -> Result<Located, BrokerError> {
        self.require_namespace(t).await?;
        lookup::locate(self.ownership.as_ref(), &self.cfg.urls(), t, authoritative).await
    }

    /// What `t`'s namespace says about schemas.
    pub async fn schema_policy(
        &self,
        t: &TopicName,
    ) -> Result<crate::schema::SchemaPolicy, BrokerError> {
        let stored = self
            .meta
            .get_json::<serde_json::Value>(&keys::namespace(&t.tenant, &t.namespace))
            .await?;
        Ok(stored.map_or_else(Default::default, |v| {
            crate::schema::SchemaPolicy::of_namespace(&v.value)
        }))
    }

    /// The schema version a producer of `t` declaring `schema` writes with (registered when
    /// new and the namespace lets it in); None for a producer without one, which a topic
    /// with a schema refuses when the namespace enforces validation.
    pub async fn producer_schema(
        &self,
        t: &TopicName,
        schema: Option<&crate::schema::SchemaInfo>,
    ) -> Result<Option<u64>, BrokerError> {
        let policy = self.schema_policy(t).await?;
        match schema {
            Some(info) => crate::schema::add(&self.meta, t, info, policy, false)
                .await
                .map(Some),
            None if policy.validation_enforced
                && crate::schema::get(&self.meta, t, None).await?.is_some() =>
            {
                Err(BrokerError::IncompatibleSchema(format!(
                    "{t} has a schema and its namespace enforces it: producers must declare one"
                )))
            }
            None => Ok(None),
        }
    }

    /// Whether a consumer of `t` reading with `schema` may subscribe: a topic without a schema
    /// takes it (if the namespace lets clients add schemas), one with schemas must find it
    /// compatible.
    pub async fn consumer_schema(
        &self,
        t: &TopicName,
        schema: &crate::schema::SchemaInfo,
    ) -> Result<(), BrokerError> {
        let policy = self.schema_policy(t).await?;
        let existing = crate::schema::versions(&self.meta, t).await?;
        if existing.is_empty() {
            if policy.auto_update {
                crate::schema::add(&self.meta, t, schema, policy, false).await?;
            }
            return Ok(());
        }
        crate::schema::validate(schema)?;
        crate::schema::admits(existing, schema, policy.strategy).map(|_| ())
    }

    /// TopicNotFound unless `t`'s namespace exists.
    pub async fn require_namespace(&self, t: &TopicName) -> Result<(), BrokerError> {
        if self
            .meta
            .get(&keys::namespace(&t.tenant, &t.namespace))
            .await?
            .is_none()
        {
            return Err(namespace_missing(t));
        }
        Ok(())
    }

    /// Creates cluster, tenant `public` and namespace `public/default` if missing.
    pub async fn init_cluster(&self) -> Result<(), MetaError> {
        crate::cluster::init(&self.meta, &self.cfg.cluster, &self.cfg.urls())
            .await
            .map(|_| ())
    }

    pub fn producer_name(&self) -> String {
        format!(
            "{}-{}-{}",
            self.cfg.cluster,
            self.started_ms % 100_000,
            self.next_producer.fetch_add(1, Ordering::Relaxed)
        )
    }

    pub async fn partitions(&self, t: &TopicName) -> Result<Option<u32>, BrokerError> {
        Ok(self
            .meta
            .get_json::<PartitionedMetadata>(&keys::partitioned_topic(t))
            .await?
            .map(|v| v.value.partitions))
    }

    /// Whether a persistent topic has a log.
    pub async fn topic_exists(&self, t: &TopicName) -> Result<bool, BrokerError> {
        if self
            .topics
            .lock()
            .get(&t.to_string())
            .is_some_and(|c| c.initialized())
        {
            return Ok(true);
        }
        if t.domain == Domain::NonPersistent {
            return Ok(false); // exists only while loaded
        }
        Ok(self.meta.get(&keys::managed_ledger(t)).await?.is_some())
    }

    /// The loaded topic, loading (and creating, if `create`) it first.
    pub async fn topic(&self, t: &TopicName, create: bool) -> Result<Arc<Topic>, BrokerError> {
        if !self.ready.load(Ordering::Acquire) {
            return Err(BrokerError::NotReady(
                "broker is starting or stopping".into(),
            ));
        }
        let full = t.to_string();
        if self.deleting.lock().contains(&full) {
            // clients retry this; by then the topic is gone and may be created afresh
            return Err(BrokerError::NotReady(format!(
                "Topic {full} is being deleted"
            )));
        }
        let cell = {
            let map = self.topics.lock();
            map.get(&full).cloned()
        };
        if let Some(c) = &cell
            && let Some(topic) = c.get()
        {
            return Ok(Arc::clone(topic));
        }
        let generation = self.ownership.generation();
        if let Owner::Broker(urls) = self.ownership.owner_of(t, false).await? {
            return Err(BrokerError::ServedElsewhere {
                topic: full,
                service_url: urls.service_url,
                web_url: urls.web_url,
            });
        }
        let exists = self.topic_exists(t).await?;
        if !create && !exists {
            return Err(BrokerError::TopicNotFound(format!(
                "Topic {full} does not exist"
            )));
        }
        if !exists
            && t.domain == Domain::Persistent
            && let Some(max) = self.topic_policies(t).await?.max_topics
            && self.namespace_topics(&t.tenant, &t.namespace).await?.len() >= max
        {
            return Err(BrokerError::NotAllowed(format!(
                "Exceed maximum number of topics in namespace ({max})"
            )));
        }
        if let Some(p) = self.partitions(t).await?
            && p > 0
        {
            return Err(BrokerError::NotAllowed(format!(
                "{full} is a partitioned topic; use its partitions"
            )));
        }
        let cell = Arc::clone(self.topics.lock().entry(full.clone()).or_default());
        let topic = cell
            .get_or_try_init(|| async {
                // read once: deduplication is fixed at open, the rates are set on the topic
                let eff = self.topic_policies(t).await.map_err(MlError::from)?;
                let ml = self.open_log(t, &eff).await?;
                let topic = Topic::load(
                    t.clone(),
                    ml,
                    self.meta.clone(),
                    self.cfg.dispatch.clone(),
                    self.cfg.publish_limits,
                )
                .await?;
                topic.apply_rates(&eff);
                Ok::<_, MlError>(topic)
            })
            .await
            .map_err(BrokerError::from)?;
        // Unloaded while it loaded (its bundle given up, the session lost, an admin unload):
        // what loaded must not be served, or it would be served by two brokers.
        let current = self.topics.lock().get(&full).cloned();
        let still_mine = current.is_some_and(|c| Arc::ptr_eq(&c, &cell));
        if !still_mine || self.ownership.generation() != generation {
            warn!(topic = %full, "unloaded while loading; closing what loaded");
            if still_mine {
                self.unload(&full).await;
            } else {
                topic.close().await;
            }
            return Err(BrokerError::NotReady(format!(
                "{full} changed owner while it loaded; retry"
            )));
        }
        Ok(Arc::clone(topic))
    }

    /// Opens a topic's log: on the bookies for a persistent topic; in memory for a
    /// non-persistent one, bounded by the cache size (its memory is all it has), with its
    /// record in the volatile store.
    async fn open_log(&self, t: &TopicName, eff: &Effective) -> Result<ManagedLedger, MlError> {
        let mut cfg = self.cfg.ml.clone();
        cfg.format = Arc::new(crate::topic::entries::PulsarEntries);
        let (storage, meta): (Arc<dyn LedgerStorage>, MetaStore) = match t.domain {
            Domain::Persistent => {
                cfg.tier =
                    Some(Arc::clone(&self.tier) as Arc<dyn magnetar_managed_ledger::tier::Tier>);
                cfg.track_producers = eff.deduplication;
                cfg.placement.affinity = eff.affinity.clone();
                if let Some([e, qw, qa]) = eff.quorum {
                    cfg.placement.ensemble_size = e;
                    cfg.placement.write_quorum = qw;
                    cfg.placement.ack_quorum = qa;
                }
                (Arc::clone(&self.storage), self.meta.clone())
            }
            Domain::NonPersistent => {
                let bound = cfg.cache_bytes.max(1 << 20);
                cfg.cache_bytes = 0;
                cfg.track_producers = false;
                cfg.placement.affinity = None;
                (
                    Arc::new(MemoryStorage::bounded(bound)),
                    self.volatile.clone(),
                )
            }
        };
        ManagedLedger::open(&t.to_string(), &t.path(), storage, meta, cfg).await
    }

    /// A namespace's policies with the broker's defaults filling the gaps. A stored record
    /// this broker cannot read is logged and treated as empty.
    pub async fn effective_policies(&self, tenant: &str, ns: &str) -> Result<Effective, MetaError> {
        let policies = self.namespace_policies(tenant, ns).await?;
        Ok(Effective::resolve(&policies, &self.cfg.policy_defaults()))
    }

    async fn namespace_policies(
        &self,
        tenant: &str,
        ns: &str,
    ) -> Result<NamespacePolicies, MetaError> {
        Ok(self
            .stored_namespace_policies(tenant, ns)
            .await?
            .unwrap_or_default())
    }

    /// A namespace's stored policies; None when the namespace does not exist.
    async fn stored_namespace_policies(
        &self,
        tenant: &str,
        ns: &str,
    ) -> Result<Option<NamespacePolicies>, MetaError> {
        let stored = self
            .meta
            .get_json::<serde_json::Value>(&keys::namespace(tenant, ns))
            .await?;
        Ok(stored.map(|v| {
            serde_json::from_value::<NamespacePolicies>(v.value).unwrap_or_else(|e| {
                warn!(namespace = %format!("{tenant}/{ns}"), error = %e, "unreadable namespace policies; using defaults");
                NamespacePolicies::default()
            })
        }))
    }

    /// A topic's policies: its own over its namespace's over the broker's defaults.
    pub async fn topic_policies(&self, t: &TopicName) -> Result<Effective, MetaError> {
        let ns = self.namespace_policies(&t.tenant, &t.namespace).await?;
        self.topic_policies_over(t, ns).await
    }

    /// [`Self::topic_policies`] with the namespace's policies already read.
    async fn topic_policies_over(
        &self,
        t: &TopicName,
        ns: NamespacePolicies,
    ) -> Result<Effective, MetaError> {
        let own = self
            .meta
            .get_json::<TopicPolicies>(&keys::topic_policies(t))
            .await
            .unwrap_or_else(|e| {
                warn!(topic = %t, error = %e, "unreadable topic policies; using the namespace's");
                None
            })
            .map(|v| v.value)
            .unwrap_or_default();
        Ok(Effective::resolve(
            &ns.with_topic(&own),
            &self.cfg.policy_defaults(),
        ))
    }

    /// Partitions an auto-created topic gets in this namespace: None if auto-creation is
    /// off, Some(0) for a non-partitioned topic.
    pub async fn auto_creation(&self, t: &TopicName) -> Result<Option<u32>, BrokerError> {
        // topics are created only in namespaces that exist, as in Pulsar
        let Some(policies) = self
            .stored_namespace_policies(&t.tenant, &t.namespace)
            .await?
        else {
            return Err(namespace_missing(t));
        };
        let e = Effective::resolve(&policies, &self.cfg.policy_defaults());
        Ok(e.auto_topic_creation.then_some(e.auto_topic_partitions))
    }

    /// Whether using `t` may create it (loaded topics need no look at the policies).
    pub async fn may_auto_create(&self, t: &TopicName) -> Result<bool, BrokerError> {
        if self.loaded(&t.to_string()).is_some() {
            return Ok(true);
        }
        Ok(self.auto_creation(t).await?.is_some())
    }

    /// Creates the partitioned-topic record for `t` (auto-creation); Ok if it appeared
    /// meanwhile. Returns the partition count in force.
    pub async fn create_partitioned(&self, t: &TopicName, n: u32) -> Result<u32, BrokerError> {
        let meta = PartitionedMetadata {
            partitions: n,
            properties: HashMap::new(),
        };
        match self
            .meta
            .put_json(&keys::partitioned_topic(t), &meta, Expected::Absent)
            .await
        {
            Ok(_) => {
                info!(topic = %t, partitions = n, "partitioned topic auto-created");
                Ok(n)
            }
            Err(MetaError::BadVersion { .. }) => Ok(self.partitions(t).await?.unwrap_or(n)),
            Err(e) => Err(e.into()),
        }
    }

    /// A tenant's record (None: no such tenant). An unreadable record is an error, never
    /// taken as empty: authorization must not fail open.
    pub async fn tenant_info(&self, tenant: &str) -> Result<Option<TenantInfo>, MetaError> {
        Ok(self
            .meta
            .get_json::<TenantInfo>(&keys::tenant(tenant))
            .await?
            .map(|v| v.value))
    }

    /// A namespace's grants (empty if the namespace has none or does not exist).
    pub async fn auth_policies(&self, tenant: &str, ns: &str) -> Result<AuthPolicies, MetaError> {
        let key = keys::namespace(tenant, ns);
        let Some(v) = self.meta.get_json::<serde_json::Value>(&key).await? else {
            return Ok(AuthPolicies::default());
        };
        AuthPolicies::from_policies(&v.value).map_err(|e| MetaError::Corrupt {
            key,
            reason: format!("auth_policies: {e}"),
        })
    }

    /// Refuses (AuthorizationError) what `role` may not do with topic `t`.
    pub async fn authorize_topic(
        &self,
        role: Option<&str>,
        t: &TopicName,
        op: TopicOp<'_>,
    ) -> Result<(), BrokerError> {
        let authz = &self.cfg.authz;
        if authz.is_super_user(role) {
            return Ok(());
        }
        let tenant = self.tenant_info(&t.tenant).await?;
        let auth = self.auth_policies(&t.tenant, &t.namespace).await?;
        let judged = t.partitioned_parent().unwrap_or_else(|| t.clone());
        authz
            .allow_topic(role, &judged.to_string(), tenant.as_ref(), &auth, op)
            .map_err(|d| BrokerError::Unauthorized(d.0))
    }

    /// Refuses (AuthorizationError) listing a namespace's topics to roles with no grant there.
    pub async fn authorize_namespace_topics(
        &self,
        role: Option<&str>,
        tenant: &str,
        ns: &str,
    ) -> Result<(), BrokerError> {
        let authz = &self.cfg.authz;
        if authz.is_super_user(role) {
            return Ok(());
        }
        let info = self.tenant_info(tenant).await?;
        let auth = self.auth_policies(tenant, ns).await?;
        authz
            .allow_namespace_topics(role, &format!("{tenant}/{ns}"), info.as_ref(), &auth)
            .map_err(|d| BrokerError::Unauthorized(d.0))
    }

    /// Topics loaded in this broker.
    pub fn loaded_topics(&self) -> Vec<Arc<Topic>> {
        self.topics
            .lock()
            .values()
            .filter_map(|c| c.get().cloned())
            .collect()
    }

    pub fn loaded(&self, full: &str) -> Option<Arc<Topic>> {
        self.topics.lock().get(full).and_then(|c| c.get().cloned())
    }

    /// Every persistent topic of a namespace that has a log (partitions listed individually).
    pub async fn namespace_topics(
        &self,
        tenant: &str,
        ns: &str,
    ) -> Result<Vec<String>, BrokerError> {
        let names = self
            .meta
            .children(&keys::managed_ledgers(tenant, ns))
            .await?;
        Ok(names
            .into_iter()
            .map(|n| format!("persistent://{tenant}/{ns}/{n}"))
            .collect())
    }

    /// Loaded non-persistent topics of a namespace (they exist only while loaded).
    pub fn namespace_non_persistent_topics(&self, tenant: &str, ns: &str) -> Vec<String> {
        let prefix = format!("non-persistent://{tenant}/{ns}/");
        let mut v: Vec<String> = self
            .topics
            .lock()
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect();
        v.sort();
        v
    }

    /// Periodic housekeeping: policies, rates, compaction thresholds, trimming consumed
    /// ledgers, and the entry caches of topics that took nothing since the last pass.
    pub async fn housekeeping(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let mut namespaces: HashMap<(String, String), NamespacePolicies> = HashMap::new();
            for t in self.loaded_topics() {
                t.update_rates();
                let key = (t.name.tenant.clone(), t.name.namespace.clone());
                let ns = match namespaces.get(&key) {
                    Some(p) => p.clone(),
                    None => match self.namespace_policies(&key.0, &key.1).await {
                        Ok(p) => {
                            namespaces.insert(key, p.clone());
                            p
                        }
                        Err(e) => {
                            warn!(topic = %t.full, error = %e, "namespace policies unavailable");
                            continue;
                        }
                    },
                };
                let eff = match self.topic_policies_over(&t.name, ns).await {
                    Ok(e) => e,
                    Err(e) => {
                        warn!(topic = %t.full, error = %e, "policies unavailable");
                        continue;
                    }
                };
                t.apply_rates(&eff);
                if t.persistent() && t.ml.set_affinity(eff.affinity.clone()) {
                    info!(topic = %t.full, affinity = ?eff.affinity, "bookie affinity changed; the next write rolls to a ledger placed by it");
                }
                if let Err(e) = t.enforce_policies(&eff).await {
                    warn!(topic = %t.full, error = %e, "enforcing policies failed");
                }
                if let Some(threshold) = eff.compaction_threshold
                    && t.bytes_since_compaction() > threshold
                    && t.trigger_compaction()
                {
                    info!(topic = %t.full, threshold, "compaction started by the size threshold");
                }
                if let Err(e) = t.ml.trim(t.trim_floor(), eff.retention).await {
                    warn!(topic = %t.full, error = %e, "trim failed");
                }
                if t.persistent() {
                    self.offload_by_policy(&t, &eff.offload, every).await;
                }
                t.ml.release_idle_cache();
                t.ml.measure_unsized();
            }
            self.stats.housekeeping_runs.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Housekeeping's part in tiered storage: storage copies past the deletion lag go, and
    /// ledgers the thresholds make due are offloaded by a run in the background (one at a
    /// time per topic; after failures, retries back off from the housekeeping interval).
    async fn offload_by_policy(&self, t: &Arc<Topic>, s: &OffloadSettings, every: Duration) {
        if let Some(lag) = s.deletion_lag
            && let Err(e) = t.offloads.release_lagged(&t.ml, lag).await
        {
            warn!(topic = %t.full, error = %e, "deleting storage copies of offloaded ledgers failed");
        }
        let Some(location) = s.location.clone() else {
            return;
        };
        if s.which.is_off() || !t.offloads.may_retry(every) {
            return;
        }
        let now = magnetar_managed_ledger::clock::now_ms();
        if offloader::due(&t.ml.ledgers(), t.ml.current_ledger(), s.which, now).is_empty() {
            return;
        }
        self.start_offload(t, location, s.which, false);
    }

    /// Starts an offload run of `t` in the background; false if one is running.
    pub fn start_offload(
        &self,
        t: &Arc<Topic>,
        location: Result<Location, String>,
        which: Which,
        sweep: bool,
    ) -> bool {
        if !t.offloads.begin() {
            return false;
        }
        let t = Arc::clone(t);
        let tier = Arc::clone(&self.tier);
        tokio::spawn(async move {
            match location {
                Ok(l) => {
                    let _ = t.offloads.run(&tier, &t.ml, &l, which, sweep).await;
                }
                Err(e) => t.offloads.fail(&t.ml, TierError::Config(e)),
            }
        });
        true
    }

    /// Deletes a topic: its subscriptions, compacted view, log and policies. Refused
    /// (NotAllowedError) while clients are connected, unless `force`, which disconnects them.
    pub async fn delete_topic(&self, t: &TopicName, force: bool) -> Result<(), BrokerError> {
        let topic = self.topic(t, false).await?;
        if !force && topic.in_use() {
            return Err(BrokerError::NotAllowed(
                "Topic has active producers/subscriptions".into(),
            ));
        }
        // forgotten first, and kept from loading again (a disconnected client comes back at
        // once) until its records are gone
        if !self.deleting.lock().insert(topic.full.clone()) {
            return Err(BrokerError::NotReady(format!(
                "Topic {} is being deleted",
                topic.full
            )));
        }
        self.topics.lock().remove(&topic.full);
        let res = self.delete_loaded(t, &topic).await;
        self.deleting.lock().remove(&topic.full);
        if res.is_ok() {
            info!(topic = %t, "topic deleted");
        }
        res
    }

    async fn delete_loaded(&self, t: &TopicName, topic: &Topic) -> Result<(), BrokerError> {
        topic.close().await;
        if t.domain == Domain::NonPersistent {
            topic.ml.delete().await?;
            return Ok(());
        }
        let subs: Vec<String> = topic.subscriptions.lock().keys().cloned().collect();
        for s in subs {
            topic.remove_subscription(&s).await?;
        }
        crate::topic::compaction::delete(&self.meta, self.storage.as_ref(), &t.path()).await?;
        topic.ml.delete().await?;
        // recorded copies went with the log; what offloads left unrecorded goes too
        if let Ok(eff) = self.topic_policies(t).await
            && let Some(Ok(l)) = eff.offload.location
            && let Err(e) = self.tier.delete_log(&l, &t.path()).await
        {
            warn!(topic = %t, location = %l, error = %e, "offloaded objects of a deleted topic not all deleted");
        }
        match self
            .meta
            .delete(&keys::topic_policies(t), Expected::Any)
            .await
        {
            Ok(()) | Err(MetaError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        // a partition's schemas are its parent's, which go with the partitioned topic
        if t.partition().is_none() {
            crate::schema::forget(&self.meta, t).await?;
        }
        Ok(())
    }

    /// Unloads a topic: closes it and forgets it (the next use loads it again).
    pub async fn unload(&self, full: &str) {
        let cell = self.topics.lock().remove(full);
        if let Some(t) = cell.and_then(|c| c.get().cloned()) {
            t.close().await;
            // what a non-persistent topic held is gone with it
            if !t.persistent()
                && let Err(e) = t.ml.delete().await
            {
                warn!(topic = %t.full, error = %e, "forgetting an unloaded non-persistent log failed");
            }
        }
    }

    /// Clean shutdown: every topic closed, cursors flushed.
    pub async fn shutdown(&self) {
        self.ready.store(false, Ordering::Release);
        self.unload_all().await;
    }

    /// Unloads every loaded topic (their bundles are no longer this broker's).
    pub async fn unload_all(&self) {
        let topics: Vec<String> = self.topics.lock().keys().cloned().collect();
        for t in topics {
            self.unload(&t).await;
        }
    }
}

/// What using a topic of a namespace that does not exist is answered (Pulsar's words).
fn namespace_missing(t: &TopicName) -> BrokerError {
    BrokerError::TopicNotFound(format!(
        "Namespace {}/{} does not exist",
        t.tenant, t.namespace
    ))
}
