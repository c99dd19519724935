//! Namespace administration beyond single policy fields: delete, topic listing, grants
//! (namespace and subscription), bundles (list, split, unload) and namespace unload.
//! Bundles are Pulsar's: hash ranges over the 32-bit CRC32 of a topic's full name, kept in
//! the namespace's policies as `bundles.boundaries`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post, put};
use magnetar_meta::{Expected, MetaError, MetadataStoreExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::topics::client_err;
use super::{
    NsPath, Stop, Svc, answered, err, meta_err, namespace_exists, namespace_record, object_at,
    object_body, object_in, update_policies, valid_namespace,
};
use crate::authz::AuthPolicies;
use crate::authz::check_actions;
use crate::names::TopicName;
use crate::service::{BrokerService, partitioned_key};

/// Bundles a namespace starts with (Pulsar's `defaultNumberOfNamespaceBundles`).
pub const DEFAULT_BUNDLES: u32 = 4;
/// The most bundles a namespace may be created with.
const MAX_BUNDLES: u64 = 1 << 16;

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

/// A namespace's bundles as Pulsar writes them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Bundles {
    pub boundaries: Vec<String>,
    #[serde(rename = "numBundles", default)]
    pub num_bundles: u32,
}

impl Bundles {
    /// `n` equal ranges over the hash space.
    pub fn even(n: u32) -> Bundles {
        let n = n.clamp(1, MAX_BUNDLES as u32);
        let step = (1u64 << 32) / n as u64;
        let mut b: Vec<u64> = (0..n as u64).map(|i| i * step).collect();
        b.push(0xffff_ffff);
        Bundles::from_bounds(&b)
    }

    fn from_bounds(b: &[u64]) -> Bundles {
        Bundles {
            boundaries: b.iter().map(|x| format!("0x{x:08x}")).collect(),
            num_bundles: b.len().saturating_sub(1) as u32,
        }
    }

    /// The bundles a namespace-creation body asks for: the default when absent, `numBundles`
    /// equal ranges when only a count is given (as Pulsar accepts), else the boundaries
    /// given, which must be increasing hex values.
    pub fn requested(v: Option<&Value>) -> Result<Bundles, String> {
        let Some(v) = v.filter(|v| !v.is_null()) else {
            return Ok(Bundles::even(DEFAULT_BUNDLES));
        };
        if v.get("boundaries").is_none() {
            return match v.get("numBundles").and_then(Value::as_u64) {
                Some(n @ 1..=MAX_BUNDLES) => Ok(Bundles::even(n as u32)),
                _ => Err(format!("numBundles must be 1..={MAX_BUNDLES}")),
            };
        }
        let b: Bundles =
            serde_json::from_value(v.clone()).map_err(|e| format!("bad bundles: {e}"))?;
        b.bounds()
            .map(|bounds| Bundles::from_bounds(&bounds))
            .ok_or_else(|| {
                "bundle boundaries must be increasing hex values up to 0xffffffff".into()
            })
    }

    /// The boundaries as numbers; None if they are not increasing hex values.
    fn bounds(&self) -> Option<Vec<u64>> {
        let b: Vec<u64> = self
            .boundaries
            .iter()
            .map(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
            .collect::<Option<_>>()?;
        (b.len() >= 2 && b.windows(2).all(|w| w[0] < w[1]) && b[b.len() - 1] <= 0xffff_ffff)
            .then_some(b)
    }

    /// Bundle names, `0xLOWER_0xUPPER`.
    pub fn ranges(&self) -> Vec<String> {
        self.boundaries
            .windows(2)
            .map(|w| format!("{}_{}", w[0], w[1]))
            .collect()
    }

    /// The bundle a hash falls in (the last range includes its upper bound).
    pub fn bundle_of(&self, hash: u32) -> Option<String> {
        let b = self.bounds()?;
        let h = hash as u64;
        let i = b
            .windows(2)
            .position(|w| w[0] <= h && (h < w[1] || w[1] == 0xffff_ffff))?;
        Some(format!("0x{:08x}_0x{:08x}", b[i], b[i + 1]))
    }

    /// These bundles with `name` cut in two at its midpoint.
    pub fn split(&self, name: &str) -> Result<Bundles, String> {
        let b = self
            .bounds()
            .ok_or("the stored bundle boundaries are invalid")?;
        let (lo, hi) =
            parse_range(name).ok_or_else(|| format!("{name:?} is not a bundle range"))?;
        let i = b
            .windows(2)
            .position(|w| w[0] == lo && w[1] == hi)
            .ok_or_else(|| format!("bundle {name} does not exist"))?;
        if hi - lo < 2 {
            return Err(format!("bundle {name} is too small to split"));
        }
        let mut nb = b.clone();
        nb.insert(i + 1, lo + (hi - lo) / 2);
        Ok(Bundles::from_bounds(&nb))
    }
}

fn parse_range(name: &str) -> Option<(u64, u64)> {
    let (a, b) = name.split_once('_')?;
    let p = |s: &str| u64::from_str_radix(s.strip_prefix("0x")?, 16).ok();
    Some((p(a)?, p(b)?))
}

/// The bundle hash of a topic: CRC32 (IEEE) of its full name, as Pulsar's default.
pub fn topic_hash(t: &TopicName) -> u32 {
    crc32fast::hash(t.to_string().as_bytes())
}

/// The bundles in a namespace's policies record; one created before bundles were recorded
/// has the default.
fn stored_bundles(policies: &Value) -> Result<Bundles, String> {
    match policies.get("bundles") {
        None | Some(Value::Null) => Ok(Bundles::even(DEFAULT_BUNDLES)),
        Some(b) => serde_json::from_value::<Bundles>(b.clone())
            .ok()
            .filter(|b| b.bounds().is_some())
            .ok_or_else(|| "stored bundles are invalid".to_string()),
    }
}

/// A namespace's bundles (404 if there is no such namespace).
pub async fn bundles_of(svc: &BrokerService, tenant: &str, ns: &str) -> Result<Bundles, Response> {
    let record = namespace_record(svc, tenant, ns).await?;
    stored_bundles(&record).map_err(|m| err(StatusCode::INTERNAL_SERVER_ERROR, m))
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
    let key = format!("/admin/policies/{tenant}/{ns}");
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
    unload_where(&svc, &tenant, &ns, |_| true).await;
    StatusCode::NO_CONTENT.into_response()
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
    unload_where(&svc, &tenant, &ns, |t| {
        bundles.bundle_of(topic_hash(t)).as_deref() == Some(bundle.as_str())
    })
    .await;
    StatusCode::NO_CONTENT.into_response()
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

#[derive(Deserialize, Default)]
pub(super) struct Force {
    #[serde(default)]
    pub force: bool,
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
        .children(&format!(
            "/admin/partitioned-topics/{tenant}/{ns}/persistent"
        ))
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
            match svc.meta.delete(&partitioned_key(&t), Expected::Any).await {
                Ok(()) | Err(MetaError::NotFound(_)) => {}
                Err(e) => return meta_err(e),
            }
        }
    }
    match svc
        .meta
        .delete(&format!("/admin/policies/{tenant}/{ns}"), Expected::Any)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bundles_cover_and_split() {
        let b = Bundles::even(4);
        assert_eq!(
            b.boundaries,
            [
                "0x00000000",
                "0x40000000",
                "0x80000000",
                "0xc0000000",
                "0xffffffff"
            ]
        );
        assert_eq!(b.bundle_of(0).unwrap(), "0x00000000_0x40000000");
        assert_eq!(b.bundle_of(u32::MAX).unwrap(), "0xc0000000_0xffffffff");
        assert_eq!(b.bundle_of(0x4000_0000).unwrap(), "0x40000000_0x80000000");
        let s = b.split("0x40000000_0x80000000").unwrap();
        assert_eq!(s.num_bundles, 5);
        assert_eq!(s.bundle_of(0x6000_0000).unwrap(), "0x60000000_0x80000000");
        assert!(b.split("0x40000000_0x90000000").is_err());
        assert!(b.split("junk").is_err());
        assert_eq!(Bundles::requested(None).unwrap().num_bundles, 4);
        assert_eq!(
            Bundles::requested(Some(&json!({"numBundles": 8}))).unwrap(),
            Bundles::even(8)
        );
        assert!(Bundles::requested(Some(&json!({"numBundles": 0}))).is_err());
        assert!(
            Bundles::requested(Some(
                &json!({"boundaries": ["0x10", "0x05"], "numBundles": 1})
            ))
            .is_err()
        );
        assert_eq!(
            Bundles::requested(Some(&json!({"boundaries": ["0x00000000", "0xffffffff"]})))
                .unwrap()
                .num_bundles,
            1,
            "the count follows the boundaries"
        );
        let one = Bundles::even(1);
        assert_eq!(one.ranges(), ["0x00000000_0xffffffff"]);
        assert_eq!(crc32fast::hash(b"123456789"), 0xcbf4_3926, "CRC32 IEEE");
    }
}
