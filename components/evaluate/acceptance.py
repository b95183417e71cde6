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

import torch
import transformers

from components.evaluate import costs
from components.evaluate.config import EvaluateConfig
from spectrain import bases, devices, draft_checkpoint
from spectrain.console import Progress
from spectrain.data import dataset_fingerprint, heldout_chats
from spectrain.drafts import check_draft_checkpoint
from spectrain.errors import SpectrainError
from spectrain.models import base_model_identity, load_base, resolve_base_model
from spectrain.plots import figure

GREEDY_CACHE_VERSION = 3  # 2: batched generation, confirmed by a teacher-forced pass; 3: keyed by dtype and device


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
    return replay_curve(sequence, prompt_length, propose, [k])[k]


def replay_curve(sequence: list[int], prompt_length: int, propose, ks: list[int]) -> dict[int, Tally]:
    """``replay`` for every chain length in ``ks`` at once, each exact: a chain of k is the first k tokens of the
    longest chain (true of every drafter here), so ``propose`` runs once per position any of the replays visits,
    in increasing order of positions (the replay furthest behind moves first)."""
    longest, end = max(ks), len(sequence)
    tallies, at, proposed = {k: Tally(k) for k in ks}, dict.fromkeys(ks, prompt_length), dict[int, list[int]]()
    while any(n < end for n in at.values()):
        k = min((k for k in ks if at[k] < end), key=lambda k: at[k])
        n = at[k]
        if n + 1 < end and n not in proposed:
            proposed[n] = list(propose(n))[:longest]
        accepted = 0
        for offset, token in enumerate(proposed.get(n, [])[:k] if n + 1 < end else [], start=1):
            if n + offset < end and sequence[n + offset] == token:
                accepted += 1
            else:
                break
        tallies[k].add(accepted, accepted + 1, drafted=n + 1 < end)
        at[k] = n + accepted + 1
    return tallies


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

    @torch.no_grad()
    def step_timer(self, input_ids: torch.Tensor, batch: int):
        """k -> one draft step for ``batch`` sequences: k heads over the hidden state that emitted the last token,
        at position -2 (the verification pass computes it; the heads are all the draft adds)."""
        hidden = self.model.model(input_ids=input_ids).last_hidden_state[:, -2].expand(batch, -1).contiguous()
        return lambda k: lambda: torch.stack([head(hidden).argmax(-1) for head in self.model.medusa_heads[:k]], -1)


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
    def _context(self, input_ids: torch.Tensor) -> torch.Tensor:
        model = self.model
        hidden_states = model._base_model(input_ids=input_ids, output_hidden_states=True).hidden_states
        return torch.cat([hidden_states[layer + 1] for layer in model.target_layer_ids], dim=-1)

    @torch.no_grad()
    def _draft(self, tokens: torch.Tensor, context: torch.Tensor, k: int) -> torch.Tensor:
        """k drafts per row: one forward over [the token the base emitted, mask × (block - 1)] and the context."""
        model = self.model
        block = torch.full((tokens.shape[0], self.block), model.mask_token_id, dtype=torch.long, device=tokens.device)
        block[:, 0] = tokens
        positions = torch.arange(context.shape[1] + self.block, device=tokens.device).unsqueeze(0)  # context, block
        hidden = model.dflash_module(
            noise_embedding=model._base_model_embeddings(block),
            target_hidden=context,
            position_ids=positions,
            attention_mask=None,
        )
        return model._base_model_lm_head(hidden[:, 1 : 1 + k]).argmax(-1)

    @torch.no_grad()
    def for_sequence(self, input_ids: torch.Tensor):
        context = self._context(input_ids)
        return lambda n: self._draft(input_ids[:, n], context[:, :n], self.k)[0].tolist()

    def step_timer(self, input_ids: torch.Tensor, batch: int):
        """k -> one draft step for ``batch`` sequences. modelopt's DFlash module has no KV cache: it attends to the
        whole context each step, so on long contexts this is an upper bound of what a runtime with one pays."""
        n = input_ids.shape[1] - 1
        context = self._context(input_ids)[:, :n].expand(batch, -1, -1).contiguous()
        tokens = input_ids[:, n].expand(batch)
        return lambda k: lambda: self._draft(tokens, context, k)


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
    def _context(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the draft reads at every position t: the base's (fused) hidden state at t and the token at t+1."""
        model = self.model
        outputs = model._base_model(input_ids=input_ids, output_hidden_states=True)  # hooks collect aux states
        if model.eagle_config.use_aux_hidden_state:
            context_hidden = self.module.fc(model.pop_and_gather_aux_hiddens())
        else:
            context_hidden = outputs.hidden_states[-1]
        model.eagle_module._maybe_init_rope(device=context_hidden.device)
        return context_hidden, torch.cat([input_ids[:, 1:], input_ids[:, -1:]], dim=1)

    def _cache(self):
        from transformers import DynamicCache

        return DynamicCache(config=self.module.config)

    @torch.no_grad()
    def _chain(self, context_hidden, next_ids, cache, n: int, k: int) -> list[torch.Tensor]:
        """k drafts after position n from a cache of the true context up to n - 2; the cache is left as found."""
        token, hidden, cache = self._step(context_hidden[:, n - 1 : n], next_ids[:, n - 1 : n], cache, n - 1)
        drafts = [token]
        for step in range(1, k):
            token, hidden, cache = self._step(hidden, token, cache, n - 1 + step)
            drafts.append(token)
        cache.crop(n - 1)  # forget this chain; keep the true context
        return drafts

    @torch.no_grad()
    def for_sequence(self, input_ids: torch.Tensor):
        context_hidden, next_ids = self._context(input_ids)
        state = {"cache": self._cache(), "cached": 0}

        def propose(n: int) -> list[int]:
            if state["cached"] > n - 1:  # an earlier position than the last: drop the context after it
                state["cache"].crop(n - 1)
                state["cached"] = n - 1
            if state["cached"] < n - 1:  # extend the true-context cache up to position n-2
                start = state["cached"]
                _, _, state["cache"] = self._step(
                    context_hidden[:, start : n - 1], next_ids[:, start : n - 1], state["cache"], start
                )
                state["cached"] = n - 1
            return [int(token) for token in self._chain(context_hidden, next_ids, state["cache"], n, self.k)]

        return propose

    @torch.no_grad()
    def step_timer(self, input_ids: torch.Tensor, batch: int):
        """k -> one draft step for ``batch`` sequences: the chain of k after the last token, from the context's
        cache (what a runtime does after a step that accepted nothing; each accepted token adds a position)."""
        n = input_ids.shape[1] - 1
        context_hidden, next_ids = (t.expand(batch, *t.shape[1:]).contiguous() for t in self._context(input_ids))
        _, _, cache = self._step(context_hidden[:, : n - 1], next_ids[:, : n - 1], self._cache(), 0)
        return lambda k: lambda: self._chain(context_hidden, next_ids, cache, n, k)


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


def evaluate_proposer(
    make_propose, prompts, sequences, ks: list[int], name: str = "draft", category_k: int = 0
) -> tuple[dict[int, Tally], dict[str, Tally]]:
    """Tallies for every chain length in ``ks`` (one replay each, drafts shared), and per prompt category at
    ``category_k`` (default: the longest)."""
    category_k = category_k or max(ks)
    totals, by_category = {k: Tally(k) for k in ks}, dict[str, Tally]()
    with Progress(len(prompts), f"replay: {name}", "prompt") as progress:
        for prompt, sequence in zip(prompts, sequences):
            tallies = replay_curve(sequence, len(prompt["input_ids"]), make_propose(sequence), ks)
            for k, tally in tallies.items():
                totals[k].merge(tally)
            by_category.setdefault(prompt["category"], Tally(category_k)).merge(tallies[category_k])
            progress.update()
    return totals, by_category


def draft_limit(model, mode: str, wanted: int) -> int:
    """The longest chain the draft can propose, at most ``wanted`` (EAGLE has no limit of its own)."""
    if mode == "medusa":
        return min(wanted, len(model.medusa_heads))
    if mode == "dflash":
        return min(wanted, model.dflash_block_size - 1)
    return wanted


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
    draft_checkpoint.check_base(config.checkpoint, model_path)
    # the replay's arithmetic is part of the measurement protocol (recorded as "dtype"): float32 on a CPU, the
    # base's own dtype on a GPU
    placement = devices.resolve(model_dtype=bases.facts_of(model_path).dtype)
    print(f"[evaluate] {placement.accelerator}: base in {placement.base_dtype} on {placement.device}", flush=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_path)
    prompts = load_prompts(config, tokenizer)
    base = load_base(model_path, placement).eval()
    sequences = greedy_sequences(base, prompts, config, model_path)
    model = draft_checkpoint.restore(base, config.checkpoint).eval()  # the draft onto the same loaded base
    device = placement.torch_device()
    k = config.num_draft_tokens
    proposer = draft_proposer(model, config)
    proposer.k = max_k = max(k, draft_limit(model, config.mode, config.max_k))  # the curve's chains: k = 1..max_k
    ks = list(range(1, max_k + 1))

    curve, by_category = evaluate_proposer(
        lambda s: proposer.for_sequence(torch.tensor([s], device=device)),
        prompts,
        sequences,
        ks,
        f"{config.mode}, k = 1..{max_k}",
        k,
    )
    ngram_curve, _ = evaluate_proposer(
        lambda s: ngram_proposer(s, max_k, config.ngram_max), prompts, sequences, ks, "n-gram"
    )
    candidate, ngram = curve[k], ngram_curve[k]
    results = {
        config.mode: candidate.summary(),
        "ngram": ngram.summary(),
        "no speculation": {"acceptance_length": 1.0, "acceptance_rate_per_position": [0.0] * k},
    }
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    serving = serving_recommendation(config, model, proposer, sequences, curve, ngram_curve, output_dir)
    if config.untrained_baseline:
        reset_heads(model)
        proposer.k = k
        untrained, _ = evaluate_proposer(
            lambda s: proposer.for_sequence(torch.tensor([s], device=device)),
            prompts,
            sequences,
            [k],
            f"untrained {config.mode}",
        )
        results[f"untrained {config.mode}"] = untrained[k].summary()
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
        "dtype": placement.base_dtype,
        "accelerator": placement.accelerator,
        "base_model": config.base_model,
        **base_model_identity(model_path, tokenizer),
        **serving,
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
    print(f"[evaluate] {serving_line(summary)}", flush=True)
    return summary


def serving_recommendation(config, model, proposer, sequences, curve, ngram_curve, output_dir: Path) -> dict:
    """The k to serve with: τ_k from the replay, the costs of a step timed here, the expected speed-up per k."""
    ks = sorted(curve)
    taus = [curve[k].summary()["acceptance_length"] for k in ks]
    per_draft = [curve[k].summary()["acceptance_length_per_draft"] for k in ks]
    ngram_taus = [ngram_curve[k].summary()["acceptance_length"] for k in ks]
    context = sorted(sequences, key=len)[len(sequences) // 2]  # a sequence of median length
    print(
        f"[evaluate] timing a draft step and a verification step, k = 1..{len(ks)}, "
        f"batch sizes {config.cost_batch_sizes}, {len(context)} tokens of context",
        flush=True,
    )
    proposer.k = len(ks)
    step = costs.step_costs(
        model,
        proposer,
        torch.tensor([context], device=next(model.parameters()).device),
        len(ks),
        [int(b) for b in config.cost_batch_sizes],
        config.cost_repeats,
    )
    single = step[0]
    speedup, ngram_speedup = costs.speedups(taus, single), costs.speedups(ngram_taus, single, free_draft=True)
    best, ngram_best = costs.best_k(speedup, allow_none=False), costs.best_k(ngram_speedup, allow_none=False)
    costs.plot_speedup(config.mode, step, taus, ngram_taus, output_dir / "speedup.png")
    return {
        "k_curve": [
            {
                "k": k,
                "acceptance_length": tau,
                "acceptance_length_per_draft": tau_per_draft,
                "ngram_acceptance_length": ngram_tau,
                "expected_speedup": s,
                "ngram_expected_speedup": ngram_s,
            }
            for k, tau, tau_per_draft, ngram_tau, s, ngram_s in zip(
                ks, taus, per_draft, ngram_taus, speedup, ngram_speedup
            )
        ],
        "acceptance_rate_per_position_at_max_k": curve[ks[-1]].summary()["acceptance_rate_per_position"],
        "step_costs": step,
        "cost_context_tokens": len(context),
        "draft_step_cost_ratio": single["draft_s"][0] / single["base_s"],
        "recommended_num_draft_tokens": best,
        "expected_speedup": speedup[best - 1],
        "ngram_best_num_draft_tokens": ngram_best,
        "ngram_expected_speedup": ngram_speedup[ngram_best - 1],
        "num_speculative_tokens_per_batch_size": costs.schedule(step, taus),
        "speedup_plot": str(output_dir / "speedup.png"),
    }


def serving_line(summary: dict) -> str:
    """One line: the recommended k, its expected speed-up against n-gram's best, and the schedule."""
    if "recommended_num_draft_tokens" not in summary:
        return "no serving recommendation (evaluated before spectrain measured step costs)"
    schedule = summary.get("num_speculative_tokens_per_batch_size")
    return (
        f"serve with k = {summary['recommended_num_draft_tokens']}: {summary['expected_speedup']:.2f}x expected "
        f"at batch 1 (n-gram's best: k = {summary['ngram_best_num_draft_tokens']}, "
        f"{summary['ngram_expected_speedup']:.2f}x); a draft step costs {summary['draft_step_cost_ratio']:.2f} "
        "base steps; by batch size: "
        + (", ".join(f"{a}-{b}: k = {k}" for a, b, k in schedule) if schedule else "speculation never pays")
    )
