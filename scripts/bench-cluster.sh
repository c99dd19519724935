#!/usr/bin/env bash
# Cluster benchmark (issue #20), release build, everything on this machine's 2 cores:
#   - time from `scripts/cluster.sh up` to every broker healthy (etcd, 3 bookies, 2 brokers);
#   - produce max and e2e latency at half of it through the cluster (ledgers 2/2/2), then the
#     same against a standalone (1/1/1) for comparison;
#   - failover: KILLS times, a producer (the official Python client, both brokers in its
#     service URL) streams to a fresh topic, its owner is killed with kill -9, and the longest
#     pause in its receipts that ends after the kill is the failover time; the broker is
#     started again before the next round.
# Env: SECS (per throughput run, 10), KILLS (10), SIZE (1024), MAGNETAR_BIN / PERF_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."
T=${CARGO_TARGET_DIR:-$HOME/.cache/magnetar/target}/release
export MAGNETAR_BIN=${MAGNETAR_BIN:-$T/magnetar}
PERF=${PERF_BIN:-$T/magnetar-perf}
PY=${MAGNETAR_PYTHON:-$HOME/.cache/magnetar/venv/bin/python}
SECS=${SECS:-10}
KILLS=${KILLS:-10}
SIZE=${SIZE:-1024}
WORK=$(mktemp -d /tmp/magnetar-bench-cluster.XXXXXX)
export CLUSTER_DIR="$WORK/cluster" RUST_LOG=${RUST_LOG:-warn}
cleanup() { scripts/cluster.sh down >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT
field() { python3 -c "import json,sys; d=json.load(open('$1')); print(eval('d'+sys.argv[1]))" "$2"; }
now_ms() { date +%s%3N; }

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -r)"
up=$(scripts/cluster.sh up)
echo "${up%%$'\n'*}"
URL=$(cat "$CLUSTER_DIR/service-url")
FIRST="pulsar://$(echo "${URL#pulsar://}" | cut -d, -f1)"

throughput() { # label url
  "$PERF" produce -u "$2" "max-$RANDOM" -s "$SIZE" -d "${SECS}s" >"$WORK/max.json" 2>/dev/null
  local max; max=$(field "$WORK/max.json" "['ops_per_sec']")
  "$PERF" e2e -u "$2" "e2e-$RANDOM" -s "$SIZE" -r "$(python3 -c "print(int($max / 2))")" \
    -d "${SECS}s" >"$WORK/e2e.json" 2>/dev/null
  printf '%s: produce max %.0f msg/s (%s MB/s), publish p99 %s ms; e2e at half: p50 / p99 %s / %s ms\n' \
    "$1" "$max" "$(field "$WORK/max.json" "['mb_per_sec']")" \
    "$(field "$WORK/max.json" "['latency_ms']['p99']")" \
    "$(field "$WORK/e2e.json" "['latency_ms']['p50']")" \
    "$(field "$WORK/e2e.json" "['latency_ms']['p99']")"
}
throughput "cluster (2 brokers, 3 bookies, 2/2/2)" "$FIRST"

echo "== failover: $KILLS × kill -9 of a producing topic's owner"
times=()
for k in $(seq 1 "$KILLS"); do
  topic="persistent://public/default/failover-$k"
  receipts="$WORK/receipts-$k"
  "$PY" integration-tests/python/durability.py produce "$URL" "$topic" "$receipts" 100000000 \
    >/dev/null 2>&1 &
  producer=$!
  until [ "$(cat "$receipts" 2>/dev/null | wc -l)" -ge 2000 ]; do sleep 0.1; done
  owner=""
  for i in 1 2; do
    read -r bp wp <"$CLUSTER_DIR/broker-$i.ports"
    if curl -sf "http://127.0.0.1:$wp/lookup/v2/topic/persistent/public/default/failover-$k" \
        | grep -q ":$bp\""; then owner=$i; fi
  done
  [ -n "$owner" ] || { echo "no owner found for $topic" >&2; exit 1; }
  killed=$(now_ms)
  scripts/cluster.sh kill "broker-$owner" >/dev/null
  deadline=$(( $(date +%s) + 60 ))
  until [ "$(awk -v t="$killed" '$2 > t' "$receipts" | wc -l)" -ge 500 ]; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "round $k: no receipts 60 s after the kill" >&2; exit 1; }
    sleep 0.1
  done
  kill "$producer" 2>/dev/null || true
  wait "$producer" 2>/dev/null || true
  pause=$(python3 - "$receipts" "$killed" <<'EOF'
import sys
t = sorted(int(l.split()[1]) for l in open(sys.argv[1]) if l.strip())
killed = int(sys.argv[2])
ends = [(b - a, b) for a, b in zip(t, t[1:]) if b > killed]
print(max(ends)[1] - killed if ends else 0)
EOF
)
  times+=("$pause")
  echo "round $k: broker-$owner killed, producer resumed after $pause ms"
  scripts/cluster.sh start "broker-$owner" >/dev/null
done
python3 - "${times[@]}" <<'EOF'
import statistics, sys
t = sorted(int(x) for x in sys.argv[1:])
print("failover over %d kills: p50 %d ms, max %d ms, min %d ms" % (len(t), statistics.median(t), t[-1], t[0]))
EOF
scripts/cluster.sh down >/dev/null

BIN=$MAGNETAR_BIN
. scripts/bench-lib.sh
start_standalone bench-cluster   # its exit trap replaces ours: the cluster is down by now
throughput "standalone (1/1/1)" "pulsar://127.0.0.1:$BP"
rm -rf "$WORK"
