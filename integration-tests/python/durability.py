"""Phases of the durability tests; the Rust test kills and restarts the standalone between them.

  durability.py produce URL TOPIC RECEIPTS N   send N messages; append "index unix_ms" to
                                              RECEIPTS as each receipt arrives
  durability.py exactly-once URL TOPIC RECEIPTS N   like produce, batched and under one
                                              producer name; then the topic must hold 0..N-1
                                              exactly once (run with deduplication on)
  durability.py delayed-produce URL TOPIC N DELAY_MS WEB   N messages delayed by DELAY_MS
                                              on Shared subscription s, then one immediate;
                                              returns once the broker (at WEB) has indexed them
  durability.py delayed-consume URL TOPIC N DELAY_MS   all of them arrive, none early
  durability.py fill URL TOPIC N SIZE         N messages of SIZE bytes behind subscription s
  durability.py verify URL TOPIC RECEIPTS     every index in RECEIPTS is readable
  durability.py consume URL TOPIC SUB N       receive and ack N messages, close cleanly
  durability.py rest URL TOPIC SUB FIRST LAST  the subscription delivers exactly FIRST..LAST
"""
import sys
import time

import pulsar

cmd, url, topic = sys.argv[1:4]
client = pulsar.Client(url, operation_timeout_seconds=10)

if cmd == "produce":
    path, n = sys.argv[4], int(sys.argv[5])
    out = open(path, "a", buffering=1)
    p = client.create_producer(topic, batching_enabled=False, max_pending_messages=100,
                               block_if_queue_full=True, send_timeout_millis=0)

    def done(i):
        def cb(res, msg_id):
            if res == pulsar.Result.Ok:
                out.write("%d %d\n" % (i, int(time.time() * 1000)))
        return cb

    for i in range(n):
        p.send_async(b"%d" % i, done(i))
    p.flush()
    print("produced", n)
elif cmd == "exactly-once":
    # one named producer, batched, retrying forever across a broker kill -9; with
    # deduplication on, the topic ends up holding each message exactly once, in order
    import time
    path, n = sys.argv[4], int(sys.argv[5])
    out = open(path, "a", buffering=1)
    p = client.create_producer(topic, producer_name="exactly-once", batching_enabled=True,
                               batching_max_messages=20, batching_max_publish_delay_ms=1,
                               max_pending_messages=200, block_if_queue_full=True,
                               send_timeout_millis=0)
    failed = []

    def cb(res, msg_id):
        if res == pulsar.Result.Ok:
            out.write("x\n")
        else:
            failed.append(res)

    for i in range(n):
        p.send_async(b"%d" % i, cb)
    p.flush()
    assert not failed, "sends failed: %s" % failed[:5]
    r = client.create_reader(topic, pulsar.MessageId.earliest)
    seen = []
    while r.has_message_available():
        seen.append(int(r.read_next(timeout_millis=10000).data()))
    dups = len(seen) - len(set(seen))
    missing = sorted(set(range(n)) - set(seen))
    assert not missing, "lost %d, e.g. %s" % (len(missing), missing[:10])
    assert dups == 0, "%d duplicates" % dups
    assert seen == list(range(n)), "out of order"
    print("exactly once:", n)
elif cmd == "delayed-produce":
    import datetime
    import json
    import urllib.request

    from waits import wait_for

    n, delay_ms, web = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
    # a connected consumer makes the dispatcher read, and so index, the delayed entries
    c = client.subscribe(topic, "s", consumer_type=pulsar.ConsumerType.Shared)
    p = client.create_producer(topic, batching_enabled=False)
    for i in range(n):
        p.send_async(b"delayed-%d" % i, None,
                     deliver_after=datetime.timedelta(milliseconds=delay_ms))
    p.flush()
    p.send(b"now")
    # "now" arrives (the delayed ones are held back), and the broker has indexed them all
    assert c.receive(timeout_millis=10000).data() == b"now"
    stats = web + "/admin/v2/" + topic.replace("://", "/") + "/stats"

    def delayed():
        s = json.load(urllib.request.urlopen(stats))
        return s["subscriptions"]["s"].get("msgDelayed", 0)

    wait_for(lambda: delayed() >= n, "%d delayed messages indexed" % n)
    c.close()  # "now" goes back unacknowledged
    print("produced", n, "delayed by", delay_ms, "ms")
elif cmd == "delayed-consume":
    import time
    n, delay_ms = int(sys.argv[4]), int(sys.argv[5])
    c = client.subscribe(topic, "s", consumer_type=pulsar.ConsumerType.Shared)
    got, early = set(), []
    for _ in range(n + 1):
        m = c.receive(timeout_millis=30000)
        now = time.time() * 1000
        if m.data() != b"now":
            got.add(m.data())
            if now + 50 < m.publish_timestamp() + delay_ms:
                early.append(m.data())
        c.acknowledge(m)
    assert not early, "%d delivered early" % len(early)
    assert len(got) == n, "%d of %d delayed messages" % (len(got), n)
    c.close()
    print("delayed delivered", n)
elif cmd == "fill":
    # N messages of SIZE bytes behind subscription s, left unconsumed
    n, size = int(sys.argv[4]), int(sys.argv[5])
    client.subscribe(topic, "s").close()
    p = client.create_producer(topic, batching_enabled=False, block_if_queue_full=True)
    body = b"x" * size
    for i in range(n):
        p.send_async(body, None)
    p.flush()
    print("filled", n, "x", size)
elif cmd == "verify":
    acked = {int(l.split()[0]) for l in open(sys.argv[4]) if l.strip()}
    r = client.create_reader(topic, pulsar.MessageId.earliest)
    seen = set()
    while r.has_message_available():
        seen.add(int(r.read_next(timeout_millis=10000).data()))
    missing = sorted(acked - seen)
    assert not missing, "acknowledged but lost: %d, e.g. %s" % (len(missing), missing[:10])
    print("verified", len(acked), "acknowledged of", len(seen), "stored")
elif cmd == "consume":
    sub, n = sys.argv[4], int(sys.argv[5])
    c = client.subscribe(topic, sub, initial_position=pulsar.InitialPosition.Earliest)
    for _ in range(n):
        c.acknowledge(c.receive(timeout_millis=10000))
    c.close()
    print("consumed", n)
elif cmd == "rest":
    sub, first, last = sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
    c = client.subscribe(topic, sub)
    got = []
    while True:
        try:
            m = c.receive(timeout_millis=1500)
        except Exception:
            break
        got.append(int(m.data()))
        c.acknowledge(m)
    assert got == list(range(first, last + 1)), "expected %d..%d, got %s" % (first, last, got[:20])
    print("rest ok", len(got))
else:
    raise SystemExit("unknown phase " + cmd)
client.close()
