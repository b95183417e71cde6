"""Crashes with real processes: kill -9 of the client, then of the server, mid-run; re-runs finish the job.
The last server is stopped as the stop-server step stops it (its log kept).

The subject is the client's resumption and the server's process tree, not vLLM: the serve step starts the STAND-IN
vLLM of tests/support/standin_vllm (an OpenAI server whose engine child shares its session, each reply after
0.5 s so that a run lasts long enough to be killed). Regeneration by the real vLLM is tests/test_regenerate.py's.

Whatever dies, re-running the step with the same output must end with exactly one record per
input conversation: nothing lost, nothing twice.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spectrain.data import embedded_path
from spectrain.vllm import alive
from tests.support.standin import with_standin_vllm

CONVERSATIONS = 24


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def wait_for_lines(path: Path, count: int, process: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while len(lines(path)) < count:
        assert process.poll() is None, f"the client ended before writing {count} records"
        assert time.monotonic() < deadline, f"no {count} records after {timeout} s"
        time.sleep(0.2)


@pytest.mark.slow
def test_kill_9_of_client_and_of_server_mid_run_then_rerun_gives_one_record_each(tmp_path, monkeypatch):
    from spectrain.components.serve.config import ServeConfig, StopServerConfig
    from spectrain.components.serve.server import run as serve
    from spectrain.components.serve.server import stop

    monkeypatch.setenv("SPECTRAIN_STATE_DIR", str(tmp_path / "servers"))
    for name, value in with_standin_vllm(
        {"PYTHONPATH": os.environ.get("PYTHONPATH", ""), "STANDIN_VLLM_REPLY_SECONDS": "0.5"}
    ).items():
        monkeypatch.setenv(name, value)
    data = tmp_path / "input.jsonl"
    data.write_text("".join(open(embedded_path("train")).readlines()[:CONVERSATIONS]))
    expected = {json.loads(line)["id"] for line in data.read_text().splitlines()}
    output = tmp_path / "out.jsonl"

    def client(endpoint: str, *extra: str) -> subprocess.Popen:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "spectrain.cli",
                "step",
                "regenerate",
                "--dataset",
                str(data),
                "--output",
                str(output),
                "--endpoint",
                endpoint,
                "--api-key",
                "k",
                "--max-tokens",
                "48",
                "--concurrency",
                "4",
                "--max-retries",
                "1",
                "--request-timeout-s",
                "60",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    server = serve(ServeConfig(run_id="crash-1", api_key="k", max_model_len=2048, kv_cache_gib=1))
    try:
        # 1. the client dies (SIGKILL) after a few records
        first = client(server["endpoint"])
        wait_for_lines(output, 3, first)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        after_client_crash = len(lines(output))
        assert 3 <= after_client_crash < CONVERSATIONS

        # 2. the re-run resumes; now the server dies (SIGKILL) under it: requests fail, the step says so
        second = client(server["endpoint"], "--max-failure-ratio", "1.0")
        wait_for_lines(output, after_client_crash + 2, second)
        os.killpg(server["pid"], signal.SIGKILL)
        log, _ = second.communicate(timeout=600)
        assert "already done" in log
        after_server_crash = len(lines(output))
        assert after_server_crash < CONVERSATIONS, "the server died too late to interrupt anything"
        errors = [json.loads(line) for line in lines(output.with_name("out.errors.jsonl"))]
        assert errors and all("failed" in e for e in errors)
    finally:
        stop(StopServerConfig(run_id="crash-1"))

    # 3. a new server (new port), the same output: only what is missing is done, once
    server = serve(ServeConfig(run_id="crash-2", api_key="k", max_model_len=2048, kv_cache_gib=1))
    log_copy = tmp_path / "artifact" / "vllm.log"
    try:
        third = client(server["endpoint"])
        log, _ = third.communicate(timeout=900)
    finally:
        stopped = stop(StopServerConfig(run_id="crash-2", log_copy=str(log_copy)))
    assert third.returncode == 0, log[-3000:]
    assert f"{after_server_crash} already done" in log
    # the stop-server step: the server (and its engine) gone, its state removed, its log kept as the artifact
    assert stopped["stopped"] and not alive(server["pid"])
    assert not (tmp_path / "servers" / "crash-2" / "server.json").exists()
    assert "Application startup complete" in log_copy.read_text()
    ids = [json.loads(line)["conversation_id"] for line in lines(output)]
    assert len(ids) == len(set(ids)) == CONVERSATIONS and set(ids) == expected
