"""Evaluate step logic: exact acceptance length τ of a draft, by replaying the base model's greedy output.

Greedy speculative decoding emits exactly the base model's greedy tokens, whatever the draft
proposes. So we generate that sequence once, run the base once over it (which gives the
hidden states any prefix would have, by causality), and replay decoding: at each base step
the draft proposes k tokens from the committed prefix, the longest prefix matching the
greedy sequence is accepted, and the step emits accepted + 1 tokens. τ is tokens per step.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch
import transformers

from spectrain.components.evaluate.config import EvaluateConfig
from spectrain.components.evaluate.costs import serving_line, serving_recommendation
from spectrain.components.evaluate.greedy import greedy_sequences, load_prompts
from spectrain.components.evaluate.proposers import draft_limit, draft_proposer, ngram_proposer, reset_heads
from spectrain.components.evaluate.replay import evaluate_proposer
from spectrain import bases, devices, draft_checkpoint
from spectrain.data import dataset_fingerprint
from spectrain.drafts import check_draft_checkpoint
from spectrain.models import base_model_identity, load_base, resolve_base_model
from spectrain.plots import figure


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


def extra_sources(config: EvaluateConfig, tokenizer, base, model_path, proposer, device, k: int) -> dict:
    """τ and n-gram τ at k on each source of ``extra_dataset``, reported beside τ and not counted in it
    ({} without one, or when it holds no prompt: regenerate writes an empty file when it holds none out)."""
    path = Path(config.extra_dataset) if config.extra_dataset else None
    if path is None or (path.is_file() and not path.read_text().strip()):
        return {}
    prompts = load_prompts(dataclasses.replace(config, dataset=config.extra_dataset, num_prompts=0), tokenizer)
    sequences = greedy_sequences(base, prompts, config, model_path)
    proposer.k = k
    _, drafted = evaluate_proposer(
        lambda s: proposer.for_sequence(torch.tensor([s], device=device)), prompts, sequences, [k], "beside τ", k
    )
    _, looked_up = evaluate_proposer(
        lambda s: ngram_proposer(s, k, config.ngram_max), prompts, sequences, [k], "n-gram beside τ", k
    )
    return {
        name: {
            "acceptance_length": tally.summary()["acceptance_length"],
            "ngram_acceptance_length": looked_up["source"][name].summary()["acceptance_length"],
            "prompts": sum(1 for prompt in prompts if prompt["source"] == name),
            "in_tau": False,
        }
        for name, tally in sorted(drafted["source"].items())
    }


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

    curve, groups = evaluate_proposer(
        lambda s: proposer.for_sequence(torch.tensor([s], device=device)),
        prompts,
        sequences,
        ks,
        f"{config.mode}, k = 1..{max_k}",
        k,
    )
    ngram_curve, ngram_groups = evaluate_proposer(
        lambda s: ngram_proposer(s, max_k, config.ngram_max), prompts, sequences, ks, "n-gram", k
    )
    candidate, ngram = curve[k], ngram_curve[k]
    beside = extra_sources(config, tokenizer, base, model_path, proposer, device, k)  # before any head is reset
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
        "by_category": {name: t.summary()["acceptance_length"] for name, t in sorted(groups["category"].items())},
        # τ on each file of the eval set, next to n-gram's on the same prompts: a continued draft must not forget
        # the prompts of earlier sources while it learns the new ones
        "by_source": {
            name: {
                "acceptance_length": tally.summary()["acceptance_length"],
                "ngram_acceptance_length": ngram_groups["source"][name].summary()["acceptance_length"],
                "prompts": sum(1 for prompt in prompts if prompt["source"] == name),
            }
            for name, tally in sorted(groups["source"].items())
        }
        | beside,
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
