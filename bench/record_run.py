"""Record a finished `spectrain run` (e.g. `make run`) as bench/results/make-run-<date>.json.

    python bench/record_run.py spectrain-runs/runs/<run> --command "make run" --total-seconds 864 --commit abc1234

Reads the run directory `spectrain run` wrote (arguments.json, the register results under
pipeline-root/) and the step times; --total-seconds is the wall time of the whole command
(virtualenvs included) as measured by whoever ran it. `make fresh-check` (scripts/fresh-check.sh) prints that
time for each command and keeps the run directory in its fresh clone; say how it ran in --command's parentheses,
e.g. --command "make run (fresh clone, empty home and caches)".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import results  # noqa: E402

SHARED_STEPS = ("serve", "regenerate")
DRAFT_STEPS = ("train", "evaluate", "export")
SERVING_METRICS = ("served_num_draft_tokens", "expected_speedup", "ngram_best_num_draft_tokens", "ngram_expected")


def figures_of(run_dir: Path, total_seconds: float) -> dict:
    registered = sorted(
        (
            json.loads(p.read_text())
            for p in run_dir.glob("pipeline-root/speculative-decoding-*/for-loop-*/register/result")
        ),
        key=lambda r: r["mode"],
    )
    if not registered:
        raise SystemExit(f"{run_dir}: no register results (did the run finish?)")
    steps = [{"step": step, "mode": "all", "seconds": registered[0]["step_seconds"][step]} for step in SHARED_STEPS]
    for result in registered:
        steps += [
            {"step": step, "mode": result["mode"], "seconds": result["step_seconds"][step]} for step in DRAFT_STEPS
        ]
        steps.append({"step": "register", "mode": result["mode"], "seconds": result["seconds"]})
    pipeline_seconds = sum(row["seconds"] for row in steps)
    drafts = []
    for result in registered:
        m = result["metrics"]
        drafts.append(
            {
                "mode": result["mode"],
                "acceptance_length": m["acceptance_length"],
                "ngram_acceptance_length": m["ngram_acceptance_length"],
                "untrained_acceptance_length": m.get("untrained_acceptance_length"),
                "acceptance_rate_per_position": [m[k] for k in sorted(m) if k.startswith("acceptance_rate_position_")],
                "train_steps": m.get("train_steps"),
                "alias": result["alias"],
                "promotion": result["promotion"],
                # how it is served: the k export wrote, the expected speed-up per k, n-gram's best (evaluate)
                "serving": {k: v for k, v in m.items() if k.startswith(SERVING_METRICS)},
            }
        )
    return {
        "arguments": json.loads((run_dir / "arguments.json").read_text()),
        "steps": steps,
        "drafts": drafts,
        "total_minutes": total_seconds / 60,
        "pipeline_minutes": pipeline_seconds / 60,
        "other_minutes": (total_seconds - pipeline_seconds) / 60,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--command", default="make run")
    parser.add_argument("--total-seconds", type=float, required=True)
    parser.add_argument("--commit", default=None, help="commit the run was made at (default: this checkout's)")
    parser.add_argument("--name", default="make-run")
    args = parser.parse_args(argv)
    path = results.write(args.name, args.command, figures_of(args.run_dir, args.total_seconds), at_commit=args.commit)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
