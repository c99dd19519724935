//! Tiered storage as the broker configures it: the broker-wide defaults (`--managed-ledger-
//! offload-*` flags), Pulsar's `OffloadPolicies` JSON (namespace `offload_policies`, topic
//! `offloadPolicies`) and how they, the namespace's `offloadThreshold`,
//! `offloadThresholdInSeconds` and `offloadDeletionLagMs` and the defaults combine into what
//! a topic runs with. Pure data: runs are the topic's, copying and reading the tier's.

use std::path::PathBuf;
use std::time::Duration;

use magnetar_tiering::{Driver, Location, TierConfig, Which};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Pulsar's default deletion lag: 4 hours.
pub const DEFAULT_DELETION_LAG: Duration = Duration::from_secs(4 * 3600);

/// Broker-wide offload settings.
#[derive(Debug, Clone, PartialEq)]
pub struct OffloadConfig {
    /// Where topics offload when no policy names a driver (None: only policies that name
    /// one offload). The standalone's default is a directory under its data dir.
    pub location: Option<Location>,
    /// The filesystem driver's directory when a policy names that driver and no directory.
    pub filesystem_root: Option<PathBuf>,
    /// Pulsar's `managedLedgerOffloadThresholdInBytes` / `...InSeconds` (negative: off).
    pub threshold_bytes: i64,
    pub threshold_secs: i64,
    /// Storage copies of offloaded ledgers are deleted this long after the offload (None:
    /// kept).
    pub deletion_lag: Option<Duration>,
    pub tier: TierConfig,
}

impl Default for OffloadConfig {
    fn default() -> Self {
        OffloadConfig {
            location: None,
            filesystem_root: None,
            threshold_bytes: -1,
            threshold_secs: -1,
            deletion_lag: Some(DEFAULT_DELETION_LAG),
            tier: TierConfig::default(),
        }
    }
}

/// The parts of Pulsar's `OffloadPolicies` this broker acts on (unknown fields stay in the
/// stored JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OffloadPolicies {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_ledger_offload_driver: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_ledger_offload_threshold_in_bytes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_ledger_offload_threshold_in_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_ledger_offload_deletion_lag_in_millis: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_ledger_offload_bucket: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_ledger_offload_region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_ledger_offload_service_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_managed_ledger_offload_bucket: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_managed_ledger_offload_region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_managed_ledger_offload_service_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcs_managed_ledger_offload_bucket: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcs_managed_ledger_offload_region: Option<String>,
    /// Refused when set: the filesystem driver writes under the broker's own directory
    /// only, never where a namespace's policy points.
    #[serde(
        default,
        rename = "fileSystemURI",
        skip_serializing_if = "Option::is_none"
    )]
    pub file_system_uri: Option<String>,
}

macro_rules! over {
    ($self:ident, $o:ident, $($f:ident),*) => { $( if $o.$f.is_some() { $self.$f = $o.$f.clone(); } )* };
}

impl OffloadPolicies {
    /// These policies with `o`'s set fields laid over them (a topic's over its namespace's).
    pub fn overlaid(mut self, o: &OffloadPolicies) -> OffloadPolicies {
        over!(
            self,
            o,
            managed_ledger_offload_driver,
            managed_ledger_offload_threshold_in_bytes,
            managed_ledger_offload_threshold_in_seconds,
            managed_ledger_offload_deletion_lag_in_millis,
            managed_ledger_offload_bucket,
            managed_ledger_offload_region,
            managed_ledger_offload_service_endpoint,
            s3_managed_ledger_offload_bucket,
            s3_managed_ledger_offload_region,
            s3_managed_ledger_offload_service_endpoint,
            gcs_managed_ledger_offload_bucket,
            gcs_managed_ledger_offload_region,
            file_system_uri
        );
        self
    }

    /// The location these policies name, if they name a driver (`fs_root`: the broker's
    /// directory of the filesystem driver).
    pub fn location(&self, fs_root: Option<&PathBuf>) -> Option<Result<Location, String>> {
        let driver = self.managed_ledger_offload_driver.as_deref()?;
        let driver = match Driver::parse(driver) {
            Ok(d) => d,
            Err(e) => return Some(Err(e.to_string())),
        };
        let pick = |a: &Option<String>, b: &Option<String>| {
            a.clone().or_else(|| b.clone()).filter(|s| !s.is_empty())
        };
        let l = match driver {
            Driver::Filesystem => Location {
                driver,
                bucket: None,
                region: None,
                endpoint: None,
                root: fs_root.cloned(),
            },
            Driver::Gcs => Location {
                driver,
                bucket: pick(
                    &self.gcs_managed_ledger_offload_bucket,
                    &self.managed_ledger_offload_bucket,
                ),
                region: pick(
                    &self.gcs_managed_ledger_offload_region,
                    &self.managed_ledger_offload_region,
                ),
                endpoint: self.managed_ledger_offload_service_endpoint.clone(),
                root: None,
            },
            Driver::S3 | Driver::Azure => Location {
                driver,
                bucket: pick(
                    &self.s3_managed_ledger_offload_bucket,
                    &self.managed_ledger_offload_bucket,
                ),
                region: pick(
                    &self.s3_managed_ledger_offload_region,
                    &self.managed_ledger_offload_region,
                ),
                endpoint: pick(
                    &self.s3_managed_ledger_offload_service_endpoint,
                    &self.managed_ledger_offload_service_endpoint,
                ),
                root: None,
            },
        };
        Some(l.check().map(|()| l).map_err(|e| e.to_string()))
    }
}

/// What a topic offloads by, where to and when its storage copies go.
#[derive(Debug, Clone, PartialEq)]
pub struct OffloadSettings {
    /// Where new offloads go (None: nowhere configured; Err: a policy that cannot work,
    /// reported by every run).
    pub location: Option<Result<Location, String>>,
    /// The automatic trigger (`is_off()`: manual offloads only).
    pub which: Which,
    pub deletion_lag: Option<Duration>,
}

/// Pulsar's threshold numbers: negative means off.
fn threshold(v: i64) -> Option<u64> {
    u64::try_from(v).ok()
}

impl OffloadSettings {
    /// From the topic-over-namespace `policies`, the namespace's own fields and the broker's
    /// defaults, in that order.
    pub fn resolve(
        policies: Option<&OffloadPolicies>,
        ns_threshold: Option<i64>,
        ns_threshold_secs: Option<i64>,
        ns_lag_ms: Option<i64>,
        d: &OffloadConfig,
    ) -> OffloadSettings {
        let p = policies.cloned().unwrap_or_default();
        // a namespace's -1 is Pulsar's "unset": the broker's setting holds
        let bytes = p
            .managed_ledger_offload_threshold_in_bytes
            .or(ns_threshold.filter(|v| *v != -1))
            .unwrap_or(d.threshold_bytes);
        let secs = p
            .managed_ledger_offload_threshold_in_seconds
            .or(ns_threshold_secs.filter(|v| *v != -1))
            .unwrap_or(d.threshold_secs);
        let lag = match p
            .managed_ledger_offload_deletion_lag_in_millis
            .or(ns_lag_ms)
        {
            Some(ms) => u64::try_from(ms).ok().map(Duration::from_millis),
            None => d.deletion_lag,
        };
        OffloadSettings {
            location: p
                .location(d.filesystem_root.as_ref())
                .or_else(|| d.location.clone().map(Ok)),
            which: Which::Thresholds {
                bytes: threshold(bytes),
                secs: threshold(secs),
            },
            deletion_lag: lag,
        }
    }
}

/// Checks an `offloadPolicies` body: a JSON object whose known fields have their types, a
/// driver this build knows, and the bucket or directory that driver needs.
pub fn check_policies(v: Value) -> Result<Value, String> {
    if !v.is_object() {
        return Err("offload policies are a JSON object".into());
    }
    let p: OffloadPolicies =
        serde_json::from_value(v.clone()).map_err(|e| format!("offload policies: {e}"))?;
    for (name, n) in [
        (
            "managedLedgerOffloadThresholdInBytes",
            p.managed_ledger_offload_threshold_in_bytes,
        ),
        (
            "managedLedgerOffloadThresholdInSeconds",
            p.managed_ledger_offload_threshold_in_seconds,
        ),
    ] {
        if n.is_some_and(|n| n < -1) {
            return Err(format!("{name} is -1 (off), 0 or more"));
        }
    }
    if p.file_system_uri.is_some() {
        return Err(
            "fileSystemURI is not taken: the filesystem driver writes under the \
                    broker's --file-system-offload-root only"
                .into(),
        );
    }
    match p.managed_ledger_offload_driver.as_deref() {
        None => {}
        // a filesystem policy without a directory uses the broker's
        Some(d) if Driver::parse(d).ok() == Some(Driver::Filesystem) => {}
        Some(_) => {
            if let Some(Err(e)) = p.location(None) {
                return Err(e);
            }
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn topic_over_namespace_over_fields_over_defaults() {
        let d = OffloadConfig {
            location: Some(Location::filesystem("/data/offload")),
            ..Default::default()
        };
        let none = OffloadSettings::resolve(None, None, None, None, &d);
        assert!(none.which.is_off());
        assert_eq!(none.deletion_lag, Some(DEFAULT_DELETION_LAG));
        assert_eq!(
            none.location,
            Some(Ok(Location::filesystem("/data/offload")))
        );
        let ns = OffloadSettings::resolve(None, Some(0), None, Some(1000), &d);
        assert_eq!(
            ns.which,
            Which::Thresholds {
                bytes: Some(0),
                secs: None
            }
        );
        assert_eq!(ns.deletion_lag, Some(Duration::from_millis(1000)));
        let nsp: OffloadPolicies = serde_json::from_value(json!({
            "managedLedgerOffloadDriver": "aws-s3",
            "s3ManagedLedgerOffloadBucket": "b",
            "s3ManagedLedgerOffloadServiceEndpoint": "http://127.0.0.1:9000",
            "managedLedgerOffloadThresholdInBytes": 100
        }))
        .unwrap();
        let topic: OffloadPolicies =
            serde_json::from_value(json!({"managedLedgerOffloadThresholdInSeconds": 60})).unwrap();
        let p = nsp.overlaid(&topic);
        let s = OffloadSettings::resolve(Some(&p), Some(0), None, None, &d);
        assert_eq!(
            s.which,
            Which::Thresholds {
                bytes: Some(100),
                secs: Some(60)
            }
        );
        let l = s.location.unwrap().unwrap();
        assert_eq!(l.bucket.as_deref(), Some("b"));
        assert_eq!(l.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        // a negative lag keeps storage copies
        let keep = OffloadSettings::resolve(None, None, None, Some(-1), &d);
        assert_eq!(keep.deletion_lag, None);
    }

    #[test]
    fn bad_policies_are_refused_with_the_reason() {
        assert!(check_policies(json!([])).is_err());
        assert!(check_policies(json!({"managedLedgerOffloadDriver": "tape"})).is_err());
        let e = check_policies(json!({"managedLedgerOffloadDriver": "S3"})).unwrap_err();
        assert!(e.contains("bucket"), "{e}");
        assert!(check_policies(json!({"managedLedgerOffloadThresholdInBytes": "x"})).is_err());
        assert!(check_policies(json!({"managedLedgerOffloadThresholdInBytes": -5})).is_err());
        let ok = json!({"managedLedgerOffloadDriver": "aws-s3",
                        "s3ManagedLedgerOffloadBucket": "b", "unknownField": 1});
        assert_eq!(check_policies(ok.clone()).unwrap(), ok);
        assert!(check_policies(json!({"managedLedgerOffloadDriver": "filesystem"})).is_ok());
        let elsewhere = json!({"managedLedgerOffloadDriver": "filesystem", "fileSystemURI": "/"});
        assert!(check_policies(elsewhere).is_err());
    }
}
