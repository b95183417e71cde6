"""Benchmark figures as JSON under bench/results/ (command, date, machine, commit) and the tables made from them.

    python bench/results.py table make-run      # the Markdown table of the newest make-run result

A table in docs/ or a README is pasted from that output, and tests/test_bench_results.py fails when it drifts from the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from spectrain import hardware
from spectrain.summary import served

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = RESULTS.parents[1]
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")  # what moves CPU speed most for these workloads


def machine(gpu: str | None = None) -> dict:
    """CPU model, core count and the instruction-set flags that decide bf16/AMX speed; the GPU's name if one ran."""
    model, flags = hardware.cpu()
    return {"cpu": model, "cores": os.cpu_count(), "flags": [f for f in FLAGS if f in flags], "gpu": gpu}


def provenance(record: dict, flags: bool = True) -> str:
    """The line every table opens with: command, date, machine, commit."""
    cpu = record["machine"]
    details = f"{cpu['cores']} cores" + (f"; {', '.join(cpu['flags'])}" if flags else "")
    return f"`{record['command']}` on {record['date']}, {cpu['cpu']} ({details}), commit {record['commit']}"


def commit(root: Path = ROOT) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def portable(value):
    """``value`` with every absolute path made machine-neutral: inside the project relative to its root, in the
    home directory as ``~/...``, elsewhere as ``.../`` and its last two parts."""
    if isinstance(value, dict):
        return {key: portable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [portable(item) for item in value]
    if not isinstance(value, str) or not value.startswith("/"):
        return value
    path = Path(value)
    for base, shown in ((ROOT, None), (Path.home(), "~")):
        if path.is_relative_to(base):
            relative = path.relative_to(base).as_posix()
            return f"{shown}/{relative}" if shown else relative
    return "/".join(("...", *path.parts[-2:]))


def write(name: str, command: str, figures: dict, *, at_commit: str | None = None, gpu: str | None = None) -> Path:
    """bench/results/<name>-<date>.json with what produced it and where."""
    RESULTS.mkdir(exist_ok=True)
    date = time.strftime("%Y-%m-%d")
    path = RESULTS / f"{name}-{date}.json"
    record = {
        "name": name,
        "command": command,
        "date": date,
        "machine": machine(gpu),
        "commit": at_commit or commit(),
        "figures": portable(figures),
    }
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return path


def newest(name: str) -> dict:
    paths = sorted(RESULTS.glob(f"{name}-[0-9]*.json"))  # make-test-2026-... not make-test-fast-...
    if not paths:
        raise SystemExit(f"no bench/results/{name}-*.json yet")
    return json.loads(paths[-1].read_text())


def make_run_table(record: dict) -> str:
    """docs/results.md's `make run` table: the pipeline's steps with their times, then each draft's τ."""
    figures = record["figures"]
    lines = [
        f"{provenance(record)}: "
        f"{figures['total_minutes']:.1f} minutes in all: the pipeline's steps {figures['pipeline_minutes']:.1f}, "
        f"the rest (creating the virtualenvs, kfp.local) {figures['other_minutes']:.1f}.",
        "",
        "| step | mode | seconds |",
        "|---|---|---:|",
    ]
    for row in figures["steps"]:
        lines.append(f"| {row['step']} | {row['mode']} | {row['seconds']:.0f} |")
    lines += [
        "",
        "| draft | τ | n-gram τ | τ / n-gram | per-position acceptance | untrained τ | "
        "served k: speed-up at batch 1 (n-gram's) | registry alias |",
        "|---|---:|---:|---:|---|---:|---|---|",
    ]
    for draft in figures["drafts"]:
        lines.append(
            f"| {draft['mode']} | {draft['acceptance_length']:.3f} | {draft['ngram_acceptance_length']:.3f} | "
            f"{draft['acceptance_length'] / draft['ngram_acceptance_length']:.2f}× | "
            f"{' / '.join(f'{r:.2f}' for r in draft['acceptance_rate_per_position'])} | "
            f"{draft['untrained_acceptance_length']:.3f} | {served(draft.get('serving', {}))} | {draft['alias']} |"
        )
    return "\n".join(lines) + "\n"


def make_test_table(record: dict) -> str:
    """docs/results.md's `make test` line: total time and each pytest run's (environment, or part of one)."""
    figures = record["figures"]
    parts = ", ".join(
        f"{env} env {row['tests']} tests in {row['seconds'] / 60:.1f} min"
        for env, row in figures["environments"].items()
    )
    total = f"{provenance(record, flags=False)}: {figures['total_seconds'] / 60:.1f} minutes"
    if any(":" in env for env in figures["environments"]):  # tests/run_all.sh's two lanes
        return f"{total}; two lanes at once, whose pytest runs overlap: {parts}.\n"
    return f"{total} ({parts}).\n"


def ablation_table(record: dict) -> str:
    """components/evaluate/README.md's ablation: one row per training-recipe change at the same budget."""
    figures = record["figures"]
    ngram = {round(row["ngram_acceptance_length"], 6) for row in figures["rows"]}
    lines = [
        f"{provenance(record)}: {figures['minutes']:g} "
        f"minutes of training per row, k = {figures['k']}, {figures['rows'][0]['num_prompts']} held-out prompts x "
        f"{figures['eval']['max_new_tokens']} greedy tokens; n-gram τ on the same prompts "
        f"{' / '.join(f'{n:.3f}' for n in sorted(ngram))}.",
        "",
        "| variant | change | from | steps | epochs | s/step | τ | τ / n-gram | per-position acceptance |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in figures["rows"]:
        lines.append(
            f"| {row['variant']} | {row['change']} | {row['builds_on'] or ''} | {row['steps']} | "
            f"{row['epochs'] or 0:.1f} | "
            f"{row['seconds_per_step']:.2f} | {row['acceptance_length']:.3f} | "
            f"{row['acceptance_length'] / row['ngram_acceptance_length']:.2f}× | "
            f"{' / '.join(f'{r:.2f}' for r in row['acceptance_rate_per_position'])} |"
        )
    return "\n".join(lines) + "\n"


def heads_table(record: dict) -> str:
    """components/evaluate/README.md's heads table: each mode at a 30-minute budget, on the held-out split and the vicuna questions."""
    figures = record["figures"]
    data = figures["regenerate"]
    lines = [
        f"{provenance(record)}: training data "
        f"{data.get('done', 0) + data.get('resumed', 0)} conversations answered by the served base "
        f"({data.get('resumed', 0)} of them in an earlier run; {data.get('output_tokens', 0):,} reply tokens in "
        f"this one), k = 3, greedy, prompts never trained on.",
        "",
        "| mode | prompts | steps | epochs | minutes: data + cache and training | τ | n-gram τ | τ / n-gram "
        "| per-position acceptance | untrained τ | target |",
        "|---|---|---:|---:|---|---:|---:|---:|---|---:|---|",
    ]
    for mode, row in figures["modes"].items():
        spent, target = row["budget_minutes"], row.get("target")
        for name, measured in (("held-out split", row), ("vicuna questions", row.get("vicuna"))):
            if not measured:
                continue
            tau = measured["acceptance_length"]
            untrained = measured.get("untrained_acceptance_length")
            lines.append(
                f"| {mode} | {name} ({measured['num_prompts']}) | {row['train']['steps']} | {row['epochs'] or 0:.1f} | "
                f"{spent['data']:.1f} + {spent['train_step']:.1f} = {spent['total']:.1f} of {spent['limit']:g} | "
                f"{tau:.3f} | {measured['ngram_acceptance_length']:.3f} | "
                f"{tau / measured['ngram_acceptance_length']:.2f}× | "
                f"{' / '.join(f'{r:.2f}' for r in measured['acceptance_rate_per_position'])} | "
                f"{f'{untrained:.3f}' if untrained else ''} | "
                f"{f'≥ {target}: ' + ('met' if tau >= target else 'missed') if target else ''} |"
            )
    return "\n".join(lines) + "\n"


def regenerate_table(record: dict) -> str:
    """components/regenerate/README.md's speed table: output tokens/s per server setting and concurrency."""
    figures = record["figures"]
    lines = [
        f"{provenance(record)}: the regenerate step on "
        f"{figures['conversations']} shipped conversations, {figures['max_tokens']} tokens at most per reply.",
        "",
        "| weights dtype | graphs | server start-up s | concurrency | output tokens | seconds | tokens/s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in figures["rows"]:
        lines.append(
            f"| {row['dtype']} | {'eager' if row['eager'] else 'compiled'} | {row['startup_seconds']:.0f} | "
            f"{row['concurrency']} | {row['output_tokens']} | {row['seconds']:.1f} | "
            f"{row['output_tokens_per_s']:.0f} |"
        )
    if figures.get("synthesize"):
        synth = figures["synthesize"]
        lines += [
            "",
            f"Synthesis (`synthesize {synth['asked']}`, first setting): {synth['done']} prompts written and "
            f"answered, {synth['discarded']} discarded, {synth['output_tokens']} output tokens in "
            f"{synth['seconds']:.0f} s.",
        ]
    return "\n".join(lines) + "\n"


def model_matrix_table(record: dict) -> str:
    """docs/bases.md's model-support matrix: each base, what sets it apart, and per mode whether it trains, evaluates and
    exports at tiny size with vLLM loading every weight of the draft, or why the mode is refused."""
    bases = record["figures"]["bases"]
    modes = ("eagle3", "medusa", "dflash")
    lines = [
        f"{provenance(record, flags=False)}: {len(bases)} bases at tiny size (random weights, their real configs), "
        f"{record['figures']['seconds'] / 60:.1f} minutes. ✓: trains, evaluates and exports; vLLM 0.32's loader takes "
        "every weight of the exported draft.",
        "",
        "| base | parameters | what sets it apart | " + " | ".join(modes) + " |",
        "|---|---:|---|" + "---|" * len(modes),
    ]
    for name, entry in sorted(bases.items()):
        cells = []
        for mode in modes:
            outcome = entry["modes"].get(mode, {})
            if outcome.get("outcome") == "ok":
                cells.append("✓" if outcome["vllm_loads_every_weight"] else "✓ trains; vLLM loads it incompletely")
            elif outcome.get("outcome") == "refused":
                cells.append("refused¹")
            else:
                cells.append("fails")
        features = ", ".join(f for f in entry["features"] if not f.startswith("vocabulary"))
        vocabulary = next((f for f in entry["features"] if f.startswith("vocabulary")), "")
        lines.append(
            f"| {name} ({entry['architecture']}) | {entry['parameters'] / 1e9:.1f}B | "
            f"{vocabulary}{'; ' + features if features else ''} | " + " | ".join(cells) + " |"
        )
    if any(o.get("outcome") == "refused" for e in bases.values() for o in e["modes"].values()):
        lines += [
            "",
            "¹ vLLM 0.32 serves EAGLE-3 and DFlash drafts only for a target class that hands out the hidden states of "
            "intermediate layers (SupportsEagle3); its Gemma 2 and Gemma 3 classes do not. The train step refuses "
            "such a mode when it checks the config, before loading a weight, and names Medusa as what does serve.",
        ]
    return "\n".join(lines) + "\n"


def continual_table(record: dict) -> str:
    """docs/results.md's continual table: τ after each run of the warm-started chain and of cold starts."""
    figures = record["figures"]
    sets = [name for name in ("heldout", "vicuna") if name in figures["rows"][0]["warm"]]
    titles = {"heldout": "held-out split", "vicuna": "vicuna questions"}
    lines = [
        f"{provenance(record)}: {figures['runs']} runs of {figures['minutes_per_run']:g} minutes of EAGLE-3 training "
        f"each, run i on slice i ({figures['slice']} shipped prompts + {figures['synthesize']} the base wrote), "
        f"k = 3, greedy; {figures['seconds'] / 60:.0f} minutes in all.",
        "",
        "| run | steps warm / cold | "
        + " | ".join(f"{titles[n]}: τ warm | τ cold | n-gram τ | warm / n-gram" for n in sets)
        + " |",
        "|---:|---|" + "---:|---:|---:|---:|" * len(sets),
    ]
    for row in figures["rows"]:
        cells = [f"{row['run']}", f"{row['warm']['steps']} / {row['cold']['steps']}"]
        for name in sets:
            warm, cold = row["warm"][name], row["cold"][name]
            cells += [
                f"{warm['acceptance_length']:.3f}",
                f"{cold['acceptance_length']:.3f}",
                f"{warm['ngram_acceptance_length']:.3f}",
                f"{warm['ratio_to_ngram']:.2f}×",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"After {figures['runs']} runs the warm-started draft's τ is {figures['warm_over_ngram_after_last_run']:.2f}× "
        f"n-gram's on the held-out split (target ≥ {figures['target']}: {'met' if figures['met'] else 'missed'}).",
    ]
    return "\n".join(lines) + "\n"


TABLES = {
    "make-run": make_run_table,
    "make-test": make_test_table,
    "make-test-fast": make_test_table,
    "ablation": ablation_table,
    "heads": heads_table,
    "heads-dflash": heads_table,
    "regenerate-concurrency": regenerate_table,
    "model-matrix": model_matrix_table,
    "continual": continual_table,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    table = commands.add_parser("table", help="print the Markdown table of the newest result of a benchmark")
    table.add_argument("name", choices=sorted(TABLES))
    args = parser.parse_args(argv)
    sys.stdout.write(TABLES[args.name](newest(args.name)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
