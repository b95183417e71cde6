"""Two-rank runs on gloo, with the one retry gloo's known abort deserves.

gloo can abort a rank while its ranks connect: an exception thrown on one of its own threads while it reads the
peer's address (gloo::transport::tcp::Address::fromPeerName) reaches std::terminate, and the rank dies with
SIGABRT and "terminate called without an active exception" before any spectrain code has run a step (open
upstream: pytorch/pytorch#188266, pytorch/gloo#514). Seen once in a loaded suite run of the FSDP2 test. A run
that fails that way is run once more, and says so; any other failure, or the same one twice, fails the test.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

GLOO_ABORT = "terminate called without an active exception"


def run_ranks(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    """subprocess.run(command, capture_output=True, text=True, **kwargs), retried once on gloo's abort."""
    completed = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if completed.returncode != 0 and GLOO_ABORT in completed.stderr and "SIGABRT" in completed.stderr:
        print(f"gloo aborted a rank while connecting ({GLOO_ABORT}); running once more", file=sys.stderr)
        completed = subprocess.run(command, capture_output=True, text=True, **kwargs)
    return completed
