# Sourced by the bench scripts: starts a release standalone on free ports in a temp dir and
# stops it (and removes the dir) on exit. After `start_standalone NAME`: $DIR, $PID, $BP (binary
# protocol port), $WP (web port) and $READY_MS (time from start to a healthy broker).
BIN="${BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/magnetar/target}/release/magnetar}"
PY="${MAGNETAR_PYTHON:-$HOME/.cache/magnetar/venv/bin/python}"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_standalone() {
  DIR="$(mktemp -d "/tmp/magnetar-$1-XXXXXX")"
  trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$DIR"' EXIT
  BP=$(port); WP=$(port); KP=$(port)
  local start
  start=$(date +%s%N)
  "$BIN" standalone --data-dir "$DIR/data" --broker-port "$BP" --web-port "$WP" \
    --bookie-port "$KP" --bookies "${BOOKIES:-1}" ${STANDALONE_ARGS:-} > "$DIR/log" 2>&1 &
  PID=$!
  until curl -sf "http://127.0.0.1:$WP/admin/v2/brokers/health" >/dev/null; do sleep 0.005; done
  READY_MS=$(( ($(date +%s%N) - start) / 1000000 ))
}
