"""Evaluate in vLLM: the base model served with the exported draft, τ from vLLM's own spec-decode counters.

This is the proof that the export loads the trained weights: vLLM skips weight names it does not
know, so a wrongly named export still serves — with random heads and τ ≈ 1.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

from spectrain.components.evaluate.config import SPEC_METHODS, VllmCrosscheckConfig
from spectrain import specdecode, vllm
from spectrain.data import heldout_chats
from spectrain.errors import SpectrainError
from spectrain.models import resolve_base_model

API_KEY = "spectrain-crosscheck"


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.load(response)


def run(config: VllmCrosscheckConfig) -> dict:
    started = time.monotonic()
    if not (Path(config.draft_dir) / "config.json").is_file():
        raise SpectrainError(
            "no config.json in the draft directory",
            where=config.draft_dir,
            fix="pass the export step's output directory",
        )
    model_path = resolve_base_model(config.base_model)
    port = vllm.free_port()
    output = Path(config.output)
    log = output.with_suffix(".vllm.log")
    speculative = {
        "method": SPEC_METHODS[config.mode],
        "model": str(Path(config.draft_dir).resolve()),
        "num_speculative_tokens": config.num_draft_tokens,
    }
    arguments = vllm.serve_arguments(
        model_path, port, dtype=config.dtype, extra=["--speculative-config", json.dumps(speculative)]
    )
    process = vllm.start(arguments, log, vllm.cpu_env(API_KEY, 1))
    base_url = f"http://127.0.0.1:{port}"
    try:
        vllm.wait_until_ready(f"{base_url}/v1", API_KEY, config.ready_timeout_s, process, log)
        completion_tokens = 0
        chats = [messages for _, messages in heldout_chats(config.dataset, config.num_prompts)]  # evaluate's
        for messages in chats:  # one at a time: the counters then describe plain decoding steps
            reply = post(
                f"{base_url}/v1/chat/completions",
                {"model": "base", "messages": messages, "max_tokens": config.max_new_tokens, "temperature": 0},
            )
            completion_tokens += reply["usage"]["completion_tokens"]
        with urllib.request.urlopen(f"{base_url}/metrics", timeout=30) as response:
            counters = specdecode.parse(response.read().decode()).report()
    finally:
        vllm.terminate(process.pid)
    result = {
        "mode": config.mode,
        "speculative_config": speculative,
        "prompts": len(chats),
        "completion_tokens": completion_tokens,
        **counters,
        "log": str(log),
    }
    if config.expected_acceptance_length:
        difference = abs(counters["acceptance_length"] - config.expected_acceptance_length)
        result.update(
            {
                "expected_acceptance_length": config.expected_acceptance_length,
                "difference": difference,
                "agrees": difference <= config.tolerance,
            }
        )
    result["seconds"] = time.monotonic() - started
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    print(
        f"[vllm-crosscheck] {config.mode}: vLLM τ = {counters['acceptance_length']:.3f} "
        f"({counters['accepted_tokens']:.0f} of {counters['draft_tokens']:.0f} draft tokens accepted in "
        f"{counters['drafts']:.0f} steps)"
        + (f"; ours {config.expected_acceptance_length:.3f}" if config.expected_acceptance_length else ""),
        flush=True,
    )
    return result
