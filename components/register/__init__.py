"""The register step: MLflow tracking and registry; a draft becomes `champion` only when it wins."""

from spectrain.components.register.config import RegisterConfig, WarmStartConfig
from spectrain.steps import Step


def _run(config: RegisterConfig) -> dict:
    from spectrain.components.register.register import run

    return run(config)


REGISTER = Step(
    "register",
    RegisterConfig,
    _run,
    "orchestrate",
    "log the run to MLflow, register the draft, promote the champion",
    needs=("mlflow", "boto3", "matplotlib.pyplot"),
)


def _warm_start(config: WarmStartConfig) -> dict:
    from spectrain.components.register.warm_start import run

    return run(config)


WARM_START = Step(
    "warm-start",
    WarmStartConfig,
    _warm_start,
    "orchestrate",
    "fetch the draft a run continues: a registered version (champion), or an earlier run's train_heads output",
    needs=("mlflow", "boto3"),
    per_draft=True,
)
STEPS = (REGISTER, WARM_START)
