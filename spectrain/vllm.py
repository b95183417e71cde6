"""A vLLM server as a local process: start it in its own session, wait until it answers, stop its group.

Shared by the serve step (the base model for regeneration) and the vLLM cross-check of a draft.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

from spectrain import paths
from spectrain.errors import SpectrainError

PROJECT_ROOT = Path(__file__).resolve().parents[1]


CPU_KV_CACHE_GIB = 2  # the serve step's kv_cache_gib default


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def serve_arguments(
    model_path: str,
    port: int,
    *,
    host: str = "127.0.0.1",
    served_model_name: str = "base",
    max_model_len: int = 2048,
    dtype: str = "auto",
    seed: int = 0,
    enforce_eager: bool = True,
    tensor_parallel_size: int = 1,
    quantization: str = "",
    gpu_memory_utilization: float | None = None,
    extra: tuple | list = (),
) -> list[str]:
    """``vllm serve`` arguments, spelled in one place for the serve step, its cluster Deployment and the
    cross-check."""
    arguments = [
        "serve",
        model_path,
        "--host",
        host,
        "--port",
        str(port),
        "--served-model-name",
        served_model_name,
        "--max-model-len",
        str(max_model_len),
        "--dtype",
        dtype,
        "--tensor-parallel-size",
        str(tensor_parallel_size),
        "--seed",
        str(seed),
    ]
    if enforce_eager:
        arguments.append("--enforce-eager")
    if quantization:
        arguments += ["--quantization", quantization]
    if gpu_memory_utilization is not None:
        arguments += ["--gpu-memory-utilization", str(gpu_memory_utilization)]
    return arguments + [str(a) for a in extra]


# `vllm serve` flags spectrain sets from its own settings (serve_arguments): extra arguments may not repeat them.
OWNED_FLAGS = {
    "--host": "host",
    "--port": "port",
    "--served-model-name": "served_model_name",
    "--max-model-len": "max_model_len",
    "--dtype": "dtype",
    "--tensor-parallel-size": "tensor_parallel_size",
    "-tp": "tensor_parallel_size",
    "--seed": "seed",
    "--enforce-eager": "enforce_eager",
    "--no-enforce-eager": "enforce_eager",
    "--quantization": "quantization",
    "-q": "quantization",
    "--gpu-memory-utilization": "gpu_memory_utilization",
    "--api-key": "the VLLM_API_KEY environment variable (the spectrain-vllm Secret)",
}


def owned_flag(argument: str) -> str | None:
    """The setting that owns ``argument`` (a `vllm serve` flag, with '_' or '-', '=value' or not), if any."""
    name = argument.split("=", 1)[0]
    if name.startswith("--"):
        name = "--" + name[2:].replace("_", "-")
    return OWNED_FLAGS.get(name)


def argument_problem(arguments: list[str]) -> str | None:
    """What vLLM's own `vllm serve` parser says of ``arguments`` (after "serve"), or None when it takes them.
    Needs vLLM (the serve image); imports it only here (~5 s)."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    class Parser(FlexibleArgumentParser):
        def error(self, message: str):  # type: ignore[override]  # argparse would print and exit
            raise ValueError(message)

    try:
        validate_parsed_serve_args(make_arg_parser(Parser(prog="vllm serve")).parse_args(arguments))
    except (ValueError, TypeError) as exc:
        return str(exc)
    return None


def cpu_settings(kv_cache_gib: int = CPU_KV_CACHE_GIB) -> dict[str, str]:
    """vLLM's settings on a CPU: a KV cache of fixed size (unset, vLLM reserves 92% of the machine's memory and
    refuses to start when less is free) and every core this process may run on (by default vLLM leaves one idle):
    its affinity, which a container's cpuset or a taskset narrows, not the machine's count (vLLM pins its threads
    to these ids, and an id outside a cpuset is refused)."""
    cpus = sorted(os.sched_getaffinity(0))
    return {"VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib), "VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, cpus))}


def cpu_env(api_key: str, kv_cache_gib: int) -> dict[str, str]:
    """Environment for vLLM: the API key (never on the command line), CPU defaults the user may override, and the
    cache every local server shares (spectrain.paths.vllm_cache)."""
    env = dict(os.environ)
    env["VLLM_API_KEY"] = api_key
    for variable, value in cpu_settings(kv_cache_gib).items():
        env.setdefault(variable, value)
    env["VLLM_CACHE_ROOT"] = str(paths.vllm_cache())
    return env


def start(arguments: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """`vllm <arguments>` in its own session (it outlives the caller until stopped), output to ``log``."""
    command = [sys.executable, "-m", "spectrain.vllm_launcher", *arguments]
    print(f"[vllm] starting: {' '.join(command)}\n[vllm] log: {log}", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as handle:
        return subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=str(PROJECT_ROOT)
        )


ERROR_LINE = re.compile(r"\bERROR\b|^\w*(Error|Exception): ")


def log_excerpt(text: str, lines: int = 40, errors: int = 5) -> str:
    """The last ``lines`` of a log, after its first ``errors`` error lines from before them: vLLM reports the
    root cause of a failed start (its worker's ERROR lines) far above the traceback that ends its log."""
    all_lines = text.splitlines()
    tail, before = all_lines[-lines:], all_lines[:-lines]
    found = [line for line in before if ERROR_LINE.search(line)][:errors]
    return "\n".join([*found, "...", *tail] if found else tail)


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return log_excerpt(path.read_text(errors="replace"), lines)
    except FileNotFoundError:
        return "(no log)"


def wait_until_ready(
    url: str, api_key: str, timeout_s: float, process: subprocess.Popen | None = None, log: Path | None = None
) -> list[str]:
    """Poll ``{url}/models`` until it lists a model; fail fast with the log tail if the server dies."""
    deadline = time.monotonic() + timeout_s
    request = urllib.request.Request(f"{url}/models", headers={"Authorization": f"Bearer {api_key}"})
    last_error = ""
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SpectrainError(
                f"vLLM exited with code {process.returncode} before it was ready; log tail:\n"
                f"{log_tail(log) if log else ''}",
                where=str(log),
                fix="read the log above (model path? memory? port in use?)",
            )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                models = [m["id"] for m in json.load(response)["data"]]
                if models:
                    return models
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise SpectrainError(
                    f"{url} refused the API key (HTTP {exc.code})",
                    where="api_key",
                    fix="pass the key the server expects (VLLM_API_KEY)",
                ) from exc
            last_error = f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:
            last_error = str(exc)
        time.sleep(1.0)
    tail = f"; log tail:\n{log_tail(log)}" if log else ""
    raise SpectrainError(
        f"{url} was not ready after {timeout_s:.0f} s (last error: {last_error}){tail}",
        where="ready_timeout_s",
        fix="raise ready_timeout_s or check the server",
    )


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for its parent to reap it."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:  # no such process, or not ours to see
        return False


def terminate(pid: int, grace_s: float = 20.0) -> None:
    """SIGTERM the server's process group (vLLM has an engine child), then SIGKILL what is left."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _group_alive(pid):
        _reap(pid)
        time.sleep(0.5)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _reap(pid)


def _group_alive(pgid: int) -> bool:
    """A member of process group ``pgid`` still runs (zombies waiting for a parent that is not us do not count)."""
    for process in psutil.process_iter(["status"]):
        try:
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except ProcessLookupError:
            continue
    return False


def _reap(pid: int) -> None:
    """If the server is our own child (it is when started in this process), collect its exit status."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
