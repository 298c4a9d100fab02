#!/usr/bin/env bash
# Run one integration test many times in a row and count failures: the stress job for timing-
# sensitive paths (issue 11: a command produced inside device_connected must be the first command).
#
#   tools/ci/stress.sh [RUNS] [PYTEST_NODE_OR_-k_EXPRESSION]
#   tools/ci/stress.sh 200            # default test: the 20-session greeting test
#
# Prints one line per run and a final "N passed, M failed"; exit 1 when any run failed. Failed
# runs' output is kept in $STRESS_DIR (default: a new temporary directory).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RUNS=${1:-200}
SELECT=${2:-test_command_queued_on_device_connect_is_the_first_command}
DIR=${STRESS_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/fleet-stress.XXXXXX")}
cd "$ROOT"
passed=0
failed=0
for run in $(seq 1 "$RUNS"); do
  if .venv/bin/pytest -q -p no:cacheprovider tests/integration -k "$SELECT" >"$DIR/run.log" 2>&1; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    cp "$DIR/run.log" "$DIR/failed-$run.log"
  fi
  echo "stress: run $run/$RUNS: $passed passed, $failed failed"
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
