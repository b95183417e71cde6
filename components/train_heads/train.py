"""Train_heads step logic: modelopt `mtsp.convert` + HF Trainer, base model frozen and checked to stay so."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import modelopt.torch.opt as mto
import modelopt.torch.speculative as mtsp
import torch
import transformers

from components.train_heads import hidden_cache, launch
from components.train_heads.config import TrainHeadsConfig
from components.train_heads.datasets import CachedDataset, ConversationDataset
from components.train_heads.memory import check as check_memory
from components.train_heads.memory import plan
from components.train_heads.trainer import (
    DraftTrainer,
    FrozenBase,
    ProgressEvents,
    StepCounter,
    TrainingClock,
    WallClockBudget,
)
from spectrain import bases, devices, draft_checkpoint, s3
from spectrain.console import warn
from spectrain.data import SkippedLine, fingerprint, read_conversations
from spectrain.draft_checkpoint import draft_state_dict
from spectrain.drafts import TRAIN_RESULT
from spectrain.errors import SpectrainError
from spectrain.models import base_model_identity, load_base, resolve_base_model
from spectrain.plots import figure

# Without this, from_pretrained silently returns the plain base model and drops the heads.
mto.enable_huggingface_checkpointing()

SAVE_STEPS_WITH_CHECKPOINT_URI = 200  # save_steps when checkpoint_uri is set and save_steps is not
CACHE_BARRIER_SECONDS = 6 * 3600  # how long the other ranks wait while rank 0 builds the hidden-state cache


# ---------------------------------------------------------------- data
def tokenize_conversation(tokenizer, system: str, turns: list[dict], max_length: int) -> dict[str, list[int]]:
    """Token ids of the chat-templated conversation and a mask of the assistant replies' tokens.

    Each assistant reply (and its end-of-turn token) is located by rendering the template up to
    the reply's generation prompt, so the mask follows whatever chat template the model has.
    """
    messages = ([{"role": "system", "content": system}] if system else []) + turns
    ids: list[int] = []
    mask: list[int] = []
    rendered = ""
    for end in range(len(messages)):
        if messages[end]["role"] == "assistant":
            prompt = tokenizer.apply_chat_template(messages[:end], tokenize=False, add_generation_prompt=True)
            piece = prompt[len(rendered) :]
            ids += tokenizer(piece, add_special_tokens=False)["input_ids"]
            mask += [0] * (len(ids) - len(mask))
            rendered = prompt
        full = tokenizer.apply_chat_template(messages[: end + 1], tokenize=False)
        piece = full[len(rendered) :]
        new = tokenizer(piece, add_special_tokens=False)["input_ids"]
        ids += new
        mask += [int(messages[end]["role"] == "assistant")] * len(new)
        rendered = full
    return {"input_ids": ids[:max_length], "loss_mask": mask[:max_length]}


def load_examples(config: TrainHeadsConfig, tokenizer) -> tuple[list[dict], list[SkippedLine]]:
    """Tokenized conversations of ``data`` then ``extra_data``, each with the mask the loss covers."""
    skipped: list[SkippedLine] = []
    examples = []
    for source in filter(None, (config.data, config.extra_data)):
        for conversation in read_conversations(source, skipped=skipped):
            if not any(t["role"] == "assistant" and t["content"] for t in conversation.turns):
                continue
            example = tokenize_conversation(tokenizer, conversation.system, conversation.turns, config.max_length)
            if sum(example["loss_mask"]) > 0:
                if config.loss_on == "all":
                    example["loss_mask"] = [1] * len(example["input_ids"])
                examples.append(example)
    for line in skipped:
        print(f"[train] skipped {line}", flush=True)
    if not examples:
        raise SpectrainError(
            "no conversation with an assistant reply inside max_length",
            where=config.data,
            fix="check the regenerated data, or raise max_length",
        )
    return examples, skipped


def pack_examples(examples: list[dict], max_length: int) -> list[dict]:
    """Whole conversations packed into rows of at most ``max_length`` tokens (first-fit decreasing).

    Deterministic: rows come out in the order they were opened, each holding its conversations
    longest first, so the same data always packs the same way (the hidden-state cache key relies on it).
    """
    rows: list[dict] = []
    for example in sorted(examples, key=lambda e: -len(e["input_ids"])):
        room = next((row for row in rows if len(row["input_ids"]) + len(example["input_ids"]) <= max_length), None)
        if room is None:
            rows.append({"input_ids": list(example["input_ids"]), "loss_mask": list(example["loss_mask"])})
        else:
            room["input_ids"] += example["input_ids"]
            room["loss_mask"] += example["loss_mask"]
    return rows


# ---------------------------------------------------------------- model
def draft_architecture(base_config, config: TrainHeadsConfig) -> dict:
    """EAGLE draft sized from the base model (modelopt's defaults are for an 8B model)."""
    text_config = bases.text_config(base_config)
    heads = config.eagle_num_attention_heads or text_config.num_attention_heads
    rope = bases.draft_rope(base_config)  # the base's: the draft reads hidden states at the base's positions
    eagle3 = config.mode == "eagle3"
    return {
        "num_hidden_layers": config.eagle_num_layers,
        "intermediate_size": config.eagle_intermediate_size or text_config.intermediate_size,
        "num_attention_heads": heads,
        "num_key_value_heads": config.eagle_num_key_value_heads or getattr(text_config, "num_key_value_heads", heads),
        "head_dim": config.eagle_head_dim
        or getattr(text_config, "head_dim", None)
        or text_config.hidden_size // text_config.num_attention_heads,
        "rms_norm_eps": getattr(text_config, "rms_norm_eps", 1e-5),
        # modelopt builds the draft's config with the base's config class (hf_eagle.py modify), so the class's
        # defaults leak into a Llama draft layer unless set: gpt-oss's sliding window of 128 (the draft's masks
        # then disagree with modelopt's TTT masks), Gemma's gelu-tanh MLP. The draft vLLM and TensorRT-LLM run is a
        # plain Llama layer: full attention, SiLU, no biases.
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "sliding_window": None,
        "layer_types": ["full_attention"] * config.eagle_num_layers,
        "rope_theta": rope["rope_theta"],
        "rope_scaling": rope,
        "use_aux_hidden_state": eagle3,
        # explicit, so the hidden-state cache and the draft agree on which base layers feed it
        "eagle_aux_hidden_state_layer_ids": aux_layer_ids(base_layers(text_config)) if eagle3 else [],
        "use_last_layernorm": eagle3,
        "use_input_layernorm_in_first_layer": not eagle3,
        **(
            {"draft_vocab_size": config.draft_vocab_size}
            if 0 < config.draft_vocab_size < text_config.vocab_size
            else {}
        ),
    }


def base_layers(text_config) -> int:
    """The base's decoder layers, also when it was loaded without them (modelopt's offline loader keeps the
    count in ``num_orig_hidden_layers``)."""
    return getattr(text_config, "num_orig_hidden_layers", None) or text_config.num_hidden_layers


def dflash_architecture(base_config, config: TrainHeadsConfig) -> dict:
    """DFlash draft sized from the base model: modelopt builds it as a Qwen3 config whose defaults describe an
    8B model (hidden 4096, MLP 22016, 32 heads), and only hidden and vocabulary sizes come from the base."""
    text_config = bases.text_config(base_config)
    heads = text_config.num_attention_heads
    rope = bases.draft_rope(base_config)
    return {
        "num_hidden_layers": config.dflash_num_layers,
        "intermediate_size": text_config.intermediate_size,
        "num_attention_heads": heads,
        "num_key_value_heads": getattr(text_config, "num_key_value_heads", heads),
        "head_dim": getattr(text_config, "head_dim", None) or text_config.hidden_size // heads,
        "rms_norm_eps": getattr(text_config, "rms_norm_eps", 1e-6),
        "max_position_embeddings": text_config.max_position_embeddings,
        # The draft attends over the base's keys at the base's positions: its RoPE must be the base's. modelopt
        # copies rope_theta only from configs that have the attribute (transformers 5 keeps it in rope_parameters).
        "rope_parameters": rope,
        # explicit, so the hidden-state cache and the draft agree on which base layers feed it
        "target_layer_ids": feature_layer_ids(config, base_layers(text_config)),
    }


def dflash_mask_token_id(config: TrainHeadsConfig, tokenizer, examples: list[dict]) -> int:
    """The id DFlash puts at the positions it drafts: the configured one, the tokenizer's mask token, else the
    first special token the training data never contains (so its embedding means "unknown", not a word)."""
    if config.dflash_mask_token_id >= 0:
        if config.dflash_mask_token_id >= len(tokenizer):
            raise SpectrainError(
                f"dflash_mask_token_id = {config.dflash_mask_token_id} is outside the vocabulary ({len(tokenizer)})",
                where="train_heads.dflash_mask_token_id",
                fix="use -1 (chosen automatically) or an id of the base model's vocabulary",
            )
        return config.dflash_mask_token_id
    if tokenizer.mask_token_id is not None:
        return int(tokenizer.mask_token_id)
    seen = {token for example in examples for token in example["input_ids"]}
    unused = [token for token in sorted(tokenizer.all_special_ids) if token not in seen]
    if not unused:
        raise SpectrainError(
            "the tokenizer has no mask token and every special token occurs in the training data",
            where="train_heads.dflash_mask_token_id",
            fix="pass the id of a token the data never contains",
        )
    return unused[0]


def aux_layer_ids(num_layers: int) -> list[int]:
    """Base layers whose outputs feed an EAGLE-3 draft: modelopt's default (start, middle, end)."""
    from modelopt.torch.speculative.plugins.hf_eagle import default_eagle_aux_layer_ids

    return default_eagle_aux_layer_ids(num_layers)


def feature_layer_ids(config: TrainHeadsConfig, num_layers: int) -> list[int]:
    """Base layers whose outputs the draft reads besides the final hidden state (what the cache keeps):
    EAGLE-3's aux layers, DFlash's target layers (modelopt's uniform choice, one per draft layer), else none."""
    if config.mode == "eagle3":
        return aux_layer_ids(num_layers)
    if config.mode == "dflash":
        from modelopt.torch.speculative.plugins.modeling_dflash import build_target_layer_ids

        ids = (
            build_target_layer_ids(num_layers, config.dflash_num_layers)
            if config.dflash_num_layers <= num_layers
            else []
        )
        if len(set(ids)) < config.dflash_num_layers:  # modelopt spreads them over layers 1 .. n-3
            most = max(n for n in range(1, num_layers + 1) if len(set(build_target_layer_ids(num_layers, n))) == n)
            raise SpectrainError(
                f"dflash_num_layers = {config.dflash_num_layers} needs as many distinct base layers to read, and a "
                f"{num_layers}-layer base gives {len(set(ids))} ({ids}) where modelopt spreads them",
                where="train_heads.dflash_num_layers",
                fix=f"use at most {most} DFlash layers for this base",
            )
        return list(ids)
    return []


def draft_vocabulary(examples: list[dict], draft_vocab_size: int, vocab_size: int) -> torch.Tensor:
    """EAGLE-3's d2t: draft id i stands for token i + d2t[i]; the N most frequent tokens, in id order.

    Frequencies count the tokens the draft must predict (assistant replies); ties and unseen
    slots fall back to the lowest ids so the mapping is deterministic.
    """
    counts = torch.zeros(vocab_size, dtype=torch.int64)
    for example in examples:
        ids = torch.tensor(example["input_ids"])
        counts.index_add_(
            0,
            ids[torch.tensor(example["loss_mask"]).bool()],
            torch.ones(int(sum(example["loss_mask"])), dtype=torch.int64),
        )
    order = sorted(range(vocab_size), key=lambda token: (-int(counts[token]), token))
    chosen = torch.tensor(sorted(order[:draft_vocab_size]))
    return chosen - torch.arange(draft_vocab_size)


def reduced_vocabulary(config: TrainHeadsConfig, vocab_size: int, examples: list[dict]) -> torch.Tensor | None:
    """The EAGLE draft's d2t when its vocabulary is reduced (computed once per run), else None."""
    if config.mode != "eagle3" or not 0 < config.draft_vocab_size < vocab_size:
        return None
    return draft_vocabulary(examples, config.draft_vocab_size, vocab_size)


def convert(
    model,
    config: TrainHeadsConfig,
    d2t: torch.Tensor | None = None,
    output_dir: Path | None = None,
    offline: bool = False,
    mask_token_id: int | None = None,
):
    """Add the draft module with ``mtsp.convert``; ``offline`` (EAGLE, DFlash) drops the base decoder layers.

    ``d2t``: the reduced draft vocabulary (:func:`reduced_vocabulary`), needed when the config asks for one.
    ``mask_token_id``: DFlash's (:func:`dflash_mask_token_id`).
    """
    if config.mode == "dflash":
        if mask_token_id is None:
            raise ValueError("a DFlash draft needs its mask_token_id (dflash_mask_token_id)")
        mtsp.convert(
            model,
            [
                (
                    "dflash",
                    {
                        "dflash_architecture_config": dflash_architecture(model.config, config),
                        "dflash_block_size": config.dflash_block_size,
                        "dflash_mask_token_id": mask_token_id,
                        "dflash_num_anchors": config.dflash_num_anchors,
                        "dflash_loss_objective": config.dflash_loss_objective,
                        "dflash_loss_decay_factor": config.dflash_loss_decay,
                        "dflash_use_torch_compile": False,
                        "dflash_offline": offline,
                    },
                )
            ],
        )
        wanted = dflash_architecture(model.config, config)
        built = {key: getattr(model.dflash_config, key) for key in wanted}
        if built != wanted:  # modelopt overrides some fields from the base: they must agree with ours
            raise RuntimeError(f"modelopt built the DFlash draft as {built}, not {wanted}")
    elif config.mode == "medusa":
        mtsp.convert(
            model,
            [("medusa", {"medusa_num_heads": config.medusa_num_heads, "medusa_num_layers": config.medusa_num_layers})],
        )
        # modelopt leaves each head's vocab projection random; Medusa's recipe starts it from the
        # base lm_head (the residual blocks start as identity), which converges in far fewer steps.
        with torch.no_grad():
            for head in model.medusa_heads:
                head[-1].weight.copy_(model.lm_head.weight)
        # modelopt freezes the base only with no_grad inside forward; make it explicit for the optimizer.
        for name, parameter in model.named_parameters():
            parameter.requires_grad = name.startswith("medusa_heads")
    else:
        mtsp.convert(
            model,
            [
                (
                    "eagle",
                    {
                        "eagle_architecture_config": draft_architecture(model.config, config),
                        "eagle_use_torch_compile": False,  # on CPU compile costs minutes and runs slower than eager
                        "eagle_ttt_steps": config.eagle_ttt_steps,
                        "eagle_offline": offline,
                        # modelopt's default injects yarn rope scaling at export and refuses a draft trained with
                        # any other rope than 'default' (Llama 3's llama3, Phi-3's longrope): the draft keeps the
                        # base's rope in training and export alike (config.py _check_rope_scaling_consistency)
                        "eagle_export_rope_scaling": {},
                    },
                )
            ],
        )
        if 0 < config.draft_vocab_size < bases.text_config(model.config).vocab_size:
            if d2t is None or output_dir is None:
                raise ValueError("a reduced draft vocabulary needs its d2t (reduced_vocabulary) and an output_dir")
            d2t_path = output_dir / "d2t.pt"
            torch.save(d2t, d2t_path)
            type(model).load_draft_vocab_cache(model, str(d2t_path))
        if config.eagle_init_from_base:
            init_draft_from_base(model)
        if config.eagle_feature_noise:
            add_feature_noise(model, config.eagle_feature_noise)
        if config.eagle_freeze_lm_head and hasattr(model.eagle_module, "lm_head"):
            model.eagle_module.lm_head.weight.requires_grad = False
    return model


@torch.no_grad()
def init_draft_from_base(model) -> None:
    """Start the EAGLE draft's own lm_head and final norm from the base model's.

    With a reduced vocabulary modelopt gives the draft a fresh random lm_head (a third of a small
    draft's parameters, each row seeing a handful of targets); the base's rows for the draft
    vocabulary (draft id i is token i + d2t[i]) already map a final hidden state to the right token.
    With the full vocabulary the draft uses the base's frozen lm_head and this only sets the norm.
    """
    module = model.eagle_module
    if hasattr(module, "lm_head"):
        rows = torch.arange(module.lm_head.out_features)
        if hasattr(module, "d2t"):
            rows = rows + module.d2t.to(rows.device)
        module.lm_head.weight.copy_(model._base_model_lm_head.weight[rows])
    final_norm = model._base_model_norm
    if hasattr(module, "norm") and final_norm is not None:
        module.norm.weight.copy_(final_norm.weight)


def add_feature_noise(model, scale: float) -> None:
    """While training, add uniform noise (±scale × each vector's RMS) to the base features the draft reads.

    At inference the draft reads features of text it partly wrote itself; EAGLE-1 trains with noisy
    features for that reason. modelopt has no such option: this wraps the instance's input
    preparation (the features after EAGLE-3's fc, before the first draft step).
    """
    prepare = model._prepare_eagle_inputs

    def noisy(*args, **kwargs):
        embeds, hiddens, *rest = prepare(*args, **kwargs)
        return (embeds, with_uniform_noise(hiddens, scale) if model.training else hiddens, *rest)

    model._prepare_eagle_inputs = noisy


def with_uniform_noise(features: torch.Tensor, scale: float) -> torch.Tensor:
    """``features`` plus uniform noise of ±scale × each vector's RMS.

    The scale carries no gradient: d√x/dx is infinite at 0, and the cached features of padding are
    all zero, so a differentiable RMS turned every weight into NaN after one step (bf16 + cache run).
    """
    with torch.no_grad():
        rms = features.float().pow(2).mean(-1, keepdim=True).sqrt().to(features.dtype)
    return features + (torch.rand_like(features) * 2 - 1) * scale * rms


def trainable_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class CheckpointsToS3(transformers.TrainerCallback):
    """Copy every checkpoint the Trainer saves to ``uri`` (rank 0; the COMPLETE marker goes last)."""

    def __init__(self, uri: str):
        self.uri = uri

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            print(f"[train] copied {folder.name} to {s3.upload_checkpoint(folder, self.uri)}", flush=True)
        return control


def restore_from_s3(uri: str, output_dir: Path) -> None:
    """Bring the newest complete checkpoint under ``uri`` into ``output_dir`` unless a newer one is there."""
    remote = s3.latest_checkpoint(uri)
    local = latest_checkpoint(output_dir)
    if remote and (local is None or remote[0] > int(local.rsplit("-", 1)[1])):
        s3.download(remote[1], output_dir / f"checkpoint-{remote[0]}")
        print(f"[train] restored checkpoint-{remote[0]} from {remote[1]}", flush=True)


def latest_checkpoint(output_dir: Path) -> str | None:
    checkpoints = sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return str(checkpoints[-1]) if checkpoints else None


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


def cache_bytes_per_token(config: TrainHeadsConfig, base_config) -> int:
    """What one token costs in the hidden-state cache: final hidden state, the layers the draft reads
    (:func:`feature_layer_ids`), draft-vocabulary logits."""
    text_config = base_config.get_text_config() if hasattr(base_config, "get_text_config") else base_config
    values = text_config.hidden_size * (1 + len(feature_layer_ids(config, text_config.num_hidden_layers)))
    if config.mode == "eagle3" and 0 < config.draft_vocab_size < text_config.vocab_size:
        values += config.draft_vocab_size
    return values * hidden_cache.DTYPES[config.hidden_state_cache_dtype].itemsize + 5  # + token id and mask


def cache_fits(config: TrainHeadsConfig, base_config, examples: list[dict]) -> bool:
    """Whether the cache stays under hidden_state_cache_max_gb; if not, say so (training then runs online)."""
    tokens = sum(len(e["input_ids"]) for e in examples)
    size = tokens * cache_bytes_per_token(config, base_config)
    if size <= config.hidden_state_cache_max_gb * 1e9:
        return True
    warn(
        f"the hidden-state cache would take {size / 1e9:.1f} GB for {tokens} tokens, over hidden_state_cache_max_gb "
        f"= {config.hidden_state_cache_max_gb:g}: training online instead (raise the limit to cache)"
    )
    return False


def draft_module(model, mode: str) -> torch.nn.Module:
    """The trained part of a converted model: its EAGLE, Medusa or DFlash module."""
    return getattr(model, {"medusa": "medusa_heads", "dflash": "dflash_module"}.get(mode, "eagle_module"))


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
    save_steps = config.save_steps or (SAVE_STEPS_WITH_CHECKPOINT_URI if config.checkpoint_uri else 0)
    return transformers.TrainingArguments(
        **(fsdp_arguments(base) if shard and base else {}),
        output_dir=str(output_dir),
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.lr,
        num_train_epochs=config.num_epochs,
        max_steps=config.max_steps if config.max_steps > 0 else -1,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        lr_scheduler_type="cosine",
        logging_steps=config.logging_steps,
        save_strategy="steps" if save_steps > 0 else "no",
        save_steps=save_steps if save_steps > 0 else 500,
        seed=config.seed,
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
    )


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


def meta_draft_parameters(base_config, config: TrainHeadsConfig) -> int:
    """The parameters of the draft this run would build, converted on a meta-device base: no memory, no weights."""
    reduced = config.mode == "eagle3" and 0 < config.draft_vocab_size < bases.text_config(base_config).vocab_size
    with torch.device("meta"), tempfile.TemporaryDirectory(prefix="spectrain-plan-") as scratch:
        model = transformers.AutoModelForCausalLM.from_config(base_config)
        d2t = torch.zeros(config.draft_vocab_size, dtype=torch.long, device="cpu") if reduced else None
        with contextlib.redirect_stdout(io.StringIO()):  # modelopt reports every part it finds: not news here
            convert(model, config, d2t, Path(scratch), mask_token_id=0)
        return sum(p.numel() for p in draft_module(model, config.mode).parameters())


def prepare(config: TrainHeadsConfig) -> tuple[TrainHeadsConfig, str, bases.BaseFacts, dict]:
    """Everything decided from the base's config alone, before any weight is loaded or any rank started: the
    mode is one this base can serve, and the settings left to the base are chosen."""
    model_path = resolve_base_model(config.base_model)
    base = bases.facts_of(model_path)
    problem = bases.mode_problem(base, config.mode)
    if problem:
        raise problem
    caution = bases.mode_warning(base, config.mode)
    if caution and launch.is_main_process():
        warn(caution)
    config, chosen = with_recipe(config, base)
    return config, model_path, base, chosen


def run(config: TrainHeadsConfig) -> dict:
    started = time.monotonic()
    config, model_path, base, chosen = prepare(config)
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
    transformers.set_seed(config.seed)
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
    d2t = reduced_vocabulary(config, base.vocab_size, examples)
    mask_token_id = dflash_mask_token_id(config, tokenizer, examples) if config.mode == "dflash" else None
    cache_manifest = None
    if config.hidden_state_cache and not cache_fits(config, model.config, examples):
        config = dataclasses.replace(config, hidden_state_cache=False)
    if config.hidden_state_cache:
        cache = Path(config.hidden_state_cache_dir or output_dir / "hidden-state-cache")
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
    transformers.set_seed(config.seed)  # the same head init with or without the cache
    with args.main_process_first(desc="draft vocabulary"):
        convert(model, config, d2t, output_dir, mask_token_id=mask_token_id)
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
    counter = StepCounter()
    trainer.add_callback(counter)
    trainer.add_callback(ProgressEvents())
    if config.checkpoint_uri:
        trainer.add_callback(CheckpointsToS3(config.checkpoint_uri))
    resume: str | None = config.resume_from_checkpoint
    if resume == "auto":
        if config.checkpoint_uri:
            with args.main_process_first(desc="checkpoint from S3"):
                restore_from_s3(config.checkpoint_uri, output_dir)
        resume = latest_checkpoint(output_dir)
        print(f"[train] resuming from {resume}" if resume else "[train] no checkpoint to resume from", flush=True)
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
        "placement": placement.as_dict(),
        "memory_plan": memory.as_dict(),
        "sharded_base": frozen.sharded,  # what training ran with, not what was asked
        "examples": len(examples),
        "data_fingerprint": fingerprint(config.data),
        "skipped_input_lines": len(skipped),
        "steps": trainer.state.global_step,
        "steps_this_run": counter.steps,
        "processes": args.world_size,
        "resumed_from": resume or None,
        "trainable_parameters": trainable_parameters(train_model),
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "seconds_per_step": train_seconds / max(counter.steps, 1),
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
