"""Compile-time settings of the pipeline: fixed in the YAML, not chosen per run.

Light on purpose (no kfp import): the `spectrain` command builds its flags from it in every environment.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from spectrain import checks, images

DEFAULT_YAML = Path(__file__).resolve().parent / "speculative_decoding.yaml"  # the committed, compiled pipeline
# The oldest Kubeflow Pipelines backend the compiled pipeline runs on: its node selector and tolerations are pipeline
# parameters, which reach KFP's driver as JSON placeholders that backends before 2.5.0 do not resolve (kfp-kubernetes'
# add_toleration_json / add_node_selector_json). `spectrain compile` writes it at the top of the YAML and
# `spectrain submit` / `schedule` compare it with the version the server reports.
MIN_KFP_BACKEND = "2.5.0"
REQUIRES = "# Requires: Kubeflow Pipelines backend >= {version} (spectrain submit and schedule check the server's)\n"


# CPU cores requested and memory requested (also the limit: a pod over it is OOM-killed at a known size, not evicted
# first under node pressure as a pod without requests is) by each step's pod, per size of the base the pipeline is
# compiled for: bfloat16 weights of ~6 GB (small, up to ~3B parameters), ~16 GB (8b: 7-14B) or ~140 GB (70b).
# The base-holding steps load the checkpoint through host memory; train also keeps the hidden-state cache there
# (hidden_state_cache_max_gb, 20 GB by default); export restores the draft onto the base without its decoder
# layers; the others hold no model. No CPU limits: they throttle without protecting anyone.
BASE_SIZES = ("small", "8b", "70b")
STEP_RESOURCES: dict[str, dict[str, tuple[str, str]]] = {
    "train-heads": {"small": ("8", "32Gi"), "8b": ("16", "80Gi"), "70b": ("32", "400Gi")},
    "evaluate": {"small": ("4", "16Gi"), "8b": ("8", "48Gi"), "70b": ("16", "200Gi")},
    "vllm-crosscheck": {"small": ("4", "16Gi"), "8b": ("8", "48Gi"), "70b": ("16", "200Gi")},
    "build-trtllm-engine": {"small": ("4", "32Gi"), "8b": ("8", "64Gi"), "70b": ("16", "256Gi")},
    "export": {"small": ("2", "8Gi"), "8b": ("4", "16Gi"), "70b": ("4", "32Gi")},
    "regenerate": {size: ("2", "4Gi") for size in BASE_SIZES},
    "register": {"small": ("1", "4Gi"), "8b": ("1", "4Gi"), "70b": ("1", "8Gi")},
    "warm-start-draft": {"small": ("1", "2Gi"), "8b": ("1", "4Gi"), "70b": ("1", "8Gi")},
    "serve-base-model": {size: ("500m", "1Gi") for size in BASE_SIZES},
    "stop-server": {size: ("250m", "512Mi") for size in BASE_SIZES},
    "summarize": {size: ("250m", "512Mi") for size in BASE_SIZES},
    "no-served-speed": {size: ("100m", "128Mi") for size in BASE_SIZES},
}


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
    # What each step's pod requests (STEP_RESOURCES), for the size of base the pipeline will train drafts for, and
    # any step's {"cpu": .., "memory": ..} set over it (JSON).
    base_size: str = "8b"
    resources: str = ""

    HELP = {
        "accelerator_type": "Kubernetes accelerator resource of the GPU steps",
        "train_gpus": "GPUs of the train step (one DDP rank each; 0: none, it trains on CPUs)",
        "eval_gpus": "GPUs of evaluate, the vLLM cross-check and the TensorRT-LLM engine build (0: CPUs)",
        "serve_gpus": "GPUs of the serve step's own pod (0: vLLM runs in its own Deployment, serve_mode cluster)",
        "mode_parallelism": "draft modes trained at once (0: all)",
        "registry": "registry (and path) of the spectrain-<family> images the steps run",
        "image_tag": "tag of those images",
        "base_size": f"size of the base the pipeline is compiled for, which sizes every step's CPU and memory "
        f"requests: {', '.join(BASE_SIZES)} (up to ~3B parameters, 7-14B, 70B)",
        "resources": 'JSON of steps whose requests differ from base_size\'s, e.g. \'{"train-heads": {"cpu": "32", '
        '"memory": "160Gi"}}\' (memory is also the limit)',
    }

    def resources_of(self, step: str) -> dict[str, str]:
        """{"cpu": .., "memory": ..} of ``step``'s pod: the base size's, with this step's override over it."""
        cpu, memory = STEP_RESOURCES[step][self.base_size]
        return {"cpu": cpu, "memory": memory, **json.loads(self.resources or "{}").get(step, {})}

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
        if self.base_size not in BASE_SIZES:
            found.append(f"base_size {self.base_size!r} is not one of {', '.join(BASE_SIZES)}")
        found += self._resources_problems()
        return found

    def _resources_problems(self) -> list[str]:
        try:
            overrides = json.loads(self.resources or "{}")
        except json.JSONDecodeError as exc:
            return [f"resources is not JSON ({exc.msg} at column {exc.colno}): {self.resources!r}"]
        if not isinstance(overrides, dict):
            return [f"resources must be a JSON object of steps, got {self.resources!r}"]
        found = []
        for step, given in overrides.items():
            if step not in STEP_RESOURCES:
                found.append(f"resources: unknown step {step!r}; the steps are {', '.join(STEP_RESOURCES)}")
            elif not isinstance(given, dict) or not set(given) <= {"cpu", "memory"}:
                found.append(f'resources: {step} takes {{"cpu": .., "memory": ..}}, got {json.dumps(given)}')
            elif not checks.CPU_QUANTITY.fullmatch(str(given.get("cpu", "1"))):
                found.append(f"resources: {step} cpu {given['cpu']!r} is not a CPU quantity (e.g. 8, 0.5, 500m)")
            elif not checks.MEMORY_QUANTITY.fullmatch(str(given.get("memory", "1Gi"))):
                found.append(f"resources: {step} memory {given['memory']!r} is not a memory quantity (e.g. 64Gi)")
        return found
