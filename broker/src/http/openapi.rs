//! The OpenAPI 3 document of the admin API, served at `/admin/v2/openapi.json`. Built from
//! one table of operations (method, path, summary, body) so it stays next to the routes it
//! describes; a test checks that every documented path is routed.

use serde_json::{Map, Value, json};

/// (method, path, summary, request body schema, query parameters)
type Op = (
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    &'static [&'static str],
);

const NS: &str = "/admin/v2/namespaces/{tenant}/{namespace}";

/// Every operation, with `{ns}` standing for the namespace prefix and `{t}` for the
/// persistent-or-not topic prefix.
const OPS: &[Op] = &[
    ("get", "/admin/v2/clusters", "List clusters", None, &[]),
    (
        "get",
        "/admin/v2/clusters/{cluster}",
        "Get a cluster",
        None,
        &[],
    ),
    (
        "put",
        "/admin/v2/clusters/{cluster}",
        "Create a cluster",
        Some("ClusterData"),
        &[],
    ),
    (
        "post",
        "/admin/v2/clusters/{cluster}",
        "Update a cluster",
        Some("ClusterData"),
        &[],
    ),
    (
        "delete",
        "/admin/v2/clusters/{cluster}",
        "Delete a cluster",
        None,
        &[],
    ),
    ("get", "/admin/v2/tenants", "List tenants", None, &[]),
    (
        "get",
        "/admin/v2/tenants/{tenant}",
        "Get a tenant",
        None,
        &[],
    ),
    (
        "put",
        "/admin/v2/tenants/{tenant}",
        "Create a tenant",
        Some("TenantInfo"),
        &[],
    ),
    (
        "post",
        "/admin/v2/tenants/{tenant}",
        "Update a tenant",
        Some("TenantInfo"),
        &[],
    ),
    (
        "delete",
        "/admin/v2/tenants/{tenant}",
        "Delete an empty tenant",
        None,
        &[],
    ),
    ("get", "/admin/v2/brokers", "List active brokers", None, &[]),
    (
        "get",
        "/admin/v2/brokers/health",
        "Broker health",
        None,
        &[],
    ),
    (
        "get",
        "/admin/v2/brokers/leaderBroker",
        "The leader broker",
        None,
        &[],
    ),
    (
        "get",
        "/admin/v2/brokers/{cluster}",
        "Active brokers of a cluster",
        None,
        &[],
    ),
    (
        "get",
        "/admin/v2/brokers/{cluster}/{broker}/ownedNamespaces",
        "Bundles a broker owns",
        None,
        &[],
    ),
    (
        "get",
        "/admin/v2/namespaces/{tenant}",
        "List a tenant's namespaces",
        None,
        &[],
    ),
    ("get", "{ns}", "All policies of a namespace", None, &[]),
    ("put", "{ns}", "Create a namespace", Some("Policies"), &[]),
    ("delete", "{ns}", "Delete a namespace", None, &["force"]),
    (
        "get",
        "{ns}/topics",
        "List a namespace's topics",
        None,
        &["mode"],
    ),
    ("get", "{ns}/retention", "Retention", None, &[]),
    (
        "post",
        "{ns}/retention",
        "Set retention",
        Some("RetentionPolicies"),
        &[],
    ),
    ("delete", "{ns}/retention", "Remove retention", None, &[]),
    ("get", "{ns}/messageTTL", "Message TTL", None, &[]),
    (
        "post",
        "{ns}/messageTTL",
        "Set the message TTL (seconds)",
        Some("Integer"),
        &[],
    ),
    (
        "delete",
        "{ns}/messageTTL",
        "Remove the message TTL",
        None,
        &[],
    ),
    ("get", "{ns}/backlogQuotaMap", "Backlog quotas", None, &[]),
    (
        "post",
        "{ns}/backlogQuota",
        "Set a backlog quota",
        Some("BacklogQuota"),
        &["backlogQuotaType"],
    ),
    (
        "delete",
        "{ns}/backlogQuota",
        "Remove a backlog quota",
        None,
        &["backlogQuotaType"],
    ),
    ("get", "{ns}/deduplication", "Deduplication", None, &[]),
    (
        "post",
        "{ns}/deduplication",
        "Set deduplication",
        Some("Boolean"),
        &[],
    ),
    (
        "delete",
        "{ns}/deduplication",
        "Remove the deduplication setting",
        None,
        &[],
    ),
    (
        "post",
        "{ns}/autoTopicCreation",
        "Set auto topic creation",
        Some("AutoTopicCreation"),
        &[],
    ),
    (
        "delete",
        "{ns}/autoTopicCreation",
        "Remove auto topic creation",
        None,
        &[],
    ),
    (
        "get",
        "/admin/v2/bookies/all",
        "List the registered bookies",
        None,
        &[],
    ),
    (
        "get",
        "/admin/v2/bookies/racks-info",
        "The racks map: group, bookie, rack",
        None,
        &[],
    ),
    (
        "get",
        "/admin/v2/bookies/racks-info/{bookie}",
        "A bookie's rack",
        None,
        &[],
    ),
    (
        "post",
        "/admin/v2/bookies/racks-info/{bookie}",
        "Put a bookie in a group and rack",
        Some("BookieInfo"),
        &["group"],
    ),
    (
        "delete",
        "/admin/v2/bookies/racks-info/{bookie}",
        "Take a bookie out of the racks map",
        None,
        &[],
    ),
    (
        "get",
        "{ns}/persistence",
        "Ledger copies of new topics",
        None,
        &[],
    ),
    (
        "post",
        "{ns}/persistence",
        "Set ensemble, write and ack quorum of the namespace's new ledgers",
        Some("PersistencePolicies"),
        &[],
    ),
    (
        "delete",
        "{ns}/persistence",
        "Back to the broker's ledger copies",
        None,
        &[],
    ),
    (
        "get",
        "{ns}/persistence/bookieAffinity",
        "Bookie affinity groups",
        None,
        &[],
    ),
    (
        "post",
        "{ns}/persistence/bookieAffinity",
        "Keep the namespace's ledgers on these bookie groups",
        Some("BookieAffinityGroupData"),
        &[],
    ),
    (
        "delete",
        "{ns}/persistence/bookieAffinity",
        "Remove the bookie affinity",
        None,
        &[],
    ),
    (
        "get",
        "{ns}/compactionThreshold",
        "Compaction threshold",
        None,
        &[],
    ),
    (
        "put",
        "{ns}/compactionThreshold",
        "Set the compaction threshold (bytes)",
        Some("Integer"),
        &[],
    ),
    (
        "delete",
        "{ns}/compactionThreshold",
        "Remove the compaction threshold",
        None,
        &[],
    ),
    (
        "get",
        "{ns}/maxProducersPerTopic",
        "Max producers per topic",
        None,
        &[],
    ),
    (
        "post",
        "{ns}/maxProducersPerTopic",
        "Set max producers per topic",
        Some("Integer"),
        &[],
    ),
    (
        "delete",
        "{ns}/maxProducersPerTopic",
        "Remove max producers per topic",
        None,
        &[],
    ),
    (
        "get",
        "{ns}/maxConsumersPerTopic",
        "Max consumers per topic",
        None,
        &[],
    ),
    (
        "post",
        "{ns}/maxConsumersPerTopic",
        "Set max consumers per topic",
        Some("Integer"),
        &[],
    ),
    (
        "delete",
        "{ns}/maxConsumersPerTopic",
        "Remove max consumers per topic",
        None,
        &[],
    ),
    (
        "get",
        "{ns}/maxConsumersPerSubscription",
        "Max consumers per subscription",
        None,
        &[],
    ),
    (
        "post",
        "{ns}/maxConsumersPerSubscription",
        "Set max consumers per subscription",
        Some("Integer"),
        &[],
    ),
    (
        "delete",
        "{ns}/maxConsumersPerSubscription",
        "Remove max consumers per subscription",
        None,
        &[],
    ),
    (
        "get",
        "{ns}/maxTopicsPerNamespace",
        "Max topics in the namespace",
        None,
        &[],
    ),
    (
        "post",
        "{ns}/maxTopicsPerNamespace",
        "Set max topics in the namespace",
        Some("Integer"),
        &[],
    ),
    (
        "delete",
        "{ns}/maxTopicsPerNamespace",
        "Remove max topics in the namespace",
        None,
        &[],
    ),
    (
        "get",
        "{ns}/offloadThreshold",
        "Offload threshold (bytes)",
        None,
        &[],
    ),
    (
        "put",
        "{ns}/offloadThreshold",
        "Set the offload threshold",
        Some("Integer"),
        &[],
    ),
    (
        "get",
        "{ns}/offloadThresholdInSeconds",
        "Offload threshold (seconds)",
        None,
        &[],
    ),
    (
        "put",
        "{ns}/offloadThresholdInSeconds",
        "Set the offload threshold in seconds",
        Some("Integer"),
        &[],
    ),
    (
        "get",
        "{ns}/offloadDeletionLagMs",
        "Offload deletion lag",
        None,
        &[],
    ),
    (
        "put",
        "{ns}/offloadDeletionLagMs",
        "Set the offload deletion lag",
        Some("Integer"),
        &[],
    ),
    (
        "delete",
        "{ns}/offloadDeletionLagMs",
        "Remove the offload deletion lag",
        None,
        &[],
    ),
    ("get", "{ns}/offloadPolicies", "Offload policies", None, &[]),
    (
        "post",
        "{ns}/offloadPolicies",
        "Set the offload policies",
        Some("OffloadPolicies"),
        &[],
    ),
    (
        "delete",
        "{ns}/offloadPolicies",
        "Remove the offload policies",
        None,
        &[],
    ),
    (
        "delete",
        "{ns}/removeOffloadPolicies",
        "Remove the offload policies",
        None,
        &[],
    ),
    (
        "get",
        "{ns}/autoSubscriptionCreation",
        "Auto subscription creation",
        None,
        &[],
    ),
    (
        "post",
        "{ns}/autoSubscriptionCreation",
        "Set auto subscription creation",
        Some("AutoSubscriptionCreation"),
        &[],
    ),
    (
        "delete",
        "{ns}/autoSubscriptionCreation",
        "Remove auto subscription creation",
        None,
        &[],
    ),
    ("get", "{ns}/replication", "Replication clusters", None, &[]),
    (
        "post",
        "{ns}/replication",
        "Set the replication clusters",
        Some("Roles"),
        &[],
    ),
    ("get", "{ns}/publishRate", "Publish rate", None, &[]),
    (
        "post",
        "{ns}/publishRate",
        "Set the publish rate",
        Some("PublishRate"),
        &[],
    ),
    (
        "delete",
        "{ns}/publishRate",
        "Remove the publish rate",
        None,
        &[],
    ),
    (
        "get",
        "{ns}/dispatchRate",
        "Dispatch rate per topic",
        None,
        &[],
    ),
    (
        "post",
        "{ns}/dispatchRate",
        "Set the dispatch rate per topic",
        Some("DispatchRate"),
        &[],
    ),
    (
        "delete",
        "{ns}/dispatchRate",
        "Remove the dispatch rate",
        None,
        &[],
    ),
    (
        "get",
        "{ns}/subscriptionDispatchRate",
        "Dispatch rate per subscription",
        None,
        &[],
    ),
    (
        "post",
        "{ns}/subscriptionDispatchRate",
        "Set the dispatch rate per subscription",
        Some("DispatchRate"),
        &[],
    ),
    (
        "delete",
        "{ns}/subscriptionDispatchRate",
        "Remove the subscription dispatch rate",
        None,
        &[],
    ),
    (
        "get",
        "{ns}/subscribeRate",
        "Subscribe rate per consumer",
        None,
        &[],
    ),
    (
        "post",
        "{ns}/subscribeRate",
        "Set the subscribe rate",
        Some("SubscribeRate"),
        &[],
    ),
    (
        "delete",
        "{ns}/subscribeRate",
        "Remove the subscribe rate",
        None,
        &[],
    ),
    ("get", "{ns}/permissions", "Namespace grants", None, &[]),
    (
        "post",
        "{ns}/permissions/{role}",
        "Grant a role actions",
        Some("Actions"),
        &[],
    ),
    (
        "delete",
        "{ns}/permissions/{role}",
        "Revoke a role's grant",
        None,
        &[],
    ),
    (
        "get",
        "{ns}/permissions/subscription",
        "Subscription grants",
        None,
        &[],
    ),
    (
        "post",
        "{ns}/permissions/subscription/{subscription}",
        "Allow roles on a subscription",
        Some("Roles"),
        &[],
    ),
    (
        "delete",
        "{ns}/permissions/subscription/{subscription}/{role}",
        "Remove a role from a subscription",
        None,
        &[],
    ),
    ("get", "{ns}/bundles", "Bundles", None, &[]),
    (
        "put",
        "{ns}/unload",
        "Unload the namespace's topics",
        None,
        &[],
    ),
    (
        "put",
        "{ns}/{bundle}/unload",
        "Unload one bundle's topics",
        None,
        &[],
    ),
    ("put", "{ns}/{bundle}/split", "Split a bundle", None, &[]),
    (
        "get",
        "/admin/v2/persistent/{tenant}/{namespace}",
        "List topics",
        None,
        &[],
    ),
    (
        "get",
        "/admin/v2/non-persistent/{tenant}/{namespace}",
        "List the loaded non-persistent topics",
        None,
        &[],
    ),
    (
        "get",
        "/admin/v2/{domain}/{tenant}/{namespace}/partitioned",
        "List partitioned topics",
        None,
        &[],
    ),
    ("put", "{t}", "Create a non-partitioned topic", None, &[]),
    ("delete", "{t}", "Delete a topic", None, &["force"]),
    (
        "get",
        "/admin/v2/persistent/{tenant}/{namespace}/{topic}/partitions",
        "Partitioned metadata",
        None,
        &[],
    ),
    (
        "put",
        "/admin/v2/persistent/{tenant}/{namespace}/{topic}/partitions",
        "Create a partitioned topic",
        Some("Integer"),
        &[],
    ),
    (
        "post",
        "/admin/v2/persistent/{tenant}/{namespace}/{topic}/partitions",
        "Add partitions",
        Some("Integer"),
        &[],
    ),
    (
        "delete",
        "/admin/v2/persistent/{tenant}/{namespace}/{topic}/partitions",
        "Delete a partitioned topic",
        None,
        &["force"],
    ),
    ("get", "{t}/stats", "Topic stats", None, &[]),
    (
        "get",
        "/admin/v2/persistent/{tenant}/{namespace}/{topic}/internalStats",
        "Storage view of a topic",
        None,
        &["metadata"],
    ),
    (
        "get",
        "{t}/partitioned-stats",
        "Stats over a partitioned topic",
        None,
        &["perPartition"],
    ),
    ("put", "{t}/unload", "Unload a topic", None, &[]),
    (
        "get",
        "{t}/lastMessageId",
        "Id of the last message",
        None,
        &[],
    ),
    (
        "post",
        "/admin/v2/persistent/{tenant}/{namespace}/{topic}/terminate",
        "Terminate a topic",
        None,
        &[],
    ),
    (
        "get",
        "/admin/v2/persistent/{tenant}/{namespace}/{topic}/compaction",
        "Compaction status",
        None,
        &[],
    ),
    (
        "put",
        "/admin/v2/persistent/{tenant}/{namespace}/{topic}/compaction",
        "Start compaction",
        None,
        &[],
    ),
    (
        "get",
        "/admin/v2/persistent/{tenant}/{namespace}/{topic}/offload",
        "Offload status",
        None,
        &[],
    ),
    (
        "put",
        "/admin/v2/persistent/{tenant}/{namespace}/{topic}/offload",
        "Offload closed ledgers before a message",
        Some("MessageId"),
        &[],
    ),
    (
        "get",
        "/admin/v2/persistent/{tenant}/{namespace}/{topic}/offloadPolicies",
        "A topic's offload policies",
        None,
        &[],
    ),
    (
        "post",
        "/admin/v2/persistent/{tenant}/{namespace}/{topic}/offloadPolicies",
        "Set a topic's offload policies",
        Some("OffloadPolicies"),
        &[],
    ),
    (
        "delete",
        "/admin/v2/persistent/{tenant}/{namespace}/{topic}/offloadPolicies",
        "Remove a topic's offload policies",
        None,
        &[],
    ),
    ("get", "{t}/subscriptions", "List subscriptions", None, &[]),
    (
        "put",
        "{t}/subscription/{subscription}",
        "Create a subscription",
        Some("MessageId"),
        &[],
    ),
    (
        "delete",
        "{t}/subscription/{subscription}",
        "Delete a subscription",
        None,
        &["force"],
    ),
    (
        "post",
        "{t}/subscription/{subscription}/skip/{count}",
        "Skip messages",
        None,
        &[],
    ),
    (
        "post",
        "{t}/subscription/{subscription}/skip_all",
        "Clear the backlog",
        None,
        &[],
    ),
    (
        "post",
        "{t}/subscription/{subscription}/resetcursor/{timestamp}",
        "Reset to a publish time (ms)",
        None,
        &[],
    ),
    (
        "post",
        "{t}/subscription/{subscription}/resetcursor",
        "Reset to a message id",
        Some("ResetCursorData"),
        &[],
    ),
    (
        "post",
        "{t}/subscription/{subscription}/expireMessages/{seconds}",
        "Expire old messages",
        None,
        &[],
    ),
    (
        "post",
        "{t}/all_subscription/expireMessages/{seconds}",
        "Expire old messages on every subscription",
        None,
        &[],
    ),
    (
        "get",
        "{t}/subscription/{subscription}/position/{position}",
        "Peek a message",
        None,
        &[],
    ),
    ("get", "{t}/permissions", "Topic grants", None, &[]),
    (
        "post",
        "{t}/permissions/{role}",
        "Grant a role actions on a topic",
        Some("Actions"),
        &[],
    ),
    (
        "delete",
        "{t}/permissions/{role}",
        "Revoke a role's topic grant",
        None,
        &[],
    ),
    (
        "get",
        "/admin/v2/persistent/{tenant}/{namespace}/{topic}/messageTTL",
        "Topic message TTL",
        None,
        &[],
    ),
    (
        "post",
        "/admin/v2/persistent/{tenant}/{namespace}/{topic}/messageTTL",
        "Set the topic message TTL",
        None,
        &["messageTTL"],
    ),
    (
        "delete",
        "/admin/v2/persistent/{tenant}/{namespace}/{topic}/messageTTL",
        "Remove the topic message TTL",
        None,
        &[],
    ),
    (
        "get",
        "/admin/v2/persistent/{tenant}/{namespace}/{topic}/retention",
        "Topic retention",
        None,
        &[],
    ),
    (
        "post",
        "/admin/v2/persistent/{tenant}/{namespace}/{topic}/retention",
        "Set topic retention",
        Some("RetentionPolicies"),
        &[],
    ),
    (
        "delete",
        "/admin/v2/persistent/{tenant}/{namespace}/{topic}/retention",
        "Remove topic retention",
        None,
        &[],
    ),
    (
        "get",
        "/admin/v2/persistent/{tenant}/{namespace}/{topic}/deduplicationEnabled",
        "Topic deduplication",
        None,
        &[],
    ),
    (
        "post",
        "/admin/v2/persistent/{tenant}/{namespace}/{topic}/deduplicationEnabled",
        "Set topic deduplication",
        Some("Boolean"),
        &[],
    ),
    (
        "delete",
        "/admin/v2/persistent/{tenant}/{namespace}/{topic}/deduplicationEnabled",
        "Remove topic deduplication",
        None,
        &[],
    ),
    (
        "get",
        "/admin/v2/persistent/{tenant}/{namespace}/{topic}/backlogQuotaMap",
        "Topic backlog quotas",
        None,
        &[],
    ),
    (
        "post",
        "/admin/v2/persistent/{tenant}/{namespace}/{topic}/backlogQuota",
        "Set a topic backlog quota",
        Some("BacklogQuota"),
        &["backlogQuotaType"],
    ),
    (
        "delete",
        "/admin/v2/persistent/{tenant}/{namespace}/{topic}/backlogQuota",
        "Remove a topic backlog quota",
        None,
        &["backlogQuotaType"],
    ),
    (
        "get",
        "/admin/v2/persistent/{tenant}/{namespace}/{topic}/publishRate",
        "Topic publish rate",
        None,
        &[],
    ),
    (
        "post",
        "/admin/v2/persistent/{tenant}/{namespace}/{topic}/publishRate",
        "Set the topic publish rate",
        Some("PublishRate"),
        &[],
    ),
    (
        "delete",
        "/admin/v2/persistent/{tenant}/{namespace}/{topic}/publishRate",
        "Remove the topic publish rate",
        None,
        &[],
    ),
    (
        "get",
        "/admin/v2/persistent/{tenant}/{namespace}/{topic}/dispatchRate",
        "Topic dispatch rate",
        None,
        &[],
    ),
    (
        "post",
        "/admin/v2/persistent/{tenant}/{namespace}/{topic}/dispatchRate",
        "Set the topic dispatch rate",
        Some("DispatchRate"),
        &[],
    ),
    (
        "delete",
        "/admin/v2/persistent/{tenant}/{namespace}/{topic}/dispatchRate",
        "Remove the topic dispatch rate",
        None,
        &[],
    ),
    (
        "get",
        "/admin/v2/persistent/{tenant}/{namespace}/{topic}/subscriptionDispatchRate",
        "Topic subscription dispatch rate",
        None,
        &[],
    ),
    (
        "post",
        "/admin/v2/persistent/{tenant}/{namespace}/{topic}/subscriptionDispatchRate",
        "Set the topic subscription dispatch rate",
        Some("DispatchRate"),
        &[],
    ),
    (
        "delete",
        "/admin/v2/persistent/{tenant}/{namespace}/{topic}/subscriptionDispatchRate",
        "Remove the topic subscription dispatch rate",
        None,
        &[],
    ),
    (
        "get",
        "/lookup/v2/topic/{domain}/{tenant}/{namespace}/{topic}",
        "Look up a topic's broker (in the addresses of the named listener)",
        None,
        &["listenerName"],
    ),
    ("get", "{s}/schema", "A topic's latest schema", None, &[]),
    (
        "post",
        "{s}/schema",
        "Upload a schema (a new version if it is new and compatible)",
        Some("PostSchemaPayload"),
        &[],
    ),
    (
        "delete",
        "{s}/schema",
        "Delete a topic's schemas",
        None,
        &[],
    ),
    (
        "get",
        "{s}/schema/{version}",
        "One version of a topic's schema",
        None,
        &[],
    ),
    (
        "get",
        "{s}/schemas",
        "Every version of a topic's schema",
        None,
        &[],
    ),
    (
        "get",
        "{s}/versions",
        "Every version of a topic's schema",
        None,
        &[],
    ),
    (
        "post",
        "{s}/compatibility",
        "Whether a schema could be uploaded (changes nothing)",
        Some("PostSchemaPayload"),
        &[],
    ),
    (
        "post",
        "{s}/version",
        "The version number of one of a topic's schemas",
        Some("PostSchemaPayload"),
        &[],
    ),
    (
        "get",
        "{ns}/schemaCompatibilityStrategy",
        "Schema compatibility strategy",
        None,
        &[],
    ),
    (
        "put",
        "{ns}/schemaCompatibilityStrategy",
        "Set the schema compatibility strategy",
        Some("SchemaCompatibilityStrategy"),
        &[],
    ),
    (
        "delete",
        "{ns}/schemaCompatibilityStrategy",
        "Remove the schema compatibility strategy (FULL applies)",
        None,
        &[],
    ),
    (
        "get",
        "{ns}/isAllowAutoUpdateSchema",
        "Whether clients may add schemas",
        None,
        &[],
    ),
    (
        "post",
        "{ns}/isAllowAutoUpdateSchema",
        "Let clients add schemas, or not",
        Some("Boolean"),
        &[],
    ),
    (
        "delete",
        "{ns}/isAllowAutoUpdateSchema",
        "Remove the auto-update setting (true applies)",
        None,
        &[],
    ),
    (
        "get",
        "{ns}/schemaValidationEnforced",
        "Whether producers without a schema are refused on topics with one",
        None,
        &[],
    ),
    (
        "post",
        "{ns}/schemaValidationEnforced",
        "Enforce schemas on producers, or not",
        Some("Boolean"),
        &[],
    ),
    (
        "delete",
        "{ns}/schemaValidationEnforced",
        "Remove schema enforcement (false applies)",
        None,
        &[],
    ),
    (
        "get",
        "/lookup/v2/topic/{domain}/{tenant}/{namespace}/{topic}/bundle",
        "A topic's bundle",
        None,
        &[],
    ),
];

fn expand(path: &str) -> String {
    path.replace("{ns}", NS)
        .replace("{s}", "/admin/v2/schemas/{tenant}/{namespace}/{topic}")
        .replace("{t}", "/admin/v2/{domain}/{tenant}/{namespace}/{topic}")
}

fn param(name: &str) -> Value {
    let schema = match name {
        "domain" => json!({"type": "string", "enum": ["persistent", "non-persistent"]}),
        "count" | "timestamp" | "seconds" | "position" | "version" => {
            json!({"type": "integer", "minimum": 0})
        }
        _ => json!({"type": "string"}),
    };
    json!({"name": name, "in": "path", "required": true, "schema": schema})
}

fn query(name: &str) -> Value {
    let schema = match name {
        "force" | "perPartition" | "metadata" => json!({"type": "boolean"}),
        "messageTTL" => json!({"type": "integer", "minimum": 0}),
        "mode" => json!({"type": "string", "enum": ["PERSISTENT", "NON_PERSISTENT", "ALL"]}),
        "backlogQuotaType" => {
            json!({"type": "string", "enum": ["destination_storage", "message_age"]})
        }
        _ => json!({"type": "string"}),
    };
    json!({"name": name, "in": "query", "required": false, "schema": schema})
}

fn schemas() -> Value {
    let int = json!({"type": "integer"});
    let strings = json!({"type": "array", "items": {"type": "string"}});
    json!({
        "Error": {"type": "object", "required": ["reason"],
                  "properties": {"reason": {"type": "string"}}},
        "Integer": int,
        "Boolean": {"type": "boolean"},
        "Roles": strings,
        "Actions": {"type": "array", "items": {"type": "string",
                    "enum": ["produce", "consume", "functions", "sources", "sinks", "packages"]}},
        "ClusterData": {"type": "object", "properties": {
            "serviceUrl": {"type": "string"}, "serviceUrlTls": {"type": "string"},
            "brokerServiceUrl": {"type": "string"}, "brokerServiceUrlTls": {"type": "string"},
            "peerClusterNames": strings}},
        "TenantInfo": {"type": "object", "properties": {
            "adminRoles": strings, "allowedClusters": strings}},
        "Policies": {"type": "object"},
        "RetentionPolicies": {"type": "object", "required": ["retentionTimeInMinutes", "retentionSizeInMB"],
            "properties": {"retentionTimeInMinutes": int, "retentionSizeInMB": int}},
        "BacklogQuota": {"type": "object", "required": ["policy"], "properties": {
            "limitSize": int, "limitTime": int,
            "policy": {"type": "string", "enum": ["producer_request_hold", "producer_exception", "consumer_backlog_eviction"]}}},
        "AutoTopicCreation": {"type": "object", "required": ["allowAutoTopicCreation"], "properties": {
            "allowAutoTopicCreation": {"type": "boolean"},
            "topicType": {"type": "string", "enum": ["non-partitioned", "partitioned"]},
            "defaultNumPartitions": int}},
        "AutoSubscriptionCreation": {"type": "object", "required": ["allowAutoSubscriptionCreation"],
            "properties": {"allowAutoSubscriptionCreation": {"type": "boolean"}}},
        "SubscribeRate": {"type": "object", "properties": {
            "subscribeThrottlingRatePerConsumer": int, "ratePeriodInSecond": int}},
        "PublishRate": {"type": "object", "properties": {
            "publishThrottlingRateInMsg": int, "publishThrottlingRateInByte": int}},
        "DispatchRate": {"type": "object", "properties": {
            "dispatchThrottlingRateInMsg": int, "dispatchThrottlingRateInByte": int,
            "ratePeriodInSecond": int, "relativeToPublishRate": {"type": "boolean"}}},
        "OffloadPolicies": {"type": "object", "properties": {
            "managedLedgerOffloadDriver": {"type": "string",
                "enum": ["filesystem", "aws-s3", "S3", "google-cloud-storage", "azureblob"]},
            "managedLedgerOffloadThresholdInBytes": int,
            "managedLedgerOffloadThresholdInSeconds": int,
            "managedLedgerOffloadDeletionLagInMillis": int,
            "s3ManagedLedgerOffloadBucket": {"type": "string"},
            "s3ManagedLedgerOffloadRegion": {"type": "string"},
            "s3ManagedLedgerOffloadServiceEndpoint": {"type": "string"},
            "gcsManagedLedgerOffloadBucket": {"type": "string"},
            "gcsManagedLedgerOffloadRegion": {"type": "string"}}},
        "MessageId": {"type": "object", "required": ["ledgerId", "entryId"], "properties": {
            "ledgerId": int, "entryId": int, "partitionIndex": int}},
        "BookieInfo": {"type": "object", "properties": {
            "rack": {"type": "string"}, "hostname": {"type": "string"}}},
        "PersistencePolicies": {"type": "object",
            "required": ["bookkeeperEnsemble", "bookkeeperWriteQuorum", "bookkeeperAckQuorum"],
            "properties": {"bookkeeperEnsemble": {"type": "integer", "minimum": 1},
                "bookkeeperWriteQuorum": {"type": "integer", "minimum": 1},
                "bookkeeperAckQuorum": {"type": "integer", "minimum": 1},
                "managedLedgerMaxMarkDeleteRate": {"type": "number"}}},
        "BookieAffinityGroupData": {"type": "object", "required": ["bookieAffinityGroupPrimary"],
            "properties": {"bookieAffinityGroupPrimary": {"type": "string"},
                "bookieAffinityGroupSecondary": {"type": "string"}}},
        "PostSchemaPayload": {"type": "object", "required": ["type"], "properties": {
            "type": {"type": "string", "enum": ["NONE", "STRING", "JSON", "PROTOBUF", "AVRO",
                "BOOLEAN", "INT8", "INT16", "INT32", "INT64", "FLOAT", "DOUBLE", "DATE", "TIME",
                "TIMESTAMP", "KEY_VALUE", "INSTANT", "LOCAL_DATE", "LOCAL_TIME",
                "LOCAL_DATE_TIME", "PROTOBUF_NATIVE"]},
            "schema": {"type": "string"},
            "properties": {"type": "object", "additionalProperties": {"type": "string"}}}},
        "SchemaCompatibilityStrategy": {"type": "string", "enum": ["UNDEFINED",
            "ALWAYS_INCOMPATIBLE", "ALWAYS_COMPATIBLE", "BACKWARD", "FORWARD", "FULL",
            "BACKWARD_TRANSITIVE", "FORWARD_TRANSITIVE", "FULL_TRANSITIVE"]},
        "ResetCursorData": {"type": "object", "required": ["ledgerId", "entryId"], "properties": {
            "ledgerId": int, "entryId": int, "partitionIndex": int,
            "isExcluded": {"type": "boolean"}, "batchIndex": int}},
    })
}

/// The whole document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for (method, path, summary, body, queries) in OPS {
        let path = expand(path);
        let mut params: Vec<Value> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(param)
            .collect();
        params.extend(queries.iter().map(|q| query(q)));
        let error = json!({"description": "Refused; the reason says why",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
        let mut op = json!({
            "summary": summary,
            "operationId": format!("{method}{}", path.replace(['/', '{', '}', '-', '_'], "_")),
            "parameters": params,
            "responses": {
                "200": {"description": "The answer", "content": {"application/json": {}}},
                "204": {"description": "Done"},
                "400": error, "401": error, "403": error, "404": error,
                "405": error, "409": error, "412": error, "501": error,
            },
        });
        if let Some(schema) = body {
            op["requestBody"] = json!({"required": true, "content": {"application/json": {
                "schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
        }
        let entry = paths
            .entry(path)
            .or_insert_with(|| Value::Object(Map::new()));
        entry[*method] = op;
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Magnetar admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Pulsar's admin REST API v2 as Magnetar serves it. Errors are {\"reason\": ...} with Pulsar's status codes.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
        "security": [{"token": []}, {}],
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn document_is_complete() {
        let d = document();
        let paths = d["paths"].as_object().unwrap();
        assert!(paths.len() > 60, "{}", paths.len());
        for (path, ops) in paths {
            for (method, op) in ops.as_object().unwrap() {
                let params: Vec<&str> = op["parameters"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|p| p["in"] == "path")
                    .map(|p| p["name"].as_str().unwrap())
                    .collect();
                let in_path = path.matches('{').count();
                assert_eq!(params.len(), in_path, "{method} {path}");
                if let Some(r) =
                    op["requestBody"]["content"]["application/json"]["schema"]["$ref"].as_str()
                {
                    let name = r.rsplit('/').next().unwrap();
                    assert!(d["components"]["schemas"][name].is_object(), "{name}");
                }
            }
        }
    }
}
