"""REST conformance of the admin API v2: clusters, tenants, namespaces, topics,
subscriptions, bundles, brokers and lookup. Status codes and bodies as Pulsar answers them;
bad input never gets a 5xx.

Usage: admin.py SERVICE_URL WEB_PORT
"""
import json
import sys
import time
import urllib.error
import urllib.request
import uuid

import pulsar
from waits import wait_for

URL, WEB = sys.argv[1], "http://127.0.0.1:%d" % int(sys.argv[2])
A = "/admin/v2"


def call(method, path, body=None, raw=False, expect=None):
    data = None
    headers = {}
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(WEB + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, payload, hdrs = r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        status, payload, hdrs = e.code, e.read(), e.headers
    if status >= 400:
        # every error carries {"reason": ...}
        reason = json.loads(payload)
        assert isinstance(reason.get("reason"), str), (method, path, payload)
    if expect is not None:
        assert status == expect, "%s %s: %d, expected %d: %r" % (method, path, status, expect, payload[:300])
    if raw:
        return status, payload, hdrs
    return status, (json.loads(payload) if payload and status < 300 and not raw else payload)


# --- clusters ---
assert call("GET", A + "/clusters", expect=200)[1] == ["standalone"]
assert "brokerServiceUrl" in call("GET", A + "/clusters/standalone", expect=200)[1]
call("GET", A + "/clusters/nowhere", expect=404)
call("PUT", A + "/clusters/other", {"serviceUrl": "http://other:8080"}, expect=204)
call("PUT", A + "/clusters/other", {"serviceUrl": "http://other:8080"}, expect=409)
call("POST", A + "/clusters/other", {"serviceUrl": "http://other:9090"}, expect=204)
assert call("GET", A + "/clusters/other", expect=200)[1]["serviceUrl"] == "http://other:9090"
call("DELETE", A + "/clusters/other", expect=204)
call("DELETE", A + "/clusters/standalone", expect=412)

# --- tenants ---
tenant = "acme-%s" % uuid.uuid4().hex[:6]
info = {"adminRoles": ["boss"], "allowedClusters": ["standalone"]}
call("PUT", A + "/tenants/" + tenant, info, expect=204)
call("PUT", A + "/tenants/" + tenant, info, expect=409)
assert call("GET", A + "/tenants/" + tenant, expect=200)[1] == info
assert tenant in call("GET", A + "/tenants", expect=200)[1]
call("PUT", A + "/tenants/other", {"allowedClusters": ["nowhere"]}, expect=412)
call("PUT", A + "/tenants/a%20b", info, expect=412)
call("PUT", A + "/tenants/x", b"{not json", expect=400)
call("POST", A + "/tenants/" + tenant, {"adminRoles": ["boss", "deputy"], "allowedClusters": ["standalone"]}, expect=204)
assert call("GET", A + "/tenants/" + tenant, expect=200)[1]["adminRoles"] == ["boss", "deputy"]
call("POST", A + "/tenants/nobody-here", info, expect=404)
# a tenant not allowed on this cluster gets no namespace here
call("PUT", A + "/clusters/elsewhere", {"serviceUrl": "http://elsewhere:8080"}, expect=204)
call("PUT", A + "/tenants/%s-away" % tenant, {"allowedClusters": ["elsewhere"]}, expect=204)
call("PUT", A + "/namespaces/%s-away/ns" % tenant, expect=403)
call("DELETE", A + "/clusters/elsewhere", expect=409)
call("DELETE", A + "/tenants/%s-away" % tenant, expect=204)
call("DELETE", A + "/clusters/elsewhere", expect=204)
call("GET", A + "/tenants/nobody-here", expect=404)

# --- namespaces ---
ns = tenant + "/ns1"
call("PUT", A + "/namespaces/" + ns, expect=204)
call("PUT", A + "/namespaces/" + ns, expect=409)
call("PUT", A + "/namespaces/nobody-here/ns", expect=404)
call("PUT", A + "/namespaces/%s/bad%%20name" % tenant, expect=412)
assert call("GET", A + "/namespaces/" + tenant, expect=200)[1] == [ns]
pol = call("GET", A + "/namespaces/" + ns, expect=200)[1]
assert pol["bundles"]["numBundles"] == 4, pol
b = call("GET", A + "/namespaces/%s/bundles" % ns, expect=200)[1]
first = "%s_%s" % (b["boundaries"][0], b["boundaries"][1])
call("PUT", A + "/namespaces/%s/%s/split" % (ns, first), expect=204)
assert call("GET", A + "/namespaces/%s/bundles" % ns, expect=200)[1]["numBundles"] == 5
call("PUT", A + "/namespaces/%s/0x1_0x2/split" % ns, expect=412)
call("POST", A + "/namespaces/%s/maxProducersPerTopic" % ns, 1, expect=204)
assert call("GET", A + "/namespaces/%s/maxProducersPerTopic" % ns, expect=200)[1] == 1
call("POST", A + "/namespaces/%s/maxProducersPerTopic" % ns, -3, expect=412)
call("POST", A + "/namespaces/%s/maxConsumersPerSubscription" % ns, 1, expect=204)
call("PUT", A + "/namespaces/%s/offloadThreshold" % ns, 1048576, expect=204)
assert call("GET", A + "/namespaces/%s/offloadThreshold" % ns, expect=200)[1] == 1048576
call("PUT", A + "/namespaces/%s/offloadThreshold" % ns, -7, expect=412)
call("PUT", A + "/namespaces/%s/offloadDeletionLagMs" % ns, 60000, expect=204)
call("DELETE", A + "/namespaces/%s/offloadDeletionLagMs" % ns, expect=204)
assert call("GET", A + "/namespaces/%s/replication" % ns, expect=200)[1] == ["standalone"]
call("POST", A + "/namespaces/%s/replication" % ns, ["nowhere"], expect=412)
call("POST", A + "/namespaces/%s/replication" % ns, ["standalone"], expect=204)
assert call("GET", A + "/namespaces/%s/permissions" % ns, expect=200)[1] == {}
# grants are kept while authorization is off (Pulsar answers 501), ready for when it is on
call("POST", A + "/namespaces/%s/permissions/bob" % ns, ["produce"], expect=204)
assert call("GET", A + "/namespaces/%s/permissions" % ns, expect=200)[1] == {"bob": ["produce"]}
call("POST", A + "/namespaces/%s/permissions/bob" % ns, ["delete-everything"], expect=412)
call("DELETE", A + "/namespaces/%s/permissions/bob" % ns, expect=204)
assert call("GET", A + "/namespaces/%s/permissions" % ns, expect=200)[1] == {}

# --- topics ---
t1 = "persistent://%s/t1" % ns
tp = A + "/persistent/%s/t1" % ns
call("PUT", tp, expect=204)
call("PUT", tp, expect=409)
call("PUT", tp + "/partitions", 3, expect=409)
call("PUT", A + "/persistent/%s/p1/partitions" % ns, 3, expect=204)
assert call("GET", A + "/persistent/%s/partitioned" % ns, expect=200)[1] == ["persistent://%s/p1" % ns]
assert t1 in call("GET", A + "/persistent/" + ns, expect=200)[1]
assert call("GET", A + "/namespaces/%s/topics" % ns, expect=200)[1] == [t1]
call("GET", A + "/persistent/%s/absent/stats" % ns, expect=404)
call("PUT", A + "/persistent/%s/nsless" % "nobody/ns", expect=404)

client = pulsar.Client(URL, operation_timeout_seconds=10)
producer = client.create_producer(t1, batching_enabled=False)
ids = [producer.send(("m%d" % i).encode(), properties={"k": "v%d" % i}) for i in range(10)]
# at most one producer per topic in this namespace
try:
    client.create_producer(t1)
    raise AssertionError("a second producer got past maxProducersPerTopic=1")
except pulsar.ProducerBusy:
    pass

# a non-persistent topic has stats while it is loaded, at its own domain's path
np = A + "/non-persistent/%s/np1" % ns
call("GET", np + "/stats", expect=404)
np_producer = client.create_producer("non-persistent://%s/np1" % ns, batching_enabled=False)
for i in range(3):
    np_producer.send(b"np")
assert call("GET", A + "/non-persistent/" + ns, expect=200)[1] == ["non-persistent://%s/np1" % ns]
np_stats = call("GET", np + "/stats", expect=200)[1]
assert np_stats["msgInCounter"] == 3 and len(np_stats["publishers"]) == 1, np_stats
np_producer.close()

call("PUT", tp + "/subscription/s1", {"ledgerId": -1, "entryId": -1}, expect=204)
call("PUT", tp + "/subscription/s1", expect=409)
call("PUT", tp + "/subscription/latest", expect=204)
assert call("GET", tp + "/subscriptions", expect=200)[1] == ["latest", "s1"]


def backlog(sub):
    return call("GET", tp + "/stats", expect=200)[1]["subscriptions"][sub]["msgBacklog"]


assert backlog("s1") == 10 and backlog("latest") == 0
status, body, hdrs = call("GET", tp + "/subscription/s1/position/1", raw=True, expect=200)
assert body == b"m0" and hdrs["X-Pulsar-PROPERTY-k"] == "v0", (body, hdrs)
assert hdrs["X-Pulsar-Message-ID"] == "%d:%d" % (ids[0].ledger_id(), ids[0].entry_id()), hdrs
call("GET", tp + "/subscription/s1/position/11", expect=404)
call("GET", tp + "/subscription/s1/position/0", expect=412)
call("POST", tp + "/subscription/s1/skip/3", expect=204)
assert backlog("s1") == 7
assert call("GET", tp + "/subscription/s1/position/1", raw=True)[1] == b"m3"
call("POST", tp + "/subscription/s1/resetcursor/0", expect=204)
assert backlog("s1") == 10
call("POST", tp + "/subscription/s1/resetcursor",
     {"ledgerId": ids[5].ledger_id(), "entryId": ids[5].entry_id()}, expect=204)
assert backlog("s1") == 5
assert call("GET", tp + "/subscription/s1/position/1", raw=True)[1] == b"m5"
call("POST", tp + "/subscription/s1/resetcursor",
     {"ledgerId": ids[5].ledger_id(), "entryId": ids[5].entry_id(), "isExcluded": True}, expect=204)
assert backlog("s1") == 4
call("POST", tp + "/subscription/s1/skip_all", expect=204)
assert backlog("s1") == 0
call("POST", tp + "/subscription/s1/resetcursor/0", expect=204)
call("POST", tp + "/subscription/s1/expireMessages/3600", expect=204)
assert backlog("s1") == 10, "nothing is an hour old"
# expiry by age needs the messages to be a second old: wait for the newest one's age
newest = int(call("GET", tp + "/subscription/s1/position/10", raw=True)[2]["X-Pulsar-publish-time"])
wait_for(lambda: time.time() * 1000 > newest + 1000, "the messages to be a second old")
call("POST", tp + "/subscription/s1/expireMessages/1", expect=204)
assert backlog("s1") == 0
call("POST", tp + "/subscription/s1/resetcursor/0", expect=204)
call("POST", tp + "/all_subscription/expireMessages/1", expect=204)
assert backlog("s1") == 0
call("POST", tp + "/subscription/nope/skip/1", expect=404)
call("POST", tp + "/subscription/s1/skip/x", expect=412)

last = call("GET", tp + "/lastMessageId", expect=200)[1]
assert (last["ledgerId"], last["entryId"]) == (ids[-1].ledger_id(), ids[-1].entry_id()), last

# a consumer connected: deleting its subscription needs force
consumer = client.subscribe(t1, "s2")
call("DELETE", tp + "/subscription/s2", expect=412)
call("DELETE", tp + "/subscription/s2?force=true", expect=204)
assert "s2" not in call("GET", tp + "/subscriptions")[1]
# one consumer per subscription
c1 = client.subscribe(t1, "one", consumer_type=pulsar.ConsumerType.Shared)
try:
    client.subscribe(t1, "one", consumer_type=pulsar.ConsumerType.Shared)
    raise AssertionError("a second consumer got past maxConsumersPerSubscription=1")
except pulsar.ConsumerBusy:
    pass
c1.close()

# no subscription is created by subscribing while the namespace says so
call("POST", A + "/namespaces/%s/autoSubscriptionCreation" % ns,
     {"allowAutoSubscriptionCreation": False}, expect=204)
# (the C++ client takes SubscriptionNotFound as temporary and retries until its timeout)
impatient = pulsar.Client(URL, operation_timeout_seconds=3)
try:
    impatient.subscribe(t1, "unknown-sub")
    raise AssertionError("subscribed to an absent subscription")
except (pulsar.SubscriptionNotFound, pulsar.Timeout):
    pass
impatient.close()
assert "unknown-sub" not in call("GET", tp + "/subscriptions", expect=200)[1]
client.subscribe(t1, "s1").close()  # an existing one is fine
call("DELETE", A + "/namespaces/%s/autoSubscriptionCreation" % ns, expect=204)
# at most so many topics in the namespace (t1 and 3 partitions exist or will)
call("POST", A + "/namespaces/%s/maxTopicsPerNamespace" % ns, 1, expect=204)
call("PUT", A + "/persistent/%s/one-too-many" % ns, expect=412)
call("DELETE", A + "/namespaces/%s/maxTopicsPerNamespace" % ns, expect=204)

# partitioned stats sum the partitions
pp = client.create_producer("persistent://%s/p1" % ns, batching_enabled=False)
for i in range(9):
    pp.send(b"x", partition_key=str(i))
ps = call("GET", A + "/persistent/%s/p1/partitioned-stats" % ns, expect=200)[1]
assert ps["metadata"]["partitions"] == 3 and ps["msgInCounter"] == 9, ps
assert len(ps["partitions"]) == 3, ps
pis = call("GET", A + "/persistent/%s/p1/partitioned-internalStats" % ns, expect=200)[1]
assert len(pis["partitions"]) == 3 and all("ledgers" in v for v in pis["partitions"].values()), pis
call("GET", A + "/persistent/%s/t1/partitioned-internalStats" % ns, expect=404)
pp.close()

call("PUT", tp + "/unload", expect=204)
assert backlog("s1") == 0, "stats again after the unload"

# lookup and bundles
bundle = call("GET", "/lookup/v2/topic/persistent/%s/t1/bundle" % ns, expect=200)[1]
assert bundle.startswith("0x") and "_0x" in bundle, bundle
look = call("GET", "/lookup/v2/topic/persistent/%s/t1" % ns, expect=200)[1]
assert look["brokerUrl"].startswith("pulsar://"), look
call("PUT", A + "/namespaces/%s/%s/unload" % (ns, bundle), expect=204)
call("PUT", A + "/namespaces/%s/unload" % ns, expect=204)

# brokers
brokers = call("GET", A + "/brokers", expect=200)[1]
assert call("GET", A + "/brokers/standalone", expect=200)[1] == brokers
owned = call("GET", A + "/brokers/standalone/%s/ownedNamespaces" % brokers[0], expect=200)[1]
assert any(k.startswith(ns + "/0x") for k in owned), owned
assert "serviceUrl" in call("GET", A + "/brokers/leaderBroker", expect=200)[1]

# deleting: topics with clients need force; namespaces and tenants must be empty
client.close()
client = pulsar.Client(URL, operation_timeout_seconds=10)
holder = client.create_producer(t1)
# the holder reconnects after the forced delete; without auto-creation it cannot bring the
# topic back, so what is checked below is the deletion
call("POST", A + "/namespaces/%s/autoTopicCreation" % ns, {"allowAutoTopicCreation": False},
     expect=204)
call("DELETE", tp, expect=412)
call("DELETE", A + "/namespaces/" + ns, expect=409)
call("DELETE", A + "/tenants/" + tenant, expect=409)
call("DELETE", tp + "?force=true", expect=204)
call("GET", tp + "/stats", expect=404)
call("DELETE", A + "/persistent/%s/p1/partitions" % ns, expect=204)
call("DELETE", A + "/namespaces/" + ns, expect=204)
call("GET", A + "/namespaces/" + ns, expect=404)
call("DELETE", A + "/tenants/" + tenant, expect=204)
call("GET", A + "/tenants/" + tenant, expect=404)
client.close()

# every operation the OpenAPI document lists is routed (never the catch-all answers)
doc = call("GET", A + "/openapi.json", expect=200)[1]
assert doc["openapi"].startswith("3."), doc.keys()
for path, ops in doc["paths"].items():
    concrete = path
    for name, value in (("{domain}", "persistent"), ("{count}", "1"), ("{timestamp}", "1"),
                        ("{seconds}", "1"), ("{position}", "1")):
        concrete = concrete.replace(name, value)
    while "{" in concrete:
        start = concrete.index("{")
        concrete = concrete[:start] + "nosuch" + concrete[concrete.index("}") + 1:]
    for method in ops:
        if method == "delete" and concrete.count("/") <= 5:
            continue  # no need to delete clusters or tenants named nosuch; they do not exist
        status, body, _ = call(method.upper(), concrete, None, raw=True)
        if status >= 400:
            reason = json.loads(body)["reason"]
            assert reason not in ("No such admin path", "Method not allowed on this path"), \
                "%s %s is documented but not routed" % (method, path)

# bad input: clear errors, never a 5xx
bad = [
    ("GET", "/no/such/path", None),
    ("PATCH", A + "/tenants/x", None),
    ("PUT", A + "/tenants/x", b"[1,2"),
    ("PUT", A + "/tenants/x", b"\"str\""),
    ("PUT", A + "/namespaces/public/x", b"{\"bundles\": 7}"),
    ("POST", A + "/namespaces/public/default/retention", b"nope"),
    ("POST", A + "/namespaces/public/default/retention", b"[10, 10]"),
    ("POST", A + "/namespaces/public/default/backlogQuota", b"[1, 2, \"producer_exception\"]"),
    ("POST", A + "/namespaces/public/default/messageTTL", b"{}"),
    ("POST", A + "/namespaces/public/default/backlogQuota", b"{}"),
    ("PUT", A + "/persistent/public/default/x/partitions", b"-1"),
    ("PUT", A + "/persistent/public/default/x/partitions", b"{\"partitions\": \"many\"}"),
    ("POST", A + "/persistent/public/default/x/subscription/s/resetcursor", b"{]"),
    ("PUT", A + "/persistent/public/default/x/subscription/s", b"7"),
    ("GET", A + "/persistent/public/default/%00/stats", None),
    ("GET", A + "/persistent/pub%2Flic/default/x/stats", None),
    ("PUT", A + "/clusters/c", b"null"),
    ("GET", "/lookup/v2/topic/bogus/public/default/x", None),
    ("PUT", A + "/namespaces/public/default/0xzz_0x10/split", None),
]
for method, path, body in bad:
    status = call(method, path, body)[0]
    assert 400 <= status < 500, "%s %s -> %d" % (method, path, status)
print("admin ok")
