//! Typed records: JSON values over any [`MetadataStore`], and the compare-and-set retry loop
//! that every read-modify-write in Magnetar goes through.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::debug;

use crate::{Expected, MetaError, MetadataStore, Result, Version, Versioned};

/// Most attempts `update_json` makes before reporting `Contention`.
pub const MAX_CAS_ATTEMPTS: u32 = 1000;

pub fn encode_json<T: Serialize>(key: &str, value: &T) -> Result<Bytes> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| MetaError::InvalidArgument(format!("encode {key}: {e}")))
}

pub fn decode_json<T: DeserializeOwned>(key: &str, raw: &[u8]) -> Result<T> {
    serde_json::from_slice(raw).map_err(|e| MetaError::Corrupt {
        key: key.to_string(),
        reason: format!("not a valid record: {e}"),
    })
}

/// JSON records on any store. Blanket-implemented; import the trait to use it.
#[async_trait]
pub trait MetadataStoreExt: MetadataStore {
    /// Reads and decodes a record. A value that does not decode is `Corrupt`, never a panic.
    async fn get_json<T: DeserializeOwned + Send>(
        &self,
        key: &str,
    ) -> Result<Option<Versioned<T>>> {
        match self.get(key).await? {
            None => Ok(None),
            Some(v) => {
                let value = decode_json(key, &v.value)?;
                Ok(Some(Versioned {
                    value,
                    version: v.version,
                    owner: v.owner,
                }))
            }
        }
    }

    async fn put_json<T: Serialize + Sync>(
        &self,
        key: &str,
        value: &T,
        expected: Expected,
    ) -> Result<Version> {
        self.put(key, encode_json(key, value)?, expected).await
    }

    /// Read-modify-write by compare-and-set: reads the record, calls `f` with it (None when
    /// absent), writes the result only if nobody wrote in between, and retries from the read
    /// when somebody did. `f` may be called several times and must not have side effects;
    /// an error from `f` stops the loop and is returned.
    async fn update_json<T, F, E>(&self, key: &str, mut f: F) -> Result<Versioned<T>, E>
    where
        T: Serialize + DeserializeOwned + Send + Sync,
        F: FnMut(Option<T>) -> Result<T, E> + Send,
        E: From<MetaError> + Send,
    {
        let mut backoff = Duration::from_millis(1);
        for attempt in 1..=MAX_CAS_ATTEMPTS {
            let current: Option<Versioned<T>> = self.get_json(key).await?;
            let expected = current
                .as_ref()
                .map_or(Expected::Absent, |c| Expected::Version(c.version));
            let next = f(current.map(|c| c.value))?;
            let raw = encode_json(key, &next)?;
            match self.put(key, raw, expected).await {
                Ok(version) => {
                    return Ok(Versioned {
                        value: next,
                        version,
                        owner: None,
                    });
                }
                Err(MetaError::BadVersion { .. }) => {
                    debug!(key, attempt, "compare-and-set lost a race; retrying");
                    // Jitter spreads out writers that collided so they do not collide again.
                    let jitter = rand::random_range(0..=backoff.as_micros() as u64);
                    tokio::time::sleep(Duration::from_micros(jitter)).await;
                    backoff = (backoff * 2).min(Duration::from_millis(50));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(MetaError::Contention {
            key: key.to_string(),
            attempts: MAX_CAS_ATTEMPTS,
        }
        .into())
    }
}

impl<S: MetadataStore + ?Sized> MetadataStoreExt for S {}
