"""A process started by a fishflow command does not outlive it, even when it is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from fishflow.watchdog import _stat

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

PARENT = """
import subprocess, sys, time
from fishflow.watchdog import guard_children
guard_children()
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(child.pid, flush=True)
time.sleep(120)
"""


def gone_within(pid: int, start: int, deadline_s: float) -> bool:
    """Whether process `pid` (the one that started at `start`) ends before the deadline."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        stat = _stat(pid)
        if stat is None or stat[2] != start or _state(pid) == "Z":
            return True
        time.sleep(0.05)
    return False


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return "gone"
    return data[data.rfind(b")") + 2 :].split()[0].decode()


def test_children_of_a_sigkilled_process_are_stopped() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # as a shell starts a job: it leads its process group
    )
    child = 0
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        stat = _stat(child)
        assert stat is not None and stat[0] == parent.pid
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert gone_within(child, stat[2], 10.0)
    finally:
        parent.kill()
        if child and _stat(child) is not None:
            os.kill(child, signal.SIGKILL)
