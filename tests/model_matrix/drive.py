"""The model-support matrix, driven: every base of configs/ at tiny size, every mode, train → evaluate → export.

Runs in the train environment, all in one process (the steps' own ``run`` functions, as `spectrain step` calls
them), and writes OUTPUT/matrix.json: per base its features and, per mode, what happened. A mode a base cannot
serve must be refused by the step's config check (a SpectrainError before any weight is loaded); anything else
that fails is recorded with its traceback, and the test that reads the file fails on it.

    .venvs/train/bin/python tests/model_matrix/drive.py OUTPUT [--bases a,b] [--modes eagle3,dflash]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny  # noqa: E402

MODES = ("eagle3", "medusa", "dflash")
# Two steps on eight conversations, two short replies to evaluate: what is under test is that each stage runs and
# hands the next one what it needs, on each base's real shapes, not what the draft learns.
TRAIN = {
    "max_steps": 2,
    "batch_size": 2,
    "max_length": 64,
    "training_arguments": {"warmup_steps": 0, "logging_steps": 1},
    "medusa_num_heads": 2,
    "draft_vocab_size": 256,
    "dflash_block_size": 4,
    "dflash_num_layers": 1,  # a 4-layer base feeds one DFlash layer (modelopt reads layers 1 .. n-3)
}
EVALUATE = {
    "num_prompts": 2,
    "max_new_tokens": 12,
    "num_draft_tokens": 2,
    "max_k": 2,
    "cost_batch_sizes": [1],
    "cost_repeats": 1,
    "untrained_baseline": False,
    "generation_batch_size": 2,
}


def one(base_dir: Path, mode: str, work: Path, data: str) -> dict:
    """train → evaluate → export of ``mode`` on the base in ``base_dir``: what each stage reported."""
    from spectrain.components.evaluate.acceptance import run as evaluate
    from spectrain.components.evaluate.config import EvaluateConfig
    from spectrain.components.export.config import ExportConfig
    from spectrain.components.export.export import run as export
    from spectrain.components.train_heads.config import TrainHeadsConfig
    from spectrain.components.train_heads.train import run as train
    from spectrain.errors import SpectrainError

    checkpoint, evaluation, draft = work / "checkpoint", work / "evaluation", work / "draft"
    started = time.monotonic()
    try:
        trained = train(
            TrainHeadsConfig(base_model=str(base_dir), data=data, output_dir=str(checkpoint), mode=mode, **TRAIN)
        )
    except SpectrainError as refused:
        return {"outcome": "refused", "stage": "train", "message": refused.what, "where": refused.where}
    evaluated = evaluate(
        EvaluateConfig(
            base_model=str(base_dir), checkpoint=str(checkpoint), mode=mode, output_dir=str(evaluation), **EVALUATE
        )
    )
    exported = export(
        ExportConfig(
            base_model=str(base_dir),
            checkpoint=str(checkpoint),
            mode=mode,
            output_dir=str(draft),
            dtype="bfloat16",
            evaluation=str(evaluation),
        )
    )
    return {
        "outcome": "ok",
        "steps": trained["steps"],
        "final_loss": trained["final_loss"],
        "artifact_bytes": trained["artifact_bytes"],
        "hidden_state_cache": bool(trained["hidden_state_cache"]),
        "acceptance_length": evaluated["acceptance_length"],
        "draft_dir": str(draft),
        "draft_files": exported["files"],
        "draft_bytes": exported["bytes"],
        "vllm_speculative_config": exported["vllm_speculative_config"],
        "seconds": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path)
    parser.add_argument("--bases", default=",".join(tiny.names()))
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args(argv)

    from spectrain import bases
    from spectrain.data import embedded_path

    args.output.mkdir(parents=True, exist_ok=True)
    data = args.output / "conversations.jsonl"
    data.write_text("".join(open(embedded_path("train")).readlines()[:8]))
    matrix: dict = {}
    for name in args.bases.split(","):
        base_dir = tiny.build(name, args.output / "bases" / name)
        real_config = args.output / "real" / name
        real_config.mkdir(parents=True, exist_ok=True)
        (real_config / "config.json").write_text(json.dumps(tiny.real(name)))
        real, small = bases.facts_of(str(real_config)), bases.facts_of(str(base_dir))
        entry = {"architecture": real.architecture, "parameters": real.parameters, "features": list(real.features)}
        entry["tiny_features"] = list(small.features)
        entry["modes"] = {}
        for mode in args.modes.split(","):
            work = args.output / "runs" / name / mode
            shutil.rmtree(work, ignore_errors=True)
            try:
                entry["modes"][mode] = one(base_dir, mode, work, str(data))
            except Exception:  # recorded: the test reading matrix.json fails on it, with this traceback
                entry["modes"][mode] = {"outcome": "failed", "traceback": traceback.format_exc()[-4000:]}
            print(f"[matrix] {name} {mode}: {entry['modes'][mode]['outcome']}", flush=True)
        matrix[name] = entry
        (args.output / "matrix.json").write_text(json.dumps(matrix, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
