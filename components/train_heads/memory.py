"""The memory a draft's training needs, from the base's config alone, against the GPUs it runs on.

(The train step's own plan: the step counts the draft it would build, with its own ``convert``, on the meta device.)

Decided before any weight is loaded (a meta-device build of the base and of the draft modelopt would add to it):
one whole base per training process (DDP), the frozen base sharded over the processes with FSDP2, or a refusal
that gives the numbers and the fix. The parts:

- the frozen base in its dtype (sharded: 1/N of it, plus the largest unit FSDP2 gathers whole at a time);
- the draft's training state: float32 weights, gradients and AdamW's two moments, 16 bytes a parameter;
- one micro-batch's activations, dominated at these vocabulary sizes by logits (the base's over the full
  vocabulary as the distillation target, the draft's over its own with their gradients) and by the draft layers'
  saved activations, once per training-time-test step. This part is an estimate (the formulas below, within a
  small factor); bench/gpu.py measures the peak on a GPU next to it;
- a fixed allowance for the CUDA context, NCCL and the allocator's fragmentation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from spectrain.errors import SpectrainError

GIB = 2**30
OVERHEAD = int(1.5 * GIB)  # CUDA context, NCCL buffers, allocator fragmentation
USABLE = 0.9  # of a card's memory a plan may fill
BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per GPU (or per process on a CPU) of a training run, and how it will hold them."""

    base_bytes: int
    largest_unit_bytes: int  # the biggest block FSDP2 gathers whole (a decoder layer, or embeddings + lm_head)
    draft_parameters: int
    draft_state_bytes: int
    activation_bytes: int
    processes: int
    gpu_bytes: int  # 0 on a CPU
    strategy: str  # "replicate" (DDP), "shard" (FSDP2), "cpu"
    per_process_bytes: int

    def as_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        where = (
            f"{self.processes} x {self.gpu_bytes / GIB:.0f} GiB GPU"
            if self.gpu_bytes
            else f"{self.processes} CPU process(es)"
        )
        how = {"replicate": "a whole base per process", "shard": "the base sharded over them (FSDP2)"}.get(
            self.strategy, "a whole base per process"
        )
        return (
            f"memory plan on {where}, {how}: {self.per_process_bytes / GIB:.1f} GiB each = base "
            f"{self.base_bytes / GIB:.1f} GiB{f' / {self.processes}' if self.strategy == 'shard' else ''}, draft "
            f"{self.draft_parameters / 1e6:.0f}M parameters {self.draft_state_bytes / GIB:.1f} GiB with its optimizer"
            f"{f' / {self.processes}' if self.strategy == 'shard' else ''}, "
            f"activations ~{self.activation_bytes / GIB:.1f} GiB"
        )


def activation_bytes(facts, config, base_bytes_per_value: int) -> int:
    """One micro-batch's activation memory (estimate): logits and saved draft activations, see the module."""
    tokens = config.batch_size * config.max_length
    hidden, vocab, value = facts.hidden_size, facts.vocab_size, base_bytes_per_value
    draft_vocab = config.draft_vocab_size if 0 < config.draft_vocab_size < vocab else vocab
    # a transformer layer keeps ~34 values per hidden unit and token for its backward pass, in the compute dtype
    layer_saved = tokens * 34 * hidden * value
    base_logits = tokens * vocab * (value + 4)  # the logits and their float32 softmax, the distillation target
    if config.mode == "eagle3":
        steps = config.eagle_ttt_steps
        return base_logits + steps * (config.eagle_num_layers * layer_saved + tokens * draft_vocab * 4 * 3)
    if config.mode == "medusa":  # each head: full-vocabulary logits, their softmax and gradient in float32
        return config.medusa_num_heads * tokens * vocab * (value + 8) + tokens * hidden * value * 4
    blocks = config.batch_size * config.dflash_num_anchors * config.dflash_block_size  # DFlash's drafted tokens
    return base_logits + config.dflash_num_layers * blocks * 34 * hidden * value + blocks * vocab * 4 * 3


def plan(base_config, facts, config, placement, processes: int, draft_parameters: int) -> MemoryPlan:
    """The plan for training ``config`` (resolved: no setting left to the base) on ``processes`` processes, for a
    draft of ``draft_parameters`` (draft.meta_draft_parameters: the draft modelopt builds, on the meta device)."""
    import torch
    import transformers

    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(base_config)
    layers = getattr(getattr(model, "model", None), "layers", None) or []
    units = [sum(p.numel() for p in layer.parameters()) for layer in layers] or [0]
    outside = sum(p.numel() for p in model.parameters()) - sum(units)
    draft = draft_parameters
    value = BYTES.get(placement.base_dtype, 2)
    base_bytes = facts.parameters * value
    largest = max(max(units), outside) * value
    state = draft * 16
    activations = activation_bytes(facts, config, value)
    gpu = placement.gpu_memory_bytes
    replicate = base_bytes + state + activations + OVERHEAD
    shard = base_bytes // processes + 2 * largest + state // processes + activations + OVERHEAD
    if (
        processes > 1
        and gpu
        and (config.shard_base == "always" or (config.shard_base == "auto" and replicate > gpu * USABLE))
    ):
        strategy, need = "shard", shard
    elif not gpu:
        strategy, need = "cpu", replicate
    else:
        strategy, need = "replicate", replicate
    return MemoryPlan(
        base_bytes=base_bytes,
        largest_unit_bytes=largest,
        draft_parameters=draft,
        draft_state_bytes=state,
        activation_bytes=activations,
        processes=processes,
        gpu_bytes=gpu,
        strategy=strategy,
        per_process_bytes=need,
    )


def check(memory: MemoryPlan, config) -> None:
    """Refuse a plan that does not fit its GPUs, with the numbers and what would make it fit; and a sharding asked
    for where the HF Trainer cannot shard (accelerate applies FSDP only to multi-GPU runs: accelerate/state.py)."""
    if config.shard_base == "always" and memory.strategy != "shard":
        raise SpectrainError(
            f"shard_base always, but this run has {memory.processes} process(es) "
            f"{'on GPUs' if memory.gpu_bytes else 'on the CPU'}: the Trainer shards the base with FSDP2 only "
            "over two or more GPUs",
            where="train_heads.shard_base",
            fix="use shard_base auto (or never), or train on two or more GPUs (spectrain compile --train-gpus N)",
        )
    if not memory.gpu_bytes or memory.per_process_bytes <= memory.gpu_bytes * USABLE:
        return
    sharded_need = memory.base_bytes // max(memory.processes, 8) + memory.activation_bytes + OVERHEAD
    fixes = []
    if memory.strategy != "shard" and config.shard_base != "never":
        fixes.append("train on more GPUs (spectrain compile --train-gpus N: the base is then sharded over them)")
    elif memory.strategy != "shard":
        fixes.append("let the base be sharded (shard_base auto) over more GPUs")
    fixes.append(
        f"lower batch_size ({config.batch_size}) or max_length ({config.max_length}): activations take "
        f"~{memory.activation_bytes / GIB:.1f} GiB"
    )
    raise SpectrainError(
        f"{memory.line()}: that is more than {USABLE:.0%} of each GPU's {memory.gpu_bytes / GIB:.0f} GiB"
        + (f" (on 8 GPUs sharded: ~{sharded_need / GIB:.1f} GiB each)" if memory.strategy != "shard" else ""),
        where="train_heads (memory plan)",
        fix="; or ".join(fixes),
    )
