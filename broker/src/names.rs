//! Topic and namespace names: parsing, validation and the keys they map to in meta.

use std::fmt;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("Invalid topic name: {name}: {reason}")]
pub struct NameError {
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Domain {
    Persistent,
    NonPersistent,
}

impl Domain {
    pub fn as_str(self) -> &'static str {
        match self {
            Domain::Persistent => "persistent",
            Domain::NonPersistent => "non-persistent",
        }
    }
}

/// A fully qualified topic name: `{domain}://{tenant}/{namespace}/{local}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName {
    pub domain: Domain,
    pub tenant: String,
    pub namespace: String,
    pub local: String,
}

const PARTITION_SUFFIX: &str = "-partition-";

/// Tenant, namespace and cluster names: what Pulsar accepts.
pub fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '=' | ':'))
}

impl TopicName {
    /// Parses the forms clients send: `name`, `tenant/ns/name` and full names.
    pub fn parse(name: &str) -> Result<TopicName, NameError> {
        let err = |reason: &str| NameError {
            name: name.to_string(),
            reason: reason.to_string(),
        };
        let (domain, rest) = if let Some(r) = name.strip_prefix("persistent://") {
            (Domain::Persistent, r)
        } else if let Some(r) = name.strip_prefix("non-persistent://") {
            (Domain::NonPersistent, r)
        } else if name.contains("://") {
            return Err(err("the domain must be persistent or non-persistent"));
        } else {
            match name.split('/').count() {
                1 => (Domain::Persistent, ""),
                3 => (Domain::Persistent, name),
                _ => {
                    return Err(err(
                        "expected `topic`, `tenant/namespace/topic` or a full name",
                    ));
                }
            }
        };
        let (tenant, namespace, local) = if rest.is_empty() {
            ("public", "default", name)
        } else {
            let mut parts = rest.splitn(3, '/');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(t), Some(n), Some(l)) => (t, n, l),
                _ => return Err(err("expected tenant/namespace/topic after the domain")),
            }
        };
        if !valid_segment(tenant) {
            return Err(err("bad tenant name"));
        }
        if !valid_segment(namespace) {
            return Err(err("bad namespace name"));
        }
        if local.is_empty() || local.len() > 1024 {
            return Err(err("the topic name must have 1 to 1024 characters"));
        }
        if local.contains('/') {
            return Err(err(
                "the topic name must not contain '/' (cluster-qualified v1 names are not supported)",
            ));
        }
        if local.chars().any(|c| c.is_control() || c == '%') {
            return Err(err(
                "the topic name must not contain control characters or '%'",
            ));
        }
        Ok(TopicName {
            domain,
            tenant: tenant.into(),
            namespace: namespace.into(),
            local: local.into(),
        })
    }

    pub fn namespace(&self) -> String {
        format!("{}/{}", self.tenant, self.namespace)
    }

    /// The partition index if this is `...-partition-N`.
    pub fn partition(&self) -> Option<u32> {
        let i = self.local.rfind(PARTITION_SUFFIX)?;
        self.local[i + PARTITION_SUFFIX.len()..].parse().ok()
    }

    /// The partitioned topic this partition belongs to.
    pub fn partitioned_parent(&self) -> Option<TopicName> {
        self.partition()?;
        let i = self.local.rfind(PARTITION_SUFFIX)?;
        Some(TopicName {
            local: self.local[..i].to_string(),
            ..self.clone()
        })
    }

    pub fn partition_name(&self, i: u32) -> TopicName {
        TopicName {
            local: format!("{}{PARTITION_SUFFIX}{i}", self.local),
            ..self.clone()
        }
    }

    /// `tenant/ns/domain/local`: the path used under meta prefixes.
    pub fn path(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.tenant,
            self.namespace,
            self.domain.as_str(),
            self.local
        )
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}/{}/{}",
            self.domain.as_str(),
            self.tenant,
            self.namespace,
            self.local
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn short_and_full_forms() {
        let t = TopicName::parse("my-topic").unwrap();
        assert_eq!(t.to_string(), "persistent://public/default/my-topic");
        let t = TopicName::parse("t/ns/x").unwrap();
        assert_eq!(t.to_string(), "persistent://t/ns/x");
        let t = TopicName::parse("non-persistent://a/b/c-partition-3").unwrap();
        assert_eq!(t.domain, Domain::NonPersistent);
        assert_eq!(t.partition(), Some(3));
        assert_eq!(t.partitioned_parent().unwrap().local, "c");
        assert_eq!(t.path(), "a/b/non-persistent/c-partition-3");
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in [
            "",
            "a/b",
            "http://a/b/c",
            "persistent://a/b",
            "persistent://a/b/",
            "persistent://a/cl/ns/t",
            "persistent://a b/ns/t",
            "bad\u{1}name",
            "x%2F",
        ] {
            assert!(TopicName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
