"""Benchmark: how much acceptance length τ do EAGLE-3 and Medusa heads buy for a fixed training budget?

On the embedded base model (SmolLM2-135M-Instruct), with training data the base model itself
regenerates from the shipped prompts (serve + regenerate steps, cached in --workdir), each mode
trains for --minutes of wall time from the hidden-state cache and is evaluated on the shipped
held-out split against the baselines measured in the same run: no speculation (τ = 1), the
untrained head, and n-gram prompt lookup. Then one EAGLE-3 epoch is timed online and from the
cache (same steps, same data, this process) and the ratio printed.

    make bench-heads                       # = .venvs/orchestrate/bin/python bench/heads.py
    python bench/heads.py --minutes 5 --max-tokens 128

Targets: EAGLE-3 τ ≥ 1.9 and Medusa τ ≥ 1.5 at k = 3 with 30 minutes per mode, on the
held-out split and on --vicuna (EAGLE's and MT-Bench's 80 vicuna questions, user turns only).
The table is printed and written to <workdir>/heads.json and bench/results/heads-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import results  # noqa: E402  (bench/results.py: figures as JSON under bench/results/)
from spectrain.steps import ENVIRONMENTS, run_step  # noqa: E402
from spectrain.components.evaluate import EVALUATE  # noqa: E402
from spectrain.components.regenerate import REGENERATE  # noqa: E402
from spectrain.components.serve import SERVE, STOP_SERVER  # noqa: E402
from spectrain.components.train_heads import TRAIN_HEADS  # noqa: E402

TARGETS = {"eagle3": 1.9, "medusa": 1.5}
MODE_SETTINGS = {"eagle3": {"draft_vocab_size": 4096}, "medusa": {"medusa_num_heads": 3}, "dflash": {}}


def mode_and_settings(spec: str) -> tuple[str, dict]:
    """'eagle3' -> ('eagle3', its settings); 'dflash@8' -> ('dflash', block size 8): one row per block size."""
    mode, _, block = spec.partition("@")
    if mode not in MODE_SETTINGS or (block and (mode != "dflash" or not block.isdigit())):
        raise SystemExit(f"--modes: {spec!r} is not one of {', '.join(MODE_SETTINGS)} (DFlash: dflash@BLOCK_SIZE)")
    return mode, {**MODE_SETTINGS[mode], **({"dflash_block_size": int(block)} if block else {})}


def use_local_envs() -> None:
    """Run each step in its .venvs/<env> when present (as `make` does), else in this interpreter."""
    for env in ENVIRONMENTS:
        python = ROOT / ".venvs" / env / "bin" / "python"
        if python.exists():
            os.environ.setdefault(f"SPECTRAIN_PYTHON_{env.upper()}", str(python))


def add_vicuna_argument(parser: argparse.ArgumentParser) -> None:
    """--vicuna: EAGLE's and MT-Bench's 80 vicuna questions (shipped in bench/data), a second prompt set."""
    parser.add_argument(
        "--vicuna",
        type=vicuna_file,
        default=str(ROOT / "bench" / "data" / "vicuna_bench_question.jsonl"),
        help="a second prompt set evaluated like the held-out split ('' to skip)",
    )


def vicuna_file(value: str) -> str:
    if value and not Path(value).is_file():
        raise argparse.ArgumentTypeError(f"{value}: no such file (bench/data/ ships the 80 questions; '' skips them)")
    return value


def regenerated_data(workdir: Path, args, synthesize: int = 0) -> tuple[Path, dict]:
    """The shipped train prompts, answered by the served base model (resumes; reused when complete).

    ``synthesize``: plus that many prompts the base wrote itself (regenerate's Magpie option), answered
    the same way; the shipped prompts' answers are taken from the plain file when it exists.
    """
    name = f"regenerated-{args.max_tokens}" + (f"-synthesized-{synthesize}" if synthesize else "")
    output, done = workdir / f"{name}.jsonl", workdir / f"{name}.json"
    if done.exists():
        return output, json.loads(done.read_text())
    plain = workdir / f"regenerated-{args.max_tokens}.jsonl"
    earlier = 0.0  # seconds already spent on the prompts this file starts from
    if synthesize and plain.exists() and not output.exists():
        shutil.copyfile(plain, output)  # regenerate resumes by conversation id: only the new prompts are asked
        plain_done = plain.with_suffix(".json")
        if plain_done.exists():
            plain_result = json.loads(plain_done.read_text())
            earlier = plain_result.get("data_seconds", plain_result.get("seconds", 0.0))
    started = time.monotonic()
    os.environ["SPECTRAIN_STATE_DIR"] = str(workdir / "servers")
    server = run_step(SERVE, {"run_id": "bench-heads", "max_model_len": 2048})
    try:
        result = run_step(
            REGENERATE,
            {
                "endpoint": server["endpoint"],
                "output": str(output),
                "max_tokens": args.max_tokens,
                "concurrency": 64,
                "limit": args.regenerate_limit,
                "synthesize": synthesize,
            },
        )
    finally:
        run_step(STOP_SERVER, {"run_id": "bench-heads"})
    # Everything the data cost, serving start-up included: it counts against each mode's budget.
    result["data_seconds"] = earlier + time.monotonic() - started
    done.write_text(json.dumps(result))
    return output, result


def train(data: Path, output: Path, spec: str, **settings) -> dict:
    mode, mode_settings = mode_and_settings(spec)
    return run_step(
        TRAIN_HEADS,
        {
            "data": str(data),
            "output_dir": str(output),
            "mode": mode,
            "max_length": 256,
            "batch_size": 4,
            **mode_settings,
            **settings,
        },
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=20.0, help="training wall budget per mode (default 20)")
    parser.add_argument(
        "--modes", default="eagle3,medusa", help="comma-separated draft modes; dflash@8: DFlash with blocks of 8"
    )
    parser.add_argument("--max-tokens", type=int, default=128, help="max new tokens per regenerated reply")
    parser.add_argument(
        "--synthesize",
        type=int,
        default=0,
        help="plus this many prompts the base writes itself (Magpie), answered the same way",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=30.0,
        help="minutes per mode that data, cache and training together must fit (reported, not enforced)",
    )
    parser.add_argument("--regenerate-limit", type=int, default=0, help="regenerate the first N conversations (0: all)")
    parser.add_argument("--eval-prompts", type=int, default=0, help="held-out prompts to evaluate on (0: all)")
    parser.add_argument("--eval-max-new-tokens", type=int, default=64, help="greedy tokens per held-out prompt")
    parser.add_argument("--k", type=int, default=3, help="draft tokens per base step")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument(
        "--epoch-steps", type=int, default=8, help="steps timed for the online-vs-cache epoch figure (0: skip it)"
    )
    parser.add_argument(
        "--name",
        default="heads",
        help="results file bench/results/NAME-DATE.json (another name keeps a side study from replacing the table)",
    )
    add_vicuna_argument(parser)
    parser.add_argument("--workdir", default=str(ROOT / "bench" / ".work" / "heads"), help="data, checkpoints, results")
    args = parser.parse_args(argv)
    use_local_envs()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    data, regenerated = regenerated_data(workdir, args, args.synthesize)
    data_minutes = regenerated.get("data_seconds", regenerated.get("seconds", 0.0)) / 60  # older files: no start-up
    rows = {}
    specs = args.modes.split(",")
    for spec in specs:
        mode_and_settings(spec)  # every --modes entry checked before any work
    for spec in specs:
        mode = mode_and_settings(spec)[0]
        trained = train(
            data,
            workdir / f"{spec}-{args.minutes:g}min",
            spec,
            num_epochs=1000,
            lr=args.lr,
            max_minutes=args.minutes,
            hidden_state_cache=True,
            training_arguments={"warmup_steps": 20, "logging_steps": 10},
        )
        evaluated = run_step(
            EVALUATE,
            {
                "checkpoint": trained["checkpoint"],
                "mode": mode,
                "num_prompts": args.eval_prompts,
                "num_draft_tokens": args.k,
                "max_new_tokens": args.eval_max_new_tokens,
                "output_dir": str(workdir / f"{spec}-evaluation"),
            },
        )
        rows[spec] = {
            "train": {
                k: trained[k] for k in ("steps", "examples", "final_loss", "seconds_per_step", "seconds", "precision")
            },
            "epochs": trained["history"][-1].get("epoch"),
            **evaluated,
            "target": TARGETS.get(mode),
            # data (shared by the modes, counted in full for each) + cache + training
            "budget_minutes": {
                "data": data_minutes,
                "train_step": trained["seconds"] / 60,
                "total": data_minutes + trained["seconds"] / 60,
                "limit": args.budget,
            },
        }
        if args.vicuna:
            rows[spec]["vicuna"] = run_step(
                EVALUATE,
                {
                    "checkpoint": trained["checkpoint"],
                    "mode": mode,
                    "dataset": args.vicuna,
                    "num_draft_tokens": args.k,
                    "max_new_tokens": args.eval_max_new_tokens,
                    "untrained_baseline": False,
                    "output_dir": str(workdir / f"{spec}-evaluation-vicuna"),
                },
            )

    # One epoch online vs from the cache: the same EAGLE-3 steps on the same data, per-step time.
    timing = {}
    for cached in (False, True) if args.epoch_steps > 0 else ():
        result = train(
            data,
            workdir / f"epoch-{'cache' if cached else 'online'}",
            "eagle3",
            max_steps=args.epoch_steps,
            hidden_state_cache=cached,
            training_arguments={"warmup_steps": 0, "logging_steps": 10},
        )
        steps_per_epoch = -(-result["examples"] // 4)
        timing["cache" if cached else "online"] = {
            "seconds_per_step": result["seconds_per_step"],
            "epoch_seconds": result["seconds_per_step"] * steps_per_epoch,
            "cache": result["hidden_state_cache"],
        }

    report = {
        "date": time.strftime("%Y-%m-%d"),
        "argv": sys.argv[1:],
        "regenerate": regenerated,
        "modes": rows,
        "epoch": timing,
        "seconds": time.monotonic() - started,
    }
    (workdir / "heads.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {results.write(args.name, 'python bench/heads.py ' + ' '.join(sys.argv[1:]), report)}")
    print_table(report, args)
    return 0


def print_table(report: dict, args) -> None:
    print(f"\nacceptance length τ, k = {args.k}, {args.minutes:g} min training per mode (held-out split)")
    print(
        f"{'mode':8} {'steps':>6} {'epochs':>7} {'τ':>6} {'untrained':>10} {'ngram':>6} {'τ/ngram':>8} "
        f"{'target':>7}  per-position acceptance"
    )
    for mode, row in report["modes"].items():
        tau, ngram = row["acceptance_length"], row["ngram_acceptance_length"]
        target = TARGETS.get(mode)
        met = "met" if target and tau >= target else "missed"
        print(
            f"{mode:8} {row['train']['steps']:>6} {row['epochs'] or 0:>7.1f} {tau:>6.3f} "
            f"{row['untrained_acceptance_length'] or 1:>10.3f} {ngram:>6.3f} {tau / ngram:>8.2f} "
            f"{(f'{target} {met}' if target else ''):>7}  "
            + " ".join(f"{r:.2f}" for r in row["acceptance_rate_per_position"])
        )
        if "budget_minutes" in row:
            spent = row["budget_minutes"]
            print(
                f"{'':8} time: data {spent['data']:.1f} + cache and training {spent['train_step']:.1f} = "
                f"{spent['total']:.1f} min (budget {spent['limit']:g})"
            )
        if "vicuna" in row:
            vicuna = row["vicuna"]
            print(
                f"{'':8} {'':>6} {'':>7} {vicuna['acceptance_length']:>6.3f} {'':>10} "
                f"{vicuna['ngram_acceptance_length']:>6.3f} "
                f"{vicuna['acceptance_length'] / vicuna['ngram_acceptance_length']:>8.2f}   (vicuna questions)"
            )
    if report["epoch"]:
        online, cache = report["epoch"]["online"], report["epoch"]["cache"]
        info = cache["cache"] or {}
        print(
            f"\nEAGLE-3 epoch: online {online['epoch_seconds']:.0f} s, from cache {cache['epoch_seconds']:.0f} s "
            f"-> {online['seconds_per_step'] / cache['seconds_per_step']:.2f}x faster (target >= 3x); cache "
            f"{info.get('bytes_per_token', 0):.0f} bytes/token, {info.get('bytes', 0) / 2**20:.0f} MiB for "
            f"{info.get('tokens', 0)} tokens"
        )
    print(f"total {report['seconds'] / 60:.1f} min")


if __name__ == "__main__":
    sys.exit(main())
