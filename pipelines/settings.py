"""Compile-time settings of the pipeline: fixed in the YAML, not chosen per run.

Light on purpose (no kfp import): the `spectrain` command builds its flags from it in every environment.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from spectrain import images

DEFAULT_YAML = Path(__file__).resolve().parent / "speculative_decoding.yaml"  # the committed, compiled pipeline
# The oldest Kubeflow Pipelines backend the compiled pipeline runs on: its node selector and tolerations are pipeline
# parameters, which reach KFP's driver as JSON placeholders that backends before 2.5.0 do not resolve (kfp-kubernetes'
# add_toleration_json / add_node_selector_json). `spectrain compile` writes it at the top of the YAML and
# `spectrain submit` / `schedule` compare it with the version the server reports.
MIN_KFP_BACKEND = "2.5.0"
REQUIRES = "# Requires: Kubeflow Pipelines backend >= {version} (spectrain submit and schedule check the server's)\n"


@dataclass(frozen=True)
class CompileSettings:
    """What is fixed when the pipeline is compiled, not chosen per run (kfp.local cannot resolve pipeline
    parameters in resource requests). `spectrain compile` takes each as a flag."""

    accelerator_type: str = "nvidia.com/gpu"
    train_gpus: int = 1  # the train step's GPUs, one DDP rank each
    eval_gpus: int = 1  # the GPU of evaluate (and of the vLLM cross-check and the TensorRT-LLM engine build)
    # GPUs of the serve step's own pod: none, since on Kubernetes vLLM runs in its own Deployment (serve_mode
    # cluster, whose pods take ServeConfig.gpus each) or elsewhere (external); the step only waits for it.
    serve_gpus: int = 0
    # Draft modes train side by side (0: all at once, one pod each); `spectrain run` uses 1 so that on a
    # laptop each draft gets every core instead of two trainings thrashing two cores.
    mode_parallelism: int = 0
    # Every task runs <registry>/spectrain-<family>:<image_tag> (`make images REGISTRY=... TAG=...` pushes them);
    # cluster-mode vLLM pods run the serve image.
    registry: str = images.REGISTRY
    image_tag: str = images.TAG

    HELP = {
        "accelerator_type": "Kubernetes accelerator resource of the GPU steps",
        "train_gpus": "GPUs of the train step (one DDP rank each; 0: none, it trains on CPUs)",
        "eval_gpus": "GPUs of evaluate, the vLLM cross-check and the TensorRT-LLM engine build (0: CPUs)",
        "serve_gpus": "GPUs of the serve step's own pod (0: vLLM runs in its own Deployment, serve_mode cluster)",
        "mode_parallelism": "draft modes trained at once (0: all)",
        "registry": "registry (and path) of the spectrain-<family> images the steps run",
        "image_tag": "tag of those images",
    }

    def image(self, family: str) -> str:
        """The image of a step family (serve, train, trtllm, orchestrate)."""
        return images.image(family, self.registry, self.image_tag)

    def problems(self) -> list[str]:
        """What is wrong with these settings, one sentence each (empty: nothing)."""
        found = [
            f"{name} is {value}: it cannot be negative"
            for name, value in (
                ("train_gpus", self.train_gpus),
                ("eval_gpus", self.eval_gpus),
                ("serve_gpus", self.serve_gpus),
                ("mode_parallelism", self.mode_parallelism),
            )
            if value < 0
        ]
        if not images.REGISTRY_PATTERN.fullmatch(self.registry):
            found.append(f"registry {self.registry!r} is not an image registry path (e.g. registry.example.com/team)")
        if not images.TAG_PATTERN.fullmatch(self.image_tag):
            found.append(
                f"image_tag {self.image_tag!r} is not an image tag (letters, digits, '_', '.', '-'; at most 128)"
            )
        return found
