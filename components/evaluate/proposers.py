"""Proposers: what drafts the next k tokens from a committed prefix. The free n-gram lookup, and the trained
Medusa, DFlash and EAGLE drafts over the base's hidden states for the whole greedy sequence (one base pass: by
causality they are the hidden states any prefix would have)."""

from __future__ import annotations

import json

import torch

from spectrain.components.evaluate.config import EvaluateConfig
from spectrain.drafts import max_draft_tokens, too_many_draft_tokens
from spectrain.errors import SpectrainError


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
    problem = too_many_draft_tokens(config.mode, trained_settings(model), k)
    if problem:
        reason, setting = problem
        raise SpectrainError(
            f"num_draft_tokens = {k}, but {reason}",
            where="evaluate.num_draft_tokens",
            fix=f"use at most {draft_limit(model, config.mode, k)}, or a draft trained with {json.dumps(setting)}",
        )
    if config.mode == "medusa":
        return MedusaProposer(model, k)
    if config.mode == "dflash":
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


def trained_settings(model) -> dict[str, int]:
    """What bounds a loaded draft's chain, read from the model (as train_result.json records it)."""
    settings = {"dflash_block_size": getattr(model, "dflash_block_size", 0)}
    if hasattr(model, "medusa_heads"):
        settings["medusa_num_heads"] = len(model.medusa_heads)
    return settings


def draft_limit(model, mode: str, wanted: int) -> int:
    """The longest chain the draft can propose, at most ``wanted``."""
    limit = max_draft_tokens(mode, trained_settings(model))
    return wanted if limit is None else min(wanted, limit)


def reset_heads(model) -> None:
    """Put the draft module back to a fresh initialisation: the 'untrained head of the same mode' baseline."""
    torch.manual_seed(0)
    heads = next(getattr(model, attribute) for attribute, _, _ in DRAFT_MODULES if hasattr(model, attribute))
    for module in heads.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
