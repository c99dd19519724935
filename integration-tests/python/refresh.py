"""Credentials refresh: the client's token expires while it is connected; the broker
challenges it and it answers with a fresh token from its supplier, without reconnecting.

Usage: refresh.py SERVICE_URL WEB_PORT SHORT_TOKEN LONG_TOKEN
"""
import sys
import time
import uuid

import pulsar

URL, SHORT, LONG = sys.argv[1], sys.argv[3], sys.argv[4]
calls = []


def supplier():
    calls.append(time.time())
    return SHORT if len(calls) == 1 else LONG


client = pulsar.Client(URL, authentication=pulsar.AuthenticationToken(supplier),
                       operation_timeout_seconds=10)
topic = "persistent://public/default/refresh-%s" % uuid.uuid4().hex[:8]
consumer = client.subscribe(topic, "s")
producer = client.create_producer(topic)
producer.send(b"before")
deadline = time.time() + 20
while len(calls) < 2 and time.time() < deadline:
    time.sleep(0.2)
assert len(calls) >= 2, "the broker never asked for fresh credentials"
time.sleep(2)  # past the next check: a closed connection would show now
producer.send(b"after")
got = [consumer.receive(timeout_millis=10000).data() for _ in range(2)]
assert got == [b"before", b"after"], got
client.close()
print("refresh ok after %d supplier calls" % len(calls))
