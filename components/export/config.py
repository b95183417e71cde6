"""Config of the export step: deployable draft checkpoints for vLLM and TensorRT-LLM."""

from __future__ import annotations

from dataclasses import dataclass

from spectrain import checks
from spectrain.config import field
from spectrain.drafts import MODES, RETIRED_MODES
from spectrain.errors import SpectrainError

DTYPES = ("bfloat16", "float16", "float32")


@dataclass
class ExportConfig:
    """Turn a trained modelopt checkpoint into the draft directory a serving runtime loads."""

    checkpoint: str = field(
        "", "trained draft checkpoint (train_heads output)", check=checks.existing_folder(optional=True)
    )
    mode: str = field("eagle3", "eagle3, medusa or dflash", check=checks.one_of(*MODES, retired=RETIRED_MODES))
    output_dir: str = field("draft", "where the deployable draft directory is written")
    dtype: str = field(
        "bfloat16", "weights dtype of the exported draft: bfloat16, float16 or float32", check=checks.one_of(*DTYPES)
    )
    base_model: str = field(
        "embedded", "the base model the draft serves with (for the TensorRT-LLM commands)", check=checks.model_source()
    )
    num_draft_tokens: int = field(
        0,
        "k written into the serving configs (vLLM, TensorRT-LLM); 0: the k the evaluation measured as fastest, "
        "with its per-batch-size schedule (EAGLE-3). Medusa serves one token per head whatever this says",
        check=checks.at_least(0, 3),
    )
    evaluation: str = field(
        "",
        "the evaluate step's evaluation.json (or its folder): the measured k, expected speed-up and schedule",
        check=checks.existing_path(optional=True),
    )
    trtllm: bool = field(
        True,
        "also write and validate the TensorRT-LLM files (trtllm/), and build the engine "
        "where a GPU and trtllm-build are present",
    )

    def validate(self) -> None:
        if not self.checkpoint:
            raise SpectrainError(
                "no checkpoint given", where="export.checkpoint", fix="pass the directory written by train_heads"
            )
        if not self.num_draft_tokens and not self.evaluation:
            raise SpectrainError(
                "no k to serve the draft with: num_draft_tokens is 0 (the measured k) and no evaluation is given",
                where="export.evaluation",
                fix="pass the evaluate step's output (--evaluation DIR), or choose k yourself (--num-draft-tokens 3)",
            )


@dataclass
class BuildEngineConfig:
    """Build the TensorRT-LLM engine of an exported Medusa draft (trtllm image, NVIDIA GPU)."""

    draft: str = field("", "exported draft directory (export output; its trtllm/medusa/ holds the heads)")
    base_model: str = field("embedded", "the base model the heads were trained on: a local HF checkpoint or hub id")
    output_dir: str = field("engine", "where the engine (output_dir/engine) is written")

    def validate(self) -> None:
        if not self.draft:
            raise SpectrainError(
                "no draft given", where="build_engine.draft", fix="pass the directory written by the export step"
            )
