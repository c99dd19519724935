//! The bookie wire protocol: length-prefixed protobuf messages over TCP.
//!
//! A frame is `len u32 (big-endian) | message`. Clients send [`Request`]s with ids of their
//! choosing and may pipeline any number; the bookie answers each with a [`Response`] carrying
//! the same id, not necessarily in order. A frame that is too long or does not decode closes
//! that connection (with a logged reason) and nothing else.
//!
//! The messages are declared here with prost's derive rather than from a `.proto` file: the
//! protocol is ours alone and this keeps the build free of protoc.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

/// Frames longer than this are refused (entries are bounded well below it).
pub const MAX_FRAME_BYTES: usize = 16 << 20;

#[derive(Clone, PartialEq, Message)]
pub struct Request {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(oneof = "Op", tags = "2, 3, 4, 5, 6, 7, 8, 9")]
    pub op: Option<Op>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Op {
    #[prost(message, tag = "2")]
    Add(AddEntry),
    #[prost(message, tag = "3")]
    Read(ReadEntry),
    #[prost(message, tag = "4")]
    ReadRange(ReadRange),
    #[prost(message, tag = "5")]
    ReadLac(ReadLac),
    #[prost(message, tag = "6")]
    Fence(Fence),
    #[prost(message, tag = "7")]
    DeleteLedger(DeleteLedger),
    #[prost(message, tag = "8")]
    Health(Health),
    #[prost(message, tag = "9")]
    Auth(Auth),
}

/// Store one entry. `writer_key` binds the ledger to its writer on first add; later adds with
/// another key are refused. Once fenced, only adds with `recovery` set are accepted.
#[derive(Clone, PartialEq, Message)]
pub struct AddEntry {
    #[prost(uint64, tag = "1")]
    pub ledger_id: u64,
    #[prost(uint64, tag = "2")]
    pub entry_id: u64,
    #[prost(bytes = "bytes", tag = "3")]
    pub writer_key: Bytes,
    /// The writer's last-add-confirmed when it sent this entry (-1: none yet).
    #[prost(int64, tag = "4")]
    pub lac: i64,
    #[prost(bytes = "bytes", tag = "5")]
    pub data: Bytes,
    #[prost(bool, tag = "6")]
    pub recovery: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct ReadEntry {
    #[prost(uint64, tag = "1")]
    pub ledger_id: u64,
    #[prost(uint64, tag = "2")]
    pub entry_id: u64,
}

/// Consecutive entries from `first_entry`, stopping at a missing one or a limit.
#[derive(Clone, PartialEq, Message)]
pub struct ReadRange {
    #[prost(uint64, tag = "1")]
    pub ledger_id: u64,
    #[prost(uint64, tag = "2")]
    pub first_entry: u64,
    #[prost(uint32, tag = "3")]
    pub max_entries: u32,
    #[prost(uint64, tag = "4")]
    pub max_bytes: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct ReadLac {
    #[prost(uint64, tag = "1")]
    pub ledger_id: u64,
}

/// Refuse further normal adds to the ledger (durably), and report what this bookie has.
#[derive(Clone, PartialEq, Message)]
pub struct Fence {
    #[prost(uint64, tag = "1")]
    pub ledger_id: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct DeleteLedger {
    #[prost(uint64, tag = "1")]
    pub ledger_id: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Health {}

/// The first request on a connection to a bookie that requires authentication: the
/// cluster's shared secret. Anything else first is refused and the connection closed.
#[derive(Clone, PartialEq, Message)]
pub struct Auth {
    #[prost(bytes = "bytes", tag = "1")]
    pub secret: Bytes,
}

/// Outcome codes. Stable: never renumber or reuse one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Status {
    Ok = 0,
    NoSuchEntry = 1,
    NoSuchLedger = 2,
    Fenced = 3,
    WrongWriter = 4,
    ReadOnly = 5,
    TooLarge = 6,
    Corrupt = 7,
    Overloaded = 8,
    BadRequest = 9,
    Internal = 10,
    Unauthenticated = 11,
}

#[derive(Clone, PartialEq, Message)]
pub struct Response {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(enumeration = "Status", tag = "2")]
    pub status: i32,
    /// A sentence for logs when status is not Ok.
    #[prost(string, tag = "3")]
    pub message: String,
    #[prost(message, repeated, tag = "4")]
    pub entries: Vec<Entry>,
    /// ReadLac / Fence: last-add-confirmed known here (-1: none).
    #[prost(int64, tag = "5")]
    pub lac: i64,
    /// ReadLac / Fence: highest entry id stored here (-1: none).
    #[prost(int64, tag = "6")]
    pub last_entry: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Entry {
    #[prost(uint64, tag = "1")]
    pub entry_id: u64,
    #[prost(bytes = "bytes", tag = "2")]
    pub data: Bytes,
}

impl Response {
    pub fn ok(id: u64) -> Response {
        Response {
            id,
            status: Status::Ok as i32,
            message: String::new(),
            entries: Vec::new(),
            lac: -1,
            last_entry: -1,
        }
    }

    pub fn error(id: u64, status: Status, message: impl Into<String>) -> Response {
        Response {
            status: status as i32,
            message: message.into(),
            ..Response::ok(id)
        }
    }

    /// The status; a code this build does not know is `Internal`, never `Ok` (prost's own
    /// `status()` getter falls back to the default, which is `Ok`).
    pub fn outcome(&self) -> Status {
        Status::try_from(self.status).unwrap_or(Status::Internal)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME_BYTES}")]
    TooLong(usize),
    #[error("frame does not decode: {0}")]
    Malformed(String),
}

/// Appends `msg` as one frame.
pub fn encode_frame(msg: &impl Message, out: &mut BytesMut) {
    let len = msg.encoded_len();
    out.reserve(4 + len);
    out.put_u32(len as u32);
    // Encoding into a BytesMut with reserved room cannot fail.
    let _ = msg.encode(out);
}

/// Takes one whole frame off the front of `buf` if there is one.
pub fn decode_frame<M: Message + Default>(buf: &mut BytesMut) -> Result<Option<M>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLong(len));
    }
    if buf.len() < 4 + len {
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    let frame = buf.split_to(len).freeze();
    M::decode(frame)
        .map(Some)
        .map_err(|e| FrameError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_partial_frames() {
        let req = Request {
            id: 7,
            op: Some(Op::Add(AddEntry {
                ledger_id: 1,
                entry_id: 2,
                writer_key: Bytes::from_static(b"k"),
                lac: 1,
                data: Bytes::from_static(b"hello"),
                recovery: false,
            })),
        };
        let mut buf = BytesMut::new();
        encode_frame(&req, &mut buf);
        encode_frame(&req, &mut buf);
        let mut partial = buf.split_to(5);
        assert_eq!(decode_frame::<Request>(&mut partial).unwrap(), None);
        partial.unsplit(buf);
        assert_eq!(
            decode_frame::<Request>(&mut partial).unwrap(),
            Some(req.clone())
        );
        assert_eq!(decode_frame::<Request>(&mut partial).unwrap(), Some(req));
        assert!(partial.is_empty());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 1, 2][..]);
        assert!(matches!(
            decode_frame::<Request>(&mut buf),
            Err(FrameError::TooLong(_))
        ));
        let mut seed = 0x1234_5678u32;
        for _ in 0..2000 {
            let mut raw = Vec::new();
            let len = (seed % 64) as usize;
            raw.extend_from_slice(&(len as u32).to_be_bytes());
            for _ in 0..len {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                raw.push((seed >> 16) as u8);
            }
            let mut buf = BytesMut::from(&raw[..]);
            let _ = decode_frame::<Request>(&mut buf);
        }
    }
}
