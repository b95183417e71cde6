"""Where spectrain keeps things on a machine: every path, and the variable that moves it, is here.

Caches live under ``~/.cache/spectrain`` (a PVC mount on Kubernetes: ``SPECTRAIN_MODEL_CACHE=/models`` in the
images); runs, the local MLflow store and server state under the work directory `spectrain run --workdir`
names (``./spectrain-runs``). docs/configuration.md lists every variable.
"""

from __future__ import annotations

import os
from pathlib import Path

WORKDIR = "spectrain-runs"  # `spectrain run --workdir`'s default, relative to where it is run
# On Kubernetes the model cache PVC is mounted here in every step that loads the base model and in the vLLM pods,
# and every image points both caches at it: one download per cluster (docker/*/Dockerfile ENV; tests hold them).
PVC_MODEL_CACHE = "/models"
IMAGE_CACHE_ENV = {"SPECTRAIN_MODEL_CACHE": PVC_MODEL_CACHE, "HF_HOME": f"{PVC_MODEL_CACHE}/huggingface"}


def _cache() -> Path:
    return Path.home() / ".cache" / "spectrain"


def _from_env(variable: str, default: Path) -> Path:
    return Path(os.environ.get(variable) or default).expanduser()


def model_cache() -> Path:
    """Converted models (the embedded GGUF becomes a Hugging Face checkpoint here, once)."""
    return _from_env("SPECTRAIN_MODEL_CACHE", _cache() / "models")


def data_cache() -> Path:
    """Datasets fetched from `hf:` and `s3://` specs."""
    return _from_env("SPECTRAIN_DATA_CACHE", _cache() / "data")


def vllm_cache() -> Path:
    """vLLM's own cache (what it learnt inspecting model classes, compiled graphs), shared by every local server so
    that a second start skips what the first worked out; vLLM's VLLM_CACHE_ROOT, where set, wins."""
    return _from_env("VLLM_CACHE_ROOT", _cache() / "vllm")


def server_state() -> Path:
    """The pid file and log of each local vLLM server, one directory per run id."""
    return _from_env("SPECTRAIN_STATE_DIR", _cache() / "servers")


def home() -> Path:
    """The work directory: runs, the local MLflow store (sqlite) and its artifacts."""
    return _from_env("SPECTRAIN_HOME", Path.cwd() / WORKDIR).resolve()


def use_workdir(workdir: Path) -> None:
    """Point this process and the steps it starts at ``workdir`` (and its servers/, unless set)."""
    os.environ["SPECTRAIN_HOME"] = str(workdir)
    os.environ.setdefault("SPECTRAIN_STATE_DIR", str(workdir / "servers"))
