"""`fishflow` with the chunk cache's CPU counted: bench.longform's child process.

``python -m bench.cache_cpu OUT.json run ...`` runs the CLI unchanged, but times (per thread,
``time.thread_time``) every call of the chunk cache's disk work: the raw spill of a chunk when
it is made (``ChunkCache._keep``), reading a chunk back (``read``) and compressing it to FLAC
once used (``compress``). At exit it writes ``{"spill_s", "read_s", "compress_s", "chunks"}`` to
OUT.json. Measured in the run itself, on its own chunks and threads, so that the cache's share
can be told from the rest of the client's work.
"""

from __future__ import annotations

import atexit
import functools
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from fishflow.chunk_cache import ChunkCache

TIMED = {"_keep": "spill_s", "read": "read_s", "compress": "compress_s"}


def _timed(fn: Callable[..., Any], spent: list[float]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            spent.append(time.thread_time() - started)  # list.append: safe across threads

    return wrapper


def main(argv: list[str]) -> int:
    report, args = argv[0], argv[1:]
    spent: dict[str, list[float]] = {label: [] for label in TIMED.values()}
    for name, label in TIMED.items():
        setattr(ChunkCache, name, _timed(getattr(ChunkCache, name), spent[label]))

    def write() -> None:
        result: dict[str, float] = {label: sum(times) for label, times in spent.items()}
        result["chunks"] = len(spent["compress_s"])
        with open(report, "w") as fh:
            json.dump(result, fh)

    atexit.register(write)
    from fishflow.cli import main as cli

    return cli(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
