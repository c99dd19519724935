#!/usr/bin/env bash
# Tiered storage (issue #21): the disk's raw read speed; offload throughput; a catch-up read
# of a backlog from the bookie against the same read once it is offloaded; a reader's time
# to its first message when it starts in offloaded data. Once with the local filesystem
# driver, once against magnetar-s3-server (a real S3 protocol server on loopback).
# GB overrides the backlog size [2]; needs the release binaries (make bench-tiering).
set -euo pipefail
. "$(dirname "$0")/bench-lib.sh"
REL="$(dirname "$BIN")"
PERF="$REL/magnetar-perf"
S3BIN="$REL/magnetar-s3-server"
GB="${GB:-2}"
SIZE=1024
COUNT=$(( GB * 1024 * 1024 ))
H="Content-Type: application/json"
rate() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d=d[0] if isinstance(d,list) else d; print(f"{d.get(\"messages\")} msgs in {d.get(\"seconds\",0):.1f} s, {d.get(\"mb_per_sec\",0):.1f} MB/s")' "$1"; }

run() { # $1: driver name for the report; the standalone's extra args are in STANDALONE_ARGS
  start_standalone "tiering-$1"
  local api="http://127.0.0.1:$WP/admin/v2"
  local topic="persistent://public/default/backlog"
  local t="$api/persistent/public/default/backlog"
  curl -sf -X POST -H "$H" "$api/namespaces/public/default/retention" \
    -d '{"retentionTimeInMinutes": -1, "retentionSizeInMB": -1}'
  local U=(-u "pulsar://127.0.0.1:$BP" --web-url "http://127.0.0.1:$WP")
  "$PERF" produce "${U[@]}" -s $SIZE -n $COUNT -d 1h "$topic" > "$DIR/produce.json" 2>/dev/null
  echo "[$1] produced $COUNT x $SIZE B: $(rate "$DIR/produce.json")"
  # catch-up from the bookie (a fresh subscription from the earliest message)
  "$PERF" consume "${U[@]}" -S from-bookie --earliest -n $COUNT -d 1h "$topic" \
    > "$DIR/bookie.json" 2>/dev/null
  echo "[$1] catch-up from the bookie: $(rate "$DIR/bookie.json")"
  # offload everything closed, timed from the request to SUCCESS
  local start end
  start=$(date +%s%N)
  curl -sf -X PUT "$t/offload"
  until curl -sf "$t/offload" | grep -q '"SUCCESS"\|"ERROR"'; do sleep 0.1; done
  end=$(date +%s%N)
  curl -sf "$t/offload"; echo
  local bytes
  bytes=$(curl -sf "$t/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["offloadedStorageSize"])')
  echo "[$1] offloaded $bytes bytes in $(( (end - start) / 1000000 )) ms: $(python3 -c "print(f'{$bytes/1048576/(($end-$start)/1e9):.1f} MB/s')")"
  # the same catch-up, now from the tier (the block cache is far smaller than the backlog)
  "$PERF" consume "${U[@]}" -S from-tier --earliest -n $COUNT -d 1h "$topic" \
    > "$DIR/tier.json" 2>/dev/null
  echo "[$1] catch-up from the tier:   $(rate "$DIR/tier.json")"
  # a reader's first message from offloaded data, on a restarted broker (cold cache)
  kill "$PID"; wait "$PID" 2>/dev/null || true
  "$BIN" standalone --data-dir "$DIR/data" --broker-port "$BP" --web-port "$WP" \
    --bookie-port "$KP" ${STANDALONE_ARGS:-} >> "$DIR/log" 2>&1 &
  PID=$!
  until curl -sf "$api/brokers/health" >/dev/null; do sleep 0.005; done
  "$PY" - "pulsar://127.0.0.1:$BP" "$topic" "$1" <<'EOF'
import sys, time, pulsar
url, topic, name = sys.argv[1:]
c = pulsar.Client(url)
for i in range(3):
    t0 = time.monotonic()
    r = c.create_reader(topic, pulsar.MessageId.earliest)
    r.read_next(30000)
    print(f"[{name}] reader from the earliest (offloaded) message: first message in {(time.monotonic()-t0)*1000:.1f} ms (try {i+1})")
    r.close()
c.close()
EOF
  kill "$PID"; wait "$PID" 2>/dev/null || true
  rm -rf "$DIR"; trap - EXIT
}

# the disk's raw read speed: a 1 GiB file read back with O_DIRECT (no page cache)
SCRATCH="$(mktemp -d /tmp/magnetar-disk-XXXXXX)"
dd if=/dev/urandom of="$SCRATCH/f" bs=1M count=1024 status=none
sync
echo "[disk] $(dd if="$SCRATCH/f" of=/dev/null bs=1M iflag=direct 2>&1 | tail -1)"
rm -rf "$SCRATCH"

STANDALONE_ARGS="--managed-ledger-max-entries-per-ledger 1000 --managed-ledger-offload-deletion-lag-ms -1" \
  run filesystem

S3DIR="$(mktemp -d /tmp/magnetar-s3-XXXXXX)"
S3PORT=$(port)
"$S3BIN" --listen "127.0.0.1:$S3PORT" --root "$S3DIR" --access-key bench --secret-key bench-secret \
  --bucket tier > "$S3DIR.log" 2>&1 &
S3PID=$!
until grep -q "ready" "$S3DIR.log" 2>/dev/null; do sleep 0.05; done
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1
STANDALONE_ARGS="--managed-ledger-max-entries-per-ledger 1000 --managed-ledger-offload-deletion-lag-ms -1 \
  --managed-ledger-offload-driver aws-s3 --s3-managed-ledger-offload-bucket tier \
  --s3-managed-ledger-offload-region us-east-1 \
  --s3-managed-ledger-offload-service-endpoint http://127.0.0.1:$S3PORT" \
  run s3-server
kill "$S3PID"; rm -rf "$S3DIR" "$S3DIR.log"
