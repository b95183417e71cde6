"""The memory plan: from a real base's config alone, against GPUs given by their count and size; no weights loaded."""

from pathlib import Path

import pytest
import transformers

from spectrain.components.train_heads.config import TrainHeadsConfig
from spectrain.components.train_heads.memory import GIB, check, plan
from spectrain.components.train_heads.draft import meta_draft_parameters
from spectrain.components.train_heads.train import with_recipe
from spectrain import bases
from spectrain.devices import Placement
from spectrain.errors import SpectrainError

CONFIGS = Path(__file__).resolve().parents[3] / "tests" / "model_matrix" / "configs"


def h100s(count: int) -> Placement:
    """What devices.resolve reports on a node of H100s (80 GiB each); no GPU is needed to plan for one."""
    return Placement("cuda:0", "bfloat16", "bf16", f"{count} x NVIDIA H100 80GB HBM3", count, 80 * GIB)


def planned(name: str, tmp_path, gpus: int, mode: str = "eagle3", **settings):
    directory = tmp_path / name
    directory.mkdir(exist_ok=True)
    (directory / "config.json").write_text((CONFIGS / f"{name}.json").read_text())
    config = transformers.AutoConfig.from_pretrained(directory)
    facts = bases.facts(config)
    train, _ = with_recipe(TrainHeadsConfig(data="x", mode=mode, **settings), facts)
    return plan(config, facts, train, h100s(gpus), gpus, meta_draft_parameters(config, train)), train


def test_an_8b_base_fits_one_gpu_per_process_with_its_eagle3_draft(tmp_path):
    memory, config = planned("llama-3.1-8b-instruct", tmp_path, 8)
    assert memory.strategy == "replicate"
    assert memory.base_bytes / GIB == pytest.approx(14.96, abs=0.01)  # 8.03B parameters in bf16
    assert memory.draft_parameters / 1e6 == pytest.approx(424.7, abs=0.1)  # one layer, fc, 32k lm_head
    assert memory.draft_state_bytes == memory.draft_parameters * 16  # fp32 weights, gradients, two Adam moments
    check(memory, config)


def test_a_70b_base_is_sharded_over_eight_gpus_and_refused_on_one_with_the_numbers(tmp_path):
    sharded, config = planned("llama-3.3-70b-instruct", tmp_path, 8)
    assert sharded.strategy == "shard" and sharded.per_process_bytes < 0.9 * 80 * GIB
    check(sharded, config)
    alone, config = planned("llama-3.3-70b-instruct", tmp_path, 1)
    assert alone.strategy == "replicate" and alone.per_process_bytes > 130 * GIB  # 70.6B in bf16 alone: 131 GiB
    with pytest.raises(SpectrainError) as refused:
        check(alone, config)
    assert "base 131.4 GiB" in refused.value.what and "80 GiB" in refused.value.what
    assert "--train-gpus" in refused.value.fix and "batch_size" in refused.value.fix


def test_a_batch_whose_logits_do_not_fit_is_refused_even_when_the_base_does(tmp_path):
    memory, config = planned("qwen3-8b", tmp_path, 1, batch_size=16, max_length=8192)
    assert memory.activation_bytes > 80 * GIB  # 131,072 tokens of 151,936-way logits
    with pytest.raises(SpectrainError, match="lower batch_size"):
        check(memory, config)


def test_sharding_asked_for_where_the_trainer_cannot_shard_is_refused(tmp_path):
    memory, config = planned("llama-3.1-8b-instruct", tmp_path, 1, shard_base="always")
    with pytest.raises(SpectrainError, match="only over two or more GPUs") as refused:
        check(memory, config)
    assert refused.value.where == "train_heads.shard_base"
