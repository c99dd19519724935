//! `magnetar standalone` driven by the Rust `pulsar` crate (6.x): the other client family
//! whose quirks we must meet (protocol v12, no feature flags, per-index batch acks, CRC
//! required on every MESSAGE).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use anyhow::Result;
use futures::StreamExt;
use magnetar_testkit::{StandaloneProc, wait_until};
use pulsar::consumer::InitialPosition;
use pulsar::{Consumer, ConsumerOptions, Pulsar, SubType, TokioExecutor, producer};

mod common;
use common::bin;

async fn client(sa: &StandaloneProc) -> Result<Pulsar<TokioExecutor>> {
    Ok(Pulsar::builder(sa.service_url(), TokioExecutor)
        .build()
        .await?)
}

async fn consumer(
    p: &Pulsar<TokioExecutor>,
    topic: &str,
    sub: &str,
    kind: SubType,
) -> Result<Consumer<Vec<u8>, TokioExecutor>> {
    Ok(p.consumer()
        .with_topic(topic)
        .with_subscription(sub)
        .with_subscription_type(kind)
        .with_options(ConsumerOptions::default().with_initial_position(InitialPosition::Earliest))
        .build()
        .await?)
}

async fn next(c: &mut Consumer<Vec<u8>, TokioExecutor>) -> pulsar::consumer::Message<Vec<u8>> {
    tokio::time::timeout(Duration::from_secs(10), c.next())
        .await
        .expect("no message within 10 s")
        .expect("stream ended")
        .expect("consumer error")
}

async fn nothing_more(c: &mut Consumer<Vec<u8>, TokioExecutor>) {
    if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(800), c.next()).await {
        let m = m.expect("consumer error");
        panic!("unexpected message {:?}", m.message_id());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_consume_preserves_everything() -> Result<()> {
    let sa = StandaloneProc::start(bin(), &[]).await?;
    let p = client(&sa).await?;
    let topic = "persistent://public/default/rust-plain";
    let mut c = consumer(&p, topic, "s", SubType::Exclusive).await?;
    let mut prod = p.producer().with_topic(topic).build().await?;
    for i in 0..10u64 {
        let receipt = prod
            .create_message()
            .with_content(format!("m-{i}").as_bytes())
            .with_key(format!("k{i}"))
            .with_property("i", i.to_string())
            .event_time(1_000 + i)
            .send_non_blocking()
            .await?
            .await?;
        assert_eq!(receipt.sequence_id, i);
    }
    for i in 0..10u64 {
        let m = next(&mut c).await;
        assert_eq!(m.payload.data, format!("m-{i}").into_bytes());
        assert_eq!(m.key(), Some(format!("k{i}")));
        let props = &m.payload.metadata.properties;
        assert_eq!(props.len(), 1);
        assert_eq!(props[0].key, "i");
        assert_eq!(props[0].value, i.to_string());
        assert_eq!(m.payload.metadata.event_time, Some(1_000 + i));
        c.ack(&m).await?;
    }
    nothing_more(&mut c).await;
    // a second exclusive consumer is refused while the first is connected (the crate
    // retries ConsumerBusy, so give up after a while)
    let second = tokio::time::timeout(
        Duration::from_secs(3),
        consumer(&p, topic, "s", SubType::Exclusive),
    )
    .await;
    assert!(
        !matches!(second, Ok(Ok(_))),
        "second exclusive consumer accepted"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_delivered_and_acked_per_index() -> Result<()> {
    let sa = StandaloneProc::start(bin(), &[]).await?;
    let p = client(&sa).await?;
    let topic = "persistent://public/default/rust-batched";
    let mut c = consumer(&p, topic, "s", SubType::Exclusive).await?;
    let mut prod = p
        .producer()
        .with_topic(topic)
        .with_options(producer::ProducerOptions {
            batch_size: Some(10),
            ..Default::default()
        })
        .build()
        .await?;
    let mut receipts = Vec::new();
    for i in 0..25 {
        receipts.push(prod.send_non_blocking(format!("b-{i}").as_bytes()).await?);
    }
    prod.send_batch().await?;
    for r in receipts {
        r.await?;
    }
    // consume 15, ack them: the second batch is acked only partly
    for i in 0..15 {
        let m = next(&mut c).await;
        assert_eq!(m.payload.data, format!("b-{i}").into_bytes());
        c.ack(&m).await?;
    }
    // answered once the cursor holding these acks is durable
    c.close().await?;
    drop(c);
    // The fully acked batch never comes back and nothing unacked is lost. The partly acked
    // batch is redelivered whole with an ack_set marking b-10..b-14 done; this client
    // ignores ack_set, so it sees them again (a Pulsar broker would instead have acked the
    // whole batch on the first index ack and lost b-15..b-19).
    let mut c = consumer(&p, topic, "s", SubType::Exclusive).await?;
    let mut rest = Vec::new();
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(2), c.next()).await {
        rest.push(String::from_utf8(m.payload.data.clone())?);
        c.ack(&m).await?;
    }
    let expected: Vec<String> = (10..25).map(|i| format!("b-{i}")).collect();
    assert_eq!(rest, expected);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_reader_seek_and_redelivery() -> Result<()> {
    let sa = StandaloneProc::start(bin(), &[]).await?;
    let p = client(&sa).await?;
    let topic = "persistent://public/default/rust-shared";
    let mut a = consumer(&p, topic, "shared", SubType::Shared).await?;
    let mut b = consumer(&p, topic, "shared", SubType::Shared).await?;
    let mut prod = p.producer().with_topic(topic).build().await?;
    let mut ids = Vec::new();
    for i in 0..20 {
        let r = prod
            .send_non_blocking(format!("{i}").as_bytes())
            .await?
            .await?;
        ids.push(r.message_id.unwrap());
    }
    let mut seen = Vec::new();
    let mut from = [0, 0];
    while seen.len() < 20 {
        tokio::select! {
            Some(Ok(m)) = a.next() => { seen.push(m.payload.data.clone()); from[0] += 1; a.ack(&m).await?; }
            Some(Ok(m)) = b.next() => { seen.push(m.payload.data.clone()); from[1] += 1; b.ack(&m).await?; }
            _ = tokio::time::sleep(Duration::from_secs(10)) => panic!("shared consumers stalled at {}", seen.len()),
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 20);
    assert!(from[0] > 0 && from[1] > 0, "round robin: {from:?}");

    // redelivery counts grow on nack, on an Exclusive subscription too (Pulsar counts only
    // for Shared), so the client's dead-letter policy fires
    let dlq = "persistent://public/default/rust-shared-nack-DLQ";
    let mut dead = consumer(&p, dlq, "d", SubType::Exclusive).await?;
    let mut n: Consumer<Vec<u8>, TokioExecutor> = p
        .consumer()
        .with_topic(topic)
        .with_subscription("nack")
        .with_subscription_type(SubType::Exclusive)
        .with_options(ConsumerOptions::default().with_initial_position(InitialPosition::Earliest))
        .with_dead_letter_policy(pulsar::consumer::DeadLetterPolicy {
            max_redeliver_count: 2,
            dead_letter_topic: dlq.to_string(),
        })
        .build()
        .await?;
    let mut nacks = 0;
    let dead_letter = loop {
        tokio::select! {
            m = next(&mut n) => {
                if m.payload.data == b"0" {
                    nacks += 1;
                    n.nack(&m).await?;
                } else {
                    n.ack(&m).await?;
                }
            }
            m = next(&mut dead) => break m,
        }
    };
    assert_eq!(
        nacks, 2,
        "delivered once, redelivered once, then dead-lettered"
    );
    let m = dead_letter;
    assert_eq!(
        m.payload.data, b"0",
        "the message reached the dead-letter topic"
    );

    // a reader from a given id (inclusive) and from earliest
    let mut r = p
        .reader()
        .with_topic(topic)
        .with_options(ConsumerOptions {
            start_message_id: Some(ids[5].clone()),
            ..Default::default()
        })
        .into_reader::<Vec<u8>>()
        .await?;
    let m = tokio::time::timeout(Duration::from_secs(10), r.next())
        .await?
        .unwrap()?;
    assert_eq!(m.payload.data, b"5");
    let mut last = consumer(&p, topic, "last", SubType::Exclusive).await?;
    let l = last.get_last_message_id().await?;
    assert_eq!(
        (l[0].ledger_id, l[0].entry_id),
        (ids[19].ledger_id, ids[19].entry_id)
    );
    // seek back to the 10th message by id
    last.seek(None, Some(ids[10].clone()), None, p.clone())
        .await?;
    let m = next(&mut last).await;
    assert!(
        m.payload.data == b"10" || m.payload.data == b"11",
        "{:?}",
        m.payload.data
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_shared_routes_each_key_to_one_consumer_in_order() -> Result<()> {
    let sa = StandaloneProc::start(bin(), &[]).await?;
    let p = client(&sa).await?;
    let topic = "persistent://public/default/rust-key-shared";
    let mut a = consumer(&p, topic, "ks", SubType::KeyShared).await?;
    let mut b = consumer(&p, topic, "ks", SubType::KeyShared).await?;
    let mut prod = p.producer().with_topic(topic).build().await?;
    let (keys, per_key) = (16, 10);
    for seq in 0..per_key {
        for k in 0..keys {
            prod.create_message()
                .with_content(seq.to_string().as_bytes())
                .with_key(format!("key-{k}"))
                .send_non_blocking()
                .await?
                .await?;
        }
    }
    // (consumer, key) -> sequence numbers in arrival order
    let mut got: std::collections::BTreeMap<(char, String), Vec<u32>> = Default::default();
    let mut total = 0;
    while total < keys * per_key {
        let (who, m) = tokio::select! {
            m = next(&mut a) => ('a', m),
            m = next(&mut b) => ('b', m),
        };
        let seq: u32 = String::from_utf8(m.payload.data.clone())?.parse()?;
        got.entry((who, m.key().unwrap())).or_default().push(seq);
        if who == 'a' {
            a.ack(&m).await?;
        } else {
            b.ack(&m).await?;
        }
        total += 1;
    }
    let mut owners = std::collections::HashMap::new();
    for ((who, key), seqs) in &got {
        assert_eq!(seqs, &(0..per_key).collect::<Vec<_>>(), "{key} at {who}");
        assert!(
            owners.insert(key.clone(), *who).is_none(),
            "{key} went to both"
        );
    }
    assert_eq!(owners.len(), keys as usize);
    let used: std::collections::HashSet<char> = owners.values().copied().collect();
    assert_eq!(used.len(), 2, "every key went to one consumer");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_topic_ends_the_stream() -> Result<()> {
    let mut sa = StandaloneProc::start(bin(), &[]).await?;
    let p = client(&sa).await?;
    let topic = "persistent://public/default/rust-terminate";
    let mut c = consumer(&p, topic, "s", SubType::Exclusive).await?;
    let mut prod = p.producer().with_topic(topic).build().await?;
    for i in 0..3 {
        prod.send_non_blocking(format!("t-{i}").as_bytes())
            .await?
            .await?;
    }
    // consumed before the termination: the crate stops taking acks once the stream ends
    for i in 0..3 {
        let m = next(&mut c).await;
        assert_eq!(m.payload.data, format!("t-{i}").into_bytes());
        c.ack(&m).await?;
    }
    let web = sa.web;
    let reply = tokio::task::spawn_blocking(move || {
        magnetar_testkit::http_request(
            web,
            "POST",
            "/admin/v2/persistent/public/default/rust-terminate/terminate",
            "",
        )
    })
    .await??;
    assert!(
        reply.contains("200 OK") && reply.contains("\"entryId\":2"),
        "{reply}"
    );
    // REACHED_END_OF_TOPIC: the crate ends the consumer's stream
    let end = tokio::time::timeout(Duration::from_secs(10), c.next()).await?;
    assert!(end.is_none(), "stream went on after the end of the topic");
    // and publishing is refused
    let sent = async { prod.send_non_blocking(&b"late"[..]).await?.await }.await;
    assert!(sent.is_err(), "publish to a terminated topic succeeded");
    // termination is durable
    drop((c, prod, p));
    sa.restart().await?;
    let p = client(&sa).await?;
    let again = tokio::time::timeout(
        Duration::from_secs(5),
        p.producer().with_topic(topic).build(),
    )
    .await;
    assert!(
        !matches!(again, Ok(Ok(_))),
        "producer admitted after restart"
    );
    let mut c = consumer(&p, topic, "s2", SubType::Exclusive).await?;
    for i in 0..3 {
        assert_eq!(
            next(&mut c).await.payload.data,
            format!("t-{i}").into_bytes()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_exclusive_and_non_persistent_with_the_rust_crate() -> Result<()> {
    let sa = StandaloneProc::start(bin(), &[]).await?;
    let p = client(&sa).await?;
    // delayed delivery on a Shared subscription: the later message waits, the other passes
    let topic = "persistent://public/default/rust-delayed";
    let mut c = consumer(&p, topic, "s", SubType::Shared).await?;
    let mut prod = p.producer().with_topic(topic).build().await?;
    prod.create_message()
        .with_content(&b"later"[..])
        .delay(Duration::from_millis(1500))?
        .send_non_blocking()
        .await?
        .await?;
    prod.send_non_blocking(&b"now"[..]).await?.await?;
    let first = next(&mut c).await;
    assert_eq!(first.payload.data, b"now");
    c.ack(&first).await?;
    let second = next(&mut c).await;
    assert_eq!(second.payload.data, b"later");
    c.ack(&second).await?;

    // an exclusive producer keeps a second one out
    let topic = "persistent://public/default/rust-exclusive";
    let exclusive = || producer::ProducerOptions {
        access_mode: Some(1),
        ..Default::default()
    };
    let mut first = p
        .producer()
        .with_topic(topic)
        .with_options(exclusive())
        .build()
        .await?;
    first.send_non_blocking(&b"x"[..]).await?.await?;
    let second = tokio::time::timeout(
        Duration::from_secs(3),
        p.producer()
            .with_topic(topic)
            .with_options(exclusive())
            .build(),
    )
    .await;
    assert!(
        !matches!(second, Ok(Ok(_))),
        "second exclusive producer admitted"
    );

    // non-persistent: fan-out in memory
    let topic = "non-persistent://public/default/rust-np";
    let mut a = consumer(&p, topic, "a", SubType::Exclusive).await?;
    let mut b = consumer(&p, topic, "b", SubType::Exclusive).await?;
    let mut prod = p.producer().with_topic(topic).build().await?;
    for i in 0..10 {
        prod.send_non_blocking(format!("np-{i}").as_bytes())
            .await?
            .await?;
    }
    for c in [&mut a, &mut b] {
        for i in 0..10 {
            let m = next(c).await;
            assert_eq!(m.payload.data, format!("np-{i}").into_bytes());
            c.ack(&m).await?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_view_with_the_rust_crate_survives_restart() -> Result<()> {
    let mut sa = StandaloneProc::start(bin(), &[]).await?;
    let p = client(&sa).await?;
    let topic = "persistent://public/default/rust-compacted";
    let mut prod = p.producer().with_topic(topic).build().await?;
    for v in 0..3 {
        for k in 0..4 {
            prod.create_message()
                .with_content(format!("k{k}-v{v}").as_bytes())
                .with_key(format!("k{k}"))
                .send_non_blocking()
                .await?
                .await?;
        }
    }
    let web = sa.web;
    let path = "/admin/v2/persistent/public/default/rust-compacted/compaction";
    let put =
        tokio::task::spawn_blocking(move || magnetar_testkit::http_request(web, "PUT", path, ""))
            .await??;
    assert!(put.contains("204"), "{put}");
    wait_until(Duration::from_secs(20), "compaction", || async move {
        magnetar_testkit::http_get(web, path).is_ok_and(|r| r.contains("SUCCESS"))
    })
    .await?;
    drop((prod, p));
    // the view is durable: a restarted broker serves it
    sa.restart().await?;
    let p = client(&sa).await?;
    let compacted = |sub: &'static str, kind: SubType| {
        p.consumer()
            .with_topic(topic)
            .with_subscription(sub)
            .with_subscription_type(kind)
            .with_options(
                ConsumerOptions::default()
                    .with_initial_position(InitialPosition::Earliest)
                    .read_compacted(true),
            )
            .build::<Vec<u8>>()
    };
    let mut c = compacted("view", SubType::Exclusive).await?;
    let mut got = Vec::new();
    for _ in 0..4 {
        let m = next(&mut c).await;
        got.push(String::from_utf8(m.payload.data.clone())?);
        c.ack(&m).await?;
    }
    got.sort();
    assert_eq!(got, ["k0-v2", "k1-v2", "k2-v2", "k3-v2"]);
    nothing_more(&mut c).await;
    // the broker refuses a compacted Shared subscription (this client does not check)
    let shared =
        tokio::time::timeout(Duration::from_secs(3), compacted("sh", SubType::Shared)).await;
    assert!(
        !matches!(shared, Ok(Ok(_))),
        "compacted Shared subscription accepted"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_and_auto_partitioning_with_the_rust_crate() -> Result<()> {
    let sa = StandaloneProc::start(bin(), &[]).await?;
    let web = sa.web;
    let put = |path: &'static str, body: &'static str| async move {
        tokio::task::spawn_blocking(move || magnetar_testkit::http_request(web, "PUT", path, body))
            .await?
    };
    let reply = put(
        "/admin/v2/namespaces/public/rust-policies",
        r#"{"deduplicationEnabled": true,
            "autoTopicCreationOverride": {"allowAutoTopicCreation": true,
              "topicType": "partitioned", "defaultNumPartitions": 2}}"#,
    )
    .await?;
    assert!(reply.contains("204"), "{reply}");
    let p = client(&sa).await?;

    // deduplication: this crate numbers every new producer from 0 again, so a second
    // producer under the same name repeats ids 0..2; those are answered, not stored
    let topic = "persistent://public/rust-policies/dedup-partition-0";
    let send_all = |name: &'static str, bodies: &'static [&'static str]| {
        let p = p.clone();
        async move {
            let mut prod = p
                .producer()
                .with_topic(topic)
                .with_name(name)
                .build()
                .await?;
            for b in bodies {
                prod.send_non_blocking(b.as_bytes()).await?.await?;
            }
            prod.close().await?;
            anyhow::Ok(())
        }
    };
    send_all("same-name", &["m0", "m1", "m2"]).await?;
    send_all("same-name", &["again0", "again1", "again2", "m3"]).await?;
    let mut c = consumer(&p, topic, "s", SubType::Exclusive).await?;
    for want in ["m0", "m1", "m2", "m3"] {
        let m = next(&mut c).await;
        assert_eq!(m.payload.data, want.as_bytes());
        c.ack(&m).await?;
    }
    nothing_more(&mut c).await;

    // auto-creation makes a partitioned topic in this namespace
    let topic = "persistent://public/rust-policies/auto";
    let partitions = p.lookup_partitioned_topic(topic).await?;
    assert_eq!(partitions.len(), 2, "{partitions:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_and_backlog_quota_with_the_rust_crate() -> Result<()> {
    let sa = StandaloneProc::start(bin(), &["--housekeeping-interval-secs", "1"]).await?;
    let web = sa.web;
    let reply = tokio::task::spawn_blocking(move || {
        magnetar_testkit::http_request(
            web,
            "PUT",
            "/admin/v2/namespaces/public/rust-limits",
            r#"{"message_ttl_in_seconds": 1,
                "backlog_quota_map": {"destination_storage":
                  {"limitSize": 4000, "policy": "producer_exception"}}}"#,
        )
    })
    .await??;
    assert!(reply.contains("204"), "{reply}");
    let p = client(&sa).await?;
    let topic = "persistent://public/rust-limits/t";
    let c = consumer(&p, topic, "s", SubType::Exclusive).await?;
    let mut prod = p.producer().with_topic(topic).build().await?;
    for _ in 0..20 {
        prod.send_non_blocking(&[7u8; 500][..]).await?.await?;
    }
    drop(c);
    // over the size quota: a new producer is refused (the crate gives up or keeps trying)
    let refused = tokio::time::timeout(
        Duration::from_secs(3),
        p.producer().with_topic(topic).with_name("second").build(),
    )
    .await;
    assert!(
        !matches!(refused, Ok(Ok(_))),
        "producer admitted over the quota"
    );
    // the TTL expires the backlog, which lifts the quota
    let stats = "/admin/v2/persistent/public/rust-limits/t/stats";
    wait_until(Duration::from_secs(20), "backlog expired", || async move {
        magnetar_testkit::http_get(web, stats).is_ok_and(|s| s.contains("\"msgBacklog\":0"))
    })
    .await?;
    let admitted = p
        .producer()
        .with_topic(topic)
        .with_name("third")
        .build()
        .await;
    assert!(
        admitted.is_ok(),
        "producer still refused after the backlog expired"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_authentication_with_the_rust_crate() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("secret.key");
    let secret = magnetar_broker::auth::create_secret_key();
    std::fs::write(&key, &secret)?;
    let token = magnetar_broker::auth::create_token(
        magnetar_broker::auth::TokenKey::Secret(&secret),
        "rust-app",
        Some(600),
    )?;
    let key = key.display().to_string();
    let sa = StandaloneProc::start(
        bin(),
        &[
            "--authentication-enabled",
            "true",
            "--token-secret-key",
            &key,
        ],
    )
    .await?;
    let p = Pulsar::builder(sa.service_url(), TokioExecutor)
        .with_auth(pulsar::Authentication {
            name: "token".into(),
            data: token.into_bytes(),
        })
        .build()
        .await?;
    let topic = "persistent://public/default/rust-auth";
    let mut c = consumer(&p, topic, "s", SubType::Exclusive).await?;
    let mut prod = p.producer().with_topic(topic).build().await?;
    prod.send_non_blocking(&b"authenticated"[..]).await?.await?;
    assert_eq!(next(&mut c).await.payload.data, b"authenticated");
    // without a token the broker refuses the connection
    let anonymous = tokio::time::timeout(
        Duration::from_secs(5),
        Pulsar::builder(sa.service_url(), TokioExecutor).build(),
    )
    .await;
    assert!(!matches!(anonymous, Ok(Ok(_))), "connected without a token");
    Ok(())
}
