"""The pipeline's steps, the environment (image) each runs in, and how to run one there.

A step is ``components/<name>/config.py`` (a documented dataclass) plus a ``run(config)``
function. Whoever calls a step — the CLI, a KFP component on a laptop or on Kubernetes —
goes through :func:`run_step`, which starts ``python -m spectrain step NAME`` with the
Python of the step's environment: ``SPECTRAIN_PYTHON_<ENV>`` when set (a local virtualenv
under ``.venvs/``), else the current interpreter (inside the step's container image).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    name: str
    config: str  # "module:Class"
    run: str  # "module:function"
    env: str
    summary: str
    needs: tuple[str, ...] = ()  # modules imported lazily while the step runs

    def load(self, ref: str) -> Any:
        module, attr = ref.split(":")
        return getattr(importlib.import_module(module), attr)


STEPS: dict[str, Step] = {
    s.name: s
    for s in (
        Step("serve", "components.serve.config:ServeConfig", "components.serve.server:run", "serve",
             "start vLLM on the base model and wait until it answers",
             needs=("vllm.entrypoints.cli.main", "kubernetes", *LOADS_BASE_MODEL)),
        Step("stop-server", "components.serve.config:StopServerConfig", "components.serve.server:stop", "serve",
             "stop the vLLM server a serve step started for a run", needs=("kubernetes",)),
        Step("regenerate", "components.regenerate.config:RegenerateConfig", "components.regenerate.regenerate:run",
             "serve", "rewrite every assistant turn of a chat dataset with the served model",
             needs=("openai", *DATA_SOURCES)),
        Step("train-heads", "components.train_heads.config:TrainHeadsConfig", "components.train_heads.train:run",
             "train", "train EAGLE or Medusa heads on the frozen base model with modelopt",
             needs=(*LOADS_BASE_MODEL, *DATA_SOURCES, "matplotlib.pyplot")),
        Step("evaluate", "components.evaluate.config:EvaluateConfig", "components.evaluate.acceptance:run", "train",
             "measure acceptance length on held-out prompts", needs=(*LOADS_BASE_MODEL, *DATA_SOURCES)),
        Step("vllm-crosscheck", "components.evaluate.config:VllmCrosscheckConfig",
             "components.evaluate.vllm_crosscheck:run", "serve",
             "serve the base in vLLM with the exported draft and read vLLM's acceptance counters",
             needs=("vllm.entrypoints.cli.main", *LOADS_BASE_MODEL, *DATA_SOURCES)),
        Step("export", "components.export.config:ExportConfig", "components.export.export:run", "train",
             "write draft checkpoints that vLLM and TensorRT-LLM load",
             needs=("modelopt.torch.export", *LOADS_BASE_MODEL)),
        Step("build-engine", "components.export.config:BuildEngineConfig", "components.export.engine:run",
             "trtllm", "build the TensorRT-LLM engine of a Medusa draft (trtllm image, NVIDIA GPU)"),
        Step("register", "components.register.config:RegisterConfig", "components.register.register:run",
             "orchestrate", "log the run to MLflow, register the draft, promote the champion",
             needs=("mlflow", "boto3", "matplotlib.pyplot")),
    )
}


def python_for(env: str) -> str:
    if env not in ENVIRONMENTS + IMAGE_ONLY_ENVIRONMENTS:
        raise ValueError(f"unknown environment {env!r}")
    return os.environ.get(f"SPECTRAIN_PYTHON_{env.upper()}") or sys.executable


def run_step(name: str, config: dict[str, Any]) -> dict[str, Any]:
    """Run step ``name`` in its environment with ``config``; return its result dict."""
    step = STEPS[name]
    with tempfile.TemporaryDirectory(prefix=f"spectrain-{name}-") as tmp:
        config_path, result_path = Path(tmp, "config.json"), Path(tmp, "result.json")
        config_path.write_text(json.dumps(config))
        command = [python_for(step.env), "-m", "spectrain", "step", name,
                   "--config", str(config_path), "--result", str(result_path)]
        sys.stdout.flush()
        started = time.monotonic()
        completed = subprocess.run(command, check=False)
        if completed.returncode == USER_ERROR_EXIT:
            raise SpectrainError(f"step '{name}' stopped on bad input (its message is above)")
        if completed.returncode != 0:
            raise RuntimeError(f"step '{name}' failed with exit code {completed.returncode} (its log is above)")
        result = json.loads(result_path.read_text())
        result["seconds"] = time.monotonic() - started  # what the user waits for: imports and loading included
        return result
