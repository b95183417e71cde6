"""Interrupting `spectrain run` stops every process it started, the vLLM server (its own session) included.

Their subject is the process tree, not vLLM: the local runs serve the STAND-IN vLLM of tests/support/standin_vllm
(an OpenAI server with an engine child in its own session, ready in a second); real vLLM's start, serving and
stop are what tests/test_end_to_end.py and components/serve/tests run. In the pod-boundary run the simulated
kubelet gives the vLLM pod the serve image's environment only, so the stand-in reaches it as an image's ENV would
(PODSIM_SERVE_IMAGE_ENV).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spectrain.processes import descendants
from spectrain.vllm import alive
from tests.support.standin import STANDIN_VLLM, with_standin_vllm

TINY = [
    "--modes",
    "eagle3",
    "--regenerate-limit",
    "6",
    "--regenerate-max-tokens",
    "24",
    "--train-max-steps",
    "2",
    "--eval-num-prompts",
    "3",
    "--eval-max-new-tokens",
    "12",
]


def wait_for_line(process: subprocess.Popen, text: str, timeout_s: float) -> list[str]:
    seen, deadline = [], time.monotonic() + timeout_s
    for line in process.stdout:
        seen.append(line)
        if text in line:
            return seen
        assert time.monotonic() < deadline, f"no {text!r} after {timeout_s} s:\n" + "".join(seen[-30:])
    pytest.fail(f"the run ended before {text!r}:\n" + "".join(seen[-30:]))


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_an_interrupted_run_leaves_no_process_behind_and_says_where_it_stopped(tmp_path, how):
    env = with_standin_vllm({**os.environ, "SPECTRAIN_STATE_DIR": str(tmp_path / "servers"), "PYTHONUNBUFFERED": "1"})
    # its own session, like a shell job: Ctrl-C reaches the run's process group, never the test's
    run = subprocess.Popen(
        [sys.executable, "-m", "spectrain.cli", "run", "--workdir", str(tmp_path), *TINY],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        wait_for_line(run, "serve: done", timeout_s=600)
        (state,) = (tmp_path / "servers").glob("*/server.json")
        server = json.loads(state.read_text())["pid"]
        started = descendants(run.pid)  # everything the run started so far
        assert server in started, "the vLLM server is not below the run (subreaper)"
        assert alive(server) and descendants(server), "no server with an engine child"
        assert "stand-in vLLM" in (state.parent / "vllm.log").read_text()
        if how == "ctrl-c":
            os.killpg(run.pid, signal.SIGINT)  # what a terminal sends to the foreground job
        else:
            run.send_signal(signal.SIGTERM)  # what `kill` or a job scheduler sends to the run alone
        rest, _ = run.communicate(timeout=180)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 130, rest[-3000:]
    assert "interrupted after" in rest and str(tmp_path / "runs") in rest and "run the same command again" in rest
    left = [pid for pid in started if alive(pid)]
    assert not left, f"still running after the interrupt: {left}"


def spectrain_namespaces() -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in listed.splitlines() if line.startswith("spectrain-")]


@pytest.mark.slow
def test_ctrl_c_with_pod_boundaries_stops_the_vllm_pod_and_removes_every_namespace(tmp_path):
    from podsim import pods

    assert pods.unavailable() is None, f"pod boundaries cannot run here: {pods.unavailable()}"
    run = subprocess.Popen(
        [sys.executable, "-m", "podsim", "run", "--workdir", str(tmp_path), *TINY],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            # replies take 5 s each: regenerate is still running when the interrupt comes
            "PODSIM_SERVE_IMAGE_ENV": f"PYTHONPATH={STANDIN_VLLM} STANDIN_VLLM_REPLY_SECONDS=5",
        },
        cwd=Path(__file__).resolve().parents[1],  # podsim runs from the project's checkout
        start_new_session=True,
    )
    try:
        wait_for_line(run, "regenerate: started", timeout_s=900)
        started = descendants(run.pid)
        assert spectrain_namespaces(), "no pod while regenerate runs"  # the vLLM pod and regenerate's
        served = "".join(p.read_text() for p in pods.SCRATCH.glob("*/container.log"))  # the vLLM pod's output
        assert "stand-in vLLM" in served, served[-2000:]
        os.killpg(run.pid, signal.SIGINT)
        rest, _ = run.communicate(timeout=180)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 130, rest[-3000:]
    assert not [pid for pid in started if alive(pid)]
    assert spectrain_namespaces() == [] and not list(pods.SCRATCH.glob("*"))
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert pods.BRIDGE not in links
