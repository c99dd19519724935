//! Namespace policies as stored at `/admin/policies/{tenant}/{ns}` (Pulsar's JSON field
//! names), and the effective values a topic runs with once broker defaults fill the gaps.
//! Pure data: reading and writing the records is the service's and the REST layer's job.

use std::collections::HashMap;
use std::time::Duration;

use magnetar_bookie::placement::Affinity;
use serde::{Deserialize, Serialize};

use crate::offload::{OffloadConfig, OffloadPolicies, OffloadSettings};
use crate::ratelimit::Rate;

/// The parts of Pulsar's `Policies` this broker acts on; other fields are kept untouched in
/// the stored JSON.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NamespacePolicies {
    #[serde(default)]
    pub message_ttl_in_seconds: Option<i64>,
    #[serde(default)]
    pub retention_policies: Option<RetentionPolicies>,
    /// Keyed by `destination_storage` (size) and `message_age` (time).
    #[serde(default)]
    pub backlog_quota_map: HashMap<String, BacklogQuota>,
    #[serde(default, rename = "deduplicationEnabled")]
    pub deduplication_enabled: Option<bool>,
    #[serde(default, rename = "autoTopicCreationOverride")]
    pub auto_topic_creation: Option<AutoTopicCreation>,
    /// Compact a topic once this many bytes arrived after its last compaction (0: never).
    #[serde(default)]
    pub compaction_threshold: Option<i64>,
    /// Connection limits per topic and subscription (0 or absent: none).
    #[serde(default)]
    pub max_producers_per_topic: Option<i64>,
    #[serde(default)]
    pub max_consumers_per_topic: Option<i64>,
    #[serde(default)]
    pub max_consumers_per_subscription: Option<i64>,
    #[serde(default)]
    pub max_topics_per_namespace: Option<i64>,
    #[serde(default, rename = "autoSubscriptionCreationOverride")]
    pub auto_subscription_creation: Option<AutoSubscriptionCreation>,
    /// Rate limits, keyed by cluster as Pulsar keeps them ("" from a topic's own policy:
    /// any cluster).
    #[serde(default, rename = "publishMaxMessageRate")]
    pub publish_rate: HashMap<String, PublishRate>,
    #[serde(default, rename = "topicDispatchRate")]
    pub dispatch_rate: HashMap<String, DispatchRate>,
    #[serde(default, rename = "subscriptionDispatchRate")]
    pub subscription_dispatch_rate: HashMap<String, DispatchRate>,
    #[serde(default, rename = "clusterSubscribeRate")]
    pub subscribe_rate: HashMap<String, SubscribeRate>,
    /// The bookie groups the namespace's ledgers are kept on.
    #[serde(default, rename = "bookieAffinityGroup")]
    pub bookie_affinity_group: Option<BookieAffinityGroup>,
    /// Copies of the namespace's new ledgers (Pulsar's `persistence`).
    #[serde(default)]
    pub persistence: Option<PersistencePolicies>,
    /// Offload: bytes kept in storage (-1: off), age of ledgers to offload, and how long
    /// storage copies stay after an offload; `offload_policies` wins over all three.
    #[serde(default)]
    pub offload_threshold: Option<i64>,
    #[serde(default)]
    pub offload_threshold_in_seconds: Option<i64>,
    #[serde(default)]
    pub offload_deletion_lag_ms: Option<i64>,
    #[serde(default)]
    pub offload_policies: Option<OffloadPolicies>,
}

/// Ensemble, write and ack quorum of a namespace's new ledgers, as Pulsar spells them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PersistencePolicies {
    pub bookkeeper_ensemble: usize,
    pub bookkeeper_write_quorum: usize,
    pub bookkeeper_ack_quorum: usize,
    /// Cursor position writes per second; kept for Pulsar's tools (cursor records are
    /// coalesced by their own rule).
    #[serde(default)]
    pub managed_ledger_max_mark_delete_rate: f64,
}

impl PersistencePolicies {
    /// Why these copies cannot be made, if they cannot (the ledger client's rule).
    pub fn invalid(&self) -> Option<String> {
        magnetar_bookie::ledger::check_quorum(
            self.bookkeeper_ensemble,
            self.bookkeeper_write_quorum,
            self.bookkeeper_ack_quorum,
        )
        .err()
        .map(|e| format!("persistence: {e}"))
    }
}

/// Pulsar's `BookieAffinityGroupData`: comma-separated group names.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BookieAffinityGroup {
    #[serde(rename = "bookieAffinityGroupPrimary")]
    pub primary: String,
    #[serde(
        rename = "bookieAffinityGroupSecondary",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub secondary: Option<String>,
}

impl BookieAffinityGroup {
    pub fn affinity(&self) -> Option<Affinity> {
        Affinity::from_lists(&self.primary, self.secondary.as_deref())
    }
}

/// Pulsar's `SubscribeRate`: subscribes per consumer (client) per period; -1 or 0: none.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct SubscribeRate {
    #[serde(rename = "subscribeThrottlingRatePerConsumer", default = "no_limit")]
    pub per_consumer: i64,
    #[serde(rename = "ratePeriodInSecond", default = "thirty")]
    pub period_secs: i64,
}

fn thirty() -> i64 {
    30
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct AutoSubscriptionCreation {
    #[serde(rename = "allowAutoSubscriptionCreation")]
    pub allow: bool,
}

/// Pulsar's `PublishRate`: -1 (or 0) is no limit.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct PublishRate {
    #[serde(rename = "publishThrottlingRateInMsg", default = "no_limit")]
    pub msgs: i64,
    #[serde(rename = "publishThrottlingRateInByte", default = "no_limit")]
    pub bytes: i64,
}

/// Pulsar's `DispatchRate`: per `ratePeriodInSecond`; -1 (or 0) is no limit.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct DispatchRate {
    #[serde(rename = "dispatchThrottlingRateInMsg", default = "no_limit")]
    pub msgs: i64,
    #[serde(rename = "dispatchThrottlingRateInByte", default = "no_limit")]
    pub bytes: i64,
    #[serde(rename = "ratePeriodInSecond", default = "one")]
    pub period_secs: i64,
    #[serde(rename = "relativeToPublishRate", default)]
    pub relative_to_publish_rate: bool,
}

fn one() -> i64 {
    1
}

impl PublishRate {
    pub fn rate(&self) -> Rate {
        Rate {
            msgs: positive(self.msgs),
            bytes: positive(self.bytes),
        }
    }
}

impl DispatchRate {
    /// Per second, whatever the period.
    pub fn rate(&self) -> Rate {
        let period = self.period_secs.max(1) as u64;
        Rate {
            msgs: positive(self.msgs).map(|m| (m / period).max(1)),
            bytes: positive(self.bytes).map(|b| (b / period).max(1)),
        }
    }
}

fn positive(v: i64) -> Option<u64> {
    u64::try_from(v).ok().filter(|v| *v > 0)
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct RetentionPolicies {
    /// Minutes; -1 keeps forever.
    #[serde(rename = "retentionTimeInMinutes")]
    pub time_minutes: i64,
    /// MB; -1 keeps forever.
    #[serde(rename = "retentionSizeInMB")]
    pub size_mb: i64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum QuotaPolicy {
    /// Producers are turned away (clients retry) until the backlog shrinks.
    ProducerRequestHold,
    /// Producers are turned away with an error the client does not retry.
    ProducerException,
    /// The slowest subscriptions are moved forward so the backlog fits.
    ConsumerBacklogEviction,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct BacklogQuota {
    /// Bytes (destination_storage); -1 or absent: no limit.
    #[serde(rename = "limitSize", default = "no_limit")]
    pub limit_size: i64,
    /// Seconds (message_age); -1 or absent: no limit.
    #[serde(rename = "limitTime", default = "no_limit")]
    pub limit_time: i64,
    pub policy: QuotaPolicy,
}

fn no_limit() -> i64 {
    -1
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AutoTopicCreation {
    #[serde(rename = "allowAutoTopicCreation")]
    pub allow: bool,
    /// `non-partitioned` or `partitioned`.
    #[serde(rename = "topicType", default = "non_partitioned")]
    pub topic_type: String,
    #[serde(rename = "defaultNumPartitions", default)]
    pub default_partitions: Option<u32>,
}

fn non_partitioned() -> String {
    "non-partitioned".into()
}

pub use magnetar_managed_ledger::Retention;

/// Broker-wide defaults for what namespaces leave unset.
#[derive(Debug, Clone)]
pub struct PolicyDefaults {
    pub retention: Retention,
    pub ttl: Option<Duration>,
    pub deduplication: bool,
    pub auto_topic_creation: bool,
    /// Partitions of auto-created topics (0: non-partitioned).
    pub auto_topic_partitions: u32,
    /// The cluster whose entry of per-cluster policies (rates) applies.
    pub cluster: String,
    /// Bookie groups for namespaces that name none (Pulsar's
    /// `bookkeeperClientIsolationGroups`).
    pub affinity: Option<Affinity>,
    pub offload: OffloadConfig,
}

impl Default for PolicyDefaults {
    fn default() -> Self {
        PolicyDefaults {
            retention: Retention {
                time: Some(Duration::ZERO),
                bytes: Some(0),
            },
            ttl: None,
            deduplication: false,
            auto_topic_creation: true,
            auto_topic_partitions: 0,
            cluster: "standalone".into(),
            affinity: None,
            offload: OffloadConfig::default(),
        }
    }
}

/// What a topic runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Effective {
    pub retention: Retention,
    pub ttl: Option<Duration>,
    pub size_quota: Option<(u64, QuotaPolicy)>,
    pub age_quota: Option<(Duration, QuotaPolicy)>,
    pub deduplication: bool,
    pub auto_topic_creation: bool,
    pub auto_topic_partitions: u32,
    pub compaction_threshold: Option<u64>,
    pub max_producers: Option<usize>,
    pub max_consumers: Option<usize>,
    pub max_consumers_per_subscription: Option<usize>,
    pub max_topics: Option<usize>,
    /// Whether subscribing to an absent durable subscription creates it.
    pub auto_subscription_creation: bool,
    pub publish_rate: Rate,
    pub dispatch_rate: Rate,
    pub subscription_dispatch_rate: Rate,
    /// At most this many SUBSCRIBEs per client in this window.
    pub subscribe_rate: Option<(u32, Duration)>,
    /// Where the namespace's ledgers go (None: the shared bookies first).
    pub affinity: Option<Affinity>,
    /// Ensemble, write and ack quorum of new ledgers (None: the broker's defaults).
    pub quorum: Option<[usize; 3]>,
    pub offload: OffloadSettings,
}

/// Topic-level policies (stored at `/admin/topic-policies/{topic path}`): where set, they
/// win over the namespace's.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TopicPolicies {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_ttl_in_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_policies: Option<RetentionPolicies>,
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub backlog_quota_map: HashMap<String, BacklogQuota>,
    #[serde(
        default,
        rename = "deduplicationEnabled",
        skip_serializing_if = "Option::is_none"
    )]
    pub deduplication_enabled: Option<bool>,
    #[serde(
        default,
        rename = "publishRate",
        skip_serializing_if = "Option::is_none"
    )]
    pub publish_rate: Option<PublishRate>,
    #[serde(
        default,
        rename = "dispatchRate",
        skip_serializing_if = "Option::is_none"
    )]
    pub dispatch_rate: Option<DispatchRate>,
    #[serde(
        default,
        rename = "subscriptionDispatchRate",
        skip_serializing_if = "Option::is_none"
    )]
    pub subscription_dispatch_rate: Option<DispatchRate>,
    /// Laid over the namespace's field by field.
    #[serde(
        default,
        rename = "offloadPolicies",
        skip_serializing_if = "Option::is_none"
    )]
    pub offload_policies: Option<OffloadPolicies>,
}

impl NamespacePolicies {
    /// These policies with a topic's own laid over them.
    pub fn with_topic(mut self, t: &TopicPolicies) -> NamespacePolicies {
        if t.message_ttl_in_seconds.is_some() {
            self.message_ttl_in_seconds = t.message_ttl_in_seconds;
        }
        if t.retention_policies.is_some() {
            self.retention_policies = t.retention_policies;
        }
        for (k, q) in &t.backlog_quota_map {
            self.backlog_quota_map.insert(k.clone(), *q);
        }
        if t.deduplication_enabled.is_some() {
            self.deduplication_enabled = t.deduplication_enabled;
        }
        if let Some(r) = t.publish_rate {
            self.publish_rate = HashMap::from([(String::new(), r)]);
        }
        if let Some(r) = t.dispatch_rate {
            self.dispatch_rate = HashMap::from([(String::new(), r)]);
        }
        if let Some(r) = t.subscription_dispatch_rate {
            self.subscription_dispatch_rate = HashMap::from([(String::new(), r)]);
        }
        if let Some(o) = &t.offload_policies {
            self.offload_policies =
                Some(self.offload_policies.take().unwrap_or_default().overlaid(o));
        }
        self
    }
}

impl Effective {
    pub fn resolve(p: &NamespacePolicies, d: &PolicyDefaults) -> Effective {
        let quota = |key: &str| p.backlog_quota_map.get(key).copied();
        let for_cluster = |m: &HashMap<String, DispatchRate>| {
            m.get(&d.cluster)
                .or_else(|| m.get(""))
                .map_or(Rate::default(), DispatchRate::rate)
        };
        let auto = p.auto_topic_creation.as_ref();
        Effective {
            retention: p.retention_policies.map_or(d.retention, |r| {
                Retention::from_limits(r.time_minutes, r.size_mb)
            }),
            ttl: match p.message_ttl_in_seconds {
                Some(s) if s > 0 => Some(Duration::from_secs(s as u64)),
                Some(_) => None,
                None => d.ttl,
            },
            size_quota: quota("destination_storage")
                .and_then(|q| u64::try_from(q.limit_size).ok().map(|l| (l, q.policy))),
            age_quota: quota("message_age").and_then(|q| {
                u64::try_from(q.limit_time)
                    .ok()
                    .map(|l| (Duration::from_secs(l), q.policy))
            }),
            deduplication: p.deduplication_enabled.unwrap_or(d.deduplication),
            auto_topic_creation: auto.map_or(d.auto_topic_creation, |a| a.allow),
            auto_topic_partitions: match auto {
                Some(a) if a.topic_type == "partitioned" => a.default_partitions.unwrap_or(1),
                Some(_) => 0,
                None => d.auto_topic_partitions,
            },
            compaction_threshold: p
                .compaction_threshold
                .and_then(|t| u64::try_from(t).ok())
                .filter(|t| *t > 0),
            max_producers: limit(p.max_producers_per_topic),
            max_consumers: limit(p.max_consumers_per_topic),
            max_consumers_per_subscription: limit(p.max_consumers_per_subscription),
            max_topics: limit(p.max_topics_per_namespace),
            auto_subscription_creation: p.auto_subscription_creation.is_none_or(|a| a.allow),
            publish_rate: p
                .publish_rate
                .get(&d.cluster)
                .or_else(|| p.publish_rate.get(""))
                .map_or(Rate::default(), PublishRate::rate),
            dispatch_rate: for_cluster(&p.dispatch_rate),
            subscription_dispatch_rate: for_cluster(&p.subscription_dispatch_rate),
            subscribe_rate: p.subscribe_rate.get(&d.cluster).and_then(|r| {
                let n = u32::try_from(r.per_consumer).ok().filter(|n| *n > 0)?;
                Some((n, Duration::from_secs(r.period_secs.max(1) as u64)))
            }),
            affinity: p
                .bookie_affinity_group
                .as_ref()
                .and_then(BookieAffinityGroup::affinity)
                .or_else(|| d.affinity.clone()),
            quorum: p.persistence.filter(|q| q.invalid().is_none()).map(|q| {
                [
                    q.bookkeeper_ensemble,
                    q.bookkeeper_write_quorum,
                    q.bookkeeper_ack_quorum,
                ]
            }),
            offload: OffloadSettings::resolve(
                p.offload_policies.as_ref(),
                p.offload_threshold,
                p.offload_threshold_in_seconds,
                p.offload_deletion_lag_ms,
                &d.offload,
            ),
        }
    }
}

/// A stored connection limit: positive numbers only (0 and negatives mean none).
fn limit(v: Option<i64>) -> Option<usize> {
    v.and_then(|n| usize::try_from(n).ok()).filter(|n| *n > 0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn pulsar_json_resolves_over_defaults() {
        let p: NamespacePolicies = serde_json::from_str(
            r#"{"message_ttl_in_seconds": 30,
                "retention_policies": {"retentionTimeInMinutes": -1, "retentionSizeInMB": 10},
                "backlog_quota_map": {
                  "destination_storage": {"limitSize": 1000, "policy": "producer_exception"},
                  "message_age": {"limitTime": 60, "policy": "consumer_backlog_eviction"}},
                "autoTopicCreationOverride": {"allowAutoTopicCreation": true,
                  "topicType": "partitioned", "defaultNumPartitions": 4},
                "replication_clusters": ["standalone"]}"#,
        )
        .unwrap();
        let e = Effective::resolve(&p, &PolicyDefaults::default());
        assert_eq!(e.ttl, Some(Duration::from_secs(30)));
        assert_eq!(e.retention.time, None);
        assert_eq!(e.retention.bytes, Some(10 << 20));
        assert_eq!(e.size_quota, Some((1000, QuotaPolicy::ProducerException)));
        assert_eq!(
            e.age_quota,
            Some((
                Duration::from_secs(60),
                QuotaPolicy::ConsumerBacklogEviction
            ))
        );
        assert_eq!(e.auto_topic_partitions, 4);
        let topic = TopicPolicies {
            message_ttl_in_seconds: Some(0),
            ..Default::default()
        };
        let over = Effective::resolve(&p.clone().with_topic(&topic), &PolicyDefaults::default());
        assert_eq!(over.ttl, None, "a topic's 0 switches the namespace TTL off");
        assert_eq!(over.size_quota, e.size_quota);
        let empty = Effective::resolve(&NamespacePolicies::default(), &PolicyDefaults::default());
        assert_eq!(empty.ttl, None);
        assert_eq!(empty.retention.time, Some(Duration::ZERO));
        assert!(empty.auto_topic_creation);
        assert_eq!(empty.auto_topic_partitions, 0);
        assert_eq!(empty.affinity, None);
    }

    #[test]
    fn a_namespace_affinity_wins_over_the_broker_default() {
        let d = PolicyDefaults {
            affinity: Affinity::from_lists("shared", None),
            ..Default::default()
        };
        let p: NamespacePolicies = serde_json::from_str(
            r#"{"bookieAffinityGroup": {"bookieAffinityGroupPrimary": "a, b",
                "bookieAffinityGroupSecondary": "c"}}"#,
        )
        .unwrap();
        assert_eq!(
            Effective::resolve(&p, &d).affinity,
            Affinity::from_lists("a,b", Some("c"))
        );
        let none = Effective::resolve(&NamespacePolicies::default(), &d);
        assert_eq!(none.affinity, d.affinity);
        // a stored record naming no group falls back to the default
        let blank: NamespacePolicies =
            serde_json::from_str(r#"{"bookieAffinityGroup": {"bookieAffinityGroupPrimary": ""}}"#)
                .unwrap();
        assert_eq!(Effective::resolve(&blank, &d).affinity, d.affinity);
    }
}
