"""Multi-process training: the train step relaunches itself under torchrun; on CPU two gloo ranks really train."""

import json
import os
import sys
from pathlib import Path

import pytest

from spectrain.components.train_heads import launch
from spectrain.draft_checkpoint import DRAFT_WEIGHTS
from tests.support.gloo import run_ranks

# Imported by every rank's interpreter (PYTHONPATH): rank 1 builds its Trainer seconds after rank 0, as a rank whose
# node loads the base more slowly does. Nothing in the product knows about it.
SLOW_RANK = """
import os, time
if os.environ.get("RANK") == "1":
    import transformers
    original = transformers.Trainer.__init__
    def slower(self, *args, **kwargs):
        time.sleep(5)
        original(self, *args, **kwargs)
    transformers.Trainer.__init__ = slower
"""


def test_torchrun_command_relaunches_the_same_step():
    command = launch.torchrun_command(4, Path("/c.json"), Path("/r.json"), python="/py")
    assert command == [
        "/py",
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=4",
        "-m",
        "spectrain.cli",
        "step",
        "train-heads",
        "--config",
        "/c.json",
        "--result",
        "/r.json",
    ]


def test_process_count_defaults_to_one_per_gpu(monkeypatch):
    monkeypatch.setattr("torch.cuda.device_count", lambda: 8)
    assert launch.processes_wanted(0) == 8
    assert launch.processes_wanted(2) == 2
    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    assert launch.processes_wanted(0) == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode, extra",
    [  # (Medusa's two ranks: the next test, which also makes one of them late)
        ("eagle3", ["--draft-vocab-size", "512", "--hidden-state-cache"]),
        ("dflash", ["--dflash-block-size", "4", "--hidden-state-cache"]),
    ],
)
def test_two_gloo_ranks_split_the_data_and_rank_zero_reports(tiny_data, tmp_path, mode, extra):
    output = tmp_path / "checkpoint"
    completed = run_ranks(
        [
            sys.executable,
            "-m",
            "spectrain.cli",
            "step",
            "train-heads",
            "--data",
            tiny_data,
            "--mode",
            mode,
            "--output-dir",
            str(output),
            "--max-steps",
            "2",
            "--batch-size",
            "2",
            "--max-length",
            "64",
            "--training-arguments",
            '{"logging_steps": 1}',
            "--num-processes",
            "2",
            "--result",
            str(tmp_path / "result.json"),
            *extra,
        ],
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "-m torch.distributed.run --standalone --nproc-per-node=2" in completed.stdout
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["processes"] == 2 and result["steps"] == 2
    # 8 conversations, 2 per rank per step, 2 ranks: one step is half an epoch (one rank alone: a quarter)
    assert [entry["epoch"] for entry in result["history"] if "loss" in entry] == [0.5, 1.0]
    assert (output / DRAFT_WEIGHTS).exists() and (output / "training_curves.png").exists()
    # rank 0 built the cache while rank 1 waited, then reused it
    assert completed.stdout.count("hidden-state cache:") == 1
    assert "reusing hidden-state cache" in completed.stdout


@pytest.mark.slow
def test_ranks_stop_at_the_same_step_when_one_starts_late(tiny_data, tmp_path):
    """A wall-clock budget read by each rank on its own clock ends a late rank's training steps after the others:
    it then waits in an all-reduce nobody joins. One clock, rank 0's, broadcast every step: all stop together.
    Online Medusa training on two ranks, which split the data and of which rank 0 reports."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SLOW_RANK)
    completed = run_ranks(
        [
            sys.executable,
            "-m",
            "spectrain.cli",
            "step",
            "train-heads",
            "--data",
            tiny_data,
            "--mode",
            "medusa",
            "--medusa-num-heads",
            "2",
            "--output-dir",
            str(tmp_path / "checkpoint"),
            "--max-steps",
            "1000",
            "--max-minutes",
            "0.2",
            "--schedule-by-time",
            "--training-arguments",
            '{"logging_steps": 1}',
            "--batch-size",
            "2",
            "--max-length",
            "64",
            "--no-hidden-state-cache",
            "--num-processes",
            "2",
            "--result",
            str(tmp_path / "result.json"),
        ],
        timeout=420,  # a rank left behind waits for the collective's timeout (hours): this test would fail here
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert 1 < result["steps"] < 1000  # the budget ended it, not the step limit
    stops = [line for line in completed.stderr.splitlines() if "wall-clock budget" in line]
    assert len(stops) == 1 and f"step {result['steps']} of" in stops[0]  # said once, by rank 0, for both
    assert "-m torch.distributed.run --standalone --nproc-per-node=2" in completed.stdout
    assert result["processes"] == 2 and (tmp_path / "checkpoint" / DRAFT_WEIGHTS).exists()
    # 8 conversations, 2 per rank per step, 2 ranks: a step is half an epoch (one rank alone: a quarter)
    epochs = [entry["epoch"] for entry in result["history"] if "loss" in entry]
    assert epochs == [0.5 * step for step in range(1, result["steps"] + 1)]
