"""The pieces of one run that are not Prefect's business: ids, wiring, batching, summary."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import hashlib
import logging
import os
import re
import secrets
from collections.abc import AsyncIterator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fishflow.chunk_cache import ChunkCache
from fishflow.chunking import chunk_budget
from fishflow.context import RunContext
from fishflow.errors import FishflowError
from fishflow.incremental import existing_audio, load_previous
from fishflow.items import Item, Rejection, RunSpec, validate_row
from fishflow.lexicon import load_lexicon
from fishflow.lock import held_output_lock
from fishflow.manifest import Journal, ManifestWriter, journal_dir, read_items
from fishflow.memory import use_one_arena
from fishflow.outcomes import ItemOutcome
from fishflow.pool import ServerPool, SlotLeaser
from fishflow.settings import (
    AudioSettings,
    CaptionSettings,
    ChunkSettings,
    RunSettings,
    TextSettings,
)
from fishflow.sources import Columns, FileLimits, SourceRow, read_source
from fishflow.storage import Store, open_store, state_dir
from fishflow.voices import ReferenceFiles, resolve

logger = logging.getLogger("fishflow.run")
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


def entry_batches(
    source: str,
    settings: RunSettings,
    spec: RunSpec,
    *,
    skip_rows: set[int] | None = None,
    only_rows: set[int] | None = None,
    shard: tuple[int, int] | None = None,
    present: set[str] | None = None,
    references: ReferenceFiles | None = None,
) -> Iterator[list[Item | Rejection]]:
    """Validated batches of the source, in order; duplicate ids are caught across batches.

    ``skip_rows`` (already recorded by this run) and rows outside ``only_rows`` (a retry of
    failed rows) are validated, so ids stay checked for duplicates, but not returned.
    ``shard`` = (index, count) keeps only the rows of that partition (by id, else row number).
    ``present``, when given, collects the id of every row read (valid or not), so that the
    caller knows, once the source is read to its end, which earlier items are gone.
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
        if present is not None:
            present.update(i for r in rows if (i := (r.item_id or "").strip()))
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
        if entries:
            yield entries


REPORTED = 50  # failures and pruned files a run's summary names (the manifests hold them all)


@dataclass
class RunTotals:
    ok: int = 0
    skipped: int = 0
    failed: int = 0
    removed: int = 0  # items gone from the source: extra manifest rows, not among `items`
    marked: int = 0  # published (ok) with a chunk whose every answer was suspect
    pruned: int = 0  # files deleted by --prune
    pruned_files: list[str] = field(default_factory=list)  # first few, for reports
    audio_seconds: float = 0.0
    failures: list[tuple[str | None, int, str]] = field(
        default_factory=list
    )  # first few, for reports

    def add(self, outcomes: list[ItemOutcome]) -> None:
        for o in outcomes:
            row = o.item
            setattr(self, row.status, getattr(self, row.status) + 1)
            if row.status == "ok" and row.duration_s:
                self.audio_seconds += row.duration_s
            if row.status == "ok" and row.qa == "marked":
                self.marked += 1
            if row.status == "failed" and len(self.failures) < REPORTED:
                self.failures.append((row.item_id, row.source_row, row.error or ""))

    def note_pruned(self, uris: list[str]) -> None:
        self.pruned, self.pruned_files = len(uris), uris[:REPORTED]

    @property
    def items(self) -> int:
        return self.ok + self.skipped + self.failed

    def too_many_failed(self, max_failed_share: float) -> bool:
        """Whether the share of failed items is over what the run accepts."""
        return self.failed > 0 and self.failed > max_failed_share * self.items

    @classmethod
    def from_items(cls, rows: Iterable[dict[str, Any]]) -> RunTotals:
        """Totals of an items manifest read back (a sharded run's merged manifest)."""
        totals = cls()
        for row in rows:
            status = row["status"]
            setattr(totals, status, getattr(totals, status) + 1)
            if status == "ok" and row["duration_s"]:
                totals.audio_seconds += row["duration_s"]
            if status == "ok" and row.get("qa") == "marked":
                totals.marked += 1
            if status == "failed" and len(totals.failures) < REPORTED:
                totals.failures.append((row["item_id"], row["source_row"], row["error"] or ""))
        return totals


def whole_run_totals(store: Store, run_id: str, session: RunTotals) -> RunTotals:
    """A resumed run's totals: every item of its final manifest, those finished by earlier
    sessions too, so that its summary and exit status are those of the whole run."""
    columns = ["item_id", "source_row", "status", "duration_s", "error"]
    totals = RunTotals.from_items(read_items(store, run_id, columns))
    totals.pruned, totals.pruned_files = session.pruned, session.pruned_files
    return totals


@asynccontextmanager
async def open_run(
    *,
    run_id: str,
    out: str,
    servers: list[str],
    settings: RunSettings,
    force: bool,
    api_key: str | None,
    leaser: SlotLeaser | None = None,
    hold_output: bool = True,
    spec: RunSpec | None = None,
) -> AsyncIterator[tuple[RunContext, ManifestWriter]]:
    """Build everything a run's batches share, and close it when the run ends. `spec`: the
    run's spec when the caller already made it (its lexicon is then read once, and the
    batches are validated with the very spec their items are synthesised with).

    The output's lock is taken first, before anything is written or read for change detection:
    a second run on the same output stops here (or waits `settings.wait_for_lock` seconds).
    `hold_output=False` is for a shard of a sharded run, whose parent holds the output.
    """
    store = await asyncio.to_thread(open_store, out, settings.sse)
    pool_ref: list[ServerPool] = []

    def lost(exc: FishflowError) -> None:  # another run took the output: stop sending
        for pool in pool_ref:
            pool.stop(exc)

    async with (
        held_output_lock(
            store,
            run_id=run_id,
            ttl_s=settings.lock_ttl_s,
            wait_s=settings.wait_for_lock,
            on_lost=lost,
        )
        if hold_output
        else contextlib.nullcontext(),
        _open_run(
            store=store,
            run_id=run_id,
            servers=servers,
            settings=settings,
            force=force,
            api_key=api_key,
            leaser=leaser,
            pool_ref=pool_ref,
            spec=spec or run_spec(settings),
        ) as opened,
    ):
        yield opened


@asynccontextmanager
async def held_output(*, out: str, settings: RunSettings, run_id: str) -> AsyncIterator[None]:
    """Hold `out` for a run that does not open one itself (the parent of a sharded run, whose
    children write the output under its lock)."""
    store = await asyncio.to_thread(open_store, out, settings.sse)

    def lost(exc: FishflowError) -> None:
        logger.error("%s", exc.message)  # the children cannot be stopped from here

    async with held_output_lock(
        store,
        run_id=run_id,
        ttl_s=settings.lock_ttl_s,
        wait_s=settings.wait_for_lock,
        on_lost=lost,
    ):
        yield


@asynccontextmanager
async def _open_run(
    *,
    store: Store,
    run_id: str,
    servers: list[str],
    settings: RunSettings,
    force: bool,
    api_key: str | None,
    leaser: SlotLeaser | None,
    pool_ref: list[ServerPool],
    spec: RunSpec,
) -> AsyncIterator[tuple[RunContext, ManifestWriter]]:
    """What a run builds once it holds its output; the pool goes into `pool_ref` so that a
    lost output lock can stop it."""
    # Next to a local output; for an S3 output on this machine, so the next run here re-uses it.
    cache_dir = settings.chunk_cache or os.path.join(state_dir(store), "chunks")
    previous = {} if force else await asyncio.to_thread(load_previous, store, run_id)
    # Also under --force: what is published decides which caption files a republished item
    # leaves behind (see ItemPublisher.existing_sidecars).
    existing = await asyncio.to_thread(existing_audio, store) if previous or force else set()
    pool = ServerPool(
        settings.server_configs(servers),
        api_key=api_key,
        encoding=settings.encoding,
        retry=settings.retry_policy(),
        leaser=leaser,
        slot_tenure_s=settings.slot_tenure_s,
    )
    pool_ref.append(pool)
    # An S3 output keeps the run's state (journal, chunk audio) in itself too, so that a run
    # resumed or re-run on a fresh machine redoes only what was in flight; the local copies
    # stay in front as the fast layer. A local output already holds it (<out>/.fishflow).
    remote = store if store.remote and settings.state_in_output else None
    journal = Journal(journal_dir(store), run_id, remote=remote)
    publisher = ThreadPoolExecutor(store.write_threads, thread_name_prefix="fishflow-publish")
    ctx = RunContext(
        journal=journal,
        run_id=run_id,
        spec=spec,
        pool=pool,
        store=store,
        cache=ChunkCache(cache_dir, remote=remote),
        previous=previous,
        existing_audio=existing,
        force=force,
        # Items in progress hold their chunks' audio: keep enough to fill every server twice.
        item_slots=asyncio.Semaphore(max(8, 2 * pool.capacity)),
        publisher=publisher,
    )
    # The process holds ~340,000 long-lived objects (Prefect, pydantic, its API's models) and
    # every full collection walked them all: ~240 ms each, up to 0.36 ms per chunk measured.
    # Frozen, they are left out of collections until the run ends.
    gc.freeze()
    try:
        async with pool:
            yield ctx, ManifestWriter(store, run_id)
    finally:
        gc.unfreeze()
        publisher.shutdown()
        journal.close()
