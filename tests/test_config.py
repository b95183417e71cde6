"""Step configs: dataclass fields drive CLI flags, JSON loading, and the errors users see."""

import argparse
import json

import pytest

from spectrain.components.regenerate.config import RegenerateConfig
from spectrain.components.train_heads.config import TrainHeadsConfig
from spectrain import config as configs
from spectrain.errors import SpectrainError


def test_unknown_field_is_named_with_the_valid_ones():
    with pytest.raises(SpectrainError) as error:
        configs.from_dict(TrainHeadsConfig, {"data": "x.jsonl", "learning_rate": 1e-3}, where="cfg.json")
    message = str(error.value)
    assert "learning_rate" in message and "cfg.json" in message and "lr" in message


def test_mistyped_field_names_the_field_and_its_help():
    with pytest.raises(SpectrainError) as error:
        configs.from_dict(TrainHeadsConfig, {"data": "x.jsonl", "batch_size": "four"})
    assert "batch_size" in str(error.value) and "expects int" in str(error.value)


def test_validation_rejects_an_unknown_mode():
    with pytest.raises(SpectrainError, match="train_heads.mode = 'hydra' is not allowed: expected one of eagle3"):
        configs.from_dict(TrainHeadsConfig, {"data": "x.jsonl", "mode": "hydra"})


def test_flags_override_a_json_file_and_are_typed(tmp_path):
    parser = argparse.ArgumentParser()
    configs.add_arguments(parser, RegenerateConfig)
    args = parser.parse_args(["--max-tokens", "32", "--no-keep-system-prompt"])
    config = configs.from_args(RegenerateConfig, args, base={"max_tokens": 8, "concurrency": 3})
    assert (config.max_tokens, config.concurrency, config.keep_system_prompt) == (32, 3, False)


def test_invalid_json_config_file_reports_file_and_line(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{\n  "data": "x",\n  oops\n}')
    with pytest.raises(SpectrainError) as error:
        configs.load_file(TrainHeadsConfig, path)
    assert f"{path}:3" in str(error.value)


def test_every_field_has_help_text():
    import dataclasses

    from spectrain.cli.steps import STEPS

    for step in STEPS.values():
        cls = step.config
        missing = [f.name for f in dataclasses.fields(cls) if not f.metadata.get("help")]
        assert not missing, f"{cls.__name__} fields without help: {missing}"
        json.dumps(configs.to_dict(cls()))  # every default is serialisable into a KFP parameter
