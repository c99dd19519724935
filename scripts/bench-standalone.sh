#!/usr/bin/env bash
# Standalone benchmark: time to healthy, RSS idle and loaded, produce / tail / catch-up with
# the official Python client (1 KiB messages, batching on). Needs the release binary and the
# venv that scripts/install-deps.sh makes (make bench-standalone does both).
set -euo pipefail
BIN="${CARGO_TARGET_DIR:-$HOME/.cache/magnetar/target}/release/magnetar"
PY="${MAGNETAR_PYTHON:-$HOME/.cache/magnetar/venv/bin/python}"
COUNT="${COUNT:-1000000}"
SIZE="${SIZE:-1024}"
DIR="$(mktemp -d /tmp/magnetar-bench-XXXXXX)"
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$DIR"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BP=$(port); WP=$(port); KP=$(port)

start=$(date +%s%N)
"$BIN" standalone --data-dir "$DIR/data" --broker-port "$BP" --web-port "$WP" --bookie-port "$KP" \
  > "$DIR/log" 2>&1 &
PID=$!
until curl -sf "http://127.0.0.1:$WP/admin/v2/brokers/health" >/dev/null; do sleep 0.005; done
ready=$(( ($(date +%s%N) - start) / 1000000 ))
sleep 1
rss_idle=$(awk '/VmRSS/ {print $2}' /proc/$PID/status)
echo "time to healthy: ${ready} ms; RSS idle: $((rss_idle / 1024)) MiB"
"$PY" "$(dirname "$0")/bench-standalone.py" "pulsar://127.0.0.1:$BP" "$COUNT" "$SIZE" &
BENCH=$!
peak=0
while kill -0 $BENCH 2>/dev/null; do
  r=$(awk '/VmRSS/ {print $2}' /proc/$PID/status); [ "$r" -gt "$peak" ] && peak=$r
  sleep 0.2
done
wait $BENCH
echo "RSS peak under load: $((peak / 1024)) MiB"
