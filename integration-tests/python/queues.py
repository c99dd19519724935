"""Work-queue semantics against a running Magnetar, with the official Python client:
negative acks with growing redelivery counts on every subscription type, the client's
dead-letter queue, chunked messages, oversized messages, producer access modes, terminated
topics.

Usage: queues.py SERVICE_URL WEB_PORT [CHECK ...]   (no checks named: all)
Run the standalone with --max-message-size 102400 (the chunking checks rely on it).
"""
import json
import sys
import time
import urllib.error
import urllib.request
import uuid

import pulsar
from waits import wait_for

URL = sys.argv[1]
WEB = "http://127.0.0.1:%d" % int(sys.argv[2])
MAX_MESSAGE = 102400
client = pulsar.Client(URL, operation_timeout_seconds=15)


def topic(name):
    return "persistent://public/default/%s-%s" % (name, uuid.uuid4().hex[:8])


def stats(t):
    path = t.replace("persistent://", "/admin/v2/persistent/")
    return json.load(urllib.request.urlopen(WEB + path + "/stats"))


def dead_letter(kind):
    """Nacked messages come back with a growing redelivery count, then go to the DLQ."""
    t = topic("dlq-%s" % kind.name.lower())
    dlq = t + "-DLQ"
    c = client.subscribe(
        t, "s", consumer_type=kind, negative_ack_redelivery_delay_ms=100,
        initial_position=pulsar.InitialPosition.Earliest,
        dead_letter_policy=pulsar.ConsumerDeadLetterPolicy(
            max_redeliver_count=2, dead_letter_topic=dlq, initial_subscription_name="dlq-sub"))
    p = client.create_producer(t, batching_enabled=False)
    for i in range(3):
        p.send(b"poison-%d" % i, properties={"i": str(i)})
    counts = {}
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            m = c.receive(timeout_millis=1500)
        except Exception:  # timeout: everything went to the DLQ
            break
        counts.setdefault(m.data(), []).append(m.redelivery_count())
        c.negative_acknowledge(m)
    for i in range(3):
        seen = counts.get(b"poison-%d" % i)
        assert seen == [0, 1, 2], "poison-%d redelivery counts %s" % (i, seen)
    d = client.subscribe(dlq, "dlq-sub")
    got = sorted(d.receive(timeout_millis=10000).data() for _ in range(3))
    assert got == [b"poison-0", b"poison-1", b"poison-2"], got
    # the originals were acknowledged by the client once dead-lettered
    wait_for(lambda: stats(t)["subscriptions"]["s"]["msgBacklog"] == 0, "backlog 0")
    c.close()
    d.close()


def redelivery_counts_grow(kind):
    """Exclusive/Failover: the C++ client nacks by asking for everything again and runs its
    dead-letter logic only on Shared/Key_Shared, so no client DLQ here; but the count a
    consumer sees still grows (Pulsar leaves it at 0), so applications can cap retries."""
    t = topic("nack-%s" % kind.name.lower())
    c = client.subscribe(t, "s", consumer_type=kind, negative_ack_redelivery_delay_ms=100,
                         initial_position=pulsar.InitialPosition.Earliest)
    p = client.create_producer(t, batching_enabled=False)
    p.send(b"retry-me")
    counts = []
    for _ in range(4):
        m = c.receive(timeout_millis=10000)
        counts.append(m.redelivery_count())
        c.negative_acknowledge(m)
    assert counts == [0, 1, 2, 3], counts
    m = c.receive(timeout_millis=10000)
    c.acknowledge(m)
    c.close()


def check_nack_exclusive():
    redelivery_counts_grow(pulsar.ConsumerType.Exclusive)


def check_nack_failover():
    redelivery_counts_grow(pulsar.ConsumerType.Failover)


def check_dlq_shared():
    dead_letter(pulsar.ConsumerType.Shared)


def check_dlq_key_shared():
    dead_letter(pulsar.ConsumerType.KeyShared)


def check_chunked():
    """A message over the limit is chunked by the client, stored as chunks, reassembled
    on receipt, and counted once in backlog and acks."""
    t = topic("chunked")
    c = client.subscribe(t, "s", initial_position=pulsar.InitialPosition.Earliest)
    p = client.create_producer(t, batching_enabled=False, chunking_enabled=True)
    big = bytes(range(256)) * (3 * MAX_MESSAGE // 256 + 7)  # 4 chunks
    p.send(b"small-1")
    p.send(big, properties={"k": "v"})
    p.send(b"small-2")
    s = stats(t)
    assert s["msgInCounter"] == 3, s["msgInCounter"]
    assert s["subscriptions"]["s"]["msgBacklog"] == 3, s["subscriptions"]["s"]
    got = [c.receive(timeout_millis=10000) for _ in range(3)]
    assert got[0].data() == b"small-1"
    assert got[1].data() == big and got[1].properties() == {"k": "v"}
    assert got[2].data() == b"small-2"
    c.acknowledge(got[0])
    c.acknowledge(got[1])
    wait_for(lambda: stats(t)["subscriptions"]["s"]["msgBacklog"] == 1, "backlog 1")
    c.acknowledge(got[2])
    wait_for(lambda: stats(t)["subscriptions"]["s"]["msgBacklog"] == 0, "backlog 0")
    # a reader from the start sees whole messages, too
    r = client.create_reader(t, pulsar.MessageId.earliest)
    assert [r.read_next(timeout_millis=10000).data() for _ in range(3)] == [
        b"small-1", big, b"small-2"]


def check_oversize():
    """Without chunking an oversized message fails with a clear error; the producer stays
    usable."""
    t = topic("oversize")
    c = client.subscribe(t, "s")
    p = client.create_producer(t, batching_enabled=False)
    refused(pulsar.MessageTooBig, lambda: p.send(b"x" * (MAX_MESSAGE + 1)),
            "oversized message accepted")
    p.send(b"fine")
    assert c.receive(timeout_millis=10000).data() == b"fine"


def check_delayed():
    """deliver_after / deliver_at on Shared: held back until due, others pass them."""
    import datetime
    t = topic("delayed")
    c = client.subscribe(t, "s", consumer_type=pulsar.ConsumerType.Shared)
    p = client.create_producer(t, batching_enabled=False)
    p.send(b"late", deliver_after=datetime.timedelta(seconds=2))
    p.send(b"later", deliver_at=int(time.time() * 1000) + 3000)
    p.send(b"now")
    assert c.receive(timeout_millis=10000).data() == b"now"
    wait_for(lambda: stats(t)["subscriptions"]["s"]["msgDelayed"] == 2, "2 delayed")
    expect_nothing(c, 500)
    got = [c.receive(timeout_millis=10000) for _ in range(2)]
    assert [m.data() for m in got] == [b"late", b"later"], [m.data() for m in got]
    for m in got:
        c.acknowledge(m)
    # Exclusive subscriptions do not delay (as in Pulsar)
    t2 = topic("delayed-exclusive")
    e = client.subscribe(t2, "s")
    client.create_producer(t2, batching_enabled=False).send(
        b"x", deliver_after=datetime.timedelta(seconds=60))
    assert e.receive(timeout_millis=10000).data() == b"x"


def check_non_persistent():
    """non-persistent topics fan out in memory to every subscription; nothing is stored."""
    t = "non-persistent://public/default/np-%s" % uuid.uuid4().hex[:8]
    ex = client.subscribe(t, "ex")
    sh1 = client.subscribe(t, "sh", consumer_type=pulsar.ConsumerType.Shared)
    sh2 = client.subscribe(t, "sh", consumer_type=pulsar.ConsumerType.Shared)
    p = client.create_producer(t, batching_enabled=False)
    for i in range(50):
        p.send(b"%d" % i)
    got = [int(ex.receive(timeout_millis=10000).data()) for _ in range(50)]
    assert got == list(range(50)), got
    shared = []
    for c in (sh1, sh2):
        while True:
            try:
                m = c.receive(timeout_millis=300)
            except Exception:
                break
            shared.append(int(m.data()))
            c.acknowledge(m)
    assert sorted(shared) == list(range(50)), sorted(shared)
    # a subscription made later sees only what comes after it
    late = client.subscribe(t, "late")
    p.send(b"after")
    assert late.receive(timeout_millis=10000).data() == b"after"
    expect_nothing(late)
    listed = call_json("/admin/v2/persistent/public/default")
    assert not any("np-" in x for x in listed), listed


def call_json(path):
    return json.load(urllib.request.urlopen(WEB + path))


def check_ack_timeout():
    """Unacknowledged messages come back after the ack timeout (10 s is the C++ minimum)."""
    t = topic("ack-timeout")
    c = client.subscribe(t, "s", consumer_type=pulsar.ConsumerType.Shared,
                         unacked_messages_timeout_ms=10000)
    p = client.create_producer(t, batching_enabled=False)
    p.send(b"forgotten")
    first = c.receive(timeout_millis=10000)
    again = c.receive(timeout_millis=30000)
    assert again.data() == b"forgotten" and again.redelivery_count() == 1, again
    c.acknowledge(again)
    expect_nothing(c)


def check_access_modes():
    """Exclusive producers keep others out; WaitForExclusive queues; fencing takes over."""
    import threading
    t = topic("access")
    c = client.subscribe(t, "s")
    mode = pulsar.ProducerAccessMode
    first = client.create_producer(t, access_mode=mode.Exclusive, batching_enabled=False)
    first.send(b"from-first")
    for m, err in ((mode.Shared, pulsar.ProducerBusy), (mode.Exclusive, pulsar.ProducerFenced)):
        refused(err, lambda: client.create_producer(t, access_mode=m),
                "%s producer admitted beside an exclusive one" % m)
    waiter = {}

    def wait_for_exclusive():
        waiter["p"] = client.create_producer(t, access_mode=mode.WaitForExclusive,
                                             batching_enabled=False)

    th = threading.Thread(target=wait_for_exclusive)
    th.start()
    # the broker has it queued, and it is not admitted while the first one writes
    wait_for(lambda: stats(t).get("waitingProducers") == 1, "the waiting producer queued")
    assert "p" not in waiter, "WaitForExclusive producer admitted while another writes"
    first.close()
    th.join(20)
    assert "p" in waiter, "WaitForExclusive producer never admitted"
    waiter["p"].send(b"from-waiter")
    fencer = client.create_producer(t, access_mode=mode.ExclusiveWithFencing,
                                    batching_enabled=False)
    fencer.send(b"from-fencer")
    refused(Exception, lambda: waiter["p"].send(b"after-fencing"),
            "a fenced producer could still publish")
    got = [c.receive(timeout_millis=10000).data() for _ in range(3)]
    assert got == [b"from-first", b"from-waiter", b"from-fencer"], got
    expect_nothing(c)


def check_terminate():
    """A terminated topic refuses producers and keeps serving what it holds."""
    t = topic("terminate")
    c = client.subscribe(t, "s")
    p = client.create_producer(t, batching_enabled=False)
    ids = [p.send(b"t-%d" % i) for i in range(3)]
    path = t.replace("persistent://", "/admin/v2/persistent/")
    req = urllib.request.Request(WEB + path + "/terminate", data=b"", method="POST")
    last = json.load(urllib.request.urlopen(req))
    assert (last["ledgerId"], last["entryId"]) == (ids[-1].ledger_id(), ids[-1].entry_id()), last
    again = json.load(urllib.request.urlopen(
        urllib.request.Request(WEB + path + "/terminate", data=b"", method="POST")))
    assert again == last, again
    refused(pulsar.TopicTerminated, lambda: p.send(b"too late"),
            "send to a terminated topic succeeded")
    refused(pulsar.TopicTerminated, lambda: client.create_producer(t),
            "producer created on a terminated topic")
    got = [c.receive(timeout_millis=10000).data() for _ in range(3)]
    assert got == [b"t-0", b"t-1", b"t-2"], got
    expect_nothing(c)
    # a new reader still sees everything
    r = client.create_reader(t, pulsar.MessageId.earliest)
    assert [r.read_next(timeout_millis=10000).data() for _ in range(3)] == got


def check_dedup():
    """With deduplication on, a resent sequence id is answered but not stored again."""
    ns = WEB + "/admin/v2/namespaces/public/default/deduplication"

    def post(body):
        req = urllib.request.Request(ns, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        assert urllib.request.urlopen(req).status == 204

    post(b"true")
    try:
        assert json.load(urllib.request.urlopen(ns)) is True
        t = topic("dedup")
        p = client.create_producer(t, producer_name="dedup-producer", batching_enabled=False)
        for i in range(3):
            p.send(b"m-%d" % i, sequence_id=i)
        dup = p.send(b"m-1 again", sequence_id=1)
        assert (dup.ledger_id(), dup.entry_id()) in ((-1, -1), (2**64 - 1, 2**64 - 1)), dup
        p.send(b"m-3", sequence_id=3)
        assert stats(t)["deduplicationStatus"] == "Enabled"
        # a new producer with the same name learns where the sequence stands
        p.close()
        p = client.create_producer(t, producer_name="dedup-producer", batching_enabled=False)
        assert p.last_sequence_id() == 3, p.last_sequence_id()
        r = client.create_reader(t, pulsar.MessageId.earliest)
        got = []
        while r.has_message_available():
            got.append(r.read_next(timeout_millis=10000).data())
        assert got == [b"m-0", b"m-1", b"m-2", b"m-3"], got
    finally:
        req = urllib.request.Request(ns, method="DELETE")
        urllib.request.urlopen(req)
    bad = urllib.request.Request(ns, data=b"maybe", method="POST")
    try:
        urllib.request.urlopen(bad)
    except urllib.error.HTTPError as e:
        assert e.code == 400, e.code
    else:
        raise AssertionError("bad body accepted")


def refused(error, action, what):
    """Runs `action`, which must fail with `error`."""
    try:
        action()
    except error:
        return
    raise AssertionError(what)


def expect_nothing(consumer, timeout_ms=500):
    try:
        m = consumer.receive(timeout_millis=timeout_ms)
    except Exception:  # timeout
        return
    raise AssertionError("unexpected message %r" % m.data())


CHECKS = {name[len("check_"):]: f for name, f in globals().items() if name.startswith("check_")}

for name in [a for a in sys.argv[3:]] or list(CHECKS):
    started = time.time()
    CHECKS[name]()
    print("ok %s (%.2f s)" % (name, time.time() - started), flush=True)
client.close()
