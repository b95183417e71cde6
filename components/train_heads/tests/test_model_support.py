"""The model support list: each architecture converts, trains, saves and reloads with its heads intact.

Tiny random-weight configs of each family (no hub access here), with the embedded model's tokenizer.
"""

import json

import pytest
import torch
import transformers

from components.train_heads.config import TrainHeadsConfig
from components.train_heads.train import HEAD_PREFIXES, run
from spectrain.models import resolve_base_model

TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    vocab_size=49152,
)
FAMILIES = {
    "llama": transformers.LlamaConfig,
    "mistral": transformers.MistralConfig,
    "phi3": transformers.Phi3Config,
    "qwen2": transformers.Qwen2Config,
}


@pytest.fixture(scope="module")
def tokenizer():
    return transformers.AutoTokenizer.from_pretrained(resolve_base_model("embedded"))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["eagle3", "medusa", "dflash"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_trains_and_reloads_with_heads(family, mode, tokenizer, tiny_data, tmp_path):
    torch.manual_seed(0)
    config = FAMILIES[family](**TINY, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    base_dir = tmp_path / family
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    output = tmp_path / "checkpoint"
    result = run(
        TrainHeadsConfig(
            base_model=str(base_dir),
            data=tiny_data,
            output_dir=str(output),
            mode=mode,
            max_steps=2,
            batch_size=2,
            max_length=64,
            warmup_steps=0,
            medusa_num_heads=2,
            draft_vocab_size=512 if mode == "eagle3" else 0,
            dflash_block_size=4,
            dflash_num_layers=1,  # a 4-layer base has one layer to spare for DFlash (modelopt reads 1 .. n-3)
        )
    )
    assert result["steps"] == 2 and result["base_frozen"]
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(output)
    heads = [n for n in reloaded.state_dict() if n.startswith(HEAD_PREFIXES)]
    assert heads, f"{family}/{mode}: the reloaded checkpoint lost its heads"
    assert json.loads((output / "train_result.json").read_text())["mode"] == mode
