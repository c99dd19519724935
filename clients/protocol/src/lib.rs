//! The Pulsar binary protocol as data: our own `.proto` compiled by prost, the frame codec
//! (simple and payload frames, magic + CRC32C), batch payload encoding, the payload codecs and the
//! ServerError codes. Shared by the broker and the clients. It performs no I/O and depends on no other
//! Magnetar crate; decoding any byte sequence returns an error, never a panic.

pub mod batch;
pub mod commands;
pub mod compression;
pub mod entry;
pub mod frame;
pub mod hash;

/// The prost types generated from `proto/pulsar.proto` (package `pulsar.proto`).
#[allow(clippy::all, clippy::pedantic, missing_docs, rust_2018_idioms)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/pulsar.proto.rs"));
}

pub use entry::{Entry, EntryError};
pub use frame::{Frame, FrameError, decode_frame, encode_command, encode_message};
pub use proto::{BaseCommand, MessageIdData, MessageMetadata, ServerError};

/// The highest protocol version we speak; CONNECTED answers min(client's, this).
pub const PROTOCOL_VERSION: i32 = 20;

/// Pulsar's default maximum message size (5 MiB).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 5 * 1024 * 1024;

/// Room for the command and metadata on top of the message in a frame.
pub const FRAME_PADDING: usize = 10 * 1024;
