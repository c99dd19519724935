#!/usr/bin/env bash
# A Magnetar cluster as plain processes on this machine: etcd (Debian's etcd-server),
# `magnetar init-cluster`, 3 bookies and 2 brokers on free loopback ports.
#
#   scripts/cluster.sh up       start it (prints the service URL); fails if one runs already
#   scripts/cluster.sh status   what runs, and each broker's health
#   scripts/cluster.sh down     stop everything (SIGTERM, then SIGKILL after 10 s)
#   scripts/cluster.sh clean    down, then delete the data
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

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

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
  local cp pp
  cp=$(kept_port etcd-client); pp=$(kept_port etcd-peer)
  etcd --name m0 --data-dir "$DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$cp" --advertise-client-urls "http://127.0.0.1:$cp" \
    --listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp" \
    --initial-cluster "m0=http://127.0.0.1:$pp" --logger zap --log-level warn \
    >"$DIR/logs/etcd.log" 2>&1 &
  echo $! >"$DIR/pids/etcd.pid"
  wait_http "http://127.0.0.1:$cp/health" etcd
  local meta="etcd://127.0.0.1:$cp"
  echo "$meta" >"$DIR/meta"
  local urls=() webs=()
  local bp wp
  for i in $(seq 1 "$BROKERS"); do
    bp=$(kept_port "broker-$i"); wp=$(kept_port "broker-$i-web")
    urls+=("127.0.0.1:$bp"); webs+=("$wp")
    echo "$bp $wp" >"$DIR/broker-$i.ports"
  done
  local service_url
  service_url="pulsar://$(IFS=,; echo "${urls[*]}")"
  "$BIN" init-cluster --meta "$meta" --cluster "$NAME" \
    --broker-service-url "$service_url" --web-service-url "http://127.0.0.1:${webs[0]}" \
    >"$DIR/logs/init-cluster.log" 2>&1
  local kp hp
  for i in $(seq 1 "$BOOKIES"); do
    kp=$(kept_port "bookie-$i"); hp=$(kept_port "bookie-$i-http")
    RUST_LOG=${RUST_LOG:-info} "$BIN" bookie --meta "$meta" --data-dir "$DIR/bookie-$i" \
      --bookie-port "$kp" --http-port "$hp" >"$DIR/logs/bookie-$i.log" 2>&1 &
    echo $! >"$DIR/pids/bookie-$i.pid"
    wait_http "http://127.0.0.1:$hp/health" "bookie $i"
  done
  for i in $(seq 1 "$BROKERS"); do
    read -r bp wp <"$DIR/broker-$i.ports"
    # shellcheck disable=SC2086
    RUST_LOG=${RUST_LOG:-info} "$BIN" broker --meta "$meta" --cluster "$NAME" \
      --broker-port "$bp" --web-port "$wp" ${BROKER_ARGS:-} >"$DIR/logs/broker-$i.log" 2>&1 &
    echo $! >"$DIR/pids/broker-$i.pid"
  done
  for i in $(seq 1 "$BROKERS"); do
    read -r bp wp <"$DIR/broker-$i.ports"
    wait_http "http://127.0.0.1:$wp/admin/v2/brokers/health" "broker $i"
  done
  echo "$service_url" >"$DIR/service-url"
  echo "cluster $NAME up in $(( ($(date +%s%N) - start) / 1000000 )) ms: etcd, $BOOKIES bookies, $BROKERS brokers"
  echo "service URL: $service_url"
  echo "admin:       http://127.0.0.1:${webs[0]}   (magnetar-admin --admin-url ...)"
  echo "metadata:    $meta"
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
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  echo "cluster stopped (${#pids[@]} processes)"
}

case "${1:-}" in
  up) up ;;
  status) status ;;
  down) down ;;
  clean) down; rm -rf "$DIR"; echo "removed $DIR" ;;
  *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
