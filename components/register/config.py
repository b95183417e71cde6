"""Config of the register step: MLflow tracking, model registry, and champion promotion."""

from __future__ import annotations

from dataclasses import dataclass

from spectrain import checks
from spectrain.config import field
from spectrain.drafts import MODES


def tracking_uri_field():
    return field(
        "",
        "MLflow tracking URI; empty: MLFLOW_TRACKING_URI, else a sqlite store in $SPECTRAIN_HOME",
        check=checks.url(schemes=("http", "https", "file", "sqlite", "databricks")),
    )


def registered_model_name_field():
    return field("", "registry name; empty: spectrain-<base model>-<mode>")


@dataclass
class RegisterConfig:
    """Log a pipeline run's results to MLflow, register its draft, promote it if it beats the champion."""

    tracking_uri: str = tracking_uri_field()
    experiment: str = field("spectrain", "MLflow experiment name")
    registered_model_name: str = registered_model_name_field()
    run_name: str = field("", "MLflow run name; empty: <mode>-<pipeline run id>")
    pipeline_run_id: str = field(
        "",
        "KFP run id: recorded as a tag, and what lets a retry of this step find and complete the MLflow run and "
        "model version its first attempt created (empty: every call registers anew)",
    )
    base_model: str = field("embedded", "base model spec the draft was trained for")
    draft_dir: str = field("", "exported draft directory (export step output)")
    checkpoint_dir: str = field(
        "",
        "the train step's output: its draft (weights, modelopt state, train_result.json) is logged under checkpoint/, "
        "which a later run continues (warm start) from the registered version",
    )
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
    served: dict = field(
        {},
        "the vLLM cross-check's served speed (its result's `served`): when given, the registered draft is served "
        "with the k measured fastest there (not the torch cost model's), and with must_beat_ngram it must also "
        "decode faster than n-gram served on the same prompts and machine to become champion",
    )


@dataclass
class WarmStartConfig:
    """Bring the draft a run continues into a folder the train step reads (empty when the run starts afresh)."""

    source: str = field(
        "",
        "the draft to continue: '' (none: a new draft), an alias of this base and mode's registered model "
        "('champion', 'previous_champion'), models:/NAME@ALIAS or models:/NAME/VERSION, or an earlier run's "
        "train_heads output (a folder or its s3:// copy)",
    )
    base_model: str = field("embedded", "the base model of the run: with the mode, it names the registered model")
    mode: str = field("eagle3", "the draft mode of the run", check=checks.one_of(*MODES))
    registered_model_name: str = registered_model_name_field()
    tracking_uri: str = tracking_uri_field()
    output_dir: str = field("warm-start", "where the draft is put (created empty when source is '')")
