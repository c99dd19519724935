"""Produce/consume semantics against a running Magnetar, with the official Python client.

Usage: semantics.py SERVICE_URL WEB_PORT [CHECK ...]   (no checks named: all but trimming
and idle_cache, which need a short housekeeping tick)
Every check uses its own topic; a failed assertion exits non-zero.
"""
import sys
import time
import uuid

import pulsar

URL = sys.argv[1]
WEB_PORT = int(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2].isdigit() else 8080
client = pulsar.Client(URL, operation_timeout_seconds=15)


def topic(name):
    return "persistent://public/default/%s-%s" % (name, uuid.uuid4().hex[:8])


def receive_all(consumer, n, timeout_ms=5000, ack=True):
    out = []
    for _ in range(n):
        m = consumer.receive(timeout_millis=timeout_ms)
        out.append(m)
        if ack:
            consumer.acknowledge(m)
    return out


def expect_nothing(consumer, timeout_ms=500):
    try:
        m = consumer.receive(timeout_millis=timeout_ms)
    except Exception:  # Timeout
        return
    raise AssertionError("unexpected message %r %s" % (m.data(), m.message_id()))


def check_unbatched():
    t = topic("unbatched")
    c = client.subscribe(t, "s", initial_position=pulsar.InitialPosition.Earliest)
    p = client.create_producer(t)
    for i in range(20):
        p.send(b"m-%d" % i, properties={"i": str(i), "x": "y"}, partition_key="k%d" % i,
               event_timestamp=1_000_000 + i)
    ms = receive_all(c, 20)
    for i, m in enumerate(ms):
        assert m.data() == b"m-%d" % i, m.data()
        assert m.properties() == {"i": str(i), "x": "y"}, m.properties()
        assert m.partition_key() == "k%d" % i
        assert m.event_timestamp() == 1_000_000 + i
        assert m.publish_timestamp() > 0
    expect_nothing(c)


def check_batched():
    t = topic("batched")
    c = client.subscribe(t, "s", initial_position=pulsar.InitialPosition.Earliest)
    p = client.create_producer(t, batching_enabled=True, batching_max_messages=10,
                               batching_max_publish_delay_ms=20)
    ids = []
    for i in range(35):
        p.send_async(b"b-%d" % i, lambda res, mid: ids.append((res, mid)),
                     properties={"i": str(i)}, partition_key="k%d" % (i % 3))
    p.flush()
    assert len(ids) == 35 and all(r == pulsar.Result.Ok for r, _ in ids), ids
    ms = receive_all(c, 35)
    assert [m.data() for m in ms] == [b"b-%d" % i for i in range(35)]
    assert all(m.properties() == {"i": str(i)} for i, m in enumerate(ms))
    assert all(m.partition_key() == "k%d" % (i % 3) for i, m in enumerate(ms))
    expect_nothing(c)
    c.close()
    # acknowledged batches stay acknowledged on re-subscribe
    c = client.subscribe(t, "s")
    expect_nothing(c)


def check_exclusive():
    t = topic("exclusive")
    c1 = client.subscribe(t, "s", consumer_type=pulsar.ConsumerType.Exclusive)
    try:
        client.subscribe(t, "s", consumer_type=pulsar.ConsumerType.Exclusive)
    except Exception as e:
        assert "ConsumerBusy" in str(e) or "Busy" in type(e).__name__, repr(e)
    else:
        raise AssertionError("second exclusive consumer was accepted")
    c1.close()
    c2 = client.subscribe(t, "s", consumer_type=pulsar.ConsumerType.Exclusive)
    c2.close()


def check_shared():
    t = topic("shared")
    c1 = client.subscribe(t, "s", consumer_type=pulsar.ConsumerType.Shared, receiver_queue_size=10)
    c2 = client.subscribe(t, "s", consumer_type=pulsar.ConsumerType.Shared, receiver_queue_size=10)
    p = client.create_producer(t)
    for i in range(40):
        p.send(b"%d" % i)
    got = {1: [], 2: []}
    deadline = time.time() + 10
    while len(got[1]) + len(got[2]) < 40 and time.time() < deadline:
        for k, c in ((1, c1), (2, c2)):
            try:
                m = c.receive(timeout_millis=100)
                got[k].append(int(m.data()))
                c.acknowledge(m)
            except Exception:
                pass
    assert sorted(got[1] + got[2]) == list(range(40)), got
    assert got[1] and got[2], "both shared consumers must get messages: %s" % got
    # a closed consumer's unacked messages go to the other one
    for i in range(5):
        p.send(b"u%d" % i)
    held = []
    for _ in range(5):
        try:
            held.append(c1.receive(timeout_millis=300))
        except Exception:
            break
    c1.close()
    rest = set()
    deadline = time.time() + 10
    while len(rest) < 5 and time.time() < deadline:
        try:
            m = c2.receive(timeout_millis=200)
            rest.add(m.data())
            c2.acknowledge(m)
        except Exception:
            pass
    assert rest == {b"u%d" % i for i in range(5)}, rest


def check_failover():
    t = topic("failover")
    a = client.subscribe(t, "s", consumer_type=pulsar.ConsumerType.Failover, consumer_name="a")
    b = client.subscribe(t, "s", consumer_type=pulsar.ConsumerType.Failover, consumer_name="b")
    p = client.create_producer(t)
    for i in range(10):
        p.send(b"%d" % i)
    ms = receive_all(a, 10)
    assert [int(m.data()) for m in ms] == list(range(10))
    expect_nothing(b)
    a.close()  # hand-over
    for i in range(10, 15):
        p.send(b"%d" % i)
    ms = receive_all(b, 5)
    assert [int(m.data()) for m in ms] == list(range(10, 15))


def check_readers():
    t = topic("readers")
    p = client.create_producer(t)
    ids = [p.send(b"r%d" % i) for i in range(10)]
    r = client.create_reader(t, pulsar.MessageId.earliest)
    got = []
    while r.has_message_available():
        got.append(r.read_next(timeout_millis=5000).data())
    assert got == [b"r%d" % i for i in range(10)], got
    r.close()
    r = client.create_reader(t, pulsar.MessageId.latest)
    assert not r.has_message_available()
    p.send(b"new")
    assert r.read_next(timeout_millis=5000).data() == b"new"
    r.close()
    r = client.create_reader(t, ids[4])  # exclusive of the start id
    assert r.read_next(timeout_millis=5000).data() == b"r5"
    r.close()
    r = client.create_reader(t, ids[4], start_message_id_inclusive=True)
    assert r.read_next(timeout_millis=5000).data() == b"r4"
    r.close()


def check_seek():
    t = topic("seek")
    c = client.subscribe(t, "s", initial_position=pulsar.InitialPosition.Earliest)
    p = client.create_producer(t)
    ids = []
    for i in range(10):
        ids.append(p.send(b"s%d" % i))
        time.sleep(0.01)
    ms = receive_all(c, 10)
    t5 = ms[5].publish_timestamp()
    c.seek(ids[3])
    m = c.receive(timeout_millis=5000)
    # the consumer restarts at the seek position
    assert m.data() in (b"s3", b"s4"), m.data()
    c.seek(t5)
    m = c.receive(timeout_millis=5000)
    assert m.data() == b"s5", m.data()
    c.seek(pulsar.MessageId.earliest)
    m = c.receive(timeout_millis=5000)
    assert m.data() == b"s0", m.data()


def check_last_message_id():
    t = topic("lastid")
    c = client.subscribe(t, "s")
    p = client.create_producer(t)
    last = None
    for i in range(3):
        last = p.send(b"x")
    got = c.get_last_message_id()
    assert (got.ledger_id(), got.entry_id()) == (last.ledger_id(), last.entry_id()), (got, last)


def check_redelivery_count():
    t = topic("nack")
    for kind in (pulsar.ConsumerType.Shared, pulsar.ConsumerType.Exclusive):
        c = client.subscribe(t, "s-%s" % kind, consumer_type=kind,
                             initial_position=pulsar.InitialPosition.Earliest,
                             negative_ack_redelivery_delay_ms=100)
        if kind == pulsar.ConsumerType.Shared:
            client.create_producer(t).send(b"n")
        counts = []
        for _ in range(3):
            m = c.receive(timeout_millis=5000)
            counts.append(m.redelivery_count())
            c.negative_acknowledge(m)
        assert counts == [0, 1, 2], (kind, counts)
        c.close()


def check_unsubscribe():
    t = topic("unsub")
    p = client.create_producer(t)
    c = client.subscribe(t, "s")
    p.send(b"1")
    c.unsubscribe()
    c = client.subscribe(t, "s")
    expect_nothing(c)  # a new subscription starts at the latest message


def check_tail_under_load():
    """A consumer tailing a topic written at full speed gets every message, in order."""
    import threading
    t = topic("tail")
    n = 20000
    c = client.subscribe(t, "s", receiver_queue_size=2000)
    got = []

    def run():
        while len(got) < n:
            m = c.receive(timeout_millis=10000)
            got.append(int(m.data()))
            c.acknowledge(m)

    th = threading.Thread(target=run)
    th.start()
    p = client.create_producer(t, batching_enabled=True, batching_max_publish_delay_ms=1,
                               max_pending_messages=2000, block_if_queue_full=True)
    for i in range(n):
        p.send_async(b"%d" % i, None)
    p.flush()
    th.join(60)
    assert got == list(range(n)), "received %d of %d" % (len(got), n)


def check_regex_subscription():
    """Pattern subscriptions find topics through GET_TOPICS_OF_NAMESPACE, by domain."""
    import re
    tag = uuid.uuid4().hex[:8]
    names = ["persistent://public/default/rx-%s-%s" % (tag, s) for s in "ab"]
    for n in names:
        client.create_producer(n, batching_enabled=False).send(n.encode())
    c = client.subscribe(re.compile("persistent://public/default/rx-%s-.*" % tag), "s",
                         initial_position=pulsar.InitialPosition.Earliest)
    got = sorted(receive_all(c, 2), key=lambda m: m.data())
    assert [m.data() for m in got] == [n.encode() for n in names], [m.data() for m in got]
    # non-persistent topics are listed only when asked for
    np_name = "non-persistent://public/default/rx-%s-np" % tag
    npp = client.create_producer(np_name, batching_enabled=False)
    npc = client.subscribe(re.compile("non-persistent://public/default/rx-%s-.*" % tag), "s",
                           regex_subscription_mode=pulsar.RegexSubscriptionMode.NonPersistentOnly)
    npp.send(b"np")
    assert npc.receive(timeout_millis=10000).data() == b"np"


def check_partitioned():
    import json
    import urllib.request
    web = sys.argv[1].replace("pulsar://", "http://").rsplit(":", 1)[0]
    web_port = WEB_PORT
    name = "part-%s" % uuid.uuid4().hex[:8]
    req = urllib.request.Request(
        "%s:%d/admin/v2/persistent/public/default/%s/partitions" % (web, web_port, name),
        data=b"3", method="PUT", headers={"Content-Type": "application/json"})
    assert urllib.request.urlopen(req).status == 204
    t = "persistent://public/default/" + name
    assert client.get_topic_partitions(t) == [t + "-partition-%d" % i for i in range(3)]
    c = client.subscribe(t, "s", initial_position=pulsar.InitialPosition.Earliest)
    p = client.create_producer(t, message_routing_mode=pulsar.PartitionsRoutingMode.RoundRobinDistribution,
                               batching_enabled=False)
    for i in range(30):
        p.send(b"%d" % i)
    got = receive_all(c, 30)
    assert sorted(int(m.data()) for m in got) == list(range(30))
    assert {m.message_id().partition() for m in got} == {0, 1, 2}
    expect_nothing(c)


def check_trimming():
    """Consumed ledgers go away (run with a small ledger size and a short housekeeping tick)."""
    import json
    import urllib.request
    web = sys.argv[1].replace("pulsar://", "http://").rsplit(":", 1)[0]
    t = topic("trim")
    c = client.subscribe(t, "s")
    p = client.create_producer(t, batching_enabled=False)
    for i in range(50):
        p.send(b"%d" % i)
    receive_all(c, 50)
    stats_url = "%s:%d/admin/v2/persistent/public/default/%s/internalStats" % (
        web, WEB_PORT, t.rsplit("/", 1)[1])
    deadline = time.time() + 45
    while True:
        s = json.load(urllib.request.urlopen(stats_url))
        if len(s["ledgers"]) <= 2:
            break
        assert time.time() < deadline, "consumed ledgers were not trimmed: %s" % json.dumps(s)
        time.sleep(0.2)
    # what was not consumed stays readable
    for i in range(5):
        p.send(b"late-%d" % i)
    r = client.create_reader(t, pulsar.MessageId.earliest)
    first = r.read_next(timeout_millis=5000).data()
    assert first.startswith(b"late-") or int(first) >= 40, first


def check_idle_cache():
    """The entry caches count against one broker-wide budget, and a topic that takes
    nothing for a housekeeping pass gives its share back (run with a short tick, after
    every other check of the run has stopped producing)."""
    import urllib.request
    from waits import wait_for, wait_housekeeping
    web = "%s:%d" % (URL.replace("pulsar://", "http://").rsplit(":", 1)[0], WEB_PORT)

    def cached():
        page = urllib.request.urlopen(web + "/metrics").read().decode()
        for line in page.splitlines():
            if line.startswith("magnetar_entry_cache_bytes "):
                return int(line.split()[1])
        raise AssertionError("no magnetar_entry_cache_bytes in /metrics")

    p = client.create_producer(topic("cached"), batching_enabled=False)

    def sent_and_cached(n):
        # each look sends first, so the topic is never idle for a whole pass while looking
        p.send(b"x" * 1000)
        return cached() >= n

    for i in range(19):
        p.send(b"x" * 1000)
    wait_for(lambda: sent_and_cached(20 * 1000), "the topic's entries in the cache")
    wait_housekeeping(web, 3)
    wait_for(lambda: cached() == 0, "idle topics to let go of their cache")
    # and a topic that takes entries again caches them again
    wait_for(lambda: sent_and_cached(1000), "new entries in the cache")
    p.close()


CHECKS = {name[len("check_"):]: f for name, f in globals().items() if name.startswith("check_")}

names = [a for a in sys.argv[2:] if not a.isdigit()] or [
    n for n in CHECKS if n not in ("trimming", "idle_cache")]
for name in names:
    started = time.time()
    CHECKS[name]()
    print("ok %s (%.2f s)" % (name, time.time() - started), flush=True)
client.close()
