//! Clusters, tenants and brokers at Pulsar's admin v2 paths. Records live at
//! `/admin/clusters/{cluster}` and `/admin/policies/{tenant}`; every change is a
//! compare-and-set.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use magnetar_meta::{Expected, MetaError, MetadataStoreExt};
use serde_json::{Value, json};

use super::common::{Stop, Svc, answered, bundles_of, client_err, err, meta_err, object_body};
use crate::authz::TenantInfo;
use crate::cluster::keys;
use crate::names::valid_segment;
use crate::service::BrokerService;

pub(super) fn routes() -> Router<Arc<BrokerService>> {
    Router::new()
        .route(
            "/admin/v2/clusters/{cluster}",
            get(get_cluster)
                .put(create_cluster)
                .post(update_cluster)
                .delete(delete_cluster),
        )
        .route(
            "/admin/v2/tenants/{tenant}",
            get(get_tenant)
                .put(create_tenant)
                .post(update_tenant)
                .delete(delete_tenant),
        )
        .route("/admin/v2/brokers", get(brokers))
        .route("/admin/v2/brokers/leaderBroker", get(leader))
        .route("/admin/v2/brokers/{cluster}", get(cluster_brokers))
        .route(
            "/admin/v2/brokers/{cluster}/{broker}/ownedNamespaces",
            get(owned_namespaces),
        )
}

async fn get_cluster(State(svc): Svc, Path(c): Path<String>) -> Response {
    match svc.meta.get_json::<Value>(&keys::cluster(&c)).await {
        Ok(Some(v)) => axum::Json(v.value).into_response(),
        Ok(None) => err(StatusCode::NOT_FOUND, "Cluster does not exist"),
        Err(e) => meta_err(e),
    }
}

fn cluster_body(body: &[u8]) -> Result<Value, Response> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(err(
            StatusCode::BAD_REQUEST,
            "cluster data must be a JSON object",
        )),
        Err(e) => Err(err(StatusCode::BAD_REQUEST, format!("bad JSON: {e}"))),
    }
}

async fn create_cluster(
    State(svc): Svc,
    Path(c): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if !valid_segment(&c) {
        return err(StatusCode::PRECONDITION_FAILED, "Invalid cluster name");
    }
    let data = match cluster_body(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    match svc
        .meta
        .put_json(&keys::cluster(&c), &data, Expected::Absent)
        .await
    {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(MetaError::BadVersion { .. }) => err(StatusCode::CONFLICT, "Cluster already exists"),
        Err(e) => meta_err(e),
    }
}

async fn update_cluster(
    State(svc): Svc,
    Path(c): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let data = match cluster_body(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let res = svc
        .meta
        .update_json::<Value, _, Stop>(&keys::cluster(&c), |cur| match cur {
            Some(_) => Ok(data.clone()),
            None => Err(Stop::Reply(err(
                StatusCode::NOT_FOUND,
                "Cluster does not exist",
            ))),
        })
        .await;
    answered(res)
}

/// A cluster still named by a tenant stays (409), as does the cluster this broker serves.
async fn delete_cluster(State(svc): Svc, Path(c): Path<String>) -> Response {
    if c == svc.cfg.cluster {
        return err(
            StatusCode::PRECONDITION_FAILED,
            "This broker's own cluster cannot be deleted",
        );
    }
    let tenants = match svc.meta.children(keys::TENANTS).await {
        Ok(t) => t,
        Err(e) => return meta_err(e),
    };
    for t in tenants {
        match svc.tenant_info(&t).await {
            Ok(Some(info)) if info.allowed_clusters.contains(&c) => {
                return err(
                    StatusCode::CONFLICT,
                    format!("Cluster is still used by tenant {t}"),
                );
            }
            Ok(_) => {}
            Err(e) => return meta_err(e),
        }
    }
    match svc.meta.delete(&keys::cluster(&c), Expected::Any).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(MetaError::NotFound(_)) => err(StatusCode::NOT_FOUND, "Cluster does not exist"),
        Err(e) => meta_err(e),
    }
}

async fn get_tenant(State(svc): Svc, Path(t): Path<String>) -> Response {
    match svc.tenant_info(&t).await {
        Ok(Some(info)) => axum::Json(info).into_response(),
        Ok(None) => err(StatusCode::NOT_FOUND, "Tenant does not exist"),
        Err(e) => meta_err(e),
    }
}

/// A TenantInfo body whose clusters all exist (412 otherwise, as Pulsar answers).
async fn tenant_body(svc: &BrokerService, body: &[u8]) -> Result<TenantInfo, Response> {
    let info: TenantInfo = if body.iter().all(u8::is_ascii_whitespace) {
        TenantInfo::default()
    } else {
        object_body(body, "tenant info").map_err(|m| err(StatusCode::BAD_REQUEST, m))?
    };
    for c in &info.allowed_clusters {
        match svc.meta.get(&keys::cluster(c)).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(err(
                    StatusCode::PRECONDITION_FAILED,
                    format!("Cluster {c} does not exist"),
                ));
            }
            Err(e) => return Err(meta_err(e)),
        }
    }
    Ok(info)
}

async fn create_tenant(
    State(svc): Svc,
    Path(t): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if !valid_segment(&t) {
        return err(StatusCode::PRECONDITION_FAILED, "Invalid tenant name");
    }
    let mut info = match tenant_body(&svc, &body).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    if info.allowed_clusters.is_empty() {
        info.allowed_clusters.insert(svc.cfg.cluster.clone());
    }
    match svc
        .meta
        .put_json(&keys::tenant(&t), &info, Expected::Absent)
        .await
    {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(MetaError::BadVersion { .. }) => err(StatusCode::CONFLICT, "Tenant already exists"),
        Err(e) => meta_err(e),
    }
}

async fn update_tenant(
    State(svc): Svc,
    Path(t): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let info = match tenant_body(&svc, &body).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let res = svc
        .meta
        .update_json::<TenantInfo, _, Stop>(&keys::tenant(&t), |cur| match cur {
            Some(_) => Ok(info.clone()),
            None => Err(Stop::Reply(err(
                StatusCode::NOT_FOUND,
                "Tenant does not exist",
            ))),
        })
        .await;
    answered(res)
}

/// Deletes an empty tenant (409 while it has namespaces).
async fn delete_tenant(State(svc): Svc, Path(t): Path<String>) -> Response {
    let key = keys::tenant(&t);
    let rec = match svc.meta.get(&key).await {
        Ok(Some(r)) => r,
        Ok(None) => return err(StatusCode::NOT_FOUND, "Tenant does not exist"),
        Err(e) => return meta_err(e),
    };
    match svc.meta.children(&key).await {
        Ok(ns) if !ns.is_empty() => {
            return err(StatusCode::CONFLICT, "The tenant still has namespaces");
        }
        Ok(_) => {}
        Err(e) => return meta_err(e),
    }
    match svc.meta.delete(&key, Expected::Version(rec.version)).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(MetaError::BadVersion { .. }) => {
            err(StatusCode::CONFLICT, "The tenant changed meanwhile")
        }
        Err(MetaError::NotFound(_)) => err(StatusCode::NOT_FOUND, "Tenant does not exist"),
        Err(e) => meta_err(e),
    }
}

fn broker_id(svc: &BrokerService) -> String {
    format!("{}:{}", svc.cfg.advertised_address, svc.cfg.web_port)
}

/// The live brokers: this one alone, or the cluster's registrations.
async fn live_brokers(svc: &BrokerService) -> Response {
    match svc.ownership.live_brokers().await {
        Ok(Some(names)) => axum::Json(names).into_response(),
        Ok(None) => axum::Json(json!([broker_id(svc)])).into_response(),
        Err(e) => client_err(e),
    }
}

async fn brokers(State(svc): Svc) -> Response {
    live_brokers(&svc).await
}

async fn cluster_brokers(State(svc): Svc, Path(c): Path<String>) -> Response {
    if c != svc.cfg.cluster {
        return err(StatusCode::NOT_FOUND, "Cluster does not exist");
    }
    live_brokers(&svc).await
}

async fn leader(State(svc): Svc) -> Response {
    match svc.ownership.leader().await {
        Ok(Some(l)) => axum::Json(l).into_response(),
        Ok(None) => {
            axum::Json(json!({"serviceUrl": svc.cfg.web_url(), "brokerId": broker_id(&svc)}))
                .into_response()
        }
        Err(e) => client_err(e),
    }
}

/// The bundles this broker owns, by namespace.
async fn owned_namespaces(State(svc): Svc, Path((c, b)): Path<(String, String)>) -> Response {
    if c != svc.cfg.cluster {
        return err(StatusCode::NOT_FOUND, "Cluster does not exist");
    }
    let owned = |bundles: Vec<String>| {
        let out: serde_json::Map<String, Value> = bundles
            .into_iter()
            .map(|k| {
                (
                    k,
                    json!({"broker_assignment": "shared", "is_controlled": false, "is_active": true}),
                )
            })
            .collect();
        axum::Json(Value::Object(out)).into_response()
    };
    // in a cluster: any live broker's, from the ownership records
    match svc.ownership.bundles_of_broker(&b).await {
        Ok(Some(bundles)) => {
            return match svc.ownership.live_brokers().await {
                Ok(Some(live)) if !live.contains(&b) => {
                    err(StatusCode::NOT_FOUND, "Broker not found")
                }
                Ok(_) => owned(bundles),
                Err(e) => client_err(e),
            };
        }
        Ok(None) => {}
        Err(e) => return client_err(e),
    }
    if b != broker_id(&svc) {
        return err(StatusCode::NOT_FOUND, "Broker not found");
    }
    let tenants = match svc.meta.children(keys::TENANTS).await {
        Ok(t) => t,
        Err(e) => return meta_err(e),
    };
    let mut out = Vec::new();
    for t in tenants {
        let namespaces = match svc.meta.children(&keys::tenant(&t)).await {
            Ok(n) => n,
            Err(e) => return meta_err(e),
        };
        for ns in namespaces {
            let bundles = match bundles_of(&svc, &t, &ns).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let namespace = format!("{t}/{ns}");
            for range in bundles.ranges() {
                if svc.ownership.owns_bundle(&namespace, &range) {
                    out.push(format!("{t}/{ns}/{range}"));
                }
            }
        }
    }
    owned(out)
}
