"""Publish and dispatch rate limits throttle (they never fail a send), per namespace and
per topic. Only lower bounds on elapsed time are checked: a slow machine cannot fail them.

Usage: rates.py SERVICE_URL WEB_PORT
"""
import json
import sys
import time
import urllib.error
import urllib.request
import uuid

import pulsar
from waits import wait_housekeeping

URL, WEB = sys.argv[1], "http://127.0.0.1:%d" % int(sys.argv[2])
A = "/admin/v2"
ns = "public/rates-%s" % uuid.uuid4().hex[:6]


def call(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(WEB + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        payload = r.read()
        return json.loads(payload) if payload else None


call("PUT", A + "/namespaces/" + ns)
call("POST", A + "/namespaces/%s/publishRate" % ns, {"publishThrottlingRateInMsg": 200})
assert call("GET", A + "/namespaces/%s/publishRate" % ns)["publishThrottlingRateInMsg"] == 200
client = pulsar.Client(URL, operation_timeout_seconds=30)


def publish(topic, n):
    p = client.create_producer(topic, batching_enabled=False, max_pending_messages=100,
                               block_if_queue_full=True)
    results = []
    start = time.time()
    for i in range(n):
        p.send_async(b"x" * 100, lambda res, _id: results.append(res))
    p.flush()
    took = time.time() - start
    p.close()
    assert len(results) == n and all(r == pulsar.Result.Ok for r in results), results[:3]
    return took


# 600 messages at 200/s: the first second's burst is free, the rest takes ~2 s
took = publish("persistent://%s/pub" % ns, 600)
assert took >= 1.5, "600 messages at 200/s took %.2fs" % took
print("publish 600 at 200/s: %.2fs" % took)

# a topic's own rate wins over the namespace's
topic = "persistent://%s/own" % ns
client.create_producer(topic).close()
call("POST", A + "/persistent/%s/own/publishRate" % ns, {"publishThrottlingRateInMsg": 100})
wait_housekeeping(WEB, 2)  # housekeeping applies changed policies to loaded topics
took = publish(topic, 300)
assert took >= 1.5, "300 messages at 100/s took %.2fs" % took
print("publish 300 at 100/s (topic policy): %.2fs" % took)

# dispatch: a backlog of 300 read at 100/s
call("DELETE", A + "/namespaces/%s/publishRate" % ns)
call("POST", A + "/namespaces/%s/dispatchRate" % ns,
     {"dispatchThrottlingRateInMsg": 200, "ratePeriodInSecond": 2})
topic = "persistent://%s/disp" % ns
consumer = client.subscribe(topic, "s", receiver_queue_size=10)
publish(topic, 300)
start = time.time()
for _ in range(300):
    consumer.acknowledge(consumer.receive(timeout_millis=30000))
took = time.time() - start
assert took >= 1.5, "300 messages at 100/s took %.2fs to read" % took
print("dispatch 300 at 100/s: %.2fs" % took)

# subscribes: 2 per client per 30 s, then TooManyRequests (retried by the client until
# its timeout)
call("POST", A + "/namespaces/%s/subscribeRate" % ns,
     {"subscribeThrottlingRatePerConsumer": 2, "ratePeriodInSecond": 30})
assert call("GET", A + "/namespaces/%s/subscribeRate" % ns)["subscribeThrottlingRatePerConsumer"] == 2
sub_client = pulsar.Client(URL, operation_timeout_seconds=3)
topic = "persistent://%s/subs" % ns
sub_client.subscribe(topic, "a").close()
sub_client.subscribe(topic, "b").close()
try:
    sub_client.subscribe(topic, "c")
    raise AssertionError("a third subscribe got through")
except (pulsar.TooManyLookupRequestException, pulsar.Timeout):
    pass
sub_client.close()
subs = call("GET", A + "/persistent/%s/subs/subscriptions" % ns)
assert subs == ["a", "b"], subs
call("DELETE", A + "/namespaces/%s/subscribeRate" % ns)

# bad rates are refused
for body in ({"publishThrottlingRateInMsg": "fast"}, [1]):
    try:
        call("POST", A + "/namespaces/%s/publishRate" % ns, body)
        raise AssertionError("accepted %r" % body)
    except urllib.error.HTTPError as e:
        assert e.code == 400, e.code
client.close()
print("rates ok")
