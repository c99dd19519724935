#!/usr/bin/env bash
# Standalone benchmark: time to healthy, RSS idle and loaded, produce / tail / catch-up with
# the official Python client (1 KiB messages, batching on). Needs the release binary and the
# venv that scripts/install-deps.sh makes (make bench-standalone does both).
set -euo pipefail
COUNT="${COUNT:-1000000}"
SIZE="${SIZE:-1024}"
. "$(dirname "$0")/bench-lib.sh"
start_standalone bench
ready=$READY_MS
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
