//! What the log needs to know of an entry's contents. Entries are opaque bytes here; whoever
//! frames them (the broker, for Pulsar's entries) says how many messages one holds, when it
//! was published and which producer sequence it records.

use std::fmt;

use bytes::Bytes;

pub trait EntryFormat: Send + Sync + fmt::Debug {
    /// Messages the entry counts for in backlogs (a batch counts each; a chunk before a
    /// message's last counts 0).
    fn messages(&self, _entry: &Bytes) -> u64 {
        1
    }

    /// Publish time, ms since the epoch; 0 when unknown (such an entry counts as old).
    fn publish_time(&self, _entry: &Bytes) -> u64 {
        0
    }

    /// The producer and the highest sequence id the entry carries (deduplication).
    fn producer_sequence(&self, _entry: &Bytes) -> Option<(String, i64)> {
        None
    }
}

/// Entries of one message each, with no time or producer: for logs whose entries nobody
/// inspects (and the unit tests).
#[derive(Debug, Default, Clone, Copy)]
pub struct OpaqueEntries;

impl EntryFormat for OpaqueEntries {}
