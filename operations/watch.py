"""`spectrain watch`: the served draft's acceptance in production, against its champion's, and retraining on a drop.

Each reading scrapes vLLM's spec-decode counters from every endpoint (`/metrics`, Prometheus text; one URL
per replica), keeps the snapshots of the last ``window_s`` and computes τ and the per-position acceptance
of the window from their increase (spectrain.specdecode: a restarted server's reset counts as a reset, not
as negative traffic; replicas add up). Or, with ``prometheus_url``, it asks a Prometheus server that scrapes
the replicas for the window's ``sum(increase(...))`` of each counter (Prometheus does the same reset
handling per series). Or, with ``prompts`` (servers that do not speculate), each reading re-measures the
champion: vLLM serves the base with its draft from the registry on prompts from that source. A window with fewer than ``min_drafts`` drafts (no traffic, or a server that just
restarted) gives no verdict. τ more than ``margin`` below the champion's τ at the k it is served with
(registry tag ``served_acceptance_length``; an older version's ``acceptance_length``) opens a drop; a drop that lasts ``sustain_s`` starts one retraining (``retrain``): one per drop, none while
one is in flight. τ back above the line closes the drop.

Every reading is recorded in MLflow (experiment `spectrain-watch`, one run per deployment: the metric
history `production_acceptance_length` next to `champion_acceptance_length`), and so is the watcher's
state, so `--once` (a Kubernetes CronJob) goes on where the last reading stopped.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import subprocess
import sys
import time
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spectrain import checks, paths
from spectrain.components.regenerate.config import RETRAINING_HELDOUT
from spectrain.config import field
from spectrain.errors import SpectrainError
from spectrain.specdecode import Counters, increase, parse

EXPERIMENT = "spectrain-watch"
DEPLOYMENT_TAG = "spectrain.watch.deployment"
STATE_ARTIFACT = "watch/state.json"
IN_FLIGHT = ("PENDING", "RUNNING", "PAUSED", "CANCELING", "RUNTIME_STATE_UNSPECIFIED")  # KFP run states


@dataclass
class WatchConfig:
    """Watch a served draft's acceptance and retrain when it drops below its champion's."""

    registered_model: str = field(
        "", "the registry entry whose champion is served, e.g. spectrain-smollm2-135m-instruct-eagle3"
    )
    endpoints: str = field(
        "",
        "the vLLM servers that speculate with it, comma-separated base URLs (one per replica); each one's "
        "/metrics is read",
        check=checks.url(several=True),
    )
    prometheus_url: str = field(
        "",
        "instead of --endpoints: a Prometheus server that scrapes them; each reading asks its query API for "
        "the window's sum(increase(...)) of vLLM's counters",
        check=checks.url(),
    )
    prompts: str = field(
        "",
        "instead of counters, for servers that do not speculate: every reading re-measures the champion on "
        "prompts from this dataset source (e.g. an s3:// prefix of logged traffic) with the evaluate step's vLLM "
        "measurement (vLLM serves the base with the champion's draft here, in the serve environment)",
        check=checks.data_source(optional=True),
    )
    num_prompts: int = field(40, "with --prompts: the first N prompts of the source", check=checks.at_least(1, 40))
    max_new_tokens: int = field(64, "with --prompts: greedy tokens per prompt", check=checks.at_least(1, 64))
    prometheus_selector: str = field(
        "",
        "with --prometheus-url: the label matchers of the serving pods' series, e.g. "
        '\'{namespace="serving",model_name="base"}\' (empty: every vLLM in that Prometheus)',
    )
    api_key: str = field("", "API key of the servers (the VLLM_API_KEY variable wins)")
    deployment: str = field("", "this deployment's name in MLflow (default: the registered model)")
    tracking_uri: str = field(
        "",
        "MLflow tracking URI; empty: MLFLOW_TRACKING_URI, else the local store in $SPECTRAIN_HOME",
        check=checks.url(schemes=("http", "https", "file", "sqlite", "databricks")),
    )
    window_s: float = field(600.0, "τ is computed over the last this many seconds", check=checks.above(0, 600))
    min_drafts: int = field(
        100, "a window with fewer drafts gives no verdict (too little traffic to judge)", check=checks.at_least(1, 100)
    )
    margin: float = field(
        0.1, "a drop: production τ more than this below the champion's registered τ", check=checks.at_least(0.0, 0.1)
    )
    sustain_s: float = field(
        1800.0, "retrain when a drop has lasted this many seconds (0: at once)", check=checks.at_least(0.0, 1800)
    )
    interval_s: float = field(60.0, "seconds between readings (without --once)", check=checks.above(0, 60))
    once: bool = field(False, "take one reading and exit (a CronJob); the state is kept in MLflow")
    readings: int = field(0, "stop after this many readings (0: until interrupted)", check=checks.at_least(0, 10))
    retrain: str = field(
        "none",
        "on a sustained drop: 'submit' a KFP run with the champion's parameters, 'local' starts `spectrain run` "
        "for the champion's base model and mode here, 'none' only records it",
        check=checks.one_of("none", "submit", "local"),
    )
    dataset: str = field(
        "", "the retraining run's dataset (fresh traffic, e.g. an s3:// prefix); empty: the champion's"
    )
    warm_start: bool = field(
        True,
        "the retraining continues the champion's draft (its registered version) on the new data with its own "
        "budget, instead of training a new draft; the gate is the same (it must beat the champion and n-gram)",
    )
    heldout: int = field(
        RETRAINING_HELDOUT,
        "with a new dataset: the retraining holds out this many of its conversations (never trained on) and "
        "reports τ on them beside τ on the champion's eval set, per source (0: none)",
        check=checks.at_least(0, 20),
    )
    kfp_host: str = field("", "retrain submit: KFP API URL (empty: in-cluster)", check=checks.url())
    kfp_namespace: str = field("", "retrain submit: KFP namespace (multi-user installations)")
    package: str = field("", "retrain submit: compiled pipeline YAML (default: pipelines/speculative_decoding.yaml)")

    def validate(self) -> None:
        if not self.registered_model:
            raise SpectrainError(
                "no registered model given",
                where="watch.registered_model",
                fix="name the registry entry whose champion the servers use (`mlflow ui` lists them)",
            )
        sources = [name for name in ("endpoints", "prometheus_url", "prompts") if getattr(self, name)]
        if len(sources) != 1:
            raise SpectrainError(
                f"{' and '.join(sources)} given: one source only" if sources else "nothing to read τ from",
                where="watch." + " / watch.".join(sources or ("endpoints", "prometheus_url", "prompts")),
                fix="name the vLLM servers (--endpoints URL,URL), the Prometheus that scrapes them "
                "(--prometheus-url URL), or prompts to re-measure the champion on (--prompts SOURCE): one of them",
            )
        if self.prometheus_selector and not SELECTOR.fullmatch(self.prometheus_selector):
            raise SpectrainError(
                f"watch.prometheus_selector = {self.prometheus_selector!r} is not a PromQL label selector",
                where="watch.prometheus_selector",
                fix='write label matchers in braces, e.g. \'{namespace="serving",model_name="base"}\'',
            )


# -- readings -----------------------------------------------------------------------------------------------


# vLLM's counters as a Prometheus server stores them (the _total series), by Counters field
PROMETHEUS_SERIES = {
    "drafts": "vllm:spec_decode_num_drafts_total",
    "draft_tokens": "vllm:spec_decode_num_draft_tokens_total",
    "accepted": "vllm:spec_decode_num_accepted_tokens_total",
}
PER_POSITION_SERIES = "vllm:spec_decode_num_accepted_tokens_per_pos_total"
SELECTOR = re.compile(r"\{\s*(\w+\s*(=|!=|=~|!~)\s*\"(\\.|[^\"\\])*\"\s*(,\s*|(?=\})))*\}")


def prometheus_query(url: str, expression: str, at: float, timeout_s: float = 10.0) -> list[dict]:
    """An instant query of a Prometheus server's HTTP API at time ``at``: its result vector."""
    query = urllib.parse.urlencode({"query": expression, "time": f"{at:.3f}"})
    with urllib.request.urlopen(f"{url.rstrip('/')}/api/v1/query?{query}", timeout=timeout_s) as response:
        body = json.load(response)
    if body.get("status") != "success":
        raise ValueError(f"Prometheus refused {expression!r}: {body.get('error')}")
    return body["data"]["result"]


def prometheus_window(config: WatchConfig, now: float) -> Counters:
    """The window's increase of every counter, summed over every series the selector matches: Prometheus handles
    restarts (a reset is not a decrease) and replicas come and go as series."""
    span = f"{config.prometheus_selector}[{config.window_s:.0f}s]"

    def total(series: str) -> float:
        result = prometheus_query(config.prometheus_url, f"sum(increase({series}{span}))", now)
        return float(result[0]["value"][1]) if result else 0.0

    positions = prometheus_query(
        config.prometheus_url, f"sum by (position) (increase({PER_POSITION_SERIES}{span}))", now
    )
    return Counters(
        **{name: total(series) for name, series in PROMETHEUS_SERIES.items()},
        per_position={int(r["metric"]["position"]): float(r["value"][1]) for r in positions},
    )


def measured_on_prompts(config: WatchConfig, version: Any, client: Any) -> Counters:
    """The champion's draft, downloaded from the registry, served by vLLM with the base at the served k, on the
    first ``num_prompts`` prompts of ``prompts`` (the evaluate step's vLLM measurement): its counters."""
    import tempfile

    from spectrain.components.evaluate import VLLM_CROSSCHECK
    from spectrain.components.register.register import fetch_draft
    from spectrain.steps import run_step

    source = client.get_run(version.run_id)
    with tempfile.TemporaryDirectory(prefix="spectrain-watch-") as tmp:
        draft = str(fetch_draft(client, version, Path(tmp)))  # refused if its files are not those registered
        measured = run_step(
            VLLM_CROSSCHECK,
            {
                "base_model": source.data.params.get("register.base_model", "embedded"),
                "draft_dir": draft,
                "mode": version.tags.get("mode") or source.data.tags.get("mode", "eagle3"),
                "dataset": config.prompts,
                "num_prompts": config.num_prompts,
                "num_draft_tokens": int(version.tags.get("num_speculative_tokens") or 3),
                "max_new_tokens": config.max_new_tokens,
                "output": str(Path(tmp) / "measured.json"),
                "served_speed": False,  # τ is the reading; timing every k would start six more servers each time
            },
        )
    drafts = measured["drafts"]
    rates = measured["acceptance_rate_per_position"]
    return Counters(
        drafts, measured["draft_tokens"], measured["accepted_tokens"], {i: r * drafts for i, r in enumerate(rates)}
    )


def metrics_url(endpoint: str) -> str:
    """`/metrics` of a server given as its base URL (an OpenAI base URL ending in /v1 is accepted too)."""
    return endpoint.strip().rstrip("/").removesuffix("/v1") + "/metrics"


def scrape(endpoint: str, api_key: str, timeout_s: float = 10.0) -> Counters:
    request = urllib.request.Request(metrics_url(endpoint), headers={"Authorization": f"Bearer {api_key}"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return parse(response.read().decode())


@dataclass
class State:
    """What a watcher remembers between readings (kept in MLflow for --once)."""

    snapshots: dict[str, list[list]] = dataclasses.field(default_factory=dict)  # endpoint -> [[time, counters]]
    below_since: float | None = None
    drop_handled: bool = False  # this drop has had its retraining
    retraining: dict | None = None  # {"how", "id", "started"}
    readings: int = 0


def window(state: State, now: float, window_s: float) -> Counters:
    """The window's increase over every endpoint; drops snapshots older than the window's first point."""
    total = Counters()
    for endpoint, snapshots in state.snapshots.items():
        older = [s for s in snapshots if s[0] <= now - window_s]
        kept = older[-1:] + [s for s in snapshots if s[0] > now - window_s]
        state.snapshots[endpoint] = kept
        total = total + increase([Counters.from_dict(counters) for _, counters in kept])
    return total


@dataclass
class Verdict:
    tau: float | None  # None: no verdict (too little traffic)
    champion_tau: float
    drafts: float
    status: str  # collecting | ok | below | retrain | handled | in flight
    message: str
    per_position: list[float] = dataclasses.field(default_factory=list)


def decide(state: State, counted: Counters, champion_tau: float, now: float, config: WatchConfig) -> Verdict:
    """The verdict of one reading, updating the drop in ``state`` (pure: no I/O)."""
    line = champion_tau - config.margin
    if counted.drafts < config.min_drafts:
        return Verdict(
            None,
            champion_tau,
            counted.drafts,
            "collecting",
            f"{counted.drafts:.0f} drafts in the window, fewer than {config.min_drafts}: no verdict",
        )
    tau = counted.acceptance_length
    verdict = Verdict(tau, champion_tau, counted.drafts, "ok", "", counted.acceptance_rate_per_position)
    if tau >= line:
        if state.below_since is not None:
            verdict.message = "back above the line: the drop is over"
        state.below_since, state.drop_handled = None, False
        verdict.message = verdict.message or f"τ {tau:.3f} ≥ {line:.3f} (champion {champion_tau:.3f} - margin)"
        return verdict
    state.below_since = state.below_since if state.below_since is not None else now
    lasted = now - state.below_since
    below = f"τ {tau:.3f} < {line:.3f} (champion {champion_tau:.3f} - margin) for {lasted:.0f} s"
    if state.retraining is not None:
        verdict.status, verdict.message = "in flight", f"{below}; retraining {state.retraining['id']} is in flight"
    elif state.drop_handled:
        verdict.status, verdict.message = "handled", f"{below}; this drop's retraining was started already"
    elif lasted >= config.sustain_s:
        verdict.status, verdict.message = "retrain", f"{below} ≥ sustain_s {config.sustain_s:.0f}: retraining"
    else:
        verdict.status, verdict.message = "below", f"{below}; retraining after {config.sustain_s:.0f} s"
    return verdict


# -- MLflow: the champion, the history, the state -----------------------------------------------------------


def tracking_uri(config: WatchConfig) -> str:
    return config.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{paths.home() / 'mlflow.db'}"


def champion(client: Any, name: str) -> Any:
    import mlflow

    try:
        return client.get_model_version_by_alias(name, "champion")
    except mlflow.exceptions.MlflowException as exc:
        raise SpectrainError(
            f"'{name}' has no champion to compare production with ({exc.message.splitlines()[0]})",
            where="watch.registered_model",
            fix="name a registered model that has a champion (`mlflow ui` lists them), or check the tracking URI",
        ) from None


def deployment_run(client: Any, deployment: str) -> Any:
    """The MLflow run holding this deployment's readings (created on the first reading)."""
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        artifacts = (paths.home() / "mlartifacts").as_uri() if client.tracking_uri.startswith("sqlite:") else None
        experiment_id = client.create_experiment(EXPERIMENT, artifact_location=artifacts)
    else:
        experiment_id = experiment.experiment_id
    runs = client.search_runs([experiment_id], f"tags.`{DEPLOYMENT_TAG}` = '{deployment}'", max_results=1)
    if runs:
        return runs[0]
    return client.create_run(experiment_id, run_name=f"watch-{deployment}", tags={DEPLOYMENT_TAG: deployment})


def load_state(client: Any, run: Any) -> State:
    import mlflow

    try:
        data = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/{STATE_ARTIFACT}")
    except Exception:  # the first reading: nothing stored yet
        return State()
    return State(**data)


def record(client: Any, run: Any, state: State, verdict: Verdict, now: float) -> None:
    from mlflow.entities import Metric

    stamp, step = int(now * 1000), state.readings
    values = {"champion_acceptance_length": verdict.champion_tau, "window_drafts": verdict.drafts}
    if verdict.tau is not None:
        values["production_acceptance_length"] = verdict.tau
        values["below_champion"] = float(verdict.status not in ("ok",))
        values |= {f"production_acceptance_rate_position_{i}": r for i, r in enumerate(verdict.per_position, 1)}
    client.log_batch(run.info.run_id, metrics=[Metric(k, float(v), stamp, step) for k, v in values.items()])
    client.log_dict(run.info.run_id, dataclasses.asdict(state), STATE_ARTIFACT)


# -- retraining -----------------------------------------------------------------------------------------------


def retraining_in_flight(state: State, config: WatchConfig) -> bool:
    if state.retraining is None:
        return False
    if state.retraining["how"] == "local":
        import psutil  # (the CLI that imports this module runs in every environment; psutil only matters here)

        try:
            process = psutil.Process(int(state.retraining["id"]))
            return process.status() != psutil.STATUS_ZOMBIE and "spectrain" in " ".join(process.cmdline())
        except psutil.Error:  # gone (or its pid now someone else's, not ours to read)
            return False
    from spectrain.operations import kfp_client

    client = kfp_client.make_client(config.kfp_host or None, config.kfp_namespace)
    with kfp_client.api_errors(config.kfp_host or None):
        return str(client.get_run(state.retraining["id"]).state) in IN_FLIGHT


def start_retraining(champion_version: Any, client: Any, config: WatchConfig, now: float) -> dict:
    """Start one retraining run like the champion's: a KFP run with its pipeline run's parameters, or a local
    `spectrain run` for its base model and mode. ``dataset`` replaces the dataset either way (and ``heldout`` of its
    conversations are kept out for evaluation); with ``warm_start`` the run continues the champion's version."""
    stamp = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    source = client.get_run(champion_version.run_id)
    mode = champion_version.tags.get("mode") or source.data.tags.get("mode", "")
    parent = f"models:/{champion_version.name}/{champion_version.version}" if config.warm_start else ""
    if config.retrain == "local":
        base = source.data.params.get("register.base_model", "embedded")
        command = [sys.executable, "-m", "spectrain.cli", "run", "--modes", mode, "--base-model", base]
        command += ["--dataset", config.dataset] if config.dataset else []
        if config.dataset and config.heldout:
            command += ["--regenerate-options", json.dumps({"heldout": config.heldout})]
        command += ["--warm-start", parent] if parent else []
        log = paths.home() / "watch" / f"retrain-{stamp}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as handle:
            process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
        return {"how": "local", "id": str(process.pid), "started": now, "log": str(log)}
    from spectrain.operations import kfp_client
    from spectrain.pipelines.settings import DEFAULT_YAML

    pipeline_run = source.data.tags.get("pipeline_run_id", "")
    kfp = kfp_client.make_client(config.kfp_host or None, config.kfp_namespace)
    with kfp_client.api_errors(config.kfp_host or None):
        if not pipeline_run:
            raise SpectrainError(
                f"champion v{champion_version.version} records no pipeline run: nothing to retrain like it",
                where="watch.retrain",
                fix="retrain with `spectrain submit`, or use retrain 'local'",
            )
        parameters = dict(kfp.get_run(pipeline_run).runtime_config.parameters or {})
        if config.dataset:
            parameters["dataset"] = config.dataset
            if config.heldout:  # the new data's own held-out prompts, beside the champion's eval set
                parameters["regenerate_options"] = {
                    **(parameters.get("regenerate_options") or {}),
                    "heldout": config.heldout,
                }
        if parent:
            parameters["warm_start"] = parent
        run, _ = kfp_client.submit_run(
            kfp,
            package=Path(config.package) if config.package else DEFAULT_YAML,
            params=parameters,
            run_name=f"retrain-{config.deployment or config.registered_model}-{stamp}",
            experiment="spectrain",
            namespace=config.kfp_namespace or None,
        )
    return {"how": "submit", "id": run.run_id, "started": now, "parameters": parameters}


# -- the loop -----------------------------------------------------------------------------------------------


def reading(config: WatchConfig, client: Any, now: float | None = None) -> dict:
    """One reading: scrape, judge, maybe retrain, record."""
    now = time.time() if now is None else now
    deployment = config.deployment or config.registered_model
    version = champion(client, config.registered_model)
    # production runs the served k: compare with the champion's τ there (older versions: τ at the evaluation's k)
    champion_tau = float(version.tags.get("served_acceptance_length") or version.tags.get("acceptance_length") or 0.0)
    run = deployment_run(client, deployment)
    state = load_state(client, run)
    api_key = os.environ.get("VLLM_API_KEY") or config.api_key
    unreachable = []
    counted: Counters | None = None  # the window's increase, where no snapshots are kept here
    if config.prompts:  # a fresh measurement each reading
        counted = measured_on_prompts(config, version, client)
    if config.prometheus_url:  # Prometheus keeps the history
        try:
            counted = prometheus_window(config, now)
        except (OSError, ValueError) as exc:
            unreachable.append(f"{config.prometheus_url} ({exc})")
            counted = Counters()
    for endpoint in filter(None, (e.strip() for e in config.endpoints.split(","))):
        try:
            counters = scrape(endpoint, api_key)
        except (OSError, ValueError) as exc:  # a server restarting, or gone: its snapshots age out
            unreachable.append(f"{endpoint} ({exc})")
            continue
        state.snapshots.setdefault(endpoint, []).append([now, counters.to_dict()])
    if state.retraining is not None and not retraining_in_flight(state, config):
        state.retraining = None
    counted = counted if counted is not None else window(state, now, config.window_s)
    verdict = decide(state, counted, champion_tau, now, config)
    started = None
    if verdict.status == "retrain" and config.retrain != "none":
        started = start_retraining(version, client, config, now)
        state.retraining, state.drop_handled = started, True
        verdict.message += f": started {started['how']} run {started['id']}"
    elif verdict.status == "retrain":
        state.drop_handled = True
        verdict.message += " (retrain 'none': recorded only)"
    state.readings += 1
    record(client, run, state, verdict, now)
    if started:
        client.set_tag(run.info.run_id, f"spectrain.watch.retraining.{state.readings}", json.dumps(started))
    return {
        "deployment": deployment,
        "time": now,
        "status": verdict.status,
        "acceptance_length": verdict.tau,
        "champion_acceptance_length": champion_tau,
        "champion_version": str(version.version),
        "window_drafts": verdict.drafts,
        "message": verdict.message,
        "unreachable": unreachable,
        "retraining": started,
        "run_id": run.info.run_id,
    }


def run(config: WatchConfig) -> dict:
    from mlflow import MlflowClient

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line per reading, nothing else
    uri = tracking_uri(config)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    last: dict = {}
    count = 0
    while True:
        last = reading(config, client)
        count += 1
        print(line(last), flush=True)
        if config.once or (config.readings and count >= config.readings):
            return last
        time.sleep(config.interval_s)


def line(result: dict) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(result["time"]))
    tau = "τ   -  " if result["acceptance_length"] is None else f"τ {result['acceptance_length']:.3f}"
    text = f"[watch {stamp}] {result['deployment']}: {tau} ({result['window_drafts']:.0f} drafts) {result['status']}"
    text += f": {result['message']}"
    if result["unreachable"]:
        text += f"; unreachable: {', '.join(result['unreachable'])}"
    return text
