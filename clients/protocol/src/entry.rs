//! A stored entry: what follows the command in a payload frame, as the broker keeps it.
//!
//! Layout: `[0x0e01 u16][crc32c u32][metadata size u32][MessageMetadata][payload]`, the CRC
//! covering everything after itself. Entries are stored and forwarded exactly in this shape,
//! so delivering one is a copy of bytes, never a re-encode.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

use crate::proto::MessageMetadata;

pub const MAGIC_CRC32C: u16 = 0x0e01;
pub const MAGIC_BROKER_ENTRY_METADATA: u16 = 0x0e02;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EntryError {
    #[error("entry truncated: {0}")]
    Truncated(&'static str),
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("metadata size {size} exceeds the {available} bytes left")]
    MetadataSize { size: usize, available: usize },
    #[error("undecodable message metadata: {0}")]
    Metadata(String),
}

/// A decoded entry; `raw` is the whole stored form (magic onwards).
#[derive(Debug, Clone)]
pub struct Entry {
    pub metadata: MessageMetadata,
    pub payload: Bytes,
    pub raw: Bytes,
}

impl Entry {
    /// Messages in this entry: a batch counts each of its messages.
    pub fn num_messages(&self) -> u32 {
        message_count(&self.metadata)
    }
}

/// Messages an entry holds according to its metadata (at least 1).
pub fn message_count(m: &MessageMetadata) -> u32 {
    m.num_messages_in_batch.map_or(1, |n| n.max(1) as u32)
}

/// Builds the stored form of `metadata` + `payload`, checksum included.
pub fn encode_entry(metadata: &MessageMetadata, payload: &[u8]) -> Bytes {
    let meta_len = metadata.encoded_len();
    let mut out = BytesMut::with_capacity(2 + 4 + 4 + meta_len + payload.len());
    out.put_u16(MAGIC_CRC32C);
    out.put_u32(0);
    out.put_u32(meta_len as u32);
    // encoding into a BytesMut with enough capacity cannot fail
    let _ = metadata.encode(&mut out);
    out.put_slice(payload);
    let crc = crc32c::crc32c(&out[6..]);
    out[2..6].copy_from_slice(&crc.to_be_bytes());
    out.freeze()
}

/// Brings a received payload section (after the command, after any broker-entry-metadata
/// block) into stored form: verifies the checksum if present, adds one if absent.
pub fn normalize(section: Bytes) -> Result<Entry, EntryError> {
    if section.len() >= 2 && section[..2] == MAGIC_CRC32C.to_be_bytes() {
        return parse_entry(section);
    }
    // An old client without checksum: [metadata size][metadata][payload].
    let (metadata, payload) = split_metadata(section)?;
    let raw = encode_entry(&metadata, &payload);
    Ok(Entry {
        metadata,
        payload,
        raw,
    })
}

/// Parses and verifies an entry in stored form.
pub fn parse_entry(raw: Bytes) -> Result<Entry, EntryError> {
    if raw.len() < 6 {
        return Err(EntryError::Truncated("magic and checksum"));
    }
    let stored = u32::from_be_bytes([raw[2], raw[3], raw[4], raw[5]]);
    let computed = crc32c::crc32c(&raw[6..]);
    if stored != computed {
        return Err(EntryError::Checksum { stored, computed });
    }
    let (metadata, payload) = split_metadata(raw.slice(6..))?;
    Ok(Entry {
        metadata,
        payload,
        raw,
    })
}

/// Brings a received payload section into stored form without decoding its metadata when
/// it already carries a checksum (the hot path): verifies the CRC and the metadata size.
pub fn to_stored(section: Bytes) -> Result<Bytes, EntryError> {
    if section.len() >= 2 && section[..2] == MAGIC_CRC32C.to_be_bytes() {
        if section.len() < 10 {
            return Err(EntryError::Truncated("metadata size"));
        }
        let stored = u32::from_be_bytes([section[2], section[3], section[4], section[5]]);
        let computed = crc32c::crc32c(&section[6..]);
        if stored != computed {
            return Err(EntryError::Checksum { stored, computed });
        }
        let size = u32::from_be_bytes([section[6], section[7], section[8], section[9]]) as usize;
        if size > section.len() - 10 {
            return Err(EntryError::MetadataSize {
                size,
                available: section.len() - 10,
            });
        }
        return Ok(section);
    }
    normalize(section).map(|e| e.raw)
}

/// The MessageMetadata fields dispatch looks at; decoding into this skips every other field.
/// Keys are read as bytes so a non-UTF-8 key cannot fail the decode.
#[derive(Clone, PartialEq, Message)]
struct DispatchFields {
    #[prost(bytes = "bytes", optional, tag = "6")]
    partition_key: Option<Bytes>,
    #[prost(int32, optional, tag = "11")]
    num_messages_in_batch: Option<i32>,
    #[prost(bool, optional, tag = "17")]
    partition_key_b64_encoded: Option<bool>,
    #[prost(bytes = "bytes", optional, tag = "18")]
    ordering_key: Option<Bytes>,
    #[prost(int64, optional, tag = "19")]
    deliver_at_time: Option<i64>,
    #[prost(int32, optional, tag = "27")]
    num_chunks_from_msg: Option<i32>,
    #[prost(int32, optional, tag = "29")]
    chunk_id: Option<i32>,
}

/// What a dispatcher needs to know about a stored entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DispatchInfo {
    /// Messages in the entry (at least 1): what a consumer's permits are charged.
    pub messages: u32,
    /// Messages the entry counts as in backlogs and stats: a chunked message counts once,
    /// at its last chunk, so every other chunk counts 0.
    pub counted: u32,
    /// Key_Shared slot of the routing key: ordering key, else partition key, else NONE_KEY.
    pub key_slot: u32,
    /// Requested delivery time (epoch ms), if any.
    pub deliver_at: Option<i64>,
}

/// Messages in an entry in stored form (at least 1), without checking the CRC.
pub fn peek_message_count(raw: &[u8]) -> Result<u32, EntryError> {
    peek_dispatch(raw).map(|d| d.messages)
}

/// Messages an entry counts as in backlogs (see [`DispatchInfo::counted`]).
pub fn peek_counted(raw: &[u8]) -> Result<u32, EntryError> {
    peek_dispatch(raw).map(|d| d.counted)
}

/// Dispatch facts of an entry in stored form, without checking the CRC.
pub fn peek_dispatch(raw: &[u8]) -> Result<DispatchInfo, EntryError> {
    let meta = metadata_bytes(raw)?;
    let f = DispatchFields::decode(meta).map_err(|e| EntryError::Metadata(e.to_string()))?;
    let key_slot = match (&f.ordering_key, &f.partition_key) {
        (Some(k), _) => crate::hash::key_slot(k),
        (None, Some(k)) if f.partition_key_b64_encoded == Some(true) => {
            crate::hash::key_slot(&base64_decode(k).unwrap_or_else(|| k.to_vec()))
        }
        (None, Some(k)) => crate::hash::key_slot(k),
        (None, None) => crate::hash::key_slot(crate::hash::NONE_KEY),
    };
    let messages = f.num_messages_in_batch.map_or(1, |n| n.max(1) as u32);
    let counted = match (f.chunk_id, f.num_chunks_from_msg) {
        (Some(id), Some(n)) if n > 1 && id != n - 1 => 0,
        _ => messages,
    };
    Ok(DispatchInfo {
        messages,
        counted,
        key_slot,
        deliver_at: f.deliver_at_time,
    })
}

/// Standard base64, with or without padding; None if it is not base64.
fn base64_decode(s: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    STANDARD
        .decode(s)
        .or_else(|_| STANDARD_NO_PAD.decode(s))
        .ok()
}

fn metadata_bytes(raw: &[u8]) -> Result<&[u8], EntryError> {
    if raw.len() < 10 {
        return Err(EntryError::Truncated("metadata size"));
    }
    let size = u32::from_be_bytes([raw[6], raw[7], raw[8], raw[9]]) as usize;
    let rest = &raw[10..];
    if size > rest.len() {
        return Err(EntryError::MetadataSize {
            size,
            available: rest.len(),
        });
    }
    Ok(&rest[..size])
}

/// Reads only the metadata of an entry in stored form, without checking the CRC.
pub fn peek_metadata(raw: &[u8]) -> Result<MessageMetadata, EntryError> {
    MessageMetadata::decode(metadata_bytes(raw)?).map_err(|e| EntryError::Metadata(e.to_string()))
}

fn split_metadata(mut b: Bytes) -> Result<(MessageMetadata, Bytes), EntryError> {
    if b.len() < 4 {
        return Err(EntryError::Truncated("metadata size"));
    }
    let size = b.get_u32() as usize;
    if size > b.len() {
        return Err(EntryError::MetadataSize {
            size,
            available: b.len(),
        });
    }
    let meta = b.split_to(size);
    let metadata =
        MessageMetadata::decode(meta).map_err(|e| EntryError::Metadata(e.to_string()))?;
    Ok((metadata, b))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn meta() -> MessageMetadata {
        MessageMetadata {
            producer_name: "p".into(),
            sequence_id: 7,
            publish_time: 1234,
            ..Default::default()
        }
    }

    #[test]
    fn dispatch_key_is_ordering_then_partition_then_none() {
        use crate::hash::{NONE_KEY, key_slot};
        let mut m = meta();
        let d = peek_dispatch(&encode_entry(&m, b"x")).unwrap();
        assert_eq!(d.key_slot, key_slot(NONE_KEY));
        assert_eq!(d.messages, 1);
        m.partition_key = Some("user-7".into());
        m.deliver_at_time = Some(99);
        let d = peek_dispatch(&encode_entry(&m, b"x")).unwrap();
        assert_eq!(d.key_slot, key_slot(b"user-7"));
        assert_eq!(d.deliver_at, Some(99));
        m.partition_key = Some("dXNlci03".into()); // base64 of user-7
        m.partition_key_b64_encoded = Some(true);
        assert_eq!(
            peek_dispatch(&encode_entry(&m, b"x")).unwrap().key_slot,
            key_slot(b"user-7")
        );
        m.ordering_key = Some(Bytes::from_static(b"ord"));
        m.num_messages_in_batch = Some(5);
        let d = peek_dispatch(&encode_entry(&m, b"x")).unwrap();
        assert_eq!((d.key_slot, d.messages), (key_slot(b"ord"), 5));
        m.num_messages_in_batch = None;
        m.num_chunks_from_msg = Some(3);
        m.chunk_id = Some(1);
        let d = peek_dispatch(&encode_entry(&m, b"x")).unwrap();
        assert_eq!((d.messages, d.counted), (1, 0));
        m.chunk_id = Some(2);
        assert_eq!(peek_dispatch(&encode_entry(&m, b"x")).unwrap().counted, 1);
        assert_eq!(base64_decode(b"YQ=="), Some(b"a".to_vec()));
        assert_eq!(base64_decode(b"YWI"), Some(b"ab".to_vec()));
        assert_eq!(base64_decode(b"Y!"), None);
    }

    #[test]
    fn round_trip_and_corruption() {
        let raw = encode_entry(&meta(), b"hello");
        let e = parse_entry(raw.clone()).unwrap();
        assert_eq!(e.metadata.sequence_id, 7);
        assert_eq!(&e.payload[..], b"hello");
        assert_eq!(e.num_messages(), 1);
        let mut bad = raw.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(
            parse_entry(Bytes::from(bad)),
            Err(EntryError::Checksum { .. })
        ));
    }

    #[test]
    fn entries_without_checksum_get_one() {
        let m = meta();
        let mut section = BytesMut::new();
        section.put_u32(m.encoded_len() as u32);
        m.encode(&mut section).unwrap();
        section.put_slice(b"xyz");
        let e = normalize(section.freeze()).unwrap();
        assert_eq!(&e.payload[..], b"xyz");
        parse_entry(e.raw).unwrap();
    }

    #[test]
    fn peek_reads_metadata() {
        let raw = encode_entry(&meta(), &[0u8; 100_000]);
        assert_eq!(peek_metadata(&raw).unwrap().publish_time, 1234);
        assert_eq!(peek_message_count(&raw).unwrap(), 1);
        let batch = MessageMetadata {
            num_messages_in_batch: Some(7),
            ..meta()
        };
        assert_eq!(peek_message_count(&encode_entry(&batch, b"")).unwrap(), 7);
    }

    #[test]
    fn to_stored_checks_without_decoding() {
        let raw = encode_entry(&meta(), b"p");
        assert_eq!(to_stored(raw.clone()).unwrap(), raw);
        let mut bad = raw.to_vec();
        bad[12] ^= 1;
        assert!(matches!(
            to_stored(Bytes::from(bad)),
            Err(EntryError::Checksum { .. })
        ));
    }
}
