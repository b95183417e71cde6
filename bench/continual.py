"""Benchmark: does continuing the champion pay? A warm-started chain of runs against cold starts, slice by slice.

Run i trains an EAGLE-3 draft of the embedded base on slice i of prompts — disjoint slices of the shipped training
prompts, each with --synthesize more prompts the served base writes itself (regenerate's Magpie option, seed i),
all answered by the served base — for `make run`'s budget (--minutes of training, as many epochs as fit). The warm
chain's run i continues run i - 1's draft (warm_start: what `spectrain run --warm-start champion` and the watch
do); the cold chain's run i trains a new draft on slice i alone. After every run both are evaluated on the shipped
held-out split and on the 80 vicuna questions (bench/data), against n-gram on the same prompts.

    .venvs/orchestrate/bin/python bench/continual.py                  # 5 runs, 4 minutes each
    python bench/continual.py --runs 2 --minutes 0.5 --slice 16 --synthesize 0 --eval-prompts 8 --vicuna ''

Target: after five warm-started runs EAGLE-3 τ ≥ 1.5× n-gram's on the held-out split. Writes
bench/results/continual-<date>.json and continual-<date>.png (τ by run: warm, cold, n-gram).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import results  # noqa: E402  (bench/results.py: figures as JSON under bench/results/)
from heads import add_vicuna_argument, train, use_local_envs  # noqa: E402
from spectrain.data import embedded_path, read_conversations  # noqa: E402
from spectrain.steps import run_step  # noqa: E402
from spectrain.components.evaluate import EVALUATE  # noqa: E402
from spectrain.components.regenerate import REGENERATE  # noqa: E402
from spectrain.components.serve import SERVE, STOP_SERVER  # noqa: E402

TARGET = 1.5  # warm τ over n-gram τ on the held-out split after the last run
SERVER = "bench-continual"


def write_slices(workdir: Path, runs: int, size: int) -> list[Path]:
    """``runs`` disjoint slices of the shipped training prompts, ``size`` each (refused if there are too few)."""
    conversations = list(read_conversations(str(embedded_path("train"))))
    if runs * size > len(conversations):
        raise SystemExit(
            f"--runs {runs} × --slice {size} needs {runs * size} prompts; {len(conversations)} are shipped: "
            "take smaller slices and more --synthesize"
        )
    paths = []
    for index in range(runs):
        path = workdir / f"slice-{index}.jsonl"
        chosen = conversations[index * size : (index + 1) * size]
        path.write_text("".join(json.dumps(c.to_record(), ensure_ascii=False) + "\n" for c in chosen))
        paths.append(path)
    return paths


def regenerate(endpoint: str, source: Path, index: int, args) -> Path:
    """Slice ``index`` answered by the served base, with its own synthesized prompts (resumes; reused when done)."""
    output = source.with_name(f"regenerated-{index}.jsonl")
    run_step(
        REGENERATE,
        {
            "endpoint": endpoint,
            "dataset": str(source),
            "output": str(output),
            "max_tokens": args.max_tokens,
            "concurrency": 64,
            "synthesize": args.synthesize,
            "seed": index,
        },
    )
    return output


def evaluate(checkpoint: str, dataset: str, output: Path, args) -> dict:
    outcome = run_step(
        EVALUATE,
        {
            "checkpoint": checkpoint,
            "mode": "eagle3",
            "dataset": dataset,
            "num_prompts": args.eval_prompts,
            "max_new_tokens": args.eval_max_new_tokens,
            "untrained_baseline": False,
            "cost_batch_sizes": [1],  # the k schedule is not what this measures
            "cost_repeats": 1,
            "output_dir": str(output),
        },
    )
    return {key: outcome[key] for key in ("acceptance_length", "ngram_acceptance_length", "ratio_to_ngram")}


def plot(rows: list[dict], path: Path) -> None:
    from spectrain.plots import figure

    sets = [name for name in ("heldout", "vicuna") if name in rows[0]["warm"]]
    runs = [row["run"] for row in rows]
    with figure(path) as (_, axis):
        for name, style in zip(sets, ("-", ":")):
            for chain, colour in (("warm", "tab:blue"), ("cold", "tab:orange")):
                taus = [row[chain][name]["acceptance_length"] for row in rows]
                axis.plot(runs, taus, style, color=colour, marker="o", label=f"{chain}, {name}")
            ngram = [row["warm"][name]["ngram_acceptance_length"] for row in rows]
            axis.plot(runs, ngram, style, color="black", label=f"n-gram, {name}")
        axis.set_xticks(runs)
        axis.set(xlabel="run (a fresh slice of prompts each)", ylabel="τ (tokens per base step, k = 3)")
        axis.set_title("EAGLE-3 continued from the last run (warm) or trained anew (cold)")
        axis.legend(fontsize="small")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="successive runs per chain")
    parser.add_argument("--minutes", type=float, default=4.0, help="training minutes per run (make run's: 4)")
    parser.add_argument("--slice", type=int, default=48, help="shipped training prompts per run (disjoint)")
    parser.add_argument("--synthesize", type=int, default=100, help="prompts the base writes itself, per run")
    parser.add_argument("--max-tokens", type=int, default=128, help="max new tokens per regenerated reply")
    parser.add_argument("--eval-prompts", type=int, default=0, help="held-out prompts to evaluate on (0: all 40)")
    parser.add_argument("--eval-max-new-tokens", type=int, default=64, help="greedy tokens per held-out prompt")
    add_vicuna_argument(parser)
    parser.add_argument("--workdir", default=str(ROOT / "bench" / ".work" / "continual"), help="data and drafts")
    args = parser.parse_args(argv)
    use_local_envs()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    slices = write_slices(workdir, args.runs, args.slice)

    os.environ["SPECTRAIN_STATE_DIR"] = str(workdir / "servers")
    server = run_step(SERVE, {"run_id": SERVER, "max_model_len": 2048})
    try:
        data = [regenerate(server["endpoint"], source, index, args) for index, source in enumerate(slices)]
    finally:
        run_step(STOP_SERVER, {"run_id": SERVER})

    rows, previous = [], ""
    eval_sets = {"heldout": "embedded", **({"vicuna": args.vicuna} if args.vicuna else {})}
    for index, slice_data in enumerate(data, start=1):
        row: dict = {"run": index, "data": slice_data.name}
        for chain in ("warm", "cold"):
            if chain == "cold" and index == 1:
                row["cold"] = row["warm"]  # the first run has nothing to continue: both chains start alike
                continue
            output = workdir / f"{chain}-{index}"
            trained = train(
                slice_data,
                output,
                "eagle3",
                num_epochs=100,
                max_minutes=args.minutes,
                warm_start=previous if chain == "warm" else "",
                training_arguments={"warmup_steps": 20, "logging_steps": 10},
            )
            row[chain] = {
                name: evaluate(trained["checkpoint"], spec, workdir / f"{chain}-{index}-eval-{name}", args)
                for name, spec in eval_sets.items()
            }
            row[chain]["steps"] = trained["steps"]
            if chain == "warm":
                row["warm_checkpoint"] = trained["checkpoint"]
        previous = row["warm_checkpoint"]
        rows.append(row)
        print(
            f"[continual] run {index}: held-out τ warm {row['warm']['heldout']['acceptance_length']:.3f}, "
            f"cold {row['cold']['heldout']['acceptance_length']:.3f}, "
            f"n-gram {row['warm']['heldout']['ngram_acceptance_length']:.3f}",
            flush=True,
        )
    last = rows[-1]["warm"]["heldout"]
    report = {
        "runs": args.runs,
        "minutes_per_run": args.minutes,
        "slice": args.slice,
        "synthesize": args.synthesize,
        "rows": [{k: v for k, v in row.items() if k != "warm_checkpoint"} for row in rows],
        "warm_over_ngram_after_last_run": last["ratio_to_ngram"],
        "target": TARGET,
        "met": last["ratio_to_ngram"] >= TARGET,
        "seconds": time.monotonic() - started,
    }
    command = "python bench/continual.py " + " ".join(argv if argv is not None else sys.argv[1:])
    written = results.write("continual", command.strip(), report)
    plot(rows, written.with_suffix(".png"))
    print(
        f"[continual] after {args.runs} runs: warm τ / n-gram τ on the held-out split {last['ratio_to_ngram']:.2f} "
        f"(target {TARGET}); {written} and {written.with_suffix('.png').name}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
