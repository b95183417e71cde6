"""Process trees as `spectrain run` and the serve step see them (psutil): what Ctrl-C and stop-server rely on."""

import subprocess
import time

import psutil

from spectrain.processes import descendants
from spectrain.vllm import alive, terminate


def wait_for(condition, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return value


def test_descendants_are_listed_parents_first_and_an_exited_child_is_not_among_them():
    shell = subprocess.Popen(["bash", "-c", "sleep 60 & sleep 60 & wait"])
    exited = subprocess.Popen(["true"])
    try:
        below = wait_for(lambda: len(descendants(shell.pid)) == 2 and descendants(shell.pid))
        assert all(psutil.Process(pid).ppid() == shell.pid for pid in below)
        tree = descendants()
        assert all(tree.index(shell.pid) < tree.index(pid) for pid in below)  # parents before children
        wait_for(lambda: psutil.Process(exited.pid).status() == psutil.STATUS_ZOMBIE)
        assert exited.pid not in descendants() and not alive(exited.pid)  # exited, not yet reaped: nothing to stop
    finally:
        exited.wait()
        for pid in [*descendants(shell.pid), shell.pid]:
            psutil.Process(pid).kill()
        shell.wait()


def test_terminate_stops_a_server_and_the_children_of_its_session():
    server = subprocess.Popen(["bash", "-c", "sleep 60 & sleep 60 & wait"], start_new_session=True)
    children = wait_for(lambda: len(descendants(server.pid)) == 2 and descendants(server.pid))
    assert alive(server.pid)
    terminate(server.pid, grace_s=5)
    assert not alive(server.pid) and not any(alive(pid) for pid in children)
