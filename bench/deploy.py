"""`make bench`, the deployment path: a real Prefect server on PostgreSQL, `fishflow deploy`, one
process worker polling every second (PREFECT_WORKER_QUERY_SECONDS=1), emulators as servers.

- trigger-to-Completed of a one-item run of the manual deployment (median of BENCH_DEPLOY_RUNS);
- two concurrent runs sharing two serial servers through their shared limits: the servers'
  busy span (first generation started to last one ended, over both) against the ideal (the
  service time the servers spent, divided by two).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any
from uuid import UUID

from bench.run import SERVICE_S, catalog, emulators, stats, urls
from tests.deploy.site import client_settings, prefect_site

RUNS = int(os.environ.get("BENCH_DEPLOY_RUNS", "3"))
ITEMS_EACH = int(os.environ.get("BENCH_DEPLOY_ITEMS", "600"))


async def _wait(flow_run_id: UUID) -> str | None:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        while True:
            run = await client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                return run.state.name
            await asyncio.sleep(0.1)


async def _trigger(parameters: dict[str, Any]) -> UUID:
    from prefect.deployments import arun_deployment

    run = await arun_deployment(
        "refresh-catalog-audio/catalog-manual", parameters=parameters, timeout=0
    )
    return run.id


def trigger_to_completed(tmp: Path, server: str) -> list[float]:
    source = catalog(tmp / "one.jsonl", 1)
    times = []
    for i in range(RUNS):
        started = time.monotonic()
        params = {"source": str(source), "out": str(tmp / f"one-{i}"), "servers": [server]}
        state = asyncio.run(_wait(asyncio.run(_trigger(params))))
        times.append(time.monotonic() - started)
        assert state == "Completed", state
    return times


def two_runs_sharing_two_servers(tmp: Path, servers: list[str]) -> tuple[float, float]:
    for url in servers:
        stats(url, reset=True)

    async def both() -> list[str | None]:
        ids = [
            await _trigger(
                {
                    "source": str(catalog(tmp / f"{p}.jsonl", ITEMS_EACH)),
                    "out": str(tmp / p),
                    "servers": servers,
                    "settings": {"batch_size": 100, "max_in_flight": 4},
                    "force": True,
                }
            )
            for p in ("a", "b")
        ]
        return [await _wait(i) for i in ids]

    states = asyncio.run(both())
    assert states == ["Completed", "Completed"], states
    per_server = [stats(u) for u in servers]
    span = max(s["last_service_at"] for s in per_server) - min(
        s["first_service_at"] for s in per_server
    )
    ideal = sum(s["service_s"] for s in per_server) / len(servers)
    return span, ideal


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="fishflow-bench-deploy-") as name:
        tmp = Path(name)
        with emulators(2, SERVICE_S) as procs:
            servers = urls(procs)
            with prefect_site(tmp, servers, limit=2) as site, client_settings(site.url):
                site.start_worker("bench")
                times = trigger_to_completed(tmp, servers[0])
                span, ideal = two_runs_sharing_two_servers(tmp, servers)
    print("\n| deployment path | result |\n|---|---|")
    print(
        f"| trigger to Completed, one-item run, worker polling every 1 s "
        f"(median of {RUNS}) | {statistics.median(times):.1f} s "
        f"({', '.join(f'{t:.1f}' for t in times)}) |"
    )
    print(
        f"| two concurrent runs of {ITEMS_EACH} items sharing 2 serial servers (limit 2 each): "
        f"busy span / ideal | {span / ideal:.3f} (span {span:.1f} s, ideal {ideal:.1f} s) |"
    )


if __name__ == "__main__":
    main()
