"""Tiny random-weight bases made from real configs: a few layers, small widths, everything else kept.

What makes a base different is kept as the real config has it: rope scaling (type and parameters; Phi-3's longrope
factor lists resampled to the smaller head), the vocabulary size, grouped KV heads (grouped stays grouped),
head_dim differing from hidden / heads, tied embeddings, biases, qk-norm (the class), soft-capping, sliding
windows (narrowed below the test's sequence length, so they act), the pattern of layer types, MoE layers (fewer
experts, top-k above 1). What cannot be kept is said: the weights are random bf16, not the hub's (gpt-oss's mxfp4
quantization_config is dropped), and every tiny base uses the embedded tokenizer: its special token ids, and a
vocabulary of at least its 49,152 ids (Mistral's 32,768 and Phi-3's 32,064 are raised to it).

    python tests/model_matrix/tiny.py llama-3.1-8b-instruct /tmp/tiny-llama     # build one (train environment)
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

CONFIGS = Path(__file__).resolve().parent / "configs"
HIDDEN, LAYERS, HEADS, INTERMEDIATE, MOE_INTERMEDIATE, EXPERTS, TOP_K, WINDOW = 64, 4, 4, 128, 32, 4, 2, 32
TOKEN_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def names() -> list[str]:
    return sorted(p.stem for p in CONFIGS.glob("*.json"))


def real(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}.json").read_text())


def _spread(values: list, count: int) -> list:
    """``count`` entries of ``values``, evenly spaced, first and last kept."""
    if count >= len(values):
        return list(values)
    return [values[round(i * (len(values) - 1) / (count - 1))] for i in range(count)]


def _layer_types(config: dict) -> list[str] | None:
    """The real base's type of every layer: its own list, or Gemma 3's sliding_window_pattern spelled out."""
    if config.get("layer_types"):
        return list(config["layer_types"])
    pattern = config.get("sliding_window_pattern")
    if pattern:
        return [
            "full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
            for i in range(config["num_hidden_layers"])
        ]
    return None


def shrink(config: dict, tokens: dict[str, int], tokenizer_size: int) -> dict:
    """``config`` (a real config.json) at tiny size; ``tokens``: the bos/eos/pad ids of the tokenizer used, whose
    ids go up to ``tokenizer_size`` - 1 (a smaller real vocabulary, Mistral's or Phi-3's, is raised to it)."""
    tiny = copy.deepcopy(config)
    tiny["vocab_size"] = max(config["vocab_size"], tokenizer_size)
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    tiny["num_attention_heads"] = HEADS
    tiny["num_key_value_heads"] = HEADS if kv_heads == heads else max(1, HEADS * kv_heads // heads)
    tiny["hidden_size"] = HIDDEN
    tiny_head_dim = 2 * HIDDEN // HEADS if head_dim * heads != config["hidden_size"] else HIDDEN // HEADS
    if "head_dim" in config or tiny_head_dim * HEADS != HIDDEN:
        tiny["head_dim"] = tiny_head_dim
    if config.get("query_pre_attn_scalar"):  # Gemma scales attention by it: keep its ratio to head_dim
        tiny["query_pre_attn_scalar"] = round(config["query_pre_attn_scalar"] * tiny_head_dim / head_dim)
    tiny["intermediate_size"] = INTERMEDIATE
    if "moe_intermediate_size" in config:
        tiny["moe_intermediate_size"] = MOE_INTERMEDIATE
    for experts in ("num_experts", "num_local_experts"):
        if config.get(experts):
            tiny[experts] = EXPERTS
    for top_k in ("num_experts_per_tok", "experts_per_token"):
        if config.get(top_k):
            tiny[top_k] = min(config[top_k], TOP_K)
    types = _layer_types(config)
    tiny["num_hidden_layers"] = LAYERS
    if types:  # evenly spread over the real stack, so local and global layers are both there
        tiny["layer_types"] = _spread(types, LAYERS)
        tiny.pop("sliding_window_pattern", None)
    if "max_window_layers" in config:
        tiny["max_window_layers"] = min(config["max_window_layers"], LAYERS)
    for key in ("sliding_window", "sliding_window_size"):  # a window as long as the context is none: kept
        if config.get(key) and config[key] < config.get("max_position_embeddings", float("inf")):
            tiny[key] = WINDOW
    rope = tiny.get("rope_scaling") or {}
    for factors in ("long_factor", "short_factor"):  # one factor per rotary frequency: head_dim / 2 of them
        if isinstance(rope.get(factors), list):
            rope[factors] = _spread(rope[factors], tiny_head_dim // 2)
    tiny.pop("quantization_config", None)  # random bf16 weights, not the hub's mxfp4 ones
    tiny.update({key: tokens[key] for key in TOKEN_KEYS if key in config or key == "pad_token_id"})
    return tiny


def build(name: str, directory: Path, seed: int = 0) -> Path:
    """A checkpoint directory of the tiny ``name``: config, random bf16 weights, the embedded tokenizer."""
    import torch
    import transformers

    from spectrain.models import resolve_base_model

    tokenizer = transformers.AutoTokenizer.from_pretrained(resolve_base_model("embedded"))
    tokens = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    tokens["pad_token_id"] = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokens["eos_token_id"]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(shrink(real(name), tokens, len(tokenizer)), indent=2))
    config = transformers.AutoConfig.from_pretrained(directory)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    transformers.GenerationConfig(**tokens).save_pretrained(directory)
    return directory


if __name__ == "__main__":
    print(build(sys.argv[1], Path(sys.argv[2])))
