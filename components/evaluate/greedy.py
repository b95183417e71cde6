"""The base's greedy continuation of each held-out prompt: generated in batches, confirmed by a teacher-forced
pass, cached on disk keyed by everything that decides it (base identity, prompts, dtype, device type)."""

from __future__ import annotations

import hashlib
import json

import torch

from spectrain.components.evaluate.config import EvaluateConfig
from spectrain.console import Progress
from spectrain.data import heldout_chats


GREEDY_CACHE_VERSION = 3  # 2: batched generation, confirmed by a teacher-forced pass; 3: keyed by dtype and device


def load_prompts(config: EvaluateConfig, tokenizer) -> list[dict]:
    prompts = []
    for conversation, messages in heldout_chats(config.dataset, config.num_prompts):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompts.append(
            {
                "id": conversation.conversation_id,
                "category": conversation.category or "all",
                # the file it came from (an eval set of several files: the old prompt sources and the new)
                "source": source_name(conversation.source),
                "input_ids": tokenizer(text, add_special_tokens=False)["input_ids"],
            }
        )
    return prompts


def source_name(source: str) -> str:
    """'heldout.jsonl' of 'path/to/heldout.jsonl:12' (or of s3://bucket/new/heldout.jsonl:12)."""
    return source.rsplit(":", 1)[0].rstrip("/").rsplit("/", 1)[-1] or "all"


@torch.no_grad()
def generate_batch(base, prompts: list[list[int]], max_new_tokens: int, eos_ids: set[int]) -> list[list[int]]:
    """Greedy continuations of several prompts at once (left-padded), each cut after its first end token."""
    pad, device = next(iter(eos_ids)), base.device
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    output = base.generate(
        input_ids, attention_mask=attention, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad
    )
    continuations = []
    for row in output[:, width:].tolist():
        end = next((i + 1 for i, token in enumerate(row) if token in eos_ids), len(row))
        continuations.append(row[:end])
    return continuations


@torch.no_grad()
def confirm_greedy(base, prompt: list[int], continuation: list[int]) -> list[int]:
    """``prompt + continuation``, made exactly the base's greedy text under one teacher-forced pass.

    Padded batches can flip a near-tie argmax; the replay must see the tokens the base itself predicts
    from each prefix (the drafters read the same teacher-forced pass). At the first disagreement the
    sequence takes the teacher-forced token and ends there.
    """
    sequence = prompt + continuation
    if not continuation:
        return sequence
    logits = base(input_ids=torch.tensor([sequence], device=base.device)).logits[0]
    predicted = logits[len(prompt) - 1 : -1].argmax(-1).tolist()
    for offset, (token, expected) in enumerate(zip(continuation, predicted)):
        if token != expected:
            return prompt + continuation[:offset] + [expected]
    return sequence


def greedy_sequences(base, prompts: list[dict], config: EvaluateConfig, model_path: str) -> list[list[int]]:
    """The base model's greedy continuations, cached on disk: every mode and baseline replays the same ones
    (keyed by the base's dtype and device type too: bf16 on a GPU may break a near-tie otherwise than fp32)."""
    from spectrain.models import cache_dir

    arithmetic = [str(base.dtype), base.device.type]
    key = hashlib.sha256(
        json.dumps(
            [GREEDY_CACHE_VERSION, model_path, arithmetic, config.max_new_tokens, [p["input_ids"] for p in prompts]]
        ).encode()
    )
    path = cache_dir() / "greedy" / f"{key.hexdigest()[:24]}.json"
    if path.exists():
        return json.loads(path.read_text())
    sequences: list[list[int]] = [[] for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]["input_ids"]))  # little padding per batch
    eos = base.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    with Progress(len(prompts), "base greedy replies (cached after this)", "prompt") as progress:
        for start in range(0, len(order), config.generation_batch_size):
            batch = [prompts[i]["input_ids"] for i in order[start : start + config.generation_batch_size]]
            for index, continuation in zip(order[start:], generate_batch(base, batch, config.max_new_tokens, eos_ids)):
                sequences[index] = confirm_greedy(base, prompts[index]["input_ids"], continuation)
            progress.update(len(batch))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(sequences))
    return sequences
