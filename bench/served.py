"""Benchmark: what a trained draft is worth as vLLM serves it — decode speed against the base alone and n-gram.

Runs the vLLM cross-check step with its served speed (components/evaluate/served.py) on every draft a
`spectrain run` exported: a vLLM server per setting (the base alone, the draft at k = 1..3, n-gram at k = 1..3;
Medusa at its number of heads), each timed with 1 and 4 requests in flight on the same held-out chats. Beside
each served speed-up it puts the torch cost model's expectation for the same k (the run's evaluation.json), to
show how far the model of costs is from the server.

    .venvs/orchestrate/bin/python bench/served.py RUN_DIR     # a `make run` output: spectrain-runs/runs/<id>

Writes bench/results/served-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import results  # noqa: E402  (bench/results.py: figures as JSON under bench/results/)
from heads import use_local_envs  # noqa: E402
from spectrain.steps import run_step  # noqa: E402
from spectrain.components.evaluate import VLLM_CROSSCHECK  # noqa: E402
from spectrain.drafts import SERVING_CONFIG  # noqa: E402


def drafts(run_dir: Path) -> list[tuple[str, Path, dict]]:
    """(mode, exported draft folder, the run's evaluation of it) for every draft the run exported."""
    found = []
    evaluations = [json.loads(p.read_text()) for p in run_dir.rglob("evaluation.json")]
    for config in sorted(run_dir.rglob(SERVING_CONFIG)):
        mode = json.loads(config.read_text())["method"]
        evaluation = next((e for e in evaluations if e.get("mode") == mode), {})
        found.append((mode, config.parent, evaluation))
    if not found:
        raise SystemExit(f"no exported draft ({SERVING_CONFIG}) under {run_dir}: pass a finished `make run` output")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a `spectrain run` output (spectrain-runs/runs/<id>)")
    parser.add_argument("--num-prompts", type=int, default=16, help="held-out chats per setting and concurrency")
    parser.add_argument("--rounds", type=int, default=1, help="timings per setting and concurrency (median kept)")
    args = parser.parse_args(argv)
    use_local_envs()
    report: dict = {"prompts": args.num_prompts, "rounds": args.rounds, "drafts": {}}
    with tempfile.TemporaryDirectory() as scratch:
        for mode, draft, evaluation in drafts(args.run_dir):
            exported = json.loads((draft / SERVING_CONFIG).read_text())
            k = exported["num_speculative_tokens"] if mode == "medusa" else 3
            outcome = run_step(
                VLLM_CROSSCHECK,
                {
                    "draft_dir": str(draft),
                    "mode": mode,
                    "num_draft_tokens": k,
                    "speed_num_prompts": args.num_prompts,
                    "speed_rounds": args.rounds,
                    "output": str(Path(scratch) / f"{mode}.json"),
                },
                label=mode,
            )
            served = outcome["served"]
            expected = {p["k"]: p["expected_speedup"] for p in evaluation.get("k_curve", [])}
            rows = [
                {**row, "cost_model_speedup": expected.get(row["k"]) if row["method"] == mode else None}
                for row in served.pop("rows")
            ]
            report["drafts"][mode] = {
                "vllm_acceptance_length": outcome["acceptance_length"],
                "exported_by_cost_model": exported,
                "served": served,
                "rows": rows,
            }
    print(f"\nserved speed, {args.num_prompts} held-out chats, output tokens/s (speed-up over the base alone):")
    for mode, measured in report["drafts"].items():
        for row in measured["rows"]:
            model = f"; cost model {row['cost_model_speedup']:.2f}x" if row["cost_model_speedup"] else ""
            print(
                f"  {mode:7} {row['setting']:12} concurrency {row['concurrency']}: "
                f"{row['output_tokens_per_s']:6.1f} ({row['speedup']:.2f}x{model})"
            )
        chosen = measured["served"]
        print(
            f"  {mode:7} served with {chosen['num_speculative_tokens_per_batch_size'] or 'no speculation'}; "
            f"against n-gram at batch 1: {chosen.get('versus_ngram', '-')} (noise ±{chosen.get('noise', 0):.0%})"
        )
    command = "python bench/served.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"written: {results.write('served', command.strip(), report)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
