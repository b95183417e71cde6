"""Container images of the pipeline's steps: one place, pinned defaults, overridable at compile time.

Set SPECTRAIN_IMAGE_<NAME> (e.g. SPECTRAIN_IMAGE_TRAIN=registry.example.com/spectrain-train:1.2)
before `spectrain compile` to point the compiled pipeline at your registry. Every image bakes in
kfp (docker/kfp-runtime.txt), so components are declared with install_kfp_package=False: nothing is
pip-installed when a step starts, on a cluster or on a laptop.
"""

from __future__ import annotations

import os

REGISTRY = os.environ.get("SPECTRAIN_REGISTRY", "ghcr.io/spectrain")
TAG = os.environ.get("SPECTRAIN_IMAGE_TAG", "0.1.0")


def image(name: str) -> str:
    return os.environ.get(f"SPECTRAIN_IMAGE_{name.upper()}", f"{REGISTRY}/spectrain-{name}:{TAG}")


SERVE = image("serve")  # vLLM + the regenerate client
TRAIN = image("train")  # torch + transformers + modelopt: train, evaluate, export
TRTLLM = image("trtllm")  # TensorRT-LLM engine build
ORCHESTRATE = image("orchestrate")  # kfp, mlflow, boto3: register, summaries
