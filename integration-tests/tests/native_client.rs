//! Our own Rust client (`magnetar-client`) against `magnetar standalone`, and against the
//! official Python client both ways.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use magnetar_client::admin::{AdminClient, Connection as AdminConn};
use magnetar_client::{
    Client, Compression, DeadLetterPolicy, Error, InitialPosition, Message, MessageId,
    ProducerMessage, SubscriptionType,
};
use magnetar_testkit::{StandaloneProc, python};

mod common;
use common::{bin, script};

async fn run_py(args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new(python()?)
        .arg(script("interop.py"))
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .context("run python")?;
    if !out.status.success() {
        bail!(
            "interop.py {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn unique(name: &str) -> String {
    format!(
        "persistent://public/default/{name}-{:08x}",
        rand::random::<u32>()
    )
}

async fn next(c: &mut magnetar_client::Consumer) -> Message {
    tokio::time::timeout(Duration::from_secs(15), c.receive())
        .await
        .expect("no message within 15 s")
        .expect("receive failed")
}

async fn nothing_within(c: &mut magnetar_client::Consumer, d: Duration) {
    if let Ok(r) = tokio::time::timeout(d, c.receive()).await {
        panic!("unexpected {:?}", r.map(|m| m.id));
    }
}

/// An Exclusive consumer from the start of `topic`.
async fn earliest(
    client: &Client,
    topic: impl Into<String>,
    sub: &str,
) -> magnetar_client::Result<magnetar_client::Consumer> {
    earliest_as(client, topic, sub, SubscriptionType::Exclusive).await
}

/// A consumer of subscription type `kind` from the start of `topic`.
async fn earliest_as(
    client: &Client,
    topic: impl Into<String>,
    sub: &str,
    kind: SubscriptionType,
) -> magnetar_client::Result<magnetar_client::Consumer> {
    client
        .consumer()
        .topic(topic)
        .subscription(sub)
        .subscription_type(kind)
        .initial_position(InitialPosition::Earliest)
        .subscribe()
        .await
}

fn admin(sa: &StandaloneProc) -> AdminClient {
    AdminClient::new(&AdminConn {
        url: sa.web_url(),
        ..Default::default()
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_and_compressed_with_every_codec() -> Result<()> {
    let sa = StandaloneProc::start(bin(), &[]).await?;
    let client = Client::new(sa.service_url())?;
    for codec in [
        Compression::None,
        Compression::Lz4,
        Compression::Zlib,
        Compression::Zstd,
        Compression::Snappy,
    ] {
        let topic = unique("codec");
        let mut consumer = earliest(&client, &topic, "s").await?;
        let producer = client
            .producer(&topic)
            .compression(codec)
            .batch_max_messages(64)
            .batch_max_delay(Duration::from_millis(5))
            .create()
            .await?;
        let mut receipts = Vec::new();
        for i in 0..500u32 {
            let m = ProducerMessage::new(format!("m{i}-{}", "x".repeat(100)))
                .with_key(format!("k{}", i % 5))
                .with_property("i", i.to_string())
                .with_event_time(10_000 + i as u64);
            receipts.push(producer.send_async(m).await?);
        }
        let mut ids = Vec::new();
        for r in receipts {
            ids.push(r.await?);
        }
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "{codec:?}: ids not increasing"
        );
        assert!(
            ids.iter().any(|id| id.batch_index > 0),
            "{codec:?}: nothing was batched"
        );
        for i in 0..500u32 {
            let m = next(&mut consumer).await;
            assert_eq!(m.text(), format!("m{i}-{}", "x".repeat(100)), "{codec:?}");
            assert_eq!(m.key.as_deref(), Some(format!("k{}", i % 5).as_str()));
            assert_eq!(m.property("i"), Some(i.to_string().as_str()));
            assert_eq!(m.event_time, Some(10_000 + i as u64));
            assert_eq!(
                m.id, ids[i as usize],
                "{codec:?}: receipt and delivery ids differ"
            );
            consumer.ack(&m)?;
        }
        producer.close().await?;
        consumer.close().await?;
        // closing sent the grouped acks: nothing is left on the subscription
        let stats = admin(&sa).topic_stats(&topic, false)?;
        assert_eq!(
            stats["subscriptions"]["s"]["msgBacklog"], 0,
            "{codec:?}: {stats}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_nacks_ack_timeout_and_dead_letters() -> Result<()> {
    let sa = StandaloneProc::start(bin(), &[]).await?;
    let client = Client::new(sa.service_url())?;
    let topic = unique("work");
    let producer = client.producer(&topic).create().await?;
    let mut consumer = client
        .consumer()
        .topic(&topic)
        .subscription("workers")
        .subscription_type(SubscriptionType::Shared)
        .initial_position(InitialPosition::Earliest)
        .nack_delay(Duration::from_millis(200))
        .dead_letter(DeadLetterPolicy::new(2))
        .subscribe()
        .await?;
    let mut dlq = earliest(&client, format!("{topic}-workers-DLQ"), "audit").await?;
    producer.send("poison").await?;
    producer.send("good").await?;
    // "poison" is nacked on each delivery: 1 + 2 redeliveries, then the dead-letter topic
    let mut poison_seen = Vec::new();
    let mut good = 0;
    while poison_seen.len() < 3 || good == 0 {
        let m = next(&mut consumer).await;
        if m.text() == "poison" {
            poison_seen.push(m.redelivery_count);
            consumer.nack(&m)?;
        } else {
            good += 1;
            consumer.ack(&m)?;
        }
    }
    assert_eq!(poison_seen, vec![0, 1, 2]);
    let d = next(&mut dlq).await;
    assert_eq!(d.text(), "poison");
    assert_eq!(d.property("REAL_TOPIC"), Some(topic.as_str()));
    assert!(d.property("ORIGIN_MESSAGE_ID").is_some());
    dlq.ack(&d)?;
    nothing_within(&mut consumer, Duration::from_millis(800)).await;
    assert_eq!(good, 1);

    // ack timeout: an unacknowledged message comes back by itself
    let mut slow = client
        .consumer()
        .topic(&topic)
        .subscription("slow")
        .subscription_type(SubscriptionType::Shared)
        .initial_position(InitialPosition::Earliest)
        .ack_timeout(Duration::from_millis(500))
        .subscribe()
        .await?;
    let first = next(&mut slow).await;
    let again = loop {
        let m = next(&mut slow).await;
        if m.id == first.id {
            break m;
        }
        slow.ack(&m)?;
    };
    assert!(again.redelivery_count >= 1);
    slow.ack(&again)?;

    // cumulative acks are refused on Shared, allowed on Exclusive
    assert!(matches!(
        slow.ack_cumulative(&again),
        Err(Error::Invalid(_))
    ));
    let mut excl = client
        .consumer()
        .topic(&topic)
        .subscription("excl")
        .initial_position(InitialPosition::Earliest)
        .ack_group_time(Duration::ZERO)
        .subscribe()
        .await?;
    let _a = next(&mut excl).await;
    let b = next(&mut excl).await;
    excl.ack_cumulative(&b)?;
    excl.close().await?;
    let stats = admin(&sa).topic_stats(&topic, false)?;
    let backlog = &stats["subscriptions"]["excl"]["msgBacklog"];
    assert_eq!(backlog, 0, "cumulative ack left a backlog: {stats}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_key_routing_multi_topic_and_regex() -> Result<()> {
    let sa = StandaloneProc::start(bin(), &[]).await?;
    let client = Client::new(sa.service_url())?;
    let admin = admin(&sa);
    // in a tenant and namespace of its own, made through the admin client
    admin.create_tenant("acme", &["standalone"])?;
    admin.create_namespace("acme/orders")?;
    let topic = "persistent://acme/orders/parts".to_string();
    admin.create_topic(&topic, 3)?;
    assert_eq!(client.partitions(&topic).await?, 3);
    let producer = client.producer(&topic).create().await?;
    assert_eq!(producer.partitions(), 3);
    let mut consumer = earliest(&client, &topic, "all").await?;
    for i in 0..90u32 {
        let key = format!("key-{}", i % 9);
        producer
            .send(ProducerMessage::new(format!("{i}")).with_key(key))
            .await?;
    }
    let mut partition_of: HashMap<String, i32> = HashMap::new();
    let mut got = BTreeSet::new();
    for _ in 0..90 {
        let m = next(&mut consumer).await;
        let p = m.id.partition;
        assert!((0..3).contains(&p), "partition {p}");
        let key = m.key.clone().unwrap();
        assert_eq!(*partition_of.entry(key).or_insert(p), p, "a key moved");
        got.insert(m.text().parse::<u32>()?);
        consumer.ack(&m)?;
    }
    assert_eq!(got.len(), 90);
    let used: BTreeSet<i32> = partition_of.values().copied().collect();
    assert!(used.len() > 1, "keys all went to one partition");

    // a list of topics, and a regex that finds a topic made after it subscribed
    let prefix = format!(
        "persistent://public/default/rx{:06x}",
        rand::random::<u32>() >> 8
    );
    let a = format!("{prefix}-a");
    client.producer(&a).create().await?.send("a").await?;
    let mut listed = client
        .consumer()
        .topics([a.clone(), topic.clone()])
        .subscription("listed")
        .initial_position(InitialPosition::Earliest)
        .subscribe()
        .await?;
    assert_eq!(listed.topics().len(), 4);
    let mut n = 0;
    while n < 91 {
        let m = next(&mut listed).await;
        listed.ack(&m)?;
        n += 1;
    }
    let mut by_regex = client
        .consumer()
        .topic_pattern(format!("{prefix}-.*"))
        .pattern_refresh(Duration::from_millis(300))
        .subscription("rx")
        .initial_position(InitialPosition::Earliest)
        .subscribe()
        .await?;
    assert_eq!(next(&mut by_regex).await.text(), "a");
    let b = format!("{prefix}-b");
    client.producer(&b).create().await?.send("b").await?;
    let m = next(&mut by_regex).await;
    assert_eq!((m.text().as_ref(), &*m.topic), ("b", b.as_str()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_seek_and_know_when_they_are_done() -> Result<()> {
    let sa = StandaloneProc::start(bin(), &[]).await?;
    let client = Client::new(sa.service_url())?;
    let topic = unique("stream");
    let producer = client
        .producer(&topic)
        .batch_max_messages(4)
        .create()
        .await?;
    let mut ids = Vec::new();
    let mut receipts = Vec::new();
    for i in 0..20 {
        receipts.push(producer.send_async(format!("{i}")).await?);
    }
    for r in receipts {
        ids.push(r.await?);
    }
    let mut reader = client
        .reader(&topic)
        .start_message_id(MessageId::EARLIEST)
        .create()
        .await?;
    for i in 0..20 {
        assert!(reader.has_message_available().await?);
        let m = reader.read_next().await?;
        assert_eq!(m.text(), i.to_string());
    }
    assert!(!reader.has_message_available().await?);
    // seek back to message 5 (inside a batch): it and what follows come again
    reader.seek(ids[5]).await?;
    let m = tokio::time::timeout(Duration::from_secs(15), reader.read_next()).await??;
    // the entry is redelivered from its start; the batch indexes before the target are
    // dropped by the client, so delivery resumes exactly at message 5
    assert_eq!(m.text(), "5");
    // by time: everything is older than now + 1 min, nothing is newer
    reader.seek_time(magnetar_client::now_ms() + 60_000).await?;
    assert!(!reader.has_message_available().await?);

    // a reader starting after a given message (exclusive), and one including it
    let mut after = client
        .reader(&topic)
        .start_message_id(ids[9])
        .create()
        .await?;
    assert_eq!(after.read_next().await?.text(), "10");
    let mut from = client
        .reader(&topic)
        .start_message_id(ids[9])
        .start_inclusive(true)
        .create()
        .await?;
    assert_eq!(from.read_next().await?.text(), "9");
    // a reader at the end sees only what comes next
    let mut latest = client.reader(&topic).create().await?;
    assert!(!latest.has_message_available().await?);
    producer.send("new").await?;
    assert_eq!(latest.read_next().await?.text(), "new");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunking_splits_what_is_too_large() -> Result<()> {
    let sa = StandaloneProc::start(bin(), &["--max-message-size", "102400"]).await?;
    let client = Client::new(sa.service_url())?;
    let topic = unique("chunks");
    // incompressible, so LZ4 cannot bring it under the limit and chunking must happen
    let mut x = 0x9e37_79b9u32;
    let big: Vec<u8> = (0..350_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let plain = client.producer(&topic).create().await?;
    match plain.send(big.clone()).await {
        Err(Error::TooLarge { .. }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let mut consumer = client
        .consumer()
        .topic(&topic)
        .subscription("s")
        .initial_position(InitialPosition::Earliest)
        .nack_delay(Duration::from_millis(100))
        .subscribe()
        .await?;
    let chunked = client
        .producer(&topic)
        .chunking(true)
        .compression(Compression::Lz4)
        .create()
        .await?;
    chunked.send(big.clone()).await?;
    chunked.send("small").await?;
    let m = next(&mut consumer).await;
    assert_eq!(m.payload.len(), big.len());
    assert!(m.payload[..] == big[..], "reassembled payload differs");
    assert!(m.chunk_ids().len() >= 4, "{} chunks", m.chunk_ids().len());
    // a nack asks for every chunk again: the message comes back whole
    consumer.nack(&m)?;
    assert_eq!(next(&mut consumer).await.text(), "small");
    let again = next(&mut consumer).await;
    assert!(again.payload[..] == big[..], "redelivered payload differs");
    consumer.ack(&again)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_and_consumers_survive_a_broker_restart() -> Result<()> {
    let mut sa = StandaloneProc::start(bin(), &[]).await?;
    let client = Client::builder(sa.service_url())
        .max_backoff(Duration::from_millis(500))
        .build()?;
    let topic = unique("restart");
    let producer = client
        .producer(&topic)
        .max_pending(10)
        .block_if_queue_full(false)
        .create()
        .await?;
    let mut consumer = earliest(&client, &topic, "s").await?;
    for i in 0..50 {
        producer.send(format!("{i}")).await?;
    }
    sa.kill9();
    // no broker: receipts cannot come, so the pending queue fills and refuses
    let mut pending = Vec::new();
    for i in 50..60 {
        pending.push(producer.send_async(format!("{i}")).await?);
    }
    assert!(matches!(
        producer.send_async("overflow").await,
        Err(Error::QueueFull)
    ));
    sa.restart().await?;
    for p in pending {
        tokio::time::timeout(Duration::from_secs(30), p).await??;
    }
    for i in 60..70 {
        producer.send(format!("{i}")).await?;
    }
    // every acknowledged message arrives (at least once)
    let mut seen = BTreeSet::new();
    while seen.len() < 70 {
        let m = next(&mut consumer).await;
        seen.insert(m.text().parse::<u32>()?);
        consumer.ack(&m)?;
    }
    Ok(())
}

/// The ledger open at a kill -9 comes back with no recorded size (its writer died before
/// recording it). It is measured after the restart — by the first backlog count that reads it,
/// or else by housekeeping — so storage and backlog bytes (and with them size retention and
/// backlog quotas) are what they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_ledger_is_measured_after_a_restart() -> Result<()> {
    let mut sa = StandaloneProc::start(
        bin(),
        &[
            "--housekeeping-interval-secs",
            "1",
            "--default-retention-time-in-minutes",
            "60",
        ],
    )
    .await?;
    // one topic with a subscription (its backlog count reads the ledger), one retained
    // without any (only housekeeping measures it)
    let (subscribed, retained) = (unique("measured"), unique("retained"));
    {
        let client = Client::new(sa.service_url())?;
        let _consumer = earliest(&client, &subscribed, "s").await?;
        for topic in [&subscribed, &retained] {
            let producer = client.producer(topic).create().await?;
            for i in 0..300u32 {
                producer
                    .send(ProducerMessage::new(vec![i as u8; 1000]))
                    .await?;
            }
        }
    }
    let admin = admin(&sa);
    let mut before = Vec::new();
    for topic in [&subscribed, &retained] {
        let stats = admin.topic_stats(topic, false)?;
        assert!(
            stats["storageSize"].as_u64().is_some_and(|s| s >= 300_000),
            "{stats}"
        );
        before.push(stats);
    }
    sa.kill9();
    sa.restart().await?;
    for (topic, before) in [&subscribed, &retained].into_iter().zip(&before) {
        let mut after = serde_json::Value::Null;
        for _ in 0..300 {
            after = admin.topic_stats(topic, false)?;
            if after["storageSize"] == before["storageSize"] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            after["storageSize"], before["storageSize"],
            "{topic}: before {before}\nafter {after}"
        );
    }
    let after = admin.topic_stats(&subscribed, false)?;
    assert_eq!(after["subscriptions"]["s"]["msgBacklog"], 300, "{after}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_with_the_python_client_both_ways() -> Result<()> {
    let sa = StandaloneProc::start(bin(), &[]).await?;
    let url = sa.service_url();
    let client = Client::new(&url)?;
    for (codec, name) in [
        (Compression::Lz4, "lz4"),
        (Compression::Zlib, "zlib"),
        (Compression::Zstd, "zstd"),
        (Compression::Snappy, "snappy"),
    ] {
        // ours -> Python
        let topic = unique(&format!("to-py-{name}"));
        let producer = client
            .producer(&topic)
            .compression(codec)
            .batch_max_messages(25)
            .batch_max_delay(Duration::from_millis(20))
            .create()
            .await?;
        let mut receipts = Vec::new();
        for i in 0..100u32 {
            let m = ProducerMessage::new(format!("rs-{i}"))
                .with_key(format!("k{}", i % 3))
                .with_property("i", i.to_string())
                .with_event_time(5_000 + i as u64);
            receipts.push(producer.send_async(m).await?);
        }
        for r in receipts {
            r.await?;
        }
        let out = run_py(&[&url, "consume", &topic, "100"]).await?;
        // the C++ core logs to stdout too
        let line = out
            .lines()
            .find_map(|l| l.strip_prefix("RESULT "))
            .context("no RESULT line")?;
        let got: Vec<serde_json::Value> = serde_json::from_str(line)?;
        assert_eq!(got.len(), 100);
        for (i, m) in got.iter().enumerate() {
            assert_eq!(m["payload"], format!("rs-{i}"), "{name}");
            assert_eq!(m["key"], format!("k{}", i % 3));
            assert_eq!(m["properties"]["i"], i.to_string());
            assert_eq!(m["event_time"], 5_000 + i as u64);
        }

        // Python -> ours
        let topic = unique(&format!("from-py-{name}"));
        let mut consumer = earliest(&client, &topic, "rs").await?;
        run_py(&[&url, "produce", &topic, "100", name]).await?;
        let mut batched = false;
        for i in 0..100u32 {
            let m = next(&mut consumer).await;
            assert_eq!(m.text(), format!("py-{i}"), "{name}");
            assert_eq!(m.key.as_deref(), Some(format!("k{}", i % 7).as_str()));
            assert_eq!(m.property("i"), Some(i.to_string().as_str()));
            assert_eq!(m.event_time, Some(1000 + i as u64));
            batched |= m.id.batch_index > 0;
            consumer.ack(&m)?;
        }
        assert!(
            batched,
            "{name}: the Python producer's batches did not arrive as batches"
        );
    }
    Ok(())
}

async fn run_tool(name: &str, args: &[&str]) -> Result<(String, String)> {
    let out = tokio::process::Command::new(magnetar_testkit::cli_bin(bin(), name)?)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!(
            "{name} {args:?} failed ({}): {stdout}\n{stderr}",
            out.status
        );
    }
    Ok((stdout, stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn magnetar_client_and_perf_tools() -> Result<()> {
    let sa = StandaloneProc::start(bin(), &[]).await?;
    let url = sa.service_url();
    let web = sa.web_url();
    let topic = unique("tools");
    run_tool(
        "magnetar-client",
        &[
            "-u", &url, "produce", &topic, "-m", "one", "-m", "two", "-n", "3", "-k", "k", "-p",
            "a=b",
        ],
    )
    .await?;
    let (out, _) = run_tool(
        "magnetar-client",
        &[
            "-u",
            &url,
            "consume",
            &topic,
            "-s",
            "s",
            "--earliest",
            "-n",
            "6",
            "--json",
            "--timeout",
            "20s",
        ],
    )
    .await?;
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let payloads: Vec<&str> = lines.iter().filter_map(|l| l["payload"].as_str()).collect();
    assert_eq!(payloads, ["one", "two", "one", "two", "one", "two"]);
    assert!(
        lines
            .iter()
            .all(|l| l["key"] == "k" && l["properties"]["a"] == "b")
    );
    let (out, _) = run_tool("magnetar-client", &["-u", &url, "read", &topic]).await?;
    assert_eq!(out.lines().count(), 6);

    // perf: counts only (timing is never asserted)
    let perf = |args: String| async move {
        let args: Vec<&str> = args.split(' ').collect();
        let (out, _) = run_tool("magnetar-perf", &args).await?;
        let s: serde_json::Value = serde_json::from_str(&out)?;
        anyhow::Ok(s)
    };
    let counted = |s: &serde_json::Value, n: u64| {
        assert_eq!(
            (s["messages"].as_u64(), s["errors"].as_u64()),
            (Some(n), Some(0)),
            "{s}"
        );
    };
    let s = perf(format!(
        "produce -u {url} --web-url {web} {topic} --partitions 0 -n 3000 -d 60s -s 256"
    ))
    .await?;
    counted(&s, 3000);
    assert_eq!(s["bytes"], 3000 * 256);
    let s = perf(format!(
        "consume -u {url} {topic} -S perf --earliest -n 3006 -d 60s"
    ))
    .await?;
    counted(&s, 3006);
    let parts = unique("perf-parts");
    let s = perf(format!(
        "e2e -u {url} --web-url {web} {parts} --partitions 2 -n 2000 -r 4000 -d 60s \
         --compression lz4 -p 2"
    ))
    .await?;
    counted(&s, 2000);
    assert!(s["publish_latency_ms"]["p99"].is_number(), "{s}");
    assert_eq!(Client::new(&url)?.partitions(&parts).await?, 2);
    // bad input is refused with a message, not a panic
    let bad = run_tool(
        "magnetar-perf",
        &["produce", "-u", "http://x", "t", "-n", "1"],
    )
    .await;
    assert!(bad.is_err_and(|e| e.to_string().contains("not a pulsar://")));
    Ok(())
}

/// Runs `magnetar ARGS`; its standard output, trimmed.
fn magnetar(args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(bin()).args(args).output()?;
    if !out.status.success() {
        bail!("{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_refresh_and_tls() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let secret = dir.path().join("secret.key").display().to_string();
    magnetar(&["tokens", "create-secret-key", "--output", &secret])?;
    let token = |expiry: Option<&str>| {
        let mut a = vec![
            "tokens",
            "create",
            "--secret-key",
            &secret,
            "--subject",
            "app",
        ];
        if let Some(e) = expiry {
            a.extend(["--expiry-secs", e]);
        }
        magnetar(&a)
    };
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])?;
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, ck.cert.pem())?;
    std::fs::write(&key, ck.key_pair.serialize_pem())?;
    let tls_port = magnetar_testkit::free_port()?;
    let (cert_s, key_s, tls_s) = (
        cert.display().to_string(),
        key.display().to_string(),
        tls_port.to_string(),
    );
    let sa = StandaloneProc::start(
        bin(),
        &[
            "--authentication-enabled",
            "true",
            "--token-secret-key",
            &secret,
            "--authentication-refresh-check-seconds",
            "1",
            "--tls-cert-file",
            &cert_s,
            "--tls-key-file",
            &key_s,
            "--broker-port-tls",
            &tls_s,
        ],
    )
    .await?;
    let topic = unique("secured");

    // no token: refused with an error, not a hang
    let anon = Client::builder(sa.service_url())
        .operation_timeout(Duration::from_secs(3))
        .build()?;
    let r = anon.producer(&topic).create().await;
    assert!(
        matches!(
            r,
            Err(Error::Auth(_) | Error::Connect { .. } | Error::Server { .. })
        ),
        "{r:?}"
    );

    // a short-lived token in a file: the broker's challenge is answered from the file,
    // rewritten meanwhile, and the same connection keeps working
    let token_file = dir.path().join("app.token");
    std::fs::write(&token_file, token(Some("2"))?)?;
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (file, counter) = (token_file.clone(), std::sync::Arc::clone(&asked));
    let client = Client::builder(sa.service_url())
        .authentication(magnetar_client::Authentication::token_fn(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::fs::read_to_string(&file).map_err(|e| e.to_string())
        }))
        .build()?;
    let producer = client.producer(&topic).create().await?;
    producer.send("before").await?;
    let admin_token = token(None)?;
    let admin = AdminClient::new(&AdminConn {
        url: sa.web_url(),
        token: Some(admin_token.clone()),
        ..Default::default()
    })?;
    let since = |stats: serde_json::Value| stats["publishers"][0]["connectedSince"].clone();
    let before = since(admin.topic_stats(&topic, false)?);
    std::fs::write(&token_file, &admin_token)?;
    // the first token expires and the broker challenges: credentials asked a second time
    magnetar_testkit::wait_until(Duration::from_secs(20), "an auth challenge", || {
        let n = asked.load(std::sync::atomic::Ordering::SeqCst);
        async move { n >= 2 }
    })
    .await?;
    producer.send("after").await?;
    assert!(!before.is_null());
    assert_eq!(
        before,
        since(admin.topic_stats(&topic, false)?),
        "the producer reconnected instead of refreshing its credentials"
    );
    let mut consumer = earliest(&client, &topic, "s").await?;
    assert_eq!(next(&mut consumer).await.text(), "before");
    assert_eq!(next(&mut consumer).await.text(), "after");

    // TLS: trusted certificate works; without one the client says why
    let tls_url = format!("pulsar+ssl://localhost:{tls_port}");
    let tls = Client::builder(&tls_url)
        .token(token(None)?)
        .tls_trust_certs(&cert)
        .build()?;
    tls.producer(&topic).create().await?.send("tls").await?;
    assert_eq!(next(&mut consumer).await.text(), "tls");
    let untrusted = Client::builder(&tls_url)
        .token(token(None)?)
        .operation_timeout(Duration::from_secs(3))
        .build()?;
    let r = untrusted.producer(&topic).create().await;
    assert!(
        matches!(&r, Err(Error::Connect { message, .. }) if message.contains("trusted")),
        "{r:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_topic_and_deduplicated_sequence_ids() -> Result<()> {
    let sa = StandaloneProc::start(bin(), &[]).await?;
    let client = Client::new(sa.service_url())?;

    // reconsume_later: back through the retry topic after the delay, then dead-lettered
    let topic = unique("retry");
    let mut policy = DeadLetterPolicy::new(2);
    policy.retry_enabled = true;
    let mut consumer = client
        .consumer()
        .topic(&topic)
        .subscription("app")
        .subscription_type(SubscriptionType::Shared)
        .initial_position(InitialPosition::Earliest)
        .dead_letter(policy)
        .subscribe()
        .await?;
    assert_eq!(consumer.topics().len(), 2, "{:?}", consumer.topics());
    let mut dlq = earliest(&client, format!("{topic}-app-DLQ"), "audit").await?;
    client
        .producer(&topic)
        .create()
        .await?
        .send("later")
        .await?;
    let mut times = Vec::new();
    for _ in 0..3 {
        let m = next(&mut consumer).await;
        assert_eq!(m.text(), "later");
        times.push(m.property("RECONSUMETIMES").map(str::to_string));
        consumer
            .reconsume_later(&m, Duration::from_millis(200))
            .await?;
    }
    assert_eq!(times, [None, Some("1".into()), Some("2".into())]);
    let d = next(&mut dlq).await;
    assert_eq!(d.text(), "later");
    assert_eq!(d.property("REAL_TOPIC"), Some(topic.as_str()));

    // with deduplication on, a producer that comes back under its name continues after the
    // last stored sequence id, and a re-sent id is not stored twice
    let topic = unique("dedup");
    admin(&sa)
        .call_async(
            "POST",
            "/admin/v2/namespaces/public/default/deduplication".into(),
            Some(serde_json::json!(true)),
        )
        .await?;
    let p = client.producer(&topic).name("writer").create().await?;
    for i in 0..5 {
        p.send(format!("{i}")).await?;
    }
    p.close().await?;
    let p = client.producer(&topic).name("writer").create().await?;
    p.send(ProducerMessage::new("dup").with_sequence_id(3))
        .await?;
    p.send("5").await?;
    let mut r = client
        .reader(&topic)
        .start_message_id(MessageId::EARLIEST)
        .create()
        .await?;
    let mut got = Vec::new();
    while r.has_message_available().await? {
        let m = r.read_next().await?;
        got.push((m.text().into_owned(), m.sequence_id));
    }
    let want: Vec<(String, u64)> = (0..6).map(|i| (i.to_string(), i)).collect();
    assert_eq!(got, want);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_key_shared_and_batch_receive() -> Result<()> {
    let sa = StandaloneProc::start(bin(), &[]).await?;
    let client = Client::new(sa.service_url())?;
    // Key_Shared: two consumers split the keys, each key stays with one of them, in order
    let topic = unique("ks");
    let mut a = earliest_as(&client, &topic, "ks", SubscriptionType::KeyShared).await?;
    let mut b = earliest_as(&client, &topic, "ks", SubscriptionType::KeyShared).await?;
    let p = client.producer(&topic).batching(false).create().await?;
    for i in 0..200u32 {
        p.send(ProducerMessage::new(format!("{i}")).with_key(format!("k{}", i % 10)))
            .await?;
    }
    let mut owner: HashMap<String, usize> = HashMap::new();
    let mut last: HashMap<String, u32> = HashMap::new();
    let mut got = 0;
    while got < 200 {
        let (who, m) = tokio::select! {
            m = a.receive() => (0, m?),
            m = b.receive() => (1, m?),
            _ = tokio::time::sleep(Duration::from_secs(15)) => panic!("only {got} of 200"),
        };
        let key = m.key.clone().unwrap();
        assert_eq!(*owner.entry(key.clone()).or_insert(who), who, "{key} moved");
        let n: u32 = m.text().parse()?;
        assert!(
            last.insert(key, n).is_none_or(|prev| prev < n),
            "out of order"
        );
        if who == 0 {
            a.ack(&m)?
        } else {
            b.ack(&m)?
        }
        got += 1;
    }
    assert_eq!(
        owner.values().collect::<BTreeSet<_>>().len(),
        2,
        "one consumer got every key"
    );

    // Failover: one active consumer gets everything; when it leaves, the other takes over
    let topic = unique("fo");
    let mut first = earliest_as(&client, &topic, "fo", SubscriptionType::Failover).await?;
    let mut second = earliest_as(&client, &topic, "fo", SubscriptionType::Failover).await?;
    let p = client.producer(&topic).create().await?;
    for i in 0..10 {
        p.send(format!("{i}")).await?;
    }
    let (active, mut standby) = tokio::select! {
        m = first.receive() => { let m = m?; first.ack(&m)?; (first, second) }
        m = second.receive() => { let m = m?; second.ack(&m)?; (second, first) }
    };
    let mut active = active;
    for _ in 1..10 {
        let m = next(&mut active).await;
        active.ack(&m)?;
    }
    nothing_within(&mut standby, Duration::from_millis(500)).await;
    active.close().await?;
    p.send("after").await?;
    assert_eq!(next(&mut standby).await.text(), "after");

    // batch receive: up to N, or what came by the timeout
    let topic = unique("br");
    let mut c = earliest(&client, &topic, "br").await?;
    let p = client.producer(&topic).create().await?;
    for i in 0..25 {
        p.send(format!("{i}")).await?;
    }
    let mut seen = 0;
    while seen < 25 {
        let batch = c.batch_receive(10, Duration::from_secs(5)).await?;
        assert!(!batch.is_empty() && batch.len() <= 10, "{}", batch.len());
        seen += batch.len();
        for m in &batch {
            c.ack(m)?;
        }
    }
    assert_eq!(seen, 25);
    assert!(
        c.batch_receive(10, Duration::from_millis(200))
            .await?
            .is_empty()
    );
    Ok(())
}

/// The registered bookies, sorted.
fn bookie_ids(admin: &AdminClient) -> Result<Vec<String>> {
    let all = admin.call("GET", "/admin/v2/bookies/all", None)?;
    let mut bookies: Vec<String> = all["bookies"]
        .as_array()
        .context("bookies")?
        .iter()
        .filter_map(|b| b["bookieId"].as_str().map(str::to_string))
        .collect();
    bookies.sort();
    Ok(bookies)
}

/// The bookies of each of a topic's ledgers, from `internalStats?metadata=true`.
fn ensembles(admin: &AdminClient, topic: &str) -> Result<Vec<BTreeSet<String>>> {
    let path = topic.replace("://", "/");
    let stats = admin.call(
        "GET",
        &format!("/admin/v2/{path}/internalStats?metadata=true"),
        None,
    )?;
    let mut out = Vec::new();
    for l in stats["ledgers"].as_array().context("ledgers")? {
        let meta: serde_json::Value =
            serde_json::from_str(l["metadata"].as_str().context("metadata")?)?;
        let mut bookies = BTreeSet::new();
        for f in meta["fragments"].as_array().context("fragments")? {
            for b in f["bookies"].as_array().context("bookies")? {
                bookies.insert(b.as_str().context("bookie")?.to_string());
            }
        }
        out.push(bookies);
    }
    Ok(out)
}

/// Bookie affinity over three in-process bookies: a namespace given a group keeps its
/// ledgers (and its compacted view) on that group's bookies, other namespaces stay on the
/// shared one, a changed affinity moves a topic's next ledger at its next write, and a
/// group without bookies refuses with a reason the client can retry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookie_affinity_keeps_a_namespace_on_its_bookies() -> Result<()> {
    let sa = StandaloneProc::start(
        bin(),
        &["--bookies", "3", "--housekeeping-interval-secs", "1"],
    )
    .await?;
    let admin = admin(&sa);
    let bookies = bookie_ids(&admin)?;
    assert_eq!(bookies.len(), 3, "{bookies:?}");
    let only = |b: &str| vec![BTreeSet::from([b.to_string()])];
    let rack = |b: &str| format!("/admin/v2/bookies/racks-info/{b}");
    admin.call(
        "POST",
        &format!("{}?group=noisy", rack(&bookies[0])),
        Some(&serde_json::json!({"rack": "/r1", "hostname": "h0"})),
    )?;
    admin.call(
        "POST",
        &format!("{}?group=spare", rack(&bookies[1])),
        Some(&serde_json::json!({"rack": "/r2"})),
    )?;
    let racks = admin.call("GET", "/admin/v2/bookies/racks-info", None)?;
    assert_eq!(racks["noisy"][&bookies[0]]["rack"], "/r1", "{racks}");
    assert_eq!(
        admin.call("GET", &rack(&bookies[1]), None)?,
        serde_json::json!({"rack": "/r2"})
    );

    admin.create_tenant("loud", &["standalone"])?;
    admin.create_namespace("loud/ns")?;
    let affinity = "/admin/v2/namespaces/loud/ns/persistence/bookieAffinity";
    admin.call(
        "POST",
        affinity,
        Some(&serde_json::json!({"bookieAffinityGroupPrimary": "noisy"})),
    )?;
    assert_eq!(
        admin.call("GET", affinity, None)?["bookieAffinityGroupPrimary"],
        "noisy"
    );
    let client = Client::new(sa.service_url())?;
    let loud = "persistent://loud/ns/t";
    let producer = client.producer(loud).create().await?;
    for i in 0..20 {
        producer
            .send(ProducerMessage::new(format!("v{}", i % 5)).with_key(format!("k{}", i % 5)))
            .await?;
    }
    assert_eq!(ensembles(&admin, loud)?, only(&bookies[0]));
    // the compacted view is written to a ledger of the same group
    admin.call("PUT", "/admin/v2/persistent/loud/ns/t/compaction", None)?;
    let mut status = serde_json::Value::Null;
    for _ in 0..200 {
        status = admin.call("GET", "/admin/v2/persistent/loud/ns/t/compaction", None)?;
        if status["status"] != "RUNNING" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status["status"], "SUCCESS", "{status}");
    let stats = admin.call(
        "GET",
        "/admin/v2/persistent/loud/ns/t/internalStats?metadata=true",
        None,
    )?;
    let view: serde_json::Value = serde_json::from_str(
        stats["compactedLedger"]["metadata"]
            .as_str()
            .context("compacted ledger metadata")?,
    )?;
    assert_eq!(
        view["fragments"][0]["bookies"],
        serde_json::json!([bookies[0]]),
        "{stats}"
    );

    // a namespace without affinity: the shared bookie only
    let quiet = unique("quiet");
    client.producer(&quiet).create().await?.send("q").await?;
    assert_eq!(ensembles(&admin, &quiet)?, only(&bookies[2]));

    // a new affinity moves the topic at its next write (housekeeping applies it)
    admin.call(
        "POST",
        affinity,
        Some(&serde_json::json!({"bookieAffinityGroupPrimary": "spare"})),
    )?;
    let mut now = Vec::new();
    for _ in 0..100 {
        producer.send("moving").await?;
        now = ensembles(&admin, loud)?;
        if now.last() == only(&bookies[1]).last() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(now.last(), only(&bookies[1]).last(), "{now:?}");
    assert!(now.iter().all(|e| *e != only(&bookies[2])[0]), "{now:?}");

    // a group with no bookies: refused, saying why (503: bookies may come)
    admin.create_namespace("loud/nowhere")?;
    admin.call(
        "POST",
        "/admin/v2/namespaces/loud/nowhere/persistence/bookieAffinity",
        Some(&serde_json::json!({"bookieAffinityGroupPrimary": "absent"})),
    )?;
    match admin.create_topic("persistent://loud/nowhere/t", 0) {
        Err(magnetar_client::admin::AdminError::Status { status, reason }) => {
            assert_eq!(status, 503, "{reason}");
            assert!(
                reason.contains("0 available in groups [absent]"),
                "{reason}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // bad input and the map's own bookkeeping
    for (method, path, body, want) in [
        ("POST", rack("nonsense"), "{}", 412),
        (
            "POST",
            format!("{}?group=a,b", rack(&bookies[2])),
            "{}",
            412,
        ),
        ("POST", rack(&bookies[2]), "{\"rack\": 5}", 400),
        ("POST", rack(&bookies[2]), "{\"colour\": \"red\"}", 400),
        (
            "POST",
            affinity.to_string(),
            "{\"bookieAffinityGroupPrimary\": \" , \"}",
            412,
        ),
        (
            "POST",
            affinity.to_string(),
            "{\"bookieAffinityGroupPrimary\": \"a/b\"}",
            412,
        ),
    ] {
        let body: serde_json::Value = serde_json::from_str(body)?;
        match admin.call(method, &path, Some(&body)) {
            Err(magnetar_client::admin::AdminError::Status { status, .. }) => {
                assert_eq!(status, want, "{method} {path} {body}")
            }
            other => panic!("{method} {path} {body}: {other:?}"),
        }
    }
    admin.call("DELETE", &rack(&bookies[0]), None)?;
    match admin.call("DELETE", &rack(&bookies[0]), None) {
        Err(magnetar_client::admin::AdminError::Status { status, .. }) => assert_eq!(status, 404),
        other => panic!("second delete: {other:?}"),
    }
    let racks = admin.call("GET", "/admin/v2/bookies/racks-info", None)?;
    assert!(racks.get("noisy").is_none(), "{racks}");
    admin.call("DELETE", affinity, None)?;
    match admin.call("GET", affinity, None) {
        // unset is a 404, as in Pulsar
        Err(magnetar_client::admin::AdminError::Status { status, .. }) => assert_eq!(status, 404),
        other => panic!("affinity after delete: {other:?}"),
    }

    // the broker's default groups (Pulsar's bookkeeperClientIsolationGroups) hold namespaces
    // without an affinity to their bookies, even with an ungrouped one free
    let sa = StandaloneProc::start(
        bin(),
        &[
            "--bookies",
            "2",
            "--bookkeeper-client-isolation-groups",
            "everyone",
        ],
    )
    .await?;
    let admin = self::admin(&sa);
    let bookies = bookie_ids(&admin)?;
    admin.call(
        "POST",
        &format!("{}?group=everyone", rack(&bookies[1])),
        Some(&serde_json::json!({})),
    )?;
    let topic = unique("defaulted");
    admin.create_topic(&topic, 0)?;
    assert_eq!(ensembles(&admin, &topic)?, only(&bookies[1]));
    Ok(())
}

/// The broker's memory stays flat under a consumer that asks for everything and stops
/// reading its socket: dispatch to it pauses once its connection has the limit queued (the
/// rest stays in the log), and producers are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_stops_reading_is_throttled() -> Result<()> {
    use bytes::BytesMut;
    use magnetar_protocol::proto::base_command::Type;
    use magnetar_protocol::proto::command_subscribe::{InitialPosition, SubType};
    use magnetar_protocol::proto::{BaseCommand, CommandFlow, CommandSubscribe};
    use magnetar_protocol::{commands, frame};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let sa = StandaloneProc::start(
        bin(),
        &["--max-outbound-buffer-size-per-connection-in-mb", "1"],
    )
    .await?;
    let topic = unique("stuck");
    // a raw client: CONNECT, SUBSCRIBE, FLOW a million, then it never reads again
    let mut sock = tokio::net::TcpStream::connect(sa.broker).await?;
    let mut out = BytesMut::new();
    frame::encode_command(&commands::connect("stuck-consumer", 20), &mut out);
    frame::encode_command(
        &BaseCommand {
            r#type: Type::Subscribe as i32,
            subscribe: Some(CommandSubscribe {
                topic: topic.clone(),
                subscription: "s".into(),
                sub_type: SubType::Exclusive as i32,
                consumer_id: 1,
                request_id: 1,
                initial_position: Some(InitialPosition::Earliest as i32),
                ..Default::default()
            }),
            ..Default::default()
        },
        &mut out,
    );
    frame::encode_command(
        &BaseCommand {
            r#type: Type::Flow as i32,
            flow: Some(CommandFlow {
                consumer_id: 1,
                message_permits: 1_000_000,
            }),
            ..Default::default()
        },
        &mut out,
    );
    sock.write_all(&out).await?;
    let mut answer = [0u8; 256];
    let _ = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut answer)).await;

    let client = Client::new(sa.service_url())?;
    let producer = client.producer(&topic).batching(false).create().await?;
    let entries = 3_000u32;
    let mut receipts = Vec::new();
    for _ in 0..entries {
        receipts.push(producer.send_async(vec![7u8; 16 << 10]).await?);
    }
    for r in receipts {
        r.await?;
    }
    let web = sa.web;
    let metric = move |name: &'static str| async move {
        tokio::task::spawn_blocking(move || magnetar_testkit::metric_value(web, name))
            .await
            .ok()
            .flatten()
            .unwrap_or(0.0)
    };
    for _ in 0..200 {
        if metric("magnetar_dispatch_throttled_total").await >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(metric("magnetar_dispatch_throttled_total").await >= 1.0);
    // queued for it: the limit plus at most one dispatch pass (100 entries), not the 48 MB
    // produced
    let queued = metric("magnetar_outbound_bytes").await;
    assert!(queued <= (3 << 20) as f64, "{queued} bytes queued");
    let stats = admin(&sa).topic_stats(&topic, false)?;
    let sent = stats["subscriptions"]["s"]["msgOutCounter"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        sent < entries as u64,
        "dispatch paused: {sent} of {entries} sent"
    );
    drop(sock);
    Ok(())
}

/// With a tiny in-flight budget per topic, producers pipelining thousands of messages are
/// paused, not failed: every receipt arrives, in order, and the pauses are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_past_the_publish_budget_are_paused_not_failed() -> Result<()> {
    let sa = StandaloneProc::start(
        bin(),
        &[
            "--max-pending-publish-requests-per-topic",
            "4",
            "--max-message-publish-buffer-size-per-topic-in-mb",
            "1",
        ],
    )
    .await?;
    let client = Client::new(sa.service_url())?;
    let topic = unique("budget");
    let mut consumer = earliest(&client, &topic, "s").await?;
    let mut producers = Vec::new();
    for _ in 0..3 {
        producers.push(client.producer(&topic).batching(false).create().await?);
    }
    let mut receipts = Vec::new();
    for i in 0..600u32 {
        let p = &producers[(i % 3) as usize];
        receipts.push((i % 3, p.send_async(vec![1u8; 64 << 10]).await?));
    }
    let mut last: HashMap<u32, MessageId> = HashMap::new();
    for (p, r) in receipts {
        let id = r.await?;
        if let Some(prev) = last.insert(p, id) {
            assert!(prev < id, "receipts in order per producer");
        }
    }
    for _ in 0..600 {
        let m = next(&mut consumer).await;
        consumer.ack(&m)?;
    }
    let paused = tokio::task::spawn_blocking({
        let web = sa.web;
        move || magnetar_testkit::metric_value(web, "magnetar_publish_paused_total")
    })
    .await?
    .unwrap_or(0.0);
    assert!(paused >= 1.0, "pauses counted: {paused}");
    Ok(())
}
