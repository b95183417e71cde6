"""What a base model's config decides: its features, which draft modes can serve it, the recipe chosen from its size.

Everything here reads the config alone (a meta-device model, no weights), so a run learns in seconds, before it
loads tens of GB, whether a mode can train a draft for this base and with which defaults.

Support is decided by the two libraries a draft must pass through (read at the pinned versions):
- modelopt 0.47 trains every mode on any HF causal LM whose decoder layers sit at ``model.layers``
  (``plugins/hf_eagle.py`` ``_find_base_model_parts``); its EAGLE draft is a Llama decoder layer whatever the base.
- vLLM 0.32 serves EAGLE-3 and DFlash drafts only for a target model class that hands out intermediate hidden
  states (``SupportsEagle3``, ``vllm/model_executor/models/interfaces.py``; the GPU model runner raises "Model does
  not support EAGLE3 interface" otherwise). Medusa reads only the last hidden state: any target.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spectrain.errors import SpectrainError

# Target classes that implement vLLM 0.32's SupportsEagle3 among the causal LMs people train drafts for
# (vllm/model_executor/models/{llama,mistral,phi3,qwen2,qwen3,qwen3_moe,gpt_oss}.py: MistralForCausalLM and
# Phi3ForCausalLM subclass LlamaForCausalLM). components/evaluate/tests/test_vllm_loader.py checks this set
# against vLLM's own registry, so a vLLM upgrade that changes it fails there.
VLLM_AUX_HIDDEN_STATE_TARGETS = frozenset(
    {
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "Phi3ForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
        "Qwen3MoeForCausalLM",
        "GptOssForCausalLM",
    }
)
# Architectures vLLM 0.32 has a model class for that does NOT implement SupportsEagle3 (read in the same files).
VLLM_WITHOUT_AUX_HIDDEN_STATES = frozenset({"Gemma2ForCausalLM", "Gemma3ForCausalLM"})

LARGE_BASE_PARAMETERS = 1_000_000_000  # from here on, the reference recipes' defaults (below: the embedded one)
# The recipe measured on the embedded 135M base (bench/ablation.py, components/evaluate/README.md), for bases
# below LARGE_BASE_PARAMETERS.
SMALL_RECIPE = {"draft_vocab_size": 4096, "max_length": 256, "lr": 1e-3}
# Large bases: the reference recipes. EAGLE-3 and DFlash take learning rate and sequence length from modelopt's
# own recipes shipped with the pinned release (modelopt_recipes/general/speculative_decoding/{eagle3,dflash}.yaml);
# the draft vocabulary of 32,000 tokens is EAGLE-3's (modelopt's examples README, SpecForge's Llama-3.1-8B
# config); Medusa follows its own repository's training command (FasterDecoding/Medusa: lr 1e-3, 2048 tokens).
LARGE_DRAFT_VOCAB = 32000
MEDUSA_LARGE_RECIPE = {"max_length": 2048, "lr": 1e-3}


@dataclass(frozen=True)
class BaseFacts:
    """A base model as its config describes it."""

    architecture: str
    model_type: str
    parameters: int  # every weight, experts included, tied embeddings once
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    dtype: str  # the dtype the checkpoint declares
    rope: dict  # the rope the draft trains with (a single one; see draft_rope)
    tied_embeddings: bool
    features: tuple[str, ...] = field(default=())  # what sets it apart, in words, for logs and the matrix
    layer_classes: tuple[str, ...] = field(default=())  # its decoder layers' classes (what FSDP2 shards by)

    @property
    def large(self) -> bool:
        return self.parameters >= LARGE_BASE_PARAMETERS

    def as_dict(self) -> dict:
        return {
            "architecture": self.architecture,
            "parameters": self.parameters,
            "vocab_size": self.vocab_size,
            "features": list(self.features),
        }


def text_config(config):
    """The language model's config (a multimodal config nests it)."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def load_config(model_path: str):
    import transformers

    return transformers.AutoConfig.from_pretrained(model_path)


def draft_rope(config) -> dict:
    """The rope a draft trains (and is exported) with: the base's own, so the draft reads the base's positions.

    transformers 5 keeps it in ``rope_parameters``; bases whose layer types use different ropes (Gemma 3's local
    and global layers, keyed by layer type) give the full-attention layers' one, the rope of the long context
    the base's final layers see.
    """
    text = text_config(config)
    rope = getattr(text, "rope_parameters", None) or {}
    if rope and all(isinstance(value, dict) for value in rope.values()):
        rope = rope.get("full_attention") or next(iter(rope.values()))
    rope = dict(rope) if rope else {"rope_type": "default"}
    rope.setdefault("rope_type", rope.pop("type", "default"))
    rope.setdefault("rope_theta", getattr(text, "rope_theta", None) or 10000.0)
    return rope


def meta_model(config):
    """The base built on the meta device: its modules and parameter shapes, no memory, no weights."""
    import torch
    import transformers

    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(config)


def facts(config) -> BaseFacts:
    """What ``config`` (an HF PretrainedConfig) describes, from a meta-device build of the model."""
    text = text_config(config)
    model = meta_model(config)
    parameters = sum(p.numel() for p in model.parameters())
    names = [name for name, _ in model.named_parameters()]
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    rope = draft_rope(config)
    features = []
    if rope["rope_type"] != "default":
        factor = rope.get("factor")
        features.append(f"rope {rope['rope_type']}" + (f" ×{factor:g}" if factor else ""))
    layer_ropes = getattr(text, "rope_parameters", None) or {}
    if layer_ropes and all(isinstance(v, dict) for v in layer_ropes.values()) and len(layer_ropes) > 1:
        features.append("a rope per layer type")
    features.append(f"vocabulary {text.vocab_size:,}")
    if kv_heads < heads:
        features.append(f"GQA {heads}/{kv_heads}")
    if head_dim * heads != text.hidden_size:
        features.append(f"head_dim {head_dim} ≠ hidden/heads")
    if getattr(config, "tie_word_embeddings", False) or getattr(text, "tie_word_embeddings", False):
        features.append("tied embeddings")
    if any(n.endswith(("q_proj.bias", "qkv_proj.bias")) for n in names):
        features.append("attention biases")
    if any(".q_norm." in n or n.endswith(".q_norm.weight") for n in names):
        features.append("qk-norm")
    for key, label in (("attn_logit_softcapping", "attention"), ("final_logit_softcapping", "final logit")):
        if getattr(text, key, None):
            features.append(f"{label} soft-capping {getattr(text, key):g}")
    layer_types = getattr(text, "layer_types", None) or []
    window = getattr(text, "sliding_window", None)
    context = getattr(text, "max_position_embeddings", None) or float("inf")
    if window and window < context and (not layer_types or "sliding_attention" in layer_types):
        if getattr(text, "use_sliding_window", True) is not False:
            share = f" on {layer_types.count('sliding_attention')}/{len(layer_types)} layers" if layer_types else ""
            features.append(f"sliding window {window}{share}")
    experts = next(
        (getattr(text, k) for k in ("num_experts", "num_local_experts", "n_routed_experts") if getattr(text, k, 0)),
        0,
    )
    if experts:
        top = getattr(text, "num_experts_per_tok", None) or getattr(text, "experts_per_token", None)
        features.append(f"MoE {experts} experts" + (f" top-{top}" if top else ""))
    if any("sinks" in n for n in names):
        features.append("attention sinks")
    if getattr(config, "quantization_config", None):
        method = config.quantization_config.get("quant_method", "?")
        features.append(f"{method} weights")
    declared = getattr(config, "dtype", None) or getattr(text, "dtype", None)
    return BaseFacts(
        architecture=(getattr(config, "architectures", None) or [type(model).__name__])[0],
        model_type=getattr(text, "model_type", ""),
        parameters=parameters,
        vocab_size=text.vocab_size,
        hidden_size=text.hidden_size,
        num_layers=text.num_hidden_layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        dtype=str(declared).removeprefix("torch.") if declared else "float32",
        rope=rope,
        tied_embeddings="tied embeddings" in features,
        features=tuple(features),
        layer_classes=tuple(getattr(model, "_no_split_modules", None) or ()),
    )


@functools.cache
def facts_of(model_path: str) -> BaseFacts:
    """:func:`facts` of the checkpoint directory ``model_path`` (its config.json only)."""
    return facts(load_config(model_path))


def mode_problem(base: BaseFacts, mode: str) -> SpectrainError | None:
    """Why ``mode`` cannot give a servable draft for ``base``, or None."""
    if mode in ("eagle3", "dflash") and base.architecture in VLLM_WITHOUT_AUX_HIDDEN_STATES:
        name = {"eagle3": "EAGLE-3", "dflash": "DFlash"}[mode]
        return SpectrainError(
            f"{base.architecture} cannot serve a {name} draft: the draft reads hidden states of the base's "
            f"intermediate layers, and vLLM 0.32's {base.architecture} does not hand them out (it does not "
            "implement SupportsEagle3), so the served base would refuse the draft",
            where="train_heads.mode",
            fix="train a medusa draft for this base (it reads only the last hidden state), or a base vLLM serves "
            f"{name} drafts for: {', '.join(sorted(VLLM_AUX_HIDDEN_STATE_TARGETS))}",
        )
    return None


def mode_warning(base: BaseFacts, mode: str) -> str | None:
    """What to say when nobody checked that vLLM serves ``mode`` for this base (it may well: say so, go on)."""
    known = VLLM_AUX_HIDDEN_STATE_TARGETS | VLLM_WITHOUT_AUX_HIDDEN_STATES
    if mode in ("eagle3", "dflash") and base.architecture not in known:
        return (
            f"{base.architecture} is not among the bases spectrain checked against vLLM 0.32: a {mode} draft needs a "
            "target class that hands out intermediate hidden states (SupportsEagle3); check vLLM's model before "
            "serving the draft"
        )
    return None


@functools.cache
def _modelopt_recipe(name: str) -> dict:
    """modelopt's own training recipe (shipped with the pinned release), for the large-base defaults."""
    import importlib.util

    import yaml

    spec = importlib.util.find_spec("modelopt_recipes")
    if spec is None or not spec.submodule_search_locations:
        raise SpectrainError(
            "modelopt's recipes (package modelopt_recipes) are not installed",
            fix="pip install -r docker/train/requirements.txt",
        )
    path = Path(spec.submodule_search_locations[0]) / "general" / "speculative_decoding" / f"{name}.yaml"
    return yaml.safe_load(path.read_text())["training"]


def recipe(base: BaseFacts, mode: str) -> dict[str, Any]:
    """The defaults a run takes for ``base`` when the user sets none: draft vocabulary, context length, lr."""
    if not base.large:
        chosen = dict(SMALL_RECIPE)
        why = f"{base.parameters / 1e6:.0f}M parameters: the recipe measured on the embedded 135M base"
    elif mode == "medusa":
        chosen = {"draft_vocab_size": 0, **MEDUSA_LARGE_RECIPE}
        why = f"{base.parameters / 1e9:.1f}B parameters: Medusa's own recipe"
    else:
        training = _modelopt_recipe("eagle3" if mode == "eagle3" else "dflash")
        chosen = {
            "draft_vocab_size": min(LARGE_DRAFT_VOCAB, base.vocab_size) if mode == "eagle3" else 0,
            "max_length": int(training["training_seq_len"]),
            "lr": float(training["learning_rate"]),
        }
        why = f"{base.parameters / 1e9:.1f}B parameters: modelopt's {mode} recipe"
    if chosen["draft_vocab_size"] >= base.vocab_size:
        chosen["draft_vocab_size"] = 0  # the full vocabulary
    return {**chosen, "why": why}


def describe(base: BaseFacts) -> str:
    size = f"{base.parameters / 1e9:.2f}B" if base.large else f"{base.parameters / 1e6:.0f}M"
    return f"{base.architecture}, {size} parameters; " + ", ".join(base.features)


def config_json(model_path: str) -> dict:
    return json.loads((Path(model_path) / "config.json").read_text())
