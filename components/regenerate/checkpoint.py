"""Finished conversations copied to S3 while the step runs, so a step restarted elsewhere resumes.

On Kubernetes a retried step is a new pod with an empty disk: the local output an interrupted run
left behind is gone. With ``checkpoint_uri`` every finished record is also uploaded, in numbered
parts (``part-000000.jsonl``, ...) at most every ``interval_s`` seconds, and a new run first takes
the parts back. Only new records go up each time, so the cost stays proportional to the work done.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from pathlib import Path

from spectrain import s3
from spectrain.errors import SpectrainError

PART = "part-{:06d}.jsonl"


class S3Checkpoint:
    def __init__(self, uri: str, interval_s: float):
        self.uri = uri.rstrip("/") + "/"
        self.interval_s = interval_s
        self.next_part = 0
        self.pending: list[dict] = []
        self.last_push = time.monotonic()
        self.restored = self.uploaded = 0
        self._lock = threading.Lock()

    def restore(self, output: Path, have: set[str]) -> int:
        """Append to ``output`` the records in the parts whose ids are not in ``have``; returns how many.

        Records only the local output has (written before the checkpoint was set) are queued for upload.
        """
        parts = [o for o in s3.list_objects(self.uri) if o["key"].rsplit("/", 1)[-1].startswith("part-")]
        remote: set[str] = set()
        if parts:
            self.next_part = 1 + max(int(o["key"].rsplit("-", 1)[-1].split(".")[0]) for o in parts)
            with tempfile.TemporaryDirectory() as scratch, open(output, "a", encoding="utf-8") as handle:
                for part in s3.download(self.uri, Path(scratch)):
                    for line in part.read_text(encoding="utf-8").splitlines():
                        record = json.loads(line)
                        remote.add(record["conversation_id"])
                        if record["conversation_id"] not in have:
                            have.add(record["conversation_id"])
                            handle.write(line + "\n")
                            self.restored += 1
                handle.flush()
                os.fsync(handle.fileno())  # once for the lot: restoring 100k records is one write, not 100k
        if have - remote:
            for line in output.read_text(encoding="utf-8").splitlines():
                record = json.loads(line)
                if record["conversation_id"] not in remote:
                    self.pending.append(record)
        return self.restored

    def add(self, record: dict) -> bool:
        """Queue a finished record; True when it is time to push."""
        with self._lock:
            self.pending.append(record)
            return time.monotonic() - self.last_push >= self.interval_s

    def push(self, *, final: bool = False) -> None:
        """Upload the queued records as the next part. A failed upload keeps them queued for the next push
        (the local output has them anyway); only the final push raises."""
        with self._lock:
            records, self.pending = self.pending, []
            index, self.last_push = self.next_part, time.monotonic()
            if records:
                self.next_part += 1
        if not records:
            return
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
        try:
            s3.put_bytes(self.uri + PART.format(index), body)
        except SpectrainError as error:
            with self._lock:
                self.pending = records + self.pending
            if final:
                raise
            print(f"[regenerate] checkpoint upload failed, will retry: {error.what}", flush=True)
            return
        self.uploaded += len(records)

    def summary(self) -> dict:
        return {"uri": self.uri, "restored": self.restored, "uploaded": self.uploaded}
