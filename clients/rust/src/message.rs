//! Message ids, received messages and messages to send.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use magnetar_protocol::MessageIdData;
use prost::Message as _;

/// Where a message sits: a ledger entry and, inside a batch entry, its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageId {
    pub ledger_id: u64,
    pub entry_id: u64,
    /// The partition index, -1 on a topic without partitions.
    pub partition: i32,
    /// The index inside a batch entry, -1 when the entry is not a batch.
    pub batch_index: i32,
    /// Messages in the batch entry (0 when not a batch).
    pub batch_size: i32,
}

impl MessageId {
    /// Before the first message: a reader starting here reads everything.
    pub const EARLIEST: MessageId = MessageId {
        ledger_id: u64::MAX,
        entry_id: u64::MAX,
        partition: -1,
        batch_index: -1,
        batch_size: 0,
    };
    /// After the last message: a reader starting here reads what is published next.
    pub const LATEST: MessageId = MessageId {
        ledger_id: i64::MAX as u64,
        entry_id: i64::MAX as u64,
        partition: -1,
        batch_index: -1,
        batch_size: 0,
    };

    pub fn new(ledger_id: u64, entry_id: u64) -> MessageId {
        MessageId {
            ledger_id,
            entry_id,
            partition: -1,
            batch_index: -1,
            batch_size: 0,
        }
    }

    pub fn is_earliest(&self) -> bool {
        self.ledger_id == u64::MAX || self.entry_id == u64::MAX
    }

    pub fn is_latest(&self) -> bool {
        !self.is_earliest() && self.ledger_id >= i64::MAX as u64
    }

    /// The same entry, without the batch index.
    pub fn entry(&self) -> MessageId {
        MessageId {
            batch_index: -1,
            batch_size: 0,
            ..*self
        }
    }

    /// Ordering key: earliest first, the entry, then the batch index (-1 before 0).
    fn rank(&self) -> (i128, i128, i32) {
        if self.is_earliest() {
            return (-1, -1, -1);
        }
        (
            self.ledger_id as i128,
            self.entry_id as i128,
            self.batch_index,
        )
    }

    pub(crate) fn from_proto(d: &MessageIdData, batch_size: i32) -> MessageId {
        MessageId {
            ledger_id: d.ledger_id,
            entry_id: d.entry_id,
            partition: d.partition.unwrap_or(-1),
            batch_index: d.batch_index.unwrap_or(-1),
            batch_size: d.batch_size.unwrap_or(batch_size),
        }
    }

    pub(crate) fn to_proto(self) -> MessageIdData {
        MessageIdData {
            ledger_id: self.ledger_id,
            entry_id: self.entry_id,
            partition: (self.partition >= 0).then_some(self.partition),
            batch_index: (self.batch_index >= 0).then_some(self.batch_index),
            batch_size: (self.batch_index >= 0 && self.batch_size > 0).then_some(self.batch_size),
            ..Default::default()
        }
    }

    /// The id in the protocol's own encoding (as Pulsar clients' `toByteArray`).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_proto().encode_to_vec()
    }

    pub fn from_bytes(b: &[u8]) -> Result<MessageId, String> {
        let d = MessageIdData::decode(b).map_err(|e| format!("not a message id: {e}"))?;
        Ok(MessageId::from_proto(&d, 0))
    }
}

impl PartialOrd for MessageId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for MessageId {
    fn cmp(&self, other: &Self) -> Ordering {
        self.rank().cmp(&other.rank())
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_earliest() {
            return f.write_str("earliest");
        }
        if self.is_latest() {
            return f.write_str("latest");
        }
        write!(
            f,
            "{}:{}:{}:{}",
            self.ledger_id, self.entry_id, self.partition, self.batch_index
        )
    }
}

impl FromStr for MessageId {
    type Err = String;

    /// `earliest`, `latest`, or `ledger:entry[:partition[:batch_index]]`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "earliest" => return Ok(MessageId::EARLIEST),
            "latest" => return Ok(MessageId::LATEST),
            _ => {}
        }
        let bad = || format!("{s:?} is not a message id (ledger:entry[:partition[:batch]])");
        let parts: Vec<&str> = s.split(':').collect();
        if !(2..=4).contains(&parts.len()) {
            return Err(bad());
        }
        let mut id = MessageId::new(
            parts[0].parse().map_err(|_| bad())?,
            parts[1].parse().map_err(|_| bad())?,
        );
        if let Some(p) = parts.get(2) {
            id.partition = p.parse().map_err(|_| bad())?;
        }
        if let Some(b) = parts.get(3) {
            id.batch_index = b.parse().map_err(|_| bad())?;
        }
        Ok(id)
    }
}

/// A received message.
#[derive(Debug, Clone)]
pub struct Message {
    /// The topic (partition) it came from.
    pub topic: Arc<str>,
    pub id: MessageId,
    pub payload: Bytes,
    pub key: Option<String>,
    pub ordering_key: Option<Bytes>,
    pub properties: Vec<(String, String)>,
    /// Milliseconds since the epoch, set by the producer.
    pub publish_time: u64,
    pub event_time: Option<u64>,
    pub producer_name: Arc<str>,
    pub sequence_id: u64,
    /// Times the broker delivered it before.
    pub redelivery_count: u32,
    pub replicated_from: Option<String>,
    /// Set on messages the producer stored as a null value (a tombstone for compaction).
    pub null_value: bool,
    pub(crate) part: usize,
    pub(crate) epoch: u64,
    pub(crate) permits: u32,
    /// Every entry of a chunked message (acknowledging it acknowledges them all).
    pub(crate) chunks: Arc<[MessageId]>,
}

impl Message {
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The entries a chunked message arrived in (empty when it came in one).
    pub fn chunk_ids(&self) -> &[MessageId] {
        &self.chunks
    }

    /// The payload as text (lossy).
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.payload)
    }
}

/// A message to send.
#[derive(Debug, Clone, Default)]
pub struct ProducerMessage {
    pub payload: Bytes,
    /// Routes the message to a partition and keeps it in order with its key.
    pub key: Option<String>,
    pub ordering_key: Option<Bytes>,
    pub properties: Vec<(String, String)>,
    pub event_time: Option<u64>,
    /// Set it for deduplication across producer restarts; otherwise one is assigned.
    pub sequence_id: Option<u64>,
    /// Deliver no earlier than this (milliseconds since the epoch); Shared subscriptions.
    pub deliver_at: Option<u64>,
    /// Set by geo-replication: the cluster the message was first published in.
    pub replicated_from: Option<String>,
}

impl ProducerMessage {
    pub fn new(payload: impl Into<Bytes>) -> ProducerMessage {
        ProducerMessage {
            payload: payload.into(),
            ..Default::default()
        }
    }

    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub fn with_property(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.properties.push((k.into(), v.into()));
        self
    }

    pub fn with_event_time(mut self, ms: u64) -> Self {
        self.event_time = Some(ms);
        self
    }

    pub fn with_sequence_id(mut self, id: u64) -> Self {
        self.sequence_id = Some(id);
        self
    }

    /// Delivers the message `delay` from now.
    pub fn deliver_after(mut self, delay: Duration) -> Self {
        self.deliver_at = Some(now_ms() + delay.as_millis() as u64);
        self
    }
}

impl From<Vec<u8>> for ProducerMessage {
    fn from(v: Vec<u8>) -> Self {
        ProducerMessage::new(v)
    }
}

impl From<Bytes> for ProducerMessage {
    fn from(v: Bytes) -> Self {
        ProducerMessage::new(v)
    }
}

impl From<&str> for ProducerMessage {
    fn from(v: &str) -> Self {
        ProducerMessage::new(Bytes::copy_from_slice(v.as_bytes()))
    }
}

impl From<String> for ProducerMessage {
    fn from(v: String) -> Self {
        ProducerMessage::new(v)
    }
}

/// Milliseconds since the epoch, as publish times and `seek_time` count them.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ids_order_parse_and_encode() {
        let a = MessageId::new(3, 4);
        let mut b = a;
        b.batch_index = 0;
        assert!(MessageId::EARLIEST < a && a < b && b < MessageId::LATEST);
        assert!(MessageId::new(3, 5) > b);
        assert_eq!("3:4:-1:0".parse::<MessageId>().unwrap(), b);
        assert_eq!(
            "earliest".parse::<MessageId>().unwrap(),
            MessageId::EARLIEST
        );
        assert!("3".parse::<MessageId>().is_err());
        assert!("a:b".parse::<MessageId>().is_err());
        let mut c = MessageId::new(9, 1);
        c.partition = 2;
        c.batch_index = 5;
        c.batch_size = 10;
        assert_eq!(MessageId::from_bytes(&c.to_bytes()).unwrap(), c);
        assert!(MessageId::from_bytes(&[0xff, 0xff]).is_err());
        assert_eq!(b.to_string(), "3:4:-1:0");
    }
}
