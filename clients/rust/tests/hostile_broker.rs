//! The client against a broker that misbehaves: garbage, oversized frames, corrupt entries,
//! silence. Every case must end in an error the caller can read, never a panic or a hang.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use magnetar_client::{Client, Error, InitialPosition};
use magnetar_protocol::entry::encode_entry;
use magnetar_protocol::proto::{FeatureFlags, MessageMetadata};
use magnetar_protocol::{BaseCommand, MessageIdData, commands, decode_frame, frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the fake broker does once a client connected.
#[derive(Clone, Copy)]
enum Script {
    /// Bytes that are no frame at all, instead of CONNECTED.
    Garbage,
    /// CONNECTED, then a frame announcing 2 GiB.
    Oversized,
    /// CONNECTED, answers lookups and subscribes, then sends bad entries and one good one.
    BadEntries,
    /// CONNECTED, then never answers anything.
    Silent,
    /// Redirects the first lookup (to itself, authoritative), then serves a producer.
    Redirect,
}

/// Set once a lookup arrived with the authoritative flag of a redirect.
static AUTHORITATIVE_SEEN: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

async fn fake_broker(script: Script) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("pulsar://{}", l.local_addr().unwrap());
    let me = url.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(serve(s, script, me.clone()));
        }
    });
    url
}

async fn write(s: &mut TcpStream, cmd: &BaseCommand, entry: Option<&[u8]>) {
    let mut b = BytesMut::new();
    match entry {
        Some(e) => frame::encode_message(cmd, e, &mut b),
        None => frame::encode_command(cmd, &mut b),
    }
    let _ = s.write_all(&b).await;
}

fn message(consumer_id: u64, entry: u64) -> BaseCommand {
    commands::message(
        consumer_id,
        MessageIdData {
            ledger_id: 1,
            entry_id: entry,
            ..Default::default()
        },
        0,
        Vec::new(),
    )
}

async fn serve(mut s: TcpStream, script: Script, me: String) {
    let mut buf = BytesMut::new();
    loop {
        let f = loop {
            match decode_frame(&mut buf, 1 << 20) {
                Ok(Some(f)) => break f,
                Ok(None) => {}
                Err(_) => return,
            }
            match s.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        let c = f.command;
        if c.connect.is_some() {
            match script {
                Script::Garbage => {
                    let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
                    return;
                }
                _ => {
                    write(
                        &mut s,
                        &commands::connected("fake", 20, 5 << 20, FeatureFlags::default()),
                        None,
                    )
                    .await
                }
            }
            if let Script::Oversized = script {
                let _ = s.write_all(&[0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 1]).await;
            }
            continue;
        }
        if matches!(script, Script::Silent) {
            continue;
        }
        if let Some(p) = c.partition_metadata {
            write(
                &mut s,
                &commands::partitioned_metadata_ok(p.request_id, 0),
                None,
            )
            .await;
        } else if let Some(l) = c.lookup_topic {
            let mut answer = commands::lookup_connect(l.request_id, &me, None);
            if matches!(script, Script::Redirect) {
                if l.authoritative == Some(true) {
                    AUTHORITATIVE_SEEN.store(true, std::sync::atomic::Ordering::SeqCst);
                } else if let Some(r) = answer.lookup_topic_response.as_mut() {
                    r.response = Some(0); // Redirect
                    r.authoritative = Some(true);
                }
            }
            write(&mut s, &answer, None).await;
        } else if let Some(p) = c.producer {
            let ok = commands::producer_success(p.request_id, "fake-1", -1);
            write(&mut s, &ok, None).await;
        } else if let Some(send) = c.send {
            let receipt = commands::send_receipt(
                send.producer_id,
                send.sequence_id,
                None,
                7,
                send.sequence_id,
            );
            write(&mut s, &receipt, None).await;
        } else if let Some(sub) = c.subscribe {
            write(&mut s, &commands::success(sub.request_id), None).await;
            let id = sub.consumer_id;
            let md = MessageMetadata {
                producer_name: "p".into(),
                sequence_id: 0,
                publish_time: 1,
                ..Default::default()
            };
            // 1: checksum broken
            let mut bad = BytesMut::from(&encode_entry(&md, b"payload")[..]);
            let last = bad.len() - 1;
            bad[last] ^= 0xff;
            write(&mut s, &message(id, 0), Some(&bad)).await;
            // 2: claims a batch of 1000 in 3 bytes
            let batch = MessageMetadata {
                num_messages_in_batch: Some(1000),
                ..md.clone()
            };
            write(&mut s, &message(id, 1), Some(&encode_entry(&batch, b"abc"))).await;
            // 3: "compressed" garbage, and a size far past any limit
            let z = MessageMetadata {
                compression: Some(1),
                uncompressed_size: Some(u32::MAX),
                ..md.clone()
            };
            write(&mut s, &message(id, 2), Some(&encode_entry(&z, b"zzzz"))).await;
            let z = MessageMetadata {
                compression: Some(3),
                uncompressed_size: Some(100),
                ..md.clone()
            };
            write(
                &mut s,
                &message(id, 3),
                Some(&encode_entry(&z, b"not zstd")),
            )
            .await;
            // 4: a MESSAGE with no payload at all
            write(&mut s, &message(id, 4), None).await;
            // 5: finally a good one
            write(&mut s, &message(id, 5), Some(&encode_entry(&md, b"good"))).await;
        } else if c.flow.is_some() || c.ack.is_some() || c.ping.is_some() {
            // nothing to say
        } else if let Some(cl) = c.close_consumer {
            write(&mut s, &commands::success(cl.request_id), None).await;
        }
    }
}

fn client(url: &str) -> Client {
    Client::builder(url)
        .operation_timeout(Duration::from_secs(2))
        .connection_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

#[tokio::test]
async fn garbage_instead_of_connected_is_a_connect_error() {
    let url = fake_broker(Script::Garbage).await;
    let r = client(&url).producer("t").create().await;
    assert!(matches!(r, Err(Error::Connect { .. })), "{r:?}");
}

#[tokio::test]
async fn an_oversized_frame_ends_the_connection_with_an_error() {
    let url = fake_broker(Script::Oversized).await;
    let r = tokio::time::timeout(Duration::from_secs(10), client(&url).partitions("t")).await;
    let r = r.expect("no hang");
    assert!(
        matches!(r, Err(Error::Disconnected { .. } | Error::Timeout { .. })),
        "{r:?}"
    );
}

#[tokio::test]
async fn a_silent_broker_times_out() {
    let url = fake_broker(Script::Silent).await;
    let r = tokio::time::timeout(Duration::from_secs(10), client(&url).partitions("t")).await;
    assert!(matches!(r, Ok(Err(Error::Timeout { .. }))), "{r:?}");
}

#[tokio::test]
async fn corrupt_entries_are_reported_and_skipped() {
    let url = fake_broker(Script::BadEntries).await;
    let c = client(&url);
    let mut consumer = c
        .consumer()
        .topic("t")
        .subscription("s")
        .initial_position(InitialPosition::Earliest)
        .subscribe()
        .await
        .unwrap();
    let mut corrupt = 0;
    let good = loop {
        match tokio::time::timeout(Duration::from_secs(10), consumer.receive())
            .await
            .expect("no hang")
        {
            Ok(m) => break m,
            Err(Error::Corrupt { reason, .. }) => {
                assert!(!reason.is_empty());
                corrupt += 1;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    };
    assert_eq!(good.payload, Bytes::from_static(b"good"));
    assert_eq!(corrupt, 5, "checksum, batch, two codecs, missing payload");
    consumer.close().await.unwrap();
}

#[tokio::test]
async fn lookups_follow_redirects_with_the_authoritative_flag() {
    let url = fake_broker(Script::Redirect).await;
    let c = client(&url);
    let p = c.producer("t").create().await.unwrap();
    let id = p.send("x").await.unwrap();
    assert_eq!((id.ledger_id, id.entry_id), (7, 0));
    assert!(AUTHORITATIVE_SEEN.load(std::sync::atomic::Ordering::SeqCst));
}
