#!/usr/bin/env bash
# Installs what building and testing Magnetar needs, only when it is missing, so it is cheap
# to run before every build. Debian/Ubuntu (apt); run as root or with sudo available.
set -euo pipefail

need_apt=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

# Build: protoc (prost-build, etcd-client), libclang (RocksDB bindgen), OpenSSL + pkg-config.
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
# protoc's well-known types (descriptor.proto, ...), which etcd-client's protos import; only a
# recommendation of protobuf-compiler, so --no-install-recommends leaves them out.
[ -e /usr/include/google/protobuf/descriptor.proto ] || need_apt+=(libprotobuf-dev)
have_pkg libclang-dev || ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 || need_apt+=(libclang-dev)
have_pkg libssl-dev || need_apt+=(libssl-dev)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
command -v c++ >/dev/null 2>&1 || need_apt+=(g++)
# Tests: a real etcd for the cluster metadata backend.
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need_apt+=(etcd-client)
# Tests: Python 3 with venv, for the official pulsar-client (C++ core).
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install-deps: installing ${need_apt[*]}" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
      echo "install-deps: need root to install ${need_apt[*]}; run: apt-get install -y ${need_apt[*]}" >&2
      exit 1
    fi
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: cargo not found; install Rust (https://rustup.rs) first" >&2
  exit 1
fi

# The official Python client for the compatibility tests, in a venv outside the clone.
VENV="${MAGNETAR_VENV:-$HOME/.cache/magnetar/venv}"
PULSAR_CLIENT_VERSION="${PULSAR_CLIENT_VERSION:-3.13.0}"
if ! "$VENV/bin/python" -c "import pulsar" >/dev/null 2>&1; then
  echo "install-deps: creating $VENV with pulsar-client $PULSAR_CLIENT_VERSION" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "pulsar-client==$PULSAR_CLIENT_VERSION"
fi
# schemathesis checks the admin API against its OpenAPI document
SCHEMATHESIS_VERSION="${SCHEMATHESIS_VERSION:-3.39.16}"
if ! "$VENV/bin/python" -c "import schemathesis" >/dev/null 2>&1; then
  echo "install-deps: installing schemathesis $SCHEMATHESIS_VERSION into $VENV" >&2
  # later hypothesis releases break schemathesis 3.39 ("'many' object has no attribute 'more'")
  "$VENV/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION" "hypothesis==6.115.0"
fi
# fastavro: the Python client's AvroSchema (pulsar-client's `avro` extra), for the schema tests
FASTAVRO_VERSION="${FASTAVRO_VERSION:-1.12.1}"
if ! "$VENV/bin/python" -c "import fastavro" >/dev/null 2>&1; then
  echo "install-deps: installing fastavro $FASTAVRO_VERSION into $VENV" >&2
  "$VENV/bin/pip" install -q "fastavro==$FASTAVRO_VERSION"
fi
