//! The door every HTTP request passes: who the caller is (a bearer token, when
//! authentication is on) and whether that role may make this request. The rule for each
//! path lives here, in one table, rather than in each handler, so no endpoint can be added
//! unchecked: a path this table does not know needs a super-user.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use percent_encoding::percent_decode_str;

use super::common::err;
use crate::auth::Credentials;
use crate::authz::TopicOp;
use crate::error::BrokerError;
use crate::names::{TopicName, valid_segment};
use crate::service::BrokerService;

/// What a request needs of its caller.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Need {
    /// Health, metrics, the API document.
    Open,
    Authenticated,
    SuperUser,
    TenantAdmin(String),
    /// Listing a namespace's topics: admins or roles granted anything there.
    NamespaceTopics(String, String),
    Topic(TopicName, Op),
    /// The path names something invalid: refused (412) before any handler runs.
    BadName(String),
}

/// [`TopicOp`] with its subscription owned.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Op {
    Lookup,
    Consume(Option<String>),
    Admin,
}

/// The rule for a request, from its method and (still encoded) path.
pub(super) fn need(method: &Method, path: &str) -> Need {
    let segs: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let get = method == Method::GET;
    match s.as_slice() {
        ["metrics"] | ["admin", "v2", "brokers", "health"] | ["admin", "v2", "openapi.json"] => {
            Need::Open
        }
        ["admin", "v2", "clusters", cluster, ..] if !valid_segment(cluster) => {
            Need::BadName(format!("Invalid cluster name {cluster:?}"))
        }
        ["admin", "v2", "clusters", ..] if get => Need::Authenticated,
        ["admin", "v2", "clusters", ..] => Need::SuperUser,
        ["admin", "v2", "tenants", tenant] => match tenant_need(tenant) {
            Need::TenantAdmin(_) if !get => Need::SuperUser,
            other => other,
        },
        ["admin", "v2", "tenants", ..] | ["admin", "v2", "brokers", ..] => Need::SuperUser,
        ["admin", "v2", "namespaces", tenant] => tenant_need(tenant),
        ["admin", "v2", "namespaces", tenant, ns, "topics"] if get => ns_topics(tenant, ns),
        // which disks a namespace may use is the operator's call, not the tenant's
        [
            "admin",
            "v2",
            "namespaces",
            tenant,
            ns,
            "persistence",
            "bookieAffinity",
        ] if !get => match ns_topics(tenant, ns) {
            Need::NamespaceTopics(..) => Need::SuperUser,
            other => other,
        },
        ["admin", "v2", "namespaces", tenant, ns, ..] => match ns_topics(tenant, ns) {
            Need::NamespaceTopics(t, _) => Need::TenantAdmin(t),
            other => other,
        },
        [
            "admin",
            "v2",
            domain @ ("persistent" | "non-persistent"),
            tenant,
            ns,
            rest @ ..,
        ] => match rest {
            [] | ["partitioned"] if get => ns_topics(tenant, ns),
            [] | ["partitioned"] => match ns_topics(tenant, ns) {
                Need::NamespaceTopics(t, _) => Need::TenantAdmin(t),
                other => other,
            },
            [topic, rest @ ..] => topic_need(method, domain, tenant, ns, topic, rest),
        },
        // schemas: reading them is a lookup, changing them the topic's admin's
        ["admin", "v2", "schemas", tenant, ns, topic, ..] => {
            match parse_topic("persistent", tenant, ns, topic) {
                Ok(t) if get => Need::Topic(t, Op::Lookup),
                Ok(t) => Need::Topic(t, Op::Admin),
                Err(n) => n,
            }
        }
        ["lookup", "v2", "topic", domain, tenant, ns, topic, ..] => {
            match parse_topic(domain, tenant, ns, topic) {
                Ok(t) => Need::Topic(t, Op::Lookup),
                Err(n) => n,
            }
        }
        _ => Need::SuperUser,
    }
}

fn tenant_need(tenant: &str) -> Need {
    if valid_segment(tenant) {
        Need::TenantAdmin(tenant.to_string())
    } else {
        Need::BadName(format!("Invalid tenant name {tenant:?}"))
    }
}

fn ns_topics(tenant: &str, ns: &str) -> Need {
    if valid_segment(tenant) && valid_segment(ns) {
        Need::NamespaceTopics(tenant.to_string(), ns.to_string())
    } else {
        Need::BadName(format!("Invalid namespace name {tenant}/{ns}"))
    }
}

fn parse_topic(domain: &str, tenant: &str, ns: &str, topic: &str) -> Result<TopicName, Need> {
    TopicName::parse(&format!("{domain}://{tenant}/{ns}/{topic}"))
        .map_err(|e| Need::BadName(e.to_string()))
}

/// Pulsar's split: reading metadata and stats needs a lookup grant, subscription work a
/// consume grant (and the subscription's role list), everything else a tenant admin.
fn topic_need(
    method: &Method,
    domain: &str,
    tenant: &str,
    ns: &str,
    topic: &str,
    rest: &[&str],
) -> Need {
    let t = match parse_topic(domain, tenant, ns, topic) {
        Ok(t) => t,
        Err(n) => return n,
    };
    let get = method == Method::GET;
    let op = match rest {
        [
            "stats"
            | "internalStats"
            | "partitioned-stats"
            | "partitioned-internalStats"
            | "partitions"
            | "lastMessageId",
        ] if get => Op::Lookup,
        ["subscriptions"] if get => Op::Consume(None),
        ["subscription", sub, ..] => Op::Consume(Some(sub.to_string())),
        _ => Op::Admin,
    };
    Need::Topic(t, op)
}

/// The middleware: authenticates (401) and authorizes (403) before the handler runs.
pub(super) async fn gate(
    State(svc): State<Arc<BrokerService>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let need = need(req.method(), req.uri().path());
    if let Need::BadName(reason) = &need {
        return err(StatusCode::PRECONDITION_FAILED, reason.clone());
    }
    if need == Need::Open || svc.cfg.auth.is_none() {
        return next.run(req).await;
    }
    let header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let basic = header.strip_prefix("Basic ").map(|b| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .ok()
            .and_then(|raw| String::from_utf8(raw).ok())
            .unwrap_or_default()
    });
    let credentials = if let Some(t) = header.strip_prefix("Bearer ") {
        Credentials::Token(t)
    } else if let Some(b) = &basic {
        Credentials::Basic(b)
    } else {
        Credentials::None
    };
    // on the HTTPS port, the client certificate its handshake verified
    let cert_role = req
        .extensions()
        .get::<axum::extract::ConnectInfo<crate::tls::TlsPeer>>()
        .and_then(|c| c.0.cert_role.clone());
    let role = match svc.cfg.authenticate(credentials, cert_role.as_deref()) {
        Ok(id) => id.map(|i| i.role),
        Err(e) => {
            return err(
                StatusCode::UNAUTHORIZED,
                format!("Authentication required: {e}"),
            );
        }
    };
    match check(&svc, role.as_deref(), need).await {
        Ok(()) => next.run(req).await,
        Err(r) => r,
    }
}

async fn check(svc: &BrokerService, role: Option<&str>, need: Need) -> Result<(), Response> {
    let authz = &svc.cfg.authz;
    let refused = |e: BrokerError| {
        if matches!(e, BrokerError::Unauthorized(_)) {
            err(StatusCode::FORBIDDEN, e.to_string())
        } else {
            err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    };
    match need {
        Need::Open | Need::Authenticated => Ok(()),
        Need::BadName(reason) => Err(err(StatusCode::PRECONDITION_FAILED, reason)),
        Need::SuperUser => authz
            .require_super_user(role)
            .map_err(|d| err(StatusCode::FORBIDDEN, d.0)),
        Need::TenantAdmin(tenant) => {
            if authz.is_super_user(role) {
                return Ok(());
            }
            let info = svc
                .tenant_info(&tenant)
                .await
                .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            authz
                .require_tenant_admin(role, &tenant, info.as_ref())
                .map_err(|d| err(StatusCode::FORBIDDEN, d.0))
        }
        Need::NamespaceTopics(tenant, ns) => svc
            .authorize_namespace_topics(role, &tenant, &ns)
            .await
            .map_err(refused),
        Need::Topic(t, op) => {
            let op = match &op {
                Op::Lookup => TopicOp::Lookup,
                Op::Consume(s) => TopicOp::Consume(s.as_deref()),
                Op::Admin => TopicOp::Admin,
            };
            svc.authorize_topic(role, &t, op).await.map_err(refused)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn topic(name: &str, op: Op) -> Need {
        Need::Topic(TopicName::parse(name).unwrap(), op)
    }

    #[test]
    fn every_path_has_a_rule() {
        let g = Method::GET;
        let p = Method::POST;
        let cases = [
            (&g, "/metrics", Need::Open),
            (&g, "/admin/v2/brokers/health", Need::Open),
            (&g, "/admin/v2/clusters", Need::Authenticated),
            (&Method::PUT, "/admin/v2/clusters/x", Need::SuperUser),
            (&g, "/admin/v2/tenants", Need::SuperUser),
            (
                &g,
                "/admin/v2/tenants/acme",
                Need::TenantAdmin("acme".into()),
            ),
            (&Method::PUT, "/admin/v2/tenants/acme", Need::SuperUser),
            (&g, "/admin/v2/brokers", Need::SuperUser),
            (&g, "/admin/v2/bookies/racks-info", Need::SuperUser),
            (&p, "/admin/v2/bookies/racks-info/b:3181", Need::SuperUser),
            (
                &g,
                "/admin/v2/namespaces/acme/ns/persistence/bookieAffinity",
                Need::TenantAdmin("acme".into()),
            ),
            (
                &p,
                "/admin/v2/namespaces/acme/ns/persistence/bookieAffinity",
                Need::SuperUser,
            ),
            (
                &Method::DELETE,
                "/admin/v2/namespaces/acme/ns/persistence/bookieAffinity",
                Need::SuperUser,
            ),
            (
                &g,
                "/admin/v2/namespaces/acme",
                Need::TenantAdmin("acme".into()),
            ),
            (
                &g,
                "/admin/v2/namespaces/acme/ns/topics",
                Need::NamespaceTopics("acme".into(), "ns".into()),
            ),
            (
                &p,
                "/admin/v2/namespaces/acme/ns/permissions/bob",
                Need::TenantAdmin("acme".into()),
            ),
            (
                &g,
                "/admin/v2/persistent/acme/ns",
                Need::NamespaceTopics("acme".into(), "ns".into()),
            ),
            (
                &g,
                "/admin/v2/persistent/acme/ns/t/stats",
                topic("persistent://acme/ns/t", Op::Lookup),
            ),
            (
                &p,
                "/admin/v2/persistent/acme/ns/t/subscription/s%20x/skip/3",
                topic("persistent://acme/ns/t", Op::Consume(Some("s x".into()))),
            ),
            (
                &Method::DELETE,
                "/admin/v2/persistent/acme/ns/t",
                topic("persistent://acme/ns/t", Op::Admin),
            ),
            (
                &g,
                "/admin/v2/non-persistent/acme/ns/t/stats",
                topic("non-persistent://acme/ns/t", Op::Lookup),
            ),
            (
                &g,
                "/lookup/v2/topic/persistent/acme/ns/t",
                topic("persistent://acme/ns/t", Op::Lookup),
            ),
            (&g, "/something/else", Need::SuperUser),
        ];
        for (m, path, want) in cases {
            assert_eq!(need(m, path), want, "{m} {path}");
        }
        assert!(matches!(
            need(&g, "/admin/v2/persistent/ac%2Fme/ns/t/stats"),
            Need::BadName(_)
        ));
        assert!(matches!(
            need(&g, "/admin/v2/namespaces/a%00b"),
            Need::BadName(_)
        ));
    }
}
