//! The task that answers one producer's SENDs in order, as their appends complete: publishing
//! is pipelined while receipts keep the order clients require.

use std::sync::Arc;

use magnetar_managed_ledger::{AppendWait, MlError};
use magnetar_protocol::commands;
use magnetar_protocol::proto::*;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::error::BrokerError;
use crate::protocol::outbound::ConnTx;
use crate::stats::Meter;
use crate::topic::Topic;
use crate::topic::producers::PublishPermit;

pub(crate) struct ReceiptJob {
    pub(crate) sequence_id: u64,
    pub(crate) highest_sequence_id: Option<u64>,
    pub(crate) messages: u32,
    pub(crate) bytes: usize,
    pub(crate) wait: AppendWait,
    /// Its room in the topic's publish budget, given back once the receipt is out.
    pub(crate) _permit: PublishPermit,
}

pub(crate) enum ProducerJob {
    Receipt(ReceiptJob),
    /// A resend of something already accepted (deduplication): answered in order, with
    /// the (-1, -1) receipt once the original is durable.
    Duplicate {
        sequence_id: u64,
        highest_sequence_id: Option<u64>,
        seq: i64,
    },
    /// CLOSE_PRODUCER: answer once every earlier receipt went out.
    Close(u64),
}

/// Answers one producer's SENDs in order as their appends complete.
pub(crate) async fn receipts(
    (producer_id, name): (u64, String),
    topic: Arc<Topic>,
    tx: ConnTx,
    mut jobs: mpsc::UnboundedReceiver<ProducerJob>,
    meter: Arc<Meter>,
) {
    while let Some(job) = jobs.recv().await {
        match job {
            ProducerJob::Receipt(j) => match j
                .wait
                .await
                .unwrap_or_else(|_| Err(MlError::Closed(topic.full.clone())))
            {
                Ok(p) => {
                    topic.record_publish(j.messages, j.bytes);
                    meter.record(j.messages as u64, j.bytes as u64);
                    tx.send(commands::send_receipt(
                        producer_id,
                        j.sequence_id,
                        j.highest_sequence_id,
                        p.ledger,
                        p.entry as u64,
                    ));
                }
                Err(e) => {
                    warn!(topic = %topic.full, producer_id, error = %e, "publish failed");
                    topic.reset_send_check(&name);
                    let e = BrokerError::from(e);
                    tx.send(commands::send_error(
                        producer_id,
                        j.sequence_id,
                        e.code(),
                        e.to_string(),
                    ));
                }
            },
            ProducerJob::Duplicate {
                sequence_id,
                highest_sequence_id,
                seq,
            } => {
                if topic.ml.producer_sequence(&name).is_some_and(|p| p >= seq) {
                    debug!(topic = %topic.full, producer = %name, seq, "duplicate dropped");
                    tx.send(commands::send_receipt(
                        producer_id,
                        sequence_id,
                        highest_sequence_id,
                        u64::MAX,
                        u64::MAX,
                    ));
                } else {
                    // the original is still in flight elsewhere (or failed): the client
                    // resends after this error, and then the outcome is known
                    tx.send(commands::send_error(
                        producer_id,
                        sequence_id,
                        ServerError::PersistenceError,
                        "a message with this sequence id is still being stored".to_string(),
                    ));
                }
            }
            ProducerJob::Close(request_id) => {
                tx.send(commands::success(request_id));
                return;
            }
        }
    }
}
