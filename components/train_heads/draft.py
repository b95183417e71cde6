"""The draft: its architecture sized from the base, modelopt's `mtsp.convert`, its vocabulary, initialisation and
feature noise; and what to call the trained part of a converted model."""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import modelopt.torch.speculative as mtsp
import torch
import transformers

from spectrain.components.train_heads.config import TrainHeadsConfig
from spectrain import bases
from spectrain.draft_checkpoint import DRAFT_MODULES
from spectrain.errors import SpectrainError


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


def draft_module(model, mode: str) -> torch.nn.Module:
    """The trained part of a converted model: its EAGLE, Medusa or DFlash module."""
    return getattr(model, DRAFT_MODULES[mode])


def meta_draft_parameters(base_config, config: TrainHeadsConfig) -> int:
    """The parameters of the draft this run would build, converted on a meta-device base: no memory, no weights."""
    reduced = config.mode == "eagle3" and 0 < config.draft_vocab_size < bases.text_config(base_config).vocab_size
    with torch.device("meta"), tempfile.TemporaryDirectory(prefix="spectrain-plan-") as scratch:
        model = transformers.AutoModelForCausalLM.from_config(base_config)
        d2t = torch.zeros(config.draft_vocab_size, dtype=torch.long, device="cpu") if reduced else None
        with contextlib.redirect_stdout(io.StringIO()):  # modelopt reports every part it finds: not news here
            convert(model, config, d2t, Path(scratch), mask_token_id=0)
        return sum(p.numel() for p in draft_module(model, config.mode).parameters())
