"""The serve step: vLLM serves the frozen base model (OpenAI API, API key); stop-server ends what it started."""

from spectrain.components.serve.config import ServeConfig, StopServerConfig
from spectrain.steps import LOADS_BASE_MODEL, Step


def _serve(config: ServeConfig) -> dict:
    from spectrain.components.serve.server import run

    return run(config)


def _stop(config: StopServerConfig) -> dict:
    from spectrain.components.serve.server import stop

    return stop(config)


SERVE = Step(
    "serve",
    ServeConfig,
    _serve,
    "serve",
    "start vLLM on the base model and wait until it answers",
    needs=("vllm.entrypoints.cli.main", "kubernetes", *LOADS_BASE_MODEL),
)
STOP_SERVER = Step(
    "stop-server",
    StopServerConfig,
    _stop,
    "serve",
    "stop the vLLM server a serve step started for a run",
    needs=("kubernetes",),
)
STEPS = (SERVE, STOP_SERVER)
