"""Evaluate in vLLM: the base model served with the exported draft, τ from vLLM's own spec-decode counters.

This is the proof that the export loads the trained weights: vLLM skips weight names it does not
know, so a wrongly named export still serves — with random heads and τ ≈ 1.

With ``served_speed`` it then times the draft where it will run (spectrain.components.evaluate.served): the base
alone, with the draft at each k, with n-gram at each k, one server after another on the same machine and prompts.
Its ``served`` result names the k (and per-concurrency schedule) found fastest, which register writes into the
registered draft's serving config, and whether the draft beat n-gram served, which the gate asks of a champion.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from spectrain.components.evaluate import served
from spectrain.components.evaluate.config import SPEC_METHODS, VllmCrosscheckConfig
from spectrain import bases, devices, specdecode, vllm
from spectrain.data import heldout_chats
from spectrain.errors import SpectrainError
from spectrain.hardware import has_nvidia_gpu
from spectrain.models import resolve_base_model

API_KEY = "spectrain-crosscheck"


@dataclass(frozen=True)
class Servers:
    """What every server of the cross-check shares: the base, its GPUs, how long to wait for it."""

    model_path: str
    tensor_parallel_size: int
    timeout_s: float


def servers(config: VllmCrosscheckConfig) -> tuple[Servers, str]:
    """The servers' shared settings and the τ check's dtype, resolved for this machine: the evaluate step's
    arithmetic (spectrain.devices.resolve, as components/evaluate/acceptance.py places the base: float32 on a CPU,
    the base's own bf16/fp16 on a GPU) and every GPU the step was given (a 70B base does not fit one)."""
    model_path = str(resolve_base_model(config.base_model))
    dtype = config.dtype or devices.resolve(model_dtype=bases.facts_of(model_path).dtype).base_dtype
    gpus = config.tensor_parallel_size or max(devices.expected_gpus(), 1)
    return Servers(model_path, gpus, config.ready_timeout_s), dtype


@contextlib.contextmanager
def server(shared: Servers, speculative: dict | None, dtype: str, eager: bool, log: Path):
    """A vLLM server of the base with ``speculative`` (None: none) for the duration of the block: its URL."""
    port = vllm.free_port()
    extra = ["--speculative-config", json.dumps(speculative)] if speculative else []
    arguments = vllm.serve_arguments(
        shared.model_path,
        port,
        dtype=dtype,
        enforce_eager=eager,
        tensor_parallel_size=shared.tensor_parallel_size,
        extra=extra,
    )
    process = vllm.start(arguments, log, vllm.cpu_env(API_KEY, 1))
    base_url = f"http://127.0.0.1:{port}"
    try:
        vllm.wait_until_ready(f"{base_url}/v1", API_KEY, shared.timeout_s, process, log)
        yield base_url
    finally:
        vllm.terminate(process.pid)


def speed_ks(config: VllmCrosscheckConfig) -> list[int]:
    """The draft's k's to time: Medusa proposes one token per head, whatever k; a DFlash block caps k."""
    if config.mode == "medusa":
        return [config.num_draft_tokens]
    ks = [int(k) for k in config.speed_ks]
    if config.mode == "dflash":
        block = json.loads((Path(config.draft_dir) / "config.json").read_text()).get("block_size")
        ks = [k for k in ks if not block or k < block] or [config.num_draft_tokens]
    return ks


def timed_rows(base_url: str, setting: served.Setting, chats: list, config: VllmCrosscheckConfig) -> list[dict]:
    """``setting``'s server timed at every concurrency (speed_rounds times: the median round counts), after one
    untimed request (the first pays for warm-up)."""
    served.post(
        f"{base_url}/v1/chat/completions",
        {"model": "base", "messages": chats[0], "max_tokens": 8, "temperature": 0},
        API_KEY,
    )
    rows = []
    for concurrency in config.speed_concurrency:
        row = served.median_round(
            [
                served.measure(base_url, API_KEY, chats, int(concurrency), config.speed_max_new_tokens)
                for _ in range(config.speed_rounds)
            ]
        )
        rows.append({"setting": setting.label, "method": setting.method, "k": setting.k, **row})
        print(
            f"[vllm-crosscheck] {setting.label}, concurrency {int(concurrency)}: "
            f"{row['output_tokens_per_s']:.1f} output tokens/s, {row['ms_per_output_token']:.1f} ms per token"
            + (
                f" (median of {config.speed_rounds} rounds, spread {row['spread']:.0%})"
                if config.speed_rounds > 1
                else ""
            ),
            flush=True,
        )
    return rows


def run(config: VllmCrosscheckConfig) -> dict:
    started = time.monotonic()
    if not (Path(config.draft_dir) / "config.json").is_file():
        raise SpectrainError(
            "no config.json in the draft directory",
            where=config.draft_dir,
            fix="pass the export step's output directory",
        )
    shared, dtype = servers(config)
    output = Path(config.output)
    log = output.with_suffix(".vllm.log")
    draft_dir = str(Path(config.draft_dir).resolve())
    method = SPEC_METHODS[config.mode]
    speculative = {"method": method, "model": draft_dir, "num_speculative_tokens": config.num_draft_tokens}
    eager = not has_nvidia_gpu() if config.speed_enforce_eager is None else config.speed_enforce_eager
    # The τ check's server (evaluate's dtype, eager) is also timed when the timed servers would be the same.
    same_server = config.served_speed and config.speed_dtype == dtype and eager
    chats = [messages for _, messages in heldout_chats(config.dataset, config.num_prompts)]  # evaluate's
    speed_chats = [m for _, m in heldout_chats(config.dataset, config.speed_num_prompts)]
    rows: list[dict] = []
    with server(shared, speculative, dtype, True, log) as base_url:
        completion_tokens = 0
        for messages in chats:  # one at a time: the counters then describe plain decoding steps
            reply = served.post(
                f"{base_url}/v1/chat/completions",
                {"model": "base", "messages": messages, "max_tokens": config.max_new_tokens, "temperature": 0},
                API_KEY,
            )
            completion_tokens += reply["usage"]["completion_tokens"]
        with urllib.request.urlopen(f"{base_url}/metrics", timeout=30) as response:
            counters = specdecode.parse(response.read().decode()).report()
        ks = speed_ks(config)
        if same_server and config.num_draft_tokens in ks:
            rows += timed_rows(base_url, served.Setting(method, config.num_draft_tokens), speed_chats, config)
    result = {
        "mode": config.mode,
        "speculative_config": speculative,
        "dtype": dtype,
        "tensor_parallel_size": shared.tensor_parallel_size,
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
    print(
        f"[vllm-crosscheck] {config.mode}: vLLM τ = {counters['acceptance_length']:.3f} "
        f"({counters['accepted_tokens']:.0f} of {counters['draft_tokens']:.0f} draft tokens accepted in "
        f"{counters['drafts']:.0f} steps)"
        + (f"; ours {config.expected_acceptance_length:.3f}" if config.expected_acceptance_length else ""),
        flush=True,
    )
    if config.served_speed:
        done = {(r["method"], r["k"]) for r in rows}
        for setting in served.settings(method, ks, [int(k) for k in config.speed_ks]):
            if (setting.method, setting.k) in done:
                continue
            setting_log = output.with_name(f"{output.stem}.{setting.label.replace(' ', '-')}.vllm.log")
            with server(
                shared, setting.speculative_config(draft_dir, config.ngram_max), config.speed_dtype, eager, setting_log
            ) as base_url:
                rows += timed_rows(base_url, setting, speed_chats, config)
        chosen = served.choose(rows, method, [int(c) for c in config.speed_concurrency], config.speed_margin)
        result["served"] = {
            **chosen,
            "k_chosen_by": "served",
            "dtype": config.speed_dtype,
            "enforce_eager": eager,
            "prompts": len(speed_chats),
            "max_new_tokens": config.speed_max_new_tokens,
            "rounds": config.speed_rounds,
            "rows": served.with_speedups(rows),
        }
        print(f"[vllm-crosscheck] {config.mode}: {served.line(config.mode, chosen)}", flush=True)
    result["seconds"] = time.monotonic() - started
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    return result
