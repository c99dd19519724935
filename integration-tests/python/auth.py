"""Token authentication against a Magnetar standalone run with --authentication-enabled.

Usage: auth.py SERVICE_URL WEB_PORT GOOD_TOKEN EXPIRED_TOKEN
"""
import sys
import urllib.error
import urllib.request
import uuid

import pulsar

URL, WEB_PORT, GOOD, EXPIRED = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
WEB = "http://127.0.0.1:%d" % WEB_PORT
topic = "persistent://public/default/auth-%s" % uuid.uuid4().hex[:8]

# the right token: produce and consume
good = pulsar.Client(URL, authentication=pulsar.AuthenticationToken(GOOD),
                     operation_timeout_seconds=10)
c = good.subscribe(topic, "s")
good.create_producer(topic).send(b"hello")
assert c.receive(timeout_millis=10000).data() == b"hello"
good.close()

# no token, a wrong token, an expired token: refused
for name, auth in (("no token", None), ("wrong token", pulsar.AuthenticationToken(GOOD[:-4] + "AAAA")),
                   ("expired token", pulsar.AuthenticationToken(EXPIRED))):
    kwargs = {"authentication": auth} if auth else {}
    client = pulsar.Client(URL, operation_timeout_seconds=3, **kwargs)
    try:
        client.create_producer(topic)
    except Exception:
        pass
    else:
        raise AssertionError("%s: producer admitted" % name)
    finally:
        client.close()


def status(path, token=None):
    req = urllib.request.Request(WEB + path)
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        return urllib.request.urlopen(req).status
    except urllib.error.HTTPError as e:
        return e.code


assert status("/admin/v2/persistent/public/default") == 401
assert status("/admin/v2/persistent/public/default", EXPIRED) == 401
assert status("/admin/v2/persistent/public/default", GOOD) == 200
assert status("/admin/v2/brokers/health") == 200
print("auth ok")
