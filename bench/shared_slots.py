"""What shared limits cost: one and two ServerPools on two serial emulators (50 ms per request),
with and without a shared limit of 2 per server on a Prefect API (the test harness, in-process).

    .venv/bin/python -m bench.shared_slots
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from fishflow.pool import ServerPool
from fishflow.settings import ServerConfig, SynthesisOptions
from fishflow.testing.emulator import Emulator, EmulatorConfig

SERVICE_S = 0.05
log = logging.getLogger("bench.shared_slots")


async def one_run(urls: list[str], n: int, shared: bool, tag: str) -> tuple[float, float, int]:
    from fishflow.tasks.limits import PrefectSlotLeaser

    leaser = PrefectSlotLeaser(log) if shared else None
    configs = [ServerConfig(url=u, max_in_flight=2) for u in urls]
    async with ServerPool(configs, leaser=leaser) as pool:
        started = time.monotonic()
        await asyncio.gather(
            *(pool.synthesize(f"{tag} sentence {i} is here.", SynthesisOptions()) for i in range(n))
        )
        handed = sum(s.shared.handed_over for s in pool.servers if s.shared is not None)
        return started, time.monotonic(), handed


def measure(label: str, emus: list[Emulator], runs: int, n: int, shared: bool) -> None:
    from fishflow.tasks.limits import create_limits

    for emu in emus:
        emu.reset_stats()

    async def go() -> list[tuple[float, float, int]]:
        if shared:
            await create_limits({e.url: 2 for e in emus})
        urls = [e.url for e in emus]
        return await asyncio.gather(*(one_run(urls, n, shared, f"r{r}") for r in range(runs)))

    results = asyncio.run(go())
    span = max(r[1] for r in results) - min(r[0] for r in results)
    ideal = sum(e.stats["service_s"] for e in emus) / len(emus)
    print(
        f"{label}: {runs * n} requests, busy span {span:.2f} s, ideal {ideal:.2f} s, "
        f"ratio {span / ideal:.3f}, hand-overs {[r[2] for r in results]}, "
        f"max in flight {[e.stats['max_in_flight'] for e in emus]}",
        flush=True,
    )


def main() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    config = EmulatorConfig(workers=1, service_time_s=SERVICE_S)
    with (
        prefect_test_harness(server_startup_timeout=300),
        Emulator(config) as e1,
        Emulator(config) as e2,
    ):
        measure("one run, local limits only ", [e1, e2], 1, 600, shared=False)
        measure("one run, shared limits     ", [e1, e2], 1, 600, shared=True)
        measure("two runs, local limits only", [e1, e2], 2, 300, shared=False)
        measure("two runs, shared limits    ", [e1, e2], 2, 300, shared=True)


if __name__ == "__main__":
    main()
