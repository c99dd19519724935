//! Namespace administration beyond single policy fields: delete, topic listing, grants
//! (namespace and subscription), bundles (list, split, unload; see `cluster::bundles`) and
//! namespace unload.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post, put};
use magnetar_meta::{Expected, MetaError, MetadataStoreExt};
use serde::Deserialize;
use serde_json::{Value, json};

use super::common::{
    Force, NsPath, Stop, Svc, answered, bundles_of, client_err, err, meta_err, namespace_exists,
    namespace_record, object_at, object_body, object_in, update_policies, valid_namespace,
};
use crate::authz::AuthPolicies;
use crate::authz::check_actions;
use crate::cluster::bundles::{stored_bundles, topic_hash};
use crate::cluster::keys;
use crate::error::BrokerError;
use crate::names::TopicName;
use crate::service::BrokerService;

pub(super) fn routes() -> Router<Arc<BrokerService>> {
    let ns = "/admin/v2/namespaces/{tenant}/{ns}";
    Router::new()
        .route(&format!("{ns}/topics"), get(topics))
        .route(&format!("{ns}/permissions"), get(permissions))
        .route(
            &format!("{ns}/permissions/{{role}}"),
            post(grant).delete(revoke),
        )
        .route(
            &format!("{ns}/permissions/subscription"),
            get(subscription_permissions),
        )
        .route(
            &format!("{ns}/permissions/subscription/{{sub}}"),
            post(grant_subscription),
        )
        .route(
            &format!("{ns}/permissions/subscription/{{sub}}/{{role}}"),
            axum::routing::delete(revoke_subscription),
        )
        .route(
            &format!("{ns}/publishRate"),
            rate_field("publishMaxMessageRate"),
        )
        .route(
            &format!("{ns}/dispatchRate"),
            rate_field("topicDispatchRate"),
        )
        .route(
            &format!("{ns}/subscriptionDispatchRate"),
            rate_field("subscriptionDispatchRate"),
        )
        .route(
            &format!("{ns}/subscribeRate"),
            rate_field("clusterSubscribeRate"),
        )
        .route(&format!("{ns}/bundles"), get(bundles))
        .route(&format!("{ns}/unload"), put(unload_namespace))
        .route(&format!("{ns}/{{bundle}}/unload"), put(unload_bundle))
        .route(&format!("{ns}/{{bundle}}/split"), put(split_bundle))
}

async fn bundles(State(svc): Svc, Path((tenant, ns)): NsPath) -> Response {
    match bundles_of(&svc, &tenant, &ns).await {
        Ok(b) => axum::Json(b).into_response(),
        Err(r) => r,
    }
}

async fn split_bundle(
    State(svc): Svc,
    Path((tenant, ns, bundle)): Path<(String, String, String)>,
) -> Response {
    if let Err(r) = valid_namespace(&tenant, &ns) {
        return r;
    }
    let key = keys::namespace(&tenant, &ns);
    let res = svc
        .meta
        .update_json::<Value, _, Stop>(&key, |cur| {
            let Some(mut p) = cur.filter(Value::is_object) else {
                return Err(Stop::Reply(err(
                    StatusCode::NOT_FOUND,
                    "Namespace does not exist",
                )));
            };
            let current = stored_bundles(&p)
                .map_err(|m| Stop::Reply(err(StatusCode::INTERNAL_SERVER_ERROR, m)))?;
            let split = current
                .split(&bundle)
                .map_err(|m| Stop::Reply(err(StatusCode::PRECONDITION_FAILED, m)))?;
            p["bundles"] = json!(split);
            Ok(p)
        })
        .await;
    answered(res)
}

/// Unloads the loaded topics of a namespace whose hash passes `keep`.
async fn unload_where(
    svc: &BrokerService,
    tenant: &str,
    ns: &str,
    keep: impl Fn(&TopicName) -> bool,
) {
    let prefix = format!("{tenant}/{ns}");
    for t in svc.loaded_topics() {
        if t.name.namespace() == prefix && keep(&t.name) {
            svc.unload(&t.full).await;
        }
    }
}

async fn unload_namespace(State(svc): Svc, Path((tenant, ns)): NsPath) -> Response {
    if let Err(r) = namespace_exists(&svc, &tenant, &ns).await {
        return r;
    }
    let namespace = format!("{tenant}/{ns}");
    let unload = Box::pin(unload_where(&svc, &tenant, &ns, |_| true));
    match svc.ownership.release(&namespace, None, unload).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => client_err(e),
    }
}

async fn unload_bundle(
    State(svc): Svc,
    Path((tenant, ns, bundle)): Path<(String, String, String)>,
) -> Response {
    let bundles = match bundles_of(&svc, &tenant, &ns).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    if !bundles.ranges().contains(&bundle) {
        return err(
            StatusCode::NOT_FOUND,
            format!("bundle {bundle} does not exist"),
        );
    }
    let namespace = format!("{tenant}/{ns}");
    // the owner unloads it (307 there, as Pulsar's brokers answer)
    match svc
        .ownership
        .bundle_owner_elsewhere(&namespace, &bundle)
        .await
    {
        Ok(Some(urls)) => {
            return client_err(BrokerError::ServedElsewhere {
                topic: format!("bundle {namespace}/{bundle}"),
                service_url: urls.service_url,
                web_url: urls.web_url,
            });
        }
        Ok(None) => {}
        Err(e) => return client_err(e),
    }
    let unload = Box::pin(unload_where(&svc, &tenant, &ns, |t| {
        bundles.bundle_of(topic_hash(t)).as_deref() == Some(bundle.as_str())
    }));
    match svc
        .ownership
        .release(&namespace, Some(&bundle), unload)
        .await
    {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => client_err(e),
    }
}

#[derive(Deserialize)]
struct ModeQuery {
    #[serde(default)]
    mode: Option<String>,
}

/// Every topic of a namespace: `mode` PERSISTENT (default), NON_PERSISTENT or ALL.
async fn topics(
    State(svc): Svc,
    Path((tenant, ns)): NsPath,
    Query(q): Query<ModeQuery>,
) -> Response {
    if let Err(r) = namespace_exists(&svc, &tenant, &ns).await {
        return r;
    }
    let mode = q.mode.as_deref().unwrap_or("PERSISTENT");
    let mut out = Vec::new();
    if mode == "PERSISTENT" || mode == "ALL" {
        match svc.namespace_topics(&tenant, &ns).await {
            Ok(t) => out.extend(t),
            Err(e) => return client_err(e),
        }
    }
    if mode == "NON_PERSISTENT" || mode == "ALL" {
        out.extend(svc.namespace_non_persistent_topics(&tenant, &ns));
    } else if mode != "PERSISTENT" {
        return err(
            StatusCode::PRECONDITION_FAILED,
            "mode is PERSISTENT, NON_PERSISTENT or ALL",
        );
    }
    axum::Json(out).into_response()
}

/// Deletes a namespace: 409 while it has topics, unless `force`, which deletes them first.
pub(super) async fn delete_namespace(
    State(svc): Svc,
    Path((tenant, ns)): NsPath,
    Query(q): Query<Force>,
) -> Response {
    if let Err(r) = namespace_exists(&svc, &tenant, &ns).await {
        return r;
    }
    let topics = match svc.namespace_topics(&tenant, &ns).await {
        Ok(t) => t,
        Err(e) => return client_err(e),
    };
    let partitioned = match svc
        .meta
        .children(&keys::partitioned_topics(&tenant, &ns, "persistent"))
        .await
    {
        Ok(p) => p,
        Err(e) => return meta_err(e),
    };
    let non_persistent = svc.namespace_non_persistent_topics(&tenant, &ns);
    if !q.force && (!topics.is_empty() || !partitioned.is_empty() || !non_persistent.is_empty()) {
        return err(StatusCode::CONFLICT, "Cannot delete non empty namespace");
    }
    for name in topics.iter().chain(non_persistent.iter()) {
        let Ok(t) = TopicName::parse(name) else {
            continue;
        };
        if let Err(e) = svc.delete_topic(&t, true).await {
            return client_err(e);
        }
    }
    for p in partitioned {
        if let Ok(t) = TopicName::parse(&format!("persistent://{tenant}/{ns}/{p}")) {
            match svc
                .meta
                .delete(&keys::partitioned_topic(&t), Expected::Any)
                .await
            {
                Ok(()) | Err(MetaError::NotFound(_)) => {}
                Err(e) => return meta_err(e),
            }
        }
    }
    match svc
        .meta
        .delete(&keys::namespace(&tenant, &ns), Expected::Any)
        .await
    {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(MetaError::NotFound(_)) => err(StatusCode::NOT_FOUND, "Namespace does not exist"),
        Err(e) => meta_err(e),
    }
}

/// A namespace's grants, from its record read once.
async fn grants(svc: &BrokerService, tenant: &str, ns: &str) -> Result<AuthPolicies, Response> {
    let record = namespace_record(svc, tenant, ns).await?;
    AuthPolicies::from_policies(&record).map_err(|e| {
        err(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("stored grants are unreadable: {e}"),
        )
    })
}

async fn permissions(State(svc): Svc, Path((tenant, ns)): NsPath) -> Response {
    match grants(&svc, &tenant, &ns).await {
        Ok(a) => axum::Json(a.namespace_auth).into_response(),
        Err(r) => r,
    }
}

async fn subscription_permissions(State(svc): Svc, Path((tenant, ns)): NsPath) -> Response {
    match grants(&svc, &tenant, &ns).await {
        Ok(a) => axum::Json(a.subscription_auth_roles).into_response(),
        Err(r) => r,
    }
}

/// Changes one map inside `auth_policies` by compare-and-set. Grants are kept even while
/// authorization is off (Pulsar answers 501 then), so they are in place when it is enabled.
async fn change_auth(
    svc: &BrokerService,
    tenant: &str,
    ns: &str,
    key: &str,
    change: impl Fn(&mut serde_json::Map<String, Value>) + Send + Sync,
) -> Response {
    update_policies(svc, tenant, ns, |p| {
        if let Some(m) = object_at(p, "auth_policies").and_then(|a| object_in(a, key)) {
            change(m);
        }
    })
    .await
}

async fn grant(
    State(svc): Svc,
    Path((tenant, ns, role)): Path<(String, String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let actions = match serde_json::from_slice::<Vec<String>>(&body) {
        Ok(a) => match check_actions(&a) {
            Ok(a) => a,
            Err(m) => return err(StatusCode::PRECONDITION_FAILED, m),
        },
        Err(e) => {
            return err(
                StatusCode::BAD_REQUEST,
                format!("the body must be a list of actions: {e}"),
            );
        }
    };
    change_auth(&svc, &tenant, &ns, "namespace_auth", |m| {
        m.insert(role.clone(), json!(actions));
    })
    .await
}

async fn revoke(
    State(svc): Svc,
    Path((tenant, ns, role)): Path<(String, String, String)>,
) -> Response {
    change_auth(&svc, &tenant, &ns, "namespace_auth", |m| {
        m.remove(&role);
    })
    .await
}

async fn grant_subscription(
    State(svc): Svc,
    Path((tenant, ns, sub)): Path<(String, String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let roles = match serde_json::from_slice::<Vec<String>>(&body) {
        Ok(r) if !r.is_empty() && r.iter().all(|r| !r.is_empty()) => r,
        Ok(_) => return err(StatusCode::PRECONDITION_FAILED, "name at least one role"),
        Err(e) => {
            return err(
                StatusCode::BAD_REQUEST,
                format!("the body must be a list of roles: {e}"),
            );
        }
    };
    change_auth(&svc, &tenant, &ns, "subscription_auth_roles", |subs| {
        let mut all: std::collections::BTreeSet<String> = subs
            .get(&sub)
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        all.extend(roles.iter().cloned());
        subs.insert(sub.clone(), json!(all));
    })
    .await
}

async fn revoke_subscription(
    State(svc): Svc,
    Path((tenant, ns, sub, role)): Path<(String, String, String, String)>,
) -> Response {
    change_auth(&svc, &tenant, &ns, "subscription_auth_roles", |subs| {
        let mut all: std::collections::BTreeSet<String> = subs
            .get(&sub)
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        all.remove(&role);
        if all.is_empty() {
            subs.remove(&sub);
        } else {
            subs.insert(sub.clone(), json!(all));
        }
    })
    .await
}

/// A rate body checked against its kind (publish or dispatch), normalised.
pub(super) fn check_rate(field: &str, body: &[u8]) -> Result<Value, Response> {
    let bad = |m: String| err(StatusCode::BAD_REQUEST, m);
    if field == "clusterSubscribeRate" {
        let r: crate::policies::SubscribeRate = object_body(body, "rate").map_err(bad)?;
        return Ok(json!(r));
    }
    if field == "publishMaxMessageRate" || field == "publishRate" {
        let r: crate::policies::PublishRate = object_body(body, "rate").map_err(bad)?;
        Ok(json!(r))
    } else {
        let r: crate::policies::DispatchRate = object_body(body, "rate").map_err(bad)?;
        if r.period_secs < 1 {
            return Err(err(
                StatusCode::PRECONDITION_FAILED,
                "ratePeriodInSecond must be 1 or more",
            ));
        }
        Ok(json!(r))
    }
}

/// GET, POST and DELETE of one of a namespace's per-cluster rates.
fn rate_field(field: &'static str) -> MethodRouter<Arc<BrokerService>> {
    get(move |s, p| rate_get(s, p, field))
        .post(move |s, p, b| rate_set(s, p, field, b))
        .delete(move |s, p| rate_delete(s, p, field))
}

/// A namespace rate for this broker's cluster (Pulsar keeps rates per cluster).
async fn rate_get(State(svc): Svc, Path((tenant, ns)): NsPath, field: &str) -> Response {
    match namespace_record(&svc, &tenant, &ns).await {
        Ok(v) => axum::Json(v[field][&svc.cfg.cluster].clone()).into_response(),
        Err(r) => r,
    }
}

async fn rate_set(
    State(svc): Svc,
    Path((tenant, ns)): NsPath,
    field: &str,
    body: axum::body::Bytes,
) -> Response {
    let rate = match check_rate(field, &body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let cluster = svc.cfg.cluster.clone();
    update_policies(&svc, &tenant, &ns, |p| {
        if let Some(m) = object_at(p, field) {
            m.insert(cluster.clone(), rate.clone());
        }
    })
    .await
}

async fn rate_delete(State(svc): Svc, Path((tenant, ns)): NsPath, field: &str) -> Response {
    let cluster = svc.cfg.cluster.clone();
    update_policies(&svc, &tenant, &ns, |p| {
        if let Some(m) = p[field].as_object_mut() {
            m.remove(&cluster);
        }
    })
    .await
}
