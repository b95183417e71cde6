"""The register step: MLflow tracking and registry; a draft becomes `champion` only when it wins."""

from spectrain.components.register.config import RegisterConfig
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
STEPS = (REGISTER,)
