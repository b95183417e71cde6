"""Compile-time settings of the pipeline: fixed in the YAML, not chosen per run.

Light on purpose (no kfp import): the `spectrain` command builds its flags from it in every environment.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_YAML = Path(__file__).resolve().parent / "speculative_decoding.yaml"  # the committed, compiled pipeline


@dataclass(frozen=True)
class CompileSettings:
    """What is fixed when the pipeline is compiled, not chosen per run (kfp.local cannot resolve pipeline
    parameters in resource requests). `spectrain compile` takes each as a flag."""

    accelerator_type: str = "nvidia.com/gpu"
    train_gpus: int = 1  # the train step's GPUs, one DDP rank each
    # GPUs of the serve step's own pod: 1 runs vLLM inside it (serve_mode local); with serve_mode cluster
    # vLLM runs in its own Deployment, so compile with serve_gpus 0.
    serve_gpus: int = 1
    # Draft modes train side by side (0: all at once, one pod each); `spectrain run` uses 1 so that on a
    # laptop each draft gets every core instead of two trainings thrashing two cores.
    mode_parallelism: int = 0

    HELP = {"accelerator_type": "Kubernetes accelerator resource of the GPU steps",
            "train_gpus": "GPUs of the train step (one DDP rank each)",
            "serve_gpus": "GPUs of the serve step's own pod (0 with serve_mode cluster: vLLM runs in its own "
                          "Deployment)",
            "mode_parallelism": "draft modes trained at once (0: all)"}
