"""Warm start: a run continues a trained draft, and refuses, before any weight is loaded, one it cannot continue."""

import json
import shutil
from pathlib import Path

import boto3
import pytest
import torch
from safetensors.torch import load_file

from spectrain import draft_checkpoint, s3
from spectrain.components.train_heads.config import TrainHeadsConfig
from spectrain.components.train_heads.train import prepare, run
from spectrain.data import embedded_path
from spectrain.drafts import TRAIN_RESULT
from spectrain.errors import SpectrainError

# The tiny checkpoints' settings (conftest.tiny_checkpoints), which a warm start must repeat where they shape the draft
SHAPES = {"eagle3": {}, "medusa": {"medusa_num_heads": 2}, "dflash": {"dflash_block_size": 4, "dflash_num_anchors": 8}}


@pytest.fixture(scope="module")
def other_data(tmp_path_factory) -> str:
    """Eight other conversations than the parents saw: a d2t chosen from them would differ."""
    path = tmp_path_factory.mktemp("new-data") / "regenerated.jsonl"
    path.write_text("".join(open(embedded_path("train")).readlines()[8:16]))
    return str(path)


def continued(parent: str, data: str, output: Path, mode: str, **settings) -> dict:
    """One step at a learning rate too small to move a weight: the child's draft is what it started from."""
    return run(
        TrainHeadsConfig(
            data=data,
            output_dir=str(output),
            mode=mode,
            warm_start=parent,
            max_steps=1,
            lr=1e-12,
            batch_size=2,
            max_length=96,
            training_arguments={"warmup_steps": 0},
            **{**SHAPES[mode], **settings},
        )
    )


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["eagle3", "medusa", "dflash"])
def test_a_warm_started_draft_starts_from_its_parents_weights_vocabulary_and_mask_token(
    tiny_checkpoints, other_data, tmp_path, mode
):
    parent, parent_result = tiny_checkpoints[mode]
    result = continued(parent, other_data, tmp_path / "child", mode)
    before, after = (load_file(f"{d}/{draft_checkpoint.DRAFT_WEIGHTS}") for d in (parent, tmp_path / "child"))
    assert before.keys() == after.keys()
    # A run that ignored warm_start would hold the seed's fresh draft, which the parent's two steps at lr 1e-3 left
    # ~1e-3 behind in every weight: far outside this tolerance.
    for name in before:  # every draft tensor, the d2t buffer of the parent's vocabulary included
        assert torch.allclose(before[name].float(), after[name].float(), atol=1e-6), name
    assert result["warm_start"]["from"] == parent and result["warm_start"]["steps"] == parent_result["steps"]
    assert result["draft_architecture"] == parent_result["draft_architecture"]
    if mode == "eagle3":  # draft_vocab_size left to the base (-1) took the parent's 1024, not the recipe's 4096
        assert result["resolved"]["draft_vocab_size"] == 1024 and "eagle_module.d2t" in after
    if mode == "dflash":
        assert result["dflash_mask_token_id"] == parent_result["dflash_mask_token_id"]


def test_a_draft_on_s3_with_its_registry_lineage_is_fetched_apart_from_the_new_artifact(
    tiny_checkpoints, tmp_path, s3_endpoint
):
    parent, _ = tiny_checkpoints["medusa"]
    folder = tmp_path / "registered"
    shutil.copytree(parent, folder)
    lineage = {"registered_model": "spectrain-smollm2-medusa", "version": "3", "alias": "champion"}
    (folder / draft_checkpoint.LINEAGE).write_text(json.dumps(lineage))
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="drafts")
    s3.upload(folder, "s3://drafts/champion/medusa/")
    output = tmp_path / "child"
    config, *_, fetched = prepare(
        TrainHeadsConfig(
            data="x",
            mode="medusa",
            output_dir=str(output),
            warm_start="s3://drafts/champion/medusa/",
            **SHAPES["medusa"],
        )
    )
    assert config.warm_start == str(fetched.directory)  # what the ranks read: the local copy
    assert not fetched.directory.is_relative_to(output)  # the parent is not copied into the new draft's artifact
    assert (fetched.directory / draft_checkpoint.DRAFT_WEIGHTS).read_bytes() == (
        folder / draft_checkpoint.DRAFT_WEIGHTS
    ).read_bytes()
    assert (
        fetched.describe()["version"] == "3" and fetched.describe()["registered_model"] == lineage["registered_model"]
    )


def refusal(config: TrainHeadsConfig) -> SpectrainError:
    with pytest.raises(SpectrainError) as caught:
        prepare(config)  # decides from configs and small files only: no weight is loaded before it returns
    assert caught.value.where == "train_heads.warm_start"
    return caught.value


def test_a_draft_of_another_mode_shape_or_base_is_refused_before_any_weight_is_loaded(tiny_checkpoints, tmp_path):
    medusa, _ = tiny_checkpoints["medusa"]
    error = refusal(TrainHeadsConfig(data="x", mode="eagle3", warm_start=medusa))
    assert "mode: the parent is a medusa draft, this run trains eagle3" in error.what
    error = refusal(TrainHeadsConfig(data="x", mode="medusa", warm_start=medusa, medusa_num_heads=3))
    assert "medusa_num_heads: 2 for the parent, 3 here" in error.what
    eagle, _ = tiny_checkpoints["eagle3"]
    error = refusal(TrainHeadsConfig(data="x", mode="eagle3", warm_start=eagle, draft_vocab_size=4096))
    assert "draft_vocab_size: 1024 for the parent, 4096 here" in error.what
    other_base = tmp_path / "other-base"
    shutil.copytree(medusa, other_base)
    result = json.loads((other_base / TRAIN_RESULT).read_text())
    result["base_identity"] = {"base_model_revision": "hub:" + "0" * 40, "chat_template_sha256": "sha256:0"}
    (other_base / TRAIN_RESULT).write_text(json.dumps(result))
    error = refusal(TrainHeadsConfig(data="x", mode="medusa", warm_start=str(other_base), **SHAPES["medusa"]))
    assert "base model revision: hub:0000" in error.what and "chat template: sha256:0 for the parent" in error.what
    error = refusal(TrainHeadsConfig(data="x", mode="medusa", warm_start=str(tmp_path / "nothing")))
    assert "no trained draft in" in error.what and "champion" in error.fix
