"""`make bench`: fishflow against serial emulated servers with a fixed service time.

Every emulator is its own process with one serial worker. The ideal wall time of a run is the
sum of the service times the servers actually spent (the emulator counts the time its worker
is held: compute plus making the audio) divided by the number of servers. Printed as a table:

- fishflow's wall time against the ideal, with 4 servers and with 1;
- the baseline users start from (asyncio Semaphore + gather, one URL, results in memory);
- per-server utilisation;
- killing one of 4 servers a third of the way in;
- client CPU per chunk against a zero-latency server, with the defaults (loudness, captions)
  and without them;
- peak RSS of `fishflow run` over 10,000 and 100,000 items (a child process each);
- start-to-exit time of a one-item `fishflow run`.

Sizes come from BENCH_* environment variables (see the constants below).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import ormsgpack
import pyarrow.parquet as pq

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

SERVICE_S = float(os.environ.get("BENCH_SERVICE_S", "0.05"))
CHUNKS_POOL = int(os.environ.get("BENCH_CHUNKS", "2000"))
CHUNKS_ONE = int(os.environ.get("BENCH_CHUNKS_ONE", "1000"))
CHUNKS_CPU = int(os.environ.get("BENCH_CHUNKS_CPU", "2000"))
CPU_RUNS = int(os.environ.get("BENCH_CPU_RUNS", "3"))
RSS_SIZES = [int(n) for n in os.environ.get("BENCH_RSS_ITEMS", "10000,100000").split(",") if n]
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def emulators(n: int, service_s: float, workers: int = 1) -> Iterator[list[subprocess.Popen]]:
    """n emulators, each its own process (so the client's CPU is measured alone)."""
    procs = []
    for _ in range(n):
        port = free_port()
        cmd = [
            str(VENV_BIN / "fishflow"),
            "emulator",
            "--listen",
            f"127.0.0.1:{port}",
            "--service-time",
            str(service_s),
            "--workers",
            str(workers),
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        proc.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
        procs.append(proc)
    for proc in procs:
        for _ in range(200):
            try:
                httpx.get(proc.url + "/v1/health", timeout=1)  # type: ignore[attr-defined]
                break
            except httpx.HTTPError:
                time.sleep(0.05)
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
            p.wait()


def urls(procs: list[subprocess.Popen]) -> list[str]:
    return [p.url for p in procs]  # type: ignore[attr-defined]


def stats(url: str, reset: bool = False) -> dict[str, Any]:
    if reset:
        return httpx.post(url + "/_emulator/reset", timeout=5).json()
    return httpx.get(url + "/_emulator/stats", timeout=5).json()


def service_s(servers: list[str]) -> float:
    return sum(stats(u)["service_s"] for u in servers)


def catalog(path: Path, n: int) -> Path:
    """n one-chunk items with distinct texts (no reuse: every chunk costs a generation)."""
    with path.open("w") as fh:
        for i in range(n):
            text = f"Product {i} is a sturdy thing, made to last."
            fh.write(json.dumps({"id": f"item-{i:06d}", "language": "en", "text": text}) + "\n")
    return path


def run_fishflow(
    source: Path, out: Path, servers: list[str], *, force: bool = True, **settings: Any
) -> dict[str, Any]:
    """The catalog flow in this process (`force` by default: benchmarks measure synthesis)."""
    from fishflow.flows.refresh_catalog_audio import refresh_catalog_audio
    from fishflow.record import RunSummary
    from fishflow.settings import RunSettings

    user, system = cpu_user_system()
    summary = asyncio.run(
        refresh_catalog_audio(
            source=str(source),
            out=str(out),
            servers=servers,
            settings=RunSettings(**settings),
            force=force,
        )
    )
    after = cpu_user_system()
    # A run that ends Failed raises in a direct call: what comes back is the summary.
    assert isinstance(summary, RunSummary)
    chunks = max(1, summary.ok)
    # ms of this process's CPU per item (one chunk each in these catalogs), user and system
    cpu = ((after[0] - user) / chunks * 1000, (after[1] - system) / chunks * 1000)
    return {**summary.model_dump(), "cpu": cpu}


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


def bare_requests(url: str, texts: list[str]) -> None:
    """The baseline client's requests, 4 at a time: httpx's own cost per request."""
    asyncio.run(baseline(url, texts, concurrency=4))


def cpu_user_system() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def cpu_ms_each(count: int, work: Callable[[], object]) -> float:
    """This process's CPU (user + system) for `work`, in ms per one of its `count` pieces."""
    before = sum(cpu_user_system())
    work()
    return (sum(cpu_user_system()) - before) / count * 1000


def plain_write(folder: Path, files: int, size: int) -> None:
    """Write `files` files of `size` bytes the plainest way (temp + rename).

    The kernel's share of that differs a lot from one moment to the next on this VM (new inodes
    and fresh guest memory), so it is measured next to each fishflow run instead of assumed.
    """
    folder.mkdir()
    data = os.urandom(size)
    for i in range(files):
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
        os.write(fd, data)
        os.close(fd)
        os.replace(tmp, folder / f"item-{i:06d}.wav")


def measured(
    rows: list[tuple[str, str]], name: str, servers: list[str], run: Any
) -> tuple[float, float]:
    for u in servers:
        stats(u, reset=True)
    wall = run()
    ideal = service_s(servers) / len(servers)
    rows.append((name, f"ideal {ideal:.2f} s, wall {wall:.2f} s, ratio {wall / ideal:.3f}"))
    return wall, ideal


def peak_rss_mb(items: int, tmpd: Path, server_urls: list[str]) -> tuple[float, float]:
    """Peak RSS (MB) and wall time of `fishflow run` over `items` items, in a child process."""
    source = catalog(tmpd / f"rss-{items}.jsonl", items)
    script = (
        "import resource, subprocess, sys; "
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    cmd = [
        sys.executable,
        "-c",
        script,
        str(VENV_BIN / "fishflow"),
        "run",
        str(source),
        "--out",
        str(tmpd / f"rss-{items}"),
        "--quiet",
        "--max-in-flight",
        "4",
        "--force",
        *(a for u in server_urls for a in ("--server", u)),
    ]
    started = time.monotonic()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return int(out.strip().splitlines()[-1]) / 1024, time.monotonic() - started


def main() -> int:
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="fishflow-bench-") as tmp:
        tmpd = Path(tmp)
        source = catalog(tmpd / "pool.jsonl", CHUNKS_POOL)
        texts = [json.loads(line)["text"] for line in source.read_text().splitlines()]

        with emulators(4, SERVICE_S) as procs:
            servers = urls(procs)
            run_fishflow(catalog(tmpd / "warm.jsonl", 8), tmpd / "warm", servers)  # Prefect up
            summary: dict[str, Any] = {}

            def pool_run() -> float:
                summary.update(run_fishflow(source, tmpd / "o4", servers))
                return summary["wall_seconds"]

            wall4, _ = measured(
                rows, f"fishflow, 4 servers, {CHUNKS_POOL} chunks", servers, pool_run
            )
            util = ", ".join(f"{v:.0%}" for v in summary["utilisation"].values())
            rows.append(("per-server utilisation (fishflow, 4 servers)", util))
            base_wall, _ = measured(
                rows,
                f"baseline: Semaphore(8) + gather, one URL, {CHUNKS_POOL} chunks",
                servers,
                lambda: asyncio.run(baseline(servers[0], texts)),
            )
            rows.append(("fishflow speed-up over the baseline", f"{base_wall / wall4:.2f}x"))

        with emulators(4, SERVICE_S) as procs:
            servers = urls(procs)
            for u in servers:
                stats(u, reset=True)
            at_kill: dict[str, float] = {}

            def kill_first() -> None:
                at_kill["t"] = time.monotonic()
                at_kill["service"] = service_s(servers)
                at_kill["victim"] = stats(servers[0])["service_s"]
                procs[0].kill()

            started = time.monotonic()
            timer = threading.Timer(CHUNKS_POOL * SERVICE_S / 4 / 3, kill_first)
            timer.start()
            result = run_fishflow(source, tmpd / "kill", servers)
            wall = time.monotonic() - started
            total = at_kill["victim"] + service_s(servers[1:])
            elapsed_at_kill = at_kill["t"] - started
            ideal_rest = (total - at_kill["service"]) / 3
            ratio = (wall - elapsed_at_kill) / ideal_rest
            rows.append(
                (
                    "kill 1 of 4 servers a third in: remainder vs 3-server ideal",
                    f"{result['ok']}/{CHUNKS_POOL} ok, remainder {wall - elapsed_at_kill:.2f} s, "
                    f"ideal {ideal_rest:.2f} s, ratio {ratio:.3f}",
                )
            )

        one_source = catalog(tmpd / "one.jsonl", CHUNKS_ONE)
        with emulators(1, SERVICE_S) as procs:
            servers = urls(procs)
            measured(
                rows,
                f"fishflow, 1 server, {CHUNKS_ONE} chunks",
                servers,
                lambda: run_fishflow(one_source, tmpd / "o1", servers)["wall_seconds"],
            )

        cpu_source = catalog(tmpd / "cpu.jsonl", CHUNKS_CPU)
        with emulators(1, 0.0, workers=4) as procs:
            servers = urls(procs)
            cpu_texts = [json.loads(line)["text"] for line in cpu_source.read_text().splitlines()]
            runs, floors, bare, plain = [], [], [], []
            for i in range(CPU_RUNS):
                summary = run_fishflow(cpu_source, tmpd / f"cpu-{i}", servers, max_in_flight=4)
                runs.append(summary["cpu"])
                # The defaults write three files per item (audio, .vtt, .srt) and measure and
                # even its loudness: what the same run costs without them.
                plain.append(
                    run_fishflow(cpu_source, tmpd / f"cpu-plain-{i}", servers, max_in_flight=4,
                                 loudness="off", captions="off", chapters="off")["cpu"]
                )  # fmt: skip
                size = int(pq.read_table(summary["manifests"]["items"])["bytes"].to_numpy().mean())
                write = functools.partial(plain_write, tmpd / f"floor-{i}", CHUNKS_CPU, size)
                floors.append(cpu_ms_each(CHUNKS_CPU, write))
                requests = functools.partial(bare_requests, servers[0], cpu_texts)
                bare.append(cpu_ms_each(CHUNKS_CPU, requests))
            user, system = sorted(runs, key=sum)[len(runs) // 2]
            rows.append(
                (
                    f"client CPU per chunk, zero-latency server, {CHUNKS_CPU} chunks",
                    f"{user + system:.2f} ms (user {user:.2f} + system {system:.2f}; median of "
                    f"{CPU_RUNS} runs: {', '.join(f'{sum(r):.2f}' for r in runs)})",
                )
            )
            rows.append(
                (
                    "  the same without loudness and captions (audio file only)",
                    f"{statistics.median(map(sum, plain)):.2f} ms "
                    f"({', '.join(f'{sum(r):.2f}' for r in plain)})",
                )
            )
            rows.append(
                (
                    "  the same files written by a plain loop (temp + rename), same disk",
                    f"{statistics.median(floors):.2f} ms per file "
                    f"({', '.join(f'{f:.2f}' for f in floors)})",
                )
            )
            rows.append(
                (
                    "  the baseline client's requests alone (httpx post, no decoding, no files)",
                    f"{statistics.median(bare):.2f} ms per request "
                    f"({', '.join(f'{b:.2f}' for b in bare)})",
                )
            )

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
                    servers[0],
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

        with emulators(4, 0.0, workers=4) as procs:
            for items in RSS_SIZES:
                rss, wall = peak_rss_mb(items, tmpd, urls(procs))
                rows.append(
                    (
                        f"peak RSS, `fishflow run` over {items:,} items",
                        f"{rss:.0f} MB (wall {wall:.0f} s)",
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
