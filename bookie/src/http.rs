//! The bookie's HTTP port: `/health` and Prometheus `/metrics`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::server::Bookie;

pub fn router(bookie: Arc<Bookie>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(bookie)
}

async fn health(State(b): State<Arc<Bookie>>) -> impl IntoResponse {
    match b.journal_failure() {
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("journal failed: {why}\n"),
        ),
        None if b.is_read_only() => (StatusCode::OK, "ok (read-only)\n".to_string()),
        None => (StatusCode::OK, "ok\n".to_string()),
    }
}

async fn metrics(State(b): State<Arc<Bookie>>) -> impl IntoResponse {
    render_metrics(&b)
}

/// The bookie's metrics in Prometheus text form (the standalone adds them to its own).
pub fn render_metrics(b: &Bookie) -> String {
    let s = b.stats();
    let j = b.journal_stats();
    let mut out = String::with_capacity(2048);
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    let c = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
    metric(
        "bookie_adds_total",
        "counter",
        "Entries added and synced.",
        c(&s.adds),
    );
    metric(
        "bookie_add_bytes_total",
        "counter",
        "Entry bytes added.",
        c(&s.add_bytes),
    );
    metric(
        "bookie_reads_total",
        "counter",
        "Entries read.",
        c(&s.reads),
    );
    metric(
        "bookie_flushes_total",
        "counter",
        "Index flushes (each a journal checkpoint).",
        c(&s.flushes),
    );
    metric(
        "bookie_connections",
        "gauge",
        "Open client connections.",
        c(&s.connections),
    );
    metric(
        "bookie_bad_frames_total",
        "counter",
        "Connections closed for a malformed frame.",
        c(&s.bad_frames),
    );
    metric(
        "bookie_journal_records_total",
        "counter",
        "Records made durable by the journal.",
        c(&j.records),
    );
    metric(
        "bookie_journal_groups_total",
        "counter",
        "Journal group commits (one fdatasync each).",
        c(&j.groups),
    );
    metric(
        "bookie_journal_bytes_total",
        "counter",
        "Bytes written to the journal.",
        c(&j.bytes),
    );
    metric(
        "bookie_journal_sync_seconds_total",
        "counter",
        "Time spent in journal fdatasync.",
        c(&j.sync_micros) / 1e6,
    );
    metric(
        "bookie_journal_write_seconds_total",
        "counter",
        "Time spent writing journal groups (before their sync).",
        c(&j.write_micros) / 1e6,
    );
    metric(
        "bookie_write_cache_bytes",
        "gauge",
        "Bytes of entries waiting for the next index flush.",
        b.storage().write_cache_bytes() as f64,
    );
    let (journal_bytes, spare_bytes) = b.journal_disk_usage();
    metric(
        "bookie_journal_disk_bytes",
        "gauge",
        "Bytes of journal files on disk (where entries are kept).",
        journal_bytes as f64,
    );
    metric(
        "bookie_journal_spare_bytes",
        "gauge",
        "Bytes of emptied journal files kept for reuse.",
        spare_bytes as f64,
    );
    metric(
        "bookie_journal_reused_files_total",
        "counter",
        "Journal files started by reusing a spare instead of appending to a new one.",
        c(&j.reused_files),
    );
    metric(
        "bookie_read_cache_bytes",
        "gauge",
        "Bytes held by the read cache.",
        b.storage().read_cache_bytes() as f64,
    );
    metric(
        "bookie_pending_requests",
        "gauge",
        "Requests being handled, over all connections.",
        c(&s.pending),
    );
    metric(
        "bookie_throttled_connections_total",
        "counter",
        "Times a connection reached its limit of requests in flight and waited.",
        c(&s.throttled),
    );
    metric(
        "bookie_adds_too_large_total",
        "counter",
        "Adds refused for exceeding the entry size limit.",
        c(&s.too_large),
    );
    metric(
        "bookie_flush_seconds_total",
        "counter",
        "Time spent flushing the index and checkpointing the journal.",
        c(&s.flush_micros) / 1e6,
    );
    let cfg = b.config();
    for (name, help, value) in [
        (
            "bookie_write_cache_limit_bytes",
            "Configured write cache size.",
            cfg.storage.write_cache_bytes,
        ),
        (
            "bookie_read_cache_limit_bytes",
            "Configured read cache size.",
            cfg.storage.read_cache_bytes,
        ),
        (
            "bookie_max_entry_bytes",
            "Configured largest entry accepted.",
            cfg.max_entry_bytes,
        ),
        (
            "bookie_max_pending_requests_per_connection",
            "Configured requests one connection may have in flight.",
            cfg.max_pending_per_connection,
        ),
    ] {
        metric(name, "gauge", help, value as f64);
    }
    metric(
        "bookie_read_only",
        "gauge",
        "1 when the disk is nearly full and adds are refused.",
        f64::from(u8::from(b.is_read_only())),
    );
    j.sync_latency.render(
        &mut out,
        "bookie_journal_sync_latency_seconds",
        "Journal fdatasync latency.",
    );
    s.add_latency.render(
        &mut out,
        "bookie_add_latency_seconds",
        "From an add's arrival at the bookie to its answer.",
    );
    out
}
