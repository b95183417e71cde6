"""The export step: draft checkpoints that vLLM and TensorRT-LLM load, proven to load the trained weights; and the
TensorRT-LLM engine build of a Medusa draft (its own image)."""

from spectrain.components.export.config import BuildEngineConfig, ExportConfig
from spectrain.steps import LOADS_BASE_MODEL, Step


def _export(config: ExportConfig) -> dict:
    from spectrain.components.export.export import run

    return run(config)


def _build_engine(config: BuildEngineConfig) -> dict:
    from spectrain.components.export.engine import run

    return run(config)


EXPORT = Step(
    "export",
    ExportConfig,
    _export,
    "train",
    "write draft checkpoints that vLLM and TensorRT-LLM load",
    needs=("modelopt.torch.export", *LOADS_BASE_MODEL),
    per_draft=True,
)
BUILD_ENGINE = Step(
    "build-engine",
    BuildEngineConfig,
    _build_engine,
    "trtllm",
    "build the TensorRT-LLM engine of a Medusa draft (trtllm image, NVIDIA GPU)",
    per_draft=True,
)
STEPS = (EXPORT, BUILD_ENGINE)
