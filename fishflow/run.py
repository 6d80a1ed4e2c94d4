"""The pieces of one run that are not Prefect's business: ids, wiring, batching, summary."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from fishflow import report
from fishflow.chunking import chunk_budget
from fishflow.context import open_run
from fishflow.errors import FishflowError
from fishflow.hygiene import Tidied, tidy_output
from fishflow.items import Item, Rejection, RunSpec, validate_row
from fishflow.lexicon import load_lexicon
from fishflow.manifest import ItemRow, ManifestWriter, merge_runs, read_items, recover
from fishflow.memory import use_one_arena
from fishflow.outcomes import ItemOutcome, internal_failure
from fishflow.pool import SlotLeaser
from fishflow.processing import process_batch
from fishflow.progress import ProgressLog, Tally
from fishflow.record import (
    Failure,
    RunRecord,
    RunRequest,
    RunSummary,
    ShardRun,
    run_record_exists,
    write_run_record,
)
from fishflow.settings import (
    AudioSettings,
    CaptionSettings,
    ChunkSettings,
    RunSettings,
    TextSettings,
)
from fishflow.sources import Columns, FileLimits, SourceRow, estimate_rows, read_source
from fishflow.storage import Store, browser_url
from fishflow.voices import ReferenceFiles, resolve

logger = logging.getLogger("fishflow.run")
Log = logging.Logger | logging.LoggerAdapter[Any]
use_one_arena()  # at import: before a run's threads first allocate (see fishflow.memory)

_RUN_ID = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}(-s[0-9]+)?$")


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def is_run_id(name: str | None) -> bool:
    """Whether `name` has the shape of a run id (a flow run named after its fishflow run)."""
    return bool(name and _RUN_ID.match(name))


def shard_run_id(run_id: str, shard: int) -> str:
    return f"{run_id}-s{shard}"


def shard_of(key: str, shards: int) -> int:
    """A stable partition of source rows: the same id lands in the same shard on every run and
    every machine (so duplicates of an id still meet, and a re-run finds its earlier work)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def run_spec(settings: RunSettings) -> RunSpec:
    return RunSpec(
        options=settings.synthesis_options(),
        audio=AudioSettings(
            format=settings.audio_format,
            pause_clause_ms=settings.pause_clause_ms,
            pause_sentence_ms=settings.pause_sentence_ms,
            pause_paragraph_ms=settings.pause_paragraph_ms,
            pause_section_ms=settings.pause_section_ms,
            loudness=settings.loudness,
            loudness_target=settings.loudness_target,
        ),
        chunking=ChunkSettings(
            max_bytes=chunk_budget(
                max_new_tokens=settings.max_new_tokens, chunk_bytes=settings.chunk_bytes
            )
        ),
        text=TextSettings(
            format=settings.text_format,
            code=settings.markdown_code,
            images=settings.markdown_images,
            tables=settings.markdown_tables,
            numbers=settings.normalize == "on",
            lexicon=load_lexicon(settings.lexicon) if settings.lexicon else (),
            max_code_chars=settings.inline_code_max_chars,
        ),
        captions=CaptionSettings(captions=settings.captions, chapters=settings.chapters),
        qa=settings.qa_settings(),
    )


def columns(settings: RunSettings) -> Columns:
    return Columns(
        settings.id_column,
        settings.text_column,
        settings.language_column,
        settings.voice_column,
        reference_audio=settings.reference_audio_column,
        reference_text=settings.reference_text_column,
    )


def _validated(
    row: SourceRow, spec: RunSpec, seen: dict[str, int], references: ReferenceFiles
) -> Item | Rejection:
    """``validate_row``, where a bug on one row's text fails that row, not the whole run."""
    try:
        return validate_row(row, spec, seen, references=references)
    except FishflowError:
        raise
    except Exception as exc:
        logger.exception("row %d: could not read its text", row.row)
        item_id = row.item_id.strip() if row.item_id else None
        reason = f"internal error reading its text ({type(exc).__name__}: {exc}): please report it"
        return Rejection(row.row, item_id, reason)


@dataclass(frozen=True, slots=True)
class SourceBatch:
    entries: list[Item | Rejection]  # may be empty: every row of it skipped
    ids: set[str]  # every id read in it


def entry_batches(
    source: str,
    settings: RunSettings,
    spec: RunSpec,
    *,
    skip_rows: set[int] | None = None,
    only_rows: set[int] | None = None,
    shard: tuple[int, int] | None = None,
    references: ReferenceFiles | None = None,
) -> Iterator[SourceBatch]:
    """Validated batches of the source, in order; duplicate ids are caught across batches.

    ``skip_rows`` (already recorded by this run) and rows outside ``only_rows`` (a retry of
    failed rows) are validated, so ids stay checked for duplicates, but not returned.
    ``shard`` = (index, count) keeps only the rows of that partition (by id, else row number).
    Each batch also names the id of every row read (valid or not, kept or not), so that a run
    knows, once the source is read to its end, which earlier items are gone from it.
    Reference recordings are read through ``references`` (pass the run's, so that each is
    read once); relative paths are relative to the source's folder.
    """
    seen: dict[str, int] = {}  # id (and audio name) -> its row
    references = references if references is not None else ReferenceFiles()
    for rows in read_source(
        source,
        columns(settings),
        batch_rows=settings.batch_size,
        table=settings.table,
        query=settings.query,
        limits=FileLimits(settings.max_file_bytes, settings.follow_symlinks),
    ):
        if shard is not None:
            index, count = shard
            rows = [
                r for r in rows
                if shard_of((r.item_id or "").strip() or f"row:{r.row}", count) == index
            ]  # fmt: skip
        ids = {i for r in rows if (i := (r.item_id or "").strip())}
        rows = [
            dataclasses.replace(row, reference_audio=resolve(row.reference_audio, source))
            if row.reference_audio
            else row
            for row in rows
        ]
        entries = [_validated(row, spec, seen, references) for row in rows]
        if skip_rows or only_rows is not None:
            entries = [
                e for e in entries
                if (not skip_rows or e.row not in skip_rows)
                and (only_rows is None or e.row in only_rows)
            ]  # fmt: skip
        yield SourceBatch(entries, ids)


REPORTED = 50  # failures and pruned files a run's summary names (the manifests hold them all)
BATCHES_IN_FLIGHT = 3  # a few batches at once keep every server fed across batch boundaries


@dataclass
class RunTotals:
    """A run's counts as its batches finish (the summary's numbers)."""

    ok: int = 0
    skipped: int = 0
    failed: int = 0
    removed: int = 0  # items gone from the source: extra manifest rows, not among `items`
    marked: int = 0  # published (ok) with a chunk whose every answer was suspect
    pruned: int = 0  # files deleted by --prune
    pruned_files: list[str] = field(default_factory=list)  # first few, for reports
    audio_seconds: float = 0.0
    failures: list[Failure] = field(default_factory=list)  # first few, for reports

    def add(self, outcomes: list[ItemOutcome]) -> None:
        for o in outcomes:
            self._count(o.item.status, o.item.duration_s, o.item.qa)
            if o.item.status == "failed" and len(self.failures) < REPORTED:
                self.failures.append(
                    Failure(item_id=o.item.item_id, source_row=o.item.source_row,
                            error=o.item.error or "")
                )  # fmt: skip

    def _count(self, status: str, duration_s: float | None, qa: str | None) -> None:
        setattr(self, status, getattr(self, status) + 1)
        if status == "ok" and duration_s:
            self.audio_seconds += duration_s
        if status == "ok" and qa == "marked":
            self.marked += 1

    def note_pruned(self, uris: list[str]) -> None:
        self.pruned, self.pruned_files = len(uris), uris[:REPORTED]

    @property
    def items(self) -> int:
        return self.ok + self.skipped + self.failed

    @classmethod
    def from_items(cls, rows: Iterable[dict[str, Any]]) -> RunTotals:
        """Totals of an items manifest read back (a resumed run, a sharded run's merge)."""
        totals = cls()
        for row in rows:
            totals._count(row["status"], row["duration_s"], row.get("qa"))
            if row["status"] == "failed" and len(totals.failures) < REPORTED:
                totals.failures.append(
                    Failure(item_id=row["item_id"], source_row=row["source_row"],
                            error=row["error"] or "")
                )  # fmt: skip
        return totals

    def summary(self, run_id: str, *, wall_s: float, **fields: Any) -> RunSummary:
        return RunSummary(
            run_id=run_id,
            ok=self.ok,
            skipped=self.skipped,
            failed=self.failed,
            marked=self.marked,
            removed=self.removed,
            pruned=self.pruned,
            pruned_files=self.pruned_files,
            audio_seconds=round(self.audio_seconds, 3),
            wall_seconds=round(wall_s, 3),
            failures=self.failures,
            **fields,
        )


TOTALS_COLUMNS = ["item_id", "source_row", "status", "duration_s", "error", "qa"]


def whole_run_totals(store: Store, run_id: str, session: RunTotals) -> RunTotals:
    """A resumed run's totals: every item of its final manifest, those finished by earlier
    sessions too, so that its summary and exit status are those of the whole run."""
    totals = RunTotals.from_items(read_items(store, run_id, TOTALS_COLUMNS))
    totals.pruned, totals.pruned_files = session.pruned, session.pruned_files
    return totals


def write_report(store: Store, run_id: str, log: Log) -> tuple[str | None, str | None]:
    """Write the run's report.html (manifests final); returns its URI and a link to it, or
    (None, None) if it could not be written: the page is never a reason to fail a run."""
    try:
        uri = report.write_report(store, run_id)
    except Exception:
        log.exception("run %s: report.html not written", run_id)
        return None, None
    log.info("run %s: report %s", run_id, uri)
    # Never a presigned link: it carries the signer's access key id (and a session token with
    # temporary credentials). The console opens an S3 page for whoever may read it.
    return uri, browser_url(uri)


@dataclass(frozen=True, slots=True)
class Batch:
    """One batch of a run's items: what a step (a Prefect task run) is handed."""

    index: int
    part: str  # its manifest part's name: unique within the run, across resumed sessions
    entries: list[Item | Rejection]


@dataclass(frozen=True, slots=True)
class BatchCounts:
    ok: int
    skipped: int
    failed: int


class Step(Protocol):
    """Where a batch runs: ``Run.process`` itself, or wrapped (a Prefect task run). Returns
    None when the batch was cancelled: the run then stops."""

    def __call__(self, run: Run, batch: Batch) -> Awaitable[BatchCounts | None]: ...


async def direct(run: Run, batch: Batch) -> BatchCounts | None:
    return await run.process(batch)


class ProgressListener(Protocol):
    """Who shows a run's progress (the CLI's bar)."""

    def start(self, already: int, total: int | None) -> None: ...

    def update(self, row: ItemRow) -> None: ...


class RunReporter(Protocol):
    """Who publishes a run's progress elsewhere (Prefect's artifacts)."""

    async def start(self, total_rows: int | None) -> None: ...

    async def progress(self, done: int) -> None: ...


# The CLI's progress bar for the run this process executes (a run started through Prefect
# cannot be handed a callable as a parameter). Unset: the run logs its progress itself.
progress_listener: ContextVar[ProgressListener | None] = ContextVar(
    "fishflow_progress_listener", default=None
)


class Run:
    """One run, from its output's lock to its summary: opens it (lock, record, journal),
    feeds its batches to a step, keeps totals and progress, tidies the output, finalises the
    manifests and returns a ``RunSummary``. Knows nothing of Prefect: a flow hands it a step
    that runs each batch as a task run; tests and tools hand it ``direct``."""

    def __init__(
        self,
        request: RunRequest,
        *,
        source: str,
        spec: RunSpec,
        api_key: str | None = None,
        leaser: SlotLeaser | None = None,
        resume: bool = False,
        flow_run_id: str | None = None,
        log: Log = logger,
        listener: ProgressListener | None = None,
        reporter: RunReporter | None = None,
        progress_interval_s: float = 60.0,
    ) -> None:
        self.request = request
        self.source = source  # readable: env:/secret: resolved, a URL's password in place
        self.spec = spec
        self.totals = RunTotals()
        self._api_key = api_key
        self._leaser = leaser
        self._resume = resume
        self._flow_run_id = flow_run_id
        self._log = log
        self._listener = listener
        self._reporter = reporter
        self._progress_interval_s = progress_interval_s
        self._done_before = 0  # items finished by earlier sessions of a resumed run
        self._present: set[str] = set()  # every id read: earlier items not here are gone
        self._session = new_run_id()  # part names stay unique when a run is resumed
        self._stopping: Callable[[], None] | None = None

    @property
    def run_id(self) -> str:
        return self.request.run_id

    async def execute(
        self, step: Step = direct, *, stopping: Callable[[], None] | None = None
    ) -> RunSummary:
        """Run it to its summary. `stopping` is called as soon as the run starts to stop from
        outside (cancelled, SIGTERM, Ctrl-C), before it ends its batches in flight."""
        self._stopping = stopping
        started = time.monotonic()
        req = self.request
        total = (
            await asyncio.to_thread(estimate_rows, self.source, table=req.settings.table)
            if req.whole
            else None
        )
        if self._reporter is not None:
            await self._reporter.start(total)
        async with open_run(
            hold_output=req.shard is None,  # a shard writes under its parent's lock
            leaser=self._leaser,
            run_id=req.run_id,
            out=req.out,
            servers=req.servers,
            settings=req.settings,
            force=req.force,
            api_key=self._api_key,
            spec=self.spec,
        ) as (ctx, writer):
            self._ctx, self._writer = ctx, writer
            self._log.info(
                "run %s: %s -> %s on %d server(s)", req.run_id, req.source, req.out,
                len(req.servers),
            )  # fmt: skip
            recorded = await self._record_or_recover()
            progress = self._show_progress(total)
            try:
                fatal = await self._feed(step, recorded)
            finally:
                if progress is not None:
                    progress.stop()
            return await self._finish(fatal, started)

    async def process(self, batch: Batch) -> BatchCounts:
        """Synthesise, stitch and publish a batch, then record it in a manifest part."""
        outcomes = await process_batch(self._ctx, batch.entries)
        await asyncio.to_thread(self._writer.write_outcomes, batch.part, outcomes)
        if self._ctx.journal is not None:  # in a part now: their journal segments may go
            self._ctx.journal.settle(o.item.source_row for o in outcomes)
        self.totals.add(outcomes)
        statuses = [o.item.status for o in outcomes]
        return BatchCounts(*(statuses.count(s) for s in ("ok", "skipped", "failed")))

    async def _record_or_recover(self) -> set[int]:
        """Rows an earlier session of this run recorded (resumed), or none (a new run, whose
        record is written now)."""
        store, req = self._ctx.store, self.request
        self._resume = self._resume or await asyncio.to_thread(run_record_exists, store, req.run_id)
        if not self._resume:
            record = RunRecord(**dict(req), flow_run_id=self._flow_run_id)
            await asyncio.to_thread(write_run_record, store, record)
            return set()
        assert self._ctx.journal is not None  # open_run always keeps one
        recorded = await asyncio.to_thread(recover, store, self._writer, self._ctx.journal)
        self._log.info("run %s: resuming, %d rows already recorded", req.run_id, len(recorded))
        self._done_before = len(recorded)
        return recorded

    def _show_progress(self, total: int | None) -> ProgressLog | None:
        if self._listener is not None:
            self._listener.start(self._done_before, total)
            self._ctx.on_item_done = self._listener.update
            return None
        tally = Tally(total, already=self._done_before)
        self._ctx.on_item_done = lambda row: tally.add(row.status)
        progress = ProgressLog(
            tally,
            lambda: (self._ctx.chunks_done, self._ctx.audio_done_s),
            self._log.info,
            self._progress_interval_s,
        )
        progress.start()
        return progress

    async def _feed(self, step: Step, recorded: set[int]) -> FishflowError | None:
        """Read the source batch by batch and run up to BATCHES_IN_FLIGHT batches at once.
        Returns why the run stopped early (the source broke off, the output cannot be
        written), or None. Stopped from outside (cancelled, SIGTERM, Ctrl-C), it ends the
        batches in flight before it lets go: what they finished is in the journal."""
        req = self.request
        batches = entry_batches(
            self.source,
            req.settings,
            spec=self.spec,
            skip_rows=recorded,
            only_rows=set(req.only_rows) if req.only_rows is not None else None,
            shard=(req.shard, req.shards) if req.shard is not None else None,
            references=self._ctx.references,
        )
        window = asyncio.Semaphore(BATCHES_IN_FLIGHT)
        pending: set[asyncio.Task[None]] = set()
        feeder = asyncio.current_task()
        assert feeder is not None
        # A batch handles every Exception itself; what leaves one is a stop (SIGTERM inside
        # Prefect's task engine, a cancelled task run): it stops the whole run at once, not
        # after the rest of the source has been sent.
        stop: list[BaseException] = []
        closing = False

        def settled(task: asyncio.Task[None]) -> None:
            pending.discard(task)
            reason = asyncio.CancelledError() if task.cancelled() else task.exception()
            if reason is not None and not stop and not closing:
                stop.append(reason)
                feeder.cancel()

        stopped: FishflowError | None = None
        index = 0
        try:
            while True:
                await window.acquire()
                try:
                    read = await asyncio.to_thread(next, batches, None)
                except FishflowError as exc:  # the source broke off: finish what was read
                    stopped, read = exc, None
                if read is None:
                    break
                self._present.update(read.ids)
                if not read.entries:
                    window.release()
                    continue
                batch = Batch(index, f"{self._session}-{index:06d}", read.entries)
                task = asyncio.create_task(self._run_batch(step, batch, window))
                pending.add(task)
                task.add_done_callback(settled)
                index += 1
            while pending:
                await asyncio.wait(pending)
        except BaseException as exc:
            closing = True
            if self._stopping is not None:
                self._stopping()
            for task in list(pending):
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if stop and isinstance(exc, asyncio.CancelledError):
                feeder.uncancel()
                raise stop[0] from None
            raise
        return stopped or self._ctx.fatal_error

    async def _run_batch(self, step: Step, batch: Batch, window: asyncio.Semaphore) -> None:
        try:
            counts = await step(self, batch)
            if counts is None:  # the batch ended cancelled: the run stops
                raise asyncio.CancelledError
            self._log.info(
                "batch %d: %d ok, %d skipped, %d failed; %d items done",
                batch.index, counts.ok, counts.skipped, counts.failed,
                self._done_before + self.totals.items,
            )  # fmt: skip
        except FishflowError as exc:
            # A known run-level failure (the output cannot be written: disk full): one line,
            # no traceback. The batch's rows the journal kept are recovered by `resume`; the
            # others are not recorded and are redone.
            if exc.fatal:  # the run says it, once
                self._log.info("batch %s failed: %s", batch.part, exc.message)
                self._ctx.stop(exc)
            else:
                self._log.error("batch %s failed: %s", batch.part, exc.message)
        except Exception as exc:  # a bug must not lose rows: record them as failed
            self._log.exception("batch %s failed", batch.part)
            outcomes = [internal_failure(self._ctx, e, exc) for e in batch.entries]
            await asyncio.to_thread(self._writer.write_outcomes, batch.part, outcomes)
            self.totals.add(outcomes)
        finally:
            window.release()
        if self._reporter is not None:
            await self._reporter.progress(self._done_before + self.totals.items)

    async def _finish(self, fatal: FishflowError | None, started: float) -> RunSummary:
        ctx, req = self._ctx, self.request
        if ctx.journal is not None and ctx.journal.remote_error:
            self._log.warning("run state not kept in %s: %s", req.out, ctx.journal.remote_error)
        for warning in ctx.warnings:
            self._log.warning(warning)
        for note in ctx.notes:
            self._log.info(note)
        # Only a run that read the whole source knows what is gone from it.
        if fatal is None and req.whole:
            await asyncio.to_thread(self._tidy)
        elif req.prune:
            self._log.warning("run %s: --prune needs a run over the whole source", req.run_id)
        manifests = await asyncio.to_thread(self._writer.finalize)
        totals = self.totals
        if self._resume:  # its summary and exit status: the whole run's, not this session's
            totals = await asyncio.to_thread(whole_run_totals, ctx.store, req.run_id, totals)
        page, page_link = await asyncio.to_thread(write_report, ctx.store, req.run_id, self._log)
        if ctx.journal is not None:
            ctx.journal.close(remove=True)
        wall_s = time.monotonic() - started
        return totals.summary(
            req.run_id,
            wall_s=wall_s,
            manifests=manifests,
            utilisation=ctx.pool.utilisation(wall_s),
            error=fatal.message if fatal else None,
            qa_on_marked=req.settings.qa_on_marked,
            report=page,
            report_link=page_link,
        )

    def _tidy(self) -> None:
        """Record items gone from the source, and prune (issue 9)."""
        ctx, req = self._ctx, self.request
        try:
            tidied = tidy_output(
                ctx.store,
                self._writer,
                run_id=req.run_id,
                part=f"{self._session}-removed",
                present=self._present,
                previous=None if req.force else ctx.previous,
                prune=req.prune,
                now=ctx.now(),
            )
        except Exception:  # the run's items are done: tidying must not lose them
            self._log.exception("run %s: could not record removed items or prune", req.run_id)
            return
        self.totals.removed = len(tidied.removed)
        self.totals.note_pruned(tidied.pruned)
        tidied.log(self._log, req.run_id)


def finish_sharded(
    store: Store,
    record: RunRecord,
    children: list[ShardRun],
    *,
    started: float,
    log: Log = logger,
) -> RunSummary:
    """A sharded run's end, once its children are done: their manifests merged into one
    under the parent's run id, removed items recorded (the parent saw the whole source through
    its children), the record completed, the report written."""
    tidied = Tidied()

    def tidy(writer: ManifestWriter, present: set[str]) -> None:
        nonlocal tidied
        try:
            tidied = tidy_output(
                store, writer, run_id=record.run_id, part="removed", present=present,
                previous=None, prune=record.prune, now=datetime.now(UTC),
            )  # fmt: skip
        except Exception:  # the shards' items are done: tidying must not lose them
            log.exception("run %s: could not record removed items or prune", record.run_id)

    child_ids = [c.run_id for c in children]
    manifests = merge_runs(store, record.run_id, child_ids, before_finalize=tidy)
    tidied.log(log, record.run_id)
    done = record.model_copy(update={"shard_runs": children, "finished_at": datetime.now(UTC)})
    write_run_record(store, done)
    page, page_link = write_report(store, record.run_id, log)
    totals = RunTotals.from_items(read_items(store, record.run_id, TOTALS_COLUMNS))
    totals.note_pruned(tidied.pruned)
    return totals.summary(
        record.run_id,
        wall_s=time.monotonic() - started,
        manifests=manifests,
        shards=children,
        qa_on_marked=record.settings.qa_on_marked,
        report=page,
        report_link=page_link,
    )
