"""What this machine's CPU can do, read once from /proc/cpuinfo (no torch import needed)."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # either one runs bf16 matrix maths natively


@functools.cache
def cpu() -> tuple[str, frozenset[str]]:
    """(model name, instruction-set flags); the flags are empty where /proc/cpuinfo is not readable."""
    model, flags = platform.processor(), frozenset[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and ":" in line:
                flags = frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return model, flags


def cpu_runs_bf16() -> bool:
    """Whether bf16 runs natively here (AMX or AVX512-BF16); elsewhere it is emulated and slower than fp32."""
    return any(flag in cpu()[1] for flag in BF16_FLAGS)


def has_nvidia_gpu() -> bool:
    """An NVIDIA device node is present (cheap; the serve step does not import torch for this)."""
    return Path("/dev/nvidiactl").exists() or Path("/dev/nvidia0").exists()
