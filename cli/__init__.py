"""`spectrain`: run the draft-training pipeline on this machine, compile it for Kubeflow, or run one step.

Examples:
  spectrain run                                      # the whole DAG on the embedded SmolLM2 + prompt set
  spectrain run --modes eagle3 --train-max-steps 40  # flags come from the pipeline's parameters
  spectrain compile                                  # write pipelines/speculative_decoding.yaml
  spectrain submit --host URL --params params.yaml   # one run on Kubeflow Pipelines
  spectrain schedule --name nightly --cron '0 0 3 * * *' --params params.yaml
  spectrain runs --host URL                          # recent runs and their state
  spectrain step train-heads --help                  # one step, in the current environment
  spectrain promote --rollback --model NAME          # put the previous champion back
  spectrain fetch-champion --model NAME --to DIR     # the champion draft, its files checked, ready to serve
  spectrain watch --registered-model NAME --endpoints URL  # production τ against the champion's; retrain on a drop
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from typing import Any

from spectrain import config as configs
from spectrain.errors import SpectrainError
from spectrain.cli.steps import STEPS
from spectrain.steps import ERROR_FILE_ENV, USER_ERROR_EXIT


def _step_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    step = STEPS[args.step_name]
    base = configs.read_json(args.config) if args.config else {}
    config: Any = configs.from_args(step.config, args, base)
    result = step.run(config)
    if isinstance(result, dict):
        # what ran, every field resolved (a step that chose settings itself reports them in "resolved"): register
        # logs it
        result["config"] = {**configs.public_dict(config), **result.get("resolved", {})}
    if os.environ.get("RANK", "0") != "0":  # a distributed step (torchrun): rank 0 reports for all
        return 0
    if args.result:
        with open(args.result, "w") as handle:
            json.dump(result, handle, indent=2)
    else:
        print(json.dumps(result, indent=2))
    return 0


def _fetch_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from spectrain.components.register.register import fetch

    print(fetch(args.model, args.alias, args.to, args.tracking_uri)["draft_dir"])
    return 0


def _promote_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from spectrain.components.register.register import rollback

    rollback(args.model, args.tracking_uri)
    return 0


WATCH_EXAMPLES = """examples:
  spectrain watch --registered-model spectrain-smollm2-135m-instruct-eagle3 --endpoints http://127.0.0.1:8000
  spectrain watch --registered-model NAME --endpoints http://vllm-0:8000,http://vllm-1:8000 --once \\
      --retrain submit --dataset s3://traffic/latest/ --kfp-host https://kfp.example.com
"""


def _watch_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from spectrain.operations import watch

    watch.run(configs.from_args(watch.WatchConfig, args))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spectrain", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from spectrain.cli import local  # light: imports kfp lazily

    run = commands.add_parser(
        "run",
        help="run the whole pipeline locally (kfp.local, one virtualenv per image)",
        description=local.RUN_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    try:
        local.add_run_arguments(run)
    except ImportError:  # a step's environment (serve, train) has no kfp: only `spectrain step` is used there
        run.description = "needs the orchestrate environment (kfp): `make envs`, then .venvs/orchestrate/bin/spectrain"
    run.set_defaults(handler=lambda a, p: local.run_command(a))

    compile_ = commands.add_parser("compile", help="compile the pipeline to KFP YAML for Kubernetes")
    local.add_compile_arguments(compile_)
    compile_.set_defaults(handler=lambda a, p: local.compile_command(a))

    from spectrain.cli import kubeflow as kfp_submit  # light: imports kfp only when a command runs

    kfp_submit.add_commands(commands)

    promote = commands.add_parser(
        "promote",
        help="move registry aliases by hand: --rollback puts the previous champion back",
        description="Promotion itself happens in the register step (champion only when a draft wins on the same "
        "eval set). `spectrain promote --rollback --model NAME` undoes the last promotion: champion "
        "goes back to previous_champion and the two swap, so a second rollback re-applies it.",
    )
    promote.add_argument("--model", required=True, help="registered model, e.g. spectrain-smollm2-135m-instruct-eagle3")
    promote.add_argument("--rollback", action="store_true", required=True, help="move champion back")
    promote.add_argument(
        "--tracking-uri",
        default="",
        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or the local store in $SPECTRAIN_HOME)",
    )
    promote.set_defaults(handler=_promote_command)

    fetch = commands.add_parser(
        "fetch-champion",
        help="download the champion draft, checked file by file against the registry's record; print its folder",
        description="Download the draft an alias points at (champion by default) and check every file's sha256 "
        "against what the register step recorded: a draft whose files were changed in the artifact store is refused, "
        "naming the file. The last line printed is the folder to serve, e.g. "
        "draft=$(spectrain fetch-champion --model NAME --to ./champion | tail -1).",
    )
    fetch.add_argument("--model", required=True, help="registered model, e.g. spectrain-smollm2-135m-instruct-eagle3")
    fetch.add_argument("--alias", default="champion", help="the alias to follow (default: champion)")
    fetch.add_argument("--to", required=True, help="an empty or new folder to download into")
    fetch.add_argument(
        "--tracking-uri",
        default="",
        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or the local store in $SPECTRAIN_HOME)",
    )
    fetch.set_defaults(handler=_fetch_command)

    from spectrain.operations import watch

    watcher = commands.add_parser(
        "watch",
        help="watch the served draft's acceptance in production; retrain when it drops below its champion's",
        description=watch.__doc__,
        epilog=WATCH_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    configs.add_arguments(watcher, watch.WatchConfig)
    watcher.set_defaults(handler=_watch_command)

    step = commands.add_parser("step", help="run one step in the current environment (what components call)")
    steps = step.add_subparsers(dest="step_name", required=True, metavar="STEP")
    for name, spec in STEPS.items():
        sub = steps.add_parser(name, help=spec.summary, description=spec.summary)
        sub.add_argument("--config", help="JSON file with the step's config; flags override it")
        sub.add_argument("--result", help="write the step's result JSON here (default: print it)")
        configs.add_arguments(sub, spec.config)
        sub.set_defaults(handler=_step_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    return dispatch(parser.parse_args(argv), parser)


def dispatch(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run the command ``args`` chose: a user's mistake ends with its message and exit status 2, Ctrl-C with 130,
    anything else with its traceback and 1."""
    try:
        return args.handler(args, parser)
    except SpectrainError as exc:
        print(f"spectrain: error: {exc}", file=sys.stderr)
        if os.environ.get(ERROR_FILE_ENV):  # run_step passes the message on to whoever runs the step
            with open(os.environ[ERROR_FILE_ENV], "w") as handle:
                handle.write(str(exc))
        return USER_ERROR_EXIT
    except KeyboardInterrupt:
        print("spectrain: interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        return 1
