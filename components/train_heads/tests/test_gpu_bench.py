"""bench/gpu.py, the GPU proof, rehearsed at tiny size on the CPU: every stage runs and reports, so the one command
a GPU machine gets does not fail on its first line (its figures there are the card's; these are not recorded)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_the_gpu_proof_runs_every_stage_at_tiny_size_on_the_cpu(tmp_path):
    recorded = {p: p.stat().st_mtime for p in (ROOT / "bench" / "results").glob("gpu-*.json")}
    completed = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--device", "cpu", "--tiny", "--steps", "2", "--no-record"]
        + ["--copy-to", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    (written,) = tmp_path.glob("gpu-*.json")
    figures = json.loads(written.read_text())
    for mode in ("eagle3", "dflash"):
        trained = figures[f"train {mode}"]
        assert trained["steps"] == 2 and trained["placement"]["device"] == "cpu"
        assert trained["hidden_state_cache"]["tokens"] > 0 and trained["memory_plan_gib"] > 0
    evaluated = figures["evaluate eagle3"]
    assert evaluated["dtype"] == "float32" and evaluated["step_costs"][0]["batch"] == 1
    assert evaluated["recommended_num_draft_tokens"] >= 1
    after = {p: p.stat().st_mtime for p in (ROOT / "bench" / "results").glob("gpu-*.json")}
    assert after == recorded, "a CPU rehearsal must not be recorded as the GPU proof"


def test_without_a_gpu_the_proof_says_what_it_saw_instead_of_running_on_the_cpu():
    completed = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--no-record"], capture_output=True, text=True, timeout=300
    )
    assert completed.returncode != 0 and "no CUDA device" in completed.stderr and "torch" in completed.stderr
