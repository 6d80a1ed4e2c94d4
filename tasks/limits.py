"""Per-server in-flight limits shared across runs and machines: Prefect global concurrency limits.

One limit per Fish Speech server, named by ``fishflow.pool.limit_name`` and sized to what the
server takes at once, plus a companion ``<name>-waiting`` limit whose slots count the runs
waiting for one (Prefect keeps no queue of waiters). When to take, renew and give back slots is
decided in the core (``fishflow/slots.py``); this module only makes the API calls.

Slots are taken with explicit leases (``increment_concurrency_slots_with_lease``), never with
``concurrency()`` inside a task: the task engine gives those back when the task run that took
them ends, while the run's pool still uses them. A lease held by nobody's task run lives until
it is given back or expires (60 s without renewal). A full limit answers 423, which is "no slot
now" here: the core asks again on its own schedule, so waiting logs nothing.

A run's lease ids are also kept in a ledger file under PREFECT_HOME (``ledger_path``), so that
the flow's on-cancellation and on-crashed hook (``give_back_leases``), which a process worker
runs in another process once the run's own is gone, can give them back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.objects import ConcurrencyLeaseHolder, StateType
from prefect.exceptions import ObjectNotFound
from prefect.logging.loggers import flow_run_logger
from prefect.settings import get_current_settings

from fishflow.errors import ConfigError
from fishflow.pool import limit_name
from fishflow.slots import LeaseLedger, NoSharedLimit

LEASE_S = 60.0  # the shortest lease Prefect accepts: a crashed run's slots come back soonest
WAITING_LIMIT = 100_000  # the waiting limit counts runs; it must never refuse one


def waiting_limit_name(server_url: str) -> str:
    return limit_name(server_url) + "-waiting"


def _holder() -> ConcurrencyLeaseHolder | None:
    """The flow run holding the slots, so Prefect's UI can say who has them."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return None
    return ConcurrencyLeaseHolder(type="flow_run", id=ctx.flow_run.id)


def ledger_path(flow_run_id: UUID) -> Path:
    """Where a flow run's lease ids are kept: on the machine that runs it, which is where a
    process worker runs its hooks."""
    return get_current_settings().home / "fishflow-leases" / f"{flow_run_id}.json"


def _status(exc: Exception) -> int | None:
    return exc.response.status_code if isinstance(exc, httpx.HTTPStatusError) else None


class PrefectLimit:
    """One server's shared limit (the ``SharedLimit`` the core's ``ServerSlots`` uses)."""

    lease_s = LEASE_S

    def __init__(self, leaser: PrefectSlotLeaser, name: str, size: int) -> None:
        self._leaser = leaser
        self.name = name
        self.size = size
        self.waiting_name = name + "-waiting"

    async def _lease(self, name: str) -> dict[str, Any]:
        client = await self._leaser.client()
        response = await client.increment_concurrency_slots_with_lease(
            names=[name],
            slots=1,
            mode="concurrency",
            lease_duration=self.lease_s,
            holder=self._leaser.holder,
        )
        data: dict[str, Any] = response.json()
        return data

    async def take(self) -> str | None:
        try:
            data = await self._lease(self.name)
        except httpx.HTTPStatusError as exc:
            if _status(exc) == 423:  # every slot is held: the core asks again later
                return None
            raise
        if not data.get("limits"):  # deleted since the run started: nothing was leased
            await self.give_back(data["lease_id"])
            raise NoSharedLimit(self.name)
        return self._leaser.record(str(data["lease_id"]))

    async def renew(self, lease_id: str) -> bool:
        client = await self._leaser.client()
        try:
            await client.renew_concurrency_lease(UUID(lease_id), self.lease_s)
        except httpx.HTTPStatusError as exc:
            if _status(exc) in (404, 410):  # expired, given back, or lost in a server restart
                return False
            raise
        return True

    async def give_back(self, lease_id: str) -> None:
        client = await self._leaser.client()
        await client.release_concurrency_slots_with_lease(UUID(lease_id))
        if self._leaser.ledger is not None:
            self._leaser.ledger.discard(lease_id)

    async def announce_waiting(self) -> str | None:
        try:
            data = await self._lease(self.waiting_name)
            if not data.get("limits"):  # made by an older `fishflow limits create`: make it
                await self.give_back(data["lease_id"])
                client = await self._leaser.client()
                await client.upsert_global_concurrency_limit_by_name(
                    self.waiting_name, WAITING_LIMIT
                )
                data = await self._lease(self.waiting_name)
        except Exception as exc:
            self._leaser.logger.warning(
                "cannot mark this run as waiting for %s (%s): runs holding it may not hand "
                "a slot over",
                self.name,
                exc,
            )
            return None
        return self._leaser.record(str(data["lease_id"]))

    async def waiting(self) -> int:
        client = await self._leaser.client()
        limit = await client.read_global_concurrency_limit_by_name(self.waiting_name)
        return int(limit.active_slots)


class PrefectSlotLeaser:
    """The run's way to the servers' shared limits on the Prefect API (one client per run)."""

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter[Any]) -> None:
        self.logger = logger
        self.holder = _holder()
        # Only a flow run has hooks to read its ledger.
        self.ledger = LeaseLedger(ledger_path(self.holder.id)) if self.holder else None
        self._client: PrefectClient | None = None
        self._opening = asyncio.Lock()  # every server's leasing task asks for it at once

    def record(self, lease_id: str) -> str:
        """Note a lease this run took (for ``give_back_leases``); returns its id."""
        if self.ledger is not None:
            self.ledger.add(lease_id)
        return lease_id

    async def client(self) -> PrefectClient:
        async with self._opening:
            if self._client is None:
                client = get_client()
                await client.__aenter__()
                self._client = client
        return self._client

    async def shared_limit(self, server_url: str) -> PrefectLimit | None:
        name = limit_name(server_url)
        client = await self.client()
        try:
            limit = await client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            limit = None
        if limit is None or not limit.active:
            # Prefect enforces neither a missing nor an inactive limit.
            self.logger.warning(
                "no active Prefect concurrency limit %r: this run keeps to its own limit on "
                "that server; create one with `fishflow limits create` to share it across runs",
                name,
            )
            return None
        return PrefectLimit(self, name, int(limit.limit))

    async def aclose(self) -> None:
        if self.ledger is not None:  # the pool gave every slot back before closing this
            self.ledger.close()
        if self._client is not None:
            client, self._client = self._client, None
            await client.__aexit__(None, None, None)


async def give_back_leases(flow: Any, flow_run: Any, state: Any) -> None:
    """A flow hook (on cancellation, on crash): give back the slots a run still held when its
    process stopped, so other runs on its servers go on now rather than when the leases expire.

    A process worker runs it in a process of its own after the run's has exited (or was killed
    30 s after a cancel's SIGTERM); a run that gave its slots back itself left nothing to do.
    Giving back a lease that is already gone is harmless."""
    if not await still_ended(flow_run.id):
        return
    path = ledger_path(flow_run.id)
    held = LeaseLedger.read(path)
    if held:
        async with get_client() as client:
            for lease_id in held:
                await client.release_concurrency_slots_with_lease(UUID(lease_id))
        flow_run_logger(flow_run).info(
            "gave back %d slot(s) of the servers' shared limits this run still held", len(held)
        )
    path.unlink(missing_ok=True)


async def still_ended(flow_run_id: UUID) -> bool:
    """Whether a flow run whose hooks are running is still cancelled or crashed. A worker runs
    a cancel's hooks seconds after the run stopped, and the run may have been retried since:
    its new attempt's leases and child runs (under the same flow run id) are not the hook's."""
    async with get_client() as client:
        run = await client.read_flow_run(flow_run_id)
    ended = (StateType.CANCELLING, StateType.CANCELLED, StateType.CRASHED)
    return run.state is not None and run.state.type in ended


async def create_limits(
    servers: dict[str, int], *, keep_resized: bool = False
) -> tuple[dict[str, int], dict[str, int]]:
    """Create the shared limit of each server URL (and its companion waiting limit, a count of
    waiting runs, never full); returns (name -> limit asked for, name -> size kept).

    An existing limit is resized to what is asked, unless ``keep_resized`` (a redeploy: an
    operator may have resized it on purpose), when it keeps its size and is reported."""
    created, kept = {}, {}
    async with get_client() as client:
        for url, limit in servers.items():
            name = limit_name(url)
            created[name] = limit
            current = None
            if keep_resized:
                with contextlib.suppress(ObjectNotFound):
                    current = await client.read_global_concurrency_limit_by_name(name)
            if current is not None and current.limit != limit:
                kept[name] = int(current.limit)
            elif current is None or current.limit != limit:
                await client.upsert_global_concurrency_limit_by_name(name, limit)
            await client.upsert_global_concurrency_limit_by_name(
                waiting_limit_name(url), WAITING_LIMIT
            )
    return created, kept


async def servers_without_limits(urls: list[str]) -> list[str]:
    """The servers of ``urls`` with no active shared limit, when the Prefect server has limits
    for other fishflow servers (then a run on them would overrun what the others share);
    empty when it has none at all (a Prefect server that does not share limits)."""
    limits: list[Any] = []
    async with get_client() as client:
        while page := await client.read_global_concurrency_limits(limit=200, offset=len(limits)):
            limits += page
            if len(page) < 200:
                break
    active = {
        limit.name
        for limit in limits
        if limit.active
        and limit.name.startswith("fishflow-server-")
        and not limit.name.endswith("-waiting")
    }
    if not active:
        return []
    return [url for url in urls if limit_name(url) not in active]


async def shared_leaser(
    urls: list[str], *, local_limit: bool, logger: logging.Logger | logging.LoggerAdapter[Any]
) -> PrefectSlotLeaser | None:
    """The leaser of the servers' shared limits, or None for a run with only its own limits.

    Limits shared with other runs live on a Prefect API that outlives this process; the
    ephemeral one started for a lone `fishflow run` has nobody to share with. On a Prefect
    server with limits for other Fish Speech servers, a server without one is a mistake (a
    new server, or a name the limits were not made for), unless told otherwise."""
    if not get_current_settings().api.url:
        return None
    if not local_limit and (missing := await servers_without_limits(urls)):
        raise ConfigError(
            f"no shared limit for {', '.join(missing)} on this Prefect server, which has "
            "limits for other Fish Speech servers: create one with `fishflow limits create "
            "--server URL`, or set local_limit to run with this run's own limit only"
        )
    return PrefectSlotLeaser(logger)
