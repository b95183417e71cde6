"""KFP component of the regenerate step."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Output

from spectrain import images


@dsl.component(base_image=images.SERVE, install_kfp_package=False)
def regenerate(endpoint: str, dataset: str, max_tokens: int, concurrency: int, limit: int, options: dict,
               regenerated_conversations: Output[Dataset], result: Output[Artifact]):
    """Rewrite every assistant turn of ``dataset`` with the served base model.

    ``options`` holds any other RegenerateConfig field (sampling, system prompt, sample, dedupe, ...).
    """
    import json

    from spectrain.steps import run_step

    outcome = run_step("regenerate", {**options, "endpoint": endpoint, "dataset": dataset, "max_tokens": max_tokens,
                                      "concurrency": concurrency, "limit": limit,
                                      "output": regenerated_conversations.path})
    with open(result.path, "w") as handle:
        json.dump(outcome, handle)
