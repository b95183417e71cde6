#!/usr/bin/env bash
# What a newcomer gets: the committed HEAD cloned afresh, run under an empty home directory (no converted
# model, no pip, Hugging Face or vLLM caches, nothing from an earlier run), then a check that nothing the
# commands started is still running. A warm machine once hid a broken first step; this is the check before
# an issue is called done.
#
#   scripts/fresh-check.sh                      # make run, then make test (the README's two commands)
#   scripts/fresh-check.sh 'make test'          # the commands named, in order
#   make fresh-check                            # the same as the first line
#
# Each command's log and time are printed; the exit status is 0 only if every command passed and left no
# process behind. The scratch directory (clone, home, logs) is kept for reading; delete it when done.
set -u
project=$(git rev-parse --show-toplevel) || exit 2
scratch=$(mktemp -d -t spectrain-fresh.XXXXXX) || exit 2
mkdir -p "$scratch/home"
git clone --quiet "$project" "$scratch/clone" || exit 2
# Where packages come from is configuration, not cache: a mirror's pip.conf is kept.
for conf in .config/pip/pip.conf .pip/pip.conf; do
  [ -f "$HOME/$conf" ] && mkdir -p "$scratch/home/$(dirname "$conf")" && cp "$HOME/$conf" "$scratch/home/$conf"
done
export HOME="$scratch/home"
# Nothing of this shell's own settings: caches, tracking servers and spectrain's variables.
while IFS='=' read -r name _; do
  case "$name" in SPECTRAIN_* | HF_* | TRANSFORMERS_* | XDG_* | MLFLOW_* | VLLM_* | PIP_CACHE_DIR) unset "$name" ;; esac
done < <(env)
cd "$scratch/clone" || exit 2
echo "fresh clone of $(git log -1 --format='%h %s' | cut -c1-100) in $scratch/clone, HOME=$HOME"
[ $# -gt 0 ] || set -- "make run" "make test"
status=0
n=0
for command in "$@"; do
  n=$((n + 1))
  log="$scratch/$n.log"
  started=$(date +%s)
  bash -c "$command" >"$log" 2>&1 </dev/null
  rc=$?
  echo "=== $command: exit $rc after $(($(date +%s) - started)) s; log $log"
  grep -vE '^WARNING: Location' "$log" | tail -n 15
  [ "$rc" -eq 0 ] || status=1
  sleep 3  # what a command started has this long to go
  left=$(pgrep -af -- "$scratch/clone" | grep -v "^$$ " || true)
  if [ -n "$left" ]; then
    echo "!!! still running after '$command' (stopped now):"
    echo "$left"
    echo "$left" | awk '{print $1}' | xargs -r kill -TERM 2>/dev/null
    status=1
  fi
done
exit "$status"
