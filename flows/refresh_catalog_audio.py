"""The catalog refresh: every row of a source to published audio and a Parquet manifest."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact
from prefect.settings import get_current_settings

from fishflow.database import mask
from fishflow.errors import FishflowError
from fishflow.manifest import recover, write_run_record
from fishflow.pipeline import internal_failure
from fishflow.run import RunTotals, entry_batches, new_run_id, open_run, run_spec
from fishflow.settings import EnvSettings, RunSettings, validated
from tasks import runtime
from tasks.limits import PrefectSlotLeaser
from tasks.sources import resolve_source
from tasks.synthesis import batch_argument, synthesize_batch

DEFAULT_SERVERS = ["http://127.0.0.1:8080"]


class RunFailed(FishflowError):
    """The run stopped early; the manifests account for every row read so far."""

    fatal = True


def _api_key(secret_block: str | None) -> str | None:
    if secret_block:
        from prefect.blocks.system import Secret

        return Secret.load(secret_block).get()
    key = EnvSettings().api_key
    return key.get_secret_value() if key else None


def _report(
    run_id: str,
    totals: RunTotals,
    wall_s: float,
    manifests: dict[str, str],
    utilisation: dict[str, float],
    fatal: str | None,
) -> str:
    lines = [
        f"# fishflow run `{run_id}`",
        "",
        "| ok | skipped | failed | audio seconds | wall seconds |",
        "|---|---|---|---|---|",
        f"| {totals.ok} | {totals.skipped} | {totals.failed} "
        f"| {totals.audio_seconds:.1f} | {wall_s:.1f} |",
        "",
        "Server utilisation: " + ", ".join(f"{u}: {v:.0%}" for u, v in utilisation.items()),
        "",
        *(f"- {name}: `{uri}`" for name, uri in manifests.items()),
    ]
    if fatal:
        lines += ["", f"**Run stopped:** {fatal}"]
    if totals.failures:
        lines += ["", "| item | row | error |", "|---|---|---|"]
        lines += [f"| {i} | {r} | {e[:120]} |" for i, r, e in totals.failures]
    return "\n".join(lines)


@flow(name="refresh-catalog-audio")
async def refresh_catalog_audio(
    source: str,
    out: str,
    servers: list[str] | None = None,
    settings: RunSettings | None = None,
    force: bool = False,
    run_id: str | None = None,
    api_key_secret: str | None = None,
    resume: bool = False,
    only_rows: list[int] | None = None,
) -> dict[str, Any]:
    """Synthesise every row of `source` on the Fish Speech `servers` and publish audio to `out`.

    Items whose text, voice and settings are unchanged since an earlier run of the same `out`
    are skipped (unless `force`). Manifests land in `<out>/manifests/run=<run_id>/`. The API key
    comes from the Prefect Secret block `api_key_secret`, or FISHFLOW_API_KEY.
    `resume` continues run `run_id` where it stopped; `only_rows` limits the run to those
    source rows (what `retry-errors` uses).
    `source` may be a database URL read with `settings.table` or `settings.query`, `env:NAME`
    (the source held by an environment variable) or `secret:NAME` (by a Prefect Secret block);
    a URL's password is masked in logs and in the run record.
    """
    logger = get_run_logger()
    settings = settings or RunSettings()
    if isinstance(settings, dict):
        settings = validated(RunSettings, **settings)  # type: ignore[assignment]
    servers = servers or DEFAULT_SERVERS
    run_id = run_id or new_run_id()
    spec = run_spec(settings)
    started = time.monotonic()
    fatal: FishflowError | None = None
    # Limits shared with other runs live on a Prefect API that outlives this process; the
    # ephemeral one started for a lone `fishflow run` has nobody to share with.
    leaser = PrefectSlotLeaser(logger) if get_current_settings().api.url else None
    async with open_run(
        leaser=leaser,
        run_id=run_id,
        out=out,
        servers=servers,
        settings=settings,
        force=force,
        api_key=_api_key(api_key_secret),
    ) as (ctx, writer):
        totals = runtime.register(ctx, writer).totals
        try:
            # What logs and the run record show: a database URL without its password, or the
            # env:/secret: reference that `resume` and `retry-errors` resolve again.
            shown = mask(source)
            logger.info("run %s: %s -> %s on %d server(s)", run_id, shown, out, len(servers))
            recorded: set[int] = set()
            if resume:
                recorded = await asyncio.to_thread(recover, ctx.store, writer, ctx.journal)
                logger.info("run %s: resuming, %d rows already recorded", run_id, len(recorded))
            else:
                record = {
                    "source": shown,
                    "out": out,
                    "servers": servers,
                    "force": force,
                    "settings": settings.model_dump(),
                    "only_rows": only_rows,
                    "api_key_secret": api_key_secret,
                    "started_at": datetime.now(UTC).isoformat(),
                }
                await asyncio.to_thread(write_run_record, ctx.store, run_id, record)
            # A few batches in flight keep every server fed across batch boundaries.
            window = asyncio.Semaphore(3)
            pending: set[asyncio.Task[Any]] = set()
            batches = entry_batches(
                await resolve_source(source),
                settings,
                spec,
                skip_rows=recorded,
                only_rows=set(only_rows) if only_rows is not None else None,
            )
            session = new_run_id()  # part names stay unique when a run is resumed

            async def run_batch(index: int, entries: list[Any]) -> None:
                part = f"{session}-{index:06d}"
                try:
                    await synthesize_batch(run_id, part, batch_argument(entries))
                except Exception as exc:  # a bug must not lose rows: record them as failed
                    logger.exception("batch %s failed", part)
                    outcomes = [internal_failure(ctx, e, exc) for e in entries]
                    await asyncio.to_thread(writer.write_outcomes, part, outcomes)
                    totals.add(outcomes)
                finally:
                    window.release()

            index = 0
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
            fatal = fatal or ctx.fatal_error
            if ctx.journal is not None and ctx.journal.remote_error:
                logger.warning("run state not kept in %s: %s", out, ctx.journal.remote_error)
            for warning in ctx.warnings:
                logger.warning(warning)
            manifests = await asyncio.to_thread(writer.finalize)
            if ctx.journal is not None:
                ctx.journal.close(remove=True)
            wall_s = time.monotonic() - started
            utilisation = ctx.pool.utilisation(wall_s)
        finally:
            runtime.unregister(run_id)
    report = _report(
        run_id, totals, wall_s, manifests, utilisation, fatal.message if fatal else None
    )
    await acreate_markdown_artifact(
        report, key="fishflow-run", description=f"fishflow run {run_id}"
    )
    summary = {
        "run_id": run_id,
        "ok": totals.ok,
        "skipped": totals.skipped,
        "failed": totals.failed,
        "audio_seconds": round(totals.audio_seconds, 3),
        "wall_seconds": round(wall_s, 3),
        "manifests": manifests,
        "utilisation": utilisation,
        "error": fatal.message if fatal else None,
    }
    logger.info(
        "run %s: %d ok, %d skipped, %d failed", run_id, totals.ok, totals.skipped, totals.failed
    )
    if fatal is not None:
        raise RunFailed(f"{fatal.message} (manifests: {manifests['items']})")
    return summary
