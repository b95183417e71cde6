"""Every process a command started, found and stopped: what keeps `spectrain run` from leaving servers behind.

A vLLM server is started in its own session so that it outlives the serve step; once that step's
process exits, the server would belong to init and no longer to the run. As a child subreaper
(Linux prctl) `spectrain run` stays the ancestor of everything started below it, so the process
tree under it is exactly what it started, servers included.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time

import psutil

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make orphaned descendants re-parent to this process instead of init (Linux); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def descendants(pid: int | None = None) -> list[int]:
    """Living processes below ``pid`` (default: this one), parents before children; zombies (exited, waiting to be
    reaped) left out: there is nothing to stop."""
    try:
        below = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [child.pid for child in below if _running(child)]


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:  # gone meanwhile
        return False


def stop_descendants(grace_s: float = 15.0) -> list[int]:
    """SIGTERM every descendant, SIGKILL what is left after ``grace_s``, reap them; return the pids found."""
    found = descendants()
    for pid in found:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(pid in set(descendants()) for pid in found):
        _reap()
        time.sleep(0.2)
    for pid in descendants():  # what ignored SIGTERM, and anything started meanwhile
        _signal(pid, signal.SIGKILL)
    time.sleep(0.1)
    _reap()
    return found


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _reap() -> None:
    """Collect exited children (our own, and orphans re-parented to us as subreaper)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
