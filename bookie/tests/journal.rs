//! Journal: durable appends replay after reopen, torn tails are cut, corruption elsewhere is
//! reported, rotation and checkpoints drop old files, and group commit groups.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Result;
use bytes::Bytes;
use magnetar_bookie::BookieError;
use magnetar_bookie::journal::{Journal, JournalConfig, JournalPos, Record};

fn rec(ledger: u64, entry: u64, size: usize) -> Record {
    let payload: Vec<u8> = (0..size)
        .map(|i| (i as u64 ^ ledger ^ entry) as u8)
        .collect();
    Record {
        kind: 1,
        ledger,
        entry,
        extra: entry as i64 - 1,
        payload: Bytes::from(payload),
    }
}

fn replay_all(cfg: &JournalConfig) -> Result<(Journal, Vec<Record>)> {
    let mut got = Vec::new();
    let j = Journal::open(cfg.clone(), |r, _| {
        got.push(r);
        Ok(())
    })?;
    Ok((j, got))
}

fn journal_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "journal"))
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_replay_in_order_after_reopen() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = JournalConfig::new(dir.path());
    let (journal, got) = replay_all(&cfg)?;
    assert!(got.is_empty());
    let journal = Arc::new(journal);
    let mut tasks = Vec::new();
    for ledger in 0..16u64 {
        let j = Arc::clone(&journal);
        tasks.push(tokio::spawn(async move {
            for entry in 0..100u64 {
                j.append(rec(ledger, entry, (entry as usize * 37) % 3000))
                    .await?;
            }
            Ok::<_, BookieError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let stats = journal.stats();
    let (groups, records) = (
        stats.groups.load(Ordering::Relaxed),
        stats.records.load(Ordering::Relaxed),
    );
    assert_eq!(records, 1600);
    assert!(
        groups < records,
        "concurrent appends share syncs ({groups} groups for {records} records)"
    );
    drop(journal);

    let (_j, got) = replay_all(&cfg)?;
    assert_eq!(got.len(), 1600);
    let mut next: BTreeMap<u64, u64> = BTreeMap::new();
    for r in &got {
        let want = next.entry(r.ledger).or_default();
        assert_eq!(r.entry, *want, "ledger {} replayed out of order", r.ledger);
        *want += 1;
        assert_eq!(r, &rec(r.ledger, r.entry, (r.entry as usize * 37) % 3000));
    }
    Ok(())
}

#[tokio::test]
async fn torn_tail_is_cut_and_never_served() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = JournalConfig::new(dir.path());
    let end = {
        let (j, _) = replay_all(&cfg)?;
        for e in 0..10 {
            j.append(rec(7, e, 100)).await?;
        }
        j.durable_position()
    };
    // A crash in the middle of the next group: a header promising 500 bytes, 40 written.
    let file = &journal_files(dir.path())[0];
    let f = OpenOptions::new().write(true).open(file)?;
    let mut torn = Vec::new();
    torn.extend_from_slice(&525u32.to_le_bytes());
    torn.extend_from_slice(&0xdead_beefu32.to_le_bytes());
    torn.extend_from_slice(&[0xab; 40]);
    f.write_all_at(&torn, end.offset)?;
    f.sync_all()?;

    let (j, got) = replay_all(&cfg)?;
    assert_eq!(got.len(), 10, "only the synced records replay");
    assert_eq!(
        std::fs::metadata(file)?.len(),
        end.offset,
        "the tail was cut at the last good record"
    );
    assert_eq!(
        j.durable_position(),
        JournalPos {
            file: end.file + 1,
            offset: 0
        },
        "appends go on in a new file"
    );
    j.append(rec(7, 10, 3)).await?; // shorter than the torn garbage was
    drop(j);
    let (_j, got) = replay_all(&cfg)?;
    assert_eq!(got.len(), 11);
    assert_eq!(
        got.last().unwrap(),
        &rec(7, 10, 3),
        "no garbage after the new record"
    );
    Ok(())
}

/// Groups are written in whole 4 KiB blocks, each starting with the written part of the
/// block before; records of every size, across reopens (each continues in a new file), all
/// come back, and a record straddling block boundaries is intact.
#[tokio::test]
async fn groups_of_every_size_replay_across_reopens() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = JournalConfig::new(dir.path());
    let sizes = [0usize, 1, 7, 4_000, 4_063, 4_096, 9_000, 70_000, 3];
    let mut want = Vec::new();
    for round in 0..3u64 {
        let (j, got) = replay_all(&cfg)?;
        assert_eq!(got, want, "round {round}");
        for (i, &size) in sizes.iter().enumerate() {
            let r = rec(round, i as u64, size);
            let before = j.durable_position();
            let after = j.append(r.clone()).await?;
            assert_eq!(
                after.offset - before.offset,
                (8 + 25 + size) as u64,
                "positions count record bytes, not padding"
            );
            want.push(r);
        }
    }
    assert_eq!(journal_files(dir.path()).len(), 3);
    let (_j, got) = replay_all(&cfg)?;
    assert_eq!(got, want);
    Ok(())
}

#[tokio::test]
async fn flipped_byte_in_an_older_file_is_reported_as_corrupt() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = JournalConfig::new(dir.path());
    cfg.max_file_bytes = 64 << 10;
    cfg.prealloc_bytes = 64 << 10;
    {
        let (j, _) = replay_all(&cfg)?;
        for e in 0..200 {
            j.append(rec(1, e, 1000)).await?;
        }
    }
    let files = journal_files(dir.path());
    assert!(
        files.len() > 2,
        "small files rotate ({} files)",
        files.len()
    );
    let f = OpenOptions::new().read(true).write(true).open(&files[0])?;
    let mut byte = [0u8; 1];
    f.read_exact_at(&mut byte, 100)?;
    f.write_all_at(&[byte[0] ^ 0x40], 100)?;
    match Journal::open(cfg.clone(), |_, _| Ok(())) {
        Err(BookieError::Corrupt { reason, .. }) => {
            assert!(reason.contains("checksum"), "{reason}")
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn checkpoint_drops_old_files_and_replay_starts_there() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = JournalConfig::new(dir.path());
    cfg.max_file_bytes = 32 << 10;
    cfg.prealloc_bytes = 32 << 10;
    let (j, _) = replay_all(&cfg)?;
    for e in 0..100 {
        j.append(rec(2, e, 1000)).await?;
    }
    let mark = j.durable_position();
    for e in 100..110 {
        j.append(rec(2, e, 1000)).await?;
    }
    let before = journal_files(dir.path()).len();
    j.checkpoint(mark)?;
    let after = journal_files(dir.path()).len();
    assert!(
        after < before,
        "files behind the checkpoint are removed ({before} -> {after})"
    );
    drop(j);

    let (_j, got) = replay_all(&cfg)?;
    let entries: Vec<u64> = got.iter().map(|r| r.entry).collect();
    assert_eq!(
        entries,
        (100..110).collect::<Vec<_>>(),
        "replay starts at the checkpoint"
    );
    Ok(())
}

#[tokio::test]
async fn oversized_record_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (j, _) = replay_all(&JournalConfig::new(dir.path()))?;
    let big = Record {
        kind: 1,
        ledger: 1,
        entry: 0,
        extra: -1,
        payload: Bytes::from(vec![0u8; magnetar_bookie::journal::MAX_RECORD_BYTES]),
    };
    assert!(matches!(
        j.append(big).await,
        Err(BookieError::TooLarge { .. })
    ));
    // and the journal keeps working
    j.append(rec(1, 0, 10)).await?;
    assert!(j.durable_position() > JournalPos::default());
    Ok(())
}

/// Passes through to the disk until told to fail every sync, like a disk that went away.
#[derive(Debug, Default)]
struct FailingDisk {
    fail_sync: std::sync::atomic::AtomicBool,
}

impl magnetar_bookie::journal::JournalIo for FailingDisk {
    fn write_at(&self, file: &std::fs::File, buf: &[u8], offset: u64) -> std::io::Result<()> {
        file.write_all_at(buf, offset)
    }

    fn sync(&self, file: &std::fs::File) -> std::io::Result<()> {
        if self.fail_sync.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("injected: device gone"));
        }
        file.sync_data()
    }
}

#[tokio::test]
async fn a_failed_sync_stops_the_journal_and_loses_nothing_acknowledged() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let disk = Arc::new(FailingDisk::default());
    let mut cfg = JournalConfig::new(dir.path());
    cfg.io = disk.clone();
    let (j, _) = replay_all(&cfg)?;
    for e in 0..5 {
        j.append(rec(9, e, 200)).await?;
    }
    assert!(j.failure().is_none());

    disk.fail_sync.store(true, Ordering::SeqCst);
    match j.append(rec(9, 5, 200)).await {
        Err(BookieError::JournalFailed(why)) => assert!(why.contains("injected"), "{why}"),
        other => panic!("a failed sync must fail the append, got {other:?}"),
    }
    // Even once the disk answers again, the journal stays stopped: what reached the platter
    // after a failed fsync cannot be known.
    disk.fail_sync.store(false, Ordering::SeqCst);
    assert!(matches!(
        j.append(rec(9, 6, 200)).await,
        Err(BookieError::JournalFailed(_))
    ));
    assert!(j.failure().is_some_and(|w| w.contains("sync journal")));
    drop(j);

    // A restart replays every acknowledged record (the unacknowledged one may or may not be
    // there; nothing after it is).
    let (_j, got) = replay_all(&JournalConfig::new(dir.path()))?;
    let entries: Vec<u64> = got.iter().map(|r| r.entry).collect();
    assert!(entries.starts_with(&[0, 1, 2, 3, 4]), "{entries:?}");
    assert!(entries.len() <= 6, "{entries:?}");
    Ok(())
}
