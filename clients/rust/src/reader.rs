//! Readers: a stream over one topic from a chosen position, on a non-durable subscription
//! (nothing is stored for it on the broker, nothing needs acknowledging).

use std::time::Duration;

use crate::consumer::{Consumer, ConsumerBuilder, ConsumerOptions, SubscriptionType};
use crate::error::Result;
use crate::message::{Message, MessageId};
use crate::service::Client;

pub struct ReaderBuilder {
    client: Client,
    topic: String,
    start: MessageId,
    inclusive: bool,
    name: Option<String>,
    queue: u32,
    read_compacted: bool,
    subscription: Option<String>,
}

impl ReaderBuilder {
    pub(crate) fn new(client: Client, topic: String) -> ReaderBuilder {
        ReaderBuilder {
            client,
            topic,
            start: MessageId::LATEST,
            inclusive: false,
            name: None,
            queue: 1000,
            read_compacted: false,
            subscription: None,
        }
    }

    /// Where to start: `MessageId::EARLIEST`, `MessageId::LATEST` (the default) or an id.
    pub fn start_message_id(mut self, id: MessageId) -> Self {
        self.start = id;
        self
    }

    /// Deliver the start message itself too (by default reading starts after it).
    pub fn start_inclusive(mut self, on: bool) -> Self {
        self.inclusive = on;
        self
    }

    pub fn name(mut self, n: impl Into<String>) -> Self {
        self.name = Some(n.into());
        self
    }

    pub fn receiver_queue_size(mut self, n: u32) -> Self {
        self.queue = n.max(1);
        self
    }

    pub fn read_compacted(mut self, on: bool) -> Self {
        self.read_compacted = on;
        self
    }

    /// The non-durable subscription's name (default: `reader-` and a random suffix).
    pub fn subscription_name(mut self, s: impl Into<String>) -> Self {
        self.subscription = Some(s.into());
        self
    }

    pub async fn create(self) -> Result<Reader> {
        let opts = ConsumerOptions {
            topics: vec![self.topic],
            subscription: self
                .subscription
                .unwrap_or_else(|| format!("reader-{:010x}", rand::random::<u64>() >> 24)),
            sub_type: SubscriptionType::Exclusive,
            name: self.name,
            receiver_queue_size: self.queue,
            read_compacted: self.read_compacted,
            ack_group_time: Duration::ZERO,
            durable: false,
            start: Some(self.start),
            start_inclusive: self.inclusive,
            ..Default::default()
        };
        let consumer = ConsumerBuilder::new(self.client.clone())
            .options(opts)
            .subscribe()
            .await?;
        Ok(Reader { consumer })
    }
}

/// Reads a topic in order from a position.
#[derive(Debug)]
pub struct Reader {
    consumer: Consumer,
}

impl Reader {
    /// Waits for the next message.
    pub async fn read_next(&mut self) -> Result<Message> {
        self.consumer.receive().await
    }

    /// Whether a message is stored after the last one read.
    pub async fn has_message_available(&mut self) -> Result<bool> {
        self.consumer.has_message_available().await
    }

    /// Continues from `id` (inclusive), `MessageId::EARLIEST` or `MessageId::LATEST`.
    pub async fn seek(&mut self, id: MessageId) -> Result<()> {
        self.consumer.seek(id).await
    }

    /// Continues from the first message published at or after `ms` (epoch millis).
    pub async fn seek_time(&mut self, ms: u64) -> Result<()> {
        self.consumer.seek_time(ms).await
    }

    pub fn has_reached_end_of_topic(&self) -> bool {
        self.consumer.has_reached_end_of_topic()
    }

    pub fn topics(&self) -> Vec<String> {
        self.consumer.topics()
    }

    pub async fn close(self) -> Result<()> {
        self.consumer.close().await
    }
}
