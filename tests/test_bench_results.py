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
        absolute = [value for value in strings(record) if value.startswith("/")]
        assert not absolute, f"{path.name} holds paths of the machine that wrote it: {absolute[:3]}"


def strings(value):
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return [s for item in value for s in strings(item)]
    return [value] if isinstance(value, str) else []


def test_a_result_is_written_without_the_paths_of_the_machine_that_wrote_it(monkeypatch, tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    import results

    monkeypatch.setattr(results, "RESULTS", tmp_path)
    figures = {"plot": str(ROOT / "bench" / ".work" / "a.png"), "cache": [str(Path.home() / ".cache" / "m")]}
    record = json.loads(results.write("paths", "cmd", {**figures, "tmp": "/tmp/pytest-7/run/x.json"}).read_text())
    assert record["figures"] == {"plot": "bench/.work/a.png", "cache": ["~/.cache/m"], "tmp": ".../run/x.json"}


@pytest.mark.parametrize(
    "name, readme",
    [
        ("make-run", "docs/results.md"),
        ("make-test", "docs/results.md"),
        ("make-test-fast", "docs/results.md"),
        ("ablation", "components/evaluate/README.md"),
        ("heads", "components/evaluate/README.md"),
        ("heads-dflash", "components/evaluate/README.md"),
        ("regenerate-concurrency", "components/regenerate/README.md"),
        ("model-matrix", "docs/bases.md"),
        ("continual", "docs/results.md"),
    ],
)
def test_the_readme_table_is_the_one_made_from_the_newest_result(name, readme):
    table = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "results.py"), "table", name], capture_output=True, text=True, check=True
    ).stdout
    assert table in (ROOT / readme).read_text(), f"re-paste `python bench/results.py table {name}` into {readme}"
