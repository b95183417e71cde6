"""Train_heads step logic: modelopt `mtsp.convert` + HF Trainer, base model frozen and checked to stay so."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path

import modelopt.torch.opt as mto
import torch
import transformers
from transformers.trainer_utils import get_last_checkpoint

from spectrain.components.train_heads import hidden_cache, launch, warm_start
from spectrain.components.train_heads.checkpoints import CheckpointsToS3, restore_from_s3
from spectrain.components.train_heads.config import TrainHeadsConfig, chosen_training_arguments
from spectrain.components.train_heads.datasets import CachedDataset, ConversationDataset
from spectrain.components.train_heads.draft import (
    convert,
    dflash_mask_token_id,
    draft_module,
    feature_layer_ids,
    meta_draft_parameters,
    reduced_vocabulary,
    trainable_parameters,
)
from spectrain.components.train_heads.examples import load_examples, pack_examples
from spectrain.components.train_heads.hidden_cache import cache_fits
from spectrain.components.train_heads.memory import check as check_memory
from spectrain.components.train_heads.memory import plan
from spectrain.components.train_heads.trainer import (
    DraftTrainer,
    FrozenBase,
    ProgressEvents,
    TrainingClock,
    WallClockBudget,
    from_rank_zero,
    training_arguments,
)
from spectrain import bases, devices, draft_checkpoint
from spectrain.console import warn
from spectrain.data import fingerprint
from spectrain.draft_checkpoint import draft_state_dict
from spectrain.drafts import TRAIN_RESULT
from spectrain.errors import SpectrainError
from spectrain.models import base_model_identity, load_base, resolve_base_model
from spectrain.plots import figure

# Without this, from_pretrained silently returns the plain base model and drops the heads.
mto.enable_huggingface_checkpointing()


def plot_history(history: list[dict], path: Path) -> None:
    """Loss and per-position accuracy over the logged steps (always written: a run shorter than one logging
    interval gets empty axes that say so)."""
    rows = [h for h in history if "loss" in h]
    steps = [r["step"] for r in rows]
    with figure(path, columns=2, size=(10, 3.6)) as (_, (loss_axis, accuracy_axis)):
        if not rows:
            loss_axis.text(0.5, 0.5, "no step logged (fewer steps than logging_steps)", ha="center", va="center")
        loss_axis.plot(steps, [r["loss"] for r in rows], marker=".")
        loss_axis.set(title="draft loss", xlabel="step", ylabel="loss")
        for key in sorted(k for k in (rows[-1] if rows else {}) if k.startswith("head_")):
            accuracy_axis.plot(
                steps, [r.get(key, math.nan) for r in rows], marker=".", label=f"position {int(key.split('_')[1]) + 1}"
            )
        accuracy_axis.set(title="top-1 agreement with the base", xlabel="step", ylabel="accuracy", ylim=(0, 1))
        if rows:
            accuracy_axis.legend()


def offline_training_model(
    model,
    model_path: str,
    config: TrainHeadsConfig,
    d2t,
    output_dir: Path,
    cache: Path,
    manifest: dict,
    pad_id: int,
    placement: devices.Placement,
    mask_token_id: int | None = None,
):
    """The model that trains from the hidden-state cache, and the dataset that feeds it.

    EAGLE and DFlash: modelopt's own offline model over the base loaded without decoder layers (its offline
    loader: embeddings, final norm, lm_head), starting from the same draft weights as ``model``. Medusa: ``model``
    itself with its base decoder swapped for the cache.
    """
    dataset = CachedDataset(cache, config.max_length, pad_id, config.mode)
    if config.mode == "medusa":
        model.model = hidden_cache.CachedBaseDecoder()
        return model, dataset
    offline = convert(
        load_base(model_path, placement, layers=False),
        config,
        d2t,
        output_dir,
        offline=True,
        mask_token_id=mask_token_id,
    )
    draft_module(offline, config.mode).load_state_dict(draft_module(model, config.mode).state_dict())
    if manifest["key"]["draft_token_ids_sha256"]:
        # The cache holds the base logits of the draft vocabulary only: modelopt's mapping from the
        # full vocabulary is already applied, so let those through unchanged.
        to_draft_vocab = offline._map_logits_to_draft_vocab
        offline._map_logits_to_draft_vocab = lambda logits: (
            logits if logits.shape[-1] == offline.eagle_module.d2t.numel() else to_draft_vocab(logits)
        )
    return offline, dataset


def with_recipe(config: TrainHeadsConfig, base: bases.BaseFacts) -> tuple[TrainHeadsConfig, dict]:
    """``config`` with every setting left to the base (draft_vocab_size -1, max_length 0, lr 0) chosen by
    :func:`spectrain.bases.recipe`, and what was chosen (logged, in the result, tagged in the registry)."""
    recipe = bases.recipe(base, config.mode)
    chosen = {
        name: recipe[name]
        for name, auto in (("draft_vocab_size", -1), ("max_length", 0), ("lr", 0.0))
        if getattr(config, name) == auto
    }
    if config.mode == "dflash" and "max_length" in chosen:  # DFlash trains on whole blocks
        chosen["max_length"] -= chosen["max_length"] % config.dflash_block_size
    resolved = dataclasses.replace(config, **chosen)
    resolved.validate()
    return resolved, {**chosen, "why": recipe["why"]} if chosen else {}


def prepare(config: TrainHeadsConfig) -> tuple[TrainHeadsConfig, str, bases.BaseFacts, dict, warm_start.Parent | None]:
    """Everything decided from the base's config alone, before any weight is loaded or any rank started: the
    mode is one this base can serve, the settings left to the base are chosen, and a draft to continue is one
    this run can continue (then its local folder replaces an s3:// warm_start, for the ranks to read)."""
    model_path = resolve_base_model(config.base_model)
    base = bases.facts_of(model_path)
    problem = bases.mode_problem(base, config.mode)
    if problem:
        raise problem
    caution = bases.mode_warning(base, config.mode)
    if caution and launch.is_main_process():
        warn(caution)
    parent = warm_start.parent_of(config) if config.warm_start else None
    if parent:
        config = dataclasses.replace(warm_start.inherit(config, parent), warm_start=str(parent.directory))
    config, chosen = with_recipe(config, base)
    if parent:
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_path)  # its chat template formats the data
        warm_start.check(parent, config, base_model_identity(model_path, tokenizer))
    return config, model_path, base, chosen, parent


def run(config: TrainHeadsConfig) -> dict:
    started = time.monotonic()
    config, model_path, base, chosen, parent = prepare(config)
    placement = devices.resolve(config.precision, config.base_dtype, base.dtype)
    processes = launch.processes_wanted(config.num_processes)
    base_config = bases.load_config(model_path)
    memory = plan(base_config, base, config, placement, processes, meta_draft_parameters(base_config, config))
    main = launch.is_main_process()
    if main:
        print(f"[train] base: {bases.describe(base)}", flush=True)
        print(f"[train] {placement.line()}", flush=True)
        if chosen:
            settings = ", ".join(f"{k} {v}" for k, v in chosen.items() if k != "why")
            print(f"[train] chosen for this base ({chosen['why']}): {settings}", flush=True)
        print(f"[train] {memory.line()}", flush=True)
    check_memory(memory, config)
    shard = memory.strategy == "shard"
    if shard and config.hidden_state_cache:
        if main:
            warn(
                "the hidden-state cache is built by one process holding the whole base; with the base sharded over "
                f"{processes} processes the draft trains online (hidden_state_cache off)"
            )
        config = dataclasses.replace(config, hidden_state_cache=False)
    if processes > 1 and not launch.inside_launcher():
        return launch.run_distributed(config, processes)
    transformers.set_seed(chosen_training_arguments(config)["seed"])
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    args = training_arguments(config, output_dir, placement, base, shard)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token_id = tokenizer.eos_token_id
    examples, skipped = load_examples(config, tokenizer)
    highest = max(max(e["input_ids"]) for e in examples)
    if highest >= base.vocab_size:  # else an index error deep in the embedding, or in the draft vocabulary
        raise SpectrainError(
            f"the tokenizer gives token id {highest}, outside the base's vocabulary of {base.vocab_size} ids",
            where=f"{model_path}: tokenizer",
            fix="keep the tokenizer that ships with the base model in its checkpoint directory",
        )
    conversations = len(examples)
    if config.pack:
        examples = pack_examples(examples, config.max_length)

    # sharded: loaded on the host (the first process only; the others on the meta device) and sharded onto the GPUs
    # when the Trainer prepares the model
    model = load_base(model_path, dataclasses.replace(placement, device="cpu") if shard else placement)
    if parent:  # the vocabulary and mask token the parent's weights were trained for
        d2t, mask_token_id = parent.d2t(), parent.mask_token_id
        print(f"[train] warm start from {parent.directory} ({parent.result.get('steps')} steps)", flush=True)
    else:
        d2t = reduced_vocabulary(config, base.vocab_size, examples)
        mask_token_id = dflash_mask_token_id(config, tokenizer, examples) if config.mode == "dflash" else None
    cache_manifest = None
    cache = Path(config.hidden_state_cache_dir or output_dir / "hidden-state-cache")
    if config.hidden_state_cache:
        # rank 0 decides, for every rank: the free space the others see changes while rank 0 builds the cache
        fits = args.process_index == 0 and cache_fits(config, model.config, examples, cache)
        if not from_rank_zero(float(fits), args.device):  # (args.device sets up the ranks' process group)
            config = dataclasses.replace(config, hidden_state_cache=False)
    if config.hidden_state_cache:
        aux = feature_layer_ids(config, base.num_layers)
        draft_ids = None if d2t is None else torch.arange(len(d2t)) + d2t
        key = hidden_cache.cache_key(examples, model_path, aux, config.hidden_state_cache_dtype, draft_ids)
        key["precision"] = placement.precision  # the base's arithmetic, as training would run it
        key["base_dtype"] = placement.base_dtype
        with args.main_process_first(desc="hidden-state cache"):  # rank 0 builds, the others then reuse it
            cache_manifest = hidden_cache.build(
                model,
                examples,
                cache,
                key,
                batch_size=config.batch_size,
                draft_token_ids=draft_ids,
                bf16=placement.precision == "bf16",
            )
    transformers.set_seed(chosen_training_arguments(config)["seed"])  # the same head init with or without the cache
    with args.main_process_first(desc="draft vocabulary"):
        convert(model, config, d2t, output_dir, mask_token_id=mask_token_id)
    if parent:
        warm_start.load_weights(model, parent, config.mode)
    online_state = mto.modelopt_state(model)  # what evaluate and export restore onto the base
    draft_module(model, config.mode).float()  # master weights in float32; autocast computes in `precision`
    if cache_manifest:
        train_model, dataset = offline_training_model(
            model,
            model_path,
            config,
            d2t,
            output_dir,
            cache,
            cache_manifest,
            tokenizer.pad_token_id,
            placement,
            mask_token_id,
        )
        draft_module(train_model, config.mode).float()
        if train_model is not model:
            del model  # the base's decoder layers: the cache stands in for them
    else:
        train_model, dataset = (
            model,
            ConversationDataset(examples, config.max_length, tokenizer.pad_token_id, config.mode),
        )
    clock = TrainingClock(config.max_minutes) if config.max_minutes > 0 else None
    trainer = DraftTrainer(
        model=train_model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        data_collator=torch.utils.data.default_collate,  # items are fixed-length, possibly nested
        mode=config.mode,
        clock=clock if config.schedule_by_time else None,
    )
    if clock:
        trainer.add_callback(WallClockBudget(clock))
    frozen = FrozenBase()
    trainer.add_callback(frozen)
    trainer.add_callback(ProgressEvents())
    if config.checkpoint_uri:
        trainer.add_callback(CheckpointsToS3(config.checkpoint_uri))
    resume: str | None = config.resume_from_checkpoint
    if resume == "auto":
        if config.checkpoint_uri:
            with args.main_process_first(desc="checkpoint from S3"):
                restore_from_s3(config.checkpoint_uri, output_dir)
        resume = get_last_checkpoint(str(output_dir))
        print(f"[train] resuming from {resume}" if resume else "[train] no checkpoint to resume from", flush=True)
    resumed_at = transformers.TrainerState.load_from_json(f"{resume}/trainer_state.json").global_step if resume else 0
    train_started = time.monotonic()
    trainer.train(resume_from_checkpoint=resume or None)
    train_seconds = time.monotonic() - train_started
    draft = draft_state_dict(trainer.model)  # every process: a sharded draft is gathered
    if not trainer.is_world_process_zero():  # rank 0 writes the artifact and reports
        return {"rank": args.process_index}
    artifact_bytes = draft_checkpoint.save(train_model, output_dir, online_state, draft)
    if cache_manifest and not config.hidden_state_cache_dir:
        shutil.rmtree(cache, ignore_errors=True)

    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    plot_history(history, output_dir / "training_curves.png")
    result = {
        "mode": config.mode,
        **({"medusa_num_heads": config.medusa_num_heads} if config.mode == "medusa" else {}),
        **(
            {
                "dflash_block_size": config.dflash_block_size,
                "dflash_mask_token_id": mask_token_id,
                "dflash_target_layer_ids": list(train_model.target_layer_ids),
            }
            if config.mode == "dflash"
            else {}
        ),
        "checkpoint": str(output_dir),
        "artifact_bytes": artifact_bytes,
        "base_model": config.base_model,
        "base": base.as_dict(),
        "base_identity": base_model_identity(model_path, tokenizer),
        "chosen_for_base": chosen,
        # the settings that ran, those chosen from the base included (register logs them as train_heads.<name>)
        "resolved": {name: getattr(config, name) for name in ("draft_vocab_size", "max_length", "lr")},
        "draft_architecture": warm_start.architecture(config),  # what a warm start from this draft must match
        "warm_start": parent.describe() if parent else None,
        "placement": placement.as_dict(),
        "memory_plan": memory.as_dict(),
        "sharded_base": frozen.sharded,  # what training ran with, not what was asked
        "examples": len(examples),
        "data_fingerprint": fingerprint(config.data),
        "skipped_input_lines": len(skipped),
        "steps": trainer.state.global_step,
        "steps_this_run": trainer.state.global_step - resumed_at,
        "processes": args.world_size,
        "resumed_from": resume or None,
        "trainable_parameters": trainable_parameters(train_model),
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "seconds_per_step": train_seconds / max(trainer.state.global_step - resumed_at, 1),
        "precision": placement.precision,
        "conversations": conversations,
        "hidden_state_cache": {k: v for k, v in cache_manifest.items() if k != "shards"} if cache_manifest else None,
        "history": history,
        "base_frozen": True,
        "seconds": time.monotonic() - started,
    }
    (output_dir / TRAIN_RESULT).write_text(json.dumps(result, indent=2))
    print(
        f"[train] {config.mode}: {result['steps']} steps, loss {result['first_loss']} -> {result['final_loss']}, "
        f"{result['seconds_per_step']:.2f} s/step; artifact {artifact_bytes / 1e6:.1f} MB (the draft only)",
        flush=True,
    )
    return result
