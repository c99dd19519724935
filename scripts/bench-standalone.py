"""Standalone benchmark driven by the official Python client (C++ core).

Usage: bench-standalone.py SERVICE_URL COUNT SIZE
Prints one JSON object: produce MB/s and publish latency at full speed and at a fixed rate,
tailing-consumer MB/s during the full-speed run, and catch-up MB/s of a new subscription.
"""
import json
import multiprocessing
import sys
import threading
import time
import uuid

import pulsar

url, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
client = None  # created after the tail consumer process forks
payload = b"x" * size


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else None


def produce(topic, n, rate=None, sample_every=50):
    """Publishes n messages; latency is sampled on every `sample_every`-th message, because a
    Python callback per message would make the client, not the broker, the limit."""
    p = client.create_producer(topic, batching_enabled=True, batching_max_messages=1000,
                               batching_max_allowed_size_in_bytes=128 * 1024,
                               batching_max_publish_delay_ms=1, max_pending_messages=5000,
                               block_if_queue_full=True, send_timeout_millis=0)
    lat = []

    def cb_for(t0):
        def cb(res, _id):
            lat.append(time.perf_counter() - t0)
        return cb

    start = time.perf_counter()
    for i in range(n):
        if rate:
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        if i % sample_every == 0:
            p.send_async(payload, cb_for(time.perf_counter()))
        else:
            p.send_async(payload, None)
    p.flush()
    elapsed = time.perf_counter() - start
    p.close()
    ms = [x * 1000 for x in lat]
    return {
        "messages": n, "seconds": round(elapsed, 2),
        "msg_per_s": round(n / elapsed), "mb_per_s": round(n * size / elapsed / 1e6, 1),
        "latency_ms_p50": round(pct(ms, 0.5), 2), "latency_ms_p99": round(pct(ms, 0.99), 2),
        "latency_ms_p999": round(pct(ms, 0.999), 2), "latency_samples": len(ms),
    }


def consume(topic, sub, n, out, started=None):
    # its own client, so a consumer in another process shares nothing with the producer
    cl = pulsar.Client(url, io_threads=1, operation_timeout_seconds=60)
    c = cl.subscribe(topic, sub, initial_position=pulsar.InitialPosition.Earliest,
                     receiver_queue_size=5000)
    if started:
        started.set()
    t0 = None
    got = 0
    while got < n:
        m = c.receive(timeout_millis=30000)
        if t0 is None:
            t0 = time.perf_counter()
        got += 1
        c.acknowledge(m)
    elapsed = time.perf_counter() - t0
    c.close()
    cl.close()
    out.update({"messages": got, "seconds": round(elapsed, 2),
                "msg_per_s": round(got / elapsed), "mb_per_s": round(got * size / elapsed / 1e6, 1)})


topic = "persistent://public/default/bench-%s" % uuid.uuid4().hex[:8]
# the tailing consumer runs in its own process: one Python process cannot drive both sides
mp = multiprocessing.get_context("fork")
tail = mp.Manager().dict()
started = mp.Event()
proc = mp.Process(target=consume, args=(topic, "tail", count, tail, started))
proc.start()
started.wait()
client = pulsar.Client(url, io_threads=2, operation_timeout_seconds=60)
full = produce(topic, count)
proc.join()
tail = dict(tail)
catchup = {}
consume(topic, "catchup", count, catchup)
rate = max(1000, full["msg_per_s"] // 2)
paced = produce("persistent://public/default/bench-paced-%s" % uuid.uuid4().hex[:8],
                min(count, rate * 10), rate=rate)
paced["target_msg_per_s"] = rate
print(json.dumps({"size": size, "produce_max": full, "tail_consumer": tail,
                  "catch_up": catchup, "produce_at_half_max": paced}, indent=1))
client.close()
