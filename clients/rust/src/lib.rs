//! The native async Rust client for the Pulsar protocol: connection pool, lookup, producers,
//! consumers, readers and the admin REST client. The broker's geo-replicator uses it too.
//! It builds on `magnetar-protocol` only and must never import `broker`, `bookie` or `meta`.
