"""Scale-out on Prefect itself: a run split into child runs of its own deployment.

Each child handles a stable hash partition of the source rows (``fishflow.run.shard_of``) and
writes its own manifests under `run=<run_id>-s<i>`; any worker of the pool may take it. The
parent waits, runs a crashed child again (it resumes from its journal, so nothing is done
twice), then merges the children's manifests into one under its own run id. A parent that
stops (an operator's cancel) cancels its children: each gives its servers' slots back.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from uuid import UUID

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import State, StateType
from prefect.deployments import run_deployment
from prefect.logging.loggers import flow_run_logger
from prefect.runtime import flow_run as current_run

from fishflow.errors import ConfigError
from fishflow.record import RunRecord, RunRequest, RunSummary, ShardRun, write_run_record
from fishflow.run import finish_sharded, shard_run_id
from fishflow.storage import open_store
from fishflow.tasks.limits import still_ended
from fishflow.tasks.prefect_run import DeploymentContext, RunFailed, cancel_requested

# A child whose worker died ends Crashed (heartbeats + `fishflow deploy`'s automation); each
# child gets this many runs in all before the parent gives up on it.
CHILD_RUNS = 3


async def run_shards(deployment: DeploymentContext, request: RunRequest) -> RunSummary:
    """Run `request` as `request.shards` child runs of `deployment`, then merge them."""
    logger = get_run_logger()
    full_name = deployment.full_name
    if full_name is None:
        raise ConfigError(
            "shards > 1 needs a deployment to start child runs of: run it from a deployment "
            "(`fishflow run ... --shards N --deployment NAME`)"
        )
    started = time.monotonic()
    store = await asyncio.to_thread(open_store, request.out, request.settings.sse)
    # Children get the source as the record shows it (masked): a URL's secrets (should a
    # deployment's parameters hold them) are not copied into more flow runs; workers read
    # them from FISHFLOW_SOURCE_URL / FISHFLOW_SOURCE_PASSWORD (see fishflow.database).
    record = RunRecord(**dict(request))
    await asyncio.to_thread(write_run_record, store, record)
    logger.info("run %s: %d shards of %s", request.run_id, request.shards, full_name)

    async def child(index: int) -> ShardRun:
        child_id = shard_run_id(request.run_id, index)
        parameters = {
            "source": record.source,
            "out": request.out,
            "servers": request.servers,
            "settings": request.settings.model_dump(),
            "force": request.force,
            "api_key_secret": request.api_key_secret,
            "max_failed_share": 1.0,  # the parent judges the whole run
            "shards": request.shards,
            "shard": index,
            "run_id": child_id,
            "parent_run_id": request.run_id,
        }  # no `prune`: a shard sees part of the source, the parent tidies the output
        for attempt in range(1, CHILD_RUNS + 1):
            run = await run_deployment(  # type: ignore[misc]
                full_name,
                parameters=parameters,
                flow_run_name=child_id,
                timeout=None,
                poll_interval=2,
            )
            state = run.state
            name = state.name if state else "unknown"
            if state is not None and state.is_completed():
                return ShardRun(
                    shard=index, run_id=child_id, flow_run_id=str(run.id), state=name,
                    runs=attempt,
                )  # fmt: skip
            if state is not None and state.is_crashed() and attempt < CHILD_RUNS:
                logger.warning("shard %d (%s) ended %s: running it again", index, run.id, name)
                continue
            message = state.message if state else ""
            raise RunFailed(f"shard {index} (flow run {run.id}) ended {name}: {message}")
        raise AssertionError("unreachable")

    try:
        children = await asyncio.gather(*(child(i) for i in range(request.shards)))
    except BaseException as exc:
        # Cancelled by an operator (not a child's failure, nor a bare SIGTERM, after which the
        # children go on as before): so are the children, whose slots come back as they stop.
        if not isinstance(exc, Exception) and current_run.id and await cancel_requested():
            await cancel_children(UUID(current_run.id))
        raise
    return await asyncio.to_thread(
        finish_sharded, store, record, list(children), started=started, log=logger
    )


_FINAL = [StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED]


async def cancel_children(parent: UUID) -> int:
    """Cancel the child runs of a sharded run that have not ended, as `prefect flow-run cancel`
    does (their workers stop them); returns how many."""
    async with get_client() as client:
        children = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(not_any_=_FINAL)),
            )
        )
        for run in children:
            await client.set_flow_run_state(run.id, State(type=StateType.CANCELLING))
    return len(children)


async def cancel_child_runs(flow: Any, flow_run: Any, state: Any) -> None:
    """A flow hook (on cancellation): a sharded run's children stop with it, also when its own
    process was killed before it could cancel them."""
    if not await still_ended(flow_run.id):
        return
    if cancelled := await cancel_children(flow_run.id):
        flow_run_logger(flow_run).info("cancelled %d child run(s) of this run", cancelled)
