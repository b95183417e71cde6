"""Benchmark: which training recipe makes a draft beat the free n-gram baseline? One row per change, same budget.

Every variant trains a draft (EAGLE-3 unless it says otherwise) for the same wall-clock budget on the
same data — the shipped train prompts answered by the served base model (built once by
bench/heads.py's serve + regenerate, cached in --workdir) — and is evaluated on the shipped held-out
split, never trained on, with n-gram prompt lookup measured on the same prompts in the same run.
`reference` is the recipe before this benchmark existed; every other row changes one thing from
the row it builds on (a chain `reference` -> `+bf16` -> `+pack` -> ... adds the changes that won),
so each row's τ against its parent's says what that change alone is worth.

    python bench/ablation.py                              # every variant, 3 minutes each
    python bench/ablation.py --variants reference,init-from-base --minutes 5

A finished variant is reused by later runs with the same settings, budget and data (delete
<workdir>/ablation/ to measure again). Figures: bench/results/ablation-<date>.json; the table in
components/evaluate/README.md is `python bench/results.py table ablation`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import heads  # noqa: E402  (bench/heads.py: the regenerated training data)
import results  # noqa: E402
from spectrain.steps import run_step  # noqa: E402
from spectrain.components.evaluate import EVALUATE  # noqa: E402
from spectrain.components.train_heads import TRAIN_HEADS  # noqa: E402

# The recipe before the ablation: a 4096-token draft vocabulary with a randomly initialised lm_head.
# Every setting a row may change is pinned here, so the reference stays what it was when defaults move.
REFERENCE = {
    "mode": "eagle3",
    "draft_vocab_size": 4096,
    "eagle_init_from_base": False,
    "lr": 1e-3,
    "max_length": 256,
    "batch_size": 4,
    "training_arguments": {"warmup_steps": 20, "logging_steps": 10},
    "precision": "fp32",
    "pack": False,
    "extra_data": "",
    "loss_on": "answers",
    "schedule_by_time": False,
}

# name: (what changes, the row it builds on, the settings it changes). A row is its parent's settings plus
# its own change, so a chain of `+...` rows adds one change at a time and each row's τ prices its change.
VARIANTS: dict[str, tuple[str, str | None, dict]] = {
    "reference": ("draft vocabulary 4096, random lm_head (modelopt's initialisation), fp32", None, {}),
    "+bf16": ("bf16 autocast (AMX / avx512_bf16 run it natively)", "reference", {"precision": "bf16"}),
    "+pack": ("whole conversations packed into each 256-token row instead of one padded", "+bf16", {"pack": True}),
    "init-from-base": (
        "lm_head = the base's rows of the draft vocabulary, final norm = the base's",
        "+pack",
        {"eagle_init_from_base": True},
    ),
    "init-from-base-frozen": (
        "as init-from-base, lm_head frozen",
        "cache-loss-all-tokens",
        {"eagle_init_from_base": True, "eagle_freeze_lm_head": True},
    ),
    "init-from-base-fp32": ("as init-from-base, in fp32 without packing", "reference", {"eagle_init_from_base": True}),
    "full-vocab": (
        "no draft vocabulary: the base's own frozen lm_head over all 49,152 tokens (final norm from the base's)",
        "reference",
        {"draft_vocab_size": 0, "eagle_init_from_base": True},
    ),
    "as-written": (
        "the shipped answers as written added to the regenerated ones (no decoding)",
        "+pack",
        {"extra_data": "embedded"},
    ),
    "loss-all-tokens": ("loss on every position, prompts included, not only the answers", "+pack", {"loss_on": "all"}),
    "feature-noise": (
        "uniform noise ±0.1 x RMS on the base features while training",
        "cache-loss-all-tokens",
        {"eagle_feature_noise": 0.1},
    ),
    "weight-decay": (
        "AdamW weight decay 0.01",
        "cache-loss-all-tokens",
        {"training_arguments": {"warmup_steps": 20, "logging_steps": 10, "weight_decay": 0.01}},
    ),
    "lr-3e-3": ("peak learning rate 3e-3 instead of 1e-3", "+pack", {"lr": 3e-3}),
    "lr-3e-4": ("peak learning rate 3e-4 instead of 1e-3", "cache-loss-all-tokens", {"lr": 3e-4}),
    "time-schedule": (
        "the cosine decay follows the wall-clock budget and ends at 0 when it is spent",
        "+pack",
        {"schedule_by_time": True},
    ),
    "+cache": (
        "the base runs once (bf16) over the data; every epoch trains from its cached states (the "
        "cache's build counts in the budget)",
        "+pack",
        {"hidden_state_cache": True},
    ),
    "cache-batch-2": (
        "2 rows per step instead of 4: twice the updates, half the tokens each",
        "+cache",
        {"batch_size": 2},
    ),
    "cache-loss-all-tokens": ("loss on every position, prompts included", "+cache", {"loss_on": "all"}),
    "cache-synthesized-240": (
        "plus 240 prompts the base wrote itself (Magpie), answered by it",
        "+cache",
        {"synthesize": 240},
    ),
    "ttt-1": ("one training-time-test step instead of three", "cache-loss-all-tokens", {"eagle_ttt_steps": 1}),
    "draft-vocab-2048": ("draft vocabulary 2048", "cache-loss-all-tokens", {"draft_vocab_size": 2048}),
    "draft-vocab-8192": ("draft vocabulary 8192", "cache-loss-all-tokens", {"draft_vocab_size": 8192}),
}


def settings_of(name: str) -> dict:
    """REFERENCE plus every change along the chain of parents down to ``name``."""
    _, parent, change = VARIANTS[name]
    return {**(settings_of(parent) if parent else REFERENCE), **change}


def data_fingerprint(path: Path) -> str:
    from spectrain.data import fingerprint

    return fingerprint(path)


def measure(name: str, settings: dict, data: Path, args, workdir: Path) -> dict:
    """Train one variant for the budget and evaluate it; reuse a stored row with the same inputs."""
    stored = workdir / "ablation" / f"{name}.json"
    key = {
        "settings": settings,
        "minutes": args.minutes,
        "data": data_fingerprint(data),
        "k": args.k,
        "eval_prompts": args.eval_prompts,
        "eval_max_new_tokens": args.eval_max_new_tokens,
    }
    if stored.exists():
        row = json.loads(stored.read_text())
        if row["key"] == key:
            print(f"[ablation] {name}: reusing {stored}", flush=True)
            return {**row, "variant": name, "change": VARIANTS[name][0], "builds_on": VARIANTS[name][1]}
    checkpoint = workdir / "ablation" / name
    train_settings = {k: v for k, v in settings.items() if k != "synthesize"}  # that one shapes the data
    trained = run_step(
        TRAIN_HEADS,
        {
            "data": str(data),
            "output_dir": str(checkpoint),
            "num_epochs": 1000,
            "max_minutes": args.minutes,
            **train_settings,
        },
    )
    evaluated = run_step(
        EVALUATE,
        {
            "checkpoint": trained["checkpoint"],
            "mode": settings["mode"],
            "num_prompts": args.eval_prompts,
            "num_draft_tokens": args.k,
            "max_new_tokens": args.eval_max_new_tokens,
            "untrained_baseline": False,
            "output_dir": str(workdir / "ablation" / f"{name}-evaluation"),
        },
    )
    row = {
        "key": key,
        "variant": name,
        "change": VARIANTS[name][0],
        "builds_on": VARIANTS[name][1],
        "steps": trained["steps"],
        "examples": trained["examples"],
        "epochs": (trained["history"][-1].get("epoch") if trained["history"] else None),
        "seconds_per_step": trained["seconds_per_step"],
        "final_loss": trained["final_loss"],
        "train_seconds": trained["seconds"],
        "conversations": trained.get("conversations", trained["examples"]),
        "head_accuracy": {
            k: v
            for k, v in (trained["history"][-2] if len(trained["history"]) > 1 else {}).items()
            if k.startswith("head_")
        },
        **{
            k: evaluated[k]
            for k in ("acceptance_length", "acceptance_rate_per_position", "ngram_acceptance_length", "num_prompts")
        },
    }
    stored.write_text(json.dumps(row, indent=2))
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    parser.add_argument("--minutes", type=float, default=3.0, help="training wall budget per variant (default 3)")
    parser.add_argument("--max-tokens", type=int, default=128, help="max new tokens per regenerated reply")
    parser.add_argument("--regenerate-limit", type=int, default=0, help="regenerate the first N conversations (0: all)")
    parser.add_argument("--eval-prompts", type=int, default=0, help="held-out prompts (0: all 40)")
    parser.add_argument("--eval-max-new-tokens", type=int, default=64, help="greedy tokens per held-out prompt")
    parser.add_argument("--k", type=int, default=3, help="draft tokens per base step")
    parser.add_argument("--workdir", default=str(ROOT / "bench" / ".work" / "heads"), help="data, checkpoints, rows")
    args = parser.parse_args(argv)
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}: choose from {', '.join(VARIANTS)}")
    heads.use_local_envs()
    workdir = Path(args.workdir)
    (workdir / "ablation").mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    data, regenerated = heads.regenerated_data(workdir, args)
    rows = []
    for name in args.variants.split(","):
        settings = settings_of(name)
        variant_data = (
            heads.regenerated_data(workdir, args, settings["synthesize"])[0] if settings.get("synthesize") else data
        )
        rows.append(measure(name, settings, variant_data, args, workdir))
        print(
            f"[ablation] {name}: τ {rows[-1]['acceptance_length']:.3f} (n-gram "
            f"{rows[-1]['ngram_acceptance_length']:.3f})",
            flush=True,
        )
    report = {
        "minutes": args.minutes,
        "k": args.k,
        "reference": REFERENCE,
        "data": {
            "conversations": regenerated.get("conversations"),
            "max_tokens": args.max_tokens,
            "tokens": regenerated.get("completion_tokens"),
        },
        "eval": {"dataset": "embedded held-out split", "max_new_tokens": args.eval_max_new_tokens},
        "rows": [{k: v for k, v in row.items() if k != "key"} for row in rows],
        "seconds": time.monotonic() - started,
    }
    path = results.write(
        "ablation", "python bench/ablation.py " + " ".join(sys.argv[1:] if argv is None else argv), report
    )
    print(f"wrote {path}\n")
    print(results.ablation_table(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
