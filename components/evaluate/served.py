"""Served speed: what a draft is worth where it runs, measured in vLLM, not modelled in torch.

vLLM fixes a server's speculative config when it starts, so every setting — the base alone, the base with the
draft at each k, the base with the n-gram lookup at each k — is a server of its own, started, measured and stopped
in turn on the same machine with the same prompts. Each is sent the held-out chats (system prompts kept) at every
concurrency, greedy, and timed as a client sees it: output tokens per second of wall time, and milliseconds per
output token of each request (its prefill included). Greedy decoding gives the same text with or without
speculation, so every setting does the same work and their throughputs compare directly.

From those rows: the k to serve at each concurrency (0 where the base alone was fastest), which export's
vllm_speculative_config.json then carries instead of the torch cost model's, and whether the draft beats the
n-gram lookup served on the same prompts — what the registry's gate asks of a champion when this was measured.

Timings on a shared machine move by 10-15 % from one server to the next (measured: the same n-gram setting 35.7
and 32.1 tokens/s). So the draft against n-gram is a verdict with a margin: ``faster`` or ``slower`` only beyond
the noise (``speed_margin``, or the spread of repeated rounds when that is larger), else ``within noise``; the
gate refuses only a draft measured ``slower``.
"""

from __future__ import annotations

import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

NGRAM = "ngram"


def post(url: str, body: dict, api_key: str) -> dict:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.load(response)


@dataclass(frozen=True)
class Setting:
    """One server's speculation: ``method`` '' is the base alone; else vLLM's method name and its k."""

    method: str = ""
    k: int = 0

    @property
    def label(self) -> str:
        return f"{self.method} k={self.k}" if self.method else "base"

    def speculative_config(self, draft_dir: str, ngram_max: int) -> dict | None:
        """vLLM's --speculative-config of this setting (None: no speculation)."""
        if not self.method:
            return None
        if self.method == NGRAM:  # vLLM's prompt lookup: the longest suffix of the context matched, down to 1 token
            return {
                "method": NGRAM,
                "num_speculative_tokens": self.k,
                "prompt_lookup_max": ngram_max,
                "prompt_lookup_min": 1,
            }
        return {"method": self.method, "model": draft_dir, "num_speculative_tokens": self.k}


def settings(method: str, ks: list[int], ngram_ks: list[int]) -> list[Setting]:
    """The base alone first (every speed-up is against it), then the draft at each k, then n-gram at each k."""
    return [Setting(), *(Setting(method, k) for k in ks), *(Setting(NGRAM, k) for k in ngram_ks)]


def measure(base_url: str, api_key: str, chats: list, concurrency: int, max_tokens: int) -> dict:
    """Send every chat with ``concurrency`` requests in flight; throughput and per-request time per output token."""

    def one(messages: list) -> tuple[float, int]:
        started = time.perf_counter()
        reply = post(
            f"{base_url}/v1/chat/completions",
            {"model": "base", "messages": messages, "max_tokens": max_tokens, "temperature": 0},
            api_key,
        )
        return time.perf_counter() - started, reply["usage"]["completion_tokens"]

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        replies = list(pool.map(one, chats))
    seconds = time.perf_counter() - started
    tokens = sum(count for _, count in replies)
    per_token = [latency / count for latency, count in replies if count]
    return {
        "concurrency": concurrency,
        "requests": len(replies),
        "output_tokens": tokens,
        "seconds": seconds,
        "output_tokens_per_s": tokens / seconds,
        "ms_per_output_token": 1000 * sum(per_token) / len(per_token) if per_token else None,
    }


def median_round(rounds: list[dict]) -> dict:
    """One row for repeated timings of a setting: the median round (by throughput), with every round's throughput
    and their spread ((fastest - slowest) / median)."""
    ordered = sorted(rounds, key=lambda r: r["output_tokens_per_s"])
    middle = ordered[(len(ordered) - 1) // 2]
    speeds = [r["output_tokens_per_s"] for r in rounds]
    return {
        **middle,
        "rounds_tokens_per_s": speeds,
        "spread": (max(speeds) - min(speeds)) / middle["output_tokens_per_s"],
    }


FASTER, SLOWER, WITHIN_NOISE = "faster", "slower", "within noise"


def verdict(draft: float, ngram: float, noise: float) -> str:
    """The draft's served speed against n-gram's: a difference counts only beyond ``noise`` (a fraction)."""
    if draft > ngram * (1 + noise):
        return FASTER
    if draft < ngram * (1 - noise):
        return SLOWER
    return WITHIN_NOISE


def best(rows: list[dict], method: str, concurrency: int) -> dict | None:
    """The fastest row of ``method`` at ``concurrency`` (None when that method was not measured)."""
    found = [r for r in rows if r["method"] == method and r["concurrency"] == concurrency]
    return max(found, key=lambda r: r["output_tokens_per_s"]) if found else None


def choose(rows: list[dict], method: str, concurrencies: list[int], margin: float = 0.0) -> dict:
    """What the measurements say to serve: per concurrency the fastest k of the draft (0 where the base alone was
    faster), as vLLM's num_speculative_tokens_per_batch_size ranges, and the draft against n-gram at batch 1
    (:func:`verdict`, with the noise the larger of ``margin`` and the two rows' spread of rounds)."""
    by_concurrency = []
    for concurrency in concurrencies:
        base, draft = best(rows, "", concurrency), best(rows, method, concurrency)
        assert base is not None and draft is not None, "every setting is measured at every concurrency"
        pays = draft["output_tokens_per_s"] > base["output_tokens_per_s"]
        by_concurrency.append((concurrency, draft["k"] if pays else 0))
    schedule: list[list[int]] = []
    for index, (concurrency, k) in enumerate(by_concurrency):
        end = by_concurrency[index + 1][0] - 1 if index + 1 < len(by_concurrency) else concurrency
        if schedule and schedule[-1][2] == k:
            schedule[-1][1] = end
        else:
            schedule.append([concurrency, end, k])
    used = [k for _, _, k in schedule if k]
    single = concurrencies[0]
    base, draft, ngram = best(rows, "", single), best(rows, method, single), best(rows, NGRAM, single)
    assert base is not None and draft is not None
    chosen = {
        "num_speculative_tokens": max(used) if used else draft["k"],
        "num_speculative_tokens_per_batch_size": schedule if used else None,
        "speculation_pays": bool(used),
        "concurrency": single,
        "base_tokens_per_s": base["output_tokens_per_s"],
        "draft_k": draft["k"],
        "draft_tokens_per_s": draft["output_tokens_per_s"],
        "speedup": draft["output_tokens_per_s"] / base["output_tokens_per_s"],
    }
    if ngram is not None:
        noise = max(margin, draft.get("spread", 0.0), ngram.get("spread", 0.0))
        chosen.update(
            {
                "ngram_k": ngram["k"],
                "ngram_tokens_per_s": ngram["output_tokens_per_s"],
                "ngram_speedup": ngram["output_tokens_per_s"] / base["output_tokens_per_s"],
                "beats_ngram": draft["output_tokens_per_s"] > ngram["output_tokens_per_s"],
                "noise": noise,
                "versus_ngram": verdict(draft["output_tokens_per_s"], ngram["output_tokens_per_s"], noise),
            }
        )
    return chosen


def for_pipeline(value):
    """``value`` without its None entries, as a KFP dict parameter can carry it (kfp.local refuses a None; a
    consumer reads a missing key as None): 'no schedule' is no num_speculative_tokens_per_batch_size."""
    if isinstance(value, dict):
        return {key: for_pipeline(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [for_pipeline(item) for item in value if item is not None]
    return value


def with_speedups(rows: list[dict]) -> list[dict]:
    """Each row with its speed-up over the base alone at the same concurrency."""
    base = {r["concurrency"]: r["output_tokens_per_s"] for r in rows if not r["method"]}
    return [{**r, "speedup": r["output_tokens_per_s"] / base[r["concurrency"]]} for r in rows]


def line(mode: str, chosen: dict) -> str:
    """One line for the log: the served speeds at batch 1 and what was chosen."""
    text = (
        f"served at concurrency {chosen['concurrency']}: base {chosen['base_tokens_per_s']:.1f} tokens/s, "
        f"{mode} k={chosen['draft_k']} {chosen['draft_tokens_per_s']:.1f} ({chosen['speedup']:.2f}x)"
    )
    if "ngram_k" in chosen:
        text += (
            f", n-gram k={chosen['ngram_k']} {chosen['ngram_tokens_per_s']:.1f} ({chosen['ngram_speedup']:.2f}x): "
            f"the draft is {chosen['versus_ngram']} (noise ±{chosen['noise']:.0%})"
        )
    schedule = chosen["num_speculative_tokens_per_batch_size"]
    return (
        text
        + "; serve with "
        + (", ".join(f"{a}-{b}: k = {k}" for a, b, k in schedule) if schedule else "no speculation (it never paid)")
    )
