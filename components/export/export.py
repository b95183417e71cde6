"""Export step logic: EAGLE and DFlash via modelopt's exporter, Medusa in vLLM's Medusa layout; dtype checked in the file.

Which runtime loads what (see README.md):
  eagle3        -> vLLM `--speculative-config '{"method": "eagle3", "model": DIR, ...}'`
  medusa        -> vLLM `--speculative-config '{"method": "medusa", "model": DIR, ...}'`
  eagle3        -> TensorRT-LLM `trtllm-serve BASE --config DIR/trtllm/config.yaml` (PyTorch backend)
  medusa        -> TensorRT-LLM engine from DIR/trtllm/medusa (`DIR/trtllm/build.sh`, see trtllm.py)
  dflash        -> vLLM `--speculative-config '{"method": "dflash", "model": DIR, "num_speculative_tokens": k}'`
Every draft directory holds vllm_speculative_config.json: the config above with the k measured fastest (and, for
EAGLE-3, vLLM's per-batch-size schedule), less the "model" path (spectrain.drafts.vllm_speculative_config).
  dflash        -> TensorRT-LLM `trtllm-serve BASE --config DIR/trtllm/config.yaml` (PyTorch backend, GPU only)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from spectrain.components.export import trtllm
from spectrain.components.export.config import ExportConfig
from spectrain import devices, draft_checkpoint
from spectrain.drafts import SERVING_CONFIG, check_draft_checkpoint
from spectrain.errors import SpectrainError
from spectrain.models import resolve_base_model


def medusa_state_dict(model) -> dict[str, torch.Tensor]:
    """modelopt's `medusa_heads.{h}.{l}.linear` / `medusa_heads.{h}.{L}` -> vLLM's `blocks.{h}.layers.{l}` / `lm_heads.{h}`.

    vLLM silently skips names it does not know (the heads would stay random), so every name
    is produced here explicitly and nothing else is written.
    """
    tensors = {}
    for h, head in enumerate(model.medusa_heads):
        *blocks, lm_head = list(head)
        for layer, block in enumerate(blocks):
            tensors[f"blocks.{h}.layers.{layer}.weight"] = block.linear.weight
            tensors[f"blocks.{h}.layers.{layer}.bias"] = block.linear.bias
        tensors[f"lm_heads.{h}.weight"] = lm_head.weight
    return tensors


def export_medusa(model, output_dir: Path, dtype: torch.dtype) -> None:
    tensors = {name: t.detach().to(dtype).contiguous() for name, t in medusa_state_dict(model).items()}
    save_file(tensors, str(output_dir / "model.safetensors"), metadata={"format": "pt"})
    heads, layers = model.medusa_num_heads, model.medusa_num_layers
    config = {
        "architectures": ["MedusaModel"],
        "model_type": "medusa",
        "hidden_size": model.config.hidden_size,
        "vocab_size": model.config.vocab_size,
        "num_heads": heads,
        "num_hidden_layers": layers,
        "medusa_fc_bias": True,  # modelopt's ResBlock has a bias
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
    (output_dir / "config.json").write_text(json.dumps(config, indent=2))


def export_eagle(model, output_dir: Path, dtype: torch.dtype) -> None:
    from modelopt.torch.export import export_speculative_decoding

    model.to(dtype)  # the exporter keeps the module's dtype even when asked for another
    export_speculative_decoding(model, dtype=dtype, export_dir=output_dir)
    config_path = output_dir / "config.json"
    config = json.loads(config_path.read_text())
    # modelopt layer id i is the *output* of layer i; vLLM's id k is the output of layer k-1.
    trained_ids = list(model.eagle_config.eagle_aux_hidden_state_layer_ids)
    if model.eagle_config.use_aux_hidden_state:
        vllm_ids = [i + 1 for i in trained_ids]
        config["eagle_aux_hidden_state_layer_ids"] = vllm_ids
        if isinstance(config.get("eagle_config"), dict):
            config["eagle_config"]["eagle_aux_hidden_state_layer_ids"] = vllm_ids
    # The exporter injects yarn rope scaling by default; export the rope the draft was trained with.
    trained_rope = getattr(model.eagle_config, "rope_parameters", None) or getattr(
        model.eagle_config, "rope_scaling", None
    )
    config["rope_scaling"] = dict(trained_rope) if trained_rope else None
    config_path.write_text(json.dumps(config, indent=2))


def export_dflash(model, output_dir: Path, dtype: torch.dtype) -> None:
    """modelopt's exporter (``DFlashDraftModel``, the draft's tensors without the ``dflash_module.`` prefix), then
    a check that config.json carries what vLLM's DFlash model reads with the values the draft was trained with."""
    from modelopt.torch.export import export_speculative_decoding

    model.to(dtype)
    export_speculative_decoding(model, dtype=dtype, export_dir=output_dir)
    config = json.loads((output_dir / "config.json").read_text())
    trained = {
        "dflash_config.mask_token_id": model.mask_token_id,
        "dflash_config.target_layer_ids": list(model.target_layer_ids),
        "block_size": model.dflash_block_size,
        "num_hidden_layers": model.dflash_config.num_hidden_layers,
        "head_dim": model.dflash_config.head_dim,
        "rope_theta": dflash_rope_theta(model.dflash_config),
    }
    written = {key: _dotted(config, key) for key in trained}
    wrong = {key: (written[key], value) for key, value in trained.items() if written[key] != value}
    if wrong:
        raise RuntimeError(
            f"the exported DFlash config.json disagrees with the trained draft (written, trained): {wrong}"
        )


def dflash_rope_theta(draft_config) -> float:
    parameters = getattr(draft_config, "rope_parameters", None) or {}
    return float(parameters.get("rope_theta", getattr(draft_config, "rope_theta", 0.0)))


def _dotted(mapping: dict, key: str) -> Any:
    value: Any = mapping
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def safetensors_dtypes(output_dir: Path) -> set[str]:
    dtypes = set()
    for path in output_dir.rglob("*.safetensors"):
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                dtypes.add(str(handle.get_slice(name).get_dtype()))
    return dtypes


def read_evaluation(config: ExportConfig) -> dict:
    """The evaluation export takes k from ({} without one), refused before any work if it cannot serve as such."""
    if not config.evaluation:
        return {}
    path = Path(config.evaluation)
    path = path / "evaluation.json" if path.is_dir() else path
    try:
        evaluation = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SpectrainError(
            f"cannot read the evaluation ({exc})", where=str(path), fix="pass the evaluate step's output folder"
        ) from exc
    if evaluation.get("mode") != config.mode:
        raise SpectrainError(
            f"the evaluation measured a {evaluation.get('mode')} draft, this export is {config.mode}",
            where=f"{path}: mode",
            fix="pass the evaluation of this checkpoint",
        )
    if not config.num_draft_tokens and "recommended_num_draft_tokens" not in evaluation:
        raise SpectrainError(
            "the evaluation has no measured k (it was written before evaluate timed draft and verification steps)",
            where=f"{path}: recommended_num_draft_tokens",
            fix="evaluate the checkpoint again, or choose k yourself (--num-draft-tokens 3)",
        )
    return evaluation


def serving_config(config: ExportConfig, model, evaluation: dict) -> tuple[dict, str]:
    """vLLM's --speculative-config for this draft (less its path), and a line that says where its k comes from."""
    method = {"eagle3": "eagle3", "medusa": "medusa", "dflash": "dflash"}[config.mode]
    measured = evaluation.get("recommended_num_draft_tokens")
    if config.mode == "medusa":  # vLLM's Medusa proposes exactly one token per head
        heads = len(model.medusa_heads)
        why = f"Medusa: one token per head, {heads} heads"
        if measured and measured < heads:
            why += f"; the measured best is k = {measured}: train with medusa_num_heads = {measured}"
        return {"method": method, "num_speculative_tokens": heads}, why
    if config.num_draft_tokens:
        return {"method": method, "num_speculative_tokens": config.num_draft_tokens}, "k as given (num_draft_tokens)"
    speculative = {"method": method, "num_speculative_tokens": measured}
    why = f"k = {measured} measured fastest at batch 1 ({evaluation['expected_speedup']:.2f}x expected)"
    schedule = evaluation.get("num_speculative_tokens_per_batch_size")
    if schedule and config.mode == "eagle3":  # the schedule vLLM is proven to follow (operations/tests/test_watch.py)
        # vLLM caps each range's k at num_speculative_tokens and falls back to it where the schedule is off (data
        # parallel): the largest k the schedule uses, not a k (the best at batch 1) that it never does
        speculative["num_speculative_tokens"] = max(k for _, _, k in schedule)
        speculative["num_speculative_tokens_per_batch_size"] = schedule
        why += ", by batch size " + ", ".join(f"{a}-{b}: {k}" for a, b, k in schedule)
    return speculative, why


def run(config: ExportConfig) -> dict:
    started = time.monotonic()
    config.validate()
    check_draft_checkpoint(config.checkpoint, config.mode, "export")  # Medusa exports every head it has
    evaluation = read_evaluation(config)
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    dtype = getattr(torch, config.dtype)
    base_path = str(resolve_base_model(config.base_model))
    # Only the draft and the base's embeddings, final norm and lm_head (the base without decoder layers, as
    # modelopt's offline training loads it): an export needs no GPU and a few GB of memory for any base.
    model = draft_checkpoint.load(config.checkpoint, base_path, devices.cpu(), layers=False)
    attribute, part, write = {
        "medusa": ("medusa_heads", "Medusa heads", export_medusa),
        "eagle3": ("eagle_module", "EAGLE module", export_eagle),
        "dflash": ("dflash_module", "DFlash module", export_dflash),
    }[config.mode]
    if not hasattr(model, attribute):
        raise SpectrainError(
            f"the checkpoint has no {part}", where=config.checkpoint, fix="export it with the mode it was trained with"
        )
    write(model, output_dir, dtype)
    speculative, why = serving_config(config, model, evaluation)
    (output_dir / SERVING_CONFIG).write_text(json.dumps(speculative, indent=2))
    print(f"[export] serve it with {speculative['num_speculative_tokens']} draft tokens: {why}", flush=True)
    trt = None
    if config.trtllm:
        capture = list(model.eagle_config.eagle_aux_hidden_state_layer_ids) if config.mode == "eagle3" else []
        trt = trtllm.export(
            model,
            config.mode,
            output_dir,
            dtype,
            base_path,
            speculative["num_speculative_tokens"],
            capture,
            medusa_state_dict(model) if config.mode == "medusa" else None,
        )
        if trt.get("problems"):
            raise RuntimeError(
                "the TensorRT-LLM export does not match what its loader reads: " + "; ".join(trt["problems"])
            )
        print(f"[export] TensorRT-LLM: {trt.get('engine') or trt.get('reason')}", flush=True)
    found = safetensors_dtypes(output_dir)
    expected = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
    wrong = {d for d in found if expected.get(d, d) != config.dtype and d not in ("I64", "I32", "BOOL")}
    if wrong:
        raise RuntimeError(f"exported weights are {sorted(found)}, not {config.dtype}")
    files = sorted(p.relative_to(output_dir).as_posix() for p in output_dir.rglob("*") if p.is_file())
    size = sum(p.stat().st_size for p in output_dir.rglob("*") if p.is_file())
    print(f"[export] {config.mode} draft -> {output_dir} ({size / 1e6:.1f} MB, {config.dtype}): {files}", flush=True)
    return {
        "mode": config.mode,
        "draft_dir": str(output_dir),
        "files": files,
        "bytes": size,
        "dtype": config.dtype,
        "vllm_speculative_config": speculative,
        "num_speculative_tokens": speculative["num_speculative_tokens"],
        "serving_choice": why,
        "trtllm": trt,
        "seconds": time.monotonic() - started,
    }
