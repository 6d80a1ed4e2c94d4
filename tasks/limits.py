"""Per-server in-flight limits shared across runs and machines: Prefect global concurrency limits.

One limit per Fish Speech server, named by ``fishflow.pool.limit_name`` and sized to what the
server takes at once. The pool leases single slots when it has work waiting and hands back idle
ones (an acquire + release costs about 140 ms here, so never per request). A server without a
limit on the Prefect API is used with the run's local limit only, and the run says so once.
"""

from __future__ import annotations

import asyncio
import logging

from prefect.client.orchestration import get_client
from prefect.concurrency.asyncio import AcquireConcurrencySlotTimeoutError, concurrency
from prefect.exceptions import ObjectNotFound

from fishflow.pool import Lease, limit_name


class _HeldSlot:
    def __init__(self, release: asyncio.Event, holder: asyncio.Task[None]) -> None:
        self._release = release
        self._holder = holder

    async def release(self) -> None:
        self._release.set()
        await asyncio.gather(self._holder, return_exceptions=True)


class PrefectSlotLeaser:
    """Leases slots of each server's Prefect global concurrency limit."""

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter) -> None:
        self._logger = logger
        self._exists: dict[str, bool] = {}

    async def _limit_exists(self, name: str) -> bool:
        if name not in self._exists:
            try:
                async with get_client() as client:
                    await client.read_global_concurrency_limit_by_name(name)
                self._exists[name] = True
            except ObjectNotFound:
                self._exists[name] = False
                self._logger.warning(
                    "no Prefect concurrency limit %r: this run keeps to its own limit on that "
                    "server; create one with `fishflow limits create` to share it across runs",
                    name,
                )
        return self._exists[name]

    async def lease(self, server_url: str, *, timeout_s: float) -> Lease | None:
        name = limit_name(server_url)
        if not await self._limit_exists(name):
            return None
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        release = asyncio.Event()

        async def hold() -> None:
            try:
                async with concurrency(name, occupy=1, strict=True, timeout_seconds=timeout_s):
                    granted.set_result(None)
                    await release.wait()
            except BaseException as exc:
                if granted.done():
                    raise  # lost the slot while holding it: let the task report it
                granted.set_exception(exc)  # not granted: lease() raises it to the pool

        holder = asyncio.create_task(hold())
        try:
            await granted
        except AcquireConcurrencySlotTimeoutError as exc:
            raise TimeoutError(f"no free slot on {name} within {timeout_s} s") from exc
        return _HeldSlot(release, holder)


async def create_limits(servers: dict[str, int]) -> dict[str, int]:
    """Create (or resize) the shared limit of each server URL; returns name -> limit."""
    created = {}
    async with get_client() as client:
        for url, limit in servers.items():
            name = limit_name(url)
            await client.upsert_global_concurrency_limit_by_name(name, limit)
            created[name] = limit
    return created
