//! The managed ledger over memory and faulty storage, with a memory metadata store: no
//! RocksDB, no bookie, no broker.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use magnetar_meta::{MemoryStore, MetaError, MetaStore, MetadataStoreExt};

use super::*;
use crate::clock::ManualClock;
use crate::cursor::Cursor;
use crate::storage::{Call, FaultyStorage, MemoryStorage};

fn meta() -> MetaStore {
    Arc::new(MemoryStore::new().unwrap())
}

fn entry(i: u64) -> Bytes {
    Bytes::from(format!("m{i}"))
}

fn cfg() -> MlConfig {
    MlConfig {
        max_entries_per_ledger: 4,
        ..MlConfig::default()
    }
}

async fn open(storage: &Arc<dyn LedgerStorage>, meta: &MetaStore, cfg: MlConfig) -> ManagedLedger {
    ManagedLedger::open(
        "t",
        "p/ns/persistent/t",
        Arc::clone(storage),
        meta.clone(),
        cfg,
    )
    .await
    .unwrap()
}

/// Every entry of the log, in order.
async fn read_all(ml: &ManagedLedger) -> Vec<Bytes> {
    let (entries, _) = ml
        .read_from(ml.before_first(), usize::MAX, |_| false)
        .await
        .unwrap();
    entries.into_iter().map(|(_, d)| d).collect()
}

#[tokio::test]
async fn appends_roll_over_and_survive_a_crash() {
    let storage: Arc<dyn LedgerStorage> = Arc::new(MemoryStorage::new());
    let meta = meta();
    let ml = open(&storage, &meta, cfg()).await;
    let mut positions = Vec::new();
    for i in 0..10 {
        positions.push(ml.append(entry(i), 1).await.unwrap());
    }
    assert!(positions.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(ml.last_confirmed(), positions[9]);
    // 4 entries a ledger
    let ledgers = ml.ledgers();
    assert_eq!(
        ledgers.iter().map(|l| l.entries).collect::<Vec<_>>(),
        [4, 4, 2]
    );
    assert_eq!(ml.next_position(positions[3]), Some(positions[4]));
    assert_eq!(ml.previous_position(positions[4]), positions[3]);
    assert_eq!(
        ml.at_or_after(Position::new(positions[4].ledger, -1)),
        Some(positions[4])
    );
    assert_eq!(ml.messages_after(positions[1]).await.unwrap(), 8);
    assert_eq!(ml.totals().0, 10);

    // no close: a crash. The next owner recovers the open ledger and loses nothing.
    drop(ml);
    let again = open(&storage, &meta, cfg()).await;
    assert_eq!(
        read_all(&again).await,
        (0..10).map(entry).collect::<Vec<_>>()
    );
    assert_eq!(again.last_confirmed(), positions[9]);
    // ... and appends after it
    let p = again.append(entry(10), 1).await.unwrap();
    assert!(p > positions[9]);
}

#[tokio::test]
async fn a_second_owner_fences_the_first() {
    let storage: Arc<dyn LedgerStorage> = Arc::new(MemoryStorage::new());
    let meta = meta();
    let first = open(&storage, &meta, cfg()).await;
    first.append(entry(0), 1).await.unwrap();
    let second = open(&storage, &meta, cfg()).await;
    assert!(
        first.append(entry(1), 1).await.is_err(),
        "the old owner may not write behind the new one"
    );
    second.append(entry(2), 1).await.unwrap();
    assert_eq!(read_all(&second).await, vec![entry(0), entry(2)]);
}

#[tokio::test]
async fn a_failed_append_rolls_to_a_recovered_log() {
    let faulty = FaultyStorage::new(Arc::new(MemoryStorage::new()));
    let faults = Arc::clone(faulty.faults());
    let storage: Arc<dyn LedgerStorage> = Arc::new(faulty);
    let meta = meta();
    let ml = open(&storage, &meta, MlConfig::default()).await;
    for i in 0..3 {
        ml.append(entry(i), 1).await.unwrap();
    }
    faults.fail_nth(Call::Append, 1);
    assert!(ml.append(entry(3), 1).await.is_err());
    // the next append goes to a new ledger, after the failed one was recovered
    let p = ml.append(entry(4), 1).await.unwrap();
    assert_eq!(p.entry, 0);
    assert_eq!(faults.calls(Call::Recover), 1);
    ml.close().await.unwrap();
    let again = open(&storage, &meta, MlConfig::default()).await;
    assert_eq!(
        read_all(&again).await,
        vec![entry(0), entry(1), entry(2), entry(4)]
    );
}

#[tokio::test]
async fn a_failed_ledger_creation_fails_only_the_append_that_needed_it() {
    let faulty = FaultyStorage::new(Arc::new(MemoryStorage::new()));
    let faults = Arc::clone(faulty.faults());
    let storage: Arc<dyn LedgerStorage> = Arc::new(faulty);
    let meta = meta();
    let ml = open(&storage, &meta, cfg()).await;
    // the rollover's ledger creation fails: the append that needed it fails, the next works
    for i in 0..4 {
        ml.append(entry(i), 1).await.unwrap();
    }
    faults.fail_nth(Call::Create, 1);
    assert!(ml.append(entry(4), 1).await.is_err());
    ml.append(entry(5), 1).await.unwrap();
    assert_eq!(read_all(&ml).await.len(), 5);
}

#[tokio::test]
async fn trimming_deletes_consumed_ledgers_and_keeps_retained_ones() {
    let mem = MemoryStorage::new();
    let storage: Arc<dyn LedgerStorage> = Arc::new(mem.clone());
    let meta = meta();
    let ml = open(&storage, &meta, cfg()).await;
    let mut last = Position::new(0, -1);
    for i in 0..10 {
        last = ml.append(entry(i), 1).await.unwrap();
    }
    let none = Retention::from_limits(0, 0);
    let forever = Retention::from_limits(-1, -1);
    // a cursor in the second ledger holds it and everything after
    let in_second = ml.ledgers()[1].ledger_id;
    assert_eq!(
        ml.trim(Some(Position::new(in_second, 1)), none)
            .await
            .unwrap(),
        1
    );
    assert_eq!(mem.ledger_ids().len(), 2);
    // retention keeps consumed ledgers
    assert_eq!(ml.trim(Some(last), forever).await.unwrap(), 0);
    assert_eq!(ml.trim(Some(last), none).await.unwrap(), 1);
    // the current ledger stays
    assert_eq!(mem.ledger_ids(), vec![last.ledger]);
    assert_eq!(ml.before_first(), Position::new(last.ledger, -1));
}

#[tokio::test]
async fn a_bounded_memory_log_passes_over_what_it_let_go_of() {
    let mem = MemoryStorage::bounded(10);
    let storage: Arc<dyn LedgerStorage> = Arc::new(mem.clone());
    let ml = open(
        &storage,
        &meta(),
        MlConfig {
            cache_bytes: 0,
            max_entries_per_ledger: 3,
            ..MlConfig::default()
        },
    )
    .await;
    for i in 0..9 {
        ml.append(Bytes::from(vec![i as u8; 2]), 1).await.unwrap();
    }
    // 18 bytes written, 10 kept: the first four are gone and passed over
    let (got, examined) = ml
        .read_from(ml.before_first(), 100, |_| false)
        .await
        .unwrap();
    assert_eq!(got.len(), 5);
    assert_eq!(got[0].1[0], 4);
    assert_eq!(examined, Some(ml.last_confirmed()));
    // the first ledger holds nothing any more: trimmed although nothing consumed it
    let retain = Retention::from_limits(-1, -1);
    let first = ml.ledgers()[0].ledger_id;
    let holding = Position::new(first, -1);
    assert_eq!(ml.trim(Some(holding), retain).await.unwrap(), 1);
    assert!(!mem.ledger_ids().contains(&first));
    // the cache is off: the storage is all there is
    assert_eq!(ml.inner.cfg.cache_budget.used(), 0);
}

#[tokio::test]
async fn termination_is_final_and_durable() {
    let storage: Arc<dyn LedgerStorage> = Arc::new(MemoryStorage::new());
    let meta = meta();
    let ml = open(&storage, &meta, cfg()).await;
    let last = ml.append(entry(0), 1).await.unwrap();
    assert_eq!(ml.terminate().await.unwrap(), last);
    assert_eq!(ml.terminate().await.unwrap(), last, "terminating twice");
    assert!(matches!(
        ml.append(entry(1), 1).await,
        Err(MlError::Terminated(_))
    ));
    ml.close().await.unwrap();
    let again = open(&storage, &meta, cfg()).await;
    assert_eq!(again.terminated(), Some(last));
    assert_eq!(again.current_ledger(), None);
    assert!(again.append(entry(2), 1).await.is_err());
}

#[tokio::test]
async fn closing_refuses_later_appends() {
    let storage: Arc<dyn LedgerStorage> = Arc::new(MemoryStorage::new());
    let ml = open(&storage, &meta(), cfg()).await;
    ml.append(entry(0), 1).await.unwrap();
    ml.close().await.unwrap();
    assert!(matches!(
        ml.append(entry(1), 1).await,
        Err(MlError::Closed(_))
    ));
    ml.close().await.unwrap();
}

#[tokio::test]
async fn ledgers_roll_over_by_age_on_the_clock_given() {
    let clock = ManualClock::new(1_000_000);
    let storage: Arc<dyn LedgerStorage> = Arc::new(MemoryStorage::new());
    let ml = open(
        &storage,
        &meta(),
        MlConfig {
            max_ledger_age: Duration::from_secs(60),
            clock: clock.clone(),
            ..MlConfig::default()
        },
    )
    .await;
    let a = ml.append(entry(0), 1).await.unwrap();
    let b = ml.append(entry(1), 1).await.unwrap();
    assert_eq!(a.ledger, b.ledger);
    clock.advance(Duration::from_secs(61));
    let c = ml.append(entry(2), 1).await.unwrap();
    assert!(c.ledger > b.ledger);
    assert_eq!(ml.ledgers()[0].closed_ms, Some(1_061_000));
}

/// A format that reads "producer:seq" entries.
#[derive(Debug)]
struct Sequenced;

impl EntryFormat for Sequenced {
    fn producer_sequence(&self, entry: &Bytes) -> Option<(String, i64)> {
        let s = std::str::from_utf8(entry).ok()?;
        let (p, n) = s.split_once(':')?;
        Some((p.to_string(), n.parse().ok()?))
    }
}

#[tokio::test]
async fn producer_sequences_come_back_from_snapshot_and_log() {
    let storage: Arc<dyn LedgerStorage> = Arc::new(MemoryStorage::new());
    let meta = meta();
    let tracking = || MlConfig {
        track_producers: true,
        producer_snapshot_every: 3,
        format: Arc::new(Sequenced),
        ..MlConfig::default()
    };
    let ml = open(&storage, &meta, tracking()).await;
    let name: Arc<str> = Arc::from("a");
    for seq in 0..5i64 {
        let w = ml
            .append_start(
                Bytes::from(format!("a:{seq}")),
                1,
                Some((Arc::clone(&name), seq)),
            )
            .await
            .unwrap();
        w.await.unwrap().unwrap();
    }
    assert_eq!(ml.producer_sequence("a"), Some(4));
    // the snapshot due after 3 entries is written in the background: let it land, so the
    // next owner's open does not race it (and get fenced, rightly)
    let key = record_key("p/ns/persistent/t");
    for _ in 0..1000 {
        let rec = meta
            .get_json::<MlRecord>(&key)
            .await
            .unwrap()
            .unwrap()
            .value;
        if rec
            .producers
            .is_some_and(|p| p.sequences.get("a").is_some_and(|s| *s >= 2))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(ml); // a crash: the snapshot (after 3) plus a replay of the rest
    let again = open(&storage, &meta, tracking()).await;
    assert_eq!(again.producer_sequence("a"), Some(4));
    assert_eq!(again.producer_sequence("b"), None);
}

#[tokio::test]
async fn cursors_persist_their_acknowledgements() {
    let storage: Arc<dyn LedgerStorage> = Arc::new(MemoryStorage::new());
    let meta = meta();
    let ml = open(&storage, &meta, cfg()).await;
    let mut ps = Vec::new();
    for i in 0..6 {
        ps.push(ml.append(entry(i), 1).await.unwrap());
    }
    let path = "p/ns/persistent/t";
    let c = Cursor::open_durable(ml.clone(), meta.clone(), path, "sub", ml.before_first())
        .await
        .unwrap();
    c.ack_individual(&[ps[0], ps[2]]);
    let seq = c.ack_individual(&[ps[4]]);
    c.persisted(seq).await.unwrap();
    assert_eq!(c.mark_delete(), ps[0]);
    let seq = c.ack_individual(&[ps[1]]);
    c.persisted(seq).await.unwrap();
    // 0..=2 acked: mark-delete moved over the run, 4 still acked beyond it
    assert_eq!(c.mark_delete(), ps[2]);
    drop(c);
    let back = Cursor::open_durable(ml.clone(), meta, path, "sub", ml.before_first())
        .await
        .unwrap();
    assert_eq!(back.mark_delete(), ps[2]);
    assert!(back.is_acked(ps[4]) && !back.is_acked(ps[3]));
    assert_eq!(back.key(), Some("/cursors/p/ns/persistent/t/sub"));
}

/// A tier holding copies of ledgers in a storage of its own.
#[derive(Debug)]
struct CopyTier {
    copies: MemoryStorage,
}

impl crate::tier::Tier for CopyTier {
    fn open(&self, ledger: LedgerInfo) -> crate::storage::StorageFuture<'_, Arc<dyn Ledger>> {
        Box::pin(async move {
            let id = ledger
                .offload
                .as_ref()
                .and_then(|v| v.get("copy"))
                .and_then(|v| v.as_u64())
                .ok_or_else(|| StorageError::Failed("no copy recorded".into()))?;
            self.copies.open(id).await
        })
    }

    fn delete(&self, ledger: LedgerInfo) -> crate::storage::StorageFuture<'_, ()> {
        Box::pin(async move {
            if let Some(id) = ledger.offload.and_then(|v| v.get("copy")?.as_u64()) {
                self.copies.delete(id).await?;
            }
            Ok(())
        })
    }
}

#[tokio::test]
async fn offloaded_ledgers_are_read_from_the_tier() {
    let mem = MemoryStorage::new();
    let storage: Arc<dyn LedgerStorage> = Arc::new(mem.clone());
    let copies = MemoryStorage::new();
    let tier = Arc::new(CopyTier {
        copies: copies.clone(),
    });
    let meta = meta();
    let cfg = || MlConfig {
        max_entries_per_ledger: 4,
        cache_bytes: 0,
        tier: Some(tier.clone()),
        ..MlConfig::default()
    };
    let ml = open(&storage, &meta, cfg()).await;
    for i in 0..6 {
        ml.append(entry(i), 1).await.unwrap();
    }
    let first = ml.ledgers()[0].clone();
    // copy the closed ledger to the tier, record it, then drop the original
    let copy = copies.create(&Placement::default()).await.unwrap();
    for e in 0..first.entries {
        let d = ml
            .read(Position::new(first.ledger_id, e as i64))
            .await
            .unwrap();
        copy.submit(d).unwrap().await.unwrap();
    }
    copy.close().await.unwrap();
    assert!(
        ml.mark_offloaded(ml.current_ledger().unwrap(), serde_json::json!({}))
            .await
            .is_err()
    );
    ml.mark_offloaded(first.ledger_id, serde_json::json!({ "copy": copy.id() }))
        .await
        .unwrap();
    mem.delete(first.ledger_id).await.unwrap();
    assert_eq!(read_all(&ml).await, (0..6).map(entry).collect::<Vec<_>>());
    // after a restart too, and trimming deletes the copy
    ml.close().await.unwrap();
    let again = open(&storage, &meta, cfg()).await;
    assert_eq!(
        read_all(&again).await,
        (0..6).map(entry).collect::<Vec<_>>()
    );
    again
        .trim(Some(again.last_confirmed()), Retention::from_limits(0, 0))
        .await
        .unwrap();
    assert!(copies.ledger_ids().is_empty());
}

#[tokio::test]
async fn a_busy_storage_slows_appends_and_fails_none() {
    let faulty = FaultyStorage::new(Arc::new(MemoryStorage::new()));
    let faults = Arc::clone(faulty.faults());
    let storage: Arc<dyn LedgerStorage> = Arc::new(faulty);
    let ml = open(&storage, &meta(), MlConfig::default()).await;
    ml.append(entry(0), 1).await.unwrap();
    faults.overload_nth(1);
    faults.overload_nth(2);
    let p = ml.append(entry(1), 1).await.unwrap();
    assert_eq!(p.entry, 1, "same ledger: nothing was rolled or recovered");
    assert_eq!(ml.stats().overloaded.load(Ordering::Relaxed), 2);
    assert_eq!(faults.calls(Call::Recover), 0);
    assert_eq!(read_all(&ml).await, vec![entry(0), entry(1)]);
}

fn faulty_meta() -> (MetaStore, Arc<magnetar_meta::MetaFaults>) {
    let s = magnetar_meta::FaultyStore::new(meta());
    let f = Arc::clone(s.faults());
    (Arc::new(s), f)
}

/// The window between closing a ledger and recording that in the log's record: the record
/// write fails there (the metadata store went away), then the broker dies. The append that
/// needed the rollover fails (it was never acknowledged); the next owner recovers the ledger
/// the record still calls open, and nothing acknowledged is lost.
#[tokio::test]
async fn a_ledger_closed_but_not_recorded_is_recovered_by_the_next_owner() {
    let storage: Arc<dyn LedgerStorage> = Arc::new(MemoryStorage::new());
    let (meta, faults) = faulty_meta();
    let ml = open(&storage, &meta, cfg()).await;
    for i in 0..4 {
        ml.append(entry(i), 1).await.unwrap();
    }
    // the 5th append rolls over: the ledger closes, then its record write fails
    faults.fail_next_cas_under("/managed-ledgers/", 1);
    assert!(matches!(
        ml.append(entry(4), 1).await,
        Err(MlError::Meta(MetaError::Unavailable(_)))
    ));
    // the store is back: the log goes on
    ml.append(entry(5), 1).await.unwrap();
    drop(ml); // crash
    let again = open(&storage, &meta, cfg()).await;
    assert_eq!(
        read_all(&again).await,
        vec![entry(0), entry(1), entry(2), entry(3), entry(5)]
    );
}

/// A cursor's flush that cannot reach the store is retried, and an acknowledgement is
/// reported durable only once it is; a flush that finds the record changed by someone else
/// stops (another broker owns the subscription now) and says so.
#[tokio::test]
async fn cursor_flushes_retry_and_stop_when_fenced() {
    let storage: Arc<dyn LedgerStorage> = Arc::new(MemoryStorage::new());
    let (meta, faults) = faulty_meta();
    let ml = open(&storage, &meta, cfg()).await;
    let ps: Vec<Position> = {
        let mut v = Vec::new();
        for i in 0..3 {
            v.push(ml.append(entry(i), 1).await.unwrap());
        }
        v
    };
    let path = "p/ns/persistent/t";
    let c = Cursor::open_durable(ml.clone(), meta.clone(), path, "sub", ml.before_first())
        .await
        .unwrap();
    faults.fail_next_cas_under("/cursors/", 2);
    let seq = c.ack_individual(&[ps[0]]);
    c.persisted(seq).await.unwrap();
    assert_eq!(
        faults.injected(),
        2,
        "two failed flushes, then one that landed"
    );
    let stored = meta
        .get_json::<crate::cursor::CursorRecord>("/cursors/p/ns/persistent/t/sub")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.value.mark_delete, ps[0]);

    faults.conflict_next_cas_under("/cursors/", 1);
    let seq = c.ack_individual(&[ps[1]]);
    let err = c.persisted(seq).await.unwrap_err();
    assert!(err.contains("fenced"), "{err}");
}
