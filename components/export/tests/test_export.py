"""export: names vLLM's loaders expect (they skip unknown names silently), dtype in the file, config fixes."""

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file

from components.export.config import ExportConfig
from components.export.export import run
from spectrain import config as configs
from spectrain.errors import SpectrainError


@pytest.mark.slow
def test_medusa_export_has_exactly_vllm_names_in_the_requested_dtype(tiny_checkpoints, tmp_path):
    checkpoint, _ = tiny_checkpoints["medusa"]
    result = run(ExportConfig(checkpoint=checkpoint, mode="medusa", output_dir=str(tmp_path), dtype="bfloat16"))
    tensors = load_file(tmp_path / "model.safetensors")
    assert set(tensors) == {"blocks.0.layers.0.weight", "blocks.0.layers.0.bias", "lm_heads.0.weight",
                            "blocks.1.layers.0.weight", "blocks.1.layers.0.bias", "lm_heads.1.weight"}
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    assert torch.equal(tensors["lm_heads.1.weight"], model.medusa_heads[1][-1].weight.to(torch.bfloat16))
    assert torch.equal(tensors["blocks.0.layers.0.weight"], model.medusa_heads[0][0].linear.weight.to(torch.bfloat16))
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["num_heads"], config["num_hidden_layers"], config["medusa_fc_bias"]) == (2, 1, True)
    assert config["hidden_size"] == 576 and result["dtype"] == "bfloat16"


@pytest.mark.slow
def test_eagle3_export_is_bf16_with_vllm_layer_ids_and_the_trained_rope(tiny_checkpoints, tmp_path):
    checkpoint, _ = tiny_checkpoints["eagle3"]
    run(ExportConfig(checkpoint=checkpoint, mode="eagle3", output_dir=str(tmp_path), dtype="bfloat16"))
    tensors = load_file(tmp_path / "model.safetensors")
    floats = {n: t for n, t in tensors.items() if t.is_floating_point()}
    assert floats and {t.dtype for t in floats.values()} == {torch.bfloat16}
    assert tensors["d2t"].shape == (1024,) and "fc.weight" in tensors
    assert tensors["fc.weight"].shape == (576, 3 * 576)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["eagle_aux_hidden_state_layer_ids"] == [2, 15, 27]  # modelopt's [1, 14, 26], shifted by one
    assert config["draft_vocab_size"] == 1024
    assert not config.get("rope_scaling") or config["rope_scaling"].get("rope_type") != "yarn"


def test_unknown_dtype_is_refused():
    with pytest.raises(SpectrainError, match="unknown dtype"):
        configs.from_dict(ExportConfig, {"checkpoint": "x", "dtype": "fp8"})
