"""train_heads: assistant-only loss mask, draft sizing, d2t, and real modelopt training on the embedded model."""

import pytest
import torch
import transformers
from safetensors.torch import load_file

from components.train_heads.config import TrainHeadsConfig
from components.train_heads.train import (
    HEAD_PREFIXES,
    convert,
    draft_architecture,
    draft_vocabulary,
    tokenize_conversation,
)
from spectrain.models import resolve_base_model


@pytest.fixture(scope="module")
def base_path():
    return resolve_base_model("embedded")


def test_only_assistant_replies_carry_loss(base_path):
    tokenizer = transformers.AutoTokenizer.from_pretrained(base_path)
    turns = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"},
             {"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]
    example = tokenize_conversation(tokenizer, "Be brief.", turns, max_length=512)
    masked = [t for t, m in zip(example["input_ids"], example["loss_mask"]) if m]
    assert tokenizer.decode(masked) == "Hello!<|im_end|>\nBlue.<|im_end|>\n"
    full = tokenizer.apply_chat_template([{"role": "system", "content": "Be brief."}] + turns, tokenize=False)
    assert tokenizer.decode(example["input_ids"]) == full
    short = tokenize_conversation(tokenizer, "", turns, max_length=10)
    assert len(short["input_ids"]) == len(short["loss_mask"]) == 10


def test_draft_vocabulary_keeps_the_most_frequent_reply_tokens_in_id_order():
    examples = [{"input_ids": [5, 5, 5, 7, 7, 9, 3], "loss_mask": [1, 1, 1, 1, 1, 1, 0]}]
    d2t = draft_vocabulary(examples, draft_vocab_size=2, vocab_size=16)
    assert (torch.arange(2) + d2t).tolist() == [5, 7]
    padded = draft_vocabulary(examples, draft_vocab_size=4, vocab_size=16)
    assert (torch.arange(4) + padded).tolist() == [0, 5, 7, 9]  # unseen slots: lowest ids


def test_eagle_draft_is_sized_from_the_base_model(base_path):
    config = transformers.AutoConfig.from_pretrained(base_path)
    shape = draft_architecture(config, TrainHeadsConfig(data="x", mode="eagle3"))
    assert (shape["num_attention_heads"], shape["num_key_value_heads"], shape["head_dim"],
            shape["intermediate_size"]) == (9, 3, 64, 1536)
    assert shape["use_aux_hidden_state"] is True
    eagle1 = draft_architecture(config, TrainHeadsConfig(data="x", mode="eagle1", eagle_num_attention_heads=3,
                                                         eagle_intermediate_size=512))
    assert (eagle1["num_attention_heads"], eagle1["intermediate_size"], eagle1["use_aux_hidden_state"]) == \
        (3, 512, False)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["eagle3", "medusa"])
def test_training_moves_only_the_heads_and_the_checkpoint_reloads_them(tiny_checkpoints, base_path, mode):
    checkpoint, result = tiny_checkpoints[mode]
    assert result["steps"] == 2 and result["base_frozen"] and result["final_loss"] is not None
    assert any("head_0_accuracy" in entry for entry in result["history"])
    saved = load_file(f"{checkpoint}/model.safetensors")
    base = load_file(f"{base_path}/model.safetensors")
    for name, tensor in base.items():  # base weights in the checkpoint are the base model's, untouched
        assert torch.equal(saved[name].to(tensor.dtype), tensor), name
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    heads = {n: p for n, p in reloaded.state_dict().items() if n.startswith(HEAD_PREFIXES)}
    assert heads and all(torch.equal(p, saved[n]) for n, p in heads.items())
    fresh = transformers.AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    torch.manual_seed(0)
    convert(fresh, TrainHeadsConfig(data="x", mode=mode, medusa_num_heads=2))
    untrained = fresh.state_dict()
    changed = [n for n in heads if n in untrained and untrained[n].shape == heads[n].shape
               and not torch.equal(untrained[n], heads[n])]
    assert changed, "training left every head weight at its initial value"


def test_bad_data_is_a_clear_error(tmp_path):
    from components.train_heads.train import run
    from spectrain.errors import SpectrainError

    path = tmp_path / "empty.jsonl"
    path.write_text('{"conversations": [{"from": "narrator", "value": "x"}]}\n')
    with pytest.raises(SpectrainError, match="no conversation with an assistant reply"):
        run(TrainHeadsConfig(data=str(path), output_dir=str(tmp_path / "out"), max_steps=1))
