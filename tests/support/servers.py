"""The servers tests run: a flaky stand-in OpenAI endpoint, and real ones (moto's S3 server, `mlflow server`,
Prometheus), started the same way by every test that needs them; and the base's greedy replies as a dataset."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from podsim.http import send_json
from spectrain.vllm import free_port


REPLY = {
    "id": "x",
    "object": "chat.completion",
    "created": 0,
    "model": "base",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


class FlakyServer:
    """A stand-in OpenAI chat endpoint, for what a real vLLM cannot do on cue: fail.

    Fails the first attempts of each prompt as scripted ('429', '503', 'slow'), then answers "ok";
    records every attempt as (prompt, time).
    """

    def __init__(self, script: dict[str, list[str]]):
        self.script, self.attempts = script, list[tuple[str, float]]()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # /v1/models
                send_json(self, 200, {"object": "list", "data": [{"id": "base", "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                outer.attempts.append((prompt, time.monotonic()))
                failures = outer.script.get(prompt, [])
                failure = failures.pop(0) if failures else None
                if failure == "slow":
                    time.sleep(3)  # longer than the client's timeout
                    return
                status, payload = (int(failure), {"error": {"message": failure}}) if failure else (200, REPLY)
                send_json(self, status, payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def times(self, prompt: str) -> list[float]:
        return [t for p, t in self.attempts if p == prompt]


# -- real servers -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def moto_s3(host: str = "127.0.0.1") -> Iterator[int]:
    """A real S3 HTTP endpoint (moto's server, environments with the test extras only) on ``host``; yields its port."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address=host, port=port)
    server.start()
    try:
        yield port
    finally:
        server.stop()


MLFLOW_ADMIN = ("admin", "admin-password-of-the-test-server")


@contextlib.contextmanager
def mlflow_server(
    directory: Path,
    s3_endpoint: str,
    *,
    host: str = "127.0.0.1",
    serve_artifacts: bool = False,
    users: dict[str, str] | None = None,
):
    """A real `mlflow server` (sqlite store in ``directory``, artifacts in the S3 bucket ``mlflow``, which must
    exist) on ``host``; yields its port. ``serve_artifacts=False`` is how manifests/mlflow deploys it: clients
    write artifacts to S3 themselves (they need MLFLOW_S3_ENDPOINT_URL). ``users`` (name -> password): MLflow's own
    authentication (`--app-name basic-auth`, as manifests/mlflow runs it: everyone authenticated reads, a
    resource's creator manages it), with these users created by the admin (MLFLOW_ADMIN)."""
    port = free_port()
    artifacts = (
        ["--artifacts-destination", "s3://mlflow/artifacts", "--serve-artifacts"]
        if serve_artifacts
        else ["--default-artifact-root", "s3://mlflow/artifacts", "--no-serve-artifacts"]
    )
    command = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port), "--workers", "1"]
    command += ["--backend-store-uri", f"sqlite:///{directory / 'server.db'}", *artifacts]
    directory.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint}
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        env.pop(name, None)
    if users is not None:
        config = directory / "basic_auth.ini"
        config.write_text(
            f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{directory / 'auth.db'}\n"
            f"admin_username = {MLFLOW_ADMIN[0]}\n"
        )
        command += ["--app-name", "basic-auth"]
        env.update(
            MLFLOW_AUTH_CONFIG_PATH=str(config),
            MLFLOW_AUTH_ADMIN_PASSWORD=MLFLOW_ADMIN[1],
            MLFLOW_FLASK_SERVER_SECRET_KEY="flask-secret-of-the-test-server",
        )
    with open(directory / "mlflow.log", "w") as log:
        server = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                    break
                except OSError:
                    assert server.poll() is None, (directory / "mlflow.log").read_text()[-2000:]
                    assert time.monotonic() < deadline, "mlflow server did not come up"
                    time.sleep(0.5)
            for user, password in (users or {}).items():
                create_mlflow_user(f"http://127.0.0.1:{port}", user, password)
            yield port
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)


def create_mlflow_user(url: str, user: str, password: str) -> None:
    """A user of a basic-auth MLflow server, created by its admin through the REST API."""
    import base64

    request = urllib.request.Request(
        f"{url}/api/2.0/mlflow/users/create",
        data=json.dumps({"username": user, "password": password}).encode(),
        headers={
            "Content-Type": "application/json",
            "Authorization": "Basic " + base64.b64encode(":".join(MLFLOW_ADMIN).encode()).decode(),
        },
    )
    urllib.request.urlopen(request, timeout=30).read()


def write_greedy_replies(path: Path, prompts: list[str], max_new_tokens: int, python: str = sys.executable) -> Path:
    """A chat dataset of the embedded base's own greedy replies to ``prompts``, generated in torch by ``python``
    (an environment with torch and transformers: the train or serve venv), without starting a vLLM server."""
    script = """
import json, sys, torch, transformers
from spectrain.models import resolve_base_model
path, prompts, max_new_tokens, out = resolve_base_model("embedded"), json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
tokenizer = transformers.AutoTokenizer.from_pretrained(path)
base = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
with open(out, "w") as handle:
    for i, prompt in enumerate(prompts):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        reply = base.generate(ids, do_sample=False, max_new_tokens=max_new_tokens)[0, ids.shape[1]:]
        turns = [{"from": "User", "value": prompt},
                 {"from": "Assistant", "value": tokenizer.decode(reply, skip_special_tokens=True)}]
        handle.write(json.dumps({"id": f"p{i}", "conversations": turns}) + "\\n")
"""
    subprocess.run([python, "-c", script, json.dumps(prompts), str(max_new_tokens), str(path)], check=True)
    return path


@contextlib.contextmanager
def prometheus_server(directory: Path, targets: list[str], api_key: str = "") -> Iterator[str]:
    """A real Prometheus (Debian's `prometheus` binary, `make tools` installs it) scraping ``targets`` (host:port)
    every second, its data in ``directory``; yields its URL."""
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    scrape = [
        "global: {scrape_interval: 1s, evaluation_interval: 1s}",
        "scrape_configs:",
        "  - job_name: vllm",
        *([f"    authorization: {{credentials: {api_key}}}"] if api_key else []),
        f"    static_configs: [{{targets: [{', '.join(targets)}]}}]",
    ]
    (directory / "prometheus.yml").write_text("\n".join(scrape) + "\n")
    command = ["prometheus", f"--config.file={directory / 'prometheus.yml'}", f"--web.listen-address=127.0.0.1:{port}"]
    command += [f"--storage.tsdb.path={directory / 'data'}"]
    with open(directory / "prometheus.log", "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2)
                    break
                except OSError:
                    assert server.poll() is None, (directory / "prometheus.log").read_text()[-2000:]
                    assert time.monotonic() < deadline, "prometheus did not come up"
                    time.sleep(0.3)
            yield f"http://127.0.0.1:{port}"
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
