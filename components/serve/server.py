"""Serve step logic: start a vLLM server for a pipeline run, wait until it answers, stop it by run id."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from components.serve.config import ServeConfig, StopServerConfig
from spectrain.errors import SpectrainError
from spectrain.models import resolve_base_model


def state_dir(run_id: str) -> Path:
    root = Path(os.environ.get("SPECTRAIN_STATE_DIR", Path.home() / ".cache" / "spectrain" / "servers"))
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
    return root / safe


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def vllm_command(config: ServeConfig, model_path: str, port: int) -> list[str]:
    command = [sys.executable, "-m", "components.serve.vllm_launcher", "serve", model_path,
               "--host", config.host, "--port", str(port),
               "--served-model-name", config.served_model_name,
               "--max-model-len", str(config.max_model_len), "--dtype", config.dtype,
               "--tensor-parallel-size", str(config.tensor_parallel_size), "--seed", str(config.seed)]
    if config.enforce_eager:
        command.append("--enforce-eager")
    if config.quantization:
        command += ["--quantization", config.quantization]
    return command + [str(a) for a in config.extra_args]


def server_env(config: ServeConfig, state: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["VLLM_API_KEY"] = os.environ.get("VLLM_API_KEY") or config.api_key  # never on the command line
    cpus = os.cpu_count() or 1
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.kv_cache_gib))
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{cpus - 1}")  # by default vLLM leaves a core idle
    env.setdefault("VLLM_CACHE_ROOT", str(state / "vllm-cache"))
    return env


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def wait_until_ready(url: str, api_key: str, timeout_s: float, process: subprocess.Popen | None = None,
                     log: Path | None = None) -> list[str]:
    """Poll ``{url}/models`` until it lists a model; fail fast with the log tail if the server dies."""
    deadline = time.monotonic() + timeout_s
    request = urllib.request.Request(f"{url}/models", headers={"Authorization": f"Bearer {api_key}"})
    last_error = ""
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SpectrainError(f"vLLM exited with code {process.returncode} before it was ready; log tail:\n"
                                 f"{log_tail(log) if log else ''}", where=str(log),
                                 fix="read the log above (model path? memory? port in use?)")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                models = [m["id"] for m in json.load(response)["data"]]
                if models:
                    return models
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise SpectrainError(f"{url} refused the API key (HTTP {exc.code})", where="serve.api_key",
                                     fix="pass the key the server expects (VLLM_API_KEY)") from exc
            last_error = f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:
            last_error = str(exc)
        time.sleep(1.0)
    tail = f"; log tail:\n{log_tail(log)}" if log else ""
    raise SpectrainError(f"{url} was not ready after {timeout_s:.0f} s (last error: {last_error}){tail}",
                         where="serve.ready_timeout_s", fix="raise ready_timeout_s or check the server")


def run(config: ServeConfig) -> dict:
    started = time.monotonic()
    if config.mode == "external":
        url = config.endpoint_url.rstrip("/")
        models = wait_until_ready(url, os.environ.get("VLLM_API_KEY") or config.api_key, config.ready_timeout_s)
        return {"endpoint": url, "model": models[0], "pid": 0, "log": "", "seconds": time.monotonic() - started}

    state = state_dir(config.run_id)
    existing = state / "server.json"
    if existing.exists():
        info = json.loads(existing.read_text())
        if _alive(info["pid"]):
            raise SpectrainError(f"a server for run '{config.run_id}' is already running (pid {info['pid']})",
                                 where=str(existing), fix="stop it with `spectrain step stop-server --run-id ...`")
    state.mkdir(parents=True, exist_ok=True)
    model_path = resolve_base_model(config.base_model)
    port = config.port or free_port(config.host)
    log = state / "vllm.log"
    command = vllm_command(config, model_path, port)
    print(f"[serve] starting: {' '.join(command)}\n[serve] log: {log}", flush=True)
    with open(log, "wb") as log_handle:
        # Own session: the server outlives this step and is stopped by the exit handler.
        process = subprocess.Popen(command, stdout=log_handle, stderr=subprocess.STDOUT,
                                   env=server_env(config, state), start_new_session=True, cwd=_project_root())
    url = f"http://{config.host}:{port}/v1"
    info = {"pid": process.pid, "endpoint": url, "log": str(log), "model_path": model_path}
    existing.write_text(json.dumps(info))
    try:
        models = wait_until_ready(url, server_env(config, state)["VLLM_API_KEY"], config.ready_timeout_s, process, log)
    except BaseException:
        _terminate(process.pid)
        raise
    seconds = time.monotonic() - started
    print(f"[serve] ready at {url} after {seconds:.0f} s, serving {models}", flush=True)
    return {"endpoint": url, "model": models[0], "pid": process.pid, "log": str(log), "seconds": seconds}


def _project_root() -> str:
    # The launcher is imported as components.serve.vllm_launcher: run from the folder that holds `components`.
    return str(Path(__file__).resolve().parents[2])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _terminate(pid: int, grace_s: float = 20.0) -> None:
    """SIGTERM the server's process group (vLLM has an engine child), then SIGKILL what is left."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop(config: StopServerConfig) -> dict:
    state = state_dir(config.run_id)
    info_path = state / "server.json"
    if not info_path.exists():
        print(f"[stop-server] no local server recorded for run '{config.run_id}'", flush=True)
        return {"stopped": False}
    info = json.loads(info_path.read_text())
    _terminate(info["pid"])
    if config.log_copy:
        Path(config.log_copy).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(info["log"], config.log_copy)
    info_path.unlink()
    print(f"[stop-server] stopped vLLM pid {info['pid']} of run '{config.run_id}'", flush=True)
    return {"stopped": True, "pid": info["pid"]}
