//! Tiered storage's admin paths, as Pulsar has them: a topic's manual offload and its status
//! (`PUT/GET .../offload`), `offloadPolicies` of namespaces and topics, and the namespace's
//! threshold and deletion-lag fields, which also update its `offload_policies` (as Pulsar's
//! do) so the last one set is the one that holds.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use magnetar_managed_ledger::Position;
use magnetar_tiering::{Phase, Which};
use serde::Deserialize;
use serde_json::{Value, json};

use super::common::{
    NsPath, Svc, TopicPath, err, namespace_record, path_topic, topic_policy_delete,
    topic_policy_get, update_policies, update_topic_policies,
};
use crate::offload::check_policies;
use crate::service::BrokerService;

pub(super) fn routes() -> Router<Arc<BrokerService>> {
    let ns = "/admin/v2/namespaces/{tenant}/{ns}";
    let topic = "/admin/v2/persistent/{tenant}/{ns}/{topic}";
    Router::new()
        .route(
            &format!("{topic}/offload"),
            get(offload_status).put(trigger_offload),
        )
        .route(
            &format!("{topic}/offloadPolicies"),
            get(|s, p| topic_policy_get(s, p, "offloadPolicies"))
                .post(set_topic_policies)
                .delete(|s, p| topic_policy_delete(s, p, "offloadPolicies")),
        )
        .route(
            &format!("{ns}/offloadPolicies"),
            get(get_ns_policies)
                .post(set_ns_policies)
                .delete(remove_ns_policies),
        )
        .route(
            &format!("{ns}/removeOffloadPolicies"),
            delete(remove_ns_policies),
        )
        .route(
            &format!("{ns}/offloadThreshold"),
            get(|s, p| ns_number(s, p, "offload_threshold", -1))
                .put(|s, p, b| set_ns_number(s, p, b, Field::Threshold)),
        )
        .route(
            &format!("{ns}/offloadThresholdInSeconds"),
            get(|s, p| ns_number(s, p, "offload_threshold_in_seconds", -1))
                .put(|s, p, b| set_ns_number(s, p, b, Field::ThresholdSecs)),
        )
        .route(
            &format!("{ns}/offloadDeletionLagMs"),
            get(|s, p| ns_number(s, p, "offload_deletion_lag_ms", -1))
                .put(|s, p, b| set_ns_number(s, p, b, Field::Lag))
                .delete(remove_lag),
        )
}

/// Pulsar's `MessageIdImpl` as a request body.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageId {
    ledger_id: i64,
    entry_id: i64,
}

fn message_id(p: Option<Position>) -> Value {
    let (l, e) = p.map_or((-1, -1), |p| (p.ledger as i64, p.entry));
    json!({"ledgerId": l, "entryId": e, "partitionIndex": -1, "batchIndex": -1})
}

/// Offloads every closed ledger before the message id in the body (none: every closed
/// ledger), in the background; 409 while a run is going.
async fn trigger_offload(
    State(svc): Svc,
    Path(path): TopicPath,
    body: axum::body::Bytes,
) -> Response {
    let before = if body.iter().all(u8::is_ascii_whitespace) {
        Position::new(u64::MAX, i64::MAX)
    } else {
        match serde_json::from_slice::<MessageId>(&body) {
            Ok(m) if m.ledger_id >= 0 => Position::new(m.ledger_id as u64, m.entry_id),
            Ok(_) => return err(StatusCode::BAD_REQUEST, "ledgerId must be 0 or more"),
            Err(e) => {
                return err(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "the body must be a message id {{\"ledgerId\":..,\"entryId\":..}}: {e}"
                    ),
                );
            }
        }
    };
    let topic = match path_topic(&svc, &path).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let eff = match svc.topic_policies(&topic.name).await {
        Ok(e) => e,
        Err(e) => return err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let Some(location) = eff.offload.location else {
        return err(
            StatusCode::PRECONDITION_FAILED,
            "No offload driver is configured for this topic: set offloadPolicies on it or its \
             namespace, or start the broker with --managed-ledger-offload-driver",
        );
    };
    if svc.start_offload(&topic, location, Which::Before(before), true) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        err(StatusCode::CONFLICT, "Offload already running")
    }
}

/// Pulsar's `OffloadProcessStatus`.
async fn offload_status(State(svc): Svc, Path(path): TopicPath) -> Response {
    let topic = match path_topic(&svc, &path).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let s = topic.offloads.status();
    let status = match s.phase {
        Phase::NotRun => "NOT_RUN",
        Phase::Running => "RUNNING",
        Phase::Success => "SUCCESS",
        Phase::Error => "ERROR",
    };
    axum::Json(json!({
        "status": status,
        "lastError": s.last_error,
        "firstUnoffloadedMessage": message_id(s.first_unoffloaded),
    }))
    .into_response()
}

fn policies_body(body: &[u8]) -> Result<Value, Response> {
    let v = serde_json::from_slice::<Value>(body)
        .map_err(|e| err(StatusCode::BAD_REQUEST, format!("bad JSON: {e}")))?;
    check_policies(v).map_err(|m| err(StatusCode::PRECONDITION_FAILED, m))
}

async fn set_topic_policies(
    State(svc): Svc,
    Path(path): TopicPath,
    body: axum::body::Bytes,
) -> Response {
    match policies_body(&body) {
        Ok(v) => update_topic_policies(&svc, &path, |p| p["offloadPolicies"] = v.clone()).await,
        Err(r) => r,
    }
}

async fn get_ns_policies(State(svc): Svc, Path((tenant, ns)): NsPath) -> Response {
    match namespace_record(&svc, &tenant, &ns).await {
        Ok(v) => {
            axum::Json(v.get("offload_policies").cloned().unwrap_or(Value::Null)).into_response()
        }
        Err(r) => r,
    }
}

async fn set_ns_policies(
    State(svc): Svc,
    Path((tenant, ns)): NsPath,
    body: axum::body::Bytes,
) -> Response {
    match policies_body(&body) {
        Ok(v) => update_policies(&svc, &tenant, &ns, |p| p["offload_policies"] = v.clone()).await,
        Err(r) => r,
    }
}

async fn remove_ns_policies(State(svc): Svc, Path((tenant, ns)): NsPath) -> Response {
    update_policies(&svc, &tenant, &ns, |p| {
        if let Some(o) = p.as_object_mut() {
            o.remove("offload_policies");
        }
    })
    .await
}

/// A namespace number that Pulsar reports as -1 when unset.
async fn ns_number(
    State(svc): Svc,
    Path((tenant, ns)): NsPath,
    field: &str,
    unset: i64,
) -> Response {
    match namespace_record(&svc, &tenant, &ns).await {
        Ok(v) => axum::Json(v.get(field).cloned().unwrap_or(Value::from(unset))).into_response(),
        Err(r) => r,
    }
}

#[derive(Clone, Copy)]
enum Field {
    Threshold,
    ThresholdSecs,
    Lag,
}

impl Field {
    /// The namespace field, and its name in `offload_policies`.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Field::Threshold => ("offload_threshold", "managedLedgerOffloadThresholdInBytes"),
            Field::ThresholdSecs => (
                "offload_threshold_in_seconds",
                "managedLedgerOffloadThresholdInSeconds",
            ),
            Field::Lag => (
                "offload_deletion_lag_ms",
                "managedLedgerOffloadDeletionLagInMillis",
            ),
        }
    }
}

async fn set_ns_number(
    State(svc): Svc,
    Path((tenant, ns)): NsPath,
    body: axum::body::Bytes,
    f: Field,
) -> Response {
    let n = match serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.as_i64())
    {
        Some(n) if n >= -1 || matches!(f, Field::Lag) => n,
        Some(_) => return err(StatusCode::PRECONDITION_FAILED, "-1 (off), 0 or more"),
        None => return err(StatusCode::BAD_REQUEST, "the body must be a number"),
    };
    let (field, in_policies) = f.names();
    update_policies(&svc, &tenant, &ns, |p| {
        p[field] = Value::from(n);
        if let Some(o) = p.get_mut("offload_policies").and_then(Value::as_object_mut) {
            o.insert(in_policies.into(), Value::from(n));
        }
    })
    .await
}

async fn remove_lag(State(svc): Svc, Path((tenant, ns)): NsPath) -> Response {
    let (field, in_policies) = Field::Lag.names();
    update_policies(&svc, &tenant, &ns, |p| {
        if let Some(o) = p.as_object_mut() {
            o.remove(field);
        }
        if let Some(o) = p.get_mut("offload_policies").and_then(Value::as_object_mut) {
            o.remove(in_policies);
        }
    })
    .await
}
