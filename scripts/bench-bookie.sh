#!/usr/bin/env bash
# Bookie benchmark (issue: bookie storage tier). On this machine, in one run:
#   - the raw disk limit: sequential write + fdatasync at several bytes-per-sync;
#   - magnetar-perf ledger against 1 bookie (1/1/1) and 3 bookies (3/2/2), entry sizes
#     1 KiB, 16 KiB, 64 KiB, as fast as possible, with the journal's bytes per fsync read
#     from the bookies' /metrics;
#   - 1/1/1 at 1 KiB again at half the measured maximum, for latency under moderate load.
#   - 1/1/1 again on reused journal files, after ~10 GB of ledgers were written and deleted.
# Usage: scripts/bench-bookie.sh [duration]   (default 10s)
# MAGNETAR_BIN / PERF_BIN run other builds (an A/B against an older commit); SKIP_DISK=1 leaves
# out the raw disk runs; ONLY_REUSED=1 only the reused-files phase; BOOKIE_ARGS adds bookie flags.
set -euo pipefail
DUR=${1:-10s}
T=${CARGO_TARGET_DIR:-$HOME/.cache/magnetar/target}/release
BIN=${MAGNETAR_BIN:-$T/magnetar}
PERF=${PERF_BIN:-$T/magnetar-perf}
WORK=$(mktemp -d /tmp/magnetar-bench-bookie.XXXXXX)
OUT=${OUT:-$WORK/results}
mkdir -p "$OUT"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"/etcd "$WORK"/b[0-9]*; }
trap cleanup EXIT

CP=$(port); PP=$(port)
etcd --name bench --data-dir "$WORK/etcd" \
  --listen-client-urls "http://127.0.0.1:$CP" --advertise-client-urls "http://127.0.0.1:$CP" \
  --listen-peer-urls "http://127.0.0.1:$PP" --initial-advertise-peer-urls "http://127.0.0.1:$PP" \
  --initial-cluster "bench=http://127.0.0.1:$PP" --logger zap --log-level warn >"$WORK/etcd.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$CP/health" >/dev/null 2>&1 && break; sleep 0.1; done
META="etcd://127.0.0.1:$CP"

HTTP_PORTS=()
start_bookies() { # n
  # open bookies: magnetar-perf's ledger client has no secret to give (a cluster's bookies
  # check it once per connection, so it costs nothing measured here)
  for i in $(seq 1 "$1"); do
    local bp hp; bp=$(port); hp=$(port)
    RUST_LOG=warn "$BIN" bookie --data-dir "$WORK/b$RUN-$i" --bookie-port "$bp" --http-port "$hp" \
      --meta "$META" --bookie-auth-disabled true --min-free-disk-bytes 0 ${BOOKIE_ARGS:-} >"$WORK/bookie-$RUN-$i.log" 2>&1 &
    PIDS+=($!); HTTP_PORTS+=("$hp")
  done
  for hp in "${HTTP_PORTS[@]}"; do
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$hp/health" >/dev/null 2>&1 && break; sleep 0.1; done
  done
  sleep 1
}
stop_bookies() {
  for p in "${PIDS[@]:1}"; do kill "$p" 2>/dev/null || true; done
  sleep 1; PIDS=("${PIDS[0]}"); HTTP_PORTS=()
  rm -rf "$WORK"/b$RUN-*
  # deregistration waits for the lease; clear the list for the next ensemble
  etcdctl --endpoints "127.0.0.1:$CP" del --prefix /bookies/available >/dev/null
}
metric_sum() { # name
  local s=0; for hp in "${HTTP_PORTS[@]}"; do
    v=$(curl -sf "http://127.0.0.1:$hp/metrics" | awk -v n="$1" '$1==n {print $2}'); s=$(python3 -c "print($s+${v:-0})")
  done; echo "$s"
}
summary() { # json label extra
  python3 - "$1" "$2" "${3:-}" <<'PY'
import json, sys
s = json.load(open(sys.argv[1])); l = s["latency_ms"]
print(f'{sys.argv[2]:<28} {s["ops_per_sec"]:>10.0f} ops/s {s["mb_per_sec"]:>8.1f} MB/s  p50 {l["p50"]:>7.3f}  p99 {l["p99"]:>7.3f}  p99.9 {l["p999"]:>7.3f} ms  {sys.argv[3]}')
PY
}

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r), $(df -T "$WORK" | awk 'NR==2{print $2}'); duration $DUR"
if [ -z "${SKIP_DISK:-}" ]; then
  echo "== raw disk: write + fdatasync"
  for b in 4096 65536 524288 1048576 4194304; do
    "$PERF" disk --dir "$WORK" --bytes-per-sync $b -d "$DUR" --file-bytes $((512<<20)) \
      >"$OUT/disk-$b.json" 2>"$OUT/disk-$b.log"
    summary "$OUT/disk-$b.json" "disk $b B/sync"
  done
fi

wait_spares() { # bytes: until the bookie keeps at least this many bytes of spare journal files
  for _ in $(seq 300); do
    python3 -c "import sys; sys.exit(0 if $(metric_sum bookie_journal_spare_bytes) >= $1 else 1)" && return 0
    sleep 0.2
  done
  echo "spares did not reach $1 bytes" >&2
}

RUN=0
ENSEMBLES=("1 1 1" "3 2 2"); [ -n "${ONLY_REUSED:-}" ] && ENSEMBLES=()
for ens in "${ENSEMBLES[@]}"; do
  set -- $ens; E=$1; QW=$2; QA=$3; RUN=$((RUN+1))
  start_bookies "$E"
  echo "== ledger $E/$QW/$QA"
  for size in 1024 16384 65536; do
    g0=$(metric_sum bookie_journal_groups_total); by0=$(metric_sum bookie_journal_bytes_total)
    "$PERF" ledger --meta "$META" -e $E --write-quorum $QW --ack-quorum $QA -s $size \
      --inflight 512 -d "$DUR" >"$OUT/ledger-$E-$size.json" 2>"$OUT/ledger-$E-$size.log"
    g1=$(metric_sum bookie_journal_groups_total); by1=$(metric_sum bookie_journal_bytes_total)
    per=$(python3 -c "g=$g1-$g0; print(f'journal {($by1-$by0)/max(g,1)/1024:.0f} KiB/fsync over {g:.0f} fsyncs')")
    summary "$OUT/ledger-$E-$size.json" "ledger $E/$QW/$QA ${size}B" "$per"
  done
  if [ "$E" = 1 ]; then
    max=$(python3 -c "import json; print(int(json.load(open('$OUT/ledger-1-1024.json'))['ops_per_sec']))")
    half=$((max / 2))
    "$PERF" ledger --meta "$META" -s 1024 --inflight 4096 --rate $half -d "$DUR" \
      >"$OUT/ledger-1-1024-half.json" 2>"$OUT/ledger-1-1024-half.log"
    summary "$OUT/ledger-1-1024-half.json" "ledger 1/1/1 1024B @${half}/s"
  fi
  stop_bookies
done

# A bookie whose ledgers turn over (deleted after offload or retention) writes into reused
# journal files: no block allocation to commit with each sync. Fill and delete ~10 GB first.
echo "== ledger 1/1/1 on reused journal files (after ~10 GB of ledgers were written and deleted)"
RUN=$((RUN+1))
SAVED_ARGS=${BOOKIE_ARGS:-}
BOOKIE_ARGS="$SAVED_ARGS --journal-spare-files 48 --gc-interval-secs 1" start_bookies 1
"$PERF" ledger --meta "$META" -s 65536 --inflight 512 -n 150000 -d 90s --delete >"$OUT/warmup.json" 2>/dev/null
for size in 65536 1024; do
  wait_spares 8000000000
  g0=$(metric_sum bookie_journal_groups_total); by0=$(metric_sum bookie_journal_bytes_total)
  r0=$(metric_sum bookie_journal_reused_files_total)
  "$PERF" ledger --meta "$META" -s $size --inflight 512 -d "$DUR" --delete \
    >"$OUT/ledger-reused-$size.json" 2>"$OUT/ledger-reused-$size.log"
  g1=$(metric_sum bookie_journal_groups_total); by1=$(metric_sum bookie_journal_bytes_total)
  r1=$(metric_sum bookie_journal_reused_files_total)
  per=$(python3 -c "g=$g1-$g0; print(f'journal {($by1-$by0)/max(g,1)/1024:.0f} KiB/fsync over {g:.0f} fsyncs, {$r1-$r0:.0f} files reused')")
  summary "$OUT/ledger-reused-$size.json" "reused 1/1/1 ${size}B" "$per"
done
max=$(python3 -c "import json; print(int(json.load(open('$OUT/ledger-reused-1024.json'))['ops_per_sec']))")
half=$((max / 2))
wait_spares 8000000000
"$PERF" ledger --meta "$META" -s 1024 --inflight 4096 --rate $half -d "$DUR" --delete \
  >"$OUT/ledger-reused-1024-half.json" 2>"$OUT/ledger-reused-1024-half.log"
summary "$OUT/ledger-reused-1024-half.json" "reused 1/1/1 1024B @${half}/s"
stop_bookies
BOOKIE_ARGS=$SAVED_ARGS
echo "summaries: $OUT"
