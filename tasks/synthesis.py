"""The unit of a Prefect task run: one batch of items.

A task run costs 8-10 ms of client CPU and a per-item `task.map` ran 11x over the ideal here
(../shared/prefect-facts.md), so a task handles a batch of items (100 by default) and per-chunk
detail goes to the manifests instead. Batch tasks are awaited concurrently on the flow's event
loop, which lets them share one server pool; Prefect does not retry them, because the pool
already retries each chunk and a batch retry would redo finished items.
"""

from __future__ import annotations

import asyncio

from prefect import task
from prefect.cache_policies import NO_CACHE

from fishflow.pipeline import Item, ItemOutcome, Rejection, process_batch
from tasks.runtime import lookup


@task(name="synthesize-batch", cache_policy=NO_CACHE, persist_result=False, retries=0)
async def synthesize_batch(
    run_id: str, index: int, entries: list[Item | Rejection]
) -> list[ItemOutcome]:
    """Synthesise, stitch and publish a batch of items, then record it in the manifest parts."""
    ctx, writer = lookup(run_id)
    outcomes = await process_batch(ctx, entries)
    await asyncio.to_thread(
        writer.write_part,
        f"{index:06d}",
        [o.item for o in outcomes],
        [c for o in outcomes for c in o.chunks],
        [e for o in outcomes for e in o.errors],
    )
    return outcomes
