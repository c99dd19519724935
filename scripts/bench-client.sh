#!/usr/bin/env bash
# Issue #7's benchmark, driven by magnetar-perf (the native Rust client) against a release
# standalone: time to healthy, RSS idle / peak, the raw disk limit at the journal's measured
# bytes per fsync, maximum produce throughput (1 KiB, batching on, journal fsync on),
# end-to-end latency at 10 / 50 / 80 % of that maximum, and catch-up over a large backlog.
# Env: SECS (seconds per run, 20), BACKLOG_MB (5000), SIZE (1024), QUEUE (the catch-up
# consumer's receiver queue, 5000: with the default 1000 the FLOW round trip limits it).
# Needs the release binaries (make bench-client builds them).
set -euo pipefail
PERF="${CARGO_TARGET_DIR:-$HOME/.cache/magnetar/target}/release/magnetar-perf"
SECS="${SECS:-20}"
BACKLOG_MB="${BACKLOG_MB:-5000}"
SIZE="${SIZE:-1024}"
QUEUE="${QUEUE:-5000}"
field() { python3 -c "import json,sys; d=json.load(open('$1')); print(eval('d'+sys.argv[1]))" "$2"; }
metric() { curl -s "http://127.0.0.1:$WP/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
. "$(dirname "$0")/bench-lib.sh"
start_standalone bench
URL="pulsar://127.0.0.1:$BP"
ready=$READY_MS
sleep 1
echo "time to healthy: ${ready} ms; RSS idle: $(( $(awk '/VmRSS/ {print $2}' /proc/$PID/status) / 1024 )) MiB"

echo "== max produce (${SECS}s, ${SIZE} B, batching on)"
g0=$(metric bookie_journal_groups_total); b0=$(metric bookie_journal_bytes_total)
"$PERF" produce -u "$URL" max -s "$SIZE" -d "${SECS}s" > "$DIR/max.json" 2> "$DIR/max.live"
g1=$(metric bookie_journal_groups_total); b1=$(metric bookie_journal_bytes_total)
max=$(field "$DIR/max.json" "['ops_per_sec']")
bps=$(python3 -c "print(int(($b1 - $b0) / max(1, $g1 - $g0)))")
echo "max: $(printf %.0f "$max") msg/s, $(field "$DIR/max.json" "['mb_per_sec']") MB/s, publish p50/p99/p99.9 $(field "$DIR/max.json" "['latency_ms']['p50']") / $(field "$DIR/max.json" "['latency_ms']['p99']") / $(field "$DIR/max.json" "['latency_ms']['p999']") ms"
echo "journal: $bps bytes per fsync during that run"

echo "== raw disk at $bps bytes per fdatasync (10 s)"
"$PERF" disk --dir "$DIR" --bytes-per-sync "$bps" -d 10s > "$DIR/disk.json" 2>/dev/null
echo "raw: $(field "$DIR/disk.json" "['mb_per_sec']") MB/s, fdatasync p50/p99 $(field "$DIR/disk.json" "['latency_ms']['p50']") / $(field "$DIR/disk.json" "['latency_ms']['p99']") ms"

for pct in 10 50 80; do
  rate=$(python3 -c "print(int($max * $pct / 100))")
  "$PERF" e2e -u "$URL" "e2e-$pct" -s "$SIZE" -r "$rate" -d "${SECS}s" > "$DIR/e2e.json" 2>/dev/null
  echo "e2e at $pct % ($rate msg/s): p50/p99/p99.9 $(field "$DIR/e2e.json" "['latency_ms']['p50']") / $(field "$DIR/e2e.json" "['latency_ms']['p99']") / $(field "$DIR/e2e.json" "['latency_ms']['p999']") ms; publish p99 $(field "$DIR/e2e.json" "['publish_latency_ms']['p99']") ms; received $(field "$DIR/e2e.json" "['messages']")"
done
echo "RSS peak so far: $(( $(awk '/VmHWM/ {print $2}' /proc/$PID/status) / 1024 )) MiB"

n=$(( BACKLOG_MB * 1000000 / SIZE ))
echo "== catch-up: $n messages ($BACKLOG_MB MB) written first, then read by a new subscription"
"$PERF" consume -u "$URL" backlog -S catchup -n 0 -d 1s > /dev/null 2>&1 || true
"$PERF" produce -u "$URL" backlog -s "$SIZE" -n "$n" -d 3600s > "$DIR/fill.json" 2>/dev/null
echo "filled at $(field "$DIR/fill.json" "['mb_per_sec']") MB/s"
"$PERF" consume -u "$URL" backlog -S catchup -n "$n" -d 3600s --receiver-queue "$QUEUE" \
  > "$DIR/catchup.json" 2>/dev/null
echo "catch-up (receiver queue $QUEUE): $(field "$DIR/catchup.json" "['mb_per_sec']") MB/s ($(field "$DIR/catchup.json" "['messages']") messages in $(field "$DIR/catchup.json" "['seconds']") s)"
echo "RSS peak overall: $(( $(awk '/VmHWM/ {print $2}' /proc/$PID/status) / 1024 )) MiB"
