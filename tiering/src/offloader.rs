//! Offload runs of one log: which closed ledgers are due (Pulsar's thresholds, or everything
//! before a position), copying each and recording it by CAS, the run's status as Pulsar's
//! `OffloadProcessStatus` reports it, retries after failures, and deleting the storage's copy
//! once the deletion lag has passed. One run at a time per log; the log's owner drives it.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use magnetar_managed_ledger::{LedgerInfo, ManagedLedger, Position};
use parking_lot::Mutex;
use serde::Serialize;
use tracing::{info, warn};

use crate::TierError;
use crate::offload;
use crate::store::Location;
use crate::tier::{ObjectTier, record_of};

/// What a run offloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// Pulsar's thresholds: keep at most `bytes` in storage (None: no limit; 0: offload
    /// every closed ledger) and offload ledgers closed more than `secs` ago (None: never).
    Thresholds {
        bytes: Option<u64>,
        secs: Option<u64>,
    },
    /// Every closed ledger before this position (a manual offload).
    Before(Position),
}

impl Which {
    pub fn is_off(&self) -> bool {
        matches!(
            self,
            Which::Thresholds {
                bytes: None,
                secs: None
            }
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Phase {
    NotRun,
    Running,
    Success,
    Error,
}

#[derive(Debug, Clone)]
pub struct Status {
    pub phase: Phase,
    pub last_error: String,
    /// The first entry still only in storage after the last run.
    pub first_unoffloaded: Option<Position>,
    /// Runs failed in a row (retries back off by it).
    pub failures: u32,
    ended: Option<Instant>,
}

impl Default for Status {
    fn default() -> Self {
        Status {
            phase: Phase::NotRun,
            last_error: String::new(),
            first_unoffloaded: None,
            failures: 0,
            ended: None,
        }
    }
}

/// A log's offload state, kept while its owner has it loaded.
#[derive(Debug, Default)]
pub struct LogOffloads {
    status: Mutex<Status>,
    /// Locations swept of orphans since the log was loaded.
    swept: Mutex<HashSet<Location>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Closed ledgers with entries, not yet offloaded, that `which` makes due, oldest first.
pub fn due(ledgers: &[LedgerInfo], current: Option<u64>, which: Which, now_ms: u64) -> Vec<u64> {
    let candidate =
        |l: &LedgerInfo| Some(l.ledger_id) != current && l.closed_ms.is_some() && l.entries > 0;
    let mut out: Vec<u64> = match which {
        Which::Before(p) => ledgers
            .iter()
            .filter(|l| {
                l.ledger_id < p.ledger
                    || (l.ledger_id == p.ledger && p.entry >= l.entries as i64 - 1)
            })
            .filter(|l| candidate(l) && l.offload.is_none())
            .map(|l| l.ledger_id)
            .collect(),
        Which::Thresholds { bytes, secs } => {
            let mut out = Vec::new();
            if let Some(limit) = bytes {
                // the newest ledgers stay while they fit in `limit`; everything older goes
                let mut kept = 0u64;
                let mut over = false;
                for l in ledgers.iter().rev() {
                    if !over && l.offload.is_none() {
                        kept += l.size;
                        over = kept > limit;
                    }
                    if over && candidate(l) && l.offload.is_none() {
                        out.push(l.ledger_id);
                    }
                }
            }
            if let Some(secs) = secs {
                let before = now_ms.saturating_sub(secs.saturating_mul(1000));
                out.extend(
                    ledgers
                        .iter()
                        .filter(|l| candidate(l) && l.offload.is_none())
                        .filter(|l| l.closed_ms.is_some_and(|c| c <= before))
                        .map(|l| l.ledger_id),
                );
            }
            out
        }
    };
    out.sort_unstable();
    out.dedup();
    out
}

/// The first entry of the first ledger not offloaded (the current one if all are).
fn first_unoffloaded(ml: &ManagedLedger) -> Option<Position> {
    ml.ledgers()
        .iter()
        .find(|l| {
            l.offload.is_none() && (l.entries > 0 || Some(l.ledger_id) == ml.current_ledger())
        })
        .map(|l| Position::new(l.ledger_id, 0))
}

impl LogOffloads {
    pub fn status(&self) -> Status {
        self.status.lock().clone()
    }

    /// Claims the log for a run: false if one is running.
    pub fn begin(&self) -> bool {
        let mut s = self.status.lock();
        if s.phase == Phase::Running {
            return false;
        }
        s.phase = Phase::Running;
        true
    }

    /// Whether an automatic run may start now: after `n` failures in a row it waits
    /// `base * 2^n` (at most 64 bases, and 5 minutes) from the last one.
    pub fn may_retry(&self, base: Duration) -> bool {
        let s = self.status.lock();
        match (s.failures, s.ended) {
            (0, _) | (_, None) => true,
            (n, Some(end)) => {
                let wait = base
                    .saturating_mul(1u32 << n.min(6))
                    .min(Duration::from_secs(300));
                end.elapsed() >= wait
            }
        }
    }

    fn end(&self, ml: &ManagedLedger, res: &Result<usize, TierError>) {
        let mut s = self.status.lock();
        s.ended = Some(Instant::now());
        s.first_unoffloaded = first_unoffloaded(ml);
        match res {
            Ok(_) => {
                s.phase = Phase::Success;
                s.last_error.clear();
                s.failures = 0;
            }
            Err(e) => {
                s.phase = Phase::Error;
                s.last_error = e.to_string();
                s.failures = s.failures.saturating_add(1);
            }
        }
    }

    /// Ends a claimed run that could not start (a policy naming an impossible location).
    pub fn fail(&self, ml: &ManagedLedger, e: TierError) {
        warn!(log = ml.name(), error = %e, "offload failed");
        self.end(ml, &Err(e));
    }

    /// Runs an offload of `ml` to `target` (after [`LogOffloads::begin`] said yes): orphans
    /// of earlier runs are swept first (once per location while the log is loaded, or
    /// always when `sweep`), then each due ledger is copied and recorded in turn. Returns
    /// how many ledgers were offloaded; the status says the same.
    pub async fn run(
        &self,
        tier: &ObjectTier,
        ml: &ManagedLedger,
        target: &Location,
        which: Which,
        sweep: bool,
    ) -> Result<usize, TierError> {
        let res = self.run_inner(tier, ml, target, which, sweep).await;
        if let Err(e) = &res {
            warn!(log = ml.name(), location = %target, error = %e, "offload failed");
        }
        self.end(ml, &res);
        res
    }

    async fn run_inner(
        &self,
        tier: &ObjectTier,
        ml: &ManagedLedger,
        target: &Location,
        which: Which,
        sweep: bool,
    ) -> Result<usize, TierError> {
        let store = tier.store(target)?;
        let ids = due(&ml.ledgers(), ml.current_ledger(), which, now_ms());
        if sweep || (!ids.is_empty() && !self.swept.lock().contains(target)) {
            let keep: HashSet<String> = ml
                .ledgers()
                .iter()
                .filter_map(|l| record_of(l).ok())
                .map(|r| r.uid)
                .collect();
            let n = offload::sweep(&store, ml.path(), &keep).await?;
            tier.stats()
                .orphans_deleted
                .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            self.swept.lock().insert(target.clone());
        }
        let mut done = 0;
        for id in ids {
            let Some(info) = ml.ledgers().into_iter().find(|l| l.ledger_id == id) else {
                continue; // trimmed meanwhile
            };
            if info.offload.is_some() {
                continue;
            }
            let ledger = ml.open_stored(id).await?;
            let last = info.entries as i64 - 1;
            let mut rec = offload::offload_ledger(
                &store,
                target,
                ml.path(),
                ledger.as_ref(),
                last,
                tier.config().segment,
                tier.stats(),
            )
            .await?;
            rec.offloaded_ms = now_ms();
            let recorded = ml.mark_offloaded(id, rec.to_value()).await;
            let kept = ml
                .ledgers()
                .iter()
                .any(|l| l.ledger_id == id && l.offload.as_ref() == Some(&rec.to_value()));
            if recorded.is_err() || !kept {
                // nobody refers to the copy: it goes now rather than at the next sweep
                let _ = tier.delete_copy(&rec).await;
                recorded?;
                continue;
            }
            done += 1;
        }
        if done > 0 {
            info!(log = ml.name(), ledgers = done, location = %target, "offload run finished");
        }
        Ok(done)
    }

    /// Deletes the storage's copy of ledgers offloaded at least `lag` ago. Returns how many.
    pub async fn release_lagged(
        &self,
        ml: &ManagedLedger,
        lag: Duration,
    ) -> Result<usize, TierError> {
        let now = now_ms();
        let mut released = 0;
        for l in ml.ledgers() {
            let Ok(mut r) = record_of(&l) else { continue };
            if r.bookie_deleted || now.saturating_sub(r.offloaded_ms) < lag.as_millis() as u64 {
                continue;
            }
            r.bookie_deleted = true;
            ml.release_offloaded(l.ledger_id, r.to_value()).await?;
            info!(
                log = ml.name(),
                ledger_id = l.ledger_id,
                "storage copy of an offloaded ledger deleted after the deletion lag"
            );
            released += 1;
        }
        Ok(released)
    }
}

/// Bytes of the log's offloaded ledgers (Pulsar's `offloadedStorageSize`).
pub fn offloaded_bytes(ledgers: &[LedgerInfo]) -> u64 {
    ledgers
        .iter()
        .filter(|l| l.offload.is_some())
        .map(|l| l.size)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(id: u64, size: u64, closed: Option<u64>) -> LedgerInfo {
        LedgerInfo {
            ledger_id: id,
            entries: if size > 0 { 10 } else { 0 },
            size,
            messages: None,
            timestamp_ms: 0,
            closed_ms: closed,
            offload: None,
        }
    }

    #[test]
    fn thresholds_pick_the_oldest_closed_ledgers_as_pulsar_does() {
        let ls = vec![
            ledger(1, 100, Some(1_000)),
            ledger(2, 100, Some(2_000)),
            ledger(3, 100, Some(3_000)),
            ledger(4, 50, None), // current
        ];
        let t = |bytes, secs| Which::Thresholds { bytes, secs };
        assert_eq!(due(&ls, Some(4), t(Some(0), None), 10_000), vec![1, 2, 3]);
        // 200 bytes may stay: 4 (50) + 3 (100) fit, 2 tips it over
        assert_eq!(due(&ls, Some(4), t(Some(200), None), 10_000), vec![1, 2]);
        assert_eq!(due(&ls, Some(4), t(Some(250), None), 10_000), vec![1]);
        assert_eq!(
            due(&ls, Some(4), t(Some(1_000), None), 10_000),
            Vec::<u64>::new()
        );
        assert_eq!(due(&ls, Some(4), t(None, None), 10_000), Vec::<u64>::new());
        // closed 8 s or more before 10 s: ledgers 1 and 2
        assert_eq!(due(&ls, Some(4), t(None, Some(8)), 10_000), vec![1, 2]);
        assert_eq!(
            due(&ls, Some(4), Which::Before(Position::new(3, 5)), 0),
            vec![1, 2]
        );
        assert_eq!(
            due(&ls, Some(4), Which::Before(Position::new(4, 0)), 0),
            vec![1, 2, 3]
        );
        // offloaded and empty ledgers are never due again
        let mut ls = ls;
        ls[0].offload = Some(serde_json::json!({}));
        ls.insert(1, ledger(5, 0, Some(1_500)));
        assert_eq!(due(&ls, Some(4), t(Some(0), None), 10_000), vec![2, 3]);
    }
}
