"""KFP component of the export step."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output

from spectrain import images


@dsl.component(base_image=images.TRAIN, install_kfp_package=False)
def export(
    draft_checkpoint: Input[Model],
    mode: str,
    dtype: str,
    base_model: str,
    num_draft_tokens: int,
    evaluation: Input[Artifact],
    draft: Output[Model],
    result: Output[Artifact],
):
    """Write the deployable draft directory (vLLM layout, TensorRT-LLM files in trtllm/) in ``dtype``, served with
    ``num_draft_tokens`` (0: the k ``evaluation`` measured as fastest, with its per-batch-size schedule)."""
    import json

    from spectrain.steps import run_step
    from spectrain.components.export import EXPORT

    outcome = run_step(
        EXPORT,
        {
            "checkpoint": draft_checkpoint.path,
            "mode": mode,
            "dtype": dtype,
            "base_model": base_model,
            "num_draft_tokens": num_draft_tokens,
            "evaluation": evaluation.path,
            "output_dir": draft.path,
        },
    )
    draft.metadata.update({"mode": mode, "dtype": dtype, "vllm_speculative_config": outcome["vllm_speculative_config"]})
    with open(result.path, "w") as handle:
        json.dump(outcome, handle)


@dsl.component(base_image=images.TRTLLM, install_kfp_package=False)
def build_trtllm_engine(draft: Input[Model], base_model: str, engine: Output[Model], result: Output[Artifact]):
    """Build the TensorRT-LLM engine of an exported Medusa draft (trtllm image, NVIDIA GPU)."""
    import json

    from spectrain.steps import run_step
    from spectrain.components.export import BUILD_ENGINE

    outcome = run_step(BUILD_ENGINE, {"draft": draft.path, "base_model": base_model, "output_dir": engine.path})
    engine.metadata["serve_command"] = outcome["serve_command"]
    with open(result.path, "w") as handle:
        json.dump(outcome, handle)
