"""The `spectrain` command: help that teaches, and user mistakes reported without a traceback."""

import subprocess
import sys


def spectrain(*args, env=None):
    return subprocess.run([sys.executable, "-m", "spectrain.cli", *args], capture_output=True, text=True, env=env)


def test_run_help_lists_every_pipeline_parameter_with_its_meaning():
    from spectrain.pipelines.speculative_decoding import parameters as pipeline_parameters

    result = spectrain("run", "--help")
    assert result.returncode == 0
    for name in pipeline_parameters():
        assert "--" + name.replace("_", "-") in result.stdout
    assert "acceptance length" in result.stdout and "laptop preset" in result.stdout


def test_step_help_comes_from_the_config_dataclass():
    result = spectrain("step", "train-heads", "--help")
    assert result.returncode == 0
    assert "--medusa-num-heads" in result.stdout and "resume" in result.stdout
    assert "90% of its disk's free space" in " ".join(result.stdout.split())  # a literal % in a field's help


def test_every_steps_help_formats():
    """argparse %-formats help texts: a field's help with a bare % once broke `spectrain step train-heads --help`."""
    import argparse

    from spectrain.cli.steps import STEPS
    from spectrain.config import add_arguments

    for step in STEPS.values():
        parser = argparse.ArgumentParser()
        add_arguments(parser, step.config)
        assert "--" in parser.format_help(), step.name


def test_a_bad_flag_value_is_one_clear_line_not_a_traceback():
    result = spectrain("run", "--train-max-steps", "many")
    assert result.returncode == 2
    assert "--train-max-steps = 'many' is not allowed: expected an integer" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_step_config_names_the_field_and_the_fix():
    result = spectrain("step", "train-heads", "--data", "x.jsonl", "--mode", "hydra")
    assert result.returncode == 2
    assert "train_heads.mode" in result.stderr and "eagle3" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_step_result_records_the_config_it_ran_with_every_field_resolved(tmp_path):
    import json
    import os

    result_file = tmp_path / "result.json"
    env = {**os.environ, "SPECTRAIN_STATE_DIR": str(tmp_path / "servers")}
    run = spectrain("step", "stop-server", "--run-id", "nothing-here", "--result", str(result_file), env=env)
    assert run.returncode == 0, run.stderr
    result = json.loads(result_file.read_text())
    assert result["stopped"] is False
    assert result["config"] == {"run_id": "nothing-here", "log_copy": "", "mode": "local", "namespace": ""}
