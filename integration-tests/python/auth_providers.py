"""Authentication providers beside tokens, on one broker: TLS client certificates (the role
is the certificate's common name, and authorization applies to it) and Basic (an htpasswd
file), mixed with tokens.

Usage: auth_providers.py PLAIN_URL WEB_PORT TLS_URL HTTPS_PORT CA APP_CERT APP_KEY
                         NOBODY_CERT NOBODY_KEY STRANGER_CERT STRANGER_KEY ADMIN_TOKEN
(the broker: providers token,tls,basic; authorization on; super-user "admin"; htpasswd
users admin:adminpw and bob:bobpw)
"""
import base64
import json
import ssl
import sys
import urllib.error
import urllib.request
import uuid

import pulsar

(URL, WEB_PORT, TLS_URL, HTTPS_PORT, CA, APP_CERT, APP_KEY, NOBODY_CERT, NOBODY_KEY,
 STRANGER_CERT, STRANGER_KEY, ADMIN_TOKEN) = sys.argv[1:13]
WEB = "http://127.0.0.1:%s" % WEB_PORT
HTTPS = "https://127.0.0.1:%s" % HTTPS_PORT
topic = "persistent://public/default/providers-%s" % uuid.uuid4().hex[:8]


def http(method, url, body=None, headers=None, context=None):
    req = urllib.request.Request(url, method=method, headers=headers or {},
                                 data=json.dumps(body).encode() if body is not None else None)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, context=context, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


# grants, by the token super-user: role "app" (a certificate) and "bob" (Basic) may use it
admin = {"Authorization": "Bearer " + ADMIN_TOKEN}
for role in ("app", "bob"):
    status = http("POST", "%s/admin/v2/namespaces/public/default/permissions/%s" % (WEB, role),
                  ["produce", "consume"], admin)
    assert status == 204, ("grant", role, status)


def round_trip(client, what):
    consumer = client.subscribe(topic, "s-" + what)
    client.create_producer(topic).send(what.encode())
    assert consumer.receive(timeout_millis=10000).data() == what.encode()
    print("%s: produced and consumed" % what)


def refused(client, what):
    try:
        client.create_producer(topic)
    except Exception as e:
        print("%s: refused (%s)" % (what, type(e).__name__))
    else:
        raise AssertionError("%s was admitted" % what)
    finally:
        client.close()


def tls_client(cert, key):
    return pulsar.Client(TLS_URL, tls_trust_certs_file_path=CA, tls_validate_hostname=False,
                         authentication=pulsar.AuthenticationTLS(cert, key),
                         operation_timeout_seconds=5)


# a certificate names its role
client = tls_client(APP_CERT, APP_KEY)
round_trip(client, "certificate of app")
client.close()
# a trusted certificate of a role without grants: authenticated, then not authorized
refused(tls_client(NOBODY_CERT, NOBODY_KEY), "certificate of nobody (no grant)")
# a certificate no trusted authority signed: refused at the handshake
refused(tls_client(STRANGER_CERT, STRANGER_KEY), "certificate that does not chain")

# Basic, on the plain port
client = pulsar.Client(URL, authentication=pulsar.AuthenticationBasic("bob", "bobpw"),
                       operation_timeout_seconds=5)
round_trip(client, "basic bob")
client.close()
refused(pulsar.Client(URL, authentication=pulsar.AuthenticationBasic("bob", "wrong"),
                      operation_timeout_seconds=5), "basic with a wrong password")

# and tokens still work beside them
client = pulsar.Client(URL, authentication=pulsar.AuthenticationToken(ADMIN_TOKEN),
                       operation_timeout_seconds=5)
round_trip(client, "token of admin")
client.close()

# HTTP: Basic credentials, and a client certificate on the HTTPS port
basic = lambda user, pw: {"Authorization": "Basic " + base64.b64encode(
    ("%s:%s" % (user, pw)).encode()).decode()}
assert http("GET", WEB + "/admin/v2/tenants", headers=basic("admin", "adminpw")) == 200
assert http("GET", WEB + "/admin/v2/tenants", headers=basic("admin", "nope")) == 401
lookup = "/lookup/v2/topic/persistent/public/default/" + topic.rsplit("/", 1)[1]
with_cert = ssl.create_default_context(cafile=CA)
with_cert.check_hostname = False
with_cert.load_cert_chain(APP_CERT, APP_KEY)
without = ssl.create_default_context(cafile=CA)
without.check_hostname = False
assert http("GET", HTTPS + lookup, context=with_cert) == 200
assert http("GET", HTTPS + lookup, context=without) == 401
print("http: basic and client certificates ok")
