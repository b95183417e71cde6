"""Serve step: a real vLLM process on the embedded model, its API key, its stop, and clear failures."""

import json
import urllib.error
import urllib.request

import pytest

from spectrain.components.serve.config import ServeConfig, StopServerConfig
from spectrain.components.serve.server import stop
from spectrain import config as configs
from spectrain.errors import SpectrainError
from spectrain.vllm import alive, wait_until_ready


def test_command_carries_the_seed_flags_and_never_the_api_key():
    config = ServeConfig(
        tensor_parallel_size=2,
        quantization="modelopt",
        max_model_len=4096,
        dtype="bfloat16",
        extra_args=["--max-num-seqs", "64"],
        api_key="do-not-leak",
    )
    command = config.vllm_arguments("/models/base", 8000, on_gpu=False)
    text = " ".join(command)
    for flag in (
        "--tensor-parallel-size 2",
        "--quantization modelopt",
        "--max-model-len 4096",
        "--dtype bfloat16",
        "--max-num-seqs 64",
        "--port 8000",
        "--enforce-eager",
    ):
        assert flag in text
    assert "do-not-leak" not in text  # the key goes through VLLM_API_KEY, not the process list


@pytest.mark.parametrize(
    "enforce_eager, on_gpu, eager",
    [(None, False, True), (None, True, False), (True, True, True), (False, False, False)],
)
def test_eager_mode_is_the_cpu_default_and_cuda_graphs_the_gpu_one(enforce_eager, on_gpu, eager):
    """A server started eagerly on a GPU loses most of its decode speed (no CUDA graphs); on a CPU compiling takes
    minutes. Unset, each device gets its own; the GPU's memory share is only passed where there is a GPU."""
    arguments = ServeConfig(enforce_eager=enforce_eager).vllm_arguments("/m", 8000, on_gpu=on_gpu)
    assert ("--enforce-eager" in arguments) == eager
    assert ("--gpu-memory-utilization" in arguments) == on_gpu


@pytest.mark.parametrize(
    "argument, owner", [("--port=9000", "port"), ("--max_model_len", "max_model_len"), ("-tp", "tensor_parallel_size")]
)
def test_extra_args_may_not_repeat_a_flag_spectrain_sets(argument, owner):
    with pytest.raises(SpectrainError, match=f"repeats .* sets from {owner}") as raised:
        configs.from_dict(ServeConfig, {"extra_args": [argument, "2"]})
    assert raised.value.where == "serve.extra_args"


def test_extra_args_are_read_by_vllms_own_parser_before_a_server_starts():
    """A misspelt flag fails the step at once, naming it, instead of as a server (or a crash-looping pod) that
    never becomes ready; flags vLLM knows pass (vllm.entrypoints.launchers.cli_args, the parser of `vllm serve`)."""
    from spectrain.components.serve.server import check_extra_args

    check_extra_args(ServeConfig(extra_args=["--enable-prefix-caching", "--max-num-seqs", "64"]))
    with pytest.raises(SpectrainError, match="unrecognized arguments: --max-num-seqz") as raised:
        check_extra_args(ServeConfig(extra_args=["--max-num-seqz", "64"]))
    assert raised.value.where == "serve.extra_args" and "0.32.0" in str(raised.value)
    with pytest.raises(SpectrainError, match="invalid int value: 'many'"):
        check_extra_args(ServeConfig(extra_args=["--max-num-seqs", "many"]))


def test_external_mode_needs_a_url():
    with pytest.raises(SpectrainError, match="endpoint_url"):
        configs.from_dict(ServeConfig, {"mode": "external"})


def test_local_mode_refuses_to_start_vllm_inside_a_kubernetes_pod(tmp_path, monkeypatch):
    from spectrain.components.serve.server import run

    monkeypatch.setenv("SPECTRAIN_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")  # what the kubelet sets in every pod
    with pytest.raises(SpectrainError, match="inside this pod, which ends with this step") as refused:
        run(ServeConfig(mode="local"))
    assert "serve_mode 'cluster'" in str(refused.value.fix) and not list(tmp_path.iterdir())  # before any work


def test_an_unreachable_endpoint_times_out_with_a_clear_error():
    with pytest.raises(SpectrainError, match="not ready after 2 s"):
        wait_until_ready("http://127.0.0.1:9/v1", "key", timeout_s=2)


@pytest.mark.parametrize("mode", ["local", "external"])
def test_stopping_an_unknown_run_is_harmless_and_still_writes_its_log_artifact(tmp_path, monkeypatch, mode):
    """The exit handler's stop runs after the stop that follows regeneration (or after a serve step that never
    started, or in external mode): its server_log artifact says why it holds no log."""
    monkeypatch.setenv("SPECTRAIN_STATE_DIR", str(tmp_path))
    log = tmp_path / "outputs" / "server_log"
    assert stop(StopServerConfig(run_id="never-started", mode=mode, log_copy=str(log))) == {"stopped": False}
    assert "no " + mode + " vLLM server of run 'never-started' was running" in log.read_text()


@pytest.mark.slow
def test_real_vllm_serves_the_embedded_model_behind_its_api_key(vllm_server):
    url = vllm_server["endpoint"]
    assert vllm_server["model"] == "base" and alive(vllm_server["pid"])
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(f"{url}/models", headers={"Authorization": "Bearer wrong"}))
    assert refused.value.code == 401
    request = urllib.request.Request(
        f"{url}/chat/completions",
        headers={"Authorization": "Bearer test-key", "Content-Type": "application/json"},
        data=json.dumps(
            {
                "model": "base",
                "max_tokens": 8,
                "temperature": 0,
                "messages": [{"role": "user", "content": "Say hello."}],
            }
        ).encode(),
    )
    reply = json.load(urllib.request.urlopen(request))
    assert reply["choices"][0]["message"]["content"].strip()
    with pytest.raises(SpectrainError, match="already running"):
        from spectrain.components.serve.server import run

        run(ServeConfig(run_id="pytest"))


# Stopping a real server (its log kept, its state removed): components/regenerate/tests/test_faults.py, whose
# last server the stop-server step stops.


def test_auto_dtype_on_a_cpu_is_bf16_only_where_it_runs_natively(monkeypatch):
    from spectrain.components.serve import server

    monkeypatch.setattr(server, "has_nvidia_gpu", lambda: False)
    for native, expected in [(True, "bfloat16"), (False, "float32")]:
        monkeypatch.setattr(server, "cpu_runs_bf16", lambda native=native: native)
        assert server.local_dtype("auto") == expected
        assert server.local_dtype("float16") == "float16"  # an explicit choice is kept
    monkeypatch.setattr(server, "has_nvidia_gpu", lambda: True)
    assert server.local_dtype("auto") == "auto"  # on a GPU vLLM takes the checkpoint's dtype
