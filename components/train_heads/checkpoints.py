"""Resumable training on S3: every checkpoint the Trainer saves copied to ``checkpoint_uri``, and the newest one
brought back before a restarted run resumes."""

from __future__ import annotations

from pathlib import Path

import transformers
from transformers.trainer_utils import get_last_checkpoint

from spectrain import s3


class CheckpointsToS3(transformers.TrainerCallback):
    """Copy every checkpoint the Trainer saves to ``uri`` (rank 0; the COMPLETE marker goes last)."""

    def __init__(self, uri: str):
        self.uri = uri

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            print(f"[train] copied {folder.name} to {s3.upload_checkpoint(folder, self.uri)}", flush=True)
        return control


def restore_from_s3(uri: str, output_dir: Path) -> None:
    """Bring the newest complete checkpoint under ``uri`` into ``output_dir`` unless a newer one is there."""
    remote = s3.latest_checkpoint(uri)
    local = get_last_checkpoint(str(output_dir))
    if remote and (local is None or remote[0] > int(local.rsplit("-", 1)[1])):
        s3.download(remote[1], output_dir / f"checkpoint-{remote[0]}")
        print(f"[train] restored checkpoint-{remote[0]} from {remote[1]}", flush=True)
