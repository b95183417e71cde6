"""Multi-process training: the train step relaunches itself under ``torchrun`` (DDP) when it should use several devices.

``spectrain step train-heads ...`` is the one entry point. With ``num_processes`` > 1, or 0 and
more than one visible GPU, it writes its config to a file and runs

    python -m torch.distributed.run --standalone --nproc-per-node N \\
        -m spectrain.cli step train-heads --config CONFIG --result RESULT

Each process is one DDP rank of the HF Trainer (NCCL on GPUs, gloo on CPU); rank 0 writes the
checkpoint and the result, which the launching process returns. On Kubernetes the train step
requests N GPUs (``spectrain compile --train-gpus N``) and this turns them into N ranks.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import torch


def processes_wanted(num_processes: int) -> int:
    """``num_processes``, or one process per visible GPU (one on CPU) when it is 0."""
    return num_processes or max(torch.cuda.device_count(), 1)


def inside_launcher() -> bool:
    """True in a rank started by torchrun (which sets LOCAL_RANK)."""
    return "LOCAL_RANK" in os.environ


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def torchrun_command(num_processes: int, config_path: Path, result_path: Path, python: str = sys.executable) -> list:
    return [
        python,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={num_processes}",
        "-m",
        "spectrain.cli",
        "step",
        "train-heads",
        "--config",
        str(config_path),
        "--result",
        str(result_path),
    ]


def run_distributed(config, num_processes: int) -> dict:
    """Run the train step as ``num_processes`` DDP ranks; return rank 0's result."""
    with tempfile.TemporaryDirectory(prefix="spectrain-train-") as tmp:
        config_path, result_path = Path(tmp, "config.json"), Path(tmp, "result.json")
        config_path.write_text(json.dumps(dataclasses.asdict(config)))
        command = torchrun_command(num_processes, config_path, result_path)
        print(f"[train] {num_processes} processes: {shlex.join(command)}", flush=True)
        sys.stdout.flush()
        completed = subprocess.run(command, check=False)
        if completed.returncode != 0:
            raise RuntimeError(
                f"distributed training failed with exit code {completed.returncode} (each rank's log is above)"
            )
        return json.loads(result_path.read_text())
