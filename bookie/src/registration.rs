//! Registration of a bookie in meta: an ephemeral record that lives as long as the process.

use std::time::Duration;

use magnetar_meta::{Expected, MetaError, MetaStore, encode_json};
use tracing::{info, warn};

#[derive(serde::Serialize)]
struct BookieRecord<'a> {
    address: &'a str,
    rack: Option<&'a str>,
}

/// Keeps `/bookies/available/{address}` alive for as long as the process runs, registering
/// again with a new session whenever one is lost.
pub async fn register(store: MetaStore, address: String, rack: Option<String>, ttl: Duration) {
    let key = format!("/bookies/available/{address}");
    loop {
        let attempt = async {
            let session = store.create_session(ttl).await?;
            let value = encode_json(
                &key,
                &BookieRecord {
                    address: &address,
                    rack: rack.as_deref(),
                },
            )?;
            store
                .put_ephemeral(&session, &key, value, Expected::Any)
                .await?;
            info!(key = %key, "registered in metadata store");
            session.lost().await;
            Ok::<_, MetaError>(())
        };
        if let Err(e) = attempt.await {
            warn!(error = %e, "registration failed; retrying");
        } else {
            warn!(key = %key, "registration session lost; registering again");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
