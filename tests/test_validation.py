"""Every pipeline argument is checked before anything starts: the parameter, the bad value, what is allowed.

One test per rule. `spectrain run` and `spectrain step` are run as commands (exit 2 within seconds, no
vLLM started); the rules themselves are called directly.
"""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from spectrain.pipelines import parameters
from spectrain import checks
from spectrain import config as configs
from spectrain.errors import SpectrainError
from spectrain.pipelines.speculative_decoding import parameters as pipeline_parameters

PARAMETERS = pipeline_parameters()


def problems(**arguments) -> str:
    with pytest.raises(SpectrainError) as error:
        parameters.validate(arguments, PARAMETERS, where="command line")
    return str(error.value)


def spectrain(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "spectrain.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_every_pipeline_parameter_has_a_rule_or_feeds_a_checked_step_field():
    assert set(PARAMETERS) == set(parameters.FEEDS) | set(parameters.OWN_RULES)
    for name, (cls, field) in parameters.FEEDS.items():
        assert configs.field_type(cls, field) is PARAMETERS[name]["type"], name  # same type as the field it feeds


def test_a_parameter_of_one_step_carries_that_steps_prefix():
    unprefixed = [
        name
        for name, (cls, _) in parameters.FEEDS.items()
        if name not in parameters.SHARED and not name.startswith(parameters.PREFIXES[cls])
    ]
    unprefixed += [
        name
        for name in parameters.OWN_RULES
        if name not in parameters.SHARED and not name.startswith(tuple(parameters.PREFIXES.values()))
    ]
    assert not unprefixed, f"name these after their step (serve_, regenerate_, train_, eval_, ...): {unprefixed}"


def test_each_pipeline_default_is_the_default_of_the_step_field_it_feeds():
    drifted = {
        name: (PARAMETERS[name]["default"], configs.default_of(cls, field))
        for name, (cls, field) in parameters.FEEDS.items()
        if PARAMETERS[name]["default"] != parameters.PIPELINE_DEFAULTS.get(name, configs.default_of(cls, field))
    }
    assert not drifted, f"pipeline default vs step default: {drifted}"
    # the one deliberate exception: on Kubernetes every step is a pod, so vLLM gets a Deployment of its own
    assert (
        parameters.PIPELINE_DEFAULTS == {"serve_mode": "cluster"} and PARAMETERS["serve_mode"]["default"] == "cluster"
    )


def test_spectrain_run_serves_locally_whatever_the_preset():
    from spectrain.cli.local import ON_THIS_MACHINE

    assert ON_THIS_MACHINE == {"serve_mode": "local"}  # kfp.local: every step on this machine
    assert parameters.cluster_problems({"serve_mode": "cluster"}) == []
    assert "--serve-mode = 'local' starts vLLM" in parameters.cluster_problems({"serve_mode": "local"})[0]


def test_in_podsims_pods_local_serving_is_refused_before_anything_starts(tmp_path):
    """In pods the cluster default holds; asking for 'local' there is the mistake the boundaries exist to catch
    (tests/test_pods.py shows it would fail on its own: regenerate finds no server)."""
    result = subprocess.run(
        [sys.executable, "-m", "podsim", "run", "--workdir", str(tmp_path), "--serve-mode", "local"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],  # podsim runs from the project's checkout
    )
    assert result.returncode == 2, result.stderr
    assert "python -m podsim run: --serve-mode = 'local' starts vLLM" in result.stderr
    assert "drop --serve-mode" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_an_options_key_with_a_parameter_of_its_own_is_refused_naming_that_parameter():
    message = problems(regenerate_options={"max_tokens": 64}, train_options={"lr": 0.01, "data": "x.jsonl"})
    assert "--regenerate-options: 'max_tokens' has a parameter of its own: set --regenerate-max-tokens" in message
    assert "--train-options: 'lr' has a parameter of its own: set --train-lr instead" in message
    assert "--train-options: 'data' is set by the pipeline itself" in message
    parameters.validate(
        {"regenerate_options": {"temperature": 0.6}, "train_options": {"training_arguments": {"seed": 7}}},
        PARAMETERS,
        where="x",
    )  # settings without a parameter of their own stay welcome
    message = problems(train_options={"seed": 7})
    assert """'seed' is a field of transformers.TrainingArguments: pass it inside training_arguments""" in message


def test_eval_options_reach_evaluate_and_are_checked_before_any_work():
    """The batch sizes evaluate times (and so the per-batch-size k schedule export writes) should be those
    production serves at: eval_options sets them, checked like the step's own config."""
    parameters.validate(
        {"eval_options": {"cost_batch_sizes": [1, 8, 32], "max_k": 7, "untrained_baseline": False}},
        PARAMETERS,
        where="x",
    )
    message = problems(eval_options={"cost_batch_sizes": [4, 1], "num_prompts": 3, "checkpoint": "c", "max_kk": 2})
    assert "--eval-options: 'num_prompts' has a parameter of its own: set --eval-num-prompts instead" in message
    assert "--eval-options: 'checkpoint' is set by the pipeline itself" in message
    assert "--eval-options: unknown key 'max_kk'" in message
    assert "cost_batch_sizes" in message  # not increasing


def test_crosscheck_options_size_the_served_speed_measurement_and_are_checked_before_any_work():
    """The concurrencies the served k schedule is timed at should be those production serves at (and start at 1,
    as vLLM's schedule must); the k's timed need not start at 1."""
    parameters.validate(
        {"eval_vllm_crosscheck_options": {"speed_ks": [2, 3], "speed_concurrency": [1, 8, 32], "served_speed": True}},
        PARAMETERS,
        where="x",
    )
    message = problems(
        eval_vllm_crosscheck_options={"speed_concurrency": [4, 16], "speed_ks": [0, 2], "draft_dir": "d", "speed": 1}
    )
    assert "--eval-vllm-crosscheck-options: 'draft_dir' is set by the pipeline itself" in message
    assert "--eval-vllm-crosscheck-options: unknown key 'speed'" in message
    assert "speed_concurrency" in message and "the list must start at 1" in message
    assert "speed_ks" in message and "the values must be at least 1" in message


def test_serve_options_size_vllm_and_are_checked_before_any_work():
    """vLLM's sizing for a real base (tensor parallelism, GPUs per replica, memory share, dtype, quantization,
    eager mode, readiness window, extra flags) reaches the serve step through serve_options, checked like the
    step's own config; flags spectrain sets itself are refused in extra_args too."""
    parameters.validate(
        {
            "serve_options": {
                "tensor_parallel_size": 4,
                "gpus": 4,
                "gpu_memory_utilization": 0.92,
                "enforce_eager": False,
                "quantization": "fp8",
                "ready_timeout_s": 1800,
                "extra_args": ["--enable-prefix-caching"],
            }
        },
        PARAMETERS,
        where="x",
    )
    message = problems(serve_options={"max_model_len": 4096, "api_key": "k", "gpu_memory_utilization": 1.5})
    assert "--serve-options: 'max_model_len' has a parameter of its own: set --serve-max-model-len" in message
    assert "--serve-options: 'api_key' is set by the pipeline itself" in message
    assert "--serve-options: gpu_memory_utilization = 1.5 is not allowed" in message


def test_a_bad_run_argument_exits_2_within_seconds_before_any_server_starts(tmp_path):
    started = time.monotonic()
    result = spectrain("run", "--workdir", str(tmp_path), "--modes", "eagle2", "--train-lr", "-1")
    assert result.returncode == 2, result.stderr
    assert time.monotonic() - started < 60
    assert "--modes" in result.stderr and "'eagle2'" in result.stderr and "eagle3, medusa" in result.stderr
    assert (
        "--train-lr = -1.0 is not allowed: expected 0 (chosen from the base model) or a number > 0, e.g. 0.001"
        in result.stderr
    )  # both problems, at once
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "servers").exists() and not (tmp_path / "runs").exists()  # nothing started


def test_unknown_modes_are_named():
    assert "unknown: 'eagle2'" in problems(modes=["eagle3", "eagle2"])


def test_a_repeated_mode_is_refused():
    assert "a value is repeated" in problems(modes="eagle3,eagle3")


def test_a_missing_local_dataset_is_named_with_its_path():
    message = problems(dataset="/no/such/file.jsonl")
    assert "--dataset" in message and "/no/such/file.jsonl does not exist" in message and "e.g. embedded" in message


def test_a_dataset_without_one_usable_conversation_is_refused_naming_the_first_bad_line(tmp_path):
    data = tmp_path / "chats.jsonl"
    data.write_text('{"foo": 1}\n{"conversations": []}\n')
    message = problems(dataset=str(data))
    assert "holds no usable conversation (2 records skipped; first problem: " in message and f"{data}:1" in message
    data.write_text('{"foo": 1}\n{"conversations": [{"from": "User", "value": "Hi"}]}\n')
    parameters.validate({"dataset": str(data)}, PARAMETERS, where="x")  # one usable conversation is enough


def test_an_unreadable_dataset_is_refused(tmp_path, monkeypatch):
    data = tmp_path / "chats.jsonl"
    data.write_text("{}\n")
    monkeypatch.setattr(checks.os, "access", lambda path, mode: False)  # root reads everything: simulate a 000 file
    assert "is not readable" in problems(eval_dataset=str(data))


def test_a_negative_learning_rate_is_refused():
    assert "--train-lr = -1.0 is not allowed: expected 0 (chosen from the base model) or a number > 0" in problems(
        train_lr="-1"
    )


@pytest.mark.parametrize(
    "name",
    ["train_batch_size", "regenerate_concurrency", "regenerate_max_tokens", "serve_replicas", "eval_max_new_tokens"],
)
def test_counts_that_must_be_positive_refuse_zero(name):
    assert f"--{name.replace('_', '-')} = 0 is not allowed: expected an integer ≥ 1" in problems(**{name: 0})


def test_k_must_be_at_least_one():
    assert "--num-draft-tokens = 0 is not allowed: expected an integer ≥ 1, e.g. 3" in problems(num_draft_tokens=0)


def test_k_above_the_medusa_head_count_is_refused_with_the_fix():
    message = problems(num_draft_tokens=5)  # default modes train medusa with 3 heads
    assert "3 Medusa heads draft 3 tokens" in message and '"medusa_num_heads": 5' in message
    parameters.validate({"num_draft_tokens": 5, "train_options": {"medusa_num_heads": 5}}, PARAMETERS, where="x")
    parameters.validate({"num_draft_tokens": 5, "modes": ["eagle3"]}, PARAMETERS, where="x")  # no Medusa: fine


def test_dflash_blocks_bound_k_and_divide_the_training_length():
    message = problems(modes=["dflash"], num_draft_tokens=4)  # default blocks of 4: 3 drafts
    assert "a DFlash block of 4 drafts 3 tokens" in message and '"dflash_block_size": 5' in message
    assert "--train-max-length = 250 is not a multiple of the DFlash block size 4: expected e.g. 252" in problems(
        modes=["dflash"], train_max_length=250
    )
    parameters.validate(
        {"modes": ["dflash"], "num_draft_tokens": 7, "train_options": {"dflash_block_size": 8}}, PARAMETERS, where="x"
    )


@pytest.mark.parametrize("text,expected", [("true", True), ("False", False), ("1", True), ("no", False)])
def test_booleans_are_parsed_by_one_strict_parser(text, expected):
    assert parameters.validate({"eval_vllm_crosscheck": text}, PARAMETERS, where="x") == {
        "eval_vllm_crosscheck": expected
    }
    assert configs.coerce(bool, text) is expected


def test_a_boolean_typo_is_an_error_in_run_and_in_step_alike():
    assert "--eval-vllm-crosscheck = 'ture' is not allowed: expected true or false" in problems(
        eval_vllm_crosscheck="ture"
    )
    with pytest.raises(SpectrainError, match="expects bool, got 'ture'"):
        configs.from_dict(parameters.TrainHeadsConfig, {"data": "x", "hidden_state_cache": "ture"})


def test_a_malformed_url_is_refused():
    message = problems(serve_mode="external", serve_endpoint_url="localhost:8000")
    assert "--serve-endpoint-url = 'localhost:8000' is not allowed" in message and "http/https URL" in message


def test_external_serving_needs_an_endpoint():
    assert "--serve-mode = 'external' needs the URL" in problems(serve_mode="external")


def test_an_unknown_serve_mode_is_refused():
    assert "expected one of local, external, cluster" in problems(serve_mode="k8s")


def test_an_s3_location_needs_credentials(monkeypatch, tmp_path):
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("AWS_SHARED_CREDENTIALS_FILE", raising=False)
    monkeypatch.delenv("AWS_CONFIG_FILE", raising=False)
    assert "no S3 credentials are configured" in problems(dataset="s3://chats/daily/")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    parameters.validate({"dataset": "s3://chats/daily/", "checkpoint_root": "s3://ckpt/x/"}, PARAMETERS, where="x")


def test_a_malformed_s3_location_is_refused():
    assert "is not s3://bucket/key" in problems(checkpoint_root="s3://")


def test_options_keys_are_fields_of_the_step_and_their_values_follow_its_rules():
    message = problems(
        train_options={"medusa_num_hedas": 4, "training_arguments": {"warmup_step": 5, "learning_rate": 1.0}},
        regenerate_options={"top_p": 2},
    )
    assert "unknown key 'medusa_num_hedas'" in message and "medusa_num_heads" in message
    # TrainingArguments' own fields, read from the transformers the train image pins (orchestrate carries it too)
    assert "learning_rate is set from lr" in message
    problem = problems(train_options={"training_arguments": {"warmup_step": 5}})
    assert "not a field of transformers.TrainingArguments: 'warmup_step' (did you mean 'warmup_steps'?)" in problem
    assert "--regenerate-options: top_p = 2" in message and "from 0.0 to 1.0" in message


def test_a_missing_base_model_folder_is_refused():
    assert "no such directory: /no/such/model" in problems(base_model="/no/such/model")


def test_a_local_model_folder_needs_a_config(tmp_path):
    assert "has no config.json" in problems(base_model=str(tmp_path))


def test_a_cluster_submission_skips_local_paths_and_credentials():
    with checks.for_cluster():  # /models/... lives on the cluster's model-cache PVC
        parameters.validate({"base_model": "/models/llama", "dataset": "s3://chats/"}, PARAMETERS, where="p.yaml")
        with pytest.raises(SpectrainError, match="--train-lr = -0.1"):  # domains still apply
            parameters.validate({"train_lr": -0.1}, PARAMETERS, where="p.yaml")


def test_the_dropped_eagle1_mode_is_refused_with_its_reason(tmp_path):
    result = spectrain("run", "--workdir", str(tmp_path), "--modes", "eagle1,medusa")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "EAGLE-1 was dropped" in result.stderr and "fc layer" in result.stderr and "use eagle3" in result.stderr
    result = spectrain("step", "train-heads", "--data", "embedded", "--mode", "eagle1")
    assert result.returncode == 2 and "train_heads.mode = 'eagle1' is not allowed (EAGLE-1 was dropped" in result.stderr


def test_spectrain_step_uses_the_same_rules(tmp_path):
    result = spectrain("step", "export", "--checkpoint", str(tmp_path), "--mode", "eagle2")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "export.mode = 'eagle2' is not allowed: expected one of eagle3, medusa" in result.stderr
    result = spectrain("step", "evaluate", "--checkpoint", str(tmp_path / "missing"), "--num-draft-tokens", "0")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "evaluate.checkpoint" in result.stderr and "no such directory" in result.stderr
    assert "evaluate.num_draft_tokens = 0" in result.stderr
