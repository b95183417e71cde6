"""What every step knows of a draft: its modes, and what train_heads records next to a trained checkpoint."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spectrain.errors import SpectrainError

MODES = ("eagle3", "medusa", "dflash")
# Modes spectrain no longer trains, and why; naming one is an error that says so.
RETIRED_MODES = {
    "eagle1": "EAGLE-1 was dropped: modelopt 0.47 trains an EAGLE-1 draft that reads the base's last hidden state "
    "only, while vLLM's EAGLE-1 model (llama_eagle.py) first applies an fc layer over [token embedding, "
    "hidden state] that such a draft does not have, so vLLM would run it with that layer random; "
    "use eagle3",
}
TRAIN_RESULT = "train_result.json"  # what train_heads writes next to the checkpoint: mode, heads, steps, losses
# What export writes into a draft directory: vLLM's --speculative-config with the measured k, less the draft's path.
SERVING_CONFIG = "vllm_speculative_config.json"


def max_draft_tokens(mode: str, trained: Mapping[str, Any]) -> int | None:
    """The most tokens a draft proposes per step, from how it was trained (``medusa_num_heads``,
    ``dflash_block_size``): a Medusa head drafts one token; a DFlash block holds the token the base just emitted and
    block_size - 1 drafts; an EAGLE chain has no limit of its own (None), nor a draft whose setting is unknown."""
    if mode == "medusa":
        return trained.get("medusa_num_heads") or None
    if mode == "dflash":
        block = trained.get("dflash_block_size")
        return block - 1 if block else None
    return None


def too_many_draft_tokens(mode: str, trained: Mapping[str, Any], k: int) -> tuple[str, dict[str, int]] | None:
    """None when a draft trained so proposes ``k`` tokens per step; else why not, and the training setting that
    would let it (what train_options or train_heads take)."""
    limit = max_draft_tokens(mode, trained)
    if limit is None or k <= limit:
        return None
    if mode == "medusa":
        return f"{limit} Medusa heads draft {limit} tokens (one each)", {"medusa_num_heads": k}
    return f"a DFlash block of {limit + 1} drafts {limit} tokens", {"dflash_block_size": k + 1}


def vllm_speculative_config(draft_dir: str | Path) -> dict:
    """The ``--speculative-config`` to serve ``draft_dir`` with: what export chose from measurements, with the path."""
    path = Path(draft_dir) / SERVING_CONFIG
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SpectrainError(
            f"cannot read the draft's serving config ({exc})",
            where=str(path),
            fix="pass a draft directory written by spectrain's export step",
        ) from exc
    return {**config, "model": str(Path(draft_dir).resolve())}


def served_speculative_config(speculative: Mapping[str, Any], served: Mapping[str, Any]) -> dict:
    """A draft's serving config with the k the vLLM cross-check measured fastest (its ``served`` result) in place of
    the torch cost model's: EAGLE-3 with its per-concurrency schedule (num_speculative_tokens: the largest k that
    schedule uses), DFlash with the fastest k at batch 1; Medusa's k is its number of heads whatever was timed.

    Whole numbers whatever ``served`` holds: a dict that crossed a pipeline comes back with floats (a KFP dict
    parameter is a protobuf Struct, whose numbers are doubles: 3 arrives as 3.0), and vLLM's config takes ints."""
    if speculative["method"] == "medusa":
        return dict(speculative)
    chosen = {k: v for k, v in speculative.items() if k != "num_speculative_tokens_per_batch_size"}
    schedule = [
        [int(low), int(high), int(k)] for low, high, k in served.get("num_speculative_tokens_per_batch_size") or []
    ]
    if speculative["method"] == "eagle3" and schedule:
        chosen["num_speculative_tokens"] = max(k for _, _, k in schedule)
        chosen["num_speculative_tokens_per_batch_size"] = schedule
    else:
        chosen["num_speculative_tokens"] = int(served["draft_k"])
    return chosen


def check_draft_checkpoint(checkpoint: str, mode: str, step: str, num_draft_tokens: int | None = None) -> None:
    """Refuse a checkpoint trained as another mode, or a k the draft cannot propose, before any work starts.

    Reads ``train_result.json`` (written by train_heads); a checkpoint without one is checked when loaded.
    """
    path = Path(checkpoint) / TRAIN_RESULT
    try:
        trained = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if trained.get("mode") and trained["mode"] != mode:
        raise SpectrainError(
            f"{checkpoint} holds a {trained['mode']} draft, but {step}.mode is {mode!r}",
            where=f"{step}.mode",
            fix=f"pass --mode {trained['mode']}, or the checkpoint of a {mode} draft",
        )
    problem = too_many_draft_tokens(mode, trained, num_draft_tokens) if num_draft_tokens is not None else None
    if problem:
        reason, setting = problem
        raise SpectrainError(
            f"num_draft_tokens = {num_draft_tokens}, but in the draft of {checkpoint} {reason}",
            where=f"{step}.num_draft_tokens",
            fix=f"use at most {max_draft_tokens(mode, trained)}, or a draft trained with {json.dumps(setting)}",
        )
