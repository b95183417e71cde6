"""The TensorRT-LLM engine step refuses clearly where it cannot build (no GPU, no TensorRT-LLM here).

The build itself needs the trtllm image on an NVIDIA GPU and never runs on the development machines.
"""

import json
import subprocess
import sys

import pytest

from spectrain.components.export.config import BuildEngineConfig
from spectrain.components.export.engine import run
from spectrain.errors import SpectrainError


def test_a_draft_without_medusa_heads_is_refused_with_the_reason(tmp_path):
    with pytest.raises(SpectrainError, match="no TensorRT-LLM Medusa heads") as error:
        run(BuildEngineConfig(draft=str(tmp_path), output_dir=str(tmp_path / "engine")))
    assert "EAGLE-3 drafts need no engine" in error.value.fix


def test_without_gpu_and_tensorrt_llm_the_step_says_what_is_missing_and_where_to_run(tmp_path):
    medusa = tmp_path / "draft" / "trtllm" / "medusa"
    medusa.mkdir(parents=True)
    (medusa / "medusa_lm_head.safetensors").write_bytes(b"")
    (medusa / "config.json").write_text(
        json.dumps({"medusa_num_heads": 2, "medusa_num_layers": 1, "torch_dtype": "bfloat16"})
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "spectrain.cli",
            "step",
            "build-engine",
            "--draft",
            str(tmp_path / "draft"),
            "--output-dir",
            str(tmp_path / "engine"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "cannot build a TensorRT-LLM engine here: no trtllm-build" in proc.stderr
    assert "an NVIDIA GPU" in proc.stderr and "trtllm image on a GPU node" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "engine").exists()
