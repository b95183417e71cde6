"""evaluate: the replay that defines τ, the n-gram baseline, and the EAGLE drafter against modelopt's own."""

import pytest
import torch
import transformers

from spectrain.components.evaluate.proposers import DFlashProposer, EagleProposer, MedusaProposer, ngram_proposer
from spectrain.components.evaluate.greedy import source_name
from spectrain.components.evaluate.replay import evaluate_proposer, replay, replay_curve
from spectrain import devices, draft_checkpoint
from spectrain.models import resolve_base_model

SEQUENCE = list(range(100, 120))


def load_draft(checkpoint):
    """The trained draft restored onto the embedded base, as the evaluate step loads it."""
    return draft_checkpoint.load(
        checkpoint, resolve_base_model("embedded"), devices.cpu()
    )  # 5 prompt tokens, 15 generated


def test_a_perfect_draft_emits_k_plus_one_tokens_per_step():
    tally = replay(SEQUENCE, 5, lambda n: SEQUENCE[n + 1 : n + 4], k=3)
    assert tally.tokens == 15  # every generated token counted exactly once
    assert tally.steps == 4  # 4 + 4 + 4 + 3 (the end cuts the last chain)
    assert tally.summary()["acceptance_length"] == pytest.approx(15 / 4)
    assert tally.accepted_at == [4, 4, 3]


def test_vllms_definition_leaves_out_a_last_step_with_nothing_to_draft():
    """vLLM's counters give 1 + accepted / drafts: the step that emits a reply's last token verifies no draft."""
    perfect = replay(SEQUENCE, 5, lambda n: SEQUENCE[n + 1 : n + 4], k=3)
    assert perfect.drafted == perfect.steps == 4  # the reply ends inside the last accepted chain
    assert perfect.summary()["acceptance_length_per_draft"] == pytest.approx(1 + 11 / 4)
    cut = replay(SEQUENCE[:18], 5, lambda n: SEQUENCE[n + 1 : n + 4], k=3)  # 13 tokens: 4 + 4 + 4, then 1 alone
    assert (cut.steps, cut.drafted, cut.tokens) == (4, 3, 13)
    assert cut.summary()["acceptance_length"] == pytest.approx(13 / 4)
    assert cut.summary()["acceptance_length_per_draft"] == pytest.approx(1 + 9 / 3)


def test_a_useless_draft_gives_one_token_per_step():
    tally = replay(SEQUENCE, 5, lambda n: [0, 0, 0], k=3)
    assert (tally.steps, tally.tokens, tally.summary()["acceptance_length"]) == (15, 15, 1.0)
    assert tally.summary()["acceptance_rate_per_position"] == [0.0, 0.0, 0.0]


def test_acceptance_stops_at_the_first_wrong_draft():
    tally = replay(SEQUENCE, 5, lambda n: [SEQUENCE[n + 1], -1, SEQUENCE[n + 3]] if n + 3 < 20 else [], k=3)
    assert tally.accepted_at[1] == tally.accepted_at[2] == 0 and tally.accepted_at[0] > 0


def test_ngram_lookup_proposes_what_followed_the_latest_match():
    sequence = [1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4]
    propose = ngram_proposer(sequence, k=3, ngram_max=3)
    assert propose(4) == [2, 3, 4]  # context ends with 1: continue as after the earlier 1
    assert propose(1) == []  # no earlier occurrence of anything
    assert replay(sequence, 4, propose, k=3).summary()["acceptance_length"] > 2


@pytest.fixture(scope="module")
def base():
    path = resolve_base_model("embedded")
    return path, transformers.AutoTokenizer.from_pretrained(path)


def greedy(path, tokenizer, prompt: str, new_tokens: int) -> list[int]:
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    return model.generate(ids, do_sample=False, max_new_tokens=new_tokens)[0].tolist(), ids.shape[1]


@pytest.mark.slow
@pytest.mark.parametrize("mode, proposer", [("eagle3", EagleProposer), ("dflash", DFlashProposer)])
def test_drafts_equal_modelopt_pseudo_speculative_generate(base, tiny_checkpoints, mode, proposer):
    path, tokenizer = base
    sequence, prompt_length = greedy(path, tokenizer, "List three colours.", 12)
    model = load_draft(tiny_checkpoints[mode][0])
    # Two training steps leave a draft that proposes one token everywhere; spread its weights so that its
    # drafts depend on the context and the comparison below can tell two computations apart.
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in getattr(model, {"eagle3": "eagle_module", "dflash": "dflash_module"}[mode]).parameters():
            if parameter.is_floating_point():
                parameter.add_(torch.randn_like(parameter) * parameter.std().clamp(min=0.05))
    propose = proposer(model, k=3).for_sequence(torch.tensor([sequence]))
    drafted = set()
    for n in (prompt_length, prompt_length + 1, prompt_length + 5, prompt_length + 6):
        base_token, drafts = model.pseudo_speculative_generate(torch.tensor([sequence[:n]]), steps=3)
        assert int(base_token) == sequence[n]  # the draft continues from the token the base emitted
        assert propose(n) == drafts[0].tolist(), f"position {n}"
        drafted.add(tuple(propose(n)))
    assert len(drafted) > 1, "the drafts do not depend on the context"


def test_more_draft_tokens_than_a_dflash_block_drafts_is_refused(tiny_checkpoints):
    dflash_dir, _ = tiny_checkpoints["dflash"]  # blocks of 4: 3 drafts
    result = spectrain_step("evaluate", "--checkpoint", dflash_dir, "--mode", "dflash", "--num-draft-tokens", "4")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "a DFlash block of 4 drafts 3 tokens" in result.stderr and "use at most 3" in result.stderr


@pytest.mark.slow
def test_medusa_drafts_come_from_the_hidden_state_that_emitted_the_token(base, tiny_checkpoints):
    path, tokenizer = base
    sequence, prompt_length = greedy(path, tokenizer, "Name a planet.", 6)
    model = load_draft(tiny_checkpoints["medusa"][0])
    propose = MedusaProposer(model, k=2).for_sequence(torch.tensor([sequence]))
    with torch.no_grad():
        hidden = model.model(input_ids=torch.tensor([sequence[:prompt_length]])).last_hidden_state[0, -1]
        expected = [int(head(hidden).argmax()) for head in model.medusa_heads]
    assert propose(prompt_length) == expected


def spectrain_step(*args):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "spectrain.cli", "step", *args], capture_output=True, text=True, timeout=600
    )


def test_a_checkpoint_of_another_mode_is_refused_naming_both_modes(tiny_checkpoints):
    eagle_dir, _ = tiny_checkpoints["eagle3"]
    result = spectrain_step("evaluate", "--checkpoint", eagle_dir, "--mode", "medusa")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "holds a eagle3 draft, but evaluate.mode is 'medusa'" in result.stderr and "--mode eagle3" in result.stderr


def test_more_draft_tokens_than_medusa_heads_is_refused(tiny_checkpoints):
    medusa_dir, _ = tiny_checkpoints["medusa"]  # 2 heads
    result = spectrain_step("evaluate", "--checkpoint", medusa_dir, "--mode", "medusa", "--num-draft-tokens", "3")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "2 Medusa heads draft 2 tokens" in result.stderr and "use at most 2" in result.stderr


def test_a_loaded_checkpoint_of_another_kind_is_refused_even_without_its_train_result(tiny_checkpoints, tmp_path):
    import shutil

    from spectrain.components.evaluate.proposers import draft_proposer
    from spectrain.components.evaluate.config import EvaluateConfig
    from spectrain.errors import SpectrainError

    eagle_dir, _ = tiny_checkpoints["eagle3"]
    copy = tmp_path / "eagle"
    shutil.copytree(eagle_dir, copy, ignore=shutil.ignore_patterns("train_result.json"))
    model = load_draft(copy)
    with pytest.raises(SpectrainError, match="holds EAGLE, not a medusa draft"):
        draft_proposer(model, EvaluateConfig(checkpoint=str(copy), mode="medusa"))


def test_batched_greedy_replies_are_exactly_the_base_models_own_greedy_text(base):
    from spectrain.components.evaluate.greedy import confirm_greedy, generate_batch

    path, tokenizer = base
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    questions = [
        "List three colours.",
        "What is the capital of France? Answer in one word.",
        "Write a haiku about the sea and the wind in the evening.",
        "Say hi.",
    ]
    prompts = [
        tokenizer(
            tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True),
            add_special_tokens=False,
        )["input_ids"]
        for q in questions
    ]
    eos = (
        {model.generation_config.eos_token_id}
        if isinstance(model.generation_config.eos_token_id, int)
        else set(model.generation_config.eos_token_id)
    )
    batched = [confirm_greedy(model, p, c) for p, c in zip(prompts, generate_batch(model, prompts, 16, eos))]
    alone = [model.generate(torch.tensor([p]), do_sample=False, max_new_tokens=16)[0].tolist() for p in prompts]
    assert sum(b == a for b, a in zip(batched, alone)) >= 3  # left padding changes nothing but near-ties
    for prompt, sequence in zip(prompts, batched):
        assert len(sequence) > len(prompt)
        predicted = model(input_ids=torch.tensor([sequence])).logits[0, len(prompt) - 1 : -1].argmax(-1).tolist()
        assert predicted == sequence[len(prompt) :]  # every token is the base's greedy choice for its prefix


def test_a_reply_that_disagrees_with_the_teacher_forced_pass_is_cut_at_the_first_disagreement(base):
    from spectrain.components.evaluate.greedy import confirm_greedy

    path, tokenizer = base
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompt = tokenizer("The capital of France is", add_special_tokens=False)["input_ids"]
    good = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=6)[0].tolist()[len(prompt) :]
    wrong = good[:2] + [(good[2] + 1) % model.config.vocab_size] + good[3:]
    assert confirm_greedy(model, prompt, wrong) == prompt + good[:3]
    assert confirm_greedy(model, prompt, good) == prompt + good


def test_the_curve_replays_every_k_exactly_as_alone_asking_each_position_once_in_order():
    import random

    rng = random.Random(0)
    sequence = [rng.randrange(4) for _ in range(60)]  # 4 symbols: drafts often right, sometimes not
    table = {n: [rng.randrange(4) for _ in range(5)] for n in range(60)}
    asked = []

    def propose(n):
        asked.append(n)
        return table[n]

    curve = replay_curve(sequence, 10, propose, [1, 2, 3, 4, 5])
    for k in range(1, 6):
        alone = replay(sequence, 10, lambda n: table[n], k)
        assert (curve[k].steps, curve[k].tokens, curve[k].accepted_at) == (alone.steps, alone.tokens, alone.accepted_at)
    assert asked == sorted(set(asked))  # once per position, increasing: an EAGLE cache only ever grows
    assert curve[1].summary()["acceptance_length"] != curve[5].summary()["acceptance_length"]


def test_tau_is_told_apart_per_source_file_so_a_continued_draft_that_forgets_old_prompts_shows_it():
    """An eval set of two files (the old prompt source and the new): the draft knows the new prompts' replies by
    heart and none of the old ones, and τ per source says so where the overall τ averages it away."""
    sequences = [list(range(100, 120)), list(range(200, 220)), list(range(300, 320)), list(range(400, 420))]
    sources = ["old.jsonl", "old.jsonl", "new.jsonl", "new.jsonl"]
    prompts = [{"input_ids": s[:5], "category": "all", "source": f} for s, f in zip(sequences, sources)]
    knows = {tuple(s) for s, f in zip(sequences, sources) if f == "new.jsonl"}  # the replies it learnt

    def make_propose(sequence):
        return lambda n: sequence[n + 1 : n + 3] if tuple(sequence) in knows else [0, 0]

    totals, groups = evaluate_proposer(make_propose, prompts, sequences, [1, 2], "draft", 2)
    by_source = {name: tally.summary()["acceptance_length"] for name, tally in groups["source"].items()}
    assert by_source == {"old.jsonl": 1.0, "new.jsonl": 3.0}  # none accepted, every pair of drafts accepted
    assert 1.0 < totals[2].summary()["acceptance_length"] < 3.0 and set(groups["category"]) == {"all"}
    assert source_name("s3://traffic/2026-12-07/heldout.jsonl:12") == "heldout.jsonl"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["eagle3", "medusa", "dflash"])
def test_a_timed_draft_step_for_a_batch_computes_what_the_replay_proposes(base, tiny_checkpoints, mode):
    """The cost measured is the cost of the real thing: each row of the batched step drafts what propose(n) does."""
    from spectrain.components.evaluate.proposers import draft_proposer
    from spectrain.components.evaluate.config import EvaluateConfig

    path, tokenizer = base
    sequence, _ = greedy(path, tokenizer, "List three colours.", 8)
    model = load_draft(tiny_checkpoints[mode][0])
    torch.manual_seed(0)
    with torch.no_grad():  # as above: drafts that depend on the context
        draft = {"eagle3": "eagle_module", "dflash": "dflash_module", "medusa": "medusa_heads"}[mode]
        for parameter in getattr(model, draft).parameters():
            if parameter.is_floating_point():
                parameter.add_(torch.randn_like(parameter) * parameter.std().clamp(min=0.05))
    k = 2
    proposer = draft_proposer(
        model, EvaluateConfig(checkpoint=tiny_checkpoints[mode][0], mode=mode, num_draft_tokens=k)
    )
    expected = proposer.for_sequence(torch.tensor([sequence]))(len(sequence) - 1)
    drafted = proposer.step_timer(torch.tensor([sequence]), 3)(k)()
    rows = (
        torch.cat([torch.as_tensor(t).reshape(3, -1) for t in drafted], dim=1) if isinstance(drafted, list) else drafted
    )
    assert rows.reshape(3, k).tolist() == [expected] * 3


@pytest.mark.slow
def test_held_out_prompts_of_new_data_are_reported_beside_tau_and_leave_it_as_the_gate_compares_it(tmp_path, memorised):
    """A draft continued on new data is measured on that data's held-out prompts too (regenerate's heldout), per
    source: the memorised draft is accepted on the replies it learnt, hardly on prompts it never saw; τ, which
    the gate compares with the champion's, is the eval set's alone, as without the extra prompts."""
    import json

    from spectrain.components.evaluate.acceptance import run
    from spectrain.components.evaluate.config import EvaluateConfig
    from tests.support.memorised import EVALUATION_FOR

    draft = memorised("eagle3")
    new = tmp_path / "new-traffic.heldout.jsonl"
    new.write_text(
        "".join(
            json.dumps({"conversation_id": f"n{i}", "conversations": [{"from": "User", "value": q}]}) + "\n"
            for i, q in enumerate(["Write a limerick about a cat.", "How do tides work?"])
        )
    )
    settings = {k: v for k, v in EVALUATION_FOR["eagle3"].items() if k != "cost_repeats"}

    def evaluated(extra) -> dict:
        return run(
            EvaluateConfig(
                checkpoint=str(draft.checkpoint),
                mode="eagle3",
                dataset=str(draft.replies),
                extra_dataset=str(extra),
                output_dir=str(tmp_path / f"eval-{extra.stem}"),
                untrained_baseline=False,
                cost_repeats=1,
                **settings,
            )
        )

    result = evaluated(new)
    learnt, beside = result["by_source"][draft.replies.name], result["by_source"][new.name]
    assert result["acceptance_length"] == pytest.approx(draft.evaluation["acceptance_length"])  # as without them
    assert result["num_prompts"] == 3 and beside["prompts"] == 2 and beside["in_tau"] is False
    assert learnt["acceptance_length"] == pytest.approx(result["acceptance_length"])
    assert beside["acceptance_length"] < learnt["acceptance_length"] - 1.0, result["by_source"]
    assert beside["ngram_acceptance_length"] >= 1.0
    empty = tmp_path / "none.jsonl"
    empty.write_text("")  # regenerate holding nothing out
    assert list(evaluated(empty)["by_source"]) == [draft.replies.name]
