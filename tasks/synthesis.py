"""The unit of a Prefect task run: one batch of items.

A task run costs 8-10 ms of client CPU and a per-item `task.map` ran 11x over the ideal here
(../shared/prefect-facts.md), so a task handles a batch of items (250 by default) and per-chunk
detail goes to the manifests instead. Batch tasks are awaited concurrently on the flow's event
loop, which lets them share one server pool; Prefect does not retry them, because the pool
already retries each chunk and a batch retry would redo finished items.
"""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.states import Cancelled, State
from prefect.utilities.annotations import quote

from fishflow.items import Item, Rejection

from fishflow.processing import process_batch
from fishflow.tasks.runtime import lookup


@task(name="synthesize-batch", cache_policy=NO_CACHE, persist_result=False, retries=0)
async def synthesize_batch(
    run_id: str, part: str, entries: list[Item | Rejection]
) -> dict[str, int] | State:
    """Synthesise, stitch and publish a batch of items, then record it in the manifest parts.

    Pass the batch through `batch_argument` (Prefect unquotes it before the call).
    """
    run = lookup(run_id)
    try:
        outcomes = await process_batch(run.ctx, entries)
    except asyncio.CancelledError:
        # The run is stopping (an operator's Cancel): the batch ends Cancelled, not Crashed;
        # what it finished is in the journal. Its caller re-raises the cancellation.
        return Cancelled(message="the run stopped before this batch ended")
    await asyncio.to_thread(run.writer.write_outcomes, part, outcomes)
    if run.ctx.journal is not None:  # in a part now: their journal segments may go
        run.ctx.journal.settle(o.item.source_row for o in outcomes)
    run.totals.add(outcomes)
    statuses = [o.item.status for o in outcomes]
    return {status: statuses.count(status) for status in ("ok", "skipped", "failed")}


def batch_argument(entries: list[Item | Rejection]) -> Any:
    """Wrap a batch so Prefect does not walk a hundred items looking for futures.

    Typed Any: the task receives the list itself (Prefect unwraps a `quote` before the call),
    and `quote` is not generic."""
    return quote(entries)
