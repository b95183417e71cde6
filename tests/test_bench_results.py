"""Benchmark figures live in bench/results/*.json; the README's tables are made from them, not typed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_every_result_says_what_produced_it_where_and_when():
    paths = sorted((ROOT / "bench" / "results").glob("*.json"))
    assert paths
    for path in paths:
        record = json.loads(path.read_text())
        assert {"name", "command", "date", "machine", "commit", "figures"} <= set(record), path.name
        assert record["machine"]["cpu"] and record["machine"]["cores"] and record["commit"] != "unknown", path.name


@pytest.mark.parametrize(
    "name, readme",
    [
        ("make-run", "README.md"),
        ("make-test", "README.md"),
        ("make-test-fast", "README.md"),
        ("ablation", "components/evaluate/README.md"),
        ("heads", "components/evaluate/README.md"),
        ("heads-dflash", "components/evaluate/README.md"),
        ("regenerate-concurrency", "components/regenerate/README.md"),
        ("model-matrix", "README.md"),
    ],
)
def test_the_readme_table_is_the_one_made_from_the_newest_result(name, readme):
    table = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "results.py"), "table", name], capture_output=True, text=True, check=True
    ).stdout
    assert table in (ROOT / readme).read_text(), f"re-paste `python bench/results.py table {name}` into {readme}"
