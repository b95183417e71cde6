"""Runs in the serve environment (vLLM): our τ against vLLM's counters, trained head against untrained.

The drafts have memorised the base's greedy replies to three prompts (tests/support/memorised.py: trained,
evaluated and exported in the train environment through spectrain.steps.run_step, the mechanism the pipeline
uses; tests/run_all.sh points SPECTRAIN_PYTHON_<ENV> at each venv), so a draft that loads must be accepted.
"""

import pytest

from spectrain.components.evaluate.config import VllmCrosscheckConfig
from spectrain.components.evaluate.vllm_crosscheck import run
from tests.support.memorised import EVAL_TOKENS


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["medusa", "eagle3", "dflash"])
def test_vllm_loads_the_trained_draft_and_agrees_with_our_tau(tmp_path, mode, memorised):
    """A draft trained on the base's own greedy replies to the eval prompts must be accepted, in torch and in vLLM.

    An export whose names vLLM does not know would still load — with random weights, τ ≈ 1, as the same
    architecture at initialisation (the evaluate step's untrained baseline) — so vLLM's own counters
    must show the trained τ, well above that baseline, and agree with our torch replay.
    """
    draft = memorised(mode)
    ours = draft.evaluation
    theirs = run(
        VllmCrosscheckConfig(
            draft_dir=str(draft.draft),
            mode=mode,
            dataset=str(draft.replies),
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
