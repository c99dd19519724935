//! The broker's HTTP side: health, Prometheus metrics, topic stats and internal stats at the
//! Pulsar admin v2 paths, topic listing, partitioned-topic metadata and lookup.

// Handlers return their error response directly; boxing it would only add noise.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use common::{
    Force, NsPath, Stop, Svc, TopicPath, answered, bundles_of, client_err, err, from_object,
    meta_err, namespace_record, object_at, object_body, path_topic, topic_name,
    topic_policy_delete, topic_policy_get, update_policies, update_topic_policies,
};
use magnetar_meta::{Expected, MetaError, MetadataStoreExt};
use namespaces::check_rate;
use serde_json::{Value, json};
use stats::topic_internal_stats;

use crate::cluster::bundles::{Bundles, topic_hash};
use crate::cluster::keys;
use crate::names::{TopicName, valid_segment};
use crate::service::{BrokerService, PartitionedMetadata};

mod bookies;
mod common;
mod gate;
mod namespaces;
mod offload;
pub mod openapi;
mod schemas;
mod stats;
mod tenants;
mod topics;

pub fn router(svc: Arc<BrokerService>) -> Router {
    let ns = |suffix: &str| format!("/admin/v2/namespaces/{{tenant}}/{{ns}}/{suffix}");
    Router::new()
        .route("/admin/v2/brokers/health", get(health))
        .route("/metrics", get(metrics))
        .route(
            "/admin/v2/openapi.json",
            get(|| async { axum::Json(openapi::document()) }),
        )
        .route("/admin/v2/clusters", get(clusters))
        .route("/admin/v2/tenants", get(tenants))
        .route("/admin/v2/persistent/{tenant}/{ns}", get(list_topics))
        .route(
            "/admin/v2/non-persistent/{tenant}/{ns}",
            get(list_non_persistent_topics),
        )
        .route(
            "/admin/v2/persistent/{tenant}/{ns}/{topic}/partitions",
            get(get_partitions)
                .put(create_partitions)
                .post(grow_partitions)
                .delete(delete_partitions),
        )
        .route(
            "/admin/v2/persistent/{tenant}/{ns}/{topic}/internalStats",
            get(internal_stats),
        )
        .route(
            "/admin/v2/persistent/{tenant}/{ns}/{topic}/compaction",
            get(compaction_status).put(start_compaction),
        )
        .route(
            &ns("compactionThreshold"),
            ns_field("compaction_threshold", SetBy::Put, check_threshold, true),
        )
        .route(
            "/admin/v2/persistent/{tenant}/{ns}/{topic}/messageTTL",
            get(|s, p| topic_policy_get(s, p, "message_ttl_in_seconds"))
                .post(set_topic_ttl)
                .delete(|s, p| topic_policy_delete(s, p, "message_ttl_in_seconds")),
        )
        .route(
            "/admin/v2/persistent/{tenant}/{ns}/{topic}/retention",
            get(|s, p| topic_policy_get(s, p, "retention_policies"))
                .post(set_topic_retention)
                .delete(|s, p| topic_policy_delete(s, p, "retention_policies")),
        )
        .route(
            "/admin/v2/persistent/{tenant}/{ns}/{topic}/deduplicationEnabled",
            get(|s, p| topic_policy_get(s, p, "deduplicationEnabled"))
                .post(set_topic_dedup)
                .delete(|s, p| topic_policy_delete(s, p, "deduplicationEnabled")),
        )
        .route(
            "/admin/v2/persistent/{tenant}/{ns}/{topic}/publishRate",
            topic_rate("publishRate"),
        )
        .route(
            "/admin/v2/persistent/{tenant}/{ns}/{topic}/dispatchRate",
            topic_rate("dispatchRate"),
        )
        .route(
            "/admin/v2/persistent/{tenant}/{ns}/{topic}/subscriptionDispatchRate",
            topic_rate("subscriptionDispatchRate"),
        )
        .route(
            "/admin/v2/persistent/{tenant}/{ns}/{topic}/backlogQuotaMap",
            get(|s, p| topic_policy_get(s, p, "backlog_quota_map")),
        )
        .route(
            "/admin/v2/persistent/{tenant}/{ns}/{topic}/backlogQuota",
            axum::routing::post(set_topic_backlog_quota).delete(remove_topic_backlog_quota),
        )
        .route(
            "/admin/v2/persistent/{tenant}/{ns}/{topic}/terminate",
            axum::routing::post(terminate),
        )
        .route("/admin/v2/namespaces/{tenant}", get(list_namespaces))
        .route(
            "/admin/v2/namespaces/{tenant}/{ns}",
            get(get_namespace)
                .put(create_namespace)
                .delete(namespaces::delete_namespace),
        )
        .route(
            &ns("retention"),
            ns_field("retention_policies", SetBy::Post, check_retention, true),
        )
        .route(
            &ns("persistence"),
            get(|s, p| policy_get(s, p, "persistence"))
                .post(set_persistence)
                .delete(|s, p| policy_delete(s, p, "persistence")),
        )
        .route(
            &ns("messageTTL"),
            ns_field("message_ttl_in_seconds", SetBy::Post, check_ttl, true),
        )
        .route(
            "/admin/v2/namespaces/{tenant}/{ns}/autoTopicCreation",
            axum::routing::post(|s, p, b| {
                policy_set(s, p, "autoTopicCreationOverride", b, check_auto_creation)
            })
            .delete(|s, p| policy_delete(s, p, "autoTopicCreationOverride")),
        )
        .route(
            "/admin/v2/namespaces/{tenant}/{ns}/backlogQuotaMap",
            get(|s, p| policy_get(s, p, "backlog_quota_map")),
        )
        .route(
            "/admin/v2/namespaces/{tenant}/{ns}/backlogQuota",
            axum::routing::post(set_backlog_quota).delete(remove_backlog_quota),
        )
        .route(
            "/admin/v2/namespaces/{tenant}/{ns}/deduplication",
            get(get_deduplication)
                .post(set_deduplication)
                .delete(remove_deduplication),
        )
        .route(
            "/lookup/v2/topic/{domain}/{tenant}/{ns}/{topic}",
            get(lookup),
        )
        .route(
            "/lookup/v2/topic/{domain}/{tenant}/{ns}/{topic}/bundle",
            get(lookup_bundle),
        )
        .merge(topics::routes())
        .merge(namespaces::routes())
        .merge(tenants::routes())
        .merge(bookies::routes())
        .merge(schemas::routes())
        .merge(offload::routes())
        .route(
            &ns("persistence/bookieAffinity"),
            get(get_affinity)
                .post(|s, p, b| policy_set(s, p, "bookieAffinityGroup", b, check_affinity))
                .delete(|s, p| policy_delete(s, p, "bookieAffinityGroup")),
        )
        .route(
            &ns("maxProducersPerTopic"),
            ns_field("max_producers_per_topic", SetBy::Post, check_limit, true),
        )
        .route(
            &ns("maxConsumersPerTopic"),
            ns_field("max_consumers_per_topic", SetBy::Post, check_limit, true),
        )
        .route(
            &ns("maxConsumersPerSubscription"),
            ns_field(
                "max_consumers_per_subscription",
                SetBy::Post,
                check_limit,
                true,
            ),
        )
        .route(
            &ns("maxTopicsPerNamespace"),
            ns_field("max_topics_per_namespace", SetBy::Post, check_limit, true),
        )
        .route(
            &ns("autoSubscriptionCreation"),
            ns_field(
                "autoSubscriptionCreationOverride",
                SetBy::Post,
                check_auto_sub,
                true,
            ),
        )
        .route(
            &ns("schemaCompatibilityStrategy"),
            ns_field(
                "schema_compatibility_strategy",
                SetBy::Put,
                check_strategy,
                true,
            ),
        )
        .route(
            &ns("isAllowAutoUpdateSchema"),
            ns_field("is_allow_auto_update_schema", SetBy::Post, check_bool, true),
        )
        .route(
            &ns("schemaValidationEnforced"),
            ns_field("schema_validation_enforced", SetBy::Post, check_bool, true),
        )
        .route(
            "/admin/v2/namespaces/{tenant}/{ns}/replication",
            get(|s, p| policy_get(s, p, "replication_clusters")).post(set_replication),
        )
        .fallback(|| async { err(StatusCode::NOT_FOUND, "No such admin path") })
        .method_not_allowed_fallback(|| async {
            err(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method not allowed on this path",
            )
        })
        .layer(axum::middleware::from_fn(common::redirect_to_owner))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&svc),
            gate::gate,
        ))
        .with_state(svc)
}

async fn health(State(svc): Svc) -> Response {
    if svc.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ok").into_response()
    } else {
        err(StatusCode::SERVICE_UNAVAILABLE, "broker is not ready")
    }
}

async fn clusters(State(svc): Svc) -> Response {
    axum::Json(json!([svc.cfg.cluster])).into_response()
}

async fn tenants(State(svc): Svc) -> Response {
    match svc.meta.children(keys::TENANTS).await {
        Ok(t) => axum::Json(t).into_response(),
        Err(e) => meta_err(e),
    }
}

async fn list_topics(State(svc): Svc, Path((tenant, ns)): Path<(String, String)>) -> Response {
    if !valid_segment(&tenant) || !valid_segment(&ns) {
        return err(StatusCode::PRECONDITION_FAILED, "invalid namespace name");
    }
    if let Err(r) = common::namespace_exists(&svc, &tenant, &ns).await {
        return r;
    }
    match svc.namespace_topics(&tenant, &ns).await {
        Ok(t) => axum::Json(t).into_response(),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Non-persistent topics exist while loaded; pulsar-admin's `topics list` asks for both kinds.
async fn list_non_persistent_topics(
    State(svc): Svc,
    Path((tenant, ns)): Path<(String, String)>,
) -> Response {
    if !valid_segment(&tenant) || !valid_segment(&ns) {
        return err(StatusCode::PRECONDITION_FAILED, "invalid namespace name");
    }
    if let Err(r) = common::namespace_exists(&svc, &tenant, &ns).await {
        return r;
    }
    axum::Json(svc.namespace_non_persistent_topics(&tenant, &ns)).into_response()
}

async fn get_partitions(
    State(svc): Svc,
    Path((tenant, ns, topic)): Path<(String, String, String)>,
) -> Response {
    let t = match topic_name(&tenant, &ns, &topic) {
        Ok(t) => t,
        Err(r) => return r,
    };
    match svc
        .meta
        .get_json::<PartitionedMetadata>(&keys::partitioned_topic(&t))
        .await
    {
        Ok(Some(v)) => axum::Json(v.value).into_response(),
        Ok(None) => axum::Json(json!({"partitions": 0, "properties": {}})).into_response(),
        Err(e) => meta_err(e),
    }
}

async fn create_partitions(
    State(svc): Svc,
    Path((tenant, ns, topic)): Path<(String, String, String)>,
    body: String,
) -> Response {
    let t = match topic_name(&tenant, &ns, &topic) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let meta: PartitionedMetadata = match serde_json::from_str::<Value>(&body) {
        Ok(Value::Number(n)) => match n.as_u64().and_then(|p| u32::try_from(p).ok()) {
            Some(partitions) => PartitionedMetadata {
                partitions,
                properties: Default::default(),
            },
            None => {
                return err(
                    StatusCode::PRECONDITION_FAILED,
                    "the number of partitions must be between 1 and 10000",
                );
            }
        },
        Ok(v @ Value::Object(_)) => match serde_json::from_value(v) {
            Ok(m) => m,
            Err(e) => return err(StatusCode::BAD_REQUEST, format!("bad body: {e}")),
        },
        Ok(_) => return err(StatusCode::BAD_REQUEST, "expected a number of partitions"),
        Err(e) => return err(StatusCode::BAD_REQUEST, format!("bad JSON: {e}")),
    };
    if meta.partitions == 0 || meta.partitions > 10_000 {
        return err(
            StatusCode::PRECONDITION_FAILED,
            "the number of partitions must be between 1 and 10000",
        );
    }
    if t.partition().is_some() {
        return err(
            StatusCode::PRECONDITION_FAILED,
            "a partitioned topic's name must not end in -partition-N",
        );
    }
    match svc.topic_exists(&t).await {
        Ok(true) => {
            return err(
                StatusCode::CONFLICT,
                "a non-partitioned topic with this name exists",
            );
        }
        Ok(false) => {}
        Err(e) => return err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
    match svc
        .meta
        .put_json(&keys::partitioned_topic(&t), &meta, Expected::Absent)
        .await
    {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(MetaError::BadVersion { .. }) => {
            err(StatusCode::CONFLICT, "Partitioned topic already exists")
        }
        Err(e) => meta_err(e),
    }
}

/// Adds partitions to a partitioned topic (never removes any).
async fn grow_partitions(
    State(svc): Svc,
    Path((tenant, ns, topic)): Path<(String, String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let t = match topic_name(&tenant, &ns, &topic) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let Some(wanted) = serde_json::from_slice::<u64>(&body)
        .ok()
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| (1..=10_000).contains(n))
    else {
        return err(
            StatusCode::BAD_REQUEST,
            "the body must be a number of partitions in 1..=10000",
        );
    };
    let res = svc
        .meta
        .update_json::<PartitionedMetadata, _, Stop>(&keys::partitioned_topic(&t), |current| {
            let Some(mut meta) = current else {
                return Err(Stop::Reply(err(
                    StatusCode::NOT_FOUND,
                    "Partitioned topic does not exist",
                )));
            };
            if wanted <= meta.partitions {
                return Err(Stop::Reply(err(
                    StatusCode::PRECONDITION_FAILED,
                    format!(
                        "the topic has {} partitions; it can only grow",
                        meta.partitions
                    ),
                )));
            }
            meta.partitions = wanted;
            Ok(meta)
        })
        .await;
    answered(res)
}

/// Deletes a partitioned topic: its partitions (refused while clients use them, unless
/// `force`), then its metadata.
async fn delete_partitions(
    State(svc): Svc,
    Path((tenant, ns, topic)): Path<(String, String, String)>,
    axum::extract::Query(q): axum::extract::Query<Force>,
) -> Response {
    let t = match topic_name(&tenant, &ns, &topic) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let n = match svc.partitions(&t).await {
        Ok(Some(n)) => n,
        Ok(None) => return err(StatusCode::NOT_FOUND, "Partitioned topic does not exist"),
        Err(e) => return client_err(e),
    };
    for i in 0..n {
        let pt = t.partition_name(i);
        match svc.topic_exists(&pt).await {
            Ok(true) => {
                if let Err(e) = svc.delete_topic(&pt, q.force).await {
                    return client_err(e);
                }
            }
            Ok(false) => {}
            Err(e) => return client_err(e),
        }
    }
    if let Err(e) = crate::schema::forget(&svc.meta, &t).await {
        return client_err(e);
    }
    match svc
        .meta
        .delete(&keys::partitioned_topic(&t), Expected::Any)
        .await
    {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(MetaError::NotFound(_)) => {
            err(StatusCode::NOT_FOUND, "Partitioned topic does not exist")
        }
        Err(e) => meta_err(e),
    }
}

async fn list_namespaces(State(svc): Svc, Path(tenant): Path<String>) -> Response {
    if !valid_segment(&tenant) {
        return err(StatusCode::PRECONDITION_FAILED, "Invalid tenant name");
    }
    match svc.meta.get(&keys::tenant(&tenant)).await {
        Ok(Some(_)) => {}
        Ok(None) => return err(StatusCode::NOT_FOUND, "Tenant does not exist"),
        Err(e) => return meta_err(e),
    }
    match svc.meta.children(&keys::tenant(&tenant)).await {
        Ok(names) => axum::Json(
            names
                .into_iter()
                .map(|n| format!("{tenant}/{n}"))
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => meta_err(e),
    }
}

async fn get_namespace(State(svc): Svc, Path((tenant, ns)): NsPath) -> Response {
    match namespace_record(&svc, &tenant, &ns).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(r) => r,
    }
}

/// Creates a namespace, with the given policies if a body is sent.
async fn create_namespace(
    State(svc): Svc,
    Path((tenant, ns)): NsPath,
    body: axum::body::Bytes,
) -> Response {
    if !valid_segment(&tenant) || !valid_segment(&ns) {
        return err(StatusCode::PRECONDITION_FAILED, "Invalid namespace name");
    }
    match svc.tenant_info(&tenant).await {
        Ok(Some(info))
            if !info.allowed_clusters.is_empty()
                && !info.allowed_clusters.contains(&svc.cfg.cluster) =>
        {
            return err(
                StatusCode::FORBIDDEN,
                format!(
                    "Cluster {} is not in the list of allowed clusters of tenant {tenant}",
                    svc.cfg.cluster
                ),
            );
        }
        Ok(Some(_)) => {}
        Ok(None) => return err(StatusCode::NOT_FOUND, "Tenant does not exist"),
        Err(e) => return meta_err(e),
    }
    let mut policies = if body.iter().all(|b| b.is_ascii_whitespace()) {
        json!({})
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => return err(StatusCode::BAD_REQUEST, "policies must be a JSON object"),
            Err(e) => return err(StatusCode::BAD_REQUEST, format!("bad JSON: {e}")),
        }
    };
    if let Err(e) = serde_json::from_value::<crate::policies::NamespacePolicies>(policies.clone()) {
        return err(StatusCode::BAD_REQUEST, format!("bad policies: {e}"));
    }
    if policies.get("replication_clusters").is_none() {
        policies["replication_clusters"] = json!([svc.cfg.cluster]);
    }
    match Bundles::requested(policies.get("bundles")) {
        Ok(b) => policies["bundles"] = json!(b),
        Err(m) => return err(StatusCode::PRECONDITION_FAILED, m),
    }
    match svc
        .meta
        .put_json(&keys::namespace(&tenant, &ns), &policies, Expected::Absent)
        .await
    {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(MetaError::BadVersion { .. }) => err(StatusCode::CONFLICT, "Namespace already exists"),
        Err(e) => meta_err(e),
    }
}

async fn policy_get(State(svc): Svc, Path((tenant, ns)): NsPath, field: &str) -> Response {
    match namespace_record(&svc, &tenant, &ns).await {
        Ok(v) => axum::Json(v.get(field).cloned().unwrap_or(Value::Null)).into_response(),
        Err(r) => r,
    }
}

/// How a namespace policy is set: POST mostly, PUT where Pulsar's paths use PUT.
#[derive(Clone, Copy)]
enum SetBy {
    Post,
    Put,
}

/// GET, set and (if `removable`) DELETE of one field of a namespace's policies.
fn ns_field(
    field: &'static str,
    set_by: SetBy,
    check: fn(Value) -> Result<Value, String>,
    removable: bool,
) -> MethodRouter<Arc<BrokerService>> {
    let set = move |s, p, b| policy_set(s, p, field, b, check);
    let r = get(move |s, p| policy_get(s, p, field));
    let r = match set_by {
        SetBy::Post => r.post(set),
        SetBy::Put => r.put(set),
    };
    if removable {
        r.delete(move |s, p| policy_delete(s, p, field))
    } else {
        r
    }
}

/// GET, POST and DELETE of one of a topic's own rate policies.
fn topic_rate(field: &'static str) -> MethodRouter<Arc<BrokerService>> {
    get(move |s, p| topic_policy_get(s, p, field))
        .post(move |s, p, b| set_topic_rate(s, p, field, b))
        .delete(move |s, p| topic_policy_delete(s, p, field))
}

/// Sets one policy field from the request body after `check` accepts (and may normalise) it.
async fn policy_set(
    State(svc): Svc,
    Path((tenant, ns)): NsPath,
    field: &str,
    body: axum::body::Bytes,
    check: fn(Value) -> Result<Value, String>,
) -> Response {
    let value = match serde_json::from_slice::<Value>(&body) {
        Ok(v) => match check(v) {
            Ok(v) => v,
            Err(m) => return err(StatusCode::PRECONDITION_FAILED, m),
        },
        Err(e) => return err(StatusCode::BAD_REQUEST, format!("bad JSON: {e}")),
    };
    update_policies(&svc, &tenant, &ns, |p| p[field] = value.clone()).await
}

async fn policy_delete(State(svc): Svc, Path((tenant, ns)): NsPath, field: &str) -> Response {
    update_policies(&svc, &tenant, &ns, |p| {
        if let Some(o) = p.as_object_mut() {
            o.remove(field);
        }
    })
    .await
}

/// A namespace without an affinity answers 404, as Pulsar's does.
async fn get_affinity(State(svc): Svc, Path((tenant, ns)): NsPath) -> Response {
    match namespace_record(&svc, &tenant, &ns).await {
        Ok(v) => match v.get("bookieAffinityGroup") {
            Some(g) if !g.is_null() => axum::Json(g.clone()).into_response(),
            _ => err(
                StatusCode::NOT_FOUND,
                format!("Namespace {tenant}/{ns} has no bookie affinity group"),
            ),
        },
        Err(r) => r,
    }
}

/// Pulsar's `BookieAffinityGroupData`: a primary list of groups (comma separated), an
/// optional secondary one.
fn check_affinity(v: Value) -> Result<Value, String> {
    let g: crate::policies::BookieAffinityGroup = from_object(v, "bookie affinity group")?;
    let lists = [Some(&g.primary), g.secondary.as_ref()];
    for group in lists.into_iter().flatten().flat_map(|l| l.split(',')) {
        let group = group.trim();
        if !group.is_empty() && !valid_segment(group) {
            return Err(format!("invalid group name {group:?}"));
        }
    }
    if g.affinity().is_none() {
        return Err("bookieAffinityGroupPrimary names no group".into());
    }
    serde_json::to_value(g).map_err(|e| e.to_string())
}

/// Pulsar's `PersistencePolicies`: refused when the quorums are impossible or the ensemble
/// is larger than the bookies registered now (no new ledger could be made).
async fn set_persistence(
    State(svc): Svc,
    Path((tenant, ns)): NsPath,
    body: axum::body::Bytes,
) -> Response {
    let value = match serde_json::from_slice::<Value>(&body) {
        Ok(v) => v,
        Err(e) => return err(StatusCode::BAD_REQUEST, format!("bad JSON: {e}")),
    };
    let q: crate::policies::PersistencePolicies = match from_object(value, "persistence policies") {
        Ok(q) => q,
        Err(m) => return err(StatusCode::PRECONDITION_FAILED, m),
    };
    if let Some(why) = q.invalid() {
        return err(StatusCode::PRECONDITION_FAILED, why);
    }
    match svc
        .meta
        .children(magnetar_bookie::ledger::BOOKIES_PATH)
        .await
    {
        Ok(b) if b.len() < q.bookkeeper_ensemble => {
            return err(
                StatusCode::PRECONDITION_FAILED,
                format!(
                    "bookkeeperEnsemble {} is more than the {} bookies available",
                    q.bookkeeper_ensemble,
                    b.len()
                ),
            );
        }
        Ok(_) => {}
        Err(e) => return meta_err(e),
    }
    let value = json!(q);
    update_policies(&svc, &tenant, &ns, |p| p["persistence"] = value.clone()).await
}

fn check_retention(v: Value) -> Result<Value, String> {
    let r: crate::policies::RetentionPolicies = from_object(v, "retention policies")?;
    if r.time_minutes < -1 || r.size_mb < -1 {
        return Err("retention limits are -1 (forever), 0 or positive".into());
    }
    serde_json::to_value(r).map_err(|e| e.to_string())
}

fn check_ttl(v: Value) -> Result<Value, String> {
    match v.as_i64() {
        Some(s) if s >= 0 => Ok(Value::from(s)),
        _ => Err("the TTL is a number of seconds, 0 or more".into()),
    }
}

fn check_auto_creation(v: Value) -> Result<Value, String> {
    let a: crate::policies::AutoTopicCreation = from_object(v, "auto topic creation")?;
    match (a.topic_type.as_str(), a.default_partitions) {
        ("non-partitioned", _) => {}
        ("partitioned", Some(n)) if (1..=10_000).contains(&n) => {}
        ("partitioned", _) => {
            return Err("a partitioned type needs defaultNumPartitions in 1..=10000".into());
        }
        (t, _) => return Err(format!("unknown topicType {t:?}")),
    }
    serde_json::to_value(a).map_err(|e| e.to_string())
}

#[derive(serde::Deserialize)]
struct QuotaType {
    #[serde(rename = "backlogQuotaType", default = "storage_quota")]
    kind: String,
}

fn storage_quota() -> String {
    "destination_storage".into()
}

/// The change a backlog-quota POST makes to a policies record (namespace or topic), after
/// checking the type and the body.
fn quota_change(kind: &str, body: &[u8]) -> Result<impl Fn(&mut Value) + use<>, Response> {
    if kind != "destination_storage" && kind != "message_age" {
        return Err(err(
            StatusCode::PRECONDITION_FAILED,
            "backlogQuotaType is destination_storage or message_age",
        ));
    }
    let quota: crate::policies::BacklogQuota =
        object_body(body, "backlog quota").map_err(|m| err(StatusCode::BAD_REQUEST, m))?;
    let (kind, value) = (kind.to_string(), json!(quota));
    Ok(move |p: &mut Value| {
        if let Some(m) = object_at(p, "backlog_quota_map") {
            m.insert(kind.clone(), value.clone());
        }
    })
}

/// The change a backlog-quota DELETE makes to a policies record.
fn quota_removal(kind: String) -> impl Fn(&mut Value) {
    move |p: &mut Value| {
        if let Some(m) = p["backlog_quota_map"].as_object_mut() {
            m.remove(&kind);
        }
    }
}

async fn set_backlog_quota(
    State(svc): Svc,
    Path((tenant, ns)): NsPath,
    axum::extract::Query(q): axum::extract::Query<QuotaType>,
    body: axum::body::Bytes,
) -> Response {
    match quota_change(&q.kind, &body) {
        Ok(change) => update_policies(&svc, &tenant, &ns, change).await,
        Err(r) => r,
    }
}

async fn remove_backlog_quota(
    State(svc): Svc,
    Path((tenant, ns)): NsPath,
    axum::extract::Query(q): axum::extract::Query<QuotaType>,
) -> Response {
    update_policies(&svc, &tenant, &ns, quota_removal(q.kind)).await
}

async fn get_deduplication(
    State(svc): Svc,
    Path((tenant, ns)): Path<(String, String)>,
) -> Response {
    match namespace_record(&svc, &tenant, &ns).await {
        Ok(v) => {
            let p =
                serde_json::from_value::<crate::policies::NamespacePolicies>(v).unwrap_or_default();
            let eff = crate::policies::Effective::resolve(&p, &svc.cfg.policy_defaults());
            axum::Json(eff.deduplication).into_response()
        }
        Err(r) => r,
    }
}

async fn set_deduplication(
    State(svc): Svc,
    Path((tenant, ns)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(on) = serde_json::from_slice::<bool>(&body) else {
        return err(StatusCode::BAD_REQUEST, "the body must be true or false");
    };
    update_policies(&svc, &tenant, &ns, |p| {
        p["deduplicationEnabled"] = Value::Bool(on);
    })
    .await
}

async fn remove_deduplication(
    State(svc): Svc,
    Path((tenant, ns)): Path<(String, String)>,
) -> Response {
    update_policies(&svc, &tenant, &ns, |p| {
        if let Some(o) = p.as_object_mut() {
            o.remove("deduplicationEnabled");
        }
    })
    .await
}

impl From<MetaError> for Stop {
    fn from(e: MetaError) -> Self {
        Stop::Meta(e)
    }
}

fn check_threshold(v: Value) -> Result<Value, String> {
    match v.as_i64() {
        Some(t) if t >= 0 => Ok(Value::from(t)),
        _ => Err("the threshold is a number of bytes, 0 (off) or more".into()),
    }
}

/// Starts compacting a topic (Pulsar answers 204 and compacts in the background).
async fn start_compaction(State(svc): Svc, Path(path): Path<(String, String, String)>) -> Response {
    let topic = match path_topic(&svc, &path).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    if topic.trigger_compaction() {
        StatusCode::NO_CONTENT.into_response()
    } else {
        err(StatusCode::CONFLICT, "Compaction already in progress")
    }
}

async fn compaction_status(
    State(svc): Svc,
    Path(path): Path<(String, String, String)>,
) -> Response {
    let topic = match path_topic(&svc, &path).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let (status, error) = match topic.compaction_state() {
        crate::topic::compaction::CompactionState::NotRun => ("NOT_RUN", String::new()),
        crate::topic::compaction::CompactionState::Running => ("RUNNING", String::new()),
        crate::topic::compaction::CompactionState::Success => ("SUCCESS", String::new()),
        crate::topic::compaction::CompactionState::Error(e) => ("ERROR", e),
    };
    axum::Json(json!({"status": status, "lastError": error})).into_response()
}

#[derive(serde::Deserialize)]
struct TtlQuery {
    #[serde(rename = "messageTTL")]
    ttl: Option<i64>,
}

/// Pulsar takes the topic TTL as `?messageTTL=`; a JSON number body works too.
async fn set_topic_ttl(
    State(svc): Svc,
    Path(path): TopicPath,
    axum::extract::Query(q): axum::extract::Query<TtlQuery>,
    body: axum::body::Bytes,
) -> Response {
    let ttl = q.ttl.or_else(|| serde_json::from_slice::<i64>(&body).ok());
    let value = match ttl.map(Value::from).map(check_ttl) {
        Some(Ok(v)) => v,
        Some(Err(m)) => return err(StatusCode::PRECONDITION_FAILED, m),
        None => return err(StatusCode::BAD_REQUEST, "give messageTTL (seconds)"),
    };
    update_topic_policies(&svc, &path, |p| p["message_ttl_in_seconds"] = value.clone()).await
}

async fn set_topic_rate(
    State(svc): Svc,
    Path(path): TopicPath,
    field: &'static str,
    body: axum::body::Bytes,
) -> Response {
    let rate = match check_rate(field, &body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    update_topic_policies(&svc, &path, |p| p[field] = rate.clone()).await
}

async fn set_topic_dedup(
    State(svc): Svc,
    Path(path): TopicPath,
    body: axum::body::Bytes,
) -> Response {
    let Ok(on) = serde_json::from_slice::<bool>(&body) else {
        return err(StatusCode::BAD_REQUEST, "the body must be true or false");
    };
    update_topic_policies(&svc, &path, |p| p["deduplicationEnabled"] = Value::Bool(on)).await
}

async fn set_topic_retention(
    State(svc): Svc,
    Path(path): TopicPath,
    body: axum::body::Bytes,
) -> Response {
    let value = match serde_json::from_slice::<Value>(&body) {
        Ok(v) => match check_retention(v) {
            Ok(v) => v,
            Err(m) => return err(StatusCode::PRECONDITION_FAILED, m),
        },
        Err(e) => return err(StatusCode::BAD_REQUEST, format!("bad JSON: {e}")),
    };
    update_topic_policies(&svc, &path, |p| p["retention_policies"] = value.clone()).await
}

async fn set_topic_backlog_quota(
    State(svc): Svc,
    Path(path): TopicPath,
    axum::extract::Query(q): axum::extract::Query<QuotaType>,
    body: axum::body::Bytes,
) -> Response {
    match quota_change(&q.kind, &body) {
        Ok(change) => update_topic_policies(&svc, &path, change).await,
        Err(r) => r,
    }
}

async fn remove_topic_backlog_quota(
    State(svc): Svc,
    Path(path): TopicPath,
    axum::extract::Query(q): axum::extract::Query<QuotaType>,
) -> Response {
    update_topic_policies(&svc, &path, quota_removal(q.kind)).await
}

/// Terminates a topic; answers the id of its last message.
async fn terminate(State(svc): Svc, Path(path): Path<(String, String, String)>) -> Response {
    let topic = match path_topic(&svc, &path).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    match topic.terminate().await {
        Ok(last) => axum::Json(json!({
            "ledgerId": last.ledger,
            "entryId": last.entry,
            "partitionIndex": topic.partition,
        }))
        .into_response(),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `?metadata=true` adds each ledger's record (ensembles, quorums, affinity) as Pulsar
/// adds BookKeeper's: a string in the ledger's `metadata` field.
async fn internal_stats(
    State(svc): Svc,
    Path(path): Path<(String, String, String)>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    let t = match path_topic(&svc, &path).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let mut stats = topic_internal_stats(&t);
    if q.get("metadata").is_some_and(|v| v == "true") && t.persistent() {
        let mut ledgers: Vec<&mut Value> = Vec::new();
        if let Value::Object(m) = &mut stats {
            for (k, v) in m.iter_mut() {
                match (k.as_str(), v) {
                    ("ledgers", Value::Array(list)) => ledgers.extend(list.iter_mut()),
                    ("compactedLedger", c) if c["ledgerId"].as_i64().is_some_and(|id| id >= 0) => {
                        ledgers.push(c)
                    }
                    _ => {}
                }
            }
        }
        for l in ledgers {
            let Some(id) = l.get("ledgerId").and_then(Value::as_u64) else {
                continue;
            };
            match svc.ledgers.metadata(id).await {
                Ok(m) => {
                    l["metadata"] = Value::from(serde_json::to_string(&m).unwrap_or_default());
                }
                Err(e) => l["metadata"] = Value::from(format!("unavailable: {e}")),
            }
        }
    }
    axum::Json(stats).into_response()
}

#[derive(serde::Deserialize)]
struct LookupQuery {
    #[serde(rename = "listenerName")]
    listener_name: Option<String>,
}

/// Where a topic is served, in the addresses of the listener the client names
/// (`?listenerName=` or the `X-Pulsar-ListenerName` header, as Pulsar takes it).
async fn lookup(
    State(svc): Svc,
    Path((domain, tenant, ns, topic)): Path<(String, String, String, String)>,
    axum::extract::Query(q): axum::extract::Query<LookupQuery>,
    headers: axum::http::HeaderMap,
) -> Response {
    let t = match TopicName::parse(&format!("{domain}://{tenant}/{ns}/{topic}")) {
        Ok(t) => t,
        Err(r) => return err(StatusCode::PRECONDITION_FAILED, r.to_string()),
    };
    let listener = q.listener_name.or_else(|| {
        headers
            .get("X-Pulsar-ListenerName")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    });
    let found = svc.locate(&t, false).await.and_then(|at| {
        let (url, tls) = at.urls.for_listener(listener.as_deref())?;
        Ok((at.urls, url, tls))
    });
    match found {
        Ok((urls, url, tls)) => axum::Json(json!({
            "brokerUrl": url,
            "brokerUrlTls": tls.unwrap_or_default(),
            "httpUrl": urls.web_url,
            "httpUrlTls": urls.web_url_tls.unwrap_or_default(),
            "nativeUrl": url,
        }))
        .into_response(),
        Err(e) => client_err(e),
    }
}

/// The namespace bundle (hash range) a topic belongs to.
async fn lookup_bundle(
    State(svc): Svc,
    Path((domain, tenant, ns, topic)): Path<(String, String, String, String)>,
) -> Response {
    let t = match TopicName::parse(&format!("{domain}://{tenant}/{ns}/{topic}")) {
        Ok(t) => t,
        Err(e) => return err(StatusCode::PRECONDITION_FAILED, e.to_string()),
    };
    let bundles = match bundles_of(&svc, &tenant, &ns).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    match bundles.bundle_of(topic_hash(&t)) {
        Some(b) => axum::Json(b).into_response(),
        None => err(
            StatusCode::INTERNAL_SERVER_ERROR,
            "stored bundles are invalid",
        ),
    }
}

/// A schema compatibility strategy's name (a JSON string, Pulsar's body).
fn check_strategy(v: Value) -> Result<Value, String> {
    match v.as_str() {
        Some(s) if crate::schema::compat::Strategy::NAMES.contains(&s) => Ok(v),
        _ => Err(format!(
            "the body is one of {}",
            crate::schema::compat::Strategy::NAMES.join(", ")
        )),
    }
}

fn check_bool(v: Value) -> Result<Value, String> {
    match v {
        Value::Bool(_) => Ok(v),
        _ => Err("the body is true or false".into()),
    }
}

fn check_auto_sub(v: Value) -> Result<Value, String> {
    match v
        .get("allowAutoSubscriptionCreation")
        .and_then(Value::as_bool)
    {
        Some(b) if v.as_object().is_some_and(|o| o.len() == 1) => {
            Ok(json!({"allowAutoSubscriptionCreation": b}))
        }
        _ => Err("the body is {\"allowAutoSubscriptionCreation\": true|false}".into()),
    }
}

/// The clusters a namespace replicates to: each must exist and be allowed for the tenant.
async fn set_replication(
    State(svc): Svc,
    Path((tenant, ns)): NsPath,
    body: axum::body::Bytes,
) -> Response {
    let clusters = match serde_json::from_slice::<Vec<String>>(&body) {
        Ok(c) if !c.is_empty() => c,
        Ok(_) => return err(StatusCode::PRECONDITION_FAILED, "name at least one cluster"),
        Err(e) => {
            return err(
                StatusCode::BAD_REQUEST,
                format!("the body is a list of clusters: {e}"),
            );
        }
    };
    let info = match svc.tenant_info(&tenant).await {
        Ok(Some(i)) => i,
        Ok(None) => return err(StatusCode::NOT_FOUND, "Tenant does not exist"),
        Err(e) => return meta_err(e),
    };
    for c in &clusters {
        if !valid_segment(c) {
            return err(
                StatusCode::PRECONDITION_FAILED,
                format!("Invalid cluster id {c:?}"),
            );
        }
        match svc.meta.get(&keys::cluster(c)).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                return err(
                    StatusCode::PRECONDITION_FAILED,
                    format!("Cluster {c} does not exist"),
                );
            }
            Err(e) => return meta_err(e),
        }
        if !info.allowed_clusters.is_empty() && !info.allowed_clusters.contains(c) {
            return err(
                StatusCode::FORBIDDEN,
                format!("Cluster {c} is not allowed for tenant {tenant}"),
            );
        }
    }
    update_policies(&svc, &tenant, &ns, |p| {
        p["replication_clusters"] = json!(clusters);
    })
    .await
}

fn check_limit(v: Value) -> Result<Value, String> {
    match v.as_i64() {
        Some(n) if n >= 0 => Ok(Value::from(n)),
        _ => Err("the limit is a number, 0 (no limit) or more".into()),
    }
}

async fn metrics(State(svc): Svc) -> Response {
    let mut out = String::new();
    let s = &svc.stats;
    let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    };
    gauge(
        &mut out,
        "pulsar_broker_connections",
        "Open client connections.",
        s.connections.load(Ordering::Relaxed),
    );
    gauge(
        &mut out,
        "pulsar_broker_producers_count",
        "Connected producers.",
        s.producers.load(Ordering::Relaxed),
    );
    gauge(
        &mut out,
        "pulsar_broker_consumers_count",
        "Connected consumers.",
        s.consumers.load(Ordering::Relaxed),
    );
    let _ = writeln!(
        out,
        "# HELP magnetar_housekeeping_runs_total Housekeeping passes completed.\n\
         # TYPE magnetar_housekeeping_runs_total counter\n\
         magnetar_housekeeping_runs_total {}",
        s.housekeeping_runs.load(Ordering::Relaxed)
    );
    gauge(
        &mut out,
        "magnetar_entry_cache_bytes",
        "Bytes in the entry caches of this broker's persistent topics together.",
        svc.cfg.ml.cache_budget.used() as u64,
    );
    gauge(
        &mut out,
        "magnetar_entry_cache_limit_bytes",
        "What those caches may hold together (--managed-ledger-cache-size-mb).",
        svc.cfg.ml.cache_bytes as u64,
    );
    let budget = &svc.cfg.ml.cache_budget;
    let _ = writeln!(
        out,
        "# HELP magnetar_entry_cache_hits_total Entry reads the topics' caches answered.\n\
         # TYPE magnetar_entry_cache_hits_total counter\n\
         magnetar_entry_cache_hits_total {}\n\
         # HELP magnetar_entry_cache_misses_total Entry reads that went to the bookies.\n\
         # TYPE magnetar_entry_cache_misses_total counter\n\
         magnetar_entry_cache_misses_total {}",
        budget.hits(),
        budget.misses()
    );
    let topics = svc.loaded_topics();
    let (pending_requests, pending_bytes) = topics
        .iter()
        .map(|t| t.publish.in_flight())
        .fold((0, 0), |(r, b), (tr, tb)| (r + tr, b + tb));
    gauge(
        &mut out,
        "magnetar_publish_pending_requests",
        "SENDs appended and not yet durable, over all topics (each topic's limit: --max-pending-publish-requests-per-topic).",
        pending_requests as u64,
    );
    gauge(
        &mut out,
        "magnetar_publish_pending_bytes",
        "Bytes of those SENDs (each topic's limit: --max-message-publish-buffer-size-per-topic-in-mb).",
        pending_bytes as u64,
    );
    gauge(
        &mut out,
        "magnetar_outbound_bytes",
        "Bytes queued for clients and not yet written, over all connections (each one's limit: --max-outbound-buffer-size-per-connection-in-mb).",
        s.outbound_bytes.load(Ordering::Relaxed) as u64,
    );
    let overloaded: u64 = topics
        .iter()
        .map(|t| t.ml.stats().overloaded.load(Ordering::Relaxed))
        .sum();
    let _ = writeln!(
        out,
        "# HELP magnetar_publish_paused_total Times a SEND found its topic's in-flight budget spent and its connection paused.\n\
         # TYPE magnetar_publish_paused_total counter\n\
         magnetar_publish_paused_total {}\n\
         # HELP magnetar_dispatch_throttled_total Times a consumer's connection was backlogged and dispatch to it paused.\n\
         # TYPE magnetar_dispatch_throttled_total counter\n\
         magnetar_dispatch_throttled_total {}\n\
         # HELP magnetar_storage_overloaded_total Appends the loaded topics' storage was too busy for (retried shortly; a bookie connection's queue was full).\n\
         # TYPE magnetar_storage_overloaded_total counter\n\
         magnetar_storage_overloaded_total {}",
        crate::topic::producers::PUBLISH_PAUSED.load(Ordering::Relaxed),
        crate::topic::subscription::THROTTLED.load(Ordering::Relaxed),
        overloaded,
    );
    gauge(
        &mut out,
        "pulsar_broker_topics_count",
        "Topics loaded in this broker.",
        topics.len() as u64,
    );
    // one series per topic while there are few enough, else one per namespace (the
    // cardinality bound); labels as Pulsar's: cluster, namespace, topic
    let per_topic = topics.len() <= svc.cfg.metrics_max_topics;
    let mut groups: BTreeMap<(String, String), [f64; 9]> = BTreeMap::new();
    for t in &topics {
        let (rin, tin, rout, tout) = t.rates();
        let (_, storage) = t.ml.totals();
        let offloaded = magnetar_tiering::offloader::offloaded_bytes(&t.ml.ledgers());
        let subs: Vec<_> = t.subscriptions.lock().values().cloned().collect();
        let mut backlog = 0;
        for s in subs {
            backlog += s.backlog().await;
        }
        let (msgs, bytes) = t.input.totals();
        let key = (
            t.name.namespace(),
            if per_topic {
                t.full.clone()
            } else {
                String::new()
            },
        );
        let g = groups.entry(key).or_default();
        for (acc, v) in g.iter_mut().zip([
            rin,
            tin,
            rout,
            tout,
            backlog as f64,
            storage as f64,
            msgs as f64,
            bytes as f64,
            offloaded as f64,
        ]) {
            *acc += v;
        }
    }
    let escape = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let scope = if per_topic { "topic" } else { "namespace" };
    for (i, (name, kind, help)) in [
        ("pulsar_rate_in", "gauge", "Messages per second in"),
        ("pulsar_throughput_in", "gauge", "Bytes per second in"),
        ("pulsar_rate_out", "gauge", "Messages per second out"),
        ("pulsar_throughput_out", "gauge", "Bytes per second out"),
        (
            "pulsar_msg_backlog",
            "gauge",
            "Unacknowledged messages over all subscriptions",
        ),
        ("pulsar_storage_size", "gauge", "Bytes stored"),
        ("pulsar_in_messages_total", "counter", "Messages published"),
        ("pulsar_in_bytes_total", "counter", "Bytes published"),
        (
            "pulsar_storage_offloaded_size",
            "gauge",
            "Bytes of ledgers offloaded to the tier",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let _ = writeln!(
            out,
            "# HELP {name} {help} (per {scope}).\n# TYPE {name} {kind}"
        );
        for ((ns, topic), values) in &groups {
            let mut labels = format!(
                "cluster=\"{}\",namespace=\"{}\"",
                escape(&svc.cfg.cluster),
                escape(ns)
            );
            if !topic.is_empty() {
                let _ = write!(labels, ",topic=\"{}\"", escape(topic));
            }
            let _ = writeln!(out, "{name}{{{labels}}} {}", values[i]);
        }
    }
    out.push_str(&svc.tier.stats().render("magnetar_"));
    gauge(
        &mut out,
        "magnetar_tiered_cache_bytes",
        "Bytes of offloaded blocks in the read cache.",
        svc.tier.cache().bytes() as u64,
    );
    if let Some(extra) = svc.extra_metrics.get() {
        out.push_str(&extra());
    }
    ([("content-type", "text/plain; version=0.0.4")], out).into_response()
}
