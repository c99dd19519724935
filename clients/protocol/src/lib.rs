//! The Pulsar binary protocol as data: our own `.proto` compiled by prost, the frame codec
//! (simple and payload frames, magic + CRC32C), batch payload encoding and the ServerError codes.
//! Shared by the broker and the clients. It performs no I/O and depends on no other
//! Magnetar crate; decoding any byte sequence returns an error, never a panic.
