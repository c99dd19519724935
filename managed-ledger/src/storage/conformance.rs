//! One behaviour suite for every [`LedgerStorage`]: what the managed ledger relies on.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: a panic is a failure

use bytes::Bytes;

use super::{LedgerStorage, Placement, StorageError};

fn entry(i: u64) -> Bytes {
    Bytes::from(format!("entry-{i}"))
}

pub async fn run(s: &dyn LedgerStorage) {
    appends_are_numbered_in_call_order(s).await;
    a_closed_ledger_reads_and_takes_nothing_more(s).await;
    recovery_fences_a_live_writer(s).await;
    deleted_and_unknown_ledgers_are_reported(s).await;
}

async fn appends_are_numbered_in_call_order(s: &dyn LedgerStorage) {
    let l = s.create(&Placement::default()).await.unwrap();
    assert_eq!(l.last_entry(), -1);
    // pipelined: every submit before any completion
    let futs: Vec<_> = (0..10).map(|i| l.submit(entry(i)).unwrap()).collect();
    for (i, f) in futs.into_iter().enumerate() {
        assert_eq!(f.await.unwrap(), i as u64);
    }
    assert_eq!(l.last_entry(), 9);
    assert_eq!(l.read(3).await.unwrap(), entry(3));
    let range = l.read_range(2, 5).await.unwrap();
    assert_eq!(range, (2..=5).map(entry).collect::<Vec<_>>());
    assert_eq!(l.close().await.unwrap(), 9);
}

async fn a_closed_ledger_reads_and_takes_nothing_more(s: &dyn LedgerStorage) {
    let l = s.create(&Placement::default()).await.unwrap();
    l.submit(entry(0)).unwrap().await.unwrap();
    assert_eq!(l.close().await.unwrap(), 0);
    assert!(
        l.submit(entry(1)).is_err(),
        "a closed ledger takes no append"
    );
    let r = s.open(l.id()).await.unwrap();
    assert_eq!((r.id(), r.last_entry()), (l.id(), 0));
    assert_eq!(r.read(0).await.unwrap(), entry(0));
    assert!(r.read(1).await.is_err(), "nothing past the last entry");
    let empty = s.create(&Placement::default()).await.unwrap();
    assert_eq!(empty.close().await.unwrap(), -1);
}

async fn recovery_fences_a_live_writer(s: &dyn LedgerStorage) {
    let l = s.create(&Placement::default()).await.unwrap();
    for i in 0..3 {
        l.submit(entry(i)).unwrap().await.unwrap();
    }
    assert!(
        s.open(l.id()).await.is_err(),
        "an open ledger is not opened for reads"
    );
    assert_eq!(s.recover(l.id()).await.unwrap(), 2);
    // the old writer can neither add nor close over the recovered ledger
    let late = match l.submit(entry(3)) {
        Err(e) => Err(e),
        Ok(f) => f.await,
    };
    assert!(late.is_err(), "a fenced writer's append fails");
    assert!(matches!(l.close().await, Err(StorageError::Fenced(_))));
    // recovering again gives the same answer; the ledger reads as closed
    assert_eq!(s.recover(l.id()).await.unwrap(), 2);
    assert_eq!(
        s.open(l.id()).await.unwrap().read(2).await.unwrap(),
        entry(2)
    );
}

async fn deleted_and_unknown_ledgers_are_reported(s: &dyn LedgerStorage) {
    let l = s.create(&Placement::default()).await.unwrap();
    l.close().await.unwrap();
    s.delete(l.id()).await.unwrap();
    assert!(matches!(
        s.open(l.id()).await,
        Err(StorageError::NoSuchLedger(_))
    ));
    assert!(matches!(
        s.recover(u64::MAX - 1).await,
        Err(StorageError::NoSuchLedger(_))
    ));
}
