"""Retry only what failed in an earlier run, as a new run with its own manifests."""

from __future__ import annotations

import asyncio

from prefect import flow, get_run_logger
from prefect.states import Failed, State

from fishflow.flows.refresh_catalog_audio import refresh_catalog_audio
from fishflow.manifest import failed_rows
from fishflow.record import RunSummary, latest_run_id, read_run_record
from fishflow.storage import open_store
from fishflow.tasks.prefect_run import run_result


@flow(name="retry-errors")
async def retry_errors(
    out: str,
    run_id: str | None = None,
    servers: list[str] | None = None,
    api_key_secret: str | None = None,
    max_failed_share: float = 0.0,
) -> RunSummary | State:
    """Re-run the items that failed in an earlier run of `out`, with that run's source and
    settings, as a new run. Returns the new run's summary (run_id None: nothing to do).

    Args:
        out: Output folder or s3://bucket/prefix of the earlier run.
        run_id: The run whose failed items to retry (default: the latest run of `out`).
        servers: Fish Speech servers to use instead of the earlier run's.
        api_key_secret: Prefect Secret block with the API key (default: the earlier run's).
        max_failed_share: Share of retried items that may fail again before this run fails.
    """
    logger = get_run_logger()
    store = await asyncio.to_thread(open_store, out)
    if run_id is None:
        run_id = await asyncio.to_thread(latest_run_id, store)
    record = await asyncio.to_thread(read_run_record, store, run_id)
    rows = await asyncio.to_thread(failed_rows, store, run_id)
    if not rows:
        logger.info("run %s has no failed items: nothing to retry", run_id)
        return RunSummary(run_id=None, retried_run=run_id)
    logger.info("retrying %d failed item(s) of run %s", len(rows), run_id)
    state = await refresh_catalog_audio(
        source=record.source,
        out=out,
        servers=servers or record.servers,
        settings=record.settings,
        api_key_secret=api_key_secret or record.api_key_secret,
        only_rows=rows,
        max_failed_share=max_failed_share,
        return_state=True,
    )
    summary = (await run_result(state)).model_copy(update={"retried_run": run_id})
    if state.is_failed():
        return Failed(message=state.message, data=summary)
    return summary
