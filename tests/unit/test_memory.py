"""One malloc arena for a run's threads (fishflow.memory), read back from glibc itself
(Linux, as the project runs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# Threads that allocate chunk-sized buffers, then glibc's own account of its arenas
# (malloc_info lists one <heap> per arena).
_PROGRAM = """
import ctypes, sys, threading
import numpy as np
from fishflow.memory import use_one_arena

if sys.argv[1] == "one":
    use_one_arena()

def work():
    for _ in range(20):
        np.ones(200_000, np.int16).sum()

threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
libc = ctypes.CDLL("libc.so.6")
libc.fopen.restype = ctypes.c_void_p
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
stream = libc.fopen(sys.argv[2].encode(), b"w")
libc.malloc_info(0, stream)
libc.fclose(stream)
"""


def _arenas(tmp_path: Path, mode: str) -> int:
    report = tmp_path / f"malloc-{mode}.xml"
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}  # glibc's defaults
    subprocess.run(
        [sys.executable, "-c", _PROGRAM, mode, str(report)], check=True, timeout=60, env=env
    )
    return report.read_text().count("<heap nr=")


def test_a_run_allocates_from_one_arena_whatever_its_threads(tmp_path: Path) -> None:
    assert _arenas(tmp_path, "default") > 1  # glibc's default: an arena per thread
    assert _arenas(tmp_path, "one") == 1
