#!/usr/bin/env bash
# Run every test in the environment of the code it tests (one virtualenv per image).
# Usage: bash tests/run_all.sh [extra pytest args, e.g. -m "not slow"]
#
# Two lanes run at once: the train environment's tests then the serve environment's in one, the orchestrate
# environment's in the other. On two cores one pytest process leaves a core idle much of the time (vLLM and
# MLflow servers starting, a watch waiting on real time, a single-threaded Python between the threaded torch
# kernels: measured 44% idle), and the lanes share nothing but what they build once under locks (below).
# Each lane's log is printed whole when it ends. SPECTRAIN_TEST_LANES=1 runs the three one after the other.
set -uo pipefail
cd "$(dirname "$0")/.."
# What the tests build once and share across environments (tests/support/memorised.py): one folder per suite
# run, removed at its end, so nothing outlives the code that built it.
if [ -z "${SPECTRAIN_TEST_CACHE:-}" ]; then
  SPECTRAIN_TEST_CACHE=$(mktemp -d -t spectrain-tests.XXXXXX) && export SPECTRAIN_TEST_CACHE
  trap 'rm -rf "$SPECTRAIN_TEST_CACHE"' EXIT
fi
# The embedded base is converted from its GGUF once per suite, into that folder, and every test reads it there
# (the end-to-end run that checks a fresh machine's first conversion gives itself an empty cache).
export SPECTRAIN_MODEL_CACHE="${SPECTRAIN_MODEL_CACHE:-$SPECTRAIN_TEST_CACHE/models}"
# Tests that cross environments call run_step, which finds each environment's Python here.
for env in serve train orchestrate; do export "SPECTRAIN_PYTHON_${env^^}=$PWD/.venvs/$env/bin/python"; done

run() {  # run ENV PATHS...
  local env=$1; shift
  echo "=== [$env] pytest $*"
  .venvs/$env/bin/python -m pytest --durations=25 "$@"
}
train() {
  run train components/train_heads components/evaluate components/export \
    --ignore=components/evaluate/tests/test_vllm_crosscheck.py "${@}"
}
serve() {
  run serve components/serve components/regenerate components/evaluate/tests/test_vllm_crosscheck.py \
    tests/model_matrix "${@}"
}
orchestrate() {
  run orchestrate components/register pipelines operations tests --ignore=tests/model_matrix "${@}"
}
lane() {  # lane NAME STEP... : the steps in turn, each run whatever the one before it did
  local name=$1 status=0; shift
  trap 'exit 130' INT  # pytest ends on a Ctrl-C by itself (exit 2): the lane's next environment must not start
  # vLLM's own cache, shared by the servers of a lane as by every server of a user's machine: a start after the
  # first skips inspecting the model classes again (a subprocess per architecture, ~15 s on 2 cores); one per
  # lane, so that no two servers write one at the same time.
  export VLLM_CACHE_ROOT="${VLLM_CACHE_ROOT:-$SPECTRAIN_TEST_CACHE/vllm-$name}"
  for step in "$@"; do "$step" "${ARGS[@]}" || status=1; done
  return $status
}

ARGS=("$@")
if [ "${SPECTRAIN_TEST_LANES:-2}" = 1 ]; then
  status=0
  lane all train serve orchestrate || status=1
  exit $status
fi
logs="$SPECTRAIN_TEST_CACHE/lanes" && mkdir -p "$logs"
declare -A lanes  # process id: lane
# Each lane in a process group of its own (job control on), so that a Ctrl-C, which reaches this script, is
# handed on to every process of both lanes, and their tests stop their servers as they would in a terminal.
stop() {  # stop SIGNAL STATUS: hand the signal on to every process of the lanes still running, show their logs
  for pid in "${!lanes[@]}"; do kill -"$1" -- "-$pid"; done 2>/dev/null
  wait
  for lane in "${lanes[@]}"; do cat "$logs/$lane.log"; done
  exit "$2"
}
trap 'stop INT 130' INT
trap 'stop TERM 143' TERM
set -m
lane train-serve train serve >"$logs/train-serve.log" 2>&1 &
lanes[$!]=train-serve
lane orchestrate orchestrate >"$logs/orchestrate.log" 2>&1 &
lanes[$!]=orchestrate
set +m
echo "=== two lanes at once: train then serve, and orchestrate; each lane's log follows when it ends"
status=0
while [ ${#lanes[@]} -gt 0 ]; do
  wait -n -p ended "${!lanes[@]}" || status=1
  cat "$logs/${lanes[$ended]}.log"
  unset "lanes[$ended]"
done
exit $status
