"""Client CPU per audio second with the answer check on, against off, in one process.

``python -m bench.qa [--items N] [--workers W]``: one emulator in a process of its own (so its
CPU is not counted), then the same catalog run three times by the CLI in this process: a
warm-up (imports, Prefect's temporary API), with ``--qa off``, and with ``--qa on``, each into a
fresh output. For each run: this process's CPU (``time.process_time``) per second of audio
published, and, with the check on, the CPU of ``fishflow.qa.check`` itself (per thread,
``time.thread_time``, around every call). The difference of the two runs is noisy on a shared
machine; the check's own time is the figure to read (goal: <= 0.3 ms per audio second).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

import fishflow.processing
from fishflow.cli import main as cli

PROSE = (
    "the course explains how a small model learns to read and speak while each lesson adds "
    "one idea with an example and a short exercise at the end of every part"
)
WORDS = PROSE.split()


def catalog(path: Path, items: int) -> None:
    rng = random.Random(0)
    rows = []
    for i in range(items):
        sentences = [
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 20))).capitalize() + "."
            for _ in range(rng.randint(2, 5))
        ]
        rows.append({"id": f"lesson-{i:05d}", "text": " ".join(sentences)})
    path.write_text("\n".join(json.dumps(r) for r in rows))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def emulator(workers: int) -> Iterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "fishflow.cli", "emulator", "--listen", f"127.0.0.1:{port}"]
    process = subprocess.Popen([*command, "--workers", str(workers)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}#limit={workers}"
    finally:
        process.terminate()
        process.wait(10)


def timed(fn: Callable[..., Any], spent: list[float]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            spent.append(time.thread_time() - started)

    return wrapper


def one_run(source: Path, out: Path, server: str, qa: str) -> tuple[float, float]:
    """(CPU seconds of this process, audio seconds published) of one run."""
    started = time.process_time()
    code = cli(["run", str(source), "--out", str(out), "--server", server, "--qa", qa, "--quiet"])
    cpu = time.process_time() - started
    if code != 0:
        raise SystemExit(f"run with --qa {qa} exited {code}")
    audio = sum(
        pd.read_parquet(p, columns=["duration_s"])["duration_s"].fillna(0).sum()
        for p in out.glob("manifests/run=*/items.parquet")
    )
    return cpu, float(audio)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1500, help="catalog rows (default 1500)")
    parser.add_argument("--workers", type=int, default=4, help="emulator workers (default 4)")
    args = parser.parse_args(argv)
    spent: list[float] = []
    fishflow.processing.check_answer = timed(fishflow.processing.check_answer, spent)
    with tempfile.TemporaryDirectory(prefix="bench-qa-") as tmp, emulator(args.workers) as url:
        root = Path(tmp)
        catalog(root / "warm.jsonl", 5)
        catalog(root / "catalog.jsonl", args.items)
        one_run(root / "warm.jsonl", root / "warm", url, "on")
        spent.clear()
        results = {}
        for qa in ("off", "on"):
            cpu, audio = one_run(root / "catalog.jsonl", root / f"out-{qa}", url, qa)
            results[qa] = (cpu, audio)
            print(f"--qa {qa}: {cpu:.2f} s CPU for {audio:.0f} s of audio: "
                  f"{1000 * cpu / audio:.3f} ms per audio second")  # fmt: skip
    off = 1000 * results["off"][0] / results["off"][1]
    on = 1000 * results["on"][0] / results["on"][1]
    check_ms = 1000 * sum(spent) / results["on"][1]
    print(
        f"on - off: {on - off:+.3f} ms per audio second (noisy); the check itself: "
        f"{check_ms:.3f} ms per audio second over {len(spent)} answers"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
