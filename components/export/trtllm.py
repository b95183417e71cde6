"""TensorRT-LLM: what its loaders read, written next to the vLLM draft, and checked against them on CPU.

Which TensorRT-LLM path takes which draft (TensorRT-LLM 1.x, read from its sources):
  eagle3  PyTorch backend (`trtllm-serve BASE --config trtllm/config.yaml`): the same HF-style draft
          directory vLLM loads. `Eagle3ForCausalLM.load_weights` renames `layers.0.*` -> `midlayer.*`,
          prefixes everything but `lm_head` with `model.`; the target's capture layers are given as
          `eagle3_layers_to_capture` (layer *outputs*, modelopt's numbering, not vLLM's shifted one).
  medusa  TensorRT engine (`examples/medusa/convert_checkpoint.py --medusa_model_dir trtllm/medusa`,
          then `trtllm-build --speculative_decoding_mode medusa`): `load_medusa_hf` reads
          `medusa_lm_head.safetensors` with `{h}.{l}.linear.weight|bias` and `{h}.{L}.weight`.
  dflash  PyTorch backend (`DFlashDecodingConfig`, one-model flow, GPU only): the same directory vLLM loads
          (modelopt's exporter, z-lab's format). `_torch/models/modeling_dflash.py` builds the draft from
          `model_type` (qwen3), reads top-level `block_size` (max_draft_len + 1 must fit in it) and
          `dflash_config.mask_token_id` / `target_layer_ids` (layer outputs, as modelopt numbers them), prefixes
          `layers.*` and `norm` with `model.`, keeps `fc` and `hidden_norm`, and shares the target's embedding
          and lm_head (the draft has neither).
The engine build needs a GPU and the TensorRT-LLM image; elsewhere the checkpoint is written, validated
here, and the result says that the build was skipped.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

# TensorRT-LLM's Medusa checkpoint converter, where the release image keeps its examples.
MEDUSA_CONVERT = "/app/tensorrt_llm/examples/medusa/convert_checkpoint.py"
# trtllm-build arguments for a Medusa engine; batch/sequence limits are the serving team's to tune.
MEDUSA_BUILD = ["--speculative_decoding_mode", "medusa", "--max_batch_size", "8", "--gemm_plugin", "auto"]


def trtllm_medusa_name(vllm_name: str, num_layers: int) -> str:
    head = re.fullmatch(r"lm_heads\.(\d+)\.weight", vllm_name)
    if head:
        return f"{head[1]}.{num_layers}.weight"
    return re.sub(r"^blocks\.(\d+)\.layers\.(\d+)\.", r"\1.\2.linear.", vllm_name)


def write_medusa(model, vllm_tensors: dict[str, torch.Tensor], directory: Path, dtype: torch.dtype) -> None:
    """The original Medusa layout TensorRT-LLM's `load_medusa_hf` reads (non-modelopt path).

    Renamed from the vLLM export's names: `blocks.{h}.layers.{l}.*` -> `{h}.{l}.linear.*`,
    `lm_heads.{h}.weight` -> `{h}.{num_layers}.weight`.
    """
    directory.mkdir(parents=True, exist_ok=True)
    layers = model.medusa_num_layers
    renamed = {trtllm_medusa_name(name, layers): tensor for name, tensor in vllm_tensors.items()}
    save_file(
        {n: t.detach().to(dtype).contiguous() for n, t in renamed.items()},
        str(directory / "medusa_lm_head.safetensors"),
        metadata={"format": "pt"},
    )
    config = {
        "medusa_num_heads": model.medusa_num_heads,
        "medusa_num_layers": layers,
        "hidden_size": model.config.hidden_size,
        "vocab_size": model.config.vocab_size,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))


def medusa_commands(base_model: str, medusa_dir: Path, out: Path, heads: int, layers: int, dtype: str) -> list[list]:
    checkpoint, engine = out / "checkpoint", out / "engine"
    return [
        [
            "python3",
            MEDUSA_CONVERT,
            "--model_dir",
            base_model,
            "--medusa_model_dir",
            str(medusa_dir),
            "--output_dir",
            str(checkpoint),
            "--dtype",
            dtype,
            "--num_medusa_heads",
            str(heads),
            "--num_medusa_layers",
            str(layers),
        ],
        ["trtllm-build", "--checkpoint_dir", str(checkpoint), "--output_dir", str(engine), *MEDUSA_BUILD],
    ]


def serve_config(draft_dir: Path, decoding_type: str, num_draft_tokens: int, **extra) -> str:
    """`trtllm-serve --config` YAML for a draft (yaml.safe_dump: any path stays one quoted string); DFlash's mask
    token and target layers come from its config.json, EAGLE-3 names the base layers whose outputs it reads."""
    speculative = {
        "decoding_type": decoding_type,
        "max_draft_len": num_draft_tokens,
        "speculative_model": str(draft_dir),
        **extra,
    }
    usage = f"# trtllm-serve BASE_MODEL --backend pytorch --config {draft_dir}/trtllm/config.yaml\n"
    return usage + yaml.safe_dump({"speculative_config": speculative}, sort_keys=False, default_flow_style=None)


def expected_dflash(config: dict) -> dict[str, tuple]:
    """Parameter names and shapes of TensorRT-LLM's DFlash draft (Qwen3 layers with q/k norms), after its rename."""
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    kv_heads, mlp = config.get("num_key_value_heads", heads), config["intermediate_size"]
    shapes = {
        "fc.weight": (hidden, hidden * len(config["dflash_config"]["target_layer_ids"])),
        "hidden_norm.weight": (hidden,),
        "model.norm.weight": (hidden,),
    }
    for index in range(config["num_hidden_layers"]):
        layer = f"model.layers.{index}."
        shapes |= {
            f"{layer}input_layernorm.weight": (hidden,),
            f"{layer}post_attention_layernorm.weight": (hidden,),
            f"{layer}self_attn.q_proj.weight": (heads * head_dim, hidden),
            f"{layer}self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
            f"{layer}self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
            f"{layer}self_attn.o_proj.weight": (hidden, heads * head_dim),
            f"{layer}self_attn.q_norm.weight": (head_dim,),
            f"{layer}self_attn.k_norm.weight": (head_dim,),
            f"{layer}mlp.gate_proj.weight": (mlp, hidden),
            f"{layer}mlp.up_proj.weight": (mlp, hidden),
            f"{layer}mlp.down_proj.weight": (hidden, mlp),
        }
    return shapes


def dflash_names_as_trtllm_loads_them(names: list[str]) -> dict[str, str]:
    """Our name -> the name TensorRT-LLM's DFlash `load_weights` gives it: `layers.*` and `norm` under `model.`."""
    return {name: f"model.{name}" if re.match(r"(layers\.|norm\.)", name) else name for name in names}


def dflash_config_problems(config: dict, num_draft_tokens: int) -> list[str]:
    """What TensorRT-LLM reads from a DFlash draft's config.json besides its weights, and the draft-length rule."""
    problems = []
    if config.get("model_type") != "qwen3":
        problems.append(f"model_type {config.get('model_type')!r}: TensorRT-LLM builds the DFlash draft as qwen3")
    dflash = config.get("dflash_config") or {}
    problems += [f"dflash_config.{key} missing" for key in ("mask_token_id", "target_layer_ids") if key not in dflash]
    block = config.get("block_size")
    if not isinstance(block, int):
        problems.append("block_size missing at the top level (where TensorRT-LLM reads it)")
    elif num_draft_tokens + 1 > block:
        problems.append(f"max_draft_len {num_draft_tokens} + 1 exceeds the block size {block}")
    return problems


def expected_medusa(heads: int, layers: int, hidden: int, vocab: int) -> dict[str, tuple]:
    shapes: dict[str, tuple] = {}
    for h in range(heads):
        for layer in range(layers):
            shapes[f"{h}.{layer}.linear.weight"] = (hidden, hidden)
            shapes[f"{h}.{layer}.linear.bias"] = (hidden,)
        shapes[f"{h}.{layers}.weight"] = (vocab, hidden)
    return shapes


def expected_eagle3(config: dict) -> dict[str, tuple]:
    """Parameter names and shapes of TensorRT-LLM's Eagle3DraftModel (one layer, Llama attention), after its rename."""
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    kv_heads, mlp = config.get("num_key_value_heads", heads), config["intermediate_size"]
    capture = len(config.get("eagle_aux_hidden_state_layer_ids") or [0, 0, 0])
    layer = "model.midlayer."
    shapes = {
        "model.fc.weight": (hidden, hidden * capture),
        f"{layer}hidden_norm.weight": (hidden,),
        f"{layer}input_layernorm.weight": (hidden,),
        f"{layer}post_attention_layernorm.weight": (hidden,),
        f"{layer}self_attn.q_proj.weight": (heads * head_dim, 2 * hidden),
        f"{layer}self_attn.k_proj.weight": (kv_heads * head_dim, 2 * hidden),
        f"{layer}self_attn.v_proj.weight": (kv_heads * head_dim, 2 * hidden),
        f"{layer}self_attn.o_proj.weight": (hidden, heads * head_dim),
        f"{layer}mlp.gate_proj.weight": (mlp, hidden),
        f"{layer}mlp.up_proj.weight": (mlp, hidden),
        f"{layer}mlp.down_proj.weight": (hidden, mlp),
        "model.norm.weight": (hidden,),
        "lm_head.weight": (config.get("draft_vocab_size") or config["vocab_size"], hidden),
    }
    if config.get("draft_vocab_size") and config["draft_vocab_size"] != config["vocab_size"]:
        shapes["model.d2t"] = (config["draft_vocab_size"],)
    return shapes


def eagle3_names_as_trtllm_loads_them(names: list[str], num_layers: int) -> dict[str, str]:
    """Our name -> the name `Eagle3ForCausalLM.load_weights` gives it (its rename, restated to check against)."""
    renamed = {}
    for name in names:
        new = (
            re.sub(r"^layers\.0\.", "midlayer.", name)
            if num_layers == 1
            else re.sub(r"^layers\.(\d+)\.", r"midlayer.\1.", name)
        )
        renamed[name] = new if "lm_head" in new else f"model.{new}"
    return renamed


def same_names(names: list[str]) -> dict[str, str]:
    return {name: name for name in names}


def check(files: list[Path], expected: dict[str, tuple], rename=same_names) -> list[str]:
    """Problems (missing, unexpected or misshapen tensors) between the files and what the loader reads."""
    shapes = {}
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                shapes[name] = tuple(handle.get_slice(name).get_shape())
    loaded = {rename_to: shapes[name] for name, rename_to in rename(list(shapes)).items()}
    problems = [f"missing {name} {shape}" for name, shape in expected.items() if name not in loaded]
    problems += [
        f"unexpected {name} (the loader would skip it)"
        for name in loaded
        if name not in expected and name != "model.t2d"
    ]
    problems += [
        f"{name}: shape {loaded[name]}, expected {shape}"
        for name, shape in expected.items()
        if name in loaded and loaded[name] != shape
    ]
    return problems


def export(
    model,
    mode: str,
    draft_dir: Path,
    dtype: torch.dtype,
    base_model: str,
    num_draft_tokens: int,
    capture_layers: list[int],
    vllm_tensors: dict[str, torch.Tensor] | None = None,
) -> dict:
    """Write and validate the TensorRT-LLM files for ``mode`` (for Medusa the engine's build commands)."""
    out = draft_dir / "trtllm"
    out.mkdir(parents=True, exist_ok=True)
    dtype_name = str(dtype).removeprefix("torch.")
    if mode == "dflash":
        config = json.loads((draft_dir / "config.json").read_text())
        (out / "config.yaml").write_text(serve_config(draft_dir, "DFlash", num_draft_tokens))
        problems = dflash_config_problems(config, num_draft_tokens) + check(
            sorted(draft_dir.glob("*.safetensors")), expected_dflash(config), dflash_names_as_trtllm_loads_them
        )
        command = ["trtllm-serve", base_model, "--backend", "pytorch", "--config", str(out / "config.yaml")]
        return {
            "supported": True,
            "problems": problems,
            "serve_command": shlex.join(command),
            "engine": "not needed: the PyTorch backend loads the draft directory (GPU only; needs flash-attn)",
        }
    if mode == "eagle3":
        config = json.loads((draft_dir / "config.json").read_text())
        (out / "config.yaml").write_text(
            serve_config(draft_dir, "Eagle3", num_draft_tokens, eagle3_layers_to_capture=capture_layers)
        )
        problems = check(
            sorted(draft_dir.glob("*.safetensors")),
            expected_eagle3(config),
            lambda names: eagle3_names_as_trtllm_loads_them(names, config["num_hidden_layers"]),
        )
        command = ["trtllm-serve", base_model, "--backend", "pytorch", "--config", str(out / "config.yaml")]
        return {
            "supported": True,
            "problems": problems,
            "serve_command": shlex.join(command),
            "engine": "not needed: the PyTorch backend loads the draft directory",
        }
    medusa_dir = out / "medusa"
    if vllm_tensors is None:
        raise ValueError("a Medusa export needs the draft's tensors as vLLM loads them (vllm_tensors)")
    write_medusa(model, vllm_tensors, medusa_dir, dtype)
    heads, layers = model.medusa_num_heads, model.medusa_num_layers
    problems = check(
        [medusa_dir / "medusa_lm_head.safetensors"],
        expected_medusa(heads, layers, model.config.hidden_size, model.config.vocab_size),
    )
    commands = medusa_commands(base_model, medusa_dir, out, heads, layers, dtype_name)
    (out / "build.sh").write_text(
        "#!/usr/bin/env bash\n# Run in the trtllm image (GPU): Medusa engine\nset -euo pipefail\n"
        + "".join(shlex.join(c) + "\n" for c in commands)
    )
    result = {
        "supported": True,
        "problems": problems,
        "build_commands": [shlex.join(c) for c in commands],
        "serve_command": shlex.join(
            ["trtllm-serve", str(out / "engine"), "--backend", "tensorrt", "--tokenizer", base_model]
        ),
    }
    # Built in one place only: the pipeline's build-engine step (components/export/engine.py, trtllm image, GPU).
    result["engine"] = (
        "not built here: the build-engine step builds it (pipeline parameter export_trtllm_engine), or "
        "run trtllm/build.sh in the trtllm image"
        if not problems
        else "not buildable: the checkpoint does not match the loader"
    )
    return result
