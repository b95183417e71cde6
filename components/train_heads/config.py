"""Config of the train_heads step: EAGLE or Medusa draft heads on a frozen base model, via modelopt."""

from __future__ import annotations

from dataclasses import dataclass

from spectrain.config import field
from spectrain.errors import SpectrainError

MODES = ("eagle3", "eagle1", "medusa")


@dataclass
class TrainHeadsConfig:
    """Convert the base model with `mtsp.convert`, train only the draft module with the HF Trainer."""

    base_model: str = field("embedded", "'embedded', a local HF checkpoint directory, or a hub id")
    data: str = field("", "regenerated conversations (jsonl written by the regenerate step)")
    output_dir: str = field("draft-checkpoint", "where the checkpoint (base + heads, modelopt state) is written")
    mode: str = field("eagle3", "eagle3 (aux hidden states), eagle1 (last hidden state only) or medusa")
    # Medusa
    medusa_num_heads: int = field(3, "Medusa heads; vLLM needs num_speculative_tokens equal to this")
    medusa_num_layers: int = field(1, "residual blocks per Medusa head")
    # EAGLE draft architecture: 0 means 'same as the base model'
    eagle_num_layers: int = field(1, "decoder layers in the EAGLE draft")
    eagle_intermediate_size: int = field(0, "draft MLP width (0: the base model's)")
    eagle_num_attention_heads: int = field(0, "draft attention heads (0: the base model's)")
    eagle_num_key_value_heads: int = field(0, "draft KV heads (0: the base model's)")
    eagle_head_dim: int = field(0, "draft head dim (0: the base model's)")
    draft_vocab_size: int = field(0, "EAGLE: draft predicts only the N most frequent tokens of the training data "
                                     "(d2t mapping, as EAGLE-3 does); 0 keeps the full vocabulary")
    eagle_ttt_steps: int = field(3, "training-time-test steps: how many draft positions the loss unrolls")
    # Offline hidden-state cache
    hidden_state_cache: bool = field(False, "run the frozen base once over the data, store its hidden states "
                                            "(sharded safetensors) and train every epoch from them")
    hidden_state_cache_dir: str = field("", "where the cache lives; '' puts it in output_dir and deletes it after "
                                            "training, a path keeps it for later runs on the same data and base")
    hidden_state_cache_dtype: str = field("bfloat16", "dtype of the cached hidden states: bfloat16, float16 "
                                                      "or float32 (exact, twice the disk)")
    # Optimisation (names follow the seed's launch.sh)
    lr: float = field(1e-3, "peak learning rate (cosine decay after warmup)")
    num_epochs: float = field(1.0, "passes over the data (ignored when max_steps > 0)")
    max_steps: int = field(0, "stop after this many optimizer steps (0: run num_epochs)")
    max_minutes: float = field(0.0, "stop after this much training time, wherever the schedule is (0: no limit)")
    batch_size: int = field(4, "sequences per device per step")
    gradient_accumulation_steps: int = field(1, "micro-batches per optimizer step")
    warmup_steps: int = field(5, "linear warmup steps")
    weight_decay: float = field(0.0, "AdamW weight decay")
    max_length: int = field(384, "tokens per training sequence; every batch is padded to exactly this")
    save_steps: int = field(0, "save a resumable checkpoint every N steps (0: only at the end; with "
                               "checkpoint_uri: every 200 steps)")
    checkpoint_uri: str = field("", "s3://bucket/prefix/ where every saved checkpoint is also copied; "
                                    "resume_from_checkpoint 'auto' then resumes from the newest one there when the "
                                    "output_dir has none as new (a KFP retry is a new pod with an empty disk)")
    logging_steps: int = field(5, "log loss and head accuracy every N steps")
    resume_from_checkpoint: str = field("", "'' to start fresh, 'auto' for the newest checkpoint in output_dir, or a path")
    seed: int = field(42, "seed for head init and data order")
    num_processes: int = field(0, "training processes (DDP through torchrun, this same command relaunched): 0 = "
                                  "one per visible GPU (1 on CPU); N > 1 on CPU runs N gloo processes")
    precision: str = field("auto", "auto (bf16 autocast on GPU, fp32 on CPU), bf16 or fp32; weights stay fp32")

    def validate(self) -> None:
        if self.mode not in MODES:
            raise SpectrainError(f"unknown mode {self.mode!r}", where="train_heads.mode", fix=f"use one of {MODES}")
        if not self.data:
            raise SpectrainError("no training data given", where="train_heads.data",
                                 fix="pass the jsonl written by the regenerate step")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise SpectrainError(f"unknown precision {self.precision!r}", where="train_heads.precision",
                                 fix="use auto, bf16 or fp32")
        if self.hidden_state_cache_dtype not in ("bfloat16", "float16", "float32"):
            raise SpectrainError(f"unknown cache dtype {self.hidden_state_cache_dtype!r}",
                                 where="train_heads.hidden_state_cache_dtype", fix="use bfloat16, float16 or float32")
        if self.num_processes < 0:
            raise SpectrainError("num_processes cannot be negative", where="train_heads.num_processes",
                                 fix="use 0 (one per GPU) or a process count")
        if self.checkpoint_uri and not self.checkpoint_uri.startswith("s3://"):
            raise SpectrainError(f"checkpoint_uri must be an S3 prefix, not {self.checkpoint_uri!r}",
                                 where="train_heads.checkpoint_uri",
                                 fix="use s3://bucket/prefix/; local checkpoints are in output_dir anyway")
        if self.max_length < 16:
            raise SpectrainError("max_length is too small to hold a conversation", where="train_heads.max_length")
