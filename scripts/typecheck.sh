#!/usr/bin/env bash
# mypy over the installed layout. The floors above spectrain/ live in their own folders and install as
# spectrain.components, spectrain.pipelines, spectrain.operations and spectrain.cli (pyproject's package-dir);
# mypy has no such mapping and reads an editable install's import hook not at all, so it checks a tree of links
# that has the installed shape, and its messages name the files of the checkout again.
#   scripts/typecheck.sh [mypy]        # the mypy program (default: mypy on PATH)
set -euo pipefail
mypy=${1:-mypy}
case "$mypy" in */*) mypy=$(realpath "$mypy") ;; esac
project=$(cd "$(dirname "$0")/.." && pwd)
tree=$(mktemp -d -t spectrain-typecheck.XXXXXX)
trap 'rm -rf "$tree"' EXIT
mkdir "$tree/spectrain"
for entry in "$project"/spectrain/*; do ln -s "$entry" "$tree/spectrain/"; done
for floor in components pipelines operations cli; do ln -s "$project/$floor" "$tree/spectrain/$floor"; done
ln -s "$project/podsim" "$tree/podsim"
cd "$tree"
status=0
"$mypy" --config-file "$project/pyproject.toml" spectrain podsim >"$tree/out" 2>&1 || status=$?
sed -E 's#^spectrain/(components|pipelines|operations|cli)/#\1/#' "$tree/out"
exit "$status"
