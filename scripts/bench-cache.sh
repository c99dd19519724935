#!/usr/bin/env bash
# Entry-cache fairness: topic `a` produces 20 MB/s with no reader (it keeps filling the
# broker's cache budget, 16 MiB here) while topic `b` takes 8 000 unbatched 1 KiB messages
# for a subscription and then reads them back. Prints the cache misses of that read-back
# (entries read from the bookie) and its throughput. BIN= picks another broker binary.
# Needs the release binaries (make bench-cache).
set -euo pipefail
STANDALONE_ARGS="--managed-ledger-cache-size-mb 16"
. "$(dirname "$0")/bench-lib.sh"
PERF="${CARGO_TARGET_DIR:-$HOME/.cache/magnetar/target}/release/magnetar-perf"
start_standalone cache
U=(-u "pulsar://127.0.0.1:$BP" --web-url "http://127.0.0.1:$WP")
misses() { curl -s "http://127.0.0.1:$WP/metrics" | awk '/^magnetar_entry_cache_misses_total /{print $2}'; }
"$PERF" produce "${U[@]}" -r 20000 -s 1024 -d 40s a > /dev/null 2>&1 &
A=$!
sleep 5
"$PERF" consume "${U[@]}" -S s -n 1 -d 2s b > /dev/null 2>&1 || true  # the subscription
"$PERF" produce "${U[@]}" -r 2000 -s 1024 -n 8000 --no-batching b > /dev/null 2>&1
m0=$(misses)
"$PERF" consume "${U[@]}" -S s -n 7999 b > "$DIR/b.json" 2>/dev/null
m1=$(misses)
wait $A
echo "entries b's read-back of 8 000 had to get from the bookie (cache misses): $((m1 - m0))"
grep -E '"(messages|mb_per_sec)"' "$DIR/b.json"
