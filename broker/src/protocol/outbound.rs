//! A connection's outgoing side: the queue topics and dispatchers send to, and the task that
//! drains it into the socket, coalescing frames into one write.
//!
//! The queue counts the bytes it holds. Past a high-water mark the link says it is
//! backlogged and dispatch sends that connection's consumers nothing more until the writer
//! has drained it (as Pulsar stops dispatching to a channel that is not writable): a consumer
//! that stops reading its socket is throttled, and the broker's memory stays flat. What else
//! is queued (receipts, control commands) is bounded by the publish limits and by the
//! requests a client makes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

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

/// What one queued item is counted as: a command's frame is small; a message is its entry.
const COMMAND_BYTES: usize = 64;

impl Out {
    fn weight(&self) -> usize {
        match self {
            Out::Cmd(_) => COMMAND_BYTES,
            Out::Msg(_, e) => COMMAND_BYTES + e.len(),
            Out::Close => 0,
        }
    }
}

/// Bytes queued: this connection's, and every connection's of the broker.
#[derive(Debug)]
struct Queued {
    bytes: AtomicUsize,
    high_water: usize,
    all: Arc<AtomicUsize>,
}

impl Queued {
    fn add(&self, n: usize) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
        self.all.fetch_add(n, Ordering::Relaxed);
    }

    fn sub(&self, n: usize) {
        self.bytes.fetch_sub(n, Ordering::Relaxed);
        self.all.fetch_sub(n, Ordering::Relaxed);
    }
}

/// The sending side of a connection, shared with topics and dispatchers.
#[derive(Clone, Debug)]
pub struct ConnTx {
    tx: mpsc::UnboundedSender<Out>,
    queued: Arc<Queued>,
}

/// The receiving end its writer drains.
pub struct ConnRx {
    rx: mpsc::UnboundedReceiver<Out>,
    queued: Arc<Queued>,
}

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
    /// A new queue, backlogged past `high_water` bytes, counted also in `all`.
    pub fn new(high_water: usize, all: Arc<AtomicUsize>) -> (ConnTx, ConnRx) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(Queued {
            bytes: AtomicUsize::new(0),
            high_water,
            all,
        });
        (
            ConnTx {
                tx,
                queued: Arc::clone(&queued),
            },
            ConnRx { rx, queued },
        )
    }

    fn push(&self, out: Out) {
        let n = out.weight();
        self.queued.add(n);
        if self.tx.send(out).is_err() {
            // the writer is gone: nothing will drain it
            self.queued.sub(n);
        }
    }

    pub fn send(&self, cmd: BaseCommand) {
        self.push(Out::Cmd(cmd));
    }

    pub fn close(&self) {
        self.push(Out::Close);
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.queued.bytes.load(Ordering::Relaxed)
    }
}

impl ClientLink for ConnTx {
    fn send(&self, cmd: BaseCommand) {
        ConnTx::send(self, cmd);
    }

    fn send_message(&self, cmd: BaseCommand, entry: Bytes) {
        self.push(Out::Msg(cmd, entry));
    }

    fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    fn backlogged(&self) -> bool {
        self.queued_bytes() > self.queued.high_water
    }
}

impl Drop for ConnRx {
    fn drop(&mut self) {
        // what is still queued will never be written: it no longer counts
        self.rx.close();
        while let Ok(out) = self.rx.try_recv() {
            self.queued.sub(out.weight());
        }
    }
}

pub(crate) async fn write_loop(mut wr: impl AsyncWrite + Unpin, mut rx: ConnRx) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while let Some(first) = rx.rx.recv().await {
        let mut next = Some(first);
        let mut close = false;
        let mut taken = 0;
        while let Some(out) = next.take() {
            taken += out.weight();
            match out {
                Out::Cmd(c) => frame::encode_command(&c, &mut buf),
                Out::Msg(c, e) => frame::encode_message(&c, &e, &mut buf),
                Out::Close => {
                    close = true;
                    break;
                }
            }
            if buf.len() < 256 * 1024 {
                next = rx.rx.try_recv().ok();
            }
        }
        let written = if buf.is_empty() {
            Ok(())
        } else {
            wr.write_all(&buf).await
        };
        rx.queued.sub(taken);
        if let Err(e) = written {
            debug!(error = %e, "write failed");
            return;
        }
        buf.clear();
        if close {
            let _ = wr.shutdown().await;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_queue_counts_what_it_holds_until_written() {
        let all = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = ConnTx::new(1_000, Arc::clone(&all));
        tx.send_message(BaseCommand::default(), Bytes::from(vec![0; 2_000]));
        assert!(tx.backlogged());
        assert_eq!(all.load(Ordering::Relaxed), 2_064);
        // a writer that drains into a sink
        let (sink, _keep) = tokio::io::duplex(1 << 20);
        let writer = tokio::spawn(write_loop(sink, rx));
        for _ in 0..1_000 {
            if tx.queued_bytes() == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert!(!tx.backlogged());
        assert_eq!(all.load(Ordering::Relaxed), 0);
        // a writer gone: nothing stays counted
        tx.close();
        writer.await.unwrap();
        tx.send(BaseCommand::default());
        assert_eq!(all.load(Ordering::Relaxed), 0);
    }
}
