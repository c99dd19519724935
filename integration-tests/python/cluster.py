"""Phases of the cluster tests (two brokers over etcd and three bookies); the Rust test
starts the processes and kills them between phases; producing, consuming and verifying
are durability.py's phases.

  cluster.py spread URL1 URL2 WEB1 WEB2 N NS   N topics in namespace NS: each produced through one broker and
                                            consumed through the other; both brokers'
                                            HTTP lookups agree on each topic's owner, and
                                            both brokers own some; topic stats answer
                                            through either broker. Prints the owner count.
  cluster.py next URL TOPIC SUB             print the index of the next message SUB gets
"""
import json
import sys
import urllib.request

import pulsar


def owner(web, topic):
    path = topic.replace("persistent://", "persistent/")
    with urllib.request.urlopen("%s/lookup/v2/topic/%s" % (web, path), timeout=10) as r:
        return json.load(r)["brokerUrl"]


cmd = sys.argv[1]
if cmd == "spread":
    url1, url2, web1, web2, n, ns = sys.argv[2:8]
    c1 = pulsar.Client(url1, operation_timeout_seconds=20)
    c2 = pulsar.Client(url2, operation_timeout_seconds=20)
    owners = {}
    for i in range(int(n)):
        topic = "persistent://%s/spread-%d" % (ns, i)
        pc, cc = (c1, c2) if i % 2 == 0 else (c2, c1)
        consumer = cc.subscribe(topic, "s")
        producer = pc.create_producer(topic)
        for j in range(10):
            producer.send(b"%d-%d" % (i, j))
        for j in range(10):
            m = consumer.receive(timeout_millis=20000)
            assert m.data() == b"%d-%d" % (i, j), (topic, m.data())
            consumer.acknowledge(m)
        a, b = owner(web1, topic), owner(web2, topic)
        assert a == b, "%s: lookups disagree: %s vs %s" % (topic, a, b)
        # admin requests reach the owner from either broker (307 to it)
        for web in (web1, web2):
            stats = "%s/admin/v2/%s/stats" % (web, topic.replace("persistent://", "persistent/"))
            with urllib.request.urlopen(stats, timeout=10) as r:
                assert "s" in json.load(r)["subscriptions"], (web, topic)
        owners[a] = owners.get(a, 0) + 1
        producer.close()
        consumer.close()
    print("owners:", owners)
    assert len(owners) == 2, "all topics on one broker: %s" % owners
elif cmd == "next":
    url, topic, sub = sys.argv[2], sys.argv[3], sys.argv[4]
    client = pulsar.Client(url, operation_timeout_seconds=30)
    c = client.subscribe(topic, sub)
    print("next", int(c.receive(timeout_millis=30000).data()))
else:
    sys.exit("unknown phase %s" % cmd)
