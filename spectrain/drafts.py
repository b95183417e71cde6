"""What every step knows of a draft: its modes, and what train_heads records next to a trained checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

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
    block = trained.get("dflash_block_size")
    if mode == "dflash" and block and num_draft_tokens is not None and num_draft_tokens > block - 1:
        raise SpectrainError(
            f"num_draft_tokens = {num_draft_tokens}, but the DFlash draft in {checkpoint} proposes {block - 1} "
            f"tokens per block (dflash_block_size {block})",
            where=f"{step}.num_draft_tokens",
            fix=f"use at most {block - 1}, or train with a larger dflash_block_size",
        )
    heads = trained.get("medusa_num_heads")
    if mode == "medusa" and heads and num_draft_tokens is not None and num_draft_tokens > heads:
        raise SpectrainError(
            f"num_draft_tokens = {num_draft_tokens}, but the draft in {checkpoint} has {heads} "
            f"Medusa heads: each head proposes one token, so positions {heads + 1}.."
            f"{num_draft_tokens} would never be drafted",
            where=f"{step}.num_draft_tokens",
            fix=f"use at most {heads}, or train more heads (medusa_num_heads)",
        )
