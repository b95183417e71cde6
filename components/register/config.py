"""Config of the register step: MLflow tracking, model registry, and champion promotion."""

from __future__ import annotations

from dataclasses import dataclass

from spectrain import checks
from spectrain.config import field


@dataclass
class RegisterConfig:
    """Log a pipeline run's results to MLflow, register its draft, promote it if it beats the champion."""

    tracking_uri: str = field(
        "",
        "MLflow tracking URI; empty: MLFLOW_TRACKING_URI, else a sqlite store in $SPECTRAIN_HOME",
        check=checks.url(schemes=("http", "https", "file", "sqlite", "databricks")),
    )
    experiment: str = field("spectrain", "MLflow experiment name")
    registered_model_name: str = field("", "registry name; empty: spectrain-<base model>-<mode>")
    run_name: str = field("", "MLflow run name; empty: <mode>-<pipeline run id>")
    pipeline_run_id: str = field(
        "",
        "KFP run id: recorded as a tag, and what lets a retry of this step find and complete the MLflow run and "
        "model version its first attempt created (empty: every call registers anew)",
    )
    base_model: str = field("embedded", "base model spec the draft was trained for")
    draft_dir: str = field("", "exported draft directory (export step output)")
    step_results: dict = field({}, "step name -> result JSON file of that step (train, evaluate, export, ...)")
    plots: list = field([], "image files logged under the run's plots/ (evaluate's acceptance plot, training curves)")
    params: dict = field(
        {},
        "extra parameters to record next to every step's resolved config, which is logged "
        "as <step>.<field> from the step results (names of secrets are dropped)",
    )
    min_acceptance_length: float = field(
        1.0, "gate: a draft whose τ is not above this is never promoted", check=checks.at_least(0.0, 1.0)
    )
    must_beat_ngram: bool = field(
        True,
        "promote only a draft whose τ beats the n-gram prompt-lookup baseline (free in "
        "vLLM) on the same prompts, so a champion is always worth serving",
    )
    margin: float = field(
        0.0, "promote only when τ beats the champion's by more than this", check=checks.at_least(0.0, 0.05)
    )
