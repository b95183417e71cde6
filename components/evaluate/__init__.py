"""The evaluate step: acceptance length τ on held-out prompts against the n-gram baseline; and the cross-check that
serves the exported draft in vLLM and reads vLLM's own acceptance counters."""

from spectrain.components.evaluate.config import EvaluateConfig, VllmCrosscheckConfig
from spectrain.steps import DATA_SOURCES, LOADS_BASE_MODEL, Step


def _evaluate(config: EvaluateConfig) -> dict:
    from spectrain.components.evaluate.acceptance import run

    return run(config)


def _crosscheck(config: VllmCrosscheckConfig) -> dict:
    from spectrain.components.evaluate.vllm_crosscheck import run

    return run(config)


EVALUATE = Step(
    "evaluate",
    EvaluateConfig,
    _evaluate,
    "train",
    "measure acceptance length on held-out prompts",
    needs=(*LOADS_BASE_MODEL, *DATA_SOURCES),
    per_draft=True,
)
VLLM_CROSSCHECK = Step(
    "vllm-crosscheck",
    VllmCrosscheckConfig,
    _crosscheck,
    "serve",
    "serve the base in vLLM with the exported draft and read vLLM's acceptance counters",
    needs=("vllm.entrypoints.cli.main", *LOADS_BASE_MODEL, *DATA_SOURCES),
    per_draft=True,
)
STEPS = (EVALUATE, VLLM_CROSSCHECK)
