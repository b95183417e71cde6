"""The HF Trainer of a draft: draft-only checkpoints, per-position accuracy, and one clock for every rank."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors.torch import load_file, save_file

from spectrain.components.train_heads import launch
from spectrain.components.train_heads.config import TrainHeadsConfig, chosen_training_arguments
from spectrain.components.train_heads.datasets import IGNORE
from spectrain import bases, devices
from spectrain.console import EVENTS_ENV, Progress, warn
from spectrain.draft_checkpoint import DRAFT_WEIGHTS, HEAD_PREFIXES, draft_state_dict
from spectrain.errors import SpectrainError

SAVE_STEPS_WITH_CHECKPOINT_URI = 200  # save_steps when checkpoint_uri is set and save_steps is not
CACHE_BARRIER_SECONDS = 6 * 3600  # how long the other ranks wait while rank 0 builds the hidden-state cache


class DraftTrainer(transformers.Trainer):
    """HF Trainer that also logs per-head (per draft position) top-1 accuracy."""

    lr_scheduler: Any  # the Trainer's own attribute, None until a scheduler is created

    def __init__(self, *args, mode: str, clock: TrainingClock | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.mode = mode
        self.clock = clock  # with a wall-clock budget: the learning rate follows its spent fraction
        self._accuracy_sums: list[float] = []
        self._accuracy_count = 0

    # Checkpoints hold the draft only: the base is frozen, so its weights are the base model's own and would
    # make every checkpoint (and its copy on S3) base-sized (16 GB for an 8B base in bf16). The final artifact
    # adds modelopt's state (spectrain.draft_checkpoint.save).
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        draft = draft_state_dict(self.model)  # every process: a sharded draft is gathered collectively
        if self.args.should_save:
            directory = Path(output_dir or str(self.args.output_dir))
            directory.mkdir(parents=True, exist_ok=True)
            tensors = {name: tensor.to("cpu") for name, tensor in draft.items()}
            save_file(tensors, str(directory / DRAFT_WEIGHTS), metadata={"format": "pt"})

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        weights = Path(resume_from_checkpoint) / DRAFT_WEIGHTS
        if not weights.exists():  # a checkpoint with the whole model
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        model = model or self.model
        missing, unexpected = load_draft(model, load_file(str(weights)))
        missing_draft = [k for k in missing if k.startswith(HEAD_PREFIXES)]
        if unexpected or missing_draft:
            raise SpectrainError(
                f"{weights} does not fit this draft (missing {missing_draft[:3]}, unexpected {unexpected[:3]})",
                where=str(weights),
                fix="resume with the same mode and draft settings, or start fresh (resume_from_checkpoint '')",
            )

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """With a wall-clock budget: linear warmup over steps, then cosine over the larger of the budget's
        spent fraction and the steps' (the Trainer's own cosine would stay near its peak to the end)."""
        if self.clock is None or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        warmup, clock = self.args.get_warmup_steps(num_training_steps), self.clock
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer or self.optimizer, lambda step: budget_cosine(step, warmup, num_training_steps, clock.spent)
        )
        self._created_lr_scheduler = True
        return self.lr_scheduler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        self._record_accuracy(outputs, inputs)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    @torch.no_grad()
    def _record_accuracy(self, outputs, inputs) -> None:
        if self.mode == "medusa":
            labels = inputs["labels"]
            accuracies = []
            for head, logits in enumerate(outputs.medusa_logits):
                target = labels[:, 1 + head :]
                predicted = logits[:, : target.shape[1]].argmax(-1)
                valid = target != IGNORE
                accuracies.append(((predicted == target) & valid).sum().item() / max(valid.sum().item(), 1))
        else:
            accuracies = list(outputs.train_acc[0])
        if not self._accuracy_sums:
            self._accuracy_sums = [0.0] * len(accuracies)
        self._accuracy_sums = [s + a for s, a in zip(self._accuracy_sums, accuracies)]
        self._accuracy_count += 1

    def log(self, logs: dict, *args, **kwargs) -> None:
        if self._accuracy_count and "loss" in logs:
            for head, total in enumerate(self._accuracy_sums):
                logs[f"head_{head}_accuracy"] = round(total / self._accuracy_count, 4)
            self._accuracy_sums, self._accuracy_count = [], 0
        super().log(logs, *args, **kwargs)


def load_draft(model, tensors: dict) -> tuple[list[str], list[str]]:
    """Load whole draft tensors into ``model``, whose parameters may be FSDP2 shards; (missing, unexpected)."""
    if any(hasattr(p, "full_tensor") for p in model.parameters()):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        keys = set(model.state_dict())
        set_model_state_dict(model, tensors, options=StateDictOptions(full_state_dict=True, strict=False))
        return sorted(keys - set(tensors)), sorted(set(tensors) - keys)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    return list(missing), list(unexpected)


@torch.no_grad()
def base_checksum(model) -> torch.Tensor:
    """One float64 sum per base tensor (this process's shard of it under FSDP2), reduced where it lives (no host
    copy, no float32 copy of the base): any optimizer step on the base would change one."""
    sums = []
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith(HEAD_PREFIXES) or not tensor.is_floating_point():
            continue
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        sums.append(local.sum(dtype=torch.float64).to("cpu"))
    return torch.stack(sums) if sums else torch.zeros(0, dtype=torch.float64)


class FrozenBase(transformers.TrainerCallback):
    """Proof, at the end of training, that the base did not move: no base parameter trains or sits in the
    optimizer, and its checksum is what it was when training began (taken then, once the model is placed and,
    under FSDP2, sharded)."""

    def __init__(self):
        self.before: torch.Tensor | None = None
        self.sharded = False  # whether the base's parameters were FSDP2 shards when training began

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = base_checksum(model)
        self.sharded = any(
            hasattr(p, "full_tensor") for n, p in model.named_parameters() if not n.startswith(HEAD_PREFIXES)
        )

    def on_train_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        draft = {id(p) for n, p in model.named_parameters() if n.startswith(HEAD_PREFIXES)}
        optimized = [p for group in (optimizer.param_groups if optimizer else []) for p in group["params"]]
        moved = self.before is None or not torch.equal(base_checksum(model), self.before)
        if moved or any(id(p) not in draft for p in optimized):
            raise RuntimeError(
                "the base model's weights changed during training: the draft must train on a frozen base"
            )


def budget_cosine(step: int, warmup: int, total_steps: int, spent: float) -> float:
    """Learning-rate factor: linear warmup, then cosine to 0 over whichever runs out first, steps or time
    (``spent``: the fraction of the wall-clock budget used so far)."""
    if step < warmup:
        return step / max(1, warmup)
    progress = max(spent, (step - warmup) / max(1, total_steps - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


class TrainingClock:
    """The spent fraction of the wall-clock budget as rank 0 measures it: the same number on every rank.

    Ranks load the base at different speeds, so clocks of their own would end the budget at different steps
    (and the ranks that go on would wait in their next all-reduce until the collective's timeout) and would
    schedule different learning rates. Rank 0's clock starts when its training begins; at every step's end
    every rank takes rank 0's reading from a broadcast, so all stop at the same step with the same schedule.
    """

    def __init__(self, minutes: float):
        self.seconds = minutes * 60
        self.started: float | None = None
        self.spent = 0.0  # read by the learning-rate schedule

    def start(self) -> None:
        self.started = time.monotonic()

    def tick(self, device) -> float:
        """Every rank calls it once per step (a collective): rank 0's spent fraction, everywhere."""
        elapsed = time.monotonic() - (self.started if self.started is not None else time.monotonic())
        self.spent = from_rank_zero(elapsed / self.seconds if self.seconds else 0.0, device)
        return self.spent


def from_rank_zero(value: float, device) -> float:
    """Rank 0's ``value`` on every rank (a collective where several ranks run): for a number or decision all must
    share though each rank's own view of it may differ."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        reading = torch.tensor([value], dtype=torch.float64, device=device)
        torch.distributed.broadcast(reading, src=0)
        return float(reading.item())
    return value


class WallClockBudget(transformers.TrainerCallback):
    """Stop training (and save) once ``clock`` says the budget is spent, at the same step on every rank."""

    def __init__(self, clock: TrainingClock):
        self.clock = clock

    def on_train_begin(self, args, state, control, **kwargs):
        self.clock.start()

    def on_step_end(self, args, state, control, **kwargs):
        if self.clock.tick(args.device) >= 1.0:
            if state.is_world_process_zero:
                warn(
                    f"training stopped at step {state.global_step} of {state.max_steps}: the wall-clock budget of "
                    f"{self.clock.seconds / 60:.1f} min (max_minutes) was reached"
                )
            control.should_training_stop = True
        return control


class ProgressEvents(transformers.TrainerCallback):
    """Optimizer steps as progress for the console of `spectrain run` (rank 0; the Trainer's own bar is in the log)."""

    def __init__(self):
        self.progress: Progress | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and os.environ.get(EVENTS_ENV):
            self.progress = Progress(state.max_steps, "train", "step")
            self.progress.update(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress:
            self.progress.update(state.global_step - self.progress.done)

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress:
            self.progress.close()


def fsdp_arguments(base: bases.BaseFacts) -> dict:
    """The Trainer's FSDP2 settings that shard the frozen base by its decoder layers (the draft's layer, a Llama
    layer for EAGLE, becomes a unit of its own; the rest, embeddings and lm_head included, the root unit).
    Every process but the first loads the base on the meta device and receives its shard from it
    (cpu_ram_efficient_loading), so a 70B base needs host memory once per node, not once per process."""
    return {
        "fsdp": True,
        "fsdp_config": {
            "version": 2,
            "transformer_layer_cls_to_wrap": list(base.layer_classes),
            "reshard_after_forward": True,
            "cpu_ram_efficient_loading": True,
            "state_dict_type": "FULL_STATE_DICT",
        },
    }


def training_arguments(
    config: TrainHeadsConfig,
    output_dir: Path,
    placement: devices.Placement,
    base: bases.BaseFacts | None = None,
    shard: bool = False,
) -> transformers.TrainingArguments:
    chosen = chosen_training_arguments(config)
    save_steps = chosen.pop("save_steps", 0) or (SAVE_STEPS_WITH_CHECKPOINT_URI if config.checkpoint_uri else 0)
    return transformers.TrainingArguments(
        **(fsdp_arguments(base) if shard and base else {}),
        output_dir=str(output_dir),
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.lr,
        num_train_epochs=config.num_epochs,
        max_steps=config.max_steps if config.max_steps > 0 else -1,
        save_strategy="steps" if save_steps > 0 else "no",
        save_steps=save_steps if save_steps > 0 else 500,
        bf16=placement.precision == "bf16",
        fp16=placement.precision == "fp16",  # with the Trainer's loss scaling
        use_cpu=not placement.on_gpu,
        # rank 0 builds the hidden-state cache while the others wait at a barrier: give it hours, not 30 minutes
        ddp_timeout=CACHE_BARRIER_SECONDS,
        report_to=[],
        remove_unused_columns=False,
        label_names=["labels"] if config.mode == "medusa" else [],
        dataloader_drop_last=False,
        disable_tqdm=not launch.is_main_process(),
        **chosen,  # the user's TrainingArguments (and spectrain's defaults for warm-up, logging, schedule)
    )
