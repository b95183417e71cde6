"""Where a step computes: its device, the frozen base's dtype and the draft's training precision, decided once.

Every step that runs the base (train, evaluate) asks :func:`resolve` once and puts every tensor where the answer
says. A step that was given GPUs (the compiled pipeline sets ``SPECTRAIN_GPUS`` on every task that requests them)
and sees none stops with what it saw: torch's build, the driver, the visible devices. It never falls back to the
CPU, where an 8B evaluation would take hours and the measured step costs would describe the wrong machine.

On a GPU the base runs in its own dtype (bfloat16 for every current base; float16 where the card has no bf16
units) and the draft trains with autocast in the precision the card supports (bf16, else fp16 with loss scaling),
its master weights in float32. On a CPU the base runs in float32 and the draft trains with bf16 autocast only
where the CPU has bf16 units (AMX, AVX512-BF16); elsewhere bf16 is emulated and slower than float32.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from spectrain import hardware
from spectrain.errors import SpectrainError

GPUS_ENV = "SPECTRAIN_GPUS"  # how many GPUs the task was given (set by the compiled pipeline; absent: none promised)
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
BASE_DTYPES = ("auto", "bfloat16", "float16", "float32")


@dataclass(frozen=True)
class Placement:
    """One process's answer: where tensors live and in which dtypes."""

    device: str  # "cuda:<local rank>" or "cpu"
    base_dtype: str  # torch dtype name of the frozen base (and of evaluation's arithmetic)
    precision: str  # autocast of draft training: bf16, fp16 (with loss scaling) or fp32
    accelerator: str  # what runs it, for logs and results: "2 x NVIDIA H100 80GB HBM3", "CPU: AMD EPYC (avx2)"
    gpus: int  # CUDA devices visible to this process
    gpu_memory_bytes: int = 0  # of the smallest visible GPU (0 on a CPU)

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")

    def torch_device(self):
        import torch

        return torch.device(self.device)

    def dtype(self):
        import torch

        return getattr(torch, self.base_dtype)

    def as_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        return f"{self.accelerator}: base in {self.base_dtype} on {self.device}, draft trained in {self.precision}"


def expected_gpus() -> int:
    """The GPUs this task was promised (``SPECTRAIN_GPUS``), 0 when none was."""
    value = os.environ.get(GPUS_ENV, "").strip()
    if not value:
        return 0
    if not value.isdigit():
        raise SpectrainError(
            f"{GPUS_ENV}={value!r} is not a count of GPUs", where=GPUS_ENV, fix="set it to a whole number, or unset it"
        )
    return int(value)


def what_was_seen() -> str:
    """torch's build, the NVIDIA driver and the visible devices: the facts behind 'no GPU here'."""
    import torch

    cuda = torch.version.cuda
    build = f"torch {torch.__version__} " + (f"built for CUDA {cuda}" if cuda else "built for the CPU only")
    driver_file = Path("/proc/driver/nvidia/version")
    try:
        driver = driver_file.read_text().splitlines()[0].strip()
    except (OSError, IndexError):
        driver = "no NVIDIA kernel driver loaded (/proc/driver/nvidia/version is missing)"
    nodes = sorted(p.name for p in Path("/dev").glob("nvidia[0-9]*"))
    visible = {k: os.environ[k] for k in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES") if k in os.environ}
    seen = torch.cuda.device_count() if cuda else 0
    return (
        f"{build}; torch sees {seen} CUDA device(s); driver: {driver}; device nodes: {', '.join(nodes) or 'none'}"
        + (f"; {', '.join(f'{k}={v}' for k, v in visible.items())}" if visible else "")
    )


def resolve(precision: str = "auto", base_dtype: str = "auto", model_dtype: str | None = None) -> Placement:
    """The placement of this process: ``precision`` and ``base_dtype`` as asked ('auto': chosen for the device);
    ``model_dtype`` is the dtype the base's config declares (``config.dtype``), which 'auto' keeps on a GPU."""
    import torch

    if precision not in PRECISIONS:
        raise SpectrainError(f"precision {precision!r} is none of {', '.join(PRECISIONS)}", where="precision")
    if base_dtype not in BASE_DTYPES:
        raise SpectrainError(f"base_dtype {base_dtype!r} is none of {', '.join(BASE_DTYPES)}", where="base_dtype")
    expected = expected_gpus()
    seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if expected and seen < expected:
        raise SpectrainError(
            f"this step was given {expected} GPU(s) and sees {seen}: {what_was_seen()}",
            where=GPUS_ENV,
            fix="run the CUDA build of the train image on a node whose NVIDIA driver supports it (nvidia-smi in the "
            "pod must list the GPUs), or compile the pipeline without GPUs for this step (spectrain compile "
            "--train-gpus 0) to run it on CPUs knowingly",
        )
    if seen:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        bf16 = torch.cuda.is_bf16_supported()
        native = "bf16" if bf16 else "fp16"
        if precision == "bf16" and not bf16:
            raise SpectrainError(
                f"precision bf16 was asked for, but {torch.cuda.get_device_name(local_rank)} has no bf16 units",
                where="precision",
                fix="use precision fp16 (loss-scaled) or auto",
            )
        if base_dtype == "auto":
            declared = model_dtype if model_dtype in ("bfloat16", "float16") else "bfloat16"
            base_dtype = declared if declared == "float16" or bf16 else "float16"
        names = {torch.cuda.get_device_name(i) for i in range(seen)}
        memory = min(torch.cuda.get_device_properties(i).total_memory for i in range(seen))
        return Placement(
            device=f"cuda:{local_rank}",
            base_dtype=base_dtype,
            precision=native if precision == "auto" else precision,
            accelerator=f"{seen} x {' / '.join(sorted(names))}",
            gpus=seen,
            gpu_memory_bytes=memory,
        )
    if precision == "fp16":
        raise SpectrainError(
            "precision fp16 needs a GPU (its loss scaling is CUDA's); this process has none",
            where="precision",
            fix="use auto, bf16 or fp32 on a CPU",
        )
    model, flags = hardware.cpu()
    units = [flag for flag in hardware.BF16_FLAGS if flag in flags] or [f for f in ("avx512f", "avx2") if f in flags]
    return Placement(
        device="cpu",
        base_dtype="float32" if base_dtype == "auto" else base_dtype,
        precision=("bf16" if hardware.cpu_runs_bf16() else "fp32") if precision == "auto" else precision,
        accelerator=f"CPU: {model or 'unknown'}" + (f" ({', '.join(units)})" if units else ""),
        gpus=0,
    )


def cpu() -> Placement:
    """The CPU in float32, asked for by name: a step that runs no model forward (export)."""
    return Placement(device="cpu", base_dtype="float32", precision="fp32", accelerator="CPU", gpus=0)


def gpu_env(gpus: int) -> dict[str, str]:
    """The environment the compiled pipeline gives a task that requests ``gpus`` GPUs."""
    return {GPUS_ENV: str(gpus)} if gpus else {}
