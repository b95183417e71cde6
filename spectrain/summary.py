"""The run summary: what each step took and what each draft reached (no kfp import: steps use it too)."""

from __future__ import annotations


def summary_table(register_results: list[dict]) -> str:
    """Markdown: a row per step with its time, then a row per draft with τ and its registry entry."""
    steps = ["serve", "regenerate", "train", "evaluate", "export"]
    lines = ["| step | mode | seconds |", "|---|---|---:|"]
    shared_done = set()
    for result in register_results:
        for step in steps:
            seconds = result["step_seconds"].get(step)
            if seconds is None:
                continue
            shared = step in ("serve", "regenerate")
            if shared and step in shared_done:
                continue
            shared_done.add(step) if shared else None
            lines.append(f"| {step} | {'all' if shared else result['mode']} | {seconds:.0f} |")
        lines.append(f"| register | {result['mode']} | {result['seconds']:.0f} |")
    lines += [
        "",
        "| draft | τ (tokens/base step) | untrained τ | ngram τ | τ / ngram τ | per-position acceptance | "
        "served k: speed-up at batch 1 (n-gram's) | registry | alias |",
        "|---|---:|---:|---:|---:|---|---|---|---|",
    ]
    for result in register_results:
        m = result["metrics"]
        per_position = " / ".join(f"{m[k]:.2f}" for k in sorted(m) if k.startswith("acceptance_rate_position_"))
        untrained = m.get("untrained_acceptance_length")
        lines.append(
            f"| {result['mode']} | {m['acceptance_length']:.3f} | "
            f"{'-' if untrained is None else f'{untrained:.3f}'} | {m['ngram_acceptance_length']:.3f} | "
            f"{m['acceptance_length'] / m['ngram_acceptance_length']:.2f}× | "
            f"{per_position} | {served(m)} | {result['registered_model']} v{result['version']}{lineage(result)} | "
            f"{result['alias'] or '-'} ({result['promotion']}) |"
        )
    return "\n".join(lines) + "\n"


def served(metrics: dict) -> str:
    """The k the draft is registered to serve with and its speed-up at batch 1 against n-gram's: measured in vLLM
    when the cross-check timed it ('k = 3: 1.08× served (n-gram k = 3: 1.27×; cost model 0.70×)'), else the torch
    cost model's expectation ('k = 2: 1.31× expected (n-gram k = 3: 1.20×)')."""
    k = metrics.get("served_num_draft_tokens")
    if k is None or "expected_speedup" not in metrics:
        return "-"
    expected = metrics.get(f"expected_speedup_k{int(k)}", metrics["expected_speedup"])
    if "served_speedup" in metrics:
        ngram = metrics.get("served_ngram_speedup")
        versus = f"n-gram {ngram:.2f}×; " if ngram is not None else ""
        if f"expected_speedup_k{int(k)}" in metrics or "recommended_num_draft_tokens" not in metrics:
            model = f"cost model {expected:.2f}×"
        else:  # vLLM's k lies beyond the k's evaluate modelled: its best, with its own k
            model = f"cost model {expected:.2f}× at k = {int(metrics['recommended_num_draft_tokens'])}"
        return f"k = {int(k)}: {metrics['served_speedup']:.2f}× served ({versus}{model})"
    ngram = f"n-gram k = {int(metrics['ngram_best_num_draft_tokens'])}: {metrics['ngram_expected_speedup']:.2f}×"
    return f"k = {int(k)}: {expected:.2f}× expected ({ngram})"


def lineage(result: dict) -> str:
    """' ← v3': the registered version a warm-started draft continued ('' for a new draft)."""
    parent = result.get("parent") or {}
    if not parent:
        return ""
    if parent.get("registered_model") == result["registered_model"]:
        return f" ← v{parent['version']}"
    return f" ← {result['warm_started_from']}"
