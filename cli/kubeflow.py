"""`spectrain submit`, `spectrain schedule`, `spectrain runs`: the compiled pipeline on a Kubeflow Pipelines server.

Each command is a thin handler over operations/kfp_client.py, whose functions take a `kfp.Client` (tests point
one at a fake server). Both writing commands are idempotent: `submit` skips a run whose name already exists in the
experiment (--force submits anyway), `schedule` leaves an identical recurring run alone and replaces a
changed one (delete + create).

kfp is imported lazily: this module is imported by the CLI in step environments that have no kfp.
"""

from __future__ import annotations

import argparse
import datetime
import os
from pathlib import Path
from typing import TYPE_CHECKING

from spectrain.components.regenerate.config import RETRAINING_HELDOUT
from spectrain.pipelines.settings import DEFAULT_YAML
from spectrain.errors import SpectrainError

if TYPE_CHECKING:
    pass

from spectrain.operations.kfp_client import (
    CRON_EXAMPLE,
    DEFAULT_EXPERIMENT,
    DEFAULT_SERVICE_ACCOUNT,
    STANDALONE_NAMESPACE,
    api_errors,
    check_cron,
    make_client,
    pipeline_parameters,
    read_params,
    recent_runs,
    runs_table,
    schedule_recurring_run,
    submit_run,
    toggle_recurring_run,
    ui_url,
)


# --- CLI -----------------------------------------------------------------------------------------------------


def _connection(args: argparse.Namespace) -> tuple[str | None, str]:
    return args.host or os.environ.get("KFP_HOST") or None, _chosen_namespace(args) or STANDALONE_NAMESPACE


def _chosen_namespace(args: argparse.Namespace) -> str | None:
    """The namespace the user named (--namespace, else $KFP_NAMESPACE), or None."""
    return args.namespace or os.environ.get("KFP_NAMESPACE") or None


def submit_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    package = Path(args.package)
    params = read_params(Path(args.params) if args.params else None, package)
    run_name = args.run_name or f"spectrain-{datetime.datetime.now(datetime.timezone.utc):%Y%m%d-%H%M%SZ}"
    host, namespace = _connection(args)
    with api_errors(host):
        client = make_client(host, namespace)
        run, created = submit_run(
            client,
            package=package,
            params=params,
            run_name=run_name,
            experiment=args.experiment,
            force=args.force,
            **_run_settings(args),
        )
        url = ui_url(client, "runs", run.run_id)
    if created:
        print(f"submitted run {run_name!r} to experiment {args.experiment!r}")
    else:
        print(
            f"run {run_name!r} already exists in experiment {args.experiment!r} (state {run.state}); "
            "not submitting another (--force to submit anyway)"
        )
    print(f"run id:  {run.run_id}\nrun URL: {url}")
    return 0


def schedule_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    host, namespace = _connection(args)
    if args.enable or args.disable:
        if args.cron or args.params:
            raise SpectrainError(
                "--enable/--disable only toggle an existing recurring run",
                where="--cron/--params",
                fix="drop --cron and --params, or drop --enable/--disable",
            )
        with api_errors(host):
            client = make_client(host, namespace)
            recurring, changed = toggle_recurring_run(
                client, name=args.name, experiment=args.experiment, enable=args.enable
            )
            url = ui_url(client, "recurringrun", recurring.recurring_run_id)
        state = "enabled" if args.enable else "disabled"
        print(f"recurring run {args.name!r} {state}" if changed else f"recurring run {args.name!r} was already {state}")
        print(f"recurring run id:  {recurring.recurring_run_id}\nrecurring run URL: {url}")
        return 0
    if not args.cron:
        raise SpectrainError(
            "--cron is required to create or update a recurring run",
            where="--cron",
            fix=f"e.g. --cron '{CRON_EXAMPLE}' (daily at 03:00:00), or --enable/--disable",
        )
    cron = check_cron(args.cron)
    package = Path(args.package)
    params = read_params(Path(args.params) if args.params else None, package)
    accepted = pipeline_parameters(package)
    if "warm_start" not in params and "warm_start" in accepted:  # (an older package: none)
        # a retraining continues what it retrains, unless the params say otherwise
        params["warm_start"] = "champion"
        print("each run continues its mode's champion at the time it runs (warm_start: '' in --params: new drafts)")
    options = params.get("regenerate_options") or {}
    if params.get("warm_start") and "heldout" not in options and "regenerate_options" in accepted:
        # the guard against forgetting, as the watch's retraining has it: τ on the new data's own prompts too
        params["regenerate_options"] = {**options, "heldout": RETRAINING_HELDOUT}
        print(
            f"each run holds out {RETRAINING_HELDOUT} of its dataset's conversations and reports τ on them beside the "
            'eval set, per source (regenerate_options {"heldout": 0} in --params: none)'
        )
    with api_errors(host):
        client = make_client(host, namespace)
        recurring, outcome = schedule_recurring_run(
            client,
            name=args.name,
            cron=cron,
            package=package,
            params=params,
            experiment=args.experiment,
            **_run_settings(args),
        )
        url = ui_url(client, "recurringrun", recurring.recurring_run_id)
    if outcome == "unchanged":
        print(f"recurring run {args.name!r} is already scheduled with this cron, package and params: left as is")
    else:
        print(f"recurring run {args.name!r} {outcome} (cron {cron!r}, max concurrency 1, no catch-up)")
    if recurring.mode == "DISABLE":
        print(f"it is disabled: `spectrain schedule --name {args.name} --enable` resumes it")
    print(f"recurring run id:  {recurring.recurring_run_id}\nrecurring run URL: {url}")
    return 0


def runs_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.limit < 1:
        raise SpectrainError(f"--limit must be at least 1, got {args.limit}", where="--limit")
    host, namespace = _connection(args)
    with api_errors(host):
        runs = recent_runs(make_client(host, namespace), experiment=args.experiment, limit=args.limit)
    print(runs_table(runs) if runs else f"no runs in experiment {args.experiment!r}")
    return 0


def _add_server_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Kubeflow Pipelines server")
    group.add_argument(
        "--host",
        default=None,
        help="KFP API endpoint, e.g. http://localhost:8080 (default: $KFP_HOST, else the in-cluster "
        "service). Token: $KFP_TOKEN, else the pod's service-account token if present",
    )
    group.add_argument(
        "--namespace",
        default=None,
        help="multi-user Kubeflow: the profile namespace the run goes to, where spectrain's manifests are "
        "applied (default: $KFP_NAMESPACE); standalone Kubeflow Pipelines runs every pipeline in its own "
        "namespace, so leave it out there",
    )
    group.add_argument(
        "--experiment",
        default=DEFAULT_EXPERIMENT,
        help=f"KFP experiment (default: {DEFAULT_EXPERIMENT}; created if missing)",
    )


def _run_settings(args: argparse.Namespace) -> dict[str, str | None]:
    """Where the run's artifacts go, and the Kubernetes identity its pods run as ('' = KFP's default)."""
    account = args.service_account
    if account is None:
        account = os.environ.get("SPECTRAIN_SERVICE_ACCOUNT", DEFAULT_SERVICE_ACCOUNT)
    return {
        "pipeline_root": args.pipeline_root or os.environ.get("SPECTRAIN_PIPELINE_ROOT") or None,
        "service_account": account or None,
        "namespace": _chosen_namespace(args),
    }


def _add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pipeline-root",
        default=None,
        metavar="URI",
        help="where KFP stores the run's artifacts, e.g. s3://spectrain/pipeline-root (default: "
        "$SPECTRAIN_PIPELINE_ROOT, else the KFP installation's default bucket)",
    )
    parser.add_argument(
        "--service-account",
        default=None,
        metavar="NAME",
        help=f"service account the run's pods use (default: $SPECTRAIN_SERVICE_ACCOUNT, else "
        f"{DEFAULT_SERVICE_ACCOUNT}, which manifests/ creates with the RBAC serve_mode "
        f"'cluster' needs; '' for the KFP installation's default)",
    )
    parser.add_argument(
        "--package",
        default=str(DEFAULT_YAML),
        help="compiled pipeline YAML (default: pipelines/speculative_decoding.yaml)",
    )
    parser.add_argument(
        "--params",
        default=None,
        metavar="FILE",
        help="YAML mapping of pipeline parameters, e.g. `train_max_steps: 40`; names and types are "
        "checked against the package (`spectrain run --help` describes them)",
    )


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add `submit`, `schedule` and `runs` to the CLI's subcommands; each sets `handler(args, parser) -> int`."""
    raw = argparse.RawDescriptionHelpFormatter
    submit = subparsers.add_parser(
        "submit",
        help="submit one run of the compiled pipeline to Kubeflow Pipelines",
        formatter_class=raw,
        description="Submit one run of the compiled pipeline to a Kubeflow Pipelines server; print its id and URL.\n"
        "Idempotent: if a run named --run-name exists in the experiment, it is printed and no other\n"
        "is created (--force creates one anyway).\n\nexamples:\n"
        "  spectrain submit --host http://localhost:8080 --params params.yaml\n"
        "  spectrain submit --run-name nightly-2026-01-01 --params params.yaml",
    )
    _add_server_arguments(submit)
    _add_pipeline_arguments(submit)
    submit.add_argument("--run-name", default=None, help="run name (default: spectrain-<UTC timestamp>)")
    submit.add_argument("--force", action="store_true", help="submit even if a run with this name exists")
    submit.set_defaults(handler=submit_command)

    schedule = subparsers.add_parser(
        "schedule",
        help="create or replace a recurring run of the pipeline (cron), or enable/disable it",
        formatter_class=raw,
        description="Create or replace the recurring run --name: KFP cron (6 fields, seconds first), one run at\n"
        "a time, no catch-up of missed runs. Idempotent: an existing recurring run with the same cron,\n"
        "params and package content is left as is; otherwise it is deleted and created again (keeping\n"
        "its enabled/disabled mode). --enable / --disable only toggle an existing one.\n\nexamples:\n"
        f"  spectrain schedule --name nightly --cron '{CRON_EXAMPLE}' --params params.yaml\n"
        "  spectrain schedule --name nightly --disable",
    )
    schedule.add_argument("--name", required=True, help="recurring run name (unique in the experiment)")
    schedule.add_argument(
        "--cron", default=None, help=f"6-field cron, seconds first: '{CRON_EXAMPLE}' is daily at 03:00:00"
    )
    toggle = schedule.add_mutually_exclusive_group()
    toggle.add_argument("--enable", action="store_true", help="only enable the existing recurring run")
    toggle.add_argument("--disable", action="store_true", help="only disable the existing recurring run")
    _add_server_arguments(schedule)
    _add_pipeline_arguments(schedule)
    schedule.set_defaults(handler=schedule_command)

    runs = subparsers.add_parser(
        "runs",
        help="list the experiment's most recent runs",
        description="List the most recent runs of the experiment, newest first: run id, "
        "name, state, created time (UTC).",
    )
    runs.add_argument("--limit", type=int, default=10, help="how many runs (default: 10)")
    _add_server_arguments(runs)
    runs.set_defaults(handler=runs_command)
