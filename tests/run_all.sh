#!/usr/bin/env bash
# Run every test in the environment of the code it tests (one virtualenv per image).
# Usage: bash tests/run_all.sh [extra pytest args, e.g. -m "not slow"]
set -uo pipefail
cd "$(dirname "$0")/.."
status=0
# Tests that cross environments call run_step, which finds each environment's Python here.
for env in serve train orchestrate; do export "SPECTRAIN_PYTHON_${env^^}=$PWD/.venvs/$env/bin/python"; done
run() {  # run ENV PATHS...
  local env=$1; shift
  echo "=== [$env] pytest $*"
  .venvs/$env/bin/python -m pytest "$@" || status=1
}
run train components/train_heads components/evaluate components/export \
    --ignore=components/evaluate/tests/test_vllm_crosscheck.py "${@}"
run serve components/serve components/regenerate components/evaluate/tests/test_vllm_crosscheck.py \
    tests/model_matrix "${@}"
run orchestrate components/register pipelines tests --ignore=tests/model_matrix "${@}"
exit $status
