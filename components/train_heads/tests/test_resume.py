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
        return [sys.executable, "-m", "spectrain", "step", "train-heads", "--data", tiny_data, "--mode", "medusa",
                "--output-dir", str(output_dir), "--max-steps", "6", "--save-steps", "2", "--batch-size", "2",
                "--max-length", "64", "--medusa-num-heads", "2", "--resume-from-checkpoint", "auto",
                "--checkpoint-uri", uri, "--result", str(tmp_path / "result.json")]

    first = subprocess.Popen(command(output), start_new_session=True)
    deadline = time.monotonic() + 600
    while s3.latest_checkpoint(uri) is None:
        assert first.poll() is None, "training ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)  # a crash, not a clean stop
    first.wait()
    assert not (output / "checkpoint-6").exists()
    on_s3, _ = s3.latest_checkpoint(uri)

    second = subprocess.run(command(tmp_path / "pod2"), capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"[train] restored checkpoint-{on_s3} from {uri}checkpoint-{on_s3}/" in second.stdout
    result = json.loads((tmp_path / "result.json").read_text())
    resumed_at = int(result["resumed_from"].rsplit("-", 1)[1])
    assert resumed_at == on_s3 >= 2 and result["steps"] == 6
    assert result["steps_this_run"] == 6 - resumed_at, "the resumed run did not continue where it stopped"
    assert s3.latest_checkpoint(uri)[0] == 6  # the second pod's checkpoints went up too
