//! Offload of closed ledgers to object storage (local filesystem, S3, GCS, Azure through
//! `object_store`): the segment format (`segment`: a data object of CRC32C'd blocks and an
//! index object), ranged and cached reads of offloaded segments, and per-namespace offload
//! policies. So far the segment format exists; the stores and the offloader are to come.
//! It knows nothing of topics or subscriptions and must never import `broker`.

pub mod segment;
