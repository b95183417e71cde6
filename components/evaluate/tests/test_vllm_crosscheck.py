"""Runs in the serve environment (vLLM): our τ against vLLM's counters, trained head against untrained.

Training, export and our evaluation run in the train environment through spectrain.steps.run_step,
the same mechanism the pipeline uses; tests/run_all.sh points SPECTRAIN_PYTHON_<ENV> at each venv.
"""

import pytest

from components.evaluate.config import VllmCrosscheckConfig
from components.evaluate.vllm_crosscheck import run

# Evaluated past the 40 memorised reply tokens: vLLM's counters also count drafts accepted beyond a request's
# max_tokens (then cut from the reply), which our replay of the reply cannot see; ending where the draft no
# longer knows the text keeps that end effect small for a draft that has memorised its data.
EVAL_TOKENS = 48
TRAINING = {  # enough steps on three greedy replies that a draft which loads must be accepted
    "medusa": {"max_steps": 40, "lr": 3e-3},
    "eagle3": {"max_steps": 80, "lr": 3e-3, "draft_vocab_size": 1024},
    "dflash": {"max_steps": 160, "lr": 3e-3, "dflash_block_size": 4, "dflash_num_anchors": 32},
}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["medusa", "eagle3", "dflash"])
def test_vllm_loads_the_trained_draft_and_agrees_with_our_tau(tmp_path, mode):
    """A draft trained on the base's own greedy replies to the eval prompts must be accepted, in torch and in vLLM.

    An export whose names vLLM does not know would still load — with random weights, τ ≈ 1, as the same
    architecture at initialisation (the evaluate step's untrained baseline) — so vLLM's own counters
    must show the trained τ, well above that baseline, and agree with our torch replay.
    """
    from spectrain.steps import run_step
    from spectrain.testing import write_greedy_replies

    prompts = ["Name three fruits.", "What is the capital of France?", "Give me a tip for sleeping well."]
    data = write_greedy_replies(tmp_path / "prompts.jsonl", prompts, max_new_tokens=40)

    checkpoint, draft = tmp_path / "checkpoint", tmp_path / "draft"
    run_step(
        "train-heads",
        {
            "data": str(data),
            "output_dir": str(checkpoint),
            "mode": mode,
            "batch_size": 3,
            "max_length": 96,
            "warmup_steps": 0,
            **TRAINING[mode],
        },
    )
    ours = run_step(
        "evaluate",
        {
            "checkpoint": str(checkpoint),
            "mode": mode,
            "dataset": str(data),
            "max_new_tokens": EVAL_TOKENS,
            "output_dir": str(tmp_path / "eval"),
            "max_k": 3,  # the k served here; step costs at batch 1 only, timed once (not what this test checks)
            "cost_batch_sizes": [1],
            "cost_repeats": 1,
        },
    )
    # float32, as the replay: the check is of vLLM's loader and drafting, not of bf16 rounding of the weights
    run_step(
        "export",
        {
            "checkpoint": str(checkpoint),
            "mode": mode,
            "output_dir": str(draft),
            "dtype": "float32",
            "evaluation": str(tmp_path / "eval"),
        },
    )
    theirs = run(
        VllmCrosscheckConfig(
            draft_dir=str(draft),
            mode=mode,
            dataset=str(data),
            max_new_tokens=EVAL_TOKENS,
            output=str(tmp_path / "vllm.json"),
            expected_acceptance_length=ours["acceptance_length_per_draft"],
        )
    )
    measured = {
        "ours": ours["acceptance_length_per_draft"],
        "vllm": theirs["acceptance_length"],
        "untrained (ours)": ours["untrained_acceptance_length"],
    }
    print(f"[crosscheck {mode}] {measured}")
    assert measured["untrained (ours)"] < 1.15, measured
    assert measured["ours"] > measured["untrained (ours)"] + 0.2, measured
    assert measured["vllm"] > measured["untrained (ours)"] + 0.2, measured  # vLLM runs the trained weights
    assert theirs["agrees"], measured
