"""One device decision per process: GPUs promised and missing stop the step; dtypes land where the decision says.

No GPU runs here: the CPU exercises the same code path (spectrain.devices.resolve, then every tensor placed by its
answer), with the GPU's dtype arrangement forced (a bfloat16 base under a float32 draft with bf16 autocast).
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from spectrain.components.train_heads.config import TrainHeadsConfig
from spectrain import devices, hardware
from spectrain.errors import SpectrainError


def test_auto_precision_is_bf16_only_where_the_cpu_runs_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for flags, expected in [({"amx_bf16", "avx2"}, "bf16"), ({"avx512_bf16"}, "bf16"), ({"avx2", "avx512f"}, "fp32")]:
        monkeypatch.setattr(hardware, "cpu_runs_bf16", lambda flags=flags: any(f in flags for f in hardware.BF16_FLAGS))
        placement = devices.resolve()
        assert (placement.device, placement.base_dtype, placement.precision) == ("cpu", "float32", expected)
        assert devices.resolve("fp32").precision == "fp32" and devices.resolve("bf16").precision == "bf16"
    with pytest.raises(SpectrainError, match="fp16 needs a GPU"):
        devices.resolve("fp16")


def test_a_step_given_gpus_that_sees_none_stops_with_what_it_saw(monkeypatch, tmp_path, tiny_data):
    monkeypatch.setenv(devices.GPUS_ENV, "2")
    with pytest.raises(SpectrainError) as refused:
        devices.resolve()
    message = str(refused.value)
    assert "given 2 GPU(s) and sees 0" in message
    assert f"torch {torch.__version__}" in message and "driver" in message  # the facts, not a guess
    assert "--train-gpus 0" in refused.value.fix

    # the train step stops before it loads a weight, through the command the pipeline runs
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"data": tiny_data, "output_dir": str(tmp_path / "out"), "max_steps": 1}))
    step = subprocess.run(
        [sys.executable, "-m", "spectrain.cli", "step", "train-heads", "--config", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, devices.GPUS_ENV: "1"},
        timeout=300,
    )
    assert step.returncode == 2, step.stderr[-2000:]
    assert "given 1 GPU(s) and sees 0" in step.stderr and "Traceback" not in step.stderr
    assert not (tmp_path / "out" / "draft_weights.safetensors").exists()


def test_a_gpu_count_that_is_not_a_number_is_refused(monkeypatch):
    monkeypatch.setenv(devices.GPUS_ENV, "all")
    with pytest.raises(SpectrainError, match="not a count of GPUs"):
        devices.resolve()


def test_a_bfloat16_base_needs_autocast_for_its_float32_draft():
    with pytest.raises(SpectrainError, match="without autocast"):
        TrainHeadsConfig(data="x", base_dtype="bfloat16", precision="fp32").validate()


@pytest.mark.slow
def test_the_gpu_arrangement_trains_a_float32_draft_over_a_bfloat16_base(tmp_path, tiny_data, monkeypatch):
    """What a GPU runs (base in bf16, draft master weights in fp32, bf16 autocast), run here on the CPU: every base
    tensor is bf16 on the decided device, every draft tensor fp32 there, and the cache and training still work."""
    from spectrain.components.train_heads import train, trainer

    placed = {}
    original = trainer.FrozenBase.on_train_end

    def record(self, args, state, control, model=None, **kwargs):  # where the tensors live when training ends
        placed.update({name: (p.device.type, p.dtype) for name, p in model.named_parameters()})
        return original(self, args, state, control, model=model, **kwargs)

    monkeypatch.setattr(trainer.FrozenBase, "on_train_end", record)
    result = train.run(
        TrainHeadsConfig(
            data=tiny_data,
            output_dir=str(tmp_path / "out"),
            mode="eagle3",
            base_dtype="bfloat16",
            precision="bf16",
            max_steps=2,
            batch_size=2,
            max_length=96,
            draft_vocab_size=512,
            training_arguments={"warmup_steps": 0, "logging_steps": 1},
        )
    )
    assert result["placement"]["base_dtype"] == "bfloat16" and result["precision"] == "bf16"
    draft = {n: v for n, v in placed.items() if n.startswith("eagle_module")}
    base = {n: v for n, v in placed.items() if not n.startswith("eagle_module")}
    assert draft and all(v == ("cpu", torch.float32) for v in draft.values()), draft
    assert base and all(v == ("cpu", torch.bfloat16) for v in base.values())
    assert result["final_loss"] is not None and result["final_loss"] == result["final_loss"]  # finite, not NaN
