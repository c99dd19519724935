//! Decoding any byte sequence returns a value or an error, never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::{Bytes, BytesMut};
use magnetar_protocol::{batch, commands, entry, frame};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut buf = BytesMut::from(&data[..]);
        while let Ok(Some(_)) = frame::decode_frame(&mut buf, 1 << 16) {}
        let _ = frame::decode_body(&mut Bytes::from(data.clone()));
        let _ = entry::parse_entry(Bytes::from(data.clone()));
        let _ = entry::normalize(Bytes::from(data.clone()));
        let _ = entry::peek_metadata(&data);
        let _ = entry::peek_message_count(&data);
        let _ = entry::peek_dispatch(&data);
        let _ = frame::peek_command(&data);
        let _ = entry::to_stored(Bytes::from(data.clone()));
        let _ = batch::decode_batch(Bytes::from(data), 8);
    }

    /// Valid frames with flipped bytes still never panic, and exercise deeper paths.
    #[test]
    fn mutated_frames_never_panic(pos in 0usize..200, byte in any::<u8>(), cut in 0usize..200) {
        let mut buf = BytesMut::new();
        let entry = entry::encode_entry(
            &magnetar_protocol::MessageMetadata {
                producer_name: "p".into(),
                sequence_id: 1,
                publish_time: 2,
                num_messages_in_batch: Some(2),
                ..Default::default()
            },
            &batch::encode_batch([
                (&Default::default(), &b"one"[..]),
                (&Default::default(), &b"two"[..]),
            ]),
        );
        frame::encode_message(&commands::send(1, 2, 2), &entry, &mut buf);
        let mut data = buf.to_vec();
        let p = pos % data.len();
        data[p] ^= byte;
        data.truncate(data.len() - cut.min(data.len()));
        let mut b = BytesMut::from(&data[..]);
        if let Ok(Some(f)) = frame::decode_frame(&mut b, 1 << 16)
            && let Some(payload) = f.payload
            && let Ok(e) = entry::normalize(payload)
        {
            let n = e.num_messages() as usize;
            let _ = batch::decode_batch(e.payload, n);
        }
    }
}
