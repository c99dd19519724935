#!/usr/bin/env bash
# Tenant isolation: the victim tenant's publish latency with no flood, while another tenant
# floods at its namespace publish rate limit, and (unless ONLY_LIMITED=1) while a tenant
# without a limit floods, in alternating windows (see bench-isolation.py). Needs the release
# binary and the venv that scripts/install-deps.sh makes (make bench-isolation).
# WINDOW, ROUNDS, SETTLE, VICTIM_RATE, LIMIT, FLOOD_SCHED, FLOOD_DOMAIN override; BOOKIES=2
# AFFINITY=1 puts the flooding tenants on a bookie (journal) of their own.
set -euo pipefail
WINDOW="${WINDOW:-8}"
VICTIM_RATE="${VICTIM_RATE:-1000}"
LIMIT="${LIMIT:-5000}"
. "$(dirname "$0")/bench-lib.sh"
sync  # what ran before (a build) is not still being written back during the windows
start_standalone isolation
"$PY" "$(dirname "$0")/bench-isolation.py" "pulsar://127.0.0.1:$BP" "http://127.0.0.1:$WP" \
  "$WINDOW" "$VICTIM_RATE" "$LIMIT"
