"""Evaluate step logic: exact acceptance length τ of a draft, by replaying the base model's greedy output.

Greedy speculative decoding emits exactly the base model's greedy tokens, whatever the draft
proposes. So we generate that sequence once, run the base once over it (which gives the
hidden states any prefix would have, by causality), and replay decoding: at each base step
the draft proposes k tokens from the committed prefix, the longest prefix matching the
greedy sequence is accepted, and the step emits accepted + 1 tokens. τ is tokens per step.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import modelopt.torch.opt as mto
import torch
import transformers

from components.evaluate.config import EvaluateConfig
from spectrain.console import Progress
from spectrain.data import dataset_fingerprint, heldout_chats
from spectrain.drafts import check_draft_checkpoint
from spectrain.errors import SpectrainError
from spectrain.models import base_model_identity, resolve_base_model
from spectrain.plots import figure

mto.enable_huggingface_checkpointing()
DTYPE = torch.float32  # base and draft arithmetic of the replay: part of the measurement protocol
GREEDY_CACHE_VERSION = 2  # 2: batched generation, confirmed by a teacher-forced pass


@dataclass
class Tally:
    """Counts behind τ and the per-position acceptance rates."""

    k: int
    steps: int = 0
    tokens: int = 0
    drafted: int = 0  # steps that verified a draft: all but a sequence's last step when it ends on a base token
    accepted_at: list[int] = field(default_factory=list)

    def __post_init__(self):
        self.accepted_at = self.accepted_at or [0] * self.k

    def add(self, accepted: int, emitted: int, drafted: bool = True) -> None:
        self.steps += 1
        self.tokens += emitted
        self.drafted += drafted
        for position in range(accepted):
            self.accepted_at[position] += 1

    def merge(self, other: "Tally") -> None:
        self.steps += other.steps
        self.tokens += other.tokens
        self.drafted += other.drafted
        self.accepted_at = [a + b for a, b in zip(self.accepted_at, other.accepted_at)]

    def summary(self) -> dict:
        """τ = tokens per base step; ``acceptance_length_per_draft`` = 1 + accepted / drafts, vLLM's counters'
        definition, which leaves out a last step with nothing left to draft (it differs on short replies)."""
        return {
            "acceptance_length": self.tokens / max(self.steps, 1),
            "steps": self.steps,
            "tokens": self.tokens,
            "acceptance_length_per_draft": 1 + sum(self.accepted_at) / max(self.drafted, 1),
            "acceptance_rate_per_position": [a / max(self.steps, 1) for a in self.accepted_at],
        }


def replay(sequence: list[int], prompt_length: int, propose, k: int) -> Tally:
    """Replay greedy speculative decoding of ``sequence[prompt_length:]`` with drafts from ``propose``.

    ``propose(n)`` returns up to k draft tokens for positions n+1.. given the committed
    tokens ``sequence[:n+1]`` (token n is the one the base model just emitted).
    """
    tally = Tally(k)
    n = prompt_length  # the base model's first step emits token n
    end = len(sequence)
    while n < end:
        drafts = propose(n) if n + 1 < end else []
        accepted = 0
        for offset, token in enumerate(drafts[:k], start=1):
            if n + offset < end and sequence[n + offset] == token:
                accepted += 1
            else:
                break
        tally.add(accepted, accepted + 1, drafted=n + 1 < end)
        n += accepted + 1
    return tally


def ngram_proposer(sequence: list[int], k: int, ngram_max: int):
    """Prompt lookup: the k tokens after the latest earlier occurrence of the longest matching suffix."""

    def propose(n: int) -> list[int]:
        context = sequence[: n + 1]
        for size in range(min(ngram_max, len(context) - 1), 0, -1):
            suffix = context[-size:]
            for start in range(len(context) - size - 1, -1, -1):
                if context[start : start + size] == suffix:
                    return context[start + size : start + size + k]
        return []

    return propose


class MedusaProposer:
    """Top-1 chain of Medusa heads at the last committed position (what vLLM's Medusa proposer does)."""

    def __init__(self, model, k: int):
        self.model, self.k = model, k

    @torch.no_grad()
    def for_sequence(self, input_ids: torch.Tensor):
        hidden = self.model.model(input_ids=input_ids).last_hidden_state[0]
        heads = self.model.medusa_heads[: self.k]
        drafts = torch.stack([head(hidden).argmax(-1) for head in heads], dim=-1).tolist()  # [L, k]
        return lambda n: drafts[n - 1]  # the hidden state that emitted token n is at n-1


class DFlashProposer:
    """DFlash: one draft forward over a block [the token the base just emitted, mask × (block - 1)], attending to
    the hidden states the chosen base layers produced for the committed context, and nothing else (no mask).

    Matches modelopt's ``pseudo_speculative_generate`` (a test checks it), with the base run once per sequence:
    its causal hidden states at positions < n are those of the prefix alone.
    """

    def __init__(self, model, k: int):
        self.model, self.k = model, k
        self.block = model.dflash_block_size

    @torch.no_grad()
    def for_sequence(self, input_ids: torch.Tensor):
        model = self.model
        hidden_states = model._base_model(input_ids=input_ids, output_hidden_states=True).hidden_states
        context = torch.cat([hidden_states[layer + 1] for layer in model.target_layer_ids], dim=-1)
        mask = torch.full((1, self.block), model.mask_token_id, dtype=torch.long)

        def propose(n: int) -> list[int]:
            block = mask.clone()
            block[0, 0] = input_ids[0, n]  # the token the base emitted at position n
            positions = torch.arange(n + self.block).unsqueeze(0)  # the context's, then the block's
            hidden = model.dflash_module(
                noise_embedding=model._base_model_embeddings(block),
                target_hidden=context[:, :n],
                position_ids=positions,
                attention_mask=None,
            )
            return model._base_model_lm_head(hidden[:, 1 : 1 + self.k]).argmax(-1)[0].tolist()

        return propose


DRAFT_MODULES = (
    ("medusa_heads", "medusa", "Medusa"),
    ("eagle_module", "eagle3", "EAGLE"),
    ("dflash_module", "dflash", "DFlash"),
)


def draft_proposer(model, config: EvaluateConfig):
    """The proposer of ``config.mode`` for a loaded checkpoint; a checkpoint of another kind is refused."""
    k = config.num_draft_tokens
    wanted = next(attribute for attribute, mode, _ in DRAFT_MODULES if mode == config.mode)
    if not hasattr(model, wanted):
        found = next((kind for attribute, _, kind in DRAFT_MODULES if hasattr(model, attribute)), "no draft module")
        raise SpectrainError(
            f"{config.checkpoint} holds {found}, not a {config.mode} draft",
            where="evaluate.mode",
            fix="pass the mode the checkpoint was trained with, or the train_heads output of this mode",
        )
    if config.mode == "medusa":
        if k > len(model.medusa_heads):
            raise SpectrainError(
                f"num_draft_tokens = {k}, but the draft has {len(model.medusa_heads)} Medusa heads (one token each)",
                where="evaluate.num_draft_tokens",
                fix=f"use at most {len(model.medusa_heads)}",
            )
        return MedusaProposer(model, k)
    if config.mode == "dflash":
        if k > model.dflash_block_size - 1:
            raise SpectrainError(
                f"num_draft_tokens = {k}, but the DFlash draft proposes {model.dflash_block_size - 1} tokens per block",
                where="evaluate.num_draft_tokens",
                fix=f"use at most {model.dflash_block_size - 1}",
            )
        return DFlashProposer(model, k)
    return EagleProposer(model, k)


class EagleProposer:
    """EAGLE drafting over its own hidden states, with a KV cache for the committed context.

    Matches modelopt's ``pseudo_speculative_generate`` (a test checks it), without recomputing
    the whole prefix for every draft token.
    """

    def __init__(self, model, k: int):
        self.model, self.k = model, k
        self.module = model.eagle_module
        self.lm_head = getattr(self.module, "lm_head", None) or model._base_model_lm_head
        self.reduced_vocab = model.eagle_config.draft_vocab_size != model.eagle_config.vocab_size

    @torch.no_grad()
    def _step(self, hidden, token_ids, cache, start):
        length = hidden.shape[1]
        mask = self.model._prepare_decoder_attention_mask(None, (1, length), start, hidden.device, hidden.dtype)
        positions = torch.arange(start, start + length, device=hidden.device).unsqueeze(0)
        postnorm, prenorm, cache = self.module(
            hidden,
            self.model._base_model_embeddings(token_ids),
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            past_key_values=cache,
        )
        token = self.lm_head(postnorm[:, -1:]).argmax(-1)
        if self.reduced_vocab:
            token = token + self.module.d2t[token]
        return token, prenorm[:, -1:], cache

    @torch.no_grad()
    def for_sequence(self, input_ids: torch.Tensor):
        from transformers import DynamicCache

        model = self.model
        outputs = model._base_model(input_ids=input_ids, output_hidden_states=True)  # hooks collect aux states
        if model.eagle_config.use_aux_hidden_state:
            context_hidden = self.module.fc(model.pop_and_gather_aux_hiddens())
        else:
            context_hidden = outputs.hidden_states[-1]
        model.eagle_module._maybe_init_rope(device=context_hidden.device)
        # Draft position t reads the base hidden state at t and the token at t+1.
        next_ids = torch.cat([input_ids[:, 1:], input_ids[:, -1:]], dim=1)
        state = {"cache": DynamicCache(config=self.module.config), "cached": 0}

        def propose(n: int) -> list[int]:
            cache = state["cache"]
            if state["cached"] < n - 1:  # extend the true-context cache up to position n-2
                start = state["cached"]
                _, _, cache = self._step(context_hidden[:, start : n - 1], next_ids[:, start : n - 1], cache, start)
                state["cached"] = n - 1
            token, hidden, cache = self._step(context_hidden[:, n - 1 : n], next_ids[:, n - 1 : n], cache, n - 1)
            drafts = [int(token)]
            for step in range(1, self.k):
                token, hidden, cache = self._step(hidden, token, cache, n - 1 + step)
                drafts.append(int(token))
            cache.crop(n - 1)  # forget this chain; keep the true context
            return drafts

        return propose


def load_prompts(config: EvaluateConfig, tokenizer) -> list[dict]:
    prompts = []
    for conversation, messages in heldout_chats(config.dataset, config.num_prompts):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompts.append(
            {
                "id": conversation.conversation_id,
                "category": conversation.category or "all",
                "input_ids": tokenizer(text, add_special_tokens=False)["input_ids"],
            }
        )
    return prompts


@torch.no_grad()
def generate_batch(base, prompts: list[list[int]], max_new_tokens: int, eos_ids: set[int]) -> list[list[int]]:
    """Greedy continuations of several prompts at once (left-padded), each cut after its first end token."""
    pad = next(iter(eos_ids))
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
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
    logits = base(input_ids=torch.tensor([sequence])).logits[0]
    predicted = logits[len(prompt) - 1 : -1].argmax(-1).tolist()
    for offset, (token, expected) in enumerate(zip(continuation, predicted)):
        if token != expected:
            return prompt + continuation[:offset] + [expected]
    return sequence


def greedy_sequences(base, prompts: list[dict], config: EvaluateConfig, model_path: str) -> list[list[int]]:
    """The base model's greedy continuations, cached on disk: every mode and baseline replays the same ones."""
    from spectrain.models import cache_dir

    key = hashlib.sha256(
        json.dumps(
            [GREEDY_CACHE_VERSION, model_path, config.max_new_tokens, [p["input_ids"] for p in prompts]]
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


def evaluate_proposer(make_propose, prompts, sequences, k, name: str = "draft") -> tuple[Tally, dict[str, Tally]]:
    total, by_category = Tally(k), dict[str, Tally]()
    with Progress(len(prompts), f"replay: {name}", "prompt") as progress:
        for prompt, sequence in zip(prompts, sequences):
            tally = replay(sequence, len(prompt["input_ids"]), make_propose(sequence), k)
            total.merge(tally)
            by_category.setdefault(prompt["category"], Tally(k)).merge(tally)
            progress.update()
    return total, by_category


def plot_acceptance(results: dict[str, dict], path: Path) -> None:
    names = list(results)
    k = len(next(iter(results.values()))["acceptance_rate_per_position"])
    width = 0.8 / len(names)
    with figure(path) as (_, axis):
        for index, name in enumerate(names):
            rates = results[name]["acceptance_rate_per_position"]
            axis.bar(
                [p + index * width for p in range(k)],
                rates,
                width=width,
                label=f"{name} (τ={results[name]['acceptance_length']:.2f})",
            )
        axis.set_xticks([p + width * (len(names) - 1) / 2 for p in range(k)], [f"draft {p + 1}" for p in range(k)])
        axis.set(ylabel="accepted per base step", ylim=(0, 1), title="per-position acceptance")
        axis.legend()


def reset_heads(model) -> None:
    """Put the draft module back to a fresh initialisation: the 'untrained head of the same mode' baseline."""
    torch.manual_seed(0)
    heads = next(getattr(model, attribute) for attribute, _, _ in DRAFT_MODULES if hasattr(model, attribute))
    for module in heads.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()


def run(config: EvaluateConfig) -> dict:
    started = time.monotonic()
    check_draft_checkpoint(config.checkpoint, config.mode, "evaluate", config.num_draft_tokens)
    model_path = resolve_base_model(config.base_model)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_path)
    prompts = load_prompts(config, tokenizer)
    base = transformers.AutoModelForCausalLM.from_pretrained(model_path, dtype=DTYPE).eval()
    sequences = greedy_sequences(base, prompts, config, model_path)
    del base
    model = transformers.AutoModelForCausalLM.from_pretrained(
        config.checkpoint, dtype=DTYPE, attn_implementation="sdpa"
    ).eval()
    k = config.num_draft_tokens
    proposer = draft_proposer(model, config)

    draft_started = time.monotonic()
    candidate, by_category = evaluate_proposer(
        lambda s: proposer.for_sequence(torch.tensor([s])), prompts, sequences, k, name=config.mode
    )
    draft_seconds = time.monotonic() - draft_started
    ngram, _ = evaluate_proposer(lambda s: ngram_proposer(s, k, config.ngram_max), prompts, sequences, k, "n-gram")
    results = {
        config.mode: candidate.summary(),
        "ngram": ngram.summary(),
        "no speculation": {"acceptance_length": 1.0, "acceptance_rate_per_position": [0.0] * k},
    }
    if config.untrained_baseline:
        reset_heads(model)
        untrained, _ = evaluate_proposer(
            lambda s: proposer.for_sequence(torch.tensor([s])), prompts, sequences, k, f"untrained {config.mode}"
        )
        results[f"untrained {config.mode}"] = untrained.summary()
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    plot_acceptance(results, output_dir / "acceptance.png")
    summary = {
        "mode": config.mode,
        **candidate.summary(),
        "ngram_acceptance_length": ngram.summary()["acceptance_length"],
        "untrained_acceptance_length": results.get(f"untrained {config.mode}", {}).get("acceptance_length"),
        "ratio_to_ngram": candidate.summary()["acceptance_length"] / ngram.summary()["acceptance_length"],
        "by_category": {name: t.summary()["acceptance_length"] for name, t in sorted(by_category.items())},
        "num_prompts": len(prompts),
        "num_draft_tokens": k,
        "max_new_tokens": config.max_new_tokens,
        "eval_dataset_fingerprint": dataset_fingerprint(config.dataset, "heldout"),
        # with the fields above, the measurement protocol: a τ is comparable only with one measured the same way
        "dtype": str(DTYPE).removeprefix("torch."),
        "base_model": config.base_model,
        **base_model_identity(model_path, tokenizer),
        "simulated_tokens_per_s": candidate.tokens / max(draft_seconds, 1e-9),
        "seconds": time.monotonic() - started,
        "plot": str(output_dir / "acceptance.png"),
    }
    (output_dir / "evaluation.json").write_text(json.dumps(summary, indent=2))
    print(
        f"[evaluate] {config.mode}: τ = {summary['acceptance_length']:.3f} over {len(prompts)} prompts "
        f"(per position {', '.join(f'{r:.2f}' for r in summary['acceptance_rate_per_position'])}); "
        f"ngram τ = {summary['ngram_acceptance_length']:.3f}"
        + (f", untrained τ = {summary['untrained_acceptance_length']:.3f}" if config.untrained_baseline else ""),
        flush=True,
    )
    return summary
