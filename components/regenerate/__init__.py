"""The regenerate step: the served base rewrites a chat dataset's assistant turns (concurrent, resumable)."""

from spectrain.components.regenerate.config import RegenerateConfig
from spectrain.steps import DATA_SOURCES, Step


def _run(config: RegenerateConfig) -> dict:
    from spectrain.components.regenerate.regenerate import run

    return run(config)


REGENERATE = Step(
    "regenerate",
    RegenerateConfig,
    _run,
    "serve",
    "rewrite every assistant turn of a chat dataset with the served model",
    needs=("openai", *DATA_SOURCES),
)
STEPS = (REGENERATE,)
