#!/usr/bin/env bash
# Tenant isolation: the victim tenant's publish latency alone, while another tenant floods
# at its namespace publish rate limit, and while a tenant without a limit floods. Needs the
# release binary and the venv that scripts/install-deps.sh makes (make bench-isolation).
set -euo pipefail
BIN="${CARGO_TARGET_DIR:-$HOME/.cache/magnetar/target}/release/magnetar"
PY="${MAGNETAR_PYTHON:-$HOME/.cache/magnetar/venv/bin/python}"
SECONDS_PER_PHASE="${SECONDS_PER_PHASE:-20}"
VICTIM_RATE="${VICTIM_RATE:-1000}"
LIMIT="${LIMIT:-5000}"
DIR="$(mktemp -d /tmp/magnetar-isolation-XXXXXX)"
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$DIR"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BP=$(port); WP=$(port); KP=$(port)
"$BIN" standalone --data-dir "$DIR/data" --broker-port "$BP" --web-port "$WP" --bookie-port "$KP" \
  > "$DIR/log" 2>&1 &
PID=$!
until curl -sf "http://127.0.0.1:$WP/admin/v2/brokers/health" >/dev/null; do sleep 0.01; done
echo "phases of ${SECONDS_PER_PHASE}s; victim ${VICTIM_RATE} msg/s unbatched; flood limit ${LIMIT} msg/s per topic"
"$PY" "$(dirname "$0")/bench-isolation.py" "pulsar://127.0.0.1:$BP" "http://127.0.0.1:$WP" \
  "$SECONDS_PER_PHASE" "$VICTIM_RATE" "$LIMIT"
