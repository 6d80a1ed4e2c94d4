"""The unit of a Prefect task run: one batch of items.

A task run costs 8-10 ms of client CPU and a per-item `task.map` ran 11x over the ideal
(measured with Prefect 3.8.8 on 2 cores), so a task handles a batch of items (250 by default)
and per-chunk detail goes to the manifests instead. Batch tasks are awaited
concurrently on the flow's event loop, which lets them share one server pool; Prefect does not
retry them, because the pool already retries each chunk and a batch retry would redo finished
items.
"""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import CancelledRun
from prefect.states import Cancelled, State
from prefect.utilities.annotations import quote

from fishflow.run import Batch, BatchCounts, Run


@task(name="synthesize-batch", cache_policy=NO_CACHE, persist_result=False, retries=0)
async def synthesize_batch(run: Run, batch: Batch) -> BatchCounts | State:
    """Synthesise, stitch and publish a batch of items, then record it in a manifest part."""
    try:
        return await run.process(batch)
    except asyncio.CancelledError:
        # The run is stopping (an operator's Cancel): the batch ends Cancelled, not Crashed;
        # what it finished is in the journal.
        return Cancelled(message="the run stopped before this batch ended")


async def as_task_run(run: Run, batch: Batch) -> BatchCounts | None:
    """The run's step in a flow: each batch a task run. The run and its batch are quoted:
    Prefect passes them as they are, without walking a hundred items looking for futures
    (the run's pool and clients belong to this event loop and never leave the process)."""
    try:
        result = await synthesize_batch(_as_is(run), _as_is(batch))
    except CancelledRun:  # stopped mid-batch
        return None
    return result if isinstance(result, BatchCounts) else None


def _as_is(value: object) -> Any:
    """Typed Any: the task receives the object itself (Prefect unwraps a `quote` before the
    call), and `quote` is not generic."""
    return quote(value)
