//! Topic administration at Pulsar's `/admin/v2/{persistent,non-persistent}/...` paths:
//! create, delete, unload, list partitioned topics, subscriptions (create, delete, skip,
//! reset, expire, peek), last message id, partitioned stats and topic grants.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use magnetar_managed_ledger::position::Position;
use magnetar_protocol::entry as pentry;
use magnetar_protocol::proto::command_subscribe::SubType;
use serde::Deserialize;
use serde_json::{Value, json};

use super::common::{
    Force, Svc, client_err, err, meta_err, object_at, object_body, object_in, update_record,
};
use super::stats::{topic_internal_stats, topic_stats};
use crate::authz::check_actions;
use crate::cluster::keys;
use crate::names::TopicName;
use crate::service::BrokerService;
use crate::topic::subscription::Subscription;
use crate::topic::{SubscribeOpts, Topic};

type TopicPath = Path<(String, String, String, String)>;

type SubPath = Path<(String, String, String, String, String)>;

/// A subscription path with one more segment (a count, a time, a position).
type SubArgPath = Path<(String, String, String, String, String, String)>;

pub(super) fn routes() -> Router<Arc<BrokerService>> {
    let base = "/admin/v2/{domain}/{tenant}/{ns}/{topic}";
    Router::new()
        .route(
            "/admin/v2/{domain}/{tenant}/{ns}/partitioned",
            get(list_partitioned),
        )
        .route(base, put(create_topic).delete(delete_topic))
        .route(&format!("{base}/unload"), put(unload))
        .route(&format!("{base}/lastMessageId"), get(last_message_id))
        .route(&format!("{base}/subscriptions"), get(subscriptions))
        .route(
            &format!("{base}/subscription/{{sub}}"),
            put(create_subscription).delete(delete_subscription),
        )
        .route(
            &format!("{base}/subscription/{{sub}}/skip/{{n}}"),
            post(skip),
        )
        .route(
            &format!("{base}/subscription/{{sub}}/skip_all"),
            post(skip_all),
        )
        .route(
            &format!("{base}/subscription/{{sub}}/resetcursor/{{ts}}"),
            post(reset_by_time),
        )
        .route(
            &format!("{base}/subscription/{{sub}}/resetcursor"),
            post(reset_by_id),
        )
        .route(
            &format!("{base}/subscription/{{sub}}/expireMessages/{{secs}}"),
            post(expire),
        )
        .route(
            &format!("{base}/all_subscription/expireMessages/{{secs}}"),
            post(expire_all),
        )
        .route(
            &format!("{base}/subscription/{{sub}}/position/{{n}}"),
            get(peek),
        )
        .route(&format!("{base}/stats"), get(stats))
        .route(&format!("{base}/partitioned-stats"), get(partitioned_stats))
        .route(
            &format!("{base}/partitioned-internalStats"),
            get(partitioned_internal_stats),
        )
        .route(&format!("{base}/permissions"), get(get_permissions))
        .route(
            &format!("{base}/permissions/{{role}}"),
            post(grant).delete(revoke),
        )
}

fn parse(domain: &str, tenant: &str, ns: &str, topic: &str) -> Result<TopicName, Response> {
    if domain != "persistent" && domain != "non-persistent" {
        return Err(err(StatusCode::NOT_FOUND, "unknown topic domain"));
    }
    TopicName::parse(&format!("{domain}://{tenant}/{ns}/{topic}"))
        .map_err(|e| err(StatusCode::PRECONDITION_FAILED, e.to_string()))
}

async fn namespace_must_exist(svc: &BrokerService, t: &TopicName) -> Result<(), Response> {
    match svc
        .meta
        .get(&keys::namespace(&t.tenant, &t.namespace))
        .await
    {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(err(StatusCode::NOT_FOUND, "Namespace does not exist")),
        Err(e) => Err(meta_err(e)),
    }
}

/// Stats of a persistent or a non-persistent topic.
async fn stats(State(svc): Svc, Path(p): TopicPath) -> Response {
    match loaded(&svc, &p).await {
        Ok(topic) => axum::Json(topic_stats(&topic).await).into_response(),
        Err(r) => r,
    }
}

/// The loaded topic a path names (404 if it does not exist).
async fn loaded(
    svc: &BrokerService,
    path: &(String, String, String, String),
) -> Result<Arc<Topic>, Response> {
    let t = parse(&path.0, &path.1, &path.2, &path.3)?;
    svc.topic(&t, false).await.map_err(client_err)
}

/// The topic and one of its subscriptions (404 for either missing).
async fn subscription(
    svc: &BrokerService,
    (domain, tenant, ns, topic, sub): &(String, String, String, String, String),
) -> Result<(Arc<Topic>, Arc<Subscription>), Response> {
    let t = loaded(
        svc,
        &(domain.clone(), tenant.clone(), ns.clone(), topic.clone()),
    )
    .await?;
    let s = t
        .subscriptions
        .lock()
        .get(sub)
        .cloned()
        .ok_or_else(|| err(StatusCode::NOT_FOUND, "Subscription not found"))?;
    Ok((t, s))
}

async fn list_partitioned(
    State(svc): Svc,
    Path((domain, tenant, ns)): Path<(String, String, String)>,
) -> Response {
    let probe = match parse(&domain, &tenant, &ns, "x") {
        Ok(t) => t,
        Err(r) => return r,
    };
    if let Err(r) = namespace_must_exist(&svc, &probe).await {
        return r;
    }
    match svc
        .meta
        .children(&keys::partitioned_topics(&tenant, &ns, &domain))
        .await
    {
        Ok(names) => axum::Json(
            names
                .into_iter()
                .map(|n| format!("{domain}://{tenant}/{ns}/{n}"))
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => meta_err(e),
    }
}

/// Creates a non-partitioned topic (409 if it, or a partitioned topic of that name, exists).
async fn create_topic(State(svc): Svc, Path(p): TopicPath) -> Response {
    let t = match parse(&p.0, &p.1, &p.2, &p.3) {
        Ok(t) => t,
        Err(r) => return r,
    };
    if let Err(r) = namespace_must_exist(&svc, &t).await {
        return r;
    }
    match svc.partitions(&t).await {
        Ok(Some(_)) => {
            return err(
                StatusCode::CONFLICT,
                "A partitioned topic with this name exists",
            );
        }
        Ok(None) => {}
        Err(e) => return client_err(e),
    }
    match svc.topic_exists(&t).await {
        Ok(true) => return err(StatusCode::CONFLICT, "This topic already exists"),
        Ok(false) => {}
        Err(e) => return client_err(e),
    }
    match svc.topic(&t, true).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => client_err(e),
    }
}

async fn delete_topic(State(svc): Svc, Path(p): TopicPath, Query(q): Query<Force>) -> Response {
    let t = match parse(&p.0, &p.1, &p.2, &p.3) {
        Ok(t) => t,
        Err(r) => return r,
    };
    match svc.delete_topic(&t, q.force).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => client_err(e),
    }
}

async fn unload(State(svc): Svc, Path(p): TopicPath) -> Response {
    let t = match parse(&p.0, &p.1, &p.2, &p.3) {
        Ok(t) => t,
        Err(r) => return r,
    };
    match svc.topic_exists(&t).await {
        Ok(true) => {
            svc.unload(&t.to_string()).await;
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(false) => err(StatusCode::NOT_FOUND, "Topic not found"),
        Err(e) => client_err(e),
    }
}

fn message_id(p: Position, partition: i32) -> Value {
    json!({"ledgerId": p.ledger, "entryId": p.entry, "partitionIndex": partition})
}

async fn last_message_id(State(svc): Svc, Path(p): TopicPath) -> Response {
    match loaded(&svc, &p).await {
        Ok(t) => axum::Json(message_id(t.ml.last_confirmed(), t.partition)).into_response(),
        Err(r) => r,
    }
}

async fn subscriptions(State(svc): Svc, Path(p): TopicPath) -> Response {
    match loaded(&svc, &p).await {
        Ok(t) => {
            let mut names: Vec<String> = t.subscriptions.lock().keys().cloned().collect();
            names.sort();
            axum::Json(names).into_response()
        }
        Err(r) => r,
    }
}

/// A message id in a request body: `{"ledgerId", "entryId"}` plus optional extras.
#[derive(Deserialize)]
struct IdBody {
    #[serde(rename = "ledgerId")]
    ledger_id: i64,
    #[serde(rename = "entryId")]
    entry_id: i64,
    #[serde(rename = "isExcluded", default)]
    excluded: bool,
}

/// The mark-delete position that makes delivery start at `id` (after it if `excluded`).
/// Pulsar's sentinels: (-1, -1) is earliest, (i64::MAX, i64::MAX) latest.
fn start_before(t: &Topic, id: &IdBody) -> Position {
    let ml = &t.ml;
    if id.ledger_id < 0 {
        ml.before_first()
    } else if id.ledger_id == i64::MAX {
        ml.last_confirmed()
    } else {
        let p = Position::new(id.ledger_id as u64, id.entry_id);
        if id.excluded {
            p.min(ml.last_confirmed())
        } else {
            ml.start_before(p)
        }
    }
}

fn id_body(body: &[u8]) -> Result<Option<IdBody>, Response> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    object_body(body, "message id")
        .map(Some)
        .map_err(|m| err(StatusCode::BAD_REQUEST, m))
}

/// Creates a durable subscription starting at the message id in the body (latest if none).
async fn create_subscription(
    State(svc): Svc,
    Path(p): SubPath,
    body: axum::body::Bytes,
) -> Response {
    let id = match id_body(&body) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let topic = match loaded(&svc, &(p.0.clone(), p.1.clone(), p.2.clone(), p.3.clone())).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let sub = &p.4;
    if sub.is_empty() || sub.contains('/') {
        return err(StatusCode::PRECONDITION_FAILED, "invalid subscription name");
    }
    if topic.subscriptions.lock().contains_key(sub) {
        return err(
            StatusCode::CONFLICT,
            "Subscription already exists for topic",
        );
    }
    let opts = SubscribeOpts {
        durable: true,
        initial_earliest: id.as_ref().is_some_and(|i| i.ledger_id < 0),
        start: None,
    };
    let s = match topic.subscription(sub, SubType::Exclusive, &opts).await {
        Ok(s) => s,
        Err(e) => return client_err(e.into()),
    };
    if let Some(id) = id.filter(|i| i.ledger_id >= 0 && i.ledger_id != i64::MAX) {
        let md = start_before(&topic, &id);
        if let Err(e) = topic.reset_subscription(&s, md).await {
            return err(StatusCode::INTERNAL_SERVER_ERROR, e);
        }
    } else if let Err(e) = s.cursor.flush().await {
        return err(StatusCode::INTERNAL_SERVER_ERROR, e);
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn delete_subscription(
    State(svc): Svc,
    Path(p): SubPath,
    Query(q): Query<Force>,
) -> Response {
    let (topic, s) = match subscription(&svc, &p).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let consumers = s.consumers();
    if !consumers.is_empty() {
        if !q.force {
            return err(
                StatusCode::PRECONDITION_FAILED,
                "Subscription has active connected consumers",
            );
        }
        for c in s.detach_consumers() {
            c.conn
                .send(magnetar_protocol::commands::close_consumer(c.consumer_id));
        }
    }
    match topic.remove_subscription(&s.name).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => client_err(e.into()),
    }
}

/// The topic and subscription a path names, with its last segment parsed as `T` and
/// accepted by `ok` (412 saying `what` it must be otherwise).
async fn with_arg<T: std::str::FromStr>(
    svc: &BrokerService,
    (domain, tenant, ns, topic, sub, arg): (String, String, String, String, String, String),
    what: &str,
    ok: impl Fn(&T) -> bool,
) -> Result<(Arc<Topic>, Arc<Subscription>, T), Response> {
    let arg = arg
        .parse::<T>()
        .ok()
        .filter(|a| ok(a))
        .ok_or_else(|| err(StatusCode::PRECONDITION_FAILED, what.to_string()))?;
    let (topic, s) = subscription(svc, &(domain, tenant, ns, topic, sub)).await?;
    Ok((topic, s, arg))
}

async fn skip(State(svc): Svc, Path(p): SubArgPath) -> Response {
    let (topic, s, n) =
        match with_arg::<usize>(&svc, p, "the count must be a non-negative number", |_| true).await
        {
            Ok(x) => x,
            Err(r) => return r,
        };
    topic.skip(&s, n);
    flushed(&s).await
}

async fn skip_all(State(svc): Svc, Path(p): SubPath) -> Response {
    let (topic, s) = match subscription(&svc, &p).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    s.ack_cumulative(topic.ml.last_confirmed());
    flushed(&s).await
}

/// 204 once the subscription's cursor is durable.
async fn flushed(s: &Subscription) -> Response {
    match s.cursor.flush().await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn reset_by_time(State(svc): Svc, Path(p): SubArgPath) -> Response {
    let what = "the timestamp must be milliseconds since the epoch";
    let (topic, s, ts) = match with_arg::<u64>(&svc, p, what, |_| true).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let md = match topic.ml.start_before_time(ts, 0).await {
        Ok(p) => p,
        Err(e) => return err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    match topic.reset_subscription(&s, md).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn reset_by_id(State(svc): Svc, Path(p): SubPath, body: axum::body::Bytes) -> Response {
    let id = match id_body(&body) {
        Ok(Some(id)) => id,
        Ok(None) => return err(StatusCode::BAD_REQUEST, "give the message id to reset to"),
        Err(r) => return r,
    };
    let (topic, s) = match subscription(&svc, &p).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let md = start_before(&topic, &id);
    match topic.reset_subscription(&s, md).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

const AGE: &str = "the age must be a number of seconds";

async fn expire(State(svc): Svc, Path(p): SubArgPath) -> Response {
    let (topic, s, secs) = match with_arg::<u64>(&svc, p, AGE, |_| true).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let age = std::time::Duration::from_secs(secs);
    match topic.expire_subscription(&s, age).await {
        Ok(_) => flushed(&s).await,
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn expire_all(
    State(svc): Svc,
    Path((domain, tenant, ns, topic, secs)): Path<(String, String, String, String, String)>,
) -> Response {
    let Ok(age) = secs.parse::<u64>().map(std::time::Duration::from_secs) else {
        return err(StatusCode::PRECONDITION_FAILED, AGE);
    };
    let topic = match loaded(&svc, &(domain, tenant, ns, topic)).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    match topic.expire_older_than(age).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The `n`th unacknowledged entry of a subscription: its payload as the body, its metadata
/// as `X-Pulsar-*` headers (a batch comes whole, as Pulsar sends it).
async fn peek(State(svc): Svc, Path(p): SubArgPath) -> Response {
    let what = "the position counts from 1";
    let (topic, s, n) = match with_arg::<usize>(&svc, p, what, |n| *n >= 1).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let (pos, raw) = match topic.peek(&s, n).await {
        Ok(Some(x)) => x,
        Ok(None) => return err(StatusCode::NOT_FOUND, "No message at that position"),
        Err(e) => return err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let entry = match pentry::parse_entry(raw) {
        Ok(e) => e,
        Err(e) => {
            return err(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("stored entry unreadable: {e}"),
            );
        }
    };
    let m = &entry.metadata;
    let mut headers = HeaderMap::new();
    let mut put = |name: String, value: String| {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            headers.insert(n, v);
        }
    };
    put(
        "X-Pulsar-Message-ID".into(),
        format!("{}:{}", pos.ledger, pos.entry),
    );
    put("X-Pulsar-publish-time".into(), m.publish_time.to_string());
    put("X-Pulsar-producer-name".into(), m.producer_name.clone());
    put("X-Pulsar-sequence-id".into(), m.sequence_id.to_string());
    if let Some(k) = &m.partition_key {
        put("X-Pulsar-partition-key".into(), k.clone());
    }
    if let Some(t) = m.event_time.filter(|t| *t > 0) {
        put("X-Pulsar-event-time".into(), t.to_string());
    }
    if let Some(b) = m.num_messages_in_batch {
        put("X-Pulsar-num-batch-message".into(), b.to_string());
        put(
            "X-Pulsar-batch-size".into(),
            entry.payload.len().to_string(),
        );
    }
    if let Some(c) = m.compression.filter(|c| *c != 0) {
        put("X-Pulsar-compression-type".into(), c.to_string());
    }
    for kv in &m.properties {
        put(format!("X-Pulsar-PROPERTY-{}", kv.key), kv.value.clone());
    }
    (headers, entry.payload).into_response()
}

/// A partitioned topic's partition count and its partitions that exist, loaded (a
/// partition not created yet is left out).
async fn partitions_of(
    svc: &BrokerService,
    p: &(String, String, String, String),
) -> Result<(u32, Vec<Arc<Topic>>), Response> {
    let t = parse(&p.0, &p.1, &p.2, &p.3)?;
    let n = match svc.partitions(&t).await.map_err(client_err)? {
        Some(n) => n,
        None => {
            return Err(err(
                StatusCode::NOT_FOUND,
                "Partitioned topic does not exist",
            ));
        }
    };
    let mut loaded = Vec::new();
    for i in 0..n {
        let pt = t.partition_name(i);
        if svc.topic_exists(&pt).await.map_err(client_err)? {
            loaded.push(svc.topic(&pt, false).await.map_err(client_err)?);
        }
    }
    Ok((n, loaded))
}

/// Stats of a partitioned topic: sums over its partitions, and each partition's own
/// stats under `partitions` when `perPartition` (default true).
async fn partitioned_stats(
    State(svc): Svc,
    Path(p): TopicPath,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let (n, topics) = match partitions_of(&svc, &p).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let per_partition = q.get("perPartition").is_none_or(|v| v != "false");
    let mut sums = serde_json::Map::new();
    let mut partitions = serde_json::Map::new();
    for topic in topics {
        let s = topic_stats(&topic).await;
        for key in [
            "msgRateIn",
            "msgThroughputIn",
            "msgRateOut",
            "msgThroughputOut",
            "msgInCounter",
            "bytesInCounter",
            "msgOutCounter",
            "bytesOutCounter",
            "storageSize",
        ] {
            let add = s[key].as_f64().unwrap_or(0.0);
            let cur = sums.get(key).and_then(Value::as_f64).unwrap_or(0.0);
            let v = if s[key].is_u64() {
                json!((cur + add) as u64)
            } else {
                json!(cur + add)
            };
            sums.insert(key.to_string(), v);
        }
        if per_partition {
            partitions.insert(topic.full.clone(), s);
        }
    }
    sums.insert("metadata".into(), json!({"partitions": n}));
    sums.insert("partitions".into(), Value::Object(partitions));
    axum::Json(Value::Object(sums)).into_response()
}

/// Each partition's storage view, under `partitions`.
async fn partitioned_internal_stats(State(svc): Svc, Path(p): TopicPath) -> Response {
    let (n, topics) = match partitions_of(&svc, &p).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let partitions: serde_json::Map<String, Value> = topics
        .iter()
        .map(|t| (t.full.clone(), topic_internal_stats(t)))
        .collect();
    axum::Json(json!({"metadata": {"partitions": n}, "partitions": partitions})).into_response()
}

/// A topic's grants: the namespace's, with the topic's own laid over them.
async fn get_permissions(State(svc): Svc, Path(p): TopicPath) -> Response {
    let t = match parse(&p.0, &p.1, &p.2, &p.3) {
        Ok(t) => t,
        Err(r) => return r,
    };
    match svc.auth_policies(&t.tenant, &t.namespace).await {
        Ok(a) => {
            let mut all = a.namespace_auth.clone();
            if let Some(own) = a.destination_auth.get(&t.to_string()) {
                for (role, actions) in own {
                    all.entry(role.clone())
                        .or_default()
                        .extend(actions.iter().cloned());
                }
            }
            axum::Json(all).into_response()
        }
        Err(e) => meta_err(e),
    }
}

/// Grants and revokes change the namespace's policies by compare-and-set, as Pulsar keeps
/// topic grants there.
async fn change_topic_grant(
    svc: &BrokerService,
    p: &(String, String, String, String),
    role: &str,
    actions: Option<Vec<String>>,
) -> Response {
    let t = match parse(&p.0, &p.1, &p.2, &p.3) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let actions = match actions.map(|a| check_actions(&a)).transpose() {
        Ok(a) => a,
        Err(m) => return err(StatusCode::PRECONDITION_FAILED, m),
    };
    let topic = t.to_string();
    let role = role.to_string();
    let key = keys::namespace(&t.tenant, &t.namespace);
    update_record(svc, &key, None, move |policies| {
        let grants = object_at(policies, "auth_policies")
            .and_then(|a| object_in(a, "destination_auth"))
            .and_then(|d| object_in(d, &topic));
        match (&actions, grants) {
            (Some(a), Some(g)) => {
                g.insert(role.clone(), json!(a));
            }
            (None, Some(g)) => {
                g.remove(&role);
            }
            _ => {}
        }
    })
    .await
}

async fn grant(
    State(svc): Svc,
    Path((domain, tenant, ns, topic, role)): Path<(String, String, String, String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let actions = match serde_json::from_slice::<Vec<String>>(&body) {
        Ok(a) => a,
        Err(e) => {
            return err(
                StatusCode::BAD_REQUEST,
                format!("the body must be a list of actions: {e}"),
            );
        }
    };
    change_topic_grant(&svc, &(domain, tenant, ns, topic), &role, Some(actions)).await
}

async fn revoke(
    State(svc): Svc,
    Path((domain, tenant, ns, topic, role)): Path<(String, String, String, String, String)>,
) -> Response {
    change_topic_grant(&svc, &(domain, tenant, ns, topic), &role, None).await
}
