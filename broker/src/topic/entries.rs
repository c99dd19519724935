//! What the managed ledger is told of Pulsar entries: how many messages one counts for, when
//! it was published, and the producer sequence it records (deduplication). The log itself
//! never parses an entry.

use bytes::Bytes;
use magnetar_managed_ledger::EntryFormat;
use magnetar_protocol::entry as pentry;

/// Entries as a SEND's payload section framed them.
#[derive(Debug, Default, Clone, Copy)]
pub struct PulsarEntries;

impl EntryFormat for PulsarEntries {
    fn messages(&self, entry: &Bytes) -> u64 {
        pentry::peek_counted(entry).unwrap_or(1) as u64
    }

    fn publish_time(&self, entry: &Bytes) -> u64 {
        pentry::peek_metadata(entry).map_or(0, |m| m.publish_time)
    }

    fn producer_sequence(&self, entry: &Bytes) -> Option<(String, i64)> {
        let m = pentry::peek_metadata(entry).ok()?;
        let seq = sequence_of(&m);
        Some((m.producer_name, seq))
    }
}

/// The sequence id an entry stands for: the highest of its batch (given, or the first plus
/// the batch size, as batch members are numbered consecutively).
pub fn sequence_of(m: &magnetar_protocol::MessageMetadata) -> i64 {
    highest_sequence(
        m.sequence_id,
        m.highest_sequence_id,
        m.num_messages_in_batch,
    )
}

/// See [`sequence_of`]; the same rule for a SEND's fields.
pub fn highest_sequence(sequence_id: u64, highest: Option<u64>, messages: Option<i32>) -> i64 {
    let seq = sequence_id as i64;
    match highest {
        Some(h) if h as i64 >= seq && h > 0 => h as i64,
        _ => seq + (messages.unwrap_or(1).max(1) as i64 - 1),
    }
}
