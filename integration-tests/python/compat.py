"""Pulsar behaviours the official Python client relies on, each as a user meets them.

Usage: compat.py anonymous SERVICE_URL      (a standalone with an anonymous role)
       compat.py seek SERVICE_URL
       compat.py missing-namespace SERVICE_URL
       compat.py listeners SERVICE_URL KNOWN_LISTENER
"""
import sys
import uuid

import pulsar

MODE, URL = sys.argv[1], sys.argv[2]


def topic(name):
    return "persistent://public/default/%s-%s" % (name, uuid.uuid4().hex[:8])


def anonymous():
    # no credentials at all: the client says "none"; the broker grants the anonymous role
    client = pulsar.Client(URL, operation_timeout_seconds=10)
    t = topic("anonymous")
    consumer = client.subscribe(t, "s")
    client.create_producer(t).send(b"hello")
    assert consumer.receive(timeout_millis=10000).data() == b"hello"
    client.close()
    print("anonymous: produced and consumed without credentials")


def seek():
    client = pulsar.Client(URL, operation_timeout_seconds=10)
    t = topic("seek")
    consumer = client.subscribe(t, "s")
    producer = client.create_producer(t, batching_enabled=False)
    ids = [producer.send(b"%d" % i) for i in range(100)]
    stamps = []
    for i in range(100):
        m = consumer.receive(timeout_millis=10000)
        assert m.data() == b"%d" % i, (i, m.data())
        stamps.append(m.publish_timestamp())
        consumer.acknowledge(m)

    def next_after(target):
        consumer.seek(target)
        return int(consumer.receive(timeout_millis=10000).data())

    def first_at(ms):
        # publish times have millisecond resolution: neighbours may share one
        return next(i for i, t in enumerate(stamps) if t >= ms)

    # each step as the issue tried them, in that order: what follows depends on the seek
    # alone, never on the ones before it
    steps = [
        ("earliest", pulsar.MessageId.earliest, 0),
        ("ids[50]", ids[50], 51),
        ("ids[60]", ids[60], 61),
        ("time of 42", stamps[42], first_at(stamps[42])),
        ("ids[70]", ids[70], 71),
        ("time 0", 0, 0),
        ("ids[10]", ids[10], 11),
        ("time of 99", stamps[99], first_at(stamps[99])),
    ]
    for name, target, want in steps:
        got = next_after(target)
        assert got == want, "seek to %s: next is %d, expected %d" % (name, got, want)
        print("seek to %s: next is %d" % (name, got))
    client.close()


def missing_namespace():
    client = pulsar.Client(URL, operation_timeout_seconds=5)
    for name in ("persistent://no-such-tenant/ns/t", "persistent://public/no-such-ns/t"):
        for what, attempt in (("producer", lambda: client.create_producer(name)),
                              ("consumer", lambda: client.subscribe(name, "s"))):
            try:
                attempt()
            except pulsar.TopicNotFound:
                print("%s on %s: TopicNotFound" % (what, name))
            else:
                raise AssertionError("%s on %s was admitted" % (what, name))
    # and an existing namespace still creates topics
    client.create_producer(topic("exists")).send(b"x")
    client.close()


def listeners():
    known = sys.argv[3]
    # a listener the broker advertises: its address is where the client goes
    client = pulsar.Client(URL, listener_name=known, operation_timeout_seconds=10)
    t = topic("listener")
    consumer = client.subscribe(t, "s")
    client.create_producer(t).send(b"via " + known.encode())
    assert consumer.receive(timeout_millis=10000).data() == b"via " + known.encode()
    client.close()
    print("listener %s: produced and consumed" % known)
    # one it does not: refused, not silently served
    client = pulsar.Client(URL, listener_name="test", operation_timeout_seconds=5)
    try:
        client.create_producer(topic("listener"))
    except Exception as e:
        print("listener test: refused (%s)" % type(e).__name__)
    else:
        raise AssertionError("a client of unknown listener 'test' was served")
    client.close()


{"anonymous": anonymous, "seek": seek, "missing-namespace": missing_namespace,
 "listeners": listeners}[MODE]()
