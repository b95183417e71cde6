"""Retries against a flaky OpenAI-compatible endpoint: 429, 5xx and timeouts are retried with backoff.

The endpoint is a small stand-in HTTP server (a real vLLM cannot be made to fail on cue): it
answers /v1/chat/completions from a script of failures, then succeeds, and records each attempt.
"""

import json

import pytest

from spectrain.components.regenerate.config import RegenerateConfig
from spectrain.components.regenerate.regenerate import run
from spectrain.errors import SpectrainError
from tests.support.servers import FlakyServer


@pytest.fixture
def dataset(tmp_path):
    def write(*prompts):
        path = tmp_path / "in.jsonl"
        path.write_text(
            "".join(json.dumps({"id": p, "conversations": [{"from": "User", "value": p}]}) + "\n" for p in prompts)
        )
        return str(path)

    return write


def test_429_5xx_and_timeouts_are_retried_with_growing_waits(dataset, tmp_path):
    server = FlakyServer({"a": ["429", "503", "500"], "b": ["slow"], "c": []})
    summary = run(
        RegenerateConfig(
            dataset=dataset("a", "b", "c"),
            output=str(tmp_path / "out.jsonl"),
            endpoint=server.url,
            model="base",
            max_retries=4,
            request_timeout_s=1,
        )
    )
    assert (summary["done"], summary["failed"]) == (3, 0)
    attempts = server.times("a")
    assert len(attempts) == 4 and len(server.times("b")) == 2 and len(server.times("c")) == 1
    waits = [later - earlier for earlier, later in zip(attempts, attempts[1:])]
    assert all(wait > 0.2 for wait in waits) and waits[2] > waits[0]  # exponential backoff (with jitter)


def test_after_the_last_retry_the_conversation_goes_to_the_errors_file_and_the_ratio_decides(dataset, tmp_path):
    server = FlakyServer({"a": ["503"] * 10, "b": []})
    config = RegenerateConfig(
        dataset=dataset("a", "b"),
        output=str(tmp_path / "out.jsonl"),
        endpoint=server.url,
        model="base",
        max_retries=2,
        request_timeout_s=2,
        max_failure_ratio=0.5,
    )
    summary = run(config)
    assert (summary["done"], summary["failed"]) == (1, 1) and len(server.times("a")) == 3
    (error,) = [json.loads(line) for line in open(tmp_path / "out.errors.jsonl")]
    assert error["conversation_id"] == "a" and "503" in error["failed"] and error["source"].endswith(":1")

    server.script["a"] = ["503"] * 10
    (tmp_path / "out.jsonl").unlink()
    with pytest.raises(SpectrainError, match="1 of 2 conversations failed"):
        run(RegenerateConfig(**{**config.__dict__, "max_failure_ratio": 0.2}))
