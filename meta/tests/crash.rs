//! kill -9 of a process that holds the store (RocksDB) or a session (etcd): acknowledged
//! records survive, ephemeral records of the dead process's sessions go away.
//!
//! The holder is this test binary run again as a child (`holder_child`, ignored unless
//! `MAGNETAR_HOLDER_URL` is set), so the test needs no extra binary.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use magnetar_meta::{Expected, MetaError, MetadataStore, RocksStore};
use magnetar_testkit::{EtcdServer, wait_until};

const HOLDER_ENV: &str = "MAGNETAR_HOLDER_URL";

/// Run by the parent tests only: opens the store, writes a durable and an ephemeral record,
/// prints `READY <version>` and waits to be killed.
#[tokio::test]
#[ignore = "child process of the crash tests"]
async fn holder_child() {
    let Ok(url) = std::env::var(HOLDER_ENV) else {
        return;
    };
    let store = magnetar_meta::connect(&url).await.unwrap();
    let v = store
        .put("/durable", Bytes::from_static(b"kept"), Expected::Absent)
        .await
        .unwrap();
    let session = store.create_session(Duration::from_secs(2)).await.unwrap();
    store
        .put_ephemeral(
            &session,
            "/ephemeral",
            Bytes::from_static(b"mine"),
            Expected::Absent,
        )
        .await
        .unwrap();
    println!("READY {v} {}", session.id());
    tokio::time::sleep(Duration::from_secs(600)).await;
}

struct Holder {
    child: Child,
    version: u64,
    session: i64,
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_holder(url: &str) -> Result<Holder> {
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "holder_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HOLDER_ENV, url)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start holder process")?;
    let stdout = child.stdout.take().context("holder stdout")?;
    // libtest prints `test holder_child ... ` without a newline, so READY may be mid-line.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(i) = line.find("READY ") {
                let _ = tx.send(line[i + "READY ".len()..].to_string());
                break;
            }
        }
    });
    let ready = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(r) => r,
        Err(_) => {
            let _ = child.kill();
            bail!("holder did not get ready within 60 s");
        }
    };
    let mut parts = ready.split_whitespace();
    let version = parts.next().context("version")?.parse()?;
    let session = parts.next().context("session")?.parse()?;
    Ok(Holder {
        child,
        version,
        session,
    })
}

#[tokio::test]
async fn rocksdb_keeps_acknowledged_records_across_kill9() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("meta");
    let mut holder = start_holder(&format!("rocksdb://{}", path.display()))?;
    holder.child.kill()?; // SIGKILL
    holder.child.wait()?;

    let store = RocksStore::open(&path)?;
    let got = store
        .get("/durable")
        .await?
        .context("acknowledged record lost")?;
    assert_eq!(got.value, Bytes::from_static(b"kept"));
    assert_eq!(got.version, holder.version);
    assert!(
        store.get("/ephemeral").await?.is_none(),
        "an ephemeral record outlived the process that owned its session"
    );
    let next = store
        .put(
            "/durable",
            Bytes::from_static(b"new"),
            Expected::Version(holder.version),
        )
        .await?;
    assert!(
        next > holder.version,
        "versions keep increasing across a restart"
    );
    assert!(matches!(
        store.revoke_session(holder.session).await,
        Err(MetaError::SessionLost(_))
    ));
    Ok(())
}

#[tokio::test]
async fn rocksdb_refuses_a_second_open_of_one_directory() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let _first = RocksStore::open(dir.path())?;
    match RocksStore::open(dir.path()) {
        Err(MetaError::Backend(msg)) => assert!(msg.to_lowercase().contains("lock"), "{msg}"),
        other => panic!("a second open must fail clearly, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn etcd_session_of_a_killed_process_expires() -> Result<()> {
    let etcd = EtcdServer::start().await?;
    let mut holder = start_holder(&etcd.url())?;
    let store = magnetar_meta::connect(&etcd.url()).await?;
    let eph = store
        .get("/ephemeral")
        .await?
        .context("ephemeral record written")?;
    assert_eq!(eph.owner, Some(holder.session));

    holder.child.kill()?; // SIGKILL: no revoke, the lease must expire on its own
    holder.child.wait()?;
    wait_until(
        Duration::from_secs(20),
        "the dead holder's lease to expire",
        || async { matches!(store.get("/ephemeral").await, Ok(None)) },
    )
    .await?;
    assert_eq!(
        store
            .get("/durable")
            .await?
            .context("durable record")?
            .version,
        holder.version
    );
    Ok(())
}
