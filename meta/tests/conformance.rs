//! One behaviour suite, run against every backend: memory, RocksDB, a real etcd started from
//! Debian's `etcd-server` on a free loopback port, and the fault-injecting wrapper (around
//! memory, no fault set: it must be the store it wraps). Then the faults themselves.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use magnetar_meta::{
    EventKind, Expected, IdGenerator, MetaError, MetaStore, MetadataStoreExt, Op, RecordCache,
    SessionState, WatchEvent,
};
use magnetar_testkit::{EtcdServer, wait_until};
use serde::{Deserialize, Serialize};

const WAIT: Duration = Duration::from_secs(20);

pub struct Fixture {
    pub store: MetaStore,
    _dir: Option<tempfile::TempDir>,
    _etcd: Option<EtcdServer>,
}

mod fixtures {
    use super::*;

    pub async fn memory() -> Fixture {
        Fixture {
            store: magnetar_meta::connect("memory://").await.unwrap(),
            _dir: None,
            _etcd: None,
        }
    }

    pub async fn rocksdb() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("rocksdb://{}", dir.path().join("meta").display());
        Fixture {
            store: magnetar_meta::connect(&url).await.unwrap(),
            _dir: Some(dir),
            _etcd: None,
        }
    }

    pub async fn faulty() -> Fixture {
        let inner = magnetar_meta::connect("memory://").await.unwrap();
        Fixture {
            store: std::sync::Arc::new(magnetar_meta::FaultyStore::new(inner)),
            _dir: None,
            _etcd: None,
        }
    }

    pub async fn etcd() -> Fixture {
        let etcd = EtcdServer::start().await.unwrap();
        Fixture {
            store: magnetar_meta::connect(&etcd.url()).await.unwrap(),
            _dir: None,
            _etcd: Some(etcd),
        }
    }
}

macro_rules! backend {
    ($backend:ident: $($case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let f = crate::fixtures::$backend().await;
                    crate::cases::$case(&f.store).await.unwrap();
                }
            )*
        }
    };
}

macro_rules! every_backend {
    ($($case:ident),* $(,)?) => {
        backend!(memory: $($case),*);
        backend!(rocksdb: $($case),*);
        backend!(etcd: $($case),*);
        backend!(faulty: $($case),*);
    };
}

every_backend!(
    cas_semantics,
    txn_is_all_or_nothing,
    concurrent_increments_lose_no_update,
    watch_sees_every_change_in_order,
    ephemeral_records_go_with_their_session,
    revoked_session_is_reported_lost,
    one_mib_values_round_trip,
    lists_ten_thousand_children,
    bad_input_is_a_clear_error,
    corrupt_record_is_reported_not_served,
    ids_are_unique_and_increasing,
    record_cache_follows_writes,
);

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn is_bad_version(r: Result<u64, MetaError>) -> bool {
    matches!(r, Err(MetaError::BadVersion { .. }))
}

mod cases {
    use super::*;

    pub async fn cas_semantics(s: &MetaStore) -> Result<()> {
        assert!(s.get("/cas/a").await?.is_none());
        let v1 = s.put("/cas/a", b("one"), Expected::Absent).await?;
        assert!(v1 > 0);
        let got = s.get("/cas/a").await?.context("record exists")?;
        assert_eq!((got.value, got.version, got.owner), (b("one"), v1, None));

        // create-if-absent refuses an existing key and says what it found
        match s.put("/cas/a", b("x"), Expected::Absent).await {
            Err(MetaError::BadVersion { actual, .. }) => assert_eq!(actual, Some(v1)),
            other => panic!("expected BadVersion, got {other:?}"),
        }
        assert!(is_bad_version(
            s.put("/cas/a", b("x"), Expected::Version(v1 + 1000)).await
        ));
        assert!(is_bad_version(
            s.put("/cas/missing", b("x"), Expected::Version(v1)).await
        ));

        let v2 = s.put("/cas/a", b("two"), Expected::Version(v1)).await?;
        assert!(v2 > v1, "versions increase: {v1} then {v2}");
        // the old version is now stale
        assert!(is_bad_version(
            s.put("/cas/a", b("x"), Expected::Version(v1)).await
        ));
        let v3 = s.put("/cas/a", b("three"), Expected::Any).await?;
        assert!(v3 > v2);
        assert_eq!(s.get("/cas/a").await?.context("exists")?.value, b("three"));

        assert!(matches!(
            s.delete("/cas/a", Expected::Version(v2)).await,
            Err(MetaError::BadVersion { .. })
        ));
        s.delete("/cas/a", Expected::Version(v3)).await?;
        assert!(s.get("/cas/a").await?.is_none());
        assert!(matches!(
            s.delete("/cas/a", Expected::Any).await,
            Err(MetaError::NotFound(_))
        ));
        assert!(matches!(
            s.delete("/cas/a", Expected::Version(v3)).await,
            Err(MetaError::NotFound(_))
        ));
        // a deleted key can be created again
        let v4 = s.put("/cas/a", b("again"), Expected::Absent).await?;
        assert!(v4 > v3);
        Ok(())
    }

    pub async fn txn_is_all_or_nothing(s: &MetaStore) -> Result<()> {
        let va = s.put("/txn/a", b("a0"), Expected::Absent).await?;
        let vb = s.put("/txn/b", b("b0"), Expected::Absent).await?;

        // the last condition fails: nothing may change
        let res = s
            .txn(vec![
                Op::put("/txn/a", b("a1"), Expected::Version(va)),
                Op::delete("/txn/b", Expected::Any),
                Op::put("/txn/c", b("c1"), Expected::Version(12345)),
            ])
            .await;
        match res {
            Err(MetaError::BadVersion { key, actual, .. }) => {
                assert_eq!(key, "/txn/c");
                assert_eq!(actual, None);
            }
            other => panic!("expected BadVersion on /txn/c, got {other:?}"),
        }
        assert_eq!(s.get("/txn/a").await?.context("a")?.value, b("a0"));
        assert_eq!(s.get("/txn/b").await?.context("b")?.version, vb);
        assert!(s.get("/txn/c").await?.is_none());

        // all conditions hold: every op applies at one revision
        let versions = s
            .txn(vec![
                Op::put("/txn/a", b("a1"), Expected::Version(va)),
                Op::delete("/txn/b", Expected::Version(vb)),
                Op::put("/txn/c", b("c1"), Expected::Absent),
            ])
            .await?;
        assert_eq!(versions.len(), 3);
        assert!(versions.iter().all(|v| *v == versions[0] && *v > vb));
        assert_eq!(s.get("/txn/a").await?.context("a")?.version, versions[0]);
        assert!(s.get("/txn/b").await?.is_none());
        assert_eq!(s.get("/txn/c").await?.context("c")?.value, b("c1"));

        // the same key twice is refused before anything is sent
        let dup = s
            .txn(vec![
                Op::put("/txn/d", b("1"), Expected::Any),
                Op::put("/txn/d", b("2"), Expected::Any),
            ])
            .await;
        assert!(matches!(dup, Err(MetaError::InvalidArgument(_))), "{dup:?}");
        Ok(())
    }

    pub async fn concurrent_increments_lose_no_update(s: &MetaStore) -> Result<()> {
        const TASKS: u64 = 8;
        const EACH: u64 = 25;
        let mut handles = Vec::new();
        for _ in 0..TASKS {
            let s = s.clone();
            handles.push(tokio::spawn(async move {
                for _ in 0..EACH {
                    s.update_json::<u64, _, MetaError>("/counter", |old| Ok(old.unwrap_or(0) + 1))
                        .await?;
                }
                Ok::<_, MetaError>(())
            }));
        }
        for h in handles {
            h.await??;
        }
        let v = s.get_json::<u64>("/counter").await?.context("counter")?;
        assert_eq!(v.value, TASKS * EACH, "no increment may be lost");
        Ok(())
    }

    pub async fn watch_sees_every_change_in_order(s: &MetaStore) -> Result<()> {
        s.put("/w/before", b("x"), Expected::Absent).await?;
        let mut w = s.watch("/w").await?;
        let start = w.start_revision();

        const TASKS: usize = 4;
        const KEYS: usize = 20;
        let mut handles = Vec::new();
        for t in 0..TASKS {
            let s = s.clone();
            handles.push(tokio::spawn(async move {
                for k in 0..KEYS {
                    let key = format!("/w/t{t}/k{k}");
                    let v = s.put(&key, b("created"), Expected::Absent).await?;
                    let v = s.put(&key, b("modified"), Expected::Version(v)).await?;
                    if k % 2 == 0 {
                        s.delete(&key, Expected::Version(v)).await?;
                    }
                }
                Ok::<_, MetaError>(())
            }));
        }
        // writes beside the watched path are not delivered
        s.put("/wx", b("outside"), Expected::Any).await?;
        s.put("/other/w", b("outside"), Expected::Any).await?;
        for h in handles {
            h.await??;
        }
        s.put("/w/last", b("end"), Expected::Absent).await?;

        let mut events: Vec<WatchEvent> = Vec::new();
        let expected = TASKS * KEYS * 2 + TASKS * KEYS / 2 + 1;
        tokio::time::timeout(WAIT, async {
            while events.len() < expected {
                let ev = w.next().await.context("watch ended early")??;
                events.push(ev);
            }
            Ok::<_, anyhow::Error>(())
        })
        .await
        .with_context(|| format!("only {} of {expected} events arrived", events.len()))??;

        let mut last = start;
        let mut per_key: HashMap<String, Vec<EventKind>> = HashMap::new();
        for ev in &events {
            ensure!(
                ev.version > start,
                "event {ev:?} is not after the watch start {start}"
            );
            ensure!(ev.version >= last, "revisions went backwards at {ev:?}");
            last = ev.version;
            ensure!(
                ev.key.starts_with("/w/"),
                "event outside the watched path: {ev:?}"
            );
            per_key.entry(ev.key.clone()).or_default().push(ev.kind);
        }
        ensure!(
            !per_key.contains_key("/w/before"),
            "a change before the watch was delivered"
        );
        for t in 0..TASKS {
            for k in 0..KEYS {
                let kinds = &per_key[&format!("/w/t{t}/k{k}")];
                let mut want = vec![EventKind::Created, EventKind::Modified];
                if k % 2 == 0 {
                    want.push(EventKind::Deleted);
                }
                assert_eq!(kinds, &want, "events of /w/t{t}/k{k}");
            }
        }
        assert_eq!(events.last().map(|e| e.key.as_str()), Some("/w/last"));
        Ok(())
    }

    pub async fn ephemeral_records_go_with_their_session(s: &MetaStore) -> Result<()> {
        let mut w = s.watch("/owners").await?;
        let session = s.create_session(Duration::from_secs(5)).await?;
        assert_eq!(session.state(), SessionState::Alive);
        let v = s
            .put_ephemeral(
                &session,
                "/owners/bundle-1",
                b("broker-a"),
                Expected::Absent,
            )
            .await?;
        let got = s
            .get("/owners/bundle-1")
            .await?
            .context("ephemeral exists")?;
        assert_eq!(got.owner, Some(session.id()));
        assert_eq!(got.version, v);
        // another party cannot take it while the session lives
        assert!(is_bad_version(
            s.put("/owners/bundle-1", b("broker-b"), Expected::Absent)
                .await
        ));
        // a durable record beside it is untouched by the session's end
        s.put("/owners/durable", b("stays"), Expected::Absent)
            .await?;

        drop(session);
        wait_until(WAIT, "ephemeral record to disappear", || async {
            matches!(s.get("/owners/bundle-1").await, Ok(None))
        })
        .await?;
        assert!(s.get("/owners/durable").await?.is_some());

        let mut kinds = Vec::new();
        while kinds.len() < 3 {
            let ev = tokio::time::timeout(WAIT, w.next())
                .await?
                .context("watch ended")??;
            kinds.push((ev.key, ev.kind));
        }
        assert!(
            kinds.contains(&("/owners/bundle-1".into(), EventKind::Deleted)),
            "{kinds:?}"
        );
        // once gone, the key can be taken by someone else
        s.put("/owners/bundle-1", b("broker-b"), Expected::Absent)
            .await?;
        Ok(())
    }

    pub async fn revoked_session_is_reported_lost(s: &MetaStore) -> Result<()> {
        let session = s.create_session(Duration::from_secs(5)).await?;
        s.put_ephemeral(&session, "/lost/a", b("1"), Expected::Absent)
            .await?;
        // an operator (or the store, on expiry) ends the session behind the owner's back
        s.revoke_session(session.id()).await?;
        tokio::time::timeout(WAIT, session.lost())
            .await
            .context("owner was never told the session is lost")?;
        assert_eq!(session.state(), SessionState::Lost);
        wait_until(WAIT, "records of the lost session to go", || async {
            matches!(s.get("/lost/a").await, Ok(None))
        })
        .await?;
        let again = s
            .put_ephemeral(&session, "/lost/b", b("2"), Expected::Absent)
            .await;
        assert!(
            matches!(again, Err(MetaError::SessionLost(id)) if id == session.id()),
            "a lost session must not take new records: {again:?}"
        );
        Ok(())
    }

    pub async fn one_mib_values_round_trip(s: &MetaStore) -> Result<()> {
        let big: Vec<u8> = (0..magnetar_meta::key::MAX_VALUE_BYTES)
            .map(|i| (i % 251) as u8)
            .collect();
        let v = s
            .put("/big", Bytes::from(big.clone()), Expected::Absent)
            .await?;
        let got = s.get("/big").await?.context("big")?;
        assert_eq!(got.version, v);
        assert!(got.value == big, "1 MiB value changed on the way");

        let too_big = Bytes::from(vec![0u8; magnetar_meta::key::MAX_VALUE_BYTES + 1]);
        match s.put("/big2", too_big, Expected::Any).await {
            Err(MetaError::ValueTooLarge { size, .. }) => {
                assert_eq!(size, magnetar_meta::key::MAX_VALUE_BYTES + 1)
            }
            other => panic!("expected ValueTooLarge, got {other:?}"),
        }
        Ok(())
    }

    pub async fn lists_ten_thousand_children(s: &MetaStore) -> Result<()> {
        let mut expected = BTreeSet::new();
        let mut keys = Vec::new();
        for i in 0..9990 {
            let name = format!("n{i}");
            if i % 10 == 0 {
                // deep keys make a child without a record of its own
                keys.push(format!("/many/{name}/sub/leaf"));
            } else {
                keys.push(format!("/many/{name}"));
            }
            if i % 50 == 0 {
                keys.push(format!("/many/{name}/other"));
            }
            expected.insert(name);
        }
        // names that sort between `n5` and `n5/` must not be skipped
        for i in 0..10 {
            let name = format!("n{i}-x");
            keys.push(format!("/many/{name}"));
            expected.insert(name);
        }
        // neighbours of the listed path
        keys.push("/many-not-a-child".into());
        keys.push("/man".into());
        for chunk in keys.chunks(100) {
            let ops = chunk
                .iter()
                .map(|k| Op::put(k.clone(), b("v"), Expected::Absent))
                .collect();
            s.txn(ops).await?;
        }
        let children = s.children("/many").await?;
        assert_eq!(children.len(), 10_000);
        let want: Vec<String> = expected.into_iter().collect();
        assert!(children == want, "children differ from what was written");
        assert_eq!(s.children("/many/n0").await?, vec!["other", "sub"]);
        assert_eq!(s.children("/many/n0/sub/leaf").await?, Vec::<String>::new());
        assert!(s.children("/").await?.contains(&"many".to_string()));
        Ok(())
    }

    pub async fn bad_input_is_a_clear_error(s: &MetaStore) -> Result<()> {
        for key in ["", "no-slash", "/", "/a/", "/a//b", "/nul\0byte"] {
            let r = s.get(key).await;
            assert!(
                matches!(r, Err(MetaError::InvalidKey { .. })),
                "get {key:?}: {r:?}"
            );
            let r = s.put(key, b("v"), Expected::Any).await;
            assert!(
                matches!(r, Err(MetaError::InvalidKey { .. })),
                "put {key:?}: {r:?}"
            );
        }
        assert!(matches!(
            s.children("rel").await,
            Err(MetaError::InvalidKey { .. })
        ));
        assert!(matches!(
            s.watch("").await,
            Err(MetaError::InvalidKey { .. })
        ));
        assert!(matches!(
            s.txn(vec![]).await,
            Err(MetaError::InvalidArgument(_))
        ));
        assert!(matches!(
            s.delete("/x", Expected::Absent).await,
            Err(MetaError::InvalidArgument(_))
        ));
        assert!(matches!(
            s.create_session(Duration::ZERO).await,
            Err(MetaError::InvalidArgument(_))
        ));
        let ops: Vec<Op> = (0..200)
            .map(|i| Op::put(format!("/many-ops/{i}"), b("v"), Expected::Any))
            .collect();
        assert!(matches!(
            s.txn(ops).await,
            Err(MetaError::InvalidArgument(_))
        ));
        // errors read as sentences
        let msg = s.get("no-slash").await.unwrap_err().to_string();
        assert!(msg.contains("must start with '/'"), "{msg}");
        Ok(())
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Policy {
        ttl_secs: u64,
        name: String,
    }

    pub async fn corrupt_record_is_reported_not_served(s: &MetaStore) -> Result<()> {
        s.put("/policies/bad", b("{not json"), Expected::Absent)
            .await?;
        match s.get_json::<Policy>("/policies/bad").await {
            Err(MetaError::Corrupt { key, .. }) => assert_eq!(key, "/policies/bad"),
            other => panic!("expected Corrupt, got {other:?}"),
        }
        // a read-modify-write must not paper over it
        let r = s
            .update_json::<Policy, _, MetaError>("/policies/bad", |_| {
                Ok(Policy {
                    ttl_secs: 1,
                    name: "x".into(),
                })
            })
            .await;
        assert!(matches!(r, Err(MetaError::Corrupt { .. })), "{r:?}");
        assert_eq!(
            s.get("/policies/bad").await?.context("still there")?.value,
            b("{not json")
        );
        // a well-formed record of the wrong shape is corrupt too
        s.put(
            "/policies/shape",
            b("{\"ttl_secs\":\"ten\"}"),
            Expected::Absent,
        )
        .await?;
        assert!(matches!(
            s.get_json::<Policy>("/policies/shape").await,
            Err(MetaError::Corrupt { .. })
        ));
        Ok(())
    }

    pub async fn ids_are_unique_and_increasing(s: &MetaStore) -> Result<()> {
        let mut handles = Vec::new();
        for _ in 0..4 {
            let ids = IdGenerator::new(s.clone(), "/counters/ledger");
            handles.push(tokio::spawn(async move {
                let mut got = Vec::new();
                for _ in 0..25 {
                    got.push(ids.next_id().await?);
                }
                Ok::<_, MetaError>(got)
            }));
        }
        let mut all = BTreeSet::new();
        for h in handles {
            let got = h.await??;
            assert!(
                got.windows(2).all(|w| w[0] < w[1]),
                "ids of one caller increase: {got:?}"
            );
            for id in got {
                assert!(all.insert(id), "id {id} handed out twice");
            }
        }
        assert_eq!(all.len(), 100);
        assert_eq!(all.first(), Some(&1));
        assert_eq!(all.last(), Some(&100));
        Ok(())
    }

    pub async fn record_cache_follows_writes(s: &MetaStore) -> Result<()> {
        let cache: RecordCache<Policy> = RecordCache::new(s.clone(), "/ns").await?;
        assert!(cache.get("/ns/a").await?.is_none());
        let v1 = s
            .put_json(
                "/ns/a",
                &Policy {
                    ttl_secs: 1,
                    name: "a".into(),
                },
                Expected::Absent,
            )
            .await?;
        wait_until(WAIT, "cache to see the create", || async {
            matches!(cache.get("/ns/a").await, Ok(Some(v)) if v.version == v1)
        })
        .await?;
        let v2 = s
            .put_json(
                "/ns/a",
                &Policy {
                    ttl_secs: 2,
                    name: "a".into(),
                },
                Expected::Version(v1),
            )
            .await?;
        wait_until(WAIT, "cache to see the update", || async {
            matches!(cache.get("/ns/a").await, Ok(Some(v)) if v.version == v2 && v.value.ttl_secs == 2)
        })
        .await?;
        s.delete("/ns/a", Expected::Version(v2)).await?;
        wait_until(WAIT, "cache to see the delete", || async {
            matches!(cache.get("/ns/a").await, Ok(None))
        })
        .await?;
        // outside its path the cache reads through
        s.put_json(
            "/elsewhere",
            &Policy {
                ttl_secs: 3,
                name: "e".into(),
            },
            Expected::Any,
        )
        .await?;
        assert_eq!(
            cache
                .get("/elsewhere")
                .await?
                .context("read through")?
                .value
                .ttl_secs,
            3
        );
        Ok(())
    }
}

/// The faults the wrapper injects, as the components above will meet them.
mod faults {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use magnetar_meta::{Expected, FaultyStore, MetaError, MetaStore, MetadataStoreExt};

    async fn faulty() -> (MetaStore, Arc<magnetar_meta::MetaFaults>) {
        let inner = magnetar_meta::connect("memory://").await.unwrap();
        let s = FaultyStore::new(inner);
        let f = Arc::clone(s.faults());
        (Arc::new(s), f)
    }

    #[tokio::test]
    async fn failed_compare_and_sets_write_nothing_and_plain_writes_pass() {
        let (s, f) = faulty().await;
        f.fail_next_cas(2);
        for _ in 0..2 {
            let r = s
                .put("/a", Bytes::from_static(b"1"), Expected::Absent)
                .await;
            assert!(matches!(&r, Err(e) if e.is_retriable()), "{r:?}");
        }
        assert!(s.get("/a").await.unwrap().is_none(), "nothing written");
        s.put("/a", Bytes::from_static(b"1"), Expected::Absent)
            .await
            .unwrap();
        // an unconditional write is no compare-and-set
        f.fail_next_cas(1);
        s.put("/b", Bytes::from_static(b"1"), Expected::Any)
            .await
            .unwrap();
        assert_eq!(f.injected(), 2);
        f.heal();
        s.put("/c", Bytes::from_static(b"1"), Expected::Absent)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn lost_races_are_retried_by_the_cas_loop() {
        let (s, f) = faulty().await;
        f.conflict_next_cas_under("/counters/", 5);
        // aimed below a prefix: other keys are untouched
        s.put("/other", Bytes::from_static(b"1"), Expected::Absent)
            .await
            .unwrap();
        let v = s
            .update_json::<u64, _, MetaError>("/counters/x", |n| Ok(n.unwrap_or(0) + 1))
            .await
            .unwrap();
        assert_eq!(v.value, 1, "applied once, after five lost races");
        assert_eq!(f.injected(), 5);
    }

    #[tokio::test]
    async fn calls_can_be_delayed() {
        let (s, f) = faulty().await;
        f.delay(Duration::from_millis(50));
        let t = Instant::now();
        s.get("/x").await.unwrap();
        assert!(t.elapsed() >= Duration::from_millis(50));
        f.delay(Duration::ZERO);
    }

    #[tokio::test]
    async fn a_dropped_watch_ends_with_an_error() {
        let (s, f) = faulty().await;
        let mut w = s.watch("/w").await.unwrap();
        s.put("/w/1", Bytes::from_static(b"1"), Expected::Any)
            .await
            .unwrap();
        assert!(w.next().await.unwrap().is_ok());
        f.drop_watches();
        assert!(w.next().await.unwrap().is_err());
        assert!(w.next().await.is_none(), "and then it is over");
        // a new watch works
        let mut w = s.watch("/w").await.unwrap();
        s.put("/w/2", Bytes::from_static(b"1"), Expected::Any)
            .await
            .unwrap();
        assert!(w.next().await.unwrap().is_ok());
    }
}
