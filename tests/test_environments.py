"""Every step can run in the environment the step registry assigns to it, on a machine that never ran spectrain.

Each environment's Python imports the modules of its steps and what they import only while running
(a GGUF conversion needs gguf and accelerate: a missing one once failed `make run`'s first step).
"""

import os
import subprocess

import pytest

from spectrain.steps import ENVIRONMENTS, STEPS, python_for


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_step_imports_what_it_needs_in_its_own_environment(env):
    assert os.environ.get(f"SPECTRAIN_PYTHON_{env.upper()}"), "run through tests/run_all.sh (it points at .venvs)"
    steps = [step for step in STEPS.values() if step.env == env]
    assert steps
    modules = {step.name: [step.config.split(":")[0], step.run.split(":")[0], *step.needs] for step in steps}
    script = (
        "import importlib, json, sys\n"
        "failed = {}\n"
        f"for step, modules in {modules!r}.items():\n"
        "    for module in modules:\n"
        "        try:\n"
        "            importlib.import_module(module)\n"
        "        except Exception as exc:\n"
        "            failed.setdefault(step, []).append(f'{module}: {type(exc).__name__}: {exc}')\n"
        "print(json.dumps(failed))\n"
    )
    result = subprocess.run([python_for(env), "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "{}", f"{env}: {result.stdout[-2000:]}"
