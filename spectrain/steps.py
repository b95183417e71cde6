"""What a step is, the environment (image) each runs in, and how to run one there.

A step is declared by its own package, ``components/<name>/__init__.py``: a :class:`Step` that names its
config (a documented dataclass) and its ``run(config)`` function, which imports the step's heavy code only
when called. The command line assembles the registry from those declarations (``spectrain.cli.steps``).
Whoever calls a step — the CLI, a KFP component on a laptop or on Kubernetes — goes through
:func:`run_step`, which starts ``python -m spectrain.cli step NAME`` with the Python of the step's
environment: ``SPECTRAIN_PYTHON_<ENV>`` when set (a local virtualenv under ``.venvs/``), else the current
interpreter (inside the step's container image).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spectrain import console
from spectrain.errors import SpectrainError

# Environments are images: docker/<env>/requirements.txt pins each one. These three also exist as
# local virtualenvs; trtllm (TensorRT-LLM, NVIDIA GPUs only) exists only as its image.
ENVIRONMENTS = ("serve", "train", "orchestrate")
IMAGE_ONLY_ENVIRONMENTS = ("trtllm",)
USER_ERROR_EXIT = 2


# Modules a step imports only while it runs (not when its module loads), so an environment that lacks them
# would fail minutes in: tests/test_environments.py imports them in the environment of each step.
LOADS_BASE_MODEL = ("transformers", "gguf", "accelerate")  # the embedded GGUF is converted by whoever loads it first
DATA_SOURCES = ("datasets", "pyarrow.parquet", "boto3")  # hf:, .parquet and s3:// sources (spectrain.data)


@dataclass(frozen=True)
class Step:
    """One step of the pipeline, as its package declares it."""

    name: str  # the name `spectrain step NAME` and the console use
    config: type  # its config dataclass: the flags of `spectrain step NAME`
    run: Callable[[Any], Any]  # run(config) -> result dict; imports the step's heavy code when called
    env: str  # the environment (image) it runs in
    summary: str
    needs: tuple[str, ...] = ()  # modules imported lazily while the step runs
    per_draft: bool = False  # runs once per draft mode: the console and the log files name it by step and mode

    def __post_init__(self) -> None:
        if self.env not in ENVIRONMENTS + IMAGE_ONLY_ENVIRONMENTS:
            raise ValueError(f"step {self.name!r}: unknown environment {self.env!r}")


def python_for(env: str) -> str:
    if env not in ENVIRONMENTS + IMAGE_ONLY_ENVIRONMENTS:
        raise ValueError(f"unknown environment {env!r}")
    return os.environ.get(f"SPECTRAIN_PYTHON_{env.upper()}") or sys.executable


ERROR_FILE_ENV = "SPECTRAIN_ERROR_FILE"  # where `spectrain step` also writes a user error's message


def run_step(step: Step, config: dict[str, Any], label: str = "") -> dict[str, Any]:
    """Run ``step`` in its environment with ``config``; return its result dict.

    ``label`` tells runs of one step apart in the console and the logs (default: the draft mode).
    """
    name = step.name
    label = label or (str(config.get("mode", "")) if step.per_draft else "")
    with tempfile.TemporaryDirectory(prefix=f"spectrain-{name}-") as tmp:
        config_path, result_path, error_path = Path(tmp, "config.json"), Path(tmp, "result.json"), Path(tmp, "error")
        config_path.write_text(json.dumps(config))
        command = [
            python_for(step.env),
            "-m",
            "spectrain.cli",
            "step",
            name,
            "--config",
            str(config_path),
            "--result",
            str(result_path),
        ]
        env = {**os.environ, console.LABEL_ENV: f"{name} {label}".strip(), ERROR_FILE_ENV: str(error_path)}
        console.emit("start", step=name, label=label)
        started = time.monotonic()
        completed = subprocess.run(command, check=False, env=env)
        seconds = time.monotonic() - started  # what the user waits for: imports and loading included
        if completed.returncode != 0:
            user_error = completed.returncode == USER_ERROR_EXIT
            message = error_path.read_text() if user_error and error_path.exists() else ""
            console.emit(
                "end",
                step=name,
                label=label,
                seconds=seconds,
                status="bad input" if user_error else "failed",
                error=message,
            )
            if user_error:
                raise SpectrainError(f"step '{name}' stopped on bad input: {message or '(its message is above)'}")
            raise RuntimeError(f"step '{name}' failed with exit code {completed.returncode} (its log is above)")
        result = json.loads(result_path.read_text())
        result["seconds"] = seconds
        console.emit("end", step=name, label=label, seconds=seconds, status="ok", note=headline(result))
        return result


def headline(result: dict[str, Any]) -> str:
    """The few numbers of a step's result worth a glance on the console."""
    parts = []
    if "acceptance_length" in result:
        parts.append(f"τ {result['acceptance_length']:.3f}")
    if result.get("ngram_acceptance_length"):
        parts.append(f"n-gram τ {result['ngram_acceptance_length']:.3f}")
    if "final_loss" in result and result.get("steps") is not None:
        losses = (
            f", loss {result['first_loss']:.2f} → {result['final_loss']:.2f}"
            if result["final_loss"] is not None
            else ""
        )
        parts.append(f"{result['steps']} steps{losses}")
    if "done" in result and "total" in result:
        parts.append(
            f"{result['done'] + result.get('resumed', 0)}/{result['total']} conversations, "
            f"{result.get('failed', 0)} failed, {result.get('rejected', 0)} rejected"
        )
    if result.get("endpoint") and "model" in result:
        parts.append(f"serving at {result['endpoint']}")
    if result.get("alias") is not None and "version" in result:
        parts.append(f"{result.get('registered_model')} v{result['version']} {result['alias'] or '(not promoted)'}")
    return "; ".join(parts)
