//! Auto-recovery: brings ledgers back to full replication after a bookie is lost.
//!
//! A bookie that is referenced by some ledger but has been missing from
//! `/bookies/available` for longer than the grace period is considered lost. For every
//! fragment that had a replica on it, each entry whose write set included the lost bookie is
//! read from a surviving replica and written to a replacement (with the recovery flag, so
//! fencing does not stop it), then the fragment is repointed by compare-and-set. The last
//! fragment of an open ledger is left to its writer, which changes its own ensemble.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use magnetar_meta::{Expected, MetaError, MetadataStoreExt};
use tracing::{info, warn};

use crate::ledger::{LedgerClient, LedgerError, LedgerMeta, LedgerState};
use crate::placement::{self, Candidate};

/// Entries one fragment copy has in flight.
const COPIES_IN_FLIGHT: usize = 64;

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    pub ledgers_checked: usize,
    pub fragments_rereplicated: usize,
    pub entries_copied: u64,
}

#[derive(Debug)]
pub struct AutoRecovery {
    client: LedgerClient,
    grace: Duration,
    /// When each missing bookie was first seen missing.
    missing_since: HashMap<String, Instant>,
}

impl AutoRecovery {
    pub fn new(client: LedgerClient, grace: Duration) -> AutoRecovery {
        AutoRecovery {
            client,
            grace,
            missing_since: HashMap::new(),
        }
    }

    /// Runs passes every `interval` forever.
    pub async fn run(mut self, interval: Duration) {
        loop {
            match self.pass().await {
                Ok(r) if r.fragments_rereplicated > 0 => info!(?r, "auto-recovery pass"),
                Ok(_) => {}
                Err(e) => warn!(error = %e, "auto-recovery pass failed"),
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// One pass over every ledger.
    pub async fn pass(&mut self) -> Result<PassReport, LedgerError> {
        let meta = self.client.meta_store().clone();
        let candidates = self.client.available_bookies().await?;
        let available: BTreeSet<String> = candidates.iter().map(|c| c.addr.clone()).collect();
        self.missing_since.retain(|b, _| !available.contains(b));
        let mut report = PassReport::default();
        let ids = match meta.children("/ledgers").await {
            Ok(ids) => ids,
            Err(e) => return Err(e.into()),
        };
        for name in ids {
            let Ok(id) = name.parse::<u64>() else {
                continue;
            };
            report.ledgers_checked += 1;
            if let Err(e) = self.check_ledger(id, &candidates, &mut report).await {
                warn!(ledger_id = id, error = %e, "auto-recovery of ledger failed; retried next pass");
            }
        }
        Ok(report)
    }

    async fn check_ledger(
        &mut self,
        id: u64,
        candidates: &[Candidate],
        report: &mut PassReport,
    ) -> Result<(), LedgerError> {
        let key = format!("/ledgers/{id}");
        let meta_store = self.client.meta_store().clone();
        let Some(v) = meta_store.get_json::<LedgerMeta>(&key).await? else {
            return Ok(());
        };
        let (mut meta, version) = (v.value, v.version);
        meta.validate(id)?;
        let now = Instant::now();
        let mut changed = false;
        let n = meta.fragments.len();
        for i in 0..n {
            let last_of_open = i + 1 == n && meta.state != LedgerState::Closed;
            if last_of_open {
                continue;
            }
            let first = meta.fragments[i].first_entry;
            let end = if i + 1 < n {
                meta.fragments[i + 1].first_entry as i64 - 1
            } else {
                meta.last_entry
            };
            let lost: Vec<String> = meta.fragments[i]
                .bookies
                .iter()
                .filter(|b| !candidates.iter().any(|c| &c.addr == *b))
                .filter(|b| {
                    let since = *self.missing_since.entry((*b).clone()).or_insert(now);
                    now.duration_since(since) >= self.grace
                })
                .cloned()
                .collect();
            for dead in lost {
                let in_use = &meta.fragments[i].bookies;
                let spare: Vec<Candidate> = candidates
                    .iter()
                    .filter(|c| !in_use.contains(&c.addr))
                    .cloned()
                    .collect();
                let Some(target) = placement::place(spare, 1, meta.affinity.as_ref()).pop() else {
                    warn!(ledger_id = id, bookie = %dead, affinity = ?meta.affinity, "no spare bookie to re-replicate to");
                    continue;
                };
                let copied = self
                    .copy_fragment(id, &meta, i, first, end, &dead, &target)
                    .await?;
                for b in meta.fragments[i].bookies.iter_mut() {
                    if *b == dead {
                        *b = target.clone();
                    }
                }
                report.fragments_rereplicated += 1;
                report.entries_copied += copied;
                changed = true;
                info!(ledger_id = id, fragment = first, from = %dead, to = %target, entries = copied, "fragment re-replicated");
            }
        }
        if changed {
            match meta_store
                .put_json(&key, &meta, Expected::Version(version))
                .await
            {
                Ok(_) => {}
                // The ledger changed meanwhile (closed, ensemble change): next pass redoes it.
                Err(MetaError::BadVersion { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn copy_fragment(
        &self,
        id: u64,
        meta: &LedgerMeta,
        fragment: usize,
        first: u64,
        end: i64,
        dead: &str,
        target: &str,
    ) -> Result<u64, LedgerError> {
        if end < first as i64 {
            return Ok(0);
        }
        let bookies = &meta.fragments[fragment].bookies;
        let e = bookies.len() as u64;
        let key = Bytes::from(meta.writer_key.clone().into_bytes());
        let write_set =
            |entry: u64| (0..meta.write_quorum as u64).map(move |k| ((entry + k) % e) as usize);
        let copy = |entry: u64| {
            let key = key.clone();
            async move {
                let mut data = None;
                for b in write_set(entry).map(|i| &bookies[i]).filter(|b| *b != dead) {
                    if let Ok(d) = self.client.read_from(b, id, entry).await {
                        data = Some(d);
                        break;
                    }
                }
                let Some(data) = data else {
                    return Err(LedgerError::Unreadable {
                        ledger: id,
                        entry,
                        reason: "no surviving replica answered".into(),
                    });
                };
                self.client.write_to(target, id, entry, &key, data).await
            }
        };
        // copies in flight together (one at a time, each write waited for its own journal
        // sync: about 2 ms an entry)
        let copied = futures::stream::iter(
            (first..=end as u64).filter(|entry| write_set(*entry).any(|i| bookies[i] == dead)),
        )
        .map(copy)
        .buffer_unordered(COPIES_IN_FLIGHT)
        .try_fold(0u64, |n, ()| async move { Ok(n + 1) })
        .await?;
        Ok(copied)
    }
}
