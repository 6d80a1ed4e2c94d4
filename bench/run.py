"""`make bench`: fishflow against serial emulated servers with a fixed service time.

Prints a table: ideal wall time (sum of service times / servers), fishflow's wall time and the
ratio, the same for the baseline client users start from (asyncio Semaphore + gather against one
URL, results kept in memory), per-server utilisation, client CPU per chunk against a zero-latency
server, and the start-to-exit time of a one-item `fishflow run`.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import ormsgpack

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

SERVICE_S = float(os.environ.get("BENCH_SERVICE_S", "0.05"))
CHUNKS_POOL = int(os.environ.get("BENCH_CHUNKS", "2000"))
CHUNKS_ONE = int(os.environ.get("BENCH_CHUNKS_ONE", "500"))
CHUNKS_CPU = int(os.environ.get("BENCH_CHUNKS_CPU", "1000"))
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def emulators(n: int, service_s: float) -> Iterator[list[str]]:
    """n serial emulators, each its own process (so the client's CPU is measured alone)."""
    procs, urls = [], []
    for _ in range(n):
        port = free_port()
        procs.append(
            subprocess.Popen(
                [
                    str(VENV_BIN / "fishflow"),
                    "emulator",
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--service-time",
                    str(service_s),
                ],
                stdout=subprocess.DEVNULL,
            )
        )
        urls.append(f"http://127.0.0.1:{port}")
    for url in urls:
        for _ in range(200):
            try:
                httpx.get(url + "/v1/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
    try:
        yield urls
    finally:
        for p in procs:
            p.terminate()
            p.wait()


def catalog(path: Path, n: int) -> Path:
    """n one-chunk items with distinct texts (no reuse: every chunk costs a generation)."""
    with path.open("w") as fh:
        for i in range(n):
            fh.write(
                json.dumps(
                    {
                        "id": f"item-{i:06d}",
                        "language": "en",
                        "text": f"Product {i} is a sturdy thing, made to last.",
                    }
                )
                + "\n"
            )
    return path


def run_fishflow(source: Path, out: Path, servers: list[str], **settings) -> dict:
    from fishflow.settings import RunSettings
    from flows.refresh_catalog_audio import refresh_catalog_audio

    return asyncio.run(
        refresh_catalog_audio(
            source=str(source),
            out=str(out),
            servers=servers,
            settings=RunSettings(**settings),
            force=True,
        )
    )


async def baseline(url: str, texts: list[str], concurrency: int = 8) -> float:
    """What users write first: one URL, a Semaphore, gather, everything in memory."""
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=600) as client:

        async def one(text: str) -> bytes:
            async with sem:
                r = await client.post(
                    url + "/v1/tts",
                    content=ormsgpack.packb({"text": text}),
                    headers={"content-type": "application/msgpack"},
                )
                r.raise_for_status()
                return r.content

        started = time.monotonic()
        results = await asyncio.gather(*(one(t) for t in texts))
        assert len(results) == len(texts)
        return time.monotonic() - started


def cpu_split() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="fishflow-bench-") as tmp:
        tmpd = Path(tmp)
        source = catalog(tmpd / "pool.jsonl", CHUNKS_POOL)
        texts = [json.loads(line)["text"] for line in source.read_text().splitlines()]

        with emulators(4, SERVICE_S) as urls:
            ideal = CHUNKS_POOL * SERVICE_S / 4
            summary = run_fishflow(source, tmpd / "o4", urls)
            wall = summary["wall_seconds"]
            rows.append(
                (
                    f"fishflow, 4 servers, {CHUNKS_POOL} chunks",
                    f"ideal {ideal:.1f} s, wall {wall:.1f} s, ratio {wall / ideal:.3f}",
                )
            )
            util = ", ".join(f"{v:.0%}" for v in summary["utilisation"].values())
            rows.append(("per-server utilisation (4 servers)", util))
            base = asyncio.run(baseline(urls[0], texts))
            rows.append(
                (
                    f"baseline (Semaphore(8)+gather, one URL), {CHUNKS_POOL} chunks",
                    f"wall {base:.1f} s, ratio {base / ideal:.3f}; fishflow is {base / wall:.2f}x faster",
                )
            )

        one_source = catalog(tmpd / "one.jsonl", CHUNKS_ONE)
        with emulators(1, SERVICE_S) as urls:
            ideal = CHUNKS_ONE * SERVICE_S
            wall = run_fishflow(one_source, tmpd / "o1", urls)["wall_seconds"]
            rows.append(
                (
                    f"fishflow, 1 server, {CHUNKS_ONE} chunks",
                    f"ideal {ideal:.1f} s, wall {wall:.1f} s, ratio {wall / ideal:.3f}",
                )
            )

        cpu_source = catalog(tmpd / "cpu.jsonl", CHUNKS_CPU)
        with emulators(4, 0.0) as urls:
            run_fishflow(catalog(tmpd / "warm.jsonl", 20), tmpd / "warm", urls)  # Prefect started
            before = cpu_s()
            summary = run_fishflow(cpu_source, tmpd / "cpu", urls, max_in_flight=4)
            per_chunk = (cpu_s() - before) / CHUNKS_CPU * 1000
            rows.append(
                (
                    f"client CPU per chunk, zero-latency servers, {CHUNKS_CPU} chunks",
                    f"{per_chunk:.2f} ms (wall {summary['wall_seconds']:.1f} s)",
                )
            )
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            rows.append(("peak RSS of this bench process", f"{peak:.0f} MB"))

            single = catalog(tmpd / "single.jsonl", 1)
            started = time.monotonic()
            subprocess.run(
                [
                    str(VENV_BIN / "fishflow"),
                    "run",
                    str(single),
                    "--out",
                    str(tmpd / "single"),
                    "--server",
                    urls[0],
                    "--quiet",
                ],
                check=True,
                capture_output=True,
            )
            rows.append(
                (
                    "one-item `fishflow run`, start to exit (ephemeral Prefect)",
                    f"{time.monotonic() - started:.1f} s",
                )
            )

    width = max(len(r[0]) for r in rows)
    print(f"\nservice time {SERVICE_S * 1000:.0f} ms per request, serial emulators\n")
    print(f"| {'measure'.ljust(width)} | result |\n|{'-' * (width + 2)}|--------|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
