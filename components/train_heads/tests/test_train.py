"""train_heads: assistant-only loss mask, draft sizing, d2t, and real modelopt training on the embedded model."""

from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

from spectrain.components.train_heads.config import TrainHeadsConfig
from spectrain.components.train_heads.draft import (
    convert,
    dflash_mask_token_id,
    draft_architecture,
    draft_vocabulary,
    reduced_vocabulary,
)
from spectrain.components.train_heads.examples import tokenize_conversation
from spectrain import devices, draft_checkpoint
from spectrain.draft_checkpoint import HEAD_PREFIXES
from spectrain.errors import SpectrainError
from spectrain.models import resolve_base_model


@pytest.fixture(scope="module")
def base_path():
    return resolve_base_model("embedded")


def test_only_assistant_replies_carry_loss(base_path):
    tokenizer = transformers.AutoTokenizer.from_pretrained(base_path)
    turns = [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
    ]
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
    assert (
        shape["num_attention_heads"],
        shape["num_key_value_heads"],
        shape["head_dim"],
        shape["intermediate_size"],
    ) == (9, 3, 64, 1536)
    assert shape["use_aux_hidden_state"] is True
    narrow = draft_architecture(
        config, TrainHeadsConfig(data="x", mode="eagle3", eagle_num_attention_heads=3, eagle_intermediate_size=512)
    )
    assert (narrow["num_attention_heads"], narrow["intermediate_size"]) == (3, 512)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["eagle3", "medusa", "dflash"])
def test_training_moves_only_the_heads_and_the_artifact_holds_only_the_draft(tiny_checkpoints, base_path, mode):
    checkpoint, result = tiny_checkpoints[mode]
    assert result["steps"] == 2 and result["base_frozen"] and result["final_loss"] is not None
    assert any("head_0_accuracy" in entry for entry in result["history"])
    files = {p.name for p in Path(checkpoint).iterdir() if p.is_file()}
    assert {draft_checkpoint.MODELOPT_STATE, draft_checkpoint.DRAFT_WEIGHTS} <= files
    assert not files & {"model.safetensors", "config.json"}, "the artifact carries a copy of the base"
    saved = load_file(f"{checkpoint}/{draft_checkpoint.DRAFT_WEIGHTS}")
    assert saved and all(name.startswith(HEAD_PREFIXES) for name in saved)
    draft_bytes = sum(t.numel() * t.element_size() for t in saved.values())
    assert draft_bytes < result["artifact_bytes"] < draft_bytes + 2**20  # the draft's tensors and a small state
    reloaded = draft_checkpoint.load(checkpoint, base_path, devices.cpu())
    base = load_file(f"{base_path}/model.safetensors")
    restored = reloaded.state_dict()
    for name, tensor in base.items():  # the base under the restored draft is the base model, untouched
        assert torch.equal(restored[name].to(tensor.dtype), tensor), name
    heads = {n: p for n, p in restored.items() if n.startswith(HEAD_PREFIXES)}
    assert heads.keys() == saved.keys() and all(torch.equal(p, saved[n].to(p.dtype)) for n, p in heads.items())
    fresh = transformers.AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    torch.manual_seed(0)
    convert(
        fresh,
        TrainHeadsConfig(data="x", mode=mode, medusa_num_heads=2, draft_vocab_size=0, dflash_block_size=4),
        mask_token_id=result.get("dflash_mask_token_id"),
    )
    untrained = fresh.state_dict()
    changed = [
        n
        for n in heads
        if n in untrained and untrained[n].shape == heads[n].shape and not torch.equal(untrained[n], heads[n])
    ]
    assert changed, "training left every head weight at its initial value"


def test_bad_data_is_a_clear_error(tmp_path):
    from spectrain.components.train_heads.train import run
    from spectrain.errors import SpectrainError

    path = tmp_path / "empty.jsonl"
    path.write_text('{"conversations": [{"from": "narrator", "value": "x"}]}\n')
    with pytest.raises(SpectrainError, match="no conversation with an assistant reply"):
        run(TrainHeadsConfig(data=str(path), output_dir=str(tmp_path / "out"), max_steps=1))


def _embedded_examples(tokenizer, count=6, max_length=128):
    from spectrain.data import read_conversations

    conversations = list(read_conversations("embedded"))[:count]
    return [tokenize_conversation(tokenizer, c.system, c.turns, max_length) for c in conversations]


@pytest.mark.parametrize("init", [True, False])
def test_the_eagle_draft_starts_from_the_base_lm_head_rows_and_final_norm(base_path, tmp_path, init):
    tokenizer = transformers.AutoTokenizer.from_pretrained(base_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    config = TrainHeadsConfig(
        data="x", mode="eagle3", draft_vocab_size=64, eagle_init_from_base=init, eagle_freeze_lm_head=init
    )
    convert(model, config, reduced_vocabulary(config, model.config.vocab_size, _embedded_examples(tokenizer)), tmp_path)
    draft = model.eagle_module
    tokens = torch.arange(64) + draft.d2t
    from_base = torch.equal(draft.lm_head.weight, model.lm_head.weight[tokens])
    assert from_base is init
    assert torch.equal(draft.norm.weight, model.model.norm.weight) is init  # the base's norm is not all ones
    assert draft.lm_head.weight.requires_grad is not init


def test_loss_can_cover_every_token_and_extra_data_is_read_as_written(base_path, tiny_data):
    from spectrain.components.train_heads.examples import load_examples

    tokenizer = transformers.AutoTokenizer.from_pretrained(base_path)
    answers, _ = load_examples(TrainHeadsConfig(data=tiny_data, loss_on="answers", max_length=128), tokenizer)
    both, _ = load_examples(
        TrainHeadsConfig(data=tiny_data, extra_data="embedded", loss_on="answers", max_length=128), tokenizer
    )
    assert len(both) == len(answers) + 240  # the shipped train split's 240 conversations, after the data's
    assert both[: len(answers)] == answers
    everything, _ = load_examples(TrainHeadsConfig(data=tiny_data, loss_on="all", max_length=128), tokenizer)
    assert all(0 < sum(e["loss_mask"]) < len(e["input_ids"]) for e in answers)
    assert all(sum(e["loss_mask"]) == len(e["input_ids"]) for e in everything)


def test_feature_noise_perturbs_the_base_features_only_while_training(base_path, tmp_path):
    tokenizer = transformers.AutoTokenizer.from_pretrained(base_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    convert(
        model, TrainHeadsConfig(data="x", mode="eagle3", draft_vocab_size=0, eagle_feature_noise=0.1), None, tmp_path
    )
    batch = tokenizer(["The capital of France is Paris."], return_tensors="pt")
    seen = []
    model.eagle_module.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    for training in (True, True, False, False):
        model.train(training)
        with torch.no_grad():
            model(**batch)
    assert len(seen) == 3 + 3 + 1 + 1  # three training-time-test steps per training forward, one at evaluation
    first, second, third, fourth = seen[0], seen[3], seen[6], seen[7]  # each forward's first step: base features
    assert not torch.equal(first, second)  # fresh noise every training step
    assert torch.equal(third, fourth)  # none at evaluation
    relative = (first - third).abs().max() / third.pow(2).mean(-1).sqrt().max()
    assert 0 < relative <= 0.1 + 1e-6


def test_feature_noise_keeps_gradients_finite_on_all_zero_padding():
    from spectrain.components.train_heads.draft import with_uniform_noise

    features = torch.zeros(1, 3, 8)
    features[0, 0] = torch.arange(8.0)  # one real position, two of padding (cached padding is all zero)
    for dtype in (torch.float32, torch.bfloat16):
        leaf = features.to(dtype).detach().clone().requires_grad_()
        noisy = with_uniform_noise(leaf, 0.1)
        noisy.float().pow(2).sum().backward()
        assert torch.isfinite(leaf.grad).all()
        assert torch.equal(noisy[0, 1:], leaf[0, 1:])  # zero RMS: padding stays zero
        assert not torch.equal(noisy[0, 0], leaf[0, 0])


def test_packing_fills_rows_with_whole_conversations():
    from spectrain.components.train_heads.examples import pack_examples

    examples = [{"input_ids": [n] * length, "loss_mask": [1] * length} for n, length in enumerate([5, 3, 8, 2, 6])]
    rows = pack_examples(examples, max_length=10)
    assert [len(r["input_ids"]) for r in rows] == [10, 9, 5]  # 8+2, 6+3, 5: three rows instead of five
    assert sorted(t for r in rows for t in r["input_ids"]) == sorted(t for e in examples for t in e["input_ids"])
    for row in rows:  # every conversation whole and contiguous
        assert len(row["input_ids"]) == len(row["loss_mask"])
        runs = [t for i, t in enumerate(row["input_ids"]) if i == 0 or row["input_ids"][i - 1] != t]
        assert all(row["input_ids"].count(t) == len(examples[t]["input_ids"]) for t in runs)
    assert pack_examples(examples, 10) == rows  # deterministic


def test_a_time_budget_schedule_decays_to_zero_when_time_or_steps_run_out():
    from spectrain.components.train_heads.trainer import budget_cosine

    assert budget_cosine(0, warmup=10, total_steps=1000, spent=0.0) == 0.0
    assert budget_cosine(5, 10, 1000, 0.0) == 0.5  # warmup is by steps
    assert budget_cosine(10, 10, 1000, 0.0) == 1.0
    assert budget_cosine(20, 10, 1000, 0.5) == pytest.approx(0.5)  # half the time gone: half way down the cosine
    assert budget_cosine(20, 10, 1000, 1.2) == pytest.approx(0.0)  # time is up
    assert budget_cosine(505, 10, 1000, 0.1) == pytest.approx(0.5)  # the steps run out first here


def test_the_dflash_draft_is_sized_from_the_base_model_and_uses_its_rope(base_path):
    """modelopt builds the draft as a Qwen3 config (8B defaults) and would train RoPE at θ 10000; the base's here."""
    model = transformers.AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    convert(model, TrainHeadsConfig(data="x", mode="dflash", dflash_num_layers=2, dflash_block_size=4), mask_token_id=5)
    draft, base = model.dflash_config, model.config
    assert (draft.num_attention_heads, draft.num_key_value_heads, draft.head_dim, draft.intermediate_size) == (
        base.num_attention_heads,
        base.num_key_value_heads,
        base.hidden_size // base.num_attention_heads,
        base.intermediate_size,
    )
    assert draft.rope_parameters["rope_theta"] == base.rope_parameters["rope_theta"] == 100000
    assert draft.num_hidden_layers == 2 and len(model.target_layer_ids) == 2
    assert (model.dflash_block_size, model.mask_token_id) == (4, 5)
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"dflash_module"}


def test_the_dflash_mask_token_is_a_special_token_the_data_never_uses(base_path):
    tokenizer = transformers.AutoTokenizer.from_pretrained(base_path)
    assert tokenizer.mask_token_id is None
    config = TrainHeadsConfig(data="x", mode="dflash")
    special = sorted(tokenizer.all_special_ids)
    examples = [{"input_ids": [special[0], 42, special[1]], "loss_mask": [0, 1, 1]}]
    assert dflash_mask_token_id(config, tokenizer, examples) == special[2]
    chosen = TrainHeadsConfig(data="x", mode="dflash", dflash_mask_token_id=7)
    assert dflash_mask_token_id(chosen, tokenizer, examples) == 7
    outside = TrainHeadsConfig(data="x", mode="dflash", dflash_mask_token_id=len(tokenizer))
    with pytest.raises(SpectrainError, match="outside the vocabulary"):
        dflash_mask_token_id(outside, tokenizer, examples)


def test_a_dflash_sequence_length_must_hold_whole_blocks():
    with pytest.raises(SpectrainError, match="max_length 260"):
        TrainHeadsConfig(data="x", mode="dflash", max_length=257, dflash_block_size=4).validate()
    TrainHeadsConfig(data="x", mode="eagle3", max_length=257).validate()  # only DFlash trains on blocks


def test_a_dflash_draft_with_more_layers_than_the_base_can_feed_is_refused():
    from spectrain.components.train_heads.draft import feature_layer_ids

    assert feature_layer_ids(TrainHeadsConfig(data="x", mode="dflash", dflash_num_layers=3), 30) == [1, 14, 27]
    with pytest.raises(SpectrainError, match="dflash_num_layers = 3") as refused:
        feature_layer_ids(TrainHeadsConfig(data="x", mode="dflash", dflash_num_layers=3), 4)
    assert "at most 1" in str(refused.value.fix)


def test_training_curves_are_drawn_even_before_the_first_logged_step(tmp_path):
    from spectrain.components.train_heads.train import plot_history

    plot_history([{"train_runtime": 1.0}], tmp_path / "short.png")  # fewer steps than logging_steps
    plot_history([{"step": 1, "loss": 5.0, "head_0_accuracy": 0.2}], tmp_path / "logged.png")
    for name in ("short.png", "logged.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"  # register logs this file: it must exist
