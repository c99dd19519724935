//! The schema registry's admin API, at Pulsar's `/admin/v2/schemas/{tenant}/{ns}/{topic}/...`
//! paths and with its bodies: the latest schema or one version, every version, upload,
//! delete, and a compatibility check that changes nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::common::{Svc, client_err, err, namespace_exists, object_body};
use crate::names::TopicName;
use crate::schema::{self, SchemaInfo, SchemaType, Version};
use crate::service::BrokerService;

type SchemaPath = Path<(String, String, String)>;

pub(super) fn routes() -> Router<Arc<BrokerService>> {
    let base = "/admin/v2/schemas/{tenant}/{ns}/{topic}";
    Router::new()
        .route(
            &format!("{base}/schema"),
            get(latest).post(upload).delete(delete),
        )
        .route(&format!("{base}/schema/{{version}}"), get(one))
        .route(&format!("{base}/schemas"), get(all))
        .route(&format!("{base}/versions"), get(all))
        .route(&format!("{base}/compatibility"), post(compatibility))
        .route(&format!("{base}/version"), post(version_of))
}

/// An upload: Pulsar's `PostSchemaPayload`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    schema: String,
    #[serde(default)]
    properties: BTreeMap<String, String>,
}

async fn topic(
    svc: &BrokerService,
    (tenant, ns, topic): (String, String, String),
) -> Result<TopicName, Response> {
    namespace_exists(svc, &tenant, &ns).await?;
    TopicName::parse(&format!("persistent://{tenant}/{ns}/{topic}"))
        .map_err(|e| err(StatusCode::PRECONDITION_FAILED, e.to_string()))
}

fn payload(body: &[u8]) -> Result<SchemaInfo, Response> {
    let p: Payload =
        object_body(body, "schema payload").map_err(|e| err(StatusCode::BAD_REQUEST, e))?;
    let kind = SchemaType::parse(&p.kind).ok_or_else(|| {
        err(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("unknown schema type {:?}", p.kind),
        )
    })?;
    let data = if kind == SchemaType::KeyValue {
        key_value_from_json(&p.schema).map_err(|e| err(StatusCode::UNPROCESSABLE_ENTITY, e))?
    } else {
        p.schema.into_bytes()
    };
    Ok(SchemaInfo {
        kind,
        data,
        properties: p.properties,
    })
}

/// A KEY_VALUE schema's definition as the admin API writes it, `{"key": K, "value": V}`
/// (each a definition, as text or as JSON), in the binary layout clients send.
fn key_value_from_json(text: &str) -> Result<Vec<u8>, String> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| format!("a KEY_VALUE schema is {{\"key\": ..., \"value\": ...}}: {e}"))?;
    let half = |name: &str| -> Result<Vec<u8>, String> {
        match v.get(name) {
            Some(Value::String(s)) => Ok(s.clone().into_bytes()),
            Some(Value::Null) | None => Ok(Vec::new()),
            Some(other) => Ok(other.to_string().into_bytes()),
        }
    };
    Ok(schema::compat::key_value_data(
        &half("key")?,
        &half("value")?,
    ))
}

/// A schema's definition as the admin API shows it: text, and a KEY_VALUE's two halves as
/// `{"key": K, "value": V}`.
fn shown_data(info: &SchemaInfo) -> String {
    if info.kind == SchemaType::KeyValue
        && let Ok((k, v)) = schema::compat::key_value_parts(info)
    {
        let half = |h: &SchemaInfo| {
            serde_json::from_slice::<Value>(&h.data)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&h.data).into_owned()))
        };
        return json!({"key": half(&k), "value": half(&v)}).to_string();
    }
    String::from_utf8_lossy(&info.data).into_owned()
}

/// A version as Pulsar's `GetSchemaResponse` shows it.
fn shown(v: &Version) -> Value {
    json!({
        "version": v.version,
        "type": v.info.kind.name(),
        "timestamp": v.timestamp,
        "data": shown_data(&v.info),
        "properties": v.info.properties,
    })
}

fn no_schema(t: &TopicName) -> Response {
    err(StatusCode::NOT_FOUND, format!("{t} has no schema"))
}

async fn latest(State(svc): Svc, Path(p): SchemaPath) -> Response {
    let t = match topic(&svc, p).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    match schema::get(&svc.meta, &t, None).await {
        Ok(Some(v)) => axum::Json(shown(&v)).into_response(),
        Ok(None) => no_schema(&t),
        Err(e) => client_err(e),
    }
}

async fn one(
    State(svc): Svc,
    Path((tenant, ns, name, version)): Path<(String, String, String, String)>,
) -> Response {
    let t = match topic(&svc, (tenant, ns, name)).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let Ok(version) = version.parse::<u64>() else {
        return err(StatusCode::BAD_REQUEST, "a schema version is a number");
    };
    match schema::get(&svc.meta, &t, Some(version)).await {
        Ok(Some(v)) => axum::Json(shown(&v)).into_response(),
        Ok(None) => err(
            StatusCode::NOT_FOUND,
            format!("{t} has no schema version {version}"),
        ),
        Err(e) => client_err(e),
    }
}

async fn all(State(svc): Svc, Path(p): SchemaPath) -> Response {
    let t = match topic(&svc, p).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    match schema::versions(&svc.meta, &t).await {
        Ok(v) => axum::Json(json!({"getSchemaResponses": v.iter().map(shown).collect::<Vec<_>>()}))
            .into_response(),
        Err(e) => client_err(e),
    }
}

/// The topic a schema request names, the schema in its body and the namespace's policy.
async fn request(
    svc: &BrokerService,
    p: (String, String, String),
    body: &[u8],
) -> Result<(TopicName, SchemaInfo, schema::SchemaPolicy), Response> {
    let t = topic(svc, p).await?;
    let info = payload(body)?;
    let policy = svc.schema_policy(&t).await.map_err(client_err)?;
    Ok((t, info, policy))
}

async fn upload(State(svc): Svc, Path(p): SchemaPath, body: Bytes) -> Response {
    let (t, info, policy) = match request(&svc, p, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    match schema::add(&svc.meta, &t, &info, policy, true).await {
        Ok(v) => axum::Json(json!({"version": {"version": v}})).into_response(),
        Err(e) => client_err(e),
    }
}

async fn delete(State(svc): Svc, Path(p): SchemaPath) -> Response {
    let t = match topic(&svc, p).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    match schema::delete(&svc.meta, &t).await {
        Ok(Some(v)) => axum::Json(json!({"version": v})).into_response(),
        Ok(None) => no_schema(&t),
        Err(e) => client_err(e),
    }
}

/// Whether a schema could be uploaded, changing nothing.
async fn compatibility(State(svc): Svc, Path(p): SchemaPath, body: Bytes) -> Response {
    let (t, info, policy) = match request(&svc, p, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let strategy = policy.strategy.effective().name();
    match schema::check(&svc.meta, &t, &info, policy).await {
        Ok(_) => {
            axum::Json(json!({"isCompatibility": true, "schemaCompatibilityStrategy": strategy}))
                .into_response()
        }
        Err(crate::error::BrokerError::IncompatibleSchema(why)) => axum::Json(json!({
            "isCompatibility": false,
            "schemaCompatibilityStrategy": strategy,
            "reason": why,
        }))
        .into_response(),
        Err(e) => client_err(e),
    }
}

/// The version number of a schema the topic has.
async fn version_of(State(svc): Svc, Path(p): SchemaPath, body: Bytes) -> Response {
    let (t, info, _) = match request(&svc, p, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    match schema::versions(&svc.meta, &t).await {
        Ok(all) => match all.iter().find(|v| v.info == info) {
            Some(v) => axum::Json(json!({"version": v.version})).into_response(),
            None => err(StatusCode::NOT_FOUND, format!("{t} has no such schema")),
        },
        Err(e) => client_err(e),
    }
}
