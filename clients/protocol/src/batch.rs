//! Batch payloads: `[u32 size][SingleMessageMetadata][payload]` repeated, one record per
//! message. Compression is the producer's business; these functions see uncompressed bytes.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

use crate::proto::SingleMessageMetadata;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    #[error("batch record {index}: {reason}")]
    Malformed { index: usize, reason: String },
}

/// Encodes messages into one batch payload.
pub fn encode_batch<'a>(
    messages: impl IntoIterator<Item = (&'a SingleMessageMetadata, &'a [u8])>,
) -> Bytes {
    let mut out = BytesMut::new();
    for (meta, payload) in messages {
        let mut meta = meta.clone();
        meta.payload_size = payload.len() as i32;
        out.put_u32(meta.encoded_len() as u32);
        let _ = meta.encode(&mut out);
        out.put_slice(payload);
    }
    out.freeze()
}

/// Splits a batch payload holding `count` messages.
pub fn decode_batch(
    mut payload: Bytes,
    count: usize,
) -> Result<Vec<(SingleMessageMetadata, Bytes)>, BatchError> {
    let err = |index: usize, reason: String| BatchError::Malformed { index, reason };
    let mut out = Vec::with_capacity(count.min(4096));
    for index in 0..count {
        if payload.len() < 4 {
            return Err(err(index, "missing metadata size".into()));
        }
        let size = payload.get_u32() as usize;
        if size > payload.len() {
            return Err(err(
                index,
                format!("metadata size {size} exceeds the payload"),
            ));
        }
        let meta = SingleMessageMetadata::decode(payload.split_to(size))
            .map_err(|e| err(index, e.to_string()))?;
        let len = usize::try_from(meta.payload_size).map_err(|_| {
            err(
                index,
                format!("negative payload size {}", meta.payload_size),
            )
        })?;
        if len > payload.len() {
            return Err(err(
                index,
                format!("payload size {len} exceeds the payload"),
            ));
        }
        let body = payload.split_to(len);
        out.push((meta, body));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trip() {
        let metas: Vec<SingleMessageMetadata> = (0..3)
            .map(|i| SingleMessageMetadata {
                partition_key: Some(format!("k{i}")),
                sequence_id: Some(i),
                ..Default::default()
            })
            .collect();
        let bodies: [&[u8]; 3] = [b"a", b"", b"ccc"];
        let payload = encode_batch(metas.iter().zip(bodies.iter().copied()));
        let out = decode_batch(payload.clone(), 3).unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(out[2].0.partition_key.as_deref(), Some("k2"));
        assert_eq!(&out[2].1[..], b"ccc");
        assert!(decode_batch(payload.clone(), 4).is_err());
        assert!(decode_batch(payload.slice(..payload.len() - 1), 3).is_err());
    }
}
