"""The model-support matrix: the bases people serve, at tiny size, through every mode; vLLM loads every draft.

Runs in the serve environment (vLLM): the training, evaluation and export run in the train environment, all bases
and modes in one process (drive.py, started with that environment's Python, as the pipeline's steps are), and
vLLM's own loader then takes each exported draft (vllm_load.py). docs/bases.md's matrix is this run's result
(`python bench/model_matrix.py`, then `python bench/results.py table model-matrix`).
"""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

import tiny
import vllm_load
from spectrain import bases

HERE = Path(__file__).resolve().parent
# the quantized weights of the hub (gpt-oss mxfp4), as a kind: random bf16 weights stand in for them
NOT_KEPT_AT_TINY_SIZE = {"mxfp# weights"}


def train_python() -> str:
    return os.environ.get("SPECTRAIN_PYTHON_TRAIN") or str(HERE.parents[1] / ".venvs" / "train" / "bin" / "python")


@pytest.fixture(scope="module")
def matrix(tmp_path_factory) -> dict:
    output = tmp_path_factory.mktemp("matrix")
    driven = subprocess.run(
        [train_python(), str(HERE / "drive.py"), str(output)], capture_output=True, text=True, timeout=1800
    )
    assert driven.returncode == 0, driven.stderr[-4000:]
    vllm_load.main(output)
    return json.loads((output / "matrix.json").read_text())


def kinds(features: list[str]) -> set[str]:
    """A feature without its numbers: 'GQA 32/8' and 'GQA 4/1' are the same kind."""
    return {re.sub(r"[\d.,/×]+", "#", feature).strip() for feature in features}


@pytest.mark.slow
@pytest.mark.parametrize("name", tiny.names())
def test_every_mode_trains_evaluates_and_exports_or_is_refused_before_any_weight_is_loaded(matrix, name):
    entry = matrix[name]
    unservable = entry["architecture"] in bases.VLLM_WITHOUT_AUX_HIDDEN_STATES
    for mode, outcome in entry["modes"].items():
        assert outcome["outcome"] != "failed", f"{name} {mode}:\n{outcome.get('traceback')}"
        if unservable and mode in ("eagle3", "dflash"):
            # refused by the config check, naming the feature and what to do, before training started
            assert outcome["outcome"] == "refused" and outcome["stage"] == "train", outcome
            assert outcome["where"] == "train_heads.mode"
            assert entry["architecture"] in outcome["message"] and "SupportsEagle3" in outcome["message"]
            continue
        assert outcome["outcome"] == "ok", outcome
        assert outcome["steps"] == 2 and outcome["final_loss"] == outcome["final_loss"]  # trained, loss not NaN
        assert 1.0 <= outcome["acceptance_length"] <= 3.0  # evaluated (k = 2)
        assert "config.json" in outcome["draft_files"] and "vllm_speculative_config.json" in outcome["draft_files"]


@pytest.mark.slow
@pytest.mark.parametrize("name", tiny.names())
def test_vllm_loads_every_weight_of_every_exported_draft(matrix, name):
    for mode, outcome in matrix[name]["modes"].items():
        if outcome["outcome"] != "ok":
            continue
        loaded = outcome["vllm"]
        assert "error" not in loaded, f"{name} {mode}: {loaded.get('error')}"
        assert loaded["not_loaded"] == [], f"{name} {mode}: vLLM left these at their initial value"
        assert loaded["sums_agree"], f"{name} {mode}: {loaded['loaded_sum']} loaded, {loaded['file_sum']} exported"
        assert set(loaded["shared_with_target"]) <= {"model.embed_tokens.weight", "lm_head.weight"}
        if mode == "eagle3":
            assert loaded["vocabulary_map"] is True  # the reduced vocabulary maps to the right target tokens


@pytest.mark.slow
def test_spectrain_knows_which_targets_vllm_serves_eagle3_and_dflash_for(matrix):
    """spectrain.bases refuses EAGLE-3 and DFlash for the targets vLLM's registry says cannot feed them."""
    for name, entry in matrix.items():
        expected = entry["architecture"] in bases.VLLM_AUX_HIDDEN_STATE_TARGETS
        assert entry["vllm_target_hands_out_hidden_states"] is expected, name
    for architecture in bases.VLLM_AUX_HIDDEN_STATE_TARGETS | bases.VLLM_WITHOUT_AUX_HIDDEN_STATES:
        expected = architecture in bases.VLLM_AUX_HIDDEN_STATE_TARGETS
        assert vllm_load.target_hands_out_hidden_states(architecture) is expected, architecture


@pytest.mark.slow
@pytest.mark.parametrize("name", tiny.names())
def test_the_tiny_base_keeps_what_sets_the_real_one_apart(matrix, name):
    entry = matrix[name]
    assert kinds(entry["tiny_features"]) == kinds(entry["features"]) - NOT_KEPT_AT_TINY_SIZE
    real, small = (next(f for f in entry[key] if f.startswith("vocabulary")) for key in ("features", "tiny_features"))
    raised = tiny.real(name)["vocab_size"] < 49152  # to the embedded tokenizer's, which every tiny base uses
    assert (real == small) is not raised, (real, small)
