"""The TensorRT-LLM engine of a Medusa draft: the pipeline's optional engine step, in the trtllm image.

EAGLE-3 drafts need no engine (TensorRT-LLM's PyTorch backend loads the draft directory); a Medusa
draft is converted with the base model into a TensorRT-LLM checkpoint and built with `trtllm-build`,
the commands export writes into `trtllm/build.sh`, here with this pod's own paths. It needs an NVIDIA
GPU and TensorRT-LLM, so it is never run on the development machines: only its refusals are tested.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from spectrain.components.export.config import BuildEngineConfig
from spectrain.errors import SpectrainError


def missing_tools() -> list[str]:
    """What this machine lacks to build an engine ([] in the trtllm image on a GPU node)."""
    missing = [] if shutil.which("trtllm-build") else ["trtllm-build"]
    try:
        import torch
    except ImportError:  # not even the export code can load here
        return [*missing, "torch"]
    from spectrain.components.export.trtllm import MEDUSA_CONVERT

    if not Path(MEDUSA_CONVERT).exists():
        missing.append(MEDUSA_CONVERT)
    if not torch.cuda.is_available():
        missing.append("an NVIDIA GPU")
    return missing


def run(config: BuildEngineConfig) -> dict:
    started = time.monotonic()
    medusa_dir = Path(config.draft) / "trtllm" / "medusa"
    if not (medusa_dir / "medusa_lm_head.safetensors").exists():
        raise SpectrainError(
            f"no TensorRT-LLM Medusa heads in {medusa_dir}",
            where="build_engine.draft",
            fix="export a medusa draft (EAGLE-3 drafts need no engine: the PyTorch backend loads the draft directory)",
        )
    missing = missing_tools()
    if missing:
        raise SpectrainError(
            f"cannot build a TensorRT-LLM engine here: no {', '.join(missing)}",
            fix="run this step in the trtllm image on a GPU node (the pipeline does, with "
            "export_trtllm_engine: true), or `bash DRAFT/trtllm/build.sh` there by hand",
        )
    from spectrain.components.export.trtllm import medusa_commands
    from spectrain.models import resolve_base_model

    meta = json.loads((medusa_dir / "config.json").read_text())
    out = Path(config.output_dir)
    commands = medusa_commands(
        str(resolve_base_model(config.base_model)),
        medusa_dir,
        out,
        meta["medusa_num_heads"],
        meta["medusa_num_layers"],
        meta["torch_dtype"],
    )
    for command in commands:
        print(f"[build-engine] {shlex.join(command)}", flush=True)
        subprocess.run(command, check=True)
    shutil.rmtree(out / "checkpoint", ignore_errors=True)  # intermediate: the engine is what gets served
    engine = out / "engine"
    return {
        "engine": str(engine),
        "commands": [shlex.join(c) for c in commands],
        "serve_command": shlex.join(
            ["trtllm-serve", str(engine), "--backend", "tensorrt", "--tokenizer", config.base_model]
        ),
        "seconds": time.monotonic() - started,
    }
