#!/usr/bin/env bash
# Tenant isolation: the victim tenant's publish latency alone, while another tenant floods
# at its namespace publish rate limit, and while a tenant without a limit floods. Needs the
# release binary and the venv that scripts/install-deps.sh makes (make bench-isolation).
set -euo pipefail
SECONDS_PER_PHASE="${SECONDS_PER_PHASE:-20}"
VICTIM_RATE="${VICTIM_RATE:-1000}"
LIMIT="${LIMIT:-5000}"
. "$(dirname "$0")/bench-lib.sh"
start_standalone isolation
echo "phases of ${SECONDS_PER_PHASE}s; victim ${VICTIM_RATE} msg/s unbatched; flood limit ${LIMIT} msg/s per topic"
"$PY" "$(dirname "$0")/bench-isolation.py" "pulsar://127.0.0.1:$BP" "http://127.0.0.1:$WP" \
  "$SECONDS_PER_PHASE" "$VICTIM_RATE" "$LIMIT"
