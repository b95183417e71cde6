"""The train step: an EAGLE-3, Medusa or DFlash draft trained on the frozen base with modelopt and the HF Trainer."""

from spectrain.components.train_heads.config import TrainHeadsConfig
from spectrain.steps import DATA_SOURCES, LOADS_BASE_MODEL, Step


def _run(config: TrainHeadsConfig) -> dict:
    from spectrain.components.train_heads.train import run  # torch and modelopt load here, not with the registry

    return run(config)


TRAIN_HEADS = Step(
    "train-heads",
    TrainHeadsConfig,
    _run,
    "train",
    "train EAGLE or Medusa heads on the frozen base model with modelopt",
    needs=(*LOADS_BASE_MODEL, *DATA_SOURCES, "matplotlib.pyplot"),
    per_draft=True,
)
STEPS = (TRAIN_HEADS,)
