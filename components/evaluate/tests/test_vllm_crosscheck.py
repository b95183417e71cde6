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
@pytest.mark.parametrize("mode", ["medusa", "dflash"])  # EAGLE-3's: below, with its served speed
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
            served_speed=False,
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


@pytest.mark.slow
def test_served_speed_is_measured_in_vllm_and_chooses_k(tmp_path, memorised):
    """vLLM serves the base alone, with the memorised EAGLE-3 draft and with n-gram, each its own server on the same
    prompts: a draft accepted almost always must make the server faster than the base alone (the speed-up is
    real, measured as a client sees it), and what is chosen follows from the rows (k where it paid).

    The draft at k = 3 is timed on the τ check's own server (same dtype, eager): three servers in all. The τ check
    of the test above holds for this draft too.
    """
    draft = memorised("eagle3")
    ours = draft.evaluation
    result = run(
        VllmCrosscheckConfig(
            draft_dir=str(draft.draft),
            mode="eagle3",
            dataset=str(draft.replies),
            max_new_tokens=EVAL_TOKENS,
            output=str(tmp_path / "vllm.json"),
            speed_ks=[3],
            speed_concurrency=[1, 2],
            speed_max_new_tokens=EVAL_TOKENS,
            speed_rounds=2,
            expected_acceptance_length=ours["acceptance_length_per_draft"],
            speed_dtype="float32",  # the τ check's dtype: its server is reused for the draft's timing
        )
    )
    assert result["acceptance_length"] > ours["untrained_acceptance_length"] + 0.2, result  # the trained weights
    assert result["agrees"], (result["acceptance_length"], ours["acceptance_length_per_draft"])
    served = result["served"]
    rows = {(r["setting"], r["concurrency"]): r for r in served["rows"]}
    print(f"[served] { {key: round(r['output_tokens_per_s'], 1) for key, r in rows.items()} }")
    assert set(rows) == {(s, c) for s in ("base", "eagle3 k=3", "ngram k=3") for c in (1, 2)}
    assert all(r["output_tokens"] > 0 and r["requests"] == 3 for r in rows.values())
    assert all(len(r["rounds_tokens_per_s"]) == 2 and r["spread"] >= 0 for r in rows.values())  # timed twice each
    # greedy: every server wrote the same replies, so their throughputs compare like for like
    assert len({r["output_tokens"] for r in rows.values() if r["concurrency"] == 1}) == 1, rows
    assert served["speedup"] > 1.2, served  # τ ≈ 3.5 tokens per base step on text the draft knows by heart
    assert served["k_chosen_by"] == "served" and served["draft_k"] == 3
    assert served["num_speculative_tokens"] == 3
    schedule = served["num_speculative_tokens_per_batch_size"]
    assert schedule[0][0] == 1 and schedule[-1][1] == 2, schedule  # vLLM's ranges: batch 1 to the largest timed
    assert {k for _, _, k in schedule} <= {0, 3} and 3 in {k for _, _, k in schedule}
    assert served["beats_ngram"] == (served["draft_tokens_per_s"] > served["ngram_tokens_per_s"])
    # n-gram finds few matches in replies it has not seen: the draft's lead (~2x, not ~1.1x) is beyond any noise
    assert served["versus_ngram"] == "faster" and served["noise"] >= 0.05, served
    assert (tmp_path / "vllm.base.vllm.log").is_file() and (tmp_path / "vllm.ngram-k=3.vllm.log").is_file()


def test_the_servers_replay_in_the_evaluate_steps_arithmetic_on_every_gpu_the_step_was_given(
    monkeypatch, embedded_model
):
    """On this CPU: float32, one process, as evaluate's torch replay (its τ is what vLLM's must agree with). On a GPU
    node — SIMULATED here: no GPU on this machine, spectrain.devices.resolve and the step's GPU count stand in — the
    base's own dtype (a 70B base in float32 would need twice the memory and replay other text than evaluate's bf16)
    and tensor parallelism over the step's GPUs (eval_gpus: a 70B base fits no single card)."""
    from spectrain import devices
    from spectrain.components.evaluate import vllm_crosscheck

    shared, dtype = vllm_crosscheck.servers(VllmCrosscheckConfig(draft_dir="d"))
    assert (dtype, shared.tensor_parallel_size) == ("float32", 1)
    asked = {}

    def on_a_gpu(model_dtype=None, **_):
        asked["model_dtype"] = model_dtype
        return devices.Placement(device="cuda:0", base_dtype=model_dtype, precision="bf16", accelerator="GPU", gpus=4)

    monkeypatch.setattr(devices, "resolve", on_a_gpu)
    monkeypatch.setenv(devices.GPUS_ENV, "4")
    shared, dtype = vllm_crosscheck.servers(VllmCrosscheckConfig(draft_dir="d"))
    assert (dtype, shared.tensor_parallel_size) == ("bfloat16", 4)  # the embedded base declares bfloat16
    assert asked["model_dtype"] == "bfloat16"
    shared, dtype = vllm_crosscheck.servers(
        VllmCrosscheckConfig(draft_dir="d", dtype="float16", tensor_parallel_size=2)
    )
    assert (dtype, shared.tensor_parallel_size) == ("float16", 2)  # asked for by name: kept
