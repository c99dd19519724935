"""Tenant isolation: a victim tenant's publish latency while another tenant floods its own
topics at its namespace's publish rate limit (and, unless ONLY_LIMITED, a third tenant
floods without a limit).

One victim producer runs for the whole measurement and stamps every message with its send
time. The flooders run all along too but are stopped (SIGSTOP) except in their windows:
quiet, limited flood, quiet, unlimited flood, ... each WINDOW seconds, ROUNDS times. A
victim message counts for the window it was sent in, unless it was sent in the first SETTLE
seconds of one (the flood reaching its pace, or a flood's backlog draining). On this
2-core machine the host's slow spells last seconds and come every few minutes; windows that
alternate every few seconds put them on both sides, which phases of their own did not.

FLOOD_SCHED=idle (the default) runs the flooding processes under SCHED_IDLE: the load
generators would otherwise take the CPU that the broker and the victim need, which is not
something the broker does to a tenant (in a deployment the other tenant's clients run on
their own machines). The broker's own work for the flood is not discounted: what the flood
stored is read back from the topic stats, so a starved flooder shows up as a flood below
its limit. FLOOD_SCHED=normal runs them like any other process.

Usage: bench-isolation.py SERVICE_URL WEB_URL [WINDOW] [VICTIM_RATE] [LIMIT]
  or:  bench-isolation.py victim URL TOPIC RATE SECONDS
       bench-isolation.py flood URL TOPIC
"""
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request

import pulsar

SIZE = 1024
FLOODERS = 3


def victim(url, topic, rate, seconds):
    """Sends `rate` unbatched 1 KiB messages a second; prints [send time, latency ms] of each
    (CLOCK_MONOTONIC, which every process on the machine shares)."""
    client = pulsar.Client(url, operation_timeout_seconds=30,
                           logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn))
    p = client.create_producer(topic, batching_enabled=False, max_pending_messages=10000,
                               block_if_queue_full=True)
    out = []
    payload = b"v" * SIZE
    start = time.monotonic()
    n = int(rate * seconds)
    for i in range(n):
        due = start + i / rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        sent = time.monotonic()
        p.send_async(payload, lambda res, _id, sent=sent:
                     out.append((sent, (time.monotonic() - sent) * 1000)))
    p.flush()
    client.close()
    print(json.dumps([[round(s, 4), round(ms, 4)] for s, ms in out]))


def flood(url, topic):
    """As fast as the broker lets it, batched 1 KiB messages, until killed."""
    if os.environ.get("FLOOD_SCHED", "idle") == "idle":
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    client = pulsar.Client(url, operation_timeout_seconds=60,
                           logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn))
    p = client.create_producer(topic, batching_enabled=True, batching_max_messages=1000,
                               batching_max_publish_delay_ms=1, max_pending_messages=20000,
                               block_if_queue_full=True)
    payload = b"f" * SIZE
    print("ready", flush=True)
    while True:
        p.send_async(payload, None)


def rest(web, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(web + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        raw = r.read()
    return json.loads(raw) if raw else None


def stored(web, topics):
    """Messages the broker has taken in on these topics."""
    total = 0
    for t in topics:
        domain, path = t.split("://")
        total += rest(web, "GET", "/admin/v2/%s/%s/stats" % (domain, path))["msgInCounter"]
    return total


HISTOGRAMS = ("bookie_add_latency_seconds", "bookie_journal_sync_latency_seconds")


def histograms(web):
    """The bookies' latency histograms from /metrics: {(name, bookie): [(le, cumulative
    count)]}; bookie is "" when the standalone runs one (its series are unlabelled)."""
    with urllib.request.urlopen(web + "/metrics", timeout=30) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        for h in HISTOGRAMS:
            if line.startswith(h + "_bucket{"):
                le = line.split('le="')[1].split('"')[0]
                bookie = line.split('bookie="')[1].split('"')[0] if 'bookie="' in line else ""
                out.setdefault((h, bookie), []).append(
                    (float("inf") if le == "+Inf" else float(le), float(line.split()[-1])))
    return out


def bucket_pct(counts, f):
    """The bucket bound under which fraction f of the counted observations fall."""
    if not counts or counts[-1][1] == 0:
        return float("nan")
    for le, c in counts:
        if c >= f * counts[-1][1]:
            return le * 1000
    return float("inf")


def pct(lat, f):
    return lat[min(len(lat) - 1, int(f * len(lat)))] if lat else float("nan")


def run(url, web, me, kinds, topics, procs, window, rate, schedule, settle, warm):
    """Starts the flooders (into `procs`) and the victim, runs the windows; returns the
    victim's output and what the windows measured."""
    for kind, ts in topics.items():
        procs[kind] = [subprocess.Popen([sys.executable, me, "flood", url, t],
                                        stdout=subprocess.PIPE, text=True) for t in ts]
    for ps in procs.values():
        for p in ps:
            p.stdout.readline()  # its producer exists
            p.send_signal(signal.SIGSTOP)
    total = warm + len(schedule) * window
    v = subprocess.Popen([sys.executable, me, "victim", url, "persistent://victim/ns/t",
                          str(rate), str(total)], stdout=subprocess.PIPE, text=True)
    procs["victim"] = [v]
    time.sleep(warm)
    windows = []
    hist = {k: {} for k in ["alone"] + list(kinds)}
    flood_msgs = {k: 0 for k in kinds}
    flood_secs = {k: 0.0 for k in kinds}
    for kind in schedule:
        start = time.monotonic()
        if kind != "alone":
            for p in procs[kind]:
                p.send_signal(signal.SIGCONT)
        time.sleep(settle)
        if kind != "alone":
            before, at = stored(web, topics[kind]), time.monotonic()
        h0 = histograms(web)
        time.sleep(max(0.0, start + window - time.monotonic()))
        h1 = histograms(web)
        for h in h1:
            delta = [(le, c1 - c0) for (le, c1), (_, c0) in zip(h1[h], h0.get(h, []))]
            acc = hist[kind].get(h)
            hist[kind][h] = delta if acc is None else [(le, a + d) for (le, a), (_, d)
                                                        in zip(acc, delta)]
        if kind != "alone":
            flood_msgs[kind] += stored(web, topics[kind]) - before
            flood_secs[kind] += time.monotonic() - at
            for p in procs[kind]:
                p.send_signal(signal.SIGSTOP)
        windows.append((start, start + window, kind))
    out, _ = v.communicate()
    return out, windows, hist, flood_msgs, flood_secs


def main():
    url, web = sys.argv[1], sys.argv[2]
    window = float(sys.argv[3]) if len(sys.argv) > 3 else 10
    rate = int(sys.argv[4]) if len(sys.argv) > 4 else 1000
    limit = int(sys.argv[5]) if len(sys.argv) > 5 else 5000
    rounds = int(os.environ.get("ROUNDS", "8"))
    settle = float(os.environ.get("SETTLE", "2"))
    warm = float(os.environ.get("WARMUP_SECONDS", "10"))
    me = sys.argv[0]
    for tenant in ("victim", "noisy", "unlimited"):
        rest(web, "PUT", "/admin/v2/tenants/" + tenant, {"allowedClusters": ["standalone"]})
        rest(web, "PUT", "/admin/v2/namespaces/%s/ns" % tenant)
    rest(web, "POST", "/admin/v2/namespaces/noisy/ns/publishRate",
         {"publishThrottlingRateInMsg": limit})
    # AFFINITY=1 (with BOOKIES=2): the flooding tenants' ledgers go to a bookie of their own
    if os.environ.get("AFFINITY"):
        bookies = sorted(b["bookieId"] for b in rest(web, "GET", "/admin/v2/bookies/all")["bookies"])
        if len(bookies) < 2:
            sys.exit("AFFINITY needs BOOKIES=2 or more")
        for b in bookies[1:]:
            rest(web, "POST", "/admin/v2/bookies/racks-info/%s?group=noisy" % b, {"rack": "/flood"})
        for tenant in ("noisy", "unlimited"):
            rest(web, "POST", "/admin/v2/namespaces/%s/ns/persistence/bookieAffinity" % tenant,
                 {"bookieAffinityGroupPrimary": "noisy"})
        print("bookie affinity: victim on %s, flooders on %s" % (bookies[0], ", ".join(bookies[1:])))
    # FLOOD_DOMAIN=non-persistent takes the disk out of the picture
    domain = os.environ.get("FLOOD_DOMAIN", "persistent")
    kinds = {"flood-limited": "noisy"}
    if not os.environ.get("ONLY_LIMITED"):
        kinds["flood-unlimited"] = "unlimited"
    topics = {k: ["%s://%s/ns/f%d" % (domain, tenant, i) for i in range(FLOODERS)]
              for k, tenant in kinds.items()}
    schedule = []
    for _ in range(rounds):
        for kind in kinds:
            schedule += ["alone", kind]
    print("%d rounds of %s, %g s windows (first %g s of each not counted), %g s warm-up; "
          "victim %d msg/s unbatched; flood limit %d msg/s per topic, %d topics; flooders %s"
          % (rounds, " / ".join(["alone"] + list(kinds)), window, settle, warm, rate, limit,
             FLOODERS, os.environ.get("FLOOD_SCHED", "idle")), flush=True)
    t0 = time.monotonic()
    procs = {}
    try:
        out, windows, hist, flood_msgs, flood_secs = run(url, web, me, kinds, topics, procs,
                                                         window, rate, schedule, settle, warm)
    finally:
        # stopped or not, no flooder outlives the measurement
        for ps in procs.values():
            for p in ps:
                p.kill()
                p.wait()
    sent = json.loads(out.strip().splitlines()[-1])
    lat = {k: [] for k in ["alone"] + list(kinds)}
    per_window = {k: [] for k in lat}
    i = 0
    sent.sort()
    for start, end, kind in windows:
        w = []
        while i < len(sent) and sent[i][0] < end:
            if sent[i][0] >= start + settle:
                w.append(sent[i][1])
            i += 1
        w.sort()
        lat[kind] += w
        per_window[kind].append(round(pct(w, .99), 2))
    print("victim latency by window (t0 = start of warm-up, %.0f s in all):" % (time.monotonic() - t0))
    res = {}
    for kind, xs in lat.items():
        xs.sort()
        r = {"count": len(xs), "p50": round(pct(xs, .5), 3), "p99": round(pct(xs, .99), 3),
             "p999": round(pct(xs, .999), 3), "p99_per_window": per_window[kind]}
        if kind in kinds:
            r["flood_stored_msgs_per_s"] = round(flood_msgs[kind] / max(flood_secs[kind], 1e-9))
        res[kind] = r
        print("  %-16s p50 %7.3f ms  p99 %7.3f ms  p99.9 %8.3f ms  (%6d msgs)%s"
              % (kind, r["p50"], r["p99"], r["p999"], r["count"],
                 "; flood stored %d msg/s" % r["flood_stored_msgs_per_s"] if kind in kinds else ""))
        print("  %-16s p99 per window: %s" % ("", " ".join("%.1f" % x for x in per_window[kind])))
        for (h, bookie), counts in sorted(hist[kind].items()):
            name = h + ("@" + bookie if bookie else "")
            r[name] = {"p50_le_ms": bucket_pct(counts, .5), "p99_le_ms": bucket_pct(counts, .99)}
            print("  %-16s %s: p50 <= %g ms, p99 <= %g ms"
                  % ("", name, r[name]["p50_le_ms"], r[name]["p99_le_ms"]))
    # pooled percentiles follow the worst windows of each kind; the median over rounds of
    # (flooded window p99 / the quiet window just before it) follows the typical window
    for n, kind in enumerate(kinds):
        quiet = per_window["alone"][n::len(kinds)]
        ratios = sorted(f / q for f, q in zip(per_window[kind], quiet) if q > 0)
        median = statistics.median(ratios) if ratios else float("nan")
        res[kind]["median_window_p99_ratio"] = round(median, 3)
        print("p99 with %s: %+.0f %% of alone (pooled), %+.0f %% (median of %d window pairs); "
              "p50 %+.0f %%"
              % (kind, (res[kind]["p99"] / res["alone"]["p99"] - 1) * 100,
                 (median - 1) * 100, len(ratios),
                 (res[kind]["p50"] / res["alone"]["p50"] - 1) * 100))
    print(json.dumps(res))


if __name__ == "__main__":
    if sys.argv[1] == "victim":
        victim(sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]))
    elif sys.argv[1] == "flood":
        flood(sys.argv[2], sys.argv[3])
    else:
        main()
