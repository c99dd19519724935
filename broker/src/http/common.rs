//! What every admin handler shares: Pulsar's error body, JSON object bodies, namespace
//! records read and changed by CAS, and the one mapping of broker errors to HTTP statuses.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use magnetar_meta::{MetaError, MetadataStoreExt};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::cluster::bundles::{Bundles, stored_bundles};
use crate::cluster::keys;
use crate::error::BrokerError;
use crate::names::{TopicName, valid_segment};
use crate::service::BrokerService;
use crate::topic::Topic;

pub(super) type Svc = State<Arc<BrokerService>>;

pub(super) fn err(status: StatusCode, reason: impl Into<String>) -> Response {
    (status, axum::Json(json!({"reason": reason.into()}))).into_response()
}

/// A request body that must be a JSON object of type `T`. serde alone would also read a
/// struct from an array (`[10, 10]`); Pulsar's bodies are objects, so those are refused too.
pub(super) fn object_body<T: serde::de::DeserializeOwned>(
    body: &[u8],
    what: &str,
) -> Result<T, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("bad {what}: {e}"))?;
    from_object(v, what)
}

/// [`object_body`] for a body already parsed.
pub(super) fn from_object<T: serde::de::DeserializeOwned>(
    v: Value,
    what: &str,
) -> Result<T, String> {
    if !v.is_object() {
        return Err(format!("{what} is a JSON object"));
    }
    serde_json::from_value(v).map_err(|e| format!("bad {what}: {e}"))
}

pub(super) type Object = serde_json::Map<String, Value>;

/// The object at `m[key]`, made an empty one first if it is absent or anything else.
pub(super) fn object_in<'a>(m: &'a mut Object, key: &str) -> Option<&'a mut Object> {
    let slot = m.entry(key.to_string()).or_insert(Value::Null);
    if !slot.is_object() {
        *slot = Value::Object(Object::new());
    }
    slot.as_object_mut()
}

/// [`object_in`] for a record; None only if `v` is not an object (records reach their
/// changes checked as objects).
pub(super) fn object_at<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Object> {
    v.as_object_mut().and_then(|m| object_in(m, key))
}

pub(super) fn meta_err(e: MetaError) -> Response {
    err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

pub(super) fn topic_name(tenant: &str, ns: &str, topic: &str) -> Result<TopicName, Response> {
    TopicName::parse(&format!("persistent://{tenant}/{ns}/{topic}"))
        .map_err(|e| err(StatusCode::PRECONDITION_FAILED, e.to_string()))
}

/// The topic a `{tenant}/{ns}/{topic}` path names, loaded (404 if it has no log).
pub(super) async fn path_topic(
    svc: &BrokerService,
    (tenant, ns, topic): &(String, String, String),
) -> Result<Arc<Topic>, Response> {
    let t = topic_name(tenant, ns, topic)?;
    match svc.topic_exists(&t).await {
        Ok(true) => {}
        Ok(false) => return Err(err(StatusCode::NOT_FOUND, "Topic not found")),
        Err(e) => return Err(err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
    svc.topic(&t, false)
        .await
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

pub(super) type NsPath = Path<(String, String)>;

pub(super) fn valid_namespace(tenant: &str, ns: &str) -> Result<(), Response> {
    if valid_segment(tenant) && valid_segment(ns) {
        Ok(())
    } else {
        Err(err(
            StatusCode::PRECONDITION_FAILED,
            "Invalid namespace name",
        ))
    }
}

/// A namespace's policies record, read once (412 for a bad name, 404 if there is none).
pub(super) async fn namespace_record(
    svc: &BrokerService,
    tenant: &str,
    ns: &str,
) -> Result<Value, Response> {
    valid_namespace(tenant, ns)?;
    match svc
        .meta
        .get_json::<Value>(&keys::namespace(tenant, ns))
        .await
    {
        Ok(Some(v)) => Ok(v.value),
        Ok(None) => Err(err(StatusCode::NOT_FOUND, "Namespace does not exist")),
        Err(e) => Err(meta_err(e)),
    }
}

pub(super) async fn namespace_exists(
    svc: &BrokerService,
    tenant: &str,
    ns: &str,
) -> Result<(), Response> {
    namespace_record(svc, tenant, ns).await.map(|_| ())
}

/// Read-modify-write of a namespace's policies, by compare-and-set (retried on conflict).
/// Takes effect for topics loaded afterwards.
pub(super) async fn update_policies(
    svc: &BrokerService,
    tenant: &str,
    ns: &str,
    change: impl Fn(&mut Value) + Send + Sync,
) -> Response {
    // an absent record is a 404 from the update itself: no read before it
    if let Err(r) = valid_namespace(tenant, ns) {
        return r;
    }
    let key = keys::namespace(tenant, ns);
    update_record(svc, &key, None, change).await
}

/// Why a read-modify-write of a record stopped: the store failed, or there is an answer.
pub(super) enum Stop {
    Meta(MetaError),
    Reply(Response),
}

/// 204 for a finished read-modify-write, else the answer it stopped with.
pub(super) fn answered<T>(res: Result<T, Stop>) -> Response {
    match res {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(Stop::Reply(r)) => r,
        Err(Stop::Meta(e)) => meta_err(e),
    }
}

/// Changes a JSON policies record by the store's compare-and-set loop. An absent record
/// starts as `absent` (None: 404); a stored value that is not an object is reported, not
/// indexed into.
pub(super) async fn update_record(
    svc: &BrokerService,
    key: &str,
    absent: Option<Value>,
    change: impl Fn(&mut Value) + Send + Sync,
) -> Response {
    let res = svc
        .meta
        .update_json::<Value, _, Stop>(key, |current| {
            let mut v = match current.or_else(|| absent.clone()) {
                Some(v) => v,
                None => {
                    return Err(Stop::Reply(err(
                        StatusCode::NOT_FOUND,
                        "Namespace does not exist",
                    )));
                }
            };
            if !v.is_object() {
                return Err(Stop::Reply(err(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the record at {key} is not a JSON object"),
                )));
            }
            change(&mut v);
            Ok(v)
        })
        .await;
    answered(res)
}

pub(super) type TopicPath = Path<(String, String, String)>;

/// The topic a path names, which must exist (topic policies are for existing topics).
pub(super) async fn existing_topic(
    svc: &BrokerService,
    path: &(String, String, String),
) -> Result<TopicName, Response> {
    let t = topic_name(&path.0, &path.1, &path.2)?;
    let partitioned = svc
        .partitions(&t)
        .await
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    match svc.topic_exists(&t).await {
        Ok(true) => Ok(t),
        Ok(false) if partitioned.is_some() => Ok(t),
        Ok(false) => Err(err(StatusCode::NOT_FOUND, "Topic not found")),
        Err(e) => Err(err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

/// One field of a topic's own policies (null when unset).
pub(super) async fn topic_policy_get(
    State(svc): Svc,
    Path(path): TopicPath,
    field: &str,
) -> Response {
    let t = match existing_topic(&svc, &path).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    match svc.meta.get_json::<Value>(&keys::topic_policies(&t)).await {
        Ok(v) => axum::Json(
            v.and_then(|v| v.value.get(field).cloned())
                .unwrap_or(Value::Null),
        )
        .into_response(),
        Err(e) => meta_err(e),
    }
}

/// Read-modify-write of a topic's policies, by compare-and-set (created when absent).
pub(super) async fn update_topic_policies(
    svc: &BrokerService,
    path: &(String, String, String),
    change: impl Fn(&mut Value) + Send + Sync,
) -> Response {
    let t = match existing_topic(svc, path).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    update_record(svc, &keys::topic_policies(&t), Some(json!({})), change).await
}

pub(super) async fn topic_policy_delete(
    State(svc): Svc,
    Path(path): TopicPath,
    field: &str,
) -> Response {
    update_topic_policies(&svc, &path, |p| {
        if let Some(o) = p.as_object_mut() {
            o.remove(field);
        }
    })
    .await
}

/// A BrokerError as an HTTP answer with Pulsar's status for it.
pub(super) fn client_err(e: BrokerError) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = err(status, e.to_string());
    if let BrokerError::ServedElsewhere { web_url, .. } = e {
        // `redirect_to_owner` completes the Location with the request's path
        r.extensions_mut().insert(Elsewhere(web_url));
    }
    r
}

/// The owner's web URL, on a 307 answer whose Location the router fills in.
#[derive(Clone)]
pub(super) struct Elsewhere(pub String);

/// Sends an admin request for a topic another broker owns there (307 keeps method and
/// body, as Pulsar's brokers do), to the same path and query.
pub(super) async fn redirect_to_owner(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let uri = req.uri().clone();
    let mut r = next.run(req).await;
    if let Some(Elsewhere(base)) = r.extensions_mut().remove::<Elsewhere>()
        && let Some(path) = uri.path_and_query()
        && let Ok(location) = axum::http::HeaderValue::from_str(&format!(
            "{}{}",
            base.trim_end_matches('/'),
            path.as_str()
        ))
    {
        r.headers_mut()
            .insert(axum::http::header::LOCATION, location);
    }
    r
}

/// A namespace's bundles (404 if there is no such namespace).
pub(super) async fn bundles_of(
    svc: &BrokerService,
    tenant: &str,
    ns: &str,
) -> Result<Bundles, Response> {
    let record = namespace_record(svc, tenant, ns).await?;
    stored_bundles(&record).map_err(|m| err(StatusCode::INTERNAL_SERVER_ERROR, m))
}

#[derive(Deserialize, Default)]
pub(super) struct Force {
    #[serde(default)]
    pub force: bool,
}
