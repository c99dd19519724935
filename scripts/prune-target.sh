#!/usr/bin/env bash
# Keeps the shared build cache from filling the disk: when less than MIN_FREE_GB (default 20)
# is free where the target dir lives, drops what cargo can rebuild cheaply (incremental
# state), then old build-script outputs of librocksdb-sys (each a
# 3 GB copy of RocksDB's objects). A full disk fails builds in confusing ways (`ar`: No space
# left on device), so this runs before every `make test` and `make build`.
set -euo pipefail
TARGET="${CARGO_TARGET_DIR:-$HOME/.cache/magnetar/target}"
MIN_FREE_GB="${MIN_FREE_GB:-20}"
[ -d "$TARGET" ] || exit 0
free_gb() { df -Pk "$TARGET" | awk 'NR == 2 { print int($4 / 1048576) }'; }
[ "$(free_gb)" -ge "$MIN_FREE_GB" ] && exit 0
echo "prune-target: $(free_gb) GB free under $TARGET; dropping incremental build state" >&2
rm -rf "$TARGET"/debug/incremental "$TARGET"/release/incremental
[ "$(free_gb)" -ge "$MIN_FREE_GB" ] && exit 0
# all but the two newest RocksDB build outputs per profile (clippy and test builds may each
# have their own). A build-script output goes whole, with its fingerprint: an emptied `out/`
# under a fingerprint cargo still trusts fails the next build ("couldn't read bindings.rs")
# where a missing one is simply built again.
for profile in debug release; do
  ls -dt "$TARGET/$profile"/build/librocksdb-sys-*/output 2>/dev/null | tail -n +3 | while read -r output; do
    unit=$(dirname "$output")
    echo "prune-target: removing stale $unit" >&2
    rm -rf "$unit" "$TARGET/$profile/.fingerprint/$(basename "$unit")"
  done
done
echo "prune-target: $(free_gb) GB free now" >&2
