"""Shared test fixtures: a real vLLM server, the converted base, memorised drafts, tiny checkpoints, S3."""

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory):
    """One real `vllm serve` process for the session; stopped (and checked stopped) at the end."""
    from spectrain.components.serve.config import ServeConfig, StopServerConfig
    from spectrain.components.serve.server import run, stop

    os.environ["SPECTRAIN_STATE_DIR"] = str(tmp_path_factory.mktemp("servers"))
    info = run(ServeConfig(run_id="pytest", api_key="test-key", max_model_len=1024, kv_cache_gib=1))
    yield info
    stop(StopServerConfig(run_id="pytest"))


@pytest.fixture(scope="session")
def embedded_model() -> Path:
    """The embedded base converted from its GGUF, in the model cache (tests/run_all.sh gives the suite one: the
    base is converted once per suite), by the train environment: the orchestrate one has no torch."""
    python = os.environ.get("SPECTRAIN_PYTHON_TRAIN") or sys.executable
    code = "from spectrain.models import resolve_base_model; print(resolve_base_model('embedded'))"
    printed = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout
    return Path(printed.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def memorised(tmp_path_factory):
    """``memorised(mode)``: a draft that has learnt the base's greedy replies by heart (tests/support/memorised.py),
    built once per suite and shared by every test and environment that asks for the same one."""
    from tests.support.memorised import memorised_draft

    fallback = tmp_path_factory.mktemp("memorised")
    return lambda mode: memorised_draft(mode, fallback)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """Eight conversations of the shipped set, as a regenerated-data file."""
    from spectrain.data import embedded_path

    path = tmp_path_factory.mktemp("data") / "regenerated.jsonl"
    path.write_text("".join(open(embedded_path("train")).readlines()[:8]))
    return str(path)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory, tiny_data):
    """Real modelopt checkpoints of the embedded model after two training steps: mode -> (dir, result)."""
    from spectrain.components.train_heads.config import TrainHeadsConfig
    from spectrain.components.train_heads.train import run

    checkpoints = {}
    for mode, extra in (
        ("eagle3", {"draft_vocab_size": 1024}),
        ("medusa", {"medusa_num_heads": 2}),
        ("dflash", {"dflash_block_size": 4, "dflash_num_anchors": 8}),
    ):
        output = tmp_path_factory.mktemp(mode)
        result = run(
            TrainHeadsConfig(
                data=tiny_data,
                output_dir=str(output),
                mode=mode,
                max_steps=2,
                batch_size=2,
                max_length=96,
                training_arguments={"warmup_steps": 0, "logging_steps": 1},
                **extra,
            )
        )
        checkpoints[mode] = (str(output), result)
    return checkpoints


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 HTTP endpoint on loopback (moto's server, environments with the test extras only).

    Sets the AWS_* variables boto3 reads for the session and yields the endpoint URL.
    """
    from tests.support.servers import moto_s3

    saved = {
        k: os.environ.get(k)
        for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    }
    with moto_s3() as port:
        os.environ.update(
            {
                "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                "AWS_ACCESS_KEY_ID": "test",
                "AWS_SECRET_ACCESS_KEY": "test",
                "AWS_DEFAULT_REGION": "us-east-1",
            }
        )
        yield f"http://127.0.0.1:{port}"
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
