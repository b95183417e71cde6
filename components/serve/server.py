"""Serve step logic: start a vLLM server for a pipeline run, wait until it answers, stop it by run id.

Modes: a local `vllm serve` process, an external endpoint, or (components/serve/cluster.py) a Kubernetes
Deployment + Service built from the same `vllm serve` arguments.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

from spectrain.components.serve.config import ServeConfig, StopServerConfig
from spectrain import paths, vllm
from spectrain.errors import SpectrainError
from spectrain.hardware import cpu_runs_bf16, has_nvidia_gpu
from spectrain.models import resolve_base_model


def state_dir(run_id: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
    return paths.server_state() / safe


def api_key(config: ServeConfig) -> str:
    return os.environ.get("VLLM_API_KEY") or config.api_key


def run(config: ServeConfig) -> dict:
    started = time.monotonic()
    if config.extra_args and config.mode != "external":
        check_extra_args(config)
    if config.mode == "external":
        url = config.endpoint_url.rstrip("/")
        models = vllm.wait_until_ready(url, api_key(config), config.ready_timeout_s)
        return {"endpoint": url, "model": models[0], "pid": 0, "log": "", "seconds": time.monotonic() - started}
    if config.mode == "cluster":
        return run_in_cluster(config, started)
    if os.environ.get("KUBERNETES_SERVICE_HOST"):  # set in every Kubernetes pod
        raise SpectrainError(
            "mode 'local' would start vLLM inside this pod, which ends with this step: the steps after it run "
            "in pods of their own and would find no server",
            where="serve.mode",
            fix="run the pipeline with serve_mode 'cluster' (its default: a vLLM Deployment + Service) or "
            "'external' with serve_endpoint_url",
        )

    state = state_dir(config.run_id)
    existing = state / "server.json"
    if existing.exists():
        info = json.loads(existing.read_text())
        if vllm.alive(info["pid"]):
            raise SpectrainError(
                f"a server for run '{config.run_id}' is already running (pid {info['pid']})",
                where=str(existing),
                fix="stop it with `spectrain step stop-server --run-id ...`",
            )
    state.mkdir(parents=True, exist_ok=True)
    config = dataclasses.replace(config, dtype=local_dtype(config.dtype))
    model_path = resolve_base_model(config.base_model)
    port = config.port or vllm.free_port(config.host)
    log = state / "vllm.log"
    process = vllm.start(
        config.vllm_arguments(model_path, port, on_gpu=has_nvidia_gpu()),
        log,
        vllm.cpu_env(api_key(config), config.kv_cache_gib),
    )
    url = f"http://{config.host}:{port}/v1"
    existing.write_text(json.dumps({"pid": process.pid, "endpoint": url, "log": str(log), "model_path": model_path}))
    try:
        models = vllm.wait_until_ready(url, api_key(config), config.ready_timeout_s, process, log)
    except BaseException:
        vllm.terminate(process.pid)
        raise
    seconds = time.monotonic() - started
    print(f"[serve] ready at {url} after {seconds:.0f} s, serving {models}", flush=True)
    return {
        "endpoint": url,
        "model": models[0],
        "pid": process.pid,
        "log": str(log),
        "dtype": config.dtype,
        "seconds": seconds,
    }


def check_extra_args(config: ServeConfig) -> None:
    """extra_args as vLLM itself reads them, before a server (or a Deployment) starts: a typo fails here, naming
    the flag, instead of as a crash-looping pod or a log line minutes later."""
    arguments = config.vllm_arguments("model", 8000, on_gpu=config.mode == "cluster" and config.gpus > 0)[1:]
    if problem := vllm.argument_problem(arguments):
        raise SpectrainError(
            f"vLLM {vllm_version()} does not take extra_args {config.extra_args}: {problem}",
            where="serve.extra_args",
            fix="correct the flag (`vllm serve --help=all` lists them) or remove it",
        )


def vllm_version() -> str:
    import importlib

    return importlib.import_module("vllm").__version__


def local_dtype(dtype: str) -> str:
    """``auto`` on a machine without an NVIDIA GPU: bfloat16 where the CPU runs it natively (AMX or
    AVX512-BF16), else float32 — vLLM's own ``auto`` takes the checkpoint's bfloat16, which an AVX2-only
    CPU emulates (bench/regenerate_concurrency.py measures both on a machine)."""
    if dtype != "auto" or has_nvidia_gpu():
        return dtype
    return "bfloat16" if cpu_runs_bf16() else "float32"


def run_in_cluster(config: ServeConfig, started: float) -> dict:
    """Cluster mode: the Deployment is ready (its /health answers); check the API through the Service too."""
    from spectrain.components.serve import (
        cluster,  # kubernetes is needed (and installed) for cluster mode only
    )

    api = cluster.connect()
    result = cluster.start(config, api)
    try:
        models = vllm.wait_until_ready(
            result["endpoint"], api_key(config), max(60.0, config.ready_timeout_s - (time.monotonic() - started))
        )
    except BaseException:
        cluster.stop(config.run_id, result["namespace"], api)
        raise
    result.update(model=models[0], seconds=time.monotonic() - started)
    print(f"[serve] ready at {result['endpoint']} after {result['seconds']:.0f} s, serving {models}", flush=True)
    return result


def stop(config: StopServerConfig) -> dict:
    """Stop the run's server and keep its log at ``log_copy``. A stop that finds nothing (the exit handler after the
    stop that follows regeneration, a server that never started, external mode) says so in the log artifact it
    writes, instead of leaving an artifact with no file behind (KFP's launcher only warns about that one)."""
    if config.mode == "cluster":
        from spectrain.components.serve import cluster

        api = cluster.connect()
        result = cluster.stop(config.run_id, cluster.own_namespace(config.namespace), api, config.log_copy or None)
    else:
        result = _stop_local(config)
    if config.log_copy and not Path(config.log_copy).exists():
        Path(config.log_copy).parent.mkdir(parents=True, exist_ok=True)
        Path(config.log_copy).write_text(NOTHING_RUNNING.format(run_id=config.run_id, mode=config.mode))
    return result


NOTHING_RUNNING = (
    "no {mode} vLLM server of run '{run_id}' was running when this step ran: it never started, or an earlier "
    "stop-server step of the run stopped it and kept its log\n"
)


def _stop_local(config: StopServerConfig) -> dict:
    state = state_dir(config.run_id)
    info_path = state / "server.json"
    if not info_path.exists():
        print(f"[stop-server] no local server recorded for run '{config.run_id}'", flush=True)
        return {"stopped": False}
    info = json.loads(info_path.read_text())
    vllm.terminate(info["pid"])
    if config.log_copy:
        Path(config.log_copy).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(info["log"], config.log_copy)
    info_path.unlink()
    print(f"[stop-server] stopped vLLM pid {info['pid']} of run '{config.run_id}'", flush=True)
    return {"stopped": True, "pid": info["pid"]}
