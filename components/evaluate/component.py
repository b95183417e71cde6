"""KFP component of the evaluate step."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from spectrain import images


@dsl.component(base_image=images.TRAIN, install_kfp_package=False)
def evaluate(
    base_model: str,
    draft_checkpoint: Input[Model],
    mode: str,
    eval_dataset: str,
    extra_eval_dataset: Input[Dataset],
    num_prompts: int,
    num_draft_tokens: int,
    max_new_tokens: int,
    options: dict,
    metrics: Output[Metrics],
    evaluation: Output[Artifact],
    result: Output[Artifact],
) -> float:
    """Exact acceptance length τ of the draft on held-out prompts; returns τ by vLLM's definition (1 + accepted /
    drafts), the figure the vLLM cross-check compares with its counters. ``extra_eval_dataset``: regenerate's
    held-out conversations of the run's data (empty unless it held some out), reported per source beside τ.
    ``options`` holds any other EvaluateConfig field (the k curve's max_k, the batch sizes and repeats of the step
    timings, the untrained baseline, ...)."""
    import json

    from spectrain.steps import run_step
    from spectrain.components.evaluate import EVALUATE

    # `options` first: a parameter of its own wins (spectrain run/submit refuse such overlaps up front).
    outcome = run_step(
        EVALUATE,
        {
            **options,
            "base_model": base_model,
            "checkpoint": draft_checkpoint.path,
            "mode": mode,
            "dataset": eval_dataset,
            "extra_dataset": extra_eval_dataset.path,
            "num_prompts": num_prompts,
            "num_draft_tokens": num_draft_tokens,
            "max_new_tokens": max_new_tokens,
            "output_dir": evaluation.path,
        },
    )
    metrics.log_metric("acceptance_length", outcome["acceptance_length"])
    metrics.log_metric("ngram_acceptance_length", outcome["ngram_acceptance_length"])
    for position, rate in enumerate(outcome["acceptance_rate_per_position"], start=1):
        metrics.log_metric(f"acceptance_rate_position_{position}", rate)
    with open(result.path, "w") as handle:
        json.dump(outcome, handle)
    return outcome["acceptance_length_per_draft"]


@dsl.component(base_image=images.SERVE, install_kfp_package=False)
def vllm_crosscheck(
    base_model: str,
    draft: Input[Model],
    mode: str,
    eval_dataset: str,
    num_prompts: int,
    num_draft_tokens: int,
    max_new_tokens: int,
    expected_acceptance_length: float,
    options: dict,
    crosscheck: Output[Artifact],
) -> dict:
    """Serve the base in vLLM with the exported draft: vLLM's measured τ (checked against ours) in ``crosscheck``;
    with ``served_speed`` (on unless ``options`` turn it off) also the base, the draft at each k and n-gram timed as
    served. Returns that served-speed result (what register serves the draft with and gates on), or {}."""
    from spectrain.steps import run_step
    from spectrain.components.evaluate import VLLM_CROSSCHECK

    outcome = run_step(
        VLLM_CROSSCHECK,
        {
            **options,
            "base_model": base_model,
            "draft_dir": draft.path,
            "mode": mode,
            "dataset": eval_dataset,
            "num_prompts": num_prompts,
            "num_draft_tokens": num_draft_tokens,
            "max_new_tokens": max_new_tokens,
            "expected_acceptance_length": expected_acceptance_length,
            "output": crosscheck.path,
        },
    )
    from spectrain.components.evaluate.served import for_pipeline

    return for_pipeline(outcome.get("served", {}))


@dsl.component(base_image=images.ORCHESTRATE, install_kfp_package=False)
def no_served_speed() -> dict:
    """The cross-check's result when it does not run: no served speed, so register keeps the export's k."""
    return {}
