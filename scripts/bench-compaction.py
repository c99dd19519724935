"""Times one compaction of a topic filled with N unbatched messages over N/2 keys.
Arguments: service URL, web URL, N."""
import sys, time, json, urllib.request, pulsar
url, web, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = pulsar.Client(url)
p = c.create_producer("persistent://public/default/ct", batching_enabled=False, max_pending_messages=5000, block_if_queue_full=True)
payload = b"x" * 200
for i in range(n):
    p.send_async(payload, None, partition_key="k%d" % (i % (n // 2)))
p.flush()
def rest(m, path):
    r = urllib.request.Request(web + path, method=m)
    with urllib.request.urlopen(r) as x:
        raw = x.read()
    return json.loads(raw) if raw else None
t0 = time.time()
rest("PUT", "/admin/v2/persistent/public/default/ct/compaction")
while rest("GET", "/admin/v2/persistent/public/default/ct/compaction")["status"] == "RUNNING":
    time.sleep(0.02)
print("compaction of %d entries (%d keys): %.2f s, %s" % (n, n // 2, time.time() - t0, rest("GET", "/admin/v2/persistent/public/default/ct/compaction")["status"]))
c.close()
