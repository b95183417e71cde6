"""`uv pip ARGS...` as this machine's pip would install: the Makefile builds the virtualenvs with it.

uv installs the same requirement files the images install with pip (docker/<env>/requirements*.txt), resolving as
pip does (``--index-strategy unsafe-best-match``: the best version across every index) and compiling bytecode as
pip does, in a fraction of pip's time (the three environments: ~2 minutes instead of ~6 on 2 cores). It does not
read pip's configuration, so what pip would use is handed to it: index URLs, find-links and constraint files from
`pip config list` (environment variables first, then the configuration files), and pip's certificate bundle.

    python3 scripts/uv_pip.py install --python .venvs/serve/bin/python -r docker/serve/requirements.txt
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

UV = Path(__file__).resolve().parents[1] / ".venvs" / ".uv" / "bin" / "uv"  # pinned in docker/requirements-uv.txt
# pip setting -> the uv flag that means the same (a setting may hold several values, space-separated)
FLAGS = {
    "index-url": "--index-url",
    "extra-index-url": "--extra-index-url",
    "find-links": "--find-links",
    "constraint": "--constraint",
}


def pip_settings() -> dict[str, str]:
    """pip's effective settings, as `pip config list` prints them: an environment variable (`:env:.key`) wins over
    the configuration files (`global.key`, `install.key`)."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    ).stdout
    found: dict[str, tuple[int, str]] = {}
    for line in listed.splitlines():
        scope_key, _, value = line.partition("=")
        scope, _, key = scope_key.partition(".")
        rank = {":env:": 0, "install": 1, "global": 2}.get(scope, 3)
        if key and (key not in found or rank < found[key][0]):
            found[key] = (rank, " ".join(shlex.split(value)))
    return {key: value for key, (_, value) in found.items()}


def uv_arguments(arguments: list[str], settings: dict[str, str]) -> list[str]:
    """The `uv pip` command line for pip-style ``arguments``, with ``settings`` as uv flags (for `install`)."""
    if arguments[:1] != ["install"]:
        return [str(UV), "pip", *arguments]
    flags = ["--index-strategy", "unsafe-best-match", "--compile-bytecode"]
    for setting, flag in FLAGS.items():
        for value in settings.get(setting, "").split():
            flags += [flag, value]
    return [str(UV), "pip", "install", *flags, *arguments[1:]]


def main() -> int:
    settings = pip_settings()
    env = dict(os.environ)
    if settings.get("cert"):
        env.setdefault("SSL_CERT_FILE", settings["cert"])
    return subprocess.run(uv_arguments(sys.argv[1:], settings), env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
