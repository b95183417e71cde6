"""Drafts that have memorised the embedded base's greedy replies to three prompts, built once per test suite.

vLLM must accept such a draft's tokens on those prompts, which is what the cross-check (our τ against vLLM's
counters) and the watch (production τ from a real server's /metrics) rely on. Each is trained, evaluated and
exported by the real steps (spectrain.steps.run_step, in the train environment), then kept in a folder named by
the hash of everything that made it: the next test asking for the same draft in this suite, in this environment
or another, reuses it. ``tests/run_all.sh`` points ``SPECTRAIN_TEST_CACHE`` at one folder per suite run (and
removes it afterwards), so a draft never outlives the code that built it; a lone pytest run uses its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PROMPTS = ["Name three fruits.", "What is the capital of France?", "Give me a tip for sleeping well."]
REPLY_TOKENS = 40  # the greedy replies learnt by heart
# Evaluated past the 40 memorised reply tokens: vLLM's counters also count drafts accepted beyond a request's
# max_tokens (then cut from the reply), which our replay of the reply cannot see; ending where the draft no
# longer knows the text keeps that end effect small for a draft that has memorised its data.
EVAL_TOKENS = 48
TRAINING = {  # enough steps on three greedy replies that a draft which loads must be accepted
    "medusa": {"max_steps": 20, "lr": 3e-3},  # τ per draft 3.18 after 16 steps (DFlash: 1.03 after 60, 2.69 after 160)
    "eagle3": {"max_steps": 80, "lr": 3e-3, "draft_vocab_size": 1024},
    "dflash": {"max_steps": 160, "lr": 3e-3, "dflash_block_size": 4, "dflash_num_anchors": 32},
}
EVALUATION = {"max_new_tokens": EVAL_TOKENS, "max_k": 3, "cost_batch_sizes": [1], "cost_repeats": 1}
# EAGLE-3's is the draft the watch serves, by the per-batch-size schedule evaluate exports: two ranges at most
EVALUATION_FOR = {"eagle3": {**EVALUATION, "cost_batch_sizes": [1, 4], "cost_repeats": 3}}


@dataclass(frozen=True)
class Memorised:
    replies: Path  # the chat dataset it learnt: the base's greedy replies to PROMPTS
    checkpoint: Path  # the train step's output
    evaluation: dict  # the evaluate step's result on the same replies
    draft: Path  # the export step's output (float32: the check is of loading and drafting, not bf16 rounding)


def cache_root(fallback: Path) -> Path:
    return Path(os.environ.get("SPECTRAIN_TEST_CACHE") or fallback)


def memorised_draft(mode: str, fallback_cache: Path) -> Memorised:
    """The memorised ``mode`` draft, built by the real steps unless this suite already built the same one."""
    from spectrain.steps import run_step
    from spectrain.components.evaluate import EVALUATE
    from spectrain.components.export import EXPORT
    from spectrain.components.train_heads import TRAIN_HEADS

    root = cache_root(fallback_cache)
    root.mkdir(parents=True, exist_ok=True)
    replies = greedy_replies(root)
    evaluation_settings = EVALUATION_FOR.get(mode, EVALUATION)
    recipe = {"mode": mode, "replies": replies.name, "training": TRAINING[mode], "evaluation": evaluation_settings}
    folder = root / f"memorised-{mode}-{digest(recipe)}"
    with locked(root / f".{folder.name}.lock"):  # one builder; the others wait and reuse
        done = folder / "evaluation.json"
        if not done.is_file():
            shutil.rmtree(folder, ignore_errors=True)  # a build that was interrupted
            folder.mkdir()
            checkpoint = folder / "checkpoint"
            run_step(
                TRAIN_HEADS,
                {
                    "data": str(replies),
                    "output_dir": str(checkpoint),
                    "mode": mode,
                    "batch_size": 3,
                    "max_length": 96,
                    "training_arguments": {"warmup_steps": 0},
                    **TRAINING[mode],
                },
            )
            evaluation = run_step(
                EVALUATE,
                {
                    "checkpoint": str(checkpoint),
                    "mode": mode,
                    "dataset": str(replies),
                    "output_dir": str(folder / "eval"),
                    **evaluation_settings,
                },
            )
            run_step(  # served with the k measured fastest
                EXPORT,
                {
                    "checkpoint": str(checkpoint),
                    "mode": mode,
                    "output_dir": str(folder / "draft"),
                    "dtype": "float32",
                    "evaluation": str(folder / "eval"),
                },
            )
            done.write_text(json.dumps(evaluation, indent=2))  # last: its presence says the build finished
    return Memorised(replies, folder / "checkpoint", json.loads(done.read_text()), folder / "draft")


def greedy_replies(root: Path) -> Path:
    """The base's greedy replies to PROMPTS (in torch, by the train environment: no server), shared by every mode."""
    from tests.support.servers import write_greedy_replies

    path = root / f"replies-{digest({'prompts': PROMPTS, 'tokens': REPLY_TOKENS})}.jsonl"
    with locked(root / f".{path.name}.lock"):
        if not path.is_file():
            python = os.environ.get("SPECTRAIN_PYTHON_TRAIN") or sys.executable
            write_greedy_replies(path.with_suffix(".partial"), PROMPTS, REPLY_TOKENS, python).rename(path)
    return path


def digest(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
