//! Counters with periodically derived rates, for topic, producer, subscription and consumer
//! stats. Recording is two relaxed atomic adds; rates are recomputed by housekeeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;

/// A message counter and a byte counter, with their rates over the last tick.
#[derive(Default)]
pub struct Meter {
    msgs: AtomicU64,
    bytes: AtomicU64,
    last: Mutex<Tick>,
}

#[derive(Default)]
struct Tick {
    at: Option<Instant>,
    msgs: u64,
    bytes: u64,
    rates: (f64, f64),
}

impl std::fmt::Debug for Meter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Meter").field(&self.totals()).finish()
    }
}

impl Meter {
    pub fn record(&self, msgs: u64, bytes: u64) {
        self.msgs.fetch_add(msgs, Ordering::Relaxed);
        if bytes > 0 {
            self.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// (messages, bytes) since creation.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.msgs.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    /// Recomputes the rates from the counters' growth since the previous tick.
    pub fn tick(&self, now: Instant) {
        let (m, b) = self.totals();
        let mut t = self.last.lock();
        if let Some(at) = t.at {
            let secs = now.duration_since(at).as_secs_f64().max(0.001);
            t.rates = (
                m.saturating_sub(t.msgs) as f64 / secs,
                b.saturating_sub(t.bytes) as f64 / secs,
            );
        }
        *t = Tick {
            at: Some(now),
            msgs: m,
            bytes: b,
            rates: t.rates,
        };
    }

    /// (messages/s, bytes/s) over the last tick interval.
    pub fn rates(&self) -> (f64, f64) {
        self.last.lock().rates
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rates_follow_growth_between_ticks() {
        let m = Meter::default();
        let t0 = Instant::now();
        m.tick(t0);
        m.record(10, 1000);
        m.record(10, 1000);
        m.tick(t0 + Duration::from_secs(2));
        assert_eq!(m.rates(), (10.0, 1000.0));
        assert_eq!(m.totals(), (20, 2000));
        m.tick(t0 + Duration::from_secs(3));
        assert_eq!(m.rates(), (0.0, 0.0));
    }
}
