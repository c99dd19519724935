"""The authorization matrix against a standalone run with authentication and authorization
on (super-user role `root`): no token, expired token, wrong role, right role, tenant admin
and super-user, for produce, consume, lookup and admin calls.

Usage: authz.py SERVICE_URL WEB_PORT TOKENS_JSON
TOKENS_JSON maps role names (root, boss, writer, reader, other, topicwriter, stranger,
expired) to tokens; `expired` is the writer's, past its expiry.
"""
import json
import sys
import urllib.error
import urllib.request
import uuid

import pulsar

URL, WEB = sys.argv[1], "http://127.0.0.1:%d" % int(sys.argv[2])
TOK = json.loads(sys.argv[3])
A = "/admin/v2"
tenant = "acme-%s" % uuid.uuid4().hex[:6]
ns = tenant + "/ns"


def call(method, path, role=None, body=None):
    headers = {}
    if role:
        headers["Authorization"] = "Bearer " + TOK[role]
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(WEB + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        reason = json.loads(e.read())["reason"]
        assert reason, (method, path)
        return e.code


def expect(method, path, table, body=None):
    """table: {role or None: status}"""
    for role, want in table.items():
        got = call(method, path, role, body)
        assert got == want, "%s %s as %s: %d, expected %d" % (method, path, role, got, want)


# set-up, as the super-user
assert call("PUT", A + "/tenants/" + tenant, "root", {"adminRoles": ["boss"], "allowedClusters": ["standalone"]}) == 204
assert call("PUT", A + "/tenants/other-" + tenant, "root", {"adminRoles": ["someone"]}) == 204
assert call("PUT", A + "/namespaces/" + ns, "boss") == 204
assert call("POST", A + "/namespaces/%s/permissions/writer" % ns, "boss", ["produce"]) == 204
assert call("POST", A + "/namespaces/%s/permissions/reader" % ns, "boss", ["consume"]) == 204
assert call("POST", A + "/namespaces/%s/permissions/other" % ns, "boss", ["consume"]) == 204
assert call("POST", A + "/namespaces/%s/permissions/subscription/locked" % ns, "boss", ["reader"]) == 204
t1 = "persistent://%s/t1" % ns
t2 = "persistent://%s/t2" % ns
assert call("PUT", A + "/persistent/%s/t1" % ns, "boss") == 204
assert call("PUT", A + "/persistent/%s/t2" % ns, "boss") == 204
assert call("POST", A + "/persistent/%s/t1/permissions/topicwriter" % ns, "boss", ["produce"]) == 204
perms = call("GET", A + "/namespaces/%s/permissions" % ns, "boss")
assert perms == 200


def client(role):
    auth = pulsar.AuthenticationToken(TOK[role]) if role else None
    kwargs = {"authentication": auth} if auth else {}
    return pulsar.Client(URL, operation_timeout_seconds=5, **kwargs)


AUTHN_REFUSALS = ("AuthenticationError", "Timeout", "ConnectError")


def can(role, action, topic, sub="s"):
    c = client(role)
    try:
        if action == "produce":
            c.create_producer(topic).send(b"x")
        elif action == "consume":
            c.subscribe(topic, sub)
        elif action == "lookup":
            c.get_topic_partitions(topic)
        return True
    except Exception as e:
        # a refusal must be the broker saying no, not something else going wrong; the
        # C++ client retries a refused handshake until its operation timeout
        kinds = AUTHN_REFUSALS if role in (None, "expired") else ("AuthorizationError",)
        assert type(e).__name__ in kinds, "%s %s %s: %r" % (role, action, topic, e)
        return False
    finally:
        c.close()


matrix = [
    # role, action, topic, subscription, allowed
    ("root", "produce", t1, "s", True),
    ("boss", "produce", t1, "s", True),
    ("writer", "produce", t1, "s", True),
    ("topicwriter", "produce", t1, "s", True),
    ("topicwriter", "produce", t2, "s", False),
    ("reader", "produce", t1, "s", False),
    ("stranger", "produce", t1, "s", False),
    (None, "produce", t1, "s", False),
    ("expired", "produce", t1, "s", False),
    ("root", "consume", t1, "s", True),
    ("boss", "consume", t1, "s", True),
    ("reader", "consume", t1, "s", True),
    ("reader", "consume", t1, "locked", True),
    ("other", "consume", t1, "s2", True),
    ("other", "consume", t1, "locked", False),
    ("writer", "consume", t1, "s", False),
    ("stranger", "consume", t1, "s", False),
    (None, "consume", t1, "s", False),
    ("expired", "consume", t1, "s", False),
    ("writer", "lookup", t1, "s", True),
    ("reader", "lookup", t1, "s", True),
    ("stranger", "lookup", t1, "s", False),
    ("expired", "lookup", t1, "s", False),
]
for role, action, topic, sub, allowed in matrix:
    got = can(role, action, topic, sub)
    assert got == allowed, "%s %s %s (%s): %s, expected %s" % (role, action, topic, sub, got, allowed)

# admin calls
tp = A + "/persistent/%s/t1" % ns
expect("GET", A + "/tenants", {"root": 200, "boss": 403, "writer": 403, None: 401, "expired": 401})
expect("GET", A + "/tenants/" + tenant, {"root": 200, "boss": 200, "writer": 403, "stranger": 403})
expect("GET", A + "/tenants/other-" + tenant, {"root": 200, "boss": 403})
expect("PUT", A + "/clusters/elsewhere", {"boss": 403, "writer": 403}, {"serviceUrl": "http://e:8080"})
expect("PUT", A + "/namespaces/%s/ns2" % tenant, {"writer": 403, "stranger": 403, None: 401, "boss": 204})
expect("PUT", A + "/namespaces/other-%s/ns" % tenant, {"boss": 403, "root": 204})
expect("POST", A + "/namespaces/%s/retention" % ns,
       {"writer": 403, "reader": 403, "boss": 204},
       {"retentionTimeInMinutes": 10, "retentionSizeInMB": 10})
expect("GET", A + "/namespaces/%s/topics" % ns, {"reader": 200, "writer": 200, "stranger": 403, None: 401})
expect("GET", tp + "/stats", {"writer": 200, "reader": 200, "boss": 200, "stranger": 403, "expired": 401})
expect("GET", "/lookup/v2/topic/persistent/%s/t1" % ns, {"writer": 200, "stranger": 403})
expect("POST", tp + "/subscription/s/skip/1", {"writer": 403, "reader": 204, "other": 204})
expect("POST", tp + "/subscription/locked/skip/1", {"other": 403, "reader": 204})
expect("POST", tp + "/terminate", {"writer": 403, "reader": 403})
expect("POST", tp + "/permissions/stranger", {"writer": 403, "stranger": 403}, ["produce"])
expect("GET", "/metrics", {None: 200})
expect("GET", A + "/brokers/health", {None: 200})
expect("GET", A + "/brokers", {"boss": 403, "root": 200})

# a revoked grant stops the next producer
assert call("DELETE", A + "/namespaces/%s/permissions/writer" % ns, "boss") == 204
assert not can("writer", "produce", t1)
assert call("POST", A + "/namespaces/%s/permissions/writer" % ns, "boss", ["produce"]) == 204
assert can("writer", "produce", t1)

expect("DELETE", tp + "?force=true", {"writer": 403, "boss": 204})
print("authz ok")
