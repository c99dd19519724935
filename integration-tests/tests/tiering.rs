//! Tiered storage end to end: `magnetar standalone` offloads closed ledgers to its local
//! filesystem (the default) and to a real S3 protocol server (`magnetar-s3-server`, s3s
//! over a directory), by threshold and by hand; readers read offloaded data back through the
//! same path, also after kill -9 and restart and after the storage copies were deleted.
//! What landed in the bucket is checked with an S3 client of its own (aws-sdk-s3).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use anyhow::{Context, Result, bail};
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use magnetar_client::admin::{AdminClient, Connection as AdminConn};
use magnetar_client::{Client, MessageId};
use magnetar_testkit::{S3_ACCESS_KEY, S3_SECRET_KEY, S3Proc, StandaloneProc, wait_until};
use serde_json::{Value, json};

mod common;
use common::bin;

const MESSAGES: usize = 5000;
const PER_LEDGER: &str = "500";

fn unique(name: &str) -> (String, String) {
    let local = format!("{name}-{:08x}", rand::random::<u32>());
    (
        format!("persistent://public/default/{local}"),
        format!("/admin/v2/persistent/public/default/{local}"),
    )
}

fn admin(sa: &StandaloneProc) -> AdminClient {
    AdminClient::new(&AdminConn {
        url: sa.web_url(),
        ..Default::default()
    })
    .unwrap()
}

async fn call(
    a: &AdminClient,
    method: &'static str,
    path: &str,
    body: Option<Value>,
) -> Result<Value> {
    a.call_async(method, path.to_string(), body)
        .await
        .with_context(|| format!("{method} {path}"))
}

/// Keeps everything (no subscription holds the data otherwise), offloads every closed
/// ledger, and deletes storage copies `lag_ms` after their offload.
async fn namespace_policies(a: &AdminClient, lag_ms: i64) -> Result<()> {
    let ns = "/admin/v2/namespaces/public/default";
    call(
        a,
        "POST",
        &format!("{ns}/retention"),
        Some(json!({"retentionTimeInMinutes": -1, "retentionSizeInMB": -1})),
    )
    .await?;
    call(a, "PUT", &format!("{ns}/offloadThreshold"), Some(json!(0))).await?;
    call(
        a,
        "PUT",
        &format!("{ns}/offloadDeletionLagMs"),
        Some(json!(lag_ms)),
    )
    .await?;
    Ok(())
}

/// `n` messages `msg-{i}` padded to `size` bytes, one entry each; the last one's id.
async fn produce(
    client: &Client,
    topic: &str,
    from: usize,
    n: usize,
    size: usize,
) -> Result<MessageId> {
    let producer = client
        .producer(topic)
        .batching(false)
        .max_pending(1000)
        .create()
        .await?;
    let mut receipts = Vec::with_capacity(n);
    for i in from..from + n {
        let mut body = format!("msg-{i}-");
        while body.len() < size {
            body.push('x');
        }
        receipts.push(producer.send_async(body).await?);
    }
    let mut last = None;
    for r in receipts {
        last = Some(r.await?);
    }
    producer.close().await?;
    last.context("nothing sent")
}

/// Reads the topic from the earliest message to the end; the message numbers in order.
async fn read_all(client: &Client, topic: &str) -> Result<Vec<usize>> {
    let mut reader = client
        .reader(topic)
        .start_message_id(MessageId::EARLIEST)
        .create()
        .await?;
    let mut out = Vec::new();
    while reader.has_message_available().await? {
        let m = tokio::time::timeout(Duration::from_secs(30), reader.read_next())
            .await
            .context("no message within 30 s")??;
        let text = m.text();
        let n = text
            .strip_prefix("msg-")
            .and_then(|r| r.split('-').next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("unexpected message {text:?}"))?;
        out.push(n);
    }
    Ok(out)
}

fn assert_in_order(got: &[usize], n: usize) {
    assert_eq!(got.len(), n, "messages read back");
    for (i, m) in got.iter().enumerate() {
        assert_eq!(*m, i, "message {i} out of order");
    }
}

/// Offloads everything before `last` (retrying while an automatic run is going) and waits
/// for the run to end; its status.
async fn offload(a: &AdminClient, path: &str, last: MessageId) -> Result<Value> {
    let body = json!({"ledgerId": last.ledger_id, "entryId": last.entry_id, "partitionIndex": -1});
    wait_until(Duration::from_secs(60), "an offload to start", || async {
        match call(a, "PUT", &format!("{path}/offload"), Some(body.clone())).await {
            Ok(_) => true,
            Err(e) if format!("{e:#}").contains("already running") => false,
            Err(e) => panic!("offload refused: {e:#}"),
        }
    })
    .await?;
    wait_offload(a, path).await
}

async fn wait_offload(a: &AdminClient, path: &str) -> Result<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let s = call(a, "GET", &format!("{path}/offload"), None).await?;
        if s["status"] != "RUNNING" {
            return Ok(s);
        }
        if std::time::Instant::now() > deadline {
            bail!("the offload still runs after 120 s: {s}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The topic's ledgers from internalStats: (id, entries, offloaded), the current one last.
async fn ledgers(a: &AdminClient, path: &str) -> Result<Vec<(u64, u64, bool, Value)>> {
    let s = call(
        a,
        "GET",
        &format!("{path}/internalStats?metadata=true"),
        None,
    )
    .await?;
    Ok(s["ledgers"]
        .as_array()
        .context("ledgers")?
        .iter()
        .map(|l| {
            (
                l["ledgerId"].as_u64().unwrap_or(0),
                l["entries"].as_u64().unwrap_or(0),
                l["offloaded"].as_bool().unwrap_or(false),
                l["metadata"].clone(),
            )
        })
        .collect())
}

/// Every ledger but the last (the open one) offloaded, and at least `min` of them.
async fn all_closed_offloaded(a: &AdminClient, path: &str, min: usize) -> Result<usize> {
    let ls = ledgers(a, path).await?;
    let closed: Vec<_> = ls.iter().filter(|l| l.1 > 0).collect();
    let offloaded = closed.iter().filter(|l| l.2).count();
    if offloaded < min || ls[..ls.len() - 1].iter().any(|l| l.1 > 0 && !l.2) {
        bail!("not all closed ledgers offloaded: {ls:?}");
    }
    Ok(offloaded)
}

/// Whether every offloaded ledger's storage copy is gone (its record reads as missing).
async fn storage_copies_gone(a: &AdminClient, path: &str) -> Result<bool> {
    Ok(ledgers(a, path)
        .await?
        .iter()
        .filter(|l| l.2)
        .all(|l| l.3.as_str().is_some_and(|m| m.contains("does not exist"))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standalone_offloads_to_its_disk_and_reads_it_back() -> Result<()> {
    let mut sa = StandaloneProc::start(
        bin(),
        &[
            "--managed-ledger-max-entries-per-ledger",
            PER_LEDGER,
            "--housekeeping-interval-secs",
            "1",
        ],
    )
    .await?;
    let a = admin(&sa);
    namespace_policies(&a, 4000).await?;
    let client = Client::new(sa.service_url())?;
    let (topic, path) = unique("tiered");
    let last = produce(&client, &topic, 0, MESSAGES, 100).await?;
    let status = offload(&a, &path, last).await?;
    assert_eq!(status["status"], "SUCCESS", "{status}");
    assert_eq!(status["lastError"], "");
    let offloaded = all_closed_offloaded(&a, &path, MESSAGES / 500 - 1).await?;
    // the first message still in storage only is in the open ledger
    let ls = ledgers(&a, &path).await?;
    assert_eq!(
        status["firstUnoffloadedMessage"]["ledgerId"].as_u64(),
        Some(ls.last().unwrap().0)
    );
    let objects = walk(&sa.data_dir().join("offload"))?;
    assert_eq!(
        objects.len(),
        2 * offloaded,
        "a data and an index object per ledger: {objects:?}"
    );
    let stats = call(&a, "GET", &format!("{path}/stats"), None).await?;
    assert!(
        stats["offloadedStorageSize"].as_u64().unwrap_or(0) > 0,
        "{stats}"
    );
    assert_in_order(&read_all(&client, &topic).await?, MESSAGES);

    // kill -9 and restart: the record says where each ledger is, and reads go there
    drop(client);
    sa.kill9();
    sa.restart().await?;
    let client = Client::new(sa.service_url())?;
    assert_in_order(&read_all(&client, &topic).await?, MESSAGES);

    // after the deletion lag the storage copies go, and the tier serves alone
    wait_until(
        Duration::from_secs(60),
        "storage copies deleted after the lag",
        || async { storage_copies_gone(&a, &path).await.unwrap_or(false) },
    )
    .await?;
    assert_in_order(&read_all(&client, &topic).await?, MESSAGES);
    let metrics = call(&a, "GET", "/metrics", None).await?;
    let metrics = metrics.as_str().unwrap_or_default();
    assert!(
        metrics.contains("magnetar_tiered_read_bytes_total"),
        "{metrics}"
    );

    // deleting the topic deletes its objects
    call(&a, "DELETE", &format!("{path}?force=true"), None).await?;
    assert!(walk(&sa.data_dir().join("offload"))?.is_empty());
    Ok(())
}

/// Files under `dir`, recursively (none if it does not exist).
fn walk(dir: &std::path::Path) -> Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let p = e?.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    Ok(out)
}

fn s3_client(s3: &S3Proc) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(s3.endpoint())
        .force_path_style(true)
        .credentials_provider(Credentials::new(
            S3_ACCESS_KEY,
            S3_SECRET_KEY,
            None,
            None,
            "test",
        ))
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Keys and sizes of the bucket's objects under `prefix`.
async fn objects(s3: &aws_sdk_s3::Client, prefix: &str) -> Result<Vec<(String, i64)>> {
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let page = s3
            .list_objects_v2()
            .bucket("tier")
            .prefix(prefix)
            .set_continuation_token(token)
            .send()
            .await
            .context("list objects")?;
        for o in page.contents() {
            out.push((
                o.key().unwrap_or_default().to_string(),
                o.size().unwrap_or(0),
            ));
        }
        match page.next_continuation_token() {
            Some(t) => token = Some(t.to_string()),
            None => return Ok(out),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offload_to_an_s3_server_survives_crashes_and_outages() -> Result<()> {
    let mut s3 = S3Proc::start(bin(), &["tier"]).await?;
    let endpoint = s3.endpoint();
    let mut sa = StandaloneProc::start_env(
        bin(),
        &[
            "--managed-ledger-max-entries-per-ledger",
            PER_LEDGER,
            "--housekeeping-interval-secs",
            "1",
            "--managed-ledger-offload-driver",
            "aws-s3",
            "--s3-managed-ledger-offload-bucket",
            "tier",
            "--s3-managed-ledger-offload-region",
            "us-east-1",
            "--s3-managed-ledger-offload-service-endpoint",
            &endpoint,
            // small blocks: many ranged reads
            "--s3-managed-ledger-offload-read-buffer-size-in-bytes",
            "65536",
        ],
        &s3.env(),
    )
    .await?;
    let a = admin(&sa);
    namespace_policies(&a, 3_600_000).await?;
    let client = Client::new(sa.service_url())?;
    let (topic, path) = unique("s3");
    let prefix = format!(
        "public/default/persistent/{}",
        topic.rsplit('/').next().unwrap()
    );
    let bucket = s3_client(&s3);

    // big enough that the threshold's runs are still going when the broker is killed
    let last = produce(&client, &topic, 0, MESSAGES, 2000).await?;
    wait_until(Duration::from_secs(60), "an offload under way", || async {
        !objects(&bucket, &prefix)
            .await
            .unwrap_or_default()
            .is_empty()
    })
    .await?;
    drop(client);
    sa.kill9();
    // an orphan as a crash between writing and recording leaves one
    bucket
        .put_object()
        .bucket("tier")
        .key(format!("{prefix}/3-{:032x}", 7u128))
        .body(aws_sdk_s3::primitives::ByteStream::from_static(
            b"half a segment",
        ))
        .send()
        .await
        .context("plant an orphan")?;
    sa.restart().await?;
    let client = Client::new(sa.service_url())?;
    let status = offload(&a, &path, last).await?;
    assert_eq!(status["status"], "SUCCESS", "{status}");
    let offloaded = all_closed_offloaded(&a, &path, MESSAGES / 500 - 1).await?;
    let objs = objects(&bucket, &prefix).await?;
    assert_eq!(
        objs.len(),
        2 * offloaded,
        "one data and one index object per offloaded ledger, no orphan: {objs:?}"
    );
    assert!(objs.iter().all(|(_, size)| *size > 0));
    assert_in_order(&read_all(&client, &topic).await?, MESSAGES);

    // the S3 server down: offloads fail with a clear error, reads of what is still in
    // storage go on, and the offloader tries again once the server is back
    s3.kill9();
    let last = produce(&client, &topic, MESSAGES, 1000, 2000).await?;
    let status = offload(&a, &path, last).await?;
    assert_eq!(status["status"], "ERROR", "{status}");
    let error = status["lastError"].as_str().unwrap_or_default();
    assert!(!error.is_empty(), "{status}");
    let mut recent = client
        .reader(&topic)
        .start_message_id(last)
        .start_inclusive(true)
        .create()
        .await?;
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(30), recent.read_next())
            .await??
            .text()
            .split('-')
            .nth(1),
        Some("5999")
    );
    s3.restart().await?;
    wait_until(
        Duration::from_secs(120),
        "the offload retried after the outage",
        || async { all_closed_offloaded(&a, &path, 11).await.is_ok() },
    )
    .await?;
    let status = wait_offload(&a, &path).await?;
    assert_eq!(status["status"], "SUCCESS", "{status}");
    assert_in_order(&read_all(&client, &topic).await?, MESSAGES + 1000);

    // deleting the topic deletes its objects from the bucket
    drop(client);
    call(&a, "DELETE", &format!("{path}?force=true"), None).await?;
    assert_eq!(objects(&bucket, &prefix).await?, vec![]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offload_policies_and_bad_requests_answer_as_pulsar() -> Result<()> {
    let sa = StandaloneProc::start(bin(), &[]).await?;
    let a = admin(&sa);
    let ns = "/admin/v2/namespaces/public/default";
    // a policy naming a driver without its bucket is refused with the reason
    let e = call(
        &a,
        "POST",
        &format!("{ns}/offloadPolicies"),
        Some(json!({"managedLedgerOffloadDriver": "aws-s3"})),
    )
    .await
    .unwrap_err();
    assert!(format!("{e:#}").contains("bucket"), "{e:#}");
    let e = call(
        &a,
        "POST",
        &format!("{ns}/offloadPolicies"),
        Some(json!({"managedLedgerOffloadDriver": "tape"})),
    )
    .await
    .unwrap_err();
    assert!(format!("{e:#}").contains("412"), "{e:#}");
    let p = json!({"managedLedgerOffloadDriver": "filesystem", "managedLedgerOffloadThresholdInBytes": 10});
    call(
        &a,
        "POST",
        &format!("{ns}/offloadPolicies"),
        Some(p.clone()),
    )
    .await?;
    assert_eq!(
        call(&a, "GET", &format!("{ns}/offloadPolicies"), None).await?,
        p
    );
    // the threshold set alone updates the policies' too (the last one set holds)
    call(&a, "PUT", &format!("{ns}/offloadThreshold"), Some(json!(0))).await?;
    let got = call(&a, "GET", &format!("{ns}/offloadPolicies"), None).await?;
    assert_eq!(got["managedLedgerOffloadThresholdInBytes"], 0);
    call(&a, "DELETE", &format!("{ns}/removeOffloadPolicies"), None).await?;
    assert_eq!(
        call(&a, "GET", &format!("{ns}/offloadPolicies"), None).await?,
        Value::Null
    );

    // a topic's status before any run, a bad body, an unknown topic
    let client = Client::new(sa.service_url())?;
    let (topic, path) = unique("policies");
    produce(&client, &topic, 0, 3, 10).await?;
    let s = call(&a, "GET", &format!("{path}/offload"), None).await?;
    assert_eq!(s["status"], "NOT_RUN", "{s}");
    let e = call(
        &a,
        "PUT",
        &format!("{path}/offload"),
        Some(json!({"ledgerId": "x"})),
    )
    .await
    .unwrap_err();
    assert!(format!("{e:#}").contains("400"), "{e:#}");
    let e = call(
        &a,
        "GET",
        "/admin/v2/persistent/public/default/no-such-topic-x/offload",
        None,
    )
    .await
    .unwrap_err();
    assert!(format!("{e:#}").contains("404"), "{e:#}");
    // topic-level policies
    let tp = json!({"managedLedgerOffloadDriver": "filesystem"});
    call(
        &a,
        "POST",
        &format!("{path}/offloadPolicies"),
        Some(tp.clone()),
    )
    .await?;
    assert_eq!(
        call(&a, "GET", &format!("{path}/offloadPolicies"), None).await?,
        tp
    );
    call(&a, "DELETE", &format!("{path}/offloadPolicies"), None).await?;
    // a manual offload of a topic whose ledgers are all open offloads nothing, successfully
    call(&a, "PUT", &format!("{path}/offload"), None).await?;
    let s = wait_offload(&a, &path).await?;
    assert_eq!(s["status"], "SUCCESS", "{s}");
    Ok(())
}
