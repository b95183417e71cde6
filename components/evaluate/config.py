"""Config of the evaluate step: exact acceptance length of a draft on held-out prompts, greedy, on CPU or GPU."""

from __future__ import annotations

from dataclasses import dataclass

from spectrain import checks
from spectrain.config import field
from spectrain.drafts import MODES, RETIRED_MODES
from spectrain.errors import SpectrainError


@dataclass
class EvaluateConfig:
    """Simulate speculative decoding with the base model in torch and count accepted draft tokens."""

    base_model: str = field(
        "embedded", "'embedded', a local HF checkpoint directory, or a hub id", check=checks.model_source()
    )
    checkpoint: str = field(
        "", "trained draft checkpoint (train_heads output)", check=checks.existing_folder(optional=True)
    )
    mode: str = field(
        "eagle3", "eagle3, medusa or dflash: how to run the draft", check=checks.one_of(*MODES, retired=RETIRED_MODES)
    )
    dataset: str = field(
        "embedded", "held-out prompts (jsonl); 'embedded' is the shipped held-out split", check=checks.data_source()
    )
    num_prompts: int = field(0, "evaluate on the first N prompts (0: all)", check=checks.at_least(0, 20))
    extra_dataset: str = field(
        "",
        "more held-out prompts (jsonl; e.g. regenerate's heldout of new data) reported per source beside τ, not "
        "counted in it: τ, which the gate compares with the champion's, stays measured on `dataset` alone",
        check=checks.existing_path(optional=True),
    )
    num_draft_tokens: int = field(3, "k: draft chain length proposed per base step", check=checks.at_least(1, 3))
    max_new_tokens: int = field(64, "greedy tokens generated per prompt", check=checks.at_least(1, 64))
    generation_batch_size: int = field(
        16,
        "prompts generated at once for the base's greedy replies (each reply is "
        "then confirmed by one teacher-forced pass)",
        check=checks.at_least(1, 16),
    )
    ngram_max: int = field(3, "n-gram baseline: longest suffix matched in the context", check=checks.at_least(1, 3))
    max_k: int = field(
        5,
        "the speed-up curve: τ and step costs for every k up to this (capped by the draft: Medusa's heads, "
        "DFlash's block - 1); the best k is what export writes into the serving config",
        check=checks.at_least(1, 5),
    )
    cost_batch_sizes: list = field(
        [1, 4, 16],
        "batch sizes at which a draft step and a verification step are timed (the per-batch-size k schedule)",
        check=checks.increasing_sizes("1,4,16"),
    )
    cost_repeats: int = field(
        5, "timed rounds over every cost (the fastest of each counts)", check=checks.at_least(1, 5)
    )
    untrained_baseline: bool = field(True, "also measure the same draft architecture at initialisation")
    output_dir: str = field("evaluation", "where metrics JSON and the acceptance plot go")

    def validate(self) -> None:
        if not self.checkpoint:
            raise SpectrainError(
                "no draft checkpoint given",
                where="evaluate.checkpoint",
                fix="pass the directory written by train_heads",
            )


SPEC_METHODS = {"eagle3": "eagle3", "medusa": "medusa", "dflash": "dflash"}


@dataclass
class VllmCrosscheckConfig:
    """Serve the base model in vLLM with the exported draft and read vLLM's own acceptance counters."""

    base_model: str = field("embedded", "'embedded', a local HF checkpoint directory, or a hub id")
    draft_dir: str = field("", "exported draft directory (export step output)")
    mode: str = field(
        "eagle3",
        "eagle3, medusa or dflash (vLLM methods of the same names)",
        check=checks.one_of(*MODES, retired=RETIRED_MODES),
    )
    dataset: str = field("embedded", "held-out prompts (jsonl); 'embedded' is the shipped held-out split")
    num_prompts: int = field(0, "send the first N prompts (0: all)")
    num_draft_tokens: int = field(3, "num_speculative_tokens (Medusa: must equal the number of heads)")
    max_new_tokens: int = field(64, "greedy tokens generated per prompt")
    expected_acceptance_length: float = field(0.0, "our τ from the evaluate step, to compare with (0: no check)")
    tolerance: float = field(0.15, "largest |τ_vLLM - τ_ours| that counts as agreement")
    dtype: str = field(
        "",
        "vLLM --dtype of the τ check; empty: the evaluate step's arithmetic (float32 on a CPU, the base's own dtype "
        "on a GPU), so both replay the same greedy text",
    )
    tensor_parallel_size: int = field(
        0,
        "GPUs each vLLM server is sharded over; 0: every GPU the step was given (SPECTRAIN_GPUS; a 70B base needs "
        "several), 1 without GPUs",
        check=checks.at_least(0, 4),
    )
    output: str = field("vllm_crosscheck.json", "where the counters and the verdict are written")
    ready_timeout_s: float = field(600.0, "give up if vLLM is not ready after this many seconds")
    served_speed: bool = field(
        True,
        "also measure decode throughput in vLLM: the base alone, with the draft at each speed_ks, with n-gram at "
        "each speed_ks, at each speed_concurrency (one server per setting, started in turn); the registered draft "
        "is then served with the k found fastest, and must beat n-gram's served speed to become champion",
    )
    speed_ks: list = field(
        [1, 2, 3],
        "k's timed for the draft and for n-gram (Medusa: its number of heads only; DFlash: at most block size - 1)",
        check=checks.increasing_sizes("2,3", from_one=False),
    )
    speed_concurrency: list = field(
        [1, 4],
        "requests in flight at which every setting is timed: the batch sizes of the served k schedule",
        check=checks.increasing_sizes("1,4"),
    )
    speed_num_prompts: int = field(
        16, "held-out chats sent per setting and concurrency (0: all)", check=checks.at_least(0, 16)
    )
    speed_max_new_tokens: int = field(64, "greedy tokens generated per timed request", check=checks.at_least(1, 64))
    speed_rounds: int = field(
        1,
        "times every setting is timed at each concurrency on its server: the median round counts, and the rounds' "
        "spread widens speed_margin (raise it on a shared or noisy machine)",
        check=checks.at_least(1, 3),
    )
    speed_margin: float = field(
        0.05,
        "timing noise: a draft within this fraction of n-gram's served speed (or within the rounds' spread, if "
        "larger) is neither faster nor slower, and only a draft measured slower than that is refused champion",
        check=checks.between(0.0, 0.5, 0.05),
    )
    speed_dtype: str = field("auto", "vLLM --dtype of the timed servers: what production serves (the base's own)")
    speed_enforce_eager: bool | None = field(
        None, "timed servers without compilation and graphs: unset, eager on a CPU and graphs on a GPU (as served)"
    )
    ngram_max: int = field(3, "n-gram setting: longest suffix matched in the context", check=checks.at_least(1, 3))

    def validate(self) -> None:
        if not self.draft_dir:
            raise SpectrainError(
                "no draft directory given",
                where="vllm_crosscheck.draft_dir",
                fix="pass the directory written by the export step",
            )
