"""What a base's config decides, from the real configs of the bases people serve (meta device: no weights)."""

import json
from pathlib import Path

import pytest
import transformers

from spectrain.components.train_heads.config import TrainHeadsConfig
from spectrain.components.train_heads.draft import draft_architecture
from spectrain.components.train_heads.train import with_recipe
from spectrain import bases
from spectrain.errors import SpectrainError
from spectrain.models import resolve_base_model

CONFIGS = Path(__file__).resolve().parents[3] / "tests" / "model_matrix" / "configs"


def real(name: str, tmp_path) -> bases.BaseFacts:
    directory = tmp_path / name
    directory.mkdir()
    (directory / "config.json").write_text((CONFIGS / f"{name}.json").read_text())
    return bases.facts(transformers.AutoConfig.from_pretrained(directory))


@pytest.mark.parametrize(
    "name, billions",
    [
        ("llama-3.1-8b-instruct", 8.03),
        ("llama-3.3-70b-instruct", 70.55),
        ("qwen3-30b-a3b", 30.53),
        ("gpt-oss-20b", 20.91),
    ],
)
def test_the_parameter_count_comes_from_the_config_alone(tmp_path, name, billions):
    assert real(name, tmp_path).parameters / 1e9 == pytest.approx(billions, abs=0.01)


def test_large_bases_get_the_reference_recipes_and_the_embedded_one_its_measured_recipe(tmp_path):
    llama = real("llama-3.1-8b-instruct", tmp_path)
    eagle3, chosen = with_recipe(TrainHeadsConfig(data="x", mode="eagle3"), llama)
    assert (eagle3.draft_vocab_size, eagle3.max_length, eagle3.lr) == (32000, 2048, 1e-4)  # modelopt's eagle3.yaml
    assert "modelopt's eagle3 recipe" in chosen["why"]
    dflash, _ = with_recipe(TrainHeadsConfig(data="x", mode="dflash"), llama)
    assert (dflash.max_length, dflash.lr) == (4096, 6e-4)  # modelopt's dflash.yaml
    medusa, _ = with_recipe(TrainHeadsConfig(data="x", mode="medusa"), llama)
    assert (medusa.max_length, medusa.lr) == (2048, 1e-3)
    embedded = bases.facts_of(resolve_base_model("embedded"))
    small, chosen = with_recipe(TrainHeadsConfig(data="x", mode="eagle3"), embedded)
    assert (small.draft_vocab_size, small.max_length, small.lr) == (4096, 256, 1e-3)
    assert set(chosen) == {"draft_vocab_size", "max_length", "lr", "why"}


def test_settings_the_user_gave_are_kept_and_nothing_is_chosen_for_them(tmp_path):
    llama = real("llama-3.1-8b-instruct", tmp_path)
    given, chosen = with_recipe(TrainHeadsConfig(data="x", draft_vocab_size=0, max_length=512, lr=3e-4), llama)
    assert (given.draft_vocab_size, given.max_length, given.lr) == (0, 512, 3e-4) and chosen == {}


def test_a_draft_vocabulary_as_large_as_the_bases_is_the_full_one(tmp_path):
    small_vocab = bases.BaseFacts("X", "x", 2 * 10**9, 20000, 64, 4, 4, 4, 16, "bfloat16", {}, False)
    config, _ = with_recipe(TrainHeadsConfig(data="x", mode="eagle3"), small_vocab)
    assert config.draft_vocab_size == 0


@pytest.mark.parametrize("mode", ["eagle3", "dflash"])
def test_a_mode_vllm_cannot_serve_for_the_base_is_refused_naming_why(tmp_path, mode):
    gemma = real("gemma-2-9b-it", tmp_path)
    problem = bases.mode_problem(gemma, mode)
    assert isinstance(problem, SpectrainError) and problem.where == "train_heads.mode"
    assert "Gemma2ForCausalLM" in problem.what and "medusa" in problem.fix
    assert bases.mode_problem(gemma, "medusa") is None


def test_the_draft_trains_with_the_bases_rope_even_where_the_base_has_one_per_layer_type(tmp_path):
    for name, rope_type in (("llama-3.1-8b-instruct", "llama3"), ("phi-3-mini-128k-instruct", "longrope")):
        directory = tmp_path / name
        directory.mkdir()
        (directory / "config.json").write_text((CONFIGS / f"{name}.json").read_text())
        config = transformers.AutoConfig.from_pretrained(directory)
        shape = draft_architecture(config, TrainHeadsConfig(data="x", mode="eagle3"))
        assert shape["rope_scaling"]["rope_type"] == rope_type and shape["rope_theta"]
    gemma3 = tmp_path / "gemma-3-1b-it"
    gemma3.mkdir()
    (gemma3 / "config.json").write_text((CONFIGS / "gemma-3-1b-it.json").read_text())
    rope = bases.draft_rope(transformers.AutoConfig.from_pretrained(gemma3))
    assert rope["rope_theta"] == json.loads((CONFIGS / "gemma-3-1b-it.json").read_text())["rope_theta"]  # global


def test_an_eagle3_draft_converts_for_a_base_with_llama3_rope_and_exports_that_rope(tmp_path):
    """modelopt refused it before (its export default injects yarn and then rejects a llama3 training rope)."""
    import torch

    from spectrain.components.export.export import export_eagle
    from spectrain.components.train_heads.draft import convert

    settings = json.loads((CONFIGS / "llama-3.1-8b-instruct.json").read_text())
    settings.update(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4)
    settings.update(num_key_value_heads=1)
    (tmp_path / "config.json").write_text(json.dumps(settings))
    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.from_pretrained(tmp_path))
    convert(model, TrainHeadsConfig(data="x", mode="eagle3", draft_vocab_size=0))
    export_eagle(model, tmp_path / "draft", torch.bfloat16)
    exported = json.loads((tmp_path / "draft" / "config.json").read_text())
    assert exported["rope_scaling"]["rope_type"] == "llama3" and exported["rope_scaling"]["factor"] == 8.0
