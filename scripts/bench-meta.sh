#!/usr/bin/env bash
# Metadata store benchmark: put / get / CAS on RocksDB and on a real local etcd, with
# magnetar-perf. Prints one line per run; the JSON summaries land in $OUT.
# Usage: scripts/bench-meta.sh [duration] [concurrency]   (defaults: 10s 16)
set -euo pipefail
DUR=${1:-10s}
CONC=${2:-16}
PERF=${PERF:-${CARGO_TARGET_DIR:-$HOME/.cache/magnetar/target}/release/magnetar-perf}
WORK=$(mktemp -d /tmp/magnetar-bench-meta.XXXXXX)
OUT=${OUT:-$WORK/results}
mkdir -p "$OUT"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

CP=$(port); PP=$(port)
etcd --name bench --data-dir "$WORK/etcd" \
  --listen-client-urls "http://127.0.0.1:$CP" --advertise-client-urls "http://127.0.0.1:$CP" \
  --listen-peer-urls "http://127.0.0.1:$PP" --initial-advertise-peer-urls "http://127.0.0.1:$PP" \
  --initial-cluster "bench=http://127.0.0.1:$PP" --max-request-bytes 10485760 \
  --logger zap --log-level warn >"$WORK/etcd.log" 2>&1 &
ETCD_PID=$!
trap 'kill $ETCD_PID 2>/dev/null; wait $ETCD_PID 2>/dev/null; rm -rf "$WORK/etcd" "$WORK/rocks"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$CP/health" >/dev/null 2>&1 && break; sleep 0.1; done

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r); duration $DUR, concurrency $CONC"
printf '%-8s %-5s %12s %10s %10s %10s\n' backend op ops/s p50_ms p99_ms p999_ms
for backend in rocksdb etcd; do
  case $backend in
    rocksdb) URL="rocksdb://$WORK/rocks" ;;
    etcd) URL="etcd://127.0.0.1:$CP" ;;
  esac
  for op in put get cas; do
    "$PERF" meta --meta "$URL" --op "$op" -c "$CONC" -d "$DUR" --prefix "/bench/$op" \
      >"$OUT/$backend-$op.json" 2>"$OUT/$backend-$op.log"
    python3 - "$OUT/$backend-$op.json" "$backend" "$op" <<'PY'
import json, sys
s = json.load(open(sys.argv[1])); l = s["latency_ms"]
print(f'{sys.argv[2]:<8} {sys.argv[3]:<5} {s["ops_per_sec"]:>12.0f} {l["p50"]:>10.3f} {l["p99"]:>10.3f} {l["p999"]:>10.3f}' + (f'  errors {s["errors"]}' if s["errors"] else ''))
PY
  done
done
echo "summaries: $OUT"
