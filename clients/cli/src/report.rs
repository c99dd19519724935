//! Latency histograms, the live once-a-second line and the final JSON summary that every
//! magnetar-perf workload prints.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;

/// Latencies from 1 µs to 60 s at 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, 60_000_000, 3) {
        Ok(h) => h,
        Err(e) => unreachable!("static histogram bounds are valid: {e}"),
    }
}

/// What workers record into: one histogram for the whole run and one for the current second.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Mutex<Hists>>,
}

struct Hists {
    total: Histogram<u64>,
    window: Histogram<u64>,
    errors: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            inner: Arc::new(Mutex::new(Hists {
                total: new_histogram(),
                window: new_histogram(),
                errors: 0,
            })),
        }
    }
}

impl Recorder {
    /// Records a batch of latencies a worker gathered locally (one lock per batch).
    pub fn record_batch(&self, local: &mut Histogram<u64>, errors: u64) {
        let mut h = self.inner.lock();
        let _ = h.total.add(&*local);
        let _ = h.window.add(&*local);
        h.errors += errors;
        local.reset();
    }

    fn take_window(&self) -> Histogram<u64> {
        let mut h = self.inner.lock();
        let w = h.window.clone();
        h.window.reset();
        w
    }

    pub fn total(&self) -> (Histogram<u64>, u64) {
        let h = self.inner.lock();
        (h.total.clone(), h.errors)
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Prints `label: N ops/s, p50/p99/p99.9` to stderr every second until aborted.
pub fn spawn_progress(label: String, rec: Recorder) -> tokio::task::JoinHandle<()> {
    spawn_live(label, rec, Live::default())
}

/// What the live line shows beyond rate and latency.
#[derive(Debug, Clone, Default)]
pub struct Live {
    /// Payload bytes done so far (workers add to it): adds MB/s.
    pub bytes: Option<Arc<AtomicU64>>,
    /// Operations the run stops after: adds a progress bar.
    pub total: Option<u64>,
}

/// `[#####-----]  50 %` for `done` of `total`.
pub fn progress_bar(done: u64, total: u64) -> String {
    let frac = if total == 0 {
        1.0
    } else {
        (done as f64 / total as f64).min(1.0)
    };
    let filled = (frac * 20.0).round() as usize;
    format!(
        "[{}{}] {:>3.0} %",
        "#".repeat(filled),
        "-".repeat(20 - filled),
        frac * 100.0
    )
}

/// The live line every second, to stderr, until aborted.
pub fn spawn_live(label: String, rec: Recorder, live: Live) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let mut last = Instant::now();
        let mut done = 0u64;
        let mut bytes_before = 0u64;
        loop {
            tick.tick().await;
            let w = rec.take_window();
            let secs = last.elapsed().as_secs_f64();
            last = Instant::now();
            done += w.len();
            let rate = w.len() as f64 / secs;
            let mut line = format!("{label}: {rate:>9.0} ops/s");
            if let Some(b) = &live.bytes {
                let now = b.load(Ordering::Relaxed);
                let mb = (now - bytes_before.min(now)) as f64 / 1e6 / secs;
                bytes_before = now;
                line.push_str(&format!("  {mb:>8.1} MB/s"));
            }
            line.push_str(&format!(
                "  p50 {:>7.3} ms  p99 {:>7.3} ms  p99.9 {:>7.3} ms",
                ms(w.value_at_quantile(0.5)),
                ms(w.value_at_quantile(0.99)),
                ms(w.value_at_quantile(0.999)),
            ));
            if let Some(t) = live.total {
                line.push_str(&format!("  {}", progress_bar(done, t)));
            }
            eprintln!("{line}");
        }
    })
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub workload: String,
    pub target: String,
    pub concurrency: usize,
    pub ops: u64,
    pub errors: u64,
    pub seconds: f64,
    pub ops_per_sec: f64,
    pub latency_ms: Latency,
}

#[derive(Debug, Serialize, Clone)]
pub struct Latency {
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Summary {
    pub fn new(
        workload: &str,
        target: &str,
        concurrency: usize,
        hist: &Histogram<u64>,
        errors: u64,
        elapsed: Duration,
    ) -> Summary {
        let secs = elapsed.as_secs_f64().max(1e-9);
        Summary {
            workload: workload.to_string(),
            target: target.to_string(),
            concurrency,
            ops: hist.len(),
            errors,
            seconds: secs,
            ops_per_sec: hist.len() as f64 / secs,
            latency_ms: Latency::of(hist),
        }
    }
}

impl Latency {
    pub fn of(hist: &Histogram<u64>) -> Latency {
        Latency {
            mean: hist.mean() / 1000.0,
            p50: ms(hist.value_at_quantile(0.5)),
            p99: ms(hist.value_at_quantile(0.99)),
            p999: ms(hist.value_at_quantile(0.999)),
            max: ms(hist.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars() {
        assert_eq!(progress_bar(0, 10), "[--------------------]   0 %");
        assert_eq!(progress_bar(5, 10), "[##########----------]  50 %");
        assert_eq!(progress_bar(12, 10), "[####################] 100 %");
    }
}
