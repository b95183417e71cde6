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
