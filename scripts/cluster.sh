#!/usr/bin/env bash
# A Magnetar cluster as plain processes on this machine: etcd (Debian's etcd-server),
# `magnetar init-cluster`, 3 bookies and 2 brokers on free loopback ports.
#
#   scripts/cluster.sh up       start it (prints the service URL); fails if one runs already
#   scripts/cluster.sh status   what runs, and each broker's health
#   scripts/cluster.sh down     stop everything (SIGTERM, then SIGKILL after 10 s)
#   scripts/cluster.sh clean    down, then delete the data
#   scripts/cluster.sh kill NAME     kill -9 one process (etcd, bookie-2, broker-1, ...)
#   scripts/cluster.sh start NAME    start it again on its ports and data
#
# Env: MAGNETAR_BIN (default: the release build), CLUSTER_DIR (./data/cluster), BOOKIES (3),
# BROKERS (2), CLUSTER_NAME (local), BROKER_ARGS (more flags for every broker).
set -euo pipefail
T=${CARGO_TARGET_DIR:-$HOME/.cache/magnetar/target}
BIN=${MAGNETAR_BIN:-$T/release/magnetar}
DIR=${CLUSTER_DIR:-data/cluster}
BOOKIES=${BOOKIES:-3}
BROKERS=${BROKERS:-2}
NAME=${CLUSTER_NAME:-local}
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# A process counts as alive unless it is gone or a zombie (killed, and its parent, often
# pid 1 in a container, has not reaped it).
pid_alive() {
  local state; state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "${state#Z}" = "$state" ]
}
alive() { [ -f "$1" ] && pid_alive "$(cat "$1")"; }

# A component's port: chosen once and kept, so `up` after `down` finds its data again (a
# bookie's address is written into the ledgers it holds).
kept_port() { # name
  local f="$DIR/ports/$1"
  [ -f "$f" ] || { mkdir -p "$DIR/ports"; port >"$f"; }
  cat "$f"
}

wait_http() { # url what
  for _ in $(seq 300); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "cluster: $2 did not become healthy ($1); see $DIR/logs" >&2
  return 1
}

start_etcd() {
  local cp pp
  cp=$(kept_port etcd-client); pp=$(kept_port etcd-peer)
  etcd --name m0 --data-dir "$DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$cp" --advertise-client-urls "http://127.0.0.1:$cp" \
    --listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp" \
    --initial-cluster "m0=http://127.0.0.1:$pp" --logger zap --log-level warn \
    >>"$DIR/logs/etcd.log" 2>&1 &
  echo $! >"$DIR/pids/etcd.pid"
  wait_http "http://127.0.0.1:$cp/health" etcd
  echo "etcd://127.0.0.1:$cp" >"$DIR/meta"
}

# The bookie protocol's shared secret: made once, given to every bookie and broker.
secret() {
  local f="$DIR/bookie-secret"
  [ -s "$f" ] || (umask 077; head -c 32 /dev/urandom | base64 >"$f")
  echo "$f"
}

start_bookie() { # i
  local kp hp
  kp=$(kept_port "bookie-$1"); hp=$(kept_port "bookie-$1-http")
  RUST_LOG=${RUST_LOG:-info} "$BIN" bookie --meta "$(cat "$DIR/meta")" --data-dir "$DIR/bookie-$1" \
    --bookie-port "$kp" --http-port "$hp" --bookie-auth-secret "$(secret)" \
    >>"$DIR/logs/bookie-$1.log" 2>&1 &
  echo $! >"$DIR/pids/bookie-$1.pid"
  wait_http "http://127.0.0.1:$hp/health" "bookie $1"
}

spawn_broker() { # i
  local bp wp
  bp=$(kept_port "broker-$1"); wp=$(kept_port "broker-$1-web")
  echo "$bp $wp" >"$DIR/broker-$1.ports"
  # shellcheck disable=SC2086
  RUST_LOG=${RUST_LOG:-info} "$BIN" broker --meta "$(cat "$DIR/meta")" --cluster "$NAME" \
    --broker-port "$bp" --web-port "$wp" --bookie-auth-secret "$(secret)" ${BROKER_ARGS:-} \
    >>"$DIR/logs/broker-$1.log" 2>&1 &
  echo $! >"$DIR/pids/broker-$1.pid"
}

wait_broker() { # i
  local wp; wp=$(kept_port "broker-$1-web")
  wait_http "http://127.0.0.1:$wp/admin/v2/brokers/health" "broker $1"
}

start_one() { # name
  mkdir -p "$DIR/logs" "$DIR/pids"
  if alive "$DIR/pids/$1.pid"; then echo "cluster: $1 is running" >&2; exit 1; fi
  case "$1" in
    etcd) start_etcd ;;
    bookie-[0-9]*) start_bookie "${1#bookie-}" ;;
    broker-[0-9]*) spawn_broker "${1#broker-}"; wait_broker "${1#broker-}" ;;
    *) echo "cluster: no component $1 (etcd, bookie-N, broker-N)" >&2; exit 2 ;;
  esac
  echo "started $1"
}

up() {
  mkdir -p "$DIR/logs" "$DIR/pids"
  for p in "$DIR"/pids/*.pid; do
    if alive "$p"; then
      echo "cluster: already running (scripts/cluster.sh status; down to stop)" >&2
      exit 1
    fi
  done
  [ -x "$BIN" ] || { echo "cluster: no binary at $BIN (make cluster builds it)" >&2; exit 1; }
  command -v etcd >/dev/null || { echo "cluster: etcd is missing (make deps installs it)" >&2; exit 1; }
  local start; start=$(date +%s%N)
  start_etcd
  local urls=() i
  for i in $(seq 1 "$BROKERS"); do
    urls+=("127.0.0.1:$(kept_port "broker-$i")")
  done
  local service_url web
  service_url="pulsar://$(IFS=,; echo "${urls[*]}")"
  web="http://127.0.0.1:$(kept_port broker-1-web)"
  "$BIN" init-cluster --meta "$(cat "$DIR/meta")" --cluster "$NAME" \
    --broker-service-url "$service_url" --web-service-url "$web" \
    >"$DIR/logs/init-cluster.log" 2>&1
  for i in $(seq 1 "$BOOKIES"); do start_bookie "$i"; done
  for i in $(seq 1 "$BROKERS"); do spawn_broker "$i"; done
  for i in $(seq 1 "$BROKERS"); do wait_broker "$i"; done
  echo "$service_url" >"$DIR/service-url"
  echo "cluster $NAME up in $(( ($(date +%s%N) - start) / 1000000 )) ms: etcd, $BOOKIES bookies, $BROKERS brokers"
  echo "service URL: $service_url"
  echo "admin:       $web   (magnetar-admin --admin-url $web ...)"
  echo "metadata:    $(cat "$DIR/meta")"
  echo "logs:        $DIR/logs   stop: scripts/cluster.sh down"
}

status() {
  local any=0
  for p in "$DIR"/pids/*.pid; do
    [ -f "$p" ] || continue
    any=1
    local name; name=$(basename "$p" .pid)
    if alive "$p"; then echo "$name: running (pid $(cat "$p"))"; else echo "$name: stopped"; fi
  done
  [ "$any" = 1 ] || { echo "no cluster in $DIR"; return 0; }
  for f in "$DIR"/broker-*.ports; do
    [ -f "$f" ] || continue
    local bp wp; read -r bp wp <"$f"
    local h; h=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$wp/admin/v2/brokers/health" || true)
    echo "$(basename "$f" .ports) pulsar://127.0.0.1:$bp http://127.0.0.1:$wp health: $h"
  done
  [ -f "$DIR/service-url" ] && echo "service URL: $(cat "$DIR/service-url")"
  return 0
}

down() {
  local pids=()
  # brokers first (they give their bundles up), then bookies, then etcd
  for p in "$DIR"/pids/broker-*.pid "$DIR"/pids/bookie-*.pid "$DIR"/pids/etcd.pid; do
    [ -f "$p" ] || continue
    if alive "$p"; then
      kill "$(cat "$p")" 2>/dev/null || true
      pids+=("$(cat "$p")")
    fi
    rm -f "$p"
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 100); do pid_alive "$pid" || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  echo "cluster stopped (${#pids[@]} processes)"
}

case "${1:-}" in
  up) up ;;
  status) status ;;
  down) down ;;
  clean) down; rm -rf "$DIR"; echo "removed $DIR" ;;
  kill) [ -n "${2:-}" ] && alive "$DIR/pids/$2.pid" || { echo "cluster: $2 is not running" >&2; exit 1; }
        kill -9 "$(cat "$DIR/pids/$2.pid")"; echo "killed $2" ;;
  start) start_one "${2:-}" ;;
  *) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
