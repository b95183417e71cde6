"""Resume: training killed mid-run continues from its last checkpoint to the same final step count."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest


@pytest.mark.slow
def test_killed_training_resumes_from_the_last_checkpoint(tiny_data, tmp_path):
    output = tmp_path / "checkpoint"
    command = [sys.executable, "-m", "spectrain", "step", "train-heads", "--data", tiny_data, "--mode", "medusa",
               "--output-dir", str(output), "--max-steps", "6", "--save-steps", "2", "--batch-size", "2",
               "--max-length", "64", "--medusa-num-heads", "2", "--resume-from-checkpoint", "auto",
               "--result", str(tmp_path / "result.json")]
    first = subprocess.Popen(command, start_new_session=True)
    deadline = time.monotonic() + 600
    while not (output / "checkpoint-2" / "trainer_state.json").exists():
        assert first.poll() is None, "training ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)  # a crash, not a clean stop
    first.wait()
    assert not (output / "checkpoint-6").exists()

    second = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "[train] resuming from" in second.stdout
    result = json.loads((tmp_path / "result.json").read_text())
    resumed_at = int(result["resumed_from"].rsplit("-", 1)[1])
    assert resumed_at >= 2 and result["steps"] == 6
    assert result["steps_this_run"] == 6 - resumed_at, "the resumed run did not continue where it stopped"
