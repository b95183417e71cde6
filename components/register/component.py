"""KFP component of the register step."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output

from spectrain import images


@dsl.component(base_image=images.ORCHESTRATE, install_kfp_package=False)
def register(
    base_model: str,
    mode: str,
    draft: Input[Model],
    draft_checkpoint: Input[Model],
    serve_result: Input[Artifact],
    regenerate_result: Input[Artifact],
    train_result: Input[Artifact],
    evaluate_result: Input[Artifact],
    export_result: Input[Artifact],
    evaluation: Input[Artifact],
    training_curves: Input[Artifact],
    registered_model_name: str,
    mlflow_tracking_uri: str,
    min_acceptance_length: float,
    pipeline_run_id: str,
    served: dict,
    result: Output[Artifact],
):
    """Log everything to MLflow, register the draft, and promote it to `champion` if it wins. ``served``: the vLLM
    cross-check's served speed ({} when it did not run): the k to serve with, and a gate against n-gram's speed."""
    import json

    from spectrain.models import registered_model_name as name_of
    from spectrain.steps import run_step
    from spectrain.components.register import REGISTER

    name = name_of(registered_model_name, base_model, mode)  # the pipeline's parameter is a prefix
    outcome = run_step(
        REGISTER,
        {
            "base_model": base_model,
            "draft_dir": draft.path,
            "checkpoint_dir": draft_checkpoint.path,  # logged so that a later run can continue this draft
            "registered_model_name": name,
            "tracking_uri": mlflow_tracking_uri,
            "min_acceptance_length": min_acceptance_length,
            "served": served,
            "pipeline_run_id": pipeline_run_id,  # MLflow params: every step's resolved config, from its result
            # everything it logs arrives as an artifact of this task: paths into other pods mean nothing here
            "plots": [
                f"{evaluation.path}/acceptance.png",
                f"{evaluation.path}/speedup.png",
                f"{training_curves.path}/training_curves.png",
            ],
            "step_results": {
                "serve": serve_result.path,
                "regenerate": regenerate_result.path,
                "train": train_result.path,
                "evaluate": evaluate_result.path,
                "export": export_result.path,
            },
        },
        label=mode,
    )
    with open(result.path, "w") as handle:
        json.dump(outcome, handle)


@dsl.component(base_image=images.ORCHESTRATE, install_kfp_package=False)
def warm_start_draft(
    source: str,
    base_model: str,
    mode: str,
    registered_model_name: str,
    mlflow_tracking_uri: str,
    parent: Output[Model],
    result: Output[Artifact],
):
    """Fetch the draft this run's ``mode`` continues (the champion, a version, an earlier run's) into ``parent``;
    empty when ``source`` is '' or the registry has no such alias yet."""
    import json

    from spectrain.models import registered_model_name as name_of
    from spectrain.steps import run_step
    from spectrain.components.register import WARM_START

    outcome = run_step(
        WARM_START,
        {
            "source": source,
            "base_model": base_model,
            "mode": mode,
            "registered_model_name": name_of(registered_model_name, base_model, mode),  # the parameter is a prefix
            "tracking_uri": mlflow_tracking_uri,
            "output_dir": parent.path,
        },
    )
    with open(result.path, "w") as handle:
        json.dump(outcome, handle)
