"""The catalog refresh: every row of a source to published audio and a Parquet manifest."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from prefect import flow, get_run_logger
from prefect.exceptions import TerminationSignal
from prefect.runtime import flow_run
from prefect.states import Failed, State

from fishflow.context import held_output
from fishflow.database import split_secrets
from fishflow.errors import ConfigError
from fishflow.items import RunSpec
from fishflow.pool import check_servers
from fishflow.record import RunRequest, RunSummary
from fishflow.run import Run, columns, is_run_id, new_run_id, progress_listener, run_spec
from fishflow.settings import EnvSettings, RunSettings, validated
from fishflow.sources import check_source
from fishflow.storage import relative_paths
from fishflow.tasks import reporting
from fishflow.tasks.limits import give_back_leases, shared_leaser
from fishflow.tasks.prefect_run import (
    RunFailed,
    api_key,
    cancelled_state,
    deployment_context,
    tag_flow_run,
)
from fishflow.tasks.sharding import cancel_child_runs, run_shards
from fishflow.tasks.sources import resolve_source
from fishflow.tasks.synthesis import as_task_run
from fishflow.tasks.termination import SigtermWatch

DEFAULT_SERVERS = ["http://127.0.0.1:8080"]


def _flow_run_name() -> str:
    """Flow runs carry their fishflow run id as their name, so the Prefect UI, the manifests'
    `run=<id>` folder and `fishflow resume` all speak of the same run."""
    given = flow_run.parameters.get("run_id")
    if isinstance(given, str) and given:
        return given
    # A retried flow run (`prefect flow-run retry`, the UI's Retry) is named after its run
    # already: it finishes that run, in its folder, rather than starting another.
    return flow_run.name if is_run_id(flow_run.name) else new_run_id()


# A process worker runs these hooks itself once a cancelled (or crashed) run's process is gone:
# slots the run still held come back now, not when their leases expire; a sharded run's
# children stop with it.
@flow(
    name="refresh-catalog-audio",
    flow_run_name=_flow_run_name,
    on_cancellation=[give_back_leases, cancel_child_runs],
    on_crashed=[give_back_leases],
)
async def refresh_catalog_audio(
    source: str,
    out: str,
    servers: list[str] | None = None,
    settings: RunSettings | None = None,
    force: bool = False,
    prune: bool = False,
    max_failed_share: float = 0.0,
    shards: int = 1,
    api_key_secret: str | None = None,
    run_id: str | None = None,
    resume: bool = False,
    only_rows: list[int] | None = None,
    shard: int | None = None,
    parent_run_id: str | None = None,
) -> RunSummary | State:
    """Synthesise every row of `source` on Fish Speech servers and publish audio to `out`.

    Items whose text, voice and settings are unchanged since an earlier run of the same `out`
    are skipped. Manifests land in `<out>/manifests/run=<run_id>/`; the flow run is named after
    that run id. The run ends Failed when more than `max_failed_share` of its items failed.

    Args:
        source: CSV, JSONL or Parquet file, folder of .txt/.md files, or an s3:// URI of one;
            or a database URL read with `settings.table` or `settings.query`; or `env:NAME` /
            `secret:NAME`, the source held by an environment variable / a Prefect Secret block.
            A URL's password is masked in logs, tags and the run record.
        out: Output folder or s3://bucket/prefix for audio and manifests.
        servers: Fish Speech server URLs; `URL#limit=N` sets a server's in-flight limit.
        settings: Run settings; the fields given here override the deployment's own.
        force: Redo every item, even those unchanged since an earlier run.
        prune: Delete audio no current item uses: items gone from the source, older formats.
        max_failed_share: Share of items (0..1) that may fail before the run ends Failed.
        shards: Split the run into this many child runs of the same deployment.
        api_key_secret: Name of a Prefect Secret block holding the servers' API key.
        run_id: Run id to use, or to finish if that run was stopped (default: a new one).
        resume: Continue run `run_id` where it stopped (implied when its record exists).
        only_rows: Source rows to run, and no others (what retry-errors uses).
        shard: Internal: the partition a child run of a sharded run handles.
        parent_run_id: Internal: the sharded run a child belongs to.
    """
    logger = get_run_logger()
    deployment = await deployment_context()
    if isinstance(settings, dict):  # a direct call with a plain dict
        settings = validated(RunSettings, **settings)
    if not 0.0 <= max_failed_share <= 1.0:
        raise RunFailed(f"max_failed_share must be between 0 and 1, not {max_failed_share}")
    request = RunRequest(
        run_id=run_id or (flow_run.name if is_run_id(flow_run.name) else new_run_id()),
        source=source,  # recorded masked
        out=out,
        servers=servers or DEFAULT_SERVERS,
        settings=deployment.merged_settings(settings),
        force=force,
        prune=prune,
        only_rows=only_rows,
        api_key_secret=api_key_secret,
        shard=shard,
        shards=shards,
        parent_run_id=parent_run_id,
    )
    # secret:NAME becomes the URL it holds; the source, its lexicon and the servers are
    # checked before anything is written for the run.
    readable, spec = await _checked(source, request, logger, deployed=bool(deployment.name))
    await tag_flow_run(source=request.source, deployment=deployment.name, shard=shard)
    artifacts = reporting.Reporter(deployment.name, request.run_id)
    if request.sharded_parent:
        try:
            async with (
                held_output(out=out, settings=request.settings, run_id=request.run_id),
                SigtermWatch(),
            ):
                summary = await run_shards(deployment, request)  # its children write under it
        except (asyncio.CancelledError, TerminationSignal):  # run_shards cancelled the children
            if (state := await cancelled_state(request.run_id, out, shards=shards)) is not None:
                return state
            raise
        return await _finish(summary, artifacts, max_failed_share)
    run = Run(
        request,
        source=readable,
        spec=spec,
        api_key=await api_key(api_key_secret),
        leaser=await shared_leaser(
            [c.url for c in request.settings.server_configs(request.servers)],
            local_limit=request.settings.local_limit,
            logger=logger,
        ),
        resume=resume,
        flow_run_id=str(flow_run.id) if flow_run.id else None,
        log=logger,
        listener=progress_listener.get(),
        reporter=artifacts,
        progress_interval_s=EnvSettings().progress_interval_s,
    )
    try:
        async with SigtermWatch() as sigterm:  # a worker's cancel stops the run at once
            summary = await run.execute(step=as_task_run, stopping=sigterm.stopping)
    except (asyncio.CancelledError, TerminationSignal):
        # Stopped: what finished is in the journal. The CLI says so itself; a cancelled run
        # ends Cancelled, its slots given back, not Crashed.
        if progress_listener.get() is None and (
            state := await cancelled_state(request.run_id, out, parent_run_id=parent_run_id)
        ):
            return state
        raise
    return await _finish(summary, artifacts, max_failed_share)


async def _checked(
    source: str,
    request: RunRequest,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    *,
    deployed: bool,
) -> tuple[str, RunSpec]:
    """The readable source and the run's spec, once the source, the lexicon and the servers
    are known good: a bad one stops the run before anything is written. Servers not up yet
    are the pool's to wait for; servers that answer as something else (a wrong URL) stop it."""
    readable = await resolve_source(source)  # the parameter itself: request.source is masked
    if deployed and (relative := relative_paths(source=readable, out=request.out)):
        raise ConfigError(
            f"{' and '.join(relative)}: a deployment's run works in a temporary folder of its "
            "worker; give an absolute path, an s3:// URI or a database URL"
        )
    if split_secrets(source)[1] is not None:
        logger.warning(
            "the source parameter holds a password in plain text, which Prefect keeps with "
            "this flow run: give it as secret:NAME (a Prefect Secret block) or env:NAME"
        )
    settings = request.settings
    await asyncio.to_thread(
        check_source, readable, columns=columns(settings), table=settings.table,
        query=settings.query,
    )  # fmt: skip
    spec = await asyncio.to_thread(run_spec, settings)
    await check_servers(settings.server_configs(request.servers), unreachable_ok=True)
    return readable, spec


async def _finish(
    summary: RunSummary, artifacts: reporting.Reporter, max_failed_share: float
) -> RunSummary | State:
    """Report the run in Prefect and choose how it ends there: Completed, or Failed when the
    run stopped early or too many of its items failed (the CLI's exit codes come from the
    same summary)."""
    logger = get_run_logger()
    logger.info(
        "run %s: %d ok, %d skipped, %d failed",
        summary.run_id, summary.ok, summary.skipped, summary.failed,
    )  # fmt: skip
    await artifacts.finish(summary)
    items_uri = summary.manifests.get("items", "")
    if summary.error is not None:
        raise RunFailed(f"{summary.error} (manifests: {items_uri})")
    if summary.too_many_failed(max_failed_share):
        return Failed(
            message=(
                f"{summary.failed} of {summary.items} items failed (max_failed_share "
                f"{max_failed_share:g}); manifests: {items_uri}"
            ),
            data=summary,
        )
    return summary
