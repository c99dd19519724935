//! The native async Rust client for the Pulsar protocol: connection pool, lookup, producers,
//! consumers, readers and the admin REST client. The broker's geo-replicator uses it too.
//! It builds on `magnetar-protocol` only and must never import `broker`, `bookie` or `meta`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), magnetar_client::Error> {
//! use magnetar_client::{Client, SubscriptionType};
//! let client = Client::new("pulsar://127.0.0.1:6650")?;
//! let producer = client.producer("orders").create().await?;
//! producer.send("hello").await?;
//! let mut consumer = client
//!     .consumer()
//!     .topic("orders")
//!     .subscription("billing")
//!     .subscription_type(SubscriptionType::Shared)
//!     .subscribe()
//!     .await?;
//! let m = consumer.receive().await?;
//! consumer.ack(&m)?;
//! # Ok(()) }
//! ```

pub mod admin;
mod client;
mod conn;
mod consumer;
mod error;
mod message;
mod producer;
mod reader;
mod service;

pub use client::ClientBuilder;
pub use conn::Authentication;
pub use consumer::{
    Consumer, ConsumerBuilder, ConsumerOptions, DeadLetterPolicy, InitialPosition, SubscriptionType,
};
pub use error::{Error, Result};
pub use magnetar_protocol::ServerError;
pub use magnetar_protocol::compression::Compression;
pub use message::{Message, MessageId, ProducerMessage, now_ms};
pub use producer::{
    AccessMode, Producer, ProducerBuilder, ProducerOptions, RoutingMode, SendFuture,
};
pub use reader::{Reader, ReaderBuilder};
pub use service::{Client, ClientOptions, TopicMode, topic_name};
