//! The cluster side of a broker: where every metadata key lives (`keys`), how a namespace is
//! cut into bundles (`bundles`), who owns a bundle (`ownership`) and how a client is told
//! where a topic is served (`lookup`, the one answer behind the binary protocol's LOOKUP and
//! the HTTP lookup).

pub mod bundles;
pub mod claims;
pub mod keys;
pub mod lookup;
pub mod ownership;

use magnetar_meta::{Expected, MetaError, MetaStore, MetadataStoreExt};
use tracing::info;

use ownership::BrokerUrls;

/// Creates what is missing of cluster `cluster`'s record (its URLs: `urls`), tenant `public`
/// and namespace `public/default`; returns the keys it created (none: all were there).
pub async fn init(
    meta: &MetaStore,
    cluster: &str,
    urls: &BrokerUrls,
) -> Result<Vec<String>, MetaError> {
    let records = [
        (
            keys::cluster(cluster),
            serde_json::json!({
                "serviceUrl": urls.web_url,
                "brokerServiceUrl": urls.service_url,
                "serviceUrlTls": urls.web_url_tls,
                "brokerServiceUrlTls": urls.service_url_tls,
            }),
        ),
        (
            keys::tenant("public"),
            serde_json::json!({"adminRoles": [], "allowedClusters": [cluster]}),
        ),
        (
            keys::namespace("public", "default"),
            serde_json::json!({"replication_clusters": [cluster]}),
        ),
    ];
    let mut created = Vec::new();
    for (key, value) in records {
        match meta.put_json(&key, &value, Expected::Absent).await {
            Ok(_) => {
                info!(key = %key, "created");
                created.push(key);
            }
            Err(MetaError::BadVersion { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(created)
}
