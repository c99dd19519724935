//! Ledger storage behind a bookie (no network): entries and ledger state survive a reopen, a
//! flipped byte is reported and never served, the write cache is bounded, and deleting
//! ledgers really frees disk space while the others stay readable.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Result, bail};
use bytes::Bytes;
use magnetar_bookie::protocol::{self, Op, Request, Response, Status};
use magnetar_bookie::server::{Bookie, BookieConfig};
use magnetar_bookie::storage::LedgerState;

fn data(ledger: u64, entry: u64, size: usize) -> Bytes {
    Bytes::from(
        (0..size)
            .map(|i| (i as u64).wrapping_mul(31) as u8 ^ ledger as u8 ^ entry as u8)
            .collect::<Vec<u8>>(),
    )
}

const KEY: &[u8] = b"writer-1";

async fn call(b: &Arc<Bookie>, op: Op) -> Response {
    b.handle(Request {
        id: 1,
        op: Some(op),
    })
    .await
}

async fn add(b: &Arc<Bookie>, ledger: u64, entry: u64, size: usize) -> Result<()> {
    let r = call(
        b,
        Op::Add(protocol::AddEntry {
            ledger_id: ledger,
            entry_id: entry,
            writer_key: Bytes::from_static(KEY),
            lac: entry as i64 - 1,
            data: data(ledger, entry, size),
            recovery: false,
        }),
    )
    .await;
    if r.outcome() != Status::Ok {
        bail!("add {ledger}:{entry}: {:?} {}", r.outcome(), r.message);
    }
    Ok(())
}

async fn read(b: &Arc<Bookie>, ledger: u64, entry: u64) -> Result<Bytes, Status> {
    let r = call(
        b,
        Op::Read(protocol::ReadEntry {
            ledger_id: ledger,
            entry_id: entry,
        }),
    )
    .await;
    match r.outcome() {
        Status::Ok => Ok(r
            .entries
            .into_iter()
            .next()
            .map(|e| e.data)
            .unwrap_or_default()),
        other => Err(other),
    }
}

fn config(dir: &std::path::Path) -> BookieConfig {
    let mut cfg = BookieConfig::new(dir);
    cfg.min_free_disk_bytes = 0;
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_and_state_survive_reopen() -> Result<()> {
    let dir = tempfile::tempdir()?;
    {
        let b = Bookie::open(config(dir.path()), None)?;
        for e in 0..50 {
            add(&b, 3, e, 700).await?;
        }
        // readable from the write cache before any flush
        assert_eq!(read(&b, 3, 10).await, Ok(data(3, 10, 700)));
        let fenced = call(&b, Op::Fence(protocol::Fence { ledger_id: 3 })).await;
        assert_eq!(fenced.outcome(), Status::Ok);
        assert_eq!((fenced.lac, fenced.last_entry), (48, 49));
        let refused = call(
            &b,
            Op::Add(protocol::AddEntry {
                ledger_id: 3,
                entry_id: 50,
                writer_key: Bytes::from_static(KEY),
                lac: 49,
                data: data(3, 50, 700),
                recovery: false,
            }),
        )
        .await;
        assert_eq!(refused.outcome(), Status::Fenced);
        b.flush().await?;
        assert_eq!(read(&b, 3, 49).await, Ok(data(3, 49, 700)));
        assert_eq!(read(&b, 3, 50).await, Err(Status::NoSuchEntry));
        assert_eq!(read(&b, 4, 0).await, Err(Status::NoSuchLedger));
        // and some more after the flush, which only the journal has on reopen
        add(&b, 5, 0, 10).await?;
    }
    let b = Bookie::open(config(dir.path()), None)?;
    for e in 0..50 {
        assert_eq!(read(&b, 3, e).await, Ok(data(3, e, 700)), "entry {e}");
    }
    assert_eq!(read(&b, 5, 0).await, Ok(data(5, 0, 10)));
    assert_eq!(
        b.storage().ledger_state(3),
        Some(LedgerState {
            fenced: true,
            lac: 48,
            writer_key: Bytes::from_static(KEY),
        })
    );
    assert_eq!(b.storage().last_entry(3)?, Some(49));
    assert_eq!(b.storage().last_entry(9)?, None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_is_a_checksum_error_not_data() -> Result<()> {
    let dir = tempfile::tempdir()?;
    {
        let b = Bookie::open(config(dir.path()), None)?;
        for e in 0..5 {
            add(&b, 1, e, 100).await?;
        }
        b.flush().await?;
    }
    let journal = dir.path().join("journal");
    let file = std::fs::read_dir(&journal)?
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "journal"))
        .expect("a journal file");
    let bytes = std::fs::read(&file)?;
    let want = data(1, 2, 100);
    let at = bytes
        .windows(want.len())
        .position(|w| w == &want[..])
        .expect("entry 2 in the journal") as u64
        + 50;
    let f = OpenOptions::new().read(true).write(true).open(&file)?;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at)?;
    f.write_all_at(&[b[0] ^ 0xff], at)?;

    let b = Bookie::open(config(dir.path()), None)?;
    assert_eq!(read(&b, 1, 2).await, Err(Status::Corrupt));
    assert_eq!(
        read(&b, 1, 0).await,
        Ok(data(1, 0, 100)),
        "other entries are unaffected"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_cache_is_bounded() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = config(dir.path());
    cfg.storage.write_cache_bytes = 10_000;
    cfg.flush_interval = std::time::Duration::from_secs(3600);
    let b = Bookie::open(cfg, None)?;
    tokio::spawn(Arc::clone(&b).run_flusher());
    let mut most = 0;
    for e in 0..100 {
        add(&b, 1, e, 1000).await?;
        most = most.max(b.storage().write_cache_bytes());
    }
    assert!(most <= 10_000, "the cache held {most} bytes");
    assert!(
        b.stats().flushes.load(Ordering::Relaxed) >= 5,
        "100 KB through a 10 KB cache flushes it early"
    );
    for e in 0..100 {
        assert_eq!(read(&b, 1, e).await, Ok(data(1, e, 1000)));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_ledgers_frees_disk_and_keeps_the_rest() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = config(dir.path());
    cfg.journal.max_file_bytes = 256 << 10;
    cfg.journal.spare_files = 0;
    let b = Bookie::open(cfg.clone(), None)?;
    // Interleave a big ledger (to delete) with a small one (to keep) across several files.
    for round in 0..40u64 {
        for e in 0..20u64 {
            add(&b, 10, round * 20 + e, 2000).await?;
        }
        add(&b, 11, round, 500).await?;
        b.flush().await?;
    }
    let (before, _) = b.journal_disk_usage();
    let deleted = call(
        &b,
        Op::DeleteLedger(protocol::DeleteLedger { ledger_id: 10 }),
    )
    .await;
    assert_eq!(deleted.outcome(), Status::Ok);
    assert_eq!(read(&b, 10, 0).await, Err(Status::NoSuchLedger));
    b.flush().await?;
    let freed = b.gc().await?;
    let (after, spare) = b.journal_disk_usage();
    assert!(
        freed > 0 && after < before / 4 && spare == 0,
        "journal {before} -> {after} bytes (freed {freed}, spare {spare})"
    );
    for r in 0..40 {
        assert_eq!(
            read(&b, 11, r).await,
            Ok(data(11, r, 500)),
            "kept entry {r} after compaction"
        );
    }
    drop(b);
    let b = Bookie::open(cfg, None)?;
    for r in 0..40 {
        assert_eq!(
            read(&b, 11, r).await,
            Ok(data(11, r, 500)),
            "kept entry {r} after reopen"
        );
    }
    assert_eq!(read(&b, 10, 5).await, Err(Status::NoSuchLedger));
    Ok(())
}
