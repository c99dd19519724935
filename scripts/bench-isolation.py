"""Tenant isolation: a victim tenant's publish latency while another tenant floods its own
topics, with and without a publish rate limit on the flooding namespace. Each producer runs
in its own process (the Python client holds the GIL per process).

Usage: bench-isolation.py SERVICE_URL WEB_URL [SECONDS] [VICTIM_RATE] [LIMIT]
  or:  bench-isolation.py victim URL TOPIC RATE SECONDS
       bench-isolation.py flood URL TOPIC SECONDS
"""
import json
import os
import subprocess
import sys
import time
import urllib.request

import pulsar

SIZE = 1024


def victim(url, topic, rate, seconds):
    """Sends `rate` unbatched 1 KiB messages a second; send-to-receipt latency of each."""
    client = pulsar.Client(url, operation_timeout_seconds=30)
    p = client.create_producer(topic, batching_enabled=False, max_pending_messages=10000,
                               block_if_queue_full=True)
    lat = []
    payload = b"v" * SIZE
    start = time.perf_counter()
    n = int(rate * seconds)
    for i in range(n):
        due = start + i / rate
        now = time.perf_counter()
        if due > now:
            time.sleep(due - now)
        sent = time.perf_counter()
        p.send_async(payload, lambda res, _id, sent=sent: lat.append(time.perf_counter() - sent))
    p.flush()
    client.close()
    lat.sort()
    q = lambda f: round(lat[min(len(lat) - 1, int(f * len(lat)))] * 1000, 3)
    print(json.dumps({"count": len(lat), "p50": q(0.50), "p99": q(0.99), "p999": q(0.999)}))


def flood(url, topic, seconds):
    """As fast as the broker lets it: batched 1 KiB messages."""
    client = pulsar.Client(url, operation_timeout_seconds=60)
    p = client.create_producer(topic, batching_enabled=True, batching_max_messages=1000,
                               batching_max_publish_delay_ms=1, max_pending_messages=20000,
                               block_if_queue_full=True)
    payload = b"f" * SIZE
    end = time.time() + seconds
    n = 0
    while time.time() < end:
        for _ in range(1000):
            p.send_async(payload, None)
        n += 1000
    p.flush()
    client.close()
    print(json.dumps({"sent": n, "rate": round(n / seconds)}))


def rest(web, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(web + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=30).read()


def phase(url, name, seconds, rate, flooders):
    me = sys.argv[0]
    floods = [subprocess.Popen([sys.executable, me, "flood", url, t, str(seconds + 2)],
                               stdout=subprocess.PIPE, text=True) for t in flooders]
    if floods:
        time.sleep(2)  # let the flood reach its pace
    v = subprocess.run([sys.executable, me, "victim", url,
                        "persistent://victim/ns/t-%s" % name, str(rate), str(seconds)],
                       stdout=subprocess.PIPE, text=True, check=True)
    result = json.loads(v.stdout.strip().splitlines()[-1])
    flood_rate = 0
    for f in floods:
        out, _ = f.communicate()
        flood_rate += json.loads(out.strip().splitlines()[-1])["rate"]
    result["flood_msgs_per_s"] = flood_rate
    print("%-26s victim p50 %7.3f ms  p99 %7.3f ms  p99.9 %7.3f ms  (%d sent); flood %d msg/s"
          % (name, result["p50"], result["p99"], result["p999"], result["count"], flood_rate),
          flush=True)
    return result


def main():
    url, web = sys.argv[1], sys.argv[2]
    seconds = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    rate = int(sys.argv[4]) if len(sys.argv) > 4 else 1000
    limit = int(sys.argv[5]) if len(sys.argv) > 5 else 5000
    for tenant in ("victim", "noisy", "unlimited"):
        rest(web, "PUT", "/admin/v2/tenants/" + tenant, {"allowedClusters": ["standalone"]})
        rest(web, "PUT", "/admin/v2/namespaces/%s/ns" % tenant)
    rest(web, "POST", "/admin/v2/namespaces/noisy/ns/publishRate",
         {"publishThrottlingRateInMsg": limit})
    flooders = 3
    # FLOOD_DOMAIN=non-persistent takes the disk out of the picture (what is left is CPU)
    domain = os.environ.get("FLOOD_DOMAIN", "persistent")
    out = {
        "alone": phase(url, "alone", seconds, rate, []),
        "flood_limited": phase(url, "flood-limited", seconds, rate,
                               ["%s://noisy/ns/f%d" % (domain, i) for i in range(flooders)]),
    }
    # ONLY_LIMITED=1 skips the unlimited flood (for A/B runs of the limited case)
    if not os.environ.get("ONLY_LIMITED"):
        out["flood_unlimited"] = phase(url, "flood-unlimited", seconds, rate,
                                       ["%s://unlimited/ns/f%d" % (domain, i)
                                        for i in range(flooders)])
    base = out["alone"]["p99"]
    for name, r in out.items():
        if name != "alone":
            print("p99 with %s: %+.0f %% of alone" % (name, (r["p99"] / base - 1) * 100))
    print(json.dumps(out))


if __name__ == "__main__":
    if sys.argv[1] == "victim":
        victim(sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]))
    elif sys.argv[1] == "flood":
        flood(sys.argv[2], sys.argv[3], float(sys.argv[4]))
    else:
        main()
