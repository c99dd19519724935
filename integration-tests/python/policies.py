"""Namespace policies enforced by a running Magnetar, driven over REST and checked with the
official Python client: message TTL, retention, backlog quotas, auto-creation of
partitioned topics, growing partitioned topics.

Usage: policies.py SERVICE_URL WEB_PORT [CHECK ...]   (no checks named: all)
Run the standalone with --housekeeping-interval-secs 1 --managed-ledger-max-entries-per-ledger 10.
Each check makes its own namespace, so policies never leak between checks.
"""
import json
import sys
import time
import urllib.error
import urllib.request
import uuid

import pulsar
from waits import wait_for, wait_housekeeping

URL = sys.argv[1]
WEB = "http://127.0.0.1:%d" % int(sys.argv[2])
client = pulsar.Client(URL, operation_timeout_seconds=15)


def call(method, path, body=None, expect=(200, 204)):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(WEB + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        r = urllib.request.urlopen(req)
        status, text = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read()
    assert status in expect, "%s %s: %d %s" % (method, path, status, text)
    return json.loads(text) if text else None


def namespace(policies=None):
    ns = "public/ns-%s" % uuid.uuid4().hex[:8]
    call("PUT", "/admin/v2/namespaces/" + ns, policies)
    return ns


def stats(t):
    return call("GET", t.replace("persistent://", "/admin/v2/persistent/") + "/stats")


def backlog(t, sub="s"):
    return stats(t)["subscriptions"][sub]["msgBacklog"]




def check_namespaces():
    ns = namespace({"message_ttl_in_seconds": 5})
    assert ns in call("GET", "/admin/v2/namespaces/public")
    assert call("GET", "/admin/v2/namespaces/" + ns)["message_ttl_in_seconds"] == 5
    call("PUT", "/admin/v2/namespaces/" + ns, expect=(409,))
    call("PUT", "/admin/v2/namespaces/public/bad%20name", expect=(412,))
    call("PUT", "/admin/v2/namespaces/nosuchtenant/x", expect=(404,))
    call("GET", "/admin/v2/namespaces/public/nosuchns", expect=(404,))
    call("POST", "/admin/v2/namespaces/%s/messageTTL" % ns, -3, expect=(412,))
    call("POST", "/admin/v2/namespaces/%s/retention" % ns, {"retentionTimeInMinutes": "x"},
         expect=(412,))
    call("POST", "/admin/v2/namespaces/%s/backlogQuota?backlogQuotaType=nope" % ns,
         {"limitSize": 1, "policy": "producer_exception"}, expect=(412,))


def check_ttl():
    """Unacknowledged messages older than the TTL are expired from every subscription."""
    ns = namespace()
    call("POST", "/admin/v2/namespaces/%s/messageTTL" % ns, 1)
    assert call("GET", "/admin/v2/namespaces/%s/messageTTL" % ns) == 1
    t = "persistent://%s/ttl" % ns
    client.subscribe(t, "s")
    p = client.create_producer(t, batching_enabled=False)
    for i in range(5):
        p.send(b"%d" % i)
    assert backlog(t) == 5
    wait_for(lambda: backlog(t) == 0, "TTL expiry")


def check_retention():
    """Consumed ledgers stay while retention says so, and go once it allows."""
    ns = namespace()
    call("POST", "/admin/v2/namespaces/%s/retention" % ns,
         {"retentionTimeInMinutes": -1, "retentionSizeInMB": -1})
    t = "persistent://%s/retained" % ns
    c = client.subscribe(t, "s")
    p = client.create_producer(t, batching_enabled=False)
    for i in range(50):
        p.send(b"%d" % i)
    for _ in range(50):
        c.acknowledge(c.receive(timeout_millis=10000))
    internal = t.replace("persistent://", "/admin/v2/persistent/") + "/internalStats"
    ledgers = len(call("GET", internal)["ledgers"])
    assert ledgers >= 5, ledgers
    wait_housekeeping(WEB, 3)  # retention was applied at least three times
    assert len(call("GET", internal)["ledgers"]) == ledgers, "retained ledgers were trimmed"
    call("POST", "/admin/v2/namespaces/%s/retention" % ns,
         {"retentionTimeInMinutes": 0, "retentionSizeInMB": 0})
    wait_for(lambda: len(call("GET", internal)["ledgers"]) <= 2, "trimming")


def check_backlog_quota_exception():
    """Over a size quota with producer_exception, new producers are refused until consumers
    catch up."""
    ns = namespace()
    call("POST", "/admin/v2/namespaces/%s/backlogQuota?backlogQuotaType=destination_storage" % ns,
         {"limitSize": 2000, "policy": "producer_exception"})
    quotas = call("GET", "/admin/v2/namespaces/%s/backlogQuotaMap" % ns)
    assert quotas["destination_storage"]["limitSize"] == 2000, quotas
    t = "persistent://%s/quota" % ns
    c = client.subscribe(t, "s")
    p = client.create_producer(t, batching_enabled=False)
    for i in range(30):
        p.send(b"x" * 200)
    try:
        client.create_producer(t)
    except pulsar.ProducerBlockedQuotaExceededException:
        pass
    else:
        raise AssertionError("producer admitted over the backlog quota")
    for _ in range(30):
        c.acknowledge(c.receive(timeout_millis=10000))
    c.close()  # flushes the acks

    def admitted():
        try:
            client.create_producer(t).close()
            return True
        except pulsar.ProducerBlockedQuotaExceededException:
            return False

    wait_for(admitted, "producers admitted again")


def check_backlog_eviction():
    """consumer_backlog_eviction by age moves slow subscriptions forward."""
    ns = namespace()
    call("POST", "/admin/v2/namespaces/%s/backlogQuota?backlogQuotaType=message_age" % ns,
         {"limitTime": 1, "policy": "consumer_backlog_eviction"})
    t = "persistent://%s/evict" % ns
    client.subscribe(t, "s")
    p = client.create_producer(t, batching_enabled=False)
    for i in range(10):
        p.send(b"%d" % i)
    wait_for(lambda: backlog(t) == 0, "eviction")
    p.send(b"fresh")
    assert backlog(t) == 1
    call("DELETE", "/admin/v2/namespaces/%s/backlogQuota?backlogQuotaType=message_age" % ns)
    assert call("GET", "/admin/v2/namespaces/%s/backlogQuotaMap" % ns) == {}


def check_topic_policies():
    """Topic-level TTL and quotas win over the namespace's."""
    ns = namespace({"message_ttl_in_seconds": 3600})
    t = "persistent://%s/own-ttl" % ns
    other = "persistent://%s/namespace-ttl" % ns
    for x in (t, other):
        client.subscribe(x, "s")
    base = t.replace("persistent://", "/admin/v2/persistent/")
    call("POST", base + "/messageTTL?messageTTL=1")
    assert call("GET", base + "/messageTTL") == 1
    call("POST", base + "/messageTTL?messageTTL=-5", expect=(412,))
    call("POST", "/admin/v2/persistent/%s/nosuchtopic/messageTTL?messageTTL=1" % ns,
         expect=(404,))
    p1 = client.create_producer(t, batching_enabled=False)
    p2 = client.create_producer(other, batching_enabled=False)
    for i in range(3):
        p1.send(b"%d" % i)
        p2.send(b"%d" % i)
    wait_for(lambda: backlog(t) == 0, "topic TTL expiry")
    assert backlog(other) == 3, "the namespace's hour-long TTL expired messages"
    call("DELETE", base + "/messageTTL")
    assert call("GET", base + "/messageTTL") is None
    # a topic-level quota with producer_request_hold: new producers are held off (the
    # client keeps retrying until its operation timeout)
    call("POST", base + "/backlogQuota?backlogQuotaType=destination_storage",
         {"limitSize": 10, "policy": "producer_request_hold"})
    assert call("GET", base + "/backlogQuotaMap")["destination_storage"]["limitSize"] == 10
    p1.send(b"more")
    impatient = pulsar.Client(URL, operation_timeout_seconds=2)
    try:
        impatient.create_producer(t)
    except (pulsar.ProducerBlockedQuotaExceededError, pulsar.Timeout):
        pass
    else:
        raise AssertionError("producer admitted over a producer_request_hold quota")
    finally:
        impatient.close()
    call("DELETE", base + "/backlogQuota?backlogQuotaType=destination_storage")
    client.create_producer(t).close()


def check_topic_dedup_switched_on():
    """Deduplication switched on for a loaded topic takes effect without a reload, and
    knows what was written before."""
    t = "persistent://%s/dedup-later" % namespace()
    p = client.create_producer(t, producer_name="later", batching_enabled=False)
    for i in range(3):
        p.send(b"m-%d" % i, sequence_id=i)
    base = t.replace("persistent://", "/admin/v2/persistent/")
    call("POST", base + "/deduplicationEnabled", True)
    assert call("GET", base + "/deduplicationEnabled") is True
    wait_for(lambda: stats(t)["deduplicationStatus"] == "Enabled", "deduplication on")
    p.send(b"m-1 again", sequence_id=1)
    p.send(b"m-3", sequence_id=3)
    got = [d for _, d in read_all(t, False)]
    assert got == [b"m-0", b"m-1", b"m-2", b"m-3"], got
    call("DELETE", base + "/deduplicationEnabled")
    wait_for(lambda: stats(t)["deduplicationStatus"] == "Disabled", "deduplication off")


def check_auto_partitioned():
    """A namespace that auto-creates partitioned topics; growing a partitioned topic."""
    ns = namespace()
    call("POST", "/admin/v2/namespaces/%s/autoTopicCreation" % ns,
         {"allowAutoTopicCreation": True, "topicType": "partitioned", "defaultNumPartitions": 3})
    call("POST", "/admin/v2/namespaces/%s/autoTopicCreation" % ns,
         {"allowAutoTopicCreation": True, "topicType": "partitioned"}, expect=(412,))
    t = "persistent://%s/auto" % ns
    p = client.create_producer(t, batching_enabled=False,
                               message_routing_mode=pulsar.PartitionsRoutingMode.RoundRobinDistribution)
    assert len(client.get_topic_partitions(t)) == 3
    path = t.replace("persistent://", "/admin/v2/persistent/") + "/partitions"
    assert call("GET", path)["partitions"] == 3
    call("POST", path, 5)
    call("POST", path, 4, expect=(412,))
    call("POST", path, "x", expect=(400,))
    assert call("GET", path)["partitions"] == 5
    c = client.subscribe(t, "s", initial_position=pulsar.InitialPosition.Earliest)
    for i in range(6):
        p.send(b"%d" % i)
    got = sorted(int(c.receive(timeout_millis=10000).data()) for _ in range(6))
    assert got == list(range(6)), got
    # auto-creation off: unknown topics are refused
    call("POST", "/admin/v2/namespaces/%s/autoTopicCreation" % ns,
         {"allowAutoTopicCreation": False})
    try:
        client.create_producer("persistent://%s/never" % ns)
    except pulsar.TopicNotFound:
        pass
    else:
        raise AssertionError("topic auto-created against the namespace policy")


def compact_now(t):
    path = t.replace("persistent://", "/admin/v2/persistent/") + "/compaction"
    call("PUT", path)
    wait_for(lambda: call("GET", path)["status"] == "SUCCESS", "compaction")


def read_all(t, compacted):
    r = client.create_reader(t, pulsar.MessageId.earliest, is_read_compacted=compacted)
    out = []
    while r.has_message_available():
        m = r.read_next(timeout_millis=10000)
        out.append((m.partition_key(), m.data()))
    r.close()
    return out


def check_compaction():
    """Compacted readers see the latest value per key (tombstones remove keys, keyless
    messages stay), then everything after the horizon; other readers see it all."""
    t = "persistent://%s/compacted" % namespace()
    p = client.create_producer(t, batching_enabled=False)
    for v in range(4):
        for k in range(5):
            p.send(b"k%d-v%d" % (k, v), partition_key="k%d" % k)
    p.send(b"", partition_key="k4")  # tombstone
    p.send(b"free")
    compact_now(t)
    got = read_all(t, True)
    assert sorted(got) == sorted([("k%d" % k, b"k%d-v3" % k) for k in range(4)] + [("", b"free")]), got
    assert len(read_all(t, False)) == 22
    # after the horizon, compacted readers read the log
    p.send(b"k0-v9", partition_key="k0")
    got = read_all(t, True)
    assert got[-1] == ("k0", b"k0-v9") and len(got) == 6, got
    # a compacted subscription must be exclusive or failover (the C++ client already says
    # so itself; the broker refuses too, for clients that do not)
    try:
        client.subscribe(t, "sh", consumer_type=pulsar.ConsumerType.Shared,
                         is_read_compacted=True)
    except (pulsar.InvalidConfiguration, pulsar.NotAllowedError):
        pass
    else:
        raise AssertionError("read_compacted accepted on Shared")


def check_compaction_batches():
    """Superseded messages inside a kept batch are marked compacted-out and skipped, with
    every codec: compressed batches are opened, judged message by message and, when partly
    superseded, compressed again."""
    codecs = [pulsar.CompressionType.NONE, pulsar.CompressionType.LZ4,
              pulsar.CompressionType.ZLib, pulsar.CompressionType.ZSTD,
              pulsar.CompressionType.SNAPPY]
    for codec in codecs:
        t = "persistent://%s/compacted-batches-%s" % (namespace(), str(codec).split(".")[-1].lower())
        # batches of 4 over k0v0 k1v0 k2v0 k0v1 | k1v1 k2v1 k0v2 k1v2 | k2v2: the first is
        # dropped whole, the second is kept with two of its messages compacted out
        p = client.create_producer(t, batching_enabled=True, batching_max_messages=4,
                                   batching_max_publish_delay_ms=60000,
                                   compression_type=codec)
        for v in range(3):
            for k in range(3):
                p.send_async(b"k%d-v%d" % (k, v) * 20, None, partition_key="k%d" % k)
        p.flush()
        stats = call("GET", t.replace("persistent://", "/admin/v2/persistent/") + "/internalStats")
        assert stats["numberOfEntries"] == 3, (codec, stats)
        compact_now(t)
        got = read_all(t, True)
        assert sorted(got) == [("k%d" % k, b"k%d-v2" % k * 20) for k in range(3)], (codec, got)
        assert len(read_all(t, False)) == 9, codec
        p.close()


def check_compaction_threshold():
    """A namespace threshold starts compaction from housekeeping."""
    ns = namespace()
    call("PUT", "/admin/v2/namespaces/%s/compactionThreshold" % ns, 100)
    assert call("GET", "/admin/v2/namespaces/%s/compactionThreshold" % ns) == 100
    t = "persistent://%s/auto-compacted" % ns
    p = client.create_producer(t, batching_enabled=False)
    for v in range(20):
        p.send(b"value-%d" % v, partition_key="only")
    path = t.replace("persistent://", "/admin/v2/persistent/") + "/compaction"
    wait_for(lambda: call("GET", path)["status"] == "SUCCESS", "threshold compaction")
    # housekeeping may have compacted part way through the sends: the view then holds the
    # latest value at its horizon, and the messages after it follow, uncompacted
    got = read_all(t, True)
    values = [int(v.split(b"-")[1]) for _, v in got]
    assert len(got) < 20 and values == list(range(values[0], 20)), got
    assert all(k == "only" for k, _ in got), got


CHECKS = {name[len("check_"):]: f for name, f in globals().items() if name.startswith("check_")}

for name in sys.argv[3:] or list(CHECKS):
    started = time.time()
    CHECKS[name]()
    print("ok %s (%.2f s)" % (name, time.time() - started), flush=True)
client.close()
