//! Rate limits for publishing and dispatch: a token bucket per limit, in messages and
//! bytes per second, with one second of burst. Callers charge what they did and wait the
//! time the bucket says; debt is carried, so the long-run rate holds even when one charge
//! (a large batch) overdraws the bucket. Pure bookkeeping: sleeping is the caller's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Messages and bytes per second; None: that dimension is not limited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rate {
    pub msgs: Option<u64>,
    pub bytes: Option<u64>,
}

impl Rate {
    pub fn is_limited(&self) -> bool {
        self.msgs.is_some() || self.bytes.is_some()
    }
}

#[derive(Debug)]
struct Bucket {
    rate: Rate,
    msgs: f64,
    bytes: f64,
    at: Instant,
}

#[derive(Debug)]
pub struct RateLimiter {
    /// Whether any limit is set: unlimited topics (the usual case) never take the lock, as
    /// every SEND and every delivered entry asks.
    active: AtomicBool,
    bucket: Mutex<Bucket>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter {
            active: AtomicBool::new(false),
            bucket: Mutex::new(Bucket {
                rate: Rate::default(),
                msgs: 0.0,
                bytes: 0.0,
                at: Instant::now(),
            }),
        }
    }
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        if let Some(r) = self.rate.msgs {
            self.msgs = (self.msgs + dt * r as f64).min(r as f64);
        }
        if let Some(r) = self.rate.bytes {
            self.bytes = (self.bytes + dt * r as f64).min(r as f64);
        }
    }

    /// How long until neither dimension is in debt.
    fn wait(&self) -> Option<Duration> {
        let debt = |tokens: f64, rate: Option<u64>| match rate {
            Some(r) if tokens < 0.0 && r > 0 => -tokens / r as f64,
            _ => 0.0,
        };
        let secs = debt(self.msgs, self.rate.msgs).max(debt(self.bytes, self.rate.bytes));
        (secs > 0.0).then(|| Duration::from_secs_f64(secs))
    }
}

impl RateLimiter {
    /// Sets the limit; a changed limit starts with a full bucket.
    pub fn set(&self, rate: Rate) {
        let mut b = self.bucket.lock();
        if b.rate != rate {
            b.rate = rate;
            b.msgs = rate.msgs.unwrap_or(0) as f64;
            b.bytes = rate.bytes.unwrap_or(0) as f64;
            b.at = Instant::now();
            self.active.store(rate.is_limited(), Ordering::Release);
        }
    }

    /// Records work done; returns how long to wait before doing more (None: go on).
    pub fn charge(&self, msgs: u64, bytes: u64) -> Option<Duration> {
        if !self.active.load(Ordering::Acquire) {
            return None;
        }
        let mut b = self.bucket.lock();
        b.refill(Instant::now());
        if b.rate.msgs.is_some() {
            b.msgs -= msgs as f64;
        }
        if b.rate.bytes.is_some() {
            b.bytes -= bytes as f64;
        }
        b.wait()
    }

    /// How long until more may be done (None: now).
    pub fn wait(&self) -> Option<Duration> {
        if !self.active.load(Ordering::Acquire) {
            return None;
        }
        let mut b = self.bucket.lock();
        b.refill(Instant::now());
        b.wait()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn unlimited_never_waits() {
        let l = RateLimiter::default();
        assert_eq!(l.charge(1_000_000, 1 << 30), None);
        assert_eq!(l.wait(), None);
    }

    #[test]
    fn debt_sets_the_wait() {
        let l = RateLimiter::default();
        l.set(Rate {
            msgs: Some(100),
            bytes: None,
        });
        // the first second's burst is free
        assert_eq!(l.charge(100, 0), None);
        // 50 more is half a second of debt
        let w = l.charge(50, 0).unwrap();
        assert!(
            w > Duration::from_millis(400) && w <= Duration::from_millis(500),
            "{w:?}"
        );
        // bytes limit: the larger debt wins
        l.set(Rate {
            msgs: Some(1000),
            bytes: Some(1000),
        });
        let w = l.charge(1, 3000).unwrap();
        assert!(w > Duration::from_millis(1900), "{w:?}");
        l.set(Rate::default());
        assert_eq!(l.wait(), None);
    }
}
