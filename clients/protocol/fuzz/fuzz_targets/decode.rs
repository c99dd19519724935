//! Feeds arbitrary bytes to every decoder of the protocol crate; any panic is a bug.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use magnetar_protocol::{batch, entry, frame};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(f)) = frame::decode_frame(&mut buf, 1 << 20) {
        if let Some(payload) = f.payload {
            if let Ok(e) = entry::normalize(payload) {
                let n = e.num_messages() as usize;
                let _ = batch::decode_batch(e.payload, n);
            }
        }
    }
    let _ = entry::parse_entry(Bytes::copy_from_slice(data));
    let _ = entry::peek_metadata(data);
    let _ = entry::peek_message_count(data);
    let _ = entry::peek_dispatch(data);
    let _ = frame::peek_command(data);
    let _ = entry::to_stored(Bytes::copy_from_slice(data));
    let _ = batch::decode_batch(Bytes::copy_from_slice(data), 16);
});
