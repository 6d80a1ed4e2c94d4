"""The catalog refresh: every row of a source to published audio and a Parquet manifest."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.exceptions import CancelledRun, TerminationSignal
from prefect.runtime import flow_run
from prefect.settings import get_current_settings
from prefect.states import Failed, State

from fishflow.database import mask, split_secrets
from fishflow.errors import ConfigError, FishflowError
from fishflow.hygiene import tidy_output
from fishflow.manifest import recover, run_record_exists, write_run_record
from fishflow.pipeline import internal_failure
from fishflow.pool import check_servers
from fishflow.progress import ProgressLog, Tally
from fishflow.run import (
    columns,
    entry_batches,
    held_output,
    is_run_id,
    new_run_id,
    open_run,
    run_spec,
    whole_run_totals,
)
from fishflow.settings import EnvSettings, RunSettings, validated
from fishflow.sources import check_source, estimate_rows
from tasks import reporting, runtime
from tasks.limits import PrefectSlotLeaser, give_back_leases, servers_without_limits
from tasks.prefect_run import (
    RunFailed,
    api_key,
    cancelled_state,
    deployment_context,
    tag_flow_run,
)
from tasks.sharding import cancel_child_runs, run_shards
from tasks.sources import resolve_source
from tasks.synthesis import batch_argument, synthesize_batch
from tasks.termination import SigtermWatch

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
) -> dict[str, Any] | State:
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
    settings = deployment.merged_settings(settings)
    servers = servers or DEFAULT_SERVERS
    run_id = run_id or (flow_run.name if is_run_id(flow_run.name) else new_run_id())
    if not 0.0 <= max_failed_share <= 1.0:
        raise RunFailed(f"max_failed_share must be between 0 and 1, not {max_failed_share}")
    # secret:NAME becomes the URL it holds, and the source is checked, before anything is
    # written for the run.
    readable = await resolve_source(source)
    if split_secrets(source)[1] is not None:  # too late to keep it out of Prefect: say so
        logger.warning(
            "the source parameter holds a password in plain text, which Prefect keeps with "
            "this flow run: give it as secret:NAME (a Prefect Secret block) or env:NAME"
        )
    await asyncio.to_thread(
        check_source,
        readable,
        columns=columns(settings),
        table=settings.table,
        query=settings.query,
    )
    # The lexicon is read here too: a bad one stops the run before anything is written.
    spec = await asyncio.to_thread(run_spec, settings)
    # Servers that answer as something else (a wrong URL) stop the run before anything is
    # written, as the CLI's pre-check does; servers not up yet are the pool's to wait for.
    await check_servers(settings.server_configs(servers), unreachable_ok=True)
    await tag_flow_run(source=mask(source), deployment=deployment.name, shard=shard)
    artifacts = reporting.Reporter(deployment.name, run_id)
    if shards > 1 and shard is None:
        try:
            async with (
                held_output(out=out, settings=settings, run_id=run_id),  # for its children
                SigtermWatch(),
            ):
                summary = await run_shards(
                    deployment=deployment,
                    run_id=run_id,
                    source=source,
                    out=out,
                    servers=servers,
                    settings=settings,
                    force=force,
                    api_key_secret=api_key_secret,
                    shards=shards,
                    prune=prune,
                )
        except (asyncio.CancelledError, TerminationSignal):  # run_shards cancelled the children
            if (state := await cancelled_state(run_id, out, shards=shards)) is not None:
                return state
            raise
        return await _finish(summary, artifacts, max_failed_share)

    started = time.monotonic()
    fatal: FishflowError | None = None
    # The source's size is this run's total only when it reads the whole source (not one
    # shard, not a retry of some rows).
    whole = only_rows is None and shard is None
    total_rows = (
        await asyncio.to_thread(estimate_rows, readable, table=settings.table) if whole else None
    )
    await artifacts.start(total_rows)
    # Limits shared with other runs live on a Prefect API that outlives this process; the
    # ephemeral one started for a lone `fishflow run` has nobody to share with.
    leaser = PrefectSlotLeaser(logger) if get_current_settings().api.url else None
    if leaser is not None and not settings.local_limit:
        urls = [c.url for c in settings.server_configs(servers)]
        if missing := await servers_without_limits(urls):
            raise ConfigError(
                f"no shared limit for {', '.join(missing)} on this Prefect server, which has "
                "limits for other Fish Speech servers: create one with `fishflow limits create "
                "--server URL`, or set local_limit to run with this run's own limit only"
            )
    async with (
        open_run(
            hold_output=shard is None,  # a shard writes under its parent's lock
            leaser=leaser,
            run_id=run_id,
            out=out,
            servers=servers,
            settings=settings,
            force=force,
            api_key=await api_key(api_key_secret),
            spec=spec,
        ) as (ctx, writer),
        SigtermWatch() as sigterm,
    ):
        totals = runtime.register(ctx, writer).totals
        progress: ProgressLog | None = None
        try:
            # What logs and the run record show: a database URL without its password, or the
            # env:/secret: reference that `resume` and `retry-errors` resolve again.
            shown = mask(source)
            logger.info("run %s: %s -> %s on %d server(s)", run_id, shown, out, len(servers))
            recorded: set[int] = set()
            resume = resume or await asyncio.to_thread(run_record_exists, ctx.store, run_id)
            if resume:
                assert ctx.journal is not None  # open_run always keeps one
                recorded = await asyncio.to_thread(recover, ctx.store, writer, ctx.journal)
                logger.info("run %s: resuming, %d rows already recorded", run_id, len(recorded))
            else:
                record = {
                    "source": shown,
                    "out": out,
                    "servers": servers,
                    "force": force,
                    "prune": prune,
                    "settings": settings.model_dump(),
                    "only_rows": only_rows,
                    "api_key_secret": api_key_secret,
                    "shard": shard,
                    "shards": shards,
                    "parent_run_id": parent_run_id,
                    "flow_run_id": str(flow_run.id) if flow_run.id else None,
                    "started_at": datetime.now(UTC).isoformat(),
                }
                await asyncio.to_thread(write_run_record, ctx.store, run_id, record)
            # A few batches in flight keep every server fed across batch boundaries.
            window = asyncio.Semaphore(3)
            pending: set[asyncio.Task[Any]] = set()
            present: set[str] = set()  # every id read: what is not here is gone
            batches = entry_batches(
                readable,
                settings,
                spec=spec,
                skip_rows=recorded,
                only_rows=set(only_rows) if only_rows is not None else None,
                shard=(shard, shards) if shard is not None else None,
                present=present,
                references=ctx.references,
            )
            session = new_run_id()  # part names stay unique when a run is resumed
            done_before = len(recorded)
            runtime.progress_started(done_before, total_rows)
            if not runtime.progress_shown():  # no CLI watches (a deployment's run): log it
                tally = Tally(total_rows, already=done_before)
                ctx.on_item_done = lambda row: tally.add(row.status)
                progress = ProgressLog(
                    tally,
                    lambda: (ctx.chunks_done, ctx.audio_done_s),
                    logger.info,
                    EnvSettings().progress_interval_s,
                )
                progress.start()

            async def run_batch(index: int, entries: list[Any]) -> None:
                part = f"{session}-{index:06d}"
                try:
                    counts = await synthesize_batch(run_id, part, batch_argument(entries))
                    if not isinstance(counts, dict):  # the batch ended Cancelled: the run stops
                        raise asyncio.CancelledError
                    logger.info(
                        "batch %d: %d ok, %d skipped, %d failed; %d items done",
                        index,
                        counts["ok"],
                        counts["skipped"],
                        counts["failed"],
                        done_before + totals.items,
                    )
                except CancelledRun:  # stopped mid-batch (see synthesize_batch)
                    raise asyncio.CancelledError from None
                except FishflowError as exc:
                    # A known run-level failure (the output cannot be written: disk full):
                    # one line, no traceback; the batch's rows the journal could keep are
                    # recovered by `resume`, the others are not recorded and are redone.
                    say = logger.info if exc.fatal else logger.error  # fatal: the run says it
                    say("batch %s failed: %s", part, exc.message)
                    if exc.fatal:
                        ctx.stop(exc)
                except Exception as exc:  # a bug must not lose rows: record them as failed
                    logger.exception("batch %s failed", part)
                    outcomes = [internal_failure(ctx, e, exc) for e in entries]
                    await asyncio.to_thread(writer.write_outcomes, part, outcomes)
                    totals.add(outcomes)
                finally:
                    window.release()
                await artifacts.progress(done_before + totals.items)

            index = 0
            try:
                try:
                    while True:
                        await window.acquire()
                        entries = await asyncio.to_thread(next, batches, None)
                        if entries is None:
                            window.release()
                            break
                        pending.add(asyncio.create_task(run_batch(index, entries)))
                        index += 1
                except FishflowError as exc:  # the source broke off: finish what was read
                    fatal = exc
                if pending:
                    await asyncio.gather(*pending)
            except BaseException:
                # Stopped (SIGTERM, Ctrl-C): batches in flight end here, not after the run's
                # pool and publisher are closed. What finished is in the journal.
                sigterm.stopping()
                for batch in pending:
                    batch.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                # The CLI says it itself; a cancelled run ends Cancelled after giving its slots
                # back.
                if not runtime.progress_shown() and (
                    state := await cancelled_state(run_id, out, parent_run_id=parent_run_id)
                ):
                    return state
                raise
            fatal = fatal or ctx.fatal_error
            if ctx.journal is not None and ctx.journal.remote_error:
                logger.warning("run state not kept in %s: %s", out, ctx.journal.remote_error)
            for warning in ctx.warnings:
                logger.warning(warning)
            for note in ctx.notes:
                logger.info(note)
            # Output hygiene (issue 9): only a run that read the whole source knows what is
            # gone from it; a retry of some rows or one shard sees only part of it.
            if fatal is None and whole:
                try:
                    tidied = await asyncio.to_thread(
                        tidy_output,
                        ctx.store,
                        writer,
                        run_id=run_id,
                        part=f"{session}-removed",
                        present=present,
                        previous=None if force else ctx.previous,
                        prune=prune,
                        now=ctx.now(),
                    )
                except Exception:  # the run's items are done: tidying must not lose them
                    logger.exception("run %s: could not record removed items or prune", run_id)
                else:
                    totals.removed = len(tidied.removed)
                    totals.note_pruned(tidied.pruned)
                    tidied.log(logger, run_id)
            elif prune:
                logger.warning("run %s: --prune needs a run over the whole source", run_id)
            manifests = await asyncio.to_thread(writer.finalize)
            if resume:  # its summary and exit status: the whole run's, not this session's
                totals = await asyncio.to_thread(whole_run_totals, ctx.store, run_id, totals)
            page, page_link = await reporting.write_report(ctx.store, run_id, logger)
            if ctx.journal is not None:
                ctx.journal.close(remove=True)
            wall_s = time.monotonic() - started
            utilisation = ctx.pool.utilisation(wall_s)
        finally:
            if progress is not None:
                progress.stop()
            runtime.unregister(run_id)
    summary = reporting.Summary(
        run_id=run_id,
        totals=totals,
        wall_s=wall_s,
        manifests=manifests,
        utilisation=utilisation,
        error=fatal.message if fatal else None,
        qa_on_marked=settings.qa_on_marked,
        report=page,
        report_link=page_link,
    )
    return await _finish(summary, artifacts, max_failed_share)


async def _finish(
    summary: reporting.Summary, artifacts: reporting.Reporter, max_failed_share: float
) -> dict[str, Any] | State:
    """Report the run in Prefect and choose how it ends there: Completed, or Failed when the
    run stopped early or too many of its items failed (the CLI's exit codes come from the
    same summary)."""
    logger = get_run_logger()
    totals = summary.totals
    logger.info(
        "run %s: %d ok, %d skipped, %d failed",
        summary.run_id,
        totals.ok,
        totals.skipped,
        totals.failed,
    )
    await artifacts.finish(summary)
    items_uri = summary.manifests.get("items", "")
    if summary.error is not None:
        raise RunFailed(f"{summary.error} (manifests: {items_uri})")
    result = summary.as_dict()
    if totals.too_many_failed(max_failed_share):
        return Failed(
            message=(
                f"{totals.failed} of {totals.items} items failed (max_failed_share "
                f"{max_failed_share:g}); manifests: {items_uri}"
            ),
            data=result,
        )
    return result
