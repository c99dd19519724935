//! Frames on the wire: `[total u32][command size u32][BaseCommand]`, optionally followed by a
//! payload section (`[0x0e02][size][BrokerEntryMetadata]` then the entry in stored form).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

use crate::entry::MAGIC_BROKER_ENTRY_METADATA;
use crate::proto::{BaseCommand, BrokerEntryMetadata};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {size} bytes exceeds the maximum of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// One decoded frame.
#[derive(Debug, Clone)]
pub struct Frame {
    pub command: BaseCommand,
    pub broker_entry_metadata: Option<BrokerEntryMetadata>,
    /// The payload section (magic onwards) of SEND and MESSAGE frames.
    pub payload: Option<Bytes>,
}

/// Takes one whole frame off the front of `buf`, or returns `Ok(None)` if more bytes are
/// needed. `max_frame` bounds the frame size (the 4-byte length prefix excluded).
pub fn decode_frame(buf: &mut BytesMut, max_frame: usize) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let total = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if total > max_frame {
        return Err(FrameError::TooLarge {
            size: total,
            max: max_frame,
        });
    }
    if total < 4 {
        return Err(FrameError::Malformed(format!(
            "total size {total} leaves no room for the command size"
        )));
    }
    if buf.len() < 4 + total {
        buf.reserve(4 + total - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    let mut frame = buf.split_to(total).freeze();
    decode_body(&mut frame).map(Some)
}

/// Most bytes a command may take in a frame too large to accept, for reading which command
/// it was.
pub const MAX_COMMAND_SIZE: usize = 64 * 1024;

/// The command at the front of a frame that is too large to take whole (so its sender can
/// be told why): `Ok(None)` until enough of the frame has arrived.
pub fn peek_command(buf: &[u8]) -> Result<Option<BaseCommand>, FrameError> {
    if buf.len() < 8 {
        return Ok(None);
    }
    let cmd_size = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    if cmd_size > MAX_COMMAND_SIZE {
        return Err(FrameError::Malformed(format!(
            "command of {cmd_size} bytes"
        )));
    }
    if buf.len() < 8 + cmd_size {
        return Ok(None);
    }
    BaseCommand::decode(&buf[8..8 + cmd_size])
        .map(Some)
        .map_err(|e| FrameError::Malformed(format!("undecodable command: {e}")))
}

/// Decodes a frame body (everything after the total-size prefix).
pub fn decode_body(frame: &mut Bytes) -> Result<Frame, FrameError> {
    if frame.len() < 4 {
        return Err(FrameError::Malformed("missing command size".into()));
    }
    let cmd_size = frame.get_u32() as usize;
    if cmd_size > frame.len() {
        return Err(FrameError::Malformed(format!(
            "command size {cmd_size} exceeds the {} bytes left in the frame",
            frame.len()
        )));
    }
    let command = BaseCommand::decode(frame.split_to(cmd_size))
        .map_err(|e| FrameError::Malformed(format!("undecodable command: {e}")))?;
    if frame.is_empty() {
        return Ok(Frame {
            command,
            broker_entry_metadata: None,
            payload: None,
        });
    }
    let mut broker_entry_metadata = None;
    if frame.len() >= 2 && frame[..2] == MAGIC_BROKER_ENTRY_METADATA.to_be_bytes() {
        frame.advance(2);
        if frame.len() < 4 {
            return Err(FrameError::Malformed(
                "missing broker entry metadata size".into(),
            ));
        }
        let size = frame.get_u32() as usize;
        if size > frame.len() {
            return Err(FrameError::Malformed(
                "broker entry metadata exceeds the frame".into(),
            ));
        }
        broker_entry_metadata = Some(
            BrokerEntryMetadata::decode(frame.split_to(size))
                .map_err(|e| FrameError::Malformed(format!("broker entry metadata: {e}")))?,
        );
    }
    Ok(Frame {
        command,
        broker_entry_metadata,
        payload: Some(std::mem::take(frame)),
    })
}

/// Appends a simple frame carrying `cmd` to `out`.
pub fn encode_command(cmd: &BaseCommand, out: &mut BytesMut) {
    let len = cmd.encoded_len();
    out.reserve(8 + len);
    out.put_u32(4 + len as u32);
    out.put_u32(len as u32);
    // cannot fail: capacity was reserved
    let _ = cmd.encode(out);
}

/// Appends a payload frame: `cmd` followed by an entry in stored form.
pub fn encode_message(cmd: &BaseCommand, entry: &[u8], out: &mut BytesMut) {
    let len = cmd.encoded_len();
    out.reserve(8 + len + entry.len());
    out.put_u32((4 + len + entry.len()) as u32);
    out.put_u32(len as u32);
    let _ = cmd.encode(out);
    out.put_slice(entry);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::commands;
    use crate::entry::{encode_entry, parse_entry};
    use crate::proto::MessageMetadata;

    #[test]
    fn simple_and_payload_frames_round_trip() {
        let mut buf = BytesMut::new();
        encode_command(&commands::ping(), &mut buf);
        let entry = encode_entry(
            &MessageMetadata {
                producer_name: "p".into(),
                sequence_id: 1,
                publish_time: 2,
                ..Default::default()
            },
            b"payload",
        );
        encode_message(&commands::send(3, 4, 1), &entry, &mut buf);
        // byte by byte: partial input is never an error
        let mut input = BytesMut::new();
        let mut frames = Vec::new();
        for b in buf.iter() {
            input.put_u8(*b);
            while let Some(f) = decode_frame(&mut input, 1 << 20).unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(frames.len(), 2);
        assert!(frames[0].command.ping.is_some());
        assert!(frames[0].payload.is_none());
        let send = frames[1].command.send.as_ref().unwrap();
        assert_eq!((send.producer_id, send.sequence_id), (3, 4));
        let e = parse_entry(frames[1].payload.clone().unwrap()).unwrap();
        assert_eq!(&e.payload[..], b"payload");
    }

    #[test]
    fn oversized_and_malformed_frames_are_errors() {
        let mut buf = BytesMut::from(&[0u8, 0x10, 0, 0][..]);
        assert!(matches!(
            decode_frame(&mut buf, 1024),
            Err(FrameError::TooLarge { .. })
        ));
        let mut buf = BytesMut::from(&[0u8, 0, 0, 8, 0, 0, 0, 9, 1, 2, 3, 4][..]);
        assert!(matches!(
            decode_frame(&mut buf, 1024),
            Err(FrameError::Malformed(_))
        ));
        let mut buf = BytesMut::from(&[0u8, 0, 0, 2, 0, 0][..]);
        assert!(decode_frame(&mut buf, 1024).is_err());
    }
}
