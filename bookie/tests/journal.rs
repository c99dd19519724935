//! Journal: durable appends replay after reopen and read back by their place, every durable
//! group reaches the sink before its appends return, torn tails are cut, corruption elsewhere
//! is reported, checkpoints move replay forward, emptied files are kept and reused without
//! their old records ever coming back, and group commit groups.

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
use magnetar_bookie::journal::{
    FILE_HEADER, FaultyIo, Journal, JournalConfig, JournalFiles, JournalPos, Record, RecordLoc,
};
use parking_lot::Mutex;

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

type Seen = Arc<Mutex<Vec<(Record, RecordLoc)>>>;

struct Opened {
    journal: Journal,
    files: Arc<JournalFiles>,
    replayed: Vec<Record>,
    /// What the sink was given since the open.
    sunk: Seen,
}

fn open(cfg: &JournalConfig) -> Result<Opened> {
    let files = JournalFiles::new(&cfg.dir);
    let mut replayed = Vec::new();
    let sunk: Seen = Arc::default();
    let s = Arc::clone(&sunk);
    let journal = Journal::open(
        cfg.clone(),
        Arc::clone(&files),
        |r, loc| {
            assert_eq!(
                files.read(loc)?,
                r,
                "replay hands out the record's real place"
            );
            replayed.push(r);
            Ok(())
        },
        Box::new(move |group| s.lock().extend(group.iter().cloned())),
    )?;
    Ok(Opened {
        journal,
        files,
        replayed,
        sunk,
    })
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
async fn acknowledged_records_replay_in_order_and_read_back_by_place() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = JournalConfig::new(dir.path());
    let o = open(&cfg)?;
    assert!(o.replayed.is_empty());
    let journal = Arc::new(o.journal);
    let mut tasks = Vec::new();
    for ledger in 0..16u64 {
        let j = Arc::clone(&journal);
        let sunk = Arc::clone(&o.sunk);
        tasks.push(tokio::spawn(async move {
            let mut locs = Vec::new();
            for entry in 0..100u64 {
                let r = rec(ledger, entry, (entry as usize * 37) % 3000);
                let loc = j.append(r.clone()).await?;
                // the sink had it before the append returned
                assert!(sunk.lock().iter().any(|(s, l)| *l == loc && *s == r));
                locs.push((r, loc));
            }
            Ok::<_, BookieError>(locs)
        }));
    }
    let mut placed = Vec::new();
    for t in tasks {
        placed.extend(t.await??);
    }
    for (r, loc) in &placed {
        assert_eq!(&o.files.read(*loc)?, r);
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
    let sunk: Vec<RecordLoc> = o.sunk.lock().iter().map(|(_, l)| *l).collect();
    assert!(
        sunk.windows(2).all(|w| w[0].end()
            <= JournalPos {
                file: w[1].file,
                offset: w[1].offset
            }),
        "the sink sees records in journal order"
    );
    drop(journal);

    let o = open(&cfg)?;
    assert_eq!(o.replayed.len(), 1600);
    let mut next: BTreeMap<u64, u64> = BTreeMap::new();
    for r in &o.replayed {
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
        let o = open(&cfg)?;
        for e in 0..10 {
            o.journal.append(rec(7, e, 100)).await?;
        }
        o.journal.durable_position()
    };
    // A crash in the middle of the next group: a header promising 500 bytes, 40 written.
    let file = &journal_files(dir.path())[0];
    let f = OpenOptions::new().read(true).write(true).open(file)?;
    let mut torn = Vec::new();
    torn.extend_from_slice(&525u32.to_le_bytes());
    torn.extend_from_slice(&0xdead_beefu32.to_le_bytes());
    torn.extend_from_slice(&[0xab; 40]);
    f.write_all_at(&torn, end.offset)?;
    f.sync_all()?;

    let o = open(&cfg)?;
    assert_eq!(o.replayed.len(), 10, "only the synced records replay");
    let mut marker = [0xffu8; 8];
    f.read_exact_at(&mut marker, end.offset)?;
    assert_eq!(marker, [0; 8], "the end is marked at the last good record");
    assert_eq!(
        o.journal.durable_position(),
        JournalPos {
            file: end.file + 1,
            offset: FILE_HEADER
        },
        "appends go on in a new file"
    );
    o.journal.append(rec(7, 10, 3)).await?;
    drop(o);
    let o = open(&cfg)?;
    assert_eq!(o.replayed.len(), 11);
    assert_eq!(
        o.replayed.last().unwrap(),
        &rec(7, 10, 3),
        "no garbage after the new record"
    );
    Ok(())
}

#[tokio::test]
async fn flipped_byte_in_an_older_file_is_reported_as_corrupt() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = JournalConfig::new(dir.path());
    cfg.max_file_bytes = 64 << 10;
    {
        let o = open(&cfg)?;
        for e in 0..200 {
            o.journal.append(rec(1, e, 1000)).await?;
        }
    }
    let files = journal_files(dir.path());
    assert!(
        files.len() > 2,
        "small files rotate ({} files)",
        files.len()
    );
    let f = OpenOptions::new().read(true).write(true).open(&files[0])?;
    let at = FILE_HEADER + 100;
    let mut byte = [0u8; 1];
    f.read_exact_at(&mut byte, at)?;
    f.write_all_at(&[byte[0] ^ 0x40], at)?;
    match open(&cfg) {
        Err(e) => match e.downcast::<BookieError>()? {
            BookieError::Corrupt { reason, .. } => {
                assert!(reason.contains("checksum"), "{reason}")
            }
            other => panic!("expected Corrupt, got {other:?}"),
        },
        Ok(_) => panic!("a damaged older file must stop the journal from opening"),
    }
    Ok(())
}

#[tokio::test]
async fn a_damaged_header_is_corruption_unless_the_file_never_started() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = JournalConfig::new(dir.path());
    {
        let o = open(&cfg)?;
        o.journal.append(rec(1, 0, 10)).await?;
    }
    // A file whose start never became durable holds nothing: it is dropped.
    std::fs::write(dir.path().join(format!("{:016x}.journal", 1)), [0u8; 100])?;
    let o = open(&cfg)?;
    assert_eq!(o.replayed.len(), 1);
    drop(o);
    // A damaged header on a file with records is reported.
    let files = journal_files(dir.path());
    let newest = files.last().unwrap();
    {
        let o = open(&cfg)?;
        o.journal.append(rec(1, 1, 10)).await?;
    }
    let newest_with_records = journal_files(dir.path()).last().unwrap().clone();
    assert_ne!(&newest_with_records, newest);
    let f = OpenOptions::new().write(true).open(&newest_with_records)?;
    f.write_all_at(b"XX", 0)?;
    match open(&cfg) {
        Err(e) => assert!(
            matches!(
                e.downcast_ref::<BookieError>(),
                Some(BookieError::Corrupt { .. })
            ),
            "{e}"
        ),
        Ok(_) => panic!("a journal file with records and a bad header must not open"),
    }
    Ok(())
}

#[tokio::test]
async fn checkpoint_moves_replay_and_retired_files_are_reused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = JournalConfig::new(dir.path());
    cfg.max_file_bytes = 32 << 10;
    cfg.spare_files = 1;
    let o = open(&cfg)?;
    for e in 0..100 {
        o.journal.append(rec(2, e, 1000)).await?;
    }
    let mark = o.journal.durable_position();
    for e in 100..110 {
        o.journal.append(rec(2, e, 1000)).await?;
    }
    o.journal.checkpoint(mark)?;
    assert!(
        o.journal.retire(mark.file).is_err(),
        "the checkpoint's own file is still needed"
    );
    let old: Vec<u64> = o
        .journal
        .files()?
        .into_iter()
        .filter(|&f| f < mark.file)
        .collect();
    assert!(old.len() >= 2, "{old:?}");
    let first_size = std::fs::metadata(&journal_files(dir.path())[0])?.len();
    assert_eq!(
        o.journal.retire(old[0])?,
        0,
        "the first one is kept as a spare"
    );
    assert_eq!(
        o.journal.retire(old[1])?,
        first_size,
        "beyond the spare count, files are deleted"
    );
    let (_, spare) = o.journal.disk_usage();
    assert_eq!(spare, first_size);
    // The next file reuses the spare; what it held before never comes back.
    let reused_before = o.journal.stats().reused_files.load(Ordering::Relaxed);
    for e in 110..150 {
        o.journal.append(rec(3, e, 1000)).await?;
    }
    assert_eq!(
        o.journal.stats().reused_files.load(Ordering::Relaxed),
        reused_before + 1
    );
    drop(o);

    let o = open(&cfg)?;
    let got: Vec<(u64, u64)> = o.replayed.iter().map(|r| (r.ledger, r.entry)).collect();
    let want: Vec<(u64, u64)> = (100..110)
        .map(|e| (2, e))
        .chain((110..150).map(|e| (3, e)))
        .collect();
    assert_eq!(
        got, want,
        "replay starts at the checkpoint, and sees no old records"
    );
    Ok(())
}

#[tokio::test]
async fn oversized_record_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let o = open(&JournalConfig::new(dir.path()))?;
    let big = Record {
        kind: 1,
        ledger: 1,
        entry: 0,
        extra: -1,
        payload: Bytes::from(vec![0u8; magnetar_bookie::journal::MAX_RECORD_BYTES]),
    };
    assert!(matches!(
        o.journal.append(big).await,
        Err(BookieError::TooLarge { .. })
    ));
    // and the journal keeps working
    let loc = o.journal.append(rec(1, 0, 10)).await?;
    assert_eq!(o.files.read(loc)?, rec(1, 0, 10));
    Ok(())
}

/// A journal on a disk that fails on demand, holding entries 0..5 of `ledger`.
async fn open_on_faulty_disk(
    dir: &Path,
    ledger: u64,
    size: usize,
) -> Result<(Opened, Arc<FaultyIo>)> {
    let disk = Arc::new(FaultyIo::default());
    let mut cfg = JournalConfig::new(dir);
    cfg.io = disk.clone();
    let o = open(&cfg)?;
    for e in 0..5 {
        o.journal.append(rec(ledger, e, size)).await?;
    }
    Ok((o, disk))
}

#[tokio::test]
async fn a_failed_sync_stops_the_journal_and_loses_nothing_acknowledged() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (o, disk) = open_on_faulty_disk(dir.path(), 9, 200).await?;
    assert!(o.journal.failure().is_none());

    disk.fail_syncs(true);
    match o.journal.append(rec(9, 5, 200)).await {
        Err(BookieError::JournalFailed(why)) => assert!(why.contains("injected"), "{why}"),
        other => panic!("a failed sync must fail the append, got {other:?}"),
    }
    assert_eq!(
        o.sunk.lock().len(),
        5,
        "a group that did not sync never reaches the sink"
    );
    // Even once the disk answers again, the journal stays stopped: what reached the platter
    // after a failed fsync cannot be known.
    disk.fail_syncs(false);
    assert!(matches!(
        o.journal.append(rec(9, 6, 200)).await,
        Err(BookieError::JournalFailed(_))
    ));
    assert!(
        o.journal
            .failure()
            .is_some_and(|w| w.contains("sync journal"))
    );
    drop(o);

    // A restart replays every acknowledged record (the unacknowledged one may or may not be
    // there; nothing after it is).
    let o = open(&JournalConfig::new(dir.path()))?;
    let entries: Vec<u64> = o.replayed.iter().map(|r| r.entry).collect();
    assert!(entries.starts_with(&[0, 1, 2, 3, 4]), "{entries:?}");
    assert!(entries.len() <= 6, "{entries:?}");
    Ok(())
}

/// A crash between a write and its fsync: the record reached the disk only in part. The
/// append fails (it was never acknowledged), and a restart finds the torn tail by its CRC,
/// serves everything before it and nothing of it, and appends after it.
#[tokio::test]
async fn a_write_torn_before_its_sync_is_found_and_cut_on_replay() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (o, disk) = open_on_faulty_disk(dir.path(), 3, 300).await?;
    disk.tear_next_write(100);
    assert!(matches!(
        o.journal.append(rec(3, 5, 300)).await,
        Err(BookieError::JournalFailed(_))
    ));
    drop(o);

    let o = open(&JournalConfig::new(dir.path()))?;
    let entries: Vec<u64> = o.replayed.iter().map(|r| r.entry).collect();
    assert_eq!(entries, [0, 1, 2, 3, 4], "the torn record is not served");
    let loc = o.journal.append(rec(3, 6, 300)).await?;
    assert_eq!(o.files.read(loc)?, rec(3, 6, 300));
    Ok(())
}
