//! The one thing topics know of a client connection: where to send it commands and
//! messages. The protocol layer implements it; topics and dispatchers never see a socket.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use magnetar_protocol::proto::BaseCommand;

pub trait ClientLink: Send + Sync + fmt::Debug {
    /// Queues a command for the client.
    fn send(&self, cmd: BaseCommand);

    /// Queues a MESSAGE command followed by the entry as stored.
    fn send_message(&self, cmd: BaseCommand, entry: Bytes);

    /// Whether the connection is gone (nothing sent now will be read).
    fn is_closed(&self) -> bool;

    /// Whether more is queued for the client than it is reading: dispatch sends it nothing
    /// more until this clears.
    fn backlogged(&self) -> bool {
        false
    }
}

/// A connection as topics hold it.
pub type Link = Arc<dyn ClientLink>;
