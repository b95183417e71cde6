"""Every step can run in the environment the step registry assigns to it, on a machine that never ran spectrain.

Each environment's Python imports the modules of its steps and what they import only while running
(a GGUF conversion needs gguf and accelerate: a missing one once failed `make run`'s first step).
"""

import os
import subprocess

import pytest

from spectrain.cli.steps import STEPS
from spectrain.steps import ENVIRONMENTS, python_for


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_step_imports_what_it_needs_in_its_own_environment(env):
    assert os.environ.get(f"SPECTRAIN_PYTHON_{env.upper()}"), "run through tests/run_all.sh (it points at .venvs)"
    assert [step for step in STEPS.values() if step.env == env]
    # In that environment: each step's config module, the modules its run() imports when called (read from its
    # source, so nothing runs) and what it declares it needs while running.
    script = (
        "import ast, importlib, inspect, json, textwrap\n"
        "from spectrain.cli.steps import STEPS\n"
        "failed = {}\n"
        f"for step in [s for s in STEPS.values() if s.env == {env!r}]:\n"
        "    code = ast.parse(textwrap.dedent(inspect.getsource(step.run)))\n"
        "    runs = [node.module for node in ast.walk(code) if isinstance(node, ast.ImportFrom)]\n"
        "    assert runs, step.name\n"
        "    for module in [step.config.__module__, *runs, *step.needs]:\n"
        "        try:\n"
        "            importlib.import_module(module)\n"
        "        except Exception as exc:\n"
        "            failed.setdefault(step.name, []).append(f'{module}: {type(exc).__name__}: {exc}')\n"
        "print(json.dumps(failed))\n"
    )
    result = subprocess.run([python_for(env), "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "{}", f"{env}: {result.stdout[-2000:]}"


def test_uv_builds_the_environments_with_what_pip_is_configured_to_use(tmp_path, monkeypatch):
    """The Makefile builds each environment with uv (scripts/uv_pip.py), which reads none of pip's configuration:
    a mirror's index URLs, find-links and constraints reach it from `pip config list`, pip's own reading of its
    environment variables (first) and configuration files, and only `install` takes them."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("uv_pip", Path(__file__).parents[1] / "scripts" / "uv_pip.py")
    uv_pip = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(uv_pip)

    config = tmp_path / "pip.conf"
    config.write_text("[global]\nindex-url = https://mirror.example/simple\nfind-links = /file-wheels\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(config))  # read last of the files: over the machine's own
    monkeypatch.setenv("PIP_FIND_LINKS", "/env-wheels")  # a variable wins over every file
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "file:///one/simple file:///two/simple")
    monkeypatch.setenv("PIP_CONSTRAINT", str(tmp_path / "constraints.txt"))
    settings = uv_pip.pip_settings()
    assert settings["find-links"] == "/env-wheels" and settings["index-url"] == "https://mirror.example/simple"

    command = uv_pip.uv_arguments(["install", "-r", "requirements.txt"], settings)
    assert command[:3] == [str(uv_pip.UV), "pip", "install"] and command[-2:] == ["-r", "requirements.txt"]
    pairs = list(zip(command, command[1:]))
    for pair in [
        ("--index-strategy", "unsafe-best-match"),  # pip's choice: the best version across every index
        ("--index-url", "https://mirror.example/simple"),
        ("--find-links", "/env-wheels"),
        ("--extra-index-url", "file:///one/simple"),
        ("--extra-index-url", "file:///two/simple"),
        ("--constraint", str(tmp_path / "constraints.txt")),
    ]:
        assert pair in pairs, pair
    assert "--compile-bytecode" in command  # as pip does: a step's first import does not compile torch
    assert uv_pip.uv_arguments(["uninstall", "torchvision"], settings)[2:] == ["uninstall", "torchvision"]
