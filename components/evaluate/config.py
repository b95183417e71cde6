"""Config of the evaluate step: exact acceptance length of a draft on held-out prompts, greedy, on CPU or GPU."""

from __future__ import annotations

from dataclasses import dataclass

from spectrain.config import field
from spectrain.errors import SpectrainError


@dataclass
class EvaluateConfig:
    """Simulate speculative decoding with the base model in torch and count accepted draft tokens."""

    base_model: str = field("embedded", "'embedded', a local HF checkpoint directory, or a hub id")
    checkpoint: str = field("", "trained draft checkpoint (train_heads output)")
    mode: str = field("eagle3", "eagle3, eagle1 or medusa: how to run the draft")
    dataset: str = field("embedded", "held-out prompts (jsonl); 'embedded' is the shipped held-out split")
    num_prompts: int = field(0, "evaluate on the first N prompts (0: all)")
    num_draft_tokens: int = field(3, "k: draft chain length proposed per base step")
    max_new_tokens: int = field(64, "greedy tokens generated per prompt")
    ngram_max: int = field(3, "n-gram baseline: longest suffix matched in the context")
    output_dir: str = field("evaluation", "where metrics JSON and the acceptance plot go")

    def validate(self) -> None:
        if self.num_draft_tokens < 1:
            raise SpectrainError("num_draft_tokens must be at least 1", where="evaluate.num_draft_tokens")
        if not self.checkpoint:
            raise SpectrainError("no draft checkpoint given", where="evaluate.checkpoint",
                                 fix="pass the directory written by train_heads")
