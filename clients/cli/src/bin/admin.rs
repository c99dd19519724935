//! `magnetar-admin`: administer Magnetar (or Pulsar) through the admin REST API v2, with
//! pulsar-admin's verbs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use magnetar_cli::admin::{
    AdminClient, AdminError, Connection, message_id, namespace_path, render, seg, topic_path,
};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(
    name = "magnetar-admin",
    version,
    about = "Administer Magnetar through its admin REST API (pulsar-admin's verbs)",
    after_help = "Topic names: persistent://tenant/namespace/topic, tenant/namespace/topic, or a \
                  bare name in public/default. Namespaces: tenant/namespace. Exit status: 0 \
                  done, 1 the server refused (its reason is printed), 2 bad usage or \
                  unreachable."
)]
struct Cli {
    /// The admin API's address.
    #[arg(
        long,
        global = true,
        env = "MAGNETAR_ADMIN_URL",
        default_value = "http://localhost:8080"
    )]
    admin_url: String,
    /// A token (JWT) sent as `Authorization: Bearer`.
    #[arg(long, global = true, env = "MAGNETAR_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Read the token from this file.
    #[arg(long, global = true, env = "MAGNETAR_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// PEM certificates to trust for an https admin URL.
    #[arg(long, global = true, env = "MAGNETAR_TLS_TRUST_CERT")]
    tls_trust_cert: Option<PathBuf>,
    /// Accept any server certificate (for testing only).
    #[arg(long, global = true)]
    tls_allow_insecure: bool,
    /// Output as JSON rather than a table.
    #[arg(long, short = 'o', global = true, value_parser = ["table", "json"], default_value = "table")]
    output: String,
    #[command(subcommand)]
    cmd: Group,
}

#[derive(Subcommand)]
enum Group {
    /// Clusters: list, get, create, update, delete.
    #[command(subcommand)]
    Clusters(Clusters),
    /// Tenants: list, get, create, update, delete.
    #[command(subcommand)]
    Tenants(Tenants),
    /// Namespaces: lifecycle, topics, grants, bundles and policies.
    #[command(subcommand)]
    Namespaces(Namespaces),
    /// Topics: lifecycle, partitions, stats, lookup, grants and messages.
    #[command(subcommand)]
    Topics(Topics),
    /// Subscriptions of a topic: list, create, delete, skip, reset, expire, peek.
    #[command(subcommand)]
    Subscriptions(Subscriptions),
    /// Brokers: list, leader, owned namespaces, health.
    #[command(subcommand)]
    Brokers(Brokers),
    /// Bookies: list them; put them in racks and affinity groups.
    #[command(subcommand)]
    Bookies(Bookies),
    /// Schemas of a topic: get, upload, delete, check compatibility.
    #[command(subcommand)]
    Schemas(Schemas),
}

#[derive(Subcommand)]
enum Schemas {
    /// A topic's latest schema, or one version of it (`--version`), or every version (`--all`).
    Get {
        topic: String,
        #[arg(long)]
        version: Option<u64>,
        #[arg(long, conflicts_with = "version")]
        all: bool,
    },
    /// Upload a schema from a file holding `{"type": "AVRO", "schema": "...", "properties": {}}`
    /// (pulsar-admin's format): a new version if it is new and compatible.
    Upload {
        topic: String,
        #[arg(long, short = 'f')]
        filename: PathBuf,
    },
    /// Delete every version of a topic's schema.
    Delete { topic: String },
    /// Whether the schema in a file could be uploaded (changes nothing).
    Compatibility {
        topic: String,
        #[arg(long, short = 'f')]
        filename: PathBuf,
    },
    /// The version number the topic has for the schema in a file.
    Version {
        topic: String,
        #[arg(long, short = 'f')]
        filename: PathBuf,
    },
}

/// `/admin/v2/schemas/{tenant}/{ns}/{topic}` of a topic name.
fn schema_base(topic: &str) -> Result<String, AdminError> {
    let path = topic_path(topic)?;
    let rest = path.split_once('/').map_or(path.as_str(), |(_, r)| r);
    Ok(format!("/admin/v2/schemas/{rest}"))
}

/// A schema payload file, checked to be a JSON object before it is sent.
fn schema_file(f: &std::path::Path) -> Result<Value, AdminError> {
    let text = std::fs::read_to_string(f)
        .map_err(|e| AdminError::Usage(format!("cannot read {}: {e}", f.display())))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| AdminError::Usage(format!("{} is not JSON: {e}", f.display())))?;
    if v.get("type").and_then(Value::as_str).is_none() {
        return Err(AdminError::Usage(format!(
            "{} needs a \"type\" (AVRO, JSON, STRING, ...)",
            f.display()
        )));
    }
    Ok(v)
}

// verb names follow pulsar-admin's (list-bookies)
#[allow(clippy::enum_variant_names)]
#[derive(Subcommand)]
enum Bookies {
    /// List the registered bookies.
    ListBookies,
    /// Show the racks map: group -> bookie -> rack and hostname.
    RacksPlacement,
    /// Show one bookie's rack.
    GetBookieRack {
        #[arg(long, short = 'b')]
        bookie: String,
    },
    /// Put a bookie (host:port) in a group and rack; it leaves any other group. Namespaces
    /// with that group as their bookie affinity keep their ledgers on the group's bookies.
    SetBookieRack {
        #[arg(long, short = 'b')]
        bookie: String,
        /// Affinity group [default: default, the shared pool].
        #[arg(long, short = 'g', default_value = "default")]
        group: String,
        #[arg(long, short = 'r')]
        rack: Option<String>,
        #[arg(long)]
        hostname: Option<String>,
    },
    /// Take a bookie out of the racks map.
    DeleteBookieRack {
        #[arg(long, short = 'b')]
        bookie: String,
    },
}

#[derive(Subcommand)]
enum Clusters {
    /// List clusters.
    List,
    /// Show a cluster's data.
    Get { cluster: String },
    /// Create a cluster.
    Create(ClusterData),
    /// Replace a cluster's data.
    Update(ClusterData),
    /// Delete a cluster no tenant uses.
    Delete { cluster: String },
}

/// Pulsar's offload policies, as pulsar-admin's set-offload-policies takes them.
#[derive(Args)]
struct OffloadPolicyArgs {
    /// filesystem, aws-s3 (S3), google-cloud-storage or azureblob.
    #[arg(long, short = 'd')]
    driver: String,
    /// Bucket (aws-s3, google-cloud-storage) or container (azureblob).
    #[arg(long, short = 'b')]
    bucket: Option<String>,
    #[arg(long, short = 'r')]
    region: Option<String>,
    /// Endpoint of an S3-compatible server.
    #[arg(long, short = 'e')]
    endpoint: Option<String>,
    /// Offload once a topic keeps more than this many bytes in storage (-1: never).
    #[arg(long, short = 't', allow_hyphen_values = true)]
    offload_after_threshold: Option<i64>,
    /// Offload ledgers closed more than this many seconds ago (-1: never).
    #[arg(long, allow_hyphen_values = true)]
    offload_after_elapsed_secs: Option<i64>,
    /// Delete storage copies this many ms after the offload.
    #[arg(long, short = 'l', allow_hyphen_values = true)]
    offload_deletion_lag_ms: Option<i64>,
}

impl OffloadPolicyArgs {
    fn body(&self) -> Value {
        let mut b = json!({"managedLedgerOffloadDriver": self.driver});
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                b[k] = v;
            }
        };
        let s3 = !self.driver.eq_ignore_ascii_case("google-cloud-storage");
        let (bucket, region) = if s3 {
            (
                "s3ManagedLedgerOffloadBucket",
                "s3ManagedLedgerOffloadRegion",
            )
        } else {
            (
                "gcsManagedLedgerOffloadBucket",
                "gcsManagedLedgerOffloadRegion",
            )
        };
        put(bucket, self.bucket.clone().map(Value::from));
        put(region, self.region.clone().map(Value::from));
        put(
            "s3ManagedLedgerOffloadServiceEndpoint",
            self.endpoint.clone().map(Value::from),
        );
        put(
            "managedLedgerOffloadThresholdInBytes",
            self.offload_after_threshold.map(Value::from),
        );
        put(
            "managedLedgerOffloadThresholdInSeconds",
            self.offload_after_elapsed_secs.map(Value::from),
        );
        put(
            "managedLedgerOffloadDeletionLagInMillis",
            self.offload_deletion_lag_ms.map(Value::from),
        );
        b
    }
}

#[derive(Args)]
struct ClusterData {
    cluster: String,
    /// HTTP admin URL, e.g. http://host:8080.
    #[arg(long)]
    url: Option<String>,
    /// Binary protocol URL, e.g. pulsar://host:6650.
    #[arg(long)]
    broker_url: Option<String>,
}

#[derive(Subcommand)]
enum Tenants {
    /// List tenants.
    List,
    /// Show a tenant's admin roles and allowed clusters.
    Get { tenant: String },
    /// Create a tenant.
    Create(TenantData),
    /// Replace a tenant's admin roles and allowed clusters.
    Update(TenantData),
    /// Delete a tenant that has no namespaces.
    Delete { tenant: String },
}

#[derive(Args)]
struct TenantData {
    tenant: String,
    /// Roles that administer the tenant, comma separated.
    #[arg(long, short = 'r', value_delimiter = ',')]
    admin_roles: Vec<String>,
    /// Clusters the tenant may use, comma separated (default: this broker's).
    #[arg(long, short = 'c', value_delimiter = ',')]
    allowed_clusters: Vec<String>,
}

#[derive(Subcommand)]
enum Namespaces {
    /// List a tenant's namespaces.
    List { tenant: String },
    /// Create a namespace.
    Create {
        namespace: String,
        /// Number of bundles (hash ranges) [default: 4].
        #[arg(long, short = 'b')]
        bundles: Option<u32>,
    },
    /// Delete a namespace (with --force, its topics too).
    Delete {
        namespace: String,
        #[arg(long, short = 'f')]
        force: bool,
    },
    /// Show all of a namespace's policies.
    Policies { namespace: String },
    /// List a namespace's topics.
    Topics {
        namespace: String,
        /// PERSISTENT, NON_PERSISTENT or ALL.
        #[arg(long, default_value = "PERSISTENT")]
        mode: String,
    },
    /// Show the namespace's grants.
    Permissions { namespace: String },
    /// Grant a role actions on the namespace.
    GrantPermission {
        namespace: String,
        #[arg(long)]
        role: String,
        /// produce, consume (comma separated).
        #[arg(long, value_delimiter = ',', required = true)]
        actions: Vec<String>,
    },
    /// Revoke a role's grant on the namespace.
    RevokePermission {
        namespace: String,
        #[arg(long)]
        role: String,
    },
    /// Show which roles may use which subscriptions.
    SubscriptionPermissions { namespace: String },
    /// Allow only these roles on a subscription name.
    GrantSubscriptionPermission {
        namespace: String,
        #[arg(long)]
        subscription: String,
        #[arg(long, value_delimiter = ',', required = true)]
        roles: Vec<String>,
    },
    /// Remove a role from a subscription's list.
    RevokeSubscriptionPermission {
        namespace: String,
        #[arg(long)]
        subscription: String,
        #[arg(long)]
        role: String,
    },
    /// Show the namespace's bundles.
    Bundles { namespace: String },
    /// Split a bundle in two at its midpoint.
    SplitBundle {
        namespace: String,
        /// The bundle, e.g. 0x00000000_0x40000000.
        #[arg(long, short = 'b')]
        bundle: String,
    },
    /// Unload a namespace's topics (or one bundle's) from their broker.
    Unload {
        namespace: String,
        #[arg(long, short = 'b')]
        bundle: Option<String>,
    },
    /// Keep the namespace's ledgers on bookies of these groups (see `bookies
    /// set-bookie-rack`); applies to each topic's next ledger, which a topic starts at its
    /// next write.
    SetBookieAffinityGroup {
        namespace: String,
        /// Groups tried first, comma separated.
        #[arg(long, short = 'p')]
        primary_group: String,
        /// Groups used when the primary ones have too few bookies.
        #[arg(long, short = 's')]
        secondary_group: Option<String>,
    },
    /// Show the namespace's bookie affinity groups.
    GetBookieAffinityGroup { namespace: String },
    /// Remove the namespace's bookie affinity (back to the shared bookies).
    DeleteBookieAffinityGroup { namespace: String },
    /// Set, show or remove a namespace policy.
    #[command(subcommand)]
    Policy(NsPolicy),
}

#[derive(Subcommand)]
enum NsPolicy {
    /// Keep acknowledged messages this long and this much (-1: forever).
    SetRetention {
        namespace: String,
        #[arg(long, allow_hyphen_values = true)]
        time_minutes: i64,
        #[arg(long, allow_hyphen_values = true)]
        size_mb: i64,
    },
    /// Copies of the namespace's new ledgers: bookies per ledger, copies per entry, copies
    /// durable before a publish is acknowledged (pulsar-admin's set-persistence).
    SetPersistence {
        namespace: String,
        #[arg(short = 'e', long)]
        bookkeeper_ensemble: usize,
        #[arg(short = 'w', long)]
        bookkeeper_write_quorum: usize,
        #[arg(short = 'a', long)]
        bookkeeper_ack_quorum: usize,
        #[arg(short = 'r', long, default_value_t = 0.0)]
        ml_mark_delete_max_rate: f64,
    },
    /// How new schemas must relate to the old (ALWAYS_COMPATIBLE, ALWAYS_INCOMPATIBLE,
    /// BACKWARD, FORWARD, FULL, their _TRANSITIVE forms, or UNDEFINED = FULL).
    SetSchemaCompatibilityStrategy {
        namespace: String,
        #[arg(long, short = 'c')]
        compatibility: String,
    },
    /// Whether producers and consumers may add schema versions (else only the admin API).
    SetIsAllowAutoUpdateSchema {
        namespace: String,
        #[arg(long, action = clap::ArgAction::Set)]
        enable: bool,
    },
    /// Whether producers without a schema are refused on topics that have one.
    SetSchemaValidationEnforce {
        namespace: String,
        #[arg(long, action = clap::ArgAction::Set)]
        enable: bool,
    },
    /// Expire unacknowledged messages older than this many seconds (0: never).
    SetMessageTtl {
        namespace: String,
        #[arg(long)]
        ttl_seconds: i64,
    },
    /// Limit the backlog by size or age.
    SetBacklogQuota {
        namespace: String,
        /// destination_storage or message_age.
        #[arg(long, default_value = "destination_storage")]
        r#type: String,
        /// Bytes (destination_storage).
        #[arg(long, allow_hyphen_values = true)]
        limit_size: Option<i64>,
        /// Seconds (message_age).
        #[arg(long, allow_hyphen_values = true)]
        limit_time: Option<i64>,
        /// producer_request_hold, producer_exception or consumer_backlog_eviction.
        #[arg(long)]
        policy: String,
    },
    /// Remove a backlog quota.
    RemoveBacklogQuota {
        namespace: String,
        #[arg(long, default_value = "destination_storage")]
        r#type: String,
    },
    /// Deduplicate producers' messages by sequence id.
    SetDeduplication {
        namespace: String,
        #[arg(long, action = clap::ArgAction::Set)]
        enable: bool,
    },
    /// Compact topics once this many bytes arrived since the last compaction (0: off).
    SetCompactionThreshold {
        namespace: String,
        #[arg(long)]
        threshold: i64,
    },
    /// Offload once a topic keeps more than this many bytes in storage (0: every closed
    /// ledger; -1: the broker's setting).
    SetOffloadThreshold {
        namespace: String,
        #[arg(long, short = 's', allow_hyphen_values = true)]
        size: i64,
    },
    /// Delete storage copies of offloaded ledgers this many ms after the offload.
    SetOffloadDeletionLag {
        namespace: String,
        #[arg(long, short = 'l', allow_hyphen_values = true)]
        lag_ms: i64,
    },
    /// Where and when the namespace's topics offload (Pulsar's offload policies; they win
    /// over the threshold and lag set alone). Remove with `remove <ns> offloadPolicies`.
    SetOffloadPolicies {
        namespace: String,
        #[command(flatten)]
        policies: OffloadPolicyArgs,
    },
    /// Producers per topic (0: no limit).
    SetMaxProducersPerTopic { namespace: String, max: i64 },
    /// Consumers per topic (0: no limit).
    SetMaxConsumersPerTopic { namespace: String, max: i64 },
    /// Consumers per subscription (0: no limit).
    SetMaxConsumersPerSubscription { namespace: String, max: i64 },
    /// Let clients create topics by using them.
    SetAutoTopicCreation {
        namespace: String,
        #[arg(long, action = clap::ArgAction::Set)]
        enable: bool,
        /// non-partitioned or partitioned.
        #[arg(long, default_value = "non-partitioned")]
        r#type: String,
        #[arg(long)]
        num_partitions: Option<u32>,
    },
    /// Show one policy (retention, persistence, messageTTL, backlogQuotaMap, deduplication,
    /// compactionThreshold, maxProducersPerTopic, maxConsumersPerTopic,
    /// maxConsumersPerSubscription, offloadThreshold, offloadThresholdInSeconds,
    /// offloadDeletionLagMs, offloadPolicies).
    Get { namespace: String, policy: String },
    /// Remove one policy (same names as get, plus autoTopicCreation).
    Remove { namespace: String, policy: String },
}

// verb names follow pulsar-admin's (list-partitioned-topics)
#[allow(clippy::enum_variant_names)]
#[derive(Subcommand)]
enum Topics {
    /// List a namespace's topics (partitions listed one by one).
    List {
        namespace: String,
    },
    /// List a namespace's partitioned topics.
    ListPartitionedTopics {
        namespace: String,
    },
    /// Create a non-partitioned topic.
    Create {
        topic: String,
    },
    /// Create a partitioned topic.
    CreatePartitionedTopic {
        topic: String,
        #[arg(long, short = 'p')]
        partitions: u32,
    },
    /// Add partitions to a partitioned topic.
    UpdatePartitionedTopic {
        topic: String,
        #[arg(long, short = 'p')]
        partitions: u32,
    },
    /// Show a topic's partition count (0: not partitioned).
    GetPartitionedTopicMetadata {
        topic: String,
    },
    /// Delete a topic (with --force, even while clients use it).
    Delete {
        topic: String,
        #[arg(long, short = 'f')]
        force: bool,
    },
    /// Delete a partitioned topic and its partitions.
    DeletePartitionedTopic {
        topic: String,
        #[arg(long, short = 'f')]
        force: bool,
    },
    /// A topic's stats.
    Stats {
        topic: String,
    },
    /// A topic's storage view: ledgers and cursors.
    StatsInternal {
        topic: String,
        /// Include each ledger's record: its bookies, quorums and affinity.
        #[arg(long, short = 'm')]
        metadata: bool,
    },
    /// Stats summed over a partitioned topic's partitions.
    PartitionedStats {
        topic: String,
        #[arg(long)]
        per_partition: bool,
    },
    /// Which broker serves a topic.
    Lookup {
        topic: String,
    },
    /// The namespace bundle a topic falls in.
    Bundle {
        topic: String,
    },
    /// Unload a topic from its broker.
    Unload {
        topic: String,
    },
    /// Refuse further messages; prints the last message id.
    Terminate {
        topic: String,
    },
    /// Start compacting a topic.
    Compact {
        topic: String,
    },
    /// Whether compaction is running, done or failed.
    CompactionStatus {
        topic: String,
    },
    /// Offload the topic's closed ledgers to the tier: every one before --message-id
    /// (ledger:entry), or all of them. Runs in the background; see offload-status.
    Offload {
        topic: String,
        #[arg(long, short = 'm')]
        message_id: Option<String>,
    },
    /// Whether an offload is running, done or failed (and the first message not offloaded).
    OffloadStatus {
        topic: String,
    },
    /// The topic's own offload policies (over its namespace's, field by field).
    GetOffloadPolicies {
        topic: String,
    },
    SetOffloadPolicies {
        topic: String,
        #[command(flatten)]
        policies: OffloadPolicyArgs,
    },
    RemoveOffloadPolicies {
        topic: String,
    },
    /// The id of the last message.
    LastMessageId {
        topic: String,
    },
    /// Show the grants on a topic (namespace grants included).
    Permissions {
        topic: String,
    },
    /// Grant a role actions on a topic.
    GrantPermission {
        topic: String,
        #[arg(long)]
        role: String,
        #[arg(long, value_delimiter = ',', required = true)]
        actions: Vec<String>,
    },
    /// Revoke a role's grant on a topic.
    RevokePermission {
        topic: String,
        #[arg(long)]
        role: String,
    },
}

#[derive(Subcommand)]
enum Subscriptions {
    /// List a topic's subscriptions.
    List { topic: String },
    /// Create a durable subscription (at the latest message unless --message-id).
    Create {
        topic: String,
        #[arg(long, short = 's')]
        subscription: String,
        /// Start here: ledger:entry, or `earliest` / `latest`.
        #[arg(long, short = 'm')]
        message_id: Option<String>,
    },
    /// Delete a subscription (with --force, even with consumers attached).
    Delete {
        topic: String,
        #[arg(long, short = 's')]
        subscription: String,
        #[arg(long, short = 'f')]
        force: bool,
    },
    /// Acknowledge the next N messages.
    Skip {
        topic: String,
        #[arg(long, short = 's')]
        subscription: String,
        #[arg(long, short = 'n')]
        count: u64,
    },
    /// Acknowledge everything.
    ClearBacklog {
        topic: String,
        #[arg(long, short = 's')]
        subscription: String,
    },
    /// Move a subscription to a time or a message id.
    ResetCursor {
        topic: String,
        #[arg(long, short = 's')]
        subscription: String,
        /// How far back, e.g. 10m or 1h.
        #[arg(long, short = 't', conflicts_with = "message_id")]
        time: Option<String>,
        /// ledger:entry (delivery restarts at it).
        #[arg(long, short = 'm')]
        message_id: Option<String>,
    },
    /// Acknowledge messages older than N seconds (on every subscription with --all).
    ExpireMessages {
        topic: String,
        #[arg(long, short = 's', required_unless_present = "all")]
        subscription: Option<String>,
        #[arg(long, short = 't')]
        expire_time_seconds: u64,
        #[arg(long)]
        all: bool,
    },
    /// Print the payload of the Nth unacknowledged message (from 1).
    Peek {
        topic: String,
        #[arg(long, short = 's')]
        subscription: String,
        #[arg(long, short = 'n', default_value_t = 1)]
        count: u64,
    },
}

#[derive(Subcommand)]
enum Brokers {
    /// List the active brokers (of a cluster, if given).
    List { cluster: Option<String> },
    /// The leader broker.
    Leader,
    /// Namespace bundles a broker owns.
    OwnedNamespaces { cluster: String, broker: String },
    /// Whether the broker is healthy.
    Healthcheck,
}

type Req = (&'static str, String, Option<Value>);

fn get(path: String) -> Req {
    ("GET", path, None)
}

fn plan(cmd: &Group) -> Result<Vec<Req>, AdminError> {
    let a = "/admin/v2";
    let r = match cmd {
        Group::Clusters(c) => match c {
            Clusters::List => get(format!("{a}/clusters")),
            Clusters::Get { cluster } => get(format!("{a}/clusters/{}", seg(cluster))),
            Clusters::Create(d) | Clusters::Update(d) => {
                let mut body = json!({});
                if let Some(u) = &d.url {
                    body["serviceUrl"] = json!(u);
                }
                if let Some(u) = &d.broker_url {
                    body["brokerServiceUrl"] = json!(u);
                }
                let m = if matches!(c, Clusters::Create(_)) {
                    "PUT"
                } else {
                    "POST"
                };
                (m, format!("{a}/clusters/{}", seg(&d.cluster)), Some(body))
            }
            Clusters::Delete { cluster } => {
                ("DELETE", format!("{a}/clusters/{}", seg(cluster)), None)
            }
        },
        Group::Tenants(t) => match t {
            Tenants::List => get(format!("{a}/tenants")),
            Tenants::Get { tenant } => get(format!("{a}/tenants/{}", seg(tenant))),
            Tenants::Create(d) | Tenants::Update(d) => {
                let body =
                    json!({"adminRoles": d.admin_roles, "allowedClusters": d.allowed_clusters});
                let m = if matches!(t, Tenants::Create(_)) {
                    "PUT"
                } else {
                    "POST"
                };
                (m, format!("{a}/tenants/{}", seg(&d.tenant)), Some(body))
            }
            Tenants::Delete { tenant } => ("DELETE", format!("{a}/tenants/{}", seg(tenant)), None),
        },
        Group::Namespaces(n) => return namespaces(n),
        Group::Topics(t) => return topics(t),
        Group::Subscriptions(s) => return subscriptions(s),
        Group::Brokers(b) => match b {
            Brokers::List { cluster: None } => get(format!("{a}/brokers")),
            Brokers::List { cluster: Some(c) } => get(format!("{a}/brokers/{}", seg(c))),
            Brokers::Leader => get(format!("{a}/brokers/leaderBroker")),
            Brokers::OwnedNamespaces { cluster, broker } => get(format!(
                "{a}/brokers/{}/{}/ownedNamespaces",
                seg(cluster),
                seg(broker)
            )),
            Brokers::Healthcheck => get(format!("{a}/brokers/health")),
        },
        Group::Schemas(sc) => match sc {
            Schemas::Get {
                topic,
                version: Some(v),
                ..
            } => get(format!("{}/schema/{v}", schema_base(topic)?)),
            Schemas::Get {
                topic, all: true, ..
            } => get(format!("{}/schemas", schema_base(topic)?)),
            Schemas::Get { topic, .. } => get(format!("{}/schema", schema_base(topic)?)),
            Schemas::Upload { topic, filename } => (
                "POST",
                format!("{}/schema", schema_base(topic)?),
                Some(schema_file(filename)?),
            ),
            Schemas::Delete { topic } => {
                ("DELETE", format!("{}/schema", schema_base(topic)?), None)
            }
            Schemas::Compatibility { topic, filename } => (
                "POST",
                format!("{}/compatibility", schema_base(topic)?),
                Some(schema_file(filename)?),
            ),
            Schemas::Version { topic, filename } => (
                "POST",
                format!("{}/version", schema_base(topic)?),
                Some(schema_file(filename)?),
            ),
        },
        Group::Bookies(b) => match b {
            Bookies::ListBookies => get(format!("{a}/bookies/all")),
            Bookies::RacksPlacement => get(format!("{a}/bookies/racks-info")),
            Bookies::GetBookieRack { bookie } => {
                get(format!("{a}/bookies/racks-info/{}", seg(bookie)))
            }
            Bookies::SetBookieRack {
                bookie,
                group,
                rack,
                hostname,
            } => {
                let mut body = json!({});
                if let Some(r) = rack {
                    body["rack"] = json!(r);
                }
                if let Some(h) = hostname {
                    body["hostname"] = json!(h);
                }
                (
                    "POST",
                    format!(
                        "{a}/bookies/racks-info/{}?group={}",
                        seg(bookie),
                        seg(group)
                    ),
                    Some(body),
                )
            }
            Bookies::DeleteBookieRack { bookie } => (
                "DELETE",
                format!("{a}/bookies/racks-info/{}", seg(bookie)),
                None,
            ),
        },
    };
    Ok(vec![r])
}

fn namespaces(n: &Namespaces) -> Result<Vec<Req>, AdminError> {
    let base = |ns: &str| namespace_path(ns).map(|p| format!("/admin/v2/namespaces/{p}"));
    let r = match n {
        Namespaces::List { tenant } => get(format!("/admin/v2/namespaces/{}", seg(tenant))),
        Namespaces::Create { namespace, bundles } => {
            // the broker lays the boundaries out from the count
            let body = bundles.map(|b| json!({"bundles": {"numBundles": b}}));
            ("PUT", base(namespace)?, body)
        }
        Namespaces::Delete { namespace, force } => (
            "DELETE",
            format!("{}?force={force}", base(namespace)?),
            None,
        ),
        Namespaces::Policies { namespace } => get(base(namespace)?),
        Namespaces::Topics { namespace, mode } => {
            get(format!("{}/topics?mode={}", base(namespace)?, seg(mode)))
        }
        Namespaces::Permissions { namespace } => get(format!("{}/permissions", base(namespace)?)),
        Namespaces::GrantPermission {
            namespace,
            role,
            actions,
        } => (
            "POST",
            format!("{}/permissions/{}", base(namespace)?, seg(role)),
            Some(json!(actions)),
        ),
        Namespaces::RevokePermission { namespace, role } => (
            "DELETE",
            format!("{}/permissions/{}", base(namespace)?, seg(role)),
            None,
        ),
        Namespaces::SubscriptionPermissions { namespace } => {
            get(format!("{}/permissions/subscription", base(namespace)?))
        }
        Namespaces::GrantSubscriptionPermission {
            namespace,
            subscription,
            roles,
        } => (
            "POST",
            format!(
                "{}/permissions/subscription/{}",
                base(namespace)?,
                seg(subscription)
            ),
            Some(json!(roles)),
        ),
        Namespaces::RevokeSubscriptionPermission {
            namespace,
            subscription,
            role,
        } => (
            "DELETE",
            format!(
                "{}/permissions/subscription/{}/{}",
                base(namespace)?,
                seg(subscription),
                seg(role)
            ),
            None,
        ),
        Namespaces::Bundles { namespace } => get(format!("{}/bundles", base(namespace)?)),
        Namespaces::SplitBundle { namespace, bundle } => (
            "PUT",
            format!("{}/{}/split", base(namespace)?, seg(bundle)),
            None,
        ),
        Namespaces::Unload { namespace, bundle } => match bundle {
            Some(b) => (
                "PUT",
                format!("{}/{}/unload", base(namespace)?, seg(b)),
                None,
            ),
            None => ("PUT", format!("{}/unload", base(namespace)?), None),
        },
        Namespaces::SetBookieAffinityGroup {
            namespace,
            primary_group,
            secondary_group,
        } => {
            let mut body = json!({"bookieAffinityGroupPrimary": primary_group});
            if let Some(s) = secondary_group {
                body["bookieAffinityGroupSecondary"] = json!(s);
            }
            (
                "POST",
                format!("{}/persistence/bookieAffinity", base(namespace)?),
                Some(body),
            )
        }
        Namespaces::GetBookieAffinityGroup { namespace } => {
            get(format!("{}/persistence/bookieAffinity", base(namespace)?))
        }
        Namespaces::DeleteBookieAffinityGroup { namespace } => (
            "DELETE",
            format!("{}/persistence/bookieAffinity", base(namespace)?),
            None,
        ),
        Namespaces::Policy(p) => return ns_policy(p, base),
    };
    Ok(vec![r])
}

fn ns_policy(
    p: &NsPolicy,
    base: impl Fn(&str) -> Result<String, AdminError>,
) -> Result<Vec<Req>, AdminError> {
    let set = |ns: &str, what: &str, body: Value| -> Result<Req, AdminError> {
        Ok(("POST", format!("{}/{what}", base(ns)?), Some(body)))
    };
    let r = match p {
        NsPolicy::SetRetention {
            namespace,
            time_minutes,
            size_mb,
        } => set(
            namespace,
            "retention",
            json!({"retentionTimeInMinutes": time_minutes, "retentionSizeInMB": size_mb}),
        )?,
        NsPolicy::SetPersistence {
            namespace,
            bookkeeper_ensemble,
            bookkeeper_write_quorum,
            bookkeeper_ack_quorum,
            ml_mark_delete_max_rate,
        } => set(
            namespace,
            "persistence",
            json!({
                "bookkeeperEnsemble": bookkeeper_ensemble,
                "bookkeeperWriteQuorum": bookkeeper_write_quorum,
                "bookkeeperAckQuorum": bookkeeper_ack_quorum,
                "managedLedgerMaxMarkDeleteRate": ml_mark_delete_max_rate,
            }),
        )?,
        NsPolicy::SetMessageTtl {
            namespace,
            ttl_seconds,
        } => set(namespace, "messageTTL", json!(ttl_seconds))?,
        NsPolicy::SetSchemaCompatibilityStrategy {
            namespace,
            compatibility,
        } => (
            "PUT",
            format!("{}/schemaCompatibilityStrategy", base(namespace)?),
            Some(json!(compatibility.to_ascii_uppercase())),
        ),
        NsPolicy::SetIsAllowAutoUpdateSchema { namespace, enable } => {
            set(namespace, "isAllowAutoUpdateSchema", json!(enable))?
        }
        NsPolicy::SetSchemaValidationEnforce { namespace, enable } => {
            set(namespace, "schemaValidationEnforced", json!(enable))?
        }
        NsPolicy::SetBacklogQuota {
            namespace,
            r#type,
            limit_size,
            limit_time,
            policy,
        } => {
            let mut body = json!({"policy": policy});
            if let Some(s) = limit_size {
                body["limitSize"] = json!(s);
            }
            if let Some(t) = limit_time {
                body["limitTime"] = json!(t);
            }
            set(
                namespace,
                &format!("backlogQuota?backlogQuotaType={}", seg(r#type)),
                body,
            )?
        }
        NsPolicy::RemoveBacklogQuota { namespace, r#type } => (
            "DELETE",
            format!(
                "{}/backlogQuota?backlogQuotaType={}",
                base(namespace)?,
                seg(r#type)
            ),
            None,
        ),
        NsPolicy::SetDeduplication { namespace, enable } => {
            set(namespace, "deduplication", json!(enable))?
        }
        NsPolicy::SetCompactionThreshold {
            namespace,
            threshold,
        } => (
            "PUT",
            format!("{}/compactionThreshold", base(namespace)?),
            Some(json!(threshold)),
        ),
        NsPolicy::SetOffloadThreshold { namespace, size } => (
            "PUT",
            format!("{}/offloadThreshold", base(namespace)?),
            Some(json!(size)),
        ),
        NsPolicy::SetOffloadDeletionLag { namespace, lag_ms } => (
            "PUT",
            format!("{}/offloadDeletionLagMs", base(namespace)?),
            Some(json!(lag_ms)),
        ),
        NsPolicy::SetOffloadPolicies {
            namespace,
            policies,
        } => set(namespace, "offloadPolicies", policies.body())?,
        NsPolicy::SetMaxProducersPerTopic { namespace, max } => {
            set(namespace, "maxProducersPerTopic", json!(max))?
        }
        NsPolicy::SetMaxConsumersPerTopic { namespace, max } => {
            set(namespace, "maxConsumersPerTopic", json!(max))?
        }
        NsPolicy::SetMaxConsumersPerSubscription { namespace, max } => {
            set(namespace, "maxConsumersPerSubscription", json!(max))?
        }
        NsPolicy::SetAutoTopicCreation {
            namespace,
            enable,
            r#type,
            num_partitions,
        } => {
            let mut body = json!({"allowAutoTopicCreation": enable, "topicType": r#type});
            if let Some(n) = num_partitions {
                body["defaultNumPartitions"] = json!(n);
            }
            set(namespace, "autoTopicCreation", body)?
        }
        NsPolicy::Get { namespace, policy } => get(format!("{}/{}", base(namespace)?, seg(policy))),
        NsPolicy::Remove { namespace, policy } => (
            "DELETE",
            format!("{}/{}", base(namespace)?, seg(policy)),
            None,
        ),
    };
    Ok(vec![r])
}

fn topics(t: &Topics) -> Result<Vec<Req>, AdminError> {
    let base = |name: &str| topic_path(name).map(|p| format!("/admin/v2/{p}"));
    let r = match t {
        Topics::List { namespace } => get(format!(
            "/admin/v2/persistent/{}",
            namespace_path(namespace)?
        )),
        Topics::ListPartitionedTopics { namespace } => get(format!(
            "/admin/v2/persistent/{}/partitioned",
            namespace_path(namespace)?
        )),
        Topics::Create { topic } => ("PUT", base(topic)?, None),
        Topics::CreatePartitionedTopic { topic, partitions } => (
            "PUT",
            format!("{}/partitions", base(topic)?),
            Some(json!(partitions)),
        ),
        Topics::UpdatePartitionedTopic { topic, partitions } => (
            "POST",
            format!("{}/partitions", base(topic)?),
            Some(json!(partitions)),
        ),
        Topics::GetPartitionedTopicMetadata { topic } => {
            get(format!("{}/partitions", base(topic)?))
        }
        Topics::Delete { topic, force } => {
            ("DELETE", format!("{}?force={force}", base(topic)?), None)
        }
        Topics::DeletePartitionedTopic { topic, force } => (
            "DELETE",
            format!("{}/partitions?force={force}", base(topic)?),
            None,
        ),
        Topics::Stats { topic } => get(format!("{}/stats", base(topic)?)),
        Topics::StatsInternal { topic, metadata } => get(format!(
            "{}/internalStats?metadata={metadata}",
            base(topic)?
        )),
        Topics::PartitionedStats {
            topic,
            per_partition,
        } => get(format!(
            "{}/partitioned-stats?perPartition={per_partition}",
            base(topic)?
        )),
        Topics::Lookup { topic } => get(format!("/lookup/v2/topic/{}", topic_path(topic)?)),
        Topics::Bundle { topic } => get(format!("/lookup/v2/topic/{}/bundle", topic_path(topic)?)),
        Topics::Unload { topic } => ("PUT", format!("{}/unload", base(topic)?), None),
        Topics::Terminate { topic } => ("POST", format!("{}/terminate", base(topic)?), None),
        Topics::Compact { topic } => ("PUT", format!("{}/compaction", base(topic)?), None),
        Topics::CompactionStatus { topic } => get(format!("{}/compaction", base(topic)?)),
        Topics::Offload {
            topic,
            message_id: m,
        } => (
            "PUT",
            format!("{}/offload", base(topic)?),
            m.as_deref().map(message_id).transpose()?,
        ),
        Topics::OffloadStatus { topic } => get(format!("{}/offload", base(topic)?)),
        Topics::GetOffloadPolicies { topic } => get(format!("{}/offloadPolicies", base(topic)?)),
        Topics::SetOffloadPolicies { topic, policies } => (
            "POST",
            format!("{}/offloadPolicies", base(topic)?),
            Some(policies.body()),
        ),
        Topics::RemoveOffloadPolicies { topic } => {
            ("DELETE", format!("{}/offloadPolicies", base(topic)?), None)
        }
        Topics::LastMessageId { topic } => get(format!("{}/lastMessageId", base(topic)?)),
        Topics::Permissions { topic } => get(format!("{}/permissions", base(topic)?)),
        Topics::GrantPermission {
            topic,
            role,
            actions,
        } => (
            "POST",
            format!("{}/permissions/{}", base(topic)?, seg(role)),
            Some(json!(actions)),
        ),
        Topics::RevokePermission { topic, role } => (
            "DELETE",
            format!("{}/permissions/{}", base(topic)?, seg(role)),
            None,
        ),
    };
    Ok(vec![r])
}

fn subscriptions(s: &Subscriptions) -> Result<Vec<Req>, AdminError> {
    let sub = |topic: &str, sub: &str| {
        topic_path(topic).map(|p| format!("/admin/v2/{p}/subscription/{}", seg(sub)))
    };
    let r = match s {
        Subscriptions::List { topic } => {
            get(format!("/admin/v2/{}/subscriptions", topic_path(topic)?))
        }
        Subscriptions::Create {
            topic,
            subscription,
            message_id: id,
        } => {
            let body = match id.as_deref() {
                None | Some("latest") => None,
                Some("earliest") => Some(json!({"ledgerId": -1, "entryId": -1})),
                Some(id) => Some(message_id(id)?),
            };
            ("PUT", sub(topic, subscription)?, body)
        }
        Subscriptions::Delete {
            topic,
            subscription,
            force,
        } => (
            "DELETE",
            format!("{}?force={force}", sub(topic, subscription)?),
            None,
        ),
        Subscriptions::Skip {
            topic,
            subscription,
            count,
        } => (
            "POST",
            format!("{}/skip/{count}", sub(topic, subscription)?),
            None,
        ),
        Subscriptions::ClearBacklog {
            topic,
            subscription,
        } => (
            "POST",
            format!("{}/skip_all", sub(topic, subscription)?),
            None,
        ),
        Subscriptions::ResetCursor {
            topic,
            subscription,
            time,
            message_id: id,
        } => match (time, id) {
            (Some(t), None) => {
                let back = magnetar_cli::parse_duration(t).map_err(AdminError::Usage)?;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                let ts = now.saturating_sub(back).as_millis();
                (
                    "POST",
                    format!("{}/resetcursor/{ts}", sub(topic, subscription)?),
                    None,
                )
            }
            (None, Some(id)) => (
                "POST",
                format!("{}/resetcursor", sub(topic, subscription)?),
                Some(message_id(id)?),
            ),
            _ => return Err(AdminError::Usage("give --time or --message-id".into())),
        },
        Subscriptions::ExpireMessages {
            topic,
            subscription,
            expire_time_seconds,
            all,
        } => match (all, subscription) {
            (true, _) => (
                "POST",
                format!(
                    "/admin/v2/{}/all_subscription/expireMessages/{expire_time_seconds}",
                    topic_path(topic)?
                ),
                None,
            ),
            (false, Some(s)) => (
                "POST",
                format!("{}/expireMessages/{expire_time_seconds}", sub(topic, s)?),
                None,
            ),
            (false, None) => return Err(AdminError::Usage("give --subscription or --all".into())),
        },
        Subscriptions::Peek {
            topic,
            subscription,
            count,
        } => get(format!("{}/position/{count}", sub(topic, subscription)?)),
    };
    Ok(vec![r])
}

fn run(cli: &Cli) -> Result<String, AdminError> {
    let token = match (&cli.token, &cli.token_file) {
        (Some(t), _) => Some(t.trim().to_string()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| AdminError::Usage(format!("cannot read {}: {e}", f.display())))?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    };
    let client = AdminClient::new(&Connection {
        url: cli.admin_url.clone(),
        token,
        trust_cert: cli.tls_trust_cert.clone(),
        insecure: cli.tls_allow_insecure,
    })?;
    let json_out = cli.output == "json";
    let mut out = Vec::new();
    for (method, path, body) in plan(&cli.cmd)? {
        if matches!(cli.cmd, Group::Subscriptions(Subscriptions::Peek { .. })) {
            let (_, bytes) = client.raw(method, &path, body.as_ref())?;
            out.push(String::from_utf8_lossy(&bytes).into_owned());
            continue;
        }
        let v = client.call(method, &path, body.as_ref())?;
        out.push(render(&v, json_out));
    }
    Ok(out.join("\n"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(e @ AdminError::Status { .. }) => {
            eprintln!("magnetar-admin: {e}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("magnetar-admin: {e}");
            ExitCode::from(2)
        }
    }
}
