"""Slots of a shared server limit, held by the run: two pools over one emulator share a limit
held in memory (a stand-in for Prefect's global concurrency limit with leases)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from pathlib import Path
from typing import Any

from fishflow.pool import ServerPool
from fishflow.settings import RetryPolicy, ServerConfig, SynthesisOptions
from fishflow.slots import LeaseLedger
from fishflow.testing.emulator import Emulator, EmulatorConfig


class MemoryLimit:
    """A shared limit with leases that expire, like Prefect's (in seconds scaled down)."""

    def __init__(self, size: int, lease_s: float = 0.6) -> None:
        self.size = size
        self.lease_s = lease_s
        self.leases: dict[str, float] = {}  # lease id -> expiry
        self.waiters: dict[str, float] = {}
        self.ids = itertools.count()
        self.unreachable = False
        self.calls = 0

    def _expire(self) -> None:
        now = time.monotonic()
        for table in (self.leases, self.waiters):
            for lease_id, expiry in list(table.items()):
                if expiry <= now:
                    del table[lease_id]

    async def _call(self) -> None:
        self.calls += 1
        await asyncio.sleep(0.005)
        if self.unreachable:
            raise ConnectionError("Prefect API unreachable")
        self._expire()

    async def take(self) -> str | None:
        await self._call()
        if len(self.leases) >= self.size:
            return None
        lease_id = f"lease-{next(self.ids)}"
        self.leases[lease_id] = time.monotonic() + self.lease_s
        return lease_id

    async def renew(self, lease_id: str) -> bool:
        await self._call()
        for table in (self.leases, self.waiters):
            if lease_id in table:
                table[lease_id] = time.monotonic() + self.lease_s
                return True
        return False

    async def give_back(self, lease_id: str) -> None:
        await self._call()
        self.leases.pop(lease_id, None)
        self.waiters.pop(lease_id, None)

    async def announce_waiting(self) -> str | None:
        await self._call()
        lease_id = f"waiting-{next(self.ids)}"
        self.waiters[lease_id] = time.monotonic() + self.lease_s
        return lease_id

    async def waiting(self) -> int:
        await self._call()
        return len(self.waiters)


class MemoryLeaser:
    logger: logging.Logger | logging.LoggerAdapter[Any] = logging.getLogger("test.slots")

    def __init__(self, limit: MemoryLimit | None) -> None:
        self.limit = limit
        self.closed = False

    async def shared_limit(self, server_url: str) -> MemoryLimit | None:
        return self.limit

    async def aclose(self) -> None:
        self.closed = True


FAST = RetryPolicy(backoff_s=0.01, max_backoff_s=0.05)


def pool(url: str, limit: MemoryLimit | None, **kwargs) -> ServerPool:
    return ServerPool(
        [ServerConfig(url=url, max_in_flight=4)],
        retry=FAST,
        leaser=MemoryLeaser(limit),
        lease_idle_s=0.2,
        **kwargs,
    )


async def synth(p: ServerPool, n: int, tag: str, done: list[tuple[str, float]]) -> None:
    async def one(i: int) -> None:
        await p.synthesize(f"Run {tag} sentence {i} is spoken.", SynthesisOptions())
        done.append((tag, time.monotonic()))

    await asyncio.gather(*(one(i) for i in range(n)))


def test_two_pools_never_exceed_the_shared_limit_and_give_every_slot_back() -> None:
    limit = MemoryLimit(size=2)
    with Emulator(EmulatorConfig(workers=4, service_time_s=0.01)) as emu:

        async def go() -> list[tuple[str, float]]:
            done: list[tuple[str, float]] = []
            async with pool(emu.url, limit) as a, pool(emu.url, limit) as b:
                await asyncio.gather(synth(a, 30, "a", done), synth(b, 30, "b", done))
            return done

        done = asyncio.run(go())
    assert len(done) == 60
    assert emu.stats["max_in_flight"] == 2  # each pool alone would have put 4 in flight
    assert limit.leases == {} and limit.waiters == {}  # all given back at close


def test_a_waiting_run_is_handed_a_slot_while_the_holder_still_has_work() -> None:
    """Hand-over, not starvation: B starts while A holds both slots with work to spare."""
    limit = MemoryLimit(size=2)
    with Emulator(EmulatorConfig(workers=4, service_time_s=0.02)) as emu:

        async def go() -> list[tuple[str, float]]:
            done: list[tuple[str, float]] = []
            async with (
                pool(emu.url, limit, slot_tenure_s=0.3) as a,
                pool(emu.url, limit, slot_tenure_s=0.3) as b,
            ):
                holder = asyncio.create_task(synth(a, 120, "a", done))
                while len(done) < 10:  # A holds both slots and has 110 chunks to go
                    await asyncio.sleep(0.01)
                assert len(limit.leases) == 2
                await synth(b, 10, "b", done)
                await holder
                shared = a.servers[0].shared
                assert shared is not None and shared.handed_over >= 1
            return done

        done = asyncio.run(go())
    assert emu.stats["max_in_flight"] <= 2
    last_a = max(t for tag, t in done if tag == "a")
    first_b = min(t for tag, t in done if tag == "b")
    a_after_b = sum(1 for tag, t in done if tag == "a" and t > first_b)
    assert first_b < last_a and a_after_b >= 30, (a_after_b, first_b, last_a)


def test_lost_leases_stop_the_sending_and_new_ones_resume_it() -> None:
    """Renewals refused (the lease was revoked) or impossible for 2/3 of its life (API down):
    the slot is not used again; the run goes on once it can take slots again."""
    limit = MemoryLimit(size=2, lease_s=0.3)
    with Emulator(EmulatorConfig(workers=4, service_time_s=0.01)) as emu:

        async def go() -> tuple[int, int]:
            done: list[tuple[str, float]] = []
            async with pool(emu.url, limit) as p:
                work = asyncio.create_task(synth(p, 80, "a", done))
                while len(done) < 5:
                    await asyncio.sleep(0.01)
                shared = p.servers[0].shared
                assert shared is not None  # the leaser gave this server a shared limit
                limit.leases.clear()  # revoked on the other side: the next renewal says so
                while shared.lost < 1:
                    await asyncio.sleep(0.01)
                limit.unreachable = True  # and now the API is gone altogether
                while shared.usable > 0:
                    await asyncio.sleep(0.01)
                while p.servers[0].in_flight:
                    await asyncio.sleep(0.01)
                stalled_at = len(done)
                limit.unreachable = False
                await work
            return stalled_at, len(done)

        stalled_at, finished = asyncio.run(go())
    assert stalled_at < 80 and finished == 80
    assert emu.stats["max_in_flight"] <= 2


def test_a_server_without_a_shared_limit_keeps_to_the_local_one() -> None:
    with Emulator(EmulatorConfig(workers=4, service_time_s=0.01)) as emu:

        async def go() -> None:
            async with pool(emu.url, None) as p:
                await synth(p, 40, "a", [])

        asyncio.run(go())
    assert emu.stats["max_in_flight"] == 4 and emu.stats["requests"] == 40


def test_a_stopped_run_whose_tasks_were_all_cancelled_still_gives_its_slots_back() -> None:
    """A cancelled flow run stops as asyncio.run's shutdown does: every task is cancelled at
    once, the pool's leasing task too. Its slots must still be given back at close, not held
    until their leases expire (every other run on the server would wait that long)."""
    limit = MemoryLimit(size=2, lease_s=60.0)
    with Emulator(EmulatorConfig(workers=4, service_time_s=0.05)) as emu:

        async def go() -> None:
            async with pool(emu.url, limit) as p:
                work = asyncio.create_task(synth(p, 200, "a", []))
                deadline = time.monotonic() + 10
                while len(limit.leases) < 2:
                    assert time.monotonic() < deadline, "the run never took the shared slots"
                    await asyncio.sleep(0.01)
                for task in asyncio.all_tasks():
                    if task is not asyncio.current_task():
                        task.cancel()
                await asyncio.gather(work, return_exceptions=True)

        asyncio.run(go())
    assert limit.leases == {} and limit.waiters == {}


def test_the_lease_ledger_holds_what_the_run_still_holds(tmp_path: Path) -> None:
    """What a hook reads once the run's process is gone: the leases not given back yet."""
    path = tmp_path / "leases" / "run.json"
    ledger = LeaseLedger(path)
    for lease_id in ("a", "b", "c"):
        ledger.add(lease_id)
    ledger.discard("b")
    assert sorted(LeaseLedger.read(path)) == ["a", "c"]
    ledger.close()  # the run gave them back itself
    assert LeaseLedger.read(path) == [] and not path.exists()
