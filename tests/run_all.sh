#!/usr/bin/env bash
# Run every test in the environment of the code it tests (one virtualenv per image).
# Usage: bash tests/run_all.sh [extra pytest args, e.g. -m "not slow"]
#
# Two lanes run at once, each pinned to half the cores: the train environment's tests, the serve environment's and
# its model matrix in one (measured on one core of two: 582 + 447 + 239 s), the orchestrate environment's in the
# other (1,051 s).
# On two cores one pytest process leaves a core idle much of the time (vLLM and MLflow servers starting, a watch
# waiting on real time, a single-threaded Python between the threaded torch kernels: measured 44% idle), and the
# lanes share nothing but what they build once under locks (below). Each lane's log is printed whole when it
# ends. SPECTRAIN_TEST_LANES=1 runs them one after the other on every core.
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

run() {  # run ENV[:PART] PATHS...: pytest in ENV's virtualenv, under a heading bench/record_test.py reads
  local env=${1%%:*} heading=$1; shift
  echo "=== [$heading] pytest $*"
  .venvs/$env/bin/python -m pytest --durations=25 "$@"
}
train() {
  run train components/train_heads components/evaluate components/export \
    --ignore=components/evaluate/tests/test_vllm_crosscheck.py "${@}"
}
serve() {
  run serve components/serve components/regenerate components/evaluate/tests/test_vllm_crosscheck.py "${@}"
}
matrix() {  # the serve environment's model matrix, under a heading of its own
  run serve:model-matrix tests/model_matrix "${@}"
}
orchestrate() {
  run orchestrate components/register pipelines operations tests --ignore=tests/model_matrix "${@}"
}
lane() {  # lane NAME CPUS STEP... : the steps in turn on CPUS (all: ''), each run whatever the one before it did
  local name=$1 cpus=$2 status=0; shift 2
  trap 'exit 130' INT  # pytest ends on a Ctrl-C by itself (exit 2): the lane's next environment must not start
  # Pinned to its share of the cores: two lanes whose torch and vLLM threads each spin on every core thrash
  # (measured: 97% busy, yet no further after 17 minutes than one lane after the other); on its own cores each lane
  # runs as on a smaller machine, and vLLM binds to what the lane has (spectrain.vllm.cpu_settings reads the
  # affinity).
  [ -z "$cpus" ] || taskset -cp "$cpus" "$BASHPID" >/dev/null
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
  lane all "" train serve matrix orchestrate || status=1
  exit $status
fi
# The cores this script may use, halved: the first half for one lane, the rest for the other (one core: both).
read -r first second < <(python3 -c 'import os; c = sorted(os.sched_getaffinity(0)); h = max(len(c) // 2, 1)
print(",".join(map(str, c[:h])), ",".join(map(str, c[h:] or c)))')
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
lane train-serve "$first" train serve >"$logs/train-serve.log" 2>&1 &
lanes[$!]=train-serve
lane orchestrate-matrix "$second" orchestrate matrix >"$logs/orchestrate-matrix.log" 2>&1 &
lanes[$!]=orchestrate-matrix
set +m
echo "=== two lanes at once: train and serve on CPUs $first, orchestrate and the model matrix on CPUs $second;" \
  "each lane's log follows when it ends"
status=0
while [ ${#lanes[@]} -gt 0 ]; do
  wait -n -p ended "${!lanes[@]}" || status=1
  cat "$logs/${lanes[$ended]}.log"
  unset "lanes[$ended]"
done
exit $status
