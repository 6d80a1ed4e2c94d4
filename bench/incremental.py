"""Second-run cost and Prefect task-run cost, as quoted in the README.

- A 10,000-item catalog run twice against a zero-latency emulator: the second run must make no
  synthesis request; its wall time is compared with the first's.
- The same 2,000 items with one Prefect task run per item (batch_size=1) and per 100 items.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.run import catalog, emulators, run_fishflow, urls

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
ITEMS = int(os.environ.get("BENCH_INCREMENTAL_ITEMS", "10000"))


def main() -> int:
    with (
        tempfile.TemporaryDirectory(prefix="fishflow-bench-") as tmp,
        emulators(1, 0.0, workers=4) as procs,
    ):
        tmpd = Path(tmp)
        servers = urls(procs)
        run_fishflow(catalog(tmpd / "warm.jsonl", 5), tmpd / "warm", servers)
        source = catalog(tmpd / "c.jsonl", ITEMS)
        started = time.monotonic()
        first = run_fishflow(source, tmpd / "out", servers, force=False, max_in_flight=4)
        first_s = time.monotonic() - started
        before = httpx.get(servers[0] + "/_emulator/stats").json()["requests"]
        started = time.monotonic()
        second = run_fishflow(source, tmpd / "out", servers, force=False, max_in_flight=4)
        second_s = time.monotonic() - started
        requests = httpx.get(servers[0] + "/_emulator/stats").json()["requests"] - before
        print(f"| first run, {ITEMS:,} items | {first['ok']} ok, {first_s:.1f} s |")
        print(
            f"| second run, unchanged | {second['skipped']} skipped, {requests} requests, "
            f"{second_s:.1f} s ({second_s / first_s:.1%} of the first) |"
        )

        small = catalog(tmpd / "s.jsonl", 2000)
        for batch in (1, 250):
            t0 = time.monotonic()
            summary = run_fishflow(
                small, tmpd / f"b{batch}", servers, max_in_flight=4, batch_size=batch
            )
            wall, cpu_ms = time.monotonic() - t0, sum(summary["cpu"])
            print(
                f"| 2,000 items, one task run per {batch} item(s) | wall {wall:.1f} s, "
                f"client CPU {cpu_ms:.2f} ms per item |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
