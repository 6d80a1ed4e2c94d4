"""A SIGKILLed `fishflow run` leaves no Prefect server behind (its ephemeral API server)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fishflow.testing.emulator import Emulator, EmulatorConfig
from fishflow.watchdog import _descendants, _processes, _stat
from tests.unit.test_watchdog import gone_within

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_a_sigkilled_run_leaves_no_prefect_server(tmp_path: Path) -> None:
    source = tmp_path / "c.csv"
    source.write_text("id,text\n" + "".join(f"i{i},Item {i} says a thing.\n" for i in range(5)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "0"}
    with Emulator(EmulatorConfig(service_time_s=5.0)) as emu:  # slow: the run is still going
        cli = subprocess.Popen(
            [sys.executable, "-m", "fishflow.cli", "run", str(source), "--out",
             str(tmp_path / "out"), "--server", emu.url, "--quiet"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # as a shell starts it: a job of its own
        )  # fmt: skip
        children: dict[int, int] = {}
        try:
            deadline = time.monotonic() + 120
            # Prefect starts its ephemeral API server (uvicorn) as the flow starts.
            while not any("uvicorn" in _cmdline(p) for p in children):
                assert cli.poll() is None and time.monotonic() < deadline, "no server started"
                children = _descendants(cli.pid, _processes())
                time.sleep(0.05)
            cli.send_signal(signal.SIGKILL)
            cli.wait()
            survivors = [
                _cmdline(p) for p, start in children.items() if not gone_within(p, start, 15.0)
            ]
            assert not survivors
        finally:
            cli.kill()
            for pid, start in children.items():  # a failing run of this test cleans up
                if (stat := _stat(pid)) is not None and stat[2] == start:
                    os.kill(pid, signal.SIGKILL)
