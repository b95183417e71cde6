"""export: names vLLM's loaders expect (they skip unknown names silently), dtype in the file, config fixes."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from spectrain.components.export.config import ExportConfig
from spectrain.components.export.export import run
from spectrain import config as configs
from spectrain import devices, draft_checkpoint
from spectrain.errors import SpectrainError
from spectrain.models import resolve_base_model


@pytest.mark.slow
def test_medusa_export_has_exactly_vllm_names_in_the_requested_dtype(tiny_checkpoints, tmp_path):
    checkpoint, _ = tiny_checkpoints["medusa"]
    result = run(
        ExportConfig(
            checkpoint=checkpoint, mode="medusa", output_dir=str(tmp_path), dtype="bfloat16", num_draft_tokens=3
        )
    )
    tensors = load_file(tmp_path / "model.safetensors")
    assert set(tensors) == {
        "blocks.0.layers.0.weight",
        "blocks.0.layers.0.bias",
        "lm_heads.0.weight",
        "blocks.1.layers.0.weight",
        "blocks.1.layers.0.bias",
        "lm_heads.1.weight",
    }
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    model = draft_checkpoint.load(checkpoint, resolve_base_model("embedded"), devices.cpu())
    assert torch.equal(tensors["lm_heads.1.weight"], model.medusa_heads[1][-1].weight.to(torch.bfloat16))
    assert torch.equal(tensors["blocks.0.layers.0.weight"], model.medusa_heads[0][0].linear.weight.to(torch.bfloat16))
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["num_heads"], config["num_hidden_layers"], config["medusa_fc_bias"]) == (2, 1, True)
    assert config["hidden_size"] == 576 and result["dtype"] == "bfloat16"


@pytest.mark.slow
def test_eagle3_export_is_bf16_with_vllm_layer_ids_and_the_trained_rope(tiny_checkpoints, tmp_path):
    checkpoint, _ = tiny_checkpoints["eagle3"]
    run(
        ExportConfig(
            checkpoint=checkpoint, mode="eagle3", output_dir=str(tmp_path), dtype="bfloat16", num_draft_tokens=3
        )
    )
    tensors = load_file(tmp_path / "model.safetensors")
    floats = {n: t for n, t in tensors.items() if t.is_floating_point()}
    assert floats and {t.dtype for t in floats.values()} == {torch.bfloat16}
    assert tensors["d2t"].shape == (1024,) and "fc.weight" in tensors
    assert tensors["fc.weight"].shape == (576, 3 * 576)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["eagle_aux_hidden_state_layer_ids"] == [2, 15, 27]  # modelopt's [1, 14, 26], shifted by one
    assert config["draft_vocab_size"] == 1024
    assert not config.get("rope_scaling") or config["rope_scaling"].get("rope_type") != "yarn"


@pytest.mark.slow
def test_dflash_export_holds_every_trained_weight_and_the_config_vllm_reads(tiny_checkpoints, tmp_path):
    checkpoint, trained = tiny_checkpoints["dflash"]
    result = run(
        ExportConfig(
            checkpoint=checkpoint, mode="dflash", output_dir=str(tmp_path), dtype="bfloat16", num_draft_tokens=3
        )
    )
    tensors = load_file(tmp_path / "model.safetensors")
    model = draft_checkpoint.load(checkpoint, resolve_base_model("embedded"), devices.cpu())
    draft = {n: p for n, p in model.dflash_module.state_dict().items() if "rotary" not in n}
    assert set(tensors) == set(draft)  # every draft weight, under the names vLLM's DFlash model loads
    assert all(torch.equal(tensors[n], p.to(torch.bfloat16)) for n, p in draft.items())
    assert tensors["fc.weight"].shape == (576, 3 * 576)  # 3 draft layers read 3 base layers
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["DFlashDraftModel"] and config["block_size"] == 4
    assert config["dflash_config"]["mask_token_id"] == trained["dflash_mask_token_id"]
    assert config["dflash_config"]["target_layer_ids"] == trained["dflash_target_layer_ids"]
    assert config["rope_theta"] == 100000 and config["head_dim"] == 64
    # TensorRT-LLM's PyTorch backend loads the same directory: its names, shapes and config keys check out
    assert result["trtllm"]["supported"] and result["trtllm"]["problems"] == []
    served = yaml.safe_load((tmp_path / "trtllm" / "config.yaml").read_text())["speculative_config"]
    assert served == {"decoding_type": "DFlash", "max_draft_len": 3, "speculative_model": str(tmp_path)}


def test_the_tensorrt_llm_dflash_check_reads_what_its_loader_reads():
    from spectrain.components.export import trtllm

    config = {
        "model_type": "qwen3",
        "block_size": 4,
        "dflash_config": {"mask_token_id": 0, "target_layer_ids": [1, 14]},
        **{"hidden_size": 8, "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 16},
        "num_hidden_layers": 2,
    }
    expected = trtllm.expected_dflash(config)
    assert expected["fc.weight"] == (8, 16) and expected["model.layers.1.self_attn.k_proj.weight"] == (4, 8)
    assert trtllm.dflash_names_as_trtllm_loads_them(["layers.0.mlp.up_proj.weight", "norm.weight", "fc.weight"]) == {
        "layers.0.mlp.up_proj.weight": "model.layers.0.mlp.up_proj.weight",
        "norm.weight": "model.norm.weight",
        "fc.weight": "fc.weight",
    }
    assert trtllm.dflash_config_problems(config, 3) == []
    assert trtllm.dflash_config_problems({**config, "block_size": None, "dflash_config": {}}, 3) == [
        "dflash_config.mask_token_id missing",
        "dflash_config.target_layer_ids missing",
        "block_size missing at the top level (where TensorRT-LLM reads it)",
    ]
    assert trtllm.dflash_config_problems(config, 4) == ["max_draft_len 4 + 1 exceeds the block size 4"]


@pytest.mark.slow
def test_medusa_for_tensorrt_llm_has_its_loader_names_and_the_engine_build_is_skipped_on_cpu(
    tiny_checkpoints, tmp_path
):
    checkpoint, _ = tiny_checkpoints["medusa"]
    result = run(
        ExportConfig(
            checkpoint=checkpoint, mode="medusa", output_dir=str(tmp_path), dtype="float16", num_draft_tokens=3
        )
    )
    trt = result["trtllm"]
    tensors = load_file(tmp_path / "trtllm" / "medusa" / "medusa_lm_head.safetensors")
    # what TensorRT-LLM's load_medusa_hf reads: {h}.{l}.linear.weight|bias and {h}.{num_layers}.weight
    assert set(tensors) == {
        "0.0.linear.weight",
        "0.0.linear.bias",
        "0.1.weight",
        "1.0.linear.weight",
        "1.0.linear.bias",
        "1.1.weight",
    }
    assert tensors["1.1.weight"].shape == (49152, 576) and {t.dtype for t in tensors.values()} == {torch.float16}
    vllm = load_file(tmp_path / "model.safetensors")
    assert torch.equal(tensors["1.1.weight"], vllm["lm_heads.1.weight"])  # the same trained weights
    assert json.loads((tmp_path / "trtllm" / "medusa" / "config.json").read_text())["medusa_num_heads"] == 2
    assert trt["problems"] == [] and trt["engine"].startswith("not built here: the build-engine step")
    build = (tmp_path / "trtllm" / "build.sh").read_text()
    assert (
        "--medusa_model_dir" in build
        and "--num_medusa_heads 2" in build
        and "--speculative_decoding_mode medusa" in build
    )


@pytest.mark.slow
def test_eagle3_for_tensorrt_llm_matches_its_draft_model_and_captures_layer_outputs(tiny_checkpoints, tmp_path):
    checkpoint, _ = tiny_checkpoints["eagle3"]
    result = run(ExportConfig(checkpoint=checkpoint, mode="eagle3", output_dir=str(tmp_path), num_draft_tokens=4))
    assert result["trtllm"]["problems"] == []
    served = yaml.safe_load((tmp_path / "trtllm" / "config.yaml").read_text())["speculative_config"]
    assert served == {
        "decoding_type": "Eagle3",
        "max_draft_len": 4,
        "speculative_model": str(tmp_path),
        "eagle3_layers_to_capture": [1, 14, 26],  # layer outputs: modelopt's ids, not vLLM's shifted ones
    }


def test_the_tensorrt_llm_config_keeps_a_path_yaml_would_misread_as_one_string():
    from spectrain.components.export import trtllm

    odd = Path("/data/run: 7 #final/- [draft]")
    served = yaml.safe_load(trtllm.serve_config(odd, "DFlash", 3))["speculative_config"]
    assert served["speculative_model"] == str(odd) and served["max_draft_len"] == 3


def test_the_tensorrt_llm_check_catches_wrong_names_and_shapes(tmp_path):
    from safetensors.torch import save_file

    from spectrain.components.export import trtllm

    save_file(
        {
            "0.0.linear.weight": torch.zeros(4, 4),
            "0.0.linear.bias": torch.zeros(3),
            "0.1.weight": torch.zeros(10, 4),
            "blocks.0.layers.0.weight": torch.zeros(4, 4),
        },
        tmp_path / "m.safetensors",
    )
    problems = trtllm.check([tmp_path / "m.safetensors"], trtllm.expected_medusa(1, 1, hidden=4, vocab=10))
    assert problems == [
        "unexpected blocks.0.layers.0.weight (the loader would skip it)",
        "0.0.linear.bias: shape (3,), expected (4,)",
    ]
    renamed = trtllm.eagle3_names_as_trtllm_loads_them(["layers.0.mlp.up_proj.weight", "lm_head.weight", "d2t"], 1)
    assert renamed == {
        "layers.0.mlp.up_proj.weight": "model.midlayer.mlp.up_proj.weight",
        "lm_head.weight": "lm_head.weight",
        "d2t": "model.d2t",
    }


def test_unknown_dtype_is_refused(tmp_path):
    with pytest.raises(SpectrainError, match="export.dtype = 'fp8' is not allowed: expected one of bfloat16"):
        configs.from_dict(ExportConfig, {"checkpoint": str(tmp_path), "dtype": "fp8"})


def test_a_checkpoint_of_another_mode_is_refused_before_export(tiny_checkpoints, tmp_path):
    from spectrain.errors import SpectrainError

    medusa_dir, _ = tiny_checkpoints["medusa"]
    with pytest.raises(SpectrainError, match="holds a medusa draft, but export.mode is 'eagle3'"):
        run(ExportConfig(checkpoint=medusa_dir, mode="eagle3", output_dir=str(tmp_path / "draft"), num_draft_tokens=3))
    assert not (tmp_path / "draft").exists()  # refused before anything was written


def measured(mode: str, k: int, schedule=None) -> dict:
    """The fields of evaluation.json export reads (what evaluate measured)."""
    return {
        "mode": mode,
        "recommended_num_draft_tokens": k,
        "expected_speedup": 1.31,
        "num_speculative_tokens_per_batch_size": schedule,
    }


@pytest.mark.slow
def test_the_served_k_and_its_batch_size_schedule_come_from_the_evaluation(tiny_checkpoints, tmp_path):
    from spectrain.drafts import vllm_speculative_config

    checkpoint, _ = tiny_checkpoints["eagle3"]
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "evaluation.json").write_text(json.dumps(measured("eagle3", 2, [[1, 3, 2], [4, 16, 1]])))
    draft = tmp_path / "draft"
    result = run(
        ExportConfig(checkpoint=checkpoint, mode="eagle3", output_dir=str(draft), evaluation=str(tmp_path / "eval"))
    )
    expected = {
        "method": "eagle3",
        "num_speculative_tokens": 2,
        "num_speculative_tokens_per_batch_size": [[1, 3, 2], [4, 16, 1]],
    }
    assert json.loads((draft / "vllm_speculative_config.json").read_text()) == expected
    assert vllm_speculative_config(draft) == {**expected, "model": str(draft.resolve())}
    assert result["num_speculative_tokens"] == 2 and "1.31x expected" in result["serving_choice"]
    assert "max_draft_len: 2" in (draft / "trtllm" / "config.yaml").read_text()  # TensorRT-LLM serves the same k


def test_the_exported_k_is_the_largest_the_schedule_uses_not_the_best_at_batch_1():
    """The schedule of the issue's `make run` champion: no speculation at batches 1-3 (k = 0), one draft token at
    4-15. vLLM caps every range's k at num_speculative_tokens and serves that k where it turns the schedule off
    (data parallel), so the exported config must say 1, not the batch-1 best of 3 the schedule never uses."""
    from spectrain.components.export.export import serving_config

    schedule = [[1, 3, 0], [4, 15, 1], [16, 16, 0]]
    speculative, why = serving_config(ExportConfig(mode="eagle3"), None, measured("eagle3", 3, schedule))
    assert speculative == {
        "method": "eagle3",
        "num_speculative_tokens": 1,
        "num_speculative_tokens_per_batch_size": schedule,
    }
    assert "1-3: 0, 4-15: 1, 16-16: 0" in why


@pytest.mark.slow
def test_medusa_serves_one_token_per_head_and_says_how_many_heads_the_measurements_want(tiny_checkpoints, tmp_path):
    checkpoint, _ = tiny_checkpoints["medusa"]  # 2 heads
    (tmp_path / "evaluation.json").write_text(json.dumps(measured("medusa", 1)))
    result = run(
        ExportConfig(
            checkpoint=checkpoint,
            mode="medusa",
            output_dir=str(tmp_path / "draft"),
            evaluation=str(tmp_path / "evaluation.json"),
            trtllm=False,
        )
    )
    assert result["vllm_speculative_config"] == {"method": "medusa", "num_speculative_tokens": 2}
    assert "train with medusa_num_heads = 1" in result["serving_choice"]


def test_no_k_and_no_evaluation_or_an_evaluation_without_one_is_refused_before_export(tiny_checkpoints, tmp_path):
    checkpoint, _ = tiny_checkpoints["eagle3"]
    with pytest.raises(SpectrainError, match="no k to serve the draft with") as refused:
        configs.from_dict(ExportConfig, {"checkpoint": checkpoint, "output_dir": str(tmp_path / "draft")})
    assert "--num-draft-tokens 3" in str(refused.value)
    (tmp_path / "evaluation.json").write_text(json.dumps({"mode": "eagle3", "acceptance_length": 1.3}))
    with pytest.raises(SpectrainError, match="the evaluation has no measured k"):
        run(
            ExportConfig(
                checkpoint=checkpoint, output_dir=str(tmp_path / "draft"), evaluation=str(tmp_path / "evaluation.json")
            )
        )
    (tmp_path / "evaluation.json").write_text(json.dumps(measured("medusa", 2)))
    with pytest.raises(SpectrainError, match="the evaluation measured a medusa draft, this export is eagle3"):
        run(
            ExportConfig(
                checkpoint=checkpoint, output_dir=str(tmp_path / "draft"), evaluation=str(tmp_path / "evaluation.json")
            )
        )
    assert not (tmp_path / "draft").exists()  # refused before anything was written
