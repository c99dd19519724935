//! Where offloaded segments live: a [`Location`] (driver, bucket, region, endpoint, or a
//! directory for the filesystem driver) names one object store, and [`open`] builds it through
//! `object_store`. Credentials of the cloud drivers come from their usual environment and
//! instance chains (`AWS_ACCESS_KEY_ID`, instance metadata, `GOOGLE_APPLICATION_CREDENTIALS`,
//! `AZURE_STORAGE_*`), never from a policy, so none ever lands in the metadata store.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::{BackoffConfig, ObjectStore, RetryConfig};
use serde::{Deserialize, Serialize};

use crate::TierError;

/// Pulsar's driver names, and the store each one means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Driver {
    /// A directory (the standalone's default, under its data dir).
    Filesystem,
    /// AWS S3 or any S3-compatible server (`endpoint`).
    S3,
    /// Google Cloud Storage.
    Gcs,
    /// Azure Blob Storage (`bucket` is the container).
    Azure,
}

impl Driver {
    /// Pulsar's names (`managedLedgerOffloadDriver`), case-insensitively.
    pub fn parse(name: &str) -> Result<Driver, TierError> {
        match name.to_ascii_lowercase().as_str() {
            "filesystem" => Ok(Driver::Filesystem),
            "s3" | "aws-s3" => Ok(Driver::S3),
            "google-cloud-storage" | "gcs" => Ok(Driver::Gcs),
            "azureblob" | "azure" => Ok(Driver::Azure),
            other => Err(TierError::Config(format!(
                "unknown offload driver {other:?}: filesystem, aws-s3 (or S3), \
                 google-cloud-storage or azureblob"
            ))),
        }
    }

    /// The name Pulsar reports for it.
    pub fn name(self) -> &'static str {
        match self {
            Driver::Filesystem => "filesystem",
            Driver::S3 => "aws-s3",
            Driver::Gcs => "google-cloud-storage",
            Driver::Azure => "azureblob",
        }
    }
}

/// One object store. Recorded with every offloaded ledger, so a ledger is read from where
/// it was written even after the policies point elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Location {
    pub driver: Driver,
    /// Bucket (S3, GCS) or container (Azure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Service endpoint of an S3-compatible server (path-style requests), or of GCS/Azure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The filesystem driver's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<PathBuf>,
}

impl Location {
    pub fn filesystem(root: impl Into<PathBuf>) -> Location {
        Location {
            driver: Driver::Filesystem,
            bucket: None,
            region: None,
            endpoint: None,
            root: Some(root.into()),
        }
    }

    /// Whether the location names everything its driver needs.
    pub fn check(&self) -> Result<(), TierError> {
        let missing = |what: &str| {
            Err(TierError::Config(format!(
                "offload driver {} needs {what}",
                self.driver.name()
            )))
        };
        match self.driver {
            Driver::Filesystem if self.root.is_none() => missing("a directory"),
            Driver::S3 | Driver::Gcs | Driver::Azure
                if self.bucket.as_deref().is_none_or(str::is_empty) =>
            {
                missing("a bucket")
            }
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.driver, &self.root, &self.bucket) {
            (Driver::Filesystem, Some(root), _) => write!(f, "file://{}", root.display()),
            (d, _, Some(b)) => {
                let scheme = match d {
                    Driver::Gcs => "gs",
                    Driver::Azure => "az",
                    _ => "s3",
                };
                write!(f, "{scheme}://{b}")?;
                if let Some(e) = &self.endpoint {
                    write!(f, " at {e}")?;
                }
                Ok(())
            }
            (d, _, _) => write!(f, "{} (incomplete)", d.name()),
        }
    }
}

/// How long a cloud request is retried inside `object_store` before its error reaches us:
/// short, so an unreachable store shows up as an offload error in seconds, not minutes (the
/// offloader retries whole runs later).
fn retry() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 3,
        retry_timeout: Duration::from_secs(15),
    }
}

/// Builds the store a location names.
pub fn open(l: &Location) -> Result<Arc<dyn ObjectStore>, TierError> {
    l.check()?;
    let bucket = l.bucket.clone().unwrap_or_default();
    let cfg = |e: object_store::Error| TierError::Config(format!("{l}: {e}"));
    let store: Arc<dyn ObjectStore> = match l.driver {
        Driver::Filesystem => {
            let root = l.root.clone().unwrap_or_default();
            std::fs::create_dir_all(&root)
                .map_err(|e| TierError::Config(format!("{}: {e}", root.display())))?;
            Arc::new(LocalFileSystem::new_with_prefix(&root).map_err(cfg)?)
        }
        Driver::S3 => {
            let mut b = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_retry(retry());
            if let Some(r) = &l.region {
                b = b.with_region(r);
            }
            if let Some(e) = &l.endpoint {
                // an S3-compatible server: path-style requests, plain HTTP if it says so
                b = b
                    .with_endpoint(e)
                    .with_virtual_hosted_style_request(false)
                    .with_allow_http(e.starts_with("http://"));
            }
            Arc::new(b.build().map_err(cfg)?)
        }
        Driver::Gcs => {
            let mut b = GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(bucket)
                .with_retry(retry());
            if let Some(e) = &l.endpoint {
                b = b.with_base_url(e);
            }
            Arc::new(b.build().map_err(cfg)?)
        }
        Driver::Azure => {
            let mut b = MicrosoftAzureBuilder::from_env()
                .with_container_name(bucket)
                .with_retry(retry());
            if let Some(e) = &l.endpoint {
                b = b
                    .with_endpoint(e.clone())
                    .with_allow_http(e.starts_with("http://"));
            }
            Arc::new(b.build().map_err(cfg)?)
        }
    };
    Ok(store)
}

/// Runs `op` until it succeeds, a final answer (not found, refused) comes back, or
/// `attempts` are spent, waiting 50 ms, 200 ms, 800 ms... between tries. The filesystem
/// driver has no retries of its own, and a cloud request that `object_store` gave up on may
/// still pass a moment later.
pub(crate) async fn with_retries<T, F, Fut>(
    attempts: u32,
    mut op: F,
) -> Result<T, object_store::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, object_store::Error>>,
{
    let mut wait = Duration::from_millis(50);
    let mut tried = 1;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if tried >= attempts || !transient(&e) => return Err(e),
            Err(_) => {
                tokio::time::sleep(wait).await;
                wait *= 4;
                tried += 1;
            }
        }
    }
}

fn transient(e: &object_store::Error) -> bool {
    !matches!(
        e,
        object_store::Error::NotFound { .. }
            | object_store::Error::InvalidPath { .. }
            | object_store::Error::NotSupported { .. }
            | object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }
            | object_store::Error::UnknownConfigurationKey { .. }
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn drivers_parse_by_pulsars_names_and_incomplete_locations_are_refused() {
        assert_eq!(Driver::parse("aws-s3").unwrap(), Driver::S3);
        assert_eq!(Driver::parse("S3").unwrap(), Driver::S3);
        assert_eq!(Driver::parse("google-cloud-storage").unwrap(), Driver::Gcs);
        assert_eq!(Driver::parse("azureblob").unwrap(), Driver::Azure);
        assert_eq!(Driver::parse("filesystem").unwrap(), Driver::Filesystem);
        assert!(Driver::parse("tape").is_err());
        let mut s3 = Location::filesystem("/x");
        s3.driver = Driver::S3;
        assert!(open(&s3).is_err(), "no bucket");
        s3.bucket = Some("b".into());
        s3.endpoint = Some("http://127.0.0.1:9".into());
        assert!(open(&s3).is_ok());
        assert_eq!(s3.to_string(), "s3://b at http://127.0.0.1:9");
        let json = serde_json::to_value(&s3).unwrap();
        assert_eq!(json["driver"], "s3");
        assert_eq!(serde_json::from_value::<Location>(json).unwrap(), s3);
    }
}
