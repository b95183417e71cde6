"""What a speculative step costs, measured on the hardware evaluate runs on, and the k that pays best.

One decoding step without speculation is one base forward over one new token per sequence. A speculative
step is one draft proposal of k tokens plus one base forward verifying k + 1 tokens per sequence, and emits
τ_k tokens on average. So the expected speed-up of k at batch size b is

    S(b, k) = τ_k · base(b) / (draft(b, k) + verify(b, k))

with τ_k measured exactly by the replay (acceptance does not depend on the batch) and the three costs timed
here with a KV cache of the context (the median length of the evaluated sequences). The best k shrinks as
the batch grows: verification gets dearer once a step is compute-bound, the draft's share stops being free.
n-gram lookup drafts on the CPU beside the model: its draft cost is taken as 0 (its best case).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from spectrain.plots import figure


@dataclass
class Timed:
    """A call to time, and what must happen before each timing, untimed (a fresh copy of a KV cache)."""

    call: Callable[[], object]
    prepare: Callable[[], object] = lambda: None


def seconds(calls: list, repeats: int) -> list[float]:
    """The fastest wall time of each call over ``repeats`` rounds, after one unmeasured warm-up each. Rounds go
    through every call in turn, so a slow spell of the machine (another process) hits all of them alike, and
    the minimum is what a call costs when nothing else runs (the usual estimator of a micro-benchmark).
    A :class:`Timed` call is prepared before each timing, outside the timed span."""
    timed = [call if isinstance(call, Timed) else Timed(call) for call in calls]
    for each in timed:
        each.prepare()
        each.call()
    best = [float("inf")] * len(timed)
    for _ in range(repeats):
        for index, each in enumerate(timed):
            each.prepare()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            started = time.perf_counter()
            each.call()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            best[index] = min(best[index], time.perf_counter() - started)
    return best


@torch.no_grad()
def verify_timer(model, input_ids: torch.Tensor, batch: int, max_tokens: int):
    """tokens -> the base's forward and lm_head over ``tokens`` new tokens for ``batch`` sequences, after the first
    len(input_ids) - ``max_tokens`` in a KV cache (one prefill for every count, copied afresh before each timing:
    a sliding-window layer's cache cannot be cut back once it has dropped the oldest tokens, Gemma's and gpt-oss's
    included). ``model`` is the draft checkpoint (an HF causal LM around the frozen base): its EAGLE-3 hooks keep
    copying the aux layers' states, as vLLM's verification does, and are emptied after each call."""
    ids = input_ids.expand(batch, -1).contiguous()
    cached = ids.shape[1] - max_tokens
    collected = getattr(model, "_aux_hidden_states", [])  # modelopt's EAGLE-3 hook list (absent otherwise)
    prefilled = model.model(input_ids=ids[:, :cached], use_cache=True).past_key_values
    collected.clear()
    state = {"cache": prefilled}

    def verify(tokens: int) -> None:
        with torch.no_grad():
            hidden = model.model(
                input_ids=ids[:, cached : cached + tokens], past_key_values=state["cache"], use_cache=True
            )
            model.lm_head(hidden.last_hidden_state)
        collected.clear()

    def fresh() -> None:
        state["cache"] = copy.deepcopy(prefilled)

    return lambda tokens: Timed(lambda: verify(tokens), fresh)


def step_costs(model, proposer, input_ids: torch.Tensor, max_k: int, batch_sizes: list[int], repeats: int) -> list:
    """Per batch size: the base's step without speculation, and per k the draft's proposal and the verification."""
    rows = []
    for batch in batch_sizes:
        verify, draft = verify_timer(model, input_ids, batch, max_k + 1), proposer.step_timer(input_ids, batch)
        ks = range(1, max_k + 1)
        timed = seconds([verify(1), *(verify(k + 1) for k in ks), *(draft(k) for k in ks)], repeats)
        rows.append(
            {"batch": batch, "base_s": timed[0], "verify_s": timed[1 : max_k + 1], "draft_s": timed[max_k + 1 :]}
        )
    return rows


def speedups(taus: list[float], row: dict, free_draft: bool = False) -> list[float]:
    """S(b, k) for k = 1.. at the batch size of ``row``; ``free_draft``: a draft that costs nothing (n-gram)."""
    return [
        tau * row["base_s"] / ((0.0 if free_draft else draft) + verify)
        for tau, draft, verify in zip(taus, row["draft_s"], row["verify_s"])
    ]


def best_k(curve: list[float], allow_none: bool) -> int:
    """The k of the highest speed-up; 0 (no speculation) when ``allow_none`` and no k beats 1×."""
    k = max(range(len(curve)), key=curve.__getitem__) + 1
    return 0 if allow_none and curve[k - 1] <= 1.0 else k


def schedule(costs: list[dict], taus: list[float]) -> list[list[int]] | None:
    """vLLM's ``num_speculative_tokens_per_batch_size``: [start, end, k] over inclusive batch-size ranges, one per
    run of measured batch sizes with the same best k (k = 0: do not speculate at that size; vLLM carries the last
    range's k to its largest batch). None when speculation pays at no measured size."""
    entries: list[list[int]] = []
    for index, row in enumerate(costs):
        k = best_k(speedups(taus, row), allow_none=True)
        end = costs[index + 1]["batch"] - 1 if index + 1 < len(costs) else row["batch"]
        if entries and entries[-1][2] == k:
            entries[-1][1] = end
        else:
            entries.append([row["batch"], end, k])
    return entries if any(k for _, _, k in entries) else None


def plot_speedup(mode: str, costs: list[dict], taus: list[float], ngram_taus: list[float], path) -> None:
    """Expected speed-up against k: the draft at every measured batch size, n-gram at batch 1."""
    ks = list(range(1, len(taus) + 1))
    with figure(path) as (_, axis):
        for row in costs:
            axis.plot(ks, speedups(taus, row), marker="o", label=f"{mode}, batch {row['batch']}")
        axis.plot(ks, speedups(ngram_taus, costs[0], free_draft=True), "k--", marker="x", label="n-gram, batch 1")
        axis.axhline(1.0, color="grey", linewidth=0.8)
        axis.set_xticks(ks)
        axis.set(xlabel="k (draft tokens per step)", ylabel="expected speed-up (×)", title="speed-up by k, measured")
        axis.legend(fontsize="small")


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
    step = step_costs(
        model,
        proposer,
        torch.tensor([context], device=next(model.parameters()).device),
        len(ks),
        [int(b) for b in config.cost_batch_sizes],
        config.cost_repeats,
    )
    single = step[0]
    speedup, ngram_speedup = speedups(taus, single), speedups(ngram_taus, single, free_draft=True)
    best, ngram_best = best_k(speedup, allow_none=False), best_k(ngram_speedup, allow_none=False)
    plot_speedup(config.mode, step, taus, ngram_taus, output_dir / "speedup.png")
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
        "num_speculative_tokens_per_batch_size": schedule(step, taus),
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
