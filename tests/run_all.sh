#!/usr/bin/env bash
# Run every test in the environment of the code it tests (one virtualenv per image).
# Usage: bash tests/run_all.sh [extra pytest args, e.g. -m "not slow"]
set -uo pipefail
cd "$(dirname "$0")/.."
status=0
run() {  # run ENV PATHS...
  local env=$1; shift
  echo "=== [$env] pytest $*"
  .venvs/$env/bin/python -m pytest "$@" || status=1
}
run train components/train_heads components/evaluate components/export "${@}"
run serve components/serve components/regenerate "${@}"
run orchestrate components/register pipelines tests "${@}"
exit $status
