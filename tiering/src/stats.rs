//! What the tier did, for `/metrics`: offloads (bytes, time, errors) and tiered reads
//! (bytes, requests, errors, latency histogram). Relaxed atomic adds only.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (ms) of the tiered-read latency histogram's buckets.
pub const READ_LATENCY_BUCKETS_MS: [u64; 12] =
    [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000];

#[derive(Debug, Default)]
pub struct TierStats {
    pub offloaded_ledgers: AtomicU64,
    pub offloaded_bytes: AtomicU64,
    pub offload_micros: AtomicU64,
    pub offload_errors: AtomicU64,
    /// Bytes written to the store (data and index), also by offloads that later failed.
    pub written_bytes: AtomicU64,
    pub read_requests: AtomicU64,
    pub read_bytes: AtomicU64,
    pub read_errors: AtomicU64,
    pub read_micros: AtomicU64,
    /// Per bucket of [`READ_LATENCY_BUCKETS_MS`], then one for slower reads.
    pub read_latency: [AtomicU64; READ_LATENCY_BUCKETS_MS.len() + 1],
    /// Blocks served from the read cache / fetched.
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub orphans_deleted: AtomicU64,
}

impl TierStats {
    pub(crate) fn offloaded(&self, bytes: u64, took: Duration) {
        self.offloaded_ledgers.fetch_add(1, Ordering::Relaxed);
        self.offloaded_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.offload_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    pub(crate) fn offload_failed(&self) {
        self.offload_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn note_written(&self, bytes: u64) {
        self.written_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn read(&self, bytes: u64, took: Duration) {
        self.read_requests.fetch_add(1, Ordering::Relaxed);
        self.read_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.read_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        let ms = took.as_millis() as u64;
        let slot = READ_LATENCY_BUCKETS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(READ_LATENCY_BUCKETS_MS.len());
        self.read_latency[slot].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn read_failed(&self) {
        self.read_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text for all of it, `prefix` before each name.
    pub fn render(&self, prefix: &str) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, v: String| {
            out.push_str(&format!(
                "# HELP {prefix}{name} {help}\n# TYPE {prefix}{name} counter\n{prefix}{name} {v}\n"
            ));
        };
        counter(
            "offload_ledgers_total",
            "Ledgers copied to the tier.",
            g(&self.offloaded_ledgers).to_string(),
        );
        counter(
            "offload_bytes_total",
            "Bytes of ledgers copied to the tier.",
            g(&self.offloaded_bytes).to_string(),
        );
        counter(
            "offload_seconds_total",
            "Time spent copying ledgers to the tier, in seconds.",
            (g(&self.offload_micros) as f64 / 1e6).to_string(),
        );
        counter(
            "offload_errors_total",
            "Ledger copies to the tier that failed.",
            g(&self.offload_errors).to_string(),
        );
        counter(
            "tiered_read_bytes_total",
            "Bytes read from the tier.",
            g(&self.read_bytes).to_string(),
        );
        counter(
            "tiered_read_errors_total",
            "Reads from the tier that failed after their retries.",
            g(&self.read_errors).to_string(),
        );
        counter(
            "tiered_cache_hits_total",
            "Block reads served by the tier's read cache.",
            g(&self.cache_hits).to_string(),
        );
        counter(
            "tiered_cache_misses_total",
            "Block reads the tier's read cache could not serve.",
            g(&self.cache_misses).to_string(),
        );
        counter(
            "offload_orphans_deleted_total",
            "Objects of offloads never recorded, found and deleted.",
            g(&self.orphans_deleted).to_string(),
        );
        let name = format!("{prefix}tiered_read_latency_seconds");
        out.push_str(&format!(
            "# HELP {name} Latency of ranged reads from the tier.\n# TYPE {name} histogram\n"
        ));
        let mut cumulative = 0;
        for (i, b) in READ_LATENCY_BUCKETS_MS.iter().enumerate() {
            cumulative += g(&self.read_latency[i]);
            out.push_str(&format!(
                "{name}_bucket{{le=\"{}\"}} {cumulative}\n",
                *b as f64 / 1000.0
            ));
        }
        cumulative += g(&self.read_latency[READ_LATENCY_BUCKETS_MS.len()]);
        out.push_str(&format!("{name}_bucket{{le=\"+Inf\"}} {cumulative}\n"));
        out.push_str(&format!(
            "{name}_sum {}\n{name}_count {cumulative}\n",
            g(&self.read_micros) as f64 / 1e6
        ));
        out
    }
}
