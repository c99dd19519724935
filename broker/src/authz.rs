//! Authorization as Pulsar models it: super-users may do anything; a tenant's admin roles
//! administer the tenant and use its topics; other roles need a grant of `produce` or
//! `consume` on the namespace or the topic, and a subscription that lists roles admits only
//! those. Pure decisions over records already read: fetching tenants and policies from meta
//! is the service's job, and who the caller is comes from `auth`.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::{Deserialize, Serialize};

/// The actions a grant may name (Pulsar's `AuthAction`). Only produce and consume mean
/// anything to this broker; the others are stored so Pulsar tools round-trip.
pub const ACTIONS: [&str; 6] = [
    "produce",
    "consume",
    "functions",
    "sources",
    "sinks",
    "packages",
];

/// A tenant record as stored at `/admin/policies/{tenant}` (Pulsar's `TenantInfo`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TenantInfo {
    #[serde(rename = "adminRoles", default)]
    pub admin_roles: BTreeSet<String>,
    #[serde(rename = "allowedClusters", default)]
    pub allowed_clusters: BTreeSet<String>,
}

/// The `auth_policies` part of a namespace's policies (Pulsar's field names). Topic grants
/// live here too, keyed by the topic's full name, as Pulsar keeps them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuthPolicies {
    #[serde(default)]
    pub namespace_auth: BTreeMap<String, BTreeSet<String>>,
    #[serde(default)]
    pub destination_auth: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    #[serde(default)]
    pub subscription_auth_roles: BTreeMap<String, BTreeSet<String>>,
}

impl AuthPolicies {
    /// The grants inside a namespace's policies record (none if it has no `auth_policies`).
    pub fn from_policies(policies: &serde_json::Value) -> Result<AuthPolicies, serde_json::Error> {
        match policies.get("auth_policies") {
            None | Some(serde_json::Value::Null) => Ok(AuthPolicies::default()),
            Some(a) => serde_json::from_value(a.clone()),
        }
    }
}

/// What a caller wants to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicOp<'a> {
    /// Find it, read its metadata and stats: produce or consume suffices.
    Lookup,
    Produce,
    /// Subscribe, or act on a subscription (skip, reset, peek, unsubscribe).
    Consume(Option<&'a str>),
    /// Anything else (create, delete, policies, terminate, grants): tenant admins.
    Admin,
}

/// Who may do what, for one broker.
#[derive(Debug, Clone, Default)]
pub struct Authorizer {
    /// Off: every authenticated caller may do everything.
    pub enabled: bool,
    pub super_users: HashSet<String>,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

impl Authorizer {
    pub fn is_super_user(&self, role: Option<&str>) -> bool {
        !self.enabled || role.is_some_and(|r| self.super_users.contains(r))
    }

    /// Super-users and the tenant's admins.
    pub fn is_tenant_admin(&self, role: Option<&str>, tenant: Option<&TenantInfo>) -> bool {
        self.is_super_user(role)
            || role.is_some_and(|r| tenant.is_some_and(|t| t.admin_roles.contains(r)))
    }

    pub fn require_super_user(&self, role: Option<&str>) -> Result<(), Denied> {
        if self.is_super_user(role) {
            Ok(())
        } else {
            Err(Denied(format!("{} is not a super-user", describe(role))))
        }
    }

    pub fn require_tenant_admin(
        &self,
        role: Option<&str>,
        tenant_name: &str,
        tenant: Option<&TenantInfo>,
    ) -> Result<(), Denied> {
        if self.is_tenant_admin(role, tenant) {
            Ok(())
        } else {
            Err(Denied(format!(
                "{} is not an admin of tenant {tenant_name}",
                describe(role)
            )))
        }
    }

    /// Whether `role` may list a namespace's topics: admins, and roles granted anything on
    /// the namespace.
    pub fn allow_namespace_topics(
        &self,
        role: Option<&str>,
        namespace: &str,
        tenant: Option<&TenantInfo>,
        auth: &AuthPolicies,
    ) -> Result<(), Denied> {
        if self.is_tenant_admin(role, tenant) {
            return Ok(());
        }
        let granted = role
            .and_then(|r| auth.namespace_auth.get(r))
            .is_some_and(|a| a.contains("produce") || a.contains("consume"));
        if granted {
            Ok(())
        } else {
            Err(Denied(format!(
                "{} has no permission on namespace {namespace}",
                describe(role)
            )))
        }
    }

    /// Whether `role` may do `op` on `topic` (a partition is judged as its partitioned
    /// topic, whose full name `topic` must be).
    pub fn allow_topic(
        &self,
        role: Option<&str>,
        topic: &str,
        tenant: Option<&TenantInfo>,
        auth: &AuthPolicies,
        op: TopicOp<'_>,
    ) -> Result<(), Denied> {
        if self.is_tenant_admin(role, tenant) {
            return Ok(());
        }
        let Some(r) = role else {
            return Err(Denied("no role: authenticate first".into()));
        };
        let has = |action: &str| {
            auth.namespace_auth
                .get(r)
                .is_some_and(|a| a.contains(action))
                || auth
                    .destination_auth
                    .get(topic)
                    .and_then(|m| m.get(r))
                    .is_some_and(|a| a.contains(action))
        };
        let (ok, what) = match op {
            TopicOp::Lookup => (has("produce") || has("consume"), "look up"),
            TopicOp::Produce => (has("produce"), "produce to"),
            TopicOp::Consume(sub) => {
                if !has("consume") {
                    (false, "consume from")
                } else if let Some(roles) = sub
                    .and_then(|s| auth.subscription_auth_roles.get(s))
                    .filter(|roles| !roles.is_empty())
                    && !roles.contains(r)
                {
                    return Err(Denied(format!(
                        "role {r} may not use subscription {}",
                        sub.unwrap_or_default()
                    )));
                } else {
                    (true, "")
                }
            }
            TopicOp::Admin => (false, "administer"),
        };
        if ok {
            Ok(())
        } else {
            Err(Denied(format!("role {r} may not {what} {topic}")))
        }
    }
}

fn describe(role: Option<&str>) -> String {
    match role {
        Some(r) => format!("role {r}"),
        None => "an anonymous caller".into(),
    }
}

/// Checks a grant's actions: known names only, at least one.
pub fn check_actions(actions: &[String]) -> Result<BTreeSet<String>, String> {
    if actions.is_empty() {
        return Err("grant at least one action".into());
    }
    let mut out = BTreeSet::new();
    for a in actions {
        if !ACTIONS.contains(&a.as_str()) {
            return Err(format!(
                "unknown action {a:?}; actions are {}",
                ACTIONS.join(", ")
            ));
        }
        out.insert(a.clone());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn setup() -> (Authorizer, TenantInfo, AuthPolicies) {
        let authz = Authorizer {
            enabled: true,
            super_users: ["root".to_string()].into(),
        };
        let tenant = TenantInfo {
            admin_roles: ["boss".to_string()].into(),
            allowed_clusters: Default::default(),
        };
        let auth: AuthPolicies = serde_json::from_str(
            r#"{"namespace_auth": {"writer": ["produce"], "reader": ["consume"]},
                "destination_auth": {"persistent://t/ns/x": {"xreader": ["consume"]}},
                "subscription_auth_roles": {"locked": ["reader"]}}"#,
        )
        .unwrap();
        (authz, tenant, auth)
    }

    #[test]
    fn grants_decide() {
        let (a, t, p) = setup();
        let x = "persistent://t/ns/x";
        let y = "persistent://t/ns/y";
        let ok = |role, topic, op| a.allow_topic(Some(role), topic, Some(&t), &p, op).is_ok();
        assert!(ok("root", x, TopicOp::Admin));
        assert!(ok("boss", x, TopicOp::Admin));
        assert!(ok("boss", x, TopicOp::Produce));
        assert!(ok("writer", x, TopicOp::Produce));
        assert!(ok("writer", x, TopicOp::Lookup));
        assert!(!ok("writer", x, TopicOp::Consume(Some("s"))));
        assert!(!ok("writer", x, TopicOp::Admin));
        assert!(ok("reader", y, TopicOp::Consume(Some("s"))));
        assert!(!ok("reader", y, TopicOp::Produce));
        assert!(ok("xreader", x, TopicOp::Consume(None)));
        assert!(
            !ok("xreader", y, TopicOp::Lookup),
            "topic grants are per topic"
        );
        assert!(ok("reader", x, TopicOp::Consume(Some("locked"))));
        assert!(
            !ok("xreader", x, TopicOp::Consume(Some("locked"))),
            "a subscription listing roles admits only those"
        );
        assert!(!ok("stranger", x, TopicOp::Lookup));
        assert!(
            a.allow_topic(None, x, Some(&t), &p, TopicOp::Lookup)
                .is_err()
        );
    }

    #[test]
    fn admins_and_namespaces() {
        let (a, t, p) = setup();
        assert!(a.require_super_user(Some("root")).is_ok());
        assert!(a.require_super_user(Some("boss")).is_err());
        assert!(a.require_tenant_admin(Some("boss"), "t", Some(&t)).is_ok());
        assert!(a.require_tenant_admin(Some("boss"), "u", None).is_err());
        assert!(
            a.allow_namespace_topics(Some("reader"), "t/ns", Some(&t), &p)
                .is_ok()
        );
        assert!(
            a.allow_namespace_topics(Some("xreader"), "t/ns", Some(&t), &p)
                .is_err()
        );
        let off = Authorizer::default();
        assert!(off.require_super_user(None).is_ok(), "off: everyone may");
    }

    #[test]
    fn actions_are_checked() {
        assert!(check_actions(&["produce".into(), "consume".into()]).is_ok());
        assert!(check_actions(&[]).is_err());
        assert!(check_actions(&["delete".into()]).is_err());
    }
}
