"""TLS: the Python client over pulsar+ssl:// and the admin API over HTTPS, trusting the
test's own certificate authority; plain text on a TLS port gets nowhere.

Usage: tls.py SERVICE_URL WEB_PORT TLS_SERVICE_URL HTTPS_PORT CA_CERT
"""
import json
import socket
import ssl
import sys
import urllib.request
import uuid

import pulsar

_, _, TLS_URL, HTTPS_PORT, CA = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
topic = "persistent://public/default/tls-%s" % uuid.uuid4().hex[:8]

client = pulsar.Client(TLS_URL, tls_trust_certs_file_path=CA, tls_validate_hostname=False,
                       operation_timeout_seconds=10)
consumer = client.subscribe(topic, "s")
producer = client.create_producer(topic)
for i in range(100):
    producer.send(("m%d" % i).encode())
got = [consumer.receive(timeout_millis=10000).data() for _ in range(100)]
assert got == [("m%d" % i).encode() for i in range(100)], got[:5]
client.close()

# a client that does not trust the certificate is refused (the C++ client reports the
# failed handshake as ConnectError, or a timeout while it retries)
untrusting = pulsar.Client(TLS_URL, operation_timeout_seconds=3)
try:
    untrusting.create_producer(topic)
    connected = True
except (pulsar.ConnectError, pulsar.Timeout):
    connected = False
untrusting.close()
assert not connected, "a client without the CA connected"

ctx = ssl.create_default_context(cafile=CA)
ctx.check_hostname = False
with urllib.request.urlopen("https://127.0.0.1:%d/admin/v2/persistent/public/default/%s/stats"
                            % (HTTPS_PORT, topic.rsplit("/", 1)[1]), context=ctx, timeout=10) as r:
    stats = json.loads(r.read())
assert stats["msgInCounter"] == 100, stats
with urllib.request.urlopen("https://127.0.0.1:%d/lookup/v2/topic/persistent/public/default/x"
                            % HTTPS_PORT, context=ctx, timeout=10) as r:
    look = json.loads(r.read())
assert look["brokerUrlTls"] == TLS_URL, look
assert look["httpUrlTls"] == "https://127.0.0.1:%d" % HTTPS_PORT, look

# plain text to the TLS ports: no answer that parses, and the broker carries on
s = socket.create_connection(("127.0.0.1", HTTPS_PORT), timeout=5)
s.sendall(b"GET /admin/v2/brokers/health HTTP/1.1\r\nHost: x\r\n\r\n")
try:
    reply = s.recv(100)
except (socket.timeout, ConnectionResetError):
    reply = b""
assert not reply.startswith(b"HTTP/1.1 200"), reply
s.close()
with urllib.request.urlopen("https://127.0.0.1:%d/admin/v2/brokers/health" % HTTPS_PORT,
                            context=ctx, timeout=10) as r:
    assert r.status == 200
print("tls ok")
