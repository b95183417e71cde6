"""KFP component of the regenerate step."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Output

from spectrain import images


@dsl.component(base_image=images.SERVE, install_kfp_package=False)
def regenerate(
    endpoint: str,
    dataset: str,
    max_tokens: int,
    concurrency: int,
    limit: int,
    options: dict,
    checkpoint_root: str,
    run_id: str,
    regenerated_conversations: Output[Dataset],
    heldout_conversations: Output[Dataset],
    result: Output[Artifact],
):
    """Rewrite every assistant turn of ``dataset`` with the served base model.

    ``options`` holds any other RegenerateConfig field (sampling, system prompt, sample, dedupe, heldout, ...);
    held-out conversations (``heldout``) go to ``heldout_conversations``, which evaluate reports on beside τ.
    With ``checkpoint_root`` finished conversations are copied under <root>/<run_id>/regenerate/ as
    they finish, and a retry of this step (a new pod) resumes from there.
    """
    import json

    from spectrain.s3 import run_prefix
    from spectrain.steps import run_step
    from spectrain.components.regenerate import REGENERATE

    checkpoint = {"checkpoint_uri": run_prefix(checkpoint_root, run_id, "regenerate")} if checkpoint_root else {}
    # `options` first: a parameter of its own wins (spectrain run/submit refuse such overlaps up front).
    outcome = run_step(
        REGENERATE,
        {
            **options,
            **checkpoint,
            "endpoint": endpoint,
            "dataset": dataset,
            "max_tokens": max_tokens,
            "concurrency": concurrency,
            "limit": limit,
            "output": regenerated_conversations.path,
            "heldout_output": heldout_conversations.path,  # empty unless options hold some out (heldout)
        },
    )
    with open(result.path, "w") as handle:
        json.dump(outcome, handle)
