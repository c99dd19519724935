"""Key_Shared semantics against a running Magnetar, with the official Python client.

Usage: key_shared.py SERVICE_URL [WEB_PORT] [CHECK ...]   (no checks named: all but out_of_order_allowed)
Run the standalone with a short --key-shared-lease-ms for the default checks (the hang check
waits for it) and with the default lease for out_of_order_allowed.

The ordering checker: consumers record (key, seq) under one lock *before* acknowledging, so
the global record order is the order in which the broker let messages of a key go. Per key,
recorded sequence numbers must never go down (a repeat is a redelivery, allowed); at the end
every message is recorded.
"""
import sys
import threading
import time
import uuid

import pulsar

from waits import wait_for

URL = sys.argv[1]
WEB = sys.argv[2] if len(sys.argv) > 2 and sys.argv[2].isdigit() else None
client = pulsar.Client(URL, operation_timeout_seconds=15)
CURRENT_TOPIC = [None]


def broker_view():
    """The subscription as the broker sees it, for failure messages."""
    if WEB is None or CURRENT_TOPIC[0] is None:
        return "(no web port given)"
    import json
    import urllib.request
    path = CURRENT_TOPIC[0].replace("persistent://", "/admin/v2/persistent/")
    try:
        s = json.load(urllib.request.urlopen("http://127.0.0.1:%s%s/stats" % (WEB, path)))
        sub = s["subscriptions"].get("ks", {})
        return json.dumps({k: v for k, v in sub.items() if k != "consumers"}) + "\n" + "\n".join(
            json.dumps({k: c.get(k) for k in ("consumerName", "availablePermits",
                                              "unackedMessages", "msgOutCounter")})
            for c in sub.get("consumers", []))
    except Exception as e:  # diagnostics only
        return "(stats unavailable: %r)" % e


def topic(name):
    t = "persistent://public/default/%s-%s" % (name, uuid.uuid4().hex[:8])
    CURRENT_TOPIC[0] = t
    return t


class Recorder:
    def __init__(self):
        self.lock = threading.Lock()
        self.events = []  # (key, seq, consumer)

    def record(self, key, seq, who):
        with self.lock:
            self.events.append((key, seq, who))

    def wait_more(self, n):
        """Waits until n more messages than now have been received."""
        with self.lock:
            target = len(self.events) + n

        def enough():
            with self.lock:
                return len(self.events) >= target

        wait_for(enough, "%d more messages" % n)

    def check(self, keys, per_key):
        with self.lock:
            events = list(self.events)
        last = {}
        repeats = 0
        for key, seq, who in events:
            prev = last.get(key, -1)
            assert seq >= prev, "key %s: seq %d recorded by %s after %d" % (key, seq, who, prev)
            repeats += seq == prev
            last[key] = seq
        seen = {(k, s) for k, s, _ in events}
        missing = [(k, s) for k in keys for s in range(per_key) if (k, s) not in seen]
        assert not missing, "%d never delivered, e.g. %s" % (len(missing), missing[:5])
        return repeats

    def complete(self, keys, per_key):
        with self.lock:
            return len({(k, s) for k, s, _ in self.events}) == len(keys) * per_key

    def by_consumer(self):
        with self.lock:
            owners = {}
            for key, _, who in self.events:
                owners.setdefault(key, set()).add(who)
            return owners


class Worker(threading.Thread):
    """Receives, records and acknowledges until stopped; `hang_after` stops it from
    receiving or acking after that many messages, without closing."""

    def __init__(self, t, name, rec, hang_after=None, queue=100, policy=None):
        super().__init__(daemon=True)
        kwargs = {}
        if policy is not None:
            kwargs["key_shared_policy"] = policy
        self.consumer = client.subscribe(
            t, "ks", consumer_type=pulsar.ConsumerType.KeyShared, consumer_name=name,
            receiver_queue_size=queue, initial_position=pulsar.InitialPosition.Earliest,
            **kwargs)
        self.name_ = name
        self.rec = rec
        self.hang_after = hang_after
        self.stop = threading.Event()
        self.count = 0

    def run(self):
        while not self.stop.is_set():
            if self.hang_after is not None and self.count >= self.hang_after:
                time.sleep(0.05)
                continue
            try:
                m = self.consumer.receive(timeout_millis=100)
            except Exception:  # timeout
                continue
            key, seq = m.partition_key(), int(m.data())
            self.rec.record(key, seq, self.name_)
            self.consumer.acknowledge(m)
            self.count += 1

    def leave(self):
        self.stop.set()
        self.join()
        self.consumer.close()


def produce(t, keys, per_key, pace=None, batched=True):
    if batched:
        p = client.create_producer(t, batching_enabled=True, batching_max_messages=20,
                                   batching_max_publish_delay_ms=5, block_if_queue_full=True,
                                   batching_type=pulsar.BatchingType.KeyBased)
    else:
        p = client.create_producer(t, batching_enabled=False, block_if_queue_full=True)
    failed = []

    def sent(res, _msg_id):
        if res != pulsar.Result.Ok:
            failed.append(res)

    for seq in range(per_key):
        for k in keys:
            p.send_async(b"%d" % seq, sent, partition_key=k)
        if pace:
            time.sleep(pace)
    p.flush()
    p.close()
    assert not failed, "sends failed: %s" % failed[:3]


def wait_complete(rec, keys, per_key, timeout=60):
    deadline = time.time() + timeout
    while not rec.complete(keys, per_key):
        if time.time() > deadline:
            with rec.lock:
                seen = {(k, s) for k, s, _ in rec.events}
            missing = {}
            for k in keys:
                m = [s for s in range(per_key) if (k, s) not in seen]
                if m:
                    missing[k] = (m[0], len(m))
            raise AssertionError("not everything delivered in %d s; missing (first, count) per "
                                 "key: %s\nbroker: %s" % (timeout, missing, broker_view()))
        time.sleep(0.1)


def check_spread():
    """Each key goes to one consumer, in order; keys spread over the consumers."""
    t = topic("ks-spread")
    rec = Recorder()
    workers = [Worker(t, "w%d" % i, rec) for i in range(3)]
    for w in workers:
        w.start()
    keys = ["key-%d" % i for i in range(60)]
    produce(t, keys, 20)
    wait_complete(rec, keys, 20)
    for w in workers:
        w.leave()
    assert rec.check(keys, 20) == 0
    owners = rec.by_consumer()
    assert all(len(o) == 1 for o in owners.values()), owners
    used = set().union(*owners.values())
    assert len(used) == 3, "keys went to %s only" % used


def check_join_leave_hang():
    """Order per key holds while consumers join, leave, and one hangs holding messages."""
    t = topic("ks-churn")
    rec = Recorder()
    a = Worker(t, "a", rec)
    b = Worker(t, "b", rec)
    a.start()
    b.start()
    keys = ["k%d" % i for i in range(24)]
    per_key = 150
    producer = threading.Thread(target=produce, args=(t, keys, per_key, 0.01))
    producer.start()
    # consumers join and leave while messages flow: each step waits for more to arrive
    rec.wait_more(600)
    c = Worker(t, "c", rec)
    c.start()
    rec.wait_more(600)
    a.leave()
    h = Worker(t, "hung", rec, hang_after=5, queue=20)
    h.start()
    rec.wait_more(600)
    d = Worker(t, "d", rec)
    d.start()
    producer.join()
    # the hung consumer keeps its connection; its slots must move after the lease
    wait_complete(rec, keys, per_key)
    repeats = rec.check(keys, per_key)
    print("  %d messages, %d redelivered repeats, by consumer: %s" % (
        len(keys) * per_key, repeats,
        {w.name_: w.count for w in (a, b, c, h, d)}), flush=True)
    assert h.count <= 5, h.count
    for w in (b, c, d):
        w.leave()
    h.stop.set()
    h.consumer.close()


def check_sticky():
    """STICKY ranges pin slots; an overlapping range is refused."""
    t = topic("ks-sticky")
    rec = Recorder()
    low = pulsar.ConsumerKeySharedPolicy(pulsar.KeySharedMode.Sticky, sticky_ranges=[(0, 32767)])
    high = pulsar.ConsumerKeySharedPolicy(pulsar.KeySharedMode.Sticky,
                                          sticky_ranges=[(32768, 65535)])
    w1 = Worker(t, "low", rec, policy=low)
    w2 = Worker(t, "high", rec, policy=high)
    try:
        Worker(t, "clash", rec, policy=pulsar.ConsumerKeySharedPolicy(
            pulsar.KeySharedMode.Sticky, sticky_ranges=[(100, 200)]))
    except Exception as e:
        assert "ConsumerAssign" in str(e) or "ConsumerAssign" in type(e).__name__, repr(e)
    else:
        raise AssertionError("overlapping STICKY range accepted")
    w1.start()
    w2.start()
    keys = ["s%d" % i for i in range(40)]
    produce(t, keys, 10, batched=False)
    wait_complete(rec, keys, 10)
    w1.leave()
    w2.leave()
    rec.check(keys, 10)
    owners = rec.by_consumer()
    assert all(len(o) == 1 for o in owners.values()), owners
    assert set().union(*owners.values()) == {"low", "high"}


def check_out_of_order_allowed():
    """allowOutOfOrderDelivery: a joining consumer takes its keys at once, though the first
    consumer still holds unacknowledged messages of every key. Needs a lease far longer than
    the check (in order, the second consumer would get nothing until the lease ran out)."""
    t = topic("ks-ooo")
    rec = Recorder()
    policy = pulsar.ConsumerKeySharedPolicy(pulsar.KeySharedMode.AutoSplit,
                                            allow_out_of_order_delivery=True)
    keys = ["o%d" % i for i in range(20)]
    w1 = Worker(t, "one", rec, policy=policy, hang_after=0, queue=1000)
    w1.start()
    produce(t, keys, 5, batched=False)
    w2 = Worker(t, "two", rec, policy=policy)
    w2.start()
    produce(t, keys, 5, batched=False)
    deadline = time.time() + 20
    while w2.count == 0:
        assert time.time() < deadline, "the joining consumer got nothing"
        time.sleep(0.05)
    # the first consumer leaves: what it held goes to the second
    w1.stop.set()
    w1.consumer.close()
    deadline = time.time() + 30
    while len({(k, s) for k, s, _ in rec.events}) < 20 * 5:
        assert time.time() < deadline, "held messages were not redelivered"
        time.sleep(0.05)
    w2.leave()


CHECKS = {name[len("check_"):]: f for name, f in globals().items() if name.startswith("check_")}

args = [a for a in sys.argv[2:] if not a.isdigit()]
for name in args or [n for n in CHECKS if n != "out_of_order_allowed"]:
    started = time.time()
    CHECKS[name]()
    print("ok %s (%.2f s)" % (name, time.time() - started), flush=True)
client.close()
