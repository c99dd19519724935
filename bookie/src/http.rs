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

/// Several bookies' metrics in one exposition: one bookie's as [`render_metrics`] writes
/// them; more, each sample labelled `bookie="host:port"` and grouped under its family.
pub fn render_metrics_of(bookies: &[(String, Arc<Bookie>)]) -> String {
    if let [(_, b)] = bookies {
        return render_metrics(b);
    }
    // family name -> (HELP and TYPE lines, samples), in the order first seen
    let mut families: Vec<(String, Vec<String>, Vec<String>)> = Vec::new();
    for (name, b) in bookies {
        let text = render_metrics(b);
        let mut current: Option<usize> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let family = rest.split(' ').next().unwrap_or_default().to_string();
                current = Some(match families.iter().position(|f| f.0 == family) {
                    Some(i) => i,
                    None => {
                        families.push((family, vec![line.to_string()], Vec::new()));
                        families.len() - 1
                    }
                });
                continue;
            }
            let Some(i) = current else { continue };
            if line.starts_with('#') {
                if families[i].2.is_empty() && !families[i].1.iter().any(|l| l == line) {
                    families[i].1.push(line.to_string());
                }
                continue;
            }
            let label = format!("bookie=\"{name}\"");
            let sample = match line.find(['{', ' ']) {
                Some(at) if line[at..].starts_with('{') => {
                    format!("{}{{{label},{}", &line[..at], &line[at + 1..])
                }
                Some(at) => format!("{}{{{label}}}{}", &line[..at], &line[at..]),
                None => continue,
            };
            families[i].2.push(sample);
        }
    }
    let mut out = String::new();
    for (_, head, samples) in families {
        for l in head.iter().chain(&samples) {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
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
        "bookie_unauthenticated_total",
        "counter",
        "Connections refused for not presenting the cluster's secret first.",
        c(&s.unauthenticated),
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::server::BookieConfig;

    #[test]
    fn several_bookies_share_one_exposition() {
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let bookies: Vec<(String, Arc<Bookie>)> = dirs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let b = Bookie::open(BookieConfig::new(d.path().to_path_buf()), None).unwrap();
                (format!("127.0.0.1:{}", 3181 + i), b)
            })
            .collect();
        let one = render_metrics_of(&bookies[..1]);
        assert_eq!(one, render_metrics(&bookies[0].1));
        let both = render_metrics_of(&bookies);
        // each family once, its samples labelled per bookie, histograms included
        assert_eq!(both.matches("# TYPE bookie_adds_total ").count(), 1);
        assert!(both.contains("bookie_adds_total{bookie=\"127.0.0.1:3181\"} 0\n"));
        assert!(both.contains("bookie_adds_total{bookie=\"127.0.0.1:3182\"} 0\n"));
        assert!(both.contains("bookie_add_latency_seconds_count{bookie=\"127.0.0.1:3182\"}"));
        assert!(both.contains("bookie_add_latency_seconds_bucket{bookie=\"127.0.0.1:3181\",le="));
        // a family's samples follow its header, never another family's
        let mut family = String::new();
        for line in both.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                family = rest.split(' ').next().unwrap().to_string();
            } else if !line.starts_with('#') {
                assert!(line.starts_with(&family), "{line} under {family}");
            }
        }
    }
}
