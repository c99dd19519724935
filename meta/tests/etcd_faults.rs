//! etcd killed and restarted under a live client: calls fail with a retriable error while it
//! is down and work again after; a watch resumes without missing a change; a session that
//! cannot be kept alive past its ttl is reported lost, and its records go.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use magnetar_meta::{EventKind, Expected, SessionState};
use magnetar_testkit::{EtcdServer, wait_until};

const WAIT: Duration = Duration::from_secs(30);

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_retriably_while_etcd_is_down_then_recover() -> Result<()> {
    let mut etcd = EtcdServer::start().await?;
    let store = magnetar_meta::connect(&etcd.url()).await?;
    let v = store.put("/r/a", b("1"), Expected::Absent).await?;
    let mut watch = store.watch("/r").await?;

    etcd.kill9();
    let started = Instant::now();
    let err = store.get("/r/a").await.expect_err("etcd is down");
    assert!(err.is_retriable(), "expected a retriable error, got {err}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "a dead etcd must not hang calls"
    );
    let err = store
        .put("/r/b", b("2"), Expected::Any)
        .await
        .expect_err("etcd is down");
    assert!(err.is_retriable(), "expected a retriable error, got {err}");

    etcd.restart().await?;
    wait_until(WAIT, "calls to work again", || async {
        store.get("/r/a").await.is_ok()
    })
    .await?;
    assert_eq!(store.get("/r/a").await?.context("record kept")?.version, v);

    // Changes made right after the restart reach the watch that was open across it.
    let mut versions = Vec::new();
    for i in 0..5 {
        versions.push(
            store
                .put(&format!("/r/k{i}"), b("x"), Expected::Absent)
                .await?,
        );
    }
    for (i, v) in versions.iter().enumerate() {
        let ev = tokio::time::timeout(WAIT, watch.next())
            .await
            .context("watch did not resume")?
            .context("watch ended")??;
        assert_eq!(ev.key, format!("/r/k{i}"));
        assert_eq!(ev.kind, EventKind::Created);
        assert_eq!(ev.version, *v);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_unreachable_past_its_ttl_is_reported_lost() -> Result<()> {
    let mut etcd = EtcdServer::start().await?;
    let store = magnetar_meta::connect(&etcd.url()).await?;
    let session = store.create_session(Duration::from_secs(2)).await?;
    store
        .put_ephemeral(&session, "/s/owner", b("me"), Expected::Absent)
        .await?;
    let mut states = session.subscribe();

    etcd.kill9();
    tokio::time::timeout(WAIT, states.wait_for(|s| *s == SessionState::Suspended))
        .await
        .context("owner was not told the session is suspended")??;
    tokio::time::timeout(WAIT, session.lost())
        .await
        .context("owner was not told the session is lost")?;

    etcd.restart().await?;
    wait_until(WAIT, "the lost session's record to go", || async {
        matches!(store.get("/s/owner").await, Ok(None))
    })
    .await?;
    // a new session works as before
    let fresh = store.create_session(Duration::from_secs(2)).await?;
    store
        .put_ephemeral(&fresh, "/s/owner", b("me again"), Expected::Absent)
        .await?;
    assert_eq!(fresh.state(), SessionState::Alive);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_nothing_is_a_clear_retriable_error() -> Result<()> {
    let port = magnetar_testkit::free_port()?;
    let err = magnetar_meta::connect(&format!("etcd://127.0.0.1:{port}"))
        .await
        .expect_err("nothing listens there");
    assert!(err.is_retriable(), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_member_cluster_survives_the_loss_of_one() -> Result<()> {
    let mut cluster = magnetar_testkit::EtcdCluster::start(3).await?;
    let store = magnetar_meta::connect(&cluster.url()).await?;
    let session = store.create_session(Duration::from_secs(10)).await?;
    store
        .put_ephemeral(&session, "/c/owner", b("me"), Expected::Absent)
        .await?;
    let v = store.put("/c/a", b("1"), Expected::Absent).await?;
    let mut watch = store.watch("/c").await?;

    // Whichever member this is (possibly the leader), two of three keep a quorum.
    cluster.kill9(0);
    let deadline = Instant::now() + WAIT;
    let v2 = loop {
        match store.put("/c/a", b("2"), Expected::Version(v)).await {
            Ok(v2) => break v2,
            Err(e) => {
                assert!(
                    e.is_retriable(),
                    "only retriable errors while electing: {e}"
                );
                assert!(
                    Instant::now() < deadline,
                    "no write succeeded after losing a member"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let ev = tokio::time::timeout(WAIT, watch.next())
        .await
        .context("watch stalled after losing a member")?
        .context("watch ended")??;
    assert_eq!((ev.key.as_str(), ev.version), ("/c/a", v2));
    assert_ne!(
        session.state(),
        SessionState::Lost,
        "a session must ride out one member's loss"
    );
    assert!(store.get("/c/owner").await?.is_some());

    cluster.restart(0).await?;
    assert_eq!(store.get("/c/a").await?.context("record")?.value, b("2"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_are_unique_across_separate_connections() -> Result<()> {
    // Separate connections stand in for separate broker processes.
    let etcd = EtcdServer::start().await?;
    let mut handles = Vec::new();
    for _ in 0..4 {
        let store = magnetar_meta::connect(&etcd.url()).await?;
        handles.push(tokio::spawn(async move {
            let ids = magnetar_meta::IdGenerator::new(store, "/counters/ledger");
            let mut got = Vec::new();
            for _ in 0..20 {
                got.push(ids.next_id().await?);
            }
            Ok::<_, magnetar_meta::MetaError>(got)
        }));
    }
    let mut all = std::collections::BTreeSet::new();
    for h in handles {
        for id in h.await?? {
            assert!(all.insert(id), "id {id} handed out twice");
        }
    }
    assert_eq!(all.len(), 80);
    assert_eq!(all.last(), Some(&80));
    Ok(())
}
