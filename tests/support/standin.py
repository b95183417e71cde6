"""Where the stand-in vLLM (tests/support/standin_vllm) takes the place of the real one: in a process started with
the environment :func:`with_standin_vllm` returns, `vllm serve` is the stand-in's."""

from __future__ import annotations

import os
from pathlib import Path

STANDIN_VLLM = Path(__file__).resolve().parent / "standin_vllm"


def with_standin_vllm(env: dict[str, str]) -> dict[str, str]:
    return {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(STANDIN_VLLM), env.get("PYTHONPATH")]))}
