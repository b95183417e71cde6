"""`spectrain run` and `spectrain compile`: the one pipeline function, executed locally or compiled for KFP."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

from spectrain.errors import SpectrainError
from spectrain.steps import ENVIRONMENTS

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_YAML = ROOT / "pipelines" / "speculative_decoding.yaml"

# What `spectrain run` changes from the pipeline's own defaults so that the whole DAG fits a laptop
# (2 CPU cores: ~12 minutes). `--preset full` runs the pipeline defaults instead.
LAPTOP_PRESET = {
    "regenerate_limit": 80,
    "regenerate_max_tokens": 96,
    "num_epochs": 2.0,
    "train_max_minutes": 2.0,
    "eval_num_prompts": 20,
    "eval_max_new_tokens": 48,
}

RUN_DESCRIPTION = f"""Run the whole pipeline on this machine with kfp.local: each step in the virtualenv of its
image (.venvs/serve, .venvs/train, .venvs/orchestrate; `make envs` creates them), a real vLLM
server, real modelopt training, an MLflow sqlite store under --workdir.

With no flags it trains EAGLE-3 and Medusa heads for the embedded SmolLM2-135M-Instruct on the
shipped prompt set, using the laptop preset {json.dumps(LAPTOP_PRESET)}.
Every pipeline parameter is a flag below; a flag you give wins over the preset.

examples:
  spectrain run
  spectrain run --modes eagle3 --train-max-steps 200 --regenerate-limit 0
  spectrain run --base-model /models/Llama-3.2-1B-Instruct --dataset Daring-Anteater/train.jsonl --preset full
"""

KFP_TYPES = {"String": str, "Integer": int, "Float": float, "Boolean": bool, "List": list, "Dict": dict}


def pipeline_parameters() -> dict[str, dict]:
    """name -> {type, default, help}, read from the pipeline function (its signature and docstring)."""
    from pipelines.speculative_decoding import speculative_decoding

    return {name: {"type": KFP_TYPES[spec.type], "default": spec.default, "help": spec.description or ""}
            for name, spec in speculative_decoding.component_spec.inputs.items()}


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="spectrain-runs",
                        help="where runs, the MLflow store, and server state go (default: ./spectrain-runs)")
    parser.add_argument("--preset", choices=("laptop", "full"), default="laptop",
                        help="laptop: the fast settings above; full: the pipeline's own defaults")
    group = parser.add_argument_group("pipeline parameters")
    for name, parameter in pipeline_parameters().items():
        shown = LAPTOP_PRESET.get(name, parameter["default"])
        metavar = {int: "INT", float: "FLOAT", list: "A,B", dict: "JSON", bool: "BOOL"}.get(parameter["type"], "TEXT")
        group.add_argument("--" + name.replace("_", "-"), dest=name, default=None, metavar=metavar,
                           help=f"{parameter['help']} (default: {shown!r})")


def venv_python(env: str) -> Path:
    return ROOT / ".venvs" / env / "bin" / "python"


def configure_environments(workdir: Path) -> None:
    """Point each step at its image's virtualenv, and machine-local paths at the workdir."""
    missing = [env for env in ENVIRONMENTS if not venv_python(env).exists()]
    if missing:
        raise SpectrainError(f"missing virtualenv(s): {', '.join('.venvs/' + m for m in missing)}",
                             fix="run `make envs` (it installs docker/<image>/requirements.txt into each)")
    for env in ENVIRONMENTS:
        os.environ[f"SPECTRAIN_PYTHON_{env.upper()}"] = str(venv_python(env))
    os.environ["SPECTRAIN_HOME"] = str(workdir)
    os.environ.setdefault("SPECTRAIN_STATE_DIR", str(workdir / "servers"))


def run_command(args: argparse.Namespace) -> int:
    from kfp import local

    from pipelines.speculative_decoding import speculative_decoding

    from pipelines import parameters as pipeline_checks

    parameters = pipeline_parameters()
    arguments = dict(LAPTOP_PRESET) if args.preset == "laptop" else {}
    arguments |= {name: getattr(args, name) for name in parameters if getattr(args, name) is not None}
    arguments = pipeline_checks.validate(arguments, parameters, where="command line")
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    configure_environments(workdir)
    print(f"[spectrain] workdir {workdir}; arguments {json.dumps(arguments)}", flush=True)
    # The Kubernetes settings (GPUs, PVC, secrets) are for the cluster; kfp.local says so once per task.
    warnings.filterwarnings("ignore", message=".*no effect in the current local runner.*")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(workdir / "pipeline-root"),
               raise_on_error=True)
    started = time.monotonic()
    try:
        speculative_decoding(**arguments)
    except RuntimeError as failure:  # kfp.local: a task failed; its own log is above
        minutes = (time.monotonic() - started) / 60
        raise SpectrainError(f"the pipeline failed after {minutes:.1f} min: {_plain(str(failure))}",
                             fix="read the failed task's log above; fix and re-run (regeneration resumes only "
                                 "within one output, so a new run starts fresh)") from None
    minutes = (time.monotonic() - started) / 60
    print(f"\n[spectrain] pipeline finished in {minutes:.1f} min\n", flush=True)
    print(_find_summary(workdir / "pipeline-root"))
    print(f"MLflow: mlflow ui --backend-store-uri sqlite:///{workdir / 'mlflow.db'}")
    return 0


def _plain(text: str) -> str:
    """kfp.local colours task names with ANSI escapes."""
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _find_summary(root: Path) -> str:
    """The summary of the run that just finished: the newest summarize output under the pipeline root."""
    candidates = sorted(root.glob("speculative-decoding-*/summarize/summary"), key=lambda p: p.stat().st_mtime)
    return candidates[-1].read_text() if candidates else "(no summary was written)"


def compile_command(args: argparse.Namespace) -> int:
    from kfp import compiler

    from pipelines.speculative_decoding import speculative_decoding

    output = Path(args.output) if args.output else DEFAULT_YAML
    compiler.Compiler().compile(speculative_decoding, str(output))
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the `spectrain` command")
