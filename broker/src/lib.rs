//! The broker: the Pulsar binary protocol server, topics over managed ledgers, durable cursors,
//! subscriptions and their dispatchers, ownership and lookup, the admin REST API, auth,
//! geo-replication and metrics; and the `magnetar` server binary.
//! It is the top of the crate graph: it may use `meta`, `bookie`, `tiering` and the clients,
//! and nothing below it may use it. It never writes a disk itself: durable state goes to
//! bookies (entries) and `meta` (records).

pub mod auth;
pub mod auth_basic;
pub mod authz;
pub mod cluster;
pub mod config;
pub mod error;
pub mod http;
pub mod names;
pub mod offload;
pub mod policies;
pub mod protocol;
pub mod ratelimit;
pub mod schema;
pub mod service;
pub mod stats;
pub mod tls;
pub mod topic;
