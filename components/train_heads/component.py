"""KFP component of the train_heads step."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from spectrain import images


@dsl.component(base_image=images.TRAIN, install_kfp_package=False)
def train_heads(
    base_model: str,
    regenerated_conversations: Input[Dataset],
    parent: Input[Model],
    mode: str,
    max_steps: int,
    max_minutes: float,
    num_epochs: float,
    lr: float,
    batch_size: int,
    max_length: int,
    draft_vocab_size: int,
    hidden_state_cache: bool,
    options: dict,
    checkpoint_root: str,
    run_id: str,
    draft_checkpoint: Output[Model],
    training_curves: Output[Artifact],
    result: Output[Artifact],
):
    """Train an EAGLE-3, Medusa or DFlash draft on the frozen base model with modelopt + the HF Trainer.

    Continues ``parent`` when the warm-start step put a draft there. Always resumes from the newest checkpoint it
    can find; with ``checkpoint_root`` checkpoints are
    copied under <root>/<run_id>/train/<mode>/, so a retry of this step (a new pod) finds them.
    """
    import json
    import os
    import shutil

    from spectrain.draft_checkpoint import is_draft_checkpoint
    from spectrain.s3 import run_prefix
    from spectrain.steps import run_step
    from spectrain.components.train_heads import TRAIN_HEADS

    checkpoint = {"checkpoint_uri": run_prefix(checkpoint_root, run_id, "train", mode)} if checkpoint_root else {}
    # `options` first: a parameter of its own wins (spectrain run/submit refuse such overlaps up front).
    outcome = run_step(
        TRAIN_HEADS,
        {
            **options,
            "resume_from_checkpoint": "auto",
            **checkpoint,
            "base_model": base_model,
            "data": regenerated_conversations.path,
            "warm_start": parent.path if is_draft_checkpoint(parent.path) else "",  # the warm-start step's draft
            "output_dir": draft_checkpoint.path,
            "mode": mode,
            "max_steps": max_steps,
            "max_minutes": max_minutes,
            "num_epochs": num_epochs,
            "lr": lr,
            "batch_size": batch_size,
            "max_length": max_length,
            "draft_vocab_size": draft_vocab_size if mode == "eagle3" else 0,
            "hidden_state_cache": hidden_state_cache,
        },
    )
    draft_checkpoint.metadata["mode"] = mode
    # A small artifact of its own, so that register (another pod) logs the plot without the checkpoint.
    os.makedirs(training_curves.path, exist_ok=True)
    shutil.copy(f"{draft_checkpoint.path}/training_curves.png", training_curves.path)
    with open(result.path, "w") as handle:
        json.dump(outcome, handle)
