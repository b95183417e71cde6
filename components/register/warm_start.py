"""The warm-start step: the draft a run continues, fetched into a folder the train step reads.

Where it comes from decides how it is fetched: a registered version (an alias such as ``champion`` of the run's
registered model, or a ``models:/`` URI) from the MLflow run that registered it, with a ``lineage.json`` naming
the version (the train step reports it, register tags the new version with it); an earlier run's train_heads
output from S3 or a folder. Resolved when the run runs, not when it is submitted: a nightly schedule continues
the champion of that night.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from spectrain import draft_checkpoint, s3
from spectrain.components.register.config import RegisterConfig, WarmStartConfig
from spectrain.components.register.register import CHECKPOINT, alias_version, registry_access, tracking_uri
from spectrain.console import warn
from spectrain.errors import SpectrainError
from spectrain.models import registered_model_name

MODELS_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))$")


def registered(config: WarmStartConfig) -> tuple[str, str, str] | None:
    """(name, alias, version) when ``source`` names a registered version, else None (a folder or an s3:// copy)."""
    source = config.source
    uri = MODELS_URI.match(source)
    if uri:
        return uri["name"], uri["alias"] or "", uri["version"] or ""
    if source.startswith("models:/"):
        raise SpectrainError(
            f"warm start {source!r} is not a registry URI spectrain reads",
            where="warm_start.source",
            fix="use models:/NAME@ALIAS or models:/NAME/VERSION",
        )
    if s3.is_s3(source) or "/" in source or Path(source).exists():
        return None
    name = config.registered_model_name or registered_model_name("", config.base_model, config.mode)
    return name, source, ""


def run(config: WarmStartConfig) -> dict:
    started = time.monotonic()
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    if not config.source:
        return {"warm_start": None, "seconds": time.monotonic() - started}
    version = registered(config)
    if version:
        lineage = from_registry(config, output, *version)
        if not lineage:
            return {"warm_start": None, "seconds": time.monotonic() - started}
    else:  # an earlier run's train_heads output (the train step checks that it is a whole draft)
        if not draft_checkpoint.fetch_files(config.source, output):
            raise SpectrainError(
                f"no trained draft at {config.source}",
                where="warm_start.source",
                fix="pass an earlier run's train_heads output folder, its s3:// copy, or a registered version",
            )
        lineage = {"from": config.source}
    (output / draft_checkpoint.LINEAGE).write_text(json.dumps(lineage, indent=2))
    print(
        f"[warm-start] {config.mode}: continuing {lineage.get('registered_model', lineage['from'])}"
        + (f" v{lineage['version']}" if lineage.get("version") else ""),
        flush=True,
    )
    return {"warm_start": lineage, "seconds": time.monotonic() - started}


def from_registry(config: WarmStartConfig, output: Path, name: str, alias: str, number: str) -> dict:
    """The registered version's trained draft (its run's checkpoint/ artifacts) into ``output``; its lineage."""
    uri = tracking_uri(RegisterConfig(tracking_uri=config.tracking_uri))
    with registry_access(uri, f"read '{name}'"):
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        try:
            version = alias_version(client, name, alias) if alias else client.get_model_version(name, number)
        except mlflow.exceptions.MlflowException:
            version = None
        if version is None and alias:  # a first run has no champion yet: it trains a new draft
            warn(f"the registry at {uri} has no {name}@{alias}: a new draft is trained, not a continued one")
            return {}
        if version is None:
            raise SpectrainError(
                f"no version {number} of {name} at {uri}",
                where="warm_start.source",
                fix="check the name and version (`mlflow ui` lists them), or leave warm_start empty",
            )
        try:
            mlflow.artifacts.download_artifacts(
                run_id=version.run_id, artifact_path=CHECKPOINT, dst_path=str(output), tracking_uri=uri
            )
        except (mlflow.exceptions.MlflowException, OSError) as exc:
            raise SpectrainError(
                f"{name} v{version.version} has no trained draft to continue ({exc})",
                where=f"{uri}: run {version.run_id}, {CHECKPOINT}/",
                fix="warm-start from a version registered by this spectrain (it logs the train step's draft), or "
                "leave warm_start empty",
            ) from exc
    for path in (output / CHECKPOINT).iterdir():  # download_artifacts keeps the artifact folder's name
        path.replace(output / path.name)
    (output / CHECKPOINT).rmdir()
    return {
        "from": f"models:/{name}/{version.version}",
        "registered_model": name,
        "version": str(version.version),
        "alias": alias,
        "run_id": version.run_id,
    }
