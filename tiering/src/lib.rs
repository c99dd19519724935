//! Offload of closed ledgers to object storage (local filesystem, S3, GCS, Azure through
//! `object_store`): the segment format (header, entries, index, checksummed footer), ranged
//! and cached reads of offloaded segments, and per-namespace offload policies.
//! It knows nothing of topics or subscriptions and must never import `broker`.
