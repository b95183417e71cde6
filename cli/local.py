"""`spectrain run` and `spectrain compile`: the one pipeline function, executed locally or compiled for KFP."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from spectrain.pipelines.settings import DEFAULT_YAML
from spectrain import paths, processes
from spectrain.console import EVENTS_ENV, RunConsole, duration
from spectrain.config import argparse_help
from spectrain.errors import SpectrainError
from spectrain.steps import ENVIRONMENTS

ROOT = Path(__file__).resolve().parents[1]

# What `spectrain run` changes from the pipeline's own defaults so that the whole DAG fits a laptop
# (2 CPU cores: ~15 minutes after the environments exist): each draft trains for a fixed wall-clock
# budget, as many epochs as fit (bench/ablation.py measured what buys the most τ per minute).
# `--preset full` runs the pipeline defaults instead.
LAPTOP_PRESET = {
    "train_num_epochs": 100.0,
    "train_max_minutes": 4.0,
}
# What `spectrain run` sets whatever the preset: under kfp.local every step runs on this machine, so vLLM can
# run inside the serve step (the compiled pipeline's default is 'cluster': on Kubernetes each step is a pod).
ON_THIS_MACHINE = {"serve_mode": "local"}

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


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workdir",
        default=paths.WORKDIR,
        help="where runs, the MLflow store, and server state go (default: ./spectrain-runs)",
    )
    parser.add_argument(
        "--preset",
        choices=("laptop", "full"),
        default="laptop",
        help="laptop: the fast settings above; full: the pipeline's own defaults (either way serve_mode local; "
        "in the pods of `python -m podsim run`, cluster)",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show the raw stream (kfp.local's task inputs/outputs, every step's log) as well; "
        "either way it is in <workdir>/runs/<run>/logs/",
    )
    group = parser.add_argument_group("pipeline parameters")
    from spectrain.pipelines.speculative_decoding import parameters

    for name, parameter in parameters().items():
        shown = {**ON_THIS_MACHINE, **LAPTOP_PRESET}.get(name, parameter["default"])
        metavar = {int: "INT", float: "FLOAT", list: "A,B", dict: "JSON", bool: "BOOL"}.get(parameter["type"], "TEXT")
        group.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=None,
            metavar=metavar,
            help=argparse_help(f"{parameter['help']} (default: {shown!r})"),
        )


def venv_python(env: str) -> Path:
    return ROOT / ".venvs" / env / "bin" / "python"


def configure_environments(workdir: Path) -> None:
    """Point each step at its image's virtualenv, and machine-local paths at the workdir."""
    missing = [env for env in ENVIRONMENTS if not venv_python(env).exists()]
    if missing:
        raise SpectrainError(
            f"missing virtualenv(s): {', '.join('.venvs/' + m for m in missing)}",
            fix="run `make envs` (it installs docker/<image>/requirements.txt into each)",
        )
    for env in ENVIRONMENTS:
        os.environ[f"SPECTRAIN_PYTHON_{env.upper()}"] = str(venv_python(env))
    paths.use_workdir(workdir)


@dataclass(frozen=True)
class Boundaries:
    """Somewhere other than side by side on this machine for a run's steps, supplied by a development tool
    (podsim: each step in a pod of a simulated Kubernetes node). The pipeline's own defaults then hold
    (serve_mode 'cluster'), as they do on Kubernetes."""

    command: str  # what the user ran, for messages
    unavailable: Callable[[], str | None]  # why they cannot be set up here; None when they can
    needs: str  # what setting them up needs
    enter: Callable[[contextlib.ExitStack, Path], str]  # set up until the stack closes; says what was set up


def run_command(args: argparse.Namespace, boundaries: Boundaries | None = None) -> int:
    from spectrain.pipelines import parameters as pipeline_checks

    from spectrain.pipelines.speculative_decoding import parameters as declared_parameters

    parameters = declared_parameters()
    arguments = ({} if boundaries else ON_THIS_MACHINE) | (LAPTOP_PRESET if args.preset == "laptop" else {})
    arguments |= {name: getattr(args, name) for name in parameters if getattr(args, name) is not None}
    arguments = pipeline_checks.validate(arguments, parameters, where="command line")
    if boundaries and (problems := pipeline_checks.cluster_problems(arguments)):
        raise SpectrainError(
            "; ".join(problems),
            where=boundaries.command,
            fix=f"drop --serve-mode (in {boundaries.command} the default, 'cluster', applies) or use spectrain run",
        )
    if boundaries and (problem := boundaries.unavailable()):
        raise SpectrainError(
            f"cannot set up {boundaries.command}: {problem}", where=boundaries.command, fix=boundaries.needs
        )
    workdir = Path(args.workdir).resolve()
    configure_environments(workdir)  # refuses before anything starts when an environment is missing
    run_dir = new_run_dir(workdir)
    (run_dir / "arguments.json").write_text(json.dumps(arguments, indent=2))
    processes.become_subreaper()  # servers started below stay ours to stop (spectrain/processes.py)
    console = RunConsole(run_dir / "logs", terminal=sys.stdout, verbose=args.verbose)
    console.say(
        f"spectrain run: {run_dir}\n  arguments {json.dumps(arguments)}\n  logs {run_dir / 'logs'}/ "
        f"(--verbose shows them here)"
    )
    interrupts = _Interrupts()
    previous_handlers = signal.signal(signal.SIGTERM, interrupts), signal.signal(signal.SIGINT, interrupts)
    started = time.monotonic()
    elsewhere = contextlib.ExitStack()
    try:
        with contextlib.redirect_stdout(console), contextlib.redirect_stderr(console):
            if boundaries:
                console.say(boundaries.enter(elsewhere, run_dir))
            _run_pipeline(arguments, run_dir)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        interrupts.handled.set()
        stopped = processes.stop_descendants()
        console.say(
            f"\ninterrupted after {duration(time.monotonic() - started)}: stopped {len(stopped)} "
            f"process(es) this run started (vLLM, steps). The partial run is in {run_dir} (logs/ has each "
            f"step's log).\nTo go on, run the same command again: the converted model and the evaluation "
            f"cache are reused; a local run has no per-step resume (on Kubeflow, checkpoint_root gives one)."
        )
        return 130
    except RuntimeError as failure:  # kfp.local: a task failed; RunConsole showed which, with its log
        raise SpectrainError(
            f"the pipeline failed after {duration(time.monotonic() - started)}: "
            f"{_plain(str(failure))}; {_failed_steps(console)}",
            fix=f"read the failed step's log; every log of the run is in {run_dir / 'logs'}",
        ) from None
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        interrupts.handled.set()
        left = processes.stop_descendants()
        elsewhere.close()  # podsim: the pods' namespaces, the simulated API, the bridge
        if left:
            console.say(f"stopped {len(left)} process(es) the run left running")
        console.close()
        signal.signal(signal.SIGTERM, previous_handlers[0])
        signal.signal(signal.SIGINT, previous_handlers[1])
    print(f"\n[spectrain] pipeline finished in {duration(time.monotonic() - started)}\n", flush=True)
    print(_find_summary(run_dir))
    print("logs (one per step): " + ", ".join(sorted(p.name for p in (run_dir / "logs").glob("*.log"))))
    print(f"  in {run_dir / 'logs'}")
    tracking = os.environ.get("MLFLOW_TRACKING_URI")
    print(
        f"MLflow: {tracking}"
        if tracking
        else f"MLflow: mlflow ui --backend-store-uri sqlite:///{workdir / 'mlflow.db'}"
    )
    return 0


def new_run_dir(workdir: Path) -> Path:
    """<workdir>/runs/<date-time>[-n]/: arguments, logs and the pipeline root of one run."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(100):
        run_dir = workdir / "runs" / (stamp if attempt == 0 else f"{stamp}-{attempt}")
        try:
            run_dir.mkdir(parents=True)
            return run_dir
        except FileExistsError:
            continue
    raise SpectrainError(f"cannot create a run directory under {workdir / 'runs'}", where="--workdir")


def _run_pipeline(arguments: dict, run_dir: Path) -> None:
    from kfp import local

    from spectrain.pipelines.settings import CompileSettings
    from spectrain.pipelines.speculative_decoding import build_pipeline

    # One draft at a time: on a laptop each draft gets every core instead of two trainings thrashing them. No GPU
    # is promised to any step (kfp.local would pass SPECTRAIN_GPUS on): each uses one where it finds one.
    speculative_decoding = build_pipeline(CompileSettings(mode_parallelism=1, train_gpus=0, eval_gpus=0))
    # The Kubernetes settings (GPUs, PVC, secrets) are for the cluster; kfp.local says so once per task.
    warnings.filterwarnings("ignore", message=".*no effect in the current local runner.*")
    os.environ[EVENTS_ENV] = "1"  # steps report progress as events for RunConsole
    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(run_dir / "pipeline-root"), raise_on_error=True
    )
    speculative_decoding(**arguments)


class _Interrupts:
    """Ctrl-C and SIGTERM raise KeyboardInterrupt in the main thread, and again every 2 s until the run has
    handled one: an interrupt raised while a finalizer or a library's broad handler runs is lost (seen once in a
    fresh-machine test run), and the run must stop all the same."""

    def __init__(self):
        self.handled = threading.Event()
        self.resending = False

    def __call__(self, signum, frame):
        if not self.resending:
            self.resending = True
            threading.Thread(target=self._resend, name="interrupt-resend", daemon=True).start()
        raise KeyboardInterrupt

    def _resend(self) -> None:
        while not self.handled.wait(2.0):
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)


def _failed_steps(console: RunConsole) -> str:
    if not console.failed:
        return "see pipeline.log"
    return "; ".join(f"{label} failed (log: {console.step_logs.get(label)})" for label in console.failed)


def _plain(text: str) -> str:
    """kfp.local colours task names with ANSI escapes."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _find_summary(run_dir: Path) -> str:
    """The summary of the run that just finished: the summarize task's output in its pipeline root."""
    candidates = sorted(
        run_dir.glob("pipeline-root/speculative-decoding-*/summarize/summary"), key=lambda p: p.stat().st_mtime
    )
    return candidates[-1].read_text() if candidates else "(no summary was written)"


def add_compile_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per compile setting (pipelines.speculative_decoding.CompileSettings), its default shown."""
    import dataclasses

    from spectrain.pipelines.settings import CompileSettings

    parser.add_argument("--output", default=None, help="where to write (default: pipelines/speculative_decoding.yaml)")
    for setting in dataclasses.fields(CompileSettings):
        parser.add_argument(
            "--" + setting.name.replace("_", "-"),
            type=type(setting.default),
            default=setting.default,
            help=f"{CompileSettings.HELP[setting.name]} (default: {setting.default})",
        )


def compile_command(args: argparse.Namespace) -> int:
    import dataclasses

    from spectrain.pipelines.settings import CompileSettings
    from spectrain.pipelines.speculative_decoding import compile_to

    settings = CompileSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(CompileSettings)})
    if problems := settings.problems():
        raise SpectrainError(
            "; ".join(problems),
            where="spectrain compile",
            fix="correct the flag (`spectrain compile --help` lists them with their defaults)",
        )
    output = Path(args.output) if args.output else DEFAULT_YAML
    compile_to(output, settings)
    print(f"wrote {output} ({', '.join(f'{k} {v}' for k, v in dataclasses.asdict(settings).items())})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the `spectrain` command")
