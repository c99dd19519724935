#!/usr/bin/env bash
# Compaction time: N unbatched 200-byte messages over N/2 keys (each key written twice, so
# half the entries survive), then one compaction, timed from the REST call to SUCCESS.
# Needs the release binary and the venv (make bench-compaction). N overrides [60000].
set -euo pipefail
. "$(dirname "$0")/bench-lib.sh"
start_standalone compaction
"$PY" "$(dirname "$0")/bench-compaction.py" "pulsar://127.0.0.1:$BP" "http://127.0.0.1:$WP" "${N:-60000}"
