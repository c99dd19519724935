//! Topic stats and internal stats in Pulsar's field names (the admin API's and /metrics'
//! source).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use crate::topic::Topic;

pub(super) fn avg((msgs, bytes): (u64, u64)) -> f64 {
    if msgs > 0 {
        bytes as f64 / msgs as f64
    } else {
        0.0
    }
}

pub(super) async fn topic_stats(topic: &Topic) -> Value {
    let (_, storage) = topic.ml.totals();
    let (msg_in, bytes_in) = topic.input.totals();
    let rates = topic.rates();
    let publishers: Vec<Value> = topic
        .producers
        .lock()
        .by_name
        .values()
        .map(|p| {
            json!({
                "producerName": p.name,
                "producerId": p.producer_id,
                "address": p.address,
                "connectedSince": p.connected_since,
                "msgInCounter": p.meter.totals().0,
                "bytesInCounter": p.meter.totals().1,
                "accessMode": p.access_mode.as_str_name(),
                "msgRateIn": p.meter.rates().0,
                "msgThroughputIn": p.meter.rates().1,
                "averageMsgSize": avg(p.meter.totals()),
            })
        })
        .collect();
    let subs: Vec<_> = topic.subscriptions.lock().values().cloned().collect();
    let mut subscriptions = serde_json::Map::new();
    let mut out_msgs = 0;
    let mut out_bytes = 0;
    for s in subs {
        let backlog = s.backlog().await;
        let (msg_out, bytes_out) = s.out.totals();
        let (held, locked, hung) = s.key_shared_stats();
        let (delayed, delayed_segments) = s.delayed_entries();
        let (rate_out, throughput_out) = s.out.rates();
        out_msgs += msg_out;
        out_bytes += bytes_out;
        let consumers: Vec<Value> = s
            .consumers()
            .iter()
            .map(|c| {
                let (permits, unacked) = s.consumer_counts(c);
                json!({
                    "consumerName": c.name,
                    "availablePermits": permits,
                    "unackedMessages": unacked.max(0),
                    "msgOutCounter": c.out.totals().0,
                    "bytesOutCounter": c.out.totals().1,
                    "address": c.address,
                    "connectedSince": c.connected_since,
                    "msgRateOut": c.out.rates().0,
                    "msgThroughputOut": c.out.rates().1,
                    "messageAckRate": c.acks.rates().0,
                    "blockedConsumerOnUnackedMsgs": false,
                })
            })
            .collect();
        subscriptions.insert(
            s.name.clone(),
            json!({
                "msgBacklog": backlog,
                "type": format!("{:?}", s.sub_type()).replace("KeyShared", "Key_Shared"),
                "isDurable": s.cursor.is_durable(),
                "msgOutCounter": msg_out,
                "bytesOutCounter": bytes_out,
                "msgRateOut": rate_out,
                "msgThroughputOut": throughput_out,
                "msgRateRedeliver": s.redelivered.rates().0,
                "msgDelayed": delayed,
                "delayedIndexSegments": delayed_segments,
                "keySharedHeldEntries": held,
                "keySharedLockedSlots": locked,
                "keySharedHungConsumers": hung,
                "redeliveryQueue": s.redelivery_queue(),
                "unackedMessages": s.pending_entries(),
                "consumers": consumers,
            }),
        );
    }
    json!({
        "msgRateIn": rates.0,
        "msgThroughputIn": rates.1,
        "msgRateOut": rates.2,
        "msgThroughputOut": rates.3,
        "msgInCounter": msg_in,
        "bytesInCounter": bytes_in,
        "msgOutCounter": out_msgs,
        "bytesOutCounter": out_bytes,
        "averageMsgSize": avg((msg_in, bytes_in)),
        "storageSize": storage,
        "offloadedStorageSize": magnetar_tiering::offloader::offloaded_bytes(&topic.ml.ledgers()),
        "backlogSize": 0,
        "publishers": publishers,
        // not in Pulsar's stats: WaitForExclusive producers queued for the topic
        "waitingProducers": topic.producers.lock().waiting(),
        "subscriptions": subscriptions,
        "replication": {},
        "deduplicationStatus": if topic.deduplicating() { "Enabled" } else { "Disabled" },
    })
}

/// A topic's storage view with Pulsar's field names: ledgers and cursors.
pub(super) fn topic_internal_stats(topic: &Topic) -> Value {
    let ml = &topic.ml;
    let (entries, size) = ml.totals();
    let ledgers = ml.ledgers();
    let current = ml.current_ledger();
    let cur = ledgers.iter().find(|l| Some(l.ledger_id) == current);
    let subs: Vec<_> = topic.subscriptions.lock().values().cloned().collect();
    let mut cursors = BTreeMap::new();
    for s in subs {
        let md = s.cursor.mark_delete();
        let ranges = s.cursor.individually_acked_ranges();
        let text: Vec<String> = ranges
            .iter()
            .map(|(a, b)| format!("({}:{}..{}:{}]", a.ledger, a.entry - 1, b.ledger, b.entry))
            .collect();
        cursors.insert(
            s.name.clone(),
            json!({
                "markDeletePosition": md.to_string(),
                "readPosition": ml.next_position(md).unwrap_or(md.next_in_ledger()).to_string(),
                "individuallyDeletedMessages": format!("[{}]", text.join(", ")),
                "totalNonContiguousDeletedMessagesRange": ranges.len(),
                "cursorLedger": -1,
                "state": "Open",
                "active": !s.consumers().is_empty(),
            }),
        );
    }
    json!({
        "entriesAddedCounter": ml.stats().entries_added.load(Ordering::Relaxed),
        "numberOfEntries": entries,
        "totalSize": size,
        "currentLedgerEntries": cur.map_or(0, |l| l.entries),
        "currentLedgerSize": cur.map_or(0, |l| l.size),
        "lastLedgerCreatedTimestamp": cur.map_or(0, |l| l.timestamp_ms).to_string(),
        "lastConfirmedEntry": ml.last_confirmed().to_string(),
        "state": "LedgerOpened",
        "ledgers": ledgers.iter().map(|l| json!({
            "ledgerId": l.ledger_id,
            "entries": l.entries,
            "size": l.size,
            "offloaded": l.offload.is_some(),
            "underReplicated": false,
        })).collect::<Vec<_>>(),
        "cursors": cursors,
        "compactedLedger": match topic.compacted_ledger() {
            Some((id, entries)) => json!({
                "ledgerId": id, "entries": entries, "size": -1, "offloaded": false,
            }),
            None => json!({"ledgerId": -1, "entries": -1, "size": -1, "offloaded": false}),
        },
    })
}
