#!/usr/bin/env bash
# Run every test in the environment of the code it tests (one virtualenv per image).
# Usage: bash tests/run_all.sh [extra pytest args, e.g. -m "not slow"]
set -uo pipefail
cd "$(dirname "$0")/.."
status=0
# What the tests build once and share across environments (tests/support/memorised.py): one folder per suite
# run, removed at its end, so nothing outlives the code that built it.
if [ -z "${SPECTRAIN_TEST_CACHE:-}" ]; then
  SPECTRAIN_TEST_CACHE=$(mktemp -d -t spectrain-tests.XXXXXX) && export SPECTRAIN_TEST_CACHE
  trap 'rm -rf "$SPECTRAIN_TEST_CACHE"' EXIT
fi
# The embedded base is converted from its GGUF once per suite, into that folder, and every test reads it there
# (the end-to-end run that checks a fresh machine's first conversion gives itself an empty cache).
export SPECTRAIN_MODEL_CACHE="${SPECTRAIN_MODEL_CACHE:-$SPECTRAIN_TEST_CACHE/models}"
# vLLM's own cache, shared by every server the suite starts as by every server of a user's machine: a start after
# the first skips inspecting the model classes again (a subprocess per architecture, ~15 s on 2 cores).
export VLLM_CACHE_ROOT="${VLLM_CACHE_ROOT:-$SPECTRAIN_TEST_CACHE/vllm}"
# Tests that cross environments call run_step, which finds each environment's Python here.
for env in serve train orchestrate; do export "SPECTRAIN_PYTHON_${env^^}=$PWD/.venvs/$env/bin/python"; done
run() {  # run ENV PATHS...
  local env=$1; shift
  echo "=== [$env] pytest $*"
  .venvs/$env/bin/python -m pytest --durations=25 "$@" || status=1
}
run train components/train_heads components/evaluate components/export \
    --ignore=components/evaluate/tests/test_vllm_crosscheck.py "${@}"
run serve components/serve components/regenerate components/evaluate/tests/test_vllm_crosscheck.py \
    tests/model_matrix "${@}"
run orchestrate components/register pipelines operations tests --ignore=tests/model_matrix "${@}"
exit $status
