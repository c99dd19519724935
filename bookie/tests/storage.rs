//! Ledger storage: entries and ledger state survive a reopen, a flipped byte is reported and
//! never served, and deleting ledgers really frees disk space.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use anyhow::Result;
use bytes::Bytes;
use magnetar_bookie::BookieError;
use magnetar_bookie::storage::{LedgerState, LedgerStorage, StorageConfig};

fn data(ledger: u64, entry: u64, size: usize) -> Bytes {
    Bytes::from(
        (0..size)
            .map(|i| (i as u64).wrapping_mul(31) as u8 ^ ledger as u8 ^ entry as u8)
            .collect::<Vec<u8>>(),
    )
}

#[test]
fn entries_and_state_survive_reopen() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = StorageConfig::new(dir.path());
    {
        let s = LedgerStorage::open(cfg.clone())?;
        for e in 0..50 {
            s.add_entry(3, e, data(3, e, 700))?;
        }
        // readable from the write cache before any flush
        assert_eq!(s.get_entry(3, 10)?, Some(data(3, 10, 700)));
        assert!(s.set_writer_key(3, &Bytes::from_static(b"writer-1")));
        assert!(!s.set_writer_key(3, &Bytes::from_static(b"writer-2")));
        s.update_lac(3, 48);
        s.update_lac(3, 20); // never goes down
        assert!(!s.set_fenced(3));
        assert!(s.set_fenced(3));
        s.flush()?;
        assert_eq!(s.get_entry(3, 49)?, Some(data(3, 49, 700)));
        assert_eq!(s.get_entry(3, 50)?, None);
        assert_eq!(s.get_entry(4, 0)?, None);
    }
    let s = LedgerStorage::open(cfg)?;
    for e in 0..50 {
        assert_eq!(s.get_entry(3, e)?, Some(data(3, e, 700)), "entry {e}");
    }
    assert_eq!(
        s.ledger_state(3),
        Some(LedgerState {
            fenced: true,
            lac: 48,
            writer_key: Bytes::from_static(b"writer-1"),
        })
    );
    assert_eq!(s.last_entry(3)?, Some(49));
    assert_eq!(s.last_entry(9)?, None);
    Ok(())
}

#[test]
fn flipped_byte_is_a_checksum_error_not_data() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = StorageConfig::new(dir.path());
    {
        let s = LedgerStorage::open(cfg.clone())?;
        for e in 0..5 {
            s.add_entry(1, e, data(1, e, 100))?;
        }
        s.flush()?;
    }
    let log = std::fs::read_dir(dir.path().join("logs"))?
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::metadata(p).unwrap().len() > 0)
        .expect("an entry log with data");
    // Entries are ~124 bytes each; offset 300 lands inside the third entry's data.
    let f = OpenOptions::new().read(true).write(true).open(&log)?;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, 300)?;
    f.write_all_at(&[b[0] ^ 0xff], 300)?;

    let s = LedgerStorage::open(cfg)?;
    match s.get_entry(1, 2) {
        Err(BookieError::Corrupt { reason, .. }) => {
            assert!(reason.contains("checksum"), "{reason}")
        }
        other => panic!("expected a checksum error, got {other:?}"),
    }
    assert_eq!(
        s.get_entry(1, 0)?,
        Some(data(1, 0, 100)),
        "other entries are unaffected"
    );
    Ok(())
}

#[test]
fn write_cache_is_bounded() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = StorageConfig::new(dir.path());
    cfg.write_cache_bytes = 10_000;
    let s = LedgerStorage::open(cfg)?;
    let mut e = 0;
    loop {
        match s.add_entry(1, e, data(1, e, 1000)) {
            Ok(()) => e += 1,
            Err(BookieError::CacheFull) => break,
            Err(other) => return Err(other.into()),
        }
        assert!(e < 100, "cache never filled");
    }
    assert!(s.write_cache_bytes() <= 10_000);
    s.flush()?;
    s.add_entry(1, e, data(1, e, 1000))?;
    Ok(())
}

#[test]
fn deleting_ledgers_frees_disk_and_keeps_the_rest() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = StorageConfig::new(dir.path());
    cfg.max_entry_log_bytes = 256 << 10;
    let s = LedgerStorage::open(cfg.clone())?;
    // Interleave a big ledger (to delete) with a small one (to keep) across several logs.
    for round in 0..20u64 {
        for e in 0..20u64 {
            s.add_entry(10, round * 20 + e, data(10, e, 2000))?;
        }
        s.add_entry(11, round, data(11, round, 500))?;
        s.flush()?;
    }
    let before = s.disk_usage()?;
    s.delete_ledger(10)?;
    assert_eq!(s.get_entry(10, 0)?, None);
    let freed = s.gc()?;
    let after = s.disk_usage()?;
    assert!(
        freed > 0 && after < before / 4,
        "disk usage {before} -> {after} (freed {freed})"
    );
    for r in 0..20 {
        assert_eq!(
            s.get_entry(11, r)?,
            Some(data(11, r, 500)),
            "kept entry {r} after compaction"
        );
    }
    drop(s);
    let s = LedgerStorage::open(cfg)?;
    for r in 0..20 {
        assert_eq!(
            s.get_entry(11, r)?,
            Some(data(11, r, 500)),
            "kept entry {r} after reopen"
        );
    }
    assert_eq!(s.get_entry(10, 5)?, None);
    Ok(())
}
