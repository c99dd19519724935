//! Every metadata key the broker reads or writes, built here and nowhere else. The layout is
//! Pulsar's where Pulsar has one (`/admin/...`), so its field names and tooling habits carry
//! over; the logs' and cursors' records are the managed ledger's own.

use crate::names::TopicName;

/// Children: the cluster names.
pub const CLUSTERS: &str = "/admin/clusters";
/// Children: the tenant names (each tenant's record is its policies root).
pub const TENANTS: &str = "/admin/policies";

pub fn cluster(name: &str) -> String {
    format!("{CLUSTERS}/{name}")
}

/// Children: the live brokers, each a record bound to its session (`host:web port`).
pub const LIVE_BROKERS: &str = "/loadbalance/brokers";

pub fn live_broker(id: &str) -> String {
    format!("{LIVE_BROKERS}/{id}")
}

/// The leader broker's record, bound to its session (Pulsar's `LeaderBroker`).
pub const LEADER: &str = "/loadbalance/leader";

/// Prefix of the bundle owners' records.
const OWNERS: &str = "/namespace";

/// The owner of bundle `range` of `tenant/ns`: a record bound to the owner's session.
pub fn bundle_owner(tenant: &str, ns: &str, range: &str) -> String {
    format!("{OWNERS}/{tenant}/{ns}/{range}")
}

/// Children of `tenant` (None: of every tenant) or `tenant/ns`: what lies below in the
/// bundle owners' records (tenants, then namespaces, then ranges).
pub fn bundle_owners(under: Option<&str>) -> String {
    match under {
        Some(path) => format!("{OWNERS}/{path}"),
        None => OWNERS.to_string(),
    }
}

/// `tenant/ns/range` of a [`bundle_owner`] key.
pub fn bundle_of_owner_key(key: &str) -> Option<String> {
    key.strip_prefix(OWNERS)?
        .strip_prefix('/')
        .map(str::to_string)
}

/// A tenant's record; its children are its namespaces.
pub fn tenant(tenant: &str) -> String {
    format!("{TENANTS}/{tenant}")
}

/// A namespace's policies (bundles, grants and every namespace policy inside).
pub fn namespace(tenant: &str, ns: &str) -> String {
    format!("{TENANTS}/{tenant}/{ns}")
}

/// A topic's own policies, over its namespace's.
pub fn topic_policies(t: &TopicName) -> String {
    format!("/admin/topic-policies/{}", t.path())
}

/// A partitioned topic's record (its partition count).
pub fn partitioned_topic(t: &TopicName) -> String {
    format!("/admin/partitioned-topics/{}", t.path())
}

/// Children: the partitioned topics of a namespace in one domain.
pub fn partitioned_topics(tenant: &str, ns: &str, domain: &str) -> String {
    format!("/admin/partitioned-topics/{tenant}/{ns}/{domain}")
}

/// A topic's log.
pub fn managed_ledger(t: &TopicName) -> String {
    magnetar_managed_ledger::record::record_key(&t.path())
}

/// Children: the persistent topics of a namespace that have a log.
pub fn managed_ledgers(tenant: &str, ns: &str) -> String {
    magnetar_managed_ledger::record::record_key(&format!("{tenant}/{ns}/persistent"))
}

/// Children: a topic's durable subscriptions.
pub fn cursors(t: &TopicName) -> String {
    magnetar_managed_ledger::cursor::cursor_key(&t.path(), "")
        .trim_end_matches('/')
        .to_string()
}

/// The delayed-delivery index of the subscription whose cursor record is `cursor_key`.
pub fn delayed_index(cursor_key: &str) -> String {
    cursor_key.replacen("/cursors/", "/delayed/", 1)
}

/// A topic's schemas (Pulsar's path: persistent and non-persistent topics of one name share
/// them).
pub fn schemas(t: &TopicName) -> String {
    format!("/schemas/{}/{}/{}", t.tenant, t.namespace, t.local)
}

/// The compacted view of the topic whose path (`TopicName::path`) is `path`.
pub fn compaction(path: &str) -> String {
    format!("/compaction/{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_their_layout() {
        let t = TopicName::parse("persistent://a/b/c").unwrap();
        assert_eq!(namespace("a", "b"), "/admin/policies/a/b");
        let owner = bundle_owner("a", "b", "0x00000000_0xffffffff");
        assert_eq!(owner, "/namespace/a/b/0x00000000_0xffffffff");
        assert_eq!(
            bundle_of_owner_key(&owner).unwrap(),
            "a/b/0x00000000_0xffffffff"
        );
        assert_eq!(live_broker("h:8080"), "/loadbalance/brokers/h:8080");
        assert_eq!(LEADER, "/loadbalance/leader");
        assert_eq!(bundle_owners(Some("a/b")), "/namespace/a/b");
        assert!(owner.starts_with(&bundle_owners(Some("a/b"))));
        assert_eq!(managed_ledger(&t), "/managed-ledgers/a/b/persistent/c");
        assert_eq!(managed_ledgers("a", "b"), "/managed-ledgers/a/b/persistent");
        assert_eq!(cursors(&t), "/cursors/a/b/persistent/c");
        assert_eq!(
            delayed_index("/cursors/a/b/persistent/c/s"),
            "/delayed/a/b/persistent/c/s"
        );
        assert_eq!(compaction(&t.path()), "/compaction/a/b/persistent/c");
        assert_eq!(
            partitioned_topic(&t),
            "/admin/partitioned-topics/a/b/persistent/c"
        );
        assert_eq!(topic_policies(&t), "/admin/topic-policies/a/b/persistent/c");
        assert_eq!(schemas(&t), "/schemas/a/b/c");
    }
}
