//! The whole tier over a real managed ledger (memory storage and metadata, a directory as
//! the object store): offload, reads after the storage copies go, corruption, orphans.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use bytes::Bytes;
use magnetar_managed_ledger::storage::{LedgerStorage, MemoryStorage};
use magnetar_managed_ledger::tier::Tier;
use magnetar_managed_ledger::{ManagedLedger, MlConfig, Position};
use magnetar_tiering::tier::record_of;
use magnetar_tiering::{
    Location, LogOffloads, ObjectTier, Phase, SegmentOptions, TierConfig, Which,
};

fn entry(i: u64) -> Bytes {
    Bytes::from(format!("entry-{i}-").repeat(20))
}

async fn log(
    storage: &Arc<dyn LedgerStorage>,
    meta: &magnetar_meta::MetaStore,
    tier: &Arc<ObjectTier>,
) -> ManagedLedger {
    let cfg = MlConfig {
        max_entries_per_ledger: 100,
        cache_bytes: 0,
        tier: Some(Arc::clone(tier) as Arc<dyn Tier>),
        ..MlConfig::default()
    };
    ManagedLedger::open(
        "t",
        "a/b/persistent/t",
        Arc::clone(storage),
        meta.clone(),
        cfg,
    )
    .await
    .unwrap()
}

async fn read_all(ml: &ManagedLedger) -> Result<Vec<Bytes>, magnetar_managed_ledger::MlError> {
    let (entries, _) = ml
        .read_from(ml.before_first(), usize::MAX, |_| false)
        .await?;
    Ok(entries.into_iter().map(|(_, d)| d).collect())
}

#[tokio::test]
async fn offloaded_ledgers_read_back_and_a_corrupt_copy_is_reported_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn LedgerStorage> = Arc::new(MemoryStorage::new());
    let meta: magnetar_meta::MetaStore = Arc::new(magnetar_meta::MemoryStore::new().unwrap());
    let tier = Arc::new(ObjectTier::new(TierConfig {
        segment: SegmentOptions {
            block_bytes: 4096,
            part_bytes: 5 << 20,
        },
        cache_bytes: 64 << 10,
        readahead_bytes: 16 << 10,
    }));
    let ml = log(&storage, &meta, &tier).await;
    for i in 0..250 {
        ml.append(entry(i), 1).await.unwrap();
    }
    let offloads = LogOffloads::default();
    let at = Location::filesystem(dir.path());
    assert!(offloads.begin());
    let all = Which::Before(Position::new(u64::MAX, i64::MAX));
    assert_eq!(offloads.run(&tier, &ml, &at, all, true).await.unwrap(), 2);
    let status = offloads.status();
    assert_eq!(status.phase, Phase::Success);
    assert_eq!(status.first_unoffloaded.map(|p| p.entry), Some(0));
    assert_eq!(
        ml.ledgers().iter().filter(|l| l.offload.is_some()).count(),
        2
    );
    // the storage copies go; every entry still reads, in order, from the tier
    for l in ml.ledgers().iter().filter(|l| l.offload.is_some()) {
        storage.delete(l.ledger_id).await.unwrap();
    }
    let got = read_all(&ml).await.unwrap();
    assert_eq!(got, (0..250).map(entry).collect::<Vec<_>>());
    assert!(
        tier.stats()
            .read_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );

    // flip one byte in the middle of a data object: a reader of a fresh log (no
    // cached blocks) gets an error naming the corruption, never the wrong bytes
    let first = ml.ledgers()[0].clone();
    let rec = record_of(&first).unwrap();
    let file = dir.path().join(&rec.key);
    let mut raw = std::fs::read(&file).unwrap();
    let mid = raw.len() / 2;
    raw[mid] ^= 0x01;
    std::fs::write(&file, raw).unwrap();
    let fresh = Arc::new(ObjectTier::new(TierConfig::default()));
    let reopened = log(&storage, &meta, &fresh).await;
    let err = read_all(&reopened).await.unwrap_err().to_string();
    assert!(err.contains("checksum") || err.contains("corrupt"), "{err}");

    // an orphan (a copy never recorded) is swept by the next run; recorded ones stay
    let orphan = dir
        .path()
        .join("a/b/persistent/t")
        .join(format!("1-{:032x}", 5u128));
    std::fs::write(&orphan, b"half").unwrap();
    assert!(offloads.begin());
    offloads.run(&tier, &ml, &at, all, true).await.unwrap();
    assert!(!orphan.exists());
    assert!(file.exists());
}
