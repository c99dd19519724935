//! A connection's outgoing side: the queue topics and dispatchers send to, and the task that
//! drains it into the socket, coalescing frames into one write.

use bytes::{Bytes, BytesMut};
use magnetar_protocol::commands;
use magnetar_protocol::frame;
use magnetar_protocol::proto::*;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::debug;

use crate::topic::link::ClientLink;

pub enum Out {
    Cmd(BaseCommand),
    Msg(BaseCommand, Bytes),
    Close,
}

/// The sending side of a connection, shared with topics and dispatchers.
#[derive(Clone, Debug)]
pub struct ConnTx(mpsc::UnboundedSender<Out>);

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Out::Cmd(c) => write!(f, "Cmd({})", commands::type_name(c.r#type)),
            Out::Msg(..) => f.write_str("Msg"),
            Out::Close => f.write_str("Close"),
        }
    }
}

impl ConnTx {
    /// A new queue and the receiving end its writer drains.
    pub fn new() -> (ConnTx, mpsc::UnboundedReceiver<Out>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (ConnTx(tx), rx)
    }

    pub fn send(&self, cmd: BaseCommand) {
        let _ = self.0.send(Out::Cmd(cmd));
    }

    pub fn close(&self) {
        let _ = self.0.send(Out::Close);
    }
}

impl ClientLink for ConnTx {
    fn send(&self, cmd: BaseCommand) {
        ConnTx::send(self, cmd);
    }

    fn send_message(&self, cmd: BaseCommand, entry: Bytes) {
        let _ = self.0.send(Out::Msg(cmd, entry));
    }

    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}

pub(crate) async fn write_loop(
    mut wr: impl AsyncWrite + Unpin,
    mut rx: mpsc::UnboundedReceiver<Out>,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut close = false;
        while let Some(out) = next.take() {
            match out {
                Out::Cmd(c) => frame::encode_command(&c, &mut buf),
                Out::Msg(c, e) => frame::encode_message(&c, &e, &mut buf),
                Out::Close => {
                    close = true;
                    break;
                }
            }
            if buf.len() < 256 * 1024 {
                next = rx.try_recv().ok();
            }
        }
        if !buf.is_empty() {
            if let Err(e) = wr.write_all(&buf).await {
                debug!(error = %e, "write failed");
                return;
            }
            buf.clear();
        }
        if close {
            let _ = wr.shutdown().await;
            return;
        }
    }
}
