"""Offline hidden-state cache: run the frozen base once, train the draft for many epochs from disk.

The draft heads only ever see what the frozen base produces: its final (post-norm) hidden state,
for EAGLE-3 also the outputs of a few intermediate layers, and its logits (the distillation
target). Those are written once as sharded safetensors, unpadded, so an epoch from the cache
skips every base decoder layer. Logits are stored only for an EAGLE draft with a reduced
vocabulary (its N columns are all the loss reads); with the full vocabulary they would dwarf the
hidden states, so training recomputes them from the final hidden state with the base lm_head.

Layout of a cache directory:
    manifest.json              what the cache was built from (a mismatch rebuilds it) and its size
    shard-00000.safetensors    input_ids, loss_mask, hidden[, aux] of many examples, concatenated
                               along the token axis; offsets[i]:offsets[i+1] is example i;
                               logits (draft vocabulary only) when the draft has a reduced one
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from spectrain.console import Progress, warn

if TYPE_CHECKING:
    from spectrain.components.train_heads.config import TrainHeadsConfig

CACHE_VERSION = 1
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def cache_key(
    examples: list[dict],
    base_model_path: str,
    aux_layer_ids: list[int],
    dtype: str,
    draft_token_ids: torch.Tensor | None = None,
) -> dict:
    """What decides the cache content: the tokenized examples, the base weights' identity, the layers kept."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps([example["input_ids"], example["loss_mask"]]).encode())
    config_file = Path(base_model_path) / "config.json"
    weights = sorted(Path(base_model_path).glob("*.safetensors"))
    return {
        "version": CACHE_VERSION,
        "examples_sha256": digest.hexdigest(),
        "base_model": str(base_model_path),
        "base_config_sha256": hashlib.sha256(config_file.read_bytes()).hexdigest() if config_file.exists() else "",
        "base_weights": [[w.name, w.stat().st_size, int(w.stat().st_mtime)] for w in weights],
        "aux_layer_ids": list(aux_layer_ids),
        "draft_token_ids_sha256": (
            hashlib.sha256(draft_token_ids.numpy().tobytes()).hexdigest() if draft_token_ids is not None else None
        ),
        "dtype": dtype,
    }


def read_manifest(directory: Path) -> dict | None:
    path = directory / "manifest.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # an interrupted build: rebuild


@torch.no_grad()
def build(
    model,
    examples: list[dict],
    directory: Path,
    key: dict,
    batch_size: int = 4,
    draft_token_ids: torch.Tensor | None = None,
    shard_tokens: int = 1 << 20,
    bf16: bool = False,
) -> dict:
    """Run ``model`` (a plain HF causal LM, the frozen base) once over ``examples`` and write the cache.

    ``draft_token_ids`` (the tokens of a reduced draft vocabulary) also stores those logit columns;
    ``bf16`` runs the base under bf16 autocast, as training does at that precision.

    Reuses an existing cache whose manifest matches ``key``; anything else in ``directory`` is replaced.
    """
    manifest = read_manifest(directory)
    if manifest and manifest.get("key") == key:
        print(
            f"[train] reusing hidden-state cache {directory} ({manifest['tokens']} tokens, "
            f"{manifest['bytes'] / 2**20:.1f} MiB)",
            flush=True,
        )
        return manifest
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    dtype = DTYPES[key["dtype"]]
    aux_ids = key["aux_layer_ids"]
    captured: list[torch.Tensor] = []
    hooks = [
        model.model.layers[i].register_forward_hook(
            lambda module, inputs, output: captured.append(output if isinstance(output, torch.Tensor) else output[0])
        )
        for i in aux_ids
    ]
    model.eval()
    device = next(model.parameters()).device
    shards: list[dict] = []
    pending: list[dict] = []
    pending_tokens, tokens = 0, 0

    def flush() -> None:
        nonlocal pending, pending_tokens
        if not pending:
            return
        lengths = torch.tensor([0] + [len(p["input_ids"]) for p in pending])
        tensors = {
            "offsets": torch.cumsum(lengths, 0),
            "input_ids": torch.cat([p["input_ids"] for p in pending]),
            "loss_mask": torch.cat([p["loss_mask"] for p in pending]),
            "hidden": torch.cat([p["hidden"] for p in pending]),
        }
        for name in ("aux", "logits"):
            if name in pending[0]:
                tensors[name] = torch.cat([p[name] for p in pending])
        name = f"shard-{len(shards):05d}.safetensors"
        save_file(tensors, str(directory / name))
        shards.append({"file": name, "examples": len(pending)})
        pending, pending_tokens = [], 0

    started = time.monotonic()
    progress = Progress(len(examples), "hidden-state cache", "conv")
    try:
        for start in range(0, len(examples), batch_size):
            progress.update(min(batch_size, len(examples) - start))
            batch = examples[start : start + batch_size]
            width = max(len(e["input_ids"]) for e in batch)
            input_ids = torch.zeros(len(batch), width, dtype=torch.long)
            attention = torch.zeros(len(batch), width, dtype=torch.long)
            for row, example in enumerate(batch):
                input_ids[row, : len(example["input_ids"])] = torch.tensor(example["input_ids"])
                attention[row, : len(example["input_ids"])] = 1
            captured.clear()
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                outputs = model.model(
                    input_ids=input_ids.to(device), attention_mask=attention.to(device), output_hidden_states=True
                )
                extra = {"hidden": outputs.last_hidden_state}
                if aux_ids:
                    extra["aux"] = torch.cat(captured, dim=-1)
                if draft_token_ids is not None:
                    extra["logits"] = model.lm_head(outputs.last_hidden_state)[..., draft_token_ids.to(device)]
            extra = {name: tensor.to("cpu", dtype) for name, tensor in extra.items()}
            for row, example in enumerate(batch):
                n = len(example["input_ids"])
                pending.append(
                    {
                        "input_ids": torch.tensor(example["input_ids"], dtype=torch.int32),
                        "loss_mask": torch.tensor(example["loss_mask"], dtype=torch.int8),
                        **{name: tensor[row, :n].contiguous() for name, tensor in extra.items()},
                    }
                )
                pending_tokens += n
                tokens += n
            if pending_tokens >= shard_tokens:
                flush()
        flush()
    finally:
        progress.close()
        for hook in hooks:
            hook.remove()
    size = sum(f.stat().st_size for f in directory.glob("*.safetensors"))
    manifest = {
        "key": key,
        "shards": shards,
        "examples": len(examples),
        "tokens": tokens,
        "bytes": size,
        "bytes_per_token": size / max(tokens, 1),
        "build_seconds": round(time.monotonic() - started, 2),
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2))  # last: marks the cache complete
    print(
        f"[train] hidden-state cache: {tokens} tokens, {size / 2**20:.1f} MiB "
        f"({manifest['bytes_per_token']:.0f} bytes/token, {key['dtype']}) in {directory}",
        flush=True,
    )
    return manifest


class CachedBaseDecoder(torch.nn.Module):
    """Stands in for a Medusa model's frozen base decoder: returns the cached final hidden states.

    modelopt's Medusa forward calls ``self.model(...)`` and reads ``last_hidden_state``; with this
    module in place the loss, heads and schedule stay modelopt's, and no base layer runs.
    """

    def forward(self, base_hidden_states: torch.Tensor, **_unused):
        from transformers.modeling_outputs import BaseModelOutputWithPast

        return BaseModelOutputWithPast(last_hidden_state=base_hidden_states)


def cache_bytes_per_token(config: TrainHeadsConfig, base_config) -> int:
    """What one token costs in the hidden-state cache: final hidden state, the layers the draft reads
    (:func:`feature_layer_ids`), draft-vocabulary logits."""
    from spectrain.components.train_heads.draft import (
        feature_layer_ids,
    )  # (draft.py imports modelopt: only when sizing)

    text_config = base_config.get_text_config() if hasattr(base_config, "get_text_config") else base_config
    values = text_config.hidden_size * (1 + len(feature_layer_ids(config, text_config.num_hidden_layers)))
    if config.mode == "eagle3" and 0 < config.draft_vocab_size < text_config.vocab_size:
        values += config.draft_vocab_size
    return values * DTYPES[config.hidden_state_cache_dtype].itemsize + 5  # + token id and mask


def cache_fits(config: TrainHeadsConfig, base_config, examples: list[dict], directory: Path) -> bool:
    """Whether the cache stays under hidden_state_cache_max_gb and fits on the disk of ``directory``; if not, say so
    (training then runs online). A pod's filesystem is where a cluster step writes it (Kubeflow Pipelines cannot
    request ephemeral storage for a step: a full disk there gets the pod evicted, not a clear error)."""
    tokens = sum(len(e["input_ids"]) for e in examples)
    size = tokens * cache_bytes_per_token(config, base_config)
    if size > config.hidden_state_cache_max_gb * 1e9:
        warn(
            f"the hidden-state cache would take {size / 1e9:.1f} GB for {tokens} tokens, over "
            f"hidden_state_cache_max_gb = {config.hidden_state_cache_max_gb:g}: training online instead (raise the "
            "limit to cache)"
        )
        return False
    room = free_bytes(directory)
    if size > room * DISK_SHARE:
        warn(
            f"the hidden-state cache would take {tqdm.format_sizeof(size, 'B')} for {tokens} tokens, but {directory} "
            f"has {tqdm.format_sizeof(room, 'B')} free (the cache may fill {DISK_SHARE:.0%} of it): training online "
            "instead (set hidden_state_cache_dir to a larger disk to cache)"
        )
        return False
    return True


DISK_SHARE = 0.9  # of the free space the cache may take: the checkpoints and the artifact need the rest


def free_bytes(directory: Path) -> int:
    """Free space for a cache in ``directory``: its disk's free bytes plus what a cache already there holds (a
    rebuild replaces it). The directory need not exist yet: its nearest existing parent's disk counts."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    held = sum(f.stat().st_size for f in directory.glob("*") if f.is_file()) if directory.is_dir() else 0
    return shutil.disk_usage(existing).free + held
