"""The model-support matrix as a result: bench/results/model-matrix-<date>.json, from which docs/bases.md's table is made.

    python bench/model_matrix.py            # ~5 minutes on 2 cores: train, evaluate, export every base × mode,
                                            # then vLLM's loader on every draft (the test's own run)

The same run as tests/model_matrix/test_model_matrix.py (drive.py in the train environment, vllm_load.py in the
serve one), kept as a figure of what this commit supports; `python bench/results.py table model-matrix` prints the
table docs/bases.md shows.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MATRIX = ROOT / "tests" / "model_matrix"


def figures(matrix: dict) -> dict:
    """What the table needs, without the run's paths: per base its size, features and per mode the verdict."""
    out = {}
    for name, entry in matrix.items():
        modes = {}
        for mode, outcome in entry["modes"].items():
            if outcome["outcome"] == "ok":
                vllm = outcome.get("vllm", {})
                loads = not vllm.get("error") and not vllm.get("not_loaded") and vllm.get("sums_agree")
                modes[mode] = {
                    "outcome": "ok",
                    "vllm_loads_every_weight": bool(loads),
                    "vllm_class": vllm.get("class"),
                    "seconds": outcome["seconds"],
                }
            else:
                modes[mode] = {k: outcome.get(k) for k in ("outcome", "stage", "message")}
        out[name] = {
            "architecture": entry["architecture"],
            "parameters": entry["parameters"],
            "features": entry["features"],
            "modes": modes,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python-train", default=str(ROOT / ".venvs" / "train" / "bin" / "python"))
    parser.add_argument("--python-serve", default=str(ROOT / ".venvs" / "serve" / "bin" / "python"))
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="spectrain-matrix-") as tmp:
        subprocess.run([args.python_train, str(MATRIX / "drive.py"), tmp], check=True)
        subprocess.run([args.python_serve, str(MATRIX / "vllm_load.py"), tmp], check=True)
        matrix = json.loads((Path(tmp) / "matrix.json").read_text())
    record = figures(matrix)
    path = results.write(
        "model-matrix", "python bench/model_matrix.py", {"bases": record, "seconds": time.monotonic() - started}
    )
    print(f"wrote {path.relative_to(ROOT)}")
    sys.stdout.write(results.model_matrix_table(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
