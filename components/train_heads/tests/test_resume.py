"""Resume: training killed mid-run continues from its last checkpoint to the same final step count.

The second run has an empty output_dir, as a retried KFP step (a new pod) has: it resumes from the
checkpoints the first copied to S3 (a real S3 HTTP endpoint on loopback, moto server).
"""

import json
import os
import signal
import subprocess
import sys
import time

import boto3
import pytest

from spectrain import s3


@pytest.mark.slow
def test_killed_training_resumes_from_the_last_checkpoint_on_s3(tiny_data, tmp_path, s3_endpoint):
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="ckpt")
    uri = "s3://ckpt/runs/run-1/train/medusa/"
    output = tmp_path / "pod1"

    def command(output_dir):
        return [
            sys.executable,
            "-m",
            "spectrain.cli",
            "step",
            "train-heads",
            "--data",
            tiny_data,
            "--mode",
            "medusa",
            "--output-dir",
            str(output_dir),
            "--max-steps",
            "6",
            "--training-arguments",
            '{"save_steps": 2}',
            "--batch-size",
            "2",
            "--max-length",
            "64",
            "--medusa-num-heads",
            "2",
            "--resume-from-checkpoint",
            "auto",
            "--checkpoint-uri",
            uri,
            "--result",
            str(tmp_path / "result.json"),
        ]

    first = subprocess.Popen(command(output), start_new_session=True)
    deadline = time.monotonic() + 600
    while s3.latest_checkpoint(uri) is None:
        assert first.poll() is None, "training ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)  # a crash, not a clean stop
    first.wait()
    assert not (output / "checkpoint-6").exists()
    on_s3, folder = s3.latest_checkpoint(uri)
    uploaded = {o["key"].rsplit("/", 1)[-1] for o in s3.list_objects(folder)}
    assert {"draft_weights.safetensors", "optimizer.pt", "trainer_state.json", "COMPLETE"} <= uploaded
    assert "model.safetensors" not in uploaded  # the frozen base stays out of every checkpoint

    second = subprocess.run(command(tmp_path / "pod2"), capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"[train] restored checkpoint-{on_s3} from {uri}checkpoint-{on_s3}/" in second.stdout
    result = json.loads((tmp_path / "result.json").read_text())
    resumed_at = int(result["resumed_from"].rsplit("-", 1)[1])
    assert resumed_at == on_s3 >= 2 and result["steps"] == 6
    assert result["steps_this_run"] == 6 - resumed_at, "the resumed run did not continue where it stopped"
    assert s3.latest_checkpoint(uri)[0] == 6  # the second pod's checkpoints went up too


@pytest.mark.parametrize("mode", ["eagle3", "medusa", "dflash"])
def test_a_checkpoint_holds_the_draft_only_and_resuming_from_it_ends_where_an_unbroken_run_does(
    tiny_data, tmp_path, mode
):
    from safetensors.torch import load_file

    from spectrain.components.train_heads.config import TrainHeadsConfig
    from spectrain.components.train_heads.train import run
    from spectrain.draft_checkpoint import DRAFT_WEIGHTS

    settings = dict(
        data=tiny_data,
        mode=mode,
        max_steps=3,
        batch_size=2,
        max_length=64,
        lr=1e-2,
        training_arguments={"warmup_steps": 0, "save_steps": 1},  # the same schedule for both runs
        **{"medusa": {"medusa_num_heads": 2}, "eagle3": {"draft_vocab_size": 512}, "dflash": {"dflash_block_size": 4}}[
            mode
        ],
    )
    unbroken = tmp_path / "unbroken"
    run(TrainHeadsConfig(output_dir=str(unbroken), **settings))
    checkpoint = unbroken / "checkpoint-1"
    assert not (checkpoint / "model.safetensors").exists(), "the frozen base does not belong in a checkpoint"
    final = load_file(str(unbroken / DRAFT_WEIGHTS))  # the artifact: the draft only
    assert load_file(str(unbroken / "checkpoint-3" / DRAFT_WEIGHTS)).keys() == final.keys()

    resumed = tmp_path / "resumed"
    result = run(TrainHeadsConfig(output_dir=str(resumed), resume_from_checkpoint=str(checkpoint), **settings))
    assert result["steps_this_run"] == 2
    after = load_file(str(resumed / DRAFT_WEIGHTS))
    for name, tensor in final.items():
        assert torch_equal(after[name], tensor), f"{name} differs after resuming"


def torch_equal(a, b) -> bool:
    import torch

    return a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=0, atol=1e-6)
