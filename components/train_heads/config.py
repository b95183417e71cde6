"""Config of the train_heads step: EAGLE or Medusa draft heads on a frozen base model, via modelopt."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
from dataclasses import dataclass
from typing import Any

from spectrain import checks
from spectrain.config import field
from spectrain.drafts import MODES, RETIRED_MODES
from spectrain.errors import SpectrainError


# TrainingArguments that spectrain sets differently from the HF defaults (a user's training_arguments win).
# The seed also initialises the draft, before the Trainer exists.
DEFAULT_TRAINING_ARGUMENTS: dict[str, Any] = {
    "warmup_steps": 5,
    "logging_steps": 5,
    "lr_scheduler_type": "cosine",
    "seed": 42,
}
# TrainingArguments spectrain sets itself, and what sets them (components/train_heads/trainer.py).
OWNED_TRAINING_ARGUMENTS = {
    "output_dir": "output_dir",
    "learning_rate": "lr",
    "per_device_train_batch_size": "batch_size",
    "num_train_epochs": "num_epochs",
    "max_steps": "max_steps",
    "save_strategy": "save_steps (0: only at the end)",
    "bf16": "precision",
    "fp16": "precision",
    "use_cpu": "the devices the step finds",
    "fsdp": "shard_base",
    "fsdp_config": "shard_base",
    "ddp_timeout": "the hidden-state cache's barrier",
    "report_to": "spectrain (the register step logs to MLflow)",
    "remove_unused_columns": "spectrain's data collation",
    "label_names": "the draft mode",
    "disable_tqdm": "spectrain's progress bars",
    "dataloader_drop_last": "spectrain (every row trains)",
}


@functools.cache
def training_argument_names() -> frozenset[str]:
    """The fields of transformers.TrainingArguments, read from the installed transformers (the train image's pin;
    the orchestrate image carries the same one, so that spectrain run and submit check them before any work)."""
    quiet = os.environ.get("TRANSFORMERS_NO_ADVISORY_WARNINGS")
    os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"] = "1"  # "PyTorch was not found" where there is no torch
    try:
        from transformers import TrainingArguments
    finally:
        if quiet is None:
            del os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"]
    return frozenset(f.name for f in dataclasses.fields(TrainingArguments) if f.init)


def _training_arguments_problem(value: dict) -> str | None:
    owned = [
        f"{name} is set from {OWNED_TRAINING_ARGUMENTS[name]}" for name in value if name in OWNED_TRAINING_ARGUMENTS
    ]
    if owned:
        return "; ".join(owned)
    if not value:
        return None
    known = training_argument_names()
    unknown = []
    for name in value:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            unknown.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return f"not a field of transformers.TrainingArguments: {', '.join(unknown)}" if unknown else None


TRAINING_ARGUMENTS_RULE = checks.Rule(
    "fields of transformers.TrainingArguments that spectrain does not set itself",
    '{"warmup_steps": 20}',
    _training_arguments_problem,
)


def chosen_training_arguments(config: TrainHeadsConfig) -> dict[str, Any]:
    """spectrain's defaults with the config's training_arguments over them."""
    return {**DEFAULT_TRAINING_ARGUMENTS, **config.training_arguments}


@dataclass
class TrainHeadsConfig:
    """Convert the base model with `mtsp.convert`, train only the draft module with the HF Trainer."""

    base_model: str = field(
        "embedded", "'embedded', a local HF checkpoint directory, or a hub id", check=checks.model_source()
    )
    data: str = field(
        "", "regenerated conversations (jsonl written by the regenerate step)", check=checks.data_source(optional=True)
    )
    extra_data: str = field(
        "",
        "more conversations trained on as written ('embedded': the shipped prompt set's own "
        "answers): the loss distils the base's own next-token distribution at every "
        "position, so text the base did not write still teaches the draft, at no "
        "regeneration cost",
        check=checks.data_source(optional=True),
    )
    pack: bool = field(
        True,
        "fill each max_length row with several whole conversations (first-fit, longest first) "
        "instead of padding one: more tokens per step; attention then spans the "
        "conversations of a row, as in the base's own pretraining",
    )
    loss_on: str = field(
        "all",
        "which positions the loss covers: all tokens (the loss distils the base's own "
        "distribution, so prompts teach too; measured better, components/evaluate/README.md) "
        "or answers (assistant replies only)",
        check=checks.one_of("answers", "all"),
    )
    output_dir: str = field("draft-checkpoint", "where the checkpoint (base + heads, modelopt state) is written")
    mode: str = field(
        "eagle3",
        "eagle3 (EAGLE-3: hidden states of three base layers), medusa, or dflash (a block of drafts in one "
        "forward pass, conditioned on base layers' hidden states)",
        check=checks.one_of(*MODES, retired=RETIRED_MODES),
    )
    # Medusa
    medusa_num_heads: int = field(
        3, "Medusa heads; vLLM needs num_speculative_tokens equal to this", check=checks.at_least(1, 3)
    )
    medusa_num_layers: int = field(1, "residual blocks per Medusa head", check=checks.at_least(1))
    # EAGLE draft architecture: 0 means 'same as the base model'
    eagle_num_layers: int = field(1, "decoder layers in the EAGLE draft", check=checks.at_least(1))
    eagle_intermediate_size: int = field(0, "draft MLP width (0: the base model's)", check=checks.at_least(0, 1536))
    eagle_num_attention_heads: int = field(
        0, "draft attention heads (0: the base model's)", check=checks.at_least(0, 9)
    )
    eagle_num_key_value_heads: int = field(0, "draft KV heads (0: the base model's)", check=checks.at_least(0, 3))
    eagle_head_dim: int = field(0, "draft head dim (0: the base model's)", check=checks.at_least(0, 64))
    draft_vocab_size: int = field(
        -1,
        "EAGLE: draft predicts only the N most frequent tokens of the training data "
        "(d2t mapping, as EAGLE-3 does); 0 keeps the full vocabulary; -1 chooses from the base: 4,096 below 1B "
        "parameters, 32,000 above (Medusa, DFlash: ignored, their drafts cover the full vocabulary)",
        check=checks.or_auto(-1, checks.at_least(0, 4096)),
    )
    eagle_init_from_base: bool = field(
        False,
        "EAGLE: start the draft's lm_head from the base's (the rows of the draft "
        "vocabulary) and its final norm from the base's, instead of random "
        "(measured behind at short budgets: components/evaluate/README.md)",
    )
    eagle_freeze_lm_head: bool = field(
        False, "EAGLE: keep the draft's lm_head at its initial value (with eagle_init_from_base: the base's own rows)"
    )
    eagle_feature_noise: float = field(
        0.0,
        "EAGLE: uniform noise of ±this × each vector's RMS added to the base's "
        "features while training (EAGLE-1's regulariser; 0: none)",
        check=checks.at_least(0.0, 0.1),
    )
    eagle_ttt_steps: int = field(
        3, "training-time-test steps: how many draft positions the loss unrolls", check=checks.at_least(1, 3)
    )
    # DFlash draft: one forward pass proposes a block, conditioned on base layers' hidden states
    dflash_block_size: int = field(
        4,
        "DFlash: tokens per block: the token the base just emitted and block_size - 1 drafts (serve with "
        "num_speculative_tokens at most block_size - 1); max_length must be a multiple of it",
        check=checks.at_least(2, 4),
    )
    dflash_num_layers: int = field(
        3,
        "DFlash: decoder layers in the draft (each reads one base layer's hidden states, spread from the first "
        "layer to the fourth-last)",
        check=checks.at_least(1, 3),
    )
    dflash_loss_objective: str = field(
        "decay",
        "DFlash: weighting of the block positions in the loss: decay (exp(-(position - 1) / "
        "dflash_loss_decay), the DFlash paper's) or dpace (weights from the draft's own confidence)",
        check=checks.one_of("decay", "dpace"),
    )
    dflash_loss_decay: float = field(
        4.0, "DFlash: γ of the decay objective (0: every position weighs the same)", check=checks.at_least(0.0, 4.0)
    )
    dflash_num_anchors: int = field(
        64,
        "DFlash: blocks sampled per sequence per step (modelopt's default, 512, is sized for long GPU sequences)",
        check=checks.at_least(1, 64),
    )
    dflash_mask_token_id: int = field(
        -1,
        "DFlash: token id at the masked block positions; -1: the tokenizer's mask token, else the first special "
        "token that never occurs in the training data",
        check=checks.at_least(-1),
    )
    # Offline hidden-state cache
    hidden_state_cache: bool = field(
        True,
        "run the frozen base once over the data, store its hidden states "
        "(sharded safetensors) and train every epoch from them (skipped, with "
        "a warning, above hidden_state_cache_max_gb or 90% of its disk's free space)",
    )
    hidden_state_cache_dir: str = field(
        "",
        "where the cache lives; '' puts it in output_dir and deletes it after "
        "training, a path keeps it for later runs on the same data and base",
    )
    hidden_state_cache_max_gb: float = field(
        20.0,
        "train online instead (with a warning) when the cache would "
        "exceed this many GB: 12.8 KB per token for EAGLE-3 on the "
        "embedded base, 41 KB for an 8B Llama",
        check=checks.above(0.0, 20.0),
    )
    hidden_state_cache_dtype: str = field(
        "bfloat16",
        "dtype of the cached hidden states: bfloat16, float16 or float32 (exact, twice the disk)",
        check=checks.one_of("bfloat16", "float16", "float32"),
    )
    # Optimisation (names follow the seed's launch.sh)
    lr: float = field(
        0.0,
        "peak learning rate (cosine decay after warmup); 0 chooses from the base: 1e-3 below 1B parameters, "
        "above it the reference recipe of the mode (EAGLE-3 1e-4, DFlash 6e-4, Medusa 1e-3)",
        check=checks.or_auto(0.0, checks.above(0, 1e-3)),
    )
    num_epochs: float = field(1.0, "passes over the data (ignored when max_steps > 0)", check=checks.above(0, 1.0))
    max_steps: int = field(0, "stop after this many optimizer steps (0: run num_epochs)", check=checks.at_least(0, 200))
    max_minutes: float = field(
        0.0,
        "stop after this much training time, wherever the schedule is (0: no limit)",
        check=checks.at_least(0.0, 10),
    )
    schedule_by_time: bool = field(
        False,
        "with max_minutes: the cosine decay follows the wall-clock budget and "
        "reaches 0 when it is spent (or at the last step, whichever comes first), "
        "instead of decaying over steps the budget will never reach",
    )
    batch_size: int = field(4, "sequences per device per step", check=checks.at_least(1, 4))
    max_length: int = field(
        0,
        "tokens per training sequence; every batch is padded to exactly this; 0 chooses from the base: 256 below "
        "1B parameters, above it the reference recipe of the mode (2,048; DFlash 4,096)",
        check=checks.or_auto(0, checks.at_least(16, 256)),
    )
    training_arguments: dict = field(
        {},
        "more settings of the HF Trainer, as fields of transformers.TrainingArguments passed through as given, e.g. "
        '{"warmup_steps": 20, "weight_decay": 0.01, "seed": 7, "save_steps": 200, "gradient_accumulation_steps": 2}; '
        f"spectrain's own defaults: {DEFAULT_TRAINING_ARGUMENTS}; save_steps 0 saves only at the end (with "
        "checkpoint_uri: every 200 steps); the fields spectrain sets from its own settings are refused",
        check=TRAINING_ARGUMENTS_RULE,
    )
    checkpoint_uri: str = field(
        "",
        "s3://bucket/prefix/ where every saved checkpoint is also copied; "
        "resume_from_checkpoint 'auto' then resumes from the newest one there when the "
        "output_dir has none as new (a KFP retry is a new pod with an empty disk)",
        check=checks.s3_prefix(),
    )
    resume_from_checkpoint: str = field(
        "", "'' to start fresh, 'auto' for the newest checkpoint in output_dir, or a path"
    )
    warm_start: str = field(
        "",
        "continue a trained draft instead of starting a new one: an earlier run's train_heads output folder, or its "
        "s3:// copy (`spectrain run --warm-start champion` fetches the registered champion's); it must be the same "
        "mode, base model revision, chat template and draft shape (refused otherwise, naming the difference), and "
        "trains on this run's data with this run's budget; '' starts from scratch",
    )
    num_processes: int = field(
        0,
        "training processes (DDP through torchrun, this same command relaunched): 0 = "
        "one per visible GPU (1 on CPU); N > 1 on CPU runs N gloo processes",
        check=checks.at_least(0, 2),
    )
    shard_base: str = field(
        "auto",
        "shard the frozen base across the training processes with FSDP2 (each holds 1/N of it): auto (when the "
        "memory plan finds that one GPU cannot hold the base next to the draft's training state), always, or "
        "never (every process holds the whole base, DDP)",
        check=checks.one_of("auto", "always", "never"),
    )
    precision: str = field(
        "auto",
        "autocast of draft training: auto (bf16 on a GPU with bf16 units, fp16 with loss scaling on older GPUs, "
        "bf16 on a CPU with AMX / AVX512-BF16, else fp32), bf16, fp16 (GPU only) or fp32; the draft's weights "
        "stay fp32",
        check=checks.one_of("auto", "bf16", "fp16", "fp32"),
    )
    base_dtype: str = field(
        "auto",
        "dtype of the frozen base: auto (on a GPU the checkpoint's own, bfloat16 for current bases, float16 where "
        "the GPU has no bf16 units; on a CPU float32), bfloat16, float16 or float32",
        check=checks.one_of("auto", "bfloat16", "float16", "float32"),
    )

    def validate(self) -> None:
        if not self.data:
            raise SpectrainError(
                "no training data given", where="train_heads.data", fix="pass the jsonl written by the regenerate step"
            )
        if self.base_dtype in ("bfloat16", "float16") and self.precision == "fp32":
            raise SpectrainError(
                f"base_dtype {self.base_dtype} with precision fp32: the float32 draft would read {self.base_dtype} "
                "hidden states without autocast",
                where="train_heads.precision",
                fix=f"use precision auto or {'bf16' if self.base_dtype == 'bfloat16' else 'fp16'}, or base_dtype auto",
            )
        if self.mode == "dflash" and self.max_length % self.dflash_block_size:
            multiple = -(-self.max_length // self.dflash_block_size) * self.dflash_block_size
            raise SpectrainError(
                f"max_length = {self.max_length} is not a multiple of dflash_block_size = {self.dflash_block_size}: "
                "DFlash trains on whole blocks",
                where="train_heads.max_length",
                fix=f"use max_length {multiple}, or a block size that divides {self.max_length}",
            )
