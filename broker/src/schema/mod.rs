//! The schema registry, as Pulsar has it: each topic's schemas (a partitioned topic's
//! partitions share their parent's), versioned from 0, kept in one metadata record per topic
//! and changed only by compare-and-set; whether a new schema may join is decided by the
//! namespace's policies (`compat`). Knows nothing of connections or HTTP.

pub mod compat;
mod info;

pub use info::{SchemaInfo, SchemaType};

use std::collections::BTreeMap;

use base64::Engine;
use magnetar_meta::{Expected, MetaError, MetaStore, MetadataStoreExt};
use serde::{Deserialize, Serialize};

use crate::cluster::keys;
use crate::error::BrokerError;
use crate::names::TopicName;
use compat::Strategy;

/// Largest schema definition accepted.
pub const MAX_SCHEMA_BYTES: usize = 256 << 10;
/// Largest a topic's versions may grow together (the metadata store takes 1 MiB a record).
const MAX_RECORD_BYTES: usize = 900 << 10;

/// A stored version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub version: u64,
    pub info: SchemaInfo,
    /// Milliseconds since the epoch when it was added.
    pub timestamp: u64,
}

/// What the namespace says about a topic's schemas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaPolicy {
    pub strategy: Strategy,
    /// New schemas may be added by producers and consumers (not only by the admin API).
    pub auto_update: bool,
    /// Producers without a schema are refused on a topic that has one.
    pub validation_enforced: bool,
}

impl Default for SchemaPolicy {
    fn default() -> Self {
        SchemaPolicy {
            strategy: Strategy::Undefined,
            auto_update: true,
            validation_enforced: false,
        }
    }
}

impl SchemaPolicy {
    /// From a namespace's stored policies (Pulsar's field names).
    pub fn of_namespace(policies: &serde_json::Value) -> SchemaPolicy {
        let d = SchemaPolicy::default();
        SchemaPolicy {
            strategy: policies
                .get("schema_compatibility_strategy")
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .unwrap_or(d.strategy),
            auto_update: policies
                .get("is_allow_auto_update_schema")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(d.auto_update),
            validation_enforced: policies
                .get("schema_validation_enforced")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(d.validation_enforced),
        }
    }
}

/// The stored record of a topic's schemas.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    versions: Vec<Stored>,
    /// The number the next version gets: numbers are never reused, even after a delete.
    next: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    version: u64,
    #[serde(rename = "type")]
    kind: SchemaType,
    /// base64
    data: String,
    #[serde(default)]
    properties: BTreeMap<String, String>,
    timestamp: u64,
}

impl Stored {
    fn version(&self) -> Result<Version, BrokerError> {
        let data = base64::engine::general_purpose::STANDARD
            .decode(&self.data)
            .map_err(|_| BrokerError::Metadata("a stored schema is corrupt".into()))?;
        Ok(Version {
            version: self.version,
            info: SchemaInfo {
                kind: self.kind,
                data,
                properties: self.properties.clone(),
            },
            timestamp: self.timestamp,
        })
    }
}

/// A schema version as the binary protocol carries it: 8 bytes, big-endian.
pub fn version_bytes(v: u64) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

pub fn version_of_bytes(b: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(b).ok().map(u64::from_be_bytes)
}

/// The topic whose schemas `t` uses: a partition uses its parent's.
fn owner(t: &TopicName) -> TopicName {
    t.partitioned_parent().unwrap_or_else(|| t.clone())
}

/// Refuses definitions that are too large or do not parse.
pub fn validate(info: &SchemaInfo) -> Result<(), BrokerError> {
    if info.data.len() > MAX_SCHEMA_BYTES {
        return Err(BrokerError::InvalidSchema(format!(
            "the schema definition has {} bytes; at most {MAX_SCHEMA_BYTES} are accepted",
            info.data.len()
        )));
    }
    if info.kind == SchemaType::AutoConsume {
        return Err(BrokerError::InvalidSchema(
            "AUTO_CONSUME is a way to read, not a schema to store".into(),
        ));
    }
    compat::parse(info).map_err(BrokerError::InvalidSchema)?;
    Ok(())
}

/// Every version of `t`'s schemas, oldest first.
pub async fn versions(meta: &MetaStore, t: &TopicName) -> Result<Vec<Version>, BrokerError> {
    let Some(rec) = meta.get_json::<Record>(&keys::schemas(&owner(t))).await? else {
        return Ok(Vec::new());
    };
    rec.value.versions.iter().map(Stored::version).collect()
}

/// One version (the latest when `version` is None).
pub async fn get(
    meta: &MetaStore,
    t: &TopicName,
    version: Option<u64>,
) -> Result<Option<Version>, BrokerError> {
    let all = versions(meta, t).await?;
    Ok(match version {
        None => all.into_iter().last(),
        Some(v) => all.into_iter().find(|x| x.version == v),
    })
}

/// Whether `info` could join `t`'s schemas: its version if it is one of them already.
pub async fn check(
    meta: &MetaStore,
    t: &TopicName,
    info: &SchemaInfo,
    policy: SchemaPolicy,
) -> Result<Option<u64>, BrokerError> {
    validate(info)?;
    admits(versions(meta, t).await?, info, policy.strategy)
}

/// Whether `info` may follow `existing` under `strategy`: its version if it is one of them.
pub fn admits(
    existing: Vec<Version>,
    info: &SchemaInfo,
    strategy: Strategy,
) -> Result<Option<u64>, BrokerError> {
    if let Some(v) = existing.iter().find(|v| v.info == *info) {
        return Ok(Some(v.version));
    }
    let infos: Vec<SchemaInfo> = existing.into_iter().map(|v| v.info).collect();
    compat::check(&infos, info, strategy).map_err(BrokerError::IncompatibleSchema)?;
    Ok(None)
}

/// The version of `info` among `t`'s schemas, adding it if it is new and the policy lets it
/// in (`by_admin`: an upload, which auto-update does not restrict).
pub async fn add(
    meta: &MetaStore,
    t: &TopicName,
    info: &SchemaInfo,
    policy: SchemaPolicy,
    by_admin: bool,
) -> Result<u64, BrokerError> {
    validate(info)?;
    let key = keys::schemas(&owner(t));
    loop {
        let current = meta.get_json::<Record>(&key).await?;
        let (mut rec, expected) = match current {
            Some(v) => (v.value, Expected::Version(v.version)),
            None => (Record::default(), Expected::Absent),
        };
        let existing: Vec<Version> = rec
            .versions
            .iter()
            .map(Stored::version)
            .collect::<Result<_, _>>()?;
        let frozen = !existing.is_empty() && !by_admin && !policy.auto_update;
        match admits(existing, info, policy.strategy) {
            Ok(Some(known)) => return Ok(known),
            // a new schema, compatible or not, is refused first for being new
            _ if frozen => {
                return Err(BrokerError::IncompatibleSchema(
                    "the namespace does not let clients add schemas (isAllowAutoUpdateSchema is \
                     false)"
                        .into(),
                ));
            }
            Ok(None) => {}
            Err(e) => return Err(e),
        }
        let version = rec.next;
        rec.versions.push(Stored {
            version,
            kind: info.kind,
            data: base64::engine::general_purpose::STANDARD.encode(&info.data),
            properties: info.properties.clone(),
            timestamp: magnetar_managed_ledger::clock::now_ms(),
        });
        rec.next = version + 1;
        let bytes = serde_json::to_vec(&rec).map_err(|e| BrokerError::Unknown(e.to_string()))?;
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(BrokerError::InvalidSchema(format!(
                "{} has too many schema versions to keep another; delete its schemas first",
                owner(t)
            )));
        }
        match meta.put(&key, bytes.into(), expected).await {
            Ok(_) => return Ok(version),
            Err(MetaError::BadVersion { .. }) => continue, // raced another writer: look again
            Err(e) => return Err(e.into()),
        }
    }
}

/// Deletes every version of `t`'s schemas (later ones are numbered on); the last version
/// deleted, None if there was none.
pub async fn delete(meta: &MetaStore, t: &TopicName) -> Result<Option<u64>, BrokerError> {
    let key = keys::schemas(&owner(t));
    loop {
        let Some(current) = meta.get_json::<Record>(&key).await? else {
            return Ok(None);
        };
        let mut rec = current.value;
        let Some(last) = rec.versions.last().map(|v| v.version) else {
            return Ok(None);
        };
        rec.versions.clear();
        match meta
            .put_json(&key, &rec, Expected::Version(current.version))
            .await
        {
            Ok(_) => return Ok(Some(last)),
            Err(MetaError::BadVersion { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Forgets `t`'s schemas entirely (the topic is deleted).
pub async fn forget(meta: &MetaStore, t: &TopicName) -> Result<(), BrokerError> {
    match meta.delete(&keys::schemas(&owner(t)), Expected::Any).await {
        Ok(()) | Err(MetaError::NotFound(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::Arc;

    fn json(fields: &str) -> SchemaInfo {
        info::record(SchemaType::Json, fields)
    }

    #[tokio::test]
    async fn versions_are_added_found_checked_and_deleted() {
        let meta: MetaStore = Arc::new(magnetar_meta::MemoryStore::new().unwrap());
        let t = TopicName::parse("persistent://a/b/t-partition-3").unwrap();
        let parent = TopicName::parse("persistent://a/b/t").unwrap();
        let p = SchemaPolicy::default();
        let v1 = json(r#"{"name":"a","type":"string"}"#);
        let v2 = json(r#"{"name":"a","type":"string"},{"name":"n","type":"int","default":1}"#);
        let bad = json(r#"{"name":"b","type":"string"}"#);
        assert_eq!(add(&meta, &t, &v1, p, false).await.unwrap(), 0);
        assert_eq!(
            add(&meta, &parent, &v1, p, false).await.unwrap(),
            0,
            "shared"
        );
        assert_eq!(add(&meta, &t, &v2, p, false).await.unwrap(), 1);
        assert!(matches!(
            add(&meta, &t, &bad, p, false).await,
            Err(BrokerError::IncompatibleSchema(_))
        ));
        assert_eq!(check(&meta, &t, &v1, p).await.unwrap(), Some(0));
        assert!(check(&meta, &t, &bad, p).await.is_err());
        let frozen = SchemaPolicy {
            auto_update: false,
            ..p
        };
        let v3 = json(r#"{"name":"a","type":"string"},{"name":"m","type":"int","default":1}"#);
        assert!(add(&meta, &t, &v3, frozen, false).await.is_err());
        assert_eq!(add(&meta, &t, &v3, frozen, true).await.unwrap(), 2, "admin");
        assert_eq!(get(&meta, &t, None).await.unwrap().unwrap().version, 2);
        assert_eq!(get(&meta, &t, Some(1)).await.unwrap().unwrap().info, v2);
        assert_eq!(delete(&meta, &t).await.unwrap(), Some(2));
        assert!(get(&meta, &t, None).await.unwrap().is_none());
        assert_eq!(
            add(&meta, &t, &bad, p, false).await.unwrap(),
            3,
            "numbered on"
        );
        forget(&meta, &parent).await.unwrap();
        assert!(versions(&meta, &t).await.unwrap().is_empty());
        let huge = SchemaInfo {
            kind: SchemaType::String,
            data: vec![b'x'; MAX_SCHEMA_BYTES + 1],
            properties: Default::default(),
        };
        assert!(matches!(
            add(&meta, &t, &huge, p, false).await,
            Err(BrokerError::InvalidSchema(_))
        ));
    }

    #[test]
    fn types_keep_pulsars_numbers_and_names() {
        assert_eq!(SchemaType::from_proto(4), Some(SchemaType::Avro));
        assert_eq!(SchemaType::from_proto(15), Some(SchemaType::KeyValue));
        assert_eq!(SchemaType::from_proto(99), None);
        assert_eq!(SchemaType::KeyValue.name(), "KEY_VALUE");
        assert_eq!(
            SchemaType::parse("local_date_time"),
            Some(SchemaType::LocalDateTime)
        );
        assert_eq!(SchemaType::Boolean.to_proto(), 5);
        assert_eq!(version_of_bytes(&version_bytes(7)), Some(7));
    }
}
