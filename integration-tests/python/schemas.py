"""The schema registry with the official Python client: JSON and Avro round trips, the
version on received messages, incompatible producers and consumers refused, evolution under
BACKWARD, and the admin API's schema paths (with bad input answered clearly).

Usage: schemas.py SERVICE_URL WEB_PORT
"""
import json
import sys
import urllib.error
import urllib.request
import uuid

import pulsar
from pulsar.schema import AvroSchema, Integer, JsonSchema, Record, String, StringSchema

URL, WEB = sys.argv[1], "http://127.0.0.1:%s" % sys.argv[2]
client = pulsar.Client(URL, operation_timeout_seconds=10)


def name(prefix, ns="public/default"):
    return "persistent://%s/%s-%s" % (ns, prefix, uuid.uuid4().hex[:8])


def http(method, path, body=None):
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(WEB + path, method=method, data=data,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read()
            return r.status, json.loads(text) if text else None
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def version_of(msg):
    v = msg.schema_version()
    raw = v.encode("latin-1") if isinstance(v, str) else bytes(v)
    return int.from_bytes(raw, "big") if raw else None


class User(Record):
    name = String()
    age = Integer()


def user_v2():
    # the same record without `age`: its readers read old data (they skip the field), but
    # readers of the old one cannot read its data (no `age`, and Python records declare no
    # defaults): BACKWARD, not FULL
    class User(Record):
        name = String()
    return User


def user_bad_age():
    # age as text: neither old nor new readers can take the other's data
    class User(Record):
        name = String()
        age = String()
    return User


def refused(what, attempt):
    try:
        attempt()
    except pulsar.IncompatibleSchema:
        print("%s: IncompatibleSchema" % what)
        return
    raise AssertionError("%s was admitted" % what)


# JSON and Avro round trips; the message carries its schema version
for kind, schema in (("json", JsonSchema), ("avro", AvroSchema)):
    t = name("schema-" + kind)
    consumer = client.subscribe(t, "s", schema=schema(User))
    producer = client.create_producer(t, schema=schema(User))
    producer.send(User(name="ada", age=36))
    msg = consumer.receive(timeout_millis=10000)
    assert (msg.value().name, msg.value().age) == ("ada", 36), msg.value()
    assert version_of(msg) == 0, msg.schema_version()
    status, latest = http("GET", "/admin/v2/schemas/public/default/%s/schema" % t.rsplit("/", 1)[1])
    assert status == 200 and latest["type"] == kind.upper() and latest["version"] == 0, latest
    print("%s: round trip, schema version 0" % kind)
    if kind == "json":
        json_topic = t

# incompatible schemas are refused, for producers and consumers alike
refused("producer with an incompatible JSON schema",
        lambda: client.create_producer(json_topic, schema=JsonSchema(user_bad_age())))
refused("consumer with an incompatible JSON schema",
        lambda: client.subscribe(json_topic, "s2", schema=JsonSchema(user_bad_age())))
refused("producer of STRING on a JSON topic",
        lambda: client.create_producer(json_topic, schema=StringSchema()))

# under FULL (the default) the change below is refused; under BACKWARD it is a new version
refused("producer dropping a field under FULL",
        lambda: client.create_producer(json_topic, schema=JsonSchema(user_v2())))

# evolution under BACKWARD, in a namespace of its own
assert http("PUT", "/admin/v2/namespaces/public/schema-evolution", {})[0] == 204
assert http("PUT", "/admin/v2/namespaces/public/schema-evolution/schemaCompatibilityStrategy",
            "BACKWARD")[0] == 204
t = name("evolving", "public/schema-evolution")
consumer = client.subscribe(t, "s", schema=JsonSchema(User))
client.create_producer(t, schema=JsonSchema(User)).send(User(name="v1", age=1))
V2 = user_v2()
client.create_producer(t, schema=JsonSchema(V2)).send(V2(name="v2"))
got = [consumer.receive(timeout_millis=10000) for _ in range(2)]
assert [version_of(m) for m in got] == [0, 1], [m.schema_version() for m in got]
local = t.rsplit("/", 1)[1]
status, versions = http("GET", "/admin/v2/schemas/public/schema-evolution/%s/versions" % local)
assert status == 200 and [v["version"] for v in versions["getSchemaResponses"]] == [0, 1], versions
print("backward evolution: versions 0 and 1")

# admin CRUD and bad input
base = "/admin/v2/schemas/public/default/admin-%s" % uuid.uuid4().hex[:8]
definition = json.dumps({"type": "record", "name": "R", "fields": [{"name": "x", "type": "int"}]})
status, posted = http("POST", base + "/schema", {"type": "AVRO", "schema": definition})
assert status == 200 and posted["version"]["version"] == 0, (status, posted)
status, check = http("POST", base + "/compatibility",
                     {"type": "AVRO", "schema": definition.replace('"int"', '"string"')})
assert status == 200 and check["isCompatibility"] is False, check
assert http("GET", base + "/schema/0")[0] == 200
assert http("GET", base + "/schema/7")[0] == 404
for bad, code in ((b"{not json", 400), ({"type": "NOPE", "schema": ""}, 422),
                  ({"type": "AVRO", "schema": "{\"type\": \"recor"}, 422),
                  ({"type": "STRING", "schema": "x" * 300000}, 422)):
    status, reason = http("POST", base + "/schema", bad)
    assert status == code, (bad if isinstance(bad, bytes) else bad["type"], status, reason)
# a KEY_VALUE schema: its halves are checked each by its own type's rules
kv_base = "/admin/v2/schemas/public/default/kv-%s" % uuid.uuid4().hex[:8]
kv = lambda value_type: {"type": "KEY_VALUE", "schema": json.dumps(
    {"key": "", "value": definition.replace('"int"', value_type)}),
    "properties": {"key.schema.type": "STRING", "value.schema.type": "AVRO"}}
assert http("POST", kv_base + "/schema", kv('"int"'))[0] == 200
status, shown = http("GET", kv_base + "/schema")
assert status == 200 and shown["type"] == "KEY_VALUE", shown
assert json.loads(shown["data"])["value"]["fields"][0]["type"] == "int", shown
status, check = http("POST", kv_base + "/compatibility", kv('"string"'))
assert check["isCompatibility"] is False and check["reason"].startswith("value: "), check
status, deleted = http("DELETE", base + "/schema")
assert status == 200 and deleted["version"] == 0, deleted
assert http("GET", base + "/schema")[0] == 404
print("admin: upload, check, get, delete; bad input refused")
client.close()
