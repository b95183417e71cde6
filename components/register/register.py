"""Register step logic: MLflow run (params, metrics, curves, plots, draft), model version, champion alias."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from spectrain.components.register.config import RegisterConfig
from spectrain import draft_checkpoint, integrity, paths
from spectrain.config import is_secret, to_dict
from spectrain.drafts import SERVING_CONFIG, served_speculative_config
from spectrain.errors import SpectrainError
from spectrain.models import registered_model_name

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous_champion"
CHECKPOINT = "checkpoint"  # the run's artifact folder of the trained draft, what a warm start fetches
LOGGED = "spectrain.logged"  # run tag set once everything is logged
# version tag, when served speed was measured: 'true' (faster than n-gram beyond the timing noise), 'false' (slower
# beyond it: refused champion), 'within noise'; '' when not measured
BEATS_NGRAM_SERVED = "beats_ngram_served"
# evaluate's measured serving figures, logged as metrics (the curve adds expected_speedup_k<k>)
SERVING_METRICS = (
    "recommended_num_draft_tokens",
    "expected_speedup",
    "ngram_best_num_draft_tokens",
    "ngram_expected_speedup",
    "draft_step_cost_ratio",
)
# the vLLM cross-check's served speeds at batch 1, logged as served_<key>
SERVED_METRICS = ("speedup", "ngram_speedup", "draft_tokens_per_s", "ngram_tokens_per_s", "base_tokens_per_s")
# How a τ was measured (the evaluate step's result): two versions are compared only when all of these agree.
PROTOCOL = (
    "base_model",
    "base_model_revision",
    "chat_template_sha256",
    "eval_dataset_fingerprint",
    "num_prompts",
    "num_draft_tokens",
    "max_new_tokens",
    "dtype",
)


def tracking_uri(config: RegisterConfig) -> str:
    return config.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{paths.home() / 'mlflow.db'}"


def experiment_id(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment:
        return experiment.experiment_id
    artifact_location = None
    if client.tracking_uri.startswith("sqlite:"):
        artifact_location = (paths.home() / "mlartifacts").as_uri()  # not ./mlruns of whatever the cwd is
    return client.create_experiment(name, artifact_location=artifact_location)


MAX_PARAM_CHARS = 6000  # MLflow's limit on a parameter's value


def run_params(config: RegisterConfig, results: dict[str, dict]) -> dict[str, str]:
    """Every setting the run used, from each step's resolved config (``<step>.<field>``), this step's own
    included, plus ``config.params``; names that say they hold a secret are left out."""
    own = {
        k: v for k, v in to_dict(config).items() if k not in ("params", "step_results", "served")
    }  # served: a result
    params = {**config.params, **{f"register.{k}": v for k, v in own.items()}}
    for step, result in results.items():
        params.update({f"{step}.{k}": v for k, v in result.get("config", {}).items()})
    return {
        k: (v if isinstance(v, str) else json.dumps(v))[:MAX_PARAM_CHARS] for k, v in params.items() if not is_secret(k)
    }


def recipe_tags(train: dict) -> dict[str, str]:
    """The training settings that decide what a draft can be (draft vocabulary, context length, learning rate, as
    they ran, those the train step chose from the base included), and what ran it."""
    resolved = train.get("resolved") or {}
    tags = {f"train.{name}": str(value) for name, value in sorted(resolved.items())}
    if train.get("chosen_for_base"):
        tags["train.chosen_for_base"] = ", ".join(sorted(k for k in train["chosen_for_base"] if k != "why"))
    if train.get("placement"):
        tags["train.accelerator"] = str(train["placement"].get("accelerator", ""))
    return tags


def lineage_tags(train: dict) -> dict[str, str]:
    """Which registered version a warm-started draft continued ({} for a draft trained from scratch)."""
    parent = train.get("warm_start") or {}
    if parent.get("version"):
        return {
            "warm_started_from": f"{parent['registered_model']} v{parent['version']}",
            "parent_version": parent["version"],
        }
    return {"warm_started_from": parent["from"]} if parent else {}


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("SPECTRAIN_GIT_COMMIT", "unknown")


def load_results(paths: dict) -> dict[str, dict]:
    results = {}
    for step, path in paths.items():
        try:
            results[step] = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SpectrainError(f"cannot read the {step} step's result ({exc})", where=str(path)) from exc
    return results


def log_run(config: RegisterConfig, results: dict[str, dict], mode: str, logged: frozenset = frozenset()) -> dict:
    """Params, metrics, curves, results, plots and the draft into the active run; ``logged``: metric names an
    interrupted earlier attempt already logged there (not logged twice: their histories would repeat)."""
    evaluation, train = results.get("evaluate", {}), results.get("train", {})
    mlflow.log_params(run_params(config, results))
    metrics = {f"{step}_seconds": r["seconds"] for step, r in results.items() if "seconds" in r}
    if evaluation:
        metrics["acceptance_length"] = evaluation["acceptance_length"]
        metrics["ngram_acceptance_length"] = evaluation["ngram_acceptance_length"]
        metrics["ratio_to_ngram"] = evaluation["ratio_to_ngram"]
        if evaluation.get("untrained_acceptance_length") is not None:
            metrics["untrained_acceptance_length"] = evaluation["untrained_acceptance_length"]
        for position, rate in enumerate(evaluation["acceptance_rate_per_position"], start=1):
            metrics[f"acceptance_rate_position_{position}"] = rate
        for key in SERVING_METRICS:
            if evaluation.get(key) is not None:
                metrics[key] = evaluation[key]
        for point in evaluation.get("k_curve", []):
            metrics[f"expected_speedup_k{point['k']}"] = point["expected_speedup"]
        sources = evaluation.get("by_source", {})
        for name, measured in sources.items() if len(sources) > 1 else ():  # an eval set of several files
            metrics[f"acceptance_length.{name}"] = measured["acceptance_length"]
            metrics[f"ngram_acceptance_length.{name}"] = measured["ngram_acceptance_length"]
    if results.get("export", {}).get("num_speculative_tokens"):
        metrics["served_num_draft_tokens"] = results["export"]["num_speculative_tokens"]
    served = results.get("served", {})
    for key in SERVED_METRICS:  # the draft, the base alone and n-gram as vLLM served them (batch 1)
        if served.get(key) is not None:
            metrics[f"served_{key}"] = served[key]
    modelled = f"expected_speedup_k{served.get('draft_k')}"
    if served.get("speedup") and modelled in metrics:  # how far the torch cost model was off, at the k vLLM timed
        metrics["cost_model_over_served_speedup"] = metrics[modelled] / served["speedup"]
    if train:
        metrics.update(
            {
                "train_steps": train["steps"],
                "train_seconds_per_step": train["seconds_per_step"],
                "trainable_parameters": train["trainable_parameters"],
            }
        )
    mlflow.log_metrics({k: v for k, v in metrics.items() if k not in logged})
    for entry in train.get("history", []):  # curves: one point per logging step
        values = {
            k: v for k, v in entry.items() if (k == "loss" or k.startswith("head_")) and f"train_{k}" not in logged
        }
        if values:
            mlflow.log_metrics({f"train_{k}": float(v) for k, v in values.items()}, step=int(entry["step"]))
    for step, result in results.items():
        mlflow.log_dict({k: v for k, v in result.items() if k != "history"}, f"results/{step}.json")
    for plot in config.plots:  # this task's own files (KFP artifacts), never paths a result names in another pod
        mlflow.log_artifact(plot, "plots")
    if config.checkpoint_dir:  # the draft as it trained (not the Trainer's checkpoint-N folders): a warm start's
        for name in draft_checkpoint.FILES:
            mlflow.log_artifact(str(Path(config.checkpoint_dir) / name), CHECKPOINT)
    if config.draft_dir:
        mlflow.log_artifacts(config.draft_dir, "draft")
        mlflow.log_text(integrity.manifest(Path(config.draft_dir)), integrity.MANIFEST)  # its digest: a version tag
    return metrics


def own_run(client: MlflowClient, experiment: str, pipeline_run_id: str, mode: str):
    """The MLflow run an earlier attempt of this register (same pipeline run id and mode) created, if any."""
    if not pipeline_run_id:
        return None
    runs = client.search_runs(
        [experiment], f"tags.pipeline_run_id = '{pipeline_run_id}' and tags.mode = '{mode}'", max_results=1
    )
    return runs[0] if runs else None


DESCRIPTION = "spectrain draft heads (speculative decoding)"
REFUSED = re.compile(r"error code (401|403)\b")  # how MLflow's client reports a refusal of its auth layer


@contextlib.contextmanager
def registry_access(uri: str, doing: str) -> Iterator[None]:
    """A tracking server's refusal (MLflow's basic-auth: 401 without valid credentials, 403 without the
    permission) as one clear error naming who asked and what to set."""
    try:
        yield
    except mlflow.exceptions.MlflowException as exc:
        refused = REFUSED.search(str(exc))
        if refused is None:
            raise
        user = os.environ.get("MLFLOW_TRACKING_USERNAME")
        who = f"user {user!r}" if user else "a request without credentials"
        why = "is not signed in (HTTP 401)" if refused[1] == "401" else "lacks the permission (HTTP 403)"
        raise SpectrainError(
            f"the MLflow server refused to {doing}: {who} {why}",
            where=uri,
            fix="set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to a user who may write this experiment "
            "and registered model (on the cluster: the spectrain-mlflow Secret, the pipeline's own user); "
            "readers may only read",
        ) from None


def check_can_write(client: MlflowClient, experiment: str, name: str) -> None:
    """Before anything is logged: write access to the experiment (a tag rewritten on it) and to the registered
    model (created, or its description written again), so that a user who may only read is refused here, with
    nothing half-registered behind."""
    client.set_experiment_tag(experiment, "spectrain", "draft training runs")
    try:
        model = client.get_registered_model(name)
    except mlflow.exceptions.MlflowException as exc:
        if REFUSED.search(str(exc)):
            raise
        client.create_registered_model(name, description=DESCRIPTION)
        return
    client.update_registered_model(name, description=model.description or DESCRIPTION)


def alias_version(client: MlflowClient, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        return None


def served_tau(evaluation: dict, k: int | None) -> str:
    """τ by vLLM's definition (1 + accepted / drafts) at the served k: what `spectrain watch` expects production
    to show at batch 1 ('' when evaluate measured no curve reaching that k)."""
    point: dict = next((p for p in evaluation.get("k_curve", []) if p["k"] == k), {})
    return str(point.get("acceptance_length_per_draft", ""))


def protocol(evaluation: dict, base_model: str) -> dict[str, str]:
    """The measurement protocol of an evaluation, as registry tags (strings; '' where the result lacks one)."""
    values = {key: evaluation.get(key) for key in PROTOCOL}
    values["base_model"] = values["base_model"] or base_model
    return {key: "" if value is None else str(value) for key, value in values.items()}


def comparable(version, candidate: dict[str, str]) -> str:
    """Why ``version``'s τ cannot be compared with the candidate's (measured under :func:`protocol`); '' when it can."""
    if version.tags.get("base_model") != candidate["base_model"]:
        return f"v{version.version} drafts for another base model ({version.tags.get('base_model')})"
    differences = [
        f"{key} {version.tags.get(key) or 'not recorded'} vs {candidate[key] or 'not recorded'}"
        for key in PROTOCOL
        if version.tags.get(key, "") != candidate[key]
    ]
    if differences:
        return f"v{version.version} was measured under another protocol: " + "; ".join(differences)
    return ""


def set_alias(client: MlflowClient, name: str, alias: str, version) -> None:
    """Set an alias, retrying: two runs setting one alias at once collide in the store (a unique key)."""
    for attempt in range(5):
        try:
            client.set_registered_model_alias(name, alias, str(version))
            return
        except mlflow.exceptions.MlflowException:
            if attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))


def tau_of(version) -> float:
    return float(version.tags.get("acceptance_length") or 0.0)


def promote(client: MlflowClient, name: str, version: str, candidate: dict, config: RegisterConfig) -> tuple[str, str]:
    """Aliases, never stages: the candidate is `challenger`; it becomes `champion` (the old one
    `previous_champion`) when it passes the gate and beats the champion, measured the same way, by the margin."""
    tau = candidate.get("acceptance_length", 0.0)
    set_alias(client, name, CHALLENGER, version)
    if tau <= config.min_acceptance_length:
        return CHALLENGER, f"τ {tau:.3f} does not pass the gate min_acceptance_length={config.min_acceptance_length}"
    ngram = candidate.get("ngram_acceptance_length")
    if config.must_beat_ngram and ngram is not None and tau <= ngram:
        return CHALLENGER, (
            f"τ {tau:.3f} does not beat the free n-gram baseline (τ {ngram:.3f} on the same prompts; must_beat_ngram)"
        )
    slower = served_refusal(config.served) if config.must_beat_ngram else ""
    if slower:
        return CHALLENGER, slower
    champion = alias_version(client, name, CHAMPION)
    if champion is None:
        set_alias(client, name, CHAMPION, version)
        return settle(client, name, version, candidate, config, "first version to pass the gate")
    refusal = comparable(champion, protocol(candidate, config.base_model))
    if refusal:
        return CHALLENGER, f"not compared with the champion: {refusal}"
    if tau > tau_of(champion) + config.margin:
        set_alias(client, name, PREVIOUS, champion.version)
        set_alias(client, name, CHAMPION, version)
        return settle(
            client,
            name,
            version,
            candidate,
            config,
            f"τ {tau:.3f} beats champion v{champion.version} ({tau_of(champion):.3f}) by more than {config.margin}",
        )
    return CHALLENGER, (
        f"τ {tau:.3f} does not beat champion v{champion.version} ({tau_of(champion):.3f}) by more than {config.margin}"
    )


def versus_ngram(served: dict) -> str:
    """The draft's served speed against n-gram's: 'faster', 'slower', 'within noise' (components/evaluate/served.py),
    '' when not measured. A result from before the verdict had only the strict comparison, beats_ngram."""
    if "versus_ngram" in served:
        return served["versus_ngram"]
    if "beats_ngram" in served:
        return "faster" if served["beats_ngram"] else "slower"
    return ""


def served_tag(served: dict) -> str:
    """The BEATS_NGRAM_SERVED tag of a version: 'true', 'false', 'within noise' or ''."""
    verdict = versus_ngram(served)
    return {"faster": "true", "slower": "false"}.get(verdict, verdict)


def served_refusal(served: dict) -> str:
    """Why a draft that vLLM served slower than the n-gram lookup, beyond the timing noise, is not worth serving (''
    when it was faster, within the noise, or served speed was not measured)."""
    if versus_ngram(served) != "slower":
        return ""
    return (
        f"served at {served['draft_tokens_per_s']:.1f} tokens/s (k = {served['draft_k']}), slower than the free "
        f"n-gram lookup's {served['ngram_tokens_per_s']:.1f} tokens/s (k = {served['ngram_k']}) on the same prompts "
        f"and machine, beyond the timing noise (±{served.get('noise', 0.0):.0%}; must_beat_ngram)"
    )


def settle(
    client: MlflowClient, name: str, version: str, candidate: dict, config: RegisterConfig, reason: str
) -> tuple[str, str]:
    """Check after set: a concurrent run may have promoted a better draft against the same stale champion.

    Every promoting run ends by handing `champion` to the best comparable version that passed the
    gate, so whatever the interleaving, the last check leaves the best one in place.
    """
    eligible = [
        v
        for v in client.search_model_versions(f"name='{name}'")
        if not comparable(v, protocol(candidate, config.base_model))
        and tau_of(v) > config.min_acceptance_length
        and v.tags.get(BEATS_NGRAM_SERVED) != "false"  # refused by the gate on served speed
    ]
    best = max(eligible, key=lambda v: (tau_of(v), -int(v.version)))
    if str(best.version) != str(version) and tau_of(best) > candidate.get("acceptance_length", 0.0):
        set_alias(client, name, CHAMPION, best.version)
        return CHALLENGER, f"lost to v{best.version} (τ {tau_of(best):.3f}), promoted concurrently"
    return CHAMPION, reason


def rollback(name: str, tracking_uri_: str = "") -> dict:
    """`spectrain promote --rollback`: champion goes back to previous_champion (and the two swap)."""
    uri = tracking_uri(RegisterConfig(tracking_uri=tracking_uri_))
    with registry_access(uri, f"move the {CHAMPION} alias of '{name}'"):
        return _rollback(MlflowClient(tracking_uri=uri, registry_uri=uri), name, uri)


def _rollback(client: MlflowClient, name: str, uri: str) -> dict:
    previous, champion = alias_version(client, name, PREVIOUS), alias_version(client, name, CHAMPION)
    if previous is None or champion is None:
        raise SpectrainError(
            f"'{name}' has no {PREVIOUS if previous is None else CHAMPION} alias to roll back with",
            where=uri,
            fix="check the model name (`mlflow ui` lists them) and tracking URI",
        )
    set_alias(client, name, CHAMPION, previous.version)
    set_alias(client, name, PREVIOUS, champion.version)
    print(f"[promote] {name}: champion v{champion.version} -> v{previous.version}", flush=True)
    return {"registered_model": name, "champion": str(previous.version), "previous_champion": str(champion.version)}


def fetch_draft(client: MlflowClient, version, dest: Path) -> Path:
    """A registered version's draft, downloaded under ``dest`` and checked file by file against what was registered
    (spectrain.integrity): the way every spectrain download of a draft goes."""
    draft = mlflow.artifacts.download_artifacts(
        artifact_uri=version.source, dst_path=str(dest), tracking_uri=client.tracking_uri
    )
    try:
        record = Path(client.download_artifacts(version.run_id, integrity.MANIFEST, str(dest / "record")))
        manifest = record.read_text()
    except (mlflow.exceptions.MlflowException, OSError):
        manifest = ""
    integrity.verify(
        Path(draft), manifest, version.tags.get(integrity.DIGEST_TAG, ""), f"{version.name} v{version.version}"
    )
    return Path(draft)


def fetch(name: str, alias: str, dest: str, tracking_uri_: str = "") -> dict:
    """`spectrain fetch-champion`: the draft the alias points at, downloaded and verified, ready to serve."""
    uri = tracking_uri(RegisterConfig(tracking_uri=tracking_uri_))
    with registry_access(uri, f"read '{name}'"):
        return _fetch(MlflowClient(tracking_uri=uri, registry_uri=uri), name, alias, dest, uri)


def _fetch(client: MlflowClient, name: str, alias: str, dest: str, uri: str) -> dict:
    version = alias_version(client, name, alias)
    if version is None:
        raise SpectrainError(
            f"'{name}' has no {alias} alias",
            where=uri,
            fix="check the model name (`mlflow ui` lists them) and tracking URI",
        )
    draft = fetch_draft(client, version, Path(dest))
    print(f"[fetch] {name}@{alias} = v{version.version}: every file as registered, in {draft}", flush=True)
    return {"registered_model": name, "version": str(version.version), "draft_dir": str(draft)}


def run(config: RegisterConfig) -> dict:
    started = time.monotonic()
    results = load_results(config.step_results)
    missing = [plot for plot in config.plots if not Path(plot).is_file()]
    if missing:
        raise SpectrainError(
            f"no such plot file: {', '.join(missing)}",
            where="register.plots",
            fix="pass image files this step can read (in a pipeline: artifacts of the register task itself)",
        )
    evaluation = results.get("evaluate", {})
    mode = evaluation.get("mode") or results.get("train", {}).get("mode", "draft")
    uri = tracking_uri(config)
    mlflow.set_tracking_uri(uri)
    name = config.registered_model_name or registered_model_name("", config.base_model, mode)
    with registry_access(uri, f"register a version of '{name}'"), tempfile.TemporaryDirectory() as scratch:
        if config.served:
            config = with_served_k(config, results, Path(scratch))
        return _register(config, results, evaluation, mode, uri, name, started)


def with_served_k(config: RegisterConfig, results: dict, scratch: Path) -> RegisterConfig:
    """The draft to register, served with the k the vLLM cross-check measured fastest: a copy of the export's
    folder (a step's input stays as it came) whose serving config says so; the export's own choice (the torch cost
    model's) stays in the export result, as ``cost_model_vllm_speculative_config``."""
    export = results.setdefault("export", {})
    draft = scratch / "draft"
    shutil.copytree(config.draft_dir, draft)
    current = json.loads((draft / SERVING_CONFIG).read_text())
    chosen = served_speculative_config(current, config.served)
    (draft / SERVING_CONFIG).write_text(json.dumps(chosen, indent=2))
    export["cost_model_vllm_speculative_config"] = current
    export["vllm_speculative_config"] = chosen
    export["num_speculative_tokens"] = chosen["num_speculative_tokens"]
    results["served"] = config.served
    print(
        f"[register] served with k = {chosen['num_speculative_tokens']}, as measured in vLLM "
        f"(the cost model said {current['num_speculative_tokens']})",
        flush=True,
    )
    return dataclasses.replace(config, draft_dir=str(draft))


def _register(
    config: RegisterConfig, results: dict, evaluation: dict, mode: str, uri: str, name: str, started: float
) -> dict:
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = experiment_id(client, config.experiment)
    check_can_write(client, experiment, name)
    mlflow.set_experiment(experiment_id=experiment)
    # A retry (same pipeline run, same mode) finds the MLflow run and model version its first attempt made.
    previous = own_run(client, experiment, config.pipeline_run_id, mode)
    with mlflow.start_run(
        run_id=previous.info.run_id if previous else None,
        run_name=None if previous else config.run_name or f"{mode}-{config.pipeline_run_id or 'local'}",
        tags=None if previous else {"pipeline_run_id": config.pipeline_run_id, "mode": mode},  # found by a retry
    ) as active:
        if previous and previous.data.tags.get(LOGGED) == "true":
            print(f"[register] retry: run {previous.info.run_id} is already logged", flush=True)
            metrics = dict(previous.data.metrics)
        else:
            metrics = log_run(config, results, mode, frozenset(previous.data.metrics) if previous else frozenset())
            mlflow.set_tags(
                {
                    "mode": mode,
                    "base_model": config.base_model,
                    "pipeline_run_id": config.pipeline_run_id,
                    "git_commit": git_commit(),
                    LOGGED: "true",  # last: a retry after this point logs nothing twice
                }
            )
        run_id, artifact_uri = active.info.run_id, active.info.artifact_uri
    tags = {  # (check_can_write made sure the registered model exists)
        "mode": mode,
        "pipeline_run_id": config.pipeline_run_id,
        "git_commit": git_commit(),
        "dataset_fingerprint": str(results.get("train", {}).get("data_fingerprint", "")),
        "acceptance_length": str(evaluation.get("acceptance_length", "")),
        # how to serve it: the k of the registered draft's serving config (measured in vLLM, else export's), and what
        # evaluate expects of it
        "num_speculative_tokens": str(results.get("export", {}).get("num_speculative_tokens", "")),
        "served_acceptance_length": served_tau(evaluation, results.get("export", {}).get("num_speculative_tokens")),
        "expected_speedup": str(evaluation.get("expected_speedup", "")),
        "k_chosen_by": "served" if results.get("served") else "cost_model",
        BEATS_NGRAM_SERVED: served_tag(results.get("served", {})),
        **recipe_tags(results.get("train", {})),
        **lineage_tags(results.get("train", {})),
        **protocol(evaluation, config.base_model),
    }
    if config.draft_dir:  # what every download checks the draft's files against (spectrain.integrity)
        tags[integrity.DIGEST_TAG] = integrity.digest(integrity.manifest(Path(config.draft_dir)))
    existing = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    if existing:
        version = str(existing[0].version)
        print(f"[register] retry: {name} v{version} already registered by this run", flush=True)
    else:  # MLflow 3: register from the run's artifact URI (mlflow.register_model needs a logged MLflow Model)
        version = str(
            client.create_model_version(name, source=f"{artifact_uri}/draft", run_id=run_id, tags=tags).version
        )
    alias, reason = promote(client, name, version, evaluation, config)
    print(f"[register] {name} v{version} ({alias}): {reason}", flush=True)
    return {
        "registered_model": name,
        "version": version,
        "alias": alias,
        "promotion": reason,
        "run_id": run_id,
        "tracking_uri": uri,
        "metrics": metrics,
        "mode": mode,
        "warm_started_from": tags.get("warm_started_from", ""),
        "parent": results.get("train", {}).get("warm_start"),  # its lineage, as the summary shows it
        "k_chosen_by": tags["k_chosen_by"],
        "step_seconds": {step: r.get("seconds") for step, r in results.items()},
        "seconds": time.monotonic() - started,
    }
