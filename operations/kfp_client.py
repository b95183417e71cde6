"""The Kubeflow Pipelines API as spectrain uses it: the compiled package's parameters and a --params file checked
against them, a cron checked, a client made with the right token, a run submitted and a recurring run scheduled
idempotently, runs listed. Every function takes a `kfp.Client`, so that tests point one at a fake server; the
commands that call them are cli/kubeflow.py.

kfp is imported lazily: this module is imported by the CLI in step environments that have no kfp.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spectrain import checks
from spectrain.errors import SpectrainError

if TYPE_CHECKING:
    import kfp

SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
KFP_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"  # the KFP SDK's default for the projected token
DEFAULT_EXPERIMENT = "spectrain"
# The ServiceAccount manifests/base/rbac.yaml creates: may create the vLLM Deployment/Service of serve_mode cluster.
DEFAULT_SERVICE_ACCOUNT = "spectrain-pipeline-runner"
CRON_EXAMPLE = "0 0 3 * * *"
# What `schedule` writes in a recurring run's description, and reads back to decide whether it changed.
FINGERPRINT = re.compile(r"package sha256:(?P<package>[0-9a-f]+); params sha256:(?P<params>[0-9a-f]+)")


# --- inputs: package, parameters, cron, token ---------------------------------------------------------------


def pipeline_parameters(package: Path) -> dict[str, dict]:
    """The pipeline's parameters (name -> {type, default, help}), from the compiled package YAML."""
    import yaml

    from spectrain.pipelines.parameters import declared

    if not package.is_file():
        raise SpectrainError(
            "pipeline package not found",
            where=str(package),
            fix="`spectrain compile` writes pipelines/speculative_decoding.yaml, or pass --package",
        )
    if package.suffix not in (".yaml", ".yml"):
        raise SpectrainError("the pipeline package must be compiled YAML (.yaml or .yml)", where=str(package))
    with package.open() as handle:
        spec: Any = next(yaml.safe_load_all(handle), None)
    try:
        return declared(spec["root"])
    except (TypeError, KeyError, AttributeError):
        raise SpectrainError(
            "not a compiled KFP pipeline (no `root` in its first document)",
            where=str(package),
            fix="compile it with `spectrain compile`",
        ) from None


def read_params(path: Path | None, package: Path) -> dict[str, Any]:
    """Pipeline arguments from a YAML mapping, checked against the package's parameters (names and types), and
    refused where they (or the package's defaults) cannot work on Kubernetes."""
    from spectrain.pipelines import parameters

    types = pipeline_parameters(package)
    params = {} if path is None else _params_file(path, types, package)
    with checks.for_cluster():  # paths and credentials are the cluster's, not this machine's
        coerced = parameters.validate(params, types, where=str(path or package), label=str)
    problems = parameters.cluster_problems({name: spec["default"] for name, spec in types.items()} | coerced, str)
    if problems:
        raise SpectrainError(
            "\n  ".join(problems),
            where=str(path or package),
            fix="leave serve_mode out of the params file (or set it to cluster); a package whose own default "
            "is 'local' was compiled by an older spectrain: compile it again",
        )
    return params


def _params_file(path: Path, known: dict[str, dict], package: Path) -> dict[str, Any]:
    import yaml

    from spectrain.pipelines import parameters

    try:
        params = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise SpectrainError("params file not found", where=str(path)) from None
    except yaml.YAMLError as exc:
        raise SpectrainError(f"not valid YAML: {exc}", where=str(path)) from None
    if not isinstance(params, dict):
        raise SpectrainError(
            f"expected a mapping of pipeline parameters, got {type(params).__name__}",
            where=str(path),
            fix="write one `name: value` per line, e.g. `train_max_steps: 40`",
        )
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise SpectrainError(
            f"unknown pipeline parameter(s): {', '.join(map(str, unknown))}",
            where=str(path),
            fix=f"known parameters of {package.name}: {', '.join(sorted(known))}",
        )
    for name, value in params.items():
        kind = known[name]["type"]
        if kind is not object and not parameters.accepts(kind, value):
            raise SpectrainError(
                f"{name}: expected {kind.__name__}, got {type(value).__name__} {value!r}",
                where=str(path),
                fix=f"{name}: {known[name]['help']}",
            )
    return params


def check_cron(cron: str) -> str:
    """KFP's cron has 6 fields, seconds first (robfig/cron); a 5-field crontab line is the usual mistake."""
    fields = cron.split()
    if len(fields) != 6:
        raise SpectrainError(
            f"cron {cron!r} has {len(fields)} field(s); Kubeflow Pipelines wants 6: "
            "second minute hour day-of-month month day-of-week",
            where="--cron",
            fix=f"e.g. --cron '{CRON_EXAMPLE}' runs every day at 03:00:00 (put a `0` for seconds in front of a "
            "crontab line)",
        )
    return " ".join(fields)


def auth_token() -> str | None:
    """$KFP_TOKEN, else in a pod the token projected for the KFP API (audience pipelines.kubeflow.org, at
    $KF_PIPELINES_SA_TOKEN_PATH: what multi-user KFP accepts) or the service-account token, else none."""
    token = os.environ.get("KFP_TOKEN")
    if token:
        return token
    for path in (Path(os.environ.get("KF_PIPELINES_SA_TOKEN_PATH", KFP_TOKEN_PATH)), SERVICE_ACCOUNT_TOKEN):
        if path.is_file():
            return path.read_text().strip() or None
    return None


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def fingerprint(
    package: Path, params: dict[str, Any], pipeline_root: str | None = None, service_account: str | None = None
) -> str:
    """What a recurring run was created from, kept in its description (KFP cannot update a recurring run).

    The pipeline root (where the run's artifacts go) and the service account count as parameters.
    """
    settings = {
        **params,
        **({"<pipeline_root>": pipeline_root} if pipeline_root else {}),
        **({"<service_account>": service_account} if service_account else {}),
    }
    return (
        f"managed by `spectrain schedule`: package sha256:{digest(package.read_bytes())}; "
        f"params sha256:{digest(json.dumps(settings, sort_keys=True).encode())}"
    )


# --- the KFP API ---------------------------------------------------------------------------------------------


def make_client(host: str | None, namespace: str) -> kfp.Client:
    """A kfp.Client for `host` (None: the in-cluster service), authenticated with `auth_token()`."""
    import kfp

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="This client only works with", category=FutureWarning)
        return kfp.Client(host=host, namespace=namespace, existing_token=auth_token())


@contextlib.contextmanager
def api_errors(host: str | None) -> Iterator[None]:
    """Turn an API error or an unreachable server into a SpectrainError that says where and what to check."""
    import kfp_server_api
    import urllib3

    where = host or "in-cluster KFP API (ml-pipeline)"
    try:
        yield
    except kfp_server_api.ApiException as exc:
        raise SpectrainError(
            f"KFP API answered {exc.status} {exc.reason}: {(exc.body or '').strip()[:500]}",
            where=where,
            fix="check --host/$KFP_HOST, --namespace and the token ($KFP_TOKEN)",
        ) from None
    except TimeoutError as exc:  # kfp.Client's health check gave up (it retries API errors)
        raise SpectrainError(
            f"KFP API health check failed: {exc}", where=where, fix="check --host/$KFP_HOST and the token ($KFP_TOKEN)"
        ) from None
    except urllib3.exceptions.HTTPError as exc:
        raise SpectrainError(
            f"cannot reach the KFP API: {exc}",
            where=where,
            fix="pass --host (or set KFP_HOST), e.g. http://localhost:8080 after "
            "`kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80`",
        ) from None


REQUIRED_BACKEND = re.compile(r"^# Requires: Kubeflow Pipelines backend >= (?P<version>[0-9][0-9.]*)", re.MULTILINE)


def release(text: str) -> tuple[int, ...] | None:
    """A release number as a tuple (``2.17.0`` or ``v2.17.0-rc.1`` -> (2, 17, 0)); None if it is not one."""
    match = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", text.strip())
    return tuple(int(part or 0) for part in match.groups()) if match else None


STANDALONE_NAMESPACE = "kubeflow"  # where standalone Kubeflow Pipelines runs every pipeline (its own namespace)


def check_server(client: kfp.Client, package: Path, namespace: str | None = None) -> None:
    """What the server says of itself (healthz, read raw: kfp's model of that answer drops tag_name), checked before
    anything is created: its release against the package's `# Requires:` line (written by `spectrain compile`), and
    its kind against ``namespace``, the namespace the user chose (None: not chosen).

    Multi-user Kubeflow runs a pipeline in the profile namespace it is submitted to, as that profile's
    default-editor unless another account is named; standalone Kubeflow Pipelines runs every pipeline in its own
    namespace and ignores the one a client names. Either way the run's account, the model-cache PVC and the Secrets
    must be where the pods run, so a namespace that cannot be that place is refused."""
    answer = json.loads(client._healthz_api.healthz_service_get_healthz(_preload_content=False).data or b"{}")
    where = f"{client._get_url_prefix()} (GET /apis/v2beta1/healthz)"
    _check_release(str(answer.get("tag_name") or ""), package, where)
    if answer.get("multi_user") and (namespace or STANDALONE_NAMESPACE) == STANDALONE_NAMESPACE:
        raise SpectrainError(
            f"this is multi-user Kubeflow, which runs a pipeline in the profile namespace it is submitted to; "
            f"{namespace or 'no namespace'!r} is not a profile",
            where="--namespace / $KFP_NAMESPACE",
            fix="pass --namespace <your profile's namespace>, where spectrain's manifests are applied (its runs use "
            "spectrain-pipeline-runner there, or --service-account default-editor, the profile's own); nothing was "
            "submitted",
        )
    if answer.get("multi_user") is False and namespace and namespace != STANDALONE_NAMESPACE:
        raise SpectrainError(
            f"this is standalone Kubeflow Pipelines, which runs every pipeline in its own namespace and ignores "
            f"--namespace {namespace}: the run's pods would not find spectrain's account, model-cache PVC and "
            f"Secrets of namespace {namespace!r}",
            where="--namespace / $KFP_NAMESPACE",
            fix="apply spectrain's manifests in KFP's namespace (an overlay of manifests/overlays/<name> with "
            f"`namespace: {STANDALONE_NAMESPACE}`) and drop --namespace; nothing was submitted",
        )


def _check_release(reported: str, package: Path, where: str) -> None:
    required = REQUIRED_BACKEND.search(package.read_text()[:2000])
    if required is None:
        return  # compiled elsewhere: no minimum known
    found, needed = release(reported), release(required["version"])
    if found is None:
        warnings.warn(
            f"the KFP server does not report its release (healthz tag_name {reported!r}); this pipeline needs "
            f"{required['version']} or later",
            stacklevel=3,
        )
    elif needed is not None and found < needed:
        raise SpectrainError(
            f"the KFP server runs Kubeflow Pipelines {reported}, but {package.name} needs {required['version']} or "
            "later (tolerations and node selectors as pipeline parameters)",
            where=where,
            fix=f"upgrade Kubeflow Pipelines to {required['version']} or later; nothing was submitted",
        )


def display_name_filter(name: str) -> str:
    """A v2beta1 list filter: display_name equals `name`."""
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "string_value": name}]})


def find_experiment(client: kfp.Client, name: str) -> str:
    """The id of an existing experiment."""
    try:
        return client.get_experiment(experiment_name=name).experiment_id
    except ValueError as exc:
        raise SpectrainError(
            str(exc), where="--experiment", fix="`spectrain submit` or `spectrain schedule` create it"
        ) from None


def ui_url(client: kfp.Client, kind: str, object_id: str) -> str:
    """Link to a run ("runs") or recurring run ("recurringrun") in the KFP UI.

    Uses the client's own UI prefix (the host, or $KF_PIPELINES_UI_ENDPOINT): the links kfp itself prints.
    """
    return f"{client._get_url_prefix()}/#/{kind}/details/{object_id}"


def submit_run(
    client: kfp.Client,
    *,
    package: Path,
    params: dict[str, Any],
    run_name: str,
    experiment: str,
    force: bool = False,
    pipeline_root: str | None = None,
    service_account: str | None = None,
    namespace: str | None = None,
) -> tuple[Any, bool]:
    """Create a run of `package` in `experiment` (created if missing), unless one named `run_name` exists.
    ``namespace``: the one the user chose for the client (None: none), checked against the server's kind.

    Returns (run, created).
    """
    check_server(client, package, namespace)
    experiment_id = client.create_experiment(name=experiment).experiment_id
    if not force:
        existing = client.list_runs(experiment_id=experiment_id, page_size=1, filter=display_name_filter(run_name)).runs
        if existing:
            return existing[0], False
    run = client.run_pipeline(
        experiment_id=experiment_id,
        job_name=run_name,
        pipeline_package_path=str(package),
        params=params,
        pipeline_root=pipeline_root,
        service_account=service_account,
    )
    return run, True


def find_recurring_runs(client: kfp.Client, experiment_id: str, name: str) -> list[Any]:
    response = client.list_recurring_runs(experiment_id=experiment_id, page_size=100, filter=display_name_filter(name))
    return list(response.recurring_runs or [])


def differences(existing: Any, *, cron: str, description: str) -> list[str]:
    """How an existing recurring run differs from the one `schedule` would create (empty: identical)."""
    found = []
    old_cron = existing.trigger.cron_schedule.cron if existing.trigger and existing.trigger.cron_schedule else None
    if old_cron != cron:
        found.append(f"cron {old_cron!r} -> {cron!r}")
    old, new = FINGERPRINT.search(existing.description or ""), FINGERPRINT.search(description)
    if old is None or new is None:
        found.append("not created by `spectrain schedule`")
    else:
        found += [f"{what} changed" for what in ("package", "params") if old[what] != new[what]]
    if int(existing.max_concurrency or 0) != 1 or not existing.no_catchup:
        found.append("max concurrency / catch-up settings")
    return found


def schedule_recurring_run(
    client: kfp.Client,
    *,
    name: str,
    cron: str,
    package: Path,
    params: dict[str, Any],
    experiment: str,
    pipeline_root: str | None = None,
    service_account: str | None = None,
    namespace: str | None = None,
) -> tuple[Any, str]:
    """Create-or-replace the recurring run `name`: one run at a time, no backfill of missed runs.

    Returns (recurring run, what happened: "created", "unchanged" or "replaced: <differences>").
    A replaced recurring run keeps its enabled/disabled mode.
    """
    cron = check_cron(cron)
    check_server(client, package, namespace)
    experiment_id = client.create_experiment(name=experiment).experiment_id
    description = fingerprint(package, params, pipeline_root, service_account)
    existing = find_recurring_runs(client, experiment_id, name)
    changes = (
        [f"{len(existing)} recurring runs had this name"]
        if len(existing) > 1
        else differences(existing[0], cron=cron, description=description)
        if existing
        else []
    )
    if existing and not changes:
        return existing[0], "unchanged"
    for old in existing:
        client.delete_recurring_run(old.recurring_run_id)
    enabled = all(old.mode != "DISABLE" for old in existing)
    created = client.create_recurring_run(
        experiment_id=experiment_id,
        job_name=name,
        description=description,
        cron_expression=cron,
        max_concurrency=1,
        no_catchup=True,
        params=params,
        pipeline_package_path=str(package),
        enabled=enabled,
        pipeline_root=pipeline_root,
        service_account=service_account,
    )
    return created, f"replaced: {'; '.join(changes)}" if existing else "created"


def toggle_recurring_run(client: kfp.Client, *, name: str, experiment: str, enable: bool) -> tuple[Any, bool]:
    """Enable or disable the existing recurring run `name`. Returns (recurring run, changed)."""
    experiment_id = find_experiment(client, experiment)
    found = find_recurring_runs(client, experiment_id, name)
    if not found:
        raise SpectrainError(
            f"no recurring run named {name!r} in experiment {experiment!r}",
            where="--name",
            fix=f"create it first: spectrain schedule --name {name} --cron '{CRON_EXAMPLE}'",
        )
    changed = False
    for recurring in found:
        if (recurring.mode == "ENABLE") != enable:
            (client.enable_recurring_run if enable else client.disable_recurring_run)(recurring.recurring_run_id)
            changed = True
    return found[0], changed


def recent_runs(client: kfp.Client, *, experiment: str, limit: int) -> list[Any]:
    """The experiment's `limit` most recent runs, newest first."""
    experiment_id = find_experiment(client, experiment)
    return list(client.list_runs(experiment_id=experiment_id, page_size=limit, sort_by="created_at desc").runs or [])


def runs_table(runs: list[Any]) -> str:
    """A plain table: run id, name, state, created (UTC)."""
    rows = [("RUN ID", "NAME", "STATE", "CREATED")]
    for run in runs:
        created = (
            run.created_at.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ") if run.created_at else "-"
        )
        rows.append((run.run_id or "-", run.display_name or "-", run.state or "-", created))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)
