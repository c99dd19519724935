//! The log's record in the metadata store: its ledgers in order, with what is known of each,
//! the final position of a terminated log and the producers' sequence snapshot. Changed only
//! by compare-and-set, by the log's one owner.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LedgerInfo {
    pub ledger_id: u64,
    pub entries: u64,
    pub size: u64,
    /// Messages in the ledger (batches count each message); None until counted.
    #[serde(default)]
    pub messages: Option<u64>,
    /// Creation time, ms since the epoch.
    pub timestamp_ms: u64,
    /// Close time, ms since the epoch (None while open).
    #[serde(default)]
    pub closed_ms: Option<u64>,
    /// What a tier recorded when it copied the (closed) ledger: reads go to the tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload: Option<serde_json::Value>,
}

impl LedgerInfo {
    pub(crate) fn new(ledger_id: u64, now: u64) -> LedgerInfo {
        LedgerInfo {
            ledger_id,
            entries: 0,
            size: 0,
            messages: Some(0),
            timestamp_ms: now,
            closed_ms: None,
            offload: None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct MlRecord {
    pub(crate) ledgers: Vec<LedgerInfo>,
    /// Set once the topic is terminated: its last entry (ledger, entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) terminated: Option<(u64, i64)>,
    /// Producers' highest sequence ids as of an entry (deduplication).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) producers: Option<ProducerSnapshot>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ProducerSnapshot {
    /// Every entry up to this (ledger, entry) is reflected.
    pub(crate) at: (u64, i64),
    pub(crate) sequences: BTreeMap<String, i64>,
}

/// The key of a log's record: `path` is the topic's (`tenant/ns/domain/topic`).
pub fn record_key(path: &str) -> String {
    format!("/managed-ledgers/{path}")
}
