//! `magnetar bookie` as a real process: synced entries survive kill -9, fencing and writer
//! keys hold across restarts, garbage on the port closes only that connection, and the bookie
//! registers itself in the metadata store.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use magnetar_bookie::client::{BookieClient, ClientError};
use magnetar_bookie::protocol::Status;
use magnetar_testkit::{BookieProc, metric_value, wait_until};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(30);

async fn start(extra: &[&str]) -> Result<BookieProc> {
    BookieProc::start(
        magnetar_testkit::magnetar_bin().expect("the magnetar binary"),
        extra,
    )
    .await
}

async fn connect(b: &BookieProc) -> Result<BookieClient> {
    Ok(BookieClient::connect(b.addr, Duration::from_secs(10)).await?)
}

fn payload(ledger: u64, entry: u64) -> Bytes {
    let mut v = vec![0u8; 1024];
    for (i, b) in v.iter_mut().enumerate() {
        *b = (i as u64 ^ entry ^ (ledger << 3)) as u8;
    }
    Bytes::from(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synced_entries_survive_kill9() -> Result<()> {
    let mut bookie = start(&[]).await?;
    let client = connect(&bookie).await?;
    let key = Bytes::from_static(b"writer");
    let acked = Arc::new(Mutex::new(BTreeSet::new()));

    // Four pipelined writers; the bookie is killed while they run.
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let client = client.clone();
        let acked = Arc::clone(&acked);
        let key = key.clone();
        writers.push(tokio::spawn(async move {
            let ledger = 100 + w;
            let mut inflight = futures::stream::FuturesOrdered::new();
            for entry in 0..100_000u64 {
                let c = client.clone();
                let k = key.clone();
                inflight.push_back(async move {
                    c.add(
                        ledger,
                        entry,
                        k,
                        entry as i64 - 1,
                        payload(ledger, entry),
                        false,
                    )
                    .await
                    .map(|()| (ledger, entry))
                });
                if inflight.len() >= 64 {
                    match futures::StreamExt::next(&mut inflight).await {
                        Some(Ok(done)) => {
                            acked.lock().insert(done);
                        }
                        _ => return,
                    }
                }
            }
        }));
    }
    wait_until(WAIT, "a few thousand acknowledged adds", || {
        let n = acked.lock().len();
        async move { n >= 4000 }
    })
    .await?;
    bookie.proc.kill9();
    for w in writers {
        let _ = w.await;
    }
    let acked: Vec<(u64, u64)> = acked.lock().iter().copied().collect();

    bookie.restart().await?;
    let client = connect(&bookie).await?;
    for &(ledger, entry) in &acked {
        let data = client
            .read(ledger, entry)
            .await
            .with_context(|| format!("acknowledged entry {ledger}:{entry} lost"))?;
        assert_eq!(
            data,
            payload(ledger, entry),
            "entry {ledger}:{entry} changed"
        );
    }
    // The writer key survived too: another writer is refused.
    let other = client
        .add(
            100,
            1_000_000,
            Bytes::from_static(b"intruder"),
            -1,
            payload(1, 1),
            false,
        )
        .await;
    assert_eq!(other.unwrap_err().status(), Some(Status::WrongWriter));
    eprintln!(
        "{} acknowledged entries all readable after kill -9",
        acked.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_ledger_refuses_its_old_writer_across_restart() -> Result<()> {
    let mut bookie = start(&[]).await?;
    let c = connect(&bookie).await?;
    let key = Bytes::from_static(b"old-writer");
    for e in 0..10 {
        c.add(7, e, key.clone(), e as i64 - 1, payload(7, e), false)
            .await?;
    }
    let (lac, last) = c.fence(7).await?;
    assert_eq!((lac, last), (8, 9));
    let refused = c.add(7, 10, key.clone(), 9, payload(7, 10), false).await;
    assert_eq!(refused.unwrap_err().status(), Some(Status::Fenced));
    // recovery may still write (it re-replicates the last entries)
    c.add(7, 9, key.clone(), 8, payload(7, 9), true).await?;

    bookie.restart().await?;
    let c = connect(&bookie).await?;
    let refused = c.add(7, 10, key.clone(), 9, payload(7, 10), false).await;
    assert_eq!(
        refused.unwrap_err().status(),
        Some(Status::Fenced),
        "fencing must survive a crash"
    );
    assert_eq!(c.read_lac(7).await?, (8, 9));
    assert_eq!(c.read(7, 3).await?, payload(7, 3));
    let missing = c.read(7, 11).await.unwrap_err();
    assert_eq!(missing.status(), Some(Status::NoSuchEntry));
    let unknown = c.read(99, 0).await.unwrap_err();
    assert_eq!(unknown.status(), Some(Status::NoSuchLedger));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_port_closes_only_that_connection() -> Result<()> {
    let bookie = start(&[]).await?;
    let good = connect(&bookie).await?;
    let key = Bytes::from_static(b"w");
    good.add(1, 0, key.clone(), -1, payload(1, 0), false)
        .await?;

    for garbage in [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        vec![0xff; 64],                                     // absurd length
        [&8u32.to_be_bytes()[..], &[0xde; 8][..]].concat(), // undecodable message
    ] {
        let mut s = tokio::net::TcpStream::connect(bookie.addr).await?;
        s.write_all(&garbage).await?;
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .context("bookie kept a garbage connection open")?;
        assert!(matches!(n, Ok(0) | Err(_)), "garbage got an answer: {n:?}");
    }
    // the well-behaved connection never noticed
    good.add(1, 1, key, 0, payload(1, 1), false).await?;
    assert_eq!(good.read(1, 0).await?, payload(1, 0));
    let big = good
        .add(
            2,
            0,
            Bytes::from_static(b"w"),
            -1,
            Bytes::from(vec![0u8; 6 << 20]),
            false,
        )
        .await;
    assert!(
        matches!(
            &big,
            Err(ClientError::Status {
                status: Status::TooLarge,
                ..
            })
        ),
        "{big:?}"
    );
    let http = bookie.http;
    // counted as each connection ends, which may be a moment after the client saw it close
    wait_until(WAIT, "three bad frames counted", || async move {
        metric_value(http, "bookie_bad_frames_total") == Some(3.0)
    })
    .await?;
    assert_eq!(metric_value(http, "bookie_adds_too_large_total"), Some(1.0));
    Ok(())
}

/// A connection with its limit of requests in flight is not read until one finishes; the
/// waits are counted and every request is still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_are_limited_per_connection() -> Result<()> {
    let bookie = start(&["--max-pending-per-connection", "2"]).await?;
    let c = connect(&bookie).await?;
    let key = Bytes::from_static(b"w");
    let adds = (0..64u64).map(|e| c.add(6, e, key.clone(), e as i64 - 1, payload(6, e), false));
    for r in futures::future::join_all(adds).await {
        r?;
    }
    for e in 0..64 {
        assert_eq!(c.read(6, e).await?, payload(6, e));
    }
    let http = bookie.http;
    let page =
        tokio::task::spawn_blocking(move || magnetar_testkit::http_get(http, "/metrics")).await??;
    assert!(
        page.contains("\nbookie_max_pending_requests_per_connection 2\n"),
        "{page}"
    );
    let throttled = metric_value(http, "bookie_throttled_connections_total").unwrap_or(0.0);
    assert!(
        throttled > 0.0,
        "64 pipelined adds through 2 slots must wait: {page}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_in_the_metadata_store() -> Result<()> {
    let etcd = magnetar_testkit::EtcdServer::start().await?;
    let secret = "data:;base64,c2VjcmV0"; // a cluster's bookie needs one
    let flags = [
        "--meta",
        &etcd.url(),
        "--rack",
        "rack-a",
        "--bookie-auth-secret",
        secret,
    ];
    let bookie = start(&flags).await?;
    let store = magnetar_meta::connect(&etcd.url()).await?;
    let key = format!("/bookies/available/{}", bookie.addr);
    wait_until(WAIT, "the bookie's registration", || async {
        matches!(store.get(&key).await, Ok(Some(_)))
    })
    .await?;
    let rec = store.get(&key).await?.context("registered")?;
    let json: serde_json::Value = serde_json::from_slice(&rec.value)?;
    assert_eq!(json["rack"], "rack-a");
    assert!(rec.owner.is_some(), "registration is ephemeral");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_over_http() -> Result<()> {
    let bookie = start(&[]).await?;
    let c = connect(&bookie).await?;
    for e in 0..10 {
        c.add(
            5,
            e,
            Bytes::from_static(b"w"),
            e as i64 - 1,
            payload(5, e),
            false,
        )
        .await?;
    }
    let http = bookie.http;
    let health =
        tokio::task::spawn_blocking(move || magnetar_testkit::http_get(http, "/health")).await??;
    assert!(
        health.starts_with("HTTP/1.") && health.contains(" 200 "),
        "{health}"
    );
    let metrics =
        tokio::task::spawn_blocking(move || magnetar_testkit::http_get(http, "/metrics")).await??;
    assert!(metrics.contains("\nbookie_adds_total 10\n"), "{metrics}");
    // every add's latency was recorded, and at least one journal sync's
    assert!(
        metrics.contains("\nbookie_add_latency_seconds_bucket{le=\"+Inf\"} 10\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE bookie_journal_sync_latency_seconds histogram"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("\nbookie_journal_sync_latency_seconds_count 0\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE bookie_journal_groups_total counter"),
        "{metrics}"
    );
    // every limit is a knob with its value on the page
    for limit in [
        "bookie_write_cache_limit_bytes",
        "bookie_read_cache_limit_bytes",
        "bookie_max_entry_bytes",
        "bookie_max_pending_requests_per_connection",
    ] {
        assert!(
            metrics.contains(&format!("\n{limit} ")),
            "{limit}: {metrics}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_deleted_while_the_bookie_was_down_is_reclaimed() -> Result<()> {
    let etcd = magnetar_testkit::EtcdServer::start().await?;
    let mut bookie = start(&[
        "--meta",
        &etcd.url(),
        // the test's ledger client connects without the cluster secret
        "--bookie-auth-disabled",
        "true",
        "--gc-interval-secs",
        "1",
        "--flush-interval-ms",
        "100",
        // emptied journal files leave the disk instead of waiting for reuse
        "--journal-spare-files",
        "0",
        // small files
        "--journal-max-size-mb",
        "4",
    ])
    .await?;
    let store = magnetar_meta::connect(&etcd.url()).await?;
    let client = magnetar_bookie::ledger::LedgerClient::new(store, WAIT);
    wait_until(WAIT, "the bookie to register", || {
        let client = client.clone();
        async move { matches!(client.available_bookies().await, Ok(b) if b.len() == 1) }
    })
    .await?;
    let writer = client.create(1, 1, 1).await?;
    let data = Bytes::from(vec![7u8; 4096]);
    for _ in 0..2000 {
        writer.append(data.clone()).await?;
    }
    writer.close().await?;
    let http = bookie.http;
    wait_until(WAIT, "8 MB in the journal", || async move {
        metric_value(http, "bookie_journal_disk_bytes").is_some_and(|b| b > 8e6)
    })
    .await?;
    let full = metric_value(http, "bookie_journal_disk_bytes").unwrap_or(0.0);

    bookie.proc.kill9();
    // The bookie is down: its copy cannot be deleted now, only the record can.
    client.delete(writer.id()).await?;
    bookie.restart().await?;
    let http = bookie.http;
    wait_until(
        WAIT,
        "the orphaned ledger's space to be reclaimed",
        // what stays is the new journal file
        || async move {
            metric_value(http, "bookie_journal_disk_bytes").is_some_and(|b| b < full / 2.0)
        },
    )
    .await?;
    let c = connect(&bookie).await?;
    let gone = c.read(writer.id(), 0).await.unwrap_err();
    assert_eq!(gone.status(), Some(Status::NoSuchLedger));
    Ok(())
}
