"""Container images of the pipeline's steps: one per step family, named ``<registry>/spectrain-<family>:<tag>``.

The components are declared with these defaults; `spectrain compile --registry R --image-tag T` points every
task of the compiled pipeline at ``R/spectrain-<family>:T`` (pipelines.settings.CompileSettings), the names
`make images REGISTRY=R TAG=T` builds and pushes. Every image bakes in kfp (docker/kfp-runtime.txt), so
components are declared with install_kfp_package=False: nothing is pip-installed when a step starts.
"""

from __future__ import annotations

import re

REGISTRY = "ghcr.io/spectrain"
TAG = "0.1.0"
FAMILIES = ("serve", "train", "trtllm", "orchestrate")
# Docker's reference grammar, simplified: a registry host/path and a tag.
REGISTRY_PATTERN = re.compile(r"[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*")
TAG_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def image(family: str, registry: str = REGISTRY, tag: str = TAG) -> str:
    if family not in FAMILIES:
        raise ValueError(f"unknown image family {family!r} (one of {', '.join(FAMILIES)})")
    return f"{registry}/spectrain-{family}:{tag}"


SERVE = image("serve")  # vLLM + the regenerate client
TRAIN = image("train")  # torch + transformers + modelopt: train, evaluate, export
TRTLLM = image("trtllm")  # TensorRT-LLM engine build
ORCHESTRATE = image("orchestrate")  # kfp, mlflow, boto3: register, summaries
